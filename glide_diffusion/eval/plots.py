"""PNG figures of the guidance trade-off (``glide eval sweep``), one curve per guidance kind.

As GLIDE's Fig. 6: FID against CLIP score, and precision against recall; on Shapes also exact
match against diversity (the normalised entropy of what captions leave open). Each point is
labelled with its scale. Needs matplotlib (the ``[eval]`` extra); drawn with the Agg canvas, so no
display or pyplot state is involved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..checkpoints import atomic_write
from .sweep import KINDS, format_scale

__all__ = ["PLOTS", "require_matplotlib", "trade_off_plots"]

# file stem -> (x key, x label, y key, y label, title)
PLOTS = {
    "fid_vs_clip_score": ("clip_score", "CLIP score (100 × cosine)", "fid", "FID", "FID against CLIP score"),
    "precision_vs_recall": ("precision", "precision", "recall", "recall", "precision against recall"),
    "exact_vs_diversity": (
        "exact",
        "exact match (Shapes evaluator)",
        "diversity",
        "diversity (entropy / max of open attributes)",
        "exact match against diversity",
    ),
}
MARKERS = {"cfg": "o", "clip": "s"}


def require_matplotlib() -> None:
    """ImportError with the install line when matplotlib is missing (checked before any work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("the sweep's plots need matplotlib: pip install 'glide-diffusion[eval]'") from None


def _plot(rows: Sequence[dict], x: str, xlabel: str, y: str, ylabel: str, title: str, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind, name in KINDS.items():
        pts = sorted(
            (r["scale"], r[x], r[y])
            for r in rows
            if r["kind"] == kind and r.get(x) is not None and r.get(y) is not None
        )
        if not pts:
            continue
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker=MARKERS[kind], label=name)
        for scale, px, py in pts:
            ax.annotate(format_scale(scale), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None}))
    return path


def trade_off_plots(rows: Sequence[dict], out: str | os.PathLike) -> list[Path]:
    """Write each plot of :data:`PLOTS` whose two metrics some row has into ``out``; return the paths."""
    require_matplotlib()
    out = Path(out)
    paths = []
    for stem, (x, xlabel, y, ylabel, title) in PLOTS.items():
        if any(r.get(x) is not None and r.get(y) is not None for r in rows):
            paths.append(_plot(rows, x, xlabel, y, ylabel, title, out / f"{stem}.png"))
    return paths

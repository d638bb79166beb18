"""The guidance trade-off sweep (``glide eval sweep``): grid points, the table, resume records.

GLIDE (Nichol et al. 2022, §5.1, Fig. 6) compares two kinds of guidance as the scale grows:

- ``cfg``: classifier-free guidance at scale ``s`` (eps = uncond + s·(cond − uncond)), no CLIP guidance;
- ``clip``: CLIP guidance at scale ``λ`` (the mean moves by λ·Σ·∇ sim) on the model at a fixed
  classifier-free scale, 1 by default: the conditional model alone, as GLIDE's CLIP-guided samples.

Each point is sampled into its own folder ``points/g{s}-c{λ}`` named by the two scales it runs at,
so a point both curves share (``cfg`` at 1, ``clip`` at 0 with the default) is sampled once. A
point is finished when its ``score.json`` records the current scoring settings; a rerun skips it.
The table (``sweep.json``, ``sweep.md``) has one row per (kind, scale); :mod:`.plots` draws it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "KINDS",
    "SweepPoint",
    "format_scale",
    "sweep_points",
    "unique_points",
    "point_finished",
    "shapes_diversity",
    "table_row",
    "markdown_table",
    "TABLE_COLUMNS",
]

KINDS = {"cfg": "classifier-free guidance", "clip": "CLIP guidance"}
POINTS_DIR = "points"


def format_scale(x: float) -> str:
    """The shortest decimal that reads back as ``x`` (3 -> "3", 0.1 -> "0.1"): names and labels."""
    return np.format_float_positional(float(x), trim="-")


@dataclass(frozen=True)
class SweepPoint:
    """One point of a curve: its ``kind`` and ``scale``, and the two scales it samples at."""

    kind: str  # "cfg" or "clip"
    scale: float  # the swept scale: guidance_scale for cfg, clip_guidance_scale for clip
    guidance_scale: float  # classifier-free guidance scale of the base stage
    clip_guidance_scale: float  # 0: no CLIP guidance

    @property
    def folder(self) -> str:
        """Samples folder under ``points/``: named by what it samples, so shared points share it."""
        return f"g{format_scale(self.guidance_scale)}-c{format_scale(self.clip_guidance_scale)}"

    @property
    def label(self) -> str:
        return f"{self.kind} {format_scale(self.scale)}"


def _check_scales(option: str, scales: Sequence[float]) -> list[float]:
    out = []
    for s in scales:
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"{option}: {format_scale(s)} is not a guidance scale (finite and >= 0)")
        out.append(float(s))
    seen = [s for i, s in enumerate(out) if s in out[:i]]
    if seen:
        raise ValueError(f"{option}: {format_scale(seen[0])} is given twice")
    return out


def sweep_points(
    cfg_scales: Sequence[float] | None, clip_scales: Sequence[float] | None, clip_cfg_scale: float = 1.0
) -> list[SweepPoint]:
    """The points of the two curves, each in the order given; ValueError (naming the option) for a
    scale that is negative, NaN or infinite, given twice, or an empty grid."""
    cfg = _check_scales("--cfg-scales", cfg_scales or [])
    clip = _check_scales("--clip-scales", clip_scales or [])
    _check_scales("--clip-cfg-scale", [clip_cfg_scale])
    if not cfg and not clip:
        raise ValueError("an empty grid: give --cfg-scales and/or --clip-scales")
    return [SweepPoint("cfg", s, s, 0.0) for s in cfg] + [SweepPoint("clip", s, float(clip_cfg_scale), s) for s in clip]


def unique_points(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """The first point of each samples folder, in order (what has to be sampled)."""
    seen: dict[str, SweepPoint] = {}
    for p in points:
        seen.setdefault(p.folder, p)
    return list(seen.values())


def point_finished(folder: Path, request: dict, scoring: dict) -> bool:
    """Whether ``folder`` holds the samples of ``request`` (its ``request.json``), all of them (a
    manifest), and a score made with the ``scoring`` settings: then a rerun skips it."""
    try:
        report = json.loads((folder / "score.json").read_text(encoding="utf-8"))
        recorded = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (
        (folder / "manifest.json").is_file()
        and recorded == request
        and report.get("sweep", {}).get("scoring") == scoring
    )


def shapes_diversity(diversity: dict) -> float | None:
    """One number for the Shapes evaluator's diversity report: the mean over the attributes the
    captions leave open (and that any image showed) of entropy / max entropy, in [0, 1]; 0 when no
    image showed a readable value of any (nothing varied that the evaluator could see); None for
    an empty report."""
    if not diversity:
        return None
    parts = [d["entropy_bits"] / d["max_bits"] for d in diversity.values() if d.get("n") and d.get("max_bits")]
    return float(np.mean(parts)) if parts else 0.0


def table_row(point: SweepPoint, report: dict) -> dict:
    """The table's row of one point, from its ``score.json``: absent metrics are None."""
    shapes = report.get("shapes") or {}
    clip = report.get("clip_score") or {}
    sweep = report.get("sweep") or {}
    row = {
        **asdict(point),
        "folder": f"{POINTS_DIR}/{point.folder}",
        "images": report.get("images"),
        "fid": report.get("fid"),
        "kid": report.get("kid"),
        "precision": report.get("precision"),
        "recall": report.get("recall"),
        "density": report.get("density"),
        "coverage": report.get("coverage"),
        "clip_score": clip.get("mean"),
        "exact": (shapes.get("all") or {}).get("exact"),
        "diversity": shapes_diversity(shapes["diversity"]) if "diversity" in shapes else None,
        "diversity_bits": {k: v["entropy_bits"] for k, v in shapes.get("diversity", {}).items()} or None,
        "background_mae": (shapes.get("fidelity") or {}).get("background_mae_median"),
        "sample_seconds": sweep.get("sample_seconds"),
        "sample_cpu_seconds": sweep.get("sample_cpu_seconds"),
        "score_seconds": sweep.get("score_seconds"),
        "score_cpu_seconds": sweep.get("score_cpu_seconds"),
    }
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


# (key, header, format) of the Markdown table; a column every row lacks is left out.
TABLE_COLUMNS = [
    ("fid", "FID", ".3g"),
    ("kid", "KID", ".3g"),
    ("precision", "precision", ".3f"),
    ("recall", "recall", ".3f"),
    ("clip_score", "CLIP score", ".2f"),
    ("exact", "exact match", ".3f"),
    ("diversity", "diversity", ".3f"),
    ("background_mae", "background MAE", ".2f"),
    ("sample_seconds", "sampling s", ".0f"),
]


def markdown_table(rows: Sequence[dict], title: str, notes: Sequence[str] = (), plots: Sequence[str] = ()) -> str:
    """The trade-off table as Markdown: one row per (kind, scale), then the plots."""
    cols = [c for c in TABLE_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    lines = [
        f"# {title}",
        "",
        *[f"- {n}" for n in notes],
        "",
        "| guidance | scale | g | CLIP λ | images | " + " | ".join(h for _, h, _ in cols) + " |",
        "|---|---|---|---|---|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [
            KINDS[r["kind"]],
            format_scale(r["scale"]),
            format_scale(r["guidance_scale"]),
            format_scale(r["clip_guidance_scale"]),
            str(r.get("images") or "—"),
        ]
        cells += ["—" if r.get(k) is None else format(r[k], f) for k, _, f in cols]
        lines.append("| " + " | ".join(cells) + " |")
    if plots:
        lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots]]
    return "\n".join(lines) + "\n"

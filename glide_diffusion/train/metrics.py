"""Training metrics: one JSON line per logged step, plus TensorBoard when it imports."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoints import atomic_write_text

__all__ = ["MetricsWriter", "read_metrics", "truncate_metrics"]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class MetricsWriter:
    """Appends ``{step, loss, ...}`` records to ``out_dir/metrics.jsonl`` (flushed per line)."""

    def __init__(self, out_dir: str | Path, kinds: Sequence[str] = ("jsonl",), enabled: bool = True):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if "tensorboard" in kinds:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except Exception:  # tensorboard not installed: jsonl only
                self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled or self._file is None:  # the file is open exactly when enabled
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """All records of ``out_dir/metrics.jsonl`` (a torn last line is skipped)."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}: skipped an unreadable line (a run killed mid-write?)")
    return records


def truncate_metrics(out_dir: str | Path, last_step: int) -> None:
    """Drop records after ``last_step``: a resumed run redoes those steps."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return
    keep = [r for r in read_metrics(out_dir) if int(r.get("step", 0)) <= last_step]
    text = "".join(json.dumps(r) + "\n" for r in keep)
    atomic_write_text(path, text)

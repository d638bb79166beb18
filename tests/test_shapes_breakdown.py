"""benchmarks/shapes_breakdown.py: rebuilding the captions a scored run used."""

import importlib
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_inpaint_runs_rebuild_their_cases_at_any_resolution(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    breakdown, inpaint = importlib.import_module("shapes_breakdown"), importlib.import_module("shapes_inpaint")
    rebuilt = breakdown.rebuild_captions({"inpaint": "shapes-inpaint", "n": 6, "seed": 3})
    # the benchmark renders its cases at the model's resolution; the specs must not depend on it
    assert rebuilt == [(caption, spec) for _, _, caption, spec in inpaint.cases(6, 3, 64)]
    assert all(len(spec.objects) == 1 for _, spec in rebuilt)


def test_quality_runs_rebuild_their_caption_set(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    breakdown, quality = importlib.import_module("shapes_breakdown"), importlib.import_module("shapes_quality")
    args = {"n": 4, "seed": 0, "n_two": 2, "n_held_out": 1}
    assert breakdown.rebuild_captions(args) == quality.caption_set(4, 0, 2, 1)

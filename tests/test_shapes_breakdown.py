"""benchmarks/shapes_breakdown.py: rebuilding the captions a scored run used
(glide_diffusion.eval.shapes_benchmark)."""

from glide_diffusion.eval.shapes_benchmark import caption_set, inpaint_cases, rebuild_captions


def test_inpaint_runs_rebuild_their_cases_at_any_resolution():
    rebuilt = rebuild_captions({"inpaint": "shapes-inpaint", "n": 6, "seed": 3})
    # the benchmark renders its cases at the model's resolution; the specs must not depend on it
    assert rebuilt == [(caption, spec) for _, _, caption, spec in inpaint_cases(6, 3, 64)]
    assert all(len(spec.objects) == 1 for _, spec in rebuilt)


def test_quality_runs_rebuild_their_caption_set():
    args = {"n": 4, "seed": 0, "n_two": 2, "n_held_out": 1}
    assert rebuild_captions(args) == caption_set(4, 0, 2, 1)

"""benchmarks/paired_diff.py (glide_diffusion.eval.shapes_benchmark): which captions two Shapes
quality runs share."""

import pytest

from glide_diffusion.data.shapes import test_captions as shapes_test_captions
from glide_diffusion.eval.shapes_benchmark import noise_note, shared_captions


def run_args(n, n_two=0, n_held_out=0, seed=0):
    return {"n": n, "n_two": n_two, "n_held_out": n_held_out, "seed": seed}


def test_same_caption_set_compares_everything():
    assert shared_captions(run_args(5, 2, 1), run_args(5, 2, 1), 8, 8) == (8, "8 captions")


def test_defaulted_counts_are_read_as_half_of_n():
    # older files store n_two and n_held_out as null when they were left at n // 2
    defaulted = {"n": 6, "n_two": None, "n_held_out": None, "seed": 0}
    assert shared_captions(defaulted, run_args(6, 3, 3), 12, 12) == (12, "12 captions")


def test_different_counts_compare_the_one_object_prefix():
    n, which = shared_captions(run_args(500, 100, 100), run_args(200), 700, 200)
    assert n == 200 and "first 200 one-object" in which


def test_the_prefix_is_really_shared():
    # what shared_captions relies on: the first m of n one-object test captions are the m ones
    assert shapes_test_captions(40, 0, kind="single")[:15] == shapes_test_captions(15, 0, kind="single")


def test_reranked_runs_are_flagged_as_unpaired_noise():
    plain, reranked = run_args(5), {**run_args(5), "rerank": 4}
    assert noise_note(plain, {**run_args(5), "rerank": None}) is None
    assert noise_note(reranked, dict(reranked)) is None
    assert "1 and B 4" in noise_note(plain, reranked)


@pytest.mark.parametrize(
    "a, b, la, lb, message",
    [
        (run_args(5, seed=0), run_args(5, seed=1), 5, 5, "seed"),
        (run_args(5), run_args(5), 5, 4, "scores"),
        (run_args(0, 3), run_args(0, 4), 3, 4, "no one-object"),
    ],
)
def test_runs_that_share_no_captions_are_refused(a, b, la, lb, message):
    with pytest.raises(SystemExit, match=message):
        shared_captions(a, b, la, lb)


def test_a_targets_row_pairs_with_the_same_row_of_another_targets_run(tmp_path):
    import json

    from glide_diffusion.eval.shapes_benchmark import load_run

    def targets(name, n_one, marks):
        path = tmp_path / name
        args = {"n_one": n_one, "n_two": 1, "n_held_out": 1, "n_inpaint": 0, "seed": 0}
        scores = {"one": [{"exact": m} for m in marks], "held_out": [{"exact": True}], "two": [], "composed": []}
        path.write_text(json.dumps({"args": args, "table": [], "scores": scores}))
        return str(path)

    a = load_run(targets("a.json", 4, [True, True, False, True]) + ":one")
    b = load_run(targets("b.json", 3, [True, False, False]) + ":one")
    assert a[1]["scores"][2] == {"exact": False}
    assert shared_captions(a[0], b[0], 4, 3) == (
        3,
        "the first 3 one-object captions (the runs' shared prefix; their caption counts differ)",
    )
    with pytest.raises(SystemExit, match="pick a row"):
        load_run(str(tmp_path / "a.json"))

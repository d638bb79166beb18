"""``glide eval sweep`` on a tiny random model and a tiny grid: files, plots, resume, bad grids."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from glide_diffusion.checkpoints import build_model, save_model
from glide_diffusion.cli.main import main
from glide_diffusion.eval.sweep import (
    SweepPoint,
    format_scale,
    markdown_table,
    shapes_diversity,
    sweep_points,
    table_row,
    unique_points,
)
from glide_diffusion.presets import get_preset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the grid


def test_points_of_the_two_curves_share_the_unguided_folder():
    points = sweep_points([1, 3], [0, 2.5], clip_cfg_scale=1)
    assert [(p.kind, p.scale, p.guidance_scale, p.clip_guidance_scale) for p in points] == [
        ("cfg", 1, 1, 0),
        ("cfg", 3, 3, 0),
        ("clip", 0, 1, 0),
        ("clip", 2.5, 1, 2.5),
    ]
    assert [p.folder for p in points] == ["g1-c0", "g3-c0", "g1-c0", "g1-c2.5"]
    assert [p.folder for p in unique_points(points)] == ["g1-c0", "g3-c0", "g1-c2.5"]  # sampled once
    assert (format_scale(0.1), format_scale(1e-7), format_scale(100.0)) == ("0.1", "0.0000001", "100")


@pytest.mark.parametrize(
    "cfg, clip, clip_cfg, message",
    [
        ([1, -2], None, 1, "--cfg-scales: -2 is not a guidance scale (finite and >= 0)"),
        ([math.nan], None, 1, "--cfg-scales: nan is not a guidance scale"),
        (None, [math.inf], 1, "--clip-scales: inf is not a guidance scale"),
        ([1, 3, 1.0], None, 1, "--cfg-scales: 1 is given twice"),
        ([1], [2], -1, "--clip-cfg-scale: -1 is not a guidance scale"),
        (None, [], 1, "an empty grid: give --cfg-scales and/or --clip-scales"),
    ],
)
def test_bad_grids_are_refused(cfg, clip, clip_cfg, message):
    with pytest.raises(ValueError) as e:
        sweep_points(cfg, clip, clip_cfg)
    assert message in str(e.value)


def test_table_row_and_markdown_from_a_score():
    report = {
        "images": 8,
        "fid": 1.5,
        "precision": 0.5,
        "recall": 0.25,
        "clip_score": {"mean": 20.0},
        "shapes": {
            "all": {"exact": 0.75},
            "diversity": {
                "size": {"entropy_bits": 1.0, "max_bits": 2.0, "n": 4},
                "colour": {"entropy_bits": 0.0, "max_bits": 3.0, "n": 0},
                "background": {"entropy_bits": 0.0, "max_bits": 2.0, "n": 4},
            },
            "fidelity": {"background_mae_median": math.nan},
        },
    }
    row = table_row(SweepPoint("cfg", 3.0, 3.0, 0.0), report)
    assert row["diversity"] == 0.25  # mean of 1/2 and 0/2; colour showed in no image
    assert row["background_mae"] is None and row["kid"] is None  # NaN and absent: no value
    md = markdown_table([row], "t")
    assert "| classifier-free guidance | 3 | 3 | 0 | 8 | 1.5 | 0.500 | 0.250 | 20.00 | 0.750 | 0.250 |" in md
    assert "KID" not in md  # a column no row has is left out
    assert shapes_diversity({}) is None
    assert shapes_diversity({"size": {"entropy_bits": 0.0, "max_bits": 2.0, "n": 0}}) == 0.0  # nothing readable


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return str(save_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", model, get_preset("tiny")))


def _sweep_args(base, out, *grid):
    return [
        "eval",
        "sweep",
        "shapes:3",
        "-o",
        str(out),
        "-n",
        "4",
        "--shard-size",
        "2",
        "--seed",
        "1",
        "--base",
        base,
        "--upsampler",
        "none",
        "--base-sampler",
        "ddim",
        "--base-steps",
        "2",
        "--dtype",
        "fp32",
        "--ref",
        "shapes:12",
        "--kid-subsets",
        "3",
        "--no-progress",
        "--no-download",
        *grid,
    ]


def _stamps(out):
    return {
        p.relative_to(out): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted((out / "points").rglob("*"))
        if p.is_file()
    }


def test_sweep_writes_table_and_plots_and_resumes(tmp_path, tiny_base, capsys, small_cpu_work):
    out = tmp_path / "sweep"
    grid = ["--cfg-scales", "1", "4", "--clip-scales", "0", "30"]
    assert main(_sweep_args(tiny_base, out, *grid)) == 0
    err = capsys.readouterr().err
    assert "[1/3] cfg 1 (g=1, CLIP λ=0): sampling 4 images" in err and "[3/3] clip 30 (g=1, CLIP λ=30)" in err
    assert sorted(p.name for p in (out / "points").iterdir()) == ["g1-c0", "g1-c30", "g4-c0"]

    record = json.loads((out / "sweep.json").read_text())
    rows = record["rows"]
    assert [(r["kind"], r["scale"]) for r in rows] == [("cfg", 1), ("cfg", 4), ("clip", 0), ("clip", 30)]
    for r in rows:
        assert r["images"] == 4 and 0 <= r["exact"] <= 1 and 0 <= r["diversity"] <= 1
        for key in ("fid", "kid", "precision", "recall", "clip_score", "sample_seconds"):
            assert isinstance(r[key], float), key
    assert rows[0] == {**rows[2], "kind": "cfg", "scale": 1.0}  # the shared point: the same samples and scores
    assert record["request"]["clip"] == "shapes-clip" and record["request"]["score_clip"] == "shapes-clip-rerank"
    guided = np.load(out / "points/g1-c30/shard-00000.npz")["images"]
    plain = np.load(out / "points/g1-c0/shard-00000.npz")["images"]
    assert not np.array_equal(guided, plain)  # CLIP guidance changed the samples
    md = (out / "sweep.md").read_text()
    assert "| CLIP guidance | 30 | 1 | 30 | 4 |" in md and "![fid_vs_clip_score](fid_vs_clip_score.png)" in md
    assert record["plots"] == ["fid_vs_clip_score.png", "precision_vs_recall.png", "exact_vs_diversity.png"]
    for name in record["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200

    # a rerun does no work: every point is skipped, no sample or score file rewritten
    before = _stamps(out)
    assert main(_sweep_args(tiny_base, out, *grid)) == 0
    err = capsys.readouterr().err
    assert err.count("scored before, skipped") == 3 and "sampling 4 images" not in err
    assert _stamps(out) == before

    # a point killed half-way (one shard and its score missing): only that shard is sampled again
    (out / "points/g4-c0/shard-00001.npz").unlink()
    (out / "points/g4-c0/score.json").unlink()
    kept = (out / "points/g4-c0/shard-00000.npz").stat().st_mtime_ns
    assert main(_sweep_args(tiny_base, out, *grid)) == 0
    err = capsys.readouterr().err
    assert err.count("scored before, skipped") == 2 and "[2/3] cfg 4 (g=4, CLIP λ=0): sampling 4 images" in err
    assert (out / "points/g4-c0/shard-00000.npz").stat().st_mtime_ns == kept
    assert json.loads((out / "sweep.json").read_text())["rows"][1]["fid"] == rows[1]["fid"]  # same samples

    # another request into the same folder (here -n 5): not skipped as finished, refused
    args = _sweep_args(tiny_base, out, *grid)
    args[args.index("-n") + 1] = "5"
    assert main(args) == 2
    assert "holds samples of another request (differs in n)" in capsys.readouterr().err


def test_bad_grid_values_from_the_cli_fail_before_any_work(tmp_path, capsys):
    out = tmp_path / "s"
    base = ["eval", "sweep", "shapes:2", "-o", str(out), "--no-download"]
    assert main([*base, "--cfg-scales", "1", "-3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "glide eval sweep: error: --cfg-scales: -3 is not a guidance scale (finite and >= 0)"
    )
    assert main([*base, "--clip-scales", "2", "2"]) == 2
    assert "glide eval sweep: error: --clip-scales: 2 is given twice" in capsys.readouterr().err
    assert main(base) == 2
    assert "an empty grid: give --cfg-scales and/or --clip-scales" in capsys.readouterr().err
    assert main([*base, "--cfg-scales", "1", "-g", "3"]) == 2
    assert "-g/--guidance-scale: the sweep sets it per point" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--cfg-scales", "one"])
    assert e.value.code == 2 and "argument --cfg-scales: invalid float value: 'one'" in capsys.readouterr().err
    assert not out.exists()

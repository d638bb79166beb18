"""``glide eval sample|stats|score`` on tiny random models: caption files, shards, torchrun, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from glide_diffusion.checkpoints import build_model, save_model
from glide_diffusion.cli.main import main
from glide_diffusion.eval.captions import CaptionFileError, read_captions
from glide_diffusion.eval.shards import rank_shards, read_samples, shard_name, shard_ranges
from glide_diffusion.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- caption files


def test_caption_formats(tmp_path):
    (tmp_path / "c.txt").write_text("a red circle\n\n  a blue square \n")
    (tmp_path / "c.jsonl").write_text('{"caption": "a red circle"}\n\n{"text": "a blue square", "id": 3}\n')
    (tmp_path / "c.csv").write_text('id,caption\n1,a red circle\n2,"a blue square"\n')
    coco = {
        "images": [],
        "annotations": [
            {"image_id": 9, "id": 1, "caption": "a red circle"},
            {"image_id": 9, "id": 2, "caption": " a blue square\n"},
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    for name in ("c.txt", "c.jsonl", "c.csv", "c.json"):
        assert read_captions(tmp_path / name) == ["a red circle", "a blue square"], name


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("bad.jsonl", '{"caption": "ok"}\n{"caption": "x"\n', ":2: not valid JSON"),
        ("bad.jsonl", '{"caption": "ok"}\n\n{"title": "x"}\n', ":3: no 'caption' or 'text' field"),
        ("bad.jsonl", '{"caption": 5}\n', ":1: field 'caption' must be a non-empty string"),
        ("bad.csv", "id,title\n1,x\n", ":1: no 'caption' or 'text' column"),
        ("bad.csv", "id,caption\n1,ok\n2,x,extra\n", ":3: 3 cells, the header has 2"),
        ("bad.json", '{"annotations": [\n {"image_id": 1, "caption": "ok"},\n {"image_id": 2}\n]}', ":3: annotation 1"),
        ("bad.json", '{"annotations": [\n {"image_id": 1,, }\n]}', ":2: not valid JSON"),
        ("empty.txt", "\n \n", "empty.txt: no captions"),
    ],
)
def test_caption_errors_name_file_and_line(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CaptionFileError) as e:
        read_captions(path)
    assert str(e.value).startswith(str(path)) and where in str(e.value), str(e.value)


def test_malformed_caption_file_is_one_line_from_the_cli(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text('{"caption": "a"}\n{oops}\n')
    assert main(["eval", "sample", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glide eval sample: error: ") and f"{path}:2: not valid JSON" in err
    assert "\n" not in err


# ---------------------------------------------------------------- shard layout


def test_shard_layout_does_not_depend_on_world_size():
    ranges = shard_ranges(250, 100)
    assert ranges == [range(0, 100), range(100, 200), range(200, 250)]
    assert shard_name(2) == "shard-00002.npz"
    for world in (1, 2, 3, 5):
        mine = [rank_shards(len(ranges), r, world) for r in range(world)]
        assert sorted(k for m in mine for k in m) == [0, 1, 2]
    assert rank_shards(3, 1, 2) == [1]


# ---------------------------------------------------------------- sampling end to end


def _random_model(name, seed):
    torch.manual_seed(seed)
    model = build_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return str(save_model(d / "tiny.safetensors", _random_model("tiny", 0), get_preset("tiny")))


def _sample_args(base, out, n=6, shard=2, steps="3"):
    return [
        "eval",
        "sample",
        "shapes:4",
        "-o",
        str(out),
        "-n",
        str(n),
        "--seed",
        "5",
        "--shard-size",
        str(shard),
        "--base",
        base,
        "--upsampler",
        "none",
        "--base-sampler",
        "ddim",
        "--base-steps",
        steps,
        "-g",
        "2",
        "--dtype",
        "fp32",
        "--no-progress",
        "--no-download",
    ]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(args, *, procs=None, timeout=180):
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs else []
    run = subprocess.run(
        [sys.executable, *launcher, "-m", "glide_diffusion.cli.main", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _shard_arrays(folder):
    out = {}
    for path in sorted(Path(folder).glob("shard-*.npz")):
        with np.load(path) as z:
            out[path.name] = {k: z[k] for k in z.files}
    return out


def test_two_processes_write_the_same_shards_as_one(tmp_path, tiny_base):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_sample_args(tiny_base, one, n=5))
    _run(_sample_args(tiny_base, two, n=5), procs=2)
    a, b = _shard_arrays(one), _shard_arrays(two)
    assert sorted(a) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"] == sorted(b)
    for name in a:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name  # same bytes, not only arrays
    samples = read_samples(one)
    assert samples.images.shape == (5, 16, 16, 3) and samples.images.dtype == np.uint8
    assert samples.seeds.tolist() == [5, 6, 7, 8, 9]  # image i: seed base + i
    assert samples.captions[4] == samples.captions[0]  # 4 captions, cycled
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["images"] == 5 and manifest["processes"] == 2 and manifest["resolution"] == 16


def test_resume_after_kill_skips_finished_shards(tmp_path, tiny_base):
    clean, out = tmp_path / "clean", tmp_path / "killed"
    args = _sample_args(tiny_base, out, n=16, shard=2, steps="25")
    proc = subprocess.Popen(
        [sys.executable, "-m", "glide_diffusion.cli.main", *args],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = out / shard_name(0)
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert first.exists()
    done = sorted(p.name for p in out.glob("shard-*.npz"))
    assert len(done) < 8, "the run finished before the kill; make it slower"
    stamp = {name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) for name in done}
    _run(args)
    for name, before in stamp.items():  # finished shards were kept, not rewritten
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == before, name
    assert not list(out.glob(".*.tmp"))
    _run(_sample_args(tiny_base, clean, n=16, shard=2, steps="25"))
    a, b = _shard_arrays(clean), _shard_arrays(out)
    assert sorted(a) == sorted(b) and len(a) == 8
    for name in a:
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key])


def test_corrupt_shard_is_resampled_and_never_counted(tmp_path, tiny_base, capsys):
    out = tmp_path / "s"
    args = _sample_args(tiny_base, out, n=4, shard=2)
    assert main(args) == 0
    path = out / shard_name(1)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert main(["eval", "score", str(out), "--shapes"]) == 2
    err = capsys.readouterr().err
    assert f"glide eval score: error: {path}: missing or unreadable" in err and "rerun glide eval sample" in err
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "shard-00001.npz is incomplete or corrupt" in err and "sampling it again" in err
    assert path.read_bytes() == good


def test_another_request_in_the_same_folder_is_refused(tmp_path, tiny_base, capsys):
    out = tmp_path / "s"
    assert main(_sample_args(tiny_base, out, n=2, shard=2)) == 0
    args = _sample_args(tiny_base, out, n=2, shard=2)
    args[args.index("-g") + 1] = "3"
    assert main(args) == 2
    assert "holds samples of another request (differs in base)" in capsys.readouterr().err


# ---------------------------------------------------------------- stats and score


def test_stats_on_shapes_and_score_end_to_end(tmp_path, tiny_base, capsys):
    out = tmp_path / "s"
    assert main(_sample_args(tiny_base, out, n=6, shard=4)) == 0
    ref = tmp_path / "ref.npz"
    assert (
        main(
            [
                "eval",
                "stats",
                "shapes:64",
                "-o",
                str(ref),
                "--extractor",
                "shapes",
                "--resolution",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )
    with np.load(ref) as z:
        assert int(z["n"]) == 64 and int(z["resolution"]) == 16 and str(z["extractor"]) == "shapes-clip-rerank"
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "score",
                str(out),
                "--ref",
                str(ref),
                "--clip",
                "shapes-clip-rerank",
                "--shapes",
                "--kid-subsets",
                "5",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    biased = [line for line in err.splitlines() if "FID is strongly biased" in line]  # N < dim: one line each
    assert biased and all(line.startswith("glide eval score: warning: FID from") for line in biased)
    assert len(set(biased)) == len(biased) and any("FID from 6 " in line for line in biased)
    report = json.loads((out / "score.json").read_text())
    for key in ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage"):
        assert isinstance(report[key], float), key
    assert report["images"] == 6 and report["clip_score"]["clip"] == "shapes-clip-rerank"
    assert 0 <= report["shapes"]["all"]["exact"] <= 1 and "fidelity" in report["shapes"]
    md = (out / "score.md").read_text()
    assert "| FID |" in md and "| CLIP score (shapes-clip-rerank) |" in md and "| Shapes exact match |" in md

    # resolution mismatch: refused before any work
    ref32 = tmp_path / "ref32.npz"
    assert (
        main(
            [
                "eval",
                "stats",
                "shapes:8",
                "-o",
                str(ref32),
                "--extractor",
                "shapes",
                "--resolution",
                "32",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", "score", str(out), "--ref", str(ref32)]) == 2
    assert "are of 32 px images; these images are 16 px" in capsys.readouterr().err


def test_stats_of_a_folder_and_of_samples(tmp_path, tiny_base):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    ref = tmp_path / "f.npz"
    assert (
        main(
            [
                "eval",
                "stats",
                str(folder),
                "-o",
                str(ref),
                "--extractor",
                "shapes",
                "--resolution",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )
    with np.load(ref) as z:
        assert int(z["n"]) == 5 and int(z["resolution"]) == 16
    out = tmp_path / "s"
    assert main(_sample_args(tiny_base, out, n=3, shard=2)) == 0
    assert (
        main(["eval", "stats", str(out), "-o", str(tmp_path / "s.npz"), "--extractor", "shapes", "--no-progress"]) == 0
    )
    with np.load(tmp_path / "s.npz") as z:
        assert int(z["n"]) == 3


def test_shapes_source_needs_resolution(tmp_path, capsys):
    assert main(["eval", "stats", "shapes:4", "-o", str(tmp_path / "r.npz"), "--extractor", "shapes"]) == 2
    assert "glide eval stats: error: shapes:N needs --resolution" in capsys.readouterr().err


def test_missing_extractor_file_says_where_to_put_it(tmp_path, tiny_base, capsys, monkeypatch):
    from glide_diffusion.eval.reference import save_stats
    from glide_diffusion.eval.stats import feature_stats

    out = tmp_path / "s"
    assert main(_sample_args(tiny_base, out, n=2, shard=2)) == 0
    rng = np.random.default_rng(0)
    ref = save_stats(
        tmp_path / "inc.npz", feature_stats(rng.normal(size=(4, 2048)), extractor="inception-2015-12-05", resolution=16)
    )
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "cache"))
    capsys.readouterr()
    assert main(["eval", "score", str(out), "--ref", str(ref), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glide eval score: error: GLIDE file 'fid-inception'")
    assert str(tmp_path / "cache" / "eval" / "inception-2015-12-05.pt") in err  # where to put it
    assert not (out / "score.json").exists()

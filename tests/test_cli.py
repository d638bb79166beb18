"""The commands as a new user meets them: warnings, output files, bad files and folders, messages."""

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glide_diffusion.checkpoints import build_model, save_model
from glide_diffusion.cli.main import main
from glide_diffusion.pipelines import output
from glide_diffusion.pipelines.captions import CaptionWarning, caption_problem
from glide_diffusion.pipelines.recipes import FAST_BASE
from glide_diffusion.pipelines.text2im import Text2ImPipeline
from glide_diffusion.presets import get_preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    return str(save_model(path, build_model("tiny"), get_preset("tiny")))


def sample(tiny, out, *args):
    return main(
        ["sample", *args, "--base", tiny, "--upsampler", "none", "--base-steps", "2", "-o", str(out), "--no-progress"]
    )


# --- captions a model will not follow --------------------------------------------------------


def test_caption_problems():
    assert caption_problem("a red circle", "shapes") is None
    assert caption_problem("a small blue star to the left of a large green square", "shapes") is None
    corgi = caption_problem("an oil painting of a corgi", "shapes")
    assert "not a Shapes caption" in corgi and "'corgi'" in corgi and "--models glide" in corgi
    assert "order" in caption_problem("circle red a", "shapes")  # known words, not the grammar
    assert caption_problem("an oil painting of a corgi", "gpt2") is None  # open vocabularies are not checked
    assert "unconditionally" in caption_problem("  ", "gpt2")


def test_shapes_models_warn_once_on_captions_outside_their_grammar(tmp_path, capsys):
    args = [
        "sample",
        "an oil painting of a corgi",
        "a red circle",
        "-n",
        "2",
        "--upsampler",
        "none",
        "--base-steps",
        "2",
        "--candidates",
        "1",
        "-o",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1, err
    assert re.search(
        r"^glide sample: warning: 'an oil painting of a corgi' is not a Shapes caption.*--models glide", err, re.M
    )
    pipe = Text2ImPipeline.from_pretrained("shapes-base", None)
    quick = dataclasses.replace(FAST_BASE, steps="2")
    with pytest.warns(CaptionWarning, match="not a Shapes caption"):  # the Python API says so too
        pipe("a corgi", base=quick)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptionWarning)
        pipe("a red circle", base=quick)


def test_an_empty_caption_says_it_samples_unconditionally(tiny, tmp_path, capsys):
    assert sample(tiny, tmp_path, "") == 0
    assert "glide sample: warning: an empty caption samples unconditionally" in capsys.readouterr().err


# --- output files ---------------------------------------------------------------------------------


def test_reruns_and_shared_prefixes_never_overwrite(tiny, tmp_path, capsys):
    a = "a green triangle to the left of a yellow circle"
    b = "a green triangle to the left of a yellow square"  # the same first 40 characters
    assert sample(tiny, tmp_path, a, b) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*.png")}
    assert len(first) == 2
    assert {Image.open(tmp_path / n).text["prompt"] for n in first} == {a, b}
    assert sample(tiny, tmp_path, a, b) == 0  # a rerun: new names, the earlier files untouched
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert all((tmp_path / n).read_bytes() == data for n, data in first.items())
    capsys.readouterr()
    assert sample(tiny, tmp_path, a, b, "--overwrite") == 0
    written = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in written) == sorted(first) and len(list(tmp_path.glob("*.png"))) == 4
    assert sample(tiny, tmp_path, a, "--seed", "1") == 0  # other settings, another name
    assert len(list(tmp_path.glob("*.png"))) == 5


def test_names_carry_the_position_and_the_seed(tiny, tmp_path):
    assert sample(tiny, tmp_path, "a red circle", "-n", "3", "--seed", "7") == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert [re.sub(r"-[0-9a-f]{8}-", "-H-", n) for n in names] == [
        f"a-red-circle-H-{i}-seed{7 + i}.png" for i in range(3)
    ]


def test_npz_is_not_overwritten_either(tiny, tmp_path):
    assert sample(tiny, tmp_path, "x", "--npz") == 0
    assert sample(tiny, tmp_path, "y", "--npz") == 0
    assert np.load(tmp_path / "samples.npz")["prompts"].tolist() == ["x"]
    assert np.load(tmp_path / "samples-2.npz")["prompts"].tolist() == ["y"]


def test_an_unusable_output_folder_fails_before_any_work(tiny, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    loaded = []
    monkeypatch.setattr(Text2ImPipeline, "from_pretrained", lambda *a, **k: loaded.append(1))
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert sample(tiny, out, "x") == 2
        err = capsys.readouterr().err
        assert err.startswith("glide sample: error: -o/--output:") and "is a file" in err
        assert "Traceback" not in err
    assert not loaded


def test_a_write_that_fails_after_sampling_saves_to_a_temporary_folder(tiny, tmp_path, capsys, monkeypatch):
    real = output.atomic_write
    blocked = tmp_path / "out"

    def refuse(path, write, **kw):
        if Path(path).parent == blocked:
            raise PermissionError(13, "Permission denied")
        return real(path, write, **kw)

    monkeypatch.setattr(output, "atomic_write", refuse)
    assert sample(tiny, blocked, "a red circle") == 0
    captured = capsys.readouterr()
    saved = re.search(r"saved in (\S+) instead", captured.err)
    assert saved and "could not write to" in captured.err and "Permission denied" in captured.err
    (png,) = Path(saved.group(1)).glob("*.png")
    assert str(png) in captured.out and Image.open(png).text["prompt"] == "a red circle"


# --- model files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"hello\n", os.urandom(300_000), b"PK\x03\x04" + os.urandom(1000)])
def test_corrupt_pt_files_are_a_clear_error(tmp_path, capsys, content):
    bad = tmp_path / "t.pt"
    bad.write_bytes(content)
    assert main(["sample", "x", "--base", str(bad), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"glide sample: error: {bad}:") and err.count("\n") == 1, err
    assert "weights_only" not in err and "Traceback" not in err


def test_a_state_dict_without_config_takes_config_preset(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(build_model("tiny").state_dict(), tmp_path / "m.pt")
    args = [
        "sample",
        "a red circle",
        "--base",
        str(tmp_path / "m.pt"),
        "--upsampler",
        "none",
        "--base-steps",
        "2",
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main(args) == 2
    assert "--config PRESET" in capsys.readouterr().err
    assert main([*args, "--config", "tiny"]) == 0
    (png,) = (tmp_path / "out").glob("*.png")
    assert json.loads(Image.open(png).text["settings"])["base_model"] == str(tmp_path / "m.pt")


# --- messages -------------------------------------------------------------------------------------


def test_a_warning_prints_once_as_one_line(tiny, tmp_path, capsys):
    long = "a red circle " * 10  # over the tiny model's 32-byte context, in every row of every step
    assert sample(tiny, tmp_path, long, "-n", "3", "-g", "3") == 0
    err = capsys.readouterr().err
    assert err.count("truncated to the context length") == 1
    line = next(ln for ln in err.splitlines() if "truncated" in ln)
    assert line.startswith("glide sample: warning: the caption ") and "UserWarning" not in err


@pytest.mark.parametrize("command", ["sample", "inpaint", "edit"])
def test_ctrl_c_ends_with_one_line(command, monkeypatch, capsys):
    from glide_diffusion.cli import edit
    from glide_diffusion.cli import sample as sample_cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_cli, "main", interrupted)
    monkeypatch.setattr(edit, "inpaint_main", interrupted)
    monkeypatch.setattr(edit, "edit_main", interrupted)
    assert main([command, "x"]) == 130
    assert capsys.readouterr().err.strip() == f"glide {command}: interrupted"


def test_errors_name_the_cli_options(tiny, tmp_path, capsys):
    cases = [
        (["-n", "0"], "-n/--num-images must be"),
        (["--candidates", "0"], "--candidates must be"),
        (["--base-sampler", "euler"], "--base-sampler must be one of"),
    ]
    for extra, expected in cases:
        assert sample(tiny, tmp_path / "o", "x", *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("glide sample: error: ") and expected in err, err
        assert "num_images" not in err and "base.candidates" not in err


# --- precision ------------------------------------------------------------------------------------


def test_the_default_dtype_is_the_fastest_the_device_runs_well(tiny, tmp_path, monkeypatch):
    from glide_diffusion import precision

    for kind, expected in (("amx", "bf16"), (None, "fp32")):
        monkeypatch.setattr(precision, "cpu_bf16_kind", lambda kind=kind: kind)
        assert precision.resolve_dtype("auto", "cpu") == expected
        out = tmp_path / expected
        assert sample(tiny, out, "a red circle") == 0
        (png,) = out.glob("*.png")
        assert json.loads(Image.open(png).text["settings"])["dtype"] == expected  # what ran, not "auto"
    # AVX-512 BF16 without AMX: bf16 only for a large model, where bf16 products measure faster.
    monkeypatch.setattr(precision, "cpu_bf16_kind", lambda: "avx512")
    for faster, params, expected in ((True, 400e6, "bf16"), (True, 3e6, "fp32"), (False, 400e6, "fp32")):
        monkeypatch.setattr(precision, "cpu_bf16_matmul_faster", lambda faster=faster: faster)
        assert precision.resolve_dtype("auto", "cpu", int(params)) == expected
    out = tmp_path / "tiny-avx512"
    monkeypatch.setattr(precision, "cpu_bf16_matmul_faster", lambda: True)
    assert sample(tiny, out, "a red circle") == 0  # the tiny model is far below the size where bf16 pays
    (png,) = out.glob("*.png")
    assert json.loads(Image.open(png).text["settings"])["dtype"] == "fp32"
    assert precision.resolve_dtype("auto", "cuda") == "fp16"
    assert precision.resolve_dtype("fp32", "cuda") == "fp32"

"""Text -> image end to end on tiny random models, through the API and the CLI."""

import argparse
import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from glide_diffusion.checkpoints import build_model, save_model
from glide_diffusion.cli.common import compile_stages
from glide_diffusion.cli.main import main
from glide_diffusion.pipelines import text2im
from glide_diffusion.pipelines.recipes import StageSettings
from glide_diffusion.pipelines.text2im import Text2ImPipeline
from glide_diffusion.precision import native_bf16_cpu
from glide_diffusion.presets import get_preset

FAST_BASE = StageSettings("ddpm", "4", 3.0)
FAST_UP = StageSettings("ddim", "3", 1.0, 0.997)


def _random_model(name, seed):
    torch.manual_seed(seed)
    model = build_model(name)
    with torch.no_grad():  # non-zero outputs: perturb the zero-initialised layers too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    base = save_model(d / "tiny.safetensors", _random_model("tiny", 0), get_preset("tiny"))
    up = save_model(d / "tiny-up.safetensors", _random_model("tiny-upsample", 1), get_preset("tiny-upsample"))
    return str(base), str(up)


@pytest.fixture(scope="module")
def pipe(checkpoints):
    return Text2ImPipeline.from_pretrained(*checkpoints, download=False)


def _arrays(images):
    return [np.asarray(im) for im in images]


def test_sizes_and_rerun_determinism(pipe):
    a = pipe(["a red circle", "a blue square"], num_images=2, seed=7, base=FAST_BASE, upsample=FAST_UP)
    assert [im.size for im in a.images] == [(64, 64)] * 4
    assert [im.size for im in a.low_res] == [(16, 16)] * 4
    assert a.prompts == ["a red circle", "a red circle", "a blue square", "a blue square"]
    assert a.seeds == [7, 8, 9, 10]
    b = pipe(["a red circle", "a blue square"], num_images=2, seed=7, base=FAST_BASE, upsample=FAST_UP)
    for x, y in zip(_arrays(a.images), _arrays(b.images)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(a.images[1]))


def test_an_image_does_not_change_with_the_batch(pipe):
    # fp32: the random tiny models amplify bf16's batch-dependent rounding into other images.
    batch = pipe("a green star", num_images=3, seed=100, base=FAST_BASE, upsample=FAST_UP, dtype="fp32")
    single = pipe("a green star", num_images=1, seed=101, base=FAST_BASE, upsample=FAST_UP, dtype="fp32")
    assert _nearly_equal(_arrays(batch.images)[1], _arrays(single.images)[0])


def _nearly_equal(a, b):
    """Same noise, same computation up to batched-kernel float rounding, which can
    flip an 8-bit level of the low-res image and so move a few upsampled pixels."""
    diff = np.abs(a.astype(int) - b.astype(int))
    return (diff > 2).mean() < 0.01 and diff.mean() < 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"base": StageSettings("ddpm", "4", -1.0)}, "guidance_scale"),
        ({"base": StageSettings("ddpm", "abc", 3.0)}, "bad steps"),
        ({"base": StageSettings("euler", "4", 3.0)}, "unknown sampler"),
        ({"seed": -1}, "seed"),
        ({"num_images": 0}, "num_images"),
        ({"dtype": "fp16"}, "fp16 needs a CUDA"),
        ({"dtype": "fp64"}, "dtype must be"),
        ({"base": StageSettings("ddpm", "4", 3.0, guidance_interval=(0.8, 0.2))}, "guidance_interval"),
        ({"base": StageSettings("ddpm", "4", 3.0, guidance_interval=(0.0, 1.5))}, "guidance_interval"),
        ({"base": StageSettings("ddpm", "4", 3.0, candidates=0)}, "candidates must be"),
        ({"base": StageSettings("ddpm", "4", 3.0, candidates=2)}, "candidates=2 keeps the best"),  # no CLIP
        ({"upsample": StageSettings("ddim", "3", candidates=2)}, "base stage only"),
    ],
)
def test_bad_requests_fail_before_work(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe("a red circle", **{"base": FAST_BASE, "upsample": FAST_UP, **kwargs})


def test_guidance_interval(pipe):
    """The whole process: the same images as guiding every step; an interval no step falls in:
    the conditional model's images (guidance scale 1); a partial one: neither."""
    base = dataclasses.replace(FAST_BASE, sampler="ddim")  # deterministic: differences come from guidance
    kw = dict(num_images=2, seed=3, upsample=FAST_UP)
    every = _arrays(pipe("a red circle", base=base, **kw).low_res)
    full = _arrays(pipe("a red circle", base=dataclasses.replace(base, guidance_interval=(0.0, 1.0)), **kw).low_res)
    cond = _arrays(pipe("a red circle", base=dataclasses.replace(base, guidance_scale=1.0), **kw).low_res)
    # "4" keeps timesteps 0, 333, 666, 999 of 1000: none lies in [0.4, 0.6] x 1000.
    none = pipe("a red circle", base=dataclasses.replace(base, guidance_interval=(0.4, 0.6)), **kw)
    part = _arrays(pipe("a red circle", base=dataclasses.replace(base, guidance_interval=(0.5, 1.0)), **kw).low_res)
    for a, b, c, d in zip(every, full, cond, _arrays(none.low_res)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, d)
    assert not np.array_equal(every[0], cond[0])
    assert not np.array_equal(part[0], every[0]) and not np.array_equal(part[0], cond[0])
    assert none.settings["base"]["guidance_interval"] == (0.4, 0.6)


def test_long_prompt_is_truncated_with_a_warning(pipe):
    with pytest.warns(UserWarning, match="truncat"):
        pipe("a " * 40 + "red circle", base=FAST_BASE, upsample=FAST_UP)


def test_base_only_pipeline(checkpoints):
    pipe = Text2ImPipeline.from_pretrained(checkpoints[0], None, download=False)
    out = pipe("a red circle", base=FAST_BASE)
    assert out.images[0].size == (16, 16)


def test_bf16_held_weights_sample_in_bf16_only(checkpoints):
    if not native_bf16_cpu():
        pytest.skip("this CPU has no native bf16, which dtype='bf16' needs")
    pipe = Text2ImPipeline.from_pretrained(*checkpoints, download=False, dtype="bf16")
    assert pipe.base.model.token_embedding.weight.dtype == torch.bfloat16
    assert pipe.base.held_dtype == pipe.upsampler.held_dtype == "bf16"
    out = pipe("a red circle", base=FAST_BASE, upsample=FAST_UP, dtype="bf16")
    assert out.images[0].size == (64, 64)
    with pytest.raises(ValueError, match="held in bf16: sample with dtype='bf16'"):
        pipe("a red circle", base=FAST_BASE, upsample=FAST_UP, dtype="fp32")


def test_stage_kinds_are_checked(checkpoints):
    with pytest.raises(ValueError, match="upsampler"):
        Text2ImPipeline.from_pretrained(checkpoints[0], checkpoints[0], download=False)


def test_cli_sample_writes_pngs_with_metadata(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "sample",
            "a red circle",
            "-n",
            "2",
            "--seed",
            "3",
            "--base",
            checkpoints[0],
            "--upsampler",
            checkpoints[1],
            "--base-steps",
            "4",
            "--up-steps",
            "3",
            "-o",
            str(out),
            "--npz",
            "--no-progress",
        ]
    )
    assert rc == 0
    pngs = sorted(out.glob("*.png"))
    assert [re.sub("-[0-9a-f]{8}-", "-HASH-", p.name) for p in pngs] == [
        "a-red-circle-HASH-0-seed3.png",
        "a-red-circle-HASH-1-seed4.png",
    ]
    im = Image.open(pngs[0])
    assert im.size == (64, 64)
    assert im.text["prompt"] == "a red circle" and im.text["seed"] == "3"
    settings = json.loads(im.text["settings"])
    assert settings["base"]["steps"] == "4" and settings["upsample"]["sampler"] == "dpm++2m"  # the fast recipe's
    assert settings["base"]["guidance_interval"] is None  # the fast recipe guides every step
    npz = np.load(out / "samples.npz")
    assert npz["images"].shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(npz["images"][0], np.asarray(im.convert("RGB")))
    assert str(pngs[0]) in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, match",
    [
        (["-g", "-2"], "-g/--guidance-scale must be"),
        (["--base-steps", "0"], "bad steps"),
        (["--guidance-interval", "0.9,0.1"], "--guidance-interval must"),
        (["--seed", "-5"], "--seed must be"),
        (["--dtype", "fp16"], "fp16"),
        (["--device", "cuda"], "CUDA is not available"),
    ],
)
def test_cli_bad_input_is_a_clear_error_and_writes_nothing(checkpoints, tmp_path, capsys, args, match):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    rc = main(["sample", "x", "--base", checkpoints[0], "--upsampler", "none", "-o", str(out), "--no-progress", *args])
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_cli_guidance_interval_must_be_two_numbers(checkpoints, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "x", "--base", checkpoints[0], "--guidance-interval", "half"])
    assert e.value.code == 2 and "LO,HI" in capsys.readouterr().err


def test_cli_recipe_sets_what_the_stage_options_leave_unset():
    from glide_diffusion.cli.common import stage_settings
    from glide_diffusion.cli.sample import build_parser
    from glide_diffusion.pipelines.recipes import (
        FAST_BASE,
        FAST_UPSAMPLE,
        OFFICIAL_BASE,
        OFFICIAL_UPSAMPLE,
        SHAPES_BASE,
    )

    def settings(*argv):
        return stage_settings(build_parser().parse_args(["x", *argv]))

    assert settings() == (FAST_BASE, FAST_UPSAMPLE)  # the default: the measured fast path
    # The bundled Shapes base has its own measured default; --recipe and the options still win.
    assert settings("--base", "shapes-base") == (SHAPES_BASE, FAST_UPSAMPLE)
    assert SHAPES_BASE.guidance_scale == 5.0 and SHAPES_BASE.guidance_interval is None and SHAPES_BASE.candidates == 4
    assert settings("--base", "shapes-base", "--recipe", "fast") == (FAST_BASE, FAST_UPSAMPLE)
    assert settings("--base", "shapes-base", "-g", "3")[0] == dataclasses.replace(SHAPES_BASE, guidance_scale=3.0)
    assert settings("--base", "my.safetensors") == (FAST_BASE, FAST_UPSAMPLE)
    assert settings("--recipe", "official") == (OFFICIAL_BASE, OFFICIAL_UPSAMPLE)
    base, up = settings("--recipe", "official", "--base-steps", "50", "--guidance-interval", "0.2,0.9", "-g", "5")
    assert (base.sampler, base.steps, base.guidance_scale, base.guidance_interval) == ("ddpm", "50", 5.0, (0.2, 0.9))
    assert up == OFFICIAL_UPSAMPLE
    base, up = settings("--up-steps", "7", "--up-temperature", "1")
    assert base == FAST_BASE and (up.sampler, up.steps, up.temperature) == ("dpm++2m", "7", 1.0)
    assert up.guidance_scale == FAST_UPSAMPLE.guidance_scale
    _, up = settings("--up-guidance-scale", "2")
    assert up == dataclasses.replace(FAST_UPSAMPLE, guidance_scale=2.0)
    assert settings("--base", "shapes-base", "--candidates", "1")[0] == dataclasses.replace(SHAPES_BASE, candidates=1)
    assert settings("--candidates", "3")[0] == dataclasses.replace(FAST_BASE, candidates=3)


def test_cli_edit_and_inpaint_default_to_the_official_recipe():
    from glide_diffusion.cli.common import stage_settings
    from glide_diffusion.cli.edit import edit_parser, inpaint_parser
    from glide_diffusion.pipelines.recipes import OFFICIAL_BASE, OFFICIAL_UPSAMPLE

    base, up = stage_settings(edit_parser().parse_args(["in.png", "x"]))
    assert (base, up) == (OFFICIAL_BASE, OFFICIAL_UPSAMPLE)
    base, _ = stage_settings(inpaint_parser().parse_args(["in.png", "x", "--rect", "0,0,8,8"]))
    assert base == OFFICIAL_BASE


def test_cli_inpaint_samples_the_bundled_model_as_measured():
    from glide_diffusion.cli.common import resolve_models, stage_settings
    from glide_diffusion.cli.edit import inpaint_parser
    from glide_diffusion.pipelines.recipes import INPAINT_UPSAMPLE_DEFAULTS, OFFICIAL_BASE, SHAPES_INPAINT

    def settings(*argv):
        args = inpaint_parser().parse_args(["in.png", "x", *argv])
        resolve_models(args)
        return stage_settings(args)

    assert settings("--models", "shapes") == (SHAPES_INPAINT, INPAINT_UPSAMPLE_DEFAULTS)
    assert SHAPES_INPAINT.candidates == 4 and SHAPES_INPAINT.sampler == "dpm++2m"
    assert settings("--models", "shapes", "--candidates", "1", "--base-steps", "50")[0] == dataclasses.replace(
        SHAPES_INPAINT, candidates=1, steps="50"
    )
    assert settings("--models", "shapes", "--recipe", "official")[0] == OFFICIAL_BASE
    assert settings("--models", "glide")[0] == OFFICIAL_BASE


def test_cli_missing_weights_says_how_to_get_them(tmp_path, capsys):
    rc = main(["sample", "x", "--models", "glide", "--cache-dir", str(tmp_path), "--no-download", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "glide download base" in err and str(tmp_path) in err


def test_cli_help_and_unknown_command(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    with pytest.raises(SystemExit):
        main(["paint"])


def test_batch_size_does_not_change_images(pipe):
    run = dict(num_images=2, seed=5, base=FAST_BASE, upsample=FAST_UP, dtype="fp32")  # as above
    a = pipe(["a red circle", "a blue square"], **run)
    b = pipe(["a red circle", "a blue square"], batch_size=3, **run)
    assert b.settings["batch_size"] == 3
    for x, y in zip(_arrays(a.images), _arrays(b.images)):
        assert _nearly_equal(x, y)
    with pytest.raises(ValueError, match="batch_size"):
        pipe("x", base=FAST_BASE, upsample=FAST_UP, batch_size=0)


@pytest.fixture
def clip_vocab(monkeypatch):
    """The CLIP tests' tokenizer file: the package's own copy, found without $GLIDE_VOCAB_DIR."""
    from glide_diffusion.clip.tokenizer import shipped_clip_vocab

    monkeypatch.delenv("GLIDE_VOCAB_DIR", raising=False)
    assert shipped_clip_vocab() is not None
    return shipped_clip_vocab().parent


def test_clip_guided_sampling(checkpoints, clip_vocab):
    from glide_diffusion.clip import build_clip

    torch.manual_seed(0)
    clip = build_clip("tiny").eval()
    pipe = Text2ImPipeline.from_pretrained(checkpoints[0], None, download=False)
    plain = pipe("a red circle", seed=2, base=FAST_BASE)
    with pytest.raises(ValueError, match="noised CLIP"):
        pipe("a red circle", base=FAST_BASE, clip_guidance_scale=3.0)
    pipe.clip = clip
    guided = pipe("a red circle", seed=2, base=FAST_BASE, clip_guidance_scale=50.0)
    assert guided.settings["clip_guidance_scale"] == 50.0
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(guided.images[0]))


def test_cli_clip_guidance(checkpoints, clip_vocab, tmp_path, capsys):
    from glide_diffusion.clip import build_clip
    from glide_diffusion.clip.loading import save_clip

    clip_path = save_clip(tmp_path / "clip.safetensors", build_clip("tiny"))
    out = tmp_path / "out"
    rc = main(
        [
            "sample",
            "a red circle",
            "--base",
            checkpoints[0],
            "--upsampler",
            "none",
            "--base-steps",
            "3",
            "--clip-guidance-scale",
            "3",
            "--clip",
            str(clip_path),
            "-g",
            "1",
            "-o",
            str(out),
            "--no-progress",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    (png,) = out.glob("a-red-circle-*-0-seed0.png")
    settings = json.loads(Image.open(png).text["settings"])
    assert settings["clip_guidance_scale"] == 3.0 and settings["clip_model"] == str(clip_path)


def test_clip_rerank_keeps_the_best_scored_images(checkpoints, clip_vocab, tmp_path, capsys):
    from glide_diffusion.clip import build_clip
    from glide_diffusion.clip.loading import save_clip
    from glide_diffusion.guidance.rerank import clip_scores
    from glide_diffusion.pipelines.images import from_pil

    torch.manual_seed(0)
    clip = build_clip("tiny").eval()
    pipe = Text2ImPipeline.from_pretrained(checkpoints[0], None, download=False)
    result = pipe(["a red circle", "a blue square"], num_images=4, seed=5, base=FAST_BASE)
    with pytest.raises(ValueError, match="noised CLIP"):
        pipe.rerank(result, 2)
    pipe.clip = clip
    with pytest.raises(ValueError, match="keep must be"):
        pipe.rerank(result, 5)
    best = pipe.rerank(result, 2)
    assert best.prompts == ["a red circle"] * 2 + ["a blue square"] * 2
    for p, first in (("a red circle", 0), ("a blue square", 4)):
        images = torch.cat([from_pil(im) for im in result.low_res[first : first + 4]])
        scores = clip_scores(clip, images, p)
        top = torch.argsort(scores, descending=True, stable=True)[:2].tolist()
        got = [s for s, q in zip(best.seeds, best.prompts) if q == p]
        assert got == [result.seeds[first + j] for j in top]
    kept = best.settings["clip_rerank"]
    assert kept["keep"] == 2 and kept["scores"][0] >= kept["scores"][1]
    # A prompt asked for twice is two requests: each keeps its own best, not the pooled best.
    twice = pipe(["a red circle", "a red circle"], num_images=2, seed=5, base=FAST_BASE)
    picked = pipe.rerank(twice, 1).seeds
    assert picked[0] in twice.seeds[:2] and picked[1] in twice.seeds[2:]
    with pytest.raises(ValueError, match="keep must be"):
        pipe.rerank(twice, 3)
    assert pipe.rerank(best, 1).prompts == ["a red circle", "a blue square"]  # a reranked result again
    mixed = dataclasses.replace(result, prompts=result.prompts[1:] + result.prompts[:1])
    with pytest.raises(ValueError, match="not whole runs"):
        pipe.rerank(mixed, 1)

    clip_path = save_clip(tmp_path / "clip.safetensors", clip)
    out = tmp_path / "out"
    args = [
        "sample",
        "a red circle",
        "--base",
        checkpoints[0],
        "--upsampler",
        "none",
        "--base-steps",
        "3",
        "-n",
        "3",
        "--rerank",
        "1",
        "--clip",
        str(clip_path),
        "-o",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert len(list(out.glob("*.png"))) == 1
    bad = [a if a != "1" else "4" for a in args]  # --rerank 4 with -n 3
    assert main([a if a != str(out) else str(tmp_path / "bad") for a in bad]) != 0
    assert "--rerank must be in 1..3" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_rerank_before_upsampling_gives_the_images_of_reranking_after(checkpoints, clip_vocab, monkeypatch):
    from glide_diffusion.clip import build_clip

    torch.manual_seed(0)
    pipe = Text2ImPipeline.from_pretrained(*checkpoints, download=False)
    prompts = ["a red circle", "a blue square"]
    run = dict(num_images=3, seed=11, base=FAST_BASE, upsample=FAST_UP, dtype="fp32")  # batch-independent rounding
    with pytest.raises(ValueError, match="noised CLIP"):
        pipe(prompts, rerank=1, **run)
    pipe.clip = build_clip("tiny").eval()
    for bad in (0, 4, True, 1.0):
        with pytest.raises(ValueError, match="rerank must be"):
            pipe(prompts, rerank=bad, **run)
    upsampled = []
    real_stage = text2im.sample_stage
    monkeypatch.setattr(
        text2im,
        "sample_stage",
        lambda stage, rows, *a, **k: (
            upsampled.extend(rows) if stage is pipe.upsampler else None,
            real_stage(stage, rows, *a, **k),
        )[1],
    )
    after = pipe.rerank(pipe(prompts, **run), 2)
    assert len(upsampled) == 6
    upsampled.clear()
    before = pipe(prompts, rerank=2, **run)
    assert len(upsampled) == 4  # only the kept images are upsampled
    assert before.seeds == after.seeds and before.prompts == after.prompts
    assert before.settings["clip_rerank"] == after.settings["clip_rerank"]
    for x, y in zip(_arrays(before.low_res), _arrays(after.low_res)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(_arrays(before.images), _arrays(after.images)):  # upsampled 4 at a time, not 6
        assert _nearly_equal(x, y)
    upsampled.clear()
    chunked = pipe(prompts, rerank=2, batch_size=3, **run)  # batches need not follow the prompts
    assert len(upsampled) == 4 and chunked.seeds == after.seeds
    assert all(_nearly_equal(x, y) for x, y in zip(_arrays(chunked.images), _arrays(after.images)))


def test_best_of_candidates_keeps_the_best_of_each_group(checkpoints, clip_vocab, tmp_path, capsys):
    from glide_diffusion.clip import build_clip
    from glide_diffusion.clip.loading import save_clip
    from glide_diffusion.guidance.rerank import clip_scores
    from glide_diffusion.pipelines.images import from_pil

    torch.manual_seed(0)
    guide, judge = build_clip("tiny").eval(), build_clip("tiny").eval()
    pipe = Text2ImPipeline.from_pretrained(*checkpoints, download=False)
    pipe.clip, pipe.rerank_clip, pipe.rerank_clip_name = guide, judge, "judge"
    prompts = ["a red circle", "a blue square"]
    best3 = dataclasses.replace(FAST_BASE, candidates=3)
    best = pipe(prompts, num_images=2, seed=3, base=best3, upsample=FAST_UP)
    assert best.prompts == ["a red circle"] * 2 + ["a blue square"] * 2 and len(best.images) == 4
    everything = pipe(prompts, num_images=6, seed=3, base=FAST_BASE, upsample=FAST_UP)
    for p, first in (("a red circle", 0), ("a blue square", 6)):  # the reranking CLIP chose, not the guiding one
        scores = clip_scores(judge, torch.cat([from_pil(im) for im in everything.low_res[first : first + 6]]), p)
        top = [g * 3 + int(torch.argmax(scores[g * 3 : (g + 1) * 3])) for g in range(2)]  # best of each 3, in order
        assert [s for s, q in zip(best.seeds, best.prompts) if q == p] == [everything.seeds[first + j] for j in top]
        assert top[0] < 3 <= top[1]  # one from each group, not the best two of all six
    assert best.settings["clip_rerank"]["of"] == 6 and best.settings["clip_rerank"]["clip_model"] == "judge"
    assert best.settings["base"]["candidates"] == 3 and best.settings["clip_rerank"]["best_of"] == 3
    reranked = pipe(prompts, num_images=2, seed=3, base=best3, rerank=1)  # the better of the two group winners
    scores = best.settings["clip_rerank"]["scores"]
    assert reranked.seeds == [best.seeds[i + int(scores[i + 1] > scores[i])] for i in (0, 2)]
    clip_path = save_clip(tmp_path / "judge.safetensors", judge)
    loaded = Text2ImPipeline.from_pretrained(*checkpoints, download=False, rerank_clip=str(clip_path))
    assert loaded.rerank_clip_name == str(clip_path)
    assert loaded(prompts, num_images=2, seed=3, base=best3, upsample=FAST_UP).seeds == best.seeds
    # Inpainting and editing sample one image per request: best-of-N is refused, not ignored.
    with pytest.raises(ValueError, match="candidates .* is for text-to-image"):
        text2im.validate_request(["x"], 1, 0, best3, FAST_UP, "fp32", torch.device("cpu"))

    out = tmp_path / "out"
    args = [
        "sample",
        "a red circle",
        "--base",
        checkpoints[0],
        "--upsampler",
        "none",
        "--base-steps",
        "3",
        "--candidates",
        "2",
        "--clip",
        str(clip_path),
        "-o",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0, capsys.readouterr().err
    (png,) = out.glob("*.png")
    settings = json.loads(Image.open(png).text["settings"])
    assert settings["base"]["candidates"] == 2 and settings["clip_rerank"]["of"] == 2
    bad = [a if a != str(out) else str(tmp_path / "bad") for a in args]
    assert main([a if a != "2" else "0" for a in bad]) != 0
    assert "candidates must be an integer in 1..64" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_cli_picks_the_reranking_clip_of_the_base_model(monkeypatch):
    from glide_diffusion import bundled
    from glide_diffusion.cli import sample as sample_cli
    from glide_diffusion.cli.common import resolve_models

    def choices(argv, reranks=True, ships=bundled.NAMES):
        monkeypatch.setattr(bundled, "available", lambda: list(ships))
        args = sample_cli.build_parser().parse_args(["x", *argv])
        resolve_models(args)
        return sample_cli._clip_choices(args, reranks)

    assert choices(["--models", "shapes"]) == (None, "shapes-clip-rerank")
    assert choices(["--models", "shapes", "--clip-guidance-scale", "3"]) == ("shapes-clip", "shapes-clip-rerank")
    assert choices(["--models", "shapes", "--clip-guidance-scale", "3"], reranks=False) == ("shapes-clip", None)
    assert choices(["--models", "shapes", "--clip", "c.safetensors"]) == (None, "c.safetensors")
    no_judge = [n for n in bundled.NAMES if n != "shapes-clip-rerank"]
    assert choices(["--models", "shapes"], ships=no_judge) == (None, "shapes-clip")
    assert choices(["--models", "glide", "--clip-guidance-scale", "3"]) == ("released", "released")
    assert choices(["--models", "glide"], reranks=False) == (None, None)


def test_cli_model_families(monkeypatch):
    from glide_diffusion import bundled
    from glide_diffusion.cli import edit as edit_cli
    from glide_diffusion.cli import sample as sample_cli
    from glide_diffusion.cli.common import resolve_models

    def models(parser, argv):
        args = parser.parse_args(argv)
        resolve_models(args)
        return args.base, args.upsampler

    # The default: the bundled Shapes models where both ship, else the released GLIDE weights.
    for ships in (True, False):
        monkeypatch.setattr(bundled, "available", lambda ships=ships: list(bundled.NAMES) if ships else [])
        family = {"shapes": ("shapes-base", "shapes-upsample"), "glide": ("base", "upsample")}
        assert models(sample_cli.build_parser(), ["x"]) == family["shapes" if ships else "glide"]
    monkeypatch.setattr(bundled, "available", lambda: ["shapes-base", "shapes-upsample"])
    assert models(edit_cli.inpaint_parser(), ["i", "x"]) == ("base-inpaint", "upsample-inpaint")
    assert models(sample_cli.build_parser(), ["x"]) == ("shapes-base", "shapes-upsample")
    assert models(sample_cli.build_parser(), ["x", "--models", "shapes"]) == ("shapes-base", "shapes-upsample")
    assert models(sample_cli.build_parser(), ["x", "--models", "glide"]) == ("base", "upsample")
    assert models(sample_cli.build_parser(), ["x", "--models", "glide", "--upsampler", "none"]) == ("base", "none")
    assert models(edit_cli.inpaint_parser(), ["i", "x", "--models", "shapes"]) == (
        "shapes-inpaint",
        "shapes-upsample-inpaint",
    )
    assert models(edit_cli.inpaint_parser(), ["i", "x", "--models", "glide"]) == ("base-inpaint", "upsample-inpaint")
    assert models(edit_cli.edit_parser(), ["i", "x", "--base", "my.safetensors"]) == (
        "my.safetensors",
        "shapes-upsample",
    )


def test_glide_sample_runs_the_distilled_shapes_base_where_it_ships(monkeypatch):
    from glide_diffusion import bundled
    from glide_diffusion.cli import edit as edit_cli
    from glide_diffusion.cli import sample as sample_cli
    from glide_diffusion.cli.common import resolve_models, stage_settings
    from glide_diffusion.pipelines.recipes import SHAPES_BASE, SHAPES_DISTILLED

    def settings(parser, argv, distilled):
        args = parser.parse_args(argv)
        resolve_models(args, distilled=distilled)
        return args.base, stage_settings(args)[0]

    for ships in (True, False):
        names = [n for n in bundled.NAMES if ships or n != "shapes-base-distilled"]
        monkeypatch.setattr(bundled, "available", lambda names=names: names)
        want = ("shapes-base-distilled", SHAPES_DISTILLED) if ships else ("shapes-base", SHAPES_BASE)
        assert settings(sample_cli.build_parser(), ["x"], True) == want
        # Asked for by name, or from another command, the base it was distilled from.
        assert settings(sample_cli.build_parser(), ["x", "--base", "shapes-base"], True) == ("shapes-base", SHAPES_BASE)
        assert settings(edit_cli.edit_parser(), ["i", "x"], False)[0] == "shapes-base"

    def spy(args, **kw):
        raise RuntimeError(kw)

    monkeypatch.setattr(sample_cli, "resolve_models", spy)
    with pytest.raises(RuntimeError, match="'distilled': True"):  # glide sample asks for it
        sample_cli.main(["x"])


def test_bundled_shapes_models_sample_by_default(tmp_path):
    """The README's main-job command: the bundled Shapes models, nothing downloaded."""
    from glide_diffusion import bundled

    if not {"shapes-base", "shapes-upsample"} <= set(bundled.available()):
        pytest.skip("the Shapes models are not bundled in this installation")
    out = tmp_path / "out"
    rc = main(
        [
            "sample",
            "a large red circle on a white background",
            "--base-steps",
            "10",
            "--up-steps",
            "5",
            "--no-download",
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    (png,) = out.glob("*.png")
    im = Image.open(png)
    settings = json.loads(im.text["settings"])
    distilled = "shapes-base-distilled" in bundled.available()  # glide sample's Shapes base where it ships
    assert im.size == (128, 128) and settings["base_model"] == ("shapes-base-distilled" if distilled else "shapes-base")
    assert settings["upsample_model"] == "shapes-upsample"
    if "shapes-clip-rerank" in bundled.available():  # the shapes recipe: best of 4 by the reranking CLIP
        assert settings["clip_rerank"]["of"] == 4 and settings["clip_rerank"]["clip_model"] == "shapes-clip-rerank"
    # The evaluator reads what the bundled models draw reliably (model cards: background
    # 100%, colour ~80% of test captions); this seed's image is right on both.
    from glide_diffusion.eval.shapes_eval import score

    result = score("a large red circle on a white background", im.convert("RGB"))
    assert result["background"] and result["colour"], result


def test_shapes_family_guides_with_the_bundled_shapes_clip(tmp_path, capsys):
    from glide_diffusion import bundled

    if not {"shapes-base", "shapes-clip"} <= set(bundled.available()):
        pytest.skip("the Shapes base model and CLIP are not bundled in this installation")
    out = tmp_path / "out"
    rc = main(
        [
            "sample",
            "a red circle",
            "--models",
            "shapes",
            "--upsampler",
            "none",
            "--base-steps",
            "4",
            "--clip-guidance-scale",
            "3",
            "-g",
            "1",
            "-n",
            "2",
            "--rerank",
            "1",
            "--no-download",
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    (png,) = out.glob("*.png")
    settings = json.loads(Image.open(png).text["settings"])
    judge = "shapes-clip-rerank" if "shapes-clip-rerank" in bundled.available() else "shapes-clip"
    assert settings["clip_model"] == "shapes-clip" and settings["clip_rerank"]["clip_model"] == judge


def _compiled_pipe(checkpoints, monkeypatch, backend):
    """A fresh pipeline whose stages go through torch.compile with ``backend``."""
    calls, real_compile = [], torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kw: calls.append(model) or real_compile(model, backend=backend, **kw)
    )
    fresh = Text2ImPipeline.from_pretrained(*checkpoints, download=False)
    compile_stages(fresh, argparse.Namespace(compile=True))  # what --compile does
    assert calls == [fresh.base.model, fresh.upsampler.model]
    return fresh


def test_compiled_stages_sample_the_same_images(pipe, checkpoints, monkeypatch):
    """--compile goes through torch.compile; here with dynamo's eager backend (no C++ build in
    the test suite), which traces each step as inductor would but runs the same kernels."""
    run = dict(
        num_images=2, seed=4, base=dataclasses.replace(FAST_BASE, guidance_interval=(0.5, 1.0)), upsample=FAST_UP
    )
    compiled = _compiled_pipe(checkpoints, monkeypatch, "eager")(["a red circle"], **run)
    plain = pipe(["a red circle"], **run)
    for x, y in zip(_arrays(plain.images), _arrays(compiled.images)):
        np.testing.assert_array_equal(x, y)
    torch._dynamo.reset()


def test_compiled_stages_fall_back_to_eager_where_the_backend_fails(pipe, checkpoints, monkeypatch):
    tried = []

    def broken_backend(gm, example_inputs):
        tried.append(gm)
        raise RuntimeError("no C++ compiler found")

    compiled = _compiled_pipe(checkpoints, monkeypatch, broken_backend)("a blue square", seed=2, base=FAST_BASE)
    plain = pipe("a blue square", seed=2, base=FAST_BASE)
    assert tried  # the backend was tried
    np.testing.assert_array_equal(_arrays(plain.images)[0], _arrays(compiled.images)[0])
    assert not torch._dynamo.config.suppress_errors  # the fallback is the step's, not the process's
    torch._dynamo.reset()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_same_seed_same_image_for_every_sampler(pipe, sampler):
    base, up = StageSettings(sampler, "4", 3.0), StageSettings(sampler, "3", 1.0, 0.997)
    a, b = (pipe(["a red circle", "a blue square"], seed=11, base=base, upsample=up) for _ in range(2))
    for x, y in zip(_arrays(a.images), _arrays(b.images)):
        np.testing.assert_array_equal(x, y)
    other = pipe(["a red circle", "a blue square"], seed=12, base=base, upsample=up)
    assert not np.array_equal(_arrays(a.images)[0], _arrays(other.images)[0])

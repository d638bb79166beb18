"""Composable prompts ("A :1.5 AND B AND NOT C") and negative prompts: the parser, the guidance
wrapper (classifier-free guidance is its one-term case), and the pipelines and commands."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from glide_diffusion.checkpoints import build_model, save_model
from glide_diffusion.cli.main import main
from glide_diffusion.guidance import classifier_free_guidance, composed_guidance
from glide_diffusion.pipelines import text2im
from glide_diffusion.pipelines.captions import CaptionWarning, warn_captions
from glide_diffusion.pipelines.edit import EditPipeline
from glide_diffusion.pipelines.images import mask_from_rects
from glide_diffusion.pipelines.inpaint import InpaintPipeline
from glide_diffusion.pipelines.prompts import (
    MAX_TERMS,
    Composition,
    CompositionError,
    CompositionWarning,
    Term,
    parse_prompt,
    warn_unused_negative,
)
from glide_diffusion.pipelines.recipes import StageSettings
from glide_diffusion.pipelines.stage import Stage, sample_stage
from glide_diffusion.pipelines.text2im import Text2ImPipeline
from glide_diffusion.presets import get_preset
from glide_diffusion.sampling import PerSampleNoise, sample_ddim
from glide_diffusion.unet.model import TextCondition

pytestmark = pytest.mark.usefixtures("small_cpu_work")

BASE = StageSettings("ddim", "3", 3.0)  # deterministic: differences come from the guidance
UP = StageSettings("ddim", "2", 1.0, 0.997)


# --- the parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    ["a red circle and a blue star", "a sign: no entry", "not a circle", "", "ANDROID", "a BAND of NOTES", "x :2"],
)
def test_prompts_without_the_keywords_are_plain_captions_verbatim(prompt):
    assert parse_prompt(prompt) == Composition((Term(prompt, 1.0),))
    assert not parse_prompt(prompt).composed


@pytest.mark.parametrize(
    "prompt, terms",
    [
        ("a red circle AND a blue star", [("a red circle", 1.0), ("a blue star", 1.0)]),
        (
            "a red circle on the left :1.5 AND a blue star on the right",
            [("a red circle on the left", 1.5), ("a blue star on the right", 1.0)],
        ),
        ("a circle :2 AND NOT red", [("a circle", 2.0), ("red", -1.0)]),
        ("  a circle:2 AND   NOT  red :0.5  ", [("a circle", 2.0), ("red", -0.5)]),
        ("a AND b :-1 AND NOT c :-.5 AND d :1e-1 AND e :+3", [("a", 1), ("b", -1), ("c", 0.5), ("d", 0.1), ("e", 3)]),
        ("a cat and a dog AND not a mouse", [("a cat and a dog", 1.0), ("not a mouse", 1.0)]),  # lower case: words
        ("a :0 AND b", [("a", 0.0), ("b", 1.0)]),
    ],
)
def test_parse_terms_and_weights(prompt, terms):
    comp = parse_prompt(prompt)
    assert comp.terms == tuple(Term(t, float(w)) for t, w in terms)
    assert comp.composed


@pytest.mark.parametrize(
    "prompt, position, problem",
    [
        ("a circle AND", 9, "dangling AND"),
        ("AND a circle", 0, "nothing before AND"),
        ("a AND  AND b", 7, "empty term between two ANDs"),
        ("a :x AND b", 3, "'x' is not a number"),
        ("a :1.5.2 AND b", 3, "'1.5.2' is not a number"),
        ("a :nan AND b", 3, "'nan' is not a number"),
        ("a :1e999 AND b", 3, "not finite"),
        ("a : AND b", 2, "no weight after ':'"),
        ("a AND :2", 6, "empty term before its weight"),
        ("a AND NOT", 6, "nothing after NOT"),
        ("a AND b NOT c", 8, "NOT can only begin a term"),
        ("DO NOT ENTER", 3, "NOT can only begin a term"),
        (" AND ".join("abcdefghi"), 2 + 6 * (MAX_TERMS - 1), f"more than {MAX_TERMS} terms"),  # the 8th AND
    ],
)
def test_malformed_compositions_point_at_the_character(prompt, position, problem):
    with pytest.raises(CompositionError) as e:
        parse_prompt(prompt)
    assert e.value.position == position and problem in e.value.problem
    message = str(e.value)
    assert f"character {position + 1}:" in message
    head, shown, caret = message.split("\n")
    assert shown == "  " + prompt and caret == "  " + " " * position + "^"
    assert isinstance(e.value, ValueError)


def test_term_limit_and_negative_compositions():
    assert len(parse_prompt(" AND ".join("abcdefgh")).terms) == MAX_TERMS
    for prompt in ["NOT a red circle", "NOT a AND NOT b", "a :-1 AND b :0"]:
        with pytest.raises(CompositionError, match="every term is negative"):
            parse_prompt(prompt)
    with pytest.warns(CompositionWarning, match="sum to 0"):
        parse_prompt("a circle AND NOT red")
    with pytest.warns(CompositionWarning, match="sum to 0"):
        parse_prompt("a :0.5 AND b :0.25 AND NOT c :0.75")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_prompt("a circle :2 AND NOT red")
        parse_prompt("a circle AND NOT red", warn=False)


def test_composition_caption_and_json():
    comp = parse_prompt("a red circle :2 AND NOT a star AND a blue square")
    assert comp.caption == "a red circle and a blue square"  # what the upsampler conditions on
    assert Composition.plain("a sign: AND").caption == "a sign: AND"
    assert comp.to_json() == [
        {"text": "a red circle", "weight": 2.0},
        {"text": "a star", "weight": -1.0},
        {"text": "a blue square", "weight": 1.0},
    ]


# --- the wrapper ----------------------------------------------------------------------------------


class RowModel:
    """A fake denoiser whose every row has its own caption: row r adds offset[r] to eps and
    10 * offset[r] to v, so each output row names the caption it was given."""

    def __init__(self, offsets):
        self.offsets = torch.tensor(offsets, dtype=torch.float32)
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        assert x.shape[0] == len(self.offsets)
        o = self.offsets.view(-1, 1, 1, 1)
        return torch.cat([0.5 * x + 0.001 * t.view(-1, 1, 1, 1) + o, torch.tanh(x) + 10 * o], dim=1)


def _inputs(batch=2, channels=3):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, 4, 4, generator=gen), torch.tensor([999, 17, 400][:batch])


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0, 7.5])
def test_one_term_of_weight_one_is_classifier_free_guidance_exactly(scale):
    model = RowModel([1.0, 2.0, 0.0, 0.0])
    x, t = _inputs()
    cfg = classifier_free_guidance(model, scale)(x, t)
    composed = composed_guidance(model, scale, [[1.0], [1.0]])(x, t)
    broadcast = composed_guidance(model, scale)(x, t)
    assert torch.equal(cfg, composed) and torch.equal(cfg, broadcast)
    out = model(torch.cat([x, x]), torch.cat([t, t]))
    eps_c, eps_u = out[:2, :3], out[2:, :3]
    assert torch.equal(cfg[:, :3], eps_u + scale * (eps_c - eps_u))  # CFG's own formula, bit for bit
    assert torch.equal(cfg[:, 3:], out[:2, 3:])


def test_several_terms_are_the_weighted_sum_in_one_call():
    """Image 0: terms (a :1.5, b :-0.5); image 1: (c :2, d :1, e :0.25); then the 2 unconditional rows."""
    weights = [[1.5, -0.5], [2.0, 1.0, 0.25]]
    model = RowModel([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, -1.0])
    x, t = _inputs()
    out = composed_guidance(model, 3.0, weights)(x, t)
    assert len(model.calls) == 1
    xr, tr = model.calls[0]
    owner = [0, 0, 1, 1, 1]
    assert torch.equal(xr, torch.cat([x[owner], x])) and torch.equal(tr, torch.cat([t[owner], t]))
    rows = model(xr, tr).double()
    eps, v = rows[:, :3], rows[:, 3:]
    expected0 = eps[5] + 3.0 * (1.5 * (eps[0] - eps[5]) - 0.5 * (eps[1] - eps[5]))
    expected1 = eps[6] + 3.0 * (2.0 * (eps[2] - eps[6]) + 1.0 * (eps[3] - eps[6]) + 0.25 * (eps[4] - eps[6]))
    torch.testing.assert_close(out[:, :3].double(), torch.stack([expected0, expected1]), atol=1e-5, rtol=0)
    assert torch.equal(out[0, 3:], v[0].float()) and torch.equal(out[1, 3:], v[2].float())  # the lead terms


def test_the_variance_comes_from_the_first_positive_term():
    model = RowModel([1.0, 2.0, 0.0])
    x, t = _inputs(1)
    out = composed_guidance(model, 3.0, [[-1.0, 2.0]])(x, t)
    assert torch.equal(out[:, 3:], model(torch.cat([x, x, x]), torch.cat([t, t, t]))[1:2, 3:])


def test_composed_guidance_rejects_bad_weights_and_shapes():
    model = RowModel([1.0, 0.0])
    for weights in ([[-1.0, 0.0]], [[]], [], [[float("nan")]]):
        with pytest.raises(ValueError, match="weight|term"):
            composed_guidance(model, 3.0, weights)
    x, t = _inputs()
    with pytest.raises(ValueError, match="2 images"):
        composed_guidance(model, 3.0, [[1.0], [1.0]])(x[:1], t[:1])

    def four_rows(x, t):
        return torch.cat([x, x], dim=1)[:4]

    with pytest.raises(ValueError, match="for 5 rows"):  # 3 term rows + 2 unconditional expected
        composed_guidance(four_rows, 3.0, [[1.0, 1.0], [1.0]])(x, t)


def test_interval_outside_rows_take_the_composition_at_scale_one():
    model = RowModel([1.0, 2.0, 3.0, 0.0, -1.0])
    weights = [[1.5, -0.5], [2.0]]
    x, t = _inputs()  # t = [999, 17]
    calls = []

    def conditional(x, t):
        calls.append(1)

    out = composed_guidance(model, 3.0, weights, interval=(100, 999), conditional=conditional)(x, t)
    full = composed_guidance(model, 3.0, weights)(x, t)
    at_one = composed_guidance(model, 1.0, weights)(x, t)
    assert torch.equal(out[:1], full[:1])  # inside
    torch.testing.assert_close(out[1:], at_one[1:], atol=1e-6, rtol=0)  # outside: s = 1
    assert calls == []
    composed_guidance(model, 3.0, weights, interval=(100, 999), conditional=conditional)(x, torch.tensor([5, 6]))
    assert calls == [1]


# --- a stage with a tiny model: the rows the model sees ------------------------------------------


def _stage(name, seed):
    torch.manual_seed(seed)
    model = build_model(name).eval()
    with torch.no_grad():  # non-zero outputs: perturb the zero-initialised layers too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return Stage(model, get_preset(name), name)


@pytest.fixture(scope="module")
def stages():
    return {n: _stage(n, i) for i, n in enumerate(["tiny", "tiny-inpaint", "tiny-upsample", "tiny-upsample-inpaint"])}


def _by_hand(stage, captions, negative, weights, scale, seeds, steps="3"):
    """DDIM with composed guidance over text rows bound by hand: ``captions`` the term rows
    image-major, then one ``negative`` row per image."""
    text = TextCondition.cat([stage.encode(captions), stage.encode([negative]).repeat(len(seeds))])

    def model(x, t):
        return stage.model(x, t, text=text)

    noise = PerSampleNoise(seeds)
    x_T = noise.initial((3, stage.image_size, stage.image_size))
    return sample_ddim(composed_guidance(model, scale, weights), stage.schedule(steps), x_T)


@torch.inference_mode()
def test_the_wrapper_is_the_weighted_sum_of_the_tiny_models_outputs_exactly(stages):
    """One forward of the tiny model over [a, b, c | d, e | neg, neg] gives exactly
    eps_neg + s * sum_k w_k (eps_k - eps_neg) per image, summed in the order written."""
    stage = stages["tiny"]
    text = TextCondition.cat(
        [
            stage.encode(["a red circle", "a star", "a blue square", "a cross", "a green star"]),
            stage.encode(["red"]).repeat(2),
        ]
    )

    def model(x, t):
        return stage.model(x, t, text=text)

    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([700, 300])
    out = composed_guidance(model, 4.0, [[1.5, -0.5, 1.0], [2.0, 0.25]])(x, t)
    rows = model(torch.cat([x[[0, 0, 0, 1, 1]], x]), torch.cat([t[[0, 0, 0, 1, 1]], t]))
    e, v = rows[:, :3], rows[:, 3:]
    want0 = e[5] + 4.0 * (1.5 * (e[0] - e[5]) + -0.5 * (e[1] - e[5]) + 1.0 * (e[2] - e[5]))
    want1 = e[6] + 4.0 * (2.0 * (e[3] - e[6]) + 0.25 * (e[4] - e[6]))
    assert torch.equal(out, torch.cat([torch.stack([want0, want1]), v[[0, 3]]], dim=1))
    pair = TextCondition.cat([stage.encode(["a red circle"]), stage.encode(["red"])])

    def doubled(x, t):
        return stage.model(x, t, text=pair)

    cfg = classifier_free_guidance(doubled, 4.0)(x[:1], t[:1])
    assert torch.equal(cfg, composed_guidance(doubled, 4.0, [[1.0]])(x[:1], t[:1]))
    e = doubled(torch.cat([x[:1], x[:1]]), torch.cat([t[:1], t[:1]]))
    assert torch.equal(cfg[:, :3], e[1:, :3] + 4.0 * (e[:1, :3] - e[1:, :3]))


@torch.inference_mode()
def test_sample_stage_binds_terms_then_the_negative_rows(stages):
    stage = stages["tiny"]
    comps = [parse_prompt("a red circle :1.5 AND NOT a star AND a blue square"), Composition.plain("a cross")]
    got = sample_stage(stage, comps, PerSampleNoise([4, 5]), BASE, negative="green")
    want = _by_hand(
        stage, ["a red circle", "a star", "a blue square", "a cross"], "green", [[1.5, -1.0, 1.0], [1.0]], 3.0, [4, 5]
    )
    assert torch.equal(got, want)
    plain = sample_stage(stage, ["a cross"], PerSampleNoise([5]), BASE, negative="green")
    assert torch.equal(plain, _by_hand(stage, ["a cross"], "green", [[1.0]], 3.0, [5]))
    torch.testing.assert_close(plain, got[1:], atol=1e-4, rtol=0)  # the same image, other batch rows


@torch.inference_mode()
def test_one_forward_per_step_of_k_plus_one_rows(stages, monkeypatch):
    stage = stages["tiny"]
    rows = []
    step = stage.step
    monkeypatch.setattr(stage, "step", lambda x, t, **kw: rows.append(x.shape[0]) or step(x, t, **kw))
    comps = [parse_prompt("a AND b AND NOT c :0.5"), parse_prompt("d :2 AND e")]
    for sampler in ("ddpm", "ddim", "dpm++2m"):
        rows.clear()
        sample_stage(stage, comps, PerSampleNoise([0, 1]), StageSettings(sampler, "4", 3.0))
        assert rows == [3 + 2 + 2] * 4  # (K + 1) rows per image, one call per step
    rows.clear()
    sample_stage(stage, ["a"] * 2, PerSampleNoise([0, 1]), StageSettings("ddim", "4", 1.0))
    assert rows == [2] * 4  # a caption at scale 1: the conditional model alone
    rows.clear()
    sample_stage(stage, comps, PerSampleNoise([0, 1]), StageSettings("ddim", "4", 1.0))
    assert rows == [7] * 4  # a composition needs its unconditional rows at every scale


@torch.inference_mode()
def test_one_term_composition_is_the_classifier_free_stage(stages):
    """A composition whose other terms weigh 0 samples the first term's classifier-free images
    (up to the rounding of a larger batch); with an interval, the unguided steps compose at s = 1."""
    stage = stages["tiny"]
    cfg = sample_stage(stage, ["a red circle"], PerSampleNoise([2]), BASE)
    zero = sample_stage(stage, [parse_prompt("a red circle AND a star :0")], PerSampleNoise([2]), BASE)
    torch.testing.assert_close(zero, cfg, atol=1e-4, rtol=0)
    interval = StageSettings("ddim", "3", 3.0, guidance_interval=(0.5, 1.0))
    cfg_i = sample_stage(stage, ["a red circle"], PerSampleNoise([2]), interval)
    zero_i = sample_stage(stage, [parse_prompt("a red circle AND a star :0")], PerSampleNoise([2]), interval)
    torch.testing.assert_close(zero_i, cfg_i, atol=1e-4, rtol=0)


# --- the pipelines -------------------------------------------------------------------------------


def test_text2im_composes_the_base_and_joins_terms_for_the_upsampler(stages, monkeypatch):
    pipe = Text2ImPipeline(stages["tiny"], stages["tiny-upsample"])
    seen = []
    real = text2im.sample_stage
    monkeypatch.setattr(
        text2im,
        "sample_stage",
        lambda stage, rows, *a, **kw: (
            seen.append((stage.config.kind, list(rows), kw["negative"])) or real(stage, rows, *a, **kw)
        ),
    )
    prompt = "a red circle :2 AND NOT a star AND a blue square"
    out = pipe([prompt, "a cross"], num_images=2, base=BASE, upsample=UP, negative="green", dtype="fp32")
    assert out.prompts == [prompt, prompt, "a cross", "a cross"]
    (kind, rows, negative), (up_kind, up_rows, up_negative) = seen
    assert kind == "base" and rows == [parse_prompt(prompt)] * 2 + [Composition.plain("a cross")] * 2
    assert up_kind == "upsample" and up_rows == ["a red circle and a blue square"] * 2 + ["a cross"] * 2
    assert negative == up_negative == "green"
    assert out.settings["negative"] == "green"
    assert out.settings["terms"] == {prompt: parse_prompt(prompt).to_json()}  # composed prompts only
    plain = pipe("a cross", base=BASE, upsample=UP)
    assert "terms" not in plain.settings and "negative" not in plain.settings  # as before: same file names


def test_negative_prompt_changes_the_images_and_is_the_empty_caption_by_default(stages):
    pipe = Text2ImPipeline(stages["tiny"])
    default = pipe("a red circle", seed=1, base=BASE, dtype="fp32")
    empty = pipe("a red circle", seed=1, base=BASE, dtype="fp32", negative="")
    negative = pipe("a red circle", seed=1, base=BASE, dtype="fp32", negative="a blue star")
    assert np.array_equal(np.asarray(default.images[0]), np.asarray(empty.images[0]))
    assert not np.array_equal(np.asarray(default.images[0]), np.asarray(negative.images[0]))
    with pytest.warns(CompositionWarning, match="no effect"):
        pipe("a red circle", base=StageSettings("ddim", "2", 1.0), negative="blue")
    with pytest.raises(TypeError, match="negative"):
        pipe("a red circle", base=BASE, negative=3)
    with pytest.raises(CompositionError, match="dangling AND"):
        pipe("a red circle AND", base=BASE)


def test_unused_negative_warning():
    plain, composed = [Composition.plain("a")], [parse_prompt("a AND b")]
    one, three = StageSettings(guidance_scale=1.0), StageSettings(guidance_scale=3.0)
    with pytest.warns(CompositionWarning):
        warn_unused_negative("x", plain, one, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unused_negative("x", plain, three, one)
        warn_unused_negative("x", plain, one, three)  # the upsampler guided
        warn_unused_negative("x", composed, one, None)  # a composition uses its negative rows
        warn_unused_negative(None, plain, one, None)


def test_inpaint_and_edit_compose(stages, monkeypatch):
    from glide_diffusion.pipelines import edit, inpaint

    seen = []
    for module in (inpaint, edit):
        real = module.sample_stage
        monkeypatch.setattr(
            module,
            "sample_stage",
            lambda stage, rows, *a, _real=real, **kw: (
                seen.append((list(rows), kw["negative"])) or _real(stage, rows, *a, **kw)
            ),
        )
    prompt = "a red circle AND NOT a blue star :0.5"
    comp = parse_prompt(prompt)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    fill = mask_from_rects([(16, 16, 48, 48)], image.size)
    out = InpaintPipeline(stages["tiny-inpaint"], stages["tiny-upsample-inpaint"])(
        image, fill, prompt, base=BASE, upsample=UP, negative="green"
    )
    keep = ~fill
    np.testing.assert_array_equal(np.asarray(out.images[0])[keep], np.asarray(image)[keep])
    assert seen == [([comp], "green"), (["a red circle"], "green")]
    assert out.settings["terms"] == {prompt: comp.to_json()} and out.settings["negative"] == "green"
    seen.clear()
    out = EditPipeline(stages["tiny"], stages["tiny-upsample"])(image, prompt, strength=0.5, base=BASE, upsample=UP)
    assert seen == [([comp], ""), (["a red circle"], "")]
    assert out.settings["terms"] == {prompt: comp.to_json()} and "negative" not in out.settings


# --- CLIP guidance and reranking score the positive terms ----------------------------------------


@pytest.fixture(scope="module")
def clip():
    from glide_diffusion.clip import build_clip

    torch.manual_seed(0)
    return build_clip("tiny").eval()


@torch.inference_mode()
def test_clip_scores_a_composition_by_the_weighted_mean_of_its_positive_terms(clip):
    from glide_diffusion.guidance.clip import composed_text_embeddings
    from glide_diffusion.guidance.rerank import clip_scores
    from glide_diffusion.pipelines.prompts import clip_target

    images = torch.rand(3, 3, 16, 16) * 2 - 1
    comp = parse_prompt("a red circle :3 AND NOT a star AND a blue square")
    z = clip_target(clip, [comp])
    assert z.shape[0] == 1
    per_term = {t: clip_scores(clip, images, t) for t in ("a red circle", "a blue square")}
    torch.testing.assert_close(
        clip_scores(clip, images, z),
        (3 * per_term["a red circle"] + per_term["a blue square"]) / 4,
        atol=1e-4,
        rtol=1e-5,
    )
    assert clip_target(clip, [Composition.plain("a sign: AND")]) == ["a sign: AND"]  # plain: the caption as before
    one = composed_text_embeddings(clip, [[("a red circle", 1.0)]])
    torch.testing.assert_close(clip_scores(clip, images, one), per_term["a red circle"], atol=1e-5, rtol=1e-5)


def test_clip_guidance_and_reranking_of_a_composed_prompt(stages, clip):
    pipe = Text2ImPipeline(stages["tiny"], clip=clip)
    prompt = "a red circle AND a blue square :0.5"
    out = pipe(prompt, num_images=3, seed=2, base=BASE, clip_guidance_scale=20.0, rerank=2, dtype="fp32")
    assert len(out.images) == 2 and out.settings["terms"][prompt][1]["weight"] == 0.5
    again = pipe.rerank(out, 1)  # reranks from the recorded prompt, parsed again
    assert again.settings["clip_rerank"]["scores"] == pytest.approx(out.settings["clip_rerank"]["scores"][:1], abs=1e-4)


# --- caption warnings term by term ----------------------------------------------------------------


def test_shapes_captions_are_checked_term_by_term():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_captions(
            [parse_prompt("a red circle on the left :3 AND NOT a blue star AND NOT green")], "shapes", negative="red"
        )
    with pytest.warns(CaptionWarning) as record:
        warn_captions([parse_prompt("a green square AND a corgi")], "shapes", negative="a purple dog")
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "'a corgi' is not a Shapes caption" in messages[0] and "'a green square" not in messages[0]
    assert "negative prompt 'a purple dog'" in messages[1] and "'dog'" in messages[1]
    with pytest.warns(CaptionWarning, match="the negated term 'a cat' has words"):
        warn_captions([parse_prompt("a red circle :2 AND NOT a cat")], "shapes")


# --- the commands -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return {n: str(save_model(d / f"{n}.safetensors", build_model(n), get_preset(n))) for n in ("tiny", "tiny-inpaint")}


def test_cli_records_the_terms_and_the_negative_prompt(checkpoints, tmp_path, capsys):
    prompt = "a red circle :1.5 AND NOT a star :0.5"
    rc = main(
        [
            "sample",
            prompt,
            "a cross",
            "--negative",
            "green",
            "--base",
            checkpoints["tiny"],
            "--upsampler",
            "none",
            "--base-steps",
            "2",
            "-o",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    composed, plain = (Image.open(next(tmp_path.glob(f"{p}-*.png"))) for p in ("a-red-circle-1-5-and-not", "a-cross"))
    assert composed.text["prompt"] == prompt
    assert json.loads(composed.text["terms"]) == [
        {"text": "a red circle", "weight": 1.5},
        {"text": "a star", "weight": -0.5},
    ]
    settings = json.loads(composed.text["settings"])
    assert settings["negative"] == "green" and settings["terms"][prompt][0]["weight"] == 1.5
    assert "terms" not in plain.text


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "a red circle AND", "--upsampler", "none"],
        ["inpaint", "IMAGE", "a red circle AND", "--rect", "0,0,4,4", "--upsampler", "none"],
        ["edit", "IMAGE", "a red circle AND", "--upsampler", "none"],
    ],
)
def test_cli_malformed_composition_is_an_error_before_any_work(argv, tmp_path, capsys, monkeypatch):
    from glide_diffusion.pipelines import stage

    monkeypatch.setattr(stage, "load_stage", lambda *a, **k: pytest.fail("loaded a model"))
    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    argv = [str(tmp_path / "in.png") if a == "IMAGE" else a for a in argv]
    assert main([*argv, "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"glide {argv[0]}: error: composed prompt, character 14: dangling AND")
    assert "\n  a red circle AND\n" + " " * (2 + 13) + "^\n" in err
    assert not (tmp_path / "out").exists()


def test_cli_inpaint_and_edit_take_a_negative_prompt(checkpoints, tmp_path, capsys):
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "in.png")
    for argv, model in (
        (["inpaint", str(tmp_path / "in.png"), "a circle", "--rect", "0,0,8,8"], "tiny-inpaint"),
        (["edit", str(tmp_path / "in.png"), "a circle"], "tiny"),
    ):
        out = tmp_path / argv[0]
        rc = main(
            [
                *argv,
                "--negative",
                "red",
                "--base",
                checkpoints[model],
                "--upsampler",
                "none",
                "--base-steps",
                "2",
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        assert rc == 0, capsys.readouterr().err
        (png,) = out.glob("*.png")
        assert json.loads(Image.open(png).text["settings"])["negative"] == "red"

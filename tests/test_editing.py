"""Inpainting and image-to-image editing end to end on tiny random models."""

import numpy as np
import pytest
import torch
from PIL import Image

from glide_diffusion.checkpoints import build_model
from glide_diffusion.diffusion import make_schedule
from glide_diffusion.pipelines.edit import EditPipeline, truncate
from glide_diffusion.pipelines.images import extend_canvas, mask_from_image, mask_from_rects, split_alpha
from glide_diffusion.pipelines.inpaint import InpaintPipeline
from glide_diffusion.pipelines.recipes import StageSettings
from glide_diffusion.pipelines.stage import Stage
from glide_diffusion.presets import get_preset

pytestmark = pytest.mark.usefixtures("small_cpu_work")

BASE = StageSettings("ddpm", "3", 3.0)
UP = StageSettings("ddpm", "2", 1.0, 0.997)


def _stage(name, seed):
    torch.manual_seed(seed)
    model = build_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return Stage(model, get_preset(name), name)


@pytest.fixture(scope="module")
def stages():
    return {n: _stage(n, i) for i, n in enumerate(["tiny", "tiny-inpaint", "tiny-upsample", "tiny-upsample-inpaint"])}


def _picture(size=64):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "base, up", [("tiny-inpaint", "tiny-upsample-inpaint"), ("tiny", "tiny-upsample"), ("tiny-inpaint", None)]
)
def test_unmasked_pixels_are_exactly_the_input(stages, base, up):
    pipe = InpaintPipeline(stages[base], stages[up] if up else None)
    size = pipe.output_size
    image = _picture(size)
    fill = mask_from_rects([(size // 4, size // 4, size // 2, size // 2)], image.size)
    out = pipe(image, fill, "a red circle", num_images=2, seed=1, base=BASE, upsample=UP)
    assert [im.size for im in out.images] == [(size, size)] * 2
    for im in out.images:
        a = np.asarray(im)
        np.testing.assert_array_equal(a[~fill], np.asarray(image)[~fill])
        assert not np.array_equal(a[fill], np.asarray(image)[fill])


def test_inpainting_is_deterministic(stages):
    pipe = InpaintPipeline(stages["tiny-inpaint"])
    image, fill = _picture(16), mask_from_rects([(0, 0, 8, 16)], (16, 16))
    a = pipe(image, fill, "x", seed=3, base=BASE).images[0]
    b = pipe(image, fill, "x", seed=3, base=BASE).images[0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_best_of_candidates_keeps_the_images_the_clip_scores_best(stages):
    import dataclasses

    from glide_diffusion.clip import build_clip
    from glide_diffusion.clip.config import get_clip_preset
    from glide_diffusion.guidance.rerank import clip_scores
    from glide_diffusion.pipelines.images import from_pil

    pipe = InpaintPipeline(stages["tiny-inpaint"], stages["tiny-upsample-inpaint"])
    image = _picture(64)
    fill = mask_from_rects([(16, 16, 48, 48)], image.size)
    best3 = dataclasses.replace(BASE, candidates=3)
    with pytest.raises(ValueError, match="candidates=3 keeps the best"):
        pipe(image, fill, "a red circle", base=best3, upsample=UP)
    torch.manual_seed(0)
    words = dataclasses.replace(get_clip_preset("tiny"), tokenizer="shapes", n_vocab=296)  # no vocab file
    pipe.rerank_clip, pipe.rerank_clip_name = build_clip(words).eval(), "tiny"
    best = pipe(image, fill, "a red circle", num_images=2, seed=4, base=best3, upsample=UP)
    everything = pipe(image, fill, "a red circle", num_images=6, seed=4, base=BASE, upsample=UP)
    # The CLIP scored the base stage's images as saved: the input pasted back on the known pixels.
    shown = torch.cat([from_pil(im) for im in everything.low_res])
    known = torch.from_numpy(~mask_from_rects([(4, 4, 12, 12)], (16, 16)))
    shown = torch.where(known, from_pil(image.resize((16, 16), Image.BICUBIC)), shown)
    scores = clip_scores(pipe.rerank_clip, shown, "a red circle")
    top = torch.stack([torch.argmax(scores[:3]), 3 + torch.argmax(scores[3:])])  # the best of each group of 3
    assert best.seeds == [everything.seeds[j] for j in top.tolist()]
    assert best.settings["clip_rerank"]["of"] == 6 and best.settings["clip_rerank"]["clip_model"] == "tiny"
    for b, j in zip(best.images, top.tolist()):  # the kept ones upsampled with their own noise
        a, e = np.asarray(b).astype(int), np.asarray(everything.images[j]).astype(int)
        assert (np.abs(a - e) > 2).mean() < 0.01
        np.testing.assert_array_equal(np.asarray(b)[~fill], np.asarray(image)[~fill])


def test_mask_inputs_and_bad_masks():
    white = Image.new("L", (8, 8), 0)
    white.paste(255, (0, 0, 4, 8))
    fill = mask_from_image(white, (8, 8))
    assert fill[:, :4].all() and not fill[:, 4:].any()
    assert (mask_from_image(white, (8, 8), invert=True) == ~fill).all()
    with pytest.raises(ValueError, match="the mask is 8x8 but the image is 16x16"):
        mask_from_image(white, (16, 16))
    grey = Image.new("L", (8, 8), 100)
    with pytest.warns(UserWarning, match="not binary"):
        assert not mask_from_image(grey, (8, 8)).any()
    with pytest.raises(ValueError, match="not inside"):
        mask_from_rects([(0, 0, 9, 4)], (8, 8))


def test_all_keep_mask_is_an_error_and_all_fill_warns(stages):
    pipe = InpaintPipeline(stages["tiny-inpaint"])
    image = _picture(16)
    with pytest.raises(ValueError, match="no pixels to fill"):
        pipe(image, np.zeros((16, 16), bool), "x", base=BASE)
    with pytest.warns(UserWarning, match="whole image"):
        pipe(image, np.ones((16, 16), bool), "x", base=BASE)
    with pytest.raises(ValueError, match="square"):
        pipe(_picture(16).crop((0, 0, 16, 12)), np.ones((12, 16), bool), "x", base=BASE)


def test_alpha_and_outpainting():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgb, transparent = split_alpha(rgba)
    assert (
        rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 255, 255) and transparent[0, 0] and transparent.sum() == 1
    )
    canvas, fill = extend_canvas(Image.new("RGB", (4, 4)), None, 2, 0, 2, 0)
    assert canvas.size == (8, 4) and fill[:, :2].all() and not fill[:, 2:6].any() and fill[:, 6:].all()


def test_edit_strength_and_schedule_prefix(stages):
    s = make_schedule("squaredcos_cap_v2", 1000, "10")
    p = truncate(s, 4)
    assert list(p.timestep_map) == list(s.timestep_map[:4])
    np.testing.assert_allclose(p.alphas_cumprod, s.alphas_cumprod[:4], rtol=1e-12)
    pipe = EditPipeline(stages["tiny"], stages["tiny-upsample"])
    image = _picture(16)
    out = pipe(image, "a blue square", strength=0.5, seed=0, base=StageSettings("ddim", "10", 3.0), upsample=UP)
    assert out.images[0].size == (64, 64) and out.settings["start_step"] == 5
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            pipe(image, "x", strength=bad, base=BASE, upsample=UP)


def test_low_strength_stays_close_to_the_input(stages):
    pipe = EditPipeline(stages["tiny"])
    image = _picture(16).resize((16, 16))
    settings = StageSettings("ddim", "50", 1.0)
    near = np.asarray(pipe(image, "x", strength=0.02, base=settings).images[0]).astype(int)
    far = np.asarray(pipe(image, "x", strength=1.0, base=settings).images[0]).astype(int)
    src = np.asarray(image).astype(int)
    assert np.abs(near - src).mean() < np.abs(far - src).mean()


def test_one_step_prefix_is_finite_for_every_sampler(stages):
    s = truncate(make_schedule("squaredcos_cap_v2", 1000, "50"), 1)
    assert np.isfinite(s.posterior_log_variance_clipped).all()
    pipe = EditPipeline(stages["tiny"])
    for sampler in ("ddpm", "ddim", "dpm++2m"):
        out = pipe(_picture(16), "x", strength=0.02, base=StageSettings(sampler, "50", 3.0))
        assert out.settings["start_step"] == 1 and out.images[0].size == (16, 16)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, stages):
    from glide_diffusion.checkpoints import save_model

    d = tmp_path_factory.mktemp("edit-models")
    return {n: str(save_model(d / f"{n}.safetensors", s.model, s.config)) for n, s in stages.items()}


def test_cli_inpaint_and_edit(checkpoints, tmp_path, capsys):
    from glide_diffusion.cli.main import main

    image = tmp_path / "in.png"
    _picture(64).save(image)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    common = ["--base-steps", "3", "--up-steps", "2", "--no-progress", "-o", str(tmp_path / "out")]
    rc = main(
        [
            "inpaint",
            str(image),
            "a red circle",
            "--mask",
            str(tmp_path / "mask.png"),
            "--rect",
            "0,0,8,8",
            "--base",
            checkpoints["tiny-inpaint"],
            "--upsampler",
            checkpoints["tiny-upsample-inpaint"],
            *common,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    (out,) = map(Image.open, (tmp_path / "out").glob("a-red-circle-*-0-seed0-inpaint.png"))
    keep = np.ones((64, 64), bool)
    keep[16:48, 16:48] = False
    keep[:8, :8] = False
    np.testing.assert_array_equal(np.asarray(out.convert("RGB"))[keep], np.asarray(Image.open(image))[keep])
    assert out.text["prompt"] == "a red circle"
    # Best of 2 by a noised CLIP (here a random one with the file-free Shapes word tokenizer).
    import dataclasses
    import json

    from glide_diffusion.clip import build_clip
    from glide_diffusion.clip.config import get_clip_preset
    from glide_diffusion.clip.loading import save_clip

    clip = save_clip(
        tmp_path / "clip.safetensors",
        build_clip(dataclasses.replace(get_clip_preset("tiny"), tokenizer="shapes", n_vocab=296)),
    )
    rc = main(
        [
            "inpaint",
            str(image),
            "a red circle",
            "--rect",
            "0,0,8,8",
            "--candidates",
            "2",
            "--clip",
            str(clip),
            "--base",
            checkpoints["tiny-inpaint"],
            "--upsampler",
            "none",
            "--no-progress",
            "-o",
            str(tmp_path / "best"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    (png,) = (tmp_path / "best").glob("*.png")
    settings = json.loads(Image.open(png).text["settings"])
    assert settings["base"]["candidates"] == 2 and settings["clip_rerank"]["clip_model"] == str(clip)
    rc = main(
        [
            "edit",
            str(image),
            "a blue square",
            "--strength",
            "0.5",
            "--base",
            checkpoints["tiny"],
            "--upsampler",
            checkpoints["tiny-upsample"],
            *common,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    (edited,) = (tmp_path / "out").glob("a-blue-square-*-0-seed0-edit.png")
    assert Image.open(edited).size == (64, 64)


@pytest.mark.parametrize(
    "args, match",
    [
        (["inpaint", "IMAGE", "x"], "say what to repaint"),
        (["inpaint", "IMAGE", "x", "--mask", "SMALL"], "the mask is 8x8 but the image is 64x64"),
        (["inpaint", "IMAGE", "x", "--mask", "BLACK"], "no pixels to fill"),
        (["inpaint", "NOFILE", "x", "--rect", "0,0,4,4"], "cannot read image"),
        (["inpaint", "IMAGE", "x", "--rect", "0,0,4,4", "--candidates", "0"], "candidates must be an integer in 1..64"),
        (["edit", "IMAGE", "x", "--strength", "1.5"], "strength"),
        (["edit", "IMAGE", "x", "--strength", "0"], "strength"),
    ],
)
def test_cli_editing_bad_input(checkpoints, tmp_path, capsys, args, match):
    from glide_diffusion.cli.main import main

    _picture(64).save(tmp_path / "in.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "small.png")
    Image.new("L", (64, 64), 0).save(tmp_path / "black.png")
    names = {
        "IMAGE": tmp_path / "in.png",
        "SMALL": tmp_path / "small.png",
        "BLACK": tmp_path / "black.png",
        "NOFILE": tmp_path / "missing.png",
    }
    argv = [str(names.get(a, a)) for a in args]
    model = checkpoints["tiny-inpaint"] if args[0] == "inpaint" else checkpoints["tiny"]
    rc = main([*argv, "--base", model, "--upsampler", "none", "--no-progress", "-o", str(tmp_path / "out")])
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_inpaint_uses_the_bundled_shapes_models_by_default(tmp_path, capsys):
    """`glide inpaint` with nothing downloaded: the bundled Shapes inpainting models."""
    from glide_diffusion import bundled
    from glide_diffusion.cli.main import main
    from glide_diffusion.data.shapes import Scene, render

    if not {"shapes-inpaint", "shapes-upsample-inpaint"} <= set(bundled.available()):
        pytest.skip("the Shapes inpainting models are not bundled in this installation")
    image = tmp_path / "blank.png"
    render(Scene(background="white", objects=()), 128).save(image)
    rc = main(
        [
            "inpaint",
            str(image),
            "a large red square in the top left corner",
            "--rect",
            "0,0,64,64",
            "--base-steps",
            "10",
            "--up-steps",
            "5",
            "--no-download",
            "--no-progress",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    (png,) = (tmp_path / "out").glob("*.png")
    out = Image.open(png)
    assert out.size == (128, 128)
    keep = np.ones((128, 128), bool)
    keep[:64, :64] = False
    np.testing.assert_array_equal(
        np.asarray(out.convert("RGB"))[keep], np.asarray(Image.open(image).convert("RGB"))[keep]
    )
    settings = out.text["settings"]
    assert "shapes-inpaint" in settings and "shapes-upsample-inpaint" in settings
    if "shapes-clip-rerank" in bundled.available():  # best of 4 by the bundled reranking CLIP
        import json

        rerank = json.loads(settings)["clip_rerank"]
        assert rerank["of"] == 4 and rerank["clip_model"] == "shapes-clip-rerank"

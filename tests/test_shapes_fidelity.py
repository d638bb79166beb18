"""Pixel fidelity: clean renders score ~0, and added defects score exactly what was added.

Provenance of the expected numbers: a clean render's background pixels are exactly the palette
colour (spec: no noise), so adding c levels to them adds exactly c to the background error; a
frame of c levels on F pixels adds c F / R^2 to the whole-image error and, being far from the
objects, c F / (background pixel count) to the background error.
"""

import math

import numpy as np
import pytest

from glide_diffusion.data.shapes_render import render_array
from glide_diffusion.data.shapes_scene import Scene, ShapeObject, sample_scene
from glide_diffusion.eval.shapes_eval import analyze, evaluate
from glide_diffusion.eval.shapes_fidelity import (
    background_mask,
    detected_to_scene,
    evaluate_with_fidelity,
    fidelity,
    object_mask,
)

CENTRE_SQUARE = Scene("gray", (ShapeObject("square", "red", "small", 0.22, 0.5, 0.5),))


def clean_renders(resolution, n=12, seed=0):
    rng = np.random.default_rng([seed, resolution])
    return [render_array(sample_scene(rng, "test"), resolution) for _ in range(n)]


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_clean_renders_score_about_zero(resolution):
    for img in clean_renders(resolution, n=12 if resolution < 256 else 4):
        f = fidelity(img)
        assert f.mae <= 0.5, f
        assert f.background_mae == 0.0, f
        assert f.background_pixels > 0.4 * resolution**2


@pytest.mark.parametrize("cast", [-15, 10, 15])
def test_a_grey_cast_scores_what_was_added(cast):
    rng = np.random.default_rng(1)
    for _ in range(6):
        scene = sample_scene(rng, "test")
        scene = Scene("gray", scene.objects, scene.relation)  # mid-grey: +-15 never clips
        img = render_array(scene, 64).astype(np.int64)
        cast_img = np.clip(img + cast, 0, 255).astype(np.uint8)
        f = fidelity(cast_img)
        assert f.background_mae == pytest.approx(abs(cast), abs=1e-12)
        assert f.mae == pytest.approx(abs(cast), abs=0.5)  # object pixels: the cast too, where not clipped


@pytest.mark.parametrize("width,level", [(1, 40), (2, 20)])
def test_a_frame_scores_what_was_added(width, level):
    R = 64
    img = render_array(CENTRE_SQUARE, R).astype(np.int64)
    framed = img.copy()
    border = np.zeros((R, R), dtype=bool)
    border[:width], border[-width:], border[:, :width], border[:, -width:] = True, True, True, True
    framed[border] += level
    f, clean = fidelity(framed.astype(np.uint8)), fidelity(img.astype(np.uint8))
    n_frame = int(border.sum())
    assert f.mae - clean.mae == pytest.approx(level * n_frame / R**2, abs=1e-12)
    assert f.background_mae == pytest.approx(level * n_frame / f.background_pixels, abs=1e-12)


def test_background_is_three_pixels_clear_of_every_object_pixel():
    objects = np.zeros((9, 9), dtype=bool)
    objects[4, 4] = True
    bg = background_mask(objects)
    ys, xs = np.mgrid[:9, :9]
    assert np.array_equal(bg, (ys - 4) ** 2 + (xs - 4) ** 2 >= 9)  # the 5 x 5 square around it is out
    assert bg.sum() == 81 - 25
    # box 24.96..39.04 px: sub-sample centres (k + 0.125, ..., k + 0.875) fall inside for k = 25..38
    mask = object_mask(CENTRE_SQUARE, 64)
    rows = np.flatnonzero(mask.any(axis=1))
    assert (rows.min(), rows.max()) == (25, 38) and mask.sum() == 14 * 14


def test_unknown_background_has_no_score():
    img = np.full((32, 32, 3), (200, 0, 200), dtype=np.uint8)  # no palette background
    assert detected_to_scene(analyze(img)) is None
    f = fidelity(img)
    assert math.isnan(f.mae) and math.isnan(f.background_mae) and f.background_pixels == 0


def test_evaluate_with_fidelity_adds_fidelity_to_the_evaluator_report():
    rng = np.random.default_rng(2)
    scenes = [sample_scene(rng, "test", n_objects=1) for _ in range(4)]
    images = [render_array(s, 32) for s in scenes]
    images[1] = np.clip(images[1].astype(np.int64) + 12, 0, 255).astype(np.uint8)
    if scenes[1].background == "white":
        images[1] = np.clip(render_array(scenes[1], 32).astype(np.int64) - 12, 0, 255).astype(np.uint8)
    images.append(np.full((32, 32, 3), (200, 0, 200), dtype=np.uint8))
    captions = [f"a {s.objects[0].colour} {s.objects[0].shape}" for s in scenes] + ["a red circle"]
    report = evaluate_with_fidelity(captions, images)
    plain = evaluate(captions, images)
    assert {k: v for k, v in report.items() if not k.startswith("fidelity")} == plain
    fid = report["fidelity"]
    assert (fid["n"], fid["undefined"]) == (4, 1)
    assert fid["background_mae"] == pytest.approx(12 / 4, abs=1e-12)  # one image of four off by 12
    assert fid["background_mae_median"] == 0.0
    assert len(report["fidelity_scores"]) == 5

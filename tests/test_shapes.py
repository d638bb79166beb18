"""Contract tests for the Shapes dataset (docs/shapes.md)."""

import json
import math

import numpy as np
import pytest
import torch

from glide_diffusion.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    CaptionOdds,
    CaptionSpec,
    ObjectSpec,
    Scene,
    ShapeObject,
    ShapesDataset,
    box_gap,
    object_position,
    parse_caption,
    relation_holds,
    render,
    render_array,
    sample_caption,
    sample_caption_with_mentions,
    sample_scene,
    test_captions,
)
from glide_diffusion.data.shapes_render import star_vertices


@pytest.fixture(scope="module")
def train_scenes():
    rng = np.random.default_rng(123)
    return [sample_scene(rng, "train") for _ in range(5000)]


def one(shape="square", colour="red", s=0.4, cx=0.5, cy=0.5, background="gray"):
    return Scene(background, (ShapeObject(shape, colour, "large", s, cx, cy),), None)


# --- palette and geometry ---------------------------------------------------------------


def test_palette_numbers():
    assert COLOURS == {
        "red": (220, 50, 50),
        "green": (50, 170, 70),
        "blue": (50, 90, 220),
        "yellow": (235, 200, 40),
        "purple": (140, 70, 190),
        "orange": (240, 140, 40),
    }
    assert BACKGROUNDS == {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
    assert HELD_OUT_PAIRS == {
        ("purple", "star"),
        ("green", "triangle"),
        ("orange", "circle"),
        ("blue", "cross"),
        ("yellow", "square"),
    }


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star", "cross"])
def test_exact_rgb_in_interior_and_background(shape):
    img = render_array(one(shape, "blue", background="white"), 64)
    assert tuple(img[32, 32]) == COLOURS["blue"]  # every shape covers its centre
    assert tuple(img[0, 0]) == BACKGROUNDS["white"] and tuple(img[63, 63]) == BACKGROUNDS["white"]
    assert set(map(tuple, img.reshape(-1, 3))) >= {COLOURS["blue"], BACKGROUNDS["white"]}


def test_shape_areas_match_geometry():
    """Rendered area / s^2 (64 px box at R=256): square 1, circle pi/4, triangle 1/2, cross 5/9, star."""
    star_area = 5 * 0.382 * math.sin(math.radians(36)) / 4
    expected = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5, "cross": 5 / 9, "star": star_area}
    for shape, ratio in expected.items():
        img = render_array(one(shape, "red", s=0.25, background="black"), 256).astype(float)
        alpha = (img[..., 0] - 20) / (220 - 20)
        assert alpha.sum() / 64**2 == pytest.approx(ratio, rel=0.01), shape


def test_triangle_and_star_orientation():
    img = render_array(one("triangle", s=0.5, background="black"), 256)
    top, bottom = img[66, :, 0] > 120, img[190, :, 0] > 120  # just inside the box's top and bottom
    assert top.sum() < 4 and bottom.sum() > 120  # apex up, base down
    v = star_vertices(0.5, 0.5, 0.4)
    assert v[0] == pytest.approx([0.5, 0.3])  # first outer point straight up
    assert np.hypot(*(v[1] - 0.5)) == pytest.approx(0.382 * 0.2)


def test_cross_bar_thickness():
    img = render_array(one("cross", s=0.75, background="black"), 240)  # s = 180 px, bar 60 px
    row = img[120 - 45, :, 0] > 120  # through the vertical bar only
    assert row.sum() == 60


def test_antialiased_edges_are_blends():
    img = render_array(one("circle", "red", s=0.5, background="black"), 64)
    reds = img[..., 0].astype(int)
    partial = (reds > 20) & (reds < 220)
    assert partial.any()  # supersampled edges
    alpha = (reds[partial] - 20) / 200  # coverage read from the red channel
    assert np.all(np.abs(img[partial][:, 1] - (20 + 30 * alpha)) <= 1)  # green is the same blend


def test_resolution_independence():
    scene = sample_scene(np.random.default_rng(5), "train")
    hi = render_array(scene, 256).astype(float)
    lo = render_array(scene, 64).astype(float)
    pooled = hi.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    assert np.abs(pooled - lo).mean() < 1.0  # the same scene at two sides
    with pytest.raises(ValueError):
        render(scene, 64, supersample=2)


# --- scene sampling ---------------------------------------------------------------------


def test_boxes_on_canvas_sizes_and_positions(train_scenes):
    for sc in train_scenes:
        for o in sc.objects:
            assert o.s / 2 <= o.cx <= 1 - o.s / 2 and o.s / 2 <= o.cy <= 1 - o.s / 2
            base = {"small": 0.22, "large": 0.40}[o.size]
            assert 0.9 * base <= o.s <= 1.1 * base
        if len(sc.objects) == 1:
            o = sc.objects[0]
            row, col = divmod(POSITIONS.index(object_position(o)), 3)
            centre = (np.array([col, row]) + 0.5) / 3
            offset = np.array([o.cx, o.cy]) - centre
            pulled = np.clip(centre + np.clip(offset, -0.04, 0.04), o.s / 2, 1 - o.s / 2)
            assert np.all(np.abs(offset) <= 0.04 + 1e-12) or np.allclose(pulled, [o.cx, o.cy])


def test_two_object_constraints(train_scenes):
    two = [sc for sc in train_scenes if len(sc.objects) == 2]
    assert abs(len(two) / len(train_scenes) - 1 / 3) < 0.03
    for sc in two:
        a, b = sc.objects
        assert sc.relation in RELATIONS and relation_holds(a, b, sc.relation)
        assert box_gap(a, b) >= 0.05
        assert (a.colour, a.shape) != (b.colour, b.shape)
    assert {sc.relation for sc in two} == set(RELATIONS)


def test_held_out_pairs_only_in_test(train_scenes):
    seen = {(o.colour, o.shape) for sc in train_scenes for o in sc.objects}
    assert not seen & HELD_OUT_PAIRS and len(seen) == 25
    rng = np.random.default_rng(7)
    test = [o for _ in range(3000) for o in sample_scene(rng, "test").objects]
    held = np.mean([(o.colour, o.shape) in HELD_OUT_PAIRS for o in test])
    assert abs(held - 1 / 6) < 0.03
    assert {(o.colour, o.shape) for o in test} >= HELD_OUT_PAIRS


def test_scene_json_round_trip(train_scenes):
    for sc in train_scenes[:50]:
        assert Scene.from_json(sc.to_json()) == sc
        json.loads(sc.to_json())


# --- captions -----------------------------------------------------------------------------


def test_caption_frequencies_and_round_trip(train_scenes):
    rng = np.random.default_rng(9)
    mentions = {"colour": [], "size": [], "position": [], "background": []}
    for sc in train_scenes:
        caption, spec = sample_caption_with_mentions(sc, rng)
        assert caption == caption.lower() and parse_caption(caption) == spec
        assert spec.consistent_with(sc)
        assert " a o" not in f" {caption}" and not caption.startswith("a o")
        if len(sc.objects) == 1:
            o = spec.objects[0]
            for k in ("colour", "size", "position"):
                mentions[k].append(getattr(o, k) is not None)
            mentions["background"].append(spec.background is not None)
        else:
            assert sc.relation in caption and all(o.position is None for o in spec.objects)
    for k, target in {"colour": 0.9, "size": 0.5, "position": 0.5, "background": 0.5}.items():
        assert abs(np.mean(mentions[k]) - target) < 0.03, k


def test_caption_odds_set_how_often_optional_attributes_are_named(train_scenes):
    rng = np.random.default_rng(11)
    every = CaptionOdds(size=1.0, optional_phrase=1.0)
    for sc in train_scenes[:300]:
        caption, spec = sample_caption_with_mentions(sc, rng, odds=every)
        assert parse_caption(caption) == spec and all(o.size is not None for o in spec.objects)
        if len(sc.objects) == 1 and spec.objects[0].position is None:  # only the "bare" template has no room
            assert caption.split()[-1] in SHAPES
    none = [sample_caption_with_mentions(sc, rng, odds=CaptionOdds(0.0, 0.0))[1] for sc in train_scenes[:300]]
    assert all(o.size is None and o.position is None for spec in none for o in spec.objects)


def test_every_template_occurs(train_scenes):
    rng = np.random.default_rng(10)
    captions = [sample_caption(sc, rng) for sc in train_scenes[:2000]]
    assert any(c.startswith("a photo of a") and " that is " not in c for c in captions)
    assert any(c.startswith("an image of ") for c in captions)
    assert any(" that is " in c for c in captions)
    assert any(not c.startswith(("a ", "an ")) for c in captions)  # no article
    assert any(parse_caption(c).objects[0].colour is None for c in captions)
    assert any(c.startswith("an orange") or " an orange" in c for c in captions)


def test_parse_caption_examples():
    assert parse_caption("an orange circle") == CaptionSpec((ObjectSpec("circle", "orange"),))
    assert parse_caption("a small square that is red in the center on a black background") == CaptionSpec(
        (ObjectSpec("square", "red", "small", "in the center"),), None, "black"
    )
    two = parse_caption("a photo of a large red star to the left of a blue cross on a gray background")
    assert two == CaptionSpec(
        (ObjectSpec("star", "red", "large"), ObjectSpec("cross", "blue")), "to the left of", "gray"
    )
    assert parse_caption("") == CaptionSpec()
    for bad in ("a orange circle", "a red dog", "a red circle in the middle", "hello"):
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_test_captions_kinds():
    held = test_captions(50, seed=0, kind="held_out")
    assert all((s.objects[0].colour, s.objects[0].shape) in HELD_OUT_PAIRS for _, s in held)
    assert all(len(s.objects) == 2 for _, s in test_captions(20, kind="two"))
    single = test_captions(20, kind="single")
    assert all(parse_caption(c) == s for c, s in single) and single == test_captions(20, kind="single")


# --- dataset ------------------------------------------------------------------------------


def test_dataset_determinism_and_items():
    ds = ShapesDataset("train", resolution=32, seed=3, size=6, low_res=16)
    a, b = list(ds), list(ds)
    assert [x["caption"] for x in a] == [x["caption"] for x in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    item = ds.item(4)
    assert torch.equal(item["image"], a[4]["image"]) and item["scene"] == a[4]["scene"]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["low_res"].shape == (3, 16, 16) and -1 <= item["image"].min() <= item["image"].max() <= 1
    scene = Scene.from_json(item["scene"])
    assert parse_caption(item["caption"]).consistent_with(scene)
    other = ShapesDataset("val", resolution=32, seed=3).item(4)
    assert other["scene"] != item["scene"]


def test_rank_partition_and_resume():
    size = 23
    for world in (1, 2, 3):
        seen = [n for r in range(world) for n in ShapesDataset(size=size, rank=r, world_size=world).indices()]
        assert sorted(seen) == list(range(size))
    workers = [n for w in range(2) for n in ShapesDataset(size=size, rank=1, world_size=3).indices(w, 2)]
    assert sorted(workers) == list(range(1, size, 3))
    resumed = ShapesDataset(size=size, rank=0, world_size=2, start=10).indices()
    assert list(resumed) == list(range(10, size, 2))
    endless = ShapesDataset(rank=1, world_size=4).indices()
    assert [next(endless) for _ in range(3)] == [1, 5, 9]


def test_dataloader_workers_cover_split():
    ds = ShapesDataset(resolution=16, size=10)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted(item["index"] for item in loader) == list(range(10))


def test_warmup_curriculum_narrows_the_first_images():
    ds = ShapesDataset(
        "train", resolution=16, seed=1, warmup_images=60, warmup=dict(colour="red", size="large", background=None)
    )
    warm = [Scene.from_json(ds.item(n)["scene"]) for n in range(60)]
    assert all(
        len(s.objects) == 1
        and s.objects[0].colour == "red"
        and s.objects[0].size == "large"
        and 0.36 <= s.objects[0].s <= 0.44
        for s in warm
    )
    assert {s.objects[0].shape for s in warm} == {"circle", "square", "triangle", "star", "cross"}
    assert len({s.background for s in warm}) == 3  # left open: drawn as usual
    assert all(parse_caption(ds.item(n)["caption"]).consistent_with(warm[n]) for n in range(60))
    plain = ShapesDataset("train", resolution=16, seed=1)
    assert [ds.item(n)["scene"] for n in range(60, 70)] == [plain.item(n)["scene"] for n in range(60, 70)]
    held = ShapesDataset("train", resolution=16, warmup_images=200, warmup=dict(colour="purple"))  # no purple star
    assert all(Scene.from_json(held.item(n)["scene"]).objects[0].shape != "star" for n in range(200))
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        ShapesDataset(warmup_images=1, warmup=dict(colour="pink"))


def test_warmup_replay_mixes_narrowed_scenes_into_the_rest():
    ds = ShapesDataset(
        "train",
        resolution=8,
        seed=2,
        warmup_images=10,
        warmup_replay=0.25,
        warmup=dict(colour="red", size="large", background="white"),
    )
    plain = ShapesDataset("train", resolution=8, seed=2)
    later = range(10, 410)
    replayed = [n for n in later if ds.narrowed(n)]
    assert 0.18 < len(replayed) / len(later) < 0.32
    for n in later:
        scene = Scene.from_json(ds.item(n)["scene"])
        if n in replayed:
            assert scene.background == "white" and scene.objects[0].colour == "red" and len(scene.objects) == 1
        else:  # untouched samples are the plain stream's
            assert ds.item(n)["scene"] == plain.item(n)["scene"]
    with pytest.raises(ValueError, match="warmup_replay"):
        ShapesDataset(warmup_replay=1.5)


def test_shapes_warmup_from_config():
    from glide_diffusion.data.factory import build_dataset
    from glide_diffusion.train.config import ConfigError, load_config

    config = load_config(None, ["data.shapes_warmup.images=5", "data.shapes_warmup.colour=red"])
    ds = build_dataset(config.data, 8)
    assert ds.narrowed(4) and not ds.narrowed(5) and ds.warmup == {"colour": "red"}
    with pytest.raises(ConfigError, match="unknown colour 'pink'"):
        load_config(None, ["data.shapes_warmup.images=5", "data.shapes_warmup.colour=pink"])


def test_curriculum_phases_in_turn_then_replay_the_last(tmp_path):
    from glide_diffusion.data.factory import build_dataset
    from glide_diffusion.train.config import ConfigError, load_config

    path = tmp_path / "curriculum.toml"
    path.write_text(
        '[data.shapes_warmup]\nimages = 20\ncolour = "red"\nsize = "large"\nbackground = "white"\n'
        'replay = 0.5\n[[data.shapes_warmup.then]]\nimages = 30\nsize = "large"\n'
    )
    ds = build_dataset(load_config(path, []).data, 8)
    scenes = [Scene.from_json(ds.item(n)["scene"]) for n in range(250)]
    assert all(s.background == "white" and s.objects[0].colour == "red" for s in scenes[:20])
    second = scenes[20:50]  # large, colour and background drawn
    assert all(len(s.objects) == 1 and s.objects[0].size == "large" for s in second)
    assert len({s.objects[0].colour for s in second}) > 3 and len({s.background for s in second}) == 3
    replayed = [s for n, s in enumerate(scenes) if n >= 50 and ds.narrowed(n)]
    assert 0.35 < len(replayed) / 200 < 0.65  # narrowed as the last phase, not the first
    assert all(len(s.objects) == 1 and s.objects[0].size == "large" for s in replayed)
    assert len({s.objects[0].colour for s in replayed}) > 3
    assert not all(ds.narrowed(n) for n in range(50, 250))
    with pytest.raises(ConfigError, match="unknown size 'huge'"):
        path.write_text('[data.shapes_warmup]\nimages = 20\n[[data.shapes_warmup.then]]\nimages = 3\nsize = "huge"\n')
        load_config(path, [])


def test_two_object_share_of_a_shapes_stream():
    from glide_diffusion.data.factory import build_dataset
    from glide_diffusion.train.config import load_config

    def share(ds, n=300):
        return sum(len(Scene.from_json(ds.item(i)["scene"]).objects) == 2 for i in range(n)) / n

    assert 0.26 < share(ShapesDataset("train", resolution=8, seed=3)) < 0.41  # the dataset's third
    assert share(ShapesDataset("train", resolution=8, seed=3, two_object_prob=0.0)) == 0.0
    assert share(ShapesDataset("train", resolution=8, seed=3, two_object_prob=1.0)) == 1.0
    config = load_config(None, ["data.shapes_two_objects=0.5"])
    assert 0.42 < share(build_dataset(config.data, 8)) < 0.58
    with pytest.raises(ValueError, match="two_object_prob"):
        ShapesDataset(two_object_prob=1.5)


def test_partial_captions_name_one_of_two_objects_where_it_is():
    from glide_diffusion.data.factory import build_dataset
    from glide_diffusion.data.shapes_captions import partial_caption
    from glide_diffusion.data.shapes_scene import object_position
    from glide_diffusion.train.config import load_config

    plain = ShapesDataset("train", resolution=8, seed=3, two_object_prob=1.0)
    ds = ShapesDataset("train", resolution=8, seed=3, two_object_prob=1.0, partial_caption_prob=0.25)
    partial = 0
    for n in range(400):
        (scene, caption), (same_scene, full) = ds.scene_and_caption(n), plain.scene_and_caption(n)
        assert scene == same_scene  # the option changes captions only
        if caption == full:
            continue
        partial += 1
        (obj,) = parse_caption(caption).objects
        described = [o for o in scene.objects if o.shape == obj.shape and obj.colour in (None, o.colour)]
        assert obj.position in {object_position(o) for o in described}  # always placed, and true of one
    assert 0.19 < partial / 400 < 0.31
    one_object = ShapesDataset("train", resolution=8, seed=3, two_object_prob=0.0, partial_caption_prob=1.0)
    assert all(len(parse_caption(one_object.scene_and_caption(n)[1]).objects) == 1 for n in range(20))
    config = load_config(None, ["data.shapes_partial_captions=1.0", "data.shapes_two_objects=1.0"])
    assert all(
        len(parse_caption(it["caption"]).objects) == 1 for _, it in zip(range(10), build_dataset(config.data, 8))
    )
    with pytest.raises(ValueError, match="partial_caption_prob"):
        ShapesDataset(partial_caption_prob=-0.1)
    with pytest.raises(ValueError, match="one of two objects"):
        partial_caption(one_object.scene_and_caption(0)[0], np.random.default_rng(0))

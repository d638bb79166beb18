"""Feature extractors, the FID Inception loader, reference statistics files and the CLIP score.

No network: the Inception loading path runs on a tiny TorchScript module built here with the
real file's call signature (``module(x, return_features=True)`` -> (N, 2048)).
"""

import numpy as np
import pytest
import torch

from glide_diffusion.clip import build_clip, load_clip
from glide_diffusion.data.shapes_render import render_array
from glide_diffusion.data.shapes_scene import sample_scene
from glide_diffusion.eval.clip_score import clip_score, clip_score_from_embeddings
from glide_diffusion.eval.extractors import (
    ClipImageExtractor,
    FeatureExtractor,
    accumulate,
    check_images,
    extract_features,
    get_extractor,
    to_pixels,
)
from glide_diffusion.eval.inception import INCEPTION_DIM, load_inception, sha256_of
from glide_diffusion.eval.reference import load_stats, save_stats
from glide_diffusion.eval.stats import feature_stats
from glide_diffusion.guidance.clip import clip_text_embeddings
from glide_diffusion.hub.cache import released_path
from glide_diffusion.hub.released import RELEASED


class FakeInception(torch.nn.Module):
    """Stands in for inception-2015-12-05.pt: same call, 2048 features (channel means, tiled)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = (x / 255.0).mean(dim=(2, 3)).repeat(1, 683)[:, :2048]
        return f if return_features else f[:, :1008]


class NarrowNet(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def script(module, path):
    with pytest.warns(DeprecationWarning):  # torch.jit.script is deprecated in torch 2.13
        torch.jit.script(module).save(str(path))
    return path


def images_uint8(n=6, side=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


# --- pixels in ----------------------------------------------------------------------------------


def test_to_pixels_reads_every_layout_the_same():
    u = images_uint8()
    want = torch.from_numpy(u).permute(0, 3, 1, 2).float()
    assert torch.equal(to_pixels(u), want)
    assert torch.equal(to_pixels(torch.from_numpy(u).permute(0, 3, 1, 2)), want)  # uint8 (N, 3, H, W)
    as_float = torch.from_numpy(u).permute(0, 3, 1, 2).float() / 127.5 - 1  # the samplers' [-1, 1]
    assert torch.equal(to_pixels(as_float), want)
    assert torch.equal(to_pixels(as_float.double().numpy() + 1e-4), want)  # rounded to 8-bit levels


def test_check_images_fails_before_any_work():
    assert check_images(images_uint8()) == (6, 16)
    with pytest.raises(ValueError, match="no images"):
        check_images(np.zeros((0, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="square"):
        check_images(np.zeros((2, 16, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="3 colour channels"):
        check_images(torch.zeros(2, 4, 16, 16))
    with pytest.raises(ValueError, match="16 px, but 32 px"):
        check_images(images_uint8(), resolution=32)
    with pytest.raises(ValueError, match="uint8 or float"):
        check_images(np.zeros((2, 3, 8, 8), np.int32))

    class Boom:  # an extractor that must never be called
        name, dim, device = "boom", 4, torch.device("cpu")

        def __call__(self, pixels):
            raise AssertionError("extracted features from images that were rejected")

    with pytest.raises(ValueError, match="16 px, but 32 px"):
        extract_features(Boom(), images_uint8(), resolution=32)


# --- the FID Inception --------------------------------------------------------------------------


def test_inception_registry_entry_and_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path))
    want = tmp_path / "eval" / "inception-2015-12-05.pt"
    assert released_path("fid-inception") == want
    assert RELEASED["fid-inception"].url.endswith("/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt")
    with pytest.raises(FileNotFoundError) as e:
        load_inception()
    msg = str(e.value)
    assert str(want) in msg and "glide download fid-inception" in msg and RELEASED["fid-inception"].url in msg
    with pytest.raises(FileNotFoundError, match="inception"):
        get_extractor("inception")


def test_inception_loads_a_torchscript_file_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path))
    path = released_path("fid-inception")
    path.parent.mkdir(parents=True)
    script(FakeInception(), path)
    extractor = get_extractor("inception")
    assert isinstance(extractor, FeatureExtractor)
    assert (extractor.name, extractor.dim) == ("inception-2015-12-05", INCEPTION_DIM)
    u = images_uint8(n=5)
    f = extract_features(extractor, u, batch_size=2)
    assert f.shape == (5, 2048) and f.dtype == np.float32
    np.testing.assert_allclose(f[:, :3], u.reshape(5, -1, 3).mean(1) / 255, rtol=1e-5)
    assert load_inception(path, sha256=sha256_of(path)).dim == 2048
    with pytest.raises(ValueError, match="SHA-256"):
        load_inception(path, sha256="0" * 64)


def test_inception_rejects_other_files(tmp_path):
    with pytest.raises(ValueError, match="not the FID Inception"):
        load_inception(script(NarrowNet(), tmp_path / "narrow.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_inception(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_inception(tmp_path / "absent.pt")


# --- CLIP extractors and the CLIP score ---------------------------------------------------------


def test_clip_extractor_is_the_image_tower_at_t0_after_resizing(small_cpu_work):
    torch.manual_seed(0)
    clip = build_clip("tiny").eval()  # 16 px images, 16-d embeddings
    extractor = ClipImageExtractor(clip, "tiny")
    u = images_uint8(n=4, side=32)
    f = extract_features(extractor, u, batch_size=3)
    x = torch.nn.functional.avg_pool2d(torch.from_numpy(u).permute(0, 3, 1, 2).float(), 2) / 127.5 - 1
    with torch.no_grad():
        want = clip.image_embeddings(x, torch.zeros(4, dtype=torch.long))
    np.testing.assert_allclose(f, want.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)


def test_clip_score_is_100_times_the_cosine(small_cpu_work):
    torch.manual_seed(1)
    clip = build_clip("tiny").eval()
    u = images_uint8(n=3, side=16)
    captions = ["a red circle", "a blue square", "a green star"]
    got = clip_score(clip, u, captions, batch_size=2)
    with torch.no_grad():
        z_i = clip.image_embeddings(
            torch.from_numpy(u).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.zeros(3, dtype=torch.long)
        )
    z_t = clip_text_embeddings(clip, captions)
    np.testing.assert_allclose(got.numpy(), (100 * (z_i * z_t).sum(-1)).numpy(), atol=1e-4)
    one = clip_score(clip, u, "a red circle")  # one caption for every image
    assert one[0] == pytest.approx(float(got[0]), abs=1e-4)
    with pytest.raises(ValueError, match="2 captions for 3 images"):
        clip_score(clip, u, captions[:2])
    e = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert clip_score_from_embeddings(e, torch.tensor([[4.0, 3.0]])).tolist() == pytest.approx([96.0, 80.0])


def test_shapes_clip_score_prefers_the_true_caption(small_cpu_work):
    """The bundled rerank CLIP scores renders higher against their own caption than a wrong one."""
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "train", n_objects=1) for _ in range(8)]
    u = np.stack([render_array(s, 32) for s in scenes])
    own = [f"a {o.colour} {o.shape}" for s in scenes for o in s.objects]
    wrong = [f"a {'blue' if o.colour != 'blue' else 'red'} {o.shape}" for s in scenes for o in s.objects]
    clip = load_clip("shapes-clip-rerank")
    right, other = clip_score(clip, u, own), clip_score(clip, u, wrong)
    assert (right > other).float().mean() >= 0.75, (right, other)


# --- reference statistics -----------------------------------------------------------------------


def test_reference_statistics_round_trip_and_refuse_mismatches(tmp_path, small_cpu_work):
    torch.manual_seed(2)
    extractor = ClipImageExtractor(build_clip("tiny").eval(), "tiny-clip")
    u = images_uint8(n=20, side=16, seed=3)
    acc = accumulate(extractor, u, batch_size=6, max_features=8)
    stats = acc.stats()
    one_shot = feature_stats(extract_features(extractor, u, batch_size=6), extractor="tiny-clip", resolution=16)
    np.testing.assert_allclose(stats.mean, one_shot.mean, rtol=1e-12)
    np.testing.assert_allclose(stats.cov, one_shot.cov, rtol=1e-9, atol=1e-15)
    assert stats.features.shape == (8, 16) and (stats.n, stats.resolution) == (20, 16)

    path = save_stats(tmp_path / "ref" / "tiny.npz", stats, description="20 random images")
    back = load_stats(path, extractor="tiny-clip", dim=16, resolution=16)
    for field in ("extractor", "dim", "n", "resolution"):
        assert getattr(back, field) == getattr(stats, field)
    for field in ("mean", "cov", "features"):
        np.testing.assert_array_equal(getattr(back, field), getattr(stats, field))
    assert list(tmp_path.joinpath("ref").iterdir()) == [path]  # no temporary file left
    with pytest.raises(ValueError, match="extractor 'tiny-clip', not 'inception-2015-12-05'"):
        load_stats(path, extractor="inception-2015-12-05")
    with pytest.raises(ValueError, match="16-d features, the extractor gives 2048-d"):
        load_stats(path, dim=2048)
    with pytest.raises(ValueError, match="16 px images; these images are 64 px"):
        load_stats(path, resolution=64)
    with pytest.raises(ValueError, match="for 'tiny-clip'"):
        accumulate(ClipImageExtractor(build_clip("tiny").eval(), "other"), u, acc)
    with pytest.raises(ValueError, match="32 px, but 16 px"):  # the accumulator is for 16 px images
        accumulate(extractor, images_uint8(n=2, side=32), acc)
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="not a glide-eval-stats/1"):
        load_stats(tmp_path / "bad.npz")

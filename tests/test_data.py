"""Tests for glide_diffusion.data: decoding, folder/manifest/tar sources, stream semantics.

Every test writes its own small files under tmp_path; resolution 8 keeps them fast.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glide_diffusion.data.factory import DataConfig, build_dataset, collate, make_loader
from glide_diffusion.data.folder import ImageFolderDataset, ManifestDataset
from glide_diffusion.data.images import BadSample, load_image, resize_center_crop, to_tensor
from glide_diffusion.data.webdataset import WebDatasetShards

R = 8  # output resolution used throughout
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    f = io.BytesIO()
    img.save(f, fmt, **kw)
    return f.getvalue()


def solid(color, size=(12, 10)) -> Image.Image:
    return Image.new("RGB", size, color)


def write_pair(folder: Path, stem: str, img: Image.Image | bytes, caption: str | None, fmt="PNG") -> Path:
    ext = {"PNG": ".png", "JPEG": ".jpg"}[fmt]
    path = folder / f"{stem}{ext}"
    path.write_bytes(img if isinstance(img, bytes) else encode(img, fmt))
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def make_folder(root: Path, n: int) -> Path:
    """``n`` good pairs ``img{i}.png`` captioned ``"caption {i}"``, in two subfolders."""
    for i in range(n):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        write_pair(sub, f"img{i}", solid((i * 20, 100, 50)), f"caption {i}")
    return root


# ---------------------------------------------------------------- decoding


def _palette(transparent: bool) -> Image.Image:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 255] + [0] * 765)
    if transparent:
        img.info["transparency"] = 0
    return img


def _i16(mode: str, value: int) -> Image.Image:
    img = Image.new(mode, (4, 4))
    for xy in np.ndindex(4, 4):
        img.putpixel(xy, value)
    return img


ODD_MODES = {
    "RGBA-transparent": (lambda: encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0))), WHITE),
    "RGBA-half": (lambda: encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128))), (127, 127, 127)),
    "LA-transparent": (lambda: encode(Image.new("LA", (4, 4), (0, 0))), WHITE),
    "P": (lambda: encode(_palette(False)), BLUE),
    "P-transparency": (lambda: encode(_palette(True)), WHITE),
    "I;16": (lambda: encode(_i16("I;16", 32896)), (128, 128, 128)),
    "I;16B": (lambda: encode(_i16("I;16B", 65535), "TIFF"), WHITE),
    "I": (lambda: encode(Image.fromarray(np.full((4, 4), 65535 // 2, np.int32)), "TIFF"), (128, 128, 128)),
    "F": (lambda: encode(Image.fromarray(np.full((4, 4), 0.25, np.float32)), "TIFF"), (64, 64, 64)),
    "CMYK-jpeg": (lambda: encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), RED),
    "CMYK-tiff": (lambda: encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "TIFF"), RED),
    "L": (lambda: encode(Image.new("L", (4, 4), 77)), (77, 77, 77)),
    "1": (lambda: encode(Image.new("1", (4, 4), 1)), WHITE),
    "GIF": (lambda: encode(solid(GREEN), "GIF"), GREEN),
}


@pytest.mark.parametrize("name", list(ODD_MODES))
def test_odd_modes_convert_to_rgb(name):
    make, expected = ODD_MODES[name]
    img = load_image(make())
    assert img.mode == "RGB"
    got = np.asarray(img).reshape(-1, 3).mean(0)
    assert np.abs(got - np.array(expected)).max() <= 12, (name, got)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (4, 2), RED)
    img.paste(BLUE, (2, 0, 4, 2))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(encode(img, "JPEG", exif=exif.tobytes(), quality=100))
    assert out.size == (2, 4)
    top, bottom = np.asarray(out)[0, 0], np.asarray(out)[-1, 0]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty_file"), (b"not an image at all", "not_an_image")],
)
def test_load_image_reasons(data, reason):
    with pytest.raises(BadSample) as info:
        load_image(data)
    assert info.value.reason == reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_corrupt(fmt):
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), fmt)
    with pytest.raises(BadSample) as info:
        load_image(data[: len(data) // 2])
    assert info.value.reason == "corrupt"


@pytest.mark.parametrize("size", [(12, 12), (20, 20)])  # PIL warns above the limit, raises above 2x
def test_decompression_bomb_is_too_large(monkeypatch, size):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadSample) as info:
        load_image(encode(solid(RED, size)))
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("size", [(300, 100), (100, 300), (3000, 1000)])
def test_resize_center_crop_keeps_the_centre(size):
    w, h = size
    img = Image.new("RGB", size, GREEN)
    if w > h:  # red and blue thirds at the sides are cropped away
        img.paste(RED, (0, 0, w // 3, h))
        img.paste(BLUE, (2 * w // 3, 0, w, h))
    else:
        img.paste(RED, (0, 0, w, h // 3))
        img.paste(BLUE, (0, 2 * h // 3, w, h))
    out = resize_center_crop(img, 32)
    assert out.size == (32, 32)
    arr = np.asarray(out).astype(int)
    inner = arr[2:-2, 2:-2]  # the bicubic kernel reaches 1-2 px past the crop, as resize-then-crop would
    assert (inner[..., 1] > 240).all() and (inner[..., [0, 2]] < 15).all()
    assert (arr[..., 1] > arr[..., 0]).all() and (arr[..., 1] > arr[..., 2]).all()


def test_to_tensor_range_and_dtype():
    img = Image.new("RGB", (2, 1), WHITE)
    img.putpixel((1, 0), (0, 0, 0))
    x = to_tensor(img)
    assert x.dtype == torch.float32 and x.shape == (3, 1, 2)
    assert torch.equal(x[:, 0, 0], torch.ones(3)) and torch.equal(x[:, 0, 1], -torch.ones(3))


# ---------------------------------------------------------------- bad data in a folder


def test_folder_skips_and_counts_bad_samples(tmp_path):
    rng = np.random.default_rng(1)
    noisy = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    write_pair(tmp_path, "good", solid(RED, (16, 12)), "  a red square \n")
    write_pair(tmp_path, "empty_caption", solid(GREEN, (16, 12)), "")
    write_pair(tmp_path, "tiny", solid(BLUE, (3, 2)), "tiny blue")
    jpg = encode(noisy, "JPEG")
    write_pair(tmp_path, "trunc_jpg", jpg[: len(jpg) // 2], "x", fmt="JPEG")
    png = encode(noisy)
    write_pair(tmp_path, "trunc_png", png[: len(png) // 2], "x")
    write_pair(tmp_path, "zero", b"", "x")
    write_pair(tmp_path, "text", b"hello, I am text", "x")
    write_pair(tmp_path, "no_caption", solid(RED), None)
    (tmp_path / "bad_caption.png").write_bytes(encode(solid(RED)))
    (tmp_path / "bad_caption.txt").write_bytes(b"\xff\xfe\xfa")

    ds = ImageFolderDataset(tmp_path, R, epochs=1)
    items = {x["key"]: x for x in ds}
    assert {k: v["caption"] for k, v in items.items()} == {
        "good.png": "a red square",
        "empty_caption.png": "",
        "tiny.png": "tiny blue",
    }
    assert dict(ds.stats) == {
        "corrupt": 2,
        "empty_file": 1,
        "not_an_image": 1,
        "missing_caption": 1,
        "bad_caption": 1,
        "upscaled": 1,
    }
    assert items["tiny.png"]["image"].shape == (3, R, R)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no usable images"):
        ImageFolderDataset(tmp_path, R)
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", R)


# ---------------------------------------------------------------- manifests


def test_csv_manifest_reads_captions_and_resolves_paths(tmp_path):
    make_folder(tmp_path / "imgs", 3)
    rows = [("imgs/b/img0.png", "zero, with comma"), ("imgs/a/img1.png", ""), ("imgs/b/img2.png", "two")]
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text"])
        writer.writerows(rows)
    ds = ManifestDataset(tmp_path / "m.csv", R, epochs=1)
    assert (ds.image_column, ds.caption_column) == ("file_name", "text")
    assert {x["key"]: x["caption"] for x in ds} == dict(rows)


def test_jsonl_manifest_image_root_columns_and_bad_rows(tmp_path):
    make_folder(tmp_path / "imgs", 3)
    lines = [
        json.dumps({"img": "b/img0.png", "desc": "zero"}),
        "{broken json",
        json.dumps({"img": "a/img1.png", "desc": None}),
        json.dumps({"img": "b/img2.png", "desc": "two"}),
        json.dumps({"img": "missing.png", "desc": "gone"}),
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = ManifestDataset(
        tmp_path / "m.jsonl",
        R,
        image_root=tmp_path / "imgs",
        image_column="img",
        caption_column="desc",
        epochs=1,
    )
    assert {x["key"]: x["caption"] for x in ds} == {"b/img0.png": "zero", "b/img2.png": "two"}
    assert dict(ds.stats) == {"bad_manifest_row": 1, "missing_caption": 1, "unreadable": 1}


def test_manifest_without_columns_is_a_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("url,alt\nx.png,hi\n")
    with pytest.raises(ValueError, match="no image column"):
        ManifestDataset(tmp_path / "m.csv", R)


# ---------------------------------------------------------------- stream semantics


def _indices(ds) -> list[tuple[int, str]]:
    return [(x["index"], x["key"]) for x in ds]


def test_same_seed_same_order_and_epochs_reshuffle(tmp_path):
    root = make_folder(tmp_path, 8)
    a = _indices(ImageFolderDataset(root, R, seed=3, epochs=2))
    assert a == _indices(ImageFolderDataset(root, R, seed=3, epochs=2))
    assert [k for _, k in a] != [k for _, k in _indices(ImageFolderDataset(root, R, seed=4, epochs=2))]
    first, second = [k for _, k in a[:8]], [k for _, k in a[8:]]
    assert sorted(first) == sorted(second) and first != second  # each epoch is a permutation


def test_two_ranks_partition_one_rank(tmp_path):
    root = make_folder(tmp_path, 7)
    full = _indices(ImageFolderDataset(root, R, seed=1, epochs=2))
    parts = [_indices(ImageFolderDataset(root, R, seed=1, epochs=2, rank=r, world_size=2)) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == full
    assert all(n % 2 == r for r in range(2) for n, _ in parts[r])


@pytest.mark.parametrize("k", [0, 5, 9])
def test_resume_on_two_ranks_equals_tail_of_one_rank(tmp_path, k):
    root = make_folder(tmp_path, 6)
    full = _indices(ImageFolderDataset(root, R, seed=2, epochs=3))
    resumed = [_indices(ImageFolderDataset(root, R, seed=2, epochs=3, rank=r, world_size=2, start=k)) for r in range(2)]
    assert sorted(resumed[0] + resumed[1]) == [x for x in full if x[0] >= k]


def test_endless_by_default(tmp_path):
    root = make_folder(tmp_path, 3)
    stream = iter(ImageFolderDataset(root, R))
    assert [next(stream)["index"] for _ in range(10)] == list(range(10))


def test_dataloader_two_workers_yield_each_item_once(tmp_path):
    root = make_folder(tmp_path, 7)
    loader = make_loader(ImageFolderDataset(root, R, epochs=1), batch_size=2, num_workers=2)
    batches = list(loader)
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == sorted(f"{'a' if i % 2 else 'b'}/img{i}.png" for i in range(7))
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(7))
    assert batches[0]["image"].shape == (2, 3, R, R) and isinstance(batches[0]["caption"], list)


def test_random_flip_is_deterministic_and_off_by_default(tmp_path):
    img = Image.new("RGB", (8, 8), RED)
    img.paste(BLUE, (4, 0, 8, 8))
    for i in range(12):
        write_pair(tmp_path, f"i{i:02d}", img, "red on the left")

    def left_red(ds):
        return [bool(x["image"][0, 0, 0] > 0) for x in ds]

    assert all(left_red(ImageFolderDataset(tmp_path, R, epochs=1)))
    flips = left_red(ImageFolderDataset(tmp_path, R, epochs=1, random_flip=True, seed=5))
    assert flips == left_red(ImageFolderDataset(tmp_path, R, epochs=1, random_flip=True, seed=5))
    assert 0 < sum(flips) < 12


def test_low_res_shape_range_and_box_filter(tmp_path):
    img = Image.new("RGB", (16, 16), (0, 0, 0))
    img.paste(WHITE, (0, 0, 2, 2))  # one 2x2 block per 4x4 low-res cell
    write_pair(tmp_path, "x", img, "corner")
    item = next(iter(ImageFolderDataset(tmp_path, 16, low_res=4)))
    low = item["low_res"]
    assert low.shape == (3, 4, 4) and low.dtype == torch.float32
    assert low.min() >= -1 and low.max() <= 1
    # box filter: the corner cell averages 4 white of 16 pixels -> 255/4
    assert abs((low[0, 0, 0].item() + 1) * 127.5 - 255 / 4) < 1.5
    assert torch.allclose(low[:, 1:, 1:], torch.full((3, 3, 3), -1.0))


# ---------------------------------------------------------------- tar shards


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_shards(root: Path, corrupt: tuple[int, int] | None = (1, 2), per_shard: int = 4) -> list[str]:
    """Three img2dataset-style shards ``0000{s}.tar`` of ``per_shard`` samples, keys ``SSJJJ``."""
    for s in range(3):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tf:
            for j in range(per_shard):
                key = f"{s:02d}{j:03d}"
                image = (
                    b"\xff\xd8 not really a jpeg" if (s, j) == corrupt else encode(solid((s * 80, j * 50, 0)), "JPEG")
                )
                _add(tf, f"{key}.jpg", image)
                _add(tf, f"{key}.txt", f"caption {key}".encode())
                _add(tf, f"{key}.json", json.dumps({"key": key, "caption": "from json"}).encode())
    return [f"{s:02d}{j:03d}" for s in range(3) for j in range(per_shard) if (s, j) != corrupt]


@pytest.mark.parametrize("style", ["brace", "file_url", "glob", "list", "pipe"])
def test_webdataset_reads_shards_and_skips_corrupt_member(tmp_path, style):
    expected = make_shards(tmp_path)
    urls = {
        "brace": f"{tmp_path}/{{00000..00002}}.tar",
        "file_url": f"file://{tmp_path}/{{00000..00002}}.tar",
        "glob": f"{tmp_path}/*.tar",
        "list": [str(tmp_path / f"{s:05d}.tar") for s in range(3)],
        "pipe": f"pipe:cat {tmp_path}/{{00000..00002}}.tar",
    }[style]
    ds = WebDatasetShards(urls, R, epochs=1, low_res=4)
    items = list(ds)
    assert sorted(x["key"] for x in items) == expected
    assert all(x["caption"] == f"caption {x['key']}" for x in items)
    assert items[0]["image"].shape == (3, R, R) and items[0]["low_res"].shape == (3, 4, 4)
    assert dict(ds.stats) == {"not_an_image": 1}


def test_webdataset_bad_shards_never_crash(tmp_path):
    expected = make_shards(tmp_path, corrupt=None)
    data = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(data[: len(data) // 2 + 100])  # cut mid-member
    urls = [f"{tmp_path}/{{00000..00002}}.tar", str(tmp_path / "gone.tar"), f"pipe:cat {tmp_path}/gone.tar"]
    ds = WebDatasetShards(urls, R, epochs=1)
    keys = [x["key"] for x in ds]
    assert set(expected[:4] + expected[8:]) <= set(keys) <= set(expected)
    assert ds.stats["bad_shard"] == 2 and ds.stats["unreadable_shard"] == 1  # truncated tar, failing pipe


def test_webdataset_caption_from_json_and_missing(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "a.png", encode(solid(RED)))
        _add(tf, "a.json", json.dumps({"caption": " json caption "}).encode())
        _add(tf, "b.png", encode(solid(RED)))
        _add(tf, "c.txt", b"caption without image")
    ds = WebDatasetShards(str(tmp_path / "s.tar"), R, epochs=1)
    assert [(x["key"], x["caption"]) for x in ds] == [("a", "json caption")]
    assert dict(ds.stats) == {"missing_caption": 1, "missing_image": 1}


def test_webdataset_no_shards_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no shards match"):
        WebDatasetShards(f"{tmp_path}/*.tar", R)
    with pytest.raises(ValueError, match="no shards match"):
        WebDatasetShards(f"{tmp_path}/{{0..2}}.tar", R)


@pytest.mark.parametrize("k", [0, 3, 6, 13])
def test_webdataset_resume_is_exact_for_one_consumer(tmp_path, k):
    make_shards(tmp_path, corrupt=None)
    pattern = f"{tmp_path}/{{00000..00002}}.tar"
    full = [x["key"] for x in WebDatasetShards(pattern, R, seed=1, epochs=2, samples_per_shard=4)]
    assert len(full) == 24
    resumed = [x["key"] for x in WebDatasetShards(pattern, R, seed=1, epochs=2, start=k, size=12)]
    assert resumed == full[k:]


def test_webdataset_ranks_and_workers_partition_shards(tmp_path):
    expected = make_shards(tmp_path, corrupt=None)
    pattern = f"{tmp_path}/{{00000..00002}}.tar"
    per_rank = [[x["key"] for x in WebDatasetShards(pattern, R, epochs=2, rank=r, world_size=2)] for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(expected * 2)
    loader = make_loader(WebDatasetShards(pattern, R, epochs=1), batch_size=4, num_workers=2)
    assert sorted(k for b in loader for k in b["key"]) == sorted(expected)


# ---------------------------------------------------------------- factory


def test_build_dataset_kinds(tmp_path):
    make_folder(tmp_path / "f", 2)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "f/b/img0.png", "caption": "zero"}) + "\n")
    make_shards(tmp_path, corrupt=None)
    configs = {
        "folder": DataConfig(kind="folder", path=str(tmp_path / "f"), epochs=1),
        "manifest": DataConfig(kind="manifest", path=str(tmp_path / "m.jsonl"), epochs=1),
        "webdataset": DataConfig(kind="webdataset", urls=[f"{tmp_path}/{{00000..00002}}.tar"], epochs=1),
    }
    counts = {kind: sum(1 for _ in build_dataset(cfg, R, low_res=4)) for kind, cfg in configs.items()}
    assert counts == {"folder": 2, "manifest": 1, "webdataset": 12}
    with pytest.raises(ValueError, match="folder, manifest, webdataset, shapes"):
        build_dataset(DataConfig(kind="lmdb"), R)
    with pytest.raises(ValueError, match="needs DataConfig.path"):
        build_dataset(DataConfig(kind="folder"), R)


def test_build_dataset_shapes_when_available():
    pytest.importorskip("glide_diffusion.data.shapes")
    ds = build_dataset(DataConfig(kind="shapes", size=4), 16, low_res=8)
    item = next(iter(ds))
    assert item["image"].shape == (3, 16, 16) and item["low_res"].shape == (3, 8, 8)
    assert isinstance(item["caption"], str)


def test_collate_stacks_tensors_and_lists_strings():
    batch = [
        {"image": torch.zeros(3, 2, 2), "caption": "a", "index": 0},
        {"image": torch.ones(3, 2, 2), "caption": "b", "index": 5},
    ]
    out = collate(batch)
    assert out["image"].shape == (2, 3, 2, 2) and out["caption"] == ["a", "b"]
    assert out["index"].tolist() == [0, 5]

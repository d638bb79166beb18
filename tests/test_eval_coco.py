"""The zero-shot MS-COCO protocol (docs/evaluation.md) on a tiny fake COCO layout, end to end.

The layout is COCO 2014's: ``val2014/COCO_val2014_<12-digit id>.jpg`` images of various sizes and
``annotations/captions_val2014.json`` (``images`` and ``annotations`` with ``image_id``, ``id``,
``caption``). The commands are the documented ones at toy sizes: ``eval stats`` on the image
folder, ``eval sample`` from the captions JSON (a random subset), ``eval score``. The FID
Inception is replaced by a TorchScript stand-in with its call signature, in a temporary cache.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from glide_diffusion.checkpoints import build_model, save_model
from glide_diffusion.cli.main import main
from glide_diffusion.eval.captions import caption_subset, read_captions
from glide_diffusion.eval.inception import sha256_of
from glide_diffusion.eval.shards import read_samples
from glide_diffusion.hub.cache import released_path
from glide_diffusion.presets import get_preset


class FakeInception(torch.nn.Module):
    """Stands in for inception-2015-12-05.pt: same call, 2048 features (channel means, tiled)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return (x / 255.0).mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


@pytest.fixture
def fake_coco(tmp_path):
    rng = np.random.default_rng(0)
    images, annotations = [], []
    (tmp_path / "val2014").mkdir()
    for k, (w, h) in enumerate([(40, 30), (30, 44), (36, 36), (48, 32), (32, 40), (20, 20), (24, 18)]):
        image_id = 100 + 7 * k
        name = f"COCO_val2014_{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "val2014" / name)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for j, text in enumerate(("a red circle", "a blue square on a white background")):
            annotations.append({"image_id": image_id, "id": 1000 + 2 * k + j, "caption": f"{text} {k}\n"})
    captions = tmp_path / "annotations" / "captions_val2014.json"
    captions.parent.mkdir()
    captions.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return tmp_path


@pytest.fixture
def tiny_base(tmp_path):
    torch.manual_seed(0)
    return str(save_model(tmp_path / "tiny.safetensors", build_model("tiny"), get_preset("tiny")))


def test_caption_subset_is_seeded_and_in_file_order():
    captions = [f"c{i}" for i in range(100)]
    a = caption_subset(captions, 30, seed=0)
    assert a == caption_subset(captions, 30, seed=0) and a != caption_subset(captions, 30, seed=1)
    assert len(set(a)) == 30 and a == sorted(a, key=captions.index)
    with pytest.raises(ValueError, match=r"--captions-subset must be in 1..100"):
        caption_subset(captions, 101)


def test_coco_protocol_on_a_fake_coco(fake_coco, tiny_base, tmp_path, monkeypatch, capsys, small_cpu_work):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(cache))
    inception = released_path("fid-inception")
    inception.parent.mkdir(parents=True)
    with pytest.warns(DeprecationWarning):  # torch.jit.script is deprecated in torch 2.13
        torch.jit.script(FakeInception()).save(str(inception))
    sha = sha256_of(inception)
    captions = fake_coco / "annotations" / "captions_val2014.json"
    assert len(read_captions(captions)) == 14

    # 1. reference statistics of the validation images, resized and centre-cropped (here 16 px, there 256);
    # the checksum of the Inception file is printed and recorded
    ref = tmp_path / "coco-val2014-16.npz"
    assert (
        main(
            [
                "eval",
                "stats",
                str(fake_coco / "val2014"),
                "-o",
                str(ref),
                "--extractor",
                "inception",
                "--resolution",
                "16",
                "--no-progress",
                "--no-download",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"inception-2015-12-05 file {inception}: SHA-256 {sha} (not verified: no pinned checksum" in err
    with np.load(ref) as z:
        assert (int(z["n"]), int(z["resolution"]), str(z["extractor"])) == (7, 16, "inception-2015-12-05")
        assert z["cov"].shape == (2048, 2048) and sha in str(z["description"])
    # FID on 2048-d features costs minutes on this CPU: the score below uses 128-d Shapes features
    small_ref = tmp_path / "coco-val2014-16-shapes.npz"
    assert (
        main(
            [
                "eval",
                "stats",
                str(fake_coco / "val2014"),
                "-o",
                str(small_ref),
                "--extractor",
                "shapes",
                "--resolution",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )

    # 2. samples for a random subset of the captions (there: --captions-subset 30000 of ~202k)
    out = tmp_path / "samples"
    sample = [
        "eval",
        "sample",
        str(captions),
        "--captions-subset",
        "6",
        "--captions-seed",
        "0",
        "-o",
        str(out),
        "--shard-size",
        "4",
        "--base",
        tiny_base,
        "--upsampler",
        "none",
        "--base-sampler",
        "ddim",
        "--base-steps",
        "2",
        "-g",
        "3",
        "--dtype",
        "fp32",
        "--no-progress",
        "--no-download",
    ]
    assert main(sample) == 0
    samples = read_samples(out)
    assert samples.captions == caption_subset(read_captions(captions), 6, seed=0)
    assert samples.images.shape == (6, 16, 16, 3)
    assert samples.request["captions_subset"] == {"k": 6, "seed": 0}

    # 3. scores against the reference statistics
    capsys.readouterr()
    assert main(["eval", "score", str(out), "--ref", str(small_ref), "--kid-subsets", "3", "--no-download"]) == 0
    report = json.loads((out / "score.json").read_text())
    assert report["extractor"] == "shapes-clip-rerank" and report["reference"]["n"] == 7
    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert np.isfinite(report[key]), key
    assert report["images"] == 6 and "| FID |" in (out / "score.md").read_text()

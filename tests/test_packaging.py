"""What an installation ships and needs: the tokenizer vocabularies inside the package, released
models fetching only their weights."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

import pytest

from glide_diffusion import vocab as shipped
from glide_diffusion.clip.tokenizer import CLIP_BPE_FILE, CLIP_BPE_SHA256, ClipTokenizer
from glide_diffusion.hub.released import RELEASED
from glide_diffusion.text.tokenizer import VocabNotFoundError

ROOT = Path(__file__).parents[1]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_shipped_vocab_is_the_released_files_with_their_licenses():
    for name, key in (("encoder.json", "gpt2-encoder"), ("vocab.bpe", "gpt2-vocab")):
        data = gzip.decompress(shipped.shipped_file(name).read_bytes())
        assert (len(data), _sha256(data)) == (RELEASED[key].size, RELEASED[key].sha256)
    clip = shipped.shipped_file(CLIP_BPE_FILE)
    assert clip.stat().st_size == RELEASED["clip-bpe"].size  # the same .gz `glide download clip-bpe` fetches
    assert _sha256(gzip.decompress(clip.read_bytes())) == CLIP_BPE_SHA256
    notice = (shipped.HERE / "LICENSE").read_text(encoding="utf-8")
    assert "Software Copyright (c) 2019 OpenAI" in notice  # GPT-2's (modified) MIT license
    assert "MIT License\n\nCopyright (c) 2021 OpenAI" in notice  # CLIP's


def test_pyproject_ships_the_vocab_as_package_data():
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["glide_diffusion.vocab"]
    for f in [*shipped.FILES, "LICENSE"]:
        assert any(Path(f).match(p) for p in patterns), f


def test_released_models_fetch_only_their_weights(tmp_path, monkeypatch):
    from glide_diffusion.hub import download
    from glide_diffusion.pipelines import stage

    asked = []
    monkeypatch.setattr(download, "download_released", lambda names, cache_dir=None, **kw: asked.extend(names))
    assert stage._ensure_released("base", tmp_path, True) is None  # the tokenizer finds the shipped copy
    assert asked == ["base"]
    asked.clear()
    monkeypatch.setattr(shipped, "HERE", tmp_path / "not-shipped")  # an installation without it
    stage._ensure_released("upsample", tmp_path, True)
    assert asked == ["upsample", "gpt2-encoder", "gpt2-vocab"]


def test_released_clip_fetches_only_its_weights(tmp_path, monkeypatch):
    from glide_diffusion.cli.common import load_clip_option
    from glide_diffusion.clip import build_clip, loading
    from glide_diffusion.hub import download

    asked = []
    monkeypatch.setattr(download, "download_released", lambda names, cache_dir=None, **kw: asked.extend(names))
    monkeypatch.setattr(loading, "load_clip", lambda *a, **kw: build_clip("tiny"))  # its tokenizer: CLIP's BPE
    monkeypatch.delenv("GLIDE_VOCAB_DIR", raising=False)
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "cache"))
    args = argparse.Namespace(cache_dir=str(tmp_path), no_download=False)
    _, tokenizer, _ = load_clip_option(args, "released", "cpu")
    assert asked == ["clip-image-enc", "clip-text-enc"] and isinstance(tokenizer, ClipTokenizer)
    asked.clear()
    monkeypatch.setattr(shipped, "HERE", tmp_path / "not-shipped")
    with pytest.raises(VocabNotFoundError, match="glide download clip-bpe"):  # the fake download wrote nothing
        load_clip_option(args, "released", "cpu")
    assert asked == ["clip-image-enc", "clip-text-enc", "clip-bpe"]

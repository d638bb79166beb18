"""Tokenizer tests: GLIDE's GPT-2 BPE against reference vectors, ByteTokenizer, batching."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from glide_diffusion import vocab as shipped
from glide_diffusion.text import tokenizer as tk
from glide_diffusion.text.tokenizer import (
    SHAPES_WORDS,
    ByteTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    VocabNotFoundError,
    get_tokenizer,
    tokenize_batch,
)

REFERENCE = json.loads((Path(__file__).parent / "data" / "tokenizer" / "glide_bpe.json").read_text())
PROMPTS = REFERENCE["prompts"]


# The package's own copy of the GPT-2 files (glide_diffusion/vocab/), or $GLIDE_VOCAB_DIR to test another.
VOCAB_DIR = Path(os.environ.get("GLIDE_VOCAB_DIR") or shipped.HERE).resolve()


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return get_tokenizer("gpt2", vocab_dir=VOCAB_DIR)


# --- GPT-2 BPE against glide_text2im's own encoder -----------------------------------------------


def test_reference_metadata(gpt2):
    assert (gpt2.n_vocab, gpt2.pad_token) == (REFERENCE["n_vocab"], REFERENCE["end_token"]) == (50257, 50256)
    assert len(PROMPTS) == 63
    assert isinstance(gpt2, Tokenizer)


@pytest.mark.parametrize("case", PROMPTS, ids=[str(p["id"]) for p in PROMPTS])
def test_matches_glide_bpe(gpt2, case):
    tokens = gpt2.encode(case["prompt"])
    assert tokens == case["tokens"]
    assert len(tokens) == case["n_tokens"]
    assert gpt2.decode(tokens) == case["decoded"]
    padded, mask = gpt2.padded_tokens_and_mask(tokens, REFERENCE["text_ctx"])
    assert padded == case["padded_128"]
    assert mask == case["mask_128"]


def test_endoftext_is_ordinary_text(gpt2):
    tokens = gpt2.encode("a <|endoftext|> b")
    assert 50256 not in tokens and len(tokens) > 3


def test_gzip_and_plain_files_give_same_encoding(gpt2, tmp_path):
    for name in ("encoder.json", "vocab.bpe"):
        src = VOCAB_DIR / name
        data = src.read_bytes() if src.is_file() else gzip.decompress((VOCAB_DIR / f"{name}.gz").read_bytes())
        (tmp_path / name).write_bytes(data)
    plain = get_tokenizer("gpt2", vocab_dir=tmp_path)
    prompt = PROMPTS[0]["prompt"]
    assert plain.encode(prompt) == gpt2.encode(prompt)


def _fill(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("encoder.json.gz", "vocab.bpe.gz"):
        src = VOCAB_DIR / name
        if src.is_file():
            shutil.copy(src, directory / name)
        else:
            (directory / name).write_bytes(gzip.compress((VOCAB_DIR / name[:-3]).read_bytes()))
    return directory


def test_vocab_dir_search_order(tmp_path, monkeypatch):
    arg, env, cache = tmp_path / "arg", tmp_path / "env", tmp_path / "cache"
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(cache))
    monkeypatch.delenv("GLIDE_VOCAB_DIR", raising=False)
    assert tk.find_vocab_dir() == tk.shipped_vocab_dir() == shipped.HERE  # the package's copy
    _fill(cache / "vocab")
    assert tk.find_vocab_dir() == shipped.HERE  # before the cache
    monkeypatch.setattr(shipped, "HERE", tmp_path / "not-shipped")  # an installation without it
    assert tk.shipped_vocab_dir() is None
    assert tk.find_vocab_dir() == cache / "vocab"
    shutil.rmtree(cache)
    assert tk.find_vocab_dir() is None
    _fill(env)
    monkeypatch.setenv("GLIDE_VOCAB_DIR", str(env))
    assert tk.find_vocab_dir() == env
    _fill(arg)
    assert tk.find_vocab_dir(arg) == arg


def test_shipped_vocab_is_the_default(monkeypatch):
    monkeypatch.delenv("GLIDE_VOCAB_DIR", raising=False)
    monkeypatch.setenv("GLIDE_CACHE_DIR", "/nonexistent/glide-cache")
    monkeypatch.setattr(tk.tiktoken, "get_encoding", lambda name: pytest.fail("tiktoken download attempted"))
    tok = get_tokenizer("gpt2")
    assert tok.encode(PROMPTS[0]["prompt"]) == PROMPTS[0]["tokens"]


def test_named_vocab_dir_without_files_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(VocabNotFoundError, match="glide download vocab") as ei:
        tk.find_vocab_dir(tmp_path)
    assert str(tmp_path) in str(ei.value)
    monkeypatch.setenv("GLIDE_VOCAB_DIR", str(tmp_path / "missing"))
    with pytest.raises(VocabNotFoundError, match="missing"):
        get_tokenizer("gpt2")


def test_wrong_vocab_file_is_rejected(tmp_path):
    _fill(tmp_path)
    (tmp_path / "vocab.bpe.gz").unlink()
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="sha256"):
        get_tokenizer("gpt2", vocab_dir=tmp_path)


def test_offline_without_files_explains_where_to_put_them(tmp_path, monkeypatch):
    import requests

    def offline(name):
        raise requests.ConnectionError("network is unreachable")

    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GLIDE_VOCAB_DIR", raising=False)
    monkeypatch.setattr(shipped, "HERE", tmp_path / "not-shipped")  # an installation without the copy
    monkeypatch.setattr(tk.tiktoken, "get_encoding", offline)
    tk._encoding_from_tiktoken.cache_clear()
    try:
        with pytest.raises(VocabNotFoundError) as ei:
            get_tokenizer("gpt2")
    finally:
        tk._encoding_from_tiktoken.cache_clear()
    msg = str(ei.value)
    assert str(tmp_path / "vocab") in msg
    assert "encoder.json" in msg and "vocab.bpe" in msg
    assert "GLIDE_VOCAB_DIR" in msg and "glide download vocab" in msg
    assert "ConnectionError" in msg and "not-shipped" in msg


# --- ByteTokenizer, registry, batching -------------------------------------------------------


def test_byte_tokenizer():
    tok = get_tokenizer("bytes")
    assert isinstance(tok, ByteTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.n_vocab, tok.pad_token) == (257, 256)
    assert tok.encode("Hé!") == [0x68, 0xC3, 0xA9, 0x21]
    assert tok.decode(tok.encode("Hé!") + [256, 256]) == "hé!"
    padded, mask = tok.padded_tokens_and_mask([1, 2, 3], 5)
    assert padded == [1, 2, 3, 256, 256] and mask == [True] * 3 + [False] * 2
    padded, mask = tok.padded_tokens_and_mask(list(range(10)), 4)
    assert padded == [0, 1, 2, 3] and mask == [True] * 4


def test_unknown_tokenizer_lists_names():
    with pytest.raises(ValueError, match="gpt2.*bytes"):
        get_tokenizer("clip")


def test_tokenize_batch_pads_and_masks():
    tok = ByteTokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens, mask = tokenize_batch(tok, ["ab", ""], 4)
    assert tokens.dtype == torch.long and mask.dtype == torch.bool
    assert tokens.tolist() == [[97, 98, 256, 256], [256] * 4]
    assert mask.tolist() == [[True, True, False, False], [False] * 4]
    tokens, mask = tokenize_batch(tok, [], 4)
    assert tokens.shape == mask.shape == (0, 4)
    with pytest.raises(TypeError):
        tokenize_batch(tok, "ab", 4)


def test_tokenize_batch_warns_on_truncation():
    with pytest.warns(UserWarning, match=r"has 10 tokens; truncated to the context length 4"):
        tokens, mask = tokenize_batch(ByteTokenizer(), ["abcdefghij"], 4)
    assert tokens.tolist() == [[97, 98, 99, 100]] and mask.all()


def test_tokenize_batch_gpt2_long_prompt(gpt2):
    long = next(p for p in PROMPTS if p["n_tokens"] > 128)
    with pytest.warns(UserWarning, match=f"has {long['n_tokens']} tokens; truncated to the context length 128"):
        tokens, mask = tokenize_batch(gpt2, [long["prompt"], ""], 128)
    assert tokens[0].tolist() == long["padded_128"] and mask[0].tolist() == long["mask_128"]
    assert tokens[1].eq(50256).all() and not mask[1].any()


def test_downloaded_vocab_is_found_in_cache(tmp_path, monkeypatch):
    """`glide download vocab` (against a local mirror) fills <cache>/vocab for get_tokenizer."""
    from glide_diffusion.hub import download_released
    from tests.http_server import LocalServer

    files = {}
    for name in ("encoder.json", "vocab.bpe"):
        src = VOCAB_DIR / name
        files[f"/gpt2/{name}"] = (
            src.read_bytes() if src.is_file() else gzip.decompress((VOCAB_DIR / f"{name}.gz").read_bytes())
        )
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GLIDE_VOCAB_DIR", raising=False)
    monkeypatch.setattr(shipped, "HERE", tmp_path / "not-shipped")  # else the package's copy comes first
    with LocalServer(files) as srv:
        paths = download_released(["gpt2-encoder", "gpt2-vocab"], base_url=srv.url("/gpt2"), progress=False)
    assert paths == [tmp_path / "vocab" / "encoder.json", tmp_path / "vocab" / "vocab.bpe"]
    assert tk.find_vocab_dir() == tmp_path / "vocab"
    tok = get_tokenizer("gpt2")
    assert tok.encode(PROMPTS[0]["prompt"]) == PROMPTS[0]["tokens"]


def test_shapes_tokenizer_gives_every_caption_word_one_id():
    from glide_diffusion.data.shapes import ShapesDataset

    tok = get_tokenizer("shapes")
    assert tok.n_vocab == 256 + len(SHAPES_WORDS) + 1 and tok.pad_token == tok.n_vocab - 1
    data = ShapesDataset("train", resolution=32, seed=3)
    for n in range(300):
        caption = data.item(n)["caption"]
        ids = tok.encode(caption)
        assert len(ids) == len(caption.split()) and all(i >= 256 for i in ids), caption
        assert tok.decode(ids) == caption
    assert max(len(tok.encode(data.item(n)["caption"])) for n in range(300)) <= 24


def test_shapes_tokenizer_spells_other_words_in_bytes():
    tok = get_tokenizer("shapes")
    ids = tok.encode("A Zebra, in the CENTER")
    assert ids[0] == 256 and ids[1:6] == list(b"zebra") and ids[6] == ord(",")
    assert tok.decode(ids) == "a zebra, in the center"
    assert tok.encode("") == []
    tokens, mask = tokenize_batch(tok, ["a red star", ""], 8)
    assert tokens[0, 3:].eq(tok.pad_token).all() and mask.sum().item() == 3


def test_model_tokenizer_must_fit_the_embedding_table():
    from glide_diffusion.text.tokenizer import tokenizer_for
    from glide_diffusion.unet.config import TextConfig

    assert tokenizer_for(TextConfig(n_vocab=294, tokenizer="shapes")).name == "shapes"
    with pytest.raises(ValueError, match="n_vocab >= 294"):
        tokenizer_for(TextConfig(n_vocab=257, tokenizer="shapes"))

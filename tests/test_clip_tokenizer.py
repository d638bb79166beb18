"""CLIP's simple BPE tokenizer against the official one (63 reference prompts)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch

from glide_diffusion import vocab as shipped
from glide_diffusion.clip import tokenizer as ct
from glide_diffusion.clip.tokenizer import (
    CLIP_BPE_FILE,
    ClipTokenizer,
    bytes_to_unicode,
    clip_tokenize_batch,
    find_clip_vocab,
    load_clip_tokenizer,
)
from glide_diffusion.text.tokenizer import VocabNotFoundError

DATA = Path(__file__).parent / "data"
CASES = json.loads((DATA / "tokenizer" / "clip_simple.json").read_text())


# The package's own copy (glide_diffusion/vocab/), or $GLIDE_VOCAB_DIR to test another.
VOCAB_DIR = Path(os.environ.get("GLIDE_VOCAB_DIR") or shipped.HERE)


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return load_clip_tokenizer(VOCAB_DIR)


def test_vocab_constants(tok):
    assert tok.n_vocab == CASES["vocab_size"] == 49408
    assert (tok.start_token, tok.end_token) == (CASES["start_token"], CASES["end_token"]) == (49406, 49407)
    assert len(bytes_to_unicode()) == 256 and len(set(bytes_to_unicode().values())) == 256


@pytest.mark.parametrize("case", CASES["prompts"], ids=lambda c: str(c["id"]))
def test_matches_official(tok, case):
    tokens = tok.encode(case["prompt"])
    assert tokens == case["tokens"]
    assert tok.decode(tokens) == case["decoded"]
    padded, n = tok.padded_tokens_and_len(tokens, CASES["text_ctx"])
    assert padded == case["padded_77"] and n == case["len_77"]


def test_quirks(tok):
    assert tok.encode("2021") == [tok.encode(d)[0] for d in "2021"]  # every digit its own token
    assert tok.encode("a <|endoftext|> b")[1] == tok.end_token  # special strings become special ids
    assert tok.encode("&amp;amp;") == tok.encode("&")  # html unescaped twice
    assert tok.encode("  Hello\t\nWORLD ") == tok.encode("hello world")
    assert tok.encode("") == []


def test_padding_truncates_to_75_plus_specials(tok):
    padded, n = tok.padded_tokens_and_len(list(range(1, 101)), 77)
    assert n == 77 and padded[0] == 49406 and padded[-1] == 49407 and padded[1:76] == list(range(1, 76))
    padded, n = tok.padded_tokens_and_len([], 77)
    assert n == 2 and padded[:3] == [49406, 49407, 0] and len(padded) == 77


def test_batch(tok):
    tokens, lens = clip_tokenize_batch(tok, ["a red circle", ""], 77)
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert lens.tolist() == [5, 2]
    with pytest.raises(TypeError):
        clip_tokenize_batch(tok, "a red circle", 77)


def test_vocab_search(tmp_path, monkeypatch):
    with pytest.raises(VocabNotFoundError, match="glide download clip-bpe"):
        find_clip_vocab(tmp_path)
    monkeypatch.setenv("GLIDE_VOCAB_DIR", str(tmp_path))
    with pytest.raises(VocabNotFoundError):
        find_clip_vocab()
    plain = tmp_path / CLIP_BPE_FILE
    plain.write_bytes(
        gzip.decompress((VOCAB_DIR / f"{CLIP_BPE_FILE}.gz").read_bytes())
        if (VOCAB_DIR / f"{CLIP_BPE_FILE}.gz").is_file()
        else (VOCAB_DIR / CLIP_BPE_FILE).read_bytes()
    )
    assert find_clip_vocab() == plain  # from $GLIDE_VOCAB_DIR, uncompressed also accepted
    monkeypatch.delenv("GLIDE_VOCAB_DIR")
    cache = tmp_path / "cache"
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(cache))
    (cache / "vocab").mkdir(parents=True)
    (cache / "vocab" / CLIP_BPE_FILE).write_bytes(plain.read_bytes())
    assert find_clip_vocab() == ct.shipped_clip_vocab() == shipped.HERE / f"{CLIP_BPE_FILE}.gz"  # before the cache
    monkeypatch.setattr(shipped, "HERE", tmp_path / "not-shipped")  # an installation without the copy
    assert ct.shipped_clip_vocab() is None
    assert find_clip_vocab() == cache / "vocab" / CLIP_BPE_FILE
    (cache / "vocab" / CLIP_BPE_FILE).unlink()
    with pytest.raises(VocabNotFoundError, match="cache") as ei:
        find_clip_vocab()
    assert "not-shipped" in str(ei.value)


def test_shipped_copy_is_the_default(monkeypatch):
    monkeypatch.delenv("GLIDE_VOCAB_DIR", raising=False)
    monkeypatch.setenv("GLIDE_CACHE_DIR", "/nonexistent/glide-cache")
    tok = load_clip_tokenizer()
    case = CASES["prompts"][0]
    assert tok.encode(case["prompt"]) == case["tokens"]


def test_wrong_file_refused(tmp_path):
    (tmp_path / CLIP_BPE_FILE).write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="sha256"):
        ClipTokenizer.from_file(tmp_path / CLIP_BPE_FILE)

"""CLIP's simple BPE tokenizer against the official one (63 reference prompts)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch

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


def _reference_vocab_dir() -> Path | None:
    env = os.environ.get("GLIDE_VOCAB_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).parents[1] / ".." / "shared" / "reference" / "vocab")
    for c in candidates:
        if (c / f"{CLIP_BPE_FILE}.gz").is_file() or (c / CLIP_BPE_FILE).is_file():
            return c
    return None


VOCAB_DIR = _reference_vocab_dir()
pytestmark = pytest.mark.skipif(
    VOCAB_DIR is None, reason=f"{CLIP_BPE_FILE}(.gz) not found in $GLIDE_VOCAB_DIR or ../shared/reference/vocab"
)


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
    plain.write_bytes(gzip.decompress((VOCAB_DIR / f"{CLIP_BPE_FILE}.gz").read_bytes())
                      if (VOCAB_DIR / f"{CLIP_BPE_FILE}.gz").is_file() else (VOCAB_DIR / CLIP_BPE_FILE).read_bytes())
    assert find_clip_vocab() == plain  # from $GLIDE_VOCAB_DIR, uncompressed also accepted
    monkeypatch.delenv("GLIDE_VOCAB_DIR")
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(VocabNotFoundError, match="cache"):
        find_clip_vocab()


def test_wrong_file_refused(tmp_path):
    (tmp_path / CLIP_BPE_FILE).write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="sha256"):
        ClipTokenizer.from_file(tmp_path / CLIP_BPE_FILE)

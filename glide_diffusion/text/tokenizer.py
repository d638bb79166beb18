"""Text tokenizers: GLIDE's GPT-2 BPE (via tiktoken) and two file-free ones.

``"bytes"`` encodes UTF-8 bytes; ``"shapes"`` gives each word of the Shapes
captions one id and spells any other word in bytes (the bundled Shapes models
use it: short sequences of whole words are far easier for a small caption
transformer to learn than 100-byte strings, and no vocabulary file is needed).

GLIDE (glide_text2im/tokenizer/bpe.py) lower-cases the prompt with
``str.lower()`` and applies GPT-2's byte-level BPE; the string
"<|endoftext|>" in a prompt is ordinary text, never the special id. Prompts are
truncated to the text context (128) and padded with the end token 50256; the
mask is True on real tokens. ``GPT2Tokenizer`` reproduces this exactly with
tiktoken's BPE (checked on the 63 reference prompts in
``tests/data/tokenizer/glide_bpe.json``).

Where the GPT-2 files come from (``encoder.json`` and ``vocab.bpe``, plain or
``.gz``), in order:

1. the ``vocab_dir`` argument, else ``$GLIDE_VOCAB_DIR`` (if either is given,
   the files must be there: a wrong path is an error, not a silent fallback);
2. the copy shipped in the package (``glide_diffusion/vocab/``, MIT, see its
   ``LICENSE``);
3. ``<glide cache dir>/vocab`` (filled by ``glide download vocab``), for an
   installation without the shipped copy;
4. ``tiktoken.get_encoding("gpt2")``, which downloads into tiktoken's own cache.

The shipped copy comes before the cache: every source is checked against the
same SHA-256, so both would give the same encoding, and reading the package's
own files first means a normal installation never depends on the cache (a
damaged or half-copied file there cannot break it) nor on the network.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import tiktoken
import tiktoken.load
import torch

from glide_diffusion import vocab as shipped
from glide_diffusion.hub.cache import cache_dir
from glide_diffusion.hub.released import RELEASED

__all__ = [
    "Tokenizer",
    "GPT2Tokenizer",
    "ByteTokenizer",
    "WordTokenizer",
    "SHAPES_WORDS",
    "VocabNotFoundError",
    "VOCAB_ENV",
    "GPT2_PATTERN",
    "find_vocab_dir",
    "shipped_vocab_dir",
    "load_gpt2_encoding",
    "get_tokenizer",
    "tokenizer_for",
    "tokenize_batch",
    "padded_tokens_and_mask",
]

VOCAB_ENV = "GLIDE_VOCAB_DIR"

# GPT-2's original pre-tokenisation pattern, as in GLIDE's bpe.Encoder.pat.
# (tiktoken's "gpt2" uses an equivalent rewrite; both match GLIDE on all
# reference prompts, see tests/data/tokenizer/tiktoken_check.json.)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_END_TOKEN = 50256  # "<|endoftext|>": GLIDE's padding value
GPT2_N_VOCAB = 50257

# SHA-256 of the decompressed files (the upstream GPT-2 encodings).
_GPT2_FILES = {
    "encoder.json": RELEASED["gpt2-encoder"].sha256,
    "vocab.bpe": RELEASED["gpt2-vocab"].sha256,
}


class VocabNotFoundError(FileNotFoundError):
    """The GPT-2 BPE files are neither on disk nor downloadable."""


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer provides."""

    name: str
    n_vocab: int
    pad_token: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> str: ...

    def padded_tokens_and_mask(self, tokens: Sequence[int], context_length: int) -> tuple[list[int], list[bool]]: ...


def padded_tokens_and_mask(tokens: Sequence[int], context_length: int, pad_token: int) -> tuple[list[int], list[bool]]:
    """Truncate to ``context_length``, pad with ``pad_token``; mask is True on real tokens."""
    tokens = list(tokens)[:context_length]
    n_pad = context_length - len(tokens)
    return tokens + [pad_token] * n_pad, [True] * len(tokens) + [False] * n_pad


class GPT2Tokenizer:
    """GLIDE's text tokenizer: lower-case, then GPT-2 byte-level BPE (50257 ids, pad 50256)."""

    name = "gpt2"
    n_vocab = GPT2_N_VOCAB
    pad_token = GPT2_END_TOKEN

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        if encoding.n_vocab != GPT2_N_VOCAB:
            raise ValueError(f"expected a GPT-2 encoding with {GPT2_N_VOCAB} ids, got {encoding.n_vocab}")
        self.encoding = encoding

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text.lower()``; special-token strings are plain text."""
        return self.encoding.encode_ordinary(text.lower())

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``; invalid UTF-8 becomes U+FFFD, as in GLIDE."""
        return self.encoding.decode(list(tokens), errors="replace")

    def padded_tokens_and_mask(self, tokens: Sequence[int], context_length: int) -> tuple[list[int], list[bool]]:
        """Truncate/pad to ``context_length`` with 50256, as GLIDE does."""
        return padded_tokens_and_mask(tokens, context_length, self.pad_token)

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(n_vocab={self.n_vocab}, pad_token={self.pad_token})"


class ByteTokenizer:
    """File-free tokenizer for tests and small models: UTF-8 bytes of the lower-cased text.

    Ids 0..255 are bytes, 256 is padding; ``n_vocab`` is 257.
    """

    name = "bytes"
    n_vocab = 257
    pad_token = 256

    def encode(self, text: str) -> list[int]:
        return list(text.lower().encode("utf-8"))

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of the byte ids; padding is dropped, invalid UTF-8 becomes U+FFFD."""
        return bytes(t for t in tokens if 0 <= t < 256).decode("utf-8", errors="replace")

    def padded_tokens_and_mask(self, tokens: Sequence[int], context_length: int) -> tuple[list[int], list[bool]]:
        return padded_tokens_and_mask(tokens, context_length, self.pad_token)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


# The "shapes" vocabulary: every word of the Shapes caption grammar
# (docs/shapes.md). Part of the checkpoint contract of models trained
# with it: append only, never reorder.
SHAPES_WORDS: tuple[str, ...] = (
    "a",
    "an",
    "the",
    "of",
    "that",
    "is",
    "photo",
    "image",
    "small",
    "large",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "in",
    "at",
    "on",
    "to",
    "top",
    "bottom",
    "left",
    "right",
    "center",
    "corner",
    "above",
    "below",
    "white",
    "black",
    "gray",
    "background",
)

_WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


class WordTokenizer:
    """A closed word vocabulary with byte fallback, file-free.

    The lower-cased text is split into words and punctuation marks; a word in
    the vocabulary is one id (256 + its index), anything else is spelled as its
    UTF-8 bytes (ids 0..255), so every prompt encodes. The last id pads.
    """

    def __init__(self, words: Sequence[str], name: str) -> None:
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary has repeated words")
        self.name = name
        self.words = tuple(words)
        self._ids = {w: 256 + i for i, w in enumerate(self.words)}
        self.pad_token = 256 + len(self.words)
        self.n_vocab = self.pad_token + 1

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _WORD_PATTERN.findall(text.lower()):
            word = self._ids.get(piece)
            ids.extend([word] if word is not None else piece.encode("utf-8"))
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        """Words joined by spaces; a run of byte ids is one word (invalid UTF-8 becomes U+FFFD)."""
        parts: list[str] = []
        run = bytearray()
        for t in tokens:
            if 0 <= t < 256:
                run.append(t)
                continue
            if run:
                parts.append(run.decode("utf-8", errors="replace"))
                run = bytearray()
            if 256 <= t < self.pad_token:
                parts.append(self.words[t - 256])
        if run:
            parts.append(run.decode("utf-8", errors="replace"))
        return " ".join(parts)

    def padded_tokens_and_mask(self, tokens: Sequence[int], context_length: int) -> tuple[list[int], list[bool]]:
        return padded_tokens_and_mask(tokens, context_length, self.pad_token)

    def __repr__(self) -> str:
        return f"WordTokenizer(name={self.name!r}, n_vocab={self.n_vocab})"


# --- loading the GPT-2 BPE --------------------------------------------------------------------


def _vocab_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_vocab(directory: Path) -> bool:
    return all(_vocab_file(directory, name) is not None for name in _GPT2_FILES)


def shipped_vocab_dir() -> Path | None:
    """The package's own folder of GPT-2 files, or None where this installation lacks them."""
    return shipped.HERE if _has_vocab(shipped.HERE) else None


def _search_locations(vocab_dir: str | os.PathLike[str] | None) -> tuple[list[Path], bool]:
    """(directories to look in, whether the caller named one explicitly)."""
    if vocab_dir is not None:
        return [Path(vocab_dir).expanduser()], True
    env = os.environ.get(VOCAB_ENV)
    if env:
        return [Path(env).expanduser()], True
    return [shipped.HERE, cache_dir() / "vocab"], False


def _missing_message(places: list[Path], reason: str) -> str:
    where = "\n".join(f"    {p}" for p in places)
    return (
        f"GPT-2 BPE files for GLIDE's tokenizer not found: {reason}.\n"
        f"Put encoder.json and vocab.bpe (plain or .gz) in\n{where}\n"
        f"(or in the directory named by ${VOCAB_ENV}), or run:\n    glide download vocab"
    )


def find_vocab_dir(vocab_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first directory holding ``encoder.json`` and ``vocab.bpe`` (the argument or
    ``$GLIDE_VOCAB_DIR``, else the package's copy, else the cache), or None if none does.

    Raises:
        VocabNotFoundError: if ``vocab_dir`` (or ``$GLIDE_VOCAB_DIR``) was given
            but lacks the files.
    """
    places, explicit = _search_locations(vocab_dir)
    for place in places:
        if _has_vocab(place):
            return place
    if explicit:
        raise VocabNotFoundError(_missing_message(places, f"{places[0]} does not contain them"))
    return None


def _read_checked(path: Path, name: str) -> bytes:
    """File contents (gunzipped if ``.gz``), checked against the upstream SHA-256."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != _GPT2_FILES[name]:
        raise ValueError(
            f"{path} is not the GPT-2 {name} GLIDE uses (sha256 {digest}, expected "
            f"{_GPT2_FILES[name]}); replace it, e.g. with `glide download vocab`"
        )
    return data


_ENV_LOCK = threading.Lock()


@contextmanager
def _tiktoken_cache_disabled():
    """tiktoken reads plain local paths directly only when TIKTOKEN_CACHE_DIR is ''.

    Otherwise it copies every file it reads into its cache keyed by path.
    """
    with _ENV_LOCK:
        old = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            yield
        finally:
            if old is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = old


@functools.lru_cache(maxsize=4)
def _encoding_from_dir(directory: str) -> tiktoken.Encoding:
    src = Path(directory)
    with tempfile.TemporaryDirectory(prefix="glide-vocab-") as tmp:
        for name in _GPT2_FILES:
            path = _vocab_file(src, name)
            if path is None:
                raise VocabNotFoundError(f"{src} has no {name} (or {name}.gz)")
            (Path(tmp) / name).write_bytes(_read_checked(path, name))
        with _tiktoken_cache_disabled():
            ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=str(Path(tmp) / "vocab.bpe"),
                encoder_json_file=str(Path(tmp) / "encoder.json"),
            )
    return tiktoken.Encoding(
        name="glide-gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_END_TOKEN},
        explicit_n_vocab=GPT2_N_VOCAB,
    )


@functools.lru_cache(maxsize=1)
def _encoding_from_tiktoken() -> tiktoken.Encoding:
    return tiktoken.get_encoding("gpt2")


def load_gpt2_encoding(vocab_dir: str | os.PathLike[str] | None = None) -> tiktoken.Encoding:
    """The GPT-2 tiktoken encoding, from local files if found (the package ships them), else
    tiktoken's download.

    Built once per source and cached (building takes about a second).

    Raises:
        VocabNotFoundError: if the files are not found locally and tiktoken
            cannot fetch them (offline); the message says where to put them.
    """
    directory = find_vocab_dir(vocab_dir)
    if directory is not None:
        return _encoding_from_dir(str(directory.resolve()))
    try:
        return _encoding_from_tiktoken()
    except Exception as e:  # tiktoken surfaces network failures as assorted types
        reason = (
            f"this installation lacks the package's copy ({shipped.HERE}), none in the cache, and "
            f"tiktoken could not download them ({type(e).__name__}: {e})"
        )
        raise VocabNotFoundError(_missing_message([cache_dir() / "vocab"], reason)) from e


# --- registry and batching ----------------------------------------------------------------


_TOKENIZERS = ("gpt2", "bytes", "shapes")


def get_tokenizer(name: str, vocab_dir: str | os.PathLike[str] | None = None) -> Tokenizer:
    """A tokenizer by name: ``"gpt2"`` (GLIDE's), ``"bytes"`` or ``"shapes"`` (file-free).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
        VocabNotFoundError: for ``"gpt2"`` when its files cannot be found.
    """
    if name == "gpt2":
        return GPT2Tokenizer(load_gpt2_encoding(vocab_dir))
    if name == "bytes":
        return ByteTokenizer()
    if name == "shapes":
        return WordTokenizer(SHAPES_WORDS, "shapes")
    raise ValueError(f"unknown tokenizer {name!r}; known tokenizers: {', '.join(_TOKENIZERS)}")


def tokenizer_for(text_config, vocab_dir: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer a model's text config names, checked against its embedding table.

    Raises:
        ValueError: if the tokenizer produces ids the model has no embedding for.
    """
    tokenizer = get_tokenizer(text_config.tokenizer, vocab_dir)
    if tokenizer.n_vocab > text_config.n_vocab:
        raise ValueError(
            f"the {text_config.tokenizer!r} tokenizer has {tokenizer.n_vocab} ids but the model's "
            f"text n_vocab is {text_config.n_vocab}; set n_vocab >= {tokenizer.n_vocab}"
        )
    return tokenizer


def tokenize_batch(
    tokenizer: Tokenizer, prompts: Sequence[str], context_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode, truncate and pad a batch of prompts.

    Returns:
        tokens: int64 (B, L) with L = ``context_length``; padded with ``pad_token``.
        mask: bool (B, L), True on real tokens (all False for an empty prompt).

    A prompt longer than the context is truncated with a warning (GLIDE
    truncates silently).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not a single string")
    rows, masks = [], []
    for prompt in prompts:
        tokens = tokenizer.encode(prompt)
        if len(tokens) > context_length:
            warnings.warn(  # no row index in the text: one caption warns once, however many rows repeat it
                f"the caption {prompt[:40]!r}{'...' if len(prompt) > 40 else ''} has "
                f"{len(tokens)} tokens; truncated to the context length {context_length}",
                stacklevel=2,
            )
        padded, mask = tokenizer.padded_tokens_and_mask(tokens, context_length)
        rows.append(padded)
        masks.append(mask)
    shape = (len(rows), context_length)
    return (
        torch.tensor(rows, dtype=torch.long).reshape(shape),
        torch.tensor(masks, dtype=torch.bool).reshape(shape),
    )

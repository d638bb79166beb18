"""CLIP's simple BPE tokenizer, as used by GLIDE's noised CLIP
(glide_text2im/tokenizer/simple_tokenizer.py, identical to openai/CLIP's).

Text is cleaned (``ftfy.fix_text``, ``html.unescape`` twice, whitespace runs
collapsed to one space, stripped, lower-cased), split with CLIP's pattern
(every digit is its own piece; the strings "<|startoftext|>" and
"<|endoftext|>" become the special ids 49406 / 49407), mapped to GPT-2's
byte-to-unicode alphabet and merged with the ranks in
``bpe_simple_vocab_16e6.txt.gz``; the last symbol of every word carries
``</w>``. tiktoken cannot express the ``</w>`` scheme, so the (small) merge
loop is written out here. Checked against the official tokenizer on 63 prompts
(``tests/data/tokenizer/clip_simple.json``).

Where ``bpe_simple_vocab_16e6.txt(.gz)`` comes from, in order:

1. the ``vocab_dir`` argument, else ``$GLIDE_VOCAB_DIR`` (if either is given,
   the file must be there: a wrong path is an error, not a silent fallback);
2. the copy shipped in the package (``glide_diffusion/vocab/``, MIT, see its
   ``LICENSE``);
3. ``<glide cache dir>/vocab`` (filled by ``glide download clip-bpe``), for an
   installation without the shipped copy.

The shipped copy comes before the cache for the reason the GPT-2 files' does
(:mod:`glide_diffusion.text.tokenizer`): the file is checked against the same
SHA-256 wherever it comes from, so a normal installation need not read the cache.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import os
from collections.abc import Sequence
from pathlib import Path

import regex
import torch

from glide_diffusion import vocab as shipped
from glide_diffusion.hub.cache import cache_dir
from glide_diffusion.text.tokenizer import VOCAB_ENV, VocabNotFoundError

__all__ = [
    "ClipTokenizer",
    "ClipWordTokenizer",
    "clip_tokenizer_for",
    "CLIP_BPE_FILE",
    "CLIP_BPE_SHA256",
    "find_clip_vocab",
    "shipped_clip_vocab",
    "load_clip_tokenizer",
    "clip_tokenize_batch",
    "bytes_to_unicode",
]

CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt"
# SHA-256 of the decompressed file shipped with glide-text2im (and with this package).
CLIP_BPE_SHA256 = "67603cfda2e032ad77b5f8808af37789d590db664b26df8705d2bf8b3c553fc8"
_N_MERGES = 49152 - 256 - 2  # the official code uses merges[1 : 49152 - 256 - 2 + 1]

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (256 entries)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clean_text(text: str) -> str:
    """ftfy, html unescape (twice), whitespace collapse, strip, lower-case."""
    import ftfy  # imported lazily: only prompts for the CLIP need it

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """CLIP's tokenizer: 49408 ids, start 49406, end 49407, padding 0."""

    name = "clip"
    pad_token = 0

    def __init__(self, merges: Sequence[tuple[str, str]]) -> None:
        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + list(_SPECIALS)
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.n_vocab = len(vocab)
        self.start_token = self.encoder[_SPECIALS[0]]
        self.end_token = self.encoder[_SPECIALS[1]]
        self._cache: dict[str, list[str]] = {s: [s] for s in _SPECIALS}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ClipTokenizer:
        return cls(_read_merges(Path(path)))

    def bpe(self, word: str) -> list[str]:
        """Symbols of one pre-token (already byte-mapped); the last carries ``</w>``."""
        if word in self._cache:
            return self._cache[word]
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):  # merge every non-overlapping occurrence, left to right
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = symbols
        return symbols

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no start/end tokens)."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text)):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(word))
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``: ``</w>`` becomes a space, invalid UTF-8 becomes U+FFFD."""
        chars = "".join(self.decoder[int(t)] for t in tokens)
        return bytes(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace").replace("</w>", " ")

    def padded_tokens_and_len(self, tokens: Sequence[int], text_ctx: int) -> tuple[list[int], int]:
        """``[start] + tokens[:text_ctx - 2] + [end]`` padded with 0; the length counts start and end."""
        row = [self.start_token, *list(tokens)[: text_ctx - 2], self.end_token]
        return row + [self.pad_token] * (text_ctx - len(row)), len(row)

    def __repr__(self) -> str:
        return f"ClipTokenizer(n_vocab={self.n_vocab})"


class ClipWordTokenizer:
    """The Shapes word vocabulary (:data:`glide_diffusion.text.tokenizer.SHAPES_WORDS`, bytes for
    other words) in CLIP's layout: start and end ids after the words' ids, padding 0."""

    name = "shapes"
    pad_token = 0

    def __init__(self) -> None:
        from glide_diffusion.text.tokenizer import get_tokenizer

        self.words = get_tokenizer("shapes")
        self.start_token = self.words.n_vocab
        self.end_token = self.words.n_vocab + 1
        self.n_vocab = self.words.n_vocab + 2

    def encode(self, text: str) -> list[int]:
        return self.words.encode(text)

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of the ids after a start id and before the end id (all of them if absent)."""
        tokens = list(tokens)
        if tokens and tokens[0] == self.start_token:
            tokens = tokens[1:]
        if self.end_token in tokens:
            tokens = tokens[: tokens.index(self.end_token)]
        return self.words.decode(tokens)

    padded_tokens_and_len = ClipTokenizer.padded_tokens_and_len

    def __repr__(self) -> str:
        return f"ClipWordTokenizer(n_vocab={self.n_vocab})"


def clip_tokenizer_for(config, vocab_dir: str | os.PathLike[str] | None = None):
    """The tokenizer a :class:`~glide_diffusion.clip.config.ClipConfig` names, checked against
    its embedding table (``n_vocab``)."""
    tokenizer = ClipWordTokenizer() if config.tokenizer == "shapes" else load_clip_tokenizer(vocab_dir)
    # The released config says 65536 rows for CLIP's 49408 ids; more rows than ids is fine.
    if tokenizer.n_vocab > config.n_vocab:
        raise ValueError(
            f"the {config.tokenizer!r} tokenizer has {tokenizer.n_vocab} ids but the CLIP's n_vocab is {config.n_vocab}"
        )
    return tokenizer


def _read_merges(path: Path) -> list[tuple[str, str]]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != CLIP_BPE_SHA256:
        raise ValueError(
            f"{path} is not the CLIP BPE file GLIDE uses (sha256 {digest}, expected {CLIP_BPE_SHA256}); "
            f"replace it, e.g. with `glide download clip-bpe`"
        )
    lines = data.decode("utf-8").split("\n")[1 : _N_MERGES + 1]  # line 0 is a version header
    return [(first, second) for first, second in (line.split() for line in lines)]


def _clip_bpe_path(directory: Path) -> Path | None:
    for name in (CLIP_BPE_FILE, f"{CLIP_BPE_FILE}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def shipped_clip_vocab() -> Path | None:
    """The package's own ``bpe_simple_vocab_16e6.txt.gz``, or None where this installation lacks it."""
    return shipped.shipped_file(CLIP_BPE_FILE)


def find_clip_vocab(vocab_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt(.gz)``: ``vocab_dir``, else ``$GLIDE_VOCAB_DIR``, else the
    package's copy, else the cache.

    Raises:
        VocabNotFoundError: with the places searched and how to get the file.
    """
    if vocab_dir is None:
        vocab_dir = os.environ.get(VOCAB_ENV) or None
    if vocab_dir is not None:
        place = Path(vocab_dir).expanduser()
        found = _clip_bpe_path(place)
        reason = f"{place} has no {CLIP_BPE_FILE}(.gz)"
    else:
        place = cache_dir() / "vocab"
        found = shipped_clip_vocab() or _clip_bpe_path(place)
        reason = f"this installation lacks the package's copy ({shipped.HERE}), and {place} has no {CLIP_BPE_FILE}(.gz)"
    if found is None:
        raise VocabNotFoundError(
            f"CLIP BPE file for the noised CLIP's tokenizer not found: {reason}.\n"
            f"Put it in {place} (or in the directory named by ${VOCAB_ENV}), or run:\n"
            f"    glide download clip-bpe"
        )
    return found


@functools.lru_cache(maxsize=4)
def _tokenizer_from(path: str) -> ClipTokenizer:
    return ClipTokenizer.from_file(path)


def load_clip_tokenizer(vocab_dir: str | os.PathLike[str] | None = None) -> ClipTokenizer:
    """The CLIP tokenizer from the located BPE file (built once per file and cached)."""
    return _tokenizer_from(str(find_clip_vocab(vocab_dir).resolve()))


def clip_tokenize_batch(
    tokenizer: ClipTokenizer, prompts: Sequence[str], text_ctx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (tokens (B, text_ctx) int64, lens (B,) int64), as the official ``encode_prompts``.

    Prompts longer than ``text_ctx - 2`` tokens are truncated silently, as in the official code.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not a single string")
    rows, lens = [], []
    for prompt in prompts:
        row, n = tokenizer.padded_tokens_and_len(tokenizer.encode(prompt), text_ctx)
        rows.append(row)
        lens.append(n)
    return (torch.tensor(rows, dtype=torch.long).reshape(len(rows), text_ctx), torch.tensor(lens, dtype=torch.long))

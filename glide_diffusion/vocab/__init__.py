"""Tokenizer vocabularies shipped inside the package, so no tokenizer needs a download.

- ``encoder.json.gz``, ``vocab.bpe.gz``: GPT-2's byte-level BPE (openai/gpt-2), GLIDE's text
  tokenizer (:mod:`glide_diffusion.text.tokenizer`).
- ``bpe_simple_vocab_16e6.txt.gz``: CLIP's BPE merges (openai/CLIP), the noised CLIP's
  tokenizer (:mod:`glide_diffusion.clip.tokenizer`).

Byte-identical copies of the files glide-text2im ships in ``glide_text2im/tokenizer/``; both
are MIT-licensed, and ``LICENSE`` here carries their notices. The tokenizers check the SHA-256
of the decompressed data (the hashes in :mod:`glide_diffusion.hub.released`) before using them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FILES", "HERE", "shipped_file"]

HERE = Path(__file__).parent
FILES = ("encoder.json.gz", "vocab.bpe.gz", "bpe_simple_vocab_16e6.txt.gz")


def shipped_file(name: str) -> Path | None:
    """The shipped ``name`` (``"encoder.json"``, ``"vocab.bpe"``, ``"bpe_simple_vocab_16e6.txt"``,
    with or without ``.gz``), or None where this installation lacks it."""
    path = HERE / (name if name.endswith(".gz") else f"{name}.gz")
    return path if path.is_file() else None

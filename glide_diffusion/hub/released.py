"""Registry of the files OpenAI released for GLIDE, the vocab files it uses, and evaluation files.

Model URLs are the ones in glide-text2im's ``download.py`` (also recorded in
``shared/reference/manifests/*.json``). The released checkpoints' sizes and
hashes were never recorded (no network when the reference data was made), so
model entries carry no ``size``/``sha256``; the vocab entries do where known.
The one evaluation file, ``fid-inception``, is the standard FID network (see
:mod:`glide_diffusion.eval.inception`); it is in neither group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ReleasedFile", "RELEASED", "GROUPS", "resolve_names"]

_MODEL_BASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/dec-2021"
_GPT2_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"


@dataclass(frozen=True)
class ReleasedFile:
    """One downloadable file.

    Attributes:
        name: registry key, as typed on the command line (``glide download base``).
        file_name: name of the file on disk (and the last URL component).
        url: official download URL.
        kind: ``"model"`` (stored under ``<cache>/checkpoints``), ``"vocab"``
            (stored under ``<cache>/vocab``) or ``"eval"`` (under ``<cache>/eval``).
        description: one line for humans.
        size: expected size in bytes, when known (verified after download).
        sha256: expected SHA-256 hex digest, when known (verified after download).
    """

    name: str
    file_name: str
    url: str
    kind: str
    description: str
    size: int | None = None
    sha256: str | None = None


def _model(name: str, file_name: str, description: str) -> ReleasedFile:
    return ReleasedFile(name, file_name, f"{_MODEL_BASE_URL}/{file_name}", "model", description)


_FILES = [
    _model("base", "base.pt", "GLIDE (filtered) 64x64 text-conditional base model"),
    _model("upsample", "upsample.pt", "GLIDE (filtered) 64->256 text-conditional upsampler"),
    _model("base-inpaint", "base_inpaint.pt", "GLIDE (filtered) 64x64 inpainting model"),
    _model("upsample-inpaint", "upsample_inpaint.pt", "GLIDE (filtered) 64->256 inpainting upsampler"),
    _model("clip-image-enc", "clip_image_enc.pt", "noised CLIP image encoder (ViT-B, 64x64)"),
    _model("clip-text-enc", "clip_text_enc.pt", "noised CLIP text encoder"),
    # The upstream GPT-2 encodings. Sizes and hashes of the decompressed files
    # are those of glide-text2im's bundled copies (shared/reference/vocab/
    # SHA256SUMS.json), which are also the hashes tiktoken's "gpt2" expects.
    ReleasedFile(
        "gpt2-encoder",
        "encoder.json",
        f"{_GPT2_BASE_URL}/encoder.json",
        "vocab",
        "GPT-2 BPE token -> id table (GLIDE's text tokenizer)",
        size=1042301,
        sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    ReleasedFile(
        "gpt2-vocab",
        "vocab.bpe",
        f"{_GPT2_BASE_URL}/vocab.bpe",
        "vocab",
        "GPT-2 BPE merges (GLIDE's text tokenizer)",
        size=456318,
        sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    # This is where CLIP's repo points (the original Interacting_with_CLIP
    # notebook wgets it from here; the log there shows 1,356,917 bytes, the
    # size of glide-text2im's bundled copy). The hash of the CDN copy was not
    # checked, so only the size is verified.
    ReleasedFile(
        "clip-bpe",
        "bpe_simple_vocab_16e6.txt.gz",
        "https://openaipublic.azureedge.net/clip/bpe_simple_vocab_16e6.txt.gz",
        "vocab",
        "CLIP BPE merges (noised-CLIP text tokenizer)",
        size=1356917,
    ),
    # The FID Inception: NVIDIA's TorchScript translation of TensorFlow's
    # inception-2015-12-05.tgz graph (the network of the original TTUR FID code), as StyleGAN2-ADA,
    # StyleGAN3, EDM and clean-fid load it. Neither size nor hash could be recorded (no network
    # where this entry was written); glide_diffusion.eval.inception checks the network's output
    # width when loading.
    ReleasedFile(
        "fid-inception",
        "inception-2015-12-05.pt",
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        "eval",
        "FID Inception-v3 (TorchScript, 2048-d pool features) for glide_diffusion.eval",
    ),
]

RELEASED: dict[str, ReleasedFile] = {f.name: f for f in _FILES}
"""Every known file, by name."""

GROUPS: dict[str, tuple[str, ...]] = {
    "all": tuple(f.name for f in _FILES if f.kind == "model"),
    "vocab": tuple(f.name for f in _FILES if f.kind == "vocab"),
}
"""Names that expand to several files: ``all`` (the six model files), ``vocab``."""


def resolve_names(names: Iterable[str]) -> list[ReleasedFile]:
    """Expand names and groups into released files, in order, without duplicates.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if isinstance(names, str):
        names = [names]
    out: dict[str, ReleasedFile] = {}
    for name in names:
        if name in GROUPS:
            expanded = GROUPS[name]
        elif name in RELEASED:
            expanded = (name,)
        else:
            valid = ", ".join([*RELEASED, *GROUPS])
            raise ValueError(f"unknown released file {name!r}; valid names: {valid}")
        for n in expanded:
            out.setdefault(n, RELEASED[n])
    return list(out.values())

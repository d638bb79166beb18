"""Small models trained on the Shapes dataset, shipped inside the package.

Each bundled model is ``<name>.safetensors`` (EMA weights, stored in float16,
with the model's config in the metadata, loaded back as float32) beside a model
card ``<name>.md`` saying how it was trained and how well it does. They load by
name anywhere a checkpoint is accepted: ``load_model("shapes-base")``,
``glide sample --base shapes-base``. ``scripts/bundle_model.py`` writes them
from a training run, the card with :mod:`.card`.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
NAMES = (
    "shapes-base",
    "shapes-base-distilled",
    "shapes-upsample",
    "shapes-inpaint",
    "shapes-upsample-inpaint",
    "shapes-clip",
    "shapes-clip-rerank",
)


def bundled_path(name: str) -> Path:
    """Where the bundled model ``name`` lives inside the package (it may not be shipped yet)."""
    if name not in NAMES:
        raise ValueError(f"unknown bundled model {name!r}; known: {', '.join(NAMES)}")
    return HERE / f"{name}.safetensors"


def available() -> list[str]:
    """The bundled models this installation ships."""
    return [n for n in NAMES if bundled_path(n).is_file()]

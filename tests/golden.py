"""Loading the reference data in tests/data (see tests/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from glide_diffusion.presets import ModelConfig
from glide_diffusion.unet.config import UNetConfig
from glide_diffusion.unet.model import GlideUNet

DATA = Path(__file__).parent / "data"
UNET_VARIANTS = ["base", "upsample", "inpaint", "upsample_inpaint"]


def golden_unet(variant: str) -> tuple[GlideUNet, dict[str, torch.Tensor], dict]:
    """The official small-config model for ``variant``, its inputs/outputs and metadata."""
    meta = json.loads((DATA / "golden" / f"unet_{variant}.json").read_text())
    config = UNetConfig.from_glide_options(meta["options"], n_vocab=meta["derived"]["n_vocab"])
    model = GlideUNet(config).eval()
    model.load_state_dict(load_file(DATA / "golden" / f"unet_{variant}.weights.safetensors"))
    io = load_file(DATA / "golden" / f"unet_{variant}.io.safetensors")
    return model, io, meta


def model_kwargs(config: UNetConfig, io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    kw = {}
    if config.super_res:
        kw["low_res"] = io["low_res"]
    if config.inpaint:
        kw["inpaint_image"] = io["inpaint_image"]
        kw["inpaint_mask"] = io["inpaint_mask"]
    return kw


def manifest(name: str) -> dict:
    return json.loads((DATA / "manifests" / f"{name}.json").read_text())


__all__ = ["DATA", "UNET_VARIANTS", "golden_unet", "model_kwargs", "manifest", "ModelConfig"]

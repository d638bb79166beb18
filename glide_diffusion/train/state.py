"""Training checkpoints: atomic directories that a resumed run restores exactly.

Layout of ``out_dir/checkpoints/step_XXXXXXXX/``:

- ``model.safetensors``, ``ema.safetensors``: written by
  :func:`glide_diffusion.checkpoints.save_model`, so ``load_model`` (and
  ``glide sample --base``) read them directly; sample with the EMA weights
  (a noised CLIP's by :func:`glide_diffusion.clip.loading.save_clip`, for ``load_clip``);
- ``state.pt``: optimizer, lr scheduler, GradScaler, step, global data position
  and RNG states (per rank), only tensors and plain numbers, so it loads with
  ``torch.load(weights_only=True)``;
- ``config.json``: the resolved :class:`~glide_diffusion.train.config.TrainConfig`.

A checkpoint is built in a hidden temporary directory, every file fsynced, then
renamed into place (``os.replace``) and the parent directory fsynced: a
``step_*`` directory is always complete. Pruning renames before deleting.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from ..checkpoints import EMA_FILE, CheckpointError, read_state_dict, save_model

if TYPE_CHECKING:
    from ..clip.config import ClipConfig
    from ..clip.model import NoisedClip
    from ..unet.model import GlideUNet
from ..presets import ModelConfig

__all__ = [
    "CKPT_FILES",
    "DCP_FILES",
    "checkpoint_dir",
    "clean_stray",
    "get_rng_state",
    "list_checkpoints",
    "load_state",
    "prune",
    "read_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

CKPT_FILES = ("model.safetensors", EMA_FILE, "state.pt", "config.json")
# ckpt.format = "dcp" (train/dcp.py): shards under dcp/, the same state.pt and config.json.
DCP_FILES = ("dcp/.metadata", "state.pt", "config.json")
_STEP_DIR = re.compile(r"^step_(\d{8})$")


# --- RNG states as tensors ---------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """This process's global RNG states (torch CPU, CUDA, numpy, python ``random``) as tensors."""
    np_state = np.random.get_state(legacy=True)  # ('MT19937', uint32[624], pos, has_gauss, cached_gaussian)
    if not isinstance(np_state, tuple):
        raise TypeError("numpy's legacy RNG state is a tuple")
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_version),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": None if py_gauss is None else float(py_gauss),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    random.setstate(
        (state["python_version"], tuple(int(v) for v in state["python_internal"].tolist()), state["python_gauss"])
    )
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


# --- writing -----------------------------------------------------------------------------


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_finite(module: torch.nn.Module, name: str) -> None:
    for key, value in module.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"refusing to write a checkpoint: {name} tensor {key} is not finite")


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    model_config: ModelConfig | ClipConfig,
    config_json: str,
    state: dict[str, Any],
) -> Path:
    """Write ``step_XXXXXXXX`` atomically; returns its path. Non-finite weights are refused."""
    _check_finite(model, "model")
    _check_finite(ema, "ema")
    final = checkpoint_dir(out_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        meta = {"step": str(step)}
        if isinstance(model_config, ModelConfig):
            save_model(tmp / "model.safetensors", cast("GlideUNet", model), model_config, meta)
            save_model(tmp / EMA_FILE, cast("GlideUNet", ema), model_config, {**meta, "ema": "true"})
        else:  # a noised CLIP (its config travels with the module)
            from ..clip.loading import save_clip

            save_clip(tmp / "model.safetensors", cast("NoisedClip", model), meta)
            save_clip(tmp / EMA_FILE, cast("NoisedClip", ema), {**meta, "ema": "true"})
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(config_json, encoding="utf-8")
        for name in ("state.pt", "config.json"):
            _fsync_path(tmp / name)
        _fsync_path(tmp)
        if final.exists():  # the same step written again (a rerun): swap it out whole
            trash = root / f".trash-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash)
        os.replace(tmp, final)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and any(all((p / f).is_file() for f in files) for files in (CKPT_FILES, DCP_FILES)):
            found.append((int(m.group(1)), p))
    return sorted(found)


def clean_stray(out_dir: str | Path) -> list[Path]:
    """Remove temporary directories a killed run left behind; returns them."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    stray = [p for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    for p in stray:
        shutil.rmtree(p, ignore_errors=True)
    return stray


def prune(out_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (0 keeps all)."""
    if keep_last <= 0:
        return []
    removed = []
    for _, path in list_checkpoints(out_dir)[:-keep_last]:
        trash = path.parent / f".trash-{path.name}-{os.getpid()}"
        os.replace(path, trash)  # gone from the step_* namespace at once
        shutil.rmtree(trash)
        removed.append(path)
    return removed


# --- reading -----------------------------------------------------------------------------


def load_state(path: str | Path) -> dict[str, Any]:
    """``state.pt`` of a checkpoint directory, with ``weights_only=True``."""
    try:
        return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or not a plain-data pickle
        raise CheckpointError(f"{path}/state.pt: cannot read training state: {e}") from e


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Everything in a checkpoint directory: model and EMA state dicts, the state, the config JSON."""
    path = Path(path)
    model, model_cfg = read_state_dict(path / "model.safetensors")
    ema, _ = read_state_dict(path / EMA_FILE)
    return {
        "model": model,
        "ema": ema,
        "model_config": model_cfg,
        "state": load_state(path),
        "config_json": (path / "config.json").read_text(encoding="utf-8"),
    }

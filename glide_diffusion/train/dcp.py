"""Distributed training checkpoints (``ckpt.format = "dcp"``) with ``torch.distributed.checkpoint``.

Layout of ``out_dir/checkpoints/step_XXXXXXXX/``:

- ``dcp/``: model, EMA and optimizer state as ``torch.distributed.checkpoint`` writes them:
  one ``__R_0.distcp`` file of shards per writing rank and a ``.metadata`` index that rank 0
  writes once every rank's shards are in (keys: ``model.*``, ``ema.*``, ``optimizer.*`` by
  parameter name, so any number of processes, sharded or not, reads them back);
- ``state.pt``: lr scheduler, loss scaler, step, global data position and every rank's RNG
  states (plain data, ``torch.load(weights_only=True)``), as in the "files" format;
- ``config.json``: the resolved training config.

A step is committed atomically: every rank writes into ``.tmp-step_XXXXXXXX``, and only
after all have finished (a barrier) does rank 0 add ``state.pt`` and ``config.json``, fsync
them and rename the folder to ``step_XXXXXXXX``. A kill at any moment leaves either the
complete step or a ``.tmp-`` folder that the next run deletes; ``list_checkpoints`` sees
only complete steps. With ``ckpt.async_save`` the shards are written by a background thread
(``dcp.async_save``, on its own gloo group) and the commit waits for it at the next
checkpoint or at the end of the run, so training does not wait for the disk.

``out_dir`` must be one file system that every node sees (NFS, Lustre, a cloud mount): each
rank writes its own file there. :func:`export_weights` consolidates a checkpoint's EMA (or
model) weights into the project's single ``.safetensors`` file (``glide export``).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..checkpoints import CheckpointError
from . import dist as tdist

__all__ = ["DCP_DIR", "PendingSave", "export_weights", "is_dcp_checkpoint", "load_dcp", "save_dcp"]

DCP_DIR = "dcp"  # state.DCP_FILES lists what a complete step holds


def is_dcp_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_finite(state: dict[str, Any]) -> None:
    """Refuse to write non-finite weights: each rank checks its shards, every rank raises."""
    from .fsdp import local

    bad = None
    for group in ("model", "ema"):
        for key, value in state[group].items():
            t = local([value])[0]
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad = f"{group} tensor {key}"
                break
    bad = next((b for b in tdist.all_gather_objects(bad) if b), None)
    if bad:
        raise CheckpointError(f"refusing to write a checkpoint: {bad} is not finite")


@dataclass
class PendingSave:
    """A checkpoint whose shards are being written; :meth:`commit` makes it a step."""

    tmp: Path
    final: Path
    state: dict[str, Any] | None  # state.pt (rank 0 only)
    config_json: str
    future: Future | None  # async_save's; None when written synchronously

    def commit(self) -> Path:
        """Wait for every rank's shards, then (rank 0) add the state and rename into place."""
        if self.future is not None:
            self.future.result()
        tdist.barrier()  # every rank's shards (and rank 0's .metadata) are on disk
        if self.state is not None:  # rank 0
            self._write_state(self.state)
            self._publish()
        tdist.barrier()
        return self.final

    def _write_state(self, state: dict[str, Any]) -> None:
        """state.pt and config.json beside the shards, everything flushed to disk."""
        torch.save(state, self.tmp / "state.pt")
        (self.tmp / "config.json").write_text(self.config_json, encoding="utf-8")
        for name in ("state.pt", "config.json", f"{DCP_DIR}/.metadata"):
            _fsync(self.tmp / name)
        _fsync(self.tmp)

    def _publish(self) -> None:
        """Rename the written folder into place: from here on the step is a checkpoint."""
        if self.final.exists():  # the same step written again (a rerun): swap it out whole
            trash = self.final.parent / f".trash-{self.final.name}-{os.getpid()}"
            os.replace(self.final, trash)
            shutil.rmtree(trash)
        os.replace(self.tmp, self.final)
        _fsync(self.final.parent)


def save_dcp(
    final: Path,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any] | None,
    config_json: str,
    *,
    async_group=None,
    use_async: bool = False,
) -> PendingSave:
    """Start writing a checkpoint of ``model``, ``ema`` and ``optimizer`` for step folder ``final``.

    Every process calls it (a collective). ``state`` is rank 0's ``state.pt`` content (None on
    the other ranks).
    Returns the :class:`PendingSave`; call its ``commit()`` (every process) to finish: at once
    for a synchronous save, later for ``use_async``.
    """
    tensors = {
        "model": get_model_state_dict(model),
        "ema": get_model_state_dict(ema),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    _check_finite(tensors)
    tmp = final.parent / f".tmp-{final.name}"
    if state is not None:  # rank 0
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / DCP_DIR).mkdir(parents=True)
    tdist.barrier()
    where = tmp / DCP_DIR
    if use_async:
        future = dcp.async_save(tensors, checkpoint_id=where, process_group=async_group)
        if not isinstance(future, Future):  # AsyncSaveResponse (a custom stager): the upload's
            future = future.upload_completion
        return PendingSave(tmp, final, state, config_json, future)
    if _distributed():
        dcp.save(tensors, checkpoint_id=where)
    else:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(tensors, checkpoint_id=where, no_dist=True)
    return PendingSave(tmp, final, state, config_json, None)


def load_dcp(
    path: str | os.PathLike, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load a DCP checkpoint into ``model``, ``ema`` and ``optimizer`` (sharded or not, any
    number of processes: DCP reshards); returns ``state.pt``. Every process calls it."""
    path = Path(path)
    tensors: dict[str, Any] = {
        "model": get_model_state_dict(model),
        "ema": get_model_state_dict(ema),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    try:
        if _distributed():
            dcp.load(tensors, checkpoint_id=path / DCP_DIR)
        else:
            _quiet_load(tensors, path / DCP_DIR)
    except Exception as e:  # a missing key, a truncated shard file
        raise CheckpointError(f"{path}: cannot read the distributed checkpoint: {e}") from e
    set_model_state_dict(model, tensors["model"])
    set_model_state_dict(ema, tensors["ema"])
    set_optimizer_state_dict(model, optimizer, tensors["optimizer"])
    from .state import load_state

    return load_state(path)


def _quiet_load(tensors: dict[str, Any], where: Path) -> None:
    """``dcp.load`` in one process, without its warning that it assumes one process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(tensors, checkpoint_id=where, no_dist=True)


def _newest(path: Path) -> Path:
    """A checkpoint folder itself, or a run folder's newest complete checkpoint."""
    from .state import list_checkpoints

    if (path / "config.json").is_file() and (path / "state.pt").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path}: neither a training checkpoint (step_N) nor a run folder with one")
    return found[-1][1]


def export_weights(source: str | os.PathLike, out: str | os.PathLike, weights: str = "ema") -> Path:
    """Write one checkpoint's ``weights`` ("ema", the ones to sample with, or "model") to ``out``
    in the project's ``.safetensors`` format (:func:`glide_diffusion.checkpoints.save_model`),
    which ``load_model`` and every sampling command read.

    ``source`` is a checkpoint folder (either format) or a run folder (its newest checkpoint).
    Runs in one process, on the CPU: the full weights must fit in host memory (4 bytes per
    parameter: 14 GB for glide-3.5b); nothing else of the checkpoint is read.
    """
    from ..checkpoints import EMA_FILE, new_unet, read_state_dict, save_model
    from .config import config_from_dict

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    path = _newest(Path(source))
    config = config_from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
    if config.clip is not None:
        raise CheckpointError(f"{path} is a noised CLIP's checkpoint: its {EMA_FILE} is the file to use")
    step = str(int(torch.load(path / "state.pt", weights_only=True)["step"]))
    if is_dcp_checkpoint(path):
        with torch.device("meta"):
            model = new_unet(config.model)
        state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
        try:
            _quiet_load({weights: state}, path / DCP_DIR)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read the distributed checkpoint: {e}") from e
    else:
        state, _ = read_state_dict(path / (EMA_FILE if weights == "ema" else "model.safetensors"))
        with torch.device("meta"):
            model = new_unet(config.model)
    model.load_state_dict(state, strict=True, assign=True)
    meta = {"step": step, **({"ema": "true"} if weights == "ema" else {})}
    return save_model(out, model, config.model, meta)

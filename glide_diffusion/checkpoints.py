"""Saving and loading model weights, safely.

Two formats:

- the project's own: one ``.safetensors`` file whose metadata holds the
  :class:`ModelConfig` as JSON (``glide_config``), so loading rebuilds the model;
- the released GLIDE ``.pt`` files (pickled state dicts), read with
  ``torch.load(weights_only=True)``: a pickle that would run code is refused.
  Loaded by name from the cache, one is converted once into a ``.safetensors``
  copy beside it (:func:`cached_safetensors`), which later loads memory-map.

``load_model(dtype="bf16")`` casts each tensor as it is read, so no float32 copy
of the whole model is ever held (docs/results.md, "Peak memory").

A checkpoint is checked against the model (missing keys, unexpected keys,
shapes) before any weight is copied, so a bad file never leaves a half-loaded
model. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .precision import DTYPES
from .presets import PRESETS, RELEASED_PRESETS, ModelConfig, get_preset
from .unet.model import GlideUNet, keeps_full_precision

FORMAT = "glide-diffusion/1"
# The EMA weights in a training checkpoint directory (train/state.py writes them): what samples.
EMA_FILE = "ema.safetensors"
# Elements of a safetensors file mapped at once while reading it (256 MiB of float32): each
# chunk's mapping is closed before the next, so the file's pages never all count as resident
# beside the copies made from them.
MAP_CHUNK_ELEMENTS = 64 << 20
# A conversion's temporary file untouched this long was left by a killed process: removed.
STALE_TMP_S = 600.0

# name, tensor -> the dtype to hold it in
DtypeFn = Callable[[str, torch.Tensor], torch.dtype]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or does not fit the model."""


def save_model(
    path: str | os.PathLike,
    model: GlideUNet,
    config: ModelConfig | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model``'s weights and config to ``path`` (.safetensors), atomically."""
    path = Path(path)
    config = config or ModelConfig(unet=model.config)
    meta = {"format": FORMAT, "glide_config": config.to_json(), **(metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def _umask() -> int:
    """The process umask: read from /proc on Linux (no window with a changed umask), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write, *, overwrite: bool = True) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; no partial file is ever left at ``path``.
    ``overwrite=False``: raise FileExistsError rather than replace a file at ``path`` (atomically:
    the temporary file is hard-linked into place, which fails where a file exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_state_dict(
    path: str | os.PathLike, dtype_for: DtypeFn | None = None
) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    """Read a state dict (and our config, when the file has one) without running any code.

    ``dtype_for(name, tensor)``: the dtype each tensor is cast to as it is read (default: its own).
    A ``.safetensors`` file is memory-mapped a chunk at once and copied out, so neither the
    whole file's pages nor a second copy of the model is ever resident.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, dtype_for)
    state = _read_pickle(path)
    if dtype_for is not None:
        for k in list(state):  # one at a time: each float32 original is freed as its cast is made
            state[k] = state[k].to(dtype_for(k, state[k]))
    return state, None


def _copy(t: torch.Tensor, name: str, dtype_for: DtypeFn | None) -> torch.Tensor:
    """``t`` copied off the file mapping, in ``dtype_for(name, t)``."""
    return t.to(dtype_for(name, t) if dtype_for else t.dtype, copy=True)


def _read_safetensors(path: Path, dtype_for: DtypeFn | None) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            sizes = {k: math.prod(f.get_slice(k).get_shape()) for k in f.keys()}
        tensors = {}
        for keys in _chunks(sizes, MAP_CHUNK_ELEMENTS):
            with safe_open(path, framework="pt") as f:  # mapped for this chunk only
                tensors.update({k: _copy(f.get_tensor(k), k, dtype_for) for k in keys})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    config = ModelConfig.from_json(meta["glide_config"]) if "glide_config" in meta else None
    return tensors, config


def _chunks(sizes: Mapping[str, int], limit: int) -> list[list[str]]:
    """The keys of ``sizes`` in groups of at most ``limit`` elements (a larger tensor alone)."""
    groups: list[list[str]] = [[]]
    total = 0
    for k, n in sizes.items():
        if groups[-1] and total + n > limit:
            groups.append([])
            total = 0
        groups[-1].append(k)
        total += n
    return groups


def cached_safetensors(pt: Path, config: ModelConfig) -> Path:
    """The ``.safetensors`` copy of the released ``pt`` beside it in the cache, written on first use.

    The copy records the ``.pt``'s size and mtime; one that is truncated, unreadable or made from
    another ``.pt`` (downloaded again) is written again. It is written to a temporary name and
    renamed, so a killed conversion never leaves a partial copy. Where the cache cannot be
    written, the ``.pt`` itself is returned (with a warning).
    """
    out = pt.with_suffix(".safetensors")
    st = pt.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    if _converted(out, stamp):
        return out
    _remove_stale_tmp(out)
    state = _read_pickle(pt)
    meta = {"format": FORMAT, "glide_config": config.to_json(), "source": pt.name, "source_stamp": stamp}
    tensors = {k: v.contiguous() for k, v in state.items()}
    try:
        atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=meta))
    except OSError as e:
        warnings.warn(f"could not write {out} ({e}); reading {pt} directly, holding it whole while loading")
        return pt
    return out


def _converted(out: Path, stamp: str) -> bool:
    """Whether ``out`` is a complete conversion of the ``.pt`` whose stamp is ``stamp``."""
    try:
        with safe_open(out, framework="pt") as f:  # checks the header covers the file: a truncated one fails
            return (f.metadata() or {}).get("source_stamp") == stamp
    except (SafetensorError, OSError, ValueError):
        return False


def _remove_stale_tmp(out: Path) -> None:
    """Delete temporary files of ``out`` left by killed conversions (a recent one may be another process's)."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_TMP_S:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol says nothing about the file
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False: wrong for a corrupt or untrusted file, so keep only the cause.
        cause = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), None)
        raise CheckpointError(
            f"{path}: refused to load: not a plain PyTorch weights file (corrupt, truncated, or its pickle "
            f"asks to build objects or run code, which is never done here)" + (f"; {cause}" if cause else "")
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # torch.load on arbitrary bytes raises KeyError, IndexError, RuntimeError, ...
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return obj


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointError("\n".join(lines))


def load_weights(model: GlideUNet, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> GlideUNet:
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)
    return model


def build_model(config: ModelConfig | str, *, device: torch.device | str = "cpu") -> GlideUNet:
    """A randomly initialised model for a config or preset name."""
    if isinstance(config, str):
        config = get_preset(config)
    with torch.device(device):
        return new_unet(config)


def new_unet(config: ModelConfig) -> GlideUNet:
    """``GlideUNet(config.unet)``, given the noise schedule when it predicts v."""
    return GlideUNet(config.unet, new_unet_schedule(config) if config.unet.prediction == "v" else None)


def new_unet_schedule(config: ModelConfig) -> torch.Tensor:
    """The training schedule's alphas_cumprod (float32, CPU) a v-predicting UNet converts with."""
    from .diffusion.schedule import make_schedule

    abar = make_schedule(config.diffusion.noise_schedule, config.diffusion.steps).alphas_cumprod
    return torch.tensor(abar, dtype=torch.float64, device="cpu").float()


def load_model(
    source: str | os.PathLike,
    *,
    config: ModelConfig | str | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    dtype: str = "fp32",
) -> tuple[GlideUNet, ModelConfig]:
    """Build a model and load its weights, in eval mode, held in ``dtype`` ("fp32", "bf16", "fp16").

    ``source`` is a released checkpoint's name (``"base"``, ``"upsample"``,
    ``"base-inpaint"``, ``"upsample-inpaint"``: read from the download cache,
    see ``glide download``), a bundled Shapes model's name (``"shapes-base"``, ...),
    a ``.safetensors`` file written by :func:`save_model`, a training checkpoint's
    directory (``runs/X/checkpoints/step_N``: its EMA weights, the ones to sample with),
    or a ``.pt`` state dict (then ``config``, a :class:`ModelConfig` or preset
    name, says what to build; a released file name such as ``base.pt`` implies it).
    A released checkpoint is read from its ``.safetensors`` copy in the cache
    (:func:`cached_safetensors`, made on its first load).

    In bf16 or fp16 the weights are cast as they are read, except the few the model reads in
    full precision (:func:`~glide_diffusion.unet.model.keeps_full_precision`); such a model
    runs under autocast in that dtype, whose convolutions and linear layers round float32
    weights to the same values.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path, implied = _resolve(source, cache_dir)
    if str(source) in RELEASED_PRESETS and implied is not None:
        path = cached_safetensors(path, implied)
    state, saved = read_state_dict(path, _dtype_for(DTYPES[dtype]))
    if isinstance(config, str):
        config = get_preset(config)
    config = config or saved or implied
    if config is None:
        raise CheckpointError(
            f"{path}: the file does not record its model configuration; name its preset "
            f"({', '.join(sorted(PRESETS))}): --config PRESET for the base model or --up-config PRESET for "
            f"the upsampler on the command line, config= in Python"
        )
    with torch.device("meta"):
        model = new_unet(config)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True, assign=True)
    if config.unet.prediction == "v":  # the non-persistent schedule buffer, built on "meta" above
        model.register_buffer("v_alphas_cumprod", new_unet_schedule(config), persistent=False)
    model = model.to(device=device).eval()
    return model, config


def _dtype_for(held: torch.dtype) -> DtypeFn:
    """Floating tensors in ``held`` (float32 where the model needs it), others as they are."""

    def dtype_for(name: str, t: torch.Tensor) -> torch.dtype:
        if not t.is_floating_point():
            return t.dtype
        return torch.float32 if keeps_full_precision(name, t) else held

    return dtype_for


def _resolve(source: str | os.PathLike, cache_dir) -> tuple[Path, ModelConfig | None]:
    from .bundled import NAMES as BUNDLED
    from .bundled import bundled_path

    name = str(source)
    if name in BUNDLED:
        path = bundled_path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"the bundled model {name!r} is not part of this installation ({path}); reinstall "
                f"glide-diffusion, or use the released GLIDE weights (e.g. `glide sample --models glide`)"
            )
        return path, None
    if name in RELEASED_PRESETS:
        from .hub.cache import find_released

        return find_released(name, cache_dir), get_preset(name)
    path = Path(source)
    if path.is_dir():
        if not (path / EMA_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is a directory without {EMA_FILE}: pass a model file, "
                "or a training checkpoint directory (runs/X/checkpoints/step_N)"
            )
        return path / EMA_FILE, None
    stem = path.name.removesuffix(".pt").replace("_", "-")
    implied = get_preset(stem) if path.suffix == ".pt" and stem in RELEASED_PRESETS else None
    return path, implied

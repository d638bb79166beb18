"""Saving and loading model weights, safely.

Two formats:

- the project's own: one ``.safetensors`` file whose metadata holds the
  :class:`ModelConfig` as JSON (``glide_config``), so loading rebuilds the model;
- the released GLIDE ``.pt`` files (pickled state dicts), read with
  ``torch.load(weights_only=True)``: a pickle that would run code is refused.

A checkpoint is checked against the model (missing keys, unexpected keys,
shapes) before any weight is copied, so a bad file never leaves a half-loaded
model. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .presets import PRESETS, RELEASED_PRESETS, ModelConfig, get_preset
from .unet.model import GlideUNet

FORMAT = "glide-diffusion/1"
# The EMA weights in a training checkpoint directory (train/state.py writes them): what samples.
EMA_FILE = "ema.safetensors"


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


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    """Read a state dict (and our config, when the file has one) without running any code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_pickle(path), None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    config = ModelConfig.from_json(meta["glide_config"]) if "glide_config" in meta else None
    return tensors, config


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
) -> tuple[GlideUNet, ModelConfig]:
    """Build a model and load its weights, in eval mode.

    ``source`` is a released checkpoint's name (``"base"``, ``"upsample"``,
    ``"base-inpaint"``, ``"upsample-inpaint"``: read from the download cache,
    see ``glide download``), a bundled Shapes model's name (``"shapes-base"``, ...),
    a ``.safetensors`` file written by :func:`save_model`, a training checkpoint's
    directory (``runs/X/checkpoints/step_N``: its EMA weights, the ones to sample with),
    or a ``.pt`` state dict (then ``config``, a :class:`ModelConfig` or preset
    name, says what to build; a released file name such as ``base.pt`` implies it).
    """
    path, implied = _resolve(source, cache_dir)
    state, saved = read_state_dict(path)
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
    model = model.to(device=device, dtype=torch.float32).eval()
    return model, config


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

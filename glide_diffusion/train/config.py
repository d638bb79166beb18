"""Training configuration: frozen dataclasses, loaded from TOML with dotted overrides.

A config file is a TOML table whose keys are :class:`TrainConfig`'s fields;
sections (``[optim]``, ``[data]``, ...) are the nested dataclasses. The model is
a preset name (``model = "tiny"``) or a table (``[model]`` with an optional
``preset`` to start from, then ``[model.unet]``, ``[model.unet.text]``,
``[model.diffusion]`` overriding :class:`~glide_diffusion.presets.ModelConfig`
fields). Command-line overrides use the same dotted paths::

    --set optim.lr=1e-4 --set data.size=100 --set model.unet.dropout=0.1

Overrides are merged into the file's values first, then everything is checked once,
so the order of ``--set`` items matters only where two set the same key. Every value
is checked against the field's type; an unknown key names the valid
ones. The resolved config is plain JSON (:meth:`TrainConfig.to_dict`), saved in
the run folder and in every checkpoint, and :func:`config_from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..clip.config import ClipConfig, get_clip_preset
from ..data.factory import KINDS as DATA_KINDS
from ..data.factory import DataConfig
from ..presets import ModelConfig, get_preset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CheckpointSection",
    "CondConfig",
    "ConfigError",
    "DistConfig",
    "LogConfig",
    "OptimConfig",
    "SampleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "merge_overrides",
    "parse_override",
]

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
MASK_KINDS = ("rectangle", "strokes", "border", "mixed")


class ConfigError(ValueError):
    """A config file or override that does not fit :class:`TrainConfig`."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, then constant (or cosine) learning rate."""

    lr: float = 1e-4  # guided-diffusion TrainLoop default (GLIDE's training code builds on it)
    weight_decay: float = 0.0  # guided-diffusion default
    betas: tuple[float, float] = (0.9, 0.999)  # torch/guided-diffusion AdamW default
    eps: float = 1e-8  # torch AdamW default
    warmup_steps: int = 0  # guided-diffusion has none; a few hundred helps from scratch
    schedule: str = "constant"  # guided-diffusion keeps lr constant; "cosine" decays to min_lr_ratio*lr
    min_lr_ratio: float = 0.1  # cosine floor; common choice (nanoGPT)
    grad_clip: float = 1.0  # global-norm clipping; 0 = off (guided-diffusion has none; 1.0 as DiT/nanoGPT)

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        _check(all(0 <= b < 1 for b in self.betas), "optim.betas must lie in [0, 1)")
        _check(self.eps > 0, "optim.eps must be > 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        _check(self.schedule in LR_SCHEDULES, f"optim.schedule must be one of {LR_SCHEDULES}")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio must lie in [0, 1]")
        _check(self.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 = off)")


@dataclass(frozen=True)
class CondConfig:
    """How the conditioning inputs are made for each task."""

    cfg_dropout: float = 0.2  # GLIDE §4.2: 20% of captions replaced by the empty one
    low_res_size: int = 0  # upsamplers: 0 = image_size // 4 (GLIDE: 64 -> 256)
    corrupt_low_res: bool = False  # GLIDE describes no corruption; CDM-style blur/noise when on
    low_res_blur: tuple[float, float] = (0.4, 0.6)  # blur sigma range (train.augment default)
    low_res_noise_std: float = 0.0  # Gaussian noise added to the low-res input
    mask_kinds: tuple[str, ...] = ("mixed",)  # inpainting: GLIDE §4.3 erases random regions
    # Upsamplers: train on random crop_size x crop_size crops of the high-res image and the
    # matching low-res region (0 = whole images). The UNet is convolutional (its attention is
    # global at any size), so it samples at full size; crops make each step cheaper.
    crop_size: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.cfg_dropout <= 1, "cond.cfg_dropout must lie in [0, 1]")
        _check(self.low_res_size >= 0, "cond.low_res_size must be >= 0")
        _check(self.low_res_noise_std >= 0, "cond.low_res_noise_std must be >= 0")
        _check(self.crop_size >= 0, "cond.crop_size must be >= 0")
        bad = [k for k in self.mask_kinds if k not in MASK_KINDS]
        _check(not bad and bool(self.mask_kinds), f"cond.mask_kinds must be a non-empty list of {MASK_KINDS}")


@dataclass(frozen=True)
class LossConfig:
    """The diffusion loss: GLIDE's eps-MSE + VB, with uniform timesteps."""

    # 0 = GLIDE's plain eps-MSE. gamma > 0 weights each sample's eps-MSE by
    # min(SNR, gamma) / SNR (Min-SNR, Hang et al. 2023): noisy steps keep weight 1, nearly
    # clean ones count less. For short runs: it shifts the gradient toward the noisy steps
    # where the caption matters (see configs/base-shapes.toml).
    min_snr_gamma: float = 0.0
    # v-prediction models only. 0 = the plain v-MSE, i.e. the eps-MSE weighted by 1/abar, which
    # reaches thousands at high t and so dominates the gradient. W > 0 caps that weight at W:
    # min(1/abar, W), still far above the eps-MSE's 1 where the caption decides the image.
    v_weight_max: float = 0.0
    # Noised CLIP on Shapes captions only. N > 0 adds, for each image, N negatives to its row of
    # the contrastive loss: its own caption with one shape word replaced by another shape. In a
    # batch of random captions two rarely differ only in the shape, so without them colour and
    # background separate the batch and the shape is barely learned (configs/clip-shapes.toml).
    clip_shape_negatives: int = 0
    # Noised CLIP on Shapes captions only. N > 0 adds, for each two-object caption, up to N of its
    # binding swaps (colours swapped between the objects, shapes swapped, relation reversed:
    # data.shapes_captions.binding_swaps), which a bag of words cannot tell from the caption.
    clip_binding_negatives: int = 0

    def __post_init__(self) -> None:
        _check(self.min_snr_gamma >= 0, "loss.min_snr_gamma must be >= 0 (0 = off)")
        _check(
            0 <= self.clip_shape_negatives <= 4,
            "loss.clip_shape_negatives must be in 0..4 (0 = off; Shapes has 5 shapes)",
        )
        _check(self.v_weight_max == 0 or self.v_weight_max >= 1, "loss.v_weight_max must be 0 (off) or >= 1")
        _check(
            0 <= self.clip_binding_negatives <= 3,
            "loss.clip_binding_negatives must be in 0..3 (0 = off; a caption has at most 3 binding swaps)",
        )


@dataclass(frozen=True)
class SampleConfig:
    """Periodic sample grids from the EMA model (rows: seeds, columns: prompts)."""

    every: int = 0  # steps between grids; 0 = never
    prompts: tuple[str, ...] = ("a red circle", "a blue square", "a green triangle", "")
    seeds: tuple[int, ...] = (0, 1)
    steps: str = "50"  # respacing; the pipeline samples with "100"
    sampler: str = "ddpm"
    guidance_scale: float = 3.0  # the pipeline's default

    def __post_init__(self) -> None:
        _check(self.every >= 0, "sample.every must be >= 0")
        _check(len(self.prompts) > 0 and len(self.seeds) > 0, "sample.prompts and sample.seeds must be non-empty")
        _check(self.sampler in ("ddpm", "ddim"), "sample.sampler must be ddpm or ddim")


@dataclass(frozen=True)
class LogConfig:
    every: int = 10  # steps between metrics lines
    metrics: tuple[str, ...] = ("jsonl", "tensorboard")  # tensorboard only if it imports
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        _check(self.every > 0, "log.every must be > 0")
        _check(all(m in ("jsonl", "tensorboard") for m in self.metrics), "log.metrics: jsonl, tensorboard")


CKPT_FORMATS = ("auto", "files", "dcp")
DIST_STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class CheckpointSection:
    every: int = 1000  # steps between checkpoints (and one at the end)
    keep_last: int = 3  # newest N kept; 0 = keep all
    # "files": model/EMA .safetensors + state.pt, written by rank 0 (train/state.py). "dcp":
    # torch.distributed.checkpoint, every rank writing its own shards (train/dcp.py); any
    # number of processes resumes it. "auto": dcp under dist.strategy = "fsdp", else files.
    format: str = "auto"
    # dcp only: write in a background thread (torch.distributed.checkpoint.async_save) while
    # training goes on; the step is committed (renamed into place) once every rank has written.
    async_save: bool = False

    def __post_init__(self) -> None:
        _check(self.every > 0, "ckpt.every must be > 0")
        _check(self.keep_last >= 0, "ckpt.keep_last must be >= 0")
        _check(self.format in CKPT_FORMATS, f"ckpt.format must be one of {CKPT_FORMATS}, got {self.format!r}")


@dataclass(frozen=True)
class DistConfig:
    """How the model is spread over the processes torchrun starts."""

    # "ddp": a full copy of weights, gradients, optimizer state and EMA per process (DDP).
    # "fsdp": all four sharded over the processes with FSDP2 (torch.distributed.fsdp.fully_shard),
    # one unit per ResBlock, attention block and text transformer block (train/fsdp.py): the
    # paper-scale models (glide-3.5b) do not fit a GPU otherwise. `glide train --plan` compares.
    strategy: str = "ddp"
    # fsdp: free each unit's gathered weights after its forward (ZeRO-3; False keeps them until
    # the backward, ZeRO-2-like: less communication, more memory).
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        _check(
            self.strategy in DIST_STRATEGIES, f"dist.strategy must be one of {DIST_STRATEGIES}, got {self.strategy!r}"
        )


@dataclass(frozen=True)
class DistillConfig:
    """Guided distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models"):
    ``model`` (with ``model.unet.guidance_embed``) learns in one pass what ``teacher`` gives at a
    guidance scale drawn uniformly from [guidance_min, guidance_max].

    ``steps = 0``, stage one: the teacher's classifier-free guided output (two passes, or one
    for a distilled teacher) at every timestep. ``steps = N``, stage two (progressive
    distillation, Salimans & Ho 2022): one DDIM step of the student on the "trailingN" grid
    matches two of the teacher on "trailing2N"; halve N each round (16 -> 8 -> 4).
    """

    teacher: str = ""  # a checkpoint path or bundled name
    steps: int = 0
    guidance_min: float = 1.0
    guidance_max: float = 8.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; saved (resolved) with every checkpoint."""

    model: ModelConfig = field(default_factory=lambda: get_preset("tiny"))  # preset name or table
    # A noised CLIP instead of a diffusion model (GLIDE §2.4): a preset name ("shapes") or a
    # table with an optional ``preset`` and ClipConfig fields. None: train ``model``.
    clip: ClipConfig | None = None
    distill: DistillConfig | None = None  # guided distillation of a teacher into ``model``
    init_from: str | None = None  # None: random init; a checkpoint path or released name ("base", ...)
    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is available, else cpu
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process and micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler, CUDA)
    activation_checkpointing: bool = False  # recompute UNet stages in backward
    # torch.compile (inductor) the training model: fused kernels, compiled on the first steps
    # (minutes on a small CPU); sampling, EMA and checkpoints use the uncompiled module.
    # Where the backend cannot build kernels (no C++ compiler) the run goes on eagerly.
    compile: bool = False
    ema_decay: float = 0.9999  # guided-diffusion/GLIDE ema_rate; sampling uses the EMA weights
    ema_warmup: bool = False  # decay min(ema_decay, (1+n)/(10+n)): useful for short runs
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cond: CondConfig = field(default_factory=CondConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ckpt: CheckpointSection = field(default_factory=CheckpointSection)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "max_steps must be >= 1")
        _check(self.batch_size > 0, "batch_size must be > 0")
        _check(self.grad_accum > 0, "grad_accum must be > 0")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(0 <= self.ema_decay <= 1, "ema_decay must lie in [0, 1]")
        _check(bool(self.out_dir), "out_dir must be set")
        d = self.data
        _check(d.kind in DATA_KINDS, f"data.kind must be one of {DATA_KINDS}, got {d.kind!r}")
        _check(d.size is None or d.size > 0, "data.size must be > 0")
        _check(d.num_workers >= 0, "data.num_workers must be >= 0")
        if self.dist.strategy == "fsdp":
            _check(self.clip is None, 'dist.strategy = "fsdp" shards diffusion models; train a noised CLIP with ddp')
            _check(
                self.ckpt.format != "files",
                'dist.strategy = "fsdp" writes sharded checkpoints: ckpt.format must be "dcp" (or "auto")',
            )
        _check(
            not self.ckpt.async_save or self.checkpoint_format == "dcp",
            'ckpt.async_save needs ckpt.format = "dcp" (the default under dist.strategy = "fsdp")',
        )
        if self.clip is not None:
            _check(not self.activation_checkpointing, "activation_checkpointing is for diffusion models, not clip")
            _check(self.precision != "fp16", "clip training runs in fp32 or bf16")
        else:
            _check(not self.loss.clip_shape_negatives, "loss.clip_shape_negatives is for noised CLIP training")
            _check(not self.loss.clip_binding_negatives, "loss.clip_binding_negatives is for noised CLIP training")
        crop, unet = self.cond.crop_size, self.model.unet
        if self.distill is not None:
            dc = self.distill
            _check(self.clip is None, "[distill] trains a diffusion model; remove [clip]")
            _check(bool(dc.teacher), "distill.teacher must name the teacher's checkpoint")
            _check(unet.guidance_embed, "distill: the student needs model.unet.guidance_embed = true")
            _check(self.model.kind == "base", f"distill: base models only, not {self.model.kind}")
            _check(dc.steps >= 0, f"distill.steps must be >= 0 (0: stage one), got {dc.steps}")
            _check(
                2 * dc.steps <= self.model.diffusion.steps,
                f"distill.steps: 2 x {dc.steps} teacher steps exceed the process's {self.model.diffusion.steps}",
            )
            _check(
                0 <= dc.guidance_min <= dc.guidance_max <= 10,
                f"distill: need 0 <= guidance_min <= guidance_max <= 10, got {dc.guidance_min}, {dc.guidance_max}",
            )
        if self.loss.v_weight_max:
            _check(
                unet.prediction == "v" and not self.loss.min_snr_gamma,
                'loss.v_weight_max caps the v-MSE weight: for model.unet.prediction = "v" without min_snr_gamma',
            )
        if crop:
            _check(unet.super_res, "cond.crop_size is for upsamplers (model.unet.super_res)")
            factor = unet.image_size // self.low_res_size
            levels = 2 ** (len(unet.channel_mult) - 1)
            _check(
                crop <= unet.image_size and crop % factor == 0 and crop % levels == 0,
                f"cond.crop_size must be at most image_size ({unet.image_size}) and a multiple of "
                f"the upsampling factor ({factor}) and of {levels} (the UNet's downsampling)",
            )

    @property
    def task(self) -> str:
        """base | upsample | inpaint | upsample-inpaint (from the model's config), clip or distill."""
        if self.distill is not None:
            return "distill"
        return "clip" if self.clip is not None else self.model.kind

    @property
    def checkpoint_format(self) -> str:
        """files | dcp: ``ckpt.format`` with "auto" resolved by ``dist.strategy``."""
        if self.ckpt.format != "auto":
            return self.ckpt.format
        return "dcp" if self.dist.strategy == "fsdp" else "files"

    @property
    def image_size(self) -> int:
        """The resolution of the training images."""
        return self.clip.image_size if self.clip is not None else self.model.unet.image_size

    @property
    def low_res_size(self) -> int:
        return self.cond.low_res_size or self.model.unet.image_size // 4

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# --- building from dicts, with type checking ---------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, current: Any, path: str) -> Any:
    """``value`` checked (and converted: lists -> tuples, ints -> floats) against ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, current, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of {hint}")
    if hint is ModelConfig:
        return _preset_config(value, current, path, ModelConfig, get_preset)
    if hint is ClipConfig:
        return _preset_config(value, current, path, ClipConfig, get_clip_preset)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table of {hint.__name__} fields, got {value!r}")
        return _apply(current if isinstance(current, hint) else hint(), value, f"{path}.")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], None, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], None, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, None, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    else:  # pragma: no cover - a field type this parser does not know
        raise ConfigError(f"{path}: unsupported field type {hint}")
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{path}: expected {name}, got {type(value).__name__} {value!r}")


def _apply(obj: Any, values: Mapping[str, Any], prefix: str = "") -> Any:
    """A copy of dataclass ``obj`` with ``values`` (a nested dict) applied, type-checked."""
    cls = type(obj)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    changes = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            where = f"in [{prefix.rstrip('.')}]" if prefix else "at the top level"
            raise ConfigError(f"unknown key {path!r} {where}; valid keys: {', '.join(names)}")
        changes[key] = _coerce(value, hints[key], getattr(obj, key), path)
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _preset_config(value: Any, current: Any, path: str, cls: type, presets: Callable[[str], Any]) -> Any:
    """A preset name, or a table with an optional ``preset`` and ``cls`` fields (the model, the CLIP)."""
    try:
        if isinstance(value, str):
            return presets(value)
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a preset name or a table, got {value!r}")
        value = dict(value)
        preset = value.pop("preset", None)
        base = presets(preset) if preset is not None else (current if isinstance(current, cls) else cls())
        return _apply(base, value, f"{path}.")
    except ConfigError:
        raise
    except ValueError as e:  # an unknown preset name, or a config check
        raise ConfigError(f"{path}: {e}") from None


# The [debug] table of configs saved before fault injection moved to the tests (tests/faults.py).
_LEGACY_DEBUG = {"nan_at_step": -1, "step_sleep": 0.0, "ckpt_sleep": 0.0}


def _drop_legacy(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """``values`` without the old ``debug`` table (saved checkpoints hold its defaults); warns if it set any."""
    if "debug" not in values:
        return values
    debug = values["debug"]
    if not isinstance(debug, Mapping) or any(_LEGACY_DEBUG.get(k, object()) != v for k, v in debug.items()):
        warnings.warn("the [debug] config table is gone (fault injection for tests); ignoring it", FutureWarning)
    return {k: v for k, v in values.items() if k != "debug"}


def config_from_dict(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a nested dict (a TOML file, or a saved ``config.json``)."""
    return _apply(base or TrainConfig(), _drop_legacy(values))


def parse_override(item: str, what: str = "override") -> dict[str, Any]:
    """``"optim.lr=1e-4"`` -> ``{"optim": {"lr": 1e-4}}``.

    The value is read as a TOML value (numbers, booleans, ``[lists]``, quoted
    strings); anything that is not valid TOML is taken as a plain string.
    ``what`` names the item in errors (the command line's ``--set``).
    """
    example = "optim.lr=1e-4" if what == "override" else f"{what} optim.lr=1e-4"
    if "=" not in item:
        raise ConfigError(f"{what} {item!r} is not KEY=VALUE (e.g. {example})")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{what} {item!r}: bad key {key!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def merge_overrides(values: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A config dict (a TOML file's) with ``--set`` items merged in, in order (a later one wins).

    Merged before anything is checked, so an override may depend on another given after it
    (``loss.clip_shape_negatives=4 clip.preset=shapes``). A table merged into a preset name
    (``model=base`` then ``model.unet.dropout=0.1``) sets fields of that preset.
    """

    def merge(node: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(node)
        for key, value in update.items():
            current = out.get(key)
            if isinstance(value, Mapping) and isinstance(current, Mapping):
                value = merge(current, value)
            elif isinstance(value, Mapping) and isinstance(current, str):
                value = merge({"preset": current}, value)
            out[key] = value
        return out

    merged = dict(values)
    for item in overrides:
        merged = merge(merged, parse_override(item))
    return merged


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply ``--set`` items to a built config in order (a later one wins); each must leave a
    valid config (:func:`load_config` merges them first)."""
    for item in overrides:
        update = _drop_legacy(parse_override(item))
        # Overriding a model field keeps the current model (not the library defaults).
        config = _apply(config, update)
    return config


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a TOML file (or start from the defaults for ``None``), merge the overrides in
    (:func:`merge_overrides`), then build and check the config."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder, not a file")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        return config_from_dict(merge_overrides(values, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None

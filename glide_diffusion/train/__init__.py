"""Training: ``train(config) -> TrainResult`` and its configuration.

See :mod:`glide_diffusion.train.config` for the schema and
:mod:`glide_diffusion.train.loop` for what one step does.
"""

from .config import ConfigError, TrainConfig, apply_overrides, config_from_dict, load_config
from .loop import RunLockedError, TrainingDivergedError, TrainResult, build_train_dataset, train

__all__ = [
    "ConfigError",
    "RunLockedError",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "apply_overrides",
    "build_train_dataset",
    "config_from_dict",
    "load_config",
    "train",
]

"""Run configuration: ``schema`` (the dataclasses, YAML, overrides), ``rules`` (each field's check),
``fields`` (every key's type, default and doc), ``values`` (parsing command-line values), ``paths``
(paths resolved against the config file). The public names are re-exported here:
``from logitsam.config import Config, load``."""

from logitsam.config.fields import describe_fields
from logitsam.config.schema import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    SamConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load,
    save,
)

__all__ = [
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "SamConfig",
    "TrainConfig",
    "apply_overrides",
    "describe_fields",
    "from_dict",
    "load",
    "save",
]

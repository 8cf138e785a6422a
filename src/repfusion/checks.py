"""Checks of optimiser and Trainer values that Lightning or torch would reject only once training starts.

`check_run_config` runs on the parsed config of every training verb before anything is built or written
(`config.parse_config` calls it right after parsing; the runners call it too, for the Python API), so a bad
value is one sentence and the run folder is left as it was.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields, is_dataclass
from typing import Any

from .errors import RepFusionError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "poly", "constant")
PROFILERS = ("simple", "advanced", "pytorch", "xla")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_optim_config(cfg: Any, name: str = "optim") -> None:
    """lr > 0, momentum in [0, 1), weight_decay >= 0, gamma > 0, warmup >= 0, known optimiser and schedule."""
    if cfg.name not in OPTIMIZERS:
        raise RepFusionError(f"{name}.name must be one of {', '.join(OPTIMIZERS)}, not '{cfg.name}'.")
    if cfg.schedule not in SCHEDULES:
        raise RepFusionError(f"{name}.schedule must be one of {', '.join(SCHEDULES)}, not '{cfg.schedule}'.")
    if not _number(cfg.lr) or cfg.lr <= 0:
        raise RepFusionError(f"{name}.lr must be a positive learning rate (e.g. 0.1 for sgd, 2e-4 for adamw), "
                             f"not {cfg.lr}.")
    if not _number(cfg.momentum) or not 0 <= cfg.momentum < 1:
        raise RepFusionError(f"{name}.momentum must be in [0, 1), not {cfg.momentum}.")
    if not _number(cfg.weight_decay) or cfg.weight_decay < 0:
        raise RepFusionError(f"{name}.weight_decay must be 0 or more, not {cfg.weight_decay}.")
    if not _number(cfg.gamma) or cfg.gamma <= 0:
        raise RepFusionError(f"{name}.gamma must be a positive factor (0.1 divides the lr by 10), not {cfg.gamma}.")
    if not _number(cfg.warmup_epochs) or cfg.warmup_epochs < 0:
        raise RepFusionError(f"{name}.warmup_epochs must be 0 or more, not {cfg.warmup_epochs}.")
    scale = getattr(cfg, "backbone_lr_scale", 1.0)
    if not _number(scale) or not 0 <= scale <= 10:
        raise RepFusionError(f"{name}.backbone_lr_scale must be a number in [0, 10] (1: one learning rate; 0 "
                             f"freezes the backbone), not {scale}.")
    if cfg.milestones is not None and any(not _whole(m) or m < 1 for m in cfg.milestones):
        raise RepFusionError(f"{name}.milestones must be epochs >= 1 (or null for 50 % and 75 % of max_epochs), "
                             f"not {cfg.milestones}.")


def _strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *sorted(StrategyRegistry.available_strategies())]


_DEVICE_LIST = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*,?\s*$")


def _check_extra(extra: dict[str, Any], name: str) -> None:
    """The values of the `extra` Trainer arguments, as Lightning would check them later (or crash on)."""
    def bad(key: str, what: str) -> RepFusionError:
        return RepFusionError(f"{name}.extra's {key} must be {what}, not {extra[key]!r}.")

    for key in ("accumulate_grad_batches",):
        if key in extra and (not _whole(extra[key]) or extra[key] < 1):
            raise bad(key, "a whole number of batches >= 1")
    for key in ("min_epochs", "min_steps", "reload_dataloaders_every_n_epochs"):
        if key in extra and extra[key] is not None and (not _whole(extra[key]) or extra[key] < 0):
            raise bad(key, "a whole number >= 0" + (" (or null)" if key != "reload_dataloaders_every_n_epochs" else ""))
    if "num_sanity_val_steps" in extra and (not _whole(extra["num_sanity_val_steps"])
                                            or extra["num_sanity_val_steps"] < -1):
        raise bad("num_sanity_val_steps", "a whole number of batches >= 0 (or -1 for all)")
    if "gradient_clip_val" in extra and extra["gradient_clip_val"] is not None and (
            not _number(extra["gradient_clip_val"]) or extra["gradient_clip_val"] < 0):
        raise bad("gradient_clip_val", "a number >= 0 (or null for no clipping)")
    if "gradient_clip_algorithm" in extra and extra["gradient_clip_algorithm"] not in (None, "norm", "value"):
        raise bad("gradient_clip_algorithm", "'norm' or 'value'")
    if "val_check_interval" in extra and extra["val_check_interval"] is not None:
        v = extra["val_check_interval"]
        if not _number(v) or (_whole(v) and v < 1) or (isinstance(v, float) and not 0 < v <= 1):
            raise bad("val_check_interval", "a number of batches >= 1 or a fraction of an epoch in (0.0, 1.0]")
    for key in ("limit_test_batches", "overfit_batches"):
        if key in extra and extra[key] is not None:
            v = extra[key]
            if not _number(v) or (_whole(v) and v < 0) or (isinstance(v, float) and not 0 <= v <= 1):
                raise bad(key, "a number of batches (an integer >= 0) or a fraction in [0.0, 1.0]")
    for key in ("benchmark", "inference_mode", "detect_anomaly"):
        if key in extra and not isinstance(extra[key], bool) and not (key == "benchmark" and extra[key] is None):
            raise bad(key, "true or false")
    if "profiler" in extra and extra["profiler"] is not None and extra["profiler"] not in PROFILERS:
        raise bad("profiler", f"one of {', '.join(PROFILERS)} (Lightning's profiler names) or null")
    if "max_time" in extra and extra["max_time"] is not None:
        v = extra["max_time"]
        if not (isinstance(v, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", v)) and not (
                isinstance(v, dict) and set(v) <= {"days", "hours", "minutes", "seconds"}
                and all(_number(x) and x >= 0 for x in v.values())):
            raise bad("max_time", "a duration 'DD:HH:MM:SS' or a mapping of days, hours, minutes, seconds")


def check_trainer_values(cfg: Any, name: str = "trainer") -> None:
    """strategy, devices and the `extra` values (the rest is training.check_trainer_config)."""
    strategy = cfg.strategy
    if isinstance(strategy, str) and strategy not in _strategies():
        from .errors import closest

        near = closest(strategy, _strategies())
        hint = f"; closest valid names: {', '.join(near)}" if near else f"; valid names: {', '.join(_strategies())}"
        raise RepFusionError(f"Unknown {name}.strategy '{strategy}'{hint}.")
    devices = cfg.devices
    if isinstance(devices, bool) or isinstance(devices, int) and devices < -1:
        raise RepFusionError(f"{name}.devices must be a device count (-1 for all), a list of device ids or auto, "
                             f"not {devices}.")
    if isinstance(devices, str) and devices != "auto" and not re.fullmatch(r"\s*-?\d+\s*", devices) \
            and not _DEVICE_LIST.match(devices):
        raise RepFusionError(f"{name}.devices must be a device count (-1 for all), a list of device ids (0,1) or "
                             f"auto, not '{devices}'.")
    if isinstance(devices, list) and any(not _whole(d) or d < 0 for d in devices):
        raise RepFusionError(f"{name}.devices must list device ids >= 0, not {devices}.")
    _check_extra(dict(cfg.extra), name)


def check_data_values(cfg: Any, name: str = "data") -> None:
    """Normalisation and split seed (the rest is check_data_config and DataConfig itself)."""
    for key in ("mean", "std"):
        values = getattr(cfg, key)
        if len(values) != 3 or not all(_number(v) for v in values):
            raise RepFusionError(f"{name}.{key} must be three finite numbers (one per RGB channel), not {values}.")
    if any(v <= 0 for v in cfg.std):
        raise RepFusionError(f"{name}.std must be positive in every channel (pixels are divided by it), not "
                             f"{list(cfg.std)}.")
    if not _whole(cfg.split_seed) or cfg.split_seed < 0:
        raise RepFusionError(f"{name}.split_seed must be a whole number >= 0, not {cfg.split_seed}.")


SEED_LIMIT = 2**32 - 1  # numpy's seed range, which seed_everything seeds too


def check_timesteps_values(cfg: Any, name: str = "timesteps") -> None:
    """Weights, rates and durations of the timestep strategy that a sign error would silently invert."""
    for key, low, what in (("entropy_weight", 0, ">= 0"), ("decay_epochs", 0, "> 0"),
                           ("entropy_decay_epochs", 0, "> 0"), ("policy_lr_scale", 0, "> 0"),
                           ("policy_warmup_epochs", 0, ">= 0"), ("entropy_floor", 0, ">= 0")):
        if not hasattr(cfg, key):
            continue
        value = getattr(cfg, key)
        strict = what.startswith(">") and not what.startswith(">=")
        if not _number(value) or value < low or (strict and value == low):
            raise RepFusionError(f"{name}.{key} must be a number {what}, not {value}.")
    if hasattr(cfg, "baseline_momentum") and (not _number(cfg.baseline_momentum)
                                              or not 0 <= cfg.baseline_momentum < 1):
        raise RepFusionError(f"{name}.baseline_momentum must be in [0, 1), not {cfg.baseline_momentum}.")


def check_data_config(cfg: Any, name: str = "data") -> None:
    if cfg.batch_size < 1:
        raise RepFusionError(f"{name}.batch_size must be at least 1, not {cfg.batch_size}.")
    if cfg.train_limit is not None and cfg.train_limit < 1:
        raise RepFusionError(f"{name}.train_limit must be at least 1 image (or null for all), not {cfg.train_limit}.")
    if not 0 <= cfg.val_fraction < 1:
        raise RepFusionError(f"{name}.val_fraction must be in [0, 1) (0 validates on the test split), "
                             f"not {cfg.val_fraction}.")
    if cfg.num_workers < 0:
        raise RepFusionError(f"{name}.num_workers must be 0 or more, not {cfg.num_workers}.")
    if cfg.image_size is not None and cfg.image_size < 1:
        raise RepFusionError(f"{name}.image_size must be at least 1 pixel (or null), not {cfg.image_size}.")
    if cfg.crop_padding < 0:
        raise RepFusionError(f"{name}.crop_padding must be 0 or more, not {cfg.crop_padding}.")


def check_run_config(config: Any) -> None:
    """Every optimiser, Trainer, data and timestep section of a parsed run config (a dataclass of sections),
    and a distillation loss's weight."""
    from .data.datamodule import DataConfig
    from .training import OptimConfig, TrainerConfig, check_trainer_config

    if not is_dataclass(config):
        return
    for f in fields(config):
        section = getattr(config, f.name)
        if isinstance(section, OptimConfig):
            check_optim_config(section, f.name)
        elif isinstance(section, TrainerConfig):
            check_trainer_config(section, f.name)
            check_trainer_values(section, f.name)
            if not _whole(section.seed) or not 0 <= section.seed <= SEED_LIMIT:
                raise RepFusionError(f"{f.name}.seed must be a whole number in [0, {SEED_LIMIT}], not {section.seed}.")
        elif isinstance(section, DataConfig):
            check_data_config(section, f.name)
            check_data_values(section, f.name)
        elif f.name == "timesteps" and is_dataclass(section):
            check_timesteps_values(section, f.name)
        elif f.name == "loss" and hasattr(section, "kd_weight") and (
                not _number(section.kd_weight) or section.kd_weight < 0):
            raise RepFusionError(f"{f.name}.kd_weight must be a number >= 0, not {section.kd_weight}.")

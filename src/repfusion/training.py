"""Infrastructure shared by every stage: optimiser/schedule, Trainer, checkpoints, EMA, NaN guard."""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from .ema import EMA
from .errors import RepFusionError
from .fastpath import ApplyFastPaths, check_fast_paths, resolve_fast_paths
from .jsondata import JSONValue
from .run import AtomicCheckpointIO, EpochCheckpoint, RunState, nonfinite_message
from .run.loggers import TensorBoardResume, build_loggers, check_loggers
from .run.progress_lines import LineProgress, stdout_is_terminal
from .section import Section, finite_number, whole_number
from .run import prepare_run as prepare_run, restore_finished as restore_finished  # the runners' entry
from .run import resume_path as resume_path  # points


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "poly", "constant")
PROFILERS = ("simple", "advanced", "pytorch", "xla")


@dataclass
class OptimConfig(Section):
    """One optimiser and schedule for all stages (the paper: SGD 0.1, momentum 0.9, wd 1e-4, x0.1 steps).

    milestones are epochs; when absent they sit at 50 % and 75 % of max_epochs (100/150 of 200).
    Checked when built (`repfusion.section`): lr > 0, momentum in [0, 1), weight_decay >= 0, gamma > 0,
    warmup >= 0, a known optimiser and schedule.
    """

    KEY: ClassVar[str] = "optim"

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "step"
    milestones: list[int] | None = None
    gamma: float = 0.1
    warmup_epochs: int = 0
    backbone_lr_scale: float = 1.0  # classification fine-tuning: the backbone's lr over the head's

    def __post_init__(self) -> None:
        name = self.KEY
        if self.name not in OPTIMIZERS:
            raise RepFusionError(f"{name}.name must be one of {', '.join(OPTIMIZERS)}, not '{self.name}'.")
        if self.schedule not in SCHEDULES:
            raise RepFusionError(f"{name}.schedule must be one of {', '.join(SCHEDULES)}, not '{self.schedule}'.")
        if not finite_number(self.lr) or self.lr <= 0:
            raise RepFusionError(f"{name}.lr must be a positive learning rate (e.g. 0.1 for sgd, 2e-4 for adamw), "
                                 f"not {self.lr}.")
        if not finite_number(self.momentum) or not 0 <= self.momentum < 1:
            raise RepFusionError(f"{name}.momentum must be in [0, 1), not {self.momentum}.")
        if not finite_number(self.weight_decay) or self.weight_decay < 0:
            raise RepFusionError(f"{name}.weight_decay must be 0 or more, not {self.weight_decay}.")
        if not finite_number(self.gamma) or self.gamma <= 0:
            raise RepFusionError(f"{name}.gamma must be a positive factor (0.1 divides the lr by 10), not "
                                 f"{self.gamma}.")
        if not finite_number(self.warmup_epochs) or self.warmup_epochs < 0:
            raise RepFusionError(f"{name}.warmup_epochs must be 0 or more, not {self.warmup_epochs}.")
        scale = self.backbone_lr_scale
        if not finite_number(scale) or not 0 <= scale <= 10:
            raise RepFusionError(f"{name}.backbone_lr_scale must be a number in [0, 10] (1: one learning rate; 0 "
                                 f"freezes the backbone), not {scale}.")
        if self.milestones is not None and any(not whole_number(m) or m < 1 for m in self.milestones):
            raise RepFusionError(f"{name}.milestones must be epochs >= 1 (or null for 50 % and 75 % of "
                                 f"max_epochs), not {self.milestones}.")


def build_optimizer(params: Iterable[torch.nn.Parameter] | list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """`params` may be parameters or torch param groups (a group's own lr overrides cfg.lr)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    else:
        params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise RepFusionError(f"optim.name must be one of sgd, adam, adamw, not '{cfg.name}'.")


def lr_factor(epoch: int, cfg: OptimConfig, max_epochs: int) -> float:
    """Multiplier of the base learning rate at a given epoch."""
    warm = min(1.0, (epoch + 1) / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else 1.0
    if cfg.schedule == "constant":
        return warm
    if cfg.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(epoch, max_epochs) / max(1, max_epochs)))
    if cfg.schedule == "step":
        milestones = cfg.milestones or [max(1, round(max_epochs * 0.5)), max(1, round(max_epochs * 0.75))]
        return warm * cfg.gamma ** sum(epoch >= m for m in milestones)
    if cfg.schedule == "poly":  # BiSeNet's and most segmentation codebases': (1 - progress) ** 0.9
        return warm * (1 - min(epoch, max_epochs) / max(1, max_epochs)) ** 0.9
    raise RepFusionError(f"optim.schedule must be one of step, cosine, poly, constant, not '{cfg.schedule}'.")


def configure_optimization(params: Iterable[torch.nn.Parameter], cfg: OptimConfig, max_epochs: int) -> dict[str, Any]:
    """What `LightningModule.configure_optimizers` returns: optimiser plus a per-epoch schedule."""
    optimizer = build_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, cfg, max_epochs))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


@dataclass
class TrainerConfig:
    """Lightning Trainer settings (multi-GPU: devices, num_nodes, strategy=ddp; see the README).

    Speed options (`repfusion.fastpath`), each `auto` by default, which turns on what is safe on the device
    the run trains on and leaves CPU runs as they were:

    - precision: a Lightning precision name, or auto = `bf16-mixed` on a CUDA GPU with bf16 (autocast
      of teacher and student; losses stay fp32), `32-true` on a CPU.
    - channels_last: true | false | auto (= true on a CUDA GPU): channels-last weights and activations.
    - compile: true | false | auto (= false everywhere): `torch.compile` of the student (the model / UNet
      in the other stages; not the frozen teacher), in place, so checkpoints do not change.

    logger: csv, tensorboard, wandb, mlflow, one name or a list (`--trainer.logger [csv,wandb]`); null = csv
    plus tensorboard when installed. metrics.csv is always written (`repfusion.run.loggers`).

    Checked when built (`repfusion.section`): one sentence for every value Lightning would otherwise reject
    with a traceback only once training starts (or silently misread), `extra` included.
    """

    KEY: ClassVar[str] = "trainer"

    max_epochs: int = 200
    max_steps: int = -1
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    deterministic: bool = False
    sync_batchnorm: bool = True
    channels_last: bool | str = "auto"
    compile: bool | str = "auto"
    seed: int = 0
    ema_decay: float | None = 0.999
    limit_train_batches: int | float | None = None  # an int is a number of batches, a float a fraction
    limit_val_batches: int | float | None = None
    check_val_every_n_epoch: int = 1
    checkpoint_every_n_steps: int | None = None
    log_every_n_steps: int = 10
    progress: bool = True
    logger: str | list[str] | None = None
    extra: dict[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.KEY
        if self.max_epochs < 1 and not (self.max_epochs == -1 and self.max_steps >= 1):
            raise RepFusionError(f"{name}.max_epochs must be at least 1 (or -1 with {name}.max_steps set), "
                                 f"not {self.max_epochs}.")
        if self.max_steps < 1 and self.max_steps != -1:
            raise RepFusionError(f"{name}.max_steps must be at least 1, or -1 for no limit, not {self.max_steps}.")
        if str(self.accelerator) not in ACCELERATORS:
            raise RepFusionError(f"{name}.accelerator must be one of {', '.join(ACCELERATORS)}, not "
                                 f"'{self.accelerator}'.")
        if self.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise RepFusionError(f"{name}.accelerator is '{self.accelerator}' but torch sees no CUDA GPU here; "
                                 "use cpu or auto.")
        if str(self.precision) not in _precisions():
            raise RepFusionError(f"{name}.precision must be one of {', '.join(_precisions()[2:8])} "
                                 f"(Lightning's names), not '{self.precision}'.")
        check_fast_paths(self.channels_last, self.compile)
        if isinstance(self.devices, int) and self.devices == 0 or isinstance(self.devices, list) and not self.devices:
            raise RepFusionError(f"{name}.devices must name at least one device (a count, a list of ids, or auto).")
        if self.num_nodes < 1:
            raise RepFusionError(f"{name}.num_nodes must be at least 1, not {self.num_nodes}.")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise RepFusionError(f"{name}.ema_decay must be in [0, 1) (or null for no EMA), not {self.ema_decay}.")
        _check_limit(self.limit_train_batches, f"{name}.limit_train_batches")
        _check_limit(self.limit_val_batches, f"{name}.limit_val_batches")
        if self.limit_train_batches == 0:
            raise RepFusionError(f"{name}.limit_train_batches 0 would train nothing; give a number of batches >= 1.")
        if self.check_val_every_n_epoch < 1:
            raise RepFusionError(f"{name}.check_val_every_n_epoch must be at least 1, not "
                                 f"{self.check_val_every_n_epoch}.")
        if self.checkpoint_every_n_steps is not None and self.checkpoint_every_n_steps < 1:
            raise RepFusionError(f"{name}.checkpoint_every_n_steps must be at least 1 (or null for epoch ends "
                                 f"only), not {self.checkpoint_every_n_steps}.")
        if self.log_every_n_steps < 1:
            raise RepFusionError(f"{name}.log_every_n_steps must be at least 1, not {self.log_every_n_steps}.")
        check_loggers(self.logger, f"{name}.logger")
        for key in self.extra:
            if key not in EXTRA_TRAINER_KEYS:
                own = {f.name for f in fields(TrainerConfig)}
                hint = f"set {name}.{key} instead" if key in own else f"it accepts {', '.join(EXTRA_TRAINER_KEYS)}"
                raise RepFusionError(f"{name}.extra does not accept the Trainer argument '{key}'; {hint}.")
        _check_strategy_devices(self.strategy, self.devices, name)
        _check_extra(dict(self.extra), name)
        if not whole_number(self.seed) or not 0 <= self.seed <= SEED_LIMIT:
            raise RepFusionError(f"{name}.seed must be a whole number in [0, {SEED_LIMIT}], not {self.seed}.")


# Trainer arguments `extra` may set: plain values that do not clash with what build_trainer sets itself.
EXTRA_TRAINER_KEYS = ("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "min_epochs",
                      "min_steps", "max_time", "val_check_interval", "num_sanity_val_steps", "limit_test_batches",
                      "overfit_batches", "benchmark", "inference_mode", "detect_anomaly", "profiler",
                      "reload_dataloaders_every_n_epochs")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")


def _precisions() -> tuple[str, ...]:
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT_STR

    return tuple(get_args(_PRECISION_INPUT_STR)) + ("64", "32", "16", "bf16", "auto")


def _check_limit(value: int | float | None, key: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int) and value < 0 or isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise RepFusionError(f"{key} must be a number of batches (an integer >= 0) or a fraction in [0.0, 1.0], "
                             f"not {value}.")


SEED_LIMIT = 2**32 - 1  # numpy's seed range, which seed_everything seeds too


def _strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *sorted(StrategyRegistry.available_strategies())]


_DEVICE_LIST = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*,?\s*$")


def _check_strategy_devices(strategy: str, devices: int | str | list[int], name: str) -> None:
    """A strategy Lightning registers and a device count, list or spec it can read."""
    if isinstance(strategy, str) and strategy != "auto" and strategy not in _strategies():
        from .errors import closest

        near = closest(strategy, _strategies())
        hint = f"; closest valid names: {', '.join(near)}" if near else f"; valid names: {', '.join(_strategies())}"
        raise RepFusionError(f"Unknown {name}.strategy '{strategy}'{hint}.")
    if isinstance(devices, bool) or isinstance(devices, int) and devices < -1:
        raise RepFusionError(f"{name}.devices must be a device count (-1 for all), a list of device ids or auto, "
                             f"not {devices}.")
    if isinstance(devices, str) and devices != "auto" and not re.fullmatch(r"\s*-?\d+\s*", devices) \
            and not _DEVICE_LIST.match(devices):
        raise RepFusionError(f"{name}.devices must be a device count (-1 for all), a list of device ids (0,1) or "
                             f"auto, not '{devices}'.")
    if isinstance(devices, list) and any(not whole_number(d) or d < 0 for d in devices):
        raise RepFusionError(f"{name}.devices must list device ids >= 0, not {devices}.")


def _check_extra(extra: dict[str, Any], name: str) -> None:
    """The values of the `extra` Trainer arguments, as Lightning would check them later (or crash on)."""
    def bad(key: str, what: str) -> RepFusionError:
        return RepFusionError(f"{name}.extra's {key} must be {what}, not {extra[key]!r}.")

    for key in ("accumulate_grad_batches",):
        if key in extra and (not whole_number(extra[key]) or extra[key] < 1):
            raise bad(key, "a whole number of batches >= 1")
    for key in ("min_epochs", "min_steps", "reload_dataloaders_every_n_epochs"):
        if key in extra and extra[key] is not None and (not whole_number(extra[key]) or extra[key] < 0):
            raise bad(key, "a whole number >= 0" + (" (or null)" if key != "reload_dataloaders_every_n_epochs" else ""))
    if "num_sanity_val_steps" in extra and (not whole_number(extra["num_sanity_val_steps"])
                                            or extra["num_sanity_val_steps"] < -1):
        raise bad("num_sanity_val_steps", "a whole number of batches >= 0 (or -1 for all)")
    if "gradient_clip_val" in extra and extra["gradient_clip_val"] is not None and (
            not finite_number(extra["gradient_clip_val"]) or extra["gradient_clip_val"] < 0):
        raise bad("gradient_clip_val", "a number >= 0 (or null for no clipping)")
    if "gradient_clip_algorithm" in extra and extra["gradient_clip_algorithm"] not in (None, "norm", "value"):
        raise bad("gradient_clip_algorithm", "'norm' or 'value'")
    if "val_check_interval" in extra and extra["val_check_interval"] is not None:
        v = extra["val_check_interval"]
        if not finite_number(v) or (whole_number(v) and v < 1) or (isinstance(v, float) and not 0 < v <= 1):
            raise bad("val_check_interval", "a number of batches >= 1 or a fraction of an epoch in (0.0, 1.0]")
    for key in ("limit_test_batches", "overfit_batches"):
        if key in extra and extra[key] is not None:
            v = extra[key]
            if not finite_number(v) or (whole_number(v) and v < 0) or (isinstance(v, float) and not 0 <= v <= 1):
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
                and all(finite_number(x) and x >= 0 for x in v.values())):
            raise bad("max_time", "a duration 'DD:HH:MM:SS' or a mapping of days, hours, minutes, seconds")


class NonFiniteLossGuard(Callback):
    """Stop at the first NaN/inf loss or weight, naming the step, before a checkpoint could store it.

    Per step one device-side flag, isfinite(loss), and no host sync: the flags are read on the host every
    `every` steps (every step on a CPU, where a read costs nothing), before every checkpoint is written
    (this callback's `on_save_checkpoint` runs before the file is), and at every epoch and training end; the
    message names the step where the loss first became non-finite. The weights are checked at those reads
    too (the largest |weight|, one multi-tensor `_foreach_norm` with ord=inf, all but the loss flags' sync
    at every `every` steps): weights that turn non-finite make the next loss non-finite anyway, and no
    checkpoint is written without the check.
    """

    def __init__(self, every: int = 1) -> None:
        self.every = max(1, every)
        self.params: list[torch.Tensor] = []
        self.pending: list[tuple[int, int, torch.Tensor]] = []  # step, epoch, loss (detached)
        self.last: tuple[int, int] | None = None  # the latest step seen, for a weights failure

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.params = [p.detach() for p in pl_module.parameters() if p.requires_grad]
        self.pending = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.last = (trainer.global_step, trainer.current_epoch)
        if isinstance(loss, torch.Tensor):
            self.pending.append((*self.last, loss.detach()))
        if len(self.pending) >= self.every or trainer.global_step % self.every == 0:
            self.check(trainer)
        elif self.pending and self.pending[-1][2].device.type == "cpu":
            self.check(trainer, weights=False)

    def check(self, trainer: pl.Trainer, weights: bool = True) -> None:
        """Read the pending loss flags (one host sync, with the weights check) and raise at the first failure."""
        pending, self.pending = self.pending, []
        flags = [bool(f) for f in torch.stack([torch.isfinite(loss).all() for *_, loss in pending]).cpu()] \
            if pending else []
        if flags and not all(flags):
            step, epoch, loss = pending[flags.index(False)]
            raise RepFusionError(nonfinite_message(trainer, f"The training loss became {loss.item()}", step=step,
                                                   epoch=epoch))
        if weights and self.params:
            largest = torch.stack(torch._foreach_norm(self.params, ord=float("inf"))).max()
            if not torch.isfinite(largest):
                step, epoch = self.last or (trainer.global_step, trainer.current_epoch)
                raise RepFusionError(nonfinite_message(trainer, "The weights became non-finite", step=step,
                                                       epoch=epoch))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)


class AverageNormStats(Callback):
    """Average BatchNorm running statistics across ranks (timm's `distribute_bn`).

    DDP keeps weights in step but each rank updates its own running stats; SyncBatchNorm fixes this on
    GPUs only, so on CPU (gloo) and as a safety net the stats are averaged at every epoch end and at the
    end of training, after the EMA weights have been swapped in.
    """

    def _average(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        for module in pl_module.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for buffer in (module.running_mean, module.running_var):
                    buffer.copy_(trainer.strategy.reduce(buffer.clone(), reduce_op="mean"))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._average(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._average(trainer, pl_module)


class RankSeed(Callback):
    """Distinct random streams per rank (augmentation, timestep sampling); DDP broadcasts rank 0's weights."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            pl.seed_everything(self.seed + 1000 * trainer.global_rank, workers=True, verbose=False)


# Lightning's advice that does not apply to this design (frozen eval-mode teacher, on-device augmentation).
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*The number of training batches.*",
    ".*module\\(s\\) in eval mode.*",
    ".*overridden `on_after_batch_transfer`.*",
    ".*LeafSpec.*",
    ".*Checkpoint directory.*exists and is not empty.*",
    ".*sync_dist=True.*",
    ".*Experiment logs directory.*",
    ".*your dataloader is not resumable.*",  # it is: run.EpochSampler skips the batches already trained
)


# Lightning's INFO lines ("GPU available: ...", "`Trainer(limit_val_batches=1)` was configured ...") and its
# promotional tips about LitLogger/litmodels: a verb's stderr holds its own notes and, on bad input, one
# `error:` line only. Lightning's warnings (the `warnings` module) still show, minus QUIET_WARNINGS.
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed")


def quiet_lightning() -> None:
    """Lightning's INFO logging off (WARNING and above still show); called by `build_trainer`."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


def build_trainer(cfg: TrainerConfig, run_dir: Path, monitor: str | None = None, mode: str = "max",
                  callbacks: list[Callback] | None = None) -> pl.Trainer:
    """A Trainer that writes checkpoints/last.ckpt (+ best.ckpt), metrics.csv and progress to run_dir."""
    ckpt_dir = run_dir / "checkpoints"
    cbs: list[Callback] = [
        EpochCheckpoint(ckpt_dir, cfg.checkpoint_every_n_steps),
        NonFiniteLossGuard(every=cfg.log_every_n_steps),
        RankSeed(cfg.seed),
        RunState(),
    ]
    if monitor is not None:
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                                   enable_version_counter=False))
    if cfg.ema_decay is not None:
        cbs.append(EMA(cfg.ema_decay))
    cbs.append(AverageNormStats())  # after the EMA callback, so it sees the swapped-in weights
    fast = resolve_fast_paths(cfg)
    if fast.channels_last or fast.compile:
        cbs.append(ApplyFastPaths(fast))
    if cfg.progress:  # bars on a terminal; one line an epoch in a log file or a pipe (no carriage returns)
        cbs.append(TQDMProgressBar(refresh_rate=max(1, cfg.log_every_n_steps // 2)) if stdout_is_terminal()
                   else LineProgress())
    loggers = build_loggers(cfg.logger, run_dir)
    if any(isinstance(logger, TensorBoardLogger) for logger in loggers):
        cbs.append(TensorBoardResume())  # after RunState, which rebuilds metrics.csv first
    cbs += callbacks or []
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message)
    quiet_lightning()
    return pl.Trainer(
        default_root_dir=run_dir,
        max_epochs=cfg.max_epochs,
        max_steps=cfg.max_steps,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=fast.precision,
        deterministic=cfg.deterministic,
        sync_batchnorm=cfg.sync_batchnorm and "ddp" in str(cfg.strategy) and torch.cuda.is_available()
        and cfg.accelerator != "cpu",
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        log_every_n_steps=cfg.log_every_n_steps,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        callbacks=cbs,
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        **cfg.extra,
    )

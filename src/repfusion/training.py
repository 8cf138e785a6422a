"""Infrastructure shared by every stage: optimiser/schedule, Trainer, checkpoints, EMA, NaN guard."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
from .run import prepare_run as prepare_run, restore_finished as restore_finished  # the runners' entry
from .run import resume_path as resume_path  # points


@dataclass
class OptimConfig:
    """One optimiser and schedule for all stages (the paper: SGD 0.1, momentum 0.9, wd 1e-4, x0.1 steps).

    milestones are epochs; when absent they sit at 50 % and 75 % of max_epochs (100/150 of 200).
    """

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
    """

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


def check_trainer_config(cfg: TrainerConfig, name: str = "trainer") -> None:
    """One sentence for every value Lightning would otherwise reject with a traceback (or silently misread)."""
    if cfg.max_epochs < 1 and not (cfg.max_epochs == -1 and cfg.max_steps >= 1):
        raise RepFusionError(f"{name}.max_epochs must be at least 1 (or -1 with {name}.max_steps set), "
                             f"not {cfg.max_epochs}.")
    if cfg.max_steps < 1 and cfg.max_steps != -1:
        raise RepFusionError(f"{name}.max_steps must be at least 1, or -1 for no limit, not {cfg.max_steps}.")
    if str(cfg.accelerator) not in ACCELERATORS:
        raise RepFusionError(f"{name}.accelerator must be one of {', '.join(ACCELERATORS)}, not '{cfg.accelerator}'.")
    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RepFusionError(f"{name}.accelerator is '{cfg.accelerator}' but torch sees no CUDA GPU here; "
                             "use cpu or auto.")
    if str(cfg.precision) not in _precisions():
        raise RepFusionError(f"{name}.precision must be one of {', '.join(_precisions()[2:8])} "
                             f"(Lightning's names), not '{cfg.precision}'.")
    check_fast_paths(cfg.channels_last, cfg.compile)
    if isinstance(cfg.devices, int) and cfg.devices == 0 or isinstance(cfg.devices, list) and not cfg.devices:
        raise RepFusionError(f"{name}.devices must name at least one device (a count, a list of ids, or auto).")
    if cfg.num_nodes < 1:
        raise RepFusionError(f"{name}.num_nodes must be at least 1, not {cfg.num_nodes}.")
    if cfg.ema_decay is not None and not 0.0 <= cfg.ema_decay < 1.0:
        raise RepFusionError(f"{name}.ema_decay must be in [0, 1) (or null for no EMA), not {cfg.ema_decay}.")
    _check_limit(cfg.limit_train_batches, f"{name}.limit_train_batches")
    _check_limit(cfg.limit_val_batches, f"{name}.limit_val_batches")
    if cfg.limit_train_batches == 0:
        raise RepFusionError(f"{name}.limit_train_batches 0 would train nothing; give a number of batches >= 1.")
    if cfg.check_val_every_n_epoch < 1:
        raise RepFusionError(f"{name}.check_val_every_n_epoch must be at least 1, not {cfg.check_val_every_n_epoch}.")
    if cfg.checkpoint_every_n_steps is not None and cfg.checkpoint_every_n_steps < 1:
        raise RepFusionError(f"{name}.checkpoint_every_n_steps must be at least 1 (or null for epoch ends only), "
                             f"not {cfg.checkpoint_every_n_steps}.")
    if cfg.log_every_n_steps < 1:
        raise RepFusionError(f"{name}.log_every_n_steps must be at least 1, not {cfg.log_every_n_steps}.")
    check_loggers(cfg.logger, f"{name}.logger")
    for key in cfg.extra:
        if key not in EXTRA_TRAINER_KEYS:
            own = {f.name for f in fields(TrainerConfig)}
            hint = f"set {name}.{key} instead" if key in own else f"it accepts {', '.join(EXTRA_TRAINER_KEYS)}"
            raise RepFusionError(f"{name}.extra does not accept the Trainer argument '{key}'; {hint}.")


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
    check_trainer_config(cfg)  # the Python API gets the same one-sentence checks as the command line
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

"""The loggers of a run: metrics.csv always (reports and `--resume` read it), TensorBoard by default when it is
installed, Weights & Biases and MLflow on request; all of them Lightning's own, fed the same metric names.

`trainer.logger` is null (csv, plus tensorboard when `tensorboard` or `tensorboardX` imports), one name or a
list of names. TensorBoard writes RUN/tensorboard/; a resume continues that folder and TensorBoard shows
exactly the rows of metrics.csv (`TensorBoardResume`). W&B writes RUN/wandb/ (online when logged in, offline
with WANDB_MODE=offline), MLflow RUN/mlruns/ unless MLFLOW_TRACKING_URI names a server; a resume starts a new
W&B or MLflow run.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from ..errors import RepFusionError, unknown_name_error
from .metrics_csv import RunCSVLogger, run_writer

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
# the packages that provide each logger (any one of them will do; the hint names the first)
PACKAGES: dict[str, tuple[str, ...]] = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",),
                                        "mlflow": ("mlflow",)}


def installed(name: str) -> bool:
    """The logger's package imports here (csv needs none)."""
    return name == "csv" or any(importlib.util.find_spec(p) is not None for p in PACKAGES.get(name, ()))


def logger_names(value: str | Sequence[str] | None) -> list[str]:
    """The loggers a `trainer.logger` value asks for, csv first and always there, each once."""
    if value is None:
        asked = ["tensorboard"] if installed("tensorboard") else []
    else:
        asked = [value] if isinstance(value, str) else list(value)
    return ["csv", *dict.fromkeys(n for n in asked if n != "csv")]


def check_loggers(value: Any, key: str = "trainer.logger") -> None:
    """Known names whose packages import: checked with the other values, before anything is written."""
    if value is not None and not isinstance(value, str) and not (
            isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value)):
        raise RepFusionError(f"{key} must be a logger name or a list of them ({', '.join(LOGGERS)}), not {value!r}.")
    for name in logger_names(value):
        if name not in LOGGERS:
            raise unknown_name_error(f"{key} entry", name, LOGGERS)
        if not installed(name):
            raise RepFusionError(f"{key} names {name}, but the {name} package is not installed here: "
                                 f"pip install {name} (or drop {name} from {key}).")


def build_loggers(value: str | Sequence[str] | None, run_dir: Path) -> list[Logger]:
    """Lightning's loggers for the names `value` asks for, writing into the run folder (`value` has passed
    `check_loggers`, in `TrainerConfig.__post_init__`)."""
    loggers: list[Logger] = []
    for name in logger_names(value):
        if name == "csv":
            loggers.append(RunCSVLogger(save_dir=run_dir, name="", version=""))
        elif name == "tensorboard":  # no hp_metric placeholder: only the run's own metrics
            loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="",
                                             default_hp_metric=False))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(name=run_dir.name, save_dir=str(run_dir),
                                       project=os.environ.get("WANDB_PROJECT", "repfusion")))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.resolve() / "mlruns").as_uri()
            loggers.append(MLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "repfusion"),
                                        run_name=run_dir.name, tracking_uri=uri))
    return loggers


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The SummaryWriters of the trainer's TensorBoard loggers (rank 0 only; none elsewhere)."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def log_histogram(trainer: pl.Trainer, tag: str, counts: Sequence[float], high: float, step: int) -> None:
    """A binned distribution on [0, high) (equal bins, each bin's count of draws) as a TensorBoard histogram.

    `step` is the optimiser step it belongs to, as the scalars are stepped (the distillation: the step of the
    epoch's train/ rows)."""
    writers = tensorboard_writers(trainer)
    if not writers or not counts:
        return
    width = high / len(counts)
    centres = [(i + 0.5) * width for i in range(len(counts))]
    total = float(sum(counts))
    for writer in writers:
        writer.add_histogram_raw(tag, min=0.0, max=float(high), num=total,
                                 sum=sum(n * c for n, c in zip(counts, centres)),
                                 sum_squares=sum(n * c * c for n, c in zip(counts, centres)),
                                 bucket_limits=[(i + 1) * width for i in range(len(counts))],
                                 bucket_counts=[float(n) for n in counts], global_step=step)


def _session_start() -> Any:
    """What SummaryWriter(purge_step=0) writes: TensorBoard hides every earlier event of the folder."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    except ImportError:  # tensorboardX's own copy of the protos
        from tensorboardX.proto.event_pb2 import Event, SessionLog  # type: ignore[no-redef]
    return Event(step=0, wall_time=0.0, session_log=SessionLog(status=SessionLog.START))


class TensorBoardResume(Callback):
    """A resumed run's TensorBoard folder shows exactly the rows of metrics.csv, none twice and none lost.

    A kill loses what TensorBoard had not flushed and leaves rows of work that is redone; metrics.csv is
    rebuilt exactly (`RunState`), so on resume the earlier events are hidden (TensorBoard's purge at step 0)
    and the rebuilt rows are written again, before the first new step. `replay` is the place for a module's
    other summaries (the distillation's timestep histograms).
    """

    def __init__(self) -> None:
        self.done = False

    def _resume(self, trainer: pl.Trainer) -> None:
        if self.done:
            return
        self.done = True
        writer = run_writer(trainer)
        if trainer.global_step == 0 or writer is None:  # a fresh run: nothing to take back
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for logger in loggers:
            logger.experiment._get_file_writer().add_event(_session_start())
            for row in writer.rows:
                logger.log_metrics({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
                                   step=int(row["step"]))
        replay = getattr(trainer.lightning_module, "replay_summaries", None)
        if loggers and callable(replay):
            replay()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resume(trainer)  # after RunState.on_train_start rebuilt metrics.csv

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resume(trainer)  # a run restored at its end only tests (RunState.setup rebuilt metrics.csv)

"""`RunState`: the callback that carries a run's metrics rows, random state and running epoch sums through
its checkpoints, and puts them back when the run resumes (also when it resumes at its very end)."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from .metrics_csv import epoch_end_rows, read_metric_rows, rows_to_keep, run_writer
from .random_state import rng_state, set_rng_state

STATE_KEY = "repfusion_run_state"

# modules that `run.resume.restore_finished` gave a finished run's weights: the checkpoint's loop state and
# rows, put into the next Trainer that runs them (its test, for finetune), which then does not train
_FINISHED: weakref.WeakKeyDictionary[pl.LightningModule, dict[str, Any]] = weakref.WeakKeyDictionary()


def mark_finished(module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Remember the end-of-training checkpoint `module` was restored from (see `RunState.setup`)."""
    _FINISHED[module] = {"fit_loop": checkpoint.get("loops", {}).get("fit_loop"),
                         "rows": list((checkpoint.get(STATE_KEY) or {}).get("rows", [])),
                         "pending": list((checkpoint.get(STATE_KEY) or {}).get("pending_rows", [])),
                         "step": int(checkpoint.get("global_step", 0))}


class RunState(Callback):
    """Carries metrics rows and the random state through checkpoints; puts them back on resume."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] | None = None
        self._rng: dict[str, Any] | None = None
        self._sums: dict[str, Any] = {}
        self._pending: list[dict[str, Any]] = []
        self._step = 0

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """A run restored at its end (no training left): the Trainer that only tests or predicts starts at the
        run's last step and epoch, and metrics.csv keeps the rows of the training it did not redo."""
        finished = _FINISHED.get(pl_module)
        if finished is None:
            return
        if finished["fit_loop"] is not None:
            trainer.fit_loop.load_state_dict(finished["fit_loop"])
            epochs = trainer.fit_loop.epoch_progress  # saved in the epoch's last hook: the epoch is complete
            epochs.current.completed = epochs.current.processed
            epochs.total.completed = epochs.total.processed
            finished["fit_loop"] = None
        writer = run_writer(trainer)
        if writer is not None:  # not a stage run without loggers (a validation kept out of metrics.csv)
            on_disk = read_metric_rows(Path(writer.metrics_file_path))
            writer.restore(rows_to_keep(finished["rows"], on_disk, finished["step"], finished["pending"]))
            del _FINISHED[pl_module]

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        writer = run_writer(trainer)
        mid_epoch = _mid_epoch(trainer)
        checkpoint[STATE_KEY] = {"rows": writer.all_rows() if writer is not None else [], "rng": rng_state(),
                                 "epoch_sums": _epoch_sums(trainer) if mid_epoch else {},
                                 # the epoch-end row, logged only after this checkpoint is written
                                 "pending_rows": [] if mid_epoch or writer is None else epoch_end_rows(trainer)}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY) or {}
        self._rows = list(state.get("rows", []))
        self._rng = state.get("rng")
        self._sums = dict(state.get("epoch_sums", {}))
        self._pending = list(state.get("pending_rows", []))
        self._step = int(checkpoint.get("global_step", 0))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the sanity check and the first iterator, before the first batch is moved and augmented."""
        writer = run_writer(trainer)
        if self._rows is not None and writer is not None:
            on_disk = read_metric_rows(Path(writer.metrics_file_path))
            writer.restore(rows_to_keep(self._rows, on_disk, self._step, self._pending))
        self._rows = None
        if self._rng is not None:
            if trainer.world_size == 1:
                set_rng_state(self._rng)
            else:  # a checkpoint holds rank 0's state only: give each rank its own stream again
                pl.seed_everything(torch.initial_seed() % 2**31 + 1000 * trainer.global_rank + trainer.global_step,
                                   workers=True, verbose=False)
        self._rng = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """First batch after a mid-epoch resume: add the epoch's running sums from before the interruption,
        so the epoch means in metrics.csv cover the whole epoch (as x + y == y + x, bit-identical)."""
        if self._sums and trainer.world_size == 1:
            _add_epoch_sums(trainer, self._sums)
        self._sums = {}


def _mid_epoch(trainer: pl.Trainer) -> bool:
    epochs = trainer.fit_loop.epoch_progress.current
    return epochs.started > epochs.processed


def _epoch_sums(trainer: pl.Trainer) -> dict[str, Any]:
    """The running epoch aggregates of the values logged in training (Lightning's result collection)."""
    out: dict[str, Any] = {}
    try:
        results = trainer.fit_loop.epoch_loop._results
        for key, metric in results.items():
            if not (getattr(metric, "is_tensor", False) and metric.meta.on_epoch):
                continue
            entry = {"value": metric.value.detach().cpu().clone()}
            if metric.meta.is_mean_reduction:
                entry["count"] = metric.cumulated_batch_size.detach().cpu().clone()
            out[key] = entry
    except AttributeError:  # another Lightning layout: the resumed epoch's means then cover its later batches
        return {}
    return out


def _add_epoch_sums(trainer: pl.Trainer, sums: dict[str, Any]) -> None:
    try:
        results = trainer.fit_loop.epoch_loop._results
        for key, entry in sums.items():
            metric = results.get(key)
            if metric is None or not getattr(metric, "is_tensor", False):
                continue
            saved = entry["value"].to(metric.value.device, metric.value.dtype)
            if metric.meta.is_mean_reduction:
                metric.value = metric.value + saved
                metric.cumulated_batch_size = metric.cumulated_batch_size + entry["count"].to(
                    metric.cumulated_batch_size.device)
            elif metric.meta.is_max_reduction or metric.meta.is_min_reduction:
                metric.value = metric.meta.reduce_fx(metric.value, saved)
            elif metric.meta.is_sum_reduction:
                metric.value = metric.value + saved
    except AttributeError:
        return

"""What makes a killed run resumable without loss: atomic checkpoints, a metrics.csv that survives
`--resume`, the random state and data order of an interrupted epoch, and the checks a resume needs.

How a resumed run ends where the uninterrupted one ends:

- checkpoints are written every N optimiser steps and at every epoch end, *after* the epoch-end work
  (validation, `on_train_epoch_end` hooks, the epoch's learning-rate step); a step checkpoint never falls
  on an epoch's last batch, so a resume never lands between a last batch and its epoch-end work;
- the training order is a permutation drawn from (seed, epoch) alone, and a resume in the middle of an
  epoch skips the batches that epoch already ran (`EpochSampler`; single-process runs);
- the random state (torch, CUDA, numpy, random) is stored in each checkpoint and put back when training
  starts again, before the first batch is augmented (`RunState`; single-process runs); data loaders draw
  their worker seeds from their own generator, never from the global stream;
- metrics.csv keeps every row of the steps the checkpoint covers (`RunCSVLogger`): rows logged before a
  checkpoint travel inside it, rows logged after it and before the kill that belong to finished work are
  taken back from the file, and rows of work that will be redone are dropped.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import Sampler

from .errors import RepFusionError
from .io import atomic_write, load_checkpoint, tidy_run_dir

STATE_KEY = "repfusion_run_state"


def is_rank_zero() -> bool:
    """Rank 0 of a multi-process run (read from the launcher's environment), or a single process."""
    return getattr(rank_zero_only, "rank", 0) == 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the checkpoint, fsync, rename: never a partial .ckpt.

    Lightning's own atomic save writes through a temporary file in the system temp folder and moves it
    over, which is a copy (not atomic) when that folder is on another file system, and leaves owner-only
    (0600) files and stray temporary files after a kill.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        atomic_write(path, write)


class EpochCheckpoint(ModelCheckpoint):
    """last.ckpt every N steps (never on an epoch's last batch) and at every epoch end, after its work."""

    def __init__(self, dirpath: Path, every_n_train_steps: int | None) -> None:
        super().__init__(dirpath=dirpath, filename="last", save_last=False, save_top_k=1,
                         every_n_train_steps=every_n_train_steps, save_on_train_epoch_end=True,
                         enable_version_counter=False)
        self._every_n_epochs = 1  # and at every epoch end (Lightning's constructor takes one trigger only)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch or progress.current.ready >= trainer.num_training_batches:
            return  # the epoch-end checkpoint follows, once the epoch's work is done
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # also when a step checkpoint was written at this very step (training stopped there by max_steps):
        # the epoch-end one holds the epoch's records too
        self._last_global_step_saved = -1
        super().on_train_epoch_end(trainer, pl_module)


def _float_or_text(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def read_metric_rows(path: Path) -> list[dict[str, Any]]:
    """The well-formed rows of a metrics.csv (a row cut short by a kill is left out)."""
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    rows = []
    reader = csv.reader(io.StringIO(complete))
    header = next(reader, None)
    if not header or "step" not in header:
        return []
    for values in reader:
        if len(values) != len(header):
            continue
        row = {k: _float_or_text(v) for k, v in zip(header, values) if v != ""}
        if isinstance(row.get("step"), int):
            rows.append(row)
    return rows


class RunMetricsWriter(ExperimentWriter):
    """metrics.csv that is never deleted behind the user's back and is rebuilt exactly on resume.

    Lightning's writer deletes an existing metrics.csv when it starts; this one starts empty (a fresh run
    overwrites the file on its first write) or from the rows `restore` gives it (a resume).
    """

    def __init__(self, log_dir: str) -> None:
        self.rows: list[dict[str, Any]] = []  # every row written so far, in order
        self._synced = False  # the file on disk holds exactly self.rows
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        pass

    def restore(self, rows: list[dict[str, Any]]) -> None:
        self.rows = [dict(r) for r in rows]
        self.metrics = []
        self.metrics_keys = sorted(set().union(*self.rows)) if self.rows else []
        self._rewrite()

    def all_rows(self) -> list[dict[str, Any]]:
        return [*self.rows, *self.metrics]

    def _rewrite(self) -> None:
        keys = self.metrics_keys

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.rows)

        if keys:
            atomic_write(self.metrics_file_path, write)
        self._synced = True

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        fresh, self.metrics = self.metrics, []
        self.rows += fresh
        if new_keys or not self._synced or not Path(self.metrics_file_path).is_file():
            self._rewrite()
            return
        # the new rows go out in one append write(): a kill cannot cut a write() to a local file in half
        text = io.StringIO()
        csv.DictWriter(text, fieldnames=self.metrics_keys).writerows(fresh)
        data = text.getvalue().encode("utf-8")
        fd = os.open(self.metrics_file_path, os.O_WRONLY | os.O_APPEND)
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)


class RunCSVLogger(CSVLogger):
    """CSVLogger writing RUN_DIR/metrics.csv through `RunMetricsWriter`."""

    @property
    def experiment(self) -> RunMetricsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.log_dir, exist_ok=True)
            self._experiment = RunMetricsWriter(log_dir=self.log_dir)
        return self._experiment


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": None if gauss is None else float(gauss)}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss"]))


class RunState(Callback):
    """Carries metrics rows and the random state through checkpoints; puts them back on resume."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] | None = None
        self._rng: dict[str, Any] | None = None
        self._sums: dict[str, Any] = {}
        self._step = 0

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        writer = _writer(trainer)
        checkpoint[STATE_KEY] = {"rows": writer.all_rows() if writer is not None else [], "rng": _rng_state(),
                                 "epoch_sums": _epoch_sums(trainer) if _mid_epoch(trainer) else {}}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY) or {}
        self._rows = list(state.get("rows", []))
        self._rng = state.get("rng")
        self._sums = dict(state.get("epoch_sums", {}))
        self._step = int(checkpoint.get("global_step", 0))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the sanity check and the first iterator, before the first batch is moved and augmented."""
        writer = _writer(trainer)
        if self._rows is not None and writer is not None:
            saved = self._rows
            on_disk = read_metric_rows(Path(writer.metrics_file_path))
            # rows of finished work logged after the checkpoint was written (its last step's and epoch's rows)
            after = [r for r in on_disk[len(saved):] if r["step"] < self._step] if len(on_disk) >= len(saved) else []
            writer.restore([*saved, *after])
        self._rows = None
        if self._rng is not None:
            if trainer.world_size == 1:
                _set_rng_state(self._rng)
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


def _writer(trainer: pl.Trainer) -> RunMetricsWriter | None:
    for logger in trainer.loggers:
        if isinstance(logger, RunCSVLogger) and trainer.is_global_zero:
            return logger.experiment
    return None


class EpochSampler(Sampler[int]):
    """Shuffled training order drawn from (seed, epoch) alone, resumable in the middle of an epoch.

    The epoch and the batches it already trained are read from the trainer's progress counters (restored
    from the checkpoint) when the epoch's iterator is created, so a resumed epoch continues with the
    batches the uninterrupted run would have drawn next.
    """

    def __init__(self, size: int, batch_size: int, seed: int,
                 trainer: Callable[[], pl.Trainer | None] | None = None) -> None:
        self.size, self.batch_size, self.seed, self.trainer = size, batch_size, seed, trainer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained) according to the trainer, else (set_epoch's value, 0)."""
        trainer = self.trainer() if self.trainer is not None else None
        try:
            epochs = trainer.fit_loop.epoch_progress.current  # type: ignore[union-attr]
            batches = trainer.fit_loop.epoch_loop.batch_progress.current  # type: ignore[union-attr]
        except (AttributeError, RuntimeError):
            return self.epoch, 0
        in_progress = epochs.started > epochs.processed  # an epoch began and has not finished
        return int(epochs.processed), int(batches.processed) if in_progress else 0

    def __iter__(self) -> Iterator[int]:
        epoch, done = self.position()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        return iter(order[done * self.batch_size:])


def resume_path(run_dir: Path, resume: bool, module: torch.nn.Module | None = None) -> str | None:
    """last.ckpt of an interrupted run when --resume is given, checked before anything is written.

    Without --resume a folder that holds a checkpoint is refused (no silent overwrite). With --resume:
    a run stopped before its first checkpoint starts again from the beginning (nothing was lost), a
    folder that never held a run is refused, and the checkpoint must load with weights_only=True and
    fit the model the config builds.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    if not resume:
        if last.exists():
            raise RepFusionError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir."
            )
        return None
    if not last.exists():
        if (run_dir / "config.yaml").is_file():
            if is_rank_zero():
                print(f"note: {run_dir} has no checkpoint yet (the run stopped before its first one); "
                      "starting it from the beginning.", file=sys.stderr)
            return None
        raise RepFusionError(f"--resume was given but {run_dir} holds no run (no checkpoints/last.ckpt); "
                             "drop --resume to start one.")
    state = load_checkpoint(last)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict) or "loops" not in state:
        raise RepFusionError(f"Checkpoint {last} is not a Lightning checkpoint of a repfusion run; "
                             "start a new --run-dir.")
    if module is not None:
        check_fits(state["state_dict"], module.state_dict(), last, run_dir)
    return str(last)


def check_fits(saved: dict[str, Any], own: dict[str, torch.Tensor], path: Path, run_dir: Path) -> None:
    unexpected = [k for k in saved if k not in own]
    missing = [k for k in own if k not in saved]
    mismatched = [k for k in saved if k in own and hasattr(saved[k], "shape")
                  and tuple(saved[k].shape) != tuple(own[k].shape)]
    if not (unexpected or missing or mismatched):
        return
    if mismatched:
        k = mismatched[0]
        detail = f"'{k}' is {list(saved[k].shape)} in the checkpoint but {list(own[k].shape)} now"
    else:
        k = (unexpected or missing)[0]
        detail = f"'{k}' is {'only in the checkpoint' if unexpected else 'missing from the checkpoint'}"
    raise RepFusionError(
        f"Checkpoint {path} does not fit the model this config builds ({detail}); resume with the run's own "
        f"config ({run_dir / 'config.yaml'}) or start a new --run-dir."
    )


def prepare_run(run_dir: Path, resume: bool, module: torch.nn.Module | None = None,
                on_start: Callable[[], None] | None = None) -> str | None:
    """Every check first, then the first writes: tidy what a killed process left, then `on_start`
    (which writes config.yaml), all on rank 0 only. Returns the checkpoint to resume from, if any."""
    ckpt = resume_path(run_dir, resume, module)
    if is_rank_zero():
        tidy_run_dir(run_dir)
        if on_start is not None:
            on_start()
    return ckpt


def nonfinite_message(trainer: pl.Trainer, what: str, step: int | None = None, epoch: int | None = None) -> str:
    """What a NaN/inf stop leaves behind, said exactly: no checkpoint, or the last one and its magnitude.

    step/epoch: where it happened, when that was before now (default: the trainer's current step)."""
    step = trainer.global_step if step is None else step
    epoch = trainer.current_epoch if epoch is None else epoch
    where = f"{what} at step {step} (epoch {epoch}); the run stopped"
    last = None
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, EpochCheckpoint) and cb.dirpath:
            last = Path(cb.dirpath) / "last.ckpt"
    if last is None or not last.is_file():
        return (f"{where} before any checkpoint was written, so there is nothing to resume: lower optim.lr or "
                "check the data and start again.")
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
        step = int(state.get("global_step", -1))
        size = max((float(v.abs().max()) for v in state["state_dict"].values()
                    if torch.is_tensor(v) and v.is_floating_point() and v.numel()), default=0.0)
    except Exception:
        return f"{where}; {last} is kept: lower optim.lr or check the data and start again in a new --run-dir."
    shown = f"{size:.2g}" if math.isfinite(size) else str(size)
    return (f"{where}; the last checkpoint ({last}, step {step}, largest weight {shown}) is kept, but resuming "
            "restores its learning rate and repeats the same steps: lower optim.lr or check the data and start "
            "again in a new --run-dir.")


def restore_finished(module: pl.LightningModule, ckpt_path: str | None, max_epochs: int, max_steps: int) -> bool:
    """When `ckpt_path` is the checkpoint written at the very end of training (a kill fell during the export),
    put its weights (the EMA average, as exported) and records into `module` and return True: there is
    nothing left to train, and Lightning would skip its end-of-training hooks. Otherwise return False."""
    if ckpt_path is None:
        return False
    state = load_checkpoint(ckpt_path)
    try:
        epochs = state["loops"]["fit_loop"]["epoch_progress"]["current"]
        step = int(state.get("global_step", 0))
        epoch_done = epochs["started"] == epochs["processed"]
        finished = (0 < max_steps <= step) or (epoch_done and 0 < max_epochs <= int(epochs["processed"]))
    except (KeyError, TypeError):
        return False
    if not finished:
        return False
    module.load_state_dict(state["state_dict"])
    module.on_load_checkpoint(state)
    if is_rank_zero():
        print(f"note: {ckpt_path} is the end of training; exporting from it without training again.",
              file=sys.stderr)
    return True

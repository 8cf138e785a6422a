"""Checkpoints that are never half written, and written where a resume cannot land between a last batch and
its epoch-end work."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..io import atomic_write


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

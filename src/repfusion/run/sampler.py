"""The training order of an epoch, drawn from (seed, epoch) alone, so an interrupted epoch resumes where it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning.pytorch as pl
import torch
from torch.utils.data import Sampler


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

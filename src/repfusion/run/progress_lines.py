"""Progress for a stdout that is not a terminal (a log file, a pipe): whole lines, never a carriage return.

On a terminal `build_trainer` uses Lightning's bars; elsewhere a bar redraws itself with carriage returns and a
log file fills with thousands of fragments, so `LineProgress` prints one line at the end of each training epoch
(epoch n/N, the time this invocation has trained, an estimate of what is left, and the metrics the module shows
on its bar) and, within an epoch longer than `every_s` seconds, a line every `every_s` seconds. Validation and
test print nothing: their results are in metrics.csv and in the verb's own summary. `--trainer.progress false`
still means no progress at all.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

MAX_METRICS = 6  # a line stays readable; the rest are in metrics.csv


def stdout_is_terminal() -> bool:
    """sys.stdout is a terminal (False where it is a file, a pipe, a capture, or missing)."""
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError):  # no stdout (pythonw), a replaced one without isatty, a closed one
        return False


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour."""
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def shown_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """What the bar would show, as an epoch line wants it: the epoch's train/loss for the last step's loss, no
    `_step` values, at most MAX_METRICS."""
    metrics: dict[str, float] = {}
    for name, value in trainer.progress_bar_metrics.items():
        if not name.endswith("_step"):
            metrics[name.removesuffix("_epoch")] = float(value)
    epoch_loss = trainer.callback_metrics.get("train/loss")
    if epoch_loss is not None and getattr(epoch_loss, "numel", lambda: 1)() == 1:
        metrics.pop("loss", None)  # one step's loss; the epoch's mean says more
        metrics = {"train/loss": float(epoch_loss), **{k: v for k, v in metrics.items() if k != "train/loss"}}
    return dict(list(metrics.items())[:MAX_METRICS])


class LineProgress(ProgressBar):
    """One plain line per training epoch (and every `every_s` seconds within a long one); see the module."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._enabled = True
        self._began = self._last = 0.0
        self._first_epoch = self._first_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, line: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(line, file=sys.stdout, flush=True)  # sys.stdout as it is now: a redirection is honoured

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._began = self._last = time.monotonic()
        self._first_epoch, self._first_step = trainer.current_epoch, trainer.global_step  # a resume starts later

    def _done_and_left(self, trainer: pl.Trainer, epochs_done: float) -> tuple[float, float | None]:
        """Seconds this invocation has trained, and an estimate of the seconds left (None when unknown)."""
        elapsed = time.monotonic() - self._began
        fractions = []  # work done this invocation / work it has left, by epochs and by steps (the first to end wins)
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and epochs_done > self._first_epoch:
            fractions.append((trainer.max_epochs - epochs_done) / (epochs_done - self._first_epoch))
        if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step > self._first_step:
            fractions.append((trainer.max_steps - trainer.global_step) / (trainer.global_step - self._first_step))
        return elapsed, (max(0.0, min(fractions)) * elapsed if fractions else None)

    def _epochs(self, trainer: pl.Trainer, epoch: int) -> str:
        total = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        return f"epoch {epoch}/{total}" if total is not None else f"epoch {epoch}"

    def _timing(self, elapsed: float, left: float | None) -> str:
        return f"{clock(elapsed)} elapsed" + (f", about {clock(left)} left" if left is not None else "")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every_s <= 0 or time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        batches = self.total_train_batches
        known = isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0
        of = f"/{int(batches)}" if known else ""
        epochs_done = trainer.current_epoch + ((batch_idx + 1) / batches if known else 0.0)
        elapsed, left = self._done_and_left(trainer, epochs_done)
        self._write(f"{self._epochs(trainer, trainer.current_epoch + 1)}, batch {batch_idx + 1}{of}: "
                    f"{self._timing(elapsed, left)}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()
        epoch = trainer.current_epoch + 1
        elapsed, left = self._done_and_left(trainer, float(epoch))
        metrics = "  ".join(f"{name} {value:.4g}" for name, value in shown_metrics(trainer).items())
        self._write(f"{self._epochs(trainer, epoch)}: {self._timing(elapsed, left)}" + (f"  {metrics}" if metrics
                                                                                          else ""))

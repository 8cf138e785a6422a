"""What a NaN/inf stop leaves behind, in one sentence."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch

from .checkpoint import EpochCheckpoint


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

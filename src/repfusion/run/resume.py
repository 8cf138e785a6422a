"""The checks a run makes before its first write, and where it resumes from."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from ..errors import RepFusionError
from ..io import load_checkpoint, tidy_run_dir
from .lock import lock_run_dir
from .state import mark_finished


def is_rank_zero() -> bool:
    """Rank 0 of a multi-process run (read from the launcher's environment), or a single process."""
    return getattr(rank_zero_only, "rank", 0) == 0


def resume_path(run_dir: Path, resume: bool, module: torch.nn.Module | None = None, quiet: bool = False) -> str | None:
    """last.ckpt of an interrupted run when --resume is given, checked before anything is written.

    Without --resume a folder that holds a checkpoint is refused (no silent overwrite). With --resume:
    a run stopped before its first checkpoint starts again from the beginning (nothing was lost), a
    folder that never held a run is refused, and the checkpoint must load with weights_only=True and
    fit the model the config builds. `quiet`: no note (the check is being repeated).
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
            if is_rank_zero() and not quiet:
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
    """Every check first, then the first writes, all on rank 0 only: take the run folder's lock (a second
    run in the same folder is refused; `run.lock`), check again now that no other run can change the folder,
    tidy what a killed process left, then `on_start` (which writes config.yaml). Returns the checkpoint to
    resume from, if any. The lock is held until the run's module is gone or the process ends."""
    ckpt = resume_path(run_dir, resume, module)
    if is_rank_zero():
        lock_run_dir(run_dir, owner=module)
        ckpt = resume_path(run_dir, resume, module, quiet=True)
        tidy_run_dir(run_dir)
        if on_start is not None:
            on_start()
    return ckpt


def restore_finished(module: pl.LightningModule, ckpt_path: str | None, max_epochs: int, max_steps: int) -> bool:
    """When `ckpt_path` is the checkpoint written at the very end of training (a kill fell during the export),
    put its weights (the EMA average, as exported) and records into `module` and return True: there is
    nothing left to train, and Lightning would skip its end-of-training hooks. A Trainer that then tests
    `module` starts at the run's last step and keeps its metrics.csv rows (`run.state.RunState.setup`).
    Otherwise return False."""
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
    mark_finished(module, state)
    if is_rank_zero():
        print(f"note: {ckpt_path} is the end of training; exporting from it without training again.",
              file=sys.stderr)
    return True

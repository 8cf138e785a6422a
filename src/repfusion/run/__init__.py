"""What makes a run safe to kill and to resume without loss, one concept per module:

- `checkpoint`: atomic checkpoint writes, written every N optimiser steps and at every epoch end, *after* the
  epoch-end work (validation, `on_train_epoch_end` hooks, the epoch's learning-rate step); a step checkpoint
  never falls on an epoch's last batch, so a resume never lands between a last batch and its epoch-end work;
- `sampler`: the training order is a permutation drawn from (seed, epoch) alone, and a resume in the middle of
  an epoch skips the batches that epoch already ran (`EpochSampler`; single-process runs);
- `random_state`: the random state (torch, CUDA, numpy, random) as checkpoint-safe data; `state.RunState` stores
  it in each checkpoint and puts it back when training starts again, before the first batch is augmented
  (single-process runs); data loaders draw their worker seeds from their own generator;
- `metrics_csv`: metrics.csv keeps every row of the steps the checkpoint covers: rows logged before a
  checkpoint travel inside it, rows logged after it and before the kill that belong to finished work are
  taken back from the file, and rows of work that will be redone are dropped, also when a run killed in its
  export resumes at its end;
- `loggers`: metrics.csv plus TensorBoard (default when installed), W&B or MLflow, Lightning's loggers; a resumed
  run's TensorBoard folder shows metrics.csv's rows again, none twice;
- `lock`: one run per run folder, an exclusive flock held for the run's life;
- `resume`: the checks before the first write (`prepare_run`) and the end-of-training restore;
- `nonfinite`: the sentence a NaN/inf stop ends with.
"""

from .checkpoint import AtomicCheckpointIO, EpochCheckpoint
from .lock import LOCK_NAME, lock_run_dir, release_run_dir
from .metrics_csv import RunCSVLogger, RunMetricsWriter, read_metric_rows
from .nonfinite import nonfinite_message
from .resume import check_fits, is_rank_zero, prepare_run, restore_finished, resume_path
from .sampler import EpochSampler
from .state import STATE_KEY, RunState

__all__ = ["LOCK_NAME", "STATE_KEY", "AtomicCheckpointIO", "EpochCheckpoint", "EpochSampler", "RunCSVLogger",
           "RunMetricsWriter", "RunState", "check_fits", "is_rank_zero", "lock_run_dir", "nonfinite_message",
           "prepare_run", "read_metric_rows", "release_run_dir", "restore_finished", "resume_path"]

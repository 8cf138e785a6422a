"""metrics.csv that survives `--resume`: never deleted behind the user's back, rebuilt row for row.

Rows logged before a checkpoint travel inside it (`run.state.RunState`); rows logged after it and before a
kill that belong to finished work are taken back from the file (`rows_to_keep`); rows of work that will be
redone are dropped, so the redone work writes them again exactly once.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ..io import atomic_write


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


def rows_to_keep(saved: list[dict[str, Any]], on_disk: list[dict[str, Any]], step: int,
                 pending: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The rows a resume from a checkpoint at `step` starts from: the checkpoint's own rows, then the rows
    of finished work logged after it: the epoch-end row Lightning logs (at step - 1) after the epoch-end
    checkpoint, which the checkpoint carries as `pending` (a kill may fall before it reaches the file, e.g.
    while best.ckpt is written), and any other such row the file gained. Rows at `step` or later (work that
    is redone, a test that runs again) are dropped."""
    after = [r for r in on_disk[len(saved):] if r["step"] < step] if len(on_disk) >= len(saved) else []
    missing = [r for r in pending or [] if r not in after]
    return [*saved, *missing, *after]


def epoch_end_rows(trainer: pl.Trainer) -> list[dict[str, Any]]:
    """The row Lightning logs right after the epoch-end hooks (the epoch means of the values logged in
    training), computed as Lightning computes it: called from a checkpoint written in those hooks."""
    try:
        metrics = trainer.fit_loop.epoch_loop._results.metrics(False)["log"]
    except (AttributeError, KeyError, TypeError):  # another Lightning layout: the file's copy is the only one
        return []
    if not metrics:
        return []
    row: dict[str, Any] = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}  # as Lightning
    step = row.pop("step", None)
    row.setdefault("epoch", trainer.current_epoch)
    row["step"] = int(step) if step is not None else trainer.fit_loop.epoch_loop._batches_that_stepped - 1
    return [row]


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


def run_writer(trainer: pl.Trainer) -> RunMetricsWriter | None:
    """The trainer's metrics.csv writer (rank 0 only; other ranks write no file)."""
    for logger in trainer.loggers:
        if isinstance(logger, RunCSVLogger) and trainer.is_global_zero:
            return logger.experiment
    return None

"""Issue 25, item 2: progress that suits where it goes. Bars on a terminal; where stdout is a log file or a pipe,
one plain line per epoch (and every so many seconds within a long one) and no carriage return anywhere;
`--trainer.progress false` is no progress at all."""

import contextlib
import io
import re
import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from repfusion.run.progress_lines import LineProgress, clock, stdout_is_terminal
from repfusion.training import TrainerConfig, build_trainer


class Tiny(pl.LightningModule):
    """A linear classifier on 24 random points: the smallest training that logs like the tasks do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/top1", (self.net(x).argmax(1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/top1", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(24, 4, generator=g), torch.randint(0, 2, (24,), generator=g)),
                      batch_size=8)


def train(tmp_path, progress: bool = True, epochs: int = 3) -> tuple[str, str, pl.Trainer]:
    """fit, validate and test with stdout and stderr redirected (not terminals), as into a log file."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        trainer = build_trainer(TrainerConfig(max_epochs=epochs, progress=progress, ema_decay=None, logger="csv",
                                              accelerator="cpu", devices=1, log_every_n_steps=1), tmp_path / "run")
        model = Tiny()
        trainer.fit(model, loader(), loader())
        trainer.validate(model, loader())
        trainer.test(model, loader())
    return out.getvalue(), err.getvalue(), trainer


def test_a_stdout_that_is_not_a_terminal_gets_one_line_an_epoch_and_no_carriage_return(tmp_path):
    out, err, trainer = train(tmp_path)
    assert isinstance(trainer.progress_bar_callback, LineProgress)
    assert "\r" not in out and "\r" not in err
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    for line in lines:  # elapsed, an estimate left, the epoch's mean train loss (not one step's) and the val metric
        assert re.search(r"\d+:\d\d elapsed, about \d+:\d\d left", line), line
        assert re.search(r"train/loss \d", line) and re.search(r"val/top1 \d", line), line
        assert " loss " not in f" {line} ".replace("train/loss", ""), line
    assert lines[-1].split("about ")[1].startswith("0:00 left")


def test_progress_false_is_no_progress_at_all(tmp_path):
    out, err, trainer = train(tmp_path, progress=False, epochs=1)
    assert trainer.progress_bar_callback is None
    assert "epoch " not in out and "\r" not in out + err and "it/s" not in out + err


def test_a_terminal_keeps_the_bars(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert stdout_is_terminal()
    trainer = build_trainer(TrainerConfig(progress=True), tmp_path / "run")
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert isinstance(build_trainer(TrainerConfig(progress=True), tmp_path / "run").progress_bar_callback,
                      LineProgress)


def test_a_missing_or_closed_stdout_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)
    assert not stdout_is_terminal()
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    assert not stdout_is_terminal()


def test_a_long_epoch_also_gets_a_line_every_few_seconds(tmp_path, monkeypatch):
    """every_s=0 would mean never; a tiny every_s gives a batch line after each batch, still whole lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        trainer = pl.Trainer(max_epochs=1, callbacks=[LineProgress(every_s=1e-9)], logger=False,
                             enable_checkpointing=False, enable_model_summary=False, accelerator="cpu", devices=1)
        trainer.fit(Tiny(), loader())
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/1, batch 1/3", "epoch 1/1, batch 2/3",
                                                      "epoch 1/1, batch 3/3", "epoch 1/1"]
    assert "\r" not in out.getvalue()


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0:00"), (59.6, "1:00"), (754, "12:34"), (3723, "1:02:03")])
def test_the_clock(seconds, shown):
    assert clock(seconds) == shown

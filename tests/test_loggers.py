"""Issue 18, item 4: `--trainer.logger` takes csv, tensorboard, wandb, mlflow (Lightning's loggers), TensorBoard
is on by default when installed, metrics.csv always stays, and TensorBoard shows metrics.csv's names and rows,
a resume included, plus the distillation's timestep histogram (issue 25, item 6: counts of draws, at the
optimiser step)."""

import csv
import sys
from pathlib import Path

import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from repfusion.cli import main
from repfusion.run import RunCSVLogger
from repfusion.run.loggers import build_loggers, logger_names
from repfusion.training import TrainerConfig, build_trainer

from test_resume import FINETUNE, RUN, Interrupted, error_lines, global_step, run_until


def without(monkeypatch, *packages: str) -> None:
    """The packages fail to import, as on a machine without them (None in sys.modules blocks the import)."""
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)


def test_without_tensorboard_the_default_is_csv_alone_and_silent(monkeypatch, tmp_path, capsys, caplog):
    without(monkeypatch, "tensorboard", "tensorboardX")
    assert logger_names(None) == ["csv"]
    trainer = build_trainer(TrainerConfig(progress=False), tmp_path / "run")
    assert [type(lg) for lg in trainer.loggers] == [RunCSVLogger]
    out = capsys.readouterr()
    shown = out.out + out.err + caplog.text
    assert "tensorboard" not in shown.lower() and "tip" not in shown.lower() and "litlogger" not in shown.lower()
    assert not (tmp_path / "run").exists()  # building the Trainer writes nothing


def test_with_tensorboard_the_default_adds_it_and_csv_always_stays(tmp_path):
    pytest.importorskip("tensorboard")
    assert logger_names(None) == ["csv", "tensorboard"]
    assert logger_names("tensorboard") == logger_names(["tensorboard", "csv", "tensorboard"]) == ["csv", "tensorboard"]
    loggers = build_loggers(None, tmp_path)
    assert isinstance(loggers[0], RunCSVLogger) and isinstance(loggers[1], TensorBoardLogger)
    assert Path(loggers[1].log_dir) == tmp_path / "tensorboard"


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_logger_whose_package_is_missing_is_one_sentence_before_any_write(monkeypatch, tmp_path, capsys, name):
    without(monkeypatch, *(["tensorboard", "tensorboardX"] if name == "tensorboard" else [name]))
    run_dir = tmp_path / "run"
    assert main(["distill", "--run-dir", str(run_dir), *RUN, "--trainer.logger", f"[csv,{name}]"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"pip install {name}" in lines[0] and "trainer.logger" in lines[0]
    assert not run_dir.exists()


def test_an_unknown_logger_names_the_valid_ones(tmp_path, capsys):
    assert main(["finetune", "--run-dir", str(tmp_path / "run"), "--trainer.logger", "tensorbord"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "'tensorbord'" in lines[0] and "tensorboard" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_flag_takes_one_name_or_a_list_and_help_lists_it(capsys):
    from repfusion.config import config_parser, parse_config
    from repfusion.tasks.finetune import FinetuneRun

    parser = config_parser("repfusion finetune", FinetuneRun, "")
    assert parse_config(parser, FinetuneRun, ["--trainer.logger", "csv"]).config.trainer.logger == "csv"
    assert parse_config(parser, FinetuneRun, ["--trainer.logger", "[csv]"]).config.trainer.logger == ["csv"]
    assert parse_config(parser, FinetuneRun, []).config.trainer.logger is None
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "--trainer.logger" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_wandb_and_mlflow_are_lightnings_loggers_writing_into_the_run_folder(monkeypatch, tmp_path, name):
    pytest.importorskip(name)
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    logger = build_loggers([name], tmp_path)[1]
    if name == "wandb":
        assert isinstance(logger, WandbLogger) and Path(logger.save_dir) == tmp_path
    else:
        assert isinstance(logger, MLFlowLogger) and logger._tracking_uri == (tmp_path / "mlruns").resolve().as_uri()


def csv_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as TensorBoard would show it: per column, (step, value) in order."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value != "":
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def tensorboard_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def assert_tensorboard_shows_metrics_csv(run_dir: Path):
    events = tensorboard_events(run_dir)
    expected = csv_series(run_dir)
    assert set(events.Tags()["scalars"]) == set(expected)  # the same names as metrics.csv
    for tag, rows in expected.items():  # the same rows: none lost in a kill, none twice after a resume
        shown = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in shown] == [s for s, _ in rows], tag
        assert [v for _, v in shown] == pytest.approx([v for _, v in rows], rel=1e-6), tag
    return events


def test_a_finished_finetune_resumed_shows_its_rows_once(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    assert main([*FINETUNE, "--run-dir", str(run_dir)]) == 0
    assert main([*FINETUNE, "--run-dir", str(run_dir), "--resume"]) == 0  # restored at its end: tests again
    assert any(tag.startswith("test/") for tag in assert_tensorboard_shows_metrics_csv(run_dir).Tags()["scalars"])


def test_tensorboard_shows_metrics_csv_and_the_timestep_histogram_across_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from repfusion.distill.module import Distillation

    run_dir = tmp_path / "run"
    args = ["distill", "--run-dir", str(run_dir), *RUN]
    original = Distillation.on_train_epoch_end

    def killed_before_the_epoch_end_checkpoint(self):
        original(self)  # epoch 0's validation rows and histogram reach TensorBoard, then the kill
        raise Interrupted(self.current_epoch)

    with monkeypatch.context() as m:
        m.setattr(Distillation, "on_train_epoch_end", killed_before_the_epoch_end_checkpoint)
        with pytest.raises(Interrupted):
            main(args)
    assert global_step(run_dir) == 2  # the mid-epoch checkpoint: epoch 0's end is redone
    assert tensorboard_events(run_dir).Histograms("train/t")  # what the redone epoch end logs again
    run_until(monkeypatch, [*args, "--resume"], 5)  # killed in epoch 1 (last.ckpt at step 4)
    assert main([*args, "--resume"]) == 0
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 3  # the same folder, continued
    events = assert_tensorboard_shows_metrics_csv(run_dir)
    assert {"train/entropy", "train/t_mean"} <= set(csv_series(run_dir))
    histograms = events.Histograms("train/t")
    # one per epoch, at the optimiser step of that epoch's train/ rows (3 steps an epoch: steps 2 and 5)
    assert [h.step for h in histograms] == [step for step, _ in csv_series(run_dir)["train/t_mean"]] == [2, 5]
    for h in histograms:  # counts of draws: 3 batches of 16 images, one t each
        buckets = h.histogram_value.bucket
        assert len(buckets) == 20 and all(n == int(n) for n in buckets) and sum(buckets) == 3 * 16
        assert h.histogram_value.num == 3 * 16


def test_an_older_checkpoint_without_counts_replays_its_shares_at_the_epochs_steps(tmp_path):
    """A checkpoint written before the counts were kept (t_history only) still loads; its epochs come back as
    their shares, at the step each epoch ended, and epochs trained after it get counts."""
    pytest.importorskip("tensorboard")
    from types import SimpleNamespace

    import torch

    from repfusion.distill.module import Distillation

    module = SimpleNamespace(global_rank=0, teacher=SimpleNamespace(num_timesteps=1000))
    shares = [[0.05] * 20, [0.1] * 10 + [0.0] * 10]
    Distillation.on_load_checkpoint(module, {"t_history": shares, "t_counts": torch.zeros(20)})
    assert module.t_draws == shares and module.t_steps == [-1, -1]
    module.t_draws.append([3.0] * 16 + [0.0] * 4)  # an epoch trained after the resume (on_train_epoch_end)
    module.t_steps.append(8)
    logger = TensorBoardLogger(save_dir=tmp_path, name="tensorboard", version="")
    module.trainer = SimpleNamespace(num_training_batches=3, accumulate_grad_batches=1, global_step=6,
                                     is_global_zero=True, loggers=[logger])
    Distillation.replay_summaries(module)
    logger.experiment.flush()
    histograms = tensorboard_events(tmp_path).Histograms("train/t")
    assert [h.step for h in histograms] == [2, 5, 8]
    assert [sum(h.histogram_value.bucket) for h in histograms] == pytest.approx([1.0, 1.0, 48.0])


def test_a_resume_may_change_the_loggers(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*FINETUNE, "--run-dir", str(run_dir), "--trainer.logger", "csv"]) == 0
    rows = (run_dir / "metrics.csv").read_text()
    assert not (run_dir / "tensorboard").exists()
    assert main([*FINETUNE, "--run-dir", str(run_dir), "--resume"]) == 0  # how it reports, not what it trains
    assert error_lines(capsys.readouterr().err) == [] and (run_dir / "metrics.csv").read_text() == rows

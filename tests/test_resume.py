"""Nothing already written is lost (issue 13, items 4-9 and 13): interrupted runs resume to exactly the
uninterrupted result, refused reruns leave the run folder as it was, exports replace atomically, and
outputs get normal permissions."""

import os
import shutil
import stat
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file

import repfusion.distill.run as distill_run
from repfusion.cli import main

RUN = ["--student.width", "0.125", "--data.batch_size", "16", "--trainer.progress", "false",
       "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
       "--trainer.checkpoint_every_n_steps", "2"]  # checkpoints at steps 2 (mid-epoch), 3 (epoch end), 4, 6


class Interrupted(Exception):
    """Stands in for a kill: raised as a step is about to start, after the checkpoints written before it."""


class StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Interrupted(self.step)


def run_until(monkeypatch, args, step):
    original = distill_run.build_trainer

    def with_stop(cfg, run_dir, monitor=None, mode="max", callbacks=None):
        return original(cfg, run_dir, monitor, mode, [*(callbacks or []), StopAt(step)])

    with monkeypatch.context() as m:
        m.setattr(distill_run, "build_trainer", with_stop)
        with pytest.raises(Interrupted):
            main(args)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def global_step(run_dir: Path) -> int:
    return int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])


def student(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "student" / "diffusion_pytorch_model.safetensors")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One uninterrupted run (written under umask 022), shared by the tests that compare or rerun."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    old = os.umask(0o022)
    try:
        assert main(["distill", "--run-dir", str(run_dir), *RUN]) == 0
    finally:
        os.umask(old)
    return run_dir


def test_interrupted_at_epoch_end_and_mid_epoch_ends_like_the_uninterrupted_run(finished, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    args = ["distill", "--run-dir", str(run_dir), *RUN]
    run_until(monkeypatch, args, 3)  # last.ckpt: the end of epoch 0 (step 3), written after its epoch-end work
    assert global_step(run_dir) == 3 and (run_dir / "metrics.csv").read_text().count("\n") == 3
    run_until(monkeypatch, [*args, "--resume"], 5)  # last.ckpt: step 4, in the middle of epoch 1
    assert global_step(run_dir) == 4
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3  # epoch 0's rows survived the resume
    assert main([*args, "--resume"]) == 0
    assert global_step(run_dir) == global_step(finished) == 6  # each step ran once
    ours, reference = student(run_dir), student(finished)
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert (run_dir / "metrics.csv").read_text() == (finished / "metrics.csv").read_text()  # every row, same values
    assert (run_dir / "curves.png").stat().st_size > 0
    timesteps = __import__("json").loads((run_dir / "timesteps.json").read_text())
    assert len(timesteps["history"]) == 2  # one record per epoch, none lost or repeated


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    args = ["distill", "--run-dir", str(run_dir), *RUN[:-2], "--trainer.max_epochs", "1"]  # epoch-end checkpoint only
    run_until(monkeypatch, args, 1)
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "checkpoints" / "last.ckpt").exists()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "starting it from the beginning" in err and error_lines(err) == []
    assert global_step(run_dir) == 3 and (run_dir / "student").is_dir()


def test_resume_of_a_folder_that_never_held_a_run_is_refused_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    assert main(["distill", "--run-dir", str(run_dir), "--resume", *RUN]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "holds no run" in err[0]
    assert list(run_dir.iterdir()) == []


def test_a_kill_in_the_export_resumes_to_the_same_student(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    shutil.rmtree(run_dir / "student")
    staging = run_dir / ".~repfusion-student.k1ll3d.staging"  # what a kill in the middle of the export leaves
    staging.mkdir()
    (staging / "config.json").write_text("{")
    users = user_files(run_dir)
    assert main(["distill", "--run-dir", str(run_dir), "--resume", *RUN]) == 0
    assert "end of training" in capsys.readouterr().err
    ours, reference = student(run_dir), student(finished)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert not staging.exists() and global_step(run_dir) == 6
    assert (run_dir / "metrics.csv").read_text() == (finished / "metrics.csv").read_text()
    assert all(path.exists() for path in users)  # the tidy-up removed only what the tool itself had made


@pytest.mark.parametrize("change", [
    [],  # a finished run rerun without --resume
    ["--optim.lr", "0.5"],
    ["--resume", "--optim.lr", "0.5"],
    ["--resume", "--student.width", "0.25"],
    ["--resume", "--teacher.layer", "mid_block.resnet.1.conv2"],
])
def test_refused_reruns_leave_the_run_folder_untouched(finished, tmp_path, capsys, change):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = snapshot(run_dir)
    assert main(["distill", "--run-dir", str(run_dir), *RUN, *change]) == 1
    assert len(error_lines(capsys.readouterr().err)) == 1
    assert snapshot(run_dir) == before  # config.yaml, metrics.csv, checkpoints: byte for byte


def test_resume_with_a_model_that_does_not_fit_the_checkpoint_is_one_sentence(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "config.yaml").unlink()  # without the saved config, the checkpoint itself is checked
    before = snapshot(run_dir)
    width = RUN.index("--student.width") + 1
    args = [*RUN[:width], "0.25", *RUN[width + 1:]]
    assert main(["distill", "--run-dir", str(run_dir), "--resume", *args]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "does not fit the model" in err[0] and "in the checkpoint but" in err[0]
    assert snapshot(run_dir) == before


def test_outputs_have_the_permissions_of_a_normal_write(finished):
    for path in [finished, *finished.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    # no staging folder or temporary file left; the run folder's lock file stays (see repfusion.run.lock)
    assert [str(p.relative_to(finished)) for p in finished.rglob(".*")] == [".repfusion.lock"]


def test_folder_swap_interrupted_between_renames_is_recovered(tmp_path, monkeypatch):
    from repfusion import io

    final = tmp_path / "student"
    final.mkdir()
    (final / "w").write_text("old")
    new = io.staging_dir(final)
    (new / "w").write_text("new")
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)  # a system without an atomic exchange
    real_replace = os.replace

    def killed_after_first_rename(src, dst):
        real_replace(src, dst)
        if Path(dst).name == ".~repfusion-student.old":
            raise KeyboardInterrupt  # the kill, between the two renames

    monkeypatch.setattr(io.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        io.replace_dir(new, final)
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert not final.exists()
    io.tidy_run_dir(tmp_path)
    assert (final / "w").read_text() == "old"  # the previous export is back, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_folder_swap_is_one_atomic_exchange_and_tidy_removes_leftovers(tmp_path):
    from repfusion import io

    final = tmp_path / "model"
    final.mkdir()
    (final / "w").write_text("old")
    new = io.staging_dir(final)
    (new / "w").write_text("new")
    io.replace_dir(new, final)
    assert (final / "w").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / ".~repfusion-model.abc123.staging").mkdir()  # staging folder of a killed export
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".~repfusion-last.ckpt.x1y2.tmp").write_bytes(b"partial")  # a checkpoint write cut
    (tmp_path / ".~repfusion-metrics.csv.q.tmp").write_text("partial")
    users = user_files(tmp_path)
    io.tidy_run_dir(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == sorted(["checkpoints", "model", "model/w", *(str(p.relative_to(tmp_path)) for p in users)])


def user_files(run_dir: Path) -> list[Path]:
    """Files and folders of a user's in a run folder, named like what the tool used to tidy (issue 19, item 6)."""
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    made = [run_dir / ".draft.tmp", run_dir / ".model.backup-2024" / "weights.bin", run_dir / ".teacher.pretrained",
            run_dir / "checkpoints" / ".important.tmp", run_dir / ".student.old" / "w", run_dir / ".repfusion-notes.tmp"]
    for path in made:
        if path.suffix or path.name == "w":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("mine")
        else:
            path.mkdir()
    return [*made, run_dir / ".model.backup-2024", run_dir / ".student.old"]


def test_checkpoints_are_written_beside_their_file_not_in_the_system_temp_folder(tmp_path, monkeypatch):
    import tempfile

    from repfusion.run import AtomicCheckpointIO

    used = []
    real = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: used.append(k.get("dir")) or real(*a, **k))
    AtomicCheckpointIO().save_checkpoint({"x": torch.ones(2)}, tmp_path / "checkpoints" / "last.ckpt")
    assert used == [tmp_path / "checkpoints"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["x"].sum() == 2


def test_only_rank_zero_writes_the_config_and_prints(tmp_path, monkeypatch, capsys):
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from repfusion import cli
    from repfusion.run import prepare_run

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    written = []
    assert prepare_run(tmp_path / "run", False, None, lambda: written.append(1)) is None
    cli._say("Distilled student saved")
    assert written == [] and capsys.readouterr().out == ""
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    prepare_run(tmp_path / "run", False, None, lambda: written.append(1))
    cli._say("Distilled student saved")
    assert written == [1] and "saved" in capsys.readouterr().out


FINETUNE = ["finetune", "--init", "null", "--student.width", "0.125", "--data.batch_size", "16", "--trainer.progress",
            "false", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
            "1"]


def test_finetune_resumed_after_its_end_keeps_every_metrics_row(tmp_path, capsys, monkeypatch):
    """Issue 19, item 5: a finished run (or one killed in its export) resumed with --resume kept only the test
    row, at epoch 0 and step 0; now metrics.csv is the uninterrupted run's, row for row."""
    reference = tmp_path / "reference"
    assert main([*FINETUNE, "--run-dir", str(reference)]) == 0
    rows = (reference / "metrics.csv").read_text().splitlines()
    assert len(rows) > 3 and "test/" in rows[0]
    for case in ("killed in the export", "finished"):
        run_dir = tmp_path / case.replace(" ", "-")
        shutil.copytree(reference, run_dir)
        if case == "killed in the export":
            shutil.rmtree(run_dir / "model")
            (run_dir / ".~repfusion-model.x7.staging").mkdir()
        capsys.readouterr()
        assert main([*FINETUNE, "--run-dir", str(run_dir), "--resume"]) == 0
        assert "end of training" in capsys.readouterr().err
        assert (run_dir / "metrics.csv").read_text().splitlines() == rows, case
        assert (run_dir / "model").is_dir() and not (run_dir / ".~repfusion-model.x7.staging").exists()

    # a kill between the epoch-end last.ckpt and the epoch's train row (here: while best.ckpt is written, which
    # the kill storm found): the checkpoint carries that row, so it is not lost
    from repfusion.run import AtomicCheckpointIO

    run_dir = tmp_path / "killed-in-best"
    real_save = AtomicCheckpointIO.save_checkpoint

    def killed_in_best(self, checkpoint, path, storage_options=None):
        if Path(path).name == "best.ckpt":
            raise Interrupted(path)
        return real_save(self, checkpoint, path, storage_options)

    with monkeypatch.context() as m:
        m.setattr(AtomicCheckpointIO, "save_checkpoint", killed_in_best)
        with pytest.raises(Interrupted):
            main([*FINETUNE, "--run-dir", str(run_dir)])
    assert global_step(run_dir) == 2 and (run_dir / "metrics.csv").read_text().count("\n") == 2  # no train row
    assert main([*FINETUNE, "--run-dir", str(run_dir), "--resume"]) == 0
    assert (run_dir / "metrics.csv").read_text().splitlines() == rows

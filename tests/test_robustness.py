"""Many processes, interrupted runs, and bad input (issues 6 and 13)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from repfusion.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--student.width", "0.125", "--data.batch_size", "16", "--trainer.progress", "false"]


def error_lines(err: str) -> list[str]:
    """What the user is told: exactly the lines the CLI writes as `error: ...` (Lightning's INFO lines aside)."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "repfusion.cli", *args]


DDP_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    import lightning.pytorch as pl
    from safetensors.torch import save_file
    from repfusion.data import DataConfig, ImageDataModule
    from repfusion.distill.run import DistillRun, StudentSection, build_distillation
    from repfusion.training import TrainerConfig, build_trainer

    class SaveRankWeights(pl.Callback):
        def on_train_end(self, trainer, module):
            state = {k: v.detach().clone().contiguous() for k, v in module.student.state_dict().items()}
            save_file(state, str(Path(sys.argv[1]) / f"rank{trainer.global_rank}.safetensors"))
            (Path(sys.argv[1]) / f"rank{trainer.global_rank}.samples").write_text(str(trainer.num_training_batches))

    cfg = DistillRun(student=StudentSection(width=0.125), data=DataConfig(batch_size=16),
                     trainer=TrainerConfig(max_steps=4, accelerator="cpu", devices=2, strategy="ddp",
                                           progress=False, limit_val_batches=0, ema_decay=0.9))
    pl.seed_everything(0)
    data = ImageDataModule(cfg.data)
    module = build_distillation(cfg, data)
    trainer = build_trainer(cfg.trainer, Path(sys.argv[1]) / "run", callbacks=[SaveRankWeights()])
    trainer.fit(module, datamodule=data)
''')


def test_two_process_ddp_ends_with_identical_students(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    from repfusion.data import digits

    full = len(digits(True)) // 16
    assert int((tmp_path / "rank0.samples").read_text()) <= full // 2 + 1  # each rank sees half the data


def last_step(path: Path) -> int:
    return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])


def test_sigkill_mid_epoch_then_resume_finishes(tmp_path):
    run_dir = tmp_path / "run"
    args = ["distill", "--run-dir", str(run_dir), *SMALL, "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "8", "--trainer.limit_val_batches", "1",
            "--trainer.checkpoint_every_n_steps", "3"]  # checkpoints at 3, 6, 8 (epoch end), 9, 12, 16
    proc = subprocess.Popen(cli(*args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if ckpt.exists() and last_step(ckpt) >= 9:  # mid-way through the second epoch
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = last_step(ckpt)
    assert 9 <= killed_at < 16
    assert not (run_dir / "student").exists()
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name != "last.ckpt"]
    assert leftovers == [] or all(p.startswith(".") for p in leftovers)
    assert subprocess.run(cli(*args), cwd=ROOT, capture_output=True).returncode == 1  # no silent overwrite
    done = subprocess.run(cli(*args, "--resume"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_step(ckpt) == 16
    assert (run_dir / "student" / "diffusion_pytorch_model.safetensors").exists()


def test_nan_loss_stops_names_the_step_and_keeps_a_good_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["distill", "--run-dir", str(run_dir), *SMALL, "--timesteps.strategy", "fixed", "--optim.lr", "1e30",
                 "--trainer.checkpoint_every_n_steps", "1", "--trainer.max_epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1 and len(error_lines(err)) == 1 and "at step" in error_lines(err)[0]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    # the message says which checkpoint is kept and how large its weights already are, and not to resume
    line = error_lines(err)[0]
    assert f"step {state['global_step']}" in line and "largest weight" in line and "new --run-dir" in line


def test_nan_loss_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["distill", "--run-dir", str(run_dir), *SMALL, "--timesteps.strategy", "fixed", "--optim.lr", "1e30",
                 "--trainer.max_epochs", "1"])
    line = error_lines(capsys.readouterr().err)
    assert code == 1 and len(line) == 1 and "before any checkpoint was written" in line[0]
    assert "kept" not in line[0] and not (run_dir / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("flags", [["--trainer.precision", "bf16-mixed", "--trainer.channels_last", "true"],
                                   ["--trainer.deterministic", "true"]])
def test_precision_layout_and_determinism_options_run(tmp_path, flags):
    assert main(["distill", "--run-dir", str(tmp_path), *SMALL, "--trainer.max_epochs", "1",
                 "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", *flags]) == 0


def test_bad_dataset_folders(tmp_path, capsys):
    assert main(["distill", "--data.source", "folder", "--data.root", str(tmp_path / "missing"), *SMALL]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    assert main(["distill", "--data.source", "folder", "--data.root", str(tmp_path / "empty"), *SMALL]) == 1
    assert "holds no images" in capsys.readouterr().err
    assert main(["distill", "--data.source", "cifar", "--data.root", str(tmp_path / "empty"), *SMALL]) == 1
    assert "No CIFAR batches" in capsys.readouterr().err


def test_corrupt_image_in_a_worker_is_one_sentence(tmp_path, capsys):
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(root / cls / f"{i}.png")
    (root / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["distill", "--run-dir", str(tmp_path / "run"), "--data.source", "folder", "--data.root", str(root),
                 "--data.image_size", "16", "--data.num_workers", "1", *SMALL, "--trainer.max_epochs", "1",
                 "--data.val_fraction", "0"])  # every image trains (distill need not read a held-out one)
    err = capsys.readouterr().err
    assert code == 1 and len(error_lines(err)) == 1 and "bad.png is corrupt or truncated" in error_lines(err)[0]


def test_malformed_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  source: tiny-16\n  layer: [unclosed\nstudent: {}\n")
    assert main(["distill", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert str(bad) in err and "line 4" in err


BAD_VALUES = [
    (["--data.batch_size", "0"], "data.batch_size must be at least 1"),
    (["--data.batch_size", "-4"], "data.batch_size must be at least 1"),
    (["--trainer.max_epochs", "-3"], "trainer.max_epochs must be at least 1"),
    (["--trainer.max_epochs", "0"], "trainer.max_epochs must be at least 1"),  # exported an untrained student
    (["--data.train_limit", "0"], "data.train_limit must be at least 1"),
    (["--data.val_fraction", "1.5"], "data.val_fraction must be in [0, 1)"),
    (["--trainer.precision", "13-true"], "trainer.precision must be one of"),
    (["--trainer.extra", '{"foo": 1}'], "trainer.extra does not accept the Trainer argument 'foo'"),
    (["--trainer.extra", '{"max_epochs": 1}'], "set trainer.max_epochs instead"),
    (["--trainer.limit_val_batches", "-1"], "trainer.limit_val_batches must be a number of batches"),
    (["--trainer.limit_train_batches", "1.5"], "trainer.limit_train_batches must be a number of batches"),
    (["--trainer.ema_decay", "1.5"], "trainer.ema_decay must be in [0, 1)"),
]


@pytest.mark.parametrize("verb", ["distill", "finetune", "teacher"])
@pytest.mark.parametrize("flags,message", BAD_VALUES)
def test_bad_values_are_one_sentence_and_write_nothing(tmp_path, capsys, verb, flags, message):
    assert main([verb, "--run-dir", str(tmp_path / "run"), *flags]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_accelerator_without_a_gpu(tmp_path, capsys):
    assert main(["distill", "--run-dir", str(tmp_path / "run"), "--trainer.accelerator", "gpu"]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "no CUDA GPU" in err[0] and not (tmp_path / "run").exists()


def test_run_dir_that_is_a_file_or_not_writable(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(["distill", "--run-dir", str(afile)]) == 1
    assert "is a file, not a folder" in error_lines(capsys.readouterr().err)[0]
    assert main(["distill", "--run-dir", str(afile / "sub")]) == 1
    assert "because" in error_lines(capsys.readouterr().err)[0] and afile.read_text() == "keep me"
    import repfusion.io as rio

    def denied(*args, **kwargs):  # what a read-only folder does (root ignores chmod, so it is simulated)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rio.tempfile, "mkstemp", denied)
    assert main(["distill", "--run-dir", str(tmp_path / "ro" / "run")]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "is not writable (Permission denied" in err[0]


def test_a_write_failing_during_a_run_is_one_sentence(tmp_path, capsys, monkeypatch):
    import repfusion.config as config

    def full_disk(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(config, "write_text", full_disk)
    code = main(["distill", "--run-dir", str(tmp_path / "run"), *SMALL, "--trainer.max_epochs", "1"])
    err = error_lines(capsys.readouterr().err)
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0] and "config.yaml" in err[0]


def test_teacher_folder_without_weights_is_plain_words(tmp_path, capsys):
    from repfusion.teachers import default_scheduler, unet_from_preset

    folder = tmp_path / "teacher"
    unet_from_preset("tiny-16").save_pretrained(folder)
    default_scheduler().save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    assert main(["distill", "--teacher.source", str(folder), "--run-dir", str(tmp_path / "run")]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "has a config.json but no weights" in err[0] and ".bin" not in err[0]


def test_grayscale_folder_is_said_once(tmp_path, capsys):
    from repfusion.data.datasets import image_folder

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 30 * i, np.uint8), mode="L").save(tmp_path / cls / f"{i}.png")
    first = image_folder(tmp_path, 8)
    image_folder(tmp_path, 8)
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "are grayscale; they are read as RGB" in err
    assert first[0][0].shape == (3, 8, 8)


def test_limit_batches_integer_one_means_one_batch():
    from repfusion.config import config_parser, parse_config
    from repfusion.distill.run import DistillRun

    parser = config_parser("t", DistillRun, "")
    cfg = parse_config(parser, DistillRun, ["--trainer.limit_val_batches", "1",
                                            "--trainer.limit_train_batches", "1.0"]).config
    assert cfg.trainer.limit_val_batches == 1 and isinstance(cfg.trainer.limit_val_batches, int)
    assert cfg.trainer.limit_train_batches == 1.0 and isinstance(cfg.trainer.limit_train_batches, float)


def test_wrong_channel_count_for_the_teacher(tmp_path, capsys):
    from diffusers import UNet2DModel

    from repfusion.teachers import TEACHER_PRESETS, default_scheduler

    folder = tmp_path / "gray-teacher"
    UNet2DModel(**{**TEACHER_PRESETS["tiny-16"], "in_channels": 1, "out_channels": 1}).save_pretrained(folder)
    default_scheduler().save_pretrained(folder)
    assert main(["distill", "--teacher.source", str(folder), *SMALL]) == 1
    assert "1-channel images but the data have 3 channels" in capsys.readouterr().err


def test_an_error_after_the_trainer_is_built_is_the_only_line_on_stderr(tmp_path):
    """Issue 19, item 3: no Lightning INFO lines ("GPU available", the LitLogger tip, "limit_val_batches was
    configured") and no diffusers advice to install accelerate before the one `error:` line of a verb."""
    teacher = tmp_path / "teacher"
    from repfusion.teachers.loading import unet_from_preset

    unet_from_preset("tiny-16").save_pretrained(teacher)  # loaded with from_pretrained, as users' teachers are
    done = subprocess.run(cli("distill", "--run-dir", str(tmp_path / "run"), *SMALL, "--teacher.source", str(teacher),
                              "--timesteps.strategy", "fixed", "--optim.lr", "1e30", "--trainer.max_epochs", "1",
                              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: The training loss became nan"), done.stderr[-2000:]

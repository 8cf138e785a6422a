import torch

from repfusion.cli import main
from repfusion.teachers import DEFAULT_TEACHER_LAYER, load_teacher

FAST = ["--data.batch_size", "32", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
        "--trainer.progress", "false", "--samples", "4", "--sample_steps", "2"]


def test_teacher_trains_saves_and_loads_as_a_teacher(tmp_path):
    run_dir = tmp_path / "teacher-run"
    assert main(["teacher", "--run-dir", str(run_dir), "--trainer.max_epochs", "1", *FAST]) == 0
    folder = run_dir / "teacher"
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
        assert (folder / name).exists()
    assert (run_dir / "samples.png").stat().st_size > 0
    teacher = load_teacher(str(folder))
    out = teacher(torch.rand(2, 3, 16, 16), torch.tensor([0, 10]))[DEFAULT_TEACHER_LAYER]
    assert out.shape == (2, 64, 8, 8)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    trained = ckpt["state_dict"]["unet.conv_in.weight"]
    assert not torch.equal(trained, torch.zeros_like(trained))


def test_teacher_training_resumes_and_continues(tmp_path):
    run_dir = tmp_path / "teacher-run"
    assert main(["teacher", "--run-dir", str(run_dir), "--trainer.max_epochs", "1", *FAST]) == 0
    assert main(["teacher", "--run-dir", str(run_dir), "--trainer.max_epochs", "2", *FAST]) == 1  # no overwrite
    assert main(["teacher", "--run-dir", str(run_dir), "--trainer.max_epochs", "2", "--resume", *FAST]) == 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6

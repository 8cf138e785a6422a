import pytest
import torch

from repfusion.cli import main
from repfusion.data import DataConfig, ImageDataModule
from repfusion.errors import RepFusionError
from repfusion.io import load_tensors
from repfusion.tasks.classification import build_classification
from repfusion.tasks.finetune import FinetuneRun, ModelSection

FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--trainer.progress", "false", "--data.batch_size", "16"]


@pytest.fixture(scope="module")
def distill_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("distill")
    assert main(["distill", "--run-dir", str(run_dir), "--student.width", "0.125", *FAST]) == 0
    return run_dir


def test_finetune_starts_from_the_distilled_weights_and_scratch_does_not(distill_dir):
    exported = load_tensors(distill_dir / "student" / "diffusion_pytorch_model.safetensors")
    data = ImageDataModule(DataConfig(batch_size=16))
    distilled = build_classification(FinetuneRun(init=str(distill_dir)), data).model.state_dict()
    assert all(torch.equal(distilled[k], v) for k, v in exported.items())
    assert distilled["fc.weight"].shape == (10, 64)
    torch.manual_seed(1)
    scratch = build_classification(FinetuneRun(student=ModelSection("resnet18_cifar", 0.125)), data).model.state_dict()
    assert set(scratch) == set(distilled)
    differs = [k for k in exported if k.endswith("conv1.weight")]
    assert differs and not any(torch.equal(scratch[k], exported[k]) for k in differs)


def test_finetune_cli_writes_results(distill_dir, tmp_path):
    assert main(["finetune", "--init", str(distill_dir), "--run-dir", str(tmp_path), *FAST]) == 0
    for name in ("results.json", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "model/config.json"):
        assert (tmp_path / name).exists(), name


def test_other_architecture_is_refused(distill_dir, capsys, tmp_path):
    assert main(["finetune", "--init", str(distill_dir), "--student.arch", "mobilenetv2_cifar",
                 "--run-dir", str(tmp_path), *FAST]) == 1
    assert "distilled student" in capsys.readouterr().err


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"student.x": torch.zeros(1)}, "hook": Payload()}, evil)
    cfg = FinetuneRun(init=str(evil), student=ModelSection("resnet18_cifar", 0.125))
    with pytest.raises(RepFusionError, match="weights_only=True"):
        build_classification(cfg, ImageDataModule(DataConfig(batch_size=16)))
    assert not marker.exists()


def test_weights_of_another_width_are_refused(distill_dir):
    cfg = FinetuneRun(init=str(distill_dir / "student" / "diffusion_pytorch_model.safetensors"),
                      student=ModelSection("resnet18_cifar", 0.25))
    with pytest.raises(RepFusionError, match="do not fit"):
        build_classification(cfg, ImageDataModule(DataConfig(batch_size=16)))

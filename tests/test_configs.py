from pathlib import Path

import pytest

from repfusion.cli import main
from repfusion.config import config_parser, parse_config
from repfusion.distill.run import DistillRun
from repfusion.tasks.finetune import FinetuneRun

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
SMALL = ["--teacher.source", "small-32", "--data.source", "digits", "--data.image_size", "32", "--data.batch_size", "16",
         "--student.width", "0.125", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.progress", "false"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(path):
    schema = FinetuneRun if "finetune" in path.name else DistillRun
    run = parse_config(config_parser("t", schema, ""), schema, ["--config", str(path)])
    assert isinstance(run.config, schema)


@pytest.mark.parametrize("name", ["cifar10-resnet18-hint-policy.yaml", "cifar10-mobilenetv2-rkd-fixed.yaml",
                                  "cifar10-resnet18-at-policy.yaml"])
def test_paper_configs_run_on_small_stand_ins(name, tmp_path):
    assert main(["distill", "--config", f"configs/{name}", "--run-dir", str(tmp_path), *SMALL]) == 0


def test_tiny_imagenet_config_names_the_missing_adm_checkpoint(capsys):
    """Without the downloaded checkpoint the run stops naming it (tests/test_teacher_adm.py runs it with a stand-in)."""
    assert main(["distill", "--config", "configs/tinyimagenet-resnet18-hint-policy.yaml"]) == 1
    assert "ADM checkpoint checkpoints/64x64_diffusion.pt does not exist" in capsys.readouterr().err


def test_configs_named_after_paper_rows_stay_faithful_to_the_paper():
    """Our improvements are the library's defaults; every paper-row config opts back into the paper."""
    import yaml

    paper_rows = [p for p in Path("configs").glob("*.yaml") if p.read_text().startswith("# Paper row")]
    assert len(paper_rows) >= 13
    for path in paper_rows:
        config = yaml.safe_load(path.read_text())
        if "loss" not in config:
            continue
        assert config["loss"]["target_norm"] == "none", path
        if config["timesteps"]["strategy"] == "reinforced":
            timesteps = config["timesteps"]
            assert (timesteps["policy_bins"], timesteps["advantage"], timesteps["policy_warmup_epochs"],
                    timesteps["baseline"]) == (1000, "raw", 0, "none"), path

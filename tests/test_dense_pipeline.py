"""The dense tasks end to end through the CLI: paper-row configs on small stand-ins, distill -> finetune, demos."""

import json

import pytest

from repfusion.cli import main

FACES = ["--data.source", "faces", "--data.image_size", "32", "--data.faces_train", "48", "--data.faces_test", "16",
         "--data.batch_size", "8", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.progress", "false"]
SMALL_STUDENT = ["--student.arch", "resnet18_cifar", "--student.width", "0.125"]


@pytest.mark.parametrize("config", ["celebamask-resnet18-bisenet-finetune.yaml", "wflw-resnet50-deconv-finetune.yaml",
                                    "wflw-hrnetv2w18-finetune.yaml"])
def test_dense_paper_configs_run_on_generated_faces(config, tmp_path):
    student = ["--student.arch", "hrnetv2_w18", "--student.width", "0.125"] if "hrnet" in config else SMALL_STUDENT
    run_dir = tmp_path / "run"
    assert main(["finetune", "--config", f"configs/{config}", "--init", "null", "--run-dir", str(run_dir),
                 *FACES, *student]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    key = "test/miou" if "bisenet" in config else "test/nme"
    assert results["task"] in ("segmentation", "landmarks") and key in results
    for name in ("model/config.json", "predictions.png", "curves.png", "checkpoints/last.ckpt"):
        assert (run_dir / name).exists(), name


def test_dense_distillation_initialises_both_dense_tasks(tmp_path):
    distill_dir = tmp_path / "distill"
    assert main(["distill", "--config", "configs/celebahq-resnet18-dense-hint-t0.yaml", "--teacher.source", "tiny-16", "--teacher.allow_other_size", "true",
                 "--teacher.layer", "mid_block.resnets.1.conv2", "--run-dir", str(distill_dir), *FACES,
                 *SMALL_STUDENT]) == 0
    for task in ("segmentation", "landmarks"):
        run_dir = tmp_path / task
        assert main(["finetune", "--task", task, "--init", str(distill_dir), "--run-dir", str(run_dir), *FACES,
                     "--data.crop_padding", "0"]) == 0
        assert json.loads((run_dir / "results.json").read_text())["init"] == str(distill_dir)


@pytest.mark.parametrize("argv, message", [
    (["--task", "classification"], "carries"),
    (["--task", "segmentation", "--data.source", "digits"], "needs 'mask' targets"),
    (["--task", "landmarks", "--data.source", "digits"], "needs 'keypoints' targets"),
    (["--task", "detection"], "Unknown task 'detection'"),
])
def test_a_task_its_data_cannot_feed_is_one_sentence(argv, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["finetune", *FACES, *argv, "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_label_reward_on_unlabelled_faces_is_one_sentence(tmp_path, capsys):
    assert main(["distill", "--teacher.source", "tiny-16", "--teacher.allow_other_size", "true", "--reward", "label", "--run-dir", str(tmp_path / "d"),
                 *FACES, *SMALL_STUDENT]) == 1
    assert "reward 'label' needs class labels" in capsys.readouterr().err


@pytest.mark.parametrize("task, metric", [("segmentation", "test/miou"), ("landmarks", "test/nme")])
def test_shortened_dense_demo_runs_every_stage(task, metric, tmp_path, capsys):
    out = tmp_path / task
    assert main(["demo", "--task", task, "--quick", "--seeds", "2", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| scratch |" in printed and "| random-teacher |" in printed and "| scratch-equal |" in printed
    assert "95 % CI" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["metric"] == metric and len(result["summary"]["repfusion"]["runs"]) == 2
    assert any("random" in p["a"] + p["b"] for p in result["paired"])
    for name in ("report.md", "metric.png", "teacher/samples.png", "distill-repfusion-seed1/student/config.json",
                 "distill-random-teacher-seed0/student/config.json",
                 "finetune-scratch-seed0/predictions.png", "finetune-repfusion-seed1/predictions.png"):
        assert (out / name).exists(), name
    assert main(["demo", "--task", task, "--quick", "--seeds", "3", "--no-progress", "--resume", "--out",
                 str(out)]) == 1
    assert "other settings" in capsys.readouterr().err

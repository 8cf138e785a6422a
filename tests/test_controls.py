"""The control arms: a random-weight teacher of the same architecture, and equal-compute scratch."""

from __future__ import annotations

import json

import pytest
import torch

from repfusion.analysis.controls import distill_steps, equal_compute_epochs, paired_entry, steps_per_epoch
from repfusion.errors import RepFusionError
from repfusion.teachers import load_teacher


def _weights(teacher) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in teacher.unet.state_dict().items()}


def test_random_teacher_has_the_architecture_reads_no_weights_and_is_seeded(tiny_teacher_dir, tmp_path, monkeypatch):
    trained = _weights(load_teacher(str(tiny_teacher_dir)))
    # a folder with the config but weights that cannot be read: init=random must never open them
    folder = tmp_path / "teacher"
    folder.mkdir()
    for name in ("config.json", "scheduler_config.json"):
        (folder / name).write_text((tiny_teacher_dir / name).read_text())
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    import safetensors.torch

    def refuse(*_a, **_k):
        raise AssertionError("a trained weight was read")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    state = torch.random.get_rng_state()
    a, b = (_weights(load_teacher(str(folder), init="random", init_seed=3)) for _ in range(2))
    other = _weights(load_teacher(str(folder), init="random", init_seed=4))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random stream is untouched
    assert a.keys() == trained.keys() and all(a[k].shape == trained[k].shape for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert all(not torch.equal(a[k], other[k]) for k in weights)
    assert all(not torch.equal(a[k], trained[k]) for k in weights)


def test_random_teacher_of_every_kind_and_a_bad_init(tmp_path):
    adm = load_teacher("adm-imagenet-64", init="random", init_seed=0)
    assert adm.kind == "adm"
    with pytest.raises(RepFusionError, match="teacher.init must be 'pretrained' or 'random', not 'untrained'"):
        load_teacher("tiny-16", init="untrained")


def test_equal_compute_epochs_match_distillation_plus_finetuning_steps():
    assert steps_per_epoch(458, 64) == 7 and steps_per_epoch(30, 32) == 1
    # 6 distillation epochs of 35 steps = 210 steps; fine-tuning 25 epochs of 7 steps = 175 steps
    epochs = equal_compute_epochs(210, 458, 64, 25)
    assert epochs == 25 + 30 and epochs * 7 >= 210 + 175 > (epochs - 1) * 7
    with pytest.raises(ValueError):
        equal_compute_epochs(-1, 458, 64, 25)


def test_a_distillation_records_its_steps_for_the_equal_compute_arm(tmp_path, tiny_teacher_dir):
    from repfusion.cli import main

    run = tmp_path / "run"
    assert main(["distill", "--teacher.source", str(tiny_teacher_dir), "--teacher.init", "random",
                 "--data.source", "digits", "--data.image_size", "16", "--data.batch_size", "32",
                 "--data.train_limit", "100", "--student.width", "0.125", "--trainer.max_epochs", "2",
                 "--trainer.progress", "false", "--reward", "none", "--timesteps.strategy", "fixed",
                 "--run-dir", str(run)]) == 0
    assert distill_steps(run) == 2 * steps_per_epoch(100, 32)
    record = json.loads((run / "student" / "distillation.json").read_text())
    assert record["teacher"]["init"] == "random"


def test_paired_entry_is_in_points_with_the_papers_keys():
    entry = paired_entry("ours", "ours-random", [0.5, 0.6, 0.7], [0.4, 0.5, 0.6], "test_top1", 0.1)
    assert set(entry) == {"fraction", "a", "b", "metric", "mean", "low", "high", "n"}
    assert entry["mean"] == pytest.approx(10.0) and entry["n"] == 3 and entry["low"] == pytest.approx(10.0)


def test_the_distill_hint_carries_the_data_section_to_the_next_stage(tmp_path, capsys):
    from repfusion.cli import main

    assert main(["distill", "--teacher.source", "tiny-16", "--data.source", "digits", "--data.image_size", "16",
                 "--data.flip", "false", "--data.train_limit", "40", "--data.batch_size", "16", "--student.width",
                 "0.125", "--trainer.max_epochs", "1", "--trainer.progress", "false", "--reward", "none",
                 "--timesteps.strategy", "fixed", "--run-dir", str(tmp_path / "d")]) == 0
    hint = capsys.readouterr().out
    assert "--data.image_size 16" in hint and "--data.flip false" in hint and "--data.train_limit 40" in hint


def test_a_scratch_baseline_without_a_width_says_so(tmp_path, capsys):
    from repfusion.tasks.backbone import resolve_architecture
    from repfusion.tasks.finetune import ModelSection

    assert resolve_architecture(None, ModelSection()) == ("resnet18_cifar", 1.0)
    assert "width 1.0" in capsys.readouterr().err
    assert resolve_architecture(None, ModelSection("resnet18_cifar", 0.25)) == ("resnet18_cifar", 0.25)
    assert capsys.readouterr().err == ""


def test_the_verdict_reads_the_intervals():
    from repfusion.arms import verdict

    def pair(b, low, high):
        return {"a": "repfusion", "b": b, "low": low, "high": high, "mean": (low + high) / 2}

    assert "knowledge transferred" in verdict([pair("random-teacher", 1, 3), pair("scratch", 2, 4),
                                               pair("scratch-equal", 1, 2)])
    assert "not from what the diffusion model learned" in verdict([pair("random-teacher", -1, 3), pair("scratch", 1, 4),
                                                                   pair("scratch-equal", -1, 2)])
    assert verdict([pair("random-teacher", -1, 3), pair("scratch", -1, 4), pair("scratch-equal", -2, -1)]).startswith(
        "scratch-equal beats RepFusion")

import json

import numpy as np

from repfusion.analysis.probe import effective_rank
from repfusion.cli import main


def test_shortened_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "2", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for arm in ("scratch", "scratch-equal", "repfusion", "random-teacher"):
        assert f"| {arm} |" in printed, arm
    assert "repfusion - random-teacher" in printed and "95 % CI" in printed and "stage times" in printed
    result = json.loads((out / "results.json").read_text())
    assert all(len(result["summary"][arm]["runs"]) == 2 for arm in result["summary"])
    pairs = {(p["a"], p["b"], p["metric"]): p for p in result["paired"]}
    for control in ("random-teacher", "scratch", "scratch-equal"):
        entry = pairs[("repfusion", control, "test_top1")]
        assert entry["n"] == 2 and entry["low"] <= entry["mean"] <= entry["high"] and entry["fraction"] == 0.02
    assert ("repfusion", "random-teacher", "val_probe") in pairs
    assert set(result["probe"]) == {"random init", "repfusion", "random-teacher"}
    for name in ("report.md", "accuracy.png", "teacher/samples.png", "teacher/teacher/config.json",
                 "distill-repfusion-seed0/curves.png", "distill-repfusion-seed1/student/config.json",
                 "distill-random-teacher-seed1/student/config.json"):
        assert (out / name).exists(), name
    # the default menu: every arm fine-tuned plainly and by LP-FT, the validation's better kept per seed and arm
    assert result["config"]["finetune"]["protocols"] == ["plain", "lpft"]
    assert all(set(kept) <= {"plain", "lpft"} and len(kept) == 2 for kept in result["protocols"].values())
    assert set(result["by_protocol"]["repfusion"]) == {"plain", "lpft"}
    for protocol in ("plain", "lpft"):
        config = json.loads((out / f"finetune-repfusion-seed0-{protocol}" / "results.json").read_text())
        assert config["init"] == str(out / "distill-repfusion-seed0")
    random_teacher = json.loads((out / "distill-random-teacher-seed1" / "student" / "distillation.json").read_text())
    assert random_teacher["teacher"]["init"] == "random"
    # equal-compute scratch trained for the distillation's steps on top of the fine-tuning's
    from repfusion.analysis.controls import distill_steps, equal_compute_epochs

    steps = distill_steps(out / "distill-repfusion-seed0")
    train_images = json.loads((out / "finetune-scratch-seed0-plain" / "results.json").read_text())["train_images"]
    rows = (out / "finetune-scratch-equal-seed0-plain" / "metrics.csv").read_text().strip().splitlines()[1:]
    assert max(int(r.split(",")[0]) for r in rows) == equal_compute_epochs(steps, train_images, 32, 2) > 2  # the test row
    # the label-scarce regime: fine-tuning saw a stratified 2 % of the training labels, distillation all images
    assert result["config"]["data"]["label_fraction"] == 0.02

    # an existing demo is refused without --resume; with it, finished stages are reused, not retrained
    assert main(["demo", "--quick", "--seeds", "2", "--no-progress", "--out", str(out)]) == 1
    assert "pass --resume" in capsys.readouterr().err
    before = (out / "distill-repfusion-seed0" / "student" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--quick", "--seeds", "2", "--no-progress", "--resume", "--out", str(out)]) == 0
    assert (out / "distill-repfusion-seed0" / "student" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before
    # ... but only with the settings it was run with
    assert main(["demo", "--quick", "--seeds", "3", "--no-progress", "--resume", "--out", str(out)]) == 1
    assert "other settings" in capsys.readouterr().err


def test_demo_refuses_a_single_seed(tmp_path, capsys):
    assert main(["demo", "--quick", "--seeds", "1", "--out", str(tmp_path / "d")]) == 1
    assert "--seeds must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_probe_cli(tmp_path, tiny_teacher_dir):
    out = tmp_path / "probe"
    assert main(["probe", "--teacher", str(tiny_teacher_dir), "--timesteps", "0", "500", "--out", str(out)]) == 0
    rows = json.loads((out / "probe.json").read_text())["rows"]
    assert [(r["mode"], r["t"]) for r in rows] == [("clean", 0), ("clean", 500), ("noised", 0), ("noised", 500)]
    assert all(0.0 <= r["probe_accuracy"] <= 1.0 and r["effective_rank"] >= 1 for r in rows)
    assert (out / "probe.png").exists() and (out / "probe.md").exists()
    assert main(["probe", "--teacher", str(tiny_teacher_dir), "--timesteps", "1000", "--out", str(out)]) == 1


def test_effective_rank_by_hand():
    rng = np.random.default_rng(0)
    isotropic = rng.standard_normal((4000, 8))
    rank, _ = effective_rank(isotropic)
    assert 7.5 < rank <= 8.0
    line = np.outer(rng.standard_normal(100), np.ones(8))
    assert effective_rank(line)[0] < 1.01

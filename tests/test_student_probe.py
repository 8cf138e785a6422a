"""The student probe (linear probe + k-NN of a frozen backbone) and the teacher probe's variance shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from repfusion.analysis.probe import variance_shares
from repfusion.analysis.student_probe import knn_accuracy, load_probe_student, probe_student, student_features
from repfusion.cli import main
from repfusion.data import Normalize, digits
from repfusion.errors import RepFusionError
from repfusion.run_folder import run_normalization
from repfusion.students import build_student


@pytest.fixture(scope="module")
def small_digits() -> tuple[Subset, Subset]:
    train, test = digits(True), digits(False)
    return Subset(train, list(range(0, len(train), 3))), Subset(test, list(range(0, len(test), 3)))


def export(folder: Path, mean: float = 0.5, std: float = 0.5) -> torch.nn.Module:
    """A student folder as distill writes it, plus the run's config.yaml one level up."""
    torch.manual_seed(0)
    model = build_student("resnet18_cifar", 0.125)
    model.save_pretrained(folder / "student", safe_serialization=True)
    (folder / "config.yaml").write_text(f"data:\n  mean: [{mean}, {mean}, {mean}]\n  std: [{std}, {std}, {std}]\n")
    return model


def test_random_student_probes_well_above_chance(small_digits):
    result = probe_student("random:resnet18_cifar", *small_digits, width=0.125)
    assert set(result) == {"linear_probe", "knn", "knn_k"} and result["knn_k"] == 20  # every class has 20+ images
    assert result["linear_probe"] > 0.5 and result["knn"] > 0.5


def test_run_folders_resolve_and_bring_their_normalisation(tmp_path, small_digits):
    model = export(tmp_path, mean=0.0, std=1.0)
    for source in (tmp_path, tmp_path / "student"):
        loaded, norm = load_probe_student(source)
        assert norm == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    (tmp_path / "finetune" / "model").mkdir(parents=True)
    build_student("resnet18_cifar", 0.125, num_classes=10).save_pretrained(tmp_path / "finetune" / "model")
    assert load_probe_student(tmp_path / "finetune")[0].config.num_classes == 10
    assert run_normalization(tmp_path / "finetune" / "model") is None
    # probing the folder uses its run's normalisation: the same numbers as the module with that normalisation
    train, test = small_digits
    by_path = probe_student(tmp_path, train, test)
    by_module = probe_student(model, train, test, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert by_path == pytest.approx(by_module)
    default, _ = student_features(model, test, "layer4", Normalize())
    unit, _ = student_features(model, test, "layer4", Normalize((0.0,) * 3, (1.0,) * 3))
    assert not np.allclose(default, unit)


def test_knn_is_perfect_on_separated_clusters_and_chance_on_noise():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16)) * 10
    labels = rng.integers(0, 5, 400)
    features = centres[labels] + rng.standard_normal((400, 16))
    assert knn_accuracy((features[:300], labels[:300]), (features[300:], labels[300:])) == 1.0
    noise = rng.standard_normal((400, 16))
    assert knn_accuracy((noise[:300], labels[:300]), (noise[300:], labels[300:])) < 0.45


def test_missing_student_is_one_sentence(tmp_path):
    with pytest.raises(RepFusionError, match="does not exist"):
        load_probe_student(tmp_path / "nope")
    with pytest.raises(RepFusionError, match="holds no exported student"):
        load_probe_student(tmp_path)


def test_student_probe_cli(tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", "--student", "random", "--arch", "resnet18_cifar", "--width", "0.125", "--k", "5",
                 "--out", str(out)]) == 0
    written = json.loads((out / "student_probe.json").read_text())
    assert 0 <= written["linear_probe"] <= 1 and 0 <= written["knn"] <= 1 and written["k"] == 5
    assert (out / "student_probe.md").exists() and "k-NN" in capsys.readouterr().out
    assert main(["probe", "--student", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["probe", "--student", "random", "--layer", "layer3", "layer4", "--out", str(out)]) == 1


def test_variance_shares_by_hand():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2000, 4))  # per-image variance 1 per channel, 4 in total
    offsets = [np.full(4, 3.0), np.full(4, -3.0)]  # per-t offsets: between-t variance 9 per channel, 36 in total
    t_share, image_share = variance_shares([images + offsets[0], images + offsets[1]])
    assert t_share == pytest.approx(36 / 40, abs=0.01) and t_share + image_share == pytest.approx(1.0)
    assert variance_shares([images, images])[0] == pytest.approx(0.0)


def test_teacher_probe_reports_several_layers_and_variance_shares(tmp_path, tiny_teacher_dir):
    out = tmp_path / "probe"
    layers = ["mid_block.resnets.1.conv2", "down_blocks.1"]
    assert main(["probe", "--teacher", str(tiny_teacher_dir), "--timesteps", "0", "500", "--modes", "clean",
                 "--layer", *layers, "--out", str(out)]) == 0
    written = json.loads((out / "probe.json").read_text())
    assert [(r["layer"], r["t"]) for r in written["rows"]] == [(layer, t) for layer in layers for t in (0, 500)]
    assert [(v["layer"], v["mode"]) for v in written["variance"]] == [(layer, "clean") for layer in layers]
    assert all(v["t_share"] + v["image_share"] == pytest.approx(1.0) for v in written["variance"])
    assert "explained by t" in (out / "probe.md").read_text()

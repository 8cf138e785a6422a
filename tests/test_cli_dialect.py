"""Issue 18, item 5: one dialect. probe, layers and demo take the training verbs' dotted keys (`--data.root`,
`--data.image_size`, `--student.width`, `--run-dir`, `--trainer.progress false`), show them in --help, and
still accept their old spellings (hidden, with a note)."""

from pathlib import Path

import pytest

import repfusion.analysis.probe as probe_module
import repfusion.analysis.student_probe as student_probe_module
import repfusion.data as data_module
import repfusion.demo as demo_module
import repfusion.dense_demo as dense_demo_module
import repfusion.layers as layers_module
from repfusion.cli import main


@pytest.fixture
def seen(monkeypatch, tmp_path) -> dict:
    """What each verb hands its runner (the runner itself replaced): the data config, output folder, options.
    In tmp_path: the verbs still save their config.yaml in the (relative) --run-dir."""
    monkeypatch.chdir(tmp_path)
    got: dict = {}
    split = data_module.train_test_split

    def train_test_split(cfg):
        got["data"] = cfg
        return split(cfg)

    monkeypatch.setattr(data_module, "train_test_split", train_test_split)
    monkeypatch.setattr(student_probe_module, "run_student_probe", lambda source, train, test, out, **options: (
        got.update(source=source, out=out, size=tuple(train[0][0].shape), **options) or {"linear_probe": 0.5,
                                                                                          "knn": 0.5}))
    monkeypatch.setattr(probe_module, "run_probe", lambda teacher, train, test, cfg, out: got.update(
        probe=cfg, out=out, size=tuple(train[0][0].shape)))
    monkeypatch.setattr(layers_module, "list_layers", lambda **kwargs: got.update(kwargs) or "")
    monkeypatch.setattr(demo_module, "run_demo", lambda cfg, **_: got.update(demo=cfg))
    monkeypatch.setattr(dense_demo_module, "run_dense_demo", lambda cfg, **_: got.update(demo=cfg))
    return got


def run(seen: dict, capsys, argv: list[str]) -> tuple[dict, str]:
    seen.clear()
    assert main(argv) == 0
    return dict(seen), capsys.readouterr().err


STUDENT_NEW = ["probe", "--student", "random", "--student.arch", "resnet18_cifar", "--student.width", "0.125",
               "--data.source", "digits", "--data.image_size", "16", "--data.split_seed", "3", "--student.layer",
               "layer3", "--data.mean", "[0.4,0.5,0.6]", "--data.std", "[0.2,0.3,0.4]", "--run-dir", "P"]
STUDENT_OLD = ["probe", "--student", "random", "--arch", "resnet18_cifar", "--width", "0.125", "--data", "digits",
               "--image-size", "16", "--split-seed", "3", "--layer", "layer3", "--mean", "0.4", "0.5", "0.6",
               "--std", "0.2", "0.3", "0.4", "--out", "P"]


def test_probe_of_a_student_reads_the_dotted_keys_and_the_old_spellings_alike(seen, capsys):
    new, err = run(seen, capsys, STUDENT_NEW)
    assert "note:" not in err
    assert new["data"].source == "digits" and new["data"].image_size == 16 and new["data"].split_seed == 3
    assert new["size"][-1] == 16 and new["out"] == Path("P") and new["layer"] == "layer3"
    assert new["arch"] == "resnet18_cifar" and new["width"] == 0.125
    assert new["mean"] == pytest.approx([0.4, 0.5, 0.6]) and new["std"] == pytest.approx([0.2, 0.3, 0.4])
    old, err = run(seen, capsys, STUDENT_OLD)
    assert old == new
    assert "note: --image-size is now spelled --data.image_size" in err and "note: --out is now spelled --run-dir" in err


def test_probe_of_a_teacher_reads_the_dotted_keys(seen, capsys, tiny_teacher_dir):
    new, err = run(seen, capsys, ["probe", "--teacher.source", str(tiny_teacher_dir), "--probe.timesteps", "[0]",
                                  "--probe.modes", "[clean]", "--teacher.layer",
                                  "down_blocks.1", "--data.image_size", "16", "--teacher.class_label", "auto",
                                  "--run-dir", "T"])
    assert new["probe"].layers == ["down_blocks.1"] and new["out"] == Path("T") and new["size"][-1] == 16
    assert "note:" not in err
    old, err = run(seen, capsys, ["probe", "--teacher", str(tiny_teacher_dir), "--timesteps", "0", "--modes", "clean",
                                  "--layer", "down_blocks.1",
                                  "--image-size", "16", "--class-label", "auto", "--out", "T"])
    assert old["probe"] == new["probe"] and old["out"] == new["out"] and "--teacher.layer" in err


def test_a_layer_flag_of_the_other_kind_is_one_sentence(capsys, tiny_teacher_dir):
    assert main(["probe", "--teacher", str(tiny_teacher_dir), "--student.layer", "layer3"]) == 1
    assert "--teacher.layer" in capsys.readouterr().err
    assert main(["probe", "--student", "random", "--teacher.layer", "layer3"]) == 1
    assert "--student.layer" in capsys.readouterr().err


def test_layers_reads_the_dotted_keys_and_the_old_spellings_alike(seen, capsys):
    new, err = run(seen, capsys, ["layers", "--student.arch", "resnet18_cifar", "--student.width", "0.25",
                                  "--data.image_size", "16"])
    assert (new["student"], new["width"], new["image_size"]) == ("resnet18_cifar", 0.25, 16) and "note:" not in err
    old, _ = run(seen, capsys, ["layers", "--student", "resnet18_cifar", "--width", "0.25", "--image-size", "16"])
    assert old == new
    adm, _ = run(seen, capsys, ["layers", "--teacher.source", "tiny-16", "--teacher.adm_flags", "imagenet-256",
                                "--teacher.uncond_embedding", "E"])
    assert adm["teacher"] == "tiny-16" and adm["teacher_options"]["adm_flags"] == "imagenet-256"
    assert adm["teacher_options"]["uncond_embedding"] == "E"


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_demo_reads_the_dotted_keys_and_the_old_spellings_alike(seen, capsys, task):
    new, err = run(seen, capsys, ["demo", "--task", task, "--run-dir", "D", "--trainer.progress", "false",
                                  *(["--data.label_fraction", "0.1"] if task == "classification" else [])])
    assert new["demo"].out == "D" and new["demo"].progress is False and "note:" not in err
    if task == "classification":
        assert new["demo"].label_fraction == 0.1
    old, err = run(seen, capsys, ["demo", "--task", task, "--out", "D", "--no-progress",
                                  *(["--label-fraction", "0.1"] if task == "classification" else [])])
    assert old == new and "--trainer.progress false" in err
    assert run(seen, capsys, ["demo", "--task", task])[0]["demo"].progress is True


@pytest.mark.parametrize("verb, shown, hidden", [
    ("probe", ["--data.source", "--data.root", "--data.image_size", "--data.split_seed", "--teacher.source",
               "--teacher.layer", "--student.layer", "--student.arch", "--student.width", "--data.mean", "--run-dir",
               "--teacher.class_label", "--teacher.adm_flags", "--teacher.uncond_embedding"],
     ["--root", "--image-size", "--split-seed", "--out", "--arch", "--width", "--mean", "--class-label",
      "--adm-flags", "--layer"]),
    ("layers", ["--teacher.source", "--student.arch", "--student.width", "--data.image_size"],
     ["--image-size", "--width ", "--adm-flags"]),
    ("demo", ["--run-dir", "--data.label_fraction", "--trainer.progress"], ["--out", "--no-progress", "--label-fraction"]),
    ("distill", ["--data.root", "--data.image_size", "--student.width", "--run-dir", "--trainer.progress"], []),
])
def test_help_shows_the_dotted_spellings_only(verb, shown, hidden, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in shown), [f for f in shown if f not in text]
    words = text.replace(",", " ").split()
    assert not [flag for flag in hidden if flag.strip() in words]


def test_demo_takes_a_menu_of_fine_tuning_protocols_for_classification_only(seen, capsys):
    new, _ = run(seen, capsys, ["demo", "--finetune.protocols", "[plain, lpft]", "--run-dir", "D"])
    assert new["demo"].protocols == ["plain", "lpft"]
    assert run(seen, capsys, ["demo", "--run-dir", "D"])[0]["demo"].protocols is None  # pretrain's default menu
    assert main(["demo", "--task", "segmentation", "--finetune.protocols", "[lpft]", "--run-dir", "D"]) == 1
    assert "applies to the classification demo" in capsys.readouterr().err
    assert main(["demo", "--finetune.protocols", "[plain, lora]", "--run-dir", "D"]) == 1
    assert "unknown protocol 'lora'" in capsys.readouterr().err

"""`repfusion pretrain`: a user's folder (nested, labelled or not, a CSV) to a backbone and a report."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
from PIL import Image

from repfusion.cli import main
from repfusion.data import DataConfig, ImageDataModule
from repfusion.data.datamodule import train_test_split
from repfusion.data.datasets import base_dataset
from repfusion.data.digits import digits
from repfusion.data.folder_labels import detect_labels

TINY = ["--teacher.epochs", "1", "--distill.epochs", "2", "--finetune.epochs", "2", "--seeds", "2",
        "--student.width", "0.125", "--trainer.progress", "false", "--choice.max_images", "100"]


def write_digits(root: Path, per_class: int, nested: bool, classes: bool = True) -> list[Path]:
    """Real digit images as PNG files: root/<class>/[deeper/]i.png, or (classes=False) an unlabeled tree."""
    data = digits(True, image_size=16)
    counts: dict[int, int] = {}
    written = []
    for i in range(len(data)):
        image, label = data[i]
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        top = f"{label}" if classes else ("2023" if i % 2 else "2024")
        deeper = ("a", "b") if nested and i % 3 == 0 else ()
        path = root.joinpath(top, *deeper, f"{i}.png") if classes or i % 5 else root / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(path)
        written.append(path)
    return written


def test_nested_unlabeled_folder_is_found_recursively_and_distilled_label_free(tmp_path, tiny_teacher_dir, capsys):
    root = tmp_path / "photos"
    files = write_digits(root, 12, nested=True, classes=False)
    assert detect_labels(root) == "none"  # loose images beside the sub-folders: an archive, not classes
    out = tmp_path / "run"
    assert main(["pretrain", "--data.root", str(root), "--teacher.source", str(tiny_teacher_dir), *TINY,
                 "--run-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "labels: none" in printed and "label-free" in printed
    # the whole run's estimate and the budget it applies to come before the first stage
    assert printed.index("Budget: budget cpu (auto: no GPU") < printed.index("Estimate: about") \
        < printed.index("[pretrain 1/")
    assert json.loads((out / "budget.json").read_text())["filled"] == {}  # TINY gives every epoch count and width
    result = json.loads((out / "results.json").read_text())
    facts = result["data"]["facts"]
    assert facts["train_images"] + facts["test_images"] == len(files)  # every nesting level was read
    assert "summary" not in result and not list(out.glob("finetune-*"))  # nothing to fine-tune against
    assert (out / "student" / "config.json").is_file() and (out / "choice.md").is_file()
    assert "Why:" in (out / "choice.md").read_text()
    assert "No labels" in (out / "report.md").read_text()
    # no labels to score a layer with: the decoder's first block, not what the variance share prefers
    assert json.loads((out / "choice.json").read_text())["choice"]["layer"] == "up_blocks.0"


def test_class_folders_are_detected_at_any_depth(tmp_path):
    write_digits(tmp_path / "digits", 3, nested=True)
    assert detect_labels(tmp_path / "digits") == "folders"
    data = ImageDataModule(DataConfig(source="folder", root=str(tmp_path / "digits"), labels="auto", image_size=16,
                                      val_fraction=0.0))
    data.setup()
    assert data.num_classes == 10 and len(data.train_set) + len(data.test_set) == 30


def test_labels_from_a_csv_and_the_test_split_shared_with_the_unlabeled_view(tmp_path):
    root = tmp_path / "imgs"
    files = write_digits(root, 8, nested=True, classes=False)
    labelled = files[::2]  # the CSV labels half of the images; the rest stay unlabeled
    rows = ["file,label"] + [f"{p.relative_to(root).as_posix()},{'odd' if i % 2 else 'even'}"
                             for i, p in enumerate(labelled)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with_labels = DataConfig(source="folder", root=str(root), labels=str(tmp_path / "labels.csv"), image_size=16)
    train, test = train_test_split(with_labels)
    assert base_dataset(train).classes == ["even", "odd"] and len(train) + len(test) == len(labelled)
    unlabeled_train, unlabeled_test = train_test_split(DataConfig(source="folder", root=str(root), labels="none",
                                                                  image_size=16))
    assert len(unlabeled_train) + len(unlabeled_test) == len(files)

    def names(split) -> set[Path]:
        return {base_dataset(split).files[i] for i in split.indices}

    assert names(test) <= names(unlabeled_test)  # no labelled test image is in what label-free stages train on
    assert not names(test) & names(unlabeled_train)


def test_a_csv_row_naming_a_missing_or_outside_file_is_one_sentence(tmp_path, capsys):
    root = tmp_path / "imgs"
    write_digits(root, 2, nested=False)
    for row in ("nothere.png,cat", "../escape.png,cat"):
        (tmp_path / "labels.csv").write_text(f"file,label\n{row}\n")
        assert main(["pretrain", "--data.root", str(root), "--data.labels", str(tmp_path / "labels.csv"), *TINY,
                     "--run-dir", str(tmp_path / "run")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: Label file") and not (tmp_path / "run").exists()


def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys):
    for args, said in ((["--data.root", str(tmp_path / "missing")], "does not exist"),
                       (["--data.source", "folder"], "--data.root"),
                       (["--data.root", str(tmp_path), "--teacher.source", str(tmp_path / "no-teacher")], "teacher"),
                       (["--seeds", "0"], "seeds"), (["--seed_offset", "-1"], "seed_offset")):
        assert main(["pretrain", *args, "--run-dir", str(tmp_path / "run")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and said in err[0], (args, err)
        assert not (tmp_path / "run").exists()


def test_a_layer_the_teacher_to_be_trained_lacks_is_refused_before_it_trains(tmp_path, capsys):
    root = tmp_path / "digits"
    write_digits(root, 2, nested=False)
    assert main(["pretrain", "--data.root", str(root), *TINY, "--choice.layers", "[no_such_block]",
                 "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]  # (after the grayscale note)
    assert errors == err[-1:] and "choice.layers names no_such_block" in err[-1] and not (tmp_path / "run").exists()


class Killed(Exception):
    """Stands in for SIGKILL in-process (Lightning turns a KeyboardInterrupt into exit and ignores SIGINT after)."""


class KillAt(pl.Callback):
    """Interrupts a fit at its second training batch, as a kill would (the run's last epoch-end checkpoint
    is what a resume continues from)."""

    def on_train_batch_start(self, trainer, *_args) -> None:
        if trainer.global_step >= 1:
            raise Killed


def test_pipeline_killed_in_every_stage_resumes_to_the_same_result(tmp_path, monkeypatch, capsys):
    root = tmp_path / "digits"
    write_digits(root, 12, nested=True)  # 120 images: every stage, two seeds, five labels a class
    args = ["--data.root", str(root), *TINY, "--data.label_fraction", "0.5", "--data.batch_size", "16"]
    assert main(["pretrain", *args, "--run-dir", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())

    import repfusion.pipeline.progress as progress
    import repfusion.training as training

    real_run, real_build = progress.StageProgress.run, training.build_trainer
    stages = ["teacher", "choose the teacher layer and t", "distil", "export the backbone",
              "probe the frozen backbones", "fine-tune the arms", "report"]
    training_stages = {"teacher", "distil", "fine-tune the arms"}
    out = tmp_path / "killed"
    for stage in stages:
        state = {"armed": True}

        def run(self, name, fn, skipped=False, stage=stage):
            if name != stage or not state["armed"]:
                return real_run(self, name, fn, skipped)
            state["armed"] = False
            if name in training_stages:  # killed inside a training, not between two
                def build(*a, **k):
                    trainer = real_build(*a, **k)
                    trainer.callbacks.append(KillAt())
                    return trainer

                for module in ("repfusion.teachers.train", "repfusion.distill.run", "repfusion.tasks.finetune"):
                    monkeypatch.setattr(f"{module}.build_trainer", build)
                try:
                    return real_run(self, name, fn, skipped)
                finally:
                    for module in ("repfusion.teachers.train", "repfusion.distill.run", "repfusion.tasks.finetune"):
                        monkeypatch.setattr(f"{module}.build_trainer", real_build)
            real_run(self, name, fn, skipped)
            raise Killed  # killed right after the stage's work, before the next

        monkeypatch.setattr(progress.StageProgress, "run", run)
        with pytest.raises(Killed):
            main(["pretrain", *args, "--run-dir", str(out), *(["--resume"] if out.exists() else [])])
    monkeypatch.setattr(progress.StageProgress, "run", real_run)
    assert main(["pretrain", *args, "--run-dir", str(out), "--resume"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["choice"] == whole["choice"]
    for arm, summary in whole["summary"].items():
        assert resumed["summary"][arm]["runs"] == pytest.approx(summary["runs"], abs=1e-6), arm
    assert (out / "report.md").is_file() and (out / "student" / "config.json").is_file()


def test_probe_of_a_student_reads_its_run_s_own_folder_and_records_its_width(tmp_path, tiny_teacher_dir, capsys):
    root = tmp_path / "digits"
    write_digits(root, 6, nested=False)
    run = tmp_path / "distill"
    assert main(["distill", "--teacher.source", str(tiny_teacher_dir), "--data.source", "folder", "--data.root",
                 str(root), "--data.image_size", "16", "--student.width", "0.125", "--trainer.max_epochs", "1",
                 "--reward", "none", "--timesteps.strategy", "fixed", "--trainer.progress", "false",
                 "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["probe", "--student", str(run), "--run-dir", str(tmp_path / "p")]) == 0  # no data flags
    assert str(root) in capsys.readouterr().out
    saved = json.loads((tmp_path / "p" / "student_probe.json").read_text())
    train, _ = train_test_split(DataConfig(source="folder", root=str(root), image_size=16))
    assert saved["width"] == 0.125 and saved["arch"] == "resnet18_cifar"  # the student's, not a flag's default
    assert saved["data"]["root"] == str(root) and saved["data"]["image_size"] == 16
    assert saved["train_images"] == len(train)


def test_the_one_command_needs_only_the_folder(capsys):
    from repfusion.config import config_parser, parse_config
    from repfusion.pipeline import PretrainRun

    parser = config_parser("repfusion pretrain", PretrainRun, "")
    cfg = parse_config(parser, PretrainRun, ["--data.root", "photos"]).config
    assert (cfg.distill.epochs, cfg.finetune.epochs, cfg.seeds, cfg.budget) == (None, None, 3, "auto")  # the budget fills them
    assert cfg.data.source == "folder" and cfg.data.labels == "auto" and cfg.teacher.source is None
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    shown = capsys.readouterr().out
    assert "[--distill.epochs EPOCHS]" in shown and "[--finetune.epochs EPOCHS]" in shown  # nothing else required


def pretrain_digits(tmp_path: Path, teacher: Path, per_class: int, *flags: str) -> int:
    """`pretrain` on a class-folder tree of digits (tmp_path/digits) with a given teacher, half the labels,
    the TINY budgets and `flags`, into tmp_path/run; its exit code."""
    root = tmp_path / "digits"
    write_digits(root, per_class, nested=False)
    return main(["pretrain", "--data.root", str(root), "--teacher.source", str(teacher), *TINY,
                 "--data.label_fraction", "0.5", *flags, "--run-dir", str(tmp_path / "run")])


def test_a_menu_of_fine_tuning_protocols_is_run_by_every_arm_and_chosen_on_validation(tmp_path, tiny_teacher_dir,
                                                                                       capsys):
    out = tmp_path / "run"
    assert pretrain_digits(tmp_path, tiny_teacher_dir, 12, "--data.batch_size", "16",
                           "--finetune.protocols", "[lpft, joint]") == 0
    printed = capsys.readouterr().out
    assert "x 2 fine-tuning protocols (lpft, joint; kept per arm and seed on validation)" in printed
    result = json.loads((out / "results.json").read_text())
    for arm in ("repfusion", "random-teacher", "scratch", "scratch-equal"):
        ran = {"lpft", "joint"} if arm in ("repfusion", "random-teacher") else {"lpft", "plain"}  # scratch: no teacher
        assert set(result["by_protocol"][arm]) == ran
        for seed in range(2):
            runs = {name: json.loads((out / f"finetune-{arm}-seed{seed}-{name}" / "results.json").read_text())
                    for name in ran}
            kept = result["protocols"][arm][seed]
            assert runs[kept]["val/top1"] == max(r["val/top1"] for r in runs.values())
            assert result["summary"][arm]["runs"][seed] == pytest.approx(runs[kept]["test/top1"])
        assert not (out / f"finetune-{arm}-seed0").exists()
    lpft = json.loads((out / "finetune-repfusion-seed0-lpft" / "model" / "timm" / "config.json").read_text())
    assert lpft["architecture"] == "resnet18_cifar"
    assert "## Fine-tuning protocol" in (out / "report.md").read_text()
    card = (out / "finetune-repfusion-seed1-joint" / "model" / "README.md").read_text()
    assert "protocol: joint" in card and "seed: 1" in card


def test_a_menu_without_a_validation_split_is_refused_before_anything_is_written(tmp_path, tiny_teacher_dir, capsys):
    out = tmp_path / "run"
    assert pretrain_digits(tmp_path, tiny_teacher_dir, 6, "--data.val_fraction", "0",
                           "--finetune.protocols", "[plain, lpft]") == 1
    assert "data.val_fraction is 0 (the test split would choose)" in capsys.readouterr().err
    assert not out.exists()


def test_seed_offset_runs_every_arm_on_seeds_the_defaults_never_used(tmp_path, tiny_teacher_dir):
    """--seed_offset 5 --seeds 2: seeds 5 and 6 (their own distillations, random teachers and labelled subsets),
    recorded in results.json and the report; the exported backbone is seed 5's."""
    out = tmp_path / "run"
    assert pretrain_digits(tmp_path, tiny_teacher_dir, 6, "--data.batch_size", "16", "--seed_offset", "5") == 0
    result = json.loads((out / "results.json").read_text())
    assert result["seeds"] == [5, 6] and all(entry["n"] == 2 for entry in result["paired"])
    for arm in ("repfusion", "random-teacher"):
        assert sorted(p.name for p in out.glob(f"distill-{arm}-seed*")) == [f"distill-{arm}-seed5",
                                                                              f"distill-{arm}-seed6"]
    assert sorted(p.name for p in out.glob("finetune-scratch-seed*-plain")) == ["finetune-scratch-seed5-plain",
                                                                                 "finetune-scratch-seed6-plain"]
    weights = "diffusion_pytorch_model.safetensors"
    assert (out / "student" / weights).read_bytes() == (out / "distill-repfusion-seed5" / "student" / weights).read_bytes()
    report = (out / "report.md").read_text()
    assert "2 seeds (5, 6)" in report and "distill-repfusion-seed5/curves.png" in report

"""Reading a finished run folder (`run_folder`): its export and its config.yaml's data section.

The folders are laid out as the verbs write them (only the files the reader looks at): a distill run
(config.yaml, student/), a pretrain run (config.yaml, student/ beside its distill-ARM-seedS/ runs) and a
finetune run (config.yaml, model/).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repfusion.errors import RepFusionError
from repfusion.run_folder import (DEFAULT_MEAN_STD, distill_export, run_data_section, run_export, run_normalization,
                                  student_export)

DATA = "data:\n  source: folder\n  root: photos\n  image_size: 32\n  mean: [0.4, 0.4, 0.4]\n  std: [0.2, 0.2, 0.2]\n"


def exported(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "ResNet", "arch": "resnet18_cifar", "width": 0.125}))
    return folder


def distill_run(run: Path) -> Path:
    exported(run / "student")
    (run / "config.yaml").write_text(DATA)
    return run


def pretrain_run(run: Path) -> Path:
    exported(run / "distill-repfusion-seed0" / "student")
    exported(run / "distill-random-seed0" / "student")
    exported(run / "student")  # the seed-0 RepFusion backbone, copied to the run's top
    exported(run / "finetune-repfusion-seed0" / "model")
    (run / "config.yaml").write_text(DATA)
    return run


def test_a_distill_run_gives_its_student_from_the_run_or_the_export_itself(tmp_path):
    run = distill_run(tmp_path / "distill")
    for finder in (distill_export, run_export, student_export):
        assert finder(run) == run / "student"
        assert finder(run / "student") == run / "student"


def test_a_pretrain_run_gives_its_top_level_student(tmp_path):
    run = pretrain_run(tmp_path / "pretrain")
    assert distill_export(run) == run / "student"
    assert run_export(run) == run / "student" == student_export(run)
    assert run_data_section(run / "student")["image_size"] == 32


def test_a_finetune_run_is_an_export_for_the_readers_but_not_a_distill_init(tmp_path):
    run = tmp_path / "finetune"
    exported(run / "model")
    assert run_export(run) == run / "model" == student_export(run)
    assert distill_export(run) is None  # a finetune init names a distill run; the caller words the refusal


@pytest.mark.parametrize("finder, empty, missing", [
    (run_export, "is not a repfusion run", "does not exist; give a distill or finetune run folder."),
    (student_export, "holds no exported student", "random:ARCH"),
])
def test_a_folder_without_an_export_is_refused_in_one_sentence(tmp_path, finder, empty, missing):
    (tmp_path / "empty" / "student").mkdir(parents=True)  # a student/ without config.json is no export
    for source, said in ((tmp_path / "empty", empty), (tmp_path / "nope", missing)):
        with pytest.raises(RepFusionError, match=said) as error:
            finder(source)
        message = str(error.value)
        assert str(source) in message and "\n" not in message and message.count(". ") == 0


def test_the_data_section_and_normalisation_come_from_the_run_config(tmp_path):
    run = distill_run(tmp_path / "distill")
    data = run_data_section(run / "student")
    assert data == {"source": "folder", "root": "photos", "image_size": 32, "mean": [0.4] * 3, "std": [0.2] * 3}
    assert run_normalization(run / "student") == ((0.4, 0.4, 0.4), (0.2, 0.2, 0.2))


@pytest.mark.parametrize("text", ["", "data: [1, 2]\n", "- a list\n", "trainer: {}\n"])
def test_a_config_without_a_readable_data_section_reads_as_none(tmp_path, text):
    run = distill_run(tmp_path / "distill")
    (run / "config.yaml").write_text(text)
    assert run_data_section(run / "student") == {}
    assert run_normalization(run / "student") is None


def test_a_run_without_config_or_with_only_a_mean_has_no_normalisation(tmp_path):
    export = exported(tmp_path / "student")
    assert run_data_section(export) == {} and run_normalization(export) is None
    (tmp_path / "config.yaml").write_text("data:\n  mean: [0.1, 0.1, 0.1]\n")
    assert run_normalization(export) is None and DEFAULT_MEAN_STD == ((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("text", ["data: {mean: [0.1, 0.1, 0.1]\n", b"data: \xff\xfe\n"])
def test_a_config_that_is_not_yaml_is_refused_in_one_sentence(tmp_path, text):
    run = distill_run(tmp_path / "distill")
    path = run / "config.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with pytest.raises(RepFusionError, match="cannot be read as YAML") as refused:
        run_data_section(run / "student")
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)
    assert path.read_bytes() == (text if isinstance(text, bytes) else text.encode())  # the user's file untouched


def test_the_config_is_data_not_code(tmp_path):
    run = distill_run(tmp_path / "distill")
    marker = tmp_path / "ran"
    (run / "config.yaml").write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RepFusionError, match="cannot be read as YAML"):  # safe_load refuses the tag
        run_data_section(run / "student")
    assert not marker.exists()  # nothing ran

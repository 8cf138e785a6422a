"""Issue 24, item 2: every verb is a schema and a runner in `cli.VERBS`, parsed by the same path.

For each verb: `--print_config` prints its whole config, `--config` of that printed YAML is accepted, and the
run saves the resolved config (`config.yaml` in its output folder; export: beside the file it writes). The
work itself is stubbed where it trains or loads a network (the training verbs, the probes, export's loader,
embed's forward pass), so this costs a parse and a write per verb; the runners are tested in their own files.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import repfusion.analysis.student_probe as student_probe_module
import repfusion.demo as demo_module
import repfusion.dense_demo as dense_demo_module
import repfusion.distill.run as distill_module
import repfusion.embed as embed_module
import repfusion.export as export_module
import repfusion.pipeline as pipeline_module
import repfusion.tasks.finetune as finetune_module
import repfusion.teachers.train as teacher_module
from repfusion.cli import VERBS, main
from repfusion.flags import ALIASES, key_types


def _training(result):
    def run(config, run_dir, resume, on_start):
        on_start()
        return result(run_dir)

    return run


@pytest.fixture
def stubbed(monkeypatch, tmp_path):
    """The work of each verb replaced by a stand-in that does what the CLI relies on (calls on_start, writes
    what export writes); parsing, checks and the config's save are the real ones."""
    monkeypatch.setattr(distill_module, "run_distillation", _training(lambda d: d / "student"))
    monkeypatch.setattr(finetune_module, "run_finetune", _training(lambda d: {"test/top1": 0.5}))
    monkeypatch.setattr(teacher_module, "train_teacher", _training(lambda d: d / "teacher"))
    monkeypatch.setattr(pipeline_module, "run_pretrain", _training(lambda d: {}))
    monkeypatch.setattr(demo_module, "run_demo", lambda cfg, on_start: on_start())
    monkeypatch.setattr(dense_demo_module, "run_dense_demo", lambda cfg, on_start: on_start())
    monkeypatch.setattr(student_probe_module, "run_student_probe",
                        lambda *a, **k: {"linear_probe": 0.5, "knn": 0.5})
    fake = SimpleNamespace(folder=tmp_path, backbone=None, network=None)
    monkeypatch.setattr(export_module, "load_run_backbone", lambda source: fake)

    def export_torchvision(run, out):
        out.write_bytes(b"weights")
        return out

    monkeypatch.setattr(export_module, "export_torchvision", export_torchvision)
    images = tmp_path / "images"
    images.mkdir()
    monkeypatch.setattr(embed_module, "embed_files", lambda root, student, **k: (
        [root / "a.png"], torch.zeros(1, 4), {"student": student, "labels": None}))
    return tmp_path


def verb_case(name: str, tmp: Path) -> tuple[list[str], list[str], Path]:
    """(the verb's required keys, where its output goes, where its config.yaml lands). The output goes by
    --run-dir, which the saved config leaves out, except for export, whose output file is its `path` key."""
    out = tmp / "out"
    cases = {
        "demo": ([], ["--run-dir", str(out)], out / "config.yaml"),
        "pretrain": (["--data.root", str(tmp)], ["--run-dir", str(out)], out / "config.yaml"),
        "teacher": ([], ["--run-dir", str(out)], out / "config.yaml"),
        "distill": ([], ["--run-dir", str(out)], out / "config.yaml"),
        "finetune": ([], ["--run-dir", str(out)], out / "config.yaml"),
        "probe": (["--student.source", "random"], ["--run-dir", str(out)], out / "config.yaml"),
        "layers": (["--student.arch", "resnet18_cifar", "--data.image_size", "8", "--student.width", "0.125"],
                   ["--run-dir", str(out)], out / "config.yaml"),
        "export": ([str(tmp), "--format", "torchvision"], ["--path", str(tmp / "w.safetensors")],
                   tmp / "w.config.yaml"),
        "embed": (["--student.source", str(tmp), "--data.root", str(tmp / "images")], ["--run-dir", str(out)],
                  out / "config.yaml"),
    }
    assert set(cases) == set(VERBS), "a new verb needs its case here"
    return cases[name]


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_prints_takes_and_saves_its_config(verb, stubbed, capsys, monkeypatch):
    if verb == "probe":  # a student probe reads its images: the digits, at 8 pixels, without a network
        monkeypatch.setattr("repfusion.data.train_test_split", lambda data: ([(torch.zeros(3, 8, 8), 0)], []))
    required, output, saved = verb_case(verb, stubbed)
    with pytest.raises(SystemExit) as stop:
        main([verb, *required, "--print_config"])
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    config = stubbed / f"{verb}.yaml"
    config.write_text(yaml.safe_dump(printed))
    assert main([verb, "--config", str(config), *output]) == 0, capsys.readouterr().err
    assert saved.is_file()
    written = yaml.safe_load(saved.read_text())
    expected = {k: v for k, v in printed.items() if k not in ("run_dir", "resume")}
    assert written == (expected if verb != "export" else {**expected, "path": output[1]})


def test_the_alias_table_names_keys_the_verbs_have():
    keys = {name: key_types(verb.schema()) for name, verb in VERBS.items()}
    for alias in ALIASES:
        new = alias.new.split()[0]
        for verb in alias.verbs:
            assert verb in VERBS, alias
            assert new == "--run-dir" and VERBS[verb].run_dir or new[2:] in keys[verb], (alias, verb)
        assert alias.verbs or any(new[2:] in k for k in keys.values()), alias
    olds = [(a.old, verb) for a in ALIASES for verb in (a.verbs or ("*",))]
    assert len(olds) == len(set(olds)), "one new spelling per old one and verb"


def test_a_key_means_the_same_in_every_verb():
    """A dotted key shared by two verbs has one type (null aside): one meaning, one token count."""
    from repfusion.flags import _members

    found: dict[str, dict[str, frozenset]] = {}
    for name, verb in VERBS.items():
        for key, hint in key_types(verb.schema()).items():
            found.setdefault(key, {})[name] = frozenset(m for m in _members(hint) if m is not type(None))
    differ = {key: by for key, by in found.items() if len(set(by.values())) > 1}
    assert not differ, differ
    sections = {".".join(key.split(".")[:i]) for key in found for i in range(1, key.count(".") + 1)}
    # the teacher verb's `teacher` is the teacher's source, spelled --teacher X as in every verb (see flags)
    assert {key for key in found if key in sections} == {"teacher"} and set(found["teacher"]) == {"teacher"}


def test_old_spellings_work_with_a_note_and_new_ones_without(stubbed, capsys):
    out = stubbed / "l"
    assert main(["layers", "--student", "resnet18_cifar", "--width", "0.125", "--image-size", "8", "--out",
                 str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("note:") == 4 and "--student is now spelled --student.arch" in err
    assert (out / "layers.txt").read_text().startswith("student resnet18_cifar (width 0.125) at 8x8")
    assert main(["export", str(stubbed), "--format", "torchvision", "--out", str(stubbed / "v.safetensors")]) == 0
    assert "--out is now spelled --path" in capsys.readouterr().err and (stubbed / "v.config.yaml").is_file()
    assert main(["probe", "--student", "random", "--probe.k", "3", "--run-dir", str(stubbed / "p")]) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_scalar_key_given_two_values_is_one_sentence(capsys, tmp_path):
    assert main(["probe", "--student", "random", "--student.layer", "layer3", "layer4", "--run-dir",
                 str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--student.layer takes one value, not 2" in err and not (tmp_path / "p").exists()


@pytest.mark.parametrize("spelled", [["--teacher", "tiny-32"], ["--teacher.source", "tiny-32"],
                                     ["--teacher.source=tiny-32"]])
def test_the_teacher_verb_reads_the_teacher_source_in_either_spelling(spelled, capsys):
    """Its `teacher` key is the source itself (a preset, folder or hub id): `--teacher.source X`, the spelling
    of every other verb, is that key too, silently (issue 24, item 2)."""
    with pytest.raises(SystemExit) as stop:
        main(["teacher", *spelled, "--print_config"])
    assert stop.value.code == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["teacher"] == "tiny-32" and "note:" not in err

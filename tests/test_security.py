"""Configs, flags, dataset files and checkpoints are data: nothing in them is imported, instantiated or run
(issue 13, items 1-3). Every case plants a payload that would create a marker file, and the marker must
never appear."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repfusion.cli import main

ROOT = Path(__file__).resolve().parents[1]
REAL_CIFAR = Path("/work/shared/data/cifar10-subset/cifar-10-batches-py")

MARKER_MODULE = '''
import pathlib
pathlib.Path("IMPORTED").write_text("the config imported this module")


class Boom:
    def __init__(self, *args, **kwargs):
        pathlib.Path("INSTANTIATED").write_text("the config instantiated this class")
'''


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """cwd = tmp_path, with an importable module whose import (or instantiation) leaves a marker."""
    (tmp_path / "markermod.py").write_text(MARKER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("markermod", None)
    yield tmp_path
    sys.modules.pop("markermod", None)


def payloads(marker: Path) -> list[dict]:
    return [
        {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {marker}", "shell": True}},
        {"class_path": "logging.FileHandler", "init_args": {"filename": str(marker)}},
        {"class_path": "markermod.Boom", "init_args": {}},
        {"class_path": "markermod.Boom"},
    ]


def markers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name in ("MARKER", "IMPORTED", "INSTANTIATED"))


FIELDS = [("trainer.extra", lambda p: {"x": p}), ("loss.options", lambda p: {"x": p}), ("trainer.devices", lambda p: p),
          ("trainer.extra", lambda p: p), ("loss.options", lambda p: p)]


@pytest.mark.parametrize("verb", ["distill", "finetune"])
def test_no_flag_or_yaml_value_is_ever_imported_or_instantiated(sandbox, capsys, verb):
    marker = sandbox / "MARKER"
    cases = []
    for payload in payloads(marker):
        for key, wrap in FIELDS:
            if verb == "finetune" and key.startswith("loss."):
                continue
            cases.append([f"--{key}", json.dumps(wrap(payload))])
            section, name = key.split(".")
            config = sandbox / "injected.yaml"
            config.write_text(json.dumps({section: {name: wrap(payload)}}))
            cases.append(["--config", str(config)])
        cases.append(["--trainer", json.dumps(payload)])  # a whole section given as a class
        (sandbox / "section.yaml").write_text(json.dumps(payload))
        cases.append(["--trainer", "section.yaml"])
        (sandbox / "nested.yaml").write_text(json.dumps({"trainer": payload}))
        cases.append(["--config", "nested.yaml"])
    cases.append(["--trainer.extra.class_path", "markermod.Boom"])
    for args in cases:
        code = main([verb, "--run-dir", str(sandbox / "run"), *args])
        err = capsys.readouterr().err
        assert code == 1, args
        assert len(error_lines(err)) == 1, (args, err)
        assert markers(sandbox) == [], args
    assert not (sandbox / "run").exists()


def test_yaml_python_tags_are_refused(sandbox, capsys):
    config = sandbox / "tag.yaml"
    config.write_text('trainer:\n  extra: !!python/object/apply:os.system ["touch MARKER"]\n')
    assert main(["distill", "--config", str(config)]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "tag.yaml" in err[0] and "line 2" in err[0]
    assert markers(sandbox) == []


def test_the_reported_shell_command_creates_nothing(tmp_path):
    """The exact command of the issue, through the installed CLI in a fresh process."""
    payload = '{"x":{"class_path":"subprocess.Popen","init_args":{"args":"touch MARKER","shell":true}}}'
    done = subprocess.run([sys.executable, "-m", "repfusion.cli", "distill", "--run-dir", "X", "--trainer.extra",
                           payload], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert len(error_lines(done.stderr)) == 1 and "a config is data" in done.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_free_form_fields_still_take_plain_data(sandbox):
    from repfusion.config import config_parser, parse_config
    from repfusion.distill.run import DistillRun

    run = parse_config(config_parser("t", DistillRun, ""), DistillRun,
                       ["--trainer.extra", '{"gradient_clip_val": 1.5, "num_sanity_val_steps": 0}',
                        "--loss.options", '{"mode": "dense", "weight": 1000}', "--trainer.devices", "[0, 1]"])
    assert run.config.trainer.extra == {"gradient_clip_val": 1.5, "num_sanity_val_steps": 0}
    assert run.config.loss.options == {"mode": "dense", "weight": 1000}
    assert run.config.trainer.devices == [0, 1]


class RunsCode:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_crafted_cifar_pickle_is_refused_without_running(tmp_path, cifar_dir, capsys):
    marker = tmp_path / "MARKER"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"hook": RunsCode(f"touch {marker}")}
    (cifar_dir / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    code = main(["distill", "--data.source", "cifar", "--data.root", str(cifar_dir), "--run-dir", str(tmp_path / "r")])
    err = error_lines(capsys.readouterr().err)
    assert code == 1 and len(err) == 1
    assert "data_batch_1" in err[0] and "refused" in err[0] and "posix.system" in err[0]
    assert not marker.exists()
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_of_every_protocol_still_load(tmp_path, protocol):
    from repfusion.data.cifar import load_pickle

    batch = {b"batch_label": b"x", b"labels": [1, 2], b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072),
             b"filenames": [b"a.png", b"b.png"]}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    loaded = load_pickle(path)
    assert np.array_equal(loaded["data"], batch[b"data"]) and loaded["labels"] == [1, 2]


@pytest.mark.skipif(not REAL_CIFAR.is_dir(), reason="the real CIFAR-10 subset is not on this machine")
def test_real_cifar_files_load_with_the_data_only_unpickler():
    from repfusion.data.cifar import cifar

    train, test = cifar(REAL_CIFAR, True), cifar(REAL_CIFAR, False)
    assert train.images.shape[1:] == (3, 32, 32) and len(train) > 0 and len(test) > 0
    assert train.classes[:2] == ["airplane", "automobile"]


def test_resume_over_a_checkpoint_with_pickled_code_is_one_sentence(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "MARKER"
    torch.save({"state_dict": {}, "evil": RunsCode(f"touch {marker}")}, run_dir / "checkpoints" / "last.ckpt")
    code = main(["distill", "--run-dir", str(run_dir), "--resume", "--student.width", "0.125",
                 "--trainer.progress", "false"])
    err = capsys.readouterr().err
    assert code == 1 and len(error_lines(err)) == 1  # handled: before, the UnpicklingError escaped as a traceback
    assert "weights_only=True" in error_lines(err)[0]
    assert not marker.exists()
    assert not (run_dir / "config.yaml").exists()


def _teacher_folder_with_bin(folder: Path, extra: object | None) -> Path:
    from repfusion.teachers import default_scheduler, unet_from_preset

    unet = unet_from_preset("tiny-16")
    unet.save_pretrained(folder)
    default_scheduler().save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    state = dict(unet.state_dict())
    if extra is not None:
        state["payload"] = extra
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    return folder


def test_teacher_folder_with_only_a_pickled_bin_says_it_is_pickled_and_refused(tmp_path, capsys):
    """Issue 19, item 14: not diffusers' fetch line and 'Unable to load weights'; the code never runs."""
    marker = tmp_path / "MARKER"
    folder = _teacher_folder_with_bin(tmp_path / "teacher", RunsCode(f"touch {marker}"))
    assert main(["layers", "--teacher", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a pickle that asks for more than tensors" in err and "posix.system" in err
    assert "refuses it" in err and "weights_only=False" not in err and not marker.exists()
    assert main(["probe", "--student", str(folder), "--out", str(tmp_path / "p")]) == 1  # not a student at all
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "does not describe a repfusion student" in err[0] and "permissions" not in err[0]


def test_teacher_folder_with_a_plain_tensor_bin_still_loads(tmp_path):
    from repfusion.teachers import load_teacher

    folder = _teacher_folder_with_bin(tmp_path / "teacher", None)
    assert load_teacher(str(folder)).kind == "unet"

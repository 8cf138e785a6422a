"""Issue 19, items 8-17: every bad input is one sentence, found before the first write; inputs that read
what they should not (paths out of data.root, symlinks out of an image folder) or read wrongly (16-bit PNGs,
a probe scoring on its own training images) are fixed."""

import errno
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repfusion.cli import main
from repfusion.data import DataConfig, ImageDataModule, image_folder, train_test_split
from repfusion.data.celebamask import celebamask
from repfusion.data.datasets import read_image
from repfusion.data.wflw import wflw
from repfusion.errors import RepFusionError, torch_load_reason

from test_dense_data import _celebamask_root, _wflw_line, _wflw_root

SMALL = ["--data.batch_size", "16", "--trainer.progress", "false", "--trainer.max_epochs", "1",
         "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def refused(capsys, argv: list[str], message: str, run_dir: Path) -> str:
    """The verb exits 1 with one `error:` line holding `message`, no traceback, and writes nothing."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not run_dir.exists(), sorted(run_dir.rglob("*"))
    return lines[0]


# ---------------------------------------------------------------- items 8 and 13: checks before the first write
BEFORE_WRITE = [
    ("distill", ["--optim.lr", "-1"], "optim.lr must be a positive learning rate"),  # wrote config.yaml
    ("finetune", ["--optim.lr", "0"], "optim.lr must be a positive learning rate"),
    ("teacher", ["--optim.name", "lamb"], "optim.name must be one of sgd, adam, adamw"),
    ("distill", ["--optim.schedule", "linear"], "optim.schedule must be one of"),
    ("distill", ["--optim.momentum", "1.5"], "optim.momentum must be in [0, 1)"),
    ("distill", ["--trainer.extra", '{"accumulate_grad_batches": 0}'], "accumulate_grad_batches must be a whole"),
    ("distill", ["--trainer.extra", '{"gradient_clip_val": -1}'], "gradient_clip_val must be a number >= 0"),
    ("distill", ["--trainer.strategy", "bogus"], "Unknown trainer.strategy 'bogus'"),
    ("distill", ["--trainer.strategy", "dpp"], "closest valid names: ddp"),
    ("distill", ["--trainer.extra", '{"profiler": "bogus"}'], "profiler must be one of simple, advanced"),
    ("distill", ["--trainer.devices", "abc"], "trainer.devices must be a device count"),
    ("teacher", ["--sample_steps", "0"], "sample_steps must be at least 1"),  # failed after training and export
    ("teacher", ["--sample_steps", "5000"], "exceeds the teacher's 1000 diffusion steps"),
    ("teacher", ["--samples", "-1"], "samples must be a number of sample images >= 0"),
    ("distill", ["--timesteps.strategy", "decay", "--timesteps.t_max_end", "5000", "--teacher.noise_mode", "noised"],
     "timesteps.t_max_end must lie in [1, 1000]"),  # IndexError mid-training
    ("distill", ["--data.std", "[0, 0, 0]"], "data.std must be positive"),  # NaN loss after config.yaml
    ("distill", ["--trainer.seed", "-1"], "trainer.seed must be a whole number in [0, 4294967295]"),  # traceback
    ("distill", ["--timesteps.entropy_weight", "-1"], "timesteps.entropy_weight must be a number >= 0"),  # trained
    ("distill", ["--timesteps.policy_lr_scale", "0"], "timesteps.policy_lr_scale must be a number > 0"),
    ("distill", ["--loss.kd_weight", "-1"], "loss.kd_weight must be a number >= 0"),
]


@pytest.mark.parametrize("verb,flags,message", BEFORE_WRITE)
def test_bad_values_are_refused_before_the_first_write(tmp_path, capsys, verb, flags, message):
    run_dir = tmp_path / "run"
    refused(capsys, [verb, "--run-dir", str(run_dir), *SMALL, *flags], message, run_dir)


def test_finetune_init_with_a_broken_student_config_is_one_sentence(tmp_path, capsys):
    student = tmp_path / "distilled" / "student"
    student.mkdir(parents=True)
    (student / "config.json").write_text("{not json")
    refused(capsys, ["finetune", "--run-dir", str(tmp_path / "run"), *SMALL, "--init", str(tmp_path / "distilled")],
            "is not readable JSON", tmp_path / "run")
    (student / "config.json").write_text(json.dumps({"_class_name": "ResNet", "width": 1.0}))
    refused(capsys, ["finetune", "--run-dir", str(tmp_path / "run"), *SMALL, "--init", str(tmp_path / "distilled")],
            "has no valid 'arch'", tmp_path / "run")


def test_layers_of_a_garbage_safetensors_file_is_one_sentence(tmp_path, capsys):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    assert main(["layers", "--teacher", str(garbage)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a valid safetensors file" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- image decoding
def _png_claiming(path: Path, width: int, height: int) -> None:
    """A tiny valid PNG whose header then claims width x height (the pixels are never decoded)."""
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_png_is_one_sentence(tmp_path, capsys):
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / f"{i}.png")  # grayscale: the note opens files
    _png_claiming(folder / "bomb.png", 30000, 30000)
    data = image_folder(tmp_path / "data", image_size=8)  # the grayscale note must not crash on it
    with pytest.raises(RepFusionError, match="decompression-bomb limit") as err:
        [data[i] for i in range(len(data))]
    assert "bomb.png" in str(err.value) and "\n" not in str(err.value)


def test_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I")  # PIL reads it as 16-bit, which convert("RGB") clips to 0 or 255
    pixels = read_image(tmp_path / "g16.png", None)
    assert pixels.dtype == torch.uint8 and pixels[:, 0].tolist() == [[0, 1, 128, 255]] * 3


# ---------------------------------------------------------------------------------------- symlinks (item 10)
def test_symlinks_out_of_the_image_folder_are_skipped_with_a_note(tmp_path, capsys):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    for folder in (root / "a", root / "b", outside / "c"):
        folder.mkdir(parents=True)
    for i in range(3):
        for folder in (root / "a", root / "b", outside / "c"):
            Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(folder / f"{i}.png")
    (root / "a" / "stolen.png").symlink_to(outside / "c" / "0.png")  # a file link out of the root
    (root / "b" / "more").symlink_to(outside / "c")  # a folder link out of the root
    (root / "b" / "alias.png").symlink_to(root / "a" / "1.png")  # stays inside: followed
    data = image_folder(root, image_size=8)
    assert len(data) == 7 and not any("elsewhere" in str(p.resolve()) for p in data.files)
    err = capsys.readouterr().err
    assert "note: skipped 2 symbolic link(s)" in err and "lead outside it" in err
    (root / "c").symlink_to(outside / "c")  # a whole class folder out of the root
    assert len(image_folder(root, image_size=8).classes) == 2


# ---------------------------------------------------------------------------------------------- WFLW (9, 13, 14)
def _points() -> np.ndarray:
    return np.full((98, 2), 50.0)


@pytest.mark.parametrize("name", ["/etc/secret.png", "../../outside.png", "0--Parade/../../../x.png"])
def test_wflw_image_paths_out_of_the_root_are_refused(tmp_path, name):
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(outside)
    root = _wflw_root(tmp_path / "w", extra=_wflw_line(_points(), (10, 10, 60, 60), (0,) * 6, name))
    with pytest.raises(RepFusionError, match="line 3 names the image .* outside WFLW_images/") as err:
        wflw(root, train=True)
    assert "\n" not in str(err.value)


def test_wflw_image_linked_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(outside)
    root = _wflw_root(tmp_path / "w", extra=_wflw_line(_points(), (10, 10, 60, 60), (0,) * 6, "0--Parade/l.png"))
    (root / "WFLW_images" / "0--Parade" / "l.png").symlink_to(outside)
    with pytest.raises(RepFusionError, match="is a link to a file outside"):
        wflw(root, train=True)


@pytest.mark.parametrize("box,message", [
    ((10, 10, 1e9, 60), r"the face box \(10, 10, 1e\+09, 60\) is not a box"),  # a traceback before
    ((60, 10, 10, 60), "is not a box"),
    ((float("nan"), 10, 60, 60), "line 3: the face box is nan, not a finite number"),  # was 'corrupt image'
])
def test_wflw_bad_boxes_are_one_true_sentence(tmp_path, box, message):
    root = _wflw_root(tmp_path, extra=_wflw_line(_points(), box, (0,) * 6, "0--Parade/a.png"))
    with pytest.raises(RepFusionError, match=message) as err:
        wflw(root, train=True)
    assert "corrupt" not in str(err.value)


def test_wflw_nan_landmarks_are_refused_by_the_reader(tmp_path):
    points = _points()
    points[7, 1] = np.nan  # passed the reader, then surfaced as "the training loss became nan"
    root = _wflw_root(tmp_path, extra=_wflw_line(points, (10, 10, 60, 60), (0,) * 6, "0--Parade/a.png"))
    with pytest.raises(RepFusionError, match="line 3: landmark 7 is nan, not a finite number"):
        wflw(root, train=True)


def test_celebamask_image_with_a_non_ascii_digit_name_is_not_a_traceback(tmp_path):
    root = _celebamask_root(tmp_path)
    before = len(celebamask(root, "train", 8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "CelebA-HQ-img" / "\u00b2.jpg")  # '²'.isdigit()
    assert len(celebamask(root, "train", 8)) == before  # not a CelebA-HQ index: not read, no ValueError


# --------------------------------------------------------------------------------------------- probe (item 12)
def _flat_folder(root: Path, n: int = 20) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n // 2):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root


def test_probe_uses_the_training_verbs_hold_out_on_a_folder_without_splits(tmp_path, capsys):
    root = _flat_folder(tmp_path / "noise")
    cfg = DataConfig(source="folder", root=str(root), image_size=8)
    train, test = train_test_split(cfg)
    dm = ImageDataModule(cfg)
    dm.setup()
    assert list(test.indices) == list(dm.test_set.indices)  # the training verbs' seeded hold-out, exactly
    assert not set(train.indices) & set(test.indices) and len(train) + len(test) == 20 and 1 <= len(test) < 20
    held = len(test)
    assert main(["probe", "--student", "random:resnet18_cifar", "--width", "0.125", "--data", "folder", "--root",
                 str(root), "--image-size", "8", "--out", str(tmp_path / "probe"), "--k", "3"]) == 0
    assert f"on {20 - held} train / {held} test images" in capsys.readouterr().out  # was 20 / 20: its own images


# ------------------------------------------------------------------------------------- sentences (item 14)
def test_checkpoint_refusal_never_tells_the_user_to_turn_weights_only_off(tmp_path):
    from repfusion.io import load_checkpoint

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"state_dict": {"x": Payload()}}, tmp_path / "evil.ckpt")
    with pytest.raises(RepFusionError) as err:
        load_checkpoint(tmp_path / "evil.ckpt")
    text = str(err.value)
    assert "posix.system" in text and "False" not in text and "trusted source" not in text and "\n" not in text
    assert torch_load_reason(ValueError("Weights only load failed. Re-running `torch.load` with `weights_only` set "
                                        "to `False` will likely succeed.")) == "ValueError"


def test_a_full_disk_names_the_file_being_written(tmp_path, capsys, monkeypatch):
    from repfusion.io import atomic_write

    def full(tmp: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "metrics.csv", full)
    assert err.value.filename == str(tmp_path / "metrics.csv")
    import repfusion.config as config

    monkeypatch.setattr(config, "write_text", lambda path, text: atomic_write(path, full))
    assert main(["distill", "--run-dir", str(tmp_path / "run"), *SMALL, "--student.width", "0.125"]) == 1
    err_lines = error_lines(capsys.readouterr().err)
    assert len(err_lines) == 1 and str(tmp_path / "run" / "config.yaml") in err_lines[0]
    assert "No space left on device" in err_lines[0]


def test_student_folder_with_only_a_pickled_bin_says_so(tmp_path, capsys):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "ResNet", "arch": "resnet18_cifar",
                                                    "width": 0.125, "num_classes": 0, "in_channels": 3}))
    torch.save({"conv1.weight": torch.zeros(1)}, folder / "diffusion_pytorch_model.bin")
    assert main(["probe", "--student", str(folder), "--out", str(tmp_path / "p")]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "a pickle" in err[0] and "refuses it" in err[0] and "permissions" not in err[0]

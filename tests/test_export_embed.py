"""`repfusion export --format onnx` and `repfusion embed` on a tiny distill run."""

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from repfusion.cli import main
from repfusion.data.augment import Normalize
from repfusion.data.datasets import read_image
from repfusion.run_backbone import PooledBackbone, load_run_backbone
from repfusion.students import build_student
from repfusion.torchvision_keys import load_timm_folder

FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.progress", "false", "--data.batch_size", "16", "--student.width", "0.125"]


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    assert main(["distill", "--run-dir", str(run_dir), *FAST]) == 0
    return run_dir


@pytest.fixture
def photos(tmp_path):
    """Nested folders, no labels, mixed sizes, a grayscale PNG and a file that is not an image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for rel, shape in [("2024/jan/a.png", (20, 24, 3)), ("2024/b.jpg", (16, 16, 3)), ("c.png", (30, 18)),
                       ("2023/x/y/z/d.png", (16, 16, 3))]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / rel)
    (root / "notes.txt").write_text("not an image")
    return root


def expected_features(run_dir, root, files):
    run = load_run_backbone(run_dir)
    images = torch.stack([read_image(root / f, 16) for f in files]).float() / 255
    with torch.no_grad():
        return PooledBackbone(run.backbone).eval()(Normalize(run.mean, run.std)(images))


def test_embed_writes_features_in_the_order_of_the_file_list(distill_run, photos, tmp_path, capsys):
    out = tmp_path / "emb"
    assert main(["embed", "--student", str(distill_run), "--data.root", str(photos), "--run-dir", str(out),
                 "--data.batch_size", "3"]) == 0
    with open(out / "files.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["file"]  # a loose image beside the folders: not the class layout, so no label column
    files = [row[0] for row in rows[1:]]
    assert files == ["2023/x/y/z/d.png", "2024/b.jpg", "2024/jan/a.png", "c.png"]
    features = load_file(str(out / "features.safetensors"))["features"]
    assert features.shape == (4, 64)
    assert torch.allclose(features, expected_features(distill_run, photos, files), atol=1e-5)
    assert "embed: 4/4 images" in capsys.readouterr().err  # progress on stderr once there is more than a batch
    npy = tmp_path / "npy"
    assert main(["embed", "--student", str(distill_run / "student"), "--data.root", str(photos), "--run-dir", str(npy),
                 "--format", "npy"]) == 0
    assert np.allclose(np.load(npy / "features.npy", allow_pickle=False), features.numpy(), atol=1e-6)


def test_embed_bad_input_is_one_sentence_and_writes_nothing(distill_run, photos, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "ok.png").write_bytes((photos / "c.png").read_bytes())
    (corrupt / "bad.png").write_bytes(b"\x89PNG not really")
    cases = [(["--student", str(distill_run), "--data.root", str(tmp_path / "missing")], "not a folder"),
             (["--student", str(distill_run), "--data.root", str(tmp_path / "empty")], "holds no images"),
             (["--student", str(tmp_path), "--data.root", str(photos)], "not a repfusion run"),
             (["--student", str(tmp_path / "nope"), "--data.root", str(photos)], "does not exist"),
             (["--student", str(distill_run), "--data.root", str(corrupt)], "bad.png")]
    for args, words in cases:
        out = tmp_path / "out"
        assert main(["embed", *args, "--run-dir", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and err.count("\n") == 0 and words in err, err
        assert not out.exists()


onnx_installed = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxscript") is not None


@pytest.mark.skipif(not onnx_installed, reason="the optional onnx extra is not installed")
def test_onnx_export_computes_the_backbone_features_at_any_batch_size(distill_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "backbone.onnx"
    assert main(["export", str(distill_run), "--format", "onnx", "--out", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["image_size"] == "16" and meta["mean"] == "[0.5, 0.5, 0.5]"
    run = load_run_backbone(distill_run)
    x = torch.randn(3, 3, 16, 16)  # exported with a batch of 2: the batch dimension is dynamic
    with torch.no_grad():
        want = PooledBackbone(run.backbone).eval()(x).numpy()
    got = ReferenceEvaluator(model).run(None, {"images": x.numpy()})[0]
    assert got.shape == (3, 64) and np.allclose(got, want, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["backbone.onnx"]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A finetune run's model/ as it exports a classifier (backbone + fc head), with the run's config.yaml."""
    run_dir = tmp_path_factory.mktemp("classifier") / "run"
    torch.manual_seed(0)
    build_student("resnet18_cifar", 0.125, num_classes=10).save_pretrained(run_dir / "model", safe_serialization=True)
    (run_dir / "config.yaml").write_text("data:\n  image_size: 16\n  mean: [0.4, 0.5, 0.6]\n  std: [0.2, 0.3, 0.4]\n")
    return run_dir


def test_distill_export_has_a_timm_folder_that_reloads_the_same_backbone(distill_run):
    run = load_run_backbone(distill_run)
    config = json.loads((distill_run / "student" / "timm" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16] and config["pretrained_cfg"]["mean"] == list(run.mean)
    assert config["num_features"] == run.backbone.feature_channels == 64 and config["num_classes"] == 0
    again = load_timm_folder(distill_run / "student" / "timm")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert (again(x) - run.backbone.eval()(x)).abs().max().item() == 0.0


@pytest.mark.skipif(not onnx_installed, reason="the optional onnx extra (onnx, onnxscript) is not installed")
def test_onnx_export_of_the_classifier_gives_its_logits(classifier_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    assert main(["export", str(classifier_run), "--format", "onnx", "--head"]) == 0
    model = onnx.load(str(classifier_run / "model" / "classifier.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["num_classes"] == "10" and meta["mean"] == "[0.4, 0.5, 0.6]" and "logits" in meta["output"]
    assert [o.name for o in model.graph.output] == ["logits"]
    run = load_run_backbone(classifier_run)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = run.network.eval()(x).numpy()
    got = ReferenceEvaluator(model).run(None, {"images": x.numpy()})[0]
    assert got.shape == (3, 10) and np.allclose(got, want, atol=1e-4)


def test_head_export_needs_a_classifier(distill_run, classifier_run, tmp_path, capsys):
    assert main(["export", str(distill_run), "--format", "timm", "--head", "--path", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err.strip()
    assert "without a classifier head" in err and err.count("\n") == 0 and not (tmp_path / "t").exists()
    assert main(["export", str(classifier_run), "--format", "timm", "--head", "--out", str(tmp_path / "t")]) == 0
    assert load_timm_folder(tmp_path / "t").fc.out_features == 10


def test_onnx_export_without_the_extra_says_how_to_install_it(distill_run, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    out = tmp_path / "b.onnx"
    assert main(["export", str(distill_run), "--format", "onnx", "--path", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install repfusion[onnx]" in err and "onnxscript" in err and err.count("\n") == 0
    assert not out.exists()


def test_export_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "torchvision"]) == 1
    assert "not a repfusion run" in capsys.readouterr().err

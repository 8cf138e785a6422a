"""Issue 25, in a practitioner's tools: the embeddings' file list as real CSV (with labels where known),
k-NN probes only where every class has k labelled images, and `pretrain` refusing a student architecture
before anything is written."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import Subset

from fake_vision import install_fakes
from repfusion.analysis.student_probe import knn_accuracy, knn_neighbours, probe_student, run_student_probe
from repfusion.cli import main
from repfusion.data import Normalize, digits
from repfusion.data.datasets import read_image
from repfusion.pipeline import report as report_module
from repfusion.pipeline import run as pipeline_run
from repfusion.run_backbone import PooledBackbone, load_run_backbone
from repfusion.students import build_student, check_student


# 1. embeddings: files.csv


@pytest.fixture(scope="module")
def student_run(tmp_path_factory) -> Path:
    """A student folder as distill exports it, with its run's config.yaml (no training: embed only reads it)."""
    folder = tmp_path_factory.mktemp("embed") / "run"
    torch.manual_seed(0)
    build_student("resnet18_cifar", 0.125).save_pretrained(folder / "student", safe_serialization=True)
    (folder / "config.yaml").write_text("data:\n  mean: [0.5, 0.5, 0.5]\n  std: [0.5, 0.5, 0.5]\n")
    return folder


def write_images(root: Path, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name)


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def embed(student: Path, root: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--student", str(student), "--data.root", str(root), "--run-dir", str(out),
                 "--data.image_size", "16", *extra])


def test_embed_files_csv_keeps_commas_and_quotes_and_labels_class_folders(student_run, tmp_path):
    root = tmp_path / "pets"
    names = ["cat/a,b.png", 'cat/say "hi".png', "dog/c.png", "dog/deeper/d, e.png"]
    write_images(root, names)
    out = tmp_path / "emb"
    assert embed(student_run, root, out) == 0
    assert not (out / "files.txt").exists()
    rows = read_rows(out / "files.csv")
    assert rows == [["file", "label"], *([name, name.split("/")[0]] for name in sorted(names))]
    features = load_file(str(out / "features.safetensors"))["features"]
    run = load_run_backbone(student_run)
    with torch.no_grad():  # row i of the array is the image named in row i of the CSV
        expected = PooledBackbone(run.backbone).eval()(Normalize(run.mean, run.std)(
            torch.stack([read_image(root / r[0], 16) for r in rows[1:]]).float() / 255))
    assert torch.allclose(features, expected, atol=1e-5)
    assert json.loads((out / "embed.json").read_text())["files"] == "files.csv"
    if importlib.util.find_spec("pandas") is not None:  # not a dependency; csv.reader above reads the same
        import pandas

        table = pandas.read_csv(out / "files.csv")
        assert list(table.columns) == ["file", "label"] and list(table["file"]) == sorted(names)


def test_embed_labels_none_a_csv_or_folders_that_cannot_label(student_run, tmp_path, capsys):
    root = tmp_path / "pets"
    write_images(root, ["cat/a,b.png", "dog/c.png", "loose.png"])
    out = tmp_path / "auto"
    assert embed(student_run, root, out) == 0  # a loose image: not the class layout, so no label column
    assert read_rows(out / "files.csv") == [["file"], ["cat/a,b.png"], ["dog/c.png"], ["loose.png"]]
    out = tmp_path / "none"
    assert embed(student_run, root, out, "--data.labels", "none") == 0
    assert read_rows(out / "files.csv")[0] == ["file"]
    labels = tmp_path / "labels.csv"
    labels.write_text('file,label\n"cat/a,b.png","tabby, small"\nloose.png,other\n')
    out = tmp_path / "csv"
    assert embed(student_run, root, out, "--data.labels", str(labels)) == 0
    assert read_rows(out / "files.csv") == [["file", "label"], ["cat/a,b.png", "tabby, small"], ["dog/c.png", ""],
                                            ["loose.png", "other"]]
    capsys.readouterr()
    out = tmp_path / "folders"
    assert embed(student_run, root, out, "--data.labels", "folders") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "loose.png" in err and not out.exists()


# 2. k-NN probes only where every class has k labelled images


def test_knn_k_is_the_smallest_class_count_and_none_without_a_class_or_with_one_class():
    assert knn_neighbours(np.repeat([0, 1, 2], 30), np.array([0, 1, 2]), 20) == (20, "")
    k, note = knn_neighbours(np.array([0, 0, 0, 1, 1, 2, 2, 2]), np.array([0, 1, 2]), 20)
    assert k == 2 and "from 20 to 2" in note
    assert knn_neighbours(np.array([0, 1, 2]), np.array([0]), 20)[0] == 1  # one image a class: 1-NN
    k, note = knn_neighbours(np.array([0, 0, 1, 1]), np.array([0, 1, 2]), 20)
    assert k is None and "class 2 has no labelled training image" in note
    assert knn_neighbours(np.zeros(30), np.zeros(5), 20)[0] is None  # one class: nothing to tell apart
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 10
    train_y, test_y = np.array([0, 0, 1, 1, 1, 2, 2, 2]), np.array([0, 1, 2] * 5)
    train = (centres[train_y] + rng.standard_normal((8, 8)), train_y)
    test = (centres[test_y] + rng.standard_normal((15, 8)), test_y)
    assert knn_accuracy(train, test, 20) == 1.0  # 2-NN; a 8-NN over every image would be the class prior
    assert knn_accuracy((train[0][:5], train_y[:5]), test, 20) is None  # class 2 has no training image


def few_labels(per_class: dict[int, int]) -> Subset:
    data = digits(True)
    labels = data.labels.numpy()
    return Subset(data, [int(i) for c, n in per_class.items() for i in np.flatnonzero(labels == c)[:n]])


def test_probe_states_its_k_and_reports_print_a_dash_without_knn(tmp_path):
    test = few_labels({c: 4 for c in range(10)})
    reduced = probe_student("random:resnet18_cifar", few_labels({c: 3 for c in range(10)}), test, width=0.125)
    assert reduced["knn_k"] == 3 and reduced["knn"] is not None and "from 20 to 3" in reduced["knn_note"]
    out = tmp_path / "probe"
    result = run_student_probe("random:resnet18_cifar", few_labels({c: 3 for c in range(9)}), test, out,
                               width=0.125)  # class 9 has no labelled training image
    assert result["knn"] is None and result["knn_k"] is None
    written = json.loads((out / "student_probe.json").read_text())
    assert written["knn"] is None and "class 9" in written["knn_note"]
    md = (out / "student_probe.md").read_text()
    assert md.splitlines()[-1].endswith("| - |") and "no k-NN: class 9" in md
    table = report_module.probe_table({"random init": [result], "repfusion": [reduced]})
    assert "| random init | " in table and table.splitlines()[2].endswith("| - |")
    assert report_module.probe_knn_words({"a": [reduced]}).startswith("k = 3 (k lowered from 20 to 3")


# 3. pretrain: the student architecture is checked before anything is read or written


@pytest.mark.parametrize("args, said, unsaid", [
    (["--student.arch", "timm:os.system"], "names no timm model", None),
    (["--student.arch", "torchvision:no_such_net", "--student.width", "0.25"], "Unknown torchvision model "
     "'no_such_net'", "width multiplier"),
    (["--student.arch", "torchvision:resnet18", "--student.width", "0.25"], "no width multiplier", None),
    (["--student.arch", "resnet81"], "Unknown student 'resnet81'", None)])
def test_pretrain_refuses_a_bad_student_arch_before_any_write(tmp_path, monkeypatch, capsys, args, said, unsaid):
    calls = install_fakes(monkeypatch, sys_modules=False)  # Lightning and torchmetrics must not see the fakes

    def no_data(*_args, **_kwargs):
        raise AssertionError("the data were inspected before the student was checked")

    monkeypatch.setattr(pipeline_run, "inspect_data", no_data)
    root = tmp_path / "digits"
    write_images(root, ["0/a.png", "1/b.png"])
    run_dir = tmp_path / "run"
    assert main(["pretrain", "--data.root", str(root), *args, "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and said in err[0], err
    assert unsaid is None or unsaid not in err[0]
    assert not run_dir.exists()
    assert not [c for c in calls if c[0] in ("create_model", "get_model")]  # nothing was built
    if "os.system" in args[1]:
        assert not calls  # refused before timm was even asked


def test_check_student_names_the_missing_model_before_the_width(monkeypatch):
    install_fakes(monkeypatch, sys_modules=False)
    from repfusion.errors import RepFusionError

    with pytest.raises(RepFusionError, match="Unknown torchvision model 'no_such_net'"):
        check_student("torchvision:no_such_net", 0.25)
    with pytest.raises(RepFusionError, match="Unknown timm model 'convnext_tiyn'"):
        build_student("timm:convnext_tiyn", 0.5)
    check_student("timm:convnext_tiny")
    check_student("resnet18_cifar", 0.25)

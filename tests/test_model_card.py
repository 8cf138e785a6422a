"""Model cards: written with huggingface_hub's API, parsed back with it, updated without losing facts."""

import json
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from repfusion.cli import main
from repfusion.errors import RepFusionError
from repfusion.model_card import command_line, read_model_card, update_model_card_metrics, write_model_card

FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.progress", "false", "--data.batch_size", "16"]

FACTS = {"stage": "distill",
         "teacher": {"source": "google/ddpm-cifar10-32", "kind": "unet", "layer": ["mid_block"], "init": "random"},
         "data": {"source": "folder", "root": "photos", "image_size": 32, "label_fraction": 0.0},
         "loss": {"name": "hint"}, "timesteps": {"strategy": "fixed", "t": 100},
         "student": {"arch": "resnet18", "width": 1.0}}


def front_matter(path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_card_yaml_parses_back_with_facts_metrics_and_command(tmp_path):
    metrics = [{"name": "probe/linear", "value": 0.9, "split": "test", "type": "accuracy"},
               {"name": "probe/linear", "value": 0.8, "split": "test", "arm": "scratch", "ci95": [0.7, 0.85]}]
    write_model_card(tmp_path, FACTS, metrics, command="repfusion distill --data.root photos")
    data = ModelCard.load(tmp_path / "README.md").data.to_dict()
    assert data == front_matter(tmp_path / "README.md")
    for key, value in FACTS.items():
        assert data[key] == value
    assert data["library_name"] == "repfusion"
    assert "repfusion" in data["tags"] and "random-teacher-control" in data["tags"]
    assert data["command"] == "repfusion distill --data.root photos"
    own = data["model-index"][0]["results"]
    assert len(own) == 1 and own[0]["metrics"][0]["value"] == 0.9  # baselines stay out of model-index
    assert [m.get("arm") for m in data["results"]] == [None, "scratch"] and data["results"][1]["ci95"] == [0.7, 0.85]
    assert ModelCard.load(tmp_path / "README.md").data.eval_results[0].metric_name == "probe/linear"
    assert "| scratch | probe/linear | test | 0.8000 |" in (tmp_path / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # written atomically: no temporary left


def test_update_adds_baselines_and_replaces_a_metric_keeping_every_fact(tmp_path):
    write_model_card(tmp_path, FACTS, [{"name": "test/acc", "value": 0.5}])
    update_model_card_metrics(tmp_path, [{"name": "test/acc", "value": 0.6},
                                         {"name": "test/acc", "value": 0.4, "arm": "scratch"}])
    data = read_model_card(tmp_path)
    assert {k: data[k] for k in FACTS} == FACTS
    assert [(m["value"], m.get("arm")) for m in data["results"]] == [(0.6, None), (0.4, "scratch")]
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.6
    with pytest.raises(RepFusionError, match="no README.md"):
        update_model_card_metrics(tmp_path / "missing", [])
    with pytest.raises(RepFusionError, match="'name' and a 'value'"):
        update_model_card_metrics(tmp_path, [{"value": 1.0}])
    with pytest.raises(RepFusionError, match="reserved key 'tags'"):
        write_model_card(tmp_path, {"tags": ["x"]})


def test_command_line_is_recorded_only_for_the_repfusion_command():
    assert command_line(["/usr/bin/repfusion", "distill", "--data.root", "my photos"]) == \
        "repfusion distill --data.root 'my photos'"
    assert command_line(["/x/site-packages/repfusion/__main__.py", "embed"]) == "repfusion embed"
    assert command_line(["/x/pytest", "-q"]) is None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A distill run and a finetune run from it, both through the command line."""
    root = tmp_path_factory.mktemp("cards")
    argv = sys.argv
    sys.argv = ["repfusion", "distill"]  # what the console script sees; recorded as the card's command
    try:
        assert main(["distill", "--run-dir", str(root / "d"), "--student.width", "0.125", *FAST]) == 0
        assert main(["finetune", "--init", str(root / "d"), "--run-dir", str(root / "f"), *FAST]) == 0
    finally:
        sys.argv = argv
    return root


def test_distill_export_carries_its_card(runs):
    data = read_model_card(runs / "d" / "student")
    assert data["teacher"] == {"source": "tiny-16", "kind": "unet", "layer": ["mid_block.resnets.1.conv2"],
                               "init": "pretrained", "noise_mode": "clean"}
    assert data["data"]["source"] == "digits" and data["data"]["image_size"] == 16
    reads_labels = data["reward"] == "label"  # distillation reads labels only through the label reward, and says so
    assert data["data"]["label_fraction"] == (1.0 if reads_labels else 0.0)
    assert data["loss"]["name"] == "hint" and data["timesteps"]["strategy"] == "reinforced"
    assert data["student"]["arch"] == "resnet18_cifar" and data["student"]["width"] == 0.125
    assert data["command"] == "repfusion distill" and data["config"]["student"]["width"] == 0.125
    assert data["torchvision"]["file"] is None and "CIFAR stem" in data["torchvision"]["reason"]
    assert data["steps"] == 2


def test_finetune_export_carries_test_metrics_and_the_teacher_of_its_init(runs):
    data = read_model_card(runs / "f" / "model")
    assert data["stage"] == "finetune" and data["task"] == "classification"
    assert data["init"].startswith("distilled") and data["teacher"]["source"] == "tiny-16"
    assert data["data"]["label_fraction"] == 1.0 and data["data"]["image_size"] == 16
    own = data["model-index"][0]["results"]
    assert own[0]["task"]["type"] == "image-classification"
    names = {m["name"]: m["value"] for m in data["results"]}
    results = json.loads((runs / "f" / "results.json").read_text())
    assert names["test/top1"] == pytest.approx(results["test/top1"]) and "weights" not in names
    assert {m["type"] for m in own[0]["metrics"]} >= {"accuracy"}

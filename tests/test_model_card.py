"""Model cards: written with huggingface_hub's API, parsed back with it, updated without losing facts."""

import json
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from repfusion.cli import main
from repfusion.errors import RepFusionError
from repfusion.export_card import dataset_ids, pretrain_cards, rebased, shown_path, teacher_license
from repfusion.model_card import command_line, read_model_card, update_model_card_metrics, write_model_card
from repfusion.pipeline.report import card_metrics
from repfusion.teachers import unet_from_preset

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
    """A distill run from a local teacher folder whose card names a license, and a finetune run from it,
    both through the command line."""
    root = tmp_path_factory.mktemp("cards")
    teacher = root / "teachers" / "mine"
    torch.manual_seed(0)
    unet_from_preset("tiny-16").save_pretrained(teacher)
    (teacher / "README.md").write_text("---\nlicense: mit\n---\n\n# a teacher\n")
    argv = sys.argv
    sys.argv = ["repfusion", "distill"]  # what the console script sees; recorded as the card's command
    try:
        assert main(["distill", "--run-dir", str(root / "d"), "--student.width", "0.125", "--teacher.source",
                     str(teacher), *FAST]) == 0
        assert main(["finetune", "--init", str(root / "d"), "--run-dir", str(root / "f"), *FAST]) == 0
    finally:
        sys.argv = argv
    return root


def test_distill_export_carries_its_card(runs):
    data = read_model_card(runs / "d" / "student")
    assert data["teacher"] == {"source": "../teachers/mine", "kind": "unet", "layer": ["mid_block.resnets.1.conv2"],
                               "init": "pretrained", "noise_mode": "clean"}  # relative to the run folder, not "mine"
    assert (runs / "d" / data["teacher"]["source"] / "config.json").is_file()
    assert data["license"] == "mit" and "teacher's card" in data["license_note"]
    assert data["datasets"] == ["digits"] and data["library_name"] == "repfusion"
    assert data["pipeline_tag"] == "image-feature-extraction" and data["seed"] == 0
    assert data["timm_folder"]["folder"] == "timm" and (runs / "d" / "student" / "timm" / "model.safetensors").is_file()
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
    assert data["init"] == "distilled (../d)" and data["teacher"]["source"] == "../teachers/mine"  # rebased to f/
    assert data["license"] == "mit" and data["pipeline_tag"] == "image-classification"
    assert data["datasets"] == ["digits"] and data["seed"] == 0 and data["timm_folder"]["num_classes"] == 10
    assert data["data"]["label_fraction"] == 1.0 and data["data"]["image_size"] == 16
    own = data["model-index"][0]["results"]
    assert own[0]["task"]["type"] == "image-classification"
    names = {m["name"]: m["value"] for m in data["results"]}
    results = json.loads((runs / "f" / "results.json").read_text())
    assert names["test/top1"] == pytest.approx(results["test/top1"]) and "weights" not in names
    assert {m["type"] for m in own[0]["metrics"]} >= {"accuracy"}
    assert {m["args"]["seed"] for m in own[0]["metrics"]} == {0}  # each of this model's numbers with its seed


def test_license_is_stated_unknown_and_preset_and_hub_sources_are_kept_as_given(tmp_path):
    write_model_card(tmp_path, FACTS)  # no license among the facts: stated, not left out
    data = read_model_card(tmp_path)
    assert data["license"] == "unknown" and data["pipeline_tag"] == "image-feature-extraction"
    assert "| license | unknown" in (tmp_path / "README.md").read_text()
    assert teacher_license("tiny-16", "pretrained")[0] is None
    assert teacher_license("google/ddpm-cifar10-32", "pretrained")[0] == "apache-2.0"
    found, why = teacher_license("google/ddpm-cifar10-32", "random")
    assert found is None and "random weights" in why  # a random teacher passes on no weights, so no license
    assert teacher_license("nobody/nothing-here", "pretrained")[0] is None
    assert shown_path("google/ddpm-cifar10-32", tmp_path) == "google/ddpm-cifar10-32"
    assert shown_path("tiny-16", tmp_path) == "tiny-16"
    (tmp_path / "run").mkdir()
    (tmp_path / "t").mkdir()
    assert shown_path(tmp_path / "t", tmp_path / "run") == "../t" and shown_path(tmp_path / "t") == "t"
    assert rebased("../t", tmp_path / "run", tmp_path) == "t"
    assert rebased("org/id", tmp_path / "run", tmp_path) == "org/id"
    assert dataset_ids(SimpleNamespace(source="cifar", root="data/cifar-100-python")) == ["uoft-cs/cifar100"]
    assert dataset_ids(SimpleNamespace(source="folder", root="/home/me/photos")) == ["photos"]


MEAN, SEED0 = (0.6644 + 0.5500 + 0.5301) / 3, 0.6644


def report_result() -> dict:
    """What `pretrain` hands `card_metrics`: 3 seeds of every arm, the frozen probes, the paired differences."""
    return {"data": {"source": "folder", "root": "/data/digits", "label_fraction": 0.1},
            "teacher": "unused", "summary": {
                "repfusion": {"mean": MEAN, "std": 0.07, "runs": [SEED0, 0.5500, 0.5301]},
                "scratch": {"mean": 0.50, "std": 0.01, "runs": [0.51, 0.50, 0.49]}},
            "probe": {"repfusion": [{"linear_probe": 0.40}, {"linear_probe": 0.42}, {"linear_probe": 0.44}]},
            "paired": [{"metric": "test_top1", "a": "repfusion", "b": "scratch", "mean": 0.0815, "low": -0.05,
                        "high": 0.21, "n": 3}]}


def model_index(data) -> dict:
    return {(m["name"], m.get("args", {}).get("seed")): m["value"]
            for r in data.get("model-index", [{"results": []}])[0]["results"] for m in r["metrics"]}


def test_model_index_holds_this_seeds_numbers_and_the_arm_means_their_own_section(tmp_path):
    write_model_card(tmp_path, {**FACTS, "seed": 0})
    update_model_card_metrics(tmp_path, card_metrics(report_result()))
    data = read_model_card(tmp_path)
    assert model_index(data) == {("test/top1", 0): pytest.approx(SEED0), ("val/linear_probe", 0): 0.40}
    assert MEAN not in model_index(data).values()  # the 3-seed mean is not this model's number
    text = (tmp_path / "README.md").read_text()
    body = text.split("\n---\n", 1)[1]
    this_model = body.split("## This model (seed 0)", 1)[1].split("## ", 1)[0]
    means = body.split("## Arm means (over seeds)", 1)[1].split("## ", 1)[0]
    assert "| test/top1 | test | 0.6644 |" in this_model and f"{MEAN:.4f}" not in this_model
    assert f"| this model's arm | test/top1 | test | {MEAN:.4f} |" in means
    assert "| scratch | test/top1 | test | 0.5000 |" in means
    assert "| repfusion - scratch | paired/test_top1 | test | 0.0815 | [-0.0500, 0.2100] |" in body
    stored = {(m["name"], m.get("arm")): m for m in data["results"]}
    assert stored[("test/top1", None)]["value"] == pytest.approx(MEAN)  # kept as given, with its runs
    other = tmp_path / "seed1"
    other.mkdir()
    write_model_card(other, {**FACTS, "seed": 1}, card_metrics(report_result()))
    assert model_index(read_model_card(other))[("test/top1", 1)] == 0.55
    unknown = tmp_path / "noseed"
    unknown.mkdir()
    write_model_card(unknown, FACTS, card_metrics(report_result()))  # seed unknown: no number is this model's
    assert "model-index" not in read_model_card(unknown)


def test_pretrain_cards_rebase_the_teacher_and_give_every_finetune_card_the_arms(tmp_path):
    out = tmp_path / "run"
    (out / "teacher" / "teacher").mkdir(parents=True)
    (out / "student").mkdir()  # the seed-0 student, copied from distill-repfusion-seed0 with its card
    copied = {**FACTS, "seed": 0, "teacher": {**FACTS["teacher"], "source": "../teacher/teacher"}}
    write_model_card(out / "student", copied)
    for arm, seed in (("repfusion", 0), ("scratch", 1)):
        (out / f"finetune-{arm}-seed{seed}" / "model").mkdir(parents=True)
        facts = {"stage": "finetune", "task": "classification", "seed": seed, "student": FACTS["student"]}
        if arm == "repfusion":
            facts["teacher"] = {"source": "../teacher/teacher", "kind": "unet"}
        write_model_card(out / f"finetune-{arm}-seed{seed}" / "model", facts,
                         [{"name": "test/top1", "value": 0.6644 if arm == "repfusion" else 0.50, "split": "test"}])
    done = pretrain_cards(out, str(out / "teacher" / "teacher"), card_metrics(report_result()))
    assert [p.relative_to(out).as_posix() for p in done] == ["student", "finetune-repfusion-seed0/model",
                                                             "finetune-scratch-seed1/model"]
    student = read_model_card(out / "student")
    assert student["teacher"]["source"] == "teacher/teacher" and student["arm"] == "repfusion"
    assert model_index(student)[("test/top1", 0)] == pytest.approx(SEED0)
    assert "| repfusion | test/top1 | test |" in (out / "student" / "README.md").read_text()
    scratch = read_model_card(out / "finetune-scratch-seed1" / "model")
    assert scratch["arm"] == "scratch" and scratch["seed"] == 1 and "teacher" not in scratch
    assert model_index(scratch) == {("test/top1", 1): 0.50}  # its own number; the arms stay out of model-index
    arms = {(m.get("arm"), m["name"]) for m in scratch["results"]}
    assert {("repfusion", "test/top1"), ("scratch", "test/top1"), ("repfusion - scratch", "paired/test_top1"),
            ("repfusion", "val/linear_probe")} <= arms
    ours = read_model_card(out / "finetune-repfusion-seed0" / "model")
    assert ours["teacher"]["source"] == "../teacher/teacher" and model_index(ours) == {("test/top1", 0): 0.6644}

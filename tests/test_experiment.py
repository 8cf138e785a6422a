"""The one experiment runner: every registered task has the metric its arms are compared on, and a run (labelled
or label-free) runs the stages it should, in order, with the arms and seeds it should."""

from pathlib import Path

import pytest

import repfusion.experiment as experiment
from repfusion.errors import RepFusionError
from repfusion.arms import ArmScores
from repfusion.experiment import METRICS, Experiment, run_arms, task_metric
from repfusion.tasks.registry import TASKS


def test_every_task_of_the_registry_is_compared_on_the_test_value_of_its_monitor():
    assert sorted(METRICS) == TASKS.names()
    for name in TASKS:
        spec, metric = TASKS.get(name), task_metric(name)
        assert metric.key == spec.monitor.replace("val/", "test/")
        assert metric.val_key == spec.monitor  # what a choice between fine-tuning protocols reads
        assert metric.higher_is_better == (spec.mode == "max")


def test_an_unknown_task_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(RepFusionError, match="detection"):
        Experiment("detection", tmp_path, 2, False, distill=lambda init, seed: None, finetune=lambda init, seed: None)


def fake_arms(monkeypatch, calls: list):
    def distill_arms(plan, out, make_run, teachers):
        calls.append(("distill", plan.seeds, tuple(teachers), [make_run(init, 0) for init in teachers.values()]))

    def finetune_arms(plan, out, make_run, score, show, menu):
        calls.append(("finetune", plan.seeds, make_run(None, 1), menu.names))
        scores = {"scratch": [0.2, 0.3, 0.25], "scratch-equal": [0.2, 0.35, 0.3], "repfusion": [0.4, 0.5, 0.45],
                  "random-teacher": [0.1, 0.2, 0.15]}
        return ArmScores(scores, {arm: ["plain"] * 3 for arm in scores})

    monkeypatch.setattr(experiment, "distill_arms", distill_arms)
    monkeypatch.setattr(experiment, "finetune_arms", finetune_arms)


def recording(calls: list):
    def stage(name, fn):
        calls.append(("stage", name))
        return fn()

    return stage


def test_a_labelled_run_distils_every_arm_then_fine_tunes_and_compares_them(tmp_path, monkeypatch):
    calls: list = []
    fake_arms(monkeypatch, calls)
    exp = Experiment("landmarks", tmp_path, 3, False, distill=lambda init, seed: f"distill {init} {seed}",
                     finetune=lambda init, seed: f"finetune {init} {seed}")
    compared = run_arms(exp, recording(calls), "d", "f", between=lambda: calls.append(("between",)))
    assert calls == [("stage", "d"), ("distill", 3, ("repfusion", "random-teacher"),
                                      ["distill pretrained 0", "distill random 0"]),
                     ("between",), ("stage", "f"), ("finetune", 3, "finetune None 1", ("plain",))]
    assert compared.metric is METRICS["landmarks"] and compared.summary["repfusion"]["mean"] == pytest.approx(0.45)
    # lower is better for NME: each difference is control - RepFusion
    assert {(p["a"], p["b"], p["metric"]) for p in compared.pairs} == {
        ("random-teacher", "repfusion", "nme"), ("scratch", "repfusion", "nme"), ("scratch-equal", "repfusion", "nme")}
    assert "test NME (lower is better; mean ± std)" in compared.table() and compared.verdict


def test_a_label_free_run_distils_once_from_the_trained_teacher_and_compares_nothing(tmp_path, monkeypatch):
    calls: list = []
    fake_arms(monkeypatch, calls)
    exp = Experiment("classification", Path(tmp_path), 3, True, compare=False, distill=lambda init, seed: init,
                     finetune=lambda init, seed: None)
    assert run_arms(exp, recording(calls), "d", "f", between=lambda: calls.append(("between",))) is None
    assert calls == [("stage", "d"), ("distill", 1, ("repfusion",), ["pretrained"]), ("between",)]

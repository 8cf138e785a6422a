"""Fine-tuning protocols chosen on validation (issue 23): each a change to a fine-tune's config, the same menu for
every arm, the kept one the validation split's best, a scratch arm's teacher in the loop its plain run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repfusion import arms
from repfusion.errors import RepFusionError
from repfusion.experiment import Plan
from repfusion.pipeline.config import FinetuneBudget
from repfusion.tasks.finetune import FinetuneRun
from repfusion.tasks.protocols import DEFAULT_MENU, ProtocolSettings, apply, check_protocols, chosen, effective
from repfusion.training import OptimConfig, TrainerConfig


def plain_run(init: str | None = "distilled") -> FinetuneRun:
    return FinetuneRun(init=init, optim=OptimConfig(lr=0.1, nesterov=True), trainer=TrainerConfig(max_epochs=7))


def test_each_protocol_changes_only_what_it_names():
    run = plain_run()
    assert apply(run, "plain") == run
    lpft = apply(run, "lpft", ProtocolSettings(lpft_lr=0.02))
    assert (lpft.head_init, lpft.optim.lr, lpft.head_epochs, lpft.teacher_in_loop.weight) == ("probe", 0.02, 0, 0.0)
    assert lpft.optim.nesterov and lpft.trainer == run.trainer
    lp = apply(run, "lp")
    assert (lp.head_init, lp.head_epochs, lp.optim.lr) == ("probe", 7, 0.1)  # the head alone, every epoch
    joint = apply(run, "joint", ProtocolSettings(joint_weight=0.5))
    assert joint.teacher_in_loop.weight == 0.5 and joint.head_init == "random" and joint.optim == run.optim


def test_a_scratch_run_has_no_teacher_so_its_joint_is_plain():
    assert effective("joint", has_teacher=False) == "plain" and effective("joint", has_teacher=True) == "joint"
    assert effective("lpft", has_teacher=False) == "lpft"
    scratch = plain_run(init=None)
    assert apply(scratch, "joint") == scratch


def test_the_kept_protocol_is_the_best_on_validation_and_a_tie_goes_to_the_first_named():
    assert chosen({"plain": 0.30, "lpft": 0.35, "joint": 0.33}) == "lpft"
    assert chosen({"lpft": 0.30, "plain": 0.30}) == "lpft"
    assert chosen({"plain": 0.08, "lpft": 0.06}, higher_is_better=False) == "lpft"  # NME: lower is better


@pytest.mark.parametrize("names, words", [(["plain", "lora"], "unknown protocol 'lora'"),
                                          (["lpft", "lpft"], "names a protocol twice"),
                                          ([], "one or more of plain, lpft, lp, joint"),
                                          ("lpft", "must be a list")])
def test_a_bad_menu_is_one_sentence(names, words):
    with pytest.raises(RepFusionError, match=words):
        check_protocols(names, "finetune.protocols")


def test_the_pipeline_section_refuses_a_menu_beside_a_protocol_given_by_hand():
    assert FinetuneBudget(protocols=["plain", "lpft"]).protocols == ["plain", "lpft"]
    with pytest.raises(RepFusionError, match="either as finetune.protocols or by finetune.head_init, not both"):
        FinetuneBudget(protocols=["plain", "lpft"], head_init="probe")
    with pytest.raises(RepFusionError, match="finetune.lpft_lr must be a positive learning rate"):
        FinetuneBudget(lpft_lr=0.0)
    with pytest.raises(RepFusionError, match="finetune.joint_weight must be a positive number"):
        FinetuneBudget(joint_weight=float("nan"))
    FinetuneBudget(head_init="probe")  # one protocol by hand, as before


def fake_finetunes(monkeypatch, out: Path, val_of: dict[tuple[str, str], float]) -> list[tuple[str, str]]:
    """run_finetune replaced by one writing results.json: validation by (arm, protocol), test = 1 - validation,
    so a choice made on the test split would pick the other protocol."""
    ran: list[tuple[str, str]] = []

    def run_finetune(cfg, run_dir, resume):
        arm = run_dir.name.split("-seed")[0].removeprefix("finetune-")
        protocol = ("lpft" if cfg.head_init == "probe" else "joint" if cfg.teacher_in_loop.enabled else "plain")
        ran.append((arm, protocol))
        val = val_of[(arm, protocol)]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(json.dumps({"val/top1": val, "test/top1": 1 - val}))
        return {}

    monkeypatch.setattr(arms, "run_finetune", run_finetune)
    monkeypatch.setattr(arms, "equal_compute", lambda run, distilled: run)
    return ran


def test_every_arm_runs_the_menu_and_keeps_its_best_validation_run(tmp_path, monkeypatch):
    val_of = {("repfusion", "lpft"): 0.6, ("repfusion", "joint"): 0.5, ("random-teacher", "lpft"): 0.3,
              ("random-teacher", "joint"): 0.4, ("scratch", "lpft"): 0.2, ("scratch", "plain"): 0.25,
              ("scratch-equal", "lpft"): 0.35, ("scratch-equal", "plain"): 0.3}
    ran = fake_finetunes(monkeypatch, tmp_path, val_of)
    menu = arms.Menu(("lpft", "joint"), lambda run, name: apply(run, name),
                     lambda run_dir: json.loads((run_dir / "results.json").read_text())["val/top1"])
    found = arms.finetune_arms(Plan(1, False), tmp_path, lambda init, seed: plain_run(init and str(init)),
                               lambda run_dir: json.loads((run_dir / "results.json").read_text())["test/top1"],
                               lambda value: f"{value:.2f}", menu)
    # a scratch arm's joint is its plain run, run once; every other arm runs each protocol once
    assert sorted(ran) == sorted(val_of)
    assert (tmp_path / "finetune-scratch-seed0-plain").is_dir() and not (tmp_path / "finetune-scratch-seed0-joint").exists()
    assert (tmp_path / "finetune-repfusion-seed0-joint").is_dir()
    assert found.protocols == {"scratch": ["plain"], "scratch-equal": ["lpft"], "repfusion": ["lpft"],
                               "random-teacher": ["joint"]}
    assert found.scores["repfusion"] == [pytest.approx(0.4)] and found.scores["random-teacher"] == [pytest.approx(0.6)]
    assert found.by_protocol["repfusion"]["joint"] == {"val": [0.5], "test": [pytest.approx(0.5)]}
    # rerun: every finished run is read back, nothing trains again
    ran.clear()
    again = arms.finetune_arms(Plan(1, True), tmp_path, lambda init, seed: plain_run(init and str(init)),
                               lambda run_dir: json.loads((run_dir / "results.json").read_text())["test/top1"],
                               lambda value: f"{value:.2f}", menu)
    assert ran == [] and again.protocols == found.protocols


def test_one_protocol_keeps_the_run_folders_it_always_had(tmp_path, monkeypatch):
    ran = fake_finetunes(monkeypatch, tmp_path, {(arm, "plain"): 0.5 for arm in arms.ARMS})
    found = arms.finetune_arms(Plan(1, False), tmp_path, lambda init, seed: plain_run(init and str(init)),
                               lambda run_dir: 0.5, lambda value: "", arms.Menu())
    assert len(ran) == 4 and (tmp_path / "finetune-repfusion-seed0").is_dir() and found.by_protocol == {}
    assert found.protocols["repfusion"] == ["plain"]


def test_the_equal_compute_arm_is_stretched_before_its_protocol_so_lp_stays_a_probe(tmp_path, monkeypatch):
    import dataclasses

    seen: list[FinetuneRun] = []

    def run_finetune(cfg, run_dir, resume):
        seen.append(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(json.dumps({"val/top1": 0.5, "test/top1": 0.5}))

    monkeypatch.setattr(arms, "run_finetune", run_finetune)
    monkeypatch.setattr(arms, "equal_compute", lambda run, distilled: dataclasses.replace(
        run, init=None, trainer=dataclasses.replace(run.trainer, max_epochs=run.trainer.max_epochs + 20)))
    arms.finetune_arms(Plan(1, False), tmp_path, lambda init, seed: plain_run(init and str(init)), lambda d: 0.5,
                       lambda v: "", arms.Menu(("lp",), lambda run, name: apply(run, name)))
    stretched = [cfg for cfg in seen if cfg.trainer.max_epochs == 27]
    assert len(stretched) == 1 and stretched[0].head_epochs == 27  # the head alone for every one of its epochs


def test_a_run_saved_before_the_protocol_settings_still_resumes_plain(tmp_path):
    from repfusion.pipeline.config import PretrainRun
    from repfusion.pipeline.run import check_out, settings, with_menu

    older = settings(PretrainRun(finetune=FinetuneBudget(protocols=["plain"])))
    for key in ("protocols", "lpft_lr", "joint_weight"):
        del older["finetune"][key]
    (tmp_path / "pretrain.json").write_text(json.dumps(older))
    resumed = with_menu(PretrainRun(), "resnet18_cifar", True, True, tmp_path / "pretrain.json")
    assert resumed.finetune.protocols == ["plain"]  # what it ran with, not today's default menu
    check_out(tmp_path, True, settings(resumed))
    changed = settings(PretrainRun(finetune=FinetuneBudget(protocols=["plain", "lpft"])))
    with pytest.raises(RepFusionError, match="other settings"):
        check_out(tmp_path, True, changed)


def test_a_resumed_run_keeps_the_default_menu_it_was_started_with(tmp_path):
    from repfusion.pipeline.config import PretrainRun
    from repfusion.pipeline.run import settings, with_menu

    started = with_menu(PretrainRun(), "resnet18_cifar", True, True, None)
    (tmp_path / "pretrain.json").write_text(json.dumps(settings(started)))
    assert with_menu(PretrainRun(), "mobilenetv2", False, True, tmp_path / "pretrain.json").finetune.protocols \
        == list(DEFAULT_MENU)


@pytest.mark.parametrize("arch, validation, labelled, by_hand, menu", [
    ("resnet18_cifar", True, True, {}, list(DEFAULT_MENU)),
    ("resnet18_cifar", False, True, {}, ["plain"]),  # nothing to choose on but the test split
    ("resnet18_cifar", True, False, {}, ["plain"]),  # no labels, no fine-tuning
    ("mobilenetv2", True, True, {}, ["plain"]),  # no linear fc head to fit the probe into
    ("resnet18_cifar", True, True, {"head_epochs": 2}, ["plain"]),  # a protocol given by hand
])
def test_the_default_menu_is_plain_and_lpft_where_both_can_run(arch, validation, labelled, by_hand, menu):
    from repfusion.pipeline.config import PretrainRun
    from repfusion.pipeline.run import with_menu

    assert PretrainRun().finetune.protocols is None
    cfg = PretrainRun(finetune=FinetuneBudget(**by_hand))
    assert with_menu(cfg, arch, validation, labelled, None).finetune.protocols == menu


def test_a_menu_given_is_kept_as_given():
    from repfusion.pipeline.config import PretrainRun
    from repfusion.pipeline.run import with_menu

    cfg = PretrainRun(finetune=FinetuneBudget(protocols=["lp"]))
    assert with_menu(cfg, "resnet18_cifar", True, True, None).finetune.protocols == ["lp"]


def test_a_pretrain_run_saved_with_the_old_plain_default_passes_the_cli_resume_check(tmp_path):
    """Its config.yaml says finetune.protocols [plain]; today's command line leaves it null (the run resolves it
    against its own pretrain.json), so only a real change is refused."""
    import yaml

    from repfusion.config import check_resume_config, config_parser, parse_config, resolved_yaml
    from repfusion.pipeline.config import PretrainRun

    parser = config_parser("repfusion pretrain", PretrainRun, "")
    parsed = parse_config(parser, PretrainRun, ["--data.root", "photos"])
    assert parsed.config.finetune.protocols is None
    old = yaml.safe_load(resolved_yaml(parser, parsed.namespace))
    old["finetune"]["protocols"] = ["plain"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_resume_config(parser, parsed.namespace, tmp_path)
    changed = parse_config(parser, PretrainRun, ["--data.root", "photos", "--finetune.lpft_lr", "0.01"])
    with pytest.raises(RepFusionError, match="finetune.lpft_lr"):
        check_resume_config(parser, changed.namespace, tmp_path)


def test_a_resumed_menu_run_given_a_protocol_by_hand_is_told_its_settings_differ(tmp_path):
    from repfusion.pipeline.config import PretrainRun
    from repfusion.pipeline.run import check_out, settings, with_menu

    started = with_menu(PretrainRun(), "resnet18_cifar", True, True, None)
    (tmp_path / "pretrain.json").write_text(json.dumps(settings(started)))
    (tmp_path / "teacher").mkdir()
    by_hand = with_menu(PretrainRun(finetune=FinetuneBudget(head_epochs=2)), "resnet18_cifar", True, True,
                        tmp_path / "pretrain.json")
    with pytest.raises(RepFusionError, match="other settings"):
        check_out(tmp_path, True, settings(by_hand))

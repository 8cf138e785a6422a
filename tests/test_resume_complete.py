"""Issue 25, item 8: a resumed run is complete. A kill between a stage's record and its plots no longer loses
the plots (each stage draws them before the file that marks it finished), and the cost of a resumed
`pretrain` (the report's table, `timings_s`, `wall_s`) sums every invocation, a hard kill's included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repfusion.cli import main
from repfusion.arms import distill_dir, run_once
from repfusion.pipeline.progress import TIMINGS_FILE, StageProgress
from test_pretrain import write_digits

TEACHER = ["teacher", "--data.batch_size", "32", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
           "1", "--trainer.max_epochs", "1", "--trainer.progress", "false", "--samples", "4", "--sample_steps", "2"]
DISTILL = ["distill", "--student.width", "0.125", "--data.batch_size", "16", "--trainer.progress", "false",
           "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
FINETUNE = ["finetune", "--init", "null", "--student.width", "0.125", "--data.batch_size", "16", "--trainer.progress",
            "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches",
            "1"]
PRETRAIN = ["--teacher.epochs", "1", "--distill.epochs", "1", "--finetune.epochs", "1", "--seeds", "2",
            "--student.width", "0.125", "--trainer.progress", "false", "--choice.max_images", "40"]


class Killed(Exception):
    """Stands in for a kill, in-process."""


class Plan:
    resume = True  # what `repfusion.arms.run_once` reads: the pipeline's own skip-or-resume of a stage


def killed_in(monkeypatch, target: str) -> None:
    """A call of `target` (a plot function, where a stage uses it) dies, as a kill there would."""
    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(f"{module}.{name}", lambda *a, **k: (_ for _ in ()).throw(Killed(target)))


# stage: its command, the plot function a kill falls in, the file that marks it finished for a resumed
# pipeline (what `repfusion.arms.run_once` and `pipeline.run` skip on), and every plot it draws
STAGES = {
    "teacher": (TEACHER, "repfusion.teachers.train.sample_grid", "teacher/config.json", ["samples.png"]),
    "distill": (DISTILL, "repfusion.distill.run.plot_curves", "student/config.json", ["curves.png", "timesteps.png"]),
    "finetune": (FINETUNE, "repfusion.tasks.finetune.plot_curves", "results.json", ["curves.png"]),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_kill_between_a_stage_s_results_and_its_plots_leaves_every_plot_after_resume(stage, tmp_path, monkeypatch,
                                                                                       capsys):
    args, plot, mark, plots = STAGES[stage]
    run_dir = tmp_path / stage
    with monkeypatch.context() as m:
        killed_in(m, plot)
        with pytest.raises(Killed):
            main([*args, "--run-dir", str(run_dir)])
    # trained, exported or tested, but not marked finished: a resume does not skip the stage and its plots
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / mark).exists()
    run_once(run_dir / mark, lambda resume: main([*args, "--run-dir", str(run_dir), *(["--resume"] if resume else [])]),
             run_dir, Plan())
    assert "end of training" in capsys.readouterr().err  # nothing trained again: the plots from the saved run
    assert (run_dir / mark).is_file()
    for name in plots:
        assert (run_dir / name).stat().st_size > 0, name


def test_pretrain_resumed_after_a_kill_in_a_plot_has_every_plot_and_the_cost_of_both_invocations(
        tmp_path, monkeypatch, capsys):
    root = tmp_path / "photos"
    write_digits(root, 12, nested=False, classes=False)
    out = tmp_path / "run"
    args = ["pretrain", "--data.root", str(root), "--teacher.source", "TEACHER", *PRETRAIN, "--run-dir", str(out)]
    from repfusion.teachers import default_scheduler, unet_from_preset

    teacher = tmp_path / "teacher"
    unet_from_preset("tiny-16").save_pretrained(teacher)
    default_scheduler().save_pretrained(teacher)
    args[args.index("TEACHER")] = str(teacher)

    with monkeypatch.context() as m:  # the first invocation: the layer choice done, killed in the distillation's plot
        killed_in(m, "repfusion.distill.run.plot_curves")
        with pytest.raises(Killed):
            main(args)
    first = json.loads((out / TIMINGS_FILE).read_text())["invocations"]
    assert len(first) == 1 and first[0]["running"] is None  # the stage that died kept its seconds
    assert first[0]["stages"]["choose the teacher layer and t"] > 0 and first[0]["stages"]["distil"] > 0
    assert main([*args, "--resume"]) == 0
    distilled = distill_dir(out, "repfusion", 0)
    assert (distilled / "curves.png").stat().st_size > 0 and (distilled / "timesteps.png").stat().st_size > 0

    result = json.loads((out / "results.json").read_text())
    invocations = result["invocations"]
    assert len(invocations) == 2
    assert invocations[0]["stages"]["choose the teacher layer and t"] > 0
    assert invocations[1]["stages"]["choose the teacher layer and t"] == 0.0  # reused: adds 0, keeps its seconds
    assert invocations[0]["stages"]["distil"] > 0 and invocations[1]["stages"]["distil"] > 0  # continued
    for name, seconds in result["timings_s"].items():
        assert seconds == pytest.approx(sum(inv["stages"].get(name, 0.0) for inv in invocations)), name
    assert result["timings_s"]["choose the teacher layer and t"] == invocations[0]["stages"][
        "choose the teacher layer and t"]
    assert result["wall_s"] >= sum(result["timings_s"].values())
    assert result["wall_s"] == pytest.approx(sum(inv["wall_s"] for inv in invocations), abs=0.05)
    assert result["wall_s"] > invocations[1]["wall_s"]  # not only the last invocation

    report = (out / "report.md").read_text()  # the cost table: both invocations
    for name in ("choose the teacher layer and t", "distil"):
        assert f"| {name} | {result['timings_s'][name]:.1f} |" in report
    assert "sum the run's 2 invocations" in report


def test_a_stage_reused_on_resume_adds_nothing_and_keeps_its_earlier_seconds(tmp_path):
    record = tmp_path / TIMINGS_FILE
    plan = {"teacher": 1.0, "distil": 1.0}
    first = StageProgress(plan, log=lambda _: None, record=record)
    first.run("teacher", lambda: time.sleep(0.05))
    spent = first.timings["teacher"]
    assert spent >= 0.05
    second = StageProgress(plan, log=lambda _: None, record=record)
    assert second.timings == {"teacher": spent}  # read back before anything runs
    second.run("teacher", lambda: None, skipped=True)
    second.run("distil", lambda: time.sleep(0.02))
    assert second.timings["teacher"] == spent and second.timings["distil"] >= 0.02
    assert [inv["stages"].get("teacher") for inv in second.invocations()] == [spent, 0.0]
    assert second.wall_s() >= sum(second.timings.values())


KILLED_IN_A_STAGE = """
import os, signal, sys, time
from pathlib import Path
from repfusion.pipeline.progress import StageProgress

out = Path(sys.argv[1])
progress = StageProgress({"teacher": 1.0, "distil": 1.0}, log=lambda _: None, record=out / "timings.json")
progress.run("teacher", lambda: time.sleep(0.2))

def distil():
    (out / "distill-repfusion-seed0").mkdir()
    time.sleep(0.45)  # 0.4 and a margin: file times come from the kernel's coarse clock, up to a tick behind
    (out / "distill-repfusion-seed0" / "metrics.csv").write_text("step\\n1\\n")  # the stage's last write
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL)

progress.run("distil", distil)
"""


def test_a_hard_kill_inside_a_stage_is_credited_up_to_its_last_write(tmp_path):
    """SIGKILL runs no `finally`: the record still names the running stage, and the next invocation credits it
    up to the newest file the killed one wrote (a lower bound: the work after it is redone, and counted)."""
    out = tmp_path / "run"
    out.mkdir()
    done = subprocess.run([sys.executable, "-c", KILLED_IN_A_STAGE, str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert done.returncode == -9, done.stderr
    saved = json.loads((out / TIMINGS_FILE).read_text())["invocations"]
    assert saved[0]["running"]["stage"] == "distil"  # as the kill left it
    last = (out / "distill-repfusion-seed0" / "metrics.csv").stat().st_mtime
    for name in ("config.yaml", "pretrain.json"):  # what a resumed invocation writes before its first stage
        (out / name).write_text("{}")
    resumed = StageProgress({"teacher": 1.0, "distil": 1.0}, log=lambda _: None, record=out / TIMINGS_FILE)
    assert resumed.timings["teacher"] >= 0.2
    assert resumed.timings["distil"] == pytest.approx(last - saved[0]["running"]["began"])
    assert resumed.timings["distil"] >= 0.4
    earlier = resumed.invocations()[0]
    assert earlier["wall_s"] >= sum(earlier["stages"].values())
    resumed.run("distil", lambda: time.sleep(0.05))
    assert resumed.timings["distil"] >= 0.45  # the killed invocation's part and this one's
    assert json.loads((out / TIMINGS_FILE).read_text())["invocations"][0]["running"] is None  # settled once

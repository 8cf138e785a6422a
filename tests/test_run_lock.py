"""One run per run folder (issue 19, item 7): two runs started in one --run-dir at the same moment no longer
both report success and interleave their files; the second is refused in one sentence, writing nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import yaml

from repfusion.errors import RepFusionError
from repfusion.run import LOCK_NAME, lock_run_dir, release_run_dir

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--student.width", "0.125", "--data.batch_size", "16", "--trainer.progress", "false", "--trainer.max_epochs",
       "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1"]

HOLD = textwrap.dedent('''
    import sys, time
    from repfusion.run import lock_run_dir
    lock_run_dir(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
''')


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "repfusion.cli", *args]


def test_a_run_folder_held_by_another_process_is_refused_in_one_sentence_and_released_by_a_kill(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in run_dir.iterdir())
        try:
            lock_run_dir(run_dir)
            raise AssertionError("the lock was taken twice")
        except RepFusionError as e:
            assert str(e) == (f"Another repfusion run (process {holder.pid}) is using {run_dir}; wait for it to end "
                              "or give another --run-dir.")
        done = subprocess.run(cli("distill", "--run-dir", str(run_dir), *RUN), cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [f"error: Another repfusion run (process {holder.pid}) is using "
                                                     f"{run_dir}; wait for it to end or give another --run-dir."]
        assert sorted(p.name for p in run_dir.iterdir()) == before == [LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(run_dir)  # the kernel released the killed holder's lock
    release_run_dir(run_dir)


def test_two_runs_started_together_in_one_folder_one_runs_the_other_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    runs = [subprocess.Popen(cli("distill", "--run-dir", str(run_dir), *RUN, "--trainer.seed", str(seed)), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    winner = [i for i, (code, _) in enumerate(results) if code == 0][0]
    loser_err = results[1 - winner][1].strip().splitlines()
    assert len(loser_err) == 1 and loser_err[0].startswith("error: ") and (
        "Another repfusion run" in loser_err[0] or "already holds a run" in loser_err[0])  # refused while or after
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["seed"] == winner + 1  # the config is the winner's, and so are the rows
    header, *rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    steps = [int(row[header.index("step")]) for row in rows]
    assert steps == sorted(steps) and steps[-1] < 3  # one run's rows, in order (interleaved: 5, 5, 11, 11, ...)
    assert int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]) == 3


def test_the_same_process_may_take_its_own_lock_again(tmp_path):
    lock_run_dir(tmp_path)
    lock_run_dir(tmp_path)  # a resume in the same process (the Python API, tests)
    release_run_dir(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text().strip().isdigit()

"""Kill storm: SIGKILL short deterministic runs of every training verb at random moments, resume each time, and
check that nothing written is lost and that each ends exactly where an uninterrupted run ends.

    python benchmarks/kill_storm.py --kills 12 --out benchmarks/results/kill_storm            # every verb
    python benchmarks/kill_storm.py --verbs distill teacher --kills 6 --out /tmp/storm        # some of them

Verbs: `distill`, `finetune` (classification), `finetune --task segmentation`, `finetune --task landmarks` and
`teacher`. Each attempt is `repfusion VERB ... [--resume]` run in a child forked from this process (so it starts
in milliseconds instead of re-importing torch) and killed with SIGKILL by this process:

- random:     after a random delay (during set-up, training, validation, checkpoint writes, test or export);
- checkpoint: while a checkpoint is being written (the child writes its checkpoints in two halves with a
              pause between them, and the kill falls in that pause: half a temporary file is on disk);
- export:     while the result is being exported (the staging folder is written, not yet swapped in; for
              finetune this is after the test row is in metrics.csv).

After every kill every file in the run folder must be readable: last.ckpt with torch.load(weights_only=True),
metrics.csv with every line complete, config.yaml, timesteps.json, the exported folder (safetensors), the
PNGs. After the last kill the run is resumed to its end, and its global step, exported weights and
metrics.csv (row for row) are compared with those of an uninterrupted run of the same command; then the
finished run is resumed once more (`--resume` of a run that has ended) and compared again.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import select
import shutil
import signal
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

COMMON = ["--trainer.progress", "false", "--trainer.checkpoint_every_n_steps", "2", "--trainer.deterministic", "true"]
FACES = ["--data.source", "faces", "--data.image_size", "32", "--data.faces_train", "48", "--data.faces_test", "16",
         "--data.batch_size", "8", "--student.arch", "resnet18_cifar", "--student.width", "0.125"]
# verb name -> (argv, optimiser steps of the whole run, the exported folder, the module whose replace_dir exports)
VERBS = {
    "distill": (["distill", "--student.width", "0.125", "--data.batch_size", "16", "--trainer.max_epochs", "3",
                 "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1", *COMMON],
                18, "student", "repfusion.distill.run"),
    "finetune": (["finetune", "--init", "null", "--student.width", "0.125", "--data.batch_size", "16",
                  "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1",
                  *COMMON], 12, "model", "repfusion.tasks.finetune"),
    "finetune-segmentation": (["finetune", "--task", "segmentation", "--init", "null", *FACES, "--trainer.max_epochs",
                               "3", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1", *COMMON],
                              12, "model", "repfusion.tasks.finetune"),
    "finetune-landmarks": (["finetune", "--task", "landmarks", "--init", "null", *FACES, "--trainer.max_epochs", "3",
                            "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1", *COMMON],
                           12, "model", "repfusion.tasks.finetune"),
    "teacher": (["teacher", "--data.batch_size", "16", "--trainer.max_epochs", "3", "--trainer.limit_train_batches",
                 "4", "--trainer.limit_val_batches", "1", "--samples", "4", "--sample_steps", "2", *COMMON],
                12, "teacher", "repfusion.teachers.ddpm_training"),
}
PAUSE = 0.4  # seconds the instrumented child lingers inside a checkpoint write or an export


def instrument(verb: str, mode: str, notify_fd: int, nth: int = 1) -> None:
    """In the child: widen the nth checkpoint write or the export so a kill can be aimed into it."""
    import importlib

    import repfusion.run.checkpoint as checkpoint

    def notify() -> None:
        os.write(notify_fd, b"!")
        time.sleep(PAUSE)

    if mode == "checkpoint":
        original = checkpoint.atomic_write
        writes = [0]

        def slow_atomic_write(path, write):
            if not str(path).endswith(".ckpt"):
                return original(path, write)
            writes[0] += 1
            if writes[0] != nth:
                return original(path, write)

            def halves(tmp: str) -> None:
                write(tmp)
                data = Path(tmp).read_bytes()
                with open(tmp, "wb") as f:  # rewrite it in two halves, pausing in between
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                    notify()
                    f.write(data[len(data) // 2:])

            return original(path, halves)

        checkpoint.atomic_write = slow_atomic_write
    elif mode == "export":
        exporter = importlib.import_module(VERBS[verb][3])
        original_replace = exporter.replace_dir

        def slow_replace(tmp, final):
            notify()
            return original_replace(tmp, final)

        exporter.replace_dir = slow_replace


def start(verb: str, run_dir: Path, resume: bool, mode: str, nth: int = 1) -> tuple[int, int]:
    """Fork a child running the verb; returns (pid, read end of its notification pipe)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            instrument(verb, mode, write_fd, nth)
            from repfusion.cli import main

            argv = VERBS[verb][0]
            code = main([argv[0], "--run-dir", str(run_dir), *argv[1:], *(["--resume"] if resume else [])])
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def check_readable(run_dir: Path, export: str) -> dict:
    """Every file of the run folder opens; returns what is there (temporary leftovers included)."""
    from PIL import Image
    from safetensors.torch import load_file

    found: dict = {"global_step": None, "metrics_rows": 0, "export": False}
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        found["global_step"] = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        text = metrics.read_text(encoding="utf-8")
        assert text.endswith("\n"), "metrics.csv ends in a partial line"
        rows = list(csv.reader(io.StringIO(text)))
        assert all(len(r) == len(rows[0]) for r in rows), "metrics.csv has a row of the wrong length"
        found["metrics_rows"] = len(rows) - 1
    if (run_dir / "config.yaml").exists():
        import yaml

        yaml.safe_load((run_dir / "config.yaml").read_text())
    if (run_dir / "timesteps.json").exists():
        json.loads((run_dir / "timesteps.json").read_text())
    exported = run_dir / export
    if exported.exists():
        for config in exported.rglob("*.json"):
            json.loads(config.read_text())
        weights = list(exported.rglob("*.safetensors"))
        assert weights, f"{export}/ has no weights"
        for w in weights:
            load_file(w)
        found["export"] = True
    for png in run_dir.glob("*.png"):
        with Image.open(png) as img:
            img.verify()
    found["leftovers"] = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*")
                                if p.name != ".repfusion.lock")
    return found


def metric_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def compare(run_dir: Path, reference: Path, export: str) -> dict:
    from safetensors.torch import load_file

    def weights(folder: Path) -> dict:
        out = {}
        for w in sorted((folder / export).rglob("*.safetensors")):
            out |= {f"{w.relative_to(folder)}:{k}": v for k, v in load_file(w).items()}
        return out

    ours, ref = weights(run_dir), weights(reference)
    step = lambda d: int(torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])  # noqa: E731
    rows, ref_rows = metric_rows(run_dir / "metrics.csv"), metric_rows(reference / "metrics.csv")
    differing = [i for i in range(max(len(rows), len(ref_rows)))
                 if i >= len(rows) or i >= len(ref_rows) or rows[i] != ref_rows[i]]
    result = {
        "global_step": step(run_dir), "reference_global_step": step(reference),
        "weights_max_abs_diff": max((float((ours[k].float() - ref[k].float()).abs().max()) for k in ref
                                     if k in ours), default=None),
        "weights_identical": ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref),
        "metrics_csv_identical": rows == ref_rows,
        "metrics_rows": len(rows) - 1, "reference_metrics_rows": len(ref_rows) - 1,
        "metrics_first_differing_row": differing[0] if differing else None,
        "leftovers_after_final_run": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*")
                                            if p.name != ".repfusion.lock"),
    }
    if (reference / "timesteps.json").exists():
        result["timesteps_json_identical"] = (run_dir / "timesteps.json").read_text() == \
            (reference / "timesteps.json").read_text()
        result["timesteps_epoch_records"] = [len(json.loads((d / "timesteps.json").read_text())["history"])
                                             for d in (run_dir, reference)]
    return result


def storm(verb: str, work: Path, kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    _, total_steps, export, _ = VERBS[verb]
    reference = work / verb / "reference"
    t0 = time.time()
    pid, fd = start(verb, reference, False, "none")
    assert wait(pid) == 0, f"the uninterrupted {verb} run failed"
    os.close(fd)
    duration = time.time() - t0
    run_dir = work / verb / "stormed"
    log = []
    completed_early = 0
    startup = 0.45 * duration  # fork to first step: building the teacher, student and data, sanity check
    while (done := sum(1 for e in log if e.get("killed"))) < kills:
        # two thirds random moments and one third inside a checkpoint write, then the last two in the export
        mode = "export" if done >= kills - 2 else ("checkpoint" if done % 3 == 1 else "random")
        resume = (run_dir / "config.yaml").exists()
        nth = rng.randint(1, 3)  # which checkpoint write of this attempt the kill falls in
        last = run_dir / "checkpoints" / "last.ckpt"
        step = int(torch.load(last, weights_only=True)["global_step"]) if last.exists() else 0
        remaining = startup + (duration - startup) * (1 - step / total_steps)
        pid, fd = start(verb, run_dir, resume, mode, nth)
        if mode == "random":
            delay = rng.uniform(0.05, remaining)
            ready, _, _ = select.select([], [], [], delay)
        else:
            ready, _, _ = select.select([fd], [], [], 4 * duration)
            delay = rng.uniform(0.0, PAUSE * 0.9) if ready else None
            if delay is not None:
                time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = wait(pid)
        os.close(fd)
        if code == 0:  # it finished before the kill: check it, then storm a fresh run folder
            completed_early += 1
            log.append({"mode": mode, "killed": False, "note": "the run finished before the kill",
                        **compare(run_dir, reference, export)})
            shutil.rmtree(run_dir)
            continue
        state = check_readable(run_dir, export)
        log.append({"mode": mode, "killed": code == -signal.SIGKILL, "exit": code,
                    "checkpoint_write": nth if mode == "checkpoint" else None,
                    "delay_s": None if delay is None else round(delay, 3), **state})
    pid, fd = start(verb, run_dir, (run_dir / "config.yaml").exists(), "none")
    final_code = wait(pid)
    os.close(fd)
    assert final_code == 0, f"the final resume of {verb} failed with exit code {final_code}"
    result = compare(run_dir, reference, export)
    pid, fd = start(verb, run_dir, True, "none")  # --resume of the finished run: nothing may change
    again_code = wait(pid)
    os.close(fd)
    again = compare(run_dir, reference, export)
    return {"verb": verb, "run": "repfusion " + " ".join(VERBS[verb][0]), "kills": sum(1 for e in log if e.get("killed")),
            "finished_before_kill": completed_early, "uninterrupted_run_s": round(duration, 1), "final": result,
            "resumed_after_the_end": {"exit": again_code, **again}, "attempts": log,
            "all_files_readable_after_every_kill": True}


def verb_lines(report: dict) -> list[str]:
    final, again = report["final"], report["resumed_after_the_end"]
    modes = {m: sum(1 for e in report["attempts"] if e["mode"] == m and e.get("killed")) for m in
             ("random", "checkpoint", "export")}
    lines = [
        f"## {report['verb']}", "",
        f"Run: `{report['run']}` ({report['uninterrupted_run_s']} s uninterrupted).", "",
        f"- SIGKILLs: **{report['kills']}** (random moment {modes['random']}, inside a checkpoint write "
        f"{modes['checkpoint']}, inside the export {modes['export']}); runs that finished before their kill: "
        f"{report['finished_before_kill']}.",
        "- After every kill every file was readable (last.ckpt with weights_only=True, metrics.csv with every "
        "line complete, config.yaml, the exported folder, PNGs).",
        f"- Final global step {final['global_step']} (uninterrupted: {final['reference_global_step']}).",
        f"- Exported weights identical to the uninterrupted run: **{final['weights_identical']}** "
        f"(max abs diff {final['weights_max_abs_diff']}).",
        f"- metrics.csv identical to the uninterrupted run, row for row: **{final['metrics_csv_identical']}** "
        f"({final['metrics_rows']} rows vs {final['reference_metrics_rows']}"
        + ("" if final["metrics_first_differing_row"] is None else
           f"; first differing row {final['metrics_first_differing_row']}") + ").",
        f"- `--resume` of the finished run: exit {again['exit']}, metrics.csv still identical: "
        f"**{again['metrics_csv_identical']}** ({again['metrics_rows']} rows), weights identical: "
        f"{again['weights_identical']}.",
    ]
    if "timesteps_json_identical" in final:
        lines.append(f"- timesteps.json identical: {final['timesteps_json_identical']}"
                     + ("." if final["timesteps_json_identical"] else
                        " (the histogram of sampled timesteps of an epoch resumed in the middle counts only its "
                        "batches after the resume: `Distillation.t_counts` is not stored in the checkpoint yet; the "
                        f"number of epoch records is the same: {final['timesteps_epoch_records']})."))
    lines += ["- Temporary files or staging folders left after the final run: "
              f"{final['leftovers_after_final_run'] or 'none'}.",
              "", "| # | mode | delay (s) | last.ckpt step after the kill | metrics rows | export | leftovers |",
              "|---|---|---|---|---|---|---|"]
    for i, e in enumerate(report["attempts"], 1):
        if not e.get("killed"):
            lines.append(f"| {i} | {e['mode']} | - | finished before the kill (step {e['global_step']}, weights "
                         f"identical: {e['weights_identical']}, metrics.csv identical: {e['metrics_csv_identical']}; "
                         "the storm went on in a fresh folder) | {e.get('metrics_rows')} | yes | - |")
            continue
        lines.append(f"| {i} | {e['mode']} | {e['delay_s']} | {e['global_step']} | {e['metrics_rows']} | "
                     f"{'yes' if e['export'] else 'no'} | {', '.join(e['leftovers']) or '-'} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=12, help="SIGKILLs per verb (at least 3)")
    parser.add_argument("--verbs", nargs="+", default=list(VERBS), choices=list(VERBS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", default="benchmarks/results/kill_storm", help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="kill-storm-"))
    t0 = time.time()
    reports = [storm(verb, work, args.kills, args.seed) for verb in args.verbs]
    command = f"python benchmarks/kill_storm.py --kills {args.kills} --seed {args.seed} --verbs {' '.join(args.verbs)}"
    report = {"command": command, "wall_s": round(time.time() - t0, 1), "verbs": reports}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    ok = all(r["final"]["weights_identical"] and r["final"]["metrics_csv_identical"]
             and r["resumed_after_the_end"]["metrics_csv_identical"] for r in reports)
    lines = ["# Kill storm", "",
             f"Command: `{command}` ({report['wall_s']} s on this machine's 2 loaded CPU cores).", "",
             f"Every verb ended at the uninterrupted run's step with identical weights and a row-for-row identical "
             f"metrics.csv, also after a `--resume` of the finished run: **{ok}**.", ""]
    for r in reports:
        lines += verb_lines(r)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))
    for r in reports:
        print("\n".join(verb_lines(r)[:9]))


if __name__ == "__main__":
    main()

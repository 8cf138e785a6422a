"""Is fine-tuning long enough? Every arm of a finished `repfusion pretrain` run fine-tuned again for other epoch counts.

On a small label budget an epoch is a few steps (143 labelled digits at batch 16: 9), and the digits runs showed
scratch at 25 epochs 10 points under scratch trained for as many steps as distillation plus fine-tuning: the arms may
be compared before fine-tuning has converged, which favours the equal-compute arm. This reuses the run's
distillations (`--run`, linked, never changed) and runs the pretrain's own fine-tuning stage (`experiment.run_arms`:
the four arms, the run's protocol menu chosen on validation per seed and arm, equal-compute scratch stretched to
each count, the same labelled subset per seed) at each of `--epochs`, the run's own seeds; the test split is only
reported. Each count is its own folder under `--work`, so a killed sweep resumes.

Usage: python benchmarks/finetune_epochs.py --run RUN --work runs/finetune_epochs --epochs 25 100 --name NAME
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from repfusion.arms import seed_range
from repfusion.config import config_parser, parse_config
from repfusion.data import DataConfig
from repfusion.experiment import Experiment, run_arms
from repfusion.pipeline import PretrainRun
from repfusion.pipeline.run import finetune_config
from repfusion.tasks.protocols import apply as apply_protocol

RESULTS = Path(__file__).parent / "results"


def saved_run(run: Path, epochs: int) -> tuple[PretrainRun, DataConfig, str, list[str]]:
    """The run's own settings (its config.yaml through pretrain's parser, the budget's width) at `epochs` of
    fine-tuning, the data as the run inspected it, its student and its protocol menu."""
    parser = config_parser("repfusion pretrain", PretrainRun, "")
    cfg = parse_config(parser, PretrainRun, ["--config", str(run / "config.yaml")]).config
    filled = json.loads((run / "budget.json").read_text())["filled"]
    result = json.loads((run / "results.json").read_text())
    menu = json.loads((run / "pretrain.json").read_text())["finetune"]["protocols"]
    cfg = replace(cfg, finetune=replace(cfg.finetune, epochs=epochs, protocols=menu),
                  student=replace(cfg.student, width=cfg.student.width or filled["student.width"]),
                  trainer=replace(cfg.trainer, progress=False))
    data = DataConfig(**{k: v for k, v in result["data"].items() if k != "facts"})
    return cfg, data, result["student"]["arch"], menu


def link_distillations(run: Path, work: Path) -> None:
    """The run's distillations, linked into `work`, so the arms find them as their own and none reruns."""
    work.mkdir(parents=True, exist_ok=True)
    for found in sorted(run.glob("distill-*-seed*")):
        link = work / found.name
        if not link.exists():
            link.symlink_to(found.resolve(), target_is_directory=True)


def sweep(run: Path, work: Path, epochs: int) -> dict:
    cfg, data, arch, menu = saved_run(run, epochs)
    out = work / f"epochs{epochs}"
    link_distillations(run, out)
    exp = Experiment("classification", out, cfg.seeds, True, distill=lambda init, seed: None,
                     finetune=lambda init, seed: finetune_config(cfg, data, arch, init, seed),
                     fraction=data.label_fraction, protocols=tuple(menu),
                     apply=lambda r, name: apply_protocol(r, name, cfg.finetune.settings), first_seed=cfg.seed_offset)
    start = time.time()
    compared = run_arms(exp, lambda name, fn: fn(), "distil", "fine-tune the arms")
    assert compared is not None, "the run has labels: its arms compare"
    return {"epochs": epochs, "seeds": list(seed_range(exp)), "summary": compared.summary, "paired": compared.pairs,
            "protocols": compared.protocols, "by_protocol": compared.by_protocol, "seconds": time.time() - start}


def markdown(name: str, command: str, run: Path, rows: list[dict]) -> str:
    lines = [f"# Fine-tuning length: every arm at {', '.join(str(r['epochs']) for r in rows)} epochs", "",
             f"Command: `{command}`", "",
             f"The distillations of the pretrain run `{run}`, seeds {', '.join(map(str, rows[0]['seeds']))}; "
             "every arm fine-tuned by the run's own stage at each epoch count (protocol menu chosen per seed and arm "
             "on validation; equal-compute scratch stretched to each count). Test top-1 (%), mean over seeds:", "",
             "| epochs | scratch | scratch-equal | repfusion | random-teacher | repfusion - random-teacher | "
             "repfusion - scratch | repfusion - scratch-equal |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        means = [f"{100 * row['summary'][arm]['mean']:.2f}" for arm in ("scratch", "scratch-equal", "repfusion",
                                                                         "random-teacher")]
        pairs = {p["b"]: p for p in row["paired"]}
        cells = [f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]"
                 for p in (pairs["random-teacher"], pairs["scratch"], pairs["scratch-equal"])]
        lines.append(f"| {row['epochs']} | " + " | ".join(means + cells) + " |")
    lines += ["", f"![test top-1 against fine-tuning epochs]({name}.png)", "", "Seconds per count: " + ", ".join(f"{r['epochs']}: {r['seconds']:.0f}" for r in rows) + "."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> Path:
    """Test top-1 (mean and std over seeds) against fine-tuning epochs, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repfusion.io import save_figure

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for arm in ("scratch", "scratch-equal", "repfusion", "random-teacher"):
        means = [100 * r["summary"][arm]["mean"] for r in rows]
        stds = [100 * r["summary"][arm]["std"] for r in rows]
        ax.errorbar([r["epochs"] for r in rows], means, yerr=stds, marker="o", capsize=4, label=arm)
    ax.set_xlabel("fine-tuning epochs (scratch-equal: plus distillation's steps)")
    ax.set_ylabel("test top-1 (%)")
    ax.legend()
    fig.tight_layout()
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--name", default="finetune_epochs")
    args = parser.parse_args()
    missing = [name for name in ("config.yaml", "budget.json", "pretrain.json", "results.json")
               if not (args.run / name).is_file()]
    if missing:
        parser.error(f"--run {args.run} is not a finished `repfusion pretrain` run with labels (no {missing[0]}); "
                     "give the --run-dir of one.")
    command = (f"python benchmarks/finetune_epochs.py --run {args.run} --work {args.work} --epochs "
               f"{' '.join(map(str, args.epochs))} --name {args.name}")
    rows = []
    for epochs in args.epochs:
        rows.append(sweep(args.run, args.work, epochs))
        print(f"{epochs} epochs: " + ", ".join(f"{arm} {100 * s['mean']:.2f}" for arm, s in rows[-1]["summary"].items()),
              flush=True)
    out = {"command": command, "run": str(args.run), "seeds": rows[0]["seeds"], "rows": rows,
           "paired": [dict(p, epochs=r["epochs"]) for r in rows for p in r["paired"]]}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, RESULTS / f"{args.name}.png")
    text = markdown(args.name, command, args.run, rows)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

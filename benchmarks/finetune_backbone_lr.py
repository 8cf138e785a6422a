"""Does a smaller backbone learning rate at fine-tuning keep what distillation put in the backbone?

The frozen probe shows the trained teacher's student ahead of the random teacher's by several points,
and most of it is gone after fine-tuning at one learning rate. This reuses the distillations of a finished
`repfusion pretrain` run (`--run`) and fine-tunes scratch, RepFusion and the random-teacher student with
`optim.backbone_lr_scale` in `--scales`, the same labelled subset per seed for every arm; each arm's scale
is chosen on the validation split (mean over seeds), and only then is the test split read.

Usage: python benchmarks/finetune_backbone_lr.py --run runs/pretrain_cifar_png --work runs/backbone_lr
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import yaml

from repfusion.analysis.controls import format_entry, paired_entry
from repfusion.data import DataConfig
from repfusion.arms import distill_dir
from repfusion.pipeline import PretrainRun
from repfusion.pipeline.inspect import inspect_data
from repfusion.pipeline.run import finetune_config
from repfusion.tasks.finetune import run_finetune

ARMS = {"scratch": None, "repfusion": "repfusion", "random-teacher": "random-teacher"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--name", default="finetune_backbone_lr")
    args = parser.parse_args()
    saved = yaml.safe_load((args.run / "config.yaml").read_text())
    cfg = PretrainRun(data=DataConfig(**saved["data"]))
    cfg.finetune.epochs, cfg.finetune.lr = saved["finetune"]["epochs"], saved["finetune"]["lr"]
    cfg.student.width, cfg.seeds = saved["student"]["width"], saved["seeds"]
    seeds = list(range(saved.get("seed_offset", 0), saved.get("seed_offset", 0) + cfg.seeds))  # the run's own seeds
    cfg.trainer = replace(cfg.trainer, progress=False)
    result = json.loads((args.run / "results.json").read_text())
    data, _ = inspect_data(cfg.data, result["data"]["image_size"], auto_flip=False)
    data = replace(data, flip=result["data"]["flip"])
    arch = result["student"]["arch"]
    runs: dict[str, dict[float, list[dict]]] = {arm: {s: [] for s in args.scales} for arm in ARMS}
    start = time.time()
    for seed in seeds:
        for arm, teacher in ARMS.items():
            for scale in args.scales:
                run = finetune_config(cfg, data, arch, distill_dir(args.run, teacher, seed) if teacher else None, seed)
                run = replace(run, optim=replace(run.optim, backbone_lr_scale=scale))
                out = args.work / f"{arm}-x{scale:g}-seed{seed}"
                if not (out / "results.json").exists():
                    run_finetune(run, out)
                got = json.loads((out / "results.json").read_text())
                runs[arm][scale].append({"val": got["val/top1"], "test": got["test/top1"]})
                print(f"seed {seed} {arm:>14} x{scale:g}: val {100 * got['val/top1']:.2f} test "
                      f"{100 * got['test/top1']:.2f}", flush=True)
    chosen = {arm: max(scales, key=lambda s: statistics.mean(r["val"] for r in scales[s]))
              for arm, scales in runs.items()}
    test = {arm: [r["test"] for r in runs[arm][chosen[arm]]] for arm in runs}
    pairs = [paired_entry("repfusion", b, test["repfusion"], test[b], "test_top1", cfg.data.label_fraction)
             for b in ("random-teacher", "scratch")]
    same = {s: [paired_entry("repfusion", b, [r["test"] for r in runs["repfusion"][s]],
                             [r["test"] for r in runs[b][s]], "test_top1") for b in ("random-teacher",)]
            for s in args.scales}
    out = {"command": "python benchmarks/finetune_backbone_lr.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "runs": {a: {str(s): v for s, v in d.items()} for a, d in runs.items()}, "chosen": chosen, "seeds": seeds, "paired": pairs,
        "paired_same_scale": {str(s): v for s, v in same.items()}, "seconds": time.time() - start}
    results = Path(__file__).parent / "results"
    (results / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Fine-tuning with a smaller backbone learning rate", "", f"Command: `{out['command']}`", "",
             f"The distillations of `{args.run.name}` (`pretrain_cifar_png.md`); fine-tuning {cfg.finetune.epochs} epochs "
             f"at lr {cfg.finetune.lr} (head), backbone at lr x scale, {100 * cfg.data.label_fraction:g} % labels, "
             f"{cfg.seeds} seeds ({', '.join(map(str, seeds))}). Each arm's scale chosen on the validation split; test only reported.", "",
             "| arm | scale | val top-1 (%) | test top-1 (%) |", "|---|---|---|---|"]
    for arm, scales in runs.items():
        for s, rs in scales.items():
            mark = " (chosen)" if chosen[arm] == s else ""
            vals = ", ".join(f"{100 * r['val']:.2f}" for r in rs)
            tests = ", ".join(f"{100 * r['test']:.2f}" for r in rs)
            lines.append(f"| {arm} | {s:g}{mark} | {vals} | {tests} |")
    lines += ["", f"| paired ({len(seeds)} seeds, test top-1, each arm at its chosen scale) | points, 95 % CI |", "|---|---|"]
    lines += [f"| {p['a']} - {p['b']} | {format_entry(p)} |" for p in pairs]
    lines += ["", "| paired at one scale for both arms | points, 95 % CI |", "|---|---|"]
    lines += [f"| x{s} repfusion - random-teacher | {format_entry(v[0])} |" for s, v in out["paired_same_scale"].items()]
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

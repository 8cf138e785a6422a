"""Plain REINFORCE (the paper) against reward baselines, on the synthetic band teacher.

The teacher's feature carries the label only for 100 <= t < 200; a policy that learns puts its mass
there. Reports the final in-band mass per seed for each baseline and learning rate.

    python benchmarks/policy_baseline.py            # writes benchmarks/results/policy_baseline.{json,md}
"""

from __future__ import annotations

import shlex
import argparse
import statistics
import sys
import time
from pathlib import Path

from repfusion.distill.synthetic import train_policy_on_band
from repfusion.io import write_json, write_text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = []
    for baseline in ("none", "batch_mean", "ema"):
        for lr in args.lrs:
            start = time.time()
            finals = [train_policy_on_band(baseline, lr, args.steps, seed)[-1] for seed in range(args.seeds)]
            found = sum(f > 0.8 for f in finals)
            rows.append({"baseline": baseline, "lr": lr, "final_band_mass": finals, "seeds_found_band": found,
                         "mean": statistics.mean(finals), "seconds": time.time() - start})
            print(f"{baseline:>10} lr {lr}: band mass {[round(f, 2) for f in finals]}", flush=True)
    command = shlex.join(["python", *sys.argv])
    write_json(args.out / "policy_baseline.json", {"command": command, "steps": args.steps, "rows": rows})
    lines = [f"# Reward baseline vs plain REINFORCE (synthetic band teacher, {args.steps} steps)", "",
             f"Command: `{command}`", "",
             "In-band mass of the policy at the end (start: 0.10). 'found' counts seeds above 0.8.", "",
             "| baseline | lr | found | mean mass | per seed |", "|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{f:.2f}" for f in r["final_band_mass"])
        lines.append(f"| {r['baseline']} | {r['lr']} | {r['seeds_found_band']}/{len(r['final_band_mass'])} | "
                     f"{r['mean']:.2f} | {per_seed} |")
    write_text(args.out / "policy_baseline.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

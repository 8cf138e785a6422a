"""Plain REINFORCE (the paper) against reward baselines and our policy options, on the synthetic band teacher.

The teacher's feature carries the label only for 100 <= t < 200; a policy that learns puts its mass
there. Reports the final in-band mass per seed for each variant, learning rate and entropy weight
(0.01, and the paper's 0.1). "ours" is 20 t-bins with normalised advantages (timesteps.policy_bins: 20,
timesteps.advantage: normalized); the other rows are the paper's 1000-way policy.

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
    parser.add_argument("--entropy-weights", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    variants = {"none": {}, "batch_mean": {}, "ema": {}, "ours": {"policy_bins": 20, "advantage": "normalized"}}
    rows = []
    for entropy_weight in args.entropy_weights:
        for variant, options in variants.items():
            baseline = "none" if variant == "ours" else variant
            for lr in args.lrs:
                start = time.time()
                finals = [train_policy_on_band(baseline, lr, args.steps, seed, entropy_weight=entropy_weight,
                                               **options)[-1] for seed in range(args.seeds)]
                found = sum(f > 0.8 for f in finals)
                rows.append({"variant": variant, "lr": lr, "entropy_weight": entropy_weight, "final_band_mass": finals,
                             "seeds_found_band": found, "mean": statistics.mean(finals),
                             "seconds": time.time() - start})
                print(f"{variant:>10} lr {lr} entropy {entropy_weight}: band mass {[round(f, 2) for f in finals]}",
                      flush=True)
    command = shlex.join(["python", *sys.argv])
    write_json(args.out / "policy_baseline.json", {"command": command, "steps": args.steps, "rows": rows})
    lines = [f"# Reward baseline vs plain REINFORCE (synthetic band teacher, {args.steps} steps)", "",
             f"Command: `{command}`", "",
             "In-band mass of the policy at the end (start: 0.10). 'found' counts seeds above 0.8. "
             "variant: reward baseline of the paper's 1000-way policy (none = the paper), or ours (20 bins, "
             "normalised advantage).", "",
             "| variant | entropy weight | lr | found | mean mass | per seed |", "|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{f:.2f}" for f in r["final_band_mass"])
        lines.append(f"| {r['variant']} | {r['entropy_weight']} | {r['lr']} | {r['seeds_found_band']}/"
                     f"{len(r['final_band_mass'])} | {r['mean']:.2f} | {per_seed} |")
    write_text(args.out / "policy_baseline.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""One paired estimate from several committed seed sets of the same recipe.

Each fresh set of 5 seeds gives an interval about 5 points wide at 1 % labels, so one set can pass a +3 target and
the next miss it (1 % CIFAR: +2.60, +3.17, +1.00 over the random teacher). Every seed is its own unit (its own
distillations, labelled subset and fine-tuning), so the sets' seeds can be pooled into one seed-paired difference
with an interval of their own; nothing is rerun and no seed is dropped. Per set it also prints the set's own pairs,
so a set that disagrees with the pool stays visible.

A set is `RESULTS[@EPOCHS]`: a `repfusion pretrain` results.json (test top-1 from its `summary`, frozen probe from
its `probe`), or a `benchmarks/finetune_epochs.py` JSON, whose row at EPOCHS refits the same distillations; then
`--probe-from` names the pretrain results.json whose probe goes with it (the probe does not depend on fine-tuning).

Usage: python benchmarks/pool_sets.py --name NAME --set A.json --set B.json@100 --probe-from C.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from repfusion.analysis.controls import format_entry, paired_entry
from repfusion.arms import CONTROLS

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
ARMS = ("repfusion", *CONTROLS)
PROBE_CONTROLS = ("random-teacher", "random init")  # the frozen probes a pretrain run reports


def relative(path: Path) -> str:
    """The path as the repository names it, so no result file holds a machine's absolute path."""
    try:
        return str(path.resolve().relative_to(ROOT.resolve()))
    except ValueError:
        return str(path)


def read_set(spec: str, probe_from: str | None) -> dict:
    """One seed set: its seeds, every arm's test top-1 per seed and the frozen probes per seed (fractions)."""
    path_text, _, epochs = spec.partition("@")
    for given in (path_text, probe_from):
        if given is not None and not Path(given).is_file():
            raise SystemExit(f"error: {given} is not a file; give a results JSON of a finished run.")
    if epochs and not epochs.isdigit():
        raise SystemExit(f"error: {spec} names epochs {epochs!r}; write RESULTS.json@EPOCHS with a whole number.")
    data = json.loads(Path(path_text).read_text())
    if epochs:
        rows = [row for row in data["rows"] if row["epochs"] == int(epochs)]
        if not rows:
            raise SystemExit(f"error: {path_text} has no row at {epochs} epochs; name one of "
                             f"{[row['epochs'] for row in data['rows']]} after the @.")
        seeds, summary = rows[0]["seeds"], rows[0]["summary"]
        if probe_from is None:
            raise SystemExit(f"error: {spec} is a refit without probes; give --probe-from with the pretrain "
                             "results.json of the same run.")
        probe_data = json.loads(Path(probe_from).read_text())
        if probe_data["seeds"] != seeds:
            raise SystemExit(f"error: --probe-from {probe_from} ran seeds {probe_data['seeds']}, not {seeds}.")
        probe, source = probe_data["probe"], [relative(Path(path_text)), relative(Path(probe_from))]
    else:
        seeds, summary, probe, source = data["seeds"], data["summary"], data["probe"], [relative(Path(path_text))]
    test = {arm: summary[arm]["runs"] for arm in ARMS}
    probes = {arm: [run["linear_probe"] for run in probe[arm]] for arm in probe}
    return {"spec": spec, "source": source, "seeds": seeds, "test_top1": test, "val_probe": probes}


def pairs(test: dict[str, list[float]], probes: dict[str, list[float]]) -> list[dict]:
    """The report's paired differences, test top-1 and frozen probe, as a results file's `paired` rows."""
    return ([paired_entry("repfusion", b, test["repfusion"], test[b], "test_top1") for b in CONTROLS]
            + [paired_entry("repfusion", b, probes["repfusion"], probes[b], "val_probe") for b in PROBE_CONTROLS])


def line(pair: dict) -> str:
    return f"{pair['a']} - {pair['b']} ({pair['metric']}): {format_entry(pair)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="result file name under benchmarks/results/")
    parser.add_argument("--set", action="append", required=True, dest="sets", help="RESULTS.json[@EPOCHS]")
    parser.add_argument("--probe-from", action="append", default=[],
                        help="for each @EPOCHS set in order, the pretrain results.json of the same run")
    args = parser.parse_args()
    refits = iter(args.probe_from)
    sets = [read_set(spec, next(refits, None) if "@" in spec else None) for spec in args.sets]
    seeds = [seed for one in sets for seed in one["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: the sets share seeds ({sorted(seeds)}); pool only disjoint seed sets.")
    test = {arm: [value for one in sets for value in one["test_top1"][arm]] for arm in ARMS}
    probe_arms = set.intersection(*(set(one["val_probe"]) for one in sets))
    probes = {arm: [value for one in sets for value in one["val_probe"][arm]] for arm in probe_arms}
    result = {
        "command": "python benchmarks/pool_sets.py --name " + args.name
                   + "".join(f" --set {s}" for s in args.sets) + "".join(f" --probe-from {p}" for p in args.probe_from),
        "seeds": seeds,
        "sets": [{"spec": one["spec"], "source": one["source"], "seeds": one["seeds"],
                  "paired": pairs(one["test_top1"], one["val_probe"])} for one in sets],
        "means": {arm: 100 * sum(values) / len(values) for arm, values in test.items()},
        "paired": pairs(test, probes),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# {args.name}: {len(sets)} seed sets pooled, {len(seeds)} seeds", "", f"`{result['command']}`", ""]
    for one in result["sets"]:
        lines += [f"- seeds {one['seeds'][0]}-{one['seeds'][-1]} ({', '.join(one['source'])}):"]
        lines += [f"  - {line(pair)}" for pair in one["paired"]]
    lines += ["", f"Pooled over {len(seeds)} seeds, test top-1 means: "
              + ", ".join(f"{arm} {value:.2f} %" for arm, value in result["means"].items()), ""]
    lines += [f"- **{line(pair)}**" for pair in result["paired"]]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

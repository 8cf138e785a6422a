"""The pipeline's report: what was chosen and why, every arm, the paired differences with their 95 %
intervals, a one-sentence verdict, plots and the cost; Markdown beside results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analysis.plots import plot_arms
from ..analysis.student_probe import knn_shown, knn_words
from ..arms import cost_section, results_table
from ..io import write_text


def probe_table(probe: dict[str, list[dict[str, Any]]]) -> str:
    def shown(runs: list[dict[str, Any]], key: str) -> str:
        return ", ".join(knn_shown(run.get(key), 100, 2) for run in runs)  # '-': no k-NN (too few labels)

    rows = "\n".join(f"| {name} | {shown(runs, 'linear_probe')} | {shown(runs, 'knn')} |" for name, runs in probe.items())
    return f"| backbone | linear probe (%) | k-NN (%) |\n|---|---|---|\n{rows}"


def probe_knn_words(probe: dict[str, list[dict[str, Any]]]) -> str:
    """How the k-NN probes were fitted: one description when every backbone's was fitted alike (the same
    labelled images), else each distinct one."""
    words = list(dict.fromkeys(knn_words(run) for runs in probe.values() for run in runs))
    return "; ".join(words) or "none"


def protocol_section(result: dict[str, Any]) -> list[str]:
    """With several fine-tuning protocols: which one each arm kept per seed, and every protocol's mean validation
    and test top-1 per arm (the test column an observation: only the validation one chose)."""
    names = list(result.get("config", {}).get("finetune", {}).get("protocols", ["plain"]))
    by_protocol = result.get("by_protocol")
    if not by_protocol:
        return [] if names == ["plain"] else ["## Fine-tuning protocol", "", f"{names[0]} for every arm "
                                              "(`tasks.protocols`; a scratch arm's joint is its plain run).", ""]

    def means(arm: dict[str, dict[str, list[float]]], split: str) -> str:
        return ", ".join(f"{name} {100 * sum(runs[split]) / len(runs[split]):.2f}" for name, runs in arm.items())

    rows = [f"| {arm} | {', '.join(result['protocols'][arm])} | {means(runs, 'val')} | {means(runs, 'test')} |"
            for arm, runs in by_protocol.items()]
    return ["## Fine-tuning protocol", "",
            f"Every arm ran each of {', '.join(names)} on every seed"
            + (" (a scratch arm's teacher in the loop is its plain run)" if "joint" in names else "")
            + "; the one with the best validation top-1 is the one in the table above, the test split never "
            "chose. Mean top-1 (%) per protocol:", "",
            "| arm | kept, per seed | validation | test |", "|---|---|---|---|", *rows, ""]


def cached(cfg: Any, choice: dict[str, Any]) -> str:
    """How the distillations got the teacher's targets (`DistillBudget.views_for`, as `distill_config` reads it)."""
    views = cfg.distill.views_for(choice["mode"])
    return (f"the teacher's targets computed once per training image and stored view ({views} views an image)"
            if views else "the teacher run on every step")


def write_report(out: Path, result: dict[str, Any], cfg: Any) -> None:
    data, facts, choice = result["data"], result["data"]["facts"], result["choice"]
    where = data.get("root") or data["source"]
    parts = [f"# RepFusion pretrain report: {where}", "",
             f"Images: {facts['train_images']} training, {facts['test_images']} test ({facts['layout']}); labels: "
             f"{facts['labels']}; {data['image_size']} px ({facts['size_reason']}). Teacher: `{result['teacher']}`. "
             f"Student {result['student']['arch']} at width {result['student']['width']}. "
             f"{100 * data['val_fraction']:g} % of the training images are the validation split, which makes every "
             "choice; the test split is only reported.", "",
             "## Teacher layer and t", "", f"`{choice['layer']}`, {choice['mode']} input, t = {choice['t']}: "
             f"{choice['reason']} Details: [choice.md](choice.md).", "",
             "## Distillation", "", f"Label-free dense hint on that layer ({cfg.distill.epochs} epochs), the target "
             f"standardised per channel, {cached(cfg, choice)}. Seed {cfg.seed_offset}, trained teacher:", "",
             f"![curves](distill-repfusion-seed{cfg.seed_offset}/curves.png)", ""]
    if "summary" in result:
        summary = result["summary"]
        fraction = 100 * data["label_fraction"]
        plot_arms({arm: [100 * r for r in s["runs"]] for arm, s in summary.items()}, out / "accuracy.png",
                  f"{Path(where).name}, {fraction:g} % labels: RepFusion and its controls")
        parts += ["## Result", "",
                  f"Fine-tuned on {fraction:g} % of the training labels (a stratified subset drawn per seed, the same "
                  f"for every arm), {cfg.seeds} seeds ({', '.join(map(str, result['seeds']))}), each with its own "
                  "distillations; scratch "
                  f"({cfg.finetune.epochs} epochs), scratch-equal (as many steps as distillation plus fine-tuning), "
                  "repfusion, and random-teacher (the same recipe from a random-weight teacher of the same "
                  "architecture: repfusion - random-teacher is what the diffusion model's knowledge adds).", "",
                  results_table(summary, result["paired"]), "", result["verdict"], "", "![accuracy](accuracy.png)", "",
                  *protocol_section(result),
                  "## What the frozen backbones know", "",
                  "Linear probe and k-NN on pooled features, fitted on the labelled training images, scored on the "
                  "validation split, before fine-tuning (one value per seed); k-NN: "
                  f"{probe_knn_words(result['probe'])}:", "", probe_table(result["probe"]), ""]
    else:
        parts += ["## Result", "", "No labels, so nothing is fine-tuned or compared: the backbone is in "
                  "[student/](student/). Give class sub-folders or --data.labels FILE.csv for the comparison.", ""]
    parts.append(cost_section(result))
    invocations = result.get("invocations", [])
    if len(invocations) > 1:  # resumed: the table and the wall time sum what every invocation spent
        walls = ", ".join(f"{inv['wall_s']:.0f} s" for inv in invocations)
        parts.append(f"Resumed: the seconds and the wall time sum the run's {len(invocations)} invocations (wall "
                     f"time {walls}); a stage reused on a resume adds nothing.\n")
    write_text(out / "report.md", "\n".join(parts))


def card_metrics(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's numbers for the exported backbone's model card: each arm's test top-1 (this model's as
    its own result, the controls as baselines), the frozen probe, and the paired differences."""
    dataset = Path(str(result["data"].get("root") or result["data"]["source"])).name
    arm_of = {"repfusion": None}
    metrics: list[dict[str, Any]] = []
    for arm, summary in result.get("summary", {}).items():
        metrics.append({"name": "test/top1", "value": summary["mean"], "split": "test", "task":
                        "image-classification", "dataset": dataset, "arm": arm_of.get(arm, arm),
                        "seeds": len(summary["runs"]), "runs": summary["runs"],
                        "label_fraction": result["data"]["label_fraction"], "note": "fine-tuned from this arm's init"})
    for name, runs in result.get("probe", {}).items():
        values = [r["linear_probe"] for r in runs]
        metrics.append({"name": "val/linear_probe", "value": sum(values) / len(values), "split": "validation",
                        "task": "image-classification", "dataset": dataset, "arm": arm_of.get(name, name),
                        "runs": values, "note": "frozen backbone"})
    for pair in result.get("paired", []):
        metrics.append({"name": f"paired/{pair['metric']}", "value": pair["mean"], "split": "test"
                        if pair["metric"] == "test_top1" else "validation", "dataset": dataset,
                        "arm": f"{pair['a']} - {pair['b']}", "ci95": [pair["low"], pair["high"]], "seeds": pair["n"]})
    return metrics

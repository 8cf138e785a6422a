"""Model cards (`README.md` with YAML front matter, as hub folders carry) for exported `student/` and `model/`.

Why huggingface_hub's `ModelCard` / `ModelCardData`: the front matter is what the hub, its widgets and other
tools parse (`library_name`, `tags`, `model-index`), and writing it through the library keeps it valid YAML
whatever the facts hold. The body is rendered from the front matter alone, so `update_model_card_metrics`
(the pipeline adds baselines and probe results after the export) only changes data and renders again.

Facts are a plain dict (teacher, data, loss, timesteps, student, ...; see `repfusion.export_card`), stored as
top-level front-matter keys. Metrics are dicts:

    {"name": "test/acc", "value": 0.91, "split": "test", "type": "accuracy", "task": "image-classification",
     "dataset": "digits", "arm": None}

`arm` None (or "ours") is this model's own result and also goes into `model-index`, with the model's
seed (`seed` on the metric, else the card's `seed` fact) as the metric's `args`; any other arm ("scratch",
"random-teacher", ...) is a baseline, kept in `results` beside it. Extra keys (ci95, seeds, ...) are kept
as given.

A metric with `runs` (one value per seed, in seed order 0, 1, ..., or in the order of `run_seeds`) is an
arm's mean over seeds: it stays out of `model-index` whatever its arm, and the card shows it in its own
section ("Arm means"). When its arm is this model's and the card knows this model's seed, the value of that
seed is this model's own number: that one goes into `model-index` (a pipeline's 3-seed mean is not the
number of the seed-0 model it exported).

Also written: `license` (a fact; "unknown" when none is given, and the card says so), `datasets` (a fact),
`pipeline_tag` (image-feature-extraction for a distilled backbone, the task's tag for a fine-tuned network:
image-classification, image-segmentation, keypoint-detection) and `library_name: repfusion`.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .errors import RepFusionError
from .io import write_text

CARD_NAME = "README.md"
LIBRARY = "repfusion"
OWN_ARMS = (None, "", "ours")
TASK_TYPES = {"classification": "image-classification", "segmentation": "image-segmentation",
              "landmarks": "keypoint-detection"}
FEATURES_TASK = "image-feature-extraction"
METRIC_TYPES = {"top1": "accuracy", "acc": "accuracy", "top5": "top_5_accuracy", "miou": "mean_iou"}  # hub ids
_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}"
UNKNOWN_LICENSE = "unknown"  # a license id the Hub accepts
GENERATED = {"library_name", "tags", "model_name", "eval_results", "results", "command", "model-index",
             "pipeline_tag"}  # written from the facts and metrics, never facts themselves


def command_line(argv: list[str] | None = None) -> str | None:
    """The `repfusion ...` command being run, or None when the caller is not the command line (the Python API,
    a test): then the card's resolved config is what made the model."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return None
    program = Path(argv[0])
    if program.name in ("repfusion", "repfusion.exe") or (program.name in ("__main__.py", "cli.py")
                                                          and program.parent.name == LIBRARY):
        return shlex.join(["repfusion", *argv[1:]])
    return None


def plain(value: Any) -> Any:
    """JSON-shaped copy (tuples as lists, paths as strings), which the YAML dumper and the loader agree on."""
    return json.loads(json.dumps(value, default=str))


def is_mean(metric: dict[str, Any]) -> bool:
    """An arm's mean over seeds (it carries the per-seed `runs`), not one model's number."""
    return isinstance(metric.get("runs"), list) and bool(metric["runs"])


def _metric_key(metric: dict[str, Any]) -> tuple:
    return (metric.get("name"), metric.get("split", "test"), metric.get("arm") or None, is_mean(metric))


def merge_metrics(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` with each metric of `new` replacing the one of the same name, split, arm and kind (one model's
    number, or a mean over seeds), else appended."""
    merged = {_metric_key(m): m for m in old}
    for metric in new:
        if "name" not in metric or "value" not in metric:
            raise RepFusionError(f"A model-card metric needs a 'name' and a 'value', not {metric}.")
        merged[_metric_key(metric)] = metric
    return list(merged.values())


def _metric_type(name: str) -> str:
    last = name.split("/")[-1]
    return METRIC_TYPES.get(last.lower(), last)


def _seed_value(metric: dict[str, Any], seed: Any) -> float | None:
    """The value of `seed` among a mean's per-seed `runs` (seed order, or `run_seeds`), or None."""
    runs = metric["runs"]
    seeds = metric.get("run_seeds") or list(range(len(runs)))
    if not isinstance(seed, int) or isinstance(seed, bool) or seed not in seeds or len(seeds) != len(runs):
        return None
    value = runs[seeds.index(seed)]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


MEAN_ONLY_KEYS = ("runs", "run_seeds", "seeds", "std", "ci95")


def own_metrics(facts: dict[str, Any], metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This model's own numbers, each with its seed: the metrics of its own arm that are not means, then the
    value of this model's seed in each of its own arm's means (unless a metric of that name and split is
    already its own)."""
    seed = facts.get("seed")
    own = [{**m, "seed": m.get("seed", seed)} for m in metrics
           if m.get("arm") in OWN_ARMS and not is_mean(m) and isinstance(m.get("value"), (int, float))]
    named = {(m.get("name"), m.get("split", "test")) for m in own}
    for m in metrics:
        if m.get("arm") not in OWN_ARMS or not is_mean(m) or (m.get("name"), m.get("split", "test")) in named:
            continue
        value = _seed_value(m, seed)
        if value is not None:
            note = "; ".join(filter(None, [m.get("note"), f"seed {seed}'s run of the arm's {len(m['runs'])}"]))
            own.append({**{k: v for k, v in m.items() if k not in MEAN_ONLY_KEYS}, "value": value, "seed": seed,
                        "note": note})
    return own


def pipeline_tag(facts: dict[str, Any]) -> str:
    """What the exported network computes: pooled features (a distilled backbone) or the fine-tuned task."""
    return TASK_TYPES.get(facts.get("task"), FEATURES_TASK) if facts.get("stage") == "finetune" else FEATURES_TASK


def _eval_results(facts: dict[str, Any], metrics: list[dict[str, Any]]) -> list[EvalResult]:
    data = facts.get("data") or {}
    task = TASK_TYPES.get(facts.get("task"), FEATURES_TASK)
    out = []
    for m in own_metrics(facts, metrics):
        seed = m.get("seed")
        out.append(EvalResult(
            task_type=m.get("task", task), dataset_type=str(data.get("source", "unknown")),
            dataset_name=str(m.get("dataset") or data.get("root") or data.get("source", "unknown")),
            dataset_split=m.get("split", "test"), metric_type=m.get("type", _metric_type(str(m["name"]))),
            metric_name=str(m["name"]), metric_value=m["value"],
            metric_args={"seed": seed} if seed is not None else None))
    return out


def _tags(facts: dict[str, Any]) -> list[str]:
    teacher = facts.get("teacher") or {}
    student = facts.get("student") or {}
    tags = [LIBRARY, "knowledge-distillation", "diffusion-teacher", pipeline_tag(facts)]
    tags += [t for t in (facts.get("task"), student.get("arch"), teacher.get("kind") and f"teacher-{teacher['kind']}")
             if t]
    if teacher.get("init") == "random":
        tags.append("random-teacher-control")
    return list(dict.fromkeys(str(t) for t in tags))


def _card_data(facts: dict[str, Any], metrics: list[dict[str, Any]], command: str | None) -> ModelCardData:
    facts = plain(facts)
    clash = sorted(GENERATED & set(facts))
    if clash:
        raise RepFusionError(f"Model-card facts may not use the reserved key '{clash[0]}'; rename it.")
    name = facts.get("name") or f"repfusion-{(facts.get('student') or {}).get('arch', 'student')}"
    own = _eval_results(facts, metrics)
    facts.setdefault("license", UNKNOWN_LICENSE)  # stated, not left out: a reader must not assume one
    return ModelCardData(library_name=LIBRARY, tags=_tags(facts), model_name=name if own else None,
                         pipeline_tag=pipeline_tag(facts), eval_results=own or None, results=plain(metrics) or None,
                         command=command, **facts)


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows if v not in (None, "", [], {}))]


def _value(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def _interval(ci: Any) -> str:
    return f"[{_value(ci[0])}, {_value(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "-"


def _license_line(data: dict[str, Any]) -> str:
    license_, note = data.get("license") or UNKNOWN_LICENSE, data.get("license_note")
    if license_ == UNKNOWN_LICENSE:
        return f"unknown{f' ({note})' if note else ''}: check the teacher's and the training data's terms"
    return f"{license_}{f' ({note})' if note else ''}; the training data's terms apply too"


def _results_lines(data: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """This model's numbers (with its seed), the arm means over seeds, then baselines and paired differences."""
    lines: list[str] = []
    own = own_metrics(data, results)
    if own:
        seeds = sorted({str(m["seed"]) for m in own if m.get("seed") is not None})
        lines += ["", "## This model" + (f" (seed {', '.join(seeds)})" if seeds else ""), "",
                  "The numbers of this model alone (also its `model-index`).", "",
                  "| metric | split | value | note |", "|---|---|---|---|"]
        lines += [f"| {m.get('name')} | {m.get('split', 'test')} | {_value(m.get('value'))} | "
                  f"{m.get('note') or ''} |" for m in own]
    means = [m for m in results if is_mean(m)]
    if means:
        mine = data.get("arm") or "this model's arm"
        lines += ["", "## Arm means (over seeds)", "",
                  "Each arm's mean over its seeds: the recipe's result, not this model's (that is above).", "",
                  "| arm | metric | split | mean | std | seeds | runs |", "|---|---|---|---|---|---|---|"]
        for m in means:
            runs = [v for v in m["runs"] if isinstance(v, (int, float))]
            std = statistics.stdev(runs) if len(runs) > 1 else None
            lines.append(f"| {m.get('arm') or mine} | {m.get('name')} | {m.get('split', 'test')} | "
                         f"{_value(m.get('value'))} | {_value(std)} | {len(m['runs'])} | "
                         f"{', '.join(_value(v) for v in m['runs'])} |")
    others = [m for m in results if not is_mean(m) and m.get("arm") not in OWN_ARMS]
    if others:
        lines += ["", "## Baselines and paired differences", "", "| arm | metric | split | value | 95 % interval |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m.get('arm')} | {m.get('name')} | {m.get('split', 'test')} | {_value(m.get('value'))} | "
                  f"{_interval(m.get('ci95'))} |" for m in others]
    return lines


def _timm_lines(timm: dict[str, Any], folder: str) -> list[str]:
    name = timm.get("folder")
    if not name:
        return [f"No timm-style folder: {timm['reason']}."] if timm.get("reason") else []
    head = (f"`num_classes={timm['num_classes']}` keeps the fine-tuned head" if timm.get("num_classes")
            else "`num_classes=0`: pooled features")
    lines = [f"timm/Hub layout in `{name}/`: `model.safetensors` and a `config.json` with `architecture`, "
             "`num_features` and `pretrained_cfg` (input size, mean, std, interpolation, crop_pct of this run's data)."]
    if timm.get("timm_loadable"):
        lines += [f"timm: `timm.create_model(\"{timm['architecture']}\", num_classes={timm.get('num_classes', 0)}, "
                  f"checkpoint_path=\"{folder}/{name}/model.safetensors\")` ({head}); its two files, uploaded as a "
                  "Hub repository, load with `timm.create_model(\"hf-hub:USER/REPO\", pretrained=True)`."]
    else:
        lines += [f"timm cannot build it: {timm.get('reason')}. "
                  f"`repfusion.torchvision_keys.load_timm_folder(\"{folder}/{name}\")` rebuilds it ({head})."]
    return lines


def render_body(data: dict[str, Any]) -> str:
    """The Markdown a person reads, from the front matter's dict."""
    teacher, student, dataset = data.get("teacher") or {}, data.get("student") or {}, data.get("data") or {}
    loss, timesteps, tv = data.get("loss") or {}, data.get("timesteps") or {}, data.get("torchvision") or {}
    stage = data.get("stage", "distill")
    title = (f"{student.get('arch', 'student')} (width {student.get('width', 1)}) "
             + ("distilled from a diffusion teacher" if stage == "distill" else f"fine-tuned for {data.get('task')}"))
    lines = [f"# {title}", "", "Made with repfusion (RepFusion: diffusion models as teachers for recognition "
             "networks).", "", "## How it was made", ""]
    lines += _table([("stage", stage), ("arm", data.get("arm")), ("seed", data.get("seed")),
                     ("init", data.get("init")),
                     ("teacher", f"{teacher.get('source')} ({teacher.get('kind')}, {teacher.get('init')} weights)"
                      if teacher else None),
                     ("teacher layer", ", ".join(teacher["layer"]) if isinstance(teacher.get("layer"), list)
                      else teacher.get("layer")),
                     ("input to the teacher", teacher.get("noise_mode")),
                     ("loss", loss.get("name")), ("timesteps", timesteps.get("strategy")),
                     ("reward", data.get("reward")),
                     ("data", f"{dataset.get('source')}" + (f" ({dataset['root']})" if dataset.get("root") else "")),
                     ("datasets", ", ".join(map(str, data["datasets"])) if isinstance(data.get("datasets"), list)
                      else data.get("datasets")),
                     ("image size", dataset.get("image_size")), ("label fraction", dataset.get("label_fraction")),
                     ("pixel mean / std",
                      f"{dataset.get('mean')} / {dataset.get('std')}" if dataset.get("mean") else None),
                     ("optimiser steps", data.get("steps")), ("license", _license_line(data)),
                     ("pipeline tag", data.get("pipeline_tag"))])
    lines += _results_lines(data, data.get("results") or [])
    classifier = stage == "finetune" and data.get("task") == "classification"
    lines += ["", "## Loading it", "", "```python", "from repfusion.students import load_student",
              "network = load_student(\"path/to/this/folder\")  # forward: "
              + ("class logits" if classifier else "pooled features"), "```"]
    if tv.get("file"):
        where = (f"`torchvision.models.{tv['architecture']}()`" if tv.get("library", "torchvision") == "torchvision"
                 else f"`timm.create_model(\"{tv['architecture']}\")`")
        lines += ["", f"In {tv.get('library', 'torchvision')}'s key names: `{tv['file']}` loads into {where} with "
                  "`load_state_dict(safetensors.torch.load_file(path), strict=False)`, only the layers after the "
                  "feature layer (the classifier) missing"
                  + (f"; timm: `timm.create_model(\"{tv['timm']}\", num_classes=0, checkpoint_path=path)`."
                     if tv.get("timm") else ".")]
    elif tv.get("reason"):
        lines += ["", f"No torchvision-keyed file: {tv['reason']}."]
    timm = _timm_lines(data.get("timm_folder") or {}, "path/to/this/folder")
    if timm:
        lines += ["", *timm]
    if data.get("command"):
        lines += ["", "## Command", "", "```bash", data["command"], "```"]
    if data.get("config"):
        lines += ["", "The resolved config of the run is this card's `config` entry (front matter)."]
    return "\n".join(lines) + "\n"


def _save(folder: Path, card_data: ModelCardData) -> Path:
    body = render_body(card_data.to_dict())
    card = ModelCard.from_template(card_data, template_str=_TEMPLATE, body=body)
    return write_text(folder / CARD_NAME, str(card))


def write_model_card(folder: str | os.PathLike, facts: dict[str, Any], metrics: list[dict[str, Any]] | None = None,
                     command: str | None = None) -> Path:
    """Write `folder/README.md` (atomically) from the facts, the metrics known so far and the command.

    Args:
        folder: the export folder (`student/`, `model/`, or its staging copy).
        facts (`dict`): plain data; top-level keys become front-matter keys (teacher, data, loss, ...).
        metrics (`list[dict]`, *optional*): see the module docstring.
        command (`str`, *optional*): the command line that made it (`command_line()`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RepFusionError(f"Model-card folder {folder} does not exist; export the model first.")
    return _save(folder, _card_data(facts, merge_metrics([], plain(metrics or [])), command))


def read_model_card(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The front matter of `folder/README.md` as a dict, or None when there is no card."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    try:
        return ModelCard.load(path).data.to_dict()
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise RepFusionError(f"The model card {path} has unreadable front matter ({type(e).__name__}); delete it "
                             "and export again.") from None


def update_model_card_metrics(folder: str | os.PathLike, metrics: list[dict[str, Any]],
                              facts: dict[str, Any] | None = None) -> Path:
    """Add or replace metrics (by name, split, arm and kind) in an existing card, keeping every fact.

    facts (`dict`, *optional*): facts to set or replace (top-level keys; a dict value is merged into the
    card's dict of that key), e.g. `{"arm": "scratch", "seed": 1}` or a teacher source rebased to a run folder.
    """
    data = read_model_card(folder)
    if data is None:
        raise RepFusionError(f"{folder} has no {CARD_NAME} to update; write it with write_model_card first.")
    kept = {k: v for k, v in data.items() if k not in GENERATED}
    for key, value in plain(facts or {}).items():
        kept[key] = {**kept[key], **value} if isinstance(value, dict) and isinstance(kept.get(key), dict) else value
    merged = merge_metrics(data.get("results") or [], plain(metrics))
    return _save(Path(folder), _card_data(kept, merged, data.get("command")))

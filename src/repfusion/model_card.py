"""Model cards (`README.md` with YAML front matter, as hub folders carry) for exported `student/` and `model/`.

Why huggingface_hub's `ModelCard` / `ModelCardData`: the front matter is what the hub, its widgets and other
tools parse (`library_name`, `tags`, `model-index`), and writing it through the library keeps it valid YAML
whatever the facts hold. The body is rendered from the front matter alone, so `update_model_card_metrics`
(the pipeline adds baselines and probe results after the export) only changes data and renders again.

Facts are a plain dict (teacher, data, loss, timesteps, student, ...; see `repfusion.export_card`), stored as
top-level front-matter keys. Metrics are dicts:

    {"name": "test/acc", "value": 0.91, "split": "test", "type": "accuracy", "task": "image-classification",
     "dataset": "digits", "arm": None}

`arm` None (or "ours") is this model's own result and also goes into `model-index`; any other arm
("scratch", "random-teacher", ...) is a baseline, kept in `results` beside it. Extra keys (ci95, seeds, ...)
are kept as given.
"""

from __future__ import annotations

import json
import os
import shlex
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


def _metric_key(metric: dict[str, Any]) -> tuple:
    return (metric.get("name"), metric.get("split", "test"), metric.get("arm") or None)


def merge_metrics(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` with each metric of `new` replacing the one of the same name, split and arm (else appended)."""
    merged = {_metric_key(m): m for m in old}
    for metric in new:
        if "name" not in metric or "value" not in metric:
            raise RepFusionError(f"A model-card metric needs a 'name' and a 'value', not {metric}.")
        merged[_metric_key(metric)] = metric
    return list(merged.values())


def _metric_type(name: str) -> str:
    last = name.split("/")[-1]
    return METRIC_TYPES.get(last.lower(), last)


def _eval_results(facts: dict[str, Any], metrics: list[dict[str, Any]]) -> list[EvalResult]:
    data = facts.get("data") or {}
    task = TASK_TYPES.get(facts.get("task"), FEATURES_TASK)
    out = []
    for m in metrics:
        if m.get("arm") not in OWN_ARMS or not isinstance(m.get("value"), (int, float)):
            continue
        out.append(EvalResult(
            task_type=m.get("task", task), dataset_type=str(data.get("source", "unknown")),
            dataset_name=str(m.get("dataset") or data.get("root") or data.get("source", "unknown")),
            dataset_split=m.get("split", "test"), metric_type=m.get("type", _metric_type(str(m["name"]))),
            metric_name=str(m["name"]), metric_value=m["value"]))
    return out


def _tags(facts: dict[str, Any]) -> list[str]:
    teacher = facts.get("teacher") or {}
    student = facts.get("student") or {}
    tags = [LIBRARY, "knowledge-distillation", "diffusion-teacher", FEATURES_TASK]
    tags += [t for t in (facts.get("task"), student.get("arch"), teacher.get("kind") and f"teacher-{teacher['kind']}")
             if t]
    if teacher.get("init") == "random":
        tags.append("random-teacher-control")
    return list(dict.fromkeys(str(t) for t in tags))


def _card_data(facts: dict[str, Any], metrics: list[dict[str, Any]], command: str | None) -> ModelCardData:
    facts = plain(facts)
    reserved = {"library_name", "tags", "model_name", "eval_results", "results", "command", "model-index"}
    clash = sorted(reserved & set(facts))
    if clash:
        raise RepFusionError(f"Model-card facts may not use the reserved key '{clash[0]}'; rename it.")
    name = facts.get("name") or f"repfusion-{(facts.get('student') or {}).get('arch', 'student')}"
    own = _eval_results(facts, metrics)
    return ModelCardData(library_name=LIBRARY, tags=_tags(facts), model_name=name if own else None,
                         eval_results=own or None, results=plain(metrics) or None, command=command, **facts)


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows if v not in (None, "", [], {}))]


def _value(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def render_body(data: dict[str, Any]) -> str:
    """The Markdown a person reads, from the front matter's dict."""
    teacher, student, dataset = data.get("teacher") or {}, data.get("student") or {}, data.get("data") or {}
    loss, timesteps, tv = data.get("loss") or {}, data.get("timesteps") or {}, data.get("torchvision") or {}
    stage = data.get("stage", "distill")
    title = (f"{student.get('arch', 'student')} (width {student.get('width', 1)}) "
             + ("distilled from a diffusion teacher" if stage == "distill" else f"fine-tuned for {data.get('task')}"))
    lines = [f"# {title}", "", "Made with repfusion (RepFusion: diffusion models as teachers for recognition "
             "networks).", "", "## How it was made", ""]
    lines += _table([("stage", stage), ("init", data.get("init")),
                     ("teacher", f"{teacher.get('source')} ({teacher.get('kind')}, {teacher.get('init')} weights)"
                      if teacher else None),
                     ("teacher layer", ", ".join(teacher["layer"]) if isinstance(teacher.get("layer"), list)
                      else teacher.get("layer")),
                     ("input to the teacher", teacher.get("noise_mode")),
                     ("loss", loss.get("name")), ("timesteps", timesteps.get("strategy")),
                     ("reward", data.get("reward")),
                     ("data", f"{dataset.get('source')}" + (f" ({dataset['root']})" if dataset.get("root") else "")),
                     ("image size", dataset.get("image_size")), ("label fraction", dataset.get("label_fraction")),
                     ("pixel mean / std",
                      f"{dataset.get('mean')} / {dataset.get('std')}" if dataset.get("mean") else None),
                     ("optimiser steps", data.get("steps"))])
    results = data.get("results") or []
    if results:
        lines += ["", "## Results", "", "| arm | metric | split | value |", "|---|---|---|---|"]
        lines += [f"| {m.get('arm') or 'this model'} | {m.get('name')} | {m.get('split', 'test')} | "
                  f"{_value(m.get('value'))} |"
                  for m in results]
    lines += ["", "## Loading it", "", "```python", "from repfusion.students import load_student",
              "backbone = load_student(\"path/to/this/folder\")  # forward: pooled features", "```"]
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


def update_model_card_metrics(folder: str | os.PathLike, metrics: list[dict[str, Any]]) -> Path:
    """Add or replace metrics (by name, split and arm) in an existing card, keeping every fact."""
    data = read_model_card(folder)
    if data is None:
        raise RepFusionError(f"{folder} has no {CARD_NAME} to update; write it with write_model_card first.")
    generated = {"library_name", "tags", "model_name", "model-index", "eval_results", "results", "command"}
    facts = {k: v for k, v in data.items() if k not in generated}
    merged = merge_metrics(data.get("results") or [], plain(metrics))
    return _save(Path(folder), _card_data(facts, merged, data.get("command")))

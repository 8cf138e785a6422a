"""YAML configs with dotted command-line overrides, parsed into typed dataclasses by jsonargparse.

Each YAML section maps to one dataclass; defaults live in the dataclasses; an unknown key or a
value of the wrong type is a one-sentence error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from .errors import RepFusionError, closest
from .io import write_text

T = TypeVar("T")


def config_parser(prog: str, schema: type, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file; later flags override it.")
    parser.add_class_arguments(schema, None, fail_untyped=True)
    parser.add_argument("--run-dir", type=str, default=None, help="Output folder of the run.")
    parser.add_argument("--resume", action="store_true", help="Continue an interrupted run from last.ckpt.")
    return parser


def _explain(parser: ArgumentParser, message: str) -> str:
    """Turn jsonargparse's multi-line message into one sentence with 'did you mean'."""
    first = message.strip().splitlines()[0].rstrip(":")
    match = re.search(r"does not accept option '([^']+)'|[Uu]nrecognized arguments: --?(\S+)", message)
    if match:
        bad = match.group(1) or match.group(2)
        group = re.search(r"Group '([^']+)'", message)
        full = f"{group.group(1)}.{bad}" if group else bad
        valid = [a.dest for a in parser._actions if a.dest not in ("help", "config")]
        near = closest(full, valid)
        hint = f"; valid keys near it: {', '.join(near)}" if near else ""
        return f"Unknown config key '{full}'{hint}."
    value = re.search(r'Parser key "([^"]+)"', message)
    if value:
        given = re.search(r"Given value: (.*)", message)
        shown = f" '{given.group(1).strip()}'" if given else ""
        return f"Config key '{value.group(1)}' got the invalid value{shown}; check its type in the config reference."
    return first + ("" if first.endswith(".") else ".")


@dataclass
class ParsedRun:
    config: Any
    namespace: Namespace
    run_dir: Path | None
    resume: bool


def parse_config(parser: ArgumentParser, schema: type[T], argv: list[str]) -> ParsedRun:
    """Parse flags (and --config files) into an instance of `schema`, plus --run-dir and --resume."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv) and not Path(argv[i + 1]).is_file():
            raise RepFusionError(f"Config file {argv[i + 1]} does not exist; give the path of a YAML file.")
    try:
        namespace = parser.parse_args(argv)
        built = parser.instantiate_classes(namespace)
    except RepFusionError:
        raise
    except Exception as e:
        raise RepFusionError(_explain(parser, str(e))) from None
    config = schema(**{f.name: built[f.name] for f in fields(schema)})
    run_dir = Path(built["run_dir"]) if built["run_dir"] else None
    return ParsedRun(config, namespace, run_dir, bool(built["resume"]))


def save_resolved(parser: ArgumentParser, namespace: Namespace, path: Path) -> None:
    """The full config of a run, defaults included, written beside its checkpoints."""
    clean = namespace.clone()
    for key in ("config", "resume", "run_dir"):
        if key in clean:
            del clean[key]
    write_text(path, parser.dump(clean, skip_none=False, skip_check=True))


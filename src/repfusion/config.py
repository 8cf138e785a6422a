"""YAML configs with dotted command-line overrides, parsed into typed dataclasses by jsonargparse.

Each YAML section maps to one dataclass; defaults live in the dataclasses; an unknown key or a
value of the wrong type is a one-sentence error.

A config is data: every free-form field is typed as plain JSON data (`JSONValue`), a mapping that
names a class (`class_path` / `init_args`) is refused before jsonargparse sees it, and jsonargparse's
own import-path policy denies every import a parsed value could ask for, so nothing named in a YAML
file or flag is ever imported or instantiated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

from .errors import RepFusionError, closest
from .io import write_text
from .jsondata import JSONScalar, JSONValue  # noqa: F401  (re-exported: the type of free-form fields)

T = TypeVar("T")

CLASS_KEYS = ("class_path", "init_args", "dict_kwargs")


def _deny_imports() -> None:
    """jsonargparse imports any `class_path` a value names unless its import-path policy forbids it: deny all."""
    set_parsing_settings(import_path_denylist=["*"], instantiate_subclass_spec_in_any=False,
                         validate_subclass_spec_in_any=False)


def _class_key(value: Any, where: str) -> str | None:
    """The dotted location of the first mapping key that names a class to instantiate, if any."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in CLASS_KEYS:
                return f"{where}.{key}" if where else str(key)
            found = _class_key(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _class_key(item, where)
            if found:
                return found
    return None


def _refuse_class(where: str, source: str) -> RepFusionError:
    return RepFusionError(
        f"{source} names a class to instantiate at '{where}'; a config is data, so repfusion never imports or "
        "instantiates what it names: give plain values (numbers, strings, lists, mappings)."
    )


def read_yaml_config(path: Path) -> Any:
    """Load a config file as YAML data (safe loader), naming the file, line and column of a syntax error."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = (getattr(e, "problem", None) or str(e).strip().splitlines()[0]).strip()
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RepFusionError(f"Config file {path} is not valid YAML{at} ({problem}); fix that line.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RepFusionError(f"Config file {path} cannot be read ({e.__class__.__name__}); check the path.") from None


def check_input_is_data(argv: list[str]) -> None:
    """Refuse config files and flag values that name a class (class_path/init_args), before any parsing."""
    for i, arg in enumerate(argv):
        option = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if option and any(key in option.split(".") for key in CLASS_KEYS):
            raise _refuse_class(option, "The command line")
        config_file = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None
        if option == "config" and "=" in arg:
            config_file = arg.split("=", 1)[1]
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise RepFusionError(f"Config file {config_file} does not exist; give the path of a YAML file.")
            found = _class_key(read_yaml_config(path), "")
            if found:
                raise _refuse_class(found, f"Config file {path}")
            continue
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if any(key in value for key in CLASS_KEYS):
            try:
                data = yaml.safe_load(value)
            except yaml.YAMLError:
                continue
            name = argv[i - 1][2:] if i and argv[i - 1].startswith("--") else arg[2:].split("=")[0]
            found = _class_key(data, name)
            if found:
                raise _refuse_class(found, "The command line")


def config_parser(prog: str, schema: type, description: str, run_dir: bool = True,
                  resume: bool = True) -> ArgumentParser:
    """Every verb's parser (`cli.VERBS`); run_dir / resume: whether it takes --run-dir and --resume."""
    _deny_imports()
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file; later flags override it.")
    parser.add_class_arguments(schema, None, fail_untyped=True)
    if run_dir:
        parser.add_argument("--run-dir", type=str, default=None, help="Output folder of the run.")
    if resume:
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
    key = re.search(r'Parser key "([^"]+)"', message)
    denied = re.search(r"Importing '([^']+)' is not allowed", message)
    if denied:
        where = f"Config key '{key.group(1)}'" if key else "The config"
        return (f"{where} names '{denied.group(1)}' to import; a config is data, so repfusion never imports or "
                "instantiates what it names: give plain values.")
    if key:
        given = re.search(r"Given value: (.*)", message)
        shown = f" '{given.group(1).strip()}'" if given else ""
        return f"Config key '{key.group(1)}' got the invalid value{shown}; check its type in the config reference."
    return first + ("" if first.endswith(".") else ".")


@dataclass
class ParsedRun:
    config: Any
    namespace: Namespace
    run_dir: Path | None
    resume: bool


def parse_config(parser: ArgumentParser, schema: type[T], argv: list[str]) -> ParsedRun:
    """Parse flags (and --config files) into an instance of `schema`, plus --run-dir and --resume.

    Nothing is imported or instantiated from the input: the schema's own dataclasses are the only classes built.
    Building them checks the values a type cannot express (ranges, Lightning's choices): each section's and the
    schema's own `__post_init__` raise a one-sentence RepFusionError (`repfusion.section`), which jsonargparse
    passes through and which is re-raised here as it is, before anything is built or written.
    """
    check_input_is_data(argv)
    _deny_imports()
    try:
        namespace = parser.parse_args(argv)
        built = parser.instantiate(namespace)
    except RepFusionError:
        raise
    except Exception as e:
        raise RepFusionError(_explain(parser, str(e))) from None
    config = schema(**{f.name: built[f.name] for f in fields(schema)})
    found = _class_key(_as_data(config), "")
    if found:  # a free-form field given `class_path` as a plain key: still refused, never passed on
        raise _refuse_class(found, "The config")
    run_dir = Path(built["run_dir"]) if built.get("run_dir") else None
    return ParsedRun(config, namespace, run_dir, bool(built.get("resume")))


def save_resolved(parser: ArgumentParser, namespace: Namespace, path: Path) -> None:
    """The full config of a run, defaults included, written beside its checkpoints."""
    write_text(path, resolved_yaml(parser, namespace))



def _as_data(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _as_data(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {k: _as_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_as_data(v) for v in obj]
    return obj


# What a resumed run may change: how and where it runs, how long, how much it reports; not what it trains.
RESUME_MAY_CHANGE = ("trainer.max_epochs", "trainer.max_steps", "trainer.progress", "trainer.devices",
                     "trainer.num_nodes", "trainer.strategy", "trainer.accelerator", "trainer.log_every_n_steps",
                     "trainer.checkpoint_every_n_steps", "trainer.logger", "data.num_workers", "data.root")

# null on either side: the run itself names the value and checks it against the settings it saved (pretrain's menu,
# `pipeline.run.with_menu`), so a run saved as [plain] before null became the default still resumes
RESOLVED_BY_THE_RUN = ("finetune.protocols",)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data and not prefix.endswith(("extra", "options")):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: data}


def resolved_yaml(parser: ArgumentParser, namespace: Namespace) -> str:
    clean = namespace.clone()
    for key in ("config", "resume", "run_dir"):
        if key in clean:
            del clean[key]
    return parser.dump(clean, skip_none=False, skip_check=True)


def check_resume_config(parser: ArgumentParser, namespace: Namespace, run_dir: Path) -> None:
    """A resume must train what the run trained: any other change than RESUME_MAY_CHANGE is refused."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = _flatten(yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return  # the checkpoint check still guards the model's shape
    now = _flatten(yaml.safe_load(resolved_yaml(parser, namespace)) or {})
    for key in sorted(set(saved) & set(now)):
        if key in RESOLVED_BY_THE_RUN and None in (saved[key], now[key]):
            continue
        if key not in RESUME_MAY_CHANGE and saved[key] != now[key]:
            raise RepFusionError(
                f"--resume would continue the run in {run_dir} with {key} {now[key]!r}, but it was started with "
                f"{saved[key]!r}; drop that change (the run's config is {saved_path}) or start a new --run-dir."
            )

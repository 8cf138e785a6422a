"""One command-line dialect for every verb: a setting is spelled as its dotted config key, with one meaning
and one token in every verb (`--data.image_size 32`, `--data.mean [0.4,0.5,0.6]`, `--teacher.layer [a,b]`,
`--student.arch resnet18`, `--run-dir D`, `--trainer.progress false`).

Older spellings are rewritten to it before parsing, by one table (`ALIASES`), each with a note on stderr
saying the new spelling. Two forms are the dialect itself, rewritten silently:
- `--teacher X` / `--student X` (and export's positional RUN) are `--teacher.source X` / `--student.source X`
  in a verb whose section has a `source` key; the other way round, `--teacher.source X` is `--teacher X` in the
  `teacher` verb, whose `teacher` key is the source itself (a preset, folder or hub id, read as every verb
  reads a teacher's source), so both spellings mean the teacher to use in every verb;
- a boolean key given bare (`--quick`, `--head`) is `true`, and a list key given one plain value
  (`--probe.timesteps 0`) is that one-item list.
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass


@dataclass(frozen=True)
class Alias:
    """`old` is now spelled `new` (one flag, or a flag and its value: `--trainer.progress false`) in `verbs`
    (empty: every verb that has the new key). A flag whose meaning differed between verbs has one row per
    meaning, each naming its verbs."""

    old: str
    new: str
    verbs: tuple[str, ...] = ()


ALIASES: tuple[Alias, ...] = (
    Alias("--image-size", "--data.image_size"),
    Alias("--root", "--data.root"),
    Alias("--data", "--data.source", ("probe",)),
    Alias("--split-seed", "--data.split_seed"),
    Alias("--mean", "--data.mean"),
    Alias("--std", "--data.std"),
    Alias("--label-fraction", "--data.label_fraction"),
    Alias("--arch", "--student.arch"),
    Alias("--width", "--student.width"),
    Alias("--student", "--student.arch", ("layers",)),  # an architecture there; a trained run elsewhere
    Alias("--class-label", "--teacher.class_label"),
    Alias("--adm-flags", "--teacher.adm_flags"),
    Alias("--uncond-embedding", "--teacher.uncond_embedding"),
    Alias("--layer", "--teacher.layer", ("probe",)),  # --student.layer when a student is probed
    Alias("--timesteps", "--probe.timesteps", ("probe",)),  # the timestep policy's section in distill
    Alias("--modes", "--probe.modes", ("probe",)),
    Alias("--k", "--probe.k", ("probe",)),
    Alias("--out", "--run-dir", ("probe", "layers", "demo", "embed")),
    Alias("--out", "--path", ("export",)),  # a file (or timm folder) there, not a run folder
    Alias("--no-progress", "--trainer.progress false"),
)

SOURCE_SECTIONS = ("teacher", "student")


def key_types(schema: type, prefix: str = "") -> dict[str, object]:
    """Every dotted key of a schema dataclass with its type hint (sections walked, not listed)."""
    hints = typing.get_type_hints(schema)
    found: dict[str, object] = {}
    for f in fields(schema):
        hint = hints[f.name]
        if isinstance(hint, type) and is_dataclass(hint):
            found |= key_types(hint, f"{prefix}{f.name}.")
        else:
            found[f"{prefix}{f.name}"] = hint
    return found


def _members(hint: object) -> tuple[object, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def is_bool(hint: object) -> bool:
    return bool in _members(hint)


def is_list(hint: object) -> bool:
    """A list or tuple key; `str | list[str]` too (several tokens are its list form)."""
    return any(typing.get_origin(m) in (list, tuple) for m in _members(hint))


def only_list(hint: object) -> bool:
    """A key that takes a list and nothing else, so one plain value is its one-item list."""
    kinds = [m for m in _members(hint) if m is not type(None)]
    return bool(kinds) and all(typing.get_origin(m) in (list, tuple) for m in kinds)


def _is_flag(token: str) -> bool:
    return token.startswith("--") and " " not in token  # guided-diffusion's "--image_size 64 ..." is a value


def _note(old: str, new: str) -> None:
    print(f"note: {old} is now spelled {new}; the old spelling still works for now.", file=sys.stderr)


def alias_for(verb: str, flag: str, keys: dict[str, object], argv: list[str]) -> str | None:
    """The new spelling of an old `flag` in `verb`, or None when it is not an old spelling there."""
    for alias in ALIASES:
        if alias.old != flag or (alias.verbs and verb not in alias.verbs):
            continue
        new = alias.new
        if flag == "--layer" and any(a in ("--student", "--student.source") or a.startswith("--student.source=")
                                     for a in argv):
            new = "--student.layer"
        name = new.split()[0]
        if name.lstrip("-").replace("-", "_") in keys or name == "--run-dir" or alias.verbs:
            return new
    return None


def _values(argv: list[str], start: int) -> Iterator[str]:
    for token in argv[start:]:
        if _is_flag(token):
            return
        yield token


def rewrite(verb: str, argv: list[str], keys: dict[str, object], positional: str | None = None,
            note: Callable[[str, str], None] = _note) -> list[str]:
    """`argv` in the dialect: old spellings renamed (with a note), several values of a list key joined into
    its one YAML token (with a note), and the silent forms (see the module docstring) spelled out.

    keys: the verb's dotted keys and their types (`key_types`); positional: the key a leading plain value
    is (export's RUN is `--student.source`).
    """
    out: list[str] = []
    i = 0
    if positional and argv and not argv[0].startswith("-"):
        out += [positional, argv[0]]
        i = 1
    while i < len(argv):
        token = argv[i]
        i += 1
        if not _is_flag(token) or token in ("--config", "--print_config", "--help", "--resume", "--run-dir"):
            out.append(token)
            continue
        flag, eq, inline = token.partition("=")
        spelled = flag
        new = alias_for(verb, flag, keys, argv)
        if new is not None:
            spelled, *fixed = new.split()
            if fixed:  # --no-progress: the flag and its value
                note(flag, new)
                out += [spelled, *fixed]
                continue
        elif flag[2:] in SOURCE_SECTIONS and f"{flag[2:]}.source" in keys:
            spelled = f"{flag}.source"
        elif flag.endswith(".source") and flag[2:-7] in SOURCE_SECTIONS and flag[2:-7] in keys:
            spelled = flag[:-7]  # the teacher verb: its `teacher` key is the source (see the module docstring)
        hint = keys.get(spelled[2:])
        if eq:
            if new is not None:
                note(flag, spelled)
            out.append(f"{spelled}={inline}")
            continue
        values = list(_values(argv, i))
        if hint is not None and is_list(hint) and len(values) > 1:
            joined = "[" + ",".join(values) + "]"
            note(f"{flag} {' '.join(values)}", f"{spelled} {joined}")
            out += [spelled, joined]
            i += len(values)
            continue
        if new is not None:
            note(flag, spelled)
        if hint is not None and len(values) > 1:  # not a list key: the extra values would be read as stray words
            from .errors import RepFusionError

            raise RepFusionError(f"{spelled} takes one value, not {len(values)} ({' '.join(values)}); give one.")
        if hint is not None and is_bool(hint) and not values:
            out += [spelled, "true"]
            continue
        if hint is not None and only_list(hint) and len(values) == 1 and not values[0].lstrip().startswith("["):
            out += [spelled, f"[{values[0]}]"]
            i += 1
            continue
        out.append(spelled)
    return out


def show_shorthands(parser, keys: dict[str, object]) -> None:
    """`--teacher X` / `--student X` in --help as what they are here, the section's source (jsonargparse would
    list them as the section's config file, which `rewrite` never lets them be), or in the teacher verb the plain
    key that `--teacher.source` also spells."""
    for action in parser._actions:
        name = action.option_strings[0][2:] if action.option_strings else ""
        if name in SOURCE_SECTIONS and f"{name}.source" in keys:
            action.metavar = "SOURCE"
            action.help = f"The same as --{name}.source."
        elif name in SOURCE_SECTIONS and name in keys:  # the teacher verb's plain `teacher` key
            action.metavar = "SOURCE"
            action.help = f"The {name} to use (--{name}.source X is the same here)."

"""One command-line dialect for every verb: a setting is spelled as the training verbs' dotted config key
(`--data.image_size`, `--data.root`, `--student.width`, `--run-dir`, `--trainer.progress false`).

The argparse verbs (probe, layers, demo) had their own spellings (`--image-size`, `--root`, `--out`,
`--no-progress`); those still work, hidden from `--help`, and say once on stderr what the new spelling is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml

TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def boolean(text: str) -> bool:
    """`--trainer.progress false` as the training verbs read it (jsonargparse's true/false)."""
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not '{text}'")


def three_floats(values: Sequence[str] | None, key: str) -> list[float] | None:
    """Per-channel values given as `0.5 0.5 0.5` (the old spelling) or `[0.5,0.5,0.5]` (the config's)."""
    if values is None:
        return None
    text = " ".join(values).strip()
    parsed: Any = yaml.safe_load(text if text.startswith("[") else "[" + ",".join(text.replace(",", " ").split()) + "]")
    if not isinstance(parsed, list) or len(parsed) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in parsed):
        from .errors import RepFusionError

        raise RepFusionError(f"{key} takes three numbers, one per RGB channel (e.g. [0.5,0.5,0.5]), not '{text}'.")
    return [float(v) for v in parsed]


class OldSpelling(argparse.Action):
    """A hidden alias of `new`: stores what `new` would (its value, or `const` for a flag without one) and notes
    the new spelling once."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"note: {option_string} is now spelled {self.new}; the old spelling still works for now.",
              file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_flag(parser: argparse.ArgumentParser | Any, new: str, *old: str, **kwargs: Any) -> argparse.Action:
    """`new` (shown in --help) plus each `old` spelling: same dest, type, nargs and choices, hidden."""
    if kwargs.get("nargs") != 0 and "choices" not in kwargs:  # --data.image_size IMAGE_SIZE, --run-dir RUN_DIR
        kwargs.setdefault("metavar", new.lstrip("-").split(".")[-1].replace("-", "_").upper())
    action = parser.add_argument(new, **kwargs)
    for name in old:
        add_old(parser, name, action.dest, new, type=action.type, nargs=action.nargs, choices=action.choices)
    return action


def add_old(parser: argparse.ArgumentParser | Any, name: str, dest: str, new: str, **kwargs: Any) -> None:
    """A hidden old spelling; `nargs=0, const=...` for one that took no value (`--no-progress`)."""
    parser.add_argument(name, dest=dest, action=OldSpelling, new=new, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)

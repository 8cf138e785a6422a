"""User-facing errors: one sentence that says what is wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RepFusionError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits non-zero."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The valid names nearest to a mistyped one, for 'did you mean' messages."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if not matches:  # fall back on names that share the typed prefix or suffix
        tail = name.split(".")[-1]
        matches = [c for c in candidates if c.endswith(tail) or c.startswith(name.split(".")[0])][:n]
    return matches


def unknown_name_error(kind: str, name: str, candidates: Iterable[str], hint: str = "") -> RepFusionError:
    """Build the 'unknown X' error naming the closest valid names."""
    near = closest(name, candidates)
    candidates = sorted(candidates)
    if near:
        suggestion = f"; closest valid names: {', '.join(near)}"
    elif len(candidates) <= 12:
        suggestion = f"; valid names: {', '.join(candidates)}"
    else:
        suggestion = ""
    return RepFusionError(f"Unknown {kind} '{name}'{suggestion}{hint}.")

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


def torch_load_reason(error: BaseException) -> str:
    """What a refused `torch.load(weights_only=True)` found, without torch's advice to retry with
    `weights_only=False` (which would run the file's code): e.g. 'unsupported GLOBAL posix.system ...'."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    advice = ("weights only load failed", "in pytorch 2.6", "re-running", "weights_only", "check the documentation",
              "please file an issue", "do it only if", "you can use", "or use `torch.serialization")
    kept = [line for line in lines if not any(a in line.lower() for a in advice)]
    if not kept:  # every line was advice: keep only torch's own first sentence, which names no remedy
        return type(error).__name__
    reason = kept[0].removeprefix("WeightsUnpickler error:").strip() or (kept[1] if len(kept) > 1 else "")
    return reason.rstrip(".") or type(error).__name__

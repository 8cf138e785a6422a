"""The optional timm / torchvision extras when they are installed but cannot load.

Why here, and why at the command's dispatch: torchvision is imported by far more than repfusion's own
`timm:` / `torchvision:` students. Lightning imports torchmetrics, and torchmetrics imports torchvision
whenever its metadata says it is installed (`RequirementCache`, no import check), so a torchvision built for
another torch (`operator torchvision::nms does not exist`, an undefined symbol in its C++ ops) breaks the
first `import lightning` of every training verb, from whichever repfusion module reaches it first. The
verbs that do not train (`layers`, `export`, `embed`) and the built-in students never import it.
`vision_guard` turns such a failure into one sentence that names the package, its version, the torch it
met and the fix; any other error passes through untouched. This module imports no torch itself.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from .errors import RepFusionError

LIBRARIES = ("torchvision", "timm")
TORCH_INDEX = "https://download.pytorch.org/whl/{label}"


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def matching_torchvision(torch_version: str | None) -> str | None:
    """The torchvision series built for a torch release: torch 2.N <-> torchvision 0.(N+15) (2.13 <-> 0.28)."""
    try:
        major, minor = (int(part) for part in str(torch_version).split("+")[0].split(".")[:2])
    except ValueError:
        return None
    return f"0.{minor + 15}.*" if major == 2 else None


def torchvision_install_line(torch_version: str | None) -> str:
    """`pip install torchvision==0.28.*`, from PyTorch's index of the same build (CPU, cu128) as the torch."""
    match = matching_torchvision(torch_version) or "<the release for your torch>"
    label = str(torch_version).partition("+")[2]
    where = f" --index-url {TORCH_INDEX.format(label=label)}" if label else ""
    return f"pip install 'torchvision=={match}'{where}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def broken_library_error(library: str, error: BaseException) -> RepFusionError:
    """One sentence for an installed `library` (timm or torchvision) whose import raised `error`."""
    torch_version = installed_version("torch") or "unknown"
    version = installed_version(library) or "(version unknown)"
    if library == "torchvision":
        return RepFusionError(
            f"torchvision {version} is installed but cannot be loaded with torch {torch_version} "
            f"({_first_line(error)}); every training verb needs it to load (Lightning's torchmetrics imports it "
            f"whenever it is installed), as do timm: and torchvision: students: "
            f"{torchvision_install_line(torch_version)} (the build for this torch), or pip uninstall torchvision "
            "(only those students need it).")
    return RepFusionError(
        f"{library} {version} is installed but cannot be loaded with torch {torch_version} ({_first_line(error)}); "
        f"pip install 'repfusion[{library}]' after the torch you use keeps the versions matched, or pip uninstall "
        f"{library}.")


def _frames_in(error: BaseException) -> Iterator[str]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # the chain too: an import re-raised from another
        seen.add(id(current))
        for frame, _ in traceback.walk_tb(current.__traceback__):
            yield frame.f_code.co_filename
        current = current.__cause__ or current.__context__


def broken_library(error: BaseException) -> str | None:
    """The extra (torchvision or timm) whose failed import raised `error`, or None.

    Two facts, both needed: a frame of the error lies in that package's folder, and the package is not in
    `sys.modules` (a failed import removes it; an error raised by a loaded torchvision model, e.g. a shape
    mismatch in its forward, leaves it there and is not this problem). torchvision first: timm imports it.
    """
    if isinstance(error, ModuleNotFoundError) and error.name in LIBRARIES:
        return None  # not installed at all: the caller's own "pip install" sentence
    folders = {Path(name).parts[:-1] for name in _frames_in(error)}
    for library in LIBRARIES:
        loaded = sys.modules.get(library) is not None
        if not loaded and any(library in parts for parts in folders):
            return library
    return None


@contextlib.contextmanager
def vision_guard() -> Iterator[None]:
    """Run a verb; a broken timm / torchvision import becomes `broken_library_error`, anything else passes."""
    try:
        yield
    except (ImportError, RuntimeError, OSError) as e:
        library = broken_library(e)
        if library is None:
            raise
        raise broken_library_error(library, e) from None

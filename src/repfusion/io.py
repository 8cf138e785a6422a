"""Atomic file output: a kill at any moment leaves either the old file or the new one, never half.

Temporary files and staging folders live beside their target (so the final rename is atomic) and are
given the permissions a plain `open`/`mkdir` would give (0666/0777 less the umask), not mkstemp's 0600.
Every name the tool makes for them starts with `OWN_PREFIX` (`.~repfusion-`), so `tidy_run_dir`, which
removes what a killed process left behind and finishes an interrupted folder swap, removes only those and
never a file of the user's (a `.draft.tmp`, a `.model.backup/` folder).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import RepFusionError, torch_load_reason


OWN_PREFIX = ".~repfusion-"  # every temporary name the tool makes starts with it; nothing else is ever tidied
TMP_SUFFIX = ".tmp"  # temporary files: OWN_PREFIX + target name + "." + random + TMP_SUFFIX
STAGING_SUFFIX = ".staging"  # staging folders of exports: OWN_PREFIX + name + "." + random + STAGING_SUFFIX
OLD_SUFFIX = ".old"  # the previous export during a two-rename swap: OWN_PREFIX + name + OLD_SUFFIX


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_mode(path: str | os.PathLike, directory: bool = False) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` then rename onto `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{OWN_PREFIX}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        _normal_mode(tmp)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a full disk names no file: say which write failed
            e.filename = str(path)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a power cut after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise RepFusionError(f"Weights file {path} does not exist; point to a file written by repfusion.") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise RepFusionError(f"Weights file {path} is not a valid safetensors file ({e}); re-export it.") from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a Lightning/torch checkpoint with `weights_only=True`: pickled code is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise RepFusionError(f"Checkpoint {path} does not exist; give the path of a .ckpt file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = torch_load_reason(e)  # never torch's advice to retry with weights_only=False
        raise RepFusionError(
            f"Checkpoint {path} cannot be loaded safely with weights_only=True ({reason}); "
            "it may contain pickled code, which repfusion refuses to run: re-save it as plain tensors."
        ) from None


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _backup_name(final_dir: Path) -> Path:
    return final_dir.with_name(f"{OWN_PREFIX}{final_dir.name}{OLD_SUFFIX}")


def replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Move a fully written folder into place so that `final_dir` always names a complete folder.

    Over an existing folder the two are exchanged in one atomic step where the system allows it (Linux);
    elsewhere the old folder is first renamed to `.~repfusion-NAME.old`, which `tidy_run_dir` renames back if a kill
    falls between the two renames. The old content is removed last.
    """
    final_dir, tmp_dir = Path(final_dir), Path(tmp_dir)
    for path in [tmp_dir, *tmp_dir.rglob("*")]:  # writers such as safetensors create owner-only files
        if not path.is_symlink():
            _normal_mode(path, directory=path.is_dir())
    backup = _backup_name(final_dir)
    if backup.exists() and final_dir.exists():
        shutil.rmtree(backup)
    if final_dir.exists() and _exchange(tmp_dir, final_dir):
        shutil.rmtree(tmp_dir)  # now holds the old folder
        _fsync_dir(final_dir.parent)
        return final_dir
    if final_dir.exists():
        os.replace(final_dir, backup)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if backup.exists():
        shutil.rmtree(backup)
    return final_dir


def staging_dir(final_dir: str | os.PathLike) -> Path:
    """A fresh temporary folder beside `final_dir`, for `replace_dir` once everything is written."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{OWN_PREFIX}{final_dir.name}.", suffix=STAGING_SUFFIX,
                                dir=final_dir.parent))
    _normal_mode(tmp, directory=True)
    return tmp


def tidy_run_dir(run_dir: str | os.PathLike) -> list[Path]:
    """Undo what a killed process left in a run folder: finish an interrupted folder swap, remove staging
    folders of unfinished exports and temporary files of unfinished writes. Returns what was removed.

    Only names the tool makes are touched (`OWN_PREFIX` + target + the suffix of their kind), in the run
    folder and its checkpoints/; anything else, hidden or not, is the user's and stays."""
    run_dir = Path(run_dir)
    removed: list[Path] = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            name = entry.name
            if not name.startswith(OWN_PREFIX) or entry.is_symlink():
                continue
            if name.endswith(OLD_SUFFIX) and entry.is_dir():
                final = folder / name[len(OWN_PREFIX):-len(OLD_SUFFIX)]
                if not final.exists():
                    os.replace(entry, final)  # killed between the two renames: the old export is still whole
                    continue
                shutil.rmtree(entry, ignore_errors=True)  # killed after the swap, before the old one was removed
            elif name.endswith(STAGING_SUFFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            elif name.endswith(TMP_SUFFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
            else:
                continue
            removed.append(entry)
    return removed


def check_writable_dir(folder: str | os.PathLike, what: str = "--run-dir") -> None:
    """Refuse, in one sentence, an output folder that is a file or cannot be written (checked by writing)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RepFusionError(f"{what} {folder} is a file, not a folder; give a folder path (it is created if missing).")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RepFusionError(f"{what} {folder} cannot be created because {probe} is a file; give another path.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{OWN_PREFIX}write-check.", suffix=TMP_SUFFIX, dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RepFusionError(f"{what} {folder} is not writable ({e.strerror or e} in {probe}); "
                             "choose a folder you can write to.") from None

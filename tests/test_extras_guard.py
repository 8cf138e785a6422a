"""Issue 25, item 3: the timm / torchvision extras keep the installed torch, and a torchvision that cannot load
(built for another torch) gives one sentence instead of Lightning's traceback, the built-in students still
working. torchvision is not installable here, so a broken one is a package folder on PYTHONPATH whose import
raises what a mismatched build raises, with the dist-info that makes torchmetrics import it; the checks run in
a subprocess so this process's imports stay clean."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from repfusion.errors import RepFusionError
from repfusion.extras import broken_library, matching_torchvision, torchvision_install_line, vision_guard
from repfusion.students import external

ROOT = Path(__file__).resolve().parents[1]
specifiers = pytest.importorskip("packaging.specifiers")
requirements = pytest.importorskip("packaging.requirements")


def makefile_torch() -> str:
    found = re.search(r"torch==([0-9.]+)", (ROOT / "Makefile").read_text())
    assert found, "the Makefile installs a pinned torch first"
    return found.group(1)


def test_extras_pin_the_torchvision_of_the_torch_the_makefile_installs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    series = matching_torchvision(makefile_torch())  # torch 2.13.0 -> 0.28.*
    assert series == "0.28.*"
    for extra in ("timm", "torchvision"):  # timm imports torchvision: unpinned, it would pull a newer one
        reqs = {r.name: r.specifier for r in map(requirements.Requirement, extras[extra])}
        assert "torch" not in reqs, f"the {extra} extra must not ask for another torch"
        pin = reqs["torchvision"]
        assert pin.contains("0.28.0") and pin.contains("0.28.3"), (extra, pin)
        assert not pin.contains("0.29.0") and not pin.contains("0.27.1"), (extra, pin)  # 0.29 is torch 2.14's
    timm = {r.name: r.specifier for r in map(requirements.Requirement, extras["timm"])}["timm"]
    assert timm.contains("1.0.20") and not timm.contains("2.0.0")


def test_install_line_takes_torchvision_from_the_index_of_the_same_torch_build():
    assert matching_torchvision("2.13.0+cpu") == "0.28.*" and matching_torchvision("2.4.1") == "0.19.*"
    assert torchvision_install_line("2.13.0+cpu") == ("pip install 'torchvision==0.28.*' --index-url "
                                                      "https://download.pytorch.org/whl/cpu")
    assert torchvision_install_line("2.13.0+cu128").endswith("/whl/cu128")
    assert torchvision_install_line("2.13.0") == "pip install 'torchvision==0.28.*'"  # PyPI's torch: PyPI's


def raiser(filename: str, error: BaseException):
    """A function whose frame lies in `filename`, raising `error`: an import failing inside that package."""
    namespace = {"error": error}
    exec(compile("def boom(*args, **kwargs):\n    raise error\n", filename, "exec"), namespace)
    return namespace["boom"]


def test_guard_converts_only_a_failed_torchvision_import(monkeypatch, tmp_path):
    inside = str(tmp_path / "site-packages" / "torchvision" / "__init__.py")
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    with pytest.raises(RepFusionError, match=r"^torchvision .* cannot be loaded with torch .*\(operator "
                                             r"torchvision::nms does not exist\).*pip uninstall torchvision"):
        with vision_guard():
            raiser(inside, RuntimeError("operator torchvision::nms does not exist"))()
    with pytest.raises(RepFusionError, match=r"undefined symbol"):  # its C++ ops built for another torch
        with vision_guard():
            raiser(str(tmp_path / "torchvision" / "extension.py"), OSError("libtorchvision.so: undefined symbol"))()
    with pytest.raises(RuntimeError, match="boom"):  # anything else passes through untouched
        with vision_guard():
            raise RuntimeError("boom")
    monkeypatch.setitem(sys.modules, "torchvision", object())  # loaded: an error in its model code is not this
    error = RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with vision_guard():
            raiser(str(tmp_path / "torchvision" / "models" / "resnet.py"), error)()
    assert broken_library(ModuleNotFoundError("No module named 'torchvision'", name="torchvision")) is None


def test_a_student_library_that_cannot_load_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    in_torchvision = raiser(str(tmp_path / "torchvision" / "extension.py"), OSError("libtorchvision.so: undefined "
                                                                                   "symbol: _ZN3c10"))
    monkeypatch.setattr(external.importlib, "import_module", in_torchvision)  # timm's import reaching torchvision
    with pytest.raises(RepFusionError, match=r"^torchvision .*undefined symbol.*pip install 'torchvision==0\.28"):
        external.import_library("timm", "timm:convnext_tiny")
    monkeypatch.setattr(external.importlib, "import_module",
                        raiser(str(tmp_path / "timm" / "layers" / "x.py"), ImportError("cannot import name 'y'")))
    with pytest.raises(RepFusionError, match=r"^timm .* cannot be loaded with torch .*cannot import name 'y'"):
        external.import_library("timm", "timm:convnext_tiny")



CHECKS = textwrap.dedent("""
    import contextlib, io, json, sys
    import torch
    from repfusion.cli import main
    from repfusion.errors import RepFusionError
    from repfusion.students import build_student

    out = {}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out["distill"] = main(["distill", "--run-dir", sys.argv[1], "--student.arch", "resnet18",
                               "--trainer.max_epochs", "1"])
    out["distill_err"] = err.getvalue()
    student = build_student("resnet18", 0.25).eval()  # the built-in students never import torchvision
    with torch.no_grad():
        out["features"] = list(student(torch.zeros(1, 3, 32, 32)).shape)
    try:
        build_student("torchvision:resnet18")
    except RepFusionError as e:
        out["external"] = str(e)
    with contextlib.redirect_stdout(io.StringIO()):
        out["layers"] = main(["layers", "--student", "resnet18_cifar"])
    print(json.dumps(out))
""")


def test_a_broken_torchvision_stops_every_training_verb_with_one_sentence(tmp_path):
    fake = tmp_path / "site"
    (fake / "torchvision").mkdir(parents=True)
    (fake / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    info = fake / "torchvision-0.29.0.dist-info"  # what makes torchmetrics (via Lightning) import it
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.29.0\n")
    (info / "top_level.txt").write_text("torchvision\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", CHECKS, str(run_dir)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    err = out["distill_err"].strip()
    torch_version = importlib.metadata.version("torch")
    assert out["distill"] == 1 and err.count("\n") == 0, err  # one line, not Lightning's 48
    assert err.startswith(f"error: torchvision 0.29.0 is installed but cannot be loaded with torch {torch_version}")
    assert "pip install 'torchvision==0.28.*'" in err and "pip uninstall torchvision" in err
    assert "nms does not exist" in err
    assert not run_dir.exists()  # refused before anything was written
    assert out["features"] == [1, 128] and out["layers"] == 0
    assert out["external"].startswith("torchvision 0.29.0 is installed but cannot be loaded")

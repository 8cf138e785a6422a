"""`repfusion export RUN --format onnx|torchvision|safetensors [--out FILE]`: a run's backbone for other tools.

onnx: the backbone as a graph from normalised images (`images`, B x 3 x S x S, batch dynamic) to pooled
features (`features`, B x C), with `torch.onnx.export` (which needs the optional `onnx` and `onnxscript`
packages: `pip install repfusion[onnx]`); the pixel mean/std it expects go into the file's metadata.
torchvision / safetensors: the backbone's state dict under torchvision's key names (`torchvision_keys`),
for a run exported before distill and finetune wrote it themselves; refused, in one sentence, where the
architecture does not match torchvision's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import RepFusionError
from .run_backbone import PooledBackbone, RunBackbone, load_run_backbone

FORMATS = ("onnx", "torchvision", "safetensors")
ONNX_PACKAGES = ("onnx", "onnxscript")


def check_onnx_available() -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise RepFusionError(f"ONNX export needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
                             "pip install repfusion[onnx] (or pip install onnx onnxscript).")


def export_onnx(run: RunBackbone, out: Path, image_size: int, opset: int | None = None) -> Path:
    """Write the pooled backbone to `out` (atomically) and check the file with onnx's checker."""
    import onnx
    import torch

    from .io import atomic_write

    model = PooledBackbone(run.backbone).eval()
    channels = int(getattr(run.backbone.config, "in_channels", 3))
    example = torch.zeros(2, channels, image_size, image_size)

    def write(tmp: str) -> None:
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["features"],
                                    dynamic_shapes={"images": {0: batch}}, opset_version=opset, dynamo=True,
                                    verbose=False)
        proto = program.model_proto
        for key, value in (("repfusion_arch", run.backbone.config.arch), ("repfusion_width", run.backbone.config.width),
                           ("image_size", image_size), ("mean", list(run.mean)), ("std", list(run.std)),
                           ("input", "images normalised as (pixel / 255 - mean) / std")):
            proto.metadata_props.add(key=key, value=str(value))
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    with torch.no_grad(), quiet_exporter():
        return atomic_write(out, write)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """torch.onnx's exporter warns about every torchvision op it skips (torchvision is optional) and pytree
    deprecations; none concern a user exporting a backbone."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_torchvision(run: RunBackbone, out: Path | None) -> Path:
    from .torchvision_keys import keyed_layout, write_torchvision_weights

    library, _, reason = keyed_layout(run.backbone)
    if library is None:
        raise RepFusionError(f"No torchvision-keyed export for {run.folder}: {reason}.")
    fact = write_torchvision_weights(run.network, out if out is not None else run.folder)
    return (out if out is not None else run.folder / str(fact["file"]))


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="repfusion export", description="Export a distill or finetune run's "
                                     "backbone: ONNX (pooled features), or its weights under torchvision's key names.")
    parser.add_argument("run", help="Distill run folder (or its student/), finetune run folder (or its model/).")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx | torchvision | safetensors "
                        "(torchvision and safetensors: the same torchvision-keyed .safetensors file).")
    parser.add_argument("--out", default=None, help="Output file (default: in the run's student/ or model/ "
                        "folder: backbone.onnx, torchvision_ARCH.safetensors).")
    parser.add_argument("--data.image_size", dest="image_size", type=int, default=None,
                        help="ONNX input size (default: the size the run was trained at).")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch.onnx's).")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise RepFusionError(f"--out {out} is a folder; give a file path (e.g. {out / 'backbone.onnx'}).")
    if args.format == "onnx":
        check_onnx_available()  # before loading anything: the missing package is the whole answer
    run_ = load_run_backbone(args.run)
    if args.format != "onnx":
        if out is not None and out.suffix != ".safetensors":
            raise RepFusionError(f"--out {out} must end in .safetensors for --format {args.format}.")
        print(f"Wrote {export_torchvision(run_, out)} (the library's key names, classifier left out)")
        return
    size = args.image_size or run_.image_size
    if size is None or size < 1:
        raise RepFusionError(f"The run in {run_.folder} does not record its image size; give --data.image_size.")
    path = export_onnx(run_, out or run_.folder / "backbone.onnx", size, args.opset)
    print(f"Wrote {path}: images [B, {getattr(run_.backbone.config, 'in_channels', 3)}, {size}, {size}] normalised "
          f"with mean {list(run_.mean)}, std {list(run_.std)} -> features [B, {run_.backbone.feature_channels}]",
          file=sys.stdout)

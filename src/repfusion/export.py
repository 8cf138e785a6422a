"""`repfusion export RUN --format onnx|torchvision|safetensors|timm [--head] [--path PATH]`: a run's network for
other tools.

onnx: the backbone as a graph from normalised images (`images`, B x 3 x S x S, batch dynamic) to pooled
features (`features`, B x C), or with `--head` the fine-tuned classifier to its class logits (`logits`,
B x K), with `torch.onnx.export` (which needs the optional `onnx` and `onnxscript` packages: `pip install
repfusion[onnx]`); the pixel mean/std it expects go into the file's metadata.
torchvision / safetensors: the backbone's state dict under torchvision's key names (`torchvision_keys`),
for a run exported before distill and finetune wrote it themselves; refused, in one sentence, where the
architecture does not match torchvision's.
timm: the timm/Hub-style folder (`model.safetensors` + `config.json` with `pretrained_cfg`) of what the
export holds, a fine-tuned classifier with its head (`torchvision_keys.write_timm_folder`), for a run
exported before distill and finetune wrote `timm/` themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from torch import nn

from .errors import RepFusionError
from .run_backbone import PooledBackbone, RunBackbone, load_run_backbone
from .verbs import ExportRun

ONNX_PACKAGES = ("onnx", "onnxscript")


def classifier_of(run: RunBackbone) -> nn.Module:
    """The fine-tuned classifier (backbone + `fc` head) a finetune run exported; one sentence otherwise."""
    fc = getattr(run.network, "fc", None)
    if isinstance(fc, nn.Linear):
        return run.network
    if run.network is not run.backbone:
        raise RepFusionError(f"{run.folder} holds a {type(run.network).__name__} (a fine-tuned segmentation or "
                             "landmark network), whose head is not a classifier; export its backbone without --head.")
    raise RepFusionError(f"{run.folder} holds a backbone without a classifier head (a distill export); --head needs "
                         "a finetune run of the classification task (its model/ folder).")


def check_onnx_available() -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise RepFusionError(f"ONNX export needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
                             "pip install repfusion[onnx] (or pip install onnx onnxscript).")


def export_onnx(run: RunBackbone, out: Path, image_size: int, opset: int | None = None, head: bool = False) -> Path:
    """Write the pooled backbone (or, with `head`, the classifier's logits) to `out` (atomically) and check
    the file with onnx's checker."""
    import onnx
    import torch

    from .io import atomic_write

    model = (classifier_of(run) if head else PooledBackbone(run.backbone)).eval()
    output = "logits" if head else "features"
    channels = int(getattr(run.backbone.config, "in_channels", 3))
    example = torch.zeros(2, channels, image_size, image_size)
    extra = [("num_classes", run.network.fc.out_features)] if head else []

    def write(tmp: str) -> None:
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(model, (example,), input_names=["images"], output_names=[output],
                                    dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                                    verbose=False)
        proto = program.model_proto
        for key, value in (("repfusion_arch", run.backbone.config.arch), ("repfusion_width", run.backbone.config.width),
                           ("image_size", image_size), ("mean", list(run.mean)), ("std", list(run.std)),
                           ("input", "images normalised as (pixel / 255 - mean) / std"),
                           ("output", "class logits (before softmax)" if head else "pooled backbone features"),
                           *extra):
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


def export_timm(run: RunBackbone, out: Path | None) -> tuple[Path, dict]:
    from .torchvision_keys import TIMM_FOLDER, write_timm_folder

    folder = out if out is not None else run.folder / TIMM_FOLDER
    if folder.exists() and not folder.is_dir():
        raise RepFusionError(f"--path {folder} is a file; --format timm writes a folder (model.safetensors + "
                             "config.json): give a folder path.")
    return folder, write_timm_folder(run.network, folder, run.image_size, run.mean, run.std)


def config_path(output: Path) -> Path:
    """Where export saves its resolved config: beside what it wrote, named after it (backbone.onnx ->
    backbone.config.yaml, a timm/ folder -> timm.config.yaml), so it never takes the place of the run's own
    config.yaml, which run_backbone and the probes read."""
    return output.parent / f"{output.name if output.is_dir() else output.stem}.config.yaml"


def run_export(cfg: ExportRun, save: Callable[[Path], None]) -> Path:
    """`repfusion export`: check, write the export, then its config beside it; returns what was written."""
    out = Path(cfg.path) if cfg.path else None
    if out is not None and out.is_dir() and cfg.format != "timm":
        raise RepFusionError(f"--path {out} is a folder; give a file path (e.g. {out / 'backbone.onnx'}).")
    if cfg.head and cfg.format in ("torchvision", "safetensors"):
        raise RepFusionError("The torchvision-keyed file is the backbone alone; the classifier with its head is "
                             "--format timm (its folder) or --format onnx --head.")
    if cfg.format == "onnx":
        check_onnx_available()  # before loading anything: the missing package is the whole answer
    run_ = load_run_backbone(cfg.student.source)
    if cfg.head:
        classifier_of(run_)  # refused before anything is written
    if cfg.format == "timm":
        folder, fact = export_timm(run_, out)
        save(config_path(folder))
        how = ("timm builds it: timm.create_model(\"" + str(fact["architecture"]) + "\", checkpoint_path=...)"
               if fact["timm_loadable"] else "repfusion.torchvision_keys.load_timm_folder rebuilds it")
        what = f"{fact['num_classes']} classes" if fact["num_classes"] else "pooled features"
        print(f"Wrote {folder / 'model.safetensors'} and {folder / 'config.json'} (timm's Hub layout, "
              f"architecture {fact['architecture']}, {what}; {how})")
        return folder
    if cfg.format != "onnx":
        if out is not None and out.suffix != ".safetensors":
            raise RepFusionError(f"--path {out} must end in .safetensors for --format {cfg.format}.")
        path = export_torchvision(run_, out)
        save(config_path(path))
        print(f"Wrote {path} (the library's key names, classifier left out)")
        return path
    size = cfg.data.image_size or run_.image_size
    if size is None or size < 1:
        raise RepFusionError(f"The run in {run_.folder} does not record its image size; give --data.image_size.")
    default = run_.folder / ("classifier.onnx" if cfg.head else "backbone.onnx")
    path = export_onnx(run_, out or default, size, cfg.opset, head=cfg.head)
    save(config_path(path))
    result = (f"logits [B, {run_.network.fc.out_features}]" if cfg.head
              else f"features [B, {run_.backbone.feature_channels}]")
    print(f"Wrote {path}: images [B, {getattr(run_.backbone.config, 'in_channels', 3)}, {size}, {size}] normalised "
          f"with mean {list(run_.mean)}, std {list(run_.std)} -> {result}", file=sys.stdout)
    return path

"""Which kind of teacher a source names, and the one entry point that builds any of them.

Kinds: `unet` (a pixel-space diffusers `UNet2DModel`: preset, `save_pretrained` folder, hub id),
`adm` (a guided-diffusion checkpoint file, or an `adm-*` preset with random weights), `latent`
(a diffusers pipeline folder or hub id whose `unet/` is a `UNet2DConditionModel`, with `vae/`) and
`dit` (a pipeline with `transformer/` and `vae/`). Detection reads only the JSON files diffusers writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import RepFusionError
from .adm import ADM_PRESETS
from .diffusion_teacher import DiffusionTeacher
from .presets import TEACHER_PRESETS

KINDS = ("unet", "adm", "latent", "dit")
ADM_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
ADM_RANDOM = {f"adm-{name}": name for name in ADM_PRESETS}  # random-weight stand-ins, like the UNet presets


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise RepFusionError(f"{path} is not readable JSON; restore the file or save the model again.") from None
    return data if isinstance(data, dict) else {}


def kind_from_index(index: dict[str, Any], source: str) -> str:
    """The kind of a diffusers pipeline from its model_index.json."""
    if "transformer" in index:
        return "dit"
    unet = index.get("unet")
    if isinstance(unet, (list, tuple)) and len(unet) == 2:
        return "latent" if unet[1] == "UNet2DConditionModel" else "unet"
    raise RepFusionError(f"The pipeline {source} has neither unet nor transformer in model_index.json; give a "
                         "pipeline with a UNet2DModel, a UNet2DConditionModel + VAE, or a DiT transformer + VAE.")


def refuse_pickled_weights(path: Path, source: str) -> None:
    """A model folder whose only weights are a `.bin` pickle that holds code: say so, and why it is refused,
    instead of diffusers' fetch attempt and 'Unable to load weights'. Plain-tensor `.bin` files still load."""
    import torch

    from ..errors import torch_load_reason

    for folder in (path, path / "unet", path / "transformer", path / "vae", path / "text_encoder"):
        if not (folder / "config.json").is_file() or list(folder.glob("*.safetensors")):
            continue
        for weights in sorted(folder.glob("*.bin")):
            try:
                torch.load(weights, map_location="meta", weights_only=True)
            except Exception as e:
                if "weights_only" in str(e) or "Unpickl" in type(e).__name__:
                    raise RepFusionError(
                        f"Teacher folder {source} holds its weights only as {weights.relative_to(path)}, a pickle "
                        f"that asks for more than tensors ({torch_load_reason(e)}); loading it could run code, so "
                        "repfusion refuses it: use a copy saved as safetensors (save_pretrained's default).") from None


def _kind_of_folder(path: Path, source: str) -> str:
    refuse_pickled_weights(path, source)
    if (path / "model_index.json").is_file():
        return kind_from_index(_read_json(path / "model_index.json"), source)
    for config, sub in ((path / "config.json", ""), (path / "unet" / "config.json", "unet/"),
                        (path / "transformer" / "config.json", "transformer/")):
        if config.is_file():
            name = _read_json(config).get("_class_name", "UNet2DModel")
            if name == "UNet2DModel":
                return "unet"
            if sub and (path / "vae" / "config.json").is_file():
                return "dit" if sub == "transformer/" else "latent"
            raise RepFusionError(f"{source} holds a {name} without its VAE; give the whole pipeline folder "
                                 "(model_index.json, unet/ or transformer/, vae/, scheduler/) as diffusers saves it.")
    raise RepFusionError(f"Cannot tell what kind of teacher the folder {source} is (no model_index.json, "
                         "config.json, unet/ or transformer/); give a folder written by save_pretrained, a "
                         "diffusers pipeline folder, or a guided-diffusion .pt file.")


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).expanduser().exists()


def _kind_of_hub_id(source: str, online: bool) -> str:
    """A hub id's model_index.json decides (from the local cache unless `online`); none: a UNet2DModel repo."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        index_file = hf_hub_download(source, "model_index.json") if online else try_to_load_from_cache(
            source, "model_index.json")
    except Exception:  # no such file, no network: the UNet2DModel loader reports what is wrong
        return "unet"
    return kind_from_index(_read_json(Path(index_file)), source) if isinstance(index_file, str) else "unet"


def detect_kind(source: str) -> str:
    """`unet`, `adm`, `latent` or `dit` for a preset, file, folder or hub id; one sentence when it cannot tell."""
    if source in TEACHER_PRESETS:
        return "unet"
    if source in ADM_RANDOM:
        return "adm"
    path = Path(source).expanduser()
    if path.suffix in ADM_SUFFIXES or path.is_file():
        if path.is_file() and path.suffix not in ADM_SUFFIXES:
            raise RepFusionError(f"{source} is a file but not a checkpoint ({', '.join(ADM_SUFFIXES)}); give a "
                                 "guided-diffusion state dict, or a folder written by save_pretrained.")
        return "adm"
    if path.is_dir():
        return _kind_of_folder(path, source)
    if _looks_like_hub_id(source):  # the cache only: a UNet2DModel repo must not wait on the network twice
        return _kind_of_hub_id(source, online=False)
    return "unet"  # a missing folder or an unknown preset: the UNet loader says which, with close names


def load_teacher(source: str, image_size: int | None = None, class_label: int | str = "auto",
                 class_map: Sequence[int] | None = None, adm_flags: str | dict[str, Any] = "imagenet-64",
                 uncond_embedding: str | None = None, init: str = "pretrained",
                 init_seed: int = 0) -> DiffusionTeacher:
    """Build the frozen teacher for `source`, whatever its kind.

    Args:
        image_size (`int`, *optional*): the sample size of a preset teacher (random weights).
        class_label (`int | str`, *optional*, defaults to `"auto"`): class input of class-conditional
            teachers (ADM ImageNet, DiT): `dataset`, `null`, a class index, or `auto`.
        class_map (`Sequence[int]`, *optional*): teacher class of each dataset label, for `dataset`.
        adm_flags (`str | dict`, *optional*, defaults to `"imagenet-64"`): an ADM preset or the model flags.
        uncond_embedding (`str`, *optional*): a file with the empty-prompt text embedding of a latent teacher.
        init (`str`, *optional*, defaults to `"pretrained"`): `random` builds the same architecture from the
            source's configs only, with weights drawn from `init_seed`, and reads no trained weight: the
            random-teacher control of every comparison (what distillation gives without the teacher's knowledge).
    """
    if init not in ("pretrained", "random"):
        raise RepFusionError(f"teacher.init must be 'pretrained' or 'random', not '{init}'.")
    if init == "random":
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
            torch.manual_seed(init_seed)
            return _load_teacher(source, image_size, class_label, class_map, adm_flags, uncond_embedding, True)
    return _load_teacher(source, image_size, class_label, class_map, adm_flags, uncond_embedding, False)


def _load_teacher(source: str, image_size: int | None, class_label: int | str, class_map: Sequence[int] | None,
                  adm_flags: str | dict[str, Any], uncond_embedding: str | None, untrained: bool) -> DiffusionTeacher:
    kind = detect_kind(source)
    if kind == "unet":
        from .loading import load_unet_and_scheduler

        try:
            unet, scheduler = load_unet_and_scheduler(source, image_size, untrained=untrained)
        except RepFusionError:
            # a hub pipeline not in the cache (no config.json at its root): its model_index.json gives the kind
            if not _looks_like_hub_id(source) or (kind := _kind_of_hub_id(source, online=True)) == "unet":
                raise
        else:
            if uncond_embedding is None:
                return DiffusionTeacher(unet, scheduler, source, class_label, class_map)
    if uncond_embedding is not None and kind != "latent":
        raise RepFusionError(f"uncond_embedding is for latent diffusion teachers, but {source} is a {kind} "
                             "teacher; drop the option.")
    if kind == "latent":
        from .latent import load_latent_teacher

        return load_latent_teacher(source, uncond_embedding=uncond_embedding, class_label=class_label,
                                   class_map=class_map, untrained=untrained)
    if kind == "dit":
        from .dit import load_dit_teacher

        return load_dit_teacher(source, class_label=class_label, class_map=class_map, untrained=untrained)
    from .adm import load_adm, random_adm

    if source in ADM_RANDOM or untrained:  # an untrained ADM needs only its flags: the checkpoint is never opened
        unet, scheduler = random_adm(ADM_RANDOM.get(source, adm_flags))
    else:
        unet, scheduler = load_adm(source, adm_flags)
    teacher = DiffusionTeacher(unet, scheduler, source, class_label, class_map)
    teacher.kind = "adm"
    return teacher

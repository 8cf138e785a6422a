"""`repfusion probe` for every teacher kind on the embedded digits (16x16), with tiny random-weight teachers.

One teacher per kind, each built the way a user's would be loaded (pixel UNet preset, ADM architecture from
model flags, latent and DiT pipeline folders written by save_pretrained and read back by kind detection);
weights are random, so the plots show that every kind goes through the same probe and what a random
teacher of that architecture gives (a floor, not a claim about trained models).

    python benchmarks/teacher_kinds_probe.py   # writes benchmarks/results/teacher_kinds/
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTPipeline, DiTTransformer2DModel, UNet2DConditionModel

from repfusion.analysis.probe import ProbeConfig, run_probe
from repfusion.data import DataConfig, build_split
from repfusion.io import write_json, write_text
from repfusion.teachers import DiffusionTeacher, load_teacher
from repfusion.teachers.adm import ADMFlags, random_adm


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8,
                         sample_size=16)


def latent_folder(root: Path) -> Path:
    folder = root / "ldm"
    UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                         cross_attention_dim=32, attention_head_dim=8,
                         norm_num_groups=8).save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": [None, None], "tokenizer": [None, None]}))
    return folder


def dit_folder(root: Path) -> Path:
    transformer = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
                                        num_layers=4, sample_size=4, patch_size=2, num_embeds_ada_norm=10)
    DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDPMScheduler()).save_pretrained(root / "dit")
    return root / "dit"


ADM_FLAGS = ADMFlags(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                     num_head_channels=16, class_cond=True, num_classes=10, learn_sigma=True, resblock_updown=True,
                     use_new_attention_order=True, noise_schedule="cosine")


def teachers(root: Path) -> dict[str, tuple[DiffusionTeacher, list[str], str]]:
    """kind -> (teacher, layers, how it was built)."""
    unet, scheduler = random_adm(ADM_FLAGS)
    adm = DiffusionTeacher(unet, scheduler, "ADM flags (channel-scaled imagenet-64)")  # auto: class 0 for all
    leaky = DiffusionTeacher(unet, scheduler, "ADM flags (channel-scaled imagenet-64), dataset labels",
                             class_label="dataset")
    adm.kind = leaky.kind = "adm"
    latent = load_teacher(str(latent_folder(root)))
    dit = load_teacher(str(dit_folder(root)))
    latent.source, dit.source = "tiny latent pipeline folder", "tiny DiT pipeline folder"  # no temp paths in results
    return {
        "unet": (load_teacher("tiny-16"), ["mid_block.resnets.1.conv2"], "preset tiny-16"),
        "adm": (adm, ["down_blocks.1.attentions.0", "mid_block.resnets.1.conv2"],
                "ADM architecture from flags (num_channels 32, channel_mult 1,2, new QKV order, scale-shift, "
                "resblock up/down, 10 classes), class 0 for every image"),
        "adm-dataset-labels": (leaky, ["mid_block.resnets.1.conv2"],
                               "the same ADM teacher fed each image's own label (class_label: dataset)"),
        "latent": (latent, ["down_blocks.0.attentions.0", "mid_block.resnets.1.conv2"],
                   "pipeline folder: UNet2DConditionModel (32, 64) + AutoencoderKL (4x), zero text embedding"),
        "dit": (dit, ["transformer_blocks.1", "transformer_blocks.3"],
                "pipeline folder: DiTTransformer2DModel (4 blocks, width 64, patch 2) + AutoencoderKL, null class"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "teacher_kinds")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[0, 100, 300, 600, 900])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    data = DataConfig(source="digits", image_size=16)
    train, test = build_split(data, train=True), build_split(data, train=False)
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (teacher, layers, built) in teachers(Path(tmp)).items():
            start = time.perf_counter()
            cfg = ProbeConfig(timesteps=args.timesteps, layers=layers, seed=args.seed)
            print(f"{kind}: {built}")
            rows = run_probe(teacher, train, test, cfg, args.out / kind)
            best = max(rows, key=lambda r: r["probe_accuracy"])
            summary.append({"kind": kind, "built": built, "layers": layers, "seconds": time.perf_counter() - start,
                            "best": {k: best[k] for k in ("layer", "mode", "t", "probe_accuracy")},
                            "parameters": sum(p.numel() for p in teacher.parameters())})
    command = "python benchmarks/teacher_kinds_probe.py " + shlex.join(sys.argv[1:])
    write_json(args.out / "summary.json", {"command": command.strip(), "data": "digits 16x16", "rows": summary})
    lines = ["# Probe of every teacher kind (random weights, digits 16x16)", "",
             f"Command: `{command.strip()}`", "",
             "Each teacher is loaded the way a user's would be (kind detected from the folder) and probed with "
             "`run_probe` (linear probe on pooled features, clean and noised). Weights are random: this shows every "
             "kind goes through the same interface, and the floor a random teacher of that architecture gives; it "
             "is not a claim about trained teachers.", "",
             "| kind | built as | parameters | best probe accuracy (layer, mode, t) | plot |", "|---|---|---|---|---|"]
    for s in summary:
        b = s["best"]
        lines.append(f"| {s['kind']} | {s['built']} | {s['parameters']:,} | {b['probe_accuracy']:.3f} "
                     f"(`{b['layer']}`, {b['mode']}, t={b['t']}) | [{s['kind']}/probe.png]({s['kind']}/probe.png) |")
    lines += ["", "`adm-dataset-labels` feeds each image's own label as the ADM class: the class embedding puts the "
              "label into every feature, so the probe reads it off at any t even with random weights. That is why "
              "class-conditional teachers without a null class default to one fixed class (`class_label: auto` = 0)."]
    write_text(args.out / "summary.md", "\n".join(lines) + "\n")
    print(f"Wrote {args.out}/summary.md")


if __name__ == "__main__":
    main()

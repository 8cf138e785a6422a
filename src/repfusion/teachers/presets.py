"""Named UNet2DModel architectures: the paper's hub teachers (random weights) and CPU-sized ones.

Each preset is the exact `UNet2DModel` config, so a preset teacher has the same layer names and
feature shapes as the checkpoint it stands in for.
"""

from __future__ import annotations

from typing import Any

TEACHER_PRESETS: dict[str, dict[str, Any]] = {
    # google/ddpm-cifar10-32: 35.7 M parameters, mid-block width 256.
    "ddpm-cifar10-32": dict(
        sample_size=32,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        attention_head_dim=None,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
    ),
    # google/ddpm-ema-celebahq-256: 113.7 M parameters, mid-block width 512.
    "ddpm-ema-celebahq-256": dict(
        sample_size=256,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=(
            "DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        attention_head_dim=None,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
    ),
    # The architecture of ../shared/teachers/cifar10-subset-ddpm-small: 1.11 M parameters, width 64.
    "small-32": dict(
        sample_size=32,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
    ),
    # Trains in a minute on 2 CPU cores at 16x16 (the demo's teacher); mid-block width 64.
    "tiny-16": dict(
        sample_size=16,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    ),
}

# small-32 at twice the width and two ResNets a level: 6.47 M parameters, near DDAE's 5.9 M CIFAR UNet (probed at
# 64 %), for a stronger CIFAR teacher than small-32; about 3.2 s a step at batch 64 on 2 EPYC cores. The same layer
# names as small-32, so a layer chosen on one names a layer of the other.
TEACHER_PRESETS["medium-32"] = {**TEACHER_PRESETS["small-32"], "block_out_channels": (64, 128, 128),
                                "layers_per_block": 2}

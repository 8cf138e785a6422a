"""Top-down heatmap networks for facial landmarks: a student backbone plus a heatmap head.

Two heads, as mmpose's `HeatmapHead` configures them for WFLW:
- SimpleBaseline (Xiao et al., ECCV 2018) on a ResNet: three 4x4 stride-2 deconvolutions (256 channels,
  BN, ReLU) bring the stride-32 map back to stride 4, then a 1x1 conv gives one heatmap per keypoint;
- HRNetV2: its representation is already at stride 4, so the head is a 1x1 conv-BN-ReLU keeping the 270
  channels and a 1x1 conv to the heatmaps (mmpose `td-hm_hrnetv2-w18_8xb64-60e_wflw-256x256`, HRNet's
  facial-landmark code).
Heatmaps are at stride 4: 64x64 for a 256x256 face.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ...errors import RepFusionError
from ...pretrained import PretrainedModel
from ...students import HRNet, build_student
from ...students.resnet import scaled


class HeatmapHead(nn.Module):
    """`deconvs` x (deconv 4x4 s2, BN, ReLU), or, with none, one 1x1 conv-BN-ReLU; then a 1x1 conv to K maps."""

    def __init__(self, in_channels: int, num_keypoints: int, deconvs: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(deconvs):
            layers += [nn.ConvTranspose2d(cin, channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            cin = channels
        if deconvs == 0:
            layers += [nn.Conv2d(cin, cin, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.final = nn.Conv2d(cin, num_keypoints, 1)
        for m in self.modules():  # SimpleBaseline's init: small weights so the first heatmaps are flat
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.layers(x))


class LandmarkNet(PretrainedModel, ConfigMixin):
    """Backbone (`self.backbone`, a repfusion student) + heatmap head (`self.head`).

    Args:
        arch (`str`, *optional*, defaults to `"resnet50"`): the backbone's student name (`repfusion.students.STUDENTS`);
            ImageNet-stem ResNets get the SimpleBaseline head, `hrnetv2_w18` its 1x1 head.
        width (`float`, *optional*, defaults to 1.0): the student's channel multiplier; the deconvolution
            channels scale with it too.
        num_keypoints (`int`, *optional*, defaults to 98): heatmaps produced.
        in_channels (`int`, *optional*, defaults to 3): image channels.
        deconv_layers (`int`, *optional*): stride-2 deconvolutions; None picks 3 for a stride-32 backbone and
            0 for HRNet (already stride 4).
        deconv_channels (`int`, *optional*, defaults to 256): deconvolution width at width 1.

    forward: normalised images [B, C, H, W] -> heatmaps [B, K, H / 4, W / 4] (for the default heads).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, arch: str = "resnet50", width: float = 1.0, num_keypoints: int = 98, in_channels: int = 3,
                 deconv_layers: int | None = None, deconv_channels: int = 256) -> None:
        super().__init__()
        if num_keypoints < 1:
            raise RepFusionError(f"num_keypoints must be at least 1, not {num_keypoints}.")
        self.backbone = build_student(arch, width, num_classes=0, in_channels=in_channels)
        is_hrnet = isinstance(self.backbone, HRNet)
        deconvs = deconv_layers if deconv_layers is not None else (0 if is_hrnet else 3)
        if deconvs < 0:
            raise RepFusionError(f"deconv_layers must be 0 or more, not {deconv_layers}.")
        self.head = HeatmapHead(self.backbone.feature_channels, num_keypoints, deconvs,
                                scaled(deconv_channels, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))

"""detectron2-compatible ResNet (BasicStem, BottleneckBlock, FrozenBN, stride in the 3x3 conv)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Conv2dNorm, FrozenBatchNorm2d

# Blocks per stage (detectron2's build_resnet_backbone): BasicBlock for 18/34 (the demo model), BottleneckBlock
# for 50/101 (the released models).
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BASIC_BLOCK_DEPTHS = (18, 34)


def _conv(cin: int, cout: int, k: int, stride: int = 1, relu: bool = False) -> Conv2dNorm:
    return Conv2dNorm(
        cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False,
        norm=FrozenBatchNorm2d(cout), activation=relu,
    )


class BasicStem(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 7, stride=2, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class BasicBlock(nn.Module):
    """Two 3x3 convs (detectron2 BasicBlock: stride on conv1, keys conv1, conv2, shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.shortcut = _conv(cin, cout, 1, stride=stride) if cin != cout else None
        self.conv1 = _conv(cin, cout, 3, stride=stride, relu=True)
        self.conv2 = _conv(cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + identity)


class BottleneckBlock(nn.Module):
    def __init__(self, cin: int, cout: int, bottleneck: int, stride: int, stride_in_1x1: bool) -> None:
        super().__init__()
        self.shortcut = _conv(cin, cout, 1, stride=stride) if cin != cout else None
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(cin, bottleneck, 1, stride=s1, relu=True)
        self.conv2 = _conv(bottleneck, bottleneck, 3, stride=s3, relu=True)
        self.conv3 = _conv(bottleneck, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet returning res2..res5 (strides 4/8/16/32) as a tuple, detectron2 key names."""

    def __init__(self, depth: int = 50, stem_out_channels: int = 64, res2_out_channels: int = 256,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"unsupported ResNet depth {depth}; supported: {sorted(RESNET_BLOCKS)}")
        if depth in BASIC_BLOCK_DEPTHS and res2_out_channels != 64:
            raise ValueError(f"ResNet-{depth} needs RES2_OUT_CHANNELS 64 (detectron2), got {res2_out_channels}")
        self.stem = BasicStem(3, stem_out_channels)
        cin, cout, bottleneck = stem_out_channels, res2_out_channels, res2_out_channels // 4
        for stage, n_blocks in enumerate(RESNET_BLOCKS[depth]):
            blocks = []
            for i in range(n_blocks):
                stride = 2 if (i == 0 and stage > 0) else 1
                blocks.append(BasicBlock(cin, cout, stride) if depth in BASIC_BLOCK_DEPTHS
                              else BottleneckBlock(cin, cout, bottleneck, stride, stride_in_1x1))
                cin = cout
            self.add_module(f"res{stage + 2}", nn.Sequential(*blocks))
            cout, bottleneck = cout * 2, bottleneck * 2
        self.out_channels = (res2_out_channels, res2_out_channels * 2, res2_out_channels * 4, res2_out_channels * 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        res2 = self.res2(x)
        res3 = self.res3(res2)
        res4 = self.res4(res3)
        res5 = self.res5(res4)
        return res2, res3, res4, res5


class NormalizedResNetModel(nn.Module):
    """Base of the meta-architectures: pixel normalisation inside the graph (callers pad with the pixel mean, which
    becomes 0 as upstream) and a detectron2 ResNet under `backbone.` (the checkpoints' key prefix)."""

    def __init__(self, depth: int, stem_out_channels: int, res2_out_channels: int, stride_in_1x1: bool,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)
        self.backbone = ResNet(depth, stem_out_channels, res2_out_channels, stride_in_1x1)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """res2..res5 of the normalised images."""
        return self.backbone((images - self.pixel_mean) / self.pixel_std)

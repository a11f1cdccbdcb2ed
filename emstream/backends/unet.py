"""The learned segmenter's network: a compact U-Net sized for real time on a CPU.

Architecture (``UNetS``; ``width`` = base channels, 16 for the shipped ``unet-s``)::

    input C x H x W (the robustly normalised image, and for two-channel models its local
              contrast; H and W multiples of 16)
    stem      conv3x3 stride 2 -> w            1/2
    enc1      depthwise-separable block w       1/2   ─┐ skip
    down2     DS block stride 2 -> 2w, DS       1/4   ─┤ skip
    down3     DS block stride 2 -> 4w, DS       1/8   ─┤ skip
    (extra)   ``extra`` residual DS blocks at 1/8, and as many dilated ones after ``bottom``
    bottom    DS block stride 2 -> 4w, DS (dilated)  1/16
    up3/up2/up1  bilinear x2, concat skip, DS block
    head      1x1 conv -> 2 logits at 1/2, bilinear x2 to full resolution, then
              a small full-resolution refinement that also sees the input channels

Outputs (one tensor ``maps``, N x 2 x H x W, *logits*):

- channel 0: particle (foreground) logit;
- channel 1: logit of the per-particle normalised distance to the particle's edge (0 at the
  edge, 1 at the particle's deepest point). Touching particles have low values at their neck,
  so thresholding it gives one marker per particle, and the watershed in
  :func:`emstream.process.instances.instances_from_maps` grows the markers back to the
  foreground.

The stride-2 stem keeps the cost at full resolution down (most of the work runs at 1/2 and
below); the full-resolution refinement keeps edges of small particles (~4 px) sharp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Names of the output channels, in order (the ONNX output is one tensor called ``maps``).
OUTPUT_CHANNELS = ("foreground", "distance")


class DSBlock(nn.Module):
    """Depthwise 3x3 (optionally strided / dilated) + pointwise 1x1, each with BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=dilation, dilation=dilation,
                            groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.dw(x)))
        return F.relu(self.bn2(self.pw(x)))


class _Residual(nn.Module):
    """``x + BN(pw(ReLU(BN(dw(x)))))``, its last BatchNorm's scale and shift starting at 0, so a
    network deepened with it computes what it did before (function-preserving growth) and still
    learns (no ReLU after the zeroed BatchNorm, whose gradient would be 0)."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation,
                            groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)
        nn.init.zeros_(self.bn2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.pw(F.relu(self.bn1(self.dw(x)))))


class _Up(nn.Module):
    """1x1 projection at low resolution, bilinear x2, *add* the skip, DS block.

    Adding instead of concatenating (LinkNet style) and projecting before upsampling keeps the
    memory traffic at high resolution low, which is what dominates on a CPU.
    """

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, cskip, 1, bias=False), nn.BatchNorm2d(cskip))
        self.block = DSBlock(cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.proj(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.block(F.relu(x + skip))


class UNetS(nn.Module):
    """Compact U-Net (see module docstring). ``width`` = channels after the stem."""

    def __init__(self, width: int = 16, refine: int = 4, inputs: int = 1, extra: int = 0):
        super().__init__()
        w = width
        self.width = w
        self.refine_channels = refine
        self.inputs = inputs
        self.stem = nn.Sequential(nn.Conv2d(inputs, w, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.enc1 = DSBlock(w, w)
        self.down2 = nn.Sequential(DSBlock(w, 2 * w, stride=2), DSBlock(2 * w, 2 * w))
        self.down3 = nn.Sequential(DSBlock(2 * w, 4 * w, stride=2), DSBlock(4 * w, 4 * w))
        self.bottom = nn.Sequential(DSBlock(4 * w, 4 * w, stride=2),
                                    DSBlock(4 * w, 4 * w, dilation=2),
                                    DSBlock(4 * w, 4 * w, dilation=4))
        # capacity where it is cheap (1/8 and 1/16 of the pixels): context for telling
        # particles from support texture and for the shapes of large particles
        self.mid = nn.Sequential(*[_Residual(4 * w) for _ in range(extra)])
        self.deep = nn.Sequential(*[_Residual(4 * w, dilation=2 ** (1 + k % 2))
                                    for k in range(extra)])
        self.up3 = _Up(4 * w, 4 * w, 4 * w)
        self.up2 = _Up(4 * w, 2 * w, 2 * w)
        self.up1 = _Up(2 * w, w, w)
        if refine:
            self.head = nn.Conv2d(w, refine, 1)
            # full resolution: upsampled head features + the input channels -> 2 logits
            self.refine = nn.Sequential(nn.Conv2d(refine + inputs, refine, 3, padding=1),
                                        nn.ReLU(inplace=True), nn.Conv2d(refine, 2, 1))
        else:
            self.head = nn.Conv2d(w, 2, 1)
            self.refine = None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(self.stem(image))
        s2 = self.down2(s1)
        s3 = self.mid(self.down3(s2))
        x = self.deep(self.bottom(s3))
        x = self.up3(x, s3)
        x = self.up2(x, s2)
        x = self.up1(x, s1)
        x = F.interpolate(self.head(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        if self.refine is None:
            return x
        return self.refine(torch.cat([x, image], dim=1))


#: Input sizes must be multiples of this (the segmenter pads).
SIZE_MULTIPLE = 16


def build_model(arch: str = "unet-s", **kwargs) -> nn.Module:
    """Construct a network by name (``"unet-s"``: width 16, ``"unet-xs"``: width 8)."""
    if arch == "unet-s":
        return UNetS(width=kwargs.get("width", 16), refine=kwargs.get("refine", 4),
                     inputs=kwargs.get("inputs", 1), extra=kwargs.get("extra", 0))
    if arch == "unet-xs":
        return UNetS(width=kwargs.get("width", 8), refine=kwargs.get("refine", 4),
                     inputs=kwargs.get("inputs", 1))
    raise ValueError(f"unknown architecture {arch!r} (known: unet-s, unet-xs)")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

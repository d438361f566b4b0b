"""Deep-R networks: the residual U-Net generator and the CNN discriminator.

The generator follows the paper's Methods: four down-sampling and four
up-sampling levels of 3x3 convolutions with leaky ReLU, a residual connection
around every block, skip concatenations between the two paths and a residual
path from the input to the output.  Its width is a parameter (``width``: the
channels of the first level, doubled per level up to ``max_width``).

The generator takes and returns images in the *model space* named by the
model card's ``normalization`` (``range``: ``stored / intensity_scale``, i.e.
``[0, 1]`` for 8-bit brightfield).  A fixed per-channel standardisation
(``(x - mean) / std`` with the training split's input statistics, stored as
buffers) is the first operation of the graph and its inverse the last, so the
network works on zero-mean, unit-variance values as in the paper while the
ONNX model needs no statistics from the slide.  Inputs of any height and width
are accepted: they are reflect-padded to a multiple of ``2 ** levels`` inside
the graph and the output is cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Discriminator", "Generator", "ResBlock", "count_parameters", "glorot_init"]

_SLOPE = 0.1


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every convolution and linear layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with leaky ReLU and a residual connection.

    ``out = act(conv2(act(conv1(x)))) + proj(x)`` where ``proj`` is the identity
    when the channel counts match and a 1x1 convolution otherwise.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.proj = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), _SLOPE)
        h = F.leaky_relu(self.conv2(h), _SLOPE)
        return h + self.proj(x)


class Generator(nn.Module):
    """Residual U-Net generator (Deep-R).

    Parameters
    ----------
    channels : int
        Image channels (3 for brightfield RGB, 1 for a fluorescence channel).
    width : int
        Channels of the first level; level ``k`` has ``min(width * 2**k, max_width)``.
    levels : int
        Down-/up-sampling levels (4 in the paper).
    max_width : int, optional
        Cap on the channels of the deepest levels (default ``width * 2**levels``).
    mean, std : sequence of float, optional
        Per-channel statistics of the model-space inputs (training split); the
        graph standardises with them and undoes it at the output.
    residual : bool
        Add the input to the output (the network learns the correction).
    """

    def __init__(self, channels: int = 3, *, width: int = 16, levels: int = 4, max_width: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 residual: bool = True) -> None:
        super().__init__()
        if width < 1 or levels < 1 or channels < 1:
            raise ValueError(f"width={width}, levels={levels}, channels={channels}: all must be >= 1")
        self.channels, self.width, self.levels, self.residual = channels, width, levels, residual
        self.max_width = int(max_width) if max_width else width * 2**levels
        widths = [min(width * 2**k, self.max_width) for k in range(levels + 1)]
        self.widths = widths
        mean = [0.0] * channels if mean is None else list(mean)
        std = [1.0] * channels if std is None else list(std)
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean={mean}, std={std}: need {channels} values each, std > 0")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1))
        self.inc = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(
            [ResBlock(widths[0], widths[0])] + [ResBlock(widths[k - 1], widths[k]) for k in range(1, levels)]
        )
        self.bottom = ResBlock(widths[levels - 1], widths[levels])
        self.up = nn.ModuleList(
            [ResBlock(widths[k + 1] + widths[k], widths[k]) for k in reversed(range(levels))]
        )
        self.out = nn.Conv2d(widths[0], channels, 1)
        glorot_init(self)
        # the untrained generator is the identity (residual path only)
        nn.init.zeros_(self.out.weight)

    def config(self) -> dict:
        """Constructor arguments (without the statistics), for checkpoints."""
        return {"channels": self.channels, "width": self.width, "levels": self.levels,
                "max_width": self.max_width, "residual": self.residual}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0, w0 = x.shape[-2], x.shape[-1]
        m = 2**self.levels
        ph, pw = (m - h0 % m) % m, (m - w0 % m) % m
        z = (x - self.mean) / self.std
        zp = F.pad(z, (0, pw, 0, ph), mode="reflect")  # any size: pad to a multiple of 2**levels
        h = F.leaky_relu(self.inc(zp), _SLOPE)
        skips = []
        for k, block in enumerate(self.down):
            h = block(h)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        h = self.bottom(h)
        for block, skip in zip(self.up, reversed(skips)):
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        out = self.out(h)
        if self.residual:
            out = out + zp
        out = out[:, :, :h0, :w0]
        return out * self.std + self.mean


class Discriminator(nn.Module):
    """CNN discriminator ending in fully connected layers (least-squares GAN).

    Stride-2 convolution blocks halve the resolution ``depth`` times, a global
    average pool makes it size-independent, and two linear layers end in a
    sigmoid (the probability that the input is an in-focus image).

    Parameters
    ----------
    channels : int
        Image channels.
    width : int
        Channels of the first block (doubled per block, capped at ``16 * width``).
    depth : int
        Number of stride-2 blocks.
    """

    def __init__(self, channels: int = 3, *, width: int = 16, depth: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(_SLOPE)]
        c = width
        for k in range(depth):
            c_next = min(width * 2 ** (k + 1), 16 * width)
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(_SLOPE),
                       nn.Conv2d(c, c_next, 3, stride=2, padding=1), nn.LeakyReLU(_SLOPE)]
            c = c_next
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, c), nn.LeakyReLU(_SLOPE), nn.Linear(c, 1))
        self.width, self.depth, self.channels = width, depth, channels
        glorot_init(self)

    def config(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return {"channels": self.channels, "width": self.width, "depth": self.depth}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probability (``(N,)``) that each image is in focus."""
        h = self.features(x).mean(dim=(2, 3))
        return torch.sigmoid(self.head(h)).squeeze(1)

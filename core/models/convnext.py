"""A ConvNeXt backbone for log-mel spectrograms.

Liu et al. 2022, "A ConvNet for the 2020s" (CVPR): stem (4x4 conv, stride 4),
four stages of blocks (7x7 depthwise conv, LayerNorm, MLP with 4x expansion and
GELU, layer scale, stochastic depth) separated by 2x2 stride-2 downsampling.
AudioProtoPNet (Heinrich et al. 2025) uses ConvNeXt-B on 256-mel spectrograms;
:data:`CONVNEXT_BASE` is that size, :data:`CONVNEXT_SMALL_CPU` trains here on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import ParameterError

__all__ = ["BackboneConfig", "ConvNeXt", "CONVNEXT_SMALL_CPU", "CONVNEXT_BASE"]


@dataclass(frozen=True)
class BackboneConfig:
    """ConvNeXt size.

    Attributes
    ----------
    depths : tuple of int
        Blocks per stage.
    dims : tuple of int
        Channels per stage; ``dims[-1]`` is the feature-map depth.
    drop_path_rate : float in [0, 1)
        Stochastic depth, linearly increasing over blocks.
    layer_scale_init : float
    in_chans : int
    stem : {"patch", "overlap"}
        ``patch``: 4x4 stride-4 convolution (ConvNeXt). ``overlap``: two 3x3 stride-2
        convolutions with BatchNorm and GELU, an overlapping stem that trains much
        faster on small data (as in timm's ``stem_type="overlap"`` variants).
    norm : {"layer", "batch"}
        Normalisation inside blocks and downsampling layers. ConvNeXt uses LayerNorm;
        BatchNorm converges faster from scratch on a few hundred clips.
    """

    depths: tuple[int, ...] = (2, 2, 2, 2)
    dims: tuple[int, ...] = (32, 64, 128, 256)
    drop_path_rate: float = 0.1
    layer_scale_init: float = 1e-6
    in_chans: int = 1
    stem: str = "patch"
    norm: str = "layer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        if len(self.depths) != len(self.dims) or not self.depths:
            raise ParameterError(f"depths and dims must have the same non-zero length, got {self.depths}, {self.dims}")
        if self.stem not in ("patch", "overlap") or self.norm not in ("layer", "batch"):
            raise ParameterError(f"stem must be 'patch' or 'overlap' and norm 'layer' or 'batch', got {self.stem}, {self.norm}")
        if not 0 <= self.drop_path_rate < 1:
            raise ParameterError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def out_channels(self) -> int:
        return self.dims[-1]

    @property
    def stride(self) -> int:
        """Total down-sampling factor of the feature map."""
        return 4 * 2 ** (len(self.dims) - 1)


#: Small backbone for the bundled checkpoints (trains on a 2-core CPU in minutes).
#: Overlapping stem, BatchNorm and layer scale 1.0: on the 725 training windows of
#: xc9 this reached val cmAP 0.45 after 6 epochs where the LayerNorm/patch-stem
#: ConvNeXt stayed at 0.23-0.31 (measured, see README).
CONVNEXT_SMALL_CPU = BackboneConfig(stem="overlap", norm="batch", layer_scale_init=1.0)
#: ConvNeXt-B, the AudioProtoPNet paper size (for GPU users).
CONVNEXT_BASE = BackboneConfig(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), drop_path_rate=0.2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of ``(batch, channels, h, w)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _norm2d(kind: str, dim: int) -> nn.Module:
    return LayerNorm2d(dim, eps=1e-6) if kind == "layer" else nn.BatchNorm2d(dim)


class Block(nn.Module):
    """ConvNeXt block: dwconv 7x7 -> norm -> 1x1 conv (4C) -> GELU -> 1x1 conv (C), layer scale, residual."""

    def __init__(self, dim: int, drop_path: float, layer_scale_init: float, norm: str = "layer") -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = _norm2d(norm, dim)
        self.pwconv1 = nn.Conv2d(dim, 4 * dim, kernel_size=1)
        self.pwconv2 = nn.Conv2d(4 * dim, dim, kernel_size=1)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x)))))
        x = self.gamma * x
        if self.training and self.drop_path > 0:
            keep = 1 - self.drop_path
            mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep) / keep
            x = x * mask
        return shortcut + x


class ConvNeXt(nn.Module):
    """ConvNeXt feature extractor.

    Parameters
    ----------
    config : BackboneConfig

    Shapes
    ------
    input : ``(batch, in_chans, n_mels, n_frames)``
    output : ``(batch, dims[-1], n_mels // stride, n_frames // stride)`` (floor division)
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        dims, depths = config.dims, config.depths
        rates = torch.linspace(0, config.drop_path_rate, sum(depths)).tolist()
        if config.stem == "patch":
            self.stem = nn.Sequential(nn.Conv2d(config.in_chans, dims[0], kernel_size=4, stride=4), _norm2d(config.norm, dims[0]))
        else:
            half = max(dims[0] // 2, 8)
            self.stem = nn.Sequential(
                nn.Conv2d(config.in_chans, half, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(half), nn.GELU(),
                nn.Conv2d(half, dims[0], kernel_size=3, stride=2, padding=1), _norm2d(config.norm, dims[0]),
            )
        self.stages = nn.ModuleList()
        k = 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [_norm2d(config.norm, dims[i - 1]), nn.Conv2d(dims[i - 1], dim, kernel_size=2, stride=2)]
            layers += [Block(dim, rates[k + j], config.layer_scale_init, config.norm) for j in range(depth)]
            k += depth
            self.stages.append(nn.Sequential(*layers))
        self.norm = _norm2d(config.norm, dims[-1])
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

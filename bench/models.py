"""The benchmark models: an MLP 784-512-512-512-10, a small ResNet-ish CNN on 3x32x32 and ResNet-18.

Bigger than the zoo models (which are sized for 8x8 digits) so that forward passes take
milliseconds and capture overhead is measured against real compute, not Python call overhead.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from deepscope_server import zoo


class BenchMLP(nn.Module):
    """784 -> 512 -> 512 -> 512 -> 10, ReLU between."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(784, 512), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(512, 512), nn.ReLU()
        self.fc3, self.act3 = nn.Linear(512, 512), nn.ReLU()
        self.fc4 = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc4(self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))))


class BenchCNN(nn.Module):
    """3x32x32 -> conv(32)+bn+relu -> residual block(32) -> conv s2 (64)+bn+relu -> residual block(64)
    -> global average pool -> linear(10). Six convs and one linear; in-place ReLUs inside the blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        self.layer1 = zoo.BasicBlock(32)
        self.conv2, self.bn2, self.act2 = (
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.layer2 = zoo.BasicBlock(64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.act1(self.bn1(self.conv1(x))))
        x = self.layer2(self.act2(self.bn2(self.conv2(x))))
        return self.fc(self.flatten(self.pool(x)))


class _ResBlock(nn.Module):
    """torchvision's ResNet BasicBlock (a 1x1 conv + BN shortcut when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 as torchvision builds it (same layer names and shapes; torchvision is not a
    dependency): 20 convs + 1 linear, 1000 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (c_in, c_out, stride) in enumerate(widths, 1):
            setattr(self, f"layer{i}", nn.Sequential(_ResBlock(c_in, c_out, stride), _ResBlock(c_out, c_out, 1)))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(name: str, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """Model in eval mode (seeded) and a seeded input batch."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if name == "mlp":
        return BenchMLP().eval(), torch.randn(batch, 784, generator=gen)
    if name == "cnn":
        model = BenchCNN().eval()
        zoo._randomise_norm_stats(model, gen)
        return model, torch.randn(batch, 3, 32, 32, generator=gen)
    if name == "resnet18":
        model = ResNet18().eval()
        zoo._randomise_norm_stats(model, gen)
        return model, torch.randn(batch, 3, 112, 112, generator=gen)
    raise ValueError(name)


def export(
    name: str, batch: int, directory: Path, formats: tuple[str, ...] = ("pt2", "onnx")
) -> tuple[nn.Module, torch.Tensor, dict[str, Path]]:
    """Build and export with the zoo's exporter (dynamic batch; ONNX unoptimised so BN stays a layer)."""
    model, x = build(name, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = zoo.export(model, x[:4], directory / name, formats=formats)
    return model, x, paths

"""Small reference models (MLP, CNN, transformer encoder) and their export to every supported format.

Used by tests, the demo and benchmarks. Models are deterministic given ``seed`` and tiny so
that exporting all three to all formats takes a few seconds.

Export choices: ONNX goes through the dynamo exporter with ``optimize=False`` so BatchNorm stays
a separate node (the optimiser folds it into the Conv, which would make ``bn1`` exist in the
torch formats but not in ONNX) and every node keeps the torch module path in its metadata; that
is how the ONNX backend names layers ``fc1`` / ``layer1.0.conv1`` like the torch backends do.
``onnxruntime`` still applies its own graph optimisations at session creation, so inference
speed does not suffer.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: Every format ``export`` can write, with its file suffix.
EXPORT_SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "pt": ".pt"}


class MLP(nn.Module):
    """64 -> 32 -> 16 -> 10 with ReLU modules (sized for sklearn's 8x8 digits)."""

    def __init__(self, d_in: int = 64, hidden: Sequence[int] = (32, 16), d_out: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden[0])
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden[1], d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


class BasicBlock(nn.Module):
    """A ResNet basic block: conv-bn-relu(inplace)-conv-bn + identity, then a functional ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + x)


class CNN(nn.Module):
    """[B, 1, 8, 8] -> conv+bn+relu -> maxpool -> residual block -> flatten -> linear(10)."""

    def __init__(self, channels: int = 8, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(channels))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels * 4 * 4, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.layer1(x)))


class TinyTransformer(nn.Module):
    """[B, T, 8] -> linear(16) -> one TransformerEncoderLayer (GELU, batch_first) -> mean over T -> linear(4)."""

    def __init__(self, d_in: int = 8, d_model: int = 16, n_heads: int = 2, d_ff: int = 32, d_out: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        self.encoder = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True
        )
        self.head = nn.Linear(d_model, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def _randomise_norm_stats(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics, so a test would notice a skipped or mis-ordered norm."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model in eval mode and an example input batch (batch size 4)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if name == "mlp":
        model: nn.Module = MLP()
        example = torch.randn(4, 64, generator=gen)
    elif name == "cnn":
        model = CNN()
        _randomise_norm_stats(model, gen)
        example = torch.randn(4, 1, 8, 8, generator=gen)
    elif name == "transformer":
        model = TinyTransformer()
        example = torch.randn(4, 5, 8, generator=gen)
    else:
        raise ValueError(f"unknown zoo model '{name}'; available: mlp, cnn, transformer")
    return model.eval(), example


ZOO = ("mlp", "cnn", "transformer")


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Errors only from a logger for a while (the exporter logs e.g. "torchvision is not installed")."""
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def export(
    model: nn.Module,
    example_input: torch.Tensor,
    directory: str | Path,
    formats: Sequence[str] = ("onnx", "pt2", "pt"),
    *,
    stem: str = "model",
    input_name: str = "x",
) -> dict[str, Path]:
    """Write ``model`` in each format to ``directory``; the batch dimension is dynamic everywhere.

    onnx: dynamo exporter, ``optimize=False`` (see module docstring), weights embedded.
    pt2: ``torch.export.save``. pt: TorchScript (trace, falling back to script).
    Input is named ``input_name`` and the single output ``output`` in every format.
    """
    unknown = [f for f in formats if f not in EXPORT_SUFFIXES]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; valid: {', '.join(EXPORT_SUFFIXES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    batch = torch.export.Dim("batch", min=1)
    paths: dict[str, Path] = {}
    for fmt in formats:
        path = directory / f"{stem}{EXPORT_SUFFIXES[fmt]}"
        if fmt == "onnx":
            with warnings.catch_warnings(), _quiet("torch.onnx"):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model,
                    (example_input,),
                    dynamo=True,
                    optimize=False,
                    external_data=False,
                    dynamic_shapes=({0: batch},),
                    input_names=[input_name],
                    output_names=["output"],
                    verbose=False,
                )
            program.save(str(path), external_data=False)
        elif fmt == "pt2":
            ep = torch.export.export(model, (example_input,), dynamic_shapes=({0: batch},))
            torch.export.save(ep, str(path))
        else:
            with torch.no_grad():
                try:
                    scripted = torch.jit.trace(model, (example_input,), check_trace=False)
                except Exception:  # fall back to scripting for data-dependent control flow
                    scripted = torch.jit.script(model)
            torch.jit.save(scripted, str(path))
        paths[fmt] = path
    return paths

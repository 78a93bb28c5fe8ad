"""Shared fixtures: the zoo models built and exported once per session into a temporary directory."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@dataclass
class ZooModel:
    """A zoo model, its example input and its exported files by format (onnx, pt2, pt)."""

    name: str
    module: torch.nn.Module
    example: torch.Tensor
    paths: dict[str, Path]


@pytest.fixture(scope="session")
def zoo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooModel]:
    from deepscope_server import zoo

    root = tmp_path_factory.mktemp("zoo")
    out: dict[str, ZooModel] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in zoo.ZOO:
            module, example = zoo.build(name)
            paths = zoo.export(module, example, root / name)
            out[name] = ZooModel(name, module, example, paths)
    return out

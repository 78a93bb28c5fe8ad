"""Shared fixtures: the zoo models built and exported once per session into a temporary directory."""

from __future__ import annotations

import shutil
import subprocess
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


#: The Node.js conformance client and buf (tests/conformance/node, locked by package-lock.json).
NODE_DIR = Path(__file__).resolve().parent / "conformance" / "node"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``npm ci`` of tests/conformance/node (package-lock.json); skipped where node or npm is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed (the Node.js conformance client and buf ship as npm packages)")
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return NODE_DIR / "node_modules"

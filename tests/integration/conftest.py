"""Integration fixtures: zoo models exported once, and a real server process on a loopback port."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import deepscope
from deepscope.embedded import EmbeddedServer

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins"


def _child_env() -> None:
    """Server children find the misbehaving test plugins and use one thread (2-core CI box)."""
    paths = [str(PLUGIN_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def exported(zoo_models) -> dict[str, dict[str, Path]]:
    """{zoo name: {format: path}} for the MLP, CNN and transformer in ONNX, .pt2 and TorchScript."""
    return {name: z.paths for name, z in zoo_models.items()}


@pytest.fixture(scope="session")
def torch_models(zoo_models) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    return {name: (z.module, z.example) for name, z in zoo_models.items()}


def start_server(store: Path, **flags) -> tuple[EmbeddedServer, str]:
    _child_env()
    server = EmbeddedServer(store=store, plugin_module="misbehaving", **flags)
    return server, server.start()


@pytest.fixture()
def servers():
    """Servers a test started; whatever happens, each is stopped at the end."""
    started: list = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[tuple[EmbeddedServer, str]]:
    server, address = start_server(tmp_path_factory.mktemp("store"))
    yield server, address
    server.stop()


@pytest.fixture()
def client(server) -> Iterator[deepscope.Client]:
    embedded, address = server
    with deepscope.connect(address, token=embedded.token, progress=False) as c:
        yield c

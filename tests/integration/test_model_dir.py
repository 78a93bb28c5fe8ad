"""Server-side models by name from --model-dir, and pickles only behind --trust-model-dir."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import deepscope

from .conftest import start_server
from .test_service import torch_outputs


@pytest.fixture()
def model_dir(tmp_path, exported, torch_models):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(exported["mlp"]["onnx"], folder / "mlp.onnx")
    torch.save(torch_models["mlp"][0], folder / "pickled.pt")  # a full pickle: can run code when loaded
    return folder


@pytest.mark.parametrize("trusted", [False, True])
def test_model_dir_by_name_and_pickle_trust(tmp_path, model_dir, torch_models, trusted):
    flags = {"model_dir": model_dir, "trust_model_dir": trusted}
    server, address = start_server(tmp_path / f"store-{trusted}", **flags)
    try:
        with deepscope.connect(address, token=server.token, progress=False) as client:
            listed = {m.name: m.info.source for m in client.models()}
            assert listed == {"mlp.onnx": "model_dir", "pickled.pt": "model_dir"}
            x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
            oracle = torch_outputs(torch_models["mlp"][0], x, ["fc2"])["fc2"]
            np.testing.assert_allclose(client.capture("mlp", x, layers=["fc2"])["fc2"], oracle, rtol=1e-5, atol=1e-6)
            if trusted:
                acts = client.capture("pickled.pt", x, layers=["fc2"])
                np.testing.assert_allclose(acts["fc2"], oracle, rtol=1e-5, atol=1e-6)
            else:
                with pytest.raises(deepscope.InvalidArgument, match="(?i)pickle"):
                    client.capture("pickled.pt", x, layers=["fc2"])
            with pytest.raises(deepscope.InvalidArgument, match="(?i)pickle"):
                client.upload_model(model_dir / "pickled.pt")  # never from clients, trust or not
            assert client.health() == "SERVING"
    finally:
        server.stop()

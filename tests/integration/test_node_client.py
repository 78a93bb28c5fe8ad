"""The protocol from another language: a Node.js client (tests/conformance/node/client.mjs, @grpc/grpc-js
from a committed lockfile) against a real server gets the same bytes and numbers as the Python SDK.

Skipped, with the reason, where node or npm is missing; `npm ci` (tests/conftest.py) needs the npm registry.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from google.rpc import status_pb2
from grpc_tools import protoc

import deepscope

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "conformance" / "node"
BATCH = 600  # conv1's output is 600*8*8*8*4 bytes = 1.5 MiB: more than one chunk


@pytest.fixture(scope="module")
def node_client(node_modules) -> Path:
    """The Node client, its dependencies installed exactly as locked."""
    return NODE_DIR / "client.mjs"


def _proto_path() -> str:
    """Our protos, protobuf's well-known types, and googleapis' google/rpc protos."""
    dirs = [ROOT / "proto", Path(protoc.__file__).parent / "_proto", Path(status_pb2.__file__).parents[2]]
    return os.pathsep.join(str(d) for d in dirs)


def _array(tensor: dict) -> np.ndarray:
    dtype = {"FP32": np.float32, "INT64": np.int64}[tensor["dtype"]]
    return np.frombuffer(base64.b64decode(tensor["data"]), dtype).reshape(tensor["shape"])


def test_node_client_matches_the_python_sdk(node_client, server, zoo_models, tmp_path) -> None:
    model_file = zoo_models["cnn"].paths["onnx"]
    x = np.random.default_rng(0).standard_normal((BATCH, 1, 8, 8)).astype(np.float32)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    embedded, address = server
    env = {**os.environ, "DEEPSCOPE_TOKEN": embedded.token or "", "DEEPSCOPE_PROTO_PATH": _proto_path()}
    done = subprocess.run(
        ["node", str(node_client), address, str(model_file), str(tmp_path / "x.bin"), str(BATCH)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr + embedded.log()[-3000:]
    node = json.loads(done.stdout)

    with deepscope.connect(address, token=embedded.token, progress=False) as client:
        model = client.upload_model(model_file)
        assert node["model_id"] == model.id and node["upload_chunks"] > 1  # content-addressed: same bytes
        assert node["protocol_version"] == client.server_info().protocol_version == 1
        layers = {row["name"]: row for row in node["layers"]}
        assert layers["conv1"]["kind"] == "conv" and ["weight", "FP32"] in layers["conv1"]["params"]

        # Capture: the same bytes, with a tensor that took several chunks.
        acts = client.capture(model, x, layers=["conv1", "fc"], batch_size=BATCH)
        captured = node["captured"]["tensors"]
        assert captured["layer/conv1"]["chunks"] > 1
        for layer in ("conv1", "fc"):
            assert np.array_equal(_array(captured[f"layer/{layer}"]), acts[layer], equal_nan=True)
        weights = client.weights(model, layers=["conv1"])["conv1"]
        for name, value in weights.items():
            assert np.array_equal(_array(node["weights"]["tensors"][f"conv1/{name}"]), value)

        # Analysis over the same rows in the same two batches: identical numbers.
        run = client.analyze(
            model,
            data=x,
            metrics=["cnt.node_strength", "example.activation_moments"],
            layers=["conv1", "fc"],
            batch_size=BATCH // 2,
        )
        assert node["run_status"] == "RUN_STATUS_COMPLETED" and node["run_in_list"]
        assert node["stored_results"] == len(node["results"]) > 0
        for result in node["results"]:
            assert result["status"] == "ok", result
            ours = run.result(result["metric"], result["layer"])
            for key, value in result["scalars"].items():
                assert value == ours[key] or (np.isnan(value) and np.isnan(ours[key])), (result, key)

    # Rich errors, decoded from grpc-status-details-bin with googleapis' protos alone.
    error = node["error"]
    assert error["code"] == 5 and error["details"]["ErrorInfo"]["reason"] == "UNKNOWN_MODEL"
    assert error["details"]["ResourceInfo"]["resourceType"] == "model"
    layer_error = node["layer_error"]["details"]
    assert layer_error["ErrorInfo"]["reason"] == "UNKNOWN_LAYER"
    assert "conv1" in layer_error["ErrorInfo"]["metadata"]["suggestions"].split(",")
    assert layer_error["BadRequest"]["fieldViolations"][0]["field"] == "layers"

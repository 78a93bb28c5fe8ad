"""A new user's path: models as exporters write them, scripts that never call close(), shared
stores, `--metrics all` on models a metric does not fit, and data that does not fit the model."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import deepscope
import deepscope.embedded
from deepscope import lock_record
from deepscope.v1 import introspection_pb2 as pb

from .helpers import launch, stop

CLI = [sys.executable, "-m", "deepscope.cli"]


def _net(seed: int, hidden: int = 32, activation: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(16, hidden), *([torch.nn.ReLU()] if activation else []), torch.nn.Linear(hidden, 5)]
    return torch.nn.Sequential(*layers).eval()


def _export(net: torch.nn.Module, path: Path, **kwargs) -> Path:
    """torch.onnx.export as users call it: the defaults unless a test says otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (torch.randn(2, 16),), str(path), **kwargs)
    return path


@pytest.fixture(scope="module")
def default_export(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """Every default: external data, optimiser on, and the example's batch (2) fixed."""
    net = _net(0)
    path = _export(net, tmp_path_factory.mktemp("export") / "net.onnx")
    return net, path


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory) -> Path:
    """The defaults but a dynamic batch, for runs over data (static batches are another issue's part)."""
    return _export(_net(0), tmp_path_factory.mktemp("export") / "dyn.onnx", dynamic_shapes=({0: "batch"},))


def _run(args: list[str], timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


@pytest.fixture()
def analyze_cli(server) -> Callable[..., subprocess.CompletedProcess]:
    """``deepscope analyze PATH ARGS... --quiet`` against the test server (its address and token)."""
    embedded, address = server

    def run(path: Path, *args: str) -> subprocess.CompletedProcess:
        return _run([*CLI, "analyze", str(path), *args, "--server", address, "--token", embedded.token, "--quiet"])

    return run


# ---------------------------------------------------------------- ONNX as exported


def test_default_onnx_export_uploads_with_its_external_data(client, default_export, tmp_path):
    net, path = default_export
    assert (path.parent / "net.onnx.data").is_file()  # what the exporter's defaults write
    model = client.upload_model(path)
    weights = client.weights(model)
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    got = sorted((w["weight"] for w in weights.values()), key=lambda w: w.shape)
    want = sorted((m.weight.detach().numpy() for m in linear), key=lambda w: w.shape)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    out = next(iter(client.capture(model, x).model_outputs.values()))
    np.testing.assert_allclose(out, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)

    assert client.upload_model(path).id == model.id  # same files, same model
    other = _export(_net(1), tmp_path / "net.onnx")  # same architecture, other weights: only the side file differs
    assert client.upload_model(other).id != model.id


def test_explicit_external_data_and_single_file_exports(client, tmp_path):
    net = _net(2, hidden=256)
    split = _export(net, tmp_path / "split" / "big.onnx", external_data=True)
    single = _export(net, tmp_path / "single" / "big.onnx", external_data=False)
    assert (split.parent / "big.onnx.data").is_file() and not (single.parent / "big.onnx.data").exists()
    x = np.ones((2, 16), np.float32)
    outputs = [next(iter(client.capture(client.upload_model(p), x).model_outputs.values())) for p in (split, single)]
    np.testing.assert_allclose(outputs[0], net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outputs[0], outputs[1])


def _with_location(path: Path, location: str) -> Path:
    """A copy of an exported model whose external data is said to live at ``location``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    out = path.parent / f"moved-{abs(hash(location))}.onnx"
    onnx.save(model, str(out))
    return out


def test_external_data_outside_the_model_directory_is_never_sent(client, default_export, tmp_path):
    _, path = default_export
    (path.parent.parent / "outside.data").write_bytes((path.parent / "net.onnx.data").read_bytes())
    with pytest.raises(ValueError, match="outside the model's directory"):
        client.upload_model(_with_location(path, "../outside.data"))
    with pytest.raises(FileNotFoundError, match="external data file 'gone.data' not found"):
        client.upload_model(_with_location(path, "gone.data"))


@pytest.mark.parametrize(
    "side_path, message",
    [
        ("../escape.data", "relative path inside the model's directory"),
        ("/etc/escape.data", "relative path inside the model's directory"),
        ("model", "reserved by the store"),
    ],
)
def test_server_refuses_side_files_that_could_escape(client, default_export, side_path, message):
    """A client that is not the SDK gets the same rules from the server."""
    _, path = default_export
    data = path.read_bytes()

    def requests():
        yield pb.UploadModelRequest(header=pb.UploadHeader(name="net.onnx", total_bytes=len(data)))
        yield pb.UploadModelRequest(chunk=data)
        yield pb.UploadModelRequest(file=pb.FileHeader(path=side_path, total_bytes=3))
        yield pb.UploadModelRequest(chunk=b"abc")

    with pytest.raises(deepscope.InvalidArgument, match=message):
        client._call(client._stub.UploadModel, requests())
    assert client.health() == "SERVING"


def test_cli_analyzes_a_default_onnx_export(analyze_cli, default_export):
    _, path = default_export
    result = analyze_cli(path, "--data", "synthetic", "--metrics", "cnt.link_weights")
    assert result.returncode == 0, result.stderr
    assert "cnt.link_weights" in result.stdout and "FAILED" not in result.stdout


# ---------------------------------------------------------------- metrics that do not apply; wrong data


def test_metrics_all_skips_what_does_not_apply_and_honours_exclude(tmp_path, analyze_cli):
    """A model without activation layers: modes.activation_rates is skipped (with its reason), never fatal."""
    path = _export(_net(3, activation=False), tmp_path / "linear.onnx", dynamic_shapes=({0: "batch"},))
    out = tmp_path / "r.json"
    result = analyze_cli(
        path,
        "--data",
        "synthetic",
        "--limit",
        "64",
        "--metrics",
        "all",
        "--exclude",
        "basins.*,fractal.*",
        "--exclude",
        "complexity.*",
        "--exclude",
        "dimension.*",
        "--exclude",
        "modes.fractions,modes.graded,cnt.neuron_*",  # the slow ones: a fast test
        "--exclude",
        "testing.*",  # the test server's misbehaving plugins
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["status"] == "completed"
    by_metric = {r["metric"]: r for r in data["results"]}
    assert not {m for m in by_metric if m.split(".")[0] in ("basins", "fractal", "complexity", "dimension")}
    assert {"modes.fractions", "cnt.neuron_strength"}.isdisjoint(by_metric)
    skipped = by_metric["modes.activation_rates"]
    assert skipped["status"] == "skipped" and "activation" in skipped["error"]
    assert by_metric["cnt.link_weights"]["status"] == "ok"
    assert "skipped: no layer to measure" in result.stdout


def test_sdk_exclude_and_only_skipped_metrics(client, dynamic_export):
    path = dynamic_export
    model = client.upload_model(path)
    run = client.analyze(model, data="synthetic", limit=32, metrics=["cnt.*"], exclude=["cnt.divergence", "cnt.n*"])
    assert run.status == "completed"
    assert "cnt.link_weights" in run.metrics
    assert not [m for m in run.metrics if m == "cnt.divergence" or m.startswith("cnt.n")]
    with pytest.raises(deepscope.InvalidArgument, match="no metric to run: no layer to measure"):
        client.analyze(model, data="synthetic", metrics=["modes.activation_rates"], layers=["kind:linear"])
    with pytest.raises(deepscope.NotFound, match="matches no metric"):
        client.analyze(model, data="synthetic", metrics=["cnt.*"], exclude=["cnt.typo"])


def test_wrong_data_is_refused_before_the_run_even_for_weight_metrics(client, analyze_cli, dynamic_export, tmp_path):
    path = dynamic_export
    model = client.upload_model(path)
    before = len(client.runs(1000))
    wrong = np.zeros((10, 7), np.float32)
    with pytest.raises(deepscope.InvalidArgument, match=r"expected FP32 \[\?, 16\], got FP32 \[10, 7\]"):
        client.analyze(model, data=wrong, metrics=["cnt.link_weights"])
    assert len(client.runs(1000)) == before  # no run was started

    np.save(tmp_path / "wrong.npy", wrong)
    result = analyze_cli(path, "--data", str(tmp_path / "wrong.npy"), "--metrics", "cnt.link_weights")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "expected FP32 [?, 16], got FP32 [10, 7]" in result.stderr


# ---------------------------------------------------------------- embedded servers


SCRIPT = """
import os, signal, sys
import deepscope
import deepscope.embedded
client = deepscope.Client.embedded(store=sys.argv[1], progress=False, no_entry_points=True)
assert client.health() == "SERVING"
if sys.argv[2] == "raise":
    raise RuntimeError("the user's script fails")
if sys.argv[2] == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for this test process to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_gone(store: Path, pid: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (_alive(pid) or lock_record.read_live(store) is not None):
        time.sleep(0.2)
    assert not _alive(pid), f"embedded server {pid} still running"
    assert lock_record.read_live(store) is None, "the store is still locked"


@pytest.mark.parametrize("ending", ["return", "raise", "sigkill"])
def test_a_script_that_never_closes_does_not_leak_its_server(tmp_path, ending):
    store = tmp_path / "store"
    result = _run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(store), ending])
    assert (result.returncode == 0) == (ending == "return"), result.stderr
    pid = lock_record.parse((store / "server.lock").read_text())["pid"]
    _wait_gone(store, pid)


def test_a_second_embedded_client_attaches_and_the_last_one_stops_the_server(tmp_path, default_export):
    store = tmp_path / "store"
    first = deepscope.Client.embedded(store=store, progress=False, no_entry_points=True)
    try:
        record = lock_record.read_live(store)
        assert stat.S_IMODE((store / "server.lock").stat().st_mode) == 0o600  # it holds the token
        with pytest.warns(UserWarning, match="attached to the embedded server already running"):
            second = deepscope.Client.embedded(store=store, progress=False, no_entry_points=True)
        assert lock_record.read_live(store)["pid"] == record["pid"]  # one server, shared
        model = second.upload_model(default_export[1])
        assert [m.id for m in first.models()] == [model.id]
        first.close()
        assert _alive(record["pid"]) and [m.id for m in second.models()] == [model.id]
    finally:
        first.close()
    second.close()
    _wait_gone(store, record["pid"])


def test_two_cli_runs_on_one_store_at_once_both_succeed(tmp_path, dynamic_export):
    path = dynamic_export
    store = tmp_path / "store"
    np.save(tmp_path / "x.npy", np.ones((8, 16), np.float32))
    args = [
        *CLI,
        "analyze",
        str(path),
        "--data",
        str(tmp_path / "x.npy"),
        "--metrics",
        "cnt.link_weights",
        "--store",
        str(store),
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err
        assert "completed" in out
    _wait_gone(store, lock_record.parse((store / "server.lock").read_text())["pid"])


def test_a_store_held_by_a_standalone_server_gets_advice_the_user_can_follow(tmp_path):
    """Its address and token are the user's own: the embedded client says to connect, it does not guess."""
    standalone, port = launch(tmp_path)  # its store: tmp_path / "store"
    store = tmp_path / "store"
    try:
        assert port > 0, standalone.communicate(timeout=10)[0]
        with pytest.raises(
            deepscope.embedded.EmbeddedServerError,
            match=f"not started embedded \\(pid {standalone.pid}\\); connect to it with --server",
        ):
            deepscope.Client.embedded(store=store, progress=False, no_entry_points=True)
        assert standalone.poll() is None  # left alone
    finally:
        stop(standalone)

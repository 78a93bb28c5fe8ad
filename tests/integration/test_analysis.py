"""Analyze over real gRPC: plugins from entry points, isolation, validation, cancellation, persistence."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import deepscope
from deepscope import times
from deepscope_metrics.plugins.cnt import NodeStrength
from deepscope_server.backends import load_model
from deepscope_server.testing import run_metric

from .conftest import start_server
from .helpers import analyze_slow, fail_alone, settled
from .test_service import torch_outputs


def digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    """Independent re-derivation of the server's 'digits' test split."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    _, x_test, _, y_test = train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)
    return x_test, y_test


def test_list_metrics_shows_plugin_and_parameters(client):
    table = client.metrics()
    row = table.set_index("name").loc["example.activation_moments"]
    assert row["plugin"] == "deepscope-example-plugin" and row["version"] == "0.2.0"
    assert row["params"] == {"reduce": "mean"} and row["needs"] == ["outputs"]


def test_streaming_metric_on_server_dataset_matches_torch(client, exported, torch_models):
    model = client.upload_model(exported["mlp"]["pt2"])
    run = client.analyze(
        model,
        data="digits",
        metrics=["example.activation_moments", "example.weight_spectrum"],
        layers=["fc1", "fc2"],
        batch_size=50,
    )
    assert run.status == "completed" and not run.failures
    x, _ = digits_test_split()
    assert run.info.num_samples == len(x)
    oracle = torch_outputs(torch_models["mlp"][0], x, ["fc1"])["fc1"].astype(np.float64)
    got = run.result("example.activation_moments", "fc1")
    np.testing.assert_allclose(got["mean"], oracle.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["variance"], oracle.var(axis=0), rtol=1e-4, atol=1e-6)
    w = torch_models["mlp"][0].fc2.weight.detach().numpy().astype(np.float64)
    spectrum = run.result("example.weight_spectrum", "fc2")
    assert spectrum["spectral_norm"] == pytest.approx(np.linalg.norm(w, 2), rel=1e-5)
    # Each metric's time is its own code's (measured in its worker), never more than the run's.
    assert all(0 < times.seconds(r.duration) <= times.seconds(run.info.duration) for r in run.results)
    assert times.as_datetime(run.info.created_time) <= times.as_datetime(run.info.finished_time)
    tidy = run.to_pandas()
    assert {"run", "checkpoint", "metric", "layer", "key", "kind", "value"} <= set(tidy.columns)
    again = client.get_run(run.id)
    assert again.status == "completed" and len(again.results) == len(run.results)


def test_client_streamed_batches_with_labels_and_sample_limit(client, exported):
    model = client.upload_model(exported["mlp"]["onnx"])
    x = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
    y = np.arange(300) % 10
    run = client.analyze(
        model, data=(x, y), metrics=["example.activation_moments"], layers=["fc1"], batch_size=64, limit=130
    )
    assert run.status == "completed" and run.info.num_samples == 130
    assert run.result("example.activation_moments", "fc1")["num_samples"] == 130


def test_weight_only_metrics_run_without_data(client, exported):
    model = client.upload_model(exported["cnn"]["onnx"])
    run = client.analyze(model, data=np.zeros((0, 1, 8, 8), np.float32), metrics=["example.weight_spectrum"])
    assert run.status == "completed" and run.info.num_samples == 0
    assert set(run.layers("example.weight_spectrum")) >= {"conv1", "fc"}


def test_misbehaving_metrics_fail_alone(client, exported):
    model = client.upload_model(exported["mlp"]["onnx"])
    failures = fail_alone(client, model, ["testing.raises", "testing.hangs", "testing.malformed"], metric_timeout=2.0)
    assert "boom from a plugin" in failures["testing.raises"]
    assert "time limit of 2 s" in failures["testing.hangs"]
    assert "malformed result" in failures["testing.malformed"]


def test_invalid_configs_are_refused_before_work(client, exported):
    model = client.upload_model(exported["mlp"]["onnx"])
    cases = [
        (
            dict(metrics=["example.activation_moments"], params={"example.activation_moments": {"bogus": 1}}),
            deepscope.InvalidArgument,
            "unknown parameter.*bogus.*valid: reduce",
        ),
        (
            dict(metrics=["example.activation_moments"], params={"example.activation_moments": {"reduce": "max"}}),
            deepscope.InvalidArgument,
            "must be one of mean, flatten",
        ),
        (
            dict(metrics=["fractal.box_dimension"], params={"fractal.box_dimension": {"restarts": 10**9}}),
            deepscope.InvalidArgument,
            "fractal.box_dimension: parameter 'restarts' must be <= 100, got 1000000000",
        ),
        (
            dict(metrics=["example.weight_spectrum"], layers=["act1"]),
            deepscope.InvalidArgument,
            "applies to layer kinds conv, linear.*activation",
        ),
        (dict(metrics=["example.nope"]), deepscope.NotFound, "matches no metric"),
        (dict(metrics=["example.activation_moments"], data="mnist"), deepscope.NotFound, "available: digits"),
        (
            dict(metrics=["example.activation_moments"], batch_size=100_000),
            deepscope.ResourceExhausted,
            "max_batch_size",
        ),
    ]
    before = len(client.runs(1000))
    for kwargs, error, message in cases:
        kwargs.setdefault("data", "digits")
        with pytest.raises(error, match=message):
            client.analyze(model, **kwargs)
    assert len(client.runs(1000)) == before  # nothing was started


def test_model_handle_reruns_the_model(client, exported):
    model = client.upload_model(exported["cnn"]["pt2"])
    run = client.analyze(model, data="synthetic", limit=16, metrics=["testing.rerun"], layers=["conv1", "fc"])
    assert run.status == "completed", run.failures
    for layer in ("conv1", "fc"):
        assert run.result("testing.rerun", layer)["max_abs_diff"] < 1e-5
    assert run.result("testing.rerun", "")["perturbed_output_change"] > 1e-3


def test_metric_worker_is_sent_only_its_layers_weights(client, exported, torch_models):
    """A worker measuring fc1 holds fc1's weights only; fc3's, read anyway, arrive on demand and are the module's."""
    model = client.upload_model(exported["mlp"]["pt2"])
    run = client.analyze(
        model,
        data=np.zeros((0, 64), np.float32),
        metrics=["testing.sees_weights"],
        layers=["fc1"],
        params={"testing.sees_weights": {"read": "fc3"}},
    )
    assert run.status == "completed", run.failures
    assert run.result("testing.sees_weights", "fc1")["held"] == "fc1"  # not fc2's, not fc3's
    w = torch_models["mlp"][0].fc3.weight.detach().numpy().astype(np.float64)
    assert run.result("testing.sees_weights", "")["read_sum"] == pytest.approx(w.sum(), rel=1e-6)


def test_cross_layer_weight_metric_gets_the_weights_it_reads(client, exported):
    """cnt.node_strength on conv1 folds bn1, whose weights its worker fetches: the result is the whole graph's."""
    model = client.upload_model(exported["cnn"]["pt2"])
    run = client.analyze(
        model, data=np.zeros((0, 1, 8, 8), np.float32), metrics=["cnt.node_strength"], layers=["conv1"]
    )
    assert run.status == "completed", run.failures
    local = run_metric(NodeStrength, load_model(exported["cnn"]["pt2"], device="cpu").graph, select=["conv1"])
    got = run.result("cnt.node_strength", "conv1")
    assert got["neuron_layer_end"] == local["conv1"]["neuron_layer_end"] == "bn1"  # bn1 folded in
    assert got["next_layers"] == local["conv1"]["next_layers"] and got["next_layers"]  # read the next conv
    for key in ("in_strength", "out_strength"):
        np.testing.assert_allclose(got[key], local["conv1"][key], rtol=1e-6)


def test_cancel_stops_the_run_and_marks_it(client, exported):
    model = client.upload_model(exported["mlp"]["onnx"])
    seen: list[str] = []

    class Stop(Exception):
        pass

    def on_event(event):
        if event.WhichOneof("event") == "started":
            seen.append(event.started.id)
        if event.WhichOneof("event") == "progress" and event.progress.done > 0:
            raise Stop

    started = time.monotonic()
    with pytest.raises(Stop):
        analyze_slow(client, model, 0.3, data="digits", split="all", batch_size=16, on_event=on_event)
    assert settled(lambda: client.get_run(seen[0])).status == "cancelled"
    # 1,797 samples / 16 per batch * 0.3 s would take > 30 s: the run stopped early.
    assert time.monotonic() - started < 15


def test_deadline_cancels_the_run(client, exported):
    model = client.upload_model(exported["mlp"]["onnx"])
    with pytest.raises(deepscope.DeadlineExceeded):
        analyze_slow(client, model, 0.3, data="digits", split="all", batch_size=16, timeout=2.0)
    assert settled(lambda: client.runs(1)[0]).status == "cancelled"


def test_checkpoint_series_gives_results_per_checkpoint(client, tmp_path):
    from deepscope_server import zoo

    paths = []
    for seed in (0, 1):
        model, example = zoo.build("mlp", seed=seed)
        paths.append(zoo.export(model, example, tmp_path / f"ckpt{seed}", formats=("onnx",))["onnx"])
    models = [client.upload_model(p, name=f"ckpt{i}.onnx") for i, p in enumerate(paths)]
    run = client.analyze(models, data="digits", limit=64, metrics=["example.weight_spectrum"], layers=["fc1"])
    norms = [run.result("example.weight_spectrum", "fc1", checkpoint=i)["spectral_norm"] for i in (0, 1)]
    for i, seed in enumerate((0, 1)):
        w = zoo.build("mlp", seed=seed)[0].fc1.weight.detach().numpy().astype(np.float64)
        assert norms[i] == pytest.approx(np.linalg.norm(w, 2), rel=1e-5)


def test_runs_and_models_survive_a_restart(tmp_path, exported):
    server, address = start_server(tmp_path / "store")
    try:
        with deepscope.connect(address, token=server.token, progress=False) as client:
            model = client.upload_model(exported["mlp"]["onnx"])
            run = client.analyze(model, data="digits", limit=64, metrics=["example.activation_moments"])
        process = server.process
        process.terminate()  # SIGTERM: graceful shutdown
        assert process.wait(30) == 0
    finally:
        server.stop()
    server, address = start_server(tmp_path / "store")
    try:
        with deepscope.connect(address, token=server.token, progress=False) as client:
            assert client.model(model.id).name == "model.onnx"
            again = client.get_run(run.id)
            assert again.status == "completed"
            np.testing.assert_array_equal(
                again.result("example.activation_moments", "fc1")["mean"],
                run.result("example.activation_moments", "fc1")["mean"],
            )
            assert client.capture(model.id, np.ones((1, 64), np.float32), layers=["fc1"])["fc1"].shape == (1, 32)
    finally:
        server.stop()

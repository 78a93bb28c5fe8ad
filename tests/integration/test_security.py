"""Security over real gRPC: token auth (file, environment, SDK, CLI), the non-loopback guard, TLS and
mutual TLS with throw-away certificates (made with the ``openssl`` command line), and models that
would run client code or allocate absurd sizes, refused through the real upload RPC."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

import deepscope
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import introspection_pb2_grpc as pb_grpc

from .helpers import launch, stop

TOKEN = "s3cret-token-for-tests-0123456789"


# ------------------------------------------------------------------ tokens


def test_token_required_health_open_sdk_and_env(server, monkeypatch):
    embedded, address = server
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.IntrospectionServiceStub(channel)
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", embedded.token)]):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer <token>" in info.value.details()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with deepscope.connect(address, token="not-the-token", progress=False) as client:
        assert client.health() == "SERVING"
        with pytest.raises(deepscope.Unauthenticated):
            client.models()
    monkeypatch.setenv("DEEPSCOPE_TOKEN", embedded.token)
    with deepscope.connect(address, progress=False) as client:  # token from $DEEPSCOPE_TOKEN
        client.models()


def test_cli_token_flag_and_environment(server):
    embedded, address = server
    cli = [str(Path(sys.executable).parent / "deepscope")]
    env = {k: v for k, v in os.environ.items() if k != "DEEPSCOPE_TOKEN"}
    bad = subprocess.run([*cli, "models", "--server", address], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "token" in (bad.stderr + bad.stdout).lower()
    ok = subprocess.run(
        [*cli, "models", "--server", address, "--token", embedded.token],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    ok = subprocess.run(
        [*cli, "models", "--server", address],
        env={**env, "DEEPSCOPE_TOKEN": embedded.token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr


def test_non_loopback_needs_auth_or_explicit_opt_out(tmp_path):
    proc, port = launch(tmp_path, "--host", "0.0.0.0")
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0 and port == 0
    assert "refusing to bind 0.0.0.0 without auth" in out and "--allow-unauthenticated" in out
    proc, port = launch(tmp_path, "--host", "0.0.0.0", "--allow-unauthenticated")
    try:
        assert port > 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            # No token configured: the explicit opt-out means open.
            pb_grpc.IntrospectionServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    finally:
        stop(proc)


# ------------------------------------------------------------------ TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-subj",
        f"/CN={name}",
        cwd=d,
    )


def _make_cert(d: Path, name: str, ca: str, san: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=d,
    )
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        f"{name}.crt",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    _make_ca(d, "ca")
    _make_ca(d, "rogue")
    _make_cert(d, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    _make_cert(d, "client", "ca", "DNS:client")
    _make_cert(d, "intruder", "rogue", "DNS:intruder")
    return d


@contextlib.contextmanager
def _tls_server(store: Path, certs: Path, *args: str) -> Iterator[str]:
    """A server with the test CA's server certificate and TOKEN from its environment; yields its address."""
    tls = ("--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"))
    proc, port = launch(store, *tls, *args, env={"DEEPSCOPE_AUTH_TOKEN": TOKEN})
    try:
        assert port > 0, proc.communicate(timeout=10)[0]
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


def test_tls_with_token_from_environment(tmp_path, certs):
    root = (certs / "ca.crt").read_bytes()
    with _tls_server(tmp_path, certs) as address:
        with deepscope.connect(address, token=TOKEN, root_certificates=root, progress=False) as client:
            assert client.health() == "SERVING"
            assert client.models() == []
        with deepscope.connect(address, token=None, root_certificates=root, progress=False) as client:
            with pytest.raises(deepscope.Unauthenticated):
                client.models()
        with deepscope.connect(
            address, token=TOKEN, root_certificates=(certs / "rogue.crt").read_bytes(), progress=False, timeout=5
        ) as client:
            with pytest.raises(deepscope.Unavailable):  # the server's certificate is not trusted
                client.models()
        with deepscope.connect(address, token=TOKEN, progress=False, timeout=5) as client:  # plaintext to a TLS port
            with pytest.raises(deepscope.Unavailable):
                client.models()


def test_mutual_tls(tmp_path, certs):
    root = (certs / "ca.crt").read_bytes()
    with _tls_server(tmp_path, certs, "--tls-client-ca", str(certs / "ca.crt")) as address:

        def attempt(name: str | None) -> str:
            kwargs = {}
            if name:
                kwargs = dict(
                    client_certificate=(certs / f"{name}.crt").read_bytes(),
                    client_key=(certs / f"{name}.key").read_bytes(),
                )
            with deepscope.connect(
                address, token=TOKEN, root_certificates=root, progress=False, timeout=5, **kwargs
            ) as client:
                try:
                    client.models()
                    return "ok"
                except deepscope.DeepscopeError as exc:
                    return exc.code.name

        assert attempt("client") == "ok"
        assert attempt(None) == "UNAVAILABLE"  # handshake refused: no client certificate
        assert attempt("intruder") == "UNAVAILABLE"  # signed by another CA


# ------------------------------------------------------------------ models never run client code


def _upload_error(client: deepscope.Client, data: bytes, name: str) -> deepscope.DeepscopeError:
    with pytest.raises(deepscope.DeepscopeError) as info:
        client.upload_model(data, name=name)
    assert info.value.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), info.value
    return info.value


def _torch_pickle() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2), buffer)  # a pickled module: loading it would run code
    return buffer.getvalue()


def _onnx_model(initializer: onnx.TensorProto, node: onnx.NodeProto | None = None) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = node or helper.make_node("Add", ["x", initializer.name], ["y"])
    graph = helper.make_graph([node], "g", [x], [y], [initializer])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("evil.ops", 1)]
    ).SerializeToString()


def _external(location: str) -> bytes:
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [1, 4], np.zeros(4, np.float32).tobytes(), raw=True)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    tensor.external_data.add(key="length", value="16")
    return _onnx_model(tensor)


def test_uploads_that_would_run_code_or_escape_are_refused(client):
    before = {m.id for m in client.models()}
    assert "pickle" in _upload_error(client, _torch_pickle(), "evil.pt").details.lower()
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 4], np.zeros(4, np.float32))
    custom = helper.make_node("Backdoor", ["x", "w"], ["y"], domain="evil.ops")
    assert "custom domain 'evil.ops'" in _upload_error(client, _onnx_model(w, custom), "custom.onnx").details
    for location in ("../../../../etc/passwd", "/etc/passwd", "sub/../../deepscope.db"):
        message = _upload_error(client, _external(location), "escape.onnx").details
        assert "outside the model" in message, message
    assert {m.id for m in client.models()} == before


def test_absurd_declared_sizes_are_refused_before_allocating(client, server):
    embedded, _ = server
    before = {m.id for m in client.models()}
    huge = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**6, 10**6])  # 10^12 elements, no data
    message = _upload_error(client, _onnx_model(huge), "huge.onnx").details
    assert "max_tensor_elements" in message and "1,000,000,000,000 elements" in message
    # Archive bombs posing as torch.export and TorchScript files: 256 MiB of zeros in ~250 kB.
    for name, marker in (("bomb.pt2", "archive/archive_format"), ("bomb.pt", "archive/code/__torch__.py")):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(marker, "pt2")
            archive.writestr("archive/constants.pkl", b"")
            archive.writestr("archive/data/0", bytes(256 << 20))
        message = _upload_error(client, buffer.getvalue(), name).details
        assert "decompression bomb" in message and "268,435,456" in message
    assert {m.id for m in client.models()} == before
    assert not [p for p in (embedded.store / "models").iterdir() if p.name not in before]

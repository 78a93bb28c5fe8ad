"""Assembles the grpc.aio server: servicer, health, reflection, interceptors; the console script."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import introspection_pb2_grpc as pb_grpc

from . import __version__, heap, reflection
from .config import Settings, settings_from_args
from .errors import StorageFull
from .gate import GateInterceptor
from .isolation import configure_workers
from .models import ModelManager
from .plugins import load_registry
from .service import IntrospectionService
from .store import Store, StoreInUse, StoreUnusable
from .wire import DecodeInterceptor

log = logging.getLogger("deepscope_server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IntrospectionService"].full_name


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service: IntrospectionService
    models: ModelManager
    store: Store

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING first (load balancers drain), cancel runs, then let calls finish."""
        await self.health.enter_graceful_shutdown()
        for cancel in list(self.service.active_cancels):
            cancel.set()
        await self.server.stop(grace)
        self.service.segments.close()  # shared-memory captures no client took
        self.service.input_segments.close()
        self.models.close()
        self.store.close()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        if settings.tls_key or settings.tls_client_ca:
            raise SystemExit("--tls-key / --tls-client-ca need --tls-cert")
        return None
    if not settings.tls_key:
        raise SystemExit("--tls-cert needs --tls-key")
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


async def start_server(settings: Settings, extra_plugins: list[Any] = ()) -> RunningServer:
    """Build and start a server; returns once it is SERVING."""
    if not settings.loopback and not settings.auth_token and not settings.allow_unauthenticated:
        raise SystemExit(
            f"refusing to bind {settings.host} without auth: pass --auth-token-file, or --allow-unauthenticated "
            "if the network is trusted"
        )
    try:
        store = Store(settings.store)
    except (StoreInUse, StoreUnusable, StorageFull) as exc:  # one line for the operator, no traceback
        raise SystemExit(str(exc)) from None
    models = ModelManager(
        store,
        settings.model_dir,
        settings.trust_model_dir,
        settings.device,
        limits=settings.limits,
        isolation=settings.model_isolation,
    )
    modules = []
    for dotted in settings.plugin_modules:
        try:
            modules.append(importlib.import_module(dotted))
        except ImportError as exc:
            raise SystemExit(f"--plugin-module {dotted}: {exc}") from None
    registry = load_registry(settings.entry_points, settings.plugins, [*modules, *extra_plugins])
    for error in registry.errors:
        log.warning(error)
    preload = []
    if settings.metric_isolation == "process":
        preload += sorted({entry.cls.__module__ for entry in registry.metrics.values()})
    if settings.model_isolation == "process":
        # Model workers start from the forkserver with torch and onnxruntime already imported.
        preload += [
            "deepscope_server.sandbox",
            "deepscope_server.models",
            "deepscope_server.backends.torch_backend",
            "deepscope_server.backends.onnx_backend",
        ]
    if preload:
        configure_workers(preload)
    # Handlers wait on models (one run at a time per model) in executor threads: a pool much
    # larger than the CPU count keeps many concurrent clients from queueing behind each other.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=max(32, 8 * settings.workers), thread_name_prefix="deepscope-blocking")
    )
    limit = settings.limits.max_message_bytes
    server = grpc.aio.server(
        ThreadPoolExecutor(max_workers=settings.workers),
        interceptors=[GateInterceptor(settings.auth_token), DecodeInterceptor()],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    service = IntrospectionService(settings, store, models, registry)
    pb_grpc.add_IntrospectionServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable(server, [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    address = f"{settings.host}:{settings.port}"
    credentials = _credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"could not bind {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    if settings.port_file:
        settings.port_file.write_text(str(port))
    log.info(
        "deepscope-server %s listening on %s:%d (%d metrics, store %s)",
        __version__,
        settings.host,
        port,
        len(registry.metrics),
        settings.store,
    )
    return RunningServer(server, port, health_servicer, service, models, store)


async def serve(settings: Settings) -> None:
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await running.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = settings_from_args(argv)
    heap.keep_freed_memory()
    if settings.check_store or settings.rebuild_catalogue:  # maintenance commands: no server
        from .storecheck import check_store, rebuild_catalogue

        raise SystemExit((rebuild_catalogue if settings.rebuild_catalogue else check_store)(settings.store))
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

"""Server settings and limits: command-line flags, each with a DEEPSCOPE_* environment variable."""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

GiB = 1 << 30
MiB = 1 << 20


@dataclass
class Limits:
    """Every limit fails with RESOURCE_EXHAUSTED naming the limit and the size."""

    max_model_bytes: int = 2 * GiB
    max_message_bytes: int = 64 * MiB
    max_tensor_elements: int = 1 << 28
    max_batch_size: int = 4096
    max_capture_bytes: int = 2 * GiB
    max_concurrent_runs: int = 4
    max_run_seconds: float = 3600.0
    metric_timeout_seconds: float = 600.0
    #: Address-space limit (RLIMIT_AS) of each metric worker process (process isolation only).
    metric_memory_bytes: int = 8 * GiB
    #: Address-space limit (RLIMIT_AS) of each model worker process (model isolation "process").
    model_memory_bytes: int = 8 * GiB
    #: Time limits of a model worker: loading (parse + checks + load) and one forward pass.
    max_load_seconds: float = 300.0
    max_forward_seconds: float = 600.0
    #: Same-host captures: a shared-memory segment the client has not freed is unlinked after this
    #: many seconds; 0 turns the shared-memory path off (every capture streams over gRPC).
    shared_memory_seconds: float = 120.0


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    store: Path = field(default_factory=lambda: Path.home() / ".deepscope" / "store")
    model_dir: Path | None = None
    trust_model_dir: bool = False
    reflection: bool = True
    entry_points: bool = True
    plugins: set[str] | None = None
    plugin_modules: list[str] = field(default_factory=list)
    device: str = "auto"
    auth_token: str | None = None
    allow_unauthenticated: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    port_file: Path | None = None
    workers: int = 4
    #: "process": each metric instance of a run in its own worker process (a crash or a memory
    #: blow-up fails only that metric); "thread": in-server threads (trusted, fast metrics).
    metric_isolation: str = "process"
    #: "process": client models load and run in sandboxed worker processes (memory cap, real
    #: deadlines, crashes contained); "thread": in the server process (trusted models, no copy).
    model_isolation: str = "process"
    #: "local": runs execute in this server; "ray": each checkpoint of a run is a task on a Ray
    #: cluster (``ray_executor.py``, docs/scale.md).
    executor: str = "local"
    ray_address: str = "auto"  #: what ``ray.init(address=...)`` gets: "auto", "ray://host:10001", "host:6379"
    ray_gpus_per_task: float = 0.0  #: GPUs each Ray task asks for (0: CPU-only tasks)
    ray_data_shards: int = 0  #: data shards per checkpoint for mergeable metrics (0: from the cluster's CPUs)
    #: Maintenance commands (no server starts): see storecheck.py.
    check_store: bool = False
    rebuild_catalogue: bool = False
    limits: Limits = field(default_factory=Limits)

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1", "[::1]") or self.host.startswith("127.")


def _env(name: str, default: object) -> object:
    return os.environ.get(f"DEEPSCOPE_{name.upper()}", default)


def _flag(name: str) -> bool:
    """A boolean environment variable: 1/true/yes/on (anything else, including 0, is false)."""
    return str(_env(name, "")).strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepscope-server",
        description="deepscope gRPC introspection server. Every flag has an environment variable "
        "DEEPSCOPE_<FLAG> (e.g. DEEPSCOPE_PORT, DEEPSCOPE_MAX_MODEL_BYTES).",
    )
    d = Settings()
    p.add_argument("--host", default=_env("host", d.host), help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=int(_env("port", d.port)), help="0 picks a free port")
    p.add_argument("--port-file", type=Path, default=_env("port_file", None), help="write the bound port here")
    p.add_argument("--store", type=Path, default=Path(str(_env("store", d.store))), help="models and runs")
    p.add_argument("--model-dir", type=Path, default=_env("model_dir", None), help="server-side models by name")
    p.add_argument("--trust-model-dir", action="store_true", default=_flag("trust_model_dir"),
                   help="allow pickled torch modules from --model-dir (they can run code)")
    p.add_argument("--no-reflection", action="store_true", default=_flag("no_reflection"))
    p.add_argument("--no-entry-points", action="store_true", default=_flag("no_entry_points"),
                   help="load no plugins from entry points")
    p.add_argument("--plugins", default=_env("plugins", None), help="comma-separated allow-list of plugins")
    p.add_argument("--plugin-module", action="append", dest="plugin_modules",
                   default=[m for m in str(_env("plugin_modules", "")).split(",") if m],
                   help="register a plugin module directly, without an entry point (repeatable; for development)")
    p.add_argument("--device", default=_env("device", "auto"), choices=["auto", "cpu", "cuda"])
    p.add_argument("--auth-token-file", type=Path, default=_env("auth_token_file", None))
    p.add_argument("--allow-unauthenticated", action="store_true", default=_flag("allow_unauthenticated"),
                   help="required to bind a non-loopback address without a token")
    p.add_argument("--tls-cert", type=Path, default=_env("tls_cert", None))
    p.add_argument("--tls-key", type=Path, default=_env("tls_key", None))
    p.add_argument("--tls-client-ca", type=Path, default=_env("tls_client_ca", None),
                   help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--workers", type=int, default=int(_env("workers", d.workers)))
    p.add_argument("--metric-isolation", choices=["process", "thread"],
                   default=_env("metric_isolation", d.metric_isolation),
                   help="run each metric in a worker process (default; a crash fails only that metric) "
                   "or in a server thread (trusted, fast metrics)")
    p.add_argument("--model-isolation", choices=["process", "thread"],
                   default=_env("model_isolation", d.model_isolation),
                   help="load and run client models in sandboxed worker processes (default) or in the server "
                   "process (trusted models only)")
    p.add_argument("--executor", choices=["local", "ray"], default=_env("executor", d.executor),
                   help="run analyses in this server (default) or spread their checkpoints over a Ray cluster "
                   "(needs deepscope-server[ray]; see docs/scale.md)")
    p.add_argument("--ray-address", default=_env("ray_address", d.ray_address),
                   help="the Ray cluster to join with --executor ray (default auto: the local `ray start` cluster)")
    p.add_argument("--ray-gpus-per-task", type=float, default=float(_env("ray_gpus_per_task", d.ray_gpus_per_task)),
                   help="GPUs each Ray task asks for (e.g. 1 with --device cuda); 0 keeps tasks CPU-only")
    p.add_argument("--ray-data-shards", type=int, default=int(_env("ray_data_shards", d.ray_data_shards)),
                   help="split a checkpoint's data over this many Ray tasks for metrics that can merge "
                   "(0: as many as the cluster's CPUs allow; 1: never split)")
    store_commands = p.add_mutually_exclusive_group()  # commands, not settings: no environment variables
    store_commands.add_argument("--check-store", action="store_true",
                                help="check the store (SQLite integrity, catalogue vs model files), print a report "
                                "and exit: 0 if clean, 1 if not; starts no server")
    store_commands.add_argument("--rebuild-catalogue", action="store_true",
                                help="rebuild the model catalogue from the model files in the store (runs are kept "
                                "when readable) and exit; starts no server")
    for name, value in vars(Limits()).items():
        kind = float if isinstance(value, float) else int
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=kind(_env(name, value)))
    return p


def settings_from_args(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    token = None
    if args.auth_token_file:
        token = Path(args.auth_token_file).read_text().strip()
        if not token:
            raise SystemExit(f"auth token file {args.auth_token_file} is empty")
    elif os.environ.get("DEEPSCOPE_AUTH_TOKEN"):
        # Taken out of the environment so no worker process (models, metrics) inherits it.
        token = os.environ.pop("DEEPSCOPE_AUTH_TOKEN").strip()
    if token is not None and len(token) < 16:
        raise SystemExit("the auth token must be at least 16 characters (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise SystemExit("--executor ray needs Ray, which is not installed: pip install 'deepscope-server[ray]'")
    if args.ray_gpus_per_task < 0 or args.ray_data_shards < 0:
        raise SystemExit("--ray-gpus-per-task and --ray-data-shards must be >= 0")
    limits = Limits(**{name: getattr(args, name) for name in vars(Limits())})
    return Settings(
        host=args.host, port=args.port, store=args.store, model_dir=args.model_dir,
        trust_model_dir=args.trust_model_dir, reflection=not args.no_reflection,
        entry_points=not args.no_entry_points,
        plugins={p.strip() for p in args.plugins.split(",") if p.strip()} if args.plugins else None,
        plugin_modules=list(args.plugin_modules), device=args.device, auth_token=token, allow_unauthenticated=args.allow_unauthenticated,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        port_file=args.port_file, workers=args.workers, metric_isolation=args.metric_isolation,
        model_isolation=args.model_isolation, executor=args.executor, ray_address=args.ray_address,
        ray_gpus_per_task=args.ray_gpus_per_task, ray_data_shards=args.ray_data_shards,
        check_store=args.check_store, rebuild_catalogue=args.rebuild_catalogue,
        limits=limits,
    )

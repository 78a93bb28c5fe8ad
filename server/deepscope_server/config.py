"""Server settings and limits, each declared once.

Every field below carries an :func:`option` in its metadata; :func:`build_parser` generates its
command-line flag (``--field-name``) and :func:`settings_from_args` reads its environment variable
(``DEEPSCOPE_FIELD_NAME``) from that one declaration. This is the only module that reads the
server's environment: the values are passed down (``Settings``, ``Limits``) so a worker process
or a Ray task sees exactly what the server was started with. A bad value stops the start with one
line naming the flag or variable and what it accepts (exit code 2), before anything is opened.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

GiB = 1 << 30
MiB = 1 << 20
ENV_PREFIX = "DEEPSCOPE_"


@dataclass(frozen=True)
class Option:
    """How one setting appears outside Python: its flag, its environment variable, what it accepts."""

    help: str
    flag: str | None = ""  #: "" derives ``--field-name``; None: no flag (e.g. a secret: it would show in ``ps``)
    env: str | None = ""  #: "" derives ``DEEPSCOPE_FIELD_NAME``; None: no variable (commands, not settings)
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    #: A boolean spelt as its negation (``--no-reflection`` / ``DEEPSCOPE_NO_REFLECTION=1`` turn it off).
    negated: bool = False


def option(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None, **how: Any) -> Any:
    """A dataclass field whose metadata declares its flag and environment variable."""
    meta = {"option": Option(help, **how)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


SIZE = {"minimum": 0}  # bytes and counts: 0 or more
TIME = {"minimum": 0}  # seconds


def isolation_option(help: str) -> Any:
    """Where untrusted code runs: ``process`` (the default: worker processes) or ``thread`` (in the server)."""
    return option("process", help, choices=("process", "thread"))


@dataclass
class Limits:
    """Every limit fails with RESOURCE_EXHAUSTED naming the limit and the size."""

    max_model_bytes: int = option(2 * GiB, "largest model file an upload or the model directory may hold", **SIZE)
    max_message_bytes: int = option(64 * MiB, "largest gRPC message, either way", minimum=1)
    max_tensor_elements: int = option(1 << 28, "largest tensor (elements) a model may declare or produce", **SIZE)
    max_batch_size: int = option(4096, "largest batch of one request", minimum=1)
    max_capture_bytes: int = option(2 * GiB, "largest capture one request may return", **SIZE)
    max_concurrent_runs: int = option(4, "analyses running at once; more wait", minimum=1)
    max_run_seconds: float = option(3600.0, "time limit of one analysis", **TIME)
    metric_timeout_seconds: float = option(600.0, "time limit of one metric in a run", **TIME)
    metric_memory_bytes: int = option(
        8 * GiB,
        "address-space limit (RLIMIT_AS) of each metric worker process (--metric-isolation process; 0: none)",
        **SIZE,
    )
    model_memory_bytes: int = option(
        8 * GiB,
        "address-space limit (RLIMIT_AS) of each model worker process (--model-isolation process; 0: none)",
        **SIZE,
    )
    max_load_seconds: float = option(300.0, "time limit of loading a model in a worker (parse, checks, load)", **TIME)
    max_forward_seconds: float = option(600.0, "time limit of one forward pass in a model worker", **TIME)
    shared_memory_seconds: float = option(
        120.0,
        "same-host captures: a shared-memory segment the client has not freed is unlinked after this many "
        "seconds; 0 turns the shared-memory path off (every capture streams over gRPC)",
        **TIME,
    )
    #: A CPU budget rather than a size, but it must reach every model worker, as the limits do.
    ort_threads: int = option(
        0, "intra-op threads of each ONNX Runtime session (0: onnxruntime's default, one per core)", **SIZE
    )


@dataclass
class Settings:
    host: str = option("127.0.0.1", "bind address (default loopback)")
    port: int = option(50051, "0 picks a free port", minimum=0, maximum=65535)
    port_file: Path | None = option(None, "write the bound port here")
    store: Path = option(help="models and runs", factory=lambda: Path.home() / ".deepscope" / "store")
    model_dir: Path | None = option(None, "server-side models by name")
    trust_model_dir: bool = option(False, "allow pickled torch modules from --model-dir (they can run code)")
    reflection: bool = option(True, "turn gRPC server reflection off", negated=True)
    entry_points: bool = option(True, "load no plugins from entry points", negated=True)
    plugins: set[str] | None = option(
        None, "comma-separated allow-list of plugins (entry point or distribution names; default all)"
    )
    plugin_modules: list[str] = option(
        help="register a plugin module directly, without an entry point (repeatable, or comma-separated in the "
        "variable; for development)",
        factory=list,
        flag="--plugin-module",
    )
    device: str = option("auto", "where models run", choices=("auto", "cpu", "cuda"))
    auth_token_file: Path | None = option(None, "a file holding the auth token clients must send")
    auth_token: str | None = option(
        None,
        "the auth token itself (no flag: it would show in ps); taken out of "
        "the environment at start so no worker inherits it",
        flag=None,
    )
    allow_unauthenticated: bool = option(False, "required to bind a non-loopback address without a token")
    tls_cert: Path | None = option(None, "server certificate (PEM); turns TLS on")
    tls_key: Path | None = option(None, "private key of --tls-cert (PEM)")
    tls_client_ca: Path | None = option(None, "require client certificates signed by this CA (mutual TLS)")
    workers: int = option(4, "gRPC worker threads", minimum=1)
    metric_isolation: str = isolation_option(
        "run each metric in a worker process (default; a crash or a memory blow-up fails only that "
        "metric) or in a server thread (trusted, fast metrics)"
    )
    model_isolation: str = isolation_option(
        "load and run client models in sandboxed worker processes (default: memory cap, real "
        "deadlines, crashes contained) or in the server process (trusted models only)"
    )
    executor: str = option(
        "local",
        "run analyses in this server (default) or spread their checkpoints over a "
        "Ray cluster (needs deepscope-server[ray]; see docs/scale.md)",
        choices=("local", "ray"),
    )
    ray_address: str = option(
        "auto",
        "the Ray cluster to join with --executor ray: auto (the local `ray start` "
        "cluster), ray://host:10001 or host:6379",
    )
    ray_gpus_per_task: float = option(
        0.0, "GPUs each Ray task asks for (e.g. 1 with --device cuda); 0 keeps tasks CPU-only", minimum=0
    )
    ray_data_shards: int = option(
        0,
        "split a checkpoint's data over this many Ray tasks for metrics that can "
        "merge (0: as many as the cluster's CPUs allow; 1: never split)",
        minimum=0,
    )
    # Maintenance commands (no server starts; see storecheck.py): flags only, never from the environment.
    check_store: bool = option(
        False,
        "check the store (SQLite integrity, catalogue vs model files), print a "
        "report and exit: 0 if clean, 1 if not; starts no server",
        env=None,
    )
    rebuild_catalogue: bool = option(
        False,
        "rebuild the model catalogue from the model files in the store (runs "
        "are kept when readable) and exit; starts no server",
        env=None,
    )
    limits: Limits = field(default_factory=Limits)

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1", "[::1]") or self.host.startswith("127.")


# ---------------------------------------------------------------- the declarations, read


@dataclass(frozen=True)
class Declared:
    """One setting with its flag, variable and parser, as generated from its field."""

    owner: type  # Settings or Limits
    name: str
    kind: Any  # the field's resolved type
    default: Any
    option: Option

    @property
    def flag(self) -> str | None:
        if self.option.flag is None:
            return None
        return self.option.flag or "--" + ("no-" if self.option.negated else "") + self.name.replace("_", "-")

    @property
    def env(self) -> str | None:
        if self.option.env is None:
            return None
        return self.option.env or ENV_PREFIX + ("NO_" if self.option.negated else "") + self.name.upper()

    def parse(self, text: str) -> Any:
        """One value from its text; ValueError says what is accepted."""
        base = _base_type(self.kind)
        if base is bool:
            word = text.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")
            return (word in _TRUE) != self.option.negated
        if base in (int, float):
            return _number(base, text, self.option)
        if base is Path:
            return Path(text)
        if base in (set, list):
            items = [item.strip() for item in text.split(",") if item.strip()]
            return (set(items) or None) if base is set else items  # an empty allow-list: all
        if self.option.choices and text not in self.option.choices:
            raise ValueError(f"expected one of {', '.join(self.option.choices)}")
        return text


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _base_type(kind: Any) -> Any:
    """``Path | None`` -> Path, ``set[str] | None`` -> set, ``int`` -> int."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args and typing.get_origin(kind) not in (set, list):
        kind = args[0]
    return typing.get_origin(kind) or kind


def _number(kind: type, text: str, opt: Option) -> int | float:
    low, high = opt.minimum, opt.maximum
    accepted = (
        ("an integer" if kind is int else "a number")
        + (f" >= {low:g}" if low is not None else "")
        + (f" and <= {high:g}" if high is not None else "")
    )
    try:
        value = kind(text.strip())
    except ValueError:
        raise ValueError(f"expected {accepted}") from None
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"expected {accepted}")
    return value


def declared() -> list[Declared]:
    """Every setting of Settings and Limits (Settings.limits itself is their container, not a setting)."""
    out = []
    for owner in (Settings, Limits):
        hints = typing.get_type_hints(owner)
        for f in fields(owner):
            if "option" in f.metadata:
                out.append(Declared(owner, f.name, hints[f.name], _default(f), f.metadata["option"]))
    return out


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


# ---------------------------------------------------------------- flags and environment


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; an operator needs the one line that is wrong."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Flags generated from the declarations; no defaults here (they come from the dataclasses)."""
    p = _OneLineParser(
        prog="deepscope-server",
        argument_default=argparse.SUPPRESS,
        description="deepscope gRPC introspection server. Every setting is a flag and an environment variable "
        "DEEPSCOPE_<FLAG> (e.g. DEEPSCOPE_PORT, DEEPSCOPE_MAX_MODEL_BYTES); a flag wins over its variable.",
    )
    commands = p.add_mutually_exclusive_group()  # commands, not settings: no environment variables
    for d in declared():
        if d.flag is None:
            continue
        shown = "" if d.default in (None, [], False) or _base_type(d.kind) is bool else f"default {d.default}; "
        help_text = f"{d.option.help} [{shown}env {d.env}]" if d.env else d.option.help
        target = commands if d.env is None else p
        if _base_type(d.kind) is bool:
            target.add_argument(d.flag, dest=d.name, action="store_const", const=not d.option.negated, help=help_text)
        elif _base_type(d.kind) is list:
            target.add_argument(d.flag, dest=d.name, action="append", type=_flag_type(d), help=help_text)
        else:
            metavar = "{" + ",".join(d.option.choices) + "}" if d.option.choices else None
            target.add_argument(d.flag, dest=d.name, type=_flag_type(d), metavar=metavar, help=help_text)
    return p


def _flag_type(d: Declared) -> Callable[[str], Any]:
    """argparse's ``type=``: a repeated list flag takes one item per use."""

    def convert(text: str) -> Any:
        try:
            return text if _base_type(d.kind) is list else d.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None

    return convert


def settings_from_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags over environment over defaults; a bad value exits with one line (code 2)."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    values: dict[type, dict[str, Any]] = {Settings: {}, Limits: {}}
    for d in declared():
        text = environ.get(d.env, "").strip() if d.env else ""
        if d.name in given:
            values[d.owner][d.name] = given[d.name]
        elif text:
            try:
                values[d.owner][d.name] = d.parse(text)
            except ValueError as exc:
                parser.error(f"{d.env}={text!r}: {exc}")
    settings = Settings(**values[Settings], limits=Limits(**values[Limits]))
    settings.auth_token = _auth_token(settings, parser)
    if settings.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise SystemExit("--executor ray needs Ray, which is not installed: pip install 'deepscope-server[ray]'")
    return settings


def _auth_token(settings: Settings, parser: argparse.ArgumentParser) -> str | None:
    """The token from --auth-token-file, else from DEEPSCOPE_AUTH_TOKEN; at least 16 characters."""
    os.environ.pop("DEEPSCOPE_AUTH_TOKEN", None)  # so no worker process (models, metrics) inherits it
    token = settings.auth_token
    if settings.auth_token_file:
        try:
            token = settings.auth_token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"--auth-token-file {settings.auth_token_file}: {exc.strerror or exc}")
        if not token:
            parser.error(f"--auth-token-file {settings.auth_token_file} is empty")
    token = token.strip() if token else None
    if token is not None and len(token) < 16:
        parser.error(
            "the auth token must be at least 16 characters (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    return token

"""Usage checks the client can make itself: metric names, parameters and layer selections.

An embedded server takes seconds to start; a typo should not. The metric catalogue
(ListMetrics) is cached per fingerprint of what decides it (server and plugin versions, their
code, DEEPSCOPE_* settings) and a model's layer table per fingerprint and model id (the file's sha256), under
``~/.deepscope/cache`` (or $DEEPSCOPE_CACHE). On a cache miss nothing is checked early and the
server validates as always; a stale or unreadable cache is simply ignored.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .v1 import introspection_pb2 as pb
from .values import from_value

#: Environment variables that never change the catalogue (secrets, addresses, storage).
_IRRELEVANT_ENV = {"DEEPSCOPE_TOKEN", "DEEPSCOPE_AUTH_TOKEN", "DEEPSCOPE_SERVER", "DEEPSCOPE_STORE", "DEEPSCOPE_CACHE"}


class UsageError(ValueError):
    """The request cannot be right whatever the server does (unknown metric, parameter, layer)."""


def cache_dir() -> Path:
    return Path(os.environ.get("DEEPSCOPE_CACHE") or Path.home() / ".deepscope" / "cache")


def _code_stamp(module: str) -> str:
    """Newest mtime and file count of a top-level package's .py files (edits in a checkout count)."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return "missing"
    if spec is None:
        return "missing"
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin or "").parent)]
    stamps = [(p.stat().st_mtime_ns, str(p)) for root in roots for p in Path(root).rglob("*.py")]
    return f"{max(stamps)[0] if stamps else 0}:{len(stamps)}:{','.join(roots)}"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def embedded_fingerprint() -> str:
    """What decides an embedded server's catalogue, hashed; computed without starting it."""
    parts = [f"server {_version('deepscope-server')} {_code_stamp('deepscope_server')}"]
    for ep in sorted(metadata.entry_points(group="deepscope"), key=lambda e: (e.name, e.value)):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ""
        parts.append(f"ep {ep.name}={ep.value} {dist} {_code_stamp(ep.value.split(':')[0])}")
    parts += sorted(
        f"env {k}={v}" for k, v in os.environ.items() if k.startswith("DEEPSCOPE_") and k not in _IRRELEVANT_ENV
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def load_catalogue(fingerprint: str) -> pb.ListMetricsResponse | None:
    try:
        return pb.ListMetricsResponse.FromString((cache_dir() / f"metrics-{fingerprint}.pb").read_bytes())
    except Exception:  # missing, unreadable or from an incompatible version: validate after start
        return None


def save_catalogue(fingerprint: str, catalogue: pb.ListMetricsResponse) -> None:
    _write(cache_dir() / f"metrics-{fingerprint}.pb", catalogue.SerializeToString())


def load_layers(fingerprint: str, model_id: str) -> list[tuple[str, str]] | None:
    """(name, kind) of every layer of a model this server build has described before, else None."""
    try:
        return [tuple(row) for row in json.loads((cache_dir() / f"layers-{fingerprint}-{model_id}.json").read_text())]
    except Exception:
        return None


def save_layers(fingerprint: str, model_id: str, layers: Iterable[tuple[str, str]]) -> None:
    _write(cache_dir() / f"layers-{fingerprint}-{model_id}.json", json.dumps([list(row) for row in layers]).encode())


def _write(path: Path, data: bytes) -> None:
    """Atomic, and never fatal: a read-only home only costs the early check."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError:
        pass


def file_model_id(path: Path) -> str:
    """The server's model id for a file: its sha256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _close(name: str, candidates: Iterable[str]) -> str:
    import difflib

    cands = list(candidates)
    close = (
        difflib.get_close_matches(name, cands, n=5, cutoff=0.5) or [c for c in cands if name.lower() in c.lower()][:5]
    )
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def check_metrics(
    catalogue: pb.ListMetricsResponse, patterns: Sequence[str], params: Mapping[str, Mapping[str, Any]]
) -> None:
    """Every metric pattern matches a metric; every parameter exists and fits its spec."""
    infos = {m.name: m for m in catalogue.metrics}
    for pattern in patterns:
        if pattern != "all" and not fnmatch.filter(infos, pattern):
            raise UsageError(
                f"metric '{pattern}' matches no metric{_close(pattern, infos)}; list them with `deepscope metrics`"
            )
    for metric, values in params.items():
        if metric not in infos:
            raise UsageError(f"--param for unknown metric '{metric}'{_close(metric, infos)}")
        specs = {p.name: p for p in infos[metric].params}
        for key, value in values.items():
            if key not in specs:
                raise UsageError(f"unknown parameter '{key}' for {metric}; valid: {', '.join(specs) or 'none'}")
            _check_param(metric, specs[key], value)


def _check_param(metric: str, spec: pb.ParamSpec, value: Any) -> None:
    """The obvious mismatches (type, range, choices); the server has the last word on the rest."""
    where = f"parameter {metric}.{spec.name}"
    if spec.type in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where} expects {spec.type}, got {value!r}")
        if spec.type == "int" and float(value) != int(value):
            raise UsageError(f"{where} expects an integer, got {value!r}")
        if spec.HasField("min") and value < spec.min:
            raise UsageError(f"{where} must be >= {spec.min:g}, got {value}")
        if spec.HasField("max") and value > spec.max:
            raise UsageError(f"{where} must be <= {spec.max:g}, got {value}")
    elif (
        spec.type == "bool"
        and not isinstance(value, bool)
        and value not in (0, 1)
        and str(value).lower() not in ("true", "false", "yes", "no")
    ):
        raise UsageError(f"{where} expects true or false, got {value!r}")
    choices = [from_value(c) for c in spec.choices]
    if choices and value not in choices:
        raise UsageError(f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_layers(layers: Sequence[tuple[str, str]], patterns: Sequence[str]) -> None:
    """Layer names, globs and ``kind:KIND`` each select at least one layer (as the server requires)."""
    names = [name for name, _ in layers]
    kinds = sorted({kind for _, kind in layers})
    for pattern in patterns:
        if pattern.startswith("kind:"):
            if pattern[5:] not in kinds:
                raise UsageError(
                    f"layer selection '{pattern}' matches no layer; this model's kinds: {', '.join(kinds)}"
                )
        elif not (fnmatch.filter(names, pattern) if any(c in pattern for c in "*?[") else pattern in names):
            raise UsageError(f"layer selection '{pattern}' matches no layer{_close(pattern, names)}")

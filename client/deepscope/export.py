"""A run as JSON that stays small: summaries and small arrays inline, large arrays in a sidecar.

A ResNet's weight graphs and per-unit vectors made a 192 MB JSON file. Here every array with
more than ``INLINE_MAX`` elements goes to ``<name>.npz`` next to the JSON (compressed, native
dtype) and the JSON holds ``{"npz": "<name>.npz", "array": KEY, "shape": [...], "dtype": "..."}``
in its place. ``read_json`` puts the arrays back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import times
from .results import GraphData, Run, decode_item
from .values import Curve

#: Arrays up to this many elements stay in the JSON (a histogram, a short curve, per-layer values).
INLINE_MAX = 256


class _Sidecar:
    """Collects large arrays under stable keys and writes them as one compressed .npz."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, value: np.ndarray, key: str) -> Any:
        if value.size <= INLINE_MAX or value.dtype.kind not in "biuf":
            return [_finite(v) for v in value.tolist()] if value.ndim == 1 else _finite_nested(value.tolist())
        self.arrays[key] = value
        return {"npz": self.path.name, "array": key, "shape": list(value.shape), "dtype": str(value.dtype)}

    def write(self) -> Path | None:
        if not self.arrays:
            self.path.unlink(missing_ok=True)  # no stale sidecar from an earlier, larger run
            return None
        np.savez_compressed(self.path, **self.arrays)  # type: ignore[arg-type]  # the stub types **kwds as allow_pickle
        return self.path


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: they become null."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _finite_nested(value: Any) -> Any:
    return [_finite_nested(v) for v in value] if isinstance(value, list) else _finite(value)


def _plain(value: Any, key: str, sidecar: _Sidecar) -> Any:
    if isinstance(value, np.ndarray):
        return sidecar.array(value, key)
    if isinstance(value, Curve):
        return {
            "x": sidecar.array(value.x, f"{key}/x"),
            "y": sidecar.array(value.y, f"{key}/y"),
            "x_label": value.x_label,
            "y_label": value.y_label,
        }
    if isinstance(value, GraphData):
        return {
            "num_nodes": value.num_nodes,
            "directed": value.directed,
            "sources": sidecar.array(value.sources, f"{key}/sources"),
            "targets": sidecar.array(value.targets, f"{key}/targets"),
            "weights": None if value.weights is None else sidecar.array(value.weights, f"{key}/weights"),
            "nodes": _plain(value.nodes, f"{key}/nodes", sidecar),
        }
    if isinstance(value, dict):
        return {k: _plain(v, f"{key}/{k}", sidecar) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return _finite(value)


def run_to_json(run: Run, sidecar: _Sidecar) -> dict[str, Any]:
    """The run's metadata and every result; large arrays are handed to ``sidecar``."""
    return {
        "run_id": run.id,
        "status": run.status,
        "models": list(run.info.config.models),
        "model_ids": list(run.info.model_ids),
        "num_samples": run.info.num_samples,
        "seconds": times.seconds(run.info.duration),
        "created": times.iso(run.info.created_time),
        "finished": times.iso(run.info.finished_time),
        "plugin_versions": dict(run.info.plugin_versions),
        "error": run.info.error,
        "results": [
            {
                "metric": r.metric,
                "layer": r.layer,
                "checkpoint": r.checkpoint,
                "status": r.status,
                "error": r.error,
                "warnings": list(r.warnings),
                "values": {i.key: _plain(decode_item(i), f"{n}/{i.key}", sidecar) for i in r.items},
            }
            for n, r in enumerate(run.results)
        ],
    }


def write_json(run: Run, path: str | Path) -> tuple[Path, Path | None]:
    """Write ``path`` and, when some array is large, ``path`` with suffix .npz; returns both paths."""
    path = Path(path)
    sidecar = _Sidecar(path.with_suffix(".npz"))
    document = run_to_json(run, sidecar)
    path.write_text(json.dumps(document, indent=1))
    return path, sidecar.write()


def read_json(path: str | Path) -> dict[str, Any]:
    """A file from ``write_json`` with every sidecar reference replaced by its numpy array."""
    path = Path(path)
    document = json.loads(path.read_text())
    archives: dict[str, Any] = {}

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"npz", "array", "shape", "dtype"}:
                if value["npz"] not in archives:
                    archives[value["npz"]] = np.load(path.parent / Path(value["npz"]).name, allow_pickle=False)
                return archives[value["npz"]][value["array"]]
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    try:
        return resolve(document)
    finally:
        for archive in archives.values():
            archive.close()

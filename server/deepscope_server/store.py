"""Persistence of models and runs: content-addressed model files plus an SQLite (WAL) catalogue.

Model files are written to a temporary file and renamed into place, so a crash never leaves a
half-written model visible. Runs still marked running when the store opens are marked
interrupted: the server that ran them is gone. Results are stored as serialized protobuf
``MetricResult`` messages (typed, language-neutral, never pickles).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from deepscope import lock_record
from deepscope.v1 import introspection_pb2 as pb

from .errors import NotFound, near_matches
from .uploads import SideFile, UploadWriter

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, format TEXT NOT NULL, size_bytes INTEGER NOT NULL,
  created_at TEXT NOT NULL, path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, status INTEGER NOT NULL, created_at TEXT NOT NULL, finished_at TEXT,
  info BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
  run_id TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (run_id, seq)
);
"""


class StoreInUse(RuntimeError):
    """Another server holds this store."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class StoredModel:
    id: str
    name: str
    format: str
    size_bytes: int
    created_at: str
    path: Path


class Store:
    """The server's store directory: ``models/<sha256>/model`` files and ``deepscope.db``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._claim(self.root / lock_record.LOCK_NAME)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "deepscope.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._mark_interrupted()
        for leftover in self.models_dir.glob(".upload-*"):
            leftover.unlink(missing_ok=True)

    @staticmethod
    def _claim(path: Path):  # noqa: ANN205 - an open file whose flock marks this store as ours
        """One server per store: a second one would mark the first one's running runs interrupted."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # an embedded server's record holds its token (see deepscope.lock_record)
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = lock_record.describe(handle.read())
            handle.close()
            raise StoreInUse(f"store {path.parent} is in use by another deepscope-server ({owner}); "
                             "connect to that server (--server HOST:PORT) or pick another --store") from None
        handle.truncate(0)
        handle.write(lock_record.initial(os.getpid()))
        handle.flush()
        return handle

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._lock_file.close()

    # ------------------------------------------------------------ models

    def write_model(self, name: str, chunks: Iterable[bytes | SideFile], max_bytes: int,
                    declared_bytes: int | None = None, declared_sha256: str = "") -> tuple[str, Path, int]:
        """Stream an upload (the model's chunks, then per side file a SideFile marker and its chunks)
        to temp files, hash them and rename them into ``models/<id>/``.

        Returns (id, model path, size of all files). Nothing is visible under the final names until complete.
        """
        upload = UploadWriter(self.models_dir, name, max_bytes)
        try:
            upload.write(chunks, declared_bytes, declared_sha256)
            model_id = upload.model_id()
            # One directory per model: an ONNX external-data reference can only reach the
            # model's own directory, which holds nothing but the model and its side files.
            return model_id, upload.move_into(self.models_dir / model_id), upload.total_bytes
        except BaseException:
            upload.discard()
            raise

    def add_model(self, model_id: str, name: str, fmt: str, size: int, path: Path) -> StoredModel:
        created = utc_now()
        with self._lock:
            row = self._db.execute("SELECT created_at FROM models WHERE id=?", (model_id,)).fetchone()
            if row:
                created = row[0]
            self._db.execute(
                "INSERT OR REPLACE INTO models (id, name, format, size_bytes, created_at, path) VALUES (?,?,?,?,?,?)",
                (model_id, name, fmt, size, created, str(path)),
            )
        return StoredModel(model_id, name, fmt, size, created, path)

    def discard_file(self, path: Path) -> None:
        """Remove a model file that failed to load (unless a catalogued model uses it)."""
        with self._lock:
            used = self._db.execute("SELECT 1 FROM models WHERE path=?", (str(path),)).fetchone()
        if not used:
            path.unlink(missing_ok=True)
            if path.parent != self.models_dir:
                shutil.rmtree(path.parent, ignore_errors=True)

    def models(self) -> list[StoredModel]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, format, size_bytes, created_at, path FROM models ORDER BY created_at"
            ).fetchall()
        return [StoredModel(*row[:5], Path(row[5])) for row in rows]

    def find_model(self, ref: str) -> StoredModel:
        """By id, unique id prefix (>= 8 hex digits) or name (the most recent with that name)."""
        models = self.models()
        for model in models:
            if model.id == ref:
                return model
        if len(ref) >= 8:
            hits = [m for m in models if m.id.startswith(ref.lower())]
            if len(hits) == 1:
                return hits[0]
        named = [m for m in models if m.name == ref]
        if named:
            return named[-1]
        names = [m.name for m in models] + [m.id[:12] for m in models]
        raise NotFound(f"model '{ref}' not found{near_matches(ref, names)}")

    def delete_model(self, model_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT path FROM models WHERE id=?", (model_id,)).fetchone()
            if not row:
                return False
            self._db.execute("DELETE FROM models WHERE id=?", (model_id,))
        path = Path(row[0])
        path.unlink(missing_ok=True)
        if path.parent != self.models_dir:
            shutil.rmtree(path.parent, ignore_errors=True)
        return True

    # ------------------------------------------------------------ runs

    def create_run(self, info: pb.RunInfo) -> str:
        info.id = info.id or uuid.uuid4().hex[:16]
        info.created_at = info.created_at or utc_now()
        info.status = pb.RUNNING
        with self._lock:
            self._db.execute(
                "INSERT INTO runs (id, status, created_at, info) VALUES (?,?,?,?)",
                (info.id, info.status, info.created_at, info.SerializeToString()),
            )
        return info.id

    def update_run(self, info: pb.RunInfo) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE runs SET status=?, finished_at=?, info=? WHERE id=?",
                (info.status, info.finished_at or None, info.SerializeToString(), info.id),
            )

    def add_result(self, run_id: str, seq: int, result: pb.MetricResult) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO results (run_id, seq, payload) VALUES (?,?,?)",
                (run_id, seq, result.SerializeToString()),
            )

    def get_run(self, run_id: str) -> pb.RunDetail:
        with self._lock:
            row = self._db.execute("SELECT info FROM runs WHERE id=?", (run_id,)).fetchone()
            if not row:
                ids = [r[0] for r in self._db.execute("SELECT id FROM runs ORDER BY created_at DESC LIMIT 50")]
                raise NotFound(f"run '{run_id}' not found{near_matches(run_id, ids)}")
            payloads = self._db.execute(
                "SELECT payload FROM results WHERE run_id=? ORDER BY seq", (run_id,)
            ).fetchall()
        detail = pb.RunDetail(info=pb.RunInfo.FromString(row[0]))
        for (payload,) in payloads:
            detail.results.append(pb.MetricResult.FromString(payload))
        return detail

    def list_runs(self, limit: int = 100) -> list[pb.RunInfo]:
        with self._lock:
            rows = self._db.execute("SELECT info FROM runs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [pb.RunInfo.FromString(r[0]) for r in rows]

    def _mark_interrupted(self) -> None:
        with self._lock:
            rows = self._db.execute("SELECT info FROM runs WHERE status=?", (pb.RUNNING,)).fetchall()
            for (blob,) in rows:
                info = pb.RunInfo.FromString(blob)
                info.status = pb.INTERRUPTED
                info.finished_at = utc_now()
                info.error = "the server stopped before the run finished"
                self._db.execute(
                    "UPDATE runs SET status=?, finished_at=?, info=? WHERE id=?",
                    (info.status, info.finished_at, info.SerializeToString(), info.id),
                )


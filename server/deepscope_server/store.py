"""Persistence of models and runs: content-addressed model files plus an SQLite (WAL) catalogue.

Model files are written to a temporary file and renamed into place, so a crash never leaves a
half-written model visible. A ``.pending-<id>`` marker stands next to a model's folder until the
model is catalogued: a folder still marked at the next start belongs to a load cut off by a crash
and is removed (the temp files of cut-off uploads too). Runs still marked running when the store
opens are marked interrupted: the server that ran them is gone. Results are stored as serialized
protobuf ``MetricResult`` messages (typed, language-neutral, never pickles).

Failures the operator must fix never surface as tracebacks: a damaged database refuses to open
with one line naming the file and the repair commands; a full disk fails writes with StorageFull
(RESOURCE_EXHAUSTED); a run whose final state cannot be written is kept in memory, reported from
there and written as soon as the store accepts writes again; an unreadable row is skipped (and
logged), never breaking a listing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from google.protobuf.message import DecodeError

from deepscope import lock_record, times
from deepscope.results import run_status_name
from deepscope.v1 import introspection_pb2 as pb

from .errors import StorageFull, shorten, unknown
from .uploads import SideFile, UploadWriter

log = logging.getLogger(__name__)

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
DB_NAME = "deepscope.db"
UPLOAD_PREFIX = ".upload-"
PENDING_PREFIX = ".pending-"
#: A model folder's name: the sha256 of its file.
MODEL_ID = re.compile(r"[0-9a-f]{64}")
#: Write errors that mean "no space": the disk or the user's quota is full.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: SQLite's codes for a file that is not (or no longer) a database.
DAMAGED_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
#: What a protobuf parse of a bad row raises (garbage bytes, a TEXT or NULL value).
BAD_ROW = (DecodeError, TypeError, ValueError)


class StoreInUse(RuntimeError):
    """Another server holds this store."""


class StoreUnusable(RuntimeError):
    """The store cannot be opened or read (a damaged database, an unwritable directory)."""


def _with_times(info: pb.RunInfo, created: str | None, finished: str | None) -> pb.RunInfo:
    """Fill the run's times from the table's columns where its record has none (runs stored before
    RunInfo carried Timestamps)."""
    for stamp, text in ((info.created_time, created), (info.finished_time, finished)):
        if times.as_datetime(stamp) is None:
            try:
                times.set_iso(stamp, text or "")
            except ValueError:
                pass  # a damaged column: the time stays unknown
    return info


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def repair_hint(root: Path) -> str:
    return f"move it aside or run deepscope-server --store {root} --check-store / --rebuild-catalogue"


def is_damaged(exc: BaseException) -> bool:
    """True for SQLite's "not a database" / "disk image is malformed" errors."""
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorcode", None) in DAMAGED_CODES


def is_full(exc: BaseException) -> bool:
    """True for a write that failed for lack of space (ENOSPC/EDQUOT, or SQLite's SQLITE_FULL)."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def open_db(path: Path) -> sqlite3.Connection:
    """The catalogue database in WAL mode with its tables (created when missing)."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def claim_store(root: Path) -> IO[str]:
    """One server per store: a second one would mark the first one's running runs interrupted.

    Returns the open lock file; its flock marks the store as ours until it is closed.
    """
    path = Path(root) / lock_record.LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # an embedded server's record holds its token (see deepscope.lock_record)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = lock_record.describe(handle.read())
        handle.close()
        raise StoreInUse(
            f"store {path.parent} is in use by another deepscope-server ({owner}); "
            "connect to that server (--server HOST:PORT) or pick another --store"
        ) from None
    handle.truncate(0)
    handle.write(lock_record.initial(os.getpid()))
    handle.flush()
    return handle


def parse_info(blob: object) -> pb.RunInfo:
    return pb.RunInfo.FromString(blob)  # type: ignore[arg-type]


def parse_result(blob: object) -> pb.MetricResult:
    return pb.MetricResult.FromString(blob)  # type: ignore[arg-type]


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

    def __init__(self, root: Path, claimed: IO[str] | None = None) -> None:
        """``claimed``: the lock file from ``claim_store`` when the caller already holds the store."""
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.db_path = self.root / DB_NAME
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnusable(f"cannot use store directory {self.root}: {exc.strerror}") from None
        self._lock_file = claimed or claim_store(self.root)
        self._lock = threading.Lock()
        #: Final states of runs the database refused to record (disk full): reported from here.
        self._unrecorded: dict[str, pb.RunInfo] = {}
        self._reported: set[tuple[str, str]] = set()
        try:
            self._open()
        except BaseException:
            self._lock_file.close()
            raise

    def _open(self) -> None:
        try:
            with self._errors("opening the store"):
                self._db = open_db(self.db_path)
                try:
                    self._mark_interrupted()
                    self._clean_leftovers()
                except BaseException:
                    self._db.close()
                    raise
        except sqlite3.Error as exc:  # neither damage nor a full disk: e.g. permissions
            raise StoreUnusable(f"cannot open store database {self.db_path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._flush_unrecorded()
            for run_id in self._unrecorded:
                log.error(
                    "run %s: its final state (%s) could not be written to %s; it will show as interrupted",
                    run_id,
                    run_status_name(self._unrecorded[run_id].status),
                    self.db_path,
                )
            self._db.close()
        self._lock_file.close()

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """A full disk -> StorageFull; a damaged database -> StoreUnusable naming the repair commands."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            if is_full(exc):
                detail = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise StorageFull(
                    f"the server's disk is full (store {self.root}): {doing} failed: {detail}; "
                    "the operator must free space"
                ) from exc
            if is_damaged(exc):
                raise StoreUnusable(
                    f"store database {self.db_path} is not a valid SQLite file ({exc}); {repair_hint(self.root)}"
                ) from None
            raise

    def _skip(self, what: str, key: str, exc: Exception) -> None:
        """Log an unreadable row once (it is skipped, never fails a listing)."""
        if (what, key) not in self._reported:
            self._reported.add((what, key))
            log.warning(
                "skipping %s %s in %s: unreadable (%s: %s); run deepscope-server --store %s --check-store",
                what,
                key,
                self.db_path,
                type(exc).__name__,
                exc,
                self.root,
            )

    def _clean_leftovers(self) -> None:
        """Remove what a killed server left behind: upload temp files, models whose load was cut off."""
        catalogued = {row[0] for row in self._db.execute("SELECT id FROM models")}
        for temp in self.models_dir.glob(UPLOAD_PREFIX + "*"):
            temp.unlink(missing_ok=True)
            log.warning("removed %s: the temp file of an upload cut off by a crash", temp)
        for marker in self.models_dir.glob(PENDING_PREFIX + "*"):
            model_id = marker.name[len(PENDING_PREFIX) :]
            folder = self.models_dir / model_id
            if MODEL_ID.fullmatch(model_id) and model_id not in catalogued and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                log.warning("removed %s: a model whose upload was cut off by a crash while it loaded", folder)
            marker.unlink(missing_ok=True)
        stray = sorted(
            p.name for p in self.models_dir.iterdir() if MODEL_ID.fullmatch(p.name) and p.name not in catalogued
        )
        if stray:
            log.warning(
                "%d model folder(s) in %s are not in the catalogue (%s...); to restore them: "
                "deepscope-server --store %s --rebuild-catalogue",
                len(stray),
                self.models_dir,
                stray[0][:12],
                self.root,
            )

    # ------------------------------------------------------------ models

    def _pending(self, model_id: str) -> Path:
        return self.models_dir / f"{PENDING_PREFIX}{model_id}"

    def write_model(
        self,
        name: str,
        chunks: Iterable[bytes | SideFile],
        max_bytes: int,
        declared_bytes: int | None = None,
        declared_sha256: str = "",
    ) -> tuple[str, Path, int]:
        """Stream an upload (the model's chunks, then per side file a SideFile marker and its chunks)
        to temp files, hash them and rename them into ``models/<id>/``.

        Returns (id, model path, size of all files). Nothing is visible under the final names until
        complete; the folder stays marked pending until ``add_model`` or ``discard_file``.
        """
        with self._errors(f"saving the upload of '{shorten(name)}'"):
            upload = UploadWriter(self.models_dir, name, max_bytes)
            try:
                upload.write(chunks, declared_bytes, declared_sha256)
                model_id = upload.model_id()
                # One directory per model: an ONNX external-data reference can only reach the
                # model's own directory, which holds nothing but the model and its side files.
                self._pending(model_id).touch()
                return model_id, upload.move_into(self.models_dir / model_id), upload.total_bytes
            except BaseException:
                upload.discard()
                raise

    def add_model(self, model_id: str, name: str, fmt: str, size: int, path: Path) -> StoredModel:
        created = utc_now()
        with self._lock, self._errors(f"cataloguing model '{name}'"):
            row = self._db.execute("SELECT created_at FROM models WHERE id=?", (model_id,)).fetchone()
            if row:
                created = row[0]
            self._db.execute(
                "INSERT OR REPLACE INTO models (id, name, format, size_bytes, created_at, path) VALUES (?,?,?,?,?,?)",
                (model_id, name, fmt, size, created, str(path)),
            )
        self._pending(model_id).unlink(missing_ok=True)
        return StoredModel(model_id, name, fmt, size, created, path)

    def discard_file(self, path: Path) -> None:
        """Remove a model file that failed to load (unless a catalogued model uses it)."""
        with self._lock:
            used = self._db.execute("SELECT 1 FROM models WHERE path=?", (str(path),)).fetchone()
        if not used:
            path.unlink(missing_ok=True)
            if path.parent != self.models_dir:
                shutil.rmtree(path.parent, ignore_errors=True)
        self._pending(path.parent.name).unlink(missing_ok=True)

    def models(self) -> list[StoredModel]:
        with self._lock, self._errors("reading the model catalogue"):
            rows = self._db.execute(
                "SELECT id, name, format, size_bytes, created_at, path FROM models ORDER BY created_at"
            ).fetchall()
        models = []
        for row in rows:
            if not all(isinstance(v, str) for v in (*row[:3], *row[4:])) or not isinstance(row[3], int):
                self._skip("model record", str(row[0]), ValueError(f"unexpected values {row!r}"))
                continue
            models.append(StoredModel(*row[:5], Path(row[5])))
        return models

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
        raise unknown("model", ref, names)

    def delete_model(self, model_id: str) -> bool:
        with self._lock, self._errors("deleting a model"):
            row = self._db.execute("SELECT path FROM models WHERE id=?", (model_id,)).fetchone()
            if not row:
                return False
            self._db.execute("DELETE FROM models WHERE id=?", (model_id,))
        path = Path(row[0])
        path.unlink(missing_ok=True)
        if path.parent != self.models_dir:
            shutil.rmtree(path.parent, ignore_errors=True)
        return True

    def uncatalogue(self, model_id: str) -> None:
        """Drop a catalogue row, touching no file (its file is missing or elsewhere)."""
        with self._lock, self._errors("editing the model catalogue"):
            self._db.execute("DELETE FROM models WHERE id=?", (model_id,))

    # ------------------------------------------------------------ runs

    def create_run(self, info: pb.RunInfo) -> str:
        info.id = info.id or uuid.uuid4().hex[:16]
        created = times.iso(info.created_time) or times.stamp_now(info.created_time)
        info.status = pb.RUN_STATUS_RUNNING
        with self._lock:
            self._flush_unrecorded()
            with self._errors("recording a new run"):
                self._db.execute(
                    "INSERT INTO runs (id, status, created_at, info) VALUES (?,?,?,?)",
                    (info.id, info.status, created, info.SerializeToString()),
                )
        return info.id

    def update_run(self, info: pb.RunInfo) -> None:
        """Record a run's state; if the database refuses (disk full), keep it in memory and retry later."""
        kept = pb.RunInfo()
        kept.CopyFrom(info)
        with self._lock:
            self._unrecorded[info.id] = kept
            self._flush_unrecorded()

    def _flush_unrecorded(self) -> None:
        """Write the run states the database refused before (under the lock; never raises for SQLite)."""
        for run_id, info in list(self._unrecorded.items()):
            try:
                self._db.execute(
                    "UPDATE runs SET status=?, finished_at=?, info=? WHERE id=?",
                    (info.status, times.iso(info.finished_time) or None, info.SerializeToString(), info.id),
                )
            except sqlite3.Error as exc:
                if ("unrecorded", run_id) not in self._reported:
                    self._reported.add(("unrecorded", run_id))
                    log.warning(
                        "run %s (%s) cannot be recorded in %s yet: %s; kept in memory until it can",
                        run_id,
                        run_status_name(info.status),
                        self.db_path,
                        exc,
                    )
                continue
            del self._unrecorded[run_id]
            if ("unrecorded", run_id) in self._reported:
                log.info("run %s: its final state is now recorded", run_id)

    def add_result(self, run_id: str, seq: int, result: pb.MetricResult) -> None:
        with self._lock, self._errors(f"storing a result of run {run_id}"):
            self._db.execute(
                "INSERT OR REPLACE INTO results (run_id, seq, payload) VALUES (?,?,?)",
                (run_id, seq, result.SerializeToString()),
            )

    def _results(self, run_id: str) -> list[pb.MetricResult]:
        """A run's readable results (under the lock); unreadable ones are skipped and logged."""
        results = []
        for seq, payload in self._db.execute("SELECT seq, payload FROM results WHERE run_id=? ORDER BY seq", (run_id,)):
            try:
                results.append(parse_result(payload))
            except BAD_ROW as exc:
                self._skip("result", f"{run_id}/{seq}", exc)
        return results

    def get_run(self, run_id: str) -> pb.GetRunResponse:
        with self._lock, self._errors(f"reading run {run_id}"):
            self._flush_unrecorded()
            row = self._db.execute("SELECT info, created_at, finished_at FROM runs WHERE id=?", (run_id,)).fetchone()
            if not row:
                ids = [r[0] for r in self._db.execute("SELECT id FROM runs ORDER BY created_at DESC LIMIT 50")]
                raise unknown("run", run_id, ids)
            info = self._unrecorded.get(run_id)
            if info is None:
                try:
                    info = _with_times(parse_info(row[0]), row[1], row[2])
                except BAD_ROW as exc:
                    self._skip("run", run_id, exc)
                    raise StoreUnusable(
                        f"run '{run_id}' has an unreadable record in {self.db_path}; {repair_hint(self.root)}"
                    ) from None
            stored = self._db.execute("SELECT COUNT(*) FROM results WHERE run_id=?", (run_id,)).fetchone()[0]
            results = self._results(run_id)
        detail = pb.GetRunResponse(info=info, results=results)
        # The counts describe the results returned (a cut-off run's info was never updated).
        detail.info.num_results = len(results)
        detail.info.num_failed = sum(r.status != "ok" for r in results)
        if len(results) < stored:
            note = f"{stored - len(results)} of its {stored} stored results are unreadable and were skipped"
            detail.info.error = f"{detail.info.error}; {note}" if detail.info.error else note
        return detail

    def list_runs(self, limit: int = 100) -> list[pb.RunInfo]:
        with self._lock, self._errors("listing runs"):
            self._flush_unrecorded()
            rows = self._db.execute(
                "SELECT id, info, (SELECT COUNT(*) FROM results WHERE results.run_id = runs.id), created_at, "
                "finished_at FROM runs ORDER BY created_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
            runs = []
            for run_id, blob, count, created, finished in rows:
                try:
                    info = _with_times(parse_info(blob), created, finished)
                except BAD_ROW as exc:
                    self._skip("run", str(run_id), exc)
                    continue
                if run_id in self._unrecorded:
                    info.CopyFrom(self._unrecorded[run_id])
                info.num_results = count  # what the store holds (a cut-off run's info was never updated)
                runs.append(info)
        return runs

    def _mark_interrupted(self) -> None:
        with self._lock:
            rows = self._db.execute("SELECT id, info FROM runs WHERE status=?", (pb.RUN_STATUS_RUNNING,)).fetchall()
            for run_id, blob in rows:
                try:
                    info = parse_info(blob)
                except BAD_ROW as exc:
                    self._skip("run", str(run_id), exc)
                    self._db.execute("UPDATE runs SET status=? WHERE id=?", (pb.RUN_STATUS_INTERRUPTED, run_id))
                    continue
                results = self._results(run_id)
                info.status = pb.RUN_STATUS_INTERRUPTED
                finished = times.stamp_now(info.finished_time)
                info.error = "the server stopped before the run finished"
                info.num_results = len(results)
                info.num_failed = sum(r.status != "ok" for r in results)
                self._db.execute(
                    "UPDATE runs SET status=?, finished_at=?, info=? WHERE id=?",
                    (info.status, finished, info.SerializeToString(), run_id),
                )

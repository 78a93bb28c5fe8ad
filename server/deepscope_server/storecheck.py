"""Store maintenance without a server: ``deepscope-server --check-store`` and ``--rebuild-catalogue``.

A model's folder is named by the sha256 of its file, so the files alone say which models exist and
whether they are intact; the catalogue adds only display names. ``--rebuild-catalogue`` therefore
rebuilds the catalogue from the files (format detected from content), keeps the names it can still
read (the others become ``recovered-<id>``) and keeps every run it can read: a damaged database is
moved aside and its readable rows copied into a fresh one; unreadable rows are dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from .backends.detect import detect_format
from .errors import InvalidInput, StorageFull
from .store import (
    BAD_ROW,
    DB_NAME,
    MODEL_ID,
    PENDING_PREFIX,
    UPLOAD_PREFIX,
    Store,
    StoreInUse,
    StoreUnusable,
    claim_store,
    is_damaged,
    open_db,
    parse_info,
    parse_result,
)

TABLES = ("models", "runs", "results")


def _say(line: str) -> None:
    print(line, flush=True)


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def model_files(models_dir: Path) -> dict[str, Path]:
    """{id: file} of every content-addressed model folder on disk."""
    if not models_dir.is_dir():
        return {}
    return {
        p.name: p / "model"
        for p in sorted(models_dir.iterdir())
        if MODEL_ID.fullmatch(p.name) and (p / "model").is_file()
    }


@contextlib.contextmanager
def _read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()


def _readable(parse: Callable[[object], object], blob: object) -> bool:
    try:
        parse(blob)
    except BAD_ROW:
        return False
    return True


def _server_running(root: Path) -> bool:
    """True when a server holds the store's lock (its uploads in progress are not leftovers)."""
    lock = root / "server.lock"
    if not lock.exists():
        return False
    with lock.open("r") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _check_db(db_path: Path, problems: list[str]) -> tuple[dict[str, tuple[str, Path]], str]:
    """Integrity, unreadable rows; returns the catalogue {id: (name, path)} and a summary."""
    with _read_only(db_path) as db:
        integrity = [row[0] for row in db.execute("PRAGMA integrity_check(20)")]
        if integrity != ["ok"]:
            problems += [f"SQLite integrity check of {db_path}: {line}" for line in integrity]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in TABLES:
            if table not in tables:
                problems.append(f"table '{table}' is missing from {db_path} (the next start creates it empty)")
        runs = dict(db.execute("SELECT id, info FROM runs")) if "runs" in tables else {}
        for run_id, blob in runs.items():
            if not _readable(parse_info, blob):
                problems.append(f"run {run_id} has an unreadable record (ListRuns skips it)")
        n_results = 0
        if "results" in tables:
            for run_id, seq, payload in db.execute("SELECT run_id, seq, payload FROM results"):
                n_results += 1
                if run_id not in runs:
                    problems.append(f"result {run_id}/{seq} belongs to no run")
                elif not _readable(parse_result, payload):
                    problems.append(f"result {run_id}/{seq} is unreadable (GetRun skips it)")
        catalogue = {}
        if "models" in tables:
            catalogue = {row[0]: (row[1], Path(row[2])) for row in db.execute("SELECT id, name, path FROM models")}
    return catalogue, f"{len(catalogue)} catalogued models, {len(runs)} runs, {n_results} results"


def inspect_store(root: Path) -> tuple[list[str], str]:
    """Every problem of a store directory (reading only) and a one-line summary."""
    root = Path(root)
    if not root.is_dir():
        return [f"store directory {root} does not exist"], ""
    problems: list[str] = []
    files = model_files(root / "models")
    db_path = root / DB_NAME
    catalogue: dict[str, tuple[str, Path]] = {}
    summary = f"{len(files)} model files, no catalogue yet"
    if db_path.exists():
        try:
            catalogue, summary = _check_db(db_path, problems)
        except sqlite3.Error as exc:
            reason = "is not a valid SQLite file" if is_damaged(exc) else "cannot be read"
            problems.append(f"store database {db_path} {reason} ({exc})")
    for model_id, (name, path) in sorted(catalogue.items()):
        if not path.is_file():
            problems.append(f"model {model_id[:12]} ('{name}') is catalogued but its file {path} is missing")
        elif _sha256(path) != model_id:
            problems.append(f"model {model_id[:12]} ('{name}'): file {path} is damaged (its sha256 differs)")
    for model_id in sorted(set(files) - set(catalogue)):
        problems.append(f"model file {files[model_id]} is not in the catalogue")
    if not _server_running(root):
        leftovers = [p.name for p in (root / "models").glob(".*") if p.name.startswith((UPLOAD_PREFIX, PENDING_PREFIX))]
        if leftovers:
            problems.append(
                f"{len(leftovers)} leftover(s) of uploads cut off by a crash ({', '.join(sorted(leftovers))}); "
                "the next start removes them"
            )
    return problems, summary


def check_store(root: Path) -> int:
    """``--check-store``: print a report; 0 if the store is clean, 1 if not."""
    problems, summary = inspect_store(root)
    for problem in problems:
        _say(f"problem: {problem}")
    if problems:
        _say(f"store {root}: {len(problems)} problem(s); repair: deepscope-server --store {root} --rebuild-catalogue")
        return 1
    _say(f"store {root}: ok ({summary})")
    return 0


# ------------------------------------------------------------------ rebuild


def _copy_readable(damaged: Path, db: sqlite3.Connection) -> None:
    """Copy every row the damaged database still yields into the fresh one."""
    for table in TABLES:
        columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        insert = f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        copied, trouble = 0, ""
        db.execute("BEGIN")
        try:
            with _read_only(damaged) as old:
                for row in old.execute(f"SELECT {', '.join(columns)} FROM {table}"):
                    try:
                        db.execute(insert, row)
                        copied += 1
                    except sqlite3.IntegrityError:
                        trouble = "; rows with missing values skipped"
        except sqlite3.Error as exc:
            if is_damaged(exc) or "no such table" in str(exc):
                trouble = f"; the rest is unreadable ({exc})"
            else:
                raise
        finally:
            db.execute("COMMIT")
        _say(f"{table}: {copied} rows recovered{trouble}")


def _drop_unreadable(db: sqlite3.Connection) -> None:
    """Runs and results no one can read (and results of no run) only make every listing skip them."""
    runs = [run_id for run_id, blob in db.execute("SELECT id, info FROM runs") if not _readable(parse_info, blob)]
    results = [
        (run_id, seq)
        for run_id, seq, payload in db.execute("SELECT run_id, seq, payload FROM results")
        if not _readable(parse_result, payload)
    ]
    db.executemany("DELETE FROM runs WHERE id=?", [(r,) for r in runs])
    db.executemany("DELETE FROM results WHERE run_id=? AND seq=?", results)
    orphans = db.execute("DELETE FROM results WHERE run_id NOT IN (SELECT id FROM runs)").rowcount
    for run_id in runs:
        _say(f"removed run {run_id}: its record is unreadable")
    if results or orphans:
        _say(f"removed {len(results)} unreadable results and {orphans} results of no run")


def repair_database(db_path: Path) -> None:
    """A damaged database is moved aside and its readable rows copied into a fresh one."""
    damaged = False
    if db_path.exists():
        try:
            with contextlib.closing(sqlite3.connect(db_path)) as db:
                damaged = [row[0] for row in db.execute("PRAGMA quick_check")] != ["ok"]
        except sqlite3.DatabaseError as exc:
            if not is_damaged(exc):
                raise
            damaged = True
    if damaged:
        aside = db_path.with_name(f"{DB_NAME}.damaged-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db_path}{suffix}").exists():
                os.replace(f"{db_path}{suffix}", f"{aside}{suffix}")
        _say(f"moved the damaged database to {aside}")
    with contextlib.closing(open_db(db_path)) as db:
        if damaged:
            _copy_readable(aside, db)
        _drop_unreadable(db)


def rebuild_models(store: Store) -> int:
    """Catalogue every intact model file on disk; returns how many files had to be skipped."""
    old = {m.id: m for m in store.models()}
    files = model_files(store.models_dir)
    skipped = 0
    for model_id, path in files.items():
        try:
            if _sha256(path) != model_id:
                raise InvalidInput("its sha256 differs from its folder name: the file is damaged")
            fmt = detect_format(path)
        except InvalidInput as exc:
            _say(f"skipped {path}: {exc}")
            skipped += 1
            continue
        name = old[model_id].name if model_id in old else f"recovered-{model_id[:12]}"
        store.add_model(model_id, name, fmt, path.stat().st_size, path)
        _say(f"model {model_id} {fmt} '{name}'" + ("" if model_id in old else " (name lost)"))
    for model_id in sorted(set(old) - set(files)):
        store.uncatalogue(model_id)
        _say(f"removed model {model_id[:12]} ('{old[model_id].name}') from the catalogue: its file is gone")
    return skipped


def rebuild_catalogue(root: Path) -> int:
    """``--rebuild-catalogue``: 0 when every model file is catalogued again, 1 otherwise."""
    root = Path(root)
    if not (root / "models").is_dir():
        print(f"store {root} has no models directory: nothing to rebuild", file=sys.stderr)
        return 1
    try:
        claimed = claim_store(root)
        try:
            repair_database(root / DB_NAME)
            store = Store(root, claimed=claimed)
        except BaseException:
            claimed.close()
            raise
        try:
            skipped = rebuild_models(store)
        finally:
            store.close()
    except (StoreInUse, StoreUnusable, StorageFull) as exc:
        print(exc, file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"cannot rebuild {root / DB_NAME}: {exc}", file=sys.stderr)
        return 1
    _say(f"store {root}: catalogue rebuilt" + (f"; {skipped} file(s) skipped" if skipped else ""))
    return 1 if skipped else 0

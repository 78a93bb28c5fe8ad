"""The record in a store's ``server.lock``: which server holds the store, and how to join it.

The server holding a store keeps an exclusive ``flock`` on ``server.lock`` for as long as it
lives, so the lock (not the text) says whether the record is current. The text is JSON:
``{"pid": N}`` for any server; an embedded server (``Client.embedded()``, the CLI) also has its
``lifeline`` socket from the start and, once it serves, its ``address`` and ``token``, so a second
embedded client or CLI run on the same store attaches to it instead of failing. The file is
mode 0600: the token is readable only by the user who owns the store.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

LOCK_NAME = "server.lock"
#: Set by the embedded-server entry point: the lifeline socket goes into the record from the start.
LIFELINE_ENV = "DEEPSCOPE_EMBEDDED_LIFELINE"


def initial(pid: int) -> str:
    """The record a server writes when it claims a store."""
    record: dict[str, Any] = {"pid": pid}
    if os.environ.get(LIFELINE_ENV):
        record["lifeline"] = os.environ[LIFELINE_ENV]
    return json.dumps(record)


def parse(text: str) -> dict[str, Any]:
    """The record as a dict (an older plain ``pid N`` line gives its pid); never raises."""
    try:
        record = json.loads(text)
    except ValueError:
        words = text.split()
        return {"pid": int(words[1])} if len(words) == 2 and words[0] == "pid" and words[1].isdigit() else {}
    return record if isinstance(record, dict) else {}


def describe(text: str) -> str:
    """Who holds the store, for messages: the pid, never the token."""
    record = parse(text)
    if "pid" not in record:
        return "another process"
    return f"pid {record['pid']}" + (f", embedded at {record['address']}" if record.get("address") else "")


def read_live(store: Path) -> dict[str, Any] | None:
    """The record of the server that holds ``store`` now, or None when no server holds it."""
    try:
        fd = os.open(Path(store) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            with os.fdopen(os.dup(fd)) as handle:
                return parse(handle.read())
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody holds it: whatever the file says is stale
        return None
    finally:
        os.close(fd)


def publish(store: Path, **fields: Any) -> None:
    """Add ``fields`` (address, token) to the live record; the file is made 0600 before the token is written."""
    path = Path(store) / LOCK_NAME
    fd = os.open(path, os.O_RDWR)
    with os.fdopen(fd, "r+") as handle:
        os.fchmod(fd, 0o600)
        record = {**parse(handle.read()), **fields}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record))

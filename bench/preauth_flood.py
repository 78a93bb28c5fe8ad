"""Pre-auth flood: unauthenticated large requests must be refused before the server buffers them.

    .venv/bin/python bench/preauth_flood.py                    # 16 clients, 48 x 60 MB, this checkout
    .venv/bin/python bench/preauth_flood.py --before main      # the same flood against REF's code too

Starts a real ``deepscope_server`` (``--auth-token-file``, loopback, reflection on) in a child
process, fires ``--requests`` unauthenticated calls (Capture unless ``--method``) of ``--mib`` MB each from ``--clients`` concurrent
channels (bounded by a per-call deadline), and samples the server's resident memory (VmRSS from
/proc) every 20 ms. An authenticated client calls ListModels throughout, to show that the server
keeps serving. ``--before REF`` runs the same flood against the server code of a git ref
(``git archive`` into a temporary directory, first on PYTHONPATH) for the before/after table.
Figures are recorded in bench/LOAD.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Poller

from deepscope.embedded import EmbeddedServer
from deepscope.tensors import to_proto
from deepscope.v1 import introspection_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = "/deepscope.v1.IntrospectionService/Capture"
GET_MODEL = "/deepscope.v1.IntrospectionService/GetModel"
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
METHODS = {"Capture": CAPTURE, "GetModel": GET_MODEL, "Health/Check": HEALTH, "Reflection": REFLECTION}
LIST_MODELS = "/deepscope.v1.IntrospectionService/ListModels"
MiB = 1 << 20


def capture_request(nbytes: int) -> bytes:
    """A well-formed serialized CaptureRequest carrying one float32 input of about ``nbytes``."""
    return pb.CaptureRequest(
        model="flood", inputs=[to_proto(np.zeros(nbytes // 4, np.float32), "x")]
    ).SerializeToString()


def _channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 4 * MiB)]
    )


def flood(
    address: str,
    requests: int,
    clients: int,
    payload: bytes,
    timeout: float,
    methods: Sequence[str] = (CAPTURE,),
    metadata: tuple[tuple[str, str], ...] = (),
) -> Counter[grpc.StatusCode]:
    """Send ``requests`` raw calls (to ``methods`` in turn) from ``clients`` channels at once; each one's status."""
    channels = [_channel(address) for _ in range(clients)]

    def one(i: int) -> grpc.StatusCode:
        call = channels[i % clients].unary_stream(
            methods[i % len(methods)], request_serializer=None, response_deserializer=None
        )
        try:
            for _ in call(payload, timeout=timeout, metadata=metadata):
                pass
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    try:
        with ThreadPoolExecutor(clients) as pool:
            return Counter(pool.map(one, range(requests)))
    finally:
        for channel in channels:
            channel.close()


def rss(pid: int) -> int:
    """Current resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


class RssSampler(Poller):
    """Samples a process's RSS every ``interval`` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(interval, name=f"rss-{pid}")
        self.pid, self.peak = pid, 0

    def sample(self) -> None:
        with contextlib.suppress(OSError, KeyError):
            self.peak = max(self.peak, rss(self.pid))


@dataclass
class Prober:
    """An authenticated client calling ListModels in a loop: served calls and failures while flooded."""

    address: str
    token: str
    deadline: float
    served: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        with _channel(self.address) as channel:
            call = channel.unary_unary(LIST_MODELS, request_serializer=None, response_deserializer=None)
            while not self._stop.is_set():
                try:
                    call(
                        pb.ListModelsRequest().SerializeToString(),
                        timeout=self.deadline,
                        metadata=(("authorization", f"Bearer {self.token}"),),
                    )
                    self.served += 1
                except grpc.RpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                self._stop.wait(0.1)

    @contextlib.contextmanager
    def running(self) -> Iterator[Prober]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


@dataclass
class FloodResult:
    codes: Counter[grpc.StatusCode]
    baseline: int
    peak: int
    after: int
    seconds: float
    probe: Prober


def measure(
    pid: int,
    address: str,
    token: str,
    requests: int,
    clients: int,
    nbytes: int,
    timeout: float,
    methods: Sequence[str] = (CAPTURE,),
    probe_deadline: float = 10.0,
    settle: float = 3.0,
) -> FloodResult:
    """The flood against a started server (process ``pid``): status codes and its RSS before, during, after.

    One authenticated call first, so that lazy imports and caches are in the baseline.
    """
    payload = capture_request(nbytes)
    prober = Prober(address, token, probe_deadline)
    with prober.running():
        time.sleep(settle)
    baseline = rss(pid)
    prober = Prober(address, token, probe_deadline)
    with RssSampler(pid) as sampler, prober.running():
        start = time.monotonic()
        codes = flood(address, requests, clients, payload, timeout, methods)
        seconds = time.monotonic() - start
    time.sleep(settle)
    return FloodResult(codes, baseline, max(sampler.peak, baseline), rss(pid), seconds, prober)


@contextlib.contextmanager
def code_of(ref: str | None) -> Iterator[None]:
    """PYTHONPATH for server children: this checkout, or ``ref``'s client/server/plugins from git."""
    if ref is None:
        yield
        return
    saved = os.environ.get("PYTHONPATH")
    with tempfile.TemporaryDirectory(prefix="deepscope-flood-ref-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "client", "server", "plugins"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [f"{tmp}/client", f"{tmp}/server", f"{tmp}/plugins", *filter(None, (saved or "").split(os.pathsep))]
        )
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved


def _row(label: str, r: FloodResult, nbytes: int) -> str:
    codes = ", ".join(f"{n} {c.name}" for c, n in r.codes.most_common())
    probe = f"{r.probe.served} served, {len(r.probe.failures)} failed"
    return (
        f"| {label} | {codes} | {r.baseline / MiB:,.0f} | {r.peak / MiB:,.0f} | {r.after / MiB:,.0f} | "
        f"{(r.peak - r.baseline) / MiB:+,.0f} | {r.seconds:.1f} | {probe} |"
    )


@contextlib.contextmanager
def started_server() -> Iterator[tuple[int, str, str]]:
    """A real server (``python -m deepscope_server --auth-token-file ...``, loopback): pid, address, token."""
    with tempfile.TemporaryDirectory(prefix="deepscope-flood-") as tmp:
        server = EmbeddedServer(store=Path(tmp) / "store", no_entry_points=True)
        address = server.start()
        try:
            yield server.process.pid, address, server.token
        finally:
            server.stop()


def run(smoke: bool = False) -> list:  # [common.Table]; for bench/run_all.py
    """The flood against this checkout as a bench table (smoke: 8 calls of 4 MiB, 4 at a time)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import Table

    requests, clients, mib = (8, 4, 4) if smoke else (48, 16, 60)
    table = Table(
        f"10. Pre-auth flood: {requests} unauthenticated Capture calls of {mib} MiB, {clients} at a time",
        [
            "flood status codes",
            "server RSS before MiB",
            "peak MiB",
            "peak growth MiB",
            "flood s",
            "authenticated ListModels during the flood",
            "all refused, server serving",
        ],
    )
    with started_server() as (pid, address, token):
        r = measure(pid, address, token, requests, clients, mib * MiB, 120.0, settle=0.5 if smoke else 3.0)
    ok = set(r.codes) == {grpc.StatusCode.UNAUTHENTICATED} and not r.probe.failures
    table.add(
        ", ".join(f"{n} {c.name}" for c, n in r.codes.most_common()),
        r.baseline / MiB,
        r.peak / MiB,
        (r.peak - r.baseline) / MiB,
        r.seconds,
        f"{r.probe.served} served, {len(r.probe.failures)} failed",
        table.check(ok, "pre-auth flood: a call was not refused as UNAUTHENTICATED or the server stopped serving"),
    )
    table.notes.append("details and the before/after comparison: `bench/preauth_flood.py --before REF`, bench/LOAD.md")
    return [table]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mib", type=int, default=60, help="size of each request in MiB")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of each flood call (s)")
    parser.add_argument("--before", metavar="REF", help="also flood the server code of this git ref")
    parser.add_argument(
        "--method",
        choices=sorted(METHODS),
        default="Capture",
        help="the RPC flooded (health and reflection are open: they answer without the token)",
    )
    args = parser.parse_args(argv)
    nbytes = args.mib * MiB
    print(
        f"### Pre-auth flood: {args.requests} unauthenticated {args.method} calls of {args.mib} MiB, "
        f"{args.clients} at a time (server RSS in MiB)\n"
    )
    print(
        "| server code | flood status codes | RSS before | peak | 3 s after | peak growth | flood s | "
        "authenticated ListModels during the flood |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = False
    for label, ref in ([(f"before ({args.before})", args.before)] if args.before else []) + [("this checkout", None)]:
        with code_of(ref), started_server() as (pid, address, token):
            result = measure(
                pid, address, token, args.requests, args.clients, nbytes, args.timeout, (METHODS[args.method],)
            )
        print(_row(label, result, nbytes), flush=True)
        for failure in result.probe.failures[:3]:
            print(f"  authenticated call failed: {failure}")
        failed = ref is None and (
            bool(result.probe.failures)
            or args.method in ("Capture", "GetModel")
            and set(result.codes) != {grpc.StatusCode.UNAUTHENTICATED}
        )
    print(f"\nTotal bytes sent per run: {args.requests * nbytes / MiB:,.0f} MiB.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark and print its table: ``make bench`` (full) or ``make bench-smoke`` (< 60 s).

Each script measures a target as a ratio against a baseline taken in the same process and run
(see bench/README.md). ``--smoke`` shrinks every case so the scripts stay exercised by the test
suite (tests/unit/test_bench_smoke.py); its figures mean nothing. In smoke mode the server child
processes are all launched first, so their start-up overlaps the in-process benchmarks.
Exit code: 0 when every script ran (missed targets are listed, not fatal; ``--strict`` makes
them fatal), 1 when a script crashed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SCRIPTS = (
    "bench_capture",
    "bench_transfer",
    "bench_box_covering",
    "bench_conv_strength",
    "bench_streaming_rss",
    "bench_concurrency",
    "bench_overhead",
    "preauth_flood",
    "bench_ray",
    # Last: its TorchLens peer wraps torch functions globally, after which torch.onnx.export fails
    # in this process (the other scripts export ONNX models).
    "bench_sdk",
)
#: Not in --smoke: starting a Ray cluster and warming its workers takes minutes on a busy 2-core box, which
#: tests/unit/test_bench_smoke.py's 600 s budget cannot absorb; ``bench_ray.py --smoke`` runs it alone.
NOT_IN_SMOKE = ("bench_ray",)
#: Scripts that can share the smoke run's server child process (one started early, reused).
SHARES_SERVER = ("bench_transfer", "bench_concurrency", "bench_overhead", "bench_sdk")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, < 60 s; checks the scripts run")
    ap.add_argument("--only", nargs="*", choices=SCRIPTS, help="run only these scripts")
    ap.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # the ONNX exporter's registration chatter
    import importlib

    import common

    common.set_threads()
    print(f"# deepscope benchmarks{' (smoke)' if args.smoke else ''}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# {common.machine()}\n", flush=True)
    scripts = (
        sorted(args.only, key=SCRIPTS.index)
        if args.only
        else [s for s in SCRIPTS if not (args.smoke and s in NOT_IN_SMOKE)]
    )
    shared: dict[str, object] = {}
    started: list = []
    if args.smoke:
        from server import BenchServer

        if any(name in scripts for name in SHARES_SERVER):
            shared["server"] = BenchServer(raw=True, threads=common.THREADS, wait=False)
            started.append(shared["server"])
        if "bench_streaming_rss" in scripts:
            shared["servers"] = [BenchServer(raw=False, threads=common.THREADS, wait=False) for _ in range(2)]
            started += shared["servers"]
    crashed, missed = [], []
    t_all = time.perf_counter()
    try:
        for name in scripts:
            t0 = time.perf_counter()
            try:
                module = importlib.import_module(name)
                kwargs = {}
                if name in SHARES_SERVER and "server" in shared:
                    kwargs["server"] = shared["server"].wait()  # type: ignore[attr-defined]
                if name == "bench_streaming_rss" and "servers" in shared:
                    kwargs["servers"] = shared["servers"]
                tables = module.run(args.smoke, **kwargs)
            except Exception:  # report and go on with the other scripts
                crashed.append(name)
                print(f"### {name} FAILED\n\n```\n{traceback.format_exc()}```\n", flush=True)
                continue
            for table in tables:
                table.print()
                missed += table.failures
            print(f"({name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
    finally:
        for srv in started:
            srv.stop()
    print(
        f"# total {time.perf_counter() - t_all:.1f} s; crashed: {', '.join(crashed) or 'none'}; "
        f"targets missed: {'; '.join(missed) or 'none'}"
    )
    if crashed:
        return 1
    return 2 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())

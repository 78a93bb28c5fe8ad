"""Target 8: the fixed cost of one Capture RPC (issue 16, item 5).

An empty capture (``layers=[]``, one sample of the zoo MLP 64-32-16-10, model outputs only)
through the SDK against a real server child process over loopback TCP, the model in its
sandboxed worker (the server's default). The forward pass is ~50 us, so what is measured is the
call itself: request encoding, gRPC both ways, the model lookup, the hand-off to the worker and
back, framing and decoding the output. Reference rows: the same forward pass in this process,
and a ListModels round trip (gRPC + store listing, no worker). Target: median <= 2 ms.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Table, cpu_per_call, interleaved, median, ms, script_main, set_threads, spread


def run(smoke: bool = False, server=None) -> list[Table]:
    set_threads()
    import numpy as np
    import psutil
    import torch
    from common import THREADS

    from deepscope.v1 import introspection_pb2 as pb
    from deepscope_server import zoo
    from server import BenchServer

    repeats = 30 if smoke else 300
    table = Table(
        "8. Per-call overhead: empty capture round trip (SDK -> server -> sandboxed worker)",
        ["call", "median ms", "spread", "target", "met"],
    )
    srv = server or BenchServer(raw=False, threads=THREADS)
    with tempfile.TemporaryDirectory(prefix="deepscope-bench-") as tmp:
        module, _ = zoo.build("mlp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = zoo.export(module, torch.randn(4, 64), Path(tmp), formats=("pt2",), stem="mlp")["pt2"]
        client = srv.connect()
        model = client.upload_model(path)
        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

        def empty_capture() -> None:
            acts = client.capture(model, x, layers=[])
            assert len(acts.model_outputs) == 1

        def list_models() -> None:
            client._call(client._stub.ListModels, pb.ListModelsRequest())

        def local_forward() -> None:
            with torch.inference_mode():
                module(torch.from_numpy(x)).numpy()

        times = interleaved({"capture": empty_capture, "list": list_models, "local": local_forward}, repeats, warmup=10)
        cap = median(times["capture"])
        table.add(
            "client.capture(model, x[1, 64], layers=[])",
            ms(cap),
            spread(times["capture"], ms),
            "<= 2 ms",
            table.check(cap <= 2e-3, f"empty capture round trip {ms(cap):.2f} ms > 2 ms"),
        )
        # CPU time per call, summed over the client, the server and its workers: what the call
        # costs the machine, much less sensitive than wall time to other people's load.
        calls = 50 if smoke else 300
        own = psutil.Process(srv.pid)
        before = sum(own.cpu_times()[:2])
        cpu = cpu_per_call(srv.pid, empty_capture, calls)
        server_alone = (sum(own.cpu_times()[:2]) - before) / calls  # the rest is the model worker's
        table.add(
            "  CPU per empty capture: client / server + model worker",
            f"{ms(cpu[0]):.2f} / {ms(cpu[1]):.2f}",
            f"server {ms(server_alone):.2f}, worker {ms(cpu[1] - server_alone):.2f}",
            "",
            "",
        )
        table.add(
            "client ListModels round trip (reference)", ms(median(times["list"])), spread(times["list"], ms), "", ""
        )
        table.add(
            "the same forward pass in this process (reference)",
            ms(median(times["local"])),
            spread(times["local"], ms),
            "",
            "",
        )
        client.close()
    if server is None:
        srv.stop()
    table.notes.append(
        f"{repeats} interleaved calls after 10 warm-up; spread = interquartile range; "
        f"torch at {THREADS} thread(s); server: `deepscope_server` child process, loopback TCP, "
        "token auth, default --model-isolation process"
    )
    return [table]


if __name__ == "__main__":
    script_main(run)

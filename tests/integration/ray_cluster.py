"""A two-node Ray cluster (head + one worker node, 1 CPU each) owned by a process of its own.

Ray starts its daemons with ``subprocess.Popen(preexec_fn=...)``, which Python documents as unsafe in a
process with threads: the child can deadlock before ``exec``. The test process has gRPC's and torch's
threads, and gRPC's fork handlers run in every child it forks; twice in CI the head's GCS never started
(no log file, no port after 120 s). Here the cluster forks from a fresh process instead.

Protocol: one JSON line on stdout once both nodes are up (``address``, ``worker``: the worker node's
id); then each ``remove-worker`` line on stdin kills the worker node (answered ``removed``); end of
stdin shuts the cluster down.
"""

from __future__ import annotations

import json
import os
import sys

from ray.cluster_utils import Cluster

OBJECT_STORE = 80 << 20  # Ray's minimum is 75 MiB; the runs here move kilobytes
# Only what the tests use: no dashboard (a heavy process per node).
NODE = {"num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False}


def main() -> None:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    try:
        worker = cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "worker": worker.node_id}), flush=True)
        for line in sys.stdin:
            if line.strip() == "remove-worker":
                cluster.remove_node(worker, allow_graceful=False)
                print("removed", flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()

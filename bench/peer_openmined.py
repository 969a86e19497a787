"""OpenMined PSI cardinality on two files of IDs (one per line); prints one JSON line.

    <python with openmined-psi> bench/peer_openmined.py SERVER_FILE CLIENT_FILE [FPR]

Run by ``bench.e2e --peer openmined`` in a separate interpreter (``openmined-psi`` pins a
protobuf older than matcher's generated code accepts). Both parties run in this one process,
one after the other, as in OpenMined's own benchmarks; the messages are serialized and parsed
as they would be on the wire and their sizes are reported. The server plays the platform
(its set is encoded into a Golomb-compressed set, GCS), the client plays the merchant and
learns only the intersection size (``reveal_intersection=False``).
"""

from __future__ import annotations

import json
import os
import sys
import time

from peer_common import peak_rss_mib


def main(argv: list[str]) -> None:
    try:
        import private_set_intersection.python as psi
    except ImportError as err:
        print(json.dumps({"available": False, "reason": f"openmined-psi not importable: {err}"}))
        return
    server_file, client_file = argv[0], argv[1]
    fpr = float(argv[2]) if len(argv) > 2 else 1e-9
    with open(server_file) as f:
        server_items = f.read().split("\n")
    with open(client_file) as f:
        client_items = f.read().split("\n")

    t = {}
    started = time.perf_counter()
    server = psi.server.CreateWithNewKey(False)
    client = psi.client.CreateWithNewKey(False)
    t["keys_s"] = time.perf_counter() - started

    mark = time.perf_counter()
    setup = server.CreateSetupMessage(fpr, len(client_items), server_items, psi.DataStructure.GCS)
    setup_bytes = setup.SerializeToString()
    t["server_setup_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    request = client.CreateRequest(client_items)
    request_bytes = request.SerializeToString()
    t["client_request_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    response = server.ProcessRequest(psi.Request.FromString(request_bytes) if hasattr(psi.Request, "FromString")
                                     else request)
    response_bytes = response.SerializeToString()
    t["server_process_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    size = client.GetIntersectionSize(
        psi.ServerSetup.FromString(setup_bytes) if hasattr(psi.ServerSetup, "FromString") else setup,
        psi.Response.FromString(response_bytes) if hasattr(psi.Response, "FromString") else response)
    t["client_intersect_s"] = time.perf_counter() - mark
    total = time.perf_counter() - started

    print(json.dumps({
        "available": True,
        "finished": True,
        "package": "openmined-psi",
        "version": getattr(psi, "__version__", None),
        "data_structure": "GCS",
        "fpr": fpr,
        "server_items": len(server_items),
        "client_items": len(client_items),
        "intersection_size": int(size),
        "total_s": round(total, 3),
        **{k: round(v, 3) for k, v in t.items()},
        "wire_bytes": {"server_setup": len(setup_bytes), "client_request": len(request_bytes),
                       "server_response": len(response_bytes),
                       "total": len(setup_bytes) + len(request_bytes) + len(response_bytes)},
        "peak_rss_mib": peak_rss_mib(),
        "threads_note": "single process; OpenMined PSI runs its crypto on one thread",
        "pid": os.getpid(),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Microsoft APSI (unbalanced PSI over BFV, unlabeled mode) on generated sets; prints one JSON line.

    /tmp/apsivenv/bin/python bench/peer_apsi.py --server-size N --client-size n
                                                [--overlap F] [--seed S] [--json OUT]

Uses PyAPSI (PyPI ``apsi``), whose PyPI releases (0.2.0-0.3.0) are sdists only: their build
downloads APSI and vcpkg from GitHub, so ``pip install apsi`` fails on a machine without
GitHub access ("<urlopen error [Errno -2] Name or service not known>"). It is built by hand
instead, from the ``apsi==0.2.3`` sdist (pins APSI 0.12.0, commit b967a12) and the sources of
microsoft/APSI, microsoft/SEAL v4.1.2, microsoft/Kuku v2.1.0 and pybind/pybind11 v2.13.6 (here
mirrored under /work/.mirror/<owner>+<name>/repo by the session's ``fetch`` tool), the rest
from Debian (CPython 3.11.7, Debian 12, x86_64; ~3 min on 2 cores):

    apt-get install -y libmsgsl-dev libflatbuffers-dev flatbuffers-compiler \\
        flatbuffers-compiler-dev libjsoncpp-dev liblog4cplus-dev libzstd-dev ninja-build cmake
    python3 -m venv /tmp/apsivenv && B=/tmp/apsibuild D=/tmp/apsideps M=/work/.mirror && mkdir -p $B
    cd $B && /tmp/apsivenv/bin/pip download --no-deps apsi==0.2.3 && tar xzf apsi-0.2.3.tar.gz
    git --git-dir=$M/microsoft+SEAL/repo archive --prefix=SEAL/ v4.1.2 | tar x
    git --git-dir=$M/microsoft+Kuku/repo archive --prefix=Kuku/ v2.1.0 | tar x
    git --git-dir=$M/pybind+pybind11/repo archive --prefix=pybind11/ v2.13.6 | tar x
    mkdir apsi-0.2.3/external && git --git-dir=$M/microsoft+APSI/repo archive \\
        --prefix=apsi-0.2.3/external/apsi/ b967a126b4e1c682b039afc2d76a98ea2c993230 | tar x
    C="-G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DCMAKE_PREFIX_PATH=$D"
    cmake -S SEAL -B SEAL/build $C -DCMAKE_INSTALL_PREFIX=$D -DSEAL_BUILD_DEPS=OFF -DSEAL_USE_ZLIB=OFF \\
        -DSEAL_THROW_ON_TRANSPARENT_CIPHERTEXT=OFF && cmake --build SEAL/build && cmake --install SEAL/build
    cmake -S Kuku -B Kuku/build $C -DCMAKE_INSTALL_PREFIX=$D -DKUKU_BUILD_DEPS=OFF \\
        && cmake --build Kuku/build && cmake --install Kuku/build
    # Debian's static libzstd is not PIC (SEAL insists on the static one), its flatbuffers config is
    # named FlatBuffers with a "none" build type, and its jsoncpp has no jsoncpp_static target:
    sed -i 's/zstd::libzstd_static>/zstd::libzstd_shared>/' $D/lib/cmake/SEAL-4.1/SEALTargets.cmake
    mkdir -p $D/lib/cmake/Flatbuffers $D/lib/cmake/jsoncpp && L=/usr/lib/x86_64-linux-gnu/cmake
    printf '%s\\n' "include($L/flatbuffers/FlatBuffersConfig.cmake)" "set(Flatbuffers_FOUND TRUE)" \\
        "set_target_properties(flatbuffers::flatc PROPERTIES IMPORTED_LOCATION_RELEASE /usr/bin/flatc)" \\
        > $D/lib/cmake/Flatbuffers/FlatbuffersConfig.cmake
    printf '%s\\n' "include($L/jsoncpp/jsoncppConfig.cmake)" "set(jsoncpp_FOUND TRUE)" \\
        "add_library(jsoncpp_static INTERFACE IMPORTED GLOBAL)" \\
        "set_target_properties(jsoncpp_lib PROPERTIES IMPORTED_GLOBAL TRUE)" \\
        "set_target_properties(jsoncpp_static PROPERTIES INTERFACE_LINK_LIBRARIES jsoncpp_lib)" \\
        > $D/lib/cmake/jsoncpp/jsoncppConfig.cmake
    cmake -S apsi-0.2.3 -B apsi-0.2.3/build $C -DAPSI_USE_ZMQ=OFF -DPYTHON_EXECUTABLE=/tmp/apsivenv/bin/python \\
        -DFETCHCONTENT_SOURCE_DIR_PYBIND11=$B/pybind11 -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$B/out \\
        && cmake --build apsi-0.2.3/build
    SP=/tmp/apsivenv/lib/python3.11/site-packages && cp -r apsi-0.2.3/apsi out/_pyapsi*.so $SP/
    mkdir $SP/apsi-0.2.3.dist-info && printf 'Metadata-Version: 2.1\\nName: apsi\\nVersion: 0.2.3\\n' \\
        > $SP/apsi-0.2.3.dist-info/METADATA

(PyAPSI's own CMakeLists forces ``APSI_USE_ASM=OFF``: FourQ's OPRF runs its generic C code.)

Both parties run in this one process, one after the other, as in the OpenMined peer; every
message goes through APSI's own serialization (PyAPSI's string-stream channel), and its size is
what would be on the wire. ``preprocess_s`` is the sender's setup: creating the SenderDB and
inserting the N items (``UnlabeledServer.init_db`` + ``add_items``: the OPRF of every item,
hashing into the bins, and each bin bundle's matching-polynomial coefficients). ``query_s`` is
one query end to end: OPRF request, OPRF response, encrypted query, the sender's homomorphic
evaluation and the receiver's decryption (``phases_s`` splits it). ``bytes_to_server`` = OPRF request + query,
``bytes_to_client`` = OPRF response + query response (PyAPSI rewinds but does not truncate
its output buffer, so these are exact only while each party's second message is the longer one,
which holds for these parameters). APSI's thread pool uses every core.
The receiver learns which of its items are in the sender's set (not just the count); only speed
and traffic are being compared with matcher's unbalanced mode.

Parameters are APSI's recommended ones for the set sizes, from microsoft/APSI ``parameters/``
(the ``<server>-<client>`` files; 11041 is the smallest client size listed that fits 10,000).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

from peer_common import peak_rss_mib

# Copied from microsoft/APSI parameters/1M-11041.json and parameters/16M-11041.json (v0.12.0).
PARAMS = {
    "1M-11041": {
        "table_params": {"hash_func_count": 3, "table_size": 16384, "max_items_per_bin": 98},
        "item_params": {"felts_per_item": 4},
        "query_params": {"ps_low_degree": 8, "query_powers": [1, 3, 4, 9, 27]},
        "seal_params": {"plain_modulus_bits": 21, "poly_modulus_degree": 8192,
                        "coeff_modulus_bits": [56, 56, 24, 24]},
    },
    "16M-11041": {
        "table_params": {"hash_func_count": 3, "table_size": 16380, "max_items_per_bin": 1304},
        "item_params": {"felts_per_item": 5},
        "query_params": {"ps_low_degree": 44, "query_powers": [1, 3, 11, 18, 45, 225]},
        "seal_params": {"plain_modulus_bits": 22, "poly_modulus_degree": 8192,
                        "coeff_modulus_bits": [56, 56, 56, 50]},
    },
}
MAX_CLIENT = 11041
APSI_CPP = "0.12.0 (b967a12, as pinned by PyAPSI 0.2.3)"


def make_sets(server_size: int, client_size: int, overlap: float, seed: int) -> tuple[list[str], list[str], int]:
    """Distinct "+86138xxxxxxxx" numbers; round(overlap * n) of the client's are in the server's set."""
    rng = random.Random(seed)
    common = round(overlap * client_size)
    numbers = [f"+86138{x:08d}" for x in rng.sample(range(10**8), server_size + client_size - common)]
    server, fresh = numbers[:server_size], numbers[server_size:]
    client = rng.sample(server, common) + fresh
    rng.shuffle(client)
    return server, client, common


def run(server_size: int, client_size: int, overlap: float, seed: int) -> dict:
    try:
        import apsi
        from apsi import utils
        from importlib.metadata import version
    except ImportError as err:
        return {"peer": "apsi", "skipped": f"apsi not importable: {err}"}
    name = "1M-11041" if server_size <= 1 << 20 else "16M-11041"
    params_json = json.dumps(PARAMS[name])
    utils.set_log_level("WARNING")
    utils.set_thread_count(os.cpu_count() or 1)
    server_items, client_items, expected = make_sets(server_size, client_size, overlap, seed)

    started = time.perf_counter()
    server = apsi.UnlabeledServer()
    server.init_db(params_json)
    server.add_items(server_items)
    preprocess_s = time.perf_counter() - started

    phases, mark = {}, time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[phase] = round(now - mark, 3)
        mark = now

    client = apsi.UnlabeledClient(params_json)
    oprf_request = client.oprf_request(client_items)
    lap("client_oprf_s")
    oprf_response = server.handle_oprf_request(oprf_request)
    lap("server_oprf_s")
    query = client.build_query(oprf_response)
    lap("client_query_s")
    response = server.handle_query(query)
    lap("server_query_s")
    found = client.extract_result(response)
    lap("client_extract_s")

    return {
        "peer": "apsi", "version": version("apsi"), "apsi_cpp": APSI_CPP, "mode": "unlabeled",
        "server_size": server_size, "client_size": client_size, "overlap": overlap, "seed": seed,
        "threads": utils.get_thread_count(),
        "preprocess_s": round(preprocess_s, 3), "query_s": round(sum(phases.values()), 3),
        "phases_s": phases,
        "bytes_to_server": len(oprf_request) + len(query),
        "bytes_to_client": len(oprf_response) + len(response),
        "messages_bytes": {"oprf_request": len(oprf_request), "oprf_response": len(oprf_response),
                           "query": len(query), "query_response": len(response)},
        "intersection": len(set(found)), "expected": expected,
        "params": f"{name} (microsoft/APSI parameters/{name}.json)",
        "peak_rss_mib": peak_rss_mib(),
    }


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--server-size", type=int, required=True)
    ap.add_argument("--client-size", type=int, required=True)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args(argv)
    if not 0 < args.client_size <= MAX_CLIENT or not 0 <= args.overlap <= 1:
        ap.error(f"--client-size must be in 1..{MAX_CLIENT} (the embedded parameters) and --overlap in [0, 1]")
    result = run(args.server_size, args.client_size, args.overlap, args.seed)
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

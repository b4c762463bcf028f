#!/usr/bin/env python3
"""HNSW search through the Python binding: single-query latency and batch throughput.

Data: the committed subset, ``tests/data/minilm-5k.*.npy`` (5000 MiniLM embeddings, 200
queries, exact top-100 ground truth), **unless** ``EMF_DATA_DIR`` (or ``--data-dir``) names the
directory of the full set: then ``minilm-wordnet-100k.{base.f16,query.f32,gt100.i32}.npy`` are
read from there (100000 vectors, 1000 queries).

Measured, on the same data and parameters (M 16, ef_construction 200, ef 50, k 10, cosine):

* build: ``HnswIndex.insert_batch`` of every base vector on ``--threads`` library threads
  (2 by default), wall time (the float16 base is converted to float32 once, before timing);
* recall@10 against the exact ground truth;
* single-query latency through Python: ``index.search(q, k=10)`` timed one call at a time
  (``time.perf_counter_ns``; the garbage collector off while timing), p50 and p99 in µs over
  ``--repeat`` passes over the queries, after one warm-up pass. The row "raw ctypes call" is
  ``lib.emf_hnsw_search`` with its output allocated once, so the difference between the two
  rows is what the binding adds per call (argument checks, output arrays);
* throughput: ``index.search_batch(queries, k=10)`` on 1 library thread and on ``--threads``,
  queries per second (best of ``--repeat`` runs).

Peers, when importable, on the same vectors in the same run (``--no-peers`` to skip):
hnswlib (float32 HNSW, same M / ef_construction / ef; its ``knn_query`` for one query and for
the batch) and exact NumPy brute force (float32 matrix product + argpartition).

    python3 ffi/python/benches/bench_hnsw.py                      # committed 5K subset
    EMF_DATA_DIR=/path/to/data python3 ffi/python/benches/bench_hnsw.py   # 100K

``ERLMCP_FLOW_LIB`` selects the library, as for the package (else target/release).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from ctypes import byref, c_size_t
from pathlib import Path

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # ffi/python
REPO = PACKAGE_ROOT.parents[1]
sys.path.insert(0, str(PACKAGE_ROOT))

import erlmcp_flow as emf  # noqa: E402
from erlmcp_flow import vector as _vector  # noqa: E402
from erlmcp_flow._native import lib  # noqa: E402

M, EF_CONSTRUCTION, EF, K = 16, 200, 50, 10


def load(data_dir: str | None):
    """(label, base float16, queries float32, ground truth ids)."""
    if data_dir:
        d = Path(data_dir)
        stem = "minilm-wordnet-100k"
        label = f"full set {d / stem}"
    else:
        d = REPO / "tests" / "data"
        stem = "minilm-5k"
        label = f"committed subset {d.relative_to(REPO) / stem} (set EMF_DATA_DIR for 100K)"
    base = np.load(d / f"{stem}.base.f16.npy")
    queries = np.ascontiguousarray(np.load(d / f"{stem}.query.f32.npy"), dtype=np.float32)
    gt = np.load(d / f"{stem}.gt100.i32.npy")[:, :K]
    return label, base, queries, gt


def recall(ids, gt) -> float:
    return float(np.mean([len(set(ids[i][:K].tolist()) & set(gt[i].tolist())) / K
                          for i in range(len(gt))]))


def latencies(search, queries, repeat: int):
    """(p50 µs, p99 µs) of search(q) timed one call at a time."""
    for q in queries:  # warm-up
        search(q)
    samples = []
    clock = time.perf_counter_ns
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for q in queries:
                t0 = clock()
                search(q)
                samples.append(clock() - t0)
    finally:
        if gc_was:
            gc.enable()
    s = np.array(samples) / 1000.0
    return float(np.percentile(s, 50)), float(np.percentile(s, 99))


def qps(batch, queries, repeat: int) -> float:
    best = float("inf")
    batch(queries)  # warm-up
    for _ in range(repeat):
        t0 = time.perf_counter()
        batch(queries)
        best = min(best, time.perf_counter() - t0)
    return len(queries) / best


def bench_emf(base32, queries, gt, threads: int, repeat: int):
    rows = []
    index = emf.HnswIndex(base32.shape[1], m=M, ef_construction=EF_CONSTRUCTION, ef_search=EF)
    ids = np.arange(len(base32), dtype=np.uint64)
    t0 = time.perf_counter()
    index.insert_batch(ids, base32, threads=threads)
    build = time.perf_counter() - t0
    found, _, _ = index.search_batch(queries, k=K, ef=EF)
    r = recall(found, gt)
    p50, p99 = latencies(lambda q: index.search(q, k=K, ef=EF), queries, repeat)
    one = qps(lambda qs: index.search_batch(qs, k=K, ef=EF, threads=1), queries, repeat)
    many = qps(lambda qs: index.search_batch(qs, k=K, ef=EF, threads=threads), queries, repeat)
    rows.append(("erlmcp-flow HnswIndex (int8)", build, r, p50, p99, one, many))

    # The same search as one bare ctypes call, output allocated once: the floor under the
    # binding's per-call cost.
    _vector._numpy()
    hits = np.empty(K, dtype=_vector._HIT_DTYPE)
    hits_addr, count = hits.ctypes.data, c_size_t()
    count_ref, handle, dim = byref(count), index._raw, base32.shape[1]
    fn = lib.emf_hnsw_search
    # Each query's address, taken once (the timed call then does no NumPy work at all).
    addresses = [q.ctypes.data for q in queries]

    def raw(address):
        fn(handle, address, dim, K, EF, 0, None, 0, hits_addr, count_ref)

    p50r, p99r = latencies(raw, addresses, repeat)
    rows.append(("  raw ctypes call (same index)", None, None, p50r, p99r, None, None))
    memory = index.memory_bytes
    index.close()
    return rows, memory


def bench_hnswlib(base32, queries, gt, threads: int, repeat: int):
    try:
        import hnswlib
    except ImportError:
        return []
    p = hnswlib.Index(space="cosine", dim=base32.shape[1])
    p.init_index(max_elements=len(base32), ef_construction=EF_CONSTRUCTION, M=M, random_seed=1)
    t0 = time.perf_counter()
    p.add_items(base32, np.arange(len(base32)), num_threads=threads)
    build = time.perf_counter() - t0
    p.set_ef(EF)
    found, _ = p.knn_query(queries, k=K, num_threads=threads)
    r = recall(found, gt)
    p50, p99 = latencies(lambda q: p.knn_query(q, k=K, num_threads=1), queries, repeat)
    one = qps(lambda qs: p.knn_query(qs, k=K, num_threads=1), queries, repeat)
    many = qps(lambda qs: p.knn_query(qs, k=K, num_threads=threads), queries, repeat)
    version = getattr(hnswlib, "__version__", "")
    return [(f"hnswlib {version} (f32)".replace("  ", " "), build, r, p50, p99, one, many)]


def bench_brute_force(base32, queries, gt, repeat: int):
    unit = base32 / np.linalg.norm(base32, axis=1, keepdims=True)

    def batch(qs):
        scores = qs @ unit.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        return np.take_along_axis(top, order, axis=1)

    r = recall(batch(queries), gt)
    p50, p99 = latencies(lambda q: batch(q[None, :]), queries, max(1, repeat // 2))
    many = qps(batch, queries, repeat)
    return [("NumPy brute force (f32, exact)", None, r, p50, p99, None, many)]


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("EMF_DATA_DIR") or None,
                    help="directory of minilm-wordnet-100k.*.npy (default: $EMF_DATA_DIR; "
                         "unset: the committed 5K subset)")
    ap.add_argument("--threads", type=int, default=2,
                    help="library threads for insert_batch and the batch search (default 2)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="passes over the queries for latency, runs for QPS "
                         "(default 10 for 5K, 3 for 100K)")
    ap.add_argument("--no-peers", action="store_true", help="skip hnswlib and brute force")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file

    label, base, queries, gt = load(args.data_dir)
    repeat = args.repeat or (10 if len(base) <= 10_000 else 3)
    base32 = np.ascontiguousarray(base, dtype=np.float32)

    print(f"data:    {label}: {len(base)} x {base.shape[1]} base, {len(queries)} queries")
    print(f"params:  M {M}, ef_construction {EF_CONSTRUCTION}, ef {EF}, k {K}, cosine; "
          f"insert_batch / search_batch threads {args.threads}; CPUs {os.cpu_count()}")
    load1, load5, _ = os.getloadavg()
    print(f"machine: {platform.machine()}, load average {load1:.2f} (1 min) {load5:.2f} (5 min) "
          f"at start: other work on the CPUs skews the multi-thread column")
    print(f"library: {emf.library_path} ({emf.version()}); Python {platform.python_version()}, "
          f"NumPy {np.__version__}")
    env = os.environ.get("EMF_DATA_DIR")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}"
          + (f"  (EMF_DATA_DIR={env})" if env else ""))
    print()

    rows, memory = bench_emf(base32, queries, gt, args.threads, repeat)
    if not args.no_peers:
        rows += bench_hnswlib(base32, queries, gt, args.threads, repeat)
        rows += bench_brute_force(base32, queries, gt, repeat)

    head = ("engine", "build s", "recall@10", "p50 µs", "p99 µs", "batch QPS 1 thr",
            f"batch QPS {args.threads} thr")
    widths = (32, 8, 9, 8, 8, 15, 15)
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                    for i, (h, w) in enumerate(zip(head, widths))))
    print("  ".join("-" * w for w in widths))
    for name, build, r, p50, p99, one, many in rows:
        cells = (name, fmt(build, ".2f"), fmt(r, ".4f"), fmt(p50, ".1f"), fmt(p99, ".1f"),
                 fmt(one, ",.0f"), fmt(many, ",.0f"))
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(cells, widths))))
    print()
    print(f"erlmcp-flow index memory: {memory / 2**20:.1f} MiB (emf_hnsw_stats)")
    print("p50/p99: one search per call from Python, k 10; QPS: search_batch of all queries "
          "(best of the runs).")


if __name__ == "__main__":
    main()

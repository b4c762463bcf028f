#!/usr/bin/env python3
"""HNSW peer benchmark (issue 5): faiss, hnswlib and usearch on real MiniLM embeddings.

Same parameters for every peer: M=16, ef_construction=200, ef_search=50, k=10, inner-product
metric (== cosine: the vectors are L2-normalised). Each peer runs in its own fresh subprocess so a
crash, a missing package or memory left over from another peer cannot affect its numbers.

Measured per peer:
  build_s         wall time of train (faiss SQ8 only) + add of the n base vectors, --threads threads
  recall_at10     mean over queries of |result ∩ gt[:10]| / 10, from the one-at-a-time loop results
  qps_1t_loop     1 thread, queries searched one per call in a Python loop (includes per-call Python
                  overhead); Q / wall time of a pass, median of --reps passes
  qps_1t_batch    1 thread, all Q queries in one search call; Q / wall time, median of --reps calls
  search_p50_us / search_p99_us  per-call latency of the loop, over all --reps passes
  memory_mb       serialized index size (faiss serialize_index, hnswlib index_file_size(),
                  usearch serialized_length); memory_how says which
  rss_build_mb    growth of VmRSS (/proc/self/status) across the build
  other_cores_busy  mean number of cores other processes kept busy during this peer's build and
                  search (from /proc/stat minus own CPU time); well above 0 means the numbers are
                  contaminated by a shared machine
A warm-up (one batched pass + one loop pass, untimed) precedes all search timing.

Usage:
  EMF_DATA_DIR=/path/to/data python3 crates/bench/benches/hnsw_peers.py --n 20000 --out peers_20k.json
  python3 crates/bench/benches/hnsw_peers.py --data /path/to/data --out peers_100k.json
The data directory (--data, default $EMF_DATA_DIR) holds minilm-wordnet-100k.*.npy.
"""
import os

# Brute-force ground truth must not leave BLAS threads spinning while search is timed.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np

PARAMS = {"M": 16, "ef_construction": 200, "ef_search": 50, "k": 10, "metric": "inner_product"}
SEED = 100


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def pkg_version(dist, module=None):
    v = getattr(module, "__version__", None)
    try:
        return v or metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- peers
# Each returns a namespace: version, build(base, threads), single_thread(), search(q2d) -> ids (b, k),
# memory() -> (bytes, how), extra() -> dict of facts worth recording (called after the build).

def _faiss(base_index_fn):
    import faiss
    idx = base_index_fn(faiss)
    idx.hnsw.efConstruction = PARAMS["ef_construction"]

    def build(base, threads):
        faiss.omp_set_num_threads(threads)
        if not idx.is_trained:
            idx.train(base)
        idx.add(base)
        idx.hnsw.efSearch = PARAMS["ef_search"]

    return SimpleNamespace(
        version=faiss.__version__, build=build,
        single_thread=lambda: faiss.omp_set_num_threads(1),
        search=lambda q: idx.search(q, PARAMS["k"])[1],
        memory=lambda: (len(faiss.serialize_index(idx)), "faiss.serialize_index length"),
        extra=lambda: {"compile_options": faiss.get_compile_options(),
                       "notes": "level RNG has a fixed default seed; multi-thread insertion order is not deterministic"})


def faiss_hnswsq8(d):
    return _faiss(lambda faiss: faiss.IndexHNSWSQ(
        d, faiss.ScalarQuantizer.QT_8bit, PARAMS["M"], faiss.METRIC_INNER_PRODUCT))


def faiss_hnswflat(d):
    return _faiss(lambda faiss: faiss.IndexHNSWFlat(d, PARAMS["M"], faiss.METRIC_INNER_PRODUCT))


def hnswlib_f32(d):
    import hnswlib
    idx = hnswlib.Index(space="ip", dim=d)

    def build(base, threads):
        idx.init_index(max_elements=len(base), ef_construction=PARAMS["ef_construction"],
                       M=PARAMS["M"], random_seed=SEED)
        idx.add_items(base, np.arange(len(base)), num_threads=threads)
        idx.set_ef(PARAMS["ef_search"])

    return SimpleNamespace(
        version=pkg_version("hnswlib", hnswlib), build=build,
        single_thread=lambda: idx.set_num_threads(1),
        search=lambda q: idx.knn_query(q, k=PARAMS["k"], num_threads=1)[0],
        memory=lambda: (idx.index_file_size(), "hnswlib index_file_size() (bytes save_index would write)"),
        extra=lambda: {"notes": f"random_seed={SEED}; multi-thread insertion order is not deterministic"})


def _usearch(d, dtype, metric):
    import usearch
    from usearch.index import Index
    idx = Index(ndim=d, metric=metric, dtype=dtype, connectivity=PARAMS["M"],
                expansion_add=PARAMS["ef_construction"], expansion_search=PARAMS["ef_search"])

    def build(base, t):
        idx.add(np.arange(len(base), dtype=np.uint64), base, threads=t)

    return SimpleNamespace(
        version=usearch.__version__, build=build, single_thread=lambda: None,
        search=lambda q: idx.search(q, PARAMS["k"], threads=1).keys,
        memory=lambda: (idx.serialized_length, "usearch serialized_length"),
        extra=lambda: {"metric": metric, "hardware_acceleration": str(idx.hardware_acceleration),
                       "memory_usage_mb": round(idx.memory_usage / 2**20, 2),
                       "notes": "f32 input, quantized by usearch on add/search; no seed exposed, "
                                "multi-thread insertion order is not deterministic"})


def usearch_i8(d):
    # usearch maps f32 to i8 as round(x * 127) with no per-dimension scaling; 'cos' instead of 'ip'
    # gave the same recall here (0.942 vs 0.942 at n=20000).
    return _usearch(d, "i8", "ip")


def usearch_f32(d):
    return _usearch(d, "f32", "ip")


PEERS = {f.__name__: f for f in (faiss_hnswsq8, faiss_hnswflat, hnswlib_f32, usearch_i8, usearch_f32)}


# ---------------------------------------------------------------- data

def default_data_dir():
    return os.environ.get("EMF_DATA_DIR") or None


def load(data_dir, n, nq):
    d = Path(data_dir)
    base_all = np.load(d / "minilm-wordnet-100k.base.f16.npy", mmap_mode="r")
    if n > len(base_all):
        sys.exit(f"--n {n} exceeds the {len(base_all)} base vectors")
    base = np.ascontiguousarray(base_all[:n], dtype=np.float32)
    queries = np.ascontiguousarray(np.load(d / "minilm-wordnet-100k.query.f32.npy")[:nq], dtype=np.float32)
    if n == len(base_all):
        gt = np.load(d / "minilm-wordnet-100k.gt100.i32.npy")[:nq, :PARAMS["k"]]
        gt_how = "shipped gt100 file"
    else:  # exact top-k over the subset, float32 brute force
        scores = queries @ base.T
        top = np.argpartition(-scores, PARAMS["k"], axis=1)[:, :PARAMS["k"]]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        gt = np.take_along_axis(top, order, axis=1)
        gt_how = f"brute force float32 over the first {n} base vectors"
    return base, queries, gt, gt_how


def busy_cpu_s():
    """(CPU seconds the whole machine spent busy since boot, CPU seconds this process used)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(f) - f[3] - f[4]  # minus idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- harness (one peer, in a child)

def run_peer(name, args):
    base, queries, gt, _ = load(args.data, args.n, args.queries)
    try:
        p = PEERS[name](base.shape[1])
    except ImportError as e:
        return {"name": name, "skipped": f"not importable: {e}"}
    k, q_n = PARAMS["k"], len(queries)

    cpu0, t_start = busy_cpu_s(), time.perf_counter()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    p.build(base, args.threads)
    build_s = time.perf_counter() - t0
    rss_build = rss_mb() - rss0
    log(f"  {name}: built in {build_s:.1f} s")

    p.single_thread()
    rows = [queries[i:i + 1] for i in range(q_n)]  # 1-row 2-D views, same call shape for every peer
    p.search(queries)  # warm-up: batched pass and loop pass, untimed
    for r in rows:
        p.search(r)

    loop_s, lat_ns, ids = [], [], None
    for _ in range(args.reps):
        out, t_pass = [], time.perf_counter()
        for r in rows:
            t = time.perf_counter_ns()
            out.append(p.search(r))
            lat_ns.append(time.perf_counter_ns() - t)
        loop_s.append(time.perf_counter() - t_pass)
        ids = np.vstack(out)
    batch_s = []
    for _ in range(args.reps):
        t = time.perf_counter()
        batch_ids = p.search(queries)
        batch_s.append(time.perf_counter() - t)

    ids = ids.astype(np.int64)
    recall = float(np.mean([len(set(ids[i]) & set(gt[i])) / k for i in range(q_n)]))
    if not np.array_equal(ids, np.asarray(batch_ids, dtype=np.int64)):
        log(f"  {name}: note: batched results differ from loop results")
    mem_bytes, mem_how = p.memory()
    lat_us = np.array(lat_ns) / 1e3
    cpu1, wall = busy_cpu_s(), time.perf_counter() - t_start
    other_cores = ((cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / wall
    return {
        "name": name, "version": p.version,
        "build_s": round(build_s, 3), "build_threads": args.threads,
        "recall_at10": round(recall, 4),
        "qps_1t_loop": round(q_n / float(np.median(loop_s)), 1),
        "qps_1t_batch": round(q_n / float(np.median(batch_s)), 1),
        "search_p50_us": round(float(np.percentile(lat_us, 50)), 1),
        "search_p99_us": round(float(np.percentile(lat_us, 99)), 1),
        "memory_mb": round(mem_bytes / 2**20, 2), "memory_how": mem_how,
        "rss_build_mb": round(rss_build, 1),
        "other_cores_busy": round(max(other_cores, 0.0), 2),
        **p.extra(),
    }


# ---------------------------------------------------------------- driver

def machine():
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "model": model, "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=default_data_dir(),
                    help="directory of minilm-wordnet-100k.*.npy (default: $EMF_DATA_DIR)")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--threads", type=int, default=2, help="build threads")
    ap.add_argument("--reps", type=int, default=3, help="timed search passes (median reported)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.data:
        sys.exit("no data directory: pass --data DIR or set EMF_DATA_DIR "
                 "(the directory of minilm-wordnet-100k.*.npy)")

    if args._child:
        print(json.dumps(run_peer(args._child, args)), flush=True)
        return

    names = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = [s for s in names if s not in PEERS]
    if unknown:
        sys.exit(f"unknown peers {unknown}; known: {', '.join(PEERS)}")
    _, queries, _, gt_how = load(args.data, args.n, args.queries)
    report = {"n": args.n, "queries": len(queries),
              "params": {**PARAMS, "build_threads": args.threads, "search_threads": 1, "reps": args.reps},
              "ground_truth": gt_how, "machine": machine(),
              "python": platform.python_version(), "numpy": np.__version__,
              "peers": [], "skipped": []}
    common = ["--data", args.data, "--n", str(args.n), "--queries", str(args.queries),
              "--threads", str(args.threads), "--reps", str(args.reps)]
    for name in names:
        log(f"[{name}] n={args.n} q={len(queries)}")
        proc = subprocess.run([sys.executable, __file__, *common, "--_child", name],
                              stdout=subprocess.PIPE, text=True)
        try:
            res = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            res = {"name": name, "skipped": f"child exited with code {proc.returncode}, no result"}
        if "skipped" in res:
            log(f"  SKIP {name}: {res['skipped']}")
            report["skipped"].append(res)
        else:
            report["peers"].append(res)
    report["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)

    cols = [("name", "peer", "{}"), ("version", "version", "{}"), ("build_s", "build s", "{:.1f}"),
            ("recall_at10", "R@10", "{:.4f}"), ("qps_1t_loop", "QPS loop", "{:.0f}"),
            ("qps_1t_batch", "QPS batch", "{:.0f}"), ("search_p50_us", "p50 us", "{:.1f}"),
            ("search_p99_us", "p99 us", "{:.1f}"), ("memory_mb", "mem MB", "{:.1f}"),
            ("rss_build_mb", "RSS+ MB", "{:.1f}"), ("other_cores_busy", "other", "{:.2f}")]
    table = [[f.format(r[key]) for key, _, f in cols] for r in report["peers"]]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h)
              for i, (_, h, _) in enumerate(cols)]
    print(f"n={args.n} queries={len(queries)} M={PARAMS['M']} efC={PARAMS['ef_construction']} "
          f"efS={PARAMS['ef_search']} k={PARAMS['k']} build_threads={args.threads} search_threads=1")
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(cols, widths)))
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    for r in report["peers"]:
        print(f"  {r['name']}: memory = {r['memory_how']}")
    for s in report["skipped"]:
        print(f"  {s['name']}: SKIPPED ({s['skipped']})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

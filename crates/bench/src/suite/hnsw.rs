//! The vector-index suite: our HNSW on real MiniLM embeddings, against faiss (HNSWSQ8,
//! HNSWFlat), hnswlib and usearch (i8, f32) run by `benches/hnsw_peers.py` in a subprocess of
//! the same run, on the same vectors and parameters (M 16, ef_construction 200, ef 50, k 10).
//!
//! Data: the MiniLM set in `EMF_DATA_DIR`, 100K vectors and 1000 queries; `--quick`, or a run
//! without `EMF_DATA_DIR`, uses 5K vectors (the subset committed under `tests/data/`). Peers run when
//! `python3` can import numpy and the peer's package; `EMF_HNSW_PEERS` chooses them (a comma
//! list, `none` to skip; default all, `faiss_hnswsq8` in quick runs).

use std::time::Instant;

use super::{BenchResult, Better, Settings, Suite};
use erlmcp_flow::hnsw::{Hnsw, Originals, Params, SearchOptions};
use erlmcp_flow::vector::{self, Element};
use erlmcp_flow_dataset::Dataset;

/// A peer's numbers, read from the script's JSON.
#[derive(Debug, Clone, Default)]
pub struct PeerNumbers {
    /// Peer name (`faiss_hnswsq8`, ...).
    pub name: String,
    /// recall@10.
    pub recall: f64,
    /// Queries per second on one thread, all queries in one call (no per-call Python cost).
    pub qps_batch: f64,
    /// p99 of one query per call (µs, includes Python's call overhead).
    pub p99_us: f64,
    /// Serialized index size (MB).
    pub memory_mb: f64,
    /// Build time on 2 threads (s).
    pub build_s: f64,
}

/// Runs `benches/hnsw_peers.py` for `peers` on the first `n` vectors and `q` queries; `None`
/// (with a note on stderr) when Python, numpy or the script is missing.
pub fn python_peers(
    n: usize,
    q: usize,
    peers: &str,
    data: &std::path::Path,
) -> Option<Vec<PeerNumbers>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/hnsw_peers.py");
    if !script.exists() || peers == "none" {
        return None;
    }
    let out = std::env::temp_dir().join(format!("emf-hnsw-peers-{}.json", std::process::id()));
    let status = std::process::Command::new("python3")
        .arg(&script)
        .args([
            "--n",
            &n.to_string(),
            "--queries",
            &q.to_string(),
            "--peers",
            peers,
        ])
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("hnsw suite: python peers did not run ({status:?}); pip install numpy faiss-cpu hnswlib usearch");
        return None;
    }
    let text = std::fs::read(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    let v = erlmcp_flow::codec::json::parse(&text).ok()?;
    let num = |p: &erlmcp_flow::codec::value::Value, k: &str| {
        p.get(k).and_then(super::number).unwrap_or(f64::NAN)
    };
    let list = match v.get("peers")? {
        erlmcp_flow::codec::value::Value::Array(a) => a.clone(),
        _ => return None,
    };
    Some(
        list.iter()
            .filter(|p| p.get("error").is_none())
            .map(|p| PeerNumbers {
                name: p
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("?")
                    .to_owned(),
                recall: num(p, "recall_at10"),
                qps_batch: num(p, "qps_1t_batch"),
                p99_us: num(p, "search_p99_us"),
                memory_mb: num(p, "memory_mb"),
                build_s: num(p, "build_s"),
            })
            .collect(),
    )
}

/// The native peer (hnsw_rs over f32, `bench-peers`): `(build seconds on 2 threads,
/// recall@10, 1-thread queries per second)` on the same data and parameters.
#[cfg(feature = "bench-peers")]
pub fn hnsw_rs_peer(d: &Dataset) -> (f64, f64, f64) {
    use hnsw_rs::prelude::Hnsw as Peer;
    let rows: Vec<(&[f32], usize)> = (0..d.base.rows).map(|i| (d.base.row(i), i)).collect();
    // hnsw_rs inserts on rayon's global pool: one thread per CPU (2 on the reference machine).
    let t = Instant::now();
    let mut peer = Peer::<f32, anndists::dist::DistCosine>::new(
        16,
        d.base.rows,
        16,
        200,
        anndists::dist::DistCosine {},
    );
    peer.parallel_insert_slice(&rows);
    let build = t.elapsed().as_secs_f64();
    peer.set_searching_mode(true);
    let search = |i: usize| -> Vec<u64> {
        peer.search(d.queries.row(i), 10, 50)
            .iter()
            .map(|n| n.d_id as u64)
            .collect()
    };
    let found: Vec<Vec<u64>> = (0..d.queries.rows).map(search).collect();
    let recall = d.recall(&found, 10);
    let t = Instant::now();
    for _ in 0..3 {
        for i in 0..d.queries.rows {
            std::hint::black_box(search(i));
        }
    }
    (
        build,
        recall,
        3.0 * d.queries.rows as f64 / t.elapsed().as_secs_f64(),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Brute-force recall@10 of int8 codes, fixed `x·127` against the calibrated per-vector scale
/// (the measurement behind the choice of calibration).
pub fn calibration_recall(d: &Dataset) -> (f64, f64) {
    let run = |code: &dyn Fn(&[f32]) -> Vec<i8>| {
        let base: Vec<Vec<i8>> = (0..d.base.rows).map(|i| code(d.base.row(i))).collect();
        let found: Vec<Vec<u64>> = (0..d.queries.rows.min(200))
            .map(|qi| {
                let q = code(d.queries.row(qi));
                let mut s: Vec<(f64, u64)> = base
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i8::cosine_distance(&q, b), i as u64))
                    .collect();
                s.select_nth_unstable_by(10, |a, b| a.0.total_cmp(&b.0));
                s.truncate(10);
                s.into_iter().map(|p| p.1).collect()
            })
            .collect();
        d.recall(&found, 10)
    };
    let fixed = run(&|x| {
        x.iter()
            .map(|v| (v * 127.0).round().clamp(-127.0, 127.0) as i8)
            .collect()
    });
    let calibrated = run(&|x| {
        vector::quantize_vector(x)
            .map(|q| q.codes)
            .unwrap_or_default()
    });
    (fixed, calibrated)
}

fn run(settings: Settings, progress: &mut dyn FnMut(&str)) -> Vec<BenchResult> {
    let quick = settings.samples < 10;
    let (n, q) = if quick { (5_000, 200) } else { (100_000, 1000) };
    progress("loading vectors");
    let (d, full) = match Dataset::minilm_or_committed(n, q) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("hnsw suite: no data ({e})");
            return Vec::new();
        }
    };
    let (n, q) = (d.base.rows, d.queries.rows);
    let mut out = Vec::new();

    progress("build_2t_s");
    let idx = Hnsw::new(Params {
        originals: Originals::F16,
        ..Params::new(d.base.cols)
    })
    .expect("params");
    let ids: Vec<u64> = (0..n as u64).collect();
    let t = Instant::now();
    idx.insert_batch(&ids, &d.base.data, 2).expect("build");
    let build_s = t.elapsed().as_secs_f64();

    progress("recall_at10_int8");
    let search_all = |rerank: bool| -> Vec<Vec<u64>> {
        (0..q)
            .map(|i| {
                let o = SearchOptions {
                    k: 10,
                    ef: 50,
                    rerank,
                    ..Default::default()
                };
                idx.search(d.queries.row(i), &o)
                    .expect("search")
                    .iter()
                    .map(|h| h.id)
                    .collect()
            })
            .collect()
    };
    let recall_int8 = d.recall(&search_all(false), 10);
    let recall_rerank = d.recall(&search_all(true), 10);

    progress("qps_1t");
    let o = SearchOptions {
        k: 10,
        ef: 50,
        ..Default::default()
    };
    let passes = if quick { 3 } else { 5 };
    let mut lat = Vec::with_capacity(q * passes);
    let mut pass_qps = Vec::new();
    for _ in 0..passes {
        let t = Instant::now();
        for i in 0..q {
            let t1 = Instant::now();
            std::hint::black_box(idx.search(d.queries.row(i), &o).expect("search"));
            lat.push(t1.elapsed().as_secs_f64() * 1e6);
        }
        pass_qps.push(q as f64 / t.elapsed().as_secs_f64());
    }
    pass_qps.sort_by(f64::total_cmp);
    let qps = pass_qps[pass_qps.len() / 2];
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let memory_mb = (idx.memory_bytes() - idx.originals_bytes()) as f64 / 1e6;
    let memory_f16_mb = idx.memory_bytes() as f64 / 1e6;

    progress("insert_p99_us");
    // Single inserts into the built index: the queries, as new ids (after the searches).
    let mut ins: Vec<f64> = (0..q)
        .map(|i| {
            let t = Instant::now();
            idx.insert(n as u64 + i as u64, d.queries.row(i))
                .expect("insert");
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    ins.sort_by(f64::total_cmp);

    progress("calibration (brute force)");
    let (fixed, calibrated) = calibration_recall(&d);

    progress("python peers");
    let peer_list = std::env::var("EMF_HNSW_PEERS").unwrap_or_else(|_| {
        if quick {
            "faiss_hnswsq8".into()
        } else {
            "faiss_hnswsq8,faiss_hnswflat,hnswlib_f32,usearch_i8,usearch_f32".into()
        }
    });
    let data_dir = if full {
        erlmcp_flow_dataset::data_dir()
    } else {
        None
    }
    .unwrap_or_else(erlmcp_flow_dataset::committed_dir);
    let peers = if full || quick {
        python_peers(n, q, &peer_list, &data_dir).unwrap_or_default()
    } else {
        Vec::new()
    };
    let sq8 = peers.iter().find(|p| p.name == "faiss_hnswsq8");

    let tag = |name: &str| {
        if full {
            name.to_owned()
        } else {
            format!("{name}_5k")
        }
    };
    let mut r = BenchResult::new(
        tag("recall_at10_int8"),
        recall_int8,
        "recall",
        Better::Higher,
    )
    .with_targets(Some(0.95), Some(0.97));
    if let Some(p) = sq8 {
        r = r.with_peer("faiss_hnswsq8", p.recall);
    }
    out.push(r);
    out.push(
        BenchResult::new(
            tag("recall_at10_rerank"),
            recall_rerank,
            "recall",
            Better::Higher,
        )
        .with_targets(Some(0.95), Some(0.97)),
    );
    let mut r = BenchResult::new(tag("qps_1t"), qps, "q/s", Better::Higher);
    if let Some(p) = sq8 {
        r = r
            .with_peer("faiss_hnswsq8", p.qps_batch)
            .with_targets(None, Some(p.qps_batch));
    }
    out.push(r);
    out.push(BenchResult::new(
        tag("search_p50_us"),
        p50,
        "us",
        Better::Lower,
    ));
    let mut r = BenchResult::new(tag("search_p99_us"), p99, "us", Better::Lower)
        .with_targets(None, Some(1000.0));
    if let Some(p) = sq8 {
        r = r.with_peer("faiss_hnswsq8 (python call)", p.p99_us);
    }
    out.push(r);
    let scale = 100_000.0 / n as f64;
    let mut r = BenchResult::new(tag("memory_mb"), memory_mb, "MB", Better::Lower)
        .with_targets(Some(100.0 / scale), Some(60.0 / scale));
    if let Some(p) = sq8 {
        r = r.with_peer("faiss_hnswsq8", p.memory_mb);
    }
    out.push(r);
    out.push(BenchResult::new(
        tag("memory_with_f16_originals_mb"),
        memory_f16_mb,
        "MB",
        Better::Lower,
    ));
    let mut r = BenchResult::new(tag("build_2t_s"), build_s, "s", Better::Lower)
        .with_targets(None, Some(40.0 / scale));
    if let Some(p) = sq8 {
        r = r.with_peer("faiss_hnswsq8", p.build_s);
    }
    out.push(r);
    out.push(
        BenchResult::new(
            tag("insert_p99_us"),
            percentile(&ins, 0.99),
            "us",
            Better::Lower,
        )
        .with_targets(Some(50_000.0), Some(2000.0)),
    );
    out.push(BenchResult::new(
        tag("bruteforce_recall_fixed127"),
        fixed,
        "recall",
        Better::Higher,
    ));
    out.push(BenchResult::new(
        tag("bruteforce_recall_per_vector"),
        calibrated,
        "recall",
        Better::Higher,
    ));
    #[cfg(feature = "bench-peers")]
    {
        progress("hnsw_rs");
        // A peer's panic (hnsw_rs asserts on some inputs) must not end the suite.
        let peer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hnsw_rs_peer(&d)));
        if let Ok((b, r, qps_peer)) = peer {
            out.push(
                BenchResult::new(tag("qps_1t_vs_hnsw_rs"), qps, "q/s", Better::Higher)
                    .with_peer("hnsw_rs", qps_peer),
            );
            out.push(
                BenchResult::new(
                    tag("recall_at10_int8_vs_hnsw_rs"),
                    recall_int8,
                    "recall",
                    Better::Higher,
                )
                .with_peer("hnsw_rs", r),
            );
            out.push(
                BenchResult::new(tag("build_2t_s_vs_hnsw_rs"), build_s, "s", Better::Lower)
                    .with_peer("hnsw_rs", b),
            );
        }
    }
    for p in &peers {
        for (what, v, unit, better) in [
            ("recall", p.recall, "recall", Better::Higher),
            ("qps_1t_batch", p.qps_batch, "q/s", Better::Higher),
            ("memory_mb", p.memory_mb, "MB", Better::Lower),
            ("build_2t_s", p.build_s, "s", Better::Lower),
        ] {
            out.push(BenchResult::new(
                format!("peer_{}_{what}", p.name),
                v,
                unit,
                better,
            ));
        }
    }
    out
}

/// The `hnsw` suite.
pub fn hnsw_suite() -> Suite {
    Suite {
        name: "hnsw",
        about: "HNSW on MiniLM embeddings (int8, re-rank) against faiss, hnswlib and usearch",
        steps: 7,
        run,
    }
}

//! Builds an HNSW index over the first N MiniLM vectors and reports the time (for profiling
//! the build: `perf record target/release/examples/hnsw_build 20000`).
use erlmcp_flow::hnsw::{Hnsw, Params};
use erlmcp_flow_dataset::Dataset;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let threads: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let (d, _) = Dataset::minilm_or_committed(n, 10).expect("data");
    let idx = Hnsw::new(Params::new(d.base.cols)).expect("params");
    let ids: Vec<u64> = (0..d.base.rows as u64).collect();
    let t = std::time::Instant::now();
    idx.insert_batch(&ids, &d.base.data, threads)
        .expect("build");
    println!(
        "{} vectors on {threads} threads: {:.2} s",
        d.base.rows,
        t.elapsed().as_secs_f64()
    );
}

//! Cross-process ring benchmarks with criterion: 64-byte messages from a producer process to
//! a consumer (this process), ours against iceoryx2 (`--features bench-peers`) and a Unix
//! domain socket in the same run.
//!
//! cargo bench --bench ring
//! cargo bench --bench ring --features bench-peers
//!
//! The transfers are defined once in `erlmcp_flow_bench::suite::ring` and shared with
//! `erlmcp-flow bench --suite ring` (which also measures latency and bandwidth). The other
//! process is the `erlmcp-flow` executable (`bench-helper ...`), built by cargo for benches.
//! Each criterion iteration is one message; a sample moves at least 200 000.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use erlmcp_flow_bench::suite::ring::{rate, Transfer};
use std::time::Duration;

fn per_message(kind: Transfer, iters: u64) -> Duration {
    let moved = iters.max(200_000);
    match rate(kind, moved) {
        Some(r) => Duration::from_secs_f64(iters as f64 / r),
        None => panic!("{kind:?} cannot run here (see the note above)"),
    }
}

fn bench_transfers(c: &mut Criterion) {
    // Set before any thread of ours starts; the helper processes inherit it.
    std::env::set_var("EMF_BENCH_HELPER", env!("CARGO_BIN_EXE_erlmcp-flow"));
    let mut g = c.benchmark_group("ring_64b_cross_process");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    let mut kinds = vec![
        ("spsc", "erlmcp_flow", Transfer::Spsc64),
        ("spsc", "unix_socket", Transfer::UnixSocket64),
        ("spsc_batch", "erlmcp_flow", Transfer::SpscBatch64),
        ("spsc_rkyv_validated", "erlmcp_flow", Transfer::RkyvTyped64),
        ("mpsc_2to1", "erlmcp_flow", Transfer::Mpsc2to1),
    ];
    if cfg!(feature = "bench-peers") {
        kinds.push(("spsc", "iceoryx2", Transfer::Iceoryx2));
        kinds.push(("mpsc_2to1", "iceoryx2", Transfer::Iceoryx2TwoToOne));
    }
    for (shape, who, kind) in kinds {
        g.bench_function(BenchmarkId::new(who, shape), |b| {
            b.iter_custom(|iters| per_message(kind, iters))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_transfers);
criterion_main!(benches);

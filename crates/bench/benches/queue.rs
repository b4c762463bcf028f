//! Queue and cache benchmarks with criterion, peers side by side in the same run:
//! the MPMC queues against crossbeam's `SegQueue`/`ArrayQueue` and `concurrent-queue`
//! (1 producer/1 consumer and 2/2 threads), the task queue on one thread, and the LRU cache
//! against quick_cache and moka (`--features bench-peers`) on single-thread hits and a
//! 2-thread Zipf workload.
//!
//! cargo bench --bench queue
//! cargo bench --bench queue --features bench-peers
//!
//! The measured operations are defined once in `erlmcp_flow_bench::suite::queue` and shared with
//! `erlmcp-flow bench --suite queue` / `--suite cache`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use erlmcp_flow::cache::{CacheOptions, LruCache};
use erlmcp_flow::queue::{Priority, TaskQueue, TaskQueueOptions};
use erlmcp_flow_bench::suite::queue::{cache_zipf_rate, mpmc_rate, zipf_keys, CacheKind, Mpmc};
use std::hint::black_box;
use std::time::Duration;

fn bench_mpmc(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpmc");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    for (shape, p, cons) in [("1p1c", 1, 1), ("2p2c", 2, 2)] {
        for (who, kind) in [
            ("erlmcp_flow_unbounded", Mpmc::Ours),
            ("crossbeam_segqueue", Mpmc::SegQueue),
            ("concurrent_queue", Mpmc::ConcurrentQueue),
            ("erlmcp_flow_bounded", Mpmc::OursBounded),
            ("crossbeam_arrayqueue", Mpmc::ArrayQueue),
        ] {
            g.bench_function(BenchmarkId::new(who, shape), |b| {
                b.iter_custom(|iters| {
                    let moved = iters.max(100_000);
                    let rate = mpmc_rate(kind, p, cons, moved, 1).expect("peers feature");
                    Duration::from_secs_f64(iters as f64 / rate)
                })
            });
        }
    }
    g.finish();
}

fn bench_task_queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("task_queue");
    let q = TaskQueue::new(TaskQueueOptions::default());
    for i in 0..1000u64 {
        let _ = q.enqueue(i, Priority::ALL[(i % 4) as usize]);
    }
    let mut i = 0u64;
    g.bench_function("enqueue_dequeue_depth_1000", |b| {
        b.iter(|| {
            i += 1;
            let r = q.enqueue(i, Priority::ALL[(i % 4) as usize]);
            black_box(&r);
            black_box(q.dequeue())
        })
    });
    g.finish();
}

fn bench_cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_hit");
    let ours: LruCache<u64, u64> = LruCache::new(CacheOptions::default());
    let keys: Vec<u64> = (0..9000u64)
        .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    for &k in &keys {
        ours.put(k, k);
    }
    let mut i = 0;
    g.bench_function("erlmcp_flow", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(ours.get(&keys[i]))
        })
    });
    #[cfg(feature = "bench-peers")]
    {
        let q = quick_cache::sync::Cache::<u64, u64>::new(10_000);
        for &k in &keys {
            q.insert(k, k);
        }
        g.bench_function("quick_cache", |b| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                black_box(q.get(&keys[i]))
            })
        });
        let m = moka::sync::Cache::<u64, u64>::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_millis(5000))
            .build();
        for &k in &keys {
            m.insert(k, k);
        }
        g.bench_function("moka", |b| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                black_box(m.get(&keys[i]))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cache_zipf_2_threads");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    let streams: Vec<Vec<u64>> = (0..2)
        .map(|t| zipf_keys(100_000, 1.1, 200_000, 0xC0FFEE + t))
        .collect();
    let mut kinds = vec![("erlmcp_flow", CacheKind::Ours)];
    if cfg!(feature = "bench-peers") {
        kinds.push(("quick_cache", CacheKind::QuickCache));
        kinds.push(("moka", CacheKind::Moka));
    }
    for (who, kind) in kinds {
        g.bench_function(who, |b| {
            b.iter_custom(|iters| {
                let (rate, _) = cache_zipf_rate(kind, 2, 10_000, &streams).expect("peer");
                Duration::from_secs_f64(iters as f64 / rate)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_mpmc, bench_task_queue, bench_cache);
criterion_main!(benches);

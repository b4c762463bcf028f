//! Criterion: HNSW search on real MiniLM embeddings (20K of the set in `EMF_DATA_DIR` when it is
//! set, else the committed 5K subset), M 16, ef_construction 200, ef 50, k 10:
//! our int8 index, with exact re-rank, and the same index mapped from a file; with
//! `--features bench-peers`, hnsw_rs (f32) built on the same vectors, side by side. Then
//! every query at once: one after another on one thread against `Index::search_batch` on 2.
//!
//!     cargo bench --bench hnsw [--features bench-peers]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use erlmcp_flow::hnsw::{Hnsw, Index, MappedHnsw, Originals, Params, SearchOptions};
use erlmcp_flow_dataset::Dataset;

fn search(c: &mut Criterion) {
    let (d, _) = Dataset::minilm_or_committed(20_000, 200).expect("data");
    let n = d.base.rows;
    let idx = Hnsw::new(Params {
        originals: Originals::F16,
        ..Params::new(d.base.cols)
    })
    .expect("params");
    let ids: Vec<u64> = (0..n as u64).collect();
    idx.insert_batch(&ids, &d.base.data, 2).expect("build");
    let path = std::env::temp_dir().join(format!("emf-bench-hnsw-{}", std::process::id()));
    idx.save(&path).expect("save");
    let mapped = MappedHnsw::open(&path).expect("open");
    let q = d.queries.rows;

    let mut g = c.benchmark_group(format!("hnsw_search_{}k", n / 1000));
    let int8 = SearchOptions {
        k: 10,
        ef: 50,
        ..Default::default()
    };
    let rerank = SearchOptions {
        rerank: true,
        ..int8
    };
    let mut i = 0;
    g.bench_function("ours_int8", |b| {
        b.iter(|| {
            i = (i + 1) % q;
            black_box(idx.search(d.queries.row(i), &int8).unwrap())
        })
    });
    g.bench_function("ours_int8_rerank_f16", |b| {
        b.iter(|| {
            i = (i + 1) % q;
            black_box(idx.search(d.queries.row(i), &rerank).unwrap())
        })
    });
    g.bench_function("ours_mapped_file", |b| {
        b.iter(|| {
            i = (i + 1) % q;
            black_box(mapped.search(d.queries.row(i), &int8).unwrap())
        })
    });
    #[cfg(feature = "bench-peers")]
    {
        use hnsw_rs::prelude::Hnsw as Peer;
        let rows: Vec<(&[f32], usize)> = (0..n).map(|i| (d.base.row(i), i)).collect();
        let mut peer = Peer::<f32, anndists::dist::DistCosine>::new(
            16,
            n,
            16,
            200,
            anndists::dist::DistCosine {},
        );
        peer.parallel_insert_slice(&rows);
        peer.set_searching_mode(true);
        g.bench_function("hnsw_rs_f32", |b| {
            b.iter(|| {
                i = (i + 1) % q;
                black_box(peer.search(d.queries.row(i), 10, 50))
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_file(&path);

    // The whole query set per iteration: sequential, then one batch call on 2 threads.
    let index = Index::from(idx);
    let queries = &d.queries.data[..q * d.queries.cols];
    let mut g = c.benchmark_group(format!("hnsw_search_batch_{}k_{q}q", n / 1000));
    g.bench_function("sequential", |b| {
        b.iter(|| {
            let r = index.read();
            let hits: Vec<_> = queries
                .chunks(d.queries.cols)
                .map(|qv| r.search(qv, &int8).unwrap())
                .collect();
            black_box(hits)
        })
    });
    g.bench_function("search_batch_2_threads", |b| {
        b.iter(|| black_box(index.search_batch(queries, &int8, 2).unwrap()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = search
}
criterion_main!(benches);

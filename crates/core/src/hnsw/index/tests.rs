//! Tests of [`Index`]: batch search against sequential search, and the compaction exclusion.

use std::sync::mpsc;

use super::*;
use crate::error::ErrorKind;
use crate::hnsw::{Filter, Originals};

const DIM: usize = 8;

fn vectors(n: usize) -> Vec<f32> {
    (0..n * DIM)
        .map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5)
        .collect()
}

fn filled(n: usize) -> (Index, Vec<f32>) {
    let mut p = Params::new(DIM);
    p.originals = Originals::F32;
    let index = Index::new(p).unwrap();
    let vs = vectors(n);
    let ids: Vec<u64> = (0..n as u64).collect();
    index.insert_batch(&ids, &vs, 2).unwrap();
    (index, vs)
}

/// Nodes in the live index's storage, removed ones included until a compaction.
fn nodes(r: &IndexRead<'_>) -> u32 {
    match &*r.kind {
        Kind::Live(h) => h.next.load(crate::sync::Ordering::Relaxed),
        Kind::Mapped(_) => unreachable!("a live index"),
    }
}

fn kind_of<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

#[test]
fn search_batch_equals_sequential_search_for_every_thread_count() {
    let (index, vs) = filled(300);
    let bits = [0xAAAA_AAAA_AAAA_AAAAu64; 5];
    for opts in [
        SearchOptions {
            k: 5,
            ..Default::default()
        },
        SearchOptions {
            k: 3,
            ef: 80,
            rerank: true,
            filter: Filter::Bitset(&bits),
        },
        SearchOptions {
            k: 0,
            ..Default::default()
        },
    ] {
        // 37 queries: no thread count divides them evenly.
        let queries = &vs[..37 * DIM];
        let want: Vec<Vec<Hit>> = queries
            .chunks(DIM)
            .map(|q| index.search(q, &opts).unwrap())
            .collect();
        assert!(opts.k == 0 || want.iter().all(|h| !h.is_empty()));
        for threads in [
            0,
            1,
            2,
            3,
            36,
            37,
            38,
            MAX_THREADS,
            MAX_THREADS + 1,
            usize::MAX,
        ] {
            let got = index.search_batch(queries, &opts, threads).unwrap();
            assert_eq!(got, want, "threads {threads}, {opts:?}");
        }
    }
    // No queries: an empty answer, whatever the thread count.
    for threads in [0, 1, 5] {
        let opts = SearchOptions::default();
        assert!(index.search_batch(&[], &opts, threads).unwrap().is_empty());
    }
}

#[test]
fn search_batch_is_all_or_nothing() {
    let (index, vs) = filled(100);
    let opts = SearchOptions {
        k: 4,
        ..Default::default()
    };
    for bad in [0, 5, 9] {
        let mut queries = vs[..10 * DIM].to_vec();
        queries[bad * DIM + 3] = f32::NAN;
        for threads in [1, 2, 3, 10] {
            let r = index.search_batch(&queries, &opts, threads);
            assert_eq!(
                kind_of(r),
                ErrorKind::InvalidArgument,
                "bad {bad}, threads {threads}"
            );
        }
    }
    // Rows that are not whole.
    let r = index.search_batch(&vs[..DIM + 1], &opts, 2);
    assert_eq!(kind_of(r), ErrorKind::InvalidArgument);
}

#[test]
#[cfg_attr(miri, ignore)] // maps a file
fn a_mapped_index_searches_and_refuses_changes() {
    let (index, vs) = filled(50);
    let path = std::env::temp_dir().join(format!("emf-index-{}", std::process::id()));
    index.save(&path).unwrap();
    let mapped = Index::open(&path).unwrap();
    assert!(mapped.is_mapped() && !index.is_mapped());
    assert_eq!(mapped.params(), index.params());
    let opts = SearchOptions {
        k: 3,
        ..Default::default()
    };
    assert_eq!(
        mapped.search_batch(&vs[..4 * DIM], &opts, 2).unwrap(),
        index.search_batch(&vs[..4 * DIM], &opts, 2).unwrap()
    );
    assert_eq!(mapped.read().len(), 50);
    assert!(mapped.read().memory_bytes() > 0);
    for kind in [
        kind_of(mapped.insert(1000, &vs[..DIM])),
        kind_of(mapped.insert_batch(&[1000], &vs[..DIM], 1)),
        kind_of(mapped.remove(1)),
        kind_of(mapped.save(&path)),
        kind_of(mapped.compact()),
        kind_of(mapped.try_compact()),
    ] {
        assert_eq!(kind, ErrorKind::Unsupported);
    }
    let loaded = Index::load(&path).unwrap();
    assert!(!loaded.is_mapped());
    loaded.insert(1000, &vs[..DIM]).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn compact_reclaims_through_the_index() {
    let (index, vs) = filled(200);
    for id in 0..100 {
        index.remove(id).unwrap();
    }
    let before = index.read().memory_bytes();
    index.try_compact().unwrap();
    let after = index.read().memory_bytes();
    assert!(after < before, "{after} < {before}");
    assert_eq!(index.read().len(), 100);
    let opts = SearchOptions {
        k: 1,
        ..Default::default()
    };
    let hits = index.search(&vs[150 * DIM..151 * DIM], &opts).unwrap();
    assert_eq!(hits[0].id, 150);
}

/// While a compaction holds the exclusion (the test takes the index's write side itself,
/// exactly what `compact` holds while it runs), the try variants say `Busy` at once and the
/// blocking ones wait, then succeed.
#[test]
fn while_compaction_holds_the_exclusion_try_is_busy_and_blocking_waits() {
    let (index, vs) = filled(100);
    let opts = SearchOptions {
        k: 1,
        ..Default::default()
    };
    let compaction = index.kind.write().unwrap();
    assert_eq!(kind_of(index.try_read()), ErrorKind::Busy);
    assert_eq!(kind_of(index.try_compact()), ErrorKind::Busy);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let search = index.search(&vs[7 * DIM..8 * DIM], &opts);
            let insert = index.insert(500, &vs[..DIM]);
            let len = index.read().len();
            tx.send((search, insert, len)).unwrap();
        });
        s.spawn(|| {
            let compact = index.compact();
            tx.send((Ok(Vec::new()), compact, usize::MAX)).unwrap();
        });
        // The compaction's exclusion is held until here: nothing can have answered.
        assert!(rx.try_recv().is_err());
        drop(compaction);
        let mut answers = [rx.recv().unwrap(), rx.recv().unwrap()];
        answers.sort_by_key(|a| a.2);
        let [(search, insert, len), (_, compact, _)] = answers;
        assert_eq!(search.unwrap()[0].id, 7);
        insert.unwrap();
        assert_eq!(len, 101);
        compact.unwrap();
    });
    assert_eq!(index.read().len(), 101);
}

/// A compaction waits for the read-side calls in progress, and from the moment it waits no
/// new one starts (`try_read` is `Busy`), so a stream of searches cannot starve it.
#[test]
fn compaction_waits_for_calls_in_progress_and_holds_new_ones_off() {
    let (index, vs) = filled(100);
    index.remove(3).unwrap();
    let reader = index.try_read().unwrap();
    // A second reader is fine while no compaction waits.
    drop(index.try_read().unwrap());
    assert_eq!(kind_of(index.try_compact()), ErrorKind::Busy);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(index.compact()).unwrap());
        // The compaction is waiting once new readers are held off (observed, not slept on).
        while index.try_read().is_ok() {
            std::thread::yield_now();
        }
        // The reader entered before it still works, and the compaction cannot have run.
        let opts = SearchOptions {
            k: 1,
            ..Default::default()
        };
        assert_eq!(
            reader.search(&vs[5 * DIM..6 * DIM], &opts).unwrap()[0].id,
            5
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(nodes(&reader), 100);
        drop(reader);
        rx.recv().unwrap().unwrap();
        assert_eq!(nodes(&index.read()), 99);
    });
}

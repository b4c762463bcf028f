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
        Kind::Mapped(_) | Kind::Dimensionless => unreachable!("a live index"),
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

fn deferred() -> Index {
    Index::new(Params::new(0)).unwrap()
}

fn k(k: usize) -> SearchOptions<'static> {
    SearchOptions {
        k,
        ..Default::default()
    }
}

#[test]
fn a_dimensionless_index_takes_its_dimension_from_the_first_insert() {
    let index = deferred();
    assert_eq!((index.dim(), index.params().dim), (0, 0));
    // Empty and dimensionless: no hits, nothing to remove, compact does nothing.
    assert!(index.search(&[1.0, 2.0], &k(3)).unwrap().is_empty());
    assert_eq!(kind_of(index.remove(1)), ErrorKind::NotFound);
    index.compact().unwrap();
    assert_eq!(index.read().len(), 0);
    assert_eq!(index.read().memory_bytes(), 0);
    assert!(index.search_batch(&[], &k(1), 1).unwrap().is_empty());
    assert_eq!(
        kind_of(index.search_batch(&[1.0; 4], &k(1), 1)),
        ErrorKind::InvalidArgument
    );
    let path = std::env::temp_dir().join(format!("emf-dimless-{}.hnsw", std::process::id()));
    assert_eq!(kind_of(index.save(&path)), ErrorKind::InvalidArgument);
    assert!(!path.exists());
    // A guard cannot fix the dimension; an empty batch fixes nothing.
    assert_eq!(
        kind_of(index.read().insert(1, &[1.0])),
        ErrorKind::InvalidArgument
    );
    index.insert_batch(&[], &[], 1).unwrap();
    assert_eq!(index.dim(), 0);
    // A dimension out of range fixes nothing either.
    assert_eq!(
        kind_of(index.insert(1, &vec![1.0; 65_537])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(kind_of(index.insert(1, &[])), ErrorKind::InvalidArgument);
    assert_eq!(index.dim(), 0);
    // The first insert fixes it; the other parameters are the ones given.
    index.insert(7, &[1.0, 0.0, 0.0]).unwrap();
    assert_eq!(index.dim(), 3);
    assert_eq!(index.params(), Params::new(3));
    assert_eq!(
        kind_of(index.insert(8, &[1.0, 0.0])),
        ErrorKind::InvalidArgument
    );
    index.insert(8, &[0.0, 1.0, 0.0]).unwrap();
    let hits = index.search(&[0.1, 0.9, 0.0], &k(2)).unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [8, 7]);
    // Other parameters are still checked at creation.
    let bad = Params {
        m: 1,
        ..Params::new(0)
    };
    assert_eq!(kind_of(Index::new(bad)), ErrorKind::InvalidArgument);
}

#[test]
fn a_first_batch_fixes_the_dimension_and_try_forms_never_wait() {
    let index = deferred();
    index
        .insert_batch(&[1, 2], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 2)
        .unwrap();
    assert_eq!((index.dim(), index.read().len()), (3, 2));
    // A batch that is not whole rows fixes nothing.
    let other = deferred();
    assert_eq!(
        kind_of(other.insert_batch(&[1, 2], &[1.0, 0.0, 0.0], 1)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(other.dim(), 0);
    // try_fix_dim is Busy while a call holds the read side, and does nothing.
    let held = other.read();
    assert_eq!(kind_of(other.try_fix_dim(2)), ErrorKind::Busy);
    drop(held);
    assert_eq!(other.dim(), 0);
    other.try_fix_dim(2).unwrap();
    assert_eq!(other.dim(), 2);
    // Once fixed, fixing again with another dimension is not an error by itself: the
    // insert that follows says the vector does not fit.
    other.fix_dim(5).unwrap();
    assert_eq!(other.dim(), 2);
}

/// Threads race to insert the first vector, half with 3 values and half with 4: exactly
/// one dimension wins, every vector of that dimension goes in, every other one fails cleanly.
#[test]
fn concurrent_first_inserts_fix_one_dimension() {
    for round in 0..50 {
        let index = deferred();
        let barrier = std::sync::Barrier::new(8);
        let results: Vec<(usize, Result<()>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u64)
                .map(|t| {
                    let (index, barrier) = (&index, &barrier);
                    s.spawn(move || {
                        let dim = 3 + (t as usize + round) % 2;
                        let v: Vec<f32> = (0..dim).map(|i| (i as u64 + t) as f32 + 1.0).collect();
                        barrier.wait();
                        (dim, index.insert(t, &v))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = index.dim();
        assert!(won == 3 || won == 4);
        for (dim, r) in &results {
            if *dim == won {
                assert!(r.is_ok(), "{r:?}");
            } else {
                assert_eq!(r.as_ref().unwrap_err().kind(), ErrorKind::InvalidArgument);
            }
        }
        assert_eq!(index.read().len(), 4);
    }
}

#[test]
fn insert_new_assigns_free_ids() {
    let index = deferred();
    assert_eq!(index.insert_new(&[1.0, 0.0]).unwrap(), 0);
    index.insert(1, &[0.0, 1.0]).unwrap();
    index.insert(2, &[0.5, 0.5]).unwrap();
    // 1 and 2 are taken by the caller: skipped.
    assert_eq!(index.insert_new(&[0.7, 0.1]).unwrap(), 3);
    // A failed call uses no id; a removed id is not reused.
    assert_eq!(
        kind_of(index.insert_new(&[1.0, 2.0, 3.0])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind_of(index.insert_new(&[f32::NAN, 1.0])),
        ErrorKind::InvalidArgument
    );
    index.remove(3).unwrap();
    assert_eq!(index.insert_new(&[0.1, 0.7]).unwrap(), 4);
    assert_eq!(index.search(&[0.1, 0.7], &k(1)).unwrap()[0].id, 4);
    // An id the caller inserts later under a number already handed out is refused.
    assert_eq!(
        kind_of(index.insert(4, &[1.0, 1.0])),
        ErrorKind::InvalidArgument
    );
    // Concurrent calls get distinct ids; compaction keeps the counter.
    index.compact().unwrap();
    let ids: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let index = &index;
                s.spawn(move || {
                    (0..25)
                        .map(|i| index.insert_new(&[t as f32 + 1.0, i as f32]).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, (5..105).collect::<Vec<u64>>());
    assert_eq!(index.read().len(), 104);
}

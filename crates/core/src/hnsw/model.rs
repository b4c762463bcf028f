//! loom model of the index's publication step: a node's record and lists are written before
//! its id is stored in a neighbour slot or the entry point (Release), and a search that
//! reaches the id (Acquire) reads a fully written record. Under loom every record is its own
//! tracked cell (`store.rs`), so a read not ordered after its write fails the model; so does
//! a data race on the neighbour-list atomics' protocol (lock bit, count, slots).
//!
//!
//! The last two models check [`Index`]'s locking rule: a compaction never overlaps another
//! call, a tried call or compaction is granted or `Busy` and never waits, and a waiting call
//! always gets through. (loom's reader-writer lock does not prefer writers as std's does on
//! Linux, so these models cannot check that a waiting compaction holds new calls off; the
//! unit tests in `index/tests.rs` do, on std.)
//!
//! RUSTFLAGS="--cfg loom" cargo test --release --lib hnsw::model (scripts/loom.sh)

use super::{Hit, Hnsw, Index, Params, SearchOptions};
use crate::ErrorKind;
use loom::sync::Arc;
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.check(f);
}

/// [`model`] for executions that compact: a compaction copies every node, each copy a
/// handful of atomic operations, past loom's default bound on branches per execution.
fn compacting_model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.max_branches = 20_000;
    b.check(f);
}

fn params() -> Params {
    Params {
        m: 2,
        ef_construction: 2,
        ef_search: 2,
        ..Params::new(2)
    }
}

#[test]
fn a_search_reads_only_published_nodes() {
    model(|| {
        let idx = Arc::new(Hnsw::new(params()).unwrap());
        idx.insert(0, &[1.0, 0.0]).unwrap();
        let writer = {
            let idx = idx.clone();
            thread::spawn(move || idx.insert(1, &[0.0, 1.0]).unwrap())
        };
        let o = SearchOptions {
            k: 2,
            ..Default::default()
        };
        let hits = idx.search(&[0.1, 1.0], &o).unwrap();
        // Node 1 may or may not be linked yet; whatever is returned is a complete node.
        assert!(!hits.is_empty() && hits.len() <= 2);
        assert!(hits.iter().all(|h| h.id <= 1));
        writer.join().unwrap();
        let hits = idx.search(&[0.1, 1.0], &o).unwrap();
        assert_eq!(hits[0].id, 1);
    });
}

#[test]
fn two_inserters_link_each_other_under_node_locks() {
    model(|| {
        let idx = Arc::new(Hnsw::new(params()).unwrap());
        idx.insert(0, &[1.0, 0.0]).unwrap();
        let ts: Vec<_> = [(1u64, [0.0f32, 1.0]), (2, [0.7, 0.7])]
            .into_iter()
            .map(|(id, v)| {
                let idx = idx.clone();
                thread::spawn(move || idx.insert(id, &v).unwrap())
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(idx.len(), 3);
        for (id, v) in [(0u64, [1.0f32, 0.0]), (1, [0.0, 1.0]), (2, [0.7, 0.7])] {
            let hits = idx
                .search(
                    &v,
                    &SearchOptions {
                        k: 1,
                        ef: 3,
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(hits[0].id, id);
        }
    });
}

fn ids(hits: Vec<Hit>) -> Vec<u64> {
    hits.into_iter().map(|h| h.id).collect()
}

/// An index of 0 and 1, 1 removed: a compaction reclaims it.
fn compactable() -> Arc<Index> {
    let idx = Arc::new(Index::new(params()).unwrap());
    idx.insert(0, &[1.0, 0.0]).unwrap();
    idx.insert(1, &[0.0, 1.0]).unwrap();
    idx.remove(1).unwrap();
    idx
}

/// The main thread holds the read side while a compaction starts: the compaction waits for
/// it. A read tried on a third thread meanwhile is granted or `Busy`, never a wait (the main
/// thread joins it while still holding its guard: a wait would never end). Once the main
/// thread lets go, a waiting read gets through, before or after the compaction, and every
/// answer is whole.
#[test]
fn a_compaction_excludes_other_calls_and_tries_never_wait() {
    compacting_model(|| {
        let idx = compactable();
        let o = SearchOptions {
            k: 2,
            ..Default::default()
        };
        let held = idx.read();
        let compactor = {
            let idx = idx.clone();
            thread::spawn(move || idx.compact().unwrap())
        };
        let trier = {
            let idx = idx.clone();
            thread::spawn(move || match idx.try_read() {
                Ok(r) => assert_eq!(ids(r.search(&[0.0, 1.0], &o).unwrap()), [0]),
                Err(e) => assert_eq!(e.kind(), ErrorKind::Busy),
            })
        };
        trier.join().unwrap();
        assert_eq!(ids(held.search(&[0.0, 1.0], &o).unwrap()), [0]);
        drop(held);
        let r = idx.read();
        assert_eq!(r.len(), 1);
        assert_eq!(ids(r.search(&[0.0, 1.0], &o).unwrap()), [0]);
        drop(r);
        compactor.join().unwrap();
        assert_eq!(idx.try_read().unwrap().len(), 1);
    });
}

/// A compaction tried on another thread while the main thread holds the read side is
/// `Busy` and does not wait (the main thread joins it still holding its guard); one tried
/// with nothing in progress runs. (No third thread enters the read side meanwhile: loom
/// blocks a thread about to try the write side when another takes the read side, as if the
/// try waited, which std's does not.)
#[test]
fn a_tried_compaction_is_refused_during_a_call_and_never_waits() {
    compacting_model(|| {
        let idx = compactable();
        let held = idx.read();
        let other = {
            let idx = idx.clone();
            thread::spawn(move || idx.try_compact().unwrap_err().kind())
        };
        assert_eq!(other.join().unwrap(), ErrorKind::Busy);
        assert_eq!(held.len(), 1);
        drop(held);
        idx.try_compact().unwrap();
        assert_eq!(idx.try_read().unwrap().len(), 1);
    });
}

/// Two threads insert the first vector of a dimensionless index, of 2 and of 3 values: in
/// every interleaving exactly one fixes the dimension (its insert succeeds), the other fails
/// with `InvalidArgument`, and the index holds the winner's vector alone.
#[test]
fn concurrent_first_inserts_fix_exactly_one_dimension() {
    model(|| {
        let idx = Arc::new(Index::new(Params { dim: 0, ..params() }).unwrap());
        let two = {
            let idx = idx.clone();
            thread::spawn(move || idx.insert(2, &[1.0, 0.0]).map_err(|e| e.kind()))
        };
        let three = idx.insert(3, &[0.0, 1.0, 0.0]).map_err(|e| e.kind());
        let two = two.join().unwrap();
        let winner = match (two, three) {
            (Ok(()), Err(ErrorKind::InvalidArgument)) => 2,
            (Err(ErrorKind::InvalidArgument), Ok(())) => 3,
            other => panic!("exactly one insert wins: {other:?}"),
        };
        assert_eq!(idx.dim(), winner);
        let r = idx.read();
        assert_eq!(r.len(), 1);
        let q = vec![1.0; winner];
        let o = SearchOptions {
            k: 2,
            ..Default::default()
        };
        assert_eq!(ids(r.search(&q, &o).unwrap()), [winner as u64]);
    });
}

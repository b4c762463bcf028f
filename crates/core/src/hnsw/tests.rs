use std::sync::atomic::{AtomicBool, Ordering as O}; // std-atomic-ok: test harness flags

use super::*;
use crate::ErrorKind;
use erlmcp_flow_dataset::Dataset;

struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| self.f32()).collect()
    }
}

fn params(dim: usize, metric: Metric) -> Params {
    Params {
        metric,
        ..Params::new(dim)
    }
}

fn opts(k: usize) -> SearchOptions<'static> {
    SearchOptions {
        k,
        ..Default::default()
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("emf-hnsw-{}-{name}", std::process::id()))
}

#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri: miri_sized_lifecycle covers the unsafe paths
fn every_metric_finds_each_inserted_vector_first() {
    for metric in [Metric::Cosine, Metric::Dot, Metric::L2Sq] {
        let mut rng = Rng::new(3);
        let idx = Hnsw::new(params(16, metric)).unwrap();
        let mut vs = Vec::new();
        for id in 0..300u64 {
            let mut v = rng.vec(16);
            if metric == Metric::Dot {
                // Dot ranks by length too: unit vectors make "itself" the best match.
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= n);
            }
            idx.insert(id * 10, &v).unwrap();
            vs.push(v);
        }
        assert_eq!(idx.len(), 300);
        let mut first = 0;
        for (i, v) in vs.iter().enumerate() {
            let hits = idx.search(v, &opts(3)).unwrap();
            assert_eq!(hits.len(), 3);
            assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
            first += usize::from(hits[0].id == i as u64 * 10);
        }
        assert!(
            first >= 297,
            "{metric:?}: {first} of 300 found themselves first"
        );
    }
}

#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri: miri_sized_lifecycle covers the unsafe paths
fn recall_on_real_embeddings_with_and_without_rerank() {
    // 20K of the full MiniLM set when it is available (`EMF_DATA_DIR`, see the dataset
    // crate), else the committed 5K subset.
    let (d, _full) = Dataset::minilm_or_committed(20_000, 200).unwrap();
    let p = Params {
        originals: Originals::F16,
        ..Params::new(d.base.cols)
    };
    let idx = Hnsw::new(p).unwrap();
    let ids: Vec<u64> = (0..d.base.rows as u64).collect();
    idx.insert_batch(&ids, &d.base.data, 2).unwrap();
    assert_eq!(idx.len(), d.base.rows);
    let run = |rerank: bool| {
        let found: Vec<Vec<u64>> = (0..d.queries.rows)
            .map(|q| {
                let o = SearchOptions {
                    k: 10,
                    ef: 50,
                    rerank,
                    ..Default::default()
                };
                idx.search(d.queries.row(q), &o)
                    .unwrap()
                    .iter()
                    .map(|h| h.id)
                    .collect()
            })
            .collect();
        d.recall(&found, 10)
    };
    let (int8, reranked) = (run(false), run(true));
    eprintln!(
        "recall@10 on {} vectors: int8 {int8:.4}, re-ranked {reranked:.4}",
        d.base.rows
    );
    assert!(int8 >= 0.95, "int8 recall@10 {int8}");
    assert!(reranked >= 0.96, "re-ranked recall@10 {reranked}");
    // The mapped file answers exactly as the live index.
    let path = tmp("recall");
    idx.save(&path).unwrap();
    let mapped = MappedHnsw::open(&path).unwrap();
    for q in 0..20 {
        let o = SearchOptions {
            k: 10,
            rerank: true,
            ..Default::default()
        };
        assert_eq!(
            idx.search(d.queries.row(q), &o).unwrap(),
            mapped.search(d.queries.row(q), &o).unwrap()
        );
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri: miri_sized_lifecycle covers the unsafe paths
fn filters_restrict_the_answers() {
    let mut rng = Rng::new(5);
    let idx = Hnsw::new(params(8, Metric::L2Sq)).unwrap();
    for id in 0..500u64 {
        idx.insert(id, &rng.vec(8)).unwrap();
    }
    let q = rng.vec(8);
    let even = |id: u64| id % 2 == 0;
    let o = SearchOptions {
        k: 10,
        filter: Filter::Predicate(&even),
        ..Default::default()
    };
    let hits = idx.search(&q, &o).unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|h| h.id % 2 == 0));
    let mut bits = vec![0u64; 8];
    for id in [3u64, 77, 140, 499] {
        bits[(id / 64) as usize] |= 1 << (id % 64);
    }
    let o = SearchOptions {
        k: 10,
        ef: 500,
        filter: Filter::Bitset(&bits),
        ..Default::default()
    };
    let mut got: Vec<u64> = idx.search(&q, &o).unwrap().iter().map(|h| h.id).collect();
    got.sort();
    assert_eq!(got, [3, 77, 140, 499]);
    assert!(Filter::Bitset(&bits).allows(3) && !Filter::Bitset(&bits).allows(64 * 9));
}

#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri: miri_sized_lifecycle covers the unsafe paths
fn removed_vectors_are_never_returned_and_compact_reclaims_them() {
    let mut rng = Rng::new(9);
    let dim = 32;
    let mut idx = Hnsw::new(params(dim, Metric::Cosine)).unwrap();
    let vs: Vec<Vec<f32>> = (0..2000).map(|_| rng.vec(dim)).collect();
    let ids: Vec<u64> = (0..2000).collect();
    idx.insert_batch(&ids, &vs.concat(), 2).unwrap();
    for id in (0..2000u64).filter(|i| i % 3 != 0) {
        idx.remove(id).unwrap();
    }
    assert_eq!(idx.len(), 667);
    assert_eq!(idx.remove(1).unwrap_err().kind(), ErrorKind::NotFound);
    let check = |idx: &Hnsw| {
        let mut first = 0;
        for id in (0..2000u64).step_by(3) {
            let hits = idx.search(&vs[id as usize], &opts(5)).unwrap();
            assert!(hits.iter().all(|h| h.id % 3 == 0), "a removed id came back");
            first += usize::from(hits[0].id == id);
        }
        first
    };
    let before = check(&idx);
    assert!(
        before >= 640,
        "{before} of 667 found themselves after removals"
    );
    let mem = idx.memory_bytes();
    idx.compact().unwrap();
    assert!(
        idx.memory_bytes() < mem / 2,
        "{} vs {mem}",
        idx.memory_bytes()
    );
    assert_eq!(idx.len(), 667);
    let after = check(&idx);
    assert!(after >= 640, "{after} of 667 after compact");
    // Removed ids can be inserted again; live ones cannot.
    idx.insert(1, &vs[1]).unwrap();
    assert_eq!(idx.search(&vs[1], &opts(1)).unwrap()[0].id, 1);
    assert_eq!(
        idx.insert(1, &vs[1]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri: miri_sized_lifecycle covers the unsafe paths
fn removing_everything_leaves_an_empty_searchable_index() {
    let mut rng = Rng::new(11);
    let mut idx = Hnsw::new(params(4, Metric::Cosine)).unwrap();
    for id in 0..50u64 {
        idx.insert(id, &rng.vec(4)).unwrap();
    }
    for id in 0..50u64 {
        idx.remove(id).unwrap();
    }
    assert!(idx.is_empty());
    assert!(idx.search(&rng.vec(4), &opts(5)).unwrap().is_empty());
    idx.compact().unwrap();
    assert!(idx.search(&rng.vec(4), &opts(5)).unwrap().is_empty());
    idx.insert(7, &[1.0, 0.0, 0.0, 0.0]).unwrap();
    assert_eq!(
        idx.search(&[1.0, 0.1, 0.0, 0.0], &opts(5)).unwrap()[0].id,
        7
    );
}

#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri: miri_sized_lifecycle covers the unsafe paths
fn save_open_and_load_round_trip() {
    let mut rng = Rng::new(13);
    for originals in [Originals::None, Originals::F16, Originals::F32] {
        let p = Params {
            originals,
            metric: Metric::L2Sq,
            ..Params::new(24)
        };
        let idx = Hnsw::new(p).unwrap();
        for id in 0..400u64 {
            idx.insert(id + 1000, &rng.vec(24)).unwrap();
        }
        idx.remove(1003).unwrap();
        let path = tmp("roundtrip");
        idx.save(&path).unwrap();
        let mapped = MappedHnsw::open(&path).unwrap();
        let loaded = Hnsw::load(&path).unwrap();
        assert_eq!((mapped.len(), loaded.len()), (399, 399));
        assert_eq!(mapped.params(), idx.params());
        for _ in 0..30 {
            let q = rng.vec(24);
            let o = SearchOptions {
                k: 8,
                rerank: true,
                ..Default::default()
            };
            let live = idx.search(&q, &o).unwrap();
            assert_eq!(live, mapped.search(&q, &o).unwrap());
            assert_eq!(live, loaded.search(&q, &o).unwrap());
            assert!(live.iter().all(|h| h.id != 1003));
        }
        // The loaded copy is a full index: it takes inserts and removals.
        loaded.insert(5, &rng.vec(24)).unwrap();
        assert!(loaded.contains(5) && !loaded.contains(1003));
        assert_eq!(
            loaded.insert(1000, &rng.vec(24)).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri: miri_sized_lifecycle covers the unsafe paths
fn damaged_files_give_errors_never_crashes() {
    let mut rng = Rng::new(17);
    let idx = Hnsw::new(Params {
        originals: Originals::F16,
        ..params(8, Metric::Cosine)
    })
    .unwrap();
    for id in 0..200u64 {
        idx.insert(id, &rng.vec(8)).unwrap();
    }
    let path = tmp("damage");
    idx.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(MappedHnsw::from_bytes(&good).is_ok());
    // Every truncation is refused.
    for cut in (0..good.len()).step_by(97).chain([good.len() - 1]) {
        let e = MappedHnsw::from_bytes(&good[..cut]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "cut {cut}: {e}");
    }
    // Damaged bytes are refused by the checksum. Re-sealed with a fresh checksum (damage the
    // checksum cannot see, e.g. a bug of the writer), the structural checks behind it refuse
    // them, or they are accepted and searchable without a panic.
    let q = rng.vec(8);
    let mut refused = 0;
    for i in 0..3000 {
        let mut bad = good.clone();
        let at = (rng.next() as usize) % bad.len();
        bad[at] ^= 1 << (rng.next() % 8);
        if i % 2 == 0 {
            let at = (rng.next() as usize) % 128; // the header, more often
            bad[at] = rng.next() as u8;
        }
        if bad != good {
            let e = MappedHnsw::from_bytes(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        }
        super::reseal_file(&mut bad);
        match MappedHnsw::from_bytes(&bad) {
            Ok(m) => {
                let o = SearchOptions {
                    k: 5,
                    rerank: true,
                    ..Default::default()
                };
                // Answers or errors, never panics.
                let _ = m.search(&q, &o);
                let _ = m.to_hnsw();
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 100, "only {refused} damaged files refused");
    let e = MappedHnsw::open(tmp("absent")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

/// A small saved index (about 1 KB) for the bit-flip tests.
fn small_saved_index(name: &str) -> (std::path::PathBuf, Vec<u8>) {
    let mut rng = Rng::new(29);
    let idx = Hnsw::new(Params {
        m: 4,
        originals: Originals::F16,
        ..params(4, Metric::Cosine)
    })
    .unwrap();
    for id in 0..12u64 {
        idx.insert(id + 100, &rng.vec(4)).unwrap();
    }
    idx.remove(105).unwrap();
    let path = tmp(name);
    idx.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    (path, good)
}

/// Issue 9, item 7: a bit flipped anywhere in a saved index — in a vector's codes or scale,
/// an id, an original, a list, the header — is refused as `Corrupt` by `open`, by `load` and
/// by `from_bytes`. Before the file had a checksum most flips were accepted (the structure
/// stayed valid) and searches answered from damaged vectors.
#[test]
#[cfg_attr(miri, ignore)] // thousands of files: too slow under Miri
fn every_flipped_bit_of_a_saved_index_is_refused() {
    let (path, good) = small_saved_index("bitflip");
    assert!(MappedHnsw::open(&path).is_ok() && Hnsw::load(&path).is_ok());
    let mut accepted = Vec::new();
    for bit in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&path, &bad).unwrap();
        let answers = [
            ("open", MappedHnsw::open(&path).map(drop)),
            ("load", Hnsw::load(&path).map(drop)),
            ("from_bytes", MappedHnsw::from_bytes(&bad).map(drop)),
        ];
        for (how, answer) in answers {
            match answer {
                Ok(()) => accepted.push((how, bit)),
                Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupt, "{how}, bit {bit}: {e}"),
            }
        }
    }
    std::fs::remove_file(&path).unwrap();
    assert!(
        accepted.is_empty(),
        "{} of {} single-bit flips accepted (first: {:?})",
        accepted.len(),
        3 * good.len() * 8,
        &accepted[..accepted.len().min(5)]
    );
}

/// A flip that the checksum catches is reported as a checksum mismatch (a clear message), and
/// files of version 1, written before the checksum, are still read; saving one again writes
/// version 2 with a checksum.
#[test]
#[cfg_attr(miri, ignore)] // maps files
fn checksum_errors_are_clear_and_version_1_files_still_open() {
    let (path, good) = small_saved_index("v1");
    assert_eq!(u32::from_le_bytes(good[8..12].try_into().unwrap()), 2);
    // A flip in the middle of the records (a vector's codes): only the checksum sees it.
    let mut bad = good.clone();
    bad[200] ^= 0x10;
    let e = MappedHnsw::from_bytes(&bad).unwrap_err();
    assert!(e.message().contains("checksum mismatch"), "{e}");
    // The same index as a version-1 file: no checksum, a 128-byte header, every offset and
    // the length 8 bytes smaller.
    let mut v1 = good[..128].to_vec();
    v1.extend_from_slice(&good[136..]);
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    for at in (72..=120).step_by(8) {
        let x = u64::from_le_bytes(v1[at..at + 8].try_into().unwrap());
        v1[at..at + 8].copy_from_slice(&(x - 8).to_le_bytes());
    }
    std::fs::write(&path, &v1).unwrap();
    let mapped = MappedHnsw::open(&path).unwrap();
    let fresh = MappedHnsw::from_bytes(&good).unwrap();
    let q = [0.3, -0.2, 0.9, 0.1];
    let o = SearchOptions {
        k: 4,
        rerank: true,
        ..Default::default()
    };
    assert_eq!(
        mapped.search(&q, &o).unwrap(),
        fresh.search(&q, &o).unwrap()
    );
    assert_eq!(mapped.len(), 11);
    // Loaded and saved again: version 2, byte for byte the file saved the first time.
    Hnsw::load(&path).unwrap().save(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), good);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bad_input_gives_clear_errors() {
    assert_eq!(
        Hnsw::new(Params::new(0)).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let p = Params {
        m: 1,
        ..Params::new(4)
    };
    assert!(Hnsw::new(p).unwrap_err().message().contains("m 1"));
    let p = Params {
        ef_construction: 0,
        ..Params::new(4)
    };
    assert!(Hnsw::new(p).is_err());
    let idx = Hnsw::new(Params::new(4)).unwrap();
    let e = idx.insert(1, &[1.0, 2.0]).unwrap_err();
    assert!(e.message().contains("2 dimensions"), "{e}");
    assert!(idx.insert(1, &[1.0, f32::NAN, 0.0, 0.0]).is_err());
    assert!(idx.search(&[1.0], &opts(1)).is_err());
    assert!(idx.search(&[1.0; 4], &opts(1)).unwrap().is_empty());
    idx.insert(1, &[1.0; 4]).unwrap();
    assert!(idx.search(&[1.0; 4], &opts(0)).unwrap().is_empty());
    assert!(idx.insert_batch(&[2, 3], &[1.0; 4], 2).is_err());
    let e = idx.insert_batch(&[2, 2], &[1.0; 8], 2).unwrap_err();
    assert!(e.message().contains("twice in the batch"), "{e}");
    // A directory is not a file to read: an I/O refusal, at open and at load alike.
    let e = MappedHnsw::open(std::env::temp_dir()).unwrap_err();
    assert!(e.message().contains("directory"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let e = Hnsw::load(std::env::temp_dir()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(idx.insert_batch(&[2, 1], &[1.0; 8], 2).is_err());
    assert_eq!(idx.len(), 1, "a refused batch inserts nothing");
    // A huge ef or k is bounded by the index's size, not allocated.
    let o = SearchOptions {
        k: 1 << 40,
        ef: 1 << 40,
        ..Default::default()
    };
    assert_eq!(idx.search(&[1.0; 4], &o).unwrap().len(), 1);
    // A NaN query is refused even when there is nothing to search.
    let empty = Hnsw::new(Params::new(2)).unwrap();
    assert!(empty.search(&[f32::NAN, 0.0], &opts(1)).is_err());
    assert!(empty.search(&[f32::NAN, 0.0], &opts(0)).is_err());
}

/// Inserts, removals and searches at once; afterwards the graph passes the file validator
/// (list counts, ids, levels), every live id is findable, no removed id is returned.
#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri: miri_sized_lifecycle covers the unsafe paths
fn concurrent_inserts_removals_and_searches_keep_the_graph_sound() {
    let dim = 16;
    let idx = Hnsw::new(Params {
        m: 8,
        ef_construction: 64,
        ..params(dim, Metric::Cosine)
    })
    .unwrap();
    let mut rng = Rng::new(21);
    let vs: Vec<Vec<f32>> = (0..3000).map(|_| rng.vec(dim)).collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (idx_r, vs_r, stop_r) = (&idx, &vs, &stop);
        s.spawn(move || {
            let mut n = 0usize;
            while !stop_r.load(O::Relaxed) || n < 100 {
                let hits = idx_r.search(&vs_r[n % 3000], &opts(10)).unwrap();
                assert!(hits.len() <= 10);
                n += 1;
            }
        });
        let inserters: Vec<_> = (0..2usize)
            .map(|t| {
                let (idx, vs) = (&idx, &vs);
                s.spawn(move || {
                    for i in (t..3000).step_by(2) {
                        idx.insert(i as u64, &vs[i]).unwrap();
                        if i % 5 == 0 && i >= 10 {
                            // Inserted earlier by this thread (same parity).
                            idx.remove(i as u64 - 10).unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in inserters {
            h.join().unwrap();
        }
        stop.store(true, O::Relaxed);
    });
    let removed = |i: u64| i % 5 == 0 && i + 10 < 3000 && (i + 10) % 5 == 0;
    let removed_ids: Vec<u64> = (0..3000u64).filter(|&i| removed(i)).collect();
    assert_eq!(idx.len(), 3000 - removed_ids.len());
    let snap = idx.snapshot().bytes().unwrap();
    MappedHnsw::from_bytes(&snap).expect("the graph passes the file validator");
    let mut first = 0;
    for i in (0..3000u64).filter(|&i| !removed(i)) {
        let hits = idx.search(&vs[i as usize], &opts(10)).unwrap();
        assert!(hits.iter().all(|h| !removed(h.id)), "removed id returned");
        first += usize::from(hits[0].id == i);
    }
    let live = 3000 - removed_ids.len();
    assert!(
        first * 100 >= live * 97,
        "{first} of {live} found themselves"
    );
}

/// Searches running while two threads insert always see a complete graph: every answer has
/// k hits (a node reached by a search has its lists written before it is linked).
#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri
fn searches_during_inserts_always_answer_k_hits() {
    let dim = 24;
    let idx = Hnsw::new(Params {
        m: 6,
        ef_construction: 32,
        ..params(dim, Metric::Cosine)
    })
    .unwrap();
    let mut rng = Rng::new(29);
    let vs: Vec<Vec<f32>> = (0..4000).map(|_| rng.vec(dim)).collect();
    for (i, v) in vs.iter().enumerate().take(50) {
        idx.insert(i as u64, v).unwrap();
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let searchers: Vec<_> = (0..2)
            .map(|t| {
                let (idx, vs, stop) = (&idx, &vs, &stop);
                s.spawn(move || {
                    let mut n = t;
                    while !stop.load(O::Relaxed) {
                        let hits = idx.search(&vs[n % 4000], &opts(10)).unwrap();
                        assert_eq!(hits.len(), 10, "search {n} answered {hits:?}");
                        n += 2;
                    }
                    n
                })
            })
            .collect();
        let inserters: Vec<_> = (0..2usize)
            .map(|t| {
                let (idx, vs) = (&idx, &vs);
                s.spawn(move || {
                    for i in (50 + t..4000).step_by(2) {
                        idx.insert(i as u64, &vs[i]).unwrap();
                    }
                })
            })
            .collect();
        for h in inserters {
            h.join().unwrap();
        }
        stop.store(true, O::Relaxed);
        for h in searchers {
            assert!(h.join().unwrap() > 2);
        }
    });
    assert_eq!(idx.len(), 4000);
}

/// Small enough for Miri: chunked storage across several chunks' worth of directory slots,
/// records, upper-level lists, removal and repair, compaction (frees and rebuilds storage),
/// the file bytes round trip, and two threads inserting while one searches.
#[test]
fn miri_sized_lifecycle() {
    let mut rng = Rng::new(23);
    // m = 4: with m = 2 (four level-0 links) the heuristic's pruning can leave a node with
    // no way in, whatever the insertion order.
    let p = Params {
        m: 4,
        ef_construction: 8,
        ef_search: 4,
        originals: Originals::F16,
        seed: 1,
        ..params(4, Metric::Cosine)
    };
    let idx = Hnsw::new(p).unwrap();
    let vs: Vec<Vec<f32>> = (0..24).map(|_| rng.vec(4)).collect();
    std::thread::scope(|s| {
        for t in 0..2usize {
            let (idx, vs) = (&idx, &vs);
            s.spawn(move || {
                for i in (t..16).step_by(2) {
                    idx.insert(i as u64, &vs[i]).unwrap();
                }
            });
        }
        let (idx, vs) = (&idx, &vs);
        s.spawn(move || {
            for v in vs.iter().take(6) {
                let _ = idx.search(v, &opts(2)).unwrap();
            }
        });
    });
    let mut idx = idx;
    for (i, v) in vs.iter().enumerate().skip(16) {
        idx.insert(i as u64, v).unwrap();
    }
    for id in [0u64, 5, 9] {
        idx.remove(id).unwrap();
    }
    let o = SearchOptions {
        k: 3,
        rerank: true,
        ..Default::default()
    };
    assert!(idx
        .search(&vs[1], &o)
        .unwrap()
        .iter()
        .all(|h| ![0, 5, 9].contains(&h.id)));
    let bytes = idx.snapshot().bytes().unwrap();
    let mapped = MappedHnsw::from_bytes(&bytes).unwrap();
    assert_eq!(
        mapped.search(&vs[2], &o).unwrap(),
        idx.search(&vs[2], &o).unwrap()
    );
    let copy = mapped.to_hnsw().unwrap();
    assert_eq!(copy.len(), 21);
    // With ef covering the whole index every live vector finds itself, before and after
    // compaction (removal repairs and compaction never cut a node off).
    let all = SearchOptions {
        k: 1,
        ef: 32,
        ..Default::default()
    };
    let found = |idx: &Hnsw| {
        (0..24u64)
            .filter(|i| ![0, 5, 9].contains(i))
            .filter(|&i| idx.search(&vs[i as usize], &all).unwrap()[0].id == i)
            .count()
    };
    assert_eq!(found(&idx), 21);
    idx.compact().unwrap();
    assert_eq!(idx.len(), 21);
    assert_eq!(found(&idx), 21);
    assert!(MappedHnsw::from_bytes(&bytes[..bytes.len() - 1]).is_err());
}

/// Saves taken while other threads insert and remove always give files that open, load and
/// search, with a consistent live count (the review's snapshot findings); two saves to one
/// path at once each succeed and leave a whole file.
#[test]
#[cfg_attr(miri, ignore)] // too slow under Miri
fn saves_during_inserts_and_removals_open_cleanly() {
    let dim = 8;
    let idx = Hnsw::new(Params {
        m: 6,
        ef_construction: 24,
        ..params(dim, Metric::Cosine)
    })
    .unwrap();
    let mut rng = Rng::new(31);
    let vs: Vec<Vec<f32>> = (0..3000).map(|_| rng.vec(dim)).collect();
    let done = AtomicBool::new(false);
    let path = tmp("concurrent-save");
    std::thread::scope(|s| {
        let writer = {
            let (idx, vs, done) = (&idx, &vs, &done);
            s.spawn(move || {
                for (i, v) in vs.iter().enumerate() {
                    idx.insert(i as u64, v).unwrap();
                    if i % 3 == 0 && i >= 30 {
                        idx.remove(i as u64 - 30).unwrap();
                    }
                }
                done.store(true, O::Relaxed);
            })
        };
        let mut saves = 0;
        while !done.load(O::Relaxed) || saves < 3 {
            let bytes = idx.snapshot().bytes().unwrap();
            let m = MappedHnsw::from_bytes(&bytes).expect("a save taken during writes opens");
            let copy = m.to_hnsw().expect("and loads");
            if !m.is_empty() {
                assert_eq!(m.search(&vs[0], &opts(3)).unwrap().len(), 3.min(m.len()));
                assert_eq!(copy.len(), m.len());
            }
            saves += 1;
        }
        writer.join().unwrap();
        let (a, b) = (&idx, &path);
        let t = s.spawn(move || a.save(b));
        idx.save(&path).unwrap();
        t.join().unwrap().unwrap();
    });
    let m = MappedHnsw::open(&path).unwrap();
    assert_eq!(m.len(), idx.len());
    std::fs::remove_file(&path).unwrap();
}

/// Removing the entry point (and everything at its level) keeps the index searchable,
/// before and after compaction; removing a node still being inserted is refused, not lost.
#[test]
fn removing_the_entry_point_keeps_the_index_searchable() {
    let mut rng = Rng::new(37);
    let mut idx = Hnsw::new(params(8, Metric::L2Sq)).unwrap();
    let vs: Vec<Vec<f32>> = (0..400).map(|_| rng.vec(8)).collect();
    for (i, v) in vs.iter().enumerate() {
        idx.insert(i as u64, v).unwrap();
    }
    for _ in 0..5 {
        let (e, _) = unpack(idx.entry.load(crate::sync::Ordering::Relaxed)).unwrap();
        let ext = idx.store_record_ext(e);
        idx.remove(ext).unwrap();
        let hits = idx.search(&vs[1], &opts(5)).unwrap();
        assert_eq!(hits.len(), 5);
    }
    idx.compact().unwrap();
    assert_eq!(idx.len(), 395);
    assert_eq!(idx.search(&vs[1], &opts(5)).unwrap().len(), 5);
    assert!(unpack(idx.entry.load(crate::sync::Ordering::Relaxed)).is_some());
}

/// Removals and compaction never cut a live vector off. In small graphs where every vector
/// is found first with ef covering the index, a third of them are removed one by one: every
/// live one is still found, before compaction (m >= 3; with m = 2 a replaced entry point may
/// not reach every node until compaction) and after. Removal used to unlink the removed node
/// from its neighbours' lists whatever it left behind, cutting off nodes whose only ways in
/// were removed nodes (m 4 seed 51 here; `miri_sized_lifecycle` failed so about once in 200
/// runs, its graph depending on how its two inserting threads interleave), and compaction
/// checked only that each node was listed by someone, missing groups that list only each
/// other (m 2 seed 14).
#[test]
#[cfg_attr(miri, ignore)] // many small graphs: miri_sized_lifecycle covers the unsafe paths
fn removals_and_compaction_never_cut_a_vector_off() {
    let mut checked = 0;
    for m in [2usize, 3, 4] {
        for seed in 0..64u64 {
            let mut rng = Rng::new(seed);
            let mut idx = Hnsw::new(Params {
                m,
                ef_construction: 8,
                ef_search: 4,
                seed,
                ..params(4, Metric::Cosine)
            })
            .unwrap();
            let vs: Vec<Vec<f32>> = (0..40).map(|_| rng.vec(4)).collect();
            for (i, v) in vs.iter().enumerate() {
                idx.insert(i as u64, v).unwrap();
            }
            let gone: Vec<u64> = (0..40u64).filter(|_| rng.next() % 3 == 0).collect();
            let all = SearchOptions {
                k: 1,
                ef: 64,
                ..Default::default()
            };
            let lost = |idx: &Hnsw| -> Vec<u64> {
                (0..40u64)
                    .filter(|i| !gone.contains(i))
                    .filter(|&i| {
                        let hits = idx.search(&vs[i as usize], &all).unwrap();
                        hits.first().map(|h| h.id) != Some(i)
                    })
                    .collect()
            };
            if !lost(&idx).is_empty() {
                continue; // the insertion heuristic left a node with no way in (m = 2)
            }
            checked += 1;
            for &id in &gone {
                idx.remove(id).unwrap();
            }
            if m >= 3 {
                assert_eq!(lost(&idx), [0u64; 0], "m {m} seed {seed}: after removals");
            }
            idx.compact().unwrap();
            assert_eq!(lost(&idx), [0u64; 0], "m {m} seed {seed}: after compaction");
        }
    }
    assert!(
        checked > 180,
        "only {checked} graphs had every vector findable"
    );
}

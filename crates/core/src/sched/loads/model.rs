//! loom models of the load table's protocols, run on the production code (an in-memory table:
//! the same `Slot` and functions, with loom's atomics): the claim by agent id (one winner per
//! id, whatever the interleaving), and updates and reads across a release and a re-claim of
//! the slot (a reader never pairs one agent's id with another's capacity, a stale update never
//! lands in the next owner's counters).
//!
//! RUSTFLAGS="--cfg loom" cargo test --release --lib sched::loads::model (scripts/loom.sh)

use super::*;
use loom::sync::Arc;
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn token() -> Liveness {
    Liveness::Token(1)
}

#[test]
fn two_claims_of_one_id_have_one_winner() {
    model(|| {
        let t = Arc::new(LoadTable::in_memory(2).unwrap());
        let t2 = t.clone();
        let other = thread::spawn(move || t2.claim(&id("a"), token(), 5, 0).ok());
        let mine = t.claim(&id("a"), token(), 5, 0).ok();
        let theirs = other.join().unwrap();
        let winners = [mine, theirs].into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(winners.len(), 1, "{winners:?}");
        let snap = t.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].1.slot, winners[0]);
    });
}

#[test]
fn claims_of_two_ids_both_win_in_different_slots() {
    model(|| {
        let t = Arc::new(LoadTable::in_memory(2).unwrap());
        let t2 = t.clone();
        let other = thread::spawn(move || t2.claim(&id("b"), token(), 5, 0).unwrap());
        let a = t.claim(&id("a"), token(), 5, 0).unwrap();
        let b = other.join().unwrap();
        assert_ne!(a.index(), b.index());
    });
}

#[test]
fn reads_across_release_and_reclaim_are_consistent() {
    model(|| {
        let t = Arc::new(LoadTable::in_memory(1).unwrap());
        let a = t.claim(&id("a"), token(), 5, 0).unwrap();
        // The old owner keeps updating while its slot is released and claimed by "b".
        let t2 = t.clone();
        let stale = thread::spawn(move || {
            // Ok before the release, NotFound after: never into "b"'s counters.
            let _ = t2.update(a, 1, Some(10));
        });
        let t3 = t.clone();
        let next = thread::spawn(move || {
            t3.release(a).unwrap();
            t3.claim(&id("b"), token(), 7, 0).unwrap()
        });
        // A reader in the middle: "a" with capacity 5 or "b" with 7, never a mix.
        for (agent, load) in t.snapshot() {
            let want = if agent.as_str() == "a" { 5 } else { 7 };
            assert_eq!(load.candidate.max_tasks, want, "{agent}");
            assert!(load.candidate.current_tasks <= 1);
        }
        stale.join().unwrap();
        let b = next.join().unwrap();
        // "b" starts at zero whatever the old owner did.
        let s0 = &t.slots()[0];
        let raw = (
            s0.word.load(Ordering::Relaxed),
            s0.tasks.load(Ordering::Relaxed),
            s0.latency.load(Ordering::Relaxed),
        );
        let lb = t
            .load(b)
            .unwrap_or_else(|| panic!("b = {b:x?}, a = {a:x?}, slot = {raw:x?}"));
        assert_eq!((lb.current_tasks, lb.max_tasks, lb.latency_us), (0, 7, 0));
        assert_eq!(t.load(a), None);
    });
}

//! loom models of the MPMC queues: every interleaving (with bounded preemptions) of a few
//! pushes and pops, checking that each value is delivered exactly once, FIFO per producer,
//! and that nothing is read before it is written (loom's `UnsafeCell` tracking). The
//! unbounded queue runs with blocks of 2 slots so that block hand-over is exercised.
//!
//! RUSTFLAGS="--cfg loom" cargo test --release --lib queue::model (scripts/loom.sh)

use super::{BoundedQueue, Queue};
use loom::sync::Arc;
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(3, f);
}

fn model_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.check(f);
}

#[test]
fn unbounded_two_producers_one_consumer() {
    model(|| {
        let q = Arc::new(Queue::new());
        let ps: Vec<_> = (0..2)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || {
                    q.push(p * 10);
                    q.push(p * 10 + 1);
                })
            })
            .collect();
        let mut got = Vec::new();
        for _ in 0..2 {
            if let Some(v) = q.pop() {
                got.push(v);
            }
        }
        for p in ps {
            p.join().unwrap();
        }
        while let Some(v) = q.pop() {
            got.push(v);
        }
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 10, 11]);
        for p in [0, 10] {
            let pos: Vec<_> = got.iter().filter(|v| **v / 10 * 10 == p).collect();
            assert_eq!(pos, [&p, &(p + 1)]);
        }
    });
}

#[test]
fn unbounded_one_producer_two_consumers() {
    // Three preemptions: 337 s on 2 vCPUs, more than half of the whole CI loom stage; two: 26 s.
    // CI (`EMF_LOOM_QUICK=1`, scripts/test.sh) runs two, `scripts/loom.sh` alone runs three.
    let quick = std::env::var_os("EMF_LOOM_QUICK").is_some_and(|v| v == "1");
    model_bounded(if quick { 2 } else { 3 }, || {
        let q = Arc::new(Queue::new());
        let cs: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    for _ in 0..2 {
                        if let Some(v) = q.pop() {
                            got.push(v);
                        }
                    }
                    got
                })
            })
            .collect();
        for v in 0..3 {
            q.push(v);
        }
        let mut all = Vec::new();
        for c in cs {
            let got = c.join().unwrap();
            assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
            all.extend(got);
        }
        while let Some(v) = q.pop() {
            all.push(v);
        }
        all.sort();
        assert_eq!(all, [0, 1, 2]);
    });
}

#[test]
fn bounded_wraps_around_with_two_producers_and_a_consumer() {
    model(|| {
        let q = Arc::new(BoundedQueue::new(2));
        let ps: Vec<_> = (0..2)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || {
                    let mut v = p;
                    while let Err(back) = q.push(v) {
                        v = back;
                        thread::yield_now();
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        if let Some(v) = q.pop() {
            got.push(v);
        }
        for p in ps {
            p.join().unwrap();
        }
        while let Some(v) = q.pop() {
            got.push(v);
        }
        got.sort();
        assert_eq!(got, [0, 1]);
        // A third lap over the two slots.
        q.push(7).unwrap();
        assert_eq!(q.pop(), Some(7));
    });
}

#[test]
fn bounded_single_slot_with_two_producers() {
    // Each producer tries once; a full queue hands the value back. Whatever happens, every
    // value ends up exactly once either delivered or handed back (with one slot, a producer
    // must never take a written slot for a free one).
    model(|| {
        let q = Arc::new(BoundedQueue::new(1));
        let ps: Vec<_> = (0..2)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || q.push(p).err())
            })
            .collect();
        let mut got: Vec<i32> = q.pop().into_iter().collect();
        for p in ps {
            got.extend(p.join().unwrap());
        }
        got.extend(q.pop());
        assert_eq!(q.pop(), None);
        got.sort();
        assert_eq!(got, [0, 1]);
    });
}

//! A linearizability checker for FIFO queues: threads run random push/pop sequences against
//! a queue while every operation records when it was invoked and when it returned (ticks of
//! one shared counter); the history must then have a linearization — an order that respects
//! real time (an operation that returned before another was invoked comes first) and that a
//! sequential FIFO queue would produce. The search is Wing & Gong's, with memoisation of
//! (operations done, queue contents).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering}; // std-atomic-ok: the checker's own clock

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Push(u32),
    Pop(Option<u32>),
}

#[derive(Debug, Clone, Copy)]
struct Op {
    kind: Kind,
    call: u64,
    ret: u64,
}

/// Whether `history` is linearizable with respect to a FIFO queue.
fn linearizable(history: &[Op]) -> bool {
    assert!(history.len() <= 64);
    let mut seen = HashSet::new();
    search(history, 0, &mut VecDeque::new(), &mut seen)
}

fn search(h: &[Op], done: u64, q: &mut VecDeque<u32>, seen: &mut HashSet<(u64, Vec<u32>)>) -> bool {
    if done.count_ones() as usize == h.len() {
        return true;
    }
    if !seen.insert((done, q.iter().copied().collect())) {
        return false;
    }
    // An operation may go next if no pending operation returned before it was invoked.
    let min_ret = (0..h.len())
        .filter(|&i| done & (1 << i) == 0)
        .map(|i| h[i].ret)
        .min()
        .unwrap_or(u64::MAX);
    for i in 0..h.len() {
        if done & (1 << i) != 0 || h[i].call > min_ret {
            continue;
        }
        match h[i].kind {
            Kind::Push(v) => {
                q.push_back(v);
                if search(h, done | 1 << i, q, seen) {
                    return true;
                }
                q.pop_back();
            }
            Kind::Pop(got) => {
                let front = q.front().copied();
                if front != got {
                    continue;
                }
                if let Some(v) = front {
                    q.pop_front();
                    let ok = search(h, done | 1 << i, q, seen);
                    q.push_front(v);
                    if ok {
                        return true;
                    }
                } else if search(h, done | 1 << i, q, seen) {
                    return true;
                }
            }
        }
    }
    false
}

/// Runs `threads` threads of `ops` random operations each against a fresh queue made by
/// `make`, `rounds` times; returns the first history that is not linearizable.
fn check<Q: Sync>(
    rounds: usize,
    threads: usize,
    ops: usize,
    make: impl Fn() -> Q,
    push: impl Fn(&Q, u32) + Sync,
    pop: impl Fn(&Q) -> Option<u32> + Sync,
) -> Option<Vec<Op>> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..rounds {
        let q = make();
        let clock = AtomicU64::new(0);
        let mut plans = Vec::new();
        for t in 0..threads {
            let mut plan = Vec::new();
            for k in 0..ops {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                plan.push(if seed % 2 == 0 {
                    Some((t * ops + k) as u32)
                } else {
                    None
                });
            }
            plans.push(plan);
        }
        let history: Vec<Op> = std::thread::scope(|s| {
            let handles: Vec<_> = plans
                .iter()
                .map(|plan| {
                    let (q, clock, push, pop) = (&q, &clock, &push, &pop);
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for step in plan {
                            let call = clock.fetch_add(1, Ordering::SeqCst);
                            let kind = match *step {
                                Some(v) => {
                                    push(q, v);
                                    Kind::Push(v)
                                }
                                None => Kind::Pop(pop(q)),
                            };
                            let ret = clock.fetch_add(1, Ordering::SeqCst);
                            out.push(Op { kind, call, ret });
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        if !linearizable(&history) {
            return Some(history);
        }
    }
    None
}

const ROUNDS: usize = if cfg!(miri) { 5 } else { 3000 };

#[test]
fn the_checker_accepts_a_fifo_and_rejects_a_lifo() {
    // A mutex-protected VecDeque is linearizable by construction...
    let fifo = check(
        200,
        3,
        5,
        || std::sync::Mutex::new(VecDeque::new()),
        |q, v| q.lock().unwrap().push_back(v),
        |q| q.lock().unwrap().pop_front(),
    );
    assert!(fifo.is_none(), "{fifo:?}");
    // ...and a stack is not a queue: the checker must find a history that shows it.
    let lifo = check(
        200,
        3,
        5,
        || std::sync::Mutex::new(Vec::new()),
        |q, v| q.lock().unwrap().push(v),
        |q| q.lock().unwrap().pop(),
    );
    assert!(lifo.is_some(), "a LIFO passed the FIFO check");
}

#[test]
fn unbounded_queue_histories_are_linearizable() {
    let bad = check(
        ROUNDS,
        3,
        6,
        super::Queue::new,
        |q, v| q.push(v),
        |q| q.pop(),
    );
    assert!(bad.is_none(), "not linearizable: {bad:?}");
}

#[test]
fn bounded_queue_histories_are_linearizable() {
    // Capacity above the pushes of a round: a push never answers Full here (Full is checked
    // by the unit tests).
    let bad = check(
        ROUNDS,
        3,
        6,
        || super::BoundedQueue::new(32),
        |q, v| q.push(v).expect("room"),
        |q| q.pop(),
    );
    assert!(bad.is_none(), "not linearizable: {bad:?}");
}

#[test]
fn task_queue_histories_are_linearizable_within_a_priority() {
    let bad = check(
        ROUNDS / 3,
        3,
        6,
        || super::TaskQueue::new(super::TaskQueueOptions::default()),
        |q, v| assert_eq!(q.enqueue(v, super::Priority::Normal), super::Enqueue::Ok),
        |q| q.dequeue().map(|(v, _)| v),
    );
    assert!(bad.is_none(), "not linearizable: {bad:?}");
}

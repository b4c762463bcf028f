//! The task queue (the Erlang host's `erlmcp_flow_queue`): a primary queue of
//! `max_primary` tasks and an overflow of `max_overflow` more, four priorities, dequeue by
//! priority and FIFO within a priority, and answers that say what happened to every task.
//!
//! Primary and overflow are capacity classes of one priority-ordered store: the first
//! `max_primary` queued tasks are "in the primary queue", arrivals beyond it are "spilled" to
//! the overflow and are promoted, in order, as the primary drains. A dequeue always takes the
//! oldest task of the highest priority present, wherever it sits.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::priority::Priority;

/// What a full queue does with an arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropPolicy {
    /// Refuse the arrival (`Enqueue::Rejected`, the task handed back).
    #[default]
    None,
    /// Let an arrival of higher priority evict the newest task of the lowest priority queued
    /// (`Enqueue::Evicted`, the evicted task handed back); refuse it otherwise.
    LowPriority,
}

/// Task queue parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskQueueOptions {
    /// Tasks the primary queue holds (default 1000).
    pub max_primary: usize,
    /// Tasks the overflow holds beyond the primary (default 10000).
    pub max_overflow: usize,
    /// What happens to an arrival when both are full.
    pub drop_policy: DropPolicy,
}

impl Default for TaskQueueOptions {
    fn default() -> Self {
        TaskQueueOptions {
            max_primary: 1000,
            max_overflow: 10_000,
            drop_policy: DropPolicy::None,
        }
    }
}

/// The answer to an enqueue. No task ever disappears: each one is queued or handed back.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a rejected or evicted task is handed back and must be dealt with"]
pub enum Enqueue<T> {
    /// Queued in the primary queue.
    Ok,
    /// Queued in the overflow: the caller should slow down.
    Backpressure,
    /// Not queued: both queues are full. The task is handed back.
    Rejected(T),
    /// Queued, by evicting a lower-priority task, which is handed back (with its priority).
    Evicted(T, Priority),
}

/// Counters and depth figures of a task queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskQueueStats {
    /// Tasks queued now.
    pub depth: usize,
    /// Of which in the primary queue.
    pub primary_depth: usize,
    /// Of which in the overflow.
    pub overflow_depth: usize,
    /// The 99th percentile of the depth seen after each enqueue.
    pub depth_p99: usize,
    /// The largest depth seen.
    pub max_depth: usize,
    /// Tasks accepted (including those that caused an eviction).
    pub enqueued: u64,
    /// Tasks dequeued.
    pub dequeued: u64,
    /// Tasks that landed in the overflow (back-pressure answers).
    pub spills: u64,
    /// Tasks refused.
    pub rejections: u64,
    /// Tasks evicted by higher-priority arrivals.
    pub evictions: u64,
}

struct Inner<T> {
    queues: [VecDeque<T>; 4],
    len: usize,
    stats: TaskQueueStats,
    /// Enqueue counts by depth bucket (`depth / bucket_width`).
    depth_hist: Vec<u64>,
    bucket_width: usize,
}

/// The task queue. All methods take `&self`; share it between threads (it is `Sync`).
///
/// ```
/// use erlmcp_flow::queue::{Enqueue, Priority, TaskQueue, TaskQueueOptions};
/// let q = TaskQueue::new(TaskQueueOptions { max_primary: 1, max_overflow: 1, ..Default::default() });
/// assert_eq!(q.enqueue("a", Priority::Low), Enqueue::Ok);
/// assert_eq!(q.enqueue("b", Priority::Critical), Enqueue::Backpressure);
/// assert_eq!(q.enqueue("c", Priority::Normal), Enqueue::Rejected("c"));
/// assert_eq!(q.dequeue(), Some(("b", Priority::Critical)));
/// ```
pub struct TaskQueue<T> {
    inner: Mutex<Inner<T>>,
    opts: TaskQueueOptions,
}

/// Depth histogram resolution: at most this many buckets.
const HIST_BUCKETS: usize = 1 << 14;

impl<T> TaskQueue<T> {
    /// A task queue with `opts` (a zero `max_primary` is taken as 1).
    pub fn new(opts: TaskQueueOptions) -> Self {
        let opts = TaskQueueOptions {
            max_primary: opts.max_primary.max(1),
            ..opts
        };
        let total = opts.max_primary.saturating_add(opts.max_overflow);
        let bucket_width = total / HIST_BUCKETS + 1;
        TaskQueue {
            inner: Mutex::new(Inner {
                queues: Default::default(),
                len: 0,
                stats: TaskQueueStats::default(),
                depth_hist: vec![0; total / bucket_width + 1],
                bucket_width,
            }),
            opts,
        }
    }

    /// The options in force.
    pub fn options(&self) -> TaskQueueOptions {
        self.opts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic inside the lock cannot leave the queues inconsistent (each operation is a
        // single push or pop plus counters): keep serving after a poisoned lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `task` at `priority`. See [`Enqueue`] for the answers.
    pub fn enqueue(&self, task: T, priority: Priority) -> Enqueue<T> {
        let mut g = self.lock();
        let g = &mut *g;
        let cap = self.opts.max_primary.saturating_add(self.opts.max_overflow);
        let answer = if g.len < self.opts.max_primary {
            Enqueue::Ok
        } else if g.len < cap {
            g.stats.spills += 1;
            Enqueue::Backpressure
        } else {
            // Full. Evict the newest task of the lowest priority below ours, if allowed.
            let victim = match self.opts.drop_policy {
                DropPolicy::None => None,
                DropPolicy::LowPriority => (priority as usize + 1..4)
                    .rev()
                    .find(|&p| !g.queues[p].is_empty()),
            };
            match victim {
                None => {
                    g.stats.rejections += 1;
                    return Enqueue::Rejected(task);
                }
                Some(p) => {
                    let evicted = g.queues[p].pop_back().expect("non-empty queue");
                    g.len -= 1;
                    g.stats.evictions += 1;
                    Enqueue::Evicted(evicted, Priority::ALL[p])
                }
            }
        };
        g.queues[priority as usize].push_back(task);
        g.len += 1;
        g.stats.enqueued += 1;
        g.stats.max_depth = g.stats.max_depth.max(g.len);
        let b = g.len / g.bucket_width;
        g.depth_hist[b] += 1;
        answer
    }

    /// Takes the oldest task of the highest priority queued.
    pub fn dequeue(&self) -> Option<(T, Priority)> {
        self.dequeue_min(Priority::Low)
    }

    /// Like [`TaskQueue::dequeue`], but only tasks of priority `min` or higher.
    pub fn dequeue_min(&self, min: Priority) -> Option<(T, Priority)> {
        let mut g = self.lock();
        for p in 0..=min as usize {
            if let Some(t) = g.queues[p].pop_front() {
                g.len -= 1;
                g.stats.dequeued += 1;
                return Some((t, Priority::ALL[p]));
            }
        }
        None
    }

    /// Tasks queued now.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// True when no task is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters and depth figures.
    pub fn stats(&self) -> TaskQueueStats {
        let g = self.lock();
        let mut s = g.stats;
        s.depth = g.len;
        s.primary_depth = g.len.min(self.opts.max_primary);
        s.overflow_depth = g.len - s.primary_depth;
        let total: u64 = g.depth_hist.iter().sum();
        if total > 0 {
            let want = (total as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            for (b, &n) in g.depth_hist.iter().enumerate() {
                seen += n;
                if seen >= want {
                    // The bucket's upper edge, never above the largest depth seen.
                    s.depth_p99 = ((b + 1) * g.bucket_width - 1).min(s.max_depth);
                    break;
                }
            }
        }
        s
    }

    /// Removes and returns every queued task, highest priority first (for shutdown: nothing
    /// is lost when a queue is retired).
    pub fn drain(&self) -> Vec<(T, Priority)> {
        let mut g = self.lock();
        let mut out = Vec::with_capacity(g.len);
        for p in 0..4 {
            while let Some(t) = g.queues[p].pop_front() {
                out.push((t, Priority::ALL[p]));
            }
        }
        g.stats.dequeued += out.len() as u64;
        g.len = 0;
        out
    }
}

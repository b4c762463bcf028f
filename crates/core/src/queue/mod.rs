//! In-process queues: lock-free MPMC queues (unbounded, reclaimed with crossbeam-epoch, and
//! bounded) and the task queue with primary and overflow capacity, priorities and
//! back-pressure that the scheduler and the hosts use (`erlmcp_flow_queue`).
//!
//! How they are checked: loom models of both MPMC queues (`cfg(loom)`, `scripts/loom.sh`),
//! Miri over the unit tests (`scripts/miri.sh`), a linearizability check of recorded
//! concurrent histories against a sequential FIFO (`lincheck` in the tests), and a long stress
//! run (`scripts/queue-stress.sh`).

mod bounded;
mod task;
mod unbounded;

pub use crate::priority::Priority;
pub use bounded::BoundedQueue;
pub use task::{DropPolicy, Enqueue, TaskQueue, TaskQueueOptions, TaskQueueStats};
pub use unbounded::Queue;

#[cfg(test)]
mod lincheck;
#[cfg(all(test, loom))]
mod model;
#[cfg(all(test, not(loom)))]
mod tests;

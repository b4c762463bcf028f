//! Agents, the scheduler, pools and leases (issue 12; being built).
//!
//! Everything here is a state machine or a pure component without I/O: callers (the hosts'
//! runtimes, the simulations of the tests) feed it events and a clock reading (`now`, in µs of
//! any monotonic clock they choose) and carry out the actions it returns. Durable state goes
//! through the [`Ledger`] trait, so the in-memory, shared-memory, file-backed and Raft-replicated
//! ([`replicated::RaftLedger`]) ledgers are interchangeable.
//!
//! The shared vocabulary lives in [`types`]; each part has a file of its own.

pub mod backpressure;
pub mod breaker;
pub mod ledger;
pub mod loads;
pub mod pool;
pub mod ratelimit;
pub mod registry;
#[cfg(not(loom))]
pub mod replicated;
#[cfg(not(loom))]
pub mod runtime;
pub mod scheduler;
pub mod strategy;
pub mod types;

pub use backpressure::{BackPressure, BackPressureConfig, SlowConsumer};
pub use breaker::{Admission, Breaker, BreakerConfig, BreakerState};
pub use ledger::{FileLedger, FileLedgerOptions, ShmLedger, ShmLedgerOptions};
pub use loads::{LoadTable, SlotRef};
pub use pool::{Pool, PoolAction, PoolConfig, PoolStats};
pub use ratelimit::{Rate, RateLimiter, RateLimiterConfig, Throttled};
pub use registry::{AgentInfo, Candidates, Registry};
#[cfg(not(loom))]
pub use runtime::{
    Agent, AgentOptions, Dispatcher, DispatcherStats, LedgerChoice, Outcome, RuntimeOptions,
    Service, Task, TaskFuture,
};
pub use scheduler::{
    AckOutcome, Action, AgentLoad, DeadLetter, HeartbeatSource, Scheduler, SchedulerConfig,
    SchedulerStats, TaskSpec, DEFAULT_MAX_TASKS,
};
pub use strategy::{Candidate, Strategy};
pub use types::{
    AgentId, AgentType, Attempt, Ledger, LedgerRecord, Liveness, MemLedger, Micros, TaskId,
};

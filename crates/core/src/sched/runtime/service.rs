//! A dispatcher on a thread of its own, with futures for results.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering}; // std-atomic-ok: a stop flag beside a mutex, not a lock-free structure
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::dispatcher::{Dispatcher, DispatcherStats, Inner, Outcome};
use super::pool_host::{Launcher, PoolHost};
use super::AnyLedger;
use super::RuntimeOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::priority::Priority;
use crate::ring::{Consumer, WaitStrategy};
use crate::sched::pool::{PoolConfig, PoolStats};
use crate::sched::registry::Registry;
use crate::sched::scheduler::Scheduler;
use crate::sched::types::{AgentType, TaskId};

/// What the service thread and the handles share.
struct Shared {
    state: Mutex<State>,
    /// Signalled when outcomes arrive.
    done: Condvar,
    stop: AtomicBool,
}

struct State {
    /// The dispatcher; taken (and dropped: its ledger and inboxes released) when the service
    /// stops, while futures may still hold this state.
    dispatcher: Option<Inner>,
    /// Outcomes of tasks submitted through this service, until their future takes them.
    finished: HashMap<TaskId, Outcome>,
    /// Tasks whose future is alive.
    waiting: HashSet<TaskId>,
    /// Tasks whose future was dropped before the outcome came: the outcome is discarded.
    abandoned: HashSet<TaskId>,
    /// Outcomes of tasks this service did not submit (recovered from the ledger of a
    /// previous dispatcher), in order (see [`Service::take_orphan`]).
    orphans: VecDeque<(TaskId, Outcome)>,
    /// The error that stopped the service thread, if any.
    failed: Option<Error>,
    /// Pools kept by the service thread.
    pools: Vec<PoolHost<Box<dyn Launcher>>>,
    /// The last error of a pool's round (the pools go on).
    pool_error: Option<Error>,
}

/// A dispatcher run by a thread of its own, shared by any number of threads (see
/// [`super`]). Dropping it stops the thread; the directory stays for a successor.
pub struct Service {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The result of a task submitted through a [`Service`], once it ends.
pub struct TaskFuture {
    id: TaskId,
    shared: Arc<Shared>,
    taken: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves the state consistent (every change is one call
    // into the dispatcher): keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn collect(&mut self) -> bool {
        let mut any = false;
        let Some(d) = self.dispatcher.as_mut() else {
            return false;
        };
        while let Some((id, o)) = d.poll_outcome() {
            if self.waiting.remove(&id) {
                self.finished.insert(id, o);
                any = true;
            } else if !self.abandoned.remove(&id) {
                self.orphans.push_back((id, o));
            }
        }
        any
    }
}

impl State {
    fn step_pools(&mut self) {
        if self.pools.is_empty() {
            return;
        }
        let now = super::now_micros();
        let State {
            dispatcher,
            pools,
            pool_error,
            ..
        } = self;
        let Some(dispatcher) = dispatcher.as_ref() else {
            return;
        };
        for p in pools.iter_mut() {
            if let Err(e) = p.step(dispatcher.scheduler(), now) {
                *pool_error = Some(e);
            }
        }
    }
}

impl Service {
    /// Opens the directory ([`Dispatcher::open`]) and starts the thread that runs it.
    pub fn start(opts: &RuntimeOptions) -> Result<Service> {
        let Dispatcher {
            inner: dispatcher,
            reports,
        } = Dispatcher::open(opts)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                dispatcher: Some(dispatcher),
                finished: HashMap::new(),
                waiting: HashSet::new(),
                abandoned: HashSet::new(),
                orphans: VecDeque::new(),
                failed: None,
                pools: Vec::new(),
                pool_error: None,
            }),
            done: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("emf-sched".into())
            .spawn(move || Self::run(&s, reports))
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start a thread: {e}")))?;
        Ok(Service {
            shared,
            thread: Some(thread),
        })
    }

    fn run(s: &Shared, mut reports: Consumer) {
        while !s.stop.load(Ordering::Acquire) {
            let any = {
                let mut st = lock(&s.state);
                let Some(d) = st.dispatcher.as_mut() else {
                    return;
                };
                let r = d.poll(&mut reports);
                let any = st.collect();
                st.step_pools();
                if let Err(e) = r {
                    st.failed = Some(e);
                    drop(st);
                    s.done.notify_all();
                    return;
                }
                any
            };
            if any {
                s.done.notify_all();
            }
            // Wait for reports without the lock (submitters deliver by themselves). The
            // bound keeps lease and liveness checks going when no report comes.
            if let Err(e) = reports.wait(WaitStrategy::default(), Duration::from_millis(1)) {
                lock(&s.state).failed = Some(e);
                s.done.notify_all();
                return;
            }
        }
    }

    /// Accepts a task (in the ledger before this returns) and gives the future of its result.
    /// `Full` is back-pressure: nothing was accepted, try again later.
    pub fn submit(
        &self,
        agent_type: &AgentType,
        priority: Priority,
        payload: Vec<u8>,
    ) -> Result<TaskFuture> {
        let mut st = lock(&self.shared.state);
        if let Some(e) = &st.failed {
            return Err(Error::new(
                e.kind(),
                format!("the scheduler stopped: {}", e.message()),
            ));
        }
        let Some(d) = st.dispatcher.as_mut() else {
            return Err(Error::new(ErrorKind::Closed, "the scheduler stopped"));
        };
        let id = d.submit(agent_type, priority, payload)?;
        st.waiting.insert(id);
        // A task may complete inside submit only if an agent answered already; collect anyway.
        if st.collect() {
            self.shared.done.notify_all();
        }
        Ok(TaskFuture {
            id,
            shared: self.shared.clone(),
            taken: false,
        })
    }

    /// An outcome of a task that no future of this service waits for (tasks recovered from a
    /// previous dispatcher's ledger), oldest first.
    pub fn take_orphan(&self) -> Option<(TaskId, Outcome)> {
        lock(&self.shared.state).orphans.pop_front()
    }

    /// The dispatcher's counters (all zero once stopped).
    pub fn stats(&self) -> DispatcherStats {
        lock(&self.shared.state)
            .dispatcher
            .as_ref()
            .map(Inner::stats)
            .unwrap_or_default()
    }

    /// Adds a pool of agents started by `launcher` as `<id_prefix><n>` (see [`PoolHost`]); the
    /// service thread keeps it. Returns its index for [`Service::pool_stats`].
    pub fn add_pool(
        &self,
        config: PoolConfig,
        launcher: Box<dyn Launcher>,
        id_prefix: &str,
    ) -> Result<usize> {
        let host = PoolHost::new(config, launcher, id_prefix)?;
        let mut st = lock(&self.shared.state);
        st.pools.push(host);
        Ok(st.pools.len() - 1)
    }

    /// Pool `index`'s counters, and the last error of any pool's round.
    pub fn pool_stats(&self, index: usize) -> Result<(PoolStats, Option<Error>)> {
        let st = lock(&self.shared.state);
        let p = st.pools.get(index).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no pool {index} in this service"),
            )
        })?;
        Ok((p.stats(), st.pool_error.clone()))
    }

    /// The registered agents, for lookups by id (LRU-cached) and by type from any thread
    /// without the service's lock. `Closed` once the service stopped.
    pub fn registry(&self) -> Result<Arc<Registry>> {
        lock(&self.shared.state)
            .dispatcher
            .as_ref()
            .map(|d| d.registry().clone())
            .ok_or_else(|| Error::new(ErrorKind::Closed, "the scheduler stopped"))
    }

    /// Runs `f` on the scheduler (read-only), under the service's lock. `Closed` once the
    /// service stopped.
    pub fn with_scheduler<R>(&self, f: impl FnOnce(&Scheduler<AnyLedger>) -> R) -> Result<R> {
        let st = lock(&self.shared.state);
        let d = st
            .dispatcher
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Closed, "the scheduler stopped"))?;
        Ok(f(d.scheduler()))
    }

    /// Stops the thread (futures still waiting get `Closed`); the directory stays for a
    /// successor. Dropping the service does the same.
    pub fn shutdown(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Under the lock, so that a future between its check of `stop` and its wait cannot
        // miss the wake-up; the dispatcher (ledger, inboxes) and the pools (their launchers)
        // go now, not when the last future does.
        let (dispatcher, pools) = {
            let mut st = lock(&self.shared.state);
            let d = st.dispatcher.take();
            let p = std::mem::take(&mut st.pools);
            self.shared.done.notify_all();
            (d, p)
        };
        drop(pools);
        drop(dispatcher);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.halt();
    }
}

impl TaskFuture {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// True once the outcome is there.
    pub fn is_done(&self) -> bool {
        lock(&self.shared.state).finished.contains_key(&self.id)
    }

    /// Waits up to `timeout` for the outcome. `Timeout` when it did not come (the task is
    /// still owned by the scheduler: wait again); `Closed` when the service stopped.
    pub fn wait(&mut self, timeout: Duration) -> Result<Outcome> {
        if self.taken {
            return Err(Error::invalid(format!(
                "task {}: its outcome was already taken",
                self.id.0
            )));
        }
        // No deadline when the timeout is too long to add (Duration::MAX: wait for ever).
        let deadline = Instant::now().checked_add(timeout);
        let mut st = lock(&self.shared.state);
        loop {
            if let Some(o) = st.finished.remove(&self.id) {
                self.taken = true;
                return Ok(o);
            }
            if let Some(e) = &st.failed {
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!("the scheduler stopped: {}", e.message()),
                ));
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return Err(Error::new(ErrorKind::Closed, "the scheduler stopped"));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("task {}: no outcome yet", self.id.0),
                ));
            }
            let slice = deadline.map_or(Duration::from_secs(3600), |d| d - now);
            st = self
                .shared
                .done
                .wait_timeout(st, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for TaskFuture {
    fn drop(&mut self) {
        if !self.taken {
            let mut st = lock(&self.shared.state);
            if st.waiting.remove(&self.id) {
                st.abandoned.insert(self.id);
            }
            st.finished.remove(&self.id);
        }
    }
}

//! C ABI of the scheduler's runtime (`emf_service_*`, `emf_agent_*`): a scheduler directory
//! served by a dispatcher on a thread of its own, and agents in any process taking tasks from
//! it, over `engine::sched::{Service, Agent}` (see `crates/core/src/sched/runtime.rs`).
//!
//! * `emf_service_t` — the scheduler's end: `emf_service_start` opens a directory (recovering
//!   the tasks a previous dispatcher accepted), `emf_service_submit` accepts a task and
//!   `emf_service_wait` waits for its outcome. The handle keeps each submitted task's future
//!   by task id until its outcome is taken; its lock guards that map only (the scheduling is
//!   the engine's). Any number of threads may use one service at once.
//! * `emf_agent_t` — one agent's end: `emf_agent_connect` joins a directory,
//!   `emf_agent_recv` takes the next task, `emf_agent_complete` / `emf_agent_fail` answer it.
//!   The handle keeps every received task by (id, attempt) until it is answered, so a payload
//!   too large for the caller's buffer is never lost: it is handed out again by the next
//!   `emf_agent_recv`. One thread at a time (else `EMF_ERR_BUSY`).

use std::collections::HashMap;
use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::handle::{borrow, free, new_handle, Exclusive, Handle, Shared};
use super::sched::{
    agent_id, agent_type, config_of, emf_sched_options_t, emf_sched_stats_t, options_default,
    stats_of, EMF_LEDGER_FILE, EMF_LEDGER_MEMORY, EMF_LEDGER_SHM,
};
use super::{
    bytes, c_str, emf_status_t, guard, require_out, write_out, FfiError, FfiResult,
    EMF_ERR_BUFFER_TOO_SMALL, EMF_ERR_BUSY, EMF_ERR_EMPTY, EMF_ERR_INVALID_ARGUMENT,
    EMF_ERR_NOT_FOUND, EMF_ERR_TIMEOUT,
};
use engine::queue::Priority;
use engine::sched::{
    Agent, AgentOptions, FileLedgerOptions, LedgerChoice, Liveness, Outcome, RuntimeOptions,
    Service, Task, TaskFuture, DEFAULT_MAX_TASKS,
};
use engine::ErrorKind;

/// Outcome kind (`emf_service_wait`, `emf_service_take_orphan`): the task completed; the
/// bytes are its result.
pub const EMF_OUTCOME_DONE: u32 = 1;
/// Outcome kind: the task was given up after `max_attempts` failed attempts; the bytes are
/// the reason (UTF-8).
pub const EMF_OUTCOME_DEAD_LETTER: u32 = 2;

/// Options for `emf_service_start`; fill with `emf_service_options_default` first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_service_options_t {
    /// The scheduler's options (as for `emf_sched_new`; `sched.shm_capacity` sizes a new
    /// shared-memory ledger).
    pub sched: emf_sched_options_t,
    /// `EMF_LEDGER_*`: where accepted tasks are kept (default `EMF_LEDGER_SHM`, the segment
    /// `ledger.sched` in the directory: survives the death of any process). `EMF_LEDGER_FILE`
    /// needs `ledger_path`; `EMF_LEDGER_MEMORY` keeps nothing past the service.
    pub ledger: u32,
    /// The ledger file of `EMF_LEDGER_FILE` (NUL-terminated; else NULL).
    pub ledger_path: *const c_char,
    /// Bytes of the reports ring (default 4 MiB; a power of two).
    pub reports_capacity: usize,
    /// Slots of the load table: the most agents at once (default 1024).
    pub load_slots: usize,
    /// How often agents' processes are checked, µs (default 20 ms; at least 1).
    pub liveness_interval_us: u64,
    /// Most report frames handled per round (default 4096; at least 1).
    pub batch: usize,
}

/// A service's counters (`emf_service_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_service_stats_t {
    /// The scheduler's counters.
    pub sched: emf_sched_stats_t,
    /// Agents with an inbox (registered).
    pub inboxes: u64,
    /// Report frames handled.
    pub reports: u64,
    /// Report frames refused (undecodable, or about unknown tasks or agents).
    pub bad_reports: u64,
    /// Inbox frames waiting for space in a full inbox.
    pub pending_deliveries: u64,
    /// Agents found dead by their process identity.
    pub deaths: u64,
}

/// A task's future in the service handle.
enum Slot {
    /// Not ended yet (as far as this handle knows).
    Pending(TaskFuture),
    /// A thread is inside `emf_service_wait` for it.
    Waiting,
    /// Ended; the outcome did not fit the caller's buffer and waits for a retry.
    Ready(Outcome),
}

/// What the service handle's lock guards: futures by task id, and an orphan outcome that
/// did not fit the caller's buffer.
#[derive(Default)]
struct Futures {
    slots: HashMap<u64, Slot>,
    orphan: Option<(u64, Outcome)>,
}

/// What an `emf_service_t` holds.
pub(crate) struct ServiceState {
    service: Service,
    futures: Mutex<Futures>,
}

impl ServiceState {
    fn futures(&self) -> MutexGuard<'_, Futures> {
        // Every change under the lock is one map operation: a panic cannot leave it torn.
        self.futures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A scheduler directory's dispatcher, run by a thread of its own. Opaque; any number of
/// threads may use it at once.
pub struct emf_service_t {
    _private: (),
}

impl Handle for emf_service_t {
    const KIND: u32 = 15;
    const NAME: &'static str = "service";
    type Target = ServiceState;
    type Access = Shared;
}

/// What an `emf_agent_t` holds: the agent, the tasks received and not yet answered, and the
/// one whose payload did not fit the caller's buffer (handed out again first).
pub(crate) struct AgentState {
    agent: Agent,
    held: HashMap<(u64, u32), Task>,
    unfetched: Option<(u64, u32)>,
}

/// One agent of a scheduler directory. Opaque; one thread at a time (else `EMF_ERR_BUSY`).
pub struct emf_agent_t {
    _private: (),
}

impl Handle for emf_agent_t {
    const KIND: u32 = 16;
    const NAME: &'static str = "agent";
    type Target = AgentState;
    type Access = Exclusive;
}

fn service_options_default() -> emf_service_options_t {
    let d = RuntimeOptions::default();
    let capacity = match d.ledger {
        LedgerChoice::Shm { capacity } => capacity,
        _ => options_default().shm_capacity,
    };
    emf_service_options_t {
        sched: emf_sched_options_t {
            shm_capacity: capacity,
            ..options_default()
        },
        ledger: EMF_LEDGER_SHM,
        ledger_path: std::ptr::null(),
        reports_capacity: d.reports_capacity,
        load_slots: d.load_slots,
        liveness_interval_us: d.liveness_interval,
        batch: d.batch,
    }
}

fn dir_or_default(dir: *const c_char) -> FfiResult<PathBuf> {
    Ok(if dir.is_null() {
        RuntimeOptions::default().dir
    } else {
        PathBuf::from(c_str(dir, "dir")?)
    })
}

fn ms(timeout_ms: u32) -> Duration {
    Duration::from_millis(u64::from(timeout_ms))
}

/// Copies `data` into the caller's buffer when it fits; writes `*out_len` either way.
///
/// # Safety
///
/// `buf` writable for `cap` bytes when non-NULL (checked non-NULL when `cap > 0`); `out_len`
/// writable and non-NULL.
unsafe fn put_bytes(
    data: &[u8],
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
    what: &str,
) -> FfiResult {
    // SAFETY: non-NULL (checked by the callers) and writable by contract.
    unsafe { write_out(out_len, data.len(), "out_len") }?;
    if data.len() > cap {
        return Err(FfiError::new(
            EMF_ERR_BUFFER_TOO_SMALL,
            format!(
                "the {what} is {} bytes, the buffer {cap}: call again with a larger one",
                data.len()
            ),
        ));
    }
    if !data.is_empty() {
        // SAFETY: `buf` is non-NULL (cap ≥ len > 0, and the callers refuse NULL with cap > 0)
        // and writable for `cap` ≥ len bytes; `data` is ours, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
    }
    Ok(())
}

fn check_buf(buf: *mut u8, cap: usize) -> FfiResult {
    if buf.is_null() && cap > 0 {
        return Err(FfiError::null("buf"));
    }
    Ok(())
}

fn outcome_parts(o: &Outcome) -> (u32, &[u8]) {
    match o {
        Outcome::Done(r) => (EMF_OUTCOME_DONE, &r[..]),
        Outcome::DeadLetter(why) => (EMF_OUTCOME_DEAD_LETTER, why.as_bytes()),
    }
}

/// Writes an outcome out: kind, length and (when it fits) the bytes.
///
/// # Safety
///
/// As [`put_bytes`]; `out_kind` writable and non-NULL.
unsafe fn put_outcome(
    o: &Outcome,
    out_kind: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> FfiResult {
    let (kind, data) = outcome_parts(o);
    // SAFETY: non-NULL (checked by the callers) and writable by contract.
    unsafe { write_out(out_kind, kind, "out_status_kind") }?;
    // SAFETY: the caller's contract.
    unsafe { put_bytes(data, buf, cap, out_len, "outcome") }
}

// ---- service ---------------------------------------------------------------------------------

/// Fills `*out` with the default service options (a shared-memory ledger, the scheduler's
/// defaults).
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_service_options_default(
    out: *mut emf_service_options_t,
) -> emf_status_t {
    // SAFETY: writable by contract (NULL checked inside).
    guard(|| unsafe { write_out(out, service_options_default(), "out") })
}

/// Opens the scheduler directory `dir` (created if missing; NULL: `/dev/shm/emf-sched`) as its
/// dispatcher, with options `opts` (NULL: the defaults), and starts the thread that runs it.
/// A durable ledger holding tasks of a previous dispatcher is recovered: its tasks not ended
/// are delivered again, their outcomes come out of `emf_service_take_orphan`; agents still
/// connected register again by themselves. `EMF_ERR_BUSY` while another live dispatcher holds
/// the directory.
///
/// # Safety
///
/// `opts` NULL or readable (its `ledger_path` NULL or a NUL-terminated string); `dir` NULL or
/// a NUL-terminated string; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_service_start(
    opts: *const emf_service_options_t,
    dir: *const c_char,
    out: *mut *mut emf_service_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let o = if opts.is_null() {
            service_options_default()
        } else {
            // SAFETY: readable by contract; plain data, read without alignment assumptions.
            unsafe { opts.read_unaligned() }
        };
        let config = config_of(&o.sched)?;
        let path_only_for_file = || -> FfiResult {
            if o.ledger_path.is_null() {
                Ok(())
            } else {
                Err(FfiError::new(
                    EMF_ERR_INVALID_ARGUMENT,
                    "`ledger_path` is only for EMF_LEDGER_FILE",
                ))
            }
        };
        let ledger = match o.ledger {
            EMF_LEDGER_MEMORY => {
                path_only_for_file()?;
                LedgerChoice::Memory
            }
            EMF_LEDGER_SHM => {
                path_only_for_file()?;
                LedgerChoice::Shm {
                    capacity: o.sched.shm_capacity,
                }
            }
            EMF_LEDGER_FILE => LedgerChoice::File {
                path: PathBuf::from(c_str(o.ledger_path, "ledger_path")?),
                options: FileLedgerOptions::default(),
            },
            k => {
                return Err(FfiError::new(
                    EMF_ERR_INVALID_ARGUMENT,
                    format!("ledger {k} is not one of EMF_LEDGER_* (0..2)"),
                ))
            }
        };
        let ropts = RuntimeOptions {
            dir: dir_or_default(dir)?,
            config,
            ledger,
            reports_capacity: o.reports_capacity,
            load_slots: o.load_slots,
            liveness_interval: o.liveness_interval_us,
            batch: o.batch,
        };
        let service = Service::start(&ropts)?;
        let h = new_handle::<emf_service_t>(ServiceState {
            service,
            futures: Mutex::new(Futures::default()),
        })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Stops the service's thread and frees it (NULL is fine). The directory stays: its ledger
/// keeps the tasks not ended for a later `emf_service_start`; outcomes not yet taken are
/// dropped (their tasks are ended in the ledger).
///
/// # Safety
///
/// No other thread may be using `s`.
#[no_mangle]
pub unsafe extern "C" fn emf_service_free(s: *mut emf_service_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(s) })
}

/// Submits a task for an agent of type `agent_type` at priority `priority`
/// (`EMF_PRIORITY_*`) with a copy of `payload`. On `EMF_OK` the task is in the ledger (never
/// lost from then on), `*out_task_id` holds its id, and `emf_service_wait` gives its outcome.
/// `EMF_ERR_FULL` is back-pressure (`max_queued` tasks wait already): nothing was accepted,
/// the caller keeps its task and may retry. `EMF_ERR_CLOSED` when the service's thread
/// stopped on an error (its message says which).
///
/// # Safety
///
/// `s` a live handle; `agent_type` a NUL-terminated string; `payload` readable for `len`;
/// `out_task_id` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_service_submit(
    s: *mut emf_service_t,
    agent_type: *const c_char,
    priority: u32,
    payload: *const u8,
    len: usize,
    out_task_id: *mut u64,
) -> emf_status_t {
    guard(|| {
        require_out(out_task_id, "out_task_id")?;
        let ty = self::agent_type(agent_type, "agent_type")?;
        let p = Priority::from_code(priority).ok_or_else(|| {
            FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("priority {priority} is not one of EMF_PRIORITY_* (0..3)"),
            )
        })?;
        // SAFETY: caller contract.
        let data = unsafe { bytes(payload, len, "payload") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(s) }?;
        let fut = st.service.submit(&ty, p, data.to_vec())?;
        let id = fut.id().0;
        st.futures().slots.insert(id, Slot::Pending(fut));
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_task_id, id, "out_task_id") }
    })
}

/// Waits up to `timeout_ms` for the outcome of task `task_id` (submitted through this
/// handle). On `EMF_OK`: `*out_status_kind` is `EMF_OUTCOME_DONE` (the bytes are the result)
/// or `EMF_OUTCOME_DEAD_LETTER` (the bytes are the reason), the bytes are in `buf` and their
/// length in `*out_len`; the outcome is taken (a second wait is `EMF_ERR_NOT_FOUND`).
///
/// `EMF_ERR_BUFFER_TOO_SMALL` when the bytes do not fit `cap`: `*out_status_kind` and
/// `*out_len` (the length needed) are written and the outcome is kept for another call
/// (`buf` may be NULL with `cap` 0 to ask for the length). `EMF_ERR_TIMEOUT` when the task
/// has not ended yet (wait again; the scheduler still owns it). `EMF_ERR_NOT_FOUND` for an id
/// not submitted through this handle or whose outcome was taken; `EMF_ERR_BUSY` while another
/// thread waits for the same task; `EMF_ERR_CLOSED` when the service's thread stopped.
///
/// # Safety
///
/// `s` a live handle; `buf` writable for `cap` bytes (NULL when `cap` is 0); `out_status_kind`
/// and `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_service_wait(
    s: *mut emf_service_t,
    task_id: u64,
    timeout_ms: u32,
    out_status_kind: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_status_kind, "out_status_kind")?;
        require_out(out_len, "out_len")?;
        check_buf(buf, cap)?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(s) }?;
        let mut fut = {
            let mut f = st.futures();
            let Some(slot) = f.slots.get_mut(&task_id) else {
                return Err(FfiError::new(
                    EMF_ERR_NOT_FOUND,
                    format!(
                        "task {task_id}: not submitted through this service, or its outcome \
                         was taken"
                    ),
                ));
            };
            match std::mem::replace(slot, Slot::Waiting) {
                Slot::Pending(fut) => fut,
                Slot::Waiting => {
                    return Err(FfiError::new(
                        EMF_ERR_BUSY,
                        format!("task {task_id}: another thread waits for it"),
                    ))
                }
                Slot::Ready(o) => {
                    // SAFETY: outs checked non-NULL; buffers by contract.
                    let r = unsafe { put_outcome(&o, out_status_kind, buf, cap, out_len) };
                    if r.is_ok() {
                        f.slots.remove(&task_id);
                    } else {
                        f.slots.insert(task_id, Slot::Ready(o));
                    }
                    return r;
                }
            }
        };
        // Waits without the handle's lock: other threads submit and wait meanwhile.
        let r = fut.wait(ms(timeout_ms));
        let mut f = st.futures();
        match r {
            Ok(o) => {
                // SAFETY: outs checked non-NULL; buffers by contract.
                let r = unsafe { put_outcome(&o, out_status_kind, buf, cap, out_len) };
                if r.is_ok() {
                    f.slots.remove(&task_id);
                } else {
                    f.slots.insert(task_id, Slot::Ready(o));
                }
                r
            }
            Err(e) => {
                f.slots.insert(task_id, Slot::Pending(fut));
                if e.kind() == ErrorKind::Timeout {
                    Err(FfiError::new(
                        EMF_ERR_TIMEOUT,
                        format!("task {task_id}: no outcome yet"),
                    ))
                } else {
                    Err(e.into())
                }
            }
        }
    })
}

/// Takes the oldest outcome no future of this handle waits for — a task accepted by a
/// previous dispatcher of the directory and recovered from its ledger — into `*out_task_id`,
/// `*out_status_kind`, `buf` and `*out_len` as `emf_service_wait` does (also for
/// `EMF_ERR_BUFFER_TOO_SMALL`: the outcome is kept, `*out_task_id` written). `EMF_ERR_EMPTY`
/// when there is none now.
///
/// # Safety
///
/// `s` a live handle; `buf` writable for `cap` bytes (NULL when `cap` is 0); the outs
/// writable.
#[no_mangle]
pub unsafe extern "C" fn emf_service_take_orphan(
    s: *mut emf_service_t,
    out_task_id: *mut u64,
    out_status_kind: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_task_id, "out_task_id")?;
        require_out(out_status_kind, "out_status_kind")?;
        require_out(out_len, "out_len")?;
        check_buf(buf, cap)?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(s) }?;
        let mut f = st.futures();
        let (id, o) = match f.orphan.take() {
            Some(kept) => kept,
            None => match st.service.take_orphan() {
                Some((id, o)) => (id.0, o),
                None => {
                    return Err(FfiError::new(
                        EMF_ERR_EMPTY,
                        "no outcome without a waiter is ready",
                    ))
                }
            },
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_task_id, id, "out_task_id") }?;
        // SAFETY: outs checked non-NULL; buffers by contract.
        let r = unsafe { put_outcome(&o, out_status_kind, buf, cap, out_len) };
        if r.is_err() {
            f.orphan = Some((id, o));
        }
        r
    })
}

/// Writes the service's counters to `*out`.
///
/// # Safety
///
/// `s` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_service_stats(
    s: *mut emf_service_t,
    out: *mut emf_service_stats_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let d = unsafe { borrow(s) }?.service.stats();
        let o = emf_service_stats_t {
            sched: stats_of(&d.sched),
            inboxes: d.agents as u64,
            reports: d.reports,
            bad_reports: d.bad_reports,
            pending_deliveries: d.pending_deliveries as u64,
            deaths: d.deaths,
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, o, "out") }
    })
}

/// Looks agent `agent` up in the service's registry (through its LRU cache; no scheduling lock
/// is taken): its type into `type_buf` with a NUL after it (`*out_type_len`: the length
/// without the NUL), its capacity into `*out_max_tasks` and its process id into `*out_pid`.
/// `EMF_ERR_NOT_FOUND` when no such agent is registered; `EMF_ERR_BUFFER_TOO_SMALL` (nothing
/// copied, `*out_type_len` written) when `type_cap` is below the length + 1.
///
/// # Safety
///
/// `s` a live handle; `agent` a NUL-terminated string; `type_buf` writable for `type_cap`
/// bytes (NULL when 0); the `out_*` pointers writable.
#[no_mangle]
pub unsafe extern "C" fn emf_service_lookup_agent(
    s: *mut emf_service_t,
    agent: *const c_char,
    type_buf: *mut c_char,
    type_cap: usize,
    out_type_len: *mut usize,
    out_max_tasks: *mut u32,
    out_pid: *mut u32,
) -> emf_status_t {
    guard(|| {
        require_out(out_type_len, "out_type_len")?;
        require_out(out_max_tasks, "out_max_tasks")?;
        require_out(out_pid, "out_pid")?;
        if type_buf.is_null() && type_cap > 0 {
            return Err(FfiError::null("type_buf"));
        }
        let id = agent_id(agent, "agent")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let registry = unsafe { borrow(s) }?.service.registry()?;
        let info = registry.lookup(&id)?;
        let ty = info.agent_type.as_str().as_bytes();
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_type_len, ty.len(), "out_type_len") }?;
        if ty.len() >= type_cap {
            return Err(FfiError::new(
                EMF_ERR_BUFFER_TOO_SMALL,
                format!(
                    "agent {id}: its type needs {} bytes with the NUL, the buffer has {type_cap}",
                    ty.len() + 1
                ),
            ));
        }
        // SAFETY: type_buf is writable for type_cap > ty.len() bytes (checked above; non-NULL
        // since type_cap > 0), and does not overlap the registry's string.
        unsafe {
            std::ptr::copy_nonoverlapping(ty.as_ptr(), type_buf.cast::<u8>(), ty.len());
        }
        // SAFETY: in bounds (ty.len() < type_cap).
        let end = unsafe { type_buf.add(ty.len()) };
        // SAFETY: in bounds (above), writable by contract.
        unsafe { end.write(0) };
        let pid = match info.liveness {
            Liveness::Process { pid, .. } => pid,
            Liveness::Token(_) => 0,
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_max_tasks, info.max_tasks, "out_max_tasks") }?;
        // SAFETY: as above.
        unsafe { write_out(out_pid, pid, "out_pid") }
    })
}

// ---- agent -----------------------------------------------------------------------------------

/// Joins the scheduler directory `dir` (NULL: `/dev/shm/emf-sched`) as agent `id` (1-194
/// characters of `A-Z a-z 0-9 . _ -`, not starting with `.`) of type `agent_type`, holding at
/// most `max_tasks` tasks at once (0: 5): creates its inbox, claims its load slot and says
/// hello to the dispatcher. `EMF_ERR_NOT_FOUND` when no dispatcher ever opened `dir`;
/// `EMF_ERR_BUSY` when a live agent already has this id. The agent's liveness is this
/// process: when it dies, its tasks are delivered to other agents.
///
/// # Safety
///
/// `dir` NULL or a NUL-terminated string; `id`, `agent_type` NUL-terminated strings; `out`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn emf_agent_connect(
    dir: *const c_char,
    id: *const c_char,
    agent_type: *const c_char,
    max_tasks: u32,
    out: *mut *mut emf_agent_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let dir = dir_or_default(dir)?;
        let id = agent_id(id, "id")?;
        let ty = self::agent_type(agent_type, "agent_type")?;
        let mut o = AgentOptions::new(dir, id, ty);
        o.max_tasks = if max_tasks == 0 {
            DEFAULT_MAX_TASKS
        } else {
            max_tasks
        };
        let agent = Agent::connect(o)?;
        let h = new_handle::<emf_agent_t>(AgentState {
            agent,
            held: HashMap::new(),
            unfetched: None,
        })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Leaves the directory and frees the agent (NULL is fine): says goodbye, so the dispatcher
/// delivers the tasks it still holds (received, not answered) to other agents.
///
/// # Safety
///
/// No other thread may be using `a`.
#[no_mangle]
pub unsafe extern "C" fn emf_agent_free(a: *mut emf_agent_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(a) })
}

/// Takes the next task, waiting up to `timeout_ms` for one: its id in `*out_task_id`, its
/// attempt (quoted by `emf_agent_complete`/`_fail`) in `*out_attempt`, its payload in `buf`
/// and the payload's length in `*out_len`. The task is then this agent's until it answers
/// it. `EMF_ERR_TIMEOUT` when no task came (the usual answer of an idle agent: call again).
///
/// `EMF_ERR_BUFFER_TOO_SMALL` when the payload does not fit `cap`: `*out_task_id`,
/// `*out_attempt` and `*out_len` (the length needed) are written and the task stays received:
/// the next call hands the same task out again (with a larger buffer), or the agent answers
/// it without its payload (`emf_agent_fail`). Every call records a heartbeat.
///
/// # Safety
///
/// `a` a live handle; `buf` writable for `cap` bytes (NULL when `cap` is 0); the outs
/// writable.
#[no_mangle]
pub unsafe extern "C" fn emf_agent_recv(
    a: *mut emf_agent_t,
    timeout_ms: u32,
    out_task_id: *mut u64,
    out_attempt: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_task_id, "out_task_id")?;
        require_out(out_attempt, "out_attempt")?;
        require_out(out_len, "out_len")?;
        check_buf(buf, cap)?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut h = unsafe { borrow(a) }?;
        let st = &mut *h;
        let key = match st.unfetched {
            Some(k) => k,
            None => match st.agent.recv(ms(timeout_ms))? {
                Some(t) => {
                    let k = (t.id.0, t.attempt);
                    st.held.insert(k, t);
                    k
                }
                None => return Err(FfiError::new(EMF_ERR_TIMEOUT, "no task came")),
            },
        };
        let Some(t) = st.held.get(&key) else {
            // `unfetched` names a held task (both change together): unreachable, but never
            // trusted blindly.
            st.unfetched = None;
            return Err(FfiError::new(EMF_ERR_NOT_FOUND, "the kept task is gone"));
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_task_id, key.0, "out_task_id") }?;
        // SAFETY: as above.
        unsafe { write_out(out_attempt, key.1, "out_attempt") }?;
        // SAFETY: out_len checked non-NULL; buf by contract.
        let r = unsafe { put_bytes(&t.payload, buf, cap, out_len, "payload") };
        st.unfetched = if r.is_err() { Some(key) } else { None };
        r
    })
}

fn take_held(st: &mut AgentState, task: u64, attempt: u32) -> FfiResult<Task> {
    st.held.remove(&(task, attempt)).ok_or_else(|| {
        FfiError::new(
            EMF_ERR_NOT_FOUND,
            format!("task {task} attempt {attempt}: not received by this agent, or answered"),
        )
    })
}

/// Reports attempt `attempt` of task `task_id` (received with `emf_agent_recv`) done with a
/// copy of `result`. `EMF_ERR_NOT_FOUND` when this agent does not hold that attempt (never
/// received, or answered). When the report could not be written (`EMF_ERR_TIMEOUT`: the
/// reports ring stayed full), the task stays held: answer it again, or let its lease expire
/// (it is then delivered again; nothing is lost).
///
/// # Safety
///
/// `a` a live handle; `result` readable for `len`.
#[no_mangle]
pub unsafe extern "C" fn emf_agent_complete(
    a: *mut emf_agent_t,
    task_id: u64,
    attempt: u32,
    result: *const u8,
    len: usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let data = unsafe { bytes(result, len, "result") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut h = unsafe { borrow(a) }?;
        let st = &mut *h;
        let t = take_held(st, task_id, attempt)?;
        if let Err(e) = st.agent.complete(&t, data) {
            st.held.insert((task_id, attempt), t);
            return Err(e.into());
        }
        if st.unfetched == Some((task_id, attempt)) {
            st.unfetched = None;
        }
        Ok(())
    })
}

/// Gives attempt `attempt` of task `task_id` back without a result, for `reason` (NULL: none
/// given): it is delivered again (to another agent when one has room) or dead-lettered after
/// the scheduler's `max_attempts`. Errors as `emf_agent_complete`.
///
/// # Safety
///
/// `a` a live handle; `reason` NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn emf_agent_fail(
    a: *mut emf_agent_t,
    task_id: u64,
    attempt: u32,
    reason: *const c_char,
) -> emf_status_t {
    guard(|| {
        let why = if reason.is_null() {
            "no reason given"
        } else {
            c_str(reason, "reason")?
        };
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut h = unsafe { borrow(a) }?;
        let st = &mut *h;
        let t = take_held(st, task_id, attempt)?;
        if let Err(e) = st.agent.fail(&t, why) {
            st.held.insert((task_id, attempt), t);
            return Err(e.into());
        }
        if st.unfetched == Some((task_id, attempt)) {
            st.unfetched = None;
        }
        Ok(())
    })
}

/// Records a sign of life (every `emf_agent_recv` does; a handler running longer than the
/// scheduler's heartbeat timeout calls this now and then).
///
/// # Safety
///
/// `a` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_agent_heartbeat(a: *mut emf_agent_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        unsafe { borrow(a) }?.agent.heartbeat()?;
        Ok(())
    })
}

/// The number of tasks this agent received and has not answered yet, into `*out`.
///
/// # Safety
///
/// `a` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_agent_held(a: *mut emf_agent_t, out: *mut usize) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let n = unsafe { borrow(a) }?.held.len();
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, n, "out") }
    })
}

#[cfg(test)]
#[allow(clippy::multiple_unsafe_ops_per_block)]
mod tests;

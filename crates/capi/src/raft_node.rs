//! C ABI of an in-process Raft node with the host's own state machine (`emf_raft_node_*`),
//! over `engine::replica::node::{spawn_node, NodeHandle}` (see `crates/core/src/replica/`).
//!
//! `emf_raft_node_start` makes the calling process one node of a cluster over the rings of a
//! cluster directory: its peers may be `erlmcp-flow raft node` processes, other processes'
//! in-process nodes or nodes of the same process. The node runs on a thread of its own
//! (the engine's, not the binding's) and applies committed operations by calling the host's
//! [`emf_raft_sm_t`] callbacks **on that thread**; clients (`emf_raft_client_*`, or
//! `erlmcp-flow raft` commands) submit operations to the cluster and get the host's `apply`
//! result back. `emf_raft_node_stop` stops and joins the thread and reports what ended it;
//! `emf_raft_node_free` does the same and releases the handle.
//!
//! Callback rules (also in the header):
//!
//! * `apply` must be deterministic (the same result and effect on every node for the same
//!   state and operation); an operation it cannot parse is *answered* (an error result in the
//!   host's own encoding), not failed.
//! * A callback returning non-zero (or writing through `emit` wrongly) stops the node at
//!   once: nothing after it is applied or persisted (a restart from the data directory
//!   replays the entry), and `emf_raft_node_stop` returns `EMF_ERR_STOPPED` with a message
//!   naming the callback, the code and the index.
//! * `snapshot` writes the *whole* state; `restore` replaces the state with such bytes (from
//!   this node's data directory at start, or from the leader when the node fell behind) and
//!   must validate them: non-zero refuses them and stops the node.
//! * Callbacks must not unwind (C++ exceptions) into the library, and must not call
//!   `emf_raft_node_stop`/`_free` on their own node (refused with `EMF_ERR_BUSY`).

use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::handle::{borrow, free, new_handle, Handle, Shared};
use super::{
    c_str, emf_status_t, guard, require_out, typed, write_out, FfiError, FfiResult,
    EMF_ERR_BUFFER_TOO_SMALL, EMF_ERR_BUSY, EMF_ERR_INVALID_ARGUMENT, EMF_ERR_STOPPED,
    EMF_ERR_TIMEOUT, EMF_ERR_TOO_LARGE, EMF_ERR_UNSUPPORTED,
};
use engine::raft::StateMachine;
use engine::replica::client::default_client_ids;
use engine::replica::node::{abort_node, spawn_node, NodeHandle, NodeInfo};
use engine::replica::remote_sm::{remote_sm, RemoteSmHost, SmRequest, SmRequestKind};
use engine::replica::{NodeSpec, NodeTransport};
use engine::{Error, ErrorKind, Result};

use super::raft::EMF_RAFT_MAX_NODES;

/// Appends `len` bytes at `data` to the result being written (`emit_ctx` is the value the
/// library passed next to it). May be called any number of times during the callback that
/// received it, never after. Returns 0, or non-zero when the bytes were refused (NULL `data`
/// with `len` > 0, more than `EMF_MAX_INPUT_LEN` in all): the callback then fails.
pub type emf_raft_emit_fn =
    Option<unsafe extern "C" fn(emit_ctx: *mut c_void, data: *const u8, len: usize) -> c_int>;

/// A host's replicated state machine: callbacks called on the node's own thread, one at a
/// time, with the `ctx` given to `emf_raft_node_start`. `apply`, `snapshot` and `restore`
/// return 0 on success; anything else stops the node (see `emf_raft_node_start`). They must
/// not unwind (C++ exceptions) into the library, nor stop or free their own node.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_raft_sm_t {
    /// Applies the operation `op[0..len]` committed at log `index` (several operations
    /// batched in one entry share its index) and writes its result with `emit(emit_ctx, …)`
    /// (nothing written: an empty result). Required.
    pub apply: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            index: u64,
            op: *const u8,
            len: usize,
            emit: emf_raft_emit_fn,
            emit_ctx: *mut c_void,
        ) -> c_int,
    >,
    /// Writes the whole state with `emit(emit_ctx, …)`, for a snapshot. Required.
    pub snapshot: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            emit: emf_raft_emit_fn,
            emit_ctx: *mut c_void,
        ) -> c_int,
    >,
    /// Replaces the state with the snapshot `data[0..len]` (validate it: non-zero refuses
    /// it and stops the node). Required.
    pub restore:
        Option<unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> c_int>,
    /// Answers the read-only query `q[0..len]` from the current state with
    /// `emit(emit_ctx, …)`; non-zero refuses the query (the node goes on). NULL: the node
    /// answers no queries.
    pub query: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            q: *const u8,
            len: usize,
            emit: emf_raft_emit_fn,
            emit_ctx: *mut c_void,
        ) -> c_int,
    >,
}

/// Options of `emf_raft_node_start`; fill with `emf_raft_node_options_default` first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_raft_node_options_t {
    /// This node's id (one of `voters`, not 0).
    pub id: u64,
    /// The cluster's voters (used when the data directory is new); at most
    /// `EMF_RAFT_MAX_NODES`.
    pub voters: *const u64,
    /// How many `voters`.
    pub n_voters: usize,
    /// The durable log's directory (NUL-terminated; created when missing); NULL keeps the
    /// log in memory (a node restarted in memory has forgotten its votes: restart memory
    /// nodes only with the whole cluster).
    pub data_dir: *const c_char,
    /// The cluster's ring directory (NUL-terminated; under `/dev/shm` for speed), shared by
    /// every node and client of the cluster. Required.
    pub ring_dir: *const c_char,
    /// This node's inbox capacity in bytes, a power of two (default 1 MiB).
    pub inbox_capacity: usize,
    /// The client ids whose requests the node accepts; NULL: the defaults
    /// (1000001..=1000008, the ids `emf_raft_client_connect` takes).
    pub clients: *const u64,
    /// How many `clients`.
    pub n_clients: usize,
    /// One Raft tick, ms (default 10; at least 1).
    pub tick_ms: u64,
    /// Ticks without a leader before an election (default 10).
    pub election_tick: u32,
    /// Ticks between heartbeats (default 2; below `election_tick`).
    pub heartbeat_tick: u32,
    /// Applied entries between snapshots (default 10000; 0: never).
    pub snapshot_entries: u64,
}

/// A node's view as of its latest round (`emf_raft_node_info`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_raft_node_info_t {
    /// The node's id.
    pub id: u64,
    /// The leader it knows of (0: none).
    pub leader: u64,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
    /// The index its state machine has applied.
    pub applied: u64,
    /// 1 while the node runs; 0 once stopped or failed (`emf_raft_node_stop` says why).
    pub running: u32,
}

fn info_struct(i: NodeInfo) -> emf_raft_node_info_t {
    emf_raft_node_info_t {
        id: i.id,
        leader: i.leader,
        term: i.term,
        commit: i.commit,
        applied: i.applied,
        running: u32::from(i.running),
    }
}

/// What an `emf_raft_node_t` holds: the running node (taken out by a stop) and its view and
/// the host's failure when it stopped.
pub(crate) struct NodeState {
    id: u64,
    node: Mutex<Option<NodeHandle>>,
    last: Mutex<NodeInfo>,
    failure: Arc<Mutex<Option<String>>>,
    /// The host's end of a node started with `emf_raft_node_start_remote`.
    remote: Option<Remote>,
}

/// The host's end of a remote state machine and the request fetched into a buffer too
/// small (handed out again by the next `emf_raft_node_next_request`).
struct Remote {
    host: RemoteSmHost,
    held: Mutex<Option<SmRequest>>,
}

/// An in-process Raft node running the host's state machine. Opaque; thread-safe.
pub struct emf_raft_node_t {
    _private: (),
}

impl Handle for emf_raft_node_t {
    const KIND: u32 = 19;
    const NAME: &'static str = "raft node";
    type Target = NodeState;
    type Access = Shared;
}

/// The state of one `emit` target: the bytes written so far, or why they were refused.
#[derive(Default)]
struct Emitted {
    bytes: Vec<u8>,
    refused: Option<&'static str>,
}

/// The library's `emit`: appends to the `Emitted` behind `emit_ctx`.
///
/// # Safety
///
/// `emit_ctx` is the `Emitted` the library passed with this function, during the callback
/// it was passed to; `data` readable for `len` bytes when non-NULL.
unsafe extern "C" fn emit(emit_ctx: *mut c_void, data: *const u8, len: usize) -> c_int {
    // Nothing here may unwind across the boundary.
    let r = catch_unwind(AssertUnwindSafe(|| {
        if emit_ctx.is_null() {
            return 1;
        }
        // SAFETY: non-NULL; by contract the live `Emitted` of the running callback, touched by
        // nobody else meanwhile (the library waits in the callback).
        let e = unsafe { &mut *emit_ctx.cast::<Emitted>() };
        if len == 0 {
            return 0;
        }
        if data.is_null() {
            e.refused = Some("emit was given NULL data with a non-zero length");
            return 1;
        }
        if e.bytes.len().saturating_add(len) > super::EMF_MAX_INPUT_LEN {
            e.refused = Some("emit was given more than EMF_MAX_INPUT_LEN bytes in all");
            return 1;
        }
        // SAFETY: non-NULL, readable for `len` bytes by contract.
        e.bytes
            .extend_from_slice(unsafe { std::slice::from_raw_parts(data, len) });
        0
    }));
    r.unwrap_or(1)
}

/// The host's context pointer, used only on the node's thread.
struct Ctx(*mut c_void);

// SAFETY: the host promised (emf_raft_node_start's contract) that `ctx` and the callbacks may
// be used from the node's thread; the library uses them there only, one call at a time.
unsafe impl Send for Ctx {}

/// The host's state machine behind the engine's trait.
struct HostSm {
    id: u64,
    cbs: emf_raft_sm_t,
    ctx: Ctx,
    failure: Arc<Mutex<Option<String>>>,
}

impl HostSm {
    /// Records the failure and stops the node ([`abort_node`]).
    fn fail(&self, what: String) -> ! {
        let msg = format!("raft node {}: {what}", self.id);
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
        abort_node(Error::new(ErrorKind::InvalidArgument, msg))
    }

    /// Runs a callback writing through `emit`: the bytes, or the failure's text.
    fn emitting(
        &self,
        call: impl FnOnce(emf_raft_emit_fn, *mut c_void) -> c_int,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut out = Emitted::default();
        let rc = call(Some(emit), std::ptr::from_mut(&mut out).cast());
        match (rc, out.refused) {
            (0, None) => Ok(out.bytes),
            (_, Some(why)) => Err(why.to_owned()),
            (rc, None) => Err(format!("it returned {rc}")),
        }
    }
}

impl StateMachine for HostSm {
    fn apply(&mut self, index: u64, op: &[u8]) -> Vec<u8> {
        let f = self.cbs.apply.expect("checked at start");
        let ctx = self.ctx.0;
        // SAFETY: the host's callback, called as its contract says: `op` readable for its
        // length during the call, `emit`/`emit_ctx` valid during the call.
        let r = self.emitting(|e, ec| unsafe { f(ctx, index, op.as_ptr(), op.len(), e, ec) });
        r.unwrap_or_else(|why| {
            self.fail(format!("the apply callback failed at index {index}: {why}"))
        })
    }

    fn snapshot(&self) -> Vec<u8> {
        let f = self.cbs.snapshot.expect("checked at start");
        let ctx = self.ctx.0;
        // SAFETY: as in `apply`.
        let r = self.emitting(|e, ec| unsafe { f(ctx, e, ec) });
        r.unwrap_or_else(|why| self.fail(format!("the snapshot callback failed: {why}")))
    }

    fn restore(&mut self, data: &[u8]) -> Result<()> {
        let f = self.cbs.restore.expect("checked at start");
        // SAFETY: as in `apply`: `data` readable for its length during the call.
        let rc = unsafe { f(self.ctx.0, data.as_ptr(), data.len()) };
        if rc == 0 {
            return Ok(());
        }
        let msg = format!(
            "raft node {}: the restore callback refused a snapshot of {} bytes: it returned {rc}",
            self.id,
            data.len()
        );
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
        Err(Error::corrupt(msg))
    }

    fn query(&self, query: &[u8]) -> Result<Vec<u8>> {
        let Some(f) = self.cbs.query else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "raft node {}: the host's state machine answers no queries",
                    self.id
                ),
            ));
        };
        let ctx = self.ctx.0;
        // SAFETY: as in `apply`.
        self.emitting(|e, ec| unsafe { f(ctx, query.as_ptr(), query.len(), e, ec) })
            .map_err(|why| {
                Error::invalid(format!("raft node {}: the query failed: {why}", self.id))
            })
    }
}

fn options_default() -> emf_raft_node_options_t {
    let d = NodeSpec::new(
        0,
        Vec::new(),
        None,
        NodeTransport::Ring {
            dir: PathBuf::new(),
            inbox_capacity: 1 << 20,
            clients: Vec::new(),
        },
    );
    emf_raft_node_options_t {
        id: 0,
        voters: std::ptr::null(),
        n_voters: 0,
        data_dir: std::ptr::null(),
        ring_dir: std::ptr::null(),
        inbox_capacity: 1 << 20,
        clients: std::ptr::null(),
        n_clients: 0,
        tick_ms: d.tick.as_millis() as u64,
        election_tick: d.election_tick as u32,
        heartbeat_tick: d.heartbeat_tick as u32,
        snapshot_entries: d.snapshot_entries,
    }
}

/// The spec of `o`.
///
/// # Safety
///
/// `o`'s pointers as `emf_raft_node_options_t` says.
unsafe fn spec_of(o: &emf_raft_node_options_t) -> FfiResult<NodeSpec> {
    for (n, what) in [(o.n_voters, "voters"), (o.n_clients, "clients")] {
        if n > EMF_RAFT_MAX_NODES {
            return Err(FfiError::new(
                EMF_ERR_TOO_LARGE,
                format!("{n} {what}: at most {EMF_RAFT_MAX_NODES}"),
            ));
        }
    }
    // SAFETY: caller contract.
    let voters = unsafe { typed(o.voters, o.n_voters, "voters") }?.to_vec();
    let clients = if o.clients.is_null() {
        default_client_ids()
    } else {
        // SAFETY: caller contract.
        unsafe { typed(o.clients, o.n_clients, "clients") }?.to_vec()
    };
    let ring_dir = PathBuf::from(c_str(o.ring_dir, "ring_dir")?);
    let data_dir = if o.data_dir.is_null() {
        None
    } else {
        Some(PathBuf::from(c_str(o.data_dir, "data_dir")?))
    };
    if o.tick_ms == 0 || o.election_tick == 0 || o.heartbeat_tick == 0 {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!(
                "tick_ms {}, election_tick {} and heartbeat_tick {} must be positive",
                o.tick_ms, o.election_tick, o.heartbeat_tick
            ),
        ));
    }
    let t = NodeTransport::Ring {
        dir: ring_dir,
        inbox_capacity: o.inbox_capacity,
        clients,
    };
    let mut s = NodeSpec::new(o.id, voters, data_dir, t);
    s.tick = Duration::from_millis(o.tick_ms);
    s.election_tick = o.election_tick as usize;
    s.heartbeat_tick = o.heartbeat_tick as usize;
    s.snapshot_entries = o.snapshot_entries;
    Ok(s)
}

/// Fills `*out` with the defaults: no id, voters or directories (to be set), a 1 MiB inbox,
/// the default client ids, 10 ms ticks, elections after 10 ticks, heartbeats every 2,
/// snapshots every 10000 entries.
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_node_options_default(
    out: *mut emf_raft_node_options_t,
) -> emf_status_t {
    // SAFETY: caller contract (checked non-NULL).
    guard(|| unsafe { write_out(out, options_default(), "out") })
}

/// Starts node `opts->id` of a cluster over the rings of `opts->ring_dir`, with the host's
/// state machine `sm` (copied; `ctx` is passed to every callback), on a thread of the
/// library's own, and returns once its inbox and log are open (a node restarted from
/// `opts->data_dir` has restored its latest snapshot through `sm->restore` by then). Every
/// callback is called on that thread, one at a time, until `emf_raft_node_stop`/`_free`
/// returns: `ctx` must stay valid and usable from that thread until then. A callback
/// returning non-zero stops the node (`emf_raft_node_stop` then returns `EMF_ERR_STOPPED`
/// with the reason). Errors: bad options (`EMF_ERR_INVALID_ARGUMENT`, `EMF_ERR_TOO_LARGE`),
/// a node of that id already running on these rings (`EMF_ERR_BUSY`), the log's I/O and
/// corruption, a snapshot `restore` refused.
///
/// # Safety
///
/// `opts` readable, its pointers as `emf_raft_node_options_t` says; `sm` readable, its
/// callbacks valid functions; `ctx` as above; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_node_start(
    opts: *const emf_raft_node_options_t,
    sm: *const emf_raft_sm_t,
    ctx: *mut c_void,
    out: *mut *mut emf_raft_node_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        if opts.is_null() {
            return Err(FfiError::null("opts"));
        }
        if sm.is_null() {
            return Err(FfiError::null("sm"));
        }
        // SAFETY: readable by contract; plain data, read without alignment assumptions.
        let o = unsafe { opts.read_unaligned() };
        // SAFETY: as above.
        let cbs = unsafe { sm.read_unaligned() };
        for (missing, name) in [
            (cbs.apply.is_none(), "sm->apply"),
            (cbs.snapshot.is_none(), "sm->snapshot"),
            (cbs.restore.is_none(), "sm->restore"),
        ] {
            if missing {
                return Err(FfiError::null(name));
            }
        }
        // SAFETY: caller contract.
        let spec = unsafe { spec_of(&o) }?;
        let failure = Arc::new(Mutex::new(None));
        let host = HostSm {
            id: spec.id,
            cbs,
            ctx: Ctx(ctx),
            failure: failure.clone(),
        };
        let id = spec.id;
        let node = spawn_node(spec, host).map_err(|e| stop_error(e, &failure))?;
        let last = node.info();
        let h = new_handle::<emf_raft_node_t>(NodeState {
            id,
            node: Mutex::new(Some(node)),
            last: Mutex::new(last),
            failure,
            remote: None,
        })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// The status for an error that ended a node: `EMF_ERR_STOPPED` when a host callback failed.
fn stop_error(e: Error, failure: &Mutex<Option<String>>) -> FfiError {
    match failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(msg) => FfiError::new(EMF_ERR_STOPPED, msg),
        None => e.into(),
    }
}

/// Stops the node's thread of `st` and reports what ended it.
fn stop_node(st: &NodeState) -> FfiResult {
    let node = {
        let mut n = st.node.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = n.as_ref() {
            if h.thread_id() == Some(std::thread::current().id()) {
                return Err(FfiError::new(
                    EMF_ERR_BUSY,
                    format!(
                        "raft node {}: stopped from its own callback (the thread would join itself)",
                        st.id
                    ),
                ));
            }
        }
        n.take()
    };
    let Some(node) = node else {
        return Ok(());
    };
    let mut info = node.info();
    // The node's thread may be waiting for an answer the host will not give now.
    if let Some(r) = &st.remote {
        r.host.close();
    }
    let r = node.stop();
    info.running = false;
    *st.last.lock().unwrap_or_else(|p| p.into_inner()) = info;
    if let (Err(e), Some(remote)) = (&r, &st.remote) {
        if remote.host.interrupted() {
            // Stopped while waiting for the host: the stop asked for.
            return Ok(());
        }
        if let Some(f) = remote.host.failure() {
            return Err(FfiError::new(EMF_ERR_STOPPED, f.message().to_owned()));
        }
        return Err(e.clone().into());
    }
    r.map_err(|e| stop_error(e, &st.failure))
}

/// Stops the node and joins its thread (no callback runs after this returns); the handle
/// stays valid for `emf_raft_node_info` until freed. Returns what ended the node: `EMF_OK`
/// when it was serving until told to stop, `EMF_ERR_STOPPED` when a callback failed (the
/// message names it), the log's or the transport's error; `EMF_OK` again once stopped.
/// `EMF_ERR_BUSY` from the node's own callback.
///
/// # Safety
///
/// `n` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_node_stop(n: *mut emf_raft_node_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(n) }?;
        stop_node(st)
    })
}

/// Writes the node's view as of its latest round to `*out` (`running` 0 once stopped or
/// failed).
///
/// # Safety
///
/// `n` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_node_info(
    n: *mut emf_raft_node_t,
    out: *mut emf_raft_node_info_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(n) }?;
        let info = match st.node.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(h) => h.info(),
            None => *st.last.lock().unwrap_or_else(|p| p.into_inner()),
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, info_struct(info), "out") }
    })
}

/// Stops the node (as `emf_raft_node_stop`, its error then lost) and releases the handle.
/// NULL is fine; a double free is refused. `EMF_ERR_BUSY` from the node's own callback.
///
/// # Safety
///
/// `n` NULL or a handle; no other thread uses it during or after the call.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_node_free(n: *mut emf_raft_node_t) -> emf_status_t {
    guard(|| {
        if n.is_null() {
            return Ok(());
        }
        {
            // SAFETY: liveness checked by the slab; the caller's contract excludes a
            // concurrent free.
            let st = unsafe { borrow(n) }?;
            if let Err(e) = stop_node(st) {
                if e.status == EMF_ERR_BUSY {
                    return Err(e);
                }
            }
        }
        // SAFETY: caller contract; the slab refuses a double free.
        unsafe { free(n) }
    })
}

/// `emf_raft_request_t.kind`: apply the operation committed at `index` (the bytes) and
/// answer its result.
pub const EMF_RAFT_REQ_APPLY: u32 = 1;
/// `emf_raft_request_t.kind`: answer the whole state, for a snapshot (no bytes).
pub const EMF_RAFT_REQ_SNAPSHOT: u32 = 2;
/// `emf_raft_request_t.kind`: replace the state with the snapshot in the bytes (validate
/// them); answer nothing, or a non-zero status to refuse them (the node stops).
pub const EMF_RAFT_REQ_RESTORE: u32 = 3;
/// `emf_raft_request_t.kind`: answer the read-only query in the bytes (a non-zero status
/// refuses only that query).
pub const EMF_RAFT_REQ_QUERY: u32 = 4;

/// A request of a remote node to its host (`emf_raft_node_next_request`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_raft_request_t {
    /// The request's id, named by `emf_raft_node_reply`.
    pub id: u64,
    /// `EMF_RAFT_REQ_APPLY`, `_SNAPSHOT`, `_RESTORE` or `_QUERY`.
    pub kind: u32,
    /// The log index of an apply (0 otherwise).
    pub index: u64,
}

fn request_struct(r: &SmRequest) -> (emf_raft_request_t, &[u8]) {
    let (kind, index, bytes): (u32, u64, &[u8]) = match &r.kind {
        SmRequestKind::Apply { index, op } => (EMF_RAFT_REQ_APPLY, *index, op.as_slice()),
        SmRequestKind::Snapshot => (EMF_RAFT_REQ_SNAPSHOT, 0, &[][..]),
        SmRequestKind::Restore { data } => (EMF_RAFT_REQ_RESTORE, 0, data.as_slice()),
        SmRequestKind::Query { query } => (EMF_RAFT_REQ_QUERY, 0, query.as_slice()),
    };
    (
        emf_raft_request_t {
            id: r.id,
            kind,
            index,
        },
        bytes,
    )
}

/// Starts node `opts->id` as `emf_raft_node_start` does, with a state machine the host
/// answers *asynchronously* instead of through callbacks: every call the node makes into
/// the machine becomes a request that the host fetches with `emf_raft_node_next_request`
/// and answers with `emf_raft_node_reply`, from any thread, while the node's thread waits.
/// For hosts that cannot be called from a library thread (an Erlang VM). Rules:
///
/// * Requests come one at a time, in the node's order (applies in log order); answer each
///   before fetching the next.
/// * An apply or snapshot answered with a non-zero status, or not within `timeout_ms`
///   (0: 5000), stops the node (`emf_raft_node_stop` returns `EMF_ERR_STOPPED` with the
///   reason): nothing after it is applied or persisted. A query answered so is only refused.
/// * A restore (this node's snapshot at start, or the leader's) is not waited for: the node
///   may ask it while it opens, before this call returns. The next request waits for its
///   answer; a refused restore stops the node before any later request reaches the host.
/// * The node's thread is blocked while the host computes: keep answers quick (a host
///   slower than an election timeout costs its node the leadership).
///
/// Errors as `emf_raft_node_start`'s.
///
/// # Safety
///
/// `opts` readable, its pointers as `emf_raft_node_options_t` says; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_node_start_remote(
    opts: *const emf_raft_node_options_t,
    timeout_ms: u64,
    out: *mut *mut emf_raft_node_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        if opts.is_null() {
            return Err(FfiError::null("opts"));
        }
        // SAFETY: readable by contract; plain data, read without alignment assumptions.
        let o = unsafe { opts.read_unaligned() };
        // SAFETY: caller contract.
        let spec = unsafe { spec_of(&o) }?;
        let id = spec.id;
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        let (sm, host) = remote_sm(id, timeout);
        let node = spawn_node(spec, sm)?;
        let last = node.info();
        let h = new_handle::<emf_raft_node_t>(NodeState {
            id,
            node: Mutex::new(Some(node)),
            last: Mutex::new(last),
            failure: Arc::new(Mutex::new(None)),
            remote: Some(Remote {
                host,
                held: Mutex::new(None),
            }),
        })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

fn remote_of(st: &NodeState) -> FfiResult<&Remote> {
    st.remote.as_ref().ok_or_else(|| {
        FfiError::new(
            EMF_ERR_UNSUPPORTED,
            format!(
                "raft node {}: started with callbacks (emf_raft_node_start), not \
                 emf_raft_node_start_remote: it makes no requests",
                st.id
            ),
        )
    })
}

/// Waits up to `timeout_ms` for the node's next request: writes it to `*out` and its bytes
/// (an apply's operation, a restore's snapshot, a query; none for a snapshot) to
/// `buf[0..cap]` with their length in `*out_len`. Bytes longer than `cap`:
/// `EMF_ERR_BUFFER_TOO_SMALL` with `*out` and `*out_len` (the length needed) written, and the
/// request is kept: the next call hands it out again at once. `EMF_ERR_TIMEOUT` when no
/// request came; `EMF_ERR_CLOSED` once the node has stopped (`emf_raft_node_stop` says why);
/// `EMF_ERR_UNSUPPORTED` for a node started with callbacks. Blocks the calling thread.
///
/// # Safety
///
/// `n` a live handle; `out` and `out_len` writable; `buf` writable for `cap` bytes (NULL
/// only with `cap` 0).
#[no_mangle]
pub unsafe extern "C" fn emf_raft_node_next_request(
    n: *mut emf_raft_node_t,
    timeout_ms: u64,
    out: *mut emf_raft_request_t,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        require_out(out_len, "out_len")?;
        if buf.is_null() && cap > 0 {
            return Err(FfiError::null("buf"));
        }
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(n) }?;
        let remote = remote_of(st)?;
        let mut held = remote.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        // A kept request that timed out meanwhile is not handed out.
        if let Some(r) = &held {
            if !remote.host.awaits(r.id)? {
                held = None;
            }
        }
        let req = match held {
            Some(r) => r,
            None => match remote.host.next(Duration::from_millis(timeout_ms)) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Err(FfiError::new(
                        EMF_ERR_TIMEOUT,
                        format!("raft node {}: no request within {timeout_ms} ms", st.id),
                    ))
                }
                Err(e) => return Err(e.into()),
            },
        };
        let (r, bytes) = request_struct(&req);
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, r, "out") }?;
        // SAFETY: as above.
        unsafe { write_out(out_len, bytes.len(), "out_len") }?;
        if bytes.len() > cap {
            let need = bytes.len();
            *remote.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(req);
            return Err(FfiError::new(
                EMF_ERR_BUFFER_TOO_SMALL,
                format!(
                    "raft node {}: request {} carries {need} bytes, the buffer {cap}: call \
                     again with a buffer of {need} bytes (the request is kept)",
                    st.id, r.id
                ),
            ));
        }
        if !bytes.is_empty() {
            // SAFETY: `buf` writable for `cap` >= len bytes by contract; the regions are
            // distinct (ours is a Rust allocation).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
        }
        Ok(())
    })
}

/// Answers request `id` of the node: `status` 0 with its result in `data[0..len]` (an
/// apply's result, the snapshot's state, nothing for a restore, a query's answer), or a
/// non-zero `status` with a reason in `data[0..len]` (text): the node stops, except for a
/// query (see `emf_raft_node_start_remote`). Errors: `EMF_ERR_NOT_FOUND` for an id not
/// awaiting an answer (timed out, answered, never fetched), `EMF_ERR_CLOSED` once the node
/// has stopped, `EMF_ERR_TOO_LARGE` beyond `EMF_MAX_INPUT_LEN`.
///
/// # Safety
///
/// `n` a live handle; `data` readable for `len` bytes (NULL only with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn emf_raft_node_reply(
    n: *mut emf_raft_node_t,
    id: u64,
    status: c_int,
    data: *const u8,
    len: usize,
) -> emf_status_t {
    guard(|| {
        if len > super::EMF_MAX_INPUT_LEN {
            return Err(FfiError::new(
                EMF_ERR_TOO_LARGE,
                format!("an answer of {len} bytes: at most EMF_MAX_INPUT_LEN"),
            ));
        }
        // SAFETY: caller contract.
        let bytes = unsafe { typed(data, len, "data") }?.to_vec();
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(n) }?;
        let remote = remote_of(st)?;
        let answer = if status == 0 {
            Ok(bytes)
        } else {
            Err(Error::invalid(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&bytes)
            )))
        };
        Ok(remote.host.reply(id, answer)?)
    })
}

#[cfg(test)]
mod tests;

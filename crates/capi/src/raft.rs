//! C ABI of replicated state (`emf_raft_cluster_*`, `emf_raft_client_*`): a local Raft
//! cluster of node processes over rings and a client of a running cluster, over
//! `engine::replica::{LocalCluster, RaftClient}` (see `crates/core/src/replica/`).
//!
//! * `emf_raft_cluster_t` — `emf_raft_cluster_start` starts N `erlmcp-flow raft node`
//!   processes in a directory (the binary from the options, else `EMF_BIN`, else `PATH`) and
//!   waits for a leader: the original `start_cluster(N)`. It submits operations (the
//!   original `submit_operation`, `append_entry`, `wait_committed`), asks for the leader,
//!   term, members and every node's status, runs the replicated key-value store's
//!   set/get/cas, reads (`_read`: a linearizable ReadIndex query, no log entry; a get is
//!   one), moves the leadership (`_transfer_leader`), changes and lists the configuration
//!   (`_change_membership`, `_membership`), and kills and restarts nodes (for tests).
//!   Freeing it stops the nodes.
//! * `emf_raft_client_t` — `emf_raft_client_connect` joins the rings of a cluster already
//!   running (started by another process, or `erlmcp-flow raft node --transport ring`), with
//!   the same submit/wait/leader/status/KV/read/transfer/membership calls.
//!
//! Both handles are one thread at a time (else `EMF_ERR_BUSY`): a call blocks for a Raft
//! round trip (and leader redirects, retries and elections within the client's timeout).
//! Not-leader answers are followed by the engine's client; what reaches C is
//! `EMF_ERR_TIMEOUT` when no leader committed within the timeout.
//!
//! Bytes the cluster answers (a submit's result, a get's value, a cas's previous value) are
//! written into a caller's buffer; when it is too small the call reports
//! `EMF_ERR_BUFFER_TOO_SMALL` with the length needed and every other out-parameter written —
//! the operation *was* applied — and the bytes are kept in the handle until the next call:
//! `emf_raft_cluster_result` / `emf_raft_client_result` hands them out.

use std::ffi::c_char;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::handle::{borrow, free, new_handle, Exclusive, Handle};
use super::ring::emf_slice_t;
use super::{
    bytes, c_str, emf_status_name, emf_status_t, guard, require_out, slices, status_of, typed,
    typed_mut, write_out, FfiError, FfiResult, EMF_ERR_BUFFER_TOO_SMALL, EMF_ERR_CORRUPT,
    EMF_ERR_INVALID_ARGUMENT, EMF_ERR_TOO_LARGE, EMF_OK,
};
use engine::net::ring::RingTransport;
use engine::raft::{KvOp, KvResult, MemberChange};
use engine::replica::client::default_client_ids;
use engine::replica::proto::Status;
use engine::replica::{ClientOptions, ClusterOptions, LocalCluster, RaftClient};

/// The most nodes of a cluster (`emf_raft_cluster_start`, `emf_raft_client_connect`).
pub const EMF_RAFT_MAX_NODES: usize = 64;
/// `emf_raft_member_change_t::kind`: add a voter (or promote a learner).
pub const EMF_RAFT_ADD_VOTER: u32 = 1;
/// `emf_raft_member_change_t::kind`: add a learner (or demote a voter).
pub const EMF_RAFT_ADD_LEARNER: u32 = 2;
/// `emf_raft_member_change_t::kind`: remove a voter or a learner.
pub const EMF_RAFT_REMOVE: u32 = 3;
/// The most changes one `emf_raft_*_change_membership` call carries.
pub const EMF_RAFT_MAX_CHANGES: usize = 64;

/// One membership change (`emf_raft_cluster_change_membership`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_raft_member_change_t {
    /// The node added, promoted, demoted or removed (not 0).
    pub node: u64,
    /// `EMF_RAFT_ADD_VOTER`, `EMF_RAFT_ADD_LEARNER` or `EMF_RAFT_REMOVE`.
    pub kind: u32,
}

/// Options for `emf_raft_cluster_start`; fill with `emf_raft_cluster_options_default` first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_raft_cluster_options_t {
    /// The `erlmcp-flow` binary (NUL-terminated); NULL: `EMF_BIN`, else `erlmcp-flow` in
    /// `PATH`.
    pub bin: *const c_char,
    /// Non-zero: logs in memory (faster; a killed node restarts empty). Default 0: durable
    /// logs in `DIR/node.I`.
    pub memory: u32,
    /// Ticks without a leader before an election (default 10; at least 2).
    pub election_tick: u32,
    /// One Raft tick, ms (default 10; at least 1).
    pub tick_ms: u64,
    /// The longest `emf_raft_cluster_start` waits for a first leader, ms (default 20000).
    pub start_timeout_ms: u32,
    /// The client's options.
    pub client: emf_raft_client_options_t,
}

/// A client's options (`emf_raft_client_connect`, `emf_raft_cluster_options_t::client`);
/// fill with `emf_raft_client_options_default` first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_raft_client_options_t {
    /// The longest one call (submit, wait for a leader) takes, redirects and retries
    /// included, ms (default 10000; at least 1).
    pub timeout_ms: u32,
    /// The longest one node is waited for before another is tried, ms (default 500; at
    /// least 1).
    pub attempt_timeout_ms: u32,
}

/// One node's status (`emf_raft_cluster_status`, `emf_raft_client_status`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_raft_status_t {
    /// The node's id.
    pub id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
    /// Its applied index.
    pub applied: u64,
    /// How many voters its configuration has.
    pub voters: u64,
}

/// What an `emf_raft_cluster_t` holds: the cluster and the bytes of the last answer that did
/// not fit the caller's buffer.
pub(crate) struct ClusterState {
    cluster: LocalCluster,
    kept: Vec<u8>,
}

/// A local Raft cluster: N node processes and a client. Opaque; one thread at a time (else
/// `EMF_ERR_BUSY`).
pub struct emf_raft_cluster_t {
    _private: (),
}

impl Handle for emf_raft_cluster_t {
    const KIND: u32 = 17;
    const NAME: &'static str = "raft cluster";
    type Target = ClusterState;
    type Access = Exclusive;
}

/// What an `emf_raft_client_t` holds: the client and the bytes kept as in [`ClusterState`].
pub(crate) struct ClientState {
    client: RaftClient<RingTransport>,
    kept: Vec<u8>,
}

/// A client of a running Raft cluster. Opaque; one thread at a time (else `EMF_ERR_BUSY`).
pub struct emf_raft_client_t {
    _private: (),
}

impl Handle for emf_raft_client_t {
    const KIND: u32 = 18;
    const NAME: &'static str = "raft client";
    type Target = ClientState;
    type Access = Exclusive;
}

/// The two handles' way to their client and kept bytes, so that one implementation serves
/// both (arguments are checked before the handle is entered).
pub(crate) trait RaftHandle: Handle<Access = Exclusive> {
    /// The client and the kept bytes of the object behind the handle.
    fn parts(t: &mut Self::Target) -> (&mut RaftClient<RingTransport>, &mut Vec<u8>);
}

impl RaftHandle for emf_raft_cluster_t {
    fn parts(t: &mut ClusterState) -> (&mut RaftClient<RingTransport>, &mut Vec<u8>) {
        (t.cluster.client(), &mut t.kept)
    }
}

impl RaftHandle for emf_raft_client_t {
    fn parts(t: &mut ClientState) -> (&mut RaftClient<RingTransport>, &mut Vec<u8>) {
        (&mut t.client, &mut t.kept)
    }
}

fn client_options_default() -> emf_raft_client_options_t {
    let d = ClientOptions::default();
    emf_raft_client_options_t {
        timeout_ms: millis(d.timeout),
        attempt_timeout_ms: millis(d.attempt_timeout),
    }
}

fn cluster_options_default() -> emf_raft_cluster_options_t {
    let d = ClusterOptions::default();
    emf_raft_cluster_options_t {
        bin: std::ptr::null(),
        memory: u32::from(d.memory),
        election_tick: u32::try_from(d.election_tick).unwrap_or(u32::MAX),
        tick_ms: d.tick_ms,
        start_timeout_ms: millis(d.start_timeout),
        client: client_options_default(),
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn positive_ms(v: u64, name: &str) -> FfiResult<Duration> {
    if v == 0 {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("`{name}` must be at least 1 ms"),
        ));
    }
    Ok(Duration::from_millis(v))
}

fn client_options_of(o: &emf_raft_client_options_t) -> FfiResult<ClientOptions> {
    Ok(ClientOptions {
        timeout: positive_ms(o.timeout_ms.into(), "timeout_ms")?,
        attempt_timeout: positive_ms(o.attempt_timeout_ms.into(), "attempt_timeout_ms")?,
        ..ClientOptions::default()
    })
}

fn cluster_options_of(o: &emf_raft_cluster_options_t) -> FfiResult<ClusterOptions> {
    let bin = if o.bin.is_null() {
        None
    } else {
        Some(PathBuf::from(c_str(o.bin, "bin")?))
    };
    if o.election_tick < 2 {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("`election_tick` {} must be at least 2", o.election_tick),
        ));
    }
    Ok(ClusterOptions {
        bin,
        memory: o.memory != 0,
        tick_ms: positive_ms(o.tick_ms, "tick_ms")?.as_millis() as u64,
        election_tick: o.election_tick as usize,
        start_timeout: positive_ms(o.start_timeout_ms.into(), "start_timeout_ms")?,
        client: client_options_of(&o.client)?,
    })
}

fn check_buf(buf: *mut u8, cap: usize) -> FfiResult {
    if buf.is_null() && cap > 0 {
        return Err(FfiError::null("buf"));
    }
    Ok(())
}

/// Writes `data` (when it fits) and its length; else keeps it in `kept` for the `_result`
/// call and reports the length needed.
///
/// # Safety
///
/// `buf` writable for `cap` bytes when non-NULL (NULL only with `cap` 0: [`check_buf`]);
/// `out_len` writable and non-NULL.
unsafe fn put_answer(
    kept: &mut Vec<u8>,
    data: Vec<u8>,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
    what: &str,
) -> FfiResult {
    // SAFETY: non-NULL (checked by the callers) and writable by contract.
    unsafe { write_out(out_len, data.len(), "out_len") }?;
    if data.len() > cap {
        let n = data.len();
        *kept = data;
        return Err(FfiError::new(
            EMF_ERR_BUFFER_TOO_SMALL,
            format!(
                "the {what} is {n} bytes, the buffer {cap}: the operation was applied; take \
                 the bytes with the handle's _result call and a buffer of {n} bytes"
            ),
        ));
    }
    if !data.is_empty() {
        // SAFETY: `buf` is non-NULL (cap ≥ len > 0 and NULL is refused with cap > 0),
        // writable for cap ≥ len bytes; `data` is ours, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
    }
    Ok(())
}

// ---- the calls both handles make, over the engine's client ----------------------------------
//
// Each checks its arguments first, then enters the handle ([`with`]). Safety of all: the
// pointers as the extern functions' contracts say.

/// `submit`: index and result.
///
/// # Safety
///
/// As `emf_raft_cluster_submit`.
unsafe fn do_submit<H: RaftHandle>(
    h: *mut H,
    op: *const u8,
    len: usize,
    out_index: *mut u64,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> FfiResult {
    require_out(out_index, "out_index")?;
    require_out(out_len, "out_len")?;
    check_buf(buf, cap)?;
    // SAFETY: caller contract.
    let op = unsafe { bytes(op, len, "op") }?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, kept) = H::parts(&mut st);
    let c = client.submit(op)?;
    // SAFETY: checked non-NULL; writable by contract.
    unsafe { write_out(out_index, c.index, "out_index") }?;
    // SAFETY: checked above; buffers by contract.
    unsafe { put_answer(kept, c.result, buf, cap, out_len, "result") }
}

/// `read`: the read index and the query's answer.
///
/// # Safety
///
/// As `emf_raft_cluster_read`.
unsafe fn do_read<H: RaftHandle>(
    h: *mut H,
    query: *const u8,
    len: usize,
    out_index: *mut u64,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> FfiResult {
    require_out(out_len, "out_len")?;
    check_buf(buf, cap)?;
    // SAFETY: caller contract.
    let q = unsafe { bytes(query, len, "query") }?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, kept) = H::parts(&mut st);
    let c = client.read(q)?;
    put_index(out_index, c.index)?;
    // SAFETY: checked above; buffers by contract.
    unsafe { put_answer(kept, c.result, buf, cap, out_len, "answer") }
}

/// `transfer_leader`: the new term.
///
/// # Safety
///
/// As `emf_raft_cluster_transfer_leader`.
unsafe fn do_transfer<H: RaftHandle>(h: *mut H, to: u64, out_term: *mut u64) -> FfiResult {
    if to == 0 {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            "raft: node 0 cannot lead (ids start at 1)",
        ));
    }
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, _) = H::parts(&mut st);
    let term = client.transfer_leader(to)?;
    if !out_term.is_null() {
        // SAFETY: non-NULL; writable by contract.
        unsafe { write_out(out_term, term, "out_term") }?;
    }
    Ok(())
}

/// `change_membership`: the index of the change.
///
/// # Safety
///
/// As `emf_raft_cluster_change_membership`.
unsafe fn do_change_membership<H: RaftHandle>(
    h: *mut H,
    changes: *const emf_raft_member_change_t,
    n: usize,
    out_index: *mut u64,
) -> FfiResult {
    // SAFETY: caller contract.
    let cs = unsafe { typed(changes, n, "changes") }?;
    if cs.is_empty() || cs.len() > EMF_RAFT_MAX_CHANGES {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!(
                "raft: 1 to {EMF_RAFT_MAX_CHANGES} membership changes, not {}",
                cs.len()
            ),
        ));
    }
    let mut list = Vec::with_capacity(cs.len());
    for (i, c) in cs.iter().enumerate() {
        list.push(match c.kind {
            EMF_RAFT_ADD_VOTER => MemberChange::AddVoter(c.node),
            EMF_RAFT_ADD_LEARNER => MemberChange::AddLearner(c.node),
            EMF_RAFT_REMOVE => MemberChange::Remove(c.node),
            k => {
                return Err(FfiError::new(
                    EMF_ERR_INVALID_ARGUMENT,
                    format!(
                        "raft: change {i} has kind {k} (EMF_RAFT_ADD_VOTER 1, \
                         EMF_RAFT_ADD_LEARNER 2, EMF_RAFT_REMOVE 3)"
                    ),
                ))
            }
        });
    }
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, _) = H::parts(&mut st);
    let index = client.change_membership(&list)?;
    put_index(out_index, index)
}

/// `membership`: voters then learners into `ids`.
///
/// # Safety
///
/// As `emf_raft_cluster_membership`.
unsafe fn do_membership<H: RaftHandle>(
    h: *mut H,
    ids: *mut u64,
    cap: usize,
    out_voters: *mut usize,
    out_learners: *mut usize,
    out_joint: *mut u32,
) -> FfiResult {
    require_out(out_voters, "out_voters")?;
    require_out(out_learners, "out_learners")?;
    // SAFETY: caller contract.
    let ids = unsafe { typed_mut(ids, cap, "ids") }?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, _) = H::parts(&mut st);
    let m = client.membership()?;
    let (nv, nl) = (m.voters.len(), m.learners.len());
    // SAFETY: checked non-NULL; writable by contract.
    unsafe { write_out(out_voters, nv, "out_voters") }?;
    // SAFETY: checked non-NULL; writable by contract.
    unsafe { write_out(out_learners, nl, "out_learners") }?;
    if !out_joint.is_null() {
        // SAFETY: non-NULL; writable by contract.
        unsafe { write_out(out_joint, u32::from(m.is_joint()), "out_joint") }?;
    }
    if nv + nl > ids.len() {
        return Err(FfiError::new(
            EMF_ERR_BUFFER_TOO_SMALL,
            format!("{nv} voters and {nl} learners, room for {}", ids.len()),
        ));
    }
    ids[..nv].copy_from_slice(&m.voters);
    ids[nv..nv + nl].copy_from_slice(&m.learners);
    Ok(())
}

/// `append_entry`: the index only.
///
/// # Safety
///
/// As `emf_raft_cluster_append_entry`.
unsafe fn do_append<H: RaftHandle>(
    h: *mut H,
    entry: *const u8,
    len: usize,
    out_index: *mut u64,
) -> FfiResult {
    require_out(out_index, "out_index")?;
    // SAFETY: caller contract.
    let e = unsafe { bytes(entry, len, "entry") }?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, _) = H::parts(&mut st);
    let c = client.submit(e)?;
    // SAFETY: checked non-NULL; writable by contract.
    unsafe { write_out(out_index, c.index, "out_index") }
}

/// `submit_many`: every operation's index and status.
///
/// # Safety
///
/// As `emf_raft_cluster_submit_many`.
unsafe fn do_submit_many<H: RaftHandle>(
    h: *mut H,
    ops: *const emf_slice_t,
    n: usize,
    window: u32,
    out_indexes: *mut u64,
    out_status: *mut emf_status_t,
) -> FfiResult {
    // SAFETY: caller contract.
    let ops = unsafe { slices(ops, n) }?;
    // SAFETY: caller contract (writable for n values; NULL only with n 0).
    let indexes = unsafe { typed_mut(out_indexes, n, "out_indexes") }?;
    // SAFETY: as above.
    let statuses = unsafe { typed_mut(out_status, n, "out_status") }?;
    if window == 0 {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            "window must be at least 1 (operations in flight at once)",
        ));
    }
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, _) = H::parts(&mut st);
    let results = client.submit_many(&ops, window as usize)?;
    let mut first: Option<(usize, FfiError)> = None;
    let mut failed = 0usize;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(c) => {
                indexes[i] = c.index;
                statuses[i] = EMF_OK;
            }
            Err(e) => {
                indexes[i] = 0;
                let fe = FfiError::from(e);
                statuses[i] = fe.status;
                failed += 1;
                first.get_or_insert((i, fe));
            }
        }
    }
    match first {
        None => Ok(()),
        Some((i, e)) => Err(FfiError::new(
            e.status,
            format!(
                "{failed} of {n} operations failed (see out_status); the first, operation \
                 {i}: {}",
                e.message
            ),
        )),
    }
}

/// # Safety
///
/// As `emf_raft_cluster_wait_committed`.
unsafe fn do_wait<H: RaftHandle>(
    h: *mut H,
    index: u64,
    timeout_ms: u32,
    out_applied: *mut u64,
) -> FfiResult {
    require_out(out_applied, "out_applied")?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, _) = H::parts(&mut st);
    let applied = client.wait_committed(index, Duration::from_millis(u64::from(timeout_ms)))?;
    // SAFETY: checked non-NULL; writable by contract.
    unsafe { write_out(out_applied, applied, "out_applied") }
}

/// # Safety
///
/// As `emf_raft_cluster_leader`.
unsafe fn do_leader<H: RaftHandle>(
    h: *mut H,
    out_leader: *mut u64,
    out_term: *mut u64,
) -> FfiResult {
    if out_leader.is_null() && out_term.is_null() {
        return Err(FfiError::null("out_leader` and `out_term"));
    }
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, _) = H::parts(&mut st);
    let (leader, term) = client.leader()?;
    if !out_leader.is_null() {
        // SAFETY: non-NULL; writable by contract.
        unsafe { write_out(out_leader, leader, "out_leader") }?;
    }
    if !out_term.is_null() {
        // SAFETY: non-NULL; writable by contract.
        unsafe { write_out(out_term, term, "out_term") }?;
    }
    Ok(())
}

/// Writes a log index through an optional out-pointer.
fn put_index(out_index: *mut u64, index: u64) -> FfiResult {
    if !out_index.is_null() {
        // SAFETY: non-NULL; writable by the extern functions' contracts.
        unsafe { write_out(out_index, index, "out_index") }?;
    }
    Ok(())
}

fn status_struct(s: &Status) -> emf_raft_status_t {
    emf_raft_status_t {
        id: s.id,
        leader: s.leader,
        term: s.term,
        commit: s.commit,
        applied: s.applied,
        voters: s.voters.len() as u64,
    }
}

/// # Safety
///
/// As `emf_raft_cluster_status`.
unsafe fn do_status<H: RaftHandle>(h: *mut H, node: u64, out: *mut emf_raft_status_t) -> FfiResult {
    require_out(out, "out")?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, _) = H::parts(&mut st);
    let s = client.status(node)?;
    // SAFETY: checked non-NULL; writable by contract.
    unsafe { write_out(out, status_struct(&s), "out") }
}

/// The text of `emf_raft_*_stats`: a line per node (see `emf_raft_cluster_stats`).
fn stats_text(client: &mut RaftClient<RingTransport>) -> Vec<u8> {
    let mut t = String::new();
    for (id, r) in client.statuses() {
        match r {
            Ok(s) => {
                let voters: Vec<String> = s.voters.iter().map(u64::to_string).collect();
                let _ = write!(
                    t,
                    "node={id} leader={} term={} commit={} applied={} voters={}",
                    s.leader,
                    s.term,
                    s.commit,
                    s.applied,
                    voters.join(",")
                );
                for (name, v) in &s.stats {
                    let _ = write!(t, " {name}={v}");
                }
            }
            Err(e) => {
                let code = status_of(e.kind());
                // SAFETY: emf_status_name returns a static NUL-terminated string.
                let name = unsafe { std::ffi::CStr::from_ptr(emf_status_name(code)) };
                let msg = e.message().replace('\n', " ");
                let _ = write!(t, "node={id} error={} {msg}", name.to_string_lossy());
            }
        }
        t.push('\n');
    }
    t.into_bytes()
}

/// # Safety
///
/// As `emf_raft_cluster_stats`.
unsafe fn do_stats<H: RaftHandle>(
    h: *mut H,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> FfiResult {
    require_out(out_len, "out_len")?;
    check_buf(buf, cap)?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, kept) = H::parts(&mut st);
    let t = stats_text(client);
    // SAFETY: checked above; buffers by contract.
    unsafe { put_answer(kept, t, buf, cap, out_len, "stats text") }
}

/// # Safety
///
/// As `emf_raft_cluster_set`.
unsafe fn do_set<H: RaftHandle>(
    h: *mut H,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    out_index: *mut u64,
) -> FfiResult {
    // SAFETY: caller contract.
    let k = unsafe { bytes(key, key_len, "key") }?;
    // SAFETY: caller contract.
    let v = unsafe { bytes(value, value_len, "value") }?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, _) = H::parts(&mut st);
    let index = client.set(k, v)?;
    put_index(out_index, index)
}

/// # Safety
///
/// As `emf_raft_cluster_get`.
#[allow(clippy::too_many_arguments)]
unsafe fn do_get<H: RaftHandle>(
    h: *mut H,
    key: *const u8,
    key_len: usize,
    out_index: *mut u64,
    out_found: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> FfiResult {
    require_out(out_found, "out_found")?;
    require_out(out_len, "out_len")?;
    check_buf(buf, cap)?;
    // SAFETY: caller contract.
    let k = unsafe { bytes(key, key_len, "key") }?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, kept) = H::parts(&mut st);
    let c = client.read(&KvOp::Get { key: k.to_vec() }.encode())?;
    let index = c.index;
    let r = KvResult::decode(&c.result).ok_or_else(|| {
        FfiError::new(
            EMF_ERR_CORRUPT,
            format!(
                "raft: node {} answered a get with bytes that are not a KV result",
                c.node
            ),
        )
    })?;
    let KvResult::Value(v) = r else {
        return Err(FfiError::new(
            EMF_ERR_CORRUPT,
            format!("raft: a get answered {r:?}"),
        ));
    };
    put_index(out_index, index)?;
    // SAFETY: checked non-NULL; writable by contract.
    unsafe { write_out(out_found, u32::from(v.is_some()), "out_found") }?;
    // SAFETY: checked above; buffers by contract.
    unsafe { put_answer(kept, v.unwrap_or_default(), buf, cap, out_len, "value") }
}

/// # Safety
///
/// As `emf_raft_cluster_cas`.
#[allow(clippy::too_many_arguments)]
unsafe fn do_cas<H: RaftHandle>(
    h: *mut H,
    key: *const u8,
    key_len: usize,
    out_index: *mut u64,
    has_expected: u32,
    expected: *const u8,
    expected_len: usize,
    new: *const u8,
    new_len: usize,
    out_swapped: *mut u32,
    out_had_previous: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> FfiResult {
    require_out(out_swapped, "out_swapped")?;
    require_out(out_had_previous, "out_had_previous")?;
    require_out(out_len, "out_len")?;
    check_buf(buf, cap)?;
    // SAFETY: caller contract.
    let k = unsafe { bytes(key, key_len, "key") }?;
    // SAFETY: caller contract.
    let e = unsafe { bytes(expected, expected_len, "expected") }?;
    if has_expected == 0 && !e.is_empty() {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            "`expected` bytes given with `has_expected` 0 (expecting no value)",
        ));
    }
    // SAFETY: caller contract.
    let n = unsafe { bytes(new, new_len, "new") }?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (client, kept) = H::parts(&mut st);
    let op = KvOp::Cas {
        key: k.to_vec(),
        expected: (has_expected != 0).then(|| e.to_vec()),
        new: n.to_vec(),
    };
    let (index, r) = client.kv(&op)?;
    let KvResult::Cas { swapped, previous } = r else {
        return Err(FfiError::new(
            EMF_ERR_CORRUPT,
            format!("raft: a cas answered {r:?}"),
        ));
    };
    put_index(out_index, index)?;
    // SAFETY: checked non-NULL; writable by contract.
    unsafe { write_out(out_swapped, u32::from(swapped), "out_swapped") }?;
    let had = u32::from(previous.is_some());
    // SAFETY: checked non-NULL; writable by contract.
    unsafe { write_out(out_had_previous, had, "out_had_previous") }?;
    let prev = previous.unwrap_or_default();
    // SAFETY: checked above; buffers by contract.
    unsafe { put_answer(kept, prev, buf, cap, out_len, "previous value") }
}

/// # Safety
///
/// As `emf_raft_cluster_result`.
unsafe fn do_result<H: RaftHandle>(
    h: *mut H,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> FfiResult {
    require_out(out_len, "out_len")?;
    check_buf(buf, cap)?;
    // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
    let mut st = unsafe { borrow(h) }?;
    let (_, kept) = H::parts(&mut st);
    let data = std::mem::take(kept);
    // SAFETY: checked above; buffers by contract.
    unsafe { put_answer(kept, data, buf, cap, out_len, "kept answer") }
}

// ---- options ---------------------------------------------------------------------------------

/// Fills `*out` with the default cluster options (durable logs, 10 ms ticks, elections after
/// 10 ticks, 20 s for a first leader, the client's defaults).
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_options_default(
    out: *mut emf_raft_cluster_options_t,
) -> emf_status_t {
    // SAFETY: writable by contract (NULL checked inside).
    guard(|| unsafe { write_out(out, cluster_options_default(), "out") })
}

/// Fills `*out` with the default client options (10 s per call, 500 ms per node).
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_options_default(
    out: *mut emf_raft_client_options_t,
) -> emf_status_t {
    // SAFETY: writable by contract (NULL checked inside).
    guard(|| unsafe { write_out(out, client_options_default(), "out") })
}

// ---- cluster ---------------------------------------------------------------------------------

/// Starts a local cluster of `n` nodes (1 to `EMF_RAFT_MAX_NODES`; ids `1..=n`) in the
/// directory `dir` (created if needed; `dir/net` holds the rings — put it under `/dev/shm`
/// for speed — `dir/node.I` the logs, `dir/node.I.log` each node's standard error) with
/// options `opts` (NULL: the defaults), and waits until they have elected a leader.
/// `EMF_ERR_IO` when the binary cannot be started (set `bin` or `EMF_BIN`);
/// `EMF_ERR_CLOSED` when a node exits by itself (the message quotes its log);
/// `EMF_ERR_TIMEOUT` when no leader is elected within `start_timeout_ms`. The directory is
/// not removed by `emf_raft_cluster_free`.
///
/// # Safety
///
/// `dir` a NUL-terminated string; `opts` NULL or readable (its `bin` NULL or a
/// NUL-terminated string); `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_start(
    n: u32,
    dir: *const c_char,
    opts: *const emf_raft_cluster_options_t,
    out: *mut *mut emf_raft_cluster_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let dir = c_str(dir, "dir")?;
        if dir.is_empty() {
            return Err(FfiError::new(EMF_ERR_INVALID_ARGUMENT, "`dir` is empty"));
        }
        if n == 0 {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                "a cluster of 0 nodes: `n` must be at least 1",
            ));
        }
        if n as usize > EMF_RAFT_MAX_NODES {
            return Err(FfiError::new(
                EMF_ERR_TOO_LARGE,
                format!("a cluster of {n} nodes: at most {EMF_RAFT_MAX_NODES}"),
            ));
        }
        let o = if opts.is_null() {
            cluster_options_default()
        } else {
            // SAFETY: readable by contract; plain data, read without alignment assumptions.
            unsafe { opts.read_unaligned() }
        };
        let o = cluster_options_of(&o)?;
        let cluster = LocalCluster::start(n as usize, Path::new(dir), o)?;
        let h = new_handle::<emf_raft_cluster_t>(ClusterState {
            cluster,
            kept: Vec::new(),
        })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Stops the nodes (SIGTERM, then SIGKILL after 2 s; all are reaped) and frees the handle
/// (NULL is fine). The directory stays.
///
/// # Safety
///
/// No other thread may be using `c`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_free(c: *mut emf_raft_cluster_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(c) })
}

/// Stops every node as `emf_raft_cluster_free` does but keeps the handle: calls then time
/// out until nodes are started again with `emf_raft_cluster_restart`.
///
/// # Safety
///
/// `c` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_stop(c: *mut emf_raft_cluster_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut st = unsafe { borrow(c) }?;
        st.cluster.stop();
        Ok(())
    })
}

/// Replicates `op` (`len` bytes, opaque; the nodes run the key-value store, whose result for
/// bytes that are not one of its operations is its `Invalid` answer — the entry is logged and
/// committed all the same) and waits
/// until it is applied: `*out_index` is its log index (the original `submit_operation(Op)
/// -> {ok, Index}`), the state machine's result goes to `buf` and its length to `*out_len`
/// (`EMF_ERR_BUFFER_TOO_SMALL`: see the module rules; `buf` may be NULL with `cap` 0).
/// Redirects to the leader and retries during an election are the client's; `EMF_ERR_TIMEOUT`
/// when nothing committed within the client's timeout (the operation may or may not be
/// applied then: Raft cannot tell an unanswered request from a lost one).
///
/// # Safety
///
/// `c` a live handle; `op` readable for `len`; `buf` writable for `cap`; `out_index` and
/// `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_submit(
    c: *mut emf_raft_cluster_t,
    op: *const u8,
    len: usize,
    out_index: *mut u64,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_submit(c, op, len, out_index, buf, cap, out_len) }
    })
}

/// Appends `entry` to the replicated log and waits until it is committed and applied:
/// `*out_index` is its index (the original `append_entry(Entry)`; entries proposed together
/// by any clients are batched by the leader). Errors as `emf_raft_cluster_submit`.
///
/// # Safety
///
/// `c` a live handle; `entry` readable for `len`; `out_index` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_append_entry(
    c: *mut emf_raft_cluster_t,
    entry: *const u8,
    len: usize,
    out_index: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_append(c, entry, len, out_index) }
    })
}

/// Submits `n` operations with up to `window` of them in flight at once and waits until
/// each has an answer (at most the client's timeout in all): the hosts' pipelined submit —
/// one call commits many operations in a few round trips, batched by the leader, where
/// `emf_raft_cluster_submit` waits for each. `out_indexes[i]` is operation `i`'s log index
/// (0 when it failed) and `out_status[i]` its status (`EMF_OK`, `EMF_ERR_TIMEOUT`: it may yet
/// commit, ...); the state machine's results are not returned (submit one at a time for
/// them). Returns `EMF_OK` when every operation committed, else the first failure's status
/// with a message naming it. Each operation is at-least-once, as with a single submit.
///
/// # Safety
///
/// `c` a live handle; `ops` readable for `n` slices, each readable for its length;
/// `out_indexes` and `out_status` writable for `n` values.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_submit_many(
    c: *mut emf_raft_cluster_t,
    ops: *const emf_slice_t,
    n: usize,
    window: u32,
    out_indexes: *mut u64,
    out_status: *mut emf_status_t,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_submit_many(c, ops, n, window, out_indexes, out_status) }
    })
}

/// Hands out the bytes kept by the last call that reported `EMF_ERR_BUFFER_TOO_SMALL` (a
/// result, value or stats text) and forgets them; `*out_len` 0 when none are kept. Too small
/// again: kept again.
///
/// # Safety
///
/// `c` a live handle; `buf` writable for `cap`; `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_result(
    c: *mut emf_raft_cluster_t,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_result(c, buf, cap, out_len) }
    })
}

/// Waits up to `timeout_ms` until the leader has applied log index `index`: `*out_applied`
/// is its applied index (≥ `index`). `EMF_ERR_TIMEOUT` when it has not.
///
/// # Safety
///
/// `c` a live handle; `out_applied` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_wait_committed(
    c: *mut emf_raft_cluster_t,
    index: u64,
    timeout_ms: u32,
    out_applied: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_wait(c, index, timeout_ms, out_applied) }
    })
}

/// The current leader's id and term, asked of the nodes (waits, within the client's timeout,
/// for an election under way; `EMF_ERR_TIMEOUT` when none ends). Either out-pointer may be
/// NULL, not both.
///
/// # Safety
///
/// `c` a live handle; `out_leader` and `out_term` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_leader(
    c: *mut emf_raft_cluster_t,
    out_leader: *mut u64,
    out_term: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_leader(c, out_leader, out_term) }
    })
}

/// The node ids (`1..=n`) into `ids` (room for `cap`), their count in `*out_n`;
/// `EMF_ERR_BUFFER_TOO_SMALL` (with `*out_n` written) when `cap` is smaller.
///
/// # Safety
///
/// `c` a live handle; `ids` writable for `cap` values (NULL with 0); `out_n` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_members(
    c: *mut emf_raft_cluster_t,
    ids: *mut u64,
    cap: usize,
    out_n: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_n, "out_n")?;
        // SAFETY: caller contract.
        let ids = unsafe { typed_mut(ids, cap, "ids") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(c) }?;
        let m = st.cluster.members();
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_n, m.len(), "out_n") }?;
        if m.len() > ids.len() {
            return Err(FfiError::new(
                EMF_ERR_BUFFER_TOO_SMALL,
                format!("{} members, room for {}", m.len(), ids.len()),
            ));
        }
        ids[..m.len()].copy_from_slice(m);
        Ok(())
    })
}

/// Node `node`'s status (asked of it: `EMF_ERR_TIMEOUT` when it does not answer within the
/// client's attempt timeout, e.g. killed).
///
/// # Safety
///
/// `c` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_status(
    c: *mut emf_raft_cluster_t,
    node: u64,
    out: *mut emf_raft_status_t,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_status(c, node, out) }
    })
}

/// Every node's status and counters as text (UTF-8, not NUL-terminated), one line per node:
/// `node=I leader=L term=T commit=C applied=A voters=1,2,3 NAME=VALUE ...` (the counters the
/// node reports, names `[a-z_]+`), or `node=I error=EMF_ERR_... MESSAGE` for a node that did
/// not answer. `EMF_ERR_BUFFER_TOO_SMALL`: the text is kept (`emf_raft_cluster_result`).
///
/// # Safety
///
/// `c` a live handle; `buf` writable for `cap`; `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_stats(
    c: *mut emf_raft_cluster_t,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_stats(c, buf, cap, out_len) }
    })
}

/// A linearizable read: the leader confirms with a quorum that it still leads (ReadIndex; no
/// log entry is written) and answers `query` from its applied state (for the key-value store
/// the nodes run, an encoded get: `emf_raft_cluster_get` is the easy way). `*out_index` (may be
/// NULL) is the read index; the answer goes to `buf`, its length to `*out_len`
/// (`EMF_ERR_BUFFER_TOO_SMALL`: kept for `emf_raft_cluster_result`). A query the state machine
/// refuses is `EMF_ERR_INVALID_ARGUMENT` with the reason; `EMF_ERR_TIMEOUT` when no leader
/// answered within the client's timeout.
///
/// # Safety
///
/// `c` a live handle; `query` readable for `len`; `buf` writable for `cap`; `out_index` NULL or
/// writable; `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_read(
    c: *mut emf_raft_cluster_t,
    query: *const u8,
    len: usize,
    out_index: *mut u64,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_read(c, query, len, out_index, buf, cap, out_len) }
    })
}

/// Hands the leadership to voter `to` and waits until it leads; `*out_term` (may be NULL) is
/// the new term. `EMF_ERR_INVALID_ARGUMENT` for node 0, a learner or a non-member;
/// `EMF_ERR_TIMEOUT` when the transfer did not finish (e.g. `to` is down).
///
/// # Safety
///
/// `c` a live handle; `out_term` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_transfer_leader(
    c: *mut emf_raft_cluster_t,
    to: u64,
    out_term: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_transfer(c, to, out_term) }
    })
}

/// Changes the configuration by joint consensus: `n` (1 to `EMF_RAFT_MAX_CHANGES`) changes made
/// together; returns once the joint configuration is applied (`*out_index`, may be NULL, is its
/// log index; the leader then leaves it on its own — `emf_raft_cluster_membership` tells).
/// Another change under way is waited for within the client's timeout (then `EMF_ERR_TIMEOUT`
/// naming it); a change that cannot be made is `EMF_ERR_INVALID_ARGUMENT` with the reason
/// (removing the leader: transfer the leadership first). A local cluster's node processes stay
/// as they are: a removed node keeps running and can be added back, as a learner and then a
/// voter.
///
/// # Safety
///
/// `c` a live handle; `changes` readable for `n` values; `out_index` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_change_membership(
    c: *mut emf_raft_cluster_t,
    changes: *const emf_raft_member_change_t,
    n: usize,
    out_index: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_change_membership(c, changes, n, out_index) }
    })
}

/// The configuration the leader has applied: the voters in `ids[0..*out_voters]`, then the
/// learners in `ids[*out_voters..*out_voters + *out_learners]` (room for `cap`;
/// `EMF_ERR_BUFFER_TOO_SMALL` with the counts written when it is smaller); `*out_joint` (may be
/// NULL) 1 while a change is half way (the voters are then the incoming ones).
///
/// # Safety
///
/// `c` a live handle; `ids` writable for `cap` values (NULL with 0); `out_voters` and
/// `out_learners` writable; `out_joint` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_membership(
    c: *mut emf_raft_cluster_t,
    ids: *mut u64,
    cap: usize,
    out_voters: *mut usize,
    out_learners: *mut usize,
    out_joint: *mut u32,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_membership(c, ids, cap, out_voters, out_learners, out_joint) }
    })
}

/// SIGKILLs node `node` and reaps it (for tests: a crash). `EMF_ERR_NOT_FOUND` when it is not
/// running.
///
/// # Safety
///
/// `c` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_kill(
    c: *mut emf_raft_cluster_t,
    node: u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut st = unsafe { borrow(c) }?;
        Ok(st.cluster.kill(node)?)
    })
}

/// Starts node `node` again from its data directory (killing it first if it runs).
/// `EMF_ERR_NOT_FOUND` when it is not a member. With `memory` set the node restarts empty.
///
/// # Safety
///
/// `c` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_restart(
    c: *mut emf_raft_cluster_t,
    node: u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let mut st = unsafe { borrow(c) }?;
        Ok(st.cluster.restart(node)?)
    })
}

/// Sets `key` to `value` in the replicated key-value store (the original `{set, Key,
/// Value}`); `*out_index` (may be NULL) is the log index.
///
/// # Safety
///
/// `c` a live handle; `key`, `value` readable for their lengths; `out_index` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_set(
    c: *mut emf_raft_cluster_t,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    out_index: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_set(c, key, key_len, value, value_len, out_index) }
    })
}

/// Reads `key` at the leader with a linearizable ReadIndex read (no log entry; `*out_index`,
/// may be NULL, is the read index: the value reflects every write committed up to it):
/// `*out_found` 1 and the value in `buf` (length
/// in `*out_len`), or `*out_found` 0 and `*out_len` 0. `EMF_ERR_BUFFER_TOO_SMALL`: the value
/// is kept (`emf_raft_cluster_result`).
///
/// # Safety
///
/// `c` a live handle; `key` readable for `key_len`; `buf` writable for `cap`; `out_found`
/// and `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_get(
    c: *mut emf_raft_cluster_t,
    key: *const u8,
    key_len: usize,
    out_index: *mut u64,
    out_found: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_get(c, key, key_len, out_index, out_found, buf, cap, out_len) }
    })
}

/// Compare-and-set: when `key` holds `expected` (`has_expected` non-zero) or is absent
/// (`has_expected` 0; then `expected` must be empty), sets it to `new` (`*out_index`, may be
/// NULL, is the log index). `*out_swapped` says
/// whether it did; `*out_had_previous` whether the key held a value, which goes to `buf`
/// (length in `*out_len`; `EMF_ERR_BUFFER_TOO_SMALL`: kept for `emf_raft_cluster_result`).
///
/// # Safety
///
/// `c` a live handle; byte inputs readable for their lengths; `buf` writable for `cap`; the
/// out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_cluster_cas(
    c: *mut emf_raft_cluster_t,
    key: *const u8,
    key_len: usize,
    out_index: *mut u64,
    has_expected: u32,
    expected: *const u8,
    expected_len: usize,
    new: *const u8,
    new_len: usize,
    out_swapped: *mut u32,
    out_had_previous: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe {
            do_cas(
                c,
                key,
                key_len,
                out_index,
                has_expected,
                expected,
                expected_len,
                new,
                new_len,
                out_swapped,
                out_had_previous,
                buf,
                cap,
                out_len,
            )
        }
    })
}

// ---- client ----------------------------------------------------------------------------------

/// Connects to the cluster whose nodes `nodes[0..n]` serve the rings of `net_dir` (a local
/// cluster's `DIR/net`, or the `--net-dir` of `erlmcp-flow raft node --transport ring`),
/// taking the first free client id of the nodes' defaults (`EMF_ERR_BUSY` when all are in
/// use), with options `opts` (NULL: the defaults). Nothing is sent yet.
///
/// # Safety
///
/// `net_dir` a NUL-terminated string; `nodes` readable for `n` values; `opts` NULL or
/// readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_connect(
    net_dir: *const c_char,
    nodes: *const u64,
    n: usize,
    opts: *const emf_raft_client_options_t,
    out: *mut *mut emf_raft_client_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        let dir = c_str(net_dir, "net_dir")?;
        if n > EMF_RAFT_MAX_NODES {
            return Err(FfiError::new(
                EMF_ERR_TOO_LARGE,
                format!("{n} nodes: at most {EMF_RAFT_MAX_NODES}"),
            ));
        }
        // SAFETY: caller contract.
        let ids = unsafe { typed(nodes, n, "nodes") }?;
        if ids.is_empty() || ids.contains(&0) {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                format!("nodes {ids:?}: at least one, none 0"),
            ));
        }
        let o = if opts.is_null() {
            client_options_default()
        } else {
            // SAFETY: readable by contract; plain data, read without alignment assumptions.
            unsafe { opts.read_unaligned() }
        };
        let o = client_options_of(&o)?;
        let client = RaftClient::over_rings(Path::new(dir), ids, &default_client_ids(), o)?;
        let h = new_handle::<emf_raft_client_t>(ClientState {
            client,
            kept: Vec::new(),
        })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Frees the client (NULL is fine); its client id becomes free. The cluster runs on.
///
/// # Safety
///
/// No other thread may be using `c`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_free(c: *mut emf_raft_client_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(c) })
}

/// As `emf_raft_cluster_submit`.
///
/// # Safety
///
/// As `emf_raft_cluster_submit`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_submit(
    c: *mut emf_raft_client_t,
    op: *const u8,
    len: usize,
    out_index: *mut u64,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_submit(c, op, len, out_index, buf, cap, out_len) }
    })
}

/// As `emf_raft_cluster_append_entry`.
///
/// # Safety
///
/// As `emf_raft_cluster_append_entry`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_append_entry(
    c: *mut emf_raft_client_t,
    entry: *const u8,
    len: usize,
    out_index: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_append(c, entry, len, out_index) }
    })
}

/// Submits `n` operations with up to `window` of them in flight at once and waits until
/// each has an answer (at most the client's timeout in all): the hosts' pipelined submit —
/// one call commits many operations in a few round trips, batched by the leader, where
/// `emf_raft_client_submit` waits for each. `out_indexes[i]` is operation `i`'s log index
/// (0 when it failed) and `out_status[i]` its status (`EMF_OK`, `EMF_ERR_TIMEOUT`: it may yet
/// commit, ...); the state machine's results are not returned (submit one at a time for
/// them). Returns `EMF_OK` when every operation committed, else the first failure's status
/// with a message naming it. Each operation is at-least-once, as with a single submit.
///
/// # Safety
///
/// `c` a live handle; `ops` readable for `n` slices, each readable for its length;
/// `out_indexes` and `out_status` writable for `n` values.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_submit_many(
    c: *mut emf_raft_client_t,
    ops: *const emf_slice_t,
    n: usize,
    window: u32,
    out_indexes: *mut u64,
    out_status: *mut emf_status_t,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_submit_many(c, ops, n, window, out_indexes, out_status) }
    })
}

/// As `emf_raft_cluster_result`.
///
/// # Safety
///
/// As `emf_raft_cluster_result`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_result(
    c: *mut emf_raft_client_t,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_result(c, buf, cap, out_len) }
    })
}

/// As `emf_raft_cluster_wait_committed`.
///
/// # Safety
///
/// As `emf_raft_cluster_wait_committed`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_wait_committed(
    c: *mut emf_raft_client_t,
    index: u64,
    timeout_ms: u32,
    out_applied: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_wait(c, index, timeout_ms, out_applied) }
    })
}

/// As `emf_raft_cluster_leader`.
///
/// # Safety
///
/// As `emf_raft_cluster_leader`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_leader(
    c: *mut emf_raft_client_t,
    out_leader: *mut u64,
    out_term: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_leader(c, out_leader, out_term) }
    })
}

/// As `emf_raft_cluster_status`.
///
/// # Safety
///
/// As `emf_raft_cluster_status`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_status(
    c: *mut emf_raft_client_t,
    node: u64,
    out: *mut emf_raft_status_t,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_status(c, node, out) }
    })
}

/// As `emf_raft_cluster_stats`.
///
/// # Safety
///
/// As `emf_raft_cluster_stats`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_stats(
    c: *mut emf_raft_client_t,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_stats(c, buf, cap, out_len) }
    })
}

/// As `emf_raft_cluster_set`.
///
/// # Safety
///
/// As `emf_raft_cluster_set`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_set(
    c: *mut emf_raft_client_t,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    out_index: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_set(c, key, key_len, value, value_len, out_index) }
    })
}

/// As `emf_raft_cluster_get`.
///
/// # Safety
///
/// As `emf_raft_cluster_get`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_get(
    c: *mut emf_raft_client_t,
    key: *const u8,
    key_len: usize,
    out_index: *mut u64,
    out_found: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_get(c, key, key_len, out_index, out_found, buf, cap, out_len) }
    })
}

/// As `emf_raft_cluster_cas`.
///
/// # Safety
///
/// As `emf_raft_cluster_cas`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_cas(
    c: *mut emf_raft_client_t,
    key: *const u8,
    key_len: usize,
    out_index: *mut u64,
    has_expected: u32,
    expected: *const u8,
    expected_len: usize,
    new: *const u8,
    new_len: usize,
    out_swapped: *mut u32,
    out_had_previous: *mut u32,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe {
            do_cas(
                c,
                key,
                key_len,
                out_index,
                has_expected,
                expected,
                expected_len,
                new,
                new_len,
                out_swapped,
                out_had_previous,
                buf,
                cap,
                out_len,
            )
        }
    })
}

/// As `emf_raft_cluster_read`.
///
/// # Safety
///
/// As `emf_raft_cluster_read`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_read(
    c: *mut emf_raft_client_t,
    query: *const u8,
    len: usize,
    out_index: *mut u64,
    buf: *mut u8,
    cap: usize,
    out_len: *mut usize,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_read(c, query, len, out_index, buf, cap, out_len) }
    })
}

/// As `emf_raft_cluster_transfer_leader`.
///
/// # Safety
///
/// As `emf_raft_cluster_transfer_leader`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_transfer_leader(
    c: *mut emf_raft_client_t,
    to: u64,
    out_term: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_transfer(c, to, out_term) }
    })
}

/// As `emf_raft_cluster_change_membership`.
///
/// # Safety
///
/// As `emf_raft_cluster_change_membership`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_change_membership(
    c: *mut emf_raft_client_t,
    changes: *const emf_raft_member_change_t,
    n: usize,
    out_index: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_change_membership(c, changes, n, out_index) }
    })
}

/// As `emf_raft_cluster_membership`.
///
/// # Safety
///
/// As `emf_raft_cluster_membership`.
#[no_mangle]
pub unsafe extern "C" fn emf_raft_client_membership(
    c: *mut emf_raft_client_t,
    ids: *mut u64,
    cap: usize,
    out_voters: *mut usize,
    out_learners: *mut usize,
    out_joint: *mut u32,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        unsafe { do_membership(c, ids, cap, out_voters, out_learners, out_joint) }
    })
}

#[cfg(test)]
mod tests;

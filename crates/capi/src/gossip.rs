//! C ABI of a gossip member (`emf_gossip_*`): SWIM membership and push-pull gossip of a
//! versioned key → value map, over `engine::mesh::runner::{spawn_member, MemberHandle}` (see
//! `crates/core/src/mesh/`).
//!
//! `emf_gossip_start` makes the calling process one member of a cluster, over the rings of a
//! shared directory (members on one host) or over TCP. The member runs on a thread of the
//! library's own; every call here is a request to that thread and its answer.
//!
//! Thread safety: an `emf_gossip_t` may be used from any number of threads at once (except
//! `emf_gossip_free`, which no other call may overlap). Each handle has **one** subscription,
//! made at start so no event is missed: `emf_gossip_next_event` hands its events out in
//! order to whichever thread calls (a host with several consumers fans them out itself). Its
//! queue is bounded (4096 events): events a host does not fetch in time are dropped and
//! counted (`emf_gossip_stats_t.events_dropped`).
//!
//! Owned results: `emf_gossip_get` and the key and value of a key event are `emf_buf_t`s the
//! caller releases with `emf_buf_free`.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use super::handle::{borrow, free, new_handle, Handle, Shared};
use super::{
    bytes, c_str, emf_buf_t, emf_status_t, guard, require_out, typed, typed_mut, write_buf,
    write_out, FfiError, FfiResult, EMF_ERR_BUFFER_TOO_SMALL, EMF_ERR_CLOSED,
    EMF_ERR_INVALID_ARGUMENT, EMF_ERR_NOT_FOUND, EMF_ERR_TIMEOUT, EMF_ERR_TOO_LARGE,
};
use engine::membership::gossip::GossipConfig;
use engine::membership::swim::{MemberState, SwimConfig};
use engine::mesh::member::{MemberOptions, MeshEvent};
use engine::mesh::runner::{spawn_member, MemberHandle, MemberSpec, MemberTransport};
use engine::net::NodeId;

/// The most peers or seeds `emf_gossip_options_t` takes.
pub const EMF_GOSSIP_MAX_PEERS: usize = 65_536;

/// Options of `emf_gossip_start`; fill with `emf_gossip_options_default` first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct emf_gossip_options_t {
    /// This member's id (not 0).
    pub id: u64,
    /// The cluster's ring directory (NUL-terminated; under `/dev/shm` for speed), shared by
    /// every member on this host: the member runs over rings. NULL: over TCP (`listen`).
    pub ring_dir: *const c_char,
    /// The inbox capacity in bytes over rings, a power of two (default 1 MiB).
    pub inbox_capacity: usize,
    /// Over TCP: the address to listen on, `"ip:port"` (NUL-terminated; port 0 picks one).
    pub listen: *const c_char,
    /// The ids of the other members (over rings: every member that may send to this one).
    pub peers: *const u64,
    /// How many `peers` (at most `EMF_GOSSIP_MAX_PEERS`).
    pub n_peers: usize,
    /// Over TCP: `n_peers` addresses `"ip:port"`, one for each of `peers`; NULL over rings.
    pub peer_addrs: *const *const c_char,
    /// The members to announce this one to (each one of `peers`); none for the first member.
    pub seeds: *const u64,
    /// How many `seeds`.
    pub n_seeds: usize,
    /// Microseconds between push-pull rounds (default 100000; a few ms works).
    pub gossip_interval_us: u64,
    /// Microseconds between anti-entropy reconciliations with one random peer (default
    /// 10 s; 0 turns it off).
    pub anti_entropy_interval_us: u64,
    /// The largest fan-out (default 10): a round pushes to `min(ceil(log2 N) + 1,
    /// max_fan_out)` peers and pulls from as many others.
    pub max_fan_out: u32,
    /// SWIM's probe period, µs (default 1 s); the other SWIM timings keep their ratio to it
    /// (memberlist's LAN defaults for a cluster of `n_peers + 1`).
    pub probe_period_us: u64,
    /// How long a suspected member has to refute before it is declared down, µs; 0: SWIM's
    /// default for the cluster size (4 × max(1, log10 N) probe periods).
    pub suspicion_timeout_us: u64,
    /// The generation of this member's process (higher after every restart); 0: the wall
    /// clock in µs.
    pub generation: u64,
    /// Seed of the random choices (peers to probe, push to, pull from).
    pub seed: u64,
}

/// `emf_gossip_member_t.state`: answering probes.
pub const EMF_GOSSIP_ALIVE: u32 = 1;
/// `emf_gossip_member_t.state`: failed a probe; declared down unless it refutes in time.
pub const EMF_GOSSIP_SUSPECT: u32 = 2;
/// `emf_gossip_member_t.state`: declared down, or left.
pub const EMF_GOSSIP_DOWN: u32 = 3;

/// A member as this one sees it (`emf_gossip_members`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_gossip_member_t {
    /// Its id.
    pub id: u64,
    /// The generation of its process.
    pub generation: u64,
    /// Its incarnation (raised by itself to refute a suspicion).
    pub incarnation: u32,
    /// `EMF_GOSSIP_ALIVE`, `_SUSPECT` or `_DOWN`.
    pub state: u32,
}

/// `emf_gossip_event_t.kind`: member `member` became live.
pub const EMF_GOSSIP_EVENT_MEMBER_UP: u32 = 1;
/// `emf_gossip_event_t.kind`: member `member` is suspected (it may still refute).
pub const EMF_GOSSIP_EVENT_MEMBER_SUSPECT: u32 = 2;
/// `emf_gossip_event_t.kind`: member `member` was declared down or left.
pub const EMF_GOSSIP_EVENT_MEMBER_DOWN: u32 = 3;
/// `emf_gossip_event_t.kind`: member `member` restarted (a new generation replaced the one
/// known).
pub const EMF_GOSSIP_EVENT_MEMBER_RESTARTED: u32 = 4;
/// `emf_gossip_event_t.kind`: the cluster declared this member down while it ran; it
/// rejoined as `generation`.
pub const EMF_GOSSIP_EVENT_REJOINED: u32 = 5;
/// `emf_gossip_event_t.kind`: a remote write or delete changed `key` (local writes are not
/// reported).
pub const EMF_GOSSIP_EVENT_KEY_CHANGED: u32 = 6;

/// An event of the member's subscription (`emf_gossip_next_event`). `key` and `value` are
/// owned by the caller (release both with `emf_buf_free`; empty for membership events).
#[repr(C)]
#[derive(Debug)]
pub struct emf_gossip_event_t {
    /// `EMF_GOSSIP_EVENT_*`.
    pub kind: u32,
    /// For `EMF_GOSSIP_EVENT_KEY_CHANGED`: 1 when the key was deleted (no value), else 0.
    pub deleted: u32,
    /// The member the event is about (0 for `EMF_GOSSIP_EVENT_REJOINED`, and key events).
    pub member: u64,
    /// For `EMF_GOSSIP_EVENT_REJOINED`: the new generation; else 0.
    pub generation: u64,
    /// For key events: the version's Lamport counter.
    pub version_counter: u64,
    /// For key events: the member that wrote the version.
    pub version_origin: u64,
    /// For key events: the key.
    pub key: emf_buf_t,
    /// For key events that are not deletes: the new value.
    pub value: emf_buf_t,
}

/// A member's counters (`emf_gossip_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct emf_gossip_stats_t {
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Frames refused (bad bytes, unknown tag), dropped.
    pub rejected: u64,
    /// Sends refused by back-pressure, dropped (the protocols retransmit).
    pub dropped_full: u64,
    /// Sends that failed otherwise (peer down or unknown), dropped.
    pub send_failed: u64,
    /// Events dropped: a subscription had no room.
    pub events_dropped: u64,
    /// Push-pull rounds run.
    pub rounds: u64,
    /// Anti-entropy reconciliations started.
    pub anti_entropy: u64,
    /// Pushes sent.
    pub pushes: u64,
    /// Pulls (digests) sent.
    pub pulls: u64,
    /// Local writes and deletes.
    pub local_writes: u64,
    /// Remote updates that changed this member's map.
    pub remote_applied: u64,
    /// SWIM probes sent.
    pub probes: u64,
    /// SWIM probes that failed.
    pub failed_probes: u64,
    /// Suspicions of this member it refuted.
    pub refutations: u64,
}

/// What an `emf_gossip_t` holds: the running member and its subscription.
pub(crate) struct GossipState {
    member: MemberHandle,
    events: Mutex<Receiver<MeshEvent>>,
}

/// A gossip member running on a thread of the library. Opaque; thread-safe (module docs).
pub struct emf_gossip_t {
    _private: (),
}

impl Handle for emf_gossip_t {
    const KIND: u32 = 20;
    const NAME: &'static str = "gossip member";
    type Target = GossipState;
    type Access = Shared;
}

fn options_default() -> emf_gossip_options_t {
    let g = GossipConfig::default();
    emf_gossip_options_t {
        id: 0,
        ring_dir: std::ptr::null(),
        inbox_capacity: 1 << 20,
        listen: std::ptr::null(),
        peers: std::ptr::null(),
        n_peers: 0,
        peer_addrs: std::ptr::null(),
        seeds: std::ptr::null(),
        n_seeds: 0,
        gossip_interval_us: g.round_interval_us,
        anti_entropy_interval_us: g.anti_entropy_interval_us,
        max_fan_out: g.max_fan_out as u32,
        probe_period_us: 1_000_000,
        suspicion_timeout_us: 0,
        generation: 0,
        seed: 0,
    }
}

fn addr(p: *const c_char, name: &str) -> FfiResult<SocketAddr> {
    let s = c_str(p, name)?;
    s.parse().map_err(|e| {
        FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("`{name}` {s:?} is not an \"ip:port\" address: {e}"),
        )
    })
}

/// The spec of `o`.
///
/// # Safety
///
/// `o`'s pointers as `emf_gossip_options_t` says.
unsafe fn spec_of(o: &emf_gossip_options_t) -> FfiResult<MemberSpec> {
    for (n, what) in [(o.n_peers, "peers"), (o.n_seeds, "seeds")] {
        if n > EMF_GOSSIP_MAX_PEERS {
            return Err(FfiError::new(
                EMF_ERR_TOO_LARGE,
                format!("{n} {what}: at most {EMF_GOSSIP_MAX_PEERS}"),
            ));
        }
    }
    // SAFETY: caller contract.
    let peers = unsafe { typed(o.peers, o.n_peers, "peers") }?.to_vec();
    // SAFETY: caller contract.
    let seeds = unsafe { typed(o.seeds, o.n_seeds, "seeds") }?.to_vec();
    let transport = if !o.ring_dir.is_null() {
        MemberTransport::Ring {
            dir: PathBuf::from(c_str(o.ring_dir, "ring_dir")?),
            inbox_capacity: o.inbox_capacity,
            peers,
        }
    } else {
        if o.listen.is_null() {
            return Err(FfiError::new(
                EMF_ERR_INVALID_ARGUMENT,
                "neither ring_dir nor listen is set",
            ));
        }
        let listen = addr(o.listen, "listen")?;
        if o.peer_addrs.is_null() && !peers.is_empty() {
            return Err(FfiError::null("peer_addrs"));
        }
        // SAFETY: caller contract: `n_peers` pointers.
        let addrs = unsafe { typed(o.peer_addrs, o.n_peers, "peer_addrs") }?;
        let peers = peers
            .iter()
            .zip(addrs)
            .map(|(&p, &a)| Ok((p, addr(a, "peer_addrs[i]")?)))
            .collect::<FfiResult<Vec<_>>>()?;
        MemberTransport::Tcp { listen, peers }
    };
    if o.gossip_interval_us == 0 || o.probe_period_us < 10 || o.max_fan_out == 0 {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!(
                "gossip_interval_us {}, max_fan_out {} must be positive and probe_period_us {} at least 10",
                o.gossip_interval_us, o.max_fan_out, o.probe_period_us
            ),
        ));
    }
    let n = o.n_peers + 1;
    let mut swim =
        SwimConfig::for_cluster_size(n).with_probe_period(Duration::from_micros(o.probe_period_us));
    if o.suspicion_timeout_us > 0 {
        swim.suspicion_timeout = Duration::from_micros(o.suspicion_timeout_us);
    }
    swim.generation = o.generation;
    swim.seed = o.seed;
    let gossip = GossipConfig {
        round_interval_us: o.gossip_interval_us,
        anti_entropy_interval_us: o.anti_entropy_interval_us,
        max_fan_out: o.max_fan_out as usize,
        seed: o.seed,
        ..GossipConfig::default()
    };
    let mut spec = MemberSpec::new(o.id, transport, &seeds);
    spec.options = MemberOptions {
        swim,
        gossip,
        seeds: seeds.iter().map(|&s| NodeId(s)).collect(),
        ..MemberOptions::default()
    };
    Ok(spec)
}

/// Fills `*out` with the defaults: no id, peers or transport (to be set), a 1 MiB inbox,
/// rounds every 100 ms, anti-entropy every 10 s, fan-out at most 10, a 1 s probe period,
/// the suspicion timeout for the cluster size, the wall clock as generation.
///
/// # Safety
///
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_options_default(
    out: *mut emf_gossip_options_t,
) -> emf_status_t {
    // SAFETY: caller contract (checked non-NULL).
    guard(|| unsafe { write_out(out, options_default(), "out") })
}

/// Starts member `opts->id` on a thread of the library's own and returns once it runs (it
/// has announced itself to its seeds). Errors: bad options (`EMF_ERR_INVALID_ARGUMENT`,
/// `EMF_ERR_TOO_LARGE`), a live member with this id on these rings (`EMF_ERR_BUSY`), a TCP
/// address in use (`EMF_ERR_IO`).
///
/// # Safety
///
/// `opts` readable, its pointers as `emf_gossip_options_t` says; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_start(
    opts: *const emf_gossip_options_t,
    out: *mut *mut emf_gossip_t,
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
        let member = spawn_member(spec)?;
        let events = member.subscribe()?;
        let h = new_handle::<emf_gossip_t>(GossipState {
            member,
            events: Mutex::new(events),
        })?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, h, "out") }
    })
}

/// Stops the member (without leaving: call `emf_gossip_leave` first for a graceful exit),
/// joins its thread and releases the handle. NULL is fine; a double free is refused.
///
/// # Safety
///
/// `g` NULL or a handle; no other thread uses it during or after the call.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_free(g: *mut emf_gossip_t) -> emf_status_t {
    // SAFETY: caller contract; the slab refuses a double free.
    guard(|| unsafe { free(g) })
}

/// The TCP port the member listens on (the one picked for port 0), 0 over rings.
///
/// # Safety
///
/// `g` a live handle; `out_port` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_port(g: *mut emf_gossip_t, out_port: *mut u16) -> emf_status_t {
    guard(|| {
        require_out(out_port, "out_port")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        let port = st.member.local_addr().map_or(0, |a| a.port());
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_port, port, "out_port") }
    })
}

/// Writes `key` = `value`; gossip spreads it from the next round. `*out_counter` (NULL: not
/// wanted) gets the version's Lamport counter. `EMF_ERR_TOO_LARGE` beyond 1 KiB keys or
/// 32 KiB values; `EMF_ERR_CLOSED` once the member stopped.
///
/// # Safety
///
/// `g` a live handle; `key`/`value` readable for their lengths; `out_counter` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_put(
    g: *mut emf_gossip_t,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    out_counter: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let k = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: caller contract.
        let v = unsafe { bytes(value, value_len, "value") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        let version = st.member.put(k, v)?;
        if !out_counter.is_null() {
            // SAFETY: non-NULL; writable by contract.
            unsafe { write_out(out_counter, version.counter, "out_counter") }?;
        }
        Ok(())
    })
}

/// The value of `key` into `*out` (release with `emf_buf_free`); `EMF_ERR_NOT_FOUND` when
/// the key has no live value (`*out` then empty).
///
/// # Safety
///
/// `g` a live handle; `key` readable for `key_len`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_get(
    g: *mut emf_gossip_t,
    key: *const u8,
    key_len: usize,
    out: *mut emf_buf_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: caller contract.
        let k = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        let v = st.member.get(k)?;
        let found = v.is_some();
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_buf(out, v.unwrap_or_default()) }?;
        if found {
            Ok(())
        } else {
            Err(FfiError::new(
                EMF_ERR_NOT_FOUND,
                "gossip: the key has no value",
            ))
        }
    })
}

/// Deletes `key` (a tombstone spreads). `*out_deleted` (NULL: not wanted) is 1 when there
/// was a value, 0 when there was nothing to delete.
///
/// # Safety
///
/// `g` a live handle; `key` readable for `key_len`; `out_deleted` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_delete(
    g: *mut emf_gossip_t,
    key: *const u8,
    key_len: usize,
    out_deleted: *mut u32,
) -> emf_status_t {
    guard(|| {
        // SAFETY: caller contract.
        let k = unsafe { bytes(key, key_len, "key") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        let deleted = st.member.delete(k)?.is_some();
        if !out_deleted.is_null() {
            // SAFETY: non-NULL; writable by contract.
            unsafe { write_out(out_deleted, u32::from(deleted), "out_deleted") }?;
        }
        Ok(())
    })
}

/// Writes every member known (live and down, not this one) to `out[0..cap]` and their
/// number to `*out_n`; `EMF_ERR_BUFFER_TOO_SMALL` (with `*out_n` written, nothing else)
/// when `cap` is smaller (`out` may be NULL with `cap` 0 to ask the number).
///
/// # Safety
///
/// `g` a live handle; `out` writable for `cap` elements (or NULL with `cap` 0); `out_n`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_members(
    g: *mut emf_gossip_t,
    out: *mut emf_gossip_member_t,
    cap: usize,
    out_n: *mut usize,
) -> emf_status_t {
    guard(|| {
        require_out(out_n, "out_n")?;
        // SAFETY: caller contract.
        let slots = unsafe { typed_mut(out, cap, "out") }?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        let ms = st.member.members()?;
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out_n, ms.len(), "out_n") }?;
        if ms.len() > slots.len() {
            return Err(FfiError::new(
                EMF_ERR_BUFFER_TOO_SMALL,
                format!("{} members, room for {}", ms.len(), slots.len()),
            ));
        }
        for (slot, m) in slots.iter_mut().zip(&ms) {
            *slot = emf_gossip_member_t {
                id: m.id,
                generation: m.generation,
                incarnation: u32::from(m.incarnation),
                state: match m.state {
                    MemberState::Alive => EMF_GOSSIP_ALIVE,
                    MemberState::Suspect => EMF_GOSSIP_SUSPECT,
                    MemberState::Down => EMF_GOSSIP_DOWN,
                },
            };
        }
        Ok(())
    })
}

/// Runs one push-pull round now on the member's thread (its scheduled rounds and SWIM's
/// timers go on unchanged); `*out_rounds` (NULL: not wanted) gets the member's round count.
///
/// # Safety
///
/// `g` a live handle; `out_rounds` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_round(
    g: *mut emf_gossip_t,
    out_rounds: *mut u64,
) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        let n = st.member.round()?;
        if !out_rounds.is_null() {
            // SAFETY: non-NULL; writable by contract.
            unsafe { write_out(out_rounds, n, "out_rounds") }?;
        }
        Ok(())
    })
}

/// Leaves the cluster: the others learn it and report this member down. It keeps running
/// (answering gossip) until freed.
///
/// # Safety
///
/// `g` a live handle.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_leave(g: *mut emf_gossip_t) -> emf_status_t {
    guard(|| {
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        Ok(st.member.leave()?)
    })
}

fn event_struct(e: MeshEvent) -> emf_gossip_event_t {
    let mut ev = emf_gossip_event_t {
        kind: 0,
        deleted: 0,
        member: 0,
        generation: 0,
        version_counter: 0,
        version_origin: 0,
        key: emf_buf_t::EMPTY,
        value: emf_buf_t::EMPTY,
    };
    match e {
        MeshEvent::MemberUp(n) => (ev.kind, ev.member) = (EMF_GOSSIP_EVENT_MEMBER_UP, n.0),
        MeshEvent::MemberSuspect(n) => {
            (ev.kind, ev.member) = (EMF_GOSSIP_EVENT_MEMBER_SUSPECT, n.0)
        }
        MeshEvent::MemberDown(n) => (ev.kind, ev.member) = (EMF_GOSSIP_EVENT_MEMBER_DOWN, n.0),
        MeshEvent::MemberRestarted(n) => {
            (ev.kind, ev.member) = (EMF_GOSSIP_EVENT_MEMBER_RESTARTED, n.0)
        }
        MeshEvent::Rejoined { generation } => {
            (ev.kind, ev.generation) = (EMF_GOSSIP_EVENT_REJOINED, generation)
        }
        MeshEvent::KeyChanged(c) => {
            ev.kind = EMF_GOSSIP_EVENT_KEY_CHANGED;
            ev.version_counter = c.version.counter;
            ev.version_origin = c.version.origin;
            ev.deleted = u32::from(c.value.is_none());
            ev.key = emf_buf_t::from_vec(c.key);
            ev.value = emf_buf_t::from_vec(c.value.unwrap_or_default());
        }
    }
    ev
}

/// Waits up to `timeout_ms` (0: only what is there) for the next event of the member's
/// subscription and writes it to `*out` (its `key` and `value` owned by the caller).
/// `EMF_ERR_TIMEOUT` when none came; `EMF_ERR_CLOSED` once the member stopped and every
/// event was handed out. Callers on several threads take turns (each event goes to one).
///
/// # Safety
///
/// `g` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_next_event(
    g: *mut emf_gossip_t,
    timeout_ms: u64,
    out: *mut emf_gossip_event_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        let rx = st.events.lock().unwrap_or_else(|p| p.into_inner());
        let e = match rx.recv_timeout(Duration::from_millis(timeout_ms)) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                return Err(FfiError::new(EMF_ERR_TIMEOUT, "gossip: no event"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(FfiError::new(
                    EMF_ERR_CLOSED,
                    "gossip: the member has stopped",
                ))
            }
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, event_struct(e), "out") }
    })
}

/// Writes the member's counters to `*out`.
///
/// # Safety
///
/// `g` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn emf_gossip_stats(
    g: *mut emf_gossip_t,
    out: *mut emf_gossip_stats_t,
) -> emf_status_t {
    guard(|| {
        require_out(out, "out")?;
        // SAFETY: liveness checked by the slab; the caller's contract excludes a concurrent free.
        let st = unsafe { borrow(g) }?;
        let s = st.member.stats()?;
        let v = emf_gossip_stats_t {
            frames_in: s.member.frames_in,
            frames_out: s.member.frames_out,
            rejected: s.member.rejected + s.member.unknown_tag,
            dropped_full: s.member.dropped_full,
            send_failed: s.member.send_failed,
            events_dropped: s.member.events_dropped,
            rounds: s.gossip.rounds,
            anti_entropy: s.gossip.anti_entropy,
            pushes: s.gossip.pushes,
            pulls: s.gossip.pulls,
            local_writes: s.gossip.local_writes,
            remote_applied: s.gossip.remote_applied,
            probes: s.swim.probes,
            failed_probes: s.swim.failed_probes,
            refutations: s.swim.refutations,
        };
        // SAFETY: checked non-NULL; writable by contract.
        unsafe { write_out(out, v, "out") }
    })
}

#[cfg(test)]
mod tests;

//! The TCP transport: nodes on different hosts, over `std::net` with threads (no async
//! runtime).
//!
//! # Wire format
//!
//! A connection starts with an 8-byte preamble, `EMFNET\0\x01` (the format's version in the
//! last byte), then carries frames: a little-endian `u32` length of what follows, the
//! sender's id as a little-endian `u64`, and the payload. A connection carries frames one
//! way: each node dials each peer it sends to, and accepts the connections of the peers that
//! send to it.
//!
//! # Threads and queues
//!
//! * A listener thread accepts connections; each gets a reader thread, which validates every
//!   frame (the preamble; a length from 8 to 8 + [`TcpOptions::max_payload`]; a sender that
//!   is a configured peer and the same on the whole connection) and pushes it to the receive
//!   queue that [`Transport::try_recv`] and [`Transport::recv_timeout`] take from. Bytes that
//!   fail validation close that connection and count in [`TcpStats::corrupt`]; nothing is
//!   allocated from an unvalidated length.
//! * The receive queue is bounded ([`TcpOptions::recv_queue`]): when the owner does not
//!   read, readers stop reading their sockets, TCP's flow control stops the senders, and
//!   their send queues fill. Nothing buffers without bound for a slow node.
//! * Each peer has a bounded send queue ([`TcpOptions::send_queue`] frames) and a writer
//!   thread that connects when there is something to send, writes queued frames in batches,
//!   and on failure reconnects with exponential backoff ([`TcpOptions::backoff_min`] doubling
//!   up to [`TcpOptions::backoff_max`], reset by a successful connect). A full queue answers
//!   `Full`: a peer that is slow, unreachable or down pushes back on its senders.
//!
//! # Delivery
//!
//! Frames from one sender arrive in order, each at most once. Frames being written when a
//! connection breaks are lost and counted in [`TcpStats::dropped`]; frames still queued are
//! sent after the reconnect. Protocols above retransmit (Raft does).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{too_large, unknown_peer, Frame, NodeId, Transport};
use crate::error::{Error, ErrorKind, Result};
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// The first bytes of every connection: the format's name and version.
pub const PREAMBLE: [u8; 8] = *b"EMFNET\x00\x01";
/// Bytes of a frame before its payload: the length and the sender.
pub const FRAME_HEADER: usize = 12;

/// How a TCP transport behaves.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// The largest payload sent or accepted; a longer frame on the wire is corrupt.
    pub max_payload: usize,
    /// Frames queued per peer before `send` answers `Full`.
    pub send_queue: usize,
    /// Received frames queued before readers stop reading their sockets.
    pub recv_queue: usize,
    /// The first wait after a failed connect or a broken connection.
    pub backoff_min: Duration,
    /// The longest wait between connection attempts.
    pub backoff_max: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Accepted connections open at once (each has a reader thread); more are closed at once
    /// and counted in [`TcpStats::refused`].
    pub max_inbound: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            max_payload: 16 << 20,
            send_queue: 1024,
            recv_queue: 4096,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_inbound: 256,
        }
    }
}

/// The counters of one node's TCP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Frames written to sockets.
    pub sent: u64,
    /// Valid frames received.
    pub received: u64,
    /// Sends refused with `Full`.
    pub full: u64,
    /// Connections closed because their bytes failed validation.
    pub corrupt: u64,
    /// Connections established to peers.
    pub connects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Frames lost because their connection broke while they were written.
    pub dropped: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed at once because `max_inbound` were open.
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    full: AtomicU64,
    corrupt: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    dropped: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A lock that a panicking thread cannot make unusable: every critical section leaves the
/// data consistent before anything that can panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the owner, the listener, the readers and the writers share.
struct Shared {
    id: NodeId,
    opts: TcpOptions,
    shutdown: AtomicBool,
    peers: RwLock<BTreeSet<NodeId>>,
    recv: Mutex<VecDeque<Frame>>,
    data: Condvar,
    space: Condvar,
    /// Accepted connections by number (for closing them on shutdown).
    inbound: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Counters,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    fn is_peer(&self, id: NodeId) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }
}

/// One peer's queue and writer.
struct Peer {
    addr: SocketAddr,
    q: Mutex<PeerQueue>,
    cv: Condvar,
}

struct PeerQueue {
    /// Encoded frames (header and payload), oldest first.
    frames: VecDeque<Vec<u8>>,
    /// A clone of the writer's connection, for closing it from outside.
    stream: Option<TcpStream>,
    /// The peer was removed: the writer exits.
    closed: bool,
}

/// One node's end of the TCP transport. Dropping it stops its threads and closes its
/// connections.
pub struct TcpTransport {
    shared: Arc<Shared>,
    local: SocketAddr,
    peers: HashMap<NodeId, Arc<Peer>>,
    writers: HashMap<NodeId, JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl TcpTransport {
    /// Node `id` listening on `listen` (port 0 picks one: see [`TcpTransport::local_addr`]),
    /// sending to `peers`.
    pub fn bind(
        id: NodeId,
        listen: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        opts: TcpOptions,
    ) -> Result<TcpTransport> {
        let listener = TcpListener::bind(listen).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("{id}: cannot listen on {listen}: {e}"),
            )
        })?;
        TcpTransport::from_listener(id, listener, peers, opts)
    }

    /// Node `id` accepting on a listener the caller bound (to learn every node's port before
    /// any node starts).
    pub fn from_listener(
        id: NodeId,
        listener: TcpListener,
        peers: &[(NodeId, SocketAddr)],
        opts: TcpOptions,
    ) -> Result<TcpTransport> {
        if opts.send_queue == 0
            || opts.recv_queue == 0
            || opts.max_payload == 0
            || opts.max_inbound == 0
        {
            return Err(Error::invalid(format!(
                "TCP transport queues, max_payload and max_inbound must be at least 1: {opts:?}"
            )));
        }
        if opts.max_payload > u32::MAX as usize - 8 {
            return Err(too_large(
                opts.max_payload,
                u32::MAX as usize - 8,
                "the TCP frame format",
            ));
        }
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            id,
            opts,
            shutdown: AtomicBool::new(false),
            peers: RwLock::new(BTreeSet::new()),
            recv: Mutex::new(VecDeque::new()),
            data: Condvar::new(),
            space: Condvar::new(),
            inbound: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            stats: Counters::default(),
        });
        let s = shared.clone();
        let listener = std::thread::Builder::new()
            .name(format!("emf-net-listen-{}", id.0))
            .spawn(move || accept_loop(&s, listener))?;
        let mut t = TcpTransport {
            shared,
            local,
            peers: HashMap::new(),
            writers: HashMap::new(),
            listener: Some(listener),
        };
        for &(pid, addr) in peers {
            t.add_peer(pid, addr)?;
        }
        Ok(t)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Adds peer `id` at `addr` (a membership change): frames to it are queued from now on
    /// and frames from it accepted. `InvalidArgument` for this node's own id or a peer that
    /// exists.
    pub fn add_peer(&mut self, id: NodeId, addr: SocketAddr) -> Result<()> {
        if id == self.shared.id || self.peers.contains_key(&id) {
            return Err(Error::invalid(format!(
                "{id} cannot be added as a peer of {}: it is itself or already a peer",
                self.shared.id
            )));
        }
        let peer = Arc::new(Peer {
            addr,
            q: Mutex::new(PeerQueue {
                frames: VecDeque::new(),
                stream: None,
                closed: false,
            }),
            cv: Condvar::new(),
        });
        let (s, p) = (self.shared.clone(), peer.clone());
        let h = std::thread::Builder::new()
            .name(format!("emf-net-send-{}-{}", self.shared.id.0, id.0))
            .spawn(move || write_loop(&s, &p))?;
        self.shared
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        self.peers.insert(id, peer);
        self.writers.insert(id, h);
        Ok(())
    }

    /// Removes peer `id`: its queued frames are discarded (returned as a count), its writer
    /// stops, and frames from it are refused from now on. `NotFound` when it is not a peer.
    pub fn remove_peer(&mut self, id: NodeId) -> Result<usize> {
        let peer = self
            .peers
            .remove(&id)
            .ok_or_else(|| unknown_peer(self.shared.id, id))?;
        self.shared
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let n = {
            let mut q = lock(&peer.q);
            q.closed = true;
            if let Some(s) = q.stream.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
            let n = q.frames.len();
            q.frames.clear();
            n
        };
        peer.cv.notify_all();
        if let Some(h) = self.writers.remove(&id) {
            let _ = h.join();
        }
        Ok(n)
    }

    /// The counters.
    pub fn stats(&self) -> TcpStats {
        let c = &self.shared.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            sent: g(&c.sent),
            received: g(&c.received),
            full: g(&c.full),
            corrupt: g(&c.corrupt),
            connects: g(&c.connects),
            connect_failures: g(&c.connect_failures),
            dropped: g(&c.dropped),
            accepted: g(&c.accepted),
            refused: g(&c.refused),
        }
    }

    /// Frames queued for `id` and not yet written (`NotFound` when it is not a peer).
    pub fn queued(&self, id: NodeId) -> Result<usize> {
        let p = self
            .peers
            .get(&id)
            .ok_or_else(|| unknown_peer(self.shared.id, id))?;
        Ok(lock(&p.q).frames.len())
    }

    fn pop(&self, q: &mut VecDeque<Frame>) -> Option<Frame> {
        let f = q.pop_front()?;
        self.shared.space.notify_one();
        Some(f)
    }
}

impl Transport for TcpTransport {
    fn local_id(&self) -> NodeId {
        self.shared.id
    }

    fn send(&mut self, to: NodeId, payload: &[u8]) -> Result<()> {
        let peer = self
            .peers
            .get(&to)
            .ok_or_else(|| unknown_peer(self.shared.id, to))?;
        let max = self.shared.opts.max_payload;
        if payload.len() > max {
            return Err(too_large(payload.len(), max, "the TCP transport"));
        }
        let mut q = lock(&peer.q);
        if q.frames.len() >= self.shared.opts.send_queue {
            bump(&self.shared.stats.full);
            return Err(Error::new(
                ErrorKind::Full,
                format!(
                    "the send queue of {to} holds {} frames (its bound): the peer is slow, \
                     unreachable or down",
                    q.frames.len()
                ),
            ));
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&((8 + payload.len()) as u32).to_le_bytes());
        frame.extend_from_slice(&self.shared.id.0.to_le_bytes());
        frame.extend_from_slice(payload);
        q.frames.push_back(frame);
        drop(q);
        peer.cv.notify_one();
        Ok(())
    }

    fn try_recv(&mut self) -> Result<Option<Frame>> {
        let mut q = lock(&self.shared.recv);
        Ok(self.pop(&mut q))
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.shared.recv);
        loop {
            if let Some(f) = self.pop(&mut q) {
                return Ok(Some(f));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            q = self
                .shared
                .data
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        let s = &self.shared;
        s.shutdown.store(true, Ordering::Release);
        for p in self.peers.values() {
            if let Some(st) = lock(&p.q).stream.take() {
                let _ = st.shutdown(Shutdown::Both);
            }
            p.cv.notify_all();
        }
        for (_, st) in lock(&s.inbound).drain() {
            let _ = st.shutdown(Shutdown::Both);
        }
        {
            // Taking the lock orders the flag before any waiter's re-check.
            let _q = lock(&s.recv);
            s.space.notify_all();
            s.data.notify_all();
        }
        // Wake the listener out of accept() with a connection of our own.
        let mut wake = self.local;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(h) = self.listener.take() {
            let _ = h.join();
        }
        for (_, h) in self.writers.drain() {
            let _ = h.join();
        }
        // Readers accepted after the drain above close on their own: they see the flag.
        for (_, st) in lock(&s.inbound).drain() {
            let _ = st.shutdown(Shutdown::Both);
        }
        let readers: Vec<_> = lock(&s.threads).drain(..).collect();
        for h in readers {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("id", &self.shared.id)
            .field("local", &self.local)
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .field("stats", &self.stats())
            .finish()
    }
}

fn accept_loop(s: &Arc<Shared>, listener: TcpListener) {
    let mut next = 0u64;
    for conn in listener.incoming() {
        if s.stopping() {
            return;
        }
        let Ok(stream) = conn else { continue };
        if lock(&s.inbound).len() >= s.opts.max_inbound {
            bump(&s.stats.refused);
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        bump(&s.stats.accepted);
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let n = next;
        next += 1;
        lock(&s.inbound).insert(n, clone);
        let s2 = s.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("emf-net-recv-{}", s.id.0))
            .spawn(move || {
                read_loop(&s2, stream);
                lock(&s2.inbound).remove(&n);
            });
        let mut threads = lock(&s.threads);
        threads.retain(|h| !h.is_finished());
        match spawned {
            Ok(h) => threads.push(h),
            Err(_) => {
                lock(&s.inbound).remove(&n);
            }
        }
    }
}

/// Why a connection's reading stopped.
enum Stop {
    /// End of stream, an I/O error, or shutdown: not the peer's fault.
    Closed,
    /// The bytes were not our format.
    Corrupt,
}

fn read_loop(s: &Shared, mut stream: TcpStream) {
    if let Err(Stop::Corrupt) = read_frames(s, &mut stream) {
        bump(&s.stats.corrupt);
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn read_frames(s: &Shared, stream: &mut TcpStream) -> std::result::Result<(), Stop> {
    let mut pre = [0u8; 8];
    stream.read_exact(&mut pre).map_err(|_| Stop::Closed)?;
    if pre != PREAMBLE {
        return Err(Stop::Corrupt);
    }
    let mut sender: Option<NodeId> = None;
    let mut head = [0u8; FRAME_HEADER];
    loop {
        if s.stopping() {
            return Ok(());
        }
        stream.read_exact(&mut head).map_err(|_| Stop::Closed)?;
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let from = NodeId(u64::from_le_bytes(head[4..12].try_into().expect("8 bytes")));
        if len < 8 || len - 8 > s.opts.max_payload {
            return Err(Stop::Corrupt);
        }
        if sender.is_some_and(|f| f != from) || !s.is_peer(from) {
            return Err(Stop::Corrupt);
        }
        sender = Some(from);
        let mut payload = vec![0u8; len - 8];
        stream.read_exact(&mut payload).map_err(|_| Stop::Closed)?;
        let mut q = lock(&s.recv);
        while q.len() >= s.opts.recv_queue {
            if s.stopping() {
                return Ok(());
            }
            q = s.space.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        q.push_back(Frame { from, payload });
        drop(q);
        bump(&s.stats.received);
        s.data.notify_one();
    }
}

fn write_loop(s: &Shared, p: &Peer) {
    let mut conn: Option<BufWriter<TcpStream>> = None;
    let mut backoff = s.opts.backoff_min;
    loop {
        // Wait for something to send.
        let batch: Vec<Vec<u8>> = {
            let mut q = lock(&p.q);
            while q.frames.is_empty() && !q.closed && !s.stopping() {
                q = p.cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.closed || s.stopping() {
                return;
            }
            if conn.as_ref().is_some_and(|w| peer_closed(w.get_ref())) {
                // The peer closed its end (it stopped or restarted): writing now would put
                // the frames into a dead connection. Keep them queued and reconnect.
                conn = None;
                q.stream = None;
            }
            if conn.is_some() {
                q.frames.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        let Some(w) = conn.as_mut() else {
            match connect(s, p) {
                Ok(c) => {
                    backoff = s.opts.backoff_min;
                    conn = Some(c);
                }
                Err(()) => {
                    bump(&s.stats.connect_failures);
                    // Wait out the backoff; only removal or shutdown cuts it short.
                    let until = Instant::now() + backoff;
                    let mut q = lock(&p.q);
                    loop {
                        let left = until.saturating_duration_since(Instant::now());
                        if q.closed || s.stopping() || left.is_zero() {
                            break;
                        }
                        q =
                            p.cv.wait_timeout(q, left)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                    }
                    backoff = (backoff * 2).min(s.opts.backoff_max);
                }
            }
            continue;
        };
        let n = batch.len() as u64;
        let ok = batch.iter().all(|f| w.write_all(f).is_ok()) && w.flush().is_ok();
        if ok {
            s.stats.sent.fetch_add(n, Ordering::Relaxed);
        } else {
            s.stats.dropped.fetch_add(n, Ordering::Relaxed);
            conn = None;
            lock(&p.q).stream = None;
        }
    }
}

/// True when the peer closed the connection or it failed. The peer never writes on a
/// connection we dial, so anything but "would block" means it is gone (bytes from it are a
/// protocol error: treated as gone too).
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let gone = !matches!(stream.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_err() || gone
}

fn connect(s: &Shared, p: &Peer) -> std::result::Result<BufWriter<TcpStream>, ()> {
    let stream = TcpStream::connect_timeout(&p.addr, s.opts.connect_timeout).map_err(|_| ())?;
    let _ = stream.set_nodelay(true);
    let clone = stream.try_clone().map_err(|_| ())?;
    {
        let mut q = lock(&p.q);
        if q.closed || s.stopping() {
            return Err(());
        }
        q.stream = Some(clone);
    }
    let mut w = BufWriter::with_capacity(64 << 10, stream);
    w.write_all(&PREAMBLE).map_err(|_| ())?;
    bump(&s.stats.connects);
    Ok(w)
}

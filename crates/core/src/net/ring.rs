//! The ring transport: nodes in different processes on one host, each with an inbox ring.
//!
//! Node `n`'s inbox is the multi-producer ring `node.<n>.inbox` in a directory shared by the
//! cluster (a directory under `/dev/shm`, [`RingNetOptions::dir`]). A node creates (or, after
//! a restart, reopens) its own inbox and is its one consumer; a send opens the peer's inbox
//! once, caches the producer and writes one frame: a 16-byte header (magic, version, sender)
//! and the payload. `Full` from the peer's ring is the back-pressure answer.
//!
//! A receive validates every frame before it becomes a [`Frame`]: its length, the magic and
//! version, and that the sender is a configured peer; anything else is skipped and counted in
//! [`RingNetStats::corrupt`] (and in the ring's own `corrupt_frames`). A restarted node
//! resumes at the position its predecessor reached, so frames sent while it was down (up to
//! the ring's capacity; then senders get `Full`) are delivered to it.
//!
//! A peer whose inbox does not exist yet (not started) or cannot be opened yet (its creator
//! is sizing the file right now; a damaged file says so in the message) answers `Closed`: for
//! a protocol that is a lost message, like a host that is down.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{too_large, unknown_peer, Frame, NodeId, Transport};
use crate::error::{Error, ErrorKind, Result};
use crate::ring::{Consumer, Producer, Ring, RingOptions, WaitStrategy};
use crate::shm::SegmentOptions;

/// The first four bytes of every frame: "EMFn".
const MAGIC: u32 = u32::from_le_bytes(*b"EMFn");
/// The frame format's version.
const VERSION: u32 = 1;
/// Bytes before the payload: magic, version, sender id.
pub const HEADER_LEN: usize = 16;

/// How a node's inbox is made and used.
#[derive(Debug, Clone)]
pub struct RingNetOptions {
    /// The cluster's directory (every node of the cluster uses the same one).
    pub dir: PathBuf,
    /// The inbox ring's data capacity: a power of two from 4 KiB to 1 GiB. A payload may be
    /// up to a quarter of it, less the header.
    pub inbox_capacity: usize,
    /// Producer slots of the inbox: at least the number of peers that send to this node.
    pub max_producers: usize,
    /// A CRC32C on every frame, checked before delivery.
    pub checksum: bool,
    /// How [`Transport::recv_timeout`] waits.
    pub wait: WaitStrategy,
}

impl RingNetOptions {
    /// 1 MiB inboxes with room for 32 senders, in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> RingNetOptions {
        RingNetOptions {
            dir: dir.into(),
            inbox_capacity: 1 << 20,
            max_producers: 32,
            checksum: false,
            wait: WaitStrategy::default(),
        }
    }

    fn segment(&self) -> SegmentOptions {
        SegmentOptions {
            dir: self.dir.clone(),
            ..SegmentOptions::default()
        }
    }
}

/// The counters of one node's ring transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingNetStats {
    /// Frames written to peers' inboxes.
    pub sent: u64,
    /// Valid frames received.
    pub received: u64,
    /// Sends refused with `Full` (the peer's inbox).
    pub full: u64,
    /// Frames in the inbox that failed validation and were skipped.
    pub corrupt: u64,
}

/// The inbox ring name of node `id`.
pub fn inbox_name(id: NodeId) -> String {
    format!("node.{}.inbox", id.0)
}

/// Writes the frame header of a frame from `from` into `buf[..HEADER_LEN]`.
fn put_header(buf: &mut [u8], from: NodeId) {
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&VERSION.to_le_bytes());
    buf[8..16].copy_from_slice(&from.0.to_le_bytes());
}

/// Validates a frame read from the inbox: the sender, or why it is not a frame.
fn check_frame(frame: &[u8], peers: &BTreeSet<NodeId>) -> Result<NodeId> {
    if frame.len() < HEADER_LEN {
        return Err(Error::corrupt(format!(
            "a {}-byte frame is shorter than the {HEADER_LEN}-byte header",
            frame.len()
        )));
    }
    let word = |i: usize| u32::from_le_bytes(frame[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != MAGIC || word(4) != VERSION {
        return Err(Error::corrupt(format!(
            "frame header {:02x?} is not a version-{VERSION} net frame",
            &frame[..8]
        )));
    }
    let from = NodeId(u64::from_le_bytes(
        frame[8..16].try_into().expect("8 bytes"),
    ));
    if !peers.contains(&from) {
        return Err(Error::corrupt(format!(
            "a frame claims to come from {from}, which is not a peer"
        )));
    }
    Ok(from)
}

/// One node's end of the ring transport.
pub struct RingTransport {
    id: NodeId,
    opts: RingNetOptions,
    peers: BTreeSet<NodeId>,
    inbox: Consumer,
    producers: HashMap<NodeId, Producer>,
    /// A frame being assembled (header + payload) for a send.
    buf: Vec<u8>,
    stats: RingNetStats,
}

impl RingTransport {
    /// Node `id` of a cluster whose other members are `peers`: creates its inbox, or reopens
    /// it after a restart (resuming where the last consumer stopped). `Busy` while another
    /// live process is node `id`; `InvalidArgument` when `peers` contains `id`.
    pub fn open(id: NodeId, peers: &[NodeId], opts: RingNetOptions) -> Result<RingTransport> {
        if peers.contains(&id) {
            return Err(Error::invalid(format!("{id} lists itself among its peers")));
        }
        let name = inbox_name(id);
        let ring = match Ring::open(&name, &opts.segment()) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => Ring::create(
                &name,
                &RingOptions {
                    capacity: opts.inbox_capacity,
                    multi_producer: true,
                    max_producers: opts.max_producers,
                    checksum: opts.checksum,
                    ..RingOptions::in_dir(&opts.dir)
                },
            )?,
            Err(e) => return Err(e),
        };
        let inbox = ring.consumer()?;
        Ok(RingTransport {
            id,
            peers: peers.iter().copied().collect(),
            opts,
            inbox,
            producers: HashMap::new(),
            buf: Vec::new(),
            stats: RingNetStats::default(),
        })
    }

    /// Adds `id` to the peers this node sends to (a node that joined the cluster); adding a
    /// known peer does nothing. `InvalidArgument` for this node's own id.
    pub fn add_peer(&mut self, id: NodeId) -> Result<()> {
        if id == self.id {
            return Err(Error::invalid(format!("{id} cannot be its own peer")));
        }
        self.peers.insert(id);
        Ok(())
    }

    /// Forgets peer `id` (a node removed from the cluster): sends to it are `NotFound` again.
    /// True when it was a peer.
    pub fn remove_peer(&mut self, id: NodeId) -> bool {
        self.producers.remove(&id);
        self.peers.remove(&id)
    }

    /// Removes node `id`'s inbox from `opts.dir` (a node leaving the cluster for good).
    /// Senders holding it get `Closed` and drop it.
    pub fn remove_inbox(id: NodeId, opts: &RingNetOptions) -> Result<()> {
        let ring = Ring::inspect(&inbox_name(id), &opts.segment())?;
        ring.close();
        ring.unlink()
    }

    /// The counters.
    pub fn stats(&self) -> RingNetStats {
        self.stats
    }

    /// The configured peers.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.iter().copied()
    }

    /// The largest payload this node's inbox accepts (peers' inboxes made with the same
    /// options accept the same).
    pub fn max_payload(&self) -> usize {
        self.inbox.ring().max_payload() - HEADER_LEN
    }

    fn producer(&mut self, to: NodeId) -> Result<&mut Producer> {
        if !self.producers.contains_key(&to) {
            let ring = Ring::open(&inbox_name(to), &self.opts.segment()).map_err(|e| {
                match e.kind() {
                    ErrorKind::NotFound => Error::new(
                        ErrorKind::Closed,
                        format!(
                            "{to} has no inbox in {} (not started)",
                            self.opts.dir.display()
                        ),
                    ),
                    // `Segment::open` reads a file that its creator has made but not yet
                    // sized as too small: a peer starting right now. Nothing is cached, so
                    // the next send looks again; a file that stays damaged keeps saying so.
                    ErrorKind::Corrupt => Error::new(
                        ErrorKind::Closed,
                        format!("{to}'s inbox is not usable (starting, or damaged): {e}"),
                    ),
                    _ => e,
                }
            })?;
            self.producers.insert(to, ring.producer()?);
        }
        Ok(self.producers.get_mut(&to).expect("inserted"))
    }

    /// Takes frames from the inbox until a valid one (skipping and counting invalid ones).
    fn next_valid(&mut self) -> Result<Option<Frame>> {
        loop {
            let mut got: Option<Vec<u8>> = None;
            let n = self.inbox.poll(1, |f| got = Some(f.to_vec()))?;
            if n == 0 {
                return Ok(None);
            }
            let bytes = got.expect("one frame polled");
            match check_frame(&bytes, &self.peers) {
                Ok(from) => {
                    self.stats.received += 1;
                    let mut payload = bytes;
                    payload.drain(..HEADER_LEN);
                    return Ok(Some(Frame { from, payload }));
                }
                Err(_) => {
                    self.stats.corrupt += 1;
                    self.inbox.ring().count_corrupt_frame();
                }
            }
        }
    }
}

impl Transport for RingTransport {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn send(&mut self, to: NodeId, payload: &[u8]) -> Result<()> {
        if !self.peers.contains(&to) {
            return Err(unknown_peer(self.id, to));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(HEADER_LEN, 0);
        put_header(&mut buf, self.id);
        buf.extend_from_slice(payload);
        let id = self.id;
        let result = self.producer(to).and_then(|p| {
            let max = p.ring().max_payload();
            if buf.len() > max {
                return Err(too_large(
                    payload.len(),
                    max - HEADER_LEN,
                    "the peer's inbox",
                ));
            }
            p.send(&buf)
        });
        self.buf = buf;
        match &result {
            Ok(()) => self.stats.sent += 1,
            Err(e) if e.kind() == ErrorKind::Full => self.stats.full += 1,
            // The peer's inbox was closed (removed): forget it, the next send looks again.
            Err(e) if e.kind() == ErrorKind::Closed => {
                self.producers.remove(&to);
            }
            Err(_) => {}
        }
        result.map_err(|e| {
            if e.kind() == ErrorKind::Full {
                Error::new(
                    ErrorKind::Full,
                    format!("the inbox of {to} is full (sending from {id})"),
                )
            } else {
                e
            }
        })
    }

    fn try_recv(&mut self) -> Result<Option<Frame>> {
        self.next_valid()
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.next_valid()? {
                return Ok(Some(f));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.inbox.wait(self.opts.wait, left)? {
                return self.next_valid();
            }
        }
    }
}

impl std::fmt::Debug for RingTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingTransport")
            .field("id", &self.id)
            .field("dir", &self.opts.dir)
            .field("peers", &self.peers)
            .field("stats", &self.stats)
            .finish()
    }
}

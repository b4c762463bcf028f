//! Dissemination of agents' state: a versioned key → value map spread by push-pull gossip
//! with periodic anti-entropy, as a state machine without I/O.
//!
//! A [`Gossip`] is stepped by the caller: [`Gossip::handle`] for each datagram received,
//! [`Gossip::tick`] when [`Gossip::next_deadline_us`] is reached, [`Gossip::put`] /
//! [`Gossip::delete`] for local writes. Each returns the datagrams to send in `out`
//! ([`Datagram`]: a member id and bytes); none of it sends, sleeps or reads a clock.
//!
//! # Versions and conflicts
//!
//! Each key carries a Lamport [`Version`] `(counter, origin)`: a local write takes a counter
//! one above every counter this member has seen (on any key) and its own id as origin.
//! Versions are totally ordered by `(counter, origin)`; the greater one wins everywhere, so
//! concurrent writes to a key resolve the same way on every member whatever the order of
//! arrival. (Two different values with the same version can only come from a member that
//! restarted under the same id without its state; even then the greater value, bytewise,
//! wins, so members still agree.)
//!
//! Deletes write a **tombstone**: a version without a value. A later write (a greater
//! version) brings the key back — a `put` after a `delete` on any member that has seen the
//! tombstone always makes a greater version. A stale write (a smaller version) that arrives
//! after the tombstone loses. Tombstones are dropped `tombstone_ttl_us` after the delete:
//! a tombstone travels with its age (measured by each holder's own clock, so no clock sync is
//! needed; each hop adds its transit time), and every member drops it at about the same
//! moment, so members that dropped it do not fetch it back from one that has not yet. The
//! trade-off: memory for deleted keys against safety — a member that was away (partitioned,
//! paused) longer than the TTL and still holds the old value brings it back when it gossips
//! again. Keep the TTL well beyond the longest partition you want to heal without
//! resurrections (default: one hour). An expired tombstone still deletes an older value it
//! meets, and is dropped at the next tick.
//!
//! # Rounds
//!
//! Every `round_interval_us` a round picks `fan_out = min(ceil(log2 N) + 1, max_fan_out)`
//! random peers (N: the live members including this one) to **push** to, and a disjoint
//! random set of up to the same size to **pull** from. With few peers the push set leaves at
//! least one peer to pull from and the pull set gets what is left; with a single peer, that
//! peer is pushed to and pulled from.
//!
//! * A push carries recent updates: each update (a local write, or a remote one that changed
//!   this member's state) is pushed until it was sent to `retransmit_mult * ceil(log2(N+1))`
//!   peers — the memberlist retransmit limit, counted in peer-sends (by default one round's
//!   fan-out: the pulls do the rest; see [`GossipConfig::retransmit_mult`]). The least-sent updates
//!   go first; what does not fit one `max_datagram` push waits for the next round (pull and
//!   anti-entropy still carry it).
//! * A pull sends a digest: the keys' 64-bit hashes split into `2^bits` buckets by their top
//!   bits, each bucket the XOR of its entries' `(key hash, version)` fingerprints. A round's
//!   pull uses about `sqrt(3 n)` buckets for n entries (8 bytes a bucket in the digest
//!   against 25 bytes an entry in the summaries of a differing bucket; at most 2^10). The
//!   peer answers for each bucket that differs: entries outright where the puller's bucket is
//!   empty, else `(key hash, version)` summaries; the puller asks (`want`) for the hashes
//!   where the peer's version is greater and gets only those entries. Nothing the puller
//!   already has is sent as an entry. Members in agreement exchange one digest and nothing
//!   else.
//! * **Anti-entropy**: every `anti_entropy_interval_us`, a pull from one random peer with the
//!   finest digest that fits a datagram (up to 2^12 buckets at 60 kB), marked so the peer
//!   pulls back the same way: both sides end with the difference, nothing more.
//!
//! Everything is split to fit `max_datagram`; no datagram is ever built beyond it.
//!
//! # Input
//!
//! Datagrams are validated before use (see the wire module: version byte, kind, every count
//! and length checked before allocation, key and value sizes against the configured maxima);
//! a bad one is an error ([`ErrorKind::Corrupt`], [`ErrorKind::TooLarge`], or
//! [`ErrorKind::Unsupported`] for another wire version), counted in
//! [`GossipStats::rejected`], and changes nothing. A datagram from a member that is not in the
//! peer list is accepted: membership may lag behind (a member joining is heard before SWIM
//! reports it), and members of a gossip group trust each other; a host that wants to filter
//! does so by sender before calling [`Gossip::handle`].
//!
//! Key hashes are 64-bit (FNV-1a, then a mixer; part of the wire format). A collision of two
//! keys within a bucket can hide one of them from pull and anti-entropy (push still carries
//! it); with n keys the odds are about n² / 2^65.

pub mod sim;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

pub use wire::WIRE_VERSION;

use super::Datagram;
use crate::error::{Error, ErrorKind, Result};

/// The digest of a round's pull has at most 2^10 buckets (8 KiB).
const PULL_MAX_BITS: u8 = 10;
/// Bits of the kept bucket hashes (4096 buckets, 32 KiB).
const LEAF_BITS: u8 = 12;
/// Entries beyond which the bucket hashes are kept.
const LEAF_THRESHOLD: usize = 4096;
/// The smallest `max_datagram` accepted.
const MIN_DATAGRAM: usize = 64;

/// Settings of a [`Gossip`] member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipConfig {
    /// Microseconds between rounds (default 100 ms; works down to a few ms). Must be > 0.
    pub round_interval_us: u64,
    /// Microseconds between anti-entropy reconciliations with one random peer (default 10 s);
    /// 0 turns anti-entropy off.
    pub anti_entropy_interval_us: u64,
    /// The largest fan-out (default 10): a round pushes to
    /// `min(ceil(log2 N) + 1, max_fan_out)` peers and pulls from as many others. Must be > 0.
    pub max_fan_out: usize,
    /// The largest datagram built, in bytes (default 60 000); received ones beyond it are
    /// rejected. At least 64, and an entry of `max_key` and `max_value` bytes must fit.
    pub max_datagram: usize,
    /// The most bytes of entries and summaries sent in answer to one pull (default 1 MiB;
    /// at least `max_datagram`). A member with an empty store pulls everything from each of
    /// its pull peers at once; this bounds what each sends (starting at a random bucket, so
    /// the peers send different parts), and later rounds fetch the rest.
    pub max_pull_answer: usize,
    /// The largest key, in bytes (default 1 KiB); checked on put and on receive.
    pub max_key: usize,
    /// The largest value, in bytes (default 32 KiB); checked on put and on receive.
    pub max_value: usize,
    /// Microseconds a tombstone is kept after this member learned it (default one hour);
    /// see the module documentation for the trade-off.
    pub tombstone_ttl_us: u64,
    /// The retransmit multiplier (default 1): an update is pushed until it was sent to
    /// `retransmit_mult * ceil(log2(N + 1))` peers — with the default, one round's fan-out.
    /// Measured in the simulator (N = 16 to 1000, 0 to 30 % loss, single updates and bursts of
    /// 500): more pushes did not bring 99.99 % convergence any sooner, since each round's
    /// pull catches what pushes miss, and cost ~45 % more bytes per step. Must be > 0.
    pub retransmit_mult: u32,
    /// Seed of the random peer choices: the same seed, inputs and times give the same
    /// datagrams.
    pub seed: u64,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            round_interval_us: 100_000,
            anti_entropy_interval_us: 10_000_000,
            max_fan_out: 10,
            max_datagram: 60_000,
            max_pull_answer: 1 << 20,
            max_key: 1024,
            max_value: 32 * 1024,
            tombstone_ttl_us: 3_600_000_000,
            retransmit_mult: 1,
            seed: 0,
        }
    }
}

impl GossipConfig {
    /// Checks the settings: [`ErrorKind::InvalidArgument`] with what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.round_interval_us == 0 {
            return Err(Error::invalid("gossip round_interval_us must be > 0"));
        }
        if self.max_fan_out == 0 {
            return Err(Error::invalid("gossip max_fan_out must be > 0"));
        }
        if self.retransmit_mult == 0 {
            return Err(Error::invalid("gossip retransmit_mult must be > 0"));
        }
        if self.max_datagram < MIN_DATAGRAM || self.max_datagram > u32::MAX as usize {
            return Err(Error::invalid(format!(
                "gossip max_datagram {} is outside {MIN_DATAGRAM}..=2^32-1",
                self.max_datagram
            )));
        }
        if self.max_pull_answer < self.max_datagram {
            return Err(Error::invalid(format!(
                "gossip max_pull_answer {} is below max_datagram {}",
                self.max_pull_answer, self.max_datagram
            )));
        }
        let entry = wire::COUNTED_HEADER
            .saturating_add(wire::ENTRY_OVERHEAD)
            .saturating_add(self.max_key)
            .saturating_add(self.max_value);
        if entry > self.max_datagram {
            return Err(Error::invalid(format!(
                "gossip max_key {} + max_value {} + {} bytes of framing exceed max_datagram {}",
                self.max_key,
                self.max_value,
                wire::COUNTED_HEADER + wire::ENTRY_OVERHEAD,
                self.max_datagram
            )));
        }
        Ok(())
    }
}

/// A per-key Lamport version; the total order is `(counter, origin)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// The Lamport counter: one above every counter the writer had seen.
    pub counter: u64,
    /// The member that wrote it.
    pub origin: u64,
}

/// A key changed by a remote update, as [`Gossip::drain_changes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// Its new value; `None` when it was deleted.
    pub value: Option<Vec<u8>>,
    /// Its new version.
    pub version: Version,
}

/// Counters of a [`Gossip`] member, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Datagrams handed to [`Gossip::handle`].
    pub datagrams_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Datagrams returned to send.
    pub datagrams_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Datagrams rejected (garbage, truncated, oversized, another wire version).
    pub rejected: u64,
    /// Rounds run (by [`Gossip::tick`] or [`Gossip::round`]).
    pub rounds: u64,
    /// Anti-entropy reconciliations started.
    pub anti_entropy: u64,
    /// Push datagrams sent (one per peer).
    pub pushes: u64,
    /// Pull digests sent (one per peer, anti-entropy included).
    pub pulls: u64,
    /// Local writes (puts and deletes).
    pub local_writes: u64,
    /// Remote entries that changed this member's state.
    pub remote_applied: u64,
    /// Remote entries this member already had (or had newer).
    pub remote_stale: u64,
    /// Updates that did not fit a round's push and waited.
    pub push_deferred: u64,
    /// Tombstones dropped after their TTL.
    pub tombstones_dropped: u64,
    /// Pull answers cut short at `max_pull_answer` bytes (the rest goes in later rounds).
    pub answers_capped: u64,
}

/// One key's state.
#[derive(Debug, Clone)]
struct Item {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    version: Version,
    /// When a tombstone is dropped (this member's clock); `u64::MAX` for a value.
    expires_us: u64,
    /// Peers this version was pushed to.
    sends: u32,
}

/// A gossip member: see the module documentation.
#[derive(Debug)]
pub struct Gossip {
    id: u64,
    config: GossipConfig,
    peers: Vec<u64>,
    /// Items by key hash (a collision keeps both, rarely more than one).
    items: BTreeMap<u64, Vec<Item>>,
    live: usize,
    tombstones: usize,
    /// The greatest counter seen.
    clock: u64,
    /// Hashes with an item that may still be pushed.
    recent: BTreeSet<u64>,
    changes: BTreeMap<Vec<u8>, Change>,
    /// XOR of the fingerprints per 2^LEAF_BITS bucket, kept once the store grows beyond
    /// LEAF_THRESHOLD entries (digests then fold it instead of reading every entry).
    leaves: Option<Vec<u64>>,
    rng: u64,
    next_round_us: Option<u64>,
    next_anti_entropy_us: u64,
    next_gc_us: u64,
    stats: GossipStats,
    scratch: Vec<u64>,
}

/// The 64-bit hash of a key (FNV-1a, then the splitmix64 finaliser): part of the wire format.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h ^ key.len() as u64)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fingerprint of one entry in a bucket hash.
fn fingerprint(hash: u64, v: Version) -> u64 {
    mix(hash ^ mix(v.counter ^ mix(v.origin.wrapping_add(0x9E37_79B9_7F4A_7C15))))
}

fn bucket(hash: u64, bits: u8) -> usize {
    if bits == 0 {
        0
    } else {
        (hash >> (64 - bits as u32)) as usize
    }
}

/// `ceil(log2 n)` for n ≥ 1.
fn ceil_log2(n: usize) -> u32 {
    if n <= 1 {
        0
    } else {
        usize::BITS - (n - 1).leading_zeros()
    }
}

impl Gossip {
    /// A member named `id` with `config` ([`ErrorKind::InvalidArgument`] if it is not valid).
    pub fn new(id: u64, config: GossipConfig) -> Result<Self> {
        config.validate()?;
        let rng = mix(config.seed ^ mix(id));
        Ok(Gossip {
            id,
            config,
            peers: Vec::new(),
            items: BTreeMap::new(),
            live: 0,
            tombstones: 0,
            clock: 0,
            recent: BTreeSet::new(),
            changes: BTreeMap::new(),
            leaves: None,
            rng,
            next_round_us: None,
            next_anti_entropy_us: u64::MAX,
            next_gc_us: u64::MAX,
            stats: GossipStats::default(),
            scratch: Vec::new(),
        })
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The settings.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Sets the live members to gossip with (this member's own id is ignored; duplicates
    /// count once). Usually from SWIM's member list.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = u64>) {
        let id = self.id;
        self.peers = peers.into_iter().filter(|&p| p != id).collect();
        self.peers.sort_unstable();
        self.peers.dedup();
    }

    /// The peers, sorted.
    pub fn peers(&self) -> &[u64] {
        &self.peers
    }

    /// The fan-out of a round with the current peers: `min(ceil(log2 N) + 1, max_fan_out)`
    /// with N the peers plus this member.
    pub fn fan_out(&self) -> usize {
        let n = self.peers.len() + 1;
        (ceil_log2(n) as usize + 1).min(self.config.max_fan_out)
    }

    /// Peer-sends an update gets: `retransmit_mult * ceil(log2(N + 1))`.
    pub fn retransmit_limit(&self) -> u32 {
        let n = self.peers.len() + 1;
        self.config
            .retransmit_mult
            .saturating_mul(ceil_log2(n + 1).max(1))
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.len() > self.config.max_key {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "gossip key of {} bytes, the maximum is {}",
                    key.len(),
                    self.config.max_key
                ),
            ));
        }
        Ok(())
    }

    fn next_version(&mut self) -> Result<Version> {
        let counter = self.clock.checked_add(1).ok_or_else(|| {
            Error::new(ErrorKind::TooLarge, "gossip Lamport counter would overflow")
        })?;
        Ok(Version {
            counter,
            origin: self.id,
        })
    }

    /// Writes `key` → `value` locally with a new version (greater than every version this
    /// member has seen) and queues it for the next pushes. [`ErrorKind::TooLarge`] for a key
    /// or value beyond the maxima.
    pub fn put(&mut self, key: &[u8], value: &[u8], now_us: u64) -> Result<Version> {
        self.check_key(key)?;
        if value.len() > self.config.max_value {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "gossip value of {} bytes, the maximum is {}",
                    value.len(),
                    self.config.max_value
                ),
            ));
        }
        let version = self.next_version()?;
        self.merge(key, Some(value), version, 0, now_us);
        self.changes.remove(key);
        self.stats.local_writes += 1;
        Ok(version)
    }

    /// Deletes `key`: writes a tombstone with a new version and queues it for the next
    /// pushes. `None` (and nothing written) when this member has no value for the key.
    pub fn delete(&mut self, key: &[u8], now_us: u64) -> Result<Option<Version>> {
        self.check_key(key)?;
        if self.get(key).is_none() {
            return Ok(None);
        }
        let version = self.next_version()?;
        self.merge(key, None, version, 0, now_us);
        self.changes.remove(key);
        self.stats.local_writes += 1;
        Ok(Some(version))
    }

    fn item(&self, key: &[u8]) -> Option<&Item> {
        self.items
            .get(&key_hash(key))
            .and_then(|slot| slot.iter().find(|i| i.key == key))
    }

    /// The value of `key`; `None` when absent or deleted.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.item(key).and_then(|i| i.value.as_deref())
    }

    /// The version of `key`, tombstones included; `None` when unknown (or its tombstone was
    /// dropped).
    pub fn version(&self, key: &[u8]) -> Option<Version> {
        self.item(key).map(|i| i.version)
    }

    /// Keys with a value (tombstones not counted).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Tombstones kept.
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// The keys with a value and their values, in key-hash order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.items
            .values()
            .flatten()
            .filter_map(|i| i.value.as_deref().map(|v| (i.key.as_slice(), v)))
    }

    /// Merges a version of `key` (a tombstone `age_us` old); true if it changed this
    /// member's state.
    fn merge(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        version: Version,
        age_us: u64,
        now_us: u64,
    ) -> bool {
        self.clock = self.clock.max(version.counter);
        let hash = key_hash(key);
        let ttl = self.config.tombstone_ttl_us;
        let expires_us = match value {
            Some(_) => u64::MAX,
            None => now_us.saturating_add(ttl.saturating_sub(age_us)),
        };
        let slot = self.items.entry(hash).or_default();
        let (was_live, was_tomb) = match slot.iter_mut().find(|i| i.key == key) {
            Some(it) => {
                let newer = match version.cmp(&it.version) {
                    std::cmp::Ordering::Greater => true,
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal => value > it.value.as_deref(),
                };
                if !newer {
                    return false;
                }
                let was = (it.value.is_some(), it.value.is_none());
                if let Some(l) = self.leaves.as_mut() {
                    l[bucket(hash, LEAF_BITS)] ^=
                        fingerprint(hash, it.version) ^ fingerprint(hash, version);
                }
                it.value = value.map(<[u8]>::to_vec);
                it.version = version;
                it.expires_us = expires_us;
                it.sends = 0;
                was
            }
            None if value.is_none() && age_us >= ttl => {
                // An expired tombstone of a key this member does not hold: nothing to keep.
                if slot.is_empty() {
                    self.items.remove(&hash);
                }
                return false;
            }
            None => {
                if let Some(l) = self.leaves.as_mut() {
                    l[bucket(hash, LEAF_BITS)] ^= fingerprint(hash, version);
                }
                slot.push(Item {
                    key: key.to_vec(),
                    value: value.map(<[u8]>::to_vec),
                    version,
                    expires_us,
                    sends: 0,
                });
                (false, false)
            }
        };
        self.live = self.live + value.is_some() as usize - was_live as usize;
        self.tombstones = self.tombstones + value.is_none() as usize - was_tomb as usize;
        if self.leaves.is_none() && self.live + self.tombstones > LEAF_THRESHOLD {
            self.leaves = Some(self.compute_digest(LEAF_BITS));
        }
        self.next_gc_us = self.next_gc_us.min(expires_us);
        self.recent.insert(hash);
        true
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.rng)
    }

    fn emit(&mut self, to: u64, payload: Vec<u8>, out: &mut Vec<Datagram>) {
        debug_assert!(payload.len() <= self.config.max_datagram);
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        out.push(Datagram { to, payload });
    }

    /// Handles a datagram from member `from`: merges what it carries and answers pulls and
    /// wants. A bad datagram is an error ([`ErrorKind::Corrupt`], [`ErrorKind::TooLarge`],
    /// [`ErrorKind::Unsupported`]), counted, and changes nothing.
    pub fn handle(
        &mut self,
        from: u64,
        payload: &[u8],
        now_us: u64,
        out: &mut Vec<Datagram>,
    ) -> Result<()> {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += payload.len() as u64;
        let r = self.handle_inner(from, payload, now_us, out);
        if r.is_err() {
            self.stats.rejected += 1;
        }
        r
    }

    fn handle_inner(
        &mut self,
        from: u64,
        payload: &[u8],
        now_us: u64,
        out: &mut Vec<Datagram>,
    ) -> Result<()> {
        if payload.len() > self.config.max_datagram {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "gossip datagram of {} bytes, the maximum is {}",
                    payload.len(),
                    self.config.max_datagram
                ),
            ));
        }
        match wire::decode(payload, self.config.max_key, self.config.max_value)? {
            wire::Message::Push(entries) => {
                for e in entries {
                    let was_live = self.get(e.key).is_some();
                    if self.merge(e.key, e.value, e.version, e.age_us, now_us) {
                        self.stats.remote_applied += 1;
                        if !was_live && e.value.is_none() {
                            // A tombstone of a key this member did not show: no change.
                            continue;
                        }
                        self.changes.insert(
                            e.key.to_vec(),
                            Change {
                                key: e.key.to_vec(),
                                value: e.value.map(<[u8]>::to_vec),
                                version: e.version,
                            },
                        );
                    } else {
                        self.stats.remote_stale += 1;
                    }
                }
            }
            wire::Message::Pull { full, bits, hashes } => {
                self.answer_pull(from, bits, &hashes, now_us, out);
                if full {
                    // Anti-entropy: pull back so both sides end with the difference.
                    let bits = self.fine_bits();
                    self.send_pull(from, false, bits, out);
                }
            }
            wire::Message::Summaries(summaries) => {
                let mut want = wire::Chunker::new(wire::KIND_WANT, self.config.max_datagram);
                for (hash, version) in summaries {
                    let have = self
                        .items
                        .get(&hash)
                        .is_some_and(|slot| slot.iter().any(|i| i.version >= version));
                    if !have {
                        want.element(8).extend_from_slice(&hash.to_le_bytes());
                    }
                }
                for p in want.finish() {
                    self.emit(from, p, out);
                }
            }
            wire::Message::Want(hashes) => {
                let mut push = wire::Chunker::new(wire::KIND_PUSH, self.config.max_datagram);
                for hash in hashes {
                    if let Some(slot) = self.items.get(&hash) {
                        for i in slot {
                            self.put_item(push.element(self.item_len(i)), i, now_us);
                        }
                    }
                }
                for p in push.finish() {
                    self.emit(from, p, out);
                }
            }
        }
        Ok(())
    }

    /// The encoded size of an item.
    fn item_len(&self, i: &Item) -> usize {
        wire::entry_len(&i.key, i.value.as_deref())
    }

    /// Encodes an item, a tombstone with its age now (so it expires everywhere about
    /// `tombstone_ttl_us` after the delete, however it travelled).
    fn put_item(&self, buf: &mut Vec<u8>, i: &Item, now_us: u64) {
        let age = self
            .config
            .tombstone_ttl_us
            .saturating_sub(i.expires_us.saturating_sub(now_us));
        wire::put_entry(buf, i.version, &i.key, i.value.as_deref(), age);
    }

    /// Bucket hashes of the items at `bits`, from every entry.
    fn compute_digest(&self, bits: u8) -> Vec<u64> {
        let mut d = vec![0u64; 1usize << bits];
        for (&hash, slot) in &self.items {
            for i in slot {
                d[bucket(hash, bits)] ^= fingerprint(hash, i.version);
            }
        }
        d
    }

    /// Bucket hashes of the items at `bits`: folded from the kept ones when there are.
    fn digest(&self, bits: u8) -> Vec<u64> {
        match &self.leaves {
            Some(leaves) if bits <= LEAF_BITS => {
                let mut d = vec![0u64; 1usize << bits];
                let shift = LEAF_BITS - bits;
                for (i, l) in leaves.iter().enumerate() {
                    d[i >> shift] ^= l;
                }
                d
            }
            _ => self.compute_digest(bits),
        }
    }

    /// The key hashes of bucket `b` of `2^bits`.
    fn bucket_range(b: usize, bits: u8) -> std::ops::RangeInclusive<u64> {
        if bits == 0 {
            return 0..=u64::MAX;
        }
        let shift = 64 - bits as u32;
        let lo = (b as u64) << shift;
        lo..=lo | (u64::MAX >> bits)
    }

    /// Answers a pull: entries for the puller's empty buckets, summaries for the others that
    /// differ.
    fn answer_pull(
        &mut self,
        from: u64,
        bits: u8,
        theirs: &[u64],
        now_us: u64,
        out: &mut Vec<Datagram>,
    ) {
        let ours = self.digest(bits);
        let max = self.config.max_datagram;
        let cap = self.config.max_pull_answer;
        let mut push = wire::Chunker::new(wire::KIND_PUSH, max);
        let mut sums = wire::Chunker::new(wire::KIND_SUMMARIES, max);
        // Start at a random key hash: members answering the same puller (a new member pulls
        // from several at once) send different parts when the cap cuts the answer short.
        let r = self.next_random();
        let nb = ours.len();
        let b0 = bucket(r, bits);
        let mut bytes = 0usize;
        let mut capped = false;
        'buckets: for k in 0..=nb {
            let b = (b0 + k) % nb;
            if ours[b] == theirs[b] {
                continue;
            }
            let full = Self::bucket_range(b, bits);
            let range = if k == 0 {
                r..=*full.end()
            } else if k == nb {
                // The start bucket's first part, below r.
                if r == *full.start() {
                    continue;
                }
                *full.start()..=r - 1
            } else {
                full
            };
            for (&hash, slot) in self.items.range(range) {
                for i in slot {
                    let len = if theirs[b] == 0 {
                        self.item_len(i)
                    } else {
                        wire::SUMMARY_LEN
                    };
                    if bytes + len > cap {
                        capped = true;
                        break 'buckets;
                    }
                    bytes += len;
                    if theirs[b] == 0 {
                        self.put_item(push.element(len), i, now_us);
                    } else {
                        let buf = sums.element(wire::SUMMARY_LEN);
                        buf.extend_from_slice(&hash.to_le_bytes());
                        buf.extend_from_slice(&i.version.counter.to_le_bytes());
                        buf.extend_from_slice(&i.version.origin.to_le_bytes());
                    }
                }
            }
        }
        self.stats.answers_capped += capped as u64;
        for p in push.finish().into_iter().chain(sums.finish()) {
            self.emit(from, p, out);
        }
    }

    /// Digest bits for anti-entropy: about one entry per bucket, as many as fit a datagram.
    fn fine_bits(&self) -> u8 {
        let n = self.live + self.tombstones;
        let mut bits = (ceil_log2(n.max(1)) as u8).min(wire::MAX_BITS);
        while bits > 0 && wire::PULL_HEADER + (8usize << bits) > self.config.max_datagram {
            bits -= 1;
        }
        bits
    }

    /// Digest bits for a round's pull: about sqrt(3 n) buckets (which balances the digest's
    /// 8 bytes a bucket against the 25-byte summaries of a differing bucket), at most 2^10.
    fn coarse_bits(&self) -> u8 {
        let n = self.live + self.tombstones;
        let bits = (ceil_log2(n.max(1)) / 2 + 1) as u8;
        self.fine_bits().min(bits).min(PULL_MAX_BITS)
    }

    fn send_pull(&mut self, to: u64, full: bool, bits: u8, out: &mut Vec<Datagram>) {
        let payload = wire::pull(full, bits, &self.digest(bits));
        self.stats.pulls += 1;
        self.emit(to, payload, out);
    }

    /// Picks `k` distinct random peers into the front of `scratch`.
    fn shuffle_front(&mut self, k: usize) {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        s.extend_from_slice(&self.peers);
        let k = k.min(s.len());
        for i in 0..k {
            let j = i + (self.next_random() % (s.len() - i) as u64) as usize;
            s.swap(i, j);
        }
        self.scratch = s;
    }

    /// The push set and the pull set of a round, advancing the random generator: disjoint,
    /// `fan_out` peers each when there are enough, else the push set leaves at least one peer
    /// to pull from. With a single peer both are that peer.
    fn pick_sets(&mut self) -> (Vec<u64>, Vec<u64>) {
        let f = self.fan_out();
        let n = self.peers.len();
        if n == 1 {
            return (self.peers.clone(), self.peers.clone());
        }
        let push_n = f.min(n - 1);
        let pull_n = f.min(n - push_n);
        self.shuffle_front(push_n + pull_n);
        let push = self.scratch[..push_n].to_vec();
        let pull = self.scratch[push_n..push_n + pull_n].to_vec();
        (push, pull)
    }

    /// Runs one push-pull round now: pushes recent updates to `fan_out` random peers and
    /// sends a digest to as many others (Erlang `gossip_round/1`). Does not move the
    /// schedule of [`Gossip::tick`].
    pub fn round(&mut self, now_us: u64, out: &mut Vec<Datagram>) {
        self.stats.rounds += 1;
        if self.peers.is_empty() {
            return;
        }
        let (push_set, pull_set) = self.pick_sets();
        if !push_set.is_empty() && !self.recent.is_empty() {
            if let Some(payload) = self.build_push(push_set.len() as u32, now_us) {
                for &p in &push_set {
                    self.stats.pushes += 1;
                    self.emit(p, payload.clone(), out);
                }
            }
        }
        if !pull_set.is_empty() {
            let bits = self.coarse_bits();
            let payload = wire::pull(false, bits, &self.digest(bits));
            for &p in &pull_set {
                self.stats.pulls += 1;
                self.emit(p, payload.clone(), out);
            }
        }
    }

    /// One push datagram of the least-sent recent updates; counts `sends` peer-sends for
    /// each included update.
    fn build_push(&mut self, sends: u32, now_us: u64) -> Option<Vec<u8>> {
        let limit = self.retransmit_limit();
        let mut candidates: Vec<(u32, u64, usize)> = Vec::new();
        let mut done = Vec::new();
        for &hash in &self.recent {
            let mut any = false;
            if let Some(slot) = self.items.get(&hash) {
                for (idx, i) in slot.iter().enumerate() {
                    if i.sends < limit {
                        candidates.push((i.sends, hash, idx));
                        any = true;
                    }
                }
            }
            if !any {
                done.push(hash);
            }
        }
        for h in done {
            self.recent.remove(&h);
        }
        candidates.sort_unstable();
        let max = self.config.max_datagram;
        let mut buf = Vec::new();
        let mut count = 0u32;
        buf.extend_from_slice(&[wire::WIRE_VERSION, wire::KIND_PUSH, 0, 0, 0, 0]);
        for (_, hash, idx) in candidates {
            let Some(i) = self.items.get(&hash).and_then(|s| s.get(idx)) else {
                continue;
            };
            if buf.len() + self.item_len(i) > max {
                self.stats.push_deferred += 1;
                continue;
            }
            self.put_item(&mut buf, i, now_us);
            if let Some(i) = self.items.get_mut(&hash).and_then(|s| s.get_mut(idx)) {
                i.sends = i.sends.saturating_add(sends);
            }
            count += 1;
        }
        if count == 0 {
            return None;
        }
        buf[2..6].copy_from_slice(&count.to_le_bytes());
        Some(buf)
    }

    /// Starts an anti-entropy reconciliation with one random peer now (nothing without
    /// peers).
    pub fn anti_entropy(&mut self, _now_us: u64, out: &mut Vec<Datagram>) {
        if self.peers.is_empty() {
            return;
        }
        self.stats.anti_entropy += 1;
        let r = self.next_random() % self.peers.len() as u64;
        let to = self.peers[r as usize];
        let bits = self.fine_bits();
        self.send_pull(to, true, bits, out);
    }

    /// Runs what is due at `now_us`: a round every `round_interval_us`, anti-entropy every
    /// `anti_entropy_interval_us`, and drops expired tombstones. The first call schedules the
    /// first round at a random point within one interval (so members started together do not
    /// gossip in lockstep) and the first anti-entropy within one to 1.5 intervals.
    pub fn tick(&mut self, now_us: u64, out: &mut Vec<Datagram>) {
        let interval = self.config.round_interval_us;
        let Some(next_round) = self.next_round_us else {
            self.next_round_us = Some(now_us + self.next_random() % interval);
            let ae = self.config.anti_entropy_interval_us;
            if ae > 0 {
                self.next_anti_entropy_us =
                    now_us.saturating_add(ae / 2 + self.next_random() % (ae / 2 + 1));
            }
            return self.tick(now_us, out);
        };
        if now_us >= next_round {
            self.round(now_us, out);
            let next = next_round.saturating_add(interval);
            self.next_round_us = Some(if next > now_us {
                next
            } else {
                now_us.saturating_add(interval)
            });
        }
        if now_us >= self.next_anti_entropy_us {
            self.anti_entropy(now_us, out);
            let ae = self.config.anti_entropy_interval_us;
            let next = self.next_anti_entropy_us.saturating_add(ae);
            self.next_anti_entropy_us = if next > now_us {
                next
            } else {
                now_us.saturating_add(ae)
            };
        }
        if now_us >= self.next_gc_us {
            self.drop_tombstones(now_us);
        }
    }

    fn drop_tombstones(&mut self, now_us: u64) {
        let mut next = u64::MAX;
        let mut dropped = 0;
        let mut leaves = self.leaves.take();
        self.items.retain(|&hash, slot| {
            slot.retain(|i| {
                if i.value.is_some() {
                    return true;
                }
                let expiry = i.expires_us;
                if expiry <= now_us {
                    if let Some(l) = leaves.as_mut() {
                        l[bucket(hash, LEAF_BITS)] ^= fingerprint(hash, i.version);
                    }
                    dropped += 1;
                    false
                } else {
                    next = next.min(expiry);
                    true
                }
            });
            !slot.is_empty()
        });
        self.leaves = leaves;
        self.tombstones -= dropped;
        self.stats.tombstones_dropped += dropped as u64;
        self.next_gc_us = next;
    }

    /// When [`Gossip::tick`] next has work (microseconds, the caller's clock); 0 before the
    /// first tick.
    pub fn next_deadline_us(&self) -> u64 {
        match self.next_round_us {
            None => 0,
            Some(r) => r.min(self.next_anti_entropy_us).min(self.next_gc_us),
        }
    }

    /// Keys whose value remote updates changed since the last call, each once with its latest
    /// state, in key order: a new value, or `None` for a key deleted. Bounded by the number of
    /// keys. Local writes are not reported, and a local write drops a pending remote change
    /// of its key (this member's writer knows the newer state); a tombstone for a key this
    /// member did not show is not a change.
    pub fn drain_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes).into_values().collect()
    }

    /// The counters.
    pub fn stats(&self) -> GossipStats {
        self.stats
    }
}

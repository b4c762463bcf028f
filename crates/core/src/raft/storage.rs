//! The Raft log store: the entries, `HardState`, `ConfState` and the latest snapshot, in memory
//! and (for [`LogStorage::open`]) in a directory on disk.
//!
//! # On disk
//!
//! A data directory holds two files:
//!
//! * `log` — an 8-byte magic (`EMFRLOG1`) followed by records, each
//!   `[len: u32 LE][crc32c: u32 LE][kind: u8][payload: len bytes]`; the CRC covers the kind byte
//!   and the payload. Kinds: an entry (protobuf `Entry`; an entry at index *i* replaces the
//!   entries from *i* on, which is how a follower's conflicting suffix is truncated), a
//!   `HardState`, a `ConfState` with the index of the configuration change that produced it
//!   (kind 5; kind 3, a bare `ConfState`, is read as index 0), and a base mark (the snapshot
//!   index and term the entries follow).
//!   Records are appended to a buffer and written with ONE `write` + `fdatasync` per
//!   [`LogStorage::sync`] — the node calls it once per Ready, however many entries it holds
//!   (group commit).
//! * `snapshot` — an 8-byte magic (`EMFRSNP1`), `[len: u64 LE][crc32c: u32 LE]` and the protobuf
//!   `Snapshot` (metadata: index, term, ConfState; data: the state machine's bytes). It is
//!   written to `snapshot.tmp`, synced, renamed over `snapshot`, and the directory synced.
//!
//! Compaction (after a snapshot) and installing a received snapshot rewrite the log the same
//! way (`log.tmp`, sync, rename, directory sync): the log file is always the old one or the new
//! one, never a mix. A snapshot written in the background ([`LogStorage::begin_snapshot`],
//! what a node does by default) leaves the entries it covers in the log file until the file
//! reaches [`DEFAULT_COMPACT_BYTES`]: the replay drops entries a newer snapshot covers, so the
//! file is a valid log either way, and most snapshots cost the node's loop no `fdatasync`.
//!
//! # Recovery
//!
//! [`LogStorage::open`] replays the log. A bad record (short header, a length past the end of
//! the file, a CRC mismatch, bytes that do not decode) ends the replay:
//!
//! * if no valid record follows it anywhere in the file, it is a torn write (the tail of the
//!   last group commit, never acknowledged because its `fdatasync` did not return): the file is
//!   truncated to the last good record, synced, and [`Recovery::truncated_bytes`] says how much
//!   was cut;
//! * if a valid record follows it, good data lies beyond a damaged one (a flipped bit, not a
//!   torn write): the open fails with [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt) naming
//!   the offset — cutting there would silently lose acknowledged entries.
//!
//! The search for a later valid record tries every byte offset of the rest of the file; it
//! costs O(rest × record size) in the worst case, and runs only when a bad record is found.
//! After the replay the state is checked (entries contiguous after the base, `commit` within
//! the log, the snapshot file consistent with the log, configurations raft-rs can restore,
//! entry terms ≥ 1 and never decreasing): a violation is `Corrupt` too, never a panic inside
//! raft-rs. A damaged `snapshot` file is `Corrupt` (there is nothing to truncate to: the log
//! before it was compacted away).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::checksum::{crc32c, crc32c_append};
use crate::{Error, ErrorKind, Result};

const LOG_MAGIC: &[u8; 8] = b"EMFRLOG1";
const SNAP_MAGIC: &[u8; 8] = b"EMFRSNP1";
const LOG_FILE: &str = "log";
const SNAP_FILE: &str = "snapshot";
const HEADER: usize = 9;
/// The largest record the replay accepts (a bigger length is damage, not a record).
const MAX_RECORD: usize = 256 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
/// A bare ConfState (read as the configuration at index 0; no longer written).
const KIND_CONF_STATE: u8 = 3;
const KIND_BASE: u8 = 4;
/// A ConfState with its index: `[index: u64 LE][ConfState protobuf]`.
const KIND_CONF_AT: u8 = 5;

/// What [`LogStorage::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records replayed from the log.
    pub records: u64,
    /// Bytes cut from the end of the log (a torn last write); 0 when the log was intact.
    pub truncated_bytes: u64,
    /// Entries of the log dropped because a newer snapshot covers them.
    pub entries_dropped: u64,
}

/// What one [`LogStorage::sync`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// `fdatasync` calls made (0 or 1; always 0 in memory).
    pub syncs: u64,
}

struct Disk {
    dir: PathBuf,
    log: File,
    /// Encoded records not yet written (the group commit's buffer).
    pending: Vec<u8>,
    pending_records: u64,
    /// The log file's length in bytes.
    len: u64,
    /// After a snapshot written in the background, the log file is rewritten without the
    /// entries it covers only once it has grown to this many bytes (see
    /// [`LogStorage::set_compact_bytes`]).
    compact_bytes: u64,
}

/// [`LogStorage::set_compact_bytes`]'s default: 64 MiB.
pub const DEFAULT_COMPACT_BYTES: u64 = 64 << 20;

/// Raft's log store, in memory or backed by a data directory; implements [`raft::Storage`].
///
/// The node writes to it through [`append`](Self::append), [`set_hard_state`](Self::set_hard_state),
/// [`set_conf_state`](Self::set_conf_state), [`apply_snapshot`](Self::apply_snapshot) and
/// [`create_snapshot`](Self::create_snapshot); every change is visible at once to raft-rs and
/// durable after the next [`sync`](Self::sync) (for a directory-backed store).
pub struct LogStorage {
    hard: HardState,
    conf: ConfState,
    /// The log index of the configuration change `conf` results from (0: the bootstrap
    /// configuration; the snapshot index after a snapshot was installed).
    conf_index: u64,
    snapshot: Snapshot,
    /// `entries[k].index == snapshot index + 1 + k`.
    entries: Vec<Entry>,
    disk: Option<Disk>,
    recovery: Recovery,
    /// A snapshot being written by a background thread ([`LogStorage::begin_snapshot`]).
    writing: Option<SnapshotWrite>,
}

/// A snapshot file being written in the background: the thread hands the snapshot back when
/// the file is durable.
struct SnapshotWrite {
    index: u64,
    thread: std::thread::JoinHandle<Result<Snapshot>>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("raft storage: {what} {}: {e}", path.display()),
    )
}

fn encode<M: protobuf::Message>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| Error::invalid(format!("raft storage: cannot encode a record: {e}")))
}

fn push_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let crc = crc32c_append(crc32c(&[kind]), payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// Parses the record at `off`; `None` when it is not a whole, checksummed, known record.
fn parse_record(buf: &[u8], off: usize) -> Option<(u8, &[u8], usize)> {
    let head = buf.get(off..off.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let kind = head[8];
    if len > MAX_RECORD || !(KIND_ENTRY..=KIND_CONF_AT).contains(&kind) {
        return None;
    }
    let end = off + HEADER + len;
    let payload = buf.get(off + HEADER..end)?;
    (crc32c_append(crc32c(&[kind]), payload) == crc).then_some((kind, payload, end))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync the directory", dir, e))
}

/// Writes `bytes` to `dir/name` through `name.tmp`, a sync, a rename and a directory sync.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<File> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| io_err("cannot write", &tmp, e))?;
    f.sync_data().map_err(|e| io_err("cannot sync", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_err("cannot rename over", &path, e))?;
    sync_dir(dir)?;
    Ok(f)
}

/// Writes `snap` as `dir/snapshot` (see the module documentation), durably.
fn write_snapshot(dir: &Path, snap: &Snapshot) -> Result<()> {
    let body = encode(snap)?;
    let mut bytes = SNAP_MAGIC.to_vec();
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    drop(write_atomic(dir, SNAP_FILE, &bytes)?);
    Ok(())
}

impl LogStorage {
    /// An empty in-memory store (nothing survives the process). The node bootstraps it with
    /// its configured voters.
    pub fn memory() -> LogStorage {
        LogStorage {
            hard: HardState::default(),
            conf: ConfState::default(),
            conf_index: 0,
            snapshot: Snapshot::default(),
            entries: Vec::new(),
            disk: None,
            recovery: Recovery::default(),
            writing: None,
        }
    }

    /// Opens (creating if needed) the store in directory `dir` and recovers its state (see the
    /// module documentation): a torn tail is truncated, other damage is
    /// [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt), I/O failures are
    /// [`ErrorKind::Io`](crate::ErrorKind::Io).
    pub fn open(dir: impl AsRef<Path>) -> Result<LogStorage> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        for stale in ["log.tmp", "snapshot.tmp"] {
            let _ = fs::remove_file(dir.join(stale));
        }
        let mut st = LogStorage::memory();
        st.read_snapshot(&dir)?;

        let path = dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)
                    .map_err(|e| io_err("cannot read", &path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot open", &path, e)),
        }
        let log = if bytes.len() < LOG_MAGIC.len() {
            // No log, or one torn before its magic was whole: start it again.
            st.recovery.truncated_bytes = bytes.len() as u64;
            let mut init = LOG_MAGIC.to_vec();
            st.encode_state(&mut init)?;
            write_atomic(&dir, LOG_FILE, &init)?;
            OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io_err("cannot open", &path, e))?
        } else {
            if &bytes[..8] != LOG_MAGIC {
                return Err(Error::corrupt(format!(
                    "raft storage: {} is not a raft log (bad magic)",
                    path.display()
                )));
            }
            let good = st.replay(&bytes, &path)?;
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io_err("cannot open", &path, e))?;
            if good < bytes.len() {
                f.set_len(good as u64)
                    .map_err(|e| io_err("cannot truncate", &path, e))?;
                f.sync_all().map_err(|e| io_err("cannot sync", &path, e))?;
                st.recovery.truncated_bytes = (bytes.len() - good) as u64;
            }
            f
        };
        st.check(&path)?;
        let len = log
            .metadata()
            .map_err(|e| io_err("cannot stat", &path, e))?
            .len();
        st.disk = Some(Disk {
            dir,
            log,
            pending: Vec::new(),
            pending_records: 0,
            len,
            compact_bytes: DEFAULT_COMPACT_BYTES,
        });
        Ok(st)
    }

    fn read_snapshot(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(SNAP_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        let bad = |why: &str| {
            Error::corrupt(format!(
                "raft storage: snapshot {} is damaged: {why}",
                path.display()
            ))
        };
        if bytes.len() < 20 || &bytes[..8] != SNAP_MAGIC {
            return Err(bad("bad magic or short header"));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(bytes[16..20].try_into().unwrap_or_default());
        if len != (bytes.len() - 20) as u64 {
            return Err(bad("length does not match the file"));
        }
        if crc32c(&bytes[20..]) != crc {
            return Err(bad("checksum mismatch"));
        }
        let snap = Snapshot::parse_from_bytes(&bytes[20..]).map_err(|e| bad(&e.to_string()))?;
        self.conf = snap.get_metadata().get_conf_state().clone();
        self.conf_index = snap.get_metadata().index;
        self.snapshot = snap;
        Ok(())
    }

    /// Replays the log records over the snapshot; returns the offset after the last good one.
    fn replay(&mut self, bytes: &[u8], path: &Path) -> Result<usize> {
        let snap_index = self.snapshot_index();
        let snap_term = self.snapshot.get_metadata().term;
        // The log's own view: its base mark and its entries (which may predate the snapshot
        // file if a crash came between writing the snapshot and rewriting the log).
        let mut base = (0u64, 0u64);
        let mut entries: Vec<Entry> = Vec::new();
        let mut off = LOG_MAGIC.len();
        while off < bytes.len() {
            let Some((kind, payload, end)) = parse_record(bytes, off) else {
                // A bad record: torn tail, or damage with good data after it?
                if let Some(later) =
                    (off + 1..bytes.len()).find(|&o| parse_record(bytes, o).is_some())
                {
                    return Err(Error::corrupt(format!(
                        "raft storage: {} is damaged at byte {off} and a valid record follows at \
                         byte {later}; refusing to truncate acknowledged entries",
                        path.display()
                    )));
                }
                break;
            };
            let bad = |e: protobuf::ProtobufError| {
                Error::corrupt(format!(
                    "raft storage: {}: record at byte {off} does not decode: {e}",
                    path.display()
                ))
            };
            match kind {
                KIND_ENTRY => {
                    let e = Entry::parse_from_bytes(payload).map_err(bad)?;
                    let next = base.0 + 1 + entries.len() as u64;
                    if e.index <= base.0 || e.index > next {
                        return Err(Error::corrupt(format!(
                            "raft storage: {}: entry {} at byte {off} does not follow the log \
                             (base {}, next {next})",
                            path.display(),
                            e.index,
                            base.0
                        )));
                    }
                    entries.truncate((e.index - base.0 - 1) as usize);
                    entries.push(e);
                }
                KIND_HARD_STATE => self.hard = HardState::parse_from_bytes(payload).map_err(bad)?,
                KIND_CONF_STATE | KIND_CONF_AT => {
                    let (index, cs) = if kind == KIND_CONF_AT {
                        if payload.len() < 8 {
                            return Err(Error::corrupt(format!(
                                "raft storage: {}: ConfState record at byte {off} too short",
                                path.display()
                            )));
                        }
                        let index = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                        (
                            index,
                            ConfState::parse_from_bytes(&payload[8..]).map_err(bad)?,
                        )
                    } else {
                        (0, ConfState::parse_from_bytes(payload).map_err(bad)?)
                    };
                    // A log older than the snapshot file may hold an older configuration.
                    if index >= self.conf_index {
                        self.conf = cs;
                        self.conf_index = index;
                    }
                }
                _ => {
                    if payload.len() != 16 {
                        return Err(Error::corrupt(format!(
                            "raft storage: {}: base mark at byte {off} has {} bytes, not 16",
                            path.display(),
                            payload.len()
                        )));
                    }
                    let index = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                    let term = u64::from_le_bytes(payload[8..].try_into().unwrap_or_default());
                    base = (index, term);
                    entries.clear();
                }
            }
            self.recovery.records += 1;
            off = end;
        }
        // Reconcile the log's base with the snapshot file.
        if base.0 > snap_index {
            return Err(Error::corrupt(format!(
                "raft storage: {} starts after index {} but the snapshot only covers {snap_index}",
                path.display(),
                base.0
            )));
        }
        if base.0 < snap_index {
            let at = snap_index - base.0;
            let matches = at <= entries.len() as u64 && entries[at as usize - 1].term == snap_term;
            let held = entries.len();
            let keep = if matches {
                entries.split_off(at as usize)
            } else {
                Vec::new()
            };
            self.recovery.entries_dropped = (held - keep.len()) as u64;
            entries = keep;
        }
        self.entries = entries;
        // A snapshot is committed state: a log older than it (a crash between installing a
        // received snapshot and rewriting the log) may still hold a lower commit and term.
        if self.hard.commit < snap_index {
            self.hard.commit = snap_index;
        }
        self.hard.term = self.hard.term.max(snap_term);
        Ok(off)
    }

    fn check(&self, path: &Path) -> Result<()> {
        for (what, cs) in [
            ("the log's configuration", &self.conf),
            (
                "the snapshot's configuration",
                self.snapshot.get_metadata().get_conf_state(),
            ),
        ] {
            super::check_conf_state(cs).map_err(|e| {
                Error::corrupt(format!("raft storage: {}: {what}: {e}", path.display()))
            })?;
        }
        let last = self.last();
        let mut prev = self.snapshot.get_metadata().term;
        for e in &self.entries {
            if e.term == 0 || e.term < prev {
                return Err(Error::corrupt(format!(
                    "raft storage: {}: entry {} has term {} after term {prev}",
                    path.display(),
                    e.index,
                    e.term
                )));
            }
            prev = e.term;
        }
        if self.hard.commit > last {
            return Err(Error::corrupt(format!(
                "raft storage: {}: commit index {} is beyond the last entry {last}",
                path.display(),
                self.hard.commit
            )));
        }
        Ok(())
    }

    /// The records that describe the whole state (base, HardState, ConfState, entries).
    fn encode_state(&self, buf: &mut Vec<u8>) -> Result<()> {
        let m = self.snapshot.get_metadata();
        let mut base = m.index.to_le_bytes().to_vec();
        base.extend_from_slice(&m.term.to_le_bytes());
        push_record(buf, KIND_BASE, &base);
        push_record(buf, KIND_HARD_STATE, &encode(&self.hard)?);
        push_record(buf, KIND_CONF_AT, &self.conf_record()?);
        for e in &self.entries {
            push_record(buf, KIND_ENTRY, &encode(e)?);
        }
        Ok(())
    }

    fn conf_record(&self) -> Result<Vec<u8>> {
        let mut b = self.conf_index.to_le_bytes().to_vec();
        b.extend_from_slice(&encode(&self.conf)?);
        Ok(b)
    }

    fn rewrite(&mut self) -> Result<()> {
        let mut bytes = LOG_MAGIC.to_vec();
        self.encode_state(&mut bytes)?;
        if let Some(d) = &mut self.disk {
            // Whatever was pending is in the new image.
            d.pending.clear();
            d.pending_records = 0;
            drop(write_atomic(&d.dir, LOG_FILE, &bytes)?);
            d.len = bytes.len() as u64;
            let path = d.dir.join(LOG_FILE);
            d.log = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io_err("cannot open", &path, e))?;
        }
        Ok(())
    }

    fn record(&mut self, kind: u8, payload: &[u8]) {
        if let Some(d) = &mut self.disk {
            push_record(&mut d.pending, kind, payload);
            d.pending_records += 1;
        }
    }

    /// What the last [`open`](Self::open) found and repaired (all zero in memory).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// True when backed by a directory.
    pub fn is_durable(&self) -> bool {
        self.disk.is_some()
    }

    /// The index of the latest snapshot (0 when none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    /// The entries held (after the snapshot).
    pub fn entries_held(&self) -> &[Entry] {
        &self.entries
    }

    /// The current HardState.
    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    /// The current ConfState.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// The log index of the configuration change the current ConfState results from: a
    /// restarted node re-applies the committed entries after its snapshot, and skips the
    /// configuration changes up to this index (the ConfState already holds them).
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    /// The latest snapshot (metadata and data; empty when none was taken).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// True when the store has never been given a configuration (a new node).
    pub fn is_empty(&self) -> bool {
        self.conf.voters.is_empty() && self.conf.learners.is_empty() && self.last() == 0
    }

    /// Appends entries from raft-rs's Ready; an entry at an index already held replaces it and
    /// everything after it.
    pub fn append(&mut self, ents: &[Entry]) -> Result<()> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.snapshot_index() || first.index > self.last() + 1 {
            return Err(Error::invalid(format!(
                "raft storage: cannot append entry {} to a log holding {}..={}",
                first.index,
                self.first(),
                self.last()
            )));
        }
        self.entries.truncate((first.index - self.first()) as usize);
        for e in ents {
            let bytes = encode(e)?;
            self.record(KIND_ENTRY, &bytes);
            self.entries.push(e.clone());
        }
        Ok(())
    }

    /// Records a new HardState.
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<()> {
        let bytes = encode(hs)?;
        self.record(KIND_HARD_STATE, &bytes);
        self.hard = hs.clone();
        Ok(())
    }

    /// Records a new commit index (kept in the HardState).
    pub fn set_commit(&mut self, commit: u64) -> Result<()> {
        let mut hs = self.hard.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Records a new ConfState, the result of the configuration change at log `index` (0 for
    /// a new cluster's bootstrap configuration).
    pub fn set_conf_state(&mut self, cs: &ConfState, index: u64) -> Result<()> {
        self.conf = cs.clone();
        self.conf_index = index;
        let bytes = self.conf_record()?;
        self.record(KIND_CONF_AT, &bytes);
        Ok(())
    }

    /// Writes every record since the last sync with one `write` and one `fdatasync` (group
    /// commit). In memory it does nothing.
    pub fn sync(&mut self) -> Result<SyncStats> {
        let Some(d) = &mut self.disk else {
            return Ok(SyncStats::default());
        };
        if d.pending.is_empty() {
            return Ok(SyncStats::default());
        }
        let path = d.dir.join(LOG_FILE);
        d.log
            .write_all(&d.pending)
            .map_err(|e| io_err("cannot write", &path, e))?;
        d.log
            .sync_data()
            .map_err(|e| io_err("cannot sync", &path, e))?;
        let stats = SyncStats {
            records: d.pending_records,
            bytes: d.pending.len() as u64,
            syncs: 1,
        };
        d.len += d.pending.len() as u64;
        d.pending.clear();
        d.pending_records = 0;
        Ok(stats)
    }

    fn write_snapshot_file(&self) -> Result<()> {
        if let Some(d) = &self.disk {
            write_snapshot(&d.dir, &self.snapshot)?;
        }
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log is replaced (raft-rs only hands
    /// over a snapshot when the log does not already hold its index and term), the HardState's
    /// commit moves to the snapshot index. Durable when it returns.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        // A snapshot of our own still being written goes first (it is older: a node applies
        // only what it committed, and the leader's snapshot is past that).
        self.finish_snapshot(true)?;
        let m = snap.get_metadata();
        if m.index < self.snapshot_index() {
            return Err(Error::invalid(format!(
                "raft storage: snapshot {} is older than the one held ({})",
                m.index,
                self.snapshot_index()
            )));
        }
        self.hard.term = self.hard.term.max(m.term);
        self.hard.commit = m.index;
        self.conf = m.get_conf_state().clone();
        self.conf_index = m.index;
        self.entries.clear();
        self.snapshot = snap;
        self.write_snapshot_file()?;
        self.rewrite()
    }

    /// Takes a snapshot at `index` (≤ the applied index) with the state machine's `data` and
    /// the ConfState in force there, and compacts the log: entries up to `index` are dropped.
    /// Durable when it returns.
    pub fn create_snapshot(&mut self, index: u64, conf: ConfState, data: Vec<u8>) -> Result<()> {
        self.finish_snapshot(true)?;
        let Some(snap) = self.new_snapshot(index, conf, data)? else {
            return Ok(());
        };
        self.write_snapshot_file_of(&snap)?;
        self.install_own_snapshot(snap, true)
    }

    /// The snapshot at `index` with `data`, checked against the log; `None` when the snapshot
    /// held is already at or past `index`.
    fn new_snapshot(&self, index: u64, conf: ConfState, data: Vec<u8>) -> Result<Option<Snapshot>> {
        if index <= self.snapshot_index() {
            return Ok(None);
        }
        if index > self.hard.commit {
            return Err(Error::invalid(format!(
                "raft storage: cannot snapshot at {index}, beyond the commit index {}",
                self.hard.commit
            )));
        }
        let term = self.term_of(index).ok_or_else(|| {
            Error::invalid(format!("raft storage: no entry {index} to snapshot at"))
        })?;
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf);
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = data.into();
        Ok(Some(snap))
    }

    fn write_snapshot_file_of(&self, snap: &Snapshot) -> Result<()> {
        if let Some(d) = &self.disk {
            write_snapshot(&d.dir, snap)?;
        }
        Ok(())
    }

    /// Makes `snap` (of this node's state, its file durable) the snapshot held and drops the
    /// entries it covers; the log file is rewritten without them when `compact` or when it
    /// has grown to the compaction size — else they stay in the file until then, and a
    /// reopen drops them (the snapshot file is newer than they are).
    fn install_own_snapshot(&mut self, snap: Snapshot, compact: bool) -> Result<()> {
        let index = snap.get_metadata().index;
        if index <= self.snapshot_index() {
            return Ok(());
        }
        // Records still pending must be on disk before the rewrite replaces the file.
        self.sync()?;
        let drop_n = (index - self.snapshot_index()) as usize;
        self.snapshot = snap;
        self.entries.drain(..drop_n.min(self.entries.len()));
        let big = self.disk.as_ref().is_some_and(|d| d.len >= d.compact_bytes);
        if compact || big {
            self.rewrite()?;
        }
        Ok(())
    }

    /// The log file size from which a snapshot written in the background
    /// ([`begin_snapshot`](Self::begin_snapshot)) also rewrites the log without the entries
    /// it covers (default [`DEFAULT_COMPACT_BYTES`]). Below it the covered entries stay in
    /// the file, so that most snapshots cost no synchronous rewrite (two `fdatasync`s and a
    /// directory sync, which also queue behind the other nodes' I/O on a shared disk).
    pub fn set_compact_bytes(&mut self, bytes: u64) {
        if let Some(d) = &mut self.disk {
            d.compact_bytes = bytes;
        }
    }

    /// The log file's length in bytes (0 in memory; records not yet synced excluded).
    pub fn log_bytes(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.len)
    }

    /// As [`create_snapshot`](Self::create_snapshot), but a directory-backed store writes the
    /// snapshot file on a thread of its own, so that the caller's loop does not wait for a
    /// write and `fdatasync` of the whole state (tens of milliseconds for a large one) —
    /// the stall that set the commit latency's p99 under light load. Until the file is
    /// durable nothing changes: the snapshot held and the log are the previous ones (raft-rs
    /// keeps serving them), and a crash leaves at most a `snapshot.tmp`, removed on open.
    /// [`finish_snapshot`](Self::finish_snapshot) (called by [`Node`](super::Node) every
    /// Ready) then installs the snapshot and drops the entries it covers from memory; the
    /// log file is rewritten without them only once it reaches the compaction size
    /// ([`set_compact_bytes`](Self::set_compact_bytes)).
    ///
    /// `Ok(true)` when the snapshot was started (or, in memory, taken at once); `Ok(false)`
    /// when one is already being written (try again later) or the snapshot held is already
    /// at or past `index`. Errors as `create_snapshot`'s checks.
    pub fn begin_snapshot(&mut self, index: u64, conf: ConfState, data: Vec<u8>) -> Result<bool> {
        if self.writing.is_some() {
            return Ok(false);
        }
        let Some(snap) = self.new_snapshot(index, conf, data)? else {
            return Ok(false);
        };
        let Some(d) = &self.disk else {
            self.install_own_snapshot(snap, true)?;
            return Ok(true);
        };
        let dir = d.dir.clone();
        let thread = std::thread::Builder::new()
            .name("emf-raft-snapshot".into())
            .spawn(move || write_snapshot(&dir, &snap).map(|()| snap))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("raft storage: cannot start the snapshot writer: {e}"),
                )
            })?;
        self.writing = Some(SnapshotWrite { index, thread });
        Ok(true)
    }

    /// True while a snapshot started by [`begin_snapshot`](Self::begin_snapshot) is being
    /// written.
    pub fn snapshot_pending(&self) -> bool {
        self.writing.is_some()
    }

    /// Installs the snapshot started by [`begin_snapshot`](Self::begin_snapshot) once its
    /// file is durable (at once when it is, or after waiting for the writer when `wait`):
    /// `Some(index)` when one was installed. The writer's I/O error is returned here (the
    /// store is unchanged then: the previous snapshot and the whole log are still held).
    pub fn finish_snapshot(&mut self, wait: bool) -> Result<Option<u64>> {
        match &self.writing {
            None => return Ok(None),
            Some(w) if !wait && !w.thread.is_finished() => return Ok(None),
            Some(_) => {}
        }
        let Some(w) = self.writing.take() else {
            return Ok(None);
        };
        let snap = w.thread.join().map_err(|_| {
            Error::new(
                ErrorKind::Io,
                format!("raft storage: the writer of snapshot {} panicked", w.index),
            )
        })??;
        self.install_own_snapshot(snap, false)?;
        Ok(Some(w.index))
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        let m = self.snapshot.get_metadata();
        if idx == m.index {
            return Some(m.term);
        }
        if idx < self.first() || idx > self.last() {
            return None;
        }
        Some(self.entries[(idx - self.first()) as usize].term)
    }
}

impl Drop for LogStorage {
    fn drop(&mut self) {
        // A snapshot being written is finished (its file is complete or absent), not
        // installed: the log still holds the entries it covers, which a reopen drops.
        if let Some(w) = self.writing.take() {
            let _ = w.thread.join();
        }
    }
}

impl raft::Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut ents = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

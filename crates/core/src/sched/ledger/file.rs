//! [`FileLedger`]: the ledger as an append-only file that survives a reboot.
//!
//! # Format
//!
//! A 16-byte file header (`EMFLEDGF`, version `u32`, the CRC32C of those 12 bytes) and then
//! groups, one per [`append_batch`](Ledger::append_batch):
//!
//! ```text
//! magic: u32 | len: u32 | crc: u32 (of the payload) | header_crc: u32 (of the 12 bytes before)
//! payload: len bytes = record frames back to back (length, CRC32C, body each)
//! ```
//!
//! # Group commit
//!
//! A batch is encoded into one buffer, written with one `pwrite` and made durable with one
//! `fdatasync`; only then does the append return `Ok`. A failed `fdatasync` poisons the ledger
//! (what reached the disk is unknown after it, and retrying cannot tell): every later append
//! gives `Io`, and the owner must reopen it (which recovers as after a crash).
//!
//! # Recovery
//!
//! Opening scans the groups. A group that is incomplete or whose CRCs fail is a torn write when
//! no valid group follows it (each group is durable before the next is written, so only the
//! last one can be torn): the file is truncated there. A bad group followed by a valid one is
//! damage to durable data: `ErrorKind::Corrupt`. So is a group whose CRCs hold but whose frames
//! do not decode. [`replay`](Ledger::replay) of an open ledger re-reads the file and treats any
//! bad group before the end it knows durable as `Corrupt`.
//!
//! # Ownership and compaction
//!
//! One process appends: the file is locked with `flock(LOCK_EX)` (released by the kernel when
//! the process dies); a second opener gets `Busy`. (A child forked by any thread of the owner
//! shares the lock until it calls `exec`, which closes the file: the files are opened with
//! `O_CLOEXEC`. An opener may see `Busy` for that moment, even after the owner closed it.) When the file grows past
//! [`FileLedgerOptions::compact_at`], the live records ([`compact`]) are
//! written to `<path>.compact` (locked first), made durable, renamed over the ledger and the
//! directory is `fsync`ed. An opener that locked the old file after the rename sees that the
//! name now names another file, and opens again.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::codec::{self, Frame};
use super::compact;
use crate::checksum::crc32c;
use crate::error::{Error, ErrorKind, Result};
use crate::sched::types::{Ledger, LedgerRecord};

/// The first 8 bytes of a ledger file.
pub const FILE_MAGIC: [u8; 8] = *b"EMFLEDGF";
/// The file format version.
pub const FILE_VERSION: u32 = 1;
/// Bytes of the file header.
const FILE_HEADER: usize = 16;
/// The first 4 bytes of a group.
const GROUP_MAGIC: u32 = 0x4750_4C45;
/// Bytes of a group header.
const GROUP_HEADER: usize = 16;

/// How a [`FileLedger`] behaves.
#[derive(Debug, Clone)]
pub struct FileLedgerOptions {
    /// Compact when the file grows past this many bytes (default 64 MiB). After a compaction
    /// that leaves more than half of it, the threshold doubles (so a ledger of many live tasks
    /// is not rewritten on every append).
    pub compact_at: u64,
}

impl Default for FileLedgerOptions {
    fn default() -> Self {
        FileLedgerOptions {
            compact_at: 64 << 20,
        }
    }
}

/// An append-only ledger file (see the module docs). The process that holds one owns the
/// file until it drops it or dies.
#[derive(Debug)]
pub struct FileLedger {
    file: File,
    path: PathBuf,
    /// Bytes of the file that are durable.
    len: u64,
    compact_at: u64,
    poisoned: bool,
    buf: Vec<u8>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

fn file_header() -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[..8].copy_from_slice(&FILE_MAGIC);
    h[8..12].copy_from_slice(&FILE_VERSION.to_le_bytes());
    let c = crc32c(&h[..12]);
    h[12..].copy_from_slice(&c.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What is at a group's position.
enum Group {
    /// A valid group: its records and where it ends.
    Good(Vec<LedgerRecord>, usize),
    /// Incomplete, or a CRC fails: torn, or damaged.
    Bad,
}

/// The group at `pos` of `b`. `Corrupt` when its CRCs hold but its frames do not decode.
fn group_at(b: &[u8], pos: usize) -> Result<Group> {
    if b.len() - pos < GROUP_HEADER {
        return Ok(Group::Bad);
    }
    let h = &b[pos..pos + GROUP_HEADER];
    if u32_at(h, 0) != GROUP_MAGIC || crc32c(&h[..12]) != u32_at(h, 12) {
        return Ok(Group::Bad);
    }
    let len = u32_at(h, 4) as usize;
    let start = pos + GROUP_HEADER;
    if b.len() - start < len || crc32c(&b[start..start + len]) != u32_at(h, 8) {
        return Ok(Group::Bad);
    }
    let mut records = Vec::new();
    let mut p = start;
    while p < start + len {
        match codec::decode_frame(&b[p..start + len])? {
            Frame::Record(r, n) => {
                records.push(r);
                p += n;
            }
            Frame::Truncated => {
                return Err(Error::corrupt(format!(
                    "ledger group at {pos}: its last frame runs past the group"
                )))
            }
        }
    }
    Ok(Group::Good(records, start + len))
}

/// True when a valid group starts anywhere after `pos`.
fn valid_group_after(b: &[u8], pos: usize) -> bool {
    let magic = GROUP_MAGIC.to_le_bytes();
    (pos + 1..b.len().saturating_sub(GROUP_HEADER - 1))
        .filter(|&q| b[q..q + 4] == magic)
        .any(|q| matches!(group_at(b, q), Ok(Group::Good(..)) | Err(_)))
}

/// Scans a whole ledger file: its records and the end of the last valid group (where a torn
/// tail starts, if the file is longer).
fn scan(b: &[u8], path: &Path) -> Result<(Vec<LedgerRecord>, usize)> {
    if b.len() < FILE_HEADER || b[..FILE_HEADER] != file_header() {
        if b.len() >= 12 && b[..8] == FILE_MAGIC && u32_at(b, 8) != FILE_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: ledger file version {}, this build reads {FILE_VERSION}",
                    path.display(),
                    u32_at(b, 8)
                ),
            ));
        }
        return Err(Error::corrupt(format!(
            "{}: not a ledger file (bad header)",
            path.display()
        )));
    }
    let mut records = Vec::new();
    let mut pos = FILE_HEADER;
    while pos < b.len() {
        match group_at(b, pos).map_err(|e| Error::corrupt(format!("{}: {e}", path.display())))? {
            Group::Good(mut r, end) => {
                records.append(&mut r);
                pos = end;
            }
            Group::Bad => {
                if valid_group_after(b, pos) {
                    return Err(Error::corrupt(format!(
                        "{}: the group at {pos} is damaged and durable groups follow it",
                        path.display()
                    )));
                }
                break;
            }
        }
    }
    Ok((records, pos))
}

fn lock(file: &File, path: &Path) -> Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(Error::new(
            ErrorKind::Busy,
            format!("ledger {} is open in another process", path.display()),
        ))
    } else {
        Err(io("cannot lock", path, e))
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync directory", dir, e))
}

fn read_all(file: &File, len: u64, path: &Path) -> Result<Vec<u8>> {
    let len = usize::try_from(len)
        .map_err(|_| Error::new(ErrorKind::TooLarge, "ledger file too large"))?;
    let mut b = vec![0u8; len];
    file.read_exact_at(&mut b, 0)
        .map_err(|e| io("cannot read", path, e))?;
    Ok(b)
}

impl FileLedger {
    /// Opens the ledger file at `path` (creating it, mode 0600, when missing), recovers it
    /// (a torn tail is truncated) and locks it: `Busy` when another process has it open.
    pub fn open(path: impl AsRef<Path>, opts: &FileLedgerOptions) -> Result<FileLedger> {
        let path = path.as_ref().to_owned();
        for _ in 0..16 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io("cannot open", &path, e))?;
            lock(&file, &path)?;
            // A compaction may have renamed another file over the name since we opened it.
            let meta = file.metadata().map_err(|e| io("cannot stat", &path, e))?;
            match std::fs::metadata(&path) {
                Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => {}
                _ => continue,
            }
            // A compaction that died before its rename left this; we own the ledger now.
            let _ = std::fs::remove_file(Self::compact_path(&path));
            let mut b = read_all(&file, meta.len(), &path)?;
            if b.len() < FILE_HEADER && file_header().starts_with(&b) {
                // New, or its creator died while writing the header.
                file.set_len(0)
                    .map_err(|e| io("cannot truncate", &path, e))?;
                file.write_all_at(&file_header(), 0)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| io("cannot write", &path, e))?;
                sync_dir(&path)?;
                b = file_header().to_vec();
            }
            let (_, end) = scan(&b, &path)?;
            if end < b.len() {
                file.set_len(end as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| io("cannot truncate the torn tail of", &path, e))?;
            }
            return Ok(FileLedger {
                file,
                path,
                len: end as u64,
                compact_at: opts.compact_at.max(FILE_HEADER as u64),
                poisoned: false,
                buf: Vec::new(),
            });
        }
        Err(Error::new(
            ErrorKind::Busy,
            format!(
                "ledger {} keeps being replaced while it is opened",
                path.display()
            ),
        ))
    }

    pub(crate) fn compact_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".compact");
        PathBuf::from(p)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the file that are durable.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the ledger holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == FILE_HEADER as u64
    }

    /// Encodes `records` as one group into `self.buf`.
    fn encode_group(&mut self, records: &[LedgerRecord]) -> Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; GROUP_HEADER]);
        for r in records {
            codec::encode_frame(r, &mut self.buf)?;
        }
        let len = u32::try_from(self.buf.len() - GROUP_HEADER).map_err(|_| {
            Error::new(
                ErrorKind::TooLarge,
                "a ledger batch of more than 4 GiB: append it in smaller batches",
            )
        })?;
        let crc = crc32c(&self.buf[GROUP_HEADER..]);
        self.buf[0..4].copy_from_slice(&GROUP_MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&len.to_le_bytes());
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        let hcrc = crc32c(&self.buf[..12]);
        self.buf[12..16].copy_from_slice(&hcrc.to_le_bytes());
        Ok(())
    }

    /// Rewrites the ledger as its compacted records (see [`compact`]): a new
    /// file, made durable, renamed over this one, the directory synced.
    pub fn compact(&mut self) -> Result<()> {
        self.check_poisoned()?;
        let live = compact(&self.replay()?);
        let tmp = Self::compact_path(&self.path);
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create", &tmp, e))?;
        lock(&file, &tmp)?;
        let mut out = file_header().to_vec();
        if !live.is_empty() {
            self.encode_group(&live)?;
            out.extend_from_slice(&self.buf);
        }
        let written = file
            .write_all_at(&out, 0)
            .and_then(|()| file.sync_data())
            .map_err(|e| io("cannot write", &tmp, e))
            .and_then(|()| {
                std::fs::rename(&tmp, &self.path).map_err(|e| io("cannot rename", &tmp, e))
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename is done: the new file is the ledger (even if the directory sync below
        // fails, the old file's records and the new one's are equivalent for replay).
        self.file = file;
        self.len = out.len() as u64;
        sync_dir(&self.path)
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "ledger {}: an earlier write or sync failed; reopen it",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }
}

impl Ledger for FileLedger {
    fn append(&mut self, record: &LedgerRecord) -> Result<()> {
        self.append_batch(std::slice::from_ref(record))
    }

    /// One group: one write, one `fdatasync`.
    fn append_batch(&mut self, records: &[LedgerRecord]) -> Result<()> {
        self.check_poisoned()?;
        if records.is_empty() {
            return Ok(());
        }
        self.encode_group(records)?;
        if let Err(e) = self
            .file
            .write_all_at(&self.buf, self.len)
            .and_then(|()| self.file.sync_data())
        {
            self.poisoned = true;
            return Err(io("cannot append to", &self.path, e));
        }
        self.len += self.buf.len() as u64;
        if self.len > self.compact_at {
            // The batch is durable whatever happens here: a failed compaction leaves the
            // ledger as it was and is tried again after the threshold doubles.
            let _ = self.compact();
            if self.len > self.compact_at / 2 {
                self.compact_at = self.compact_at.saturating_mul(2);
            }
        }
        Ok(())
    }

    fn replay(&self) -> Result<Vec<LedgerRecord>> {
        let b = read_all(&self.file, self.len, &self.path)?;
        let (records, end) = scan(&b, &self.path)?;
        if end as u64 != self.len {
            return Err(Error::corrupt(format!(
                "{}: the durable group at {end} is damaged",
                self.path.display()
            )));
        }
        Ok(records)
    }
}

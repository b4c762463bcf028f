//! Shared state by reference, across processes (the original design's "zero-copy" ETS trick):
//! `share_state(key, value) → state_ref`, `read_shared_state(state_ref) → value | not_found`.
//!
//! Each shared value is its own small segment (`state.<store>.<id>`) written once and never
//! modified. A reader maps it and reads the value in place. Reference counting is the
//! kernel's: a segment whose file was removed lives exactly as long as some process still
//! maps it, and a crashed reader's mapping goes away with the process. So:
//!
//! * sharing a key again publishes a new reference and retires the old one: new readers of
//!   the old reference get `NotFound`, readers that hold it keep reading the old value;
//! * [`StateStore::release`] retires a reference; its memory is reclaimed when the last
//!   reader drops its [`SharedValue`];
//! * nothing is ever read after it was freed, and a crash leaks nothing (`shm gc` removes
//!   values whose creator died once no reader holds them, and then their key files).
//!
//! # Files
//!
//! All files of a store live in its directory, named with the segment prefix `emf-`:
//!
//! * `emf-state.<store>.<id>`: a value, a segment of kind `State` (16 hex digits of id). Its
//!   creator is the publisher; readers attach while they hold a [`SharedValue`].
//! * `emf-state.<store>.key.<hash>`: the key file of a key (16 hex digits of the key's
//!   FNV-1a hash), which names the key's current value. Its content is the line
//!   `emf-state-key 1`, the value's id in 16 hex digits and a newline, then the key itself
//!   (which a lookup compares, so hash collisions answer `NotFound`, never a wrong value).
//!   Files written by earlier builds lack the first line and are read all the same.
//! * `emf-state.<store>.key.<hash>.tmp-<pid>-<start>-<n>`: a key file being written by
//!   process `<pid>` (started at `<start>` clock ticks), renamed over the key file once
//!   complete, so a key file is replaced atomically and never read half-written.
//!
//! Key files are created like segments: with the store's segment mode (0600), set with
//! `fchmod` so the umask cannot widen it. `shm gc` ([`crate::shm::gc`]) understands them: a
//! key file is stale exactly when the value it names is gone or stale (its publisher dead
//! and no reader left), never merely because it is old; a temporary key file is stale once
//! its writer is dead.
//!
//! ```
//! use erlmcp_flow::state::StateStore;
//! # let dir = std::env::temp_dir().join(format!("emf-doc-state-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let store = StateStore::open("agents", &dir).unwrap();
//! let r1 = store.share_state("registry", b"v1").unwrap();
//! let held = store.read_shared_state(r1).unwrap();          // mapped, zero-copy
//! let r2 = store.share_state("registry", b"v2").unwrap();   // r1 retired
//! assert_eq!(held.value(), b"v1");                          // still readable while held
//! assert!(store.read_shared_state(r1).is_err());            // but not reachable any more
//! assert_eq!(store.read_shared_state(r2).unwrap().value(), b"v2");
//! assert_eq!(store.lookup("registry").unwrap(), r2);
//! # drop(held); store.release(r2).unwrap();
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::keyfile::{self, key_hash, KEY_FILE_MAGIC};
use crate::shm::{self, Segment, SegmentKind, SegmentOptions};

/// A reference to a shared value: unique within its store, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateRef(pub u64);

/// A store of shared values: a name and a directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    name: String,
    opts: SegmentOptions,
}

/// A value being read: the mapping stays alive (and the value readable) until this drops.
#[derive(Debug)]
pub struct SharedValue {
    seg: Segment,
    len: usize,
}

impl SharedValue {
    /// The value's bytes, read in place.
    pub fn value(&self) -> &[u8] {
        // SAFETY: the body holds [u64 LE length][value]; `len` was checked against the
        // body length when the value was opened, and a shared value is never written after
        // it was published.
        unsafe { std::slice::from_raw_parts(self.seg.body().wrapping_add(8), self.len) }
    }
}

impl StateStore {
    /// The store `name` (1-100 characters of `[A-Za-z0-9_-]`) in `dir`.
    pub fn open(name: &str, dir: &Path) -> Result<StateStore> {
        if name.is_empty()
            || name.len() > 100
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::invalid(format!(
                "state store name {name:?} must be 1-100 characters of A-Z a-z 0-9 _ -"
            )));
        }
        Ok(StateStore {
            name: name.to_owned(),
            opts: SegmentOptions {
                dir: dir.to_owned(),
                ..SegmentOptions::default()
            },
        })
    }

    fn value_name(&self, r: StateRef) -> String {
        format!("state.{}.{:016x}", self.name, r.0)
    }

    fn key_path(&self, key: &str) -> PathBuf {
        self.opts.dir.join(format!(
            "{}state.{}.key.{:016x}",
            shm::FILE_PREFIX,
            self.name,
            key_hash(key)
        ))
    }

    /// A fresh temporary name next to the key file of `key`, naming this process.
    fn key_temp_path(&self, key: &str) -> PathBuf {
        let me = std::process::id();
        self.opts.dir.join(format!(
            "{}state.{}.key.{:016x}.tmp-{me}-{}-{:016x}",
            shm::FILE_PREFIX,
            self.name,
            key_hash(key),
            shm::process_start_ticks(me),
            fresh_id()
        ))
    }

    /// Points `key` at `r`: writes a private temporary file and renames it over the key file.
    fn write_key(&self, key: &str, r: StateRef) -> std::io::Result<()> {
        let tmp = self.key_temp_path(key);
        let write = || -> std::io::Result<()> {
            let mut f = shm::create_file(&tmp, self.opts.mode)?;
            f.write_all(format!("{KEY_FILE_MAGIC}{:016x}\n{key}", r.0).as_bytes())?;
            drop(f);
            std::fs::rename(&tmp, self.key_path(key))
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Publishes `value` under `key` and returns its reference; the key's previous
    /// reference (if any) is retired.
    pub fn share_state(&self, key: &str, value: &[u8]) -> Result<StateRef> {
        let len = shm::HEADER_LEN + 8 + value.len();
        let (seg, r) = loop {
            let r = StateRef(fresh_id());
            match Segment::create(
                &self.value_name(r),
                SegmentKind::State,
                len,
                &self.opts,
                |body, n| {
                    debug_assert!(n >= 8 + value.len());
                    // SAFETY: `body` is the fresh, unshared body of `n` ≥ 8 + value.len() bytes.
                    unsafe {
                        body.cast::<[u8; 8]>()
                            .write_unaligned((value.len() as u64).to_le_bytes());
                    }
                    // SAFETY: as above; source and destination do not overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            value.as_ptr(),
                            body.wrapping_add(8),
                            value.len(),
                        );
                    }
                },
            ) {
                Ok(seg) => break (seg, r),
                Err(e) if e.kind() == ErrorKind::Busy => continue, // id collision: draw again
                Err(e) => return Err(e),
            }
        };
        // Point the key at the new value atomically (rename), then retire the old one.
        let old = self.lookup(key).ok();
        if let Err(e) = self.write_key(key, r) {
            let _ = self.release(r);
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot publish key {key:?}: {e}"),
            ));
        }
        if let Some(old) = old {
            if old != r {
                let _ = self.release(old);
            }
        }
        // The creator's mapping is not needed: the file keeps the value until released.
        drop(seg);
        Ok(r)
    }

    /// The current reference of `key`.
    pub fn lookup(&self, key: &str) -> Result<StateRef> {
        let text = std::fs::read_to_string(self.key_path(key)).map_err(|_| {
            Error::new(
                ErrorKind::NotFound,
                format!("no shared state for key {key:?}"),
            )
        })?;
        let (id, stored_key) = keyfile::parse_key_file(&text)
            .ok_or_else(|| Error::corrupt("malformed state key file"))?;
        let r = StateRef(id);
        if stored_key != key {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no shared state for key {key:?} (hash collision with {stored_key:?})"),
            ));
        }
        Ok(r)
    }

    /// Maps the value of `r` for reading. `NotFound` when it was released or replaced.
    pub fn read_shared_state(&self, r: StateRef) -> Result<SharedValue> {
        let seg =
            Segment::open(&self.value_name(r), SegmentKind::State, &self.opts).map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::new(ErrorKind::NotFound, format!("state ref {:x} is gone", r.0))
                } else {
                    e
                }
            })?;
        if seg.body_len() < 8 {
            return Err(Error::corrupt("state segment too small"));
        }
        let mut len_bytes = [0u8; 8];
        // SAFETY: the body has at least 8 bytes (checked above).
        unsafe { std::ptr::copy_nonoverlapping(seg.body(), len_bytes.as_mut_ptr(), 8) };
        let len = u64::from_le_bytes(len_bytes);
        if len > (seg.body_len() - 8) as u64 {
            return Err(Error::corrupt(format!(
                "state value claims {len} bytes, its segment holds {}",
                seg.body_len() - 8
            )));
        }
        Ok(SharedValue {
            seg,
            len: len as usize,
        })
    }

    /// Retires `r`: new readers get `NotFound`; current readers keep their value until they
    /// drop it, then the kernel reclaims the memory.
    pub fn release(&self, r: StateRef) -> Result<()> {
        let path = shm::segment_path(&self.opts.dir, &self.value_name(r));
        std::fs::remove_file(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(ErrorKind::NotFound, format!("state ref {:x} is gone", r.0))
            } else {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot release {}: {e}", path.display()),
                )
            }
        })
    }
}

fn fresh_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering}; // std-atomic-ok: a process-local id counter
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() as u64;
    let t = shm::now_ns();
    // Mix pid, time and a counter; `create_new` catches the (unlikely) collision.
    let mut x = t ^ (pid << 40) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::tests::TempDir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    #[cfg_attr(miri, ignore = "maps files")]
    fn values_live_while_read_and_are_reclaimed_after() {
        let dir = TempDir::new("state");
        let s = StateStore::open("s", &dir.0).unwrap();
        let big = vec![7u8; 100_000];
        let r1 = s.share_state("k", &big).unwrap();
        let reader = s.read_shared_state(r1).unwrap();
        assert_eq!(reader.value(), &big[..]);
        let r2 = s.share_state("k", b"small").unwrap();
        assert_ne!(r1, r2);
        assert_eq!(
            s.read_shared_state(r1).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(reader.value(), &big[..], "held values stay readable");
        drop(reader);
        assert_eq!(s.lookup("k").unwrap(), r2);
        assert_eq!(s.lookup("other").unwrap_err().kind(), ErrorKind::NotFound);
        s.release(r2).unwrap();
        assert_eq!(s.release(r2).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(
            s.read_shared_state(r2).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let empty = s.share_state("e", b"").unwrap();
        assert_eq!(s.read_shared_state(empty).unwrap().value(), b"");
        assert_eq!(
            StateStore::open("bad name", &dir.0).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    fn key_file(s: &StateStore, key: &str) -> PathBuf {
        s.key_path(key)
    }

    fn value_file(s: &StateStore, r: StateRef) -> PathBuf {
        shm::segment_path(&s.opts.dir, &s.value_name(r))
    }

    /// Makes the value `r` look as if its publisher died (no reader attached).
    fn forge_dead_publisher(s: &StateStore, r: StateRef) {
        Segment::inspect(&s.value_name(r), &s.opts)
            .unwrap()
            .forge_dead_creator();
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files / calls kill(2)")]
    fn key_files_are_private() {
        let dir = TempDir::new("state-mode");
        let s = StateStore::open("s", &dir.0).unwrap();
        s.share_state("k", b"v").unwrap();
        let mode = std::fs::metadata(key_file(&s, "k"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "a value and a key file, no temporary left: {names:?}"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files / calls kill(2)")]
    fn gc_keeps_an_old_key_file_of_a_live_publisher() {
        let dir = TempDir::new("state-gc-live");
        let s = StateStore::open("s", &dir.0).unwrap();
        let r = s.share_state("k", b"v1").unwrap();
        // Idle for two minutes: age is no proof of staleness while the publisher lives.
        shm::tests::age(&key_file(&s, "k"), 120);
        shm::tests::age(&value_file(&s, r), 120);
        let report = shm::gc(&dir.0).unwrap();
        assert!(report.removed.is_empty(), "{report:?}");
        assert!(report.skipped.is_empty(), "{report:?}");
        assert_eq!(report.kept.len(), 2, "{report:?}");
        assert_eq!(s.lookup("k").unwrap(), r);
        assert_eq!(s.read_shared_state(r).unwrap().value(), b"v1");
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files / calls kill(2)")]
    fn gc_removes_the_key_file_once_its_value_is_dead_or_gone() {
        let dir = TempDir::new("state-gc-dead");
        let s = StateStore::open("s", &dir.0).unwrap();
        // Publisher dead but a reader holds the value: both files stay.
        let r = s.share_state("held", b"v").unwrap();
        let reader = s.read_shared_state(r).unwrap();
        forge_dead_publisher(&s, r);
        let report = shm::gc(&dir.0).unwrap();
        assert!(report.removed.is_empty(), "{report:?}");
        assert_eq!(s.lookup("held").unwrap(), r);
        // The last reader goes: the value is stale, and so is its key file (fresh as it is).
        drop(reader);
        let mut removed = shm::gc(&dir.0).unwrap().removed;
        removed.sort();
        let mut want = vec![key_file(&s, "held"), value_file(&s, r)];
        want.sort();
        assert_eq!(removed, want);
        assert_eq!(s.lookup("held").unwrap_err().kind(), ErrorKind::NotFound);
        // A key whose value was released points at nothing: removed too.
        let r = s.share_state("released", b"v").unwrap();
        s.release(r).unwrap();
        assert_eq!(
            shm::gc(&dir.0).unwrap().removed,
            vec![key_file(&s, "released")]
        );
        // A temporary key file left by a writer that died is removed; one being written by
        // a live process (this one) is kept.
        let dead = dir.0.join(format!(
            "emf-state.s.key.{:016x}.tmp-{}-1-{:016x}",
            key_hash("x"),
            i32::MAX - 5,
            7
        ));
        let live = s.key_temp_path("x");
        std::fs::write(&dead, b"").unwrap();
        std::fs::write(&live, b"").unwrap();
        let report = shm::gc(&dir.0).unwrap();
        assert_eq!((report.removed, report.kept), (vec![dead], vec![live]));
        assert!(std::fs::read_dir(&dir.0).unwrap().count() == 1);
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files / calls kill(2)")]
    fn key_files_of_earlier_builds_are_read_and_understood() {
        let dir = TempDir::new("state-legacy");
        let s = StateStore::open("s", &dir.0).unwrap();
        let r = s.share_state("k", b"v").unwrap();
        // The format before the magic line.
        std::fs::write(key_file(&s, "k"), format!("{:016x}\nk", r.0)).unwrap();
        shm::tests::age(&key_file(&s, "k"), 120);
        assert_eq!(s.lookup("k").unwrap(), r);
        assert!(shm::gc(&dir.0).unwrap().removed.is_empty());
        assert_eq!(s.lookup("k").unwrap(), r);
        // A file under a key name that is not a key file is junk like any other.
        let bogus = dir
            .0
            .join(format!("emf-state.s.key.{:016x}", key_hash("other")));
        std::fs::write(&bogus, format!("{:016x}\nnot other", r.0)).unwrap();
        assert!(shm::gc(&dir.0).unwrap().kept.contains(&bogus), "young");
        shm::tests::age(&bogus, 120);
        assert_eq!(shm::gc(&dir.0).unwrap().removed, vec![bogus]);
    }
}

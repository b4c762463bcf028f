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
//!   values whose creator died).
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

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
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

fn key_hash(key: &str) -> u64 {
    // FNV-1a: stable across processes and builds (the hash names a file).
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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
        let key_path = self.key_path(key);
        let old = self.lookup(key).ok();
        let tmp = key_path.with_extension(format!("tmp{}", fresh_id()));
        std::fs::write(&tmp, format!("{:016x}\n{key}", r.0))
            .and_then(|()| std::fs::rename(&tmp, &key_path))
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot publish key {key:?}: {e}")))?;
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
        let (id, stored_key) = text
            .split_once('\n')
            .ok_or_else(|| Error::corrupt("malformed state key file"))?;
        if stored_key != key {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no shared state for key {key:?} (hash collision with {stored_key:?})"),
            ));
        }
        u64::from_str_radix(id, 16)
            .map(StateRef)
            .map_err(|_| Error::corrupt("malformed state key file"))
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
}

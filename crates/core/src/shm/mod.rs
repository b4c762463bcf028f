//! Named shared-memory segments: files under `/dev/shm` (or another directory) mapped by every
//! participant.
//!
//! Invariants of this module:
//!
//! * Every segment starts with a [`SegmentHeader`] page: magic, layout version, kind, total
//!   length, creator pid and uid, creation time, and a table of attached processes. A segment
//!   is usable only once its creator has set `ready`; opening checks magic, version, kind and
//!   length and refuses anything else with a clear error. Nothing in a segment is a pointer:
//!   every reference is an offset, so processes may map it at different addresses.
//! * Files are created with mode 0600 unless the caller asks otherwise (the mode is set with
//!   `fchmod`, so the umask cannot widen or narrow it). A process of another user cannot open
//!   the file unless the mode allows it. The state store's key files are created the same way.
//! * A process is **alive** when it exists, is not a zombie (state `Z` or `X` in
//!   `/proc/<pid>/stat`: killed but not reaped yet, which a container whose PID 1 never reaps
//!   keeps forever) and, when its start time was recorded, started at that time (not a later
//!   process that reused the pid). A process that exists but whose `/proc` entry cannot be
//!   read (permissions, `hidepid`, no `/proc`) counts as alive: unreadable is not dead.
//! * A segment is **stale** when its creator is dead and no process in its attach table is
//!   alive (pid and process start time both match). [`Segment::create`] replaces a stale
//!   segment of the same name, so a restart after `kill -9` reuses the name without manual
//!   cleanup. A segment with a live participant is never replaced, and neither is a file that
//!   cannot be read (permission denied is not proof of staleness).
//! * [`gc`] removes only what it can prove stale; its rules are listed there. It reads files
//!   with `pread` (never mapping them, never following symbolic links) and removes a file only
//!   if it is still the very file it judged (see [`gc`]).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

pub(crate) mod state_files;

use crate::error::{Error, ErrorKind, Result};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Where segments live by default.
pub const DEFAULT_DIR: &str = "/dev/shm";
/// File names of segments start with this prefix.
pub const FILE_PREFIX: &str = "emf-";
/// The first 8 bytes of every segment.
pub const MAGIC: [u8; 8] = *b"EMFSHM\0\x01";
/// The segment header layout version this build reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes reserved for the header (one page).
pub const HEADER_LEN: usize = 4096;
/// How many processes can be attached to one segment at once.
pub const MAX_ATTACHED: usize = 128;

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SegmentKind {
    /// A frame ring (the `ring` module).
    Ring = 1,
    /// A shared-state store.
    State = 2,
    /// A scheduler's ledger (`sched::ledger::ShmLedger`): durable state that [`gc`] never
    /// removes, whoever is alive.
    Ledger = 3,
    /// The agents' load table (`sched::loads`).
    Loads = 4,
}

impl SegmentKind {
    fn from_u32(v: u32) -> Option<SegmentKind> {
        match v {
            1 => Some(SegmentKind::Ring),
            2 => Some(SegmentKind::State),
            3 => Some(SegmentKind::Ledger),
            4 => Some(SegmentKind::Loads),
            _ => None,
        }
    }

    /// A lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SegmentKind::Ring => "ring",
            SegmentKind::State => "state",
            SegmentKind::Ledger => "ledger",
            SegmentKind::Loads => "loads",
        }
    }
}

/// One entry of the attach table.
#[repr(C)]
pub struct AttachSlot {
    /// The attached process id (0 = free).
    pub pid: AtomicU32,
    _pad: u32,
    /// The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), to
    /// tell a live process from a reused pid.
    pub start_ticks: AtomicU64,
}

/// The header page at offset 0 of every segment.
///
/// Another process can write a mapping at any time, so no reference to this struct is ever
/// made into shared memory: its plain fields are read by copy ([`Segment::header`]) and its
/// atomics are reached one by one.
#[repr(C)]
pub struct SegmentHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// A [`SegmentKind`] code.
    pub kind: u32,
    /// The segment's total length in bytes (header included).
    pub total_len: u64,
    /// The creator's process id.
    pub creator_pid: u32,
    /// The creator's user id.
    pub owner_uid: u32,
    /// Creation time, nanoseconds since the UNIX epoch.
    pub created_at_ns: u64,
    /// 1 once the creator has initialised the whole segment.
    pub ready: AtomicU32,
    _pad: u32,
    /// The creator's process start time (with `creator_pid`, identifies it).
    pub creator_start_ticks: u64,
    _reserved: [u64; 7],
    /// The processes attached to the segment.
    pub attached: [AttachSlot; MAX_ATTACHED],
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() <= HEADER_LEN);

/// The plain fields of a segment's [`SegmentHeader`], copied out of the mapping
/// ([`Segment::header`]): the creator writes them before it marks the segment ready, and
/// nobody changes them after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFields {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// A [`SegmentKind`] code.
    pub kind: u32,
    /// The segment's total length in bytes (header included).
    pub total_len: u64,
    /// The creator's process id.
    pub creator_pid: u32,
    /// The creator's user id.
    pub owner_uid: u32,
    /// Creation time, nanoseconds since the UNIX epoch.
    pub created_at_ns: u64,
    /// The creator's process start time (with `creator_pid`, identifies it).
    pub creator_start_ticks: u64,
}

/// How to create or open segments.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// The directory holding segment files (default `/dev/shm`).
    pub dir: PathBuf,
    /// The file mode for new segments (default `0o600`).
    pub mode: u32,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            dir: PathBuf::from(DEFAULT_DIR),
            mode: 0o600,
        }
    }
}

/// Checks a segment name: 1 to 200 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "segment name {name:?} must be 1-200 characters of A-Z a-z 0-9 . _ - and not start with '.'"
        )))
    }
}

/// The file path of segment `name` in `dir`.
pub fn segment_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{FILE_PREFIX}{name}"))
}

/// A mapped segment. Dropping it detaches this process; the memory stays mapped only as long
/// as the `Segment` lives.
pub struct Segment {
    map: MmapRaw,
    path: PathBuf,
    name: String,
    attach_index: Option<usize>,
}

// SAFETY: the mapping is plain shared memory; all shared mutation goes through atomics or the
// owning protocol (ring claims), never through `&mut` aliasing of the mapping itself.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only hands out raw pointers and atomic references.
unsafe impl Sync for Segment {}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::AlreadyExists => ErrorKind::Busy,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("{what} {}: {e}", path.display()))
}

impl Segment {
    /// Creates segment `name` of `len` bytes (header included) and maps it; `init` fills in
    /// the kind-specific part (everything after the header page) before the segment is marked
    /// ready. A stale segment of the same name is replaced; a live one gives `Busy`.
    pub fn create(
        name: &str,
        kind: SegmentKind,
        len: usize,
        opts: &SegmentOptions,
        init: impl FnOnce(*mut u8, usize),
    ) -> Result<Segment> {
        validate_name(name)?;
        if len < HEADER_LEN {
            return Err(Error::invalid("segment length is smaller than its header"));
        }
        let path = segment_path(&opts.dir, name);
        let file = match create_file(&path, opts.mode) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let (verdict, id) = judge(&path, name);
                match verdict {
                    // Stale (no live participant), or not a segment at all (a creator that
                    // died before writing its header): replace it. The removal takes only the
                    // file judged, and re-creating with O_EXCL keeps two racing creators from
                    // both winning.
                    Verdict::Stale | Verdict::Young | Verdict::Gone => {
                        if let Some(id) = id {
                            remove_if_unchanged(&path, id)
                                .map_err(|e| io_err("cannot replace stale segment", &path, e))?;
                        }
                        create_file(&path, opts.mode)
                            .map_err(|e| io_err("cannot create segment", &path, e))?
                    }
                    Verdict::Live => {
                        return Err(Error::new(
                            ErrorKind::Busy,
                            format!(
                                "segment {} exists and has live participants",
                                path.display()
                            ),
                        ))
                    }
                    Verdict::Unknown(why) => {
                        return Err(Error::new(
                            ErrorKind::Busy,
                            format!(
                            "segment {} exists and cannot be judged stale ({why}); not replaced",
                            path.display()
                        ),
                        ))
                    }
                }
            }
            Err(e) => return Err(io_err("cannot create segment", &path, e)),
        };
        file.set_len(len as u64)
            .map_err(|e| io_err("cannot size segment", &path, e))?;
        let map = MmapRaw::map_raw(&file).map_err(|e| io_err("cannot map segment", &path, e))?;
        let base = map.as_mut_ptr();
        // SAFETY: the mapping is `len` ≥ HEADER_LEN bytes, page-aligned, freshly created by
        // us with O_EXCL (zero-filled by ftruncate) and not marked ready, so no other process
        // uses it yet: a unique reference to the header is sound. (Another process may
        // already have mapped the file; until `ready` is set it only polls that atomic, which
        // is not written through this reference, and `gc` reads files with `pread`, a
        // kernel copy.)
        let h = unsafe { &mut *base.cast::<SegmentHeader>() };
        h.magic = MAGIC;
        h.layout_version = LAYOUT_VERSION;
        h.kind = kind as u32;
        h.total_len = len as u64;
        h.creator_pid = std::process::id();
        h.creator_start_ticks = process_start_ticks(h.creator_pid);
        // SAFETY: geteuid has no preconditions and cannot fail.
        h.owner_uid = unsafe { libc::geteuid() };
        h.created_at_ns = now_ns();
        // The kind-specific area starts after the header page: `len - HEADER_LEN` bytes.
        init(base.wrapping_add(HEADER_LEN), len - HEADER_LEN);
        let mut seg = Segment {
            map,
            path,
            name: name.to_owned(),
            attach_index: None,
        };
        seg.attach()?;
        seg.ready().store(1, Ordering::Release);
        Ok(seg)
    }

    /// Opens an existing segment of `kind`, checking its header.
    pub fn open(name: &str, kind: SegmentKind, opts: &SegmentOptions) -> Result<Segment> {
        validate_name(name)?;
        let path = segment_path(&opts.dir, name);
        let mut seg = Segment::map_existing(&path, name)?;
        seg.check(kind)?;
        seg.attach()?;
        Ok(seg)
    }

    /// Maps an existing segment read-write without attaching (for `stat`, `gc`).
    fn map_existing(path: &Path, name: &str) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err("cannot open segment", path, e))?;
        // A creator makes the file (O_EXCL) and then sizes it: a file still too small may be
        // one being created. Give it the same moment `check_header` gives `ready`.
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            let len = file
                .metadata()
                .map_err(|e| io_err("cannot stat segment", path, e))?
                .len();
            if len >= HEADER_LEN as u64 {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::corrupt(format!(
                    "{} is {len} bytes, too small for a segment header",
                    path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let map = MmapRaw::map_raw(&file).map_err(|e| io_err("cannot map segment", path, e))?;
        Ok(Segment {
            map,
            path: path.to_owned(),
            name: name.to_owned(),
            attach_index: None,
        })
    }

    /// Opens a segment read-only for inspection, attaching nothing (`erlmcp-flow stat`).
    pub fn inspect(name: &str, opts: &SegmentOptions) -> Result<Segment> {
        validate_name(name)?;
        let path = segment_path(&opts.dir, name);
        let seg = Segment::map_existing(&path, name)?;
        seg.check_header()?;
        Ok(seg)
    }

    fn check_header(&self) -> Result<()> {
        // The creator sets `ready` after initialising; give a concurrent creator a moment.
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.ready().load(Ordering::Acquire) != 1 {
            if Instant::now() > deadline {
                return Err(Error::corrupt(format!(
                    "{} was never finished by its creator (not ready)",
                    self.path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Copied after `ready` was seen (Acquire): what the creator wrote before it.
        let h = self.header();
        if h.magic != MAGIC {
            return Err(Error::corrupt(format!(
                "{} is not an erlmcp-flow segment (bad magic)",
                self.path.display()
            )));
        }
        if h.layout_version != LAYOUT_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{} has segment layout version {}, this build reads {LAYOUT_VERSION}",
                    self.path.display(),
                    h.layout_version
                ),
            ));
        }
        if h.total_len != self.map.len() as u64 {
            return Err(Error::corrupt(format!(
                "{}: header says {} bytes, file has {}",
                self.path.display(),
                h.total_len,
                self.map.len()
            )));
        }
        Ok(())
    }

    fn check(&self, kind: SegmentKind) -> Result<()> {
        self.check_header()?;
        let k = self.header().kind;
        if k != kind as u32 {
            let found = SegmentKind::from_u32(k).map_or("unknown", SegmentKind::name);
            return Err(Error::invalid(format!(
                "{} is a {found} segment, not a {}",
                self.path.display(),
                kind.name()
            )));
        }
        Ok(())
    }

    /// True when the creator is dead and no attached process is alive.
    pub fn is_stale(&self) -> bool {
        let h = self.header();
        self.live_participants() == 0 && !process_alive(h.creator_pid, h.creator_start_ticks)
    }

    /// A copy of the header's plain fields. Check it before trusting it: it comes from a
    /// file that any process with write access may have changed.
    pub fn header(&self) -> HeaderFields {
        let base = self.map.as_ptr();
        // One field of the header, copied out of the mapping.
        macro_rules! copy {
            ($field:ident: $t:ty) => {{
                // The field has type `$t` (a compile-time check; never run).
                let _: fn(&SegmentHeader) -> &$t = |h| &h.$field;
                let p = base
                    .wrapping_add(std::mem::offset_of!(SegmentHeader, $field))
                    .cast::<$t>();
                // SAFETY: the mapping is at least HEADER_LEN bytes (checked at map time) and
                // page aligned, so the field is in bounds and aligned. It is read once, by a
                // volatile copy: never re-read after a check, never through a reference that
                // would claim the shared bytes cannot change. It is an integer or a byte
                // array, valid for any bit pattern, so a concurrent or torn write by another
                // process can only give values the caller's checks refuse. The creator wrote
                // it before its Release store of `ready`.
                unsafe { p.read_volatile() }
            }};
        }
        HeaderFields {
            magic: copy!(magic: [u8; 8]),
            layout_version: copy!(layout_version: u32),
            kind: copy!(kind: u32),
            total_len: copy!(total_len: u64),
            creator_pid: copy!(creator_pid: u32),
            owner_uid: copy!(owner_uid: u32),
            created_at_ns: copy!(created_at_ns: u64),
            creator_start_ticks: copy!(creator_start_ticks: u64),
        }
    }

    /// The header's `ready` word. The header is never borrowed as a whole (its plain
    /// fields are copied, [`Segment::header`]); its atomics are borrowed one by one.
    fn ready(&self) -> &AtomicU32 {
        let p = self
            .map
            .as_ptr()
            .wrapping_add(std::mem::offset_of!(SegmentHeader, ready))
            .cast::<AtomicU32>();
        // SAFETY: the field lies inside the mapping (at least HEADER_LEN bytes), which lives
        // as long as `self`, and is aligned (the mapping is page aligned); an atomic is valid
        // for any bit pattern and may be changed by other processes.
        unsafe { &*p }
    }

    /// The header's attach table (borrowed alone, as [`Segment::ready`]).
    fn attached(&self) -> &[AttachSlot; MAX_ATTACHED] {
        let p = self
            .map
            .as_ptr()
            .wrapping_add(std::mem::offset_of!(SegmentHeader, attached))
            .cast::<[AttachSlot; MAX_ATTACHED]>();
        // SAFETY: as for `ready`: the table lies inside the mapping and is aligned, and an
        // `AttachSlot` is atomics (and padding nobody reads or writes), valid for any bit
        // pattern.
        unsafe { &*p }
    }

    /// The start of the kind-specific area (after the header page).
    pub fn body(&self) -> *mut u8 {
        // In bounds: the mapping is longer than HEADER_LEN (checked at map time).
        self.map.as_mut_ptr().wrapping_add(HEADER_LEN)
    }

    /// Length of the kind-specific area.
    pub fn body_len(&self) -> usize {
        self.map.len() - HEADER_LEN
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The segment's file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of live attachments (a process attached twice counts twice).
    pub fn live_participants(&self) -> usize {
        self.attached()
            .iter()
            .filter(|s| {
                let pid = s.pid.load(Ordering::Acquire);
                pid != 0 && process_alive(pid, s.start_ticks.load(Ordering::Acquire))
            })
            .count()
    }

    fn attach(&mut self) -> Result<()> {
        let me = std::process::id();
        let start = process_start_ticks(me);
        for (i, s) in self.attached().iter().enumerate() {
            let pid = s.pid.load(Ordering::Acquire);
            let free = pid == 0 || !process_alive(pid, s.start_ticks.load(Ordering::Acquire));
            if free
                && s.pid
                    .compare_exchange(pid, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                s.start_ticks.store(start, Ordering::Release);
                self.attach_index = Some(i);
                return Ok(());
            }
        }
        Err(Error::new(
            ErrorKind::Full,
            format!(
                "{}: all {MAX_ATTACHED} attach slots are taken by live processes",
                self.path.display()
            ),
        ))
    }

    /// Test support: makes the segment look as if its creator died (a pid that cannot exist).
    #[cfg(test)]
    pub(crate) fn forge_dead_creator(&self) {
        let h = self.map.as_mut_ptr().cast::<SegmentHeader>();
        // SAFETY: test-only; the header is inside the mapping and these plain fields are not
        // read concurrently by the tests that call this.
        unsafe { (*h).creator_pid = i32::MAX as u32 - 5 };
    }

    /// Removes the segment's file now (mapped participants keep their mapping).
    pub fn unlink(&self) -> Result<()> {
        std::fs::remove_file(&self.path).map_err(|e| io_err("cannot remove segment", &self.path, e))
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .finish()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(i) = self.attach_index.take() {
            let s = &self.attached()[i];
            s.start_ticks.store(0, Ordering::Release);
            s.pid.store(0, Ordering::Release);
        }
    }
}

/// Creates `path` with O_EXCL and exactly `mode` (set with `fchmod` after creation, so the
/// umask can neither widen nor narrow it).
pub(crate) fn create_file(path: &Path, mode: u32) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have narrowed (or a default ACL widened) the mode: set it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Nanoseconds since the UNIX epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The fields of `/proc/<pid>/stat` that liveness needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `T`, `Z` (zombie), `X` (dead), ...
    state: u8,
    /// Field 22: start time in clock ticks since boot.
    start_ticks: u64,
}

/// What `/proc` says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcEntry {
    Stat(ProcStat),
    /// No entry: the process is gone, or `/proc` does not show it (not mounted, `hidepid`).
    Missing,
    /// An entry that cannot be read or parsed (permissions): says nothing about liveness.
    Unreadable,
}

fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    // Field 2 (comm) may contain spaces and parentheses: parse after the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = *fields.next()?.as_bytes().first()?; // field 3
    let start_ticks = fields.nth(18)?.parse().ok()?; // field 22
    Some(ProcStat { state, start_ticks })
}

fn read_proc_stat(pid: u32) -> ProcEntry {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_proc_stat(&text).map_or(ProcEntry::Unreadable, ProcEntry::Stat),
        // ESRCH: the process went away while its entry was being read.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            ProcEntry::Missing
        }
        Err(_) => ProcEntry::Unreadable,
    }
}

/// True when `kill(pid, 0)` finds the pid (a zombie included; EPERM means it exists).
fn pid_exists(pid: u32) -> bool {
    // SAFETY: kill with signal 0 performs only the existence and permission check.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The start time of process `pid` in clock ticks since boot, or 0 when unknown (no such
/// process, or its `/proc` entry cannot be read). A zombie still has its start time.
pub fn process_start_ticks(pid: u32) -> u64 {
    match read_proc_stat(pid) {
        ProcEntry::Stat(s) => s.start_ticks,
        ProcEntry::Missing | ProcEntry::Unreadable => 0,
    }
}

/// True when process `pid` is alive: it exists, is not a zombie (`Z`, or `X`/`x` dead, in
/// `/proc/<pid>/stat`: killed but not yet reaped by its parent, which may never happen in a
/// container whose PID 1 does not reap) and, when `start_ticks` is non-zero, is the same
/// process that recorded `start_ticks`, not a later one that reused the pid.
///
/// What cannot be read is not taken for dead: a process that `kill(pid, 0)` finds but whose
/// `/proc` entry is unreadable or hidden (permissions, `hidepid`, `/proc` not mounted) counts
/// as alive.
pub fn process_alive(pid: u32, start_ticks: u64) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // Miri cannot call kill(2): under it, only this process exists.
    if cfg!(miri) {
        return pid == std::process::id();
    }
    if !pid_exists(pid) {
        return false;
    }
    match read_proc_stat(pid) {
        ProcEntry::Stat(s) => {
            !matches!(s.state, b'Z' | b'X' | b'x')
                && (start_ticks == 0 || s.start_ticks == start_ticks)
        }
        // Reaped between the two looks (then kill finds nothing now), or /proc does not show
        // this pid (then kill still finds it and we cannot tell more).
        ProcEntry::Missing => pid_exists(pid),
        ProcEntry::Unreadable => true,
    }
}

/// Stale: the creator is dead and no attached process is alive.
fn stale_by(
    creator_pid: u32,
    creator_start: u64,
    attached: impl IntoIterator<Item = (u32, u64)>,
) -> bool {
    !process_alive(creator_pid, creator_start)
        && attached
            .into_iter()
            .all(|(pid, start)| pid == 0 || !process_alive(pid, start))
}

/// A file that is not a segment (or whose creator died before writing the header) is taken
/// for abandoned only once it is this old.
pub const GC_MIN_AGE: Duration = Duration::from_secs(60);

/// What [`gc`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Files removed: provably stale (see [`gc`]).
    pub removed: Vec<PathBuf>,
    /// Files kept because they are in use: segments with a live participant, key files whose
    /// value is in use, temporary key files whose writer is alive, and files that are not
    /// segments but younger than [`GC_MIN_AGE`].
    pub kept: Vec<PathBuf>,
    /// Files kept because `gc` could not judge them (or could not remove them), with the
    /// reason: unreadable (permission denied), not a regular file, a foreign layout version.
    /// Such a file is never removed.
    pub skipped: Vec<GcSkipped>,
}

/// A file [`gc`] left alone because it could not prove it stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcSkipped {
    /// The file.
    pub path: PathBuf,
    /// Why it could not be judged (or removed).
    pub reason: String,
}

/// Identifies one file (not one name): device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// What [`judge`] can tell about a file named `emf-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// It went away meanwhile.
    Gone,
    /// Provably stale: may be removed.
    Stale,
    /// In use (a live participant, publisher or writer).
    Live,
    /// Not a segment (or one whose creator has not written the header yet), younger than
    /// [`GC_MIN_AGE`]: not abandoned yet.
    Young,
    /// Cannot be judged; never removed. The reason.
    Unknown(String),
}

/// A copy of a segment's header page, read with `pread`: no mapping, so a file that another
/// process truncates cannot fault the reader.
struct HeaderCopy(Vec<u8>);

impl HeaderCopy {
    fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }

    fn u64_at(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[off..off + 8]);
        u64::from_ne_bytes(b)
    }

    fn magic(&self) -> &[u8] {
        let off = std::mem::offset_of!(SegmentHeader, magic);
        &self.0[off..off + MAGIC.len()]
    }

    fn layout_version(&self) -> u32 {
        self.u32_at(std::mem::offset_of!(SegmentHeader, layout_version))
    }

    fn kind(&self) -> u32 {
        self.u32_at(std::mem::offset_of!(SegmentHeader, kind))
    }

    fn creator(&self) -> (u32, u64) {
        (
            self.u32_at(std::mem::offset_of!(SegmentHeader, creator_pid)),
            self.u64_at(std::mem::offset_of!(SegmentHeader, creator_start_ticks)),
        )
    }

    fn attached(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let table = std::mem::offset_of!(SegmentHeader, attached);
        (0..MAX_ATTACHED).map(move |i| {
            let slot = table + i * std::mem::size_of::<AttachSlot>();
            (
                self.u32_at(slot + std::mem::offset_of!(AttachSlot, pid)),
                self.u64_at(slot + std::mem::offset_of!(AttachSlot, start_ticks)),
            )
        })
    }
}

/// Judges the file `path`, named `emf-<name>`, and identifies the file judged (so that a
/// removal can make sure it removes that file and not a newer one of the same name).
fn judge(path: &Path, name: &str) -> (Verdict, Option<FileId>) {
    // O_NOFOLLOW: a symbolic link is not a segment; O_NONBLOCK: a FIFO must not hang gc.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Verdict::Gone, None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return (
                Verdict::Unknown("a symbolic link, not a segment".into()),
                None,
            )
        }
        Err(e) => return (Verdict::Unknown(format!("cannot open: {e}")), None),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return (Verdict::Unknown(format!("cannot stat: {e}")), None),
    };
    if !meta.file_type().is_file() {
        return (Verdict::Unknown("not a regular file".into()), None);
    }
    let id = FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    // A modification time in the future reads as age zero: young.
    let age = meta
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or(Duration::ZERO);
    let abandoned = || {
        if age > GC_MIN_AGE {
            Verdict::Stale
        } else {
            Verdict::Young
        }
    };
    let verdict = match state_files::store_file(name) {
        Some(state_files::StoreFile::KeyTemp { pid, start_ticks }) => {
            if process_alive(pid, start_ticks) {
                Verdict::Live
            } else {
                Verdict::Stale
            }
        }
        Some(state_files::StoreFile::Key) => {
            judge_key(&file, meta.len(), path, name).unwrap_or_else(abandoned)
        }
        None => judge_segment(&file, meta.len()).unwrap_or_else(abandoned),
    };
    (verdict, Some(id))
}

/// A key file of the state store: stale exactly when the value it points at is gone or
/// stale. `None` when the file is not a well-formed key file.
fn judge_key(file: &File, len: u64, path: &Path, name: &str) -> Option<Verdict> {
    /// Larger files are not read (a key that long is not plausible; the file is kept).
    const MAX_KEY_FILE: u64 = 64 << 20;
    if len > MAX_KEY_FILE {
        return Some(Verdict::Unknown(format!(
            "a state key file of {len} bytes, too large to read"
        )));
    }
    let mut content = vec![0u8; len as usize];
    match file.read_exact_at(&mut content, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => return Some(Verdict::Unknown(format!("cannot read: {e}"))),
    }
    let value = state_files::key_file_value(name, &content)?;
    let value_path = path.with_file_name(format!("{FILE_PREFIX}{value}"));
    Some(match judge(&value_path, &value).0 {
        Verdict::Gone | Verdict::Stale => Verdict::Stale,
        Verdict::Live | Verdict::Young => Verdict::Live,
        Verdict::Unknown(why) => Verdict::Unknown(format!(
            "a state key file whose value {} cannot be judged: {why}",
            value_path.display()
        )),
    })
}

/// A segment: stale when its creator is dead and no attached process is alive. `None` when
/// the file is not a segment of any layout (too short, no magic) or its creator has not
/// written the header yet.
fn judge_segment(file: &File, len: u64) -> Option<Verdict> {
    if len < HEADER_LEN as u64 {
        return None;
    }
    let mut page = vec![0u8; HEADER_LEN];
    match file.read_exact_at(&mut page, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => return Some(Verdict::Unknown(format!("cannot read: {e}"))),
    }
    let h = HeaderCopy(page);
    if h.magic() != MAGIC {
        return None;
    }
    if h.layout_version() != LAYOUT_VERSION {
        return Some(Verdict::Unknown(format!(
            "segment layout version {}, this build reads {LAYOUT_VERSION}",
            h.layout_version()
        )));
    }
    let (pid, start) = h.creator();
    if pid == 0 {
        return None;
    }
    if h.kind() == SegmentKind::Ledger as u32 {
        // A scheduler's ledger outlives its processes on purpose: it is what a restarted
        // scheduler replays. Only its owner (or `ShmLedger::remove`) removes it.
        return Some(Verdict::Live);
    }
    Some(if stale_by(pid, start, h.attached()) {
        Verdict::Stale
    } else {
        Verdict::Live
    })
}

/// How [`remove_if_unchanged`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// The judged file was removed.
    Removed,
    /// The name now holds another file (replaced after it was judged): left in place.
    Replaced,
    /// Nothing was there any more.
    Gone,
}

/// Removes `path` only if it still is the file `id`. Unlinking by name right after judging
/// could remove a file that replaced the judged one in between (a key republished with
/// `rename`, a stale segment re-created by [`Segment::create`]). So the name is first renamed
/// to a private one in the same directory, the file behind it is compared with `id`, and a
/// newer file is put back under its name with `link` (which never overwrites: if an even
/// newer one took the name meanwhile, the one in hand is superseded and goes).
fn remove_if_unchanged(path: &Path, id: FileId) -> std::io::Result<Removal> {
    use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering}; // std-atomic-ok: a process-local name counter in a static (loom cannot build one)
    static COUNTER: StdAtomicU64 = StdAtomicU64::new(0);
    let n = COUNTER.fetch_add(1, StdOrdering::Relaxed);
    // `emf-.` cannot be a segment name (names never start with '.'); if this process dies
    // before removing it, a later gc judges the file by its content like any other.
    let hold = path.with_file_name(format!("{FILE_PREFIX}.gc-{}-{n}", std::process::id()));
    match std::fs::rename(path, &hold) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Removal::Gone),
        Err(e) => return Err(e),
    }
    let held = match std::fs::symlink_metadata(&hold) {
        Ok(m) => m,
        // Another gc removed it under its private name: a name that process chose, not
        // ours, so this cannot happen; treat it as gone.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Removal::Gone),
        Err(e) => return Err(e),
    };
    if held.dev() == id.dev && held.ino() == id.ino {
        std::fs::remove_file(&hold)?;
        return Ok(Removal::Removed);
    }
    match std::fs::hard_link(&hold, path) {
        Ok(()) => std::fs::remove_file(&hold)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::remove_file(&hold)?,
        // A file system without hard links: put it back by rename.
        Err(_) => std::fs::rename(&hold, path)?,
    }
    Ok(Removal::Replaced)
}

/// Removes what is provably stale among the files named `emf-*` in `dir`, and nothing else.
///
/// The rules, per file:
///
/// * a **segment** (its header's magic) is removed when its creator is dead and no process
///   in its attach table is alive ([`Segment::is_stale`]; a zombie is dead, see
///   [`process_alive`]), and kept otherwise; a scheduler's **ledger** segment
///   ([`SegmentKind::Ledger`]) is always kept (it is what a restarted scheduler replays);
/// * a **state key file** (`emf-state.<store>.key.<hash>`, written by the state store) is
///   removed when the value segment it points at is gone or stale, and kept while that value
///   is in use (its publisher or a reader alive), however old the key file is; a temporary key
///   file (`….tmp-<pid>-…`) is removed once the process writing it is dead;
/// * a file that is **not a segment** (too short, no magic, or a creator that died before
///   writing the header) and is older than [`GC_MIN_AGE`] is removed; a younger one is kept;
/// * a file that **cannot be judged** is never removed and is reported in
///   [`GcReport::skipped`] with the reason: it cannot be opened or read (permission denied
///   is not proof of staleness: a process of another user may use it), it is not a regular
///   file or is a symbolic link, or its layout version is not this build's. A stale file
///   whose removal fails (e.g. a sticky directory) is reported there too.
///
/// Files are read with `pread`, never mapped, and a file is removed only if it is still the
/// file that was judged: one that replaced it meanwhile (same name) stays.
pub fn gc(dir: &Path) -> Result<GcReport> {
    let mut report = GcReport::default();
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name
            .as_bytes()
            .strip_prefix(FILE_PREFIX.as_bytes())
            .map(OsStr::from_bytes)
        else {
            continue;
        };
        let path = entry.path();
        let (verdict, id) = judge(&path, &name.to_string_lossy());
        match (verdict, id) {
            (Verdict::Gone, _) => {}
            (Verdict::Live | Verdict::Young, _) => report.kept.push(path),
            (Verdict::Unknown(reason), _) => report.skipped.push(GcSkipped { path, reason }),
            (Verdict::Stale, None) => report.skipped.push(GcSkipped {
                path,
                reason: "stale, but the file could not be identified".into(),
            }),
            (Verdict::Stale, Some(id)) => match remove_if_unchanged(&path, id) {
                Ok(Removal::Removed) => report.removed.push(path),
                Ok(Removal::Replaced) => report.kept.push(path),
                Ok(Removal::Gone) => {}
                Err(e) => report.skipped.push(GcSkipped {
                    path,
                    reason: format!("stale, but cannot be removed: {e}"),
                }),
            },
        }
    }
    Ok(report)
}

/// The names of the segments in `dir` (files `emf-NAME` with a valid NAME: gc's private
/// names `emf-.gc-*` are not listed).
pub fn list(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(FILE_PREFIX))
                .filter(|n| validate_name(n).is_ok())
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("emf-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "ring-1", "A.b_c-9", &"x".repeat(200)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "sp ace",
            "é",
            &"x".repeat(201),
            "a\0b",
        ] {
            assert_eq!(
                validate_name(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files / calls kill(2)")]
    fn create_open_and_header_checks() {
        let dir = temp_dir("seg");
        let opts = SegmentOptions {
            dir: dir.clone(),
            mode: 0o640,
        };
        let seg = Segment::create("one", SegmentKind::Ring, 8192, &opts, |p, n| {
            // SAFETY: the body is n bytes of fresh mapping.
            unsafe { std::ptr::write_bytes(p, 0xAB, n) }
        })
        .unwrap();
        let meta = std::fs::metadata(seg.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(seg.header().creator_pid, std::process::id());
        let other = Segment::open("one", SegmentKind::Ring, &opts).unwrap();
        // SAFETY: body has ≥ 1 byte; written by the creator before `ready`.
        assert_eq!(unsafe { *other.body() }, 0xAB);
        assert_eq!(seg.live_participants(), 2, "each live attachment counts");
        let e = Segment::open("one", SegmentKind::State, &opts).unwrap_err();
        assert!(e.message().contains("ring segment"), "{e}");
        let e = Segment::create("one", SegmentKind::Ring, 8192, &opts, |_, _| {}).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert_eq!(
            Segment::open("missing", SegmentKind::Ring, &opts)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        // A file that is not a segment.
        std::fs::write(segment_path(&dir, "junk"), vec![0u8; 8192]).unwrap();
        let e = Segment::open("junk", SegmentKind::Ring, &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        std::fs::write(segment_path(&dir, "tiny"), b"abc").unwrap();
        assert_eq!(
            Segment::open("tiny", SegmentKind::Ring, &opts)
                .unwrap_err()
                .kind(),
            ErrorKind::Corrupt
        );
        drop(other);
        drop(seg);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files / calls kill(2)")]
    fn stale_segments_are_replaced_and_collected() {
        let dir = temp_dir("gc");
        let opts = SegmentOptions {
            dir: dir.clone(),
            ..Default::default()
        };
        let seg = Segment::create("s", SegmentKind::Ring, 8192, &opts, |_, _| {}).unwrap();
        // Simulate a crashed owner: the attach slot names a pid that does not exist.
        let slot = &seg.attached()[0];
        slot.pid.store(i32::MAX as u32 - 7, Ordering::Release);
        seg.forge_dead_creator();
        let path = seg.path().to_owned();
        std::mem::forget(seg); // like kill -9: no detach
        let again = Segment::create("s", SegmentKind::Ring, 8192, &opts, |_, _| {}).unwrap();
        assert_eq!(again.live_participants(), 1);
        let kept = gc(&dir).unwrap();
        assert_eq!(kept.kept, vec![path.clone()]);
        again.attached()[0]
            .pid
            .store(i32::MAX as u32 - 7, Ordering::Release);
        again.forge_dead_creator();
        std::mem::forget(again);
        let r = gc(&dir).unwrap();
        assert_eq!(r.removed, vec![path]);
        assert!(list(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Blocks until child `pid` has exited, leaving it unreaped (a zombie).
    fn wait_exit_unreaped(pid: u32) {
        loop {
            // SAFETY: siginfo_t is plain data, for which all-zero bytes are a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid, writable siginfo_t that outlives the call; WNOWAIT
            // leaves the child waitable (not reaped).
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if r == 0 {
                return;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "waitid: {e}");
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "spawns and kills a process")]
    fn a_zombie_is_dead() {
        // `cat` blocks on its stdin; if this test panics, the pipe closes and it exits.
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn cat");
        let pid = child.id();
        let start = process_start_ticks(pid);
        assert!(start > 0);
        assert!(process_alive(pid, start), "a running child is alive");
        child.kill().unwrap(); // SIGKILL; not reaped
        wait_exit_unreaped(pid);
        assert_eq!(
            read_proc_stat(pid),
            ProcEntry::Stat(ProcStat {
                state: b'Z',
                start_ticks: start
            }),
            "the child is a zombie with its start time intact"
        );
        assert!(pid_exists(pid), "kill(2) still finds a zombie");
        assert!(!process_alive(pid, start), "a zombie is dead");
        assert!(
            !process_alive(pid, 0),
            "a zombie is dead, start time or not"
        );
        child.wait().unwrap(); // reap
        assert!(!process_alive(pid, start));
        assert_eq!(process_start_ticks(pid), 0);
    }

    #[test]
    fn proc_stat_is_parsed_after_the_last_parenthesis() {
        let tail = "Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21";
        let stat = format!("77 (evil) S 1 (x) {tail}");
        assert_eq!(
            parse_proc_stat(&stat),
            Some(ProcStat {
                state: b'Z',
                start_ticks: 424242
            })
        );
        assert_eq!(parse_proc_stat("77 (short) S 1 2"), None);
        assert_eq!(parse_proc_stat("no parenthesis"), None);
    }

    /// Sets the modification time of `path` `secs` seconds into the past.
    pub(crate) fn age(path: &Path, secs: u64) {
        let t = std::time::SystemTime::now() - Duration::from_secs(secs);
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files / calls kill(2)")]
    fn gc_skips_what_it_cannot_judge() {
        let dir = temp_dir("gc-skip");
        // A directory, a symbolic link and a FIFO named like segments, and a segment of a
        // layout this build does not read whose (v1) creator and attach fields look dead:
        // none may be removed, however old, and each is reported with a reason.
        let sub = segment_path(&dir, "adir");
        std::fs::create_dir(&sub).unwrap();
        let target = dir.join("elsewhere");
        std::fs::write(&target, vec![0u8; 10]).unwrap();
        let link = segment_path(&dir, "alink");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = segment_path(&dir, "afifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let opts = SegmentOptions {
            dir: dir.clone(),
            ..Default::default()
        };
        let future = Segment::create("v2", SegmentKind::Ring, 8192, &opts, |_, _| {}).unwrap();
        let v2 = future.path().to_owned();
        drop(future);
        let mut page = std::fs::read(&v2).unwrap();
        let off = std::mem::offset_of!(SegmentHeader, layout_version);
        page[off..off + 4].copy_from_slice(&(LAYOUT_VERSION + 1).to_ne_bytes());
        let off = std::mem::offset_of!(SegmentHeader, creator_pid);
        page[off..off + 4].copy_from_slice(&(i32::MAX as u32 - 5).to_ne_bytes());
        std::fs::write(&v2, &page).unwrap();
        for p in [&sub, &fifo, &v2] {
            age(p, 3600);
        }
        let r = gc(&dir).unwrap();
        assert!(r.removed.is_empty(), "{r:?}");
        let mut skipped: Vec<_> = r.skipped.iter().map(|s| s.path.clone()).collect();
        skipped.sort();
        let mut want = vec![sub.clone(), link.clone(), fifo.clone(), v2.clone()];
        want.sort();
        assert_eq!(skipped, want, "{r:?}");
        let reason = |p: &Path| {
            r.skipped
                .iter()
                .find(|s| s.path == p)
                .unwrap()
                .reason
                .clone()
        };
        assert!(reason(&sub).contains("not a regular file"), "{r:?}");
        assert!(reason(&fifo).contains("not a regular file"), "{r:?}");
        assert!(reason(&link).contains("symbolic link"), "{r:?}");
        assert!(reason(&v2).contains("layout version"), "{r:?}");
        for p in [&sub, &link, &fifo, &v2] {
            assert!(
                std::fs::symlink_metadata(p).is_ok(),
                "{} survives",
                p.display()
            );
        }
        assert!(target.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files / calls kill(2)")]
    fn gc_removes_old_junk_and_keeps_young_junk() {
        let dir = temp_dir("gc-junk");
        let old = segment_path(&dir, "old");
        let young = segment_path(&dir, "young");
        std::fs::write(&old, b"not a segment").unwrap();
        std::fs::write(&young, vec![0u8; 8192]).unwrap();
        age(&old, 120);
        let r = gc(&dir).unwrap();
        assert_eq!((r.removed, r.kept), (vec![old.clone()], vec![young]));
        assert!(r.skipped.is_empty());
        assert!(!old.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "renames files")]
    fn removal_takes_only_the_file_judged() {
        let dir = temp_dir("gc-race");
        let path = segment_path(&dir, "x");
        std::fs::write(&path, b"judged stale").unwrap();
        let (_, id) = judge(&path, "x");
        let id = id.unwrap();
        // Replaced after it was judged (as a key file is republished): the newcomer stays.
        let newer = dir.join("newer");
        std::fs::write(&newer, b"newer").unwrap();
        std::fs::rename(&newer, &path).unwrap();
        assert_eq!(remove_if_unchanged(&path, id).unwrap(), Removal::Replaced);
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
        let (_, id) = judge(&path, "x");
        assert_eq!(
            remove_if_unchanged(&path, id.unwrap()).unwrap(),
            Removal::Removed
        );
        assert!(!path.exists());
        assert_eq!(
            remove_if_unchanged(&path, id.unwrap()).unwrap(),
            Removal::Gone
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "no private names left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files / calls kill(2)")]
    fn liveness_checks_start_time() {
        let me = std::process::id();
        let start = process_start_ticks(me);
        assert!(start > 0);
        assert!(process_alive(me, start));
        assert!(process_alive(me, 0));
        assert!(
            !process_alive(me, start + 1),
            "a reused pid is not the same process"
        );
        assert!(!process_alive(0, 0));
        assert!(!process_alive(i32::MAX as u32 - 3, 0));
    }
}

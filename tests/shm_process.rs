//! Shared-memory crash safety across processes (issue 9, items 2 to 4), through the public
//! API and the built binary:
//!
//! * a producer killed but not reaped (a zombie) is dead: the consumer passes its unfinished
//!   claim and its slot can be taken over, without waiting for the reap;
//! * the state store's key files are private (0600) whatever the umask;
//! * `shm gc` run by another user keeps a live segment it cannot open.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erlmcp_flow::ring::{seq, Ring, RingOptions, WaitStrategy};
use erlmcp_flow::shm;
use erlmcp_flow::state::StateStore;

mod common;
use common::{chmod, Dir, Public};

/// Kills (SIGKILL) and reaps the child on drop, so that a failing test leaves no process.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ring(dir: &Dir, mpsc: bool) -> Ring {
    Ring::create(
        "r",
        &RingOptions {
            capacity: 1 << 14,
            multi_producer: mpsc,
            stall_timeout: Duration::from_millis(50),
            ..RingOptions::in_dir(&dir.0)
        },
    )
    .unwrap()
}

/// Starts `erlmcp-flow ring produce` with `--hold-claim`: it sends `count` frames of
/// producer `id`, then claims one more and holds it uncommitted while its stdin is open.
/// Returns once the claim is held.
fn stuck_producer(dir: &Dir, id: u32, count: u64) -> Reaper {
    let mut child = Command::new(env!("CARGO_BIN_EXE_erlmcp-flow"))
        .args(["ring", "produce", "r", "--hold-claim", "--dir"])
        .arg(&dir.0)
        .args(["--id", &id.to_string(), "--count", &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn producer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("holding a claim"),
        "producer said {line:?}"
    );
    Reaper(child)
}

/// SIGKILLs the child and waits until it has exited, without reaping it: it stays a zombie
/// (checked in /proc) until the Reaper drops.
fn kill_leave_zombie(child: &mut Reaper) -> u32 {
    let pid = child.0.id();
    child.0.kill().unwrap();
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
            break;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "waitid: {e}");
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat.rsplit_once(')').unwrap().1.split_whitespace().next();
    assert_eq!(state, Some("Z"), "the producer is a zombie: {stat}");
    pid
}

/// Polls until frame `want` of producer `id` arrived; fails after `limit`.
fn receive_until(r: &Ring, t: &mut seq::Tracker, id: u32, want: u64, limit: Duration) {
    let mut c = r.consumer().unwrap();
    let deadline = Instant::now() + limit;
    while t.next_of(id) < want {
        c.poll(4096, |f| {
            t.record(f).unwrap();
        })
        .unwrap();
        assert!(
            Instant::now() < deadline,
            "frame {want} of producer {id} did not arrive within {limit:?} (a claim blocks the ring)"
        );
        c.wait(
            WaitStrategy::SpinThenPark { spins: 100 },
            Duration::from_millis(100),
        )
        .unwrap();
    }
}

#[test]
fn the_consumer_passes_a_zombie_producers_claim() {
    let dir = Dir::new("zombie-claim");
    let r = ring(&dir, true);
    let mut t = seq::Tracker::default();
    let mut child = stuck_producer(&dir, 1, 5);
    receive_until(&r, &mut t, 1, 5, Duration::from_secs(30));
    let pid = kill_leave_zombie(&mut child);
    assert!(!shm::process_alive(pid, 0), "a zombie is dead");
    // A live producer writes behind the zombie's claim: the consumer must pass the claim
    // (after its stall timeout of 50 ms) while the zombie is still unreaped.
    let mut p = r.producer().unwrap();
    let mut buf = [0u8; 64];
    seq::fill(&mut buf, 2, 0);
    p.send(&buf).unwrap();
    receive_until(&r, &mut t, 2, 1, Duration::from_secs(10));
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .next(),
        Some("Z"),
        "passed while the producer was still a zombie"
    );
    assert_eq!((t.next_of(1), r.stats().corrupt_frames), (5, 0));
    drop(child); // reap
}

#[test]
fn a_zombie_producers_slot_is_taken_over() {
    let dir = Dir::new("zombie-slot");
    let r = ring(&dir, false);
    let mut child = stuck_producer(&dir, 1, 3);
    let pid = kill_leave_zombie(&mut child);
    // Single-producer ring: the only slot is the zombie's; a live producer may take it.
    let mut p = r
        .producer()
        .expect("the slot of a zombie producer is free to take");
    let mut buf = [0u8; 64];
    seq::fill(&mut buf, 2, 0);
    p.send(&buf).unwrap();
    let mut t = seq::Tracker::default();
    receive_until(&r, &mut t, 2, 1, Duration::from_secs(10));
    assert_eq!((t.next_of(1), r.stats().dead_reaped), (3, 1));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "taken over before the reap"
    );
    drop(child);
}

/// Sets the process umask for as long as it lives (the umask is process-wide: no other test
/// in this file depends on it).
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        // SAFETY: umask has no preconditions and cannot fail.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

#[test]
fn state_key_files_are_private_under_umask_000() {
    let dir = Dir::new("umask");
    let s = StateStore::open("s", &dir.0).unwrap();
    {
        let _u = Umask::set(0);
        s.share_state("k", b"v1").unwrap();
        s.share_state("k", b"v2").unwrap(); // replaces the key file
    }
    let mut seen = 0;
    for e in std::fs::read_dir(&dir.0).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{}", e.path().display());
        seen += 1;
    }
    assert_eq!(seen, 2, "one value and its key file");
    assert_eq!(
        s.read_shared_state(s.lookup("k").unwrap()).unwrap().value(),
        b"v2"
    );
}

#[test]
fn gc_by_another_user_keeps_a_live_ring_it_cannot_open() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipped: needs root, to own a ring as one user and run gc as another (uid 65534)"
        );
        return;
    }
    // The repository may live in a directory other users cannot enter: run a copy of the
    // binary from a world-readable place.
    let public = Public::new("gc-other-user");
    let bin = public.binary();
    // A shared directory everyone may write to, without the sticky bit: the other user may
    // unlink anything in it.
    let dir = public.subdir("shared", 0o777);
    // A live ring of root's, mode 0600, idle for two minutes.
    let r = Ring::create("live", &RingOptions::in_dir(&dir)).unwrap();
    let ring_path = shm::segment_path(&dir, "live");
    let mode = std::fs::metadata(&ring_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Abandoned junk the other user can read: gc may and does remove it (so the run below
    // demonstrably judged the directory).
    let junk = shm::segment_path(&dir, "junk");
    std::fs::write(&junk, b"not a segment").unwrap();
    chmod(&junk, 0o644);
    let two_minutes_ago = std::time::SystemTime::now() - Duration::from_secs(120);
    for p in [&ring_path, &junk] {
        std::fs::File::open(p)
            .unwrap()
            .set_modified(two_minutes_ago)
            .unwrap();
    }
    let out = Command::new(&bin)
        .args(["shm", "gc", "--dir"])
        .arg(&dir)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gc failed: {stdout}{stderr}");
    assert!(
        ring_path.exists(),
        "gc as another user deleted a live ring it could not open: {stdout}"
    );
    assert!(
        !junk.exists(),
        "gc ran and removed what it could judge: {stdout}"
    );
    let skipped = format!("skipped {}: cannot open", ring_path.display());
    assert!(stdout.contains(&skipped), "{stdout}");
    assert!(stdout.contains("ermission denied"), "{stdout}");
    assert!(stdout.contains("1 removed, 0 kept"), "{stdout}");
    // And the ring still works.
    let mut p = r.producer().unwrap();
    p.send(b"still here").unwrap();
    let mut c = r.consumer().unwrap();
    let mut got = Vec::new();
    c.poll(1, |f| got.extend_from_slice(f)).unwrap();
    assert_eq!(got, b"still here");
}

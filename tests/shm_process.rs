//! Shared-memory crash safety across processes, through the public API and the built binary:
//!
//! * a producer killed but not reaped (a zombie) is dead: the consumer passes its unfinished
//!   claim and its slot can be taken over, without waiting for the reap.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erlmcp_flow::ring::{seq, Ring, RingOptions, WaitStrategy};
use erlmcp_flow::shm;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("emf-shmproc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

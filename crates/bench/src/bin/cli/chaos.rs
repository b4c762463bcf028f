//! `erlmcp-flow ring chaos` and `ring consume --manual`: a kill -9 campaign over rings.
//!
//! Two rings, one single-producer and one multi-producer (three slots), each with producer
//! processes (`ring produce --slot K`: frames numbered on from the slot's committed count)
//! and a consumer process (`ring consume --manual`: every byte checked, progress saved
//! before each acknowledgement). The campaign SIGKILLs producers, consumers or both at
//! random moments, sometimes leaves the dead process unreaped (a zombie) while its
//! successor takes the slot over, and restarts them. A consumer that sees a corrupt frame,
//! a gap or a duplicate exits non-zero and fails the campaign. At the end a last consumer
//! drains each ring, and every slot's committed count must equal what the consumers
//! accepted: no frame lost after `send` returned, none delivered twice past an ack.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use erlmcp_flow::ring::{seq, AckMode, Ring, RingOptions, WaitStrategy};
use erlmcp_flow::shm::SegmentOptions;

use super::{ChaosArgs, ConsumeArgs};

/// What a manual consumer has accepted, saved before each acknowledgement.
#[derive(Default)]
struct Progress {
    next: HashMap<u32, u64>,
    frames: u64,
    redelivered: u64,
}

impl Progress {
    fn load(path: &Path) -> Result<Progress, String> {
        let mut p = Progress::default();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some(k), Some(v)) = (w.next(), w.next().and_then(|v| v.parse::<u64>().ok()))
            else {
                return Err(format!("{}: bad line {line:?}", path.display()));
            };
            match k {
                "frames" => p.frames = v,
                "redelivered" => p.redelivered = v,
                id => {
                    let id = id
                        .parse()
                        .map_err(|_| format!("{}: bad id {id:?}", path.display()))?;
                    p.next.insert(id, v);
                }
            }
        }
        Ok(p)
    }

    /// Written to a temporary file and renamed: a consumer killed while saving leaves the
    /// previous progress whole.
    fn save(&self, path: &Path) -> Result<(), String> {
        let mut text = format!("frames {}\nredelivered {}\n", self.frames, self.redelivered);
        for (id, n) in &self.next {
            text.push_str(&format!("{id} {n}\n"));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Exit codes of `ring consume --manual`.
const EXIT_CORRUPT: u8 = 3;
const EXIT_GAP: u8 = 4;
const EXIT_DUPLICATE: u8 = 5;

/// `ring consume NAME --manual --progress FILE [--until-empty]`.
pub fn consume_manual(r: &Ring, a: &ConsumeArgs) -> Result<ExitCode, String> {
    let path = a
        .progress
        .as_deref()
        .ok_or("--manual needs --progress FILE")?;
    let mut p = Progress::load(path)?;
    // The previous consumer may still be dying: wait (bounded) until its slot is free.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match r.consumer() {
            Ok(c) => break c,
            Err(e) if e.kind() == erlmcp_flow::ErrorKind::Busy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    c.set_ack_mode(AckMode::Manual);
    // Frames below the saved progress are redeliveries (saved, not acknowledged) until the
    // producer's stream catches up; after that, one is a duplicate.
    let mut caught_up: HashMap<u32, bool> = HashMap::new();
    loop {
        let mut bad: Option<(u8, String)> = None;
        let polled = c.poll(4096, |f| {
            if bad.is_some() {
                return;
            }
            let Some((id, s)) = seq::check(f) else {
                bad = Some((EXIT_CORRUPT, format!("corrupt frame of {} bytes", f.len())));
                return;
            };
            let next = p.next.entry(id).or_insert(0);
            let up = caught_up.entry(id).or_insert(false);
            if s == *next {
                *next += 1;
                *up = true;
                p.frames += 1;
            } else if s < *next && !*up {
                p.redelivered += 1;
            } else if s < *next {
                bad = Some((
                    EXIT_DUPLICATE,
                    format!("producer {id}: sequence {s} again after {next}"),
                ));
            } else {
                bad = Some((
                    EXIT_GAP,
                    format!("producer {id}: expected sequence {next}, got {s}: frames lost"),
                ));
            }
        });
        let n = match polled {
            Ok(n) => n,
            Err(e) if e.kind() == erlmcp_flow::ErrorKind::Corrupt => {
                bad = Some((EXIT_CORRUPT, e.to_string()));
                0
            }
            Err(e) => return Err(e.to_string()),
        };
        if let Some((code, why)) = bad {
            eprintln!("consume: {why}");
            return Ok(ExitCode::from(code));
        }
        if n > 0 {
            p.save(path)?;
            c.ack();
        } else if a.until_empty && c.lag() == 0 {
            break;
        }
        c.wait(
            WaitStrategy::SpinThenPark { spins: 200 },
            Duration::from_millis(100),
        )
        .map_err(|e| e.to_string())?;
    }
    println!(
        "accepted {} frames ({} redelivered), all in order and intact",
        p.frames, p.redelivered
    );
    Ok(ExitCode::SUCCESS)
}

/// A small deterministic generator (xorshift64*), so a campaign is repeatable by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Lane {
    name: String,
    ring: Ring,
    producers: Vec<Option<Child>>,
    consumer: Option<Child>,
    progress: PathBuf,
}

impl Drop for Lane {
    /// No process outlives the campaign, whatever ended it.
    fn drop(&mut self) {
        for p in self
            .producers
            .iter_mut()
            .chain([&mut self.consumer])
            .flatten()
        {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

struct Campaign {
    exe: PathBuf,
    dir: PathBuf,
    /// Killed processes not reaped yet, with when to reap them.
    zombies: Vec<(Child, Instant)>,
    kills: u64,
    zombies_left: u64,
    /// From a producer kill until the consumer passed everything claimed before it.
    recovery: Vec<Duration>,
    /// The same, for kills that left a claim to pad (the ring's `unblocked` grew).
    recovery_padded: Vec<Duration>,
}

impl Drop for Campaign {
    fn drop(&mut self) {
        for (c, _) in &mut self.zombies {
            let _ = c.wait();
        }
    }
}

impl Campaign {
    fn ring_args(&self, what: &str, name: &str) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["ring", what, name, "--dir"]).arg(&self.dir);
        cmd.stdout(Stdio::null());
        cmd
    }

    /// A producer in `slot`; every other one dwells inside its claims (`--dwell-us`), so
    /// that kills land between claim and commit and dead claims get recovered.
    fn producer(&self, name: &str, slot: usize, size: usize) -> Result<Child, String> {
        let dwell = if (slot + size) % 2 == 0 { "20" } else { "0" };
        self.ring_args("produce", name)
            .args(["--slot", &slot.to_string(), "--size", &size.to_string()])
            .args(["--dwell-us", dwell])
            .spawn()
            .map_err(|e| format!("spawn producer: {e}"))
    }

    fn consumer(&self, name: &str, progress: &Path, until_empty: bool) -> Result<Child, String> {
        let mut cmd = self.ring_args("consume", name);
        cmd.arg("--manual").arg("--progress").arg(progress);
        if until_empty {
            cmd.arg("--until-empty");
        }
        cmd.spawn().map_err(|e| format!("spawn consumer: {e}"))
    }

    /// SIGKILLs `child`; reaps it now or leaves it a zombie for up to `zombie_ms`.
    fn kill(&mut self, mut child: Child, rng: &mut Rng, zombie_ms: u64) -> Result<(), String> {
        child.kill().map_err(|e| format!("kill: {e}"))?;
        self.kills += 1;
        if zombie_ms > 0 && rng.below(2) == 0 {
            let until = Instant::now() + Duration::from_millis(rng.below(zombie_ms) + 1);
            self.zombies.push((child, until));
            self.zombies_left += 1;
        } else {
            child.wait().map_err(|e| format!("wait: {e}"))?;
        }
        Ok(())
    }

    fn reap_due(&mut self, all: bool) -> Result<(), String> {
        let now = Instant::now();
        let mut keep = Vec::new();
        for (mut c, until) in self.zombies.drain(..) {
            if all || until <= now {
                c.wait().map_err(|e| format!("wait: {e}"))?;
            } else {
                keep.push((c, until));
            }
        }
        self.zombies = keep;
        Ok(())
    }
}

/// Fails when a process of the lane exited on its own (a consumer's check failed, or a
/// producer's send did).
fn check_alive(lane: &mut Lane) -> Result<(), String> {
    if let Some(c) = lane.consumer.as_mut() {
        if let Some(st) = c.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("{}: the consumer exited: {st}", lane.name));
        }
    }
    for (k, p) in lane.producers.iter_mut().enumerate() {
        if let Some(st) = p
            .as_mut()
            .map(Child::try_wait)
            .transpose()
            .map_err(|e| e.to_string())?
            .flatten()
        {
            return Err(format!("{}: producer {k} exited: {st}", lane.name));
        }
    }
    Ok(())
}

/// `ring chaos NAME [--kills N] [--seed S] [--zombie-ms MS] [--dir DIR]`.
pub fn campaign(a: &ChaosArgs) -> Result<ExitCode, String> {
    let dir = a
        .seg
        .dir
        .join(format!("emf-chaos-{}-{}", a.name, std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run(&dir, a);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &Path, a: &ChaosArgs) -> Result<ExitCode, String> {
    let mut c = Campaign {
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        dir: dir.to_owned(),
        zombies: Vec::new(),
        kills: 0,
        zombies_left: 0,
        recovery: Vec::new(),
        recovery_padded: Vec::new(),
    };
    let mut rng = Rng(a.seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let sizes = [12usize, 64, 200, 1000];
    let mut lanes = Vec::new();
    for (name, producers) in [("spsc", 1usize), ("mpsc", 3)] {
        let ring = Ring::create(
            name,
            &RingOptions {
                capacity: 1 << 16,
                multi_producer: producers > 1,
                max_producers: producers,
                stall_timeout: Duration::from_millis(50),
                segment: SegmentOptions {
                    dir: dir.to_owned(),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let progress = dir.join(format!("{name}.progress"));
        let consumer = Some(c.consumer(name, &progress, false)?);
        let producers = (0..producers)
            .map(|k| c.producer(name, k, sizes[k % sizes.len()]).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        lanes.push(Lane {
            name: name.to_owned(),
            ring,
            producers,
            consumer,
            progress,
        });
    }
    let started = Instant::now();
    while c.kills < a.kills {
        // Let traffic flow for a random while (workload pacing, not synchronisation).
        std::thread::sleep(Duration::from_millis(2 + rng.below(20)));
        c.reap_due(false)?;
        let li = rng.below(lanes.len() as u64) as usize;
        check_alive(&mut lanes[li])?;
        let what = rng.below(10);
        let (kill_producer, kill_consumer) = (what < 7 || what == 9, what >= 7);
        let before = lanes[li].ring.stats();
        let (tail_at_kill, unblocked_before) = (before.tail, before.unblocked);
        if kill_producer {
            // The successor takes the slot over, of a zombie too; frames change size.
            let k = rng.below(lanes[li].producers.len() as u64) as usize;
            let size = sizes[(k + rng.below(4) as usize) % sizes.len()];
            if let Some(old) = lanes[li].producers[k].take() {
                c.kill(old, &mut rng, a.zombie_ms)?;
            }
            lanes[li].producers[k] = Some(c.producer(&lanes[li].name, k, size)?);
        }
        if kill_consumer {
            if let Some(old) = lanes[li].consumer.take() {
                c.kill(old, &mut rng, a.zombie_ms)?;
            }
            lanes[li].consumer = Some(c.consumer(&lanes[li].name, &lanes[li].progress, false)?);
        }
        if kill_producer && !kill_consumer {
            // Recovery time: until the consumer has passed everything claimed before the
            // kill (the dead producer's unfinished claim included).
            let t0 = Instant::now();
            loop {
                let st = lanes[li].ring.stats();
                let pos = st.subscribers.first().map_or(0, |s| s.position);
                if pos >= tail_at_kill {
                    c.recovery.push(t0.elapsed());
                    if st.unblocked > unblocked_before {
                        c.recovery_padded.push(t0.elapsed());
                    }
                    break;
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err(format!(
                        "{}: the consumer did not pass position {tail_at_kill} within 10 s \
                         of a producer kill (it is at {pos}): wedged",
                        lanes[li].name
                    ));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    let elapsed = started.elapsed();
    // Stop: producers first, then consumers; a last consumer per ring drains to the tail.
    let mut summary = Vec::new();
    for lane in &mut lanes {
        check_alive(lane)?;
        for p in lane
            .producers
            .iter_mut()
            .chain([&mut lane.consumer])
            .flatten()
        {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
    c.reap_due(true)?;
    let (mut frames, mut redelivered, mut lost, mut corrupt, mut unblocked) = (0, 0, 0, 0, 0);
    for lane in &lanes {
        let st = c
            .consumer(&lane.name, &lane.progress, true)?
            .wait()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("{}: the final consumer failed: {st}", lane.name));
        }
        let p = Progress::load(&lane.progress)?;
        for k in 0..lane.producers.len() {
            let committed = lane
                .ring
                .producer_in_slot(k)
                .map_err(|e| e.to_string())?
                .committed();
            let accepted = p.next.get(&(k as u32)).copied().unwrap_or(0);
            if committed != accepted {
                eprintln!(
                    "{} slot {k}: {committed} frames committed, {accepted} accepted",
                    lane.name
                );
            }
            lost += committed.abs_diff(accepted);
        }
        let st = lane.ring.stats();
        corrupt += st.corrupt_frames;
        unblocked += st.unblocked;
        frames += p.frames;
        redelivered += p.redelivered;
        summary.push(format!(
            "{}: {} frames, {} redelivered, {} claims unblocked, {} slots taken over",
            lane.name, p.frames, p.redelivered, st.unblocked, st.dead_reaped
        ));
        let _ = lane.ring.unlink();
    }
    c.recovery.sort();
    c.recovery_padded.sort();
    let pct_of = |v: &[Duration], q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let pct = |q: f64| pct_of(&c.recovery, q);
    let padded = |q: f64| pct_of(&c.recovery_padded, q);
    for s in &summary {
        println!("{s}");
    }
    println!(
        "chaos: {} kills ({} left as zombies) in {:.1} s, {frames} frames checked byte by byte, \
         {redelivered} redelivered after consumer kills, corrupt {corrupt}, lost after ack \
         {lost}, {unblocked} dead claims unblocked; recovery after a producer kill p50 \
         {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples); of those that left a claim to \
         pad p50 {:.1} ms, max {:.1} ms ({} samples; stall timeout 50 ms)",
        c.kills,
        c.zombies_left,
        elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        c.recovery.len(),
        padded(0.5),
        padded(1.0),
        c.recovery_padded.len()
    );
    println!(
        "{{\"kills\":{},\"zombies\":{},\"frames\":{frames},\"redelivered\":{redelivered},\
         \"corrupt\":{corrupt},\"lost_after_ack\":{lost},\"unblocked\":{unblocked},\
         \"recovery_p50_ms\":{:.2},\"recovery_p99_ms\":{:.2},\"recovery_max_ms\":{:.2},\
         \"padded_recoveries\":{},\"padded_recovery_p50_ms\":{:.2},\
         \"padded_recovery_max_ms\":{:.2}}}",
        c.kills,
        c.zombies_left,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        c.recovery_padded.len(),
        padded(0.5),
        padded(1.0)
    );
    if corrupt != 0 || lost != 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

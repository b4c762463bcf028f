//! The ring suite: cross-process throughput and round-trip latency of 64-byte frames, and the
//! bandwidth of 64 KiB frames, with a Unix domain socket (cross-process) and crossbeam-channel
//! (in-process threads, a reference) measured in the same run.
//!
//! The other side of each cross-process measurement is this same executable started as
//! `erlmcp-flow bench-helper ...` (see [`helper`]).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BenchResult, Better, Settings, Suite};
use erlmcp_flow::codec::ring::{ConsumerExt, ProducerExt};
use erlmcp_flow::ring::{Ring, RingOptions, WaitStrategy};
use erlmcp_flow::shm::SegmentOptions;

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let base = if Path::new(erlmcp_flow::shm::DEFAULT_DIR).is_dir() {
            PathBuf::from(erlmcp_flow::shm::DEFAULT_DIR)
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("emf-bench-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The executable that answers `bench-helper ...`: this one, unless `EMF_BENCH_HELPER` names
/// another (criterion benches are not the CLI, they point it at the built `erlmcp-flow`).
fn helper_exe() -> PathBuf {
    std::env::var_os("EMF_BENCH_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().expect("own executable"))
}

fn helper_cmd(args: &[&str]) -> Child {
    Command::new(helper_exe())
        .arg("bench-helper")
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn bench helper")
}

fn ring_in(dir: &Path, name: &str, capacity: usize, mpsc: bool) -> Ring {
    ring_with(dir, name, capacity, mpsc, false)
}

fn ring_with(dir: &Path, name: &str, capacity: usize, mpsc: bool, checksum: bool) -> Ring {
    Ring::create(
        name,
        &RingOptions {
            capacity,
            multi_producer: mpsc,
            checksum,
            ..RingOptions::in_dir(dir)
        },
    )
    .expect("create bench ring")
}

/// Receives `count` frames on `ring`'s consumer and returns the elapsed time from the first.
fn drain(ring: &Ring, count: u64) -> Duration {
    let mut c = ring.consumer().expect("consumer");
    let mut got = 0u64;
    let mut start = None;
    while got < count {
        let n = c
            .poll(usize::MAX, |f| {
                std::hint::black_box(f);
            })
            .expect("poll") as u64;
        if n > 0 && start.is_none() {
            start = Some(Instant::now());
        }
        got += n;
        if n == 0 {
            // Back off before looking again: polling the line the producer is writing
            // steals it from the producer on every frame.
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
    }
    start.map_or(Duration::ZERO, |s| s.elapsed())
}

fn spsc_throughput(count: u64, size: usize, capacity: usize, batched: bool) -> f64 {
    spsc_throughput_with(count, size, capacity, batched, false)
}

/// `checksum`: the ring carries a CRC32C per frame, written by the producer and checked by
/// the consumer (the helper opens the ring and follows its flags).
fn spsc_throughput_with(
    count: u64,
    size: usize,
    capacity: usize,
    batched: bool,
    checksum: bool,
) -> f64 {
    let scratch = Scratch::new();
    let r = ring_with(&scratch.0, "tput", capacity, false, checksum);
    let dir = scratch.0.to_string_lossy().into_owned();
    let mode = if batched { "produce-batch" } else { "produce" };
    let mut child = helper_cmd(&[mode, &dir, "tput", &count.to_string(), &size.to_string()]);
    let t = drain(&r, count);
    let _ = child.wait();
    // The first frame started the clock: count - 1 intervals.
    (count - 1) as f64 / t.as_secs_f64()
}

/// The typed frame of the rkyv throughput bench: a task descriptor of 64 bytes archived.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct BenchTask {
    seq: u64,
    agent: u64,
    kind: u32,
    priority: u32,
    deadline_us: u64,
    payload: [u8; 32],
}

/// rkyv end to end: the helper archives each message in place in its claimed frame, and
/// here every frame is validated (bytecheck) before it is read. `typed`: a 64-byte
/// [`BenchTask`] (`send_archived` / `poll_archived`); otherwise a small JSON-RPC envelope
/// (`send_message` / `poll_messages`). Returns (messages per second, frame payload bytes).
fn spsc_rkyv_throughput(count: u64, typed: bool) -> (f64, usize) {
    let scratch = Scratch::new();
    let r = ring_in(&scratch.0, "rk", 1 << 20, false);
    let dir = scratch.0.to_string_lossy().into_owned();
    let kind = if typed { "task" } else { "envelope" };
    let mut child = helper_cmd(&["produce-rkyv", &dir, "rk", &count.to_string(), kind]);
    let mut c = r.consumer().expect("consumer");
    let (mut got, mut bad, mut size) = (0u64, 0u64, 0usize);
    let mut start = None;
    while got < count {
        let n = if typed {
            c.poll_archived::<BenchTask>(usize::MAX, |m| match m {
                Ok(m) => {
                    std::hint::black_box(m.seq);
                }
                Err(_) => bad += 1,
            })
        } else {
            c.poll_messages(usize::MAX, |m| match m {
                Ok(m) => {
                    std::hint::black_box(m);
                }
                Err(_) => bad += 1,
            })
        }
        .expect("poll") as u64;
        if n > 0 && start.is_none() {
            start = Some(Instant::now());
            size = c
                .ring()
                .stats()
                .subscribers
                .first()
                .map_or(0, |s| (s.bytes / s.received.max(1)) as usize);
        }
        got += n;
        if n == 0 {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
    }
    let t = start.map_or(Duration::ZERO, |s| s.elapsed());
    let _ = child.wait();
    assert_eq!(
        bad, 0,
        "the rkyv bench received frames that failed validation"
    );
    ((count - 1) as f64 / t.as_secs_f64(), size)
}

/// The envelope of the rkyv envelope bench: a JSON-RPC request with one boolean parameter.
fn rkyv_bench_message(seq: u64) -> erlmcp_flow::codec::Message {
    use erlmcp_flow::codec::{Envelope, Member, Value};
    Envelope::request(
        seq,
        "tick",
        Value::Object(vec![Member::new("n", Value::Bool(true))]),
    )
    .into()
}

fn mpsc_throughput(per: u64) -> f64 {
    let scratch = Scratch::new();
    let r = ring_in(&scratch.0, "mp", 1 << 20, true);
    let dir = scratch.0.to_string_lossy().into_owned();
    let mut a = helper_cmd(&["produce", &dir, "mp", &per.to_string(), "64"]);
    let mut b = helper_cmd(&["produce", &dir, "mp", &per.to_string(), "64"]);
    let t = drain(&r, 2 * per);
    let _ = a.wait();
    let _ = b.wait();
    (2 * per - 1) as f64 / t.as_secs_f64()
}

/// How the two sides of a ping-pong wait.
#[derive(Clone, Copy, PartialEq)]
enum RttMode {
    /// Both spin.
    Spin,
    /// The echo process parks on the futex as soon as its ring is empty; the requester spins
    /// for the reply (each round trip pays one cross-process futex wake).
    ParkEcho,
    /// Both park (two wakes per round trip).
    ParkBoth,
}

/// Ping-pong through two rings with an echo process; returns sorted round-trip times (ns).
fn ring_rtt(settings: Settings, mode: RttMode) -> Vec<f64> {
    let scratch = Scratch::new();
    let n: usize = if settings.samples < 10 {
        20_000
    } else {
        200_000
    };
    let req = ring_in(&scratch.0, "req", 1 << 16, false);
    let resp = ring_in(&scratch.0, "resp", 1 << 16, false);
    let dir = scratch.0.to_string_lossy().into_owned();
    let echo_mode = if mode == RttMode::Spin {
        "spin"
    } else {
        "park"
    };
    let mut child = helper_cmd(&["echo", &dir, "req", "resp", echo_mode, &n.to_string()]);
    let park = mode == RttMode::ParkBoth;
    let mut p = req.producer().expect("producer");
    let mut c = resp.consumer().expect("consumer");
    let strategy = if park {
        WaitStrategy::SpinThenPark { spins: 0 }
    } else {
        WaitStrategy::Spin
    };
    let msg = [7u8; 64];
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        if mode == RttMode::ParkEcho {
            // Measure a consumer that is really asleep, not one still on its way to the futex
            // (which the request would catch before it sleeps).
            wait_asleep(child.id());
        }
        let t = Instant::now();
        p.send(&msg).expect("send");
        loop {
            if c.poll(1, |f| {
                std::hint::black_box(f);
            })
            .expect("poll")
                == 1
            {
                break;
            }
            if park {
                let _ = c.wait(strategy, Duration::from_secs(5));
            } else {
                std::hint::spin_loop();
            }
        }
        // Skip the warm-up round trips.
        if i >= n / 20 {
            rtts.push(t.elapsed().as_nanos() as f64);
        }
    }
    let _ = child.wait();
    rtts.sort_by(f64::total_cmp);
    rtts
}

/// Waits (untimed) until process `pid` is sleeping in the kernel (state `S` in
/// `/proc/PID/stat`), for at most 100 ms.
fn wait_asleep(pid: u32) {
    let path = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_millis(100);
    while Instant::now() < deadline {
        let Ok(stat) = std::fs::read_to_string(&path) else {
            return;
        };
        // The state follows the command name, which is in parentheses and may contain spaces.
        match stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
        {
            Some('S') | None => return,
            _ => std::thread::yield_now(),
        }
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn uds_pair_paths(scratch: &Scratch) -> String {
    scratch.0.join("uds.sock").to_string_lossy().into_owned()
}

/// Unix socket throughput: one `write` per 64-byte message (`batched = false`, like one
/// `send` per message on a ring) or 64 KiB writes of many messages (`batched = true`).
fn uds_throughput(count: u64, batched: bool) -> f64 {
    let scratch = Scratch::new();
    let path = uds_pair_paths(&scratch);
    let listener = UnixListener::bind(&path).expect("bind");
    let mode = if batched {
        "uds-produce"
    } else {
        "uds-produce-each"
    };
    let mut child = helper_cmd(&[mode, &path, &count.to_string(), "64"]);
    let (mut s, _) = listener.accept().expect("accept");
    let mut buf = vec![0u8; 64 * 1024];
    let total = count * 64;
    let mut got = 0u64;
    let mut start = None;
    while got < total {
        let n = s.read(&mut buf).expect("read") as u64;
        if n == 0 {
            break;
        }
        start.get_or_insert_with(Instant::now);
        got += n;
    }
    let _ = child.wait();
    let t = start.map_or(Duration::from_nanos(1), |s| s.elapsed());
    (got / 64) as f64 / t.as_secs_f64()
}

/// Unix socket ping-pong with an echo process blocked in `read`. With `spin_requester`, the
/// requester polls its non-blocking end and sends only once the echo is asleep: the same
/// shape as `RttMode::ParkEcho` (one wake of a sleeping process per round trip).
fn uds_rtt(settings: Settings, spin_requester: bool) -> Vec<f64> {
    let scratch = Scratch::new();
    let n: usize = if settings.samples < 10 {
        20_000
    } else {
        100_000
    };
    let path = uds_pair_paths(&scratch);
    let listener = UnixListener::bind(&path).expect("bind");
    let mut child = helper_cmd(&["uds-echo", &path, &n.to_string()]);
    let (mut s, _) = listener.accept().expect("accept");
    s.set_nonblocking(spin_requester).expect("nonblocking");
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        if spin_requester {
            wait_asleep(child.id());
        }
        let t = Instant::now();
        s.write_all(&msg).expect("write");
        if spin_requester {
            let mut got = 0;
            while got < back.len() {
                match s.read(&mut back[got..]) {
                    Ok(0) => panic!("uds echo closed"),
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                    Err(e) => panic!("read: {e}"),
                }
            }
        } else {
            s.read_exact(&mut back).expect("read");
        }
        if i >= n / 20 {
            rtts.push(t.elapsed().as_nanos() as f64);
        }
    }
    let _ = child.wait();
    rtts.sort_by(f64::total_cmp);
    rtts
}

/// iceoryx2 0.10 publish-subscribe, the zero-copy IPC peer: a subscriber here, one or two
/// publisher processes (`bench-helper ice-produce`), 64-byte payloads written in place
/// (`loan_uninit` → write → `send`), the publisher retrying until delivered.
#[cfg(feature = "bench-peers")]
mod ice {
    use iceoryx2::prelude::*;
    use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

    pub type Service = PortFactory<ipc::Service, [u8; 64], ()>;

    pub fn node() -> Result<Node<ipc::Service>, String> {
        set_log_level(LogLevel::Error);
        NodeBuilder::new()
            .create::<ipc::Service>()
            .map_err(|e| format!("iceoryx2 node: {e:?}"))
    }

    pub fn service(node: &Node<ipc::Service>, name: &str) -> Result<Service, String> {
        let name: ServiceName = name
            .try_into()
            .map_err(|e| format!("iceoryx2 service name: {e:?}"))?;
        node.service_builder(&name)
            .publish_subscribe::<[u8; 64]>()
            // As deep as our 1 MiB ring is for 64-byte frames, in round numbers.
            .subscriber_max_buffer_size(8192)
            .max_publishers(2)
            .max_subscribers(1)
            .history_size(0)
            .enable_safe_overflow(false)
            .open_or_create()
            .map_err(|e| format!("iceoryx2 service: {e:?}"))
    }

    /// Receives until every producer's last sequence number arrived (or 60 s passed).
    /// Returns (messages per second from the first, messages lost).
    pub fn drain(
        sub_svc: &Service,
        name: &str,
        producers: usize,
        count: u64,
    ) -> Result<(f64, u64), String> {
        let sub = sub_svc
            .subscriber_builder()
            .create()
            .map_err(|e| format!("iceoryx2 subscriber: {e:?}"))?;
        let mut children: Vec<std::process::Child> = Vec::new();
        for id in 0..producers {
            children.push(
                std::process::Command::new(super::helper_exe())
                    .args(["bench-helper", "ice-produce", name])
                    .arg(count.to_string())
                    .arg(id.to_string())
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| format!("spawn iceoryx2 publisher: {e}"))?,
            );
        }
        let mut next = vec![0u64; producers];
        let (mut got, mut lost, mut done) = (0u64, 0u64, 0usize);
        let mut start = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut spins = 0u32;
        while done < producers {
            match sub.receive() {
                Ok(Some(sample)) => {
                    let p = sample.payload();
                    let seq = u64::from_le_bytes(p[..8].try_into().unwrap_or_default());
                    let id = (p[8] as usize).min(producers - 1);
                    lost += seq.saturating_sub(next[id]);
                    next[id] = seq + 1;
                    if seq + 1 == count {
                        done += 1;
                    }
                    got += 1;
                    if start.is_none() {
                        start = Some(std::time::Instant::now());
                    }
                }
                Ok(None) => {
                    spins = spins.wrapping_add(1);
                    if spins % 4096 == 0 && std::time::Instant::now() > deadline {
                        break;
                    }
                    std::hint::spin_loop();
                }
                Err(e) => return Err(format!("iceoryx2 receive: {e:?}")),
            }
        }
        let elapsed = start.map_or(std::time::Duration::ZERO, |s| s.elapsed());
        // The publishers stay alive until we have everything: iceoryx2 drops the samples of
        // a publisher that went away.
        for c in &mut children {
            drop(c.stdin.take());
            let _ = c.wait();
        }
        lost += next.iter().map(|n| count - (*n).min(count)).sum::<u64>();
        Ok((got.saturating_sub(1) as f64 / elapsed.as_secs_f64(), lost))
    }

    /// `bench-helper ice-produce NAME COUNT ID`.
    pub fn produce(name: &str, count: u64, id: u8) -> Result<(), String> {
        let node = node()?;
        let svc = service(&node, name)?;
        let publisher = svc
            .publisher_builder()
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .map_err(|e| format!("iceoryx2 publisher: {e:?}"))?;
        let mut buf = [0u8; 64];
        buf[8] = id;
        for i in 0..count {
            buf[..8].copy_from_slice(&i.to_le_bytes());
            let sample = publisher
                .loan_uninit()
                .map_err(|e| format!("iceoryx2 loan: {e:?}"))?;
            sample
                .write_payload(buf)
                .send()
                .map_err(|e| format!("iceoryx2 send: {e:?}"))?;
        }
        // Wait for the subscriber to say it is done (it closes our stdin).
        let mut b = [0u8; 1];
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut b);
        Ok(())
    }
}

/// iceoryx2 throughput with `producers` publisher processes; None (with a note on stderr)
/// when iceoryx2 cannot run here.
#[cfg(feature = "bench-peers")]
fn iceoryx2_throughput(total: u64, producers: usize) -> Option<f64> {
    let count = total / producers as u64;
    let run = || -> Result<(f64, u64), String> {
        let node = ice::node()?;
        let name = format!("erlmcp-flow/bench/{}/{producers}", std::process::id());
        let svc = ice::service(&node, &name)?;
        ice::drain(&svc, &name, producers, count)
    };
    match run() {
        Ok((rate, lost)) => {
            if lost > 0 {
                eprintln!(
                    "note: iceoryx2 lost {lost} of {} messages (counted: delivered ones only)",
                    count * producers as u64
                );
            }
            Some(rate)
        }
        Err(e) => {
            eprintln!("note: iceoryx2 peer skipped: {e}");
            None
        }
    }
}

#[cfg(feature = "peers")]
fn crossbeam_throughput(settings: Settings) -> f64 {
    let count: u64 = if settings.samples < 10 {
        2_000_000
    } else {
        10_000_000
    };
    let (tx, rx) = crossbeam_channel::bounded::<[u8; 64]>(1024);
    let t = std::thread::spawn(move || {
        for i in 0..count {
            let mut m = [0u8; 64];
            m[..8].copy_from_slice(&i.to_le_bytes());
            tx.send(m).expect("send");
        }
    });
    let mut start = None;
    for _ in 0..count {
        let m = rx.recv().expect("recv");
        start.get_or_insert_with(Instant::now);
        std::hint::black_box(m);
    }
    let _ = t.join();
    (count - 1) as f64 / start.map_or(1e-9, |s: Instant| s.elapsed().as_secs_f64())
}

#[cfg(feature = "peers")]
fn crossbeam_rtt(settings: Settings) -> Vec<f64> {
    let n: usize = if settings.samples < 10 {
        20_000
    } else {
        200_000
    };
    let (tx, rx) = crossbeam_channel::bounded::<[u8; 64]>(1);
    let (btx, brx) = crossbeam_channel::bounded::<[u8; 64]>(1);
    let t = std::thread::spawn(move || {
        for _ in 0..n {
            let m = rx.recv().expect("recv");
            btx.send(m).expect("send");
        }
    });
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        let s = Instant::now();
        tx.send([7u8; 64]).expect("send");
        std::hint::black_box(brx.recv().expect("recv"));
        if i >= n / 20 {
            rtts.push(s.elapsed().as_nanos() as f64);
        }
    }
    let _ = t.join();
    rtts.sort_by(f64::total_cmp);
    rtts
}

/// Nanoseconds per 64-byte send through the Rust API and through the C ABI, same process,
/// ring never full (a consumer drains between rounds): the difference is the C boundary.
fn capi_overhead(settings: Settings) -> (f64, f64) {
    use erlmcp_flow_capi::ring as c;
    let scratch = Scratch::new();
    // A ring that stays in cache, drained between batches: the difference between the two
    // paths is then the boundary's cost, not the memory system's.
    let cap = 1usize << 18;
    let batch = cap / erlmcp_flow::ring::layout::frame_size(64) - 16;
    let batches: usize = if settings.samples < 10 { 20 } else { 100 };
    let ring = ring_in(&scratch.0, "abi", cap, false);
    let mut cons = ring.consumer().expect("consumer");
    let msg = [5u8; 64];
    let mut rust_best = f64::MAX;
    let mut abi_best = f64::MAX;
    let dir = std::ffi::CString::new(scratch.0.to_string_lossy().as_bytes()).expect("dir");
    let name = std::ffi::CString::new("abi").expect("name");
    let mut r = std::ptr::null_mut();
    // SAFETY: valid strings and out-parameter; freed below.
    unsafe { c::emf_ring_open(name.as_ptr(), dir.as_ptr(), &mut r) };
    let drain = |cons: &mut erlmcp_flow::ring::Consumer| {
        cons.poll(usize::MAX, |f| {
            std::hint::black_box(f);
        })
        .expect("poll");
    };
    // The first round of each is a warm-up and is not counted.
    for round in 0..settings.samples.clamp(3, 9) + 1 {
        let (mut rust_t, mut abi_t) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..batches {
            {
                let mut p = ring.producer().expect("producer");
                let t = Instant::now();
                for _ in 0..batch {
                    p.send(std::hint::black_box(&msg)).expect("send");
                }
                rust_t += t.elapsed();
            }
            drain(&mut cons);
            let mut p = std::ptr::null_mut();
            // SAFETY: live ring; valid out-parameter; freed below.
            unsafe { c::emf_producer_new(r, &mut p) };
            let t = Instant::now();
            for _ in 0..batch {
                // SAFETY: live producer; `msg` readable for 64 bytes.
                let st = unsafe { c::emf_producer_send(p, std::hint::black_box(msg.as_ptr()), 64) };
                debug_assert_eq!(st, 0);
            }
            abi_t += t.elapsed();
            // SAFETY: live handle, freed once.
            unsafe { c::emf_producer_free(p) };
            drain(&mut cons);
        }
        if round > 0 {
            let k = (batch * batches) as f64;
            rust_best = rust_best.min(rust_t.as_nanos() as f64 / k);
            abi_best = abi_best.min(abi_t.as_nanos() as f64 / k);
        }
    }
    // SAFETY: live handle, freed once.
    unsafe { c::emf_ring_free(r) };
    (rust_best, abi_best)
}

/// Batch processor, in process: delivery latency when the consumer is idle (one message at a
/// time, the consumer parked), and throughput when loaded (a continuous stream).
fn batching(settings: Settings) -> (f64, f64) {
    use erlmcp_flow::batch::{BatchOptions, BatchProcessor};
    let scratch = Scratch::new();
    let ring = ring_in(&scratch.0, "batch", 1 << 20, false);
    let n_idle: usize = if settings.samples < 10 { 500 } else { 2000 };
    let n_load: u64 = if settings.samples < 10 {
        1_000_000
    } else {
        5_000_000
    };
    let r2 = ring.clone();
    let total = n_idle as u64 + n_load;
    let consumer = std::thread::spawn(move || {
        let mut c = r2.consumer().expect("consumer");
        let mut lat = Vec::with_capacity(n_idle);
        let mut got = 0u64;
        let mut load_start = None;
        while got < total {
            c.poll(usize::MAX, |f| {
                if got < n_idle as u64 {
                    let sent = u64::from_le_bytes(f[..8].try_into().unwrap_or([0; 8]));
                    lat.push(erlmcp_flow::shm::now_ns().saturating_sub(sent) as f64);
                } else if load_start.is_none() {
                    load_start = Some(Instant::now());
                }
                got += 1;
            })
            .expect("poll");
            if got < total {
                let _ = c.wait(
                    WaitStrategy::SpinThenPark { spins: 100 },
                    Duration::from_secs(5),
                );
            }
        }
        let load_time = load_start.map_or(1e-9, |s| s.elapsed().as_secs_f64());
        lat.sort_by(f64::total_cmp);
        (lat, load_time)
    });
    let mut b = BatchProcessor::new(ring.producer().expect("producer"), BatchOptions::default());
    let mut msg = [0u8; 64];
    for _ in 0..n_idle {
        // Wait until the consumer has caught up and parked: the idle regime.
        while !ring.consumer_idle() {
            std::hint::spin_loop();
        }
        std::thread::sleep(Duration::from_micros(50));
        msg[..8].copy_from_slice(&erlmcp_flow::shm::now_ns().to_le_bytes());
        b.send_message(&msg).expect("send");
        while b.pending() > 0 {
            let _ = b.tick(Instant::now());
        }
    }
    for _ in 0..n_load {
        while b.send_message(&msg).is_err() {
            let _ = b.flush();
        }
    }
    while b.pending() > 0 {
        let _ = b.flush();
    }
    let (lat, load_time) = consumer.join().expect("consumer thread");
    (pct(&lat, 0.5), (n_load - 1) as f64 / load_time)
}

/// Per-send cost with and without the shared-memory counters, same process, alternating
/// rounds; returns (ns with, ns without).
/// Per-send time with and without the shared-memory counters, in the same run: a ring that
/// stays in cache, drained between batches, the two kinds of batch interleaved so that
/// machine noise falls on both alike; best round of each.
fn counters_cost(settings: Settings) -> (f64, f64) {
    let scratch = Scratch::new();
    let cap = 1usize << 18;
    let batch = cap / erlmcp_flow::ring::layout::frame_size(64) - 16;
    let batches: usize = if settings.samples < 10 { 20 } else { 100 };
    let ring = ring_in(&scratch.0, "ctr", cap, false);
    let mut cons = ring.consumer().expect("consumer");
    let msg = [3u8; 64];
    let (mut with, mut without) = (f64::MAX, f64::MAX);
    // The first round is a warm-up and is not counted.
    for round in 0..settings.samples.clamp(3, 9) + 1 {
        let mut t = [Duration::ZERO; 2];
        for b in 0..2 * batches {
            let counters = b % 2 == 0;
            let mut p = ring.producer().expect("producer");
            if !counters {
                p.disable_counters();
            }
            let start = Instant::now();
            for _ in 0..batch {
                p.send(std::hint::black_box(&msg)).expect("send");
            }
            t[usize::from(counters)] += start.elapsed();
            drop(p);
            cons.poll(usize::MAX, |f| {
                std::hint::black_box(f);
            })
            .expect("poll");
        }
        if round > 0 {
            let k = (batch * batches) as f64;
            with = with.min(t[1].as_nanos() as f64 / k);
            without = without.min(t[0].as_nanos() as f64 / k);
        }
    }
    (with, without)
}

/// One run of the suite: its settings, the progress callback and the results so far. Each
/// `measure_*` function below takes the next measurements in the suite's fixed order, reports
/// progress and appends its results; `run` calls them in that order.
struct Run<'a> {
    settings: Settings,
    /// A quick run (`--quick`): fewer messages per measurement.
    quick: bool,
    /// Messages per 64-byte throughput measurement.
    n64: u64,
    progress: &'a mut dyn FnMut(&str),
    out: Vec<BenchResult>,
}

impl Run<'_> {
    fn progress(&mut self, step: &str) {
        (self.progress)(step)
    }

    fn push(&mut self, r: BenchResult) {
        self.out.push(r)
    }
}

fn run(settings: Settings, progress: &mut dyn FnMut(&str)) -> Vec<BenchResult> {
    let quick = settings.samples < 10;
    let mut run = Run {
        settings,
        quick,
        n64: if quick { 2_000_000 } else { 10_000_000 },
        progress,
        out: Vec::new(),
    };
    let spsc = measure_spsc_64b(&mut run);
    measure_spsc_crc(&mut run, spsc);
    measure_spsc_batch(&mut run);
    #[cfg(feature = "peers")]
    measure_spsc_vs_crossbeam(&mut run, spsc);
    measure_rkyv(&mut run);
    measure_mpsc(&mut run);
    let uds_both = measure_rtt_spin(&mut run);
    measure_rtt_park(&mut run, uds_both);
    measure_capi_overhead(&mut run);
    measure_counters_cost(&mut run);
    measure_batch_processor(&mut run);
    measure_frame_64k(&mut run);
    run.out
}

/// 64-byte SPSC throughput, against iceoryx2 (`bench-peers`) or else a Unix socket. Returns
/// the ring's rate, the reference of later comparisons.
fn measure_spsc_64b(run: &mut Run) -> f64 {
    run.progress("spsc_64b_throughput");
    let (quick, n64) = (run.quick, run.n64);
    let spsc = spsc_throughput(n64, 64, 1 << 20, false);
    run.progress("uds_64b_throughput");
    let uds = uds_throughput(if quick { 200_000 } else { 1_000_000 }, false);
    #[cfg(feature = "bench-peers")]
    let ice_spsc = {
        run.progress("iceoryx2_64b_throughput");
        iceoryx2_throughput(if quick { 1_000_000 } else { 4_000_000 }, 1)
    };
    #[cfg(not(feature = "bench-peers"))]
    let ice_spsc: Option<f64> = None;
    // The peer the issue names is iceoryx2 (compiled with `--features bench-peers`); without
    // it the Unix socket stands in, and says so in the peer column.
    let r = BenchResult::new("spsc_64b_throughput", spsc, "msg/s", Better::Higher);
    let r = match ice_spsc {
        Some(ice) => r.with_peer("iceoryx2", ice),
        None => r.with_peer("unix_socket", uds),
    };
    run.push(r.with_targets(Some(5e5), Some(4e7)));
    run.push(
        BenchResult::new(
            "spsc_64b_throughput_vs_unix_socket",
            spsc,
            "msg/s",
            Better::Higher,
        )
        .with_peer("unix_socket", uds),
    );
    spsc
}

/// 64-byte SPSC throughput on a checksummed ring, against the same ring without (`spsc`).
fn measure_spsc_crc(run: &mut Run, spsc: f64) {
    run.progress("spsc_crc_64b_throughput");
    let spsc_crc = spsc_throughput_with(run.n64, 64, 1 << 20, false, true);
    run.push(
        BenchResult::new("spsc_crc_64b_throughput", spsc_crc, "msg/s", Better::Higher)
            .with_peer("same_ring_without_checksums", spsc),
    );
}

/// 64-byte SPSC throughput with `send_batch`, against 64 KiB Unix socket writes.
fn measure_spsc_batch(run: &mut Run) {
    run.progress("spsc_64b_batch_throughput");
    let spsc_batch = spsc_throughput(run.n64, 64, 1 << 20, true);
    run.progress("uds_64b_batch_throughput");
    let uds_batch = uds_throughput(if run.quick { 500_000 } else { 2_000_000 }, true);
    run.push(
        BenchResult::new(
            "spsc_64b_batch_throughput",
            spsc_batch,
            "msg/s",
            Better::Higher,
        )
        .with_peer("unix_socket_64k_writes", uds_batch)
        .with_targets(Some(5e5), Some(4e7)),
    );
}

/// The 64-byte SPSC rate (`spsc`) against crossbeam-channel between threads.
#[cfg(feature = "peers")]
fn measure_spsc_vs_crossbeam(run: &mut Run, spsc: f64) {
    run.progress("crossbeam_64b_throughput");
    let cb = crossbeam_throughput(run.settings);
    run.push(
        BenchResult::new(
            "spsc_64b_throughput_vs_crossbeam",
            spsc,
            "msg/s",
            Better::Higher,
        )
        .with_peer("crossbeam_channel_in_process", cb),
    );
}

/// rkyv end to end: typed 64-byte tasks, then JSON-RPC envelopes; rates and frame sizes.
fn measure_rkyv(run: &mut Run) {
    run.progress("spsc_rkyv_64b_throughput");
    let (rkyv, rkyv_size) = spsc_rkyv_throughput(run.n64, true);
    run.push(
        BenchResult::new("spsc_rkyv_64b_throughput", rkyv, "msg/s", Better::Higher)
            .with_targets(Some(5e5), Some(1e7)),
    );
    run.push(BenchResult::new(
        "spsc_rkyv_64b_frame_bytes",
        rkyv_size as f64,
        "B",
        Better::Lower,
    ));
    run.progress("spsc_envelope_throughput");
    let (env, env_size) = spsc_rkyv_throughput(run.n64 / 2, false);
    run.push(
        BenchResult::new("spsc_envelope_throughput", env, "msg/s", Better::Higher)
            .with_targets(Some(5e5), None),
    );
    run.push(BenchResult::new(
        "spsc_envelope_frame_bytes",
        env_size as f64,
        "B",
        Better::Lower,
    ));
}

/// Two producer processes into one ring, against iceoryx2 (`bench-peers`).
fn measure_mpsc(run: &mut Run) {
    run.progress("mpsc_2to1_64b_throughput");
    let mpsc = mpsc_throughput(run.n64 / 2);
    #[cfg(feature = "bench-peers")]
    let ice_mpsc = {
        run.progress("iceoryx2_2to1_64b_throughput");
        iceoryx2_throughput(if run.quick { 1_000_000 } else { 4_000_000 }, 2)
    };
    #[cfg(not(feature = "bench-peers"))]
    let ice_mpsc: Option<f64> = None;
    let r = BenchResult::new("mpsc_2to1_64b_throughput", mpsc, "msg/s", Better::Higher);
    let r = match ice_mpsc {
        Some(ice) => r.with_peer("iceoryx2", ice),
        None => r,
    };
    run.push(r.with_targets(Some(5e5), Some(5e6)));
}

/// Round trips with both sides spinning, against a Unix socket and crossbeam-channel
/// (`peers`). Returns the Unix socket's round trips, the peer of a later measurement.
fn measure_rtt_spin(run: &mut Run) -> Vec<f64> {
    let settings = run.settings;
    run.progress("rtt_64b_spin");
    let spin = ring_rtt(settings, RttMode::Spin);
    run.progress("rtt_64b_uds");
    let uds_both = uds_rtt(settings, false);
    run.push(
        BenchResult::new("rtt_64b_spin_p50", pct(&spin, 0.5), "ns", Better::Lower)
            .with_peer("unix_socket", pct(&uds_both, 0.5))
            .with_targets(Some(1e7), Some(400.0)),
    );
    run.push(
        BenchResult::new("rtt_64b_spin_p99", pct(&spin, 0.99), "ns", Better::Lower)
            .with_peer("unix_socket", pct(&uds_both, 0.99))
            .with_targets(Some(5e7), Some(1000.0)),
    );
    run.push(BenchResult::new(
        "rtt_64b_spin_p999",
        pct(&spin, 0.999),
        "ns",
        Better::Lower,
    ));
    run.push(BenchResult::new(
        "rtt_64b_spin_max",
        pct(&spin, 1.0),
        "ns",
        Better::Lower,
    ));
    #[cfg(feature = "peers")]
    {
        run.progress("rtt_64b_crossbeam");
        let cb = crossbeam_rtt(settings);
        run.push(
            BenchResult::new(
                "rtt_64b_spin_p50_vs_crossbeam",
                pct(&spin, 0.5),
                "ns",
                Better::Lower,
            )
            .with_peer("crossbeam_channel_in_process", pct(&cb, 0.5)),
        );
    }
    uds_both
}

/// Round trips with a parked echo side, and with both sides parked (against the Unix
/// socket round trips `uds_both` of [`measure_rtt_spin`]).
fn measure_rtt_park(run: &mut Run, uds_both: Vec<f64>) {
    let settings = run.settings;
    run.progress("rtt_64b_park");
    let park = ring_rtt(settings, RttMode::ParkEcho);
    run.progress("rtt_64b_uds_parked_echo");
    let uds_park = uds_rtt(settings, true);
    run.progress("rtt_64b_park_both");
    let park_both = ring_rtt(settings, RttMode::ParkBoth);
    run.push(
        BenchResult::new("rtt_64b_park_p50", pct(&park, 0.5), "ns", Better::Lower)
            .with_peer("unix_socket_blocked_echo", pct(&uds_park, 0.5))
            .with_targets(Some(1e7), Some(15_000.0)),
    );
    run.push(BenchResult::new(
        "rtt_64b_park_p99",
        pct(&park, 0.99),
        "ns",
        Better::Lower,
    ));
    run.push(
        BenchResult::new(
            "rtt_64b_park_both_p50",
            pct(&park_both, 0.5),
            "ns",
            Better::Lower,
        )
        .with_peer("unix_socket", pct(&uds_both, 0.5)),
    );
}

/// What a send through the C ABI costs over the Rust API.
fn measure_capi_overhead(run: &mut Run) {
    run.progress("capi_send_overhead");
    let (rust_ns, abi_ns) = capi_overhead(run.settings);
    run.push(
        BenchResult::new("capi_send_ns", abi_ns, "ns", Better::Lower)
            .with_peer("rust_api_send", rust_ns),
    );
    run.push(
        BenchResult::new(
            "capi_send_overhead_ns",
            (abi_ns - rust_ns).max(0.0),
            "ns",
            Better::Lower,
        )
        .with_targets(None, Some(20.0)),
    );
}

/// What publishing a producer's byte counter costs.
fn measure_counters_cost(run: &mut Run) {
    run.progress("counters_cost");
    let (with, without) = counters_cost(run.settings);
    run.push(
        BenchResult::new(
            "counters_cost_pct",
            ((with / without) - 1.0).max(0.0) * 100.0,
            "%",
            Better::Lower,
        )
        .with_targets(None, Some(2.0)),
    );
}

/// The batch processor: latency when the consumer is idle, throughput under load.
fn measure_batch_processor(run: &mut Run) {
    run.progress("batch_processor");
    let (idle_p50, loaded) = batching(run.settings);
    run.push(
        BenchResult::new("batch_idle_latency_p50", idle_p50, "ns", Better::Lower)
            .with_targets(Some(1e7), None),
    );
    run.push(
        BenchResult::new("batch_loaded_throughput", loaded, "msg/s", Better::Higher)
            .with_targets(Some(5e5), None),
    );
}

/// The bandwidth of 64 KiB frames.
fn measure_frame_64k(run: &mut Run) {
    run.progress("frame_64k_bandwidth");
    let per_s = spsc_throughput(run.n64 / 200, 64 * 1024, 1 << 24, false);
    run.push(
        BenchResult::new(
            "frame_64k_bandwidth",
            per_s * 65536.0 / 1e9,
            "GB/s",
            Better::Higher,
        )
        .with_targets(None, Some(3.0)),
    );
}

/// One cross-process transfer measured by [`rate`] (shared with `benches/ring.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// 64-byte frames, one `send` each, one producer process.
    Spsc64,
    /// 64-byte frames in `send_batch` calls of 256.
    SpscBatch64,
    /// Two producer processes, one consumer.
    Mpsc2to1,
    /// A 64-byte rkyv archive per frame, validated on read.
    RkyvTyped64,
    /// A Unix domain socket, one 64-byte write per message.
    UnixSocket64,
    /// iceoryx2 publish-subscribe, one publisher process (`bench-peers`).
    Iceoryx2,
    /// iceoryx2 with two publisher processes (`bench-peers`).
    Iceoryx2TwoToOne,
}

/// Messages per second for `count` messages of `kind`, timed from the first message
/// received. `None` when the kind is not compiled in (iceoryx2 without `bench-peers`) or
/// cannot run here.
pub fn rate(kind: Transfer, count: u64) -> Option<f64> {
    let count = count.max(2);
    Some(match kind {
        Transfer::Spsc64 => spsc_throughput(count, 64, 1 << 20, false),
        Transfer::SpscBatch64 => spsc_throughput(count, 64, 1 << 20, true),
        Transfer::Mpsc2to1 => mpsc_throughput(count.div_ceil(2)),
        Transfer::RkyvTyped64 => spsc_rkyv_throughput(count, true).0,
        Transfer::UnixSocket64 => uds_throughput(count, false),
        #[cfg(feature = "bench-peers")]
        Transfer::Iceoryx2 => iceoryx2_throughput(count, 1)?,
        #[cfg(feature = "bench-peers")]
        Transfer::Iceoryx2TwoToOne => iceoryx2_throughput(count.div_ceil(2) * 2, 2)?,
        #[cfg(not(feature = "bench-peers"))]
        Transfer::Iceoryx2 | Transfer::Iceoryx2TwoToOne => return None,
    })
}

/// The ring suite.
pub fn ring_suite() -> Suite {
    Suite {
        name: "ring",
        about: "cross-process shared-memory rings: 64 B throughput, ping-pong latency, 64 KiB bandwidth",
        steps: if cfg!(feature = "bench-peers") { 21 } else { 19 },
        run,
    }
}

/// The other side of the cross-process measurements: `erlmcp-flow bench-helper ...`.
pub fn helper(args: &[String]) -> Result<(), String> {
    let arg = |i: usize| -> Result<&str, String> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("bench-helper: missing argument {i}"))
    };
    let num = |i: usize| -> Result<u64, String> {
        arg(i)?
            .parse()
            .map_err(|_| format!("bench-helper: argument {i} is not a number"))
    };
    let err = |e: erlmcp_flow::Error| e.to_string();
    match arg(0)? {
        "sched-memory" => super::sched_mem::helper(),
        "sched-memory-runtime" => super::sched_rt::memory_helper(),
        "sched-rt" => super::sched_rt::helper(&args[1..]),
        "produce" => {
            let opts = SegmentOptions {
                dir: arg(1)?.into(),
                ..Default::default()
            };
            let r = Ring::open(arg(2)?, &opts).map_err(err)?;
            let mut p = r.producer().map_err(err)?;
            let (count, size) = (num(3)?, num(4)? as usize);
            let mut buf = vec![0u8; size];
            for i in 0..count {
                buf[..8].copy_from_slice(&i.to_le_bytes());
                while p.send(&buf).is_err() {
                    std::hint::spin_loop();
                }
            }
            Ok(())
        }
        "echo" => {
            let opts = SegmentOptions {
                dir: arg(1)?.into(),
                ..Default::default()
            };
            let req = Ring::open(arg(2)?, &opts).map_err(err)?;
            let resp = Ring::open(arg(3)?, &opts).map_err(err)?;
            let park = arg(4)? == "park";
            let n = num(5)?;
            let mut c = req.consumer().map_err(err)?;
            let mut p = resp.producer().map_err(err)?;
            let mut buf = [0u8; 64];
            let mut done = 0;
            while done < n {
                let got = c
                    .poll(1, |f| {
                        let k = f.len().min(64);
                        buf[..k].copy_from_slice(&f[..k]);
                    })
                    .map_err(err)?;
                if got == 1 {
                    while p.send(&buf).is_err() {
                        std::hint::spin_loop();
                    }
                    done += 1;
                } else if park {
                    c.wait(
                        WaitStrategy::SpinThenPark { spins: 0 },
                        Duration::from_secs(5),
                    )
                    .map_err(err)?;
                } else {
                    std::hint::spin_loop();
                }
            }
            Ok(())
        }
        "produce-rkyv" => {
            let opts = SegmentOptions {
                dir: arg(1)?.into(),
                ..Default::default()
            };
            let r = Ring::open(arg(2)?, &opts).map_err(err)?;
            let mut p = r.producer().map_err(err)?;
            let count = num(3)?;
            let typed = arg(4)? == "task";
            let mut enc = erlmcp_flow::codec::Encoder::new();
            let msg = rkyv_bench_message(0);
            let mut task = BenchTask {
                seq: 0,
                agent: 42,
                kind: 1,
                priority: 2,
                deadline_us: 0,
                payload: [7; 32],
            };
            for i in 0..count {
                task.seq = i;
                loop {
                    let sent = if typed {
                        p.send_archived(&task, 64).map(|_| ())
                    } else {
                        p.send_message(&mut enc, &msg, 256)
                    };
                    match sent {
                        Ok(()) => break,
                        Err(e) if e.kind() == erlmcp_flow::ErrorKind::Full => {
                            std::hint::spin_loop()
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            Ok(())
        }
        "uds-produce" => {
            let mut s = UnixStream::connect(arg(1)?).map_err(|e| e.to_string())?;
            let (count, size) = (num(2)?, num(3)? as usize);
            // Write in 64 KiB chunks of whole messages (what a buffered sender does).
            let per = (65536 / size).max(1) as u64;
            let chunk = vec![0u8; per as usize * size];
            let mut left = count;
            while left > 0 {
                let k = left.min(per);
                s.write_all(&chunk[..k as usize * size])
                    .map_err(|e| e.to_string())?;
                left -= k;
            }
            Ok(())
        }
        "uds-produce-each" => {
            let mut s = UnixStream::connect(arg(1)?).map_err(|e| e.to_string())?;
            let (count, size) = (num(2)?, num(3)? as usize);
            let msg = vec![0u8; size];
            for _ in 0..count {
                s.write_all(&msg).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        "produce-batch" => {
            let opts = SegmentOptions {
                dir: arg(1)?.into(),
                ..Default::default()
            };
            let r = Ring::open(arg(2)?, &opts).map_err(err)?;
            let mut p = r.producer().map_err(err)?;
            let (count, size) = (num(3)?, num(4)? as usize);
            let bufs: Vec<Vec<u8>> = (0..256).map(|_| vec![0u8; size]).collect();
            let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
            let mut left = count;
            while left > 0 {
                let k = left.min(refs.len() as u64) as usize;
                let sent = p.send_batch(&refs[..k]).map_err(err)?;
                if sent == 0 {
                    std::hint::spin_loop();
                }
                left -= sent as u64;
            }
            Ok(())
        }
        "uds-echo" => {
            let mut s = UnixStream::connect(arg(1)?).map_err(|e| e.to_string())?;
            let n = num(2)?;
            let mut buf = [0u8; 64];
            for _ in 0..n {
                s.read_exact(&mut buf).map_err(|e| e.to_string())?;
                s.write_all(&buf).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        #[cfg(feature = "bench-peers")]
        "ice-produce" => ice::produce(arg(1)?, num(2)?, num(3)? as u8),
        other => Err(format!("bench-helper: unknown helper {other:?}")),
    }
}

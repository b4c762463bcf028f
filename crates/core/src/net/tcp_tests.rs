//! Tests of the TCP transport on 127.0.0.1 with ephemeral ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::tcp::{TcpOptions, TcpStats, TcpTransport, PREAMBLE};
use super::{NodeId, Transport};
use crate::error::ErrorKind;

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const WAIT: Duration = Duration::from_secs(10);

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn fast() -> TcpOptions {
    TcpOptions {
        backoff_min: Duration::from_millis(1),
        backoff_max: Duration::from_millis(50),
        ..TcpOptions::default()
    }
}

fn pair(opts: TcpOptions) -> (TcpTransport, TcpTransport) {
    let (la, aa) = listener();
    let (lb, ab) = listener();
    let a = TcpTransport::from_listener(A, la, &[(B, ab)], opts.clone()).unwrap();
    let b = TcpTransport::from_listener(B, lb, &[(A, aa)], opts).unwrap();
    (a, b)
}

/// Waits (polling, with a deadline) until `f` holds of the stats.
fn until(t: &TcpTransport, what: &str, f: impl Fn(&TcpStats) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f(&t.stats()) {
        assert!(Instant::now() < deadline, "never: {what} ({:?})", t.stats());
        std::thread::yield_now();
    }
}

#[test]
#[cfg_attr(miri, ignore = "sockets")]
fn round_trip_both_ways_in_order() {
    let (mut a, mut b) = pair(fast());
    for i in 0..1000u32 {
        a.send(B, &i.to_le_bytes()).unwrap();
    }
    b.send(A, b"").unwrap();
    for i in 0..1000u32 {
        let f = b.recv_timeout(WAIT).unwrap().unwrap();
        assert_eq!((f.from, f.payload), (A, i.to_le_bytes().to_vec()));
    }
    let f = a.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!((f.from, f.payload.len()), (B, 0));
    assert_eq!(a.try_recv().unwrap(), None);
    assert_eq!(a.stats().sent, 1000);
    assert_eq!(b.stats().received, 1000);
    assert_eq!(a.stats().connects, 1);
}

#[test]
#[cfg_attr(miri, ignore = "sockets")]
fn unknown_peer_and_too_large_are_clear_errors() {
    let (mut a, _b) = pair(TcpOptions {
        max_payload: 1000,
        ..fast()
    });
    let e = a.send(NodeId(9), b"x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.message().contains("node 9 is not a peer of node 1"),
        "{e}"
    );
    assert_eq!(
        a.send(B, &[0; 1001]).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    assert_eq!(
        a.add_peer(A, "127.0.0.1:1".parse().unwrap())
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
#[cfg_attr(miri, ignore = "sockets")]
fn reconnects_after_the_peer_restarts() {
    let (la, aa) = listener();
    let (lb, ab) = listener();
    let mut a = TcpTransport::from_listener(A, la, &[(B, ab)], fast()).unwrap();
    let mut b = TcpTransport::from_listener(B, lb, &[(A, aa)], fast()).unwrap();
    a.send(B, b"before").unwrap();
    assert_eq!(b.recv_timeout(WAIT).unwrap().unwrap().payload, b"before");
    drop(b);
    // While B is down: frames queue (or are lost with a broken connection, and counted);
    // connection attempts fail and back off.
    for _ in 0..5 {
        a.send(B, b"while down").unwrap();
    }
    until(&a, "a failed connect to the stopped peer", |s| {
        s.connect_failures > 0
    });
    let mut b = TcpTransport::bind(B, ab, &[(A, aa)], fast()).unwrap();
    // Every frame is either received or counted as dropped with the broken connection.
    let mut got = 0;
    while got + a.stats().dropped < 5 {
        let f = b
            .recv_timeout(WAIT)
            .unwrap()
            .expect("frames after the restart");
        assert_eq!((f.from, &f.payload[..]), (A, &b"while down"[..]));
        got += 1;
    }
    a.send(B, b"after").unwrap();
    assert_eq!(b.recv_timeout(WAIT).unwrap().unwrap().payload, b"after");
    assert!(a.stats().connects >= 2, "{:?}", a.stats());
}

#[test]
#[cfg_attr(miri, ignore = "sockets")]
fn a_peer_that_does_not_read_pushes_back_and_loses_nothing() {
    let opts = TcpOptions {
        send_queue: 8,
        recv_queue: 8,
        ..fast()
    };
    let (mut a, mut b) = pair(opts);
    let frame = vec![7u8; 64 << 10];
    let mut accepted = 0u32;
    let deadline = Instant::now() + WAIT;
    // B never reads: its readers stop, the sockets fill, A's writer blocks, A's queue fills.
    // A Full while the writer is still draining is an answer too; go on until the writer is
    // stuck: 100 Full answers in a row while it wrote nothing.
    let (mut fulls, mut sent_then) = (0, u64::MAX);
    while fulls < 100 {
        let mut f = frame.clone();
        f[..4].copy_from_slice(&accepted.to_le_bytes());
        match a.send(B, &f) {
            Ok(()) => {
                accepted += 1;
                fulls = 0;
            }
            Err(e) if e.kind() == ErrorKind::Full => {
                let sent = a.stats().sent;
                fulls = if sent == sent_then { fulls + 1 } else { 0 };
                sent_then = sent;
                std::thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "no back-pressure after {accepted}"
        );
        assert!(accepted < 20_000, "1.3 GB buffered without back-pressure");
    }
    assert_eq!(a.queued(B).unwrap(), 8, "the send queue is at its bound");
    assert!(a.stats().full > 0);
    // Bounded: B's queue holds at most recv_queue frames.
    assert!(b.stats().received <= 8 + 1, "{:?}", b.stats());
    // Now B reads: every accepted frame arrives, in order.
    for i in 0..accepted {
        let f = b.recv_timeout(WAIT).unwrap().unwrap();
        assert_eq!(f.payload[..4], i.to_le_bytes(), "frame {i}");
        assert_eq!(f.payload.len(), frame.len());
    }
    a.send(B, b"room").unwrap();
    assert_eq!(b.recv_timeout(WAIT).unwrap().unwrap().payload, b"room");
    assert_eq!(a.stats().dropped, 0);
}

/// Connects to `addr`, writes `bytes`, and returns true when the transport closed the
/// connection (end of stream or reset) within the wait.
fn closed_after(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

fn frame(from: u64, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.extend_from_slice(&from.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
#[cfg_attr(miri, ignore = "sockets")]
fn garbage_closes_the_connection_with_a_counted_error() {
    let opts = TcpOptions {
        max_payload: 1024,
        ..fast()
    };
    let (mut a, mut b) = pair(opts);
    let at = b.local_addr();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP instead of the preamble",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("a length beyond max_payload", {
            let mut v = PREAMBLE.to_vec();
            v.extend(frame(1, 8 + 1025, b""));
            v
        }),
        ("a length shorter than the sender id", {
            let mut v = PREAMBLE.to_vec();
            v.extend(frame(1, 3, b""));
            v
        }),
        ("a sender that is not a peer", {
            let mut v = PREAMBLE.to_vec();
            v.extend(frame(99, 8 + 2, b"hi"));
            v
        }),
        ("a connection whose sender changes", {
            let mut v = PREAMBLE.to_vec();
            v.extend(frame(1, 8 + 2, b"ok"));
            v.extend(frame(3, 8 + 2, b"no"));
            v
        }),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        assert!(closed_after(at, bytes), "{what}: connection left open");
        until(&b, what, |s| s.corrupt == i as u64 + 1);
    }
    // The valid frame before the sender changed was delivered; nothing else was.
    let f = b.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!((f.from, &f.payload[..]), (A, &b"ok"[..]));
    assert_eq!(b.try_recv().unwrap(), None);
    // A truncated frame (a peer that died mid-write) is a closed connection, not garbage.
    let mut v = PREAMBLE.to_vec();
    v.extend(frame(1, 8 + 100, b"short"));
    drop(TcpStream::connect(at).unwrap().write_all(&v));
    // The real peer is unaffected.
    a.send(B, b"still fine").unwrap();
    assert_eq!(
        b.recv_timeout(WAIT).unwrap().unwrap().payload,
        b"still fine"
    );
    assert_eq!(b.stats().corrupt, cases.len() as u64);
}

#[test]
#[cfg_attr(miri, ignore = "sockets")]
fn removed_peers_are_refused_and_dropping_stops_everything() {
    let (mut a, mut b) = pair(fast());
    a.send(B, b"x").unwrap();
    assert!(b.recv_timeout(WAIT).unwrap().is_some());
    assert_eq!(b.remove_peer(A).unwrap(), 0);
    assert_eq!(b.send(A, b"x").unwrap_err().kind(), ErrorKind::NotFound);
    // A's open connection now carries a sender B no longer knows: closed as corrupt.
    a.send(B, b"refused").unwrap();
    until(&b, "the removed peer's frame refused", |s| s.corrupt == 1);
    assert_eq!(b.try_recv().unwrap(), None);
    // Dropping a transport with a blocked reader, a queued frame and a backing-off writer
    // returns (the test would hang otherwise).
    let (la, _) = listener();
    let mut c = TcpTransport::from_listener(
        NodeId(3),
        la,
        &[(B, "127.0.0.1:9".parse().unwrap())],
        fast(),
    )
    .unwrap();
    c.send(B, b"nowhere").unwrap();
    drop(c);
    drop(a);
    drop(b);
}

#[test]
#[cfg_attr(miri, ignore = "sockets")]
fn connections_beyond_max_inbound_are_refused() {
    let (mut a, mut b) = pair(TcpOptions {
        max_inbound: 1,
        ..fast()
    });
    a.send(B, b"x").unwrap();
    assert_eq!(b.recv_timeout(WAIT).unwrap().unwrap().payload, b"x");
    assert!(
        closed_after(b.local_addr(), &PREAMBLE),
        "a second connection stays open"
    );
    until(&b, "the extra connection refused", |s| s.refused == 1);
    a.send(B, b"y").unwrap();
    assert_eq!(b.recv_timeout(WAIT).unwrap().unwrap().payload, b"y");
}

#[test]
#[cfg_attr(miri, ignore = "sockets")]
fn random_bytes_on_many_connections_never_break_the_transport() {
    // Thirty connections of random bytes after a valid preamble (a length and a sender that
    // are noise): each is closed as corrupt, no frame is delivered, the real peer's frames
    // still flow, and no reader is left behind (max_inbound stays available).
    let opts = TcpOptions {
        max_payload: 1024,
        max_inbound: 4,
        ..fast()
    };
    let (mut a, mut b) = pair(opts);
    let at = b.local_addr();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..30u64 {
        let mut v = PREAMBLE.to_vec();
        let n = 12 + (rand() % 200) as usize;
        v.extend((0..n).map(|_| rand() as u8));
        // A length within bounds would make the reader wait for its payload: force the
        // sender to be noise, which is refused on the header alone.
        v[12..20].copy_from_slice(&(1000 + i).to_le_bytes());
        assert!(closed_after(at, &v), "connection {i} left open");
        until(&b, "the noise counted", |s| s.corrupt == i + 1);
    }
    a.send(B, b"still fine").unwrap();
    let f = b.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!((f.from, &f.payload[..]), (A, &b"still fine"[..]));
    assert_eq!(b.try_recv().unwrap(), None);
    assert_eq!(b.stats().refused, 0);
}

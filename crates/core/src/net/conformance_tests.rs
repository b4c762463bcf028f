//! The same checks over every transport: what code written against [`Transport`] may rely on.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::ring::{RingNetOptions, RingTransport};
use super::sim::{SimNet, SimOptions};
use super::tcp::{TcpOptions, TcpTransport};
use super::{NodeId, Transport};
use crate::error::ErrorKind;
use crate::testutil::TempDir;

const A: NodeId = NodeId(10);
const B: NodeId = NodeId(20);

/// Receives one frame at `t`, giving the network `pump` chances to move (the simulated one
/// needs its clock advanced; the real ones need time).
fn recv(t: &mut dyn Transport, pump: &mut dyn FnMut()) -> super::Frame {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        pump();
        if let Some(f) = t.recv_timeout(Duration::from_millis(10)).unwrap() {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "{}: nothing received",
            t.local_id()
        );
    }
}

fn conformance(a: &mut dyn Transport, b: &mut dyn Transport, pump: &mut dyn FnMut()) {
    assert_eq!((a.local_id(), b.local_id()), (A, B));
    assert_eq!(b.try_recv().unwrap(), None);
    let e = a.send(NodeId(99), b"?").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("node 99"), "{e}");
    let msgs: Vec<Vec<u8>> = vec![b"first".to_vec(), Vec::new(), vec![0xFF; 3000]];
    for m in &msgs {
        a.send(B, m).unwrap();
    }
    for m in &msgs {
        let f = recv(b, pump);
        assert_eq!(
            (f.from, &f.payload),
            (A, m),
            "in order, whole, with the sender"
        );
    }
    b.send(A, b"reply").unwrap();
    let f = recv(a, pump);
    assert_eq!((f.from, &f.payload[..]), (B, &b"reply"[..]));
    assert_eq!(a.try_recv().unwrap(), None);
    assert_eq!(b.try_recv().unwrap(), None);
}

#[test]
fn sim_conforms() {
    let net = SimNet::new(SimOptions::seeded(1));
    let mut a = net.add_node(A).unwrap();
    let mut b = net.add_node(B).unwrap();
    let mut clock = 0;
    conformance(&mut a, &mut b, &mut || {
        clock += 1;
        net.run_until(clock);
    });
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn rings_conform() {
    let dir = TempDir::new("net-conf");
    let mut a = RingTransport::open(A, &[B], RingNetOptions::in_dir(&dir.0)).unwrap();
    let mut b = RingTransport::open(B, &[A], RingNetOptions::in_dir(&dir.0)).unwrap();
    conformance(&mut a, &mut b, &mut || {});
}

#[test]
#[cfg_attr(miri, ignore = "sockets")]
fn tcp_conforms() {
    let la = TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").unwrap();
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let mut a = TcpTransport::from_listener(A, la, &[(B, ab)], TcpOptions::default()).unwrap();
    let mut b = TcpTransport::from_listener(B, lb, &[(A, aa)], TcpOptions::default()).unwrap();
    conformance(&mut a, &mut b, &mut || {});
}

//! Tests of the PBFT host loop: replica threads over rings and TCP, a client endpoint.

use std::time::Duration;

use super::*;
use crate::error::ErrorKind;
use crate::net::ring::{RingNetOptions, RingTransport};
use crate::net::{NodeId, Transport};
use crate::pbft::{Client, ClientConfig, Config, Ed25519Keys, Path, Principal, SimKeys};
use crate::testutil::TempDir;

const N: usize = 4;
const ENDPOINT: NodeId = NodeId(100);
const CLUSTER: u64 = 0x5eed;
/// Long enough for a view change on a loaded CI machine; a pass takes far less.
const TIMEOUT: Duration = Duration::from_secs(20);

fn sim_client(id: u64, accept_tentative: bool) -> Client<SimKeys> {
    let mut cfg = ClientConfig::new(N);
    cfg.accept_tentative = accept_tentative;
    Client::new(cfg, id, SimKeys::new(Principal::Client(id), CLUSTER), 0).unwrap()
}

/// Four replicas over rings in a temporary directory, and the address book (clients
/// `1000..1000 + clients` at [`ENDPOINT`]).
struct Group {
    dir: TempDir,
    addrs: Addresses,
    replicas: Vec<Option<ReplicaHandle>>,
}

impl Group {
    fn start(tag: &str, clients: u64, config: Config) -> Group {
        let dir = TempDir::new(tag);
        let addrs = Addresses::numbered(N)
            .with_clients(ENDPOINT, 1000..1000 + clients)
            .unwrap();
        let replicas = (0..N as u32)
            .map(|i| {
                let t = PbftTransport::Ring {
                    dir: dir.0.clone(),
                    inbox_capacity: 1 << 20,
                };
                let mut spec = ReplicaSpec::new(i, config.clone(), addrs.clone(), t);
                spec.poll = Duration::from_millis(2);
                let keys = SimKeys::new(Principal::Replica(i), CLUSTER);
                Some(spawn_replica(spec, keys, OrderLog::new()).unwrap())
            })
            .collect();
        Group {
            dir,
            addrs,
            replicas,
        }
    }

    fn endpoint(&self, clients: Vec<Client<SimKeys>>) -> MeshClient<SimKeys, RingTransport> {
        MeshClient::over_rings(
            ENDPOINT,
            self.addrs.clone(),
            clients,
            RingNetOptions::in_dir(&self.dir.0),
        )
        .unwrap()
    }

    fn stop(&mut self, i: usize) {
        self.replicas[i].take().unwrap().stop().unwrap();
    }

    fn info(&self, i: usize) -> ReplicaInfo {
        self.replicas[i].as_ref().unwrap().info()
    }
}

/// Executes `count` operations in turn and checks each is answered with the next position
/// of the agreed order; returns the paths taken.
fn run_ops(c: &mut MeshClient<SimKeys, RingTransport>, first: u64, count: u64) -> Vec<Path> {
    (0..count)
        .map(|i| {
            let done = c.execute(format!("op-{i}").as_bytes(), TIMEOUT).unwrap();
            let (pos, _) = OrderLog::decode_result(&done.result).unwrap();
            assert_eq!(pos, first + i, "answered out of the agreed order");
            done.path
        })
        .collect()
}

#[test]
#[cfg_attr(miri, ignore = "threads and shared memory")]
fn four_replicas_over_rings_complete_on_the_fast_path() {
    let g = Group::start("pbft-fast", 1, Config::new(N));
    let mut c = g.endpoint(vec![sim_client(1000, true)]);
    let paths = run_ops(&mut c, 1, 30);
    let fast = paths.iter().filter(|&&p| p == Path::Fast).count();
    // A committed reply can beat the third tentative one only under odd scheduling: most
    // requests complete on the fast path.
    assert!(fast * 2 > paths.len(), "only {fast} of 30 on the fast path");
    let s = c.stats();
    assert_eq!((s.started, s.fast + s.slow), (30, 30));
    assert_eq!(s.host.rejected, 0);
    // Every replica executes them (the committed order), soon.
    for i in 0..N {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while g.info(i).executed < 30 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5)); // polling a published counter
        }
        let info = g.info(i);
        assert!(
            info.executed >= 1 && info.running && info.view == 0,
            "{info:?}"
        );
    }
}

#[test]
#[cfg_attr(miri, ignore = "threads and shared memory")]
fn a_client_that_ignores_tentative_replies_completes_on_the_slow_path() {
    let g = Group::start("pbft-slow", 1, Config::new(N));
    let mut c = g.endpoint(vec![sim_client(1000, false)]);
    let paths = run_ops(&mut c, 1, 10);
    assert!(paths.iter().all(|&p| p == Path::Slow), "{paths:?}");
}

#[test]
#[cfg_attr(miri, ignore = "threads and shared memory")]
fn one_backup_stopped_the_group_still_completes() {
    let mut g = Group::start("pbft-backup-down", 1, Config::new(N));
    let mut c = g.endpoint(vec![sim_client(1000, true)]);
    run_ops(&mut c, 1, 3);
    g.stop(3);
    let paths = run_ops(&mut c, 4, 10);
    // Three replicas are 2f + 1: the fast path still works.
    assert!(paths.contains(&Path::Fast), "{paths:?}");
    assert!(c.stats().host.send_failed + c.stats().host.sent > 0);
}

#[test]
#[cfg_attr(miri, ignore = "threads and shared memory")]
fn primary_stopped_a_view_change_then_completes() {
    let mut cfg = Config::new(N);
    cfg.view_change_timeout_us = 100_000;
    let mut g = Group::start("pbft-primary-down", 1, cfg);
    let mut c = g.endpoint(vec![sim_client(1000, true)]);
    run_ops(&mut c, 1, 3);
    g.stop(0);
    run_ops(&mut c, 4, 5);
    for i in 1..N {
        let info = g.info(i);
        assert!(info.view >= 1 && info.running, "replica {i}: {info:?}");
    }
    // The client learned the new view: its requests go to the new primary directly.
    assert!(c.client(0).unwrap().view() >= 1);
}

#[test]
#[cfg_attr(miri, ignore = "threads and shared memory")]
fn several_clients_keep_requests_in_flight() {
    let g = Group::start("pbft-many", 8, Config::new(N));
    let mut c = g.endpoint((1000..1008).map(|id| sim_client(id, true)).collect());
    let mut left = 80u32;
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while seen.len() < 80 {
        assert!(std::time::Instant::now() < deadline, "{} of 80", seen.len());
        while left > 0 {
            let Some(slot) = c.free_slot() else { break };
            c.start(slot, &left.to_le_bytes()).unwrap();
            left -= 1;
        }
        for (_, done) in c.poll(Duration::from_millis(10)).unwrap() {
            let (pos, _) = OrderLog::decode_result(&done.result).unwrap();
            assert!(seen.insert(pos), "position {pos} given twice");
        }
    }
    assert_eq!(
        seen.iter().copied().collect::<Vec<_>>(),
        (1..=80).collect::<Vec<_>>()
    );
    for slot in 0..c.slots() {
        c.start(slot, b"more").unwrap();
    }
    assert_eq!(c.free_slot(), None);
    assert_eq!(c.start(0, b"x").unwrap_err().kind(), ErrorKind::Busy);
    assert_eq!(
        c.start(8, b"x").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
#[cfg_attr(miri, ignore = "threads and shared memory")]
fn no_group_answers_timeout_then_busy() {
    let dir = TempDir::new("pbft-timeout");
    let addrs = Addresses::numbered(N)
        .with_clients(ENDPOINT, [1000])
        .unwrap();
    let mut c = MeshClient::over_rings(
        ENDPOINT,
        addrs,
        vec![sim_client(1000, true)],
        RingNetOptions::in_dir(&dir.0),
    )
    .unwrap();
    let e = c.execute(b"lost", Duration::from_millis(50)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    // Nobody to send to: the sends failed (no inbox), counted.
    assert!(c.stats().host.send_failed >= 1);
    // The request is still outstanding (PBFT has no cancel).
    let e = c.execute(b"next", Duration::from_millis(10)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
}

#[test]
#[cfg_attr(miri, ignore = "threads and shared memory")]
fn bad_frames_are_counted_not_fatal() {
    let dir = TempDir::new("pbft-bad");
    let addrs = Addresses::numbered(N)
        .with_clients(ENDPOINT, [1000])
        .unwrap()
        .with_clients(NodeId(101), [2000])
        .unwrap();
    let replica = crate::pbft::Replica::new(
        Config::new(N),
        1,
        SimKeys::new(Principal::Replica(1), CLUSTER),
        OrderLog::new(),
    )
    .unwrap();
    let peers: Vec<NodeId> = [1, 3, 4, 100, 101].into_iter().map(NodeId).collect();
    let t = RingTransport::open(NodeId(2), &peers, RingNetOptions::in_dir(&dir.0)).unwrap();
    let mut host = ReplicaHost::new(replica, t, addrs.clone(), HostOptions::default()).unwrap();
    let mut evil =
        RingTransport::open(ENDPOINT, &[NodeId(2)], RingNetOptions::in_dir(&dir.0)).unwrap();
    let mut bad: Vec<Vec<u8>> = vec![
        vec![],                          // no tag
        vec![b'X', 1, 2, 3],             // unknown tag
        vec![TAG_REPLICA, 1, 2, 3],      // a replica frame from an endpoint
        vec![TAG_CLIENT, 1, 2],          // a client header cut short
        client_frame(2000, b"request"),  // a client of another endpoint
        client_frame(1000, &[0xff; 64]), // the right client, garbage message
    ];
    for f in bad.drain(..) {
        evil.send(NodeId(2), &f).unwrap();
    }
    let mut got = 0;
    while got < 6 {
        got += host.run_once(0, Duration::from_millis(100)).unwrap();
    }
    let s = host.stats();
    assert_eq!((s.received, s.rejected), (0, 6), "{s:?}");
    assert_eq!(host.replica().stats().garbage, 1);
    // The wrong node for a replica is refused at construction.
    let t2 = RingTransport::open(NodeId(3), &peers[..1], RingNetOptions::in_dir(&dir.0)).unwrap();
    let r0 = crate::pbft::Replica::new(
        Config::new(N),
        0,
        SimKeys::new(Principal::Replica(0), CLUSTER),
        OrderLog::new(),
    )
    .unwrap();
    let e = ReplicaHost::new(r0, t2, addrs, HostOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn addresses_map_replicas_and_clients() {
    let a = Addresses::numbered(4)
        .with_clients(NodeId(10), [7, 8])
        .unwrap()
        .with_clients(NodeId(11), [9])
        .unwrap();
    assert_eq!(a.n(), 4);
    assert_eq!(a.replica_node(0), Some(NodeId(1)));
    assert_eq!(a.replica_node(4), None);
    assert_eq!(a.replica_of(NodeId(4)), Some(3));
    assert_eq!(a.replica_of(NodeId(10)), None);
    assert_eq!(a.client_node(8), Some(NodeId(10)));
    assert_eq!(a.clients_at(NodeId(10)).collect::<Vec<_>>(), vec![7, 8]);
    assert_eq!(a.endpoints().len(), 2);
    let e = a.clone().with_clients(NodeId(2), [1]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = Addresses::new(vec![NodeId(1), NodeId(1)]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        parse_frame(&client_frame(5, b"m")),
        Some(Parsed::Client(5, &b"m"[..]))
    );
    assert_eq!(
        parse_frame(&replica_frame(b"m")),
        Some(Parsed::Replica(&b"m"[..]))
    );
}

#[test]
fn order_log_answers_positions_and_restores() {
    use crate::pbft::App;
    let mut a = OrderLog::new();
    let mut b = OrderLog::new();
    assert_eq!(OrderLog::decode_result(&a.execute(1, b"x")).unwrap().0, 1);
    let snap = a.snapshot();
    let r2 = a.execute(2, b"y");
    b.restore(&snap).unwrap();
    assert_eq!(
        b.execute(2, b"y"),
        r2,
        "restored state continues identically"
    );
    let mut c = OrderLog::new();
    c.execute(1, b"x");
    assert_ne!(c.execute(3, b"y"), r2, "another order, another chain");
    assert_eq!(b.restore(b"short").unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
#[cfg_attr(miri, ignore = "threads and sockets")]
fn four_replicas_over_tcp_with_ed25519() {
    use crate::net::tcp::{TcpOptions, TcpTransport};
    use std::net::{SocketAddr, TcpListener};
    let seeds: Vec<[u8; 32]> = (0..N as u8).map(|i| [i + 11; 32]).collect();
    let pubs: Vec<[u8; 32]> = seeds.iter().map(Ed25519Keys::public_key).collect();
    let client_seed = [42u8; 32];
    let clients = [(1000u64, Ed25519Keys::public_key(&client_seed))];
    let addrs = Addresses::numbered(N)
        .with_clients(ENDPOINT, [1000])
        .unwrap();
    // Free loopback ports for the replicas (released for them to bind: a port taken in
    // between fails loudly); the endpoint keeps its listener.
    let ports: Vec<(NodeId, SocketAddr)> = addrs
        .replicas()
        .iter()
        .map(|&n| {
            (
                n,
                TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap(),
            )
        })
        .collect();
    let cl = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint_addr = cl.local_addr().unwrap();
    let _replicas: Vec<ReplicaHandle> = (0..N)
        .map(|i| {
            let peers = ports
                .iter()
                .copied()
                .filter(|p| p.0 != ports[i].0)
                .chain([(ENDPOINT, endpoint_addr)])
                .collect();
            let t = PbftTransport::Tcp {
                listen: ports[i].1,
                peers,
            };
            let spec = ReplicaSpec::new(i as u32, Config::new(N), addrs.clone(), t);
            let keys = Ed25519Keys::new(&seeds[i], &pubs, &clients).unwrap();
            spawn_replica(spec, keys, OrderLog::new()).unwrap()
        })
        .collect();
    let t = TcpTransport::from_listener(ENDPOINT, cl, &ports, TcpOptions::default()).unwrap();
    let keys = Ed25519Keys::new(&client_seed, &pubs, &[]).unwrap();
    let client = Client::new(ClientConfig::new(N), 1000, keys, 0).unwrap();
    let mut c = MeshClient::new(t, addrs, vec![client], HostOptions::default()).unwrap();
    for i in 1..=5u64 {
        let done = c.execute(b"over tcp", TIMEOUT).unwrap();
        assert_eq!(OrderLog::decode_result(&done.result).unwrap().0, i);
    }
}

#[test]
#[cfg_attr(miri, ignore = "threads and shared memory")]
fn a_local_group_agrees_with_ed25519_and_survives_its_primary() {
    let dir = TempDir::new("pbft-local");
    let opts = LocalGroupOptions {
        view_change_timeout_us: 100_000,
        ..LocalGroupOptions::default()
    };
    let mut g = LocalGroup::start(&dir.0, &opts).unwrap();
    assert_eq!(g.n(), 4);
    for i in 1..=3u64 {
        let done = g.execute(b"agree").unwrap();
        assert_eq!(OrderLog::decode_result(&done.result).unwrap().0, i);
    }
    g.stop_replica(0).unwrap();
    assert_eq!(g.stop_replica(0).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(g.info(0).is_none());
    let done = g.execute(b"after").unwrap();
    assert_eq!(OrderLog::decode_result(&done.result).unwrap().0, 4);
    assert!(g.client_view() >= 1);
    let bad = LocalGroupOptions {
        n: 5,
        ..LocalGroupOptions::default()
    };
    assert_eq!(
        LocalGroup::start(&dir.0, &bad).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

/// A seeded simulation: four [`ReplicaHost`]s over [`crate::net::sim`] with loss,
/// duplication and reordering, a client stepped by hand on the simulated clock (µs), the
/// primary crashed half way. Returns the chain of the last result (a replay must agree).
fn simulate(seed: u64) -> u32 {
    use crate::net::sim::{LinkFaults, SimNet, SimOptions};
    let mut o = SimOptions::seeded(seed);
    o.link = LinkFaults {
        drop: 0.05,
        duplicate: 0.05,
        reorder: 0.05,
        reorder_window: 300,
        min_delay: 50,
        max_delay: 400,
    };
    let net = SimNet::new(o);
    let addrs = Addresses::numbered(N)
        .with_clients(ENDPOINT, [1000])
        .unwrap();
    let mut cfg = Config::new(N);
    cfg.view_change_timeout_us = 20_000;
    let mut hosts: Vec<_> = (0..N as u32)
        .map(|i| {
            let t = net.add_node(addrs.replica_node(i).unwrap()).unwrap();
            let r = crate::pbft::Replica::new(
                cfg.clone(),
                i,
                SimKeys::new(Principal::Replica(i), CLUSTER),
                OrderLog::new(),
            )
            .unwrap();
            Some(ReplicaHost::new(r, t, addrs.clone(), HostOptions::default()).unwrap())
        })
        .collect();
    let mut ct = net.add_node(ENDPOINT).unwrap();
    let mut cc = ClientConfig::new(N);
    cc.retransmit_us = 10_000;
    let mut client =
        Client::new(cc, 1000, SimKeys::new(Principal::Client(1000), CLUSTER), 0).unwrap();
    let send = |ct: &mut crate::net::sim::SimEndpoint, out: &mut Vec<crate::pbft::Outgoing>| {
        for o in out.drain(..) {
            let f = client_frame(1000, &o.payload);
            let to: Vec<u32> = match o.to {
                crate::pbft::Dest::Replica(i) => vec![i],
                _ => (0..N as u32).collect(),
            };
            for i in to {
                let _ = ct.send(addrs.replica_node(i).unwrap(), &f);
            }
        }
    };
    let (mut t, mut out, mut last) = (0u64, Vec::new(), 0u32);
    for k in 1..=20u64 {
        if k == 11 {
            net.crash(NodeId(1)).unwrap(); // the primary of view 0
            hosts[0] = None;
        }
        client.request(&k.to_le_bytes(), t, &mut out).unwrap();
        send(&mut ct, &mut out);
        let deadline = t + 10_000_000;
        'wait: loop {
            t += 100;
            assert!(
                t < deadline,
                "seed {seed}: request {k} not agreed in 10 s simulated"
            );
            net.run_until(t);
            for h in hosts.iter_mut().flatten() {
                h.run_once(t, Duration::ZERO).unwrap();
            }
            while let Some(f) = ct.try_recv().unwrap() {
                let (Some(Parsed::Client(1000, bytes)), Some(r)) =
                    (parse_frame(&f.payload), addrs.replica_of(f.from))
                else {
                    panic!("seed {seed}: a stray frame at the client");
                };
                if let Some(done) = client.handle(Principal::Replica(r), bytes, t).unwrap() {
                    let (pos, chain) = OrderLog::decode_result(&done.result).unwrap();
                    assert_eq!(pos, k, "seed {seed}: out of order");
                    last = chain;
                    break 'wait;
                }
            }
            client.tick(t, &mut out);
            send(&mut ct, &mut out);
        }
    }
    assert!(
        client.view() >= 1,
        "seed {seed}: no view change after the primary crashed"
    );
    last
}

#[test]
fn seeded_simulation_with_loss_and_a_primary_crash_agrees_and_replays() {
    for seed in [1, 2, 3] {
        let a = simulate(seed);
        assert_eq!(a, simulate(seed), "seed {seed} does not replay");
    }
}

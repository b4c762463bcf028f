//! Unit tests of the SWIM member: configuration, the wire format, and bad input of every kind
//! (garbage, truncated, oversized, spoofed, misaddressed, stale generations and
//! incarnations, unknown members).

use std::time::Duration;

use foca::{Codec, Header, Member as FocaMember, Message, State};

use super::wire::{self, NodeIdentity, WireCodec};
use super::{MemberEvent, MemberState, Swim, SwimConfig};
use crate::error::ErrorKind;
use crate::membership::Datagram;

fn ident(id: u64) -> NodeIdentity {
    NodeIdentity { id, generation: 0 }
}

/// A foca packet from `src` to `dst` with `message` and `updates`, sealed.
fn datagram(
    src: NodeIdentity,
    dst: NodeIdentity,
    message: Message<NodeIdentity>,
    updates: &[FocaMember<NodeIdentity>],
) -> Vec<u8> {
    wire::seal(&packet(src, dst, message, updates))
}

fn packet(
    src: NodeIdentity,
    dst: NodeIdentity,
    message: Message<NodeIdentity>,
    updates: &[FocaMember<NodeIdentity>],
) -> Vec<u8> {
    let mut buf = Vec::new();
    let header = Header {
        src,
        src_incarnation: 0,
        dst,
        message,
    };
    WireCodec.encode_header(&header, &mut buf).unwrap();
    if !updates.is_empty() {
        buf.extend_from_slice(&(updates.len() as u16).to_be_bytes());
        for m in updates {
            WireCodec.encode_member(m, &mut buf).unwrap();
        }
    }
    buf
}

/// Delivers every datagram between the members of `nodes` (ids 1..) at time `now` until
/// none is left.
fn deliver(nodes: &mut [Swim], mut out: Vec<(u64, Datagram)>, now: u64) {
    while let Some((from, d)) = out.pop() {
        let mut more = Vec::new();
        if let Some(node) = nodes.iter_mut().find(|n| n.id() == d.to) {
            node.handle(from, &d.payload, now, &mut more).unwrap();
            let me = node.id();
            out.extend(more.into_iter().map(|m| (me, m)));
        }
    }
}

/// Members 1 and 2, joined.
fn pair() -> (Swim, Swim) {
    let mut nodes = vec![
        Swim::new(1, SwimConfig::default()).unwrap(),
        Swim::new(2, SwimConfig::default()).unwrap(),
    ];
    let mut out = Vec::new();
    nodes[1].join(&[1], 0, &mut out).unwrap();
    deliver(&mut nodes, out.into_iter().map(|d| (2, d)).collect(), 0);
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    assert_eq!(a.live_members(), vec![2]);
    assert_eq!(b.live_members(), vec![1]);
    (a, b)
}

#[test]
fn config_defaults_follow_the_cluster_size() {
    let c = SwimConfig::for_cluster_size(16);
    assert_eq!(c.probe_period, Duration::from_secs(1));
    assert_eq!(c.probe_rtt, Duration::from_millis(500));
    // 4 × log10(16) × 1 s, and ceil(4 × log10(17)).
    assert_eq!(c.suspicion_timeout.as_millis(), 4816);
    assert_eq!(c.max_transmissions, 5);
    let small = SwimConfig::for_cluster_size(3);
    assert_eq!(small.suspicion_timeout, Duration::from_secs(4));
    assert_eq!(small.max_transmissions, 3);
    assert_eq!(SwimConfig::default(), c);
    let fast = c.with_probe_period(Duration::from_millis(100));
    assert_eq!(fast.probe_rtt, Duration::from_millis(50));
    assert_eq!(fast.gossip_period, Some(Duration::from_millis(20)));
    fast.validate().unwrap();
}

#[test]
fn bad_configs_are_refused_with_a_reason() {
    let bad = [
        SwimConfig {
            probe_rtt: Duration::from_secs(2),
            ..SwimConfig::default()
        },
        SwimConfig {
            probe_rtt: Duration::ZERO,
            ..SwimConfig::default()
        },
        SwimConfig {
            max_datagram: 20,
            ..SwimConfig::default()
        },
        SwimConfig {
            max_datagram: 70_000,
            ..SwimConfig::default()
        },
        SwimConfig {
            gossip_fanout: 0,
            ..SwimConfig::default()
        },
        SwimConfig {
            max_health: 0,
            ..SwimConfig::default()
        },
        SwimConfig {
            gossip_period: Some(Duration::ZERO),
            ..SwimConfig::default()
        },
    ];
    for c in bad {
        let e = Swim::new(1, c.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{c:?}");
        assert!(e.message().contains("swim config"), "{e}");
    }
}

#[test]
fn the_codec_round_trips_every_message() {
    let (a, b) = (
        ident(1),
        NodeIdentity {
            id: 2,
            generation: 7,
        },
    );
    let messages = [
        Message::Ping(3),
        Message::Ack(4),
        Message::PingReq {
            target: b,
            probe_number: 5,
        },
        Message::IndirectPing {
            origin: b,
            probe_number: 6,
        },
        Message::IndirectAck {
            target: b,
            probe_number: 7,
        },
        Message::ForwardedAck {
            origin: b,
            probe_number: 8,
        },
        Message::Announce,
        Message::Feed,
        Message::Gossip,
        Message::Broadcast,
        Message::TurnUndead,
    ];
    for message in messages {
        let header = Header {
            src: a,
            src_incarnation: 9,
            dst: b,
            message,
        };
        let mut buf = Vec::new();
        WireCodec.encode_header(&header, &mut buf).unwrap();
        let mut slice = &buf[..];
        assert_eq!(WireCodec.decode_header(&mut slice).unwrap(), header);
        assert!(slice.is_empty());
        // Every truncation is refused.
        for cut in 0..buf.len() {
            assert!(WireCodec.decode_header(&buf[..cut]).is_err(), "cut {cut}");
        }
    }
    for state in [State::Alive, State::Suspect, State::Down] {
        let m = FocaMember::new(b, 65_535, state);
        let mut buf = Vec::new();
        WireCodec.encode_member(&m, &mut buf).unwrap();
        assert_eq!(WireCodec.decode_member(&buf[..]).unwrap(), m);
        for cut in 0..buf.len() {
            assert!(WireCodec.decode_member(&buf[..cut]).is_err());
        }
    }
    // No room: refused, nothing written.
    let mut small = [0u8; 10];
    let header = Header {
        src: a,
        src_incarnation: 0,
        dst: b,
        message: Message::Ping(0),
    };
    assert!(WireCodec.encode_header(&header, &mut small[..]).is_err());
    assert_eq!(small, [0u8; 10]);
}

#[test]
fn garbage_truncated_and_corrupted_datagrams_are_refused() {
    let (mut a, _b) = (pair().0, ());
    let mut out = Vec::new();
    let mut state = 0x1234_5678_u64;
    let mut rejected = 0;
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        let e = a.handle(2, &bytes, 1, &mut out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{len} bytes: {e}");
        rejected += 1;
    }
    // A valid datagram, then every truncation and every single-bit flip of it.
    let good = datagram(
        ident(2),
        ident(1),
        Message::Gossip,
        &[FocaMember::new(ident(3), 0, State::Alive)],
    );
    for cut in 0..good.len() {
        assert!(a.handle(2, &good[..cut], 1, &mut out).is_err(), "cut {cut}");
        rejected += 1;
    }
    for bit in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let e = a.handle(2, &bad, 1, &mut out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "bit {bit}: {e}");
        rejected += 1;
    }
    // Inside a valid envelope: truncated updates, an unknown tag, an unknown state, bytes
    // left over.
    let p = packet(
        ident(2),
        ident(1),
        Message::Gossip,
        &[FocaMember::new(ident(3), 0, State::Alive)],
    );
    let header_len = 16 + 2 + 16 + 1;
    for cut in header_len + 1..p.len() {
        assert!(
            a.handle(2, &wire::seal(&p[..cut]), 1, &mut out).is_err(),
            "cut {cut}"
        );
        rejected += 1;
    }
    let mut tag = p.clone();
    tag[header_len - 1] = 200;
    let mut st = p.clone();
    *st.last_mut().unwrap() = 9;
    let mut extra = p.clone();
    extra.push(0);
    for bad in [tag, st, extra] {
        let e = a.handle(2, &wire::seal(&bad), 1, &mut out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        rejected += 1;
    }
    assert_eq!(a.stats().rejected, rejected);
    assert!(out.is_empty(), "a refused datagram made the member send");
    assert_eq!(
        a.live_members(),
        vec![2],
        "a refused datagram changed the membership"
    );
}

#[test]
fn oversized_datagrams_are_refused() {
    let (mut a, _) = pair();
    let mut out = Vec::new();
    let max = a.config().max_datagram;
    let big = vec![0u8; max + 1];
    let e = a.handle(2, &big, 1, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    assert!(e.message().contains("beyond"), "{e}");
    // A well-formed packet of exactly the limit is judged on its content, not its size;
    // one byte over is refused before anything is read.
    let updates: Vec<_> = (10..200)
        .map(|id| FocaMember::new(ident(id), 0, State::Alive))
        .collect();
    let huge = datagram(ident(2), ident(1), Message::Gossip, &updates);
    assert!(huge.len() > max);
    assert_eq!(
        a.handle(2, &huge, 1, &mut out).unwrap_err().kind(),
        ErrorKind::TooLarge
    );
    assert_eq!(a.live_members(), vec![2]);
}

#[test]
fn spoofed_and_misaddressed_datagrams_are_refused() {
    let (mut a, _) = pair();
    let mut out = Vec::new();
    // The transport says 2, the packet says 3.
    let spoof = datagram(ident(3), ident(1), Message::Ping(1), &[]);
    let e = a.handle(2, &spoof, 1, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("claims to come from member 3"), "{e}");
    // Addressed to member 9.
    let other = datagram(ident(2), ident(9), Message::Ping(1), &[]);
    let e = a.handle(2, &other, 1, &mut out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("addressed to member 9"), "{e}");
    // From ourselves.
    let own = datagram(ident(1), ident(1), Message::Ping(1), &[]);
    assert!(a.handle(1, &own, 1, &mut out).is_err());
    // An indirect probe of ourselves.
    let loop_ = datagram(
        ident(2),
        ident(1),
        Message::PingReq {
            target: ident(1),
            probe_number: 1,
        },
        &[],
    );
    assert!(a.handle(2, &loop_, 1, &mut out).is_err());
    assert_eq!(a.stats().rejected, 4);
    assert!(out.is_empty());
}

#[test]
fn datagrams_for_an_older_generation_are_dropped() {
    let config = SwimConfig {
        generation: 5,
        ..SwimConfig::default()
    };
    let mut a = Swim::new(1, config).unwrap();
    let mut out = Vec::new();
    // A ping for generation 4 (a previous life of member 1): dropped, counted, no answer.
    let old = NodeIdentity {
        id: 1,
        generation: 4,
    };
    a.handle(
        2,
        &datagram(ident(2), old, Message::Ping(1), &[]),
        1,
        &mut out,
    )
    .unwrap();
    assert_eq!(a.stats().stale, 1);
    assert!(out.is_empty());
    assert!(a.live_members().is_empty());
    // An announce is addressed to whatever generation the joiner guessed: answered.
    a.handle(
        2,
        &datagram(ident(2), old, Message::Announce, &[]),
        1,
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(a.live_members(), vec![2]);
}

#[test]
fn stale_incarnations_do_not_override_newer_knowledge() {
    let (mut a, _) = pair();
    let mut out = Vec::new();
    let gossip = |updates: &[FocaMember<NodeIdentity>]| {
        datagram(ident(2), ident(1), Message::Gossip, updates)
    };
    // Member 3 alive at incarnation 5, then a suspicion and an alive at older incarnations.
    a.handle(
        2,
        &gossip(&[FocaMember::new(ident(3), 5, State::Alive)]),
        1,
        &mut out,
    )
    .unwrap();
    a.handle(
        2,
        &gossip(&[FocaMember::new(ident(3), 4, State::Suspect)]),
        2,
        &mut out,
    )
    .unwrap();
    let m3 = |a: &Swim| a.members().into_iter().find(|m| m.id == 3).unwrap();
    assert_eq!((m3(&a).incarnation, m3(&a).state), (5, MemberState::Alive));
    // A suspicion at 5 holds; an alive at 5 does not clear it; at 6 it does.
    a.handle(
        2,
        &gossip(&[FocaMember::new(ident(3), 5, State::Suspect)]),
        3,
        &mut out,
    )
    .unwrap();
    a.handle(
        2,
        &gossip(&[FocaMember::new(ident(3), 5, State::Alive)]),
        4,
        &mut out,
    )
    .unwrap();
    assert_eq!(m3(&a).state, MemberState::Suspect);
    a.handle(
        2,
        &gossip(&[FocaMember::new(ident(3), 6, State::Alive)]),
        5,
        &mut out,
    )
    .unwrap();
    assert_eq!((m3(&a).incarnation, m3(&a).state), (6, MemberState::Alive));
    // An older generation of 3 loses to the one known; a newer one replaces it.
    let old3 = NodeIdentity {
        id: 3,
        generation: 0,
    };
    let new3 = NodeIdentity {
        id: 3,
        generation: 1,
    };
    a.handle(
        2,
        &gossip(&[FocaMember::new(new3, 0, State::Alive)]),
        6,
        &mut out,
    )
    .unwrap();
    a.handle(
        2,
        &gossip(&[FocaMember::new(old3, 9, State::Alive)]),
        7,
        &mut out,
    )
    .unwrap();
    assert_eq!((m3(&a).generation, m3(&a).state), (1, MemberState::Alive));
    let events = a.drain_events();
    assert!(events.contains(&MemberEvent::Up(3)));
    assert!(events.contains(&MemberEvent::Suspect(3)));
    assert!(events.contains(&MemberEvent::Restarted(3)));
    assert!(!events.contains(&MemberEvent::Down(3)));
}

#[test]
fn a_suspicion_of_ourselves_is_refuted_and_answered_directly() {
    let (mut a, _) = pair();
    let mut out = Vec::new();
    let me = FocaMember::new(ident(1), 0, State::Suspect);
    a.handle(
        2,
        &datagram(ident(2), ident(1), Message::Gossip, &[me]),
        1,
        &mut out,
    )
    .unwrap();
    assert_eq!(a.stats().refutations, 1);
    assert_eq!(a.stats().direct_refutations, 1);
    // The last datagram goes back to 2 and says "1 alive at incarnation 1".
    let d = out.last().unwrap();
    assert_eq!(d.to, 2);
    let p = wire::open(&d.payload).unwrap();
    let mut rest = p;
    WireCodec.decode_header(&mut rest).unwrap();
    assert_eq!(u16::from_be_bytes([rest[0], rest[1]]), 1);
    let update = WireCodec.decode_member(&rest[2..]).unwrap();
    assert_eq!(update, FocaMember::new(ident(1), 1, State::Alive));
    assert_eq!(a.local_health(), 2, "a refutation is a sign of ill health");
}

#[test]
fn updates_about_unknown_down_members_change_nothing_live() {
    let (mut a, _) = pair();
    let mut out = Vec::new();
    let ghosts: Vec<_> = (100..110)
        .map(|id| FocaMember::new(ident(id), 3, State::Down))
        .collect();
    a.handle(
        2,
        &datagram(ident(2), ident(1), Message::Gossip, &ghosts),
        1,
        &mut out,
    )
    .unwrap();
    assert_eq!(a.live_members(), vec![2]);
    let events = a.drain_events();
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, MemberEvent::Down(id) | MemberEvent::Up(id) if *id >= 100)),
        "{events:?}"
    );
}

#[test]
fn a_member_that_left_ignores_datagrams_and_cannot_rejoin() {
    let (mut a, mut b) = pair();
    let mut out = Vec::new();
    a.leave(10, &mut out).unwrap();
    assert!(!out.is_empty(), "leaving tells someone");
    for d in out.drain(..) {
        b.handle(1, &d.payload, 11, &mut Vec::new()).unwrap();
    }
    assert!(b.live_members().is_empty());
    assert!(b.drain_events().contains(&MemberEvent::Down(1)));
    // Datagrams to the member that left: ignored, counted.
    a.handle(
        2,
        &datagram(ident(2), ident(1), Message::Ping(1), &[]),
        12,
        &mut out,
    )
    .unwrap();
    assert_eq!(a.stats().ignored, 1);
    assert!(out.is_empty());
    a.tick(u64::MAX / 2, &mut out);
    assert!(out.is_empty() && a.next_deadline_us().is_none());
    assert_eq!(
        a.join(&[2], 13, &mut out).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    a.leave(14, &mut out).unwrap();
}

#[test]
fn join_retries_until_a_seed_answers() {
    let mut a = Swim::new(1, SwimConfig::default()).unwrap();
    let retry = a.config().join_retry.as_micros() as u64;
    let mut out = Vec::new();
    a.join(&[1, 2, 2, 3], 0, &mut out).unwrap();
    let to: Vec<u64> = out.iter().map(|d| d.to).collect();
    assert_eq!(to, vec![2, 3], "its own id skipped, duplicates once");
    assert_eq!(a.next_deadline_us(), Some(retry));
    out.clear();
    a.tick(retry, &mut out);
    assert_eq!(out.len(), 2, "announced again");
    // Seed 3 answers (a feed): active, no more retries.
    let feed = datagram(ident(3), ident(1), Message::Feed, &[]);
    a.handle(3, &feed, retry + 1, &mut out).unwrap();
    assert!(a.is_active());
    assert_eq!(a.live_members(), vec![3]);
    assert_eq!(a.drain_events(), vec![MemberEvent::Up(3)]);
    let next = a.next_deadline_us().unwrap();
    out.clear();
    a.tick(next, &mut out);
    assert!(
        out.iter().all(|d| d.to == 3),
        "probes go to the member, not to the seeds"
    );
}

#[test]
fn late_ticks_raise_the_health_multiplier_and_stretch_the_probe_period() {
    let (mut a, _) = pair();
    let period = a.config().probe_period.as_micros() as u64;
    let mut out = Vec::new();
    assert_eq!(a.local_health(), 1);
    let due = a.next_deadline_us().unwrap();
    // Three probe periods late.
    let now = due + 3 * period;
    a.tick(now, &mut out);
    assert_eq!(a.stats().late_ticks, 1);
    assert_eq!(a.local_health(), 2);
    // The next probe cycle is armed at twice the period.
    let probe_at = a
        .timers
        .iter()
        .find(|(_, t)| matches!(t, foca::Timer::ProbeRandomMember(_)))
        .map(|(&(due, _), _)| due)
        .unwrap();
    assert!(probe_at >= now + 2 * period, "{probe_at} vs {now}");
    // With the measures off, nothing moves.
    let (_, mut b) = pair();
    b.config.local_health = false;
    let due = b.next_deadline_us().unwrap();
    b.tick(due + 3 * period, &mut out);
    assert_eq!((b.stats().late_ticks, b.local_health()), (1, 1));
}

#[test]
fn the_clock_never_goes_back() {
    let (mut a, _) = pair();
    let mut out = Vec::new();
    a.tick(5_000_000, &mut out);
    let d = a.next_deadline_us().unwrap();
    // A tick with an earlier time is a tick at the latest time seen.
    a.tick(1, &mut out);
    assert_eq!(a.next_deadline_us().unwrap(), d);
}

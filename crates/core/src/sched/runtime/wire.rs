//! The frames of a scheduler directory's rings, little-endian, validated on decode.
//!
//! Inbox frames (the dispatcher to one agent, ring `inbox.<agent>`):
//!
//! | tag | body |
//! |---|---|
//! | 1 `Task` | task u64, attempt u32, deadline u64, payload (the rest) |
//! | 2 `Revoke` | task u64, attempt u32 |
//! | 3 `Hello` | — (the dispatcher restarted: say hello again) |
//!
//! Report frames (agents to the dispatcher, ring `sched.reports`, many producers); each names
//! its agent (`id`: u8 length + bytes, a valid agent id):
//!
//! | tag | body |
//! |---|---|
//! | 1 `Hello` | id, pid u32, start_ticks u64, max_tasks u32, type (u8 length + bytes) |
//! | 2 `Started` | id, task u64, attempt u32 |
//! | 3 `Ack` | id, task u64, attempt u32, result (the rest) |
//! | 4 `Nack` | id, task u64, attempt u32, reason (the rest, UTF-8) |
//! | 5 `Bye` | id |
//!
//! Frames come from other processes: a frame that does not decode is refused with
//! `ErrorKind::Corrupt` and a message, never trusted.

use crate::error::{Error, ErrorKind, Result};
use crate::sched::types::{AgentId, AgentType, Attempt, Micros, TaskId};

/// A frame of an agent's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxFrame<'a> {
    /// A task leased to the agent.
    Task {
        /// The task.
        task: TaskId,
        /// The attempt, quoted back in reports.
        attempt: Attempt,
        /// When the lease expires ([`super::now_micros`] clock).
        deadline: Micros,
        /// The payload.
        payload: &'a [u8],
    },
    /// Drop this attempt if not started.
    Revoke {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: Attempt,
    },
    /// The dispatcher restarted and forgot its agents: register again.
    Hello,
}

/// A frame of the reports ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportFrame<'a> {
    /// The agent registers (again).
    Hello {
        /// The agent.
        agent: AgentId,
        /// Its process.
        pid: u32,
        /// Its process's start time (`/proc` ticks; 0 when unknown).
        start_ticks: u64,
        /// Its capacity.
        max_tasks: u32,
        /// Its type.
        agent_type: AgentType,
    },
    /// The agent began the task.
    Started {
        /// The agent.
        agent: AgentId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: Attempt,
    },
    /// The task is done: its result.
    Ack {
        /// The agent.
        agent: AgentId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: Attempt,
        /// The result.
        result: &'a [u8],
    },
    /// The agent gives the task back.
    Nack {
        /// The agent.
        agent: AgentId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: Attempt,
        /// Why.
        reason: &'a str,
    },
    /// The agent leaves (its leases are released).
    Bye {
        /// The agent.
        agent: AgentId,
    },
}

const T_TASK: u8 = 1;
const T_REVOKE: u8 = 2;
const T_HELLO: u8 = 3;

const R_HELLO: u8 = 1;
const R_STARTED: u8 = 2;
const R_ACK: u8 = 3;
const R_NACK: u8 = 4;
const R_BYE: u8 = 5;

/// Bytes of a `Task` frame before its payload.
pub const TASK_HEADER: usize = 1 + 8 + 4 + 8;

fn corrupt(what: &str) -> Error {
    Error::new(ErrorKind::Corrupt, format!("scheduler frame: {what}"))
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(corrupt(&format!("truncated {what}")));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn short_str(&mut self, what: &str) -> Result<&'a str> {
        let n = usize::from(self.u8(what)?);
        std::str::from_utf8(self.take(n, what)?).map_err(|_| corrupt(&format!("{what} not UTF-8")))
    }
    fn agent(&mut self) -> Result<AgentId> {
        AgentId::new(self.short_str("agent id")?).map_err(|e| corrupt(e.message()))
    }
    fn task(&mut self) -> Result<(TaskId, Attempt)> {
        let t = self.u64("task id")?;
        let a = self.u32("attempt")?;
        if t == 0 {
            return Err(corrupt("task id 0"));
        }
        Ok((TaskId(t), a))
    }
    fn end(&self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(corrupt("trailing bytes"))
        }
    }
}

/// Writes a `Task` frame's header into `out[..TASK_HEADER]` (the payload follows).
pub fn put_task_header(out: &mut [u8], task: TaskId, attempt: Attempt, deadline: Micros) {
    out[0] = T_TASK;
    out[1..9].copy_from_slice(&task.0.to_le_bytes());
    out[9..13].copy_from_slice(&attempt.to_le_bytes());
    out[13..21].copy_from_slice(&deadline.to_le_bytes());
}

/// Encodes an inbox frame.
pub fn encode_inbox(f: &InboxFrame<'_>) -> Vec<u8> {
    match f {
        InboxFrame::Task {
            task,
            attempt,
            deadline,
            payload,
        } => {
            let mut v = vec![0; TASK_HEADER + payload.len()];
            put_task_header(&mut v, *task, *attempt, *deadline);
            v[TASK_HEADER..].copy_from_slice(payload);
            v
        }
        InboxFrame::Revoke { task, attempt } => {
            let mut v = Vec::with_capacity(13);
            v.push(T_REVOKE);
            v.extend_from_slice(&task.0.to_le_bytes());
            v.extend_from_slice(&attempt.to_le_bytes());
            v
        }
        InboxFrame::Hello => vec![T_HELLO],
    }
}

/// Decodes an inbox frame.
pub fn decode_inbox(b: &[u8]) -> Result<InboxFrame<'_>> {
    let mut r = Reader { b };
    match r.u8("tag")? {
        T_TASK => {
            let (task, attempt) = r.task()?;
            let deadline = r.u64("deadline")?;
            Ok(InboxFrame::Task {
                task,
                attempt,
                deadline,
                payload: r.b,
            })
        }
        T_REVOKE => {
            let (task, attempt) = r.task()?;
            r.end()?;
            Ok(InboxFrame::Revoke { task, attempt })
        }
        T_HELLO => {
            r.end()?;
            Ok(InboxFrame::Hello)
        }
        t => Err(corrupt(&format!("unknown inbox tag {t}"))),
    }
}

fn put_agent(v: &mut Vec<u8>, agent: &AgentId) {
    // AgentId is at most MAX_AGENT_ID_LEN (< 256) bytes.
    v.push(agent.as_str().len() as u8);
    v.extend_from_slice(agent.as_str().as_bytes());
}

fn put_task(v: &mut Vec<u8>, tag: u8, agent: &AgentId, task: TaskId, attempt: Attempt) {
    v.push(tag);
    put_agent(v, agent);
    v.extend_from_slice(&task.0.to_le_bytes());
    v.extend_from_slice(&attempt.to_le_bytes());
}

/// Encodes a report frame into `v` (cleared first).
pub fn encode_report(f: &ReportFrame<'_>, v: &mut Vec<u8>) {
    v.clear();
    match f {
        ReportFrame::Hello {
            agent,
            pid,
            start_ticks,
            max_tasks,
            agent_type,
        } => {
            v.push(R_HELLO);
            put_agent(v, agent);
            v.extend_from_slice(&pid.to_le_bytes());
            v.extend_from_slice(&start_ticks.to_le_bytes());
            v.extend_from_slice(&max_tasks.to_le_bytes());
            // AgentType is 1-255 bytes.
            v.push(agent_type.as_str().len() as u8);
            v.extend_from_slice(agent_type.as_str().as_bytes());
        }
        ReportFrame::Started {
            agent,
            task,
            attempt,
        } => put_task(v, R_STARTED, agent, *task, *attempt),
        ReportFrame::Ack {
            agent,
            task,
            attempt,
            result,
        } => {
            put_task(v, R_ACK, agent, *task, *attempt);
            v.extend_from_slice(result);
        }
        ReportFrame::Nack {
            agent,
            task,
            attempt,
            reason,
        } => {
            put_task(v, R_NACK, agent, *task, *attempt);
            v.extend_from_slice(reason.as_bytes());
        }
        ReportFrame::Bye { agent } => {
            v.push(R_BYE);
            put_agent(v, agent);
        }
    }
}

/// Decodes a report frame.
pub fn decode_report(b: &[u8]) -> Result<ReportFrame<'_>> {
    let mut r = Reader { b };
    let tag = r.u8("tag")?;
    let agent = r.agent()?;
    let f = match tag {
        R_HELLO => {
            let pid = r.u32("pid")?;
            let start_ticks = r.u64("start time")?;
            let max_tasks = r.u32("max_tasks")?;
            let agent_type =
                AgentType::new(r.short_str("agent type")?).map_err(|e| corrupt(e.message()))?;
            r.end()?;
            ReportFrame::Hello {
                agent,
                pid,
                start_ticks,
                max_tasks,
                agent_type,
            }
        }
        R_STARTED => {
            let (task, attempt) = r.task()?;
            r.end()?;
            ReportFrame::Started {
                agent,
                task,
                attempt,
            }
        }
        R_ACK => {
            let (task, attempt) = r.task()?;
            ReportFrame::Ack {
                agent,
                task,
                attempt,
                result: r.b,
            }
        }
        R_NACK => {
            let (task, attempt) = r.task()?;
            let reason = std::str::from_utf8(r.b).map_err(|_| corrupt("nack reason not UTF-8"))?;
            ReportFrame::Nack {
                agent,
                task,
                attempt,
                reason,
            }
        }
        R_BYE => {
            r.end()?;
            ReportFrame::Bye { agent }
        }
        t => return Err(corrupt(&format!("unknown report tag {t}"))),
    };
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentId {
        AgentId::new("w-1").unwrap()
    }

    #[test]
    fn frames_round_trip() {
        let inbox = [
            InboxFrame::Task {
                task: TaskId(7),
                attempt: 2,
                deadline: 99,
                payload: b"abc",
            },
            InboxFrame::Task {
                task: TaskId(u64::MAX),
                attempt: 0,
                deadline: 0,
                payload: b"",
            },
            InboxFrame::Revoke {
                task: TaskId(3),
                attempt: 1,
            },
            InboxFrame::Hello,
        ];
        for f in &inbox {
            assert_eq!(&decode_inbox(&encode_inbox(f)).unwrap(), f);
        }
        let reports = [
            ReportFrame::Hello {
                agent: agent(),
                pid: 42,
                start_ticks: 1 << 40,
                max_tasks: 5,
                agent_type: AgentType::new(&"t".repeat(255)).unwrap(),
            },
            ReportFrame::Started {
                agent: agent(),
                task: TaskId(1),
                attempt: 1,
            },
            ReportFrame::Ack {
                agent: agent(),
                task: TaskId(1),
                attempt: 1,
                result: b"\x00\xff",
            },
            ReportFrame::Nack {
                agent: agent(),
                task: TaskId(1),
                attempt: 1,
                reason: "boom é",
            },
            ReportFrame::Bye { agent: agent() },
        ];
        let mut v = Vec::new();
        for f in &reports {
            encode_report(f, &mut v);
            assert_eq!(&decode_report(&v).unwrap(), f);
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_refused() {
        let mut v = Vec::new();
        encode_report(
            &ReportFrame::Hello {
                agent: agent(),
                pid: 1,
                start_ticks: 2,
                max_tasks: 3,
                agent_type: AgentType::new("coder").unwrap(),
            },
            &mut v,
        );
        for n in 0..v.len() {
            let e = decode_report(&v[..n]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "cut at {n}");
        }
        let mut long = v.clone();
        long.push(0);
        assert_eq!(decode_report(&long).unwrap_err().kind(), ErrorKind::Corrupt);
        let t = encode_inbox(&InboxFrame::Revoke {
            task: TaskId(3),
            attempt: 1,
        });
        for n in 0..t.len() {
            assert!(decode_inbox(&t[..n]).is_err(), "cut at {n}");
        }
        // Bad agent ids, task id 0, unknown tags, bad UTF-8.
        assert!(decode_report(&[R_BYE, 2, b'.', b'.']).is_err());
        assert!(decode_report(&[R_BYE, 0]).is_err());
        assert!(decode_report(&[9, 1, b'a']).is_err());
        assert!(decode_inbox(&[9]).is_err());
        let mut zero = vec![R_STARTED, 1, b'a'];
        zero.extend_from_slice(&0u64.to_le_bytes());
        zero.extend_from_slice(&1u32.to_le_bytes());
        assert!(decode_report(&zero).is_err());
        let mut nack = vec![R_NACK, 1, b'a'];
        nack.extend_from_slice(&1u64.to_le_bytes());
        nack.extend_from_slice(&1u32.to_le_bytes());
        nack.push(0xff);
        assert!(decode_report(&nack).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 40) as usize;
            let bytes: Vec<u8> = (0..n).map(|i| (x >> (i % 8 * 8)) as u8 % 8).collect();
            let _ = decode_report(&bytes);
            let _ = decode_inbox(&bytes);
        }
    }
}

//! Routing messages to agents by name, over their inbox rings.
//!
//! Every agent has an inbox: a multi-producer ring named `inbox.<agent>` in the router's
//! directory, created when the agent registers. Any process can send to it by name.
//!
//! ```
//! use erlmcp_flow::router::{Router, RouterOptions};
//! # let dir = std::env::temp_dir().join(format!("emf-doc-router-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let mut router = Router::new(RouterOptions::in_dir(&dir));
//! let mut inbox = router.register_agent("planner").unwrap();
//! router.send_direct("planner", b"task 1").unwrap();
//! let out = router.send_batch("planner", &[b"task 2", b"task 3"]).unwrap();
//! assert_eq!(out.accepted, 2);
//! let mut got = Vec::new();
//! inbox.poll(10, |f| got.push(f.to_vec())).unwrap();
//! assert_eq!(got.len(), 3);
//! assert_eq!(router.send_direct("nobody", b"x").unwrap_err().kind(), erlmcp_flow::ErrorKind::NotFound);
//! # drop(inbox); router.unregister_agent("planner").unwrap();
//! ```

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use crate::codec::ring::ProducerExt;
use crate::codec::{Encoder, Message};
use crate::error::{Error, ErrorKind, Result};
use crate::ring::{Consumer, Producer, Ring, RingOptions};
use crate::shm::SegmentOptions;

/// How inboxes are made.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Options for the inbox rings (multi-producer is forced on).
    pub inbox: RingOptions,
}

impl RouterOptions {
    /// Defaults with inboxes in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        RouterOptions {
            inbox: RingOptions {
                multi_producer: true,
                ..RingOptions::in_dir(dir)
            },
        }
    }
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            inbox: RingOptions {
                multi_producer: true,
                ..RingOptions::default()
            },
        }
    }
}

/// What a batch send did: the first `accepted` messages are in the agent's inbox; the ones
/// in `not_accepted` were not sent (back-pressure) and are still the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// How many messages, from the front, were sent.
    pub accepted: usize,
    /// Indices of the messages that were not sent.
    pub not_accepted: Range<usize>,
}

/// Sends to agents' inboxes by name. Keeps one producer per agent it has sent to.
pub struct Router {
    opts: RouterOptions,
    producers: HashMap<String, Producer>,
}

/// The inbox ring name of `agent`.
pub fn inbox_name(agent: &str) -> String {
    format!("inbox.{agent}")
}

/// The longest agent name: an inbox is the segment `inbox.<agent>`, and a segment name is at
/// most 200 characters.
pub const MAX_AGENT_NAME_LEN: usize = 194;

/// Checks an agent name: 1 to [`MAX_AGENT_NAME_LEN`] characters of `A-Z a-z 0-9 . _ -`, not
/// starting with `.`. The inbox name `inbox.<agent>` would be a valid segment name for `""`,
/// `"."` or `".."` too (files `inbox.`, `inbox..`, `inbox...`), so agent names follow the
/// segment-name rules themselves. Every router entry point checks it, and so does
/// `sched::AgentId::new`.
pub fn validate_agent_name(agent: &str) -> Result<()> {
    let ok = !agent.is_empty()
        && agent.len() <= MAX_AGENT_NAME_LEN
        && !agent.starts_with('.')
        && agent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "agent name {agent:?} must be 1-{MAX_AGENT_NAME_LEN} characters of A-Z a-z 0-9 . _ - \
             and not start with '.'"
        )))
    }
}

impl Router {
    /// A router with `opts`.
    pub fn new(mut opts: RouterOptions) -> Router {
        opts.inbox.multi_producer = true;
        Router {
            opts,
            producers: HashMap::new(),
        }
    }

    fn seg(&self) -> &SegmentOptions {
        &self.opts.inbox.segment
    }

    /// Creates `agent`'s inbox (or reopens it after a restart) and returns its consumer.
    /// `InvalidArgument` when `agent` is not a valid name ([`validate_agent_name`]).
    pub fn register_agent(&self, agent: &str) -> Result<Consumer> {
        validate_agent_name(agent)?;
        let name = inbox_name(agent);
        let ring = match Ring::open(&name, self.seg()) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => Ring::create(&name, &self.opts.inbox)?,
            Err(e) => return Err(e),
        };
        ring.consumer()
    }

    /// Removes `agent`'s inbox and closes it: senders that still hold it get `Closed` (a
    /// router then looks the agent up again) instead of writing into a removed ring.
    /// `InvalidArgument` when `agent` is not a valid name ([`validate_agent_name`]).
    pub fn unregister_agent(&mut self, agent: &str) -> Result<()> {
        validate_agent_name(agent)?;
        self.producers.remove(agent);
        let ring = Ring::inspect(&inbox_name(agent), self.seg())?;
        ring.close();
        ring.unlink()
    }

    fn producer(&mut self, agent: &str) -> Result<&mut Producer> {
        if !self.producers.contains_key(agent) {
            validate_agent_name(agent)?;
            let ring = Ring::open(&inbox_name(agent), self.seg()).map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("agent {agent:?} has no inbox (not registered)"),
                    )
                } else {
                    e
                }
            })?;
            self.producers.insert(agent.to_owned(), ring.producer()?);
        }
        Ok(self.producers.get_mut(agent).expect("inserted above"))
    }

    /// Runs `f` with `agent`'s producer; when the inbox it holds was removed (the agent
    /// unregistered, maybe registered again), reopens the current inbox once and retries.
    fn with_inbox<R>(
        &mut self,
        agent: &str,
        mut f: impl FnMut(&mut Producer) -> Result<R>,
    ) -> Result<R> {
        match f(self.producer(agent)?) {
            Err(e) if e.kind() == ErrorKind::Closed => {
                self.producers.remove(agent);
                f(self.producer(agent)?)
            }
            other => other,
        }
    }

    /// Sends one message to `agent`. `Full` when its inbox is full (the caller keeps the
    /// message), `NotFound` when the agent has no inbox, `InvalidArgument` when `agent` is not
    /// a valid name ([`validate_agent_name`]).
    pub fn send_direct(&mut self, agent: &str, payload: &[u8]) -> Result<()> {
        self.with_inbox(agent, |p| p.send(payload))
    }

    /// Encodes and sends a message to `agent` in place in its inbox.
    pub fn send_message(
        &mut self,
        agent: &str,
        enc: &mut Encoder,
        msg: &Message,
        max_len: usize,
    ) -> Result<()> {
        self.with_inbox(agent, |p| p.send_message(enc, msg, max_len))
    }

    /// Sends messages to `agent` in order; says which were not accepted. Never drops one
    /// silently: the ones not accepted are named in the outcome and were not sent.
    pub fn send_batch(&mut self, agent: &str, payloads: &[&[u8]]) -> Result<BatchOutcome> {
        let accepted = self.with_inbox(agent, |p| p.send_batch(payloads))?;
        Ok(BatchOutcome {
            accepted,
            not_accepted: accepted..payloads.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    #[cfg_attr(miri, ignore = "maps files")]
    fn batches_report_what_was_not_accepted_and_nothing_is_lost() {
        let dir = TempDir::new("router");
        let mut opts = RouterOptions::in_dir(&dir.0);
        opts.inbox.capacity = 4096;
        let mut r = Router::new(opts);
        let mut inbox = r.register_agent("a").unwrap();
        let msgs: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_le_bytes().repeat(25)).collect();
        let mut refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let mut got: Vec<Vec<u8>> = Vec::new();
        while !refs.is_empty() {
            let out = r.send_batch("a", &refs).unwrap();
            assert_eq!(out.not_accepted, out.accepted..refs.len());
            refs.drain(..out.accepted);
            inbox.poll(usize::MAX, |f| got.push(f.to_vec())).unwrap();
        }
        assert_eq!(got, msgs);
        assert_eq!(
            r.send_batch("zz", &[b"x"]).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        // An agent that unregisters and registers again: senders follow to the new inbox
        // instead of writing into the removed one.
        r.unregister_agent("a").unwrap();
        let mut fresh = r.register_agent("a").unwrap();
        let mut other = Router::new(RouterOptions::in_dir(&dir.0));
        other.send_direct("a", b"to the new inbox").unwrap();
        let mut seen_new = Vec::new();
        fresh.poll(10, |f| seen_new.push(f.to_vec())).unwrap();
        assert_eq!(seen_new, [b"to the new inbox".to_vec()]);
        drop(fresh);
        drop(inbox);
        // A restarted agent gets its inbox back, unread messages included.
        r.send_direct("a", b"kept").unwrap();
        let mut again = r.register_agent("a").unwrap();
        let mut seen = Vec::new();
        again.poll(10, |f| seen.push(f.to_vec())).unwrap();
        assert_eq!(seen, [b"kept".to_vec()]);
        assert_eq!(
            r.register_agent("bad/name").err().unwrap().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps files")]
    fn agent_names_follow_the_segment_name_rules_everywhere() {
        let dir = TempDir::new("router-names");
        let mut r = Router::new(RouterOptions::in_dir(&dir.0));
        let too_long = "a".repeat(MAX_AGENT_NAME_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            too_long.as_str(),
        ] {
            let kind = |e: Error| e.kind();
            assert_eq!(
                r.register_agent(bad).err().map(kind),
                Some(ErrorKind::InvalidArgument),
                "register {bad:?}"
            );
            assert_eq!(
                r.unregister_agent(bad).map_err(kind),
                Err(ErrorKind::InvalidArgument),
                "unregister {bad:?}"
            );
            assert_eq!(
                r.send_direct(bad, b"x").map_err(kind),
                Err(ErrorKind::InvalidArgument),
                "send_direct {bad:?}"
            );
            assert_eq!(
                r.send_batch(bad, &[b"x"]).map_err(kind),
                Err(ErrorKind::InvalidArgument),
                "send_batch {bad:?}"
            );
            let mut enc = Encoder::new();
            let msg = Message::from(crate::codec::Envelope::default());
            assert_eq!(
                r.send_message(bad, &mut enc, &msg, 1024).map_err(kind),
                Err(ErrorKind::InvalidArgument),
                "send_message {bad:?}"
            );
        }
        // Nothing was created for them: no `inbox.`, `inbox..` or `inbox...` files.
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
        // The longest valid name works end to end.
        let longest = "a".repeat(MAX_AGENT_NAME_LEN);
        let mut inbox = r.register_agent(&longest).unwrap();
        r.send_direct(&longest, b"x").unwrap();
        let mut n = 0;
        inbox.poll(10, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        drop(inbox);
        r.unregister_agent(&longest).unwrap();
    }
}

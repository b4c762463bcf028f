//! The back-pressure controller of one agent: an agent whose inbox lags (frames written but
//! not yet read) is a slow consumer, and gets no new task until it has caught up.
//!
//! The host reads the agent's inbox lag from its ring and passes it to
//! [`BackPressure::observe`]; the scheduler tells [`BackPressure::on_sent`] of every frame it
//! writes in between, so that a burst between two readings cannot overfill the inbox. The lag
//! the controller judges is the last reading plus the frames sent since (an upper bound of the
//! true lag, as the agent can only have read more).
//!
//! With hysteresis: the agent turns slow when that lag goes **above** `high_water`, and accepts
//! again only once it is **at or below** `low_water` (`low_water < high_water`), so an agent
//! hovering around one mark does not flap. While the agent accepts, a send can take the lag to
//! at most `high_water + 1`: the controller then refuses; if the scheduler sends only while
//! [`BackPressure::accepting`], the inbox never holds more than `high_water + 1` frames.
//!
//! A refusal is an answer, not a silent queue: [`BackPressure::check`] returns a
//! [`SlowConsumer`] (convertible to an [`Error`] of kind [`ErrorKind::Full`]) saying how far
//! behind the agent is and what it must drain to.
//!
//! `now` (µs of any monotonic clock) only feeds the statistics (how long the agent was slow);
//! a `now` smaller than one seen before is taken as the latest one seen.

use std::fmt;

use super::types::Micros;
use crate::error::{Error, ErrorKind, Result};

/// The marks of a [`BackPressure`] controller, in frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackPressureConfig {
    /// The agent turns slow when its lag goes above this (at least 1).
    pub high_water: u64,
    /// A slow agent accepts again when its lag is at or below this (below `high_water`).
    pub low_water: u64,
}

impl Default for BackPressureConfig {
    /// High water 64 frames, low water 16.
    fn default() -> Self {
        BackPressureConfig {
            high_water: 64,
            low_water: 16,
        }
    }
}

impl BackPressureConfig {
    /// Checks the marks: `Error::invalid` says what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.high_water == 0 {
            return Err(Error::invalid(
                "back-pressure high_water must be at least 1",
            ));
        }
        if self.low_water >= self.high_water {
            return Err(Error::invalid(format!(
                "back-pressure low_water {} must be below high_water {}",
                self.low_water, self.high_water
            )));
        }
        Ok(())
    }
}

/// Counters of a [`BackPressure`] controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackPressureStats {
    /// Lag readings observed.
    pub observations: u64,
    /// Frames reported sent.
    pub sent: u64,
    /// Times the agent turned slow.
    pub slow_episodes: u64,
    /// Time spent slow, in µs, up to the latest `now` seen (episodes not yet over included).
    pub slow_time: Micros,
    /// The largest lag the controller judged (reading plus frames sent since).
    pub max_lag: u64,
    /// Refusals answered by [`BackPressure::check`].
    pub refusals: u64,
}

/// The answer to a submitter when an agent is a slow consumer: what to act on (send elsewhere,
/// wait, or slow down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowConsumer {
    /// The agent's lag as the controller judges it, in frames.
    pub lag: u64,
    /// The mark it went above.
    pub high_water: u64,
    /// The mark it must drain to.
    pub low_water: u64,
    /// Since when it has been slow.
    pub since: Micros,
}

impl fmt::Display for SlowConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "slow consumer: inbox lag {} frames went above {} (since {} µs); no new task until \
             it drains to {}",
            self.lag, self.high_water, self.since, self.low_water
        )
    }
}

impl From<SlowConsumer> for Error {
    fn from(s: SlowConsumer) -> Error {
        Error::new(ErrorKind::Full, s.to_string())
    }
}

/// The back-pressure controller of one agent (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct BackPressure {
    cfg: BackPressureConfig,
    /// The last reading plus the frames sent since.
    lag: u64,
    /// `Some(since)` while the agent is slow.
    slow_since: Option<Micros>,
    last_now: Micros,
    stats: BackPressureStats,
}

impl BackPressure {
    /// A controller with `cfg` for an agent with an empty inbox, or `Error::invalid`.
    pub fn new(cfg: BackPressureConfig) -> Result<BackPressure> {
        cfg.validate()?;
        Ok(BackPressure {
            cfg,
            lag: 0,
            slow_since: None,
            last_now: 0,
            stats: BackPressureStats::default(),
        })
    }

    /// The marks.
    pub fn config(&self) -> BackPressureConfig {
        self.cfg
    }

    /// The host read the agent's inbox lag `agent_lag` (frames written, not yet read) at `now`.
    pub fn observe(&mut self, agent_lag: u64, now: Micros) {
        self.tick(now);
        self.stats.observations += 1;
        self.set_lag(agent_lag);
    }

    /// The scheduler wrote `frames` more frames to the agent's inbox at `now`.
    pub fn on_sent(&mut self, frames: u64, now: Micros) {
        self.tick(now);
        self.stats.sent = self.stats.sent.saturating_add(frames);
        self.set_lag(self.lag.saturating_add(frames));
    }

    /// Whether the agent takes new tasks.
    #[inline]
    pub fn accepting(&self) -> bool {
        self.slow_since.is_none()
    }

    /// `Ok` when the agent takes new tasks, else the back-pressure answer for the submitter
    /// (counted in the statistics).
    pub fn check(&mut self) -> std::result::Result<(), SlowConsumer> {
        match self.slow_since {
            None => Ok(()),
            Some(since) => {
                self.stats.refusals += 1;
                Err(SlowConsumer {
                    lag: self.lag,
                    high_water: self.cfg.high_water,
                    low_water: self.cfg.low_water,
                    since,
                })
            }
        }
    }

    /// The lag as the controller judges it: the last reading plus the frames sent since.
    pub fn lag(&self) -> u64 {
        self.lag
    }

    /// Since when the agent has been slow, if it is.
    pub fn slow_since(&self) -> Option<Micros> {
        self.slow_since
    }

    /// The counters.
    pub fn stats(&self) -> BackPressureStats {
        self.stats
    }

    fn tick(&mut self, now: Micros) {
        let now = now.max(self.last_now);
        if self.slow_since.is_some() {
            self.stats.slow_time = self.stats.slow_time.saturating_add(now - self.last_now);
        }
        self.last_now = now;
    }

    fn set_lag(&mut self, lag: u64) {
        self.lag = lag;
        self.stats.max_lag = self.stats.max_lag.max(lag);
        match self.slow_since {
            None if lag > self.cfg.high_water => {
                self.slow_since = Some(self.last_now);
                self.stats.slow_episodes += 1;
            }
            Some(_) if lag <= self.cfg.low_water => self.slow_since = None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn bp(high: u64, low: u64) -> BackPressure {
        BackPressure::new(BackPressureConfig {
            high_water: high,
            low_water: low,
        })
        .unwrap()
    }

    #[test]
    fn nonsense_marks_are_refused() {
        for (high, low) in [(0, 0), (5, 5), (5, 6), (1, 1)] {
            let e = BackPressure::new(BackPressureConfig {
                high_water: high,
                low_water: low,
            })
            .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{high}/{low}");
            assert!(e.message().contains("back-pressure"), "{}", e.message());
        }
        assert!(BackPressureConfig::default().validate().is_ok());
        assert!(bp(1, 0).accepting());
    }

    #[test]
    fn the_marks_are_exact_with_hysteresis() {
        let mut b = bp(10, 3);
        b.observe(10, 1);
        assert!(b.accepting(), "at the high mark: still accepting");
        b.observe(11, 2);
        assert!(!b.accepting(), "above it: slow");
        assert_eq!(b.slow_since(), Some(2));
        for lag in [10, 5, 4, 11, 4] {
            b.observe(lag, 3);
            assert!(!b.accepting(), "lag {lag} above the low mark: still slow");
        }
        b.observe(3, 4);
        assert!(b.accepting(), "at the low mark: accepting again");
        assert_eq!(b.slow_since(), None);
        b.observe(10, 5);
        assert!(
            b.accepting(),
            "between the marks while accepting: accepting"
        );
        let s = b.stats();
        assert_eq!((s.observations, s.slow_episodes, s.max_lag), (9, 1, 11));
        assert_eq!(s.slow_time, 2);
    }

    #[test]
    fn sends_count_until_the_next_reading() {
        let mut b = bp(4, 1);
        b.observe(2, 0);
        b.on_sent(2, 1);
        assert_eq!(b.lag(), 4);
        assert!(b.accepting());
        b.on_sent(1, 2);
        assert_eq!(b.lag(), 5);
        assert!(!b.accepting(), "sends alone take it over the mark");
        // A reading replaces the estimate (the agent read frames meanwhile).
        b.observe(1, 3);
        assert!(b.accepting());
        assert_eq!(b.lag(), 1);
        assert_eq!(b.stats().sent, 3);
        // Huge counts saturate.
        b.on_sent(u64::MAX, 4);
        b.on_sent(u64::MAX, 5);
        assert_eq!(b.lag(), u64::MAX);
        assert!(!b.accepting());
    }

    #[test]
    fn a_refusal_says_what_to_act_on() {
        let mut b = bp(8, 2);
        assert_eq!(b.check(), Ok(()));
        b.observe(9, 100);
        let s = b.check().unwrap_err();
        assert_eq!(
            s,
            SlowConsumer {
                lag: 9,
                high_water: 8,
                low_water: 2,
                since: 100
            }
        );
        let e = Error::from(s);
        assert_eq!(e.kind(), ErrorKind::Full);
        for part in ["lag 9", "above 8", "drains to 2"] {
            assert!(e.message().contains(part), "{}", e.message());
        }
        assert_eq!(b.stats().refusals, 1);
    }

    #[test]
    fn a_clock_stepping_back_is_no_time_elapsed() {
        let mut b = bp(1, 0);
        b.observe(2, 1_000);
        b.observe(2, 10); // back: no time elapsed
        assert_eq!(b.stats().slow_time, 0);
        b.observe(2, 1_500);
        assert_eq!(b.stats().slow_time, 500);
        b.observe(0, 1_400);
        assert!(b.accepting());
        b.observe(5, 0);
        assert_eq!(
            b.slow_since(),
            Some(1_500),
            "slow since the latest time seen"
        );
        b.observe(5, u64::MAX);
        assert_eq!(b.stats().slow_time, 500 + (u64::MAX - 1_500));
        b.observe(5, u64::MAX);
        assert_eq!(b.stats().slow_time, 500 + (u64::MAX - 1_500));
    }

    // ---- A seeded simulation: a slow consumer among three agents. ----

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next() % (hi - lo + 1)
        }
    }

    #[derive(Debug, Default)]
    struct Outcome {
        /// The first tick of agent 0's stall at which it was slow with its inbox above the low
        /// mark.
        slow_in_stall: Option<u64>,
        /// Tasks sent to agent 0 from then to the end of the stall (must be none).
        sent_while_slow: u64,
        /// Tasks sent to agent 0 once it drained after the stall.
        sent_after_drain: u64,
        /// Times the submitter got back-pressure from every agent.
        back_pressure_answers: u64,
    }

    /// Agents read their inboxes at random speeds; agent 0 stops reading during `stall` and
    /// then reads fast. The host reads the lags every few ticks. Arrivals can exceed what the
    /// agents read (bursts): the submitter then gets back-pressure and keeps its tasks.
    fn simulate(seed: u64) -> Outcome {
        let mut rng = Rng(seed);
        let high = rng.range(4, 40);
        let low = rng.range(0, high - 1);
        let cfg = BackPressureConfig {
            high_water: high,
            low_water: low,
        };
        let ticks = 6_000u64;
        let stall = (rng.range(500, 2_000), 0);
        let stall = (stall.0, stall.0 + rng.range(300, 2_000));
        let burst = rng.range(0, 5_000);
        let ctx = format!("seed {seed}, {cfg:?}, stall {stall:?}, burst at {burst}");

        let mut ctl: Vec<BackPressure> = (0..3).map(|_| BackPressure::new(cfg).unwrap()).collect();
        let mut inbox = [0u64; 3]; // frames written, not yet read: the truth
        let mut read = [0u64; 3];
        let mut queue: VecDeque<u64> = VecDeque::new(); // the submitter's own tasks
        let (mut submitted, mut sent) = (0u64, 0u64);
        // What the test knows independently: agent 0 went above high and has not been seen
        // at or below low since.
        let mut must_drain = [false; 3];
        let mut estimate = [0u64; 3];
        let mut next_rr = 0;
        let mut out = Outcome::default();
        let mut t = 0u64;
        while t < ticks || !queue.is_empty() || inbox.iter().any(|&l| l > 0) {
            let now = t * 100;
            // Arrivals (none after `ticks`): ~1.5 a tick, 6 a tick during a 200-tick burst.
            if t < ticks {
                let n = if (burst..burst + 200).contains(&t) {
                    6
                } else {
                    rng.range(0, 3)
                };
                for _ in 0..n {
                    queue.push_back(submitted);
                    submitted += 1;
                }
            }
            // Dispatch: round-robin over the accepting agents; none: back-pressure.
            while !queue.is_empty() {
                let mut refusals = Vec::new();
                let mut chosen = None;
                for i in (0..3).map(|k| (next_rr + k) % 3) {
                    match ctl[i].check() {
                        Ok(()) => {
                            chosen = Some(i);
                            break;
                        }
                        Err(s) => refusals.push(s),
                    }
                }
                let Some(i) = chosen else {
                    assert_eq!(refusals.len(), 3);
                    assert!(refusals.iter().all(|s| s.lag > s.low_water), "{ctx}");
                    out.back_pressure_answers += 1;
                    break; // the submitter keeps `task` and retries next tick
                };
                next_rr = (i + 1) % 3;
                assert!(!must_drain[i], "{ctx}: sent to agent {i} before it drained");
                assert!(
                    inbox[i] <= high,
                    "{ctx}: sent to agent {i} with lag {}",
                    inbox[i]
                );
                queue.pop_front();
                inbox[i] += 1;
                sent += 1;
                ctl[i].on_sent(1, now);
                estimate[i] += 1;
                if estimate[i] > high {
                    must_drain[i] = true;
                }
                assert!(inbox[i] <= high + 1, "{ctx}: agent {i} lag {}", inbox[i]);
                if i == 0 && out.slow_in_stall.is_some() {
                    if t < stall.1 {
                        out.sent_while_slow += 1;
                    } else {
                        out.sent_after_drain += 1;
                    }
                }
            }
            // Agents read.
            for i in 0..3 {
                let speed = if i == 0 && (stall.0..stall.1).contains(&t) {
                    0
                } else if i == 0 && t >= stall.1 {
                    rng.range(1, 6)
                } else {
                    rng.range(0, 2)
                };
                let n = speed.min(inbox[i]);
                inbox[i] -= n;
                read[i] += n;
            }
            // The host reads the lags, each agent every 1-5 ticks.
            for i in 0..3 {
                if rng.range(1, 3) == 1 {
                    ctl[i].observe(inbox[i], now);
                    estimate[i] = inbox[i];
                    if inbox[i] <= low {
                        must_drain[i] = false;
                    }
                    if inbox[i] > high {
                        must_drain[i] = true;
                    }
                }
                assert_eq!(ctl[i].lag(), estimate[i], "{ctx}");
                assert!(
                    ctl[i].lag() >= inbox[i],
                    "{ctx}: the estimate is an upper bound"
                );
                assert_eq!(
                    ctl[i].accepting(),
                    !must_drain[i],
                    "{ctx}: agent {i} at tick {t}"
                );
            }
            // Slow with more than `low` frames in its inbox during the stall: it reads none, so
            // no reading can let it accept before the stall ends. (Slow by an estimate while
            // its inbox is already small, it may rightly accept again at the next reading.)
            if (stall.0..stall.1).contains(&t) && !ctl[0].accepting() && inbox[0] > low {
                out.slow_in_stall.get_or_insert(t);
            }
            t += 1;
            assert!(t < ticks + 100_000, "{ctx}: never drained");
        }
        // Nothing lost: every task was sent exactly once and read.
        assert_eq!(sent, submitted, "{ctx}");
        assert_eq!(read.iter().sum::<u64>(), submitted, "{ctx}");
        // The stall is long enough for agent 0 to fill (it takes a third of ~1.5 tasks a
        // tick): it turned slow, got nothing until the stall ended, and took tasks again once
        // it had drained.
        assert!(out.slow_in_stall.is_some(), "{ctx}: never slow");
        assert_eq!(out.sent_while_slow, 0, "{ctx}");
        assert!(out.sent_after_drain > 0, "{ctx}: never resumed: {out:?}");
        out
    }

    /// 200 seeded runs of random marks, stalls and bursts (`EMF_SIM_SEEDS` changes the count;
    /// `scripts/sched-sim.sh` runs many more).
    #[test]
    fn a_slow_consumer_gets_nothing_until_it_drains() {
        let mut saw_back_pressure = 0;
        let seeds: u64 = std::env::var("EMF_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        for seed in 0..seeds {
            let out = simulate(seed);
            saw_back_pressure += u64::from(out.back_pressure_answers > 0);
        }
        // Bursts beyond what the agents read reach the submitter as back-pressure in most runs.
        assert!(
            saw_back_pressure * 2 > seeds,
            "{saw_back_pressure} of {seeds}"
        );
    }
}

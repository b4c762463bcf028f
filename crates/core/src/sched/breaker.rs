//! A circuit breaker per agent: an agent that keeps failing stops receiving tasks for a while,
//! so they go elsewhere, and is then tried again with a few probe tasks.
//!
//! ```text
//!            failures / calls ≥ ratio               open period over
//!            (and calls ≥ min_calls)                (at the next allow)
//!   Closed ───────────────────────────► Open ─────────────────────────► HalfOpen
//!     ▲                                  ▲                                 │
//!     │          a probe fails (the open period grows ×backoff, bounded)   │
//!     │                                  └─────────────────────────────────┤
//!     └────────────────────────────────────────────────────────────────────┘
//!                       `half_open_probes` probes succeeded
//! ```
//!
//! **The window is by time.** Outcomes are counted in `buckets` buckets of `window / buckets`
//! µs each (a ring indexed by `now / bucket_width`); the ratio is taken over the buckets that
//! are younger than `window`, so it covers between `window - bucket_width` and `window` µs of
//! history. A window by time (rather than by the last N calls) lets an agent that received few
//! tasks forget an old failure, and bounds how long a fault takes to trip the breaker: once an
//! agent fails every call, the successes before the fault have left the window `window` µs
//! later, and the breaker opens at the first failure from then on at which the window holds
//! `min_calls` calls (with one bucket, the window empties at each bucket boundary: more
//! buckets, a smoother window). The ratio is judged after every outcome counted while closed
//! (a success too can complete `min_calls`), in integers (parts per million), so `0.3` with 3
//! failures out of 10 trips exactly.
//!
//! Reopening after a failed probe multiplies the open period by `backoff` (bounded by
//! `max_open_for`); closing resets it to `open_for` and empties the window.
//!
//! The breaker is a pure state machine: the caller passes `now` (µs of any monotonic clock) to
//! every call. A `now` smaller than one seen before is taken as the latest one seen (no time
//! elapsed): a clock that steps back delays the breaker, never breaks it.
//!
//! The caller reports the outcome of every task it was allowed to send (a lease that expires
//! is a failure): in the half-open state only `half_open_probes` tasks are admitted, and a
//! probe whose outcome is never reported keeps its slot. Outcomes that arrive while the breaker
//! is open (tasks sent before it opened) are counted in the statistics only; outcomes that
//! arrive while it is half-open count as probe outcomes, whichever task they belong to (a late
//! success is evidence that the agent works again, a late failure that it does not).

use super::types::Micros;
use crate::error::{Error, Result};

/// The settings of a [`Breaker`]. [`BreakerConfig::default`] gives a sensible start.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// The length of the sliding window, in µs (at least `buckets`).
    pub window: Micros,
    /// How many buckets the window is made of (1 to [`MAX_BUCKETS`]): the precision of the
    /// window is `window / buckets`.
    pub buckets: u32,
    /// How many calls the window must hold before the breaker can open (at least 1).
    pub min_calls: u32,
    /// The failure ratio at or above which the breaker opens, in `(0, 1]` (precision 10⁻⁶).
    pub failure_ratio: f64,
    /// A success slower than this (µs) counts as a failure; `None`: latency is not judged.
    pub slow_call: Option<Micros>,
    /// How long the breaker stays open the first time, in µs (at least 1).
    pub open_for: Micros,
    /// The factor by which the open period grows each time a probe fails (1: constant; at
    /// most 1000).
    pub backoff: u32,
    /// The longest open period, in µs (at least `open_for`).
    pub max_open_for: Micros,
    /// How many probe tasks the half-open state admits; that many successes close the breaker
    /// (1 to 1,000,000).
    pub half_open_probes: u32,
}

/// The most buckets a window may have.
pub const MAX_BUCKETS: u32 = 4096;

impl Default for BreakerConfig {
    /// A 10 s window of 10 buckets, at least 10 calls, 50 % failures; open for 5 s, doubling
    /// up to 60 s; 3 probes.
    fn default() -> Self {
        BreakerConfig {
            window: 10_000_000,
            buckets: 10,
            min_calls: 10,
            failure_ratio: 0.5,
            slow_call: None,
            open_for: 5_000_000,
            backoff: 2,
            max_open_for: 60_000_000,
            half_open_probes: 3,
        }
    }
}

impl BreakerConfig {
    /// Checks the settings: `Error::invalid` says which one is wrong.
    pub fn validate(&self) -> Result<()> {
        self.ratio_ppm().map(|_| ())
    }

    /// The failure ratio in parts per million, after checking every setting.
    fn ratio_ppm(&self) -> Result<u64> {
        if !(1..=MAX_BUCKETS).contains(&self.buckets) {
            return Err(Error::invalid(format!(
                "breaker buckets {} must be 1-{MAX_BUCKETS}",
                self.buckets
            )));
        }
        if self.window < u64::from(self.buckets) {
            return Err(Error::invalid(format!(
                "breaker window {} µs must be at least one µs per bucket ({} buckets)",
                self.window, self.buckets
            )));
        }
        if self.min_calls == 0 {
            return Err(Error::invalid("breaker min_calls must be at least 1"));
        }
        let r = self.failure_ratio;
        if !(r.is_finite() && r > 0.0 && r <= 1.0) {
            return Err(Error::invalid(format!(
                "breaker failure_ratio {r} must be in (0, 1]"
            )));
        }
        let ppm = (r * 1e6).round() as u64;
        if ppm == 0 {
            return Err(Error::invalid(format!(
                "breaker failure_ratio {r} is below the precision of 1e-6"
            )));
        }
        if self.open_for == 0 {
            return Err(Error::invalid("breaker open_for must be at least 1 µs"));
        }
        if !(1..=1000).contains(&self.backoff) {
            return Err(Error::invalid(format!(
                "breaker backoff {} must be 1-1000",
                self.backoff
            )));
        }
        if self.max_open_for < self.open_for {
            return Err(Error::invalid(format!(
                "breaker max_open_for {} µs must be at least open_for {} µs",
                self.max_open_for, self.open_for
            )));
        }
        if !(1..=1_000_000).contains(&self.half_open_probes) {
            return Err(Error::invalid(format!(
                "breaker half_open_probes {} must be 1-1000000",
                self.half_open_probes
            )));
        }
        Ok(ppm.min(1_000_000))
    }
}

/// The state of a [`Breaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Tasks flow; outcomes are counted in the window.
    Closed,
    /// No task until `until` (the state turns half-open at the first `allow` at or after it).
    Open {
        /// When the open period ends.
        until: Micros,
    },
    /// A few probe tasks are admitted to see whether the agent recovered.
    HalfOpen {
        /// Probes admitted so far.
        admitted: u32,
        /// Probes that succeeded so far.
        succeeded: u32,
    },
}

/// The answer of [`Breaker::allow`] and [`Breaker::peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: send the task.
    Allowed,
    /// The breaker is half-open and this task is a probe: send it and report its outcome.
    Probe,
    /// The breaker is open until `retry_at`: send the task elsewhere.
    Open {
        /// When the breaker will admit probes.
        retry_at: Micros,
    },
    /// The breaker is half-open and every probe slot is taken: send the task elsewhere.
    ProbesInFlight,
}

impl Admission {
    /// Whether the task may be sent ([`Admission::Allowed`] or [`Admission::Probe`]).
    #[inline]
    pub fn is_allowed(self) -> bool {
        matches!(self, Admission::Allowed | Admission::Probe)
    }
}

/// Counters of a [`Breaker`] since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerStats {
    /// Tasks admitted in the closed state.
    pub allowed: u64,
    /// Probe tasks admitted in the half-open state.
    pub probes: u64,
    /// Tasks refused (open, or every probe slot taken).
    pub rejected: u64,
    /// Successes reported.
    pub successes: u64,
    /// Failures reported (slow successes included).
    pub failures: u64,
    /// Times the breaker opened (from closed or from half-open).
    pub opened: u64,
    /// Times it closed again after probes.
    pub closed: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Whether the bucket holds outcomes (of `epoch`).
    used: bool,
    /// `now / bucket_width` of the outcomes counted here.
    epoch: u64,
    successes: u32,
    failures: u32,
}

/// A circuit breaker for one agent (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    ratio_ppm: u64,
    bucket_width: Micros,
    buckets: Vec<Bucket>,
    state: BreakerState,
    /// The open period the next opening uses (grows with failed probes, reset on close).
    next_open_for: Micros,
    /// The latest `now` seen.
    last_now: Micros,
    stats: BreakerStats,
}

impl Breaker {
    /// A closed breaker with `cfg`, or `Error::invalid` when a setting is nonsense.
    pub fn new(cfg: BreakerConfig) -> Result<Breaker> {
        let ratio_ppm = cfg.ratio_ppm()?;
        let bucket_width = cfg.window / u64::from(cfg.buckets);
        Ok(Breaker {
            ratio_ppm,
            bucket_width,
            buckets: vec![Bucket::default(); cfg.buckets as usize],
            state: BreakerState::Closed,
            next_open_for: cfg.open_for,
            last_now: 0,
            stats: BreakerStats::default(),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// The state as last stepped (an open breaker whose period is over still says `Open`
    /// until the next [`Breaker::allow`]).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The counters.
    pub fn stats(&self) -> BreakerStats {
        self.stats
    }

    /// The calls and failures the window holds at `now` (without stepping the breaker).
    pub fn window_counts(&self, now: Micros) -> (u64, u64) {
        let now = now.max(self.last_now);
        let cur = now / self.bucket_width;
        let n = u64::from(self.cfg.buckets);
        let (mut calls, mut failures) = (0u64, 0u64);
        for b in &self.buckets {
            if b.used && b.epoch <= cur && cur - b.epoch < n {
                calls += u64::from(b.successes) + u64::from(b.failures);
                failures += u64::from(b.failures);
            }
        }
        (calls, failures)
    }

    /// What [`Breaker::allow`] would answer at `now`, without taking a probe slot or stepping
    /// the state: for filtering candidates before choosing one.
    pub fn peek(&self, now: Micros) -> Admission {
        let now = now.max(self.last_now);
        match self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open { until } if now < until => Admission::Open { retry_at: until },
            BreakerState::Open { .. } => Admission::Probe,
            BreakerState::HalfOpen { admitted, .. } => {
                if admitted < self.cfg.half_open_probes {
                    Admission::Probe
                } else {
                    Admission::ProbesInFlight
                }
            }
        }
    }

    /// Whether a task may be sent to the agent at `now`: an open breaker whose period is over
    /// turns half-open, and a half-open one gives out its probe slots. The caller must report
    /// the outcome of every admitted task with [`Breaker::on_success`] or
    /// [`Breaker::on_failure`].
    pub fn allow(&mut self, now: Micros) -> Admission {
        let now = self.tick(now);
        if let BreakerState::Open { until } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen {
                    admitted: 0,
                    succeeded: 0,
                };
            }
        }
        let answer = match &mut self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open { until } => Admission::Open { retry_at: *until },
            BreakerState::HalfOpen { admitted, .. } => {
                if *admitted < self.cfg.half_open_probes {
                    *admitted += 1;
                    Admission::Probe
                } else {
                    Admission::ProbesInFlight
                }
            }
        };
        match answer {
            Admission::Allowed => self.stats.allowed += 1,
            Admission::Probe => self.stats.probes += 1,
            _ => self.stats.rejected += 1,
        }
        answer
    }

    /// A task sent to the agent succeeded after `latency` µs (a failure if `latency` exceeds
    /// the `slow_call` setting).
    pub fn on_success(&mut self, now: Micros, latency: Micros) {
        if self.cfg.slow_call.is_some_and(|slow| latency > slow) {
            return self.on_failure(now);
        }
        let now = self.tick(now);
        self.stats.successes += 1;
        match &mut self.state {
            BreakerState::Closed => self.record(now, false),
            BreakerState::Open { .. } => {}
            BreakerState::HalfOpen { succeeded, .. } => {
                *succeeded += 1;
                if *succeeded >= self.cfg.half_open_probes {
                    self.close();
                }
            }
        }
    }

    /// A task sent to the agent failed (an error, a refusal, an expired lease).
    pub fn on_failure(&mut self, now: Micros) {
        let now = self.tick(now);
        self.stats.failures += 1;
        match self.state {
            BreakerState::Closed => self.record(now, true),
            BreakerState::Open { .. } => {}
            BreakerState::HalfOpen { .. } => {
                // The agent has not recovered: this opening lasts longer, up to the bound.
                self.next_open_for = self
                    .next_open_for
                    .saturating_mul(u64::from(self.cfg.backoff))
                    .min(self.cfg.max_open_for);
                self.open(now);
            }
        }
    }

    /// Closes the breaker by hand (an operator's reset): the window is emptied and the open
    /// period starts again from `open_for`.
    pub fn reset(&mut self) {
        self.close();
    }

    fn tick(&mut self, now: Micros) -> Micros {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    fn open(&mut self, now: Micros) {
        self.state = BreakerState::Open {
            until: now.saturating_add(self.next_open_for),
        };
        self.stats.opened += 1;
    }

    fn close(&mut self) {
        if self.state != BreakerState::Closed {
            self.stats.closed += 1;
        }
        self.state = BreakerState::Closed;
        self.next_open_for = self.cfg.open_for;
        for b in &mut self.buckets {
            b.used = false;
        }
    }

    /// Counts an outcome in the window of a closed breaker, and opens it when the window
    /// holds `min_calls` calls and the failure ratio is reached (whatever the last outcome:
    /// the ratio is judged on every call).
    fn record(&mut self, now: Micros, failure: bool) {
        let epoch = now / self.bucket_width;
        let slot = (epoch % u64::from(self.cfg.buckets)) as usize;
        let b = &mut self.buckets[slot];
        if !b.used || b.epoch != epoch {
            *b = Bucket {
                used: true,
                epoch,
                successes: 0,
                failures: 0,
            };
        }
        if failure {
            b.failures = b.failures.saturating_add(1);
        } else {
            b.successes = b.successes.saturating_add(1);
        }
        let (calls, failures) = self.window_counts(now);
        // In 128 bits: a window of 4096 full buckets holds up to 2⁴⁴ calls.
        if calls >= u64::from(self.cfg.min_calls)
            && u128::from(failures) * 1_000_000 >= u128::from(self.ratio_ppm) * u128::from(calls)
        {
            self.open(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, VecDeque};

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: 1_000,
            buckets: 10,
            min_calls: 10,
            failure_ratio: 0.5,
            slow_call: None,
            open_for: 100,
            backoff: 2,
            max_open_for: 500,
            half_open_probes: 2,
        }
    }

    fn breaker(c: BreakerConfig) -> Breaker {
        Breaker::new(c).unwrap()
    }

    #[test]
    fn nonsense_settings_are_refused() {
        let bad: Vec<(&str, BreakerConfig)> = vec![
            (
                "ratio 0",
                BreakerConfig {
                    failure_ratio: 0.0,
                    ..cfg()
                },
            ),
            (
                "ratio < 0",
                BreakerConfig {
                    failure_ratio: -0.1,
                    ..cfg()
                },
            ),
            (
                "ratio > 1",
                BreakerConfig {
                    failure_ratio: 1.1,
                    ..cfg()
                },
            ),
            (
                "ratio NaN",
                BreakerConfig {
                    failure_ratio: f64::NAN,
                    ..cfg()
                },
            ),
            (
                "ratio inf",
                BreakerConfig {
                    failure_ratio: f64::INFINITY,
                    ..cfg()
                },
            ),
            (
                "ratio tiny",
                BreakerConfig {
                    failure_ratio: 1e-9,
                    ..cfg()
                },
            ),
            ("window 0", BreakerConfig { window: 0, ..cfg() }),
            ("window < buckets", BreakerConfig { window: 9, ..cfg() }),
            (
                "buckets 0",
                BreakerConfig {
                    buckets: 0,
                    ..cfg()
                },
            ),
            (
                "buckets huge",
                BreakerConfig {
                    buckets: MAX_BUCKETS + 1,
                    ..cfg()
                },
            ),
            (
                "min_calls 0",
                BreakerConfig {
                    min_calls: 0,
                    ..cfg()
                },
            ),
            (
                "open_for 0",
                BreakerConfig {
                    open_for: 0,
                    ..cfg()
                },
            ),
            (
                "backoff 0",
                BreakerConfig {
                    backoff: 0,
                    ..cfg()
                },
            ),
            (
                "backoff huge",
                BreakerConfig {
                    backoff: 1001,
                    ..cfg()
                },
            ),
            (
                "max < open",
                BreakerConfig {
                    max_open_for: 99,
                    ..cfg()
                },
            ),
            (
                "probes 0",
                BreakerConfig {
                    half_open_probes: 0,
                    ..cfg()
                },
            ),
        ];
        for (what, c) in bad {
            let e = Breaker::new(c.clone()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}");
            assert!(e.message().contains("breaker"), "{what}: {}", e.message());
            assert!(c.validate().is_err(), "{what}");
        }
        for good in [
            cfg(),
            BreakerConfig::default(),
            BreakerConfig {
                failure_ratio: 1.0,
                ..cfg()
            },
            BreakerConfig {
                window: 10,
                buckets: 10,
                ..cfg()
            },
            BreakerConfig {
                backoff: 1,
                max_open_for: 100,
                ..cfg()
            },
        ] {
            assert!(good.validate().is_ok(), "{good:?}");
            assert_eq!(breaker(good).state(), BreakerState::Closed);
        }
    }

    #[test]
    fn does_not_trip_before_min_calls() {
        let mut b = breaker(cfg());
        for t in 0..9 {
            assert_eq!(b.allow(t), Admission::Allowed);
            b.on_failure(t);
            assert_eq!(b.state(), BreakerState::Closed, "after {} failures", t + 1);
        }
        b.on_failure(9);
        assert_eq!(b.state(), BreakerState::Open { until: 109 });
        assert_eq!(b.window_counts(9), (10, 10));
    }

    #[test]
    fn the_ratio_is_exact_at_its_boundary() {
        // 0.3 · 10 is not 3 in binary floating point; the breaker compares in ppm.
        let c = BreakerConfig {
            failure_ratio: 0.3,
            ..cfg()
        };
        let mut b = breaker(c.clone());
        for t in 0..7 {
            b.on_success(t, 1);
        }
        b.on_failure(7);
        b.on_failure(8);
        assert_eq!(b.state(), BreakerState::Closed, "2/9");
        b.on_failure(9);
        assert_eq!(b.state(), BreakerState::Open { until: 109 }, "3/10 = 0.3");

        // 3 of 11 is below 0.3.
        let mut b = breaker(c);
        for t in 0..8 {
            b.on_success(t, 1);
        }
        for t in 8..11 {
            b.on_failure(t);
        }
        assert_eq!(b.window_counts(10), (11, 3));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let mut b = breaker(cfg());
        for t in 0..9 {
            b.on_failure(t);
        }
        // Buckets of 100 µs: the failures at 0..9 are in epoch 0, counted while now < 1000.
        assert_eq!(b.window_counts(999), (9, 9));
        assert_eq!(b.window_counts(1_000), (0, 0));
        b.on_failure(1_000);
        assert_eq!(b.state(), BreakerState::Closed, "only 1 call in the window");
        // Within the window they still count: a fresh breaker trips on the 10th.
        let mut b = breaker(cfg());
        for t in 0..9 {
            b.on_failure(t * 100);
        }
        b.on_failure(999);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn successes_keep_it_closed_below_the_ratio() {
        let mut b = breaker(cfg());
        for t in 0..100 {
            if t % 3 == 0 {
                b.on_failure(t);
            } else {
                b.on_success(t, 5);
            }
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().failures, 34);
        assert_eq!(b.stats().successes, 66);
    }

    fn tripped(now: Micros) -> Breaker {
        let mut b = breaker(cfg());
        for _ in 0..10 {
            b.on_failure(now);
        }
        assert_eq!(b.state(), BreakerState::Open { until: now + 100 });
        b
    }

    #[test]
    fn open_refuses_until_the_period_ends_then_probes() {
        let mut b = tripped(50);
        assert_eq!(b.allow(50), Admission::Open { retry_at: 150 });
        assert_eq!(b.peek(149), Admission::Open { retry_at: 150 });
        assert_eq!(b.allow(149), Admission::Open { retry_at: 150 });
        assert_eq!(b.peek(150), Admission::Probe);
        assert_eq!(b.allow(150), Admission::Probe);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                admitted: 1,
                succeeded: 0
            }
        );
        assert_eq!(b.allow(151), Admission::Probe);
        assert_eq!(b.peek(152), Admission::ProbesInFlight);
        assert_eq!(b.allow(152), Admission::ProbesInFlight);
        assert!(!Admission::ProbesInFlight.is_allowed());
        assert!(!Admission::Open { retry_at: 0 }.is_allowed());
        let s = b.stats();
        assert_eq!((s.probes, s.rejected, s.opened), (2, 3, 1));
    }

    #[test]
    fn peek_takes_no_probe_slot() {
        let mut b = tripped(0);
        for _ in 0..10 {
            assert_eq!(b.peek(100), Admission::Probe);
        }
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert_eq!(b.allow(100), Admission::Probe);
        assert_eq!(b.allow(100), Admission::Probe);
        assert_eq!(b.allow(100), Admission::ProbesInFlight);
    }

    #[test]
    fn probes_that_succeed_close_it_with_an_empty_window() {
        let mut b = tripped(0);
        assert_eq!(b.allow(100), Admission::Probe);
        assert_eq!(b.allow(100), Admission::Probe);
        b.on_success(110, 3);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                admitted: 2,
                succeeded: 1
            }
        );
        b.on_success(120, 3);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            b.window_counts(120),
            (0, 0),
            "the failures before are forgotten"
        );
        assert_eq!(b.allow(121), Admission::Allowed);
        assert_eq!(b.stats().closed, 1);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_bound() {
        let mut b = tripped(0);
        let mut now = 100;
        // open_for 100, backoff 2, bound 500: 100 (the first opening), then 200, 400, 500, 500.
        for expected in [200, 400, 500, 500] {
            assert_eq!(b.allow(now), Admission::Probe);
            b.on_failure(now + 1);
            assert_eq!(
                b.state(),
                BreakerState::Open {
                    until: now + 1 + expected
                }
            );
            now += 1 + expected;
        }
        // Recovery resets the period: the next trip opens for open_for again.
        b.allow(now);
        b.allow(now);
        b.on_success(now, 1);
        b.on_success(now, 1);
        assert_eq!(b.state(), BreakerState::Closed);
        for _ in 0..10 {
            b.on_failure(now);
        }
        assert_eq!(b.state(), BreakerState::Open { until: now + 100 });
    }

    #[test]
    fn a_slow_success_is_a_failure() {
        let mut b = breaker(BreakerConfig {
            slow_call: Some(50),
            ..cfg()
        });
        for t in 0..9 {
            b.on_success(t, 51);
        }
        b.on_success(9, 50);
        assert_eq!(b.window_counts(9), (10, 9));
        assert_eq!(b.state(), BreakerState::Open { until: 109 });
        // A slow probe re-opens.
        assert_eq!(b.allow(109), Admission::Probe);
        b.on_success(110, 1_000);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn outcomes_while_open_change_nothing_but_the_counters() {
        let mut b = tripped(0);
        b.on_failure(10);
        b.on_success(20, 1);
        assert_eq!(b.state(), BreakerState::Open { until: 100 });
        assert_eq!(b.stats().opened, 1);
        assert_eq!((b.stats().failures, b.stats().successes), (11, 1));
    }

    #[test]
    fn a_clock_stepping_back_is_no_time_elapsed() {
        let mut b = tripped(1_000);
        // The period is not cut short by a clock that jumps back.
        assert_eq!(b.allow(0), Admission::Open { retry_at: 1_100 });
        assert_eq!(b.peek(0), Admission::Open { retry_at: 1_100 });
        assert_eq!(b.allow(1_100), Admission::Probe);
        // An outcome stamped in the past is counted now.
        b.on_success(5, 1);
        b.on_failure(5);
        assert_eq!(b.state(), BreakerState::Open { until: 1_300 });
        // Window counting at a past `now` uses the latest time seen.
        let mut b = breaker(cfg());
        b.on_failure(5_000);
        assert_eq!(b.window_counts(0), (1, 1));
    }

    #[test]
    fn times_near_the_end_of_the_clock_saturate() {
        let mut b = breaker(BreakerConfig {
            window: u64::MAX,
            buckets: MAX_BUCKETS,
            ..cfg()
        });
        let end = u64::MAX - 10;
        for _ in 0..10 {
            b.on_failure(end);
        }
        assert_eq!(b.state(), BreakerState::Open { until: u64::MAX });
        assert_eq!(b.allow(u64::MAX), Admission::Probe);
        b.on_failure(u64::MAX);
        assert_eq!(b.state(), BreakerState::Open { until: u64::MAX });
    }

    #[test]
    fn reset_closes_by_hand() {
        let mut b = tripped(0);
        b.reset();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.allow(1), Admission::Allowed);
        assert_eq!(b.stats().closed, 1);
    }

    // ---- A seeded simulation: three agents behind a tiny dispatcher, one of them failing. ----

    /// splitmix64: a small seeded generator for the simulations.
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

    enum Event {
        Arrival,
        Done {
            agent: usize,
            task: u64,
            ok: bool,
            latency: Micros,
        },
    }

    const GAP_MAX: Micros = 1_800;
    const LATENCY_MAX: Micros = 3_000;

    /// What happened to agent 0 (the one that fails 100 % during `fault`).
    #[derive(Debug, Default)]
    struct Trace {
        /// (time, admission) of every task sent to agent 0.
        sends: Vec<(Micros, Admission)>,
        /// (opened at, until) of agent 0's openings.
        openings: Vec<(Micros, Micros)>,
        /// When agent 0 closed after the fault began.
        closed_at: Option<Micros>,
        /// Tasks sent to each agent after agent 0 closed again.
        after_close: [u64; 3],
        /// Tasks submitted and tasks completed successfully (each task once).
        submitted: u64,
        completed: u64,
        other_agents_opened: u64,
    }

    fn simulate(seed: u64, c: &BreakerConfig, fault: (Micros, Micros), end: Micros) -> Trace {
        let mut rng = Rng(seed);
        let mut agents: Vec<Breaker> = (0..3).map(|_| breaker(c.clone())).collect();
        type Heap = BinaryHeap<Reverse<(Micros, u64, EventBox)>>;
        let mut events: Heap = BinaryHeap::new();
        let mut seq = 0u64;
        let mut push = |events: &mut Heap, t: Micros, e: Event| {
            seq += 1;
            events.push(Reverse((t, seq, EventBox(e))));
        };
        push(&mut events, 0, Event::Arrival);
        let mut queue: VecDeque<u64> = VecDeque::new();
        let mut done = vec![false; 0];
        let mut next_rr = 0usize;
        let mut tr = Trace::default();
        while let Some(Reverse((now, _, EventBox(ev)))) = events.pop() {
            match ev {
                Event::Arrival => {
                    queue.push_back(tr.submitted);
                    done.push(false);
                    tr.submitted += 1;
                    if now < end {
                        let gap = rng.range(200, GAP_MAX);
                        push(&mut events, now + gap, Event::Arrival);
                    }
                }
                Event::Done {
                    agent,
                    task,
                    ok,
                    latency,
                } => {
                    let before = agents[agent].state();
                    if ok {
                        agents[agent].on_success(now, latency);
                        assert!(!done[task as usize], "task {task} completed twice");
                        done[task as usize] = true;
                        tr.completed += 1;
                    } else {
                        agents[agent].on_failure(now);
                        queue.push_back(task); // retried elsewhere: never lost
                    }
                    let after = agents[agent].state();
                    if agent == 0 && now >= fault.0 {
                        if let BreakerState::Open { until } = after {
                            if before != after {
                                tr.openings.push((now, until));
                            }
                        }
                        if after == BreakerState::Closed
                            && before != BreakerState::Closed
                            && tr.closed_at.is_none()
                        {
                            tr.closed_at = Some(now);
                        }
                    }
                    if agent != 0 && matches!(after, BreakerState::Open { .. }) {
                        tr.other_agents_opened += 1;
                    }
                }
            }
            // Dispatch: round-robin over the agents whose breaker admits a task.
            while let Some(&task) = queue.front() {
                let Some(agent) = (0..3)
                    .map(|i| (next_rr + i) % 3)
                    .find(|&i| agents[i].peek(now).is_allowed())
                else {
                    break; // kept queued, dispatched at a later event
                };
                next_rr = (agent + 1) % 3;
                let peeked = agents[agent].peek(now);
                let admission = agents[agent].allow(now);
                assert_eq!(admission, peeked, "peek and allow disagree");
                queue.pop_front();
                let failing = agent == 0 && (fault.0..fault.1).contains(&now);
                let background = agent != 0 && rng.next() % 100 == 0;
                let ok = !failing && !background;
                if agent == 0 {
                    tr.sends.push((now, admission));
                }
                if tr.closed_at.is_some() {
                    tr.after_close[agent] += 1;
                }
                let latency = rng.range(100, LATENCY_MAX);
                push(
                    &mut events,
                    now + latency,
                    Event::Done {
                        agent,
                        task,
                        ok,
                        latency,
                    },
                );
            }
        }
        assert!(queue.is_empty());
        assert!(done.iter().all(|&d| d), "a task was lost");
        tr
    }

    /// `Event` in the heap: ordered by (time, sequence) only.
    struct EventBox(Event);
    impl PartialEq for EventBox {
        fn eq(&self, _: &Self) -> bool {
            true
        }
    }
    impl Eq for EventBox {}
    impl PartialOrd for EventBox {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for EventBox {
        fn cmp(&self, _: &Self) -> std::cmp::Ordering {
            std::cmp::Ordering::Equal
        }
    }

    fn random_config(rng: &mut Rng) -> BreakerConfig {
        let open_for = rng.range(20_000, 200_000);
        BreakerConfig {
            window: rng.range(200_000, 1_000_000),
            buckets: rng.range(1, 20) as u32,
            min_calls: rng.range(10, 30) as u32,
            failure_ratio: rng.range(40, 100) as f64 / 100.0,
            slow_call: None,
            open_for,
            backoff: rng.range(1, 4) as u32,
            max_open_for: rng.range(open_for, 1_000_000),
            half_open_probes: rng.range(1, 5) as u32,
        }
    }

    /// Checks one simulated run against the breaker's promises; returns the trace.
    fn check_run(seed: u64) -> Trace {
        let mut rng = Rng(seed ^ 0xB4EA_4E45);
        let c = random_config(&mut rng);
        // The breaker promises to open within `window` (see `bound` below) of a fault that
        // lasts: faults last that long and up to 2 s more.
        let width = c.window / u64::from(c.buckets);
        let within = c.window + width + u64::from(c.min_calls + 1) * 3 * GAP_MAX + LATENCY_MAX;
        let f0 = rng.range(1_000_000, 3_000_000);
        let f1 = f0 + within + rng.range(0, 2_000_000);
        let end = f1 + c.max_open_for + 2_000_000;
        let tr = simulate(seed, &c, (f0, f1), end);
        let ctx = format!("seed {seed}, {c:?}, fault {f0}..{f1}");

        assert_eq!(tr.submitted, tr.completed, "{ctx}");
        assert_eq!(tr.other_agents_opened, 0, "{ctx}");
        // Before the fault, agent 0 never opened and took its share.
        let before = tr.sends.iter().filter(|(t, _)| *t < f0).count() as u64;
        assert!(
            before * 4 > f0 / GAP_MAX,
            "{ctx}: {before} tasks before the fault"
        );

        // It opens within the window (plus the time to gather min_calls failures when the
        // window has one bucket, and one dispatch round + latency).
        let (opened, _) = *tr
            .openings
            .first()
            .unwrap_or_else(|| panic!("{ctx}: never opened"));
        let bound = f0 + within;
        assert!(opened <= bound, "{ctx}: opened at {opened} > {bound}");

        // While open, nothing is sent to it; half-open admits at most the probes. Each
        // opening lasts no longer than the bound and, during the fault, no shorter than the
        // one before.
        for (i, &(at, until)) in tr.openings.iter().enumerate() {
            assert!(until - at <= c.max_open_for, "{ctx}: opening {i}");
            assert!(until - at >= c.open_for, "{ctx}: opening {i}");
            if i > 0 && at < f1 {
                let prev = tr.openings[i - 1];
                assert!(until - at >= prev.1 - prev.0, "{ctx}: opening {i} shrank");
            }
            let next = tr.openings.get(i + 1).map_or(u64::MAX, |o| o.0);
            // (A send at the very time of the opening may have come before it in that instant.)
            let sent_open = tr
                .sends
                .iter()
                .filter(|(t, _)| (at + 1..until).contains(t))
                .count();
            assert_eq!(sent_open, 0, "{ctx}: {sent_open} tasks sent while open");
            let probes: Vec<_> = tr
                .sends
                .iter()
                .filter(|(t, _)| (until..next).contains(t))
                .collect();
            let closed_in = tr.closed_at.is_some_and(|cl| (until..next).contains(&cl));
            if !closed_in {
                assert!(
                    probes.len() <= c.half_open_probes as usize,
                    "{ctx}: {probes:?}"
                );
            }
            assert!(probes
                .iter()
                .take(c.half_open_probes as usize)
                .all(|(_, a)| *a == Admission::Probe));
        }
        // Tasks sent to agent 0 between its first opening and the end of the fault are probes
        // only.
        let during = tr
            .sends
            .iter()
            .filter(|(t, _)| (opened + 1..f1).contains(t));
        assert!(during.clone().all(|(_, a)| *a == Admission::Probe), "{ctx}");
        let probes_during = during.count() as u64;
        assert!(
            probes_during <= tr.openings.len() as u64 * u64::from(c.half_open_probes),
            "{ctx}"
        );

        // After the fault, it closes within the longest open period plus the probes' time.
        let closed = tr
            .closed_at
            .unwrap_or_else(|| panic!("{ctx}: never closed"));
        assert!(closed >= f1, "{ctx}: closed during the fault at {closed}");
        let slack = 2 * LATENCY_MAX + u64::from(c.half_open_probes + 1) * 3 * GAP_MAX;
        assert!(
            closed <= f1 + c.max_open_for + slack,
            "{ctx}: closed at {closed}"
        );
        // And takes its share again.
        let total: u64 = tr.after_close.iter().sum();
        assert!(
            tr.after_close[0] * 4 >= total,
            "{ctx}: {:?}",
            tr.after_close
        );
        tr
    }

    #[test]
    fn a_failing_agent_is_cut_off_probed_and_readmitted() {
        let tr = check_run(1);
        assert!(!tr.openings.is_empty());
    }

    /// 200 seeded runs of random settings and fault times (`EMF_SIM_SEEDS` changes the count;
    /// `scripts/sched-sim.sh` runs many more).
    #[test]
    fn property_many_seeds() {
        let seeds: u64 = std::env::var("EMF_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let mut reopened = 0;
        for seed in 0..seeds {
            let tr = check_run(seed);
            reopened += usize::from(tr.openings.len() > 1);
        }
        // The runs exercise failed probes (re-opening), not only the first opening.
        assert!(
            reopened as u64 * 2 > seeds,
            "only {reopened} of {seeds} runs re-opened"
        );
    }
}

//! An adaptive rate limiter: a token bucket whose rate follows the latency it causes, by
//! additive increase and multiplicative decrease (AIMD) on the p95 of recent latencies.
//!
//! **The bucket** holds at most `burst` tokens and starts full; it refills at the current
//! rate; [`RateLimiter::try_acquire`] takes one token or says how long to wait for one.
//!
//! **The adaptation.** [`RateLimiter::observe_latency`] collects the latencies of completed
//! tasks in a window of the last `window` samples. At most once per `interval` µs, and only
//! when the window holds at least `min_samples` samples, the limiter takes their p95 (nearest
//! rank: the `⌈0.95·n⌉`-th smallest): above `target_p95` the rate is multiplied by `decrease`,
//! otherwise `increase` is added; either way it stays within `[min_rate, max_rate]`, and the
//! window is emptied so that each decision rests on latencies observed since the previous one.
//! With no samples (no traffic) the rate holds.
//!
//! **Precision: integers, no drift.** Rates are held in thousandths of a token per second
//! ([`Rate`]) and tokens in billionths of a token. A refill over `e` µs at `r` milli-tokens/s
//! adds exactly `e · r` billionths (computed in 128 bits, then capped at the burst), so no
//! rounding happens at all: over any sequence of calls the tokens granted never exceed
//! `burst + ∫ rate dt`, and equal its integer part when the bucket never overflows. The only
//! rounding is in a decrease (the new rate is rounded down to a thousandth of a token per
//! second) and in `decrease` itself (held in millionths).
//!
//! The limiter is a pure state machine: the caller passes `now` (µs of any monotonic clock) to
//! every call. A `now` smaller than one seen before is taken as the latest one seen (no time
//! elapsed, no token created or lost); a huge jump forward only fills the bucket.

use std::fmt;

use super::types::Micros;
use crate::error::{Error, ErrorKind, Result};

/// A rate in thousandths of a token per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rate(u64);

impl Rate {
    /// `tokens` tokens per second (saturating).
    pub const fn per_sec(tokens: u64) -> Rate {
        Rate(tokens.saturating_mul(1000))
    }

    /// `milli` thousandths of a token per second.
    pub const fn milli_per_sec(milli: u64) -> Rate {
        Rate(milli)
    }

    /// The rate in thousandths of a token per second.
    pub const fn as_milli_per_sec(self) -> u64 {
        self.0
    }

    /// The rate in tokens per second, as a float (for display).
    pub fn as_per_sec(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}/s", self.0 / 1000, self.0 % 1000)
    }
}

/// The fastest rate a limiter may be given: 10⁹ tokens per second.
pub const MAX_RATE: Rate = Rate::per_sec(1_000_000_000);
/// The largest burst: 10⁹ tokens.
pub const MAX_BURST: u64 = 1_000_000_000;
/// The largest latency window: 65,536 samples.
pub const MAX_WINDOW: usize = 65_536;

/// Billionths of a token in a token.
const NANO: u128 = 1_000_000_000;

/// The settings of a [`RateLimiter`].
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimiterConfig {
    /// The rate to start with (within `[min_rate, max_rate]`).
    pub initial_rate: Rate,
    /// The slowest rate (at least one thousandth of a token per second).
    pub min_rate: Rate,
    /// The fastest rate (at most [`MAX_RATE`]).
    pub max_rate: Rate,
    /// The bucket's size in tokens (1 to [`MAX_BURST`]).
    pub burst: u64,
    /// The p95 latency to stay under, in µs (at least 1).
    pub target_p95: Micros,
    /// What a good interval adds to the rate (above 0).
    pub increase: Rate,
    /// What a bad interval multiplies the rate by, in `(0, 1)` (precision 10⁻⁶).
    pub decrease: f64,
    /// How many recent latencies the window keeps (1 to [`MAX_WINDOW`]).
    pub window: usize,
    /// How many the window must hold for a decision (1 to `window`).
    pub min_samples: usize,
    /// The least time between two decisions, in µs (at least 1).
    pub interval: Micros,
}

impl Default for RateLimiterConfig {
    /// 100 tokens/s (from 1 to 10,000), a burst of 100, p95 target 50 ms; +10/s or ×0.5 each
    /// second, on at least 20 of the last 1000 latencies.
    fn default() -> Self {
        RateLimiterConfig {
            initial_rate: Rate::per_sec(100),
            min_rate: Rate::per_sec(1),
            max_rate: Rate::per_sec(10_000),
            burst: 100,
            target_p95: 50_000,
            increase: Rate::per_sec(10),
            decrease: 0.5,
            window: 1000,
            min_samples: 20,
            interval: 1_000_000,
        }
    }
}

impl RateLimiterConfig {
    /// Checks the settings: `Error::invalid` says which one is wrong.
    pub fn validate(&self) -> Result<()> {
        self.decrease_ppm().map(|_| ())
    }

    /// `decrease` in millionths, after checking every setting.
    fn decrease_ppm(&self) -> Result<u64> {
        let bad = |what: String| Err(Error::invalid(format!("rate limiter {what}")));
        if self.min_rate.0 == 0 {
            return bad("min_rate must be above 0".into());
        }
        if self.max_rate > MAX_RATE {
            return bad(format!(
                "max_rate {} must be at most {MAX_RATE}",
                self.max_rate
            ));
        }
        if self.min_rate > self.max_rate {
            return bad(format!(
                "min_rate {} must be at most max_rate {}",
                self.min_rate, self.max_rate
            ));
        }
        if !(self.min_rate..=self.max_rate).contains(&self.initial_rate) {
            return bad(format!(
                "initial_rate {} must be within [{}, {}]",
                self.initial_rate, self.min_rate, self.max_rate
            ));
        }
        if !(1..=MAX_BURST).contains(&self.burst) {
            return bad(format!("burst {} must be 1-{MAX_BURST}", self.burst));
        }
        if self.target_p95 == 0 {
            return bad("target_p95 must be at least 1 µs".into());
        }
        if self.increase.0 == 0 {
            return bad("increase must be above 0".into());
        }
        let d = self.decrease;
        let ppm = (d * 1e6).round();
        if !(d.is_finite() && d > 0.0 && d < 1.0 && (1.0..1e6).contains(&ppm)) {
            return bad(format!("decrease {d} must be in (0, 1) (precision 1e-6)"));
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return bad(format!("window {} must be 1-{MAX_WINDOW}", self.window));
        }
        if !(1..=self.window).contains(&self.min_samples) {
            return bad(format!(
                "min_samples {} must be 1-{} (the window)",
                self.min_samples, self.window
            ));
        }
        if self.interval == 0 {
            return bad("interval must be at least 1 µs".into());
        }
        Ok(ppm as u64)
    }
}

/// The answer of [`RateLimiter::try_acquire`] when the bucket is empty: try again after
/// `retry_after` µs (at the current rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// How long until a token is there, at the current rate (at least 1 µs).
    pub retry_after: Micros,
    /// The current rate.
    pub rate: Rate,
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limited at {}: retry after {} µs",
            self.rate, self.retry_after
        )
    }
}

impl From<Throttled> for Error {
    fn from(t: Throttled) -> Error {
        Error::new(ErrorKind::Full, t.to_string())
    }
}

/// Counters of a [`RateLimiter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimiterStats {
    /// Tokens granted.
    pub granted: u64,
    /// Requests refused.
    pub throttled: u64,
    /// Latencies observed.
    pub observed: u64,
    /// Decisions that increased (or held at the maximum) the rate.
    pub increases: u64,
    /// Decisions that decreased (or held at the minimum) the rate.
    pub decreases: u64,
    /// The p95 of the latest decision, in µs.
    pub last_p95: Micros,
}

/// An adaptive token bucket (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    cfg: RateLimiterConfig,
    decrease_ppm: u64,
    rate: Rate,
    /// Billionths of a token, at most `burst · 10⁹`.
    tokens: u64,
    capacity: u64,
    last_now: Micros,
    /// When the latest decision was taken (or the first latency observed).
    last_decision: Option<Micros>,
    /// The window of recent latencies: a ring of at most `window` samples.
    samples: Vec<Micros>,
    next_sample: usize,
    scratch: Vec<Micros>,
    stats: RateLimiterStats,
}

impl RateLimiter {
    /// A limiter with `cfg` and a full bucket, or `Error::invalid` when a setting is nonsense.
    pub fn new(cfg: RateLimiterConfig) -> Result<RateLimiter> {
        let decrease_ppm = cfg.decrease_ppm()?;
        let capacity = cfg.burst * NANO as u64;
        Ok(RateLimiter {
            decrease_ppm,
            rate: cfg.initial_rate,
            tokens: capacity,
            capacity,
            last_now: 0,
            last_decision: None,
            samples: Vec::with_capacity(cfg.window),
            next_sample: 0,
            scratch: Vec::new(),
            stats: RateLimiterStats::default(),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RateLimiterConfig {
        &self.cfg
    }

    /// The current rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The tokens in the bucket as of the latest call, in billionths of a token.
    pub fn tokens_nano(&self) -> u64 {
        self.tokens
    }

    /// The counters.
    pub fn stats(&self) -> RateLimiterStats {
        self.stats
    }

    /// Takes one token at `now`, or says how long to wait for one.
    pub fn try_acquire(&mut self, now: Micros) -> std::result::Result<(), Throttled> {
        self.refill(now);
        if self.tokens >= NANO as u64 {
            self.tokens -= NANO as u64;
            self.stats.granted += 1;
            Ok(())
        } else {
            self.stats.throttled += 1;
            let missing = NANO as u64 - self.tokens;
            // The rate is at least 1 milli-token/s = 1 billionth of a token per µs.
            Err(Throttled {
                retry_after: missing.div_ceil(self.rate.0),
                rate: self.rate,
            })
        }
    }

    /// A task admitted by this limiter completed after `latency` µs, seen at `now`: the rate
    /// may be adjusted (see the [module documentation](self)).
    pub fn observe_latency(&mut self, now: Micros, latency: Micros) {
        self.refill(now);
        let now = self.last_now;
        self.stats.observed += 1;
        if self.samples.len() < self.cfg.window {
            self.samples.push(latency);
        } else {
            self.samples[self.next_sample] = latency;
        }
        self.next_sample = (self.next_sample + 1) % self.cfg.window;
        let since = *self.last_decision.get_or_insert(now);
        if now - since < self.cfg.interval || self.samples.len() < self.cfg.min_samples {
            return;
        }
        let p95 = self.p95();
        self.stats.last_p95 = p95;
        if p95 > self.cfg.target_p95 {
            let r = u128::from(self.rate.0) * u128::from(self.decrease_ppm) / 1_000_000;
            // r < rate: it fits in u64.
            self.rate = Rate(r as u64).max(self.cfg.min_rate);
            self.stats.decreases += 1;
        } else {
            self.rate =
                Rate(self.rate.0.saturating_add(self.cfg.increase.0)).min(self.cfg.max_rate);
            self.stats.increases += 1;
        }
        self.samples.clear();
        self.next_sample = 0;
        self.last_decision = Some(now);
    }

    /// The nearest-rank p95 of the window (not empty).
    fn p95(&mut self) -> Micros {
        let n = self.samples.len();
        let rank = (95 * n).div_ceil(100); // 1-based, in 1..=n
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.samples);
        *self.scratch.select_nth_unstable(rank - 1).1
    }

    /// Adds the tokens of the time since the latest call, at the current rate.
    fn refill(&mut self, now: Micros) {
        if now <= self.last_now {
            return; // no time elapsed (or the clock stepped back)
        }
        let elapsed = now - self.last_now;
        self.last_now = now;
        let add = u128::from(elapsed) * u128::from(self.rate.0);
        let total = (u128::from(self.tokens) + add).min(u128::from(self.capacity));
        self.tokens = total as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RateLimiterConfig {
        RateLimiterConfig {
            initial_rate: Rate::per_sec(1000),
            min_rate: Rate::per_sec(10),
            max_rate: Rate::per_sec(1000),
            burst: 10,
            target_p95: 10_000,
            increase: Rate::per_sec(50),
            decrease: 0.5,
            window: 100,
            min_samples: 10,
            interval: 100_000,
        }
    }

    fn limiter(c: RateLimiterConfig) -> RateLimiter {
        RateLimiter::new(c).unwrap()
    }

    #[test]
    fn nonsense_settings_are_refused() {
        let bad: Vec<(&str, RateLimiterConfig)> = vec![
            (
                "min 0",
                RateLimiterConfig {
                    min_rate: Rate(0),
                    ..cfg()
                },
            ),
            (
                "max too fast",
                RateLimiterConfig {
                    max_rate: Rate(MAX_RATE.0 + 1),
                    ..cfg()
                },
            ),
            (
                "min > max",
                RateLimiterConfig {
                    min_rate: Rate::per_sec(2000),
                    ..cfg()
                },
            ),
            (
                "initial < min",
                RateLimiterConfig {
                    initial_rate: Rate::per_sec(1),
                    ..cfg()
                },
            ),
            (
                "initial > max",
                RateLimiterConfig {
                    initial_rate: Rate::per_sec(1001),
                    ..cfg()
                },
            ),
            ("burst 0", RateLimiterConfig { burst: 0, ..cfg() }),
            (
                "burst huge",
                RateLimiterConfig {
                    burst: MAX_BURST + 1,
                    ..cfg()
                },
            ),
            (
                "target 0",
                RateLimiterConfig {
                    target_p95: 0,
                    ..cfg()
                },
            ),
            (
                "increase 0",
                RateLimiterConfig {
                    increase: Rate(0),
                    ..cfg()
                },
            ),
            (
                "decrease 0",
                RateLimiterConfig {
                    decrease: 0.0,
                    ..cfg()
                },
            ),
            (
                "decrease 1",
                RateLimiterConfig {
                    decrease: 1.0,
                    ..cfg()
                },
            ),
            (
                "decrease > 1",
                RateLimiterConfig {
                    decrease: 2.0,
                    ..cfg()
                },
            ),
            (
                "decrease NaN",
                RateLimiterConfig {
                    decrease: f64::NAN,
                    ..cfg()
                },
            ),
            (
                "decrease tiny",
                RateLimiterConfig {
                    decrease: 1e-9,
                    ..cfg()
                },
            ),
            (
                "decrease ~1",
                RateLimiterConfig {
                    decrease: 0.999_999_9,
                    ..cfg()
                },
            ),
            ("window 0", RateLimiterConfig { window: 0, ..cfg() }),
            (
                "window huge",
                RateLimiterConfig {
                    window: MAX_WINDOW + 1,
                    ..cfg()
                },
            ),
            (
                "min_samples 0",
                RateLimiterConfig {
                    min_samples: 0,
                    ..cfg()
                },
            ),
            (
                "min_samples > window",
                RateLimiterConfig {
                    min_samples: 101,
                    ..cfg()
                },
            ),
            (
                "interval 0",
                RateLimiterConfig {
                    interval: 0,
                    ..cfg()
                },
            ),
        ];
        for (what, c) in bad {
            let e = RateLimiter::new(c.clone()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}");
            assert!(
                e.message().starts_with("rate limiter"),
                "{what}: {}",
                e.message()
            );
            assert!(c.validate().is_err());
        }
        for good in [
            cfg(),
            RateLimiterConfig::default(),
            RateLimiterConfig {
                min_rate: Rate(1),
                initial_rate: Rate(1),
                ..cfg()
            },
            RateLimiterConfig {
                max_rate: MAX_RATE,
                burst: MAX_BURST,
                ..cfg()
            },
            RateLimiterConfig {
                window: 1,
                min_samples: 1,
                ..cfg()
            },
        ] {
            assert!(good.validate().is_ok(), "{good:?}");
            assert_eq!(limiter(good.clone()).rate(), good.initial_rate);
        }
        assert_eq!(Rate::per_sec(3).to_string(), "3.000/s");
        assert_eq!(Rate::milli_per_sec(1_500).as_per_sec(), 1.5);
    }

    #[test]
    fn the_bucket_starts_full_and_refills_at_the_rate() {
        let mut l = limiter(cfg()); // 1000/s: one token per ms, burst 10
        for _ in 0..10 {
            assert_eq!(l.try_acquire(0), Ok(()));
        }
        let t = l.try_acquire(0).unwrap_err();
        assert_eq!(
            t,
            Throttled {
                retry_after: 1_000,
                rate: Rate::per_sec(1000)
            }
        );
        assert_eq!(l.try_acquire(999).unwrap_err().retry_after, 1);
        assert_eq!(l.try_acquire(1_000), Ok(()));
        assert_eq!(l.try_acquire(1_000).unwrap_err().retry_after, 1_000);
        // A long pause fills the bucket to the burst and no further.
        assert!(l.try_acquire(10_000_000).is_ok());
        assert_eq!(l.tokens_nano(), 9 * 1_000_000_000);
        let s = l.stats();
        assert_eq!((s.granted, s.throttled), (12, 3));
        let e = Error::from(t);
        assert_eq!(e.kind(), ErrorKind::Full);
        assert!(
            e.message().contains("retry after 1000 µs"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn fractional_rates_are_exact_and_the_wait_hint_is_tight() {
        // 1.5 tokens/s: a token every 666.67 ms.
        let c = RateLimiterConfig {
            initial_rate: Rate::milli_per_sec(1_500),
            min_rate: Rate(1),
            burst: 1,
            ..cfg()
        };
        let mut l = limiter(c);
        assert!(l.try_acquire(0).is_ok());
        let wait = l.try_acquire(0).unwrap_err().retry_after;
        assert_eq!(wait, 666_667); // ⌈10⁹ / 1500⌉
        assert!(l.try_acquire(wait - 1).is_err());
        assert!(l.try_acquire(wait).is_ok());
        // 3 tokens in exactly 2 s, over any split of the time (with room in the bucket: a
        // bucket of 1 token would drop what a refill brings beyond it).
        let mut l = limiter(RateLimiterConfig {
            initial_rate: Rate::milli_per_sec(1_500),
            min_rate: Rate(1),
            burst: 2,
            ..cfg()
        });
        assert!(l.try_acquire(0).is_ok());
        assert!(l.try_acquire(0).is_ok());
        let mut granted = 0;
        for now in (7..=2_000_000).step_by(7) {
            granted += u32::from(l.try_acquire(now).is_ok());
        }
        assert_eq!(granted, 2, "1.5/s · 1.999998 s < 3 tokens");
        granted += u32::from(l.try_acquire(2_000_000).is_ok());
        assert_eq!(granted, 3);
    }

    #[test]
    fn no_drift_over_a_long_run() {
        // 7.777 tokens/s for a simulated day in steps of irregular length, drained greedily:
        // exactly ⌊burst + rate · T⌋ tokens.
        let rate = 7_777u64;
        let mut l = limiter(RateLimiterConfig {
            initial_rate: Rate(rate),
            min_rate: Rate(1),
            max_rate: Rate(rate),
            burst: 3,
            ..cfg()
        });
        let (mut now, mut granted) = (0u64, 0u64);
        while l.try_acquire(0).is_ok() {
            granted += 1; // the full bucket, so that no refill is ever capped
        }
        let day = 86_400_000_000u64;
        let mut step = 1u64;
        while now < day {
            step = (step * 7 + 3) % 100_003;
            now = (now + step).min(day);
            while l.try_acquire(now).is_ok() {
                granted += 1;
            }
        }
        let expected = (3 * 1_000_000_000 + u128::from(day) * u128::from(rate)) / 1_000_000_000;
        assert_eq!(u128::from(granted), expected);
    }

    #[test]
    fn a_clock_stepping_back_creates_no_tokens() {
        let mut l = limiter(RateLimiterConfig { burst: 1, ..cfg() });
        assert!(l.try_acquire(5_000).is_ok());
        for back in [0, 1, 4_999, 5_000] {
            assert!(l.try_acquire(back).is_err(), "at {back}");
        }
        assert_eq!(l.try_acquire(5_999).unwrap_err().retry_after, 1);
        assert!(l.try_acquire(6_000).is_ok());
        // Jumps to the end of time fill the bucket and nothing breaks.
        assert!(l.try_acquire(u64::MAX).is_ok());
        assert!(l.try_acquire(u64::MAX).is_err());
        l.observe_latency(0, u64::MAX);
        assert_eq!(l.tokens_nano(), 0);
    }

    /// Feeds `n` latencies at `now` (the last one may trigger a decision).
    fn feed(l: &mut RateLimiter, now: Micros, latencies: &[Micros]) {
        for &x in latencies {
            l.observe_latency(now, x);
        }
    }

    #[test]
    fn decisions_wait_for_the_interval_and_enough_samples() {
        let mut l = limiter(RateLimiterConfig {
            initial_rate: Rate::per_sec(500),
            ..cfg()
        });
        feed(&mut l, 0, &[1; 50]); // starts the interval
        feed(&mut l, 99_999, &[1; 50]);
        assert_eq!(l.rate(), Rate::per_sec(500), "before the interval");
        // 100 samples: the window is full, new ones replace the oldest.
        let mut l = limiter(RateLimiterConfig {
            initial_rate: Rate::per_sec(500),
            ..cfg()
        });
        feed(&mut l, 0, &[1]);
        feed(&mut l, 100_000, &[1; 8]);
        assert_eq!(l.rate(), Rate::per_sec(500), "9 samples < min_samples");
        feed(&mut l, 100_000, &[1]);
        assert_eq!(l.rate(), Rate::per_sec(550), "10th sample: a good interval");
        feed(&mut l, 150_000, &[1; 20]);
        assert_eq!(
            l.rate(),
            Rate::per_sec(550),
            "the next interval has not passed"
        );
        feed(&mut l, 200_000, &[1]);
        assert_eq!(l.rate(), Rate::per_sec(600));
        assert_eq!(l.stats().increases, 2);
    }

    #[test]
    fn the_decision_follows_the_p95_not_the_max() {
        // 100 samples: the p95 is the 95th smallest. 5 outliers keep it low, 6 raise it.
        for (outliers, decreased) in [(5usize, false), (6, true)] {
            let mut l = limiter(RateLimiterConfig {
                initial_rate: Rate::per_sec(500),
                ..cfg()
            });
            feed(&mut l, 0, &[1]);
            let mut xs = vec![10_000u64; 99 - outliers]; // at the target: good
            xs.extend(std::iter::repeat_n(1_000_000, outliers));
            feed(&mut l, 1, &xs);
            feed(&mut l, 100_000, &[2]);
            let expected = if decreased { 250 } else { 550 };
            assert_eq!(l.rate(), Rate::per_sec(expected), "{outliers} outliers");
            assert_eq!(
                l.stats().last_p95,
                if decreased { 1_000_000 } else { 10_000 }
            );
        }
    }

    #[test]
    fn rates_stay_within_bounds() {
        let mut l = limiter(cfg());
        let mut now = 0;
        for _ in 0..20 {
            now += 100_000;
            feed(&mut l, now, &[1_000_000; 10]);
        }
        assert_eq!(l.rate(), Rate::per_sec(10), "floored at min_rate");
        for _ in 0..40 {
            now += 100_000;
            feed(&mut l, now, &[1; 10]);
        }
        assert_eq!(l.rate(), Rate::per_sec(1000), "capped at max_rate");
        // A rate that rounds down to 0 is held at the minimum.
        let mut l = limiter(RateLimiterConfig {
            initial_rate: Rate(1),
            min_rate: Rate(1),
            decrease: 0.1,
            ..cfg()
        });
        feed(&mut l, 0, &[u64::MAX; 10]);
        feed(&mut l, 100_000, &[u64::MAX]);
        assert_eq!(l.rate(), Rate(1));
        assert!(l.try_acquire(200_000).is_ok());
    }

    // ---- Seeded simulations. ----

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

    #[test]
    fn a_latency_spike_cuts_the_rate_which_then_climbs_back() {
        for seed in 0..16 {
            let mut rng = Rng(seed);
            let c = cfg();
            let mut l = limiter(c.clone());
            let spike = (rng.range(1_000_000, 3_000_000), 0);
            let spike = (spike.0, spike.0 + rng.range(2_500_000, 4_000_000));
            let end = spike.1 + 5_000_000;
            let mut decisions: Vec<(Micros, Rate, Rate, Micros)> = Vec::new(); // (at, before, after, p95)
            let mut now = 0;
            let mut per_second = vec![0u64; (end / 1_000_000 + 2) as usize];
            while now < end {
                now += rng.range(1, 400);
                if l.try_acquire(now).is_ok() {
                    per_second[(now / 1_000_000) as usize] += 1;
                    // Latency: 1-3 ms, 30-60 ms during the spike.
                    let lat = if (spike.0..spike.1).contains(&now) {
                        rng.range(30_000, 60_000)
                    } else {
                        rng.range(1_000, 3_000)
                    };
                    let before = (l.rate(), l.stats().increases + l.stats().decreases);
                    l.observe_latency(now, lat);
                    if l.stats().increases + l.stats().decreases != before.1 {
                        decisions.push((now, before.0, l.rate(), l.stats().last_p95));
                    }
                }
                assert!((c.min_rate..=c.max_rate).contains(&l.rate()));
            }
            let ctx = format!("seed {seed}, spike {spike:?}");
            let mut fell = false;
            for &(at, before, after, p95) in &decisions {
                if p95 > c.target_p95 {
                    // Multiplicative: halved exactly (rounded down), floored at the minimum.
                    assert_eq!(after, Rate(before.0 / 2).max(c.min_rate), "{ctx}");
                    // Only the spike's latencies are bad (one decision may straddle its end).
                    assert!(
                        at >= spike.0 && at < spike.1 + c.interval + 1_000_000,
                        "{ctx}: {at}"
                    );
                    fell = true;
                } else {
                    // Additive: +50/s, capped at the maximum.
                    assert_eq!(
                        after,
                        Rate(before.0 + c.increase.0).min(c.max_rate),
                        "{ctx}"
                    );
                }
            }
            assert!(fell, "{ctx}: the spike never lowered the rate");
            // During the spike, the rate reached the minimum (1000 → 10 takes 7 halvings, the
            // last ones slow as fewer latencies arrive: about 1.6 s).
            let lowest = decisions.iter().map(|d| d.2).min().unwrap();
            assert_eq!(lowest, c.min_rate, "{ctx}");
            // It climbs back to the maximum after: 990/s in steps of 50 takes 20 decisions.
            assert_eq!(l.rate(), c.max_rate, "{ctx}");
            // And the tasks admitted per second follow the rate: at most rate + burst.
            let mid_spike = ((spike.0 + spike.1) / 2 / 1_000_000) as usize;
            assert!(
                per_second[mid_spike] < per_second[0] / 2,
                "{ctx}: {per_second:?}"
            );
        }
    }

    /// Drives a random limiter through `steps` random calls with zero, small, huge and
    /// backward time steps, checking the accounting against an independent model.
    fn chaos(seed: u64, steps: u64) -> RateLimiterStats {
        let mut rng = Rng(seed);
        let min = rng.range(1, 10_000);
        let max = rng.range(min, MAX_RATE.0);
        let c = RateLimiterConfig {
            initial_rate: Rate(rng.range(min, max)),
            min_rate: Rate(min),
            max_rate: Rate(max),
            burst: if rng.next() % 4 == 0 {
                MAX_BURST
            } else {
                rng.range(1, 100)
            },
            target_p95: rng.range(1, 100_000),
            increase: Rate(rng.range(1, max)),
            decrease: rng.range(1, 999_999) as f64 / 1e6,
            window: rng.range(1, 64) as usize,
            min_samples: 1,
            interval: rng.range(1, 1_000_000),
        };
        let ctx = format!("seed {seed}, {c:?}");
        let mut l = limiter(c.clone());
        let mut now = 0u64;
        let mut model_now = 0u64;
        // Tokens the limiter may have granted: the burst plus the integral of its rate.
        let mut credit: u128 = u128::from(c.burst) * NANO;
        let mut granted = 0u128;
        for _ in 0..steps {
            let r = rng.next();
            now = match r % 100 {
                0..=29 => now,
                30..=79 => now.saturating_add(r >> 54), // < 1024 µs
                80..=89 => now.saturating_sub(r >> 40), // backwards
                90..=97 => now.saturating_add(r >> 44), // ~1e6 µs
                98 => now.saturating_add(r >> 20),      // ~1e13 µs
                _ => (r >> 1).min(now.saturating_add(1 << 50)), // anywhere (often back)
            };
            if now > model_now {
                credit =
                    credit.saturating_add(u128::from(now - model_now) * u128::from(l.rate().0));
                model_now = now;
            }
            if (r >> 8) % 8 == 0 {
                let lat = match (r >> 12) % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    _ => (r >> 16) % (2 * c.target_p95),
                };
                l.observe_latency(now, lat);
            } else {
                match l.try_acquire(now) {
                    Ok(()) => granted += 1,
                    Err(t) => {
                        // The hint is tight: a token is there after `retry_after`, not before.
                        let (have, rate) = (u128::from(l.tokens_nano()), u128::from(t.rate.0));
                        assert!(t.retry_after >= 1, "{ctx}");
                        assert!(have + u128::from(t.retry_after) * rate >= NANO, "{ctx}");
                        assert!(have + u128::from(t.retry_after - 1) * rate < NANO, "{ctx}");
                    }
                }
            }
            assert!(l.tokens_nano() <= c.burst * 1_000_000_000, "{ctx}");
            assert!((c.min_rate..=c.max_rate).contains(&l.rate()), "{ctx}");
            assert!(
                granted * NANO <= credit,
                "{ctx}: granted more than the rate allows"
            );
        }
        assert_eq!(u128::from(l.stats().granted), granted, "{ctx}");
        l.stats()
    }

    #[test]
    fn token_accounting_survives_ten_million_chaotic_steps() {
        // 10⁷ steps over 100 seeds (`EMF_SIM_STEPS` changes the total; `scripts/sched-sim.sh`
        // runs 10⁹).
        let total: u64 = std::env::var("EMF_SIM_STEPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000_000);
        let mut sum = RateLimiterStats::default();
        for seed in 0..100 {
            let s = chaos(seed, total / 100);
            sum.granted += s.granted;
            sum.throttled += s.throttled;
            sum.increases += s.increases;
            sum.decreases += s.decreases;
        }
        // The runs went through every path: grants, refusals, both kinds of decision.
        let paths = [sum.granted, sum.throttled, sum.increases, sum.decreases];
        assert!(paths.iter().all(|&n| n * 10_000 > total), "{sum:?}");
    }
}

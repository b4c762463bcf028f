//! Choosing an agent among candidates: the original design's load score, power of two
//! choices, and round-robin (for comparison), behind one setting.

/// What a strategy knows of one candidate agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Tasks the agent holds now (leased and not yet acknowledged).
    pub current_tasks: u32,
    /// Tasks it may hold at once (its capacity, at least 1).
    pub max_tasks: u32,
    /// Its recent task latency in µs (e.g. an exponentially weighted mean).
    pub latency_us: u64,
}

impl Candidate {
    /// Whether the agent can take one more task.
    #[inline]
    pub fn has_capacity(&self) -> bool {
        self.current_tasks < self.max_tasks
    }
}

/// How [`Strategy::select`] chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// The least-loaded agent with spare capacity by the original design's score
    /// `0.7 · task_ratio + 0.3 · latency_ratio`, where `task_ratio = current / max` and
    /// `latency_ratio = latency / (the largest latency among the candidates)`; ties go to the
    /// first candidate. Examines every candidate.
    LeastLoaded,
    /// Power of two choices: two candidates with spare capacity picked at random, the one with
    /// the lower score wins. Two reads however large the pool; falls back to a scan when the
    /// random picks find no capacity.
    PowerOfTwo {
        /// The state of the generator (xorshift64*; never 0).
        state: u64,
    },
    /// The next candidate with spare capacity after the previous choice.
    RoundRobin {
        /// The index after the previous choice.
        next: usize,
    },
}

impl Strategy {
    /// A power-of-two-choices strategy seeded with `seed` (0 is replaced by a constant).
    pub fn power_of_two(seed: u64) -> Strategy {
        Strategy::PowerOfTwo {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    /// A round-robin strategy starting at the first candidate.
    pub fn round_robin() -> Strategy {
        Strategy::RoundRobin { next: 0 }
    }

    /// The index of the chosen candidate, or `None` when no candidate has spare capacity
    /// (`no_capacity`).
    pub fn select(&mut self, candidates: &[Candidate]) -> Option<usize> {
        match self {
            Strategy::LeastLoaded => least_loaded(candidates),
            Strategy::PowerOfTwo { state } => {
                let n = candidates.len();
                if n == 0 {
                    return None;
                }
                let max_latency = max_latency(candidates);
                let a = (next_random(state) % n as u64) as usize;
                let b = (next_random(state) % n as u64) as usize;
                match (candidates[a].has_capacity(), candidates[b].has_capacity()) {
                    (true, true) => {
                        let (sa, sb) = (
                            score(&candidates[a], max_latency),
                            score(&candidates[b], max_latency),
                        );
                        Some(if sb < sa { b } else { a })
                    }
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => least_loaded(candidates),
                }
            }
            Strategy::RoundRobin { next } => {
                let n = candidates.len();
                (0..n)
                    .map(|i| (*next + i) % n)
                    .find(|&i| candidates[i].has_capacity())
                    .inspect(|&i| *next = (i + 1) % n)
            }
        }
    }
}

/// The original design's load score of `c`: `0.7 · current / max + 0.3 · latency /
/// max_latency` (the latency term is 0 when every candidate's latency is 0).
#[inline]
pub fn score(c: &Candidate, max_latency: u64) -> f64 {
    let task_ratio = f64::from(c.current_tasks) / f64::from(c.max_tasks.max(1));
    let latency_ratio = if max_latency == 0 {
        0.0
    } else {
        c.latency_us as f64 / max_latency as f64
    };
    0.7 * task_ratio + 0.3 * latency_ratio
}

fn max_latency(candidates: &[Candidate]) -> u64 {
    candidates.iter().map(|c| c.latency_us).max().unwrap_or(0)
}

fn least_loaded(candidates: &[Candidate]) -> Option<usize> {
    let max_latency = max_latency(candidates);
    let mut best: Option<(usize, f64)> = None;
    for (i, c) in candidates.iter().enumerate() {
        if !c.has_capacity() {
            continue;
        }
        let s = score(c, max_latency);
        if best.is_none_or(|(_, b)| s < b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// xorshift64*: fast, and enough to spread two choices.
#[inline]
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(current: u32, max: u32, latency: u64) -> Candidate {
        Candidate {
            current_tasks: current,
            max_tasks: max,
            latency_us: latency,
        }
    }

    #[test]
    fn least_loaded_uses_the_original_score() {
        // Task ratios 0.8, 0.2, 0.2; latencies make the second worse than the third.
        let cs = [c(4, 5, 100), c(1, 5, 1000), c(1, 5, 100)];
        assert_eq!(Strategy::LeastLoaded.select(&cs), Some(2));
        // 0.7·0.2 + 0.3·1.0 = 0.44 < 0.7·0.8 + 0.3·0.1 = 0.59: a slow but idle agent beats a
        // fast but busy one.
        assert_eq!(
            Strategy::LeastLoaded.select(&[c(4, 5, 100), c(1, 5, 1000)]),
            Some(1)
        );
    }

    #[test]
    fn no_capacity_is_none() {
        let full = [c(5, 5, 0), c(1, 1, 0)];
        assert_eq!(Strategy::LeastLoaded.select(&full), None);
        assert_eq!(Strategy::power_of_two(7).select(&full), None);
        assert_eq!(Strategy::round_robin().select(&full), None);
        assert_eq!(Strategy::LeastLoaded.select(&[]), None);
        assert_eq!(Strategy::power_of_two(7).select(&[]), None);
        assert_eq!(Strategy::round_robin().select(&[]), None);
    }

    #[test]
    fn round_robin_skips_full_agents_and_rotates() {
        let cs = [c(0, 1, 0), c(1, 1, 0), c(0, 1, 0)];
        let mut s = Strategy::round_robin();
        let picks: Vec<_> = (0..4).map(|_| s.select(&cs).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
    }

    #[test]
    fn power_of_two_picks_only_agents_with_capacity_and_prefers_the_lighter() {
        let mut s = Strategy::power_of_two(42);
        let cs = [c(5, 5, 0), c(0, 5, 0), c(5, 5, 0), c(4, 5, 0)];
        let mut counts = [0u32; 4];
        for _ in 0..1000 {
            counts[s.select(&cs).unwrap()] += 1;
        }
        assert_eq!(counts[0] + counts[2], 0, "full agents chosen: {counts:?}");
        // Agent 1 (score 0) wins every draw that includes it (7/16) and the fallback scan of
        // draws of two full agents (4/16); agent 3 wins the other draws (5/16).
        assert!(counts[1] > counts[3] && counts[3] > 0, "{counts:?}");
    }
}

//! The benchmark suites behind `erlmcp-flow bench`, as a library.
//!
//! A suite measures this engine and, where one exists, a peer doing the same work on the same
//! input in the same run, and returns [`BenchResult`]s. [`Report`] writes them as JSON (`suite`,
//! `timestamp`, `machine`, and `results`: name, value, unit, the direction that is `better`,
//! targets, the peer and the ratio against it) and reads it back for `bench compare`.
//!
//! Timing: each measurement runs the operation in batches sized to take a few milliseconds,
//! repeats the batch, and reports the **median** batch (per operation). The machine is shared
//! and noisy; medians and ratios measured side by side are what the numbers are for.

pub mod alloc;
pub mod codec;
pub mod gossip;
pub mod gossip_live;
pub mod hnsw;
pub mod pbft;
pub mod queue;
pub mod raft;
pub mod ring;
pub mod samples;
pub mod sched;
pub mod sched_mem;
pub mod sched_rt;
pub mod sched_sim;

use std::time::{Duration, Instant};

use erlmcp_flow::codec::json;
use erlmcp_flow::codec::value::{Member, Value};
use erlmcp_flow::{Error, Result};

/// Which direction of a value is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Smaller is better (latency, memory).
    Lower,
    /// Larger is better (throughput, ratios).
    Higher,
}

impl Better {
    fn name(self) -> &'static str {
        match self {
            Better::Lower => "lower",
            Better::Higher => "higher",
        }
    }
}

/// A peer measured side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// The peer's name (`serde_json`, `iceoryx2`, ...).
    pub name: String,
    /// The peer's value, in the result's unit.
    pub value: f64,
}

/// One measured result.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    /// Stable name (`decode_200b`, ...).
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// Its unit (`ns`, `msg/s`, `x`, ...).
    pub unit: String,
    /// Which direction is better.
    pub better: Better,
    /// The original design's target, in the same unit, when it has one.
    pub seed_target: Option<f64>,
    /// This project's goal, in the same unit.
    pub goal: Option<f64>,
    /// The peer measured in the same run.
    pub peer: Option<Peer>,
    /// How many times better than the peer (> 1 is better, whatever the unit's direction).
    pub ratio_vs_peer: Option<f64>,
}

impl BenchResult {
    /// A result without targets or peer.
    pub fn new(name: impl Into<String>, value: f64, unit: &str, better: Better) -> Self {
        BenchResult {
            name: name.into(),
            value,
            unit: unit.to_owned(),
            better,
            seed_target: None,
            goal: None,
            peer: None,
            ratio_vs_peer: None,
        }
    }

    /// Adds a peer and computes the ratio (peer / ours for lower-is-better, ours / peer else).
    pub fn with_peer(mut self, name: &str, value: f64) -> Self {
        self.ratio_vs_peer = Some(match self.better {
            Better::Lower => value / self.value,
            Better::Higher => self.value / value,
        });
        self.peer = Some(Peer {
            name: name.to_owned(),
            value,
        });
        self
    }

    /// Sets the seed target and the goal.
    pub fn with_targets(mut self, seed_target: Option<f64>, goal: Option<f64>) -> Self {
        self.seed_target = seed_target;
        self.goal = goal;
        self
    }

    /// True when the goal (or, without one, the seed target) is met; `None` without either.
    pub fn met(&self) -> Option<bool> {
        let target = self.goal.or(self.seed_target)?;
        Some(match self.better {
            Better::Lower => self.value <= target,
            Better::Higher => self.value >= target,
        })
    }

    fn to_value(&self) -> Value {
        let num = |f: f64| Value::from(f);
        let mut m = vec![
            Member::new("name", self.name.as_str().into()),
            Member::new("value", num(self.value)),
            Member::new("unit", self.unit.as_str().into()),
            Member::new("better", self.better.name().into()),
        ];
        let opt = |f: Option<f64>| f.map_or(Value::Null, Value::from);
        m.push(Member::new("seed_target", opt(self.seed_target)));
        m.push(Member::new("goal", opt(self.goal)));
        m.push(Member::new(
            "peer",
            match &self.peer {
                Some(p) => Value::Object(vec![
                    Member::new("name", p.name.as_str().into()),
                    Member::new("value", num(p.value)),
                ]),
                None => Value::Null,
            },
        ));
        m.push(Member::new("ratio_vs_peer", opt(self.ratio_vs_peer)));
        m.push(Member::new(
            "met",
            self.met().map_or(Value::Null, Value::from),
        ));
        Value::Object(m)
    }

    fn from_value(v: &Value) -> Result<BenchResult> {
        let bad = |what: &str| Error::invalid(format!("result JSON: {what}"));
        let f = |key: &str| -> Option<f64> { number(v.get(key)?) };
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing name"))?;
        let unit = v.get("unit").and_then(Value::as_str).unwrap_or("");
        let better = match v.get("better").and_then(Value::as_str) {
            Some("lower") => Better::Lower,
            Some("higher") => Better::Higher,
            _ => better_for_unit(unit),
        };
        Ok(BenchResult {
            name: name.to_owned(),
            value: f("value").ok_or_else(|| bad("missing value"))?,
            unit: unit.to_owned(),
            better,
            seed_target: f("seed_target"),
            goal: f("goal"),
            peer: v.get("peer").and_then(|p| {
                Some(Peer {
                    name: p.get("name")?.as_str()?.to_owned(),
                    value: number(p.get("value")?)?,
                })
            }),
            ratio_vs_peer: f("ratio_vs_peer"),
        })
    }
}

pub(crate) fn number(v: &Value) -> Option<f64> {
    use erlmcp_flow::codec::Number;
    match v {
        Value::Number(Number::PosInt(u)) => Some(*u as f64),
        Value::Number(Number::NegInt(i)) => Some(*i as f64),
        Value::Number(Number::Float(f)) => Some(*f),
        _ => None,
    }
}

/// The improvement direction implied by a unit, for result files without a `better` field.
pub fn better_for_unit(unit: &str) -> Better {
    match unit {
        "ns" | "us" | "ms" | "s" | "MB" | "bytes" | "B" => Better::Lower,
        _ => Better::Higher,
    }
}

/// The machine a report was measured on.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub cpus: usize,
    /// CPU model name.
    pub model: String,
}

impl Machine {
    /// Describes this machine.
    pub fn this() -> Machine {
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            model,
        }
    }
}

/// The results of one suite run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Suite name.
    pub suite: String,
    /// UTC timestamp, RFC 3339.
    pub timestamp: String,
    /// Where it ran.
    pub machine: Machine,
    /// The results.
    pub results: Vec<BenchResult>,
}

impl Report {
    /// The report as JSON (the format described in this module's documentation).
    pub fn to_json(&self) -> String {
        let v = Value::Object(vec![
            Member::new("suite", self.suite.as_str().into()),
            Member::new("timestamp", self.timestamp.as_str().into()),
            Member::new(
                "machine",
                Value::Object(vec![
                    Member::new("cpus", (self.machine.cpus as u64).into()),
                    Member::new("model", self.machine.model.as_str().into()),
                ]),
            ),
            Member::new(
                "results",
                Value::Array(self.results.iter().map(BenchResult::to_value).collect()),
            ),
        ]);
        v.to_json()
    }

    /// Reads a report written by [`Report::to_json`].
    pub fn from_json(text: &[u8]) -> Result<Report> {
        let v = json::parse(text)?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let machine = v.get("machine");
        let results = match v.get("results") {
            Some(Value::Array(items)) => items
                .iter()
                .map(BenchResult::from_value)
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(Error::invalid("result JSON: missing \"results\" array")),
        };
        Ok(Report {
            suite: s("suite"),
            timestamp: s("timestamp"),
            machine: Machine {
                cpus: machine
                    .and_then(|m| m.get("cpus"))
                    .and_then(number)
                    .unwrap_or(0.0) as usize,
                model: machine
                    .and_then(|m| m.get("model"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            },
            results,
        })
    }
}

/// How hard to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Samples per measurement (the median is reported).
    pub samples: usize,
    /// Target time of one sample.
    pub sample_time: Duration,
}

impl Settings {
    /// Full runs: 21 samples of ~20 ms.
    pub fn full() -> Settings {
        Settings {
            samples: 21,
            sample_time: Duration::from_millis(20),
        }
    }

    /// `--quick`: 7 samples of ~3 ms (a smoke run; numbers are rougher).
    pub fn quick() -> Settings {
        Settings {
            samples: 7,
            sample_time: Duration::from_millis(3),
        }
    }
}

/// Measures `op`, returning the median time per call in nanoseconds.
pub fn median_ns(settings: Settings, mut op: impl FnMut()) -> f64 {
    // Calibrate: double the batch until it takes a tenth of the sample time.
    let mut batch: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        let e = t.elapsed();
        if e >= settings.sample_time / 10 || batch >= 1 << 30 {
            let per = e.as_nanos().max(1) as f64 / batch as f64;
            batch = ((settings.sample_time.as_nanos() as f64 / per) as u64).max(1);
            break;
        }
        batch *= 2;
    }
    let mut samples: Vec<f64> = (0..settings.samples.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                op();
            }
            t.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// A suite's body: runs its measurements, calling the progress callback before each one.
pub type SuiteFn = fn(Settings, &mut dyn FnMut(&str)) -> Vec<BenchResult>;

/// A suite: a name and a function producing results.
pub struct Suite {
    /// Name, as for `--suite`.
    pub name: &'static str,
    /// What it measures.
    pub about: &'static str,
    /// Number of measurements it takes (for progress display).
    pub steps: usize,
    /// Runs the suite; calls `progress(step_name)` before each measurement.
    pub run: SuiteFn,
}

/// All suites, in run order.
pub fn all() -> Vec<Suite> {
    vec![
        codec::serializer_suite(),
        codec::compression_suite(),
        ring::ring_suite(),
        queue::queue_suite(),
        queue::cache_suite(),
        hnsw::hnsw_suite(),
        sched::sched_suite(),
        raft::raft_suite(),
        gossip::gossip_suite(),
        pbft::pbft_suite(),
    ]
}

/// The current UTC time as RFC 3339 (`2026-01-01T00:00:00Z`) and as a file-name stamp
/// (`20260101T000000Z`).
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
    )
}

/// One line of a comparison between two reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Result name.
    pub name: String,
    /// Baseline value.
    pub baseline: f64,
    /// Latest value.
    pub latest: f64,
    /// Relative change in the "worse" direction (0.12 = 12 % worse; negative = better).
    pub worse_by: f64,
    /// True when `worse_by` exceeds the threshold.
    pub regressed: bool,
}

/// What `compare` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareBy {
    /// The measured values.
    Value,
    /// The ratio against the peer measured in the same run, where both reports have one
    /// (results without a peer fall back to their values). On a shared, noisy machine the
    /// ratio moves far less than the absolute numbers, since both sides see the same noise.
    Ratio,
}

/// Compares the results two reports have in common.
pub fn compare(
    baseline: &Report,
    latest: &Report,
    threshold: f64,
    by: CompareBy,
) -> Vec<Comparison> {
    latest
        .results
        .iter()
        .filter_map(|l| {
            let b = baseline.results.iter().find(|b| b.name == l.name)?;
            let (bv, lv, better) = match (by, b.ratio_vs_peer, l.ratio_vs_peer) {
                (CompareBy::Ratio, Some(br), Some(lr)) => (br, lr, Better::Higher),
                _ => (b.value, l.value, l.better),
            };
            if bv == 0.0 {
                return None;
            }
            let worse_by = match better {
                Better::Lower => lv / bv - 1.0,
                Better::Higher => 1.0 - lv / bv,
            };
            Some(Comparison {
                name: l.name.clone(),
                baseline: bv,
                latest: lv,
                worse_by,
                regressed: worse_by > threshold,
            })
        })
        .collect()
}

/// Formats results as a text table.
pub fn table(results: &[BenchResult]) -> String {
    let fmt = |v: f64| {
        if v == 0.0 {
            "0".to_owned()
        } else if v.abs() >= 1e6 || v.abs() < 1e-2 {
            format!("{v:.3e}")
        } else if v.abs() >= 100.0 {
            format!("{v:.0}")
        } else if v.abs() < 1.0 {
            // Fractions (recall, ratios below 1) differ in the third and fourth places.
            format!("{v:.4}")
        } else {
            format!("{v:.2}")
        }
    };
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), fmt);
    let mut rows = vec![[
        "metric".to_owned(),
        "value".to_owned(),
        "unit".to_owned(),
        "seed target".to_owned(),
        "goal".to_owned(),
        "peer".to_owned(),
        "ratio".to_owned(),
        "met".to_owned(),
    ]];
    for r in results {
        rows.push([
            r.name.clone(),
            fmt(r.value),
            r.unit.clone(),
            opt(r.seed_target),
            opt(r.goal),
            r.peer
                .as_ref()
                .map_or("-".to_owned(), |p| format!("{} {}", p.name, fmt(p.value))),
            r.ratio_vs_peer
                .map_or("-".to_owned(), |x| format!("{x:.2}x")),
            match r.met() {
                Some(true) => "yes".to_owned(),
                Some(false) => "NO".to_owned(),
                None => "-".to_owned(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * 7));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(values: &[(&str, f64, &str)]) -> Report {
        Report {
            suite: "t".into(),
            timestamp: utc_now().0,
            machine: Machine::this(),
            results: values
                .iter()
                .map(|(n, v, u)| BenchResult::new(*n, *v, u, better_for_unit(u)))
                .collect(),
        }
    }

    #[test]
    fn report_json_round_trips() {
        let mut r = report(&[("decode_200b", 52.5, "ns"), ("zlib_ratio_text", 4.1, "x")]);
        r.results[0] = r.results[0]
            .clone()
            .with_peer("serde_json", 700.0)
            .with_targets(Some(140.0), Some(70.0));
        let back = Report::from_json(r.to_json().as_bytes()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.results[0].met(), Some(true));
        assert!((back.results[0].ratio_vs_peer.unwrap() - 700.0 / 52.5).abs() < 1e-9);
    }

    #[test]
    fn compare_flags_regressions_in_the_right_direction() {
        let base = report(&[
            ("lat", 100.0, "ns"),
            ("tput", 100.0, "msg/s"),
            ("x", 1.0, "ns"),
        ]);
        let latest = report(&[
            ("lat", 115.0, "ns"),
            ("tput", 95.0, "msg/s"),
            ("y", 1.0, "ns"),
        ]);
        let c = compare(&base, &latest, 0.10, CompareBy::Value);
        assert_eq!(c.len(), 2);
        assert!(c[0].regressed, "latency up 15 %");
        assert!(!c[1].regressed, "throughput down 5 %");
        let c = compare(&latest, &base, 0.10, CompareBy::Value);
        assert!(c.iter().all(|c| !c.regressed));
        // By ratio: the machine got 20 % slower for both sides, the ratio held.
        let mut b = report(&[("dec", 100.0, "ns")]);
        b.results[0] = b.results[0].clone().with_peer("p", 1000.0);
        let mut l = report(&[("dec", 120.0, "ns")]);
        l.results[0] = l.results[0].clone().with_peer("p", 1200.0);
        assert!(compare(&b, &l, 0.10, CompareBy::Value)[0].regressed);
        assert!(!compare(&b, &l, 0.10, CompareBy::Ratio)[0].regressed);
        let mut worse = report(&[("dec", 150.0, "ns")]);
        worse.results[0] = worse.results[0].clone().with_peer("p", 1000.0);
        assert!(compare(&b, &worse, 0.10, CompareBy::Ratio)[0].regressed);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let (ts, stamp) = utc_now();
        assert_eq!(ts.len(), 20);
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T');
        assert_eq!(stamp.len(), 16);
        assert!(ts.starts_with("20"));
    }

    #[test]
    #[cfg_attr(miri, ignore = "timing loop; no unsafe code here")]
    fn median_measures_something() {
        let mut x = 0u64;
        let ns = median_ns(Settings::quick(), || {
            x = std::hint::black_box(x.wrapping_add(1));
        });
        assert!(ns > 0.0 && ns < 1e6);
    }
}

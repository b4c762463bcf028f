//! The one scheduling priority of the engine: carried by every envelope
//! (`codec::Envelope::priority`) and used by the task queue to order its tasks. Both modules
//! re-export it (`codec::Priority`, `queue::Priority`); it lives here, below both, so that
//! neither has to depend on the other for it.

use rkyv::{Archive, Deserialize, Serialize};

/// Scheduling priority; lower codes are served first.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum Priority {
    /// Served before everything else.
    Critical = 0,
    /// Served before normal work.
    High = 1,
    /// The default.
    #[default]
    Normal = 2,
    /// Served when nothing else waits; evicted first by a task queue whose drop policy is
    /// `DropPolicy::LowPriority`.
    Low = 3,
}

impl Priority {
    /// All priorities, highest first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// The priority with the stable code `code` (0 = critical … 3 = low, as in the C ABI's
    /// `EMF_PRIORITY_*`).
    pub fn from_code(code: u32) -> Option<Priority> {
        Priority::ALL.get(code as usize).copied()
    }

    /// A lower-case name (`"critical"`, `"high"`, `"normal"`, `"low"`).
    pub fn name(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl ArchivedPriority {
    /// The native priority.
    pub fn to_native(self) -> Priority {
        match self {
            ArchivedPriority::Critical => Priority::Critical,
            ArchivedPriority::High => Priority::High,
            ArchivedPriority::Normal => Priority::Normal,
            ArchivedPriority::Low => Priority::Low,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_stable() {
        for (code, p) in Priority::ALL.into_iter().enumerate() {
            assert_eq!(p as u32, code as u32);
            assert_eq!(Priority::from_code(code as u32), Some(p));
        }
        assert_eq!(Priority::from_code(4), None);
        let names = Priority::ALL.map(Priority::name);
        assert_eq!(names, ["critical", "high", "normal", "low"]);
        assert_eq!(Priority::default(), Priority::Normal);
        assert!(
            Priority::Critical < Priority::Low,
            "lower codes are served first"
        );
    }
}

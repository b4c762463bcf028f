//! Sequence-numbered frames, for tests, benchmarks and the `erlmcp-flow ring` tools: each
//! frame carries a producer id, a sequence number and a payload pattern derived from both,
//! so a consumer can prove there was no loss, duplication, reordering or corruption.

/// Smallest frame: producer id (4 bytes) + sequence (8 bytes).
pub const MIN_LEN: usize = 12;

fn pattern(id: u32, seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31) ^ (id as u8) ^ (i as u8)
}

/// Fills `buf` (at least [`MIN_LEN`] bytes) with frame `seq` of producer `id`.
pub fn fill(buf: &mut [u8], id: u32, seq: u64) {
    buf[..4].copy_from_slice(&id.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in buf.iter_mut().enumerate().skip(MIN_LEN) {
        *b = pattern(id, seq, i);
    }
}

/// Checks a frame and returns its `(producer id, sequence)`; `None` when the frame is too
/// short or its payload does not match its header (corruption).
pub fn check(frame: &[u8]) -> Option<(u32, u64)> {
    if frame.len() < MIN_LEN {
        return None;
    }
    let id = u32::from_le_bytes(frame[..4].try_into().ok()?);
    let seq = u64::from_le_bytes(frame[4..12].try_into().ok()?);
    frame
        .iter()
        .enumerate()
        .skip(MIN_LEN)
        .all(|(i, &b)| b == pattern(id, seq, i))
        .then_some((id, seq))
}

/// Tracks per-producer sequences on the consumer side.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    next: std::collections::HashMap<u32, u64>,
    /// Frames accepted.
    pub received: u64,
}

impl Tracker {
    /// Records a frame; an error says what was wrong (corrupt, gap, duplicate, reorder).
    pub fn record(&mut self, frame: &[u8]) -> Result<(u32, u64), String> {
        let (id, seq) =
            check(frame).ok_or_else(|| format!("corrupt frame of {} bytes", frame.len()))?;
        let next = self.next.entry(id).or_insert(0);
        if seq != *next {
            return Err(format!(
                "producer {id}: expected sequence {}, got {seq}",
                *next
            ));
        }
        *next += 1;
        self.received += 1;
        Ok((id, seq))
    }

    /// The next expected sequence of producer `id`.
    pub fn next_of(&self, id: u32) -> u64 {
        self.next.get(&id).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_check_and_detect_damage() {
        let mut f = vec![0u8; 64];
        fill(&mut f, 7, 42);
        assert_eq!(check(&f), Some((7, 42)));
        f[40] ^= 1;
        assert_eq!(check(&f), None);
        assert_eq!(check(&[0u8; 5]), None);
        let mut t = Tracker::default();
        let mut g = vec![0u8; 12];
        fill(&mut g, 1, 0);
        assert!(t.record(&g).is_ok());
        fill(&mut g, 1, 2);
        assert!(t.record(&g).unwrap_err().contains("expected sequence 1"));
    }
}

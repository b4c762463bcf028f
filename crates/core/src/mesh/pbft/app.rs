//! [`OrderLog`]: the agreed order as an application.

use crate::error::{Error, Result};
use crate::pbft::App;

/// An [`App`] that records the agreed order: each operation is answered with its position in
/// it and a running checksum of everything executed so far, so two replicas (or a client
/// comparing runs) that disagree on the order disagree on the result.
///
/// The result of an operation is 16 bytes: its 1-based position (`u64` little-endian), then
/// the CRC32C chain over every `(client, op)` executed up to and including it, widened to
/// `u64` little-endian. The snapshot is the same 16 bytes of the last execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderLog {
    count: u64,
    chain: u32,
}

impl OrderLog {
    /// An empty log.
    pub fn new() -> OrderLog {
        OrderLog::default()
    }

    /// Operations executed.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when nothing was executed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The running checksum of everything executed.
    pub fn chain(&self) -> u32 {
        self.chain
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.count.to_le_bytes());
        v.extend_from_slice(&u64::from(self.chain).to_le_bytes());
        v
    }

    /// Splits a result (or snapshot) into its position and chain; `None` for other bytes.
    pub fn decode_result(result: &[u8]) -> Option<(u64, u32)> {
        if result.len() != 16 {
            return None;
        }
        let count = u64::from_le_bytes(result[..8].try_into().ok()?);
        let chain = u64::from_le_bytes(result[8..].try_into().ok()?);
        Some((count, u32::try_from(chain).ok()?))
    }
}

impl App for OrderLog {
    fn execute(&mut self, client: u64, op: &[u8]) -> Vec<u8> {
        self.count += 1;
        let c = crate::checksum::crc32c_append(self.chain, &client.to_le_bytes());
        self.chain = crate::checksum::crc32c_append(c, op);
        self.encode()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.encode()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let (count, chain) = OrderLog::decode_result(snapshot)
            .ok_or_else(|| Error::corrupt("order log: a snapshot is 16 bytes"))?;
        *self = OrderLog { count, chain };
        Ok(())
    }
}

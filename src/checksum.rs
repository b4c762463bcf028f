//! CRC32C (Castagnoli), the checksum of ring frames, archives and index files: hardware
//! accelerated where the CPU has it (the `crc32c` crate: SSE 4.2 / ARMv8 CRC instructions
//! with a table-driven fallback), and a plain table under Miri, which cannot run those
//! instructions.

/// The CRC32C of `bytes`.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(not(miri))]
    {
        ::crc32c::crc32c(bytes)
    }
    #[cfg(miri)]
    {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_vectors() {
        // RFC 3720 (iSCSI) B.4 test vectors.
        assert_eq!(super::crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(super::crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
    }
}

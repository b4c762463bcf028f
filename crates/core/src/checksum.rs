//! CRC32C (Castagnoli), the one checksum of the engine: index files, archives made with a
//! checksum, and ring frames made with one all use these functions.
//!
//! The work is the `crc32c` crate's: the SSE4.2 (x86-64) or ARMv8 CRC instructions when the
//! CPU has them, chosen at run time, and a table-driven fallback elsewhere. A CRC32C detects
//! every single-bit error and every burst of up to 32 bits, whatever the length, and misses a
//! random corruption with probability 2⁻³². Under Miri, which cannot run those instructions,
//! a bitwise loop computes the same function.

/// The CRC32C of `bytes`.
#[inline]
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_append(0, bytes)
}

/// Continues `crc` (the CRC32C of the bytes before) over `bytes`:
/// `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
#[inline]
pub(crate) fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(not(miri))]
    {
        crc32c::crc32c_append(crc, bytes)
    }
    #[cfg(miri)]
    {
        let mut crc = !crc;
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
    use super::*;

    #[test]
    fn known_answers_and_appending() {
        // The check value of CRC-32C (RFC 3720, iSCSI) and an empty input.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 B.4: 32 bytes of zeros, 32 bytes of ones.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for cut in [0, 1, 7, 64, 999, 1000] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data));
        }
    }
}

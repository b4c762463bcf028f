//! CRC32C (Castagnoli), the one checksum of the engine: index files, archives made with a
//! checksum, and ring frames made with one all use these functions.
//!
//! The work is the `crc32c` crate's: the SSE4.2 (x86-64) or ARMv8 CRC instructions when the
//! CPU has them, chosen at run time, and a table-driven fallback elsewhere. A CRC32C detects
//! every single-bit error and every burst of up to 32 bits, whatever the length, and misses a
//! random corruption with probability 2⁻³².

/// The CRC32C of `bytes`.
#[inline]
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continues `crc` (the CRC32C of the bytes before) over `bytes`:
/// `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
#[inline]
pub(crate) fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers_and_appending() {
        // The check value of CRC-32C (RFC 3720, iSCSI) and an empty input.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for cut in [0, 1, 7, 64, 999, 1000] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data));
        }
    }
}

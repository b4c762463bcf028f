//! zlib compression for payloads above a threshold.
//!
//! The format is zlib (RFC 1950), which Erlang's `zlib:uncompress/1`, Python's
//! `zlib.decompress` and every C zlib read. [`decompress`] takes an output limit from the
//! caller, so a small hostile input cannot expand into gigabytes (a decompression bomb), and
//! it rejects trailing bytes after the zlib stream.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::{Error, ErrorKind, Result};

/// The default threshold: payloads under 1 KiB are sent as they are.
pub const DEFAULT_THRESHOLD: usize = 1024;

/// Compressed output is kept only when smaller than this fraction of the input.
pub const KEEP_RATIO: f64 = 0.8;

/// What [`compress_if_needed`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compressed<'a> {
    /// The input, unchanged: under the threshold, or it did not shrink enough.
    Raw(&'a [u8]),
    /// A zlib stream smaller than [`KEEP_RATIO`] × the input.
    Zlib(Vec<u8>),
}

impl Compressed<'_> {
    /// The bytes to send.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Compressed::Raw(b) => b,
            Compressed::Zlib(v) => v,
        }
    }

    /// True when the bytes are a zlib stream.
    pub fn is_compressed(&self) -> bool {
        matches!(self, Compressed::Zlib(_))
    }
}

/// Compresses `input` with zlib when it is at least `threshold` bytes long and the result is
/// smaller than 0.8 × its length; otherwise hands the input back.
///
/// ```
/// use erlmcp_flow::codec::{compress_if_needed, decompress, Compressed};
/// let text = "the quick brown fox jumps over the lazy dog. ".repeat(100);
/// let c = compress_if_needed(text.as_bytes(), 1024);
/// assert!(c.is_compressed());
/// assert_eq!(decompress(c.bytes(), 1 << 20).unwrap(), text.as_bytes());
/// assert_eq!(compress_if_needed(b"short", 1024), Compressed::Raw(b"short"));
/// ```
pub fn compress_if_needed(input: &[u8], threshold: usize) -> Compressed<'_> {
    if input.len() < threshold || input.is_empty() {
        return Compressed::Raw(input);
    }
    let limit = (input.len() as f64 * KEEP_RATIO) as usize;
    // Output larger than `limit` is useless, so the buffer never grows past it.
    let mut out = Vec::with_capacity(limit.min(64 * 1024 * 1024));
    let mut z = Compress::new(Compression::default(), true);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Compressed::Raw(input);
            }
            out.reserve_exact(limit - out.len());
        }
        let consumed = z.total_in() as usize;
        match z.compress_vec(&input[consumed..], &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => break,
            Ok(_) => {}
            Err(_) => return Compressed::Raw(input),
        }
    }
    if out.len() < limit {
        Compressed::Zlib(out)
    } else {
        Compressed::Raw(input)
    }
}

/// Compresses `input` with zlib unconditionally (default level).
pub fn compress(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let mut z = Compress::new(Compression::default(), true);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(1024));
        }
        let consumed = z.total_in() as usize;
        match z.compress_vec(&input[consumed..], &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return out,
            Ok(_) => {}
            // Compression of an in-memory slice into a growing buffer does not fail.
            Err(_) => return out,
        }
    }
}

/// Decompresses a zlib stream whose output must not exceed `max_len` bytes.
///
/// Errors: `TooLarge` when the output would exceed `max_len`; `Corrupt` for a bad, truncated
/// or trailing-garbage stream.
pub fn decompress(input: &[u8], max_len: usize) -> Result<Vec<u8>> {
    let mut z = Decompress::new(true);
    // One byte past the limit is allowed into the buffer, to tell "exactly max_len" from
    // "more than max_len". The first guess is capped so a large input cannot ask for an
    // absurd allocation up front.
    let cap_limit = max_len.saturating_add(1);
    let first = input
        .len()
        .saturating_mul(4)
        .clamp(64, 1 << 20)
        .min(cap_limit);
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(first)
        .map_err(|_| Error::new(ErrorKind::TooLarge, "cannot allocate the output buffer"))?;
    loop {
        if out.len() == out.capacity() {
            if out.len() > max_len {
                return Err(too_large(max_len));
            }
            // Grow geometrically, up to one byte past the limit.
            let want = out
                .capacity()
                .saturating_mul(2)
                .min(cap_limit)
                .max(out.len() + 1);
            out.try_reserve_exact(want - out.len()).map_err(|_| {
                Error::new(ErrorKind::TooLarge, "cannot allocate the output buffer")
            })?;
        }
        let consumed = z.total_in() as usize;
        let before_out = z.total_out();
        let status = z
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::None)
            .map_err(|e| Error::corrupt(format!("zlib stream is corrupt: {e}")))?;
        if out.len() > max_len {
            return Err(too_large(max_len));
        }
        match status {
            Status::StreamEnd => {
                if (z.total_in() as usize) != input.len() {
                    return Err(Error::corrupt("trailing bytes after the zlib stream"));
                }
                return Ok(out);
            }
            Status::Ok | Status::BufError => {
                let progressed = z.total_in() as usize != consumed || z.total_out() != before_out;
                if !progressed && out.len() < out.capacity() {
                    return Err(Error::corrupt("zlib stream is truncated"));
                }
            }
        }
    }
}

fn too_large(max_len: usize) -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!("decompressed data exceeds the limit of {max_len} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        let words = [
            "agent",
            "task",
            "result",
            "tools/call",
            "resource",
            "memory",
            "vector",
        ];
        let mut s = String::new();
        let mut x = 12345u32;
        while s.len() < n {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            s.push_str(words[(x >> 16) as usize % words.len()]);
            s.push(' ');
        }
        s.into_bytes()
    }

    #[test]
    #[cfg_attr(miri, ignore = "slow under miri; no unsafe code here")]
    fn round_trip_and_threshold() {
        for n in [0, 1, 1023, 1024, 4096, 1 << 20] {
            let t = text(n);
            let c = compress_if_needed(&t, DEFAULT_THRESHOLD);
            if t.len() < DEFAULT_THRESHOLD {
                assert!(!c.is_compressed());
            } else {
                assert!(c.is_compressed(), "{n}");
                assert!((c.bytes().len() as f64) < t.len() as f64 * KEEP_RATIO);
            }
            let back = if c.is_compressed() {
                decompress(c.bytes(), t.len()).unwrap()
            } else {
                c.bytes().to_vec()
            };
            assert_eq!(back, t);
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "slow under miri; no unsafe code here")]
    fn incompressible_input_is_kept_raw() {
        let mut x = 0x9E3779B97F4A7C15u64;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(
            compress_if_needed(&noise, 1024),
            Compressed::Raw(&noise[..])
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "slow under miri; no unsafe code here")]
    fn limit_stops_bombs() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = compress(&zeros);
        assert!(bomb.len() < 20_000);
        let e = decompress(&bomb, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert_eq!(decompress(&bomb, 10 << 20).unwrap().len(), 10 << 20);
        // Exactly at the limit is fine.
        let small = compress(&[7u8; 100]);
        assert_eq!(decompress(&small, 100).unwrap(), vec![7u8; 100]);
        assert_eq!(
            decompress(&small, 99).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
        // No limit at all (SIZE_MAX from C) neither overflows nor crawls.
        assert_eq!(decompress(&bomb, usize::MAX).unwrap().len(), 10 << 20);
        assert_eq!(
            decompress(&small, 0).unwrap_err().kind(),
            ErrorKind::TooLarge
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "slow under miri; no unsafe code here")]
    fn corrupt_streams_are_errors() {
        let good = compress(&text(5000));
        assert_eq!(decompress(b"", 100).unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(
            decompress(b"hello world", 100).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        for cut in [1, 2, 10, good.len() / 2, good.len() - 1] {
            let e = decompress(&good[..cut], 1 << 20).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"xx");
        assert_eq!(
            decompress(&trailing, 1 << 20).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        for i in (0..good.len()).step_by(7) {
            let mut flipped = good.clone();
            flipped[i] ^= 0x10;
            // Either an error or (rarely, in stored data) some output; never a panic. The
            // adler32 trailer makes silent acceptance of a changed payload impossible.
            if let Ok(out) = decompress(&flipped, 1 << 20) {
                assert_eq!(out, text(5000));
            }
        }
    }
}

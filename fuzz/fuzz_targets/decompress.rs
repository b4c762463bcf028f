//! zlib streams from an untrusted peer, with a small output limit: never more output than
//! the limit, never a panic.
#![no_main]
use erlmcp_flow::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limit = 1 << 16;
    if let Ok(out) = codec::decompress(data, limit) {
        assert!(out.len() <= limit);
        let again = codec::compress::compress(&out);
        assert_eq!(codec::decompress(&again, limit).unwrap(), out);
    }
});

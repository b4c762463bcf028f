//! JSON text from an untrusted client: parse, archive, decode and write back.
//! The bridge's output must be a fixed point: JSON -> archive -> JSON -> archive -> same JSON.
#![no_main]
use erlmcp_flow::codec::jsonrpc::{self, Metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let meta = Metadata { created_at_us: 1, ..Metadata::default() };
    if let Ok(archive) = jsonrpc::json_to_archive(data, meta) {
        let json = jsonrpc::archive_to_json(&archive).expect("own archive decodes");
        let again = jsonrpc::json_to_archive(json.as_bytes(), meta).expect("own JSON parses");
        assert_eq!(jsonrpc::archive_to_json(&again).unwrap(), json);
    }
});

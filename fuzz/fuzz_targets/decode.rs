//! Archive bytes from an untrusted peer: validate, then read every field and write JSON.
//! Must never panic or crash; valid archives must round-trip through JSON.
#![no_main]
use erlmcp_flow::codec::{self, jsonrpc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = codec::decode(data) {
        let json = jsonrpc::to_json(msg);
        for e in msg.envelopes() {
            let _ = (e.method(), e.kind, e.priority, e.params.as_ref(), e.result.as_ref());
        }
        // Whatever validated must be readable back as JSON-RPC (it may be rejected as
        // invalid JSON-RPC only when fields the bridge requires are missing).
        if let Ok(again) = jsonrpc::from_json(json.as_bytes()) {
            let bytes = codec::encode(&again).expect("re-encode");
            assert!(codec::decode(&bytes).is_ok());
        }
        let _ = codec::to_owned(msg);
    }
});

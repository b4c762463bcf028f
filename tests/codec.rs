//! JSON-RPC bridge round trips and hostile-archive tests for the codec.

use erlmcp_flow::codec::{
    self, json, jsonrpc, Envelope, Kind, Member, Message, Number, Priority, Value,
};
use erlmcp_flow::ErrorKind;
use erlmcp_flow_bench::suite::samples;

/// Messages covering the MCP traffic the issue names.
fn corpus() -> Vec<String> {
    let big_text: String =
        "Lorem ipsum dolor sit amet, ünïcödé ✓ 漢字 🎉\n\t\"quoted\"\\ ".repeat(4000);
    vec![
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"roots":{"listChanged":true},"sampling":{},"elicitation":{}},"clientInfo":{"name":"erlmcp","title":"erlmcp client","version":"1.0.0"}}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":"list-1","method":"tools/list","params":{"cursor":"abc"}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"deploy","arguments":{"targets":[{"host":"a","ports":[80,443],"opts":{"tls":true,"weights":[0.5,0.25,1e-9]}},{"host":"b","ports":[],"opts":null}],"deep":{"l1":{"l2":{"l3":{"l4":[[[["x"]]]]}}}}},"_meta":{"progressToken":"tok-9"}}}"#.to_owned(),
        format!(r#"{{"jsonrpc":"2.0","id":3,"result":{{"contents":[{{"uri":"file:///big.txt","mimeType":"text/plain","text":{}}}]}}}}"#, Value::String(big_text).to_json()),
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok-9","progress":50,"total":100,"message":"halfway"}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":4,"error":{"code":-32602,"message":"Unknown tool: nope","data":{"tool":"nope","hint":["a","b"]}}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":"ü-ñ-🎉","method":"tools/call","params":{"name":"翻訳","arguments":{"text":"Grüße, 世界! \u0000 \u001f \ud83d\ude00"}}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"result":{"big":18446744073709551616,"neg":-9223372036854775809,"max":18446744073709551615,"min":-9223372036854775808,"huge":1e400}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":5,"result":{"floats":[0.1,-0.0,1.7976931348623157e308,5e-324,2.2250738585072014e-308,3.141592653589793,1E+2,-1.5e-10,100.0]}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":6,"result":{},"x-trace":{"span":"abc","sampled":true},"x-order":[3,2,1]}"#.to_owned(),
        r#"[{"jsonrpc":"2.0","id":7,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}},{"jsonrpc":"2.0","id":8,"result":{"ok":true}}]"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":9,"method":"sum","params":[1,2,3]}"#.to_owned(),
        samples::tools_call_small(),
        samples::tools_list_2k(),
        samples::resource_read_64k(),
    ]
}

/// Canonical form: top-level members of each message sorted by key (the bridge writes them in
/// canonical order); everything below keeps its order.
fn canonical(v: Value) -> Value {
    fn sort_top(v: Value) -> Value {
        match v {
            Value::Object(mut m) => {
                m.sort_by(|a, b| a.key.cmp(&b.key));
                Value::Object(m)
            }
            other => other,
        }
    }
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(sort_top).collect()),
        other => sort_top(other),
    }
}

#[test]
fn json_archive_json_is_lossless() {
    for text in corpus() {
        let archive = jsonrpc::json_to_archive(text.as_bytes(), Default::default())
            .unwrap_or_else(|e| panic!("{e}: {text:.200}"));
        let back = jsonrpc::archive_to_json(&archive).unwrap();
        let a = canonical(json::parse(text.as_bytes()).unwrap());
        let b = canonical(json::parse(back.as_bytes()).unwrap());
        assert_eq!(a, b, "\n in: {text:.300}\nout: {back:.300}");
        // A second trip is byte-identical: the output is a fixed point.
        let again = jsonrpc::archive_to_json(
            &jsonrpc::json_to_archive(back.as_bytes(), Default::default()).unwrap(),
        )
        .unwrap();
        assert_eq!(again, back);
    }
}

#[test]
fn bridge_agrees_with_serde_json_where_it_can() {
    // serde_json is an independent reader: where it represents a message exactly (no big
    // integers, no duplicate keys), our output must be the same JSON value.
    for text in corpus() {
        if text.contains("1e400") || text.contains("123456789012345678901234567890") {
            continue;
        }
        let archive = jsonrpc::json_to_archive(text.as_bytes(), Default::default()).unwrap();
        let back = jsonrpc::archive_to_json(&archive).unwrap();
        let a: serde_json::Value = serde_json::from_str(&text).unwrap();
        let b: serde_json::Value = serde_json::from_str(&back).unwrap();
        assert_eq!(a, b, "{text:.200}");
    }
}

#[test]
fn kinds_and_fields_are_mapped() {
    let view_of = |s: &str| {
        let m = jsonrpc::from_json(s.as_bytes()).unwrap();
        codec::encode(&m).unwrap()
    };
    let bytes = view_of(&corpus()[3]);
    let m = codec::decode(&bytes).unwrap();
    let e = &m.envelopes()[0];
    assert_eq!(e.kind.to_native(), Kind::Request);
    assert_eq!(e.method(), Some("tools/call"));
    let args = e.params.as_ref().unwrap().get("arguments").unwrap();
    let t0 = match args.get("targets").unwrap() {
        codec::ArchivedValue::Array(a) => &a[0],
        _ => panic!(),
    };
    assert_eq!(t0.get("host").unwrap().as_str(), Some("a"));

    let bytes = view_of(&corpus()[13]);
    let m = codec::decode(&bytes).unwrap();
    assert!(m.is_batch());
    let kinds: Vec<Kind> = m.envelopes().iter().map(|e| e.kind.to_native()).collect();
    assert_eq!(kinds, [Kind::Request, Kind::Notification, Kind::Response]);

    let bytes = view_of(&corpus()[7]);
    let m = codec::decode(&bytes).unwrap();
    let e = &m.envelopes()[0];
    assert_eq!(e.kind.to_native(), Kind::Error);
    assert_eq!(e.error.as_ref().unwrap().code.to_native(), -32602);

    let big = jsonrpc::from_json(corpus()[10].as_bytes()).unwrap();
    let r = big.envelopes()[0].result.as_ref().unwrap();
    assert_eq!(
        r.get("big"),
        Some(&Value::Number(Number::Big("18446744073709551616".into())))
    );
    assert_eq!(r.get("max"), Some(&Value::Number(Number::PosInt(u64::MAX))));
}

#[test]
fn metadata_travels_in_the_archive() {
    let meta = jsonrpc::Metadata {
        priority: Priority::Critical,
        created_at_us: 1_700_000_000_000_000,
        deadline_us: 1_700_000_001_000_000,
    };
    let a = jsonrpc::json_to_archive(samples::tools_call_small().as_bytes(), meta).unwrap();
    let e = &codec::decode(&a).unwrap().envelopes()[0];
    assert_eq!(e.priority.to_native(), Priority::Critical);
    assert_eq!(e.created_at_us.to_native(), 1_700_000_000_000_000);
    assert_eq!(e.deadline_us.to_native(), 1_700_000_001_000_000);
    let owned = codec::to_owned(codec::decode(&a).unwrap()).unwrap();
    assert_eq!(owned.envelopes()[0].priority, Priority::Critical);
}

#[test]
fn tasks_render_as_requests() {
    let mut t = Envelope::task(
        "agents/run",
        Value::Array(vec![1u64.into()]),
        Priority::High,
    );
    t.id = Some("t-1".into());
    let bytes = codec::encode(&t.into()).unwrap();
    let json = jsonrpc::archive_to_json(&bytes).unwrap();
    assert_eq!(
        json,
        r#"{"jsonrpc":"2.0","id":"t-1","method":"agents/run","params":[1]}"#
    );
    let r = Envelope {
        kind: Kind::Result,
        id: Some(1u64.into()),
        ..Default::default()
    };
    let json = jsonrpc::archive_to_json(&codec::encode(&r.into()).unwrap()).unwrap();
    assert_eq!(json, r#"{"jsonrpc":"2.0","id":1,"result":null}"#);
}

#[test]
fn invalid_json_rpc_is_rejected_with_a_reason() {
    for (bad, why) in [
        ("", "unexpected end"),
        ("xyz", "expected a JSON value"),
        ("[]", "must not be empty"),
        ("42", "must be a JSON object"),
        (r#"{"id":1,"method":"x"}"#, "jsonrpc"),
        (r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, "2.0"),
        (r#"{"jsonrpc":"2.0","id":1}"#, "needs"),
        (r#"{"jsonrpc":"2.0","id":1,"method":3}"#, "method"),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
            "params",
        ),
        (r#"{"jsonrpc":"2.0","id":[1],"method":"x"}"#, "id"),
        (r#"{"jsonrpc":"2.0","result":1}"#, "needs an \"id\""),
        (
            r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}"#,
            "only one",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"m"}}"#,
            "integer",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"error":{"message":"m"}}"#,
            "missing",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"x","method":"y"}"#,
            "duplicate",
        ),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"x"}, 5]"#,
            "batch item 1",
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"method\":\"\u{0}\"}",
            "control character",
        ),
    ] {
        let e = jsonrpc::from_json(bad.as_bytes()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
        assert!(e.message().contains(why), "{bad}: {e}");
    }
    let e = jsonrpc::from_json(b"{\"jsonrpc\":\"2.0\",\"method\":\"\xc3\x28\"}").unwrap_err();
    assert!(e.message().contains("UTF-8"), "{e}");
}

#[test]
fn truncated_and_garbage_archives_are_corrupt() {
    for text in corpus().iter().take(14) {
        let archive = jsonrpc::json_to_archive(text.as_bytes(), Default::default()).unwrap();
        let step = (archive.len() / 300).max(1);
        for cut in (0..archive.len()).step_by(step) {
            // The header's length makes every strict prefix corrupt, batches included.
            let e = codec::decode(&archive[..cut]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt);
        }
        let mut padded = archive.to_vec();
        padded.push(0);
        assert_eq!(
            codec::decode(&padded).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }
    let mut x = 0x1234_5678_9abc_def0u64;
    for len in [0usize, 1, 3, 4, 8, 16, 64, 1000] {
        for _ in 0..200 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Ok(m) = codec::decode(&garbage) {
                let _ = jsonrpc::to_json(m);
            }
        }
    }
}

#[test]
fn bit_flips_give_corrupt_or_a_safe_view() {
    let text = &corpus()[3];
    let archive = jsonrpc::json_to_archive(text.as_bytes(), Default::default()).unwrap();
    let original = jsonrpc::archive_to_json(&archive).unwrap();
    for (i, why) in [(0, "magic"), (3, "version"), (4, "length")] {
        let mut b = archive.to_vec();
        b[i] ^= 0x40;
        let e = codec::decode(&b).unwrap_err();
        assert!(e.message().contains(why), "{e}");
    }
    let mut rejected = 0;
    for i in 0..archive.len() {
        for bit in 0..8 {
            let mut b = archive.to_vec();
            b[i] ^= 1 << bit;
            match codec::decode(&b) {
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Corrupt);
                    rejected += 1;
                }
                // A flip in string bytes or a number changes content but keeps a valid
                // structure; reading it must still be safe.
                Ok(m) => {
                    let s = jsonrpc::to_json(m);
                    let _ = s.len();
                }
            }
        }
    }
    assert!(rejected > 0);
    assert!(!original.is_empty());
}

/// Issue 9, item 7: in an archive encoded with a checksum, every single-bit flip — in the
/// header, the checksum, a string, a number, a length — is refused as `Corrupt`. Without the
/// checksum a flip inside a string or a number leaves a valid archive of another message
/// (the test above), which is why the option exists.
#[test]
fn every_bit_flip_of_a_checksummed_archive_is_corrupt() {
    let corpus = corpus();
    let batch = format!("[{},{}]", corpus[0], corpus[3]);
    let texts = [corpus[3].as_str(), corpus[0].as_str(), batch.as_str()];
    let mut enc = codec::Encoder::with_options(codec::EncodeOptions::CHECKSUM);
    let mut frame = vec![0u8; 4096];
    for text in texts {
        let archive = jsonrpc::json_to_archive_with(
            text.as_bytes(),
            Default::default(),
            codec::EncodeOptions::CHECKSUM,
        )
        .unwrap();
        assert!(codec::has_checksum(&archive));
        assert!(codec::decode(&archive).is_ok());
        // The encoder's other two ways of writing give the same bytes.
        let msg = codec::to_owned(codec::decode(&archive).unwrap()).unwrap();
        assert_eq!(enc.encode(&msg).unwrap(), &archive[..]);
        let n = enc.encode_into_slice(&msg, &mut frame).unwrap();
        assert_eq!(&frame[..n], &archive[..]);
        let mut accepted = Vec::new();
        for bit in 0..archive.len() * 8 {
            let mut b = archive.to_vec();
            b[bit / 8] ^= 1 << (bit % 8);
            match codec::decode(&b) {
                Ok(_) => accepted.push(bit),
                Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupt, "bit {bit}: {e}"),
            }
        }
        assert!(
            accepted.is_empty(),
            "{} of {} single-bit flips accepted (bits {:?}...)",
            accepted.len(),
            archive.len() * 8,
            &accepted[..accepted.len().min(8)]
        );
        // A flip in the payload is named for what it is.
        let mut b = archive.to_vec();
        let last = b.len() - 1;
        b[last] ^= 4;
        let e = codec::decode(&b).unwrap_err();
        assert!(e.message().contains("checksum mismatch"), "{e}");
    }
}

/// Archives without the checksum keep their bytes (the default); a checksummed archive is the
/// same payload behind a 12-byte header, and both decode to the same message, in place at any
/// address, and through `decode_unchecked`.
#[test]
fn checksummed_and_plain_archives_decode_alike() {
    // A fixed creation time: "now" would differ between the two encodings.
    let meta = jsonrpc::Metadata {
        created_at_us: 1_700_000_000_000_000,
        ..Default::default()
    };
    for text in corpus().iter().take(14) {
        let plain = jsonrpc::json_to_archive(text.as_bytes(), meta).unwrap();
        let sealed =
            jsonrpc::json_to_archive_with(text.as_bytes(), meta, codec::EncodeOptions::CHECKSUM)
                .unwrap();
        assert_eq!(plain[3], codec::FORMAT_VERSION);
        assert!(!codec::has_checksum(&plain));
        assert_eq!(sealed[3], codec::FORMAT_VERSION | codec::FLAG_CHECKSUM);
        assert_eq!(sealed.len(), plain.len() + codec::CHECKSUM_LEN);
        assert_eq!(
            sealed[4..8],
            plain[4..8],
            "the length counts the payload only"
        );
        assert_eq!(sealed[12..], plain[8..], "the same payload");
        let json = jsonrpc::archive_to_json(&plain).unwrap();
        assert_eq!(jsonrpc::archive_to_json(&sealed).unwrap(), json);
        for offset in [1, 3] {
            let mut buf = vec![0u8; offset];
            buf.extend_from_slice(&sealed);
            assert_eq!(
                jsonrpc::to_json(codec::decode(&buf[offset..]).unwrap()),
                json
            );
        }
        // SAFETY: `sealed` was just validated by `decode` above and is unchanged.
        let view = unsafe { codec::decode_unchecked(&sealed) };
        assert_eq!(jsonrpc::to_json(view), json);
    }
    // A checksummed archive cut inside its checksum, or padded, is still refused.
    let sealed = codec::encode_with(
        &jsonrpc::from_json(corpus()[0].as_bytes()).unwrap(),
        codec::EncodeOptions::CHECKSUM,
    )
    .unwrap();
    for cut in 0..sealed.len() {
        let e = codec::decode(&sealed[..cut]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }
    let mut padded = sealed.to_vec();
    padded.push(0);
    assert_eq!(
        codec::decode(&padded).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    // Too small a frame for the header and checksum is TooLarge, as for the payload.
    let mut enc = codec::Encoder::with_options(codec::EncodeOptions::CHECKSUM);
    assert!(enc.options().checksum);
    let msg = codec::to_owned(codec::decode(&sealed).unwrap()).unwrap();
    let e = enc.encode_into_slice(&msg, &mut [0u8; 10]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
}

#[test]
fn misaligned_input_decodes_in_place() {
    let archive =
        jsonrpc::json_to_archive(samples::tools_list_2k().as_bytes(), Default::default()).unwrap();
    for offset in 0..16 {
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(&archive);
        let m = codec::decode(&buf[offset..]).unwrap();
        assert_eq!(m.envelopes()[0].kind.to_native(), Kind::Response);
    }
}

#[test]
fn hostile_nesting_is_refused_without_stack_overflow() {
    // Build, archive and drop a value far deeper than the limit on a thread with a big stack
    // (serialization recurses); then validate it on an ordinary 2 MiB thread.
    let archive = std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(|| {
            let mut v = Value::Null;
            for _ in 0..100_000 {
                v = Value::Array(vec![v]);
            }
            let msg = Message::Single(Envelope {
                kind: Kind::Response,
                id: Some(1u64.into()),
                result: Some(v),
                ..Default::default()
            });
            assert_eq!(
                codec::encode(&msg).unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
            // Bypass encode's check to build the hostile bytes an attacker could send.
            let body = rkyv::to_bytes::<rkyv::rancor::Error>(&msg).unwrap();
            let mut bytes = codec::MAGIC.to_vec();
            bytes.push(codec::FORMAT_VERSION);
            bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&body);
            bytes
        })
        .unwrap()
        .join()
        .unwrap();
    let e = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || codec::decode(&archive).map(|_| ()).unwrap_err())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);

    // The deepest JSON the parser accepts encodes and decodes.
    let depth = json::MAX_DEPTH - 1;
    let text = format!(
        r#"{{"jsonrpc":"2.0","id":1,"result":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let a = jsonrpc::json_to_archive(text.as_bytes(), Default::default()).unwrap();
    assert_eq!(jsonrpc::archive_to_json(&a).unwrap(), text);
}

#[test]
fn encoder_reuses_buffers() {
    let mut enc = codec::Encoder::new();
    let m = jsonrpc::from_json(samples::tools_list_2k().as_bytes()).unwrap();
    let first = enc.encode(&m).unwrap().to_vec();
    for _ in 0..3 {
        assert_eq!(enc.encode(&m).unwrap(), &first[..]);
    }
    let other = Envelope::notification("n", Value::Object(vec![Member::new("k", true.into())]));
    let b = enc.encode(&other.into()).unwrap();
    assert_eq!(codec::decode(b).unwrap().envelopes()[0].method(), Some("n"));
}

#[test]
fn deepest_accepted_message_fits_a_small_stack() {
    // Dirty schedulers and host threads may have small stacks (the BEAM's dirty CPU
    // schedulers default to a few hundred KiB). Everything the engine does with the deepest
    // message it accepts must fit in 256 KiB, even in a debug build.
    let run = || {
        let depth = json::MAX_DEPTH - 1;
        let inner = format!(
            "{}{}{}",
            "[{\"k\":".repeat(depth / 2),
            "1",
            "}]".repeat(depth / 2)
        );
        let text = format!(r#"[{{"jsonrpc":"2.0","id":1,"result":{inner}}}]"#);
        let archive = jsonrpc::json_to_archive(text.as_bytes(), Default::default()).unwrap();
        let view = codec::decode(&archive).unwrap();
        let back = jsonrpc::to_json(view);
        let owned = codec::to_owned(view).unwrap();
        let again = codec::encode(&owned).unwrap();
        drop(owned);
        assert_eq!(jsonrpc::archive_to_json(&again).unwrap(), back);
        back.len()
    };
    // AddressSanitizer inflates every frame with red zones; scripts/sanitize.sh raises the
    // budget through this variable so the test checks the code, not the instrumentation.
    let kib: usize = std::env::var("EMF_TEST_STACK_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let n = std::thread::Builder::new()
        .stack_size(kib << 10)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
    assert!(n > 0);
}

#[test]
fn empty_batches_are_refused_both_ways() {
    let e = codec::encode(&Message::Batch(vec![])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(&Message::Batch(vec![])).unwrap();
    let mut bytes = codec::MAGIC.to_vec();
    bytes.push(codec::FORMAT_VERSION);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    assert_eq!(
        codec::decode(&bytes).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
}

#[test]
fn oversized_json_is_too_large_before_parsing() {
    let big = vec![b' '; jsonrpc::MAX_JSON_LEN + 1];
    let e = jsonrpc::from_json(&big).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
}

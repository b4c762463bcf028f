//! Serializer benchmarks: erlmcp-flow (rkyv) against serde_json — and sonic-rs with
//! `--features bench-peers` — on the same MCP messages in the same run.
//!
//! cargo bench --bench codec
//! cargo bench --bench codec --features bench-peers
//!
//! The measured operations are defined once in `erlmcp_flow_bench::suite::codec` and shared with
//! `erlmcp-flow bench --suite serializer`. `erlmcp_flow_crc32c` is the same operation on an
//! archive with a checksum (`EncodeOptions::CHECKSUM`): its cost over `erlmcp_flow` is the
//! price of the option.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use erlmcp_flow::codec::{self, EncodeOptions, Encoder};
use erlmcp_flow_bench::suite::codec::{
    decode_and_access, encode, fixtures, serde_decode_and_access, serde_encode, text_payload,
};
use std::hint::black_box;

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for f in fixtures() {
        g.throughput(Throughput::Bytes(f.json.len() as u64));
        g.bench_with_input(BenchmarkId::new("erlmcp_flow", f.label), &f, |b, f| {
            b.iter(|| decode_and_access(black_box(&f.archive), &f.path))
        });
        let sealed = codec::encode_with(&f.message, EncodeOptions::CHECKSUM).expect("encodes");
        g.bench_with_input(
            BenchmarkId::new("erlmcp_flow_crc32c", f.label),
            &f,
            |b, f| b.iter(|| decode_and_access(black_box(&sealed), &f.path)),
        );
        g.bench_with_input(BenchmarkId::new("serde_json", f.label), &f, |b, f| {
            b.iter(|| serde_decode_and_access(black_box(f.json.as_bytes()), &f.path))
        });
        #[cfg(feature = "bench-peers")]
        g.bench_with_input(BenchmarkId::new("sonic_rs", f.label), &f, |b, f| {
            b.iter(|| sonic::decode_and_access(black_box(f.json.as_bytes()), &f.path))
        });
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for f in fixtures() {
        g.throughput(Throughput::Bytes(f.json.len() as u64));
        let mut enc = Encoder::new();
        g.bench_with_input(BenchmarkId::new("erlmcp_flow", f.label), &f, |b, f| {
            b.iter(|| encode(&mut enc, black_box(&f.message)))
        });
        let mut sealing = Encoder::with_options(EncodeOptions::CHECKSUM);
        g.bench_with_input(
            BenchmarkId::new("erlmcp_flow_crc32c", f.label),
            &f,
            |b, f| b.iter(|| encode(&mut sealing, black_box(&f.message))),
        );
        let mut buf = Vec::new();
        g.bench_with_input(BenchmarkId::new("serde_json", f.label), &f, |b, f| {
            b.iter(|| serde_encode(&mut buf, black_box(&f.serde)))
        });
        #[cfg(feature = "bench-peers")]
        {
            let v: sonic_rs::Value = sonic_rs::from_str(&f.json).unwrap();
            let mut buf = Vec::new();
            g.bench_with_input(BenchmarkId::new("sonic_rs", f.label), &v, |b, v| {
                b.iter(|| {
                    buf.clear();
                    sonic_rs::to_writer(&mut buf, black_box(v)).unwrap();
                    buf.len()
                })
            });
        }
    }
    g.finish();
}

fn bench_zlib(c: &mut Criterion) {
    let text = text_payload();
    let packed = codec::compress::compress(text.as_bytes());
    let mut g = c.benchmark_group("zlib");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("compress_if_needed/text", |b| {
        b.iter(|| codec::compress_if_needed(black_box(text.as_bytes()), 1024).is_compressed())
    });
    g.bench_function("decompress/text", |b| {
        b.iter(|| codec::decompress(black_box(&packed), 1 << 24).map(|v| v.len()))
    });
    g.finish();
}

#[cfg(feature = "bench-peers")]
mod sonic {
    use erlmcp_flow_bench::suite::codec::Step;
    use sonic_rs::JsonValueTrait;

    pub fn decode_and_access(json: &[u8], path: &[Step]) -> usize {
        let Ok(v) = sonic_rs::from_slice::<sonic_rs::Value>(json) else {
            return 0;
        };
        let mut sum = v.get("method").and_then(|m| m.as_str()).map_or(0, str::len)
            + usize::from(v.get("id").is_some());
        let mut cur = Some(&v);
        for step in path {
            cur = cur.and_then(|c| match step {
                Step::Key(k) => c.get(k),
                Step::Index(i) => c.get(i),
            });
        }
        sum += cur.and_then(|c| c.as_str()).map_or(0, str::len);
        sum
    }
}

criterion_group!(benches, bench_decode, bench_encode, bench_zlib);
criterion_main!(benches);

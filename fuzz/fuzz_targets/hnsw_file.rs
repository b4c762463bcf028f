//! Damaged HNSW index files: `MappedHnsw::from_bytes` must answer an error or a searchable
//! index, never crash. Inputs starting with an even byte are parsed as they are; odd ones
//! are read as edits (offset, xor) applied to a real small index file, so the fuzzer gets past
//! the header checks into the lists and levels. The file's CRC32C refuses every edit; so when
//! bit 1 of the first byte is clear the edited file is re-sealed with a fresh CRC32C
//! (`reseal_file`), and the edits reach the structural checks behind the checksum.
#![no_main]

use std::sync::OnceLock;

use erlmcp_flow::hnsw::{reseal_file, Hnsw, MappedHnsw, Originals, Params, SearchOptions};
use libfuzzer_sys::fuzz_target;

fn valid() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let idx = Hnsw::new(Params {
            m: 4,
            originals: Originals::F16,
            ..Params::new(8)
        })
        .unwrap();
        for i in 0..64u64 {
            let v: Vec<f32> = (0..8).map(|j| ((i * 31 + j * 7) % 17) as f32 - 8.0).collect();
            idx.insert(i, &v).unwrap();
        }
        idx.remove(3).unwrap();
        let path = std::env::temp_dir().join(format!("emf-fuzz-hnsw-{}", std::process::id()));
        idx.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        bytes
    })
}

fuzz_target!(|data: &[u8]| {
    let bytes = match data.first() {
        Some(&b) if b & 1 == 1 => {
            let mut f = valid().to_vec();
            for e in data[1..].chunks_exact(5) {
                let at = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize % f.len();
                f[at] ^= e[4];
            }
            if b & 2 == 0 {
                reseal_file(&mut f);
            }
            f
        }
        _ => data.to_vec(),
    };
    if let Ok(m) = MappedHnsw::from_bytes(&bytes) {
        let q: Vec<f32> = (0..m.params().dim).map(|i| (i as f32).sin()).collect();
        let o = SearchOptions {
            k: 5,
            rerank: true,
            ..Default::default()
        };
        let _ = m.search(&q, &o);
        if let Ok(h) = m.to_hnsw() {
            let _ = h.search(&q, &o);
        }
    }
});

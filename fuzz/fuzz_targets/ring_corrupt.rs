//! A ring whose mapped bytes were damaged (by a crashed or hostile participant): opening,
//! polling, sending and reading stats must give errors or skip frames, never crash or read
//! out of bounds.
#![no_main]
use erlmcp_flow::ring::{Ring, RingOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("emf-fuzz-ring-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let opts = RingOptions {
        capacity: 4096,
        multi_producer: data.first().is_some_and(|b| b & 1 == 1),
        ..RingOptions::in_dir(&dir)
    };
    let Ok(ring) = Ring::create("f", &opts) else { return };
    if let Ok(mut p) = ring.producer() {
        for i in 0..20u8 {
            let _ = p.send(&[i; 37]);
        }
    }
    // Apply the input as (offset u16, byte) corruptions to the segment file.
    let path = dir.join("emf-f");
    if let Ok(mut bytes) = std::fs::read(&path) {
        for chunk in data.chunks_exact(3) {
            let off = u16::from_le_bytes([chunk[0], chunk[1]]) as usize % bytes.len();
            bytes[off] = chunk[2];
        }
        let _ = std::fs::write(&path, &bytes);
    }
    let seg = erlmcp_flow::shm::SegmentOptions { dir: dir.clone(), ..Default::default() };
    if let Ok(r) = Ring::open("f", &seg) {
        let _ = r.stats();
        if let Ok(mut c) = r.consumer() {
            let mut n = 0;
            let _ = c.poll(64, |f| n += f.len());
            let _ = c.recv_batch_into(&mut [0u8; 256], 8);
        }
        if let Ok(mut p) = r.producer() {
            let _ = p.send(b"after");
        }
    }
    drop(ring);
    let _ = std::fs::remove_file(&path);
});

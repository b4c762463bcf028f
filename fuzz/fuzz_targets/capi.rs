//! The C ABI with arbitrary bytes: every entry point must return a status, never panic.
#![no_main]
use erlmcp_flow_capi::{codec as c, emf_buf_free, emf_buf_t, EMF_OK};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = emf_buf_t::EMPTY;
    // SAFETY: `data` is readable for its length; `buf` is a valid out-parameter.
    unsafe {
        if c::emf_json_to_archive(data.as_ptr(), data.len(), std::ptr::null(), &mut buf) == EMF_OK {
            emf_buf_free(&mut buf);
        }
        if c::emf_archive_to_json(data.as_ptr(), data.len(), &mut buf) == EMF_OK {
            emf_buf_free(&mut buf);
        }
        let mut msg = std::ptr::null_mut();
        if c::emf_message_open(data.as_ptr(), data.len(), &mut msg) == EMF_OK {
            let mut n = 0usize;
            c::emf_message_count(msg, &mut n);
            for i in 0..n.min(4) + 1 {
                let mut info = std::mem::MaybeUninit::uninit();
                c::emf_message_envelope(msg, i, info.as_mut_ptr());
                if c::emf_message_payload_json(msg, i, &mut buf) == EMF_OK {
                    emf_buf_free(&mut buf);
                }
            }
            c::emf_message_free(msg);
        }
        if c::emf_decompress(data.as_ptr(), data.len(), 4096, &mut buf) == EMF_OK {
            emf_buf_free(&mut buf);
        }
    }
});

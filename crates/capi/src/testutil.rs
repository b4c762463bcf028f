//! Helpers shared by the C ABI's test modules.

use std::ffi::{c_char, CStr};

/// One FFI call in a test: every argument the test passes is valid, NULL, or a handle the
/// slab refuses without dereferencing it.
macro_rules! ffi {
    ($e:expr) => {{
        // SAFETY: see the macro's documentation.
        unsafe { $e }
    }};
}
pub(crate) use ffi;

/// This thread's last error message from the library.
pub(crate) fn last_error() -> String {
    let mut buf = [0 as c_char; 512];
    let mut n = 0usize;
    // SAFETY: buf is 512 bytes; n a valid usize.
    let st = unsafe { crate::emf_last_error_message(buf.as_mut_ptr(), buf.len(), &mut n) };
    assert_eq!(st, crate::EMF_OK);
    // SAFETY: NUL-terminated by the call.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

//! A loom model of the shared-memory ledger's commit protocol: the owner writes a frame's
//! bytes with plain stores and then its commit word with `Release`; a reader that loads the
//! commit word with `Acquire` and sees it set reads the whole frame, never a part of it.

use crate::sync::{Arc, AtomicU32, Ordering, UnsafeCell};

use super::shm::COMMITTED;

struct Slot {
    commit: AtomicU32,
    frame: UnsafeCell<[u8; 4]>,
}

// SAFETY: the frame is written only before the Release store of `commit` and read only after
// an Acquire load that saw it: loom checks exactly that this is race-free.
unsafe impl Sync for Slot {}

#[test]
fn a_committed_frame_is_seen_whole() {
    loom::model(|| {
        let s = Arc::new(Slot {
            commit: AtomicU32::new(0),
            frame: UnsafeCell::new([0; 4]),
        });
        let w = s.clone();
        let writer = loom::thread::spawn(move || {
            // SAFETY: nobody reads the frame before the commit store below.
            w.frame.with_mut(|p| unsafe { *p = [1, 2, 3, 4] });
            w.commit.store(COMMITTED, Ordering::Release);
        });
        match s.commit.load(Ordering::Acquire) {
            0 => {} // not appended yet: the log ends here
            COMMITTED => {
                // SAFETY: the Acquire load saw the writer's Release store.
                let f = s.frame.with(|p| unsafe { *p });
                assert_eq!(f, [1, 2, 3, 4]);
            }
            other => panic!("commit word {other:#x}"),
        }
        writer.join().unwrap();
    });
}

//! Registries of live buffers and handles, so that the boundary refuses a double free, the
//! free of a foreign pointer, and the use of a handle that was already freed.
//!
//! * A **handle** given to C is not the address of its object but a token: a number drawn
//!   from a counter that never repeats, dressed as a pointer (it is never dereferenced by C or
//!   by us). The registry maps token → object. A stale handle therefore never names a newer
//!   object, even when the allocator reuses the old object's memory.
//! * A **buffer** (`emf_buf_t`) must expose real memory to C, so it is keyed by its data
//!   address and carries a never-repeating token of its own; a stale copy of a freed buffer
//!   does not match the token of a newer buffer at the same address.
//!
//! Invariant: an entry is in a registry exactly while the allocation it names is live and owned
//! by the caller. Insertion happens after allocation and removal before deallocation, both
//! under the shard's lock, so two racing frees cannot both succeed. The registries are sharded
//! by key so that threads working on different objects rarely share a lock.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering}; // std-atomic-ok: see NEXT_TOKEN
use std::sync::{Mutex, MutexGuard};

use super::{FfiError, FfiResult, EMF_ERR_INVALID_ARGUMENT};

const SHARDS: usize = 16;

/// A sharded map from a key (an address or a token) to an entry.
pub struct Registry<V> {
    shards: [Mutex<Option<HashMap<u64, V>>>; SHARDS],
}

impl<V> Registry<V> {
    const fn new() -> Self {
        Registry {
            shards: [const { Mutex::new(None) }; SHARDS],
        }
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Option<HashMap<u64, V>>> {
        // Mix the bits: addresses are aligned and tokens are sequential.
        let i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS;
        // Each operation under the lock is a single insert/remove/get, so a panic cannot leave
        // a map half-updated and a poisoned lock is safe to reuse.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, key: u64, value: V) {
        self.shard(key)
            .get_or_insert_with(HashMap::new)
            .insert(key, value);
    }

    /// Removes and returns the entry for `key` when `matches` accepts it.
    fn remove_if(&self, key: u64, matches: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut g = self.shard(key);
        let map = g.as_mut()?;
        if matches(map.get(&key)?) {
            map.remove(&key)
        } else {
            None
        }
    }

    fn with<R>(&self, key: u64, f: impl FnOnce(Option<&V>) -> R) -> R {
        let g = self.shard(key);
        f(g.as_ref().and_then(|m| m.get(&key)))
    }
}

// A process-wide static needs a `const` constructor, which loom's atomics lack; the counter
// is a single fetch_add and is not part of any loom model. (std-atomic-ok)
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A number never handed out before in this process (0 is never returned).
pub(crate) fn fresh_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// Live `emf_buf_t` allocations: data address → (length, token).
pub(crate) static BUFFERS: Registry<(usize, u64)> = Registry::new();

/// A live handle: the object, type-erased so one registry serves every handle type.
struct Entry {
    ty: TypeId,
    object: *mut (dyn Any + Send + Sync),
}

// SAFETY: `object` is an owned `Box<T>` with `T: Send + Sync`, turned into a raw pointer only
// so that borrows can outlive the registry lock; the registry owns it exclusively.
unsafe impl Send for Entry {}

/// Live handles: token → object.
static HANDLES: Registry<Entry> = Registry::new();

/// Moves `value` to the heap, registers it and returns its handle token.
///
/// Handle types are `Send + Sync`: a handle may be used from any thread.
pub(crate) fn new_handle<T: Any + Send + Sync>(value: T) -> *mut T {
    let object: *mut (dyn Any + Send + Sync) = Box::into_raw(Box::new(value));
    let token = fresh_token();
    HANDLES.insert(
        token,
        Entry {
            ty: TypeId::of::<T>(),
            object,
        },
    );
    // The token is only an identifier: C never dereferences it and neither do we.
    std::ptr::without_provenance_mut(token as usize)
}

fn not_live(name: &str) -> FfiError {
    FfiError::new(
        EMF_ERR_INVALID_ARGUMENT,
        format!("`{name}` is not a live handle of this type (already freed, or never created)"),
    )
}

/// Borrows the object behind a live handle of type `T`.
///
/// # Safety
///
/// The caller must not free the handle (on any thread) while the returned borrow is used; the
/// lifetime `'a` is chosen by the caller and is only as good as that promise.
pub(crate) unsafe fn borrow_handle<'a, T: Any + Send + Sync>(
    handle: *const T,
    name: &str,
) -> FfiResult<&'a T> {
    if handle.is_null() {
        return Err(FfiError::null(name));
    }
    let token = handle.addr() as u64;
    let object = HANDLES.with(token, |e| match e {
        Some(e) if e.ty == TypeId::of::<T>() => Some(e.object),
        _ => None,
    });
    let object = object.ok_or_else(|| not_live(name))?;
    // SAFETY: the entry is live, so `object` is the `Box<T>` created in `new_handle` for this
    // very token (tokens never repeat) and not yet freed; the type id matched, so the cast to
    // `T` is the right type; the caller's contract excludes a concurrent free.
    Ok(unsafe { &*(object as *const T) })
}

/// Frees a handle of type `T`. NULL is fine; a double free or a foreign value is an error.
///
/// # Safety
///
/// No other thread may be using the handle.
pub(crate) unsafe fn free_handle<T: Any + Send + Sync>(handle: *mut T, name: &str) -> FfiResult {
    if handle.is_null() {
        return Ok(());
    }
    let token = handle.addr() as u64;
    let entry = HANDLES
        .remove_if(token, |e| e.ty == TypeId::of::<T>())
        .ok_or_else(|| not_live(name))?;
    // SAFETY: the entry was removed exactly once under its shard lock, so we own the `Box`
    // created in `new_handle`; no borrow is outstanding by the caller's contract.
    drop(unsafe { Box::from_raw(entry.object) });
    Ok(())
}

/// Registers a buffer handed to C; returns its token.
pub(crate) fn register_buffer(data: *mut u8, len: usize) -> u64 {
    let token = fresh_token();
    BUFFERS.insert(data.addr() as u64, (len, token));
    token
}

/// Unregisters a buffer if `(data, len, token)` names a live one.
pub(crate) fn unregister_buffer(data: *mut u8, len: usize, token: u64) -> bool {
    BUFFERS
        .remove_if(data.addr() as u64, |&(l, t)| l == len && t == token)
        .is_some()
}

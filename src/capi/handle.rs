//! Registries of live buffers and handles, so that the boundary can refuse a double free, a
//! free of a foreign pointer, and the use of a handle that was already freed (while its
//! address has not been reused).
//!
//! Invariant: an address is in a registry exactly while the allocation it names is live and
//! owned by the caller. Insertion happens after allocation, removal before deallocation, both
//! under the registry's lock, so two racing frees cannot both succeed.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::{FfiError, FfiResult, EMF_ERR_INVALID_ARGUMENT};

/// A set of live allocations: address → tag (a length or a type).
pub struct HandleRegistry<Tag> {
    live: Mutex<Option<HashMap<usize, Tag>>>,
}

impl<Tag: PartialEq + Copy> HandleRegistry<Tag> {
    const fn new() -> Self {
        HandleRegistry {
            live: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<HashMap<usize, Tag>>> {
        // A panic while holding this lock cannot leave the map inconsistent (each operation
        // is a single insert/remove/get), so a poisoned lock is safe to reuse.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, addr: usize, tag: Tag) {
        self.lock()
            .get_or_insert_with(HashMap::new)
            .insert(addr, tag);
    }

    /// Removes `addr` if it is live with `tag`; false otherwise.
    pub(crate) fn remove(&self, addr: usize, tag: Tag) -> bool {
        let mut g = self.lock();
        let map = g.get_or_insert_with(HashMap::new);
        if map.get(&addr) == Some(&tag) {
            map.remove(&addr);
            true
        } else {
            false
        }
    }

    pub(crate) fn contains(&self, addr: usize, tag: Tag) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|m| m.get(&addr) == Some(&tag))
    }
}

/// Live `emf_buf_t` allocations: data pointer → length.
pub(crate) static BUFFERS: HandleRegistry<usize> = HandleRegistry::new();
/// Live handles: pointer → handle type.
pub(crate) static HANDLES: HandleRegistry<TypeId> = HandleRegistry::new();

/// Moves `value` to the heap and registers it as a live handle of type `T`.
pub(crate) fn new_handle<T: 'static>(value: T) -> *mut T {
    let p = Box::into_raw(Box::new(value));
    HANDLES.insert(p as usize, TypeId::of::<T>());
    p
}

/// Borrows a live handle of type `T`.
///
/// # Safety
///
/// When the registry says `p` is live, it is a `Box<T>` from [`new_handle`]; the caller must
/// not free it on another thread while the borrow lasts.
pub(crate) unsafe fn borrow_handle<'a, T: 'static>(p: *const T, name: &str) -> FfiResult<&'a T> {
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    if !HANDLES.contains(p as usize, TypeId::of::<T>()) {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("`{name}` is not a live handle of this type (freed, or never created)"),
        ));
    }
    // SAFETY: the registry proves `p` came from `Box::into_raw` of a `T` and has not been
    // freed; the caller's contract excludes a concurrent free.
    Ok(unsafe { &*p })
}

/// Frees a handle of type `T`. NULL is fine; a double free or a foreign pointer is an error.
///
/// # Safety
///
/// No other thread may be using the handle.
pub(crate) unsafe fn free_handle<T: 'static>(p: *mut T, name: &str) -> FfiResult {
    if p.is_null() {
        return Ok(());
    }
    if !HANDLES.remove(p as usize, TypeId::of::<T>()) {
        return Err(FfiError::new(
            EMF_ERR_INVALID_ARGUMENT,
            format!("`{name}` is not a live handle of this type (double free?)"),
        ));
    }
    // SAFETY: the registry entry, removed exactly once under its lock, proves `p` is a live
    // `Box<T>` from `new_handle`.
    drop(unsafe { Box::from_raw(p) });
    Ok(())
}

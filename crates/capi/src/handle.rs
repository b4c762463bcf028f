//! Handle and buffer bookkeeping for the C ABI, so that the boundary refuses a double free,
//! the free of a foreign pointer, and the use of a handle that was already freed.
//!
//! * A **handle** given to C is not the address of its object but a token: a slot index in a
//!   global slab plus that slot's generation, dressed as a pointer (neither C nor we ever
//!   dereference it). Freeing bumps the slot's generation, so a stale handle never names a
//!   newer object, even when the slot or the memory is reused. A lookup is two atomic loads,
//!   cheap enough for per-message calls (`emf_producer_send`).
//! * A **buffer** (`emf_buf_t`) must expose real memory to C, so it is keyed by its data
//!   address in a sharded map and carries a never-repeating token of its own.
//!
//! Invariant: a slot's `object` is a live `Box` of the type recorded in `kind` exactly while
//! its generation is odd ("occupied"); it is installed before the generation becomes odd and
//! taken out after it becomes even again, the transition done by one CAS, so two racing frees
//! cannot both succeed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering}; // std-atomic-ok: process-wide statics (const init)
use std::sync::{Mutex, MutexGuard};

use super::{FfiError, FfiResult, EMF_ERR_FULL, EMF_ERR_INVALID_ARGUMENT};

/// A handle type: a stable small number used to check that a handle has the expected type.
pub(crate) trait HandleKind: Send + Sync + 'static {
    /// Distinct for every handle type.
    const KIND: u32;
}

const SLAB_SLOTS: usize = 1 << 16;

struct Slot {
    /// Even: free. Odd: occupied. Bumped on every install and every free.
    generation: AtomicU32,
    kind: AtomicU32,
    object: AtomicPtr<()>,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    generation: AtomicU32::new(0),
    kind: AtomicU32::new(0),
    object: AtomicPtr::new(std::ptr::null_mut()),
};

static SLAB: [Slot; SLAB_SLOTS] = [EMPTY_SLOT; SLAB_SLOTS];
static NEXT_UNUSED: AtomicU32 = AtomicU32::new(0);
static FREE_SLOTS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn free_slots() -> MutexGuard<'static, Vec<u32>> {
    // Each operation under the lock is a single push or pop: poisoning cannot leave the list
    // inconsistent.
    FREE_SLOTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn token(index: u32, generation: u32) -> usize {
    // Index + 1 so that no token is 0 (NULL).
    (((generation as u64) << 32) | (index as u64 + 1)) as usize
}

fn untoken(t: usize) -> Option<(usize, u32)> {
    let t = t as u64;
    let index = (t & 0xFFFF_FFFF).checked_sub(1)? as usize;
    (index < SLAB_SLOTS).then_some((index, (t >> 32) as u32))
}

/// Moves `value` to the heap, registers it and returns its handle token.
pub(crate) fn new_handle<T: HandleKind>(value: T) -> FfiResult<*mut T> {
    let index = match free_slots().pop() {
        Some(i) => i,
        None => {
            let i = NEXT_UNUSED.fetch_add(1, Ordering::Relaxed);
            if i as usize >= SLAB_SLOTS {
                NEXT_UNUSED.fetch_sub(1, Ordering::Relaxed);
                return Err(FfiError::new(
                    EMF_ERR_FULL,
                    format!("too many live handles (at most {SLAB_SLOTS})"),
                ));
            }
            i
        }
    };
    let slot = &SLAB[index as usize];
    slot.object
        .store(Box::into_raw(Box::new(value)).cast(), Ordering::Relaxed);
    slot.kind.store(T::KIND, Ordering::Relaxed);
    // Even -> odd: occupied. Release publishes object and kind to every later lookup.
    let generation = slot.generation.fetch_add(1, Ordering::Release) + 1;
    Ok(std::ptr::without_provenance_mut(token(index, generation)))
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
pub(crate) unsafe fn borrow_handle<'a, T: HandleKind>(
    handle: *const T,
    name: &str,
) -> FfiResult<&'a T> {
    if handle.is_null() {
        return Err(FfiError::null(name));
    }
    let (index, generation) = untoken(handle.addr()).ok_or_else(|| not_live(name))?;
    let slot = &SLAB[index];
    if generation & 1 == 0 || slot.generation.load(Ordering::Acquire) != generation {
        return Err(not_live(name));
    }
    if slot.kind.load(Ordering::Relaxed) != T::KIND {
        return Err(not_live(name));
    }
    let object = slot.object.load(Ordering::Relaxed).cast::<T>();
    // SAFETY: the generation matched and is odd, so the slot holds the live `Box<T>` installed
    // by `new_handle` for this token (kind checked); the caller's contract excludes a
    // concurrent free for the borrow's duration.
    Ok(unsafe { &*object })
}

/// Frees a handle of type `T`. NULL is fine; a double free or a foreign value is an error.
///
/// # Safety
///
/// No other thread may be using the handle.
pub(crate) unsafe fn free_handle<T: HandleKind>(handle: *mut T, name: &str) -> FfiResult {
    if handle.is_null() {
        return Ok(());
    }
    let (index, generation) = untoken(handle.addr()).ok_or_else(|| not_live(name))?;
    let slot = &SLAB[index];
    if generation & 1 == 0 || slot.kind.load(Ordering::Acquire) != T::KIND {
        return Err(not_live(name));
    }
    // Odd -> even: only one free of this token can win.
    if slot
        .generation
        .compare_exchange(
            generation,
            generation.wrapping_add(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        return Err(not_live(name));
    }
    let object = slot
        .object
        .swap(std::ptr::null_mut(), Ordering::AcqRel)
        .cast::<T>();
    free_slots().push(index as u32);
    // SAFETY: we won the CAS for this generation, so we own the `Box<T>` installed by
    // `new_handle` (kind checked); nobody else can reach it through this slot any more.
    drop(unsafe { Box::from_raw(object) });
    Ok(())
}

// ---- buffers ---------------------------------------------------------------------------------

const SHARDS: usize = 16;

type Shard = Mutex<Option<HashMap<u64, (usize, u64)>>>;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SHARD: Shard = Mutex::new(None);

/// Live `emf_buf_t` allocations: data address → (length, token), sharded by address.
static BUFFERS: [Shard; SHARDS] = [EMPTY_SHARD; SHARDS];
static NEXT_BUFFER_TOKEN: AtomicU64 = AtomicU64::new(1);

fn buffer_shard(addr: u64) -> MutexGuard<'static, Option<HashMap<u64, (usize, u64)>>> {
    let i = (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS;
    BUFFERS[i].lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a buffer handed to C; returns its token.
pub(crate) fn register_buffer(data: *mut u8, len: usize) -> u64 {
    let token = NEXT_BUFFER_TOKEN.fetch_add(1, Ordering::Relaxed);
    let addr = data.addr() as u64;
    buffer_shard(addr)
        .get_or_insert_with(HashMap::new)
        .insert(addr, (len, token));
    token
}

/// Unregisters a buffer if `(data, len, token)` names a live one.
pub(crate) fn unregister_buffer(data: *mut u8, len: usize, token: u64) -> bool {
    let addr = data.addr() as u64;
    let mut g = buffer_shard(addr);
    let Some(map) = g.as_mut() else {
        return false;
    };
    if map.get(&addr) == Some(&(len, token)) {
        map.remove(&addr);
        true
    } else {
        false
    }
}

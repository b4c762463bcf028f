//! Handle and buffer bookkeeping for the C ABI, so that the boundary refuses a double free,
//! the free of a foreign pointer, the use of a handle that was already freed, a handle of the
//! wrong type, and two threads inside a one-thread-at-a-time object.
//!
//! * A **handle** given to C is not the address of its object but a token: a slot index in a
//!   global slab plus that slot's generation, dressed as a pointer (neither C nor we ever
//!   dereference it). Freeing bumps the slot's generation, so a stale handle never names a
//!   newer object, even when the slot or the memory is reused. A lookup is two atomic loads,
//!   cheap enough for per-message calls (`emf_producer_send`).
//! * Every handle type implements [`Handle`] once: its kind number, its name for messages,
//!   the object behind it and its [`Access`] — [`Shared`] (any number of threads at once) or
//!   [`Exclusive`] (one thread at a time, enforced with a busy flag: a second thread gets
//!   `EMF_ERR_BUSY`). Then [`new_handle`], [`borrow`] and [`free`] are all an entry point
//!   needs: `guard` → `borrow` → call the engine → status.
//! * A **buffer** (`emf_buf_t`) must expose real memory to C, so it is keyed by its data
//!   address in a sharded map and carries a never-repeating token of its own.
//!
//! Invariant: a slot's `object` is a live `Box` of the cell type of the handle type recorded in
//! `kind` exactly while its generation is odd ("occupied"); it is installed before the
//! generation becomes odd and taken out after it becomes even again, the transition done by
//! one CAS, so two racing frees cannot both succeed.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering}; // std-atomic-ok: process-wide statics (const init) and the busy flag
use std::sync::{Mutex, MutexGuard};

use super::{FfiError, FfiResult, EMF_ERR_BUSY, EMF_ERR_FULL, EMF_ERR_INVALID_ARGUMENT};

/// A type handed to C as an opaque handle (`emf_<thing>_t`), implemented once per type.
///
/// The C type is only the handle's name: what the slab holds is [`Handle::Target`] (often an
/// engine object; `Self` when the handle bundles several), wrapped as its [`Access`] requires.
pub(crate) trait Handle: 'static {
    /// Distinct for every handle type: a handle of another type is refused. (A new type
    /// joins the list in lib.rs's `every_handle_type_has_its_own_kind_and_a_name`.)
    const KIND: u32;
    /// How error messages name a handle of this type (`"ring"`, `"producer"`).
    const NAME: &'static str;
    /// The object behind the handle.
    type Target: Send + 'static;
    /// Who may use the object at once: [`Shared`] or [`Exclusive`].
    type Access: Access<Self::Target>;
}

/// How threads may use the object behind a handle: [`Shared`] or [`Exclusive`].
pub(crate) trait Access<T: 'static>: 'static {
    /// What the slab holds for an object `T`.
    type Cell: Send + Sync + 'static;
    /// What [`borrow`] gives: access to `T` for as long as it lives.
    type Borrow<'a>: Deref<Target = T>;
    /// Wraps a new object.
    fn wrap(value: T) -> Self::Cell;
    /// Enters the object, or says why not.
    fn enter<'a>(cell: &'a Self::Cell, name: &str) -> FfiResult<Self::Borrow<'a>>;
    /// Called before the object is freed: refuses while it is in use.
    fn retire(cell: &Self::Cell, name: &str) -> FfiResult;
}

/// Any number of threads may use the object at once (it synchronises itself); a borrow is a
/// plain shared reference.
pub(crate) enum Shared {}

impl<T: Send + Sync + 'static> Access<T> for Shared {
    type Cell = T;
    type Borrow<'a> = &'a T;

    fn wrap(value: T) -> T {
        value
    }

    fn enter<'a>(cell: &'a T, _name: &str) -> FfiResult<&'a T> {
        Ok(cell)
    }

    fn retire(_cell: &T, _name: &str) -> FfiResult {
        Ok(())
    }
}

/// One thread at a time, enforced with a busy flag instead of a lock: a borrow while another
/// thread (or a callback of the same handle) is inside gets `EMF_ERR_BUSY`, and so does a free.
pub(crate) enum Exclusive {}

impl<T: Send + 'static> Access<T> for Exclusive {
    type Cell = ExclusiveCell<T>;
    type Borrow<'a> = InUse<'a, T>;

    fn wrap(value: T) -> ExclusiveCell<T> {
        ExclusiveCell {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    fn enter<'a>(cell: &'a ExclusiveCell<T>, name: &str) -> FfiResult<InUse<'a, T>> {
        if cell.busy.swap(true, Ordering::Acquire) {
            return Err(FfiError::new(
                EMF_ERR_BUSY,
                format!("`{name}` is in use by another thread"),
            ));
        }
        Ok(InUse { cell })
    }

    fn retire(cell: &ExclusiveCell<T>, name: &str) -> FfiResult {
        // Taken for good: the object is dropped next.
        if cell.busy.swap(true, Ordering::Acquire) {
            return Err(FfiError::new(
                EMF_ERR_BUSY,
                format!("`{name}` is in use by another thread (or by its own callback)"),
            ));
        }
        Ok(())
    }
}

/// The slab's cell for an [`Exclusive`] object: the object and its busy flag.
pub(crate) struct ExclusiveCell<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is only reached through an `InUse`, which exists only while its creator
// holds the busy flag, so at most one thread touches it at a time; T itself is Send.
unsafe impl<T: Send> Sync for ExclusiveCell<T> {}

/// A borrow of an [`Exclusive`] object: holds the busy flag and releases it when dropped
/// (also on unwind).
pub(crate) struct InUse<'a, T> {
    cell: &'a ExclusiveCell<T>,
}

impl<T> Deref for InUse<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this `InUse` holds the busy flag (set by `enter`, cleared only by its drop),
        // so no other reference to the value exists outside it; the returned reference
        // borrows `self`, so no `&mut` from `deref_mut` can coexist with it.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> DerefMut for InUse<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; the reference borrows `self` mutably, so it is the only one.
        unsafe { &mut *self.cell.value.get() }
    }
}

impl<T> Drop for InUse<'_, T> {
    fn drop(&mut self) {
        self.cell.busy.store(false, Ordering::Release);
    }
}

type CellOf<H> = <<H as Handle>::Access as Access<<H as Handle>::Target>>::Cell;

/// What [`borrow`] gives for a handle of type `H`: `&H::Target` for a [`Shared`] handle, an
/// [`InUse`] guard (dereferencing mutably) for an [`Exclusive`] one.
pub(crate) type Borrowed<'a, H> =
    <<H as Handle>::Access as Access<<H as Handle>::Target>>::Borrow<'a>;

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
pub(crate) fn new_handle<H: Handle>(value: H::Target) -> FfiResult<*mut H> {
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
    let cell: Box<CellOf<H>> = Box::new(H::Access::wrap(value));
    let slot = &SLAB[index as usize];
    slot.object
        .store(Box::into_raw(cell).cast(), Ordering::Relaxed);
    slot.kind.store(H::KIND, Ordering::Relaxed);
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

/// The slot and generation named by a non-NULL handle of type `H`, if it is live.
fn live_slot<H: Handle>(handle: *const H) -> FfiResult<(&'static Slot, usize, u32)> {
    let (index, generation) = untoken(handle.addr()).ok_or_else(|| not_live(H::NAME))?;
    let slot = &SLAB[index];
    if generation & 1 == 0 || slot.generation.load(Ordering::Acquire) != generation {
        return Err(not_live(H::NAME));
    }
    if slot.kind.load(Ordering::Relaxed) != H::KIND {
        return Err(not_live(H::NAME));
    }
    Ok((slot, index, generation))
}

/// The cell behind a live handle of type `H`.
///
/// # Safety
///
/// As [`borrow`]: the handle is not freed (on any thread) while the reference is used.
unsafe fn cell<'a, H: Handle>(slot: &Slot) -> &'a CellOf<H> {
    let object = slot.object.load(Ordering::Relaxed).cast::<CellOf<H>>();
    // SAFETY: the caller saw the slot occupied at the token's generation with kind `H::KIND`
    // (`live_slot`; the Acquire load of the generation synchronises with the Release in
    // `new_handle`), so `object` is the live `Box<CellOf<H>>` installed for this token; the
    // caller's contract excludes a concurrent free for 'a.
    unsafe { &*object }
}

/// Borrows the object behind a live handle of type `H`, as its [`Access`] allows: for a
/// [`Shared`] handle a `&H::Target`, for an [`Exclusive`] one an [`InUse`] guard holding the
/// busy flag until it drops. Errors: `EMF_ERR_NULL_ARGUMENT` for NULL;
/// `EMF_ERR_INVALID_ARGUMENT` for a freed, foreign or other-type handle; `EMF_ERR_BUSY` for an
/// exclusive handle another thread (or a callback of its own) is inside.
///
/// # Safety
///
/// The caller must not free the handle (on any thread) while the returned borrow is used; the
/// lifetime `'a` is chosen by the caller and is only as good as that promise.
pub(crate) unsafe fn borrow<'a, H: Handle>(handle: *const H) -> FfiResult<Borrowed<'a, H>> {
    if handle.is_null() {
        return Err(FfiError::null(H::NAME));
    }
    let (slot, _, _) = live_slot(handle)?;
    // SAFETY: live (checked just above); the caller's contract excludes a free during 'a.
    let cell = unsafe { cell::<H>(slot) };
    H::Access::enter(cell, H::NAME)
}

/// Frees a handle of type `H`. NULL is fine; a double free or a foreign value is an error
/// (`EMF_ERR_INVALID_ARGUMENT`), and so is an exclusive handle in use (`EMF_ERR_BUSY`, the
/// handle stays live).
///
/// # Safety
///
/// No other thread may be using the handle.
pub(crate) unsafe fn free<H: Handle>(handle: *mut H) -> FfiResult {
    if handle.is_null() {
        return Ok(());
    }
    let (slot, index, generation) = live_slot(handle.cast_const())?;
    // SAFETY: live (checked just above); the caller's contract excludes concurrent use, and
    // this reference is dropped before the object is.
    H::Access::retire(unsafe { cell::<H>(slot) }, H::NAME)?;
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
        return Err(not_live(H::NAME));
    }
    let object = slot
        .object
        .swap(std::ptr::null_mut(), Ordering::AcqRel)
        .cast::<CellOf<H>>();
    free_slots().push(index as u32);
    // SAFETY: we won the CAS for this generation, so we own the `Box<CellOf<H>>` installed by
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{guard, EMF_ERR_NULL_ARGUMENT, EMF_OK};

    /// A shared test handle.
    struct Gauge;
    impl Handle for Gauge {
        const KIND: u32 = 0x7E57_0001;
        const NAME: &'static str = "gauge";
        type Target = AtomicU64;
        type Access = Shared;
    }

    /// An exclusive test handle.
    struct Tally;
    impl Handle for Tally {
        const KIND: u32 = 0x7E57_0002;
        const NAME: &'static str = "tally";
        type Target = Vec<u32>;
        type Access = Exclusive;
    }

    fn fails<T>(r: FfiResult<T>) -> (i32, String) {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => (e.status, e.message.into_owned()),
        }
    }

    fn stale(name: &str) -> (i32, String) {
        (
            EMF_ERR_INVALID_ARGUMENT,
            format!("`{name}` is not a live handle of this type (already freed, or never created)"),
        )
    }

    #[test]
    fn null_is_a_null_argument_named_by_the_type() {
        // SAFETY: NULL is refused before any lookup.
        let r = unsafe { borrow::<Gauge>(std::ptr::null()) };
        let null = (EMF_ERR_NULL_ARGUMENT, "argument `gauge` is NULL".to_owned());
        assert_eq!(fails(r), null);
        // SAFETY: as above.
        let r = unsafe { borrow::<Tally>(std::ptr::null()) };
        assert_eq!(fails(r).1, "argument `tally` is NULL");
        // SAFETY: freeing NULL is a no-op.
        assert!(unsafe { free::<Tally>(std::ptr::null_mut()) }.is_ok());
    }

    #[test]
    fn a_handle_of_another_type_is_refused_by_both_borrow_and_free() {
        let g = new_handle::<Gauge>(AtomicU64::new(7)).unwrap();
        let as_tally = g.cast::<Tally>();
        // SAFETY: the slab refuses the token (kind mismatch) without reaching the object.
        assert_eq!(fails(unsafe { borrow(as_tally) }), stale("tally"));
        // SAFETY: as above.
        assert_eq!(fails(unsafe { free(as_tally) }), stale("tally"));
        // The refused free left the handle live.
        // SAFETY: live handle, freed below.
        assert_eq!(unsafe { borrow(g) }.unwrap().load(Ordering::Relaxed), 7);
        // SAFETY: live handle, no other user.
        assert!(unsafe { free(g) }.is_ok());
        // A value that was never a token (slot index beyond the slab, or an even generation).
        for bogus in [usize::MAX, token(3, 2), 0x1000] {
            let p = std::ptr::without_provenance::<Gauge>(bogus);
            // SAFETY: refused by the slab, never dereferenced.
            assert_eq!(fails(unsafe { borrow(p) }), stale("gauge"), "{bogus:#x}");
        }
    }

    #[test]
    fn a_freed_handle_is_refused_even_when_its_slot_is_reused() {
        let t = new_handle::<Tally>(vec![1, 2]).unwrap();
        // SAFETY: live handle, no other user.
        assert!(unsafe { free(t) }.is_ok());
        // SAFETY: refused by generation.
        assert_eq!(fails(unsafe { borrow(t) }), stale("tally"));
        // SAFETY: a double free is refused.
        assert_eq!(fails(unsafe { free(t) }), stale("tally"));
        // Reuse slots until the freed one is taken again: the old token still fails.
        let newer: Vec<*mut Tally> = (0..4)
            .map(|_| new_handle::<Tally>(vec![9]).unwrap())
            .collect();
        // SAFETY: refused by generation whatever the slot holds now.
        assert_eq!(fails(unsafe { borrow(t) }), stale("tally"));
        for n in newer {
            // SAFETY: live handles, no other user.
            assert_eq!(*unsafe { borrow(n) }.unwrap(), [9]);
            // SAFETY: as above.
            assert!(unsafe { free(n) }.is_ok());
        }
    }

    #[test]
    fn an_exclusive_handle_in_use_is_busy_until_the_borrow_drops() {
        let t = new_handle::<Tally>(Vec::new()).unwrap();
        {
            // SAFETY: live handle, freed only after the borrows end.
            let mut first = unsafe { borrow(t) }.unwrap();
            first.push(1);
            let busy = (
                EMF_ERR_BUSY,
                "`tally` is in use by another thread".to_owned(),
            );
            // SAFETY: as above; refused by the busy flag.
            assert_eq!(fails(unsafe { borrow(t) }), busy);
            // From another thread too (the token is a plain number).
            let addr = t.addr();
            let from_other = std::thread::spawn(move || {
                // SAFETY: the handle outlives this thread (joined below, before the free).
                fails(unsafe { borrow(std::ptr::without_provenance::<Tally>(addr)) })
            })
            .join()
            .unwrap();
            assert_eq!(from_other, busy);
            // A free while in use is refused and the handle stays live.
            let busy_free = (
                EMF_ERR_BUSY,
                "`tally` is in use by another thread (or by its own callback)".to_owned(),
            );
            // SAFETY: refused by the busy flag before anything is freed.
            assert_eq!(fails(unsafe { free(t) }), busy_free);
            first.push(2);
        }
        // Released on drop, also when the user panicked inside (caught like an entry point).
        let st = guard(|| {
            // SAFETY: live handle.
            let mut v = unsafe { borrow(t) }?;
            v.push(3);
            panic!("inside");
        });
        assert_eq!(st, crate::EMF_ERR_PANIC);
        let st = guard(|| {
            // SAFETY: live handle.
            let v = unsafe { borrow(t) }?;
            assert_eq!(*v, [1, 2, 3]);
            Ok(())
        });
        assert_eq!(st, EMF_OK);
        // SAFETY: live handle, not in use.
        assert!(unsafe { free(t) }.is_ok());
    }

    #[test]
    fn a_shared_handle_is_borrowed_by_many_at_once() {
        let g = new_handle::<Gauge>(AtomicU64::new(0)).unwrap();
        // SAFETY: live handle, freed after both borrows end.
        let a = unsafe { borrow(g) }.unwrap();
        // SAFETY: as above.
        let b = unsafe { borrow(g) }.unwrap();
        a.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(1, Ordering::Relaxed);
        assert_eq!(a.load(Ordering::Relaxed), 2);
        // SAFETY: live handle, the borrows are no longer used.
        assert!(unsafe { free(g) }.is_ok());
    }
}

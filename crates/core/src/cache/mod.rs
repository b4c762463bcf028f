//! A concurrent LRU cache with a time-to-live (`erlmcp_flow_lru_cache`; by default capacity
//! 10 000, TTL 5 000 ms).
//!
//! The key space is split over shards by an ahash of the key (hashed once: the shard's table
//! reuses the hash); each shard is a hash table into a slab of entries threaded on a doubly
//! linked recency list, behind its own spin lock (`lock.rs`). Eviction is least-recently-used
//! within the shard (with a capacity of `capacity / shards`, rounded up), which is what
//! sharded caches do. A get moves the entry to the front, except that in shards of 256
//! entries or more an entry moved there within the last eighth of the shard's moves stays
//! put: it is among the most recent anyway, and hot keys then cost no list writes. Evictions
//! still come from the cold end; smaller shards are exact LRU. An entry older than the
//! TTL is a miss when read and is removed then; [`LruCache::sweep`] (or the thread of
//! [`LruCache::start_sweeper`]) removes the rest in the background.
//!
//! Time is read from `CLOCK_MONOTONIC_COARSE` (a few nanoseconds, millisecond-scale
//! resolution): an entry lives at least its TTL and at most one clock tick longer.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

mod lock;
use lock::{SpinGuard, SpinLock};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;

const NIL: u32 = u32::MAX;

/// Cache parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOptions {
    /// Entries the cache holds at most (default 10 000).
    pub capacity: usize,
    /// How long an entry stays valid after it was put (default 5 s); `None`: forever.
    pub ttl: Option<Duration>,
    /// Number of shards; 0 picks one from the capacity and the machine (default).
    pub shards: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            capacity: 10_000,
            ttl: Some(Duration::from_millis(5000)),
            shards: 0,
        }
    }
}

/// Counters of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Entries held now.
    pub len: usize,
    /// The capacity (sum over shards).
    pub capacity: usize,
    /// Gets that found a live entry.
    pub hits: u64,
    /// Gets that found nothing or an expired entry.
    pub misses: u64,
    /// Entries evicted to make room (least recently used).
    pub evictions: u64,
    /// Entries removed because their TTL passed (on read or by a sweep).
    pub expirations: u64,
}

struct Entry<K, V> {
    key: K,
    /// The key's hash (the table's and the shard choice's).
    hash: u64,
    /// The shard clock when the entry was last moved to the front.
    stamp: u64,
    value: V,
    /// Expiry time (coarse monotonic nanoseconds); `u64::MAX` for never.
    expires: u64,
    prev: u32,
    next: u32,
}

struct Shard<K, V> {
    /// Slab indices, keyed by the entries' hashes.
    table: HashTable<u32>,
    slab: Vec<Entry<K, V>>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    cap: usize,
    /// Counts moves to the front.
    clock: u64,
    /// An entry moved to the front fewer than this many moves ago is left where it is: it is
    /// still among the most recently used (a fraction of the capacity), and skipping the move
    /// saves two random writes per hit. 0 for small shards: exact LRU there.
    lazy: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
    expirations: u64,
}

impl<K: Hash + Eq, V> Shard<K, V> {
    fn unlink(&mut self, i: u32) {
        let (p, n) = {
            let e = &self.slab[i as usize];
            (e.prev, e.next)
        };
        if p == NIL {
            self.head = n;
        } else {
            self.slab[p as usize].next = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.slab[n as usize].prev = p;
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let e = &mut self.slab[i as usize];
            e.prev = NIL;
            e.next = old;
        }
        if old == NIL {
            self.tail = i;
        } else {
            self.slab[old as usize].prev = i;
        }
        self.head = i;
    }

    /// Moves entry `i` to the front, unless it got there recently (see `lazy`).
    fn touch(&mut self, i: u32) {
        let e = &self.slab[i as usize];
        if self.head == i || self.clock.wrapping_sub(e.stamp) < self.lazy {
            return;
        }
        self.clock += 1;
        self.slab[i as usize].stamp = self.clock;
        self.unlink(i);
        self.push_front(i);
    }

    fn find<Q: Eq + ?Sized>(&self, hash: u64, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
    {
        let slab = &self.slab;
        self.table
            .find(hash, |&j| slab[j as usize].key.borrow() == key)
            .copied()
    }

    /// Removes entry `i` (moving the last slab entry into its place) and returns it.
    fn remove_at(&mut self, i: u32) -> Entry<K, V> {
        self.unlink(i);
        let hash = self.slab[i as usize].hash;
        if let Ok(e) = self.table.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        let last = (self.slab.len() - 1) as u32;
        if i != last {
            // Re-point the links and the table at the entry that moves from `last` to `i`.
            let (p, n, h) = {
                let e = &self.slab[last as usize];
                (e.prev, e.next, e.hash)
            };
            if p == NIL {
                self.head = i;
            } else {
                self.slab[p as usize].next = i;
            }
            if n == NIL {
                self.tail = i;
            } else {
                self.slab[n as usize].prev = i;
            }
            if let Some(slot) = self.table.find_mut(h, |&j| j == last) {
                *slot = i;
            }
        }
        self.slab.swap_remove(i as usize)
    }
}

type Shards<K, V> = Box<[CachePadded<SpinLock<Shard<K, V>>>]>;

/// A concurrent, sharded LRU cache with a TTL. Share it between threads (`Sync`); wrap it in an
/// `Arc` to run the background sweeper.
///
/// ```
/// use erlmcp_flow::cache::{CacheOptions, LruCache};
/// let c = LruCache::new(CacheOptions { capacity: 2, shards: 1, ..Default::default() });
/// c.put("a", 1);
/// c.put("b", 2);
/// assert_eq!(c.get(&"a"), Some(1)); // "a" is now the most recently used
/// c.put("c", 3);                     // evicts "b"
/// assert_eq!(c.get(&"b"), None);
/// assert_eq!(c.stats().evictions, 1);
/// ```
pub struct LruCache<K, V> {
    shards: Shards<K, V>,
    hasher: ahash::RandomState,
    ttl_ns: Option<u64>,
    mask: usize,
}

/// Coarse monotonic time in nanoseconds.
fn now_coarse() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The coarse clock's resolution in nanoseconds.
fn coarse_tick() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
    if ok {
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    } else {
        10_000_000
    }
}

impl<K: Hash + Eq + Clone, V: Clone> LruCache<K, V> {
    /// A cache with `opts`. The capacity is split evenly over the shards, so the total is
    /// rounded up to a multiple of the shard count ([`CacheStats::capacity`] says what it is);
    /// it is at least 1 and at most `u32::MAX - 1` entries.
    pub fn new(opts: CacheOptions) -> Self {
        let capacity = opts.capacity.clamp(1, u32::MAX as usize - 1);
        let shards = if opts.shards == 0 {
            let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
            // Enough shards that threads rarely meet, few enough that each holds a useful
            // LRU (at least 64 entries).
            (cpus * 8).min(capacity / 64).max(1)
        } else {
            opts.shards.min(capacity)
        }
        .next_power_of_two();
        let per = capacity.div_ceil(shards);
        let shards: Box<[_]> = (0..shards)
            .map(|_| {
                CachePadded::new(SpinLock::new(Shard {
                    // Grown on demand: a large capacity costs memory only as it fills.
                    table: HashTable::with_capacity(per.min(1024)),
                    slab: Vec::with_capacity(per.min(1024)),
                    head: NIL,
                    tail: NIL,
                    cap: per,
                    clock: 0,
                    lazy: if per >= 256 { (per / 8) as u64 } else { 0 },
                    hits: 0,
                    misses: 0,
                    evictions: 0,
                    expirations: 0,
                }))
            })
            .collect();
        LruCache {
            mask: shards.len() - 1,
            shards,
            hasher: ahash::RandomState::new(),
            // The coarse clock advances in ticks: adding one tick makes an entry live at least
            // its TTL (at most one tick longer), never less.
            ttl_ns: opts.ttl.map(|d| {
                (d.as_nanos().min(u64::MAX as u128 / 4) as u64).saturating_add(coarse_tick())
            }),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> (SpinGuard<'_, Shard<K, V>>, u64) {
        let h = self.hasher.hash_one(key);
        // The high bits pick the shard; the table inside uses the low bits.
        let i = (h >> 48) as usize & self.mask;
        (self.shards[i].lock(), h)
    }

    /// The live value for `key` (a hit moves it to the front), or `None` (a miss; an expired
    /// entry is removed).
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_with(key, V::clone)
    }

    /// Like [`LruCache::get`], but hands the value to `f` under the shard's lock instead of
    /// cloning it (for copying it out without an intermediate allocation).
    pub fn get_with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = if self.ttl_ns.is_some() {
            now_coarse()
        } else {
            0
        };
        let (mut s, h) = self.shard(key);
        let Some(i) = s.find(h, key) else {
            s.misses += 1;
            return None;
        };
        if s.slab[i as usize].expires <= now {
            s.remove_at(i);
            s.expirations += 1;
            s.misses += 1;
            return None;
        }
        s.touch(i);
        s.hits += 1;
        Some(f(&s.slab[i as usize].value))
    }

    /// Inserts or replaces `key`'s value (its TTL restarts), evicting the shard's least
    /// recently used entry when the shard is full. Returns the previous value, if any.
    pub fn put(&self, key: K, value: V) -> Option<V> {
        let expires = match self.ttl_ns {
            Some(t) => now_coarse().saturating_add(t),
            None => u64::MAX,
        };
        let (mut s, h) = self.shard(&key);
        if let Some(i) = s.find(h, &key) {
            let e = &mut s.slab[i as usize];
            e.expires = expires;
            let old = std::mem::replace(&mut e.value, value);
            s.touch(i);
            return Some(old);
        }
        if s.slab.len() >= s.cap {
            let lru = s.tail;
            s.remove_at(lru);
            s.evictions += 1;
        }
        let i = s.slab.len() as u32;
        s.clock += 1;
        let stamp = s.clock;
        s.slab.push(Entry {
            key,
            hash: h,
            stamp,
            value,
            expires,
            prev: NIL,
            next: NIL,
        });
        let Shard { table, slab, .. } = &mut *s;
        table.insert_unique(h, i, |&j| slab[j as usize].hash);
        s.push_front(i);
        None
    }

    /// Removes `key`; returns its value if it was present (expired or not yet swept).
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (mut s, h) = self.shard(key);
        let i = s.find(h, key)?;
        Some(s.remove_at(i).value)
    }

    /// Removes every expired entry; returns how many.
    pub fn sweep(&self) -> usize {
        let now = now_coarse();
        let mut removed = 0;
        for sh in self.shards.iter() {
            let mut s = sh.lock();
            let mut i = 0;
            while i < s.slab.len() {
                if s.slab[i].expires <= now {
                    s.remove_at(i as u32);
                    s.expirations += 1;
                    removed += 1;
                    // The last entry moved into `i`: look at it next.
                } else {
                    i += 1;
                }
            }
        }
        removed
    }

    /// Removes everything (counters are kept).
    pub fn clear(&self) {
        for sh in self.shards.iter() {
            let mut s = sh.lock();
            s.table.clear();
            s.slab.clear();
            s.head = NIL;
            s.tail = NIL;
        }
    }

    /// Entries held now (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().slab.len()).sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Counters, summed over the shards.
    pub fn stats(&self) -> CacheStats {
        let mut st = CacheStats::default();
        for sh in self.shards.iter() {
            let s = sh.lock();
            st.len += s.slab.len();
            st.capacity += s.cap;
            st.hits += s.hits;
            st.misses += s.misses;
            st.evictions += s.evictions;
            st.expirations += s.expirations;
        }
        st
    }
}

impl<K, V> LruCache<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Starts a thread that calls [`LruCache::sweep`] every `every` until the returned handle
    /// is dropped or the cache is dropped (the thread holds only a weak reference).
    pub fn start_sweeper(self: &Arc<Self>, every: Duration) -> Sweeper {
        let weak: Weak<Self> = Arc::downgrade(self);
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("emf-cache-sweeper".into())
            .spawn(move || loop {
                let (lock, cv) = &*stop2;
                let g = lock.lock().unwrap_or_else(|p| p.into_inner());
                let (g, _) = cv
                    .wait_timeout_while(g, every, |stopped| !*stopped)
                    .unwrap_or_else(|p| p.into_inner());
                if *g {
                    return;
                }
                drop(g);
                match weak.upgrade() {
                    Some(c) => {
                        c.sweep();
                    }
                    None => return,
                }
            })
            .expect("spawn the cache sweeper thread");
        Sweeper {
            stop,
            thread: Some(thread),
        }
    }
}

/// The background sweeper of a cache; dropping it stops the thread (and waits for it).
pub struct Sweeper {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

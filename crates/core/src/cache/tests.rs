use super::*;

fn one_shard(capacity: usize, ttl: Option<Duration>) -> LruCache<u64, u64> {
    LruCache::new(CacheOptions {
        capacity,
        ttl,
        shards: 1,
    })
}

#[test]
fn evicts_the_least_recently_used() {
    let c = one_shard(3, None);
    for k in 0..3 {
        assert_eq!(c.put(k, k * 10), None);
    }
    assert_eq!(c.get(&0), Some(0)); // order now (most recent first): 0, 2, 1
    assert_eq!(c.put(3, 30), None); // evicts 1
    assert_eq!(c.get(&1), None);
    assert_eq!(c.put(2, 21), Some(20)); // update moves 2 to the front: 2, 3, 0
    assert_eq!(c.put(4, 40), None); // evicts 0
    assert_eq!(c.get(&0), None);
    assert_eq!(
        [c.get(&2), c.get(&3), c.get(&4)],
        [Some(21), Some(30), Some(40)]
    );
    let s = c.stats();
    assert_eq!((s.len, s.capacity, s.evictions), (3, 3, 2));
    assert_eq!((s.hits, s.misses), (4, 2));
}

#[test]
fn remove_and_clear_keep_the_list_consistent() {
    let c = one_shard(8, None);
    for k in 0..8 {
        c.put(k, k);
    }
    // Remove from the middle, the front and the back; then the LRU order must still hold.
    assert_eq!(c.remove(&4), Some(4));
    assert_eq!(c.remove(&7), Some(7));
    assert_eq!(c.remove(&0), Some(0));
    assert_eq!(c.remove(&0), None);
    for k in 8..11 {
        c.put(k, k);
    }
    // 5 inserts fit (8 - 3 removed = 5 held, 3 more = 8): no eviction yet.
    assert_eq!(c.stats().evictions, 0);
    c.put(11, 11); // evicts the oldest remaining: 1
    assert_eq!(c.get(&1), None);
    assert_eq!(c.get(&2), Some(2));
    c.clear();
    assert!(c.is_empty());
    c.put(1, 1);
    assert_eq!(c.get(&1), Some(1));
}

#[test]
fn a_reference_model_agrees_on_a_random_workload() {
    // Against a naive LRU (a Vec ordered by recency) on one shard.
    let c = one_shard(16, None);
    let mut model: Vec<(u64, u64)> = Vec::new();
    let mut x = 12345u64;
    for step in 0..if cfg!(miri) { 500 } else { 50_000 } {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = x % 40;
        if x % 3 == 0 {
            let v = step;
            let old = c.put(k, v);
            let pos = model.iter().position(|e| e.0 == k);
            assert_eq!(old, pos.map(|p| model[p].1));
            if let Some(p) = pos {
                model.remove(p);
            } else if model.len() == 16 {
                model.pop();
            }
            model.insert(0, (k, v));
        } else {
            let got = c.get(&k);
            let pos = model.iter().position(|e| e.0 == k);
            assert_eq!(got, pos.map(|p| model[p].1), "step {step} key {k}");
            if let Some(p) = pos {
                let e = model.remove(p);
                model.insert(0, e);
            }
        }
    }
    assert_eq!(c.len(), model.len());
}

#[test]
fn expired_entries_miss_and_are_swept() {
    let c = one_shard(100, Some(Duration::from_millis(30)));
    c.put(1, 1);
    assert_eq!(c.get(&1), Some(1));
    // Wait for the TTL to pass (the coarse clock has a few ms of resolution): this test is
    // about expiry, so it has to let time pass; it polls the condition, not a fixed sleep.
    let start = std::time::Instant::now();
    while c.get(&1).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "entry never expired"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Never early: the coarse clock tick is added to the TTL.
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert_eq!(c.stats().expirations, 1);
    for k in 0..10 {
        c.put(k, k);
    }
    let start = std::time::Instant::now();
    let mut swept = 0;
    while swept < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "entries never expired"
        );
        std::thread::sleep(Duration::from_millis(5));
        swept += c.sweep();
    }
    assert!(c.is_empty());
    assert_eq!(c.stats().expirations, 11);
}

#[test]
fn the_sweeper_thread_removes_expired_entries_and_stops_with_its_handle() {
    let c = Arc::new(one_shard(100, Some(Duration::from_millis(10))));
    for k in 0..50 {
        c.put(k, k);
    }
    let sweeper = c.start_sweeper(Duration::from_millis(5));
    let start = std::time::Instant::now();
    while !c.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the sweeper did not sweep"
        );
        std::thread::yield_now();
    }
    assert_eq!(c.stats().expirations, 50);
    drop(sweeper); // joins the thread
    let weak = Arc::downgrade(&c);
    drop(c);
    assert!(weak.upgrade().is_none());
}

#[test]
fn shards_share_the_capacity_and_threads_agree() {
    let c: LruCache<u64, u64> = LruCache::new(CacheOptions {
        capacity: 4096,
        ttl: None,
        shards: 8,
    });
    assert_eq!(c.shard_count(), 8);
    assert_eq!(c.stats().capacity, 4096);
    let n = if cfg!(miri) { 100 } else { 20_000 };
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let c = &c;
            s.spawn(move || {
                for i in 0..n {
                    let k = (i * 2 + t) % 3000;
                    c.put(k, k * 7);
                    if let Some(v) = c.get(&k) {
                        assert_eq!(v, k * 7);
                    }
                }
            });
        }
    });
    let s = c.stats();
    assert!(s.len <= 4096);
    assert_eq!(s.hits + s.misses, 2 * n);
}

#[test]
fn default_options_are_10_000_entries_for_5_seconds() {
    let o = CacheOptions::default();
    assert_eq!(
        (o.capacity, o.ttl),
        (10_000, Some(Duration::from_millis(5000)))
    );
    let c: LruCache<String, Vec<u8>> = LruCache::new(o);
    assert!(c.stats().capacity >= 10_000);
    c.put("agent:1".into(), b"node-a".to_vec());
    assert_eq!(
        c.get(&"agent:1".to_string()).as_deref(),
        Some(&b"node-a"[..])
    );
}

#[test]
fn large_shards_still_promote_cold_entries_and_evict_from_the_cold_end() {
    // 1024 entries in one shard: promotion is lazy for the most recent eighth only.
    let c = one_shard(1024, None);
    for k in 0..1024 {
        c.put(k, k);
    }
    // 0 is the least recently used: a hit must move it to the front...
    assert_eq!(c.get(&0), Some(0));
    // ...so the next insertions evict 1, 2, ... and never 0.
    for k in 1024..1024 + 500 {
        c.put(k, k);
    }
    assert_eq!(c.get(&0), Some(0));
    for k in 1..=500 {
        assert_eq!(c.get(&k), None, "{k} should have been evicted");
    }
    assert_eq!(c.get(&501), Some(501));
    // Hot keys hit over and over stay, however many cold keys pass through.
    for round in 0..20u64 {
        for hot in 2000..2010 {
            if c.get(&hot).is_none() {
                c.put(hot, hot);
            }
        }
        for k in 0..200 {
            c.put(10_000 + round * 200 + k, 0);
        }
    }
    for hot in 2000..2010 {
        assert_eq!(c.get(&hot), Some(hot));
    }
    assert_eq!(c.len(), 1024);
}

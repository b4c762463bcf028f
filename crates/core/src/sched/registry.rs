//! The agent registry: who the agents are (id, type, capacity, liveness) and where their loads
//! are (a slot of the [`LoadTable`]), looked up by id through the engine's LRU cache (the
//! original design: registry lookups dominated the hot path) and by type for
//! [`Strategy::select`](super::Strategy::select).
//!
//! The registry's own maps are the truth; the cache holds copies of entries by id and is
//! invalidated on unregister. A lookup that misses fills the cache while it holds the maps'
//! read lock, and unregister removes from the maps and the cache under the write lock, so a
//! lookup can never put back an entry that was just unregistered.
//!
//! Each type's members are kept as an immutable list replaced on register and unregister (the
//! agents, and their slots and capacities side by side in one contiguous array), so
//! [`Registry::candidates`] takes one reference under a read lock and then reads the loads
//! lock-free from the table, slot after slot: no allocation with
//! [`Registry::candidates_into`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::{CacheOptions, LruCache};
use crate::error::{Error, ErrorKind, Result};
use crate::sync::RwLock;

use super::loads::{LoadTable, SlotRef};
use super::strategy::{Candidate, Strategy};
use super::types::{AgentId, AgentType, Liveness, Micros};

/// The default capacity of an agent (the original design's `max_tasks`).
pub const DEFAULT_MAX_TASKS: u32 = 5;

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// Its id.
    pub id: AgentId,
    /// Its type.
    pub agent_type: AgentType,
    /// Tasks it may hold at once.
    pub max_tasks: u32,
    /// How it is told alive.
    pub liveness: Liveness,
    /// Its slot in the load table.
    pub slot: SlotRef,
}

/// The agents of one type and their loads, index for index: what [`Strategy::select`] chooses
/// among ([`Candidates::select`] does both steps).
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    members: Option<Arc<Members>>,
    /// The loads, in the order of [`Candidates::agent`]'s indices.
    pub loads: Vec<Candidate>,
}

impl Candidates {
    /// An empty set (to be filled by [`Registry::candidates_into`]).
    pub fn new() -> Candidates {
        Candidates::default()
    }

    /// The agent at index `i` (an index [`Strategy::select`] returned).
    pub fn agent(&self, i: usize) -> Option<&Arc<AgentInfo>> {
        self.members.as_deref()?.agents.get(i)
    }

    /// The number of candidates.
    pub fn len(&self) -> usize {
        self.loads.len()
    }

    /// True when the type has no agents.
    pub fn is_empty(&self) -> bool {
        self.loads.is_empty()
    }

    /// The agent `strategy` chooses, or `None` when none has spare capacity (`no_capacity`).
    pub fn select(&self, strategy: &mut Strategy) -> Option<&Arc<AgentInfo>> {
        strategy.select(&self.loads).and_then(|i| self.agent(i))
    }
}

/// The agents of one type, and their slots and capacities in the same order (contiguous, for
/// the candidates' scan).
#[derive(Debug, Default)]
struct Members {
    agents: Vec<Arc<AgentInfo>>,
    slots: Vec<(SlotRef, u32)>,
}

impl Members {
    fn of<'a>(agents: impl Iterator<Item = &'a Arc<AgentInfo>>) -> Members {
        let agents: Vec<_> = agents.cloned().collect();
        let slots = agents.iter().map(|a| (a.slot, a.max_tasks)).collect();
        Members { agents, slots }
    }
}

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

#[derive(Default)]
struct Maps {
    by_id: FastMap<AgentId, Arc<AgentInfo>>,
    by_type: FastMap<AgentType, Arc<Members>>,
}

/// The registry (see the module documentation).
pub struct Registry {
    loads: Arc<LoadTable>,
    cache: LruCache<AgentId, Arc<AgentInfo>>,
    maps: RwLock<Maps>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("agents", &self.read().by_id.len())
            .field("loads", &self.loads)
            .finish()
    }
}

impl Registry {
    /// A registry whose agents' loads live in `loads`, with a lookup cache of
    /// `cache_capacity` entries (no time-to-live: entries are invalidated on unregister).
    pub fn new(loads: Arc<LoadTable>, cache_capacity: usize) -> Registry {
        Registry {
            loads,
            cache: LruCache::new(CacheOptions {
                capacity: cache_capacity.max(1),
                ttl: None,
                shards: 0,
            }),
            maps: RwLock::new(Maps::default()),
        }
    }

    /// The load table.
    pub fn loads(&self) -> &Arc<LoadTable> {
        &self.loads
    }

    fn read(&self) -> crate::sync::RwLockReadGuard<'_, Maps> {
        // A panic while holding the lock leaves maps that are still consistent (every
        // change is made after its checks): recover them.
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> crate::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `id` of type `agent_type` with capacity `max_tasks` (at least 1) and claims
    /// its load slot (heartbeat at `now`). `Busy` when `id` is registered already (here, or
    /// holds a live slot in the table), `Full` when the load table is.
    pub fn register(
        &self,
        id: AgentId,
        agent_type: AgentType,
        max_tasks: u32,
        liveness: Liveness,
        now: Micros,
    ) -> Result<Arc<AgentInfo>> {
        if max_tasks == 0 {
            return Err(Error::invalid(format!(
                "agent {id} must have a capacity of at least 1 task"
            )));
        }
        let mut maps = self.write();
        if maps.by_id.contains_key(&id) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("agent {id} is registered already"),
            ));
        }
        let slot = self.loads.claim(&id, liveness, max_tasks, now)?;
        let info = Arc::new(AgentInfo {
            id,
            agent_type,
            max_tasks,
            liveness,
            slot,
        });
        Self::insert(&mut maps, info.clone());
        Ok(info)
    }

    fn insert(maps: &mut Maps, info: Arc<AgentInfo>) {
        let grown = match maps.by_type.get(&info.agent_type) {
            Some(m) => Members::of(m.agents.iter().chain([&info])),
            None => Members::of([&info].into_iter()),
        };
        maps.by_type
            .insert(info.agent_type.clone(), Arc::new(grown));
        maps.by_id.insert(info.id.clone(), info);
    }

    /// Registers `id` whose load slot `slot` the agent claimed itself (an agent in another
    /// process keeps its own load: see the scheduler's runtime). Replaces a registration of
    /// the same id (a new incarnation). Leaves the slot to the agent: [`Registry::forget`]
    /// undoes this without releasing it.
    pub fn adopt(
        &self,
        id: AgentId,
        agent_type: AgentType,
        max_tasks: u32,
        liveness: Liveness,
        slot: SlotRef,
    ) -> Result<Arc<AgentInfo>> {
        if max_tasks == 0 {
            return Err(Error::invalid(format!(
                "agent {id} must have a capacity of at least 1 task"
            )));
        }
        let mut maps = self.write();
        if maps.by_id.contains_key(&id) {
            Self::remove(&mut maps, &id, &self.cache);
        }
        let info = Arc::new(AgentInfo {
            id,
            agent_type,
            max_tasks,
            liveness,
            slot,
        });
        Self::insert(&mut maps, info.clone());
        Ok(info)
    }

    /// Unregisters `id` without releasing its load slot (an adopted agent's).
    /// `NotFound` when it is not registered.
    pub fn forget(&self, id: &AgentId) -> Result<Arc<AgentInfo>> {
        let mut maps = self.write();
        Self::remove(&mut maps, id, &self.cache).ok_or_else(|| not_registered(id))
    }

    fn remove(
        maps: &mut Maps,
        id: &AgentId,
        cache: &LruCache<AgentId, Arc<AgentInfo>>,
    ) -> Option<Arc<AgentInfo>> {
        let info = maps.by_id.remove(id)?;
        cache.remove(id);
        if let Some(members) = maps.by_type.get(&info.agent_type) {
            let kept = Members::of(members.agents.iter().filter(|m| m.id != *id));
            if kept.agents.is_empty() {
                maps.by_type.remove(&info.agent_type);
            } else {
                maps.by_type.insert(info.agent_type.clone(), Arc::new(kept));
            }
        }
        Some(info)
    }

    /// Unregisters `id` and releases its load slot; its cache entry is invalidated.
    /// `NotFound` when it is not registered.
    pub fn unregister(&self, id: &AgentId) -> Result<Arc<AgentInfo>> {
        let mut maps = self.write();
        let info = Self::remove(&mut maps, id, &self.cache).ok_or_else(|| not_registered(id))?;
        drop(maps);
        // Already gone from the table when the agent was judged dead and its slot reclaimed.
        let _ = self.loads.release(info.slot);
        Ok(info)
    }

    /// The agent `id`, through the cache. `NotFound` when it is not registered.
    pub fn lookup(&self, id: &AgentId) -> Result<Arc<AgentInfo>> {
        if let Some(info) = self.cache.get(id) {
            return Ok(info);
        }
        let maps = self.read();
        let info = maps
            .by_id
            .get(id)
            .ok_or_else(|| not_registered(id))?
            .clone();
        // Under the read lock: an unregister (write lock) cannot run between the map read
        // and this fill.
        self.cache.put(id.clone(), info.clone());
        Ok(info)
    }

    /// The agents of `agent_type` (empty when none).
    pub fn by_type(&self, agent_type: &AgentType) -> Vec<Arc<AgentInfo>> {
        self.read()
            .by_type
            .get(agent_type)
            .map_or_else(Vec::new, |m| m.agents.clone())
    }

    /// How many agents are registered.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// True when no agent is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The agents of `agent_type` with their current loads from the load table, for
    /// [`Strategy::select`]. An agent whose slot is no longer held (reclaimed after it was
    /// judged dead) shows as full, so it is never chosen.
    pub fn candidates(&self, agent_type: &AgentType) -> Candidates {
        let mut c = Candidates::new();
        self.candidates_into(agent_type, &mut c);
        c
    }

    /// [`Registry::candidates`] into `out`, reusing its buffer (no allocation once it is
    /// large enough).
    pub fn candidates_into(&self, agent_type: &AgentType, out: &mut Candidates) {
        let members = self.read().by_type.get(agent_type).cloned();
        out.loads.clear();
        if let Some(m) = &members {
            out.loads.extend(m.slots.iter().map(|&(slot, max_tasks)| {
                self.loads.load(slot).unwrap_or(Candidate {
                    current_tasks: max_tasks,
                    max_tasks,
                    latency_us: 0,
                })
            }));
        }
        out.members = members;
    }

    /// The agent of `agent_type` that `strategy` chooses; `Full` (`no_capacity`) when none
    /// has spare capacity, `NotFound` when the type has no agents.
    pub fn select(&self, agent_type: &AgentType, strategy: &mut Strategy) -> Result<AgentId> {
        let c = self.candidates(agent_type);
        if c.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no agent of type {:?} is registered", agent_type.as_str()),
            ));
        }
        c.select(strategy).map(|a| a.id.clone()).ok_or_else(|| {
            Error::new(
                ErrorKind::Full,
                format!(
                    "no_capacity: all {} agents of type {:?} are at capacity",
                    c.len(),
                    agent_type.as_str()
                ),
            )
        })
    }
}

fn not_registered(id: &AgentId) -> Error {
    Error::new(ErrorKind::NotFound, format!("agent {id} is not registered"))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn ty(s: &str) -> AgentType {
        AgentType::new(s).unwrap()
    }

    fn registry(slots: usize) -> Registry {
        Registry::new(Arc::new(LoadTable::in_memory(slots).unwrap()), 16)
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc")]
    fn register_lookup_unregister() {
        let r = registry(8);
        let a = r
            .register(id("a"), ty("coder"), 5, Liveness::Token(1), 0)
            .unwrap();
        r.register(id("b"), ty("coder"), 3, Liveness::Token(2), 0)
            .unwrap();
        r.register(id("c"), ty("planner"), 1, Liveness::Token(3), 0)
            .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.lookup(&id("a")).unwrap(), a);
        let hits = r.cache.stats().hits;
        assert_eq!(r.lookup(&id("a")).unwrap(), a);
        assert_eq!(
            r.cache.stats().hits,
            hits + 1,
            "the second lookup is a cache hit"
        );
        let coders: Vec<_> = r
            .by_type(&ty("coder"))
            .iter()
            .map(|a| a.id.clone())
            .collect();
        assert_eq!(coders, [id("a"), id("b")]);
        assert!(r.by_type(&ty("nobody")).is_empty());

        let e = r
            .register(id("a"), ty("x"), 5, Liveness::Token(1), 0)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        let e = r
            .register(id("z"), ty("x"), 0, Liveness::Token(1), 0)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

        // Unregister invalidates the cached entry and frees the slot.
        r.unregister(&id("a")).unwrap();
        assert_eq!(r.lookup(&id("a")).unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(
            r.unregister(&id("a")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(r.loads().load(a.slot), None);
        let coders: Vec<_> = r
            .by_type(&ty("coder"))
            .iter()
            .map(|a| a.id.clone())
            .collect();
        assert_eq!(coders, [id("b")]);
        r.unregister(&id("b")).unwrap();
        assert!(r.candidates(&ty("coder")).is_empty());
        // Registered again: a fresh entry, not the cached one.
        let a2 = r
            .register(id("a"), ty("tester"), 2, Liveness::Token(9), 0)
            .unwrap();
        assert_eq!(r.lookup(&id("a")).unwrap(), a2);
        assert_eq!(r.lookup(&id("a")).unwrap().agent_type, ty("tester"));
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc")]
    fn candidates_carry_the_shared_loads() {
        let r = registry(8);
        let infos: Vec<_> = (0..3)
            .map(|i| {
                r.register(id(&format!("w{i}")), ty("w"), 2, Liveness::Token(i), 0)
                    .unwrap()
            })
            .collect();
        // w0 full, w1 one task, w2 idle but slow.
        r.loads().update(infos[0].slot, 2, Some(100)).unwrap();
        r.loads().update(infos[1].slot, 1, Some(100)).unwrap();
        r.loads().update(infos[2].slot, 0, Some(1000)).unwrap();
        let c = r.candidates(&ty("w"));
        assert_eq!(c.len(), 3);
        assert_eq!(c.loads[0].current_tasks, 2);
        assert_eq!(c.loads[2].latency_us, 1000);
        // Scores: w1 = 0.7·0.5 + 0.3·0.1 = 0.38; w2 = 0 + 0.3·1 = 0.3.
        assert_eq!(c.select(&mut Strategy::LeastLoaded).unwrap().id, id("w2"));
        assert_eq!(
            r.select(&ty("w"), &mut Strategy::LeastLoaded).unwrap(),
            id("w2")
        );
        let mut buf = Candidates::new();
        r.candidates_into(&ty("w"), &mut buf);
        assert_eq!(buf.loads, c.loads);
        // Everyone full: no_capacity; unknown type: NotFound.
        r.loads().update(infos[1].slot, 1, None).unwrap();
        r.loads().update(infos[2].slot, 2, None).unwrap();
        let e = r
            .select(&ty("w"), &mut Strategy::power_of_two(3))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Full, "{e}");
        let e = r.select(&ty("v"), &mut Strategy::LeastLoaded).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        // A slot reclaimed under the registry (its agent judged dead) is never chosen.
        r.loads().update(infos[1].slot, -2, None).unwrap();
        r.loads().release(infos[1].slot).unwrap();
        let c = r.candidates(&ty("w"));
        assert!(!c.loads[1].has_capacity());
        assert!(r.select(&ty("w"), &mut Strategy::LeastLoaded).is_err());
        // Its unregister still works.
        r.unregister(&id("w1")).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc")]
    fn lookups_never_resurrect_an_unregistered_agent() {
        let r = Arc::new(registry(4));
        for round in 0..200 {
            let a = id("a");
            r.register(a.clone(), ty("t"), 1, Liveness::Token(round), 0)
                .unwrap();
            std::thread::scope(|s| {
                let r2 = &r;
                let a2 = a.clone();
                let looker = s.spawn(move || {
                    for _ in 0..50 {
                        let _ = r2.lookup(&a2);
                    }
                });
                r.unregister(&a).unwrap();
                looker.join().unwrap();
            });
            assert_eq!(
                r.lookup(&a).unwrap_err().kind(),
                ErrorKind::NotFound,
                "round {round}"
            );
        }
    }
}

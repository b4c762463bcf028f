// queue_cache.cpp — the erlmcp-flow task queue and LRU cache from C++17, through the RAII
// wrapper erlmcp_flow.hpp only (emf::TaskQueue, emf::Cache).
//
//   queue_cache-cpp [-n N]     N tasks per producer thread in the last part (default 20000)
//
// Written to be read as an example, in three parts:
//
//  1. A cache in front of a slow lookup: an agent registry (agent name -> endpoint) whose
//     lookups are expensive is fronted by an emf::Cache. Checks: the first lookup of an agent
//     reaches the registry and the next ones do not (hit / miss counters), the least recently
//     used agent is evicted when the cache is full, forgetting an agent (remove), values larger
//     than get()'s first guess, get_into with a reused buffer, TTL expiry (an entry lives at
//     least its TTL: polled against a deadline) and the background sweeper.
//
//  2. Tasks of different priorities through an emf::TaskQueue, every enqueue answer handled
//     explicitly by a Dispatcher: Ok; Backpressure (queued, but slow down); Rejected (not
//     queued: the task is still ours, kept for a retry); Evicted (queued by pushing out a
//     lower-priority task, which comes back to us). Checks: priority order, FIFO within a
//     priority, back-pressure then rejection, eviction of the newest lowest-priority task,
//     counters, exceptions for bad input, moves.
//
//  3. Two producer and two consumer threads through one TaskQueue (small, so that producers
//     meet back-pressure and rejections and retry): every task dequeued exactly once with its
//     bytes intact and its priority, in FIFO order per producer and priority, counters agreeing.
//
// Output: one line about the threaded run, one line per failed check on stderr, then exactly
// one line `N passed, M failed`. Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded
// library has another ABI.
#include "erlmcp_flow.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

#include "check.hpp"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// =============================================================================================
// Part 1: a cache in front of a slow lookup

// Where each agent listens. A real registry answers over the network (milliseconds); this one
// counts the questions so that the test can tell cache hits from registry lookups.
class AgentRegistry {
public:
    std::optional<std::string> lookup(const std::string& agent) {
        ++lookups_;
        if (agent.rfind("ghost", 0) == 0) return std::nullopt;  // no such agent
        return "tcp://" + agent + ".agents.internal:7000";
    }
    int lookups() const { return lookups_; }

private:
    int lookups_ = 0;
};

// The registry behind an emf::Cache: a hit costs a copy of the endpoint, a miss one lookup.
// Unknown agents are not cached (they may register any moment).
class CachedRegistry {
public:
    CachedRegistry(AgentRegistry& registry, std::size_t capacity, std::chrono::milliseconds ttl)
        : registry_(registry), cache_(capacity, ttl, 1) {}  // 1 shard: an exact LRU

    std::optional<std::string> endpoint(const std::string& agent) {
        if (std::optional<std::string> hit = cache_.get(agent)) return hit;
        std::optional<std::string> found = registry_.lookup(agent);
        if (found) cache_.put(agent, *found);
        return found;
    }

    // The agent moved: drop what we know. False when nothing was cached for it.
    bool forget(const std::string& agent) { return cache_.remove(agent); }

    emf::Cache& cache() { return cache_; }

private:
    AgentRegistry& registry_;
    emf::Cache cache_;
};

void test_cached_registry() {
    AgentRegistry registry;
    CachedRegistry agents(registry, 4, emf::Cache::kNoTtl);

    // First lookup: a miss, answered by the registry; then hits.
    CHECK(agents.endpoint("planner") == "tcp://planner.agents.internal:7000");
    CHECK(agents.endpoint("planner") == "tcp://planner.agents.internal:7000");
    CHECK(agents.endpoint("planner") == "tcp://planner.agents.internal:7000");
    CHECK(registry.lookups() == 1);
    emf::CacheStats st = agents.cache().stats();
    CHECK(st.hits == 2 && st.misses == 1 && st.len == 1 && st.capacity == 4);

    // Four more agents into a cache of four: the least recently used (planner) goes.
    for (const char* a : {"coder", "reviewer", "tester", "deployer"}) CHECK(agents.endpoint(a).has_value());
    CHECK(registry.lookups() == 5);
    st = agents.cache().stats();
    CHECK(st.len == 4 && st.evictions == 1);
    CHECK(agents.endpoint("coder").has_value() && registry.lookups() == 5);  // still cached
    CHECK(agents.endpoint("planner").has_value() && registry.lookups() == 6);  // evicted: asked again
    // planner came back and pushed out the LRU entry, reviewer (coder was just used) ...
    CHECK(agents.endpoint("coder").has_value() && registry.lookups() == 6);
    // ... which comes back in turn, in place of tester.
    CHECK(agents.endpoint("reviewer").has_value() && registry.lookups() == 7);
    CHECK(agents.cache().stats().evictions == 3);

    // Unknown agents: asked every time, never cached.
    CHECK(!agents.endpoint("ghost-1").has_value());
    CHECK(!agents.endpoint("ghost-1").has_value());
    CHECK(registry.lookups() == 9);

    // An agent moved: forget it, the next lookup asks the registry.
    CHECK(agents.forget("coder"));
    CHECK(!agents.forget("coder"));
    CHECK(agents.endpoint("coder").has_value() && registry.lookups() == 10);

    st = agents.cache().stats();
    // Hits: planner x2, coder x2. Misses: the first lookup of each of 5 agents, planner and
    // reviewer again, ghost-1 x2, coder after forget (which took the room forget made: no
    // eviction).
    CHECK(st.hits == 4 && st.misses == 10 && st.evictions == 3 && st.len == 4);
    if (st.hits != 4 || st.misses != 10 || st.evictions != 3) {
        std::fprintf(stderr, "  hits %llu misses %llu evictions %llu\n",
                     static_cast<unsigned long long>(st.hits), static_cast<unsigned long long>(st.misses),
                     static_cast<unsigned long long>(st.evictions));
    }
}

void test_cache_values() {
    emf::Cache cache(64, emf::Cache::kNoTtl, 1);

    // A value longer than get()'s first guess (256 bytes): the buffer grows to what the
    // library reports. Binary bytes and a binary key come back exactly.
    std::string card(10000, '\0');
    for (std::size_t i = 0; i < card.size(); ++i) card[i] = static_cast<char>(i * 7 + 3);
    const std::string key("agent\0card", 10);
    cache.put(key, card);
    std::optional<std::string> got = cache.get(key);
    CHECK(got && *got == card);
    CHECK(!cache.get(std::string("agent\0carD", 10)));

    // get_into: the hot path reuses one buffer (no allocation once it is large enough).
    std::vector<std::uint8_t> buf;
    CHECK(cache.get_into(key, buf) && buf.size() == card.size() &&
          std::memcmp(buf.data(), card.data(), card.size()) == 0);
    const std::uint8_t* storage = buf.data();
    cache.put("small", "v");
    CHECK(cache.get_into("small", buf) && buf.size() == 1 && buf[0] == 'v');
    CHECK(buf.data() == storage);  // same storage, shrunk
    CHECK(!cache.get_into("absent", buf) && buf.empty());
    std::string text;
    CHECK(cache.get_into("small", text) && text == "v");

    // Empty values are values: a hit with nothing in it, not a miss.
    cache.put("empty", "");
    std::optional<std::string> empty = cache.get("empty");
    CHECK(empty && empty->empty());

    // A replacement is seen at once.
    cache.put("small", "w");
    CHECK(cache.get("small") == std::string("w"));
}

void test_cache_ttl() {
    // An entry lives at least its TTL, measured from before the put to after the get that
    // first misses (a bound that can only overstate its life), and then reads as a miss.
    const auto ttl = 40ms;  // a multiple of the coarse clock tick (1, 4 or 10 ms) on Linux
    emf::Cache sessions(16, ttl, 1);
    for (int round = 0; round < 5; ++round) {
        Clock::time_point put_at = Clock::now();
        sessions.put("session", "token");
        CHECK(sessions.get("session") == std::string("token"));
        const Clock::time_point deadline = Clock::now() + 10s;
        Clock::duration life{};
        bool expired = false;
        while (Clock::now() < deadline) {
            if (!sessions.get("session")) {
                life = Clock::now() - put_at;
                expired = true;
                break;
            }
            std::this_thread::yield();
        }
        CHECK(expired);
        CHECK(life >= ttl);
        if (expired && life < ttl) {
            std::fprintf(stderr, "  round %d: expired %.3f ms after the put (TTL %lld ms)\n", round,
                         std::chrono::duration<double, std::milli>(life).count(),
                         static_cast<long long>(ttl.count()));
        }
    }
    emf::CacheStats st = sessions.stats();
    CHECK(st.expirations == 5 && st.len == 0);

    // The background sweeper removes expired entries nobody reads. sweep() does it on demand.
    sessions.set_sweeper(2ms);
    for (int i = 0; i < 5; ++i) sessions.put("s" + std::to_string(i), "v");
    const Clock::time_point deadline = Clock::now() + 10s;
    while (sessions.stats().len != 0 && Clock::now() < deadline) {
        // Yield: under valgrind (one thread at a time) a loop that never does can starve the
        // sweeper thread.
        std::this_thread::yield();
    }
    st = sessions.stats();
    CHECK(st.len == 0 && st.expirations == 10);
    sessions.set_sweeper(0ms);  // stopped
    CHECK(sessions.sweep() == 0);

    // Periods the C ABI cannot take are refused by the wrapper, not truncated.
    CHECK_THROWS(sessions.set_sweeper(-1ms), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(sessions.set_sweeper(std::chrono::milliseconds(std::int64_t(1) << 32)),
                 EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(emf::Cache bad(16, -1ms), EMF_ERR_INVALID_ARGUMENT);
    sessions.set_sweeper(1ms);  // left running: the destructor stops it (valgrind checks)
}

void test_cache_moves() {
    emf::Cache a(8, 1h);
    a.put("k", "v");
    emf::Cache b(std::move(a));
    CHECK(!a && b && b.get("k") == std::string("v"));  // NOLINT(bugprone-use-after-move)
    CHECK_THROWS(a.get("k"), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(a.put("k", "v"), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(a.stats(), EMF_ERR_INVALID_ARGUMENT);
    emf::Cache c(8, emf::Cache::kNoTtl);
    c = std::move(b);  // c's cache is freed, b's moves in
    CHECK(!b && c.get("k") == std::string("v"));
    emf::Cache none;
    CHECK_THROWS(none.remove("k"), EMF_ERR_INVALID_ARGUMENT);
    CHECK(emf::Cache(0, emf::Cache::kNoTtl, 1).stats().capacity == 10000);  // 0: the default
}

// =============================================================================================
// Part 2: tasks of different priorities, every enqueue answer handled

// Submits tasks and deals with each answer explicitly. Nothing is dropped without the caller
// knowing: a rejected task is kept for a retry, an evicted one is handed back to us.
class Dispatcher {
public:
    explicit Dispatcher(emf::TaskQueue& queue) : queue_(queue) {}

    void submit(const std::string& task, emf::Priority priority) {
        emf::EnqueueResult r = queue_.enqueue(task, priority);
        switch (r.status) {
        case emf::Enqueued::Ok:
            break;
        case emf::Enqueued::Backpressure:  // queued, in the overflow: the workers are behind
            ++slow_down_;
            break;
        case emf::Enqueued::Rejected:  // not queued: still ours
            retry_.emplace_back(task, priority);
            break;
        case emf::Enqueued::Evicted:  // queued; a less urgent task was pushed out and comes back
            deferred_.emplace_back(r.evicted->data.str(), r.evicted->priority);
            break;
        }
    }

    // Resubmits the rejected tasks (after the workers caught up).
    void retry() {
        std::vector<std::pair<std::string, emf::Priority>> again;
        again.swap(retry_);
        for (auto& [task, priority] : again) submit(task, priority);
    }

    std::size_t slow_down() const { return slow_down_; }
    const std::vector<std::pair<std::string, emf::Priority>>& waiting_retry() const { return retry_; }
    const std::vector<std::pair<std::string, emf::Priority>>& deferred() const { return deferred_; }

private:
    emf::TaskQueue& queue_;
    std::size_t slow_down_ = 0;
    std::vector<std::pair<std::string, emf::Priority>> retry_;
    std::vector<std::pair<std::string, emf::Priority>> deferred_;
};

// Dequeues everything: "text@priority" in the order served.
std::vector<std::string> drain(emf::TaskQueue& q) {
    std::vector<std::string> out;
    while (std::optional<emf::Task> t = q.dequeue()) {
        out.push_back(t->data.str() + "@" + std::string(emf::priority_name(t->priority)));
    }
    return out;
}

void test_priority_order() {
    using P = emf::Priority;
    emf::TaskQueue q(16, 0);
    Dispatcher d(q);
    d.submit("index-repo", P::Low);
    d.submit("summarize", P::Normal);
    d.submit("page-oncall", P::Critical);
    d.submit("review-pr", P::High);
    d.submit("compact-logs", P::Low);
    d.submit("rollback", P::Critical);
    d.submit("answer-user", P::Normal);
    d.submit("fix-build", P::High);
    CHECK(d.slow_down() == 0 && d.waiting_retry().empty() && d.deferred().empty());
    emf::TaskQueueStats st = q.stats();
    CHECK(st.depth == 8 && st.enqueued == 8 && st.overflow_depth == 0);

    // Highest priority first; within a priority, first in first out.
    const std::vector<std::string> want = {
        "page-oncall@critical", "rollback@critical", "review-pr@high",   "fix-build@high",
        "summarize@normal",     "answer-user@normal", "index-repo@low", "compact-logs@low"};
    std::vector<std::string> got = drain(q);
    CHECK(got == want);
    if (got != want) {
        for (const std::string& s : got) std::fprintf(stderr, "  served %s\n", s.c_str());
    }
    CHECK(!q.dequeue().has_value());  // empty: nullopt, not an exception
    st = q.stats();
    CHECK(st.depth == 0 && st.dequeued == 8 && st.max_depth == 8);
}

void test_backpressure() {
    using P = emf::Priority;
    // 2 in the primary queue, 2 more in the overflow, then refusals (no eviction).
    emf::TaskQueue q(2, 2, emf::DropPolicy::None);
    Dispatcher d(q);
    for (int i = 1; i <= 6; ++i) d.submit("job-" + std::to_string(i), P::Normal);
    CHECK(d.slow_down() == 2);              // job-3, job-4: queued in the overflow
    CHECK(d.waiting_retry().size() == 2);   // job-5, job-6: refused, still ours
    CHECK(d.waiting_retry().size() == 2 && d.waiting_retry()[0].first == "job-5" &&
          d.waiting_retry()[1].first == "job-6");
    // A full queue refuses even a critical task under DropPolicy::None.
    emf::EnqueueResult r = q.enqueue("urgent", P::Critical);
    CHECK(r.status == emf::Enqueued::Rejected && !r.queued() && !r.evicted);
    emf::TaskQueueStats st = q.stats();
    CHECK(st.depth == 4 && st.primary_depth == 2 && st.overflow_depth == 2);
    CHECK(st.spills == 2 && st.rejections == 3 && st.enqueued == 4);

    // The workers take two; the retries fit (into the overflow: still back-pressure).
    std::optional<emf::Task> t1 = q.dequeue();
    std::optional<emf::Task> t2 = q.dequeue();
    CHECK(t1 && t1->data.view() == "job-1" && t1->priority == P::Normal);
    CHECK(t2 && t2->data.view() == "job-2");
    d.retry();
    CHECK(d.waiting_retry().empty() && d.slow_down() == 4);
    // Every job served exactly once, in order.
    CHECK((drain(q) == std::vector<std::string>{"job-3@normal", "job-4@normal", "job-5@normal",
                                                "job-6@normal"}));

    // The library's default sizes: 1000 + 10000.
    emf::TaskQueue dflt(emf::TaskQueue::kDefaultPrimary, emf::TaskQueue::kDefaultOverflow);
    int ok = 0, bp = 0, other = 0;
    for (int i = 0; i < 1001; ++i) {
        emf::Enqueued s = dflt.enqueue("t", P::Low).status;
        (s == emf::Enqueued::Ok ? ok : s == emf::Enqueued::Backpressure ? bp : other)++;
    }
    CHECK(ok == 1000 && bp == 1 && other == 0);
}

void test_eviction() {
    using P = emf::Priority;
    // Full at 3 tasks; more urgent arrivals push out the newest of the least urgent.
    emf::TaskQueue q(2, 1, emf::DropPolicy::LowPriority);
    Dispatcher d(q);
    d.submit("reindex-a", P::Low);
    d.submit("reindex-b", P::Low);
    d.submit("digest", P::Normal);  // back-pressure
    d.submit("incident-1", P::Critical);  // evicts reindex-b (the newest low task)
    d.submit("incident-2", P::Critical);  // evicts reindex-a
    d.submit("reindex-c", P::Low);        // nothing less urgent to evict: refused
    d.submit("hotfix", P::High);          // evicts digest
    CHECK(d.slow_down() == 1);
    CHECK((d.deferred() == std::vector<std::pair<std::string, P>>{
                               {"reindex-b", P::Low}, {"reindex-a", P::Low}, {"digest", P::Normal}}));
    CHECK(d.waiting_retry().size() == 1 && d.waiting_retry()[0].first == "reindex-c");

    // The evicted task is a Task we own: moved out of the result, its bytes intact.
    emf::EnqueueResult r = q.enqueue("incident-3", P::Critical);  // evicts hotfix
    CHECK(r.status == emf::Enqueued::Evicted && r.queued() && r.evicted.has_value());
    if (r.evicted) {
        emf::Task back = std::move(*r.evicted);
        CHECK(back.data.view() == "hotfix" && back.priority == P::High);
        CHECK(r.evicted->data.empty());  // moved from
    }
    emf::TaskQueueStats st = q.stats();
    CHECK(st.evictions == 4 && st.rejections == 1 && st.spills == 1 && st.depth == 3);
    CHECK((drain(q) == std::vector<std::string>{"incident-1@critical", "incident-2@critical",
                                                "incident-3@critical"}));
}

void test_queue_errors_and_moves() {
    emf::TaskQueue q(4, 4);
    // Bad input throws; back-pressure never does.
    CHECK_THROWS((void)q.enqueue("x", static_cast<emf::Priority>(4)), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS((void)q.enqueue(emf::Bytes(nullptr, 3), emf::Priority::Low), EMF_ERR_NULL_ARGUMENT);
    CHECK_THROWS(emf::TaskQueue bad(4, 4, static_cast<emf::DropPolicy>(2)), EMF_ERR_INVALID_ARGUMENT);
    try {
        (void)q.enqueue("x", static_cast<emf::Priority>(9));
        CHECK(false);
    } catch (const emf::Error& e) {
        CHECK(e.message().find("priority") != std::string::npos);
        CHECK(std::string(e.what()).rfind("emf_task_queue_enqueue: EMF_ERR_INVALID_ARGUMENT", 0) == 0);
    }
    CHECK(q.stats().enqueued == 0);

    // Moves: the queue and its tasks go with the handle; the moved-from one throws.
    CHECK(q.enqueue("kept", emf::Priority::High).status == emf::Enqueued::Ok);
    emf::TaskQueue moved(std::move(q));
    CHECK(!q && moved);  // NOLINT(bugprone-use-after-move): defined state
    CHECK_THROWS((void)q.enqueue("x"), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(q.dequeue(), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(q.stats(), EMF_ERR_INVALID_ARGUMENT);
    emf::TaskQueue other(1, 0);
    CHECK(other.enqueue("freed with its queue", emf::Priority::Low).queued());
    other = std::move(moved);  // other's queue (and its task) freed: valgrind checks
    std::optional<emf::Task> t = other.dequeue();
    CHECK(t && t->data.view() == "kept" && t->priority == emf::Priority::High);
    emf::TaskQueue none;
    CHECK_THROWS(none.dequeue(), EMF_ERR_INVALID_ARGUMENT);
    // Tasks left in a queue are freed with it.
    for (int i = 0; i < 8; ++i) (void)other.enqueue("left behind");
}

// =============================================================================================
// Part 3: two producers and two consumers through one TaskQueue

// Task `id` of producer `id >> 32`: the id, then bytes derived from it (8 to 40 in all).
std::string task_bytes(std::uint64_t id) {
    std::string s(8 + id % 33, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(id >> (8 * i));
    std::uint64_t x = id * 0x9E3779B97F4A7C15u + 1;
    for (std::size_t i = 8; i < s.size(); ++i) {
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9u;
        s[i] = static_cast<char>(x >> 56);
    }
    return s;
}

emf::Priority task_priority(std::uint64_t id) {
    return static_cast<emf::Priority>((id * 2654435761u >> 7) % 4);
}

struct Served {
    std::uint64_t id;
    emf::Priority priority;
};

void test_threads(std::uint64_t per_producer) {
    constexpr int kProducers = 2, kConsumers = 2;
    const std::uint64_t total = per_producer * kProducers;
    // Small on purpose: producers run into back-pressure and rejections and must retry.
    emf::TaskQueue q(16, 16, emf::DropPolicy::None);
    const Clock::time_point deadline = Clock::now() + 120s;  // a lost task must not hang the run

    std::atomic<std::uint64_t> served{0}, backpressure{0}, rejected{0}, errors{0};
    std::vector<std::thread> threads;
    for (int p = 0; p < kProducers; ++p) {
        threads.emplace_back([&, p] {
            try {
                for (std::uint64_t seq = 0; seq < per_producer; ++seq) {
                    const std::uint64_t id = (std::uint64_t(p) << 32) | seq;
                    const std::string bytes = task_bytes(id);
                    for (;;) {
                        emf::EnqueueResult r = q.enqueue(bytes, task_priority(id));
                        if (r.status == emf::Enqueued::Ok) break;
                        if (r.status == emf::Enqueued::Backpressure) {
                            // Queued. A real producer would slow down here; these push on, so
                            // that the queue also fills up and refuses.
                            backpressure.fetch_add(1, std::memory_order_relaxed);
                            break;
                        }
                        if (r.status == emf::Enqueued::Rejected) {
                            rejected.fetch_add(1, std::memory_order_relaxed);  // still ours: retry
                            if (Clock::now() > deadline) throw std::runtime_error("producer timed out");
                            std::this_thread::yield();
                            continue;
                        }
                        throw std::runtime_error("eviction under DropPolicy::None");
                    }
                }
            } catch (const std::exception& e) {
                std::fprintf(stderr, "  producer %d: %s\n", p, e.what());
                errors.fetch_add(1);
            }
        });
    }
    std::vector<std::vector<Served>> seen(kConsumers);
    std::atomic<std::uint64_t> corrupt{0};
    for (int c = 0; c < kConsumers; ++c) {
        threads.emplace_back([&, c] {
            try {
                while (served.load() < total) {
                    std::optional<emf::Task> t = q.dequeue();
                    if (!t) {
                        if (Clock::now() > deadline) throw std::runtime_error("consumer timed out");
                        std::this_thread::yield();
                        continue;
                    }
                    served.fetch_add(1);
                    std::uint64_t id = 0;
                    if (t->data.size() >= 8) {
                        for (int i = 0; i < 8; ++i) id |= std::uint64_t(t->data.data()[i]) << (8 * i);
                    }
                    if (t->data.view() != task_bytes(id)) corrupt.fetch_add(1);
                    seen[c].push_back(Served{id, t->priority});
                }
            } catch (const std::exception& e) {
                std::fprintf(stderr, "  consumer %d: %s\n", c, e.what());
                errors.fetch_add(1);
            }
        });
    }
    for (std::thread& t : threads) t.join();
    CHECK(errors.load() == 0);
    CHECK(corrupt.load() == 0);

    // Every task exactly once, at the priority it was given.
    std::vector<std::vector<std::uint8_t>> count(kProducers, std::vector<std::uint8_t>(per_producer, 0));
    std::uint64_t foreign = 0, wrong_priority = 0, fifo_breaks = 0;
    for (const std::vector<Served>& list : seen) {
        // FIFO per producer and priority, as each consumer saw it: what one consumer takes
        // later was queued later.
        std::map<std::pair<std::uint64_t, int>, std::uint64_t> next;
        for (const Served& s : list) {
            const std::uint64_t producer = s.id >> 32, seq = s.id & 0xFFFFFFFFu;
            if (producer >= std::uint64_t(kProducers) || seq >= per_producer) {
                ++foreign;
                continue;
            }
            if (count[producer][seq] < 255) ++count[producer][seq];
            if (s.priority != task_priority(s.id)) ++wrong_priority;
            auto key = std::make_pair(producer, static_cast<int>(s.priority));
            auto it = next.find(key);
            if (it != next.end() && seq < it->second) ++fifo_breaks;
            next[key] = seq + 1;
        }
    }
    std::uint64_t lost = 0, duplicated = 0;
    for (const auto& per : count) {
        for (std::uint8_t n : per) {
            lost += n == 0;
            duplicated += n > 1;
        }
    }
    CHECK(foreign == 0 && wrong_priority == 0);
    CHECK(lost == 0);
    CHECK(duplicated == 0);
    CHECK(fifo_breaks == 0);
    CHECK(seen[0].size() + seen[1].size() == total);
    if (lost || duplicated || fifo_breaks || foreign || wrong_priority) {
        std::fprintf(stderr, "  lost %llu, duplicated %llu, FIFO breaks %llu, foreign %llu, wrong priority %llu\n",
                     (unsigned long long)lost, (unsigned long long)duplicated,
                     (unsigned long long)fifo_breaks, (unsigned long long)foreign,
                     (unsigned long long)wrong_priority);
    }

    // The queue's counters agree with what the threads saw.
    emf::TaskQueueStats st = q.stats();
    CHECK(st.enqueued == total && st.dequeued == total && st.depth == 0);
    CHECK(st.spills == backpressure.load() && st.rejections == rejected.load());
    CHECK(st.evictions == 0 && st.max_depth <= 32);
    std::printf("threads: %d producers x %llu tasks, %d consumers: %llu served (%llu / %llu by each),"
                " %llu back-pressure answers, %llu rejections retried, max depth %llu\n",
                kProducers, (unsigned long long)per_producer, kConsumers,
                (unsigned long long)served.load(), (unsigned long long)seen[0].size(),
                (unsigned long long)seen[1].size(), (unsigned long long)backpressure.load(),
                (unsigned long long)rejected.load(), (unsigned long long)st.max_depth);
}

}  // namespace

int main(int argc, char** argv) {
    try {
        emf::check_abi();
    } catch (const emf::Error& e) {
        std::fprintf(stderr, "refusing to run: %s\n", e.what());
        return 2;
    }
    std::uint64_t n = 20000;
    for (int i = 1; i < argc; ++i) {
        bool ok = false;
        if (std::strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            char* end = nullptr;
            n = std::strtoull(argv[++i], &end, 10);
            ok = end != nullptr && *end == '\0' && n > 0 && n < (std::uint64_t(1) << 32);
        }
        if (!ok) {
            std::fprintf(stderr, "usage: %s [-n TASKS_PER_PRODUCER]\n", argv[0]);
            return 2;
        }
    }

    try {
        test_cached_registry();
        test_cache_values();
        test_cache_ttl();
        test_cache_moves();
        test_priority_order();
        test_backpressure();
        test_eviction();
        test_queue_errors_and_moves();
        test_threads(n);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        ++g_failed;
    }

    std::printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}

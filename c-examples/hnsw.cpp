// hnsw.cpp — the erlmcp-flow HNSW index from C++17, through the RAII wrapper erlmcp_flow.hpp
// only (emf::Hnsw, emf::HnswParams, emf::SearchOptions, emf::IdFilter).
//
//   hnsw-cpp [-n N]     N notes in the memory (default 2000)
//
// Written to be read as an example: the long-term memory of a team of agents. Each note an
// agent writes is embedded as a vector (here: synthetic 64-dimensional embeddings around 20
// topics) and kept in an emf::Hnsw; an agent recalls the notes nearest to what it is thinking
// about. In six parts:
//
//  1. Build: notes inserted in one batch (contiguous floats, 2 threads), f32 originals kept.
//     Checks: recall@10 against a brute force computed here (int8 and re-ranked), distances
//     sorted and close to the exact ones, a topic filter (emf::IdFilter), search_batch equal to
//     one search per query, k 0.
//  2. Save and map: the memory saved to a file and opened mapped, read-only (emf::Hnsw::open),
//     answering exactly like the live index; every change refused (EMF_ERR_UNSUPPORTED).
//  3. Concurrency: reader threads search the mapped file while a writer thread inserts new
//     notes into the live index and two more threads search it.
//  4. Forgetting: a whole topic removed (never recalled again; a second remove says false),
//     then compact() (memory comes back, recall of what remains unchanged).
//  5. Reloading: emf::Hnsw::load gives a copy that can change again.
//  6. Errors: wrong dimensions, NaN, duplicate ids, missing and corrupt files, bad sizes,
//     moved-from objects: each an emf::Error with its status and message.
//
// Output: a few lines about the memory, one line per failed check on stderr, then exactly one
// line `N passed, M failed`. Exit status: 0 when M is 0, 1 otherwise, 2 on a usage error or
// when the loaded library has another ABI.
#include "erlmcp_flow.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

#include "check.hpp"

namespace fs = std::filesystem;

constexpr std::uint32_t kDim = 64;
constexpr std::size_t kK = 10;

// Deterministic pseudo-random numbers (splitmix64).
class Rng {
public:
    explicit Rng(std::uint64_t seed) : s_(seed) {}
    std::uint64_t next() {
        std::uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    // Uniform in [-1, 1).
    float uniform() { return static_cast<float>(double(next() >> 11) / double(1ull << 52) - 1.0); }

private:
    std::uint64_t s_;
};

void normalize(float* v, std::size_t dim) {
    double s = 0;
    for (std::size_t i = 0; i < dim; ++i) s += double(v[i]) * v[i];
    const double inv = 1.0 / std::sqrt(s);
    for (std::size_t i = 0; i < dim; ++i) v[i] = static_cast<float>(v[i] * inv);
}

double cosine_distance(const float* a, const float* b, std::size_t dim) {
    double ab = 0, aa = 0, bb = 0;
    for (std::size_t i = 0; i < dim; ++i) {
        ab += double(a[i]) * b[i];
        aa += double(a[i]) * a[i];
        bb += double(b[i]) * b[i];
    }
    return 1.0 - ab / std::sqrt(aa * bb);
}

// The notes: embeddings around topic centres (one topic per 100 notes, at least 20), unit
// length. Note i is about topic i % topics; its id is i (dense ids suit an IdFilter).
struct Memory {
    std::uint64_t topics = 0;
    std::vector<std::uint64_t> ids;
    std::vector<float> vectors;  // ids.size() x kDim, one after another

    const float* vector(std::uint64_t id) const { return vectors.data() + id * kDim; }
    std::uint64_t topic(std::uint64_t id) const { return id % topics; }
};

Memory make_notes(std::size_t n, std::uint64_t seed) {
    Rng rng(seed);
    Memory m;
    m.topics = std::max<std::uint64_t>(20, n / 100);
    std::vector<float> centres(m.topics * kDim);
    for (float& x : centres) x = rng.uniform();
    m.ids.resize(n);
    m.vectors.resize(n * kDim);
    for (std::size_t i = 0; i < n; ++i) {
        m.ids[i] = i;
        float* v = m.vectors.data() + i * kDim;
        const float* c = centres.data() + m.topic(i) * kDim;
        for (std::size_t j = 0; j < kDim; ++j) v[j] = c[j] + 0.6f * rng.uniform();
        normalize(v, kDim);
    }
    return m;
}

// What an agent is thinking about: near a note, not equal to it.
std::vector<float> make_queries(const Memory& m, std::size_t nq, std::uint64_t seed) {
    Rng rng(seed);
    std::vector<float> q(nq * kDim);
    for (std::size_t i = 0; i < nq; ++i) {
        const float* base = m.vector(rng.next() % m.ids.size());
        for (std::size_t j = 0; j < kDim; ++j) q[i * kDim + j] = base[j] + 0.3f * rng.uniform();
        normalize(q.data() + i * kDim, kDim);
    }
    return q;
}

// The exact k nearest live notes (by double-precision cosine) to `q`.
std::vector<std::uint64_t> exact_nearest(const Memory& m, const std::vector<bool>& live,
                                         const float* q, std::size_t k) {
    std::vector<std::pair<double, std::uint64_t>> d;
    for (std::uint64_t id : m.ids) {
        if (live[id]) d.emplace_back(cosine_distance(q, m.vector(id), kDim), id);
    }
    k = std::min(k, d.size());
    std::partial_sort(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(k), d.end());
    std::vector<std::uint64_t> out;
    for (std::size_t i = 0; i < k; ++i) out.push_back(d[i].second);
    return out;
}

// recall@k of `index` over the queries, against the exact neighbours among live notes.
double recall(const emf::Hnsw& index, const Memory& m, const std::vector<bool>& live,
              const std::vector<float>& queries, const emf::SearchOptions& opts) {
    const std::size_t nq = queries.size() / kDim;
    std::size_t found = 0, wanted = 0;
    std::vector<emf::Hit> hits;  // reused: search_into allocates once
    for (std::size_t i = 0; i < nq; ++i) {
        const float* q = queries.data() + i * kDim;
        const std::vector<std::uint64_t> truth = exact_nearest(m, live, q, kK);
        index.search_into(emf::Floats(q, kDim), kK, hits, opts);
        const std::set<std::uint64_t> want(truth.begin(), truth.end());
        for (const emf::Hit& h : hits) found += want.count(h.id);
        wanted += truth.size();
    }
    return wanted == 0 ? 1.0 : double(found) / double(wanted);
}

bool same_hits(const std::vector<emf::Hit>& a, const std::vector<emf::Hit>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (a[i].id != b[i].id || std::memcmp(&a[i].distance, &b[i].distance, sizeof(float)) != 0) {
            return false;
        }
    }
    return true;
}

bool sorted(const std::vector<emf::Hit>& hits) {
    for (std::size_t i = 1; i < hits.size(); ++i) {
        if (hits[i - 1].distance > hits[i].distance) return false;
    }
    return true;
}

// A scratch directory, removed with everything in it when done.
class ScratchDir {
public:
    ScratchDir()
        : path_(fs::temp_directory_path() / ("emf-hnsw-cpp-" + std::to_string(::getpid()))) {
        fs::create_directories(path_);
    }
    ~ScratchDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
    fs::path path_;
};

// =============================================================================================
// Part 1: build and search

emf::Hnsw build(const Memory& notes) {
    emf::HnswParams params(kDim);  // cosine, M 16, ef_construction 200, ef_search 50
    params.originals = emf::Originals::F32;
    emf::Hnsw index(params);
    index.insert_batch(notes.ids, notes.vectors, 2);
    return index;
}

void test_search(const emf::Hnsw& index, const Memory& notes, const std::vector<float>& queries) {
    CHECK(index.size() == notes.ids.size());
    const emf::HnswParams p = index.params();
    CHECK(p.dim == kDim && p.metric == emf::Metric::Cosine && p.m == 16 &&
          p.ef_construction == 200 && p.ef_search == 50 && p.originals == emf::Originals::F32);

    const std::vector<bool> live(notes.ids.size(), true);
    emf::SearchOptions int8, reranked;
    reranked.rerank = true;
    const double r8 = recall(index, notes, live, queries, int8);
    const double rr = recall(index, notes, live, queries, reranked);
    std::printf("memory: %zu notes x %u dimensions, %zu bytes; recall@10 at ef 50: int8 %.4f, "
                "re-ranked %.4f\n",
                index.size(), kDim, index.memory_bytes(), r8, rr);
    CHECK(r8 >= 0.95);
    CHECK(rr >= 0.95);

    // Closest first; re-ranked distances are exact, int8 ones close to them.
    const float* q = queries.data();
    std::vector<emf::Hit> hits = index.search(emf::Floats(q, kDim), kK);
    std::vector<emf::Hit> exact = index.search(emf::Floats(q, kDim), kK, reranked);
    CHECK(hits.size() == kK && exact.size() == kK && sorted(hits) && sorted(exact));
    double worst8 = 0, worst_rr = 0;
    for (const emf::Hit& h : hits) {
        worst8 = std::max(worst8, std::fabs(h.distance - cosine_distance(q, notes.vector(h.id), kDim)));
    }
    for (const emf::Hit& h : exact) {
        worst_rr = std::max(worst_rr, std::fabs(h.distance - cosine_distance(q, notes.vector(h.id), kDim)));
    }
    CHECK(worst8 < 0.02);
    CHECK(worst_rr < 1e-5);

    // Only notes about one topic: an IdFilter of their ids.
    emf::IdFilter topic3;
    for (std::uint64_t id : notes.ids) {
        if (notes.topic(id) == 3) topic3.allow(id);
    }
    emf::SearchOptions only3;
    only3.filter = topic3.words();
    only3.ef = 100;
    bool all3 = true;
    for (std::size_t i = 0; i < 20; ++i) {
        for (const emf::Hit& h : index.search(emf::Floats(queries.data() + i * kDim, kDim), kK, only3)) {
            all3 = all3 && notes.topic(h.id) == 3 && topic3.allows(h.id);
        }
    }
    CHECK(all3);
    emf::SearchOptions nobody;  // a filter that allows nothing finds nothing
    const emf::IdFilter empty;
    nobody.filter = empty.words();
    CHECK(index.search(emf::Floats(q, kDim), kK, nobody).empty());

    // search_batch on 2 threads: the same answers as one search per query.
    const std::vector<std::vector<emf::Hit>> batch = index.search_batch(queries, kK, reranked, 2);
    bool same = batch.size() == queries.size() / kDim;
    for (std::size_t i = 0; same && i < batch.size(); ++i) {
        same = same_hits(batch[i], index.search(emf::Floats(queries.data() + i * kDim, kDim), kK, reranked));
    }
    CHECK(same);

    // k 0 asks for nothing.
    CHECK(index.search(emf::Floats(q, kDim), 0).empty());
    CHECK(index.search_batch(queries, 0).size() == queries.size() / kDim);
}

// =============================================================================================
// Part 2: save and map

void test_mapped(const emf::Hnsw& index, emf::Hnsw& mapped, const std::string& path,
                 const std::vector<float>& queries) {
    CHECK(mapped.size() == index.size());
    CHECK(mapped.memory_bytes() == fs::file_size(path));
    const emf::HnswParams a = index.params(), b = mapped.params();
    CHECK(a.dim == b.dim && a.metric == b.metric && a.m == b.m && a.seed == b.seed &&
          a.originals == b.originals && a.ef_search == b.ef_search);

    // The same answers, bit for bit, with and without re-ranking.
    std::size_t same = 0;
    const std::size_t nq = queries.size() / kDim;
    for (bool rerank : {false, true}) {
        emf::SearchOptions o;
        o.rerank = rerank;
        for (std::size_t i = 0; i < nq; ++i) {
            const emf::Floats q(queries.data() + i * kDim, kDim);
            same += same_hits(index.search(q, kK, o), mapped.search(q, kK, o));
        }
    }
    CHECK(same == 2 * nq);
    std::printf("mapped: %s (%zu bytes) answers %zu of %zu searches exactly like the live index\n",
                fs::path(path).filename().c_str(), mapped.memory_bytes(), same, 2 * nq);

    // Read-only: every change is refused and nothing changes.
    std::vector<float> v(queries.begin(), queries.begin() + kDim);
    CHECK_THROWS(mapped.insert(999999, v), EMF_ERR_UNSUPPORTED);
    CHECK_THROWS(mapped.insert_batch(std::vector<std::uint64_t>{999999}, v), EMF_ERR_UNSUPPORTED);
    CHECK_THROWS(mapped.remove(0), EMF_ERR_UNSUPPORTED);
    CHECK_THROWS(mapped.compact(), EMF_ERR_UNSUPPORTED);
    CHECK_THROWS(mapped.try_compact(), EMF_ERR_UNSUPPORTED);
    CHECK_THROWS(mapped.save(path + ".copy"), EMF_ERR_UNSUPPORTED);
    CHECK(!fs::exists(path + ".copy"));
    CHECK(mapped.size() == index.size());
    try {
        mapped.remove(0);
    } catch (const emf::Error& e) {
        CHECK(e.message().find("read-only") != std::string::npos);
    }
}

// =============================================================================================
// Part 3: concurrency

void test_threads(emf::Hnsw& index, const emf::Hnsw& mapped, const std::vector<float>& queries,
                  std::size_t first_new_id) {
    const std::size_t nq = queries.size() / kDim;
    const Memory fresh = make_notes(first_new_id + 400, 77);  // ids first_new_id.. are new
    std::atomic<std::size_t> searches{0}, short_answers{0}, unsorted{0}, errors{0};
    std::atomic<bool> writing{true};
    auto searcher = [&](const emf::Hnsw& idx, bool until_written) {
        try {
            std::vector<emf::Hit> hits;
            std::size_t i = 0;
            do {
                idx.search_into(emf::Floats(queries.data() + (i % nq) * kDim, kDim), kK, hits);
                if (hits.size() != kK) short_answers.fetch_add(1);
                if (!sorted(hits)) unsorted.fetch_add(1);
                searches.fetch_add(1, std::memory_order_relaxed);
                ++i;
            } while (until_written ? writing.load() : i < 2 * nq);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "  searcher: %s\n", e.what());
            errors.fetch_add(1);
        }
    };
    std::vector<std::thread> threads;
    threads.emplace_back([&] {  // the writer: one note at a time, as agents write them
        try {
            for (std::size_t id = first_new_id; id < first_new_id + 400; ++id) {
                index.insert(id, emf::Floats(fresh.vector(id), kDim));
            }
        } catch (const std::exception& e) {
            std::fprintf(stderr, "  writer: %s\n", e.what());
            errors.fetch_add(1);
        }
        writing.store(false);
    });
    for (int i = 0; i < 2; ++i) threads.emplace_back(searcher, std::cref(index), true);
    for (int i = 0; i < 2; ++i) threads.emplace_back(searcher, std::cref(mapped), false);
    for (std::thread& t : threads) t.join();
    CHECK(errors.load() == 0);
    CHECK(unsorted.load() == 0);
    // Every search answers k hits: the index never holds fewer than k notes.
    CHECK(short_answers.load() == 0);
    if (short_answers.load() != 0) {
        std::fprintf(stderr, "  %zu of %zu searches answered fewer than %zu hits while notes were "
                             "being inserted\n",
                     short_answers.load(), searches.load(), kK);
    }
    CHECK(index.size() == first_new_id + 400);
    // The new notes are there: each one's own vector finds it among its nearest.
    std::size_t found = 0;
    for (std::size_t id = first_new_id; id < first_new_id + 400; ++id) {
        for (const emf::Hit& h : index.search(emf::Floats(fresh.vector(id), kDim), 3)) found += h.id == id;
    }
    CHECK(found >= 396);
    std::printf("threads: 1 writer inserted 400 notes while 2 threads searched it and 2 searched "
                "the mapped file: %zu searches\n",
                searches.load());
    for (std::size_t id = first_new_id; id < first_new_id + 400; ++id) index.remove(id);
}

// =============================================================================================
// Part 4: forgetting

void test_forget(emf::Hnsw& index, const Memory& notes, const std::vector<float>& queries) {
    const std::size_t before = index.size();
    std::vector<bool> live(notes.ids.size(), true);
    std::size_t removed = 0;
    for (std::uint64_t id : notes.ids) {
        if (notes.topic(id) == 5) {
            removed += index.remove(id);
            live[id] = false;
        }
    }
    CHECK(removed == notes.ids.size() / notes.topics + (notes.ids.size() % notes.topics > 5));
    CHECK(index.size() == before - removed);
    CHECK(!index.remove(5));  // already gone
    CHECK(!index.remove(std::numeric_limits<std::uint64_t>::max()));

    auto never_topic5 = [&] {
        bool ok = true;
        for (std::size_t i = 0; i < queries.size() / kDim; ++i) {
            for (const emf::Hit& h : index.search(emf::Floats(queries.data() + i * kDim, kDim), kK)) {
                ok = ok && notes.topic(h.id) != 5;
            }
        }
        // ... even when asked with a forgotten note's own vector.
        for (const emf::Hit& h : index.search(emf::Floats(notes.vector(5), kDim), kK)) {
            ok = ok && notes.topic(h.id) != 5;
        }
        return ok;
    };
    CHECK(never_topic5());
    emf::SearchOptions reranked;
    reranked.rerank = true;
    const double r_before = recall(index, notes, live, queries, reranked);

    const std::size_t bytes = index.memory_bytes();
    index.compact();
    CHECK(index.memory_bytes() < bytes);
    CHECK(index.size() == before - removed);
    CHECK(never_topic5());
    const double r_after = recall(index, notes, live, queries, reranked);
    CHECK(r_after >= 0.95);
    std::printf("forgot topic 5 (%zu notes): %zu -> %zu bytes after compact(); recall@10 of what "
                "remains %.4f before, %.4f after\n",
                removed, bytes, index.memory_bytes(), r_before, r_after);

    // A forgotten note can be written again.
    index.insert(5, emf::Floats(notes.vector(5), kDim));
    const std::vector<emf::Hit> hits = index.search(emf::Floats(notes.vector(5), kDim), 1);
    CHECK(hits.size() == 1 && hits[0].id == 5);
    CHECK(index.remove(5));
}

// =============================================================================================
// Part 5: reloading

void test_load(const std::string& path, const emf::Hnsw& mapped, const Memory& notes,
               const std::vector<float>& queries) {
    emf::Hnsw copy = emf::Hnsw::load(path);
    CHECK(copy.size() == mapped.size());
    bool same = true;
    for (std::size_t i = 0; i < 20; ++i) {
        const emf::Floats q(queries.data() + i * kDim, kDim);
        same = same && same_hits(copy.search(q, kK), mapped.search(q, kK));
    }
    CHECK(same);
    CHECK(copy.remove(0));
    CHECK(!copy.remove(0));
    CHECK(copy.size() == mapped.size() - 1);
    copy.insert(0, emf::Floats(notes.vector(0), kDim));  // written again
    const std::vector<emf::Hit> first = copy.search(emf::Floats(notes.vector(0), kDim), 1);
    CHECK(first.size() == 1 && first[0].id == 0);
    copy.compact();
    CHECK(copy.size() == mapped.size());
    CHECK(copy.remove(1));
    CHECK(copy.try_compact());  // nothing else runs: done at once
    CHECK(copy.size() == mapped.size() - 1);
}

// =============================================================================================
// Part 6: errors

void test_errors(emf::Hnsw& index, const ScratchDir& dir, const Memory& notes) {
    std::vector<float> v(notes.vector(0), notes.vector(0) + kDim);
    std::vector<float> short_v(kDim - 1, 0.5f);

    // Wrong dimensions, NaN and infinity, a duplicate id: nothing changes.
    const std::size_t size = index.size();
    CHECK_THROWS(index.insert(123456, short_v), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(index.search(short_v, kK), EMF_ERR_INVALID_ARGUMENT);
    std::vector<float> nan_v = v;
    nan_v[7] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS(index.insert(123456, nan_v), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(index.search(nan_v, kK), EMF_ERR_INVALID_ARGUMENT);
    nan_v[7] = std::numeric_limits<float>::infinity();
    CHECK_THROWS(index.insert(123456, nan_v), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(index.insert(1, v), EMF_ERR_INVALID_ARGUMENT);  // id 1 is there
    // A batch is checked whole first: a duplicate in it, or a bad vector, inserts nothing.
    std::vector<float> two(2 * kDim, 0.25f);
    CHECK_THROWS(index.insert_batch(std::vector<std::uint64_t>{123456, 123456}, two), EMF_ERR_INVALID_ARGUMENT);
    two[kDim + 3] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS(index.insert_batch(std::vector<std::uint64_t>{123456, 123457}, two), EMF_ERR_INVALID_ARGUMENT);
    // Sizes the wrapper can tell are wrong: values that are not whole vectors.
    CHECK_THROWS(index.insert_batch(std::vector<std::uint64_t>{123456, 123457}, v), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(index.search_batch(short_v, kK), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(index.search(v, std::numeric_limits<std::size_t>::max()), EMF_ERR_TOO_LARGE);
    CHECK(index.size() == size);
    try {
        index.insert(1, v);
    } catch (const emf::Error& e) {
        CHECK(e.status() == EMF_ERR_INVALID_ARGUMENT && e.message().find("id 1") != std::string::npos);
        CHECK(std::string(e.what()).find("emf_hnsw_insert") != std::string::npos);
    }

    // Parameters the library refuses.
    emf::HnswParams bad(kDim);
    bad.m = 1;
    CHECK_THROWS(emf::Hnsw{bad}, EMF_ERR_INVALID_ARGUMENT);
    bad = emf::HnswParams(70000);  // (0 is valid: the first insert fixes the dimension)
    CHECK_THROWS(emf::Hnsw{bad}, EMF_ERR_INVALID_ARGUMENT);
    bad = emf::HnswParams(kDim);
    bad.metric = static_cast<emf::Metric>(9);
    CHECK_THROWS(emf::Hnsw{bad}, EMF_ERR_INVALID_ARGUMENT);

    // Files: missing, garbage, truncated.
    CHECK_THROWS(emf::Hnsw::open(dir.file("missing.hnsw")), EMF_ERR_NOT_FOUND);
    CHECK_THROWS(emf::Hnsw::load(dir.file("missing.hnsw")), EMF_ERR_NOT_FOUND);
    // A directory is no index file: the OS's kind of refusal.
    CHECK_THROWS(emf::Hnsw::open(dir.file(".")), EMF_ERR_IO);
    CHECK_THROWS(emf::Hnsw::load(dir.file(".")), EMF_ERR_IO);
    {
        std::ofstream f(dir.file("garbage.hnsw"), std::ios::binary);
        f << "EMFHNSW" << std::string(500, 'x');
    }
    CHECK_THROWS(emf::Hnsw::open(dir.file("garbage.hnsw")), EMF_ERR_CORRUPT);
    CHECK_THROWS(emf::Hnsw::load(dir.file("garbage.hnsw")), EMF_ERR_CORRUPT);
    index.save(dir.file("whole.hnsw"));
    fs::resize_file(dir.file("whole.hnsw"), fs::file_size(dir.file("whole.hnsw")) / 2);
    CHECK_THROWS(emf::Hnsw::open(dir.file("whole.hnsw")), EMF_ERR_CORRUPT);
    // One bit flipped in the middle of a saved file: the file's CRC32C refuses it.
    index.save(dir.file("flipped.hnsw"));
    {
        std::fstream f(dir.file("flipped.hnsw"), std::ios::in | std::ios::out | std::ios::binary);
        const auto middle = static_cast<std::streamoff>(fs::file_size(dir.file("flipped.hnsw")) / 2);
        f.seekg(middle);
        const int byte = f.get();
        f.seekp(middle);
        f.put(static_cast<char>(byte ^ 0x10));
    }
    CHECK_THROWS(emf::Hnsw::open(dir.file("flipped.hnsw")), EMF_ERR_CORRUPT);
    CHECK_THROWS(emf::Hnsw::load(dir.file("flipped.hnsw")), EMF_ERR_CORRUPT);
    CHECK_THROWS(index.save(dir.file("no/such/dir.hnsw")), EMF_ERR_IO);

    // Moves: the moved-to object works, the moved-from one throws, destruction frees once.
    emf::Hnsw a(emf::HnswParams(4));
    a.insert(1, std::vector<float>{1, 0, 0, 0});
    emf::Hnsw b(std::move(a));
    CHECK(!a && b && b.size() == 1);
    CHECK_THROWS(a.size(), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(a.search(std::vector<float>{1, 0, 0, 0}, 1), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(a.remove(1), EMF_ERR_INVALID_ARGUMENT);
    emf::Hnsw c;
    CHECK_THROWS(c.params(), EMF_ERR_INVALID_ARGUMENT);
    c = std::move(b);
    CHECK(!b && c.size() == 1);
    c = emf::Hnsw(emf::HnswParams(4));  // the old index is freed
    CHECK(c.size() == 0);
    const float arr[4] = {0, 1, 0, 0};  // C arrays and std::array are Floats too
    c.insert(2, arr);
    c.insert(3, std::array<float, 4>{0, 0, 1, 0});
    CHECK(c.size() == 2 && c.search(arr, 1).at(0).id == 2);
}

}  // namespace

int main(int argc, char** argv) {
    try {
        emf::check_abi();
    } catch (const emf::Error& e) {
        std::fprintf(stderr, "refusing to run: %s\n", e.what());
        return 2;
    }
    std::size_t n = 2000;
    for (int i = 1; i < argc; ++i) {
        bool ok = false;
        if (std::strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            char* end = nullptr;
            const unsigned long long v = std::strtoull(argv[++i], &end, 10);
            ok = end != nullptr && *end == '\0' && v >= 100 && v <= 1000000;
            n = static_cast<std::size_t>(v);
        }
        if (!ok) {
            std::fprintf(stderr, "usage: %s [-n NOTES (100 .. 1000000)]\n", argv[0]);
            return 2;
        }
    }

    try {
        ScratchDir dir;
        const Memory notes = make_notes(n, 1);
        const std::vector<float> queries = make_queries(notes, 100, 2);

        emf::Hnsw index = build(notes);
        test_search(index, notes, queries);

        const std::string path = dir.file("memory.hnsw");
        index.save(path);
        emf::Hnsw mapped = emf::Hnsw::open(path);
        test_mapped(index, mapped, path, queries);

        test_threads(index, mapped, queries, n);
        test_forget(index, notes, queries);
        test_load(path, mapped, notes, queries);
        test_errors(index, dir, notes);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        ++g_failed;
    }

    std::printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}

// ring_pingpong.cpp — a C++17 host of the erlmcp-flow shared-memory rings that uses only the
// RAII wrapper erlmcp_flow.hpp (emf::Ring, emf::Producer, emf::Consumer, emf::Claim).
//
//   ring_pingpong-cpp [-n N]
//
// Tests the wrapper's ownership (moves, destructors that free once — valgrind checks), its
// exceptions (emf::Error with the status, emf::Full for back-pressure), try_send, send_for,
// send_batch partial acceptance (the longest prefix that fits), claims (a too-long commit
// leaves the claim open), try_recv and recv_batch growing their buffers to the size the
// library reports, poll (a handler that stops it; a free from inside it is EMF_ERR_BUSY),
// fan-out subscribers and stats, manual acknowledgement (a consumer destroyed before ack()
// has its frames delivered again; rewind, ack, back to auto), producer slots (committed()
// carries over to the slot's next holder) and checksum rings; then a ping-pong of N 64-byte
// frames between two threads over rings "ping" and "pong", every echo checked, round-trip
// percentiles printed for Wait::Spin and Wait::Park. (Killed processes: ring_pingpong.c.)
//
// Output: RTT lines on stdout, one line per failed check on stderr, then exactly one line
// `N passed, M failed`. Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded library
// has another ABI.
#include "erlmcp_flow.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

#include "check.hpp"

// This run's segment directory (tmpfs when available), removed at the end.
std::string g_dir;

bool make_temp_dir() {
    const char* bases[] = {"/dev/shm", std::getenv("TMPDIR"), "/tmp"};
    for (const char* base : bases) {
        struct stat st;
        if (base == nullptr || *base == '\0' || stat(base, &st) != 0 || !S_ISDIR(st.st_mode)) {
            continue;
        }
        std::string templ = std::string(base) + "/cpp-ring-pingpong-XXXXXX";
        if (mkdtemp(templ.data()) != nullptr) {
            g_dir = templ;
            return true;
        }
    }
    return false;
}

void remove_temp_dir() {
    if (g_dir.empty()) return;
    if (DIR* d = opendir(g_dir.c_str())) {
        while (dirent* e = readdir(d)) {
            std::string name = e->d_name;
            if (name != "." && name != "..") ::unlink((g_dir + "/" + name).c_str());
        }
        closedir(d);
    }
    rmdir(g_dir.c_str());
}

emf::RingOptions opts(std::size_t capacity) {
    emf::RingOptions o;
    o.capacity = capacity;
    o.dir = g_dir;
    return o;
}

// Frame `seq`: seq in the first 8 bytes, then bytes derived from it.
std::vector<std::uint8_t> frame(std::size_t len, std::uint64_t seq) {
    std::vector<std::uint8_t> f(len);
    std::uint64_t x = seq * 0x9E3779B97F4A7C15u + 0x632BE59BD9B4E019u;
    for (std::size_t j = 0; j < len; ++j) {
        if (j % 8 == 0) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
        }
        f[j] = static_cast<std::uint8_t>(x >> (8 * (j % 8)));
    }
    for (std::size_t j = 0; j < 8 && j < len; ++j) f[j] = static_cast<std::uint8_t>(seq >> (8 * j));
    return f;
}

bool same(emf::Bytes got, const std::vector<std::uint8_t>& want) {
    return got.size() == want.size() &&
           (want.empty() || std::memcmp(got.data(), want.data(), want.size()) == 0);
}

// ------------------------------------------------------------------------------------------

void test_options_and_errors() {
    emf::RingOptions d;
    CHECK(d.capacity == std::size_t(1) << 20 && !d.multi_producer && d.max_producers == 16 &&
          d.max_subscribers == 8 && d.stall_timeout_ms == 100 && d.mode == 0600 && d.dir.empty());

    CHECK_THROWS(emf::Ring::create("bad/name", opts(4096)), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(emf::Ring::create("", opts(4096)), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(emf::Ring::create("cap", opts(1000)), EMF_ERR_INVALID_ARGUMENT);
    {
        emf::RingOptions o = opts(4096);
        o.max_subscribers = 0;
        CHECK_THROWS(emf::Ring::create("subs", o), EMF_ERR_INVALID_ARGUMENT);
        o = opts(4096);
        o.mode = 01777;
        CHECK_THROWS(emf::Ring::create("mode", o), EMF_ERR_INVALID_ARGUMENT);
    }
    CHECK_THROWS(emf::Ring::open("missing", g_dir), EMF_ERR_NOT_FOUND);

    emf::Ring ring = emf::Ring::create("errors", opts(4096));
    CHECK(ring.max_payload() == 4096 / 4 - 8);
    CHECK_THROWS(emf::Ring::create("errors", opts(4096)), EMF_ERR_BUSY);
    emf::Producer p = ring.producer();
    CHECK_THROWS(ring.producer(), EMF_ERR_BUSY);
    emf::Consumer c = ring.consumer();
    CHECK_THROWS(ring.consumer(), EMF_ERR_BUSY);
    CHECK_THROWS(p.send(std::string(2000, 'x')), EMF_ERR_TOO_LARGE);
    CHECK_THROWS(p.send_for("x", static_cast<emf::Wait>(7), 1), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(c.wait(static_cast<emf::Wait>(7), 1), EMF_ERR_INVALID_ARGUMENT);

    // The Error carries the status, the C function and the library's message.
    try {
        emf::Ring::create("a b", opts(4096));
        CHECK(!"no exception");
    } catch (const emf::Error& e) {
        CHECK(e.status() == EMF_ERR_INVALID_ARGUMENT);
        CHECK(std::string(e.what()).find("emf_ring_create") != std::string::npos);
        CHECK(e.message().find("segment name") != std::string::npos);
    }

    // A second Ring object on the same segment.
    emf::Ring again = emf::Ring::open("errors", g_dir);
    p.send("hello");
    std::vector<std::uint8_t> got;
    CHECK(c.try_recv(got) && std::string(got.begin(), got.end()) == "hello");
    CHECK(again.stats().sent == 1 && again.stats().received == 1);
    again.unlink();
    CHECK_THROWS(emf::Ring::open("errors", g_dir), EMF_ERR_NOT_FOUND);
    CHECK_THROWS(again.unlink(), EMF_ERR_NOT_FOUND);
}

void test_moves() {
    emf::Ring ring = emf::Ring::create("moves", opts(4096));
    ring.unlink();  // the mapping stays: the name is not needed any more

    // Moves transfer ownership; moved-from objects are empty and throw when used.
    emf::Ring r2 = std::move(ring);
    CHECK(!ring && r2);  // NOLINT: use after move is the point
    CHECK_THROWS(ring.producer(), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(ring.stats(), EMF_ERR_INVALID_ARGUMENT);

    emf::Producer p = r2.producer();
    emf::Producer p2(std::move(p));
    CHECK(!p && p2);
    CHECK_THROWS(p.send("x"), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(p.try_send("x"), EMF_ERR_INVALID_ARGUMENT);
    // Assigning over a live producer frees it: the single producer slot is free again.
    p2 = emf::Producer();
    CHECK(!p2);
    emf::Producer p3 = r2.producer();
    CHECK(p3);

    emf::Consumer c = r2.consumer();
    emf::Consumer c2;
    c2 = std::move(c);
    CHECK(!c && c2);
    std::vector<std::uint8_t> buf;
    CHECK_THROWS(c.try_recv(buf), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(c.wait(emf::Wait::Spin, 0), EMF_ERR_INVALID_ARGUMENT);

    // The ring handle can go first: producers and consumers keep the mapping alive.
    r2 = emf::Ring();
    p3.send("still");
    CHECK(c2.try_recv(buf) && buf.size() == 5);

    // Handles adopted from the C API, released by the wrapper.
    emf_ring_t* raw = nullptr;
    std::string name = "adopt";
    emf_ring_options_t o{};
    emf_ring_options_default(&o);
    o.capacity = 4096;
    o.dir = g_dir.c_str();
    CHECK(emf_ring_create(name.c_str(), &o, &raw) == EMF_OK);
    emf::Ring adopted(raw);
    CHECK(adopted.get() == raw && adopted.stats().capacity == 4096);
    adopted.unlink();
}

void test_backpressure() {
    emf::Ring ring = emf::Ring::create("full", opts(4096));
    emf::Producer p = ring.producer();

    // No consumer yet: the ring fills, try_send says false, send throws emf::Full.
    std::uint64_t sent = 0;
    while (p.try_send(frame(64, sent))) ++sent;
    CHECK(sent == 56);
    try {
        p.send(frame(64, sent));
        CHECK(!"no exception");
    } catch (const emf::Full& e) {
        CHECK(e.status() == EMF_ERR_FULL && !e.message().empty());
    }
    CHECK_THROWS(p.send(frame(64, sent)), EMF_ERR_FULL);  // an emf::Full is an emf::Error
    CHECK_THROWS(p.claim(64), EMF_ERR_FULL);
    auto t0 = std::chrono::steady_clock::now();
    CHECK(!p.send_for(frame(64, sent), emf::Wait::Park, 20));
    CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(20));
    CHECK(ring.stats().backpressure >= 4);

    // Nothing lost; a consumer thread drains and send_for gets the rest through.
    emf::Consumer c = ring.consumer();
    std::atomic<bool> ok{true};
    const std::uint64_t total = 3 * sent;
    std::thread drain([&] {
        std::vector<std::uint8_t> buf;
        std::uint64_t seq = 0;
        try {
            while (seq < total) {
                if (!c.wait(emf::Wait::Park, 2000)) break;
                while (c.try_recv(buf)) {
                    if (!same(buf, frame(64, seq))) ok = false;
                    ++seq;
                }
            }
        } catch (const emf::Error& e) {
            std::fprintf(stderr, "drain: %s\n", e.what());
            ok = false;
        }
        if (seq != total) ok = false;
    });
    std::uint64_t i = sent;
    for (; i < total; ++i) {
        if (!p.send_for(frame(64, i), emf::Wait::Park, 5000)) break;
    }
    drain.join();
    CHECK(i == total && ok);
    CHECK(ring.stats().received == total);
    ring.unlink();
}

void test_batch_and_claims() {
    emf::Ring ring = emf::Ring::create("batch", opts(4096));
    emf::Producer p = ring.producer();
    emf::Consumer c = ring.consumer();

    std::vector<std::vector<std::uint8_t>> data;
    std::vector<emf::Bytes> frames;
    for (std::uint64_t i = 0; i < 100; ++i) data.push_back(frame(64, i));
    for (const auto& d : data) frames.emplace_back(d);

    // Partial acceptance: offer the rest again after draining; all arrive once, in order.
    std::size_t done = 0, calls = 0, first = 0, bad = 0;
    std::uint64_t seq = 0;
    std::vector<std::uint8_t> buf;
    while (done < frames.size() && calls < 50) {
        std::size_t n = p.send_batch(frames.data() + done, frames.size() - done);
        if (calls++ == 0) first = n;
        done += n;
        while (c.try_recv(buf)) {
            if (!same(buf, frame(64, seq))) ++bad;
            ++seq;
        }
    }
    CHECK(done == 100 && seq == 100 && bad == 0);
    CHECK(first > 0 && first < 100);
    // Into the empty ring (it holds 56 frames of 8 + 64 bytes): exactly 56 of 57.
    CHECK(p.send_batch(frames.data(), 57) == 56);
    CHECK(ring.stats().sent == 100 + 56);
    seq = 0;
    while (c.try_recv(buf)) {
        if (!same(buf, frame(64, seq))) ++bad;
        ++seq;
    }
    CHECK(seq == 56 && bad == 0);
    // Full: 0 sent, no exception.
    while (p.try_send(frame(64, 0))) {
    }
    CHECK(p.send_batch(frames) == 0);
    while (c.try_recv(buf)) {
    }

    // Claims: write in place, commit part; abort; destructor aborts; too-long commit refused.
    {
        emf::Claim cl = p.claim(100);
        CHECK(cl.is_open() && cl.size() == 100 && cl.data() != nullptr);
        std::memcpy(cl.data(), data[7].data(), 64);
        CHECK_THROWS(p.send("x"), EMF_ERR_INVALID_ARGUMENT);  // one claim at a time
        // Longer than the claim: refused by the library, and the claim stays open.
        CHECK_THROWS(cl.commit(101), EMF_ERR_INVALID_ARGUMENT);
        try {
            cl.commit(1000);
            CHECK(!"no exception");
        } catch (const emf::Error& e) {
            CHECK(e.message().find("claim still open") != std::string::npos);
        }
        CHECK(cl.is_open() && cl.data() != nullptr);
        CHECK(!c.try_recv(buf));                              // nothing delivered
        CHECK_THROWS(p.send("x"), EMF_ERR_INVALID_ARGUMENT);  // still open
        emf::Claim moved = std::move(cl);
        CHECK(!cl.is_open() && moved.is_open());
        moved.commit(64);
        CHECK(!moved.is_open());
        CHECK_THROWS(moved.commit(), EMF_ERR_INVALID_ARGUMENT);
        CHECK(c.try_recv(buf) && same(buf, data[7]));
    }
    {
        emf::Claim cl = p.claim(64);
        cl.abort();
        CHECK(!c.try_recv(buf));
        { emf::Claim dropped = p.claim(64); }  // destroyed open: aborted
        CHECK(!c.try_recv(buf));
        p.send(data[8]);
        CHECK(c.try_recv(buf) && same(buf, data[8]));
    }
    {
        // A producer destroyed with an open claim aborts it; the Claim then does nothing.
        emf::Claim cl = p.claim(32);
        p = emf::Producer();
        CHECK(cl.is_open());  // the Claim cannot know; its abort will be refused quietly
        emf::Producer p2 = ring.producer();
        p2.send(data[9]);
        CHECK(c.try_recv(buf) && same(buf, data[9]));
        CHECK(!c.try_recv(buf));
    }
    CHECK(ring.stats().unblocked == 0 && ring.stats().corrupt_frames == 0);
    ring.unlink();
}

void test_receiving() {
    emf::Ring ring = emf::Ring::create("recv", opts(8192));
    emf::Producer p = ring.producer();
    emf::Consumer c = ring.consumer();

    // try_recv grows an empty vector to the frame; an empty frame gives an empty vector.
    std::vector<std::uint8_t> buf;
    p.send(frame(2000, 1));
    p.send("");
    CHECK(c.try_recv(buf) && same(buf, frame(2000, 1)));
    buf.assign(5, 0);
    CHECK(c.try_recv(buf) && buf.empty());
    CHECK(!c.try_recv(buf));

    // recv_batch: views of the records inside the buffer.
    const std::size_t lens[] = {0, 1, 7, 64, 100};
    for (std::size_t i = 0; i < 5; ++i) p.send(frame(lens[i], i));
    // A buffer too small for the next frame is grown to exactly what the library reports
    // (the frame plus its 4-byte length prefix), then the batch is taken.
    std::vector<std::uint8_t> space(3);
    CHECK(c.recv_batch(space, 0).empty() && space.size() == 3);
    std::vector<emf::Bytes> got = c.recv_batch(space, 16);
    CHECK(space.size() == 4 + 0 && got.size() == 1 && same(got[0], frame(0, 0)));
    got = c.recv_batch(space, 16);
    CHECK(space.size() == 4 + 1 && got.size() == 1 && same(got[0], frame(1, 1)));
    space.resize(4096);
    got = c.recv_batch(space, 1);
    CHECK(got.size() == 1 && same(got[0], frame(7, 2)));
    got = c.recv_batch(space, 16);
    CHECK(got.size() == 2 && same(got[0], frame(64, 3)) && same(got[1], frame(100, 4)));
    CHECK(c.recv_batch(space, 16).empty() && space.size() == 4096);
    std::vector<std::uint8_t> none;  // empty: grown from nothing
    p.send(frame(300, 5));
    got = c.recv_batch(none, 16);
    CHECK(none.size() == 304 && got.size() == 1 && same(got[0], frame(300, 5)));

    // poll: a noexcept handler sees each frame in place.
    for (std::uint64_t i = 0; i < 10; ++i) p.send(frame(48, i));
    std::uint64_t seq = 0;
    std::size_t bad = 0;
    auto handler = [&](emf::Bytes f) noexcept {
        if (!same(f, frame(48, seq))) ++bad;
        ++seq;
    };
    CHECK(c.poll(4, handler) == 4);
    CHECK(c.poll(100, handler) == 6);
    CHECK(c.poll(100, handler) == 0);
    CHECK(seq == 10 && bad == 0);

    // A handler returning PollAction::Stop ends the poll after its frame (consumed).
    for (std::uint64_t i = 0; i < 10; ++i) p.send(frame(48, i));
    seq = 0;
    std::uint64_t stop_at = 2;
    auto until = [&](emf::Bytes f) noexcept {
        if (!same(f, frame(48, seq))) ++bad;
        return seq++ == stop_at ? emf::PollAction::Stop : emf::PollAction::Continue;
    };
    CHECK(c.poll(100, until) == 3 && seq == 3);  // frames 0, 1, 2
    stop_at = 3;
    CHECK(c.poll(100, until) == 1 && seq == 4);  // stops on its first frame
    stop_at = 9;
    CHECK(c.poll(2, until) == 2 && seq == 6);    // the limit still applies
    CHECK(c.poll(100, until) == 4 && seq == 10);
    CHECK(c.poll(100, until) == 0 && bad == 0);

    // Freeing the consumer from inside its own handler is refused (EMF_ERR_BUSY); the poll
    // goes on and the Consumer stays usable.
    for (std::uint64_t i = 0; i < 3; ++i) p.send(frame(48, i));
    std::vector<emf_status_t> frees;
    emf_consumer_t* raw = c.get();
    auto free_self = [&](emf::Bytes) noexcept { frees.push_back(emf_consumer_free(raw)); };
    CHECK(c.poll(2, free_self) == 2);
    CHECK(frees.size() == 2 && frees[0] == EMF_ERR_BUSY && frees[1] == EMF_ERR_BUSY);
    CHECK(c.try_recv(buf) && same(buf, frame(48, 2)));

    // wait and lag.
    CHECK(!c.wait(emf::Wait::Yield, 5));
    p.send(frame(64, 0));
    CHECK(c.wait(emf::Wait::Spin, 1000));
    CHECK(c.lag() == 72);
    CHECK(c.try_recv(buf));
    CHECK(c.lag() == 0);

    // Fan-out: subscribers see what is sent after they subscribe.
    emf::RingOptions o = opts(4096);
    o.max_subscribers = 3;
    emf::Ring fan = emf::Ring::create("fanout", o);
    emf::Producer fp = fan.producer();
    emf::Consumer fc = fan.consumer();
    fp.send("before");
    emf::Consumer s1 = fan.subscribe();
    emf::Consumer s2 = fan.subscribe();
    CHECK_THROWS(fan.subscribe(), EMF_ERR_BUSY);
    CHECK(fan.stats().subscribers == 3);
    for (std::uint64_t i = 0; i < 5; ++i) fp.send(frame(16, i));
    CHECK(fc.try_recv(buf) && std::string(buf.begin(), buf.end()) == "before");
    for (emf::Consumer* s : {&fc, &s1, &s2}) {
        std::uint64_t n = 0;
        while (s->try_recv(buf)) {
            CHECK(same(buf, frame(16, n)));
            ++n;
        }
        CHECK(n == 5);
    }
    s2 = emf::Consumer();
    CHECK(fan.stats().subscribers == 2);
    emf::RingStats st = fan.stats();
    CHECK(st.sent == 6 && st.received == 6 && st.producers == 1 && st.capacity == 4096);
    fan.unlink();
    ring.unlink();
}

// ------------------------------------------------------------------------------------------
// Ping-pong between two threads.

// Manual acknowledgement, producer slots and checksums through the wrapper.
void test_acks_slots_checksums() {
    emf::RingOptions d;
    CHECK(!d.checksum);
    emf::Ring ring = emf::Ring::create("acks", opts(1 << 16));
    emf::Producer p = ring.producer_in_slot(0);
    CHECK(p.slot() == 0 && p.committed() == 0);
    for (std::uint64_t i = 0; i < 10; ++i) p.send(frame(64, i));
    CHECK(p.committed() == 10);
    CHECK_THROWS(ring.producer_in_slot(0), EMF_ERR_BUSY);
    CHECK_THROWS(ring.producer_in_slot(1), EMF_ERR_INVALID_ARGUMENT);  // single producer

    std::vector<std::uint8_t> got;
    {
        // Manual mode: destroyed without ack, so the next consumer gets the frames again.
        emf::Consumer c = ring.consumer();
        c.set_ack_mode(emf::AckMode::Manual);
        CHECK(c.try_recv(got) && same(got, frame(64, 0)));
        std::vector<std::uint8_t> buf(4096);
        std::vector<emf::Bytes> batch = c.recv_batch(buf, 3);
        CHECK(batch.size() == 3 && same(batch[2], frame(64, 3)));
        CHECK(c.poll(2, [](emf::Bytes) noexcept {}) == 2);
        CHECK(c.unacked() == 6);
        CHECK(ring.stats().received == 0);
    }
    {
        emf::Consumer c = ring.consumer();
        c.set_ack_mode(emf::AckMode::Manual);
        std::uint64_t seq = 0;
        while (c.try_recv(got)) CHECK(same(got, frame(64, seq++)));
        CHECK(seq == 10 && c.unacked() == 10);
        CHECK(c.rewind() == 10 && c.unacked() == 0);
        CHECK(c.try_recv(got) && same(got, frame(64, 0)));  // rewound: from the start again
        c.ack();
        CHECK(c.unacked() == 0 && ring.stats().received == 1);
        CHECK(c.try_recv(got) && same(got, frame(64, 1)));
        c.set_ack_mode(emf::AckMode::Auto);  // acknowledges frame 1
        CHECK(c.unacked() == 0 && c.rewind() == 0);
        CHECK_THROWS(c.set_ack_mode(static_cast<emf::AckMode>(5)), EMF_ERR_INVALID_ARGUMENT);
    }
    {
        emf::Consumer c = ring.consumer();  // after the acknowledged frames 0 and 1
        CHECK(c.try_recv(got) && same(got, frame(64, 2)));
    }

    // A slot's count carries over to its next holder, which resends from there.
    p = emf::Producer();
    emf::Producer again = ring.producer_in_slot(0);
    CHECK(again.committed() == 10);
    emf::Producer moved = std::move(again);
    CHECK_THROWS(again.committed(), EMF_ERR_INVALID_ARGUMENT);  // NOLINT: moved from
    CHECK_THROWS(again.slot(), EMF_ERR_INVALID_ARGUMENT);
    emf::Consumer gone;
    CHECK_THROWS(gone.ack(), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(gone.rewind(), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(gone.unacked(), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(gone.set_ack_mode(emf::AckMode::Manual), EMF_ERR_INVALID_ARGUMENT);
    ring.unlink();

    // Checksums: round trips of every size up to the largest payload.
    emf::RingOptions o = opts(1 << 16);
    o.checksum = true;
    emf::Ring checked = emf::Ring::create("checked", o);
    emf::Producer tx = checked.producer();
    emf::Consumer rx = checked.consumer();
    for (std::size_t len : {std::size_t(0), std::size_t(1), std::size_t(8), std::size_t(999),
                            checked.max_payload()}) {
        tx.send(frame(len, len));
        CHECK(rx.try_recv(got) && same(got, frame(len, len)));
    }
    CHECK(checked.stats().corrupt_frames == 0);
    checked.unlink();
}

double pct_us(const std::vector<std::uint64_t>& sorted, unsigned per_mille) {
    std::size_t i = std::min(sorted.size() - 1, sorted.size() * per_mille / 1000);
    return static_cast<double>(sorted[i]) / 1000.0;
}

void pingpong(emf::Wait wait, const char* label, std::size_t n) {
    emf::Ring ping = emf::Ring::create("ping", opts(65536));
    emf::Ring pong = emf::Ring::create("pong", opts(65536));
    emf::Producer tx = ping.producer();
    emf::Consumer rx = pong.consumer();

    std::atomic<bool> echo_ok{true};
    std::thread echo([wait, &echo_ok] {
        try {
            // The echo side opens the rings by name, as another process would.
            emf::Ring in_ring = emf::Ring::open("ping", g_dir);
            emf::Ring out_ring = emf::Ring::open("pong", g_dir);
            emf::Consumer in = in_ring.consumer();
            emf::Producer out = out_ring.producer();
            std::vector<std::uint8_t> buf;
            int idle = 0;
            for (;;) {
                if (!in.try_recv(buf)) {
                    if (!in.wait(wait, 1000) && ++idle > 30) {
                        echo_ok = false;
                        return;
                    }
                    continue;
                }
                idle = 0;
                if (buf.empty()) return;  // stop
                if (!out.send_for(buf, emf::Wait::Park, 2000)) {
                    echo_ok = false;
                    return;
                }
            }
        } catch (const emf::Error& e) {
            std::fprintf(stderr, "echo thread: %s\n", e.what());
            echo_ok = false;
        }
    });

    const std::size_t warm = std::min<std::size_t>(n / 10, 1000);
    std::vector<std::uint64_t> rtt;
    rtt.reserve(n);
    std::vector<std::uint8_t> in;
    std::size_t bad = 0;
    bool ok = true;
    try {
        for (std::size_t i = 0; ok && i < warm + n; ++i) {
            std::vector<std::uint8_t> out = frame(64, i);
            auto t0 = std::chrono::steady_clock::now();
            tx.send(out);
            int timeouts = 0;
            while (!rx.try_recv(in)) {
                if (!rx.wait(wait, 1000) && ++timeouts > 30) {
                    ok = false;
                    break;
                }
            }
            auto t1 = std::chrono::steady_clock::now();
            if (in != out) ++bad;
            if (i >= warm) {
                rtt.push_back(static_cast<std::uint64_t>(
                    std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
            }
        }
        CHECK(tx.send_for("", emf::Wait::Park, 2000));  // stop
    } catch (const emf::Error& e) {
        std::fprintf(stderr, "ping-pong: %s\n", e.what());
        ok = false;
    }
    echo.join();
    CHECK(ok && echo_ok);
    CHECK(rtt.size() == n);
    CHECK(bad == 0);
    emf::RingStats sp = ping.stats(), sq = pong.stats();
    CHECK(sp.sent == warm + n + 1 && sp.received == warm + n + 1);
    CHECK(sq.sent == warm + n && sq.received == warm + n);
    if (!rtt.empty()) {
        std::sort(rtt.begin(), rtt.end());
        double sum = 0;
        for (std::uint64_t v : rtt) sum += static_cast<double>(v);
        std::printf("rtt %-5s 64 B x %zu (2 threads):   p50 %.2f us  p99 %.2f us  p99.9 %.2f us  "
                    "max %.2f us  (mean %.2f us)\n",
                    label, rtt.size(), pct_us(rtt, 500), pct_us(rtt, 990), pct_us(rtt, 999),
                    static_cast<double>(rtt.back()) / 1000.0,
                    sum / static_cast<double>(rtt.size()) / 1000.0);
    }
    ping.unlink();
    pong.unlink();
}

}  // namespace

int main(int argc, char** argv) {
    try {
        emf::check_abi();
    } catch (const emf::Error& e) {
        std::fprintf(stderr, "refusing to run: %s\n", e.what());
        return 2;
    }
    std::size_t n = 5000;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            char* end = nullptr;
            n = std::strtoull(argv[++i], &end, 10);
            if (end == nullptr || *end != '\0' || n == 0) {
                std::fprintf(stderr, "usage: %s [-n N]\n", argv[0]);
                return 2;
            }
        } else {
            std::fprintf(stderr, "usage: %s [-n N]\n", argv[0]);
            return 2;
        }
    }
    if (!make_temp_dir()) {
        std::fprintf(stderr, "cannot create a temporary directory\n");
        return 3;
    }

    try {
        test_options_and_errors();
        test_moves();
        test_backpressure();
        test_batch_and_claims();
        test_receiving();
        test_acks_slots_checksums();
        pingpong(emf::Wait::Spin, "spin", n);
        pingpong(emf::Wait::Park, "park", n);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        ++g_failed;
    }
    remove_temp_dir();

    std::printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}

// erlmcp_flow.hpp — a small header-only C++17 RAII wrapper over the erlmcp-flow C ABI.
//
// Everything here is a thin layer over include/erlmcp_flow.h: no logic of its own beyond
// ownership (every emf_buf_t and emf_message_t is released exactly once, by a destructor)
// and turning a non-OK emf_status_t into an emf::Error exception carrying the status and the
// library's message for the failing call.
//
//     emf::check_abi();                                  // once, at start-up
//     emf::Buffer archive = emf::json_to_archive(json, emf::Priority::High);
//     emf::Message msg(archive);
//     for (std::size_t i = 0; i < msg.size(); ++i)
//         std::cout << msg.envelope(i).method << '\n';
//     std::cout << msg.to_json().view() << '\n';
//
// Thread-safety (the C ABI's, restated):
//  - The free functions are thread-safe: they share no state except the library's registries.
//  - The error text is per thread in the library; an Error captures it on the thread of the
//    failing call, immediately after that call, so it is always the right message.
//  - A Buffer is a plain owned value: distinct Buffers may be used on distinct threads; one
//    Buffer may be read (const) from several threads, but not moved or destroyed meanwhile.
//  - A Message is immutable: its const member functions may run on several threads at once.
//    It must not be moved from or destroyed while another thread uses it.
//  - A Ring may be used from any number of threads. A Producer, a Consumer and a Claim are
//    used by one thread at a time (another thread calling in meanwhile gets Error with
//    EMF_ERR_BUSY); they may move between threads. Attach one Producer per thread on a
//    multi-producer ring.
//  - A TaskQueue and a Cache may be used from any number of threads at once (share a
//    reference); they must not be moved from or destroyed while another thread uses them.
//  - An Hnsw may be used from any number of threads at once: searches, inserts and removals
//    run together; compact() waits for the calls in progress and holds the others off
//    (try_compact() returns false instead of waiting). It must not be moved from or
//    destroyed while another thread uses it.
//
// Shared-memory rings (see the Ring class below):
//
//     emf::RingOptions opts;                             // the library's defaults
//     opts.capacity = 1 << 16;
//     emf::Ring ring = emf::Ring::create("jobs", opts);  // or emf::Ring::open("jobs")
//     emf::Producer tx = ring.producer();
//     emf::Consumer rx = ring.consumer();                // usually in another process
//     if (!tx.try_send("hello")) { /* full: keep the frame, retry later */ }
//     std::vector<std::uint8_t> frame;
//     if (rx.wait(emf::Wait::Park, 100) && rx.try_recv(frame)) { /* use frame */ }
//     rx.set_ack_mode(emf::AckMode::Manual);             // at least once: receive, then
//     rx.ack();                                          //   ack (see the table below)
//
//     // A producer restarted after a crash, in the slot its predecessor held:
//     emf::Producer tx2 = ring.producer_in_slot(0);
//     for (std::uint64_t seq = tx2.committed(); seq < total; ++seq) tx2.send(frame_of(seq));
//
// Delivery guarantees of the rings: what a crash (kill -9 of one process, or a handle
// destroyed) does to frames, path by path.
//
//   Path                          Guarantee                        What a crash does
//   ----------------------------  -------------------------------  ---------------------------
//   Producer::send / try_send /   once it returned (true), the     producer killed inside the
//   send_for, Claim::commit,      frame is committed: it reaches   call: the frame is either
//   Producer::send_batch (the n   every consumer attached before   committed whole or never
//   it returned)                  it                               delivered; committed() of a
//                                                                  producer restarted in the
//                                                                  same slot
//                                                                  (Ring::producer_in_slot)
//                                                                  says which
//   send answering Full / false   nothing was written; the caller  -
//   / Error                       keeps the frame
//   Consumer::poll (handler),     at least once while the handler  consumer dies during the
//   AckMode::Auto                 runs; released when poll         handler: that batch is
//                                 returns                          delivered again to the next
//                                                                  consumer; after poll
//                                                                  returned: released, not
//                                                                  redelivered
//   Consumer::try_recv /          at most once: released before    consumer dies after the
//   recv_batch, AckMode::Auto     they return                      call and before it used the
//                                                                  bytes: those frames are
//                                                                  lost to it
//   any receive in                at least once: nothing is        consumer dies (or is
//   AckMode::Manual, then         released before ack()            destroyed) before ack():
//   Consumer::ack                                                  every unacknowledged frame
//                                                                  is delivered again, in
//                                                                  order, to the next consumer
//                                                                  (dedupe by your own
//                                                                  sequence numbers if effects
//                                                                  must happen once)
//   fan-out subscribers           as above for each subscriber,    a dead subscriber's slot is
//   (Ring::subscribe)             from the moment it attached      reaped: a new subscriber
//                                                                  starts at the tail
//
// A frame whose bytes change inside the ring is delivered as it is unless the ring was
// created with RingOptions::checksum (then it is skipped and reported as
// Error(EMF_ERR_CORRUPT) by the receive that meets it, after the frames before it were
// delivered); a damaged frame header is reported as corrupt once nothing can commit it any
// more.
//
// Task queue and cache (see the TaskQueue and Cache classes below):
//
//     emf::TaskQueue q(1000, 10000, emf::DropPolicy::LowPriority);
//     emf::EnqueueResult r = q.enqueue("job", emf::Priority::High);
//     if (r.status == emf::Enqueued::Rejected) { /* still ours: retry later or refuse */ }
//     if (r.evicted) { /* a lower-priority task handed back: r.evicted->data */ }
//     while (std::optional<emf::Task> t = q.dequeue()) { /* t->data, t->priority */ }
//
//     emf::Cache cache(10000, std::chrono::seconds(5));  // capacity, TTL (0: none)
//     cache.put("agent:planner", "tcp://10.0.0.7:7000");
//     if (std::optional<std::string> v = cache.get("agent:planner")) { /* hit */ }
//
// Vectors and the HNSW index (see the Hnsw class below):
//
//     emf::HnswParams params(384);                       // the library's defaults: cosine, M 16
//     params.originals = emf::Originals::F16;            // keep halves for exact re-ranking
//     emf::Hnsw index(params);
//     index.insert_batch(ids, vectors, 2);               // n ids, n x 384 floats, 2 threads
//     std::vector<emf::Hit> hits = index.search(query, 10);         // closest first
//     index.save("memory.hnsw");
//     emf::Hnsw mapped = emf::Hnsw::open("memory.hnsw"); // read-only, searched in place
#ifndef ERLMCP_FLOW_HPP
#define ERLMCP_FLOW_HPP

#include <erlmcp_flow.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace emf {

// A failed call: the library's status code and its message.
class Error : public std::runtime_error {
public:
    Error(emf_status_t status, const std::string& function, const std::string& message)
        : std::runtime_error(function + ": " + emf_status_name(status) +
                             (message.empty() ? std::string() : ": " + message)),
          status_(status), message_(message) {}

    // An EMF_ERR_* code.
    emf_status_t status() const noexcept { return status_; }
    // The library's text for the error (what() adds the function and the status name).
    const std::string& message() const noexcept { return message_; }

private:
    emf_status_t status_;
    std::string message_;
};

namespace detail {

// This thread's last error message from the library.
inline std::string last_error_message() {
    std::size_t len = 0;
    emf_last_error_message(nullptr, 0, &len);  // length query
    std::string text(len + 1, '\0');
    if (emf_last_error_message(text.data(), text.size(), &len) != EMF_OK) {
        return std::string();
    }
    text.resize(len);
    return text;
}

// Throws Error for a non-OK status. Call it right after the C call, on the same thread.
inline void check(emf_status_t status, const char* function) {
    if (status != EMF_OK) {
        throw Error(status, function, last_error_message());
    }
}

}  // namespace detail

// Throws Error(EMF_ERR_UNSUPPORTED) when the loaded library has another ABI than the
// header this program was compiled with. Call it once before anything else.
inline void check_abi() {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        throw Error(EMF_ERR_UNSUPPORTED, "emf::check_abi",
                    "liberlmcp_flow has ABI " + std::to_string(emf_abi_version()) +
                        ", this program was compiled for ABI " + std::to_string(EMF_ABI_VERSION));
    }
}

// The library's version, e.g. "0.1.0".
inline std::string_view version() { return emf_version_string(); }

enum class Kind : std::uint32_t {
    Request = EMF_KIND_REQUEST,
    Response = EMF_KIND_RESPONSE,
    Notification = EMF_KIND_NOTIFICATION,
    Task = EMF_KIND_TASK,
    Result = EMF_KIND_RESULT,
    Error = EMF_KIND_ERROR,
};

enum class Priority : std::uint32_t {
    Critical = EMF_PRIORITY_CRITICAL,
    High = EMF_PRIORITY_HIGH,
    Normal = EMF_PRIORITY_NORMAL,
    Low = EMF_PRIORITY_LOW,
};

enum class IdType : std::uint32_t {
    None = EMF_ID_NONE,
    Null = EMF_ID_NULL,
    Int = EMF_ID_INT,
    String = EMF_ID_STRING,
    OtherNumber = EMF_ID_OTHER_NUMBER,
};

// The name of a kind ("request", "task", ...), or "unknown" for a code the library does not
// define. Static text: the view never dangles.
inline std::string_view kind_name(Kind kind) noexcept {
    return emf_kind_name(static_cast<std::uint32_t>(kind));
}

// The name of a priority ("critical", "high", "normal", "low"), or "unknown".
inline std::string_view priority_name(Priority priority) noexcept {
    return emf_priority_name(static_cast<std::uint32_t>(priority));
}

// Metadata for json_to_archive (times in µs since the UNIX epoch; 0 = now / no deadline),
// and whether the archive carries a CRC32C (EMF_ARCHIVE_CHECKSUM: any flipped bit is then
// refused as EMF_ERR_CORRUPT by every reader).
struct EncodeOptions {
    Priority priority = Priority::Normal;
    std::uint64_t created_at_us = 0;
    std::uint64_t deadline_us = 0;
    bool checksum = false;
};

// Bytes owned by the library, released in the destructor. Move-only. It keeps the whole
// emf_buf_t, private token included, so the library can tell it from a stale copy.
class Buffer {
public:
    Buffer() noexcept = default;
    // Adopts a buffer returned by the library.
    explicit Buffer(emf_buf_t raw) noexcept : buf_(raw) {}
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    Buffer(Buffer&& other) noexcept : buf_(std::exchange(other.buf_, emf_buf_t{nullptr, 0, 0})) {}
    Buffer& operator=(Buffer&& other) noexcept {
        if (this != &other) {
            reset();
            buf_ = std::exchange(other.buf_, emf_buf_t{nullptr, 0, 0});
        }
        return *this;
    }
    ~Buffer() { reset(); }

    const std::uint8_t* data() const noexcept { return buf_.data; }
    std::size_t size() const noexcept { return buf_.len; }
    bool empty() const noexcept { return buf_.len == 0; }
    const std::uint8_t* begin() const noexcept { return buf_.data; }
    const std::uint8_t* end() const noexcept { return buf_.data + buf_.len; }
    // The bytes as text (JSON from the library is UTF-8). Borrowed: valid while *this lives.
    std::string_view view() const noexcept {
        return std::string_view(reinterpret_cast<const char*>(buf_.data), buf_.len);
    }
    std::string str() const { return std::string(view()); }

    // Frees the bytes now; the Buffer becomes empty.
    void reset() noexcept {
        // Cannot fail: this Buffer owns a buffer the library returned, or nothing.
        emf_buf_free(&buf_);
    }
    // Gives up ownership: the caller must emf_buf_free the result.
    emf_buf_t release() noexcept { return std::exchange(buf_, emf_buf_t{nullptr, 0, 0}); }

private:
    emf_buf_t buf_{nullptr, 0, 0};
};

// A borrowed byte range (what C++20 would spell std::span<const std::uint8_t>). It converts
// from a Buffer, text and a byte vector, and must not outlive what it views.
class Bytes {
public:
    Bytes(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}
    Bytes(const Buffer& b) noexcept : data_(b.data()), size_(b.size()) {}  // NOLINT: implicit
    Bytes(std::string_view s) noexcept                                    // NOLINT: implicit
        : data_(reinterpret_cast<const std::uint8_t*>(s.data())), size_(s.size()) {}
    Bytes(const std::string& s) noexcept : Bytes(std::string_view(s)) {}  // NOLINT: implicit
    Bytes(const char* s) : Bytes(std::string_view(s)) {}                  // NOLINT: implicit
    Bytes(const std::vector<std::uint8_t>& v) noexcept                    // NOLINT: implicit
        : data_(v.data()), size_(v.size()) {}

    const std::uint8_t* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }

private:
    const std::uint8_t* data_;
    std::size_t size_;
};

// One envelope of a Message. The views borrow from the Message and stay valid until it is
// destroyed (moving the Message does not move its bytes).
struct Envelope {
    Kind kind;
    Priority priority;
    std::uint64_t created_at_us;
    std::uint64_t deadline_us;
    IdType id_type;
    std::int64_t id_int;        // when id_type == IdType::Int
    std::string_view id_str;    // when id_type == IdType::String
    bool has_method;
    std::string_view method;    // empty when !has_method
    bool has_error;
    std::int64_t error_code;    // when has_error
};

// A validated archive held by the library, for field access. Move-only.
class Message {
public:
    // Copies and validates `archive`; throws Error(EMF_ERR_CORRUPT) for bad bytes.
    explicit Message(Bytes archive) {
        detail::check(emf_message_open(archive.data(), archive.size(), &msg_), "emf_message_open");
    }
    Message(const Message&) = delete;
    Message& operator=(const Message&) = delete;
    Message(Message&& other) noexcept : msg_(std::exchange(other.msg_, nullptr)) {}
    Message& operator=(Message&& other) noexcept {
        if (this != &other) {
            emf_message_free(msg_);
            msg_ = std::exchange(other.msg_, nullptr);
        }
        return *this;
    }
    ~Message() { emf_message_free(msg_); }

    // The number of envelopes (1, or the batch size).
    std::size_t size() const {
        std::size_t n = 0;
        detail::check(emf_message_count(msg_, &n), "emf_message_count");
        return n;
    }

    // Envelope `index`; throws Error(EMF_ERR_INVALID_ARGUMENT) when out of range.
    Envelope envelope(std::size_t index) const {
        emf_envelope_info_t e{};
        detail::check(emf_message_envelope(msg_, index, &e), "emf_message_envelope");
        auto text = [](const std::uint8_t* p, std::size_t n) {
            return p ? std::string_view(reinterpret_cast<const char*>(p), n) : std::string_view();
        };
        return Envelope{static_cast<Kind>(e.kind),
                        static_cast<Priority>(e.priority),
                        e.created_at_us,
                        e.deadline_us,
                        static_cast<IdType>(e.id_type),
                        e.id_int,
                        text(e.id_str, e.id_str_len),
                        e.method != nullptr,
                        text(e.method, e.method_len),
                        e.has_error,
                        e.error_code};
    }

    // The whole message as JSON-RPC text.
    Buffer to_json() const {
        emf_buf_t out{nullptr, 0, 0};
        detail::check(emf_message_to_json(msg_, &out), "emf_message_to_json");
        return Buffer(out);
    }

    // The JSON-RPC id of envelope `index` as exact JSON text (`1`, `"abc"`, `null`, a big
    // integer verbatim); throws Error(EMF_ERR_NOT_FOUND) when the envelope has no id.
    Buffer id_json(std::size_t index) const {
        emf_buf_t out{nullptr, 0, 0};
        detail::check(emf_message_id_json(msg_, index, &out), "emf_message_id_json");
        return Buffer(out);
    }

    // The params / result / error object of envelope `index` as JSON; throws
    // Error(EMF_ERR_NOT_FOUND) when the envelope has none.
    Buffer payload_json(std::size_t index) const {
        emf_buf_t out{nullptr, 0, 0};
        detail::check(emf_message_payload_json(msg_, index, &out), "emf_message_payload_json");
        return Buffer(out);
    }

    // The C handle (NULL after a move), for calls this wrapper does not cover.
    const emf_message_t* get() const noexcept { return msg_; }

private:
    emf_message_t* msg_ = nullptr;
};

// Parses MCP / JSON-RPC 2.0 text (one message or a batch) into an archive.
inline Buffer json_to_archive(std::string_view json, const EncodeOptions& opts = {}) {
    const emf_encode_options_t o{static_cast<std::uint32_t>(opts.priority), opts.created_at_us,
                                 opts.deadline_us};
    emf_buf_t out{nullptr, 0, 0};
    detail::check(emf_json_to_archive_ex(reinterpret_cast<const std::uint8_t*>(json.data()),
                                         json.size(), &o,
                                         opts.checksum ? EMF_ARCHIVE_CHECKSUM : 0u, &out),
                  "emf_json_to_archive_ex");
    return Buffer(out);
}

inline Buffer json_to_archive(std::string_view json, Priority priority) {
    EncodeOptions opts;
    opts.priority = priority;
    return json_to_archive(json, opts);
}

// Validates an archive and writes it as JSON-RPC text.
inline Buffer archive_to_json(Bytes archive) {
    emf_buf_t out{nullptr, 0, 0};
    detail::check(emf_archive_to_json(archive.data(), archive.size(), &out), "emf_archive_to_json");
    return Buffer(out);
}

// Validates an archive in place; returns its number of envelopes.
inline std::size_t validate(Bytes archive) {
    std::size_t n = 0;
    detail::check(emf_archive_validate(archive.data(), archive.size(), &n), "emf_archive_validate");
    return n;
}

// The bytes to send, and whether they are a zlib stream.
struct Compressed {
    Buffer data;
    bool compressed;
};

// zlib-compresses `data` when it is at least `threshold` bytes and shrinks below 0.8 x.
inline Compressed compress_if_needed(Bytes data,
                                     std::size_t threshold = EMF_COMPRESS_DEFAULT_THRESHOLD) {
    emf_buf_t out{nullptr, 0, 0};
    bool compressed = false;
    detail::check(emf_compress_if_needed(data.data(), data.size(), threshold, &out, &compressed),
                  "emf_compress_if_needed");
    return Compressed{Buffer(out), compressed};
}

// Inflates a zlib stream; throws Error(EMF_ERR_TOO_LARGE) past `max_len` bytes and
// Error(EMF_ERR_CORRUPT) for a bad stream.
inline Buffer decompress(Bytes data, std::size_t max_len) {
    emf_buf_t out{nullptr, 0, 0};
    detail::check(emf_decompress(data.data(), data.size(), max_len, &out), "emf_decompress");
    return Buffer(out);
}

// ---------------------------------------------------------------------------------------------
// Shared-memory rings

// How a waiting consumer or producer passes the time.
enum class Wait : std::uint32_t {
    Spin = EMF_WAIT_SPIN,    // busy-poll: lowest latency, burns a core
    Yield = EMF_WAIT_YIELD,  // spin, then yield the thread
    Park = EMF_WAIT_PARK,    // spin, then sleep on a futex (woken across processes)
};

// Back-pressure: the ring has no room (EMF_ERR_FULL). Nothing was sent; the caller still
// owns the frame and may retry, wait (Producer::send_for) or give up. Thrown by
// Producer::send, Producer::claim; Producer::try_send answers false instead.
class Full : public Error {
public:
    using Error::Error;
};

namespace detail {

// check() that throws Full for EMF_ERR_FULL.
inline void check_ring(emf_status_t status, const char* function) {
    if (status == EMF_ERR_FULL) throw Full(status, function, last_error_message());
    check(status, function);
}

inline Error moved_from(const char* function) {
    return Error(EMF_ERR_INVALID_ARGUMENT, function, "the object was moved from or released");
}

}  // namespace detail

// When a Consumer releases what it delivered (Consumer::set_ack_mode).
enum class AckMode : std::uint32_t {
    Auto = EMF_ACK_AUTO,      // every receive releases (the default)
    Manual = EMF_ACK_MANUAL,  // nothing is released until Consumer::ack(): a consumer that
                              // dies first has those frames delivered again (at least once)
};

// Options for Ring::create. A default-constructed RingOptions holds the library's defaults
// (emf_ring_options_default): 1 MiB, single producer, 16 producer slots, 8 subscriber slots,
// 100 ms stall timeout, mode 0600, segment in /dev/shm, no checksums.
struct RingOptions {
    std::size_t capacity;            // a power of two from 4096 to 1 GiB
    bool multi_producer;             // several producers (claims by CAS)
    std::uint32_t max_producers;     // producer slots of a multi-producer ring
    std::uint32_t max_subscribers;   // subscriber slots, the primary consumer's included
    std::uint32_t stall_timeout_ms;  // before a stalled claim's producer is checked for death
    std::uint32_t mode;              // file mode of the segment
    std::string dir;                 // directory of the segment file; empty = /dev/shm
    bool checksum;                   // EMF_RING_CHECKSUM: every frame carries a CRC32C that
                                     // consumers check (a changed frame: EMF_ERR_CORRUPT)

    RingOptions() {
        emf_ring_options_t o{};
        emf_ring_options_default(&o);  // cannot fail: `o` is a valid out-parameter
        capacity = o.capacity;
        multi_producer = o.multi_producer;
        max_producers = o.max_producers;
        max_subscribers = o.max_subscribers;
        stall_timeout_ms = o.stall_timeout_ms;
        mode = o.mode;
        checksum = (o.flags & EMF_RING_CHECKSUM) != 0;
    }
};

// A ring's counters (capacity, tail, sent, bytes, received, backpressure, unblocked,
// dead_reaped, max_lag, corrupt_frames, producers, subscribers): the C struct as is.
using RingStats = emf_ring_stats_t;

class Producer;

// Room for one frame, claimed in the ring: write up to size() bytes at data(), then commit()
// (or commit(n) for fewer) or abort(). A Claim destroyed while open aborts (nothing is
// delivered). Move-only. While it is open its Producer sends nothing else (Error
// EMF_ERR_INVALID_ARGUMENT). It must not outlive its Producer's ring mapping; if the Producer
// is destroyed first the claim is aborted and data() must no longer be used.
class Claim {
public:
    Claim(const Claim&) = delete;
    Claim& operator=(const Claim&) = delete;
    Claim(Claim&& other) noexcept
        : p_(std::exchange(other.p_, nullptr)),
          data_(std::exchange(other.data_, nullptr)),
          size_(std::exchange(other.size_, 0)) {}
    Claim& operator=(Claim&& other) noexcept {
        if (this != &other) {
            abort_quietly();
            p_ = std::exchange(other.p_, nullptr);
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }
    ~Claim() { abort_quietly(); }

    // Where to write the payload (old ring bytes until written); nullptr once closed.
    std::uint8_t* data() const noexcept { return data_; }
    // The claimed length.
    std::size_t size() const noexcept { return size_; }
    // True until commit() or abort().
    bool is_open() const noexcept { return p_ != nullptr; }

    // Delivers the whole claim.
    void commit() { commit(size_); }

    // Delivers the first `n` bytes (the rest becomes padding). n > size() is refused by the
    // library with Error(EMF_ERR_INVALID_ARGUMENT) and the claim stays open: commit again with
    // a smaller n, or abort (the destructor does).
    void commit(std::size_t n) {
        if (p_ == nullptr) throw detail::moved_from("emf::Claim::commit");
        emf_status_t st = emf_producer_commit(p_, n);
        if ((st == EMF_ERR_INVALID_ARGUMENT && n > size_) || st == EMF_ERR_BUSY) {
            detail::check(st, "emf_producer_commit");  // the claim is still open: keep it
        }
        p_ = nullptr;
        data_ = nullptr;
        detail::check(st, "emf_producer_commit");
    }

    // Gives the space back; nothing is delivered.
    void abort() {
        if (p_ == nullptr) throw detail::moved_from("emf::Claim::abort");
        emf_producer_t* p = std::exchange(p_, nullptr);
        data_ = nullptr;
        detail::check(emf_producer_abort(p), "emf_producer_abort");
    }

private:
    friend class Producer;
    Claim(emf_producer_t* p, std::uint8_t* data, std::size_t size) noexcept
        : p_(p), data_(data), size_(size) {}

    void abort_quietly() noexcept {
        if (p_ != nullptr) {
            // EMF_ERR_INVALID_ARGUMENT if the producer was freed first (which aborted the
            // claim already): nothing left to do either way.
            emf_producer_abort(std::exchange(p_, nullptr));
            data_ = nullptr;
        }
    }

    emf_producer_t* p_ = nullptr;
    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

// A producer attached to a ring (Ring::producer). Move-only; detached in the destructor (an
// open claim is aborted). A moved-from Producer throws Error on use.
class Producer {
public:
    Producer() noexcept = default;
    // Adopts a handle from emf_producer_new.
    explicit Producer(emf_producer_t* p) noexcept : p_(p) {}
    Producer(const Producer&) = delete;
    Producer& operator=(const Producer&) = delete;
    Producer(Producer&& other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
    Producer& operator=(Producer&& other) noexcept {
        if (this != &other) {
            emf_producer_free(p_);
            p_ = std::exchange(other.p_, nullptr);
        }
        return *this;
    }
    ~Producer() { emf_producer_free(p_); }

    // Sends one frame; throws Full when the ring is full (nothing sent), Error otherwise
    // (EMF_ERR_TOO_LARGE past Ring::max_payload).
    void send(Bytes frame) {
        detail::check_ring(emf_producer_send(handle("emf_producer_send"), frame.data(), frame.size()),
                           "emf_producer_send");
    }

    // Sends one frame; false when the ring is full (nothing sent). Other failures throw.
    bool try_send(Bytes frame) {
        emf_status_t st = emf_producer_send(handle("emf_producer_send"), frame.data(), frame.size());
        if (st == EMF_ERR_FULL) return false;
        detail::check(st, "emf_producer_send");
        return true;
    }

    // Sends one frame, waiting up to `timeout_ms` for room; false when none came in time.
    bool send_for(Bytes frame, Wait strategy, std::uint32_t timeout_ms) {
        emf_status_t st =
            emf_producer_send_timeout(handle("emf_producer_send_timeout"), frame.data(),
                                      frame.size(), static_cast<std::uint32_t>(strategy), timeout_ms);
        if (st == EMF_ERR_TIMEOUT) return false;
        detail::check(st, "emf_producer_send_timeout");
        return true;
    }

    // Sends frames[0..n) in order with one claim and returns how many were sent: the longest
    // prefix that fits, shorter than n under back-pressure (0 when the ring is full). The rest
    // were not sent and stay the caller's.
    std::size_t send_batch(const Bytes* frames, std::size_t n) {
        std::vector<emf_slice_t> slices;
        slices.reserve(n);
        for (std::size_t i = 0; i < n; ++i) slices.push_back(emf_slice_t{frames[i].data(), frames[i].size()});
        std::size_t sent = 0;
        emf_status_t st =
            emf_producer_send_batch(handle("emf_producer_send_batch"), slices.data(), n, &sent);
        if (st == EMF_ERR_FULL) return 0;
        detail::check(st, "emf_producer_send_batch");
        return sent;
    }
    std::size_t send_batch(const std::vector<Bytes>& frames) {
        return send_batch(frames.data(), frames.size());
    }

    // Claims room for a frame of `len` bytes to write in place; throws Full when the ring is
    // full. See Claim.
    Claim claim(std::size_t len) {
        std::uint8_t* data = nullptr;
        emf_producer_t* p = handle("emf_producer_claim");
        detail::check_ring(emf_producer_claim(p, len, &data), "emf_producer_claim");
        return Claim(p, data, len);
    }

    // Frames committed through this producer's slot so far, by it and by every earlier holder
    // of the slot (a killed one included). A frame counts once its send returned: a producer
    // restarted in its predecessor's slot (Ring::producer_in_slot) resends from here.
    std::uint64_t committed() const {
        std::uint64_t n = 0;
        detail::check(emf_producer_committed(handle("emf_producer_committed"), &n, nullptr),
                      "emf_producer_committed");
        return n;
    }

    // The producer slot this producer holds.
    std::uint32_t slot() const {
        std::uint64_t n = 0;
        std::uint32_t slot = 0;
        detail::check(emf_producer_committed(handle("emf_producer_committed"), &n, &slot),
                      "emf_producer_committed");
        return slot;
    }

    // The C handle (NULL after a move), for calls this wrapper does not cover.
    emf_producer_t* get() const noexcept { return p_; }
    explicit operator bool() const noexcept { return p_ != nullptr; }

private:
    emf_producer_t* handle(const char* function) const {
        if (p_ == nullptr) throw detail::moved_from(function);
        return p_;
    }

    emf_producer_t* p_ = nullptr;
};

// What a poll handler that returns a value asks for after its frame.
enum class PollAction : int {
    Continue = 0,  // go on with the next frame (up to the limit)
    Stop = 1,      // stop the poll after this frame (which counts as consumed)
};

// The primary consumer (Ring::consumer) or a fan-out subscriber (Ring::subscribe) of a ring.
// Move-only; detached in the destructor (the primary consumer's position is kept in the
// ring for the next one). A moved-from Consumer throws Error on use. It must not be destroyed
// or assigned over from inside its own poll handler: the library refuses that free with
// EMF_ERR_BUSY (no use after free), and the handle would be left attached.
class Consumer {
public:
    Consumer() noexcept = default;
    // Adopts a handle from emf_consumer_new or emf_consumer_subscribe.
    explicit Consumer(emf_consumer_t* c) noexcept : c_(c) {}
    Consumer(const Consumer&) = delete;
    Consumer& operator=(const Consumer&) = delete;
    Consumer(Consumer&& other) noexcept : c_(std::exchange(other.c_, nullptr)) {}
    Consumer& operator=(Consumer&& other) noexcept {
        if (this != &other) {
            emf_consumer_free(c_);
            c_ = std::exchange(other.c_, nullptr);
        }
        return *this;
    }
    ~Consumer() { emf_consumer_free(c_); }

    // Takes the next frame into `out` (resized to the frame; its capacity is reused and grown
    // as needed). False when no frame is ready.
    bool try_recv(std::vector<std::uint8_t>& out) {
        emf_consumer_t* c = handle("emf_consumer_recv");
        out.resize(out.capacity());
        for (;;) {
            std::size_t len = 0;
            emf_status_t st = emf_consumer_recv(c, out.data(), out.size(), &len);
            if (st == EMF_OK) {
                out.resize(len);
                return true;
            }
            if (st == EMF_ERR_BUFFER_TOO_SMALL) {
                out.resize(len);  // the frame stays; `len` is the size it needs
                continue;
            }
            out.clear();
            if (st == EMF_ERR_EMPTY) return false;
            detail::check(st, "emf_consumer_recv");
        }
    }

    // Calls handler(Bytes frame) for up to `limit` ready frames, in order, straight from the
    // ring's memory (the bytes are valid only during the call), then releases them. Returns
    // how many. A handler returning void takes every frame up to the limit; one returning
    // PollAction stops the poll after the frame for which it answers PollAction::Stop (that
    // frame is consumed and counted). The handler is called by the C library, so it must be
    // noexcept, and must not use this Consumer (its calls answer EMF_ERR_BUSY).
    template <typename F>
    std::size_t poll(std::size_t limit, F&& handler) {
        using H = std::remove_reference_t<F>;
        static_assert(std::is_nothrow_invocable_v<H&, Bytes>,
                      "emf::Consumer::poll: the handler must be callable as handler(emf::Bytes) "
                      "and noexcept (no exception may unwind through the C library)");
        using R = std::invoke_result_t<H&, Bytes>;
        static_assert(std::is_void_v<R> || std::is_same_v<R, PollAction>,
                      "emf::Consumer::poll: the handler must return void or emf::PollAction");
        std::size_t n = 0;
        void* ctx = const_cast<void*>(static_cast<const void*>(std::addressof(handler)));
        detail::check(emf_consumer_poll(handle("emf_consumer_poll"), limit, &trampoline<H>, ctx, &n),
                      "emf_consumer_poll");
        return n;
    }

    // Copies up to `max_frames` ready frames into `buf` (buf.size() is the capacity; records
    // are a little-endian uint32 length, then the bytes), consumes them, and returns views of
    // the frames inside `buf` (valid until `buf` changes). Empty when none is ready. When the
    // next frame does not fit, `buf` is grown to the size the library reports for it (its
    // length prefix included) and the call repeated.
    std::vector<Bytes> recv_batch(std::vector<std::uint8_t>& buf, std::size_t max_frames) {
        emf_consumer_t* c = handle("emf_consumer_recv_batch");
        std::size_t frames = 0, used = 0;
        if (max_frames == 0) return {};  // (the library would still ask room for the next frame)
        for (;;) {
            emf_status_t st =
                emf_consumer_recv_batch(c, buf.data(), buf.size(), max_frames, &frames, &used);
            if (st == EMF_ERR_BUFFER_TOO_SMALL && used > buf.size()) {
                buf.resize(used);  // nothing was consumed; `used` is what the next frame needs
                continue;
            }
            detail::check(st, "emf_consumer_recv_batch");
            break;
        }
        std::vector<Bytes> out;
        out.reserve(frames);
        std::size_t off = 0;
        for (std::size_t i = 0; i < frames; ++i) {
            if (used - off < 4) break;
            const std::uint8_t* p = buf.data() + off;
            std::size_t len = std::size_t(p[0]) | std::size_t(p[1]) << 8 | std::size_t(p[2]) << 16 |
                              std::size_t(p[3]) << 24;
            if (used - off - 4 < len) break;
            out.emplace_back(p + 4, len);
            off += 4 + len;
        }
        if (out.size() != frames || off != used) {
            throw Error(EMF_ERR_CORRUPT, "emf::Consumer::recv_batch",
                        "the records do not add up to the reported frames and bytes");
        }
        return out;
    }

    // Waits until a frame is ready (true) or `timeout_ms` passes (false). Ring padding on the
    // way (an aborted claim, a dead producer's) is consumed, never reported as ready.
    bool wait(Wait strategy, std::uint32_t timeout_ms) {
        bool ready = false;
        detail::check(emf_consumer_wait(handle("emf_consumer_wait"),
                                        static_cast<std::uint32_t>(strategy), timeout_ms, &ready),
                      "emf_consumer_wait");
        return ready;
    }

    // Chooses when delivered frames are released: AckMode::Auto (the default: every receive)
    // or AckMode::Manual (nothing until ack(); frames not acknowledged when this consumer dies
    // or is destroyed are delivered again to the next one). Switching to Auto acknowledges.
    // Error(EMF_ERR_INVALID_ARGUMENT) for a value that is no AckMode.
    void set_ack_mode(AckMode mode) {
        detail::check(emf_consumer_set_ack_mode(handle("emf_consumer_set_ack_mode"),
                                                static_cast<std::uint32_t>(mode)),
                      "emf_consumer_set_ack_mode");
    }

    // Releases every frame delivered so far: they are not delivered again.
    void ack() { detail::check(emf_consumer_ack(handle("emf_consumer_ack")), "emf_consumer_ack"); }

    // Forgets the frames delivered since the last ack(): the next receive delivers them again,
    // in order. Returns how many there were.
    std::uint64_t rewind() {
        std::uint64_t n = 0;
        detail::check(emf_consumer_rewind(handle("emf_consumer_rewind"), &n), "emf_consumer_rewind");
        return n;
    }

    // Frames delivered and not acknowledged yet (always 0 in AckMode::Auto).
    std::uint64_t unacked() {
        std::uint64_t n = 0;
        detail::check(emf_consumer_unacked(handle("emf_consumer_unacked"), &n),
                      "emf_consumer_unacked");
        return n;
    }

    // Bytes committed or claimed that this consumer has not consumed yet.
    std::uint64_t lag() {
        std::uint64_t lag = 0;
        detail::check(emf_consumer_lag(handle("emf_consumer_lag"), &lag), "emf_consumer_lag");
        return lag;
    }

    // The C handle (NULL after a move), for calls this wrapper does not cover.
    emf_consumer_t* get() const noexcept { return c_; }
    explicit operator bool() const noexcept { return c_ != nullptr; }

private:
    template <typename H>
    static int trampoline(void* ctx, const std::uint8_t* data, std::size_t len) noexcept {
        H& h = *static_cast<H*>(ctx);
        if constexpr (std::is_void_v<std::invoke_result_t<H&, Bytes>>) {
            h(Bytes(data, len));
            return 0;
        } else {
            return static_cast<int>(h(Bytes(data, len)));
        }
    }

    emf_consumer_t* handle(const char* function) const {
        if (c_ == nullptr) throw detail::moved_from(function);
        return c_;
    }

    emf_consumer_t* c_ = nullptr;
};

// A shared-memory ring mapped by this process. Move-only; the handle is released in the
// destructor (Producers and Consumers keep the mapping alive on their own). The segment file
// stays until unlink().
class Ring {
public:
    Ring() noexcept = default;
    // Adopts a handle from emf_ring_create or emf_ring_open.
    explicit Ring(emf_ring_t* r) noexcept : r_(r) {}
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;
    Ring(Ring&& other) noexcept : r_(std::exchange(other.r_, nullptr)) {}
    Ring& operator=(Ring&& other) noexcept {
        if (this != &other) {
            emf_ring_free(r_);
            r_ = std::exchange(other.r_, nullptr);
        }
        return *this;
    }
    ~Ring() { emf_ring_free(r_); }

    // Creates ring `name` (1-200 of A-Z a-z 0-9 . _ -, not starting with '.'). A stale
    // segment of that name is replaced; Error(EMF_ERR_BUSY) when a live one exists,
    // Error(EMF_ERR_INVALID_ARGUMENT) for a bad name or options.
    static Ring create(const std::string& name, const RingOptions& opts = RingOptions()) {
        emf_ring_options_t o{};
        emf_ring_options_default(&o);
        o.capacity = opts.capacity;
        o.multi_producer = opts.multi_producer;
        o.max_producers = opts.max_producers;
        o.max_subscribers = opts.max_subscribers;
        o.stall_timeout_ms = opts.stall_timeout_ms;
        o.mode = opts.mode;
        o.dir = opts.dir.empty() ? nullptr : opts.dir.c_str();
        o.flags = opts.checksum ? EMF_RING_CHECKSUM : 0;
        emf_ring_t* r = nullptr;
        detail::check(emf_ring_create(name.c_str(), &o, &r), "emf_ring_create");
        return Ring(r);
    }

    // Opens an existing ring; Error(EMF_ERR_NOT_FOUND) when there is none. `dir` empty means
    // /dev/shm.
    static Ring open(const std::string& name, const std::string& dir = std::string()) {
        emf_ring_t* r = nullptr;
        detail::check(emf_ring_open(name.c_str(), dir.empty() ? nullptr : dir.c_str(), &r),
                      "emf_ring_open");
        return Ring(r);
    }

    // Attaches a producer; Error(EMF_ERR_BUSY) when a single-producer ring has a live one
    // (or all slots of a multi-producer ring are taken).
    Producer producer() const {
        emf_producer_t* p = nullptr;
        detail::check(emf_producer_new(handle("emf_producer_new"), &p), "emf_producer_new");
        return Producer(p);
    }

    // Attaches a producer in slot `slot` (0 on a single-producer ring, below max_producers on
    // a multi-producer one), taking it over when its holder died: Error(EMF_ERR_BUSY) while a
    // live producer holds it, Error(EMF_ERR_INVALID_ARGUMENT) for a slot the ring does not
    // have. Producer::committed() says how many frames the slot has committed.
    Producer producer_in_slot(std::uint32_t slot) const {
        emf_producer_t* p = nullptr;
        detail::check(emf_producer_new_in_slot(handle("emf_producer_new_in_slot"), slot, &p),
                      "emf_producer_new_in_slot");
        return Producer(p);
    }

    // Attaches the primary consumer (it resumes where the previous one stopped);
    // Error(EMF_ERR_BUSY) while another one is attached.
    Consumer consumer() const {
        emf_consumer_t* c = nullptr;
        detail::check(emf_consumer_new(handle("emf_consumer_new"), &c), "emf_consumer_new");
        return Consumer(c);
    }

    // Attaches a fan-out subscriber that sees every frame committed from now on;
    // Error(EMF_ERR_BUSY) when all subscriber slots are taken.
    Consumer subscribe() const {
        emf_consumer_t* c = nullptr;
        detail::check(emf_consumer_subscribe(handle("emf_consumer_subscribe"), &c),
                      "emf_consumer_subscribe");
        return Consumer(c);
    }

    // The largest payload of one frame (a quarter of the capacity, less the header).
    std::size_t max_payload() const {
        std::size_t n = 0;
        detail::check(emf_ring_max_payload(handle("emf_ring_max_payload"), &n), "emf_ring_max_payload");
        return n;
    }

    // The ring's counters.
    RingStats stats() const {
        RingStats s{};
        detail::check(emf_ring_stats(handle("emf_ring_stats"), &s), "emf_ring_stats");
        return s;
    }

    // Removes the segment file; everybody who mapped it keeps working.
    void unlink() const { detail::check(emf_ring_unlink(handle("emf_ring_unlink")), "emf_ring_unlink"); }

    // The C handle (NULL after a move), for calls this wrapper does not cover.
    emf_ring_t* get() const noexcept { return r_; }
    explicit operator bool() const noexcept { return r_ != nullptr; }

private:
    emf_ring_t* handle(const char* function) const {
        if (r_ == nullptr) throw detail::moved_from(function);
        return r_;
    }

    emf_ring_t* r_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Task queue

// What a full TaskQueue does with an arrival.
enum class DropPolicy : std::uint32_t {
    None = EMF_DROP_NONE,                 // refuse it (Enqueued::Rejected)
    LowPriority = EMF_DROP_LOW_PRIORITY,  // an arrival of higher priority evicts the newest task
                                          // of the lowest priority queued (Enqueued::Evicted);
                                          // other arrivals are refused
};

// What TaskQueue::enqueue did with a task.
enum class Enqueued : std::uint32_t {
    Ok = EMF_ENQUEUE_OK,                      // queued in the primary queue
    Backpressure = EMF_ENQUEUE_BACKPRESSURE,  // queued, in the overflow: the producer should slow down
    Rejected = EMF_ENQUEUE_REJECTED,          // NOT queued: the task is still the caller's
    Evicted = EMF_ENQUEUE_EVICTED,            // queued by evicting a lower-priority task, which
                                              // is handed back in EnqueueResult::evicted
};

// A task taken out of a TaskQueue (dequeued, or evicted by a higher-priority one): its bytes,
// owned, and its priority. Move-only (it holds a Buffer).
struct Task {
    Buffer data;
    Priority priority;
};

// The answer of TaskQueue::enqueue. No task is ever lost silently: a Rejected task is still
// the caller's (its bytes were only copied), and an evicted one comes back here. Discarding
// the answer does not compile (-Werror) — check it.
struct [[nodiscard]] EnqueueResult {
    Enqueued status;
    // The task that made room, exactly when status == Enqueued::Evicted.
    std::optional<Task> evicted;

    // True unless Rejected (Ok, Backpressure and Evicted all queued the task).
    bool queued() const noexcept { return status != Enqueued::Rejected; }
};

// A task queue's counters (depth, primary_depth, overflow_depth, depth_p99, max_depth,
// enqueued, dequeued, spills, rejections, evictions): the C struct as is.
using TaskQueueStats = emf_task_queue_stats_t;

// A priority queue of byte-string tasks with back-pressure: a primary queue, an overflow
// beyond it (arrivals there answer Enqueued::Backpressure) and, when both are full, a drop
// policy (DropPolicy). dequeue() takes the oldest task of the highest priority (FIFO within a
// priority). Thread-safe: any number of threads may enqueue, dequeue and read stats at once.
// Move-only; freed in the destructor together with the tasks still queued (dequeue them
// first to keep them). A default-constructed or moved-from TaskQueue throws Error on use.
class TaskQueue {
public:
    // The library's default sizes, for the constructor: 1000 tasks in the primary queue and
    // 10000 in the overflow.
    static constexpr std::size_t kDefaultPrimary = 0;
    static constexpr std::size_t kDefaultOverflow = std::numeric_limits<std::size_t>::max();

    TaskQueue() noexcept = default;
    // Adopts a handle from emf_task_queue_new.
    explicit TaskQueue(emf_task_queue_t* q) noexcept : q_(q) {}
    // A queue of `max_primary` tasks plus `max_overflow` more in the overflow (0: no overflow,
    // a full primary queue goes straight to the drop policy). Error(EMF_ERR_INVALID_ARGUMENT)
    // for a drop policy the library does not know.
    TaskQueue(std::size_t max_primary, std::size_t max_overflow, DropPolicy drop = DropPolicy::None) {
        detail::check(emf_task_queue_new(max_primary, max_overflow, static_cast<std::uint32_t>(drop), &q_),
                      "emf_task_queue_new");
    }
    TaskQueue(const TaskQueue&) = delete;
    TaskQueue& operator=(const TaskQueue&) = delete;
    TaskQueue(TaskQueue&& other) noexcept : q_(std::exchange(other.q_, nullptr)) {}
    TaskQueue& operator=(TaskQueue&& other) noexcept {
        if (this != &other) {
            emf_task_queue_free(q_);
            q_ = std::exchange(other.q_, nullptr);
        }
        return *this;
    }
    ~TaskQueue() { emf_task_queue_free(q_); }

    // Queues a copy of `task` at `priority` and says what happened (see Enqueued). Throws
    // Error for bad input only (EMF_ERR_INVALID_ARGUMENT for a priority the library does not
    // know, EMF_ERR_TOO_LARGE past EMF_MAX_INPUT_LEN): back-pressure and a full queue are
    // answers, not exceptions.
    EnqueueResult enqueue(Bytes task, Priority priority = Priority::Normal) {
        std::uint32_t result = 0;
        emf_buf_t evicted{nullptr, 0, 0};
        std::uint32_t evicted_priority = 0;
        detail::check(emf_task_queue_enqueue(handle("emf_task_queue_enqueue"), task.data(), task.size(),
                                             static_cast<std::uint32_t>(priority), &result, &evicted,
                                             &evicted_priority),
                      "emf_task_queue_enqueue");
        Buffer owned(evicted);  // adopted whatever the answer: never leaked
        EnqueueResult r{static_cast<Enqueued>(result), std::nullopt};
        if (r.status == Enqueued::Evicted) {
            r.evicted = Task{std::move(owned), static_cast<Priority>(evicted_priority)};
        }
        return r;
    }

    // Takes the oldest task of the highest priority queued; nullopt when the queue is empty.
    std::optional<Task> dequeue() {
        emf_buf_t out{nullptr, 0, 0};
        std::uint32_t priority = 0;
        emf_status_t st = emf_task_queue_dequeue(handle("emf_task_queue_dequeue"), &out, &priority);
        if (st == EMF_ERR_EMPTY) return std::nullopt;
        detail::check(st, "emf_task_queue_dequeue");
        return Task{Buffer(out), static_cast<Priority>(priority)};
    }

    // The queue's counters.
    TaskQueueStats stats() const {
        TaskQueueStats s{};
        detail::check(emf_task_queue_stats(handle("emf_task_queue_stats"), &s), "emf_task_queue_stats");
        return s;
    }

    // The C handle (NULL after a move), for calls this wrapper does not cover.
    emf_task_queue_t* get() const noexcept { return q_; }
    explicit operator bool() const noexcept { return q_ != nullptr; }

private:
    emf_task_queue_t* handle(const char* function) const {
        if (q_ == nullptr) throw detail::moved_from(function);
        return q_;
    }

    emf_task_queue_t* q_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// LRU cache

// A cache's counters (len, capacity, hits, misses, evictions, expirations): the C struct as is.
using CacheStats = emf_cache_stats_t;

// A sharded LRU cache from byte-string keys to byte-string values, with an optional TTL. Keys
// and values are copied in and out. A full shard evicts its least recently used entry; an
// entry lives at least its TTL after its last put, then reads as a miss and is removed by
// the next get, a sweep() or the background sweeper (set_sweeper). Thread-safe: any number of
// threads may use one Cache at once. Move-only; freed (sweeper stopped) in the destructor. A
// default-constructed or moved-from Cache throws Error on use.
class Cache {
public:
    // No TTL: entries stay until evicted or removed.
    static constexpr std::chrono::milliseconds kNoTtl{0};

    Cache() noexcept = default;
    // Adopts a handle from emf_cache_new.
    explicit Cache(emf_cache_t* c) noexcept : c_(c) {}
    // A cache of `capacity` entries (0: the library's default, 10000) whose entries live `ttl`
    // after they were put (kNoTtl: forever), over `shards` shards (0: chosen by the library
    // from the capacity and the machine). Each shard is an LRU of capacity / shards entries
    // (rounded up: stats().capacity says the total), so with several shards an entry may be
    // evicted before the cache as a whole is full; use 1 shard for an exact LRU.
    // Error(EMF_ERR_INVALID_ARGUMENT) for a negative TTL or a capacity the library refuses.
    Cache(std::size_t capacity, std::chrono::milliseconds ttl, std::uint32_t shards = 0) {
        if (ttl.count() < 0) {
            throw Error(EMF_ERR_INVALID_ARGUMENT, "emf::Cache", "the TTL is negative");
        }
        detail::check(emf_cache_new(capacity, static_cast<std::uint64_t>(ttl.count()), shards, &c_),
                      "emf_cache_new");
    }
    Cache(const Cache&) = delete;
    Cache& operator=(const Cache&) = delete;
    Cache(Cache&& other) noexcept : c_(std::exchange(other.c_, nullptr)) {}
    Cache& operator=(Cache&& other) noexcept {
        if (this != &other) {
            emf_cache_free(c_);
            c_ = std::exchange(other.c_, nullptr);
        }
        return *this;
    }
    ~Cache() { emf_cache_free(c_); }

    // Stores a copy of `value` under `key`, replacing any value and restarting its TTL.
    void put(Bytes key, Bytes value) {
        detail::check(emf_cache_put(handle("emf_cache_put"), key.data(), key.size(), value.data(),
                                    value.size()),
                      "emf_cache_put");
    }

    // The live value of `key` (a hit: it becomes the most recently used), or nullopt (a miss:
    // absent or expired). A value longer than 256 bytes takes a second lookup, which the
    // library counts as a second hit; get_into with a reused buffer avoids it.
    std::optional<std::string> get(Bytes key) {
        std::string value;
        value.reserve(256);
        if (!get_into(key, value)) return std::nullopt;
        return value;
    }

    // Copies the live value of `key` into `out` (resized to the value; its capacity is reused
    // and grown as needed, no allocation once it is large enough). False on a miss (`out`
    // cleared). Each attempt with a too-small buffer counts as a hit in stats().
    bool get_into(Bytes key, std::string& out) { return get_into_impl(key, out); }
    bool get_into(Bytes key, std::vector<std::uint8_t>& out) { return get_into_impl(key, out); }

    // Removes `key`; false when it was absent.
    bool remove(Bytes key) {
        emf_status_t st = emf_cache_remove(handle("emf_cache_remove"), key.data(), key.size());
        if (st == EMF_ERR_NOT_FOUND) return false;
        detail::check(st, "emf_cache_remove");
        return true;
    }

    // Removes every expired entry now; returns how many.
    std::size_t sweep() {
        std::size_t removed = 0;
        detail::check(emf_cache_sweep(handle("emf_cache_sweep"), &removed), "emf_cache_sweep");
        return removed;
    }

    // Starts (or restarts with a new period) a background thread that sweeps expired entries
    // every `every`; 0 stops it. It also stops when the Cache is destroyed.
    // Error(EMF_ERR_INVALID_ARGUMENT) for a negative period or one past UINT32_MAX ms.
    void set_sweeper(std::chrono::milliseconds every) {
        if (every.count() < 0 || every.count() > std::numeric_limits<std::uint32_t>::max()) {
            throw Error(EMF_ERR_INVALID_ARGUMENT, "emf::Cache::set_sweeper",
                        "the period must be 0 to " +
                            std::to_string(std::numeric_limits<std::uint32_t>::max()) + " ms");
        }
        detail::check(emf_cache_set_sweeper(handle("emf_cache_set_sweeper"),
                                            static_cast<std::uint32_t>(every.count())),
                      "emf_cache_set_sweeper");
    }

    // The cache's counters.
    CacheStats stats() const {
        CacheStats s{};
        detail::check(emf_cache_stats(handle("emf_cache_stats"), &s), "emf_cache_stats");
        return s;
    }

    // The C handle (NULL after a move), for calls this wrapper does not cover.
    emf_cache_t* get() const noexcept { return c_; }
    explicit operator bool() const noexcept { return c_ != nullptr; }

private:
    template <typename Container>
    bool get_into_impl(Bytes key, Container& out) {
        emf_cache_t* c = handle("emf_cache_get_into");
        out.resize(out.capacity());
        for (;;) {
            std::size_t len = 0;
            emf_status_t st = emf_cache_get_into(c, key.data(), key.size(),
                                                 reinterpret_cast<std::uint8_t*>(out.data()),
                                                 out.size(), &len);
            if (st == EMF_OK) {
                out.resize(len);
                return true;
            }
            if (st == EMF_ERR_BUFFER_TOO_SMALL && len > out.size()) {
                out.resize(len);  // `len` is the value's size; another put may change it: loop
                continue;
            }
            out.clear();
            if (st == EMF_ERR_NOT_FOUND) return false;
            detail::check(st, "emf_cache_get_into");
            return false;  // not reached: BUFFER_TOO_SMALL without a larger size
        }
    }

    emf_cache_t* handle(const char* function) const {
        if (c_ == nullptr) throw detail::moved_from(function);
        return c_;
    }

    emf_cache_t* c_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Vectors and the HNSW index

// A borrowed array (what C++20 would spell std::span<const T>): from a pointer and a length, a
// std::vector, a std::array or a C array. It must not outlive what it views.
template <typename T>
class Span {
public:
    constexpr Span() noexcept = default;
    constexpr Span(const T* data, std::size_t size) noexcept : data_(data), size_(size) {}
    Span(const std::vector<T>& v) noexcept : data_(v.data()), size_(v.size()) {}  // NOLINT: implicit
    template <std::size_t N>
    constexpr Span(const std::array<T, N>& a) noexcept : data_(a.data()), size_(N) {}  // NOLINT
    template <std::size_t N>
    constexpr Span(const T (&a)[N]) noexcept : data_(a), size_(N) {}  // NOLINT: implicit

    constexpr const T* data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr const T* begin() const noexcept { return data_; }
    constexpr const T* end() const noexcept { return data_ + size_; }
    constexpr const T& operator[](std::size_t i) const noexcept { return data_[i]; }
    // `count` values from `offset` (the caller keeps them in range).
    constexpr Span subspan(std::size_t offset, std::size_t count) const noexcept {
        return Span(data_ + offset, count);
    }

private:
    const T* data_ = nullptr;
    std::size_t size_ = 0;
};

using Floats = Span<float>;
using Ids = Span<std::uint64_t>;

// How an Hnsw measures distance.
enum class Metric : std::uint32_t {
    Cosine = EMF_METRIC_COSINE,  // 1 - cos(a, b)
    Dot = EMF_METRIC_DOT,        // 1 - a.b (for unit vectors, the same order as cosine)
    L2Sq = EMF_METRIC_L2SQ,      // |a - b|^2
};

// What an Hnsw keeps besides the int8 codes, for re-ranking (SearchOptions::rerank).
enum class Originals : std::uint32_t {
    None = EMF_ORIGINALS_NONE,  // int8 codes only: the smallest index
    F16 = EMF_ORIGINALS_F16,    // half floats, 2 bytes a component
    F32 = EMF_ORIGINALS_F32,    // floats, 4 bytes a component
};

// The parameters of an Hnsw. HnswParams(dim) holds the library's defaults
// (emf_hnsw_params_default): cosine, M 16, ef_construction 200, ef_search 50, no originals.
struct HnswParams {
    std::uint32_t dim;              // vector dimensions, 1..65536
    Metric metric;
    std::uint32_t m;                // neighbours per node on upper levels, 2m on level 0 (2..128)
    std::uint32_t ef_construction;  // candidates kept while inserting
    std::uint32_t ef_search;        // candidates kept while searching when SearchOptions::ef is 0
    Originals originals;
    std::uint64_t seed;             // of the level draws

    explicit HnswParams(std::uint32_t dimensions) {
        emf_hnsw_params_t p{};
        detail::check(emf_hnsw_params_default(dimensions, &p), "emf_hnsw_params_default");
        *this = HnswParams(p);
    }
    explicit HnswParams(const emf_hnsw_params_t& p) noexcept
        : dim(p.dim), metric(static_cast<Metric>(p.metric)), m(p.m),
          ef_construction(p.ef_construction), ef_search(p.ef_search),
          originals(static_cast<Originals>(p.originals)), seed(p.seed) {}

    // The C struct.
    emf_hnsw_params_t c() const noexcept {
        return emf_hnsw_params_t{dim,       static_cast<std::uint32_t>(metric),
                                 m,         ef_construction,
                                 ef_search, static_cast<std::uint32_t>(originals),
                                 seed};
    }
};

// One search answer: the id given at insertion and the distance (the int8 estimate, or exact
// when re-ranked): the C struct as is.
using Hit = emf_hnsw_hit_t;

// A set of ids in the form SearchOptions::filter takes: a bitset, id i being bit i % 64 of word
// i / 64. Its size follows the largest id allowed (id / 8 bytes): meant for dense ids.
class IdFilter {
public:
    IdFilter() : words_(1, 0) {}  // allows nothing (one zero word: an empty bitset is no filter)
    // Allows `id` (and grows the bitset to it).
    void allow(std::uint64_t id) {
        const std::size_t word = static_cast<std::size_t>(id / 64);
        if (word >= words_.size()) words_.resize(word + 1, 0);
        words_[word] |= std::uint64_t(1) << (id % 64);
    }
    bool allows(std::uint64_t id) const noexcept {
        const std::uint64_t word = id / 64;
        return word < words_.size() && (words_[static_cast<std::size_t>(word)] >> (id % 64) & 1) != 0;
    }
    // The words, for SearchOptions::filter (at least one, so that a filter allowing nothing
    // finds nothing: no words at all would mean no filter).
    Span<std::uint64_t> words() const noexcept { return Span<std::uint64_t>(words_); }

private:
    std::vector<std::uint64_t> words_;
};

// How to search.
struct SearchOptions {
    std::size_t ef = 0;           // candidates kept (0: the index's ef_search; at least k)
    bool rerank = false;          // re-rank the candidates with the originals (if kept)
    Span<std::uint64_t> filter;   // only ids whose bit is set (IdFilter::words); empty: all

    std::uint32_t flags() const noexcept { return rerank ? EMF_SEARCH_RERANK : 0u; }
};

// An HNSW index of float vectors stored as int8 codes (see the C header's emf_hnsw_*): built in
// memory (Hnsw(params), Hnsw::load) or a saved file mapped read-only (Hnsw::open), which
// searches only: inserting into, removing from, compacting or saving it throws
// Error(EMF_ERR_UNSUPPORTED). Bad input throws Error (EMF_ERR_INVALID_ARGUMENT for a wrong
// dimension, NaN or infinite values, a duplicate id, ...). Thread-safe (see the top of this
// file). Move-only; freed (unmapped) in the destructor. A default-constructed or moved-from
// Hnsw throws Error on use.
class Hnsw {
public:
    Hnsw() noexcept = default;
    // Adopts a handle from emf_hnsw_new, _open or _load.
    explicit Hnsw(emf_hnsw_t* h) noexcept : h_(h) {}
    // An empty index.
    explicit Hnsw(const HnswParams& params) {
        const emf_hnsw_params_t p = params.c();
        detail::check(emf_hnsw_new(&p, &h_), "emf_hnsw_new");
    }
    // Maps a saved index read-only and validates it (Error EMF_ERR_IO, EMF_ERR_CORRUPT). Other
    // processes may map the same file; a save renamed over it does not disturb this mapping.
    static Hnsw open(const std::string& path) {
        emf_hnsw_t* h = nullptr;
        detail::check(emf_hnsw_open(path.c_str(), &h), "emf_hnsw_open");
        return Hnsw(h);
    }
    // Reads a saved index into memory: a copy that can change.
    static Hnsw load(const std::string& path) {
        emf_hnsw_t* h = nullptr;
        detail::check(emf_hnsw_load(path.c_str(), &h), "emf_hnsw_load");
        return Hnsw(h);
    }
    Hnsw(const Hnsw&) = delete;
    Hnsw& operator=(const Hnsw&) = delete;
    Hnsw(Hnsw&& other) noexcept : h_(std::exchange(other.h_, nullptr)) {}
    Hnsw& operator=(Hnsw&& other) noexcept {
        if (this != &other) {
            emf_hnsw_free(h_);
            h_ = std::exchange(other.h_, nullptr);
        }
        return *this;
    }
    ~Hnsw() { emf_hnsw_free(h_); }

    HnswParams params() const {
        emf_hnsw_params_t p{};
        detail::check(emf_hnsw_params(handle("emf_hnsw_params"), &p), "emf_hnsw_params");
        return HnswParams(p);
    }

    // Live vectors (inserted and not removed).
    std::size_t size() const {
        std::size_t len = 0;
        detail::check(emf_hnsw_stats(handle("emf_hnsw_stats"), &len, nullptr), "emf_hnsw_stats");
        return len;
    }

    // Bytes the index holds (a mapped one: the file's size).
    std::size_t memory_bytes() const {
        std::size_t bytes = 0;
        detail::check(emf_hnsw_stats(handle("emf_hnsw_stats"), nullptr, &bytes), "emf_hnsw_stats");
        return bytes;
    }

    // Inserts `vector` (dim floats) under `id`, which must not be in the index.
    void insert(std::uint64_t id, Floats vector) {
        detail::check(emf_hnsw_insert(handle("emf_hnsw_insert"), id, vector.data(), vector.size()),
                      "emf_hnsw_insert");
    }

    // Inserts ids.size() vectors, `vectors` holding them one after another, on `threads` threads
    // (0: one per CPU). Everything is checked first: on an error nothing is inserted.
    void insert_batch(Ids ids, Floats vectors, std::uint32_t threads = 0) {
        emf_hnsw_t* h = handle("emf_hnsw_insert_batch");
        const std::size_t dim = ids.empty() ? params().dim : vectors.size() / ids.size();
        if (dim * ids.size() != vectors.size()) {
            throw Error(EMF_ERR_INVALID_ARGUMENT, "emf::Hnsw::insert_batch",
                        std::to_string(vectors.size()) + " values are not " +
                            std::to_string(ids.size()) + " vectors of equal length");
        }
        detail::check(emf_hnsw_insert_batch(h, ids.data(), ids.size(), vectors.data(), dim, threads),
                      "emf_hnsw_insert_batch");
    }

    // The `k` nearest vectors to `query`, closest first (fewer when the index, or the filter,
    // has fewer).
    std::vector<Hit> search(Floats query, std::size_t k, const SearchOptions& opts = {}) const {
        std::vector<Hit> hits;
        search_into(query, k, hits, opts);
        return hits;
    }

    // search() into a reused vector (resized to the hits; no allocation once it holds k).
    void search_into(Floats query, std::size_t k, std::vector<Hit>& out,
                     const SearchOptions& opts = {}) const {
        emf_hnsw_t* h = handle("emf_hnsw_search");
        check_k(k, 1, "emf::Hnsw::search");
        out.resize(k);
        std::size_t n = 0;
        emf_status_t st = emf_hnsw_search(h, query.data(), query.size(), k, opts.ef, opts.flags(),
                                          opts.filter.data(), opts.filter.size(), out.data(), &n);
        if (st != EMF_OK) out.clear();
        detail::check(st, "emf_hnsw_search");
        out.resize(n);
    }

    // Searches every query of `queries` (dim floats each, one after another) on `threads`
    // threads (0: one per CPU): result i is query i's hits.
    std::vector<std::vector<Hit>> search_batch(Floats queries, std::size_t k,
                                               const SearchOptions& opts = {},
                                               std::uint32_t threads = 0) const {
        emf_hnsw_t* h = handle("emf_hnsw_search_batch");
        const std::size_t dim = params().dim;
        const std::size_t nq = queries.size() / dim;
        if (nq * dim != queries.size()) {
            throw Error(EMF_ERR_INVALID_ARGUMENT, "emf::Hnsw::search_batch",
                        std::to_string(queries.size()) + " values are not a whole number of " +
                            std::to_string(dim) + "-dimensional queries");
        }
        check_k(k, nq, "emf::Hnsw::search_batch");
        std::vector<Hit> hits(nq * k);
        std::vector<std::size_t> counts(nq);
        detail::check(emf_hnsw_search_batch(h, queries.data(), nq, dim, k, opts.ef, opts.flags(),
                                            opts.filter.data(), opts.filter.size(), threads,
                                            hits.data(), counts.data()),
                      "emf_hnsw_search_batch");
        std::vector<std::vector<Hit>> out(nq);
        for (std::size_t i = 0; i < nq; ++i) {
            out[i].assign(hits.begin() + static_cast<std::ptrdiff_t>(i * k),
                          hits.begin() + static_cast<std::ptrdiff_t>(i * k + counts[i]));
        }
        return out;
    }

    // Removes `id`; false when it was not in the index. Its memory comes back with compact().
    bool remove(std::uint64_t id) {
        emf_status_t st = emf_hnsw_remove(handle("emf_hnsw_remove"), id);
        if (st == EMF_ERR_NOT_FOUND) return false;
        detail::check(st, "emf_hnsw_remove");
        return true;
    }

    // Reclaims the memory of removed vectors (waits for the calls in progress, holds others
    // off meanwhile).
    void compact() { detail::check(emf_hnsw_compact(handle("emf_hnsw_compact")), "emf_hnsw_compact"); }

    // compact() without waiting: false (nothing done) while another call on the index runs.
    bool try_compact() {
        emf_status_t st = emf_hnsw_try_compact(handle("emf_hnsw_try_compact"));
        if (st == EMF_ERR_BUSY) return false;
        detail::check(st, "emf_hnsw_try_compact");
        return true;
    }

    // Writes the index to `path` (a temporary file renamed over it).
    void save(const std::string& path) const {
        detail::check(emf_hnsw_save(handle("emf_hnsw_save"), path.c_str()), "emf_hnsw_save");
    }

    // The C handle (NULL after a move), for calls this wrapper does not cover.
    emf_hnsw_t* get() const noexcept { return h_; }
    explicit operator bool() const noexcept { return h_ != nullptr; }

private:
    // Refuses, before allocating for them, more hits than the library would take.
    static void check_k(std::size_t k, std::size_t queries, const char* function) {
        const std::size_t most = EMF_MAX_INPUT_LEN / sizeof(Hit);
        if (k > most || (queries > 0 && k > most / queries)) {
            throw Error(EMF_ERR_TOO_LARGE, function,
                        "k " + std::to_string(k) + " x " + std::to_string(queries) +
                            " queries exceeds the " + std::to_string(most) + " hits one call may write");
        }
    }

    emf_hnsw_t* handle(const char* function) const {
        if (h_ == nullptr) throw detail::moved_from(function);
        return h_;
    }

    emf_hnsw_t* h_ = nullptr;
};

}  // namespace emf

#endif  // ERLMCP_FLOW_HPP

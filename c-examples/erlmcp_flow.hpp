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
#ifndef ERLMCP_FLOW_HPP
#define ERLMCP_FLOW_HPP

#include <erlmcp_flow.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
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

// Metadata for json_to_archive (times in µs since the UNIX epoch; 0 = now / no deadline).
struct EncodeOptions {
    Priority priority = Priority::Normal;
    std::uint64_t created_at_us = 0;
    std::uint64_t deadline_us = 0;
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
    detail::check(emf_json_to_archive(reinterpret_cast<const std::uint8_t*>(json.data()),
                                      json.size(), &o, &out),
                  "emf_json_to_archive");
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

}  // namespace emf

#endif  // ERLMCP_FLOW_HPP

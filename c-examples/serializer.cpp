// serializer.cpp — a C++17 host of the erlmcp-flow serializer that uses only the RAII wrapper
// erlmcp_flow.hpp: round trips, message fields, exceptions for bad input (with their status
// codes), and moves of every owning type (valgrind proves there is no double free or leak).
//
// Output: one line per failed check on stderr, then exactly one line `N passed, M failed`.
// Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded library has another ABI.
#include "erlmcp_flow.hpp"

#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

#include "check.hpp"

const std::string kInitialize =
    R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",)"
    R"("capabilities":{"roots":{"listChanged":true}},"clientInfo":{"name":"cpp-host","version":"1.0"}}})";

const std::string kToolsCall =
    R"({"jsonrpc":"2.0","id":"call-7","method":"tools/call","params":{"name":"search",)"
    R"("arguments":{"q":"caf\u00e9","n":123456789012345678901234567890,"opts":{"k":[1,[2,[3]]]}}}})";

const std::string kBatch =
    R"([{"jsonrpc":"2.0","id":1,"method":"tools/list"},)"
    R"({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":0.5}},)"
    R"({"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"Invalid params"}}])";

void test_roundtrips() {
    for (const std::string& json : {kInitialize, kBatch}) {
        emf::Buffer archive = emf::json_to_archive(json);
        CHECK(!archive.empty());
        CHECK(emf::archive_to_json(archive).view() == json);
        CHECK(emf::Message(archive).to_json().view() == json);
    }
    CHECK(emf::validate(emf::json_to_archive(kBatch)) == 3);

    // The \u escape comes back as UTF-8; the big integer verbatim.
    emf::Buffer text = emf::archive_to_json(emf::json_to_archive(kToolsCall));
    CHECK(text.view().find("\"q\":\"caf\xc3\xa9\"") != std::string_view::npos);
    CHECK(text.view().find("123456789012345678901234567890") != std::string_view::npos);

    // ~100 KB of text in a resources/read response.
    std::string big = R"({"jsonrpc":"2.0","id":7,"result":{"contents":[{"uri":"file:///a","text":")";
    for (int i = 0; i < 100 * 1024; ++i) big += static_cast<char>('a' + i % 26);
    big += R"("}]}})";
    CHECK(emf::archive_to_json(emf::json_to_archive(big)).view() == big);
}

void test_message_fields() {
    emf::EncodeOptions opts;
    opts.priority = emf::Priority::Critical;
    opts.created_at_us = 1700000000000000u;
    opts.deadline_us = 1700000005000000u;
    emf::Message batch(emf::json_to_archive(kBatch, opts));
    CHECK(batch.size() == 3);

    emf::Envelope req = batch.envelope(0);
    CHECK(req.kind == emf::Kind::Request);
    CHECK(req.priority == emf::Priority::Critical);
    CHECK(req.created_at_us == 1700000000000000u && req.deadline_us == 1700000005000000u);
    CHECK(req.id_type == emf::IdType::Int && req.id_int == 1);
    CHECK(req.has_method && req.method == "tools/list");
    CHECK(!req.has_error);

    emf::Envelope note = batch.envelope(1);
    CHECK(note.kind == emf::Kind::Notification && note.id_type == emf::IdType::None);
    CHECK(note.method == "notifications/progress");
    CHECK(batch.payload_json(1).view() == R"({"progressToken":1,"progress":0.5})");

    emf::Envelope err = batch.envelope(2);
    CHECK(err.kind == emf::Kind::Error && err.has_error && err.error_code == -32602);
    CHECK(!err.has_method && err.method.empty());
    CHECK(batch.payload_json(2).view() == R"({"code":-32602,"message":"Invalid params"})");

    emf::Message call(emf::json_to_archive(kToolsCall, emf::Priority::Low));
    emf::Envelope c = call.envelope(0);
    CHECK(c.priority == emf::Priority::Low);
    CHECK(c.id_type == emf::IdType::String && c.id_str == "call-7");
    CHECK(c.method == "tools/call");
    CHECK(call.payload_json(0).view().substr(0, 17) == R"({"name":"search",)");

    // Ids as exact JSON text; the notification has none.
    CHECK(batch.id_json(0).view() == "1");
    CHECK(batch.id_json(2).view() == "2");
    CHECK(call.id_json(0).view() == R"("call-7")");
    CHECK_THROWS(batch.id_json(1), EMF_ERR_NOT_FOUND);
    CHECK_THROWS(batch.id_json(3), EMF_ERR_INVALID_ARGUMENT);
    for (const char* id : {"123456789012345678901234567890", "-9223372036854775808", "1.5",
                           R"("")", R"("a\"b")"}) {
        const std::string json =
            std::string(R"({"jsonrpc":"2.0","id":)") + id + R"(,"method":"m"})";
        emf::Buffer got = emf::Message(emf::json_to_archive(json)).id_json(0);
        CHECK(got.view() == id);
        if (got.view() != id) std::fprintf(stderr, "  id: got %s, want %s\n", got.str().c_str(), id);
    }
    // `null` (allowed in an error response only).
    CHECK(emf::Message(emf::json_to_archive(
                           R"({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}})"))
              .id_json(0)
              .view() == "null");

    // Names of kinds and priorities.
    CHECK(emf::kind_name(req.kind) == "request" && emf::kind_name(note.kind) == "notification");
    CHECK(emf::kind_name(err.kind) == "error" && emf::kind_name(emf::Kind::Task) == "task");
    CHECK(emf::kind_name(emf::Kind::Response) == "response" &&
          emf::kind_name(emf::Kind::Result) == "result");
    CHECK(emf::kind_name(static_cast<emf::Kind>(6)) == "unknown");
    CHECK(emf::priority_name(req.priority) == "critical" && emf::priority_name(c.priority) == "low");
    CHECK(emf::priority_name(emf::Priority::High) == "high" &&
          emf::priority_name(emf::Priority::Normal) == "normal");
    CHECK(emf::priority_name(static_cast<emf::Priority>(4)) == "unknown");

    // Defaults: normal priority, created now, no deadline.
    emf::Envelope d = emf::Message(emf::json_to_archive(kInitialize)).envelope(0);
    CHECK(d.priority == emf::Priority::Normal && d.created_at_us > 0 && d.deadline_us == 0);
}

void test_errors() {
    using emf::Bytes;
    // Bad JSON / JSON-RPC.
    CHECK_THROWS(emf::json_to_archive(""), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(emf::json_to_archive("{\"jsonrpc\":\"2.0\","), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(emf::json_to_archive("{\"id\":1,\"method\":\"x\"}"), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(emf::json_to_archive("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}"),
                 EMF_ERR_INVALID_ARGUMENT);
    emf::EncodeOptions bad;
    bad.priority = static_cast<emf::Priority>(9);
    CHECK_THROWS(emf::json_to_archive(kInitialize, bad), EMF_ERR_INVALID_ARGUMENT);

    // The message says why, and what() names the function and the status.
    try {
        emf::json_to_archive("[]");
        CHECK(false);
    } catch (const emf::Error& e) {
        CHECK(e.message().find("batch") != std::string::npos);
        CHECK(std::string(e.what()).find("emf_json_to_archive_ex: EMF_ERR_INVALID_ARGUMENT") == 0);
    }

    // Corrupt archives.
    emf::Buffer archive = emf::json_to_archive(kInitialize);
    Bytes half(archive.data(), archive.size() / 2);
    CHECK_THROWS(emf::validate(half), EMF_ERR_CORRUPT);
    CHECK_THROWS(emf::archive_to_json(half), EMF_ERR_CORRUPT);
    CHECK_THROWS(emf::Message m(half), EMF_ERR_CORRUPT);
    CHECK_THROWS(emf::Message m("definitely not an archive"), EMF_ERR_CORRUPT);
    CHECK_THROWS(emf::validate(Bytes(nullptr, 0)), EMF_ERR_CORRUPT);

    // NULL with a length, and lengths past the limit (nothing is read).
    CHECK_THROWS(emf::validate(Bytes(nullptr, 4)), EMF_ERR_NULL_ARGUMENT);
    CHECK_THROWS(emf::archive_to_json(Bytes(archive.data(), SIZE_MAX)), EMF_ERR_TOO_LARGE);
    CHECK_THROWS(emf::decompress(Bytes(archive.data(), SIZE_MAX), 10), EMF_ERR_TOO_LARGE);

    // Index out of range, missing payload.
    emf::Message msg(archive);
    CHECK_THROWS(msg.envelope(1), EMF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(msg.payload_json(99), EMF_ERR_INVALID_ARGUMENT);
    emf::Message list(emf::json_to_archive(R"({"jsonrpc":"2.0","id":1,"method":"tools/list"})"));
    CHECK_THROWS(list.payload_json(0), EMF_ERR_NOT_FOUND);
}

void test_compression() {
    std::string text;
    for (int i = 0; i < 2000; ++i) text += "tools/call result line " + std::to_string(i % 10) + "\n";

    auto [data, compressed] = emf::compress_if_needed(text);
    CHECK(compressed && data.size() < text.size() * 8 / 10);
    CHECK(emf::decompress(data, text.size()).view() == text);
    CHECK_THROWS(emf::decompress(data, text.size() - 1), EMF_ERR_TOO_LARGE);
    CHECK(emf::decompress(data, SIZE_MAX).view() == text);  // no limit: no overflow
    CHECK_THROWS(emf::decompress(emf::Bytes(data.data(), data.size() / 2), text.size()), EMF_ERR_CORRUPT);

    emf::Compressed small = emf::compress_if_needed("tiny");
    CHECK(!small.compressed && small.data.view() == "tiny");
    emf::Compressed never = emf::compress_if_needed(text, text.size() + 1);
    CHECK(!never.compressed && never.data.view() == text);

    // A 10 MB bomb refused at 1 MB.
    std::vector<std::uint8_t> zeros(10u << 20, 0);
    emf::Compressed bomb = emf::compress_if_needed(zeros);
    CHECK(bomb.compressed && bomb.data.size() < 64 * 1024);
    CHECK_THROWS(emf::decompress(bomb.data, 1u << 20), EMF_ERR_TOO_LARGE);
    CHECK(emf::decompress(bomb.data, SIZE_MAX).size() == zeros.size());
    CHECK_THROWS(emf::decompress("not zlib", 100), EMF_ERR_CORRUPT);
}

void test_moves() {
    emf::Buffer a = emf::json_to_archive(kInitialize);
    const std::uint8_t* bytes = a.data();
    std::size_t n = a.size();

    emf::Buffer b(std::move(a));
    CHECK(a.empty() && a.data() == nullptr);  // NOLINT(bugprone-use-after-move): defined state
    CHECK(b.data() == bytes && b.size() == n);

    emf::Buffer c = emf::json_to_archive(kBatch);
    c = std::move(b);  // c's old buffer is freed, b's moves in
    CHECK(c.data() == bytes && b.empty());
    emf::Buffer& alias = c;
    c = std::move(alias);  // self-move keeps the buffer
    CHECK(c.data() == bytes);

    // release() hands ownership to C; the wrapper no longer frees it.
    emf_buf_t raw = c.release();
    CHECK(c.empty() && raw.data == bytes);
    emf_buf_t stale = raw;  // a copy of the struct, token included
    CHECK(raw.token != 0 && emf_buf_free(&raw) == EMF_OK && raw.token == 0);
    // The stale copy is refused, even with a new buffer of the same length alive (quite
    // possibly at the same address): the Buffer owning it is unaffected.
    emf::Buffer fresh = emf::json_to_archive(kInitialize);
    CHECK(fresh.size() == stale.len);
    CHECK(emf_buf_free(&stale) == EMF_ERR_INVALID_ARGUMENT);
    CHECK(emf::archive_to_json(fresh).view() == kInitialize);
    c.reset();
    c.reset();  // empty: harmless

    // Many buffers moved around by a growing vector: each freed exactly once.
    std::vector<emf::Buffer> many;
    for (int i = 0; i < 100; ++i) many.push_back(emf::json_to_archive(kToolsCall));
    std::vector<emf::Buffer> taken = std::move(many);
    CHECK(taken.size() == 100 && emf::validate(taken[99]) == 1);

    // Messages: views survive a move of the Message; a moved-from Message refuses use.
    emf::Message m1(emf::json_to_archive(kToolsCall));
    emf::Envelope e = m1.envelope(0);
    emf::Message m2(std::move(m1));
    CHECK(m1.get() == nullptr);  // NOLINT(bugprone-use-after-move): defined state
    CHECK(e.method == "tools/call" && m2.envelope(0).method.data() == e.method.data());
    CHECK_THROWS(m1.size(), EMF_ERR_NULL_ARGUMENT);
    emf::Message m3(emf::json_to_archive(kBatch));
    m3 = std::move(m2);
    CHECK(m3.size() == 1 && m2.get() == nullptr);
    std::vector<emf::Message> msgs;
    for (int i = 0; i < 50; ++i) msgs.emplace_back(emf::json_to_archive(kBatch));
    CHECK(msgs.back().size() == 3);
}

void test_threads() {
    // A Message is immutable: const calls from several threads at once are fine.
    const emf::Message shared(emf::json_to_archive(kBatch));
    bool ok[2] = {true, true};
    std::vector<std::thread> threads;
    for (bool& flag : ok) {
        threads.emplace_back([&shared, &flag] {
            for (int i = 0; i < 200; ++i) {
                flag = flag && shared.envelope(2).error_code == -32602 &&
                       shared.to_json().view() == kBatch;
            }
            try {
                emf::json_to_archive("nope");  // fails on this thread only
                flag = false;
            } catch (const emf::Error& e) {
                flag = flag && e.status() == EMF_ERR_INVALID_ARGUMENT;
            }
        });
    }
    for (std::thread& t : threads) t.join();
    CHECK(ok[0] && ok[1]);
}

}  // namespace

// EncodeOptions::checksum: a CRC32C makes every flipped bit an EMF_ERR_CORRUPT.
void test_checksum() {
    emf::EncodeOptions opts;
    opts.created_at_us = 1;
    emf::Buffer plain = emf::json_to_archive(kToolsCall, opts);
    opts.checksum = true;
    emf::Buffer sealed = emf::json_to_archive(kToolsCall, opts);
    CHECK(sealed.size() == plain.size() + 4);
    CHECK(emf::archive_to_json(sealed).view() == emf::archive_to_json(plain).view());
    std::vector<std::uint8_t> bytes(sealed.data(), sealed.data() + sealed.size());
    for (std::size_t bit = 0; bit < bytes.size() * 8; bit += 5) {
        bytes[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
        CHECK_THROWS(emf::validate(bytes), EMF_ERR_CORRUPT);
        bytes[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
    }
    CHECK(emf::validate(bytes) == 1);
}

int main() {
    try {
        emf::check_abi();
    } catch (const emf::Error& e) {
        std::fprintf(stderr, "refusing to run: %s\n", e.what());
        return 2;
    }
    CHECK(emf::version() == std::to_string(EMF_VERSION_MAJOR) + "." +
                                std::to_string(EMF_VERSION_MINOR) + "." +
                                std::to_string(EMF_VERSION_PATCH));

    test_roundtrips();
    test_message_fields();
    test_errors();
    test_checksum();
    test_compression();
    test_moves();
    test_threads();

    std::printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}

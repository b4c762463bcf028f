/*
 * serializer.c — a C11 host of the erlmcp-flow serializer, built against the installed
 * header and library (`pkg-config --cflags --libs erlmcp_flow`).
 *
 * It exercises every function of include/erlmcp_flow.h: MCP JSON-RPC messages go JSON ->
 * archive -> JSON and must come back byte for byte; message handles expose kinds, ids,
 * methods, error codes and payloads; zlib compression round-trips and refuses a bomb. Then it
 * feeds the boundary what a careless or hostile caller would (NULL, huge lengths, bad JSON,
 * truncated, random and bit-flipped archives, double frees, stale handles and stale copies of
 * freed buffers) and checks the exact status, a non-empty error message, and that
 * out-parameters were not touched.
 *
 * Output: one line per failed check on stderr, then exactly one line `N passed, M failed`.
 * Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded library has another ABI.
 */
#include <erlmcp_flow.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__STDC_NO_THREADS__)
#include <threads.h>
#endif

/* ---------------------------------------------------------------- checks */

#include "check.h"

/* ---------------------------------------------------------------- helpers */

static const uint8_t *u8(const char *s) { return (const uint8_t *)s; }

static int bytes_equal(const uint8_t *a, size_t alen, const char *b) {
    size_t blen = strlen(b);
    return alen == blen && (blen == 0 || memcmp(a, b, blen) == 0);
}

static int buf_equal(emf_buf_t buf, const char *text) { return bytes_equal(buf.data, buf.len, text); }

static int buf_contains(emf_buf_t buf, const char *needle) {
    size_t n = strlen(needle);
    if (n == 0) return 1;
    for (size_t i = 0; i + n <= buf.len; i++) {
        if (memcmp(buf.data + i, needle, n) == 0) return 1;
    }
    return 0;
}

/* A sentinel that no successful call would write: used to prove out-params are untouched
 * (all three fields, the private token included). */
static emf_buf_t sentinel_buf(void) {
    static uint8_t marker;
    emf_buf_t b = {&marker, 77, UINT64_C(0x5E471E15E471E15E)};
    return b;
}

static int is_sentinel(emf_buf_t b) {
    emf_buf_t s = sentinel_buf();
    return b.data == s.data && b.len == s.len && b.token == s.token;
}

/* JSON -> archive with `opts`; an empty buffer (and a failed check) when encoding fails. */
static emf_buf_t encode(const char *json, const emf_encode_options_t *opts) {
    emf_buf_t out = {NULL, 0, 0};
    emf_status_t st = emf_json_to_archive(u8(json), strlen(json), opts, &out);
    if (st != EMF_OK) {
        fprintf(stderr, "encode(%.60s...) failed: %s: %s\n", json, emf_status_name(st),
                last_error());
    }
    CHECK(st == EMF_OK && out.data != NULL && out.len > 0);
    return out;
}

/* malloc that never returns NULL: running out of memory here is not a test result. */
static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fputs("out of memory\n", stderr);
        exit(3);
    }
    return p;
}

/* Deterministic PRNG (xorshift64*) so that every run feeds the same garbage. */
static uint64_t g_rng = 0x9E3779B97F4A7C15u;
static uint64_t next_random(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 2685821657736338717u;
}

/* ---------------------------------------------------------------- messages */

static const char INITIALIZE[] =
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{"
    "\"protocolVersion\":\"2025-06-18\",\"capabilities\":{\"roots\":{\"listChanged\":true},"
    "\"sampling\":{}},\"clientInfo\":{\"name\":\"c-host\",\"version\":\"1.0.0\"}}}";

static const char TOOLS_CALL_PARAMS[] =
    "{\"name\":\"search\",\"arguments\":{\"query\":\"rust ffi\",\"filters\":{\"lang\":"
    "[\"c\",\"c++\"],\"max\":10,\"exact\":false,\"score\":0.75,\"tags\":null},"
    "\"nested\":[[1,2],[3,[4,[5,{\"deep\":[]}]]]],\"empty\":{}}}";

static const char PROGRESS[] =
    "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{"
    "\"progressToken\":\"tok-1\",\"progress\":50,\"total\":100,\"message\":\"halfway\"}}";

static const char ERROR_RESPONSE[] =
    "{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":-32601,\"message\":\"Method not "
    "found\",\"data\":{\"method\":\"tools/unknown\"}}}";

/* Raw UTF-8 (2-, 3- and 4-byte sequences) in an id, a method and a payload. */
static const char UNICODE[] =
    "{\"jsonrpc\":\"2.0\",\"id\":\"\xd0\xb8\xd0\xb4-\xce\xbb\",\"method\":\"tools/call\","
    "\"params\":{\"name\":\"translate\",\"arguments\":{\"text\":\"h\xc3\xa9llo w\xc3\xb6rld "
    "\xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\xa6\x80\"}}}";

static const char BIG_INTEGER[] =
    "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\",\"params\":{\"name\":\"bigmath\","
    "\"arguments\":{\"n\":123456789012345678901234567890,"
    "\"m\":-123456789012345678901234567890,\"i64max\":9223372036854775807,"
    "\"u64max\":18446744073709551615,\"f\":0.1}}}";

static const char BATCH[] =
    "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"},"
    "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"},"
    "{\"jsonrpc\":\"2.0\",\"id\":\"r-2\",\"result\":{\"tools\":[]}}]";

static const char PING[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}";

/* JSON -> archive -> JSON (by both archive_to_json and a message handle) must equal `want`. */
static void roundtrip(const char *json, const char *want, size_t want_count) {
    emf_buf_t archive = encode(json, NULL);
    size_t count = 0;
    CHECK_STATUS(emf_archive_validate(archive.data, archive.len, &count), EMF_OK);
    CHECK(count == want_count);

    emf_buf_t text = {NULL, 0, 0};
    CHECK_STATUS(emf_archive_to_json(archive.data, archive.len, &text), EMF_OK);
    CHECK(buf_equal(text, want));
    if (!buf_equal(text, want)) {
        fprintf(stderr, "  got:  %.*s\n  want: %s\n", (int)(text.len > 300 ? 300 : text.len),
                (const char *)text.data, want);
    }

    emf_message_t *msg = NULL;
    CHECK_STATUS(emf_message_open(archive.data, archive.len, &msg), EMF_OK);
    emf_buf_t again = {NULL, 0, 0};
    CHECK_STATUS(emf_message_to_json(msg, &again), EMF_OK);
    CHECK(again.len == text.len && memcmp(again.data, text.data, text.len) == 0);
    CHECK_STATUS(emf_message_free(msg), EMF_OK);

    CHECK_STATUS(emf_buf_free(&again), EMF_OK);
    CHECK_STATUS(emf_buf_free(&text), EMF_OK);
    CHECK_STATUS(emf_buf_free(&archive), EMF_OK);
    CHECK(archive.data == NULL && archive.len == 0);
}

static void test_roundtrips(void) {
    char tools_call[512];
    snprintf(tools_call, sizeof tools_call,
             "{\"jsonrpc\":\"2.0\",\"id\":\"call-42\",\"method\":\"tools/call\",\"params\":%s}",
             TOOLS_CALL_PARAMS);

    roundtrip(INITIALIZE, INITIALIZE, 1);
    roundtrip(tools_call, tools_call, 1);
    roundtrip(PROGRESS, PROGRESS, 1);
    roundtrip(ERROR_RESPONSE, ERROR_RESPONSE, 1);
    roundtrip(UNICODE, UNICODE, 1);
    roundtrip(BATCH, BATCH, 3);
    roundtrip(PING, PING, 1);

    /* Whitespace goes, top-level members take the canonical order, unknown members stay. */
    roundtrip(" {\n \"method\" : \"ping\", \"x-trace\": [1, \"a\"], \"id\": 5, \"jsonrpc\":\"2.0\" }\t",
              "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"ping\",\"x-trace\":[1,\"a\"]}", 1);
    /* \u escapes (including a surrogate pair) come back as the UTF-8 they denote. */
    roundtrip("{\"jsonrpc\":\"2.0\",\"id\":\"\\u00e9\\ud83e\\udd80\",\"method\":\"m\\n\\\"q\\\"\"}",
              "{\"jsonrpc\":\"2.0\",\"id\":\"\xc3\xa9\xf0\x9f\xa6\x80\",\"method\":\"m\\n\\\"q\\\"\"}",
              1);

    /* The big integers come back digit for digit: they never pass through a double. */
    {
        emf_buf_t archive = encode(BIG_INTEGER, NULL);
        emf_buf_t text = {NULL, 0, 0};
        CHECK_STATUS(emf_archive_to_json(archive.data, archive.len, &text), EMF_OK);
        CHECK(buf_contains(text, "\"n\":123456789012345678901234567890,"));
        CHECK(buf_contains(text, "\"m\":-123456789012345678901234567890,"));
        CHECK(buf_contains(text, "\"u64max\":18446744073709551615,"));
        CHECK(buf_equal(text, BIG_INTEGER));
        emf_buf_free(&text);
        emf_buf_free(&archive);
    }

    /* A resources/read response carrying ~100 KB of text. */
    {
        const size_t text_len = 100 * 1024;
        const char head[] = "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"contents\":[{"
                            "\"uri\":\"file:///var/log/big.txt\",\"mimeType\":\"text/plain\","
                            "\"text\":\"";
        const char tail[] = "\"}]}}";
        size_t total = strlen(head) + text_len + strlen(tail);
        char *json = xmalloc(total + 1);
        char *p = json;
        memcpy(p, head, strlen(head));
        p += strlen(head);
        for (size_t i = 0; i < text_len; i++) {
            *p++ = (char)('a' + (i * 7 + i / 26) % 26);
        }
        memcpy(p, tail, strlen(tail) + 1);
        roundtrip(json, json, 1);
        free(json);
    }
}

/* ---------------------------------------------------------------- handles */

static int method_is(const emf_envelope_info_t *e, const char *m) {
    return e->method != NULL && bytes_equal(e->method, e->method_len, m);
}

static int id_str_is(const emf_envelope_info_t *e, const char *s) {
    return e->id_type == EMF_ID_STRING && e->id_str != NULL && bytes_equal(e->id_str, e->id_str_len, s);
}

static void check_payload(const emf_message_t *msg, size_t index, const char *want) {
    emf_buf_t payload = sentinel_buf();
    CHECK_STATUS(emf_message_payload_json(msg, index, &payload), EMF_OK);
    CHECK(buf_equal(payload, want));
    if (!is_sentinel(payload)) emf_buf_free(&payload);
}

static emf_message_t *open_json(const char *json, const emf_encode_options_t *opts) {
    emf_buf_t archive = encode(json, opts);
    emf_message_t *msg = NULL;
    CHECK_STATUS(emf_message_open(archive.data, archive.len, &msg), EMF_OK);
    /* The handle holds its own copy: the archive can go at once. */
    emf_buf_free(&archive);
    return msg;
}

static void test_message_handles(void) {
    emf_envelope_info_t e;
    size_t count = 0;

    /* A request: kind, integer id, method, params; defaults from NULL options. */
    emf_message_t *init = open_json(INITIALIZE, NULL);
    CHECK_STATUS(emf_message_count(init, &count), EMF_OK);
    CHECK(count == 1);
    CHECK_STATUS(emf_message_envelope(init, 0, &e), EMF_OK);
    CHECK(e.kind == EMF_KIND_REQUEST);
    CHECK(e.priority == EMF_PRIORITY_NORMAL);
    CHECK(e.created_at_us > 1600000000000000u); /* "now", after 2020 */
    CHECK(e.deadline_us == 0);
    CHECK(e.id_type == EMF_ID_INT && e.id_int == 1 && e.id_str == NULL);
    CHECK(method_is(&e, "initialize"));
    CHECK(!e.has_error);
    check_payload(init, 0,
                  "{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{\"roots\":"
                  "{\"listChanged\":true},\"sampling\":{}},\"clientInfo\":{\"name\":\"c-host\","
                  "\"version\":\"1.0.0\"}}");
    CHECK_STATUS(emf_message_free(init), EMF_OK);

    /* tools/call with a string id; the payload keeps the nested arguments verbatim. */
    {
        char json[512];
        snprintf(json, sizeof json,
                 "{\"jsonrpc\":\"2.0\",\"id\":\"call-42\",\"method\":\"tools/call\",\"params\":%s}",
                 TOOLS_CALL_PARAMS);
        emf_message_t *call = open_json(json, NULL);
        CHECK_STATUS(emf_message_envelope(call, 0, &e), EMF_OK);
        CHECK(e.kind == EMF_KIND_REQUEST);
        CHECK(id_str_is(&e, "call-42"));
        CHECK(method_is(&e, "tools/call"));
        check_payload(call, 0, TOOLS_CALL_PARAMS);
        emf_message_free(call);
    }

    /* A notification has no id. */
    emf_message_t *progress = open_json(PROGRESS, NULL);
    CHECK_STATUS(emf_message_envelope(progress, 0, &e), EMF_OK);
    CHECK(e.kind == EMF_KIND_NOTIFICATION);
    CHECK(e.id_type == EMF_ID_NONE);
    CHECK(method_is(&e, "notifications/progress"));
    check_payload(progress, 0,
                  "{\"progressToken\":\"tok-1\",\"progress\":50,\"total\":100,\"message\":\"halfway\"}");
    emf_message_free(progress);

    /* An error response: code, no method, the error object as payload. */
    emf_message_t *err = open_json(ERROR_RESPONSE, NULL);
    CHECK_STATUS(emf_message_envelope(err, 0, &e), EMF_OK);
    CHECK(e.kind == EMF_KIND_ERROR);
    CHECK(e.has_error && e.error_code == -32601);
    CHECK(e.method == NULL && e.method_len == 0);
    CHECK(e.id_type == EMF_ID_INT && e.id_int == 3);
    check_payload(err, 0,
                  "{\"code\":-32601,\"message\":\"Method not found\",\"data\":{\"method\":\"tools/unknown\"}}");
    emf_message_free(err);

    /* Unicode bytes are handed out as they are. */
    emf_message_t *uni = open_json(UNICODE, NULL);
    CHECK_STATUS(emf_message_envelope(uni, 0, &e), EMF_OK);
    CHECK(id_str_is(&e, "\xd0\xb8\xd0\xb4-\xce\xbb"));
    emf_message_free(uni);

    /* Id types: null, negative, int64 limits, beyond int64, float, strings; and each id as
     * exact JSON text (emf_message_id_json), the same text message_to_json writes. */
    {
        struct {
            const char *json;
            uint32_t id_type;
            int64_t id_int;
            const char *id_json;
        } ids[] = {
            {"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"Parse error\"}}",
             EMF_ID_NULL, 0, "null"},
            {"{\"jsonrpc\":\"2.0\",\"id\":-5,\"method\":\"m\"}", EMF_ID_INT, -5, "-5"},
            {"{\"jsonrpc\":\"2.0\",\"id\":9223372036854775807,\"method\":\"m\"}", EMF_ID_INT, INT64_MAX,
             "9223372036854775807"},
            {"{\"jsonrpc\":\"2.0\",\"id\":-9223372036854775808,\"method\":\"m\"}", EMF_ID_INT, INT64_MIN,
             "-9223372036854775808"},
            {"{\"jsonrpc\":\"2.0\",\"id\":9223372036854775808,\"method\":\"m\"}", EMF_ID_OTHER_NUMBER, 0,
             "9223372036854775808"},
            {"{\"jsonrpc\":\"2.0\",\"id\":123456789012345678901234567890,\"method\":\"m\"}",
             EMF_ID_OTHER_NUMBER, 0, "123456789012345678901234567890"},
            {"{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"m\"}", EMF_ID_OTHER_NUMBER, 0, "1.5"},
            {"{\"jsonrpc\":\"2.0\",\"id\":\"\",\"method\":\"\"}", EMF_ID_STRING, 0, "\"\""},
            {"{\"jsonrpc\":\"2.0\",\"id\":\"call-42\",\"method\":\"m\"}", EMF_ID_STRING, 0, "\"call-42\""},
            {"{\"jsonrpc\":\"2.0\",\"id\":\"q\\\"b\\\\s\",\"method\":\"m\"}", EMF_ID_STRING, 0,
             "\"q\\\"b\\\\s\""},
            {UNICODE, EMF_ID_STRING, 0, "\"\xd0\xb8\xd0\xb4-\xce\xbb\""},
        };
        for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
            emf_message_t *m = open_json(ids[i].json, NULL);
            CHECK_STATUS(emf_message_envelope(m, 0, &e), EMF_OK);
            CHECK(e.id_type == ids[i].id_type);
            CHECK(e.id_type != EMF_ID_INT || e.id_int == ids[i].id_int);

            emf_buf_t id = sentinel_buf();
            CHECK_STATUS(emf_message_id_json(m, 0, &id), EMF_OK);
            CHECK(!is_sentinel(id) && buf_equal(id, ids[i].id_json));
            if (!buf_equal(id, ids[i].id_json)) {
                fprintf(stderr, "  id #%zu: got %.*s, want %s\n", i,
                        is_sentinel(id) ? 0 : (int)id.len, (const char *)id.data, ids[i].id_json);
            }
            /* ... which is exactly what the whole message says after "id": */
            emf_buf_t whole = {NULL, 0, 0};
            CHECK_STATUS(emf_message_to_json(m, &whole), EMF_OK);
            char needle[128];
            snprintf(needle, sizeof needle, "\"id\":%s,", ids[i].id_json);
            CHECK(buf_contains(whole, needle));
            emf_buf_free(&whole);
            if (!is_sentinel(id)) CHECK_STATUS(emf_buf_free(&id), EMF_OK);
            emf_message_free(m);
        }
        /* The empty method and id are present (non-NULL), just zero bytes long. */
        emf_message_t *m = open_json(ids[7].json, NULL);
        CHECK_STATUS(emf_message_envelope(m, 0, &e), EMF_OK);
        CHECK(e.method != NULL && e.method_len == 0 && e.id_str != NULL && e.id_str_len == 0);
        emf_message_free(m);
        /* The big-integer id itself is read from the JSON, verbatim. */
        m = open_json(ids[5].json, NULL);
        emf_buf_t text = {NULL, 0, 0};
        CHECK_STATUS(emf_message_to_json(m, &text), EMF_OK);
        CHECK(buf_equal(text, ids[5].json));
        emf_buf_free(&text);
        emf_message_free(m);
    }

    /* A batch with options: every envelope carries the priority and the times. */
    {
        emf_encode_options_t opts = {EMF_PRIORITY_HIGH, 1700000000000000u, 1700000060000000u};
        emf_message_t *batch = open_json(BATCH, &opts);
        CHECK_STATUS(emf_message_count(batch, &count), EMF_OK);
        CHECK(count == 3);
        static const uint32_t kinds[] = {EMF_KIND_REQUEST, EMF_KIND_NOTIFICATION, EMF_KIND_RESPONSE};
        for (size_t i = 0; i < 3; i++) {
            CHECK_STATUS(emf_message_envelope(batch, i, &e), EMF_OK);
            CHECK(e.kind == kinds[i]);
            CHECK(e.priority == EMF_PRIORITY_HIGH);
            CHECK(e.created_at_us == 1700000000000000u && e.deadline_us == 1700000060000000u);
        }
        CHECK_STATUS(emf_message_envelope(batch, 0, &e), EMF_OK);
        CHECK(method_is(&e, "tools/list") && e.id_type == EMF_ID_INT && e.id_int == 1);
        CHECK_STATUS(emf_message_envelope(batch, 1, &e), EMF_OK);
        CHECK(method_is(&e, "notifications/initialized") && e.id_type == EMF_ID_NONE);
        CHECK_STATUS(emf_message_envelope(batch, 2, &e), EMF_OK);
        CHECK(e.method == NULL && id_str_is(&e, "r-2"));
        check_payload(batch, 2, "{\"tools\":[]}");

        /* A request without params has no payload. */
        emf_buf_t none = sentinel_buf();
        CHECK_ERROR(emf_message_payload_json(batch, 0, &none), EMF_ERR_NOT_FOUND, "no params");
        CHECK(is_sentinel(none));

        /* Ids as JSON per envelope; the notification has none. */
        emf_buf_t id = {NULL, 0, 0};
        CHECK_STATUS(emf_message_id_json(batch, 0, &id), EMF_OK);
        CHECK(buf_equal(id, "1"));
        emf_buf_free(&id);
        CHECK_STATUS(emf_message_id_json(batch, 2, &id), EMF_OK);
        CHECK(buf_equal(id, "\"r-2\""));
        emf_buf_free(&id);
        CHECK_ERROR(emf_message_id_json(batch, 1, &none), EMF_ERR_NOT_FOUND, "no id");
        CHECK(is_sentinel(none));

        /* Index out of range, for every indexed function; out untouched. */
        emf_envelope_info_t untouched;
        memset(&untouched, 0xA5, sizeof untouched);
        e = untouched;
        CHECK_ERROR(emf_message_envelope(batch, 3, &e), EMF_ERR_INVALID_ARGUMENT, "out of range");
        CHECK(memcmp(&e, &untouched, sizeof e) == 0);
        CHECK_ERROR(emf_message_envelope(batch, SIZE_MAX, &e), EMF_ERR_INVALID_ARGUMENT, "out of range");
        CHECK_ERROR(emf_message_payload_json(batch, 3, &none), EMF_ERR_INVALID_ARGUMENT, "out of range");
        CHECK_ERROR(emf_message_id_json(batch, 3, &none), EMF_ERR_INVALID_ARGUMENT, "out of range");
        CHECK_ERROR(emf_message_id_json(batch, SIZE_MAX, &none), EMF_ERR_INVALID_ARGUMENT, "out of range");
        CHECK(is_sentinel(none));

        /* NULL out-params and NULL handles. */
        CHECK_ERROR(emf_message_count(batch, NULL), EMF_ERR_NULL_ARGUMENT, "out_count");
        CHECK_ERROR(emf_message_envelope(batch, 0, NULL), EMF_ERR_NULL_ARGUMENT, "out");
        CHECK_ERROR(emf_message_to_json(batch, NULL), EMF_ERR_NULL_ARGUMENT, "out");
        CHECK_ERROR(emf_message_payload_json(batch, 0, NULL), EMF_ERR_NULL_ARGUMENT, "out");
        CHECK_ERROR(emf_message_id_json(batch, 0, NULL), EMF_ERR_NULL_ARGUMENT, "out");
        CHECK_ERROR(emf_message_count(NULL, &count), EMF_ERR_NULL_ARGUMENT, "msg");
        CHECK_ERROR(emf_message_envelope(NULL, 0, &e), EMF_ERR_NULL_ARGUMENT, "msg");
        CHECK_ERROR(emf_message_to_json(NULL, &none), EMF_ERR_NULL_ARGUMENT, "msg");
        CHECK_ERROR(emf_message_payload_json(NULL, 0, &none), EMF_ERR_NULL_ARGUMENT, "msg");
        CHECK_ERROR(emf_message_id_json(NULL, 0, &none), EMF_ERR_NULL_ARGUMENT, "msg");
        CHECK(is_sentinel(none));

        /* Free twice: the second is refused; a freed handle is not used. */
        CHECK_STATUS(emf_message_free(batch), EMF_OK);
        CHECK_ERROR(emf_message_free(batch), EMF_ERR_INVALID_ARGUMENT, "already freed");
        count = 12345;
        CHECK_ERROR(emf_message_count(batch, &count), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
        CHECK(count == 12345);
        CHECK_STATUS(emf_message_free(NULL), EMF_OK);
    }

    /* Every priority code is accepted; an unknown one is refused. */
    {
        static const uint32_t prios[] = {EMF_PRIORITY_CRITICAL, EMF_PRIORITY_HIGH,
                                         EMF_PRIORITY_NORMAL, EMF_PRIORITY_LOW};
        for (size_t i = 0; i < 4; i++) {
            emf_encode_options_t opts = {prios[i], 0, 0};
            emf_message_t *m = open_json(PING, &opts);
            CHECK_STATUS(emf_message_envelope(m, 0, &e), EMF_OK);
            CHECK(e.priority == prios[i] && e.created_at_us > 0 && e.deadline_us == 0);
            emf_message_free(m);
        }
        emf_encode_options_t bad = {4, 0, 0};
        emf_buf_t out = sentinel_buf();
        CHECK_ERROR(emf_json_to_archive(u8(PING), strlen(PING), &bad, &out),
                    EMF_ERR_INVALID_ARGUMENT, "priority");
        bad.priority = UINT32_MAX;
        CHECK_ERROR(emf_json_to_archive(u8(PING), strlen(PING), &bad, &out),
                    EMF_ERR_INVALID_ARGUMENT, "priority");
        CHECK(is_sentinel(out));
    }
}

/* ---------------------------------------------------------------- value events */

/* Copies each visited event into a builder (ctx); the event's bytes are used during the
 * callback only. */
static int copy_event(void *ctx, const emf_value_event_t *event) {
    return emf_value_builder_push((emf_value_builder_t *)ctx, event, 1) != EMF_OK;
}

typedef struct {
    uint32_t kinds[64];
    size_t n;
    size_t stop_after;
    char keys[256];
} event_log;

static int log_event(void *ctx, const emf_value_event_t *event) {
    event_log *log = ctx;
    if (log->n < 64) log->kinds[log->n] = event->kind;
    log->n++;
    if (event->kind == EMF_VALUE_KEY) {
        size_t used = strlen(log->keys);
        if (used + event->len + 2 < sizeof log->keys) {
            memcpy(log->keys + used, event->data, event->len);
            log->keys[used + event->len] = ',';
            log->keys[used + event->len + 1] = '\0';
        }
    }
    return log->stop_after != 0 && log->n >= log->stop_after;
}

static emf_value_event_t value_event(uint32_t kind) {
    emf_value_event_t e;
    memset(&e, 0, sizeof e);
    e.kind = kind;
    return e;
}

static emf_value_event_t text_event(uint32_t kind, const char *text) {
    emf_value_event_t e = value_event(kind);
    e.data = u8(text);
    e.len = strlen(text);
    return e;
}

static void test_value_events(void) {
    /* JSON -> archive, visited into a builder, finished: the same archive. */
    const emf_encode_options_t opts = {EMF_PRIORITY_HIGH, 5, 9};
    emf_buf_t from_json = {NULL, 0, 0};
    CHECK_STATUS(emf_json_to_archive(u8(BIG_INTEGER), strlen(BIG_INTEGER), &opts, &from_json),
                 EMF_OK);
    emf_value_builder_t *b = NULL;
    CHECK_STATUS(emf_value_builder_new(0, &b), EMF_OK);
    const emf_value_visitor_t copier = {copy_event};
    CHECK_STATUS(emf_archive_visit(from_json.data, from_json.len, &copier, b), EMF_OK);
    emf_buf_t built = {NULL, 0, 0};
    CHECK_STATUS(emf_value_builder_finish(b, &opts, 0, &built), EMF_OK);
    CHECK(built.len == from_json.len && memcmp(built.data, from_json.data, built.len) == 0);
    emf_buf_free(&built);

    /* Events by hand: no "jsonrpc" member (EMF_ARCHIVE_IMPLICIT_JSONRPC), a big integer from
     * its magnitude bytes (-2^64), a checksum. */
    const uint8_t two_to_64[] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
    emf_value_event_t events[9];
    events[0] = value_event(EMF_VALUE_BEGIN_OBJECT);
    events[0].count = 2;
    events[1] = text_event(EMF_VALUE_KEY, "method");
    events[2] = text_event(EMF_VALUE_STRING, "task");
    events[3] = text_event(EMF_VALUE_KEY, "params");
    events[4] = value_event(EMF_VALUE_BEGIN_ARRAY);
    events[4].count = 2;
    events[5] = value_event(EMF_VALUE_BIG_INT_LE);
    events[5].int_value = 1;
    events[5].data = two_to_64;
    events[5].len = sizeof two_to_64;
    events[6] = value_event(EMF_VALUE_FLOAT);
    events[6].float_value = 0.1;
    events[7] = value_event(EMF_VALUE_END);
    events[8] = value_event(EMF_VALUE_END);
    CHECK_STATUS(emf_value_builder_push(b, events, 9), EMF_OK);
    CHECK_STATUS(emf_value_builder_finish(b, NULL,
                                          EMF_ARCHIVE_IMPLICIT_JSONRPC | EMF_ARCHIVE_CHECKSUM,
                                          &built),
                 EMF_OK);
    emf_buf_t text = {NULL, 0, 0};
    CHECK_STATUS(emf_archive_to_json(built.data, built.len, &text), EMF_OK);
    CHECK(buf_equal(text, "{\"jsonrpc\":\"2.0\",\"method\":\"task\","
                          "\"params\":[-18446744073709551616,0.1]}"));
    emf_buf_free(&text);

    /* A visit gives the members in emf_archive_to_json's order, with counts; a callback
     * returning non-zero stops it. */
    event_log log;
    memset(&log, 0, sizeof log);
    const emf_value_visitor_t logger = {log_event};
    CHECK_STATUS(emf_archive_visit(built.data, built.len, &logger, &log), EMF_OK);
    CHECK(log.n == 11);
    CHECK(log.kinds[0] == EMF_VALUE_BEGIN_OBJECT && log.kinds[6] == EMF_VALUE_BEGIN_ARRAY);
    CHECK(log.kinds[7] == EMF_VALUE_NUMBER_TEXT && log.kinds[8] == EMF_VALUE_FLOAT);
    CHECK(strcmp(log.keys, "jsonrpc,method,params,") == 0);
    memset(&log, 0, sizeof log);
    log.stop_after = 2;
    CHECK_ERROR(emf_archive_visit(built.data, built.len, &logger, &log), EMF_ERR_STOPPED,
                "stopped");
    CHECK(log.n == 2);
    emf_buf_free(&built);

    /* Misuse: the status and a message that says where. */
    emf_value_event_t bad[3];
    bad[0] = value_event(EMF_VALUE_BEGIN_ARRAY);
    bad[1] = value_event(EMF_VALUE_NULL);
    bad[2] = value_event(EMF_VALUE_FLOAT);
    bad[2].float_value = HUGE_VAL;
    CHECK_ERROR(emf_value_builder_push(b, bad, 3), EMF_ERR_INVALID_ARGUMENT, "at $[1]");
    bad[0] = text_event(EMF_VALUE_STRING, "\xff");
    CHECK_ERROR(emf_value_builder_push(b, bad, 1), EMF_ERR_INVALID_ARGUMENT, "UTF-8");
    bad[0] = value_event(77);
    CHECK_ERROR(emf_value_builder_push(b, bad, 1), EMF_ERR_INVALID_ARGUMENT, "kind 77");
    CHECK_ERROR(emf_value_builder_push(b, NULL, 1), EMF_ERR_NULL_ARGUMENT, "events");
    emf_buf_t untouched = sentinel_buf();
    CHECK_ERROR(emf_value_builder_finish(b, NULL, 0, &untouched), EMF_ERR_INVALID_ARGUMENT,
                "not ended");
    CHECK(is_sentinel(untouched));
    CHECK_ERROR(emf_value_builder_finish(b, NULL, 0x100, &untouched), EMF_ERR_INVALID_ARGUMENT,
                "flags");
    CHECK_STATUS(emf_value_builder_free(b), EMF_OK);
    CHECK_ERROR(emf_value_builder_free(b), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_value_builder_new(8, &b), EMF_ERR_INVALID_ARGUMENT, "flags");
    CHECK_ERROR(emf_value_builder_new(0, NULL), EMF_ERR_NULL_ARGUMENT, "out");

    /* Repeated keys refused with EMF_BUILDER_UNIQUE_KEYS (JSON text may hold them). */
    CHECK_STATUS(emf_value_builder_new(EMF_BUILDER_UNIQUE_KEYS, &b), EMF_OK);
    emf_value_event_t dup[6] = {value_event(EMF_VALUE_BEGIN_OBJECT),
                                text_event(EMF_VALUE_KEY, "k"), value_event(EMF_VALUE_NULL),
                                text_event(EMF_VALUE_KEY, "k"), value_event(EMF_VALUE_NULL),
                                value_event(EMF_VALUE_END)};
    CHECK_ERROR(emf_value_builder_push(b, dup, 6), EMF_ERR_INVALID_ARGUMENT, "\"k\"");
    CHECK_STATUS(emf_value_builder_free(b), EMF_OK);

    /* A visit refuses NULL and damaged input before any callback. */
    memset(&log, 0, sizeof log);
    const emf_value_visitor_t empty = {NULL};
    CHECK_ERROR(emf_archive_visit(from_json.data, from_json.len, NULL, &log),
                EMF_ERR_NULL_ARGUMENT, "visitor");
    CHECK_ERROR(emf_archive_visit(from_json.data, from_json.len, &empty, &log),
                EMF_ERR_NULL_ARGUMENT, "on_event");
    CHECK_ERROR(emf_archive_visit(from_json.data, from_json.len - 1, &logger, &log),
                EMF_ERR_CORRUPT, NULL);
    CHECK(log.n == 0);
    emf_buf_free(&from_json);
}

/* ---------------------------------------------------------------- compression */

static void test_compression(void) {
    emf_buf_t out = {NULL, 0, 0};
    bool compressed = true;

    /* Below the threshold: a copy of the input, not compressed. */
    const char *small = "short text, not worth compressing";
    CHECK_STATUS(emf_compress_if_needed(u8(small), strlen(small), EMF_COMPRESS_DEFAULT_THRESHOLD,
                                        &out, &compressed),
                 EMF_OK);
    CHECK(!compressed && buf_equal(out, small) && out.data != (const uint8_t *)small);
    emf_buf_free(&out);

    /* Empty input: OK, an empty buffer. */
    compressed = true;
    CHECK_STATUS(emf_compress_if_needed(NULL, 0, 0, &out, &compressed), EMF_OK);
    CHECK(!compressed && out.data == NULL && out.len == 0);

    /* A compressible 100 KB payload. */
    size_t n = 100 * 1024;
    uint8_t *text = xmalloc(n);
    for (size_t i = 0; i < n; i++) text[i] = (uint8_t)("the quick brown fox jumps over the lazy dog. "[i % 45]);

    CHECK_STATUS(emf_compress_if_needed(text, n, EMF_COMPRESS_DEFAULT_THRESHOLD, &out, &compressed),
                 EMF_OK);
    CHECK(compressed && out.len < n * 8 / 10);
    emf_buf_t back = {NULL, 0, 0};
    CHECK_STATUS(emf_decompress(out.data, out.len, n, &back), EMF_OK);
    CHECK(back.len == n && memcmp(back.data, text, n) == 0);
    emf_buf_free(&back);
    /* No limit at all: max_len = SIZE_MAX must not overflow anywhere. */
    CHECK_STATUS(emf_decompress(out.data, out.len, SIZE_MAX, &back), EMF_OK);
    CHECK(back.len == n && memcmp(back.data, text, n) == 0);
    emf_buf_free(&back);
    back = sentinel_buf();
    CHECK_ERROR(emf_decompress(out.data, out.len, n - 1, &back), EMF_ERR_TOO_LARGE, NULL);
    CHECK(is_sentinel(back));

    /* Corrupt zlib: truncated, trailing garbage, a flipped checksum byte, not zlib at all. */
    {
        CHECK_ERROR(emf_decompress(out.data, out.len / 2, n, &back), EMF_ERR_CORRUPT, NULL);
        uint8_t *copy = xmalloc(out.len + 1);
        memcpy(copy, out.data, out.len);
        copy[out.len] = 0x00;
        CHECK_ERROR(emf_decompress(copy, out.len + 1, n, &back), EMF_ERR_CORRUPT, NULL);
        copy[out.len - 1] ^= 0x01; /* the Adler-32 trailer */
        CHECK_ERROR(emf_decompress(copy, out.len, n, &back), EMF_ERR_CORRUPT, NULL);
        free(copy);
        const char *junk = "this is not a zlib stream at all";
        CHECK_ERROR(emf_decompress(u8(junk), strlen(junk), n, &back), EMF_ERR_CORRUPT, NULL);
        CHECK_ERROR(emf_decompress(NULL, 0, n, &back), EMF_ERR_CORRUPT, NULL);
        /* Without a limit, bad streams are still just corrupt. */
        CHECK_ERROR(emf_decompress(out.data, out.len / 2, SIZE_MAX, &back), EMF_ERR_CORRUPT, NULL);
        CHECK_ERROR(emf_decompress(u8(junk), strlen(junk), SIZE_MAX, &back), EMF_ERR_CORRUPT, NULL);
        CHECK(is_sentinel(back));
    }
    emf_buf_free(&out);

    /* A threshold above the length, or incompressible bytes: not compressed. */
    CHECK_STATUS(emf_compress_if_needed(text, n, n + 1, &out, &compressed), EMF_OK);
    CHECK(!compressed && out.len == n && memcmp(out.data, text, n) == 0);
    emf_buf_free(&out);
    for (size_t i = 0; i < n; i++) text[i] = (uint8_t)next_random();
    CHECK_STATUS(emf_compress_if_needed(text, n, 0, &out, &compressed), EMF_OK);
    CHECK(!compressed && out.len == n && memcmp(out.data, text, n) == 0);
    emf_buf_free(&out);
    free(text);

    /* A decompression bomb: 10 MB of zeros refused at a 1 MB limit, accepted at 10 MB. */
    {
        size_t bomb_len = 10u * 1024 * 1024;
        uint8_t *zeros = xmalloc(bomb_len);
        memset(zeros, 0, bomb_len);
        emf_buf_t bomb = {NULL, 0, 0};
        CHECK_STATUS(emf_compress_if_needed(zeros, bomb_len, EMF_COMPRESS_DEFAULT_THRESHOLD, &bomb,
                                            &compressed),
                     EMF_OK);
        CHECK(compressed && bomb.len < 64 * 1024);
        back = sentinel_buf();
        CHECK_ERROR(emf_decompress(bomb.data, bomb.len, 1024 * 1024, &back), EMF_ERR_TOO_LARGE, NULL);
        CHECK(is_sentinel(back));
        back = (emf_buf_t){NULL, 0, 0};
        CHECK_STATUS(emf_decompress(bomb.data, bomb.len, bomb_len, &back), EMF_OK);
        CHECK(back.len == bomb_len && memcmp(back.data, zeros, bomb_len) == 0);
        emf_buf_free(&back);
        CHECK_STATUS(emf_decompress(bomb.data, bomb.len, SIZE_MAX, &back), EMF_OK);
        CHECK(back.len == bomb_len && memcmp(back.data, zeros, bomb_len) == 0);
        emf_buf_free(&back);
        emf_buf_free(&bomb);
        free(zeros);
    }

    /* Bad arguments. */
    out = sentinel_buf();
    CHECK_ERROR(emf_compress_if_needed(NULL, 5, 0, &out, &compressed), EMF_ERR_NULL_ARGUMENT, "data");
    CHECK_ERROR(emf_compress_if_needed(u8(small), strlen(small), 0, NULL, &compressed),
                EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_compress_if_needed(u8(small), strlen(small), 0, &out, NULL),
                EMF_ERR_NULL_ARGUMENT, "out_compressed");
    CHECK_ERROR(emf_compress_if_needed(u8(small), SIZE_MAX, 0, &out, &compressed),
                EMF_ERR_TOO_LARGE, "exceeds");
    CHECK_ERROR(emf_decompress(NULL, 5, 100, &out), EMF_ERR_NULL_ARGUMENT, "data");
    CHECK_ERROR(emf_decompress(u8(small), strlen(small), 100, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_decompress(u8(small), SIZE_MAX, 100, &out), EMF_ERR_TOO_LARGE, "exceeds");
    CHECK(is_sentinel(out));
}

/* ---------------------------------------------------------------- bad input */

static void test_bad_json(void) {
    static const char *const invalid[] = {
        "",                                                     /* empty */
        "   ",                                                  /* only whitespace */
        "{\"jsonrpc\":\"2.0\",",                                /* truncated JSON */
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\"} x",    /* trailing text */
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}",   /* not UTF-8 */
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xc3\"}",   /* cut UTF-8 sequence */
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xed\xa0\x80\"}", /* UTF-8 surrogate */
        "{\"id\":1,\"method\":\"x\"}",                          /* no "jsonrpc" */
        "{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"x\"}",      /* wrong version */
        "42",                                                   /* not an object */
        "[]",                                                   /* empty batch */
        "[1]",                                                  /* batch of non-objects */
        "{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"x\"}",     /* object id */
        "{\"jsonrpc\":\"2.0\",\"id\":1}",                       /* no method/result/error */
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":\"s\"}", /* scalar params */
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"id\":2,\"method\":\"x\"}",        /* duplicate id */
        "{\"jsonrpc\":\"2.0\",\"result\":1}",                   /* response without id */
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":1.5,\"message\":\"m\"}}",
    };
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        emf_buf_t out = sentinel_buf();
        emf_status_t st = emf_json_to_archive(u8(invalid[i]), strlen(invalid[i]), NULL, &out);
        if (st != EMF_ERR_INVALID_ARGUMENT) fprintf(stderr, "  invalid input #%zu: %s\n", i, invalid[i]);
        CHECK_STATUS(st, EMF_ERR_INVALID_ARGUMENT);
        CHECK(is_sentinel(out));
    }
    /* Specific messages say where and why. */
    emf_buf_t out = sentinel_buf();
    CHECK_ERROR(emf_json_to_archive(u8(invalid[4]), strlen(invalid[4]), NULL, &out),
                EMF_ERR_INVALID_ARGUMENT, "UTF-8");
    CHECK_ERROR(emf_json_to_archive(u8(invalid[7]), strlen(invalid[7]), NULL, &out),
                EMF_ERR_INVALID_ARGUMENT, "jsonrpc");
    CHECK_ERROR(emf_json_to_archive(NULL, 0, NULL, &out), EMF_ERR_INVALID_ARGUMENT, NULL);

    /* An embedded NUL is just a byte that makes the JSON invalid; lengths, not strings. */
    static const char with_nul[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\0junk";
    CHECK_STATUS(emf_json_to_archive(u8(with_nul), sizeof with_nul - 1, NULL, &out),
                 EMF_ERR_INVALID_ARGUMENT);
    CHECK(is_sentinel(out));

    /* Nesting far beyond the parser's limit is an error, not a stack overflow. */
    {
        size_t depth = 100000;
        char *deep = xmalloc(2 * depth + 64);
        size_t len = (size_t)sprintf(deep, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":");
        memset(deep + len, '[', depth);
        memset(deep + len + depth, ']', depth);
        len += 2 * depth;
        deep[len++] = '}';
        CHECK_ERROR(emf_json_to_archive(u8(deep), len, NULL, &out), EMF_ERR_INVALID_ARGUMENT,
                    "nesting");
        free(deep);
    }
    CHECK(is_sentinel(out));
}

static void test_null_and_length_arguments(void) {
    const uint8_t one = '{';
    emf_buf_t out = sentinel_buf();
    size_t count = 777;
    emf_message_t *msg = (emf_message_t *)&out; /* a marker; never dereferenced */
    emf_message_t *const marker = msg;

    /* NULL data with a nonzero length. */
    CHECK_ERROR(emf_json_to_archive(NULL, 10, NULL, &out), EMF_ERR_NULL_ARGUMENT, "json");
    CHECK_ERROR(emf_archive_to_json(NULL, 10, &out), EMF_ERR_NULL_ARGUMENT, "archive");
    CHECK_ERROR(emf_archive_validate(NULL, 10, &count), EMF_ERR_NULL_ARGUMENT, "archive");
    CHECK_ERROR(emf_message_open(NULL, 10, &msg), EMF_ERR_NULL_ARGUMENT, "archive");

    /* NULL out-params. */
    CHECK_ERROR(emf_json_to_archive(u8(PING), strlen(PING), NULL, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_archive_to_json(&one, 1, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_archive_validate(&one, 1, NULL), EMF_ERR_NULL_ARGUMENT, "out_count");
    CHECK_ERROR(emf_message_open(&one, 1, NULL), EMF_ERR_NULL_ARGUMENT, "out");

    /* (NULL, 0) is an empty input: not an archive. */
    CHECK_ERROR(emf_archive_to_json(NULL, 0, &out), EMF_ERR_CORRUPT, NULL);
    CHECK_ERROR(emf_archive_validate(NULL, 0, &count), EMF_ERR_CORRUPT, NULL);
    CHECK_ERROR(emf_message_open(NULL, 0, &msg), EMF_ERR_CORRUPT, NULL);

    /* Lengths past EMF_MAX_INPUT_LEN are refused before a byte is read (`one` is 1 byte). */
    size_t huge[] = {SIZE_MAX, (size_t)EMF_MAX_INPUT_LEN + 1};
    for (size_t i = 0; i < 2; i++) {
        CHECK_ERROR(emf_json_to_archive(&one, huge[i], NULL, &out), EMF_ERR_TOO_LARGE, "exceeds");
        CHECK_ERROR(emf_archive_to_json(&one, huge[i], &out), EMF_ERR_TOO_LARGE, "exceeds");
        CHECK_ERROR(emf_archive_validate(&one, huge[i], &count), EMF_ERR_TOO_LARGE, "exceeds");
        CHECK_ERROR(emf_message_open(&one, huge[i], &msg), EMF_ERR_TOO_LARGE, "exceeds");
    }

    CHECK(is_sentinel(out) && count == 777 && msg == marker);
}

/* Validation of damaged archives must fail cleanly; what passes must be fully usable. */
static int archive_status_consistent(const uint8_t *p, size_t len, emf_status_t *first) {
    size_t count = 0;
    emf_buf_t text = {NULL, 0, 0};
    emf_message_t *msg = NULL;
    emf_status_t v = emf_archive_validate(p, len, &count);
    emf_status_t t = emf_archive_to_json(p, len, &text);
    emf_status_t o = emf_message_open(p, len, &msg);
    *first = v;
    int ok = v == t && v == o && (v == EMF_OK || v == EMF_ERR_CORRUPT);
    if (v == EMF_OK && o == EMF_OK) {
        /* Accepted: every envelope and the JSON must be reachable. */
        emf_buf_t again = {NULL, 0, 0};
        size_t n = 0;
        ok = ok && emf_message_count(msg, &n) == EMF_OK && n == count;
        for (size_t i = 0; ok && i < n; i++) {
            emf_envelope_info_t e;
            emf_buf_t id = {NULL, 0, 0};
            ok = emf_message_envelope(msg, i, &e) == EMF_OK;
            /* The id as JSON exists exactly when the envelope has one. */
            emf_status_t st = emf_message_id_json(msg, i, &id);
            ok = ok && (e.id_type == EMF_ID_NONE ? st == EMF_ERR_NOT_FOUND
                                                 : st == EMF_OK && id.len > 0);
            emf_buf_free(&id);
        }
        ok = ok && emf_message_to_json(msg, &again) == EMF_OK && again.len == text.len &&
             (text.len == 0 || memcmp(again.data, text.data, text.len) == 0);
        emf_buf_free(&again);
    } else if (v != EMF_OK) {
        char msgbuf[8];
        size_t mlen = 0;
        emf_last_error_message(msgbuf, sizeof msgbuf, &mlen);
        ok = ok && mlen > 0;
    }
    emf_buf_free(&text);
    emf_message_free(msg);
    return ok;
}

static void test_damaged_archives(void) {
    /* Truncated at every length: always corrupt. */
    {
        emf_buf_t archive = encode(INITIALIZE, NULL);
        size_t bad = 0;
        for (size_t len = 0; len < archive.len; len++) {
            /* A fresh allocation of exactly `len` bytes, so valgrind sees any over-read. */
            uint8_t *cut = xmalloc(len);
            memcpy(cut, archive.data, len);
            emf_status_t st;
            if (!archive_status_consistent(cut, len, &st) || st != EMF_ERR_CORRUPT) {
                if (bad++ == 0) fprintf(stderr, "  truncation to %zu bytes: %s\n", len, emf_status_name(st));
            }
            free(cut);
        }
        CHECK(bad == 0);
        emf_buf_free(&archive);
    }

    /* Random garbage of many lengths: always corrupt. */
    {
        size_t bad = 0;
        for (int round = 0; round < 2000; round++) {
            size_t len = (size_t)(next_random() % 600);
            uint8_t *junk = xmalloc(len);
            for (size_t i = 0; i < len; i++) junk[i] = (uint8_t)next_random();
            emf_status_t st;
            if (!archive_status_consistent(junk, len, &st) || st != EMF_ERR_CORRUPT) {
                if (bad++ == 0) fprintf(stderr, "  garbage round %d: %s\n", round, emf_status_name(st));
            }
            free(junk);
        }
        CHECK(bad == 0);
    }

    /* Every single-bit flip of a small archive: corrupt, or a valid (different) message. */
    {
        emf_buf_t archive = encode(PING, NULL);
        size_t bad = 0, accepted = 0;
        /* Odd offset: archives are readable at any address. */
        uint8_t *space = xmalloc(archive.len + 1);
        uint8_t *copy = space + 1;
        size_t count = 0;
        memcpy(copy, archive.data, archive.len);
        CHECK_STATUS(emf_archive_validate(copy, archive.len, &count), EMF_OK);
        CHECK(count == 1);
        for (size_t bit = 0; bit < archive.len * 8; bit++) {
            copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            emf_status_t st;
            if (!archive_status_consistent(copy, archive.len, &st)) {
                if (bad++ == 0) fprintf(stderr, "  bit flip %zu: %s\n", bit, emf_status_name(st));
            }
            if (st == EMF_OK) accepted++;
            copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        CHECK(bad == 0);
        CHECK(accepted < archive.len * 8); /* validation rejects most flips */
        free(space);
        emf_buf_free(&archive);
    }

    /* Made with EMF_ARCHIVE_CHECKSUM: every single-bit flip is corrupt, for every reader. */
    {
        emf_buf_t archive = {NULL, 0, 0};
        CHECK_STATUS(emf_json_to_archive_ex(u8(INITIALIZE), strlen(INITIALIZE), NULL,
                                            EMF_ARCHIVE_CHECKSUM, &archive),
                     EMF_OK);
        size_t bad = 0, count = 0;
        uint8_t *space = xmalloc(archive.len + 1);
        uint8_t *copy = space + 1;
        memcpy(copy, archive.data, archive.len);
        CHECK_STATUS(emf_archive_validate(copy, archive.len, &count), EMF_OK);
        for (size_t bit = 0; bit < archive.len * 8; bit++) {
            copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            emf_status_t st;
            if (!archive_status_consistent(copy, archive.len, &st) || st != EMF_ERR_CORRUPT) {
                if (bad++ == 0) fprintf(stderr, "  checksummed, bit flip %zu: %s\n", bit, emf_status_name(st));
            }
            copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        CHECK(bad == 0);
        free(space);
        emf_buf_free(&archive);
        /* Unknown flag bits are refused. */
        CHECK_ERROR(emf_json_to_archive_ex(u8(PING), strlen(PING), NULL, 2, &archive),
                    EMF_ERR_INVALID_ARGUMENT, "flags");
    }
}

/* ---------------------------------------------------------------- buffers and errors */

static void test_buffers(void) {
    emf_buf_t a = encode(PING, NULL);
    emf_buf_t copy = a;
    CHECK(a.token != 0);
    CHECK_STATUS(emf_buf_free(&a), EMF_OK);
    CHECK(a.data == NULL && a.len == 0 && a.token == 0);
    CHECK_STATUS(emf_buf_free(&a), EMF_OK); /* the reset struct is empty: fine */
    CHECK_ERROR(emf_buf_free(&copy), EMF_ERR_INVALID_ARGUMENT, "already freed");
    CHECK(copy.data != NULL && copy.len > 0 && copy.token != 0); /* refused and left untouched */

    /* A stale copy is refused even when a newer buffer of the same length took its memory.
     * Ask for buffers of the same length until the allocator hands the freed address out
     * again (it usually does at once; under valgrind, whose allocator holds freed blocks
     * back, it does not), then free the stale copy: the token tells the two apart. */
    {
        enum { TRIES = 16 };
        emf_buf_t newer[TRIES];
        size_t n = 0, reused = TRIES;
        while (n < TRIES && reused == TRIES) {
            newer[n] = encode(PING, NULL);
            CHECK(newer[n].len == copy.len && newer[n].token != copy.token);
            if (newer[n].data == copy.data) reused = n;
            n++;
        }
        emf_buf_t stale = copy;
        CHECK_ERROR(emf_buf_free(&stale), EMF_ERR_INVALID_ARGUMENT, "already freed");
        CHECK(memcmp(&stale, &copy, sizeof stale) == 0);
        /* Whether or not the address came back: the live buffer's data and length with the
         * stale token (exactly what a stale copy looks like after reuse) is refused too. */
        emf_buf_t forged = {newer[n - 1].data, newer[n - 1].len, copy.token};
        CHECK_ERROR(emf_buf_free(&forged), EMF_ERR_INVALID_ARGUMENT, "already freed");
        CHECK(forged.data == newer[n - 1].data && forged.token == copy.token);
        /* ... and so is any other token, 0 included. */
        forged.token = newer[n - 1].token + 1;
        CHECK_ERROR(emf_buf_free(&forged), EMF_ERR_INVALID_ARGUMENT, NULL);
        forged.token = 0;
        CHECK_ERROR(emf_buf_free(&forged), EMF_ERR_INVALID_ARGUMENT, NULL);
        /* The newer buffers are intact and free normally, each exactly once. */
        for (size_t i = 0; i < n; i++) {
            emf_buf_t json = {NULL, 0, 0};
            CHECK_STATUS(emf_archive_to_json(newer[i].data, newer[i].len, &json), EMF_OK);
            CHECK(buf_equal(json, PING));
            emf_buf_free(&json);
            CHECK_STATUS(emf_buf_free(&newer[i]), EMF_OK);
        }
    }

    /* A pointer the library never returned. */
    uint8_t stack[16] = {0};
    emf_buf_t foreign = {stack, sizeof stack, 0};
    CHECK_ERROR(emf_buf_free(&foreign), EMF_ERR_INVALID_ARGUMENT, "not returned by this library");
    CHECK(foreign.data == stack && foreign.len == sizeof stack);
    foreign.token = 1; /* a guessed token does not make it ours either */
    CHECK_ERROR(emf_buf_free(&foreign), EMF_ERR_INVALID_ARGUMENT, "not returned by this library");

    /* The right pointer and token with the wrong length is refused too; the true one frees. */
    emf_buf_t b = encode(PING, NULL);
    emf_buf_t wrong = {b.data, b.len + 1, b.token};
    CHECK_ERROR(emf_buf_free(&wrong), EMF_ERR_INVALID_ARGUMENT, NULL);
    CHECK(wrong.len == b.len + 1);
    CHECK_STATUS(emf_buf_free(&b), EMF_OK);

    CHECK_STATUS(emf_buf_free(NULL), EMF_OK);
    emf_buf_t empty = {NULL, 0, 0};
    CHECK_STATUS(emf_buf_free(&empty), EMF_OK);
    emf_buf_t null_with_len = {NULL, 5, 0};
    CHECK_STATUS(emf_buf_free(&null_with_len), EMF_OK);
    CHECK(null_with_len.len == 0);
}

/* Handles are tokens that never repeat: a stale handle never names a newer message. */
static void test_handle_tokens(void) {
    emf_buf_t archive = encode(BATCH, NULL);
    emf_message_t *a = NULL;
    emf_message_t *b = NULL;
    size_t count = 0;

    CHECK_STATUS(emf_message_open(archive.data, archive.len, &a), EMF_OK);
    CHECK_STATUS(emf_message_free(a), EMF_OK);
    CHECK_STATUS(emf_message_open(archive.data, archive.len, &b), EMF_OK);
    CHECK(b != NULL && b != a);

    /* Freeing A again is refused and does not touch B. */
    CHECK_ERROR(emf_message_free(a), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    count = 0;
    CHECK_STATUS(emf_message_count(b, &count), EMF_OK);
    CHECK(count == 3);
    emf_envelope_info_t e;
    CHECK_STATUS(emf_message_envelope(b, 2, &e), EMF_OK);
    CHECK(e.kind == EMF_KIND_RESPONSE && id_str_is(&e, "r-2"));
    emf_buf_t text = {NULL, 0, 0};
    CHECK_STATUS(emf_message_to_json(b, &text), EMF_OK);
    CHECK(buf_equal(text, BATCH));
    emf_buf_free(&text);

    /* Every use of the stale A is refused, out-params untouched. */
    count = 4242;
    CHECK_ERROR(emf_message_count(a, &count), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK(count == 4242);
    emf_buf_t out = sentinel_buf();
    CHECK_ERROR(emf_message_to_json(a, &out), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_message_id_json(a, 0, &out), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_message_payload_json(a, 2, &out), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK(is_sentinel(out));

    /* Many open/free cycles: no new handle equals A or B, each frees exactly once. */
    size_t same = 0;
    for (int i = 0; i < 200; i++) {
        emf_message_t *c = NULL;
        CHECK_STATUS(emf_message_open(archive.data, archive.len, &c), EMF_OK);
        if (c == a || c == b) same++;
        CHECK_STATUS(emf_message_free(c), EMF_OK);
        if (emf_message_free(c) != EMF_ERR_INVALID_ARGUMENT) same++;
    }
    CHECK(same == 0);
    CHECK_STATUS(emf_message_count(b, &count), EMF_OK);
    CHECK(count == 3);

    /* Values the library never handed out are refused without being dereferenced. */
    emf_message_t *forged[] = {(emf_message_t *)&archive, (emf_message_t *)(uintptr_t)UINTPTR_MAX};
    for (size_t i = 0; i < 2; i++) {
        count = 4242;
        CHECK_ERROR(emf_message_count(forged[i], &count), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
        CHECK_ERROR(emf_message_free(forged[i]), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
        CHECK(count == 4242);
    }

    CHECK_STATUS(emf_message_free(b), EMF_OK);
    CHECK_ERROR(emf_message_free(b), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_STATUS(emf_buf_free(&archive), EMF_OK);
}

/* Names of kind and priority codes. */
static void test_names(void) {
    static const struct {
        uint32_t code;
        const char *name;
    } kinds[] = {
        {EMF_KIND_REQUEST, "request"}, {EMF_KIND_RESPONSE, "response"},
        {EMF_KIND_NOTIFICATION, "notification"}, {EMF_KIND_TASK, "task"},
        {EMF_KIND_RESULT, "result"}, {EMF_KIND_ERROR, "error"},
        {6, "unknown"}, {UINT32_MAX, "unknown"},
    }, priorities[] = {
        {EMF_PRIORITY_CRITICAL, "critical"}, {EMF_PRIORITY_HIGH, "high"},
        {EMF_PRIORITY_NORMAL, "normal"}, {EMF_PRIORITY_LOW, "low"},
        {4, "unknown"}, {UINT32_MAX, "unknown"},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        const char *got = emf_kind_name(kinds[i].code);
        CHECK(got != NULL && strcmp(got, kinds[i].name) == 0);
        CHECK(got == emf_kind_name(kinds[i].code)); /* static: the same string every time */
    }
    for (size_t i = 0; i < sizeof priorities / sizeof priorities[0]; i++) {
        const char *got = emf_priority_name(priorities[i].code);
        CHECK(got != NULL && strcmp(got, priorities[i].name) == 0);
        CHECK(got == emf_priority_name(priorities[i].code));
    }
    /* The names agree with what a message reports. */
    emf_message_t *m = open_json(ERROR_RESPONSE, NULL);
    emf_envelope_info_t e;
    CHECK_STATUS(emf_message_envelope(m, 0, &e), EMF_OK);
    CHECK(strcmp(emf_kind_name(e.kind), "error") == 0 &&
          strcmp(emf_priority_name(e.priority), "normal") == 0);
    emf_message_free(m);
}

static void test_last_error_message(void) {
    /* Make a known error: its message is `argument `json` is NULL`. */
    emf_buf_t out = {NULL, 0, 0};
    CHECK_STATUS(emf_json_to_archive(NULL, 1, NULL, &out), EMF_ERR_NULL_ARGUMENT);

    char full[256];
    size_t full_len = 0;
    CHECK_STATUS(emf_last_error_message(full, sizeof full, &full_len), EMF_OK);
    CHECK(full_len > 8 && strlen(full) == full_len && strstr(full, "json") != NULL);

    /* Length query. */
    size_t len = 0;
    CHECK(emf_last_error_message(NULL, 0, &len) == EMF_ERR_BUFFER_TOO_SMALL);
    CHECK(len == full_len);

    /* A small buffer: cut, NUL-terminated, full length reported. */
    char small[5];
    memset(small, 'X', sizeof small);
    len = 0;
    CHECK(emf_last_error_message(small, sizeof small, &len) == EMF_ERR_BUFFER_TOO_SMALL);
    CHECK(len == full_len);
    CHECK(small[4] == '\0' && memcmp(small, full, 4) == 0);
    char one[1] = {'X'};
    CHECK(emf_last_error_message(one, 1, &len) == EMF_ERR_BUFFER_TOO_SMALL && one[0] == '\0');

    /* Exactly len + 1 bytes fits. */
    char *exact = xmalloc(full_len + 1);
    CHECK(emf_last_error_message(exact, full_len + 1, &len) == EMF_OK &&
          strcmp(exact, full) == 0);
    free(exact);

    /* Misuse of this function is reported but does not replace the stored message. */
    CHECK(emf_last_error_message(full, sizeof full, NULL) == EMF_ERR_NULL_ARGUMENT);
    CHECK(emf_last_error_message(NULL, 10, &len) == EMF_ERR_NULL_ARGUMENT);
    char again[256];
    CHECK(emf_last_error_message(again, sizeof again, &len) == EMF_OK && strcmp(again, full) == 0);

    /* Status names. */
    static const struct {
        emf_status_t code;
        const char *name;
    } names[] = {
        {EMF_OK, "EMF_OK"},
        {EMF_ERR_NULL_ARGUMENT, "EMF_ERR_NULL_ARGUMENT"},
        {EMF_ERR_INVALID_ARGUMENT, "EMF_ERR_INVALID_ARGUMENT"},
        {EMF_ERR_FULL, "EMF_ERR_FULL"},
        {EMF_ERR_EMPTY, "EMF_ERR_EMPTY"},
        {EMF_ERR_TIMEOUT, "EMF_ERR_TIMEOUT"},
        {EMF_ERR_CLOSED, "EMF_ERR_CLOSED"},
        {EMF_ERR_CORRUPT, "EMF_ERR_CORRUPT"},
        {EMF_ERR_IO, "EMF_ERR_IO"},
        {EMF_ERR_NOT_LEADER, "EMF_ERR_NOT_LEADER"},
        {EMF_ERR_UNSUPPORTED, "EMF_ERR_UNSUPPORTED"},
        {EMF_ERR_PANIC, "EMF_ERR_PANIC"},
        {EMF_ERR_BUFFER_TOO_SMALL, "EMF_ERR_BUFFER_TOO_SMALL"},
        {EMF_ERR_TOO_LARGE, "EMF_ERR_TOO_LARGE"},
        {EMF_ERR_NOT_FOUND, "EMF_ERR_NOT_FOUND"},
        {-1, "EMF_ERR_UNKNOWN"},
        {9999, "EMF_ERR_UNKNOWN"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        CHECK(strcmp(emf_status_name(names[i].code), names[i].name) == 0);
    }

    char version[64];
    snprintf(version, sizeof version, "%d.%d.%d", EMF_VERSION_MAJOR, EMF_VERSION_MINOR,
             EMF_VERSION_PATCH);
    CHECK(strcmp(emf_version_string(), version) == 0);
}

#if !defined(__STDC_NO_THREADS__)
/* The last error is per thread; a message handle may be read from several threads at once. */
static emf_message_t *g_shared;

static int reader_thread(void *arg) {
    int *ok = arg;
    *ok = 1;
    for (int i = 0; i < 200; i++) {
        emf_envelope_info_t e;
        emf_buf_t text = {NULL, 0, 0};
        *ok &= emf_message_envelope(g_shared, 2, &e) == EMF_OK && e.kind == EMF_KIND_RESPONSE;
        *ok &= emf_message_to_json(g_shared, &text) == EMF_OK && buf_equal(text, BATCH);
        emf_buf_free(&text);
    }
    /* Fail with a distinctive message on this thread only. */
    emf_encode_options_t bad = {77, 0, 0};
    emf_buf_t out = {NULL, 0, 0};
    *ok &= emf_json_to_archive(u8(PING), strlen(PING), &bad, &out) == EMF_ERR_INVALID_ARGUMENT;
    return 0;
}

static void test_threads(void) {
    emf_buf_t out = {NULL, 0, 0};
    CHECK_ERROR(emf_json_to_archive(NULL, 3, NULL, &out), EMF_ERR_NULL_ARGUMENT, "json");
    g_shared = open_json(BATCH, NULL);
    thrd_t threads[2];
    int ok[2] = {0, 0};
    for (int i = 0; i < 2; i++) CHECK(thrd_create(&threads[i], reader_thread, &ok[i]) == thrd_success);
    for (int i = 0; i < 2; i++) {
        thrd_join(threads[i], NULL);
        CHECK(ok[i]);
    }
    /* The readers' failures did not replace this thread's message. */
    CHECK(strstr(last_error(), "`json`") != NULL && strstr(last_error(), "priority") == NULL);
    CHECK_STATUS(emf_message_free(g_shared), EMF_OK);
}
#endif

int main(void) {
    /* First of all: the library we loaded must speak the ABI this program was compiled for. */
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "refusing to run: liberlmcp_flow has ABI %u, this program needs %u\n",
                (unsigned)emf_abi_version(), (unsigned)EMF_ABI_VERSION);
        return 2;
    }
    CHECK(emf_abi_version() == EMF_ABI_VERSION);

    test_roundtrips();
    test_message_handles();
    test_compression();
    test_value_events();
    test_bad_json();
    test_null_and_length_arguments();
    test_damaged_archives();
    test_buffers();
    test_handle_tokens();
    test_names();
    test_last_error_message();
#if !defined(__STDC_NO_THREADS__)
    test_threads();
#endif

    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}

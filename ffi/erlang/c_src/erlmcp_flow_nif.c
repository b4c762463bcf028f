/*
 * erlmcp_flow_nif.c — the Erlang NIF shim over the erlmcp-flow C ABI (include/erlmcp_flow.h).
 *
 * This file only converts arguments and results; every decision about the data is made by
 * the Rust engine. Its rules:
 *
 *  - Input bytes come from Erlang binaries or iodata (enif_inspect_binary, else
 *    enif_inspect_iolist_as_binary). Any alignment is fine: archives use unaligned primitives.
 *  - Bytes the engine returns (emf_buf_t) are copied into a new binary and freed with
 *    emf_buf_free right away.
 *  - A failing emf_* call becomes {error, {StatusAtom, MessageBinary}}; the message is read
 *    with emf_last_error_message on the same thread, right after the call, before any other
 *    emf_* call can replace it.
 *  - A wrong-typed argument becomes {error, {invalid_argument, MessageBinary}}, never badarg.
 *  - Work that may exceed 1 ms (input above EMF_NIF_DIRTY_THRESHOLD bytes) is rescheduled on a
 *    dirty CPU scheduler, running the same implementation there.
 *  - Engine handles live in resources (emf_nif_handle) whose destructor frees them; a new
 *    handle type needs one emf_nif_handle_kind and one line in open_resource_types().
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <erl_nif.h>

#include "erlmcp_flow.h"

/* Inputs larger than this many bytes run on a dirty CPU scheduler (a regular scheduler
 * should not be held for more than about 1 ms; the engine handles roughly 100 MB/s or more). */
#define EMF_NIF_DIRTY_THRESHOLD ((size_t)64 * 1024)

/* Batches with more envelopes than this are described on a dirty CPU scheduler. */
#define EMF_NIF_DIRTY_ENVELOPES ((size_t)1024)

/* The largest expansion a deflate stream can achieve (about 1032:1). The output of
 * emf_decompress is bounded by min(max_len, input * ratio), which decides dirty scheduling. */
#define EMF_NIF_ZLIB_MAX_RATIO ((size_t)1032)

/* Error messages up to this length are read without a heap allocation. */
#define EMF_NIF_ERROR_STACK_BUF 256

/* load() return value on an ABI mismatch: the mismatch flag, then the library's and the
 * header's ABI versions in 15 bits each, so that the Erlang side can decode them from the
 * "Library load-call unsuccessful (N)." error of erlang:load_nif/2. */
#define EMF_NIF_LOAD_ABI_MISMATCH_FLAG 0x40000000
#define EMF_NIF_LOAD_VERSION_MASK 0x7FFF
/* load() return value for any other failure (atoms or resource types not created). */
#define EMF_NIF_LOAD_FAILED 1

/* ------------------------------------------------------------------------------------------ */
/* Atoms                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static ERL_NIF_TERM atom_ok;
static ERL_NIF_TERM atom_error;
static ERL_NIF_TERM atom_compressed;
static ERL_NIF_TERM atom_raw;
static ERL_NIF_TERM atom_undefined;
static ERL_NIF_TERM atom_null;
static ERL_NIF_TERM atom_none;
static ERL_NIF_TERM atom_other;
static ERL_NIF_TERM atom_unknown;
static ERL_NIF_TERM atom_invalid_argument;

/* Map keys of an envelope description. */
static ERL_NIF_TERM atom_kind;
static ERL_NIF_TERM atom_priority;
static ERL_NIF_TERM atom_id;
static ERL_NIF_TERM atom_method;
static ERL_NIF_TERM atom_created_at_us;
static ERL_NIF_TERM atom_deadline_us;
static ERL_NIF_TERM atom_error_code;

/* Indexed by EMF_KIND_* code. */
static const char *const kind_names[] = {
    [EMF_KIND_REQUEST] = "request",   [EMF_KIND_RESPONSE] = "response",
    [EMF_KIND_NOTIFICATION] = "notification", [EMF_KIND_TASK] = "task",
    [EMF_KIND_RESULT] = "result",     [EMF_KIND_ERROR] = "error",
};
#define KIND_COUNT (sizeof kind_names / sizeof kind_names[0])
static ERL_NIF_TERM kind_atoms[KIND_COUNT];

/* Indexed by EMF_PRIORITY_* code. */
static const char *const priority_names[] = {
    [EMF_PRIORITY_CRITICAL] = "critical", [EMF_PRIORITY_HIGH] = "high",
    [EMF_PRIORITY_NORMAL] = "normal",     [EMF_PRIORITY_LOW] = "low",
};
#define PRIORITY_COUNT (sizeof priority_names / sizeof priority_names[0])
static ERL_NIF_TERM priority_atoms[PRIORITY_COUNT];

/* Indexed by emf_status_t; index 0 (EMF_OK) is unused. */
static const char *const status_names[] = {
    [EMF_ERR_NULL_ARGUMENT] = "null_argument",
    [EMF_ERR_INVALID_ARGUMENT] = "invalid_argument",
    [EMF_ERR_FULL] = "full",
    [EMF_ERR_EMPTY] = "empty",
    [EMF_ERR_TIMEOUT] = "timeout",
    [EMF_ERR_CLOSED] = "closed",
    [EMF_ERR_CORRUPT] = "corrupt",
    [EMF_ERR_IO] = "io",
    [EMF_ERR_NOT_LEADER] = "not_leader",
    [EMF_ERR_UNSUPPORTED] = "unsupported",
    [EMF_ERR_PANIC] = "panic",
    [EMF_ERR_BUFFER_TOO_SMALL] = "buffer_too_small",
    [EMF_ERR_TOO_LARGE] = "too_large",
    [EMF_ERR_NOT_FOUND] = "not_found",
};
#define STATUS_COUNT (sizeof status_names / sizeof status_names[0])
static ERL_NIF_TERM status_atoms[STATUS_COUNT];

static void make_atoms(ErlNifEnv *env) {
    atom_ok = enif_make_atom(env, "ok");
    atom_error = enif_make_atom(env, "error");
    atom_compressed = enif_make_atom(env, "compressed");
    atom_raw = enif_make_atom(env, "raw");
    atom_undefined = enif_make_atom(env, "undefined");
    atom_null = enif_make_atom(env, "null");
    atom_none = enif_make_atom(env, "none");
    atom_other = enif_make_atom(env, "other");
    atom_unknown = enif_make_atom(env, "unknown");
    atom_invalid_argument = enif_make_atom(env, "invalid_argument");
    atom_kind = enif_make_atom(env, "kind");
    atom_priority = enif_make_atom(env, "priority");
    atom_id = enif_make_atom(env, "id");
    atom_method = enif_make_atom(env, "method");
    atom_created_at_us = enif_make_atom(env, "created_at_us");
    atom_deadline_us = enif_make_atom(env, "deadline_us");
    atom_error_code = enif_make_atom(env, "error_code");
    for (size_t i = 0; i < KIND_COUNT; i++) {
        kind_atoms[i] = enif_make_atom(env, kind_names[i]);
    }
    for (size_t i = 0; i < PRIORITY_COUNT; i++) {
        priority_atoms[i] = enif_make_atom(env, priority_names[i]);
    }
    for (size_t i = 1; i < STATUS_COUNT; i++) {
        status_atoms[i] = enif_make_atom(env, status_names[i]);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Results and errors                                                                         */
/* ------------------------------------------------------------------------------------------ */

static ERL_NIF_TERM make_ok(ErlNifEnv *env, ERL_NIF_TERM value) {
    return enif_make_tuple2(env, atom_ok, value);
}

static ERL_NIF_TERM make_binary_from(ErlNifEnv *env, const void *data, size_t len) {
    ERL_NIF_TERM term;
    unsigned char *dst = enif_make_new_binary(env, len, &term);
    if (len > 0) {
        memcpy(dst, data, len);
    }
    return term;
}

/* {error, {Reason, <<Message>>}} */
static ERL_NIF_TERM make_error(ErlNifEnv *env, ERL_NIF_TERM reason, const char *msg, size_t len) {
    return enif_make_tuple2(env, atom_error,
                            enif_make_tuple2(env, reason, make_binary_from(env, msg, len)));
}

/* An argument of the wrong Erlang type: {error, {invalid_argument, <<Message>>}}. */
static ERL_NIF_TERM argument_error(ErlNifEnv *env, const char *msg) {
    return make_error(env, atom_invalid_argument, msg, strlen(msg));
}

/* The result of a failed emf_* call. Must be called on the thread that made the call, before
 * any other emf_* call. */
static ERL_NIF_TERM status_error(ErlNifEnv *env, emf_status_t status) {
    ERL_NIF_TERM reason = (status > 0 && (size_t)status < STATUS_COUNT)
                              ? status_atoms[status]
                              : atom_unknown;
    char stack_buf[EMF_NIF_ERROR_STACK_BUF];
    size_t len = 0;
    emf_status_t st = emf_last_error_message(stack_buf, sizeof stack_buf, &len);
    if (st == EMF_OK) {
        return make_error(env, reason, stack_buf, len);
    }
    if (st == EMF_ERR_BUFFER_TOO_SMALL) {
        char *heap_buf = enif_alloc(len + 1);
        if (heap_buf != NULL) {
            size_t full_len = 0;
            /* This call never changes the stored message, so the length is still right. */
            if (emf_last_error_message(heap_buf, len + 1, &full_len) == EMF_OK) {
                ERL_NIF_TERM result = make_error(env, reason, heap_buf, full_len);
                enif_free(heap_buf);
                return result;
            }
            enif_free(heap_buf);
        }
        /* Out of memory: the cut message in stack_buf is NUL-terminated and still useful. */
        return make_error(env, reason, stack_buf, strlen(stack_buf));
    }
    return make_error(env, reason, "", 0);
}

/* Copies an engine buffer into a new binary and frees the buffer. */
static ERL_NIF_TERM take_buf(ErlNifEnv *env, emf_buf_t *buf) {
    ERL_NIF_TERM bin = make_binary_from(env, buf->data, buf->len);
    (void)emf_buf_free(buf); /* cannot fail for a buffer the engine returned */
    return bin;
}

/* ------------------------------------------------------------------------------------------ */
/* Arguments                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Reads a binary or iodata argument. The bytes stay valid until the NIF returns. */
static bool get_bytes(ErlNifEnv *env, ERL_NIF_TERM term, ErlNifBinary *out) {
    return enif_inspect_binary(env, term, out) || enif_inspect_iolist_as_binary(env, term, out);
}

/* The byte size of a binary or iodata argument, 0 when it is neither (the implementation
 * then reports the error). */
static size_t bytes_size(ErlNifEnv *env, ERL_NIF_TERM term) {
    ErlNifBinary bin;
    return get_bytes(env, term, &bin) ? bin.size : 0;
}

static bool get_size(ErlNifEnv *env, ERL_NIF_TERM term, size_t *out) {
    ErlNifUInt64 v;
    if (!enif_get_uint64(env, term, &v) || v > (ErlNifUInt64)SIZE_MAX) {
        return false;
    }
    *out = (size_t)v;
    return true;
}

static bool get_priority(ERL_NIF_TERM term, uint32_t *out) {
    for (size_t i = 0; i < PRIORITY_COUNT; i++) {
        if (enif_is_identical(term, priority_atoms[i])) {
            *out = (uint32_t)i;
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Dirty scheduling                                                                           */
/* ------------------------------------------------------------------------------------------ */

typedef ERL_NIF_TERM (*nif_impl)(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

/* Runs `impl` here when `cost` is small or we already are on a dirty scheduler, otherwise
 * reschedules it on a dirty CPU scheduler under `name`. */
static ERL_NIF_TERM run_by_cost(ErlNifEnv *env, const char *name, nif_impl impl, size_t cost,
                                size_t limit, int argc, const ERL_NIF_TERM argv[]) {
    if (cost > limit && enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER) {
        return enif_schedule_nif(env, name, ERL_NIF_DIRTY_JOB_CPU_BOUND, impl, argc, argv);
    }
    return impl(env, argc, argv);
}

/* ------------------------------------------------------------------------------------------ */
/* Resources: engine handles owned by Erlang terms                                            */
/* ------------------------------------------------------------------------------------------ */

/* One kind of engine handle. A new handle type adds a release function, a destructor of one
 * line, a kind, and an entry in handle_kinds[]. */
typedef struct emf_nif_handle_kind {
    const char *name;            /* resource type name, unique in this library */
    ErlNifResourceDtor *dtor;    /* frees the engine handle of one resource object */
    ErlNifResourceType *type;    /* set when the library is loaded */
} emf_nif_handle_kind;

/* The resource object: an engine handle plus a cost hint for dirty scheduling. It holds no
 * pointer into this library, so that it survives a code upgrade that replaces the library. */
typedef struct emf_nif_handle {
    void *ptr;   /* the engine handle; never NULL once wrapped */
    size_t cost; /* bytes behind the handle, to decide dirty scheduling of its operations */
} emf_nif_handle;

/* The body of every destructor. It runs once, when no term refers to the resource any more,
 * so no NIF can be using the engine handle at the same time. */
static void handle_destroy(void *obj, void (*release)(void *ptr)) {
    emf_nif_handle *h = obj;
    if (h->ptr != NULL) {
        release(h->ptr);
        h->ptr = NULL;
    }
}

static bool open_handle_kind(ErlNifEnv *env, emf_nif_handle_kind *kind, ErlNifResourceFlags flags) {
    ErlNifResourceFlags tried;
    kind->type = enif_open_resource_type(env, NULL, kind->name, kind->dtor, flags, &tried);
    return kind->type != NULL;
}

/* Wraps an engine handle into a new resource term; the resource now owns the handle. */
static ERL_NIF_TERM handle_wrap(ErlNifEnv *env, const emf_nif_handle_kind *kind, void *ptr,
                                size_t cost) {
    emf_nif_handle *h = enif_alloc_resource(kind->type, sizeof *h);
    h->ptr = ptr;
    h->cost = cost;
    ERL_NIF_TERM term = enif_make_resource(env, h);
    enif_release_resource(h); /* the term holds the only reference now */
    return term;
}

/* Reads a resource term of the given kind; false when the term is not one. */
static bool handle_get(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind,
                       emf_nif_handle **out) {
    void *obj;
    if (!enif_get_resource(env, term, kind->type, &obj)) {
        return false;
    }
    emf_nif_handle *h = obj;
    if (h->ptr == NULL) {
        return false;
    }
    *out = h;
    return true;
}

/* emf_message_t */
static void release_message(void *ptr) {
    (void)emf_message_free(ptr); /* cannot fail: the resource frees its handle exactly once */
}

static void message_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, release_message);
}

static emf_nif_handle_kind message_kind = {"erlmcp_flow_message", message_dtor, NULL};

/* Every handle kind of this library. */
static emf_nif_handle_kind *const handle_kinds[] = {&message_kind};

static bool open_resource_types(ErlNifEnv *env, ErlNifResourceFlags flags) {
    for (size_t i = 0; i < sizeof handle_kinds / sizeof handle_kinds[0]; i++) {
        if (!open_handle_kind(env, handle_kinds[i], flags)) {
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Library information                                                                        */
/* ------------------------------------------------------------------------------------------ */

static ERL_NIF_TERM nif_abi_version(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    (void)argv;
    return enif_make_uint(env, emf_abi_version());
}

static ERL_NIF_TERM nif_version(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    (void)argv;
    const char *v = emf_version_string();
    return make_binary_from(env, v, strlen(v));
}

/* ------------------------------------------------------------------------------------------ */
/* Serializer                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* json_to_archive(Json, Priority, CreatedAtUs, DeadlineUs) */
static ERL_NIF_TERM json_to_archive_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary json;
    emf_encode_options_t opts;
    ErlNifUInt64 created, deadline;
    if (!get_bytes(env, argv[0], &json)) {
        return argument_error(env, "json: expected a binary or iodata");
    }
    if (!get_priority(argv[1], &opts.priority)) {
        return argument_error(env, "priority: expected critical, high, normal or low");
    }
    if (!enif_get_uint64(env, argv[2], &created)) {
        return argument_error(env, "created_at_us: expected a non-negative 64-bit integer");
    }
    if (!enif_get_uint64(env, argv[3], &deadline)) {
        return argument_error(env, "deadline_us: expected a non-negative 64-bit integer");
    }
    opts.created_at_us = created;
    opts.deadline_us = deadline;
    emf_buf_t out = {NULL, 0};
    emf_status_t st = emf_json_to_archive(json.data, json.size, &opts, &out);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, take_buf(env, &out));
}

static ERL_NIF_TERM nif_json_to_archive(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "json_to_archive", json_to_archive_impl, bytes_size(env, argv[0]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* archive_to_json(Archive) */
static ERL_NIF_TERM archive_to_json_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary archive;
    if (!get_bytes(env, argv[0], &archive)) {
        return argument_error(env, "archive: expected a binary");
    }
    emf_buf_t out = {NULL, 0};
    emf_status_t st = emf_archive_to_json(archive.data, archive.size, &out);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, take_buf(env, &out));
}

static ERL_NIF_TERM nif_archive_to_json(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "archive_to_json", archive_to_json_impl, bytes_size(env, argv[0]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* archive_validate(Archive) */
static ERL_NIF_TERM archive_validate_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary archive;
    if (!get_bytes(env, argv[0], &archive)) {
        return argument_error(env, "archive: expected a binary");
    }
    size_t count = 0;
    emf_status_t st = emf_archive_validate(archive.data, archive.size, &count);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, enif_make_uint64(env, (ErlNifUInt64)count));
}

static ERL_NIF_TERM nif_archive_validate(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "archive_validate", archive_validate_impl, bytes_size(env, argv[0]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* message_open(Archive) -> {ok, Message} */
static ERL_NIF_TERM message_open_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary archive;
    if (!get_bytes(env, argv[0], &archive)) {
        return argument_error(env, "archive: expected a binary");
    }
    emf_message_t *msg = NULL;
    emf_status_t st = emf_message_open(archive.data, archive.size, &msg);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, handle_wrap(env, &message_kind, msg, archive.size));
}

static ERL_NIF_TERM nif_message_open(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "message_open", message_open_impl, bytes_size(env, argv[0]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

static const char *const not_a_message = "message: expected a handle from message_open/1";

/* message_count(Message) -> {ok, Count} */
static ERL_NIF_TERM nif_message_count(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    if (!handle_get(env, argv[0], &message_kind, &h)) {
        return argument_error(env, not_a_message);
    }
    size_t count = 0;
    emf_status_t st = emf_message_count(h->ptr, &count);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, enif_make_uint64(env, (ErlNifUInt64)count));
}

/* One envelope as a map; the borrowed strings are copied. */
static ERL_NIF_TERM envelope_map(ErlNifEnv *env, const emf_envelope_info_t *info) {
    ERL_NIF_TERM id;
    switch (info->id_type) {
    case EMF_ID_NONE: id = atom_none; break;
    case EMF_ID_NULL: id = atom_null; break;
    case EMF_ID_INT: id = enif_make_int64(env, info->id_int); break;
    case EMF_ID_STRING: id = make_binary_from(env, info->id_str, info->id_str_len); break;
    default: id = atom_other; break;
    }
    ERL_NIF_TERM keys[] = {atom_kind, atom_priority, atom_id, atom_method,
                           atom_created_at_us, atom_deadline_us, atom_error_code};
    ERL_NIF_TERM values[] = {
        info->kind < KIND_COUNT ? kind_atoms[info->kind] : enif_make_uint(env, info->kind),
        info->priority < PRIORITY_COUNT ? priority_atoms[info->priority]
                                        : enif_make_uint(env, info->priority),
        id,
        info->method != NULL ? make_binary_from(env, info->method, info->method_len)
                             : atom_undefined,
        enif_make_uint64(env, info->created_at_us),
        enif_make_uint64(env, info->deadline_us),
        info->has_error ? enif_make_int64(env, info->error_code) : atom_undefined,
    };
    ERL_NIF_TERM map;
    /* Cannot fail: the keys are distinct. */
    (void)enif_make_map_from_arrays(env, keys, values, sizeof keys / sizeof keys[0], &map);
    return map;
}

/* message_envelopes(Message) -> {ok, [Map]} */
static ERL_NIF_TERM message_envelopes_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    if (!handle_get(env, argv[0], &message_kind, &h)) {
        return argument_error(env, not_a_message);
    }
    size_t count = 0;
    emf_status_t st = emf_message_count(h->ptr, &count);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = count; i > 0; i--) {
        emf_envelope_info_t info;
        st = emf_message_envelope(h->ptr, i - 1, &info);
        if (st != EMF_OK) {
            return status_error(env, st);
        }
        list = enif_make_list_cell(env, envelope_map(env, &info), list);
    }
    return make_ok(env, list);
}

static ERL_NIF_TERM nif_message_envelopes(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    emf_nif_handle *h;
    size_t count = 0;
    if (handle_get(env, argv[0], &message_kind, &h) && emf_message_count(h->ptr, &count) != EMF_OK) {
        count = 0; /* the implementation repeats the call and reports the error */
    }
    return run_by_cost(env, "message_envelopes", message_envelopes_impl, count,
                       EMF_NIF_DIRTY_ENVELOPES, argc, argv);
}

/* message_to_json(Message) -> {ok, Json} */
static ERL_NIF_TERM message_to_json_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    if (!handle_get(env, argv[0], &message_kind, &h)) {
        return argument_error(env, not_a_message);
    }
    emf_buf_t out = {NULL, 0};
    emf_status_t st = emf_message_to_json(h->ptr, &out);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, take_buf(env, &out));
}

/* The cost hint of a message handle argument, 0 when it is not one. */
static size_t handle_cost(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind) {
    emf_nif_handle *h;
    return handle_get(env, term, kind, &h) ? h->cost : 0;
}

static ERL_NIF_TERM nif_message_to_json(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "message_to_json", message_to_json_impl,
                       handle_cost(env, argv[0], &message_kind), EMF_NIF_DIRTY_THRESHOLD, argc,
                       argv);
}

/* message_payload_json(Message, Index) -> {ok, Json} */
static ERL_NIF_TERM message_payload_json_impl(ErlNifEnv *env, int argc,
                                              const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    size_t index;
    if (!handle_get(env, argv[0], &message_kind, &h)) {
        return argument_error(env, not_a_message);
    }
    if (!get_size(env, argv[1], &index)) {
        return argument_error(env, "index: expected a non-negative integer");
    }
    emf_buf_t out = {NULL, 0};
    emf_status_t st = emf_message_payload_json(h->ptr, index, &out);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, take_buf(env, &out));
}

static ERL_NIF_TERM nif_message_payload_json(ErlNifEnv *env, int argc,
                                             const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "message_payload_json", message_payload_json_impl,
                       handle_cost(env, argv[0], &message_kind), EMF_NIF_DIRTY_THRESHOLD, argc,
                       argv);
}

/* ------------------------------------------------------------------------------------------ */
/* Compressor                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* compress_if_needed(Data, Threshold) -> {ok, {compressed | raw, Bin}} */
static ERL_NIF_TERM compress_if_needed_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary data;
    size_t threshold;
    if (!get_bytes(env, argv[0], &data)) {
        return argument_error(env, "data: expected a binary or iodata");
    }
    if (!get_size(env, argv[1], &threshold)) {
        return argument_error(env, "threshold: expected a non-negative integer");
    }
    emf_buf_t out = {NULL, 0};
    bool compressed = false;
    emf_status_t st = emf_compress_if_needed(data.data, data.size, threshold, &out, &compressed);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM tag = compressed ? atom_compressed : atom_raw;
    return make_ok(env, enif_make_tuple2(env, tag, take_buf(env, &out)));
}

static ERL_NIF_TERM nif_compress_if_needed(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "compress_if_needed", compress_if_needed_impl,
                       bytes_size(env, argv[0]), EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* decompress(Data, MaxLen) -> {ok, Bin} */
static ERL_NIF_TERM decompress_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary data;
    size_t max_len;
    if (!get_bytes(env, argv[0], &data)) {
        return argument_error(env, "data: expected a binary or iodata");
    }
    if (!get_size(env, argv[1], &max_len)) {
        return argument_error(env, "max_size: expected a non-negative integer");
    }
    emf_buf_t out = {NULL, 0};
    emf_status_t st = emf_decompress(data.data, data.size, max_len, &out);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, take_buf(env, &out));
}

static ERL_NIF_TERM nif_decompress(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    /* The work follows the output, which is at most min(max_len, input * max ratio). */
    size_t in = bytes_size(env, argv[0]);
    size_t max_len = 0;
    (void)get_size(env, argv[1], &max_len);
    size_t worst = in > SIZE_MAX / EMF_NIF_ZLIB_MAX_RATIO ? SIZE_MAX : in * EMF_NIF_ZLIB_MAX_RATIO;
    size_t cost = in + (worst < max_len ? worst : max_len);
    return run_by_cost(env, "decompress", decompress_impl, cost, EMF_NIF_DIRTY_THRESHOLD, argc,
                       argv);
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static int init_library(ErlNifEnv *env, ErlNifResourceFlags flags) {
    uint32_t lib = emf_abi_version();
    if (lib != EMF_ABI_VERSION) {
        return EMF_NIF_LOAD_ABI_MISMATCH_FLAG
               | (int)((lib > EMF_NIF_LOAD_VERSION_MASK ? EMF_NIF_LOAD_VERSION_MASK : lib) << 15)
               | (int)(EMF_ABI_VERSION & EMF_NIF_LOAD_VERSION_MASK);
    }
    make_atoms(env);
    return open_resource_types(env, flags) ? 0 : EMF_NIF_LOAD_FAILED;
}

static int on_load(ErlNifEnv *env, void **priv_data, ERL_NIF_TERM load_info) {
    (void)priv_data;
    (void)load_info;
    return init_library(env, ERL_NIF_RT_CREATE);
}

/* A code upgrade of erlmcp_flow_nif: take the resource types over so that handles created by
 * the old code stay usable and are freed by the new destructor. */
static int on_upgrade(ErlNifEnv *env, void **priv_data, void **old_priv_data,
                      ERL_NIF_TERM load_info) {
    (void)priv_data;
    (void)old_priv_data;
    (void)load_info;
    return init_library(env, ERL_NIF_RT_CREATE | ERL_NIF_RT_TAKEOVER);
}

static ErlNifFunc nif_funcs[] = {
    {"abi_version", 0, nif_abi_version, 0},
    {"version", 0, nif_version, 0},
    {"json_to_archive", 4, nif_json_to_archive, 0},
    {"archive_to_json", 1, nif_archive_to_json, 0},
    {"archive_validate", 1, nif_archive_validate, 0},
    {"message_open", 1, nif_message_open, 0},
    {"message_count", 1, nif_message_count, 0},
    {"message_envelopes", 1, nif_message_envelopes, 0},
    {"message_to_json", 1, nif_message_to_json, 0},
    {"message_payload_json", 2, nif_message_payload_json, 0},
    {"compress_if_needed", 2, nif_compress_if_needed, 0},
    {"decompress", 2, nif_decompress, 0},
};

ERL_NIF_INIT(erlmcp_flow_nif, nif_funcs, on_load, NULL, on_upgrade, NULL)

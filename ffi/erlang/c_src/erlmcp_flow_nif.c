/*
 * erlmcp_flow_nif.c — the Erlang NIF shim over the erlmcp-flow C ABI (include/erlmcp_flow.h).
 *
 * This file only converts arguments and results; every decision about the data is made by
 * the Rust engine, names of kinds, priorities and statuses included. Its rules:
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
 *    dirty CPU scheduler, running the same implementation there. The decision never walks or
 *    flattens an argument: iodata other than a binary always goes dirty and is flattened there.
 *  - Engine handles live in resources (emf_nif_handle) whose destructor frees them. The engine
 *    is linked statically, so every loaded copy of this library has its own engine and its own
 *    handle registry: each load opens resource types of its own (see "Resources" below), and a
 *    handle only ever meets the engine that made it. A new handle type needs one
 *    emf_nif_handle_kind and one entry in handle_kinds[].
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <erl_nif.h>

#include "erlmcp_flow.h"

/* Inputs larger than this many bytes run on a dirty CPU scheduler (a regular scheduler
 * should not be held for more than about 1 ms; the engine handles roughly 100 MB/s or more). */
#define EMF_NIF_DIRTY_THRESHOLD ((size_t)64 * 1024)

/* zlib compression is much slower than the other operations (about 45 MB/s at the default
 * level on the CI machine: docs/BENCHMARKS.md), so it goes dirty from 32 KiB (~0.7 ms). */
#define EMF_NIF_COMPRESS_DIRTY_THRESHOLD ((size_t)32 * 1024)

/* Batches with more envelopes than this are described on a dirty CPU scheduler: each envelope
 * counts as EMF_NIF_DIRTY_THRESHOLD / EMF_NIF_DIRTY_ENVELOPES bytes of work. */
#define EMF_NIF_DIRTY_ENVELOPES ((size_t)1024)
#define EMF_NIF_ENVELOPE_COST (EMF_NIF_DIRTY_THRESHOLD / EMF_NIF_DIRTY_ENVELOPES)

/* The largest expansion a deflate stream can achieve (about 1032:1). The output of
 * emf_decompress is bounded by min(max_len, input * ratio), which decides dirty scheduling. */
#define EMF_NIF_ZLIB_MAX_RATIO ((size_t)1032)

/* Error messages up to this length are read without a heap allocation. */
#define EMF_NIF_ERROR_STACK_BUF 256

/* Codes probed at load for kind, priority and status names; a code at or above these limits
 * is reported as an integer (kind, priority) or as `unknown' (status). */
#define EMF_NIF_MAX_KINDS 32
#define EMF_NIF_MAX_PRIORITIES 32
#define EMF_NIF_MAX_STATUSES 64

/* load() return value on an ABI mismatch: the mismatch flag, then the library's and the
 * header's ABI versions in 15 bits each, so that the Erlang side can decode them from the
 * "Library load-call unsuccessful (N)." error of erlang:load_nif/2. */
#define EMF_NIF_LOAD_ABI_MISMATCH_FLAG 0x40000000
#define EMF_NIF_LOAD_VERSION_MASK 0x7FFF
/* load() return value for any other failure (atoms or resource types not created). */
#define EMF_NIF_LOAD_FAILED 1

static size_t size_min(size_t a, size_t b) { return a < b ? a : b; }
static size_t size_max(size_t a, size_t b) { return a > b ? a : b; }
static size_t sat_add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }
static size_t sat_mul(size_t a, size_t b) { return b != 0 && a > SIZE_MAX / b ? SIZE_MAX : a * b; }

/* ------------------------------------------------------------------------------------------ */
/* Atoms                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Atoms are global in the VM, so the values are the same for every load of this library. They
 * are written once per copy of the library, by the first load; a later load (a code upgrade
 * into the same file) leaves them alone, so that NIFs of the old module instance never read
 * them while they are written. load and upgrade never run concurrently (ERTS holds the code
 * modification permission). */
static bool atoms_made;

static ERL_NIF_TERM atom_ok;
static ERL_NIF_TERM atom_error;
static ERL_NIF_TERM atom_compressed;
static ERL_NIF_TERM atom_raw;
static ERL_NIF_TERM atom_undefined;
static ERL_NIF_TERM atom_null;
static ERL_NIF_TERM atom_none;
static ERL_NIF_TERM atom_json;
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

/* Indexed by EMF_KIND_* code, named by emf_kind_name(); kind_count codes are known. */
static ERL_NIF_TERM kind_atoms[EMF_NIF_MAX_KINDS];
static size_t kind_count;

/* Indexed by EMF_PRIORITY_* code, named by emf_priority_name(); priority_count are known. */
static ERL_NIF_TERM priority_atoms[EMF_NIF_MAX_PRIORITIES];
static size_t priority_count;

/* Indexed by emf_status_t: emf_status_name() in lower case without the "EMF_ERR_" prefix
 * ("EMF_ERR_TOO_LARGE" -> too_large); `unknown' for EMF_OK and codes the engine does not
 * name. */
static ERL_NIF_TERM status_atoms[EMF_NIF_MAX_STATUSES];

/* Fills `atoms' with the names of codes 0, 1, ... until `name_of' answers "unknown" (or the
 * table is full); returns the number of codes named. */
static size_t make_code_atoms(ErlNifEnv *env, const char *(*name_of)(uint32_t),
                              ERL_NIF_TERM *atoms, size_t cap) {
    size_t n = 0;
    for (; n < cap; n++) {
        const char *name = name_of((uint32_t)n);
        if (name == NULL || strcmp(name, "unknown") == 0) {
            break;
        }
        atoms[n] = enif_make_atom(env, name);
    }
    return n;
}

static void make_status_atoms(ErlNifEnv *env) {
    static const char prefix[] = "EMF_ERR_";
    const size_t prefix_len = sizeof prefix - 1;
    for (size_t code = 0; code < EMF_NIF_MAX_STATUSES; code++) {
        const char *name = emf_status_name((emf_status_t)code);
        size_t len = name != NULL ? strlen(name) : 0;
        char lower[64];
        status_atoms[code] = atom_unknown;
        if (len <= prefix_len || len - prefix_len >= sizeof lower
            || strncmp(name, prefix, prefix_len) != 0 || strcmp(name, "EMF_ERR_UNKNOWN") == 0) {
            continue; /* EMF_OK, EMF_ERR_UNKNOWN (an undefined code), or not a status name */
        }
        len -= prefix_len;
        for (size_t i = 0; i < len; i++) {
            char c = name[prefix_len + i];
            lower[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        status_atoms[code] = enif_make_atom_len(env, lower, len);
    }
}

static void make_atoms(ErlNifEnv *env) {
    if (atoms_made) {
        return;
    }
    atom_ok = enif_make_atom(env, "ok");
    atom_error = enif_make_atom(env, "error");
    atom_compressed = enif_make_atom(env, "compressed");
    atom_raw = enif_make_atom(env, "raw");
    atom_undefined = enif_make_atom(env, "undefined");
    atom_null = enif_make_atom(env, "null");
    atom_none = enif_make_atom(env, "none");
    atom_json = enif_make_atom(env, "json");
    atom_unknown = enif_make_atom(env, "unknown");
    atom_invalid_argument = enif_make_atom(env, "invalid_argument");
    atom_kind = enif_make_atom(env, "kind");
    atom_priority = enif_make_atom(env, "priority");
    atom_id = enif_make_atom(env, "id");
    atom_method = enif_make_atom(env, "method");
    atom_created_at_us = enif_make_atom(env, "created_at_us");
    atom_deadline_us = enif_make_atom(env, "deadline_us");
    atom_error_code = enif_make_atom(env, "error_code");
    kind_count = make_code_atoms(env, emf_kind_name, kind_atoms, EMF_NIF_MAX_KINDS);
    priority_count = make_code_atoms(env, emf_priority_name, priority_atoms,
                                     EMF_NIF_MAX_PRIORITIES);
    make_status_atoms(env);
    atoms_made = true;
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
    ERL_NIF_TERM reason = (status > 0 && status < EMF_NIF_MAX_STATUSES) ? status_atoms[status]
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

/* Reports a failure that the design of this file rules out and that cannot be returned to
 * Erlang (a destructor, a release after the result is built): it is a bug in this shim or the
 * engine, so it is written to the emulator's stderr instead of being dropped. */
static void report_impossible(const char *what, emf_status_t st) {
    const char *name = emf_status_name(st);
    enif_fprintf(stderr, "erlmcp_flow_nif: BUG: %s failed with %s (%d)\r\n", what,
                 name != NULL ? name : "?", (int)st);
}

/* Copies an engine buffer into a new binary and frees the buffer. */
static ERL_NIF_TERM take_buf(ErlNifEnv *env, emf_buf_t *buf) {
    ERL_NIF_TERM bin = make_binary_from(env, buf->data, buf->len);
    /* Cannot fail: the engine returned this buffer (token untouched) and it is freed once. */
    emf_status_t st = emf_buf_free(buf);
    if (st != EMF_OK) {
        report_impossible("emf_buf_free", st);
    }
    return bin;
}

/* ------------------------------------------------------------------------------------------ */
/* Arguments                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Reads a binary or iodata argument. The bytes stay valid until the NIF returns. Iodata that
 * is not a binary is flattened here, so the caller must be on a dirty scheduler for it (see
 * bytes_cost). */
static bool get_bytes(ErlNifEnv *env, ERL_NIF_TERM term, ErlNifBinary *out) {
    return enif_inspect_binary(env, term, out) || enif_inspect_iolist_as_binary(env, term, out);
}

/* The cost of a byte argument for the dirty decision, found without flattening anything on
 * the normal scheduler: a binary costs its size; a list (iodata to flatten, of unknown size)
 * costs SIZE_MAX, so it is always flattened on a dirty scheduler; any other term costs 0, as
 * the implementation refuses it at once. */
static size_t bytes_cost(ErlNifEnv *env, ERL_NIF_TERM term) {
    ErlNifBinary bin;
    if (enif_inspect_binary(env, term, &bin)) {
        return bin.size;
    }
    return enif_is_list(env, term) ? SIZE_MAX : 0;
}

static bool get_size(ErlNifEnv *env, ERL_NIF_TERM term, size_t *out) {
    ErlNifUInt64 v;
    if (!enif_get_uint64(env, term, &v) || v > (ErlNifUInt64)SIZE_MAX) {
        return false;
    }
    *out = (size_t)v;
    return true;
}

/* A size limit: any non-negative 64-bit integer; above SIZE_MAX it limits nothing, so it is
 * clamped to SIZE_MAX (only matters where size_t is narrower than 64 bits). */
static bool get_limit(ErlNifEnv *env, ERL_NIF_TERM term, size_t *out) {
    ErlNifUInt64 v;
    if (!enif_get_uint64(env, term, &v)) {
        return false;
    }
    *out = v > (ErlNifUInt64)SIZE_MAX ? SIZE_MAX : (size_t)v;
    return true;
}

static bool get_priority(ERL_NIF_TERM term, uint32_t *out) {
    for (size_t i = 0; i < priority_count; i++) {
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

/*
 * Code upgrades. The engine is linked statically, and its handle registry lives in this
 * library's copy of it. A code upgrade that loads the NIF from another file (a new release's
 * priv/ directory) therefore gets a second copy of the engine with an empty registry, which
 * knows none of the old handles. So:
 *
 *  - Every load (load or upgrade) opens resource types of its own, named
 *    "<kind>_<unique integer>", and never takes a type over. ERTS calls a type's destructor in
 *    the library that opened it, and keeps that library loaded (purged module or not) until
 *    the last object of its types is gone: an old handle is always freed by the engine that
 *    made it.
 *  - The types of a load are kept in its priv_data (emf_nif_priv), which ERTS hands to the
 *    NIFs of the module instance that loaded it. NIFs of the new module refuse old handles
 *    ({error, {invalid_argument, <<"message: not a handle of this library version ...">>}});
 *    NIFs of the old module, while it runs, keep using its own handles. An upgrade into the
 *    same file (same copy of the library) behaves alike, for simplicity.
 *  - priv_data is freed by unload(), which ERTS calls when it closes the library, after the
 *    last resource of its types is gone.
 */

/* One kind of engine handle. A new handle type adds a release function, a destructor of one
 * line, a kind, and an entry in handle_kinds[]. */
typedef struct emf_nif_handle_kind {
    const char *name;         /* resource type name prefix, unique in this library */
    ErlNifResourceDtor *dtor; /* frees the engine handle of one resource object */
    size_t index;             /* index of its resource type in emf_nif_priv.types */
} emf_nif_handle_kind;

#define EMF_NIF_KIND_MESSAGE 0
#define EMF_NIF_KIND_COUNT 1

/* The state of one load of this library (its priv_data). */
typedef struct emf_nif_priv {
    ErlNifResourceType *types[EMF_NIF_KIND_COUNT]; /* opened by this load, never taken over */
} emf_nif_priv;

/* The resource object: an engine handle plus a cost hint for dirty scheduling. */
typedef struct emf_nif_handle {
    void *ptr;   /* the engine handle; never NULL once wrapped */
    size_t cost; /* bytes behind the handle, to decide dirty scheduling of its operations */
} emf_nif_handle;

/* The body of every destructor. It runs once, when no term refers to the resource any more,
 * so no NIF can be using the engine handle at the same time. Releasing cannot fail:
 *  - only handle_wrap creates objects of these types, storing a handle that this copy of the
 *    engine has just returned, and nothing else writes `ptr';
 *  - the types are opened by this library alone and never taken over (see above), so this
 *    destructor only sees objects created by this copy of the library, and the handle is in
 *    this engine's registry;
 *  - ERTS runs the destructor exactly once per object.
 * A failure would be a bug; it cannot be returned to Erlang, so it is reported on stderr. */
static void handle_destroy(void *obj, emf_status_t (*release)(void *ptr), const char *what) {
    emf_nif_handle *h = obj;
    if (h->ptr != NULL) {
        emf_status_t st = release(h->ptr);
        if (st != EMF_OK) {
            report_impossible(what, st);
        }
        h->ptr = NULL;
    }
}

/* emf_message_t */
static emf_status_t release_message(void *ptr) {
    return emf_message_free(ptr);
}

static void message_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, release_message, "emf_message_free in the resource destructor");
}

static const emf_nif_handle_kind message_kind = {"erlmcp_flow_message", message_dtor,
                                                 EMF_NIF_KIND_MESSAGE};

/* Every handle kind of this library. */
static const emf_nif_handle_kind *const handle_kinds[EMF_NIF_KIND_COUNT] = {&message_kind};

/* Opens this load's resource types under names no other load uses: the prefix and an
 * integer unique in the running VM. */
static bool open_resource_types(ErlNifEnv *env, emf_nif_priv *priv) {
    ErlNifUInt64 unique;
    if (!enif_get_uint64(env, enif_make_unique_integer(env, ERL_NIF_UNIQUE_POSITIVE), &unique)) {
        return false;
    }
    for (size_t i = 0; i < EMF_NIF_KIND_COUNT; i++) {
        const emf_nif_handle_kind *kind = handle_kinds[i];
        char name[128];
        int n = snprintf(name, sizeof name, "%s_%llu", kind->name, (unsigned long long)unique);
        if (n < 0 || (size_t)n >= sizeof name) {
            return false;
        }
        ErlNifResourceFlags tried;
        priv->types[kind->index] =
            enif_open_resource_type(env, NULL, name, kind->dtor, ERL_NIF_RT_CREATE, &tried);
        if (priv->types[kind->index] == NULL) {
            return false;
        }
    }
    return true;
}

static ErlNifResourceType *handle_type(ErlNifEnv *env, const emf_nif_handle_kind *kind) {
    const emf_nif_priv *priv = enif_priv_data(env);
    return priv->types[kind->index];
}

/* Wraps an engine handle into a new resource term; the resource now owns the handle. */
static ERL_NIF_TERM handle_wrap(ErlNifEnv *env, const emf_nif_handle_kind *kind, void *ptr,
                                size_t cost) {
    emf_nif_handle *h = enif_alloc_resource(handle_type(env, kind), sizeof *h);
    h->ptr = ptr;
    h->cost = cost;
    ERL_NIF_TERM term = enif_make_resource(env, h);
    enif_release_resource(h); /* the term holds the only reference now */
    return term;
}

/* Reads a resource term of the given kind made by this load of the library; false when the
 * term is not one. */
static bool handle_get(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind,
                       emf_nif_handle **out) {
    void *obj;
    if (!enif_get_resource(env, term, handle_type(env, kind), &obj)) {
        return false;
    }
    emf_nif_handle *h = obj;
    if (h->ptr == NULL) {
        return false;
    }
    *out = h;
    return true;
}

/* The error for an argument that handle_get refused. A handle is a reference; one that this
 * load did not make is most likely a handle from before a code upgrade. */
static ERL_NIF_TERM not_a_handle(ErlNifEnv *env, ERL_NIF_TERM term, const char *expected,
                                 const char *not_this_version) {
    return argument_error(env, enif_is_ref(env, term) ? not_this_version : expected);
}

/* The cost hint of a handle argument, 0 when it is not one. */
static size_t handle_cost(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind) {
    emf_nif_handle *h;
    return handle_get(env, term, kind, &h) ? h->cost : 0;
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
    emf_buf_t out = {0};
    emf_status_t st = emf_json_to_archive(json.data, json.size, &opts, &out);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, take_buf(env, &out));
}

static ERL_NIF_TERM nif_json_to_archive(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "json_to_archive", json_to_archive_impl, bytes_cost(env, argv[0]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* archive_to_json(Archive) */
static ERL_NIF_TERM archive_to_json_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary archive;
    if (!get_bytes(env, argv[0], &archive)) {
        return argument_error(env, "archive: expected a binary");
    }
    emf_buf_t out = {0};
    emf_status_t st = emf_archive_to_json(archive.data, archive.size, &out);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, take_buf(env, &out));
}

static ERL_NIF_TERM nif_archive_to_json(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "archive_to_json", archive_to_json_impl, bytes_cost(env, argv[0]),
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
    return run_by_cost(env, "archive_validate", archive_validate_impl, bytes_cost(env, argv[0]),
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
    return run_by_cost(env, "message_open", message_open_impl, bytes_cost(env, argv[0]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* Reads the message handle argument `term' into `*h', or returns false and sets `*error'. */
static bool get_message(ErlNifEnv *env, ERL_NIF_TERM term, emf_nif_handle **h,
                        ERL_NIF_TERM *error) {
    if (handle_get(env, term, &message_kind, h)) {
        return true;
    }
    *error = not_a_handle(env, term, "message: expected a handle from message_open/1",
                          "message: not a handle of this library version: expected a handle "
                          "from message_open/1 of the NIF library loaded now (handles made "
                          "before a code upgrade of erlmcp_flow_nif are refused; open the "
                          "archive again)");
    return false;
}

/* message_count(Message) -> {ok, Count} */
static ERL_NIF_TERM nif_message_count(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!get_message(env, argv[0], &h, &error)) {
        return error;
    }
    size_t count = 0;
    emf_status_t st = emf_message_count(h->ptr, &count);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, enif_make_uint64(env, (ErlNifUInt64)count));
}

static ERL_NIF_TERM code_atom(ErlNifEnv *env, const ERL_NIF_TERM *atoms, size_t count,
                              uint32_t code) {
    return code < count ? atoms[code] : enif_make_uint(env, code);
}

/* Envelope `index' of `msg' as a map; the borrowed strings are copied. An id that is not
 * none, null, a 64-bit integer or a string (EMF_ID_OTHER_NUMBER: a float or a larger
 * integer) becomes {json, Text} with its exact JSON text. */
static emf_status_t envelope_map(ErlNifEnv *env, const emf_message_t *msg, size_t index,
                                 const emf_envelope_info_t *info, ERL_NIF_TERM *out) {
    ERL_NIF_TERM id;
    switch (info->id_type) {
    case EMF_ID_NONE: id = atom_none; break;
    case EMF_ID_NULL: id = atom_null; break;
    case EMF_ID_INT: id = enif_make_int64(env, info->id_int); break;
    case EMF_ID_STRING: id = make_binary_from(env, info->id_str, info->id_str_len); break;
    default: {
        emf_buf_t text = {0};
        emf_status_t st = emf_message_id_json(msg, index, &text);
        if (st != EMF_OK) {
            return st;
        }
        id = enif_make_tuple2(env, atom_json, take_buf(env, &text));
        break;
    }
    }
    ERL_NIF_TERM keys[] = {atom_kind, atom_priority, atom_id, atom_method,
                           atom_created_at_us, atom_deadline_us, atom_error_code};
    ERL_NIF_TERM values[] = {
        code_atom(env, kind_atoms, kind_count, info->kind),
        code_atom(env, priority_atoms, priority_count, info->priority),
        id,
        info->method != NULL ? make_binary_from(env, info->method, info->method_len)
                             : atom_undefined,
        enif_make_uint64(env, info->created_at_us),
        enif_make_uint64(env, info->deadline_us),
        info->has_error ? enif_make_int64(env, info->error_code) : atom_undefined,
    };
    /* Cannot fail: the keys are distinct. */
    (void)enif_make_map_from_arrays(env, keys, values, sizeof keys / sizeof keys[0], out);
    return EMF_OK;
}

/* message_envelopes(Message) -> {ok, [Map]} */
static ERL_NIF_TERM message_envelopes_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!get_message(env, argv[0], &h, &error)) {
        return error;
    }
    size_t count = 0;
    emf_status_t st = emf_message_count(h->ptr, &count);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = count; i > 0; i--) {
        emf_envelope_info_t info;
        ERL_NIF_TERM map;
        st = emf_message_envelope(h->ptr, i - 1, &info);
        if (st == EMF_OK) {
            st = envelope_map(env, h->ptr, i - 1, &info, &map);
        }
        if (st != EMF_OK) {
            return status_error(env, st);
        }
        list = enif_make_list_cell(env, map, list);
    }
    return make_ok(env, list);
}

static ERL_NIF_TERM nif_message_envelopes(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    /* The work is per envelope (a map each) and per byte (method and id strings are copied):
     * the larger of the two costs decides. */
    emf_nif_handle *h;
    size_t cost = 0;
    if (handle_get(env, argv[0], &message_kind, &h)) {
        size_t count = 0;
        if (emf_message_count(h->ptr, &count) != EMF_OK) {
            count = 0; /* the implementation repeats the call and reports the error */
        }
        cost = size_max(sat_mul(count, EMF_NIF_ENVELOPE_COST), h->cost);
    }
    return run_by_cost(env, "message_envelopes", message_envelopes_impl, cost,
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* message_to_json(Message) -> {ok, Json} */
static ERL_NIF_TERM message_to_json_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!get_message(env, argv[0], &h, &error)) {
        return error;
    }
    emf_buf_t out = {0};
    emf_status_t st = emf_message_to_json(h->ptr, &out);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, take_buf(env, &out));
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
    ERL_NIF_TERM error;
    size_t index;
    if (!get_message(env, argv[0], &h, &error)) {
        return error;
    }
    if (!get_size(env, argv[1], &index)) {
        return argument_error(env, "index: expected a non-negative integer");
    }
    emf_buf_t out = {0};
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
    if (!get_limit(env, argv[1], &threshold)) {
        return argument_error(env, "threshold: expected a non-negative 64-bit integer");
    }
    emf_buf_t out = {0};
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
                       bytes_cost(env, argv[0]), EMF_NIF_COMPRESS_DIRTY_THRESHOLD, argc, argv);
}

/* decompress(Data, MaxLen) -> {ok, Bin} */
static ERL_NIF_TERM decompress_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary data;
    size_t max_len;
    if (!get_bytes(env, argv[0], &data)) {
        return argument_error(env, "data: expected a binary or iodata");
    }
    if (!get_limit(env, argv[1], &max_len)) {
        return argument_error(env, "max_size: expected a non-negative 64-bit integer");
    }
    emf_buf_t out = {0};
    emf_status_t st = emf_decompress(data.data, data.size, max_len, &out);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return make_ok(env, take_buf(env, &out));
}

static ERL_NIF_TERM nif_decompress(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    /* The work follows the input and the output, which is at most min(max_len, input * max
     * ratio). Saturating: the input cost of iodata is SIZE_MAX, and max_len may be too. */
    size_t in = bytes_cost(env, argv[0]);
    size_t max_len = 0;
    if (!get_limit(env, argv[1], &max_len)) {
        max_len = 0; /* the implementation reports the error */
    }
    size_t out = size_min(sat_mul(in, EMF_NIF_ZLIB_MAX_RATIO), max_len);
    return run_by_cost(env, "decompress", decompress_impl, sat_add(in, out),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* load and upgrade alike: a fresh emf_nif_priv with resource types of this load only. */
static int init_library(ErlNifEnv *env, void **priv_data) {
    uint32_t lib = emf_abi_version();
    if (lib != EMF_ABI_VERSION) {
        return EMF_NIF_LOAD_ABI_MISMATCH_FLAG
               | (int)((lib > EMF_NIF_LOAD_VERSION_MASK ? EMF_NIF_LOAD_VERSION_MASK : lib) << 15)
               | (int)(EMF_ABI_VERSION & EMF_NIF_LOAD_VERSION_MASK);
    }
    make_atoms(env);
    if (kind_count == 0 || priority_count == 0) {
        return EMF_NIF_LOAD_FAILED;
    }
    emf_nif_priv *priv = enif_alloc(sizeof *priv);
    if (priv == NULL) {
        return EMF_NIF_LOAD_FAILED;
    }
    memset(priv, 0, sizeof *priv);
    if (!open_resource_types(env, priv)) {
        enif_free(priv); /* ERTS rolls back the types opened by a failed load */
        return EMF_NIF_LOAD_FAILED;
    }
    *priv_data = priv;
    return 0;
}

static int on_load(ErlNifEnv *env, void **priv_data, ERL_NIF_TERM load_info) {
    (void)load_info;
    return init_library(env, priv_data);
}

/* A code upgrade of erlmcp_flow_nif. The old module keeps its own priv_data and resource
 * types (see "Code upgrades" above); nothing is taken over. */
static int on_upgrade(ErlNifEnv *env, void **priv_data, void **old_priv_data,
                      ERL_NIF_TERM load_info) {
    (void)old_priv_data;
    (void)load_info;
    return init_library(env, priv_data);
}

/* Called when ERTS closes the library of one load: its module instance is purged and no
 * object of its resource types is left. */
static void on_unload(ErlNifEnv *env, void *priv_data) {
    (void)env;
    enif_free(priv_data);
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

ERL_NIF_INIT(erlmcp_flow_nif, nif_funcs, on_load, NULL, on_upgrade, on_unload)

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
 *  - Ring handles (rings, producers, consumers) can also be closed early (close/1); a use
 *    guard in the resource keeps the engine handle alive until the last call using it returns.
 *  - Frames are delivered to Erlang processes by threads of this library (see "Delivery"),
 *    never by a NIF call that waits on a normal scheduler.
 *  - Routers and batch processors are one-thread-at-a-time engine objects, each owned by one
 *    gen_server on the Erlang side (see "Router", "Batch processors"); shared-state values of
 *    64 KiB and more become binaries over the engine's mapping, mapped once per load (see
 *    "Shared state").
 *  - Task queues and caches are thread-safe engine objects, used by any process at once (see
 *    "Task queues and caches"); tasks of 64 KiB and more come out as binaries over the
 *    engine's own buffer.
 *  - Vectors cross as binaries of native-endian float32 (int8 codes, half floats), converted
 *    from lists by the Erlang modules; HNSW indexes are thread-safe engine objects whose calls
 *    never wait on a normal scheduler (see "Vectors and HNSW indexes").
 */

#include <float.h>
#include <math.h>
#include <stdatomic.h>
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

/* Rings: option and statistics keys, values, and the messages of deliveries. */
static ERL_NIF_TERM atom_true;
static ERL_NIF_TERM atom_false;
static ERL_NIF_TERM atom_infinity;
static ERL_NIF_TERM atom_capacity;
static ERL_NIF_TERM atom_multi_producer;
static ERL_NIF_TERM atom_max_producers;
static ERL_NIF_TERM atom_max_subscribers;
static ERL_NIF_TERM atom_stall_timeout_ms;
static ERL_NIF_TERM atom_mode;
static ERL_NIF_TERM atom_dir;
static ERL_NIF_TERM atom_checksum;
static ERL_NIF_TERM atom_auto;
static ERL_NIF_TERM atom_manual;
static ERL_NIF_TERM atom_tail;
static ERL_NIF_TERM atom_sent;
static ERL_NIF_TERM atom_bytes;
static ERL_NIF_TERM atom_received;
static ERL_NIF_TERM atom_backpressure;
static ERL_NIF_TERM atom_unblocked;
static ERL_NIF_TERM atom_dead_reaped;
static ERL_NIF_TERM atom_max_lag;
static ERL_NIF_TERM atom_corrupt_frames;
static ERL_NIF_TERM atom_producers;
static ERL_NIF_TERM atom_subscribers;
static ERL_NIF_TERM atom_max_payload;
static ERL_NIF_TERM atom_erlmcp_flow_frames;
static ERL_NIF_TERM atom_erlmcp_flow_error;

/* Task queues and caches: answers, options and statistics keys. */
static ERL_NIF_TERM atom_rejected;
static ERL_NIF_TERM atom_evicted;
static ERL_NIF_TERM atom_empty;
static ERL_NIF_TERM atom_miss;
static ERL_NIF_TERM atom_not_found;
static ERL_NIF_TERM atom_low_priority;
static ERL_NIF_TERM atom_depth;
static ERL_NIF_TERM atom_primary_depth;
static ERL_NIF_TERM atom_overflow_depth;
static ERL_NIF_TERM atom_depth_p99;
static ERL_NIF_TERM atom_max_depth;
static ERL_NIF_TERM atom_enqueued;
static ERL_NIF_TERM atom_dequeued;
static ERL_NIF_TERM atom_spills;
static ERL_NIF_TERM atom_rejections;
static ERL_NIF_TERM atom_evictions;
static ERL_NIF_TERM atom_len;
static ERL_NIF_TERM atom_hits;
static ERL_NIF_TERM atom_misses;
static ERL_NIF_TERM atom_expirations;

/* Vectors and HNSW indexes: metrics, originals, parameter and statistics keys. */
static ERL_NIF_TERM atom_cosine;
static ERL_NIF_TERM atom_dot;
static ERL_NIF_TERM atom_l2sq;
static ERL_NIF_TERM atom_f16;
static ERL_NIF_TERM atom_f32;
static ERL_NIF_TERM atom_default;
static ERL_NIF_TERM atom_neg_infinity;
static ERL_NIF_TERM atom_nan;
static ERL_NIF_TERM atom_dim;
static ERL_NIF_TERM atom_metric;
static ERL_NIF_TERM atom_m;
static ERL_NIF_TERM atom_ef_construction;
static ERL_NIF_TERM atom_ef_search;
static ERL_NIF_TERM atom_originals;
static ERL_NIF_TERM atom_seed;
static ERL_NIF_TERM atom_mapped;
static ERL_NIF_TERM atom_memory_bytes;

/* Batch processors: why a flush happened, indexed by EMF_FLUSH_* code. */
#define EMF_NIF_FLUSH_CODES 5
static ERL_NIF_TERM flush_atoms[EMF_NIF_FLUSH_CODES];

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
    atom_true = enif_make_atom(env, "true");
    atom_false = enif_make_atom(env, "false");
    atom_infinity = enif_make_atom(env, "infinity");
    atom_capacity = enif_make_atom(env, "capacity");
    atom_multi_producer = enif_make_atom(env, "multi_producer");
    atom_max_producers = enif_make_atom(env, "max_producers");
    atom_max_subscribers = enif_make_atom(env, "max_subscribers");
    atom_stall_timeout_ms = enif_make_atom(env, "stall_timeout_ms");
    atom_mode = enif_make_atom(env, "mode");
    atom_dir = enif_make_atom(env, "dir");
    atom_checksum = enif_make_atom(env, "checksum");
    atom_auto = enif_make_atom(env, "auto");
    atom_manual = enif_make_atom(env, "manual");
    atom_tail = enif_make_atom(env, "tail");
    atom_sent = enif_make_atom(env, "sent");
    atom_bytes = enif_make_atom(env, "bytes");
    atom_received = enif_make_atom(env, "received");
    atom_backpressure = enif_make_atom(env, "backpressure");
    atom_unblocked = enif_make_atom(env, "unblocked");
    atom_dead_reaped = enif_make_atom(env, "dead_reaped");
    atom_max_lag = enif_make_atom(env, "max_lag");
    atom_corrupt_frames = enif_make_atom(env, "corrupt_frames");
    atom_producers = enif_make_atom(env, "producers");
    atom_subscribers = enif_make_atom(env, "subscribers");
    atom_max_payload = enif_make_atom(env, "max_payload");
    atom_erlmcp_flow_frames = enif_make_atom(env, "erlmcp_flow_frames");
    atom_erlmcp_flow_error = enif_make_atom(env, "erlmcp_flow_error");
    atom_rejected = enif_make_atom(env, "rejected");
    atom_evicted = enif_make_atom(env, "evicted");
    atom_empty = enif_make_atom(env, "empty");
    atom_miss = enif_make_atom(env, "miss");
    atom_not_found = enif_make_atom(env, "not_found");
    atom_low_priority = enif_make_atom(env, "low_priority");
    atom_depth = enif_make_atom(env, "depth");
    atom_primary_depth = enif_make_atom(env, "primary_depth");
    atom_overflow_depth = enif_make_atom(env, "overflow_depth");
    atom_depth_p99 = enif_make_atom(env, "depth_p99");
    atom_max_depth = enif_make_atom(env, "max_depth");
    atom_enqueued = enif_make_atom(env, "enqueued");
    atom_dequeued = enif_make_atom(env, "dequeued");
    atom_spills = enif_make_atom(env, "spills");
    atom_rejections = enif_make_atom(env, "rejections");
    atom_evictions = enif_make_atom(env, "evictions");
    atom_len = enif_make_atom(env, "len");
    atom_hits = enif_make_atom(env, "hits");
    atom_misses = enif_make_atom(env, "misses");
    atom_expirations = enif_make_atom(env, "expirations");
    atom_cosine = enif_make_atom(env, "cosine");
    atom_dot = enif_make_atom(env, "dot");
    atom_l2sq = enif_make_atom(env, "l2sq");
    atom_f16 = enif_make_atom(env, "f16");
    atom_f32 = enif_make_atom(env, "f32");
    atom_default = enif_make_atom(env, "default");
    atom_neg_infinity = enif_make_atom(env, "neg_infinity");
    atom_nan = enif_make_atom(env, "nan");
    atom_dim = enif_make_atom(env, "dim");
    atom_metric = enif_make_atom(env, "metric");
    atom_m = enif_make_atom(env, "m");
    atom_ef_construction = enif_make_atom(env, "ef_construction");
    atom_ef_search = enif_make_atom(env, "ef_search");
    atom_originals = enif_make_atom(env, "originals");
    atom_seed = enif_make_atom(env, "seed");
    atom_mapped = enif_make_atom(env, "mapped");
    atom_memory_bytes = enif_make_atom(env, "memory_bytes");
    flush_atoms[EMF_FLUSH_NONE] = enif_make_atom(env, "none");
    flush_atoms[EMF_FLUSH_SIZE] = enif_make_atom(env, "size");
    flush_atoms[EMF_FLUSH_TIMEOUT] = enif_make_atom(env, "timeout");
    flush_atoms[EMF_FLUSH_IDLE] = enif_make_atom(env, "idle");
    flush_atoms[EMF_FLUSH_DEMAND] = enif_make_atom(env, "demand");
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

/* The atom of a status code. */
static ERL_NIF_TERM status_atom(emf_status_t status) {
    return (status > 0 && status < EMF_NIF_MAX_STATUSES) ? status_atoms[status] : atom_unknown;
}

/* {error, {StatusAtom, <<Message>>}} with a message of this shim (not the engine's). */
static ERL_NIF_TERM shim_error(ErlNifEnv *env, emf_status_t status, const char *msg) {
    return make_error(env, status_atom(status), msg, strlen(msg));
}

/* The result of a failed emf_* call. Must be called on the thread that made the call, before
 * any other emf_* call. */
static ERL_NIF_TERM status_error(ErlNifEnv *env, emf_status_t status) {
    ERL_NIF_TERM reason = status_atom(status);
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
    const char *name;                   /* resource type name prefix, unique in this library */
    ErlNifResourceDtor *dtor;           /* frees the engine handle of one resource object */
    ErlNifResourceDown *down;           /* NULL, or called when a monitored process dies */
    emf_status_t (*release)(void *ptr); /* frees an engine handle; NULL: nothing to free */
    const char *release_what;           /* the release call, for reports */
    const char *expected;               /* the error for a term that is no handle of this kind */
    const char *not_this_version;       /* the error for a reference of another load */
    const char *closed;                 /* the error for a closed handle */
    size_t index;                       /* index of its resource type in emf_nif_priv.types */
} emf_nif_handle_kind;

#define EMF_NIF_KIND_MESSAGE 0
#define EMF_NIF_KIND_RING 1
#define EMF_NIF_KIND_PRODUCER 2
#define EMF_NIF_KIND_CONSUMER 3
#define EMF_NIF_KIND_DELIVERY 4
#define EMF_NIF_KIND_ROUTER 5
#define EMF_NIF_KIND_BATCH 6
#define EMF_NIF_KIND_STORE 7
#define EMF_NIF_KIND_STATE_VALUE 8
#define EMF_NIF_KIND_QUEUE 9
#define EMF_NIF_KIND_CACHE 10
#define EMF_NIF_KIND_BUF 11
#define EMF_NIF_KIND_HNSW 12
#define EMF_NIF_KIND_COUNT 13

struct emf_nif_delivery;
struct emf_nif_shared;

/* Buckets of the table of shared values mapped by this load (see "Shared state"). */
#define EMF_NIF_SHARED_BUCKETS 256

/* The state of one load of this library (its priv_data). */
typedef struct emf_nif_priv {
    ErlNifResourceType *types[EMF_NIF_KIND_COUNT]; /* opened by this load, never taken over */
    /* Deliveries of this load (see "Delivery"); everything below is guarded by `lock'. */
    ErlNifMutex *lock;
    ErlNifCond *changed;                  /* broadcast when a delivery changes state */
    struct emf_nif_delivery *deliveries;  /* every delivery not reaped yet */
    size_t delivery_count;
    ErlNifTid reaper;                     /* joins finished delivery threads */
    bool reaper_started;
    bool reaper_exit;                     /* set by unload(): exit once every delivery is gone */
    /* Shared state values mapped in place (zero-copy binaries), one mapping per value. */
    ErlNifMutex *shared_lock;
    struct emf_nif_shared *shared[EMF_NIF_SHARED_BUCKETS];
    size_t shared_count;
    /* HNSW indexes of this load not freed yet (erlmcp_flow_nif:hnsw_indexes/0). */
    atomic_size_t hnsw_count;
} emf_nif_priv;

/* The resource object: an engine handle plus a cost hint for dirty scheduling, and the use
 * guard of handles that can be closed early. */
typedef struct emf_nif_handle {
    void *ptr;         /* the engine handle; NULL once released */
    size_t cost;       /* bytes behind the handle, to decide dirty scheduling of its operations */
    size_t aux;        /* kind-specific: the ring's largest payload for rings */
    atomic_size_t use; /* EMF_NIF_USE_USER per call using `ptr', plus EMF_NIF_USE_CLOSED */
    atomic_size_t load; /* kind-specific running cost hint: a batch's pending bytes (bound) */
} emf_nif_handle;

/*
 * The use guard of closable handles (rings, producers, consumers). Every call that uses the
 * engine handle enters the guard (handle_use) and leaves it when done (handle_leave); close/1
 * sets the CLOSED bit. The engine handle is released exactly once, by whichever comes last:
 * handle_close when no call is inside, else the handle_leave of the last call inside. Calls
 * that come after the close are refused with {error, {closed, _}}. Nothing here blocks.
 */
#define EMF_NIF_USE_CLOSED ((size_t)1)
#define EMF_NIF_USE_USER ((size_t)2)

/* Releases the engine handle of `h' (no call is using it). A failure would be a bug (see
 * handle_destroy); it cannot be returned to Erlang, so it is reported on stderr. */
static void handle_release(emf_nif_handle *h, const emf_nif_handle_kind *kind) {
    if (h->ptr != NULL && kind->release != NULL) {
        emf_status_t st = kind->release(h->ptr);
        if (st != EMF_OK) {
            report_impossible(kind->release_what, st);
        }
    }
    h->ptr = NULL;
}

static bool handle_enter(emf_nif_handle *h) {
    size_t s = atomic_load_explicit(&h->use, memory_order_acquire);
    do {
        if (s & EMF_NIF_USE_CLOSED) {
            return false;
        }
    } while (!atomic_compare_exchange_weak_explicit(&h->use, &s, s + EMF_NIF_USE_USER,
                                                    memory_order_acquire, memory_order_acquire));
    return true;
}

static void handle_leave(emf_nif_handle *h, const emf_nif_handle_kind *kind) {
    size_t old = atomic_fetch_sub_explicit(&h->use, EMF_NIF_USE_USER, memory_order_acq_rel);
    if (old == (EMF_NIF_USE_USER | EMF_NIF_USE_CLOSED)) {
        handle_release(h, kind); /* the last call inside a closed handle */
    }
}

/* Closes `h'; false when it was closed already. */
static bool handle_close(emf_nif_handle *h, const emf_nif_handle_kind *kind) {
    size_t old = atomic_fetch_or_explicit(&h->use, EMF_NIF_USE_CLOSED, memory_order_acq_rel);
    if (old & EMF_NIF_USE_CLOSED) {
        return false;
    }
    if (old == 0) {
        handle_release(h, kind);
    }
    return true;
}

/* Takes the engine handle out of `h', which is closed from now on: only when no call is
 * inside (else NULL with *busy set) and it is not closed (else NULL, *busy clear). */
static void *handle_take(emf_nif_handle *h, bool *busy) {
    size_t expected = 0;
    if (!atomic_compare_exchange_strong_explicit(&h->use, &expected, EMF_NIF_USE_CLOSED,
                                                 memory_order_acq_rel, memory_order_acquire)) {
        *busy = (expected & EMF_NIF_USE_CLOSED) == 0;
        return NULL;
    }
    void *ptr = h->ptr;
    h->ptr = NULL;
    return ptr;
}

/* The body of every destructor. It runs once, when no term refers to the resource any more,
 * so no NIF can be using the engine handle at the same time. Releasing cannot fail:
 *  - only handle_new creates objects of these types, storing a handle that this copy of the
 *    engine has just returned, and nothing else writes `ptr' but the release above;
 *  - the types are opened by this library alone and never taken over (see above), so this
 *    destructor only sees objects created by this copy of the library, and the handle is in
 *    this engine's registry;
 *  - ERTS runs the destructor exactly once per object.
 * A failure would be a bug; it cannot be returned to Erlang, so it is reported on stderr. */
static void handle_destroy(void *obj, const emf_nif_handle_kind *kind) {
    handle_release(obj, kind);
}

/* emf_message_t */
static emf_status_t release_message(void *ptr) {
    return emf_message_free(ptr);
}

/* emf_ring_t, emf_producer_t, emf_consumer_t */
static emf_status_t release_ring(void *ptr) {
    return emf_ring_free(ptr);
}

static emf_status_t release_producer(void *ptr) {
    return emf_producer_free(ptr);
}

static emf_status_t release_consumer(void *ptr) {
    return emf_consumer_free(ptr);
}

/* emf_router_t */
static emf_status_t release_router(void *ptr) {
    return emf_router_free(ptr);
}

/* emf_batch_t. Pending messages are sent when they fit (emf_batch_free), else dropped
 * (emf_batch_discard refuses nothing): a processor only gets here with messages pending when
 * its owner did not close it with batch_close (the owner died), so nobody is left to retry. */
static emf_status_t release_batch(void *ptr) {
    emf_status_t st = emf_batch_free(ptr);
    if (st != EMF_OK) {
        st = emf_batch_discard(ptr, NULL);
    }
    return st;
}

/* emf_state_store_t, with the store's identity (see "Shared state"). */
typedef struct emf_nif_store {
    emf_state_store_t *store;
    size_t id_len; /* `id': the name, a NUL byte, the directory ("" for the default) */
    char id[];
} emf_nif_store;

static emf_status_t release_store(void *ptr) {
    emf_nif_store *s = ptr;
    emf_status_t st = emf_state_free(s->store);
    enif_free(s);
    return st;
}

/* A shared value mapped in place: defined with the shared-state NIFs. */
static emf_status_t release_shared(void *ptr);

/* emf_task_queue_t. Tasks still queued are dropped with it: erlmcp_flow_queue hands them back
 * when a queue is closed with queue_close (see "Task queues and caches"). */
static emf_status_t release_queue(void *ptr) {
    return emf_task_queue_free(ptr);
}

/* emf_cache_t (its sweeper thread, if any, is stopped and joined by emf_cache_free). */
static emf_status_t release_cache(void *ptr) {
    return emf_cache_free(ptr);
}

/* An HNSW index with the shim's lock: defined with the HNSW NIFs. */
static emf_status_t release_hnsw(void *ptr);

/* An engine buffer (emf_buf_t, allocated with enif_alloc) under a binary of its bytes. */
static emf_status_t release_buf(void *ptr) {
    emf_status_t st = emf_buf_free(ptr);
    enif_free(ptr);
    return st;
}

static void message_dtor(ErlNifEnv *env, void *obj);
static void ring_dtor(ErlNifEnv *env, void *obj);
static void producer_dtor(ErlNifEnv *env, void *obj);
static void consumer_dtor(ErlNifEnv *env, void *obj);
static void delivery_dtor(ErlNifEnv *env, void *obj);
static void delivery_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon);
static void router_dtor(ErlNifEnv *env, void *obj);
static void batch_dtor(ErlNifEnv *env, void *obj);
static void store_dtor(ErlNifEnv *env, void *obj);
static void state_value_dtor(ErlNifEnv *env, void *obj);
static void queue_dtor(ErlNifEnv *env, void *obj);
static void cache_dtor(ErlNifEnv *env, void *obj);
static void buf_dtor(ErlNifEnv *env, void *obj);
static void hnsw_dtor(ErlNifEnv *env, void *obj);

static const emf_nif_handle_kind message_kind = {
    .name = "erlmcp_flow_message",
    .dtor = message_dtor,
    .release = release_message,
    .release_what = "emf_message_free in the resource destructor",
    .expected = "message: expected a handle from message_open/1",
    .not_this_version = "message: not a handle of this library version: expected a handle "
                        "from message_open/1 of the NIF library loaded now (handles made "
                        "before a code upgrade of erlmcp_flow_nif are refused; open the "
                        "archive again)",
    .closed = "message: closed",
    .index = EMF_NIF_KIND_MESSAGE,
};

static const emf_nif_handle_kind ring_kind = {
    .name = "erlmcp_flow_ring",
    .dtor = ring_dtor,
    .release = release_ring,
    .release_what = "emf_ring_free",
    .expected = "ring: expected a handle from erlmcp_flow_ring:create/2 or open/1,2",
    .not_this_version = "ring: not a handle of this library version: expected a ring handle "
                        "of the NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; open the ring again)",
    .closed = "ring: closed by close/1",
    .index = EMF_NIF_KIND_RING,
};

static const emf_nif_handle_kind producer_kind = {
    .name = "erlmcp_flow_producer",
    .dtor = producer_dtor,
    .release = release_producer,
    .release_what = "emf_producer_free",
    .expected = "producer: expected a handle from erlmcp_flow_ring:producer/1",
    .not_this_version = "producer: not a handle of this library version: expected a producer "
                        "of the NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; attach a new producer)",
    .closed = "producer: closed by close/1",
    .index = EMF_NIF_KIND_PRODUCER,
};

static const emf_nif_handle_kind consumer_kind = {
    .name = "erlmcp_flow_consumer",
    .dtor = consumer_dtor,
    .release = release_consumer,
    .release_what = "emf_consumer_free",
    .expected = "consumer: expected a handle from erlmcp_flow_ring:consumer/1 or subscribe/1",
    .not_this_version = "consumer: not a handle of this library version: expected a consumer "
                        "of the NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; attach a new consumer)",
    .closed = "consumer: closed (by close/1, or handed over to deliver/2,3)",
    .index = EMF_NIF_KIND_CONSUMER,
};

/* The owner monitor of a delivery (see "Delivery"): `ptr' is the emf_nif_delivery, which
 * this object does not own; it never appears in a term. */
static const emf_nif_handle_kind delivery_kind = {
    .name = "erlmcp_flow_delivery",
    .dtor = delivery_dtor,
    .down = delivery_down,
    .release = NULL,
    .release_what = "",
    .expected = "",
    .not_this_version = "",
    .closed = "",
    .index = EMF_NIF_KIND_DELIVERY,
};

static const emf_nif_handle_kind router_kind = {
    .name = "erlmcp_flow_router",
    .dtor = router_dtor,
    .release = release_router,
    .release_what = "emf_router_free",
    .expected = "router: expected a handle from erlmcp_flow_nif:router_new/2",
    .not_this_version = "router: not a handle of this library version: expected a router of "
                        "the NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; start the router again)",
    .closed = "router: closed",
    .index = EMF_NIF_KIND_ROUTER,
};

static const emf_nif_handle_kind batch_kind = {
    .name = "erlmcp_flow_batch",
    .dtor = batch_dtor,
    .release = release_batch,
    .release_what = "emf_batch_free and emf_batch_discard",
    .expected = "batch: expected a handle from erlmcp_flow_nif:batch_new/4",
    .not_this_version = "batch: not a handle of this library version: expected a batch "
                        "processor of the NIF library loaded now (handles made before a code "
                        "upgrade of erlmcp_flow_nif are refused; start the processor again)",
    .closed = "batch: closed",
    .index = EMF_NIF_KIND_BATCH,
};

static const emf_nif_handle_kind store_kind = {
    .name = "erlmcp_flow_state_store",
    .dtor = store_dtor,
    .release = release_store,
    .release_what = "emf_state_free",
    .expected = "store: expected a handle from erlmcp_flow:open_store/1,2",
    .not_this_version = "store: not a handle of this library version: expected a state store "
                        "of the NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; open the store again)",
    .closed = "store: closed",
    .index = EMF_NIF_KIND_STORE,
};

/* The owner of a zero-copy binary of a shared value: `ptr' is its emf_nif_shared entry. It
 * only appears inside binaries (enif_make_resource_binary), never as a term of its own. */
static const emf_nif_handle_kind state_value_kind = {
    .name = "erlmcp_flow_state_value",
    .dtor = state_value_dtor,
    .release = release_shared,
    .release_what = "emf_state_value_free",
    .expected = "",
    .not_this_version = "",
    .closed = "",
    .index = EMF_NIF_KIND_STATE_VALUE,
};

/* A task queue can be closed early (queue_close/1, which hands back the tasks left): its
 * calls bracket their use with handle_use/handle_leave. */
static const emf_nif_handle_kind queue_kind = {
    .name = "erlmcp_flow_task_queue",
    .dtor = queue_dtor,
    .release = release_queue,
    .release_what = "emf_task_queue_free",
    .expected = "queue: expected a handle from erlmcp_flow_queue:new/0,1",
    .not_this_version = "queue: not a handle of this library version: expected a task queue "
                        "of the NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; make a new queue)",
    .closed = "queue: closed by close/1",
    .index = EMF_NIF_KIND_QUEUE,
};

static const emf_nif_handle_kind cache_kind = {
    .name = "erlmcp_flow_cache",
    .dtor = cache_dtor,
    .release = release_cache,
    .release_what = "emf_cache_free",
    .expected = "cache: expected a handle from erlmcp_flow_lru_cache:new/0,1",
    .not_this_version = "cache: not a handle of this library version: expected a cache of the "
                        "NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; make a new cache)",
    .closed = "cache: closed",
    .index = EMF_NIF_KIND_CACHE,
};

/* The owner of a binary over an engine buffer (a large task): `ptr' is the emf_buf_t. It only
 * appears inside binaries (enif_make_resource_binary), never as a term of its own. */
static const emf_nif_handle_kind buf_kind = {
    .name = "erlmcp_flow_buf",
    .dtor = buf_dtor,
    .release = release_buf,
    .release_what = "emf_buf_free",
    .expected = "",
    .not_this_version = "",
    .closed = "",
    .index = EMF_NIF_KIND_BUF,
};

/* An HNSW index (emf_hnsw_t in an emf_nif_hnsw): thread-safe; close/1 may release it early,
 * so its calls bracket their use with handle_use/handle_leave. */
static const emf_nif_handle_kind hnsw_kind = {
    .name = "erlmcp_flow_hnsw",
    .dtor = hnsw_dtor,
    .release = release_hnsw,
    .release_what = "emf_hnsw_free",
    .expected = "index: expected a handle from erlmcp_flow_hnsw:new/1, open/1 or load/1",
    .not_this_version = "index: not a handle of this library version: expected an index of "
                        "the NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; load the index again)",
    .closed = "index: closed by close/1",
    .index = EMF_NIF_KIND_HNSW,
};

static void message_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &message_kind);
}

static void router_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &router_kind);
}

static void batch_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &batch_kind);
}

static void store_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &store_kind);
}

static void state_value_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &state_value_kind);
}

static void queue_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &queue_kind);
}

static void cache_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &cache_kind);
}

static void buf_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &buf_kind);
}

static void hnsw_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &hnsw_kind);
}

static void ring_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &ring_kind);
}

static void producer_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &producer_kind);
}

static void consumer_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_destroy(obj, &consumer_kind);
}

/* Nothing to free (the delivery belongs to the reaper), but the type needs a destructor: ERTS
 * keeps a library loaded while objects of its types with a destructor exist, and delivery
 * threads run this library's code while their monitor objects live. */
static void delivery_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    (void)obj;
}

/* Every handle kind of this library. */
static const emf_nif_handle_kind *const handle_kinds[EMF_NIF_KIND_COUNT] = {
    &message_kind, &ring_kind,  &producer_kind,    &consumer_kind, &delivery_kind, &router_kind,
    &batch_kind,   &store_kind, &state_value_kind, &queue_kind,    &cache_kind,    &buf_kind,
    &hnsw_kind};

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
        ErlNifResourceTypeInit init;
        memset(&init, 0, sizeof init);
        init.dtor = kind->dtor;
        init.down = kind->down;
        ErlNifResourceFlags tried;
        priv->types[kind->index] =
            enif_open_resource_type_x(env, name, &init, ERL_NIF_RT_CREATE, &tried);
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

/* A new resource object of `kind' holding `ptr'; one reference, the caller's. */
static emf_nif_handle *handle_alloc(ErlNifEnv *env, const emf_nif_handle_kind *kind, void *ptr,
                                    size_t cost, size_t aux) {
    emf_nif_handle *h = enif_alloc_resource(handle_type(env, kind), sizeof *h);
    if (h == NULL) {
        return NULL;
    }
    h->ptr = ptr;
    h->cost = cost;
    h->aux = aux;
    atomic_init(&h->use, 0);
    atomic_init(&h->load, 0);
    return h;
}

/* Wraps an engine handle into a new resource term; the resource now owns the handle. */
static ERL_NIF_TERM handle_new(ErlNifEnv *env, const emf_nif_handle_kind *kind, void *ptr,
                               size_t cost, size_t aux) {
    emf_nif_handle *h = handle_alloc(env, kind, ptr, cost, aux);
    ERL_NIF_TERM term = enif_make_resource(env, h);
    enif_release_resource(h); /* the term holds the only reference now */
    return term;
}

static ERL_NIF_TERM handle_wrap(ErlNifEnv *env, const emf_nif_handle_kind *kind, void *ptr,
                                size_t cost) {
    return handle_new(env, kind, ptr, cost, 0);
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

/* Reads a closable handle argument and enters its use guard: on success the caller must call
 * handle_leave(*out, kind) once done with (*out)->ptr. Else false with `*error' set:
 * {invalid_argument, _} for a term that is no handle of this kind and load, {closed, _} for a
 * closed handle. */
static bool handle_use(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind,
                       emf_nif_handle **out, ERL_NIF_TERM *error) {
    void *obj;
    if (!enif_get_resource(env, term, handle_type(env, kind), &obj)) {
        *error = not_a_handle(env, term, kind->expected, kind->not_this_version);
        return false;
    }
    if (!handle_enter(obj)) {
        *error = shim_error(env, EMF_ERR_CLOSED, kind->closed);
        return false;
    }
    *out = obj;
    return true;
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

static bool get_bool(ERL_NIF_TERM term, bool *out);

/* json_to_archive(Json, Priority, CreatedAtUs, DeadlineUs[, Checksum]): Checksum `true'
 * passes EMF_ARCHIVE_CHECKSUM to emf_json_to_archive_ex. */
static ERL_NIF_TERM json_to_archive_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary json;
    bool checksum = false;
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
    if (argc > 4 && !get_bool(argv[4], &checksum)) {
        return argument_error(env, "checksum: expected true or false");
    }
    opts.created_at_us = created;
    opts.deadline_us = deadline;
    emf_buf_t out = {0};
    emf_status_t st = emf_json_to_archive_ex(json.data, json.size, &opts,
                                             checksum ? EMF_ARCHIVE_CHECKSUM : 0, &out);
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
    *error = not_a_handle(env, term, message_kind.expected, message_kind.not_this_version);
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
/* Rings                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/*
 * Shared-memory rings (emf_ring_*, emf_producer_*, emf_consumer_*). Scheduling:
 *
 *  - Calls that touch the file system or /proc (create, open, unlink, stats, attaching a
 *    producer or consumer, close) run on a dirty I/O scheduler.
 *  - send, send_batch, recv and recv_batch run on the calling scheduler when they cannot
 *    wait and their work is small (up to EMF_NIF_RING_DIRTY_BYTES bytes and
 *    EMF_NIF_RING_DIRTY_FRAMES frames; copying into or out of a ring runs at several GB/s, so
 *    that is well under 1 ms); otherwise on a dirty CPU scheduler.
 *  - A call that has to wait (send/3 on a full ring, recv with a timeout on an empty one)
 *    first tries once on the calling scheduler and only then moves to a dirty I/O scheduler,
 *    where it waits in slices of EMF_NIF_WAIT_SLICE_MS, stopping early when the calling
 *    process is killed or the handle is closed.
 *
 * Producers and consumers are one-thread-at-a-time objects in the engine: two processes
 * calling into the same handle at the same moment get {error, {busy, _}} from the engine,
 * never a race.
 */

#define EMF_NIF_RING_DIRTY_BYTES ((size_t)1024 * 1024)
#define EMF_NIF_RING_DIRTY_FRAMES ((size_t)4096)
#define EMF_NIF_WAIT_SLICE_MS 50u
/* Receive buffer of recv/2 on the stack; larger frames get a buffer of their own size. */
#define EMF_NIF_RECV_STACK_BUF 2048
/* Buffer of recv_batch/3 (frames that do not fit are received one at a time). */
#define EMF_NIF_RECV_BATCH_BYTES ((size_t)64 * 1024)
/* Frames of send_batch/2 whose slices live on the stack; more are allocated. */
#define EMF_NIF_BATCH_STACK_SLICES 64
#define EMF_NIF_TIMEOUT_INFINITY UINT64_MAX
/* A status of this shim, never returned by the engine: out of memory. */
#define EMF_NIF_ERR_NO_MEMORY ((emf_status_t)-1)

/* The error of a failed call of this section: status_error, or out of memory. */
static ERL_NIF_TERM ring_error(ErlNifEnv *env, emf_status_t st) {
    return st == EMF_NIF_ERR_NO_MEMORY ? shim_error(env, EMF_ERR_TOO_LARGE, "out of memory")
                                       : status_error(env, st);
}

/* {Status, Message} of ring_error. */
static ERL_NIF_TERM ring_error_reason(ErlNifEnv *env, emf_status_t st) {
    int arity;
    const ERL_NIF_TERM *elems;
    (void)enif_get_tuple(env, ring_error(env, st), &arity, &elems); /* {error, Reason} */
    return elems[1];
}

/* Copies a binary or iodata argument into a new NUL-terminated string (free it with
 * enif_free); NULL when it is not bytes, holds a NUL byte, or memory ran out. */
static char *get_cstring(ErlNifEnv *env, ERL_NIF_TERM term) {
    ErlNifBinary bin;
    if (!get_bytes(env, term, &bin) || memchr(bin.data, 0, bin.size) != NULL) {
        return NULL;
    }
    char *s = enif_alloc(bin.size + 1);
    if (s != NULL) {
        memcpy(s, bin.data, bin.size);
        s[bin.size] = '\0';
    }
    return s;
}

static bool get_u32(ErlNifEnv *env, ERL_NIF_TERM term, uint32_t *out) {
    unsigned int v;
    if (!enif_get_uint(env, term, &v) || v > UINT32_MAX) {
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

static bool get_bool(ERL_NIF_TERM term, bool *out) {
    if (enif_is_identical(term, atom_true)) {
        *out = true;
        return true;
    }
    if (enif_is_identical(term, atom_false)) {
        *out = false;
        return true;
    }
    return false;
}

/* A timeout in milliseconds: a non-negative integer or `infinity' (EMF_NIF_TIMEOUT_INFINITY). */
static bool get_timeout(ErlNifEnv *env, ERL_NIF_TERM term, uint64_t *out) {
    ErlNifUInt64 v;
    if (enif_is_identical(term, atom_infinity)) {
        *out = EMF_NIF_TIMEOUT_INFINITY;
        return true;
    }
    if (!enif_get_uint64(env, term, &v)) {
        return false;
    }
    *out = v == EMF_NIF_TIMEOUT_INFINITY ? v - 1 : v;
    return true;
}

static ERL_NIF_TERM schedule_dirty_io(ErlNifEnv *env, const char *name, nif_impl impl, int argc,
                                      const ERL_NIF_TERM argv[]) {
    if (enif_thread_type() == ERL_NIF_THR_DIRTY_IO_SCHEDULER) {
        return impl(env, argc, argv);
    }
    return enif_schedule_nif(env, name, ERL_NIF_DIRTY_JOB_IO_BOUND, impl, argc, argv);
}

static ERL_NIF_TERM schedule_dirty_cpu(ErlNifEnv *env, const char *name, nif_impl impl,
                                       int argc, const ERL_NIF_TERM argv[]) {
    return enif_schedule_nif(env, name, ERL_NIF_DIRTY_JOB_CPU_BOUND, impl, argc, argv);
}

static bool on_normal_scheduler(void) {
    return enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER;
}

static bool is_closed(emf_nif_handle *h) {
    return (atomic_load_explicit(&h->use, memory_order_acquire) & EMF_NIF_USE_CLOSED) != 0;
}

/* Milliseconds left until `deadline' (a monotonic time in ms), at most one wait slice. */
static uint32_t wait_slice(ErlNifTime deadline, bool infinite) {
    if (infinite) {
        return EMF_NIF_WAIT_SLICE_MS;
    }
    ErlNifTime left = deadline - enif_monotonic_time(ERL_NIF_MSEC);
    if (left <= 0) {
        return 0;
    }
    return left < (ErlNifTime)EMF_NIF_WAIT_SLICE_MS ? (uint32_t)left : EMF_NIF_WAIT_SLICE_MS;
}

static ErlNifTime deadline_of(uint64_t timeout_ms) {
    ErlNifTime now = enif_monotonic_time(ERL_NIF_MSEC);
    return timeout_ms > (uint64_t)(INT64_MAX / 2) ? INT64_MAX / 2 : now + (ErlNifTime)timeout_ms;
}

/* ring_create(Name, Options) -> {ok, Ring}; Options is a map of the emf_ring_options_t fields
 * to change (capacity, multi_producer, max_producers, max_subscribers, stall_timeout_ms, mode,
 * dir; checksum => true sets EMF_RING_CHECKSUM in flags); the others keep the engine's
 * defaults (emf_ring_options_default). */
static ERL_NIF_TERM ring_create_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_ring_options_t o;
    emf_status_t st = emf_ring_options_default(&o);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM map = argv[1], v;
    if (!enif_is_map(env, map)) {
        return argument_error(env, "options: expected a map");
    }
    if (enif_get_map_value(env, map, atom_capacity, &v) && !get_size(env, v, &o.capacity)) {
        return argument_error(env, "capacity: expected a non-negative integer");
    }
    if (enif_get_map_value(env, map, atom_multi_producer, &v) && !get_bool(v, &o.multi_producer)) {
        return argument_error(env, "multi_producer: expected true or false");
    }
    if (enif_get_map_value(env, map, atom_max_producers, &v) && !get_u32(env, v, &o.max_producers)) {
        return argument_error(env, "max_producers: expected a 32-bit non-negative integer");
    }
    if (enif_get_map_value(env, map, atom_max_subscribers, &v)
        && !get_u32(env, v, &o.max_subscribers)) {
        return argument_error(env, "max_subscribers: expected a 32-bit non-negative integer");
    }
    if (enif_get_map_value(env, map, atom_stall_timeout_ms, &v)
        && !get_u32(env, v, &o.stall_timeout_ms)) {
        return argument_error(env, "stall_timeout_ms: expected a 32-bit non-negative integer");
    }
    if (enif_get_map_value(env, map, atom_mode, &v) && !get_u32(env, v, &o.mode)) {
        return argument_error(env, "mode: expected a file mode such as 8#600");
    }
    if (enif_get_map_value(env, map, atom_checksum, &v)) {
        bool checksum;
        if (!get_bool(v, &checksum)) {
            return argument_error(env, "checksum: expected true or false");
        }
        o.flags = checksum ? o.flags | EMF_RING_CHECKSUM : o.flags & ~(uint32_t)EMF_RING_CHECKSUM;
    }
    char *dir = NULL;
    if (enif_get_map_value(env, map, atom_dir, &v) && !enif_is_identical(v, atom_undefined)) {
        dir = get_cstring(env, v);
        if (dir == NULL) {
            return argument_error(env, "dir: expected a path (binary or string) without NUL");
        }
        o.dir = dir;
    }
    char *name = get_cstring(env, argv[0]);
    if (name == NULL) {
        enif_free(dir);
        return argument_error(env, "name: expected a binary or string without NUL");
    }
    emf_ring_t *ring = NULL;
    st = emf_ring_create(name, &o, &ring);
    ERL_NIF_TERM result;
    if (st != EMF_OK) {
        result = status_error(env, st);
    } else {
        size_t max_payload = 0;
        (void)emf_ring_max_payload(ring, &max_payload);
        result = make_ok(env, handle_new(env, &ring_kind, ring, 0, max_payload));
    }
    enif_free(name);
    enif_free(dir);
    return result;
}

static ERL_NIF_TERM nif_ring_create(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "ring_create", ring_create_impl, argc, argv);
}

/* ring_open(Name, Dir | undefined) -> {ok, Ring} */
static ERL_NIF_TERM ring_open_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    char *dir = NULL;
    if (!enif_is_identical(argv[1], atom_undefined)) {
        dir = get_cstring(env, argv[1]);
        if (dir == NULL) {
            return argument_error(env, "dir: expected a path (binary or string) without NUL");
        }
    }
    char *name = get_cstring(env, argv[0]);
    if (name == NULL) {
        enif_free(dir);
        return argument_error(env, "name: expected a binary or string without NUL");
    }
    emf_ring_t *ring = NULL;
    emf_status_t st = emf_ring_open(name, dir, &ring);
    ERL_NIF_TERM result;
    if (st != EMF_OK) {
        result = status_error(env, st);
    } else {
        size_t max_payload = 0;
        (void)emf_ring_max_payload(ring, &max_payload);
        result = make_ok(env, handle_new(env, &ring_kind, ring, 0, max_payload));
    }
    enif_free(name);
    enif_free(dir);
    return result;
}

static ERL_NIF_TERM nif_ring_open(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "ring_open", ring_open_impl, argc, argv);
}

/* ring_stats(Ring) -> {ok, #{...}}: emf_ring_stats_t plus max_payload. */
static ERL_NIF_TERM ring_stats_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &ring_kind, &h, &error)) {
        return error;
    }
    emf_ring_stats_t s;
    emf_status_t st = emf_ring_stats(h->ptr, &s);
    ERL_NIF_TERM result;
    if (st != EMF_OK) {
        result = status_error(env, st);
    } else {
        ERL_NIF_TERM keys[] = {atom_capacity, atom_tail, atom_sent, atom_bytes, atom_received,
                               atom_backpressure, atom_unblocked, atom_dead_reaped,
                               atom_max_lag, atom_corrupt_frames, atom_producers,
                               atom_subscribers, atom_max_payload};
        ERL_NIF_TERM values[] = {
            enif_make_uint64(env, s.capacity), enif_make_uint64(env, s.tail),
            enif_make_uint64(env, s.sent), enif_make_uint64(env, s.bytes),
            enif_make_uint64(env, s.received), enif_make_uint64(env, s.backpressure),
            enif_make_uint64(env, s.unblocked), enif_make_uint64(env, s.dead_reaped),
            enif_make_uint64(env, s.max_lag), enif_make_uint64(env, s.corrupt_frames),
            enif_make_uint(env, s.producers), enif_make_uint(env, s.subscribers),
            enif_make_uint64(env, (ErlNifUInt64)h->aux),
        };
        ERL_NIF_TERM map;
        /* Cannot fail: the keys are distinct. */
        (void)enif_make_map_from_arrays(env, keys, values, sizeof keys / sizeof keys[0], &map);
        result = make_ok(env, map);
    }
    handle_leave(h, &ring_kind);
    return result;
}

static ERL_NIF_TERM nif_ring_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "ring_stats", ring_stats_impl, argc, argv);
}

/* ring_max_payload(Ring) -> {ok, Bytes} (read once when the handle was made) */
static ERL_NIF_TERM nif_ring_max_payload(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &ring_kind, &h, &error)) {
        return error;
    }
    ERL_NIF_TERM result = make_ok(env, enif_make_uint64(env, (ErlNifUInt64)h->aux));
    handle_leave(h, &ring_kind);
    return result;
}

/* ring_unlink(Ring) -> ok */
static ERL_NIF_TERM ring_unlink_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &ring_kind, &h, &error)) {
        return error;
    }
    emf_status_t st = emf_ring_unlink(h->ptr);
    ERL_NIF_TERM result = st == EMF_OK ? atom_ok : status_error(env, st);
    handle_leave(h, &ring_kind);
    return result;
}

static ERL_NIF_TERM nif_ring_unlink(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "ring_unlink", ring_unlink_impl, argc, argv);
}

/* ring_close(Handle) -> ok: releases a ring, producer or consumer handle now (idempotent). A
 * call still using it finishes first; the engine handle is released when it leaves. */
static ERL_NIF_TERM ring_close_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    static const emf_nif_handle_kind *const closable[] = {&ring_kind, &producer_kind,
                                                          &consumer_kind};
    for (size_t i = 0; i < sizeof closable / sizeof closable[0]; i++) {
        void *obj;
        if (enif_get_resource(env, argv[0], handle_type(env, closable[i]), &obj)) {
            (void)handle_close(obj, closable[i]);
            return atom_ok;
        }
    }
    return not_a_handle(env, argv[0], "handle: expected a ring, producer or consumer handle",
                        "handle: not a handle of this library version (handles made before a "
                        "code upgrade of erlmcp_flow_nif are refused)");
}

static ERL_NIF_TERM nif_ring_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "ring_close", ring_close_impl, argc, argv);
}

/* producer_new(Ring) -> {ok, Producer} */
static ERL_NIF_TERM producer_new_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &ring_kind, &h, &error)) {
        return error;
    }
    emf_producer_t *p = NULL;
    emf_status_t st = emf_producer_new(h->ptr, &p);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, handle_new(env, &producer_kind, p, 0, h->aux))
                                       : status_error(env, st);
    handle_leave(h, &ring_kind);
    return result;
}

static ERL_NIF_TERM nif_producer_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "producer_new", producer_new_impl, argc, argv);
}

/* producer_new_in_slot(Ring, Slot) -> {ok, Producer}: emf_producer_new_in_slot. Like
 * producer_new on a dirty I/O scheduler: taking over a dead holder's slot checks its liveness
 * in /proc and may wait up to 100 ms for the ring's recovery lock. */
static ERL_NIF_TERM producer_new_in_slot_impl(ErlNifEnv *env, int argc,
                                              const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t slot;
    if (!get_u32(env, argv[1], &slot)) {
        return argument_error(env, "slot: expected a 32-bit non-negative integer");
    }
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &ring_kind, &h, &error)) {
        return error;
    }
    emf_producer_t *p = NULL;
    emf_status_t st = emf_producer_new_in_slot(h->ptr, slot, &p);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, handle_new(env, &producer_kind, p, 0, h->aux))
                                       : status_error(env, st);
    handle_leave(h, &ring_kind);
    return result;
}

static ERL_NIF_TERM nif_producer_new_in_slot(ErlNifEnv *env, int argc,
                                             const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "producer_new_in_slot", producer_new_in_slot_impl, argc, argv);
}

/* producer_committed(Producer) -> {ok, {Committed, Slot}}: emf_producer_committed (two loads
 * from the segment: a normal scheduler). */
static ERL_NIF_TERM nif_producer_committed(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &producer_kind, &h, &error)) {
        return error;
    }
    uint64_t committed = 0;
    uint32_t slot = 0;
    emf_status_t st = emf_producer_committed(h->ptr, &committed, &slot);
    ERL_NIF_TERM result =
        st == EMF_OK ? make_ok(env, enif_make_tuple2(env, enif_make_uint64(env, committed),
                                                     enif_make_uint(env, slot)))
                     : status_error(env, st);
    handle_leave(h, &producer_kind);
    return result;
}

/* producer_send_wait(Producer, Data, TimeoutMs): the waiting part of producer_send/3, on a
 * dirty I/O scheduler. */
static ERL_NIF_TERM producer_send_wait_impl(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    ErlNifBinary data;
    uint64_t timeout;
    if (!get_timeout(env, argv[2], &timeout)) {
        return argument_error(env, "timeout: expected a non-negative integer or infinity");
    }
    if (!get_bytes(env, argv[1], &data)) {
        return argument_error(env, "data: expected a binary or iodata");
    }
    if (!handle_use(env, argv[0], &producer_kind, &h, &error)) {
        return error;
    }
    bool infinite = timeout == EMF_NIF_TIMEOUT_INFINITY;
    ErlNifTime deadline = deadline_of(timeout);
    ERL_NIF_TERM result;
    for (;;) {
        emf_status_t st = emf_producer_send(h->ptr, data.data, data.size);
        if (st == EMF_OK) {
            result = atom_ok;
            break;
        }
        if (st != EMF_ERR_FULL) {
            result = status_error(env, st);
            break;
        }
        uint32_t slice = wait_slice(deadline, infinite);
        if (slice == 0) {
            result = shim_error(env, EMF_ERR_TIMEOUT, "no space in the ring within the timeout");
            break;
        }
        if (!enif_is_current_process_alive(env)) {
            result = shim_error(env, EMF_ERR_CLOSED, "the calling process was killed");
            break;
        }
        if (is_closed(h)) {
            result = shim_error(env, EMF_ERR_CLOSED, producer_kind.closed);
            break;
        }
        st = emf_producer_send_timeout(h->ptr, data.data, data.size, EMF_WAIT_PARK, slice);
        if (st == EMF_OK) {
            result = atom_ok;
            break;
        }
        if (st != EMF_ERR_TIMEOUT) {
            result = status_error(env, st);
            break;
        }
    }
    handle_leave(h, &producer_kind);
    return result;
}

/* producer_send(Producer, Data, TimeoutMs) -> ok | {error, {full | timeout | ..., _}}: sends
 * one frame; with a timeout above 0, waits for space on a dirty I/O scheduler. */
static ERL_NIF_TERM producer_send_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    ErlNifBinary data;
    uint64_t timeout;
    if (!get_timeout(env, argv[2], &timeout)) {
        return argument_error(env, "timeout: expected a non-negative integer or infinity");
    }
    if (!get_bytes(env, argv[1], &data)) {
        return argument_error(env, "data: expected a binary or iodata");
    }
    if (!handle_use(env, argv[0], &producer_kind, &h, &error)) {
        return error;
    }
    emf_status_t st = emf_producer_send(h->ptr, data.data, data.size);
    ERL_NIF_TERM result = st == EMF_OK ? atom_ok : status_error(env, st);
    handle_leave(h, &producer_kind);
    if (st == EMF_ERR_FULL && timeout > 0) {
        return schedule_dirty_io(env, "producer_send_wait", producer_send_wait_impl, argc, argv);
    }
    return result;
}

static ERL_NIF_TERM nif_producer_send(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "producer_send", producer_send_impl, bytes_cost(env, argv[1]),
                       EMF_NIF_RING_DIRTY_BYTES, argc, argv);
}

/* What frames_count found in a list of frames. */
typedef enum emf_nif_frames {
    EMF_NIF_FRAMES_OK,       /* counted */
    EMF_NIF_FRAMES_DIRTY,    /* on a normal scheduler: the batch needs a dirty one */
    EMF_NIF_FRAMES_BAD,      /* an element is neither a binary nor a list */
    EMF_NIF_FRAMES_IMPROPER, /* not a proper list */
} emf_nif_frames;

/* Counts the frames of a batch (binaries or iodata) into *out_n without flattening anything.
 * On a normal scheduler (`normal') it stops with EMF_NIF_FRAMES_DIRTY as soon as the batch
 * must go to a dirty CPU scheduler: a frame that is iodata to flatten, more than
 * EMF_NIF_RING_DIRTY_FRAMES frames or EMF_NIF_RING_DIRTY_BYTES bytes. */
static emf_nif_frames frames_count(ErlNifEnv *env, ERL_NIF_TERM list, bool normal,
                                   size_t *out_n) {
    size_t n = 0, bytes = 0;
    bool flatten = false;
    ERL_NIF_TERM head;
    while (enif_get_list_cell(env, list, &head, &list)) {
        ErlNifBinary b;
        n++;
        if (enif_inspect_binary(env, head, &b)) {
            bytes = sat_add(bytes, b.size);
        } else if (enif_is_list(env, head)) {
            flatten = true;
        } else {
            return EMF_NIF_FRAMES_BAD;
        }
        if (normal && (flatten || n > EMF_NIF_RING_DIRTY_FRAMES
                       || bytes > EMF_NIF_RING_DIRTY_BYTES)) {
            return EMF_NIF_FRAMES_DIRTY;
        }
    }
    if (!enif_is_empty_list(env, list)) {
        return EMF_NIF_FRAMES_IMPROPER;
    }
    *out_n = n;
    return EMF_NIF_FRAMES_OK;
}

/* The error term of a frames_count result other than OK and DIRTY. */
static ERL_NIF_TERM frames_error(ErlNifEnv *env, emf_nif_frames f) {
    return argument_error(env, f == EMF_NIF_FRAMES_IMPROPER
                                   ? "frames: expected a proper list"
                                   : "frames: expected a list of binaries or iodata");
}

/* The slices of the `n' frames of `list' (counted by frames_count; iodata is flattened here):
 * `stack' (EMF_NIF_BATCH_STACK_SLICES entries) when they fit, else allocated. Release them
 * with frames_free. NULL with *error set on failure. */
static emf_slice_t *frames_slices(ErlNifEnv *env, ERL_NIF_TERM list, size_t n,
                                  emf_slice_t *stack, ERL_NIF_TERM *error) {
    emf_slice_t *slices = stack;
    if (n > EMF_NIF_BATCH_STACK_SLICES) {
        if (n > SIZE_MAX / sizeof *slices
            || (slices = enif_alloc(n * sizeof *slices)) == NULL) {
            *error = shim_error(env, EMF_ERR_TOO_LARGE, "frames: out of memory");
            return NULL;
        }
    }
    ERL_NIF_TERM head;
    for (size_t i = 0; i < n && enif_get_list_cell(env, list, &head, &list); i++) {
        ErlNifBinary b;
        if (!get_bytes(env, head, &b)) {
            if (slices != stack) {
                enif_free(slices);
            }
            *error = argument_error(env, "frames: expected a list of binaries or iodata");
            return NULL;
        }
        slices[i].data = b.data;
        slices[i].len = b.size;
    }
    return slices;
}

static void frames_free(emf_slice_t *slices, const emf_slice_t *stack) {
    if (slices != stack) {
        enif_free(slices);
    }
}

/* producer_send_batch(Producer, [Data]) -> {ok, Sent}: sends the longest prefix of the frames
 * that fits, with one claim; {ok, 0} when the ring is full (EMF_ERR_FULL). Frames Sent+1..
 * were not sent and stay the caller's. */
static ERL_NIF_TERM producer_send_batch_impl(ErlNifEnv *env, int argc,
                                             const ERL_NIF_TERM argv[]) {
    size_t n = 0;
    emf_nif_frames f = frames_count(env, argv[1], on_normal_scheduler(), &n);
    if (f == EMF_NIF_FRAMES_DIRTY) {
        return schedule_dirty_cpu(env, "producer_send_batch", producer_send_batch_impl, argc,
                                  argv);
    }
    if (f != EMF_NIF_FRAMES_OK) {
        return frames_error(env, f);
    }
    emf_slice_t stack_slices[EMF_NIF_BATCH_STACK_SLICES];
    ERL_NIF_TERM result;
    emf_slice_t *slices = frames_slices(env, argv[1], n, stack_slices, &result);
    if (slices == NULL) {
        return result;
    }
    emf_nif_handle *h;
    if (handle_use(env, argv[0], &producer_kind, &h, &result)) {
        size_t sent = 0;
        emf_status_t st = emf_producer_send_batch(h->ptr, slices, n, &sent);
        if (st == EMF_OK) {
            result = make_ok(env, enif_make_uint64(env, (ErlNifUInt64)sent));
        } else if (st == EMF_ERR_FULL) {
            result = make_ok(env, enif_make_uint(env, 0));
        } else {
            result = status_error(env, st);
        }
        handle_leave(h, &producer_kind);
    }
    frames_free(slices, stack_slices);
    return result;
}

static ERL_NIF_TERM nif_producer_send_batch(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    return producer_send_batch_impl(env, argc, argv);
}

/* consumer_new(Ring, Subscribe) -> {ok, Consumer}: the primary consumer (false) or a new
 * fan-out subscriber (true). */
static ERL_NIF_TERM consumer_new_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    bool subscribe;
    if (!get_bool(argv[1], &subscribe)) {
        return argument_error(env, "subscribe: expected true or false");
    }
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &ring_kind, &h, &error)) {
        return error;
    }
    emf_consumer_t *c = NULL;
    emf_status_t st = subscribe ? emf_consumer_subscribe(h->ptr, &c) : emf_consumer_new(h->ptr, &c);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, handle_new(env, &consumer_kind, c, 0, h->aux))
                                       : status_error(env, st);
    handle_leave(h, &ring_kind);
    return result;
}

static ERL_NIF_TERM nif_consumer_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "consumer_new", consumer_new_impl, argc, argv);
}

/* Receives the next frame of `c' into a new binary: EMF_OK with *out set, or a status
 * (EMF_ERR_EMPTY when none is ready) for status_error on this thread. `big' (may be NULL) is
 * set and nothing consumed when the frame is longer than `inline_limit' bytes: the caller
 * may move to a dirty scheduler first. */
static emf_status_t recv_frame(ErlNifEnv *env, emf_consumer_t *c, size_t inline_limit,
                               bool *big, ERL_NIF_TERM *out) {
    uint8_t stack_buf[EMF_NIF_RECV_STACK_BUF];
    size_t len = 0;
    emf_status_t st = emf_consumer_recv(c, stack_buf, sizeof stack_buf, &len);
    for (;;) {
        if (st == EMF_OK) {
            *out = make_binary_from(env, stack_buf, len);
            return EMF_OK;
        }
        if (st != EMF_ERR_BUFFER_TOO_SMALL) {
            return st;
        }
        if (big != NULL && len > inline_limit) {
            *big = true;
            return EMF_ERR_BUFFER_TOO_SMALL;
        }
        ErlNifBinary bin;
        if (!enif_alloc_binary(len, &bin)) {
            return EMF_NIF_ERR_NO_MEMORY; /* the frame stays in the ring */
        }
        size_t got = 0;
        st = emf_consumer_recv(c, bin.data, bin.size, &got);
        if (st == EMF_OK) {
            if (got != bin.size) {
                (void)enif_realloc_binary(&bin, got);
            }
            *out = enif_make_binary(env, &bin);
            return EMF_OK;
        }
        enif_release_binary(&bin);
        if (st != EMF_ERR_BUFFER_TOO_SMALL) {
            return st; /* another process took the frame meanwhile, or an error */
        }
        /* Another process took the frame and the next one is larger still: again. */
        len = got;
        st = emf_consumer_recv(c, stack_buf, sizeof stack_buf, &len);
    }
}

/* True when emf_consumer_recv_batch refused because the next frame does not fit in the
 * buffer (nothing consumed): EMF_ERR_BUFFER_TOO_SMALL, or EMF_ERR_TOO_LARGE from engines
 * built before that answer was documented. The frame is then received alone (recv_frame). */
static bool next_frame_too_big(emf_status_t st) {
    return st == EMF_ERR_BUFFER_TOO_SMALL || st == EMF_ERR_TOO_LARGE;
}

/* Turns `frames' packed frames of `buf' (u32-LE length + bytes each, emf_consumer_recv_batch)
 * into a list of new binaries; `terms' has room for `frames' terms. */
static ERL_NIF_TERM packed_frames_list(ErlNifEnv *env, const uint8_t *buf, size_t frames,
                                       ERL_NIF_TERM *terms) {
    size_t off = 0;
    for (size_t i = 0; i < frames; i++) {
        uint32_t len = (uint32_t)buf[off] | (uint32_t)buf[off + 1] << 8
                       | (uint32_t)buf[off + 2] << 16 | (uint32_t)buf[off + 3] << 24;
        terms[i] = make_binary_from(env, buf + off + 4, len);
        off += 4 + (size_t)len;
    }
    return enif_make_list_from_array(env, terms, (unsigned)frames);
}

/* consumer_recv_wait(Consumer, TimeoutMs): the waiting part of consumer_recv/2 and
 * consumer_recv_batch/3, on a dirty I/O scheduler. Returns true when a frame is ready, else
 * false with *error set (timeout, closed, caller killed, or an engine error). */
static bool consumer_wait_ready(ErlNifEnv *env, emf_nif_handle *h, uint64_t timeout,
                                ERL_NIF_TERM *error) {
    bool infinite = timeout == EMF_NIF_TIMEOUT_INFINITY;
    ErlNifTime deadline = deadline_of(timeout);
    for (;;) {
        uint32_t slice = wait_slice(deadline, infinite);
        if (slice == 0) {
            *error = shim_error(env, EMF_ERR_TIMEOUT, "no frame within the timeout");
            return false;
        }
        if (!enif_is_current_process_alive(env)) {
            *error = shim_error(env, EMF_ERR_CLOSED, "the calling process was killed");
            return false;
        }
        if (is_closed(h)) {
            *error = shim_error(env, EMF_ERR_CLOSED, consumer_kind.closed);
            return false;
        }
        bool ready = false;
        emf_status_t st = emf_consumer_wait(h->ptr, EMF_WAIT_PARK, slice, &ready);
        if (st != EMF_OK) {
            *error = status_error(env, st);
            return false;
        }
        if (ready) {
            return true;
        }
    }
}

/* consumer_recv(Consumer, TimeoutMs) -> {ok, Frame} | {error, {timeout, _}} */
static ERL_NIF_TERM consumer_recv_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    uint64_t timeout;
    if (!get_timeout(env, argv[1], &timeout)) {
        return argument_error(env, "timeout: expected a non-negative integer or infinity");
    }
    bool normal = on_normal_scheduler();
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &consumer_kind, &h, &result)) {
        return result;
    }
    bool big = false, wait = false;
    for (;;) {
        ERL_NIF_TERM frame;
        emf_status_t st = recv_frame(env, h->ptr, EMF_NIF_RING_DIRTY_BYTES, normal ? &big : NULL,
                                     &frame);
        if (st == EMF_OK) {
            result = make_ok(env, frame);
            break;
        }
        if (big) {
            break;
        }
        if (st != EMF_ERR_EMPTY) {
            result = ring_error(env, st);
            break;
        }
        if (timeout == 0) {
            result = shim_error(env, EMF_ERR_TIMEOUT, "no frame is ready");
            break;
        }
        if (enif_thread_type() != ERL_NIF_THR_DIRTY_IO_SCHEDULER) {
            wait = true; /* wait on a dirty I/O scheduler */
            break;
        }
        if (!consumer_wait_ready(env, h, timeout, &result)) {
            break;
        }
        /* Ready: receive it (the wait is not repeated with the whole timeout: a frame that
         * vanishes, taken by another process, ends in a timeout of at most one more wait). */
        timeout = timeout == EMF_NIF_TIMEOUT_INFINITY ? timeout : 0;
    }
    handle_leave(h, &consumer_kind);
    if (big) {
        return schedule_dirty_cpu(env, "consumer_recv", consumer_recv_impl, argc, argv);
    }
    if (wait) {
        return schedule_dirty_io(env, "consumer_recv", consumer_recv_impl, argc, argv);
    }
    return result;
}

static ERL_NIF_TERM nif_consumer_recv(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return consumer_recv_impl(env, argc, argv);
}

/* consumer_recv_batch(Consumer, MaxFrames, TimeoutMs) -> {ok, [Frame]} (at least one frame)
 * | {error, {timeout, _}}: the frames ready now, up to MaxFrames and about 64 KiB (a larger
 * frame comes alone). */
static ERL_NIF_TERM consumer_recv_batch_impl(ErlNifEnv *env, int argc,
                                             const ERL_NIF_TERM argv[]) {
    uint64_t timeout;
    size_t max_frames;
    if (!get_size(env, argv[1], &max_frames) || max_frames == 0 || max_frames > UINT32_MAX) {
        return argument_error(env, "max_frames: expected a positive integer");
    }
    if (!get_timeout(env, argv[2], &timeout)) {
        return argument_error(env, "timeout: expected a non-negative integer or infinity");
    }
    bool normal = on_normal_scheduler();
    if (normal && max_frames > EMF_NIF_RING_DIRTY_FRAMES) {
        return schedule_dirty_cpu(env, "consumer_recv_batch", consumer_recv_batch_impl, argc,
                                  argv);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &consumer_kind, &h, &result)) {
        return result;
    }
    /* A frame takes at least 4 bytes of the buffer, so no more than cap / 4 fit. */
    size_t cap = EMF_NIF_RECV_BATCH_BYTES;
    size_t max_terms = size_min(max_frames, cap / 4);
    uint8_t *buf = enif_alloc(cap);
    ERL_NIF_TERM *terms = enif_alloc(max_terms * sizeof *terms);
    bool big = false, wait = false;
    if (buf == NULL || terms == NULL) {
        result = shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
    } else {
        for (;;) {
            size_t frames = 0, used = 0;
            emf_status_t st = emf_consumer_recv_batch(h->ptr, buf, cap, max_terms, &frames,
                                                      &used);
            if (st == EMF_OK && frames > 0) {
                result = make_ok(env, packed_frames_list(env, buf, frames, terms));
                break;
            }
            if (next_frame_too_big(st)) { /* the next frame alone is larger than the buffer */
                ERL_NIF_TERM frame;
                st = recv_frame(env, h->ptr, EMF_NIF_RING_DIRTY_BYTES, normal ? &big : NULL,
                                &frame);
                if (st == EMF_OK) {
                    result = make_ok(env, enif_make_list1(env, frame));
                    break;
                }
                if (big) {
                    break;
                }
                if (st == EMF_ERR_EMPTY) {
                    continue; /* taken by another process meanwhile */
                }
            }
            if (st != EMF_OK) {
                result = ring_error(env, st);
                break;
            }
            if (timeout == 0) {
                result = shim_error(env, EMF_ERR_TIMEOUT, "no frame is ready");
                break;
            }
            if (enif_thread_type() != ERL_NIF_THR_DIRTY_IO_SCHEDULER) {
                wait = true; /* wait on a dirty I/O scheduler */
                break;
            }
            if (!consumer_wait_ready(env, h, timeout, &result)) {
                break;
            }
            timeout = timeout == EMF_NIF_TIMEOUT_INFINITY ? timeout : 0;
        }
    }
    enif_free(buf);
    enif_free(terms);
    handle_leave(h, &consumer_kind);
    if (big) {
        return schedule_dirty_cpu(env, "consumer_recv_batch", consumer_recv_batch_impl, argc,
                                  argv);
    }
    if (wait) {
        return schedule_dirty_io(env, "consumer_recv_batch", consumer_recv_batch_impl, argc,
                                 argv);
    }
    return result;
}

static ERL_NIF_TERM nif_consumer_recv_batch(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    return consumer_recv_batch_impl(env, argc, argv);
}

/* consumer_set_ack_mode(Consumer, auto | manual | Code) -> ok: emf_consumer_set_ack_mode. An
 * integer is passed to the engine as is (it refuses unknown codes). Normal scheduler: it
 * publishes the consumer's position at most. */
static ERL_NIF_TERM nif_consumer_set_ack_mode(ErlNifEnv *env, int argc,
                                              const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t mode;
    if (enif_is_identical(argv[1], atom_auto)) {
        mode = EMF_ACK_AUTO;
    } else if (enif_is_identical(argv[1], atom_manual)) {
        mode = EMF_ACK_MANUAL;
    } else if (!get_u32(env, argv[1], &mode)) {
        return argument_error(env, "mode: expected auto, manual or an EMF_ACK_* code");
    }
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &consumer_kind, &h, &error)) {
        return error;
    }
    emf_status_t st = emf_consumer_set_ack_mode(h->ptr, mode);
    ERL_NIF_TERM result = st == EMF_OK ? atom_ok : status_error(env, st);
    handle_leave(h, &consumer_kind);
    return result;
}

static ERL_NIF_TERM nif_deliver_ack(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

/* consumer_ack(Consumer | DeliveryRef) -> ok: emf_consumer_ack for a consumer handle (normal
 * scheduler: it publishes the consumer's position). Any other reference is taken for the
 * reference of a delivery and acknowledged as by deliver_ack/1, so that
 * erlmcp_flow_ring:ack/1 serves both. A ring or producer handle is refused. */
static ERL_NIF_TERM nif_consumer_ack(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    void *obj;
    if (!enif_get_resource(env, argv[0], handle_type(env, &consumer_kind), &obj)) {
        if (enif_get_resource(env, argv[0], handle_type(env, &ring_kind), &obj)
            || enif_get_resource(env, argv[0], handle_type(env, &producer_kind), &obj)
            || !enif_is_ref(env, argv[0])) {
            return argument_error(env, "ack: expected a consumer handle or the reference from "
                                       "deliver/2,3");
        }
        return nif_deliver_ack(env, argc, argv);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &consumer_kind, &h, &error)) {
        return error;
    }
    emf_status_t st = emf_consumer_ack(h->ptr);
    ERL_NIF_TERM result = st == EMF_OK ? atom_ok : status_error(env, st);
    handle_leave(h, &consumer_kind);
    return result;
}

/* consumer_rewind(Consumer) -> {ok, Unacked}: emf_consumer_rewind (normal scheduler). */
static ERL_NIF_TERM nif_consumer_rewind(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &consumer_kind, &h, &error)) {
        return error;
    }
    uint64_t unacked = 0;
    emf_status_t st = emf_consumer_rewind(h->ptr, &unacked);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, enif_make_uint64(env, unacked))
                                       : status_error(env, st);
    handle_leave(h, &consumer_kind);
    return result;
}

/* consumer_unacked(Consumer) -> {ok, Count}: emf_consumer_unacked (normal scheduler). */
static ERL_NIF_TERM nif_consumer_unacked(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &consumer_kind, &h, &error)) {
        return error;
    }
    uint64_t unacked = 0;
    emf_status_t st = emf_consumer_unacked(h->ptr, &unacked);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, enif_make_uint64(env, unacked))
                                       : status_error(env, st);
    handle_leave(h, &consumer_kind);
    return result;
}

/* consumer_lag(Consumer) -> {ok, Bytes} */
static ERL_NIF_TERM nif_consumer_lag(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &consumer_kind, &h, &error)) {
        return error;
    }
    uint64_t lag = 0;
    emf_status_t st = emf_consumer_lag(h->ptr, &lag);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, enif_make_uint64(env, lag))
                                       : status_error(env, st);
    handle_leave(h, &consumer_kind);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Delivery: frames pushed to an Erlang process by a thread of this library                   */
/* ------------------------------------------------------------------------------------------ */

/*
 * deliver(Consumer, Pid, ...) hands the consumer over to a new thread, which loops
 *
 *     emf_consumer_recv_batch -> enif_send {erlmcp_flow_frames, Ref, [Frame]} to Pid
 *     (nothing ready: emf_consumer_wait(EMF_WAIT_PARK, poll_ms), sleeping on the ring's futex)
 *
 * so no scheduler ever waits for frames. Ref is a plain reference made for the delivery.
 *
 * Flow control. A message carries at most max_frames frames and about max_bytes bytes (a
 * single larger frame comes alone). With a window W, at most W messages are unacknowledged:
 * the owner calls ack(Ref) once per message handled, and the thread, out of credit, sleeps on a
 * condition variable without reading the ring, so the ring fills up and its producers get
 * back-pressure ({error, {full, _}}) instead of the owner's mailbox growing without bound.
 * Window `infinity' turns this off.
 *
 * Ending. A delivery ends on stop(Ref), when its owner dies (a process monitor), or on an
 * engine error (the thread sends {erlmcp_flow_error, Ref, {Status, Message}} first). The
 * thread frees the engine consumer itself when it ends (a primary consumer's position stays
 * in the ring: a new consumer/1 resumes right after the last frame delivered). Every frame it
 * took from the ring is sent before it ends; stop(Ref) returns only after the thread ended,
 * so nothing arrives after it returns.
 *
 * Lifetimes. Threads of this library never own a resource reference: dropping the last one
 * could run a destructor, and unload the library, on a thread executing its code. So:
 *  - a delivery (emf_nif_delivery) is plain memory, listed in its load's priv_data;
 *  - its owner monitor lives in a resource object (delivery_kind) that no term refers to; the
 *    delivery keeps it until the monitor is over (owner down, or demonitored by stop), and
 *    only scheduler threads (the down callback, stop) release it;
 *  - a reaper thread per load joins finished delivery threads and frees a delivery once its
 *    thread is joined and its monitor is over. unload() (all monitor objects gone, so every
 *    delivery is stopped) waits for the reaper to finish the last ones. Nothing joins a
 *    thread on a normal scheduler.
 */

#define EMF_NIF_DELIVERY_STACK_KWORDS 128 /* 1 MiB on 64-bit: engine calls on this stack */
#define EMF_NIF_DELIVERY_MAX_FRAMES ((size_t)65536)
#define EMF_NIF_DELIVERY_MIN_BYTES ((size_t)64)
#define EMF_NIF_DELIVERY_MAX_BYTES ((size_t)64 * 1024 * 1024)
#define EMF_NIF_DELIVERY_MAX_POLL_MS 60000u

typedef struct emf_nif_delivery {
    struct emf_nif_delivery *next; /* in priv->deliveries */
    emf_nif_priv *priv;
    emf_consumer_t *consumer;      /* the thread's; it frees it when it ends */
    ErlNifPid owner;
    ErlNifEnv *tag_env;            /* holds `tag', a plain reference */
    ERL_NIF_TERM tag;
    size_t max_frames;
    size_t max_bytes;
    size_t window;                 /* 0: no flow control */
    uint32_t poll_ms;
    emf_nif_handle *monitor;       /* delivery_kind object of the owner monitor */
    ErlNifMonitor mon;
    ErlNifTid tid;
    ErlNifCond *wake;              /* credit or stop for the thread, with priv->lock */
    /* Under priv->lock: */
    size_t credit;                 /* messages the thread may still send (window > 0) */
    size_t pins;                   /* NIF calls using this delivery: not freed meanwhile */
    bool stop;
    bool thread_started;
    bool thread_done;              /* the thread has ended (it touches nothing any more) */
    bool joined;                   /* joined, or never started */
    bool monitor_done;             /* the monitor is over and its object released */
    bool demonitoring;             /* a stop call is demonitoring */
} emf_nif_delivery;

static void delivery_free(emf_nif_delivery *d) {
    if (d->tag_env != NULL) {
        enif_free_env(d->tag_env);
    }
    if (d->wake != NULL) {
        enif_cond_destroy(d->wake);
    }
    enif_free(d);
}

/* Sends {erlmcp_flow_frames, Ref, Frames} or {erlmcp_flow_error, Ref, Reason} from the
 * delivery thread; false when the owner is gone. `env' is cleared either way. */
static bool delivery_send(emf_nif_delivery *d, ErlNifEnv *env, ERL_NIF_TERM tag_atom,
                          ERL_NIF_TERM payload) {
    ERL_NIF_TERM msg = enif_make_tuple3(env, tag_atom, enif_make_copy(env, d->tag), payload);
    bool sent = enif_send(NULL, &d->owner, env, msg) != 0;
    enif_clear_env(env);
    return sent;
}

static void *delivery_main(void *arg) {
    emf_nif_delivery *d = arg;
    emf_nif_priv *priv = d->priv;
    ErlNifEnv *env = enif_alloc_env();
    uint8_t *buf = enif_alloc(d->max_bytes);
    ERL_NIF_TERM *terms = enif_alloc(size_min(d->max_frames, d->max_bytes / 4) * sizeof *terms);
    size_t max_frames = size_min(d->max_frames, d->max_bytes / 4);
    if (env == NULL || buf == NULL || terms == NULL) {
        if (env != NULL) {
            (void)delivery_send(d, env, atom_erlmcp_flow_error,
                                ring_error_reason(env, EMF_NIF_ERR_NO_MEMORY));
        }
    } else {
        for (;;) {
            enif_mutex_lock(priv->lock);
            while (!d->stop && d->window > 0 && d->credit == 0) {
                enif_cond_wait(d->wake, priv->lock);
            }
            bool stop = d->stop;
            enif_mutex_unlock(priv->lock);
            if (stop) {
                break;
            }
            size_t frames = 0, used = 0;
            ERL_NIF_TERM list = 0;
            emf_status_t st = emf_consumer_recv_batch(d->consumer, buf, d->max_bytes, max_frames,
                                                      &frames, &used);
            if (st == EMF_OK && frames > 0) {
                list = packed_frames_list(env, buf, frames, terms);
            } else if (next_frame_too_big(st)) {
                ERL_NIF_TERM frame;
                st = recv_frame(env, d->consumer, SIZE_MAX, NULL, &frame);
                if (st == EMF_OK) {
                    list = enif_make_list1(env, frame);
                    frames = 1;
                } else if (st == EMF_ERR_EMPTY) {
                    st = EMF_OK; /* cannot happen: this thread is the only reader */
                }
            }
            if (st != EMF_OK) {
                (void)delivery_send(d, env, atom_erlmcp_flow_error, ring_error_reason(env, st));
                break;
            }
            if (frames == 0) {
                bool ready = false;
                st = emf_consumer_wait(d->consumer, EMF_WAIT_PARK, d->poll_ms, &ready);
                if (st != EMF_OK) {
                    (void)delivery_send(d, env, atom_erlmcp_flow_error,
                                        ring_error_reason(env, st));
                    break;
                }
                continue;
            }
            if (d->window > 0) {
                enif_mutex_lock(priv->lock);
                d->credit--;
                enif_mutex_unlock(priv->lock);
            }
            if (!delivery_send(d, env, atom_erlmcp_flow_frames, list)) {
                break; /* the owner is gone; its monitor stops the delivery */
            }
        }
    }
    /* The position of a primary consumer is kept in the ring for the next one. */
    emf_status_t st = emf_consumer_free(d->consumer);
    if (st != EMF_OK) {
        report_impossible("emf_consumer_free in a delivery thread", st);
    }
    d->consumer = NULL;
    enif_free(terms);
    enif_free(buf);
    if (env != NULL) {
        enif_free_env(env);
    }
    enif_mutex_lock(priv->lock);
    d->thread_done = true;
    enif_cond_broadcast(priv->changed);
    enif_mutex_unlock(priv->lock);
    return NULL;
}

/* The reaper of one load: joins finished delivery threads, frees deliveries that are over,
 * and exits when unload() asks and none is left. */
static void *reaper_main(void *arg) {
    emf_nif_priv *priv = arg;
    enif_mutex_lock(priv->lock);
    for (;;) {
        emf_nif_delivery *d;
        for (d = priv->deliveries; d != NULL; d = d->next) {
            if (d->thread_done && !d->joined) {
                break;
            }
        }
        if (d != NULL) {
            enif_mutex_unlock(priv->lock);
            (void)enif_thread_join(d->tid, NULL); /* it has ended: this does not wait */
            enif_mutex_lock(priv->lock);
            d->joined = true;
            enif_cond_broadcast(priv->changed);
            continue;
        }
        emf_nif_delivery **pp;
        for (pp = &priv->deliveries; *pp != NULL; pp = &(*pp)->next) {
            if ((*pp)->joined && (*pp)->monitor_done && (*pp)->pins == 0) {
                break;
            }
        }
        if (*pp != NULL) {
            d = *pp;
            *pp = d->next;
            priv->delivery_count--;
            enif_mutex_unlock(priv->lock);
            delivery_free(d);
            enif_mutex_lock(priv->lock);
            enif_cond_broadcast(priv->changed);
            continue;
        }
        if (priv->reaper_exit && priv->deliveries == NULL) {
            break;
        }
        enif_cond_wait(priv->changed, priv->lock);
    }
    enif_mutex_unlock(priv->lock);
    return NULL;
}

/* The owner of a delivery died: stop it (the thread ends within poll_ms) and end the
 * monitor. Runs on a scheduler thread. */
static void delivery_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon) {
    (void)env;
    (void)pid;
    (void)mon;
    emf_nif_handle *m = obj;
    emf_nif_delivery *d = m->ptr; /* alive: freed only once monitor_done is set, below */
    emf_nif_priv *priv = d->priv;
    enif_mutex_lock(priv->lock);
    d->stop = true;
    d->monitor_done = true;
    enif_cond_signal(d->wake);
    enif_cond_broadcast(priv->changed);
    enif_mutex_unlock(priv->lock);
    enif_release_resource(m); /* the delivery's reference; ERTS holds one during this call */
}

/* Ends the monitor of `d' unless it is over or another call is at it. Called with d pinned,
 * priv->lock not held, on a scheduler thread. */
static void delivery_demonitor(ErlNifEnv *env, emf_nif_delivery *d) {
    emf_nif_priv *priv = d->priv;
    enif_mutex_lock(priv->lock);
    bool attempt = !d->monitor_done && !d->demonitoring;
    emf_nif_handle *m = d->monitor;
    if (attempt) {
        d->demonitoring = true;
        enif_keep_resource(m); /* the down callback may release the delivery's reference */
    }
    enif_mutex_unlock(priv->lock);
    if (!attempt) {
        return;
    }
    int rc = enif_demonitor_process(env, m, &d->mon);
    enif_mutex_lock(priv->lock);
    d->demonitoring = false;
    if (rc == 0) {
        d->monitor_done = true; /* the down callback will not run */
    }
    enif_cond_broadcast(priv->changed);
    enif_mutex_unlock(priv->lock);
    if (rc == 0) {
        enif_release_resource(m); /* the delivery's reference */
    }
    enif_release_resource(m);     /* ours */
}

/* Finds the delivery of `ref' and pins it; NULL when there is none (any more). */
static emf_nif_delivery *delivery_pin(emf_nif_priv *priv, ERL_NIF_TERM ref) {
    enif_mutex_lock(priv->lock);
    emf_nif_delivery *d;
    for (d = priv->deliveries; d != NULL; d = d->next) {
        if (enif_is_identical(d->tag, ref)) {
            d->pins++;
            break;
        }
    }
    enif_mutex_unlock(priv->lock);
    return d;
}

static void delivery_unpin(emf_nif_delivery *d) {
    emf_nif_priv *priv = d->priv;
    enif_mutex_lock(priv->lock);
    d->pins--;
    enif_cond_broadcast(priv->changed);
    enif_mutex_unlock(priv->lock);
}

/* Starts the reaper of this load if it is not running; priv->lock held. */
static bool reaper_ensure(emf_nif_priv *priv) {
    if (priv->reaper_started) {
        return true;
    }
    ErlNifThreadOpts *opts = enif_thread_opts_create("erlmcp_flow_reaper");
    if (opts == NULL) {
        return false;
    }
    opts->suggested_stack_size = 16;
    char name[] = "erlmcp_flow_reaper";
    priv->reaper_started = enif_thread_create(name, &priv->reaper, reaper_main, priv, opts) == 0;
    enif_thread_opts_destroy(opts);
    return priv->reaper_started;
}

/* deliver(Consumer, Pid, MaxFrames, MaxBytes, Window, PollMs) -> {ok, Ref} */
static ERL_NIF_TERM nif_deliver(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_priv *priv = enif_priv_data(env);
    ErlNifPid owner;
    size_t max_frames, max_bytes, window = 0;
    uint32_t poll_ms;
    if (!enif_get_local_pid(env, argv[1], &owner)) {
        return argument_error(env, "pid: expected a local pid");
    }
    if (!get_size(env, argv[2], &max_frames) || max_frames == 0
        || max_frames > EMF_NIF_DELIVERY_MAX_FRAMES) {
        return argument_error(env, "max_frames: expected an integer from 1 to 65536");
    }
    if (!get_size(env, argv[3], &max_bytes) || max_bytes < EMF_NIF_DELIVERY_MIN_BYTES
        || max_bytes > EMF_NIF_DELIVERY_MAX_BYTES) {
        return argument_error(env, "max_bytes: expected an integer from 64 to 67108864");
    }
    if (!enif_is_identical(argv[4], atom_infinity)
        && (!get_size(env, argv[4], &window) || window == 0)) {
        return argument_error(env, "window: expected a positive integer or infinity");
    }
    if (!get_u32(env, argv[5], &poll_ms) || poll_ms == 0
        || poll_ms > EMF_NIF_DELIVERY_MAX_POLL_MS) {
        return argument_error(env, "poll_ms: expected an integer from 1 to 60000");
    }
    void *obj;
    if (!enif_get_resource(env, argv[0], handle_type(env, &consumer_kind), &obj)) {
        return not_a_handle(env, argv[0], consumer_kind.expected, consumer_kind.not_this_version);
    }
    /* Checked before the consumer is taken (the monitor below decides, though). */
    if (!enif_is_process_alive(env, &owner)) {
        return shim_error(env, EMF_ERR_NOT_FOUND, "pid: the process is not alive");
    }
    enif_mutex_lock(priv->lock);
    bool reaper = reaper_ensure(priv);
    enif_mutex_unlock(priv->lock);
    if (!reaper) {
        return shim_error(env, EMF_ERR_UNSUPPORTED, "cannot start the reaper thread");
    }
    emf_nif_delivery *d = enif_alloc(sizeof *d);
    if (d == NULL) {
        return shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
    }
    memset(d, 0, sizeof *d);
    d->priv = priv;
    d->owner = owner;
    d->max_frames = max_frames;
    d->max_bytes = max_bytes;
    d->window = window;
    d->credit = window;
    d->poll_ms = poll_ms;
    d->pins = 1; /* this call's */
    d->tag_env = enif_alloc_env();
    d->wake = enif_cond_create("erlmcp_flow_delivery");
    if (d->tag_env == NULL || d->wake == NULL) {
        delivery_free(d);
        return shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
    }
    d->tag = enif_make_ref(d->tag_env);
    d->monitor = handle_alloc(env, &delivery_kind, d, 0, 0);
    if (d->monitor == NULL) {
        delivery_free(d);
        return shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
    }
    /* The consumer is the thread's from now on; its handle is closed. */
    bool busy = false;
    d->consumer = handle_take(obj, &busy);
    if (d->consumer == NULL) {
        enif_release_resource(d->monitor);
        delivery_free(d);
        return busy ? shim_error(env, EMF_ERR_BUSY, "consumer: in use by another call")
                    : shim_error(env, EMF_ERR_CLOSED, consumer_kind.closed);
    }
    /* The delivery's messages are flow control, not acknowledgements: the thread releases
     * every frame it takes (auto mode). A consumer in manual mode, which would never release
     * anything here, is switched to auto, which acknowledges what it received before. */
    emf_status_t ack_st = emf_consumer_set_ack_mode(d->consumer, EMF_ACK_AUTO);
    if (ack_st != EMF_OK) {
        report_impossible("emf_consumer_set_ack_mode", ack_st);
    }
    int rc = enif_monitor_process(env, d->monitor, &owner, &d->mon);
    if (rc != 0) {
        emf_status_t st = emf_consumer_free(d->consumer);
        if (st != EMF_OK) {
            report_impossible("emf_consumer_free", st);
        }
        enif_release_resource(d->monitor);
        delivery_free(d);
        return rc > 0 ? shim_error(env, EMF_ERR_NOT_FOUND, "pid: the process is not alive")
                      : shim_error(env, EMF_ERR_UNSUPPORTED, "cannot monitor the process");
    }
    /* From here on the owner's down callback may stop the delivery at any time; the pin keeps
     * it from being freed before this call returns. */
    enif_mutex_lock(priv->lock);
    d->next = priv->deliveries;
    priv->deliveries = d;
    priv->delivery_count++;
    d->thread_started = true;
    enif_mutex_unlock(priv->lock);
    ErlNifThreadOpts *opts = enif_thread_opts_create("erlmcp_flow_delivery");
    rc = -1;
    if (opts != NULL) {
        char name[] = "erlmcp_flow_delivery";
        opts->suggested_stack_size = EMF_NIF_DELIVERY_STACK_KWORDS;
        rc = enif_thread_create(name, &d->tid, delivery_main, d, opts);
        enif_thread_opts_destroy(opts);
    }
    if (rc != 0) {
        emf_status_t st = emf_consumer_free(d->consumer);
        if (st != EMF_OK) {
            report_impossible("emf_consumer_free", st);
        }
        d->consumer = NULL;
        enif_mutex_lock(priv->lock);
        d->stop = true;
        d->thread_done = true;
        d->joined = true;
        enif_mutex_unlock(priv->lock);
        delivery_demonitor(env, d);
        delivery_unpin(d);
        return shim_error(env, EMF_ERR_UNSUPPORTED, "cannot start the delivery thread");
    }
    ERL_NIF_TERM ref = enif_make_copy(env, d->tag);
    delivery_unpin(d);
    return make_ok(env, ref);
}

/* deliver_ack(Ref) -> ok: one more message may be sent (up to the window). Acks of a
 * delivery that has ended are ignored. */
static ERL_NIF_TERM nif_deliver_ack(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_priv *priv = enif_priv_data(env);
    if (!enif_is_ref(env, argv[0])) {
        return argument_error(env, "ref: expected the reference from deliver/2,3");
    }
    enif_mutex_lock(priv->lock);
    for (emf_nif_delivery *d = priv->deliveries; d != NULL; d = d->next) {
        if (enif_is_identical(d->tag, argv[0])) {
            if (d->window > 0 && d->credit < d->window) {
                d->credit++;
                enif_cond_signal(d->wake);
            }
            break;
        }
    }
    enif_mutex_unlock(priv->lock);
    return atom_ok;
}

/* deliver_stop(Ref) -> ok: stops a delivery and waits (dirty I/O, at most about poll_ms) for
 * its thread to end, so no message comes after this returns. Idempotent. */
static ERL_NIF_TERM deliver_stop_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_priv *priv = enif_priv_data(env);
    emf_nif_delivery *d = delivery_pin(priv, argv[0]);
    if (d == NULL) {
        return atom_ok;
    }
    enif_mutex_lock(priv->lock);
    d->stop = true;
    enif_cond_signal(d->wake);
    while (d->thread_started && !d->thread_done) {
        enif_cond_wait(priv->changed, priv->lock);
    }
    enif_mutex_unlock(priv->lock);
    delivery_demonitor(env, d);
    delivery_unpin(d);
    return atom_ok;
}

static ERL_NIF_TERM nif_deliver_stop(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    if (!enif_is_ref(env, argv[0])) {
        return argument_error(env, "ref: expected the reference from deliver/2,3");
    }
    return schedule_dirty_io(env, "deliver_stop", deliver_stop_impl, argc, argv);
}

/* deliveries() -> Count: deliveries of this load not reaped yet (running, or ended and not
 * yet joined and freed). For tests and monitoring. */
static ERL_NIF_TERM nif_deliveries(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    (void)argv;
    emf_nif_priv *priv = enif_priv_data(env);
    enif_mutex_lock(priv->lock);
    size_t n = priv->delivery_count;
    enif_mutex_unlock(priv->lock);
    return enif_make_uint64(env, (ErlNifUInt64)n);
}

/* ------------------------------------------------------------------------------------------ */
/* Router                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/*
 * A router (emf_router_t) sends to agents' inbox rings by name and keeps one producer per
 * agent it has sent to. It is a one-thread-at-a-time object in the engine (a second caller at
 * the same moment gets {error, {busy, _}}): erlmcp_flow_router keeps it in one gen_server.
 *
 * Scheduling: creating a router and (un)registering agents touch the file system (dirty I/O).
 * A send runs on the calling scheduler when the caller says that the router is attached to the
 * agent's inbox already (`Attached', a hint: the first send to an agent opens its ring file)
 * and its work is small (as for producer sends), else on a dirty I/O or CPU scheduler.
 */

/* Names (agents, keys) up to this length are copied to the stack. */
#define EMF_NIF_NAME_STACK_BUF 256

/* A name argument as a NUL-terminated string: in `stack' (`cap' bytes) when it fits, else in
 * *heap (release it with enif_free; NULL when unused). NULL when the term is not bytes, holds
 * a NUL byte, or memory ran out. Iodata is flattened: pass a binary on a normal scheduler. */
static const char *get_name(ErlNifEnv *env, ERL_NIF_TERM term, char *stack, size_t cap,
                            char **heap) {
    ErlNifBinary bin;
    *heap = NULL;
    if (!get_bytes(env, term, &bin) || (bin.size > 0 && memchr(bin.data, 0, bin.size) != NULL)) {
        return NULL;
    }
    char *s = stack;
    if (bin.size >= cap) {
        s = *heap = enif_alloc(bin.size + 1);
        if (s == NULL) {
            return NULL;
        }
    }
    if (bin.size > 0) {
        memcpy(s, bin.data, bin.size);
    }
    s[bin.size] = '\0';
    return s;
}

/* router_new(Dir | undefined, InboxCapacity) -> {ok, Router} */
static ERL_NIF_TERM router_new_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    size_t capacity;
    if (!get_size(env, argv[1], &capacity)) {
        return argument_error(env, "inbox_capacity: expected a non-negative integer (0: 1 MiB)");
    }
    char *dir = NULL;
    if (!enif_is_identical(argv[0], atom_undefined)) {
        dir = get_cstring(env, argv[0]);
        if (dir == NULL) {
            return argument_error(env, "dir: expected a path (binary or string) without NUL");
        }
    }
    emf_router_t *r = NULL;
    emf_status_t st = emf_router_new(dir, capacity, &r);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, handle_wrap(env, &router_kind, r, 0))
                                       : status_error(env, st);
    enif_free(dir);
    return result;
}

static ERL_NIF_TERM nif_router_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "router_new", router_new_impl, argc, argv);
}

/* router_close(Router) -> ok: frees the router (its producers detach) now; idempotent. */
static ERL_NIF_TERM router_close_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    void *obj;
    if (!enif_get_resource(env, argv[0], handle_type(env, &router_kind), &obj)) {
        return not_a_handle(env, argv[0], router_kind.expected, router_kind.not_this_version);
    }
    (void)handle_close(obj, &router_kind);
    return atom_ok;
}

static ERL_NIF_TERM nif_router_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "router_close", router_close_impl, argc, argv);
}

#define EMF_NIF_AGENT_ERROR "agent: expected a name (binary or string) without NUL"

/* router_register_agent(Router, Agent) -> {ok, Consumer}: the agent's inbox consumer. */
static ERL_NIF_TERM router_register_agent_impl(ErlNifEnv *env, int argc,
                                               const ERL_NIF_TERM argv[]) {
    (void)argc;
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *agent = get_name(env, argv[1], stack, sizeof stack, &heap);
    if (agent == NULL) {
        return argument_error(env, EMF_NIF_AGENT_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &router_kind, &h, &result)) {
        emf_consumer_t *c = NULL;
        emf_status_t st = emf_router_register_agent(h->ptr, agent, &c);
        result = st == EMF_OK ? make_ok(env, handle_new(env, &consumer_kind, c, 0, 0))
                              : status_error(env, st);
        handle_leave(h, &router_kind);
    }
    enif_free(heap);
    return result;
}

static ERL_NIF_TERM nif_router_register_agent(ErlNifEnv *env, int argc,
                                              const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "router_register_agent", router_register_agent_impl, argc,
                             argv);
}

/* router_unregister_agent(Router, Agent) -> ok: removes the agent's inbox. */
static ERL_NIF_TERM router_unregister_agent_impl(ErlNifEnv *env, int argc,
                                                 const ERL_NIF_TERM argv[]) {
    (void)argc;
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *agent = get_name(env, argv[1], stack, sizeof stack, &heap);
    if (agent == NULL) {
        return argument_error(env, EMF_NIF_AGENT_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &router_kind, &h, &result)) {
        emf_status_t st = emf_router_unregister_agent(h->ptr, agent);
        result = st == EMF_OK ? atom_ok : status_error(env, st);
        handle_leave(h, &router_kind);
    }
    enif_free(heap);
    return result;
}

static ERL_NIF_TERM nif_router_unregister_agent(ErlNifEnv *env, int argc,
                                                const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "router_unregister_agent", router_unregister_agent_impl, argc,
                             argv);
}

/* True when a router send may run on the calling scheduler as far as its agent goes: the
 * router is attached to the inbox (the hint argument) and the agent name is a binary. */
static bool router_send_inline(ErlNifEnv *env, ERL_NIF_TERM agent, ERL_NIF_TERM attached) {
    bool a = false;
    return get_bool(attached, &a) && a && enif_is_binary(env, agent);
}

/* router_send_direct(Router, Agent, Data, Attached) -> ok | {error, {full | not_found, _}} */
static ERL_NIF_TERM router_send_direct_impl(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    (void)argc;
    bool attached;
    ErlNifBinary data;
    if (!get_bool(argv[3], &attached)) {
        return argument_error(env, "attached: expected true or false");
    }
    if (!get_bytes(env, argv[2], &data)) {
        return argument_error(env, "data: expected a binary or iodata");
    }
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *agent = get_name(env, argv[1], stack, sizeof stack, &heap);
    if (agent == NULL) {
        return argument_error(env, EMF_NIF_AGENT_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &router_kind, &h, &result)) {
        emf_status_t st = emf_router_send_direct(h->ptr, agent, data.data, data.size);
        result = st == EMF_OK ? atom_ok : status_error(env, st);
        handle_leave(h, &router_kind);
    }
    enif_free(heap);
    return result;
}

static ERL_NIF_TERM nif_router_send_direct(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    if (!router_send_inline(env, argv[1], argv[3])) {
        return schedule_dirty_io(env, "router_send_direct", router_send_direct_impl, argc, argv);
    }
    return run_by_cost(env, "router_send_direct", router_send_direct_impl,
                       bytes_cost(env, argv[2]), EMF_NIF_RING_DIRTY_BYTES, argc, argv);
}

/* router_send_batch(Router, Agent, [Data], Attached) -> {ok, Accepted}: the first Accepted
 * messages were sent, in order; the others were not (back-pressure) and stay the caller's. */
static ERL_NIF_TERM router_send_batch_impl(ErlNifEnv *env, int argc,
                                           const ERL_NIF_TERM argv[]) {
    bool attached;
    if (!get_bool(argv[3], &attached)) {
        return argument_error(env, "attached: expected true or false");
    }
    bool normal = on_normal_scheduler();
    if (normal && !router_send_inline(env, argv[1], argv[3])) {
        return schedule_dirty_io(env, "router_send_batch", router_send_batch_impl, argc, argv);
    }
    size_t n = 0;
    emf_nif_frames f = frames_count(env, argv[2], normal, &n);
    if (f == EMF_NIF_FRAMES_DIRTY) {
        return schedule_dirty_cpu(env, "router_send_batch", router_send_batch_impl, argc, argv);
    }
    if (f != EMF_NIF_FRAMES_OK) {
        return frames_error(env, f);
    }
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *agent = get_name(env, argv[1], stack, sizeof stack, &heap);
    if (agent == NULL) {
        return argument_error(env, EMF_NIF_AGENT_ERROR);
    }
    emf_slice_t stack_slices[EMF_NIF_BATCH_STACK_SLICES];
    ERL_NIF_TERM result;
    emf_slice_t *slices = frames_slices(env, argv[2], n, stack_slices, &result);
    if (slices == NULL) {
        enif_free(heap);
        return result;
    }
    emf_nif_handle *h;
    if (handle_use(env, argv[0], &router_kind, &h, &result)) {
        size_t accepted = 0;
        emf_status_t st = emf_router_send_batch(h->ptr, agent, slices, n, &accepted);
        if (st == EMF_OK) {
            result = make_ok(env, enif_make_uint64(env, (ErlNifUInt64)accepted));
        } else if (st == EMF_ERR_FULL) {
            result = make_ok(env, enif_make_uint(env, 0)); /* none accepted */
        } else {
            result = status_error(env, st);
        }
        handle_leave(h, &router_kind);
    }
    frames_free(slices, stack_slices);
    enif_free(heap);
    return result;
}

static ERL_NIF_TERM nif_router_send_batch(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return router_send_batch_impl(env, argc, argv);
}

/* ------------------------------------------------------------------------------------------ */
/* Batch processors                                                                           */
/* ------------------------------------------------------------------------------------------ */

/*
 * A batch processor (emf_batch_t) collects messages for one ring and sends them as one batch
 * through a producer of its own: on size, on timeout (emf_batch_tick, called from a timer),
 * on demand, and at once when the ring's consumer is idle. The engine decides; this shim
 * reports what happened, with the pending count and the milliseconds until the timeout flush
 * (emf_batch_pending) so that the owner can arm its timer without a second call. It is a
 * one-thread-at-a-time object: erlmcp_flow_batch_processor keeps it in one gen_server.
 *
 * Scheduling: creating and closing attach and detach a producer (dirty I/O). A send, tick or
 * flush may copy every pending message into the ring; the handle keeps an upper bound of the
 * pending bytes (`load': increased by each message queued, reset when nothing is pending), and
 * the call runs on a dirty CPU scheduler when that bound plus the new message exceed
 * EMF_NIF_RING_DIRTY_BYTES.
 *
 * Closing. batch_close frees the processor after a last flush, and refuses when messages could
 * not be sent (EMF_ERR_FULL from emf_batch_free: the handle stays usable; flush later or drop
 * them knowingly with batch_discard). A processor collected by the garbage collector (its
 * owner died without closing it) sends what fits and drops the rest.
 */

static ERL_NIF_TERM flush_atom(ErlNifEnv *env, uint32_t code) {
    return code < EMF_NIF_FLUSH_CODES ? flush_atoms[code] : enif_make_uint(env, code);
}

/* The pending-bytes bound of a batch handle argument, 0 when it is not one. */
static size_t batch_load(ErlNifEnv *env, ERL_NIF_TERM term) {
    void *obj;
    if (!enif_get_resource(env, term, handle_type(env, &batch_kind), &obj)) {
        return 0;
    }
    return atomic_load_explicit(&((emf_nif_handle *)obj)->load, memory_order_relaxed);
}

/* {ok, First, Pending, DueMs} after a successful call on batch `h' that queued `added' bytes;
 * updates the pending-bytes bound. */
static ERL_NIF_TERM batch_result(ErlNifEnv *env, emf_nif_handle *h, ERL_NIF_TERM first,
                                 size_t added) {
    size_t pending = 0;
    int64_t due = -1;
    emf_status_t st = emf_batch_pending(h->ptr, &pending, &due);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    if (pending == 0) {
        atomic_store_explicit(&h->load, 0, memory_order_relaxed);
    } else if (added > 0) {
        size_t old = atomic_load_explicit(&h->load, memory_order_relaxed);
        atomic_store_explicit(&h->load, sat_add(old, added), memory_order_relaxed);
    }
    return enif_make_tuple4(env, atom_ok, first, enif_make_uint64(env, (ErlNifUInt64)pending),
                            enif_make_int64(env, due));
}

/* batch_new(Ring, BatchSize, TimeoutMs, MaxPending) -> {ok, Batch}; 0 takes the engine's
 * default (100, 10 ms, 10000). */
static ERL_NIF_TERM batch_new_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    size_t batch_size, max_pending;
    uint32_t timeout_ms;
    if (!get_size(env, argv[1], &batch_size)) {
        return argument_error(env, "batch_size: expected a non-negative integer (0: 100)");
    }
    if (!get_u32(env, argv[2], &timeout_ms)) {
        return argument_error(env, "batch_timeout: expected a 32-bit non-negative integer "
                                   "(0: 10 ms)");
    }
    if (!get_size(env, argv[3], &max_pending)) {
        return argument_error(env, "max_pending: expected a non-negative integer (0: 10000)");
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &ring_kind, &h, &result)) {
        return result;
    }
    emf_batch_t *b = NULL;
    emf_status_t st = emf_batch_new(h->ptr, batch_size, timeout_ms, max_pending, &b);
    result = st == EMF_OK ? make_ok(env, handle_wrap(env, &batch_kind, b, 0))
                          : status_error(env, st);
    handle_leave(h, &ring_kind);
    return result;
}

static ERL_NIF_TERM nif_batch_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "batch_new", batch_new_impl, argc, argv);
}

/* batch_send(Batch, Data) -> {ok, Flush, Pending, DueMs}; {error, {full, _}} when max_pending
 * messages are waiting (the message was not queued). */
static ERL_NIF_TERM batch_send_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary data;
    if (!get_bytes(env, argv[1], &data)) {
        return argument_error(env, "data: expected a binary or iodata");
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &batch_kind, &h, &result)) {
        return result;
    }
    uint32_t flush = EMF_FLUSH_NONE;
    emf_status_t st = emf_batch_send(h->ptr, data.data, data.size, &flush);
    result = st == EMF_OK ? batch_result(env, h, flush_atom(env, flush), data.size)
                          : status_error(env, st);
    handle_leave(h, &batch_kind);
    return result;
}

static ERL_NIF_TERM nif_batch_send(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "batch_send", batch_send_impl,
                       sat_add(batch_load(env, argv[0]), bytes_cost(env, argv[1])),
                       EMF_NIF_RING_DIRTY_BYTES, argc, argv);
}

/* batch_tick(Batch) -> {ok, Flush, Pending, DueMs}: the timeout flush when it is due. */
static ERL_NIF_TERM batch_tick_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &batch_kind, &h, &result)) {
        return result;
    }
    uint32_t flush = EMF_FLUSH_NONE;
    emf_status_t st = emf_batch_tick(h->ptr, &flush);
    result = st == EMF_OK ? batch_result(env, h, flush_atom(env, flush), 0)
                          : status_error(env, st);
    handle_leave(h, &batch_kind);
    return result;
}

static ERL_NIF_TERM nif_batch_tick(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "batch_tick", batch_tick_impl, batch_load(env, argv[0]),
                       EMF_NIF_RING_DIRTY_BYTES, argc, argv);
}

/* batch_flush(Batch) -> {ok, Sent, Pending, DueMs}: sends everything pending that fits. */
static ERL_NIF_TERM batch_flush_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &batch_kind, &h, &result)) {
        return result;
    }
    size_t sent = 0;
    emf_status_t st = emf_batch_flush(h->ptr, &sent);
    result = st == EMF_OK ? batch_result(env, h, enif_make_uint64(env, (ErlNifUInt64)sent), 0)
                          : status_error(env, st);
    handle_leave(h, &batch_kind);
    return result;
}

static ERL_NIF_TERM nif_batch_flush(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "batch_flush", batch_flush_impl, batch_load(env, argv[0]),
                       EMF_NIF_RING_DIRTY_BYTES, argc, argv);
}

/* batch_pending(Batch) -> {ok, Pending, DueMs} (DueMs -1: nothing pending, 0: overdue) */
static ERL_NIF_TERM nif_batch_pending(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &batch_kind, &h, &result)) {
        return result;
    }
    size_t pending = 0;
    int64_t due = -1;
    emf_status_t st = emf_batch_pending(h->ptr, &pending, &due);
    result = st == EMF_OK ? enif_make_tuple3(env, atom_ok,
                                             enif_make_uint64(env, (ErlNifUInt64)pending),
                                             enif_make_int64(env, due))
                          : status_error(env, st);
    handle_leave(h, &batch_kind);
    return result;
}

/* Takes the engine handle out of the batch argument for a free: NULL with *error set when the
 * term is no batch handle, is closed (*closed set), or a call is inside. */
static void *batch_take(ErlNifEnv *env, ERL_NIF_TERM term, emf_nif_handle **out, bool *closed,
                        ERL_NIF_TERM *error) {
    void *obj;
    *closed = false;
    if (!enif_get_resource(env, term, handle_type(env, &batch_kind), &obj)) {
        *error = not_a_handle(env, term, batch_kind.expected, batch_kind.not_this_version);
        return NULL;
    }
    bool busy = false;
    void *ptr = handle_take(obj, &busy);
    if (ptr == NULL) {
        *closed = !busy;
        *error = busy ? shim_error(env, EMF_ERR_BUSY, "batch: in use by another call")
                      : shim_error(env, EMF_ERR_CLOSED, batch_kind.closed);
    }
    *out = obj;
    return ptr;
}

/* Puts back an engine handle that batch_take took and the engine did not free. */
static void batch_untake(emf_nif_handle *h, void *ptr) {
    h->ptr = ptr;
    atomic_store_explicit(&h->use, 0, memory_order_release);
}

/* batch_close(Batch) -> ok: flushes and frees the processor. {error, {full, _}} when messages
 * could not be sent: nothing was freed, the handle stays usable. Closing a closed handle is
 * ok. */
static ERL_NIF_TERM batch_close_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h = NULL;
    bool closed;
    ERL_NIF_TERM error;
    void *ptr = batch_take(env, argv[0], &h, &closed, &error);
    if (ptr == NULL) {
        return closed ? atom_ok : error;
    }
    emf_status_t st = emf_batch_free(ptr);
    if (st == EMF_OK) {
        return atom_ok;
    }
    ERL_NIF_TERM result = status_error(env, st);
    batch_untake(h, ptr);
    return result;
}

static ERL_NIF_TERM nif_batch_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "batch_close", batch_close_impl, argc, argv);
}

/* batch_discard(Batch) -> {ok, Discarded}: frees the processor and the messages it holds. */
static ERL_NIF_TERM batch_discard_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h = NULL;
    bool closed;
    ERL_NIF_TERM error;
    void *ptr = batch_take(env, argv[0], &h, &closed, &error);
    if (ptr == NULL) {
        return error;
    }
    size_t discarded = 0;
    emf_status_t st = emf_batch_discard(ptr, &discarded);
    if (st != EMF_OK) {
        ERL_NIF_TERM result = status_error(env, st);
        batch_untake(h, ptr);
        return result;
    }
    return make_ok(env, enif_make_uint64(env, (ErlNifUInt64)discarded));
}

static ERL_NIF_TERM nif_batch_discard(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "batch_discard", batch_discard_impl, argc, argv);
}

/* ------------------------------------------------------------------------------------------ */
/* Shared state                                                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * Shared state (emf_state_*): values published under keys in a store (a name and a
 * directory), each value in a segment file of its own, read in place by any process of the
 * machine. Every call touches the file system (a value is a file, a key a file naming the
 * value's reference), so all of them but state_open run on dirty I/O schedulers.
 *
 * Reading. A value below EMF_NIF_STATE_ZERO_COPY_MIN bytes is copied into a new binary and
 * its mapping released at once. A larger one becomes a resource binary over the mapping
 * (enif_make_resource_binary): no copy, and the mapping lives exactly as long as the binary
 * and its sub-binaries. Each mapping takes one of the segment's 128 attach slots, which every
 * process of the machine shares, so this load maps each value once: a table (emf_nif_shared,
 * by store identity and reference) counts the binary owners of each mapping. A read of a value
 * mapped already still asks the engine (emf_state_read: not_found after a release or a
 * replacement, as for any read), then frees the new mapping and hands out the one it has. The
 * last owner's destructor unmaps it.
 *
 * A published value is never written again (engine contract), as Erlang binaries require; a
 * process that rewrote or truncated a value's file behind the engine's back would break the
 * binaries over it, as it would break the engine's own readers.
 */

#define EMF_NIF_STATE_ZERO_COPY_MIN ((size_t)64 * 1024)

/* One shared value mapped by this load. */
typedef struct emf_nif_shared {
    struct emf_nif_shared *next; /* in its bucket of priv->shared */
    emf_nif_priv *priv;
    uint64_t ref;
    emf_state_value_t *value;
    const uint8_t *data;
    size_t len;
    size_t owners;               /* state_value_kind objects over it; under priv->shared_lock */
    size_t id_len;
    char id[];                   /* the identity of its store (emf_nif_store.id) */
} emf_nif_shared;

static size_t shared_bucket(const char *id, size_t id_len, uint64_t ref) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < id_len; i++) {
        h = (h ^ (uint8_t)id[i]) * 0x100000001b3ull;
    }
    h = (h ^ ref) * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 32) % EMF_NIF_SHARED_BUCKETS;
}

/* The mapping of (`store', `ref') with one more owner: the one this load has (then `value',
 * just read, is freed), else `value' itself in a new entry. NULL when memory ran out (`value'
 * freed). */
static emf_nif_shared *shared_adopt(emf_nif_priv *priv, const emf_nif_store *store, uint64_t ref,
                                    emf_state_value_t *value, const uint8_t *data, size_t len) {
    size_t b = shared_bucket(store->id, store->id_len, ref);
    emf_nif_shared *e;
    enif_mutex_lock(priv->shared_lock);
    for (e = priv->shared[b]; e != NULL; e = e->next) {
        /* The length check guards against a reference reused after its value was released
         * (references are random 64-bit numbers: a new value would have to draw the same). */
        if (e->ref == ref && e->len == len && e->id_len == store->id_len
            && memcmp(e->id, store->id, store->id_len) == 0) {
            e->owners++;
            break;
        }
    }
    if (e == NULL) {
        e = enif_alloc(sizeof *e + store->id_len);
        if (e != NULL) {
            e->priv = priv;
            e->ref = ref;
            e->value = value;
            e->data = data;
            e->len = len;
            e->owners = 1;
            e->id_len = store->id_len;
            memcpy(e->id, store->id, store->id_len);
            e->next = priv->shared[b];
            priv->shared[b] = e;
            priv->shared_count++;
            value = NULL; /* the entry's now */
        }
    }
    enif_mutex_unlock(priv->shared_lock);
    if (value != NULL) {
        emf_status_t st = emf_state_value_free(value);
        if (st != EMF_OK) {
            report_impossible("emf_state_value_free", st);
        }
    }
    return e;
}

/* One owner of a mapping is gone (a resource destructor); the last one unmaps it. */
static emf_status_t release_shared(void *ptr) {
    emf_nif_shared *e = ptr;
    emf_nif_priv *priv = e->priv;
    enif_mutex_lock(priv->shared_lock);
    bool last = --e->owners == 0;
    if (last) {
        emf_nif_shared **pp = &priv->shared[shared_bucket(e->id, e->id_len, e->ref)];
        while (*pp != e) {
            pp = &(*pp)->next;
        }
        *pp = e->next;
        priv->shared_count--;
    }
    enif_mutex_unlock(priv->shared_lock);
    if (!last) {
        return EMF_OK;
    }
    emf_status_t st = emf_state_value_free(e->value);
    enif_free(e);
    return st;
}

/* state_open(Name, Dir | undefined) -> {ok, Store}. The engine only checks the name here
 * (nothing touches the file system), so binaries are read on the calling scheduler. */
static ERL_NIF_TERM state_open_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    char *dir = NULL;
    if (!enif_is_identical(argv[1], atom_undefined)) {
        dir = get_cstring(env, argv[1]);
        if (dir == NULL) {
            return argument_error(env, "dir: expected a path (binary or string) without NUL");
        }
    }
    char *name = get_cstring(env, argv[0]);
    if (name == NULL) {
        enif_free(dir);
        return argument_error(env, "name: expected a binary or string without NUL");
    }
    emf_state_store_t *store = NULL;
    emf_status_t st = emf_state_open(name, dir, &store);
    ERL_NIF_TERM result;
    if (st != EMF_OK) {
        result = status_error(env, st);
    } else {
        size_t name_len = strlen(name), dir_len = dir != NULL ? strlen(dir) : 0;
        emf_nif_store *s = enif_alloc(sizeof *s + name_len + 1 + dir_len);
        if (s == NULL) {
            st = emf_state_free(store);
            if (st != EMF_OK) {
                report_impossible("emf_state_free", st);
            }
            result = shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
        } else {
            s->store = store;
            s->id_len = name_len + 1 + dir_len;
            memcpy(s->id, name, name_len + 1);
            if (dir_len > 0) {
                memcpy(s->id + name_len + 1, dir, dir_len);
            }
            result = make_ok(env, handle_wrap(env, &store_kind, s, 0));
        }
    }
    enif_free(name);
    enif_free(dir);
    return result;
}

static ERL_NIF_TERM nif_state_open(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    if (enif_is_binary(env, argv[0])
        && (enif_is_binary(env, argv[1]) || enif_is_identical(argv[1], atom_undefined))) {
        return state_open_impl(env, argc, argv);
    }
    return schedule_dirty_io(env, "state_open", state_open_impl, argc, argv);
}

/* Reads the store handle argument `term', or returns false and sets `*error'. */
static bool get_store(ErlNifEnv *env, ERL_NIF_TERM term, emf_nif_store **out,
                      ERL_NIF_TERM *error) {
    emf_nif_handle *h;
    if (!handle_get(env, term, &store_kind, &h)) {
        *error = not_a_handle(env, term, store_kind.expected, store_kind.not_this_version);
        return false;
    }
    *out = h->ptr;
    return true;
}

#define EMF_NIF_KEY_ERROR "key: expected a binary or string without NUL"

/* state_share(Store, Key, Value) -> {ok, Ref}: publishes Value under Key (the key's previous
 * reference is retired). */
static ERL_NIF_TERM state_share_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_store *s;
    ERL_NIF_TERM error;
    ErlNifBinary value;
    if (!get_store(env, argv[0], &s, &error)) {
        return error;
    }
    if (!get_bytes(env, argv[2], &value)) {
        return argument_error(env, "value: expected a binary or iodata");
    }
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *key = get_name(env, argv[1], stack, sizeof stack, &heap);
    if (key == NULL) {
        return argument_error(env, EMF_NIF_KEY_ERROR);
    }
    uint64_t ref = 0;
    emf_status_t st = emf_state_share(s->store, key, value.data, value.size, &ref);
    enif_free(heap);
    return st == EMF_OK ? make_ok(env, enif_make_uint64(env, ref)) : status_error(env, st);
}

static ERL_NIF_TERM nif_state_share(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "state_share", state_share_impl, argc, argv);
}

/* state_lookup(Store, Key) -> {ok, Ref} | {error, {not_found, _}} */
static ERL_NIF_TERM state_lookup_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_store *s;
    ERL_NIF_TERM error;
    if (!get_store(env, argv[0], &s, &error)) {
        return error;
    }
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *key = get_name(env, argv[1], stack, sizeof stack, &heap);
    if (key == NULL) {
        return argument_error(env, EMF_NIF_KEY_ERROR);
    }
    uint64_t ref = 0;
    emf_status_t st = emf_state_lookup(s->store, key, &ref);
    enif_free(heap);
    return st == EMF_OK ? make_ok(env, enif_make_uint64(env, ref)) : status_error(env, st);
}

static ERL_NIF_TERM nif_state_lookup(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "state_lookup", state_lookup_impl, argc, argv);
}

/* state_read(Store, Ref) -> {ok, Value} | {error, {not_found, _}}: a copy, or a zero-copy
 * binary over the mapping (see above). */
static ERL_NIF_TERM state_read_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_store *s;
    ERL_NIF_TERM error;
    ErlNifUInt64 ref;
    if (!get_store(env, argv[0], &s, &error)) {
        return error;
    }
    if (!enif_get_uint64(env, argv[1], &ref)) {
        return argument_error(env, "ref: expected a state reference (a 64-bit integer)");
    }
    emf_state_value_t *v = NULL;
    emf_status_t st = emf_state_read(s->store, ref, &v);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    const uint8_t *data = NULL;
    size_t len = 0;
    st = emf_state_value_data(v, &data, &len);
    if (st != EMF_OK || len < EMF_NIF_STATE_ZERO_COPY_MIN) {
        ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, make_binary_from(env, data, len))
                                           : status_error(env, st);
        st = emf_state_value_free(v);
        if (st != EMF_OK) {
            report_impossible("emf_state_value_free", st);
        }
        return result;
    }
    emf_nif_shared *e = shared_adopt(enif_priv_data(env), s, ref, v, data, len);
    if (e == NULL) {
        return shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
    }
    emf_nif_handle *owner = handle_alloc(env, &state_value_kind, e, e->len, 0);
    if (owner == NULL) {
        st = release_shared(e);
        if (st != EMF_OK) {
            report_impossible("emf_state_value_free", st);
        }
        return shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
    }
    ERL_NIF_TERM bin = enif_make_resource_binary(env, owner, e->data, e->len);
    enif_release_resource(owner); /* the binary holds the only reference now */
    return make_ok(env, bin);
}

static ERL_NIF_TERM nif_state_read(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "state_read", state_read_impl, argc, argv);
}

/* state_release(Store, Ref) -> ok | {error, {not_found, _}}: retires Ref (current readers keep
 * their value). */
static ERL_NIF_TERM state_release_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_store *s;
    ERL_NIF_TERM error;
    ErlNifUInt64 ref;
    if (!get_store(env, argv[0], &s, &error)) {
        return error;
    }
    if (!enif_get_uint64(env, argv[1], &ref)) {
        return argument_error(env, "ref: expected a state reference (a 64-bit integer)");
    }
    emf_status_t st = emf_state_release(s->store, ref);
    return st == EMF_OK ? atom_ok : status_error(env, st);
}

static ERL_NIF_TERM nif_state_release(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "state_release", state_release_impl, argc, argv);
}

/* state_mapped() -> Count: shared values this load has mapped for zero-copy binaries. For
 * tests and monitoring. */
static ERL_NIF_TERM nif_state_mapped(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    (void)argv;
    emf_nif_priv *priv = enif_priv_data(env);
    enif_mutex_lock(priv->shared_lock);
    size_t n = priv->shared_count;
    enif_mutex_unlock(priv->shared_lock);
    return enif_make_uint64(env, (ErlNifUInt64)n);
}

/* ------------------------------------------------------------------------------------------ */
/* Task queues and caches                                                                     */
/* ------------------------------------------------------------------------------------------ */

/*
 * Task queues (emf_task_queue_*) and LRU caches (emf_cache_*) hold byte strings (the Erlang
 * modules store term_to_binary encodings). Both are thread-safe in the engine: any number of
 * processes use one handle at once, with no lock in this shim.
 *
 * Results. The normal outcomes of these hot paths are atoms rather than errors (no message is
 * built): an enqueue answers ok, backpressure, rejected (nothing was queued: the task stays
 * the caller's) or {evicted, Task, Priority} (the evicted task handed back); a dequeue
 * {ok, Task, Priority} or empty; a cache get {ok, Value} or miss; a remove ok or not_found.
 *
 * Scheduling. Each call copies one task, key or value under a lock of the engine: it runs on
 * the calling scheduler up to EMF_NIF_DIRTY_THRESHOLD bytes of input, else on a dirty CPU
 * scheduler. Tasks of EMF_NIF_BUF_ZERO_COPY_MIN bytes and more come out without a copy, as a
 * binary over the engine's buffer (freed with the binary), so a dequeue or an eviction never
 * copies much on a normal scheduler although the task's size is only known once it is taken.
 * A cache value is copied by emf_cache_get_into into a stack buffer or, when larger, straight
 * into a binary of its size; above EMF_NIF_DIRTY_THRESHOLD bytes that copy moves to a dirty
 * CPU scheduler first. Creating a large cache and sweeping one (both visit every entry or
 * shard) run on a dirty CPU scheduler above EMF_NIF_CACHE_DIRTY_ENTRIES; starting or stopping
 * a sweeper thread (spawn, join) on a dirty I/O scheduler.
 *
 * Closing a queue. queue_close/1 hands back the tasks left and frees the queue at once; later
 * calls get {error, {closed, _}}. So a task is in the list close returns or refused to its
 * caller, never dropped in between: close enters the use guard, sets the CLOSED bit (no call
 * enters after it), waits on a dirty CPU scheduler for the calls inside to leave (they never
 * block: a lock and a copy), then drains and frees the queue. A queue that the garbage
 * collector frees drops what it holds (nobody refers to it any more).
 */

#define EMF_NIF_BUF_ZERO_COPY_MIN ((size_t)64 * 1024)
/* Cache values up to this size are read through a stack buffer. */
#define EMF_NIF_CACHE_STACK_BUF 4096
/* Creating and sweeping a cache visit each entry (or slot) and shard: above this many they
 * run on a dirty CPU scheduler. */
#define EMF_NIF_CACHE_DIRTY_ENTRIES ((size_t)16 * 1024)
/* Limits of cache_new. emf_cache_new preallocates every shard at its full capacity and, when
 * that allocation fails, aborts the whole process (an engine defect: a status cannot be
 * returned from an allocation failure); a capacity of 4e9 entries in one shard kills the VM,
 * and huge shard counts allocate gigabytes for nothing. Larger requests are refused here with
 * invalid_argument until the engine allocates fallibly. */
#define EMF_NIF_CACHE_MAX_CAPACITY ((size_t)1 << 24)
#define EMF_NIF_CACHE_MAX_SHARDS 1024u
/* Close waits for calls inside this many loads of the guard, then reschedules itself. */
#define EMF_NIF_CLOSE_SPINS 4096

/* A task the engine returned, as a binary: copied (and the buffer freed) below
 * EMF_NIF_BUF_ZERO_COPY_MIN bytes; else a binary over the buffer itself, freed with the last
 * reference to the binary. `buf' is emptied either way. */
static ERL_NIF_TERM buf_term(ErlNifEnv *env, emf_buf_t *buf) {
    if (buf->len >= EMF_NIF_BUF_ZERO_COPY_MIN) {
        emf_buf_t *owned = enif_alloc(sizeof *owned);
        if (owned != NULL) {
            *owned = *buf;
            emf_nif_handle *owner = handle_alloc(env, &buf_kind, owned, owned->len, 0);
            if (owner != NULL) {
                ERL_NIF_TERM bin = enif_make_resource_binary(env, owner, owned->data,
                                                             owned->len);
                enif_release_resource(owner); /* the binary holds the only reference now */
                memset(buf, 0, sizeof *buf);
                return bin;
            }
            enif_free(owned);
        }
        /* Out of memory for the owner: copy instead. */
    }
    ERL_NIF_TERM bin = take_buf(env, buf);
    memset(buf, 0, sizeof *buf);
    return bin;
}

static ERL_NIF_TERM priority_term(ErlNifEnv *env, uint32_t code) {
    return code_atom(env, priority_atoms, priority_count, code);
}

#define EMF_NIF_PRIORITY_ERROR "priority: expected critical, high, normal or low"

/* queue_new(MaxPrimary, MaxOverflow, DropPolicy) -> {ok, Queue}: emf_task_queue_new, whose
 * sentinels pass through (MaxPrimary 0: 1000; MaxOverflow 16#FFFFFFFFFFFFFFFF: 10000);
 * DropPolicy is none or low_priority. */
static ERL_NIF_TERM nif_queue_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    size_t max_primary, max_overflow;
    uint32_t drop;
    if (!get_size(env, argv[0], &max_primary)) {
        return argument_error(env, "max_primary: expected a non-negative integer (0: 1000)");
    }
    if (!get_size(env, argv[1], &max_overflow)) {
        return argument_error(env, "max_overflow: expected a non-negative 64-bit integer");
    }
    if (enif_is_identical(argv[2], atom_none)) {
        drop = EMF_DROP_NONE;
    } else if (enif_is_identical(argv[2], atom_low_priority)) {
        drop = EMF_DROP_LOW_PRIORITY;
    } else {
        return argument_error(env, "drop_policy: expected none or low_priority");
    }
    emf_task_queue_t *q = NULL;
    emf_status_t st = emf_task_queue_new(max_primary, max_overflow, drop, &q);
    return st == EMF_OK ? make_ok(env, handle_wrap(env, &queue_kind, q, 0))
                        : status_error(env, st);
}

/* queue_enqueue(Queue, Task, Priority) -> ok | backpressure | rejected
 * | {evicted, EvictedTask, EvictedPriority} */
static ERL_NIF_TERM queue_enqueue_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary task;
    uint32_t priority;
    if (!get_priority(argv[2], &priority)) {
        return argument_error(env, EMF_NIF_PRIORITY_ERROR);
    }
    if (!get_bytes(env, argv[1], &task)) {
        return argument_error(env, "task: expected a binary or iodata");
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &queue_kind, &h, &result)) {
        return result;
    }
    uint32_t answer = 0, evicted_priority = 0;
    emf_buf_t evicted = {0};
    emf_status_t st = emf_task_queue_enqueue(h->ptr, task.data, task.size, priority, &answer,
                                             &evicted, &evicted_priority);
    if (st != EMF_OK) {
        result = status_error(env, st);
    } else {
        switch (answer) {
        case EMF_ENQUEUE_OK: result = atom_ok; break;
        case EMF_ENQUEUE_BACKPRESSURE: result = atom_backpressure; break;
        case EMF_ENQUEUE_REJECTED: result = atom_rejected; break;
        case EMF_ENQUEUE_EVICTED:
            result = enif_make_tuple3(env, atom_evicted, buf_term(env, &evicted),
                                      priority_term(env, evicted_priority));
            break;
        default: {
            /* An answer this shim does not know: ruled out by the ABI version check at load.
             * Reported as an error, never guessed at. */
            char msg[96];
            snprintf(msg, sizeof msg, "emf_task_queue_enqueue: unknown answer %u",
                     (unsigned)answer);
            result = shim_error(env, EMF_ERR_UNSUPPORTED, msg);
            st = emf_buf_free(&evicted);
            if (st != EMF_OK) {
                report_impossible("emf_buf_free", st);
            }
            break;
        }
        }
    }
    handle_leave(h, &queue_kind);
    return result;
}

static ERL_NIF_TERM nif_queue_enqueue(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "queue_enqueue", queue_enqueue_impl, bytes_cost(env, argv[1]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* queue_dequeue(Queue) -> {ok, Task, Priority} | empty */
static ERL_NIF_TERM nif_queue_dequeue(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &queue_kind, &h, &result)) {
        return result;
    }
    emf_buf_t out = {0};
    uint32_t priority = 0;
    emf_status_t st = emf_task_queue_dequeue(h->ptr, &out, &priority);
    if (st == EMF_OK) {
        result = enif_make_tuple3(env, atom_ok, buf_term(env, &out), priority_term(env, priority));
    } else if (st == EMF_ERR_EMPTY) {
        result = atom_empty;
    } else {
        result = status_error(env, st);
    }
    handle_leave(h, &queue_kind);
    return result;
}

/* queue_stats(Queue) -> {ok, #{...}}: emf_task_queue_stats_t. */
static ERL_NIF_TERM nif_queue_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &queue_kind, &h, &result)) {
        return result;
    }
    emf_task_queue_stats_t s;
    emf_status_t st = emf_task_queue_stats(h->ptr, &s);
    if (st != EMF_OK) {
        result = status_error(env, st);
    } else {
        ERL_NIF_TERM keys[] = {atom_depth,   atom_primary_depth, atom_overflow_depth,
                               atom_depth_p99, atom_max_depth,   atom_enqueued,
                               atom_dequeued, atom_spills,       atom_rejections,
                               atom_evictions};
        ERL_NIF_TERM values[] = {
            enif_make_uint64(env, s.depth),      enif_make_uint64(env, s.primary_depth),
            enif_make_uint64(env, s.overflow_depth), enif_make_uint64(env, s.depth_p99),
            enif_make_uint64(env, s.max_depth),  enif_make_uint64(env, s.enqueued),
            enif_make_uint64(env, s.dequeued),   enif_make_uint64(env, s.spills),
            enif_make_uint64(env, s.rejections), enif_make_uint64(env, s.evictions),
        };
        ERL_NIF_TERM map;
        /* Cannot fail: the keys are distinct. */
        (void)enif_make_map_from_arrays(env, keys, values, sizeof keys / sizeof keys[0], &map);
        result = make_ok(env, map);
    }
    handle_leave(h, &queue_kind);
    return result;
}

/* The end of queue_close, once it is the only call inside `h' (CLOSED set): every task left,
 * highest priority first and in order within a priority, then the queue is freed. */
static ERL_NIF_TERM queue_drain_and_free(ErlNifEnv *env, emf_nif_handle *h) {
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (;;) {
        emf_buf_t out = {0};
        uint32_t priority = 0;
        emf_status_t st = emf_task_queue_dequeue(h->ptr, &out, &priority);
        if (st == EMF_ERR_EMPTY) {
            break;
        }
        if (st != EMF_OK) {
            /* Cannot happen (a live handle, valid out-parameters); what was taken is returned
             * and the rest freed with the queue, with a report rather than in silence. */
            report_impossible("emf_task_queue_dequeue in queue_close", st);
            break;
        }
        ERL_NIF_TERM task = enif_make_tuple2(env, buf_term(env, &out), priority_term(env, priority));
        list = enif_make_list_cell(env, task, list);
    }
    ERL_NIF_TERM tasks;
    (void)enif_make_reverse_list(env, list, &tasks); /* cannot fail: a proper list */
    handle_release(h, &queue_kind); /* frees the engine queue now */
    handle_leave(h, &queue_kind);   /* the last use of a closed handle: nothing left to free */
    return make_ok(env, tasks);
}

/* The waiting part of queue_close (on a dirty CPU scheduler): this call holds one use and has
 * set CLOSED; the calls inside leave within microseconds. */
static ERL_NIF_TERM queue_close_wait_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    void *obj;
    if (!enif_get_resource(env, argv[0], handle_type(env, &queue_kind), &obj)) {
        return argument_error(env, queue_kind.expected); /* cannot happen: checked before */
    }
    emf_nif_handle *h = obj;
    for (int i = 0; i < EMF_NIF_CLOSE_SPINS; i++) {
        if (atomic_load_explicit(&h->use, memory_order_acquire)
            == (EMF_NIF_USE_USER | EMF_NIF_USE_CLOSED)) {
            return queue_drain_and_free(env, h);
        }
    }
    /* Let other dirty jobs run, then look again. A caller killed meanwhile never comes back:
     * the destructor frees the queue then. */
    return enif_schedule_nif(env, "queue_close", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                             queue_close_wait_impl, argc, argv);
}

/* queue_close(Queue) -> {ok, [{Task, Priority}]} | {error, {closed, _}}: the tasks left, in
 * dequeue order; the queue is freed and refuses every later call. */
static ERL_NIF_TERM queue_close_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!handle_use(env, argv[0], &queue_kind, &h, &error)) {
        return error;
    }
    size_t old = atomic_fetch_or_explicit(&h->use, EMF_NIF_USE_CLOSED, memory_order_acq_rel);
    if (old & EMF_NIF_USE_CLOSED) { /* another close came first */
        handle_leave(h, &queue_kind);
        return shim_error(env, EMF_ERR_CLOSED, queue_kind.closed);
    }
    return queue_close_wait_impl(env, argc, argv);
}

static ERL_NIF_TERM nif_queue_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_cpu(env, "queue_close", queue_close_impl, argc, argv);
}

/* Reads the cache handle argument `term' into `*h', or returns false and sets `*error'. */
static bool get_cache(ErlNifEnv *env, ERL_NIF_TERM term, emf_nif_handle **h,
                      ERL_NIF_TERM *error) {
    if (handle_get(env, term, &cache_kind, h)) {
        return true;
    }
    *error = not_a_handle(env, term, cache_kind.expected, cache_kind.not_this_version);
    return false;
}

#define EMF_NIF_CACHE_KEY_ERROR "key: expected a binary or iodata"

/* cache_new(Capacity, TtlMs, Shards) -> {ok, Cache}: emf_cache_new, whose sentinels pass
 * through (Capacity 0: 10000; TtlMs 0: forever, 16#FFFFFFFFFFFFFFFF: 5000; Shards 0: chosen
 * by the engine), within the limits above. */
static ERL_NIF_TERM cache_new_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    size_t capacity;
    ErlNifUInt64 ttl_ms;
    uint32_t shards;
    if (!get_size(env, argv[0], &capacity) || capacity > EMF_NIF_CACHE_MAX_CAPACITY) {
        return argument_error(env, "capacity: expected an integer from 0 (10000) to 16777216");
    }
    if (!enif_get_uint64(env, argv[1], &ttl_ms)) {
        return argument_error(env, "ttl_ms: expected a non-negative 64-bit integer (0: forever)");
    }
    if (!get_u32(env, argv[2], &shards) || shards > EMF_NIF_CACHE_MAX_SHARDS) {
        return argument_error(env, "shards: expected an integer from 0 (automatic) to 1024");
    }
    emf_cache_t *c = NULL;
    emf_status_t st = emf_cache_new(capacity, ttl_ms, shards, &c);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    /* The capacity in force (rounded up to whole shards) decides where sweeps run. */
    emf_cache_stats_t s;
    size_t cost = emf_cache_stats(c, &s) == EMF_OK ? (size_t)s.capacity : SIZE_MAX;
    return make_ok(env, handle_wrap(env, &cache_kind, c, cost));
}

static ERL_NIF_TERM nif_cache_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    size_t capacity = 0;
    uint32_t shards = 0;
    if (!get_size(env, argv[0], &capacity) || capacity == 0) {
        capacity = 0; /* the default (10000), or an error the implementation reports */
    }
    if (!get_u32(env, argv[2], &shards)) {
        shards = 0;
    }
    return run_by_cost(env, "cache_new", cache_new_impl,
                       sat_add(capacity, sat_mul(shards, 16)), EMF_NIF_CACHE_DIRTY_ENTRIES,
                       argc, argv);
}

/* cache_set_sweeper(Cache, EveryMs) -> ok: starts, restarts or (0) stops the sweeper thread. */
static ERL_NIF_TERM cache_set_sweeper_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    uint32_t every_ms;
    if (!get_cache(env, argv[0], &h, &error)) {
        return error;
    }
    if (!get_u32(env, argv[1], &every_ms)) {
        return argument_error(env, "every_ms: expected a 32-bit non-negative integer (0: stop)");
    }
    emf_status_t st = emf_cache_set_sweeper(h->ptr, every_ms);
    return st == EMF_OK ? atom_ok : status_error(env, st);
}

static ERL_NIF_TERM nif_cache_set_sweeper(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "cache_set_sweeper", cache_set_sweeper_impl, argc, argv);
}

/* cache_put(Cache, Key, Value) -> ok */
static ERL_NIF_TERM cache_put_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    ErlNifBinary key, value;
    if (!get_cache(env, argv[0], &h, &error)) {
        return error;
    }
    if (!get_bytes(env, argv[1], &key)) {
        return argument_error(env, EMF_NIF_CACHE_KEY_ERROR);
    }
    if (!get_bytes(env, argv[2], &value)) {
        return argument_error(env, "value: expected a binary or iodata");
    }
    emf_status_t st = emf_cache_put(h->ptr, key.data, key.size, value.data, value.size);
    return st == EMF_OK ? atom_ok : status_error(env, st);
}

static ERL_NIF_TERM nif_cache_put(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "cache_put", cache_put_impl,
                       sat_add(bytes_cost(env, argv[1]), bytes_cost(env, argv[2])),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* cache_get(Cache, Key) -> {ok, Value} | miss. When the value is found too large for the
 * calling scheduler, the call moves to a dirty CPU scheduler with a third argument, the
 * value's size, so that the value is read straight into a binary of that size there. (Each
 * emf_cache_get_into counts a hit, so a value above EMF_NIF_CACHE_STACK_BUF bytes counts two.) */
static ERL_NIF_TERM cache_get_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    ErlNifBinary key;
    if (!get_cache(env, argv[0], &h, &error)) {
        return error;
    }
    if (!get_bytes(env, argv[1], &key)) {
        return argument_error(env, EMF_NIF_CACHE_KEY_ERROR);
    }
    uint8_t stack_buf[EMF_NIF_CACHE_STACK_BUF];
    size_t len = 0;
    emf_status_t st;
    if (argc > 2 && get_size(env, argv[2], &len) && len > sizeof stack_buf) {
        st = EMF_ERR_BUFFER_TOO_SMALL; /* known from the call that moved here */
    } else {
        st = emf_cache_get_into(h->ptr, key.data, key.size, stack_buf, sizeof stack_buf, &len);
        if (st == EMF_OK) {
            return make_ok(env, make_binary_from(env, stack_buf, len));
        }
    }
    for (;;) {
        if (st == EMF_ERR_NOT_FOUND) {
            return atom_miss;
        }
        if (st != EMF_ERR_BUFFER_TOO_SMALL) {
            return status_error(env, st);
        }
        if (len > EMF_NIF_DIRTY_THRESHOLD && on_normal_scheduler()) {
            ERL_NIF_TERM args[3] = {argv[0], argv[1], enif_make_uint64(env, len)};
            return schedule_dirty_cpu(env, "cache_get", cache_get_impl, 3, args);
        }
        ErlNifBinary bin;
        if (!enif_alloc_binary(len, &bin)) {
            return shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
        }
        size_t got = 0;
        st = emf_cache_get_into(h->ptr, key.data, key.size, bin.data, bin.size, &got);
        if (st == EMF_OK) {
            if (got != bin.size) { /* replaced meanwhile by a smaller value */
                (void)enif_realloc_binary(&bin, got);
            }
            return make_ok(env, enif_make_binary(env, &bin));
        }
        if (st != EMF_ERR_BUFFER_TOO_SMALL) {
            ERL_NIF_TERM result = st == EMF_ERR_NOT_FOUND ? atom_miss : status_error(env, st);
            enif_release_binary(&bin);
            return result;
        }
        enif_release_binary(&bin);
        len = got; /* replaced meanwhile by a larger value: again, at its size */
    }
}

static ERL_NIF_TERM nif_cache_get(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "cache_get", cache_get_impl, bytes_cost(env, argv[1]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* cache_remove(Cache, Key) -> ok | not_found */
static ERL_NIF_TERM cache_remove_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    ErlNifBinary key;
    if (!get_cache(env, argv[0], &h, &error)) {
        return error;
    }
    if (!get_bytes(env, argv[1], &key)) {
        return argument_error(env, EMF_NIF_CACHE_KEY_ERROR);
    }
    emf_status_t st = emf_cache_remove(h->ptr, key.data, key.size);
    if (st == EMF_OK) {
        return atom_ok;
    }
    return st == EMF_ERR_NOT_FOUND ? atom_not_found : status_error(env, st);
}

static ERL_NIF_TERM nif_cache_remove(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "cache_remove", cache_remove_impl, bytes_cost(env, argv[1]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* cache_sweep(Cache) -> {ok, Removed}: removes every expired entry now. */
static ERL_NIF_TERM cache_sweep_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!get_cache(env, argv[0], &h, &error)) {
        return error;
    }
    size_t removed = 0;
    emf_status_t st = emf_cache_sweep(h->ptr, &removed);
    return st == EMF_OK ? make_ok(env, enif_make_uint64(env, (ErlNifUInt64)removed))
                        : status_error(env, st);
}

static ERL_NIF_TERM nif_cache_sweep(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "cache_sweep", cache_sweep_impl,
                       handle_cost(env, argv[0], &cache_kind), EMF_NIF_CACHE_DIRTY_ENTRIES, argc,
                       argv);
}

/* cache_stats(Cache) -> {ok, #{len, capacity, hits, misses, evictions, expirations}} */
static ERL_NIF_TERM nif_cache_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM error;
    if (!get_cache(env, argv[0], &h, &error)) {
        return error;
    }
    emf_cache_stats_t s;
    emf_status_t st = emf_cache_stats(h->ptr, &s);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM keys[] = {atom_len, atom_capacity, atom_hits, atom_misses, atom_evictions,
                           atom_expirations};
    ERL_NIF_TERM values[] = {
        enif_make_uint64(env, s.len),    enif_make_uint64(env, s.capacity),
        enif_make_uint64(env, s.hits),   enif_make_uint64(env, s.misses),
        enif_make_uint64(env, s.evictions), enif_make_uint64(env, s.expirations),
    };
    ERL_NIF_TERM map;
    /* Cannot fail: the keys are distinct. */
    (void)enif_make_map_from_arrays(env, keys, values, sizeof keys / sizeof keys[0], &map);
    return make_ok(env, map);
}

/* ------------------------------------------------------------------------------------------ */
/* Vectors and HNSW indexes                                                                   */
/* ------------------------------------------------------------------------------------------ */

/*
 * Vector kernels (emf_quantize_f32, emf_dequantize_i8, emf_distance_f32/_f16,
 * emf_cosine_distance_i8, emf_dot_i8) and HNSW indexes (emf_hnsw_*).
 *
 * Vectors. A float vector is a binary of native-endian float32 values, int8 codes a binary of
 * bytes, half floats a binary of native-endian IEEE binary16 values; erlmcp_flow_hnsw and
 * erlmcp_flow_quantization convert lists (in Erlang, never here). The engine refuses arrays
 * that are not aligned to their element, so a binary that is not (a sub-binary) is copied
 * first, and an empty one is passed as NULL (the engine checks the alignment of any non-NULL
 * pointer, even for 0 values). Ids are uint64_t: a batch's ids come as a binary of
 * native-endian uint64 values, a search filter as the engine's bitset (id i: bit i % 64 of
 * word i / 64), a binary of native-endian uint64 words. Distances are doubles; one that is
 * not finite (float arithmetic overflowing on huge values) becomes infinity, neg_infinity or
 * nan, which no Erlang float can hold.
 *
 * Indexes. An index resource holds an emf_nif_hnsw: the engine handle, its parameters (read
 * once: they never change) and a lock of this shim. emf_hnsw_compact takes the engine's index
 * lock for writing and holds every other call on the index off until it is done, so every
 * call takes the shim's lock for reading around its engine calls and compact takes it for
 * writing first: on a normal scheduler with a try-lock, and when that fails (a compact runs or
 * waits) the call moves to a dirty I/O scheduler and waits there. No call ever waits for a
 * compact on a normal scheduler. A batch insert holds the engine's id map while it checks
 * and reserves its ids (about 0.1-0.2 µs an id: 20 ms for 100000), which single inserts,
 * removals and stats need too: while a batch insert runs, those move to a dirty scheduler
 * (one that starts in the same instant as a batch may still wait for its id check). close/1
 * may release an index early: every call brackets its use with handle_use/handle_leave, and
 * the last of close and the calls inside frees it.
 *
 * Scheduling. insert_batch, search_batch and compact run on a dirty CPU scheduler; open,
 * load, save and close on a dirty I/O scheduler (files, mappings); new, info and stats on the
 * calling scheduler. A single insert, search or remove runs on the calling scheduler when its
 * estimated time is at most EMF_NIF_HNSW_DIRTY_NS, else on a dirty CPU scheduler. The
 * estimate counts, from the index's parameters and size (live vectors, plus the removed ones
 * not compacted yet, which are still routed through), the nodes a call expands, each
 * scanning its 2m neighbour slots (EMF_NIF_HNSW_SCAN_NS a slot) and evaluating the distance
 * of those not seen yet (hnsw_eval_ns: 48 + dim / 4 ns):
 *   - search: ef nodes expanded (ef = max(ef or the index's ef_search, k), scaled up by
 *     nodes / live), every node with a filter (a selective one visits the whole graph) or an
 *     ef as large as the index; plus the re-rank of ef originals and 50 ns a hit returned;
 *   - insert: a search with ef_construction, then 2 · (2m)² evaluations (the neighbours'
 *     lists pruned);
 *   - remove: (2m)² evaluations at 48 + dim / 2 ns (the neighbour repair decodes records).
 * The constants were fitted to measurements on the 2-CPU CI VM, idle and busy (with the
 * defaults, idle: a single insert 0.14-0.44 ms at dim 16-768, a search with ef 50 37-131 µs
 * and with ef 800 0.39-1.06 ms, a filtered search admitting one id of 20000 at dim 16 3.8 ms,
 * a removal 46-160 µs; busy, up to 2.5 times that): the estimates are 1.2 to 4 times the
 * idle times. The kernels scan their inputs once: dirty above EMF_NIF_DIRTY_THRESHOLD bytes,
 * like other byte inputs.
 *
 * Limits. Per-call ef and k are at most EMF_NIF_HNSW_MAX_EF (the engine's own bound for an
 * index's ef_search): k sizes the hits buffer allocated here, and engines before 19884cb
 * reserved 2 · max(ef, k) candidates up front, aborting the process when the system refused
 * the allocation (an ef of 2^40 did). A search batch returns at most
 * EMF_NIF_HNSW_MAX_BATCH_HITS hits.
 */

#define EMF_NIF_HNSW_MAX_EF ((size_t)1 << 20)
#define EMF_NIF_HNSW_MAX_BATCH_HITS ((size_t)1 << 24)
#define EMF_NIF_HNSW_DIRTY_NS ((size_t)500 * 1000)
/* ns to scan one neighbour slot of an expanded node (visited set, bounds, heap). */
#define EMF_NIF_HNSW_SCAN_NS ((size_t)10)
#define EMF_NIF_HNSW_HIT_NS ((size_t)50)
/* Aligned copies of vectors up to this many bytes are made on the stack. */
#define EMF_NIF_VEC_STACK_BYTES 1024
/* Search hits up to this many are written on the stack. */
#define EMF_NIF_HITS_STACK 64

#define EMF_NIF_VECTOR_ERROR "vector: expected a binary of native-endian float32 values"
#define EMF_NIF_QUERY_ERROR "query: expected a binary of native-endian float32 values"
#define EMF_NIF_ID_ERROR "id: expected an integer from 0 to 18446744073709551615"
#define EMF_NIF_METRIC_ERROR "metric: expected cosine, dot or l2sq"
#define EMF_NIF_PATH_ERROR "path: expected a file name as a binary or iodata without NUL bytes"

/* The state of one index resource (its `ptr'). */
typedef struct emf_nif_hnsw {
    emf_hnsw_t *index;
    ErlNifRWLock *lock;        /* compact: write; every other call using `index': read */
    emf_hnsw_params_t params;  /* emf_hnsw_params, read once */
    bool mapped;               /* emf_hnsw_open: read-only */
    atomic_size_t removed;     /* removals since made, loaded or compacted (cost estimates) */
    atomic_size_t batches;     /* batch inserts in progress */
    atomic_size_t *count;      /* the load's hnsw_count */
} emf_nif_hnsw;

static emf_status_t release_hnsw(void *ptr) {
    emf_nif_hnsw *w = ptr;
    emf_status_t st = emf_hnsw_free(w->index);
    enif_rwlock_destroy(w->lock);
    atomic_fetch_sub_explicit(w->count, 1, memory_order_relaxed);
    enif_free(w);
    return st;
}

static ERL_NIF_TERM out_of_memory(ErlNifEnv *env) {
    return shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
}

/* A binary argument holding whole values of `elem' bytes. */
static bool get_array(ErlNifEnv *env, ERL_NIF_TERM term, size_t elem, ErlNifBinary *out) {
    return enif_inspect_binary(env, term, out) && out->size % elem == 0;
}

/* The size of a binary argument (the cost of scanning it), 0 for other terms (refused). */
static size_t binary_cost(ErlNifEnv *env, ERL_NIF_TERM term) {
    ErlNifBinary bin;
    return enif_inspect_binary(env, term, &bin) ? bin.size : 0;
}

/* The bytes of `bin' for the engine, aligned to `align': the binary's own, or a copy in
 * `stack' (EMF_NIF_VEC_STACK_BYTES, aligned to 8) or on the heap (*heap: enif_free it); NULL
 * for an empty binary. False when out of memory. */
static bool aligned_view(const ErlNifBinary *bin, size_t align, uint64_t *stack, void **heap,
                         const void **out) {
    *heap = NULL;
    if (bin->size == 0) {
        *out = NULL;
        return true;
    }
    if ((uintptr_t)bin->data % align == 0) {
        *out = bin->data;
        return true;
    }
    void *dst = stack;
    if (bin->size > EMF_NIF_VEC_STACK_BYTES) {
        dst = *heap = enif_alloc(bin->size);
        if (dst == NULL) {
            return false;
        }
    }
    memcpy(dst, bin->data, bin->size);
    *out = dst;
    return true;
}

static void free_heap(void *heap) {
    if (heap != NULL) {
        enif_free(heap);
    }
}

/* A distance as a term: a float, or infinity, neg_infinity or nan. */
static ERL_NIF_TERM make_real(ErlNifEnv *env, double d) {
    if (isnan(d)) {
        return atom_nan;
    }
    if (isinf(d)) {
        return d > 0 ? atom_infinity : atom_neg_infinity;
    }
    return enif_make_double(env, d);
}

static bool get_metric(ERL_NIF_TERM term, uint32_t *out) {
    if (enif_is_identical(term, atom_cosine)) {
        *out = EMF_METRIC_COSINE;
    } else if (enif_is_identical(term, atom_dot)) {
        *out = EMF_METRIC_DOT;
    } else if (enif_is_identical(term, atom_l2sq)) {
        *out = EMF_METRIC_L2SQ;
    } else {
        return false;
    }
    return true;
}

static ERL_NIF_TERM metric_term(ErlNifEnv *env, uint32_t code) {
    switch (code) {
    case EMF_METRIC_COSINE: return atom_cosine;
    case EMF_METRIC_DOT: return atom_dot;
    case EMF_METRIC_L2SQ: return atom_l2sq;
    default: return enif_make_uint(env, code);
    }
}

static bool get_originals(ERL_NIF_TERM term, uint32_t *out) {
    if (enif_is_identical(term, atom_none)) {
        *out = EMF_ORIGINALS_NONE;
    } else if (enif_is_identical(term, atom_f16)) {
        *out = EMF_ORIGINALS_F16;
    } else if (enif_is_identical(term, atom_f32)) {
        *out = EMF_ORIGINALS_F32;
    } else {
        return false;
    }
    return true;
}

static ERL_NIF_TERM originals_term(ErlNifEnv *env, uint32_t code) {
    switch (code) {
    case EMF_ORIGINALS_NONE: return atom_none;
    case EMF_ORIGINALS_F16: return atom_f16;
    case EMF_ORIGINALS_F32: return atom_f32;
    default: return enif_make_uint(env, code);
    }
}

/* quantize_f32(Vector) -> {ok, {Codes, Scale}} */
static ERL_NIF_TERM quantize_f32_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary x;
    if (!get_array(env, argv[0], sizeof(float), &x)) {
        return argument_error(env, EMF_NIF_VECTOR_ERROR);
    }
    size_t dim = x.size / sizeof(float);
    uint64_t stack[EMF_NIF_VEC_STACK_BYTES / 8];
    void *heap;
    const void *xs;
    if (!aligned_view(&x, _Alignof(float), stack, &heap, &xs)) {
        return out_of_memory(env);
    }
    ERL_NIF_TERM codes;
    unsigned char *out = enif_make_new_binary(env, dim, &codes);
    float scale = 0.0f;
    emf_status_t st = emf_quantize_f32(xs, dim, dim > 0 ? (int8_t *)out : NULL, &scale);
    ERL_NIF_TERM result = st == EMF_OK
        ? make_ok(env, enif_make_tuple2(env, codes, make_real(env, scale)))
        : status_error(env, st);
    free_heap(heap);
    return result;
}

static ERL_NIF_TERM nif_quantize_f32(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "quantize_f32", quantize_f32_impl, binary_cost(env, argv[0]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* dequantize_i8(Codes, Scale) -> {ok, Vector}: Vector a binary of native-endian float32. */
static ERL_NIF_TERM dequantize_i8_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary codes;
    double scale;
    if (!enif_inspect_binary(env, argv[0], &codes)) {
        return argument_error(env, "codes: expected a binary of int8 codes");
    }
    if (!enif_get_double(env, argv[1], &scale) || !(fabs(scale) <= (double)FLT_MAX)) {
        return argument_error(env, "scale: expected a float within the float32 range");
    }
    size_t dim = codes.size;
    if (dim > EMF_MAX_INPUT_LEN / sizeof(float)) {
        /* The engine would refuse the output array (EMF_ERR_TOO_LARGE); not allocated. */
        return shim_error(env, EMF_ERR_TOO_LARGE, "codes: the float32 vector would exceed "
                                                  "the engine's 2 GiB input limit");
    }
    size_t bytes = dim * sizeof(float);
    ErlNifBinary out;
    if (!enif_alloc_binary(bytes, &out)) {
        return out_of_memory(env);
    }
    /* A new binary is aligned in practice; if not, the floats are written elsewhere first. */
    uint64_t stack[EMF_NIF_VEC_STACK_BYTES / 8];
    void *heap = NULL;
    void *dst = out.data;
    if (dim > 0 && (uintptr_t)out.data % _Alignof(float) != 0) {
        dst = bytes <= sizeof stack ? (void *)stack : (heap = enif_alloc(bytes));
        if (dst == NULL) {
            enif_release_binary(&out);
            return out_of_memory(env);
        }
    }
    emf_status_t st = emf_dequantize_i8(dim > 0 ? (const int8_t *)codes.data : NULL, dim,
                                        (float)scale, dim > 0 ? dst : NULL);
    if (st != EMF_OK) {
        ERL_NIF_TERM error = status_error(env, st);
        free_heap(heap);
        enif_release_binary(&out);
        return error;
    }
    if (dst != out.data) {
        memcpy(out.data, dst, bytes);
    }
    free_heap(heap);
    return make_ok(env, enif_make_binary(env, &out));
}

static ERL_NIF_TERM nif_dequantize_i8(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "dequantize_i8", dequantize_i8_impl,
                       sat_mul(binary_cost(env, argv[0]), 1 + sizeof(float)),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* Reads two vectors of `elem'-byte values of the same length: argv[first] and argv[first + 1]
 * (named a and b), aligned for the engine. False with *error set otherwise. */
typedef struct emf_nif_pair {
    const void *a;
    const void *b;
    size_t len; /* values in each */
    void *heap_a;
    void *heap_b;
    uint64_t stack_a[EMF_NIF_VEC_STACK_BYTES / 8];
    uint64_t stack_b[EMF_NIF_VEC_STACK_BYTES / 8];
} emf_nif_pair;

static bool get_pair(ErlNifEnv *env, const ERL_NIF_TERM argv[], int first, size_t elem,
                     const char *what, emf_nif_pair *p, ERL_NIF_TERM *error) {
    ErlNifBinary a, b;
    char msg[160];
    if (!get_array(env, argv[first], elem, &a)) {
        snprintf(msg, sizeof msg, "a: expected a binary of %s", what);
        *error = argument_error(env, msg);
        return false;
    }
    if (!get_array(env, argv[first + 1], elem, &b)) {
        snprintf(msg, sizeof msg, "b: expected a binary of %s", what);
        *error = argument_error(env, msg);
        return false;
    }
    if (a.size != b.size) {
        snprintf(msg, sizeof msg, "a and b: expected vectors of the same length, got %zu and "
                 "%zu values", a.size / elem, b.size / elem);
        *error = argument_error(env, msg);
        return false;
    }
    p->len = a.size / elem;
    if (!aligned_view(&a, elem, p->stack_a, &p->heap_a, &p->a)) {
        *error = out_of_memory(env);
        return false;
    }
    if (!aligned_view(&b, elem, p->stack_b, &p->heap_b, &p->b)) {
        free_heap(p->heap_a);
        *error = out_of_memory(env);
        return false;
    }
    return true;
}

static void pair_free(emf_nif_pair *p) {
    free_heap(p->heap_a);
    free_heap(p->heap_b);
}

#define EMF_NIF_F32_VALUES "native-endian float32 values"
#define EMF_NIF_F16_VALUES "native-endian IEEE half floats (16 bits)"
#define EMF_NIF_I8_VALUES "int8 codes"

/* distance_f32(Metric, A, B), distance_f16(Metric, A, B) -> {ok, Distance} */
static ERL_NIF_TERM distance_impl(ErlNifEnv *env, const ERL_NIF_TERM argv[], bool half) {
    uint32_t metric;
    if (!get_metric(argv[0], &metric)) {
        return argument_error(env, EMF_NIF_METRIC_ERROR);
    }
    emf_nif_pair p;
    ERL_NIF_TERM error;
    if (!get_pair(env, argv, 1, half ? sizeof(uint16_t) : sizeof(float),
                  half ? EMF_NIF_F16_VALUES : EMF_NIF_F32_VALUES, &p, &error)) {
        return error;
    }
    double d = 0.0;
    emf_status_t st = half ? emf_distance_f16(metric, p.a, p.b, p.len, &d)
                           : emf_distance_f32(metric, p.a, p.b, p.len, &d);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, make_real(env, d)) : status_error(env, st);
    pair_free(&p);
    return result;
}

static ERL_NIF_TERM distance_f32_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return distance_impl(env, argv, false);
}

static ERL_NIF_TERM distance_f16_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return distance_impl(env, argv, true);
}

static size_t pair_cost(ErlNifEnv *env, const ERL_NIF_TERM argv[], int first) {
    return sat_add(binary_cost(env, argv[first]), binary_cost(env, argv[first + 1]));
}

static ERL_NIF_TERM nif_distance_f32(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "distance_f32", distance_f32_impl, pair_cost(env, argv, 1),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

static ERL_NIF_TERM nif_distance_f16(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "distance_f16", distance_f16_impl, pair_cost(env, argv, 1),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* cosine_distance_i8(A, B) -> {ok, Distance}; dot_i8(A, B) -> {ok, Integer} */
static ERL_NIF_TERM cosine_distance_i8_impl(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_pair p;
    ERL_NIF_TERM error;
    if (!get_pair(env, argv, 0, 1, EMF_NIF_I8_VALUES, &p, &error)) {
        return error;
    }
    double d = 0.0;
    emf_status_t st = emf_cosine_distance_i8(p.a, p.b, p.len, &d);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, make_real(env, d)) : status_error(env, st);
    pair_free(&p);
    return result;
}

static ERL_NIF_TERM dot_i8_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_pair p;
    ERL_NIF_TERM error;
    if (!get_pair(env, argv, 0, 1, EMF_NIF_I8_VALUES, &p, &error)) {
        return error;
    }
    int64_t dot = 0;
    emf_status_t st = emf_dot_i8(p.a, p.b, p.len, &dot);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, enif_make_int64(env, dot))
                                       : status_error(env, st);
    pair_free(&p);
    return result;
}

static ERL_NIF_TERM nif_cosine_distance_i8(ErlNifEnv *env, int argc,
                                           const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "cosine_distance_i8", cosine_distance_i8_impl,
                       pair_cost(env, argv, 0), EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

static ERL_NIF_TERM nif_dot_i8(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "dot_i8", dot_i8_impl, pair_cost(env, argv, 0),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* Wraps a new engine index into a resource: {ok, Index}, or an error (the index freed). */
static ERL_NIF_TERM hnsw_wrap(ErlNifEnv *env, emf_hnsw_t *index, bool mapped) {
    emf_hnsw_params_t params;
    emf_status_t st = emf_hnsw_params(index, &params);
    ERL_NIF_TERM error = 0;
    if (st != EMF_OK) {
        error = status_error(env, st); /* cannot happen: a handle the engine just made */
    }
    emf_nif_hnsw *w = NULL;
    ErlNifRWLock *lock = NULL;
    if (st == EMF_OK) {
        w = enif_alloc(sizeof *w);
        lock = w != NULL ? enif_rwlock_create("erlmcp_flow_hnsw") : NULL;
        if (lock == NULL) {
            error = out_of_memory(env);
        }
    }
    if (lock == NULL) {
        if (w != NULL) {
            enif_free(w);
        }
        st = emf_hnsw_free(index);
        if (st != EMF_OK) {
            report_impossible("emf_hnsw_free of an index not wrapped", st);
        }
        return error;
    }
    emf_nif_priv *priv = enif_priv_data(env);
    w->index = index;
    w->lock = lock;
    w->params = params;
    w->mapped = mapped;
    atomic_init(&w->removed, 0);
    atomic_init(&w->batches, 0);
    w->count = &priv->hnsw_count;
    atomic_fetch_add_explicit(w->count, 1, memory_order_relaxed);
    emf_nif_handle *h = handle_alloc(env, &hnsw_kind, w, 0, 0);
    if (h == NULL) {
        st = release_hnsw(w);
        if (st != EMF_OK) {
            report_impossible("emf_hnsw_free of an index not wrapped", st);
        }
        return out_of_memory(env);
    }
    ERL_NIF_TERM term = enif_make_resource(env, h);
    enif_release_resource(h); /* the term holds the only reference now */
    return make_ok(env, term);
}

/* hnsw_new(Dim, Metric, M, EfConstruction, EfSearch, Originals, Seed) -> {ok, Index}; Seed is
 * an integer or `default' (emf_hnsw_params_default's). The engine checks the ranges. */
static ERL_NIF_TERM nif_hnsw_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t dim;
    emf_hnsw_params_t p;
    if (!get_u32(env, argv[0], &dim)) {
        return argument_error(env, "dim: expected an integer from 1 to 65536");
    }
    emf_status_t st = emf_hnsw_params_default(dim, &p);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    if (!get_metric(argv[1], &p.metric)) {
        return argument_error(env, EMF_NIF_METRIC_ERROR);
    }
    if (!get_u32(env, argv[2], &p.m)) {
        return argument_error(env, "m: expected an integer from 2 to 128");
    }
    if (!get_u32(env, argv[3], &p.ef_construction)) {
        return argument_error(env, "ef_construction: expected an integer from 1 to 1048576");
    }
    if (!get_u32(env, argv[4], &p.ef_search)) {
        return argument_error(env, "ef_search: expected an integer from 1 to 1048576");
    }
    if (!get_originals(argv[5], &p.originals)) {
        return argument_error(env, "originals: expected none, f16 or f32");
    }
    if (!enif_is_identical(argv[6], atom_default)) {
        ErlNifUInt64 seed;
        if (!enif_get_uint64(env, argv[6], &seed)) {
            return argument_error(env, "seed: expected default or a non-negative 64-bit "
                                       "integer");
        }
        p.seed = seed;
    }
    emf_hnsw_t *index = NULL;
    st = emf_hnsw_new(&p, &index);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return hnsw_wrap(env, index, false);
}

/* hnsw_open(Path), hnsw_load(Path) -> {ok, Index} (dirty I/O scheduler) */
static ERL_NIF_TERM hnsw_file_impl(ErlNifEnv *env, ERL_NIF_TERM path_term, bool map) {
    char *path = get_cstring(env, path_term);
    if (path == NULL) {
        return argument_error(env, EMF_NIF_PATH_ERROR);
    }
    emf_hnsw_t *index = NULL;
    emf_status_t st = map ? emf_hnsw_open(path, &index) : emf_hnsw_load(path, &index);
    enif_free(path);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return hnsw_wrap(env, index, map);
}

static ERL_NIF_TERM hnsw_open_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return hnsw_file_impl(env, argv[0], true);
}

static ERL_NIF_TERM hnsw_load_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return hnsw_file_impl(env, argv[0], false);
}

static ERL_NIF_TERM nif_hnsw_open(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "hnsw_open", hnsw_open_impl, argc, argv);
}

static ERL_NIF_TERM nif_hnsw_load(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "hnsw_load", hnsw_load_impl, argc, argv);
}

/* Enters the index argv[0] for a call of `impl' (named `name'): on success the shim's lock is
 * held for reading, and hnsw_leave must follow. Never waits on a normal scheduler: when the
 * lock is taken for a compact, the call is rescheduled on a dirty I/O scheduler, where it
 * waits, and *result is that. Else false with the error in *result: {invalid_argument, _}
 * for a term that is no index of this load, {closed, _} for a closed one. */
static bool hnsw_enter(ErlNifEnv *env, const char *name, nif_impl impl, int argc,
                       const ERL_NIF_TERM argv[], emf_nif_handle **out, ERL_NIF_TERM *result) {
    emf_nif_handle *h;
    if (!handle_use(env, argv[0], &hnsw_kind, &h, result)) {
        return false;
    }
    emf_nif_hnsw *w = h->ptr;
    if (on_normal_scheduler()) {
        if (enif_rwlock_tryrlock(w->lock) != 0) {
            handle_leave(h, &hnsw_kind);
            *result = enif_schedule_nif(env, name, ERL_NIF_DIRTY_JOB_IO_BOUND, impl, argc, argv);
            return false;
        }
    } else {
        enif_rwlock_rlock(w->lock);
    }
    *out = h;
    return true;
}

static void hnsw_leave(emf_nif_handle *h) {
    emf_nif_hnsw *w = h->ptr;
    enif_rwlock_runlock(w->lock);
    handle_leave(h, &hnsw_kind); /* may free the index: the last call of a closed one */
}

/* Leaves the index and moves the call to a dirty CPU scheduler (too long for this one). */
static ERL_NIF_TERM hnsw_go_dirty(ErlNifEnv *env, emf_nif_handle *h, const char *name,
                                  nif_impl impl, int argc, const ERL_NIF_TERM argv[]) {
    hnsw_leave(h);
    return schedule_dirty_cpu(env, name, impl, argc, argv);
}

/* True when a batch insert runs on the index: it may hold the engine's id map for long. */
static bool hnsw_batch_running(emf_nif_hnsw *w) {
    return atomic_load_explicit(&w->batches, memory_order_acquire) > 0;
}

/* ns of one distance evaluation (int8 codes, graph bookkeeping included). */
static size_t hnsw_eval_ns(const emf_nif_hnsw *w) {
    return 48 + (size_t)w->params.dim / 4;
}

/* The live vectors and the nodes (live and removed, not yet compacted) of an entered index. */
static void hnsw_size(const emf_nif_hnsw *w, size_t *live, size_t *nodes) {
    size_t len = 0;
    if (emf_hnsw_stats(w->index, &len, NULL) != EMF_OK) {
        len = SIZE_MAX / 4; /* cannot happen (a live handle): assume a large index */
    }
    *live = len;
    *nodes = sat_add(len, atomic_load_explicit(&w->removed, memory_order_relaxed));
}

/* The graph work of a search that expands `expanded' nodes: their neighbour slots are
 * scanned, and the nodes not seen yet (at most all of them) have their distance evaluated. */
static size_t hnsw_walk_ns(const emf_nif_hnsw *w, size_t expanded, size_t nodes) {
    size_t slots = sat_mul(expanded, 2 * (size_t)w->params.m);
    return sat_add(sat_mul(size_min(nodes, slots), hnsw_eval_ns(w)),
                   sat_mul(slots, EMF_NIF_HNSW_SCAN_NS));
}

static size_t hnsw_search_ns(const emf_nif_hnsw *w, size_t k, size_t ef, bool filtered,
                             bool rerank) {
    size_t live, nodes;
    hnsw_size(w, &live, &nodes);
    size_t efe = size_max(ef != 0 ? ef : w->params.ef_search, k);
    /* About ef nodes are expanded, more when removed nodes (routed through, never returned)
     * dilute the live ones; every node when a filter admits few of them. */
    size_t expanded = nodes;
    if (!filtered) {
        expanded = live < nodes ? sat_mul(efe, nodes) / size_max(live, 1) : efe;
        expanded = size_min(nodes, expanded);
    }
    size_t ns = hnsw_walk_ns(w, expanded, nodes);
    if (rerank && w->params.originals != EMF_ORIGINALS_NONE) {
        ns = sat_add(ns, sat_mul(size_min(efe, nodes), 16 + w->params.dim / 4));
    }
    return sat_add(ns, sat_mul(size_min(k, live), EMF_NIF_HNSW_HIT_NS));
}

static size_t hnsw_insert_ns(const emf_nif_hnsw *w) {
    size_t live, nodes;
    hnsw_size(w, &live, &nodes);
    size_t m2 = 2 * (size_t)w->params.m;
    /* A search with ef_construction, then the neighbours' lists pruned. */
    size_t search = hnsw_walk_ns(w, size_min(nodes, w->params.ef_construction), nodes);
    return sat_add(search, sat_mul(sat_mul(2, sat_mul(m2, m2)), hnsw_eval_ns(w)));
}

static size_t hnsw_remove_ns(const emf_nif_hnsw *w) {
    size_t m2 = 2 * (size_t)w->params.m;
    return sat_mul(sat_mul(m2, m2), 48 + (size_t)w->params.dim / 2);
}

/* hnsw_info(Index) -> {ok, #{dim, metric, m, ef_construction, ef_search, originals, seed,
 * mapped}}: the parameters read when the index was made, opened or loaded. */
static ERL_NIF_TERM nif_hnsw_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &hnsw_kind, &h, &result)) {
        return result;
    }
    const emf_nif_hnsw *w = h->ptr;
    const emf_hnsw_params_t *p = &w->params;
    ERL_NIF_TERM keys[] = {atom_dim, atom_metric, atom_m, atom_ef_construction, atom_ef_search,
                           atom_originals, atom_seed, atom_mapped};
    ERL_NIF_TERM values[] = {
        enif_make_uint(env, p->dim),
        metric_term(env, p->metric),
        enif_make_uint(env, p->m),
        enif_make_uint(env, p->ef_construction),
        enif_make_uint(env, p->ef_search),
        originals_term(env, p->originals),
        enif_make_uint64(env, p->seed),
        w->mapped ? atom_true : atom_false,
    };
    ERL_NIF_TERM map;
    /* Cannot fail: the keys are distinct. */
    (void)enif_make_map_from_arrays(env, keys, values, sizeof keys / sizeof keys[0], &map);
    handle_leave(h, &hnsw_kind);
    return make_ok(env, map);
}

/* hnsw_insert(Index, Id, Vector) -> ok */
static ERL_NIF_TERM hnsw_insert_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifUInt64 id;
    ErlNifBinary v;
    if (!enif_get_uint64(env, argv[1], &id)) {
        return argument_error(env, EMF_NIF_ID_ERROR);
    }
    if (!get_array(env, argv[2], sizeof(float), &v)) {
        return argument_error(env, EMF_NIF_VECTOR_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!hnsw_enter(env, "hnsw_insert", hnsw_insert_impl, argc, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    if (on_normal_scheduler()
        && (hnsw_batch_running(w) || hnsw_insert_ns(w) > EMF_NIF_HNSW_DIRTY_NS)) {
        return hnsw_go_dirty(env, h, "hnsw_insert", hnsw_insert_impl, argc, argv);
    }
    uint64_t stack[EMF_NIF_VEC_STACK_BYTES / 8];
    void *heap;
    const void *vs;
    if (!aligned_view(&v, _Alignof(float), stack, &heap, &vs)) {
        result = out_of_memory(env);
    } else {
        emf_status_t st = emf_hnsw_insert(w->index, id, vs, v.size / sizeof(float));
        result = st == EMF_OK ? atom_ok : status_error(env, st);
        free_heap(heap);
    }
    hnsw_leave(h);
    return result;
}

static ERL_NIF_TERM nif_hnsw_insert(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "hnsw_insert", hnsw_insert_impl, binary_cost(env, argv[2]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* hnsw_insert_batch(Index, Ids, Vectors, Threads) -> ok (dirty CPU scheduler): Ids a binary of
 * native-endian uint64, Vectors one of as many rows of the index's dim float32 values. */
static ERL_NIF_TERM hnsw_insert_batch_impl(ErlNifEnv *env, int argc,
                                           const ERL_NIF_TERM argv[]) {
    ErlNifBinary ids, vectors;
    uint32_t threads;
    if (!get_array(env, argv[1], sizeof(uint64_t), &ids)) {
        return argument_error(env, "ids: expected a binary of native-endian uint64 ids");
    }
    if (!get_array(env, argv[2], sizeof(float), &vectors)) {
        return argument_error(env, "vectors: expected a binary of native-endian float32 "
                                   "values");
    }
    if (!get_u32(env, argv[3], &threads)) {
        return argument_error(env, "threads: expected a non-negative 32-bit integer (0: one "
                                   "per CPU)");
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!hnsw_enter(env, "hnsw_insert_batch", hnsw_insert_batch_impl, argc, argv, &h,
                    &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    size_t n = ids.size / sizeof(uint64_t);
    size_t dim = w->params.dim;
    size_t values = vectors.size / sizeof(float);
    if (values % dim != 0 || values / dim != n) {
        char msg[200];
        snprintf(msg, sizeof msg, "vectors: %zu ids need %zu rows of %zu float32 values, got "
                 "%zu values", n, n, dim, values);
        result = argument_error(env, msg);
    } else {
        uint64_t stack_ids[EMF_NIF_VEC_STACK_BYTES / 8];
        uint64_t stack_vs[EMF_NIF_VEC_STACK_BYTES / 8];
        void *heap_ids = NULL, *heap_vs = NULL;
        const void *ip = NULL, *vp = NULL;
        if (!aligned_view(&ids, _Alignof(uint64_t), stack_ids, &heap_ids, &ip)
            || !aligned_view(&vectors, _Alignof(float), stack_vs, &heap_vs, &vp)) {
            result = out_of_memory(env);
        } else {
            atomic_fetch_add_explicit(&w->batches, 1, memory_order_acq_rel);
            emf_status_t st = emf_hnsw_insert_batch(w->index, ip, n, vp, dim, threads);
            result = st == EMF_OK ? atom_ok : status_error(env, st);
            atomic_fetch_sub_explicit(&w->batches, 1, memory_order_acq_rel);
        }
        free_heap(heap_ids);
        free_heap(heap_vs);
    }
    hnsw_leave(h);
    return result;
}

static ERL_NIF_TERM nif_hnsw_insert_batch(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_cpu(env, "hnsw_insert_batch", hnsw_insert_batch_impl, argc, argv);
}

/* The hits of one search as [{Id, Distance}], closest first. */
static ERL_NIF_TERM hits_list(ErlNifEnv *env, const emf_hnsw_hit_t *hits, size_t n) {
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = n; i > 0; i--) {
        ERL_NIF_TERM hit = enif_make_tuple2(env, enif_make_uint64(env, hits[i - 1].id),
                                            make_real(env, hits[i - 1].distance));
        list = enif_make_list_cell(env, hit, list);
    }
    return list;
}

/* The search options of hnsw_search and hnsw_search_batch: K, Ef, Rerank, Filter at
 * argv[first...]. Filter is `undefined' or a non-empty bitset binary. */
typedef struct emf_nif_search_opts {
    size_t k;
    size_t ef;
    uint32_t flags;
    ErlNifBinary filter; /* size 0: no filter */
} emf_nif_search_opts;

static bool get_search_opts(ErlNifEnv *env, const ERL_NIF_TERM argv[], int first,
                            emf_nif_search_opts *o, ERL_NIF_TERM *error) {
    bool rerank;
    if (!get_size(env, argv[first], &o->k) || o->k > EMF_NIF_HNSW_MAX_EF) {
        *error = argument_error(env, "k: expected an integer from 0 to 1048576");
        return false;
    }
    if (!get_size(env, argv[first + 1], &o->ef) || o->ef > EMF_NIF_HNSW_MAX_EF) {
        *error = argument_error(env, "ef: expected an integer from 0 (the index's ef_search) "
                                     "to 1048576");
        return false;
    }
    if (!get_bool(argv[first + 2], &rerank)) {
        *error = argument_error(env, "rerank: expected true or false");
        return false;
    }
    o->flags = rerank ? EMF_SEARCH_RERANK : 0;
    memset(&o->filter, 0, sizeof o->filter);
    if (!enif_is_identical(argv[first + 3], atom_undefined)
        && (!get_array(env, argv[first + 3], sizeof(uint64_t), &o->filter)
            || o->filter.size == 0)) {
        *error = argument_error(env, "filter: expected undefined or a non-empty binary of "
                                     "native-endian uint64 words (id I is bit I rem 64 of word "
                                     "I div 64)");
        return false;
    }
    return true;
}

/* hnsw_search(Index, Query, K, Ef, Rerank, Filter) -> {ok, [{Id, Distance}]} */
static ERL_NIF_TERM hnsw_search_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary q;
    emf_nif_search_opts o;
    ERL_NIF_TERM result;
    if (!get_array(env, argv[1], sizeof(float), &q)) {
        return argument_error(env, EMF_NIF_QUERY_ERROR);
    }
    if (!get_search_opts(env, argv, 2, &o, &result)) {
        return result;
    }
    emf_nif_handle *h;
    if (!hnsw_enter(env, "hnsw_search", hnsw_search_impl, argc, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    if (on_normal_scheduler()
        && hnsw_search_ns(w, o.k, o.ef, o.filter.size > 0, o.flags != 0)
               > EMF_NIF_HNSW_DIRTY_NS) {
        return hnsw_go_dirty(env, h, "hnsw_search", hnsw_search_impl, argc, argv);
    }
    emf_hnsw_hit_t stack_hits[EMF_NIF_HITS_STACK];
    emf_hnsw_hit_t *hits = stack_hits;
    uint64_t stack_q[EMF_NIF_VEC_STACK_BYTES / 8];
    uint64_t stack_f[EMF_NIF_VEC_STACK_BYTES / 8];
    void *heap_q = NULL, *heap_f = NULL;
    const void *qp = NULL, *fp = NULL;
    if (o.k > EMF_NIF_HITS_STACK) {
        hits = enif_alloc(o.k * sizeof *hits);
    }
    if (hits == NULL || !aligned_view(&q, _Alignof(float), stack_q, &heap_q, &qp)
        || !aligned_view(&o.filter, _Alignof(uint64_t), stack_f, &heap_f, &fp)) {
        result = out_of_memory(env);
    } else {
        size_t n = 0;
        emf_status_t st = emf_hnsw_search(w->index, qp, q.size / sizeof(float), o.k, o.ef,
                                          o.flags, fp, o.filter.size / sizeof(uint64_t), hits,
                                          &n);
        result = st == EMF_OK ? make_ok(env, hits_list(env, hits, size_min(n, o.k)))
                              : status_error(env, st);
    }
    if (hits != stack_hits && hits != NULL) {
        enif_free(hits);
    }
    free_heap(heap_q);
    free_heap(heap_f);
    hnsw_leave(h);
    return result;
}

static ERL_NIF_TERM nif_hnsw_search(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "hnsw_search", hnsw_search_impl,
                       sat_add(binary_cost(env, argv[1]), binary_cost(env, argv[5])),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* hnsw_search_batch(Index, Queries, K, Ef, Rerank, Filter, Threads) -> {ok, [[{Id, Dist}]]}
 * (dirty CPU scheduler): Queries holds rows of the index's dim float32 values. */
static ERL_NIF_TERM hnsw_search_batch_impl(ErlNifEnv *env, int argc,
                                           const ERL_NIF_TERM argv[]) {
    ErlNifBinary qs;
    emf_nif_search_opts o;
    uint32_t threads;
    ERL_NIF_TERM result;
    if (!get_array(env, argv[1], sizeof(float), &qs)) {
        return argument_error(env, "queries: expected a binary of native-endian float32 "
                                   "values");
    }
    if (!get_search_opts(env, argv, 2, &o, &result)) {
        return result;
    }
    if (!get_u32(env, argv[6], &threads)) {
        return argument_error(env, "threads: expected a non-negative 32-bit integer (0: one "
                                   "per CPU)");
    }
    emf_nif_handle *h;
    if (!hnsw_enter(env, "hnsw_search_batch", hnsw_search_batch_impl, argc, argv, &h,
                    &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    size_t dim = w->params.dim;
    size_t values = qs.size / sizeof(float);
    size_t nq = values / dim;
    emf_hnsw_hit_t *hits = NULL;
    size_t *counts = NULL;
    void *heap_q = NULL, *heap_f = NULL;
    uint64_t stack_q[EMF_NIF_VEC_STACK_BYTES / 8];
    uint64_t stack_f[EMF_NIF_VEC_STACK_BYTES / 8];
    const void *qp = NULL, *fp = NULL;
    if (values % dim != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "queries: %zu float32 values are not rows of %zu (the "
                 "index's dim)", values, dim);
        result = argument_error(env, msg);
    } else if (o.k != 0 && nq > EMF_NIF_HNSW_MAX_BATCH_HITS / o.k) {
        result = shim_error(env, EMF_ERR_TOO_LARGE, "queries: more than 16777216 hits "
                                                    "(queries times k) in one batch");
    } else if ((hits = enif_alloc(size_max(nq * o.k, 1) * sizeof *hits)) == NULL
               || (counts = enif_alloc(size_max(nq, 1) * sizeof *counts)) == NULL
               || !aligned_view(&qs, _Alignof(float), stack_q, &heap_q, &qp)
               || !aligned_view(&o.filter, _Alignof(uint64_t), stack_f, &heap_f, &fp)) {
        result = out_of_memory(env);
    } else {
        emf_status_t st = emf_hnsw_search_batch(w->index, qp, nq, dim, o.k, o.ef, o.flags, fp,
                                                o.filter.size / sizeof(uint64_t), threads,
                                                hits, counts);
        if (st != EMF_OK) {
            result = status_error(env, st);
        } else {
            ERL_NIF_TERM list = enif_make_list(env, 0);
            for (size_t i = nq; i > 0; i--) {
                ERL_NIF_TERM one = hits_list(env, hits + (i - 1) * o.k,
                                             size_min(counts[i - 1], o.k));
                list = enif_make_list_cell(env, one, list);
            }
            result = make_ok(env, list);
        }
    }
    if (hits != NULL) {
        enif_free(hits);
    }
    if (counts != NULL) {
        enif_free(counts);
    }
    free_heap(heap_q);
    free_heap(heap_f);
    hnsw_leave(h);
    return result;
}

static ERL_NIF_TERM nif_hnsw_search_batch(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_cpu(env, "hnsw_search_batch", hnsw_search_batch_impl, argc, argv);
}

/* hnsw_remove(Index, Id) -> ok */
static ERL_NIF_TERM hnsw_remove_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifUInt64 id;
    if (!enif_get_uint64(env, argv[1], &id)) {
        return argument_error(env, EMF_NIF_ID_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!hnsw_enter(env, "hnsw_remove", hnsw_remove_impl, argc, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    if (on_normal_scheduler()
        && (hnsw_batch_running(w) || hnsw_remove_ns(w) > EMF_NIF_HNSW_DIRTY_NS)) {
        return hnsw_go_dirty(env, h, "hnsw_remove", hnsw_remove_impl, argc, argv);
    }
    emf_status_t st = emf_hnsw_remove(w->index, id);
    if (st == EMF_OK) {
        atomic_fetch_add_explicit(&w->removed, 1, memory_order_relaxed);
        result = atom_ok;
    } else {
        result = status_error(env, st);
    }
    hnsw_leave(h);
    return result;
}

static ERL_NIF_TERM nif_hnsw_remove(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return hnsw_remove_impl(env, argc, argv); /* decides its scheduler once it sees the index */
}

/* hnsw_compact(Index) -> ok (dirty CPU scheduler): holds every other call off meanwhile. */
static ERL_NIF_TERM hnsw_compact_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!handle_use(env, argv[0], &hnsw_kind, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    enif_rwlock_rwlock(w->lock);
    emf_status_t st = emf_hnsw_compact(w->index);
    if (st == EMF_OK) {
        /* No removal runs meanwhile: they hold the lock for reading. */
        atomic_store_explicit(&w->removed, 0, memory_order_relaxed);
        result = atom_ok;
    } else {
        result = status_error(env, st);
    }
    enif_rwlock_rwunlock(w->lock);
    handle_leave(h, &hnsw_kind);
    return result;
}

static ERL_NIF_TERM nif_hnsw_compact(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_cpu(env, "hnsw_compact", hnsw_compact_impl, argc, argv);
}

/* hnsw_save(Index, Path) -> ok (dirty I/O scheduler) */
static ERL_NIF_TERM hnsw_save_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    char *path = get_cstring(env, argv[1]);
    if (path == NULL) {
        return argument_error(env, EMF_NIF_PATH_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (hnsw_enter(env, "hnsw_save", hnsw_save_impl, argc, argv, &h, &result)) {
        emf_nif_hnsw *w = h->ptr;
        emf_status_t st = emf_hnsw_save(w->index, path);
        result = st == EMF_OK ? atom_ok : status_error(env, st);
        hnsw_leave(h);
    }
    enif_free(path);
    return result;
}

static ERL_NIF_TERM nif_hnsw_save(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "hnsw_save", hnsw_save_impl, argc, argv);
}

/* hnsw_stats(Index) -> {ok, #{len, memory_bytes}} */
static ERL_NIF_TERM nif_hnsw_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!hnsw_enter(env, "hnsw_stats", nif_hnsw_stats, argc, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    if (on_normal_scheduler() && hnsw_batch_running(w)) {
        /* memory_bytes reads the engine's id map, which the batch may hold for long. */
        hnsw_leave(h);
        return schedule_dirty_io(env, "hnsw_stats", nif_hnsw_stats, argc, argv);
    }
    size_t len = 0, bytes = 0;
    emf_status_t st = emf_hnsw_stats(w->index, &len, &bytes);
    if (st != EMF_OK) {
        result = status_error(env, st);
    } else {
        ERL_NIF_TERM keys[] = {atom_len, atom_memory_bytes};
        ERL_NIF_TERM values[] = {enif_make_uint64(env, len), enif_make_uint64(env, bytes)};
        ERL_NIF_TERM map;
        /* Cannot fail: the keys are distinct. */
        (void)enif_make_map_from_arrays(env, keys, values, 2, &map);
        result = make_ok(env, map);
    }
    hnsw_leave(h);
    return result;
}

/* hnsw_close(Index) -> ok: releases the index now, or once the calls using it return
 * (idempotent; later calls get {error, {closed, _}}). Dirty I/O: it may unmap a file. */
static ERL_NIF_TERM hnsw_close_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    void *obj;
    if (!enif_get_resource(env, argv[0], handle_type(env, &hnsw_kind), &obj)) {
        return not_a_handle(env, argv[0], hnsw_kind.expected, hnsw_kind.not_this_version);
    }
    (void)handle_close(obj, &hnsw_kind); /* false: closed already, fine */
    return atom_ok;
}

static ERL_NIF_TERM nif_hnsw_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return schedule_dirty_io(env, "hnsw_close", hnsw_close_impl, argc, argv);
}

/* hnsw_indexes() -> the number of indexes of this load not freed yet. */
static ERL_NIF_TERM nif_hnsw_indexes(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    (void)argv;
    emf_nif_priv *priv = enif_priv_data(env);
    return enif_make_uint64(env,
                            atomic_load_explicit(&priv->hnsw_count, memory_order_relaxed));
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
    atomic_init(&priv->hnsw_count, 0);
    priv->lock = enif_mutex_create("erlmcp_flow_deliveries");
    priv->changed = enif_cond_create("erlmcp_flow_deliveries");
    priv->shared_lock = enif_mutex_create("erlmcp_flow_shared_state");
    if (priv->lock == NULL || priv->changed == NULL || priv->shared_lock == NULL
        || !open_resource_types(env, priv)) {
        /* ERTS rolls back the types opened by a failed load */
        if (priv->lock != NULL) {
            enif_mutex_destroy(priv->lock);
        }
        if (priv->shared_lock != NULL) {
            enif_mutex_destroy(priv->shared_lock);
        }
        if (priv->changed != NULL) {
            enif_cond_destroy(priv->changed);
        }
        enif_free(priv);
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
 * object of its resource types is left. With no delivery monitor object left, every delivery
 * is stopped: the reaper joins their threads (each ends within its poll_ms) and exits, so no
 * thread runs this library's code once it is unmapped. */
static void on_unload(ErlNifEnv *env, void *priv_data) {
    (void)env;
    emf_nif_priv *priv = priv_data;
    enif_mutex_lock(priv->lock);
    priv->reaper_exit = true;
    bool started = priv->reaper_started;
    enif_cond_broadcast(priv->changed);
    enif_mutex_unlock(priv->lock);
    if (started) {
        (void)enif_thread_join(priv->reaper, NULL);
    }
    enif_cond_destroy(priv->changed);
    enif_mutex_destroy(priv->lock);
    /* No zero-copy binary is left (their owners are objects of this load's types), so the
     * table of mapped values is empty. */
    enif_mutex_destroy(priv->shared_lock);
    enif_free(priv);
}

static ErlNifFunc nif_funcs[] = {
    {"abi_version", 0, nif_abi_version, 0},
    {"version", 0, nif_version, 0},
    {"json_to_archive", 4, nif_json_to_archive, 0},
    {"json_to_archive", 5, nif_json_to_archive, 0},
    {"archive_to_json", 1, nif_archive_to_json, 0},
    {"archive_validate", 1, nif_archive_validate, 0},
    {"message_open", 1, nif_message_open, 0},
    {"message_count", 1, nif_message_count, 0},
    {"message_envelopes", 1, nif_message_envelopes, 0},
    {"message_to_json", 1, nif_message_to_json, 0},
    {"message_payload_json", 2, nif_message_payload_json, 0},
    {"compress_if_needed", 2, nif_compress_if_needed, 0},
    {"decompress", 2, nif_decompress, 0},
    {"ring_create", 2, nif_ring_create, 0},
    {"ring_open", 2, nif_ring_open, 0},
    {"ring_stats", 1, nif_ring_stats, 0},
    {"ring_max_payload", 1, nif_ring_max_payload, 0},
    {"ring_unlink", 1, nif_ring_unlink, 0},
    {"ring_close", 1, nif_ring_close, 0},
    {"producer_new", 1, nif_producer_new, 0},
    {"producer_new_in_slot", 2, nif_producer_new_in_slot, 0},
    {"producer_committed", 1, nif_producer_committed, 0},
    {"producer_send", 3, nif_producer_send, 0},
    {"producer_send_batch", 2, nif_producer_send_batch, 0},
    {"consumer_new", 2, nif_consumer_new, 0},
    {"consumer_recv", 2, nif_consumer_recv, 0},
    {"consumer_recv_batch", 3, nif_consumer_recv_batch, 0},
    {"consumer_lag", 1, nif_consumer_lag, 0},
    {"consumer_set_ack_mode", 2, nif_consumer_set_ack_mode, 0},
    {"consumer_ack", 1, nif_consumer_ack, 0},
    {"consumer_rewind", 1, nif_consumer_rewind, 0},
    {"consumer_unacked", 1, nif_consumer_unacked, 0},
    {"deliver", 6, nif_deliver, 0},
    {"deliver_ack", 1, nif_deliver_ack, 0},
    {"deliver_stop", 1, nif_deliver_stop, 0},
    {"deliveries", 0, nif_deliveries, 0},
    {"router_new", 2, nif_router_new, 0},
    {"router_close", 1, nif_router_close, 0},
    {"router_register_agent", 2, nif_router_register_agent, 0},
    {"router_unregister_agent", 2, nif_router_unregister_agent, 0},
    {"router_send_direct", 4, nif_router_send_direct, 0},
    {"router_send_batch", 4, nif_router_send_batch, 0},
    {"batch_new", 4, nif_batch_new, 0},
    {"batch_send", 2, nif_batch_send, 0},
    {"batch_tick", 1, nif_batch_tick, 0},
    {"batch_flush", 1, nif_batch_flush, 0},
    {"batch_pending", 1, nif_batch_pending, 0},
    {"batch_close", 1, nif_batch_close, 0},
    {"batch_discard", 1, nif_batch_discard, 0},
    {"state_open", 2, nif_state_open, 0},
    {"state_share", 3, nif_state_share, 0},
    {"state_lookup", 2, nif_state_lookup, 0},
    {"state_read", 2, nif_state_read, 0},
    {"state_release", 2, nif_state_release, 0},
    {"state_mapped", 0, nif_state_mapped, 0},
    {"queue_new", 3, nif_queue_new, 0},
    {"queue_enqueue", 3, nif_queue_enqueue, 0},
    {"queue_dequeue", 1, nif_queue_dequeue, 0},
    {"queue_stats", 1, nif_queue_stats, 0},
    {"queue_close", 1, nif_queue_close, 0},
    {"cache_new", 3, nif_cache_new, 0},
    {"cache_set_sweeper", 2, nif_cache_set_sweeper, 0},
    {"cache_put", 3, nif_cache_put, 0},
    {"cache_get", 2, nif_cache_get, 0},
    {"cache_remove", 2, nif_cache_remove, 0},
    {"cache_sweep", 1, nif_cache_sweep, 0},
    {"cache_stats", 1, nif_cache_stats, 0},
    {"quantize_f32", 1, nif_quantize_f32, 0},
    {"dequantize_i8", 2, nif_dequantize_i8, 0},
    {"distance_f32", 3, nif_distance_f32, 0},
    {"distance_f16", 3, nif_distance_f16, 0},
    {"cosine_distance_i8", 2, nif_cosine_distance_i8, 0},
    {"dot_i8", 2, nif_dot_i8, 0},
    {"hnsw_new", 7, nif_hnsw_new, 0},
    {"hnsw_open", 1, nif_hnsw_open, 0},
    {"hnsw_load", 1, nif_hnsw_load, 0},
    {"hnsw_close", 1, nif_hnsw_close, 0},
    {"hnsw_info", 1, nif_hnsw_info, 0},
    {"hnsw_insert", 3, nif_hnsw_insert, 0},
    {"hnsw_insert_batch", 4, nif_hnsw_insert_batch, 0},
    {"hnsw_search", 6, nif_hnsw_search, 0},
    {"hnsw_search_batch", 7, nif_hnsw_search_batch, 0},
    {"hnsw_remove", 2, nif_hnsw_remove, 0},
    {"hnsw_compact", 1, nif_hnsw_compact, 0},
    {"hnsw_save", 2, nif_hnsw_save, 0},
    {"hnsw_stats", 1, nif_hnsw_stats, 0},
    {"hnsw_indexes", 0, nif_hnsw_indexes, 0},
};

ERL_NIF_INIT(erlmcp_flow_nif, nif_funcs, on_load, NULL, on_upgrade, on_unload)

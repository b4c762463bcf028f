/* util.c — the shared helper layer of the NIF (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

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

/* Runs `impl` here when `cost` is small or we already are on a dirty scheduler, otherwise
 * reschedules it on a dirty CPU scheduler under `name`. */
static ERL_NIF_TERM run_by_cost(ErlNifEnv *env, const char *name, nif_impl impl, size_t cost,
                                size_t limit, int argc, const ERL_NIF_TERM argv[]) {
    if (cost > limit && enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER) {
        return enif_schedule_nif(env, name, ERL_NIF_DIRTY_JOB_CPU_BOUND, impl, argc, argv);
    }
    return impl(env, argc, argv);
}

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

static ERL_NIF_TERM code_atom(ErlNifEnv *env, const ERL_NIF_TERM *atoms, size_t count,
                              uint32_t code) {
    return code < count ? atoms[code] : enif_make_uint(env, code);
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

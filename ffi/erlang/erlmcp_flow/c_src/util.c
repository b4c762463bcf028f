/* util.c — the shared helper layer of the NIF: atoms, results and errors, argument decoding,
 * dirty scheduling and resources (declared in erlmcp_flow_nif.h; see erlmcp_flow_nif.c). */

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
#define EMF_NIF_MAKE_ATOM(name) atom_##name = enif_make_atom(env, #name);
    EMF_NIF_ATOMS(EMF_NIF_MAKE_ATOM)
#undef EMF_NIF_MAKE_ATOM
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

static ERL_NIF_TERM out_of_memory(ErlNifEnv *env) {
    return shim_error(env, EMF_ERR_TOO_LARGE, "out of memory");
}

static ERL_NIF_TERM make_map(ErlNifEnv *env, ERL_NIF_TERM keys[], ERL_NIF_TERM values[],
                             size_t n) {
    ERL_NIF_TERM map;
    /* Cannot fail: the keys are distinct. */
    (void)enif_make_map_from_arrays(env, keys, values, n, &map);
    return map;
}

static ERL_NIF_TERM code_atom(ErlNifEnv *env, const ERL_NIF_TERM *atoms, size_t count,
                              uint32_t code) {
    return code < count ? atoms[code] : enif_make_uint(env, code);
}

/* The results of an emf_* call: each builds its value only when `st' is EMF_OK, and else
 * calls status_error right away (the engine's message is still the call's). */

static ERL_NIF_TERM ok_or_error(ErlNifEnv *env, emf_status_t st) {
    return st == EMF_OK ? atom_ok : status_error(env, st);
}

static ERL_NIF_TERM ok_u64(ErlNifEnv *env, emf_status_t st, uint64_t v) {
    return st == EMF_OK ? make_ok(env, enif_make_uint64(env, v)) : status_error(env, st);
}

static ERL_NIF_TERM ok_buf(ErlNifEnv *env, emf_status_t st, emf_buf_t *buf) {
    return st == EMF_OK ? make_ok(env, take_buf(env, buf)) : status_error(env, st);
}

/* ok_handle is with the resources, below. */

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

static bool get_priority(ERL_NIF_TERM term, uint32_t *out) {
    for (size_t i = 0; i < priority_count; i++) {
        if (enif_is_identical(term, priority_atoms[i])) {
            *out = (uint32_t)i;
            return true;
        }
    }
    return false;
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

/* An optional path argument: `undefined' (*out NULL) or get_cstring's copy; false when
 * refused. */
static bool get_opt_cstring(ErlNifEnv *env, ERL_NIF_TERM term, char **out) {
    *out = NULL;
    if (enif_is_identical(term, atom_undefined)) {
        return true;
    }
    *out = get_cstring(env, term);
    return *out != NULL;
}

/* The name and directory arguments of ring_open and state_open (Name, Dir | undefined). */
static bool get_name_and_dir(ErlNifEnv *env, ERL_NIF_TERM name_term, ERL_NIF_TERM dir_term,
                             char **name, char **dir, ERL_NIF_TERM *error) {
    if (!get_opt_cstring(env, dir_term, dir)) {
        *error = argument_error(env, EMF_NIF_DIR_ERROR);
        return false;
    }
    *name = get_cstring(env, name_term);
    if (*name == NULL) {
        enif_free(*dir);
        *error = argument_error(env, "name: expected a binary or string without NUL");
        return false;
    }
    return true;
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

/* ------------------------------------------------------------------------------------------ */
/* Resources: engine handles owned by Erlang terms (see erlmcp_flow_nif.h)                    */
/* ------------------------------------------------------------------------------------------ */

/* Releases the engine handle of `h' (no call is using it). A failure would be a bug (see
 * handle_dtor); it cannot be returned to Erlang, so it is reported on stderr. */
static void handle_release(emf_nif_handle *h) {
    if (h->ptr != NULL && h->kind->release != NULL) {
        emf_status_t st = h->kind->release(h->ptr);
        if (st != EMF_OK) {
            report_impossible(h->kind->release_what, st);
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

static void handle_leave(emf_nif_handle *h) {
    size_t old = atomic_fetch_sub_explicit(&h->use, EMF_NIF_USE_USER, memory_order_acq_rel);
    if (old == (EMF_NIF_USE_USER | EMF_NIF_USE_CLOSED)) {
        handle_release(h); /* the last call inside a closed handle */
    }
}

/* Leaves `h' once `result' is built (an error term reads the engine's message first). */
static ERL_NIF_TERM handle_leave_with(emf_nif_handle *h, ERL_NIF_TERM result) {
    handle_leave(h);
    return result;
}

/* Closes `h'; false when it was closed already. */
static bool handle_close(emf_nif_handle *h) {
    size_t old = atomic_fetch_or_explicit(&h->use, EMF_NIF_USE_CLOSED, memory_order_acq_rel);
    if (old & EMF_NIF_USE_CLOSED) {
        return false;
    }
    if (old == 0) {
        handle_release(h);
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

static bool is_closed(emf_nif_handle *h) {
    return (atomic_load_explicit(&h->use, memory_order_acquire) & EMF_NIF_USE_CLOSED) != 0;
}

/* The destructor of every resource type. It runs once, when no term refers to the resource
 * any more, so no NIF can be using the engine handle at the same time. Releasing cannot fail:
 *  - only handle_alloc creates objects of these types, storing a handle that this copy of the
 *    engine has just returned, and nothing else writes `ptr' but the release above;
 *  - the types are opened by this library alone and never taken over (see "Code upgrades"),
 *    so this destructor only sees objects created by this copy of the library, and the handle
 *    is in this engine's registry;
 *  - ERTS runs the destructor exactly once per object.
 * A failure would be a bug; it cannot be returned to Erlang, so it is reported on stderr.
 * Every type needs a destructor, even one with nothing to release (delivery monitors): ERTS
 * keeps a library loaded while objects of its types with a destructor exist. */
static void handle_dtor(ErlNifEnv *env, void *obj) {
    (void)env;
    handle_release(obj);
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
    h->kind = kind;
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

static ERL_NIF_TERM ok_handle(ErlNifEnv *env, emf_status_t st, const emf_nif_handle_kind *kind,
                              void *ptr, size_t cost, size_t aux) {
    return st == EMF_OK ? make_ok(env, handle_new(env, kind, ptr, cost, aux))
                        : status_error(env, st);
}

static bool resource_binary(ErlNifEnv *env, const emf_nif_handle_kind *kind, void *ptr,
                            const void *data, size_t len, ERL_NIF_TERM *out) {
    emf_nif_handle *owner = handle_alloc(env, kind, ptr, len, 0);
    if (owner == NULL) {
        return false;
    }
    *out = enif_make_resource_binary(env, owner, data, len);
    enif_release_resource(owner); /* the binary holds the only reference now */
    return true;
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

/* Reads the handle argument `term' into `*out', or returns false and sets `*error'. */
static bool handle_arg(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind,
                       emf_nif_handle **out, ERL_NIF_TERM *error) {
    if (handle_get(env, term, kind, out)) {
        return true;
    }
    *error = not_a_handle(env, term, kind->expected, kind->not_this_version);
    return false;
}

/* Reads a closable handle argument and enters its use guard: on success the caller must call
 * handle_leave(*out) once done with (*out)->ptr. Else false with `*error' set:
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

/* close(Handle) -> ok: releases the handle now, or once the calls using it return
 * (idempotent). */
static ERL_NIF_TERM handle_close_arg(ErlNifEnv *env, ERL_NIF_TERM term,
                                     const emf_nif_handle_kind *kind) {
    void *obj;
    if (!enif_get_resource(env, term, handle_type(env, kind), &obj)) {
        return not_a_handle(env, term, kind->expected, kind->not_this_version);
    }
    (void)handle_close(obj); /* false: closed already, fine */
    return atom_ok;
}

/* The cost hint of a handle argument, 0 when it is not one. */
static size_t handle_cost(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind) {
    emf_nif_handle *h;
    return handle_get(env, term, kind, &h) ? h->cost : 0;
}

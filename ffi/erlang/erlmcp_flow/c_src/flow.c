/* flow.c — router, batch processor and shared-state NIFs (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

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


static const emf_nif_handle_kind router_kind = {
    .name = "erlmcp_flow_router",
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
    .release = release_shared,
    .release_what = "emf_state_value_free",
    .expected = "",
    .not_this_version = "",
    .closed = "",
    .index = EMF_NIF_KIND_STATE_VALUE,
};

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

/* router_new(Dir | undefined, InboxCapacity) -> {ok, Router}. Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_router_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    size_t capacity;
    char *dir;
    if (!get_size(env, argv[1], &capacity)) {
        return argument_error(env, "inbox_capacity: expected a non-negative integer (0: 1 MiB)");
    }
    if (!get_opt_cstring(env, argv[0], &dir)) {
        return argument_error(env, EMF_NIF_DIR_ERROR);
    }
    emf_router_t *r = NULL;
    emf_status_t st = emf_router_new(dir, capacity, &r);
    ERL_NIF_TERM result = ok_handle(env, st, &router_kind, r, 0, 0);
    enif_free(dir);
    return result;
}

/* router_close(Router) -> ok: frees the router (its producers detach) now; idempotent. Dirty
 * I/O (NIF table). */
static ERL_NIF_TERM nif_router_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return handle_close_arg(env, argv[0], &router_kind);
}

#define EMF_NIF_AGENT_ERROR "agent: expected a name (binary or string) without NUL"

/* router_register_agent(Router, Agent) -> {ok, Consumer}: the agent's inbox consumer. Dirty
 * I/O (NIF table). */
static ERL_NIF_TERM nif_router_register_agent(ErlNifEnv *env, int argc,
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
        result = handle_leave_with(h, ok_handle(env, st, &consumer_kind, c, 0, 0));
    }
    enif_free(heap);
    return result;
}

/* router_unregister_agent(Router, Agent) -> ok: removes the agent's inbox. Dirty I/O (NIF
 * table). */
static ERL_NIF_TERM nif_router_unregister_agent(ErlNifEnv *env, int argc,
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
        result = handle_leave_with(h, ok_or_error(env, st));
    }
    enif_free(heap);
    return result;
}

/* True when a router send may run on the calling scheduler as far as its agent goes: the
 * router is attached to the inbox (the hint argument) and the agent name is a binary. */
static bool router_send_inline(ErlNifEnv *env, ERL_NIF_TERM agent, ERL_NIF_TERM attached) {
    bool a = false;
    return get_bool(attached, &a) && a && enif_is_binary(env, agent);
}

#define EMF_NIF_ATTACHED_ERROR "attached: expected true or false"

/* router_send_direct(Router, Agent, Data, Attached) -> ok | {error, {full | not_found, _}} */
static ERL_NIF_TERM router_send_direct_impl(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    (void)argc;
    bool attached;
    ErlNifBinary data;
    if (!get_bool(argv[3], &attached)) {
        return argument_error(env, EMF_NIF_ATTACHED_ERROR);
    }
    if (!get_bytes(env, argv[2], &data)) {
        return argument_error(env, EMF_NIF_DATA_ERROR);
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
        result = handle_leave_with(h, ok_or_error(env, st));
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
static ERL_NIF_TERM nif_router_send_batch(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    bool attached;
    if (!get_bool(argv[3], &attached)) {
        return argument_error(env, EMF_NIF_ATTACHED_ERROR);
    }
    bool normal = on_normal_scheduler();
    if (normal && !router_send_inline(env, argv[1], argv[3])) {
        return schedule_dirty_io(env, "router_send_batch", nif_router_send_batch, argc, argv);
    }
    size_t n = 0;
    emf_nif_frames f = frames_count(env, argv[2], normal, &n);
    if (f == EMF_NIF_FRAMES_DIRTY) {
        return schedule_dirty_cpu(env, "router_send_batch", nif_router_send_batch, argc, argv);
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
        /* A full inbox accepted none: {ok, 0}. */
        result = handle_leave_with(h, st == EMF_ERR_FULL ? ok_u64(env, EMF_OK, 0)
                                                         : ok_u64(env, st, accepted));
    }
    frames_free(slices, stack_slices);
    enif_free(heap);
    return result;
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

/* The result of a call on batch `h' that returned `st': {ok, First, Pending, DueMs} when it
 * succeeded, having queued `added' bytes (the pending-bytes bound is updated), else its
 * error. Leaves `h'. */
static ERL_NIF_TERM batch_result(ErlNifEnv *env, emf_nif_handle *h, emf_status_t st,
                                 ERL_NIF_TERM first, size_t added) {
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    size_t pending = 0;
    int64_t due = -1;
    st = emf_batch_pending(h->ptr, &pending, &due);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    if (pending == 0) {
        atomic_store_explicit(&h->load, 0, memory_order_relaxed);
    } else if (added > 0) {
        size_t old = atomic_load_explicit(&h->load, memory_order_relaxed);
        atomic_store_explicit(&h->load, sat_add(old, added), memory_order_relaxed);
    }
    return handle_leave_with(h, enif_make_tuple4(env, atom_ok, first,
                                                 enif_make_uint64(env, (ErlNifUInt64)pending),
                                                 enif_make_int64(env, due)));
}

/* batch_new(Ring, BatchSize, TimeoutMs, MaxPending) -> {ok, Batch}; 0 takes the engine's
 * default (100, 10 ms, 10000). Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_batch_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
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
    HANDLE_USE_OR_RETURN(env, h, argv[0], &ring_kind);
    emf_batch_t *b = NULL;
    emf_status_t st = emf_batch_new(h->ptr, batch_size, timeout_ms, max_pending, &b);
    return handle_leave_with(h, ok_handle(env, st, &batch_kind, b, 0, 0));
}

/* batch_send(Batch, Data) -> {ok, Flush, Pending, DueMs}; {error, {full, _}} when max_pending
 * messages are waiting (the message was not queued). */
static ERL_NIF_TERM batch_send_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary data;
    if (!get_bytes(env, argv[1], &data)) {
        return argument_error(env, EMF_NIF_DATA_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &batch_kind);
    uint32_t flush = EMF_FLUSH_NONE;
    emf_status_t st = emf_batch_send(h->ptr, data.data, data.size, &flush);
    return batch_result(env, h, st, flush_atom(env, flush), data.size);
}

static ERL_NIF_TERM nif_batch_send(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "batch_send", batch_send_impl,
                       sat_add(batch_load(env, argv[0]), bytes_cost(env, argv[1])),
                       EMF_NIF_RING_DIRTY_BYTES, argc, argv);
}

/* batch_tick(Batch) -> {ok, Flush, Pending, DueMs}: the timeout flush when it is due. */
static ERL_NIF_TERM batch_tick_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &batch_kind);
    uint32_t flush = EMF_FLUSH_NONE;
    emf_status_t st = emf_batch_tick(h->ptr, &flush);
    return batch_result(env, h, st, flush_atom(env, flush), 0);
}

static ERL_NIF_TERM nif_batch_tick(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "batch_tick", batch_tick_impl, batch_load(env, argv[0]),
                       EMF_NIF_RING_DIRTY_BYTES, argc, argv);
}

/* batch_flush(Batch) -> {ok, Sent, Pending, DueMs}: sends everything pending that fits. */
static ERL_NIF_TERM batch_flush_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &batch_kind);
    size_t sent = 0;
    emf_status_t st = emf_batch_flush(h->ptr, &sent);
    return batch_result(env, h, st, enif_make_uint64(env, (ErlNifUInt64)sent), 0);
}

static ERL_NIF_TERM nif_batch_flush(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "batch_flush", batch_flush_impl, batch_load(env, argv[0]),
                       EMF_NIF_RING_DIRTY_BYTES, argc, argv);
}

/* batch_pending(Batch) -> {ok, Pending, DueMs} (DueMs -1: nothing pending, 0: overdue) */
static ERL_NIF_TERM nif_batch_pending(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &batch_kind);
    size_t pending = 0;
    int64_t due = -1;
    emf_status_t st = emf_batch_pending(h->ptr, &pending, &due);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    return handle_leave_with(h, enif_make_tuple3(env, atom_ok,
                                                 enif_make_uint64(env, (ErlNifUInt64)pending),
                                                 enif_make_int64(env, due)));
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
 * ok. Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_batch_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
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

/* batch_discard(Batch) -> {ok, Discarded}: frees the processor and the messages it holds.
 * Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_batch_discard(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
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
    char *name, *dir;
    ERL_NIF_TERM result;
    if (!get_name_and_dir(env, argv[0], argv[1], &name, &dir, &result)) {
        return result;
    }
    emf_state_store_t *store = NULL;
    emf_status_t st = emf_state_open(name, dir, &store);
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
            result = out_of_memory(env);
        } else {
            s->store = store;
            s->id_len = name_len + 1 + dir_len;
            memcpy(s->id, name, name_len + 1);
            if (dir_len > 0) {
                memcpy(s->id + name_len + 1, dir, dir_len);
            }
            result = make_ok(env, handle_new(env, &store_kind, s, 0, 0));
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
    if (!handle_arg(env, term, &store_kind, &h, error)) {
        return false;
    }
    *out = h->ptr;
    return true;
}

#define EMF_NIF_KEY_ERROR "key: expected a binary or string without NUL"
#define EMF_NIF_REF_ERROR "ref: expected a state reference (a 64-bit integer)"

/* state_share(Store, Key, Value) -> {ok, Ref}: publishes Value under Key (the key's previous
 * reference is retired). Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_state_share(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
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
    return ok_u64(env, st, ref);
}

/* state_lookup(Store, Key) -> {ok, Ref} | {error, {not_found, _}}. Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_state_lookup(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
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
    return ok_u64(env, st, ref);
}

/* state_read(Store, Ref) -> {ok, Value} | {error, {not_found, _}}: a copy, or a zero-copy
 * binary over the mapping (see above). Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_state_read(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_store *s;
    ERL_NIF_TERM error;
    ErlNifUInt64 ref;
    if (!get_store(env, argv[0], &s, &error)) {
        return error;
    }
    if (!enif_get_uint64(env, argv[1], &ref)) {
        return argument_error(env, EMF_NIF_REF_ERROR);
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
        return out_of_memory(env);
    }
    ERL_NIF_TERM bin;
    if (!resource_binary(env, &state_value_kind, e, e->data, e->len, &bin)) {
        st = release_shared(e);
        if (st != EMF_OK) {
            report_impossible("emf_state_value_free", st);
        }
        return out_of_memory(env);
    }
    return make_ok(env, bin);
}

/* state_release(Store, Ref) -> ok | {error, {not_found, _}}: retires Ref (current readers keep
 * their value). Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_state_release(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_store *s;
    ERL_NIF_TERM error;
    ErlNifUInt64 ref;
    if (!get_store(env, argv[0], &s, &error)) {
        return error;
    }
    if (!enif_get_uint64(env, argv[1], &ref)) {
        return argument_error(env, EMF_NIF_REF_ERROR);
    }
    return ok_or_error(env, emf_state_release(s->store, ref));
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

/* ring.c — ring, producer, consumer and delivery NIFs (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

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

static void delivery_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon);

static const emf_nif_handle_kind ring_kind = {
    .name = "erlmcp_flow_ring",
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
 * this object does not own (release NULL: the reaper frees it); it never appears in a term.
 * Its type still has the common destructor: ERTS keeps a library loaded while objects of its
 * types with a destructor exist, and delivery threads run this library's code while their
 * monitor objects live. */
static const emf_nif_handle_kind delivery_kind = {
    .name = "erlmcp_flow_delivery",
    .down = delivery_down,
    .release = NULL,
    .release_what = "",
    .expected = "",
    .not_this_version = "",
    .closed = "",
    .index = EMF_NIF_KIND_DELIVERY,
};

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
#define EMF_NIF_TIMEOUT_ERROR "timeout: expected a non-negative integer or infinity"
/* A status of this shim, never returned by the engine: out of memory. */
#define EMF_NIF_ERR_NO_MEMORY ((emf_status_t)-1)

/* The error of a failed call of this section: status_error, or out of memory. */
static ERL_NIF_TERM ring_error(ErlNifEnv *env, emf_status_t st) {
    return st == EMF_NIF_ERR_NO_MEMORY ? out_of_memory(env) : status_error(env, st);
}

/* {Status, Message} of ring_error. */
static ERL_NIF_TERM ring_error_reason(ErlNifEnv *env, emf_status_t st) {
    int arity;
    const ERL_NIF_TERM *elems;
    (void)enif_get_tuple(env, ring_error(env, st), &arity, &elems); /* {error, Reason} */
    return elems[1];
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

/* {ok, Ring} for a ring the engine just created or opened (its largest payload is read once,
 * into the handle), or the error of that call. */
static ERL_NIF_TERM ring_result(ErlNifEnv *env, emf_status_t st, emf_ring_t *ring) {
    size_t max_payload = 0;
    if (st == EMF_OK) {
        (void)emf_ring_max_payload(ring, &max_payload);
    }
    return ok_handle(env, st, &ring_kind, ring, 0, max_payload);
}

/* ring_create(Name, Options) -> {ok, Ring}; Options is a map of the emf_ring_options_t fields
 * to change (capacity, multi_producer, max_producers, max_subscribers, stall_timeout_ms, mode,
 * dir; checksum => true sets EMF_RING_CHECKSUM in flags); the others keep the engine's
 * defaults (emf_ring_options_default). Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_ring_create(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
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
    char *name, *dir;
    ERL_NIF_TERM result;
    if (!enif_get_map_value(env, map, atom_dir, &v)) {
        v = atom_undefined;
    }
    if (!get_name_and_dir(env, argv[0], v, &name, &dir, &result)) {
        return result;
    }
    if (dir != NULL) {
        o.dir = dir;
    }
    emf_ring_t *ring = NULL;
    st = emf_ring_create(name, &o, &ring);
    result = ring_result(env, st, ring);
    enif_free(name);
    enif_free(dir);
    return result;
}

/* ring_open(Name, Dir | undefined) -> {ok, Ring}. Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_ring_open(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    char *name, *dir;
    ERL_NIF_TERM result;
    if (!get_name_and_dir(env, argv[0], argv[1], &name, &dir, &result)) {
        return result;
    }
    emf_ring_t *ring = NULL;
    emf_status_t st = emf_ring_open(name, dir, &ring);
    result = ring_result(env, st, ring);
    enif_free(name);
    enif_free(dir);
    return result;
}

/* ring_stats(Ring) -> {ok, #{...}}: emf_ring_stats_t plus max_payload. Dirty I/O (NIF
 * table). */
static ERL_NIF_TERM nif_ring_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &ring_kind);
    emf_ring_stats_t s;
    emf_status_t st = emf_ring_stats(h->ptr, &s);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
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
    return handle_leave_with(h, make_ok(env, MAKE_MAP(env, keys, values)));
}

/* ring_max_payload(Ring) -> {ok, Bytes} (read once when the handle was made) */
static ERL_NIF_TERM nif_ring_max_payload(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &ring_kind);
    return handle_leave_with(h, make_ok(env, enif_make_uint64(env, (ErlNifUInt64)h->aux)));
}

/* ring_unlink(Ring) -> ok. Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_ring_unlink(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &ring_kind);
    return handle_leave_with(h, ok_or_error(env, emf_ring_unlink(h->ptr)));
}

/* ring_close(Handle) -> ok: releases a ring, producer or consumer handle now (idempotent). A
 * call still using it finishes first; the engine handle is released when it leaves. Dirty
 * I/O (NIF table). */
static ERL_NIF_TERM nif_ring_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    static const emf_nif_handle_kind *const closable[] = {&ring_kind, &producer_kind,
                                                          &consumer_kind};
    for (size_t i = 0; i < sizeof closable / sizeof closable[0]; i++) {
        void *obj;
        if (enif_get_resource(env, argv[0], handle_type(env, closable[i]), &obj)) {
            (void)handle_close(obj);
            return atom_ok;
        }
    }
    return not_a_handle(env, argv[0], "handle: expected a ring, producer or consumer handle",
                        "handle: not a handle of this library version (handles made before a "
                        "code upgrade of erlmcp_flow_nif are refused)");
}

/* producer_new(Ring) -> {ok, Producer}. Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_producer_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &ring_kind);
    emf_producer_t *p = NULL;
    emf_status_t st = emf_producer_new(h->ptr, &p);
    return handle_leave_with(h, ok_handle(env, st, &producer_kind, p, 0, h->aux));
}

/* producer_new_in_slot(Ring, Slot) -> {ok, Producer}: emf_producer_new_in_slot. Like
 * producer_new on a dirty I/O scheduler (NIF table): taking over a dead holder's slot checks
 * its liveness in /proc and may wait up to 100 ms for the ring's recovery lock. */
static ERL_NIF_TERM nif_producer_new_in_slot(ErlNifEnv *env, int argc,
                                             const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t slot;
    if (!get_u32(env, argv[1], &slot)) {
        return argument_error(env, "slot: expected a 32-bit non-negative integer");
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &ring_kind);
    emf_producer_t *p = NULL;
    emf_status_t st = emf_producer_new_in_slot(h->ptr, slot, &p);
    return handle_leave_with(h, ok_handle(env, st, &producer_kind, p, 0, h->aux));
}

/* producer_committed(Producer) -> {ok, {Committed, Slot}}: emf_producer_committed (two loads
 * from the segment: a normal scheduler). */
static ERL_NIF_TERM nif_producer_committed(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &producer_kind);
    uint64_t committed = 0;
    uint32_t slot = 0;
    emf_status_t st = emf_producer_committed(h->ptr, &committed, &slot);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM pair = enif_make_tuple2(env, enif_make_uint64(env, committed),
                                         enif_make_uint(env, slot));
    return handle_leave_with(h, make_ok(env, pair));
}

/* producer_send_wait(Producer, Data, TimeoutMs): the waiting part of producer_send/3, on a
 * dirty I/O scheduler. */
static ERL_NIF_TERM producer_send_wait_impl(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary data;
    uint64_t timeout;
    if (!get_timeout(env, argv[2], &timeout)) {
        return argument_error(env, EMF_NIF_TIMEOUT_ERROR);
    }
    if (!get_bytes(env, argv[1], &data)) {
        return argument_error(env, EMF_NIF_DATA_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &producer_kind);
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
    handle_leave(h);
    return result;
}

/* producer_send(Producer, Data, TimeoutMs) -> ok | {error, {full | timeout | ..., _}}: sends
 * one frame; with a timeout above 0, waits for space on a dirty I/O scheduler. */
static ERL_NIF_TERM producer_send_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary data;
    uint64_t timeout;
    if (!get_timeout(env, argv[2], &timeout)) {
        return argument_error(env, EMF_NIF_TIMEOUT_ERROR);
    }
    if (!get_bytes(env, argv[1], &data)) {
        return argument_error(env, EMF_NIF_DATA_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &producer_kind);
    emf_status_t st = emf_producer_send(h->ptr, data.data, data.size);
    ERL_NIF_TERM result = handle_leave_with(h, ok_or_error(env, st));
    if (st == EMF_ERR_FULL && timeout > 0) {
        return schedule_dirty_io(env, "producer_send_wait", producer_send_wait_impl, argc, argv);
    }
    return result;
}
NIF_BY_BYTES(producer_send, 1, EMF_NIF_RING_DIRTY_BYTES)

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
static ERL_NIF_TERM nif_producer_send_batch(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    size_t n = 0;
    emf_nif_frames f = frames_count(env, argv[1], on_normal_scheduler(), &n);
    if (f == EMF_NIF_FRAMES_DIRTY) {
        return schedule_dirty_cpu(env, "producer_send_batch", nif_producer_send_batch, argc,
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
        /* A full ring sent nothing: {ok, 0}. */
        result = handle_leave_with(h, st == EMF_ERR_FULL ? ok_u64(env, EMF_OK, 0)
                                                         : ok_u64(env, st, sent));
    }
    frames_free(slices, stack_slices);
    return result;
}

/* consumer_new(Ring, Subscribe) -> {ok, Consumer}: the primary consumer (false) or a new
 * fan-out subscriber (true). Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_consumer_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    bool subscribe;
    if (!get_bool(argv[1], &subscribe)) {
        return argument_error(env, "subscribe: expected true or false");
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &ring_kind);
    emf_consumer_t *c = NULL;
    emf_status_t st = subscribe ? emf_consumer_subscribe(h->ptr, &c) : emf_consumer_new(h->ptr, &c);
    return handle_leave_with(h, ok_handle(env, st, &consumer_kind, c, 0, h->aux));
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
static ERL_NIF_TERM nif_consumer_recv(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    uint64_t timeout;
    if (!get_timeout(env, argv[1], &timeout)) {
        return argument_error(env, EMF_NIF_TIMEOUT_ERROR);
    }
    bool normal = on_normal_scheduler();
    HANDLE_USE_OR_RETURN(env, h, argv[0], &consumer_kind);
    ERL_NIF_TERM result;
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
    handle_leave(h);
    if (big) {
        return schedule_dirty_cpu(env, "consumer_recv", nif_consumer_recv, argc, argv);
    }
    if (wait) {
        return schedule_dirty_io(env, "consumer_recv", nif_consumer_recv, argc, argv);
    }
    return result;
}

/* consumer_recv_batch(Consumer, MaxFrames, TimeoutMs) -> {ok, [Frame]} (at least one frame)
 * | {error, {timeout, _}}: the frames ready now, up to MaxFrames and about 64 KiB (a larger
 * frame comes alone). */
static ERL_NIF_TERM nif_consumer_recv_batch(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    uint64_t timeout;
    size_t max_frames;
    if (!get_size(env, argv[1], &max_frames) || max_frames == 0 || max_frames > UINT32_MAX) {
        return argument_error(env, "max_frames: expected a positive integer");
    }
    if (!get_timeout(env, argv[2], &timeout)) {
        return argument_error(env, EMF_NIF_TIMEOUT_ERROR);
    }
    bool normal = on_normal_scheduler();
    if (normal && max_frames > EMF_NIF_RING_DIRTY_FRAMES) {
        return schedule_dirty_cpu(env, "consumer_recv_batch", nif_consumer_recv_batch, argc,
                                  argv);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &consumer_kind);
    ERL_NIF_TERM result;
    /* A frame takes at least 4 bytes of the buffer, so no more than cap / 4 fit. */
    size_t cap = EMF_NIF_RECV_BATCH_BYTES;
    size_t max_terms = size_min(max_frames, cap / 4);
    uint8_t *buf = enif_alloc(cap);
    ERL_NIF_TERM *terms = enif_alloc(max_terms * sizeof *terms);
    bool big = false, wait = false;
    if (buf == NULL || terms == NULL) {
        result = out_of_memory(env);
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
    handle_leave(h);
    if (big) {
        return schedule_dirty_cpu(env, "consumer_recv_batch", nif_consumer_recv_batch, argc,
                                  argv);
    }
    if (wait) {
        return schedule_dirty_io(env, "consumer_recv_batch", nif_consumer_recv_batch, argc,
                                 argv);
    }
    return result;
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
    HANDLE_USE_OR_RETURN(env, h, argv[0], &consumer_kind);
    return handle_leave_with(h, ok_or_error(env, emf_consumer_set_ack_mode(h->ptr, mode)));
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
    HANDLE_USE_OR_RETURN(env, h, argv[0], &consumer_kind);
    return handle_leave_with(h, ok_or_error(env, emf_consumer_ack(h->ptr)));
}

/* consumer_rewind(Consumer) -> {ok, Unacked}: emf_consumer_rewind (normal scheduler). */
static ERL_NIF_TERM nif_consumer_rewind(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &consumer_kind);
    uint64_t unacked = 0;
    emf_status_t st = emf_consumer_rewind(h->ptr, &unacked);
    return handle_leave_with(h, ok_u64(env, st, unacked));
}

/* consumer_unacked(Consumer) -> {ok, Count}: emf_consumer_unacked (normal scheduler). */
static ERL_NIF_TERM nif_consumer_unacked(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &consumer_kind);
    uint64_t unacked = 0;
    emf_status_t st = emf_consumer_unacked(h->ptr, &unacked);
    return handle_leave_with(h, ok_u64(env, st, unacked));
}

/* consumer_lag(Consumer) -> {ok, Bytes} */
static ERL_NIF_TERM nif_consumer_lag(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &consumer_kind);
    uint64_t lag = 0;
    emf_status_t st = emf_consumer_lag(h->ptr, &lag);
    return handle_leave_with(h, ok_u64(env, st, lag));
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
        return out_of_memory(env);
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
        return out_of_memory(env);
    }
    d->tag = enif_make_ref(d->tag_env);
    d->monitor = handle_alloc(env, &delivery_kind, d, 0, 0);
    if (d->monitor == NULL) {
        delivery_free(d);
        return out_of_memory(env);
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

/* queue.c — task queue and cache NIFs (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

/* emf_task_queue_t. Tasks still queued are dropped with it: erlmcp_flow_queue hands them back
 * when a queue is closed with queue_close (see "Task queues and caches"). */
static emf_status_t release_queue(void *ptr) {
    return emf_task_queue_free(ptr);
}

/* emf_cache_t (its sweeper thread, if any, is stopped and joined by emf_cache_free). */
static emf_status_t release_cache(void *ptr) {
    return emf_cache_free(ptr);
}

/* An engine buffer (emf_buf_t, allocated with enif_alloc) under a binary of its bytes. */
static emf_status_t release_buf(void *ptr) {
    emf_status_t st = emf_buf_free(ptr);
    enif_free(ptr);
    return st;
}


/* A task queue can be closed early (queue_close/1, which hands back the tasks left): its
 * calls bracket their use with handle_use/handle_leave. */
static const emf_nif_handle_kind queue_kind = {
    .name = "erlmcp_flow_task_queue",
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
    .release = release_buf,
    .release_what = "emf_buf_free",
    .expected = "",
    .not_this_version = "",
    .closed = "",
    .index = EMF_NIF_KIND_BUF,
};

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
            ERL_NIF_TERM bin;
            if (resource_binary(env, &buf_kind, owned, owned->data, owned->len, &bin)) {
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
    return ok_handle(env, st, &queue_kind, q, 0, 0);
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
    HANDLE_USE_OR_RETURN(env, h, argv[0], &queue_kind);
    ERL_NIF_TERM result;
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
    return handle_leave_with(h, result);
}
NIF_BY_BYTES(queue_enqueue, 1, EMF_NIF_DIRTY_THRESHOLD)

/* queue_dequeue(Queue) -> {ok, Task, Priority} | empty */
static ERL_NIF_TERM nif_queue_dequeue(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &queue_kind);
    emf_buf_t out = {0};
    uint32_t priority = 0;
    emf_status_t st = emf_task_queue_dequeue(h->ptr, &out, &priority);
    if (st == EMF_OK) {
        ERL_NIF_TERM task = buf_term(env, &out);
        return handle_leave_with(h, enif_make_tuple3(env, atom_ok, task,
                                                     priority_term(env, priority)));
    }
    return handle_leave_with(h, st == EMF_ERR_EMPTY ? atom_empty : status_error(env, st));
}

/* queue_stats(Queue) -> {ok, #{...}}: emf_task_queue_stats_t. */
static ERL_NIF_TERM nif_queue_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &queue_kind);
    emf_task_queue_stats_t s;
    emf_status_t st = emf_task_queue_stats(h->ptr, &s);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
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
    return handle_leave_with(h, make_ok(env, MAKE_MAP(env, keys, values)));
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
        ERL_NIF_TERM task = enif_make_tuple2(env, buf_term(env, &out),
                                             priority_term(env, priority));
        list = enif_make_list_cell(env, task, list);
    }
    ERL_NIF_TERM tasks;
    (void)enif_make_reverse_list(env, list, &tasks); /* cannot fail: a proper list */
    handle_release(h); /* frees the engine queue now */
    handle_leave(h);   /* the last use of a closed handle: nothing left to free */
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
 * dequeue order; the queue is freed and refuses every later call. Dirty CPU (NIF table). */
static ERL_NIF_TERM nif_queue_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    HANDLE_USE_OR_RETURN(env, h, argv[0], &queue_kind);
    size_t old = atomic_fetch_or_explicit(&h->use, EMF_NIF_USE_CLOSED, memory_order_acq_rel);
    if (old & EMF_NIF_USE_CLOSED) { /* another close came first */
        handle_leave(h);
        return shim_error(env, EMF_ERR_CLOSED, queue_kind.closed);
    }
    return queue_close_wait_impl(env, argc, argv);
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
    return ok_handle(env, EMF_OK, &cache_kind, c, cost, 0);
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

/* cache_set_sweeper(Cache, EveryMs) -> ok: starts, restarts or (0) stops the sweeper thread.
 * Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_cache_set_sweeper(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &cache_kind);
    uint32_t every_ms;
    if (!get_u32(env, argv[1], &every_ms)) {
        return argument_error(env, "every_ms: expected a 32-bit non-negative integer (0: stop)");
    }
    return ok_or_error(env, emf_cache_set_sweeper(h->ptr, every_ms));
}

/* cache_put(Cache, Key, Value) -> ok */
static ERL_NIF_TERM cache_put_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &cache_kind);
    ErlNifBinary key, value;
    if (!get_bytes(env, argv[1], &key)) {
        return argument_error(env, EMF_NIF_CACHE_KEY_ERROR);
    }
    if (!get_bytes(env, argv[2], &value)) {
        return argument_error(env, "value: expected a binary or iodata");
    }
    return ok_or_error(env, emf_cache_put(h->ptr, key.data, key.size, value.data, value.size));
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
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &cache_kind);
    ErlNifBinary key;
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
            return out_of_memory(env);
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
NIF_BY_BYTES(cache_get, 1, EMF_NIF_DIRTY_THRESHOLD)

/* cache_remove(Cache, Key) -> ok | not_found */
static ERL_NIF_TERM cache_remove_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &cache_kind);
    ErlNifBinary key;
    if (!get_bytes(env, argv[1], &key)) {
        return argument_error(env, EMF_NIF_CACHE_KEY_ERROR);
    }
    emf_status_t st = emf_cache_remove(h->ptr, key.data, key.size);
    if (st == EMF_OK) {
        return atom_ok;
    }
    return st == EMF_ERR_NOT_FOUND ? atom_not_found : status_error(env, st);
}
NIF_BY_BYTES(cache_remove, 1, EMF_NIF_DIRTY_THRESHOLD)

/* cache_sweep(Cache) -> {ok, Removed}: removes every expired entry now. */
static ERL_NIF_TERM cache_sweep_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &cache_kind);
    size_t removed = 0;
    emf_status_t st = emf_cache_sweep(h->ptr, &removed);
    return ok_u64(env, st, removed);
}

static ERL_NIF_TERM nif_cache_sweep(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "cache_sweep", cache_sweep_impl,
                       handle_cost(env, argv[0], &cache_kind), EMF_NIF_CACHE_DIRTY_ENTRIES, argc,
                       argv);
}

/* cache_stats(Cache) -> {ok, #{len, capacity, hits, misses, evictions, expirations}} */
static ERL_NIF_TERM nif_cache_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &cache_kind);
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
    return make_ok(env, MAKE_MAP(env, keys, values));
}

/* pool.c — pool manager NIFs over emf_pool_* (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

/* ------------------------------------------------------------------------------------------ */
/* Pool managers                                                                              */
/* ------------------------------------------------------------------------------------------ */

/*
 * A pool manager (emf_pool_t) is the engine's policy of a pool of agents, without I/O: when to
 * start one (warm-up to min_size, one start per warmup_delay, at most max_starting in flight,
 * growth under demand up to max_size, replacement of the dead, back-off after failed starts)
 * and when to stop one (idle above min_size for idle_timeout). This file only converts events
 * in and actions out; erlmcp_flow_pool_manager starts and stops the agents. A pool is a
 * one-thread-at-a-time object (EMF_ERR_BUSY otherwise), owned by that gen_server; its handle
 * is closable (pool_close). Every call is a few µs of memory work: all run on the calling
 * scheduler.
 */

static emf_status_t release_pool(void *ptr) {
    return emf_pool_free(ptr);
}

static const emf_nif_handle_kind pool_kind = {
    .name = "erlmcp_flow_pool",
    .release = release_pool,
    .release_what = "emf_pool_free",
    .expected = "pool: expected a handle from erlmcp_flow_nif:pool_new/2",
    .not_this_version = "pool: not a handle of this library version: expected a pool of the "
                        "NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; start the pool manager again)",
    .closed = "pool: closed",
    .index = EMF_NIF_KIND_POOL,
};

#define EMF_NIF_POOL_NOW_ERROR "now_us: expected a non-negative 64-bit integer"
#define EMF_NIF_POOL_AGENT_ERROR "agent: expected a name (binary) without NUL"
#define EMF_NIF_POOL_SLOT_ERROR "slot: expected a non-negative 64-bit integer"

/* pool_new(Opts, Type) -> {ok, Pool}: emf_pool_new with the options of the map (min_size,
 * max_size, max_starting, idle_timeout_us, warmup_delay_us, start_timeout_us,
 * max_backoff_us; absent ones take the engine's defaults; others are ignored here). */
static ERL_NIF_TERM nif_pool_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_pool_options_t o;
    emf_status_t st = emf_pool_options_default(&o);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    if (!enif_is_map(env, argv[0])) {
        return argument_error(env, "options: expected a map");
    }
    ERL_NIF_TERM v;
    ErlNifUInt64 u;
    uint32_t u32;
#define POOL_U32(key, msg)                                                                     \
    if (enif_get_map_value(env, argv[0], atom_##key, &v)) {                                    \
        if (!get_u32(env, v, &u32)) {                                                          \
            return argument_error(env, (msg));                                                 \
        }                                                                                      \
        o.key = u32;                                                                           \
    }
#define POOL_U64(key, msg)                                                                     \
    if (enif_get_map_value(env, argv[0], atom_##key, &v)) {                                    \
        if (!enif_get_uint64(env, v, &u)) {                                                    \
            return argument_error(env, (msg));                                                 \
        }                                                                                      \
        o.key = u;                                                                             \
    }
    POOL_U32(min_size, "min_size: expected a 32-bit non-negative integer")
    POOL_U32(max_size, "max_size: expected a positive 32-bit integer")
    POOL_U32(max_starting, "max_starting: expected a positive 32-bit integer")
    POOL_U64(idle_timeout_us, "idle_timeout_us: expected a positive 64-bit integer")
    POOL_U64(warmup_delay_us, "warmup_delay_us: expected a non-negative 64-bit integer")
    POOL_U64(start_timeout_us, "start_timeout_us: expected a positive 64-bit integer")
    POOL_U64(max_backoff_us, "max_backoff_us: expected a positive 64-bit integer")
#undef POOL_U32
#undef POOL_U64
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *type = get_name(env, argv[1], stack, sizeof stack, &heap);
    if (type == NULL) {
        return argument_error(env, "agent_type: expected a name (binary) without NUL");
    }
    emf_pool_t *p = NULL;
    st = emf_pool_new(&o, type, &p);
    enif_free(heap);
    return ok_handle(env, st, &pool_kind, p, 0, 0);
}

/* pool_close(Pool) -> ok: frees the pool now (its agents are the host's); idempotent. */
static ERL_NIF_TERM nif_pool_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return handle_close_arg(env, argv[0], &pool_kind);
}

/* The events taking (Pool, NowUs) -> ok. */
static ERL_NIF_TERM pool_now_event(ErlNifEnv *env, const ERL_NIF_TERM argv[],
                                   emf_status_t (*event)(emf_pool_t *, uint64_t)) {
    ErlNifUInt64 now;
    if (!enif_get_uint64(env, argv[1], &now)) {
        return argument_error(env, EMF_NIF_POOL_NOW_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &pool_kind);
    return handle_leave_with(h, ok_or_error(env, event(h->ptr, now)));
}

/* pool_ensure_min(Pool, NowUs) -> ok */
static ERL_NIF_TERM nif_pool_ensure_min(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return pool_now_event(env, argv, emf_pool_ensure_min);
}

/* pool_tick(Pool, NowUs) -> ok */
static ERL_NIF_TERM nif_pool_tick(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return pool_now_event(env, argv, emf_pool_tick);
}

/* pool_started(Pool, Slot, Agent, NowUs) -> ok */
static ERL_NIF_TERM nif_pool_started(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 slot, now;
    if (!enif_get_uint64(env, argv[1], &slot)) {
        return argument_error(env, EMF_NIF_POOL_SLOT_ERROR);
    }
    if (!enif_get_uint64(env, argv[3], &now)) {
        return argument_error(env, EMF_NIF_POOL_NOW_ERROR);
    }
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *agent = get_name(env, argv[2], stack, sizeof stack, &heap);
    if (agent == NULL) {
        return argument_error(env, EMF_NIF_POOL_AGENT_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &pool_kind, &h, &result)) {
        result = ok_or_error(env, emf_pool_started(h->ptr, slot, agent, now));
        handle_leave(h);
    }
    enif_free(heap);
    return result;
}

/* pool_start_failed(Pool, Slot, Reason, NowUs) -> ok */
static ERL_NIF_TERM nif_pool_start_failed(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 slot, now;
    if (!enif_get_uint64(env, argv[1], &slot)) {
        return argument_error(env, EMF_NIF_POOL_SLOT_ERROR);
    }
    if (!enif_get_uint64(env, argv[3], &now)) {
        return argument_error(env, EMF_NIF_POOL_NOW_ERROR);
    }
    char *reason = get_cstring(env, argv[2]);
    if (reason == NULL) {
        return argument_error(env, "reason: expected a binary or iodata without NUL");
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &pool_kind, &h, &result)) {
        result = ok_or_error(env, emf_pool_start_failed(h->ptr, slot, reason, now));
        handle_leave(h);
    }
    enif_free(reason);
    return result;
}

/* pool_agent_gone(Pool, Agent, NowUs) -> ok */
static ERL_NIF_TERM nif_pool_agent_gone(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 now;
    if (!enif_get_uint64(env, argv[2], &now)) {
        return argument_error(env, EMF_NIF_POOL_NOW_ERROR);
    }
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *agent = get_name(env, argv[1], stack, sizeof stack, &heap);
    if (agent == NULL) {
        return argument_error(env, EMF_NIF_POOL_AGENT_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &pool_kind, &h, &result)) {
        result = ok_or_error(env, emf_pool_agent_gone(h->ptr, agent, now));
        handle_leave(h);
    }
    enif_free(heap);
    return result;
}

/* pool_observe(Pool, Agent, InFlight, NowUs) -> ok */
static ERL_NIF_TERM nif_pool_observe(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t in_flight;
    ErlNifUInt64 now;
    if (!get_u32(env, argv[2], &in_flight)) {
        return argument_error(env, "in_flight: expected a 32-bit non-negative integer");
    }
    if (!enif_get_uint64(env, argv[3], &now)) {
        return argument_error(env, EMF_NIF_POOL_NOW_ERROR);
    }
    char stack[EMF_NIF_NAME_STACK_BUF], *heap;
    const char *agent = get_name(env, argv[1], stack, sizeof stack, &heap);
    if (agent == NULL) {
        return argument_error(env, EMF_NIF_POOL_AGENT_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &pool_kind, &h, &result)) {
        result = ok_or_error(env, emf_pool_observe(h->ptr, agent, in_flight, now));
        handle_leave(h);
    }
    enif_free(heap);
    return result;
}

/* pool_demand(Pool, Queued, NowUs) -> ok */
static ERL_NIF_TERM nif_pool_demand(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    size_t queued;
    ErlNifUInt64 now;
    if (!get_size(env, argv[1], &queued)) {
        return argument_error(env, "queued: expected a non-negative integer");
    }
    if (!enif_get_uint64(env, argv[2], &now)) {
        return argument_error(env, EMF_NIF_POOL_NOW_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &pool_kind);
    return handle_leave_with(h, ok_or_error(env, emf_pool_demand(h->ptr, queued, now)));
}

/* pool_poll(Pool) -> {ok, [{start, Slot} | {stop, Agent}]}: every pending action, oldest
 * first. An action of an unknown kind (ruled out by the ABI version check) is an error. */
static ERL_NIF_TERM nif_pool_poll(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &pool_kind);
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (;;) {
        uint32_t kind = 0;
        uint64_t slot = 0;
        char agent[256]; /* agent ids are at most 194 bytes */
        size_t len = 0;
        emf_status_t st = emf_pool_poll_action(h->ptr, &kind, &slot, agent, sizeof agent, &len);
        if (st != EMF_OK) {
            return handle_leave_with(h, status_error(env, st));
        }
        if (kind == EMF_POOL_ACTION_NONE) {
            break;
        }
        ERL_NIF_TERM action;
        if (kind == EMF_POOL_ACTION_START) {
            action = enif_make_tuple2(env, atom_start, enif_make_uint64(env, slot));
        } else if (kind == EMF_POOL_ACTION_STOP) {
            action = enif_make_tuple2(env, atom_stop, make_binary_from(env, agent, len));
        } else {
            char msg[96];
            snprintf(msg, sizeof msg, "emf_pool_poll_action: unknown action kind %u",
                     (unsigned)kind);
            return handle_leave_with(h, shim_error(env, EMF_ERR_UNSUPPORTED, msg));
        }
        list = enif_make_list_cell(env, action, list);
    }
    ERL_NIF_TERM actions;
    (void)enif_make_reverse_list(env, list, &actions); /* cannot fail: a proper list */
    return handle_leave_with(h, make_ok(env, actions));
}

/* pool_next_deadline(Pool) -> {ok, Us | infinity} */
static ERL_NIF_TERM nif_pool_next_deadline(ErlNifEnv *env, int argc,
                                           const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &pool_kind);
    uint64_t us = 0;
    emf_status_t st = emf_pool_next_deadline(h->ptr, &us);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    return handle_leave_with(
        h, make_ok(env, us == UINT64_MAX ? atom_infinity : enif_make_uint64(env, us)));
}

/* pool_stats(Pool) -> {ok, #{...}}: emf_pool_stats_t. */
static ERL_NIF_TERM nif_pool_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &pool_kind);
    emf_pool_stats_t s;
    emf_status_t st = emf_pool_stats(h->ptr, &s);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM keys[] = {atom_live,           atom_starting,      atom_idle,
                           atom_busy,           atom_stopping,      atom_started_total,
                           atom_stopped_total,  atom_failed_starts, atom_timed_out_starts,
                           atom_died,           atom_replaced};
    ERL_NIF_TERM values[] = {
        enif_make_uint(env, s.live),             enif_make_uint(env, s.starting),
        enif_make_uint(env, s.idle),             enif_make_uint(env, s.busy),
        enif_make_uint(env, s.stopping),         enif_make_uint64(env, s.started_total),
        enif_make_uint64(env, s.stopped_total),  enif_make_uint64(env, s.failed_starts),
        enif_make_uint64(env, s.timed_out_starts), enif_make_uint64(env, s.died),
        enif_make_uint64(env, s.replaced)};
    return handle_leave_with(h, make_ok(env, MAKE_MAP(env, keys, values)));
}

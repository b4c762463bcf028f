/* sched.c — scheduler NIFs over emf_sched_* (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

/* ------------------------------------------------------------------------------------------ */
/* Schedulers                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/*
 * A scheduler (emf_sched_t) is a state machine without I/O in the engine: agents, tasks,
 * leases, redeliveries, deduplication of results and dead letters are all decided there. This
 * file only converts: events in (register, submit, started, ack, nack, tick, ...), each with
 * the caller's clock reading in µs, and the actions the engine asks for out (sched_poll).
 *
 * Ownership. An engine scheduler is a one-thread-at-a-time object (a second thread calling in
 * gets EMF_ERR_BUSY, never a race): erlmcp_flow_scheduler owns it in one gen_server, which
 * alone calls these NIFs with it. The handle is closable (sched_close frees it at once, so
 * that a restarted server can open the same durable ledger); calls bracket their use with the
 * use guard, and a call after the close gets {error, {closed, _}}.
 *
 * Scheduling. Events on an in-memory or shared-memory ledger are a few µs of memory work and
 * run on the calling scheduler, up to EMF_NIF_DIRTY_THRESHOLD bytes of payload or result (a
 * copy) — above that on a dirty CPU scheduler. Events on a file ledger append to the file
 * (its group commit may fsync): they run on a dirty I/O scheduler. Opening and closing a
 * scheduler (mapping a segment, replaying a ledger) always run on a dirty I/O scheduler. A
 * poll copies at most about EMF_NIF_DIRTY_THRESHOLD bytes of actions per call (at least one
 * action, which runs dirty when larger).
 */

/* emf_sched_t: closes its ledger (a durable one keeps its records). */
static emf_status_t release_sched(void *ptr) {
    return emf_sched_free(ptr);
}

static const emf_nif_handle_kind sched_kind = {
    .name = "erlmcp_flow_sched",
    .release = release_sched,
    .release_what = "emf_sched_free",
    .expected = "sched: expected a handle from erlmcp_flow_nif:sched_new/5",
    .not_this_version = "sched: not a handle of this library version: expected a scheduler of "
                        "the NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; start the scheduler again)",
    .closed = "sched: closed",
    .index = EMF_NIF_KIND_SCHED,
};

#define EMF_NIF_SCHED_AGENT_ERROR "agent: expected a name (binary) without NUL"
#define EMF_NIF_SCHED_TYPE_ERROR "agent_type: expected a name (binary) without NUL"
#define EMF_NIF_SCHED_NOW_ERROR "now_us: expected a non-negative 64-bit integer"
#define EMF_NIF_SCHED_TASK_ERROR "task: expected a task id (a positive 64-bit integer)"
#define EMF_NIF_SCHED_ATTEMPT_ERROR "attempt: expected a 32-bit non-negative integer"

/* Runs `impl' here, on a dirty I/O scheduler when the handle argument argv[0] has a file
 * ledger, or on a dirty CPU scheduler when argument `bytes_arg' (>= 0) is large. */
static ERL_NIF_TERM sched_run(ErlNifEnv *env, const char *name, nif_impl impl, int bytes_arg,
                              int argc, const ERL_NIF_TERM argv[]) {
    emf_nif_handle *h;
    if (on_normal_scheduler() && handle_get(env, argv[0], &sched_kind, &h)
        && h->aux == EMF_LEDGER_FILE) {
        return schedule_dirty_io(env, name, impl, argc, argv);
    }
    size_t cost = bytes_arg >= 0 ? bytes_cost(env, argv[bytes_arg]) : 0;
    return run_by_cost(env, name, impl, cost, EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

#define SCHED_NIF(name, bytes_arg)                                                             \
    static ERL_NIF_TERM nif_##name(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {      \
        return sched_run(env, #name, name##_impl, (bytes_arg), argc, argv);                    \
    }

/* An option of the map `opts': absent (true, *out untouched) or read by `get' (false with
 * *error set when it is of the wrong type). */
static bool sched_opt_u64(ErlNifEnv *env, ERL_NIF_TERM opts, ERL_NIF_TERM key, uint64_t *out,
                          const char *msg, ERL_NIF_TERM *error) {
    ERL_NIF_TERM v;
    ErlNifUInt64 x;
    if (!enif_get_map_value(env, opts, key, &v)) {
        return true;
    }
    if (!enif_get_uint64(env, v, &x)) {
        *error = argument_error(env, msg);
        return false;
    }
    *out = x;
    return true;
}

static bool sched_opt_double(ErlNifEnv *env, ERL_NIF_TERM opts, ERL_NIF_TERM key, double *out,
                             const char *msg, ERL_NIF_TERM *error) {
    ERL_NIF_TERM v;
    ErlNifSInt64 i;
    if (!enif_get_map_value(env, opts, key, &v)) {
        return true;
    }
    if (enif_get_double(env, v, out)) {
        return true;
    }
    if (enif_get_int64(env, v, &i)) {
        *out = (double)i;
        return true;
    }
    *error = argument_error(env, msg);
    return false;
}

/* Reads the options map into `o' (started from emf_sched_options_default). Only the types are
 * checked here; the engine checks the ranges. */
static bool sched_options(ErlNifEnv *env, ERL_NIF_TERM opts, emf_sched_options_t *o,
                          ERL_NIF_TERM *error) {
    uint64_t u;
    ERL_NIF_TERM v;
#define U64_OPT(key, field, type, msg)                                                         \
    u = (uint64_t)o->field;                                                                    \
    if (!sched_opt_u64(env, opts, atom_##key, &u, (msg), error)) {                             \
        return false;                                                                          \
    }                                                                                          \
    if ((uint64_t)(type)u != u) {                                                              \
        *error = argument_error(env, (msg));                                                   \
        return false;                                                                          \
    }                                                                                          \
    o->field = (type)u;
    U64_OPT(max_queued, max_queued, size_t, "max_queued: expected a positive integer")
    U64_OPT(heartbeat_timeout_us, heartbeat_timeout_us, uint64_t,
            "heartbeat_timeout_us: expected a non-negative 64-bit integer (0: not watched)")
    U64_OPT(max_attempts, max_attempts, uint32_t,
            "max_attempts: expected a positive 32-bit integer")
    U64_OPT(min_lease_us, min_lease_us, uint64_t, "min_lease_us: expected a positive integer")
    U64_OPT(max_lease_us, max_lease_us, uint64_t, "max_lease_us: expected a positive integer")
    U64_OPT(default_lease_us, default_lease_us, uint64_t,
            "default_lease_us: expected a positive integer")
    U64_OPT(latency_window, latency_window, uint32_t,
            "latency_window: expected a positive 32-bit integer")
    U64_OPT(seed, seed, uint64_t, "seed: expected a non-negative 64-bit integer")
    U64_OPT(shm_capacity, shm_capacity, size_t, "shm_capacity: expected a positive integer")
#undef U64_OPT
    if (!sched_opt_double(env, opts, atom_lease_factor, &o->lease_factor,
                          "lease_factor: expected a positive number", error)
        || !sched_opt_double(env, opts, atom_ewma_alpha, &o->ewma_alpha,
                             "ewma_alpha: expected a number in (0, 1]", error)) {
        return false;
    }
    if (enif_get_map_value(env, opts, atom_work_stealing, &v) && !get_bool(v, &o->work_stealing)) {
        *error = argument_error(env, "work_stealing: expected true or false");
        return false;
    }
    if (enif_get_map_value(env, opts, atom_strategy, &v)) {
        if (enif_is_identical(v, atom_least_loaded)) {
            o->strategy = EMF_SCHED_LEAST_LOADED;
        } else if (enif_is_identical(v, atom_power_of_two)) {
            o->strategy = EMF_SCHED_POWER_OF_TWO;
        } else if (enif_is_identical(v, atom_round_robin)) {
            o->strategy = EMF_SCHED_ROUND_ROBIN;
        } else {
            *error = argument_error(
                env, "strategy: expected least_loaded, power_of_two or round_robin");
            return false;
        }
    }
    return true;
}

/* sched_new(Opts, memory | shm | file, Name | undefined, Dir | undefined, NowUs)
 * -> {ok, Sched}: emf_sched_new; a durable ledger holding records is recovered. Dirty I/O
 * (NIF table). */
static ERL_NIF_TERM nif_sched_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_sched_options_t o;
    emf_status_t st = emf_sched_options_default(&o);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM error;
    if (!enif_is_map(env, argv[0])) {
        return argument_error(env, "options: expected a map");
    }
    if (!sched_options(env, argv[0], &o, &error)) {
        return error;
    }
    uint32_t ledger;
    if (enif_is_identical(argv[1], atom_memory)) {
        ledger = EMF_LEDGER_MEMORY;
    } else if (enif_is_identical(argv[1], atom_shm)) {
        ledger = EMF_LEDGER_SHM;
    } else if (enif_is_identical(argv[1], atom_file)) {
        ledger = EMF_LEDGER_FILE;
    } else {
        return argument_error(env, "ledger: expected memory, shm or file");
    }
    ErlNifUInt64 now;
    if (!enif_get_uint64(env, argv[4], &now)) {
        return argument_error(env, EMF_NIF_SCHED_NOW_ERROR);
    }
    char *name, *dir;
    if (!get_opt_cstring(env, argv[2], &name)) {
        return argument_error(env, "ledger name: expected a name or path (binary) without NUL");
    }
    if (!get_opt_cstring(env, argv[3], &dir)) {
        enif_free(name);
        return argument_error(env, EMF_NIF_DIR_ERROR);
    }
    emf_sched_t *s = NULL;
    st = emf_sched_new(&o, ledger, name, dir, now, &s);
    ERL_NIF_TERM result = ok_handle(env, st, &sched_kind, s, 0, ledger);
    enif_free(name);
    enif_free(dir);
    return result;
}

/* sched_close(Sched) -> ok: frees the scheduler now (a durable ledger keeps its records for
 * the next sched_new); idempotent. Dirty I/O (NIF table). */
static ERL_NIF_TERM nif_sched_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return handle_close_arg(env, argv[0], &sched_kind);
}

/* The agent-name argument `term' into `stack' or *heap (see get_name in flow.c). */
#define SCHED_NAME_OR_RETURN(var, term, msg)                                                   \
    char var##_stack[EMF_NIF_NAME_STACK_BUF], *var##_heap;                                     \
    const char *var = get_name(env, (term), var##_stack, sizeof var##_stack, &var##_heap);     \
    if (var == NULL) {                                                                         \
        return argument_error(env, (msg));                                                     \
    }

/* sched_register_agent(Sched, Agent, Type, MaxTasks, Token, NowUs) -> ok: an agent whose
 * liveness is a token the host checks (pid 0). */
static ERL_NIF_TERM sched_register_agent_impl(ErlNifEnv *env, int argc,
                                              const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t max_tasks;
    ErlNifUInt64 token, now;
    if (!get_u32(env, argv[3], &max_tasks)) {
        return argument_error(env, "max_tasks: expected a 32-bit non-negative integer (0: 5)");
    }
    if (!enif_get_uint64(env, argv[4], &token)) {
        return argument_error(env, "token: expected a non-negative 64-bit integer");
    }
    if (!enif_get_uint64(env, argv[5], &now)) {
        return argument_error(env, EMF_NIF_SCHED_NOW_ERROR);
    }
    SCHED_NAME_OR_RETURN(agent, argv[1], EMF_NIF_SCHED_AGENT_ERROR)
    char type_stack[EMF_NIF_NAME_STACK_BUF], *type_heap;
    const char *type = get_name(env, argv[2], type_stack, sizeof type_stack, &type_heap);
    if (type == NULL) {
        enif_free(agent_heap);
        return argument_error(env, EMF_NIF_SCHED_TYPE_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        emf_status_t st = emf_sched_register_agent(h->ptr, agent, type, max_tasks, 0, token, now);
        result = handle_leave_with(h, ok_or_error(env, st));
    }
    enif_free(agent_heap);
    enif_free(type_heap);
    return result;
}
SCHED_NIF(sched_register_agent, -1)

/* The three agent events taking (Sched, Agent, NowUs) -> ok. */
static ERL_NIF_TERM sched_agent_event(ErlNifEnv *env, const ERL_NIF_TERM argv[],
                                      emf_status_t (*event)(emf_sched_t *, const char *,
                                                            uint64_t)) {
    ErlNifUInt64 now;
    if (!enif_get_uint64(env, argv[2], &now)) {
        return argument_error(env, EMF_NIF_SCHED_NOW_ERROR);
    }
    SCHED_NAME_OR_RETURN(agent, argv[1], EMF_NIF_SCHED_AGENT_ERROR)
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        result = handle_leave_with(h, ok_or_error(env, event(h->ptr, agent, now)));
    }
    enif_free(agent_heap);
    return result;
}

/* sched_unregister_agent(Sched, Agent, NowUs) -> ok: its tasks go elsewhere. */
static ERL_NIF_TERM sched_unregister_agent_impl(ErlNifEnv *env, int argc,
                                                const ERL_NIF_TERM argv[]) {
    (void)argc;
    return sched_agent_event(env, argv, emf_sched_unregister_agent);
}
SCHED_NIF(sched_unregister_agent, -1)

/* sched_agent_dead(Sched, Agent, NowUs) -> ok: the host saw it die; its leases are released. */
static ERL_NIF_TERM sched_agent_dead_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return sched_agent_event(env, argv, emf_sched_agent_dead);
}
SCHED_NIF(sched_agent_dead, -1)

/* sched_heartbeat(Sched, Agent, NowUs) -> ok */
static ERL_NIF_TERM sched_heartbeat_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return sched_agent_event(env, argv, emf_sched_heartbeat);
}
SCHED_NIF(sched_heartbeat, -1)

/* sched_set_agent_host(Sched, Agent, Host) -> ok: agent Agent runs on gossip member Host
 * (0: on no member in particular); sched_host_down takes it for dead with its host. */
static ERL_NIF_TERM sched_set_agent_host_impl(ErlNifEnv *env, int argc,
                                              const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 host;
    if (!enif_get_uint64(env, argv[2], &host)) {
        return argument_error(env, "host: expected a member id (a non-negative integer)");
    }
    SCHED_NAME_OR_RETURN(agent, argv[1], EMF_NIF_SCHED_AGENT_ERROR)
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        result = handle_leave_with(h, ok_or_error(env, emf_sched_set_agent_host(h->ptr, agent,
                                                                                host)));
    }
    enif_free(agent_heap);
    return result;
}
SCHED_NIF(sched_set_agent_host, -1)

/* sched_host_down(Sched, Host, NowUs) -> {ok, Removed}: membership declared member Host
 * dead; every agent recorded on it is dead (its tasks delivered again elsewhere). */
static ERL_NIF_TERM sched_host_down_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 host, now;
    if (!enif_get_uint64(env, argv[1], &host)) {
        return argument_error(env, "host: expected a member id (a non-negative integer)");
    }
    if (!enif_get_uint64(env, argv[2], &now)) {
        return argument_error(env, EMF_NIF_SCHED_NOW_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &sched_kind);
    size_t n = 0;
    emf_status_t st = emf_sched_host_down(h->ptr, host, now, &n);
    return handle_leave_with(h, ok_u64(env, st, n));
}
SCHED_NIF(sched_host_down, -1)

/* sched_submit(Sched, Type, Priority, Payload, NowUs) -> {ok, TaskId} | {error, {full, _}}
 * (back-pressure: nothing was accepted). */
static ERL_NIF_TERM sched_submit_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t priority;
    ErlNifBinary payload;
    ErlNifUInt64 now;
    if (!get_priority(argv[2], &priority)) {
        return argument_error(env, EMF_NIF_PRIORITY_ERROR);
    }
    if (!get_bytes(env, argv[3], &payload)) {
        return argument_error(env, "payload: expected a binary or iodata");
    }
    if (!enif_get_uint64(env, argv[4], &now)) {
        return argument_error(env, EMF_NIF_SCHED_NOW_ERROR);
    }
    SCHED_NAME_OR_RETURN(type, argv[1], EMF_NIF_SCHED_TYPE_ERROR)
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        uint64_t id = 0;
        emf_status_t st = emf_sched_submit(h->ptr, type, priority, payload.data, payload.size,
                                           now, &id);
        result = handle_leave_with(h, ok_u64(env, st, id));
    }
    enif_free(type_heap);
    return result;
}
SCHED_NIF(sched_submit, 3)

/* Reads (Task, Attempt, NowUs) from argv[2..4]; false with *error set. */
static bool sched_task_args(ErlNifEnv *env, const ERL_NIF_TERM argv[], ErlNifUInt64 *task,
                            uint32_t *attempt, ErlNifUInt64 *now, ERL_NIF_TERM *error) {
    if (!enif_get_uint64(env, argv[2], task) || *task == 0) {
        *error = argument_error(env, EMF_NIF_SCHED_TASK_ERROR);
        return false;
    }
    if (!get_u32(env, argv[3], attempt)) {
        *error = argument_error(env, EMF_NIF_SCHED_ATTEMPT_ERROR);
        return false;
    }
    if (!enif_get_uint64(env, argv[4], now)) {
        *error = argument_error(env, EMF_NIF_SCHED_NOW_ERROR);
        return false;
    }
    return true;
}

/* sched_started(Sched, Agent, Task, Attempt, NowUs) -> {ok, Current :: boolean()} */
static ERL_NIF_TERM sched_started_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 task, now;
    uint32_t attempt;
    ERL_NIF_TERM result;
    if (!sched_task_args(env, argv, &task, &attempt, &now, &result)) {
        return result;
    }
    SCHED_NAME_OR_RETURN(agent, argv[1], EMF_NIF_SCHED_AGENT_ERROR)
    emf_nif_handle *h;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        int current = 0;
        emf_status_t st = emf_sched_started(h->ptr, agent, task, attempt, now, &current);
        result = st == EMF_OK ? make_ok(env, current ? atom_true : atom_false)
                              : status_error(env, st);
        handle_leave(h);
    }
    enif_free(agent_heap);
    return result;
}
SCHED_NIF(sched_started, -1)

/* sched_ack(Sched, Agent, Task, Attempt, NowUs, Result) -> {ok, Duplicate :: boolean()} */
static ERL_NIF_TERM sched_ack_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 task, now;
    uint32_t attempt;
    ERL_NIF_TERM result;
    ErlNifBinary data;
    if (!sched_task_args(env, argv, &task, &attempt, &now, &result)) {
        return result;
    }
    if (!get_bytes(env, argv[5], &data)) {
        return argument_error(env, "result: expected a binary or iodata");
    }
    SCHED_NAME_OR_RETURN(agent, argv[1], EMF_NIF_SCHED_AGENT_ERROR)
    emf_nif_handle *h;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        int duplicate = 0;
        emf_status_t st = emf_sched_ack(h->ptr, agent, task, attempt, data.data, data.size, now,
                                        &duplicate);
        result = st == EMF_OK ? make_ok(env, duplicate ? atom_true : atom_false)
                              : status_error(env, st);
        handle_leave(h);
    }
    enif_free(agent_heap);
    return result;
}
SCHED_NIF(sched_ack, 5)

/* sched_nack(Sched, Agent, Task, Attempt, NowUs, Reason) -> {ok, Current :: boolean()} */
static ERL_NIF_TERM sched_nack_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 task, now;
    uint32_t attempt;
    ERL_NIF_TERM result;
    if (!sched_task_args(env, argv, &task, &attempt, &now, &result)) {
        return result;
    }
    char *reason = get_cstring(env, argv[5]);
    if (reason == NULL) {
        return argument_error(env, "reason: expected a binary or iodata without NUL");
    }
    char agent_stack[EMF_NIF_NAME_STACK_BUF], *agent_heap;
    const char *agent = get_name(env, argv[1], agent_stack, sizeof agent_stack, &agent_heap);
    if (agent == NULL) {
        enif_free(reason);
        return argument_error(env, EMF_NIF_SCHED_AGENT_ERROR);
    }
    emf_nif_handle *h;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        int current = 0;
        emf_status_t st = emf_sched_nack(h->ptr, agent, task, attempt, reason, now, &current);
        result = st == EMF_OK ? make_ok(env, current ? atom_true : atom_false)
                              : status_error(env, st);
        handle_leave(h);
    }
    enif_free(agent_heap);
    enif_free(reason);
    return result;
}
SCHED_NIF(sched_nack, 5)

/* sched_tick(Sched, NowUs) -> ok: expired leases released, queued tasks delivered. */
static ERL_NIF_TERM sched_tick_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 now;
    if (!enif_get_uint64(env, argv[1], &now)) {
        return argument_error(env, EMF_NIF_SCHED_NOW_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &sched_kind);
    return handle_leave_with(h, ok_or_error(env, emf_sched_tick(h->ptr, now)));
}
SCHED_NIF(sched_tick, -1)

/* One polled action as a term:
 *   {deliver, Agent, Task, Attempt, DeadlineUs, Payload}
 *   {revoke, Agent, Task, Attempt}
 *   {result, Task, Result}
 *   {dead_letter, Task, Reason} */
static ERL_NIF_TERM sched_action_term(ErlNifEnv *env, const emf_sched_action_t *a) {
    ERL_NIF_TERM task = enif_make_uint64(env, a->task);
    ERL_NIF_TERM data = make_binary_from(env, a->data, a->len);
    ERL_NIF_TERM agent =
        a->agent != NULL ? make_binary_from(env, a->agent, strlen(a->agent)) : atom_undefined;
    switch (a->kind) {
    case EMF_SCHED_ACTION_DELIVER:
        return enif_make_tuple6(env, atom_deliver, agent, task, enif_make_uint(env, a->attempt),
                                enif_make_uint64(env, a->deadline_us), data);
    case EMF_SCHED_ACTION_REVOKE:
        return enif_make_tuple4(env, atom_revoke, agent, task, enif_make_uint(env, a->attempt));
    case EMF_SCHED_ACTION_RESULT:
        return enif_make_tuple3(env, atom_result, task, data);
    default:
        return enif_make_tuple3(env, atom_dead_letter, task, data);
    }
}

/* sched_poll(Sched, Max) -> {ok, [Action], More :: boolean()}: up to Max actions, oldest
 * first, and at most about EMF_NIF_DIRTY_THRESHOLD bytes of them (at least one); More is true
 * when the call stopped at a limit (poll again). An action of another kind than the four
 * known (ruled out by the ABI version check) stops the poll with an error: the actions taken
 * before it are lost with that error, which cannot happen with a matching library. */
static ERL_NIF_TERM sched_poll_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t max;
    if (!get_u32(env, argv[1], &max) || max == 0) {
        return argument_error(env, "max: expected a positive 32-bit integer");
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &sched_kind);
    ERL_NIF_TERM list = enif_make_list(env, 0);
    size_t bytes = 0;
    bool more = false;
    for (uint32_t n = 0;; n++) {
        if (n == max || bytes > EMF_NIF_DIRTY_THRESHOLD) {
            more = true;
            break;
        }
        emf_sched_action_t a;
        emf_status_t st = emf_sched_poll_action(h->ptr, &a);
        if (st != EMF_OK) {
            return handle_leave_with(h, status_error(env, st));
        }
        if (a.kind == EMF_SCHED_ACTION_NONE) {
            break;
        }
        if (a.kind > EMF_SCHED_ACTION_DEAD_LETTER) {
            char msg[96];
            snprintf(msg, sizeof msg, "emf_sched_poll_action: unknown action kind %u",
                     (unsigned)a.kind);
            return handle_leave_with(h, shim_error(env, EMF_ERR_UNSUPPORTED, msg));
        }
        bytes = sat_add(bytes, a.len);
        list = enif_make_list_cell(env, sched_action_term(env, &a), list);
    }
    ERL_NIF_TERM actions;
    (void)enif_make_reverse_list(env, list, &actions); /* cannot fail: a proper list */
    return handle_leave_with(h, enif_make_tuple3(env, atom_ok, actions,
                                                 more ? atom_true : atom_false));
}
SCHED_NIF(sched_poll, -1)

/* sched_select_agent(Sched, Type) -> {ok, Agent} | {error, {full, _}} (no agent of the type
 * has spare capacity). Selects without leasing anything. */
static ERL_NIF_TERM sched_select_agent_impl(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    (void)argc;
    SCHED_NAME_OR_RETURN(type, argv[1], EMF_NIF_SCHED_TYPE_ERROR)
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        char buf[256]; /* agent ids are at most 194 bytes */
        size_t len = 0;
        emf_status_t st = emf_sched_select_agent(h->ptr, type, buf, sizeof buf, &len);
        result = st == EMF_OK ? make_ok(env, make_binary_from(env, buf, len))
                              : status_error(env, st);
        handle_leave(h);
    }
    enif_free(type_heap);
    return result;
}
SCHED_NIF(sched_select_agent, -1)

/* sched_agent_load(Sched, Agent) -> {ok, #{current_tasks, backlog, max_tasks, latency_us,
 * last_heartbeat_us}} | {error, {not_found, _}} */
static ERL_NIF_TERM sched_agent_load_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    SCHED_NAME_OR_RETURN(agent, argv[1], EMF_NIF_SCHED_AGENT_ERROR)
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        emf_sched_agent_load_t l;
        emf_status_t st = emf_sched_agent_load(h->ptr, agent, &l);
        if (st == EMF_OK) {
            ERL_NIF_TERM keys[] = {atom_current_tasks, atom_backlog, atom_max_tasks,
                                   atom_latency_us, atom_last_heartbeat_us};
            ERL_NIF_TERM values[] = {
                enif_make_uint(env, l.current_tasks), enif_make_uint(env, l.backlog),
                enif_make_uint(env, l.max_tasks),     enif_make_uint64(env, l.latency_us),
                enif_make_uint64(env, l.last_heartbeat_us)};
            result = make_ok(env, MAKE_MAP(env, keys, values));
        } else {
            result = status_error(env, st);
        }
        handle_leave(h);
    }
    enif_free(agent_heap);
    return result;
}
SCHED_NIF(sched_agent_load, -1)

/* sched_stats(Sched) -> {ok, #{...}}: emf_sched_stats_t. */
static ERL_NIF_TERM sched_stats_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &sched_kind);
    emf_sched_stats_t s;
    emf_status_t st = emf_sched_stats(h->ptr, &s);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM keys[] = {atom_queued,       atom_leased,       atom_completed,
                           atom_dead_lettered, atom_duplicates,  atom_redeliveries,
                           atom_steals,       atom_expired,      atom_agents_dead,
                           atom_ledger_errors, atom_agents};
    ERL_NIF_TERM values[] = {
        enif_make_uint64(env, s.queued),        enif_make_uint64(env, s.leased),
        enif_make_uint64(env, s.completed),     enif_make_uint64(env, s.dead_lettered),
        enif_make_uint64(env, s.duplicates),    enif_make_uint64(env, s.redeliveries),
        enif_make_uint64(env, s.steals),        enif_make_uint64(env, s.expired),
        enif_make_uint64(env, s.agents_dead),   enif_make_uint64(env, s.ledger_errors),
        enif_make_uint64(env, s.agents)};
    return handle_leave_with(h, make_ok(env, MAKE_MAP(env, keys, values)));
}
SCHED_NIF(sched_stats, -1)

/* sched_queued(Sched, Type) -> {ok, N}: tasks of Type waiting in the queue (a pool's demand). */
static ERL_NIF_TERM sched_queued_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    SCHED_NAME_OR_RETURN(type, argv[1], EMF_NIF_SCHED_TYPE_ERROR)
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (handle_use(env, argv[0], &sched_kind, &h, &result)) {
        size_t n = 0;
        emf_status_t st = emf_sched_queued(h->ptr, type, &n);
        result = ok_u64(env, st, n);
        handle_leave(h);
    }
    enif_free(type_heap);
    return result;
}
SCHED_NIF(sched_queued, -1)

/* pbft.c — Byzantine agreement NIFs over emf_pbft_group_* (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

/* ------------------------------------------------------------------------------------------ */
/* PBFT groups                                                                                */
/* ------------------------------------------------------------------------------------------ */

/*
 * A local PBFT group (emf_pbft_group_t): n = 3f + 1 replica threads of the engine over rings,
 * signing with fresh Ed25519 keys, replicating an order log, and a client. Agreement, the
 * fast path (tentative execution), view changes and timeouts are all the engine's; this file
 * only converts.
 *
 * Ownership. A group is a one-thread-at-a-time engine object (a second caller gets
 * {error, {busy, _}}): erlmcp_flow_pbft owns it in one gen_server, which alone calls these
 * NIFs with it. The handle is closable (pbft_group_close stops the replicas at once); a call
 * after the close gets {error, {closed, _}}. A handle dropped without a close stops its
 * replicas in the destructor.
 *
 * Scheduling. Every call but pbft_view waits for agreement or threads: they run on dirty I/O
 * schedulers (flagged in the NIF table).
 */

static emf_status_t release_pbft(void *ptr) {
    return emf_pbft_group_free(ptr);
}

static const emf_nif_handle_kind pbft_kind = {
    .name = "erlmcp_flow_pbft",
    .release = release_pbft,
    .release_what = "emf_pbft_group_free",
    .expected = "pbft: expected a handle from erlmcp_flow_nif:pbft_group_start/2",
    .not_this_version = "pbft: not a handle of this library version: expected a group of the "
                        "NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; start the group again)",
    .closed = "pbft: closed",
    .index = EMF_NIF_KIND_PBFT,
};

/* pbft_group_start(Dir, Opts) -> {ok, Group}: emf_pbft_group_start with the options of the
 * map (n, ed25519, accept_tentative, batch_window_us, view_change_timeout_ms, retransmit_ms,
 * timeout_ms; absent ones take the engine's defaults). */
static ERL_NIF_TERM nif_pbft_group_start(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    if (!enif_is_map(env, argv[1])) {
        return argument_error(env, "options: expected a map");
    }
    emf_pbft_group_options_t o;
    emf_status_t st = emf_pbft_group_options_default(&o);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM v;
    ErlNifUInt64 u;
    uint32_t u32;
    bool b;
#define PBFT_BOOL(field)                                                                       \
    if (enif_get_map_value(env, argv[1], atom_##field, &v)) {                                  \
        if (!get_bool(v, &b)) {                                                                \
            return argument_error(env, #field ": expected a boolean");                         \
        }                                                                                      \
        o.field = b ? 1 : 0;                                                                   \
    }
#define PBFT_U32(field, msg)                                                                   \
    if (enif_get_map_value(env, argv[1], atom_##field, &v)) {                                  \
        if (!get_u32(env, v, &u32)) {                                                          \
            return argument_error(env, (msg));                                                 \
        }                                                                                      \
        o.field = u32;                                                                         \
    }
    PBFT_BOOL(ed25519)
    PBFT_BOOL(accept_tentative)
    PBFT_U32(n, "n: expected a replica count 3f + 1 (a 32-bit integer)")
    PBFT_U32(view_change_timeout_ms, "view_change_timeout_ms: expected a positive 32-bit integer")
    PBFT_U32(retransmit_ms, "retransmit_ms: expected a positive 32-bit integer")
    PBFT_U32(timeout_ms, "timeout_ms: expected a positive 32-bit integer")
#undef PBFT_BOOL
#undef PBFT_U32
    if (enif_get_map_value(env, argv[1], atom_batch_window_us, &v)) {
        if (!enif_get_uint64(env, v, &u)) {
            return argument_error(env, "batch_window_us: expected a non-negative 64-bit integer");
        }
        o.batch_window_us = u;
    }
    char *dir = get_cstring(env, argv[0]);
    if (dir == NULL) {
        return argument_error(env, EMF_NIF_DIR_ERROR);
    }
    emf_pbft_group_t *g = NULL;
    st = emf_pbft_group_start(dir, &o, &g);
    enif_free(dir);
    return ok_handle(env, st, &pbft_kind, g, 0, 0);
}

/* pbft_group_close(Group) -> ok: stops the replicas now; idempotent. The directory stays. */
static ERL_NIF_TERM nif_pbft_group_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return handle_close_arg(env, argv[0], &pbft_kind);
}

/* pbft_execute(Group, Op) -> {ok, {Result, fast | slow}}: emf_pbft_group_execute. */
static ERL_NIF_TERM nif_pbft_execute(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary op;
    if (!get_bytes(env, argv[1], &op)) {
        return argument_error(env, "op: expected a binary or iodata");
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &pbft_kind);
    emf_buf_t out = {0};
    uint32_t path = 0;
    emf_status_t st = emf_pbft_group_execute(h->ptr, op.data, op.size, &out, &path);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM result = take_buf(env, &out);
    ERL_NIF_TERM p = path == EMF_PBFT_PATH_FAST ? atom_fast : atom_slow;
    return handle_leave_with(h, make_ok(env, enif_make_tuple2(env, result, p)));
}

/* pbft_stop_replica(Group, I) -> ok: emf_pbft_group_stop_replica (a crash, for tests). */
static ERL_NIF_TERM nif_pbft_stop_replica(ErlNifEnv *env, int argc,
                                          const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t i;
    if (!get_u32(env, argv[1], &i)) {
        return argument_error(env, "replica: expected a replica index (a 32-bit integer)");
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &pbft_kind);
    emf_status_t st = emf_pbft_group_stop_replica(h->ptr, i);
    return handle_leave_with(h, ok_or_error(env, st));
}

/* pbft_view(Group) -> {ok, View}: the view the client knows. */
static ERL_NIF_TERM nif_pbft_view(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &pbft_kind);
    uint64_t view = 0;
    emf_status_t st = emf_pbft_group_view(h->ptr, &view);
    return handle_leave_with(h, ok_u64(env, st, view));
}

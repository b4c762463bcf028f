/* raft.c — replicated state NIFs over emf_raft_cluster_* (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

/* ------------------------------------------------------------------------------------------ */
/* Raft clusters                                                                              */
/* ------------------------------------------------------------------------------------------ */

/*
 * A local Raft cluster (emf_raft_cluster_t): N `erlmcp-flow raft node' processes over rings
 * and the engine's client, which follows not-leader answers to the leader and retries during
 * elections. Consensus, batching (the leader's batch_window), redirects and timeouts are all
 * the engine's; this file only converts.
 *
 * Ownership. A cluster is a one-thread-at-a-time engine object (a second caller gets
 * {error, {busy, _}}, never a race): erlmcp_flow_raft owns it in one gen_server, which alone
 * calls these NIFs with it. The handle is closable (raft_cluster_close stops the nodes at
 * once); calls bracket their use with the use guard, and a call after the close gets
 * {error, {closed, _}}. A handle dropped without a close stops its nodes in the destructor.
 *
 * Scheduling. Every call waits for processes or a Raft round trip (a commit, an election):
 * all run on dirty I/O schedulers (flagged in the NIF table).
 */

static emf_status_t release_raft(void *ptr) {
    return emf_raft_cluster_free(ptr);
}

static const emf_nif_handle_kind raft_kind = {
    .name = "erlmcp_flow_raft",
    .release = release_raft,
    .release_what = "emf_raft_cluster_free",
    .expected = "raft: expected a handle from erlmcp_flow_nif:raft_cluster_start/3",
    .not_this_version = "raft: not a handle of this library version: expected a cluster of the "
                        "NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; start the cluster again)",
    .closed = "raft: closed",
    .index = EMF_NIF_KIND_RAFT,
};

#define EMF_NIF_RAFT_NODE_ERROR "node: expected a node id (a positive 64-bit integer)"
#define EMF_NIF_RAFT_INDEX_ERROR "index: expected a log index (a non-negative 64-bit integer)"
#define EMF_NIF_RAFT_BYTES_ERROR "expected a binary or iodata"

/* Answers that fit this many bytes are read without a heap allocation. */
#define EMF_NIF_RAFT_STACK_BUF 1024

/* The bytes of an answer: `st' and the first call's stack buffer; on EMF_ERR_BUFFER_TOO_SMALL
 * the kept bytes are taken with emf_raft_cluster_result into a binary of the needed size.
 * Returns false (and *error) on failure. */
static bool raft_answer(ErlNifEnv *env, emf_raft_cluster_t *c, emf_status_t st,
                        const uint8_t *stack, size_t len, ERL_NIF_TERM *out,
                        ERL_NIF_TERM *error) {
    if (st == EMF_OK) {
        *out = make_binary_from(env, stack, len);
        return true;
    }
    if (st != EMF_ERR_BUFFER_TOO_SMALL) {
        *error = status_error(env, st);
        return false;
    }
    ErlNifBinary bin;
    if (!enif_alloc_binary(len, &bin)) {
        *error = out_of_memory(env);
        return false;
    }
    size_t got = 0;
    st = emf_raft_cluster_result(c, bin.data, bin.size, &got);
    if (st != EMF_OK) {
        enif_release_binary(&bin);
        *error = status_error(env, st);
        return false;
    }
    if (got != bin.size && !enif_realloc_binary(&bin, got)) {
        enif_release_binary(&bin);
        *error = out_of_memory(env);
        return false;
    }
    *out = enif_make_binary(env, &bin);
    return true;
}

/* raft_cluster_start(N, Dir, Opts) -> {ok, Cluster}: emf_raft_cluster_start with the options
 * of the map (bin, memory, tick_ms, election_tick, start_timeout_ms, timeout_ms,
 * attempt_timeout_ms; absent ones take the engine's defaults). Waits for a first leader. */
static ERL_NIF_TERM nif_raft_cluster_start(ErlNifEnv *env, int argc,
                                           const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t n;
    if (!get_u32(env, argv[0], &n)) {
        return argument_error(env, "n: expected a node count (a 32-bit non-negative integer)");
    }
    if (!enif_is_map(env, argv[2])) {
        return argument_error(env, "options: expected a map");
    }
    emf_raft_cluster_options_t o;
    emf_status_t st = emf_raft_cluster_options_default(&o);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM v;
    ErlNifUInt64 u;
    uint32_t u32;
    bool b;
    if (enif_get_map_value(env, argv[2], atom_memory, &v)) {
        if (!get_bool(v, &b)) {
            return argument_error(env, "memory: expected a boolean");
        }
        o.memory = b ? 1 : 0;
    }
    if (enif_get_map_value(env, argv[2], atom_tick_ms, &v)) {
        if (!enif_get_uint64(env, v, &u)) {
            return argument_error(env, "tick_ms: expected a positive 64-bit integer");
        }
        o.tick_ms = u;
    }
#define RAFT_U32(field, key, msg)                                                              \
    if (enif_get_map_value(env, argv[2], atom_##key, &v)) {                                    \
        if (!get_u32(env, v, &u32)) {                                                          \
            return argument_error(env, (msg));                                                 \
        }                                                                                      \
        o.field = u32;                                                                         \
    }
    RAFT_U32(election_tick, election_tick, "election_tick: expected a 32-bit integer >= 2")
    RAFT_U32(start_timeout_ms, start_timeout_ms, "start_timeout_ms: expected a positive 32-bit integer")
    RAFT_U32(client.timeout_ms, timeout_ms, "timeout_ms: expected a positive 32-bit integer")
    RAFT_U32(client.attempt_timeout_ms, attempt_timeout_ms,
             "attempt_timeout_ms: expected a positive 32-bit integer")
#undef RAFT_U32
    char *bin = NULL;
    if (enif_get_map_value(env, argv[2], atom_bin, &v)) {
        bin = get_cstring(env, v);
        if (bin == NULL) {
            return argument_error(env, "bin: expected a path (binary or string) without NUL");
        }
        o.bin = bin;
    }
    char *dir = get_cstring(env, argv[1]);
    if (dir == NULL) {
        enif_free(bin);
        return argument_error(env, EMF_NIF_DIR_ERROR);
    }
    emf_raft_cluster_t *c = NULL;
    st = emf_raft_cluster_start(n, dir, &o, &c);
    enif_free(dir);
    enif_free(bin);
    return ok_handle(env, st, &raft_kind, c, 0, 0);
}

/* raft_cluster_close(Cluster) -> ok: stops the nodes now (SIGTERM, then SIGKILL after 2 s);
 * idempotent. The directory stays. */
static ERL_NIF_TERM nif_raft_cluster_close(ErlNifEnv *env, int argc,
                                           const ERL_NIF_TERM argv[]) {
    (void)argc;
    return handle_close_arg(env, argv[0], &raft_kind);
}

/* raft_submit(Cluster, Op) -> {ok, {Index, Result}}: emf_raft_cluster_submit. */
static ERL_NIF_TERM nif_raft_submit(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary op;
    if (!get_bytes(env, argv[1], &op)) {
        return argument_error(env, "op: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint8_t buf[EMF_NIF_RAFT_STACK_BUF];
    uint64_t index = 0;
    size_t len = 0;
    emf_status_t st = emf_raft_cluster_submit(h->ptr, op.data, op.size, &index, buf, sizeof buf,
                                              &len);
    ERL_NIF_TERM result, error;
    if (!raft_answer(env, h->ptr, st, buf, len, &result, &error)) {
        return handle_leave_with(h, error);
    }
    return handle_leave_with(
        h, make_ok(env, enif_make_tuple2(env, enif_make_uint64(env, index), result)));
}

/* raft_append_entry(Cluster, Entry) -> {ok, Index}: emf_raft_cluster_append_entry. */
static ERL_NIF_TERM nif_raft_append_entry(ErlNifEnv *env, int argc,
                                          const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary e;
    if (!get_bytes(env, argv[1], &e)) {
        return argument_error(env, "entry: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint64_t index = 0;
    emf_status_t st = emf_raft_cluster_append_entry(h->ptr, e.data, e.size, &index);
    return handle_leave_with(h, ok_u64(env, st, index));
}

/* raft_submit_many(Cluster, [Op], Window) -> {ok, [Index]}
 *   | {error, {Reason, Message, [Index | StatusAtom]}} | {error, {Reason, Message}}:
 * emf_raft_cluster_submit_many, up to Window operations in flight. When some operations
 * failed, the list says per operation its index or the atom of its status (`timeout': it may
 * yet commit); the 2-tuple error when the call failed before any operation was sent. */
static ERL_NIF_TERM nif_raft_submit_many(ErlNifEnv *env, int argc,
                                         const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t window;
    size_t n = 0;
    emf_nif_frames f = frames_count(env, argv[1], false, &n);
    if (f != EMF_NIF_FRAMES_OK) {
        return argument_error(env, f == EMF_NIF_FRAMES_IMPROPER
                                       ? "ops: expected a proper list"
                                       : "ops: expected a list of binaries or iodata");
    }
    if (!get_u32(env, argv[2], &window) || window == 0) {
        return argument_error(env, "window: expected a positive 32-bit integer");
    }
    emf_slice_t stack[EMF_NIF_BATCH_STACK_SLICES];
    ERL_NIF_TERM error;
    emf_slice_t *slices = frames_slices(env, argv[1], n, stack, &error);
    if (slices == NULL) {
        return error;
    }
    size_t cells = n > 0 ? n : 1;
    uint64_t *indexes = enif_alloc(cells * sizeof *indexes);
    emf_status_t *statuses = enif_alloc(cells * sizeof *statuses);
    if (indexes == NULL || statuses == NULL || cells > SIZE_MAX / sizeof *indexes) {
        enif_free(indexes);
        enif_free(statuses);
        frames_free(slices, stack);
        return shim_error(env, EMF_ERR_TOO_LARGE, "ops: out of memory");
    }
    emf_nif_handle *h;
    if (!handle_use(env, argv[0], &raft_kind, &h, &error)) {
        enif_free(indexes);
        enif_free(statuses);
        frames_free(slices, stack);
        return error;
    }
    for (size_t i = 0; i < n; i++) {
        statuses[i] = -1; /* not written: the call failed before the operations */
    }
    emf_status_t st = emf_raft_cluster_submit_many(h->ptr, slices, n, window, indexes, statuses);
    ERL_NIF_TERM result = atom_ok;
    bool written = true;
    for (size_t i = 0; i < n; i++) {
        written = written && statuses[i] != -1;
    }
    if (st != EMF_OK) {
        result = status_error(env, st);
    }
    if (written) {
        /* Per operation: its index, or the atom of its status. */
        ERL_NIF_TERM list = enif_make_list(env, 0);
        for (size_t i = n; i-- > 0;) {
            ERL_NIF_TERM v = statuses[i] == EMF_OK ? enif_make_uint64(env, indexes[i])
                                                    : status_atom(statuses[i]);
            list = enif_make_list_cell(env, v, list);
        }
        const ERL_NIF_TERM *outer, *inner;
        int arity;
        if (st == EMF_OK) {
            result = make_ok(env, list);
        } else if (enif_get_tuple(env, result, &arity, &outer) && arity == 2
                   && enif_get_tuple(env, outer[1], &arity, &inner) && arity == 2) {
            /* {error, {Reason, Message}} -> {error, {Reason, Message, PerOperation}} */
            result = enif_make_tuple2(env, atom_error,
                                      enif_make_tuple3(env, inner[0], inner[1], list));
        }
    }
    enif_free(indexes);
    enif_free(statuses);
    frames_free(slices, stack);
    return handle_leave_with(h, result);
}

/* raft_wait_committed(Cluster, Index, TimeoutMs) -> {ok, Applied}. */
static ERL_NIF_TERM nif_raft_wait_committed(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 index;
    uint32_t timeout_ms;
    if (!enif_get_uint64(env, argv[1], &index)) {
        return argument_error(env, EMF_NIF_RAFT_INDEX_ERROR);
    }
    if (!get_u32(env, argv[2], &timeout_ms)) {
        return argument_error(env, "timeout_ms: expected a 32-bit non-negative integer");
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint64_t applied = 0;
    emf_status_t st = emf_raft_cluster_wait_committed(h->ptr, index, timeout_ms, &applied);
    return handle_leave_with(h, ok_u64(env, st, applied));
}

/* raft_leader(Cluster) -> {ok, {Leader, Term}}. */
static ERL_NIF_TERM nif_raft_leader(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint64_t leader = 0, term = 0;
    emf_status_t st = emf_raft_cluster_leader(h->ptr, &leader, &term);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    return handle_leave_with(h, make_ok(env, enif_make_tuple2(env, enif_make_uint64(env, leader),
                                                              enif_make_uint64(env, term))));
}

/* raft_members(Cluster) -> {ok, [Id]}. */
static ERL_NIF_TERM nif_raft_members(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint64_t ids[EMF_RAFT_MAX_NODES];
    size_t n = 0;
    emf_status_t st = emf_raft_cluster_members(h->ptr, ids, EMF_RAFT_MAX_NODES, &n);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = n; i > 0; i--) {
        list = enif_make_list_cell(env, enif_make_uint64(env, ids[i - 1]), list);
    }
    return handle_leave_with(h, make_ok(env, list));
}

/* raft_stats(Cluster) -> {ok, Text}: emf_raft_cluster_stats (a line per node; parsed by
 * erlmcp_flow_raft:stats/1). */
static ERL_NIF_TERM nif_raft_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint8_t buf[EMF_NIF_RAFT_STACK_BUF];
    size_t len = 0;
    emf_status_t st = emf_raft_cluster_stats(h->ptr, buf, sizeof buf, &len);
    ERL_NIF_TERM text, error;
    if (!raft_answer(env, h->ptr, st, buf, len, &text, &error)) {
        return handle_leave_with(h, error);
    }
    return handle_leave_with(h, make_ok(env, text));
}

/* The node calls (Cluster, Node) -> ok. */
static ERL_NIF_TERM raft_node_call(ErlNifEnv *env, const ERL_NIF_TERM argv[],
                                   emf_status_t (*call)(emf_raft_cluster_t *, uint64_t)) {
    ErlNifUInt64 node;
    if (!enif_get_uint64(env, argv[1], &node) || node == 0) {
        return argument_error(env, EMF_NIF_RAFT_NODE_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    return handle_leave_with(h, ok_or_error(env, call(h->ptr, node)));
}

/* raft_kill(Cluster, Node) -> ok: SIGKILL (for tests). */
static ERL_NIF_TERM nif_raft_kill(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return raft_node_call(env, argv, emf_raft_cluster_kill);
}

/* raft_restart(Cluster, Node) -> ok. */
static ERL_NIF_TERM nif_raft_restart(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return raft_node_call(env, argv, emf_raft_cluster_restart);
}

/* raft_set(Cluster, Key, Value) -> {ok, Index}. */
static ERL_NIF_TERM nif_raft_set(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary k, v;
    if (!get_bytes(env, argv[1], &k)) {
        return argument_error(env, "key: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    if (!get_bytes(env, argv[2], &v)) {
        return argument_error(env, "value: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint64_t index = 0;
    emf_status_t st = emf_raft_cluster_set(h->ptr, k.data, k.size, v.data, v.size, &index);
    return handle_leave_with(h, ok_u64(env, st, index));
}

/* raft_get(Cluster, Key) -> {ok, {Index, Found, Value}}. */
static ERL_NIF_TERM nif_raft_get(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary k;
    if (!get_bytes(env, argv[1], &k)) {
        return argument_error(env, "key: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint8_t buf[EMF_NIF_RAFT_STACK_BUF];
    uint64_t index = 0;
    uint32_t found = 0;
    size_t len = 0;
    emf_status_t st =
        emf_raft_cluster_get(h->ptr, k.data, k.size, &index, &found, buf, sizeof buf, &len);
    ERL_NIF_TERM value, error;
    if (!raft_answer(env, h->ptr, st, buf, len, &value, &error)) {
        return handle_leave_with(h, error);
    }
    return handle_leave_with(
        h, make_ok(env, enif_make_tuple3(env, enif_make_uint64(env, index),
                                         found ? atom_true : atom_false, value)));
}

/* raft_cas(Cluster, Key, Expected, New) -> {ok, {Index, Swapped, HadPrevious, Previous}};
 * Expected is `none' (the key must be absent) or a binary. */
static ERL_NIF_TERM nif_raft_cas(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary k, e, n;
    uint32_t has_expected = 1;
    if (!get_bytes(env, argv[1], &k)) {
        return argument_error(env, "key: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    if (enif_is_identical(argv[2], atom_none)) {
        has_expected = 0;
        e.data = NULL;
        e.size = 0;
    } else if (!get_bytes(env, argv[2], &e)) {
        return argument_error(env, "expected: `none' or a binary or iodata");
    }
    if (!get_bytes(env, argv[3], &n)) {
        return argument_error(env, "new: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint8_t buf[EMF_NIF_RAFT_STACK_BUF];
    uint64_t index = 0;
    uint32_t swapped = 0, had = 0;
    size_t len = 0;
    emf_status_t st = emf_raft_cluster_cas(h->ptr, k.data, k.size, &index, has_expected, e.data,
                                           e.size, n.data, n.size, &swapped, &had, buf,
                                           sizeof buf, &len);
    ERL_NIF_TERM prev, error;
    if (!raft_answer(env, h->ptr, st, buf, len, &prev, &error)) {
        return handle_leave_with(h, error);
    }
    return handle_leave_with(
        h, make_ok(env, enif_make_tuple4(env, enif_make_uint64(env, index),
                                         swapped ? atom_true : atom_false,
                                         had ? atom_true : atom_false, prev)));
}

/* raft_read(Cluster, Query) -> {ok, {ReadIndex, Answer}}: emf_raft_cluster_read (a
 * linearizable ReadIndex read at the leader; no log entry). */
static ERL_NIF_TERM nif_raft_read(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary q;
    if (!get_bytes(env, argv[1], &q)) {
        return argument_error(env, "query: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint8_t buf[EMF_NIF_RAFT_STACK_BUF];
    uint64_t index = 0;
    size_t len = 0;
    emf_status_t st = emf_raft_cluster_read(h->ptr, q.data, q.size, &index, buf, sizeof buf,
                                            &len);
    ERL_NIF_TERM answer, error;
    if (!raft_answer(env, h->ptr, st, buf, len, &answer, &error)) {
        return handle_leave_with(h, error);
    }
    return handle_leave_with(
        h, make_ok(env, enif_make_tuple2(env, enif_make_uint64(env, index), answer)));
}

/* raft_transfer_leader(Cluster, To) -> {ok, Term}: emf_raft_cluster_transfer_leader (waits
 * until `To' leads). */
static ERL_NIF_TERM nif_raft_transfer_leader(ErlNifEnv *env, int argc,
                                             const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 to;
    if (!enif_get_uint64(env, argv[1], &to) || to == 0) {
        return argument_error(env, EMF_NIF_RAFT_NODE_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint64_t term = 0;
    emf_status_t st = emf_raft_cluster_transfer_leader(h->ptr, to, &term);
    return handle_leave_with(h, ok_u64(env, st, term));
}

/* raft_change_membership(Cluster, [{Kind, Node}]) -> {ok, Index}: Kind 1 add voter, 2 add
 * learner, 3 remove (erlmcp_flow_raft maps its atoms; the engine checks the kinds). */
static ERL_NIF_TERM nif_raft_change_membership(ErlNifEnv *env, int argc,
                                               const ERL_NIF_TERM argv[]) {
    (void)argc;
    static const char *const bad =
        "changes: expected a list of 1 to 64 {Kind, Node} (Kind 1..3, Node a positive integer)";
    unsigned n = 0;
    if (!enif_get_list_length(env, argv[1], &n) || n == 0 || n > EMF_RAFT_MAX_CHANGES) {
        return argument_error(env, bad);
    }
    emf_raft_member_change_t changes[EMF_RAFT_MAX_CHANGES];
    ERL_NIF_TERM list = argv[1], head;
    for (unsigned i = 0; i < n; i++) {
        const ERL_NIF_TERM *t;
        int arity = 0;
        uint32_t kind;
        ErlNifUInt64 node;
        if (!enif_get_list_cell(env, list, &head, &list) ||
            !enif_get_tuple(env, head, &arity, &t) || arity != 2 ||
            !get_u32(env, t[0], &kind) || !enif_get_uint64(env, t[1], &node) || node == 0) {
            return argument_error(env, bad);
        }
        changes[i].kind = kind;
        changes[i].node = node;
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint64_t index = 0;
    emf_status_t st = emf_raft_cluster_change_membership(h->ptr, changes, n, &index);
    return handle_leave_with(h, ok_u64(env, st, index));
}

static ERL_NIF_TERM raft_id_list(ErlNifEnv *env, const uint64_t *ids, size_t n) {
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = n; i > 0; i--) {
        list = enif_make_list_cell(env, enif_make_uint64(env, ids[i - 1]), list);
    }
    return list;
}

/* raft_membership(Cluster) -> {ok, {Voters, Learners, Joint}}: emf_raft_cluster_membership. */
static ERL_NIF_TERM nif_raft_membership(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_kind);
    uint64_t ids[2 * EMF_RAFT_MAX_NODES];
    size_t nv = 0, nl = 0;
    uint32_t joint = 0;
    emf_status_t st =
        emf_raft_cluster_membership(h->ptr, ids, 2 * EMF_RAFT_MAX_NODES, &nv, &nl, &joint);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM t = enif_make_tuple3(env, raft_id_list(env, ids, nv),
                                      raft_id_list(env, ids + nv, nl),
                                      joint ? atom_true : atom_false);
    return handle_leave_with(h, make_ok(env, t));
}

/* ------------------------------------------------------------------------------------------ */
/* In-process nodes whose state machine Erlang answers, and clients of a running cluster     */
/* ------------------------------------------------------------------------------------------ */

/*
 * A node of a cluster over rings running in this VM (emf_raft_node_start_remote): its thread
 * is the engine's; every call of the node into its state machine is a request that Erlang
 * fetches (raft_node_next_request, blocking on a dirty I/O scheduler) and answers
 * (raft_node_reply) — a NIF cannot call Erlang, so the engine waits instead. No thread or
 * lock of this file: the request queue, the wait, its timeout and the stop are the engine's
 * (replica::remote_sm). erlmcp_flow_raft_node owns a node: a linked worker loops on
 * next_request while its gen_server replies, so two calls may use one node at once (the
 * engine handle is thread-safe; the use guard keeps it alive until both returned).
 *
 * A client (emf_raft_client_connect) submits to any cluster over rings: this VM's nodes,
 * `erlmcp-flow raft node' processes, other hosts' nodes. One caller at a time.
 */

static emf_status_t release_raft_node(void *ptr) {
    return emf_raft_node_free(ptr);
}

static const emf_nif_handle_kind raft_node_kind = {
    .name = "erlmcp_flow_raft_node",
    .release = release_raft_node,
    .release_what = "emf_raft_node_free",
    .expected = "raft node: expected a handle from erlmcp_flow_nif:raft_node_start/3",
    .not_this_version = "raft node: not a handle of this library version: expected a node of "
                        "the NIF library loaded now (start the node again)",
    .closed = "raft node: closed",
    .index = EMF_NIF_KIND_RAFT_NODE,
};

static emf_status_t release_raft_client(void *ptr) {
    return emf_raft_client_free(ptr);
}

static const emf_nif_handle_kind raft_client_kind = {
    .name = "erlmcp_flow_raft_client",
    .release = release_raft_client,
    .release_what = "emf_raft_client_free",
    .expected = "raft client: expected a handle from erlmcp_flow_nif:raft_client_connect/3",
    .not_this_version = "raft client: not a handle of this library version: expected a client "
                        "of the NIF library loaded now (connect again)",
    .closed = "raft client: closed",
    .index = EMF_NIF_KIND_RAFT_CLIENT,
};

#define EMF_NIF_RAFT_IDS_ERROR                                                                 \
    "voters: expected a list of 1 to 64 node ids (positive 64-bit integers)"

/* A list of 1..EMF_RAFT_MAX_NODES positive ids into ids[]; false when it is not one. */
static bool get_raft_ids(ErlNifEnv *env, ERL_NIF_TERM list, uint64_t *ids, size_t *n) {
    unsigned len = 0;
    if (!enif_get_list_length(env, list, &len) || len == 0 || len > EMF_RAFT_MAX_NODES) {
        return false;
    }
    ERL_NIF_TERM head;
    for (unsigned i = 0; i < len; i++) {
        ErlNifUInt64 id;
        if (!enif_get_list_cell(env, list, &head, &list) || !enif_get_uint64(env, head, &id) ||
            id == 0) {
            return false;
        }
        ids[i] = id;
    }
    *n = len;
    return true;
}

/* raft_node_start(Id, Voters, Opts) -> {ok, Node}: emf_raft_node_start_remote, options of the
 * map: ring_dir (required), data_dir (absent: the log in memory), tick_ms, election_tick,
 * heartbeat_tick, snapshot_entries, timeout_ms (the longest the node waits for an answer;
 * 0 or absent: 5000). Returns once the node's inbox and log are open. */
static ERL_NIF_TERM nif_raft_node_start(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_raft_node_options_t o;
    emf_status_t st = emf_raft_node_options_default(&o);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ErlNifUInt64 id;
    if (!enif_get_uint64(env, argv[0], &id) || id == 0) {
        return argument_error(env, EMF_NIF_RAFT_NODE_ERROR);
    }
    uint64_t voters[EMF_RAFT_MAX_NODES];
    size_t n_voters = 0;
    if (!get_raft_ids(env, argv[1], voters, &n_voters)) {
        return argument_error(env, EMF_NIF_RAFT_IDS_ERROR);
    }
    if (!enif_is_map(env, argv[2])) {
        return argument_error(env, "options: expected a map");
    }
    o.id = id;
    o.voters = voters;
    o.n_voters = n_voters;
    ERL_NIF_TERM v;
    ErlNifUInt64 u, timeout_ms = 0;
    uint32_t u32;
#define RAFT_NODE_U64(field, key, msg)                                                         \
    if (enif_get_map_value(env, argv[2], atom_##key, &v)) {                                    \
        if (!enif_get_uint64(env, v, &u)) {                                                    \
            return argument_error(env, (msg));                                                 \
        }                                                                                      \
        field = u;                                                                             \
    }
#define RAFT_NODE_U32(field, key, msg)                                                         \
    if (enif_get_map_value(env, argv[2], atom_##key, &v)) {                                    \
        if (!get_u32(env, v, &u32)) {                                                          \
            return argument_error(env, (msg));                                                 \
        }                                                                                      \
        field = u32;                                                                           \
    }
    RAFT_NODE_U64(o.tick_ms, tick_ms, "tick_ms: expected a positive 64-bit integer")
    RAFT_NODE_U64(o.snapshot_entries, snapshot_entries,
                  "snapshot_entries: expected a non-negative 64-bit integer")
    RAFT_NODE_U64(timeout_ms, timeout_ms, "timeout_ms: expected a non-negative 64-bit integer")
    RAFT_NODE_U32(o.election_tick, election_tick, "election_tick: expected a 32-bit integer")
    RAFT_NODE_U32(o.heartbeat_tick, heartbeat_tick, "heartbeat_tick: expected a 32-bit integer")
#undef RAFT_NODE_U64
#undef RAFT_NODE_U32
    if (!enif_get_map_value(env, argv[2], atom_ring_dir, &v)) {
        return argument_error(env, "ring_dir: required (the cluster's ring directory)");
    }
    char *ring_dir = get_cstring(env, v);
    if (ring_dir == NULL) {
        return argument_error(env, "ring_dir: expected a path (binary or string) without NUL");
    }
    char *data_dir = NULL;
    if (enif_get_map_value(env, argv[2], atom_data_dir, &v)) {
        data_dir = get_cstring(env, v);
        if (data_dir == NULL) {
            enif_free(ring_dir);
            return argument_error(env,
                                  "data_dir: expected a path (binary or string) without NUL");
        }
    }
    o.ring_dir = ring_dir;
    o.data_dir = data_dir;
    emf_raft_node_t *node = NULL;
    st = emf_raft_node_start_remote(&o, timeout_ms, &node);
    enif_free(ring_dir);
    enif_free(data_dir);
    return ok_handle(env, st, &raft_node_kind, node, 0, 0);
}

/* raft_node_next_request(Node, TimeoutMs) -> {ok, Request} | {error, {timeout, _}}
 * | {error, {closed, _}} (the node has stopped: raft_node_stop says why), Request one of
 * {apply, Id, Index, Op}, {snapshot, Id}, {restore, Id, Snapshot}, {query, Id, Query}.
 * Blocks up to TimeoutMs (dirty I/O). */
static ERL_NIF_TERM nif_raft_node_next_request(ErlNifEnv *env, int argc,
                                               const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t timeout_ms;
    if (!get_u32(env, argv[1], &timeout_ms)) {
        return argument_error(env, "timeout_ms: expected a 32-bit non-negative integer");
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_node_kind);
    uint8_t stack[EMF_NIF_RAFT_STACK_BUF];
    emf_raft_request_t r;
    size_t len = 0;
    emf_status_t st =
        emf_raft_node_next_request(h->ptr, timeout_ms, &r, stack, sizeof stack, &len);
    ERL_NIF_TERM bytes;
    if (st == EMF_OK) {
        bytes = make_binary_from(env, stack, len);
    } else if (st == EMF_ERR_BUFFER_TOO_SMALL) {
        /* The request is kept by the engine: fetch it again into a binary of its size. */
        ErlNifBinary bin;
        if (!enif_alloc_binary(len, &bin)) {
            return handle_leave_with(h, out_of_memory(env));
        }
        st = emf_raft_node_next_request(h->ptr, 0, &r, bin.data, bin.size, &len);
        if (st != EMF_OK || len != bin.size) {
            enif_release_binary(&bin);
            /* A kept request that timed out meanwhile: the caller asks again. */
            return handle_leave_with(h, status_error(env, st == EMF_OK ? EMF_ERR_TIMEOUT : st));
        }
        bytes = enif_make_binary(env, &bin);
    } else {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM id = enif_make_uint64(env, r.id), req;
    switch (r.kind) {
    case EMF_RAFT_REQ_APPLY:
        req = enif_make_tuple4(env, atom_apply, id, enif_make_uint64(env, r.index), bytes);
        break;
    case EMF_RAFT_REQ_SNAPSHOT:
        req = enif_make_tuple2(env, atom_snapshot, id);
        break;
    case EMF_RAFT_REQ_RESTORE:
        req = enif_make_tuple3(env, atom_restore, id, bytes);
        break;
    case EMF_RAFT_REQ_QUERY:
        req = enif_make_tuple3(env, atom_query, id, bytes);
        break;
    default:
        return handle_leave_with(h, shim_error(env, EMF_ERR_CORRUPT,
                                               "raft node: a request of an unknown kind"));
    }
    return handle_leave_with(h, make_ok(env, req));
}

/* raft_node_reply(Node, Id, Status, Bytes) -> ok: emf_raft_node_reply (Status 0: Bytes is
 * the answer; else the node's request failed and Bytes says why). */
static ERL_NIF_TERM nif_raft_node_reply(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifUInt64 id;
    int status;
    ErlNifBinary b;
    if (!enif_get_uint64(env, argv[1], &id)) {
        return argument_error(env, "id: expected a request id (a 64-bit integer)");
    }
    if (!enif_get_int(env, argv[2], &status)) {
        return argument_error(env, "status: expected an integer (0: an answer)");
    }
    if (!get_bytes(env, argv[3], &b)) {
        return argument_error(env, "answer: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_node_kind);
    emf_status_t st = emf_raft_node_reply(h->ptr, id, status, b.data, b.size);
    return handle_leave_with(h, ok_or_error(env, st));
}

/* raft_node_stop(Node) -> ok | {error, {stopped, Why}} | ...: emf_raft_node_stop (joins the
 * node's thread; the handle stays usable for raft_node_info until closed). */
static ERL_NIF_TERM nif_raft_node_stop(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_node_kind);
    return handle_leave_with(h, ok_or_error(env, emf_raft_node_stop(h->ptr)));
}

/* raft_node_info(Node) -> {ok, #{id, leader, term, commit, applied, running}}. */
static ERL_NIF_TERM nif_raft_node_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_node_kind);
    emf_raft_node_info_t i;
    emf_status_t st = emf_raft_node_info(h->ptr, &i);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM keys[] = {atom_id, atom_leader, atom_term, atom_commit, atom_applied,
                           atom_running};
    ERL_NIF_TERM values[] = {enif_make_uint64(env, i.id),     enif_make_uint64(env, i.leader),
                             enif_make_uint64(env, i.term),   enif_make_uint64(env, i.commit),
                             enif_make_uint64(env, i.applied), i.running ? atom_true : atom_false};
    return handle_leave_with(h, make_ok(env, MAKE_MAP(env, keys, values)));
}

/* raft_node_close(Node) -> ok: stops the node (its error lost: raft_node_stop first to see
 * it) and releases the handle once no call uses it; idempotent. */
static ERL_NIF_TERM nif_raft_node_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return handle_close_arg(env, argv[0], &raft_node_kind);
}

/* raft_client_connect(RingDir, Nodes, Opts) -> {ok, Client}: emf_raft_client_connect to the
 * cluster over the rings of RingDir (options timeout_ms, attempt_timeout_ms). */
static ERL_NIF_TERM nif_raft_client_connect(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint64_t nodes[EMF_RAFT_MAX_NODES];
    size_t n = 0;
    if (!get_raft_ids(env, argv[1], nodes, &n)) {
        return argument_error(env,
                              "nodes: expected a list of 1 to 64 node ids (positive integers)");
    }
    if (!enif_is_map(env, argv[2])) {
        return argument_error(env, "options: expected a map");
    }
    emf_raft_client_options_t o;
    emf_status_t st = emf_raft_client_options_default(&o);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM v;
    uint32_t u32;
    if (enif_get_map_value(env, argv[2], atom_timeout_ms, &v)) {
        if (!get_u32(env, v, &u32)) {
            return argument_error(env, "timeout_ms: expected a positive 32-bit integer");
        }
        o.timeout_ms = u32;
    }
    if (enif_get_map_value(env, argv[2], atom_attempt_timeout_ms, &v)) {
        if (!get_u32(env, v, &u32)) {
            return argument_error(env, "attempt_timeout_ms: expected a positive 32-bit integer");
        }
        o.attempt_timeout_ms = u32;
    }
    char *dir = get_cstring(env, argv[0]);
    if (dir == NULL) {
        return argument_error(env, EMF_NIF_DIR_ERROR);
    }
    emf_raft_client_t *c = NULL;
    st = emf_raft_client_connect(dir, nodes, n, &o, &c);
    enif_free(dir);
    return ok_handle(env, st, &raft_client_kind, c, 0, 0);
}

/* raft_client_submit(Client, Op) -> {ok, {Index, Result}}: emf_raft_client_submit. */
static ERL_NIF_TERM nif_raft_client_submit(ErlNifEnv *env, int argc,
                                           const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary op;
    if (!get_bytes(env, argv[1], &op)) {
        return argument_error(env, "op: " EMF_NIF_RAFT_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &raft_client_kind);
    uint8_t buf[EMF_NIF_RAFT_STACK_BUF];
    uint64_t index = 0;
    size_t len = 0;
    emf_status_t st =
        emf_raft_client_submit(h->ptr, op.data, op.size, &index, buf, sizeof buf, &len);
    ERL_NIF_TERM result;
    if (st == EMF_OK) {
        result = make_binary_from(env, buf, len);
    } else if (st == EMF_ERR_BUFFER_TOO_SMALL) {
        ErlNifBinary bin;
        if (!enif_alloc_binary(len, &bin)) {
            return handle_leave_with(h, out_of_memory(env));
        }
        size_t got = 0;
        st = emf_raft_client_result(h->ptr, bin.data, bin.size, &got);
        if (st != EMF_OK || (got != bin.size && !enif_realloc_binary(&bin, got))) {
            enif_release_binary(&bin);
            return handle_leave_with(h, st != EMF_OK ? status_error(env, st)
                                                     : out_of_memory(env));
        }
        result = enif_make_binary(env, &bin);
    } else {
        return handle_leave_with(h, status_error(env, st));
    }
    return handle_leave_with(
        h, make_ok(env, enif_make_tuple2(env, enif_make_uint64(env, index), result)));
}

/* raft_client_close(Client) -> ok: releases the client; idempotent. */
static ERL_NIF_TERM nif_raft_client_close(ErlNifEnv *env, int argc,
                                          const ERL_NIF_TERM argv[]) {
    (void)argc;
    return handle_close_arg(env, argv[0], &raft_client_kind);
}

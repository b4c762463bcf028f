/*
 * gossip.c — gossip members (emf_gossip_*): SWIM membership and push-pull gossip of a
 * versioned key -> value map, run by the engine on a thread of its own
 * (mesh::runner::spawn_member). No thread or lock of this file: every call is a request to
 * the member's thread, answered by the engine; the calls that wait for that answer (all but
 * close) run on dirty I/O schedulers. erlmcp_flow_gossip owns a member: a linked worker
 * loops on gossip_next_event while its gen_server serves the calls, so two calls may use one
 * member at once (the engine handle is thread-safe; the use guard keeps it alive until both
 * returned).
 */

static emf_status_t release_gossip(void *ptr) {
    return emf_gossip_free(ptr);
}

static const emf_nif_handle_kind gossip_kind = {
    .name = "erlmcp_flow_gossip",
    .release = release_gossip,
    .release_what = "emf_gossip_free",
    .expected = "gossip member: expected a handle from erlmcp_flow_nif:gossip_start/2",
    .not_this_version = "gossip member: not a handle of this library version: expected a "
                        "member of the NIF library loaded now (start the member again)",
    .closed = "gossip member: closed",
    .index = EMF_NIF_KIND_GOSSIP,
};

#define EMF_NIF_GOSSIP_BYTES_ERROR "expected a binary or iodata"
#define EMF_NIF_GOSSIP_PEERS_ERROR                                                             \
    "peers: expected a list of member ids (positive integers), or over TCP of {Id, "           \
    "<<\"ip:port\">>} pairs"

/* The peers and seeds of a start: ids, and over TCP their address strings (enif_free'd by
 * gossip_args_free). */
typedef struct gossip_args {
    uint64_t *peers;
    char **addrs;
    size_t n_peers;
    uint64_t *seeds;
    size_t n_seeds;
    char *dir;
    char *listen;
} gossip_args;

static void gossip_args_free(gossip_args *a) {
    if (a->addrs != NULL) {
        for (size_t i = 0; i < a->n_peers; i++) {
            enif_free(a->addrs[i]);
        }
        enif_free(a->addrs);
    }
    enif_free(a->peers);
    enif_free(a->seeds);
    enif_free(a->dir);
    enif_free(a->listen);
}

/* A list of positive ids into a new array (*out NULL for an empty list); false if it is not
 * one, or too long. */
static bool get_gossip_ids(ErlNifEnv *env, ERL_NIF_TERM list, uint64_t **out, size_t *n) {
    unsigned len = 0;
    if (!enif_get_list_length(env, list, &len) || len > EMF_GOSSIP_MAX_PEERS) {
        return false;
    }
    *n = len;
    *out = NULL;
    if (len == 0) {
        return true;
    }
    uint64_t *ids = enif_alloc(sizeof(uint64_t) * len);
    if (ids == NULL) {
        return false;
    }
    ERL_NIF_TERM head;
    for (unsigned i = 0; i < len; i++) {
        ErlNifUInt64 id;
        if (!enif_get_list_cell(env, list, &head, &list) || !enif_get_uint64(env, head, &id) ||
            id == 0) {
            enif_free(ids);
            return false;
        }
        ids[i] = id;
    }
    *out = ids;
    return true;
}

/* A list of {Id, Address} pairs into ids and address strings; false if it is not one. */
static bool get_gossip_tcp_peers(ErlNifEnv *env, ERL_NIF_TERM list, gossip_args *a) {
    unsigned len = 0;
    if (!enif_get_list_length(env, list, &len) || len > EMF_GOSSIP_MAX_PEERS) {
        return false;
    }
    if (len == 0) {
        return true;
    }
    a->peers = enif_alloc(sizeof(uint64_t) * len);
    a->addrs = enif_alloc(sizeof(char *) * len);
    if (a->peers == NULL || a->addrs == NULL) {
        return false;
    }
    ERL_NIF_TERM head;
    for (unsigned i = 0; i < len; i++) {
        const ERL_NIF_TERM *pair;
        int arity;
        ErlNifUInt64 id;
        if (!enif_get_list_cell(env, list, &head, &list) ||
            !enif_get_tuple(env, head, &arity, &pair) || arity != 2 ||
            !enif_get_uint64(env, pair[0], &id) || id == 0) {
            return false;
        }
        char *addr = get_cstring(env, pair[1]);
        if (addr == NULL) {
            return false;
        }
        a->peers[i] = id;
        a->addrs[i] = addr;
        a->n_peers = i + 1;
    }
    return true;
}

/* gossip_start(Id, Opts) -> {ok, Member}: emf_gossip_start with the options of the map:
 * dir (a ring directory: rings) or listen (<<"ip:port">>: TCP), peers (ids over rings,
 * [{Id, <<"ip:port">>}] over TCP), seeds, gossip_interval_ms, anti_entropy_interval_ms,
 * max_fan_out, probe_period_ms, suspicion_timeout_ms, generation, inbox_capacity, seed.
 * Returns once the member runs (dirty I/O). */
static ERL_NIF_TERM nif_gossip_start(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_gossip_options_t o;
    emf_status_t st = emf_gossip_options_default(&o);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ErlNifUInt64 id;
    if (!enif_get_uint64(env, argv[0], &id) || id == 0) {
        return argument_error(env, "id: expected a positive 64-bit integer");
    }
    if (!enif_is_map(env, argv[1])) {
        return argument_error(env, "options: expected a map");
    }
    o.id = id;
    ERL_NIF_TERM v;
    ErlNifUInt64 u;
#define GOSSIP_U64(field, key, scale, msg)                                                     \
    if (enif_get_map_value(env, argv[1], atom_##key, &v)) {                                    \
        if (!enif_get_uint64(env, v, &u) || u > UINT64_MAX / (scale)) {                        \
            return argument_error(env, (msg));                                                 \
        }                                                                                      \
        field = u * (scale);                                                                   \
    }
    GOSSIP_U64(o.gossip_interval_us, gossip_interval_ms, 1000,
               "gossip_interval_ms: expected a positive integer")
    GOSSIP_U64(o.anti_entropy_interval_us, anti_entropy_interval_ms, 1000,
               "anti_entropy_interval_ms: expected a non-negative integer (0: off)")
    GOSSIP_U64(o.probe_period_us, probe_period_ms, 1000,
               "probe_period_ms: expected a positive integer")
    GOSSIP_U64(o.suspicion_timeout_us, suspicion_timeout_ms, 1000,
               "suspicion_timeout_ms: expected a non-negative integer (0: from the cluster size)")
    GOSSIP_U64(o.generation, generation, 1, "generation: expected a non-negative integer")
    GOSSIP_U64(o.seed, seed, 1, "seed: expected a non-negative integer")
#undef GOSSIP_U64
    if (enif_get_map_value(env, argv[1], atom_max_fan_out, &v)) {
        uint32_t f;
        if (!get_u32(env, v, &f)) {
            return argument_error(env, "max_fan_out: expected a positive 32-bit integer");
        }
        o.max_fan_out = f;
    }
    if (enif_get_map_value(env, argv[1], atom_inbox_capacity, &v)) {
        size_t c;
        if (!get_size(env, v, &c)) {
            return argument_error(env, "inbox_capacity: expected a power of two");
        }
        o.inbox_capacity = c;
    }
    gossip_args a;
    memset(&a, 0, sizeof a);
    ERL_NIF_TERM result;
    bool has_dir = enif_get_map_value(env, argv[1], atom_dir, &v);
    if (has_dir) {
        a.dir = get_cstring(env, v);
        if (a.dir == NULL) {
            return argument_error(env, EMF_NIF_DIR_ERROR);
        }
    } else if (enif_get_map_value(env, argv[1], atom_listen, &v)) {
        a.listen = get_cstring(env, v);
        if (a.listen == NULL) {
            return argument_error(env, "listen: expected <<\"ip:port\">> without NUL");
        }
    } else {
        return argument_error(env, "options: dir (rings) or listen (TCP) is required");
    }
    if (enif_get_map_value(env, argv[1], atom_peers, &v)) {
        bool ok = has_dir ? get_gossip_ids(env, v, &a.peers, &a.n_peers)
                          : get_gossip_tcp_peers(env, v, &a);
        if (!ok) {
            result = argument_error(env, EMF_NIF_GOSSIP_PEERS_ERROR);
            goto out;
        }
    }
    if (enif_get_map_value(env, argv[1], atom_seeds, &v) &&
        !get_gossip_ids(env, v, &a.seeds, &a.n_seeds)) {
        result = argument_error(env, "seeds: expected a list of member ids (positive integers)");
        goto out;
    }
    o.ring_dir = a.dir;
    o.listen = a.listen;
    o.peers = a.peers;
    o.n_peers = a.n_peers;
    o.peer_addrs = (const char *const *)a.addrs;
    o.seeds = a.seeds;
    o.n_seeds = a.n_seeds;
    emf_gossip_t *g = NULL;
    st = emf_gossip_start(&o, &g);
    result = ok_handle(env, st, &gossip_kind, g, 0, 0);
out:
    gossip_args_free(&a);
    return result;
}

/* gossip_put(Member, Key, Value) -> {ok, Counter}: emf_gossip_put (the version's counter). */
static ERL_NIF_TERM nif_gossip_put(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary k, val;
    if (!get_bytes(env, argv[1], &k)) {
        return argument_error(env, "key: " EMF_NIF_GOSSIP_BYTES_ERROR);
    }
    if (!get_bytes(env, argv[2], &val)) {
        return argument_error(env, "value: " EMF_NIF_GOSSIP_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &gossip_kind);
    uint64_t counter = 0;
    emf_status_t st = emf_gossip_put(h->ptr, k.data, k.size, val.data, val.size, &counter);
    return handle_leave_with(h, ok_u64(env, st, counter));
}

/* gossip_get(Member, Key) -> {ok, Value} | {error, {not_found, _}}: emf_gossip_get. */
static ERL_NIF_TERM nif_gossip_get(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary k;
    if (!get_bytes(env, argv[1], &k)) {
        return argument_error(env, "key: " EMF_NIF_GOSSIP_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &gossip_kind);
    emf_buf_t buf = {0};
    emf_status_t st = emf_gossip_get(h->ptr, k.data, k.size, &buf);
    return handle_leave_with(h, ok_buf(env, st, &buf));
}

/* gossip_delete(Member, Key) -> {ok, Deleted}: emf_gossip_delete (false: no value). */
static ERL_NIF_TERM nif_gossip_delete(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary k;
    if (!get_bytes(env, argv[1], &k)) {
        return argument_error(env, "key: " EMF_NIF_GOSSIP_BYTES_ERROR);
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &gossip_kind);
    uint32_t deleted = 0;
    emf_status_t st = emf_gossip_delete(h->ptr, k.data, k.size, &deleted);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    return handle_leave_with(h, make_ok(env, deleted ? atom_true : atom_false));
}

static ERL_NIF_TERM gossip_state_atom(uint32_t state) {
    switch (state) {
    case EMF_GOSSIP_ALIVE:
        return atom_alive;
    case EMF_GOSSIP_SUSPECT:
        return atom_suspect;
    default:
        return atom_down;
    }
}

/* gossip_members(Member) -> {ok, [#{id, generation, incarnation, state}]}: every member
 * known (state alive | suspect | down). */
static ERL_NIF_TERM nif_gossip_members(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &gossip_kind);
    size_t n = 0;
    emf_status_t st = emf_gossip_members(h->ptr, NULL, 0, &n);
    emf_gossip_member_t *ms = NULL;
    /* Members may join between the calls: ask again with the number the engine gave. */
    for (int tries = 0; st == EMF_ERR_BUFFER_TOO_SMALL && tries < 8; tries++) {
        enif_free(ms);
        size_t cap = n + 8;
        ms = enif_alloc(sizeof(emf_gossip_member_t) * cap);
        if (ms == NULL) {
            return handle_leave_with(h, out_of_memory(env));
        }
        st = emf_gossip_members(h->ptr, ms, cap, &n);
    }
    if (st != EMF_OK) {
        enif_free(ms);
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = n; i > 0; i--) {
        const emf_gossip_member_t *m = &ms[i - 1];
        ERL_NIF_TERM keys[] = {atom_id, atom_generation, atom_incarnation, atom_state};
        ERL_NIF_TERM values[] = {enif_make_uint64(env, m->id),
                                 enif_make_uint64(env, m->generation),
                                 enif_make_uint(env, m->incarnation),
                                 gossip_state_atom(m->state)};
        list = enif_make_list_cell(env, MAKE_MAP(env, keys, values), list);
    }
    enif_free(ms);
    return handle_leave_with(h, make_ok(env, list));
}

/* gossip_round(Member) -> {ok, Rounds}: emf_gossip_round (one round now). */
static ERL_NIF_TERM nif_gossip_round(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &gossip_kind);
    uint64_t n = 0;
    emf_status_t st = emf_gossip_round(h->ptr, &n);
    return handle_leave_with(h, ok_u64(env, st, n));
}

/* gossip_leave(Member) -> ok: emf_gossip_leave. */
static ERL_NIF_TERM nif_gossip_leave(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &gossip_kind);
    return handle_leave_with(h, ok_or_error(env, emf_gossip_leave(h->ptr)));
}

/* gossip_next_event(Member, TimeoutMs) -> {ok, Event} | {error, {timeout, _}}
 * | {error, {closed, _}}, Event one of {member_up | member_suspect | member_down |
 * member_restarted, Id}, {rejoined, Generation}, {changed, Key, Value | deleted,
 * {Counter, Origin}}. Waits up to TimeoutMs (dirty I/O). */
static ERL_NIF_TERM nif_gossip_next_event(ErlNifEnv *env, int argc,
                                          const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t timeout_ms;
    if (!get_u32(env, argv[1], &timeout_ms)) {
        return argument_error(env, "timeout_ms: expected a 32-bit non-negative integer");
    }
    HANDLE_USE_OR_RETURN(env, h, argv[0], &gossip_kind);
    emf_gossip_event_t e;
    memset(&e, 0, sizeof e);
    emf_status_t st = emf_gossip_next_event(h->ptr, timeout_ms, &e);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM key = take_buf(env, &e.key);
    ERL_NIF_TERM value = take_buf(env, &e.value);
    ERL_NIF_TERM member = enif_make_uint64(env, e.member), ev;
    switch (e.kind) {
    case EMF_GOSSIP_EVENT_MEMBER_UP:
        ev = enif_make_tuple2(env, atom_member_up, member);
        break;
    case EMF_GOSSIP_EVENT_MEMBER_SUSPECT:
        ev = enif_make_tuple2(env, atom_member_suspect, member);
        break;
    case EMF_GOSSIP_EVENT_MEMBER_DOWN:
        ev = enif_make_tuple2(env, atom_member_down, member);
        break;
    case EMF_GOSSIP_EVENT_MEMBER_RESTARTED:
        ev = enif_make_tuple2(env, atom_member_restarted, member);
        break;
    case EMF_GOSSIP_EVENT_REJOINED:
        ev = enif_make_tuple2(env, atom_rejoined, enif_make_uint64(env, e.generation));
        break;
    case EMF_GOSSIP_EVENT_KEY_CHANGED:
        ev = enif_make_tuple4(env, atom_changed, key, e.deleted ? atom_deleted : value,
                              enif_make_tuple2(env, enif_make_uint64(env, e.version_counter),
                                               enif_make_uint64(env, e.version_origin)));
        break;
    default:
        return handle_leave_with(h, shim_error(env, EMF_ERR_CORRUPT,
                                               "gossip member: an event of an unknown kind"));
    }
    return handle_leave_with(h, make_ok(env, ev));
}

/* gossip_stats(Member) -> {ok, #{frames_in, frames_out, rejected, dropped_full, send_failed,
 * events_dropped, rounds, anti_entropy, pushes, pulls, local_writes, remote_applied, probes,
 * failed_probes, refutations}}. */
static ERL_NIF_TERM nif_gossip_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &gossip_kind);
    emf_gossip_stats_t s;
    emf_status_t st = emf_gossip_stats(h->ptr, &s);
    if (st != EMF_OK) {
        return handle_leave_with(h, status_error(env, st));
    }
    ERL_NIF_TERM keys[] = {atom_frames_in,     atom_frames_out,    atom_rejected,
                           atom_dropped_full,  atom_send_failed,   atom_events_dropped,
                           atom_rounds,        atom_anti_entropy,  atom_pushes,
                           atom_pulls,         atom_local_writes,  atom_remote_applied,
                           atom_probes,        atom_failed_probes, atom_refutations};
    uint64_t vals[] = {s.frames_in,    s.frames_out,   s.rejected,       s.dropped_full,
                       s.send_failed,  s.events_dropped, s.rounds,       s.anti_entropy,
                       s.pushes,       s.pulls,        s.local_writes,   s.remote_applied,
                       s.probes,       s.failed_probes, s.refutations};
    ERL_NIF_TERM values[sizeof keys / sizeof keys[0]];
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        values[i] = enif_make_uint64(env, vals[i]);
    }
    return handle_leave_with(h, make_ok(env, MAKE_MAP(env, keys, values)));
}

/* gossip_port(Member) -> {ok, Port}: the TCP port (0 over rings). */
static ERL_NIF_TERM nif_gossip_port(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &gossip_kind);
    uint16_t port = 0;
    emf_status_t st = emf_gossip_port(h->ptr, &port);
    return handle_leave_with(h, ok_u64(env, st, port));
}

/* gossip_close(Member) -> ok: stops the member (without leaving) and releases the handle
 * once no call uses it; idempotent. */
static ERL_NIF_TERM nif_gossip_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return handle_close_arg(env, argv[0], &gossip_kind);
}

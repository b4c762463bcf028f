/*
 * erlmcp_flow_nif.c — the Erlang NIF shim over the erlmcp-flow C ABI (include/erlmcp_flow.h).
 *
 * This file only converts arguments and results; every decision about the data is made by
 * the Rust engine, names of kinds, priorities and statuses included. Its rules:
 *
 *  - Input bytes come from Erlang binaries or iodata (enif_inspect_binary, else
 *    enif_inspect_iolist_as_binary). Any alignment is fine: archives use unaligned primitives.
 *  - Bytes the engine returns (emf_buf_t) are copied into a new binary and freed with
 *    emf_buf_free right away.
 *  - A failing emf_* call becomes {error, {StatusAtom, MessageBinary}}; the message is read
 *    with emf_last_error_message on the same thread, right after the call, before any other
 *    emf_* call can replace it.
 *  - A wrong-typed argument becomes {error, {invalid_argument, MessageBinary}}, never badarg.
 *  - Work that may exceed 1 ms (input above EMF_NIF_DIRTY_THRESHOLD bytes) is rescheduled on a
 *    dirty CPU scheduler, running the same implementation there. The decision never walks or
 *    flattens an argument: iodata other than a binary always goes dirty and is flattened there.
 *  - Engine handles live in resources (emf_nif_handle) whose destructor frees them. The engine
 *    is linked statically, so every loaded copy of this library has its own engine and its own
 *    handle registry: each load opens resource types of its own (see "Resources" below), and a
 *    handle only ever meets the engine that made it. A new handle type needs one
 *    emf_nif_handle_kind and one entry in handle_kinds[].
 *  - Ring handles (rings, producers, consumers) can also be closed early (close/1); a use
 *    guard in the resource keeps the engine handle alive until the last call using it returns.
 *  - Frames are delivered to Erlang processes by threads of this library (see "Delivery"),
 *    never by a NIF call that waits on a normal scheduler.
 *  - Routers and batch processors are one-thread-at-a-time engine objects, each owned by one
 *    gen_server on the Erlang side (see "Router", "Batch processors"); shared-state values of
 *    64 KiB and more become binaries over the engine's mapping, mapped once per load (see
 *    "Shared state").
 *  - Task queues and caches are thread-safe engine objects, used by any process at once (see
 *    "Task queues and caches"); tasks of 64 KiB and more come out as binaries over the
 *    engine's own buffer.
 *  - Vectors cross as binaries of native-endian float32 (int8 codes, half floats), converted
 *    from lists by the Erlang modules; HNSW indexes are thread-safe engine objects whose calls
 *    never wait on a normal scheduler (see "Vectors and HNSW indexes").
 *
 * Layout (one file per area and a shared header, as jiffy's c_src, but one compile unit):
 * erlmcp_flow_nif.h holds what the files share; this file keeps the NIF table, load, upgrade
 * and unload, and #includes the area files, so the NIF is still one compile unit (every
 * function static, one exported symbol: nif_init):
 *
 *   util.c     atoms, results and errors, argument decoding, dirty scheduling, resources
 *   codec.c    serializer (archives, messages) and compressor
 *   ring.c     rings, producers, consumers, delivery threads
 *   flow.c     router, batch processors, shared state
 *   queue.c    task queues and caches
 *   vector.c   quantization, distances, HNSW indexes
 *   sched.c    schedulers (agents, tasks with leases, the actions the host carries out)
 *   pool.c     pool managers (when to start and stop agents)
 *   raft.c     local Raft clusters (node processes over rings; submit, wait, KV, reads,
 *              leadership transfer, membership changes, leader kill)
 *   gossip.c   gossip members (SWIM membership, a gossiped key -> value map, events)
 *   pbft.c     local PBFT groups (replica threads over rings; agreement, fast path)
 *
 * util.c is the helper layer every NIF is written with (declared in erlmcp_flow_nif.h):
 * handle arguments (HANDLE_USE_OR_RETURN / HANDLE_ARG_OR_RETURN, handle_leave_with), argument
 * decoding (get_*), results (ok_or_error, ok_u64, ok_buf, ok_handle, MAKE_MAP), errors
 * (argument_error, shim_error, status_error) and dirty scheduling (NIF_BY_BYTES, run_by_cost;
 * NIFs that always run dirty are flagged in the NIF table). An area file may also use what
 * the area files included before it define (flow.c: ring.c's frame lists and kinds).
 */

#include "erlmcp_flow_nif.h"

#include "util.c"
#include "codec.c"
#include "ring.c"
#include "flow.c"
#include "queue.c"
#include "vector.c"
#include "sched.c"
#include "pool.c"
#include "raft.c"
#include "gossip.c"
#include "pbft.c"

/* load() return value on an ABI mismatch: the mismatch flag, then the library's and the
 * header's ABI versions in 15 bits each, so that the Erlang side can decode them from the
 * "Library load-call unsuccessful (N)." error of erlang:load_nif/2. */
#define EMF_NIF_LOAD_ABI_MISMATCH_FLAG 0x40000000
#define EMF_NIF_LOAD_VERSION_MASK 0x7FFF
/* load() return value for any other failure (atoms or resource types not created). */
#define EMF_NIF_LOAD_FAILED 1

/* Every handle kind of this library. */
static const emf_nif_handle_kind *const handle_kinds[EMF_NIF_KIND_COUNT] = {
    &message_kind, &ring_kind,  &producer_kind,    &consumer_kind, &delivery_kind, &router_kind,
    &batch_kind,   &store_kind, &state_value_kind, &queue_kind,    &cache_kind,    &buf_kind,
    &hnsw_kind,    &sched_kind, &pool_kind, &raft_kind,     &raft_node_kind, &raft_client_kind,
    &gossip_kind, &pbft_kind};

/* Opens this load's resource types under names no other load uses: the prefix and an
 * integer unique in the running VM. */
static bool open_resource_types(ErlNifEnv *env, emf_nif_priv *priv) {
    ErlNifUInt64 unique;
    if (!enif_get_uint64(env, enif_make_unique_integer(env, ERL_NIF_UNIQUE_POSITIVE), &unique)) {
        return false;
    }
    for (size_t i = 0; i < EMF_NIF_KIND_COUNT; i++) {
        const emf_nif_handle_kind *kind = handle_kinds[i];
        char name[128];
        int n = snprintf(name, sizeof name, "%s_%llu", kind->name, (unsigned long long)unique);
        if (n < 0 || (size_t)n >= sizeof name) {
            return false;
        }
        ErlNifResourceTypeInit init;
        memset(&init, 0, sizeof init);
        init.dtor = handle_dtor;
        init.down = kind->down;
        ErlNifResourceFlags tried;
        priv->types[kind->index] =
            enif_open_resource_type_x(env, name, &init, ERL_NIF_RT_CREATE, &tried);
        if (priv->types[kind->index] == NULL) {
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Library information                                                                        */
/* ------------------------------------------------------------------------------------------ */

static ERL_NIF_TERM nif_abi_version(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    (void)argv;
    return enif_make_uint(env, emf_abi_version());
}

static ERL_NIF_TERM nif_version(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    (void)argv;
    const char *v = emf_version_string();
    return make_binary_from(env, v, strlen(v));
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* load and upgrade alike: a fresh emf_nif_priv with resource types of this load only. */
static int init_library(ErlNifEnv *env, void **priv_data) {
    uint32_t lib = emf_abi_version();
    if (lib != EMF_ABI_VERSION) {
        return EMF_NIF_LOAD_ABI_MISMATCH_FLAG
               | (int)((lib > EMF_NIF_LOAD_VERSION_MASK ? EMF_NIF_LOAD_VERSION_MASK : lib) << 15)
               | (int)(EMF_ABI_VERSION & EMF_NIF_LOAD_VERSION_MASK);
    }
    make_atoms(env);
    if (kind_count == 0 || priority_count == 0) {
        return EMF_NIF_LOAD_FAILED;
    }
    emf_nif_priv *priv = enif_alloc(sizeof *priv);
    if (priv == NULL) {
        return EMF_NIF_LOAD_FAILED;
    }
    memset(priv, 0, sizeof *priv);
    atomic_init(&priv->hnsw_count, 0);
    priv->lock = enif_mutex_create("erlmcp_flow_deliveries");
    priv->changed = enif_cond_create("erlmcp_flow_deliveries");
    priv->shared_lock = enif_mutex_create("erlmcp_flow_shared_state");
    if (priv->lock == NULL || priv->changed == NULL || priv->shared_lock == NULL
        || !open_resource_types(env, priv)) {
        /* ERTS rolls back the types opened by a failed load */
        if (priv->lock != NULL) {
            enif_mutex_destroy(priv->lock);
        }
        if (priv->shared_lock != NULL) {
            enif_mutex_destroy(priv->shared_lock);
        }
        if (priv->changed != NULL) {
            enif_cond_destroy(priv->changed);
        }
        enif_free(priv);
        return EMF_NIF_LOAD_FAILED;
    }
    *priv_data = priv;
    return 0;
}

static int on_load(ErlNifEnv *env, void **priv_data, ERL_NIF_TERM load_info) {
    (void)load_info;
    return init_library(env, priv_data);
}

/* A code upgrade of erlmcp_flow_nif. The old module keeps its own priv_data and resource
 * types (see "Code upgrades" above); nothing is taken over. */
static int on_upgrade(ErlNifEnv *env, void **priv_data, void **old_priv_data,
                      ERL_NIF_TERM load_info) {
    (void)old_priv_data;
    (void)load_info;
    return init_library(env, priv_data);
}

/* Called when ERTS closes the library of one load: its module instance is purged and no
 * object of its resource types is left. With no delivery monitor object left, every delivery
 * is stopped: the reaper joins their threads (each ends within its poll_ms) and exits, so no
 * thread runs this library's code once it is unmapped. */
static void on_unload(ErlNifEnv *env, void *priv_data) {
    (void)env;
    emf_nif_priv *priv = priv_data;
    enif_mutex_lock(priv->lock);
    priv->reaper_exit = true;
    bool started = priv->reaper_started;
    enif_cond_broadcast(priv->changed);
    enif_mutex_unlock(priv->lock);
    if (started) {
        (void)enif_thread_join(priv->reaper, NULL);
    }
    enif_cond_destroy(priv->changed);
    enif_mutex_destroy(priv->lock);
    /* No zero-copy binary is left (their owners are objects of this load's types), so the
     * table of mapped values is empty. */
    enif_mutex_destroy(priv->shared_lock);
    enif_free(priv);
}

/* The NIFs. Those flagged dirty always run on a dirty scheduler (they touch files or /proc, or
 * their work is long); the others decide at each call (see each area). */
static ErlNifFunc nif_funcs[] = {
    {"abi_version", 0, nif_abi_version, 0},
    {"version", 0, nif_version, 0},
    {"json_to_archive", 4, nif_json_to_archive, 0},
    {"json_to_archive", 5, nif_json_to_archive, 0},
    {"archive_to_json", 1, nif_archive_to_json, 0},
    {"serializer_encode_term", 5, nif_serializer_encode_term, 0},
    {"serializer_decode_term", 2, nif_serializer_decode_term, 0},
    {"archive_validate", 1, nif_archive_validate, 0},
    {"message_open", 1, nif_message_open, 0},
    {"message_count", 1, nif_message_count, 0},
    {"message_envelopes", 1, nif_message_envelopes, 0},
    {"message_to_json", 1, nif_message_to_json, 0},
    {"message_payload_json", 2, nif_message_payload_json, 0},
    {"compress_if_needed", 2, nif_compress_if_needed, 0},
    {"decompress", 2, nif_decompress, 0},
    {"ring_create", 2, nif_ring_create, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"ring_open", 2, nif_ring_open, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"ring_stats", 1, nif_ring_stats, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"ring_max_payload", 1, nif_ring_max_payload, 0},
    {"ring_unlink", 1, nif_ring_unlink, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"ring_close", 1, nif_ring_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"producer_new", 1, nif_producer_new, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"producer_new_in_slot", 2, nif_producer_new_in_slot, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"producer_committed", 1, nif_producer_committed, 0},
    {"producer_send", 3, nif_producer_send, 0},
    {"producer_send_batch", 2, nif_producer_send_batch, 0},
    {"consumer_new", 2, nif_consumer_new, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"consumer_recv", 2, nif_consumer_recv, 0},
    {"consumer_recv_batch", 3, nif_consumer_recv_batch, 0},
    {"consumer_lag", 1, nif_consumer_lag, 0},
    {"consumer_set_ack_mode", 2, nif_consumer_set_ack_mode, 0},
    {"consumer_ack", 1, nif_consumer_ack, 0},
    {"consumer_rewind", 1, nif_consumer_rewind, 0},
    {"consumer_unacked", 1, nif_consumer_unacked, 0},
    {"deliver", 6, nif_deliver, 0},
    {"deliver_ack", 1, nif_deliver_ack, 0},
    {"deliver_stop", 1, nif_deliver_stop, 0},
    {"deliveries", 0, nif_deliveries, 0},
    {"router_new", 2, nif_router_new, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"router_close", 1, nif_router_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"router_register_agent", 2, nif_router_register_agent, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"router_unregister_agent", 2, nif_router_unregister_agent, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"router_send_direct", 4, nif_router_send_direct, 0},
    {"router_send_batch", 4, nif_router_send_batch, 0},
    {"batch_new", 4, nif_batch_new, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"batch_send", 2, nif_batch_send, 0},
    {"batch_tick", 1, nif_batch_tick, 0},
    {"batch_flush", 1, nif_batch_flush, 0},
    {"batch_pending", 1, nif_batch_pending, 0},
    {"batch_close", 1, nif_batch_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"batch_discard", 1, nif_batch_discard, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"state_open", 2, nif_state_open, 0},
    {"state_share", 3, nif_state_share, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"state_lookup", 2, nif_state_lookup, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"state_read", 2, nif_state_read, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"state_release", 2, nif_state_release, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"state_mapped", 0, nif_state_mapped, 0},
    {"queue_new", 3, nif_queue_new, 0},
    {"queue_enqueue", 3, nif_queue_enqueue, 0},
    {"queue_dequeue", 1, nif_queue_dequeue, 0},
    {"queue_stats", 1, nif_queue_stats, 0},
    {"queue_close", 1, nif_queue_close, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"cache_new", 3, nif_cache_new, 0},
    {"cache_set_sweeper", 2, nif_cache_set_sweeper, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"cache_put", 3, nif_cache_put, 0},
    {"cache_get", 2, nif_cache_get, 0},
    {"cache_remove", 2, nif_cache_remove, 0},
    {"cache_sweep", 1, nif_cache_sweep, 0},
    {"cache_stats", 1, nif_cache_stats, 0},
    {"quantize_f32", 1, nif_quantize_f32, 0},
    {"dequantize_i8", 2, nif_dequantize_i8, 0},
    {"distance_f32", 3, nif_distance_f32, 0},
    {"distance_f16", 3, nif_distance_f16, 0},
    {"cosine_distance_i8", 2, nif_cosine_distance_i8, 0},
    {"dot_i8", 2, nif_dot_i8, 0},
    {"hnsw_new", 7, nif_hnsw_new, 0},
    {"hnsw_open", 1, nif_hnsw_open, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"hnsw_load", 1, nif_hnsw_load, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"hnsw_close", 1, nif_hnsw_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"hnsw_info", 1, nif_hnsw_info, 0},
    {"hnsw_insert", 3, nif_hnsw_insert, 0},
    {"hnsw_insert_new", 2, nif_hnsw_insert_new, 0},
    {"hnsw_insert_batch", 4, nif_hnsw_insert_batch, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"hnsw_search", 6, nif_hnsw_search, 0},
    {"hnsw_search_batch", 7, nif_hnsw_search_batch, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"hnsw_remove", 2, nif_hnsw_remove, 0},
    {"hnsw_compact", 1, nif_hnsw_compact, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"hnsw_save", 2, nif_hnsw_save, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"hnsw_stats", 1, nif_hnsw_stats, 0},
    {"hnsw_indexes", 0, nif_hnsw_indexes, 0},
    {"sched_new", 5, nif_sched_new, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"sched_close", 1, nif_sched_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"sched_register_agent", 6, nif_sched_register_agent, 0},
    {"sched_unregister_agent", 3, nif_sched_unregister_agent, 0},
    {"sched_agent_dead", 3, nif_sched_agent_dead, 0},
    {"sched_heartbeat", 3, nif_sched_heartbeat, 0},
    {"sched_set_agent_host", 3, nif_sched_set_agent_host, 0},
    {"sched_host_down", 3, nif_sched_host_down, 0},
    {"sched_submit", 5, nif_sched_submit, 0},
    {"sched_started", 5, nif_sched_started, 0},
    {"sched_ack", 6, nif_sched_ack, 0},
    {"sched_nack", 6, nif_sched_nack, 0},
    {"sched_tick", 2, nif_sched_tick, 0},
    {"sched_poll", 2, nif_sched_poll, 0},
    {"sched_select_agent", 2, nif_sched_select_agent, 0},
    {"sched_agent_load", 2, nif_sched_agent_load, 0},
    {"sched_stats", 1, nif_sched_stats, 0},
    {"sched_queued", 2, nif_sched_queued, 0},
    {"pool_new", 2, nif_pool_new, 0},
    {"pool_close", 1, nif_pool_close, 0},
    {"pool_ensure_min", 2, nif_pool_ensure_min, 0},
    {"pool_started", 4, nif_pool_started, 0},
    {"pool_start_failed", 4, nif_pool_start_failed, 0},
    {"pool_agent_gone", 3, nif_pool_agent_gone, 0},
    {"pool_observe", 4, nif_pool_observe, 0},
    {"pool_demand", 3, nif_pool_demand, 0},
    {"pool_tick", 2, nif_pool_tick, 0},
    {"pool_poll", 1, nif_pool_poll, 0},
    {"pool_next_deadline", 1, nif_pool_next_deadline, 0},
    {"pool_stats", 1, nif_pool_stats, 0},
    {"raft_cluster_start", 3, nif_raft_cluster_start, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_cluster_close", 1, nif_raft_cluster_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_submit", 2, nif_raft_submit, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_append_entry", 2, nif_raft_append_entry, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_submit_many", 3, nif_raft_submit_many, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_wait_committed", 3, nif_raft_wait_committed, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_leader", 1, nif_raft_leader, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_members", 1, nif_raft_members, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_stats", 1, nif_raft_stats, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_kill", 2, nif_raft_kill, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_restart", 2, nif_raft_restart, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_set", 3, nif_raft_set, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_get", 2, nif_raft_get, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_cas", 4, nif_raft_cas, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_read", 2, nif_raft_read, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_transfer_leader", 2, nif_raft_transfer_leader, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_change_membership", 2, nif_raft_change_membership, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_membership", 1, nif_raft_membership, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_node_start", 3, nif_raft_node_start, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_node_next_request", 2, nif_raft_node_next_request, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_node_reply", 4, nif_raft_node_reply, 0},
    {"raft_node_stop", 1, nif_raft_node_stop, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_node_info", 1, nif_raft_node_info, 0},
    {"raft_node_close", 1, nif_raft_node_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_client_connect", 3, nif_raft_client_connect, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_client_submit", 2, nif_raft_client_submit, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"raft_client_close", 1, nif_raft_client_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_start", 2, nif_gossip_start, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_put", 3, nif_gossip_put, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_get", 2, nif_gossip_get, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_delete", 2, nif_gossip_delete, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_members", 1, nif_gossip_members, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_round", 1, nif_gossip_round, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_leave", 1, nif_gossip_leave, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_next_event", 2, nif_gossip_next_event, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_stats", 1, nif_gossip_stats, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_port", 1, nif_gossip_port, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"gossip_close", 1, nif_gossip_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"pbft_group_start", 2, nif_pbft_group_start, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"pbft_group_close", 1, nif_pbft_group_close, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"pbft_execute", 2, nif_pbft_execute, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"pbft_stop_replica", 2, nif_pbft_stop_replica, ERL_NIF_DIRTY_JOB_IO_BOUND},
    {"pbft_view", 1, nif_pbft_view, 0},
};

ERL_NIF_INIT(erlmcp_flow_nif, nif_funcs, on_load, NULL, on_upgrade, on_unload)

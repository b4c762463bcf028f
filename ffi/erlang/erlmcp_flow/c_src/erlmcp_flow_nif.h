/* erlmcp_flow_nif.h — declarations shared by the files of the NIF (see erlmcp_flow_nif.c). */

#ifndef ERLMCP_FLOW_NIF_H
#define ERLMCP_FLOW_NIF_H

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <erl_nif.h>

#include "erlmcp_flow.h"

/* Inputs larger than this many bytes run on a dirty CPU scheduler (a regular scheduler
 * should not be held for more than about 1 ms; the engine handles roughly 100 MB/s or more). */
#define EMF_NIF_DIRTY_THRESHOLD ((size_t)64 * 1024)

/* Error messages up to this length are read without a heap allocation. */
#define EMF_NIF_ERROR_STACK_BUF 256

/* Codes probed at load for kind, priority and status names; a code at or above these limits
 * is reported as an integer (kind, priority) or as `unknown' (status). */
#define EMF_NIF_MAX_KINDS 32
#define EMF_NIF_MAX_PRIORITIES 32
#define EMF_NIF_MAX_STATUSES 64

/* ------------------------------------------------------------------------------------------ */
/* Atoms                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Every fixed atom of the NIF: X(name) declares atom_<name>, the atom `name' (make_atoms in
 * util.c makes them at load). */
#define EMF_NIF_ATOMS(X)                                                                       \
    /* Results and values. */                                                                  \
    X(ok) X(error) X(compressed) X(raw) X(undefined) X(null) X(none) X(json) X(unknown)        \
    X(invalid_argument) X(true) X(false) X(infinity) X(binary) X(existing_atoms)               \
    /* Map keys of an envelope description. */                                                 \
    X(kind) X(priority) X(id) X(method) X(created_at_us) X(deadline_us) X(error_code)          \
    /* Rings: option and statistics keys, values, and the messages of deliveries. */           \
    X(capacity) X(multi_producer) X(max_producers) X(max_subscribers) X(stall_timeout_ms)      \
    X(mode) X(dir) X(checksum) X(auto) X(manual) X(tail) X(sent) X(bytes) X(received)          \
    X(backpressure) X(unblocked) X(dead_reaped) X(max_lag) X(corrupt_frames) X(producers)      \
    X(subscribers) X(max_payload) X(erlmcp_flow_frames) X(erlmcp_flow_error)                   \
    /* Task queues and caches: answers, options and statistics keys. */                        \
    X(rejected) X(evicted) X(empty) X(miss) X(not_found) X(low_priority) X(depth)              \
    X(primary_depth) X(overflow_depth) X(depth_p99) X(max_depth) X(enqueued) X(dequeued)       \
    X(spills) X(rejections) X(evictions) X(len) X(hits) X(misses) X(expirations)               \
    /* Vectors and HNSW indexes: metrics, originals, parameter and statistics keys. */         \
    X(cosine) X(dot) X(l2sq) X(f16) X(f32) X(default) X(neg_infinity) X(nan) X(dim) X(metric)  \
    X(m) X(ef_construction) X(ef_search) X(originals) X(seed) X(mapped) X(memory_bytes)      \
    /* Schedulers: actions, ledgers, option, load and statistics keys, strategies. */          \
    X(deliver) X(revoke) X(result) X(dead_letter) X(memory) X(shm) X(file) X(current_tasks)    \
    X(backlog) X(max_tasks) X(latency_us) X(last_heartbeat_us) X(queued) X(leased)             \
    X(completed) X(dead_lettered) X(duplicates) X(redeliveries) X(steals) X(expired)           \
    X(agents_dead) X(ledger_errors) X(agents) X(max_queued) X(heartbeat_timeout_us)            \
    X(max_attempts) X(lease_factor) X(min_lease_us) X(max_lease_us) X(default_lease_us)        \
    X(latency_window) X(ewma_alpha) X(strategy) X(work_stealing) X(shm_capacity)               \
    X(least_loaded) X(power_of_two) X(round_robin)                                            \
    /* Pool managers: actions, option and statistics keys. */                                  \
    X(start) X(stop) X(min_size) X(max_size) X(max_starting) X(idle_timeout_us)                \
    X(warmup_delay_us) X(start_timeout_us) X(max_backoff_us) X(live) X(starting) X(idle)       \
    X(busy) X(stopping) X(started_total) X(stopped_total) X(failed_starts)                     \
    X(timed_out_starts) X(died) X(replaced)                                                   \
    /* Raft clusters: option keys. */                                                          \
    X(bin) X(tick_ms) X(election_tick) X(start_timeout_ms) X(timeout_ms) X(attempt_timeout_ms) \
    /* In-process Raft nodes: option keys, requests, info keys. */                             \
    X(ring_dir) X(data_dir) X(heartbeat_tick) X(snapshot_entries) X(apply) X(snapshot)         \
    X(restore) X(query) X(leader) X(term) X(commit) X(applied) X(running)                   \
    /* Gossip members: option keys, member states, events, statistics keys. */                 \
    X(listen) X(peers) X(seeds) X(gossip_interval_ms) X(anti_entropy_interval_ms)              \
    X(max_fan_out) X(probe_period_ms) X(suspicion_timeout_ms) X(generation) X(inbox_capacity)  \
    X(incarnation) X(state) X(alive) X(suspect) X(down) X(member_up) X(member_suspect)         \
    X(member_down) X(member_restarted) X(rejoined) X(changed) X(deleted) X(frames_in)          \
    X(frames_out) X(dropped_full) X(send_failed) X(events_dropped) X(rounds) X(anti_entropy)   \
    X(pushes) X(pulls) X(local_writes) X(remote_applied) X(probes) X(failed_probes)            \
    X(refutations)                                                                             \
    /* PBFT groups: option keys and paths. */                                                  \
    X(n) X(ed25519) X(accept_tentative) X(batch_window_us) X(view_change_timeout_ms)           \
    X(retransmit_ms) X(fast) X(slow)

#define EMF_NIF_DECLARE_ATOM(name) static ERL_NIF_TERM atom_##name;
EMF_NIF_ATOMS(EMF_NIF_DECLARE_ATOM)
#undef EMF_NIF_DECLARE_ATOM

/* Batch processors: why a flush happened, indexed by EMF_FLUSH_* code. */
#define EMF_NIF_FLUSH_CODES 5
static ERL_NIF_TERM flush_atoms[EMF_NIF_FLUSH_CODES];

/* Indexed by EMF_KIND_* code, named by emf_kind_name(); kind_count codes are known. */
static ERL_NIF_TERM kind_atoms[EMF_NIF_MAX_KINDS];
static size_t kind_count;

/* Indexed by EMF_PRIORITY_* code, named by emf_priority_name(); priority_count are known. */
static ERL_NIF_TERM priority_atoms[EMF_NIF_MAX_PRIORITIES];
static size_t priority_count;



/* ------------------------------------------------------------------------------------------ */
/* Resources: engine handles owned by Erlang terms                                            */
/* ------------------------------------------------------------------------------------------ */

/*
 * Code upgrades. The engine is linked statically, and its handle registry lives in this
 * library's copy of it. A code upgrade that loads the NIF from another file (a new release's
 * priv/ directory) therefore gets a second copy of the engine with an empty registry, which
 * knows none of the old handles. So:
 *
 *  - Every load (load or upgrade) opens resource types of its own, named
 *    "<kind>_<unique integer>", and never takes a type over. ERTS calls a type's destructor in
 *    the library that opened it, and keeps that library loaded (purged module or not) until
 *    the last object of its types is gone: an old handle is always freed by the engine that
 *    made it.
 *  - The types of a load are kept in its priv_data (emf_nif_priv), which ERTS hands to the
 *    NIFs of the module instance that loaded it. NIFs of the new module refuse old handles
 *    ({error, {invalid_argument, <<"message: not a handle of this library version ...">>}});
 *    NIFs of the old module, while it runs, keep using its own handles. An upgrade into the
 *    same file (same copy of the library) behaves alike, for simplicity.
 *  - priv_data is freed by unload(), which ERTS calls when it closes the library, after the
 *    last resource of its types is gone.
 */

/* One kind of engine handle. A new handle type adds a release function, a kind, an
 * EMF_NIF_KIND_* index and an entry in handle_kinds[] (erlmcp_flow_nif.c). Every resource
 * object records its kind, so one destructor (handle_dtor) serves them all. */
typedef struct emf_nif_handle_kind {
    const char *name;                   /* resource type name prefix, unique in this library */
    ErlNifResourceDown *down;           /* NULL, or called when a monitored process dies */
    emf_status_t (*release)(void *ptr); /* frees an engine handle; NULL: nothing to free */
    const char *release_what;           /* the release call, for reports */
    const char *expected;               /* the error for a term that is no handle of this kind */
    const char *not_this_version;       /* the error for a reference of another load */
    const char *closed;                 /* the error for a closed handle */
    size_t index;                       /* index of its resource type in emf_nif_priv.types */
} emf_nif_handle_kind;

#define EMF_NIF_KIND_MESSAGE 0
#define EMF_NIF_KIND_RING 1
#define EMF_NIF_KIND_PRODUCER 2
#define EMF_NIF_KIND_CONSUMER 3
#define EMF_NIF_KIND_DELIVERY 4
#define EMF_NIF_KIND_ROUTER 5
#define EMF_NIF_KIND_BATCH 6
#define EMF_NIF_KIND_STORE 7
#define EMF_NIF_KIND_STATE_VALUE 8
#define EMF_NIF_KIND_QUEUE 9
#define EMF_NIF_KIND_CACHE 10
#define EMF_NIF_KIND_BUF 11
#define EMF_NIF_KIND_HNSW 12
#define EMF_NIF_KIND_SCHED 13
#define EMF_NIF_KIND_POOL 14
#define EMF_NIF_KIND_RAFT 15
#define EMF_NIF_KIND_RAFT_NODE 16
#define EMF_NIF_KIND_RAFT_CLIENT 17
#define EMF_NIF_KIND_GOSSIP 18
#define EMF_NIF_KIND_PBFT 19
#define EMF_NIF_KIND_COUNT 20

struct emf_nif_delivery;
struct emf_nif_shared;

/* Buckets of the table of shared values mapped by this load (see "Shared state"). */
#define EMF_NIF_SHARED_BUCKETS 256

/* The state of one load of this library (its priv_data). */
typedef struct emf_nif_priv {
    ErlNifResourceType *types[EMF_NIF_KIND_COUNT]; /* opened by this load, never taken over */
    /* Deliveries of this load (see "Delivery"); everything below is guarded by `lock'. */
    ErlNifMutex *lock;
    ErlNifCond *changed;                  /* broadcast when a delivery changes state */
    struct emf_nif_delivery *deliveries;  /* every delivery not reaped yet */
    size_t delivery_count;
    ErlNifTid reaper;                     /* joins finished delivery threads */
    bool reaper_started;
    bool reaper_exit;                     /* set by unload(): exit once every delivery is gone */
    /* Shared state values mapped in place (zero-copy binaries), one mapping per value. */
    ErlNifMutex *shared_lock;
    struct emf_nif_shared *shared[EMF_NIF_SHARED_BUCKETS];
    size_t shared_count;
    /* HNSW indexes of this load not freed yet (erlmcp_flow_nif:hnsw_indexes/0). */
    atomic_size_t hnsw_count;
} emf_nif_priv;

/* The resource object: an engine handle plus a cost hint for dirty scheduling, and the use
 * guard of handles that can be closed early. */
typedef struct emf_nif_handle {
    const emf_nif_handle_kind *kind; /* how to release `ptr', and the errors of this kind */
    void *ptr;         /* the engine handle; NULL once released */
    size_t cost;       /* bytes behind the handle, to decide dirty scheduling of its operations */
    size_t aux;        /* kind-specific: the ring's largest payload for rings */
    atomic_size_t use; /* EMF_NIF_USE_USER per call using `ptr', plus EMF_NIF_USE_CLOSED */
    atomic_size_t load; /* kind-specific running cost hint: a batch's pending bytes (bound) */
} emf_nif_handle;

/*
 * The use guard of closable handles (rings, producers, consumers). Every call that uses the
 * engine handle enters the guard (handle_use) and leaves it when done (handle_leave); close/1
 * sets the CLOSED bit. The engine handle is released exactly once, by whichever comes last:
 * handle_close when no call is inside, else the handle_leave of the last call inside. Calls
 * that come after the close are refused with {error, {closed, _}}. Nothing here blocks.
 */
#define EMF_NIF_USE_CLOSED ((size_t)1)
#define EMF_NIF_USE_USER ((size_t)2)

/* ------------------------------------------------------------------------------------------ */
/* The helper layer (util.c)                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Sizes: the smaller and larger of two; sums and products saturating at SIZE_MAX. */
static size_t size_min(size_t a, size_t b);
static size_t size_max(size_t a, size_t b);
static size_t sat_add(size_t a, size_t b);
static size_t sat_mul(size_t a, size_t b);

/* Makes the atoms, once per copy of the library (kind_count, priority_count: 0 when the
 * engine names none). */
static void make_atoms(ErlNifEnv *env);

/* Results. {ok, Value}; a new binary of `len' bytes; a map of `n' distinct keys (MAKE_MAP:
 * of two arrays of the same length); the atom of a code, or the code when `count' are known. */
static ERL_NIF_TERM make_ok(ErlNifEnv *env, ERL_NIF_TERM value);
static ERL_NIF_TERM make_binary_from(ErlNifEnv *env, const void *data, size_t len);
static ERL_NIF_TERM make_map(ErlNifEnv *env, ERL_NIF_TERM keys[], ERL_NIF_TERM values[],
                             size_t n);
#define MAKE_MAP(env, keys, values)                                                            \
    make_map((env), (keys), (values), sizeof(keys) / sizeof((keys)[0])                         \
             + 0 * sizeof(char[sizeof(keys) == sizeof(values) ? 1 : -1]))
static ERL_NIF_TERM code_atom(ErlNifEnv *env, const ERL_NIF_TERM *atoms, size_t count,
                              uint32_t code);

/* Errors, all {error, {Reason, <<Message>>}}: argument_error for an argument of the wrong
 * Erlang type (invalid_argument); shim_error for a status with a message of this shim;
 * status_error for a failed emf_* call (the engine's message: call it on the thread of the
 * call, before any other emf_* call); out_of_memory ({too_large, <<"out of memory">>}). */
static ERL_NIF_TERM make_error(ErlNifEnv *env, ERL_NIF_TERM reason, const char *msg, size_t len);
static ERL_NIF_TERM argument_error(ErlNifEnv *env, const char *msg);
static ERL_NIF_TERM shim_error(ErlNifEnv *env, emf_status_t status, const char *msg);
static ERL_NIF_TERM status_error(ErlNifEnv *env, emf_status_t status);
static ERL_NIF_TERM out_of_memory(ErlNifEnv *env);
/* A failure that cannot be returned to Erlang (and that the design rules out): to stderr. */
static void report_impossible(const char *what, emf_status_t st);

/* The result of an emf_* call that returned `st': status_error(st) unless it is EMF_OK, else
 * ok (ok_or_error), {ok, V} (ok_u64), {ok, Binary} of an engine buffer, freed (ok_buf),
 * {ok, Handle} of a new resource owning `ptr' (ok_handle). */
static ERL_NIF_TERM ok_or_error(ErlNifEnv *env, emf_status_t st);
static ERL_NIF_TERM ok_u64(ErlNifEnv *env, emf_status_t st, uint64_t v);
static ERL_NIF_TERM ok_buf(ErlNifEnv *env, emf_status_t st, emf_buf_t *buf);
static ERL_NIF_TERM ok_handle(ErlNifEnv *env, emf_status_t st, const emf_nif_handle_kind *kind,
                              void *ptr, size_t cost, size_t aux);
/* Copies an engine buffer into a new binary and frees the buffer. */
static ERL_NIF_TERM take_buf(ErlNifEnv *env, emf_buf_t *buf);

/* Arguments: each reads one term and answers false when it is not of the type named. */
static bool get_bytes(ErlNifEnv *env, ERL_NIF_TERM term, ErlNifBinary *out); /* binary, iodata */
static bool get_size(ErlNifEnv *env, ERL_NIF_TERM term, size_t *out);
static bool get_limit(ErlNifEnv *env, ERL_NIF_TERM term, size_t *out); /* clamped to SIZE_MAX */
static bool get_u32(ErlNifEnv *env, ERL_NIF_TERM term, uint32_t *out);
static bool get_bool(ERL_NIF_TERM term, bool *out);
static bool get_priority(ERL_NIF_TERM term, uint32_t *out);
/* A new NUL-terminated copy of bytes without NUL (enif_free it); NULL when refused. */
static char *get_cstring(ErlNifEnv *env, ERL_NIF_TERM term);
/* `undefined' (*out NULL) or get_cstring's copy; false when refused (EMF_NIF_DIR_ERROR). */
static bool get_opt_cstring(ErlNifEnv *env, ERL_NIF_TERM term, char **out);
#define EMF_NIF_DIR_ERROR "dir: expected a path (binary or string) without NUL"
/* A name and an optional directory (`undefined': NULL) as get_cstring copies; false with
 * *error set ("dir: ..." first, then "name: ..."). */
static bool get_name_and_dir(ErlNifEnv *env, ERL_NIF_TERM name_term, ERL_NIF_TERM dir_term,
                             char **name, char **dir, ERL_NIF_TERM *error);
/* The error message of a Data argument that get_bytes refused (codec, ring, flow). */
#define EMF_NIF_DATA_ERROR "data: expected a binary or iodata"
/* The cost of a byte argument for the dirty decision: a binary's size, SIZE_MAX for iodata. */
static size_t bytes_cost(ErlNifEnv *env, ERL_NIF_TERM term);

/* Dirty scheduling. */
typedef ERL_NIF_TERM (*nif_impl)(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
/* Runs `impl' here, or on a dirty CPU scheduler when `cost' exceeds `limit'. */
static ERL_NIF_TERM run_by_cost(ErlNifEnv *env, const char *name, nif_impl impl, size_t cost,
                                size_t limit, int argc, const ERL_NIF_TERM argv[]);
static ERL_NIF_TERM schedule_dirty_io(ErlNifEnv *env, const char *name, nif_impl impl, int argc,
                                      const ERL_NIF_TERM argv[]);
static ERL_NIF_TERM schedule_dirty_cpu(ErlNifEnv *env, const char *name, nif_impl impl,
                                       int argc, const ERL_NIF_TERM argv[]);
static bool on_normal_scheduler(void);
/* Defines nif_<name>, which runs <name>_impl on the calling scheduler, or on a dirty CPU
 * scheduler when argument `arg' (a binary or iodata) holds more than `limit' bytes. */
#define NIF_BY_BYTES(name, arg, limit)                                                         \
    static ERL_NIF_TERM nif_##name(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {      \
        return run_by_cost(env, #name, name##_impl, bytes_cost(env, argv[arg]), (limit), argc, \
                           argv);                                                              \
    }

/* Resources. handle_dtor is the destructor of every resource type; handle_new wraps an engine
 * handle into a new term (handle_alloc: the object, with the caller's reference). */
static void handle_dtor(ErlNifEnv *env, void *obj);
static ErlNifResourceType *handle_type(ErlNifEnv *env, const emf_nif_handle_kind *kind);
static emf_nif_handle *handle_alloc(ErlNifEnv *env, const emf_nif_handle_kind *kind, void *ptr,
                                    size_t cost, size_t aux);
static ERL_NIF_TERM handle_new(ErlNifEnv *env, const emf_nif_handle_kind *kind, void *ptr,
                               size_t cost, size_t aux);
/* A binary over `len' bytes at `data' that a new resource of `kind' owns (it holds `ptr');
 * false when out of memory (`ptr' still the caller's). */
static bool resource_binary(ErlNifEnv *env, const emf_nif_handle_kind *kind, void *ptr,
                            const void *data, size_t len, ERL_NIF_TERM *out);
/* Handle arguments of handles that are never closed early: handle_get (false when the term is
 * none of this load), handle_arg (with the error term: invalid_argument), handle_cost (its
 * cost hint, 0 when it is none). */
static bool handle_get(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind,
                       emf_nif_handle **out);
static bool handle_arg(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind,
                       emf_nif_handle **out, ERL_NIF_TERM *error);
static size_t handle_cost(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind);
static ERL_NIF_TERM not_a_handle(ErlNifEnv *env, ERL_NIF_TERM term, const char *expected,
                                 const char *not_this_version);
/* Closable handles: handle_use reads the argument and enters its use guard (errors:
 * invalid_argument, closed); handle_leave leaves it (handle_leave_with: and returns
 * `result'); handle_close closes it (false: closed already), handle_close_arg as a NIF result
 * (ok, or the error for a term that is no handle of `kind'); handle_take takes the engine
 * handle out (see util.c); handle_release frees it; is_closed. */
static bool handle_use(ErlNifEnv *env, ERL_NIF_TERM term, const emf_nif_handle_kind *kind,
                       emf_nif_handle **out, ERL_NIF_TERM *error);
static void handle_leave(emf_nif_handle *h);
static ERL_NIF_TERM handle_leave_with(emf_nif_handle *h, ERL_NIF_TERM result);
static bool handle_close(emf_nif_handle *h);
static ERL_NIF_TERM handle_close_arg(ErlNifEnv *env, ERL_NIF_TERM term,
                                     const emf_nif_handle_kind *kind);
static void *handle_take(emf_nif_handle *h, bool *busy);
static void handle_release(emf_nif_handle *h);
static bool is_closed(emf_nif_handle *h);

/* In a NIF: declares `h', the handle argument `term' of `kind' (handle_arg), or returns the
 * error term from the NIF. */
#define HANDLE_ARG_OR_RETURN(env, h, term, kind)                                               \
    emf_nif_handle *h;                                                                         \
    do {                                                                                       \
        ERL_NIF_TERM handle_error_;                                                            \
        if (!handle_arg((env), (term), (kind), &h, &handle_error_)) {                          \
            return handle_error_;                                                              \
        }                                                                                      \
    } while (0)

/* In a NIF: declares `h', the closable handle argument `term' of `kind' entered with
 * handle_use, or returns the error term from the NIF. Every path after it must leave `h'
 * (handle_leave, handle_leave_with). */
#define HANDLE_USE_OR_RETURN(env, h, term, kind)                                               \
    emf_nif_handle *h;                                                                         \
    do {                                                                                       \
        ERL_NIF_TERM handle_error_;                                                            \
        if (!handle_use((env), (term), (kind), &h, &handle_error_)) {                          \
            return handle_error_;                                                              \
        }                                                                                      \
    } while (0)

#endif /* ERLMCP_FLOW_NIF_H */

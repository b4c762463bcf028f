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

typedef ERL_NIF_TERM (*nif_impl)(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

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

/* One kind of engine handle. A new handle type adds a release function, a destructor of one
 * line, a kind, and an entry in handle_kinds[]. */
typedef struct emf_nif_handle_kind {
    const char *name;                   /* resource type name prefix, unique in this library */
    ErlNifResourceDtor *dtor;           /* frees the engine handle of one resource object */
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
#define EMF_NIF_KIND_COUNT 13

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

#endif /* ERLMCP_FLOW_NIF_H */

/* vector.c — quantization, distance and HNSW index NIFs (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

/* An HNSW index: defined with the HNSW NIFs. */
static emf_status_t release_hnsw(void *ptr);


/* An HNSW index (emf_hnsw_t in an emf_nif_hnsw): thread-safe; close/1 may release it early,
 * so its calls bracket their use with handle_use/handle_leave. */
static const emf_nif_handle_kind hnsw_kind = {
    .name = "erlmcp_flow_hnsw",
    .release = release_hnsw,
    .release_what = "emf_hnsw_free",
    .expected = "index: expected a handle from erlmcp_flow_hnsw:new/1, open/1 or load/1",
    .not_this_version = "index: not a handle of this library version: expected an index of "
                        "the NIF library loaded now (handles made before a code upgrade of "
                        "erlmcp_flow_nif are refused; load the index again)",
    .closed = "index: closed by close/1",
    .index = EMF_NIF_KIND_HNSW,
};

/* ------------------------------------------------------------------------------------------ */
/* Vectors and HNSW indexes                                                                   */
/* ------------------------------------------------------------------------------------------ */

/*
 * Vector kernels (emf_quantize_f32, emf_dequantize_i8, emf_distance_f32/_f16,
 * emf_cosine_distance_i8, emf_dot_i8) and HNSW indexes (emf_hnsw_*).
 *
 * Vectors. A float vector is a binary of native-endian float32 values, int8 codes a binary of
 * bytes, half floats a binary of native-endian IEEE binary16 values; erlmcp_flow_hnsw and
 * erlmcp_flow_quantization convert lists (in Erlang, never here). The engine refuses arrays
 * that are not aligned to their element, so a binary that is not (a sub-binary) is copied
 * first, and an empty one is passed as NULL (the engine checks the alignment of any non-NULL
 * pointer, even for 0 values). Ids are uint64_t: a batch's ids come as a binary of
 * native-endian uint64 values, a search filter as the engine's bitset (id i: bit i % 64 of
 * word i / 64), a binary of native-endian uint64 words. Distances are doubles; one that is
 * not finite (float arithmetic overflowing on huge values) becomes infinity, neg_infinity or
 * nan, which no Erlang float can hold.
 *
 * Indexes. An index resource holds an emf_nif_hnsw: the engine handle and its parameters
 * (read once: they never change, but for the dim of an index made with dim 0, which its first
 * insert fixes in the engine: hnsw_dim asks for it); this shim holds no lock of its own. The engine serialises
 * compaction: emf_hnsw_compact waits for the calls in progress on the index and holds every
 * other call off until it is done, and each call that would wait has a try form
 * (emf_hnsw_try_insert, _try_search, _try_remove, _try_stats) that answers EMF_ERR_BUSY at
 * once, having done nothing, while a compaction runs or waits. On a normal scheduler a call
 * uses the try forms (its cost estimate's emf_hnsw_try_stats included), and on EMF_ERR_BUSY
 * it moves to a dirty I/O scheduler, where it makes the plain (waiting) call; on a dirty
 * scheduler the plain calls are made. No call ever waits for a compact on a normal scheduler.
 * (emf_hnsw_try_remove also answers EMF_ERR_BUSY for an id whose insertion is still under
 * way: the call moves all the same, and the plain call's answer is the result.) A batch
 * insert holds the engine's id map while it checks
 * and reserves its ids (about 0.1-0.2 µs an id: 20 ms for 100000), which single inserts,
 * removals and stats need too: while a batch insert runs, those move to a dirty scheduler
 * (one that starts in the same instant as a batch may still wait for its id check). close/1
 * may release an index early: every call brackets its use with handle_use/handle_leave, and
 * the last of close and the calls inside frees it.
 *
 * Scheduling. insert_batch, search_batch and compact run on a dirty CPU scheduler; open,
 * load, save and close on a dirty I/O scheduler (files, mappings); new, info and stats on the
 * calling scheduler. A single insert, search or remove runs on the calling scheduler when its
 * estimated time is at most EMF_NIF_HNSW_DIRTY_NS, else on a dirty CPU scheduler. The
 * estimate counts, from the index's parameters and size (live vectors, plus the removed ones
 * not compacted yet, which are still routed through), the nodes a call expands, each
 * scanning its 2m neighbour slots (EMF_NIF_HNSW_SCAN_NS a slot) and evaluating the distance
 * of those not seen yet (hnsw_eval_ns: 48 + dim / 4 ns):
 *   - search: ef nodes expanded (ef = max(ef or the index's ef_search, k), scaled up by
 *     nodes / live), every node with a filter (a selective one visits the whole graph) or an
 *     ef as large as the index; plus the re-rank of ef originals and 50 ns a hit returned;
 *   - insert: a search with ef_construction, then 2 · (2m)² evaluations (the neighbours'
 *     lists pruned);
 *   - remove: (2m)² evaluations at 48 + dim / 2 ns (the neighbour repair decodes records).
 * The constants were fitted to measurements on the 2-CPU CI VM, idle and busy (with the
 * defaults, idle: a single insert 0.14-0.44 ms at dim 16-768, a search with ef 50 37-131 µs
 * and with ef 800 0.39-1.06 ms, a filtered search admitting one id of 20000 at dim 16 3.8 ms,
 * a removal 46-160 µs; busy, up to 2.5 times that): the estimates are 1.2 to 4 times the
 * idle times. The kernels scan their inputs once: dirty above EMF_NIF_DIRTY_THRESHOLD bytes,
 * like other byte inputs.
 *
 * Limits. Per-call ef and k are at most EMF_NIF_HNSW_MAX_EF (the engine's own bound for an
 * index's ef_search): k sizes the hits buffer allocated here, and engines before 19884cb
 * reserved 2 · max(ef, k) candidates up front, aborting the process when the system refused
 * the allocation (an ef of 2^40 did). A search batch returns at most
 * EMF_NIF_HNSW_MAX_BATCH_HITS hits.
 */

#define EMF_NIF_HNSW_MAX_EF ((size_t)1 << 20)
#define EMF_NIF_HNSW_MAX_BATCH_HITS ((size_t)1 << 24)
#define EMF_NIF_HNSW_DIRTY_NS ((size_t)500 * 1000)
/* ns to scan one neighbour slot of an expanded node (visited set, bounds, heap). */
#define EMF_NIF_HNSW_SCAN_NS ((size_t)10)
#define EMF_NIF_HNSW_HIT_NS ((size_t)50)
/* Aligned copies of vectors up to this many bytes are made on the stack. */
#define EMF_NIF_VEC_STACK_BYTES 1024
/* Search hits up to this many are written on the stack. */
#define EMF_NIF_HITS_STACK 64

#define EMF_NIF_VECTOR_ERROR "vector: expected a binary of native-endian float32 values"
#define EMF_NIF_QUERY_ERROR "query: expected a binary of native-endian float32 values"
#define EMF_NIF_ID_ERROR "id: expected an integer from 0 to 18446744073709551615"
#define EMF_NIF_METRIC_ERROR "metric: expected cosine, dot or l2sq"
#define EMF_NIF_PATH_ERROR "path: expected a file name as a binary or iodata without NUL bytes"

/* The state of one index resource (its `ptr'). */
typedef struct emf_nif_hnsw {
    emf_hnsw_t *index;
    emf_hnsw_params_t params;  /* emf_hnsw_params, read once (dim 0: see hnsw_dim) */
    bool mapped;               /* emf_hnsw_open: read-only */
    atomic_size_t removed;     /* removals since made, loaded or compacted (cost estimates) */
    atomic_size_t batches;     /* batch inserts in progress */
    atomic_size_t *count;      /* the load's hnsw_count */
} emf_nif_hnsw;

static emf_status_t release_hnsw(void *ptr) {
    emf_nif_hnsw *w = ptr;
    emf_status_t st = emf_hnsw_free(w->index);
    atomic_fetch_sub_explicit(w->count, 1, memory_order_relaxed);
    enif_free(w);
    return st;
}

/* A binary argument holding whole values of `elem' bytes. */
static bool get_array(ErlNifEnv *env, ERL_NIF_TERM term, size_t elem, ErlNifBinary *out) {
    return enif_inspect_binary(env, term, out) && out->size % elem == 0;
}

/* The size of a binary argument (the cost of scanning it), 0 for other terms (refused). */
static size_t binary_cost(ErlNifEnv *env, ERL_NIF_TERM term) {
    ErlNifBinary bin;
    return enif_inspect_binary(env, term, &bin) ? bin.size : 0;
}

/* The bytes of `bin' for the engine, aligned to `align': the binary's own, or a copy in
 * `stack' (EMF_NIF_VEC_STACK_BYTES, aligned to 8) or on the heap (*heap: enif_free it); NULL
 * for an empty binary. False when out of memory. */
static bool aligned_view(const ErlNifBinary *bin, size_t align, uint64_t *stack, void **heap,
                         const void **out) {
    *heap = NULL;
    if (bin->size == 0) {
        *out = NULL;
        return true;
    }
    if ((uintptr_t)bin->data % align == 0) {
        *out = bin->data;
        return true;
    }
    void *dst = stack;
    if (bin->size > EMF_NIF_VEC_STACK_BYTES) {
        dst = *heap = enif_alloc(bin->size);
        if (dst == NULL) {
            return false;
        }
    }
    memcpy(dst, bin->data, bin->size);
    *out = dst;
    return true;
}

static void free_heap(void *heap) {
    if (heap != NULL) {
        enif_free(heap);
    }
}

/* A distance as a term: a float, or infinity, neg_infinity or nan. */
static ERL_NIF_TERM make_real(ErlNifEnv *env, double d) {
    if (isnan(d)) {
        return atom_nan;
    }
    if (isinf(d)) {
        return d > 0 ? atom_infinity : atom_neg_infinity;
    }
    return enif_make_double(env, d);
}

static bool get_metric(ERL_NIF_TERM term, uint32_t *out) {
    if (enif_is_identical(term, atom_cosine)) {
        *out = EMF_METRIC_COSINE;
    } else if (enif_is_identical(term, atom_dot)) {
        *out = EMF_METRIC_DOT;
    } else if (enif_is_identical(term, atom_l2sq)) {
        *out = EMF_METRIC_L2SQ;
    } else {
        return false;
    }
    return true;
}

static ERL_NIF_TERM metric_term(ErlNifEnv *env, uint32_t code) {
    switch (code) {
    case EMF_METRIC_COSINE: return atom_cosine;
    case EMF_METRIC_DOT: return atom_dot;
    case EMF_METRIC_L2SQ: return atom_l2sq;
    default: return enif_make_uint(env, code);
    }
}

static bool get_originals(ERL_NIF_TERM term, uint32_t *out) {
    if (enif_is_identical(term, atom_none)) {
        *out = EMF_ORIGINALS_NONE;
    } else if (enif_is_identical(term, atom_f16)) {
        *out = EMF_ORIGINALS_F16;
    } else if (enif_is_identical(term, atom_f32)) {
        *out = EMF_ORIGINALS_F32;
    } else {
        return false;
    }
    return true;
}

static ERL_NIF_TERM originals_term(ErlNifEnv *env, uint32_t code) {
    switch (code) {
    case EMF_ORIGINALS_NONE: return atom_none;
    case EMF_ORIGINALS_F16: return atom_f16;
    case EMF_ORIGINALS_F32: return atom_f32;
    default: return enif_make_uint(env, code);
    }
}

/* quantize_f32(Vector) -> {ok, {Codes, Scale}} */
static ERL_NIF_TERM quantize_f32_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary x;
    if (!get_array(env, argv[0], sizeof(float), &x)) {
        return argument_error(env, EMF_NIF_VECTOR_ERROR);
    }
    size_t dim = x.size / sizeof(float);
    uint64_t stack[EMF_NIF_VEC_STACK_BYTES / 8];
    void *heap;
    const void *xs;
    if (!aligned_view(&x, _Alignof(float), stack, &heap, &xs)) {
        return out_of_memory(env);
    }
    ERL_NIF_TERM codes;
    unsigned char *out = enif_make_new_binary(env, dim, &codes);
    float scale = 0.0f;
    emf_status_t st = emf_quantize_f32(xs, dim, dim > 0 ? (int8_t *)out : NULL, &scale);
    ERL_NIF_TERM result = st == EMF_OK
        ? make_ok(env, enif_make_tuple2(env, codes, make_real(env, scale)))
        : status_error(env, st);
    free_heap(heap);
    return result;
}

static ERL_NIF_TERM nif_quantize_f32(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "quantize_f32", quantize_f32_impl, binary_cost(env, argv[0]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* dequantize_i8(Codes, Scale) -> {ok, Vector}: Vector a binary of native-endian float32. */
static ERL_NIF_TERM dequantize_i8_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary codes;
    double scale;
    if (!enif_inspect_binary(env, argv[0], &codes)) {
        return argument_error(env, "codes: expected a binary of int8 codes");
    }
    if (!enif_get_double(env, argv[1], &scale) || !(fabs(scale) <= (double)FLT_MAX)) {
        return argument_error(env, "scale: expected a float within the float32 range");
    }
    size_t dim = codes.size;
    if (dim > EMF_MAX_INPUT_LEN / sizeof(float)) {
        /* The engine would refuse the output array (EMF_ERR_TOO_LARGE); not allocated. */
        return shim_error(env, EMF_ERR_TOO_LARGE, "codes: the float32 vector would exceed "
                                                  "the engine's 2 GiB input limit");
    }
    size_t bytes = dim * sizeof(float);
    ErlNifBinary out;
    if (!enif_alloc_binary(bytes, &out)) {
        return out_of_memory(env);
    }
    /* A new binary is aligned in practice; if not, the floats are written elsewhere first. */
    uint64_t stack[EMF_NIF_VEC_STACK_BYTES / 8];
    void *heap = NULL;
    void *dst = out.data;
    if (dim > 0 && (uintptr_t)out.data % _Alignof(float) != 0) {
        dst = bytes <= sizeof stack ? (void *)stack : (heap = enif_alloc(bytes));
        if (dst == NULL) {
            enif_release_binary(&out);
            return out_of_memory(env);
        }
    }
    emf_status_t st = emf_dequantize_i8(dim > 0 ? (const int8_t *)codes.data : NULL, dim,
                                        (float)scale, dim > 0 ? dst : NULL);
    if (st != EMF_OK) {
        ERL_NIF_TERM error = status_error(env, st);
        free_heap(heap);
        enif_release_binary(&out);
        return error;
    }
    if (dst != out.data) {
        memcpy(out.data, dst, bytes);
    }
    free_heap(heap);
    return make_ok(env, enif_make_binary(env, &out));
}

static ERL_NIF_TERM nif_dequantize_i8(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "dequantize_i8", dequantize_i8_impl,
                       sat_mul(binary_cost(env, argv[0]), 1 + sizeof(float)),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* Reads two vectors of `elem'-byte values of the same length: argv[first] and argv[first + 1]
 * (named a and b), aligned for the engine. False with *error set otherwise. */
typedef struct emf_nif_pair {
    const void *a;
    const void *b;
    size_t len; /* values in each */
    void *heap_a;
    void *heap_b;
    uint64_t stack_a[EMF_NIF_VEC_STACK_BYTES / 8];
    uint64_t stack_b[EMF_NIF_VEC_STACK_BYTES / 8];
} emf_nif_pair;

static bool get_pair(ErlNifEnv *env, const ERL_NIF_TERM argv[], int first, size_t elem,
                     const char *what, emf_nif_pair *p, ERL_NIF_TERM *error) {
    ErlNifBinary a, b;
    char msg[160];
    if (!get_array(env, argv[first], elem, &a)) {
        snprintf(msg, sizeof msg, "a: expected a binary of %s", what);
        *error = argument_error(env, msg);
        return false;
    }
    if (!get_array(env, argv[first + 1], elem, &b)) {
        snprintf(msg, sizeof msg, "b: expected a binary of %s", what);
        *error = argument_error(env, msg);
        return false;
    }
    if (a.size != b.size) {
        snprintf(msg, sizeof msg, "a and b: expected vectors of the same length, got %zu and "
                 "%zu values", a.size / elem, b.size / elem);
        *error = argument_error(env, msg);
        return false;
    }
    p->len = a.size / elem;
    if (!aligned_view(&a, elem, p->stack_a, &p->heap_a, &p->a)) {
        *error = out_of_memory(env);
        return false;
    }
    if (!aligned_view(&b, elem, p->stack_b, &p->heap_b, &p->b)) {
        free_heap(p->heap_a);
        *error = out_of_memory(env);
        return false;
    }
    return true;
}

static void pair_free(emf_nif_pair *p) {
    free_heap(p->heap_a);
    free_heap(p->heap_b);
}

#define EMF_NIF_F32_VALUES "native-endian float32 values"
#define EMF_NIF_F16_VALUES "native-endian IEEE half floats (16 bits)"
#define EMF_NIF_I8_VALUES "int8 codes"

/* distance_f32(Metric, A, B), distance_f16(Metric, A, B) -> {ok, Distance} */
static ERL_NIF_TERM distance_impl(ErlNifEnv *env, const ERL_NIF_TERM argv[], bool half) {
    uint32_t metric;
    if (!get_metric(argv[0], &metric)) {
        return argument_error(env, EMF_NIF_METRIC_ERROR);
    }
    emf_nif_pair p;
    ERL_NIF_TERM error;
    if (!get_pair(env, argv, 1, half ? sizeof(uint16_t) : sizeof(float),
                  half ? EMF_NIF_F16_VALUES : EMF_NIF_F32_VALUES, &p, &error)) {
        return error;
    }
    double d = 0.0;
    emf_status_t st = half ? emf_distance_f16(metric, p.a, p.b, p.len, &d)
                           : emf_distance_f32(metric, p.a, p.b, p.len, &d);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, make_real(env, d)) : status_error(env, st);
    pair_free(&p);
    return result;
}

static ERL_NIF_TERM distance_f32_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return distance_impl(env, argv, false);
}

static ERL_NIF_TERM distance_f16_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return distance_impl(env, argv, true);
}

static size_t pair_cost(ErlNifEnv *env, const ERL_NIF_TERM argv[], int first) {
    return sat_add(binary_cost(env, argv[first]), binary_cost(env, argv[first + 1]));
}

static ERL_NIF_TERM nif_distance_f32(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "distance_f32", distance_f32_impl, pair_cost(env, argv, 1),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

static ERL_NIF_TERM nif_distance_f16(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "distance_f16", distance_f16_impl, pair_cost(env, argv, 1),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* cosine_distance_i8(A, B) -> {ok, Distance}; dot_i8(A, B) -> {ok, Integer} */
static ERL_NIF_TERM cosine_distance_i8_impl(ErlNifEnv *env, int argc,
                                            const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_pair p;
    ERL_NIF_TERM error;
    if (!get_pair(env, argv, 0, 1, EMF_NIF_I8_VALUES, &p, &error)) {
        return error;
    }
    double d = 0.0;
    emf_status_t st = emf_cosine_distance_i8(p.a, p.b, p.len, &d);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, make_real(env, d)) : status_error(env, st);
    pair_free(&p);
    return result;
}

static ERL_NIF_TERM dot_i8_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    emf_nif_pair p;
    ERL_NIF_TERM error;
    if (!get_pair(env, argv, 0, 1, EMF_NIF_I8_VALUES, &p, &error)) {
        return error;
    }
    int64_t dot = 0;
    emf_status_t st = emf_dot_i8(p.a, p.b, p.len, &dot);
    ERL_NIF_TERM result = st == EMF_OK ? make_ok(env, enif_make_int64(env, dot))
                                       : status_error(env, st);
    pair_free(&p);
    return result;
}

static ERL_NIF_TERM nif_cosine_distance_i8(ErlNifEnv *env, int argc,
                                           const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "cosine_distance_i8", cosine_distance_i8_impl,
                       pair_cost(env, argv, 0), EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

static ERL_NIF_TERM nif_dot_i8(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "dot_i8", dot_i8_impl, pair_cost(env, argv, 0),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* Wraps a new engine index into a resource: {ok, Index}, or an error (the index freed). */
static ERL_NIF_TERM hnsw_wrap(ErlNifEnv *env, emf_hnsw_t *index, bool mapped) {
    emf_hnsw_params_t params;
    emf_status_t st = emf_hnsw_params(index, &params);
    ERL_NIF_TERM error = 0;
    if (st != EMF_OK) {
        error = status_error(env, st); /* cannot happen: a handle the engine just made */
    }
    emf_nif_hnsw *w = NULL;
    if (st == EMF_OK) {
        w = enif_alloc(sizeof *w);
        if (w == NULL) {
            error = out_of_memory(env);
        }
    }
    if (w == NULL) {
        st = emf_hnsw_free(index);
        if (st != EMF_OK) {
            report_impossible("emf_hnsw_free of an index not wrapped", st);
        }
        return error;
    }
    emf_nif_priv *priv = enif_priv_data(env);
    w->index = index;
    w->params = params;
    w->mapped = mapped;
    atomic_init(&w->removed, 0);
    atomic_init(&w->batches, 0);
    w->count = &priv->hnsw_count;
    atomic_fetch_add_explicit(w->count, 1, memory_order_relaxed);
    emf_nif_handle *h = handle_alloc(env, &hnsw_kind, w, 0, 0);
    if (h == NULL) {
        st = release_hnsw(w);
        if (st != EMF_OK) {
            report_impossible("emf_hnsw_free of an index not wrapped", st);
        }
        return out_of_memory(env);
    }
    ERL_NIF_TERM term = enif_make_resource(env, h);
    enif_release_resource(h); /* the term holds the only reference now */
    return make_ok(env, term);
}

/* hnsw_new(Dim, Metric, M, EfConstruction, EfSearch, Originals, Seed) -> {ok, Index}; Seed is
 * an integer or `default' (emf_hnsw_params_default's). The engine checks the ranges. */
static ERL_NIF_TERM nif_hnsw_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    uint32_t dim;
    emf_hnsw_params_t p;
    if (!get_u32(env, argv[0], &dim)) {
        return argument_error(env, "dim: expected an integer from 1 to 65536");
    }
    emf_status_t st = emf_hnsw_params_default(dim, &p);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    if (!get_metric(argv[1], &p.metric)) {
        return argument_error(env, EMF_NIF_METRIC_ERROR);
    }
    if (!get_u32(env, argv[2], &p.m)) {
        return argument_error(env, "m: expected an integer from 2 to 128");
    }
    if (!get_u32(env, argv[3], &p.ef_construction)) {
        return argument_error(env, "ef_construction: expected an integer from 1 to 1048576");
    }
    if (!get_u32(env, argv[4], &p.ef_search)) {
        return argument_error(env, "ef_search: expected an integer from 1 to 1048576");
    }
    if (!get_originals(argv[5], &p.originals)) {
        return argument_error(env, "originals: expected none, f16 or f32");
    }
    if (!enif_is_identical(argv[6], atom_default)) {
        ErlNifUInt64 seed;
        if (!enif_get_uint64(env, argv[6], &seed)) {
            return argument_error(env, "seed: expected default or a non-negative 64-bit "
                                       "integer");
        }
        p.seed = seed;
    }
    emf_hnsw_t *index = NULL;
    st = emf_hnsw_new(&p, &index);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return hnsw_wrap(env, index, false);
}

/* hnsw_open(Path), hnsw_load(Path) -> {ok, Index} (dirty I/O scheduler: NIF table) */
static ERL_NIF_TERM hnsw_file_impl(ErlNifEnv *env, ERL_NIF_TERM path_term, bool map) {
    char *path = get_cstring(env, path_term);
    if (path == NULL) {
        return argument_error(env, EMF_NIF_PATH_ERROR);
    }
    emf_hnsw_t *index = NULL;
    emf_status_t st = map ? emf_hnsw_open(path, &index) : emf_hnsw_load(path, &index);
    enif_free(path);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    return hnsw_wrap(env, index, map);
}

static ERL_NIF_TERM nif_hnsw_open(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return hnsw_file_impl(env, argv[0], true);
}

static ERL_NIF_TERM nif_hnsw_load(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return hnsw_file_impl(env, argv[0], false);
}

/* Enters the index argv[0]: on success hnsw_leave must follow. Else false with the error in
 * *result: {invalid_argument, _} for a term that is no index of this load, {closed, _} for a
 * closed one. */
static bool hnsw_enter(ErlNifEnv *env, const ERL_NIF_TERM argv[], emf_nif_handle **out,
                       ERL_NIF_TERM *result) {
    return handle_use(env, argv[0], &hnsw_kind, out, result);
}

static void hnsw_leave(emf_nif_handle *h) {
    handle_leave(h); /* may free the index: the last call of a closed one */
}

/* Leaves the index and moves the call to a dirty CPU scheduler (too long for this one). */
static ERL_NIF_TERM hnsw_go_dirty(ErlNifEnv *env, emf_nif_handle *h, const char *name,
                                  nif_impl impl, int argc, const ERL_NIF_TERM argv[]) {
    hnsw_leave(h);
    return schedule_dirty_cpu(env, name, impl, argc, argv);
}

/* Leaves the index and moves the call to a dirty I/O scheduler, where it waits for the
 * compaction that made a try form answer EMF_ERR_BUSY. */
static ERL_NIF_TERM hnsw_go_wait(ErlNifEnv *env, emf_nif_handle *h, const char *name,
                                 nif_impl impl, int argc, const ERL_NIF_TERM argv[]) {
    hnsw_leave(h);
    return schedule_dirty_io(env, name, impl, argc, argv);
}

/* A cost estimate's answer when a compaction runs or waits (the index could not be sized
 * without waiting): the call moves with hnsw_go_wait. */
#define EMF_NIF_HNSW_BUSY SIZE_MAX

/* True when a batch insert runs on the index: it may hold the engine's id map for long. */
static bool hnsw_batch_running(emf_nif_hnsw *w) {
    return atomic_load_explicit(&w->batches, memory_order_acquire) > 0;
}

/* The index's dimension: params.dim, or for an index made with dim 0 the one its first
 * insert fixed, asked of the engine each time (0 until then; emf_hnsw_params takes no lock),
 * so that the shared params are never written after the index is made. */
static size_t hnsw_dim(const emf_nif_hnsw *w) {
    if (w->params.dim != 0) {
        return w->params.dim;
    }
    emf_hnsw_params_t p;
    return emf_hnsw_params(w->index, &p) == EMF_OK ? p.dim : 0;
}

/* ns of one distance evaluation (int8 codes, graph bookkeeping included). */
static size_t hnsw_eval_ns(const emf_nif_hnsw *w) {
    return 48 + hnsw_dim(w) / 4;
}

/* The live vectors and the nodes (live and removed, not yet compacted) of an entered index,
 * read on a normal scheduler with emf_hnsw_try_stats: false when that is EMF_ERR_BUSY. */
static bool hnsw_size(const emf_nif_hnsw *w, size_t *live, size_t *nodes) {
    size_t len = 0;
    emf_status_t st = on_normal_scheduler() ? emf_hnsw_try_stats(w->index, &len, NULL)
                                            : emf_hnsw_stats(w->index, &len, NULL);
    if (st == EMF_ERR_BUSY) {
        return false;
    }
    if (st != EMF_OK) {
        len = SIZE_MAX / 4; /* cannot happen (a live handle): assume a large index */
    }
    *live = len;
    *nodes = sat_add(len, atomic_load_explicit(&w->removed, memory_order_relaxed));
    return true;
}

/* The graph work of a search that expands `expanded' nodes: their neighbour slots are
 * scanned, and the nodes not seen yet (at most all of them) have their distance evaluated. */
static size_t hnsw_walk_ns(const emf_nif_hnsw *w, size_t expanded, size_t nodes) {
    size_t slots = sat_mul(expanded, 2 * (size_t)w->params.m);
    return sat_add(sat_mul(size_min(nodes, slots), hnsw_eval_ns(w)),
                   sat_mul(slots, EMF_NIF_HNSW_SCAN_NS));
}

static size_t hnsw_search_ns(const emf_nif_hnsw *w, size_t k, size_t ef, bool filtered,
                             bool rerank) {
    size_t live, nodes;
    if (!hnsw_size(w, &live, &nodes)) {
        return EMF_NIF_HNSW_BUSY;
    }
    size_t efe = size_max(ef != 0 ? ef : w->params.ef_search, k);
    /* About ef nodes are expanded, more when removed nodes (routed through, never returned)
     * dilute the live ones; every node when a filter admits few of them. */
    size_t expanded = nodes;
    if (!filtered) {
        expanded = live < nodes ? sat_mul(efe, nodes) / size_max(live, 1) : efe;
        expanded = size_min(nodes, expanded);
    }
    size_t ns = hnsw_walk_ns(w, expanded, nodes);
    if (rerank && w->params.originals != EMF_ORIGINALS_NONE) {
        ns = sat_add(ns, sat_mul(size_min(efe, nodes), 16 + hnsw_dim(w) / 4));
    }
    return size_min(sat_add(ns, sat_mul(size_min(k, live), EMF_NIF_HNSW_HIT_NS)),
                    EMF_NIF_HNSW_BUSY - 1);
}

static size_t hnsw_insert_ns(const emf_nif_hnsw *w) {
    size_t live, nodes;
    if (!hnsw_size(w, &live, &nodes)) {
        return EMF_NIF_HNSW_BUSY;
    }
    size_t m2 = 2 * (size_t)w->params.m;
    /* A search with ef_construction, then the neighbours' lists pruned. */
    size_t search = hnsw_walk_ns(w, size_min(nodes, w->params.ef_construction), nodes);
    return size_min(sat_add(search, sat_mul(sat_mul(2, sat_mul(m2, m2)), hnsw_eval_ns(w))),
                    EMF_NIF_HNSW_BUSY - 1);
}

static size_t hnsw_remove_ns(const emf_nif_hnsw *w) {
    size_t m2 = 2 * (size_t)w->params.m;
    return sat_mul(sat_mul(m2, m2), 48 + hnsw_dim(w) / 2);
}

/* hnsw_info(Index) -> {ok, #{dim, metric, m, ef_construction, ef_search, originals, seed,
 * mapped}}: the parameters read when the index was made, opened or loaded (dim: hnsw_dim,
 * 0 for an index made with dim 0 until its first insert). */
static ERL_NIF_TERM nif_hnsw_info(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &hnsw_kind);
    const emf_nif_hnsw *w = h->ptr;
    const emf_hnsw_params_t *p = &w->params;
    ERL_NIF_TERM keys[] = {atom_dim, atom_metric, atom_m, atom_ef_construction, atom_ef_search,
                           atom_originals, atom_seed, atom_mapped};
    ERL_NIF_TERM values[] = {
        enif_make_uint64(env, hnsw_dim(w)),
        metric_term(env, p->metric),
        enif_make_uint(env, p->m),
        enif_make_uint(env, p->ef_construction),
        enif_make_uint(env, p->ef_search),
        originals_term(env, p->originals),
        enif_make_uint64(env, p->seed),
        w->mapped ? atom_true : atom_false,
    };
    return handle_leave_with(h, make_ok(env, MAKE_MAP(env, keys, values)));
}

/* hnsw_insert(Index, Id, Vector) -> ok */
static ERL_NIF_TERM hnsw_insert_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifUInt64 id;
    ErlNifBinary v;
    if (!enif_get_uint64(env, argv[1], &id)) {
        return argument_error(env, EMF_NIF_ID_ERROR);
    }
    if (!get_array(env, argv[2], sizeof(float), &v)) {
        return argument_error(env, EMF_NIF_VECTOR_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!hnsw_enter(env, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    bool normal = on_normal_scheduler();
    if (normal && hnsw_batch_running(w)) {
        return hnsw_go_dirty(env, h, "hnsw_insert", hnsw_insert_impl, argc, argv);
    }
    if (normal) {
        size_t ns = hnsw_insert_ns(w);
        if (ns == EMF_NIF_HNSW_BUSY) {
            return hnsw_go_wait(env, h, "hnsw_insert", hnsw_insert_impl, argc, argv);
        }
        if (ns > EMF_NIF_HNSW_DIRTY_NS) {
            return hnsw_go_dirty(env, h, "hnsw_insert", hnsw_insert_impl, argc, argv);
        }
    }
    uint64_t stack[EMF_NIF_VEC_STACK_BYTES / 8];
    void *heap;
    const void *vs;
    if (!aligned_view(&v, _Alignof(float), stack, &heap, &vs)) {
        result = out_of_memory(env);
    } else {
        size_t dim = v.size / sizeof(float);
        emf_status_t st = normal ? emf_hnsw_try_insert(w->index, id, vs, dim)
                                 : emf_hnsw_insert(w->index, id, vs, dim);
        free_heap(heap);
        if (normal && st == EMF_ERR_BUSY) {
            return hnsw_go_wait(env, h, "hnsw_insert", hnsw_insert_impl, argc, argv);
        }
        result = ok_or_error(env, st);
    }
    hnsw_leave(h);
    return result;
}

static ERL_NIF_TERM nif_hnsw_insert(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "hnsw_insert", hnsw_insert_impl, binary_cost(env, argv[2]),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* hnsw_insert_new(Index, Vector) -> {ok, Id}: emf_hnsw_insert_new (an id the index picks),
 * scheduled as hnsw_insert. */
static ERL_NIF_TERM hnsw_insert_new_impl(ErlNifEnv *env, int argc,
                                         const ERL_NIF_TERM argv[]) {
    ErlNifBinary v;
    if (!get_array(env, argv[1], sizeof(float), &v)) {
        return argument_error(env, EMF_NIF_VECTOR_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!hnsw_enter(env, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    bool normal = on_normal_scheduler();
    if (normal && hnsw_batch_running(w)) {
        return hnsw_go_dirty(env, h, "hnsw_insert_new", hnsw_insert_new_impl, argc, argv);
    }
    if (normal) {
        size_t ns = hnsw_insert_ns(w);
        if (ns == EMF_NIF_HNSW_BUSY) {
            return hnsw_go_wait(env, h, "hnsw_insert_new", hnsw_insert_new_impl, argc, argv);
        }
        if (ns > EMF_NIF_HNSW_DIRTY_NS) {
            return hnsw_go_dirty(env, h, "hnsw_insert_new", hnsw_insert_new_impl, argc, argv);
        }
    }
    uint64_t stack[EMF_NIF_VEC_STACK_BYTES / 8];
    void *heap;
    const void *vs;
    if (!aligned_view(&v, _Alignof(float), stack, &heap, &vs)) {
        result = out_of_memory(env);
    } else {
        size_t dim = v.size / sizeof(float);
        uint64_t id = 0;
        emf_status_t st = normal ? emf_hnsw_try_insert_new(w->index, vs, dim, &id)
                                 : emf_hnsw_insert_new(w->index, vs, dim, &id);
        free_heap(heap);
        if (normal && st == EMF_ERR_BUSY) {
            return hnsw_go_wait(env, h, "hnsw_insert_new", hnsw_insert_new_impl, argc, argv);
        }
        result = st == EMF_OK ? make_ok(env, enif_make_uint64(env, id)) : status_error(env, st);
    }
    hnsw_leave(h);
    return result;
}

static ERL_NIF_TERM nif_hnsw_insert_new(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "hnsw_insert_new", hnsw_insert_new_impl,
                       binary_cost(env, argv[1]), EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* hnsw_insert_batch(Index, Ids, Vectors, Threads) -> ok (dirty CPU: NIF table): Ids a binary of
 * native-endian uint64, Vectors one of as many rows of the index's dim float32 values. */
static ERL_NIF_TERM nif_hnsw_insert_batch(ErlNifEnv *env, int argc,
                                          const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary ids, vectors;
    uint32_t threads;
    if (!get_array(env, argv[1], sizeof(uint64_t), &ids)) {
        return argument_error(env, "ids: expected a binary of native-endian uint64 ids");
    }
    if (!get_array(env, argv[2], sizeof(float), &vectors)) {
        return argument_error(env, "vectors: expected a binary of native-endian float32 "
                                   "values");
    }
    if (!get_u32(env, argv[3], &threads)) {
        return argument_error(env, "threads: expected a non-negative 32-bit integer (0: one "
                                   "per CPU)");
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!hnsw_enter(env, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    size_t n = ids.size / sizeof(uint64_t);
    size_t dim = hnsw_dim(w);
    size_t values = vectors.size / sizeof(float);
    if (dim == 0) {
        /* No dimension yet: the rows give it (the engine fixes it; an empty batch does
         * nothing, and rows that do not divide fail the check below). */
        dim = n > 0 && values % n == 0 && values > 0 ? values / n : 1;
    }
    if (values % dim != 0 || values / dim != n) {
        char msg[200];
        snprintf(msg, sizeof msg, "vectors: %zu ids need %zu rows of %zu float32 values, got "
                 "%zu values", n, n, dim, values);
        result = argument_error(env, msg);
    } else {
        uint64_t stack_ids[EMF_NIF_VEC_STACK_BYTES / 8];
        uint64_t stack_vs[EMF_NIF_VEC_STACK_BYTES / 8];
        void *heap_ids = NULL, *heap_vs = NULL;
        const void *ip = NULL, *vp = NULL;
        if (!aligned_view(&ids, _Alignof(uint64_t), stack_ids, &heap_ids, &ip)
            || !aligned_view(&vectors, _Alignof(float), stack_vs, &heap_vs, &vp)) {
            result = out_of_memory(env);
        } else {
            atomic_fetch_add_explicit(&w->batches, 1, memory_order_acq_rel);
            emf_status_t st = emf_hnsw_insert_batch(w->index, ip, n, vp, dim, threads);
            result = ok_or_error(env, st);
            atomic_fetch_sub_explicit(&w->batches, 1, memory_order_acq_rel);
        }
        free_heap(heap_ids);
        free_heap(heap_vs);
    }
    hnsw_leave(h);
    return result;
}

/* The hits of one search as [{Id, Distance}], closest first. */
static ERL_NIF_TERM hits_list(ErlNifEnv *env, const emf_hnsw_hit_t *hits, size_t n) {
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = n; i > 0; i--) {
        ERL_NIF_TERM hit = enif_make_tuple2(env, enif_make_uint64(env, hits[i - 1].id),
                                            make_real(env, hits[i - 1].distance));
        list = enif_make_list_cell(env, hit, list);
    }
    return list;
}

/* The search options of hnsw_search and hnsw_search_batch: K, Ef, Rerank, Filter at
 * argv[first...]. Filter is `undefined' or a non-empty bitset binary. */
typedef struct emf_nif_search_opts {
    size_t k;
    size_t ef;
    uint32_t flags;
    ErlNifBinary filter; /* size 0: no filter */
} emf_nif_search_opts;

static bool get_search_opts(ErlNifEnv *env, const ERL_NIF_TERM argv[], int first,
                            emf_nif_search_opts *o, ERL_NIF_TERM *error) {
    bool rerank;
    if (!get_size(env, argv[first], &o->k) || o->k > EMF_NIF_HNSW_MAX_EF) {
        *error = argument_error(env, "k: expected an integer from 0 to 1048576");
        return false;
    }
    if (!get_size(env, argv[first + 1], &o->ef) || o->ef > EMF_NIF_HNSW_MAX_EF) {
        *error = argument_error(env, "ef: expected an integer from 0 (the index's ef_search) "
                                     "to 1048576");
        return false;
    }
    if (!get_bool(argv[first + 2], &rerank)) {
        *error = argument_error(env, "rerank: expected true or false");
        return false;
    }
    o->flags = rerank ? EMF_SEARCH_RERANK : 0;
    memset(&o->filter, 0, sizeof o->filter);
    if (!enif_is_identical(argv[first + 3], atom_undefined)
        && (!get_array(env, argv[first + 3], sizeof(uint64_t), &o->filter)
            || o->filter.size == 0)) {
        *error = argument_error(env, "filter: expected undefined or a non-empty binary of "
                                     "native-endian uint64 words (id I is bit I rem 64 of word "
                                     "I div 64)");
        return false;
    }
    return true;
}

/* hnsw_search(Index, Query, K, Ef, Rerank, Filter) -> {ok, [{Id, Distance}]} */
static ERL_NIF_TERM hnsw_search_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary q;
    emf_nif_search_opts o;
    ERL_NIF_TERM result;
    if (!get_array(env, argv[1], sizeof(float), &q)) {
        return argument_error(env, EMF_NIF_QUERY_ERROR);
    }
    if (!get_search_opts(env, argv, 2, &o, &result)) {
        return result;
    }
    emf_nif_handle *h;
    if (!hnsw_enter(env, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    bool normal = on_normal_scheduler();
    if (normal) {
        size_t ns = hnsw_search_ns(w, o.k, o.ef, o.filter.size > 0, o.flags != 0);
        if (ns == EMF_NIF_HNSW_BUSY) {
            return hnsw_go_wait(env, h, "hnsw_search", hnsw_search_impl, argc, argv);
        }
        if (ns > EMF_NIF_HNSW_DIRTY_NS) {
            return hnsw_go_dirty(env, h, "hnsw_search", hnsw_search_impl, argc, argv);
        }
    }
    bool busy = false;
    emf_hnsw_hit_t stack_hits[EMF_NIF_HITS_STACK];
    emf_hnsw_hit_t *hits = stack_hits;
    uint64_t stack_q[EMF_NIF_VEC_STACK_BYTES / 8];
    uint64_t stack_f[EMF_NIF_VEC_STACK_BYTES / 8];
    void *heap_q = NULL, *heap_f = NULL;
    const void *qp = NULL, *fp = NULL;
    if (o.k > EMF_NIF_HITS_STACK) {
        hits = enif_alloc(o.k * sizeof *hits);
    }
    if (hits == NULL || !aligned_view(&q, _Alignof(float), stack_q, &heap_q, &qp)
        || !aligned_view(&o.filter, _Alignof(uint64_t), stack_f, &heap_f, &fp)) {
        result = out_of_memory(env);
    } else {
        size_t n = 0;
        size_t dim = q.size / sizeof(float), words = o.filter.size / sizeof(uint64_t);
        emf_status_t st =
            normal ? emf_hnsw_try_search(w->index, qp, dim, o.k, o.ef, o.flags, fp, words, hits,
                                         &n)
                   : emf_hnsw_search(w->index, qp, dim, o.k, o.ef, o.flags, fp, words, hits, &n);
        busy = normal && st == EMF_ERR_BUSY;
        if (!busy) {
            result = st == EMF_OK ? make_ok(env, hits_list(env, hits, size_min(n, o.k)))
                                  : status_error(env, st);
        }
    }
    if (hits != stack_hits && hits != NULL) {
        enif_free(hits);
    }
    free_heap(heap_q);
    free_heap(heap_f);
    if (busy) {
        return hnsw_go_wait(env, h, "hnsw_search", hnsw_search_impl, argc, argv);
    }
    hnsw_leave(h);
    return result;
}

static ERL_NIF_TERM nif_hnsw_search(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "hnsw_search", hnsw_search_impl,
                       sat_add(binary_cost(env, argv[1]), binary_cost(env, argv[5])),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* hnsw_search_batch(Index, Queries, K, Ef, Rerank, Filter, Threads) -> {ok, [[{Id, Dist}]]}
 * (dirty CPU scheduler: NIF table): Queries holds rows of the index's dim float32 values. */
static ERL_NIF_TERM nif_hnsw_search_batch(ErlNifEnv *env, int argc,
                                          const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary qs;
    emf_nif_search_opts o;
    uint32_t threads;
    ERL_NIF_TERM result;
    if (!get_array(env, argv[1], sizeof(float), &qs)) {
        return argument_error(env, "queries: expected a binary of native-endian float32 "
                                   "values");
    }
    if (!get_search_opts(env, argv, 2, &o, &result)) {
        return result;
    }
    if (!get_u32(env, argv[6], &threads)) {
        return argument_error(env, "threads: expected a non-negative 32-bit integer (0: one "
                                   "per CPU)");
    }
    emf_nif_handle *h;
    if (!hnsw_enter(env, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    size_t dim = hnsw_dim(w);
    size_t values = qs.size / sizeof(float);
    size_t nq = dim == 0 ? 0 : values / dim;
    emf_hnsw_hit_t *hits = NULL;
    size_t *counts = NULL;
    void *heap_q = NULL, *heap_f = NULL;
    uint64_t stack_q[EMF_NIF_VEC_STACK_BYTES / 8];
    uint64_t stack_f[EMF_NIF_VEC_STACK_BYTES / 8];
    const void *qp = NULL, *fp = NULL;
    if (dim == 0) {
        result = values == 0 ? make_ok(env, enif_make_list(env, 0))
                             : argument_error(env, "queries: the index has no dimension yet "
                                                   "(made with dim 0, nothing inserted)");
    } else if (values % dim != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "queries: %zu float32 values are not rows of %zu (the "
                 "index's dim)", values, dim);
        result = argument_error(env, msg);
    } else if (o.k != 0 && nq > EMF_NIF_HNSW_MAX_BATCH_HITS / o.k) {
        result = shim_error(env, EMF_ERR_TOO_LARGE, "queries: more than 16777216 hits "
                                                    "(queries times k) in one batch");
    } else if ((hits = enif_alloc(size_max(nq * o.k, 1) * sizeof *hits)) == NULL
               || (counts = enif_alloc(size_max(nq, 1) * sizeof *counts)) == NULL
               || !aligned_view(&qs, _Alignof(float), stack_q, &heap_q, &qp)
               || !aligned_view(&o.filter, _Alignof(uint64_t), stack_f, &heap_f, &fp)) {
        result = out_of_memory(env);
    } else {
        emf_status_t st = emf_hnsw_search_batch(w->index, qp, nq, dim, o.k, o.ef, o.flags, fp,
                                                o.filter.size / sizeof(uint64_t), threads,
                                                hits, counts);
        if (st != EMF_OK) {
            result = status_error(env, st);
        } else {
            ERL_NIF_TERM list = enif_make_list(env, 0);
            for (size_t i = nq; i > 0; i--) {
                ERL_NIF_TERM one = hits_list(env, hits + (i - 1) * o.k,
                                             size_min(counts[i - 1], o.k));
                list = enif_make_list_cell(env, one, list);
            }
            result = make_ok(env, list);
        }
    }
    if (hits != NULL) {
        enif_free(hits);
    }
    if (counts != NULL) {
        enif_free(counts);
    }
    free_heap(heap_q);
    free_heap(heap_f);
    hnsw_leave(h);
    return result;
}

/* hnsw_remove(Index, Id) -> ok */
static ERL_NIF_TERM hnsw_remove_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifUInt64 id;
    if (!enif_get_uint64(env, argv[1], &id)) {
        return argument_error(env, EMF_NIF_ID_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!hnsw_enter(env, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    bool normal = on_normal_scheduler();
    if (normal && (hnsw_batch_running(w) || hnsw_remove_ns(w) > EMF_NIF_HNSW_DIRTY_NS)) {
        return hnsw_go_dirty(env, h, "hnsw_remove", hnsw_remove_impl, argc, argv);
    }
    emf_status_t st = normal ? emf_hnsw_try_remove(w->index, id) : emf_hnsw_remove(w->index, id);
    if (normal && st == EMF_ERR_BUSY) {
        return hnsw_go_wait(env, h, "hnsw_remove", hnsw_remove_impl, argc, argv);
    }
    if (st == EMF_OK) {
        atomic_fetch_add_explicit(&w->removed, 1, memory_order_relaxed);
        result = atom_ok;
    } else {
        result = status_error(env, st);
    }
    hnsw_leave(h);
    return result;
}

static ERL_NIF_TERM nif_hnsw_remove(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return hnsw_remove_impl(env, argc, argv); /* decides its scheduler once it sees the index */
}

/* hnsw_compact(Index) -> ok (dirty CPU scheduler: NIF table): the engine holds every other
 * call off meanwhile (they wait on dirty schedulers; see the notes above). */
static ERL_NIF_TERM nif_hnsw_compact(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_USE_OR_RETURN(env, h, argv[0], &hnsw_kind);
    ERL_NIF_TERM result;
    emf_nif_hnsw *w = h->ptr;
    /* The removals counted before the compaction are reclaimed by it (none runs while it
     * does). One counted after this load that finished before the compaction began stays
     * counted: the cost estimates err on the high side. */
    size_t reclaimed = atomic_load_explicit(&w->removed, memory_order_relaxed);
    emf_status_t st = emf_hnsw_compact(w->index);
    if (st == EMF_OK) {
        atomic_fetch_sub_explicit(&w->removed, reclaimed, memory_order_relaxed);
        result = atom_ok;
    } else {
        result = status_error(env, st);
    }
    handle_leave(h);
    return result;
}

/* hnsw_save(Index, Path) -> ok (dirty I/O scheduler: NIF table) */
static ERL_NIF_TERM nif_hnsw_save(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    char *path = get_cstring(env, argv[1]);
    if (path == NULL) {
        return argument_error(env, EMF_NIF_PATH_ERROR);
    }
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (hnsw_enter(env, argv, &h, &result)) {
        emf_nif_hnsw *w = h->ptr;
        result = ok_or_error(env, emf_hnsw_save(w->index, path));
        hnsw_leave(h);
    }
    enif_free(path);
    return result;
}

/* hnsw_stats(Index) -> {ok, #{len, memory_bytes}} */
static ERL_NIF_TERM nif_hnsw_stats(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    emf_nif_handle *h;
    ERL_NIF_TERM result;
    if (!hnsw_enter(env, argv, &h, &result)) {
        return result;
    }
    emf_nif_hnsw *w = h->ptr;
    bool normal = on_normal_scheduler();
    if (normal && hnsw_batch_running(w)) {
        /* memory_bytes reads the engine's id map, which the batch may hold for long. */
        return hnsw_go_wait(env, h, "hnsw_stats", nif_hnsw_stats, argc, argv);
    }
    size_t len = 0, bytes = 0;
    emf_status_t st = normal ? emf_hnsw_try_stats(w->index, &len, &bytes)
                             : emf_hnsw_stats(w->index, &len, &bytes);
    if (normal && st == EMF_ERR_BUSY) {
        return hnsw_go_wait(env, h, "hnsw_stats", nif_hnsw_stats, argc, argv);
    }
    if (st != EMF_OK) {
        result = status_error(env, st);
    } else {
        ERL_NIF_TERM keys[] = {atom_len, atom_memory_bytes};
        ERL_NIF_TERM values[] = {enif_make_uint64(env, len), enif_make_uint64(env, bytes)};
        result = make_ok(env, MAKE_MAP(env, keys, values));
    }
    hnsw_leave(h);
    return result;
}

/* hnsw_close(Index) -> ok: releases the index now, or once the calls using it return
 * (idempotent; later calls get {error, {closed, _}}). Dirty I/O (NIF table): it may unmap a
 * file. */
static ERL_NIF_TERM nif_hnsw_close(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    return handle_close_arg(env, argv[0], &hnsw_kind);
}

/* hnsw_indexes() -> the number of indexes of this load not freed yet. */
static ERL_NIF_TERM nif_hnsw_indexes(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    (void)argv;
    emf_nif_priv *priv = enif_priv_data(env);
    return enif_make_uint64(env,
                            atomic_load_explicit(&priv->hnsw_count, memory_order_relaxed));
}

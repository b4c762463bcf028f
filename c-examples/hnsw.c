/*
 * hnsw.c — a C11 host of the erlmcp-flow vector kernels (emf_quantize_f32, emf_dequantize_i8,
 * emf_distance_f32 / _f16, emf_cosine_distance_i8, emf_dot_i8) and HNSW index (emf_hnsw_*),
 * built against the installed header and library (`pkg-config --cflags --libs erlmcp_flow`).
 *
 *   hnsw [-n N] [DATA_DIR]
 *
 * The example (with DATA_DIR, the repository's tests/data): 5000 MiniLM embeddings read from
 * NumPy files (float16 base vectors converted to float in C, float32 queries, int32 exact
 * top-100 ids) go into an index from one contiguous float array (emf_hnsw_insert_batch on 2
 * threads, f16 originals kept for re-ranking). It reports recall@10 at ef 50 with the int8
 * distances and re-ranked (EMF_SEARCH_RERANK), and requires 0.95 for both. The index is saved,
 * the file mapped read-only with emf_hnsw_open and searched in place: the mapping answers every
 * query exactly as the live index does (same ids, same distances), and so does
 * emf_hnsw_search_batch. Then two processes map the same file at once (a forked child opens
 * it, a pipe brings its answers back) and answer the same. `-n N` uses the first N vectors
 * only (ground truth then computed here by brute force in double precision; run-tests.sh uses
 * it under valgrind).
 *
 * The ABI tests (always run): quantize / dequantize round trips; f32, f16 and int8 distances
 * against a double-precision reference computed here, for every metric (and this file's
 * half-to-float conversion against the library's over every finite half); index parameters;
 * the three metrics, with and without originals; a bitset filter; remove (absent ids:
 * EMF_ERR_NOT_FOUND) and compact; every vector of a batch inserted on 2 threads reachable by a
 * search (as on 1 thread); searches racing a writer thread's inserts answering k hits (a
 * reader thread); the emf_hnsw_try_* forms (EMF_ERR_BUSY, nothing done or written, while a
 * compaction runs or waits for a batch insert on another thread; try_compact busy while the
 * batch runs); save / open / load, a save renamed over a file that is still
 * mapped, a mapped index refusing every change (EMF_ERR_UNSUPPORTED), corrupt, truncated and
 * bit-flipped files (EMF_ERR_CORRUPT from the file's CRC32C; re-sealed with a fresh CRC32C,
 * from the structural checks behind it; never a crash), missing files (EMF_ERR_NOT_FOUND),
 * directories (EMF_ERR_IO); NaN and infinite components refused by the distance functions; and
 * bad input for every function: NULL handles, pointers and out-parameters
 * (EMF_ERR_NULL_ARGUMENT), wrong dimensions, unknown metrics, originals and flags, NaN and
 * infinite vectors, duplicate ids, misaligned arrays (EMF_ERR_INVALID_ARGUMENT), lengths past
 * EMF_MAX_INPUT_LEN and counts whose product overflows (EMF_ERR_TOO_LARGE), handles of
 * another type, freed and double-freed handles, and a huge ef
 * (checked in a child process: it must be refused, not abort). Every failure must come with an
 * error message naming the culprit; out-parameters stay untouched.
 *
 * Output: the recall and timing lines, one line per failed check on stderr, then exactly one
 * line `N passed, M failed`. Exit status: 0 when M is 0, 1 otherwise, 2 on a usage error or
 * when the loaded library has another ABI.
 */
#define _POSIX_C_SOURCE 200809L

#include <erlmcp_flow.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- checks */

#include "check.h"

/* ---------------------------------------------------------------- helpers */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Deterministic pseudo-random numbers (splitmix64). */
static uint64_t next_u64(uint64_t *state) {
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float next_float(uint64_t *state) {
    return (float)((double)(next_u64(state) >> 11) / (double)(UINT64_C(1) << 52) - 1.0);
}

static void random_vector(float *v, size_t dim, uint64_t *state) {
    for (size_t i = 0; i < dim; i++) v[i] = next_float(state);
}

static void normalize(float *v, size_t dim) {
    double s = 0;
    for (size_t i = 0; i < dim; i++) s += (double)v[i] * v[i];
    s = sqrt(s);
    for (size_t i = 0; i < dim; i++) v[i] = (float)(v[i] / s);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n == 0 ? 1 : n);
    if (p == NULL) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

/* IEEE binary16 bits to float (exact: every half is a float). */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign; /* +-0 */
        } else {         /* subnormal: man x 2^-24, normalised */
            uint32_t shift = 0;
            while ((man & 0x400u) == 0) {
                man <<= 1;
                shift++;
            }
            bits = sign | ((113u - shift) << 23) | ((man & 0x3FFu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13); /* inf, NaN */
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Double-precision references of the three metrics. */
static double ref_dot(const float *a, const float *b, size_t dim) {
    double s = 0;
    for (size_t i = 0; i < dim; i++) s += (double)a[i] * (double)b[i];
    return s;
}

static double ref_distance(uint32_t metric, const float *a, const float *b, size_t dim) {
    if (metric == EMF_METRIC_DOT) return 1.0 - ref_dot(a, b, dim);
    if (metric == EMF_METRIC_L2SQ) {
        double s = 0;
        for (size_t i = 0; i < dim; i++) {
            double d = (double)a[i] - (double)b[i];
            s += d * d;
        }
        return s;
    }
    double aa = ref_dot(a, a, dim), bb = ref_dot(b, b, dim);
    if (aa == 0 && bb == 0) return 0;
    if (aa == 0 || bb == 0) return 1;
    return 1.0 - ref_dot(a, b, dim) / sqrt(aa * bb);
}

static const char *metric_name(uint32_t metric) {
    return metric == EMF_METRIC_COSINE ? "cosine" : metric == EMF_METRIC_DOT ? "dot" : "l2sq";
}

/* The scratch directory for index files (removed at the end). */
static char g_dir[256];

static const char *path_in(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", g_dir, name);
    return buf;
}

static int write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) return -1;
    size_t n = len == 0 ? 0 : fwrite(data, 1, len, f);
    int rc = fclose(f);
    return n == len && rc == 0 ? 0 : -1;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    unsigned char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) {
            buf = xmalloc((size_t)n);
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

static size_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

/* A hit no successful search would write: proves an out-parameter was left alone. */
static const emf_hnsw_hit_t SENTINEL_HIT = {UINT64_C(0x5E471E15E471E15E), -7.0f};

static void fill_sentinel(emf_hnsw_hit_t *hits, size_t n) {
    for (size_t i = 0; i < n; i++) hits[i] = SENTINEL_HIT;
}

static int all_sentinel(const emf_hnsw_hit_t *hits, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (hits[i].id != SENTINEL_HIT.id || hits[i].distance != SENTINEL_HIT.distance) return 0;
    }
    return 1;
}

/* Same ids and bit-identical distances (padding bytes are not compared). */
static int same_hits(const emf_hnsw_hit_t *a, const emf_hnsw_hit_t *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (a[i].id != b[i].id || memcmp(&a[i].distance, &b[i].distance, sizeof(float)) != 0) {
            return 0;
        }
    }
    return 1;
}

static emf_hnsw_params_t default_params(uint32_t dim) {
    emf_hnsw_params_t p;
    memset(&p, 0, sizeof p);
    CHECK_STATUS(emf_hnsw_params_default(dim, &p), EMF_OK);
    return p;
}

static emf_hnsw_t *new_index(uint32_t dim, uint32_t metric, uint32_t originals) {
    emf_hnsw_params_t p = default_params(dim);
    p.metric = metric;
    p.originals = originals;
    emf_hnsw_t *h = NULL;
    CHECK_STATUS(emf_hnsw_new(&p, &h), EMF_OK);
    CHECK(h != NULL);
    return h;
}

/* Live vectors (SIZE_MAX when the call failed, which counts as a failed check). */
static size_t index_len(const emf_hnsw_t *h) {
    size_t len = SIZE_MAX;
    emf_status_t st = emf_hnsw_stats(h, &len, NULL);
    if (st != EMF_OK) CHECK_STATUS(st, EMF_OK);
    return len;
}

static size_t index_memory(const emf_hnsw_t *h) {
    size_t mem = 0;
    emf_status_t st = emf_hnsw_stats(h, NULL, &mem);
    if (st != EMF_OK) CHECK_STATUS(st, EMF_OK);
    return mem;
}

/* Searches with no filter; returns the number of hits (0 on failure, which counts as a failed
 * check; success counts nothing: this runs in loops). */
static size_t search(const emf_hnsw_t *h, const float *q, size_t dim, size_t k, size_t ef,
                     uint32_t flags, emf_hnsw_hit_t *hits) {
    size_t n = 0;
    emf_status_t st = emf_hnsw_search(h, q, dim, k, ef, flags, NULL, 0, hits, &n);
    if (st != EMF_OK) {
        CHECK_STATUS(st, EMF_OK);
        return 0;
    }
    return n;
}

/* ---------------------------------------------------------------- vector kernels */

static void test_quantize(void) {
    enum { DIM = 384 };
    uint64_t rng = 1;
    float x[DIM], back[DIM];
    int8_t codes[DIM];
    for (int round = 0; round < 50; round++) {
        random_vector(x, DIM, &rng);
        float mag = (float)pow(10.0, (double)(round % 9) - 4.0); /* 1e-4 .. 1e4 */
        for (size_t i = 0; i < DIM; i++) x[i] *= mag;
        float scale = -1;
        CHECK_STATUS(emf_quantize_f32(x, DIM, codes, &scale), EMF_OK);
        /* x ~= scale * code: the largest component maps to +-127, every component is within
         * half a step of its code, and dequantize gives exactly scale * code. */
        float maxabs = 0;
        int maxcode = 0, within = 1, exact = 1;
        for (size_t i = 0; i < DIM; i++) {
            if (fabsf(x[i]) > maxabs) maxabs = fabsf(x[i]);
            if (abs(codes[i]) > maxcode) maxcode = abs(codes[i]);
        }
        CHECK_STATUS(emf_dequantize_i8(codes, DIM, scale, back), EMF_OK);
        for (size_t i = 0; i < DIM; i++) {
            if (fabs((double)x[i] - (double)back[i]) > scale * 0.5 * (1 + 1e-5)) within = 0;
            if (back[i] != (float)codes[i] * scale) exact = 0;
        }
        CHECK(maxcode == 127);
        CHECK(fabs(scale - maxabs / 127.0) <= 1e-6 * scale);
        CHECK(within);
        CHECK(exact);
    }

    /* The zero vector: scale 0, codes 0. An empty vector is fine too. */
    memset(x, 0, sizeof x);
    memset(codes, 5, sizeof codes);
    float scale = -1;
    CHECK_STATUS(emf_quantize_f32(x, DIM, codes, &scale), EMF_OK);
    int zeros = 1;
    for (size_t i = 0; i < DIM; i++) zeros &= codes[i] == 0;
    CHECK(scale == 0 && zeros);
    CHECK_STATUS(emf_quantize_f32(NULL, 0, NULL, &scale), EMF_OK);
    CHECK(scale == 0);
    CHECK_STATUS(emf_dequantize_i8(NULL, 0, 1.0f, NULL), EMF_OK);

    /* Bad input: NaN / infinity refused, the codes and scale untouched. */
    random_vector(x, DIM, &rng);
    memset(codes, 5, sizeof codes);
    scale = -1;
    x[100] = NAN;
    CHECK_ERROR(emf_quantize_f32(x, DIM, codes, &scale), EMF_ERR_INVALID_ARGUMENT, "NaN");
    x[100] = -INFINITY;
    CHECK_ERROR(emf_quantize_f32(x, DIM, codes, &scale), EMF_ERR_INVALID_ARGUMENT, "infinite");
    int untouched = scale == -1;
    for (size_t i = 0; i < DIM; i++) untouched &= codes[i] == 5;
    CHECK(untouched);
    x[100] = 0.5f;
    CHECK_ERROR(emf_quantize_f32(NULL, DIM, codes, &scale), EMF_ERR_NULL_ARGUMENT, "x");
    CHECK_ERROR(emf_quantize_f32(x, DIM, NULL, &scale), EMF_ERR_NULL_ARGUMENT, "out_codes");
    CHECK_ERROR(emf_quantize_f32(x, DIM, codes, NULL), EMF_ERR_NULL_ARGUMENT, "out_scale");
    CHECK_ERROR(emf_quantize_f32(x, SIZE_MAX, codes, &scale), EMF_ERR_TOO_LARGE, "exceed");
    CHECK_ERROR(emf_dequantize_i8(NULL, DIM, 1.0f, back), EMF_ERR_NULL_ARGUMENT, "codes");
    CHECK_ERROR(emf_dequantize_i8(codes, DIM, 1.0f, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_dequantize_i8(codes, (size_t)EMF_MAX_INPUT_LEN + 1, 1.0f, back),
                EMF_ERR_TOO_LARGE, "exceed");
    /* A float array that is not 4-byte aligned is refused, not read. */
    static _Alignas(8) unsigned char raw[64];
    const float *odd = (const float *)(uintptr_t)((uintptr_t)raw + 1);
    CHECK_ERROR(emf_quantize_f32(odd, 4, codes, &scale), EMF_ERR_INVALID_ARGUMENT, "aligned");
}

static void test_distances(void) {
    enum { DIM = 384 };
    uint64_t rng = 2;
    float a[DIM], b[DIM];
    static const uint32_t metrics[] = {EMF_METRIC_COSINE, EMF_METRIC_DOT, EMF_METRIC_L2SQ};

    /* float32 against double: random vectors, scaled from 1e-3 to 1e3, and a vector with
     * itself. The kernels may sum in float: allow float rounding of the sum of |terms|. */
    double worst = 0;
    for (int round = 0; round < 40; round++) {
        random_vector(a, DIM, &rng);
        random_vector(b, DIM, &rng);
        float mag = (float)pow(10.0, (double)(round % 7) - 3.0);
        for (size_t i = 0; i < DIM; i++) b[i] *= mag;
        if (round % 10 == 9) memcpy(b, a, sizeof a);
        for (size_t m = 0; m < 3; m++) {
            double got = -42, want = ref_distance(metrics[m], a, b, DIM);
            CHECK_STATUS(emf_distance_f32(metrics[m], a, b, DIM, &got), EMF_OK);
            double size = 0; /* the sum of |terms| the kernel adds up */
            for (size_t i = 0; i < DIM; i++) {
                size += metrics[m] == EMF_METRIC_L2SQ ? ((double)a[i] - b[i]) * ((double)a[i] - b[i])
                                                     : fabs((double)a[i] * b[i]);
            }
            double tol = metrics[m] == EMF_METRIC_COSINE ? 1e-5 : 1e-5 * (1 + size);
            double err = fabs(got - want) / tol;
            if (err > worst) worst = err;
            if (!(fabs(got - want) <= tol)) {
                fprintf(stderr, "  f32 %s: %.9g, reference %.9g\n", metric_name(metrics[m]), got,
                        want);
                CHECK(!"emf_distance_f32 agrees with the double-precision reference");
            }
        }
    }
    CHECK(worst <= 1.0);

    /* Cosine of zero vectors: 1 against a non-zero vector, 0 between two zeros. */
    float z[4] = {0, 0, 0, 0}, one[4] = {1, 0, 0, 0};
    double d = -1;
    CHECK_STATUS(emf_distance_f32(EMF_METRIC_COSINE, z, one, 4, &d), EMF_OK);
    CHECK(d == 1.0);
    CHECK_STATUS(emf_distance_f32(EMF_METRIC_COSINE, z, z, 4, &d), EMF_OK);
    CHECK(d == 0.0);

    /* float16: this file's half_to_float against the library over every finite half
     * (1 - h * 1.0 is exact in double), then random half vectors against double. */
    unsigned long mismatches = 0;
    for (uint32_t h = 0; h < 0x10000u; h++) {
        if (((h >> 10) & 0x1Fu) == 0x1Fu) continue; /* inf, NaN */
        const uint16_t x[1] = {(uint16_t)h}, unit[1] = {0x3C00};
        double dd = 0;
        if (emf_distance_f16(EMF_METRIC_DOT, x, unit, 1, &dd) != EMF_OK ||
            1.0 - dd != (double)half_to_float((uint16_t)h)) {
            if (mismatches++ < 3) {
                fprintf(stderr, "  half 0x%04x: here %.10g, library %.10g\n", h,
                        (double)half_to_float((uint16_t)h), 1.0 - dd);
            }
        }
    }
    CHECK(mismatches == 0);
    CHECK(half_to_float(0x3C00) == 1.0f && half_to_float(0xC000) == -2.0f);
    CHECK(half_to_float(0x7BFF) == 65504.0f && half_to_float(0x0001) == ldexpf(1.0f, -24));
    CHECK(half_to_float(0x0400) == ldexpf(1.0f, -14) && isinf(half_to_float(0x7C00)));

    uint16_t ha[DIM], hb[DIM];
    float fa[DIM], fb[DIM];
    worst = 0;
    for (int round = 0; round < 40; round++) {
        for (size_t i = 0; i < DIM; i++) {
            /* Exponents 2^-6 .. 2^1: products and sums stay well inside half range. */
            uint64_t r = next_u64(&rng);
            ha[i] = (uint16_t)((r & 0x8000u) | ((9u + (r >> 16) % 8u) << 10) | ((r >> 32) & 0x3FFu));
            hb[i] = (uint16_t)(((r >> 1) & 0x8000u) | ((9u + (r >> 20) % 8u) << 10) |
                               ((r >> 42) & 0x3FFu));
            if (round % 10 == 9) hb[i] = ha[i];
            fa[i] = half_to_float(ha[i]);
            fb[i] = half_to_float(hb[i]);
        }
        for (size_t m = 0; m < 3; m++) {
            double got = -42, want = ref_distance(metrics[m], fa, fb, DIM);
            CHECK_STATUS(emf_distance_f16(metrics[m], ha, hb, DIM, &got), EMF_OK);
            /* Halves are exact in float and so are their products: only the summation errs, as
             * for float vectors (a kernel adding up in half precision, as simsimd's Sapphire
             * Rapids one does, is off by ~1e-4 here: the library is built without it). */
            double size = 0;
            for (size_t i = 0; i < DIM; i++) {
                size += metrics[m] == EMF_METRIC_L2SQ
                            ? ((double)fa[i] - fb[i]) * ((double)fa[i] - fb[i])
                            : fabs((double)fa[i] * fb[i]);
            }
            double tol = metrics[m] == EMF_METRIC_COSINE ? 1e-5 : 1e-5 * (1 + size);
            double err = fabs(got - want) / tol;
            if (err > worst) worst = err;
        }
    }
    CHECK(worst <= 1.0);
    if (worst > 1.0) fprintf(stderr, "  f16 distances: worst error %.3g x the tolerance\n", worst);

    /* int8: exact dot product against int64, cosine against double. */
    int8_t ca[DIM], cb[DIM];
    for (int round = 0; round < 40; round++) {
        int64_t want = 0;
        for (size_t i = 0; i < DIM; i++) {
            uint64_t r = next_u64(&rng);
            ca[i] = (int8_t)((int)(r % 255u) - 127);
            cb[i] = (int8_t)((int)((r >> 16) % 255u) - 127);
            if (round == 0) ca[i] = cb[i] = 127;
            if (round == 1) ca[i] = 127, cb[i] = -127;
            want += (int64_t)ca[i] * cb[i];
        }
        int64_t got = 0;
        CHECK_STATUS(emf_dot_i8(ca, cb, DIM, &got), EMF_OK);
        CHECK(got == want);
        double aa = 0, bb = 0;
        for (size_t i = 0; i < DIM; i++) aa += (double)ca[i] * ca[i], bb += (double)cb[i] * cb[i];
        double cos = -1;
        CHECK_STATUS(emf_cosine_distance_i8(ca, cb, DIM, &cos), EMF_OK);
        CHECK(fabs(cos - (1.0 - (double)want / sqrt(aa * bb))) <= 1e-6);
    }

    /* "The exact integer dot product" of long code vectors: 127 x 127 x dim passes INT32_MAX
     * from dim 133145 on, and must not wrap. */
    const size_t long_dim = 200000;
    int8_t *la = xmalloc(long_dim);
    memset(la, 127, long_dim);
    int64_t got = 0;
    CHECK_STATUS(emf_dot_i8(la, la, long_dim, &got), EMF_OK);
    CHECK(got == (int64_t)long_dim * 127 * 127);
    if (got != (int64_t)long_dim * 127 * 127) {
        fprintf(stderr, "  emf_dot_i8 of %zu codes of 127 with themselves: %lld, expected %lld\n",
                long_dim, (long long)got, (long long)long_dim * 127 * 127);
    }
    double cos = -1;
    CHECK_STATUS(emf_cosine_distance_i8(la, la, long_dim, &cos), EMF_OK);
    CHECK(fabs(cos) <= 1e-6);
    free(la);

    /* Bad input: NULL, unknown metric, misaligned arrays, lengths past the cap. */
    d = -42;
    int64_t i64 = -42;
    CHECK_ERROR(emf_distance_f32(EMF_METRIC_COSINE, NULL, b, 4, &d), EMF_ERR_NULL_ARGUMENT, "a");
    CHECK_ERROR(emf_distance_f32(EMF_METRIC_COSINE, a, NULL, 4, &d), EMF_ERR_NULL_ARGUMENT, "b");
    CHECK_ERROR(emf_distance_f32(EMF_METRIC_COSINE, a, b, 4, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_distance_f32(3, a, b, 4, &d), EMF_ERR_INVALID_ARGUMENT, "metric");
    CHECK_ERROR(emf_distance_f32(UINT32_MAX, a, b, 4, &d), EMF_ERR_INVALID_ARGUMENT, "metric");
    CHECK_ERROR(emf_distance_f32(EMF_METRIC_L2SQ, a, b, SIZE_MAX / 2, &d), EMF_ERR_TOO_LARGE,
                "exceed");
    CHECK_ERROR(emf_distance_f16(EMF_METRIC_COSINE, NULL, hb, 4, &d), EMF_ERR_NULL_ARGUMENT, "a");
    CHECK_ERROR(emf_distance_f16(EMF_METRIC_DOT, ha, hb, 4, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_distance_f16(7, ha, hb, 4, &d), EMF_ERR_INVALID_ARGUMENT, "metric");
    CHECK_ERROR(emf_cosine_distance_i8(NULL, cb, 4, &d), EMF_ERR_NULL_ARGUMENT, "a");
    CHECK_ERROR(emf_cosine_distance_i8(ca, cb, 4, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_cosine_distance_i8(ca, cb, SIZE_MAX, &d), EMF_ERR_TOO_LARGE, "exceed");
    CHECK_ERROR(emf_dot_i8(ca, NULL, 4, &i64), EMF_ERR_NULL_ARGUMENT, "b");
    CHECK_ERROR(emf_dot_i8(ca, cb, 4, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_dot_i8(ca, cb, (size_t)EMF_MAX_INPUT_LEN + 1, &i64), EMF_ERR_TOO_LARGE,
                "exceed");
    static _Alignas(8) unsigned char raw[64];
    const float *odd = (const float *)(uintptr_t)((uintptr_t)raw + 2);
    const uint16_t *odd16 = (const uint16_t *)(uintptr_t)((uintptr_t)raw + 1);
    CHECK_ERROR(emf_distance_f32(EMF_METRIC_COSINE, odd, a, 4, &d), EMF_ERR_INVALID_ARGUMENT,
                "aligned");
    CHECK_ERROR(emf_distance_f16(EMF_METRIC_COSINE, ha, odd16, 4, &d), EMF_ERR_INVALID_ARGUMENT,
                "aligned");
    /* NaN and infinite components: refused (a NaN would come out as any distance, 0 too). */
    float nan_a[4] = {1, 2, NAN, 4}, inf_b[4] = {1, 2, 3, INFINITY};
    const uint16_t nan_h[4] = {0x3C00, 0x7E00, 0, 0}, inf_h[4] = {0xFC00, 0, 0, 0};
    for (size_t m = 0; m < 3; m++) {
        CHECK_ERROR(emf_distance_f32(metrics[m], nan_a, a, 4, &d), EMF_ERR_INVALID_ARGUMENT, "NaN");
        CHECK_ERROR(emf_distance_f32(metrics[m], a, inf_b, 4, &d), EMF_ERR_INVALID_ARGUMENT,
                    "infinite");
        CHECK_ERROR(emf_distance_f16(metrics[m], nan_h, hb, 4, &d), EMF_ERR_INVALID_ARGUMENT, "NaN");
        CHECK_ERROR(emf_distance_f16(metrics[m], ha, inf_h, 4, &d), EMF_ERR_INVALID_ARGUMENT,
                    "infinite");
    }
    CHECK(d == -42 && i64 == -42);
    /* Empty vectors are vectors: dot 0, L2 0. */
    CHECK_STATUS(emf_distance_f32(EMF_METRIC_L2SQ, NULL, NULL, 0, &d), EMF_OK);
    CHECK(d == 0);
    CHECK_STATUS(emf_dot_i8(NULL, NULL, 0, &i64), EMF_OK);
    CHECK(i64 == 0);
}

/* ---------------------------------------------------------------- parameters */

static void test_params(void) {
    emf_hnsw_params_t p = default_params(384);
    /* The original design's: M 16, ef_construction 200, ef_search 50, cosine, no originals. */
    CHECK(p.dim == 384 && p.metric == EMF_METRIC_COSINE && p.m == 16);
    CHECK(p.ef_construction == 200 && p.ef_search == 50 && p.originals == EMF_ORIGINALS_NONE);
    CHECK_ERROR(emf_hnsw_params_default(384, NULL), EMF_ERR_NULL_ARGUMENT, "out");

    /* Every field out of range, one at a time; the out-parameter untouched. */
    static char marker;
    emf_hnsw_t *const hs = (emf_hnsw_t *)(void *)&marker;
    emf_hnsw_t *h = hs;
    struct {
        const char *needle;
        emf_hnsw_params_t p;
    } bad[10];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) bad[i].p = p;
    bad[0].needle = "dim", bad[0].p.dim = UINT32_MAX; /* 0 is valid: the first insert fixes it */
    bad[1].needle = "dim", bad[1].p.dim = 65537;
    bad[2].needle = "metric", bad[2].p.metric = 3;
    bad[3].needle = "originals", bad[3].p.originals = 3;
    bad[4].needle = "m 1", bad[4].p.m = 1;
    bad[5].needle = "m 129", bad[5].p.m = 129;
    bad[6].needle = "ef_construction", bad[6].p.ef_construction = 0;
    bad[7].needle = "ef_construction", bad[7].p.ef_construction = (1u << 20) + 1;
    bad[8].needle = "ef_search", bad[8].p.ef_search = 0;
    bad[9].needle = "ef_search", bad[9].p.ef_search = UINT32_MAX;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_ERROR(emf_hnsw_new(&bad[i].p, &h), EMF_ERR_INVALID_ARGUMENT, bad[i].needle);
    }
    CHECK_ERROR(emf_hnsw_new(NULL, &h), EMF_ERR_NULL_ARGUMENT, "params");
    CHECK_ERROR(emf_hnsw_new(&p, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK(h == hs);

    /* The bounds themselves are fine, and an index tells its parameters back. */
    emf_hnsw_params_t q = p;
    q.dim = 65536, q.m = 128, q.metric = EMF_METRIC_L2SQ, q.originals = EMF_ORIGINALS_F32;
    q.ef_construction = 1, q.ef_search = 1u << 20, q.seed = 42;
    h = NULL;
    CHECK_STATUS(emf_hnsw_new(&q, &h), EMF_OK);
    emf_hnsw_params_t back;
    memset(&back, 0, sizeof back);
    CHECK_STATUS(emf_hnsw_params(h, &back), EMF_OK);
    CHECK(back.dim == 65536 && back.m == 128 && back.metric == EMF_METRIC_L2SQ);
    CHECK(back.originals == EMF_ORIGINALS_F32 && back.ef_construction == 1);
    CHECK(back.ef_search == 1u << 20 && back.seed == 42);
    size_t len = 99, mem = 0;
    CHECK_STATUS(emf_hnsw_stats(h, &len, &mem), EMF_OK);
    CHECK(len == 0);
    CHECK_STATUS(emf_hnsw_stats(h, NULL, NULL), EMF_OK);
    CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
}

/* ---------------------------------------------------------------- small indexes */

enum { SMALL_N = 300, SMALL_DIM = 16 };

/* SMALL_N random vectors (unit length for the dot metric, which ranks by a.b). */
static void small_vectors(float *v, uint32_t metric, uint64_t seed) {
    for (size_t i = 0; i < SMALL_N; i++) {
        random_vector(v + i * SMALL_DIM, SMALL_DIM, &seed);
        if (metric == EMF_METRIC_DOT) normalize(v + i * SMALL_DIM, SMALL_DIM);
    }
}

/* The true nearest of `q` among the vectors whose id passes `allowed` (NULL: all). */
static size_t brute_nearest(uint32_t metric, const float *v, const float *q,
                            const uint64_t *allowed) {
    size_t best = SIZE_MAX;
    double bd = INFINITY;
    for (size_t i = 0; i < SMALL_N; i++) {
        if (allowed != NULL && !(allowed[i / 64] >> (i % 64) & 1)) continue;
        double d = ref_distance(metric, q, v + i * SMALL_DIM, SMALL_DIM);
        if (d < bd) bd = d, best = i;
    }
    return best;
}

static void test_metrics(void) {
    static const uint32_t metrics[] = {EMF_METRIC_COSINE, EMF_METRIC_DOT, EMF_METRIC_L2SQ};
    static const uint32_t originals[] = {EMF_ORIGINALS_NONE, EMF_ORIGINALS_F16, EMF_ORIGINALS_F32};
    float *v = xmalloc(sizeof(float) * SMALL_N * SMALL_DIM);
    for (size_t m = 0; m < 3; m++) {
        for (size_t o = 0; o < 3; o++) {
            small_vectors(v, metrics[m], 10 + m);
            emf_hnsw_t *h = new_index(SMALL_DIM, metrics[m], originals[o]);
            /* Half one at a time, half in a batch. */
            for (uint64_t i = 0; i < SMALL_N / 2; i++) {
                emf_status_t st = emf_hnsw_insert(h, i, v + i * SMALL_DIM, SMALL_DIM);
                if (st != EMF_OK) CHECK_STATUS(st, EMF_OK);
            }
            uint64_t ids[SMALL_N / 2];
            for (size_t i = 0; i < SMALL_N / 2; i++) ids[i] = SMALL_N / 2 + i;
            CHECK_STATUS(emf_hnsw_insert_batch(h, ids, SMALL_N / 2, v + SMALL_N / 2 * SMALL_DIM,
                                               SMALL_DIM, 1),
                         EMF_OK);
            CHECK(index_len(h) == SMALL_N);

            /* Every vector finds itself first; distances come sorted; the int8 estimate is close
             * to the exact distance, and re-ranked with f32 originals it is exact (f16: the
             * query rounded to half). Without originals the flag changes nothing. */
            unsigned long self = 0, sorted = 0, near = 0, exact = 0, same = 0;
            double worst_est = 0;
            for (size_t i = 0; i < SMALL_N; i++) {
                const float *q = v + i * SMALL_DIM;
                emf_hnsw_hit_t hits[10], rr[10];
                size_t n = search(h, q, SMALL_DIM, 10, 0, 0, hits);
                size_t nr = search(h, q, SMALL_DIM, 10, 0, EMF_SEARCH_RERANK, rr);
                self += n > 0 && hits[0].id == i;
                int ok = n == 10;
                for (size_t j = 1; j < n; j++) ok &= hits[j - 1].distance <= hits[j].distance;
                for (size_t j = 1; j < nr; j++) ok &= rr[j - 1].distance <= rr[j].distance;
                sorted += ok && nr == 10;
                double scale = metrics[m] == EMF_METRIC_L2SQ ? 8.0 : 1.0; /* |a-b|^2 up to ~30 */
                int close = 1, ex = 1;
                for (size_t j = 0; j < n; j++) {
                    double want = ref_distance(metrics[m], q, v + hits[j].id * SMALL_DIM, SMALL_DIM);
                    double e = fabs(hits[j].distance - want) / scale;
                    if (e > worst_est) worst_est = e;
                    close &= e <= 0.05;
                }
                for (size_t j = 0; j < nr; j++) {
                    double want = ref_distance(metrics[m], q, v + rr[j].id * SMALL_DIM, SMALL_DIM);
                    double tol = originals[o] == EMF_ORIGINALS_F32 ? 1e-5 : 2e-3;
                    ex &= fabs(rr[j].distance - want) <= tol * scale;
                }
                near += close;
                exact += ex;
                same += n == nr && same_hits(hits, rr, n);
            }
            if (self < SMALL_N || sorted < SMALL_N || near < SMALL_N) {
                fprintf(stderr, "  %s, originals %u: self first %lu, sorted %lu, estimate close %lu"
                                " of %d (worst error %.4f)\n",
                        metric_name(metrics[m]), originals[o], self, sorted, near, SMALL_N,
                        worst_est);
            }
            CHECK(self == SMALL_N);
            CHECK(sorted == SMALL_N);
            CHECK(near == SMALL_N);
            if (originals[o] == EMF_ORIGINALS_NONE) {
                CHECK(same == SMALL_N);
            } else {
                CHECK(exact == SMALL_N);
            }

            /* k larger than the index: every live vector once. */
            emf_hnsw_hit_t all[SMALL_N + 5];
            size_t n = search(h, v, SMALL_DIM, SMALL_N + 5, SMALL_N + 5, 0, all);
            unsigned char seen[SMALL_N];
            memset(seen, 0, sizeof seen);
            int once = n == SMALL_N;
            for (size_t j = 0; j < n; j++) {
                once &= all[j].id < SMALL_N && !seen[all[j].id];
                if (all[j].id < SMALL_N) seen[all[j].id] = 1;
            }
            CHECK(once);
            CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
        }
    }
    free(v);
}

static void test_filter(void) {
    float *v = xmalloc(sizeof(float) * SMALL_N * SMALL_DIM);
    small_vectors(v, EMF_METRIC_COSINE, 20);
    emf_hnsw_t *h = new_index(SMALL_DIM, EMF_METRIC_COSINE, EMF_ORIGINALS_F32);
    uint64_t ids[SMALL_N];
    for (size_t i = 0; i < SMALL_N; i++) ids[i] = i;
    CHECK_STATUS(emf_hnsw_insert_batch(h, ids, SMALL_N, v, SMALL_DIM, 1), EMF_OK);

    /* Only ids whose bit is set (id i: bit i % 64 of word i / 64): every third id. Each hit is
     * allowed and the best one is the true nearest allowed vector. */
    enum { WORDS = (SMALL_N + 63) / 64 };
    uint64_t third[WORDS] = {0};
    for (size_t i = 0; i < SMALL_N; i += 3) third[i / 64] |= UINT64_C(1) << (i % 64);
    unsigned long allowed = 0, best = 0, full = 0;
    uint64_t rng = 21;
    for (int t = 0; t < 100; t++) {
        float q[SMALL_DIM];
        random_vector(q, SMALL_DIM, &rng);
        emf_hnsw_hit_t hits[10];
        size_t n = 0;
        CHECK_STATUS(emf_hnsw_search(h, q, SMALL_DIM, 10, 100, EMF_SEARCH_RERANK, third, WORDS,
                                     hits, &n),
                     EMF_OK);
        int ok = 1;
        for (size_t j = 0; j < n; j++) ok &= hits[j].id % 3 == 0;
        allowed += ok;
        full += n == 10;
        best += n > 0 && hits[0].id == brute_nearest(EMF_METRIC_COSINE, v, q, third);
    }
    CHECK(allowed == 100 && full == 100);
    CHECK(best >= 99);

    /* One bit: exactly that vector, even from far away. No bits: nothing. */
    uint64_t one[WORDS] = {0};
    one[257 / 64] = UINT64_C(1) << (257 % 64);
    emf_hnsw_hit_t hits[10];
    size_t n = 99;
    CHECK_STATUS(emf_hnsw_search(h, v, SMALL_DIM, 10, 0, 0, one, WORDS, hits, &n), EMF_OK);
    CHECK(n == 1 && hits[0].id == 257);
    uint64_t none[WORDS] = {0};
    n = 99;
    CHECK_STATUS(emf_hnsw_search(h, v, SMALL_DIM, 10, 0, 0, none, WORDS, hits, &n), EMF_OK);
    CHECK(n == 0);
    /* A bitset shorter than the ids: ids past its end are excluded. One word: ids 0..63. */
    const uint64_t low = ~UINT64_C(0);
    n = 0;
    CHECK_STATUS(emf_hnsw_search(h, v + 200 * SMALL_DIM, SMALL_DIM, 10, 0, 0, &low, 1, hits, &n),
                 EMF_OK);
    int in_range = n == 10;
    for (size_t j = 0; j < n; j++) in_range &= hits[j].id < 64;
    CHECK(in_range);
    /* filter_words 0 means no filter (the pointer is not read). */
    n = 0;
    CHECK_STATUS(emf_hnsw_search(h, v + 200 * SMALL_DIM, SMALL_DIM, 10, 0, 0, NULL, 0, hits, &n),
                 EMF_OK);
    CHECK(n == 10 && hits[0].id == 200);

    /* search_batch with the same filter answers like one search per query. */
    emf_hnsw_hit_t batch[8 * 5], loop[5];
    size_t counts[8];
    CHECK_STATUS(emf_hnsw_search_batch(h, v, 8, SMALL_DIM, 5, 0, 0, third, WORDS, 3, batch, counts),
                 EMF_OK);
    unsigned long equal = 0;
    for (size_t qi = 0; qi < 8; qi++) {
        size_t ln = 0;
        CHECK_STATUS(emf_hnsw_search(h, v + qi * SMALL_DIM, SMALL_DIM, 5, 0, 0, third, WORDS, loop,
                                     &ln),
                     EMF_OK);
        equal += counts[qi] == ln && same_hits(batch + qi * 5, loop, ln);
    }
    CHECK(equal == 8);
    CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
    free(v);
}

static void test_remove_compact(void) {
    float *v = xmalloc(sizeof(float) * SMALL_N * SMALL_DIM);
    small_vectors(v, EMF_METRIC_L2SQ, 30);
    emf_hnsw_t *h = new_index(SMALL_DIM, EMF_METRIC_L2SQ, EMF_ORIGINALS_NONE);
    uint64_t ids[SMALL_N];
    for (size_t i = 0; i < SMALL_N; i++) ids[i] = 1000 + 7 * i; /* any u64 will do */
    CHECK_STATUS(emf_hnsw_insert_batch(h, ids, SMALL_N, v, SMALL_DIM, 1), EMF_OK);
    size_t mem_full = index_memory(h);

    /* Remove every other vector: never returned again; a second remove is NOT_FOUND. */
    for (size_t i = 0; i < SMALL_N; i += 2) {
        emf_status_t st = emf_hnsw_remove(h, ids[i]);
        if (st != EMF_OK) CHECK_STATUS(st, EMF_OK);
    }
    CHECK(index_len(h) == SMALL_N / 2);
    CHECK_ERROR(emf_hnsw_remove(h, ids[0]), EMF_ERR_NOT_FOUND, "1000");
    CHECK_ERROR(emf_hnsw_remove(h, 999), EMF_ERR_NOT_FOUND, "999");
    unsigned long clean = 0, self = 0;
    for (size_t i = 0; i < SMALL_N; i++) {
        emf_hnsw_hit_t hits[10];
        size_t n = search(h, v + i * SMALL_DIM, SMALL_DIM, 10, 0, 0, hits);
        int ok = n == 10;
        for (size_t j = 0; j < n; j++) ok &= (hits[j].id - 1000) / 7 % 2 == 1;
        clean += ok;
        if (i % 2 == 1) self += n > 0 && hits[0].id == ids[i];
    }
    CHECK(clean == SMALL_N);
    CHECK(self == SMALL_N / 2);

    /* Compact: memory comes back, the live vectors stay and are still found. */
    CHECK_STATUS(emf_hnsw_compact(h), EMF_OK);
    CHECK(index_len(h) == SMALL_N / 2);
    size_t mem_compact = index_memory(h);
    CHECK(mem_compact < mem_full);
    self = 0;
    for (size_t i = 1; i < SMALL_N; i += 2) {
        emf_hnsw_hit_t hits[1];
        self += search(h, v + i * SMALL_DIM, SMALL_DIM, 1, 0, 0, hits) == 1 && hits[0].id == ids[i];
    }
    CHECK(self == SMALL_N / 2);
    CHECK_ERROR(emf_hnsw_remove(h, ids[0]), EMF_ERR_NOT_FOUND, "not in the index");

    /* A removed id can be inserted again (with another vector). */
    CHECK_STATUS(emf_hnsw_insert(h, ids[0], v + 1 * SMALL_DIM, SMALL_DIM), EMF_OK);
    emf_hnsw_hit_t two[2];
    CHECK(search(h, v + 1 * SMALL_DIM, SMALL_DIM, 2, 0, 0, two) == 2);
    CHECK((two[0].id == ids[0] && two[1].id == ids[1]) ||
          (two[0].id == ids[1] && two[1].id == ids[0]));

    /* Remove everything: searches find nothing; compact an empty index; insert again. */
    CHECK_STATUS(emf_hnsw_remove(h, ids[0]), EMF_OK);
    for (size_t i = 1; i < SMALL_N; i += 2) {
        emf_status_t st = emf_hnsw_remove(h, ids[i]);
        if (st != EMF_OK) CHECK_STATUS(st, EMF_OK);
    }
    CHECK(index_len(h) == 0);
    emf_hnsw_hit_t hits[4];
    size_t n = 99;
    CHECK_STATUS(emf_hnsw_search(h, v, SMALL_DIM, 4, 0, 0, NULL, 0, hits, &n), EMF_OK);
    CHECK(n == 0);
    CHECK_STATUS(emf_hnsw_compact(h), EMF_OK);
    CHECK_STATUS(emf_hnsw_compact(h), EMF_OK);
    CHECK(index_len(h) == 0 && index_memory(h) < mem_compact);
    CHECK_STATUS(emf_hnsw_insert(h, 5, v, SMALL_DIM), EMF_OK);
    CHECK(search(h, v + 3 * SMALL_DIM, SMALL_DIM, 4, 0, 0, hits) == 1 && hits[0].id == 5);
    CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
    free(v);
}

/* Every vector of a batch built on several threads must be reachable: a search that may keep
 * every node (k = ef = n) returns all of them, and each vector's own query finds it first.
 * Built on one thread, that always holds; built on 2, no build may lose a vector. */
static void test_concurrent_build(int builds) {
    float *v = xmalloc(sizeof(float) * SMALL_N * SMALL_DIM);
    uint64_t ids[SMALL_N];
    for (size_t i = 0; i < SMALL_N; i++) ids[i] = i;
    emf_hnsw_hit_t all[SMALL_N + 5];
    for (uint32_t threads = 1; threads <= 2; threads++) {
        int losing = 0;
        size_t lost = 0, missed = 0;
        for (int b = 0; b < builds; b++) {
            small_vectors(v, EMF_METRIC_COSINE, 1000 + (uint64_t)b);
            emf_hnsw_t *h = new_index(SMALL_DIM, EMF_METRIC_COSINE, EMF_ORIGINALS_NONE);
            CHECK_STATUS(emf_hnsw_insert_batch(h, ids, SMALL_N, v, SMALL_DIM, threads), EMF_OK);
            size_t n = search(h, v, SMALL_DIM, SMALL_N + 5, SMALL_N + 5, 0, all);
            for (size_t i = 0; i < SMALL_N; i++) {
                emf_hnsw_hit_t first[1];
                missed += search(h, v + i * SMALL_DIM, SMALL_DIM, 1, 0, 0, first) != 1 ||
                          first[0].id != i;
            }
            if (n < SMALL_N) losing++, lost += SMALL_N - n;
            CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
        }
        if (losing > 0 || missed > 0) {
            fprintf(stderr, "  insert_batch on %u thread(s): %d of %d builds of %d vectors left %zu "
                            "unreachable; %zu vectors not found by their own query\n",
                    threads, losing, builds, SMALL_N, lost, missed);
        }
        CHECK(losing == 0 && "no vector of a concurrent batch is unreachable");
        CHECK(missed == 0);
    }
    free(v);
}

/* Searches while another thread inserts (documented as fine: "inserts, removals and searches
 * may run on any threads at once"). With at least k vectors live all along, every search must
 * answer k hits, closest first. */
typedef struct {
    const emf_hnsw_t *index;
    const float *queries;
    size_t nq;
    atomic_int done; /* set by the writer when it is through */
    atomic_ulong tried; /* searches made so far (answered or not): the writer paces itself on it */
    unsigned long searches, short_answers, unsorted, errors, min_hits; /* the reader's */
} search_race_t;

static void *race_reader(void *arg) {
    search_race_t *r = arg;
    emf_hnsw_hit_t hits[10];
    size_t i = 0;
    while (!atomic_load_explicit(&r->done, memory_order_acquire)) {
        size_t n = 0;
        atomic_fetch_add_explicit(&r->tried, 1, memory_order_release);
        if (emf_hnsw_search(r->index, r->queries + (i++ % r->nq) * SMALL_DIM, SMALL_DIM, 10, 0, 0,
                            NULL, 0, hits, &n) != EMF_OK) {
            r->errors++;
            continue;
        }
        r->searches++;
        if (n < 10) r->short_answers++;
        if (n < r->min_hits) r->min_hits = n;
        for (size_t j = 1; j < n; j++) {
            if (hits[j - 1].distance > hits[j].distance) {
                r->unsorted++;
                break;
            }
        }
    }
    return NULL;
}

static void test_search_during_insert(int rounds) {
    enum { START = 50, ADDED = 1500 };
    float *v = xmalloc(sizeof(float) * (START + ADDED) * SMALL_DIM);
    uint64_t rng = 60;
    random_vector(v, (START + ADDED) * SMALL_DIM, &rng);
    unsigned long searches = 0, short_answers = 0, unsorted = 0, errors = 0, min_hits = 10;
    for (int round = 0; round < rounds; round++) {
        emf_hnsw_t *h = new_index(SMALL_DIM, EMF_METRIC_COSINE, EMF_ORIGINALS_NONE);
        for (uint64_t i = 0; i < START; i++) {
            emf_status_t st = emf_hnsw_insert(h, i, v + i * SMALL_DIM, SMALL_DIM);
            if (st != EMF_OK) CHECK_STATUS(st, EMF_OK);
        }
        search_race_t r = {.index = h, .queries = v, .nq = START, .min_hits = 10};
        atomic_init(&r.done, 0);
        atomic_init(&r.tried, 0);
        pthread_t reader;
        if (pthread_create(&reader, NULL, race_reader, &r) != 0) {
            CHECK(!"pthread_create");
            emf_hnsw_free(h);
            break;
        }
        unsigned long seen = 0;
        for (uint64_t i = START; i < START + ADDED; i++) { /* one writer, one vector at a time */
            emf_status_t st = emf_hnsw_insert(h, i, v + i * SMALL_DIM, SMALL_DIM);
            if (st != EMF_OK) CHECK_STATUS(st, EMF_OK);
            /* Every 64 inserts, wait until the reader has started another search (it searches
             * until `done`, so it always does): searches really interleave with the inserts on
             * any scheduler, also under valgrind, which runs one thread at a time. */
            if (i % 64 == 0) {
                while (atomic_load_explicit(&r.tried, memory_order_acquire) == seen) sched_yield();
                seen = atomic_load_explicit(&r.tried, memory_order_acquire);
            }
        }
        atomic_store_explicit(&r.done, 1, memory_order_release);
        pthread_join(reader, NULL);
        searches += r.searches, short_answers += r.short_answers, unsorted += r.unsorted;
        errors += r.errors;
        if (r.min_hits < min_hits) min_hits = r.min_hits;
        CHECK(index_len(h) == START + ADDED);
        CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
    }
    if (short_answers > 0 || unsorted > 0 || errors > 0) {
        fprintf(stderr, "  %lu searches racing inserts into an index of %d+ vectors: %lu answered "
                        "fewer than k = 10 hits (as few as %lu), %lu unsorted, %lu errors\n",
                searches, START, short_answers, min_hits, unsorted, errors);
    }
    CHECK(searches > 0);
    CHECK(short_answers == 0 && "a search racing an insert answers k hits");
    CHECK(unsorted == 0 && errors == 0);
    free(v);
}

/* The emf_hnsw_try_* forms never wait: where the plain form would wait for a compaction (one
 * that runs, or waits for the calls in progress), they answer EMF_ERR_BUSY having done and
 * written nothing; emf_hnsw_try_compact answers EMF_ERR_BUSY while any other call runs. A
 * batch insert on another thread is the call in progress: try_compact is busy while it runs;
 * then a blocking emf_hnsw_compact on a third thread waits for it, and meanwhile the read-side
 * try forms are busy (outputs untouched) or succeed, never anything else. Both kinds of BUSY
 * must be seen within `rounds` rounds (the batch is long enough that they always are). */
typedef struct {
    emf_hnsw_t *index;
    const uint64_t *ids;
    const float *vs;
    size_t n;
    atomic_int started, done;
    emf_status_t st;
} try_batch_t;

static void *try_batch_job(void *arg) {
    try_batch_t *j = arg;
    atomic_store_explicit(&j->started, 1, memory_order_release);
    j->st = emf_hnsw_insert_batch(j->index, j->ids, j->n, j->vs, SMALL_DIM, 1);
    atomic_store_explicit(&j->done, 1, memory_order_release);
    return NULL;
}

typedef struct {
    emf_hnsw_t *index;
    atomic_int done;
    emf_status_t st;
} try_compact_t;

static void *try_compact_job(void *arg) {
    try_compact_t *j = arg;
    j->st = emf_hnsw_compact(j->index);
    atomic_store_explicit(&j->done, 1, memory_order_release);
    return NULL;
}

static void test_try_forms(size_t batch, int rounds) {
    float *v = xmalloc(sizeof(float) * (batch + 1) * SMALL_DIM);
    uint64_t *ids = xmalloc(sizeof(uint64_t) * batch);
    uint64_t rng = 70;
    random_vector(v, (batch + 1) * SMALL_DIM, &rng);
    for (size_t i = 0; i < batch; i++) ids[i] = i;
    const float *probe = v + batch * SMALL_DIM; /* id `batch`, inserted first */

    /* Nothing else running: every try form does its work. */
    emf_hnsw_t *h = new_index(SMALL_DIM, EMF_METRIC_COSINE, EMF_ORIGINALS_NONE);
    CHECK_STATUS(emf_hnsw_try_insert(h, 1, v, SMALL_DIM), EMF_OK);
    CHECK_STATUS(emf_hnsw_try_insert(h, 2, v + SMALL_DIM, SMALL_DIM), EMF_OK);
    CHECK_ERROR(emf_hnsw_try_insert(h, 2, v, SMALL_DIM), EMF_ERR_INVALID_ARGUMENT, "2");
    emf_hnsw_hit_t hits[2];
    size_t n = 0, len = 0;
    CHECK_STATUS(emf_hnsw_try_search(h, v, SMALL_DIM, 2, 0, 0, NULL, 0, hits, &n), EMF_OK);
    CHECK(n == 2 && hits[0].id == 1);
    CHECK_STATUS(emf_hnsw_try_remove(h, 1), EMF_OK);
    CHECK_ERROR(emf_hnsw_try_remove(h, 1), EMF_ERR_NOT_FOUND, "1");
    CHECK_STATUS(emf_hnsw_try_stats(h, &len, NULL), EMF_OK);
    CHECK(len == 1);
    CHECK_STATUS(emf_hnsw_try_compact(h), EMF_OK);
    CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
    CHECK_ERROR(emf_hnsw_try_compact(NULL), EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_ERROR(emf_hnsw_try_compact(h), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_try_stats(NULL, &len, NULL), EMF_ERR_NULL_ARGUMENT, "index");

    unsigned long compact_busy = 0, read_busy = 0, read_ok = 0, wrong = 0, touched = 0;
    for (int round = 0; round < rounds && (compact_busy == 0 || read_busy == 0); round++) {
        h = new_index(SMALL_DIM, EMF_METRIC_COSINE, EMF_ORIGINALS_NONE);
        CHECK_STATUS(emf_hnsw_insert(h, batch, probe, SMALL_DIM), EMF_OK);
        try_batch_t b = {.index = h, .ids = ids, .vs = v, .n = batch};
        atomic_init(&b.started, 0);
        atomic_init(&b.done, 0);
        try_compact_t c = {.index = h};
        atomic_init(&c.done, 0);
        pthread_t bt, ct;
        if (pthread_create(&bt, NULL, try_batch_job, &b) != 0) {
            CHECK(!"pthread_create");
            emf_hnsw_free(h);
            break;
        }
        while (!atomic_load_explicit(&b.started, memory_order_acquire)) sched_yield();
        /* Until the batch is inside the index, try_compact may still succeed (nothing to
         * reclaim); once it is, try_compact is busy. */
        int busy = 0;
        while (!busy && !atomic_load_explicit(&b.done, memory_order_acquire)) {
            emf_status_t st = emf_hnsw_try_compact(h);
            busy = st == EMF_ERR_BUSY;
            if (!busy && st != EMF_OK) CHECK_STATUS(st, EMF_OK);
        }
        compact_busy += busy;
        int compacting = busy && pthread_create(&ct, NULL, try_compact_job, &c) == 0;
        uint64_t next = batch + 1;
        while (compacting && !atomic_load_explicit(&c.done, memory_order_acquire)) {
            emf_hnsw_hit_t got[2] = {SENTINEL_HIT, SENTINEL_HIT};
            size_t got_n = SIZE_MAX, got_len = SIZE_MAX;
            emf_status_t s1 = emf_hnsw_try_search(h, probe, SMALL_DIM, 2, 0, 0, NULL, 0, got,
                                                  &got_n);
            emf_status_t s2 = emf_hnsw_try_stats(h, &got_len, NULL);
            emf_status_t s3 = emf_hnsw_try_insert(h, next, probe, SMALL_DIM);
            emf_status_t s4 = s3 == EMF_OK ? emf_hnsw_try_remove(h, next) : EMF_OK;
            if (s3 == EMF_OK && s4 == EMF_ERR_BUSY) {
                /* The blocking form waits for the compaction, then succeeds. */
                CHECK_STATUS(emf_hnsw_remove(h, next), EMF_OK);
            }
            next += s3 == EMF_OK;
            emf_status_t all[] = {s1, s2, s3, s4};
            for (size_t i = 0; i < (s3 == EMF_OK ? 4u : 3u); i++) {
                if (all[i] == EMF_ERR_BUSY) read_busy++;
                else if (all[i] == EMF_OK) read_ok++;
                else wrong++;
            }
            if (s1 == EMF_ERR_BUSY && (got_n != SIZE_MAX || !all_sentinel(got, 2))) touched++;
            if (s2 == EMF_ERR_BUSY && got_len != SIZE_MAX) touched++;
            if (s1 == EMF_OK && (got_n == 0 || got[0].id != batch)) wrong++;
        }
        pthread_join(bt, NULL);
        CHECK_STATUS(b.st, EMF_OK);
        if (compacting) {
            pthread_join(ct, NULL);
            CHECK_STATUS(c.st, EMF_OK);
        }
        CHECK(index_len(h) == batch + 1);
        CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
    }
    printf("try forms: try_compact busy during a batch insert in %lu round(s); read-side try "
           "forms %lu busy, %lu done while a compaction waited or ran\n",
           compact_busy, read_busy, read_ok);
    CHECK(compact_busy > 0 && "emf_hnsw_try_compact is busy while a batch insert runs");
    CHECK(read_busy > 0 && "the read-side try forms are busy while a compaction waits");
    CHECK(wrong == 0 && "a try form answers EMF_OK (right) or EMF_ERR_BUSY, nothing else");
    CHECK(touched == 0 && "a busy try form writes nothing");
    free(ids);
    free(v);
}

/* ---------------------------------------------------------------- bad input */

/* The calls of the huge-ef child, in order. */
static const char *const HUGE_EF_STEPS[] = {
    "emf_hnsw_search with ef 2^40",       "emf_hnsw_search with ef SIZE_MAX / 2",
    "emf_hnsw_search with ef SIZE_MAX",   "emf_hnsw_search_batch with ef 2^40",
};

/* Child: a huge ef must be refused (EMF_ERR_INVALID_ARGUMENT or EMF_ERR_TOO_LARGE, with a
 * message) or clamped (EMF_OK), not abort the process by trying to allocate for it. Runs under
 * an address-space limit of 1 GiB more than the child uses, so that a library that tries anyway
 * fails to allocate instead of exhausting the machine. Before each call it writes the call's
 * number to `step_fd`, so that the parent can name the call that killed it. Exit 0 when every
 * call answered acceptably, 20 + the call's number otherwise. */
static int huge_ef_child(int step_fd) {
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%ld", &pages) != 1) pages = 0;
        fclose(f);
    }
    if (pages > 0) {
        struct rlimit rl;
        rl.rlim_cur = rl.rlim_max =
            (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + ((rlim_t)1 << 30);
        setrlimit(RLIMIT_AS, &rl);
    }
    emf_hnsw_params_t p;
    emf_hnsw_t *h = NULL;
    if (emf_hnsw_params_default(8, &p) != EMF_OK || emf_hnsw_new(&p, &h) != EMF_OK) return 10;
    float v[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    for (uint64_t i = 0; i < 20; i++) {
        v[i % 8] += 0.5f;
        if (emf_hnsw_insert(h, i, v, 8) != EMF_OK) return 11;
    }
    static const size_t efs[] = {(size_t)1 << 40, SIZE_MAX / 2, SIZE_MAX, (size_t)1 << 40};
    int code = 0;
    for (unsigned char step = 0; step < 4 && code == 0; step++) {
        if (write(step_fd, &step, 1) != 1) return 12;
        emf_hnsw_hit_t hits[4];
        size_t n = 0;
        emf_status_t st =
            step < 3 ? emf_hnsw_search(h, v, 8, 4, efs[step], 0, NULL, 0, hits, &n)
                     : emf_hnsw_search_batch(h, v, 1, 8, 4, efs[step], 0, NULL, 0, 1, hits, &n);
        int refused = st == EMF_ERR_INVALID_ARGUMENT || st == EMF_ERR_TOO_LARGE;
        if (!(st == EMF_OK || (refused && last_error()[0] != '\0'))) {
            fprintf(stderr, "  huge-ef child: %s: %s (%s)\n", HUGE_EF_STEPS[step],
                    emf_status_name(st), last_error());
            code = 20 + step;
        }
    }
    emf_hnsw_free(h);
    return code;
}

static void test_huge_ef(void) {
    int steps[2];
    if (pipe(steps) != 0) {
        CHECK(!"pipe");
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(steps[0]);
        int code = huge_ef_child(steps[1]);
        fflush(stderr);
        _exit(code);
    }
    close(steps[1]);
    CHECK(pid > 0);
    unsigned char step = 0, last = 255;
    while (pid > 0 && read(steps[0], &step, 1) == 1) last = step;
    close(steps[0]);
    if (pid <= 0) return;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) break;
    }
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && WIFSIGNALED(status)) {
        fprintf(stderr, "  huge-ef child: killed by signal %d in %s\n", WTERMSIG(status),
                last < 4 ? HUGE_EF_STEPS[last] : "its set-up");
    } else if (!ok) {
        fprintf(stderr, "  huge-ef child: exit status %d\n", WEXITSTATUS(status));
    }
    CHECK(ok && "a huge ef is refused or clamped, not an abort");
}

static void test_bad_input(void) {
    enum { DIM = 8 };
    emf_hnsw_t *h = new_index(DIM, EMF_METRIC_COSINE, EMF_ORIGINALS_NONE);
    float v[4 * DIM];
    uint64_t rng = 40;
    random_vector(v, 4 * DIM, &rng);
    const uint64_t ids[4] = {1, 2, 3, 4};
    CHECK_STATUS(emf_hnsw_insert_batch(h, ids, 4, v, DIM, 2), EMF_OK);
    emf_hnsw_hit_t hits[16]; /* room for every call's k (x nq) */
    size_t n = 777, counts[4] = {777, 777, 777, 777};
    fill_sentinel(hits, 16);
    emf_hnsw_params_t p;
    memset(&p, 0xAB, sizeof p);
    size_t len = 777, mem = 777;
    const uint64_t filter[1] = {~UINT64_C(0)};

    /* NULL handle: every function that takes one. */
    CHECK_ERROR(emf_hnsw_params(NULL, &p), EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_ERROR(emf_hnsw_insert(NULL, 9, v, DIM), EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_ERROR(emf_hnsw_insert_batch(NULL, ids, 4, v, DIM, 1), EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_ERROR(emf_hnsw_search(NULL, v, DIM, 4, 0, 0, NULL, 0, hits, &n), EMF_ERR_NULL_ARGUMENT,
                "index");
    CHECK_ERROR(emf_hnsw_search_batch(NULL, v, 4, DIM, 4, 0, 0, NULL, 0, 1, hits, counts),
                EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_ERROR(emf_hnsw_remove(NULL, 1), EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_ERROR(emf_hnsw_compact(NULL), EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_ERROR(emf_hnsw_save(NULL, "/nonexistent/x"), EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_ERROR(emf_hnsw_stats(NULL, &len, &mem), EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_STATUS(emf_hnsw_free(NULL), EMF_OK);
    /* ... also when there is nothing to search (no query, or k 0): a NULL handle is bad input
     * whatever the sizes (emf_hnsw_search refuses it; emf_hnsw_search_batch must too). */
    CHECK_ERROR(emf_hnsw_search(NULL, v, DIM, 0, 0, 0, NULL, 0, hits, &n), EMF_ERR_NULL_ARGUMENT,
                "index");
    CHECK_ERROR(emf_hnsw_search_batch(NULL, v, 4, DIM, 0, 0, 0, NULL, 0, 1, hits, counts),
                EMF_ERR_NULL_ARGUMENT, "index");
    CHECK_ERROR(emf_hnsw_search_batch(NULL, NULL, 0, DIM, 4, 0, 0, NULL, 0, 1, hits, counts),
                EMF_ERR_NULL_ARGUMENT, "index");

    /* NULL pointers and out-parameters. */
    CHECK_ERROR(emf_hnsw_params(h, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_hnsw_insert(h, 9, NULL, DIM), EMF_ERR_NULL_ARGUMENT, "vector");
    CHECK_ERROR(emf_hnsw_insert_batch(h, NULL, 4, v, DIM, 1), EMF_ERR_NULL_ARGUMENT, "ids");
    CHECK_ERROR(emf_hnsw_insert_batch(h, ids, 4, NULL, DIM, 1), EMF_ERR_NULL_ARGUMENT, "vectors");
    CHECK_ERROR(emf_hnsw_search(h, NULL, DIM, 4, 0, 0, NULL, 0, hits, &n), EMF_ERR_NULL_ARGUMENT,
                "query");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 4, 0, 0, NULL, 0, NULL, &n), EMF_ERR_NULL_ARGUMENT,
                "out_hits");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 4, 0, 0, NULL, 0, hits, NULL), EMF_ERR_NULL_ARGUMENT,
                "out_count");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 4, 0, 0, NULL, 1, hits, &n), EMF_ERR_NULL_ARGUMENT,
                "filter");
    CHECK_ERROR(emf_hnsw_search_batch(h, NULL, 4, DIM, 4, 0, 0, NULL, 0, 1, hits, counts),
                EMF_ERR_NULL_ARGUMENT, "queries");
    CHECK_ERROR(emf_hnsw_search_batch(h, v, 1, DIM, 4, 0, 0, NULL, 0, 1, NULL, counts),
                EMF_ERR_NULL_ARGUMENT, "out_hits");
    CHECK_ERROR(emf_hnsw_search_batch(h, v, 1, DIM, 4, 0, 0, NULL, 0, 1, hits, NULL),
                EMF_ERR_NULL_ARGUMENT, "out_counts");
    CHECK_ERROR(emf_hnsw_search_batch(h, v, 1, DIM, 4, 0, 0, NULL, 2, 1, hits, counts),
                EMF_ERR_NULL_ARGUMENT, "filter");
    CHECK_ERROR(emf_hnsw_save(h, NULL), EMF_ERR_NULL_ARGUMENT, "path");
    emf_hnsw_t *out = h;
    CHECK_ERROR(emf_hnsw_open(NULL, &out), EMF_ERR_NULL_ARGUMENT, "path");
    CHECK_ERROR(emf_hnsw_open("/nonexistent/x", NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_hnsw_load(NULL, &out), EMF_ERR_NULL_ARGUMENT, "path");
    CHECK_ERROR(emf_hnsw_load("/nonexistent/x", NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK(out == h);

    /* Wrong dimensions (never read past what the caller said). */
    CHECK_ERROR(emf_hnsw_insert(h, 9, v, DIM - 1), EMF_ERR_INVALID_ARGUMENT, "7 dimensions");
    CHECK_ERROR(emf_hnsw_insert(h, 9, v, DIM + 1), EMF_ERR_INVALID_ARGUMENT, "9 dimensions");
    CHECK_ERROR(emf_hnsw_insert(h, 9, NULL, 0), EMF_ERR_INVALID_ARGUMENT, "0 dimensions");
    CHECK_ERROR(emf_hnsw_insert_batch(h, ids, 2, v, DIM * 2, 1), EMF_ERR_INVALID_ARGUMENT,
                "16 dimensions");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM + 3, 4, 0, 0, NULL, 0, hits, &n),
                EMF_ERR_INVALID_ARGUMENT, "11 dimensions");
    CHECK_ERROR(emf_hnsw_search_batch(h, v, 2, DIM - 2, 4, 0, 0, NULL, 0, 1, hits, counts),
                EMF_ERR_INVALID_ARGUMENT, "6 dimensions");
    CHECK_ERROR(emf_hnsw_search_batch(h, NULL, 2, 0, 4, 0, 0, NULL, 0, 1, hits, counts),
                EMF_ERR_INVALID_ARGUMENT, "dim");

    /* Unknown search flags. */
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 4, 0, 2, NULL, 0, hits, &n), EMF_ERR_INVALID_ARGUMENT,
                "flags");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 4, 0, EMF_SEARCH_RERANK | 0x80000000u, NULL, 0, hits, &n),
                EMF_ERR_INVALID_ARGUMENT, "flags");
    CHECK_ERROR(emf_hnsw_search_batch(h, v, 2, DIM, 4, 0, 4, NULL, 0, 1, hits, counts),
                EMF_ERR_INVALID_ARGUMENT, "flags");

    /* NaN and infinite vectors: refused for inserts and queries. */
    float bad[DIM];
    memcpy(bad, v, sizeof bad);
    bad[3] = NAN;
    CHECK_ERROR(emf_hnsw_insert(h, 9, bad, DIM), EMF_ERR_INVALID_ARGUMENT, "NaN");
    CHECK_ERROR(emf_hnsw_search(h, bad, DIM, 4, 0, 0, NULL, 0, hits, &n), EMF_ERR_INVALID_ARGUMENT,
                "NaN");
    bad[3] = INFINITY;
    CHECK_ERROR(emf_hnsw_insert(h, 9, bad, DIM), EMF_ERR_INVALID_ARGUMENT, "infinite");
    CHECK_ERROR(emf_hnsw_search(h, bad, DIM, 4, 0, EMF_SEARCH_RERANK, filter, 1, hits, &n),
                EMF_ERR_INVALID_ARGUMENT, "infinite");
    CHECK(n == 777 && all_sentinel(hits, 16));

    /* Duplicate ids: one already in the index, or twice in one batch. A batch is checked
     * whole first: on any error nothing is inserted. */
    CHECK_ERROR(emf_hnsw_insert(h, 3, v, DIM), EMF_ERR_INVALID_ARGUMENT, "id 3");
    const uint64_t dup_in[3] = {10, 11, 10};
    const uint64_t dup_old[3] = {10, 11, 4};
    const uint64_t fresh[3] = {10, 11, 12};
    CHECK_ERROR(emf_hnsw_insert_batch(h, dup_in, 3, v, DIM, 2), EMF_ERR_INVALID_ARGUMENT, "id 10");
    CHECK_ERROR(emf_hnsw_insert_batch(h, dup_old, 3, v, DIM, 2), EMF_ERR_INVALID_ARGUMENT, "id 4");
    float batch_bad[3 * DIM];
    memcpy(batch_bad, v, sizeof batch_bad);
    batch_bad[3 * DIM - 1] = NAN; /* the last value of the last vector */
    CHECK_ERROR(emf_hnsw_insert_batch(h, fresh, 3, batch_bad, DIM, 2), EMF_ERR_INVALID_ARGUMENT,
                "NaN");
    CHECK(index_len(h) == 4);
    CHECK_ERROR(emf_hnsw_remove(h, 10), EMF_ERR_NOT_FOUND, "id 10");
    CHECK_ERROR(emf_hnsw_remove(h, 11), EMF_ERR_NOT_FOUND, "id 11");
    /* An empty batch is fine (pointers may be NULL). */
    CHECK_STATUS(emf_hnsw_insert_batch(h, NULL, 0, NULL, DIM, 0), EMF_OK);
    CHECK(index_len(h) == 4);

    /* k 0 asks for nothing: EMF_OK with no hits (out_hits may be NULL), after the handle,
     * dimensions and flags were checked like any search. */
    n = 777;
    CHECK_STATUS(emf_hnsw_search(h, v, DIM, 0, 0, 0, NULL, 0, NULL, &n), EMF_OK);
    CHECK(n == 0);
    CHECK_ERROR(emf_hnsw_search(h, v, DIM + 1, 0, 0, 0, NULL, 0, NULL, &n),
                EMF_ERR_INVALID_ARGUMENT, "dimensions");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 0, 0, 8, NULL, 0, NULL, &n), EMF_ERR_INVALID_ARGUMENT,
                "flags");
    counts[0] = counts[1] = 777;
    CHECK_STATUS(emf_hnsw_search_batch(h, v, 2, DIM, 0, 0, 0, NULL, 0, 1, NULL, counts), EMF_OK);
    CHECK(counts[0] == 0 && counts[1] == 0);

    /* Lengths past EMF_MAX_INPUT_LEN, and sizes whose product overflows. */
    n = 777;
    CHECK_ERROR(emf_hnsw_insert(h, 9, v, SIZE_MAX / 4), EMF_ERR_TOO_LARGE, "exceed");
    CHECK_ERROR(emf_hnsw_insert_batch(h, ids, SIZE_MAX / 2, v, DIM, 1), EMF_ERR_TOO_LARGE,
                "overflow");
    CHECK_ERROR(emf_hnsw_insert_batch(h, ids, (size_t)1 << 30, v, DIM, 1), EMF_ERR_TOO_LARGE,
                "exceed");
    CHECK_ERROR(emf_hnsw_search(h, v, SIZE_MAX / 2, 4, 0, 0, NULL, 0, hits, &n),
                EMF_ERR_TOO_LARGE, "exceed");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, (size_t)EMF_MAX_INPUT_LEN, 0, 0, NULL, 0, hits, &n),
                EMF_ERR_TOO_LARGE, "exceed");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 4, 0, 0, filter, SIZE_MAX / 8, hits, &n),
                EMF_ERR_TOO_LARGE, "exceed");
    CHECK_ERROR(emf_hnsw_search_batch(h, v, SIZE_MAX / 4, DIM, 4, 0, 0, NULL, 0, 1, hits, counts),
                EMF_ERR_TOO_LARGE, "overflow");
    CHECK(n == 777 && all_sentinel(hits, 16));

    /* Misaligned arrays are refused, not read. */
    static _Alignas(8) unsigned char raw[128];
    const float *odd = (const float *)(uintptr_t)((uintptr_t)raw + 1);
    const uint64_t *odd_ids = (const uint64_t *)(uintptr_t)((uintptr_t)raw + 4);
    emf_hnsw_hit_t *odd_hits = (emf_hnsw_hit_t *)(uintptr_t)((uintptr_t)raw + 4);
    CHECK_ERROR(emf_hnsw_insert(h, 9, odd, DIM), EMF_ERR_INVALID_ARGUMENT, "aligned");
    CHECK_ERROR(emf_hnsw_insert_batch(h, odd_ids, 1, v, DIM, 1), EMF_ERR_INVALID_ARGUMENT,
                "aligned");
    CHECK_ERROR(emf_hnsw_search(h, odd, DIM, 4, 0, 0, NULL, 0, hits, &n), EMF_ERR_INVALID_ARGUMENT,
                "aligned");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 2, 0, 0, NULL, 0, odd_hits, &n),
                EMF_ERR_INVALID_ARGUMENT, "aligned");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 2, 0, 0, odd_ids, 1, hits, &n),
                EMF_ERR_INVALID_ARGUMENT, "aligned");
    CHECK(n == 777 && all_sentinel(hits, 16));

    /* A failed search_batch leaves its out-parameters alone (the header's rule for every
     * function): one bad query among good ones. */
    float qs[4 * DIM];
    memcpy(qs, v, sizeof qs);
    qs[3 * DIM + 1] = NAN;
    emf_hnsw_hit_t bh[4 * 2];
    fill_sentinel(bh, 8);
    counts[0] = counts[1] = counts[2] = counts[3] = 777;
    CHECK_ERROR(emf_hnsw_search_batch(h, qs, 4, DIM, 2, 0, 0, NULL, 0, 4, bh, counts),
                EMF_ERR_INVALID_ARGUMENT, "NaN");
    int untouched = counts[0] == 777 && counts[1] == 777 && counts[2] == 777 && counts[3] == 777;
    CHECK(untouched && all_sentinel(bh, 8));
    if (!untouched) {
        fprintf(stderr, "  the failed emf_hnsw_search_batch wrote out_counts {%zu, %zu, %zu, %zu}\n",
                counts[0], counts[1], counts[2], counts[3]);
    }

    /* Handles of another type and made-up values. */
    emf_cache_t *c = NULL;
    CHECK_STATUS(emf_cache_new(4, 0, 1, &c), EMF_OK);
    const emf_hnsw_t *not_index = (const emf_hnsw_t *)(const void *)c;
    CHECK_ERROR(emf_hnsw_search(not_index, v, DIM, 4, 0, 0, NULL, 0, hits, &n),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_insert(not_index, 9, v, DIM), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_hnsw_free((emf_hnsw_t *)(void *)c), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_STATUS(emf_cache_free(c), EMF_OK);
    static char marker;
    CHECK_ERROR(emf_hnsw_stats((const emf_hnsw_t *)(const void *)&marker, &len, &mem),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_remove((const emf_hnsw_t *)(uintptr_t)0xDEADBEEF0001u, 1),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");

    /* Use after free, and double free: every function refuses the stale handle. */
    CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
    CHECK_ERROR(emf_hnsw_params(h, &p), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_insert(h, 9, v, DIM), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_insert_batch(h, fresh, 3, v, DIM, 1), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 4, 0, 0, NULL, 0, hits, &n), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_hnsw_search(h, v, DIM, 0, 0, 0, NULL, 0, hits, &n), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_hnsw_search_batch(h, v, 2, DIM, 4, 0, 0, NULL, 0, 1, hits, counts),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_search_batch(h, v, 2, DIM, 0, 0, 0, NULL, 0, 1, hits, counts),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_remove(h, 1), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_compact(h), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    char path[4096];
    CHECK_ERROR(emf_hnsw_save(h, path_in(path, sizeof path, "stale.hnsw")),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK(file_size(path) == 0);
    CHECK_ERROR(emf_hnsw_stats(h, &len, &mem), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_free(h), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK(n == 777 && all_sentinel(hits, 16) && len == 777 && mem == 777);
    unsigned char ab[sizeof p];
    memset(ab, 0xAB, sizeof ab);
    CHECK(memcmp(&p, ab, sizeof p) == 0);
}

/* ---------------------------------------------------------------- files */

/* Searches `h` and `m` with `nq` queries (both flag modes) and counts identical answers. */
static size_t same_answers(const emf_hnsw_t *h, const emf_hnsw_t *m, const float *qs, size_t nq,
                           size_t dim, size_t k) {
    size_t same = 0;
    emf_hnsw_hit_t *a = xmalloc(sizeof *a * k), *b = xmalloc(sizeof *b * k);
    for (size_t i = 0; i < nq; i++) {
        for (uint32_t flags = 0; flags <= EMF_SEARCH_RERANK; flags++) {
            size_t na = search(h, qs + i * dim, dim, k, 0, flags, a);
            size_t nb = search(m, qs + i * dim, dim, k, 0, flags, b);
            same += na == nb && same_hits(a, b, na);
        }
    }
    free(a);
    free(b);
    return same;
}

/* Opens and loads `path`, expecting `want` (and `needle` in the message) from both. */
static void expect_open_fails(const char *path, emf_status_t want, const char *needle,
                              const char *what) {
    emf_hnsw_t *out = NULL;
    emf_status_t st = emf_hnsw_open(path, &out);
    if (st != want) fprintf(stderr, "  open %s: %s\n", what, emf_status_name(st));
    CHECK_ERROR(st, want, needle);
    CHECK(out == NULL);
    st = emf_hnsw_load(path, &out);
    if (st != want) fprintf(stderr, "  load %s: %s\n", what, emf_status_name(st));
    CHECK_ERROR(st, want, needle);
    CHECK(out == NULL);
    if (out != NULL) emf_hnsw_free(out);
}

static uint64_t le64(const unsigned char *b) {
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--) x = x << 8 | b[i];
    return x;
}

static void put_le32(unsigned char *b, uint32_t x) {
    for (int i = 0; i < 4; i++) b[i] = (unsigned char)(x >> (8 * i));
}

/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: continues `crc` over
 * `len` bytes. */
static uint32_t crc32c_append(uint32_t crc, const unsigned char *b, size_t len) {
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= b[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* Writes a fresh CRC32C into an index file of format 2 (crates/core/src/hnsw/file.rs: the
 * CRC32C of every byte but its own four, at bytes 128..131), so that damage done on purpose
 * reaches the structural checks behind the checksum. */
static void reseal(unsigned char *file, size_t len) {
    uint32_t crc = crc32c_append(crc32c_append(0, file, 128), file + 132, len - 132);
    put_le32(file + 128, crc);
}

static void test_files(void) {
    char path[4096], other[4096], bad[4096];
    path_in(path, sizeof path, "small.hnsw");
    path_in(bad, sizeof bad, "bad.hnsw");
    float *v = xmalloc(sizeof(float) * SMALL_N * SMALL_DIM);
    small_vectors(v, EMF_METRIC_COSINE, 50);
    emf_hnsw_t *h = new_index(SMALL_DIM, EMF_METRIC_COSINE, EMF_ORIGINALS_F16);
    uint64_t ids[SMALL_N];
    for (size_t i = 0; i < SMALL_N; i++) ids[i] = (uint64_t)i << 40; /* large ids survive */
    CHECK_STATUS(emf_hnsw_insert_batch(h, ids, SMALL_N, v, SMALL_DIM, 1), EMF_OK);
    CHECK_STATUS(emf_hnsw_remove(h, ids[7]), EMF_OK); /* a removed node is saved as removed */
    CHECK_STATUS(emf_hnsw_save(h, path), EMF_OK);

    /* Mapped: the same parameters, length and answers; its memory is the file. */
    emf_hnsw_t *m = NULL;
    CHECK_STATUS(emf_hnsw_open(path, &m), EMF_OK);
    emf_hnsw_params_t ph, pm;
    memset(&ph, 0, sizeof ph);
    memset(&pm, 0, sizeof pm);
    CHECK_STATUS(emf_hnsw_params(h, &ph), EMF_OK);
    CHECK_STATUS(emf_hnsw_params(m, &pm), EMF_OK);
    CHECK(pm.dim == ph.dim && pm.metric == ph.metric && pm.m == ph.m &&
          pm.ef_construction == ph.ef_construction && pm.ef_search == ph.ef_search &&
          pm.originals == EMF_ORIGINALS_F16 && pm.seed == ph.seed);
    CHECK(index_len(m) == SMALL_N - 1);
    CHECK(index_memory(m) == file_size(path));
    CHECK(same_answers(h, m, v, SMALL_N, SMALL_DIM, 10) == 2 * SMALL_N);

    /* A mapped index is read-only: every change is refused, nothing changes. */
    CHECK_ERROR(emf_hnsw_insert(m, 1, v, SMALL_DIM), EMF_ERR_UNSUPPORTED, "read-only");
    CHECK_ERROR(emf_hnsw_insert_batch(m, ids, 1, v, SMALL_DIM, 1), EMF_ERR_UNSUPPORTED, "read-only");
    CHECK_ERROR(emf_hnsw_remove(m, ids[0]), EMF_ERR_UNSUPPORTED, "read-only");
    CHECK_ERROR(emf_hnsw_remove(m, 12345), EMF_ERR_UNSUPPORTED, "read-only");
    CHECK_ERROR(emf_hnsw_compact(m), EMF_ERR_UNSUPPORTED, "read-only");
    CHECK_ERROR(emf_hnsw_save(m, path_in(other, sizeof other, "copy.hnsw")), EMF_ERR_UNSUPPORTED,
                "emf_hnsw_load");
    CHECK(file_size(other) == 0);
    CHECK(index_len(m) == SMALL_N - 1);
    /* ... but it takes bad input like any index. */
    CHECK_ERROR(emf_hnsw_search(m, v, SMALL_DIM - 1, 4, 0, 0, NULL, 0, NULL, NULL),
                EMF_ERR_NULL_ARGUMENT, "out_count");
    emf_hnsw_hit_t hits[10];
    size_t n = 777;
    CHECK_ERROR(emf_hnsw_search(m, v, SMALL_DIM - 1, 4, 0, 0, NULL, 0, hits, &n),
                EMF_ERR_INVALID_ARGUMENT, "15 dimensions");
    CHECK(n == 777);

    /* Loaded: a copy that can change, answering like the original. */
    emf_hnsw_t *l = NULL;
    CHECK_STATUS(emf_hnsw_load(path, &l), EMF_OK);
    CHECK(index_len(l) == SMALL_N - 1);
    CHECK(same_answers(h, l, v, SMALL_N, SMALL_DIM, 10) == 2 * SMALL_N);
    CHECK_ERROR(emf_hnsw_remove(l, ids[7]), EMF_ERR_NOT_FOUND, "not in the index");
    CHECK_ERROR(emf_hnsw_insert(l, ids[8], v, SMALL_DIM), EMF_ERR_INVALID_ARGUMENT, "already");
    CHECK_STATUS(emf_hnsw_insert(l, ids[7], v + 7 * SMALL_DIM, SMALL_DIM), EMF_OK);
    CHECK_STATUS(emf_hnsw_remove(l, ids[0]), EMF_OK);
    CHECK_STATUS(emf_hnsw_compact(l), EMF_OK);
    CHECK(search(l, v + 7 * SMALL_DIM, SMALL_DIM, 1, 0, 0, hits) == 1 && hits[0].id == ids[7]);

    /* Saved over the mapped file (a new file renamed over the name): the old mapping still
     * answers from the old file, a new one from the new file. */
    CHECK_STATUS(emf_hnsw_save(l, path), EMF_OK);
    CHECK(index_len(m) == SMALL_N - 1);
    CHECK(search(m, v, SMALL_DIM, 1, 0, 0, hits) == 1 && hits[0].id == ids[0]);
    CHECK(same_answers(h, m, v, 50, SMALL_DIM, 10) == 2 * 50);
    emf_hnsw_t *m2 = NULL;
    CHECK_STATUS(emf_hnsw_open(path, &m2), EMF_OK);
    CHECK(search(m2, v, SMALL_DIM, 1, 0, 0, hits) == 1 && hits[0].id != ids[0]);
    CHECK(search(m2, v + 7 * SMALL_DIM, SMALL_DIM, 1, 0, 0, hits) == 1 && hits[0].id == ids[7]);
    CHECK(same_answers(l, m2, v, SMALL_N, SMALL_DIM, 10) == 2 * SMALL_N);
    CHECK_STATUS(emf_hnsw_free(m2), EMF_OK);
    CHECK_STATUS(emf_hnsw_save(h, path), EMF_OK); /* the original again, for what follows */

    /* A missing file: EMF_ERR_NOT_FOUND naming the path; a directory: not an index file.
     * Saving into a missing directory, or over a directory: EMF_ERR_IO. */
    expect_open_fails(path_in(other, sizeof other, "missing.hnsw"), EMF_ERR_NOT_FOUND, "missing.hnsw",
                      "a missing file");
    expect_open_fails(g_dir, EMF_ERR_IO, "is a directory", "a directory");
    CHECK_ERROR(emf_hnsw_save(h, path_in(other, sizeof other, "no/such/dir.hnsw")), EMF_ERR_IO,
                "no/such/dir.hnsw");
    CHECK_ERROR(emf_hnsw_save(h, g_dir), EMF_ERR_IO, g_dir);

    /* Damaged files: EMF_ERR_CORRUPT from open and load alike. */
    size_t flen = 0;
    unsigned char *file = read_file(path, &flen);
    CHECK(file != NULL && flen > 136);
    if (file == NULL || flen <= 136) {
        free(file);
        free(v);
        emf_hnsw_free(h);
        emf_hnsw_free(m);
        emf_hnsw_free(l);
        return;
    }
    unsigned char *copy = xmalloc(flen + 16);
    static const size_t cuts[] = {0, 1, 64, 127, 128, 129, 1000};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        CHECK(write_file(bad, file, cuts[i]) == 0);
        expect_open_fails(bad, EMF_ERR_CORRUPT, "hnsw file", "a truncated file");
    }
    CHECK(write_file(bad, file, flen - 1) == 0);
    expect_open_fails(bad, EMF_ERR_CORRUPT, "truncated", "a file missing its last byte");
    memcpy(copy, file, flen);
    memset(copy + flen, 0, 16);
    CHECK(write_file(bad, copy, flen + 16) == 0);
    expect_open_fails(bad, EMF_ERR_CORRUPT, "hnsw file", "a file with bytes appended");
    memcpy(copy, file, flen);
    copy[0] ^= 0xFF;
    CHECK(write_file(bad, copy, flen) == 0);
    expect_open_fails(bad, EMF_ERR_CORRUPT, "magic", "a file with another magic");
    memset(copy, 0, flen);
    CHECK(write_file(bad, copy, flen) == 0);
    expect_open_fails(bad, EMF_ERR_CORRUPT, "magic", "a file of zeros");
    /* The file as saved carries a valid CRC32C (this file's own computation agrees). */
    memcpy(copy, file, flen);
    reseal(copy, flen);
    CHECK(memcmp(copy, file, flen) == 0);
    /* Damage the file format (crates/core/src/hnsw/file.rs) knows of: a version, a metric, a
     * dimension, a neighbour id, a neighbour count. The level-0 lists start at the offset in header bytes
     * 96..103 and hold, per node, a count then 2m ids. The CRC32C refuses each; re-sealed
     * with a fresh CRC32C, the structural checks do. */
    memcpy(copy, file, flen);
    put_le32(copy + 8, 99);
    CHECK(write_file(bad, copy, flen) == 0);
    expect_open_fails(bad, EMF_ERR_CORRUPT, "version", "a file of another version");
    memcpy(copy, file, flen);
    put_le32(copy + 16, 7);
    CHECK(write_file(bad, copy, flen) == 0);
    expect_open_fails(bad, EMF_ERR_CORRUPT, "checksum", "a file with an unknown metric");
    reseal(copy, flen);
    CHECK(write_file(bad, copy, flen) == 0);
    expect_open_fails(bad, EMF_ERR_CORRUPT, "metric", "a re-sealed file with an unknown metric");
    memcpy(copy, file, flen);
    put_le32(copy + 20, SMALL_DIM + 8);
    reseal(copy, flen);
    CHECK(write_file(bad, copy, flen) == 0);
    expect_open_fails(bad, EMF_ERR_CORRUPT, "hnsw file", "a file with another dimension");
    uint64_t l0 = le64(file + 96);
    CHECK(l0 > 136 && l0 + 4 * 33 < flen);
    if (l0 > 136 && l0 + 4 * 33 < flen) {
        memcpy(copy, file, flen);
        put_le32(copy + l0 + 4, 0xFFFFFF00u); /* node 0's first neighbour */
        CHECK(write_file(bad, copy, flen) == 0);
        expect_open_fails(bad, EMF_ERR_CORRUPT, "checksum", "a neighbour out of range");
        reseal(copy, flen);
        CHECK(write_file(bad, copy, flen) == 0);
        expect_open_fails(bad, EMF_ERR_CORRUPT, "neighbour", "a neighbour out of range");
        memcpy(copy, file, flen);
        put_le32(copy + l0, 33); /* node 0's count, past 2m = 32 */
        reseal(copy, flen);
        CHECK(write_file(bad, copy, flen) == 0);
        expect_open_fails(bad, EMF_ERR_CORRUPT, "neighbours", "a count past the list");
    }

    /* Random single-byte damage anywhere: open and load refuse the file (EMF_ERR_CORRUPT,
     * the checksum). Re-sealed with a fresh CRC32C, they either refuse it or accept it, and
     * then every search returns (an answer or an error), never a crash or a read outside the
     * file (valgrind checks). */
    uint64_t rng = 51;
    unsigned long refused = 0, accepted = 0, odd = 0;
    for (int t = 0; t < 200; t++) {
        memcpy(copy, file, flen);
        size_t at = t < 128 ? (size_t)t : (size_t)(next_u64(&rng) % flen);
        copy[at] ^= (unsigned char)(1u + next_u64(&rng) % 255u);
        if (write_file(bad, copy, flen) != 0) {
            odd++;
            continue;
        }
        for (int loaded = 0; loaded < 2; loaded++) {
            emf_hnsw_t *x = NULL;
            emf_status_t st = loaded ? emf_hnsw_load(bad, &x) : emf_hnsw_open(bad, &x);
            if (st != EMF_ERR_CORRUPT) {
                fprintf(stderr, "  byte %zu damaged, not re-sealed: %s\n", at, emf_status_name(st));
                odd++;
                if (st == EMF_OK) emf_hnsw_free(x);
            }
        }
        reseal(copy, flen);
        if (write_file(bad, copy, flen) != 0) {
            odd++;
            continue;
        }
        for (int loaded = 0; loaded < 2; loaded++) {
            emf_hnsw_t *x = NULL;
            emf_status_t st = loaded ? emf_hnsw_load(bad, &x) : emf_hnsw_open(bad, &x);
            if (st == EMF_ERR_CORRUPT) {
                refused++;
                continue;
            }
            if (st != EMF_OK) {
                fprintf(stderr, "  byte %zu damaged: %s (%s)\n", at, emf_status_name(st),
                        last_error());
                odd++;
                continue;
            }
            accepted++;
            for (size_t qi = 0; qi < 5; qi++) {
                size_t cnt = 0;
                st = emf_hnsw_search(x, v + qi * SMALL_DIM, SMALL_DIM, 10, 0,
                                     (uint32_t)qi & EMF_SEARCH_RERANK, NULL, 0, hits, &cnt);
                if ((st != EMF_OK && st != EMF_ERR_CORRUPT) || cnt > 10) odd++;
            }
            if (emf_hnsw_free(x) != EMF_OK) odd++;
        }
    }
    CHECK(odd == 0);
    CHECK(refused > 0 && accepted > 0);

    /* An empty index saves and opens; searching it finds nothing. */
    emf_hnsw_t *e = new_index(SMALL_DIM, EMF_METRIC_DOT, EMF_ORIGINALS_F32);
    CHECK_STATUS(emf_hnsw_save(e, path_in(other, sizeof other, "empty.hnsw")), EMF_OK);
    emf_hnsw_t *em = NULL, *el = NULL;
    CHECK_STATUS(emf_hnsw_open(other, &em), EMF_OK);
    CHECK_STATUS(emf_hnsw_load(other, &el), EMF_OK);
    n = 777;
    CHECK_STATUS(emf_hnsw_search(em, v, SMALL_DIM, 4, 0, EMF_SEARCH_RERANK, NULL, 0, hits, &n),
                 EMF_OK);
    CHECK(n == 0 && index_len(em) == 0 && index_len(el) == 0);
    CHECK_STATUS(emf_hnsw_insert(el, 1, v, SMALL_DIM), EMF_OK);
    CHECK(search(el, v, SMALL_DIM, 4, 0, 0, hits) == 1 && hits[0].id == 1);

    /* Freeing a mapped index unmaps it; a double free is refused. */
    CHECK_STATUS(emf_hnsw_free(m), EMF_OK);
    CHECK_ERROR(emf_hnsw_free(m), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_hnsw_search(m, v, SMALL_DIM, 4, 0, 0, NULL, 0, hits, &n),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_STATUS(emf_hnsw_free(em), EMF_OK);
    CHECK_STATUS(emf_hnsw_free(el), EMF_OK);
    CHECK_STATUS(emf_hnsw_free(e), EMF_OK);
    CHECK_STATUS(emf_hnsw_free(l), EMF_OK);
    CHECK_STATUS(emf_hnsw_free(h), EMF_OK);
    free(copy);
    free(file);
    free(v);
    static const char *const names[] = {"small.hnsw", "bad.hnsw", "empty.hnsw", "copy.hnsw",
                                        "stale.hnsw"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        unlink(path_in(other, sizeof other, names[i]));
    }
}

/* ---------------------------------------------------------------- the MiniLM example */

typedef struct {
    size_t n, nq, dim, gt_k;
    float *base;    /* n x dim, converted from the float16 file */
    float *queries; /* nq x dim */
    int32_t *gt;    /* nq x gt_k: exact neighbours, closest first */
    int gt_from_file;
} dataset_t;

/* Reads a NumPy .npy v1.0 file of `descr` ('<f2', '<f4', '<i4') with two dimensions: the
 * 10-byte preamble (magic, version, little-endian u16 header length at bytes 8..9), the text
 * header, then the data in C order. Returns the file's bytes (free them) and sets `*data`,
 * `*rows`, `*cols`; NULL with a message on stderr for anything else. */
static unsigned char *npy_read(const char *path, const char *descr, size_t elem,
                               const unsigned char **data, size_t *rows, size_t *cols) {
    size_t len = 0;
    unsigned char *b = read_file(path, &len);
    if (b == NULL) {
        fprintf(stderr, "  %s: %s\n", path, strerror(errno));
        return NULL;
    }
    const char *why = NULL;
    char header[1024];
    size_t hl = len >= 10 ? (size_t)b[8] | (size_t)b[9] << 8 : 0;
    if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0 || b[6] != 1) {
        why = "not a NumPy v1 file";
    } else if (10 + hl > len || hl >= sizeof header) {
        why = "bad header length";
    } else {
        memcpy(header, b + 10, hl);
        header[hl] = '\0';
        char want[64];
        snprintf(want, sizeof want, "'descr': '%s'", descr);
        const char *shape = strstr(header, "'shape': (");
        char *end = NULL;
        if (strstr(header, want) == NULL) {
            why = "another element type";
        } else if (strstr(header, "'fortran_order': False") == NULL) {
            why = "not in C order";
        } else if (shape == NULL) {
            why = "no shape";
        } else {
            *rows = strtoul(shape + 10, &end, 10);
            if (end == NULL || end[0] != ',' || end[1] != ' ') {
                why = "not two dimensions";
            } else {
                *cols = strtoul(end + 2, &end, 10);
                if (end == NULL || *end != ')' || *rows == 0 || *cols == 0) {
                    why = "not two dimensions";
                } else if (len - 10 - hl != *rows * *cols * elem) {
                    why = "data size does not match the shape";
                }
            }
        }
    }
    if (why != NULL) {
        fprintf(stderr, "  %s: %s\n", path, why);
        free(b);
        return NULL;
    }
    *data = b + 10 + hl;
    return b;
}

/* The nearest `k` of query `q` among the first `n` vectors, by cosine in double precision. */
static void brute_force_topk(const float *base, const double *norms, size_t n, size_t dim,
                             const float *q, size_t k, int32_t *out) {
    double *best = xmalloc(sizeof(double) * k);
    for (size_t j = 0; j < k; j++) best[j] = INFINITY, out[j] = -1;
    double qn = sqrt(ref_dot(q, q, dim));
    for (size_t i = 0; i < n; i++) {
        double d = 1.0 - ref_dot(q, base + i * dim, dim) / (qn * norms[i]);
        if (d >= best[k - 1]) continue;
        size_t j = k - 1;
        while (j > 0 && best[j - 1] > d) {
            best[j] = best[j - 1];
            out[j] = out[j - 1];
            j--;
        }
        best[j] = d;
        out[j] = (int32_t)i;
    }
    free(best);
}

/* Loads the MiniLM set from `dir`, keeping the first `limit` base vectors. With all 5000 the
 * ground truth comes from the file (and is checked against a brute force here); with fewer it
 * is the brute force. Returns 0 on success. */
static int load_dataset(const char *dir, size_t limit, dataset_t *ds) {
    char path[4096];
    const unsigned char *bd, *qd, *gd;
    size_t br, bc, qr, qc, gr, gc;
    memset(ds, 0, sizeof *ds);
    snprintf(path, sizeof path, "%s/minilm-5k.base.f16.npy", dir);
    unsigned char *bf = npy_read(path, "<f2", 2, &bd, &br, &bc);
    snprintf(path, sizeof path, "%s/minilm-5k.query.f32.npy", dir);
    unsigned char *qf = npy_read(path, "<f4", 4, &qd, &qr, &qc);
    snprintf(path, sizeof path, "%s/minilm-5k.gt100.i32.npy", dir);
    unsigned char *gf = npy_read(path, "<i4", 4, &gd, &gr, &gc);
    int ok = bf != NULL && qf != NULL && gf != NULL && bc == qc && gr == qr && gc >= 10;
    if (ok) {
        ds->n = limit < br ? limit : br;
        ds->dim = bc;
        ds->nq = qr;
        ds->gt_k = 10;
        ds->base = xmalloc(sizeof(float) * ds->n * ds->dim);
        ds->queries = xmalloc(sizeof(float) * ds->nq * ds->dim);
        ds->gt = xmalloc(sizeof(int32_t) * ds->nq * ds->gt_k);
        /* Little-endian bytes, whatever this machine's order. */
        for (size_t i = 0; i < ds->n * ds->dim; i++) {
            ds->base[i] = half_to_float((uint16_t)(bd[2 * i] | bd[2 * i + 1] << 8));
        }
        for (size_t i = 0; i < ds->nq * ds->dim; i++) {
            uint32_t bits = (uint32_t)qd[4 * i] | (uint32_t)qd[4 * i + 1] << 8 |
                            (uint32_t)qd[4 * i + 2] << 16 | (uint32_t)qd[4 * i + 3] << 24;
            memcpy(&ds->queries[i], &bits, sizeof bits);
        }
        double *norms = xmalloc(sizeof(double) * ds->n);
        for (size_t i = 0; i < ds->n; i++) {
            norms[i] = sqrt(ref_dot(ds->base + i * ds->dim, ds->base + i * ds->dim, ds->dim));
        }
        int32_t *mine = xmalloc(sizeof(int32_t) * ds->nq * ds->gt_k);
        for (size_t q = 0; q < ds->nq; q++) {
            brute_force_topk(ds->base, norms, ds->n, ds->dim, ds->queries + q * ds->dim, ds->gt_k,
                             mine + q * ds->gt_k);
        }
        ds->gt_from_file = ds->n == br;
        if (ds->gt_from_file) {
            /* The file's top 10 (of 100) against the brute force: the reader, the half
             * conversion and the data agree. */
            size_t agree = 0, first = 0;
            for (size_t q = 0; q < ds->nq; q++) {
                for (size_t j = 0; j < ds->gt_k; j++) {
                    uint32_t bits = (uint32_t)gd[4 * (q * gc + j)] |
                                    (uint32_t)gd[4 * (q * gc + j) + 1] << 8 |
                                    (uint32_t)gd[4 * (q * gc + j) + 2] << 16 |
                                    (uint32_t)gd[4 * (q * gc + j) + 3] << 24;
                    ds->gt[q * ds->gt_k + j] = (int32_t)bits;
                }
                first += ds->gt[q * ds->gt_k] == mine[q * ds->gt_k];
                for (size_t j = 0; j < ds->gt_k; j++) {
                    for (size_t i = 0; i < ds->gt_k; i++) {
                        agree += ds->gt[q * ds->gt_k + j] == mine[q * ds->gt_k + i];
                    }
                }
            }
            CHECK(first == ds->nq);
            CHECK(agree >= ds->nq * ds->gt_k * 995 / 1000);
            if (agree < ds->nq * ds->gt_k) {
                fprintf(stderr, "  ground truth: %zu of %zu top-10 ids agree with a brute force\n",
                        agree, ds->nq * ds->gt_k);
            }
            free(mine);
        } else {
            free(ds->gt);
            ds->gt = mine;
        }
        free(norms);
    }
    free(bf);
    free(qf);
    free(gf);
    CHECK(ok && "the MiniLM .npy files are readable");
    return ok ? 0 : -1;
}

static void free_dataset(dataset_t *ds) {
    free(ds->base);
    free(ds->queries);
    free(ds->gt);
    memset(ds, 0, sizeof *ds);
}

static double recall_at_k(const dataset_t *ds, const emf_hnsw_hit_t *hits, const size_t *counts,
                          size_t k) {
    size_t found = 0;
    for (size_t q = 0; q < ds->nq; q++) {
        for (size_t j = 0; j < counts[q] && j < k; j++) {
            for (size_t i = 0; i < k; i++) {
                found += hits[q * k + j].id == (uint64_t)ds->gt[q * ds->gt_k + i];
            }
        }
    }
    return (double)found / (double)(ds->nq * k);
}

/* Searches every query one call at a time into `hits` / `counts`. */
static void search_all(const emf_hnsw_t *h, const dataset_t *ds, size_t k, size_t ef,
                       uint32_t flags, emf_hnsw_hit_t *hits, size_t *counts) {
    for (size_t q = 0; q < ds->nq; q++) {
        counts[q] = search(h, ds->queries + q * ds->dim, ds->dim, k, ef, flags, hits + q * k);
    }
}

/* Bytes a child sends back per hit: the id and the distance's bits, little-endian. */
enum { WIRE_HIT = 12 };

static int write_all(int fd, const unsigned char *p, size_t len) {
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w, len -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, unsigned char *p, size_t len) {
    while (len > 0) {
        ssize_t r = read(fd, p, len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r, len -= (size_t)r;
    }
    return 0;
}

static void encode_hits(const emf_hnsw_hit_t *hits, const size_t *counts, size_t nq, size_t k,
                        unsigned char *out) {
    for (size_t q = 0; q < nq; q++) {
        for (size_t j = 0; j < k; j++) {
            unsigned char *w = out + (q * k + j) * WIRE_HIT;
            uint64_t id = j < counts[q] ? hits[q * k + j].id : UINT64_MAX;
            uint32_t bits = 0;
            if (j < counts[q]) memcpy(&bits, &hits[q * k + j].distance, sizeof bits);
            for (int i = 0; i < 8; i++) w[i] = (unsigned char)(id >> (8 * i));
            for (int i = 0; i < 4; i++) w[8 + i] = (unsigned char)(bits >> (8 * i));
        }
    }
}

/* The child of the two-process check: maps `path` itself, says so, waits for the parent's go,
 * searches every query and writes the answers to `out_fd`. Exit 0 when it all worked. */
static int mapped_child(const char *path, const dataset_t *ds, size_t k, int in_fd, int out_fd) {
    emf_hnsw_t *m = NULL;
    emf_status_t st = emf_hnsw_open(path, &m);
    unsigned char ready = st == EMF_OK ? 'R' : 'E';
    if (st != EMF_OK) fprintf(stderr, "  child: emf_hnsw_open: %s\n", last_error());
    if (write_all(out_fd, &ready, 1) != 0 || st != EMF_OK) return 3;
    unsigned char go = 0;
    if (read_all(in_fd, &go, 1) != 0 || go != 'G') {
        emf_hnsw_free(m);
        return 4;
    }
    emf_hnsw_hit_t *hits = xmalloc(sizeof *hits * ds->nq * k);
    size_t *counts = xmalloc(sizeof *counts * ds->nq);
    unsigned char *wire = xmalloc(WIRE_HIT * ds->nq * k);
    int code = 0;
    for (size_t q = 0; q < ds->nq && code == 0; q++) {
        st = emf_hnsw_search(m, ds->queries + q * ds->dim, ds->dim, k, 0, EMF_SEARCH_RERANK, NULL,
                             0, hits + q * k, &counts[q]);
        if (st != EMF_OK) {
            fprintf(stderr, "  child: emf_hnsw_search: %s\n", last_error());
            code = 5;
        }
    }
    size_t len = 0, mem = 0;
    if (code == 0 && emf_hnsw_stats(m, &len, &mem) != EMF_OK) code = 6;
    if (code == 0) {
        encode_hits(hits, counts, ds->nq, k, wire);
        unsigned char sizes[16];
        for (int i = 0; i < 8; i++) {
            sizes[i] = (unsigned char)((uint64_t)len >> (8 * i));
            sizes[8 + i] = (unsigned char)((uint64_t)mem >> (8 * i));
        }
        if (write_all(out_fd, sizes, sizeof sizes) != 0 ||
            write_all(out_fd, wire, WIRE_HIT * ds->nq * k) != 0) {
            code = 7;
        }
    }
    if (emf_hnsw_free(m) != EMF_OK) code = 8;
    free(wire);
    free(counts);
    free(hits);
    return code;
}

/* Two processes map one saved file at once and search it: the same answers. The child maps
 * the file, then both search only once both have mapped it (a handshake over two pipes, no
 * sleeps); the child's answers come back through the pipe. */
static void test_two_processes(const char *path, const dataset_t *ds) {
    enum { K = 10 };
    int to_child[2], to_parent[2];
    if (pipe(to_child) != 0 || pipe(to_parent) != 0) {
        CHECK(!"pipe");
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(to_child[1]);
        close(to_parent[0]);
        int code = mapped_child(path, ds, K, to_child[0], to_parent[1]);
        close(to_child[0]);
        close(to_parent[1]);
        fflush(stderr);
        _exit(code);
    }
    close(to_child[0]);
    close(to_parent[1]);
    CHECK(pid > 0);
    if (pid <= 0) {
        close(to_child[1]);
        close(to_parent[0]);
        return;
    }
    emf_hnsw_t *m = NULL;
    CHECK_STATUS(emf_hnsw_open(path, &m), EMF_OK);
    unsigned char ready = 0, go = 'G';
    CHECK(read_all(to_parent[0], &ready, 1) == 0 && ready == 'R');
    CHECK(write_all(to_child[1], &go, 1) == 0);
    close(to_child[1]);

    emf_hnsw_hit_t *hits = xmalloc(sizeof *hits * ds->nq * K);
    size_t *counts = xmalloc(sizeof *counts * ds->nq);
    unsigned char *mine = xmalloc(WIRE_HIT * ds->nq * K);
    unsigned char *theirs = xmalloc(WIRE_HIT * ds->nq * K);
    search_all(m, ds, K, 0, EMF_SEARCH_RERANK, hits, counts);
    encode_hits(hits, counts, ds->nq, K, mine);
    unsigned char sizes[16];
    int got = ready == 'R' && read_all(to_parent[0], sizes, sizeof sizes) == 0 &&
              read_all(to_parent[0], theirs, WIRE_HIT * ds->nq * K) == 0;
    close(to_parent[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) break;
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "  mapped child: %s %d\n",
                WIFEXITED(status) ? "exit status" : "killed by signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    }
    CHECK(got);
    if (got) {
        size_t same = 0;
        for (size_t q = 0; q < ds->nq; q++) {
            same += memcmp(mine + q * K * WIRE_HIT, theirs + q * K * WIRE_HIT, K * WIRE_HIT) == 0;
        }
        CHECK(same == ds->nq);
        CHECK(le64(sizes) == index_len(m) && le64(sizes + 8) == file_size(path));
        printf("two processes: %zu of %zu queries answered identically from one mapped file "
               "(%zu bytes)\n",
               same, ds->nq, (size_t)le64(sizes + 8));
    }
    CHECK_STATUS(emf_hnsw_free(m), EMF_OK);
    free(theirs);
    free(mine);
    free(counts);
    free(hits);
}

static void run_minilm(const char *dir, size_t limit) {
    dataset_t ds;
    if (load_dataset(dir, limit, &ds) != 0) return;
    enum { K = 10, EF = 50 };
    const size_t dim = ds.dim;

    /* The index, from one contiguous array of floats and one of ids, on 2 threads, keeping
     * half-float originals for re-ranking. */
    emf_hnsw_params_t p = default_params((uint32_t)dim);
    p.originals = EMF_ORIGINALS_F16;
    emf_hnsw_t *h = NULL;
    CHECK_STATUS(emf_hnsw_new(&p, &h), EMF_OK);
    uint64_t *ids = xmalloc(sizeof *ids * ds.n);
    for (size_t i = 0; i < ds.n; i++) ids[i] = i;
    uint64_t t0 = now_ns();
    CHECK_STATUS(emf_hnsw_insert_batch(h, ids, ds.n, ds.base, dim, 2), EMF_OK);
    double build_s = (double)(now_ns() - t0) / 1e9;
    CHECK(index_len(h) == ds.n);
    /* Every vector is reachable: a search keeping every node returns all of them. */
    emf_hnsw_hit_t *every = xmalloc(sizeof *every * ds.n);
    size_t reachable = search(h, ds.queries, dim, ds.n, ds.n, 0, every);
    free(every);
    if (reachable != ds.n) {
        fprintf(stderr, "  minilm: %zu of %zu vectors unreachable after insert_batch on 2 "
                        "threads\n", ds.n - reachable, ds.n);
    }
    CHECK(reachable == ds.n);

    /* recall@10 at ef 50: int8 distances, then re-ranked with the f16 originals. */
    emf_hnsw_hit_t *hits = xmalloc(sizeof *hits * ds.nq * K);
    emf_hnsw_hit_t *rr = xmalloc(sizeof *rr * ds.nq * K);
    emf_hnsw_hit_t *other = xmalloc(sizeof *other * ds.nq * K);
    size_t *counts = xmalloc(sizeof *counts * ds.nq);
    size_t *rr_counts = xmalloc(sizeof *rr_counts * ds.nq);
    size_t *other_counts = xmalloc(sizeof *other_counts * ds.nq);
    t0 = now_ns();
    search_all(h, &ds, K, EF, 0, hits, counts);
    double int8_us = (double)(now_ns() - t0) / 1e3 / (double)ds.nq;
    t0 = now_ns();
    search_all(h, &ds, K, EF, EMF_SEARCH_RERANK, rr, rr_counts);
    double rr_us = (double)(now_ns() - t0) / 1e3 / (double)ds.nq;
    double recall = recall_at_k(&ds, hits, counts, K);
    double recall_rr = recall_at_k(&ds, rr, rr_counts, K);
    printf("minilm: %zu x %zu vectors (f16 file -> float), insert_batch on 2 threads %.2f s, "
           "%zu bytes with f16 originals\n",
           ds.n, dim, build_s, index_memory(h));
    printf("minilm: recall@10 at ef %d over %zu queries (ground truth: %s): int8 %.4f "
           "(%.0f us/query), re-ranked %.4f (%.0f us/query)\n",
           EF, ds.nq, ds.gt_from_file ? "the file's" : "brute force here", recall, int8_us,
           recall_rr, rr_us);
    CHECK(recall >= 0.95);
    CHECK(recall_rr >= 0.95);

    /* The distances: int8 estimates are what emf_cosine_distance_i8 gives for the codes of
     * emf_quantize_f32; re-ranked ones are the exact distance of the query (rounded to half)
     * and the original; both near the double-precision truth. */
    int8_t *qc = xmalloc(dim), *xc = xmalloc(dim);
    double worst_i8 = 0, worst_est = 0, worst_rr = 0;
    for (size_t q = 0; q < ds.nq; q += 10) {
        const float *qv = ds.queries + q * dim;
        float qs = 0, xs = 0;
        CHECK_STATUS(emf_quantize_f32(qv, dim, qc, &qs), EMF_OK);
        for (size_t j = 0; j < counts[q]; j++) {
            const float *xv = ds.base + hits[q * K + j].id * dim;
            double d8 = 0;
            CHECK_STATUS(emf_quantize_f32(xv, dim, xc, &xs), EMF_OK);
            CHECK_STATUS(emf_cosine_distance_i8(qc, xc, dim, &d8), EMF_OK);
            double e = fabs(d8 - hits[q * K + j].distance);
            if (e > worst_i8) worst_i8 = e;
            e = fabs(ref_distance(EMF_METRIC_COSINE, qv, xv, dim) - hits[q * K + j].distance);
            if (e > worst_est) worst_est = e;
        }
        for (size_t j = 0; j < rr_counts[q]; j++) {
            const float *xv = ds.base + rr[q * K + j].id * dim;
            double e = fabs(ref_distance(EMF_METRIC_COSINE, qv, xv, dim) - rr[q * K + j].distance);
            if (e > worst_rr) worst_rr = e;
        }
    }
    printf("minilm: distance errors against double precision: int8 %.2e, re-ranked %.2e\n",
           worst_est, worst_rr);
    CHECK(worst_i8 <= 1e-5);
    CHECK(worst_est <= 0.02);
    CHECK(worst_rr <= 2e-3);
    free(qc);
    free(xc);

    /* search_batch on 2 threads answers exactly like one search per query. */
    for (uint32_t flags = 0; flags <= EMF_SEARCH_RERANK; flags++) {
        CHECK_STATUS(emf_hnsw_search_batch(h, ds.queries, ds.nq, dim, K, EF, flags, NULL, 0, 2,
                                           other, other_counts),
                     EMF_OK);
        const emf_hnsw_hit_t *want = flags ? rr : hits;
        const size_t *want_counts = flags ? rr_counts : counts;
        size_t same = 0;
        for (size_t q = 0; q < ds.nq; q++) {
            same += other_counts[q] == want_counts[q] &&
                    same_hits(other + q * K, want + q * K, want_counts[q]);
        }
        CHECK(same == ds.nq);
    }

    /* Saved, mapped read-only and searched in place: the same answers as the live index, one
     * query at a time and in a batch; the mapping's memory is the file. */
    char path[4096];
    path_in(path, sizeof path, "minilm.hnsw");
    t0 = now_ns();
    CHECK_STATUS(emf_hnsw_save(h, path), EMF_OK);
    double save_ms = (double)(now_ns() - t0) / 1e6;
    emf_hnsw_t *m = NULL;
    t0 = now_ns();
    CHECK_STATUS(emf_hnsw_open(path, &m), EMF_OK);
    double open_ms = (double)(now_ns() - t0) / 1e6;
    CHECK(index_len(m) == ds.n && index_memory(m) == file_size(path));
    size_t same = 0;
    for (uint32_t flags = 0; flags <= EMF_SEARCH_RERANK; flags++) {
        search_all(m, &ds, K, EF, flags, other, other_counts);
        const emf_hnsw_hit_t *want = flags ? rr : hits;
        const size_t *want_counts = flags ? rr_counts : counts;
        for (size_t q = 0; q < ds.nq; q++) {
            same += other_counts[q] == want_counts[q] &&
                    same_hits(other + q * K, want + q * K, want_counts[q]);
        }
        CHECK_STATUS(emf_hnsw_search_batch(m, ds.queries, ds.nq, dim, K, EF, flags, NULL, 0, 2,
                                           other, other_counts),
                     EMF_OK);
        for (size_t q = 0; q < ds.nq; q++) {
            same += other_counts[q] == want_counts[q] &&
                    same_hits(other + q * K, want + q * K, want_counts[q]);
        }
    }
    CHECK(same == 4 * ds.nq);
    printf("minilm: saved in %.1f ms (%zu bytes), mapped and validated in %.1f ms; "
           "%zu of %zu answers from the mapping identical to the live index's\n",
           save_ms, file_size(path), open_ms, same, 4 * ds.nq);
    CHECK_STATUS(emf_hnsw_free(m), EMF_OK);
    CHECK_STATUS(emf_hnsw_free(h), EMF_OK);

    /* Two processes, one file. */
    test_two_processes(path, &ds);
    unlink(path);

    free(other_counts);
    free(rr_counts);
    free(counts);
    free(other);
    free(rr);
    free(hits);
    free(ids);
    free_dataset(&ds);
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "liberlmcp_flow has ABI %u, this program was compiled for ABI %u\n",
                emf_abi_version(), EMF_ABI_VERSION);
        return 2;
    }
    size_t limit = 5000;
    int builds = 40;
    const char *data_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            char *end = NULL;
            unsigned long long n = strtoull(argv[++i], &end, 10);
            if (end == NULL || *end != '\0' || n < 100 || n > 5000) {
                fprintf(stderr, "-n: 100 to 5000 vectors\n");
                return 2;
            }
            limit = (size_t)n;
            builds = n < 5000 ? 10 : 40;
        } else if (argv[i][0] != '-' && data_dir == NULL) {
            data_dir = argv[i];
        } else {
            fprintf(stderr, "usage: %s [-n VECTORS] [DATA_DIR]\n", argv[0]);
            return 2;
        }
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/emf-hnsw-XXXXXX", tmp != NULL && *tmp ? tmp : "/tmp");
    if (mkdtemp(g_dir) == NULL) {
        fprintf(stderr, "mkdtemp %s: %s\n", g_dir, strerror(errno));
        return 2;
    }

    test_huge_ef(); /* first: the child forks before much is allocated */
    test_quantize();
    test_distances();
    test_params();
    test_metrics();
    test_filter();
    test_remove_compact();
    test_concurrent_build(builds);
    test_search_during_insert(builds / 4);
    test_try_forms(limit < 5000 ? 600 : 3000, 5);
    test_bad_input();
    test_files();
    if (data_dir != NULL) {
        run_minilm(data_dir, limit);
    } else {
        printf("minilm: skipped (no DATA_DIR: pass the repository's tests/data)\n");
    }

    if (rmdir(g_dir) != 0) {
        fprintf(stderr, "rmdir %s: %s\n", g_dir, strerror(errno));
        CHECK(!"every scratch file was removed");
    }
    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}

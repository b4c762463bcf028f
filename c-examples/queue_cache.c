/*
 * queue_cache.c — a C11 host of the erlmcp-flow task queue (emf_task_queue_*) and LRU cache
 * (emf_cache_*), built against the installed header and library
 * (`pkg-config --cflags --libs erlmcp_flow`).
 *
 * Task queue: priority order and FIFO within a priority, back-pressure (EMF_ENQUEUE_BACKPRESSURE
 * once the primary queue is full, EMF_ENQUEUE_REJECTED once the overflow is full too, with the
 * task still the caller's), low-priority eviction (EMF_ENQUEUE_EVICTED hands the evicted task's
 * bytes and priority back), the default sizes, empty tasks, exact counters.
 *
 * Cache: put / get / get_into (EMF_ERR_BUFFER_TOO_SMALL with the length needed, the caller's
 * buffer untouched; a length query with a NULL buffer), binary and empty keys and values,
 * replacement, exact LRU eviction on one shard, remove, TTL expiry (polled against a
 * deadline: an entry must live at least its TTL), sweep and the background sweeper, exact
 * counters.
 *
 * Bad input for both: NULL handles and out-parameters (EMF_ERR_NULL_ARGUMENT), unknown
 * priorities and drop policies (EMF_ERR_INVALID_ARGUMENT), lengths past EMF_MAX_INPUT_LEN
 * (EMF_ERR_TOO_LARGE), handles of the wrong type, use after free and double free
 * (EMF_ERR_INVALID_ARGUMENT), a capacity past the limit (EMF_ERR_TOO_LARGE, refused rather
 * than an abort of the process: checked in a child process), and stale copies of freed buffers. Every failure must
 * come with an error message naming the culprit, and out-parameters stay untouched. Every
 * buffer the library returns is released with emf_buf_free (valgrind checks).
 *
 * Output: one line per failed check on stderr, then exactly one line `N passed, M failed`.
 * Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded library has another ABI.
 */
#define _POSIX_C_SOURCE 200809L

#include <erlmcp_flow.h>

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- checks */

#include "check.h"

/* ---------------------------------------------------------------- helpers */

static const uint8_t *u8(const char *s) { return (const uint8_t *)s; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int bytes_equal(const uint8_t *a, size_t alen, const char *b) {
    size_t blen = strlen(b);
    return alen == blen && (blen == 0 || memcmp(a, b, blen) == 0);
}

/* Waits `ms` milliseconds by reading the clock. Only where the passage of time itself is
 * under test and no condition can be polled (an entry that must still be held after its TTL
 * without being read); everything else polls its condition against a deadline. */
static void spin_ms(uint64_t ms) {
    uint64_t end = now_ns() + ms * 1000000u;
    while (now_ns() < end) {
    }
}

static int buf_is(emf_buf_t b, const char *text) { return bytes_equal(b.data, b.len, text); }

/* An emf_buf_t no successful call would write: proves an out-parameter was left alone. */
static emf_buf_t sentinel_buf(void) {
    static uint8_t marker;
    emf_buf_t b = {&marker, 77, UINT64_C(0x5E471E15E471E15E)};
    return b;
}

static int is_sentinel(emf_buf_t b) {
    emf_buf_t s = sentinel_buf();
    return b.data == s.data && b.len == s.len && b.token == s.token;
}

static const emf_buf_t EMPTY_BUF = {NULL, 0, 0};

static emf_task_queue_t *new_queue(size_t primary, size_t overflow, uint32_t policy) {
    emf_task_queue_t *q = NULL;
    CHECK_STATUS(emf_task_queue_new(primary, overflow, policy, &q), EMF_OK);
    CHECK(q != NULL);
    return q;
}

/* Enqueues `text`; returns the EMF_ENQUEUE_* answer (UINT32_MAX when the call failed, which
 * the caller's check of the answer then reports). Used where no eviction may happen: an
 * evicted task coming back here is a failure (and its buffer is freed). Counts no check on
 * success, so that loops of enqueues do not inflate the totals. */
static uint32_t enqueue_text(const emf_task_queue_t *q, const char *text, uint32_t priority) {
    uint32_t result = UINT32_MAX;
    emf_buf_t evicted = EMPTY_BUF;
    if (emf_task_queue_enqueue(q, u8(text), strlen(text), priority, &result, &evicted, NULL) !=
        EMF_OK) {
        fprintf(stderr, "  enqueue \"%s\": %s\n", text, last_error());
        return UINT32_MAX;
    }
    if (result == EMF_ENQUEUE_EVICTED || evicted.data != NULL || evicted.len != 0) {
        fprintf(stderr, "  enqueue \"%s\": unexpected eviction (answer %u)\n", text, result);
        CHECK(!"an enqueue that may not evict returned an evicted task");
        emf_buf_free(&evicted);
    }
    return result;
}

/* Dequeues one task and checks it is `text` at `priority`. */
static void expect_dequeue(const emf_task_queue_t *q, const char *text, uint32_t priority) {
    emf_buf_t out = EMPTY_BUF;
    uint32_t p = 99;
    CHECK_STATUS(emf_task_queue_dequeue(q, &out, &p), EMF_OK);
    CHECK(buf_is(out, text) && p == priority);
    if (!buf_is(out, text) || p != priority) {
        fprintf(stderr, "  dequeued \"%.*s\" at %u, expected \"%s\" at %u\n", (int)out.len,
                out.data ? (const char *)out.data : "", p, text, priority);
    }
    CHECK_STATUS(emf_buf_free(&out), EMF_OK);
}

/* The counters (all bits set when the call failed, which counts as a failed check). */
static emf_task_queue_stats_t queue_stats(const emf_task_queue_t *q) {
    emf_task_queue_stats_t st;
    memset(&st, 0xFF, sizeof st);
    emf_status_t rc = emf_task_queue_stats(q, &st);
    if (rc != EMF_OK) CHECK_STATUS(rc, EMF_OK);
    return st;
}

static emf_cache_t *new_cache(size_t capacity, uint64_t ttl_ms, uint32_t shards) {
    emf_cache_t *c = NULL;
    CHECK_STATUS(emf_cache_new(capacity, ttl_ms, shards, &c), EMF_OK);
    CHECK(c != NULL);
    return c;
}

/* Puts `key` -> `value`; a failure counts as a failed check (success counts nothing: this
 * runs in loops). */
static void put_text(const emf_cache_t *c, const char *key, const char *value) {
    emf_status_t st = emf_cache_put(c, u8(key), strlen(key), u8(value), strlen(value));
    if (st != EMF_OK) CHECK_STATUS(st, EMF_OK);
}

/* 1 when `key` holds `value` (read with emf_cache_get, the buffer freed), 0 on a miss. Another
 * value, or a failure, counts as a failed check. */
static int cache_has(const emf_cache_t *c, const char *key, const char *value) {
    emf_buf_t out = EMPTY_BUF;
    emf_status_t st = emf_cache_get(c, u8(key), strlen(key), &out);
    if (st == EMF_ERR_NOT_FOUND) return 0;
    if (st != EMF_OK) {
        CHECK_STATUS(st, EMF_OK);
        return 0;
    }
    int same = buf_is(out, value);
    if (!same) {
        fprintf(stderr, "  %s: got \"%.*s\", expected \"%s\"\n", key, (int)out.len,
                out.data ? (const char *)out.data : "", value);
        CHECK(!"the cache returned another value");
    }
    if (emf_buf_free(&out) != EMF_OK) CHECK(!"emf_buf_free of a value from emf_cache_get");
    return same;
}

/* The counters (all bits set when the call failed, which counts as a failed check; success
 * counts nothing: this runs in polling loops). */
static emf_cache_stats_t cache_stats(const emf_cache_t *c) {
    emf_cache_stats_t st;
    memset(&st, 0xFF, sizeof st);
    emf_status_t rc = emf_cache_stats(c, &st);
    if (rc != EMF_OK) CHECK_STATUS(rc, EMF_OK);
    return st;
}

/* ---------------------------------------------------------------- task queue */

static void test_queue_order(void) {
    emf_task_queue_t *q = new_queue(16, 0, EMF_DROP_NONE);

    /* Mixed priorities: dequeued highest first, oldest first within a priority. */
    static const struct {
        const char *text;
        uint32_t priority;
    } in[] = {
        {"low-1", EMF_PRIORITY_LOW},           {"normal-1", EMF_PRIORITY_NORMAL},
        {"critical-1", EMF_PRIORITY_CRITICAL}, {"high-1", EMF_PRIORITY_HIGH},
        {"low-2", EMF_PRIORITY_LOW},           {"critical-2", EMF_PRIORITY_CRITICAL},
        {"normal-2", EMF_PRIORITY_NORMAL},     {"high-2", EMF_PRIORITY_HIGH},
        {"critical-3", EMF_PRIORITY_CRITICAL}, {"low-3", EMF_PRIORITY_LOW},
    };
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
        CHECK(enqueue_text(q, in[i].text, in[i].priority) == EMF_ENQUEUE_OK);
    }
    emf_task_queue_stats_t st = queue_stats(q);
    CHECK(st.depth == 10 && st.primary_depth == 10 && st.overflow_depth == 0);
    CHECK(st.enqueued == 10 && st.dequeued == 0 && st.max_depth == 10);

    expect_dequeue(q, "critical-1", EMF_PRIORITY_CRITICAL);
    expect_dequeue(q, "critical-2", EMF_PRIORITY_CRITICAL);
    expect_dequeue(q, "critical-3", EMF_PRIORITY_CRITICAL);
    expect_dequeue(q, "high-1", EMF_PRIORITY_HIGH);
    /* A critical task arriving now goes ahead of everything still queued. */
    CHECK(enqueue_text(q, "critical-4", EMF_PRIORITY_CRITICAL) == EMF_ENQUEUE_OK);
    expect_dequeue(q, "critical-4", EMF_PRIORITY_CRITICAL);
    expect_dequeue(q, "high-2", EMF_PRIORITY_HIGH);
    expect_dequeue(q, "normal-1", EMF_PRIORITY_NORMAL);
    expect_dequeue(q, "normal-2", EMF_PRIORITY_NORMAL);
    expect_dequeue(q, "low-1", EMF_PRIORITY_LOW);
    expect_dequeue(q, "low-2", EMF_PRIORITY_LOW);
    expect_dequeue(q, "low-3", EMF_PRIORITY_LOW);

    /* Empty: EMF_ERR_EMPTY, out-parameters untouched. */
    emf_buf_t out = sentinel_buf();
    uint32_t p = 99;
    CHECK_ERROR(emf_task_queue_dequeue(q, &out, &p), EMF_ERR_EMPTY, "empty");
    CHECK(is_sentinel(out) && p == 99);

    /* out_priority may be NULL; an empty task (NULL, 0) is a task like any other and comes
     * back as an empty buffer (data NULL). Binary bytes come back exactly. */
    static const uint8_t bin[5] = {0x00, 0xFF, 0x00, 0x7F, 0x80};
    uint32_t result = 99;
    emf_buf_t evicted = EMPTY_BUF;
    CHECK_STATUS(emf_task_queue_enqueue(q, NULL, 0, EMF_PRIORITY_NORMAL, &result, &evicted, NULL),
                 EMF_OK);
    CHECK(result == EMF_ENQUEUE_OK);
    CHECK_STATUS(emf_task_queue_enqueue(q, bin, sizeof bin, EMF_PRIORITY_NORMAL, &result, &evicted,
                                        NULL),
                 EMF_OK);
    out = EMPTY_BUF;
    CHECK_STATUS(emf_task_queue_dequeue(q, &out, NULL), EMF_OK);
    CHECK(out.len == 0 && out.data == NULL);
    CHECK_STATUS(emf_buf_free(&out), EMF_OK);
    CHECK_STATUS(emf_task_queue_dequeue(q, &out, NULL), EMF_OK);
    CHECK(out.len == sizeof bin && memcmp(out.data, bin, sizeof bin) == 0);
    CHECK_STATUS(emf_buf_free(&out), EMF_OK);

    st = queue_stats(q);
    CHECK(st.depth == 0 && st.enqueued == 13 && st.dequeued == 13);
    CHECK(st.spills == 0 && st.rejections == 0 && st.evictions == 0);
    CHECK(st.max_depth == 10 && st.depth_p99 >= 1 && st.depth_p99 <= st.max_depth);
    CHECK_STATUS(emf_task_queue_free(q), EMF_OK);
}

static void test_queue_backpressure(void) {
    /* Primary 2, overflow 2, no eviction: OK, OK, BACKPRESSURE, BACKPRESSURE, then REJECTED
     * whatever the priority (even critical): the caller keeps the task. */
    emf_task_queue_t *q = new_queue(2, 2, EMF_DROP_NONE);
    CHECK(enqueue_text(q, "t1", EMF_PRIORITY_LOW) == EMF_ENQUEUE_OK);
    CHECK(enqueue_text(q, "t2", EMF_PRIORITY_NORMAL) == EMF_ENQUEUE_OK);
    emf_task_queue_stats_t st = queue_stats(q);
    CHECK(st.depth == 2 && st.primary_depth == 2 && st.overflow_depth == 0 && st.spills == 0);
    CHECK(enqueue_text(q, "t3", EMF_PRIORITY_LOW) == EMF_ENQUEUE_BACKPRESSURE);
    CHECK(enqueue_text(q, "t4", EMF_PRIORITY_HIGH) == EMF_ENQUEUE_BACKPRESSURE);
    st = queue_stats(q);
    CHECK(st.depth == 4 && st.primary_depth == 2 && st.overflow_depth == 2 && st.spills == 2);

    char kept[8] = "t5";
    uint32_t result = 99, ep = 99;
    emf_buf_t evicted = EMPTY_BUF;
    CHECK_STATUS(emf_task_queue_enqueue(q, u8(kept), 2, EMF_PRIORITY_CRITICAL, &result, &evicted,
                                        &ep),
                 EMF_OK);
    CHECK(result == EMF_ENQUEUE_REJECTED);
    CHECK(evicted.data == NULL && evicted.len == 0 && ep == 99);
    CHECK(strcmp(kept, "t5") == 0); /* the caller's bytes, unchanged */
    CHECK(enqueue_text(q, "t6", EMF_PRIORITY_LOW) == EMF_ENQUEUE_REJECTED);
    st = queue_stats(q);
    CHECK(st.depth == 4 && st.enqueued == 4 && st.rejections == 2 && st.evictions == 0);
    CHECK(st.max_depth == 4);

    /* Draining one makes room again: the retried task is accepted into the overflow. */
    expect_dequeue(q, "t4", EMF_PRIORITY_HIGH);
    CHECK(enqueue_text(q, kept, EMF_PRIORITY_CRITICAL) == EMF_ENQUEUE_BACKPRESSURE);
    expect_dequeue(q, "t5", EMF_PRIORITY_CRITICAL);
    expect_dequeue(q, "t2", EMF_PRIORITY_NORMAL);
    expect_dequeue(q, "t1", EMF_PRIORITY_LOW);
    /* Below the primary size again: OK, not BACKPRESSURE. */
    CHECK(enqueue_text(q, "t7", EMF_PRIORITY_LOW) == EMF_ENQUEUE_OK);
    expect_dequeue(q, "t3", EMF_PRIORITY_LOW);
    expect_dequeue(q, "t7", EMF_PRIORITY_LOW);
    st = queue_stats(q);
    CHECK(st.depth == 0 && st.enqueued == 6 && st.dequeued == 6 && st.spills == 3);
    CHECK_STATUS(emf_task_queue_free(q), EMF_OK);

    /* No overflow at all (max_overflow 0): a full primary queue refuses at once. */
    q = new_queue(1, 0, EMF_DROP_NONE);
    CHECK(enqueue_text(q, "only", EMF_PRIORITY_NORMAL) == EMF_ENQUEUE_OK);
    CHECK(enqueue_text(q, "more", EMF_PRIORITY_CRITICAL) == EMF_ENQUEUE_REJECTED);
    st = queue_stats(q);
    CHECK(st.spills == 0 && st.rejections == 1 && st.depth == 1);
    /* Freed with a task still queued: the library releases it (valgrind checks). */
    CHECK_STATUS(emf_task_queue_free(q), EMF_OK);
}

/* Enqueues `text` at `priority` into a full queue and expects `victim` (at `victim_priority`)
 * back. */
static void expect_eviction(const emf_task_queue_t *q, const char *text, uint32_t priority,
                            const char *victim, uint32_t victim_priority) {
    uint32_t result = 99, ep = 99;
    emf_buf_t evicted = EMPTY_BUF;
    CHECK_STATUS(emf_task_queue_enqueue(q, u8(text), strlen(text), priority, &result, &evicted,
                                        &ep),
                 EMF_OK);
    CHECK(result == EMF_ENQUEUE_EVICTED);
    CHECK(buf_is(evicted, victim) && ep == victim_priority);
    if (!buf_is(evicted, victim) || ep != victim_priority) {
        fprintf(stderr, "  %s evicted \"%.*s\" at %u, expected \"%s\" at %u\n", text,
                (int)evicted.len, evicted.data ? (const char *)evicted.data : "", ep, victim,
                victim_priority);
    }
    /* The evicted bytes are the caller's now: freed exactly once; a stale copy is refused. */
    emf_buf_t copy = evicted;
    CHECK(evicted.token != 0);
    CHECK_STATUS(emf_buf_free(&evicted), EMF_OK);
    CHECK(evicted.data == NULL && evicted.len == 0);
    CHECK_ERROR(emf_buf_free(&copy), EMF_ERR_INVALID_ARGUMENT, "buffer");
}

static void test_queue_eviction(void) {
    /* Primary 2, overflow 1, low-priority eviction. */
    emf_task_queue_t *q = new_queue(2, 1, EMF_DROP_LOW_PRIORITY);
    CHECK(enqueue_text(q, "low-a", EMF_PRIORITY_LOW) == EMF_ENQUEUE_OK);
    CHECK(enqueue_text(q, "low-b", EMF_PRIORITY_LOW) == EMF_ENQUEUE_OK);
    CHECK(enqueue_text(q, "normal-c", EMF_PRIORITY_NORMAL) == EMF_ENQUEUE_BACKPRESSURE);

    /* Full: a higher-priority arrival evicts the NEWEST task of the LOWEST priority. */
    expect_eviction(q, "high-d", EMF_PRIORITY_HIGH, "low-b", EMF_PRIORITY_LOW);
    expect_eviction(q, "critical-e", EMF_PRIORITY_CRITICAL, "low-a", EMF_PRIORITY_LOW);
    /* Nothing below low, nothing below normal: refused, nothing evicted. */
    CHECK(enqueue_text(q, "low-f", EMF_PRIORITY_LOW) == EMF_ENQUEUE_REJECTED);
    CHECK(enqueue_text(q, "normal-g", EMF_PRIORITY_NORMAL) == EMF_ENQUEUE_REJECTED);
    /* High evicts the normal task (the lowest queued), critical then evicts a high one. */
    expect_eviction(q, "high-h", EMF_PRIORITY_HIGH, "normal-c", EMF_PRIORITY_NORMAL);
    expect_eviction(q, "critical-i", EMF_PRIORITY_CRITICAL, "high-h", EMF_PRIORITY_HIGH);

    emf_task_queue_stats_t st = queue_stats(q);
    CHECK(st.depth == 3 && st.evictions == 4 && st.rejections == 2 && st.spills == 1);
    CHECK(st.enqueued == 7 && st.max_depth == 3);

    /* out_evicted_priority may be NULL: the bytes still come back. */
    {
        emf_task_queue_t *q2 = new_queue(1, 0, EMF_DROP_LOW_PRIORITY);
        uint32_t result = 99;
        emf_buf_t evicted = EMPTY_BUF;
        CHECK(enqueue_text(q2, "bulk", EMF_PRIORITY_LOW) == EMF_ENQUEUE_OK);
        CHECK_STATUS(emf_task_queue_enqueue(q2, u8("urgent"), 6, EMF_PRIORITY_NORMAL, &result,
                                            &evicted, NULL),
                     EMF_OK);
        CHECK(result == EMF_ENQUEUE_EVICTED && buf_is(evicted, "bulk"));
        CHECK_STATUS(emf_buf_free(&evicted), EMF_OK);
        expect_dequeue(q2, "urgent", EMF_PRIORITY_NORMAL);
        CHECK_STATUS(emf_task_queue_free(q2), EMF_OK);
    }

    expect_dequeue(q, "critical-e", EMF_PRIORITY_CRITICAL);
    expect_dequeue(q, "critical-i", EMF_PRIORITY_CRITICAL);
    expect_dequeue(q, "high-d", EMF_PRIORITY_HIGH);
    emf_buf_t out = EMPTY_BUF;
    CHECK_ERROR(emf_task_queue_dequeue(q, &out, NULL), EMF_ERR_EMPTY, "empty");
    CHECK_STATUS(emf_task_queue_free(q), EMF_OK);
}

static void test_queue_defaults(void) {
    /* 0 and SIZE_MAX select the defaults: 1000 in the primary queue, 10000 in the overflow. */
    emf_task_queue_t *q = new_queue(0, SIZE_MAX, EMF_DROP_NONE);
    char text[32];
    size_t ok = 0, bp = 0, other = 0;
    for (int i = 0; i < 11000; i++) {
        snprintf(text, sizeof text, "task-%d", i);
        uint32_t r = enqueue_text(q, text, (uint32_t)(i % 4));
        if (r == EMF_ENQUEUE_OK && bp == 0 && other == 0) {
            ok++;
        } else if (r == EMF_ENQUEUE_BACKPRESSURE && other == 0) {
            bp++;
        } else {
            other++;
        }
    }
    CHECK(ok == 1000 && bp == 10000 && other == 0);
    CHECK(enqueue_text(q, "one-too-many", EMF_PRIORITY_CRITICAL) == EMF_ENQUEUE_REJECTED);
    emf_task_queue_stats_t st = queue_stats(q);
    CHECK(st.depth == 11000 && st.primary_depth == 1000 && st.overflow_depth == 10000);
    CHECK(st.max_depth == 11000 && st.spills == 10000 && st.rejections == 1);
    CHECK(st.depth_p99 >= 10000 && st.depth_p99 <= 11000);
    /* Take a few, free the rest with the queue (valgrind: no leak). */
    expect_dequeue(q, "task-0", EMF_PRIORITY_CRITICAL);
    expect_dequeue(q, "task-4", EMF_PRIORITY_CRITICAL);
    CHECK_STATUS(emf_task_queue_free(q), EMF_OK);
}

static void test_queue_bad_input(void) {
    static char marker;
    emf_task_queue_t *const qs = (emf_task_queue_t *)(void *)&marker;
    emf_task_queue_t *q = new_queue(4, 4, EMF_DROP_LOW_PRIORITY);
    emf_task_queue_t *out_q = qs;
    uint32_t result = 99, ep = 99, p = 99;
    emf_buf_t evicted = sentinel_buf(), out = sentinel_buf();
    emf_task_queue_stats_t st;

    /* Unknown drop policies; NULL out. */
    CHECK_ERROR(emf_task_queue_new(4, 4, 2, &out_q), EMF_ERR_INVALID_ARGUMENT, "drop policy");
    CHECK_ERROR(emf_task_queue_new(4, 4, UINT32_MAX, &out_q), EMF_ERR_INVALID_ARGUMENT,
                "drop policy");
    CHECK(out_q == qs);
    CHECK_ERROR(emf_task_queue_new(4, 4, EMF_DROP_NONE, NULL), EMF_ERR_NULL_ARGUMENT, "out");

    /* NULL handle and out-parameters; NULL data with a length. */
    CHECK_ERROR(emf_task_queue_enqueue(NULL, u8("x"), 1, EMF_PRIORITY_NORMAL, &result, &evicted,
                                       &ep),
                EMF_ERR_NULL_ARGUMENT, "queue");
    CHECK_ERROR(emf_task_queue_enqueue(q, u8("x"), 1, EMF_PRIORITY_NORMAL, NULL, &evicted, &ep),
                EMF_ERR_NULL_ARGUMENT, "out_result");
    CHECK_ERROR(emf_task_queue_enqueue(q, u8("x"), 1, EMF_PRIORITY_NORMAL, &result, NULL, &ep),
                EMF_ERR_NULL_ARGUMENT, "out_evicted");
    CHECK_ERROR(emf_task_queue_enqueue(q, NULL, 1, EMF_PRIORITY_NORMAL, &result, &evicted, &ep),
                EMF_ERR_NULL_ARGUMENT, "data");
    CHECK_ERROR(emf_task_queue_dequeue(NULL, &out, &p), EMF_ERR_NULL_ARGUMENT, "queue");
    CHECK_ERROR(emf_task_queue_dequeue(q, NULL, &p), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_task_queue_stats(NULL, &st), EMF_ERR_NULL_ARGUMENT, "queue");
    CHECK_ERROR(emf_task_queue_stats(q, NULL), EMF_ERR_NULL_ARGUMENT, "out");

    /* Unknown priorities; lengths past EMF_MAX_INPUT_LEN (refused before any byte is read). */
    CHECK_ERROR(emf_task_queue_enqueue(q, u8("x"), 1, 4, &result, &evicted, &ep),
                EMF_ERR_INVALID_ARGUMENT, "priority");
    CHECK_ERROR(emf_task_queue_enqueue(q, u8("x"), 1, UINT32_MAX, &result, &evicted, &ep),
                EMF_ERR_INVALID_ARGUMENT, "priority");
    CHECK_ERROR(emf_task_queue_enqueue(q, u8("x"), (size_t)EMF_MAX_INPUT_LEN + 1,
                                       EMF_PRIORITY_NORMAL, &result, &evicted, &ep),
                EMF_ERR_TOO_LARGE, "exceeds");
    CHECK(result == 99 && ep == 99 && is_sentinel(evicted) && is_sentinel(out) && p == 99);
    emf_task_queue_stats_t s = queue_stats(q);
    CHECK(s.enqueued == 0 && s.rejections == 0 && s.depth == 0);

    /* Made-up values and handles of another type are refused, never dereferenced. */
    emf_cache_t *c = new_cache(4, 0, 1);
    CHECK_ERROR(emf_task_queue_dequeue(qs, &out, &p), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_task_queue_dequeue((const emf_task_queue_t *)(uintptr_t)0x1234, &out, &p),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_task_queue_stats((const emf_task_queue_t *)(const void *)c, &st),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_task_queue_free((emf_task_queue_t *)(void *)c), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_cache_free((emf_cache_t *)(void *)q), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK(is_sentinel(out) && p == 99);
    /* Both survived the wrong-type frees. */
    CHECK(enqueue_text(q, "alive", EMF_PRIORITY_NORMAL) == EMF_ENQUEUE_OK);
    put_text(c, "k", "v");
    CHECK(cache_has(c, "k", "v"));
    CHECK_STATUS(emf_cache_free(c), EMF_OK);

    /* Use after free, double free: refused. A new queue may reuse the slot; the stale handle
     * stays dead. */
    CHECK_STATUS(emf_task_queue_free(q), EMF_OK);
    CHECK_ERROR(emf_task_queue_enqueue(q, u8("x"), 1, EMF_PRIORITY_NORMAL, &result, &evicted,
                                       &ep),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_task_queue_dequeue(q, &out, &p), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_task_queue_stats(q, &st), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_task_queue_free(q), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    {
        emf_task_queue_t *q2 = new_queue(4, 4, EMF_DROP_NONE);
        CHECK(enqueue_text(q2, "fresh", EMF_PRIORITY_NORMAL) == EMF_ENQUEUE_OK);
        CHECK_ERROR(emf_task_queue_dequeue(q, &out, &p), EMF_ERR_INVALID_ARGUMENT,
                    "not a live handle");
        expect_dequeue(q2, "fresh", EMF_PRIORITY_NORMAL);
        CHECK_STATUS(emf_task_queue_free(q2), EMF_OK);
    }
    CHECK(result == 99 && ep == 99 && is_sentinel(evicted) && is_sentinel(out) && p == 99);

    /* A dequeued buffer: freed once; the stale copy is refused. */
    {
        emf_task_queue_t *q3 = new_queue(4, 4, EMF_DROP_NONE);
        CHECK(enqueue_text(q3, "once", EMF_PRIORITY_NORMAL) == EMF_ENQUEUE_OK);
        emf_buf_t b = EMPTY_BUF;
        CHECK_STATUS(emf_task_queue_dequeue(q3, &b, NULL), EMF_OK);
        emf_buf_t copy = b;
        CHECK_STATUS(emf_buf_free(&b), EMF_OK);
        CHECK_ERROR(emf_buf_free(&copy), EMF_ERR_INVALID_ARGUMENT, "buffer");
        CHECK_STATUS(emf_buf_free(&b), EMF_OK); /* reset to empty by the first free */
        CHECK_STATUS(emf_task_queue_free(q3), EMF_OK);
    }

    CHECK_STATUS(emf_task_queue_free(NULL), EMF_OK);
}

/* ---------------------------------------------------------------- cache */

static void test_cache_basic(void) {
    emf_cache_t *c = new_cache(16, 0, 1);
    emf_buf_t out = EMPTY_BUF;
    size_t len = 0;

    put_text(c, "agent:planner", "tcp://10.0.0.7:7000");
    CHECK(cache_has(c, "agent:planner", "tcp://10.0.0.7:7000"));

    /* get_into: exact fit, larger buffer, too small (the length needed, the buffer untouched),
     * a length query with NULL / 0. */
    uint8_t exact[19], big[64], small[8];
    CHECK_STATUS(emf_cache_get_into(c, u8("agent:planner"), 13, exact, sizeof exact, &len), EMF_OK);
    CHECK(len == 19 && bytes_equal(exact, len, "tcp://10.0.0.7:7000"));
    CHECK_STATUS(emf_cache_get_into(c, u8("agent:planner"), 13, big, sizeof big, &len), EMF_OK);
    CHECK(len == 19 && bytes_equal(big, len, "tcp://10.0.0.7:7000"));
    memset(small, '#', sizeof small);
    len = 0;
    CHECK_ERROR(emf_cache_get_into(c, u8("agent:planner"), 13, small, sizeof small, &len),
                EMF_ERR_BUFFER_TOO_SMALL, "19");
    CHECK(len == 19);
    CHECK(memcmp(small, "########", 8) == 0);
    len = 0;
    CHECK_ERROR(emf_cache_get_into(c, u8("agent:planner"), 13, NULL, 0, &len),
                EMF_ERR_BUFFER_TOO_SMALL, "19");
    CHECK(len == 19);

    /* A miss: EMF_ERR_NOT_FOUND, out-parameters untouched. */
    out = sentinel_buf();
    CHECK_ERROR(emf_cache_get(c, u8("agent:nobody"), 12, &out), EMF_ERR_NOT_FOUND, "no live entry");
    CHECK(is_sentinel(out));
    len = 12345;
    CHECK_ERROR(emf_cache_get_into(c, u8("agent:nobody"), 12, big, sizeof big, &len),
                EMF_ERR_NOT_FOUND, "no live entry");
    CHECK(len == 12345);

    /* Binary keys (a NUL inside, distinct by one byte), an empty key, an empty value. */
    static const uint8_t k1[3] = {'a', 0, 'b'}, k2[3] = {'a', 0, 'c'};
    static const uint8_t v[4] = {0xFF, 0x00, 0xFE, 0x01};
    CHECK_STATUS(emf_cache_put(c, k1, 3, v, 4), EMF_OK);
    CHECK_STATUS(emf_cache_put(c, k2, 3, v, 2), EMF_OK);
    out = EMPTY_BUF;
    CHECK_STATUS(emf_cache_get(c, k1, 3, &out), EMF_OK);
    CHECK(out.len == 4 && memcmp(out.data, v, 4) == 0);
    CHECK_STATUS(emf_buf_free(&out), EMF_OK);
    CHECK_STATUS(emf_cache_get(c, k2, 3, &out), EMF_OK);
    CHECK(out.len == 2 && memcmp(out.data, v, 2) == 0);
    CHECK_STATUS(emf_buf_free(&out), EMF_OK);
    CHECK_STATUS(emf_cache_put(c, NULL, 0, u8("empty key"), 9), EMF_OK);
    CHECK(cache_has(c, "", "empty key"));
    CHECK_STATUS(emf_cache_put(c, u8("nil"), 3, NULL, 0), EMF_OK);
    out = sentinel_buf();
    CHECK_STATUS(emf_cache_get(c, u8("nil"), 3, &out), EMF_OK);
    CHECK(out.data == NULL && out.len == 0);
    CHECK_STATUS(emf_buf_free(&out), EMF_OK);
    len = 99;
    CHECK_STATUS(emf_cache_get_into(c, u8("nil"), 3, NULL, 0, &len), EMF_OK);
    CHECK(len == 0);

    /* Replacing a value. */
    put_text(c, "agent:planner", "tcp://10.0.0.8:7001");
    CHECK(cache_has(c, "agent:planner", "tcp://10.0.0.8:7001"));

    /* A large value: emf_cache_get allocates it; get_into reports its size. */
    {
        size_t n = 100000;
        uint8_t *value = malloc(n);
        CHECK(value != NULL);
        if (value != NULL) {
            for (size_t i = 0; i < n; i++) value[i] = (uint8_t)(i * 131u + 7u);
            CHECK_STATUS(emf_cache_put(c, u8("large"), 5, value, n), EMF_OK);
            CHECK_STATUS(emf_cache_get(c, u8("large"), 5, &out), EMF_OK);
            CHECK(out.len == n && memcmp(out.data, value, n) == 0);
            CHECK_STATUS(emf_buf_free(&out), EMF_OK);
            CHECK_ERROR(emf_cache_get_into(c, u8("large"), 5, big, sizeof big, &len),
                        EMF_ERR_BUFFER_TOO_SMALL, "100000");
            CHECK(len == n);
            free(value);
        }
    }

    /* Remove: OK, then NOT_FOUND; a get then misses. */
    CHECK_STATUS(emf_cache_remove(c, u8("agent:planner"), 13), EMF_OK);
    CHECK_ERROR(emf_cache_remove(c, u8("agent:planner"), 13), EMF_ERR_NOT_FOUND, "no entry");
    CHECK(!cache_has(c, "agent:planner", ""));

    emf_cache_stats_t st = cache_stats(c);
    /* Hits: cache_has 3 (planner, "", planner') + get_into 4 on planner (exact, big, small,
     * NULL: a too-small answer still counts as a hit) + k1, k2 + nil (get, get_into) + large
     * (get, get_into) = 13. Misses: agent:nobody x2 + the removed planner = 3. */
    CHECK(st.hits == 13 && st.misses == 3);
    if (st.hits != 13 || st.misses != 3) {
        fprintf(stderr, "  hits %llu misses %llu\n", (unsigned long long)st.hits,
                (unsigned long long)st.misses);
    }
    CHECK(st.len == 5 && st.capacity == 16 && st.evictions == 0 && st.expirations == 0);
    CHECK_STATUS(emf_cache_free(c), EMF_OK);
}

static void test_cache_lru(void) {
    /* One shard of 3: an exact LRU. */
    emf_cache_t *c = new_cache(3, 0, 1);
    CHECK(cache_stats(c).capacity == 3);
    put_text(c, "a", "1");
    put_text(c, "b", "2");
    put_text(c, "c", "3");
    CHECK(cache_has(c, "a", "1")); /* a is now the most recently used: b is the LRU */
    put_text(c, "d", "4");         /* evicts b */
    CHECK(!cache_has(c, "b", "2"));
    CHECK(cache_has(c, "a", "1") && cache_has(c, "c", "3") && cache_has(c, "d", "4"));
    put_text(c, "c", "33"); /* a replacement refreshes c: a is the LRU now */
    put_text(c, "e", "5");  /* evicts a */
    CHECK(!cache_has(c, "a", "1"));
    CHECK(cache_has(c, "c", "33") && cache_has(c, "d", "4") && cache_has(c, "e", "5"));
    emf_cache_stats_t st = cache_stats(c);
    CHECK(st.len == 3 && st.evictions == 2 && st.hits == 7 && st.misses == 2);
    CHECK_STATUS(emf_cache_free(c), EMF_OK);

    /* Several shards: the capacity is split evenly over them, so the total is rounded up to a
     * multiple of their number (10 over 4 shards: 12), and the whole cache never holds more. */
    c = new_cache(10, 0, 4);
    CHECK(cache_stats(c).capacity == 12);
    CHECK_STATUS(emf_cache_free(c), EMF_OK);
    c = new_cache(100, 0, 4);
    st = cache_stats(c);
    CHECK(st.capacity == 100);
    char key[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        put_text(c, key, "v");
    }
    st = cache_stats(c);
    CHECK(st.len <= st.capacity && st.len >= 100 / 2);
    CHECK(st.evictions == 1000 - st.len);
    CHECK_STATUS(emf_cache_free(c), EMF_OK);

    /* Capacity 0: the default (10000). */
    c = new_cache(0, 0, 1);
    CHECK(cache_stats(c).capacity == 10000);
    CHECK_STATUS(emf_cache_free(c), EMF_OK);
}

/* Polls `key` with emf_cache_get_into until it misses or `deadline_ms` passes. Returns the
 * nanoseconds from `put_start` to the end of the call that missed (an upper bound of the
 * entry's life as seen from this thread), or 0 when it never missed. */
static uint64_t poll_until_miss(const emf_cache_t *c, const char *key, uint64_t put_start,
                                uint64_t deadline_ms) {
    uint8_t buf[64];
    size_t len = 0;
    uint64_t deadline = now_ns() + deadline_ms * 1000000u;
    for (;;) {
        emf_status_t st = emf_cache_get_into(c, u8(key), strlen(key), buf, sizeof buf, &len);
        uint64_t t = now_ns();
        if (st == EMF_ERR_NOT_FOUND) return t - put_start;
        if (st != EMF_OK) {
            CHECK_STATUS(st, EMF_OK);
            return 0;
        }
        if (t > deadline) return 0;
        sched_yield();
    }
}

static void test_cache_ttl(void) {
    /* An entry lives at least its TTL: the first miss may not come earlier. The bound is
     * measured from before the put to after the missing get, so it can only overstate the
     * entry's life. */
    const uint64_t ttl_ms = 40; /* a multiple of the coarse clock tick (1, 4 or 10 ms) */
    emf_cache_t *c = new_cache(16, ttl_ms, 1);
    for (int round = 0; round < 5; round++) {
        uint64_t t0 = now_ns();
        put_text(c, "session", "token");
        CHECK(cache_has(c, "session", "token"));
        uint64_t life = poll_until_miss(c, "session", t0, 10000);
        CHECK(life != 0);                     /* it did expire (within 10 s) */
        CHECK(life >= ttl_ms * 1000000u);     /* ... but not before its TTL */
        if (life != 0 && life < ttl_ms * 1000000u) {
            fprintf(stderr, "  round %d: the entry expired %.3f ms after its put (TTL %llu ms)\n",
                    round, (double)life / 1e6, (unsigned long long)ttl_ms);
        }
    }
    emf_cache_stats_t st = cache_stats(c);
    CHECK(st.expirations == 5 && st.len == 0 && st.misses == 5);

    /* A put restarts the TTL: an entry refreshed now lives on. Poll with the refreshing put
     * inside the loop: the value must never be missing right after its own put. */
    put_text(c, "refreshed", "v1");
    int missing_after_put = 0;
    uint64_t start = now_ns();
    while (now_ns() - start < 3 * ttl_ms * 1000000u) {
        put_text(c, "refreshed", "v1");
        if (!cache_has(c, "refreshed", "v1")) missing_after_put++;
    }
    CHECK(missing_after_put == 0);
    /* An expired entry not yet swept can still be removed. (It cannot be polled for: a get
     * would remove it. This waits on the clock, well past the TTL.) */
    put_text(c, "stale", "x");
    spin_ms(ttl_ms + 30);
    st = cache_stats(c);
    CHECK(st.len == 2); /* "refreshed" and the expired "stale": still held */
    CHECK_STATUS(emf_cache_remove(c, u8("stale"), 5), EMF_OK);
    /* ... and "refreshed", last put TTL + 30 ms ago (more than a coarse clock tick past its
     * TTL), reads as expired. */
    CHECK(!cache_has(c, "refreshed", "v1"));
    st = cache_stats(c);
    CHECK(st.len == 0 && st.expirations == 6);
    CHECK_STATUS(emf_cache_free(c), EMF_OK);

    /* No TTL (0): entries never expire; sweep finds nothing. */
    c = new_cache(4, 0, 1);
    put_text(c, "forever", "1");
    size_t removed = 99;
    CHECK_STATUS(emf_cache_sweep(c, &removed), EMF_OK);
    CHECK(removed == 0 && cache_has(c, "forever", "1"));
    CHECK_STATUS(emf_cache_free(c), EMF_OK);
}

static void test_cache_sweep(void) {
    /* sweep(): nothing while the entries are young; all of them once expired. */
    const uint64_t ttl_ms = 30;
    emf_cache_t *c = new_cache(64, ttl_ms, 2);
    char key[16];
    uint64_t t0 = now_ns();
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "s%d", i);
        put_text(c, key, "v");
    }
    /* Every sweep that removes something must end at least the TTL after the puts began
     * (an upper bound of the entries' life: the check can only be lenient). */
    size_t removed = 99, total = 0, early = 0;
    uint64_t deadline = now_ns() + 10000000000u;
    while (total < 5 && now_ns() < deadline) {
        removed = 99;
        if (emf_cache_sweep(c, &removed) != EMF_OK || removed > 5) {
            CHECK_STATUS(emf_cache_sweep(c, &removed), EMF_OK);
            break;
        }
        if (removed > 0 && now_ns() - t0 < ttl_ms * 1000000u) early += removed;
        total += removed;
        sched_yield();
    }
    CHECK(total == 5);
    CHECK(early == 0);
    CHECK_STATUS(emf_cache_sweep(c, NULL), EMF_OK); /* out_removed may be NULL */
    emf_cache_stats_t st = cache_stats(c);
    CHECK(st.len == 0 && st.expirations == 5 && st.hits == 0 && st.misses == 0);
    CHECK_STATUS(emf_cache_free(c), EMF_OK);

    /* The background sweeper: expired entries disappear without any call touching them. */
    c = new_cache(64, 20, 4);
    CHECK_STATUS(emf_cache_set_sweeper(c, 2), EMF_OK);
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof key, "bg%d", i);
        put_text(c, key, "v");
    }
    /* (Polls yield the CPU: under valgrind, which runs one thread at a time, a loop that
     * never yields can starve the sweeper thread.) */
    deadline = now_ns() + 10000000000u;
    do {
        sched_yield();
        st = cache_stats(c);
    } while (st.len != 0 && now_ns() < deadline);
    CHECK(st.len == 0 && st.expirations == 8 && st.misses == 0);

    /* Restarted with other periods, then stopped (twice: harmless). Stopped, it removes
     * nothing: an entry expired for many of the last period (2 ms) is still held, and the
     * first get finds it expired. (Absence cannot be polled for: this waits on the clock.) */
    CHECK_STATUS(emf_cache_set_sweeper(c, 50), EMF_OK);
    CHECK_STATUS(emf_cache_set_sweeper(c, 2), EMF_OK);
    CHECK_STATUS(emf_cache_set_sweeper(c, 0), EMF_OK);
    CHECK_STATUS(emf_cache_set_sweeper(c, 0), EMF_OK);
    put_text(c, "kept", "v");
    spin_ms(100);
    CHECK(cache_stats(c).len == 1);
    CHECK(!cache_has(c, "kept", "v"));
    st = cache_stats(c);
    CHECK(st.len == 0 && st.expirations == 9 && st.misses == 1);
    /* Freed with a sweeper running: the free stops and joins it (valgrind checks). */
    CHECK_STATUS(emf_cache_set_sweeper(c, 1), EMF_OK);
    CHECK_STATUS(emf_cache_free(c), EMF_OK);
}

/* Child: a capacity too large to allocate must be refused (EMF_ERR_TOO_LARGE), not
 * abort the process; the largest one allowed (2^31) must not allocate it up front. Runs under
 * an address-space limit of 1 GiB more than the child uses, so that a library that tries
 * anyway fails to allocate instead of exhausting the machine. Exit 0 when all went right. */
static int huge_capacity_child(void) {
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
    int code = 0;
    emf_cache_t *c = NULL;
    emf_status_t st = emf_cache_new(SIZE_MAX, 0, 0, &c);
    if (st != EMF_ERR_TOO_LARGE) {
        fprintf(stderr, "  emf_cache_new(SIZE_MAX): %s, expected EMF_ERR_TOO_LARGE\n",
                emf_status_name(st));
        if (st == EMF_OK) emf_cache_free(c);
        code |= 1;
    }
    c = NULL;
    st = emf_cache_new(((size_t)1 << 31) + 1, 0, 1, &c);
    if (st != EMF_ERR_TOO_LARGE) {
        fprintf(stderr, "  emf_cache_new(2^31 + 1): %s, expected EMF_ERR_TOO_LARGE\n",
                emf_status_name(st));
        if (st == EMF_OK) emf_cache_free(c);
        code |= 2;
    }
    c = NULL;
    st = emf_cache_new((size_t)1 << 31, 0, 1, &c);
    if (st != EMF_OK) {
        fprintf(stderr, "  emf_cache_new(2^31, 1 shard): %s (%s)\n", emf_status_name(st),
                last_error());
        code |= 4;
    } else {
        if (emf_cache_put(c, u8("k"), 1, u8("v"), 1) != EMF_OK) code |= 8;
        emf_cache_free(c);
    }
    return code;
}

static void test_cache_huge_capacity(void) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int code = huge_capacity_child();
        fflush(stderr);
        _exit(code);
    }
    CHECK(pid > 0);
    if (pid <= 0) return;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) break;
    }
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok) {
        fprintf(stderr, "  huge-capacity child: %s %d\n",
                WIFEXITED(status) ? "exit status" : "killed by signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    }
    CHECK(ok && "a huge capacity is refused, not an abort, and 2^31 is taken lazily");
}

static void test_cache_bad_input(void) {
    static char marker;
    emf_cache_t *const cs = (emf_cache_t *)(void *)&marker;
    emf_cache_t *c = new_cache(8, 0, 1);
    emf_cache_t *out_c = cs;
    emf_buf_t out = sentinel_buf();
    uint8_t buf[16];
    size_t len = 777, removed = 777;
    emf_cache_stats_t st;

    CHECK_ERROR(emf_cache_new(8, 0, 1, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK(out_c == cs);

    /* NULL handle, key, value and out-parameters. */
    CHECK_ERROR(emf_cache_put(NULL, u8("k"), 1, u8("v"), 1), EMF_ERR_NULL_ARGUMENT, "cache");
    CHECK_ERROR(emf_cache_put(c, NULL, 1, u8("v"), 1), EMF_ERR_NULL_ARGUMENT, "key");
    CHECK_ERROR(emf_cache_put(c, u8("k"), 1, NULL, 1), EMF_ERR_NULL_ARGUMENT, "value");
    CHECK_ERROR(emf_cache_get(NULL, u8("k"), 1, &out), EMF_ERR_NULL_ARGUMENT, "cache");
    CHECK_ERROR(emf_cache_get(c, NULL, 1, &out), EMF_ERR_NULL_ARGUMENT, "key");
    CHECK_ERROR(emf_cache_get(c, u8("k"), 1, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_cache_get_into(NULL, u8("k"), 1, buf, sizeof buf, &len),
                EMF_ERR_NULL_ARGUMENT, "cache");
    CHECK_ERROR(emf_cache_get_into(c, NULL, 1, buf, sizeof buf, &len), EMF_ERR_NULL_ARGUMENT,
                "key");
    CHECK_ERROR(emf_cache_get_into(c, u8("k"), 1, NULL, 8, &len), EMF_ERR_NULL_ARGUMENT, "buf");
    CHECK_ERROR(emf_cache_get_into(c, u8("k"), 1, buf, sizeof buf, NULL), EMF_ERR_NULL_ARGUMENT,
                "out_len");
    CHECK_ERROR(emf_cache_remove(NULL, u8("k"), 1), EMF_ERR_NULL_ARGUMENT, "cache");
    CHECK_ERROR(emf_cache_remove(c, NULL, 1), EMF_ERR_NULL_ARGUMENT, "key");
    CHECK_ERROR(emf_cache_sweep(NULL, &removed), EMF_ERR_NULL_ARGUMENT, "cache");
    CHECK_ERROR(emf_cache_set_sweeper(NULL, 5), EMF_ERR_NULL_ARGUMENT, "cache");
    CHECK_ERROR(emf_cache_stats(NULL, &st), EMF_ERR_NULL_ARGUMENT, "cache");
    CHECK_ERROR(emf_cache_stats(c, NULL), EMF_ERR_NULL_ARGUMENT, "out");

    /* Lengths past EMF_MAX_INPUT_LEN: refused before any byte is read. */
    CHECK_ERROR(emf_cache_put(c, u8("k"), (size_t)EMF_MAX_INPUT_LEN + 1, u8("v"), 1),
                EMF_ERR_TOO_LARGE, "exceeds");
    CHECK_ERROR(emf_cache_put(c, u8("k"), 1, u8("v"), SIZE_MAX), EMF_ERR_TOO_LARGE, "exceeds");
    CHECK_ERROR(emf_cache_get(c, u8("k"), SIZE_MAX, &out), EMF_ERR_TOO_LARGE, "exceeds");
    CHECK_ERROR(emf_cache_remove(c, u8("k"), (size_t)EMF_MAX_INPUT_LEN + 1), EMF_ERR_TOO_LARGE,
                "exceeds");
    CHECK(is_sentinel(out) && len == 777 && removed == 777);
    emf_cache_stats_t s = cache_stats(c);
    CHECK(s.len == 0 && s.hits == 0 && s.misses == 0);

    /* Made-up values and handles of another type. */
    emf_task_queue_t *q = new_queue(2, 0, EMF_DROP_NONE);
    CHECK_ERROR(emf_cache_get(cs, u8("k"), 1, &out), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_cache_put((const emf_cache_t *)(const void *)q, u8("k"), 1, u8("v"), 1),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_cache_stats((const emf_cache_t *)(uintptr_t)0xDEADBEEF0001u, &st),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK(is_sentinel(out));
    CHECK_STATUS(emf_task_queue_free(q), EMF_OK);

    /* Use after free and double free, with a sweeper running at the free. */
    put_text(c, "k", "v");
    CHECK_STATUS(emf_cache_set_sweeper(c, 1), EMF_OK);
    CHECK_STATUS(emf_cache_free(c), EMF_OK);
    CHECK_ERROR(emf_cache_put(c, u8("k"), 1, u8("v"), 1), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_cache_get(c, u8("k"), 1, &out), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_cache_get_into(c, u8("k"), 1, buf, sizeof buf, &len),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_cache_remove(c, u8("k"), 1), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_cache_sweep(c, &removed), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_cache_set_sweeper(c, 5), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_cache_stats(c, &st), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_cache_free(c), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK(is_sentinel(out) && len == 777 && removed == 777);
    CHECK_STATUS(emf_cache_free(NULL), EMF_OK);

    /* A buffer from emf_cache_get: freed once; the stale copy is refused. */
    c = new_cache(8, 0, 1);
    put_text(c, "k", "value");
    out = EMPTY_BUF;
    CHECK_STATUS(emf_cache_get(c, u8("k"), 1, &out), EMF_OK);
    emf_buf_t copy = out;
    CHECK_STATUS(emf_buf_free(&out), EMF_OK);
    CHECK_ERROR(emf_buf_free(&copy), EMF_ERR_INVALID_ARGUMENT, "buffer");
    CHECK_STATUS(emf_cache_free(c), EMF_OK);
}

int main(void) {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "liberlmcp_flow has ABI %u, this program was compiled for ABI %u\n",
                emf_abi_version(), EMF_ABI_VERSION);
        return 2;
    }
    test_cache_huge_capacity(); /* first: the child forks before anything is allocated */
    test_queue_order();
    test_queue_backpressure();
    test_queue_eviction();
    test_queue_defaults();
    test_queue_bad_input();
    test_cache_basic();
    test_cache_lru();
    test_cache_ttl();
    test_cache_sweep();
    test_cache_bad_input();

    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}

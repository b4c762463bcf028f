/*
 * pool.c — a C11 host of the erlmcp-flow pool manager (emf_pool_*), built against the
 * installed header and library (`pkg-config --cflags --libs erlmcp_flow`).
 *
 * The host "starts" agents by naming them (a real host would spawn a process and report its
 * id once it is up) and carries out the pool's actions with its own clock (a counter of
 * microseconds; the pool never reads one):
 *   - warm-up: min 3 agents, one start per 100 ms, at most 2 in flight; checked tick by tick;
 *   - a failed start is retried after a back-off, a dead agent is replaced;
 *   - demand with every agent busy grows the pool by one, an idle agent above min is stopped;
 *   - a STOP whose agent id does not fit the buffer stays pending;
 *   - bad input: NULL arguments, an unknown slot and agent, a bad config, a freed handle.
 *
 * Output: one line per failed check on stderr, then exactly one line `N passed, M failed`.
 * Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded library has another ABI.
 */
#include <erlmcp_flow.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define MS 1000ull

struct action {
    uint32_t kind;
    uint64_t slot;
    char agent[200];
};

static struct action poll_one(emf_pool_t *p) {
    struct action a = {0};
    size_t len = 0;
    CHECK_STATUS(emf_pool_poll_action(p, &a.kind, &a.slot, a.agent, sizeof a.agent, &len), EMF_OK);
    CHECK(strlen(a.agent) == len);
    return a;
}

/* Answers every pending START with agent "w<slot>"; returns how many there were. */
static int start_all(emf_pool_t *p, uint64_t now) {
    int n = 0;
    for (;;) {
        struct action a = poll_one(p);
        if (a.kind == EMF_POOL_ACTION_NONE) {
            return n;
        }
        CHECK(a.kind == EMF_POOL_ACTION_START);
        char name[32];
        snprintf(name, sizeof name, "w%llu", (unsigned long long)a.slot);
        CHECK_STATUS(emf_pool_started(p, a.slot, name, now), EMF_OK);
        n++;
    }
}

static emf_pool_stats_t stats(emf_pool_t *p) {
    emf_pool_stats_t s;
    memset(&s, 0, sizeof s);
    CHECK_STATUS(emf_pool_stats(p, &s), EMF_OK);
    return s;
}

static void warm_up_and_lifecycle(void) {
    emf_pool_options_t o;
    CHECK_STATUS(emf_pool_options_default(&o), EMF_OK);
    CHECK(o.min_size == 5 && o.max_size == 20 && o.warmup_delay_us == 100 * MS);
    o.min_size = 3;
    o.max_size = 4;
    emf_pool_t *p = NULL;
    CHECK_STATUS(emf_pool_new(&o, "coder", &p), EMF_OK);
    if (p == NULL) {
        return;
    }

    /* Warm-up: the first start at once, then one per 100 ms; starts in flight held back. */
    uint64_t now = 1000;
    CHECK_STATUS(emf_pool_ensure_min(p, now), EMF_OK);
    struct action a = poll_one(p);
    CHECK(a.kind == EMF_POOL_ACTION_START && a.slot == 1);
    CHECK(poll_one(p).kind == EMF_POOL_ACTION_NONE);
    CHECK_STATUS(emf_pool_tick(p, now + 99 * MS), EMF_OK);
    CHECK(poll_one(p).kind == EMF_POOL_ACTION_NONE);
    uint64_t next = 0;
    CHECK_STATUS(emf_pool_next_deadline(p, &next), EMF_OK);
    CHECK(next == now + 100 * MS);
    now += 100 * MS;
    CHECK_STATUS(emf_pool_tick(p, now), EMF_OK);
    a = poll_one(p);
    CHECK(a.kind == EMF_POOL_ACTION_START && a.slot == 2);
    CHECK_STATUS(emf_pool_started(p, 1, "w1", now), EMF_OK);
    CHECK_STATUS(emf_pool_start_failed(p, 2, "exec: no such file", now), EMF_OK);
    emf_pool_stats_t s = stats(p);
    CHECK(s.live == 1 && s.starting == 0 && s.failed_starts == 1);
    /* The failed start backs off: max(100 ms, 10 ms) x 2 = 200 ms. */
    now += 199 * MS;
    CHECK_STATUS(emf_pool_tick(p, now), EMF_OK);
    CHECK(poll_one(p).kind == EMF_POOL_ACTION_NONE);
    now += 1 * MS;
    CHECK_STATUS(emf_pool_tick(p, now), EMF_OK);
    CHECK(start_all(p, now) == 1);
    now += 100 * MS;
    CHECK_STATUS(emf_pool_tick(p, now), EMF_OK);
    CHECK(start_all(p, now) == 1);
    s = stats(p);
    CHECK(s.live == 3 && s.idle == 3 && s.started_total == 3);

    /* A death is replaced. */
    CHECK_STATUS(emf_pool_agent_gone(p, "w1", now), EMF_OK);
    now += 100 * MS;
    CHECK_STATUS(emf_pool_tick(p, now), EMF_OK);
    CHECK(start_all(p, now) == 1);
    s = stats(p);
    CHECK(s.live == 3 && s.died == 1 && s.replaced == 1);

    /* Demand with every agent busy: one more (100 ms after the last start), up to max_size 4. */
    now += 100 * MS;
    CHECK_STATUS(emf_pool_demand(p, 10, now), EMF_OK);
    CHECK(poll_one(p).kind == EMF_POOL_ACTION_NONE); /* idle agents take the queue */
    CHECK_STATUS(emf_pool_observe(p, "w3", 1, now), EMF_OK);
    CHECK_STATUS(emf_pool_observe(p, "w4", 1, now), EMF_OK);
    CHECK_STATUS(emf_pool_observe(p, "w5", 1, now), EMF_OK);
    CHECK(start_all(p, now) == 1);
    CHECK_STATUS(emf_pool_observe(p, "w6", 2, now), EMF_OK);
    now += 10000 * MS;
    CHECK_STATUS(emf_pool_tick(p, now), EMF_OK);
    CHECK(poll_one(p).kind == EMF_POOL_ACTION_NONE); /* max_size reached */

    /* Demand over, w6 idle for 60 s: stopped (4 > min 3); the others are busy. */
    CHECK_STATUS(emf_pool_demand(p, 0, now), EMF_OK);
    CHECK_STATUS(emf_pool_observe(p, "w6", 0, now), EMF_OK);
    now += 60000 * MS;
    CHECK_STATUS(emf_pool_tick(p, now), EMF_OK);
    uint32_t kind = 0;
    uint64_t slot = 9;
    size_t len = 0;
    char small[2];
    CHECK_STATUS(emf_pool_poll_action(p, &kind, &slot, small, sizeof small, &len),
                 EMF_ERR_BUFFER_TOO_SMALL);
    CHECK(len == 2);
    a = poll_one(p);
    CHECK(a.kind == EMF_POOL_ACTION_STOP && a.slot == 0 && strcmp(a.agent, "w6") == 0);
    s = stats(p);
    CHECK(s.live == 3 && s.stopping == 1 && s.stopped_total == 1);
    CHECK_STATUS(emf_pool_agent_gone(p, "w6", now), EMF_OK);
    s = stats(p);
    CHECK(s.stopping == 0 && s.died == 1);

    CHECK_STATUS(emf_pool_free(p), EMF_OK);
}

static void bad_input(void) {
    emf_pool_t *p = NULL;
    emf_pool_options_t o;
    CHECK_STATUS(emf_pool_options_default(&o), EMF_OK);
    o.min_size = 5;
    o.max_size = 4;
    CHECK_ERROR(emf_pool_new(&o, "t", &p), EMF_ERR_INVALID_ARGUMENT, "min_size");
    CHECK_STATUS(emf_pool_new(NULL, NULL, &p), EMF_ERR_NULL_ARGUMENT);
    CHECK_STATUS(emf_pool_new(NULL, "t", NULL), EMF_ERR_NULL_ARGUMENT);
    CHECK_STATUS(emf_pool_options_default(NULL), EMF_ERR_NULL_ARGUMENT);
    CHECK_STATUS(emf_pool_new(NULL, "t", &p), EMF_OK);
    if (p == NULL) {
        return;
    }
    CHECK_ERROR(emf_pool_started(p, 42, "w", 0), EMF_ERR_NOT_FOUND, "42");
    CHECK_ERROR(emf_pool_start_failed(p, 42, NULL, 0), EMF_ERR_NOT_FOUND, "42");
    CHECK_ERROR(emf_pool_agent_gone(p, "ghost", 0), EMF_ERR_NOT_FOUND, "ghost");
    CHECK_ERROR(emf_pool_observe(p, "ghost", 1, 0), EMF_ERR_NOT_FOUND, "ghost");
    CHECK_STATUS(emf_pool_observe(p, NULL, 1, 0), EMF_ERR_NULL_ARGUMENT);
    CHECK_STATUS(emf_pool_agent_gone(p, "..", 0), EMF_ERR_INVALID_ARGUMENT);
    uint32_t kind;
    uint64_t slot;
    size_t len;
    CHECK_STATUS(emf_pool_poll_action(p, NULL, &slot, NULL, 0, &len), EMF_ERR_NULL_ARGUMENT);
    CHECK_STATUS(emf_pool_poll_action(p, &kind, &slot, NULL, 8, &len), EMF_ERR_NULL_ARGUMENT);
    CHECK_STATUS(emf_pool_stats(p, NULL), EMF_ERR_NULL_ARGUMENT);
    CHECK_STATUS(emf_pool_ensure_min(p, 0), EMF_OK);
    CHECK_STATUS(emf_pool_poll_action(p, &kind, &slot, NULL, 0, &len), EMF_OK);
    CHECK(kind == EMF_POOL_ACTION_START && slot == 1 && len == 0);
    CHECK_STATUS(emf_pool_started(p, 1, "w", 0), EMF_OK);
    CHECK_ERROR(emf_pool_started(p, 1, "v", 0), EMF_ERR_INVALID_ARGUMENT, "already");

    CHECK_STATUS(emf_pool_free(p), EMF_OK);
    /* A freed handle is refused by every call, a double free too; NULL is fine for free. */
    emf_pool_stats_t s;
    CHECK_STATUS(emf_pool_tick(p, 0), EMF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(emf_pool_ensure_min(p, 0), EMF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(emf_pool_demand(p, 1, 0), EMF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(emf_pool_stats(p, &s), EMF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(emf_pool_poll_action(p, &kind, &slot, NULL, 0, &len), EMF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(emf_pool_free(p), EMF_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(emf_pool_free(NULL), EMF_OK);
    CHECK_STATUS(emf_pool_tick(NULL, 0), EMF_ERR_NULL_ARGUMENT);
}

int main(void) {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "liberlmcp_flow has ABI %u, this program was compiled for ABI %u\n",
                emf_abi_version(), EMF_ABI_VERSION);
        return 2;
    }
    warm_up_and_lifecycle();
    bad_input();
    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}

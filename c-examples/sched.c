/*
 * sched.c — a C11 host of the erlmcp-flow task scheduler (emf_sched_*), built against the
 * installed header and library (`pkg-config --cflags --libs erlmcp_flow`).
 *
 * A tiny in-process cycle: three agents of one type (capacity 4 each) and 100 tasks. The host
 * carries out the scheduler's actions: a DELIVER goes to the agent's inbox, each agent works
 * one task per round (emf_sched_started, then emf_sched_ack with the result "r:<payload>"),
 * and every RESULT is checked against its task's payload; a REVOKE (a steal by an idle agent)
 * removes the attempt from its agent's inbox. Halfway through, one agent dies
 * with tasks in its inbox (emf_sched_agent_dead): they are delivered again to the others.
 * The check: every task's result comes back exactly once, and the counters agree. The clock
 * is the host's own (a counter of microseconds), as the scheduler never reads one.
 *
 * Also: back-pressure (EMF_ERR_FULL from emf_sched_submit), agent selection (EMF_ERR_FULL
 * when no agent has capacity), NULL and bad arguments, a freed handle, and dead letters read
 * back with their reasons and payloads (emf_sched_dead_letter_count/_get).
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

#define AGENTS 3
#define TASKS 100
#define INBOX 64

struct job {
    uint64_t task;
    uint32_t attempt;
    char payload[32];
    size_t len;
};

struct agent {
    const char *name;
    int alive;
    struct job inbox[INBOX];
    size_t n;
};

static struct agent g_agents[AGENTS] = {{"a0", 1, {{0}}, 0}, {"a1", 1, {{0}}, 0}, {"a2", 1, {{0}}, 0}};
static char g_payload[TASKS + 1][32]; /* by task id (ids start at 1) */
static int g_results[TASKS + 1];
static unsigned g_revokes;

static struct agent *agent_named(const char *name) {
    for (int i = 0; i < AGENTS; i++) {
        if (strcmp(g_agents[i].name, name) == 0) {
            return &g_agents[i];
        }
    }
    return NULL;
}

/* Carries out every pending action; returns how many RESULTs came. */
static int drain(emf_sched_t *s) {
    int results = 0;
    for (;;) {
        emf_sched_action_t a;
        CHECK_STATUS(emf_sched_poll_action(s, &a), EMF_OK);
        if (a.kind == EMF_SCHED_ACTION_NONE) {
            return results;
        }
        if (a.kind == EMF_SCHED_ACTION_DELIVER) {
            struct agent *ag = agent_named(a.agent);
            CHECK(ag != NULL && ag->alive && ag->n < INBOX);
            CHECK(a.task >= 1 && a.task <= TASKS && a.len < sizeof ag->inbox[0].payload);
            if (ag == NULL || ag->n >= INBOX || a.len >= sizeof ag->inbox[0].payload) {
                continue;
            }
            struct job *j = &ag->inbox[ag->n++];
            j->task = a.task;
            j->attempt = a.attempt;
            j->len = a.len;
            memcpy(j->payload, a.data, a.len); /* valid until the next poll: copied now */
        } else if (a.kind == EMF_SCHED_ACTION_RESULT) {
            CHECK(a.task >= 1 && a.task <= TASKS);
            if (a.task >= 1 && a.task <= TASKS) {
                char want[40];
                int n = snprintf(want, sizeof want, "r:%s", g_payload[a.task]);
                CHECK(a.len == (size_t)n && memcmp(a.data, want, a.len) == 0);
                g_results[a.task]++;
            }
            results++;
        } else if (a.kind == EMF_SCHED_ACTION_REVOKE) {
            /* A steal (an idle agent takes a task not yet started) or a task completed
               elsewhere: the agent drops that attempt from its inbox. */
            struct agent *ag = agent_named(a.agent);
            int found = 0;
            for (size_t i = 0; ag != NULL && i < ag->n; i++) {
                if (ag->inbox[i].task == a.task && ag->inbox[i].attempt == a.attempt) {
                    memmove(&ag->inbox[i], &ag->inbox[i + 1], (ag->n - i - 1) * sizeof ag->inbox[0]);
                    ag->n--;
                    found = 1;
                    break;
                }
            }
            CHECK(found);
            g_revokes++;
        } else {
            fprintf(stderr, "unexpected action kind %u for task %llu\n", a.kind,
                    (unsigned long long)a.task);
            CHECK(0);
        }
    }
}

static void test_cycle(void) {
    emf_sched_t *s = NULL;
    emf_sched_options_t o;
    uint64_t now = 1000;
    CHECK_STATUS(emf_sched_options_default(&o), EMF_OK);
    o.heartbeat_timeout_us = 0; /* the host reports deaths itself */
    o.strategy = EMF_SCHED_ROUND_ROBIN;
    CHECK_STATUS(emf_sched_new(&o, EMF_LEDGER_MEMORY, NULL, NULL, now, &s), EMF_OK);
    if (s == NULL) {
        return;
    }
    for (int i = 0; i < AGENTS; i++) {
        CHECK_STATUS(emf_sched_register_agent(s, g_agents[i].name, "worker", 4, 0,
                                              (uint64_t)i + 1, now),
                     EMF_OK);
    }
    for (uint64_t i = 1; i <= TASKS; i++) {
        uint64_t id = 0;
        int n = snprintf(g_payload[i], sizeof g_payload[i], "task-%llu", (unsigned long long)i);
        CHECK_STATUS(emf_sched_submit(s, "worker", (uint32_t)(i % 4), (const uint8_t *)g_payload[i],
                                      (size_t)n, now, &id),
                     EMF_OK);
        CHECK(id == i);
    }
    int results = drain(s);
    for (int round = 0; round < 1000 && results < TASKS; round++) {
        now += 100;
        if (round == 5) {
            /* a2 dies with work in its inbox: the scheduler delivers it again elsewhere. */
            CHECK(g_agents[2].n > 0);
            g_agents[2].alive = 0;
            g_agents[2].n = 0;
            CHECK_STATUS(emf_sched_agent_dead(s, "a2", now), EMF_OK);
            CHECK_ERROR(emf_sched_heartbeat(s, "a2", now), EMF_ERR_NOT_FOUND, "a2");
        }
        for (int i = 0; i < AGENTS; i++) {
            struct agent *ag = &g_agents[i];
            if (!ag->alive || ag->n == 0) {
                continue;
            }
            struct job j = ag->inbox[0];
            memmove(&ag->inbox[0], &ag->inbox[1], (ag->n - 1) * sizeof ag->inbox[0]);
            ag->n--;
            int current = -1, duplicate = -1;
            char result[40];
            int n = snprintf(result, sizeof result, "r:%.*s", (int)j.len, j.payload);
            CHECK_STATUS(emf_sched_started(s, ag->name, j.task, j.attempt, now, &current), EMF_OK);
            CHECK(current == 1);
            CHECK_STATUS(emf_sched_ack(s, ag->name, j.task, j.attempt, (const uint8_t *)result,
                                       (size_t)n, now, &duplicate),
                         EMF_OK);
            CHECK(duplicate == 0);
            CHECK_STATUS(emf_sched_heartbeat(s, ag->name, now), EMF_OK);
            /* At once: a steal's REVOKE reaches its victim before the victim works again. */
            results += drain(s);
        }
        CHECK_STATUS(emf_sched_tick(s, now), EMF_OK);
        results += drain(s);
    }
    CHECK(results == TASKS);
    for (int i = 1; i <= TASKS; i++) {
        if (g_results[i] != 1) {
            fprintf(stderr, "task %d: %d results\n", i, g_results[i]);
        }
        CHECK(g_results[i] == 1);
    }
    emf_sched_stats_t st;
    CHECK_STATUS(emf_sched_stats(s, &st), EMF_OK);
    CHECK(st.completed == TASKS && st.queued == 0 && st.leased == 0);
    CHECK(st.agents == 2 && st.agents_dead == 1 && st.redeliveries > 0 && st.duplicates == 0);
    CHECK(st.steals <= g_revokes);
    printf("sched: %d tasks, %llu redelivered, %llu stolen, %u revoked\n", TASKS,
           (unsigned long long)st.redeliveries, (unsigned long long)st.steals, g_revokes);
    CHECK_STATUS(emf_sched_free(s), EMF_OK);
    CHECK_ERROR(emf_sched_tick(s, now), EMF_ERR_INVALID_ARGUMENT, "sched");
    CHECK_ERROR(emf_sched_free(s), EMF_ERR_INVALID_ARGUMENT, "sched");
}

static void test_backpressure_and_bad_input(void) {
    emf_sched_t *s = NULL;
    emf_sched_options_t o;
    uint64_t id = 0;
    size_t len = 0;
    char name[16];
    CHECK_STATUS(emf_sched_options_default(&o), EMF_OK);
    o.max_queued = 2;
    CHECK_STATUS(emf_sched_new(&o, EMF_LEDGER_MEMORY, NULL, NULL, 0, &s), EMF_OK);
    if (s == NULL) {
        return;
    }
    CHECK_STATUS(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, NULL, 0, 1, &id), EMF_OK);
    CHECK_STATUS(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, NULL, 0, 1, &id), EMF_OK);
    id = 77;
    CHECK_ERROR(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, NULL, 0, 1, &id), EMF_ERR_FULL,
                "max_queued");
    CHECK(id == 77);
    CHECK_ERROR(emf_sched_select_agent(s, "t", name, sizeof name, &len), EMF_ERR_FULL, "t");
    CHECK_STATUS(emf_sched_register_agent(s, "solo", "t", 1, 0, 9, 2), EMF_OK);
    CHECK_ERROR(emf_sched_select_agent(s, "t", name, sizeof name, &len), EMF_ERR_FULL,
                "capacity");
    CHECK_ERROR(emf_sched_register_agent(s, "../x", "t", 1, 0, 9, 2), EMF_ERR_INVALID_ARGUMENT,
                "x");
    CHECK_ERROR(emf_sched_register_agent(s, NULL, "t", 1, 0, 9, 2), EMF_ERR_NULL_ARGUMENT,
                "agent");
    CHECK_ERROR(emf_sched_submit(s, "t", 9, NULL, 0, 1, &id), EMF_ERR_INVALID_ARGUMENT,
                "priority");
    CHECK_ERROR(emf_sched_submit(s, "t", 0, NULL, 0, 1, NULL), EMF_ERR_NULL_ARGUMENT,
                "out_task_id");
    CHECK_ERROR(emf_sched_ack(s, "solo", 999, 1, NULL, 0, 3, NULL), EMF_ERR_NOT_FOUND, "999");
    CHECK_ERROR(emf_sched_poll_action(NULL, NULL), EMF_ERR_NULL_ARGUMENT, NULL);
    CHECK_ERROR(emf_sched_new(NULL, 7, NULL, NULL, 0, &s), EMF_ERR_INVALID_ARGUMENT, "ledger");
    CHECK_STATUS(emf_sched_free(s), EMF_OK);
    CHECK_STATUS(emf_sched_free(NULL), EMF_OK);
}

/* Dead letters with their payloads: two tasks refused once with max_attempts 1. Read by index
   (nothing is removed); lengths first with NULL buffers, then a too-small reason buffer
   (EMF_ERR_BUFFER_TOO_SMALL, nothing copied), then the bytes. */
static void test_dead_letters(void) {
    emf_sched_t *s = NULL;
    emf_sched_options_t o;
    uint64_t id = 0, task = 0;
    size_t count = 9, rlen = 0, plen = 0;
    int has = -1;
    CHECK_STATUS(emf_sched_options_default(&o), EMF_OK);
    o.max_attempts = 1;
    CHECK_STATUS(emf_sched_new(&o, EMF_LEDGER_MEMORY, NULL, NULL, 0, &s), EMF_OK);
    if (s == NULL) {
        return;
    }
    CHECK_STATUS(emf_sched_dead_letter_count(s, &count), EMF_OK);
    CHECK(count == 0);
    CHECK_STATUS(emf_sched_register_agent(s, "w", "t", 2, 0, 1, 1), EMF_OK);
    CHECK_STATUS(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, (const uint8_t *)"payload-1", 9, 2,
                                  &id),
                 EMF_OK);
    CHECK_STATUS(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, NULL, 0, 2, &id), EMF_OK);
    emf_sched_action_t a;
    uint64_t delivered[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        CHECK_STATUS(emf_sched_poll_action(s, &a), EMF_OK);
        CHECK(a.kind == EMF_SCHED_ACTION_DELIVER);
        delivered[i] = a.task;
    }
    for (int i = 0; i < 2; i++) {
        CHECK_STATUS(emf_sched_nack(s, "w", delivered[i], 1, "no disk", 3, NULL), EMF_OK);
        CHECK_STATUS(emf_sched_poll_action(s, &a), EMF_OK);
        CHECK(a.kind == EMF_SCHED_ACTION_DEAD_LETTER && a.task == delivered[i]);
    }
    CHECK_STATUS(emf_sched_dead_letter_count(s, &count), EMF_OK);
    CHECK(count == 2);
    CHECK_ERROR(emf_sched_dead_letter_get(s, 0, &task, NULL, 0, &rlen, NULL, 0, &plen, &has),
                EMF_ERR_BUFFER_TOO_SMALL, "reason");
    CHECK(task == delivered[0] && plen == 9 && has == 1 && rlen > 7);
    char reason[256];
    uint8_t payload[16];
    memset(reason, 'x', sizeof reason);
    CHECK(rlen < sizeof reason);
    CHECK_ERROR(emf_sched_dead_letter_get(s, 0, &task, reason, rlen, &rlen, payload,
                                          sizeof payload, &plen, &has),
                EMF_ERR_BUFFER_TOO_SMALL, "NUL");
    CHECK(reason[0] == 'x');
    CHECK_STATUS(emf_sched_dead_letter_get(s, 0, &task, reason, sizeof reason, &rlen, payload,
                                           sizeof payload, &plen, &has),
                 EMF_OK);
    CHECK(strlen(reason) == rlen && strstr(reason, "refused by agent w: no disk") != NULL);
    CHECK(plen == 9 && memcmp(payload, "payload-1", 9) == 0);
    CHECK_STATUS(emf_sched_dead_letter_get(s, 1, &task, reason, sizeof reason, &rlen, NULL, 0,
                                           &plen, NULL),
                 EMF_OK);
    CHECK(task == delivered[1] && plen == 0);
    CHECK_ERROR(emf_sched_dead_letter_get(s, 2, &task, reason, sizeof reason, &rlen, NULL, 0,
                                          &plen, NULL),
                EMF_ERR_NOT_FOUND, "dead letter 2");
    CHECK_ERROR(emf_sched_dead_letter_count(s, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_STATUS(emf_sched_free(s), EMF_OK);
    CHECK_ERROR(emf_sched_dead_letter_count(s, &count), EMF_ERR_INVALID_ARGUMENT, "sched");
}

/* The protections in the C options: a failing agent's breaker opens; a lagging agent gets no
   task until it drains; a rate limit answers EMF_ERR_FULL without accepting; bad settings. */
static void test_protections(void) {
    emf_sched_t *s = NULL;
    emf_sched_options_t o;
    emf_sched_action_t a;
    uint64_t id = 0, task = 0;
    uint32_t state = 99;
    CHECK_STATUS(emf_sched_options_default(&o), EMF_OK);
    CHECK(!o.breaker.enabled && !o.backpressure.enabled && !o.rate_limit.enabled);
    o.breaker.enabled = true;
    o.breaker.min_calls = 2;
    o.breaker.failure_ratio = 0.5;
    o.max_attempts = 5;
    CHECK_STATUS(emf_sched_new(&o, EMF_LEDGER_MEMORY, NULL, NULL, 0, &s), EMF_OK);
    if (s == NULL) {
        return;
    }
    CHECK_STATUS(emf_sched_register_agent(s, "bad", "t", 1, 0, 1, 0), EMF_OK);
    CHECK_STATUS(emf_sched_breaker_state(s, "bad", &state), EMF_OK);
    CHECK(state == EMF_BREAKER_CLOSED);
    CHECK_STATUS(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, NULL, 0, 10, &task), EMF_OK);
    for (uint32_t attempt = 1; attempt <= 2; attempt++) {
        CHECK_STATUS(emf_sched_poll_action(s, &a), EMF_OK);
        CHECK(a.kind == EMF_SCHED_ACTION_DELIVER && a.task == task && a.attempt == attempt);
        CHECK_STATUS(emf_sched_nack(s, "bad", task, attempt, "boom", 20 + attempt, NULL), EMF_OK);
    }
    CHECK_STATUS(emf_sched_breaker_state(s, "bad", &state), EMF_OK);
    CHECK(state == EMF_BREAKER_OPEN);
    CHECK_STATUS(emf_sched_poll_action(s, &a), EMF_OK);
    CHECK(a.kind == EMF_SCHED_ACTION_NONE); /* its only agent is shunned: the task waits */
    CHECK_STATUS(emf_sched_register_agent(s, "good", "t", 1, 0, 2, 30), EMF_OK);
    CHECK_STATUS(emf_sched_poll_action(s, &a), EMF_OK);
    CHECK(a.kind == EMF_SCHED_ACTION_DELIVER && strcmp(a.agent, "good") == 0);
    CHECK_ERROR(emf_sched_breaker_state(s, "nobody", &state), EMF_ERR_NOT_FOUND, "nobody");
    CHECK_ERROR(emf_sched_breaker_state(s, "bad", NULL), EMF_ERR_NULL_ARGUMENT, "out_state");
    CHECK_ERROR(emf_sched_observe_lag(s, "good", 5, 40), EMF_ERR_INVALID_ARGUMENT,
                "back-pressure is off");
    CHECK_STATUS(emf_sched_free(s), EMF_OK);

    CHECK_STATUS(emf_sched_options_default(&o), EMF_OK);
    o.backpressure.enabled = true;
    o.backpressure.high_water = 4;
    o.backpressure.low_water = 1;
    CHECK_STATUS(emf_sched_new(&o, EMF_LEDGER_MEMORY, NULL, NULL, 0, &s), EMF_OK);
    if (s == NULL) {
        return;
    }
    CHECK_STATUS(emf_sched_register_agent(s, "slow", "t", 5, 0, 1, 0), EMF_OK);
    CHECK_STATUS(emf_sched_observe_lag(s, "slow", 10, 1), EMF_OK);
    CHECK_STATUS(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, NULL, 0, 2, &id), EMF_OK);
    CHECK_STATUS(emf_sched_poll_action(s, &a), EMF_OK);
    CHECK(a.kind == EMF_SCHED_ACTION_NONE);
    CHECK_STATUS(emf_sched_observe_lag(s, "slow", 0, 3), EMF_OK);
    CHECK_STATUS(emf_sched_poll_action(s, &a), EMF_OK);
    CHECK(a.kind == EMF_SCHED_ACTION_DELIVER && a.task == id);
    CHECK_ERROR(emf_sched_observe_lag(s, "ghost", 0, 4), EMF_ERR_NOT_FOUND, "ghost");
    CHECK_STATUS(emf_sched_free(s), EMF_OK);

    CHECK_STATUS(emf_sched_options_default(&o), EMF_OK);
    o.rate_limit.enabled = true;
    o.rate_limit.burst = 2;
    o.rate_limit.initial_milli_per_sec = 1000;
    CHECK_STATUS(emf_sched_new(&o, EMF_LEDGER_MEMORY, NULL, NULL, 0, &s), EMF_OK);
    if (s == NULL) {
        return;
    }
    CHECK_STATUS(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, NULL, 0, 0, &id), EMF_OK);
    CHECK_STATUS(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, NULL, 0, 0, &id), EMF_OK);
    id = 55;
    CHECK_STATUS(emf_sched_submit(s, "t", EMF_PRIORITY_NORMAL, NULL, 0, 0, &id), EMF_ERR_FULL);
    CHECK(id == 55);
    CHECK_STATUS(emf_sched_free(s), EMF_OK);

    CHECK_STATUS(emf_sched_options_default(&o), EMF_OK);
    o.breaker.enabled = true;
    o.breaker.failure_ratio = 2.0;
    s = NULL;
    CHECK_ERROR(emf_sched_new(&o, EMF_LEDGER_MEMORY, NULL, NULL, 0, &s), EMF_ERR_INVALID_ARGUMENT,
                "failure");
    CHECK(s == NULL);
    CHECK_STATUS(emf_sched_options_default(&o), EMF_OK);
    o.backpressure.enabled = true;
    o.backpressure.low_water = o.backpressure.high_water;
    CHECK_STATUS(emf_sched_new(&o, EMF_LEDGER_MEMORY, NULL, NULL, 0, &s),
                 EMF_ERR_INVALID_ARGUMENT);
}

int main(void) {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "liberlmcp_flow has ABI %u, this program was compiled for ABI %u\n",
                emf_abi_version(), EMF_ABI_VERSION);
        return 2;
    }
    test_cycle();
    test_backpressure_and_bad_input();
    test_dead_letters();
    test_protections();
    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}

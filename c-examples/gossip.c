/*
 * gossip.c — a C11 host running gossip members in-process (emf_gossip_*), built against the
 * installed header and library.
 *
 * Three members over rings in a fresh directory under /dev/shm:
 *   - they find each other (emf_gossip_members: every other member alive);
 *   - a put on member 2, spread by forced rounds (emf_gossip_round), arrives at member 1 as
 *     an EMF_GOSSIP_EVENT_KEY_CHANGED event with the value, and a delete as one with
 *     deleted = 1; emf_gossip_get agrees;
 *   - member 3 leaves and member 2 is freed without leaving (a crash): member 1 reports both
 *     EMF_GOSSIP_EVENT_MEMBER_DOWN;
 *   - the scheduler hook: agents recorded on member 2 (emf_sched_set_agent_host) are removed
 *     by emf_sched_host_down when member 1 reports member 2 down;
 *   - bad input: NULL arguments, no transport, a seed that is not a peer, a key too large, a
 *     members buffer too small.
 * The members run on the library's threads; every call here may come from any thread.
 *
 * Output: one line per failed check on stderr, then exactly one line `N passed, M failed`.
 * Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded library has another ABI.
 */
#define _POSIX_C_SOURCE 200809L /* getpid, nanosleep */

#include <erlmcp_flow.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* A 10 ms pause of a bounded polling loop. */
static void nap(void) {
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
}

static void rm_rf(const char *dir) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot remove %s\n", dir);
    }
}

/* Member `id` of {1, 2, 3} over the rings of `dir`, seeded with member 1, fast timings. */
static emf_gossip_t *start(const char *dir, uint64_t id) {
    emf_gossip_options_t o;
    CHECK_STATUS(emf_gossip_options_default(&o), EMF_OK);
    uint64_t peers[2];
    size_t n = 0;
    for (uint64_t p = 1; p <= 3; p++) {
        if (p != id) {
            peers[n++] = p;
        }
    }
    static const uint64_t seed = 1;
    o.id = id;
    o.ring_dir = dir;
    o.inbox_capacity = 1 << 16;
    o.peers = peers;
    o.n_peers = n;
    if (id != 1) {
        o.seeds = &seed;
        o.n_seeds = 1;
    }
    o.gossip_interval_us = 20000;
    o.probe_period_us = 100000;
    o.suspicion_timeout_us = 1000000;
    o.generation = 1;
    emf_gossip_t *g = NULL;
    CHECK_STATUS(emf_gossip_start(&o, &g), EMF_OK);
    return g;
}

/* The number of members `g` sees alive. */
static size_t alive(emf_gossip_t *g) {
    emf_gossip_member_t ms[8];
    size_t n = 0;
    if (emf_gossip_members(g, ms, 8, &n) != EMF_OK) {
        return 0;
    }
    size_t live = 0;
    for (size_t i = 0; i < n; i++) {
        live += ms[i].state == EMF_GOSSIP_ALIVE;
    }
    return live;
}

/* Waits (at most 20 s) for an event of `kind` on `g` (others are skipped; their buffers
 * freed); 1 when it came, with *out filled (the caller frees its key and value). */
static int wait_event(emf_gossip_t *g, uint32_t kind, emf_gossip_event_t *out) {
    for (int i = 0; i < 200; i++) {
        emf_gossip_event_t e;
        memset(&e, 0, sizeof e);
        emf_status_t st = emf_gossip_next_event(g, 100, &e);
        if (st == EMF_ERR_TIMEOUT) {
            continue;
        }
        if (st != EMF_OK) {
            fprintf(stderr, "next_event: %s: %s\n", emf_status_name(st), last_error());
            return 0;
        }
        if (e.kind == kind) {
            *out = e;
            return 1;
        }
        emf_buf_free(&e.key);
        emf_buf_free(&e.value);
    }
    return 0;
}

static void cluster(const char *dir) {
    emf_gossip_t *m1 = start(dir, 1), *m2 = start(dir, 2), *m3 = start(dir, 3);
    if (m1 == NULL || m2 == NULL || m3 == NULL) {
        return;
    }
    int formed = 0;
    for (int i = 0; i < 2000 && !formed; i++) {
        formed = alive(m1) == 2 && alive(m2) == 2 && alive(m3) == 2;
        if (!formed) {
            nap();
        }
    }
    CHECK(formed);

    uint64_t counter = 0, rounds = 0, rounds2 = 0;
    CHECK_STATUS(emf_gossip_put(m2, (const uint8_t *)"agent/7", 7, (const uint8_t *)"host-2",
                                6, &counter),
                 EMF_OK);
    CHECK(counter > 0);
    CHECK_STATUS(emf_gossip_round(m2, &rounds), EMF_OK);
    CHECK_STATUS(emf_gossip_round(m2, &rounds2), EMF_OK);
    CHECK(rounds2 > rounds);
    emf_gossip_event_t e;
    CHECK(wait_event(m1, EMF_GOSSIP_EVENT_KEY_CHANGED, &e));
    CHECK(e.key.len == 7 && memcmp(e.key.data, "agent/7", 7) == 0);
    CHECK(e.value.len == 6 && memcmp(e.value.data, "host-2", 6) == 0);
    CHECK(e.deleted == 0 && e.version_origin == 2 && e.version_counter == counter);
    CHECK_STATUS(emf_buf_free(&e.key), EMF_OK);
    CHECK_STATUS(emf_buf_free(&e.value), EMF_OK);
    emf_buf_t v = {0};
    CHECK_STATUS(emf_gossip_get(m1, (const uint8_t *)"agent/7", 7, &v), EMF_OK);
    CHECK(v.len == 6 && memcmp(v.data, "host-2", 6) == 0);
    CHECK_STATUS(emf_buf_free(&v), EMF_OK);

    /* Member 3 deletes the key once it holds it (the put reached member 1 first; member 3
       may still be a round behind: a delete of a key it does not hold writes nothing). */
    int held = 0;
    for (int i = 0; i < 2000 && !held; i++) {
        emf_buf_t h = {0};
        held = emf_gossip_get(m3, (const uint8_t *)"agent/7", 7, &h) == EMF_OK;
        emf_buf_free(&h);
        if (!held) {
            nap();
        }
    }
    CHECK(held);
    uint32_t deleted = 0;
    CHECK_STATUS(emf_gossip_delete(m3, (const uint8_t *)"agent/7", 7, &deleted), EMF_OK);
    CHECK(deleted == 1);
    CHECK(wait_event(m1, EMF_GOSSIP_EVENT_KEY_CHANGED, &e));
    CHECK(e.deleted == 1 && e.value.len == 0 && e.version_origin == 3);
    emf_buf_free(&e.key);
    emf_buf_free(&e.value);
    CHECK_ERROR(emf_gossip_get(m1, (const uint8_t *)"agent/7", 7, &v), EMF_ERR_NOT_FOUND,
                "no value");

    /* The scheduler learns of hosts from membership. */
    emf_sched_t *s = NULL;
    CHECK_STATUS(emf_sched_new(NULL, EMF_LEDGER_MEMORY, NULL, NULL, 0, &s), EMF_OK);
    CHECK_STATUS(emf_sched_register_agent(s, "a1", "t", 2, 0, 1, 0), EMF_OK);
    CHECK_STATUS(emf_sched_register_agent(s, "a2", "t", 2, 0, 2, 0), EMF_OK);
    CHECK_STATUS(emf_sched_set_agent_host(s, "a1", 2), EMF_OK);
    CHECK_STATUS(emf_sched_set_agent_host(s, "a2", 1), EMF_OK);
    CHECK_ERROR(emf_sched_set_agent_host(s, "nobody", 2), EMF_ERR_NOT_FOUND, "nobody");

    /* Member 3 leaves; member 2 crashes (freed without leaving). */
    CHECK_STATUS(emf_gossip_leave(m3), EMF_OK);
    CHECK(wait_event(m1, EMF_GOSSIP_EVENT_MEMBER_DOWN, &e));
    CHECK(e.member == 3);
    CHECK_STATUS(emf_gossip_free(m2), EMF_OK);
    CHECK(wait_event(m1, EMF_GOSSIP_EVENT_MEMBER_DOWN, &e));
    CHECK(e.member == 2);
    size_t gone = 0;
    CHECK_STATUS(emf_sched_host_down(s, e.member, 1, &gone), EMF_OK);
    CHECK(gone == 1);
    CHECK_STATUS(emf_sched_heartbeat(s, "a2", 2), EMF_OK);
    CHECK_ERROR(emf_sched_heartbeat(s, "a1", 2), EMF_ERR_NOT_FOUND, NULL);
    CHECK_STATUS(emf_sched_free(s), EMF_OK);

    emf_gossip_stats_t st;
    CHECK_STATUS(emf_gossip_stats(m1, &st), EMF_OK);
    CHECK(st.rejected == 0 && st.frames_in > 0 && st.rounds > 0);
    emf_gossip_member_t one[1];
    size_t n = 0;
    CHECK_ERROR(emf_gossip_members(m1, one, 1, &n), EMF_ERR_BUFFER_TOO_SMALL, "room for 1");
    CHECK(n == 2);
    CHECK_STATUS(emf_gossip_free(m3), EMF_OK);
    CHECK_STATUS(emf_gossip_free(m1), EMF_OK);
}

static void bad_input(const char *dir) {
    emf_gossip_options_t o;
    emf_gossip_t *g = NULL;
    CHECK_ERROR(emf_gossip_start(NULL, &g), EMF_ERR_NULL_ARGUMENT, "opts");
    CHECK_STATUS(emf_gossip_options_default(&o), EMF_OK);
    o.id = 1;
    CHECK_ERROR(emf_gossip_start(&o, &g), EMF_ERR_INVALID_ARGUMENT, "ring_dir");
    uint64_t peer = 2, seed = 3;
    o.ring_dir = dir;
    o.peers = &peer;
    o.n_peers = 1;
    o.seeds = &seed;
    o.n_seeds = 1;
    CHECK_ERROR(emf_gossip_start(&o, &g), EMF_ERR_INVALID_ARGUMENT, "seed 3");
    o.n_seeds = 0;
    CHECK_STATUS(emf_gossip_start(&o, &g), EMF_OK);
    static uint8_t big[2048];
    CHECK_ERROR(emf_gossip_put(g, big, sizeof big, (const uint8_t *)"v", 1, NULL),
                EMF_ERR_TOO_LARGE, "key");
    CHECK_ERROR(emf_gossip_put(g, NULL, 1, NULL, 0, NULL), EMF_ERR_NULL_ARGUMENT, "key");
    CHECK_ERROR(emf_gossip_next_event(g, 0, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    emf_gossip_event_t e;
    CHECK_ERROR(emf_gossip_next_event(g, 0, &e), EMF_ERR_TIMEOUT, "no event");
    CHECK_STATUS(emf_gossip_free(g), EMF_OK);
    CHECK(emf_gossip_free(g) != EMF_OK);
    CHECK_STATUS(emf_gossip_free(NULL), EMF_OK);
}

int main(void) {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "ABI mismatch: library %u, header %u\n", emf_abi_version(),
                EMF_ABI_VERSION);
        return 2;
    }
    char dir[256];
    snprintf(dir, sizeof dir, "/dev/shm/emf-gossip-c-%ld", (long)getpid());
    cluster(dir);
    rm_rf(dir);
    snprintf(dir, sizeof dir, "/dev/shm/emf-gossip-c-bad-%ld", (long)getpid());
    bad_input(dir);
    rm_rf(dir);
    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}

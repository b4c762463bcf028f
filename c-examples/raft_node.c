/*
 * raft_node.c — a C11 host that IS the nodes of a Raft cluster with its own state machine
 * (emf_raft_node_*), built against the installed header and library.
 *
 * Three in-process nodes over rings in a fresh directory under /dev/shm, each with a
 * counter (the sum of the u64 operations applied; apply's result is the new sum), their
 * logs on disk with a snapshot every 4 entries; a client (emf_raft_client_*) submits:
 *   - every submit is answered with the counter's result; all three counters agree;
 *   - a follower is stopped and started again from its data directory: it restores its
 *     snapshot, catches up, and its counter agrees again;
 *   - an operation the apply callback fails stops the node that applies it: stop says
 *     EMF_ERR_STOPPED with the callback's code (a one-node cluster of its own);
 *   - bad input: NULL arguments, a missing callback, an id that is not a voter;
 *   - a node started with emf_raft_node_start_remote, whose counter a host thread runs by
 *     fetching the node's requests (emf_raft_node_next_request, a buffer too small at
 *     first) and answering them (emf_raft_node_reply): the way a host that cannot be
 *     called from the node's thread (an Erlang VM) runs its state machine.
 * Callbacks run on each node's own thread: each node has its own counter (ctx), touched
 * only by that thread while the node runs, read here after a stop or through the client.
 *
 * Output: one line per failed check on stderr, then exactly one line `N passed, M failed`.
 * Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded library has another ABI.
 */
#define _POSIX_C_SOURCE 200809L /* getpid, nanosleep */

#include <erlmcp_flow.h>

#include <pthread.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define FAIL_OP UINT64_MAX

typedef struct counter {
    uint64_t sum;
    uint64_t applied;
    uint64_t restores;
} counter_t;

/* A 100 µs pause of a bounded polling loop. */
static void nap(void) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static int c_apply(void *ctx, uint64_t index, const uint8_t *op, size_t len,
                   emf_raft_emit_fn emit, void *emit_ctx) {
    (void)index;
    counter_t *c = ctx;
    if (len != 8) {
        return 0; /* not a counter operation: answered with an empty result */
    }
    uint64_t v = get_u64(op);
    if (v == FAIL_OP) {
        return 42; /* this host cannot go on: the node stops */
    }
    c->sum += v;
    c->applied++;
    uint8_t out[8];
    put_u64(out, c->sum);
    return emit(emit_ctx, out, sizeof out);
}

static int c_snapshot(void *ctx, emf_raft_emit_fn emit, void *emit_ctx) {
    const counter_t *c = ctx;
    uint8_t out[8];
    put_u64(out, c->sum);
    return emit(emit_ctx, out, sizeof out);
}

static int c_restore(void *ctx, const uint8_t *data, size_t len) {
    counter_t *c = ctx;
    if (len != 8) {
        return 1; /* not a snapshot of ours */
    }
    c->sum = get_u64(data);
    c->restores++;
    return 0;
}

static const emf_raft_sm_t SM = {c_apply, c_snapshot, c_restore, NULL};

static const uint64_t VOTERS[3] = {1, 2, 3};

static emf_status_t start(const char *dir, uint64_t id, const uint64_t *voters, size_t n,
                          counter_t *c, emf_raft_node_t **out) {
    char ring[300], data[300];
    snprintf(ring, sizeof ring, "%s/net", dir);
    snprintf(data, sizeof data, "%s/node-%llu", dir, (unsigned long long)id);
    emf_raft_node_options_t o;
    if (emf_raft_node_options_default(&o) != EMF_OK) {
        return EMF_ERR_INVALID_ARGUMENT;
    }
    o.id = id;
    o.voters = voters;
    o.n_voters = n;
    o.ring_dir = ring;
    o.data_dir = data;
    o.snapshot_entries = 4;
    return emf_raft_node_start(&o, &SM, c, out);
}

static emf_status_t submit(emf_raft_client_t *cl, uint64_t v, uint64_t *index, uint64_t *sum) {
    uint8_t op[8], res[8] = {0};
    size_t len = 0;
    put_u64(op, v);
    emf_status_t st = emf_raft_client_submit(cl, op, sizeof op, index, res, sizeof res, &len);
    *sum = len == 8 ? get_u64(res) : 0;
    return st;
}

/* Polls a node's info until it has applied `index` (bounded). */
static int applied(emf_raft_node_t *n, uint64_t index) {
    emf_raft_node_info_t info;
    for (long i = 0; i < 100000; i++) {
        if (emf_raft_node_info(n, &info) != EMF_OK) {
            return 0;
        }
        if (info.applied >= index) {
            return 1;
        }
        nap();
    }
    return 0;
}

static void cluster(const char *dir) {
    counter_t cs[3];
    memset(cs, 0, sizeof cs);
    emf_raft_node_t *nodes[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) {
        CHECK_STATUS(start(dir, VOTERS[i], VOTERS, 3, &cs[i], &nodes[i]), EMF_OK);
        if (nodes[i] == NULL) {
            return;
        }
    }
    char ring[300];
    snprintf(ring, sizeof ring, "%s/net", dir);
    emf_raft_client_t *cl = NULL;
    CHECK_STATUS(emf_raft_client_connect(ring, VOTERS, 3, NULL, &cl), EMF_OK);
    if (cl == NULL) {
        return;
    }

    uint64_t index = 0, sum = 0, want = 0;
    for (uint64_t v = 1; v <= 10; v++) {
        CHECK_STATUS(submit(cl, v, &index, &sum), EMF_OK);
        want += v;
        CHECK(sum == want);
    }
    uint64_t leader = 0, term = 0;
    CHECK_STATUS(emf_raft_client_leader(cl, &leader, &term), EMF_OK);
    for (int i = 0; i < 3; i++) {
        CHECK(applied(nodes[i], index));
    }

    /* A follower stops and starts again from its data directory. */
    int f = leader == VOTERS[0] ? 1 : 0;
    CHECK_STATUS(emf_raft_node_stop(nodes[f]), EMF_OK);
    CHECK(cs[f].sum == want); /* its thread is joined: read it here */
    emf_raft_node_info_t info;
    CHECK_STATUS(emf_raft_node_info(nodes[f], &info), EMF_OK);
    CHECK(info.running == 0);
    CHECK_STATUS(emf_raft_node_free(nodes[f]), EMF_OK);
    for (uint64_t v = 11; v <= 20; v++) {
        CHECK_STATUS(submit(cl, v, &index, &sum), EMF_OK);
        want += v;
        CHECK(sum == want);
    }
    memset(&cs[f], 0, sizeof cs[f]);
    nodes[f] = NULL;
    CHECK_STATUS(start(dir, VOTERS[f], VOTERS, 3, &cs[f], &nodes[f]), EMF_OK);
    CHECK(nodes[f] != NULL);
    if (nodes[f] != NULL) {
        CHECK(cs[f].restores >= 1); /* its own snapshot, restored before start returned */
        CHECK(applied(nodes[f], index));
    }

    /* Bad input. */
    emf_raft_node_t *bad = NULL;
    emf_raft_sm_t no_apply = SM;
    no_apply.apply = NULL;
    emf_raft_node_options_t o;
    CHECK_STATUS(emf_raft_node_options_default(&o), EMF_OK);
    CHECK(o.tick_ms == 10 && o.election_tick == 10 && o.snapshot_entries == 10000);
    o.id = 1;
    o.voters = VOTERS;
    o.n_voters = 3;
    CHECK_ERROR(emf_raft_node_start(&o, &SM, NULL, &bad), EMF_ERR_NULL_ARGUMENT, "ring_dir");
    o.ring_dir = ring;
    CHECK_ERROR(emf_raft_node_start(&o, &no_apply, NULL, &bad), EMF_ERR_NULL_ARGUMENT,
                "sm->apply");
    CHECK_ERROR(emf_raft_node_start(&o, &SM, NULL, &bad), EMF_ERR_BUSY, NULL);
    o.id = 9;
    CHECK_ERROR(emf_raft_node_start(&o, &SM, NULL, &bad), EMF_ERR_INVALID_ARGUMENT, "voters");
    CHECK(bad == NULL);

    for (int i = 0; i < 3; i++) {
        if (nodes[i] != NULL) {
            CHECK_STATUS(emf_raft_node_stop(nodes[i]), EMF_OK);
            CHECK(cs[i].sum == want);
            CHECK_STATUS(emf_raft_node_free(nodes[i]), EMF_OK);
        }
    }
    CHECK_ERROR(emf_raft_node_free(nodes[0]), EMF_ERR_INVALID_ARGUMENT, NULL);
    CHECK_STATUS(emf_raft_client_free(cl), EMF_OK);
}

/* A one-node cluster whose apply fails: the node stops with the callback's code. */
static void failing(const char *dir) {
    static const uint64_t one[1] = {1};
    counter_t c;
    memset(&c, 0, sizeof c);
    emf_raft_node_t *n = NULL;
    CHECK_STATUS(start(dir, 1, one, 1, &c, &n), EMF_OK);
    if (n == NULL) {
        return;
    }
    char ring[300];
    snprintf(ring, sizeof ring, "%s/net", dir);
    emf_raft_client_options_t co;
    CHECK_STATUS(emf_raft_client_options_default(&co), EMF_OK);
    co.timeout_ms = 300;
    co.attempt_timeout_ms = 100;
    emf_raft_client_t *cl = NULL;
    CHECK_STATUS(emf_raft_client_connect(ring, one, 1, &co, &cl), EMF_OK);
    uint64_t index = 0, sum = 0;
    if (cl != NULL) {
        CHECK_STATUS(submit(cl, 7, &index, &sum), EMF_OK);
        CHECK(sum == 7);
        CHECK(submit(cl, FAIL_OP, &index, &sum) != EMF_OK);
    }
    emf_raft_node_info_t info;
    for (long i = 0; i < 100000; i++) {
        if (emf_raft_node_info(n, &info) != EMF_OK || info.running == 0) {
            break;
        }
        nap();
    }
    CHECK(info.running == 0);
    CHECK_ERROR(emf_raft_node_stop(n), EMF_ERR_STOPPED, "returned 42");
    CHECK(c.sum == 7 && c.applied == 1);
    CHECK_STATUS(emf_raft_node_free(n), EMF_OK);
    if (cl != NULL) {
        CHECK_STATUS(emf_raft_client_free(cl), EMF_OK);
    }
}

/* The host thread of a remote node: a counter answered through next_request/reply until the
 * node stops (EMF_ERR_CLOSED). Touches only `c' (read by main after the join). */
typedef struct remote_host {
    emf_raft_node_t *node;
    counter_t c;
    uint64_t too_small; /* requests fetched again with a bigger buffer */
    emf_status_t error; /* the unexpected status that ended the loop, or EMF_OK */
} remote_host_t;

static void *remote_host_main(void *arg) {
    remote_host_t *h = arg;
    uint8_t small[4], big[64];
    uint8_t *buf = small;
    size_t cap = sizeof small;
    for (;;) {
        emf_raft_request_t r;
        size_t len = 0;
        emf_status_t st = emf_raft_node_next_request(h->node, 100, &r, buf, cap, &len);
        if (st == EMF_ERR_TIMEOUT) {
            continue;
        }
        if (st == EMF_ERR_BUFFER_TOO_SMALL && len <= sizeof big) {
            h->too_small++; /* kept by the node: the next call hands it out again */
            buf = big;
            cap = sizeof big;
            continue;
        }
        if (st == EMF_ERR_CLOSED) {
            return NULL;
        }
        if (st != EMF_OK) {
            h->error = st;
            return NULL;
        }
        uint8_t out[8];
        size_t out_len = 0;
        int status = 0;
        if (r.kind == EMF_RAFT_REQ_APPLY && len == 8) {
            h->c.sum += get_u64(buf);
            h->c.applied++;
            put_u64(out, h->c.sum);
            out_len = 8;
        } else if (r.kind == EMF_RAFT_REQ_SNAPSHOT) {
            put_u64(out, h->c.sum);
            out_len = 8;
        } else if (r.kind == EMF_RAFT_REQ_RESTORE) {
            if (len == 8) {
                h->c.sum = get_u64(buf);
                h->c.restores++;
            } else {
                status = 1; /* refused: the node stops */
            }
        }
        st = emf_raft_node_reply(h->node, r.id, status, out, out_len);
        if (st == EMF_ERR_CLOSED) {
            return NULL;
        }
        if (st != EMF_OK) {
            h->error = st;
            return NULL;
        }
    }
}

static void remote(const char *dir) {
    static const uint64_t one[1] = {1};
    char ring[300], data[300];
    snprintf(ring, sizeof ring, "%s/net", dir);
    snprintf(data, sizeof data, "%s/node-1", dir);
    emf_raft_node_options_t o;
    CHECK_STATUS(emf_raft_node_options_default(&o), EMF_OK);
    o.id = 1;
    o.voters = one;
    o.n_voters = 1;
    o.ring_dir = ring;
    o.data_dir = data;
    o.snapshot_entries = 4;
    remote_host_t h;
    memset(&h, 0, sizeof h);
    CHECK_STATUS(emf_raft_node_start_remote(&o, 0, &h.node), EMF_OK);
    if (h.node == NULL) {
        return;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, remote_host_main, &h) != 0) {
        CHECK(!"pthread_create");
        CHECK_STATUS(emf_raft_node_free(h.node), EMF_OK);
        return;
    }
    emf_raft_client_t *cl = NULL;
    CHECK_STATUS(emf_raft_client_connect(ring, one, 1, NULL, &cl), EMF_OK);
    uint64_t index = 0, sum = 0, want = 0;
    for (uint64_t v = 1; cl != NULL && v <= 6; v++) {
        want += v;
        CHECK_STATUS(submit(cl, v, &index, &sum), EMF_OK);
        CHECK(sum == want); /* the host thread's answer */
    }
    CHECK_STATUS(emf_raft_node_stop(h.node), EMF_OK);
    pthread_join(t, NULL);
    CHECK(h.error == EMF_OK);
    CHECK(h.c.sum == want && h.c.applied == 6);
    CHECK(h.too_small == 1);
    CHECK_ERROR(emf_raft_node_reply(h.node, 1, 0, NULL, 0), EMF_ERR_CLOSED, "");
    CHECK_STATUS(emf_raft_node_free(h.node), EMF_OK);
    if (cl != NULL) {
        CHECK_STATUS(emf_raft_client_free(cl), EMF_OK);
    }
}

static void rm_rf(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", dir);
    }
}

int main(void) {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "ABI mismatch: library %u, header %u\n", emf_abi_version(),
                EMF_ABI_VERSION);
        return 2;
    }
    char dir[256];
    snprintf(dir, sizeof dir, "/dev/shm/emf-raft-node-c-%ld", (long)getpid());
    cluster(dir);
    rm_rf(dir);
    snprintf(dir, sizeof dir, "/dev/shm/emf-raft-node-c-fail-%ld", (long)getpid());
    failing(dir);
    rm_rf(dir);
    snprintf(dir, sizeof dir, "/dev/shm/emf-raft-node-c-remote-%ld", (long)getpid());
    remote(dir);
    rm_rf(dir);
    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}

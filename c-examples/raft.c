/*
 * raft.c — a C11 host of replicated state (emf_raft_cluster_*, emf_raft_client_*), built
 * against the installed header and library (`pkg-config --cflags --libs erlmcp_flow`).
 *
 * Starts a local cluster of 3 `erlmcp-flow raft node` processes over rings in a fresh
 * directory under /dev/shm (the binary from EMF_BIN, else PATH), then:
 *   - submits operations (the original submit_operation / append_entry / wait_committed),
 *     reads leader, term, members, every node's status and the stats text;
 *   - the replicated key-value store: set, cas (swapped and refused), each a log entry, and
 *     get (a ReadIndex read);
 *   - a result that does not fit: EMF_ERR_BUFFER_TOO_SMALL with the length, then
 *     emf_raft_cluster_result hands it out;
 *   - SIGKILLs the leader, writes again (a new leader answers; nothing acknowledged is
 *     lost), restarts the node and waits until it has applied the log;
 *   - a second client (emf_raft_client_connect) on the same rings reads what was written;
 *   - linearizable reads (emf_raft_*_read: ReadIndex, no log entry), leadership transfer,
 *     and membership: a follower removed, added back as a learner, promoted; the leader
 *     refuses to remove itself; bad changes are refused;
 *   - bad input: NULL arguments, a freed handle, kill of a node that is not running, a
 *     restart of a node that is not a member.
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

static void run(const char *dir) {
    emf_raft_cluster_options_t o;
    CHECK_STATUS(emf_raft_cluster_options_default(&o), EMF_OK);
    CHECK(o.tick_ms == 10 && o.election_tick == 10 && o.memory == 0);
    emf_raft_cluster_t *c = NULL;
    CHECK_ERROR(emf_raft_cluster_start(0, dir, &o, &c), EMF_ERR_INVALID_ARGUMENT, "at least 1");
    CHECK_ERROR(emf_raft_cluster_start(3, NULL, &o, &c), EMF_ERR_NULL_ARGUMENT, "dir");
    CHECK_STATUS(emf_raft_cluster_start(3, dir, &o, &c), EMF_OK);
    if (c == NULL) {
        return;
    }

    uint64_t members[8] = {0}, one[1];
    size_t n = 0;
    CHECK_STATUS(emf_raft_cluster_members(c, members, 8, &n), EMF_OK);
    CHECK(n == 3 && members[0] == 1 && members[2] == 3);
    CHECK_STATUS(emf_raft_cluster_members(c, one, 1, &n), EMF_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 3);

    /* submit_operation / append_entry / wait_committed. */
    uint64_t index = 0, last = 0, applied = 0;
    uint8_t result[64];
    size_t len = 0;
    CHECK_STATUS(emf_raft_cluster_submit(c, (const uint8_t *)"opaque", 6, &index, result,
                                         sizeof result, &len),
                 EMF_OK);
    CHECK(index > 0);
    for (int i = 0; i < 20; i++) {
        char e[16];
        int el = snprintf(e, sizeof e, "entry-%d", i);
        uint64_t at = 0;
        CHECK_STATUS(emf_raft_cluster_append_entry(c, (const uint8_t *)e, (size_t)el, &at),
                     EMF_OK);
        CHECK(at > index && at > last);
        last = at;
    }
    /* Pipelined: 100 entries in one call, up to 16 in flight, the leader batches them. */
    {
        enum { N = 100 };
        static char bodies[N][16];
        emf_slice_t ops[N];
        uint64_t idx[N];
        emf_status_t st[N];
        for (int i = 0; i < N; i++) {
            int bl = snprintf(bodies[i], sizeof bodies[i], "many-%d", i);
            ops[i].data = (const uint8_t *)bodies[i];
            ops[i].len = (size_t)bl;
        }
        CHECK_STATUS(emf_raft_cluster_submit_many(c, ops, N, 16, idx, st), EMF_OK);
        for (int i = 0; i < N; i++) {
            CHECK(st[i] == EMF_OK && idx[i] > last);
            CHECK(i == 0 || idx[i] >= idx[i - 1]); /* batched entries share an index */
        }
        last = idx[N - 1];
        CHECK_ERROR(emf_raft_cluster_submit_many(c, ops, N, 0, idx, st),
                    EMF_ERR_INVALID_ARGUMENT, "window");
        CHECK_ERROR(emf_raft_cluster_submit_many(c, ops, N, 4, NULL, st),
                    EMF_ERR_NULL_ARGUMENT, "out_indexes");
        CHECK_ERROR(emf_raft_cluster_submit_many(c, NULL, N, 4, idx, st),
                    EMF_ERR_NULL_ARGUMENT, "frames");
        CHECK_STATUS(emf_raft_cluster_submit_many(c, NULL, 0, 4, NULL, NULL), EMF_OK);
    }
    CHECK_STATUS(emf_raft_cluster_wait_committed(c, last, 2000, &applied), EMF_OK);
    CHECK(applied >= last);
    CHECK_ERROR(emf_raft_cluster_wait_committed(c, last + 1000000, 50, &applied),
                EMF_ERR_TIMEOUT, "not applied");

    uint64_t leader = 0, term = 0;
    CHECK_STATUS(emf_raft_cluster_leader(c, &leader, &term), EMF_OK);
    CHECK(leader >= 1 && leader <= 3 && term >= 1);
    emf_raft_status_t s;
    memset(&s, 0, sizeof s);
    CHECK_STATUS(emf_raft_cluster_status(c, leader, &s), EMF_OK);
    CHECK(s.id == leader && s.leader == leader && s.voters == 3 && s.commit >= last);
    char text[8192];
    CHECK_STATUS(emf_raft_cluster_stats(c, (uint8_t *)text, sizeof text - 1, &len), EMF_OK);
    text[len] = '\0';
    CHECK(strstr(text, "node=1 leader=") != NULL && strstr(text, "node=3 ") != NULL);
    CHECK(strstr(text, " proposed=") != NULL);

    /* The key-value store. */
    CHECK_STATUS(emf_raft_cluster_set(c, (const uint8_t *)"k", 1, (const uint8_t *)"v1", 2,
                                      &index),
                 EMF_OK);
    uint32_t found = 9, swapped = 9, had = 9;
    CHECK_STATUS(emf_raft_cluster_get(c, (const uint8_t *)"k", 1, NULL, &found, result, sizeof result,
                                      &len),
                 EMF_OK);
    CHECK(found == 1 && len == 2 && memcmp(result, "v1", 2) == 0);
    CHECK_STATUS(emf_raft_cluster_get(c, (const uint8_t *)"nope", 4, NULL, &found, result,
                                      sizeof result, &len),
                 EMF_OK);
    CHECK(found == 0 && len == 0);
    CHECK_STATUS(emf_raft_cluster_cas(c, (const uint8_t *)"k", 1, &index, 1, (const uint8_t *)"v0", 2,
                                      (const uint8_t *)"v2", 2, &swapped, &had, result,
                                      sizeof result, &len),
                 EMF_OK);
    CHECK(swapped == 0 && had == 1 && len == 2 && memcmp(result, "v1", 2) == 0);
    CHECK_STATUS(emf_raft_cluster_cas(c, (const uint8_t *)"k", 1, &index, 1, (const uint8_t *)"v1", 2,
                                      (const uint8_t *)"v2", 2, &swapped, &had, result,
                                      sizeof result, &len),
                 EMF_OK);
    CHECK(swapped == 1);
    CHECK_ERROR(emf_raft_cluster_cas(c, (const uint8_t *)"k", 1, &index, 0, (const uint8_t *)"x", 1,
                                     (const uint8_t *)"v2", 2, &swapped, &had, result,
                                     sizeof result, &len),
                EMF_ERR_INVALID_ARGUMENT, "has_expected");

    /* A value larger than the buffer: the length, then the bytes from _result. */
    char big[300];
    memset(big, 'b', sizeof big);
    CHECK_STATUS(emf_raft_cluster_set(c, (const uint8_t *)"big", 3, (const uint8_t *)big,
                                      sizeof big, NULL),
                 EMF_OK);
    CHECK_ERROR(emf_raft_cluster_get(c, (const uint8_t *)"big", 3, NULL, &found, result,
                                     sizeof result, &len),
                EMF_ERR_BUFFER_TOO_SMALL, "300 bytes");
    CHECK(found == 1 && len == sizeof big);
    char back[300];
    CHECK_STATUS(emf_raft_cluster_result(c, (uint8_t *)back, sizeof back, &len), EMF_OK);
    CHECK(len == sizeof big && memcmp(back, big, sizeof big) == 0);
    CHECK_STATUS(emf_raft_cluster_result(c, NULL, 0, &len), EMF_OK);
    CHECK(len == 0);

    /* SIGKILL the leader; write again; a new leader answers. */
    CHECK_STATUS(emf_raft_cluster_leader(c, &leader, &term), EMF_OK);
    uint64_t old_leader = leader, old_term = term;
    CHECK_STATUS(emf_raft_cluster_kill(c, old_leader), EMF_OK);
    CHECK_ERROR(emf_raft_cluster_kill(c, old_leader), EMF_ERR_NOT_FOUND, "not running");
    CHECK_STATUS(emf_raft_cluster_set(c, (const uint8_t *)"after", 5, (const uint8_t *)"kill", 4,
                                      &index),
                 EMF_OK);
    CHECK_STATUS(emf_raft_cluster_leader(c, &leader, &term), EMF_OK);
    CHECK(leader != old_leader && term > old_term);
    CHECK_STATUS(emf_raft_cluster_get(c, (const uint8_t *)"k", 1, NULL, &found, result, sizeof result,
                                      &len),
                 EMF_OK);
    CHECK(found == 1 && len == 2 && memcmp(result, "v2", 2) == 0);
    CHECK_ERROR(emf_raft_cluster_status(c, old_leader, &s), EMF_ERR_TIMEOUT, "did not answer");

    /* The killed node comes back from its durable log and catches up. */
    CHECK_STATUS(emf_raft_cluster_restart(c, old_leader), EMF_OK);
    CHECK_ERROR(emf_raft_cluster_restart(c, 9), EMF_ERR_NOT_FOUND, "not a node");

    /* A second client on the same rings. */
    char net[4096];
    snprintf(net, sizeof net, "%s/net", dir);
    emf_raft_client_t *cl = NULL;
    uint64_t nodes[3] = {1, 2, 3};
    CHECK_STATUS(emf_raft_client_connect(net, nodes, 3, NULL, &cl), EMF_OK);
    if (cl != NULL) {
        CHECK_STATUS(emf_raft_client_get(cl, (const uint8_t *)"after", 5, NULL, &found, result,
                                         sizeof result, &len),
                     EMF_OK);
        CHECK(found == 1 && len == 4 && memcmp(result, "kill", 4) == 0);
        uint64_t at = 0;
        CHECK_STATUS(emf_raft_client_append_entry(cl, (const uint8_t *)"c", 1, &at), EMF_OK);
        CHECK(at > index);
        {
            emf_slice_t two[2] = {{(const uint8_t *)"m1", 2}, {(const uint8_t *)"m2", 2}};
            uint64_t ix[2] = {0, 0};
            emf_status_t sx[2] = {-1, -1};
            CHECK_STATUS(emf_raft_client_submit_many(cl, two, 2, 2, ix, sx), EMF_OK);
            CHECK(sx[0] == EMF_OK && sx[1] == EMF_OK && ix[0] > at && ix[1] >= ix[0]);
        }
        CHECK_STATUS(emf_raft_client_wait_committed(cl, at, 2000, &applied), EMF_OK);
        CHECK_STATUS(emf_raft_client_leader(cl, NULL, &term), EMF_OK);
        CHECK_ERROR(emf_raft_client_leader(cl, NULL, NULL), EMF_ERR_NULL_ARGUMENT, "out_leader");
        /* The restarted node applies the whole log. */
        int caught_up = 0;
        for (int i = 0; i < 200 && !caught_up; i++) {
            if (emf_raft_client_status(cl, old_leader, &s) == EMF_OK && s.applied >= at) {
                caught_up = 1;
            } else {
                struct timespec ts = {0, 20 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
        }
        CHECK(caught_up);
        /* A read through the second client: an encoded get of "k" (kind 2, u32 length, key)
         * answered with an encoded value (kind 2, present 1, u32 length, bytes). */
        const uint8_t get_k[6] = {2, 1, 0, 0, 0, 'k'};
        uint64_t read_index = 0;
        CHECK_STATUS(emf_raft_client_read(cl, get_k, sizeof get_k, &read_index, result,
                                          sizeof result, &len),
                     EMF_OK);
        CHECK(read_index >= index && len == 8 && result[0] == 2 && result[1] == 1 &&
              memcmp(result + 6, "v2", 2) == 0);
        uint64_t ids[8];
        size_t nv = 0, nl = 0;
        uint32_t joint = 9;
        CHECK_STATUS(emf_raft_client_membership(cl, ids, 8, &nv, &nl, &joint), EMF_OK);
        CHECK(nv == 3 && nl == 0 && joint == 0 && ids[0] == 1 && ids[2] == 3);
        CHECK_STATUS(emf_raft_client_transfer_leader(cl, 1, &term), EMF_OK);
        CHECK_STATUS(emf_raft_client_leader(cl, &leader, NULL), EMF_OK);
        CHECK(leader == 1);
        emf_raft_member_change_t bad = {.node = 2, .kind = 7};
        CHECK_ERROR(emf_raft_client_change_membership(cl, &bad, 1, NULL),
                    EMF_ERR_INVALID_ARGUMENT, "kind 7");
        CHECK_STATUS(emf_raft_client_free(cl), EMF_OK);
        CHECK_ERROR(emf_raft_client_free(cl), EMF_ERR_INVALID_ARGUMENT, NULL);
    }

    /* Reads, leadership transfer, membership through the cluster handle. */
    {
        const uint8_t get_k[6] = {2, 1, 0, 0, 0, 'k'};
        uint64_t read_index = 0, commit_before = 0, new_term = 0;
        CHECK_STATUS(emf_raft_cluster_leader(c, &leader, &term), EMF_OK);
        CHECK_STATUS(emf_raft_cluster_status(c, leader, &s), EMF_OK);
        commit_before = s.commit;
        CHECK_STATUS(emf_raft_cluster_read(c, get_k, sizeof get_k, &read_index, result,
                                           sizeof result, &len),
                     EMF_OK);
        CHECK(len == 8 && memcmp(result + 6, "v2", 2) == 0);
        CHECK_STATUS(emf_raft_cluster_status(c, leader, &s), EMF_OK);
        CHECK(s.commit == commit_before); /* a read writes no log entry */
        CHECK_ERROR(emf_raft_cluster_read(c, (const uint8_t *)"x", 1, NULL, result,
                                          sizeof result, &len),
                    EMF_ERR_INVALID_ARGUMENT, "not a KV operation");
        uint64_t to = leader % 3 + 1;
        CHECK_STATUS(emf_raft_cluster_transfer_leader(c, to, &new_term), EMF_OK);
        CHECK(new_term > term);
        CHECK_STATUS(emf_raft_cluster_leader(c, &leader, NULL), EMF_OK);
        CHECK(leader == to);
        CHECK_ERROR(emf_raft_cluster_transfer_leader(c, 9, NULL), EMF_ERR_INVALID_ARGUMENT,
                    NULL);
        CHECK_ERROR(emf_raft_cluster_transfer_leader(c, 0, NULL), EMF_ERR_INVALID_ARGUMENT,
                    "node 0");
        /* The leader cannot remove itself; a follower is removed, comes back as a learner
         * (same process, same data), and is promoted. */
        emf_raft_member_change_t ch = {.node = leader, .kind = EMF_RAFT_REMOVE};
        CHECK_ERROR(emf_raft_cluster_change_membership(c, &ch, 1, NULL),
                    EMF_ERR_INVALID_ARGUMENT, "transfer leadership first");
        CHECK_ERROR(emf_raft_cluster_change_membership(c, &ch, 0, NULL),
                    EMF_ERR_INVALID_ARGUMENT, "not 0");
        uint64_t f = leader % 3 + 1, at = 0;
        ch.node = f;
        CHECK_STATUS(emf_raft_cluster_change_membership(c, &ch, 1, &at), EMF_OK);
        CHECK(at > 0);
        ch.kind = EMF_RAFT_ADD_LEARNER;
        CHECK_STATUS(emf_raft_cluster_change_membership(c, &ch, 1, &at), EMF_OK);
        uint64_t ids[8], small[1];
        size_t nv = 0, nl = 0;
        uint32_t joint = 1;
        for (int i = 0; i < 200 && joint; i++) {
            CHECK_STATUS(emf_raft_cluster_membership(c, ids, 8, &nv, &nl, &joint), EMF_OK);
            if (joint) {
                struct timespec ts = {0, 10 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
        }
        CHECK(joint == 0 && nv == 2 && nl == 1 && ids[2] == f);
        CHECK_ERROR(emf_raft_cluster_membership(c, small, 1, &nv, &nl, NULL),
                    EMF_ERR_BUFFER_TOO_SMALL, "room for 1");
        CHECK(nv == 2 && nl == 1);
        ch.kind = EMF_RAFT_ADD_VOTER;
        CHECK_STATUS(emf_raft_cluster_change_membership(c, &ch, 1, NULL), EMF_OK);
        CHECK_STATUS(emf_raft_cluster_set(c, (const uint8_t *)"m", 1, (const uint8_t *)"3", 1,
                                          &at),
                     EMF_OK);
        CHECK_STATUS(emf_raft_cluster_wait_committed(c, at, 2000, &applied), EMF_OK);
        CHECK_STATUS(emf_raft_cluster_membership(c, ids, 8, &nv, &nl, NULL), EMF_OK);
        CHECK(nv == 3 && nl == 0);
    }

    /* Bad input. */
    CHECK_ERROR(emf_raft_cluster_submit(c, NULL, 3, &index, result, sizeof result, &len),
                EMF_ERR_NULL_ARGUMENT, "op");
    CHECK_ERROR(emf_raft_cluster_submit(c, (const uint8_t *)"x", 1, &index, NULL, 8, &len),
                EMF_ERR_NULL_ARGUMENT, "buf");
    CHECK_ERROR(emf_raft_cluster_append_entry(c, (const uint8_t *)"x", 1, NULL),
                EMF_ERR_NULL_ARGUMENT, "out_index");
    CHECK_STATUS(emf_raft_cluster_stop(c), EMF_OK);
    CHECK_STATUS(emf_raft_cluster_free(c), EMF_OK);
    CHECK_ERROR(emf_raft_cluster_append_entry(c, (const uint8_t *)"x", 1, &index),
                EMF_ERR_INVALID_ARGUMENT, NULL);
    CHECK_ERROR(emf_raft_cluster_free(c), EMF_ERR_INVALID_ARGUMENT, NULL);
}

int main(void) {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "ABI mismatch: library %u, header %u\n", emf_abi_version(),
                EMF_ABI_VERSION);
        return 2;
    }
    char dir[256];
    snprintf(dir, sizeof dir, "/dev/shm/emf-raft-c-%ld", (long)getpid());
    run(dir);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", dir);
    }
    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}

/*
 * Interop test: a fan-out subscriber in C.
 *
 *   c_subscriber DIR NAME FRAMES PRODUCER_ID READY_FILE [IDLE_TIMEOUT_S]
 *
 * Opens ring NAME in DIR, subscribes, then creates READY_FILE (so the producer is started
 * only once the subscriber sees every frame), and receives FRAMES frames, checking each one:
 *
 *   bytes 0..4   producer id, uint32 little-endian
 *   bytes 4..12  sequence number, uint64 little-endian, 0, 1, 2, ... with no gap
 *   bytes 12..   length 12 + (seq * 7919) % 53 in total; byte j is (seq + j) & 0xFF
 *
 * Waits on the ring's futex (EMF_WAIT_PARK) in 1 s steps; fails after IDLE_TIMEOUT_S
 * (default 300) seconds without a frame. Prints one line; exits 0 on success.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "erlmcp_flow.h"

struct check {
    uint32_t producer_id;
    uint64_t next;  /* sequence number expected next */
    uint64_t total; /* frames expected in all */
    int failed;
    char why[256];
};

static size_t frame_len(uint64_t seq) { return 12 + (size_t)((seq * 7919u) % 53u); }

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int on_frame(void *ctx, const uint8_t *data, size_t len) {
    struct check *c = ctx;
    if (c->next >= c->total) {
        snprintf(c->why, sizeof c->why, "an extra frame of %zu bytes after %" PRIu64, len, c->total);
        c->failed = 1;
        return 1;
    }
    if (len < 12) {
        snprintf(c->why, sizeof c->why, "frame %" PRIu64 ": %zu bytes, shorter than a header",
                 c->next, len);
        c->failed = 1;
        return 1;
    }
    uint32_t id = get_u32(data);
    uint64_t seq = get_u64(data + 4);
    if (id != c->producer_id || seq != c->next || len != frame_len(seq)) {
        snprintf(c->why, sizeof c->why,
                 "expected frame %" PRIu64 " of producer %" PRIu32 " (%zu bytes), got frame %"
                 PRIu64 " of producer %" PRIu32 " (%zu bytes)",
                 c->next, c->producer_id, frame_len(c->next), seq, id, len);
        c->failed = 1;
        return 1;
    }
    for (size_t j = 12; j < len; j++) {
        if (data[j] != (uint8_t)((seq + j) & 0xFF)) {
            snprintf(c->why, sizeof c->why, "frame %" PRIu64 ": byte %zu is %u, expected %u", seq,
                     j, data[j], (unsigned)((seq + j) & 0xFF));
            c->failed = 1;
            return 1;
        }
    }
    c->next++;
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(const char *what, emf_status_t st) {
    char msg[512];
    size_t n = 0;
    if (emf_last_error_message(msg, sizeof msg, &n) != EMF_OK) msg[0] = '\0';
    printf("c-subscriber: FAIL %s: %s (%s)\n", what, emf_status_name(st), msg);
    return 1;
}

static int write_ready(const char *path) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return -1;
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    fputs("ready\n", f);
    if (fclose(f) != 0) return -1;
    return rename(tmp, path);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s DIR NAME FRAMES PRODUCER_ID READY_FILE [IDLE_TIMEOUT_S]\n",
                argv[0]);
        return 2;
    }
    const char *dir = argv[1], *name = argv[2], *ready_file = argv[5];
    struct check c = {0};
    c.total = strtoull(argv[3], NULL, 10);
    c.producer_id = (uint32_t)strtoul(argv[4], NULL, 10);
    double idle_timeout = argc > 6 ? atof(argv[6]) : 300.0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (emf_abi_version() != EMF_ABI_VERSION) {
        printf("c-subscriber: FAIL library ABI %u, header ABI %u\n", emf_abi_version(),
               EMF_ABI_VERSION);
        return 1;
    }
    emf_ring_t *ring = NULL;
    emf_consumer_t *sub = NULL;
    emf_status_t st = emf_ring_open(name, dir, &ring);
    if (st != EMF_OK) return fail("emf_ring_open", st);
    st = emf_consumer_subscribe(ring, &sub);
    if (st != EMF_OK) return fail("emf_consumer_subscribe", st);
    if (write_ready(ready_file) != 0) {
        printf("c-subscriber: FAIL cannot write %s: %s\n", ready_file, strerror(errno));
        return 1;
    }

    double last_progress = now_s();
    while (c.next < c.total && !c.failed) {
        size_t count = 0;
        st = emf_consumer_poll(sub, (size_t)(c.total - c.next), on_frame, &c, &count);
        if (st != EMF_OK) return fail("emf_consumer_poll", st);
        if (count > 0) {
            last_progress = now_s();
            continue;
        }
        if (now_s() - last_progress > idle_timeout) {
            printf("c-subscriber: FAIL no frame for %.0f s after frame %" PRIu64 " of %" PRIu64
                   "\n", idle_timeout, c.next, c.total);
            return 1;
        }
        bool ready = false;
        st = emf_consumer_wait(sub, EMF_WAIT_PARK, 1000, &ready);
        if (st != EMF_OK) return fail("emf_consumer_wait", st);
    }
    if (c.failed) {
        printf("c-subscriber: FAIL %s\n", c.why);
        return 1;
    }
    if ((st = emf_consumer_free(sub)) != EMF_OK) return fail("emf_consumer_free", st);
    if ((st = emf_ring_free(ring)) != EMF_OK) return fail("emf_ring_free", st);
    printf("c-subscriber: ok %" PRIu64 " frames in order and intact\n", c.next);
    return 0;
}

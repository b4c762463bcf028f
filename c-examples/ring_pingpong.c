/*
 * ring_pingpong.c — a C11 host of the erlmcp-flow shared-memory rings, built against the
 * installed header and library (`pkg-config --cflags --libs erlmcp_flow`).
 *
 *   ring_pingpong [-n N] [--stall-ms MS]   tests, then a two-process ping-pong of N 64-byte
 *                                          frames (MS: stall_timeout_ms of the ping-pong rings)
 *   ring_pingpong --bench [-n N]           per-call cost of emf_producer_send (N per figure)
 *
 * Tests: back-pressure (EMF_ERR_FULL, nothing lost, send_timeout woken across processes),
 * send_batch partial acceptance (the longest prefix that fits), claim / commit / abort (a
 * commit longer than the claim is refused and the claim stays open), recv and recv_batch
 * into a too-small buffer (EMF_ERR_BUFFER_TOO_SMALL with the size needed), recv_batch
 * records, poll (its re-entry guard, a callback that stops it, a free from inside the
 * callback: EMF_ERR_BUSY), fan-out subscribers, stats, waits (padding is skipped),
 * multi-producer rings, consumer re-attach, a producer that dies inside a claim, a stale
 * segment left by a dead creator, and bad input: NULL, bad names and options, freed and
 * foreign handles, a second producer or consumer (EMF_ERR_BUSY, in-process and across
 * processes). Exact status codes, and the error message for every failure.
 *
 * Delivery guarantees (ABI 3): manual acknowledgement (no receive releases anything before
 * emf_consumer_ack; a consumer freed, or a child process SIGKILLed, before acknowledging has
 * its frames delivered again, in order, to the next consumer; rewind; back to auto), producer
 * slots (a child sending through slot 2 is SIGKILLed; emf_producer_new_in_slot(2) reads
 * emf_producer_committed == what it sent and resends the rest: every frame exactly once), and
 * checksum rings (EMF_RING_CHECKSUM: a payload byte flipped through a second mapping of the
 * segment file gives EMF_ERR_CORRUPT after the frame before it, then the next frame; without
 * the flag the changed frame is delivered as it is).
 *
 * Ping-pong: the parent forks a child, creates rings "ping" and "pong" in a temporary
 * directory, and sends N frames one at a time; the child echoes each one back. The parent
 * checks every echo byte for byte and prints round-trip percentiles for EMF_WAIT_SPIN and
 * EMF_WAIT_PARK, with how many took 90 ms or more (a nap to the stall timeout) and 1 s or more
 * (the wait timeout: a lost wake-up, which fails the run).
 *
 * Output: RTT / benchmark lines on stdout, one line per failed check on stderr, then exactly
 * one line `N passed, M failed`. Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded
 * library has another ABI.
 */
#define _POSIX_C_SOURCE 200809L

#include <erlmcp_flow.h>

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- checks */

#include "check.h"

/* ---------------------------------------------------------------- helpers */

static char g_dir[512]; /* this run's temporary segment directory */
static uint32_t g_stall_ms; /* stall_timeout_ms of the ping-pong rings; 0 = the default */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fputs("out of memory\n", stderr);
        exit(3);
    }
    return p;
}

/* A fresh directory for this run's segments: /dev/shm (tmpfs) when present, else $TMPDIR or
 * /tmp. The name does not start with "emf-", so the library's gc never mistakes it for a
 * segment. */
static int make_temp_dir(void) {
    const char *bases[3] = {"/dev/shm", getenv("TMPDIR"), "/tmp"};
    for (size_t i = 0; i < 3; i++) {
        struct stat st;
        if (bases[i] == NULL || bases[i][0] == '\0' || stat(bases[i], &st) != 0 ||
            !S_ISDIR(st.st_mode)) {
            continue;
        }
        snprintf(g_dir, sizeof g_dir, "%s/c-ring-pingpong-XXXXXX", bases[i]);
        if (mkdtemp(g_dir) != NULL) return 0;
    }
    g_dir[0] = '\0';
    return -1;
}

/* Removes the segment files left in the directory, then the directory. Parent only. */
static void remove_temp_dir(void) {
    if (g_dir[0] == '\0') return;
    DIR *d = opendir(g_dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char path[1024];
            snprintf(path, sizeof path, "%s/%s", g_dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(g_dir);
    g_dir[0] = '\0';
}

/* Default options for a ring of `capacity` bytes in this run's directory. */
static emf_ring_options_t ring_opts(size_t capacity) {
    emf_ring_options_t o;
    memset(&o, 0, sizeof o);
    CHECK_STATUS(emf_ring_options_default(&o), EMF_OK);
    o.capacity = capacity;
    o.dir = g_dir;
    return o;
}

static emf_ring_t *create_ring(const char *name, const emf_ring_options_t *o) {
    emf_ring_t *r = NULL;
    CHECK_STATUS(emf_ring_create(name, o, &r), EMF_OK);
    return r;
}

static emf_producer_t *new_producer(emf_ring_t *r) {
    emf_producer_t *p = NULL;
    CHECK_STATUS(emf_producer_new(r, &p), EMF_OK);
    return p;
}

static emf_consumer_t *new_consumer(emf_ring_t *r) {
    emf_consumer_t *c = NULL;
    CHECK_STATUS(emf_consumer_new(r, &c), EMF_OK);
    return c;
}

static emf_consumer_t *new_subscriber(emf_ring_t *r) {
    emf_consumer_t *c = NULL;
    CHECK_STATUS(emf_consumer_subscribe(r, &c), EMF_OK);
    return c;
}

static emf_ring_stats_t stats_of(const emf_ring_t *r) {
    emf_ring_stats_t s;
    memset(&s, 0, sizeof s);
    CHECK_STATUS(emf_ring_stats(r, &s), EMF_OK);
    return s;
}

/* Frame `seq` of `len` bytes: seq little-endian in the first 8 bytes, then pseudo-random
 * bytes derived from seq, so that any lost, duplicated, reordered or damaged frame shows. */
static void fill_frame(uint8_t *b, size_t len, uint64_t seq) {
    uint64_t x = seq * 0x9E3779B97F4A7C15u + 0x632BE59BD9B4E019u;
    for (size_t j = 0; j < len; j++) {
        if (j % 8 == 0) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
        }
        b[j] = (uint8_t)(x >> (8 * (j % 8)));
    }
    for (size_t j = 0; j < 8 && j < len; j++) b[j] = (uint8_t)(seq >> (8 * j));
}

static int frame_is(const uint8_t *got, size_t got_len, size_t len, uint64_t seq) {
    uint8_t want[4096];
    if (got_len != len || len > sizeof want) return 0;
    fill_frame(want, len, seq);
    return len == 0 || memcmp(got, want, len) == 0;
}

static emf_status_t send_seq(emf_producer_t *p, size_t len, uint64_t seq) {
    uint8_t b[4096];
    if (len > sizeof b) return EMF_ERR_TOO_LARGE;
    fill_frame(b, len, seq);
    return emf_producer_send(p, b, len);
}

/* Receives every ready frame; each must be frame *seq, *seq + 1, ... of `len` bytes.
 * Returns how many came; counts wrong ones in *bad. */
static size_t drain_seq(emf_consumer_t *c, uint64_t *seq, size_t len, size_t *bad) {
    uint8_t buf[4096];
    size_t n = 0, got = 0;
    emf_status_t st;
    while ((st = emf_consumer_recv(c, buf, sizeof buf, &got)) == EMF_OK) {
        if (!frame_is(buf, got, len, *seq)) (*bad)++;
        (*seq)++;
        n++;
    }
    CHECK_STATUS(st, EMF_ERR_EMPTY);
    return n;
}

/* Forks; the child runs `body(arg)` and exits with its result without running atexit
 * handlers or flushing the parent's stdio buffers a second time. */
static pid_t fork_child(int (*body)(void *), void *arg) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int code = body(arg);
        fflush(stdout);
        fflush(stderr);
        _exit(code);
    }
    CHECK(pid > 0);
    return pid;
}

/* Waits for `pid`; true when it exited with status 0. */
static int child_ok(pid_t pid) {
    int status = 0;
    if (pid <= 0) return 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return 0;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "child %d: %s %d\n", (int)pid,
                WIFEXITED(status) ? "exit status" : "killed by signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        return 0;
    }
    return 1;
}

/* A child's exit code: 0 when none of its own checks failed. */
static int child_result(unsigned long failed_at_start) {
    unsigned long f = g_failed - failed_at_start;
    return f == 0 ? 0 : (f > 100 ? 100 : (int)f);
}

/* ---------------------------------------------------------------- options and bad input */

static void test_options(void) {
    emf_ring_options_t o;
    memset(&o, 0xAB, sizeof o);
    CHECK_STATUS(emf_ring_options_default(&o), EMF_OK);
    CHECK(o.capacity == (size_t)1 << 20);
    CHECK(!o.multi_producer);
    CHECK(o.max_producers == 16 && o.max_subscribers == 8);
    CHECK(o.stall_timeout_ms == 100);
    CHECK(o.mode == 0600);
    CHECK(o.dir == NULL);
    CHECK_ERROR(emf_ring_options_default(NULL), EMF_ERR_NULL_ARGUMENT, "out");

    /* capacity: a power of two from 4096 to 1 GiB; past the maximum is TOO_LARGE (the
       header's status rule), anything else malformed INVALID_ARGUMENT. */
    const size_t bad_caps[] = {0, 1, 1000, 2048, 4095, 4097, 3 * 4096, 1000000,
                               ((size_t)1 << 30) + 4096, (size_t)-1};
    static char marker;
    emf_ring_t *const sentinel = (emf_ring_t *)(void *)&marker;
    for (size_t i = 0; i < sizeof bad_caps / sizeof bad_caps[0]; i++) {
        emf_ring_options_t b = ring_opts(bad_caps[i]);
        emf_ring_t *r = sentinel;
        emf_status_t want =
            bad_caps[i] > ((size_t)1 << 30) ? EMF_ERR_TOO_LARGE : EMF_ERR_INVALID_ARGUMENT;
        CHECK_ERROR(emf_ring_create("badcap", &b, &r), want, "capacity");
        CHECK(r == sentinel); /* out-parameter untouched */
    }
    struct {
        bool multi;
        uint32_t max_p, max_s;
        emf_status_t want;
    } bad_slots[] = {{false, 1, 0, EMF_ERR_INVALID_ARGUMENT},
                     {false, 1, 1025, EMF_ERR_TOO_LARGE},
                     {true, 0, 8, EMF_ERR_INVALID_ARGUMENT},
                     {true, 1025, 8, EMF_ERR_TOO_LARGE}};
    for (size_t i = 0; i < sizeof bad_slots / sizeof bad_slots[0]; i++) {
        emf_ring_options_t b = ring_opts(4096);
        b.multi_producer = bad_slots[i].multi;
        b.max_producers = bad_slots[i].max_p;
        b.max_subscribers = bad_slots[i].max_s;
        emf_ring_t *r = sentinel;
        CHECK_ERROR(emf_ring_create("badslots", &b, &r), bad_slots[i].want, "max_");
        CHECK(r == sentinel);
    }
    {
        emf_ring_options_t b = ring_opts(4096);
        b.mode = 01777; /* sticky bit: outside 0777 */
        emf_ring_t *r = sentinel;
        CHECK_ERROR(emf_ring_create("badmode", &b, &r), EMF_ERR_INVALID_ARGUMENT, "mode");
        b.mode = 04600;
        CHECK_ERROR(emf_ring_create("badmode", &b, &r), EMF_ERR_INVALID_ARGUMENT, "mode");
        CHECK(r == sentinel);
    }
    {
        emf_ring_options_t b = ring_opts(4096);
        emf_ring_t *r = sentinel;
        b.dir = "/nonexistent-emf-dir/x";
        CHECK_ERROR(emf_ring_create("nodir", &b, &r), EMF_ERR_NOT_FOUND, "nonexistent-emf-dir");
        b.dir = "/dev/null"; /* not a directory */
        CHECK_ERROR(emf_ring_create("notdir", &b, &r), EMF_ERR_IO, "/dev/null");
        b.dir = "\xff\xfe";
        CHECK_ERROR(emf_ring_create("badutf8dir", &b, &r), EMF_ERR_INVALID_ARGUMENT, "UTF-8");
        CHECK(r == sentinel);
    }
    /* A single-producer ring ignores max_producers (forced to 1), even 0. */
    {
        emf_ring_options_t b = ring_opts(4096);
        b.max_producers = 0;
        emf_ring_t *r = create_ring("sp-maxp0", &b);
        CHECK_STATUS(emf_ring_unlink(r), EMF_OK);
        CHECK_STATUS(emf_ring_free(r), EMF_OK);
    }
    /* The file mode is applied exactly (umask or not). */
    {
        emf_ring_options_t b = ring_opts(4096);
        b.mode = 0640;
        emf_ring_t *r = create_ring("mode640", &b);
        char path[1024];
        struct stat st;
        snprintf(path, sizeof path, "%s/emf-mode640", g_dir);
        CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0640);
        CHECK_STATUS(emf_ring_unlink(r), EMF_OK);
        CHECK(stat(path, &st) != 0 && errno == ENOENT);
        CHECK_STATUS(emf_ring_free(r), EMF_OK);
    }
}

static void test_names(void) {
    static char marker;
    emf_ring_t *const sentinel = (emf_ring_t *)(void *)&marker;
    emf_ring_options_t o = ring_opts(4096);
    char long_name[202];
    memset(long_name, 'a', 201);
    long_name[201] = '\0';
    const char *bad[] = {"", ".hidden", "a/b", "../escape", "sp ace", "tab\t", "semi;colon",
                         "t\xc3\xa9", /* valid UTF-8, but not [A-Za-z0-9._-] */
                         long_name};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        emf_ring_t *r = sentinel;
        CHECK_ERROR(emf_ring_create(bad[i], &o, &r), EMF_ERR_INVALID_ARGUMENT, "segment name");
        CHECK_ERROR(emf_ring_open(bad[i], g_dir, &r), EMF_ERR_INVALID_ARGUMENT, "segment name");
        CHECK(r == sentinel);
    }
    emf_ring_t *r = sentinel;
    CHECK_ERROR(emf_ring_create("\xff\xfe", &o, &r), EMF_ERR_INVALID_ARGUMENT, "UTF-8");
    CHECK_ERROR(emf_ring_create(NULL, &o, &r), EMF_ERR_NULL_ARGUMENT, "name");
    CHECK_ERROR(emf_ring_create("ok", &o, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_ring_open(NULL, g_dir, &r), EMF_ERR_NULL_ARGUMENT, "name");
    CHECK_ERROR(emf_ring_open("ok", g_dir, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_ring_open("missing", g_dir, &r), EMF_ERR_NOT_FOUND, "missing");
    CHECK_ERROR(emf_ring_open("missing", "/nonexistent-emf-dir", &r), EMF_ERR_NOT_FOUND,
                "nonexistent-emf-dir");
    CHECK(r == sentinel);

    /* 200 characters of every allowed kind is fine. */
    long_name[200] = '\0';
    memcpy(long_name, "Az09._-", 7);
    r = create_ring(long_name, &o);
    emf_ring_t *again = NULL;
    CHECK_STATUS(emf_ring_open(long_name, g_dir, &again), EMF_OK);
    CHECK_STATUS(emf_ring_free(again), EMF_OK);
    CHECK_STATUS(emf_ring_unlink(r), EMF_OK);
    CHECK_STATUS(emf_ring_free(r), EMF_OK);

    /* A file that is not a segment: refused when opened, replaced when created over. */
    char path[1024];
    snprintf(path, sizeof path, "%s/emf-garbage", g_dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f != NULL) {
        for (int i = 0; i < 100; i++) fputc('#', f);
        fclose(f);
    }
    r = sentinel;
    CHECK_ERROR(emf_ring_open("garbage", g_dir, &r), EMF_ERR_CORRUPT, "too small");
    CHECK(r == sentinel);
    r = create_ring("garbage", &o);
    size_t max = 0;
    CHECK_STATUS(emf_ring_max_payload(r, &max), EMF_OK);
    CHECK(max == 4096 / 4 - 8);
    CHECK_STATUS(emf_ring_unlink(r), EMF_OK);
    CHECK_STATUS(emf_ring_free(r), EMF_OK);
}

/* NULL arguments, freed handles, handles of the wrong type, exclusivity. */
static void test_handles(void) {
    static char marker;
    emf_ring_t *const rs = (emf_ring_t *)(void *)&marker;
    emf_producer_t *const ps = (emf_producer_t *)(void *)&marker;
    emf_consumer_t *const cs = (emf_consumer_t *)(void *)&marker;
    emf_ring_options_t o = ring_opts(4096);
    emf_ring_t *r = create_ring("handles", &o);
    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);
    uint8_t buf[256];
    size_t len = 0, n = 0, frames = 0, bytes = 0;
    bool ready = false;
    uint64_t lag = 0;
    emf_ring_stats_t st;
    uint8_t *slot = NULL;
    emf_slice_t one = {buf, 8};

    /* Exclusivity: one producer on a single-producer ring, one primary consumer, one live
     * ring per name. */
    emf_producer_t *p2 = ps;
    CHECK_ERROR(emf_producer_new(r, &p2), EMF_ERR_BUSY, "producer slots");
    CHECK(p2 == ps);
    emf_consumer_t *c2 = cs;
    CHECK_ERROR(emf_consumer_new(r, &c2), EMF_ERR_BUSY, "consumer");
    CHECK(c2 == cs);
    emf_ring_t *r2 = rs;
    CHECK_ERROR(emf_ring_create("handles", &o, &r2), EMF_ERR_BUSY, "live participants");
    CHECK(r2 == rs);

    /* NULL handles and out-parameters. */
    CHECK_ERROR(emf_ring_stats(NULL, &st), EMF_ERR_NULL_ARGUMENT, "ring");
    CHECK_ERROR(emf_ring_stats(r, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_ring_max_payload(NULL, &len), EMF_ERR_NULL_ARGUMENT, "ring");
    CHECK_ERROR(emf_ring_max_payload(r, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_ring_unlink(NULL), EMF_ERR_NULL_ARGUMENT, "ring");
    CHECK_ERROR(emf_producer_new(NULL, &p2), EMF_ERR_NULL_ARGUMENT, "ring");
    CHECK_ERROR(emf_producer_new(r, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_consumer_new(NULL, &c2), EMF_ERR_NULL_ARGUMENT, "ring");
    CHECK_ERROR(emf_consumer_new(r, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_consumer_subscribe(NULL, &c2), EMF_ERR_NULL_ARGUMENT, "ring");
    CHECK_ERROR(emf_consumer_subscribe(r, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_producer_send(NULL, buf, 8), EMF_ERR_NULL_ARGUMENT, "producer");
    CHECK_ERROR(emf_producer_send(p, NULL, 8), EMF_ERR_NULL_ARGUMENT, "data");
    CHECK_ERROR(emf_producer_send_timeout(NULL, buf, 8, EMF_WAIT_SPIN, 0), EMF_ERR_NULL_ARGUMENT,
                "producer");
    CHECK_ERROR(emf_producer_send_timeout(p, NULL, 8, EMF_WAIT_SPIN, 0), EMF_ERR_NULL_ARGUMENT,
                "data");
    CHECK_ERROR(emf_producer_send_batch(NULL, &one, 1, &n), EMF_ERR_NULL_ARGUMENT, "producer");
    CHECK_ERROR(emf_producer_send_batch(p, NULL, 1, &n), EMF_ERR_NULL_ARGUMENT, "frames");
    CHECK_ERROR(emf_producer_send_batch(p, &one, 1, NULL), EMF_ERR_NULL_ARGUMENT, "out_sent");
    {
        emf_slice_t holes[2] = {{buf, 8}, {NULL, 5}};
        n = 777;
        CHECK_ERROR(emf_producer_send_batch(p, holes, 2, &n), EMF_ERR_NULL_ARGUMENT, "frames[i]");
        CHECK(n == 777);
    }
    CHECK_ERROR(emf_producer_claim(NULL, 8, &slot), EMF_ERR_NULL_ARGUMENT, "producer");
    CHECK_ERROR(emf_producer_claim(p, 8, NULL), EMF_ERR_NULL_ARGUMENT, "out_data");
    CHECK_ERROR(emf_producer_commit(NULL, 8), EMF_ERR_NULL_ARGUMENT, "producer");
    CHECK_ERROR(emf_producer_abort(NULL), EMF_ERR_NULL_ARGUMENT, "producer");
    CHECK_ERROR(emf_consumer_recv(NULL, buf, sizeof buf, &len), EMF_ERR_NULL_ARGUMENT, "consumer");
    CHECK_ERROR(emf_consumer_recv(c, NULL, 8, &len), EMF_ERR_NULL_ARGUMENT, "buf");
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, NULL), EMF_ERR_NULL_ARGUMENT, "out_len");
    CHECK_ERROR(emf_consumer_recv_batch(NULL, buf, sizeof buf, 4, &frames, &bytes),
                EMF_ERR_NULL_ARGUMENT, "consumer");
    CHECK_ERROR(emf_consumer_recv_batch(c, NULL, 8, 4, &frames, &bytes), EMF_ERR_NULL_ARGUMENT,
                "buf");
    CHECK_ERROR(emf_consumer_recv_batch(c, buf, sizeof buf, 4, NULL, &bytes),
                EMF_ERR_NULL_ARGUMENT, "out_frames");
    CHECK_ERROR(emf_consumer_recv_batch(c, buf, sizeof buf, 4, &frames, NULL),
                EMF_ERR_NULL_ARGUMENT, "out_bytes");
    CHECK_ERROR(emf_consumer_poll(c, 4, NULL, NULL, &n), EMF_ERR_NULL_ARGUMENT, "callback");
    CHECK_ERROR(emf_consumer_wait(NULL, EMF_WAIT_SPIN, 0, &ready), EMF_ERR_NULL_ARGUMENT,
                "consumer");
    CHECK_ERROR(emf_consumer_wait(c, EMF_WAIT_SPIN, 0, NULL), EMF_ERR_NULL_ARGUMENT, "out_ready");
    CHECK_ERROR(emf_consumer_lag(NULL, &lag), EMF_ERR_NULL_ARGUMENT, "consumer");
    CHECK_ERROR(emf_consumer_lag(c, NULL), EMF_ERR_NULL_ARGUMENT, "out");

    /* Unknown wait strategies; lengths past the frame limit and past EMF_MAX_INPUT_LEN
     * (refused before any byte is read). */
    CHECK_ERROR(emf_producer_send_timeout(p, buf, 8, 3, 10), EMF_ERR_INVALID_ARGUMENT,
                "strategy");
    CHECK_ERROR(emf_consumer_wait(c, 99, 10, &ready), EMF_ERR_INVALID_ARGUMENT, "strategy");
    CHECK_ERROR(emf_producer_send(p, buf, 4096 / 4 - 8 + 1), EMF_ERR_TOO_LARGE, "maximum payload");
    CHECK_ERROR(emf_producer_send(p, buf, (size_t)EMF_MAX_INPUT_LEN + 1), EMF_ERR_TOO_LARGE,
                "exceeds");
    CHECK_ERROR(emf_producer_claim(p, 4096, &slot), EMF_ERR_TOO_LARGE, "maximum payload");
    CHECK(slot == NULL);

    /* NULL data with length 0 is an empty frame. */
    CHECK_STATUS(emf_producer_send(p, NULL, 0), EMF_OK);
    len = 99;
    CHECK_STATUS(emf_consumer_recv(c, NULL, 0, &len), EMF_OK);
    CHECK(len == 0);
    n = 99;
    CHECK_STATUS(emf_producer_send_batch(p, NULL, 0, &n), EMF_OK);
    CHECK(n == 0);

    /* Handles of the wrong type and made-up values are refused, never dereferenced. */
    CHECK_ERROR(emf_consumer_recv((emf_consumer_t *)(void *)p, buf, sizeof buf, &len),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_producer_send((emf_producer_t *)(void *)c, buf, 8), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_ring_stats((emf_ring_t *)(void *)p, &st), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_producer_free((emf_producer_t *)(void *)r), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_producer_send((emf_producer_t *)(uintptr_t)0x1234, buf, 8),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_ring_free((emf_ring_t *)(uintptr_t)0xDEADBEEF0001u), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_consumer_free(cs), EMF_ERR_INVALID_ARGUMENT, "not a live handle");

    /* Unlinked: the name is gone, the handles keep working. */
    CHECK_STATUS(emf_ring_unlink(r), EMF_OK);
    r2 = rs;
    CHECK_ERROR(emf_ring_open("handles", g_dir, &r2), EMF_ERR_NOT_FOUND, "handles");
    CHECK_ERROR(emf_ring_unlink(r), EMF_ERR_NOT_FOUND, "handles");

    /* Freed ring: producers and consumers keep the mapping alive; the ring handle is dead. */
    CHECK_STATUS(emf_ring_free(r), EMF_OK);
    CHECK_ERROR(emf_ring_free(r), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_ring_stats(r, &st), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_ring_max_payload(r, &len), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_ring_unlink(r), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_producer_new(r, &p2), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_consumer_new(r, &c2), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_consumer_subscribe(r, &c2), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK(p2 == ps && c2 == cs);
    CHECK_STATUS(send_seq(p, 64, 1), EMF_OK);
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(frame_is(buf, len, 64, 1));

    /* Freed producer and consumer: every call refuses them, also a second free. */
    CHECK_STATUS(emf_producer_free(p), EMF_OK);
    CHECK_ERROR(emf_producer_free(p), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_producer_send(p, buf, 8), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_producer_send_timeout(p, buf, 8, EMF_WAIT_PARK, 1), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_producer_send_batch(p, &one, 1, &n), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_producer_claim(p, 8, &slot), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_producer_commit(p, 8), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_producer_abort(p), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    CHECK_ERROR(emf_consumer_free(c), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_consumer_recv_batch(c, buf, sizeof buf, 4, &frames, &bytes),
                EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_consumer_wait(c, EMF_WAIT_SPIN, 0, &ready), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_consumer_lag(c, &lag), EMF_ERR_INVALID_ARGUMENT, "not a live handle");

    /* A new handle may reuse the slot of a freed one; the stale handle stays dead. */
    {
        emf_ring_t *r3 = create_ring("handles-reuse", &o);
        emf_producer_t *p3 = new_producer(r3);
        CHECK_ERROR(emf_producer_send(p, buf, 8), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
        CHECK_STATUS(emf_producer_send(p3, buf, 8), EMF_OK);
        CHECK_STATUS(emf_producer_free(p3), EMF_OK);
        CHECK_STATUS(emf_ring_unlink(r3), EMF_OK);
        CHECK_STATUS(emf_ring_free(r3), EMF_OK);
    }

    /* NULL frees are fine. */
    CHECK_STATUS(emf_ring_free(NULL), EMF_OK);
    CHECK_STATUS(emf_producer_free(NULL), EMF_OK);
    CHECK_STATUS(emf_consumer_free(NULL), EMF_OK);
}

/* ---------------------------------------------------------------- back-pressure */

struct drain_arg {
    const char *name;
    uint64_t total;
};

/* Child: attaches the consumer after a pause and receives `total` frames in order. */
static int drain_child(void *argp) {
    const struct drain_arg *a = argp;
    unsigned long failed = g_failed;
    struct timespec pause = {0, 30 * 1000 * 1000};
    nanosleep(&pause, NULL);
    emf_ring_t *r = NULL;
    CHECK_STATUS(emf_ring_open(a->name, g_dir, &r), EMF_OK);
    emf_consumer_t *c = new_consumer(r);
    uint64_t seq = 0;
    size_t bad = 0;
    int idle = 0;
    while (c != NULL && seq < a->total && idle < 20) {
        bool ready = false;
        CHECK_STATUS(emf_consumer_wait(c, EMF_WAIT_PARK, 500, &ready), EMF_OK);
        idle = ready ? 0 : idle + 1;
        drain_seq(c, &seq, 64, &bad);
    }
    CHECK(seq == a->total);
    CHECK(bad == 0);
    emf_consumer_free(c);
    emf_ring_free(r);
    return child_result(failed);
}

static void test_backpressure(void) {
    emf_ring_options_t o = ring_opts(4096);
    emf_ring_t *r = create_ring("full", &o);
    emf_producer_t *p = new_producer(r);
    uint8_t buf[256];

    /* No consumer attached yet: the primary consumer's position still holds producers back,
     * so nothing is overwritten before somebody reads it. */
    uint64_t sent = 0;
    emf_status_t st;
    while ((st = send_seq(p, 64, sent)) == EMF_OK) sent++;
    CHECK_ERROR(st, EMF_ERR_FULL, "full");
    CHECK(sent == 4096 / (8 + 64)); /* 56 frames of 8 + 64 bytes */
    CHECK_ERROR(send_seq(p, 64, sent), EMF_ERR_FULL, "full");
    /* The last 64 bytes still take 8 empty frames (an 8-byte header each): the ring fills
     * to the last byte. */
    uint64_t empties = 0;
    while ((st = send_seq(p, 0, 0)) == EMF_OK) empties++;
    CHECK_ERROR(st, EMF_ERR_FULL, "full");
    CHECK(empties == (4096 - 56 * 72) / 8);
    emf_ring_stats_t s = stats_of(r);
    CHECK(s.sent == sent + empties && s.backpressure >= 3 && s.received == 0);
    CHECK(s.tail == 4096 && s.max_lag == 4096);

    /* send_timeout: no space comes, so it times out after about the timeout. */
    const uint32_t strategies[] = {EMF_WAIT_SPIN, EMF_WAIT_YIELD, EMF_WAIT_PARK};
    for (size_t i = 0; i < 3; i++) {
        fill_frame(buf, 64, sent);
        uint64_t t0 = now_ns();
        CHECK_ERROR(emf_producer_send_timeout(p, buf, 64, strategies[i], 20), EMF_ERR_TIMEOUT,
                    "no space");
        CHECK(now_ns() - t0 >= 20u * 1000 * 1000);
    }

    /* Nothing was lost: a consumer attached now gets every accepted frame, in order. */
    emf_consumer_t *c = new_consumer(r);
    uint64_t seq = 0;
    size_t bad = 0;
    size_t len = 0;
    for (uint64_t i = 0; i < sent; i++) {
        CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
        if (!frame_is(buf, len, 64, seq++)) bad++;
    }
    for (uint64_t i = 0; i < empties; i++) {
        len = 99;
        CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
        if (len != 0) bad++;
    }
    CHECK(bad == 0);
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");
    s = stats_of(r);
    CHECK(s.received == sent + empties);
    emf_consumer_free(c);

    /* Across processes: refill the ring, then a child attaches the consumer 30 ms later and
     * drains; send_timeout(PARK) sleeps on the space futex until the child wakes it. The
     * restarted consumer resumes where the previous one stopped. */
    pid_t pid = -1;
    {
        const uint64_t total = 3 * sent;
        struct drain_arg a = {"full", total};
        uint64_t i = 0;
        while (i < total && send_seq(p, 64, i) == EMF_OK) i++;
        CHECK(i == sent);
        pid = fork_child(drain_child, &a);
        size_t timeouts = 0;
        for (; i < total && pid > 0; i++) {
            fill_frame(buf, 64, i);
            st = emf_producer_send_timeout(p, buf, 64, EMF_WAIT_PARK, 5000);
            if (st != EMF_OK) {
                timeouts++;
                break;
            }
        }
        CHECK(i == total && timeouts == 0);
        CHECK(child_ok(pid));
    }
    CHECK_STATUS(emf_producer_free(p), EMF_OK);
    CHECK_STATUS(emf_ring_unlink(r), EMF_OK);
    CHECK_STATUS(emf_ring_free(r), EMF_OK);
}

/* ---------------------------------------------------------------- send_batch */

static void test_send_batch(void) {
    enum { N = 100 };
    emf_ring_options_t o = ring_opts(4096);
    emf_ring_t *r = create_ring("batch", &o);
    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);
    static uint8_t data[N][64];
    emf_slice_t frames[N];
    for (size_t i = 0; i < N; i++) {
        fill_frame(data[i], 64, i);
        frames[i].data = data[i];
        frames[i].len = 64;
    }

    /* 100 frames do not fit in a 4 KiB ring (56 do): the first call takes a prefix and
     * returns EMF_OK; the caller keeps frames[sent..] and offers them again after the
     * consumer made room. Every frame arrives once, in order. */
    size_t done = 0, calls = 0, first = 0, bad = 0;
    uint64_t seq = 0;
    while (done < N && calls < 50) {
        size_t sent = 12345;
        CHECK_STATUS(emf_producer_send_batch(p, frames + done, N - done, &sent), EMF_OK);
        CHECK(sent >= 1 && sent <= N - done);
        if (sent == 12345) break;
        if (calls == 0) first = sent;
        done += sent;
        calls++;
        drain_seq(c, &seq, 64, &bad);
    }
    CHECK(done == N && seq == N && bad == 0);
    CHECK(first > 0 && first < N);
    CHECK(calls >= 2);

    /* 57 frames into the empty ring, which has room for 56: the longest prefix that fits is
     * sent, exactly 56, without counting back-pressure; the 57th alone is refused (counted
     * once). */
    {
        size_t sent = 0;
        uint64_t bp = stats_of(r).backpressure;
        CHECK_STATUS(emf_producer_send_batch(p, frames, 57, &sent), EMF_OK);
        printf("send_batch: 57 x 64 B offered to an empty 4 KiB ring (which holds 56): %zu accepted\n",
               sent);
        CHECK(sent == 56);
        CHECK(stats_of(r).backpressure == bp);
        sent = 4242;
        CHECK_ERROR(emf_producer_send_batch(p, frames + 56, 1, &sent), EMF_ERR_FULL, "full");
        CHECK(sent == 4242);
        CHECK(stats_of(r).backpressure == bp + 1);
        seq = 0;
        bad = 0;
        CHECK(drain_seq(c, &seq, 64, &bad) == 56 && bad == 0);
        /* Mixed sizes: up to the first frame that does not fit, never a later smaller one. */
        static uint8_t big[1000];
        emf_slice_t mixed[6] = {{big, 1000}, {big, 1000}, {big, 1000}, {big, 1000},
                                {big, 1000}, {data[0], 8}};
        CHECK_STATUS(emf_producer_send_batch(p, mixed, 6, &sent), EMF_OK);
        /* The tail is at 4032, 64 bytes before the end: the first frame (8 + 1008 bytes)
         * wraps after 64 bytes of padding, so 64 + 3 x 1016 = 3112 fit in 4096 and a 4th does
         * not; the 8-byte frame after the 5th is never sent ahead of it. */
        CHECK(sent == 3);
        size_t got = 0, len = 0;
        uint8_t one[1024];
        while (emf_consumer_recv(c, one, sizeof one, &len) == EMF_OK) {
            CHECK(len == 1000);
            got++;
        }
        CHECK(got == sent);
    }

    /* A full ring: EMF_ERR_FULL, nothing sent, out_sent untouched. */
    uint64_t k = 0;
    while (send_seq(p, 64, k) == EMF_OK) k++;
    size_t sent = 4242;
    CHECK_ERROR(emf_producer_send_batch(p, frames, 2, &sent), EMF_ERR_FULL, "full");
    CHECK(sent == 4242);
    seq = 0;
    bad = 0;
    CHECK(drain_seq(c, &seq, 64, &bad) == k && bad == 0);

    /* One frame over the limit refuses the whole batch before anything is sent. */
    {
        static uint8_t big[2000];
        emf_slice_t mixed[3] = {{data[0], 64}, {big, sizeof big}, {data[1], 64}};
        uint64_t before = stats_of(r).sent;
        CHECK_ERROR(emf_producer_send_batch(p, mixed, 3, &sent), EMF_ERR_TOO_LARGE,
                    "maximum payload");
        CHECK(stats_of(r).sent == before);
        uint8_t buf[64];
        size_t len;
        CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");
    }

    /* Mixed lengths, an empty frame with NULL data among them. */
    {
        emf_slice_t mixed[4] = {{data[3], 1}, {NULL, 0}, {data[5], 63}, {data[7], 17}};
        CHECK_STATUS(emf_producer_send_batch(p, mixed, 4, &sent), EMF_OK);
        CHECK(sent == 4);
        uint8_t buf[64];
        size_t len = 0;
        for (size_t i = 0; i < 4; i++) {
            CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
            CHECK(len == mixed[i].len && (len == 0 || memcmp(buf, mixed[i].data, len) == 0));
        }
    }
    emf_consumer_free(c);
    emf_producer_free(p);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

/* ---------------------------------------------------------------- claim / commit / abort */

static void test_claim(void) {
    emf_ring_options_t o = ring_opts(4096);
    emf_ring_t *r = create_ring("claim", &o);
    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);
    uint8_t buf[2048], want[100];
    size_t len = 0;
    uint8_t *slot = NULL;

    /* Claim 100, write in place, commit the first 60. */
    fill_frame(want, 100, 7);
    CHECK_STATUS(emf_producer_claim(p, 100, &slot), EMF_OK);
    CHECK(slot != NULL);
    if (slot != NULL) memcpy(slot, want, 100);
    /* One claim at a time; no other send while it is open. */
    uint8_t *slot2 = NULL;
    CHECK_ERROR(emf_producer_claim(p, 8, &slot2), EMF_ERR_INVALID_ARGUMENT, "open claim");
    CHECK(slot2 == NULL);
    CHECK_ERROR(emf_producer_send(p, want, 8), EMF_ERR_INVALID_ARGUMENT, "open claim");
    {
        emf_slice_t one = {want, 8};
        size_t sent = 0;
        CHECK_ERROR(emf_producer_send_batch(p, &one, 1, &sent), EMF_ERR_INVALID_ARGUMENT,
                    "open claim");
    }
    /* Not visible before the commit. */
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");
    CHECK_STATUS(emf_producer_commit(p, 60), EMF_OK);
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(len == 60 && memcmp(buf, want, 60) == 0);

    /* Commit or abort without a claim. */
    CHECK_ERROR(emf_producer_commit(p, 1), EMF_ERR_INVALID_ARGUMENT, "no open claim");
    CHECK_ERROR(emf_producer_abort(p), EMF_ERR_INVALID_ARGUMENT, "no open claim");

    /* Abort: nothing is delivered, the space is skipped. */
    uint64_t sent_before = stats_of(r).sent;
    CHECK_STATUS(emf_producer_claim(p, 64, &slot), EMF_OK);
    CHECK_STATUS(emf_producer_abort(p), EMF_OK);
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");
    CHECK(stats_of(r).sent == sent_before);
    CHECK_STATUS(send_seq(p, 64, 8), EMF_OK);
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(frame_is(buf, len, 64, 8));

    /* A zero-length claim commits an empty frame. */
    CHECK_STATUS(emf_producer_claim(p, 0, &slot), EMF_OK);
    CHECK_STATUS(emf_producer_commit(p, 0), EMF_OK);
    len = 99;
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(len == 0);

    /* Committing more than was claimed is refused, and the claim stays open: nothing is
     * delivered, nothing else may be sent, and it can still be committed or aborted. */
    CHECK_STATUS(emf_producer_claim(p, 10, &slot), EMF_OK);
    memcpy(slot, want, 10);
    CHECK_ERROR(emf_producer_commit(p, 1000), EMF_ERR_INVALID_ARGUMENT, "claim still open");
    CHECK_ERROR(emf_producer_commit(p, 11), EMF_ERR_INVALID_ARGUMENT, "exceeds the claim of 10");
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");
    CHECK_ERROR(send_seq(p, 8, 0), EMF_ERR_INVALID_ARGUMENT, "open claim");
    CHECK_STATUS(emf_producer_commit(p, 10), EMF_OK);
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(len == 10 && memcmp(buf, want, 10) == 0);
    sent_before = stats_of(r).sent;
    CHECK_STATUS(emf_producer_claim(p, 10, &slot), EMF_OK);
    CHECK_ERROR(emf_producer_commit(p, (size_t)-1), EMF_ERR_INVALID_ARGUMENT, "claim still open");
    CHECK_STATUS(emf_producer_abort(p), EMF_OK);
    CHECK_ERROR(emf_producer_commit(p, 0), EMF_ERR_INVALID_ARGUMENT, "no open claim");
    CHECK(stats_of(r).sent == sent_before);
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");

    /* The largest frame, and claims that wrap around the end of the data region. */
    size_t max = 0;
    CHECK_STATUS(emf_ring_max_payload(r, &max), EMF_OK);
    for (int lap = 0; lap < 12; lap++) {
        size_t n = lap % 3 == 0 ? max : (size_t)(100 + (lap * 397) % 900);
        uint8_t frame[2048];
        fill_frame(frame, n, (uint64_t)lap);
        CHECK_STATUS(emf_producer_claim(p, n, &slot), EMF_OK);
        if (slot == NULL) break;
        memcpy(slot, frame, n);
        CHECK_STATUS(emf_producer_commit(p, n), EMF_OK);
        CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
        CHECK(frame_is(buf, len, n, (uint64_t)lap));
    }
    CHECK_ERROR(emf_producer_claim(p, max + 1, &slot), EMF_ERR_TOO_LARGE, "maximum payload");

    /* Freeing a producer with an open claim aborts the claim; a new producer carries on. */
    CHECK_STATUS(emf_producer_claim(p, 32, &slot), EMF_OK);
    memset(slot, 'x', 32);
    CHECK_STATUS(emf_producer_free(p), EMF_OK);
    p = new_producer(r);
    CHECK_STATUS(send_seq(p, 64, 9), EMF_OK);
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(frame_is(buf, len, 64, 9));
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");

    emf_consumer_free(c);
    emf_producer_free(p);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

/* ---------------------------------------------------------------- recv, recv_batch, poll */

static void test_recv(void) {
    emf_ring_options_t o = ring_opts(4096);
    emf_ring_t *r = create_ring("recv", &o);
    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);
    uint8_t buf[256];
    size_t len = 4242;

    /* Empty: EMF_ERR_EMPTY, out_len untouched. */
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");
    CHECK(len == 4242);

    /* Too small: EMF_ERR_BUFFER_TOO_SMALL with the length needed; the frame stays. */
    CHECK_STATUS(send_seq(p, 64, 1), EMF_OK);
    len = 0;
    CHECK_ERROR(emf_consumer_recv(c, buf, 10, &len), EMF_ERR_BUFFER_TOO_SMALL, "64 bytes");
    CHECK(len == 64);
    len = 0;
    CHECK_ERROR(emf_consumer_recv(c, NULL, 0, &len), EMF_ERR_BUFFER_TOO_SMALL, "64 bytes");
    CHECK(len == 64);
    len = 0;
    CHECK_ERROR(emf_consumer_recv(c, buf, 63, &len), EMF_ERR_BUFFER_TOO_SMALL, "64 bytes");
    CHECK(len == 64);
    CHECK_STATUS(emf_consumer_recv(c, buf, 64, &len), EMF_OK); /* exactly enough */
    CHECK(frame_is(buf, len, 64, 1));
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");

    /* The stats count the delivered frame only once. */
    emf_ring_stats_t s = stats_of(r);
    CHECK(s.sent == 1 && s.received == 1);

    emf_consumer_free(c);
    emf_producer_free(p);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void test_recv_batch(void) {
    emf_ring_options_t o = ring_opts(4096);
    emf_ring_t *r = create_ring("rbatch", &o);
    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);
    static const size_t lens[] = {0, 1, 7, 64, 100, 3};
    const size_t nl = sizeof lens / sizeof lens[0];
    uint8_t buf[1024];
    size_t frames = 99, bytes = 99;

    /* Nothing ready: EMF_OK with 0 frames (also with a NULL buffer of capacity 0). */
    CHECK_STATUS(emf_consumer_recv_batch(c, buf, sizeof buf, 16, &frames, &bytes), EMF_OK);
    CHECK(frames == 0 && bytes == 0);
    CHECK_STATUS(emf_consumer_recv_batch(c, NULL, 0, 16, &frames, &bytes), EMF_OK);
    CHECK(frames == 0 && bytes == 0);

    for (size_t i = 0; i < nl; i++) CHECK_STATUS(send_seq(p, lens[i], i), EMF_OK);

    /* The next frame does not fit (it needs its length + 4 bytes): EMF_ERR_BUFFER_TOO_SMALL,
     * nothing consumed, the bytes needed in *out_bytes (out_frames untouched). Frame 0 is
     * empty, so it needs 4. */
    frames = bytes = 77;
    CHECK_ERROR(emf_consumer_recv_batch(c, buf, 3, 16, &frames, &bytes),
                EMF_ERR_BUFFER_TOO_SMALL, "needs 4 bytes");
    CHECK(frames == 77 && bytes == 4);
    bytes = 77;
    CHECK_ERROR(emf_consumer_recv_batch(c, NULL, 0, 16, &frames, &bytes),
                EMF_ERR_BUFFER_TOO_SMALL, "needs 4 bytes");
    CHECK(frames == 77 && bytes == 4);
    CHECK(stats_of(r).received == 0);

    /* max_frames caps the count: frames 0 and 1. */
    CHECK_STATUS(emf_consumer_recv_batch(c, buf, sizeof buf, 2, &frames, &bytes), EMF_OK);
    CHECK(frames == 2 && bytes == 4 + 0 + 4 + 1);
    CHECK(le32(buf) == 0 && le32(buf + 4) == 1 && frame_is(buf + 8, 1, 1, 1));

    /* cap limits the bytes: frames 2 and 3 fit exactly in 4+7+4+64, frame 4 does not. */
    size_t cap = 4 + 7 + 4 + 64;
    CHECK_STATUS(emf_consumer_recv_batch(c, buf, cap + 50, 16, &frames, &bytes), EMF_OK);
    CHECK(frames == 2 && bytes == cap);

    /* Frame 4 (100 bytes) needs 104: one byte less is too small, and says so. */
    frames = 77;
    CHECK_ERROR(emf_consumer_recv_batch(c, buf, 103, 16, &frames, &bytes),
                EMF_ERR_BUFFER_TOO_SMALL, "needs 104 bytes");
    CHECK(frames == 77 && bytes == 104);

    /* The rest, parsed as records: u32 little-endian length, then the bytes. */
    CHECK_STATUS(emf_consumer_recv_batch(c, buf, sizeof buf, 16, &frames, &bytes), EMF_OK);
    CHECK(frames == 2);
    size_t off = 0, bad = 0;
    for (size_t i = 4; i < nl && off + 4 <= bytes; i++) {
        uint32_t n = le32(buf + off);
        if (n != lens[i] || off + 4 + n > bytes || !frame_is(buf + off + 4, n, lens[i], i)) bad++;
        off += 4 + (size_t)n;
    }
    CHECK(bad == 0 && off == bytes);

    /* A large batch: everything that was sent, once, in order. */
    for (uint64_t i = 0; i < 40; i++) CHECK_STATUS(send_seq(p, 16, i), EMF_OK);
    size_t total = 0;
    bad = 0;
    while (total < 40) {
        CHECK_STATUS(emf_consumer_recv_batch(c, buf, 100, 64, &frames, &bytes), EMF_OK);
        if (frames == 0) break;
        CHECK(bytes == frames * 20); /* 5 records of 4 + 16 fit in 100 bytes */
        for (size_t i = 0; i < frames; i++) {
            if (le32(buf + 20 * i) != 16 || !frame_is(buf + 20 * i + 4, 16, 16, total + i)) bad++;
        }
        total += frames;
    }
    CHECK(total == 40 && bad == 0);
    CHECK(stats_of(r).received == nl + 40);

    emf_consumer_free(c);
    emf_producer_free(p);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

struct collect {
    emf_consumer_t *self;  /* the consumer being polled, for a re-entrant call */
    emf_status_t reentry;  /* what that call gave */
    size_t count;
    uint64_t next_seq;
    size_t len;
    size_t bad;
};

static int collect_cb(void *ctx, const uint8_t *data, size_t len) {
    struct collect *k = ctx;
    if (k->self != NULL && k->count == 0) {
        uint8_t tmp[8];
        size_t n = 0;
        k->reentry = emf_consumer_recv(k->self, tmp, sizeof tmp, &n);
    }
    if (!frame_is(data, len, k->len, k->next_seq)) k->bad++;
    k->next_seq++;
    k->count++;
    return 0;
}

/* Stops the poll after frame `stop_at` (a non-zero return; that frame counts as consumed). */
struct stopper {
    uint64_t next_seq;
    uint64_t stop_at;
    size_t calls;
    size_t bad;
};

static int stop_cb(void *ctx, const uint8_t *data, size_t len) {
    struct stopper *s = ctx;
    if (!frame_is(data, len, 48, s->next_seq)) s->bad++;
    s->calls++;
    return s->next_seq++ == s->stop_at ? -1 : 0; /* any non-zero value stops */
}

/* Tries to free the consumer being polled from inside its own callback. */
struct self_free {
    emf_consumer_t *self;
    emf_status_t status;
    char message[256];
    size_t calls;
};

static int self_free_cb(void *ctx, const uint8_t *data, size_t len) {
    struct self_free *f = ctx;
    (void)data;
    (void)len;
    f->status = emf_consumer_free(f->self);
    snprintf(f->message, sizeof f->message, "%.*s", (int)(sizeof f->message - 1), last_error());
    f->calls++;
    return 0;
}

static void test_poll(void) {
    emf_ring_options_t o = ring_opts(4096);
    emf_ring_t *r = create_ring("poll", &o);
    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);
    for (uint64_t i = 0; i < 10; i++) CHECK_STATUS(send_seq(p, 48, i), EMF_OK);

    /* The limit is respected; a call into the same consumer from the callback is refused. */
    struct collect k = {c, EMF_OK, 0, 0, 48, 0};
    size_t n = 0;
    CHECK_STATUS(emf_consumer_poll(c, 4, collect_cb, &k, &n), EMF_OK);
    CHECK(n == 4 && k.count == 4 && k.bad == 0);
    CHECK(k.reentry == EMF_ERR_BUSY);
    k.self = NULL;
    CHECK_STATUS(emf_consumer_poll(c, 100, collect_cb, &k, &n), EMF_OK);
    CHECK(n == 6 && k.count == 10 && k.bad == 0);
    CHECK_STATUS(emf_consumer_poll(c, 100, collect_cb, &k, &n), EMF_OK);
    CHECK(n == 0);
    /* limit 0 delivers nothing. */
    CHECK_STATUS(send_seq(p, 48, 10), EMF_OK);
    CHECK_STATUS(emf_consumer_poll(c, 0, collect_cb, &k, &n), EMF_OK);
    CHECK(n == 0 && k.count == 10);
    CHECK_STATUS(emf_consumer_poll(c, 1, collect_cb, &k, &n), EMF_OK);
    CHECK(n == 1 && k.count == 11 && k.bad == 0);

    /* A callback returning non-zero stops the poll after its frame, which is consumed. */
    for (uint64_t i = 0; i < 10; i++) CHECK_STATUS(send_seq(p, 48, i), EMF_OK);
    struct stopper st = {0, 2, 0, 0};
    CHECK_STATUS(emf_consumer_poll(c, 100, stop_cb, &st, &n), EMF_OK);
    CHECK(n == 3 && st.calls == 3 && st.next_seq == 3); /* frames 0, 1, 2 */
    st.stop_at = 3; /* stops on its first frame: one consumed */
    CHECK_STATUS(emf_consumer_poll(c, 100, stop_cb, &st, &n), EMF_OK);
    CHECK(n == 1 && st.calls == 4);
    st.stop_at = 9; /* the limit still applies before the stop */
    CHECK_STATUS(emf_consumer_poll(c, 2, stop_cb, &st, &n), EMF_OK);
    CHECK(n == 2 && st.next_seq == 6);
    CHECK_STATUS(emf_consumer_poll(c, 100, stop_cb, &st, &n), EMF_OK); /* stop on the last */
    CHECK(n == 4 && st.next_seq == 10 && st.calls == 10 && st.bad == 0);
    CHECK_STATUS(emf_consumer_poll(c, 100, stop_cb, &st, &n), EMF_OK);
    CHECK(n == 0 && st.calls == 10);
    CHECK(stats_of(r).received == 11 + 10);

    /* Freeing the consumer from inside its own callback: EMF_ERR_BUSY, nothing freed; the poll
     * goes on and the handle is freed normally afterwards. */
    for (uint64_t i = 0; i < 3; i++) CHECK_STATUS(send_seq(p, 48, i), EMF_OK);
    struct self_free f = {c, EMF_OK, "", 0};
    CHECK_STATUS(emf_consumer_poll(c, 2, self_free_cb, &f, &n), EMF_OK);
    CHECK(n == 2 && f.calls == 2);
    CHECK(f.status == EMF_ERR_BUSY);
    CHECK(strstr(f.message, "its own callback") != NULL);
    uint8_t buf[64];
    size_t len = 0;
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK); /* still live */
    CHECK(frame_is(buf, len, 48, 2));

    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    CHECK_ERROR(emf_consumer_free(c), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    emf_producer_free(p);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

/* ---------------------------------------------------------------- fan-out, stats, waits */

static void test_fanout(void) {
    emf_ring_options_t o = ring_opts(4096);
    o.max_subscribers = 4; /* the primary consumer + 3 subscribers */
    emf_ring_t *r = create_ring("fanout", &o);
    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);
    CHECK(stats_of(r).subscribers == 1);

    /* A frame sent before subscribing is not seen by the subscribers. */
    CHECK_STATUS(send_seq(p, 32, 1000), EMF_OK);
    emf_consumer_t *s[3];
    for (int i = 0; i < 3; i++) s[i] = new_subscriber(r);
    emf_consumer_t *extra = NULL;
    CHECK_ERROR(emf_consumer_subscribe(r, &extra), EMF_ERR_BUSY, "subscriber slots");
    CHECK(extra == NULL);
    CHECK(stats_of(r).subscribers == 4);

    for (uint64_t i = 0; i < 10; i++) CHECK_STATUS(send_seq(p, 32, i), EMF_OK);
    uint8_t buf[64];
    size_t len = 0, n = 0;
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(frame_is(buf, len, 32, 1000));
    uint64_t seq = 0;
    size_t bad = 0;
    CHECK(drain_seq(c, &seq, 32, &bad) == 10 && bad == 0);
    for (int i = 0; i < 3; i++) {
        uint64_t lag = 0;
        CHECK_STATUS(emf_consumer_lag(s[i], &lag), EMF_OK);
        CHECK(lag == 10 * (8 + 32));
        struct collect k = {NULL, EMF_OK, 0, 0, 32, 0};
        CHECK_STATUS(emf_consumer_poll(s[i], 100, collect_cb, &k, &n), EMF_OK);
        CHECK(n == 10 && k.bad == 0);
        CHECK_STATUS(emf_consumer_lag(s[i], &lag), EMF_OK);
        CHECK(lag == 0);
    }
    /* The stats' `received` counts the primary consumer only. */
    CHECK(stats_of(r).received == 11);

    /* A subscriber that does not read holds the producer back like the consumer does. */
    uint64_t k = 0;
    while (send_seq(p, 32, k) == EMF_OK) k++;
    seq = 0;
    CHECK(drain_seq(c, &seq, 32, &bad) == k);
    CHECK_STATUS(emf_consumer_free(s[1]), EMF_OK);
    CHECK_STATUS(emf_consumer_free(s[2]), EMF_OK);
    CHECK(stats_of(r).subscribers == 2);
    CHECK_ERROR(send_seq(p, 32, k), EMF_ERR_FULL, "full"); /* s[0] is still behind */
    struct collect col = {NULL, EMF_OK, 0, 0, 32, 0};
    CHECK_STATUS(emf_consumer_poll(s[0], 1000, collect_cb, &col, &n), EMF_OK);
    CHECK(n == k && col.bad == 0);
    CHECK_STATUS(send_seq(p, 32, k), EMF_OK);
    CHECK_STATUS(emf_consumer_free(s[0]), EMF_OK);
    CHECK(stats_of(r).subscribers == 1);
    /* A freed subscriber slot is reusable. */
    s[0] = new_subscriber(r);
    CHECK(stats_of(r).subscribers == 2);
    emf_consumer_free(s[0]);

    emf_consumer_free(c);
    emf_producer_free(p);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

static void test_stats_and_wait(void) {
    emf_ring_options_t o = ring_opts(8192);
    emf_ring_t *r = create_ring("stats", &o);
    emf_ring_stats_t s = stats_of(r);
    CHECK(s.capacity == 8192 && s.tail == 0 && s.sent == 0 && s.bytes == 0 && s.received == 0);
    CHECK(s.backpressure == 0 && s.unblocked == 0 && s.dead_reaped == 0 && s.corrupt_frames == 0);
    CHECK(s.producers == 0 && s.subscribers == 1);
    size_t max = 0;
    CHECK_STATUS(emf_ring_max_payload(r, &max), EMF_OK);
    CHECK(max == 8192 / 4 - 8);

    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);
    CHECK(stats_of(r).producers == 1);
    for (uint64_t i = 0; i < 3; i++) CHECK_STATUS(send_seq(p, 64, i), EMF_OK);
    CHECK_STATUS(send_seq(p, 10, 3), EMF_OK);
    s = stats_of(r);
    CHECK(s.sent == 4 && s.bytes == 3 * 64 + 10);
    CHECK(s.tail == 3 * 72 + 8 + 16); /* 8-byte header, payload padded to 8 */
    uint64_t lag = 0;
    CHECK_STATUS(emf_consumer_lag(c, &lag), EMF_OK);
    CHECK(lag == s.tail);
    uint8_t buf[64];
    size_t len;
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    s = stats_of(r);
    CHECK(s.received == 2);
    CHECK_STATUS(emf_consumer_lag(c, &lag), EMF_OK);
    CHECK(lag == 72 + 24);

    /* wait: true at once when a frame is ready, false after the timeout when none is. */
    const uint32_t strategies[] = {EMF_WAIT_SPIN, EMF_WAIT_YIELD, EMF_WAIT_PARK};
    for (size_t i = 0; i < 3; i++) {
        bool ready = false;
        CHECK_STATUS(emf_consumer_wait(c, strategies[i], 1000, &ready), EMF_OK);
        CHECK(ready);
    }
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    for (size_t i = 0; i < 3; i++) {
        bool ready = true;
        uint64_t t0 = now_ns();
        CHECK_STATUS(emf_consumer_wait(c, strategies[i], 15, &ready), EMF_OK);
        CHECK(!ready);
        CHECK(now_ns() - t0 >= 15u * 1000 * 1000);
    }
    bool ready = true;
    CHECK_STATUS(emf_consumer_wait(c, EMF_WAIT_PARK, 0, &ready), EMF_OK);
    CHECK(!ready);

    /* The primary consumer's position outlives it: a new consumer resumes there. */
    for (uint64_t i = 10; i < 16; i++) CHECK_STATUS(send_seq(p, 64, i), EMF_OK);
    uint64_t seq = 10;
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(frame_is(buf, len, 64, seq++));
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    c = new_consumer(r);
    size_t bad = 0;
    CHECK(drain_seq(c, &seq, 64, &bad) == 5 && bad == 0);
    CHECK(stats_of(r).received == 4 + 6);

    CHECK_STATUS(emf_producer_free(p), EMF_OK);
    CHECK(stats_of(r).producers == 0);
    emf_consumer_free(c);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

static void test_multi_producer(void) {
    emf_ring_options_t o = ring_opts(16384);
    o.multi_producer = true;
    o.max_producers = 3;
    emf_ring_t *r = create_ring("mpsc", &o);
    emf_producer_t *p[3];
    for (int i = 0; i < 3; i++) p[i] = new_producer(r);
    emf_producer_t *extra = NULL;
    CHECK_ERROR(emf_producer_new(r, &extra), EMF_ERR_BUSY, "producer slots");
    CHECK(extra == NULL);
    CHECK(stats_of(r).producers == 3);
    emf_consumer_t *c = new_consumer(r);

    /* Interleaved: each producer's frames arrive in its own order. Sequence numbers carry
     * the producer in the top byte. */
    for (uint64_t i = 0; i < 30; i++) {
        uint64_t who = (i * 7) % 3;
        CHECK_STATUS(send_seq(p[who], 40, who << 56 | i), EMF_OK);
    }
    uint8_t buf[64];
    size_t len = 0, got = 0, bad = 0;
    uint64_t last[3] = {0, 0, 0};
    while (emf_consumer_recv(c, buf, sizeof buf, &len) == EMF_OK) {
        uint64_t seq = 0;
        for (int j = 0; j < 8; j++) seq |= (uint64_t)buf[j] << (8 * j);
        uint64_t who = seq >> 56, i = seq & 0xFFFFFFFFu;
        if (who > 2 || !frame_is(buf, len, 40, seq) || (got > 0 && i != got) ||
            (last[who] != 0 && i <= last[who])) {
            bad++;
        } else {
            last[who] = i;
        }
        got++;
    }
    CHECK(got == 30 && bad == 0);
    CHECK(stats_of(r).sent == 30);
    /* A freed slot is taken by the next producer. */
    CHECK_STATUS(emf_producer_free(p[1]), EMF_OK);
    p[1] = new_producer(r);
    CHECK(p[1] != NULL);
    for (int i = 0; i < 3; i++) emf_producer_free(p[i]);
    emf_consumer_free(c);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

/* ---------------------------------------------------------------- dead participants */

/* Child: sends frame 0, claims room for another, and dies without committing or freeing. */
static int dying_producer_child(void *unused) {
    (void)unused;
    unsigned long failed = g_failed;
    emf_ring_t *r = NULL;
    CHECK_STATUS(emf_ring_open("dead", g_dir, &r), EMF_OK);
    emf_producer_t *p = new_producer(r);
    CHECK_STATUS(send_seq(p, 64, 0), EMF_OK);
    uint8_t *slot = NULL;
    CHECK_STATUS(emf_producer_claim(p, 64, &slot), EMF_OK);
    if (slot != NULL) memset(slot, 0xEE, 64);
    return child_result(failed); /* _exit: no commit, no free */
}

/* Child: creates a ring and dies holding it. */
static int dying_creator_child(void *unused) {
    (void)unused;
    unsigned long failed = g_failed;
    emf_ring_options_t o = ring_opts(4096);
    emf_ring_t *r = create_ring("stale", &o);
    emf_producer_t *p = new_producer(r);
    CHECK_STATUS(send_seq(p, 64, 0), EMF_OK);
    return child_result(failed);
}

static void test_dead_participants(void) {
    emf_ring_options_t o = ring_opts(4096);
    o.stall_timeout_ms = 20;
    emf_ring_t *r = create_ring("dead", &o);
    emf_consumer_t *c = new_consumer(r);
    CHECK(child_ok(fork_child(dying_producer_child, NULL)));

    uint8_t buf[128];
    size_t len = 0;
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(frame_is(buf, len, 64, 0));
    /* The dead producer's claim stalls the ring until the consumer has waited
     * stall_timeout_ms and found the producer dead; then the claim becomes padding, which the
     * wait consumes (it is not a frame): the wait goes on to its timeout and answers false. */
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");
    uint64_t lag = 0;
    CHECK_STATUS(emf_consumer_lag(c, &lag), EMF_OK);
    CHECK(lag == 72); /* the dead claim */
    bool ready = true;
    uint64_t t0 = now_ns();
    CHECK_STATUS(emf_consumer_wait(c, EMF_WAIT_PARK, 300, &ready), EMF_OK);
    uint64_t waited = now_ns() - t0;
    CHECK(!ready);
    CHECK(waited >= 300u * 1000 * 1000 && waited < 4000u * 1000 * 1000);
    CHECK_STATUS(emf_consumer_lag(c, &lag), EMF_OK);
    CHECK(lag == 0); /* the padding was consumed */
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_EMPTY, "no frame");
    emf_ring_stats_t s = stats_of(r);
    CHECK(s.unblocked == 1 && s.producers == 0 && s.sent == 1);

    /* The dead producer's slot is taken over; the ring carries on. */
    emf_producer_t *p = new_producer(r);
    CHECK(stats_of(r).dead_reaped >= 1);
    CHECK_STATUS(send_seq(p, 64, 1), EMF_OK);
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(frame_is(buf, len, 64, 1));
    emf_producer_free(p);
    emf_consumer_free(c);
    emf_ring_unlink(r);
    emf_ring_free(r);

    /* A segment whose creator died is stale: creating the name again replaces it. */
    CHECK(child_ok(fork_child(dying_creator_child, NULL)));
    emf_ring_options_t o2 = ring_opts(8192);
    emf_ring_t *fresh = create_ring("stale", &o2);
    s = stats_of(fresh);
    CHECK(s.capacity == 8192 && s.sent == 0 && s.tail == 0);
    emf_ring_unlink(fresh);
    emf_ring_free(fresh);
}

/* ---------------------------------------------------------------- acknowledgements, slots, checksums */

/* Receives exactly `n` frames with emf_consumer_recv; each must be frame *seq, *seq + 1, ...
 * of `len` bytes. Returns how many came; counts wrong ones in *bad. */
static size_t recv_n(emf_consumer_t *c, size_t n, uint64_t *seq, size_t len, size_t *bad) {
    uint8_t buf[4096];
    size_t got = 0, k = 0;
    for (; k < n; k++) {
        emf_status_t st = emf_consumer_recv(c, buf, sizeof buf, &got);
        if (st != EMF_OK) {
            CHECK_STATUS(st, EMF_OK);
            break;
        }
        if (!frame_is(buf, got, len, *seq)) (*bad)++;
        (*seq)++;
    }
    return k;
}

static uint64_t unacked_of(emf_consumer_t *c) {
    uint64_t n = UINT64_MAX;
    CHECK_STATUS(emf_consumer_unacked(c, &n), EMF_OK);
    return n;
}

/* Blocks until killed (the parent SIGKILLs it). */
static void wait_to_be_killed(void) {
    for (;;) pause();
}

/* Tells the parent through `fd` how the child's checks went (0: none failed). */
static void report_to_parent(int fd, unsigned long failed_at_start) {
    uint8_t failed = (uint8_t)child_result(failed_at_start);
    if (write(fd, &failed, 1) != 1) _exit(99);
}

/* Reads the child's report: true when it came and no check of the child failed. */
static int child_reported_ok(int fd) {
    uint8_t failed = 255;
    ssize_t n;
    while ((n = read(fd, &failed, 1)) < 0 && errno == EINTR) {
    }
    if (n != 1 || failed != 0) fprintf(stderr, "child report: %zd byte(s), %u failed\n", n, failed);
    return n == 1 && failed == 0;
}

/* Kills the child with SIGKILL and reaps it (a zombie would still count as a live holder). */
static int kill_child(pid_t pid) {
    int status = 0;
    if (pid <= 0 || kill(pid, SIGKILL) != 0) return 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return 0;
    }
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

struct held_child {
    const char *ring;
    int fd;         /* the pipe's write end: one byte when the child's work is done */
    uint32_t slot;  /* producer children: the slot */
    uint64_t count; /* frames to receive or send */
};

/* Child: receives `count` frames in manual mode, reports, and waits to be killed without
 * acknowledging them. */
static int manual_consumer_child(void *argp) {
    struct held_child *a = argp;
    unsigned long failed = g_failed;
    emf_ring_t *r = NULL;
    CHECK_STATUS(emf_ring_open(a->ring, g_dir, &r), EMF_OK);
    emf_consumer_t *c = new_consumer(r);
    CHECK_STATUS(emf_consumer_set_ack_mode(c, EMF_ACK_MANUAL), EMF_OK);
    uint64_t seq = 0;
    size_t bad = 0;
    CHECK(recv_n(c, a->count, &seq, 64, &bad) == a->count && bad == 0);
    CHECK(unacked_of(c) == a->count);
    report_to_parent(a->fd, failed);
    wait_to_be_killed();
    return 0;
}

/* Child: sends `count` frames through producer slot `slot`, reports, and waits to be killed. */
static int slot_producer_child(void *argp) {
    struct held_child *a = argp;
    unsigned long failed = g_failed;
    emf_ring_t *r = NULL;
    CHECK_STATUS(emf_ring_open(a->ring, g_dir, &r), EMF_OK);
    emf_producer_t *p = NULL;
    CHECK_STATUS(emf_producer_new_in_slot(r, a->slot, &p), EMF_OK);
    uint64_t committed = UINT64_MAX;
    uint32_t slot = UINT32_MAX;
    CHECK_STATUS(emf_producer_committed(p, &committed, &slot), EMF_OK);
    CHECK(committed == 0 && slot == a->slot);
    for (uint64_t i = 0; i < a->count; i++) CHECK_STATUS(send_seq(p, 64, i), EMF_OK);
    CHECK_STATUS(emf_producer_committed(p, &committed, NULL), EMF_OK);
    CHECK(committed == a->count);
    report_to_parent(a->fd, failed);
    wait_to_be_killed();
    return 0;
}

/* Forks `body` with a pipe for its report; returns the pid and the read end in *fd. */
static pid_t fork_held_child(int (*body)(void *), struct held_child *a, int *fd) {
    int fds[2];
    if (pipe(fds) != 0) {
        CHECK(!"pipe");
        return -1;
    }
    a->fd = fds[1];
    pid_t pid = fork_child(body, a);
    close(fds[1]);
    *fd = fds[0];
    return pid;
}

static int poll_count_cb(void *ctx, const uint8_t *data, size_t len) {
    struct collect *k = ctx;
    if (!frame_is(data, len, k->len, k->next_seq)) k->bad++;
    k->next_seq++;
    k->count++;
    return 0;
}

static void test_manual_ack(void) {
    emf_ring_options_t o = ring_opts(1 << 16);
    emf_ring_t *r = create_ring("acked", &o);
    emf_producer_t *p = new_producer(r);
    for (uint64_t i = 0; i < 10; i++) CHECK_STATUS(send_seq(p, 64, i), EMF_OK);

    /* Manual mode: no receive releases anything (recv_batch, recv, poll); freed without ack. */
    emf_consumer_t *c = new_consumer(r);
    CHECK_STATUS(emf_consumer_set_ack_mode(c, EMF_ACK_MANUAL), EMF_OK);
    CHECK(unacked_of(c) == 0);
    uint8_t buf[1024];
    size_t frames = 0, bytes = 0, bad = 0;
    CHECK_STATUS(emf_consumer_recv_batch(c, buf, sizeof buf, 3, &frames, &bytes), EMF_OK);
    CHECK(frames == 3 && bytes == 3 * (4 + 64));
    uint64_t seq = 3;
    CHECK(recv_n(c, 2, &seq, 64, &bad) == 2 && bad == 0);
    struct collect k = {NULL, EMF_OK, 0, 5, 64, 0};
    size_t n = 0;
    CHECK_STATUS(emf_consumer_poll(c, 2, poll_count_cb, &k, &n), EMF_OK);
    CHECK(n == 2 && k.bad == 0);
    CHECK(unacked_of(c) == 7);
    CHECK(stats_of(r).received == 0);
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);

    /* The next consumer gets the same frames again, in order; ack releases them. */
    c = new_consumer(r);
    CHECK_STATUS(emf_consumer_set_ack_mode(c, EMF_ACK_MANUAL), EMF_OK);
    seq = 0;
    CHECK(drain_seq(c, &seq, 64, &bad) == 10 && bad == 0);
    CHECK(unacked_of(c) == 10);
    CHECK_STATUS(emf_consumer_ack(c), EMF_OK);
    CHECK(unacked_of(c) == 0);
    CHECK(stats_of(r).received == 10);

    /* Rewind: the frames since the last ack come again; rewind's count is optional. */
    for (uint64_t i = 10; i < 14; i++) CHECK_STATUS(send_seq(p, 64, i), EMF_OK);
    CHECK(recv_n(c, 3, &seq, 64, &bad) == 3 && bad == 0);
    uint64_t was = 0;
    CHECK_STATUS(emf_consumer_rewind(c, &was), EMF_OK);
    CHECK(was == 3 && unacked_of(c) == 0);
    seq = 10;
    CHECK(recv_n(c, 2, &seq, 64, &bad) == 2 && bad == 0);
    CHECK_STATUS(emf_consumer_rewind(c, NULL), EMF_OK);
    seq = 10;
    CHECK(drain_seq(c, &seq, 64, &bad) == 4 && bad == 0 && seq == 14);
    /* Back to auto acknowledges what was delivered. */
    CHECK_STATUS(emf_consumer_set_ack_mode(c, EMF_ACK_AUTO), EMF_OK);
    CHECK(unacked_of(c) == 0);
    CHECK_STATUS(emf_consumer_rewind(c, &was), EMF_OK);
    CHECK(was == 0);
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);

    /* Auto mode (the contrast): recv releases before it returns, so a consumer freed after
     * recv does not see the frame again. */
    c = new_consumer(r);
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &n), EMF_ERR_EMPTY, "no frame");
    for (uint64_t i = 14; i < 16; i++) CHECK_STATUS(send_seq(p, 64, i), EMF_OK);
    CHECK(recv_n(c, 1, &seq, 64, &bad) == 1 && bad == 0);
    CHECK(unacked_of(c) == 0);
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    c = new_consumer(r);
    CHECK(drain_seq(c, &seq, 64, &bad) == 1 && bad == 0 && seq == 16);
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);

    /* A consumer in another process receives 40 frames in manual mode and is SIGKILLed before
     * acknowledging: the next consumer gets those 40 again, in order, then the rest. */
    for (uint64_t i = 0; i < 60; i++) CHECK_STATUS(send_seq(p, 64, i), EMF_OK);
    struct held_child a = {"acked", -1, 0, 40};
    int fd = -1;
    pid_t pid = fork_held_child(manual_consumer_child, &a, &fd);
    CHECK(child_reported_ok(fd));
    close(fd);
    emf_consumer_t *busy = NULL;
    CHECK_ERROR(emf_consumer_new(r, &busy), EMF_ERR_BUSY, "consumer"); /* the live child's */
    CHECK(kill_child(pid));
    c = new_consumer(r);
    CHECK_STATUS(emf_consumer_set_ack_mode(c, EMF_ACK_MANUAL), EMF_OK);
    seq = 0;
    CHECK(drain_seq(c, &seq, 64, &bad) == 60 && bad == 0);
    CHECK_STATUS(emf_consumer_ack(c), EMF_OK);
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    c = new_consumer(r); /* acknowledged: gone for good */
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &n), EMF_ERR_EMPTY, "no frame");
    CHECK(stats_of(r).received == 16 + 60);

    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    CHECK_STATUS(emf_producer_free(p), EMF_OK);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

static void test_producer_slots(void) {
    emf_ring_options_t o = ring_opts(1 << 16);
    o.multi_producer = true;
    o.max_producers = 4;
    emf_ring_t *r = create_ring("slots", &o);
    emf_consumer_t *c = new_consumer(r);

    /* A producer in slot 2 of another process sends 300 frames and is SIGKILLed. */
    struct held_child a = {"slots", -1, 2, 300};
    int fd = -1;
    pid_t pid = fork_held_child(slot_producer_child, &a, &fd);
    CHECK(child_reported_ok(fd));
    close(fd);
    emf_producer_t *p = NULL;
    CHECK_ERROR(emf_producer_new_in_slot(r, 2, &p), EMF_ERR_BUSY, "slot 2"); /* live holder */
    CHECK(p == NULL);
    CHECK(kill_child(pid));

    /* Its successor in slot 2 reads committed == 300 and resends from there. */
    CHECK_STATUS(emf_producer_new_in_slot(r, 2, &p), EMF_OK);
    uint64_t committed = 0;
    uint32_t slot = 0;
    CHECK_STATUS(emf_producer_committed(p, &committed, &slot), EMF_OK);
    CHECK(committed == 300 && slot == 2);
    for (uint64_t i = committed; i < 500; i++) CHECK_STATUS(send_seq(p, 64, i), EMF_OK);
    CHECK_STATUS(emf_producer_committed(p, &committed, NULL), EMF_OK);
    CHECK(committed == 500);
    uint64_t seq = 0;
    size_t bad = 0;
    CHECK(drain_seq(c, &seq, 64, &bad) == 500 && bad == 0); /* 0..499, once each, in order */
    emf_ring_stats_t s = stats_of(r);
    CHECK(s.sent == 500 && s.received == 500 && s.dead_reaped >= 1);

    /* emf_producer_new takes the first free slot; a slot freed normally keeps its count. */
    emf_producer_t *q = new_producer(r);
    CHECK_STATUS(emf_producer_committed(q, &committed, &slot), EMF_OK);
    CHECK(committed == 0 && slot == 0);
    CHECK_STATUS(emf_producer_free(p), EMF_OK);
    CHECK_STATUS(emf_producer_new_in_slot(r, 2, &p), EMF_OK);
    CHECK_STATUS(emf_producer_committed(p, &committed, &slot), EMF_OK);
    CHECK(committed == 500 && slot == 2);

    /* Bad input. */
    emf_producer_t *none = NULL;
    CHECK_ERROR(emf_producer_new_in_slot(r, 4, &none), EMF_ERR_INVALID_ARGUMENT, "does not exist");
    CHECK_ERROR(emf_producer_new_in_slot(r, UINT32_MAX, &none), EMF_ERR_INVALID_ARGUMENT,
                "does not exist");
    CHECK_ERROR(emf_producer_new_in_slot(NULL, 0, &none), EMF_ERR_NULL_ARGUMENT, "ring");
    CHECK_ERROR(emf_producer_new_in_slot(r, 1, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK(none == NULL);
    CHECK_ERROR(emf_producer_committed(NULL, &committed, &slot), EMF_ERR_NULL_ARGUMENT, "producer");
    CHECK_ERROR(emf_producer_committed(p, NULL, &slot), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_STATUS(emf_producer_free(q), EMF_OK);
    CHECK_ERROR(emf_producer_committed(q, &committed, &slot), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    {
        emf_ring_options_t o1 = ring_opts(4096);
        emf_ring_t *single = create_ring("slots-single", &o1);
        CHECK_ERROR(emf_producer_new_in_slot(single, 1, &none), EMF_ERR_INVALID_ARGUMENT,
                    "does not exist");
        CHECK_STATUS(emf_producer_new_in_slot(single, 0, &none), EMF_OK);
        emf_producer_t *second = NULL;
        CHECK_ERROR(emf_producer_new(single, &second), EMF_ERR_BUSY, "producer");
        CHECK_STATUS(emf_producer_free(none), EMF_OK);
        emf_ring_unlink(single);
        emf_ring_free(single);
    }

    CHECK_STATUS(emf_producer_free(p), EMF_OK);
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

/* Flips one byte of the only copy of `pattern` in ring `name`'s segment file, through a second
 * mapping of the file (the ring's data offset is not public: the pattern is looked for). */
static int flip_in_segment(const char *name, const uint8_t *pattern, size_t len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/emf-%s", g_dir, name);
    int fd = open(path, O_RDWR);
    if (fd < 0) return 0;
    struct stat st;
    int found = 0;
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
        size_t size = (size_t)st.st_size;
        uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            uint8_t *at = NULL;
            for (size_t i = 0; i + len <= size; i++) {
                if (m[i] == pattern[0] && memcmp(m + i, pattern, len) == 0) {
                    found++;
                    at = m + i;
                }
            }
            if (found == 1) at[3] ^= 0x40;
            munmap(m, size);
        }
    }
    close(fd);
    return found == 1;
}

/* A 32-byte pattern found nowhere else in the segment, then a frame carrying it. */
static void make_marked(uint8_t *frame, size_t len, uint64_t tag) {
    fill_frame(frame, len, tag * 0x100000001u + 0xC0FFEE);
    memcpy(frame, "MARK", 4);
}

static void test_checksum(void) {
    emf_ring_options_t o = ring_opts(1 << 16);
    emf_ring_t *bad_flags = NULL;
    o.flags = 0x80;
    CHECK_ERROR(emf_ring_create("checked", &o, &bad_flags), EMF_ERR_INVALID_ARGUMENT,
                "unknown ring flags");
    CHECK(bad_flags == NULL);
    o.flags = EMF_RING_CHECKSUM | 2;
    CHECK_ERROR(emf_ring_create("checked", &o, &bad_flags), EMF_ERR_INVALID_ARGUMENT,
                "unknown ring flags");
    o.flags = EMF_RING_CHECKSUM;
    emf_ring_t *r = create_ring("checked", &o);
    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);

    /* Round trips: every size up to the largest payload, one at a time and in batches. */
    size_t max = 0;
    CHECK_STATUS(emf_ring_max_payload(r, &max), EMF_OK);
    uint8_t *big = xmalloc(max);
    uint8_t *got = xmalloc(max);
    fill_frame(big, max, 77);
    CHECK_STATUS(emf_producer_send(p, big, max), EMF_OK);
    CHECK_STATUS(emf_producer_send(p, big, 0), EMF_OK);
    size_t len = 0;
    CHECK_STATUS(emf_consumer_recv(c, got, max, &len), EMF_OK);
    CHECK(len == max && memcmp(got, big, max) == 0);
    CHECK_STATUS(emf_consumer_recv(c, got, max, &len), EMF_OK);
    CHECK(len == 0);
    uint64_t seq = 0;
    size_t bad = 0;
    for (uint64_t i = 0; i < 200; i++) CHECK_STATUS(send_seq(p, 100, i), EMF_OK);
    CHECK(drain_seq(c, &seq, 100, &bad) == 200 && bad == 0);
    free(big);
    free(got);

    /* A payload byte changed in the ring: recv delivers the frame before it, then answers
     * EMF_ERR_CORRUPT for it (skipped), then delivers the one after it. */
    uint8_t f[3][64];
    for (int i = 0; i < 3; i++) make_marked(f[i], sizeof f[i], (uint64_t)i + 1);
    for (int i = 0; i < 3; i++) CHECK_STATUS(emf_producer_send(p, f[i], sizeof f[i]), EMF_OK);
    CHECK(flip_in_segment("checked", f[1], sizeof f[1]));
    uint8_t buf[256];
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(len == 64 && memcmp(buf, f[0], 64) == 0);
    CHECK_ERROR(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_ERR_CORRUPT, "CRC32C");
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(len == 64 && memcmp(buf, f[2], 64) == 0);
    CHECK(stats_of(r).corrupt_frames == 1);

    /* The same through recv_batch: the frames before it come first, then the error. */
    for (int i = 0; i < 3; i++) make_marked(f[i], sizeof f[i], (uint64_t)i + 10);
    for (int i = 0; i < 3; i++) CHECK_STATUS(emf_producer_send(p, f[i], sizeof f[i]), EMF_OK);
    CHECK(flip_in_segment("checked", f[1], sizeof f[1]));
    size_t frames = 0, bytes = 0;
    CHECK_STATUS(emf_consumer_recv_batch(c, buf, sizeof buf, 10, &frames, &bytes), EMF_OK);
    CHECK(frames == 1 && bytes == 4 + 64 && memcmp(buf + 4, f[0], 64) == 0);
    CHECK_ERROR(emf_consumer_recv_batch(c, buf, sizeof buf, 10, &frames, &bytes), EMF_ERR_CORRUPT,
                "CRC32C");
    CHECK_STATUS(emf_consumer_recv_batch(c, buf, sizeof buf, 10, &frames, &bytes), EMF_OK);
    CHECK(frames == 1 && bytes == 4 + 64 && memcmp(buf + 4, f[2], 64) == 0);
    CHECK(stats_of(r).corrupt_frames == 2);
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    CHECK_STATUS(emf_producer_free(p), EMF_OK);
    emf_ring_unlink(r);
    emf_ring_free(r);

    /* Without the flag the changed frame is delivered as it is. */
    o.flags = 0;
    r = create_ring("unchecked", &o);
    p = new_producer(r);
    c = new_consumer(r);
    make_marked(f[0], sizeof f[0], 42);
    CHECK_STATUS(emf_producer_send(p, f[0], sizeof f[0]), EMF_OK);
    CHECK(flip_in_segment("unchecked", f[0], sizeof f[0]));
    f[0][3] ^= 0x40;
    CHECK_STATUS(emf_consumer_recv(c, buf, sizeof buf, &len), EMF_OK);
    CHECK(len == 64 && memcmp(buf, f[0], 64) == 0);
    CHECK(stats_of(r).corrupt_frames == 0);
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    CHECK_STATUS(emf_producer_free(p), EMF_OK);
    emf_ring_unlink(r);
    emf_ring_free(r);
}

static void test_ack_bad_input(void) {
    emf_ring_options_t o = ring_opts(4096);
    emf_ring_t *r = create_ring("ack-bad", &o);
    emf_consumer_t *c = new_consumer(r);
    uint64_t n = 0;
    CHECK_ERROR(emf_consumer_set_ack_mode(NULL, EMF_ACK_MANUAL), EMF_ERR_NULL_ARGUMENT, "consumer");
    CHECK_ERROR(emf_consumer_ack(NULL), EMF_ERR_NULL_ARGUMENT, "consumer");
    CHECK_ERROR(emf_consumer_rewind(NULL, &n), EMF_ERR_NULL_ARGUMENT, "consumer");
    CHECK_ERROR(emf_consumer_unacked(NULL, &n), EMF_ERR_NULL_ARGUMENT, "consumer");
    CHECK_ERROR(emf_consumer_unacked(c, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK_ERROR(emf_consumer_set_ack_mode(c, 2), EMF_ERR_INVALID_ARGUMENT, "acknowledgement mode");
    CHECK_ERROR(emf_consumer_set_ack_mode(c, UINT32_MAX), EMF_ERR_INVALID_ARGUMENT,
                "acknowledgement mode");
    CHECK_STATUS(emf_consumer_ack(c), EMF_OK); /* auto mode, nothing delivered: fine */
    CHECK_STATUS(emf_consumer_free(c), EMF_OK);
    CHECK_ERROR(emf_consumer_set_ack_mode(c, EMF_ACK_AUTO), EMF_ERR_INVALID_ARGUMENT,
                "not a live handle");
    CHECK_ERROR(emf_consumer_ack(c), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_consumer_rewind(c, NULL), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    CHECK_ERROR(emf_consumer_unacked(c, &n), EMF_ERR_INVALID_ARGUMENT, "not a live handle");
    emf_ring_unlink(r);
    emf_ring_free(r);
}

/* ---------------------------------------------------------------- ping-pong */

struct echo_state {
    emf_producer_t *out;
    int stop;
    size_t echoed;
    emf_status_t err;
};

/* Echoes each frame from inside the poll callback, straight from the ring's memory. */
static int echo_cb(void *ctx, const uint8_t *data, size_t len) {
    struct echo_state *e = ctx;
    if (len == 0) {
        e->stop = 1;
        return 1; /* the stop frame: nothing after it is for us */
    }
    emf_status_t st = emf_producer_send(e->out, data, len);
    if (st == EMF_ERR_FULL) st = emf_producer_send_timeout(e->out, data, len, EMF_WAIT_PARK, 2000);
    if (st != EMF_OK && e->err == EMF_OK) e->err = st;
    e->echoed++;
    return st != EMF_OK; /* stop at the first failure */
}

struct echo_arg {
    uint32_t strategy;
    pid_t parent;
    int go_fd;
};

/* Child: waits for the parent's go, checks that everything the parent holds is refused to
 * a second process, then echoes every frame of "ping" into "pong" until an empty frame. */
static int echo_child(void *argp) {
    const struct echo_arg *a = argp;
    unsigned long failed = g_failed;
    char go = 0;
    if (read(a->go_fd, &go, 1) != 1 || go != 'g') return 3;
    close(a->go_fd);
    emf_ring_t *ping = NULL, *pong = NULL;
    CHECK_STATUS(emf_ring_open("ping", g_dir, &ping), EMF_OK);
    CHECK_STATUS(emf_ring_open("pong", g_dir, &pong), EMF_OK);
    if (ping == NULL || pong == NULL) return child_result(failed);

    emf_producer_t *p = NULL;
    emf_consumer_t *c = NULL;
    emf_ring_t *r = NULL;
    emf_ring_options_t o = ring_opts(65536);
    CHECK_ERROR(emf_producer_new(ping, &p), EMF_ERR_BUSY, "producer slots");
    CHECK_ERROR(emf_consumer_new(pong, &c), EMF_ERR_BUSY, "held by live pid");
    CHECK_ERROR(emf_ring_create("ping", &o, &r), EMF_ERR_BUSY, "live participants");
    CHECK(p == NULL && c == NULL && r == NULL);

    c = new_consumer(ping);
    p = new_producer(pong);
    struct echo_state e = {p, 0, 0, EMF_OK};
    int idle = 0;
    while (c != NULL && p != NULL && !e.stop && e.err == EMF_OK) {
        size_t n = 0;
        emf_status_t st = emf_consumer_poll(c, 64, echo_cb, &e, &n);
        if (st != EMF_OK) {
            CHECK_STATUS(st, EMF_OK);
            break;
        }
        if (n > 0 || e.stop) {
            idle = 0;
            continue;
        }
        bool ready = false;
        st = emf_consumer_wait(c, a->strategy, 1000, &ready);
        if (st != EMF_OK) {
            CHECK_STATUS(st, EMF_OK);
            break;
        }
        if (!ready && (++idle > 30 || getppid() != a->parent)) {
            fprintf(stderr, "echo child: no frame for %d s, giving up\n", idle);
            CHECK(!"echo child idle");
            break;
        }
    }
    CHECK_STATUS(e.err, EMF_OK);
    CHECK(e.stop);
    emf_consumer_free(c);
    emf_producer_free(p);
    emf_ring_free(ping);
    emf_ring_free(pong);
    return child_result(failed);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(const uint64_t *sorted, size_t n, unsigned per_mille) {
    size_t i = n * per_mille / 1000;
    if (i >= n) i = n - 1;
    return (double)sorted[i] / 1000.0;
}

/* Waits for the next frame on `c` and copies it to buf. */
static emf_status_t await_frame(emf_consumer_t *c, uint32_t strategy, pid_t child, uint8_t *buf,
                                size_t cap, size_t *len) {
    int timeouts = 0;
    for (;;) {
        emf_status_t st = emf_consumer_recv(c, buf, cap, len);
        if (st != EMF_ERR_EMPTY) return st;
        bool ready = false;
        st = emf_consumer_wait(c, strategy, 1000, &ready);
        if (st != EMF_OK) return st;
        if (!ready) {
            int status;
            if (++timeouts > 30 || waitpid(child, &status, WNOHANG) == child) {
                fprintf(stderr, "ping-pong: no echo for %d s (child gone?)\n", timeouts);
                return EMF_ERR_TIMEOUT;
            }
        }
    }
}

static void pingpong(uint32_t strategy, const char *label, size_t n) {
    int go[2];
    if (pipe(go) != 0) {
        CHECK(!"pipe");
        return;
    }
    struct echo_arg a = {strategy, getpid(), go[0]};
    pid_t child = fork_child(echo_child, &a);
    close(go[0]);

    emf_ring_options_t o = ring_opts(65536);
    if (g_stall_ms != 0) o.stall_timeout_ms = g_stall_ms;
    emf_ring_t *ping = create_ring("ping", &o);
    emf_ring_t *pong = create_ring("pong", &o);
    emf_producer_t *p = ping ? new_producer(ping) : NULL;
    emf_consumer_t *c = pong ? new_consumer(pong) : NULL;
    int ok = p != NULL && c != NULL && child > 0;
    if (write(go[1], ok ? "g" : "x", 1) != 1) ok = 0;
    close(go[1]);

    const size_t warm = n / 10 < 1000 ? n / 10 : 1000;
    uint64_t *rtt = xmalloc(n * sizeof *rtt);
    uint8_t out[64], in[256];
    size_t bad = 0, done = 0;
    emf_status_t err = EMF_OK;
    for (size_t i = 0; ok && i < warm + n; i++) {
        fill_frame(out, sizeof out, i);
        size_t len = 0;
        uint64_t t0 = now_ns();
        err = emf_producer_send(p, out, sizeof out);
        if (err == EMF_OK) err = await_frame(c, strategy, child, in, sizeof in, &len);
        uint64_t t1 = now_ns();
        if (err != EMF_OK) break;
        if (len != sizeof out || memcmp(in, out, sizeof out) != 0) bad++;
        if (i >= warm) rtt[done++] = t1 - t0;
    }
    CHECK_STATUS(err, EMF_OK);
    CHECK(done == n);
    CHECK(bad == 0);
    if (bad != 0) fprintf(stderr, "ping-pong %s: %zu of %zu echoes differ\n", label, bad, done);

    /* Stop the child with an empty frame. */
    if (ok) CHECK_STATUS(emf_producer_send_timeout(p, NULL, 0, EMF_WAIT_PARK, 2000), EMF_OK);
    CHECK(child_ok(child));

    if (ok && done > 0) {
        emf_ring_stats_t sp = stats_of(ping), sq = stats_of(pong);
        CHECK(sp.sent == warm + done + 1 && sp.received == warm + done + 1);
        CHECK(sq.sent == warm + done && sq.received == warm + done);
        CHECK(sp.corrupt_frames == 0 && sq.corrupt_frames == 0);
        qsort(rtt, done, sizeof *rtt, cmp_u64);
        double sum = 0;
        /* A missed wake-up shows as a nap of stall_timeout_ms (the parked side re-checks then)
         * or, worse, as the 1 s wait timeout of await_frame / echo_child. */
        size_t slow = 0, timed_out = 0;
        for (size_t i = 0; i < done; i++) {
            sum += (double)rtt[i];
            slow += rtt[i] >= 90u * 1000 * 1000;
            timed_out += rtt[i] >= 1000u * 1000 * 1000;
        }
        printf("rtt %-5s 64 B x %zu (2 processes): p50 %.2f us  p99 %.2f us  p99.9 %.2f us  "
               "max %.2f us  (mean %.2f us, %zu >= 90 ms, %zu >= 1 s)\n",
               label, done, pct_us(rtt, done, 500), pct_us(rtt, done, 990),
               pct_us(rtt, done, 999), (double)rtt[done - 1] / 1000.0, sum / (double)done / 1000.0,
               slow, timed_out);
        /* No round trip may wait out the 1 s wait timeout: that is a lost wake-up. */
        CHECK(timed_out == 0);
    }
    free(rtt);
    emf_consumer_free(c);
    emf_producer_free(p);
    if (ping) emf_ring_unlink(ping);
    if (pong) emf_ring_unlink(pong);
    emf_ring_free(ping);
    emf_ring_free(pong);
}

/* ---------------------------------------------------------------- benchmark */

static uint8_t g_sink[64];
static uint8_t *volatile g_sink_ptr = g_sink;

static void copy64(uint8_t *dst, const uint8_t *src) { memcpy(dst, src, 64); }
static void (*volatile g_copy_fn)(uint8_t *, const uint8_t *) = copy64;

struct bench_arg {
    uint64_t n;
    int ready_fd;
};

struct bench_drain {
    uint64_t next;
    size_t bad;
    int stop;
};

static int bench_cb(void *ctx, const uint8_t *data, size_t len) {
    struct bench_drain *d = ctx;
    uint64_t seq;
    if (len == 0) {
        d->stop = 1;
        return 1;
    }
    if (len != 64) {
        d->bad++;
        return 0;
    }
    memcpy(&seq, data, 8);
    if (seq != d->next) d->bad++;
    d->next = seq + 1;
    return 0;
}

/* Child: the consumer of "bench"; drains with poll (spinning) and checks the sequence. */
static int bench_child(void *argp) {
    const struct bench_arg *a = argp;
    unsigned long failed = g_failed;
    emf_ring_t *r = NULL;
    CHECK_STATUS(emf_ring_open("bench", g_dir, &r), EMF_OK);
    emf_consumer_t *c = r ? new_consumer(r) : NULL;
    if (write(a->ready_fd, c ? "r" : "x", 1) != 1) return 3;
    close(a->ready_fd);
    struct bench_drain d = {0, 0, 0};
    int idle = 0;
    while (c != NULL && !d.stop) {
        size_t n = 0;
        if (emf_consumer_poll(c, 1024, bench_cb, &d, &n) != EMF_OK) break;
        if (n == 0 && !d.stop) {
            bool ready = false;
            if (emf_consumer_wait(c, EMF_WAIT_SPIN, 1000, &ready) != EMF_OK) break;
            if (!ready && ++idle > 30) break;
        }
    }
    CHECK(d.stop);
    CHECK(d.next == a->n && d.bad == 0);
    emf_consumer_free(c);
    emf_ring_free(r);
    return child_result(failed);
}

static void bench_line(const char *what, uint64_t ns, uint64_t ops, const char *unit) {
    double per = (double)ns / (double)ops;
    printf("bench: %-56s %7.1f ns/%-5s %7.2f M %s/s\n", what, per, unit, 1e3 / per, unit);
}

static void bench(uint64_t n) {
    uint8_t frame[64];
    fill_frame(frame, 64, 0);
    printf("bench: N = %llu operations per figure, best of 3 runs, 64-byte frames\n",
           (unsigned long long)n);

    /* Calibration: the loop itself (64-byte copy), then the same copy through a call. */
    uint64_t best = UINT64_MAX;
    for (int rep = 0; rep < 3; rep++) {
        uint64_t t0 = now_ns();
        for (uint64_t i = 0; i < n; i++) {
            memcpy(frame, &i, 8);
            memcpy(g_sink_ptr, frame, 64);
        }
        uint64_t t = now_ns() - t0;
        if (t < best) best = t;
    }
    bench_line("calibration: loop + 64 B memcpy", best, n, "op");
    best = UINT64_MAX;
    for (int rep = 0; rep < 3; rep++) {
        uint64_t t0 = now_ns();
        for (uint64_t i = 0; i < n; i++) {
            memcpy(frame, &i, 8);
            g_copy_fn(g_sink_ptr, frame);
        }
        uint64_t t = now_ns() - t0;
        if (t < best) best = t;
    }
    bench_line("calibration: loop + indirect call copying 64 B", best, n, "op");

    emf_ring_options_t o = ring_opts((size_t)1 << 20);
    emf_ring_t *r = create_ring("bench-local", &o);
    emf_producer_t *p = new_producer(r);
    emf_consumer_t *c = new_consumer(r);
    if (p == NULL || c == NULL) return;

    /* The cheapest ABI call: a handle lookup and the panic guard. */
    best = UINT64_MAX;
    for (int rep = 0; rep < 3; rep++) {
        size_t max = 0, sum = 0;
        uint64_t t0 = now_ns();
        for (uint64_t i = 0; i < n; i++) {
            emf_ring_max_payload(r, &max);
            sum += max;
        }
        uint64_t t = now_ns() - t0;
        CHECK(sum == n * (((size_t)1 << 20) / 4 - 8));
        if (t < best) best = t;
    }
    bench_line("emf_ring_max_payload (ABI floor: handle check + guard)", best, n, "call");

    /* emf_producer_send into a ring with room: timed in rounds of 14000 frames (a 1 MiB ring
     * holds 14563), drained between rounds outside the timing by this process's consumer. */
    const uint64_t round = 14000;
    struct bench_drain d = {0, 0, 0};
    size_t got = 0;
    for (int rep = 0; rep < 4; rep++) { /* rep 0 warms up (page faults) */
        uint64_t t = 0, i = 0, seq = 0, fails = 0;
        d.next = 0;
        while (i < n) {
            uint64_t m = n - i < round ? n - i : round;
            uint64_t t0 = now_ns();
            for (uint64_t j = 0; j < m; j++, seq++) {
                memcpy(frame, &seq, 8);
                if (emf_producer_send(p, frame, 64) != EMF_OK) fails++;
            }
            t += now_ns() - t0;
            i += m;
            while (emf_consumer_poll(c, 1 << 20, bench_cb, &d, &got) == EMF_OK && got > 0) {
            }
        }
        CHECK(fails == 0 && d.next == n && d.bad == 0);
        if (rep == 1 || (rep > 1 && t < best)) best = t;
    }
    bench_line("emf_producer_send, same process, ring never full", best, n, "msg");

    /* emf_producer_send_batch, 32 frames per call. */
    {
        enum { B = 32 };
        static uint8_t frames[B][64];
        emf_slice_t sl[B];
        for (int j = 0; j < B; j++) {
            memcpy(frames[j], frame, 64);
            sl[j].data = frames[j];
            sl[j].len = 64;
        }
        best = UINT64_MAX;
        for (int rep = 0; rep < 3; rep++) {
            uint64_t t = 0, i = 0, seq = 0, short_batches = 0;
            d.next = 0;
            while (i < n) {
                uint64_t m = n - i < round ? n - i : round;
                m -= m % B;
                if (m == 0) m = B;
                uint64_t t0 = now_ns();
                for (uint64_t j = 0; j < m; j += B) {
                    for (int k = 0; k < B; k++, seq++) memcpy(frames[k], &seq, 8);
                    size_t sent = 0;
                    if (emf_producer_send_batch(p, sl, B, &sent) != EMF_OK || sent != B)
                        short_batches++;
                }
                t += now_ns() - t0;
                i += m;
                while (emf_consumer_poll(c, 1 << 20, bench_cb, &d, &got) == EMF_OK && got > 0) {
                }
            }
            CHECK(short_batches == 0 && d.bad == 0 && d.next == seq);
            if (t < best) best = t;
            if (rep == 2) bench_line("emf_producer_send_batch, 32 x 64 B per call", best, seq, "frame");
        }
    }

    /* The back-pressure path: a full ring answers EMF_ERR_FULL (and records the message). */
    {
        uint64_t k = 0;
        while (emf_producer_send(p, frame, 64) == EMF_OK) k++;
        CHECK(k > 0);
        best = UINT64_MAX;
        for (int rep = 0; rep < 3; rep++) {
            uint64_t full = 0, m = n / 4 + 1;
            uint64_t t0 = now_ns();
            for (uint64_t i = 0; i < m; i++) full += emf_producer_send(p, frame, 64) == EMF_ERR_FULL;
            uint64_t t = now_ns() - t0;
            CHECK(full == m);
            if (t < best) best = t;
        }
        bench_line("emf_producer_send -> EMF_ERR_FULL (ring full)", best, n / 4 + 1, "call");
        d.next = 0;
        while (emf_consumer_poll(c, 1 << 20, bench_cb, &d, &got) == EMF_OK && got > 0) {
        }
    }
    emf_consumer_free(c);
    emf_producer_free(p);
    emf_ring_unlink(r);
    emf_ring_free(r);

    /* Across processes: the consumer drains in a child (spinning poll) while this process
     * sends; EMF_ERR_FULL is retried at once and counted. */
    best = UINT64_MAX;
    uint64_t best_full = 0;
    for (int rep = 0; rep < 3; rep++) {
        int ready[2];
        if (pipe(ready) != 0) {
            CHECK(!"pipe");
            return;
        }
        emf_ring_t *rr = create_ring("bench", &o);
        emf_producer_t *pp = rr ? new_producer(rr) : NULL;
        struct bench_arg a = {n, ready[1]};
        pid_t child = fork_child(bench_child, &a);
        close(ready[1]);
        char go = 0;
        int ok = pp != NULL && read(ready[0], &go, 1) == 1 && go == 'r';
        close(ready[0]);
        uint64_t full = 0, t = 0, i = 0;
        emf_status_t st = EMF_OK;
        if (ok) {
            uint64_t t0 = now_ns();
            for (i = 0; i < n; i++) {
                memcpy(frame, &i, 8);
                while ((st = emf_producer_send(pp, frame, 64)) == EMF_ERR_FULL) full++;
                if (st != EMF_OK) break;
            }
            t = now_ns() - t0;
            CHECK_STATUS(emf_producer_send_timeout(pp, NULL, 0, EMF_WAIT_SPIN, 5000), EMF_OK);
        }
        CHECK_STATUS(st, EMF_OK);
        CHECK(ok && i == n);
        CHECK(child_ok(child));
        if (ok && t < best) {
            best = t;
            best_full = full;
        }
        emf_producer_free(pp);
        if (rr) emf_ring_unlink(rr);
        emf_ring_free(rr);
    }
    char what[128];
    snprintf(what, sizeof what, "emf_producer_send, consumer in another process");
    bench_line(what, best, n, "msg");
    printf("bench:   (that run: %llu EMF_ERR_FULL retries, %.2f per send; consumer verified "
           "all %llu frames in order)\n",
           (unsigned long long)best_full, (double)best_full / (double)n, (unsigned long long)n);
}

/* ---------------------------------------------------------------- main */

static void usage(const char *argv0) {
    fprintf(stderr, "usage: %s [-n N] [--stall-ms MS] [--bench]\n", argv0);
}

int main(int argc, char **argv) {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "liberlmcp_flow has ABI %u, this program was compiled for ABI %u\n",
                emf_abi_version(), EMF_ABI_VERSION);
        return 2;
    }
    int bench_mode = 0;
    unsigned long long n = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--bench") == 0) {
            bench_mode = 1;
        } else if (strcmp(argv[i], "--stall-ms") == 0 && i + 1 < argc) {
            char *end = NULL;
            unsigned long ms = strtoul(argv[++i], &end, 10);
            if (end == NULL || *end != '\0' || ms == 0 || ms > 60000) {
                usage(argv[0]);
                return 2;
            }
            g_stall_ms = (uint32_t)ms;
        } else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            char *end = NULL;
            n = strtoull(argv[++i], &end, 10);
            if (end == NULL || *end != '\0' || n == 0) {
                usage(argv[0]);
                return 2;
            }
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    if (make_temp_dir() != 0) {
        fprintf(stderr, "cannot create a temporary directory: %s\n", strerror(errno));
        return 3;
    }

    if (bench_mode) {
        bench(n ? (uint64_t)n : 2000000u);
    } else {
        test_options();
        test_names();
        test_handles();
        test_backpressure();
        test_send_batch();
        test_claim();
        test_recv();
        test_recv_batch();
        test_poll();
        test_fanout();
        test_stats_and_wait();
        test_multi_producer();
        test_dead_participants();
        test_manual_ack();
        test_producer_slots();
        test_checksum();
        test_ack_bad_input();
        pingpong(EMF_WAIT_SPIN, "spin", n ? (size_t)n : 20000);
        pingpong(EMF_WAIT_PARK, "park", n ? (size_t)n : 20000);
    }
    remove_temp_dir();
    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}

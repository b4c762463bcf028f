/*
 * agent.c — a C11 agent of an erlmcp-flow scheduler directory (emf_agent_*), and the test of
 * the runtime's C ABI (emf_service_*, emf_agent_*), built against the installed header and
 * library (`pkg-config --cflags --libs erlmcp_flow`).
 *
 *   agent --dir DIR --id ID [--type TYPE] [--max-tasks N] [--count N]
 *
 *     Joins the scheduler directory DIR (a service must have opened it: emf_service_start in
 *     C, erlmcp_flow.sched.Service in Python) as agent ID of type TYPE (default "echo") and
 *     answers every task with "r:" followed by its payload, until SIGTERM or SIGINT, or after
 *     N tasks (--count). A payload larger than the buffer is fetched again with a larger one
 *     (EMF_ERR_BUFFER_TOO_SMALL keeps the task received). Prints `agent ID: N tasks` at the
 *     end; exits 0, or 1 after an error.
 *
 *   agent --test
 *
 *     The test: bad input (NULL, freed and wrong-kind handles, a directory without a
 *     service), a service and an agent in this process (buffers too small on both sides, a
 *     failed task dead-lettered), then a service in this process and two agent processes
 *     (this program, spawned) answering 400 tasks: every result comes back exactly once and
 *     is the right one. Output: one line per failed check on stderr, then exactly one line
 *     `N passed, M failed`. Exit status: 0 when M is 0, 1 otherwise, 2 when the loaded
 *     library has another ABI.
 */
#define _GNU_SOURCE /* posix_spawn, mkdtemp, sigaction */
#include <erlmcp_flow.h>

#include <dirent.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

extern char **environ;

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

/* Grows a malloc'd buffer to at least `need` bytes; 0 when out of memory. */
static int grow(uint8_t **buf, size_t *cap, size_t need) {
    if (need <= *cap) {
        return 1;
    }
    uint8_t *p = realloc(*buf, need);
    if (p == NULL) {
        return 0;
    }
    *buf = p;
    *cap = need;
    return 1;
}

/* The agent's loop. Returns the exit status. */
static int serve(const char *dir, const char *id, const char *type, uint32_t max_tasks,
                 long count) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    emf_agent_t *a = NULL;
    emf_status_t st = emf_agent_connect(dir, id, type, max_tasks, &a);
    if (st != EMF_OK) {
        fprintf(stderr, "agent %s: connect: %s: %s\n", id, emf_status_name(st), last_error());
        return 1;
    }
    size_t cap = 64, out_cap = 0;
    uint8_t *buf = malloc(cap), *out = NULL;
    long handled = 0;
    int rc = buf == NULL;
    while (rc == 0 && !g_stop && (count <= 0 || handled < count)) {
        uint64_t task = 0;
        uint32_t attempt = 0;
        size_t len = 0;
        /* A short wait, so a stop request is seen soon. */
        st = emf_agent_recv(a, 50, &task, &attempt, buf, cap, &len);
        if (st == EMF_ERR_TIMEOUT) {
            continue;
        }
        if (st == EMF_ERR_BUFFER_TOO_SMALL) {
            /* The task stays received: the next call hands it out again. */
            rc = !grow(&buf, &cap, len);
            continue;
        }
        if (st != EMF_OK) {
            fprintf(stderr, "agent %s: recv: %s: %s\n", id, emf_status_name(st), last_error());
            rc = 1;
            break;
        }
        if (!grow(&out, &out_cap, len + 2)) {
            emf_agent_fail(a, task, attempt, "out of memory");
            rc = 1;
            break;
        }
        memcpy(out, "r:", 2);
        if (len > 0) {
            memcpy(out + 2, buf, len);
        }
        st = emf_agent_complete(a, task, attempt, out, len + 2);
        if (st != EMF_OK) {
            fprintf(stderr, "agent %s: complete: %s: %s\n", id, emf_status_name(st), last_error());
            rc = 1;
            break;
        }
        handled++;
    }
    free(buf);
    free(out);
    /* Leaves: whatever it still holds goes to other agents. */
    st = emf_agent_free(a);
    if (st != EMF_OK) {
        fprintf(stderr, "agent %s: free: %s: %s\n", id, emf_status_name(st), last_error());
        rc = 1;
    }
    printf("agent %s: %ld tasks\n", id, handled);
    return rc;
}

/* ---- the test ------------------------------------------------------------------------------ */

#define TASKS 400

static char g_dir[64];

/* A private scheduler directory (in /dev/shm when it exists). */
static int make_dir(void) {
    strcpy(g_dir, "/dev/shm/emf-agent-XXXXXX");
    if (mkdtemp(g_dir) != NULL) {
        return 1;
    }
    strcpy(g_dir, "/tmp/emf-agent-XXXXXX");
    return mkdtemp(g_dir) != NULL;
}

static void remove_dir(void) {
    DIR *d = opendir(g_dir);
    if (d == NULL) {
        return;
    }
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            snprintf(path, sizeof path, "%s/%s", g_dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
    rmdir(g_dir);
}

static void small_options(emf_service_options_t *o) {
    CHECK_STATUS(emf_service_options_default(o), EMF_OK);
    CHECK(o->ledger == EMF_LEDGER_SHM && o->ledger_path == NULL);
    o->sched.shm_capacity = 4u << 20;
    o->reports_capacity = 1u << 20;
    o->load_slots = 16;
}

static void test_bad_input(void) {
    emf_service_t *s = NULL;
    emf_agent_t *a = NULL;
    emf_service_options_t o;
    emf_service_stats_t stats;
    uint64_t id = 0;
    uint32_t kind = 0, attempt = 0;
    size_t len = 0;
    uint8_t buf[8];
    small_options(&o);

    /* No service ever opened this directory. */
    CHECK(make_dir());
    CHECK_ERROR(emf_agent_connect(g_dir, "w", "echo", 1, &a), EMF_ERR_NOT_FOUND, "no scheduler");
    CHECK(a == NULL);

    o.ledger = 7;
    CHECK_ERROR(emf_service_start(&o, g_dir, &s), EMF_ERR_INVALID_ARGUMENT, "EMF_LEDGER_");
    o.ledger = EMF_LEDGER_FILE;
    CHECK_ERROR(emf_service_start(&o, g_dir, &s), EMF_ERR_NULL_ARGUMENT, "ledger_path");
    o.ledger = EMF_LEDGER_MEMORY;
    CHECK_ERROR(emf_service_start(&o, g_dir, NULL), EMF_ERR_NULL_ARGUMENT, "out");
    CHECK(s == NULL);
    CHECK_STATUS(emf_service_start(&o, g_dir, &s), EMF_OK);
    CHECK_ERROR(emf_agent_connect(g_dir, NULL, "echo", 1, &a), EMF_ERR_NULL_ARGUMENT, "id");
    CHECK_ERROR(emf_agent_connect(g_dir, "bad id", "echo", 1, &a), EMF_ERR_INVALID_ARGUMENT, NULL);
    CHECK_STATUS(emf_agent_connect(g_dir, "w", "echo", 1, &a), EMF_OK);
    CHECK_ERROR(emf_agent_connect(g_dir, "w", "echo", 1, &a), EMF_ERR_BUSY, NULL);

    CHECK_ERROR(emf_service_submit(s, NULL, EMF_PRIORITY_NORMAL, NULL, 0, &id),
                EMF_ERR_NULL_ARGUMENT, "agent_type");
    CHECK_ERROR(emf_service_submit(s, "echo", 9, NULL, 0, &id), EMF_ERR_INVALID_ARGUMENT,
                "priority");
    CHECK_ERROR(emf_service_submit(s, "echo", EMF_PRIORITY_NORMAL, NULL, 3, &id),
                EMF_ERR_NULL_ARGUMENT, "payload");
    CHECK_ERROR(emf_service_wait(s, 12345, 0, &kind, buf, sizeof buf, &len), EMF_ERR_NOT_FOUND,
                "12345");
    CHECK_ERROR(emf_service_wait(s, 1, 0, &kind, NULL, 4, &len), EMF_ERR_NULL_ARGUMENT, "buf");
    CHECK_ERROR(emf_service_take_orphan(s, &id, &kind, buf, sizeof buf, &len), EMF_ERR_EMPTY, NULL);
    CHECK_ERROR(emf_agent_recv(a, 0, &id, &attempt, buf, sizeof buf, &len), EMF_ERR_TIMEOUT,
                "no task");
    CHECK_ERROR(emf_agent_complete(a, 1, 1, NULL, 0), EMF_ERR_NOT_FOUND, "not received");
    CHECK_ERROR(emf_agent_recv(a, 0, NULL, &attempt, buf, sizeof buf, &len), EMF_ERR_NULL_ARGUMENT,
                "out_task_id");

    /* A handle of the other kind, then NULL and freed handles. */
    CHECK_ERROR(emf_agent_heartbeat((emf_agent_t *)(void *)s), EMF_ERR_INVALID_ARGUMENT, "agent");
    CHECK_ERROR(emf_service_stats((emf_service_t *)(void *)a, &stats), EMF_ERR_INVALID_ARGUMENT,
                "service");
    CHECK_STATUS(emf_agent_free(NULL), EMF_OK);
    CHECK_STATUS(emf_service_free(NULL), EMF_OK);
    CHECK_ERROR(emf_agent_recv(NULL, 0, &id, &attempt, buf, sizeof buf, &len),
                EMF_ERR_NULL_ARGUMENT, "agent");
    CHECK_ERROR(emf_service_wait(NULL, 1, 0, &kind, buf, sizeof buf, &len), EMF_ERR_NULL_ARGUMENT,
                "service");
    CHECK_STATUS(emf_agent_free(a), EMF_OK);
    CHECK_STATUS(emf_service_free(s), EMF_OK);
    CHECK_ERROR(emf_agent_free(a), EMF_ERR_INVALID_ARGUMENT, "agent");
    CHECK_ERROR(emf_agent_heartbeat(a), EMF_ERR_INVALID_ARGUMENT, "agent");
    CHECK_ERROR(emf_agent_complete(a, 1, 1, NULL, 0), EMF_ERR_INVALID_ARGUMENT, "agent");
    CHECK_ERROR(emf_agent_fail(a, 1, 1, NULL), EMF_ERR_INVALID_ARGUMENT, "agent");
    CHECK_ERROR(emf_service_free(s), EMF_ERR_INVALID_ARGUMENT, "service");
    CHECK_ERROR(emf_service_submit(s, "echo", EMF_PRIORITY_NORMAL, NULL, 0, &id),
                EMF_ERR_INVALID_ARGUMENT, "service");
    CHECK_ERROR(emf_service_stats(s, &stats), EMF_ERR_INVALID_ARGUMENT, "service");
    remove_dir();
}

/* A service and an agent in this process: buffers too small, a failed task dead-lettered. */
static void test_in_process(void) {
    emf_service_t *s = NULL;
    emf_agent_t *a = NULL;
    emf_service_options_t o;
    uint64_t id = 0, task = 0;
    uint32_t kind = 0, attempt = 0;
    size_t len = 0;
    uint8_t small[4], big[2048], payload[1000];
    small_options(&o);
    o.sched.max_attempts = 1;
    CHECK(make_dir());
    CHECK_STATUS(emf_service_start(&o, g_dir, &s), EMF_OK);
    CHECK_STATUS(emf_agent_connect(g_dir, "inproc", "echo", 2, &a), EMF_OK);
    if (s == NULL || a == NULL) {
        return;
    }
    for (size_t i = 0; i < sizeof payload; i++) {
        payload[i] = (uint8_t)(i * 7);
    }
    CHECK_STATUS(emf_service_submit(s, "echo", EMF_PRIORITY_HIGH, payload, sizeof payload, &id),
                 EMF_OK);
    /* Too small: the task stays received, handed out again. */
    CHECK_ERROR(emf_agent_recv(a, 10000, &task, &attempt, small, sizeof small, &len),
                EMF_ERR_BUFFER_TOO_SMALL, "1000 bytes");
    CHECK(task == id && attempt == 1 && len == sizeof payload);
    CHECK_STATUS(emf_agent_recv(a, 0, &task, &attempt, big, sizeof big, &len), EMF_OK);
    CHECK(task == id && len == sizeof payload && memcmp(big, payload, len) == 0);
    CHECK_STATUS(emf_agent_heartbeat(a), EMF_OK);
    CHECK_STATUS(emf_agent_complete(a, task, attempt, payload, sizeof payload), EMF_OK);
    CHECK_ERROR(emf_agent_complete(a, task, attempt, payload, 1), EMF_ERR_NOT_FOUND,
                "not received");
    CHECK_ERROR(emf_service_wait(s, id, 10000, &kind, small, sizeof small, &len),
                EMF_ERR_BUFFER_TOO_SMALL, "1000 bytes");
    CHECK(kind == EMF_OUTCOME_DONE && len == sizeof payload);
    CHECK_STATUS(emf_service_wait(s, id, 0, &kind, big, sizeof big, &len), EMF_OK);
    CHECK(kind == EMF_OUTCOME_DONE && len == sizeof payload && memcmp(big, payload, len) == 0);
    CHECK_ERROR(emf_service_wait(s, id, 0, &kind, big, sizeof big, &len), EMF_ERR_NOT_FOUND, NULL);

    /* A failed task with max_attempts 1: dead-lettered with the agent's reason. */
    CHECK_STATUS(emf_service_submit(s, "echo", EMF_PRIORITY_LOW, NULL, 0, &id), EMF_OK);
    CHECK_ERROR(emf_service_wait(s, id, 0, &kind, big, sizeof big, &len), EMF_ERR_TIMEOUT, NULL);
    CHECK_STATUS(emf_agent_recv(a, 10000, &task, &attempt, big, sizeof big, &len), EMF_OK);
    CHECK(task == id && len == 0);
    CHECK_STATUS(emf_agent_fail(a, task, attempt, "cannot do that"), EMF_OK);
    CHECK_STATUS(emf_service_wait(s, id, 10000, &kind, big, sizeof big - 1, &len), EMF_OK);
    big[len] = 0;
    CHECK(kind == EMF_OUTCOME_DEAD_LETTER && strstr((const char *)big, "cannot do that") != NULL);

    emf_service_stats_t st;
    CHECK_STATUS(emf_service_stats(s, &st), EMF_OK);
    CHECK(st.sched.completed == 1 && st.sched.dead_lettered == 1 && st.inboxes == 1);
    CHECK_STATUS(emf_agent_free(a), EMF_OK);
    CHECK_STATUS(emf_service_free(s), EMF_OK);
    remove_dir();
}

/* A service here, two agents as processes (this program): every result exactly once. */
static void test_processes(const char *self) {
    static char payloads[TASKS][300];
    static size_t lens[TASKS];
    static uint64_t ids[TASKS];
    emf_service_t *s = NULL;
    emf_service_options_t o;
    pid_t pids[2] = {0, 0};
    small_options(&o);
    /* Without work stealing no task runs twice: every one is answered by exactly one agent
       (with it, a task taken from a busy agent just as it starts may run twice; the later
       answer is then dropped as a duplicate). */
    o.sched.work_stealing = false;
    CHECK(make_dir());
    CHECK_STATUS(emf_service_start(&o, g_dir, &s), EMF_OK);
    if (s == NULL) {
        return;
    }
    for (int i = 0; i < 2; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%d", i);
        char *argv[] = {(char *)self, "--dir", g_dir, "--id", id, "--max-tasks", "8", NULL};
        CHECK(posix_spawn(&pids[i], self, NULL, NULL, argv, environ) == 0);
    }
    /* Both agents register before the tasks come, so both take part. */
    emf_service_stats_t st;
    memset(&st, 0, sizeof st);
    for (int tries = 0; tries < 30000; tries++) {
        if (emf_service_stats(s, &st) == EMF_OK && st.inboxes == 2) {
            break;
        }
        usleep(1000); /* a condition polled, up to 30 s */
    }
    CHECK(st.inboxes == 2);
    for (int i = 0; i < TASKS; i++) {
        /* Every 7th payload is larger than the agents' first buffer (64 bytes). */
        int n = snprintf(payloads[i], sizeof payloads[i], "task-%d", i);
        if (i % 7 == 0) {
            memset(payloads[i] + n, 'x', 200);
            n += 200;
        }
        lens[i] = (size_t)n;
        CHECK_STATUS(emf_service_submit(s, "echo", (uint32_t)(i % 4), (const uint8_t *)payloads[i],
                                        lens[i], &ids[i]),
                     EMF_OK);
    }
    size_t cap = 64;
    uint8_t *buf = malloc(cap);
    int right = 0;
    for (int i = 0; i < TASKS && buf != NULL; i++) {
        uint32_t kind = 0;
        size_t len = 0;
        emf_status_t st = emf_service_wait(s, ids[i], 30000, &kind, buf, cap, &len);
        if (st == EMF_ERR_BUFFER_TOO_SMALL) {
            /* Kept for the retry. */
            CHECK(grow(&buf, &cap, len));
            st = emf_service_wait(s, ids[i], 0, &kind, buf, cap, &len);
        }
        CHECK_STATUS(st, EMF_OK);
        if (st != EMF_OK) {
            break;
        }
        int ok = kind == EMF_OUTCOME_DONE && len == lens[i] + 2 && memcmp(buf, "r:", 2) == 0 &&
                 memcmp(buf + 2, payloads[i], lens[i]) == 0;
        if (!ok) {
            fprintf(stderr, "task %d: a wrong result\n", i);
        }
        right += ok;
        /* Taken once: there is no second outcome. */
        CHECK_ERROR(emf_service_wait(s, ids[i], 0, &kind, buf, cap, &len), EMF_ERR_NOT_FOUND, NULL);
    }
    free(buf);
    CHECK(right == TASKS);
    CHECK_STATUS(emf_service_stats(s, &st), EMF_OK);
    CHECK(st.sched.completed == TASKS && st.sched.duplicates == 0 && st.sched.dead_lettered == 0);
    CHECK(st.inboxes == 2);
    CHECK(st.bad_reports == 0);
    for (int i = 0; i < 2; i++) {
        int status = 0;
        if (pids[i] > 0) {
            kill(pids[i], SIGTERM);
            CHECK(waitpid(pids[i], &status, 0) == pids[i]);
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
    }
    printf("agent: %d tasks answered by 2 agent processes, %llu redelivered\n", right,
           (unsigned long long)st.sched.redeliveries);
    CHECK_STATUS(emf_service_free(s), EMF_OK);
    remove_dir();
}

static int usage(void) {
    fprintf(stderr, "usage: agent --test\n"
                    "       agent --dir DIR --id ID [--type TYPE] [--max-tasks N] [--count N]\n");
    return 2;
}

int main(int argc, char **argv) {
    if (emf_abi_version() != EMF_ABI_VERSION) {
        fprintf(stderr, "ABI mismatch: header %u, library %u\n", EMF_ABI_VERSION,
                emf_abi_version());
        return 2;
    }
    const char *dir = NULL, *id = NULL, *type = "echo";
    long max_tasks = 0, count = 0;
    int test = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--test") == 0) {
            test = 1;
            continue;
        }
        if (val == NULL) {
            return usage();
        }
        if (strcmp(arg, "--dir") == 0) {
            dir = val;
        } else if (strcmp(arg, "--id") == 0) {
            id = val;
        } else if (strcmp(arg, "--type") == 0) {
            type = val;
        } else if (strcmp(arg, "--max-tasks") == 0) {
            max_tasks = strtol(val, NULL, 10);
        } else if (strcmp(arg, "--count") == 0) {
            count = strtol(val, NULL, 10);
        } else {
            return usage();
        }
        i++;
    }
    if (!test) {
        if (dir == NULL || id == NULL || max_tasks < 0 || max_tasks > UINT32_MAX) {
            return usage();
        }
        return serve(dir, id, type, (uint32_t)max_tasks, count);
    }
    test_bad_input();
    test_in_process();
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(n > 0);
    if (n > 0) {
        self[n] = 0;
        test_processes(self);
    }
    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}

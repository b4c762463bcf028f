/*
 * check.h — the pass/fail counting shared by the C test programs (serializer.c,
 * ring_pingpong.c): CHECK(cond), CHECK_STATUS(expr, want), CHECK_ERROR(expr, want, needle).
 * Include it once per program, after <stdio.h>, <string.h> and "erlmcp_flow.h".
 */
#ifndef EMF_EXAMPLES_CHECK_H
#define EMF_EXAMPLES_CHECK_H

static unsigned long g_passed;
static unsigned long g_failed;

static inline void check_impl(int ok, const char *expr, const char *file, int line) {
    if (ok) {
        g_passed++;
    } else {
        g_failed++;
        fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, expr);
    }
}

#define CHECK(cond) check_impl((cond) ? 1 : 0, #cond, __FILE__, __LINE__)

/* The calling thread's last error message (truncated to fit a fixed buffer). */
static inline const char *last_error(void) {
    static char text[1024];
    size_t len = 0;
    emf_status_t st = emf_last_error_message(text, sizeof text, &len);
    if (st != EMF_OK && st != EMF_ERR_BUFFER_TOO_SMALL) {
        snprintf(text, sizeof text, "(emf_last_error_message failed: %s)", emf_status_name(st));
    }
    return text;
}

/*
 * Checks that `got` is `want`. For an error status it also checks that the error message is
 * not empty and, when `needle` is non-NULL, that it mentions `needle` (which shows that the
 * message belongs to this call and not to an earlier one).
 */
static inline void check_status_impl(emf_status_t got, emf_status_t want, const char *needle,
                              const char *expr, const char *file, int line) {
    int ok = got == want;
    if (ok && want != EMF_OK) {
        const char *msg = last_error();
        ok = msg[0] != '\0' && (needle == NULL || strstr(msg, needle) != NULL);
        if (!ok) {
            fprintf(stderr, "%s:%d: %s: error message \"%s\" lacks \"%s\"\n", file, line, expr,
                    msg, needle ? needle : "(any text)");
        }
    } else if (!ok) {
        fprintf(stderr, "%s:%d: %s gave %s, expected %s (%s)\n", file, line, expr,
                emf_status_name(got), emf_status_name(want), got != EMF_OK ? last_error() : "");
    }
    check_impl(ok, expr, file, line);
}

#define CHECK_STATUS(expr, want) check_status_impl((expr), (want), NULL, #expr, __FILE__, __LINE__)
#define CHECK_ERROR(expr, want, needle) \
    check_status_impl((expr), (want), (needle), #expr, __FILE__, __LINE__)

#endif /* EMF_EXAMPLES_CHECK_H */

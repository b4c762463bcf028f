// check.hpp — pass/fail counting shared by the C++ test programs (serializer.cpp,
// ring_pingpong.cpp): CHECK(cond) and CHECK_THROWS(stmt, status). Include it once per
// program, inside the program's anonymous namespace, after "erlmcp_flow.hpp".
#ifndef EMF_EXAMPLES_CHECK_HPP
#define EMF_EXAMPLES_CHECK_HPP

unsigned long g_passed = 0;
unsigned long g_failed = 0;

inline void check_impl(bool ok, const char* expr, const char* file, int line) {
    if (ok) {
        ++g_passed;
    } else {
        ++g_failed;
        std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, expr);
    }
}

#define CHECK(cond) check_impl(static_cast<bool>(cond), #cond, __FILE__, __LINE__)

// Runs `body`, which must throw emf::Error with status `want` and a non-empty message.
template <typename F>
void check_throws_impl(F&& body, emf_status_t want, const char* expr, const char* file, int line) {
    try {
        body();
        std::fprintf(stderr, "%s:%d: no exception\n", file, line);
        check_impl(false, expr, file, line);
    } catch (const emf::Error& e) {
        bool ok = e.status() == want && !e.message().empty() &&
                  std::strstr(e.what(), emf_status_name(want)) != nullptr;
        if (!ok) std::fprintf(stderr, "%s:%d: got %s\n", file, line, e.what());
        check_impl(ok, expr, file, line);
    }
}

#define CHECK_THROWS(stmt, want) \
    check_throws_impl([&] { stmt; }, (want), #stmt, __FILE__, __LINE__)

#endif  // EMF_EXAMPLES_CHECK_HPP

/* codec.c — serializer (archives, messages) and compressor NIFs (see erlmcp_flow_nif.c). */

#include "erlmcp_flow_nif.h"

/* zlib compression is much slower than the other operations (about 45 MB/s at the default
 * level on the CI machine: docs/BENCHMARKS.md), so it goes dirty from 32 KiB (~0.7 ms). */
#define EMF_NIF_COMPRESS_DIRTY_THRESHOLD ((size_t)32 * 1024)

/* Batches with more envelopes than this are described on a dirty CPU scheduler: each envelope
 * counts as EMF_NIF_DIRTY_THRESHOLD / EMF_NIF_DIRTY_ENVELOPES bytes of work. */
#define EMF_NIF_DIRTY_ENVELOPES ((size_t)1024)
#define EMF_NIF_ENVELOPE_COST (EMF_NIF_DIRTY_THRESHOLD / EMF_NIF_DIRTY_ENVELOPES)

/* The largest expansion a deflate stream can achieve (about 1032:1). The output of
 * emf_decompress is bounded by min(max_len, input * ratio), which decides dirty scheduling. */
#define EMF_NIF_ZLIB_MAX_RATIO ((size_t)1032)

/* emf_message_t */
static emf_status_t release_message(void *ptr) {
    return emf_message_free(ptr);
}


static const emf_nif_handle_kind message_kind = {
    .name = "erlmcp_flow_message",
    .release = release_message,
    .release_what = "emf_message_free in the resource destructor",
    .expected = "message: expected a handle from message_open/1",
    .not_this_version = "message: not a handle of this library version: expected a handle "
                        "from message_open/1 of the NIF library loaded now (handles made "
                        "before a code upgrade of erlmcp_flow_nif are refused; open the "
                        "archive again)",
    .closed = "message: closed",
    .index = EMF_NIF_KIND_MESSAGE,
};

/* ------------------------------------------------------------------------------------------ */
/* Serializer                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* json_to_archive(Json, Priority, CreatedAtUs, DeadlineUs[, Checksum]): Checksum `true'
 * passes EMF_ARCHIVE_CHECKSUM to emf_json_to_archive_ex. */
static ERL_NIF_TERM json_to_archive_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary json;
    bool checksum = false;
    emf_encode_options_t opts;
    ErlNifUInt64 created, deadline;
    if (!get_bytes(env, argv[0], &json)) {
        return argument_error(env, "json: expected a binary or iodata");
    }
    if (!get_priority(argv[1], &opts.priority)) {
        return argument_error(env, "priority: expected critical, high, normal or low");
    }
    if (!enif_get_uint64(env, argv[2], &created)) {
        return argument_error(env, "created_at_us: expected a non-negative 64-bit integer");
    }
    if (!enif_get_uint64(env, argv[3], &deadline)) {
        return argument_error(env, "deadline_us: expected a non-negative 64-bit integer");
    }
    if (argc > 4 && !get_bool(argv[4], &checksum)) {
        return argument_error(env, "checksum: expected true or false");
    }
    opts.created_at_us = created;
    opts.deadline_us = deadline;
    emf_buf_t out = {0};
    emf_status_t st = emf_json_to_archive_ex(json.data, json.size, &opts,
                                             checksum ? EMF_ARCHIVE_CHECKSUM : 0, &out);
    return ok_buf(env, st, &out);
}
NIF_BY_BYTES(json_to_archive, 0, EMF_NIF_DIRTY_THRESHOLD)

#define EMF_NIF_ARCHIVE_ERROR "archive: expected a binary"

/* archive_to_json(Archive) */
static ERL_NIF_TERM archive_to_json_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary archive;
    if (!get_bytes(env, argv[0], &archive)) {
        return argument_error(env, EMF_NIF_ARCHIVE_ERROR);
    }
    emf_buf_t out = {0};
    return ok_buf(env, emf_archive_to_json(archive.data, archive.size, &out), &out);
}
NIF_BY_BYTES(archive_to_json, 0, EMF_NIF_DIRTY_THRESHOLD)

/* archive_validate(Archive) */
static ERL_NIF_TERM archive_validate_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary archive;
    if (!get_bytes(env, argv[0], &archive)) {
        return argument_error(env, EMF_NIF_ARCHIVE_ERROR);
    }
    size_t count = 0;
    emf_status_t st = emf_archive_validate(archive.data, archive.size, &count);
    return ok_u64(env, st, count);
}
NIF_BY_BYTES(archive_validate, 0, EMF_NIF_DIRTY_THRESHOLD)

/* message_open(Archive) -> {ok, Message} */
static ERL_NIF_TERM message_open_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary archive;
    if (!get_bytes(env, argv[0], &archive)) {
        return argument_error(env, EMF_NIF_ARCHIVE_ERROR);
    }
    emf_message_t *msg = NULL;
    emf_status_t st = emf_message_open(archive.data, archive.size, &msg);
    return ok_handle(env, st, &message_kind, msg, archive.size, 0);
}
NIF_BY_BYTES(message_open, 0, EMF_NIF_DIRTY_THRESHOLD)

/* message_count(Message) -> {ok, Count} */
static ERL_NIF_TERM nif_message_count(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &message_kind);
    size_t count = 0;
    emf_status_t st = emf_message_count(h->ptr, &count);
    return ok_u64(env, st, count);
}

/* Envelope `index' of `msg' as a map; the borrowed strings are copied. An id that is not
 * none, null, a 64-bit integer or a string (EMF_ID_OTHER_NUMBER: a float or a larger
 * integer) becomes {json, Text} with its exact JSON text. */
static emf_status_t envelope_map(ErlNifEnv *env, const emf_message_t *msg, size_t index,
                                 const emf_envelope_info_t *info, ERL_NIF_TERM *out) {
    ERL_NIF_TERM id;
    switch (info->id_type) {
    case EMF_ID_NONE: id = atom_none; break;
    case EMF_ID_NULL: id = atom_null; break;
    case EMF_ID_INT: id = enif_make_int64(env, info->id_int); break;
    case EMF_ID_STRING: id = make_binary_from(env, info->id_str, info->id_str_len); break;
    default: {
        emf_buf_t text = {0};
        emf_status_t st = emf_message_id_json(msg, index, &text);
        if (st != EMF_OK) {
            return st;
        }
        id = enif_make_tuple2(env, atom_json, take_buf(env, &text));
        break;
    }
    }
    ERL_NIF_TERM keys[] = {atom_kind, atom_priority, atom_id, atom_method,
                           atom_created_at_us, atom_deadline_us, atom_error_code};
    ERL_NIF_TERM values[] = {
        code_atom(env, kind_atoms, kind_count, info->kind),
        code_atom(env, priority_atoms, priority_count, info->priority),
        id,
        info->method != NULL ? make_binary_from(env, info->method, info->method_len)
                             : atom_undefined,
        enif_make_uint64(env, info->created_at_us),
        enif_make_uint64(env, info->deadline_us),
        info->has_error ? enif_make_int64(env, info->error_code) : atom_undefined,
    };
    *out = MAKE_MAP(env, keys, values);
    return EMF_OK;
}

/* message_envelopes(Message) -> {ok, [Map]} */
static ERL_NIF_TERM message_envelopes_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &message_kind);
    size_t count = 0;
    emf_status_t st = emf_message_count(h->ptr, &count);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = count; i > 0; i--) {
        emf_envelope_info_t info;
        ERL_NIF_TERM map;
        st = emf_message_envelope(h->ptr, i - 1, &info);
        if (st == EMF_OK) {
            st = envelope_map(env, h->ptr, i - 1, &info, &map);
        }
        if (st != EMF_OK) {
            return status_error(env, st);
        }
        list = enif_make_list_cell(env, map, list);
    }
    return make_ok(env, list);
}

static ERL_NIF_TERM nif_message_envelopes(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    /* The work is per envelope (a map each) and per byte (method and id strings are copied):
     * the larger of the two costs decides. */
    emf_nif_handle *h;
    size_t cost = 0;
    if (handle_get(env, argv[0], &message_kind, &h)) {
        size_t count = 0;
        if (emf_message_count(h->ptr, &count) != EMF_OK) {
            count = 0; /* the implementation repeats the call and reports the error */
        }
        cost = size_max(sat_mul(count, EMF_NIF_ENVELOPE_COST), h->cost);
    }
    return run_by_cost(env, "message_envelopes", message_envelopes_impl, cost,
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

/* message_to_json(Message) -> {ok, Json} */
static ERL_NIF_TERM message_to_json_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &message_kind);
    emf_buf_t out = {0};
    return ok_buf(env, emf_message_to_json(h->ptr, &out), &out);
}

static ERL_NIF_TERM nif_message_to_json(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "message_to_json", message_to_json_impl,
                       handle_cost(env, argv[0], &message_kind), EMF_NIF_DIRTY_THRESHOLD, argc,
                       argv);
}

/* message_payload_json(Message, Index) -> {ok, Json} */
static ERL_NIF_TERM message_payload_json_impl(ErlNifEnv *env, int argc,
                                              const ERL_NIF_TERM argv[]) {
    (void)argc;
    HANDLE_ARG_OR_RETURN(env, h, argv[0], &message_kind);
    size_t index;
    if (!get_size(env, argv[1], &index)) {
        return argument_error(env, "index: expected a non-negative integer");
    }
    emf_buf_t out = {0};
    return ok_buf(env, emf_message_payload_json(h->ptr, index, &out), &out);
}

static ERL_NIF_TERM nif_message_payload_json(ErlNifEnv *env, int argc,
                                             const ERL_NIF_TERM argv[]) {
    return run_by_cost(env, "message_payload_json", message_payload_json_impl,
                       handle_cost(env, argv[0], &message_kind), EMF_NIF_DIRTY_THRESHOLD, argc,
                       argv);
}

/* ------------------------------------------------------------------------------------------ */
/* Terms <-> archives (emf_value_builder_*, emf_archive_visit)                                */
/* ------------------------------------------------------------------------------------------ */

/* Paths in error messages: `$', `.key' and `[index]' steps; keys cut at this many bytes. */
#define EMF_NIF_PATH_KEY_MAX 64
#define EMF_NIF_PATH_MAX 512

/* Appends a key to a path: printable ASCII as it is, other bytes as `?', cut to
 * EMF_NIF_PATH_KEY_MAX bytes. */
static void path_put(char *path, size_t *len, const char *s, size_t n) {
    if (n > EMF_NIF_PATH_KEY_MAX) {
        n = EMF_NIF_PATH_KEY_MAX;
    }
    for (size_t i = 0; i < n && *len + 1 < EMF_NIF_PATH_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        path[(*len)++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    path[*len] = '\0';
}

static void path_key(ErlNifEnv *env, char *path, size_t *len, ERL_NIF_TERM key) {
    ErlNifBinary bin;
    char atom[256];
    path_put(path, len, ".", 1);
    if (enif_inspect_binary(env, key, &bin)) {
        path_put(path, len, (const char *)bin.data, bin.size);
    } else if (enif_get_atom(env, key, atom, sizeof atom, ERL_NIF_LATIN1) > 0) {
        path_put(path, len, atom, strlen(atom));
    } else {
        path_put(path, len, "?", 1);
    }
}

static void path_index(char *path, size_t *len, size_t index) {
    char step[32];
    int n = snprintf(step, sizeof step, "[%zu]", index);
    if (n > 0) {
        path_put(path, len, step, (size_t)n);
    }
}

/* {error, {invalid_argument, <<"<what> (at <path>)<tail>">>}} */
static ERL_NIF_TERM path_error(ErlNifEnv *env, const char *what, const char *path,
                               const char *tail) {
    char msg[EMF_NIF_PATH_MAX + 512];
    int n = snprintf(msg, sizeof msg, "%s (at %s)%s", what, path, tail);
    size_t len = n < 0 ? 0 : ((size_t)n >= sizeof msg ? sizeof msg - 1 : (size_t)n);
    return make_error(env, atom_invalid_argument, msg, len);
}

/* The longest integer decode makes a term of, in digits (about 1 million bits): the decimal
 * conversion is quadratic, and an archive may hold a number of 100 million digits. */
#define EMF_NIF_MAX_INTEGER_DIGITS ((size_t)300000)

/* The longest magnitude encode takes, in bytes: 10^300000 - 1 (996 579 bits) fits, so encode
 * takes what decode gives back. The engine converts a magnitude to decimal text in quadratic
 * time: a megabyte integer would hold a dirty scheduler for minutes. */
#define EMF_NIF_MAX_INTEGER_BYTES ((size_t)124573)

/* --- encode ------------------------------------------------------------------------------ */

/* One open map or list of the term being encoded. */
typedef struct enc_frame {
    bool is_map;
    ErlNifMapIterator iter; /* maps: at the member after the current one */
    ERL_NIF_TERM key;       /* maps: the key of the current member (for paths) */
    ERL_NIF_TERM rest;      /* lists: the cells after the current item */
    size_t index;           /* lists: the current item's index + 1 */
} enc_frame;

typedef struct enc_ctx {
    ErlNifEnv *env;
    emf_value_builder_t *builder;
    enc_frame stack[EMF_VALUE_MAX_DEPTH];
    size_t depth;
    size_t work;   /* events and bytes so far */
    size_t budget; /* 0: none; else reschedule dirty past it */
    bool over_budget;
    ERL_NIF_TERM error;
} enc_ctx;

/* The path of the current value: the steps of the first `upto' open frames. */
static void enc_path(enc_ctx *c, size_t upto, char *path) {
    size_t len = 0;
    path_put(path, &len, "$", 1);
    for (size_t i = 0; i < upto; i++) {
        if (c->stack[i].is_map) {
            path_key(c->env, path, &len, c->stack[i].key);
        } else {
            path_index(path, &len, c->stack[i].index - 1);
        }
    }
}

/* Sets c->error to a refusal of this shim at the path of the first `upto' frames; returns
 * false. */
static bool enc_refuse_at(enc_ctx *c, size_t upto, const char *what, const char *tail) {
    char path[EMF_NIF_PATH_MAX];
    enc_path(c, upto, path);
    c->error = path_error(c->env, what, path, tail);
    return false;
}

/* enc_refuse_at the current value. */
static bool enc_refuse(enc_ctx *c, const char *what, const char *tail) {
    return enc_refuse_at(c, c->depth, what, tail);
}

/* Pushes one event; on failure sets c->error to the engine's message (with its path). */
static bool enc_push(enc_ctx *c, const emf_value_event_t *ev) {
    c->work += 1 + ev->len;
    if (c->budget != 0 && c->work > c->budget) {
        c->over_budget = true;
        return false;
    }
    emf_status_t st = emf_value_builder_push(c->builder, ev, 1);
    if (st != EMF_OK) {
        c->error = status_error(c->env, st);
        return false;
    }
    return true;
}

static bool enc_text(enc_ctx *c, uint32_t kind, const void *data, size_t len) {
    emf_value_event_t ev = {.kind = kind, .data = data, .len = len};
    return enc_push(c, &ev);
}

/* The UTF-8 text of an atom into buf (at least 1024 bytes): Latin-1 atoms through
 * enif_get_atom, others (code points beyond 255) from their external format. */
static bool atom_utf8(ErlNifEnv *env, ERL_NIF_TERM atom, char *buf, size_t *len) {
    char latin1[256];
    int n = enif_get_atom(env, atom, latin1, sizeof latin1, ERL_NIF_LATIN1);
    if (n > 0) {
        size_t out = 0;
        for (int i = 0; i < n - 1; i++) {
            unsigned char ch = (unsigned char)latin1[i];
            if (ch < 0x80) {
                buf[out++] = (char)ch;
            } else {
                buf[out++] = (char)(0xC0 | (ch >> 6));
                buf[out++] = (char)(0x80 | (ch & 0x3F));
            }
        }
        *len = out;
        return true;
    }
    ErlNifBinary ext;
    if (!enif_term_to_binary(env, atom, &ext)) {
        return false;
    }
    bool ok = false;
    /* 131, then ATOM_UTF8_EXT (118, 2-byte length) or SMALL_ATOM_UTF8_EXT (119, 1 byte). */
    if (ext.size >= 3 && ext.data[0] == 131) {
        size_t at = 0, n2 = 0;
        if (ext.data[1] == 118 && ext.size >= 4) {
            n2 = ((size_t)ext.data[2] << 8) | ext.data[3];
            at = 4;
        } else if (ext.data[1] == 119) {
            n2 = ext.data[2];
            at = 3;
        }
        if (at > 0 && at + n2 <= ext.size && n2 <= 1020) {
            memcpy(buf, ext.data + at, n2);
            *len = n2;
            ok = true;
        }
    }
    enif_release_binary(&ext);
    return ok;
}

/* An integer beyond 64 bits: its magnitude from the external format (SMALL_BIG_EXT 110,
 * LARGE_BIG_EXT 111: sign byte, then little-endian digits). */
static bool enc_bignum(enc_ctx *c, ERL_NIF_TERM t) {
    ErlNifBinary ext;
    if (!enif_term_to_binary(c->env, t, &ext)) {
        return enc_refuse(c, "an integer could not be read", "");
    }
    size_t n = 0, at = 0;
    if (ext.size >= 4 && ext.data[0] == 131 && ext.data[1] == 110) {
        n = ext.data[2];
        at = 3;
    } else if (ext.size >= 7 && ext.data[0] == 131 && ext.data[1] == 111) {
        n = ((size_t)ext.data[2] << 24) | ((size_t)ext.data[3] << 16) |
            ((size_t)ext.data[4] << 8) | ext.data[5];
        at = 6;
    }
    bool ok;
    if (at == 0 || at + 1 + n > ext.size) {
        ok = enc_refuse(c, "an integer could not be read", "");
    } else if (n > EMF_NIF_MAX_INTEGER_BYTES) {
        char what[160];
        snprintf(what, sizeof what,
                 "an integer of %zu bytes is longer than encode/1 takes (%zu bytes, about "
                 "%zu digits, as decode/1)", n, EMF_NIF_MAX_INTEGER_BYTES,
                 EMF_NIF_MAX_INTEGER_DIGITS);
        ok = enc_refuse(c, what, "; encode_json/1 takes it as JSON text");
    } else {
        /* The engine's conversion to decimal text is quadratic (about n^2 / 30 divisions):
         * counted as such, a long magnitude sends the walk to a dirty scheduler. */
        c->work += n * n / 32;
        emf_value_event_t ev = {.kind = EMF_VALUE_BIG_INT_LE,
                                .int_value = ext.data[at] != 0,
                                .data = ext.data + at + 1,
                                .len = n};
        ok = enc_push(c, &ev);
    }
    enif_release_binary(&ext);
    return ok;
}

static const char *term_type_name(ErlNifEnv *env, ERL_NIF_TERM t) {
    switch (enif_term_type(env, t)) {
    case ERL_NIF_TERM_TYPE_TUPLE: return "a tuple";
    case ERL_NIF_TERM_TYPE_PID: return "a pid";
    case ERL_NIF_TERM_TYPE_REFERENCE: return "a reference";
    case ERL_NIF_TERM_TYPE_FUN: return "a fun";
    case ERL_NIF_TERM_TYPE_PORT: return "a port";
    case ERL_NIF_TERM_TYPE_BITSTRING: return "a bitstring that is not a binary";
    default: return "a term of this type";
    }
}

/* Emits a scalar, or opens a map or list (a new frame). */
static bool enc_value(enc_ctx *c, ERL_NIF_TERM t) {
    ErlNifEnv *env = c->env;
    ErlNifBinary bin;
    ErlNifSInt64 i;
    ErlNifUInt64 u;
    double d;
    size_t n;
    if (enif_inspect_binary(env, t, &bin)) {
        return enc_text(c, EMF_VALUE_STRING, bin.data, bin.size);
    }
    if (enif_is_map(env, t) || enif_is_list(env, t)) {
        bool is_map = enif_is_map(env, t);
        unsigned len = 0;
        if (is_map ? !enif_get_map_size(env, t, &n) : !enif_get_list_length(env, t, &len)) {
            return enc_refuse(c, "an improper list cannot be encoded", "; JSON arrays are proper lists");
        }
        if (!is_map) {
            n = len;
            c->work += n;
        }
        emf_value_event_t ev = {.kind = is_map ? EMF_VALUE_BEGIN_OBJECT : EMF_VALUE_BEGIN_ARRAY,
                                .count = n};
        if (!enc_push(c, &ev)) {
            return false;
        }
        if (c->depth >= EMF_VALUE_MAX_DEPTH) { /* the builder refuses first; kept as a guard */
            return enc_refuse(c, "nesting too deep", "");
        }
        enc_frame *f = &c->stack[c->depth];
        f->is_map = is_map;
        f->key = atom_undefined;
        f->index = 0;
        f->rest = t;
        if (is_map && !enif_map_iterator_create(env, t, &f->iter, ERL_NIF_MAP_ITERATOR_FIRST)) {
            return enc_refuse(c, "a map could not be iterated", "");
        }
        c->depth++;
        return true;
    }
    if (enif_is_atom(env, t)) {
        emf_value_event_t ev = {.kind = EMF_VALUE_NULL};
        if (enif_is_identical(t, atom_true) || enif_is_identical(t, atom_false)) {
            ev.kind = EMF_VALUE_BOOL;
            ev.int_value = enif_is_identical(t, atom_true);
            return enc_push(c, &ev);
        }
        if (enif_is_identical(t, atom_null)) {
            return enc_push(c, &ev);
        }
        char text[1024];
        size_t len = 0;
        if (!atom_utf8(env, t, text, &len)) {
            return enc_refuse(c, "an atom could not be read", "");
        }
        return enc_text(c, EMF_VALUE_STRING, text, len);
    }
    if (enif_get_int64(env, t, &i)) {
        emf_value_event_t ev = {.kind = EMF_VALUE_INT, .int_value = i};
        return enc_push(c, &ev);
    }
    if (enif_get_uint64(env, t, &u)) {
        emf_value_event_t ev = {.kind = EMF_VALUE_UINT, .uint_value = u};
        return enc_push(c, &ev);
    }
    if (enif_get_double(env, t, &d)) {
        emf_value_event_t ev = {.kind = EMF_VALUE_FLOAT, .float_value = d};
        return enc_push(c, &ev);
    }
    if (enif_term_type(env, t) == ERL_NIF_TERM_TYPE_INTEGER) {
        return enc_bignum(c, t);
    }
    char what[96];
    snprintf(what, sizeof what, "%s cannot be encoded", term_type_name(env, t));
    return enc_refuse(c, what,
                      "; JSON has maps, lists, binaries, numbers, atoms (true, false, null "
                      "or any other as a string) only");
}

/* A map key: an atom or a binary. */
static bool enc_key(enc_ctx *c, ERL_NIF_TERM k) {
    ErlNifBinary bin;
    if (enif_inspect_binary(c->env, k, &bin)) {
        return enc_text(c, EMF_VALUE_KEY, bin.data, bin.size);
    }
    if (enif_is_atom(c->env, k)) {
        char text[1024];
        size_t len = 0;
        if (!atom_utf8(c->env, k, text, &len)) {
            return enc_refuse(c, "an atom key could not be read", "");
        }
        return enc_text(c, EMF_VALUE_KEY, text, len);
    }
    char what[128];
    snprintf(what, sizeof what, "a map key must be an atom or a binary, not %s",
             enif_is_number(c->env, k) ? "a number" :
             enif_is_list(c->env, k) ? "a list" :
             enif_is_map(c->env, k) ? "a map" : term_type_name(c->env, k));
    /* At the map itself: the key is no step of a path. */
    return enc_refuse_at(c, c->depth - 1, what, "");
}

/* Walks the term with an explicit stack; false with c->error set on failure, or with
 * c->over_budget when the budget ran out (to be done again on a dirty scheduler). */
static bool enc_walk(enc_ctx *c, ERL_NIF_TERM term) {
    if (!enc_value(c, term)) {
        return false;
    }
    while (c->depth > 0) {
        if (c->budget != 0 && c->work > c->budget) {
            c->over_budget = true;
            return false;
        }
        enc_frame *f = &c->stack[c->depth - 1];
        ERL_NIF_TERM k, v;
        bool more;
        if (f->is_map) {
            more = enif_map_iterator_get_pair(c->env, &f->iter, &k, &v);
            if (more) {
                f->key = k;
                (void)enif_map_iterator_next(c->env, &f->iter);
                if (!enc_key(c, k)) {
                    return false;
                }
            }
        } else {
            more = enif_get_list_cell(c->env, f->rest, &v, &f->rest);
            if (more) {
                f->index++;
            }
        }
        if (more) {
            if (!enc_value(c, v)) {
                return false;
            }
            continue;
        }
        if (f->is_map) {
            enif_map_iterator_destroy(c->env, &f->iter);
        }
        c->depth--;
        emf_value_event_t end = {.kind = EMF_VALUE_END};
        if (!enc_push(c, &end)) {
            return false;
        }
    }
    return true;
}

static void enc_cleanup(enc_ctx *c) {
    while (c->depth > 0) {
        enc_frame *f = &c->stack[--c->depth];
        if (f->is_map) {
            enif_map_iterator_destroy(c->env, &f->iter);
        }
    }
    emf_status_t st = emf_value_builder_free(c->builder);
    if (st != EMF_OK) {
        report_impossible("emf_value_builder_free", st);
    }
}

/* serializer_encode_term(Term, Priority, CreatedAtUs, DeadlineUs, Checksum) -> {ok, Archive}:
 * the term is walked here and drives an emf_value_builder_t; a message map without a
 * `jsonrpc' key is taken as "2.0" (EMF_ARCHIVE_IMPLICIT_JSONRPC). Small terms are done on the
 * calling scheduler; once the work passes EMF_NIF_DIRTY_THRESHOLD the walk starts over on a
 * dirty CPU scheduler. */
static ERL_NIF_TERM serializer_encode_term_impl(ErlNifEnv *env, int argc,
                                                const ERL_NIF_TERM argv[]) {
    emf_encode_options_t opts;
    ErlNifUInt64 created, deadline;
    bool checksum = false;
    if (!get_priority(argv[1], &opts.priority)) {
        return argument_error(env, "priority: expected critical, high, normal or low");
    }
    if (!enif_get_uint64(env, argv[2], &created)) {
        return argument_error(env, "created_at_us: expected a non-negative 64-bit integer");
    }
    if (!enif_get_uint64(env, argv[3], &deadline)) {
        return argument_error(env, "deadline_us: expected a non-negative 64-bit integer");
    }
    if (!get_bool(argv[4], &checksum)) {
        return argument_error(env, "checksum: expected true or false");
    }
    (void)argc;
    opts.created_at_us = created;
    opts.deadline_us = deadline;
    enc_ctx *c = enif_alloc(sizeof *c);
    if (c == NULL) {
        return out_of_memory(env);
    }
    c->env = env;
    c->depth = 0;
    c->work = 0;
    c->budget = on_normal_scheduler() ? EMF_NIF_DIRTY_THRESHOLD : 0;
    c->over_budget = false;
    c->error = atom_undefined;
    emf_status_t st = emf_value_builder_new(EMF_BUILDER_UNIQUE_KEYS, &c->builder);
    if (st != EMF_OK) {
        ERL_NIF_TERM e = status_error(env, st);
        enif_free(c);
        return e;
    }
    ERL_NIF_TERM result;
    if (enc_walk(c, argv[0])) {
        emf_buf_t out = {0};
        uint32_t flags = EMF_ARCHIVE_IMPLICIT_JSONRPC | (checksum ? EMF_ARCHIVE_CHECKSUM : 0);
        st = emf_value_builder_finish(c->builder, &opts, flags, &out);
        result = ok_buf(env, st, &out);
    } else {
        result = c->error;
    }
    bool again = c->over_budget;
    enc_cleanup(c);
    enif_free(c);
    if (again) {
        return schedule_dirty_cpu(env, "serializer_encode_term", serializer_encode_term_impl,
                                  argc, argv);
    }
    return result;
}

static ERL_NIF_TERM nif_serializer_encode_term(ErlNifEnv *env, int argc,
                                               const ERL_NIF_TERM argv[]) {
    return serializer_encode_term_impl(env, argc, argv);
}

/* --- decode ------------------------------------------------------------------------------ */

/* Frames: the batch, an envelope, the error object, then values up to EMF_VALUE_MAX_DEPTH. */
#define EMF_NIF_DECODE_DEPTH (EMF_VALUE_MAX_DEPTH + 8)

typedef struct dec_frame {
    bool is_map;
    size_t n, pos;
    ERL_NIF_TERM *keys;   /* maps: n keys */
    ERL_NIF_TERM *values; /* n items or values */
} dec_frame;

typedef struct dec_ctx {
    ErlNifEnv *env;
    bool atom_keys;
    dec_frame stack[EMF_NIF_DECODE_DEPTH];
    size_t depth;
    ERL_NIF_TERM root;
    bool failed;
    ERL_NIF_TERM error;
    size_t work;   /* big-integer conversion work so far */
    size_t budget; /* 0: none; else stop and go dirty past it */
    bool over_budget;
} dec_ctx;

/* The path of the value at the top of the stack (`upto' frames counted). */
static void dec_path(dec_ctx *c, size_t upto, char *path) {
    size_t len = 0;
    path_put(path, &len, "$", 1);
    for (size_t i = 0; i < upto; i++) {
        dec_frame *f = &c->stack[i];
        if (f->is_map) {
            if (f->pos < f->n) {
                path_key(c->env, path, &len, f->keys[f->pos]);
            }
        } else {
            path_index(path, &len, f->pos);
        }
    }
}

static int dec_fail(dec_ctx *c, const char *what, size_t upto, const char *tail) {
    char path[EMF_NIF_PATH_MAX];
    dec_path(c, upto, path);
    c->error = path_error(c->env, what, path, tail);
    c->failed = true;
    return 1;
}

static int dec_add(dec_ctx *c, ERL_NIF_TERM t) {
    if (c->depth == 0) {
        c->root = t;
        return 0;
    }
    dec_frame *f = &c->stack[c->depth - 1];
    if (f->pos >= f->n) {
        return dec_fail(c, "the archive has more items than it announced", c->depth, "");
    }
    f->values[f->pos++] = t;
    return 0;
}

/* A key: a binary, or with `existing_atoms' the atom of that name when it exists (Latin-1
 * names only: OTP 25 looks atoms up by Latin-1 text). Never creates an atom. */
static ERL_NIF_TERM dec_key(dec_ctx *c, const uint8_t *s, size_t len) {
    if (c->atom_keys && len <= 255 * 2) {
        char latin1[256];
        size_t n = 0;
        bool ok = true;
        for (size_t i = 0; i < len && ok; i++) {
            if (n >= sizeof latin1) {
                ok = false;
            } else if (s[i] < 0x80) {
                latin1[n++] = (char)s[i];
            } else if ((s[i] == 0xC2 || s[i] == 0xC3) && i + 1 < len) {
                latin1[n++] = (char)(((s[i] & 0x03) << 6) | (s[i + 1] & 0x3F));
                i++;
            } else {
                ok = false;
            }
        }
        ERL_NIF_TERM atom;
        if (ok && enif_make_existing_atom_len(c->env, latin1, n, &atom, ERL_NIF_LATIN1)) {
            return atom;
        }
    }
    return make_binary_from(c->env, s, len);
}

/* The integer of decimal digits (an optional `-' first), through the external term format:
 * base 10^9 chunks into 32-bit limbs, then SMALL_BIG_EXT or LARGE_BIG_EXT. */
static bool dec_big_integer(ErlNifEnv *env, const uint8_t *s, size_t len, ERL_NIF_TERM *out) {
    bool negative = len > 0 && s[0] == '-';
    size_t at = negative ? 1 : 0;
    size_t digits = len - at;
    if (digits == 0) {
        return false;
    }
    size_t cap = digits / 9 + 2;
    uint32_t *limbs = enif_alloc(cap * sizeof *limbs);
    uint8_t *ext = enif_alloc(cap * 4 + 8);
    if (limbs == NULL || ext == NULL) {
        enif_free(limbs);
        enif_free(ext);
        return false;
    }
    size_t nl = 0;
    size_t chunk = digits % 9 == 0 ? 9 : digits % 9;
    while (at < len) {
        uint32_t val = 0, mul = 1;
        for (size_t k = 0; k < chunk; k++) {
            val = val * 10 + (uint32_t)(s[at + k] - '0');
            mul *= 10;
        }
        at += chunk;
        chunk = 9;
        uint64_t carry = val;
        for (size_t k = 0; k < nl; k++) {
            uint64_t cur = (uint64_t)limbs[k] * mul + carry;
            limbs[k] = (uint32_t)cur;
            carry = cur >> 32;
        }
        if (carry != 0) {
            limbs[nl++] = (uint32_t)carry;
        }
    }
    size_t nbytes = nl * 4;
    while (nbytes > 0 && ((limbs[(nbytes - 1) / 4] >> (8 * ((nbytes - 1) % 4))) & 0xFF) == 0) {
        nbytes--;
    }
    size_t p = 0;
    ext[p++] = 131;
    if (nbytes <= 255) {
        ext[p++] = 110;
        ext[p++] = (uint8_t)nbytes;
    } else {
        ext[p++] = 111;
        ext[p++] = (uint8_t)(nbytes >> 24);
        ext[p++] = (uint8_t)(nbytes >> 16);
        ext[p++] = (uint8_t)(nbytes >> 8);
        ext[p++] = (uint8_t)nbytes;
    }
    ext[p++] = negative ? 1 : 0;
    for (size_t b = 0; b < nbytes; b++) {
        ext[p++] = (uint8_t)(limbs[b / 4] >> (8 * (b % 4)));
    }
    bool ok = enif_binary_to_term(env, ext, p, out, 0) == p;
    enif_free(limbs);
    enif_free(ext);
    return ok;
}

static int dec_event(void *ctx, const emf_value_event_t *e) {
    dec_ctx *c = ctx;
    ErlNifEnv *env = c->env;
    switch (e->kind) {
    case EMF_VALUE_NULL: return dec_add(c, atom_null);
    case EMF_VALUE_BOOL: return dec_add(c, e->int_value != 0 ? atom_true : atom_false);
    case EMF_VALUE_INT: return dec_add(c, enif_make_int64(env, e->int_value));
    case EMF_VALUE_UINT: return dec_add(c, enif_make_uint64(env, e->uint_value));
    case EMF_VALUE_FLOAT:
        /* The engine never sends a non-finite one (enif_make_double would raise badarg). */
        if (!isfinite(e->float_value)) {
            return dec_fail(c, "a float that is not finite", c->depth, "");
        }
        return dec_add(c, enif_make_double(env, e->float_value));
    case EMF_VALUE_STRING: return dec_add(c, make_binary_from(env, e->data, e->len));
    case EMF_VALUE_NUMBER_TEXT: {
        if (memchr(e->data, '.', e->len) != NULL || memchr(e->data, 'e', e->len) != NULL ||
            memchr(e->data, 'E', e->len) != NULL) {
            char what[160];
            snprintf(what, sizeof what,
                     "the number %.*s%s is beyond the range of a double and has no Erlang form",
                     (int)(e->len > 40 ? 40 : e->len), (const char *)e->data,
                     e->len > 40 ? "..." : "");
            return dec_fail(c, what, c->depth,
                            "; decode_json/1 gives the message as JSON text, number included");
        }
        size_t digits = e->len - (e->len > 0 && e->data[0] == '-');
        if (digits > EMF_NIF_MAX_INTEGER_DIGITS) {
            char what[160];
            snprintf(what, sizeof what,
                     "an integer of %zu digits is longer than decode/1 makes terms of (%zu "
                     "digits)", digits, EMF_NIF_MAX_INTEGER_DIGITS);
            return dec_fail(c, what, c->depth,
                            "; decode_json/1 gives the message as JSON text, number included");
        }
        /* The conversion is quadratic (chunks^2 / 2 multiplications): on a normal scheduler,
         * the visit stops past the budget and starts over on a dirty one. */
        size_t chunks = digits / 9 + 1;
        c->work += chunks * chunks / 2;
        if (c->budget != 0 && c->work > c->budget) {
            c->over_budget = true;
            return 1;
        }
        ERL_NIF_TERM big;
        if (!dec_big_integer(env, e->data, e->len, &big)) {
            return dec_fail(c, "an integer could not be made (out of memory?)", c->depth, "");
        }
        return dec_add(c, big);
    }
    case EMF_VALUE_KEY: {
        dec_frame *f = c->depth > 0 ? &c->stack[c->depth - 1] : NULL;
        if (f == NULL || !f->is_map || f->pos >= f->n) {
            return dec_fail(c, "a key outside an object", c->depth, "");
        }
        f->keys[f->pos] = dec_key(c, e->data, e->len);
        return 0;
    }
    case EMF_VALUE_BEGIN_ARRAY:
    case EMF_VALUE_BEGIN_OBJECT: {
        if (c->depth >= EMF_NIF_DECODE_DEPTH) {
            return dec_fail(c, "nesting too deep", c->depth, "");
        }
        bool is_map = e->kind == EMF_VALUE_BEGIN_OBJECT;
        dec_frame *f = &c->stack[c->depth];
        f->is_map = is_map;
        f->n = e->count;
        f->pos = 0;
        f->keys = NULL;
        f->values = NULL;
        if (e->count > 0) {
            if (e->count > SIZE_MAX / sizeof(ERL_NIF_TERM) / 2) {
                return dec_fail(c, "too many items", c->depth, "");
            }
            f->values = enif_alloc(e->count * sizeof(ERL_NIF_TERM));
            f->keys = is_map ? enif_alloc(e->count * sizeof(ERL_NIF_TERM)) : NULL;
            if (f->values == NULL || (is_map && f->keys == NULL)) {
                enif_free(f->values);
                enif_free(f->keys);
                c->error = out_of_memory(env);
                c->failed = true;
                return 1;
            }
        }
        c->depth++;
        return 0;
    }
    case EMF_VALUE_END: {
        if (c->depth == 0) {
            return dec_fail(c, "an end without an array or object", 0, "");
        }
        dec_frame *f = &c->stack[c->depth - 1];
        if (f->pos != f->n) {
            return dec_fail(c, "the archive has fewer items than it announced", c->depth, "");
        }
        ERL_NIF_TERM t;
        if (f->is_map) {
            if (!enif_make_map_from_arrays(env, f->keys, f->values, f->n, &t)) {
                /* Name the repeated key when it is cheap to find. */
                char what[160] = "an object has two members with the same key";
                for (size_t i = 1; i < f->n && f->n <= 4096; i++) {
                    for (size_t j = 0; j < i; j++) {
                        if (enif_is_identical(f->keys[i], f->keys[j])) {
                            char key[EMF_NIF_PATH_MAX];
                            size_t klen = 0;
                            path_key(env, key, &klen, f->keys[i]);
                            snprintf(what, sizeof what,
                                     "an object has two members with the key \"%.64s\"", key + 1);
                            i = f->n;
                            break;
                        }
                    }
                }
                return dec_fail(c, what, c->depth - 1,
                                "; a map cannot hold both (decode_json/1 gives the message as "
                                "JSON text)");
            }
        } else {
            t = enif_make_list_from_array(env, f->values, (unsigned)f->n);
        }
        enif_free(f->keys);
        enif_free(f->values);
        c->depth--;
        return dec_add(c, t);
    }
    default: return dec_fail(c, "an unknown value event", c->depth, "");
    }
}

/* serializer_decode_term(Archive, binary | existing_atoms) -> {ok, Term} */
static ERL_NIF_TERM serializer_decode_term_impl(ErlNifEnv *env, int argc,
                                                const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary archive;
    if (!get_bytes(env, argv[0], &archive)) {
        return argument_error(env, EMF_NIF_ARCHIVE_ERROR);
    }
    bool atom_keys;
    if (enif_is_identical(argv[1], atom_binary)) {
        atom_keys = false;
    } else if (enif_is_identical(argv[1], atom_existing_atoms)) {
        atom_keys = true;
    } else {
        return argument_error(env, "keys: expected binary or existing_atoms");
    }
    dec_ctx *c = enif_alloc(sizeof *c);
    if (c == NULL) {
        return out_of_memory(env);
    }
    c->env = env;
    c->atom_keys = atom_keys;
    c->depth = 0;
    c->root = atom_undefined;
    c->failed = false;
    c->error = atom_undefined;
    c->work = 0;
    c->budget = on_normal_scheduler() ? EMF_NIF_DIRTY_THRESHOLD : 0;
    c->over_budget = false;
    const emf_value_visitor_t visitor = {.on_event = dec_event};
    emf_status_t st = emf_archive_visit(archive.data, archive.size, &visitor, c);
    ERL_NIF_TERM result;
    if (c->over_budget) {
        result = atom_undefined; /* done again on a dirty scheduler, below */
    } else if (st == EMF_OK && c->depth == 0) {
        result = make_ok(env, c->root);
    } else if (st == EMF_ERR_STOPPED && c->failed) {
        result = c->error;
    } else if (st != EMF_OK) {
        result = status_error(env, st);
    } else {
        result = shim_error(env, EMF_ERR_CORRUPT, "the archive's events did not nest");
    }
    while (c->depth > 0) {
        dec_frame *f = &c->stack[--c->depth];
        enif_free(f->keys);
        enif_free(f->values);
    }
    bool again = c->over_budget;
    enif_free(c);
    if (again) {
        return schedule_dirty_cpu(env, "serializer_decode_term", serializer_decode_term_impl,
                                  argc, argv);
    }
    return result;
}
NIF_BY_BYTES(serializer_decode_term, 0, EMF_NIF_DIRTY_THRESHOLD)

/* ------------------------------------------------------------------------------------------ */
/* Compressor                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* compress_if_needed(Data, Threshold) -> {ok, {compressed | raw, Bin}} */
static ERL_NIF_TERM compress_if_needed_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary data;
    size_t threshold;
    if (!get_bytes(env, argv[0], &data)) {
        return argument_error(env, EMF_NIF_DATA_ERROR);
    }
    if (!get_limit(env, argv[1], &threshold)) {
        return argument_error(env, "threshold: expected a non-negative 64-bit integer");
    }
    emf_buf_t out = {0};
    bool compressed = false;
    emf_status_t st = emf_compress_if_needed(data.data, data.size, threshold, &out, &compressed);
    if (st != EMF_OK) {
        return status_error(env, st);
    }
    ERL_NIF_TERM tag = compressed ? atom_compressed : atom_raw;
    return make_ok(env, enif_make_tuple2(env, tag, take_buf(env, &out)));
}
NIF_BY_BYTES(compress_if_needed, 0, EMF_NIF_COMPRESS_DIRTY_THRESHOLD)

/* decompress(Data, MaxLen) -> {ok, Bin} */
static ERL_NIF_TERM decompress_impl(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary data;
    size_t max_len;
    if (!get_bytes(env, argv[0], &data)) {
        return argument_error(env, EMF_NIF_DATA_ERROR);
    }
    if (!get_limit(env, argv[1], &max_len)) {
        return argument_error(env, "max_size: expected a non-negative 64-bit integer");
    }
    emf_buf_t out = {0};
    return ok_buf(env, emf_decompress(data.data, data.size, max_len, &out), &out);
}

static ERL_NIF_TERM nif_decompress(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    /* The work follows the input and the output, which is at most min(max_len, input * max
     * ratio). Saturating: the input cost of iodata is SIZE_MAX, and max_len may be too. */
    size_t in = bytes_cost(env, argv[0]);
    size_t max_len = 0;
    if (!get_limit(env, argv[1], &max_len)) {
        max_len = 0; /* the implementation reports the error */
    }
    size_t out = size_min(sat_mul(in, EMF_NIF_ZLIB_MAX_RATIO), max_len);
    return run_by_cost(env, "decompress", decompress_impl, sat_add(in, out),
                       EMF_NIF_DIRTY_THRESHOLD, argc, argv);
}

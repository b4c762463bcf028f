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

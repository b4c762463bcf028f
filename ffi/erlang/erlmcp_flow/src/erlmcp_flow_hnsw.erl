%% @doc The HNSW vector index of the original design (`M' 16, `ef_construction' 200,
%% `ef_search' 50, cosine distance) over the engine's `emf_hnsw_*': vectors stored as int8
%% codes with a per-vector scale, optionally with their originals for an exact re-rank,
%% searched with filters, saved to a file and mapped back read-only.
%%
%% ```
%% {ok, Index} = erlmcp_flow_hnsw:new(#{m => 16, ef_construction => 200}), % dim: 1st insert
%% ok = erlmcp_flow_hnsw:insert(Index, [{1, [1.0, 0.0, 0.0]}, {2, [0.0, 1.0, 0.0]}]),
%% ok = erlmcp_flow_hnsw:insert(Index, 3, <<0.0:32/float-native, 0.0:32/float-native,
%%                                          1.0:32/float-native>>),
%% {ok, 0} = erlmcp_flow_hnsw:insert(Index, [0.5, 0.5, 0.0]),   % an id the index picks
%% [{1, _}, {0, _}] = erlmcp_flow_hnsw:search(Index, [0.9, 0.1, 0.0], 2),
%% [{2, _}] = erlmcp_flow_hnsw:search(Index, [0.9, 0.1, 0.0], 2, #{filter => [2]}),
%% ok = erlmcp_flow_hnsw:save(Index, "/tmp/vectors.hnsw"),
%% {ok, Mapped} = erlmcp_flow_hnsw:open("/tmp/vectors.hnsw"),   % read-only, shared mapping
%% {error, {unsupported, _}} = erlmcp_flow_hnsw:insert(Mapped, 4, [1.0, 1.0, 1.0]),
%% {ok, Built} = erlmcp_flow_hnsw:build_index([[1.0, 0.0], [0.0, 1.0]], #{}), % ids 0, 1
%% [{1, _}] = erlmcp_flow_hnsw:search(Built, [0.1, 0.9], 1).
%% '''
%%
%% <h3>The original design's calls</h3>
%% <ul>
%% <li>`new(#{m => 16, ef_construction => 200})': `dim' may be left out (or 0): the first
%% insert fixes it to its vector's length (of concurrent first inserts exactly one does; the
%% others fit it or fail). Until then `info/1' says `dim => 0', a search answers `[]', a
%% `search_batch/3,4' of queries and `save/2' are refused.</li>
%% <li>`build_index(Vectors, Config) -> {ok, Index}': `new(Config)' and one batch insert
%% of `Vectors', a list of vectors (ids 0 to N - 1) or of `{Id, Vector}'.</li>
%% <li>`search(Index, Query, TopK) -> [{Id, Distance}]': the list bare, as the original
%% returns it, and `{error, {Status, Message}}' on failure; `search/4' (options) answers
%% the same way. `search_batch/3,4', which the original has not, keeps `{ok, [[Hit]]}'.</li>
%% <li>`insert(Index, Vector) -> {ok, Id}': a single vector with no id, under an id the
%% index picks (the smallest not in use from a counter that starts at 0 and only grows:
%% ids given with `insert/3' or in a batch are skipped, removed ones never reused; a
%% loaded index counts from 0 again). `insert(Index, [{Id, Vector}])' is a batch (ours):
%% the two are told apart by the list's elements (numbers or tuples; `[]' is an empty
%% batch).</li>
%% </ul>
%%
%% <h3>Vectors and ids</h3>
%% A vector is a list of numbers (integers or floats, within the float32 range) or a binary of
%% native-endian float32 values (`<<X:32/float-native, ...>>'), of the index's `dim' values;
%% NaN and infinite values (possible only in binaries) are refused. Ids are integers from 0 to
%% 2^64 - 1; an id is in the index at most once (`remove/2' it to replace its vector).
%% Distances are `1 - cos(a, b)' (`cosine'), `1 - a·b' (`dot') or `|a - b|²' (`l2sq'),
%% estimated from the int8 codes, or exact when re-ranked with the originals; a distance that
%% overflows float arithmetic (vectors of huge values) comes as `infinity', `neg_infinity' or
%% `nan'.
%%
%% <h3>Indexes</h3>
%% An index is a thread-safe handle: any number of processes insert, remove and search at
%% once. It is freed when garbage collected, or at once with `close/1'. `open/1' maps a saved
%% file read-only (other OS processes may map the same file; `save/2' replaces a file with an
%% atomic rename, so mappings of the old file stay intact): searches, `stats/1' and `info/1'
%% only, every change gives `{error, {unsupported, _}}'. `load/1' reads a file into an index
%% that can change. Removed vectors are never returned again; their memory is reclaimed by
%% `compact/1', which holds the other calls on the index off while it runs.
%%
%% <h3>Errors and scheduling</h3>
%% Bad arguments give `{error, {invalid_argument, Message}}' (never an exception): a vector of
%% the wrong dimension, NaN or infinite values, an id inserted already, unknown metrics or
%% options. A closed index gives `{error, {closed, _}}'; a missing file `{error, {io, _}}', a
%% damaged one `{error, {corrupt, _}}'. Batches (`insert/2', `search_batch/3,4') and
%% `compact/1' run on a dirty CPU scheduler, files (`save/2', `open/1', `load/1', `close/1')
%% on a dirty I/O scheduler. A single insert, search or removal runs on the calling scheduler
%% when the NIF estimates it under 0.5 ms from the index's parameters and size, else on a
%% dirty CPU scheduler (a filtered search on a large index visits every node), and so do
%% single inserts, removals and `stats/1' while a batch insert runs on the index; no call
%% waits for a compact on a normal scheduler.
-module(erlmcp_flow_hnsw).

-export([new/1, build_index/2, open/1, load/1, close/1, info/1,
         insert/2, insert/3, insert_batch/3, search/3, search/4, search_batch/3,
         search_batch/4,
         remove/2, compact/1, save/2, stats/1]).

-export_type([index/0, id/0, vector/0, options/0, search_options/0, batch_options/0, hit/0,
              info/0, stats/0]).

-type index() :: erlmcp_flow_nif:hnsw().
-type id() :: 0..16#FFFFFFFFFFFFFFFF.
-type vector() :: [number()] | binary().
%% A list of numbers or a binary of native-endian float32 values.
-type options() :: #{dim => 0..65536,
                     metric => erlmcp_flow_nif:metric(),
                     m => 2..128,
                     ef_construction => 1..1048576,
                     ef_search => 1..1048576,
                     originals => erlmcp_flow_nif:originals(),
                     seed => non_neg_integer()}.
%% `dim': values a vector (left out or 0: the first insert's); `metric': `cosine' (default), `dot' or `l2sq';
%% `m': neighbours a node on the upper levels, `2m' on level 0 (16); `ef_construction':
%% candidates kept while inserting (200); `ef_search': candidates kept while searching when a
%% search does not say (50); `originals': `none' (default: int8 codes only), `f16' or `f32'
%% (kept for `rerank'); `seed': of the level draws (the engine's default).
-type search_options() :: #{ef => 0..1048576,
                            rerank => boolean(),
                            filter => [id()],
                            threads => non_neg_integer()}.
%% `ef': candidates kept (0, the default: the index's `ef_search'; at least `K' are kept);
%% `rerank': order the candidates by their exact distance to the original vectors (`false';
%% only with `originals' kept); `filter': only these ids may be returned (ids up to
%% 268435455: the engine takes a bitset of ids); `threads' (`search_batch/4' only): threads
%% searching (0, the default: one per CPU).
-type batch_options() :: #{threads => non_neg_integer()}.
%% `threads': engine threads inserting (0, the default: one per CPU).
-type hit() :: {id(), erlmcp_flow_nif:distance()}.
-type info() :: #{dim := non_neg_integer(), metric := erlmcp_flow_nif:metric(),
                  m := pos_integer(), ef_construction := pos_integer(),
                  ef_search := pos_integer(), originals := erlmcp_flow_nif:originals(),
                  seed := non_neg_integer(), mapped := boolean()}.
-type stats() :: #{len := non_neg_integer(), memory_bytes := non_neg_integer()}.
%% `len' live vectors (inserted and not removed); `memory_bytes' held by the index (codes,
%% lists, originals, id map; for a mapped index, the file's size).
-type error() :: erlmcp_flow_nif:error().

-define(KEYS, [dim, metric, m, ef_construction, ef_search, originals, seed]).
-define(DEFAULTS, #{dim => 0, metric => cosine, m => 16, ef_construction => 200, ef_search => 50,
                    originals => none, seed => default}).
-define(SEARCH_KEYS, [ef, rerank, filter]).
-define(BATCH_SEARCH_KEYS, [ef, rerank, filter, threads]).
-define(MAX_EF, 1048576).
%% The largest id a filter may name: its bitset is (MAX_FILTER_ID + 1) / 8 bytes (32 MiB).
-define(MAX_FILTER_ID, 16#FFFFFFF).
-define(V, erlmcp_flow_vector).

%%--------------------------------------------------------------------------------------------
%% Indexes
%%--------------------------------------------------------------------------------------------

%% @doc A new, empty index (see `options()'; none is required: without `dim' the first
%% insert fixes the dimension).
-spec new(options()) -> {ok, index()} | error().
new(Opts) when is_map(Opts) ->
    case maps:keys(maps:without(?KEYS, Opts)) of
        [] ->
            #{dim := Dim, metric := Metric, m := M, ef_construction := EfC,
              ef_search := EfS, originals := Originals, seed := Seed} =
                maps:merge(?DEFAULTS, Opts),
            if
                not (is_integer(Dim) andalso Dim >= 0 andalso Dim =< 65536) ->
                    invalid("dim: expected an integer from 1 to 65536 (0: the first "
                            "insert's)");
                not (Metric =:= cosine orelse Metric =:= dot orelse Metric =:= l2sq) ->
                    invalid("metric: expected cosine, dot or l2sq");
                not (is_integer(M) andalso M >= 2 andalso M =< 128) ->
                    invalid("m: expected an integer from 2 to 128");
                not (is_integer(EfC) andalso EfC >= 1 andalso EfC =< ?MAX_EF) ->
                    invalid("ef_construction: expected an integer from 1 to 1048576");
                not (is_integer(EfS) andalso EfS >= 1 andalso EfS =< ?MAX_EF) ->
                    invalid("ef_search: expected an integer from 1 to 1048576");
                not (Originals =:= none orelse Originals =:= f16 orelse Originals =:= f32) ->
                    invalid("originals: expected none, f16 or f32");
                not (Seed =:= default orelse (is_integer(Seed) andalso Seed >= 0
                                              andalso Seed =< 16#FFFFFFFFFFFFFFFF)) ->
                    invalid("seed: expected a non-negative 64-bit integer");
                true ->
                    erlmcp_flow_nif:hnsw_new(Dim, Metric, M, EfC, EfS, Originals, Seed)
            end;
        Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, ?KEYS]))
    end;
new(_Opts) ->
    invalid("options: expected a map").

%% @doc A new index (`new(Config)') holding `Vectors', inserted in one batch (`insert/2'):
%% a list of vectors, given ids 0 to N - 1 in order, or of `{Id, Vector}'. Without `dim' in
%% `Config' the vectors give it. On an error the index is closed and the error returned.
-spec build_index([vector()] | [{id(), vector()}], options()) -> {ok, index()} | error().
build_index(Vectors, Config) when is_list(Vectors), is_map(Config) ->
    Batch = case Vectors of
                [{_, _} | _] -> Vectors;
                _ -> numbered(Vectors, 0, [])
            end,
    case Batch of
        {error, Text} ->
            invalid(Text);
        _ ->
            case new(Config) of
                {ok, Index} ->
                    case insert_batch(Index, Batch, #{}) of
                        ok -> {ok, Index};
                        {error, _} = Error -> _ = close(Index), Error
                    end;
                {error, _} = Error ->
                    Error
            end
    end;
build_index(_Vectors, Config) when is_map(Config) ->
    invalid("vectors: expected a list of vectors or of {Id, Vector}");
build_index(_Vectors, _Config) ->
    invalid("config: expected a map of options").

%% Vectors numbered 0, 1, ... as a batch; an element that is no vector fails here.
numbered([V | Rest], I, Acc) when is_list(V); is_binary(V) ->
    numbered(Rest, I + 1, [{I, V} | Acc]);
numbered([], _I, Acc) ->
    lists:reverse(Acc);
numbered([Other | _], I, _Acc) ->
    {error, io_lib:format("vector ~b: expected a list of numbers or a binary of float32 "
                          "values, got ~0P", [I, Other, 8])};
numbered(_Tail, _I, _Acc) ->
    {error, "vectors: expected a proper list"}.

%% @doc Maps the index file `Path' read-only: searches only (changes give
%% `{error, {unsupported, _}}'); the file is validated first (`{error, {corrupt, _}}'). The
%% file may be replaced by `save/2' (a rename) but must not be truncated or rewritten in place
%% while mapped: a search would touch pages that are gone (SIGBUS ends the VM).
-spec open(file:name_all()) -> {ok, index()} | error().
open(Path) ->
    with_path(Path, fun erlmcp_flow_nif:hnsw_open/1).

%% @doc Reads the index file `Path' into a new index that can change.
-spec load(file:name_all()) -> {ok, index()} | error().
load(Path) ->
    with_path(Path, fun erlmcp_flow_nif:hnsw_load/1).

%% @doc Writes the index to `Path' (a temporary file renamed over it).
-spec save(index(), file:name_all()) -> ok | error().
save(Index, Path) ->
    with_path(Path, fun(P) -> erlmcp_flow_nif:hnsw_save(Index, P) end).

%% @doc Frees the index now (once the calls using it have returned) rather than when garbage
%% collected; later calls get `{error, {closed, _}}'. Idempotent.
-spec close(index()) -> ok | error().
close(Index) ->
    erlmcp_flow_nif:hnsw_close(Index).

%% @doc The index's parameters, and whether it is a mapped file (`open/1').
-spec info(index()) -> {ok, info()} | error().
info(Index) ->
    erlmcp_flow_nif:hnsw_info(Index).

%% @doc Live vectors and bytes held.
-spec stats(index()) -> {ok, stats()} | error().
stats(Index) ->
    erlmcp_flow_nif:hnsw_stats(Index).

%%--------------------------------------------------------------------------------------------
%% Vectors
%%--------------------------------------------------------------------------------------------

%% @doc `insert(Index, Vector)' (a binary, or a non-empty list of numbers): inserts one vector
%% under an id the index picks and answers `{ok, Id}' (the original design's call; see the
%% module documentation). `insert(Index, Batch)' (`[]' or a list of `{Id, Vector}'):
%% `insert_batch(Index, Batch, #{})'.
-spec insert(index(), vector() | [{id(), vector()}]) -> ok | {ok, id()} | error().
insert(Index, Vector) when is_binary(Vector); is_list(Vector), is_number(hd(Vector)) ->
    case ?V:f32(Vector, "vector") of
        {ok, Bin} -> erlmcp_flow_nif:hnsw_insert_new(Index, Bin);
        {error, Text} -> invalid(Text)
    end;
insert(Index, Batch) ->
    insert_batch(Index, Batch, #{}).

%% @doc Inserts a batch of `{Id, Vector}' on a dirty CPU scheduler, on `threads' engine
%% threads (`Opts'; 0, the default: one per CPU). Everything is checked first (dimensions,
%% finite values, ids distinct and not in the index): on an error nothing is inserted.
-spec insert_batch(index(), [{id(), vector()}], batch_options()) -> ok | error().
insert_batch(Index, Batch, Opts) when is_list(Batch), is_map(Opts) ->
    case maps:keys(maps:without([threads], Opts)) of
        [] ->
            case maps:get(threads, Opts, 0) of
                Threads when is_integer(Threads), Threads >= 0, Threads =< 16#FFFFFFFF ->
                    case erlmcp_flow_nif:hnsw_info(Index) of
                        {ok, #{dim := Dim0}} ->
                            case batch(Batch, batch_dim(Dim0, Batch), 0, [], []) of
                                {ok, Ids, Vectors} ->
                                    erlmcp_flow_nif:hnsw_insert_batch(Index, Ids, Vectors,
                                                                      Threads);
                                {error, Text} ->
                                    invalid(Text)
                            end;
                        {error, _} = Error ->
                            Error
                    end;
                _ ->
                    invalid("threads: expected a non-negative 32-bit integer (0: one per CPU)")
            end;
        Unknown ->
            invalid(io_lib:format("unknown batch options ~0p (known: [threads])", [Unknown]))
    end;
insert_batch(_Index, Batch, _Opts) when not is_list(Batch) ->
    invalid("batch: expected a list of {Id, Vector}");
insert_batch(_Index, _Batch, _Opts) ->
    invalid("batch options: expected a map").

%% @doc Inserts `Vector' under `Id'.
-spec insert(index(), id(), vector()) -> ok | error().
insert(Index, Id, Vector) ->
    case ?V:id(Id, "id") of
        {ok, _} ->
            case ?V:f32(Vector, "vector") of
                {ok, Bin} -> erlmcp_flow_nif:hnsw_insert(Index, Id, Bin);
                {error, Text} -> invalid(Text)
            end;
        {error, Text} ->
            invalid(Text)
    end.

%% @doc The original design's `search(IndexRef, QueryVector, TopK) -> [Result]': the list
%% of hits bare.
%% @equiv search(Index, Query, K, #{})
-spec search(index(), vector(), non_neg_integer()) -> [hit()] | error().
search(Index, Query, K) ->
    search(Index, Query, K, #{}).

%% @doc The `K' ids nearest to `Query' with their distances, closest first (fewer when the
%% index or the filter holds fewer), as a bare list `[{Id, Distance}]' (as `search/3');
%% `{error, {Status, Message}}' on failure. `Opts': `ef', `rerank', `filter' (see
%% `search_options()').
-spec search(index(), vector(), non_neg_integer(), search_options()) -> [hit()] | error().
search(Index, Query, K, Opts) ->
    case search_args(K, Opts, ?SEARCH_KEYS) of
        {ok, Ef, Rerank, Filter, _Threads} ->
            case ?V:f32(Query, "query") of
                {ok, Q} ->
                    case erlmcp_flow_nif:hnsw_search(Index, Q, K, Ef, Rerank, Filter) of
                        {ok, Hits} -> Hits;
                        {error, _} = Error -> Error
                    end;
                {error, Text} ->
                    invalid(Text)
            end;
        {error, _} = Error ->
            Error
    end.

%% @equiv search_batch(Index, Queries, K, #{})
-spec search_batch(index(), [vector()], non_neg_integer()) -> {ok, [[hit()]]} | error().
search_batch(Index, Queries, K) ->
    search_batch(Index, Queries, K, #{}).

%% @doc `search/4' for each query, on `threads' threads of a dirty CPU scheduler: one list of
%% hits a query, in order, as `{ok, Lists}' (the original design has no batch search). An
%% index without a dimension yet (`new/1' without `dim', nothing inserted) refuses queries.
-spec search_batch(index(), [vector()], non_neg_integer(), search_options()) ->
          {ok, [[hit()]]} | error().
search_batch(Index, Queries, K, Opts) when is_list(Queries) ->
    case search_args(K, Opts, ?BATCH_SEARCH_KEYS) of
        {ok, Ef, Rerank, Filter, Threads} ->
            case erlmcp_flow_nif:hnsw_info(Index) of
                {ok, #{dim := 0}} when Queries =/= [] ->
                    invalid("queries: the index has no dimension yet (made without dim, "
                            "nothing inserted)");
                {ok, #{dim := Dim}} ->
                    case queries(Queries, Dim, 0, []) of
                        {ok, Qs} ->
                            erlmcp_flow_nif:hnsw_search_batch(Index, Qs, K, Ef, Rerank,
                                                              Filter, Threads);
                        {error, Text} ->
                            invalid(Text)
                    end;
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end;
search_batch(_Index, _Queries, _K, _Opts) ->
    invalid("queries: expected a list of vectors").

%% @doc Removes `Id': it is never returned again. `{error, {not_found, _}}' when absent.
-spec remove(index(), id()) -> ok | error().
remove(Index, Id) ->
    case ?V:id(Id, "id") of
        {ok, _} -> erlmcp_flow_nif:hnsw_remove(Index, Id);
        {error, Text} -> invalid(Text)
    end.

%% @doc Reclaims the memory of removed vectors (dirty CPU scheduler); the other calls on the
%% index wait meanwhile (on dirty schedulers).
-spec compact(index()) -> ok | error().
compact(Index) ->
    erlmcp_flow_nif:hnsw_compact(Index).

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

%% The dimension a batch's vectors are checked against: the index's, or while it has none
%% (0), the first vector's (the engine fixes it at the insert).
batch_dim(0, [{_, V} | _]) when is_binary(V) -> byte_size(V) div 4;
batch_dim(0, [{_, V} | _]) when is_list(V) -> length_or_zero(V);
batch_dim(Dim, _Batch) -> Dim.

length_or_zero(L) ->
    try length(L) catch error:badarg -> 0 end.

%% The ids and vectors of a batch as the NIF's binaries, each vector checked against `Dim'.
batch([{Id, Vector} | Rest], Dim, I, Ids, Vectors) ->
    What = io_lib:format("batch element ~b (id ~0P)", [I, Id, 8]),
    case ?V:id(Id, What) of
        {ok, _} ->
            case vector(Vector, Dim, What) of
                {ok, Bin} ->
                    batch(Rest, Dim, I + 1, [<<Id:64/unsigned-native>> | Ids], [Bin | Vectors]);
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end;
batch([], _Dim, _I, Ids, Vectors) ->
    {ok, list_to_binary(lists:reverse(Ids)), list_to_binary(lists:reverse(Vectors))};
batch([Other | _], _Dim, I, _Ids, _Vectors) ->
    {error, io_lib:format("batch element ~b: expected {Id, Vector}, got ~0P", [I, Other, 8])};
batch(_Tail, _Dim, _I, _Ids, _Vectors) ->
    {error, "batch: expected a proper list of {Id, Vector}"}.

queries([Query | Rest], Dim, I, Acc) ->
    case vector(Query, Dim, io_lib:format("query ~b", [I])) of
        {ok, Bin} -> queries(Rest, Dim, I + 1, [Bin | Acc]);
        {error, _} = Error -> Error
    end;
queries([], _Dim, _I, Acc) ->
    {ok, list_to_binary(lists:reverse(Acc))};
queries(_Tail, _Dim, _I, _Acc) ->
    {error, "queries: expected a proper list of vectors"}.

%% A float32 vector of exactly `Dim' values.
vector(V, Dim, What) ->
    case ?V:f32(V, What) of
        {ok, Bin} when byte_size(Bin) =:= Dim * 4 ->
            {ok, Bin};
        {ok, Bin} ->
            {error, io_lib:format("~ts: the vector has ~b values, the index ~b",
                                  [What, byte_size(Bin) div 4, Dim])};
        {error, _} = Error ->
            Error
    end.

search_args(K, Opts, Keys) when is_map(Opts) ->
    case maps:keys(maps:without(Keys, Opts)) of
        [] ->
            Ef = maps:get(ef, Opts, 0),
            Rerank = maps:get(rerank, Opts, false),
            Threads = maps:get(threads, Opts, 0),
            if
                not (is_integer(K) andalso K >= 0 andalso K =< ?MAX_EF) ->
                    invalid("k: expected an integer from 0 to 1048576");
                not (is_integer(Ef) andalso Ef >= 0 andalso Ef =< ?MAX_EF) ->
                    invalid("ef: expected an integer from 0 (the index's ef_search) to "
                            "1048576");
                not is_boolean(Rerank) ->
                    invalid("rerank: expected true or false");
                not (is_integer(Threads) andalso Threads >= 0
                     andalso Threads =< 16#FFFFFFFF) ->
                    invalid("threads: expected a non-negative 32-bit integer (0: one per "
                            "CPU)");
                true ->
                    case filter(maps:get(filter, Opts, undefined)) of
                        {ok, Filter} -> {ok, Ef, Rerank, Filter, Threads};
                        {error, Text} -> invalid(Text)
                    end
            end;
        Unknown ->
            invalid(io_lib:format("unknown search options ~0p (known: ~0p)", [Unknown, Keys]))
    end;
search_args(_K, _Opts, _Keys) ->
    invalid("search options: expected a map").

%% A list of ids as the engine's bitset: native-endian uint64 words, id I being bit I rem 64
%% of word I div 64 (at least one word: an empty list admits no id).
filter(undefined) ->
    {ok, undefined};
filter(Ids) when is_list(Ids) ->
    case filter_ids(Ids) of
        ok ->
            case lists:usort(Ids) of
                [] -> {ok, <<0:64>>};
                Sorted -> {ok, iolist_to_binary(words(Sorted, 0, []))}
            end;
        {error, _} = Error ->
            Error
    end;
filter(Other) ->
    {error, io_lib:format("filter: expected a list of ids, got ~0P", [Other, 8])}.

filter_ids([Id | Rest]) when is_integer(Id), Id >= 0, Id =< ?MAX_FILTER_ID ->
    filter_ids(Rest);
filter_ids([Id | _]) when is_integer(Id), Id > ?MAX_FILTER_ID, Id =< 16#FFFFFFFFFFFFFFFF ->
    {error, io_lib:format("filter: id ~b is above 268435455: the engine's filter is a bitset "
                          "indexed by id, limited here to 32 MiB", [Id])};
filter_ids([Id | _]) ->
    {error, io_lib:format("filter: ~0P is not an id (an integer from 0 to "
                          "18446744073709551615)", [Id, 8])};
filter_ids([]) ->
    ok;
filter_ids(_Tail) ->
    {error, "filter: expected a proper list of ids"}.

%% The words from word `Next' on, for sorted, distinct ids (zero words filling the gaps).
words([], _Next, Acc) ->
    lists:reverse(Acc);
words([Id | _] = Ids, Next, Acc) ->
    W = Id bsr 6,
    {Word, Rest} = word(Ids, W, 0),
    Gap = case W - Next of 0 -> Acc; N -> [<<0:(N * 64)>> | Acc] end,
    words(Rest, W + 1, [<<Word:64/unsigned-native>> | Gap]).

word([Id | Rest], W, Word) when Id bsr 6 =:= W ->
    word(Rest, W, Word bor (1 bsl (Id band 63)));
word(Rest, _W, Word) ->
    {Word, Rest}.

with_path(Path, Fun) ->
    case path(Path) of
        {ok, P} -> Fun(P);
        error -> invalid("path: expected a file name (a string, an atom or a binary)")
    end.

path(Path) when is_binary(Path) ->
    {ok, Path};
path(Path) when is_list(Path); is_atom(Path) ->
    try unicode:characters_to_binary(filename:flatten(Path)) of
        Bin when is_binary(Bin) -> {ok, Bin};
        _ -> error
    catch
        error:_ -> error
    end;
path(_Path) ->
    error.

-spec invalid(iodata()) -> error().
invalid(Text) ->
    ?V:invalid(Text).

%% @doc The LRU cache of the original design (capacity 10000, TTL 5000 ms) over the engine's
%% `emf_cache_*': a sharded least-recently-used cache whose entries expire a fixed time after
%% they were put, with a background thread sweeping the expired ones.
%%
%% ```
%% {ok, _} = erlmcp_flow_lru_cache:start_link(),            % the node's default cache
%% ok = erlmcp_flow_lru_cache:put({tool, <<"search">>}, #{schema => Schema}),
%% {ok, #{schema := Schema}} = erlmcp_flow_lru_cache:get({tool, <<"search">>}),
%% miss = erlmcp_flow_lru_cache:get(unknown),
%% {ok, #{hits := 1, misses := 1}} = erlmcp_flow_lru_cache:stats(),
%% ok = erlmcp_flow_lru_cache:stop().
%% '''
%%
%% <h3>Keys, values, hits and misses</h3>
%% Keys and values are any terms, stored as their external term format: the key as
%% `term_to_binary(Key, [deterministic])', so that equal keys (`=:=') find the same entry, a
%% value as `term_to_binary(Value)' (a copy, like an ETS table's). `get' answers
%% `{ok, Value}' for a live entry (and makes it the most recently used) and `miss' for an
%% absent or expired one; `put' replaces any value and restarts the entry's TTL. These are
%% the original design's `get(Key) -> {ok, Value} | miss' and `put(Key, Value) -> ok' as
%% written (on the default cache; `get/2' and `put/3' take a cache first), with
%% `{error, {closed, _}}' when no default cache runs.
%%
%% <h3>Eviction and expiry</h3>
%% The key space is split over shards (by default as many as the engine finds useful for the
%% capacity and the machine; `shards => 1' gives one exact LRU). A full shard evicts its least
%% recently used entry (`evictions'), so with several shards an entry may be evicted while the
%% cache as a whole holds fewer than `capacity' entries. The capacity in force is rounded up
%% to whole shards (`stats/0,1' reports it). An entry older than `ttl' ms is a miss and is
%% removed when read (`expirations'); the sweeper thread removes the others every
%% `sweep_interval' ms, and `sweep/0,1' does so at once. TTLs are honoured to within a few
%% milliseconds (the engine reads a coarse monotonic clock).
%%
%% <h3>Caches</h3>
%% The functions without a cache argument use the node's default cache, started with
%% `start_link/0,1' (a gen_server registered as `erlmcp_flow_lru_cache', to put under a
%% supervisor). The server only owns the cache: it publishes the handle with
%% `persistent_term' and every call goes straight to the engine from the calling process (the
%% engine's cache is thread-safe). When the server stops (`stop/0', or a supervisor's
%% shutdown: it traps exits), the default cache is unpublished and its sweeper stopped; the
%% next server starts with an empty cache. A server killed outright (`exit(Pid, kill)') leaves
%% its cache published and in use: the next server started (its supervisor's restart) takes
%% it over, entries, options and sweeper included. When none runs, the functions return
%% `{error, {closed, _}}'. `new/0,1' makes a cache of your own: a thread-safe handle
%% for the functions taking a cache, freed (its sweeper stopped) when garbage collected.
%%
%% <h3>Errors and scheduling</h3>
%% Bad options give `{error, {invalid_argument, Message}}' (never an exception). Keys and
%% values of 64 KiB and more (encoded) are handled on a dirty CPU scheduler. A value above
%% 4 KiB is looked up twice by `get' (once to learn its size), so it counts two hits.
-module(erlmcp_flow_lru_cache).
-behaviour(gen_server).

-compile({no_auto_import, [get/1, put/2]}).

-export([start_link/0, start_link/1, start/0, start/1, stop/0,
         new/0, new/1, cache/0,
         get/1, get/2, put/2, put/3, remove/1, remove/2, sweep/0, sweep/1, stats/0, stats/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([cache/0, options/0, stats/0]).

-type cache() :: erlmcp_flow_nif:cache().
-type options() :: #{capacity => pos_integer(),
                     ttl => pos_integer() | infinity,
                     shards => non_neg_integer(),
                     sweep_interval => non_neg_integer()}.
%% `capacity': entries held at most (10000; up to 16777216: the engine allocates the whole
%% capacity up front); `ttl': ms an entry stays valid after it was put (5000; `infinity':
%% forever); `shards': 0 lets the engine choose (default), else at most 1024, rounded up to a
%% power of two; `sweep_interval': ms between two sweeps of the background thread (1000; 0: no
%% sweeper; there is none either when `ttl' is `infinity').
-type stats() :: #{len := non_neg_integer(),
                   capacity := non_neg_integer(),
                   hits := non_neg_integer(),
                   misses := non_neg_integer(),
                   evictions := non_neg_integer(),
                   expirations := non_neg_integer()}.
%% `len' entries held now (expired ones not yet removed included), the `capacity' in force,
%% gets that were `hits' and `misses' (an expired entry is a miss), entries evicted to make
%% room (`evictions') and removed because their TTL passed (`expirations').
-type error() :: erlmcp_flow_nif:error().

-define(SERVER, ?MODULE).
-define(KEY, {?MODULE, cache}).
-define(KEYS, [capacity, ttl, shards, sweep_interval]).
-define(DEFAULTS, #{capacity => 10000, ttl => 5000, shards => 0, sweep_interval => 1000}).
-define(MAX_CAPACITY, 16#1000000).
-define(MAX_SHARDS, 1024).

%%--------------------------------------------------------------------------------------------
%% The default cache
%%--------------------------------------------------------------------------------------------

%% @equiv start_link(#{})
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    start_link(#{}).

%% @doc Starts the default cache's server, linked to the caller, registered as
%% `erlmcp_flow_lru_cache', with a new cache made with `Opts' (see `new/1'), unless a server
%% killed earlier left its cache published: that one is taken over.
-spec start_link(options()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    start(Opts, start_link).

%% @equiv start(#{})
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    start(#{}).

%% @doc As `start_link/1', without a link.
-spec start(options()) -> {ok, pid()} | {error, term()}.
start(Opts) ->
    start(Opts, start).

%% @doc Stops the default cache's server: the cache is unpublished (later calls get
%% `{error, {closed, _}}') and its sweeper stopped.
-spec stop() -> ok | error().
stop() ->
    try
        gen_server:stop(?SERVER)
    catch
        exit:noproc -> not_running()
    end.

%% @doc The default cache's handle, for the functions taking a cache.
-spec cache() -> {ok, cache()} | error().
cache() ->
    with_default(fun(Cache) -> {ok, Cache} end).

%% @doc The value of `Key' in the default cache: `{ok, Value}' or `miss'.
-spec get(term()) -> {ok, term()} | miss | error().
get(Key) ->
    with_default(fun(Cache) -> get(Cache, Key) end).

%% @doc Stores `Value' under `Key' in the default cache.
-spec put(term(), term()) -> ok | error().
put(Key, Value) ->
    with_default(fun(Cache) -> put(Cache, Key, Value) end).

%% @doc Removes `Key' from the default cache: `ok', or `not_found' when it was absent.
-spec remove(term()) -> ok | not_found | error().
remove(Key) ->
    with_default(fun(Cache) -> remove(Cache, Key) end).

%% @doc Removes the default cache's expired entries now: `{ok, Removed}'.
-spec sweep() -> {ok, non_neg_integer()} | error().
sweep() ->
    with_default(fun sweep/1).

%% @doc The default cache's counters.
-spec stats() -> {ok, stats()} | error().
stats() ->
    with_default(fun stats/1).

%%--------------------------------------------------------------------------------------------
%% Caches of your own
%%--------------------------------------------------------------------------------------------

%% @equiv new(#{})
-spec new() -> {ok, cache()} | error().
new() ->
    new(#{}).

%% @doc A new cache with its sweeper thread started: a thread-safe handle usable from any
%% process, freed (and its sweeper stopped) when garbage collected.
-spec new(options()) -> {ok, cache()} | error().
new(Opts) when is_map(Opts) ->
    case maps:keys(maps:without(?KEYS, Opts)) of
        [] ->
            #{capacity := Capacity, ttl := Ttl, shards := Shards, sweep_interval := Every} =
                maps:merge(?DEFAULTS, Opts),
            if
                not (is_integer(Capacity) andalso Capacity > 0
                     andalso Capacity =< ?MAX_CAPACITY) ->
                    invalid("capacity: expected an integer from 1 to 16777216");
                not (Ttl =:= infinity orelse (is_integer(Ttl) andalso Ttl > 0
                                              andalso Ttl < 16#FFFFFFFFFFFFFFFF)) ->
                    invalid("ttl: expected a positive integer (ms) or infinity");
                not (is_integer(Shards) andalso Shards >= 0 andalso Shards =< ?MAX_SHARDS) ->
                    invalid("shards: expected an integer from 0 (automatic) to 1024");
                not (is_integer(Every) andalso Every >= 0 andalso Every =< 16#FFFFFFFF) ->
                    invalid("sweep_interval: expected a non-negative 32-bit integer (ms)");
                true ->
                    TtlMs = case Ttl of infinity -> 0; _ -> Ttl end,
                    case erlmcp_flow_nif:cache_new(Capacity, TtlMs, Shards) of
                        {ok, Cache} when Every > 0, Ttl =/= infinity ->
                            case erlmcp_flow_nif:cache_set_sweeper(Cache, Every) of
                                ok -> {ok, Cache};
                                {error, _} = Error -> Error
                            end;
                        Result ->
                            Result
                    end
            end;
        Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, ?KEYS]))
    end;
new(_Opts) ->
    invalid("options: expected a map").

%% @doc The value of `Key': `{ok, Value}' (the entry becomes the most recently used) or
%% `miss' (absent or expired).
-spec get(cache(), term()) -> {ok, term()} | miss | error().
get(Cache, Key) ->
    case erlmcp_flow_nif:cache_get(Cache, key(Key)) of
        {ok, Bin} -> {ok, binary_to_term(Bin)};
        Other -> Other
    end.

%% @doc Stores `Value' under `Key', replacing any value and restarting the entry's TTL; a full
%% shard evicts its least recently used entry.
-spec put(cache(), term(), term()) -> ok | error().
put(Cache, Key, Value) ->
    erlmcp_flow_nif:cache_put(Cache, key(Key), term_to_binary(Value)).

%% @doc Removes `Key': `ok', or `not_found' when it was absent (an expired entry not yet swept
%% is removed: `ok').
-spec remove(cache(), term()) -> ok | not_found | error().
remove(Cache, Key) ->
    erlmcp_flow_nif:cache_remove(Cache, key(Key)).

%% @doc Removes every expired entry now: `{ok, Removed}'.
-spec sweep(cache()) -> {ok, non_neg_integer()} | error().
sweep(Cache) ->
    erlmcp_flow_nif:cache_sweep(Cache).

%% @doc `Cache''s counters.
-spec stats(cache()) -> {ok, stats()} | error().
stats(Cache) ->
    erlmcp_flow_nif:cache_stats(Cache).

%%--------------------------------------------------------------------------------------------
%% gen_server
%%--------------------------------------------------------------------------------------------

%% @private
init(New) ->
    process_flag(trap_exit, true), % terminate/2 unpublishes the cache on shutdown
    Cache = case persistent_term:get(?KEY, undefined) of
                undefined ->
                    New;
                Old ->
                    %% Left by a server that was killed: take it over with its entries (and
                    %% its sweeper); the new one was never used.
                    case erlmcp_flow_nif:cache_stats(Old) of
                        {ok, #{len := Len}} ->
                            logger:notice("~p ~p: took over the default cache of a server that "
                                          "was killed (~b entries)", [?MODULE, self(), Len]),
                            _ = erlmcp_flow_nif:cache_set_sweeper(New, 0),
                            Old;
                        {error, _} ->
                            New % made by an earlier load of the NIF library
                    end
            end,
    persistent_term:put(?KEY, Cache),
    {ok, Cache}.

%% @private
handle_call(_Request, _From, S) ->
    {reply, invalid("unknown request"), S}.

%% @private
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
handle_info(_Info, S) ->
    %% Exit signals of linked processes other than the parent.
    {noreply, S}.

%% @private
terminate(_Reason, Cache) ->
    case persistent_term:get(?KEY, undefined) of
        Cache -> persistent_term:erase(?KEY);
        _ -> ok
    end,
    %% Processes still holding the handle keep a working cache (expired entries are misses);
    %% the memory goes with the last of them.
    _ = erlmcp_flow_nif:cache_set_sweeper(Cache, 0),
    ok.

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

start(Opts, How) ->
    %% The cache is made here, so that a bad option is an error of this call rather than the
    %% crash of a linked server; the server owns it from now on.
    case new(Opts) of
        {ok, Cache} -> gen_server:How({local, ?SERVER}, ?MODULE, Cache, []);
        {error, _} = Error -> Error
    end.

with_default(Fun) ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> not_running();
        Cache -> Fun(Cache)
    end.

not_running() ->
    {error, {closed, <<"erlmcp_flow_lru_cache: the default cache is not running "
                       "(erlmcp_flow_lru_cache:start_link/0,1)">>}}.

%% Equal keys must give equal bytes: map keys are encoded in a fixed order.
key(Key) ->
    term_to_binary(Key, [deterministic]).

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

%% EUnit tests of erlmcp_flow_lru_cache: hits and misses, term keys, LRU eviction, values of
%% every size (stack buffer, heap buffer, dirty scheduler), TTL expiry, the sweeper thread and
%% sweep/0,1, counters, bad arguments, the default cache's server, and concurrent use.
%%
%% No assertion depends on timing: expiry is awaited by polling a condition with a deadline,
%% and the one assertion that a fresh entry is still live is only made when the put and the
%% get were measured to be well inside its TTL.
-module(erlmcp_flow_lru_cache_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-behaviour(supervisor).
-export([init/1]).

-define(C, erlmcp_flow_lru_cache).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

new(Opts) ->
    {ok, Cache} = ?C:new(Opts),
    Cache.

stats(Cache) ->
    {ok, Stats} = ?C:stats(Cache),
    Stats.

stat(Cache, Key) ->
    maps:get(Key, stats(Cache)).

wait_until(Pred, Ms) when Ms =< 0 ->
    Pred();
wait_until(Pred, Ms) ->
    case Pred() of
        true -> true;
        false -> timer:sleep(2), wait_until(Pred, Ms - 2)
    end.

now_ms() ->
    erlang:monotonic_time(millisecond).

with_no_default(Fun) ->
    cleanup_default(),
    try Fun() after cleanup_default() end.

cleanup_default() ->
    case whereis(?C) of
        undefined -> ok;
        Pid ->
            unlink(Pid),
            Mon = monitor(process, Pid),
            exit(Pid, kill),
            receive {'DOWN', Mon, process, Pid, _} -> ok end
    end,
    persistent_term:erase({?C, cache}),
    ok.

%%--------------------------------------------------------------------------------------------
%% Hits and misses
%%--------------------------------------------------------------------------------------------

hit_and_miss_test() ->
    Cache = new(#{}),
    ?assertEqual(miss, ?C:get(Cache, k)),
    ok = ?C:put(Cache, k, {value, 1}),
    ?assertEqual({ok, {value, 1}}, ?C:get(Cache, k)),
    ?assertEqual(miss, ?C:get(Cache, other)),
    ok = ?C:put(Cache, k, {value, 2}),                % replaces
    ?assertEqual({ok, {value, 2}}, ?C:get(Cache, k)),
    ?assertMatch(#{len := 1, capacity := 10000, hits := 2, misses := 2, evictions := 0,
                   expirations := 0}, stats(Cache)).

%% Keys are terms compared with =:=: a map is the same key however it was built, 1 and 1.0
%% are different keys.
term_keys_test() ->
    Cache = new(#{}),
    Big = maps:from_list([{I, I * I} || I <- lists:seq(1, 100)]),   % > 32 keys: a hash map
    Built = lists:foldl(fun(I, M) -> M#{I => I * I} end, #{}, lists:seq(100, 1, -1)),
    ?assertEqual(Big, Built),
    ok = ?C:put(Cache, Big, big_map),
    ?assertEqual({ok, big_map}, ?C:get(Cache, Built)),
    ok = ?C:put(Cache, #{a => 1, b => 2}, small_map),
    ?assertEqual({ok, small_map}, ?C:get(Cache, #{b => 2, a => 1})),
    ok = ?C:put(Cache, 1, integer),
    ok = ?C:put(Cache, 1.0, float),
    ?assertEqual({ok, integer}, ?C:get(Cache, 1)),
    ?assertEqual({ok, float}, ?C:get(Cache, 1.0)),
    ok = ?C:put(Cache, {self(), <<"bin">>, "str"}, tuple),
    ?assertEqual({ok, tuple}, ?C:get(Cache, {self(), <<"bin">>, "str"})),
    ?assertEqual(miss, ?C:get(Cache, {self(), <<"bin">>, <<"str">>})).

remove_test() ->
    Cache = new(#{}),
    ok = ?C:put(Cache, k, v),
    ?assertEqual(ok, ?C:remove(Cache, k)),
    ?assertEqual(miss, ?C:get(Cache, k)),
    ?assertEqual(not_found, ?C:remove(Cache, k)),
    ?assertEqual(0, stat(Cache, len)).

%%--------------------------------------------------------------------------------------------
%% Eviction
%%--------------------------------------------------------------------------------------------

%% One shard: an exact LRU. A get makes an entry the most recently used.
lru_eviction_test() ->
    Cache = new(#{capacity => 3, shards => 1, ttl => infinity}),
    [ok = ?C:put(Cache, K, K) || K <- [a, b, c]],
    ?assertEqual({ok, a}, ?C:get(Cache, a)),          % a is now the most recent: b is the LRU
    ok = ?C:put(Cache, d, d),
    ?assertEqual(miss, ?C:get(Cache, b)),
    ?assertEqual([{ok, a}, {ok, c}, {ok, d}], [?C:get(Cache, K) || K <- [a, c, d]]),
    %% Order of use now: a, c, d (d the most recent). A put of a new key evicts a.
    ok = ?C:put(Cache, e, e),
    ?assertEqual(miss, ?C:get(Cache, a)),
    %% Replacing an entry makes it the most recent too: c survives, d goes.
    ok = ?C:put(Cache, c, c2),
    ok = ?C:put(Cache, f, f),
    ?assertEqual([miss, {ok, c2}, {ok, e}, {ok, f}], [?C:get(Cache, K) || K <- [d, c, e, f]]),
    ?assertMatch(#{len := 3, capacity := 3, evictions := 3}, stats(Cache)).

%% Several shards: never more than the capacity in force, and evictions counted.
sharded_capacity_test() ->
    Cache = new(#{capacity => 64, shards => 4, ttl => infinity}),
    [ok = ?C:put(Cache, I, I) || I <- lists:seq(1, 1000)],
    #{len := Len, capacity := 64, evictions := Evictions} = stats(Cache),
    ?assert(Len =< 64),
    ?assertEqual(1000, Len + Evictions),
    %% The most recent put is always kept.
    ?assertEqual({ok, 1000}, ?C:get(Cache, 1000)).

%%--------------------------------------------------------------------------------------------
%% Values of every size
%%--------------------------------------------------------------------------------------------

%% Values below, at and above the 4 KiB stack buffer and the 64 KiB dirty threshold.
large_values_test() ->
    Cache = new(#{ttl => infinity}),
    %% term_to_binary adds 6 bytes to a binary: these hit the buffer sizes exactly.
    Sizes = [0, 1, 4090, 4091, 4096, 10000, 65530, 65531, 65536, 1 bsl 20, 8 bsl 20],
    Values = [{S, binary:copy(<<(S rem 256)>>, S)} || S <- Sizes],
    [ok = ?C:put(Cache, {v, S}, V) || {S, V} <- Values],
    [?assertEqual({ok, V}, ?C:get(Cache, {v, S})) || {S, V} <- Values],
    %% Large keys too (a dirty scheduler for both).
    BigKey = binary:copy(<<"k">>, 1 bsl 20),
    ok = ?C:put(Cache, BigKey, small),
    ?assertEqual({ok, small}, ?C:get(Cache, BigKey)),
    ?assertEqual(miss, ?C:get(Cache, <<BigKey/binary, "x">>)),
    ?assertEqual(ok, ?C:remove(Cache, BigKey)).

%% A value replaced by a larger one between the two lookups of a get is read at its new size:
%% a writer flips a key between a 5 KiB and a 200 KiB value while readers read it.
value_resized_during_get_test_() ->
    {timeout, 60, fun() ->
        Cache = new(#{ttl => infinity}),
        Small = binary:copy(<<"s">>, 5000),
        Large = binary:copy(<<"L">>, 200000),
        ok = ?C:put(Cache, k, Small),
        Stop = atomics:new(1, []),
        Writer = spawn_link(fun Loop() ->
                                    case atomics:get(Stop, 1) of
                                        0 -> ok = ?C:put(Cache, k, Small),
                                             ok = ?C:put(Cache, k, Large),
                                             Loop();
                                        _ -> ok
                                    end
                            end),
        Results = [?C:get(Cache, k) || _ <- lists:seq(1, 3000)],
        atomics:put(Stop, 1, 1),
        unlink(Writer),
        ?assertEqual([], [R || R <- Results, R =/= {ok, Small}, R =/= {ok, Large}])
    end}.

%% The raw NIF takes iodata and gives back the exact bytes.
raw_nif_bytes_test() ->
    {ok, Cache} = erlmcp_flow_nif:cache_new(0, 0, 0),
    ok = erlmcp_flow_nif:cache_put(Cache, [<<"k">>, "ey"], [<<"va">>, [<<"l">>]]),
    ?assertEqual({ok, <<"val">>}, erlmcp_flow_nif:cache_get(Cache, <<"key">>)),
    ok = erlmcp_flow_nif:cache_put(Cache, <<>>, <<>>),
    ?assertEqual({ok, <<>>}, erlmcp_flow_nif:cache_get(Cache, <<>>)),
    ?assertEqual(miss, erlmcp_flow_nif:cache_get(Cache, <<"nope">>)),
    ?assertEqual(ok, erlmcp_flow_nif:cache_remove(Cache, <<"key">>)),
    ?assertEqual(not_found, erlmcp_flow_nif:cache_remove(Cache, <<"key">>)),
    ?assertEqual(10000, stat(Cache, capacity)).

%%--------------------------------------------------------------------------------------------
%% Expiry
%%--------------------------------------------------------------------------------------------

%% An entry is a miss once its TTL has passed, and the read removes it (an expiration).
ttl_expiry_test_() ->
    {timeout, 60, fun() ->
        Ttl = 200,
        Cache = new(#{ttl => Ttl, sweep_interval => 0}),   % no sweeper: the read expires it
        T0 = put_and_get_fresh(Cache, k, v, Ttl),
        ?assert(wait_until(fun() -> ?C:get(Cache, k) =:= miss end, 30000)),
        %% Not before the TTL (the engine's clock is coarse: a few ms).
        ?assert(now_ms() - T0 >= Ttl - 20),
        ?assertMatch(#{len := 0, expirations := 1}, stats(Cache)),
        %% A put restarts the TTL: live again, then expired again.
        T1 = put_and_get_fresh(Cache, k, v2, Ttl),
        ?assert(wait_until(fun() -> ?C:get(Cache, k) =:= miss end, 30000)),
        ?assert(now_ms() - T1 >= Ttl - 20),
        ?assertMatch(#{len := 0, expirations := 2}, stats(Cache))
    end}.

%% Puts Key and reads it back at once; asserts it is live when both took well under the TTL
%% (on a machine too slow to tell, no claim is made). Returns the time before the put.
put_and_get_fresh(Cache, Key, Value, Ttl) ->
    T0 = now_ms(),
    ok = ?C:put(Cache, Key, Value),
    Fresh = ?C:get(Cache, Key),
    case now_ms() - T0 < Ttl div 2 of
        true -> ?assertEqual({ok, Value}, Fresh);
        false -> ok
    end,
    T0.

%% The sweeper thread removes expired entries nobody reads; without one they stay (counted in
%% len) until sweep/1 removes them.
sweeper_test_() ->
    {timeout, 60, fun() ->
        Opts = #{ttl => 50, capacity => 1000, shards => 1},
        Swept = new(Opts#{sweep_interval => 10}),
        Unswept = new(Opts#{sweep_interval => 0}),
        [begin ok = ?C:put(Swept, I, I), ok = ?C:put(Unswept, I, I) end
         || I <- lists:seq(1, 100)],
        %% Only the sweeper can empty Swept: nothing reads it.
        ?assert(wait_until(fun() -> stat(Swept, len) =:= 0 end, 30000)),
        ?assertMatch(#{expirations := 100, hits := 0, misses := 0}, stats(Swept)),
        %% Unswept's entries were put before Swept's were found expired, so they have expired
        %% too, but nothing removed them.
        ?assertMatch(#{len := 100, expirations := 0}, stats(Unswept)),
        ?assertEqual({ok, 100}, ?C:sweep(Unswept)),
        ?assertMatch(#{len := 0, expirations := 100, hits := 0, misses := 0},
                     stats(Unswept)),
        ?assertEqual({ok, 0}, ?C:sweep(Unswept)),
        %% Live entries are never swept.
        Live = new(#{ttl => infinity}),
        ok = ?C:put(Live, k, v),
        ?assertEqual({ok, 0}, ?C:sweep(Live)),
        ?assertEqual({ok, v}, ?C:get(Live, k))
    end}.

%% A cache dropped by everyone is freed with its sweeper thread (the destructor joins it).
sweeper_thread_ends_with_the_cache_test_() ->
    {timeout, 60, fun() ->
        case sweeper_threads() of
            unknown ->
                ok; % not Linux
            Before ->
                Parent = self(),
                Pid = spawn(fun() ->
                                    {ok, _Cache} = ?C:new(#{sweep_interval => 1}),
                                    Parent ! {started, self()},
                                    receive stop -> ok end
                            end),
                receive {started, Pid} -> ok end,
                %% The cache's own thread (set_sweeper returned once it was spawned).
                [Mine] = sweeper_threads() -- Before,
                Mon = monitor(process, Pid),
                Pid ! stop,
                receive {'DOWN', Mon, process, Pid, _} -> ok end,
                ?assert(wait_until(fun() -> not lists:member(Mine, sweeper_threads()) end,
                                   10000))
        end
    end}.

%% The thread ids of the engine's sweeper threads in this OS process ("emf-cache-sweep": the
%% thread name cut to 15 bytes), or unknown off Linux.
sweeper_threads() ->
    case file:list_dir("/proc/self/task") of
        {ok, Tids} ->
            [T || T <- Tids,
                  {ok, <<"emf-cache-sweep", _/binary>>} <-
                      [file:read_file("/proc/self/task/" ++ T ++ "/comm")]];
        {error, _} ->
            unknown
    end.

%%--------------------------------------------------------------------------------------------
%% Bad arguments
%%--------------------------------------------------------------------------------------------

bad_arguments_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    CacheMod = untyped(?C),
    NifMod = untyped(erlmcp_flow_nif),
    Invalid = fun(R) -> ?assertMatch({error, {invalid_argument, <<_/binary>>}}, R) end,
    Invalid(CacheMod:new(#{capacity => 0})),
    Invalid(CacheMod:new(#{capacity => 16#1000001})),
    Invalid(CacheMod:new(#{capacity => many})),
    Invalid(CacheMod:new(#{ttl => 0})),
    Invalid(CacheMod:new(#{ttl => -5})),
    Invalid(CacheMod:new(#{ttl => forever})),
    Invalid(CacheMod:new(#{shards => 1025})),
    Invalid(CacheMod:new(#{shards => -1})),
    Invalid(CacheMod:new(#{sweep_interval => -1})),
    Invalid(CacheMod:new(#{sweep_interval => 1 bsl 32})),
    Invalid(CacheMod:new(#{size => 10})),
    Invalid(CacheMod:new(not_a_map)),
    Invalid(CacheMod:start_link(#{capacity => 0})),
    ?assertEqual(undefined, whereis(?C)),
    %% Not cache handles.
    Invalid(CacheMod:get(make_ref(), k)),
    Invalid(CacheMod:put(not_a_cache, k, v)),
    Invalid(CacheMod:stats(<<"cache">>)),
    {ok, Queue} = erlmcp_flow_queue:new(),
    Invalid(CacheMod:sweep(Queue)),
    %% The raw NIF: wrong types and the limits that keep the engine from allocating the VM to
    %% death (emf_cache_new preallocates, and aborts the process when that fails).
    Invalid(NifMod:cache_new(-1, 0, 0)),
    Invalid(NifMod:cache_new(1 bsl 32, 0, 1)),
    Invalid(NifMod:cache_new(10, -1, 0)),
    Invalid(NifMod:cache_new(10, 0, 1 bsl 20)),
    Cache = new(#{}),
    Invalid(NifMod:cache_put(Cache, key_atom, <<"v">>)),
    Invalid(NifMod:cache_put(Cache, <<"k">>, 42)),
    Invalid(NifMod:cache_get(Cache, [<<"k">> | tail])),
    Invalid(NifMod:cache_remove(Cache, 1.5)),
    Invalid(NifMod:cache_set_sweeper(Cache, -1)),
    Invalid(NifMod:cache_set_sweeper(Cache, 1 bsl 32)),
    %% Still fine.
    ok = CacheMod:put(Cache, k, v),
    ?assertEqual({ok, v}, CacheMod:get(Cache, k)).

%%--------------------------------------------------------------------------------------------
%% The default cache
%%--------------------------------------------------------------------------------------------

default_cache_test() ->
    with_no_default(fun() ->
        NotRunning = fun(R) -> ?assertMatch({error, {closed, _}}, R) end,
        NotRunning(?C:get(k)),
        NotRunning(?C:put(k, v)),
        NotRunning(?C:remove(k)),
        NotRunning(?C:sweep()),
        NotRunning(?C:stats()),
        NotRunning(?C:cache()),
        NotRunning(?C:stop()),
        {ok, Pid} = ?C:start_link(),
        ?assertMatch({error, {already_started, Pid}}, ?C:start()),
        ?assertMatch(#{len := 0, capacity := 10000}, element(2, ?C:stats())),
        ok = ?C:put(k, v),
        ?assertEqual({ok, v}, ?C:get(k)),
        ?assertEqual(miss, ?C:get(other)),
        {ok, Cache} = ?C:cache(),
        ?assertEqual({ok, v}, ?C:get(Cache, k)),
        ?assertEqual(ok, ?C:remove(k)),
        ?assertEqual(not_found, ?C:remove(k)),
        ?assertEqual({ok, 0}, ?C:sweep()),
        ?assertMatch({ok, #{hits := 2, misses := 1}}, ?C:stats()),
        unlink(Pid),
        ok = ?C:stop(),
        NotRunning(?C:get(k)),
        %% A handle read before keeps working.
        ok = ?C:put(Cache, k2, v2),
        ?assertEqual({ok, v2}, ?C:get(Cache, k2)),
        %% A new server: a new, empty cache with its own options.
        {ok, _} = ?C:start(#{capacity => 5, ttl => infinity}),
        ?assertMatch({ok, #{len := 0, capacity := 5}}, ?C:stats()),
        ok = ?C:stop()
    end).

%% A server killed outright leaves its cache published; the next one takes it over, entries
%% included (an orderly stop, above, clears it instead).
killed_server_cache_is_taken_over_test() ->
    with_no_default(fun() ->
        {ok, Pid} = ?C:start(#{capacity => 50, ttl => infinity}),
        ok = ?C:put(kept, {value, 1}),
        {ok, Cache} = ?C:cache(),
        Mon = monitor(process, Pid),
        exit(Pid, kill),
        receive {'DOWN', Mon, process, Pid, killed} -> ok end,
        {ok, _} = ?C:start(#{capacity => 5}),
        ?assertEqual({ok, Cache}, ?C:cache()),
        ?assertEqual({ok, {value, 1}}, ?C:get(kept)),
        ?assertMatch({ok, #{capacity := 50}}, ?C:stats()),
        ok = ?C:stop(),
        ?assertEqual(undefined, persistent_term:get({?C, cache}, undefined))
    end).

supervised_default_cache_test() ->
    with_no_default(fun() ->
        process_flag(trap_exit, true),
        {ok, Sup} = supervisor:start_link(?MODULE, #{capacity => 100}),
        try
            ok = ?C:put(k, v),
            ok = supervisor:terminate_child(Sup, ?C),
            ?assertMatch({error, {closed, _}}, ?C:get(k)),
            {ok, _} = supervisor:restart_child(Sup, ?C),
            ?assertEqual(miss, ?C:get(k)),
            ?assertMatch({ok, #{capacity := 100}}, ?C:stats())
        after
            Mon = monitor(process, Sup),
            unlink(Sup),
            exit(Sup, shutdown),
            receive {'DOWN', Mon, process, Sup, _} -> ok end,
            process_flag(trap_exit, false)
        end
    end).

%% @private The supervisor of the test above.
init(Opts) ->
    {ok, {#{strategy => one_for_one, intensity => 0, period => 1},
          [#{id => ?C, start => {?C, start_link, [Opts]}}]}}.

%%--------------------------------------------------------------------------------------------
%% Concurrency
%%--------------------------------------------------------------------------------------------

%% Processes putting and getting at once, on keys of their own and on shared keys: every get
%% sees a value some put stored for that key, and the counters add up.
concurrent_use_test_() ->
    {timeout, 120, fun concurrent_use/0}.

concurrent_use() ->
    Cache = new(#{capacity => 100000, ttl => infinity}),
    Workers = 8,
    Rounds = 2000,
    Parent = self(),
    Pids = [spawn_link(fun() ->
                               Bad = lists:foldl(
                                       fun(I, Acc) ->
                                               ok = ?C:put(Cache, {own, W, I}, {W, I}),
                                               ok = ?C:put(Cache, {shared, I rem 10}, {W, I}),
                                               Own = ?C:get(Cache, {own, W, I}),
                                               Shared = ?C:get(Cache, {shared, I rem 10}),
                                               Acc ++ [{own, Own} || Own =/= {ok, {W, I}}]
                                                   ++ [{shared, Shared}
                                                       || not valid_shared(Shared, I)]
                                       end, [], lists:seq(1, Rounds)),
                               Parent ! {self(), Bad}
                       end) || W <- lists:seq(1, Workers)],
    ?assertEqual([[] || _ <- Pids], [receive {P, Bad} -> Bad end || P <- Pids]),
    #{len := Len, hits := Hits, misses := Misses, evictions := 0} = stats(Cache),
    ?assertEqual(Workers * Rounds + 10, Len),
    ?assertEqual(2 * Workers * Rounds, Hits + Misses),
    ?assertEqual(0, Misses),
    %% Every worker's own entries are all there afterwards.
    ?assertEqual([], [{W, I} || W <- lists:seq(1, Workers), I <- lists:seq(1, Rounds),
                                ?C:get(Cache, {own, W, I}) =/= {ok, {W, I}}]).

%% A shared key holds the value of some worker's put for that key (same I modulo 10).
valid_shared({ok, {W, J}}, I) -> is_integer(W) andalso J rem 10 =:= I rem 10;
valid_shared(_, _) -> false.

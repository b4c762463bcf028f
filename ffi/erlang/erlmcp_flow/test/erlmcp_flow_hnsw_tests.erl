%% EUnit tests of erlmcp_flow_hnsw: every inserted vector found first (cosine, l2sq, with
%% re-rank), batch inserts and searches, filters, removal and re-insertion, compact, save /
%% open / load with identical answers, a mapped index refusing changes, bad input of every
%% kind (wrong dimensions, NaN, unknown metrics, duplicate ids, closed and foreign handles,
%% vectors that are neither lists nor binaries, ids out of range), unaligned binaries, handles
%% freed by close and by the garbage collector, concurrent use, and scheduling: which calls run
%% on dirty schedulers, and normal schedulers free while batches and a compact run.
%%
%% Vectors are random with a fixed seed (rand:seed(exsss, ...)). No assertion depends on
%% timing: whether a call ran on a dirty scheduler is read from a `running' trace of the
%% calling process (complete once erlang:trace_delivered/1 says so); the responsiveness tests
%% check an ordering (an echo answers while long calls are still inside the NIF, which cannot
%% happen if they hold every normal scheduler); waits poll a condition with a deadline.
-module(erlmcp_flow_hnsw_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-define(H, erlmcp_flow_hnsw).
-define(N, erlmcp_flow_nif).
-define(DIM, 16).
-define(COUNT, 300).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

new(Opts) ->
    {ok, Index} = ?H:new(Opts),
    Index.

%% Count random vectors of Dim values in [-1, 1), the same for the same seed.
vectors(Count, Dim, Seed) ->
    _ = rand:seed(exsss, Seed),
    [[rand:uniform() * 2 - 1 || _ <- lists:seq(1, Dim)] || _ <- lists:seq(1, Count)].

f32(V) ->
    << <<X:32/float-native>> || X <- V >>.

%% The same bytes in a sub-binary that starts at an odd address.
unaligned(Bin) ->
    <<_:8, Sub/binary>> = <<0, Bin/binary>>,
    Sub.

%% {Id, Vector} for ids 0, 1, ...
numbered(Vectors) ->
    lists:zip(lists:seq(0, length(Vectors) - 1), Vectors).

%% A batch inserted by one engine thread: the same graph on every run, so that a failure
%% reproduces (threads insert in an order of their own).
insert1(Index, Batch) ->
    ?H:insert_batch(Index, Batch, #{threads => 1}).

len(Index) ->
    {ok, #{len := Len}} = ?H:stats(Index),
    Len.

first_id(Index, Query) ->
    [{Id, _} | _] = ?H:search(Index, Query, 1),
    Id.

%% Asserts that every vector is the first answer to itself.
assert_found_first(Index, Batch) ->
    Missed = [Id || {Id, V} <- Batch, first_id(Index, V) =/= Id],
    ?assertEqual([], Missed).

wait_until(Pred, Ms) when Ms =< 0 ->
    Pred();
wait_until(Pred, Ms) ->
    case Pred() of
        true -> true;
        false -> timer:sleep(2), wait_until(Pred, Ms - 2)
    end.

tmp_file(Name) ->
    Base = case os:getenv("TMPDIR") of false -> "/tmp"; "" -> "/tmp"; D -> D end,
    filename:join(Base, "erlmcp_flow_hnsw_" ++ os:getpid() ++ "_"
                  ++ integer_to_list(erlang:unique_integer([positive])) ++ "_" ++ Name).

with_file(Name, Fun) ->
    Path = tmp_file(Name),
    try Fun(Path) after _ = file:delete(Path) end.

invalid(R) ->
    ?assertMatch({error, {invalid_argument, <<_/binary>>}}, R).

%% Runs F() in a new process traced with `running': {Result, Dirty}, Dirty true when the
%% process ran a NIF on a dirty scheduler (only such a NIF ends in
%% erts_internal:dirty_nif_finalizer/1). Deterministic: the trace is complete once
%% erlang:trace_delivered/1 says so, whatever the timing.
on_dirty(F) ->
    Self = self(),
    Pid = spawn(fun() -> receive go -> Self ! {on_dirty, self(), F()} end end),
    1 = erlang:trace(Pid, true, [running]),
    Pid ! go,
    Result = receive {on_dirty, Pid, R} -> R end,
    Ref = erlang:trace_delivered(Pid),
    receive {trace_delivered, Pid, Ref} -> ok end,
    {Result, trace_events(Pid, false)}.

trace_events(Pid, Dirty) ->
    receive
        {trace, Pid, _InOut, {erts_internal, dirty_nif_finalizer, 1}} -> trace_events(Pid, true);
        {trace, Pid, _InOut, _} -> trace_events(Pid, Dirty)
    after 0 ->
        Dirty
    end.

%% Collects the garbage of every process, so that no index is left waiting for a collection.
collect_all() ->
    [erlang:garbage_collect(P) || P <- processes()],
    ok.

%% Waits until process Pid executes (or waits to execute) NIF Name; fails if a {done, _, _}
%% message arrives first. Polls without sleeping: it only needs this scheduler.
await_in_nif(Pid, Name) ->
    case erlang:process_info(Pid, current_function) of
        {current_function, {?N, Name, _}} ->
            ok;
        _ ->
            receive
                {done, _, _} = Early -> error({done_before_in_nif, Pid, Name, Early})
            after 0 ->
                erlang:yield(),
                await_in_nif(Pid, Name)
            end
    end.

%%--------------------------------------------------------------------------------------------
%% Inserting and searching
%%--------------------------------------------------------------------------------------------

%% 300 random vectors of dim 16, inserted one at a time (lists and binaries alike): each one is
%% the first answer to itself, for cosine and l2sq, with and without originals and re-rank.
each_vector_is_found_first_test_() ->
    Vs = vectors(?COUNT, ?DIM, {1, 2, 3}),
    Batch = numbered(Vs),
    [{atom_to_list(Metric) ++ "/" ++ atom_to_list(Originals),
      fun() ->
              Index = new(#{dim => ?DIM, metric => Metric, originals => Originals}),
              [ok = ?H:insert(Index, Id, case Id rem 2 of 0 -> V; 1 -> f32(V) end)
               || {Id, V} <- Batch],
              ?assertEqual(?COUNT, len(Index)),
              assert_found_first(Index, Batch),
              %% The k answers are distinct, closest first.
              [{_, Q} | _] = Batch,
              Hits = ?H:search(Index, Q, 10, #{rerank => true}),
              ?assertEqual(10, length(Hits)),
              ?assertEqual(10, length(lists:usort([Id || {Id, _} <- Hits]))),
              Ds = [D || {_, D} <- Hits],
              ?assertEqual(lists:sort(Ds), Ds),
              ?assertMatch([{0, _} | _], Hits)
      end} || {Metric, Originals} <- [{cosine, none}, {l2sq, none}, {cosine, f32},
                                      {l2sq, f16}]].

%% Re-ranked distances with f32 originals are the exact ones.
rerank_gives_exact_distances_test() ->
    [A, B] = vectors(2, ?DIM, {7, 7, 7}),
    Index = new(#{dim => ?DIM, metric => l2sq, originals => f32}),
    ok = ?H:insert(Index, [{1, A}, {2, B}]),
    [{1, _}, {2, Exact}] = ?H:search(Index, A, 2, #{rerank => true}),
    {ok, Reference} = erlmcp_flow_quantization:distance(l2sq, A, B),
    ?assert(abs(Exact - Reference) =< 1.0e-5 * Reference),
    %% Without re-rank the int8 estimate is close too.
    [{1, _}, {2, Estimate}] = ?H:search(Index, A, 2),
    ?assert(abs(Estimate - Reference) =< 0.05 * Reference).

batch_insert_test() ->
    Batch = numbered(vectors(?COUNT, ?DIM, {4, 5, 6})),
    Index = new(#{dim => ?DIM}),
    %% Half as lists, half as binaries, one call.
    Mixed = [{Id, case Id rem 2 of 0 -> V; 1 -> f32(V) end} || {Id, V} <- Batch],
    ok = ?H:insert(Index, Mixed),                 % one engine thread per CPU
    ?assertEqual(?COUNT, len(Index)),
    assert_found_first(Index, Batch),
    %% An empty batch is fine.
    ok = ?H:insert(Index, []),
    ?assertEqual(?COUNT, len(Index)),
    %% Ids anywhere in the 64-bit range.
    Big = 16#FFFFFFFFFFFFFFFF,
    ok = ?H:insert(Index, [{Big, [1.0 | lists:duplicate(?DIM - 1, 0.0)]}]),
    ?assertEqual(Big, first_id(Index, [1.0 | lists:duplicate(?DIM - 1, 0.0)])),
    %% search_batch answers as the searches one at a time do.
    Queries = [V || {_, V} <- lists:sublist(Batch, 50)],
    {ok, Answers} = ?H:search_batch(Index, Queries, 5),
    ?assertEqual([?H:search(Index, Q, 5) || Q <- Queries], Answers),
    {ok, Answers} = ?H:search_batch(Index, [f32(Q) || Q <- Queries], 5, #{threads => 3}),
    ?assertEqual({ok, []}, ?H:search_batch(Index, [], 5)),
    {ok, Empty} = ?H:search_batch(Index, Queries, 0),
    ?assertEqual(lists:duplicate(50, []), Empty),
    invalid(?H:insert_batch(Index, [], untyped(#{threads => -1}))),
    invalid(?H:insert_batch(Index, [], untyped(#{colour => blue}))),
    invalid(?H:insert_batch(Index, [], untyped([{threads, 1}]))).

%% Inserts on several threads at once (batches on 2 and 4 engine threads, processes inserting
%% one vector at a time) leave every vector reachable: a search with ef as large as the index
%% finds each one first. (Engines before 19884cb left a vector unreachable in about one
%% index out of six built on 2 threads; eight indexes of each kind are built here.)
multi_threaded_inserts_leave_every_vector_reachable_test_() ->
    {timeout, 60, fun() ->
        Batch = numbered(vectors(?COUNT, ?DIM, {4, 5, 7})),
        Reachable = fun(Index) ->
                            ?assertEqual(?COUNT, len(Index)),
                            Missed = [Id || {Id, V} <- Batch, first_of(Index, V) =/= Id],
                            ?assertEqual([], Missed)
                    end,
        Self = self(),
        lists:foreach(
          fun(_) ->
                  [begin
                       Index = new(#{dim => ?DIM}),
                       ok = ?H:insert_batch(Index, Batch, #{threads => Threads}),
                       Reachable(Index)
                   end || Threads <- [2, 4]],
                  Index = new(#{dim => ?DIM}),
                  Pids = [spawn_link(fun() ->
                                             [ok = ?H:insert(Index, Id, V)
                                              || {Id, V} <- Batch, Id rem 4 =:= W],
                                             Self ! {inserted, self()}
                                     end) || W <- lists:seq(0, 3)],
                  [receive {inserted, Pid} -> ok end || Pid <- Pids],
                  Reachable(Index)
          end, lists:seq(1, 8))
    end}.

first_of(Index, V) ->
    [{Id, _} | _] = ?H:search(Index, V, 1, #{ef => ?COUNT}),
    Id.

%% A batch is all or nothing: a duplicate id (within the batch or already in the index) or a
%% NaN anywhere inserts none of it.
batch_is_all_or_nothing_test() ->
    [A, B, C] = vectors(3, ?DIM, {8, 8, 8}),
    Index = new(#{dim => ?DIM}),
    ok = ?H:insert(Index, 1, A),
    invalid(?H:insert(Index, [{2, B}, {1, C}])),
    invalid(?H:insert(Index, [{2, B}, {3, C}, {2, A}])),
    NaN = <<0, 0, 192, 127>>,
    invalid(?H:insert(Index, [{2, B}, {3, <<(f32(tl(C)))/binary, NaN/binary>>}])),
    ?assertEqual(1, len(Index)),
    ok = ?H:insert(Index, [{2, B}, {3, C}]),
    ?assertEqual(3, len(Index)).

search_edge_cases_test() ->
    Batch = numbered(vectors(20, ?DIM, {9, 9, 9})),
    Index = new(#{dim => ?DIM}),
    [{_, Q} | _] = Batch,
    ?assertEqual([], ?H:search(Index, Q, 5)),          % empty index
    ok = insert1(Index, Batch),
    ?assertEqual([], ?H:search(Index, Q, 0)),          % k 0
    All = ?H:search(Index, Q, 100),                    % k above the size
    ?assertEqual(20, length(All)),
    Wide = ?H:search(Index, Q, 100, #{ef => 1048576}), % the largest ef
    ?assertEqual(All, Wide),
    Narrow = ?H:search(Index, Q, 3, #{ef => 1}),       % ef below k: k are kept
    ?assertEqual(3, length(Narrow)).

%% Binaries at odd addresses (sub-binaries) are copied for the engine, with the same results.
unaligned_binaries_test() ->
    Batch = numbered(vectors(50, ?DIM, {10, 10, 10})),
    Index = new(#{dim => ?DIM}),
    [ok = ?H:insert(Index, Id, unaligned(f32(V))) || {Id, V} <- Batch],
    [?assertEqual(Id, first_id(Index, unaligned(f32(V)))) || {Id, V} <- Batch],
    {_, V7} = lists:keyfind(7, 1, Batch),
    Filter = <<(1 bsl 7):64/native>>,
    ?assertMatch({ok, [{7, _}]},
                 ?N:hnsw_search(Index, unaligned(f32(V7)), 3, 0, false, unaligned(Filter))),
    Ids = << <<Id:64/native>> || Id <- lists:seq(100, 149) >>,
    Vs = << <<(f32(V))/binary>> || {_, V} <- Batch >>,
    ok = ?N:hnsw_insert_batch(Index, unaligned(Ids), unaligned(Vs), 0),
    ?assertEqual(100, len(Index)),
    %% Vectors of 64 KiB and more (copied on a dirty scheduler).
    Dim = 20000,
    Big = new(#{dim => Dim}),
    [W] = vectors(1, Dim, {11, 11, 11}),
    ok = ?H:insert(Big, 1, unaligned(f32(W))),
    ?assertMatch([{1, _}], ?H:search(Big, unaligned(f32(W)), 1)).

%%--------------------------------------------------------------------------------------------
%% Filters
%%--------------------------------------------------------------------------------------------

filter_test() ->
    Batch = numbered(vectors(?COUNT, ?DIM, {12, 12, 12})),
    Index = new(#{dim => ?DIM}),
    ok = insert1(Index, Batch),
    Even = [Id || {Id, _} <- Batch, Id rem 2 =:= 0],
    EvenSet = sets:from_list(Even),
    lists:foreach(
      fun({Id, V}) ->
              Hits = ?H:search(Index, V, 10, #{filter => Even}),
              ?assertEqual(10, length(Hits)),
              ?assertEqual([], [H || {H, _} <- Hits, not sets:is_element(H, EvenSet)]),
              case Id rem 2 of
                  0 -> ?assertMatch([{Id, _} | _], Hits);
                  1 -> ok
              end
      end, Batch),
    {_, V5} = lists:keyfind(5, 1, Batch),
    %% One id, several (unsorted, repeated), none, ids not in the index.
    ?assertMatch([{299, _}], ?H:search(Index, V5, 10, #{filter => [299]})),
    Some = ?H:search(Index, V5, 10, #{filter => [250, 3, 64, 3, 63, 128]}),
    ?assertEqual([3, 63, 64, 128, 250], lists:sort([Id || {Id, _} <- Some])),
    ?assertEqual([], ?H:search(Index, V5, 10, #{filter => []})),
    ?assertEqual([], ?H:search(Index, V5, 10, #{filter => [100000, 268435455]})),
    %% In batches too.
    {ok, [Hits1, Hits2]} = ?H:search_batch(Index, [V5, V5], 3, #{filter => [5, 6]}),
    ?assertEqual(Hits1, Hits2),
    ?assertMatch([{5, _}, {6, _}], Hits1),
    %% Ids beyond the bitset the engine takes are refused, not dropped.
    invalid(?H:search(Index, V5, 10, #{filter => [268435456]})),
    invalid(?H:search(Index, V5, 10, #{filter => [1 bsl 63]})),
    invalid(?H:search(Index, V5, 10, untyped(#{filter => [-1]}))),
    invalid(?H:search(Index, V5, 10, untyped(#{filter => [a]}))),
    invalid(?H:search(Index, V5, 10, untyped(#{filter => [1 | 2]}))),
    invalid(?H:search(Index, V5, 10, untyped(#{filter => all}))),
    invalid(?N:hnsw_search(Index, f32(V5), 10, 0, false, <<>>)),
    invalid(?N:hnsw_search(Index, f32(V5), 10, 0, false, <<1, 2, 3>>)).

%% The cost rule of single calls: a filtered search on a large index (it visits every node),
%% an insert or removal with a large m go to a dirty scheduler; small ones stay on the
%% calling scheduler. A call that finds a batch insert running on the index moves too (stats,
%% inserts and removals need the id map the batch holds).
single_calls_go_dirty_by_cost_test_() ->
    {timeout, 60, fun() ->
        Dim = 32,
        Index = new(#{dim => Dim}),
        ok = insert1(Index, numbered(vectors(5000, Dim, {13, 13, 13}))),
        [Q] = [f32(V) || V <- vectors(1, Dim, {13, 13, 14})],
        ?assertMatch({[{4999, _}], true},
                     on_dirty(fun() -> ?H:search(Index, Q, 5, #{filter => [4999]}) end)),
        ?assertMatch({[_, _, _, _, _], false},
                     on_dirty(fun() -> ?H:search(Index, Q, 5) end)),
        ?assertMatch({[_ | _], true},                        % ef 100000: every node
                     on_dirty(fun() -> ?H:search(Index, Q, 5, #{ef => 100000}) end)),
        Small = new(#{dim => ?DIM}),
        ok = insert1(Small, numbered(vectors(?COUNT, ?DIM, {14, 14, 14}))),
        [S] = vectors(1, ?DIM, {15, 15, 15}),
        ?assertMatch({[_ | _], false},
                     on_dirty(fun() -> ?H:search(Small, S, 10, #{filter => [1, 2, 3]}) end)),
        ?assertEqual({ok, false}, on_dirty(fun() -> ?H:insert(Small, 1000, S) end)),
        ?assertEqual({ok, false}, on_dirty(fun() -> ?H:remove(Small, 1000) end)),
        ?assertMatch({{ok, _}, false}, on_dirty(fun() -> ?H:stats(Small) end)),
        %% m 64: an insert re-prunes up to 128 lists of 128 (32768 evaluations), a removal
        %% repairs 128 of them.
        Wide = new(#{dim => ?DIM, m => 64}),
        ?assertEqual({ok, true}, on_dirty(fun() -> ?H:insert(Wide, 1, S) end)),
        ?assertEqual({ok, true}, on_dirty(fun() -> ?H:remove(Wide, 1) end))
    end}.

%%--------------------------------------------------------------------------------------------
%% Removing and compacting
%%--------------------------------------------------------------------------------------------

remove_test() ->
    Batch = numbered(vectors(?COUNT, ?DIM, {16, 16, 16})),
    Index = new(#{dim => ?DIM}),
    ok = insert1(Index, Batch),
    {Removed, Kept} = lists:partition(fun({Id, _}) -> Id rem 3 =:= 0 end, Batch),
    [ok = ?H:remove(Index, Id) || {Id, _} <- Removed],
    ?assertEqual(length(Kept), len(Index)),
    RemovedSet = sets:from_list([Id || {Id, _} <- Removed]),
    %% A removed id never comes back, not even for its own vector or with a filter naming it.
    lists:foreach(
      fun({Id, V}) ->
              Hits = ?H:search(Index, V, 20),
              ?assertEqual(20, length(Hits)),
              ?assertEqual([], [H || {H, _} <- Hits, sets:is_element(H, RemovedSet)]),
              ?assertEqual([], ?H:search(Index, V, 5, #{filter => [Id]}))
      end, Removed),
    assert_found_first(Index, Kept),
    {ok, All} = ?H:search_batch(Index, [V || {_, V} <- Removed], 20),
    ?assertEqual([], [H || Hits <- All, {H, _} <- Hits, sets:is_element(H, RemovedSet)]),
    %% Twice: not found; never inserted: not found.
    {RId, RV} = hd(Removed),
    ?assertMatch({error, {not_found, _}}, ?H:remove(Index, RId)),
    ?assertMatch({error, {not_found, _}}, ?H:remove(Index, 123456789)),
    %% A removed id can be inserted again, with a new vector.
    ok = ?H:insert(Index, RId, RV),
    ?assertEqual(RId, first_id(Index, RV)).

compact_test() ->
    Batch = numbered(vectors(?COUNT, ?DIM, {17, 17, 17})),
    Index = new(#{dim => ?DIM}),
    ok = insert1(Index, Batch),
    {ok, #{memory_bytes := Before}} = ?H:stats(Index),
    {Removed, Kept} = lists:partition(fun({Id, _}) -> Id rem 2 =:= 0 end, Batch),
    [ok = ?H:remove(Index, Id) || {Id, _} <- Removed],
    ok = ?H:compact(Index),
    {ok, #{len := Len, memory_bytes := After}} = ?H:stats(Index),
    ?assertEqual(length(Kept), Len),
    ?assert(After < Before),
    assert_found_first(Index, Kept),
    RemovedIds = sets:from_list([Id || {Id, _} <- Removed]),
    [?assertNot(sets:is_element(first_id(Index, V), RemovedIds)) || {_, V} <- Removed],
    %% The index keeps working: inserts (removed ids again), removals, compacts.
    ok = insert1(Index, Removed),
    assert_found_first(Index, Batch),
    ok = ?H:compact(Index),
    ok = ?H:compact(new(#{dim => 4})).

%%--------------------------------------------------------------------------------------------
%% Files
%%--------------------------------------------------------------------------------------------

save_open_load_test() ->
    with_file("index", fun(Path) ->
        Batch = numbered(vectors(?COUNT, ?DIM, {18, 18, 18})),
        Index = new(#{dim => ?DIM, metric => l2sq, originals => f16, m => 8,
                      ef_construction => 100, ef_search => 40, seed => 42}),
        ok = ?H:insert(Index, Batch),
        ok = ?H:remove(Index, 10),
        ok = ?H:save(Index, Path),
        {ok, Mapped} = ?H:open(Path),
        {ok, Loaded} = ?H:load(list_to_binary(Path)),
        Queries = [V || V <- vectors(100, ?DIM, {19, 19, 19})] ++ [V || {_, V} <- Batch],
        Answers = fun(I) ->
                          [{?H:search(I, Q, 10),
                            ?H:search(I, Q, 10, #{rerank => true, ef => 80}),
                            ?H:search(I, Q, 5, #{filter => [1, 2, 3, 10, 200]})}
                           || Q <- Queries]
                  end,
        Expected = Answers(Index),
        ?assertEqual(Expected, Answers(Mapped)),
        ?assertEqual(Expected, Answers(Loaded)),
        ?assertEqual(element(2, ?H:search_batch(Index, Queries, 7)),
                     element(2, ?H:search_batch(Mapped, Queries, 7))),
        Info = #{dim => ?DIM, metric => l2sq, m => 8, ef_construction => 100,
                 ef_search => 40, originals => f16, seed => 42},
        ?assertEqual({ok, Info#{mapped => false}}, ?H:info(Index)),
        ?assertEqual({ok, Info#{mapped => true}}, ?H:info(Mapped)),
        ?assertEqual({ok, Info#{mapped => false}}, ?H:info(Loaded)),
        ?assertEqual(?COUNT - 1, len(Mapped)),
        ?assertEqual(?COUNT - 1, len(Loaded)),
        %% A loaded index changes; the mapped one and the file do not.
        ok = ?H:insert(Loaded, 10, [0.5 | lists:duplicate(?DIM - 1, 0.0)]),
        ok = ?H:remove(Loaded, 11),
        ok = ?H:compact(Loaded),
        ?assertEqual(?COUNT - 1, len(Loaded)),
        ?assertEqual(Expected, Answers(Mapped)),
        %% Saving over the mapped file replaces it (atomic rename): the mapping keeps the old
        %% contents, a new mapping sees the new ones.
        ok = ?H:save(Loaded, Path),
        ?assertEqual(Expected, Answers(Mapped)),
        {ok, Mapped2} = ?H:open(Path),
        ?assertEqual(Answers(Loaded), Answers(Mapped2))
    end).

%% A mapped index answers searches only; every change is refused with unsupported.
mapped_index_refuses_changes_test() ->
    with_file("mapped", fun(Path) ->
        Batch = numbered(vectors(50, ?DIM, {20, 20, 20})),
        Index = new(#{dim => ?DIM}),
        ok = ?H:insert(Index, Batch),
        ok = ?H:save(Index, Path),
        {ok, Mapped} = ?H:open(Path),
        [{_, V} | _] = Batch,
        Unsupported = fun(R) -> ?assertMatch({error, {unsupported, <<_/binary>>}}, R) end,
        Unsupported(?H:insert(Mapped, 1000, V)),
        Unsupported(?H:insert(Mapped, [{1000, V}])),
        Unsupported(?H:insert(Mapped, [])),
        Unsupported(?H:remove(Mapped, 0)),
        Unsupported(?H:compact(Mapped)),
        Unsupported(?H:save(Mapped, Path ++ ".copy")),
        ?assertEqual(50, len(Mapped)),
        ?assertEqual(0, first_id(Mapped, V)),
        ok = ?H:close(Mapped)
    end).

bad_files_test() ->
    with_file("garbage", fun(Path) ->
        ?assertMatch({error, {not_found, _}}, ?H:open(Path)),
        ?assertMatch({error, {not_found, _}}, ?H:load(Path)),
        ok = file:write_file(Path, <<"not an index at all">>),
        ?assertMatch({error, {corrupt, _}}, ?H:open(Path)),
        ?assertMatch({error, {corrupt, _}}, ?H:load(Path)),
        %% A real file cut short, and one with a flipped byte in the middle.
        Index = new(#{dim => ?DIM}),
        ok = ?H:insert(Index, numbered(vectors(50, ?DIM, {21, 21, 21}))),
        ok = ?H:save(Index, Path),
        {ok, Good} = file:read_file(Path),
        ok = file:write_file(Path, binary:part(Good, 0, byte_size(Good) div 2)),
        ?assertMatch({error, {corrupt, _}}, ?H:open(Path)),
        ?assertMatch({error, {corrupt, _}}, ?H:load(Path)),
        %% The file's CRC32C refuses a single flipped bit anywhere (here in the middle).
        Half = byte_size(Good) div 2,
        <<Head:Half/binary, Byte, Tail/binary>> = Good,
        ok = file:write_file(Path, <<Head/binary, (Byte bxor 16#10), Tail/binary>>),
        {error, {corrupt, Why}} = ?H:open(Path),
        ?assertNotEqual(nomatch, binary:match(Why, <<"checksum">>)),
        ?assertMatch({error, {corrupt, _}}, ?H:load(Path)),
        %% A directory is no index file: io, as the OS refuses it, at open and load.
        Dir = filename:dirname(Path),
        ?assertMatch({error, {io, _}}, ?H:open(Dir)),
        ?assertMatch({error, {io, _}}, ?H:load(Dir)),
        ?assertMatch({error, {io, _}}, ?H:save(Index, filename:join(Path, "x"))),
        invalid(?H:open(<<"nul", 0, "byte">>)),
        invalid(?H:open(untyped({not_a, path}))),
        invalid(?H:save(Index, untyped(42))),
        invalid(?N:hnsw_load(untyped(42)))
    end).

%%--------------------------------------------------------------------------------------------
%% The original design's calls
%%--------------------------------------------------------------------------------------------

%% new/1 without dim: the first insert fixes it; search/3 answers the hits bare.
new_without_dim_then_insert_then_search_test() ->
    {ok, Index} = ?H:new(#{m => 16, ef_construction => 200}),
    ?assertMatch({ok, #{dim := 0, m := 16, ef_construction := 200}}, ?H:info(Index)),
    %% Empty and dimensionless: no hits for a query of any length, nothing to remove.
    ?assertEqual([], ?H:search(Index, [1.0, 2.0, 3.0], 5)),
    ?assertMatch({error, {not_found, _}}, ?H:remove(Index, 1)),
    ?assertEqual({ok, []}, ?H:search_batch(Index, [], 5)),
    invalid(?H:search_batch(Index, [[1.0, 2.0]], 5)),
    with_file("dimless", fun(Path) -> invalid(?H:save(Index, Path)) end),
    ok = ?H:insert(Index, []),                               % an empty batch fixes nothing
    ?assertMatch({ok, #{dim := 0}}, ?H:info(Index)),
    Vs = vectors(50, ?DIM, {40, 41, 42}),
    ok = ?H:insert(Index, 0, hd(Vs)),
    ?assertMatch({ok, #{dim := ?DIM}}, ?H:info(Index)),
    invalid(?H:insert(Index, 99, [1.0, 2.0])),               % not ?DIM values
    ok = ?H:insert(Index, numbered(Vs) -- [{0, hd(Vs)}]),
    ?assertEqual(50, len(Index)),
    [{7, D} | _] = ?H:search(Index, lists:nth(8, Vs), 3),
    ?assert(is_float(D) andalso abs(D) < 0.01),
    %% search/4 answers the same way.
    ?assertMatch([{7, _}], ?H:search(Index, lists:nth(8, Vs), 1, #{filter => [7]})),
    invalid(?H:search(Index, [1.0], 1)),
    %% dim => 0 says the same as no dim; a first batch fixes it too.
    {ok, Other} = ?H:new(#{dim => 0}),
    ok = ?H:insert(Other, [{5, [1.0, 0.0]}, {6, [0.0, 1.0]}]),
    ?assertMatch({ok, #{dim := 2}}, ?H:info(Other)),
    ?assertMatch([{6, _}, {5, _}], ?H:search(Other, [0.1, 0.9], 2)),
    %% A first batch of mixed lengths fixes nothing.
    {ok, Third} = ?H:new(#{}),
    invalid(?H:insert(Third, [{1, [1.0, 0.0]}, {2, [1.0, 0.0, 0.0]}])),
    ?assertMatch({ok, #{dim := 0}}, ?H:info(Third)),
    ok = ?H:insert(Third, 1, f32([1.0, 0.0, 0.0])),           % a binary fixes it too
    ?assertMatch({ok, #{dim := 3}}, ?H:info(Third)).

%% Processes race to insert the first vector, half with 3 values, half with 4: one
%% dimension wins, every vector of it goes in, every other one fails cleanly.
concurrent_first_inserts_fix_one_dimension_test() ->
    {ok, Index} = ?H:new(#{}),
    Self = self(),
    Pids = [spawn_link(fun() ->
                               Dim = 3 + I rem 2,
                               receive go -> ok end,
                               Self ! {inserted, self(), Dim,
                                       ?H:insert(Index, I, lists:duplicate(Dim, I + 1.0))}
                       end) || I <- lists:seq(0, 7)],
    [P ! go || P <- Pids],
    Results = [receive {inserted, P, Dim, R} -> {Dim, R} end || P <- Pids],
    {ok, #{dim := Won}} = ?H:info(Index),
    ?assert(Won =:= 3 orelse Won =:= 4),
    [case Dim of
         Won -> ?assertEqual(ok, R);
         _ -> invalid(R)
     end || {Dim, R} <- Results],
    ?assertEqual(4, len(Index)).

%% insert/2 with one vector and no id: {ok, Id}, ids the index picks.
insert_without_id_test() ->
    {ok, Index} = ?H:new(#{}),
    ?assertEqual({ok, 0}, ?H:insert(Index, [1.0, 0.0, 0.0])),
    ok = ?H:insert(Index, 1, [0.0, 1.0, 0.0]),
    ?assertEqual({ok, 2}, ?H:insert(Index, f32([0.0, 0.0, 1.0]))),     % 1 is taken
    invalid(?H:insert(Index, [1.0, 2.0])),                            % wrong dimension
    invalid(?H:insert(Index, untyped([1.0, x, 2.0]))),
    invalid(?H:insert(Index, <<1, 2, 3>>)),
    ?assertEqual({ok, 3}, ?H:insert(Index, [1, 1, 0])),               % no id was used up
    ?assertMatch([{2, _}], ?H:search(Index, [0.0, 0.1, 1.0], 1)),
    ok = ?H:remove(Index, 3),
    ?assertEqual({ok, 4}, ?H:insert(Index, [1, 1, 1])),               % 3 is not reused
    invalid(?H:insert(Index, 4, [1, 0, 1])),                          % 4 is in use
    ok = ?H:close(Index),
    ?assertMatch({error, {closed, _}}, ?H:insert(Index, [1.0, 0.0, 0.0])),
    with_file("insert_new", fun(Path) ->
        {ok, Saved} = ?H:new(#{dim => 2}),
        {ok, 0} = ?H:insert(Saved, [1.0, 0.0]),
        ok = ?H:save(Saved, Path),
        {ok, Mapped} = ?H:open(Path),
        ?assertMatch({error, {unsupported, _}}, ?H:insert(Mapped, [0.0, 1.0])),
        {ok, Loaded} = ?H:load(Path),
        ?assertEqual({ok, 1}, ?H:insert(Loaded, [0.0, 1.0]))        % 0 is in the file
    end).

%% build_index/2: a list of vectors (ids 0..N-1) or of {Id, Vector}, dim from the vectors.
build_index_test() ->
    Vs = vectors(200, ?DIM, {43, 44, 45}),
    {ok, Index} = ?H:build_index(Vs, #{m => 16, ef_construction => 200}),
    ?assertMatch({ok, #{dim := ?DIM, m := 16}}, ?H:info(Index)),
    ?assertEqual(200, len(Index)),
    %% Every vector is the nearest to itself, under its position as id.
    assert_found_first(Index, numbered(Vs)),
    [{42, _} | _] = ?H:search(Index, lists:nth(43, Vs), 5),
    %% {Id, Vector} pairs, binaries, a dim given.
    Pairs = [{Id * 10, f32(V)} || {Id, V} <- numbered(lists:sublist(Vs, 20))],
    {ok, ById} = ?H:build_index(Pairs, #{dim => ?DIM, metric => l2sq}),
    ?assertMatch([{50, _} | _], ?H:search(ById, lists:nth(6, Vs), 1)),
    %% Empty: an index without a dimension.
    {ok, Empty} = ?H:build_index([], #{}),
    ?assertMatch({ok, #{dim := 0}}, ?H:info(Empty)),
    %% Errors: nothing is built (contracts broken on purpose: see untyped/1).
    HnswMod = untyped(?H),
    invalid(HnswMod:build_index([[1.0, 2.0], [1.0]], #{})),
    invalid(HnswMod:build_index(Vs, #{dim => 3})),
    invalid(HnswMod:build_index([[1.0], atom], #{})),
    invalid(HnswMod:build_index([{1, [1.0]}, {1, [2.0]}], #{})),           % id twice
    invalid(HnswMod:build_index(not_a_list, #{})),
    invalid(HnswMod:build_index([[1.0] | tail], #{})),
    invalid(HnswMod:build_index(Vs, #{colour => blue})),
    invalid(HnswMod:build_index(Vs, not_a_map)).

%%--------------------------------------------------------------------------------------------
%% Bad input
%%--------------------------------------------------------------------------------------------

bad_options_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    HnswMod = untyped(?H),
    NifMod = untyped(?N),
    invalid(HnswMod:new(not_a_map)),
    invalid(HnswMod:new(#{dim => -1})),
    invalid(HnswMod:new(#{dim => 65537})),
    invalid(HnswMod:new(#{dim => 1.5})),
    invalid(HnswMod:new(#{dim => 4, metric => euclid})),
    invalid(HnswMod:new(#{dim => 4, metric => "cosine"})),
    invalid(HnswMod:new(#{dim => 4, m => 1})),
    invalid(HnswMod:new(#{dim => 4, m => 129})),
    invalid(HnswMod:new(#{dim => 4, ef_construction => 0})),
    invalid(HnswMod:new(#{dim => 4, ef_search => 1048577})),
    invalid(HnswMod:new(#{dim => 4, originals => f64})),
    invalid(HnswMod:new(#{dim => 4, seed => -1})),
    invalid(HnswMod:new(#{dim => 4, colour => blue})),
    %% The NIF checks too (the engine's own messages for ranges).
    invalid(NifMod:hnsw_new(65537, cosine, 16, 200, 50, none, default)),
    invalid(NifMod:hnsw_new(4, euclid, 16, 200, 50, none, default)),
    invalid(NifMod:hnsw_new(4, cosine, 1000, 200, 50, none, default)),
    invalid(NifMod:hnsw_new(4, cosine, 16, 1 bsl 40, 50, none, default)),
    invalid(NifMod:hnsw_new(4, cosine, 16, 200, 50, f64, default)),
    invalid(NifMod:hnsw_new(4, cosine, 16, 200, 50, none, -1)),
    invalid(NifMod:hnsw_new(-4, cosine, 16, 200, 50, none, default)),
    %% Every metric and originals kind makes an index.
    [ok = HnswMod:close(new(#{dim => 4, metric => M, originals => O}))
     || M <- [cosine, dot, l2sq], O <- [none, f16, f32]],
    ok.

bad_vectors_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    HnswMod = untyped(?H),
    NifMod = untyped(?N),
    Index = new(#{dim => 4}),
    ok = HnswMod:insert(Index, 1, [1, 2, 3, 4]),                    % integers are numbers too
    NaN = <<0, 0, 192, 127>>,
    Inf = <<0, 0, 128, 127>>,
    One = <<1.0:32/float-native>>,
    %% Wrong dimensions, as lists and binaries.
    invalid(HnswMod:insert(Index, 2, [1.0, 2.0, 3.0])),
    invalid(HnswMod:insert(Index, 2, f32([1.0, 2.0, 3.0, 4.0, 5.0]))),
    invalid(HnswMod:insert(Index, 2, [])),
    invalid(HnswMod:insert(Index, [{2, [1.0, 2.0]}])),
    invalid(HnswMod:search(Index, [1.0, 2.0], 1)),
    invalid(HnswMod:search(Index, <<>>, 1)),
    invalid(HnswMod:search_batch(Index, [[1.0, 2.0, 3.0, 4.0], [1.0]], 1)),
    %% NaN and infinite values, which only binaries can hold.
    invalid(HnswMod:insert(Index, 2, <<NaN/binary, One/binary, One/binary, One/binary>>)),
    invalid(HnswMod:insert(Index, 2, <<One/binary, Inf/binary, One/binary, One/binary>>)),
    invalid(HnswMod:insert(Index, [{2, <<NaN/binary, One/binary, One/binary, One/binary>>}])),
    invalid(HnswMod:search(Index, <<NaN/binary, One/binary, One/binary, One/binary>>, 1)),
    %% Numbers beyond float32 (they would become infinities).
    invalid(HnswMod:insert(Index, 2, [1.0e39, 0.0, 0.0, 0.0])),
    invalid(HnswMod:insert(Index, 2, [1 bsl 128, 0, 0, 0])),
    %% Neither lists of numbers nor float32 binaries.
    invalid(HnswMod:insert(Index, 2, not_a_vector)),
    invalid(HnswMod:insert(Index, 2, {1.0, 2.0, 3.0, 4.0})),
    invalid(HnswMod:insert(Index, 2, [1.0, 2.0, three, 4.0])),
    invalid(HnswMod:insert(Index, 2, [1.0, 2.0, 3.0 | 4.0])),
    invalid(HnswMod:insert(Index, 2, <<1, 2, 3>>)),
    invalid(HnswMod:insert(Index, 2, <<1:5>>)),
    ok = HnswMod:insert(Index, 3, "abcd"),                         % characters are numbers
    ?assertMatch([{3, _} | _], HnswMod:search(Index, "abcd", 1)),
    invalid(HnswMod:search(Index, #{}, 1)),
    invalid(HnswMod:insert(Index, not_a_list)),
    invalid(HnswMod:insert(Index, [{4, [1, 2, 3, 4]} | tail])),
    invalid(HnswMod:insert(Index, [{4, [1, 2, 3, 4]}, {5}])),
    invalid(HnswMod:search_batch(Index, not_a_list, 1)),
    invalid(HnswMod:search_batch(Index, [[1, 2, 3, 4] | tail], 1)),
    %% The NIF refuses what the module would not send.
    invalid(NifMod:hnsw_insert(Index, 2, [1.0, 2.0, 3.0, 4.0])),
    invalid(NifMod:hnsw_insert(Index, 2, <<1, 2, 3, 4, 5>>)),
    invalid(NifMod:hnsw_insert_batch(Index, <<1, 2, 3>>, <<>>, 0)),
    invalid(NifMod:hnsw_insert_batch(Index, <<1:64/native>>, f32([1, 2, 3]), 0)),
    invalid(NifMod:hnsw_insert_batch(Index, <<1:64/native, 2:64/native>>, f32([1, 2, 3, 4]), 0)),
    invalid(NifMod:hnsw_insert_batch(Index, <<>>, <<>>, -1)),
    invalid(NifMod:hnsw_search_batch(Index, f32([1, 2, 3]), 1, 0, false, undefined, 0)),
    ?assertMatch({error, {too_large, _}},
                 NifMod:hnsw_search_batch(Index, binary:copy(f32([1, 2, 3, 4]), 17), 1048576, 0,
                                      false, undefined, 0)),
    ?assertEqual(2, len(Index)).

bad_ids_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    HnswMod = untyped(?H),
    NifMod = untyped(?N),
    Index = new(#{dim => 2}),
    ok = HnswMod:insert(Index, 1, [1.0, 0.0]),
    %% Duplicates: one at a time and in batches.
    invalid(HnswMod:insert(Index, 1, [0.0, 1.0])),
    invalid(HnswMod:insert(Index, [{1, [0.0, 1.0]}])),
    invalid(HnswMod:insert(Index, [{2, [0.0, 1.0]}, {2, [1.0, 1.0]}])),
    %% Out of range or not integers.
    [invalid(HnswMod:insert(Index, Id, [0.0, 1.0])) || Id <- [-1, 1 bsl 64, 1.0, "1", id]],
    [invalid(HnswMod:insert(Index, [{Id, [0.0, 1.0]}])) || Id <- [-1, 1 bsl 64, 1.0]],
    [invalid(HnswMod:remove(Index, Id)) || Id <- [-1, 1 bsl 64, 1.0]],
    invalid(NifMod:hnsw_insert(Index, -1, f32([0.0, 1.0]))),
    invalid(NifMod:hnsw_insert(Index, 1 bsl 64, f32([0.0, 1.0]))),
    invalid(NifMod:hnsw_remove(Index, -1)),
    ?assertEqual(1, len(Index)).

bad_search_options_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    HnswMod = untyped(?H),
    NifMod = untyped(?N),
    Index = new(#{dim => 2}),
    ok = HnswMod:insert(Index, 1, [1.0, 0.0]),
    Q = [1.0, 0.0],
    invalid(HnswMod:search(Index, Q, -1)),
    invalid(HnswMod:search(Index, Q, 1048577)),
    invalid(HnswMod:search(Index, Q, ten)),
    invalid(HnswMod:search(Index, Q, 1, #{ef => -1})),
    invalid(HnswMod:search(Index, Q, 1, #{ef => 1048577})),
    invalid(HnswMod:search(Index, Q, 1, #{rerank => yes})),
    invalid(HnswMod:search(Index, Q, 1, #{threads => 2})),        % batches only
    invalid(HnswMod:search(Index, Q, 1, #{colour => blue})),
    invalid(HnswMod:search(Index, Q, 1, [{ef, 10}])),
    invalid(HnswMod:search_batch(Index, [Q], 1, #{threads => -1})),
    %% Huge ef and k never reach the engine (which would reserve memory for them up front).
    invalid(NifMod:hnsw_search(Index, f32(Q), 1, 1 bsl 40, false, undefined)),
    invalid(NifMod:hnsw_search(Index, f32(Q), 1 bsl 40, 0, false, undefined)),
    invalid(NifMod:hnsw_search(Index, f32(Q), 1, 0, maybe, undefined)),
    invalid(NifMod:hnsw_search(Index, f32(Q), 1, 0, false, all)),
    invalid(NifMod:hnsw_search_batch(Index, f32(Q), 1, 1 bsl 40, false, undefined, 0)),
    ?assertMatch([{1, _}], HnswMod:search(Index, Q, 1048576, #{ef => 1048576})).

%% Handles: closed ones, other kinds, references that are no handles, other terms.
bad_handles_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    HnswMod = untyped(?H),
    NifMod = untyped(?N),
    Index = new(#{dim => 2}),
    ok = HnswMod:insert(Index, 1, [1.0, 0.0]),
    ok = HnswMod:close(Index),
    ok = HnswMod:close(Index),                                   % idempotent
    Closed = fun(R) -> ?assertMatch({error, {closed, <<_/binary>>}}, R) end,
    Closed(HnswMod:insert(Index, 2, [0.0, 1.0])),
    Closed(HnswMod:insert(Index, [{2, [0.0, 1.0]}])),
    Closed(HnswMod:search(Index, [1.0, 0.0], 1)),
    Closed(HnswMod:search_batch(Index, [[1.0, 0.0]], 1)),
    Closed(HnswMod:remove(Index, 1)),
    Closed(HnswMod:compact(Index)),
    Closed(HnswMod:stats(Index)),
    Closed(HnswMod:info(Index)),
    Closed(HnswMod:save(Index, tmp_file("closed"))),
    Closed(NifMod:hnsw_insert_batch(Index, <<>>, <<>>, 0)),
    {ok, Cache} = erlmcp_flow_lru_cache:new(#{}),
    [begin
         invalid(HnswMod:insert(Bad, 1, [1.0, 0.0])),
         invalid(HnswMod:insert(Bad, [{1, [1.0, 0.0]}])),
         invalid(HnswMod:search(Bad, [1.0, 0.0], 1)),
         invalid(HnswMod:search_batch(Bad, [[1.0, 0.0]], 1)),
         invalid(HnswMod:remove(Bad, 1)),
         invalid(HnswMod:compact(Bad)),
         invalid(HnswMod:stats(Bad)),
         invalid(HnswMod:info(Bad)),
         invalid(HnswMod:save(Bad, tmp_file("bad"))),
         invalid(HnswMod:close(Bad))
     end || Bad <- [make_ref(), Cache, not_an_index, self(), <<"index">>]].

%%--------------------------------------------------------------------------------------------
%% Lifetime and concurrency
%%--------------------------------------------------------------------------------------------

%% True when the file Path is mapped into this OS process (a mapped index holds it).
mapped(Path) ->
    {ok, Maps} = file:read_file("/proc/self/maps"),
    binary:match(Maps, list_to_binary(Path)) =/= nomatch.

%% Indexes are freed when garbage collected (their owner exits) and by close/1, at once when
%% no call uses them. A mapped index shows it: its file is unmapped when it is freed.
%% (hnsw_indexes/0 counts every index of the VM: other tests' garbage may be collected
%% meanwhile, so it is only checked not to stay above its count from before.)
indexes_are_freed_test() ->
    with_file("freed", fun(Path) ->
        Index = new(#{dim => 8}),
        ok = insert1(Index, numbered(vectors(20, 8, {22, 22, 22}))),
        ok = ?H:save(Index, Path),
        ok = ?H:close(Index),
        ?assertNot(mapped(Path)),
        collect_all(),
        Before = ?N:hnsw_indexes(),
        Self = self(),
        {Pid, Mon} = spawn_monitor(
                       fun() ->
                               {ok, Mapped} = ?H:open(Path),
                               Made = [new(#{dim => 8}) || _ <- lists:seq(1, 5)],
                               Self ! {made, self(), mapped(Path), ?N:hnsw_indexes()},
                               receive exit -> {Mapped, Made} end % live until here
                       end),
        receive
            {made, Pid, true, During} -> ?assert(During >= 6)
        end,
        Pid ! exit,
        receive {'DOWN', Mon, process, Pid, normal} -> ok end,
        ?assert(wait_until(fun() -> not mapped(Path) end, 5000)),
        ?assert(wait_until(fun() -> ?N:hnsw_indexes() =< Before end, 5000)),
        %% close/1 frees at once.
        {ok, Mapped} = ?H:open(Path),
        ?assert(mapped(Path)),
        ok = ?H:close(Mapped),
        ?assertNot(mapped(Path))
    end).

%% Processes insert, search and remove on one index at once; closing it while they run ends
%% their calls with {closed, _}, never a crash, and the index is freed once they are out.
concurrent_use_and_close_test_() ->
    {timeout, 60, fun() ->
        Index = new(#{dim => ?DIM}),
        Writers = 4,
        PerWriter = 150,
        Self = self(),
        Pids = [spawn_link(
                  fun() ->
                          Vs = vectors(PerWriter, ?DIM, {23, 23, W}),
                          Ids = [W * 1000 + I || I <- lists:seq(1, PerWriter)],
                          [ok = ?H:insert(Index, Id, V) || {Id, V} <- lists:zip(Ids, Vs)],
                          _ = [[_ | _] = ?H:search(Index, V, 3) || V <- Vs],
                          [ok = ?H:remove(Index, Id) || Id <- lists:sublist(Ids, 50)],
                          Self ! {done, self()}
                  end) || W <- lists:seq(1, Writers)],
        [receive {done, Pid} -> ok end || Pid <- Pids],
        ?assertEqual(Writers * (PerWriter - 50), len(Index)),
        %% Now close while searchers and a batch run: their calls end with {closed, _} (or
        %% finish, for a call that got in first), and the index is freed once they are out.
        Q = hd(vectors(1, ?DIM, {24, 24, 24})),
        Searchers = [spawn_link(fun() -> Self ! {result, self(), search_until_closed(Index, Q)}
                                end) || _ <- lists:seq(1, 4)],
        Batch = numbered(vectors(2000, ?DIM, {25, 25, 25})),
        Inserter = spawn_link(fun() -> Self ! {result, self(), ?H:insert(Index, Batch)} end),
        ok = ?H:close(Index),
        [receive {result, P, R} -> ?assertMatch({error, {closed, _}}, R) end
         || P <- Searchers],
        receive
            {result, Inserter, InsertResult} ->
                ?assert(InsertResult =:= ok
                        orelse element(1, element(2, InsertResult)) =:= closed)
        end,
        %% The same with a mapped index, whose mapping shows when it is freed.
        with_file("closing", fun(Path) ->
            Saved = new(#{dim => ?DIM}),
            ok = insert1(Saved, numbered(vectors(200, ?DIM, {26, 26, 27}))),
            ok = ?H:save(Saved, Path),
            {ok, Mapped} = ?H:open(Path),
            MSearchers = [spawn_link(fun() ->
                                             Self ! {result, self(),
                                                     search_until_closed(Mapped, Q)}
                                     end) || _ <- lists:seq(1, 4)],
            [await_searching(P) || P <- MSearchers],
            ?assert(mapped(Path)),
            ok = ?H:close(Mapped),
            [receive {result, P, MR} -> ?assertMatch({error, {closed, _}}, MR) end
             || P <- MSearchers],
            ?assertNot(mapped(Path))
        end)
    end}.

%% Waits until process Pid has started its searches.
await_searching(Pid) ->
    case erlang:process_info(Pid, current_function) of
        {current_function, {_, search_until_closed, 2}} -> ok;
        {current_function, {?N, hnsw_search, 6}} -> ok;
        {current_function, {?H, search, 4}} -> ok;
        _ -> erlang:yield(), await_searching(Pid)
    end.

search_until_closed(Index, Q) ->
    case ?H:search(Index, Q, 5) of
        Hits when is_list(Hits) -> search_until_closed(Index, Q);
        Other -> Other
    end.

%%--------------------------------------------------------------------------------------------
%% Scheduling
%%--------------------------------------------------------------------------------------------

%% Batch inserts of a few thousand vectors, batch searches, compact and files run on dirty
%% schedulers, whatever their size.
long_calls_run_on_dirty_schedulers_test_() ->
    {timeout, 60, fun() ->
        with_file("dirty", fun(Path) ->
            Batch = [{Id, f32(V)} || {Id, V} <- numbered(vectors(4000, ?DIM, {26, 26, 26}))],
            Index = new(#{dim => ?DIM}),
            ?assertEqual({ok, true}, on_dirty(fun() -> ?H:insert(Index, Batch) end)),
            ?assertEqual(4000, len(Index)),
            Queries = [V || {_, V} <- lists:sublist(Batch, 2000)],
            {{ok, Answers}, true} =
                on_dirty(fun() -> ?H:search_batch(Index, Queries, 10, #{ef => 200}) end),
            ?assertEqual(2000, length(Answers)),
            Tiny = new(#{dim => 2}),
            ?assertEqual({ok, true}, on_dirty(fun() -> ?H:insert(Tiny, [{1, [1.0, 0.0]}]) end)),
            ?assertMatch({{ok, [[{1, _}]]}, true},
                         on_dirty(fun() -> ?H:search_batch(Tiny, [[1.0, 0.0]], 1) end)),
            ok = ?H:remove(Index, 1),
            ?assertEqual({ok, true}, on_dirty(fun() -> ?H:compact(Index) end)),
            ?assertEqual({ok, true}, on_dirty(fun() -> ?H:save(Index, Path) end)),
            ?assertMatch({{ok, _}, true}, on_dirty(fun() -> ?H:open(Path) end)),
            ?assertMatch({{ok, _}, true}, on_dirty(fun() -> ?H:load(Path) end)),
            ?assertEqual({ok, true}, on_dirty(fun() -> ?H:close(Tiny) end))
        end)
    end}.

%% With more batch inserts running than there are normal schedulers, other processes still
%% run at once: an echo answers while every insert is still inside the NIF. (If the inserts
%% held the normal schedulers, this process could not even see them all inside, or the echo
%% would only answer after one of them finished.)
batch_inserts_leave_normal_schedulers_free_test_() ->
    {timeout, 120, fun() ->
        Inserters = erlang:system_info(schedulers_online) + 2,
        Self = self(),
        Jobs = [begin
                    Index = new(#{dim => ?DIM}),
                    Vs = vectors(3000, ?DIM, {27, 27, I}),
                    Ids = << <<Id:64/native>> || Id <- lists:seq(1, 3000) >>,
                    {Index, Ids, << <<(f32(V))/binary>> || V <- Vs >>}
                end || I <- lists:seq(1, Inserters)],
        Pids = [spawn_link(fun() ->
                                   %% One engine thread each: long enough to be seen.
                                   R = ?N:hnsw_insert_batch(Index, Ids, Vs, 1),
                                   Self ! {done, self(), R}
                           end) || {Index, Ids, Vs} <- Jobs],
        [await_in_nif(Pid, hnsw_insert_batch) || Pid <- Pids],
        Echo = spawn_link(fun() -> receive {ping, From} -> From ! pong end end),
        Echo ! {ping, self()},
        receive
            pong -> ok;
            {done, _, _} = Early -> error({done_before_pong, Early})
        end,
        [receive {done, Pid, R} -> ?assertEqual(ok, R) end || Pid <- Pids],
        [?assertEqual(3000, len(Index)) || {Index, _, _} <- Jobs]
    end}.

%% A compact waits for a long batch insert to finish (it takes the index for itself); searches
%% that come meanwhile wait on dirty schedulers, so the normal schedulers stay free.
compact_never_blocks_normal_schedulers_test_() ->
    {timeout, 120, fun() ->
        Index = new(#{dim => ?DIM}),
        Small = numbered(vectors(?COUNT, ?DIM, {28, 28, 28})),
        ok = ?H:insert(Index, Small),
        [ok = ?H:remove(Index, Id) || {Id, _} <- Small, Id rem 2 =:= 0],
        Vs = vectors(6000, ?DIM, {29, 29, 29}),
        Ids = << <<Id:64/native>> || Id <- lists:seq(10000, 15999) >>,
        VsBin = << <<(f32(V))/binary>> || V <- Vs >>,
        Self = self(),
        Inserter = spawn_link(fun() ->
                                      Self ! {done, self(), ?N:hnsw_insert_batch(Index, Ids,
                                                                                 VsBin, 1)}
                              end),
        await_in_nif(Inserter, hnsw_insert_batch),
        Compactor = spawn_link(fun() -> Self ! {done, self(), ?H:compact(Index)} end),
        await_in_nif(Compactor, hnsw_compact),
        Searchers = erlang:system_info(schedulers_online) + 2,
        {_, Q} = lists:keyfind(1, 1, Small),
        SPids = [spawn_link(fun() -> Self ! {searched, self(), ?H:search(Index, Q, 1)} end)
                 || _ <- lists:seq(1, Searchers)],
        Echo = spawn_link(fun() -> receive {ping, From} -> From ! pong end end),
        Echo ! {ping, self()},
        receive
            pong -> ok;
            {done, _, _} = Early -> error({done_before_pong, Early})
        end,
        receive {done, Inserter, R1} -> ?assertEqual(ok, R1) end,
        receive {done, Compactor, R2} -> ?assertEqual(ok, R2) end,
        [receive {searched, P, R} -> ?assertMatch([{1, _}], R) end || P <- SPids],
        ?assertEqual(?COUNT div 2 + 6000, len(Index))
    end}.

%% EUnit tests of erlmcp_flow_scheduler: the original design's call shapes, results by
%% message, agents killed mid-run (every result exactly once), back-pressure, priorities,
%% dead letters, unregistering, wrong terms everywhere (clear errors, nothing lost), the raw
%% NIF's handle errors, and a restart under a supervisor that re-adopts a shared-memory
%% ledger's tasks and the agents still alive.
%%
%% No assertion depends on timing. Waits poll a condition with a deadline; "no duplicate"
%% is checked after a call to the scheduler, which answers after every message it sent before
%% (messages between two processes keep their order), so nothing can still be on its way.
-module(erlmcp_flow_scheduler_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-behaviour(supervisor).
-export([init/1]).

-define(S, erlmcp_flow_scheduler).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

%% Runs Fun() with a fresh scheduler started with Opts, and leaves none behind.
with_sched(Opts, Fun) ->
    cleanup(),
    {ok, _} = ?S:start(Opts),
    try Fun() after cleanup() end.

cleanup() ->
    case whereis(?S) of
        undefined -> ok;
        Pid ->
            Mon = monitor(process, Pid),
            exit(Pid, kill),
            receive {'DOWN', Mon, process, Pid, _} -> ok end
    end,
    case persistent_term:get({?S, sched}, undefined) of
        undefined -> ok;
        Sched -> _ = erlmcp_flow_nif:sched_close(Sched), persistent_term:erase({?S, sched})
    end,
    _ = persistent_term:erase({?S, agents}),
    flush_results().

flush_results() ->
    receive {erlmcp_flow_task, _, _} -> flush_results() after 0 -> ok end.

wait_until(Pred, Ms) when Ms =< 0 ->
    Pred();
wait_until(Pred, Ms) ->
    case Pred() of
        true -> true;
        false -> timer:sleep(2), wait_until(Pred, Ms - 2)
    end.

%% The outcomes of Ids, in a map (waits up to 10 s for each).
collect(Ids) ->
    maps:from_list([receive {erlmcp_flow_task, Id, Outcome} -> {Id, Outcome}
                    after 10000 -> error({no_result, Id})
                    end || Id <- Ids]).

%% Every erlmcp_flow_task message already sent to us: call the scheduler first, so that any
%% message it sent before its answer is in the mailbox.
leftover_results() ->
    {ok, _} = ?S:stats(),
    leftover_results([]).

leftover_results(Acc) ->
    receive {erlmcp_flow_task, Id, Outcome} -> leftover_results([{Id, Outcome} | Acc])
    after 0 -> lists:reverse(Acc)
    end.

%% An agent that takes deliveries and never answers (it holds its tasks until it dies).
stuck_agent(Parent) ->
    spawn(fun() -> stuck_loop(Parent) end).

stuck_loop(Parent) ->
    receive
        {erlmcp_flow_task, deliver, Id, _Attempt, _Payload} ->
            Parent ! {held, self(), Id},
            stuck_loop(Parent);
        _ ->
            stuck_loop(Parent)
    end.

current_tasks(Agent) ->
    {ok, #{current_tasks := N}} = ?S:get_agent_load(Agent),
    N.

kill(Pid) ->
    Mon = monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', Mon, process, Pid, _} -> ok end.

tmp_dir(Tag) ->
    Dir = filename:join(["/tmp", io_lib:format("emf-erl-sched-~s-~s-~b",
                                               [Tag, os:getpid(),
                                                erlang:unique_integer([positive])])]),
    ok = filelib:ensure_path(Dir),
    Dir.

%%--------------------------------------------------------------------------------------------
%% The original design's calls
%%--------------------------------------------------------------------------------------------

call_shapes_test() ->
    with_sched(#{}, fun() ->
        Me = self(),
        Worker = ?S:spawn_agent(fun({add, A, B}) -> A + B end),
        ok = ?S:register_agent(<<"adder-1">>, #{type => <<"math">>, max_tasks => 2,
                                                  pid => Worker}),
        ok = ?S:register_agent(adder_2, #{type => math, pid => ?S:spawn_agent(
                                                               fun(_Id, {add, A, B}) -> A + B
                                                               end)}),
        ?assertMatch({ok, <<"adder-", _>>}, ?S:select_agent(<<"math">>)),
        ?assertEqual({error, no_capacity}, ?S:select_agent(<<"nobody">>)),
        {ok, Id1} = ?S:assign_task(<<"math">>, {add, 1, 2}),
        {ok, Id2} = ?S:assign_task("math", {add, 3, 4}, #{priority => critical}),
        ?assertEqual(#{Id1 => {ok, 3}, Id2 => {ok, 7}}, collect([Id1, Id2])),
        %% assign_task/1: the default type.
        {ok, _} = ?S:spawn_agent(<<"any">>, #{handler => fun(X) -> {echo, X} end}),
        {ok, Id3} = ?S:assign_task(hello),
        ?assertEqual(#{Id3 => {ok, {echo, hello}}}, collect([Id3])),
        %% reply_to: the result goes there.
        {ok, Id4} = ?S:assign_task(default, {to, Me}, #{reply_to => Me, priority => low}),
        ?assertEqual(#{Id4 => {ok, {echo, {to, Me}}}}, collect([Id4])),
        %% Loads: counted by the engine; update_agent_load/2 sets the capacity.
        {ok, L} = ?S:get_agent_load(<<"adder-1">>),
        ?assertMatch(#{current_tasks := 0, backlog := 0, max_tasks := 2, load := 0.0}, L),
        ok = ?S:update_agent_load(<<"adder-1">>, #{max_tasks => 7}),
        ?assertMatch({ok, #{max_tasks := 7}}, ?S:get_agent_load(<<"adder-1">>)),
        ?assertEqual(3, length(?S:agents())),
        {ok, Stats} = ?S:stats(),
        ?assertMatch(#{completed := 4, agents := 3, pending := 0, duplicates := 0}, Stats),
        ok = ?S:unregister_agent(<<"adder-1">>),
        ?assertMatch({error, {not_found, _}}, ?S:get_agent_load(<<"adder-1">>)),
        ?assertEqual({ok, <<"adder_2">>}, ?S:select_agent(math)),
        ?assertEqual([], leftover_results())
    end).

%% The result of a task that a stuck agent holds is not invented: it stays pending until the
%% agent answers.
a_late_answer_completes_the_task_test() ->
    with_sched(#{}, fun() ->
        Agent = stuck_agent(self()),
        ok = ?S:register_agent(<<"slow">>, #{pid => Agent}),
        {ok, Id} = ?S:assign_task({job, 1}),
        receive {held, Agent, Id} -> ok after 5000 -> error(not_delivered) end,
        ?assertEqual([], leftover_results()),
        ?assertEqual(1, current_tasks(<<"slow">>)),
        %% Anyone may answer for the agent (the engine takes the first result).
        ok = ?S:started(Id, 1),
        ok = ?S:ack(Id, 1, done),
        ?assertEqual(#{Id => {ok, done}}, collect([Id])),
        %% The task has ended: a later answer changes nothing and says so.
        ?assertMatch({error, {not_found, _}}, ?S:ack(Id, 1, again)),
        ?assertMatch({ok, #{completed := 1, pending := 0}}, ?S:stats()),
        ?assertEqual([], leftover_results())
    end).

%%--------------------------------------------------------------------------------------------
%% Zero loss, exactly one result
%%--------------------------------------------------------------------------------------------

%% 200 tasks over 5 agent processes; 2 of them take tasks and are killed while holding them:
%% every task's result arrives exactly once, and is right. Without work stealing the tasks
%% the victims held are all redelivered; with it (the default), idle agents may also have
%% stolen some of them before the kill.
kills_lose_nothing_and_duplicate_nothing_test_() ->
    {timeout, 60, [fun() -> kills_lose_nothing(false) end,
                   fun() -> kills_lose_nothing(true) end]}.

kills_lose_nothing(Stealing) ->
    with_sched(#{max_attempts => 5, work_stealing => Stealing}, fun() ->
        Good = [begin
                    {ok, P} = ?S:spawn_agent(iolist_to_binary(["good-", integer_to_list(I)]),
                                             #{type => w, max_tasks => 3,
                                               handler => fun(N) -> N * 2 end}),
                    P
                end || I <- [1, 2, 3]],
        Victims = [begin
                       P = stuck_agent(self()),
                       ok = ?S:register_agent(iolist_to_binary(["victim-", integer_to_list(I)]),
                                              #{type => w, max_tasks => 5, pid => P}),
                       P
                   end || I <- [1, 2]],
        Ids = [begin {ok, Id} = ?S:assign_task(w, N), {Id, N} end || N <- lists:seq(1, 200)],
        %% Both victims have been delivered tasks (mid-run); then they are killed.
        First = [receive {held, V, Id} -> Id after 5000 -> error(victim_idle) end
                 || V <- Victims],
        Held = First ++ [Id || {Id, _} <- Ids, received_held(Id)],
        lists:foreach(fun kill/1, Victims),
        Results = collect([Id || {Id, _} <- Ids]),
        ?assertEqual(maps:from_list([{Id, {ok, N * 2}} || {Id, N} <- Ids]), Results),
        ?assertEqual([], leftover_results()),
        {ok, Stats} = ?S:stats(),
        ?assertMatch(#{completed := 200, dead_lettered := 0, agents_dead := 2, pending := 0,
                       queued := 0, leased := 0}, Stats),
        Moved = maps:get(redeliveries, Stats) + maps:get(steals, Stats),
        ?assert(Moved >= length(Held)),
        Stealing orelse ?assertEqual(0, maps:get(steals, Stats)),
        ?assertEqual(3, length(?S:agents())),
        [?assert(is_process_alive(P)) || P <- Good]
    end).

received_held(Id) ->
    receive {held, _, Id} -> true after 0 -> false end.

%%--------------------------------------------------------------------------------------------
%% Back-pressure, priorities, dead letters, unregistering
%%--------------------------------------------------------------------------------------------

backpressure_is_an_answer_and_nothing_is_dropped_test() ->
    with_sched(#{max_queued => 2}, fun() ->
        {ok, A} = ?S:assign_task(t, 1),
        {ok, B} = ?S:assign_task(t, 2),
        ?assertMatch({error, {full, _}}, ?S:assign_task(t, 3)),
        ?assertEqual({ok, 2}, ?S:queued(t)),
        ?assertEqual({ok, 0}, ?S:queued(<<"other">>)),
        {ok, _} = ?S:spawn_agent(<<"w">>, #{type => t, handler => fun(X) -> X end}),
        ?assertEqual(#{A => {ok, 1}, B => {ok, 2}}, collect([A, B])),
        {ok, C} = ?S:assign_task(t, 3),
        ?assertEqual(#{C => {ok, 3}}, collect([C]))
    end).

critical_tasks_overtake_test() ->
    with_sched(#{}, fun() ->
        Me = self(),
        Lows = [begin {ok, Id} = ?S:assign_task(t, {low, I}, #{priority => low}), Id end
                || I <- [1, 2, 3]],
        {ok, Crit} = ?S:assign_task(t, crit, #{priority => critical}),
        {ok, _} = ?S:spawn_agent(<<"one">>, #{type => t, max_tasks => 1,
                                              handler => fun(X) -> Me ! {ran, X}, X end}),
        _ = collect([Crit | Lows]),
        Order = [receive {ran, X} -> X end || _ <- [1, 2, 3, 4]],
        ?assertEqual([crit, {low, 1}, {low, 2}, {low, 3}], Order)
    end).

failing_tasks_are_dead_lettered_with_their_reason_test() ->
    with_sched(#{max_attempts => 2}, fun() ->
        {ok, _} = ?S:spawn_agent(<<"bad">>, #{type => t,
                                              handler => fun(X) -> fail_on_x(X) end}),
        {ok, Id} = ?S:assign_task(t, x),
        #{Id := {dead_letter, Reason}} = collect([Id]),
        ?assert(is_binary(Reason)),
        ?assertMatch({ok, #{dead_lettered := 1}}, ?S:stats()),
        ?assertEqual([], leftover_results())
    end).

fail_on_x(x) -> error(boom);
fail_on_x(Other) -> Other.

unregistering_hands_the_tasks_to_another_agent_test() ->
    with_sched(#{}, fun() ->
        Stuck = stuck_agent(self()),
        ok = ?S:register_agent(<<"stuck">>, #{type => t, pid => Stuck}),
        {ok, Id} = ?S:assign_task(t, 21),
        receive {held, Stuck, Id} -> ok after 5000 -> error(not_delivered) end,
        {ok, _} = ?S:spawn_agent(<<"ok">>, #{type => t, handler => fun(X) -> X * 2 end}),
        ok = ?S:unregister_agent(<<"stuck">>),
        ?assertEqual(#{Id => {ok, 42}}, collect([Id])),
        ?assertMatch({error, {not_found, _}}, ?S:unregister_agent(<<"stuck">>))
    end).

%% A scheduler stopped in order with a memory ledger tells the submitters of the tasks left.
an_orderly_stop_reports_the_tasks_left_test() ->
    cleanup(),
    {ok, _} = ?S:start(#{}),
    {ok, Id} = ?S:assign_task(nobody, x),
    ok = ?S:stop(),
    ?assertEqual(#{Id => {dead_letter, <<"scheduler stopped">>}}, collect([Id])),
    ?assertMatch({error, {closed, _}}, ?S:assign_task(nobody, y)),
    ?assertEqual(undefined, persistent_term:get({?S, sched}, undefined)).

%%--------------------------------------------------------------------------------------------
%% Wrong terms
%%--------------------------------------------------------------------------------------------

bad_options_are_clear_errors_test() ->
    cleanup(),
    Bad = [untyped(not_a_map), #{bogus => 1}, #{ledger => untyped(disk)},
           #{ledger => {shm, untyped(42)}}, #{ledger => {file, untyped(#{})}},
           #{tick_ms => 0}, #{default_type => untyped({x})},
           #{strategy => untyped(fastest)}, #{max_queued => 0}, #{max_queued => untyped(-1)},
           #{max_attempts => 0}, #{lease_factor => untyped(fast)}, #{ewma_alpha => 2.0},
           #{work_stealing => untyped(maybe)}, #{min_lease_us => 10, max_lease_us => 5}],
    [?assertMatch({{error, {invalid_argument, M}}, _} when is_binary(M),
                  {?S:start(untyped(O)), O})
     || O <- Bad],
    ?assertEqual(undefined, whereis(?S)).

bad_arguments_are_clear_errors_and_lose_nothing_test() ->
    with_sched(#{}, fun() ->
        {ok, Id} = ?S:assign_task(t, kept),
        Inv = fun(R) -> ?assertMatch({error, {invalid_argument, M}} when is_binary(M), R) end,
        Inv(?S:register_agent(untyped(42), #{})),
        Inv(?S:register_agent(<<"..">>, #{})),
        Inv(?S:register_agent(<<"">>, #{})),
        Inv(?S:register_agent(<<"a">>, untyped(not_a_map))),
        Inv(?S:register_agent(<<"a">>, #{pid => untyped(self_pid)})),
        Inv(?S:register_agent(<<"a">>, #{max_tasks => untyped(0)})),
        Inv(?S:register_agent(<<"a">>, untyped(#{bogus => 1}))),
        Inv(?S:register_agent(<<"a">>, #{type => untyped({t})})),
        Inv(?S:register_agent(<<"a">>, #{type => <<"bad\0type">>})),
        Inv(?S:select_agent(untyped(3.5))),
        Inv(?S:assign_task(t, x, #{priority => untyped(urgent)})),
        Inv(?S:assign_task(t, x, #{reply_to => untyped(me)})),
        Inv(?S:assign_task(t, x, untyped([]))),
        Inv(?S:assign_task(t, x, untyped(#{bogus => 1}))),
        Inv(?S:assign_task(untyped({t}), x)),
        Inv(?S:ack(untyped(task), 1, r)),
        Inv(?S:nack(untyped(-1), 1, r)),
        ?assertMatch({error, {not_found, _}}, ?S:ack(Id + 1000, 1, r)),
        Inv(?S:update_agent_load(<<"a">>, untyped(5))),
        Inv(?S:update_agent_load(<<"a">>, #{max_tasks => untyped(0)})),
        ?assertMatch({error, {not_found, _}},
                     ?S:update_agent_load(<<"nobody">>, #{max_tasks => 2})),
        ?assertMatch({error, {not_found, _}}, ?S:get_agent_load(<<"nobody">>)),
        Inv(?S:get_agent_load(untyped(#{}))),
        Inv(?S:unregister_agent(untyped([1.0]))),
        Inv(?S:spawn_agent(<<"a">>, untyped(#{handler => not_a_fun}))),
        Inv(gen_server:call(?S, untyped(unknown_request))),
        %% Messages the server does not know are ignored; started/2 with nonsense too.
        ?S ! hello,
        ok = ?S:started(untyped(x), untyped(y)),
        %% The task accepted before all this still completes.
        {ok, _} = ?S:spawn_agent(<<"w">>, #{type => t, handler => fun(X) -> X end}),
        ?assertEqual(#{Id => {ok, kept}}, collect([Id])),
        ?assertEqual([], leftover_results())
    end).

%% The raw NIF: wrong handles, closed handles, wrong argument types are error terms.
nif_handle_errors_test() ->
    N = erlmcp_flow_nif,
    Inv = fun(R) -> ?assertMatch({error, {invalid_argument, M}} when is_binary(M), R) end,
    Inv(N:sched_new(untyped(x), memory, undefined, undefined, 0)),
    Inv(N:sched_new(#{}, untyped(disk), undefined, undefined, 0)),
    Inv(N:sched_new(#{}, memory, undefined, undefined, untyped(-1))),
    Inv(N:sched_new(#{max_queued => untyped(1.5)}, memory, undefined, undefined, 0)),
    {ok, H} = N:sched_new(#{}, memory, undefined, undefined, 0),
    Inv(N:sched_tick(untyped(make_ref()), 1)),
    Inv(N:sched_submit(untyped(self()), <<"t">>, normal, <<>>, 1)),
    Inv(N:sched_submit(H, <<"t">>, untyped(urgent), <<>>, 1)),
    Inv(N:sched_submit(H, <<"t">>, normal, untyped(atom), 1)),
    Inv(N:sched_started(H, <<"a">>, untyped(0), 1, 1)),
    Inv(N:sched_ack(H, <<"a">>, 1, untyped(-1), 1, <<>>)),
    Inv(N:sched_nack(H, <<"a">>, 1, 1, 1, <<"bad\0reason">>)),
    Inv(N:sched_poll(H, untyped(0))),
    Inv(N:sched_register_agent(H, <<"a">>, <<"t">>, untyped(-5), 1, 1)),
    ?assertMatch({error, {not_found, _}}, N:sched_agent_dead(H, <<"a">>, 1)),
    ?assertMatch({error, {not_found, _}}, N:sched_ack(H, <<"a">>, 77, 1, 1, <<>>)),
    {ok, 1} = N:sched_submit(H, <<"t">>, normal, <<"p">>, 1),
    ok = N:sched_register_agent(H, <<"a">>, <<"t">>, 1, 9, 2),
    ?assertMatch({ok, [{deliver, <<"a">>, 1, 1, _, <<"p">>}], false}, N:sched_poll(H, 10)),
    ok = N:sched_close(H),
    ok = N:sched_close(H),
    ?assertMatch({error, {closed, _}}, N:sched_tick(H, 3)),
    ?assertMatch({error, {closed, _}}, N:sched_stats(H)).

%%--------------------------------------------------------------------------------------------
%% Restarts
%%--------------------------------------------------------------------------------------------

%% Killed under a supervisor, the scheduler comes back on its shared-memory ledger: the tasks
%% it had accepted are delivered and their results sent to their submitters; the agent still
%% alive is registered again by itself.
restart_readopts_a_shm_ledger_test_() ->
    {timeout, 30, fun restart_readopts_a_shm_ledger/0}.

restart_readopts_a_shm_ledger() ->
    cleanup(),
    Dir = tmp_dir("shm"),
    Opts = #{ledger => {shm, <<"sched">>, list_to_binary(Dir)}, shm_capacity => 1 bsl 20},
    {ok, Sup} = supervisor:start_link(?MODULE, Opts),
    try
        Me = self(),
        %% One agent, alive across the restart, and tasks of a type nobody serves yet.
        {ok, Alive} = ?S:spawn_agent(<<"alive">>, #{type => a,
                                                    handler => fun(X) -> {a, X} end}),
        Queued = [begin {ok, Id} = ?S:assign_task(b, I), Id end || I <- [1, 2, 3]],
        Old = whereis(?S),
        kill(Old),
        true = wait_until(fun() -> is_pid(whereis(?S)) andalso whereis(?S) =/= Old end, 5000),
        ?assertMatch([{<<"alive">>, Alive, <<"a">>}], ?S:agents()),
        ?assertMatch({ok, #{queued := 3}}, ?S:stats()),
        {ok, _} = ?S:spawn_agent(<<"b1">>, #{type => b, handler => fun(X) -> {b, X} end}),
        ?assertEqual(maps:from_list(lists:zip(Queued, [{ok, {b, I}} || I <- [1, 2, 3]])),
                     collect(Queued)),
        {ok, New} = ?S:assign_task(a, x, #{reply_to => Me}),
        ?assert(lists:all(fun(Q) -> New > Q end, Queued)), % ids go on after the recovered
        ?assertEqual(#{New => {ok, {a, x}}}, collect([New])),
        ?assertEqual([], leftover_results())
    after
        unlink(Sup),
        kill(Sup),
        cleanup(),
        _ = file:del_dir_r(Dir)
    end.

file_ledger_keeps_tasks_across_a_stop_test() ->
    cleanup(),
    Dir = tmp_dir("file"),
    Path = filename:join(Dir, "ledger"),
    try
        {ok, _} = ?S:start(#{ledger => {file, Path}}),
        {ok, Id} = ?S:assign_task(t, 5),
        ok = ?S:stop(),
        %% A durable ledger keeps the task: no dead letter at the stop.
        ?assertEqual([], leftover(Id)),
        {ok, _} = ?S:start(#{ledger => {file, list_to_binary(Path)}}),
        {ok, _} = ?S:spawn_agent(<<"w">>, #{type => t, handler => fun(X) -> X + 1 end}),
        ?assertEqual(#{Id => {ok, 6}}, collect([Id]))
    after
        cleanup(),
        _ = file:del_dir_r(Dir)
    end.

leftover(Id) ->
    receive {erlmcp_flow_task, Id, O} -> [O] after 0 -> [] end.

init(Opts) ->
    {ok, {#{strategy => one_for_one, intensity => 3, period => 10},
          [#{id => ?S, start => {?S, start_link, [Opts]}}]}}.

%% EUnit tests of erlmcp_flow_pool_manager: warm-up to min_size, replacement of a killed
%% agent, growth under demand up to max_size and never beyond, shrinking of idle agents back
%% to min_size, failed starts, OS-process agents (`cat'), adoption of a killed manager's
%% agents, bad options.
%%
%% No assertion depends on timing: waits poll a condition with a deadline.
-module(erlmcp_flow_pool_manager_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-define(P, erlmcp_flow_pool_manager).
-define(S, erlmcp_flow_scheduler).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

%% Runs Fun() with a fresh scheduler and a pool manager started with Opts; leaves neither.
with_pool(Opts, Fun) ->
    cleanup(),
    {ok, _} = ?S:start(#{}),
    try
        {ok, _} = ?P:start(Opts),
        Fun()
    after
        cleanup()
    end.

cleanup() ->
    _ = ?P:stop(),
    kill_registered(?P),
    case persistent_term:get({?P, pool}, undefined) of
        undefined -> ok;
        Pool -> _ = erlmcp_flow_nif:pool_close(Pool), persistent_term:erase({?P, pool})
    end,
    _ = [exit(Pid, kill) || {_, Pid} <- maps:to_list(persistent_term:get({?P, agents}, #{}))],
    _ = persistent_term:erase({?P, agents}),
    _ = ?S:stop(),
    kill_registered(?S),
    case persistent_term:get({?S, sched}, undefined) of
        undefined -> ok;
        Sched -> _ = erlmcp_flow_nif:sched_close(Sched), persistent_term:erase({?S, sched})
    end,
    _ = persistent_term:erase({?S, agents}),
    ok.

kill_registered(Name) ->
    case whereis(Name) of
        undefined -> ok;
        Pid -> kill(Pid)
    end.

kill(Pid) ->
    Mon = monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', Mon, process, Pid, _} -> ok end.

wait_until(Pred, Ms) when Ms =< 0 ->
    Pred();
wait_until(Pred, Ms) ->
    case Pred() of
        true -> true;
        false -> timer:sleep(2), wait_until(Pred, Ms - 2)
    end.

stat(Key) ->
    {ok, Stats} = ?P:stats(),
    maps:get(Key, Stats).

live_pids() ->
    [Pid || {_, Pid} <- ?P:agents()].

%% The scheduler's agents of Type.
sched_agents(Type) ->
    lists:sort([Id || {Id, _, T} <- ?S:agents(), T =:= Type]).

%%--------------------------------------------------------------------------------------------
%% Tests
%%--------------------------------------------------------------------------------------------

warm_up_to_min_size_and_serve_test() ->
    with_pool(#{type => w, min_size => 3, max_size => 5, warmup_delay => 1,
                handler => fun(X) -> X * 2 end}, fun() ->
        true = wait_until(fun() -> stat(live) =:= 3 end, 5000),
        ok = ?P:ensure_min_pool(),
        ?assertEqual(3, length(?P:agents())),
        ?assertEqual(lists:sort([Id || {Id, _} <- ?P:agents()]), sched_agents(<<"w">>)),
        ?assertMatch(#{live := 3, starting := 0, started_total := 3, failed_starts := 0,
                       agents := 3}, element(2, ?P:stats())),
        Ids = [begin {ok, Id} = ?S:assign_task(w, N), {Id, N} end || N <- lists:seq(1, 20)],
        [receive {erlmcp_flow_task, Id, R} -> ?assertEqual({ok, N * 2}, R)
         after 10000 -> error({no_result, Id})
         end || {Id, N} <- Ids]
    end).

a_killed_agent_is_replaced_test() ->
    with_pool(#{type => w, min_size => 2, max_size => 4, warmup_delay => 0}, fun() ->
        true = wait_until(fun() -> stat(live) =:= 2 end, 5000),
        [Victim, Survivor] = live_pids(),
        kill(Victim),
        true = wait_until(fun() ->
                                  Pids = live_pids(),
                                  length(Pids) =:= 2 andalso not lists:member(Victim, Pids)
                          end, 5000),
        ?assert(lists:member(Survivor, live_pids())),
        ?assertMatch(#{died := 1, replaced := 1, live := 2}, element(2, ?P:stats())),
        %% The dead agent is gone from the scheduler too; the new one is there.
        true = wait_until(fun() -> length(sched_agents(<<"w">>)) =:= 2 end, 5000),
        ?assertEqual(lists:sort([Id || {Id, _} <- ?P:agents()]), sched_agents(<<"w">>))
    end).

%% Tasks that block their agents: the pool grows under demand to max_size and never beyond;
%% once they are released, every result arrives and idle agents above min_size are stopped.
grows_to_max_size_then_shrinks_to_min_size_test_() ->
    {timeout, 30, fun grows_then_shrinks/0}.

grows_then_shrinks() ->
    Me = self(),
    Handler = fun(N) -> Me ! {running, self(), N}, receive go -> N end end,
    with_pool(#{type => b, min_size => 1, max_size => 3, warmup_delay => 0, tick_ms => 5,
                idle_timeout => 50, max_tasks => 1, handler => Handler}, fun() ->
        true = wait_until(fun() -> stat(live) =:= 1 end, 5000),
        Ids = [begin {ok, Id} = ?S:assign_task(b, N), Id end || N <- lists:seq(1, 6)],
        %% Three agents end up running one task each; never more than max_size.
        Running = [receive {running, Pid, _} -> Pid after 10000 -> error(no_growth) end
                   || _ <- [1, 2, 3]],
        ?assertEqual(3, length(lists:usort(Running))),
        {ok, #{live := Live, starting := Starting}} = ?P:stats(),
        ?assert(Live + Starting =< 3),
        ?assertEqual({ok, 3}, ?S:queued(b)),
        ?assertEqual(3, length(?P:agents())),
        %% Release every task as it runs.
        [P ! go || P <- Running],
        Rest = [receive {running, Pid, _} -> Pid ! go, Pid after 10000 -> error(stuck) end
                || _ <- [4, 5, 6]],
        ?assertEqual(6, length(Running ++ Rest)),
        [receive {erlmcp_flow_task, Id, {ok, _}} -> ok after 10000 -> error({no_result, Id})
         end || Id <- Ids],
        %% Idle for 50 ms above min_size: stopped, down to min_size, never below.
        true = wait_until(fun() -> stat(live) =:= 1 end, 10000),
        ?assertEqual(2, stat(stopped_total)),
        ?assertEqual(1, length(sched_agents(<<"b">>))),
        ?assertEqual(0, stat(died))
    end).

failed_starts_are_counted_and_nothing_is_registered_test() ->
    Start = fun() -> {error, no_way} end,
    _ = with_pool(#{type => f, min_size => 2, warmup_delay => 0, max_backoff => 20,
                start => Start}, fun() ->
        true = wait_until(fun() -> stat(failed_starts) >= 2 end, 5000),
        ?assertEqual(0, stat(live)),
        ?assertEqual([], sched_agents(<<"f">>))
    end),
    %% A start that raises or answers nonsense fails the same way; so does one whose
    %% registration the scheduler refuses (a bad agent id prefix).
    _ = [with_pool(O#{type => f, min_size => 1, warmup_delay => 0}, fun() ->
         true = wait_until(fun() -> stat(failed_starts) >= 1 end, 5000),
         ?assertEqual(0, stat(live)),
         ?assertEqual([], sched_agents(<<"f">>))
     end)
     || O <- [#{start => fun() -> crash(crash) end},
              #{start => {erlang, make_ref, []}},
              #{prefix => <<".hidden">>}]].

%% Raises for `crash' (the argument's type is unknown to Dialyzer, as a real start's would be).
crash(How) ->
    case untyped(How) of
        crash -> error(crash);
        Other -> {error, Other}
    end.

%% An OS-process agent: `cat' echoes each frame, so each result is its task.
command_agents_test() ->
    with_pool(#{type => sh, min_size => 1, warmup_delay => 0, start => {command, "cat"}},
              fun() ->
        true = wait_until(fun() -> stat(live) =:= 1 end, 5000),
        Ids = [begin {ok, Id} = ?S:assign_task(sh, <<"job ", B>>), {Id, B} end
               || B <- [$a, $b, $c]],
        [receive {erlmcp_flow_task, Id, R} -> ?assertEqual({ok, <<"job ", B>>}, R)
         after 10000 -> error({no_result, Id})
         end || {Id, B} <- Ids],
        %% A task that is not a binary cannot go to a program: a clear dead letter.
        {ok, Bad} = ?S:assign_task(sh, {not_a_binary}),
        receive {erlmcp_flow_task, Bad, {dead_letter, Reason}} ->
            ?assertNotEqual(nomatch, binary:match(Reason, <<"binary payloads">>))
        after 10000 -> error(no_dead_letter)
        end
    end).

%% kill -9 of an OS-process agent is its death: it is replaced and the pool serves on.
a_killed_os_process_agent_is_replaced_test() ->
    with_pool(#{type => sh, min_size => 1, warmup_delay => 0, start => {command, "cat"}},
              fun() ->
        true = wait_until(fun() -> stat(live) =:= 1 end, 5000),
        [Proxy] = live_pids(),
        {links, Links} = process_info(Proxy, links),
        [OsPid] = [P || Port <- Links, is_port(Port),
                        {os_pid, P} <- [erlang:port_info(Port, os_pid)]],
        _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
        true = wait_until(fun() ->
                                  case live_pids() of
                                      [New] -> New =/= Proxy;
                                      _ -> false
                                  end
                          end, 5000),
        ?assertMatch(#{died := 1, replaced := 1}, element(2, ?P:stats())),
        {ok, Id} = ?S:assign_task(sh, <<"after">>),
        receive {erlmcp_flow_task, Id, R} -> ?assertEqual({ok, <<"after">>}, R)
        after 10000 -> error(no_result)
        end
    end).

a_restarted_manager_adopts_the_live_agents_test() ->
    with_pool(#{type => w, min_size => 2, warmup_delay => 0}, fun() ->
        true = wait_until(fun() -> stat(live) =:= 2 end, 5000),
        Before = lists:sort(live_pids()),
        kill(whereis(?P)),
        {ok, _} = ?P:start(#{type => w, min_size => 2, warmup_delay => 0}),
        ?assertEqual(Before, lists:sort(live_pids())),
        ?assertEqual(2, stat(live)),
        ?assertEqual(2, length(sched_agents(<<"w">>))),
        %% An orderly stop ends the pool's agents.
        Mons = [monitor(process, P) || P <- Before],
        ok = ?P:stop(),
        [receive {'DOWN', M, process, _, _} -> ok after 5000 -> error(not_stopped) end
         || M <- Mons],
        ?assertEqual([], sched_agents(<<"w">>))
    end).

bad_options_are_clear_errors_test() ->
    cleanup(),
    Bad = [untyped(not_a_map), #{bogus => 1}, #{type => untyped({t})},
           #{max_tasks => 0}, #{tick_ms => 0}, #{start => untyped(nope)},
           #{handler => untyped(fun() -> ok end)}, #{prefix => untyped(1.5)},
           #{idle_timeout => untyped(-1)}, #{warmup_delay => untyped(soon)},
           #{min_size => 5, max_size => 2}, #{max_size => 0}, #{min_size => untyped(-1)}],
    [?assertMatch({{error, {invalid_argument, M}}, _} when is_binary(M),
                  {?P:start(untyped(O)), O})
     || O <- Bad],
    ?assertEqual(undefined, whereis(?P)),
    ?assertMatch({error, {closed, _}}, ?P:ensure_min_pool()),
    ?assertMatch({error, {closed, _}}, ?P:stats()),
    ?assertEqual([], ?P:agents()).

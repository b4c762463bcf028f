%% Tests of erlmcp_flow_gossip: three members of one VM over rings (a directory under
%% /dev/shm) spread a put and a delete, report them and a leaving and a stopped member to
%% subscribers; two members over TCP; bad configurations and arguments.
-module(erlmcp_flow_gossip_tests).

-include_lib("eunit/include/eunit.hrl").

tmp_dir(Tag) ->
    Base = case filelib:is_dir("/dev/shm") of
               true -> "/dev/shm";
               false -> "/tmp"
           end,
    Dir = filename:join(Base, io_lib:format("emf-erl-~s-~s-~b",
                                            [Tag, os:getpid(),
                                             erlang:unique_integer([positive])])),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.

fast(Config) ->
    Config#{gossip_interval => 20, probe_period => 100, suspicion_timeout => 1000,
            generation => 1}.

ring_member(Dir, Id, N, Name) ->
    Peers = [P || P <- lists:seq(1, N), P =/= Id],
    Seeds = case Id of 1 -> []; _ -> [1] end,
    {ok, Pid} = erlmcp_flow_gossip:start(
                  fast(#{id => Id, dir => Dir, peers => Peers, seeds => Seeds,
                         inbox_capacity => 65536, name => Name})),
    Pid.

%% Waits (bounded) until `F()' holds.
eventually(What, F) ->
    eventually(What, F, erlang:monotonic_time(millisecond) + 20000).

eventually(What, F, Deadline) ->
    case F() of
        true ->
            ok;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({timeout, What});
                false -> timer:sleep(10), eventually(What, F, Deadline)
            end
    end.

%% The next subscription message matching `Pred' (others are skipped), within 20 s.
next_msg(Pred) ->
    receive
        {erlmcp_flow_gossip, _, _} = M ->
            case Pred(M) of
                true -> M;
                false -> next_msg(Pred)
            end
    after 20000 ->
        error(no_matching_message)
    end.

ring_cluster_test_() ->
    {timeout, 120, fun ring_cluster/0}.

ring_cluster() ->
    Dir = tmp_dir("gossip"),
    try
        %% Member 1 under the default name: the calls without a server argument.
        M1 = ring_member(Dir, 1, 3, erlmcp_flow_gossip),
        M2 = ring_member(Dir, 2, 3, undefined),
        M3 = ring_member(Dir, 3, 3, undefined),
        eventually(formed, fun() ->
            erlmcp_flow_gossip:live_members(M1) =:= [2, 3] andalso
                erlmcp_flow_gossip:live_members(M2) =:= [1, 3] andalso
                erlmcp_flow_gossip:live_members(M3) =:= [1, 2]
        end),
        ?assertMatch([#{id := 2, state := alive, generation := 1, incarnation := _},
                      #{id := 3}], lists:sort(erlmcp_flow_gossip:members())),
        ok = erlmcp_flow_gossip:subscribe(),
        ok = erlmcp_flow_gossip:subscribe(),
        {ok, C} = erlmcp_flow_gossip:put(M2, <<"agent/7">>, <<"host-2">>),
        ?assert(C > 0),
        {ok, R1} = erlmcp_flow_gossip:gossip_round(M2),
        {ok, R2} = erlmcp_flow_gossip:gossip_round(M2),
        ?assert(R2 > R1),
        ?assertEqual({erlmcp_flow_gossip, changed, {<<"agent/7">>, <<"host-2">>}},
                     next_msg(fun({_, K, _}) -> K =:= changed end)),
        ?assertEqual({ok, <<"host-2">>}, erlmcp_flow_gossip:get(<<"agent/7">>)),
        eventually(spread, fun() ->
            erlmcp_flow_gossip:get(M3, <<"agent/7">>) =:= {ok, <<"host-2">>}
        end),
        ?assertEqual({error, not_found}, erlmcp_flow_gossip:get(<<"missing">>)),
        %% A delete on member 3 arrives as `deleted'.
        ?assertEqual({ok, true}, erlmcp_flow_gossip:delete(M3, <<"agent/7">>)),
        ?assertEqual({ok, false}, erlmcp_flow_gossip:delete(M3, <<"agent/7">>)),
        ?assertEqual({erlmcp_flow_gossip, changed, {<<"agent/7">>, deleted}},
                     next_msg(fun({_, K, _}) -> K =:= changed end)),
        eventually(deleted, fun() ->
            erlmcp_flow_gossip:get(<<"agent/7">>) =:= {error, not_found}
        end),
        %% Member 3 leaves; member 2 stops without leaving (a crash): both reported down.
        ok = erlmcp_flow_gossip:leave(M3),
        ?assertEqual({erlmcp_flow_gossip, member_down, 3},
                     next_msg(fun({_, K, _}) -> K =:= member_down end)),
        ok = erlmcp_flow_gossip:stop(M2),
        ?assertEqual({erlmcp_flow_gossip, member_down, 2},
                     next_msg(fun({_, K, _}) -> K =:= member_down end)),
        ?assertEqual([], erlmcp_flow_gossip:live_members(M1)),
        {ok, #{rounds := Rounds, rejected := 0, frames_in := In}} =
            erlmcp_flow_gossip:stats(M1),
        ?assert(Rounds > 0 andalso In > 0),
        ?assertEqual({ok, 0}, erlmcp_flow_gossip:port(M1)),
        ok = erlmcp_flow_gossip:unsubscribe(M1),
        ok = erlmcp_flow_gossip:stop(M3),
        ok = erlmcp_flow_gossip:stop()
    after
        _ = file:del_dir_r(Dir)
    end.

free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, P} = inet:port(S),
    ok = gen_tcp:close(S),
    P.

addr(P) -> iolist_to_binary(io_lib:format("127.0.0.1:~b", [P])).

tcp_test_() ->
    {timeout, 60, fun tcp/0}.

tcp() ->
    PA = free_port(),
    PB = free_port(),
    {ok, A} = erlmcp_flow_gossip:start(fast(#{id => 1, listen => addr(PA),
                                               peers => [{2, addr(PB)}], name => undefined})),
    {ok, B} = erlmcp_flow_gossip:start(fast(#{id => 2, listen => addr(PB),
                                               peers => [{1, addr(PA)}], seeds => [1],
                                               name => undefined})),
    ?assertEqual({ok, PA}, erlmcp_flow_gossip:port(A)),
    ok = erlmcp_flow_gossip:subscribe(B),
    eventually(formed, fun() -> erlmcp_flow_gossip:live_members(A) =:= [2] end),
    {ok, _} = erlmcp_flow_gossip:put(A, <<"k">>, <<"v">>),
    {ok, _} = erlmcp_flow_gossip:gossip_round(A),
    ?assertEqual({erlmcp_flow_gossip, changed, {<<"k">>, <<"v">>}},
                 next_msg(fun({_, K, _}) -> K =:= changed end)),
    ok = erlmcp_flow_gossip:stop(A),
    ok = erlmcp_flow_gossip:stop(B).

bad_config_test() ->
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_gossip:start(erlmcp_flow_test_util:untyped(not_a_map))),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_gossip:start(#{dir => "/tmp", name => undefined})),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_gossip:start(#{id => 1, name => undefined})),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_gossip:start(#{id => 1, listen => <<"nowhere">>,
                                            name => undefined})),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_gossip:start(#{id => 1, dir => "/tmp", peers => [0],
                                            name => undefined})),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_gossip:start(#{id => 1, dir => "/tmp", peers => [2],
                                            seeds => [3], name => undefined})),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_gossip:start(#{id => 1, listen => <<"127.0.0.1:0">>,
                                            peers => [2], name => undefined})),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_gossip:start(#{id => 1, dir => "/tmp",
                                            gossip_interval => -1, name => undefined})).

bad_arguments_test() ->
    Dir = tmp_dir("gossip-bad"),
    try
        {ok, M} = erlmcp_flow_nif:gossip_start(1, #{dir => Dir, peers => [2]}),
        ?assertMatch({error, {invalid_argument, _}},
                     erlmcp_flow_nif:gossip_put(M, erlmcp_flow_test_util:untyped(key), <<"v">>)),
        ?assertMatch({error, {too_large, _}},
                     erlmcp_flow_nif:gossip_put(M, binary:copy(<<"k">>, 2048), <<"v">>)),
        ?assertMatch({error, {not_found, _}}, erlmcp_flow_nif:gossip_get(M, <<"k">>)),
        ?assertMatch({error, {timeout, _}}, erlmcp_flow_nif:gossip_next_event(M, 0)),
        ?assertMatch({error, {invalid_argument, _}},
                     erlmcp_flow_nif:gossip_next_event(M, erlmcp_flow_test_util:untyped(-1))),
        ?assertMatch({error, {invalid_argument, _}},
                     erlmcp_flow_nif:gossip_round(erlmcp_flow_test_util:untyped(make_ref()))),
        ok = erlmcp_flow_nif:gossip_close(M),
        ok = erlmcp_flow_nif:gossip_close(M),
        ?assertMatch({error, {closed, _}}, erlmcp_flow_nif:gossip_round(M))
    after
        _ = file:del_dir_r(Dir)
    end.

%% The scheduler's host hooks: agents recorded on a member are removed when it is down.
sched_host_down_test() ->
    N = erlmcp_flow_nif,
    {ok, S} = N:sched_new(#{}, memory, undefined, undefined, 0),
    ok = N:sched_register_agent(S, <<"a1">>, <<"t">>, 2, 1, 0),
    ok = N:sched_register_agent(S, <<"a2">>, <<"t">>, 2, 2, 0),
    ok = N:sched_set_agent_host(S, <<"a1">>, 7),
    ok = N:sched_set_agent_host(S, <<"a2">>, 8),
    ok = N:sched_set_agent_host(S, <<"a2">>, 0),
    ?assertMatch({error, {not_found, _}}, N:sched_set_agent_host(S, <<"nobody">>, 7)),
    ?assertMatch({error, {invalid_argument, _}},
                 N:sched_set_agent_host(S, <<"a1">>, erlmcp_flow_test_util:untyped(-1))),
    ?assertEqual({ok, 1}, N:sched_host_down(S, 7, 1)),
    ?assertEqual({ok, 0}, N:sched_host_down(S, 8, 2)),
    ?assertMatch({error, {not_found, _}}, N:sched_heartbeat(S, <<"a1">>, 3)),
    ok = N:sched_heartbeat(S, <<"a2">>, 3),
    ok = N:sched_close(S).

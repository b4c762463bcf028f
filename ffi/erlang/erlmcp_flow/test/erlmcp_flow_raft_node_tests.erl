%% Tests of erlmcp_flow_raft_node: three nodes of one VM over rings (a directory under
%% /dev/shm) running an Erlang counter (erlmcp_flow_raft_node_counter), written to through
%% the engine's client NIFs; a node restarted from its data directory; a raising callback
%% stopping its node; bad options.
-module(erlmcp_flow_raft_node_tests).

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

rm_rf(Dir) ->
    _ = file:del_dir_r(Dir),
    ok.

opts(Dir, Id, Voters) ->
    #{id => Id, voters => Voters,
      ring_dir => filename:join(Dir, "net"),
      data_dir => filename:join(Dir, io_lib:format("node-~b", [Id])),
      snapshot_entries => 4}.

op(V) -> <<V:64/little>>.

%% Waits (bounded) until `F()' holds.
eventually(What, F) ->
    eventually(What, F, erlang:monotonic_time(millisecond) + 20000).

eventually(What, F, Deadline) ->
    case F() of
        true ->
            ok;
        false ->
            case erlang:monotonic_time(millisecond) < Deadline of
                true ->
                    receive after 5 -> ok end,
                    eventually(What, F, Deadline);
                false ->
                    error({timed_out_waiting_for, What})
            end
    end.

sum(N) ->
    {Sum, _} = erlmcp_flow_raft_node:machine_state(N),
    Sum.

three_nodes_test_() ->
    {timeout, 120, fun three_nodes/0}.

three_nodes() ->
    Dir = tmp_dir("three"),
    Voters = [1, 2, 3],
    try
        Nodes = [begin
                     {ok, P} = erlmcp_flow_raft_node:start_link(opts(Dir, Id, Voters),
                                                                erlmcp_flow_raft_node_counter,
                                                                []),
                     P
                 end || Id <- Voters],
        {ok, C} = erlmcp_flow_nif:raft_client_connect(filename:join(Dir, "net"), Voters, #{}),
        Results = [begin
                       {ok, {I, R}} = erlmcp_flow_nif:raft_client_submit(C, op(V)),
                       ?assert(I > 0),
                       R
                   end || V <- lists:seq(1, 10)],
        ?assertEqual([op(V * (V + 1) div 2) || V <- lists:seq(1, 10)], Results),
        ?assertMatch({ok, {_, <<"bad op">>}}, erlmcp_flow_nif:raft_client_submit(C, <<"x">>)),
        [eventually(every_node_applied, fun() -> sum(N) =:= 55 end) || N <- Nodes],
        [N1, N2, N3] = Nodes,
        {ok, Info} = erlmcp_flow_raft_node:info(N1),
        ?assertMatch(#{id := 1, running := true}, Info),
        ?assert(maps:get(leader, Info) > 0),
        %% Node 3 restarted from its data directory: its state comes back through restore
        %% (its snapshot) and the entries after it, not by applying all 11 again.
        unlink(N3),
        ?assertEqual(ok, erlmcp_flow_raft_node:stop(N3)),
        {ok, N3b} = erlmcp_flow_raft_node:start_link(opts(Dir, 3, Voters),
                                                     erlmcp_flow_raft_node_counter, []),
        {ok, {_, R11}} = erlmcp_flow_nif:raft_client_submit(C, op(100)),
        ?assertEqual(op(155), R11),
        eventually(restarted_node_caught_up, fun() -> sum(N3b) =:= 155 end),
        {155, AppliedSinceRestart} = erlmcp_flow_raft_node:machine_state(N3b),
        ?assert(AppliedSinceRestart < 11),
        ok = erlmcp_flow_nif:raft_client_close(C),
        [begin unlink(N), ?assertEqual(ok, erlmcp_flow_raft_node:stop(N)) end
         || N <- [N1, N2, N3b]]
    after
        rm_rf(Dir)
    end.

failing_callback_test_() ->
    {timeout, 60, fun failing_callback/0}.

failing_callback() ->
    Dir = tmp_dir("fail"),
    try
        {ok, N} = erlmcp_flow_raft_node:start(opts(Dir, 1, [1]),
                                              erlmcp_flow_raft_node_counter, []),
        Ref = monitor(process, N),
        {ok, C} = erlmcp_flow_nif:raft_client_connect(filename:join(Dir, "net"), [1],
                                                      #{timeout_ms => 1000,
                                                        attempt_timeout_ms => 200}),
        ?assertMatch({ok, {_, <<5:64/little>>}}, erlmcp_flow_nif:raft_client_submit(C, op(5))),
        %% The callback raises: the node stops, the client gets no answer, and the server
        %% exits saying why.
        ?assertMatch({error, {_, _}}, erlmcp_flow_nif:raft_client_submit(C, <<"boom">>)),
        receive
            {'DOWN', Ref, process, N, Why} ->
                ?assertMatch({raft_node, {stopped, _}}, Why),
                {raft_node, {stopped, Msg}} = Why,
                ?assertNotEqual(nomatch, binary:match(Msg, <<"boom">>))
        after 10000 ->
            error(server_did_not_stop)
        end,
        ok = erlmcp_flow_nif:raft_client_close(C)
    after
        rm_rf(Dir)
    end.

bad_options_test() ->
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_raft_node:start(erlmcp_flow_test_util:untyped(#{id => 1}),
                                             erlmcp_flow_raft_node_counter, [])),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_raft_node:start(#{id => 1, voters => [1]},
                                             erlmcp_flow_raft_node_counter, [])),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_raft_node:start(#{id => 4, voters => [1, 2, 3],
                                               ring_dir => "/dev/shm/emf-erl-bad"},
                                             erlmcp_flow_raft_node_counter, [])),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_nif:raft_node_start(erlmcp_flow_test_util:untyped(0), [1],
                                                #{ring_dir => "/tmp/x"})),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_nif:raft_client_connect("/tmp/x",
                                                     erlmcp_flow_test_util:untyped([]), #{})).

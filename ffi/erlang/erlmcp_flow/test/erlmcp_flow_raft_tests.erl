%% Tests of erlmcp_flow_raft and erlmcp_flow_raft_leader: local clusters of 3 `erlmcp-flow
%% raft node' processes (the binary from EMF_BIN, else <repo>/target/{release,debug}).
-module(erlmcp_flow_raft_tests).

-include_lib("eunit/include/eunit.hrl").

%% The node binary: EMF_BIN, else the repository's release or debug build.
bin() ->
    case os:getenv("EMF_BIN") of
        false ->
            Repo = repo(filename:dirname(filename:absname(code:which(?MODULE)))),
            Found = [P || Kind <- ["release", "debug"],
                          P <- [filename:join([Repo, "target", Kind, "erlmcp-flow"])],
                          filelib:is_regular(P)],
            case Found of
                [P | _] -> iolist_to_binary(P);
                [] -> error({no_erlmcp_flow_binary, Repo, "set EMF_BIN"})
            end;
        B ->
            list_to_binary(B)
    end.

%% The repository root: the nearest directory above with a Cargo.lock.
repo("/") ->
    error({no_repository, "set EMF_BIN"});
repo(Dir) ->
    case filelib:is_regular(filename:join(Dir, "Cargo.lock")) of
        true -> Dir;
        false -> repo(filename:dirname(Dir))
    end.

start(Opts) ->
    {ok, C} = erlmcp_flow_raft:start_cluster(3, Opts#{bin => bin()}),
    C.

cluster_test_() ->
    {timeout, 120, fun cluster/0}.

cluster() ->
    C = start(#{}),
    Dir = erlmcp_flow_raft:dir(C),
    ?assert(filelib:is_dir(Dir)),
    ?assertEqual({ok, [1, 2, 3]}, erlmcp_flow_raft:members(C)),
    {ok, Leader} = erlmcp_flow_raft:leader(C),
    ?assert(lists:member(Leader, [1, 2, 3])),
    {ok, Term} = erlmcp_flow_raft:term(C),
    ?assert(Term >= 1),
    %% The original shapes: any terms as keys and values.
    {ok, I1} = erlmcp_flow_raft:submit_operation(C, {set, {user, 42}, #{role => admin}}),
    {ok, A1} = erlmcp_flow_raft:wait_committed(C, I1),
    ?assert(A1 >= I1),
    ?assertMatch({ok, _, {value, #{role := admin}}},
                 erlmcp_flow_raft:submit(C, {get, {user, 42}})),
    ?assertMatch({ok, _, not_found}, erlmcp_flow_raft:submit(C, {get, nobody})),
    ?assertMatch({ok, _, {false, {value, #{role := admin}}}},
                 erlmcp_flow_raft:submit(C, {cas, {user, 42}, {value, x}, y})),
    ?assertMatch({ok, _, {true, {value, #{role := admin}}}},
                 erlmcp_flow_raft:submit(C, {cas, {user, 42}, {value, #{role => admin}}, y})),
    ?assertMatch({ok, _, {true, not_found}},
                 erlmcp_flow_raft:submit(C, {cas, fresh, not_found, 1})),
    ?assertMatch({ok, _, {false, {value, 1}}},
                 erlmcp_flow_raft:submit(C, {cas, fresh, not_found, 2})),
    %% A value larger than the NIF's stack buffer.
    Big = binary:copy(<<"b">>, 5000),
    {ok, _} = erlmcp_flow_raft:submit_operation(C, {set, big, Big}),
    ?assertMatch({ok, _, {value, Big}}, erlmcp_flow_raft:submit(C, {get, big})),
    %% Raw entries; 1000 operations one after another, each committed in order.
    {ok, R} = erlmcp_flow_raft:submit_operation(C, <<"opaque">>),
    Indexes = [begin
                   {ok, I} = erlmcp_flow_raft:submit_operation(C, {set, N, N * N}),
                   I
               end || N <- lists:seq(1, 1000)],
    ?assertEqual(Indexes, lists:usort(Indexes)),
    ?assert(hd(Indexes) > R),
    Last = lists:last(Indexes),
    {ok, Applied} = erlmcp_flow_raft:wait_committed(C, Last, 5000),
    ?assert(Applied >= Last),
    ?assertMatch({ok, _, {value, 250000}}, erlmcp_flow_raft:submit(C, {get, 500})),
    %% Pipelined: 500 entries in one call, 32 in flight; in order, batched ones share an index.
    {ok, Many} = erlmcp_flow_raft:append_entries(C, [{entry, N} || N <- lists:seq(1, 500)], 32),
    ?assertEqual(500, length(Many)),
    ?assertEqual(Many, lists:sort(Many)),
    ?assert(hd(Many) > Last),
    ?assertEqual({ok, []}, erlmcp_flow_raft:append_entries(C, [])),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_raft:append_entries(C, [<<"x">>], 0)),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_nif:raft_submit_many(element(2, sys:get_state(C)),
                                                  erlmcp_flow_test_util:untyped([x]), 1)),
    {ok, Stats} = erlmcp_flow_raft:stats(C),
    ?assertEqual([1, 2, 3], [maps:get(node, S) || S <- Stats]),
    [#{voters := [1, 2, 3], counters := #{proposed := _}, commit := Commit} | _] = Stats,
    ?assert(Commit >= Last),
    ok = erlmcp_flow_raft:stop(C),
    ?assertNot(filelib:is_dir(Dir)).

leader_kill_test_() ->
    {timeout, 120, fun leader_kill/0}.

leader_kill() ->
    C = start(#{timeout_ms => 3000, attempt_timeout_ms => 200}),
    {ok, _} = erlmcp_flow_raft:submit_operation(C, {set, k, before}),
    {ok, Old} = erlmcp_flow_raft:leader(C),
    {ok, OldTerm} = erlmcp_flow_raft:term(C),
    ok = erlmcp_flow_raft:kill(C, Old),
    ?assertMatch({error, {not_found, _}}, erlmcp_flow_raft:kill(C, Old)),
    %% The client finds the new leader (not-leader answers name it): nothing acknowledged
    %% before is lost.
    {ok, _} = erlmcp_flow_raft:submit_operation(C, {set, k2, 'after'}),
    {ok, New} = erlmcp_flow_raft:leader(C),
    ?assertNotEqual(Old, New),
    {ok, NewTerm} = erlmcp_flow_raft:term(C),
    ?assert(NewTerm > OldTerm),
    ?assertMatch({ok, _, {value, before}}, erlmcp_flow_raft:submit(C, {get, k})),
    {ok, Stats} = erlmcp_flow_raft:stats(C),
    ?assertMatch([#{error := {timeout, _}}], [S || S = #{node := N} <- Stats, N =:= Old]),
    %% Two of three down: no quorum, a timeout error (not a hang).
    Third = hd([N || N <- [1, 2, 3], N =/= Old, N =/= New]),
    ok = erlmcp_flow_raft:kill(C, Third),
    ?assertMatch({error, {timeout, _}}, erlmcp_flow_raft:submit_operation(C, {set, k3, x})),
    %% Back to three: the nodes come back from their logs.
    ok = erlmcp_flow_raft:restart(C, Old),
    ok = erlmcp_flow_raft:restart(C, Third),
    {ok, I} = erlmcp_flow_raft:submit_operation(C, {set, k4, y}),
    {ok, _} = erlmcp_flow_raft:wait_committed(C, I),
    ?assertMatch({ok, _, {value, 'after'}}, erlmcp_flow_raft:submit(C, {get, k2})),
    ?assertMatch({error, {not_found, _}}, erlmcp_flow_raft:restart(C, 9)),
    ok = erlmcp_flow_raft:stop(C).

reads_transfer_and_membership_test_() ->
    {timeout, 120, fun reads_transfer_and_membership/0}.

reads_transfer_and_membership() ->
    C = start(#{timeout_ms => 5000, attempt_timeout_ms => 200}),
    {ok, W} = erlmcp_flow_raft:submit_operation(C, {set, k, v}),
    {ok, Leader} = erlmcp_flow_raft:leader(C),
    {ok, Stats0} = erlmcp_flow_raft:stats(C),
    [Commit0] = [Cm || #{node := N, commit := Cm} <- Stats0, N =:= Leader],
    {ok, RI, {value, v}} = erlmcp_flow_raft:read(C, k),
    ?assert(RI >= W),
    ?assertMatch({ok, _, not_found}, erlmcp_flow_raft:read(C, nobody)),
    {ok, Stats1} = erlmcp_flow_raft:stats(C),
    [Commit1] = [Cm || #{node := N, commit := Cm} <- Stats1, N =:= Leader],
    ?assertEqual(Commit0, Commit1),
    %% Raw query bytes: refused ones are an error with the state machine's reason.
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_raft:read(C, {query, <<"x">>})),
    ?assertEqual({ok, #{voters => [1, 2, 3], learners => [], joint => false}},
                 erlmcp_flow_raft:membership(C)),
    %% Leadership moves; bad targets are refused.
    To = Leader rem 3 + 1,
    {ok, Term} = erlmcp_flow_raft:transfer_leader(C, To),
    ?assertEqual({ok, To}, erlmcp_flow_raft:leader(C)),
    ?assertEqual({ok, Term}, erlmcp_flow_raft:term(C)),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_raft:transfer_leader(C, 9)),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_raft:transfer_leader(C, erlmcp_flow_test_util:untyped(0))),
    %% The leader cannot remove itself; a follower is removed, comes back as a learner (same
    %% process, same data), is promoted and then leads.
    {error, {invalid_argument, Why}} = erlmcp_flow_raft:change_membership(C, [{remove, To}]),
    ?assertNotEqual(nomatch, binary:match(Why, <<"transfer leadership first">>)),
    F = To rem 3 + 1,
    {ok, _} = erlmcp_flow_raft:change_membership(C, [{remove, F}]),
    {ok, _} = erlmcp_flow_raft:submit_operation(C, {set, while_out, 1}),
    {ok, _} = erlmcp_flow_raft:change_membership(C, [{add_learner, F}]),
    #{learners := [F], voters := Vs} = settled(C),
    ?assertEqual(2, length(Vs)),
    {ok, _} = erlmcp_flow_raft:change_membership(C, [{add_voter, F}]),
    ?assertMatch(#{voters := [1, 2, 3], learners := []}, settled(C)),
    {ok, _} = erlmcp_flow_raft:transfer_leader(C, F),
    ?assertEqual({ok, F}, erlmcp_flow_raft:leader(C)),
    ?assertMatch({ok, _, {value, 1}}, erlmcp_flow_raft:read(C, while_out)),
    %% Bad changes.
    Bad = {error, {invalid_argument,
                   <<"changes: expected a list of {add_voter | add_learner | remove, Node}">>}},
    ?assertEqual(Bad, erlmcp_flow_raft:change_membership(C, erlmcp_flow_test_util:untyped([{promote, 2}]))),
    ?assertEqual(Bad, erlmcp_flow_raft:change_membership(C, erlmcp_flow_test_util:untyped([x]))),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_raft:change_membership(C, [])),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_raft:change_membership(C, [{remove, erlmcp_flow_test_util:untyped(0)}])),
    ok = erlmcp_flow_raft:stop(C).

%% The membership once the leader has left the joint configuration.
settled(C) ->
    settled(C, 200).

settled(C, 0) ->
    {ok, M} = erlmcp_flow_raft:membership(C),
    M;
settled(C, N) ->
    case erlmcp_flow_raft:membership(C) of
        {ok, M = #{joint := false}} -> M;
        _ -> timer:sleep(10), settled(C, N - 1)
    end.

errors_test_() ->
    {timeout, 60, fun errors/0}.

errors() ->
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_raft:start_cluster(erlmcp_flow_test_util:untyped(0), #{})),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_raft:start_cluster(3, #{tick_ms => 0, bin => bin()})),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_raft:start_cluster(3, #{memory => maybe, bin => bin()})),
    ?assertMatch({error, {io, _}},
                 erlmcp_flow_raft:start_cluster(1, #{bin => <<"/nonexistent/erlmcp-flow">>})),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_raft:start_cluster(erlmcp_flow_test_util:untyped(x), #{})),
    C = start(#{memory => true}),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_raft:submit(C, erlmcp_flow_test_util:untyped({bad, op}))),
    ?assertMatch({error, {invalid_argument, _}},
                 erlmcp_flow_raft:submit(C, erlmcp_flow_test_util:untyped({cas, k, expected_without_value, 1}))),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_raft:kill(C, erlmcp_flow_test_util:untyped(0))),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_raft:wait_committed(C, erlmcp_flow_test_util:untyped(-1))),
    ?assertMatch({error, {timeout, _}}, erlmcp_flow_raft:wait_committed(C, 1 bsl 40, 50)),
    ok = erlmcp_flow_raft:stop(C),
    %% A NIF handle after its close: refused.
    {ok, H} = erlmcp_flow_nif:raft_cluster_start(1, erlmcp_flow_raft_tests_dir(),
                                                 #{bin => bin(), memory => true}),
    ok = erlmcp_flow_nif:raft_cluster_close(H),
    ok = erlmcp_flow_nif:raft_cluster_close(H),
    ?assertMatch({error, {closed, _}}, erlmcp_flow_nif:raft_leader(H)),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_nif:raft_leader(erlmcp_flow_test_util:untyped(make_ref()))),
    _ = file:del_dir_r(erlmcp_flow_raft_tests_dir()).

erlmcp_flow_raft_tests_dir() ->
    iolist_to_binary(["/dev/shm/erlmcp_flow_raft_tests-", os:getpid()]).

leader_facade_test_() ->
    {timeout, 120, fun leader_facade/0}.

leader_facade() ->
    {ok, Pid} = erlmcp_flow_raft_leader:start_link(#{bin => bin(), nodes => 3}),
    unlink(Pid),
    C = erlmcp_flow_raft_leader:cluster(),
    %% Many appenders at once: each answer is a distinct index, all committed.
    Self = self(),
    Ps = [spawn_link(fun() ->
                             Is = [begin
                                       {ok, I} = erlmcp_flow_raft_leader:append_entry({W, N}),
                                       I
                                   end || N <- lists:seq(1, 50)],
                             Self ! {done, self(), Is}
                     end) || W <- lists:seq(1, 4)],
    All = lists:append([receive {done, P, Is} -> Is end || P <- Ps]),
    ?assertEqual(200, length(lists:usort(All))),
    ok = erlmcp_flow_raft_leader:flush_batch(),
    {ok, _} = erlmcp_flow_raft:wait_committed(C, lists:max(All), 1000),
    {ok, I} = erlmcp_flow_raft_leader:append_entry(<<"raw">>),
    ?assert(I > lists:max(All)),
    ok = erlmcp_flow_raft_leader:stop(),
    ?assertNot(is_process_alive(C)).

%% Tests of erlmcp_flow_pbft: a local PBFT group of 4 replica threads (Ed25519), agreement in
%% order, the primary stopped and the view change, the slow path, argument errors.
-module(erlmcp_flow_pbft_tests).

-include_lib("eunit/include/eunit.hrl").

registered_group_test_() ->
    {timeout, 120, fun registered_group/0}.

registered_group() ->
    {ok, Pid} = erlmcp_flow_pbft:start_link(#{view_change_timeout_ms => 100,
                                              timeout_ms => 20000}),
    Dir = erlmcp_flow_pbft:dir(Pid),
    ?assert(filelib:is_dir(Dir)),
    ?assertEqual({ok, 0}, erlmcp_flow_pbft:view()),
    {ok, #{position := 1, chain := C1, path := P1}} =
        erlmcp_flow_pbft:fast_path_consensus({assign, task_7}),
    ?assert(P1 =:= fast orelse P1 =:= slow),
    {ok, #{position := 2}} = erlmcp_flow_pbft:fast_path_consensus(<<"raw bytes">>),
    ok = erlmcp_flow_pbft:stop_replica(0),
    ?assertMatch({error, {not_found, _}}, erlmcp_flow_pbft:stop_replica(0)),
    ?assertMatch({error, {not_found, _}}, erlmcp_flow_pbft:stop_replica(9)),
    {ok, #{position := 3, chain := C3}} = erlmcp_flow_pbft:fast_path_consensus(after_crash),
    ?assertNotEqual(C1, C3),
    {ok, View} = erlmcp_flow_pbft:view(),
    ?assert(View >= 1),
    unlink(Pid),
    ok = erlmcp_flow_pbft:stop(),
    ?assertNot(filelib:is_dir(Dir)).

slow_path_test_() ->
    {timeout, 60, fun slow_path/0}.

slow_path() ->
    {ok, G} = erlmcp_flow_pbft:start(#{accept_tentative => false, ed25519 => false}),
    Paths = [begin
                 {ok, #{position := I, path := P}} = erlmcp_flow_pbft:fast_path_consensus(G, I),
                 P
             end || I <- lists:seq(1, 5)],
    ?assertEqual([slow], lists:usort(Paths)),
    ok = erlmcp_flow_pbft:stop(G).

bad_options_test() ->
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_pbft:start(#{n => 5})),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_pbft:start(#{timeout_ms => 0})),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_pbft:start(#{ed25519 => maybe})),
    ?assertMatch({error, {invalid_argument, _}}, erlmcp_flow_pbft:start(#{n => -1})).

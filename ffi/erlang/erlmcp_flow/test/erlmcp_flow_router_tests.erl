%% EUnit tests of erlmcp_flow_router: agents' inboxes by name, partial batches that return
%% exactly the messages not sent, and the router's ownership by one gen_server.
%%
%% Every test runs in a process of its own with a temporary directory, removed afterwards;
%% no assertion depends on timing.
-module(erlmcp_flow_router_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-define(RT, erlmcp_flow_router).
-define(R, erlmcp_flow_ring).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

tmp_dir() ->
    Base = case os:getenv("TMPDIR") of false -> "/tmp"; "" -> "/tmp"; D -> D end,
    Dir = filename:join(Base, "erlmcp_flow_router_" ++ os:getpid() ++ "_"
                        ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.

%% Runs Fun(Dir) in a process of its own with a fresh directory; afterwards stops a registered
%% router left running by a failed test and removes the directory. Re-raises the failure.
with_dir(Fun) ->
    Dir = tmp_dir(),
    Parent = self(),
    {Pid, Mon} = spawn_monitor(fun() ->
                                       Result = try {ok, Fun(Dir)}
                                                catch C:R:St -> {C, R, St}
                                                end,
                                       Parent ! {self(), Result}
                               end),
    Result = receive
                 {Pid, R} -> R;
                 {'DOWN', Mon, process, Pid, Why} -> {exit, Why, []}
             end,
    erlang:demonitor(Mon, [flush]),
    try
        stop_registered(?RT)
    after
        ok = file:del_dir_r(Dir)
    end,
    case Result of
        {ok, Value} -> Value;
        {Class, Reason, Stack} -> erlang:raise(Class, Reason, Stack)
    end.

stop_registered(Name) ->
    case whereis(Name) of
        undefined -> ok;
        Pid -> catch gen_server:stop(Pid), ok
    end.

msg(I, Size) -> <<I:32/little, (binary:copy(<<(I rem 251)>>, Size - 4))/binary>>.

%% Everything ready in the consumer now, in order.
drain(C) ->
    drain(C, []).

drain(C, Acc) ->
    case ?R:recv_batch(C, 4096, 0) of
        {ok, Frames} -> drain(C, [Frames | Acc]);
        {error, {timeout, _}} -> lists:append(lists:reverse(Acc))
    end.

%%--------------------------------------------------------------------------------------------
%% Tests
%%--------------------------------------------------------------------------------------------

direct_sends_and_errors_test_() ->
    {timeout, 120, fun direct_sends_and_errors/0}.

direct_sends_and_errors() ->
    with_dir(fun(Dir) ->
        {ok, Pid} = ?RT:start_link(#{dir => Dir}),
        ?assertEqual(Pid, whereis(?RT)),
        {ok, Inbox} = ?RT:register_agent(<<"worker">>),
        ?assert(filelib:is_file(filename:join(Dir, "emf-inbox.worker"))),
        ok = ?RT:send_direct(<<"worker">>, <<"hello">>),
        ok = ?RT:send_direct(worker, [<<"io">>, "data"]),          % atom agent, iodata
        ok = ?RT:send_direct("worker", <<>>),
        ?assertEqual([<<"hello">>, <<"iodata">>, <<>>], drain(Inbox)),
        ?assertMatch({error, {not_found, _}}, ?RT:send_direct(<<"ghost">>, <<"x">>)),
        ?assertMatch({error, {not_found, _}}, ?RT:send_batch(<<"ghost">>, [<<"x">>])),
        ?assertMatch({error, {invalid_argument, _}}, ?RT:register_agent(<<"bad/name">>)),
        ?assertMatch({error, {invalid_argument, _}}, ?RT:send_direct(<<"a", 0, "b">>, <<"x">>)),
        {ok, Max} = max_payload(Dir, <<"worker">>),
        ?assertMatch({error, {too_large, _}},
                     ?RT:send_direct(<<"worker">>, binary:copy(<<0>>, Max + 1))),
        %% A frame past the largest refuses the whole batch: nothing was sent.
        ?assertMatch({error, {too_large, _}},
                     ?RT:send_batch(<<"worker">>, [<<"a">>, binary:copy(<<0>>, Max + 1)])),
        ?assertEqual([], drain(Inbox)),
        ?assertMatch({error, {invalid_argument, _}},
                     ?RT:send_batch(<<"worker">>, untyped(not_a_list))),
        ?assertMatch({error, {invalid_argument, _}},
                     ?RT:send_batch(<<"worker">>, untyped([an_atom]))),

        ?assertEqual({ok, 0}, ?RT:send_batch(<<"worker">>, [])),
        ok = ?RT:stop(),
        ?assertMatch({error, {closed, _}}, ?RT:send_direct(<<"worker">>, <<"x">>)),
        ?assertMatch({error, {closed, _}}, ?RT:register_agent(<<"worker">>)),
        ok = ?R:close(Inbox)
    end).

max_payload(Dir, Agent) ->
    {ok, Ring} = ?R:open(<<"inbox.", Agent/binary>>, #{dir => Dir}),
    ?R:max_payload(Ring).

%% A batch larger than the inbox: the router answers {partial, Accepted, NotAccepted} where
%% NotAccepted is exactly the messages not sent, in order; resending them after the agent has
%% read delivers every message once, in order.
partial_batch_returns_exactly_the_unsent_messages_test_() ->
    {timeout, 120, fun partial_batch_returns_exactly_the_unsent_messages/0}.

partial_batch_returns_exactly_the_unsent_messages() ->
    with_dir(fun(Dir) ->
        {ok, _} = ?RT:start_link(#{dir => Dir, inbox_capacity => 4096}),
        {ok, Inbox} = ?RT:register_agent(<<"a">>),
        Msgs = [msg(I, 100) || I <- lists:seq(1, 300)],
        %% Nobody reads yet: 300 messages of 100 bytes cannot fit in 4 KiB.
        {partial, First, NotAccepted} = ?RT:send_batch(<<"a">>, Msgs),
        ?assert(First > 0),
        ?assertEqual(lists:nthtail(First, Msgs), NotAccepted),
        ?assertEqual(lists:sublist(Msgs, First), drain(Inbox)),
        %% A full inbox accepts nothing: every message comes back.
        {partial, Second, Rest2} = ?RT:send_batch(<<"a">>, NotAccepted),
        ?assertEqual(lists:nthtail(Second, NotAccepted), Rest2),
        Full = lists:nthtail(Second, NotAccepted),
        ?assertEqual({partial, 0, Full}, ?RT:send_batch(<<"a">>, Full)),
        ?assertMatch({error, {full, _}}, ?RT:send_direct(<<"a">>, <<"refused">>)),
        Got = lists:sublist(Msgs, First) ++ drain(Inbox),
        ?assertEqual(lists:sublist(Msgs, First + Second), Got),
        %% Resend the rest until all are in: each message arrives once, in order.
        All = resend(Inbox, Full, Got),
        ?assertEqual(Msgs, All),
        ?assertNot(lists:member(<<"refused">>, All)),
        ok = ?RT:stop()
    end).

resend(Inbox, [], Got) ->
    Got ++ drain(Inbox);
resend(Inbox, Msgs, Got) ->
    case ?RT:send_batch(<<"a">>, Msgs) of
        {ok, _} -> Got ++ drain(Inbox);
        {partial, N, Rest} ->
            ?assertEqual(lists:nthtail(N, Msgs), Rest),
            resend(Inbox, Rest, Got ++ drain(Inbox))
    end.

%% The inbox keeps unread messages for the next registration; its consumer is primary (busy
%% while held) and works with deliveries.
inbox_survives_its_consumer_and_delivers_test_() ->
    {timeout, 120, fun inbox_survives_its_consumer_and_delivers/0}.

inbox_survives_its_consumer_and_delivers() ->
    with_dir(fun(Dir) ->
        {ok, _} = ?RT:start_link(#{dir => Dir}),
        {ok, C1} = ?RT:register_agent(<<"agent-1">>),
        ?assertMatch({error, {busy, _}}, ?RT:register_agent(<<"agent-1">>)),
        ok = ?RT:send_direct(<<"agent-1">>, <<"one">>),
        ok = ?R:close(C1),
        ok = ?RT:send_direct(<<"agent-1">>, <<"two">>),
        {ok, C2} = ?RT:register_agent(<<"agent-1">>),
        {ok, Ref} = ?R:deliver(C2, self()),
        {ok, 3} = ?RT:send_batch(<<"agent-1">>, [<<"three">>, <<"four">>, <<"five">>]),
        ?assertEqual([<<"one">>, <<"two">>, <<"three">>, <<"four">>, <<"five">>],
                     collect(Ref, 5)),
        ok = ?R:stop(Ref),
        ok = ?RT:stop()
    end).

collect(_Ref, 0) ->
    [];
collect(Ref, N) ->
    receive
        {erlmcp_flow_frames, Ref, Frames} ->
            ok = ?R:ack(Ref),
            Frames ++ collect(Ref, N - length(Frames))
    after 30000 ->
            error({timeout_waiting_for, N})
    end.

%% An anonymous router used through its pid; unregistering removes the inbox.
anonymous_router_and_unregister_test_() ->
    {timeout, 120, fun anonymous_router_and_unregister/0}.

anonymous_router_and_unregister() ->
    with_dir(fun(Dir) ->
        {ok, R} = ?RT:start(#{dir => Dir, name => undefined}),
        ?assertEqual(undefined, whereis(?RT)),
        {ok, C} = ?RT:register_agent(R, <<"b">>),
        ok = ?RT:send_direct(R, <<"b">>, <<"x">>),
        {ok, 1} = ?RT:send_batch(R, <<"b">>, [<<"y">>]),
        ?assertEqual([<<"x">>, <<"y">>], drain(C)),
        ok = ?RT:unregister_agent(R, <<"b">>),
        ?assertNot(filelib:is_file(filename:join(Dir, "emf-inbox.b"))),
        ?assertMatch({error, {not_found, _}}, ?RT:send_direct(R, <<"b">>, <<"z">>)),
        ?assertMatch({error, {not_found, _}}, ?RT:unregister_agent(R, <<"b">>)),
        ok = ?R:close(C),
        ok = ?RT:stop(R),
        ?assertMatch({error, {invalid_argument, _}}, ?RT:start(untyped(#{bogus => 1}))),
        ?assertMatch({error, {invalid_argument, _}}, ?RT:start(untyped(not_a_map))
),
        ?assertMatch({error, {invalid_argument, _}},
                     ?RT:start(#{dir => <<"a", 0, "b">>, name => undefined}))
    end).

%% Many processes sending through the one router at once: every message arrives, each
%% sender's in order.
concurrent_senders_test_() ->
    {timeout, 120, fun concurrent_senders/0}.

concurrent_senders() ->
    with_dir(fun(Dir) ->
        {ok, _} = ?RT:start_link(#{dir => Dir}),
        {ok, Inbox} = ?RT:register_agent(<<"sink">>),
        Senders = 8,
        PerSender = 200,
        Self = self(),
        Pids = [spawn_link(fun() ->
                                   [ok = send_retry(<<S:8, I:32>>) || I <- lists:seq(1, PerSender)],
                                   Self ! {done, self()}
                           end) || S <- lists:seq(1, Senders)],
        Got = receive_all(Inbox, Senders * PerSender, []),
        [receive {done, P} -> ok end || P <- Pids],
        ?assertEqual(Senders * PerSender, length(Got)),
        [?assertEqual([<<S:8, I:32>> || I <- lists:seq(1, PerSender)],
                      [F || <<S1:8, _:32>> = F <- Got, S1 =:= S])
         || S <- lists:seq(1, Senders)],
        ok = ?RT:stop()
    end).

send_retry(Msg) ->
    case ?RT:send_direct(<<"sink">>, Msg) of
        {error, {full, _}} -> timer:sleep(1), send_retry(Msg);
        Other -> Other
    end.

receive_all(_Inbox, 0, Acc) ->
    lists:append(lists:reverse(Acc));
receive_all(Inbox, N, Acc) ->
    {ok, Frames} = ?R:recv_batch(Inbox, 1000, 30000),
    receive_all(Inbox, N - length(Frames), [Frames | Acc]).

%% A registered router killed outright: the next one sends to the same inboxes (nothing is
%% recreated: unread messages stay, the agent's consumer reads on) and closes the killed
%% router's engine handle at once, releasing its producer in every inbox it sent to.
killed_router_successor_test_() ->
    {timeout, 120, fun killed_router_successor/0}.

killed_router_successor() ->
    with_dir(fun(Dir) ->
        {ok, Pid} = ?RT:start(#{dir => Dir}),
        {ok, Inbox} = ?RT:register_agent(<<"agent">>),
        ok = ?RT:send_direct(<<"agent">>, <<"before">>),
        {ok, Ring} = ?R:open(<<"inbox.agent">>, #{dir => Dir}),
        Producers = fun() -> {ok, #{producers := N}} = ?R:stats(Ring), N end,
        ?assertEqual(1, Producers()),
        Mon = monitor(process, Pid),
        exit(Pid, kill),
        receive {'DOWN', Mon, process, Pid, killed} -> ok end,
        {ok, _} = ?RT:start(#{dir => Dir}),
        ?assertEqual(0, Producers()),
        ok = ?RT:send_direct(<<"agent">>, <<"after">>),
        ?assertEqual(1, Producers()),
        ?assertEqual([<<"before">>, <<"after">>], drain(Inbox)),
        ok = ?RT:stop(),
        ?assertEqual(0, Producers()),
        ?assertEqual(undefined, persistent_term:get({?RT, {local, ?RT}}, undefined)),
        ok = ?R:close(Ring)
    end).

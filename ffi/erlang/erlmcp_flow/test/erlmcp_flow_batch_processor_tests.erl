%% EUnit tests of erlmcp_flow_batch_processor: flushes on size, on timeout, at once for an
%% idle consumer, on demand and at the end; back-pressure; what could not be sent.
%%
%% No assertion depends on timing: the tests that must not see a timeout flush use a batch
%% timeout of an hour, and the timeout flush is awaited (with a generous limit), never timed.
%% Every test runs in a process of its own with a temporary directory, removed afterwards.
-module(erlmcp_flow_batch_processor_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-define(B, erlmcp_flow_batch_processor).
-define(R, erlmcp_flow_ring).
-define(HOUR, 3600000).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

tmp_dir() ->
    Base = case os:getenv("TMPDIR") of false -> "/tmp"; "" -> "/tmp"; D -> D end,
    Dir = filename:join(Base, "erlmcp_flow_batch_" ++ os:getpid() ++ "_"
                        ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.

%% Runs Fun(Dir) in a process of its own with a fresh directory; afterwards stops a registered
%% processor left running by a failed test and removes the directory. Re-raises the failure.
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
        case whereis(?B) of
            undefined -> ok;
            Server -> catch gen_server:stop(Server), ok
        end
    after
        ok = file:del_dir_r(Dir)
    end,
    case Result of
        {ok, Value} -> Value;
        {Class, Reason, Stack} -> erlang:raise(Class, Reason, Stack)
    end.

%% A ring in Dir with its primary consumer attached.
new_ring(Dir, Opts) ->
    Name = "b" ++ integer_to_list(erlang:unique_integer([positive])),
    {ok, Ring} = ?R:create(Name, Opts#{dir => Dir}),
    {ok, C} = ?R:consumer(Ring),
    {Name, Ring, C}.

msg(I) -> <<"message ", (integer_to_binary(I))/binary>>.

stat(Key) ->
    {ok, Stats} = ?B:stats(),
    maps:get(Key, Stats).

drain(C) ->
    drain(C, []).

drain(C, Acc) ->
    case ?R:recv_batch(C, 4096, 0) of
        {ok, Frames} -> drain(C, [Frames | Acc]);
        {error, {timeout, _}} -> lists:append(lists:reverse(Acc))
    end.

wait_until(Pred, Ms) when Ms =< 0 ->
    Pred();
wait_until(Pred, Ms) ->
    case Pred() of
        true -> true;
        false -> timer:sleep(5), wait_until(Pred, Ms - 5)
    end.

%%--------------------------------------------------------------------------------------------
%% Tests
%%--------------------------------------------------------------------------------------------

%% The original design's batch size: with the consumer busy (an unread frame), messages wait
%% until 100 are pending, then go out as one batch.
flushes_on_size_test_() ->
    {timeout, 120, fun flushes_on_size/0}.

flushes_on_size() ->
    with_dir(fun(Dir) ->
        {Name, _Ring, C} = new_ring(Dir, #{}),
        {ok, _} = ?B:start_link(Name, #{dir => Dir, batch_timeout => ?HOUR}),
        %% The consumer has read everything (nothing yet): idle, the first goes at once.
        ok = ?B:send_message(msg(0)),
        ?assertEqual(0, stat(pending)),
        ?assertEqual(1, stat(flush_idle)),
        %% msg(0) stays unread: the consumer is busy, so messages are collected.
        [ok = ?B:send_message(msg(I)) || I <- lists:seq(1, 99)],
        ?assertEqual(99, stat(pending)),
        ?assertEqual(0, stat(flush_size)),
        %% The 100th pending message flushes by size.
        ok = ?B:send_message(msg(100)),
        ?assertEqual(0, stat(pending)),
        ?assertEqual(1, stat(flush_size)),
        ?assertEqual(1, stat(flush_idle)),
        ?assertEqual([msg(I) || I <- lists:seq(0, 100)], drain(C)),
        ok = ?B:stop()
    end).

%% A message that waits batch_timeout (10 ms, the default) is sent by the timer.
flushes_on_timeout_test_() ->
    {timeout, 120, fun flushes_on_timeout/0}.

flushes_on_timeout() ->
    with_dir(fun(Dir) ->
        {Name, _Ring, C} = new_ring(Dir, #{}),
        {ok, _} = ?B:start_link(Name, #{dir => Dir}),
        {ok, #{due_ms := infinity}} = ?B:stats(),
        ok = ?B:send_message(msg(0)), % idle consumer: at once; it stays unread
        [ok = ?B:send_message(msg(I)) || I <- lists:seq(1, 5)],
        ?assert(wait_until(fun() -> stat(pending) =:= 0 end, 30000)),
        ?assert(stat(flush_timeout) >= 1),
        ?assertEqual(0, stat(flush_size)),
        ?assertEqual([msg(I) || I <- lists:seq(0, 5)], drain(C)),
        %% The timer is armed again for the next batch.
        ok = ?B:send_message(msg(6)), % the consumer caught up: idle, at once
        ok = ?B:send_message(msg(7)),
        ?assert(wait_until(fun() -> stat(pending) =:= 0 end, 30000)),
        ?assertEqual([msg(6), msg(7)], drain(C)),
        ok = ?B:stop()
    end).

%% A consumer that has read everything (or waits for frames) gets each message at once: with
%% an hour's timeout and a batch size of 100, only the idle rule can send them.
idle_consumer_gets_messages_at_once_test_() ->
    {timeout, 120, fun idle_consumer_gets_messages_at_once/0}.

idle_consumer_gets_messages_at_once() ->
    with_dir(fun(Dir) ->
        {Name, _Ring, C} = new_ring(Dir, #{}),
        {ok, _} = ?B:start_link(Name, #{dir => Dir, batch_timeout => ?HOUR}),
        lists:foreach(fun(I) ->
                              ok = ?B:send_message(msg(I)),
                              ?assertEqual(0, stat(pending)),
                              ?assertEqual(I, stat(flush_idle)),
                              ?assertEqual({ok, msg(I)}, ?R:recv(C, 0))
                      end, lists:seq(1, 20)),
        %% A delivery thread waiting for frames is idle too.
        {ok, Ref} = ?R:deliver(C, self()),
        [begin
             ok = ?B:send_message(msg(I)),
             receive {erlmcp_flow_frames, Ref, Frames} -> ok = ?R:ack(Ref),
                                                          ?assertEqual([msg(I)], Frames)
             after 30000 -> error(no_frame)
             end
         end || I <- lists:seq(21, 30)],
        ?assertEqual(0, stat(flush_size) + stat(flush_timeout)),
        ok = ?R:stop(Ref),
        ok = ?B:stop()
    end).

%% A full ring: messages stay pending in order; at max_pending the processor refuses with
%% {error, {full, _}} and does not queue the message; flushing after the consumer has read
%% sends exactly the accepted messages, in order.
back_pressure_test_() ->
    {timeout, 120, fun back_pressure/0}.

back_pressure() ->
    with_dir(fun(Dir) ->
        {Name, _Ring, C} = new_ring(Dir, #{capacity => 4096}),
        {ok, _} = ?B:start_link(Name, #{dir => Dir, batch_timeout => ?HOUR,
                                        max_pending => 5}),
        Big = fun(I) -> <<I:32, 0:(996 * 8)>> end,           % 4 frames fill the ring
        {Accepted, Refused} = fill(Big, 0, []),
        ?assertEqual(5, stat(pending)),
        ?assertEqual(1, stat(refused)),
        ?assertEqual({partial, 0, 5}, ?B:flush_batch()),      % still no room
        %% Make room: the pending messages go out with the next flushes, in order.
        Got = read_all(C, length(Accepted), []),
        ?assertEqual(Accepted, Got),
        ?assertEqual(0, stat(pending)),
        ?assertNot(lists:member(Refused, Got)),
        %% The refused message is still the caller's: it can be sent now.
        ok = ?B:send_message(Refused),
        ?assertEqual({ok, 0}, ?B:flush_batch()),
        ?assertEqual([Refused], drain(C)),
        ?assertMatch({error, {too_large, _}}, ?B:send_message(binary:copy(<<0>>, 1017))),
        ok = ?B:stop()
    end).

%% Sends until the processor refuses; returns the accepted messages and the refused one.
fill(Big, I, Acc) when I < 1000 ->
    case ?B:send_message(Big(I)) of
        ok -> fill(Big, I + 1, [Big(I) | Acc]);
        {error, {full, _}} -> {lists:reverse(Acc), Big(I)}
    end.

read_all(_C, 0, Acc) ->
    lists:append(lists:reverse(Acc));
read_all(C, N, Acc) ->
    Frames = drain(C),
    case ?B:flush_batch() of
        {ok, _} -> ok;
        {partial, _, _} -> ok
    end,
    read_all(C, N - length(Frames), [Frames | Acc]).

%% Stopping flushes what is pending; what cannot be sent is reported, not dropped silently.
stop_flushes_and_reports_what_could_not_be_sent_test_() ->
    {timeout, 120, fun stop_flushes_and_reports_what_could_not_be_sent/0}.

stop_flushes_and_reports_what_could_not_be_sent() ->
    with_dir(fun(Dir) ->
        {Name, _Ring, C} = new_ring(Dir, #{capacity => 4096}),
        Opts = #{dir => Dir, batch_timeout => ?HOUR, drain_timeout => 0},
        %% Pending messages are flushed by stop/1 ...
        {ok, _} = ?B:start_link(Name, Opts),
        ok = ?B:send_message(msg(0)),
        [ok = ?B:send_message(msg(I)) || I <- lists:seq(1, 10)],
        ?assertEqual(10, stat(pending)),
        ok = ?B:stop(),
        ?assertEqual([msg(I) || I <- lists:seq(0, 10)], drain(C)),
        %% ... and by terminate/2 (gen_server:stop, a supervisor's shutdown) ...
        {ok, P2} = ?B:start_link(Name, Opts#{name => undefined}),
        ok = ?B:send_message(P2, msg(11)),
        [ok = ?B:send_message(P2, msg(I)) || I <- lists:seq(12, 20)],
        ok = gen_server:stop(P2),
        ?assertEqual([msg(I) || I <- lists:seq(11, 20)], drain(C)),
        %% ... and what a full ring cannot take is counted in the reply.
        {ok, _} = ?B:start_link(Name, Opts#{max_pending => 5}),
        Big = fun(I) -> <<I:32, 0:(996 * 8)>> end,
        {Accepted, _Refused} = fill(Big, 0, []),
        ?assertEqual({discarded, 5}, ?B:stop()),
        ?assertEqual(lists:sublist(Accepted, length(Accepted) - 5), drain(C)),
        ?assertMatch({error, {closed, _}}, ?B:send_message(<<"late">>))
    end).

%% Options, ring handles, and errors.
start_options_test_() ->
    {timeout, 120, fun start_options/0}.

start_options() ->
    with_dir(fun(Dir) ->
        {_Name, Ring, C} = new_ring(Dir, #{}),
        ?assertMatch({error, {not_found, _}}, ?B:start(<<"nope">>, #{dir => Dir})),
        ?assertMatch({error, {invalid_argument, _}}, ?B:start(Ring, untyped(#{bogus => 1}))),
        ?assertMatch({error, {invalid_argument, _}}, ?B:start(Ring, untyped(#{batch_size => 0}))),
        ?assertMatch({error, {invalid_argument, _}}, ?B:start(Ring, untyped(not_a_map))
),
        %% A ring handle and a batch size of 3, unregistered.
        {ok, P} = ?B:start(Ring, #{batch_size => 3, batch_timeout => ?HOUR,
                                   name => undefined}),
        ?assertEqual(undefined, whereis(?B)),
        ok = ?B:send_message(P, <<"a">>),                    % idle: at once, unread
        ok = ?B:send_message(P, [<<"b">>, "c"]),
        ok = ?B:send_message(P, <<"d">>),
        {ok, #{pending := 2}} = ?B:stats(P),
        ok = ?B:send_message(P, <<"e">>),
        {ok, #{pending := 0, flush_size := 1, due_ms := infinity}} = ?B:stats(P),
        ?assertEqual([<<"a">>, <<"bc">>, <<"d">>, <<"e">>], drain(C)),
        ok = ?B:stop(P),
        ?assertMatch({error, {closed, _}}, ?B:flush_batch(P)),
        ?assertMatch({error, {closed, _}}, ?B:stats())
    end).

%% A registered processor killed outright leaves its engine processor published; the next
%% server of that name for the same ring adopts it, pending messages included, and sends them.
%% One started for another ring does not adopt it: the left processor is flushed into its own
%% ring and freed. No message is lost.
killed_processor_is_adopted_test_() ->
    {timeout, 120, fun killed_processor_is_adopted/0}.

killed_processor_is_adopted() ->
    with_dir(fun(Dir) ->
        {Name, _Ring, C} = new_ring(Dir, #{}),
        Kill = fun() ->
                       Pid = whereis(?B),
                       Mon = monitor(process, Pid),
                       exit(Pid, kill),
                       receive {'DOWN', Mon, process, Pid, killed} -> ok end
               end,
        {ok, _} = ?B:start(Name, #{dir => Dir, batch_timeout => ?HOUR}),
        ok = ?B:send_message(msg(0)), % idle consumer: at once; it stays unread
        [ok = ?B:send_message(msg(I)) || I <- lists:seq(1, 9)],
        ?assertEqual(9, stat(pending)),
        Kill(),
        %% Same ring, given as a string this time: adopted.
        {ok, _} = ?B:start(binary_to_list(iolist_to_binary(Name)),
                           #{dir => list_to_binary(Dir), batch_timeout => ?HOUR}),
        ?assertEqual(9, stat(pending)),
        ok = ?B:send_message(msg(10)),
        ?assertEqual({ok, 10}, ?B:flush_batch()),
        ?assertEqual([msg(I) || I <- lists:seq(0, 10)], drain(C)),
        %% Killed with messages pending, then a server for another ring: the left processor
        %% flushes into its own ring.
        ok = ?B:send_message(msg(11)), % idle: at once
        [ok = ?B:send_message(msg(I)) || I <- lists:seq(12, 14)],
        ?assertEqual(3, stat(pending)),
        Kill(),
        {Other, _OtherRing, C2} = new_ring(Dir, #{}),
        {ok, _} = ?B:start(Other, #{dir => Dir, batch_timeout => ?HOUR}),
        ?assertEqual(0, stat(pending)),
        ?assertEqual([msg(I) || I <- lists:seq(11, 14)], drain(C)),
        ok = ?B:send_message(<<"other">>),
        ?assertEqual([<<"other">>], drain(C2)),
        ok = ?B:stop(),
        ?assertEqual(undefined, persistent_term:get({?B, {local, ?B}}, undefined))
    end).

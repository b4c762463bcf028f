%% EUnit tests of erlmcp_flow_ring: shared-memory rings through the NIF, delivery threads, and
%% a ring shared with another OS process (the engine's erlmcp-flow command line).
%%
%% Every test makes its rings in a temporary directory of its own and removes it.
-module(erlmcp_flow_ring_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-define(R, erlmcp_flow_ring).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

tmp_dir() ->
    Base = case os:getenv("TMPDIR") of false -> "/tmp"; "" -> "/tmp"; D -> D end,
    Dir = filename:join(Base, "erlmcp_flow_ring_" ++ os:getpid() ++ "_"
                        ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.

%% Runs Fun(Dir) with a fresh directory, removed afterwards, in a process of its own: the
%% deliveries it owns end with it, also when it fails. Checks that every delivery the test
%% started is gone (threads joined) at the end, and re-raises the test's failure.
with_dir(Fun) ->
    Dir = tmp_dir(),
    Parent = self(),
    Pid = spawn_link(fun() ->
                             Result = try {ok, Fun(Dir)}
                                      catch Class:Reason:Stack -> {Class, Reason, Stack}
                                      end,
                             Parent ! {self(), Result}
                     end),
    Result = receive {Pid, R} -> R end,
    try
        wait_deliveries(0, 3000)
    after
        ok = file:del_dir_r(Dir)
    end,
    case Result of
        {ok, Value} -> Value;
        {Class, Reason, Stack} -> erlang:raise(Class, Reason, Stack)
    end.

new_ring(Dir, Opts) ->
    Name = "t" ++ integer_to_list(erlang:unique_integer([positive])),
    {ok, Ring} = ?R:create(Name, Opts#{dir => Dir}),
    {Name, Ring}.

frame(I) -> <<I:64/little, 0:(56 * 8)>>.

%% Waits until erlmcp_flow_nif:deliveries() =:= N.
wait_deliveries(N, Ms) ->
    wait_until(fun() -> erlmcp_flow_nif:deliveries() =:= N end, Ms),
    ?assertEqual(N, erlmcp_flow_nif:deliveries()).

wait_until(Pred, Ms) when Ms =< 0 ->
    Pred();
wait_until(Pred, Ms) ->
    case Pred() of
        true -> true;
        false -> timer:sleep(10), wait_until(Pred, Ms - 10)
    end.

%% Receives delivered frames of Ref until N have come (acking every message); returns them.
collect(Ref, N, Timeout) ->
    collect(Ref, N, Timeout, []).

collect(_Ref, N, _Timeout, Acc) when N =< 0 ->
    lists:append(lists:reverse(Acc));
collect(Ref, N, Timeout, Acc) ->
    receive
        {erlmcp_flow_frames, Ref, Frames} ->
            ok = ?R:ack(Ref),
            collect(Ref, N - length(Frames), Timeout, [Frames | Acc]);
        {erlmcp_flow_error, Ref, Reason} ->
            error({delivery_error, Reason})
    after Timeout ->
            error({timeout_waiting_for, N})
    end.

%% Sends all frames with send_batch, retrying the unsent rest under back-pressure.
send_all(_P, []) ->
    ok;
send_all(P, Frames) ->
    {Batch, Later} = lists:split(min(256, length(Frames)), Frames),
    case ?R:send_batch(P, Batch) of
        {ok, 0} -> timer:sleep(1), send_all(P, Frames);
        {ok, N} -> send_all(P, lists:nthtail(N, Batch) ++ Later)
    end.

drain(C) ->
    drain(C, []).

drain(C, Acc) ->
    case ?R:recv_batch(C, 4096, 0) of
        {ok, Frames} -> drain(C, [Frames | Acc]);
        {error, {timeout, _}} -> lists:append(lists:reverse(Acc))
    end.

%% Pulls N frames from C with recv_batch.
pull(_C, N, Acc) when N =< 0 ->
    lists:reverse(Acc);
pull(C, N, Acc) ->
    {ok, Fs} = ?R:recv_batch(C, 100, 5000),
    pull(C, N - length(Fs), lists:reverse(Fs, Acc)).

%% True once the primary consumer of Ring can be attached (it is then released again).
consumer_free(Ring) ->
    case ?R:consumer(Ring) of
        {ok, C} -> ok = ?R:close(C), true;
        {error, {busy, _}} -> false
    end.

%% Sends frames with send_batch until the ring takes none; returns how many went in.
fill(P, From) ->
    fill(P, From, 0).

fill(P, From, Sent) ->
    case ?R:send_batch(P, [frame(I) || I <- lists:seq(From, From + 99)]) of
        {ok, 0} -> Sent;
        {ok, N} -> fill(P, From + N, Sent + N)
    end.

flush_frames(Ref) ->
    receive {erlmcp_flow_frames, Ref, _} -> flush_frames(Ref) after 0 -> ok end.

threads() ->
    case file:list_dir("/proc/self/task") of
        {ok, Tasks} -> length(Tasks);
        {error, _} -> undefined
    end.

%%--------------------------------------------------------------------------------------------
%% Round trips
%%--------------------------------------------------------------------------------------------

round_trip_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 65536}),
        {ok, P} = ?R:producer(Ring),
        {ok, C} = ?R:consumer(Ring),
        ?assertEqual({ok, 16376}, ?R:max_payload(Ring)),
        ok = ?R:send(P, <<"hello">>),
        ok = ?R:send(P, [<<"io">>, $d, [<<"ata">>]]),
        ok = ?R:send(P, <<>>),
        Big = binary:copy(<<"x">>, 16376),
        ok = ?R:send(P, Big),
        ?assertMatch({ok, N} when N > 0, ?R:lag(C)),
        ?assertEqual({ok, <<"hello">>}, ?R:recv(C, 100)),
        ?assertEqual({ok, <<"iodata">>}, ?R:recv(C, 0)),
        ?assertEqual({ok, <<>>}, ?R:recv(C, infinity)),
        ?assertEqual({ok, Big}, ?R:recv(C, 0)),
        ?assertEqual({ok, 0}, ?R:lag(C)),
        ?assertMatch({error, {timeout, _}}, ?R:recv(C, 0)),
        T0 = erlang:monotonic_time(millisecond),
        ?assertMatch({error, {timeout, _}}, ?R:recv(C, 120)),
        ?assert(erlang:monotonic_time(millisecond) - T0 >= 100),
        %% A frame sent while recv waits wakes it up.
        Self = self(),
        spawn_link(fun() -> timer:sleep(50), Self ! {sent, ?R:send(P, <<"late">>)} end),
        ?assertEqual({ok, <<"late">>}, ?R:recv(C, 5000)),
        receive {sent, ok} -> ok end,
        ok = ?R:send(P, <<"a">>),
        ok = ?R:send(P, <<"b">>),
        ?assertEqual({ok, [<<"a">>, <<"b">>]}, ?R:recv_batch(C, 10, 100)),
        {ok, Stats} = ?R:stats(Ring),
        ?assertMatch(#{capacity := 65536, sent := 7, received := 7, producers := 1,
                       subscribers := 1, max_payload := 16376, corrupt_frames := 0}, Stats),
        %% Handles are released when garbage collected: keep them until here.
        [ok = ?R:close(H) || H <- [P, C]],
        ok = ?R:unlink(Ring),
        ?assertEqual([], filelib:wildcard(filename:join(Dir, "emf-*")))
    end).

open_and_multi_producer_test() ->
    with_dir(fun(Dir) ->
        {Name, Ring} = new_ring(Dir, #{multi_producer => true, max_producers => 4,
                                       capacity => 8192}),
        {ok, Ring2} = ?R:open(Name, #{dir => list_to_binary(Dir)}),
        {ok, P1} = ?R:producer(Ring),
        {ok, P2} = ?R:producer(Ring2),
        ok = ?R:send(P1, <<"1">>),
        ok = ?R:send(P2, <<"2">>),
        {ok, C} = ?R:consumer(Ring2),
        ?assertEqual([<<"1">>, <<"2">>], drain(C)),
        ?assertMatch({ok, #{producers := 2, sent := 2}}, ?R:stats(Ring)),
        ok = ?R:close(Ring2),
        ?assertMatch({error, {closed, _}}, ?R:stats(Ring2)),
        %% Producers and consumers keep the ring mapped after its handle is closed.
        ok = ?R:send(P2, <<"3">>),
        ?assertEqual({ok, <<"3">>}, ?R:recv(C, 100)),
        [ok = ?R:close(H) || H <- [P1, P2, C]],
        ok = ?R:unlink(Ring)
    end).

%% send/3 waits for space on a dirty scheduler: it succeeds once a consumer makes room and
%% times out when none does.
send_with_timeout_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 4096}),
        {ok, P} = ?R:producer(Ring),
        {ok, C} = ?R:consumer(Ring),
        Sent = fill(P, 1),
        ?assert(Sent > 50 andalso Sent < 100),
        ?assertMatch({error, {full, _}}, ?R:send(P, frame(0))),
        ?assertMatch({error, {timeout, _}}, ?R:send(P, frame(0), 50)),
        Self = self(),
        spawn_link(fun() -> timer:sleep(50), Self ! {drained, drain(C)} end),
        ?assertEqual(ok, ?R:send(P, frame(999), 5000)),
        %% The drain may or may not have seen the frame sent while it ran.
        Drained = receive {drained, D} -> D end,
        Want = [frame(I) || I <- lists:seq(1, Sent)] ++ [frame(999)],
        ?assertEqual(Want, Drained ++ drain(C)),
        ok = ?R:unlink(Ring)
    end).

%%--------------------------------------------------------------------------------------------
%% Batches under back-pressure
%%--------------------------------------------------------------------------------------------

%% A batch into a nearly full ring is accepted in part: exactly the first Sent frames arrive,
%% the rest stay the caller's, and resending them loses and duplicates nothing.
batch_partial_acceptance_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 4096}),
        {ok, P} = ?R:producer(Ring),
        {ok, C} = ?R:consumer(Ring),
        All = [frame(I) || I <- lists:seq(1, 1000)],
        {ok, First} = ?R:send_batch(P, All),
        ?assert(First > 0 andalso First < 1000),
        %% The engine halves a batch that does not fit: what it left may still fit in part.
        More = fun More(Sent) ->
                       case ?R:send_batch(P, lists:nthtail(Sent, All)) of
                           {ok, 0} -> Sent;
                           {ok, N} -> More(Sent + N)
                       end
               end,
        Filled = More(First),
        ?assert(Filled < 1000),
        ?assertEqual({ok, 0}, ?R:send_batch(P, lists:nthtail(Filled, All))),
        ?assertEqual({ok, 0}, ?R:send_batch(P, [])),
        %% Drain, resend what was not sent, until everything went through.
        Loop = fun Loop([], Acc, Partials) ->
                       {lists:append(lists:reverse([drain(C) | Acc])), Partials};
                   Loop(Pending, Acc, Partials) ->
                       Drained = drain(C),
                       {ok, N} = ?R:send_batch(P, Pending),
                       ?assert(N > 0),
                       Loop(lists:nthtail(N, Pending), [Drained | Acc],
                            Partials + min(1, length(Pending) - N))
               end,
        {Received, Partials} = Loop(lists:nthtail(Filled, All), [], 1),
        ?assert(Partials >= 2),
        ?assertEqual(All, Received),
        ?assertEqual([], drain(C)),
        {ok, Stats} = ?R:stats(Ring),
        ?assertMatch(#{sent := 1000, received := 1000}, Stats),
        ?assert(maps:get(backpressure, Stats) > 0),
        %% A frame past max_payload refuses the whole batch: nothing is sent.
        {ok, Max} = ?R:max_payload(Ring),
        ?assertMatch({error, {too_large, _}},
                     ?R:send_batch(P, [<<"ok">>, binary:copy(<<0>>, Max + 1)])),
        ?assertEqual([], drain(C)),
        %% Iodata frames (flattened on a dirty scheduler).
        ?assertEqual({ok, 2}, ?R:send_batch(P, [[<<"a">>, "b"], <<"c">>])),
        ?assertEqual([<<"ab">>, <<"c">>], drain(C)),
        ok = ?R:unlink(Ring)
    end).

%% A batch above 4096 frames goes to a dirty scheduler and still sends in order.
large_batch_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 20}),
        {ok, P} = ?R:producer(Ring),
        {ok, C} = ?R:consumer(Ring),
        All = [frame(I) || I <- lists:seq(1, 10000)],
        {ok, 10000} = ?R:send_batch(P, All),
        ?assertEqual(All, drain(C)),
        ok = ?R:unlink(Ring)
    end).

%%--------------------------------------------------------------------------------------------
%% Delivery
%%--------------------------------------------------------------------------------------------

deliver_100k_in_order_test_() ->
    {timeout, 120, fun deliver_100k_in_order/0}.

deliver_100k_in_order() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 18}),
        {ok, C} = ?R:consumer(Ring),
        {ok, Ref} = ?R:deliver(C, self()),
        ?assert(is_reference(Ref)),
        N = 100000,
        Producer = spawn_link(fun() ->
                                      {ok, P} = ?R:producer(Ring),
                                      send_all(P, [frame(I) || I <- lists:seq(1, N)])
                              end),
        Frames = collect(Ref, N, 10000),
        ?assertEqual(N, length(Frames)),
        ?assertEqual(lists:seq(1, N), [I || <<I:64/little, _/binary>> <- Frames]),
        ok = ?R:stop(Ref),
        ?assertEqual(ok, receive {erlmcp_flow_frames, Ref, _} -> extra after 50 -> ok end),
        ?assertMatch({ok, #{sent := N, received := N}}, ?R:stats(Ring)),
        unlink(Producer),
        ok = ?R:unlink(Ring)
    end).

%% Without acks, at most `window' messages arrive; the ring then fills up and producers get
%% back-pressure. Acks let the rest through, in order.
deliver_flow_control_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 4096}),
        {ok, P} = ?R:producer(Ring),
        {ok, C} = ?R:consumer(Ring),
        Fill = fun Fill(I) ->
                       case ?R:send(P, frame(I)) of
                           ok -> Fill(I + 1);
                           {error, {full, _}} -> I - 1
                       end
               end,
        Full = Fill(1),
        ?assert(Full > 50),
        {ok, Ref} = ?R:deliver(C, self(), #{window => 2, max_frames => 10}),
        %% Two messages of 10 frames, then nothing without acks: the ring fills up again.
        Delivered = fun() ->
                            {messages, Ms} = process_info(self(), messages),
                            length([x || {erlmcp_flow_frames, R, _} <- Ms, R =:= Ref])
                    end,
        ?assert(wait_until(fun() -> Delivered() >= 2 end, 30000)),
        Sent = Fill(Full + 1),
        ?assert(Sent > Full andalso Sent =< Full + 20),
        %% Without credit the thread delivers nothing more, however long we look.
        {messages, Msgs} = process_info(self(), messages),
        Mine = [Fs || {erlmcp_flow_frames, R, Fs} <- Msgs, R =:= Ref],
        ?assertEqual([10, 10], [length(Fs) || Fs <- Mine]),
        ?assertMatch({error, {full, _}}, ?R:send(P, frame(0))),
        Frames = collect(Ref, Sent, 2000),
        ?assertEqual(lists:seq(1, Sent), [I || <<I:64/little, _/binary>> <- Frames]),
        ok = ?R:stop(Ref),
        flush_frames(Ref),
        ok = ?R:unlink(Ring)
    end).

%% Frames above max_bytes are delivered alone, and large ones arrive intact.
deliver_large_frames_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 20}),
        {ok, P} = ?R:producer(Ring),
        {ok, C} = ?R:consumer(Ring),
        {ok, Ref} = ?R:deliver(C, self(), #{max_bytes => 1024, window => infinity}),
        Sizes = [10, 5000, 20, 30, 200000, 0, 1020, 1021],
        Frames = [binary:copy(<<(S rem 251)>>, S) || S <- Sizes],
        {ok, 8} = ?R:send_batch(P, Frames),
        Messages = fun Loop(Got, Acc) when Got >= length(Sizes) -> lists:reverse(Acc);
                       Loop(Got, Acc) ->
                           receive {erlmcp_flow_frames, Ref, Fs} -> Loop(Got + length(Fs), [Fs | Acc])
                           after 2000 -> error(timeout)
                           end
                   end(0, []),
        ?assertEqual(Frames, lists:append(Messages)),
        [?assert(length(M) =:= 1 orelse lists:sum([byte_size(F) + 4 || F <- M]) =< 1024)
         || M <- Messages],
        ok = ?R:stop(Ref),
        ok = ?R:unlink(Ring)
    end).

%% stop/1 returns once the thread has ended: nothing arrives afterwards, and frames sent later
%% stay in the ring for the next consumer, which resumes right after the last frame delivered.
stop_and_resume_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 16}),
        {ok, P} = ?R:producer(Ring),
        {ok, C} = ?R:consumer(Ring),
        {ok, Ref} = ?R:deliver(C, self(), #{max_frames => 7}),
        {ok, 30} = ?R:send_batch(P, [frame(I) || I <- lists:seq(1, 30)]),
        Got = collect(Ref, 30, 2000),
        ?assertEqual(30, length(Got)),
        ok = ?R:stop(Ref),
        ok = ?R:stop(Ref),
        {ok, 10} = ?R:send_batch(P, [frame(I) || I <- lists:seq(31, 40)]),
        ?assertEqual(ok, receive {erlmcp_flow_frames, Ref, _} -> extra after 100 -> ok end),
        ?assertEqual(ok, ?R:ack(Ref)),
        {ok, C2} = ?R:consumer(Ring),
        ?assertEqual([frame(I) || I <- lists:seq(31, 40)], drain(C2)),
        ok = ?R:unlink(Ring)
    end).

%% The delivery keeps the ring mapped on its own: the ring and consumer handles may be closed
%% or collected while it runs.
deliver_outlives_handles_test() ->
    with_dir(fun(Dir) ->
        {Name, Ring} = new_ring(Dir, #{capacity => 1 bsl 16}),
        {ok, C} = ?R:consumer(Ring),
        {ok, Ref} = ?R:deliver(C, self()),
        ok = ?R:close(C),
        ok = ?R:close(Ring),
        erlang:garbage_collect(),
        {ok, Ring2} = ?R:open(Name, #{dir => Dir}),
        {ok, P} = ?R:producer(Ring2),
        {ok, 100} = ?R:send_batch(P, [frame(I) || I <- lists:seq(1, 100)]),
        ?assertEqual([frame(I) || I <- lists:seq(1, 100)], collect(Ref, 100, 2000)),
        ok = ?R:stop(Ref),
        ok = ?R:unlink(Ring2)
    end).

%%--------------------------------------------------------------------------------------------
%% Fan-out and restarts
%%--------------------------------------------------------------------------------------------

subscriber_fan_out_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 16, max_subscribers => 4}),
        {ok, P} = ?R:producer(Ring),
        {ok, Early} = ?R:subscribe(Ring),
        ok = ?R:send(P, frame(0)),
        %% A subscriber sees what is sent after it attached.
        {ok, S1} = ?R:subscribe(Ring),
        {ok, S2} = ?R:subscribe(Ring),
        ?assertMatch({error, {busy, _}}, ?R:subscribe(Ring)),
        {ok, Primary} = ?R:consumer(Ring),
        {ok, Ref} = ?R:deliver(S2, self()),
        Parent = self(),
        All = [frame(I) || I <- lists:seq(1, 2000)],
        spawn_link(fun() -> send_all(P, All), Parent ! sent end),
        %% Every consumer holds the producer back: they all read at once.
        Pull = fun(C, N) ->
                       spawn_link(fun() ->
                                          Parent ! {pulled, C, pull(C, N, [])}
                                  end)
               end,
        Pull(S1, 2000),
        Pull(Primary, 2001),
        Pull(Early, 2001),
        ?assertEqual(All, collect(Ref, 2000, 5000)),
        [receive {pulled, C, Got} -> ?assertEqual(Want, Got) after 10000 -> error(C) end
         || {C, Want} <- [{S1, All}, {Primary, [frame(0) | All]}, {Early, [frame(0) | All]}]],
        receive sent -> ok end,
        ?assertMatch({ok, #{subscribers := 4}}, ?R:stats(Ring)),
        ok = ?R:stop(Ref),
        ok = ?R:close(S1),
        %% A slot freed by close is reused.
        {ok, S3} = ?R:subscribe(Ring),
        [ok = ?R:close(H) || H <- [P, Early, Primary, S3]],
        ok = ?R:unlink(Ring)
    end).

consumer_restart_resumes_test() ->
    with_dir(fun(Dir) ->
        {Name, Ring} = new_ring(Dir, #{capacity => 1 bsl 16}),
        {ok, P} = ?R:producer(Ring),
        {ok, 30} = ?R:send_batch(P, [frame(I) || I <- lists:seq(1, 30)]),
        {ok, C1} = ?R:consumer(Ring),
        _ = [{ok, _} = ?R:recv(C1, 0) || _ <- lists:seq(1, 10)],
        %% One primary consumer at a time.
        ?assertMatch({error, {busy, _}}, ?R:consumer(Ring)),
        ok = ?R:close(C1),
        ok = ?R:close(C1),
        ?assertMatch({error, {closed, _}}, ?R:recv(C1, 0)),
        %% Another ring handle, as another process would open it.
        {ok, Ring2} = ?R:open(Name, #{dir => Dir}),
        {ok, C2} = ?R:consumer(Ring2),
        ?assertEqual({ok, frame(11)}, ?R:recv(C2, 0)),
        ok = ?R:close(C2),
        %% Also when the handle is only garbage collected.
        Self = self(),
        Pid = spawn(fun() -> {ok, C3} = ?R:consumer(Ring), Self ! {self(), ?R:recv(C3, 0)} end),
        receive {Pid, Got} -> ?assertEqual({ok, frame(12)}, Got) end,
        ?assert(wait_until(fun() -> consumer_free(Ring) end, 2000)),
        {ok, C4} = ?R:consumer(Ring),
        ?assertEqual({ok, frame(13)}, ?R:recv(C4, 0)),
        ok = ?R:unlink(Ring)
    end).

%%--------------------------------------------------------------------------------------------
%% Owners, threads and schedulers
%%--------------------------------------------------------------------------------------------

%% When the owner dies the delivery thread ends and is joined, the consumer is released, and
%% no thread is left behind.
owner_death_stops_the_thread_test_() ->
    {timeout, 30, fun owner_death_stops_the_thread/0}.

owner_death_stops_the_thread() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 16, max_subscribers => 8}),
        {ok, P} = ?R:producer(Ring),
        %% The reaper thread is started by the first delivery of a load: start it now.
        {ok, C0} = ?R:subscribe(Ring),
        {ok, Ref0} = ?R:deliver(C0, self()),
        ok = ?R:stop(Ref0),
        wait_deliveries(0, 2000),
        Threads = threads(),
        Owners = [spawn(fun() -> receive never -> ok end end) || _ <- lists:seq(1, 5)],
        {ok, Primary} = ?R:consumer(Ring),
        Subs = [Primary | [begin {ok, S} = ?R:subscribe(Ring), S end || _ <- lists:seq(1, 4)]],
        Refs = [begin {ok, Ref} = ?R:deliver(S, O, #{window => infinity}), Ref end
                || {S, O} <- lists:zip(Subs, Owners)],
        ?assertEqual(5, erlmcp_flow_nif:deliveries()),
        [?assertEqual(Threads + 5, threads()) || Threads =/= undefined],
        {ok, _} = ?R:send_batch(P, [frame(I) || I <- lists:seq(1, 100)]),
        %% Kill some owners while frames flow, some while idle.
        [exit(O, kill) || O <- lists:sublist(Owners, 3)],
        {ok, _} = ?R:send_batch(P, [frame(I) || I <- lists:seq(1, 100)]),
        [exit(O, kill) || O <- lists:nthtail(3, Owners)],
        wait_deliveries(0, 5000),
        [?assertEqual(Threads, threads()) || Threads =/= undefined],
        %% The threads released their consumers: the primary one and the slots are free.
        {ok, C} = ?R:consumer(Ring),
        ?assertMatch({ok, #{subscribers := 1}}, ?R:stats(Ring)),
        _ = [{ok, _} = ?R:subscribe(Ring) || _ <- lists:seq(1, 7)],
        %% Acks and stops of ended deliveries are harmless.
        [ok = ?R:ack(Ref) || Ref <- Refs],
        [ok = ?R:stop(Ref) || Ref <- Refs],
        ok = ?R:close(C),
        ok = ?R:unlink(Ring)
    end).

%% Waiting calls (recv with a timeout, send/3, stop/1) run on dirty schedulers: with more of
%% them waiting than there are normal schedulers, other processes still run at once.
waiting_calls_leave_normal_schedulers_free_test_() ->
    {timeout, 30, fun waiting_calls_leave_normal_schedulers_free/0}.

waiting_calls_leave_normal_schedulers_free() ->
    with_dir(fun(Dir) ->
        Waiters = erlang:system_info(schedulers_online) + 2,
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 16, max_subscribers => Waiters + 1}),
        Self = self(),
        Pids = [spawn_link(fun() ->
                                   {ok, S} = ?R:subscribe(Ring),
                                   Self ! {ready, self()},
                                   Self ! {done, self(), ?R:recv(S, 600)}
                           end) || _ <- lists:seq(1, Waiters)],
        [receive {ready, Pid} -> ok end || Pid <- Pids],
        %% A short pause so that the recvs are most likely waiting inside the NIF; the check
        %% below is an ordering, true whether or not they already are.
        timer:sleep(50),
        Echo = spawn_link(fun() -> receive {ping, From} -> From ! pong end end),
        Echo ! {ping, self()},
        %% The echo answers while every recv is still waiting: they block no scheduler.
        receive
            pong -> ok;
            {done, _, _} = Early -> error({done_before_pong, Early})
        end,
        [receive {done, Pid, R} -> ?assertMatch({error, {timeout, _}}, R) end || Pid <- Pids],
        ok = ?R:unlink(Ring)
    end).

%% A recv waiting in one process ends early when another closes the consumer.
close_ends_a_waiting_recv_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{}),
        {ok, C} = ?R:consumer(Ring),
        Self = self(),
        spawn_link(fun() -> Self ! {recv, ?R:recv(C, 10000)} end),
        timer:sleep(50),
        ok = ?R:close(C),
        %% {closed, _} (not {timeout, _} after 10 s) shows the wait ended because of close.
        receive {recv, R} -> ?assertMatch({error, {closed, _}}, R) end,
        %% The engine consumer was released once the waiting call left.
        ?assert(wait_until(fun() -> consumer_free(Ring) end, 1000)),
        ok = ?R:unlink(Ring)
    end).

%%--------------------------------------------------------------------------------------------
%% Bad input
%%--------------------------------------------------------------------------------------------

bad_input_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    RingMod = untyped(?R),
    with_dir(fun(Dir) ->
        Invalid = fun(R) -> ?assertMatch({error, {invalid_argument, <<_/binary>>}}, R) end,
        Invalid(RingMod:create("bad/name", #{dir => Dir})),
        Invalid(RingMod:create(".hidden", #{dir => Dir})),
        Invalid(RingMod:create(<<"nul", 0, "byte">>, #{dir => Dir})),
        Invalid(RingMod:create(123, #{dir => Dir})),
        Invalid(RingMod:create("x", #{dir => Dir, capacity => 1000})),
        ?assertMatch({error, {too_large, _}},
                     RingMod:create("x", #{dir => Dir, capacity => 1 bsl 31})),
        Invalid(RingMod:create("x", #{dir => Dir, capacity => -1})),
        Invalid(RingMod:create("x", #{dir => Dir, multi_producer => maybe})),
        Invalid(RingMod:create("x", #{dir => Dir, max_subscribers => 0})),
        Invalid(RingMod:create("x", #{dir => Dir, mode => 8#4777})),
        Invalid(RingMod:create("x", #{dir => [bad]})),
        Invalid(RingMod:create("x", #{dir => Dir, colour => blue})),
        Invalid(RingMod:create("x", not_a_map)),
        Invalid(RingMod:open("x", #{bogus => 1})),
        ?assertMatch({error, {not_found, _}}, RingMod:open("missing", #{dir => Dir})),
        ?assertMatch({error, {not_found, _}},
                     RingMod:create("x", #{dir => filename:join(Dir, "no")})),


        {Name, Ring} = new_ring(Dir, #{capacity => 4096}),
        ?assertMatch({error, {busy, _}}, RingMod:create(Name, #{dir => Dir})),
        {ok, P} = RingMod:producer(Ring),
        ?assertMatch({error, {busy, _}}, RingMod:producer(Ring)),
        {ok, C} = RingMod:consumer(Ring),
        ?assertMatch({error, {busy, _}}, RingMod:consumer(Ring)),

        %% Handles of the wrong kind, other terms, and references that are no handles.
        Invalid(RingMod:producer(P)),
        Invalid(RingMod:producer(make_ref())),
        Invalid(RingMod:stats(not_a_ring)),
        Invalid(RingMod:send(C, <<"x">>)),
        Invalid(RingMod:recv(P, 0)),
        Invalid(RingMod:close(self())),
        Invalid(RingMod:close(make_ref())),

        Invalid(RingMod:send(P, 123)),
        Invalid(RingMod:send(P, <<"x">>, -1)),
        Invalid(RingMod:send(P, <<"x">>, soon)),
        ?assertMatch({error, {too_large, _}}, RingMod:send(P, binary:copy(<<0>>, 1017))),
        Invalid(RingMod:send_batch(P, not_a_list)),
        Invalid(RingMod:send_batch(P, [<<"a">>, 1])),
        Invalid(RingMod:send_batch(P, [<<"a">> | <<"b">>])),
        Invalid(RingMod:recv(C, -5)),
        Invalid(RingMod:recv(C, forever)),
        Invalid(RingMod:recv_batch(C, 0, 0)),
        Invalid(RingMod:recv_batch(C, 10, bad)),
        ?assertEqual({ok, []}, {ok, drain(C)}),

        Invalid(RingMod:deliver(C, not_a_pid)),
        Invalid(RingMod:deliver(C, self(), #{window => 0})),
        Invalid(RingMod:deliver(C, self(), #{max_frames => 0})),
        Invalid(RingMod:deliver(C, self(), #{max_bytes => 10})),
        Invalid(RingMod:deliver(C, self(), #{poll_ms => 0})),
        Invalid(RingMod:deliver(C, self(), #{speed => fast})),
        Invalid(RingMod:deliver(C, self(), [])),
        Invalid(RingMod:deliver(P, self())),
        Dead = spawn(fun() -> ok end),
        wait_until(fun() -> not is_process_alive(Dead) end, 1000),
        ?assertMatch({error, {not_found, _}}, RingMod:deliver(C, Dead)),
        %% None of these consumed the consumer.
        ok = RingMod:send(P, <<"still">>),
        ?assertEqual({ok, <<"still">>}, RingMod:recv(C, 100)),
        Invalid(RingMod:ack(not_a_ref)),
        Invalid(RingMod:stop(not_a_ref)),
        ?assertEqual(ok, RingMod:stop(make_ref())),
        ?assertEqual(ok, RingMod:ack(make_ref())),

        %% Closed handles.
        {ok, Ref} = RingMod:deliver(C, self()),
        ?assertMatch({error, {closed, _}}, RingMod:recv(C, 0)),
        ?assertMatch({error, {closed, _}}, RingMod:deliver(C, self())),
        ok = RingMod:stop(Ref),
        ok = RingMod:close(P),
        ?assertMatch({error, {closed, _}}, RingMod:send(P, <<"x">>)),
        ?assertMatch({error, {closed, _}}, RingMod:send_batch(P, [<<"x">>])),
        {ok, _} = RingMod:producer(Ring),
        ok = RingMod:unlink(Ring),
        ?assertMatch({error, {not_found, _}}, RingMod:unlink(Ring)),
        ok = RingMod:close(Ring),
        ?assertMatch({error, {closed, _}}, RingMod:producer(Ring)),
        ?assertMatch({error, {closed, _}}, RingMod:max_payload(Ring))
    end).

%%--------------------------------------------------------------------------------------------
%% Another OS process: the engine's command line
%%--------------------------------------------------------------------------------------------

cli() ->
    Here = filename:absname(""),
    Candidates = [os:getenv("EMF_CLI"),
                  case os:getenv("EMF_LIB_DIR") of
                      false -> false;
                      LibDir -> filename:join(LibDir, "erlmcp-flow")
                  end,
                  filename:join([Here, "..", "..", "target", "release", "erlmcp-flow"])],
    case [C || C <- Candidates, C =/= false, filelib:is_regular(C)] of
        [Cli | _] -> Cli;
        [] -> error({erlmcp_flow_cli_not_found, Candidates})
    end.

run_cli(Args) ->
    open_port({spawn_executable, cli()},
              [{args, Args}, exit_status, stderr_to_stdout, binary]).

wait_port(Port, Timeout) ->
    wait_port(Port, Timeout, <<>>).

wait_port(Port, Timeout, Out) ->
    receive
        {Port, {data, D}} -> wait_port(Port, Timeout, <<Out/binary, D/binary>>);
        {Port, {exit_status, Status}} -> {Status, Out}
    after Timeout ->
            error({cli_timeout, Out})
    end.

%% The sequence-numbered frames of `erlmcp-flow ring produce' (crates/core/src/ring/seq.rs):
%% producer id (u32 LE), sequence (u64 LE), then byte i = (seq * 31) xor id xor i, all mod 256.
seq_tails(Id, Size) ->
    list_to_tuple([<< <<((K bxor Id bxor I) band 255)>> || I <- lists:seq(12, Size - 1)>>
                   || K <- lists:seq(0, 255)]).

seq_frame(Tails, Id, Seq) ->
    <<Id:32/little, Seq:64/little, (element(((Seq * 31) band 255) + 1, Tails))/binary>>.

cross_process_producer_test_() ->
    {timeout, 120, fun cross_process_producer/0}.

%% 100k frames from another OS process arrive in order and intact through a delivery thread.
cross_process_producer() ->
    with_dir(fun(Dir) ->
        {Name, Ring} = new_ring(Dir, #{capacity => 1 bsl 20}),
        {ok, C} = ?R:consumer(Ring),
        {ok, Ref} = ?R:deliver(C, self()),
        N = 100000,
        Port = run_cli(["ring", "produce", Name, "--dir", Dir, "--id", "7",
                        "--count", integer_to_list(N), "--size", "64"]),
        Tails = seq_tails(7, 64),
        Check = fun Loop(Seq, Exit) when Seq >= N -> Exit;
                    Loop(Seq, Exit) ->
                        receive
                            {erlmcp_flow_frames, Ref, Frames} ->
                                ok = ?R:ack(Ref),
                                Next = lists:foldl(
                                         fun(F, S) ->
                                                 ?assertEqual(seq_frame(Tails, 7, S), F),
                                                 S + 1
                                         end, Seq, Frames),
                                Loop(Next, Exit);
                            {Port, {exit_status, Status}} -> Loop(Seq, Status);
                            {Port, {data, D}} -> error({cli_output, D});
                            {erlmcp_flow_error, Ref, Reason} -> error(Reason)
                        after 20000 -> error({stalled_at, Seq})
                        end
                end,
        Exit = case Check(0, undefined) of
                   undefined -> element(1, wait_port(Port, 20000));
                   Status -> Status
               end,
        ?assertEqual(0, Exit),
        ok = ?R:stop(Ref),
        ?assertEqual(ok, receive {erlmcp_flow_frames, Ref, _} -> extra after 50 -> ok end),
        ?assertMatch({ok, #{sent := N, received := N, corrupt_frames := 0}}, ?R:stats(Ring)),
        ok = ?R:unlink(Ring)
    end).

cross_process_consumer_test_() ->
    {timeout, 120, fun cross_process_consumer/0}.

%% The other way: frames sent by the NIF are checked by `erlmcp-flow ring consume' in another
%% OS process (no loss, duplicate, reorder or corruption).
cross_process_consumer() ->
    with_dir(fun(Dir) ->
        {Name, Ring} = new_ring(Dir, #{capacity => 1 bsl 16}),
        {ok, P} = ?R:producer(Ring),
        N = 20000,
        Port = run_cli(["ring", "consume", Name, "--dir", Dir, "--count", integer_to_list(N)]),
        Tails = seq_tails(3, 64),
        Frames = [seq_frame(Tails, 3, S) || S <- lists:seq(0, N - 1)],
        {Half, Rest} = lists:split(N div 2, Frames),
        send_all(P, Half),
        [ok = ?R:send(P, F, 10000) || F <- Rest],
        {Status, Out} = wait_port(Port, 60000),
        ?assertEqual({0, match}, {Status, re:run(Out, "received 20000 frames, all in order",
                                                 [{capture, none}])}),
        ok = ?R:unlink(Ring)
    end).

%%--------------------------------------------------------------------------------------------
%% Acknowledgements, producer slots, checksums (ABI 3)
%%--------------------------------------------------------------------------------------------

%% Manual mode: a consumer closed without ack has its frames delivered again, in order, to
%% the next one; once acknowledged they are gone for good.
manual_ack_redelivers_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 16}),
        {ok, P} = ?R:producer(Ring),
        Frames = [frame(I) || I <- lists:seq(0, 9)],
        {ok, 10} = ?R:send_batch(P, Frames),
        {ok, C1} = ?R:consumer(Ring),
        ok = ?R:set_ack_mode(C1, manual),
        ?assertEqual({ok, 0}, ?R:unacked(C1)),
        ?assertEqual({ok, lists:sublist(Frames, 4)}, ?R:recv_batch(C1, 4, 0)),
        ?assertEqual({ok, frame(4)}, ?R:recv(C1, 0)),
        ?assertEqual({ok, 5}, ?R:unacked(C1)),
        ?assertMatch({ok, #{received := 0}}, ?R:stats(Ring)),   % nothing released
        ok = ?R:close(C1),
        {ok, C2} = ?R:consumer(Ring),
        ok = ?R:set_ack_mode(C2, manual),
        ?assertEqual(Frames, drain(C2)),
        ?assertEqual({ok, 10}, ?R:unacked(C2)),
        ok = ?R:ack(C2),
        ?assertEqual({ok, 0}, ?R:unacked(C2)),
        ok = ?R:ack(C2),                                          % nothing to acknowledge
        ok = ?R:close(C2),
        ?assertMatch({ok, #{received := 10}}, ?R:stats(Ring)),
        {ok, C3} = ?R:consumer(Ring),
        ?assertMatch({error, {timeout, _}}, ?R:recv(C3, 0)),
        ok = ?R:close(P),
        ok = ?R:unlink(Ring)
    end).

%% The owner of a manual-mode consumer is killed before it acknowledges: its handle is
%% collected, and the next consumer gets the frames again. In auto mode (the contrast)
%% recv releases before it returns: the frames received by the killed owner are not seen again.
killed_owner_of_a_manual_consumer_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 16}),
        {ok, P} = ?R:producer(Ring),
        {ok, 12} = ?R:send_batch(P, [frame(I) || I <- lists:seq(0, 11)]),
        Self = self(),
        Owner = fun(Mode) ->
                        spawn(fun() ->
                                      {ok, C} = ?R:consumer(Ring),
                                      ok = ?R:set_ack_mode(C, Mode),
                                      Self ! {got, self(), pull_exactly(C, 3)},
                                      receive never -> ok end
                              end)
                end,
        Pid = Owner(manual),
        receive {got, Pid, Got} -> ?assertEqual([frame(I) || I <- lists:seq(0, 2)], Got) end,
        exit(Pid, kill),
        ?assert(wait_until(fun() -> consumer_free(Ring) end, 2000)),
        Pid2 = Owner(auto),
        receive {got, Pid2, Again} -> ?assertEqual([frame(I) || I <- lists:seq(0, 2)], Again) end,
        exit(Pid2, kill),
        ?assert(wait_until(fun() -> consumer_free(Ring) end, 2000)),
        {ok, C} = ?R:consumer(Ring),
        ?assertEqual([frame(I) || I <- lists:seq(3, 11)], drain(C)),
        [ok = ?R:close(H) || H <- [P, C]],
        ok = ?R:unlink(Ring)
    end).

rewind_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 16}),
        {ok, P} = ?R:producer(Ring),
        {ok, 8} = ?R:send_batch(P, [frame(I) || I <- lists:seq(0, 7)]),
        {ok, C} = ?R:consumer(Ring),
        ok = ?R:set_ack_mode(C, manual),
        ?assertEqual([frame(I) || I <- lists:seq(0, 2)], pull_exactly(C, 3)),
        ?assertEqual({ok, 3}, ?R:rewind(C)),
        ?assertEqual({ok, 0}, ?R:unacked(C)),
        ?assertEqual([frame(I) || I <- lists:seq(0, 4)], pull_exactly(C, 5)),
        ok = ?R:ack(C),
        ?assertEqual({ok, frame(5)}, ?R:recv(C, 0)),
        ?assertEqual({ok, 1}, ?R:rewind(C)),                     % only since the ack
        ?assertEqual([frame(I) || I <- lists:seq(5, 7)], drain(C)),
        ok = ?R:ack(C),
        ?assertEqual({ok, 0}, ?R:rewind(C)),
        ?assertMatch({error, {timeout, _}}, ?R:recv(C, 0)),
        [ok = ?R:close(H) || H <- [P, C]],
        ok = ?R:unlink(Ring)
    end).

%% Back to auto acknowledges; deliver/2,3 switches a manual consumer to auto (its frames are
%% released as it delivers them, so the ring never fills up behind it).
auto_mode_acknowledges_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 4096}),
        {ok, P} = ?R:producer(Ring),
        {ok, 5} = ?R:send_batch(P, [frame(I) || I <- lists:seq(0, 4)]),
        {ok, C1} = ?R:consumer(Ring),
        ok = ?R:set_ack_mode(C1, manual),
        ?assertEqual([frame(0), frame(1)], pull_exactly(C1, 2)),
        ok = ?R:set_ack_mode(C1, auto),
        ?assertEqual({ok, 0}, ?R:unacked(C1)),
        ok = ?R:close(C1),
        {ok, C2} = ?R:consumer(Ring),
        ok = ?R:set_ack_mode(C2, manual),
        ?assertEqual([frame(2)], pull_exactly(C2, 1)),
        {ok, Ref} = ?R:deliver(C2, self()),
        ?assertEqual([frame(I) || I <- lists:seq(3, 4)], collect(Ref, 2, 5000)),
        %% 200 frames through a ring that holds 56: only possible if the delivery releases.
        Total = 200,
        Sender = spawn_link(fun() ->
                                    [ok = ?R:send(P, frame(I), 10000)
                                     || I <- lists:seq(5, 4 + Total)]
                            end),
        ?assertEqual([frame(I) || I <- lists:seq(5, 4 + Total)], collect(Ref, Total, 10000)),
        ok = ?R:stop(Ref),
        unlink(Sender),
        ?assert(wait_until(fun() -> consumer_free(Ring) end, 2000)),
        {ok, C3} = ?R:consumer(Ring),
        ?assertMatch({error, {timeout, _}}, ?R:recv(C3, 0)),   % nothing comes back
        [ok = ?R:close(H) || H <- [P, C3]],
        ok = ?R:unlink(Ring)
    end).

producer_slots_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{multi_producer => true, max_producers => 4,
                                    capacity => 1 bsl 16}),
        {ok, P2} = ?R:producer(Ring, #{slot => 2}),
        ?assertEqual({ok, 2}, ?R:slot(P2)),
        ?assertEqual({ok, 0}, ?R:committed(P2)),
        {ok, 3} = ?R:send_batch(P2, [frame(I) || I <- lists:seq(0, 2)]),
        ok = ?R:send(P2, frame(3)),
        ?assertEqual({ok, 4}, ?R:committed(P2)),
        ?assertMatch({error, {busy, _}}, ?R:producer(Ring, #{slot => 2})),
        {ok, P0} = ?R:producer(Ring, #{}),                       % the first free slot
        ?assertEqual({ok, 0}, ?R:slot(P0)),
        ok = ?R:close(P2),
        %% A slot's count carries over to its next holder.
        {ok, P2b} = ?R:producer(Ring, #{slot => 2}),
        ?assertEqual({ok, 4}, ?R:committed(P2b)),
        {ok, C} = ?R:consumer(Ring),
        ?assertEqual([frame(I) || I <- lists:seq(0, 3)], drain(C)),
        [ok = ?R:close(H) || H <- [P0, P2b, C]],
        ok = ?R:unlink(Ring)
    end).

killed_producer_resumes_in_its_slot_test_() ->
    {timeout, 120, fun killed_producer_resumes_in_its_slot/0}.

%% `erlmcp-flow ring produce' (another OS process, slot 0 of a single-producer ring) sends
%% without end while this process reads, and is killed with SIGKILL at an arbitrary point,
%% maybe inside a send. A producer attached in slot 0 reads committed/1 and resends from
%% there: the frames form one unbroken sequence, none lost or twice.
killed_producer_resumes_in_its_slot() ->
    with_dir(fun(Dir) ->
        {Name, Ring} = new_ring(Dir, #{capacity => 4096, stall_timeout_ms => 20}),
        {ok, C} = ?R:consumer(Ring),
        Port = run_cli(["ring", "produce", Name, "--dir", Dir, "--id", "7", "--count", "0",
                        "--size", "64"]),
        {os_pid, OsPid} = erlang:port_info(Port, os_pid),
        Tails = seq_tails(7, 64),
        Check = fun(Frames, From) ->
                        lists:foldl(fun(F, S) -> ?assertEqual(seq_frame(Tails, 7, S), F), S + 1 end,
                                    From, Frames)
                end,
        Pull = fun Loop(Seq, Until) when Seq >= Until -> Seq;
                   Loop(Seq, Until) ->
                       {ok, Frames} = ?R:recv_batch(C, 64, 10000),
                       Loop(Check(Frames, Seq), Until)
               end,
        Got = Pull(0, 3000),
        ?assertMatch({error, {busy, _}}, ?R:producer(Ring, #{slot => 0})),  % alive
        _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
        {Status, _} = wait_port(Port, 20000),
        ?assertEqual(128 + 9, Status),
        {ok, P} = ?R:producer(Ring, #{slot => 0}),
        ?assertEqual({ok, 0}, ?R:slot(P)),
        {ok, Resume} = ?R:committed(P),
        ?assert(Resume >= Got),
        End = Resume + 200,
        Sender = spawn_link(fun() ->
                                    [ok = ?R:send(P, seq_frame(Tails, 7, S), 10000)
                                     || S <- lists:seq(Resume, End - 1)]
                            end),
        ?assertEqual(End, Pull(Got, End)),
        ?assertMatch({error, {timeout, _}}, ?R:recv(C, 0)),
        unlink(Sender),
        ?assertMatch({ok, #{sent := End, received := End, corrupt_frames := 0}},
                     ?R:stats(Ring)),
        [ok = ?R:close(H) || H <- [P, C]],
        ok = ?R:unlink(Ring)
    end).

checksum_round_trip_test() ->
    with_dir(fun(Dir) ->
        {_, Ring} = new_ring(Dir, #{capacity => 1 bsl 16, checksum => true}),
        {ok, Max} = ?R:max_payload(Ring),
        {ok, P} = ?R:producer(Ring),
        {ok, C} = ?R:consumer(Ring),
        Frames = [<<>>, <<"x">>, binary:copy(<<"y">>, Max) | [frame(I) || I <- lists:seq(0, 99)]],
        ok = send_all(P, Frames),
        ?assertEqual(Frames, drain(C)),
        ?assertMatch({ok, #{corrupt_frames := 0}}, ?R:stats(Ring)),
        [ok = ?R:close(H) || H <- [P, C]],
        ok = ?R:unlink(Ring)
    end).

%% A byte of a frame changed in the segment (through the file, which shares its pages with
%% the mapping): with checksums the receive that meets it answers {corrupt, _} and the next
%% one goes on after it; without, the frame is delivered as it is.
checksum_detects_a_changed_frame_test() ->
    with_dir(fun(Dir) ->
        Marks = [mark() || _ <- lists:seq(1, 4)],
        Frames = [<<"frame-", M/binary>> || M <- Marks],
        {Name, Ring} = new_ring(Dir, #{capacity => 1 bsl 16, checksum => true}),
        {ok, P} = ?R:producer(Ring),
        {ok, C} = ?R:consumer(Ring),
        {ok, 3} = ?R:send_batch(P, lists:sublist(Frames, 3)),
        flip_in_segment(Dir, Name, lists:nth(2, Marks)),
        ?assertEqual({ok, [hd(Frames)]}, ?R:recv_batch(C, 10, 0)),  % the frames before it
        ?assertMatch({error, {corrupt, <<_/binary>>}}, ?R:recv_batch(C, 10, 0)),
        ?assertEqual({ok, lists:nth(3, Frames)}, ?R:recv(C, 0)),
        ?assertMatch({error, {timeout, _}}, ?R:recv(C, 0)),
        ok = ?R:send(P, lists:nth(4, Frames)),
        flip_in_segment(Dir, Name, lists:nth(4, Marks)),
        ?assertMatch({error, {corrupt, _}}, ?R:recv(C, 0)),
        ?assertMatch({error, {timeout, _}}, ?R:recv(C, 0)),
        ?assertMatch({ok, #{corrupt_frames := 2}}, ?R:stats(Ring)),
        [ok = ?R:close(H) || H <- [P, C]],
        ok = ?R:unlink(Ring),

        {Name2, Plain} = new_ring(Dir, #{capacity => 1 bsl 16}),
        {ok, P2} = ?R:producer(Plain),
        {ok, C2} = ?R:consumer(Plain),
        ok = ?R:send(P2, hd(Frames)),
        flip_in_segment(Dir, Name2, hd(Marks)),
        <<B0:6/binary, B1:3/binary, X, Rest/binary>> = hd(Frames),
        ?assertEqual({ok, <<B0/binary, B1/binary, (X bxor 16#40), Rest/binary>>}, ?R:recv(C2, 0)),
        ?assertMatch({ok, #{corrupt_frames := 0}}, ?R:stats(Plain)),
        [ok = ?R:close(H) || H <- [P2, C2]],
        ok = ?R:unlink(Plain)
    end).

acks_and_slots_bad_input_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    RingMod = untyped(?R),
    NifMod = untyped(erlmcp_flow_nif),
    with_dir(fun(Dir) ->
        Invalid = fun(R) -> ?assertMatch({error, {invalid_argument, <<_/binary>>}}, R) end,
        Invalid(RingMod:create("x", #{dir => Dir, checksum => maybe})),
        {_, Ring} = new_ring(Dir, #{capacity => 4096}),
        %% Slots: a single-producer ring has slot 0 only.
        Invalid(RingMod:producer(Ring, #{slot => 1})),
        Invalid(RingMod:producer(Ring, #{slot => -1})),
        Invalid(RingMod:producer(Ring, #{slot => 1 bsl 32})),
        Invalid(RingMod:producer(Ring, #{slot => first})),
        Invalid(RingMod:producer(Ring, #{colour => blue})),
        Invalid(RingMod:producer(Ring, [{slot, 0}])),
        Invalid(RingMod:producer(make_ref(), #{slot => 0})),
        {ok, P} = RingMod:producer(Ring, #{slot => 0}),
        ?assertMatch({error, {busy, _}}, RingMod:producer(Ring, #{slot => 0})),
        ?assertMatch({error, {busy, _}}, RingMod:producer(Ring)),
        {ok, C} = RingMod:consumer(Ring),
        Invalid(RingMod:committed(C)),
        Invalid(RingMod:committed(Ring)),
        Invalid(RingMod:slot(not_a_producer)),
        %% Acknowledgement modes and calls.
        Invalid(RingMod:set_ack_mode(C, sometimes)),
        Invalid(RingMod:set_ack_mode(C, 1)),
        Invalid(NifMod:consumer_set_ack_mode(C, 7)),       % the engine's answer
        Invalid(NifMod:consumer_set_ack_mode(C, -1)),
        Invalid(RingMod:set_ack_mode(P, manual)),
        Invalid(RingMod:ack(P)),
        Invalid(RingMod:ack(Ring)),
        Invalid(RingMod:ack(42)),
        ?assertEqual(ok, RingMod:ack(make_ref())),                       % an ended delivery's
        Invalid(RingMod:rewind(P)),
        Invalid(RingMod:rewind(make_ref())),
        Invalid(RingMod:unacked(Ring)),
        Invalid(RingMod:unacked(self())),
        ok = NifMod:consumer_set_ack_mode(C, 1),          % EMF_ACK_MANUAL
        ok = RingMod:send(P, <<"x">>),
        ?assertEqual({ok, <<"x">>}, RingMod:recv(C, 0)),
        ?assertEqual({ok, 1}, RingMod:unacked(C)),
        %% Closed handles.
        [ok = RingMod:close(H) || H <- [P, C]],
        Closed = fun(R) -> ?assertMatch({error, {closed, _}}, R) end,
        Closed(RingMod:committed(P)),
        Closed(RingMod:slot(P)),
        Closed(RingMod:set_ack_mode(C, auto)),
        Closed(RingMod:ack(C)),
        Closed(RingMod:rewind(C)),
        Closed(RingMod:unacked(C)),
        %% The closed manual consumer did not acknowledge "x".
        {ok, C2} = RingMod:consumer(Ring),
        ?assertEqual({ok, <<"x">>}, RingMod:recv(C2, 0)),
        ok = RingMod:close(C2),
        ok = RingMod:close(Ring),
        Closed(RingMod:producer(Ring, #{slot => 0}))
    end).

%% 16 bytes found nowhere else.
mark() ->
    <<(erlang:unique_integer([positive])):64, (rand:uniform(1 bsl 62)):64>>.

%% Receives exactly N frames (recv_batch may return fewer or more than asked for otherwise).
pull_exactly(C, N) ->
    [begin {ok, F} = ?R:recv(C, 5000), F end || _ <- lists:seq(1, N)].

%% Flips one byte of the only copy of Mark in ring Name's segment file.
flip_in_segment(Dir, Name, Mark) ->
    File = filename:join(Dir, "emf-" ++ Name),
    {ok, Bin} = file:read_file(File),
    [{Pos, _}] = binary:matches(Bin, Mark),
    {ok, Fd} = file:open(File, [read, write, raw, binary]),
    {ok, <<B>>} = file:pread(Fd, Pos + 3, 1),
    ok = file:pwrite(Fd, Pos + 3, <<(B bxor 16#40)>>),
    ok = file:close(Fd).

%% EUnit tests of erlmcp_flow_queue: priority order and FIFO, back-pressure then rejection
%% with the task handed back, low-priority eviction, counters, empty queues and waiting
%% dequeues, closing (every task handed back), large tasks, bad arguments, the default queue's
%% server, and concurrent producers and consumers (no task lost or duplicated, even across a
%% close).
%%
%% No assertion depends on timing: waits poll a condition with a deadline; the only timed
%% assertion is a lower bound (a dequeue with a timeout does not return early).
-module(erlmcp_flow_queue_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-behaviour(supervisor).
-export([init/1]).

-define(Q, erlmcp_flow_queue).
-define(PRIORITIES, [critical, high, normal, low]).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

new(Opts) ->
    {ok, Queue} = ?Q:new(Opts),
    Queue.

drain(Queue) ->
    case ?Q:dequeue(Queue) of
        {ok, Task, Priority} -> [{Task, Priority} | drain(Queue)];
        empty -> []
    end.

stat(Queue, Key) ->
    {ok, Stats} = ?Q:stats(Queue),
    maps:get(Key, Stats).

rank(critical) -> 0;
rank(high) -> 1;
rank(normal) -> 2;
rank(low) -> 3.

wait_until(Pred, Ms) when Ms =< 0 ->
    Pred();
wait_until(Pred, Ms) ->
    case Pred() of
        true -> true;
        false -> timer:sleep(2), wait_until(Pred, Ms - 2)
    end.

%% Runs Fun() with no default queue running, and leaves none behind (a failed test's server is
%% stopped, a killed one's queue closed).
with_no_default(Fun) ->
    cleanup_default(),
    try Fun() after cleanup_default() end.

cleanup_default() ->
    case whereis(?Q) of
        undefined -> ok;
        Pid ->
            unlink(Pid),
            Mon = monitor(process, Pid),
            exit(Pid, kill),
            receive {'DOWN', Mon, process, Pid, _} -> ok end
    end,
    case persistent_term:get({?Q, queue}, undefined) of
        undefined -> ok;
        Queue -> _ = ?Q:close(Queue), persistent_term:erase({?Q, queue})
    end.

%%--------------------------------------------------------------------------------------------
%% Order
%%--------------------------------------------------------------------------------------------

%% Highest priority first, and within a priority the order of arrival, whatever the
%% interleaving of the enqueues.
priority_order_and_fifo_test() ->
    Queue = new(#{}),
    Tasks = [{I, lists:nth(1 + (I * 7) rem 4, ?PRIORITIES)} || I <- lists:seq(1, 40)],
    [ok = ?Q:enqueue(Queue, {task, I}, P) || {I, P} <- Tasks],
    Expected = [{{task, I}, P} || {I, P} <- lists:sort(fun({I1, P1}, {I2, P2}) ->
                                                             {rank(P1), I1} =< {rank(P2), I2}
                                                     end, Tasks)],
    %% The expected order really mixes the arrival order (else this test proves nothing).
    ?assertNotEqual([T || {T, _} <- Expected], [{task, I} || I <- lists:seq(1, 40)]),
    ?assertEqual(Expected, drain(Queue)),
    ?assertEqual(empty, ?Q:dequeue(Queue)).

%% A task comes back as the same term (a copy): tuples, maps, pids, references, binaries.
tasks_are_terms_test() ->
    Queue = new(#{}),
    Tasks = [self(), make_ref(), #{a => [1, 2.5, <<"x">>]}, {nested, {deep, "list"}}, <<>>,
             [], 1 bsl 100, fun lists:sort/1],
    [ok = ?Q:enqueue(Queue, T, normal) || T <- Tasks],
    ?assertEqual([{T, normal} || T <- Tasks], drain(Queue)).

enqueue_defaults_to_normal_priority_test() ->
    with_no_default(fun() ->
        {ok, _} = ?Q:start(),
        ok = ?Q:enqueue(low_task, low),
        ok = ?Q:enqueue(normal_task),
        ok = ?Q:enqueue(high_task, high),
        ?assertEqual({ok, high_task, high}, ?Q:dequeue()),
        ?assertEqual({ok, normal_task, normal}, ?Q:dequeue()),
        ?assertEqual({ok, low_task, low}, ?Q:dequeue()),
        ?assertEqual(empty, ?Q:dequeue()),
        ?assertEqual({ok, []}, ?Q:stop())
    end).

%%--------------------------------------------------------------------------------------------
%% Back-pressure, rejection, eviction
%%--------------------------------------------------------------------------------------------

%% ok while the primary queue has room, backpressure in the overflow, then rejected with the
%% very task handed back; room made by a dequeue is used again.
backpressure_then_rejected_test() ->
    Queue = new(#{max_primary => 3, max_overflow => 2}),
    ?assertEqual([ok, ok, ok, backpressure, backpressure],
                 [?Q:enqueue(Queue, {t, I}, normal) || I <- lists:seq(1, 5)]),
    Rejected = {t, 6, make_ref(), self()},
    ?assertEqual({rejected, Rejected}, ?Q:enqueue(Queue, Rejected, critical)),
    ?assertEqual({rejected, {t, 7}}, ?Q:enqueue(Queue, {t, 7}, low)),
    {ok, S} = ?Q:stats(Queue),
    ?assertMatch(#{depth := 5, primary_depth := 3, overflow_depth := 2, max_depth := 5,
                   enqueued := 5, dequeued := 0, spills := 2, rejections := 2,
                   evictions := 0}, S),
    ?assertEqual({ok, {t, 1}, normal}, ?Q:dequeue(Queue)),
    %% 4 queued: the primary queue is still full, so the next one spills.
    ?assertEqual(backpressure, ?Q:enqueue(Queue, {t, 8}, normal)),
    ?assertEqual({rejected, {t, 9}}, ?Q:enqueue(Queue, {t, 9}, normal)),
    ?assertEqual([{{t, I}, normal} || I <- [2, 3, 4, 5, 8]], drain(Queue)),
    %% Empty again: the primary queue takes tasks.
    ?assertEqual(ok, ?Q:enqueue(Queue, {t, 10}, normal)),
    ?assertMatch(#{depth := 1, enqueued := 7, dequeued := 6, spills := 3, rejections := 3},
                 element(2, ?Q:stats(Queue))).

%% max_overflow 0: no overflow, straight from ok to rejected.
no_overflow_test() ->
    Queue = new(#{max_primary => 2, max_overflow => 0}),
    ?assertEqual([ok, ok, {rejected, c}],
                 [?Q:enqueue(Queue, T, high) || T <- [a, b, c]]).

%% The defaults of the original design: 1000 in the primary queue, 10000 in the overflow.
default_limits_test_() ->
    {timeout, 60, fun() ->
        Queue = new(#{}),
        ?assertEqual([ok], lists:usort([?Q:enqueue(Queue, I, low) || I <- lists:seq(1, 1000)])),
        ?assertEqual([backpressure],
                     lists:usort([?Q:enqueue(Queue, I, low) || I <- lists:seq(1001, 11000)])),
        ?assertEqual({rejected, 11001}, ?Q:enqueue(Queue, 11001, critical)),
        ?assertMatch(#{depth := 11000, primary_depth := 1000, overflow_depth := 10000,
                       max_depth := 11000, spills := 10000},
                     element(2, ?Q:stats(Queue)))
    end}.

%% drop_policy low_priority: a full queue lets an arrival evict the newest task of the lowest
%% priority below its own, handed back with its priority; an arrival with nothing lower to
%% evict is rejected.
low_priority_eviction_test() ->
    Queue = new(#{max_primary => 2, max_overflow => 1, drop_policy => low_priority}),
    ok = ?Q:enqueue(Queue, {low, 1}, low),
    ok = ?Q:enqueue(Queue, {low, 2}, low),
    backpressure = ?Q:enqueue(Queue, {normal, 1}, normal),
    %% Full. The newest low task goes first.
    ?assertEqual({evicted, {low, 2}, low}, ?Q:enqueue(Queue, {high, 1}, high)),
    ?assertEqual({evicted, {low, 1}, low}, ?Q:enqueue(Queue, {normal, 2}, normal)),
    %% Nothing below normal is left: a normal or low arrival is rejected.
    ?assertEqual({rejected, {normal, 3}}, ?Q:enqueue(Queue, {normal, 3}, normal)),
    ?assertEqual({rejected, {low, 3}}, ?Q:enqueue(Queue, {low, 3}, low)),
    %% A critical arrival evicts the newest normal task.
    ?assertEqual({evicted, {normal, 2}, normal}, ?Q:enqueue(Queue, {critical, 1}, critical)),
    ?assertMatch(#{depth := 3, enqueued := 6, evictions := 3, rejections := 2},
                 element(2, ?Q:stats(Queue))),
    ?assertEqual([{{critical, 1}, critical}, {{high, 1}, high}, {{normal, 1}, normal}],
                 drain(Queue)).

%% The same arrivals with drop_policy none are all rejected.
no_eviction_without_the_policy_test() ->
    Queue = new(#{max_primary => 1, max_overflow => 0}),
    ok = ?Q:enqueue(Queue, low1, low),
    ?assertEqual({rejected, crit}, ?Q:enqueue(Queue, crit, critical)),
    ?assertEqual([{low1, low}], drain(Queue)).

%%--------------------------------------------------------------------------------------------
%% Statistics, empty queues, waiting
%%--------------------------------------------------------------------------------------------

stats_test() ->
    Queue = new(#{max_primary => 10, max_overflow => 10}),
    ?assertEqual({ok, #{depth => 0, primary_depth => 0, overflow_depth => 0, depth_p99 => 0,
                        max_depth => 0, enqueued => 0, dequeued => 0, spills => 0,
                        rejections => 0, evictions => 0}},
                 ?Q:stats(Queue)),
    [ok = ?Q:enqueue(Queue, I, normal) || I <- lists:seq(1, 10)],
    [backpressure = ?Q:enqueue(Queue, I, normal) || I <- lists:seq(11, 15)],
    _ = [{ok, _, normal} = ?Q:dequeue(Queue) || _ <- lists:seq(1, 12)],

    {ok, S} = ?Q:stats(Queue),
    ?assertMatch(#{depth := 3, primary_depth := 3, overflow_depth := 0, max_depth := 15,
                   enqueued := 15, dequeued := 12, spills := 5}, S),
    %% Depths after the 15 enqueues were 1..15: the 99th percentile is the largest.
    ?assertEqual(15, maps:get(depth_p99, S)).

empty_dequeue_test() ->
    Queue = new(#{}),
    ?assertEqual(empty, ?Q:dequeue(Queue)),
    ?assertEqual(empty, ?Q:dequeue(Queue, 0)),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual(empty, ?Q:dequeue(Queue, 30)),
    ?assert(erlang:monotonic_time(millisecond) - T0 >= 30),
    ?assertEqual(0, stat(Queue, dequeued)).

%% A waiting dequeue gets a task enqueued while it waits (by another process, once the waiter
%% is seen sleeping between two polls).
dequeue_waits_for_a_task_test() ->
    Queue = new(#{}),
    Waiter = self(),
    Producer = spawn_link(fun() ->
        true = wait_until(fun() ->
                                  process_info(Waiter, current_function)
                                      =:= {current_function, {?Q, sleep, 1}}
                          end, 10000),
        ok = ?Q:enqueue(Queue, late, high)
    end),
    ?assertEqual({ok, late, high}, ?Q:dequeue(Queue, 20000)),
    ?assertEqual({ok, late, high}, begin
                                       ok = ?Q:enqueue(Queue, late, high),
                                       ?Q:dequeue(Queue, infinity)
                                   end),
    unlink(Producer).

%%--------------------------------------------------------------------------------------------
%% Closing
%%--------------------------------------------------------------------------------------------

close_hands_back_every_task_test() ->
    Queue = new(#{max_primary => 2, max_overflow => 10}),
    [ok = ?Q:enqueue(Queue, {a, I}, low) || I <- [1, 2]],
    [backpressure = ?Q:enqueue(Queue, {b, I}, critical) || I <- [1, 2]],
    backpressure = ?Q:enqueue(Queue, {c, 1}, normal),
    ?assertEqual({ok, [{{b, 1}, critical}, {{b, 2}, critical}, {{c, 1}, normal},
                       {{a, 1}, low}, {{a, 2}, low}]},
                 ?Q:close(Queue)),
    %% Closed: every call is refused, the task stays the caller's.
    ?assertMatch({error, {closed, _}}, ?Q:enqueue(Queue, x, normal)),
    ?assertMatch({error, {closed, _}}, ?Q:dequeue(Queue)),
    ?assertMatch({error, {closed, _}}, ?Q:dequeue(Queue, 10)),
    ?assertMatch({error, {closed, _}}, ?Q:stats(Queue)),
    ?assertMatch({error, {closed, _}}, ?Q:close(Queue)),
    ?assertEqual({ok, []}, ?Q:close(new(#{}))).

%%--------------------------------------------------------------------------------------------
%% Large tasks
%%--------------------------------------------------------------------------------------------

%% Tasks around and far above 64 KiB (enqueued on a dirty scheduler; dequeued, evicted and
%% closed ones come back without a copy) are intact.
large_tasks_test() ->
    Queue = new(#{max_primary => 1, max_overflow => 0, drop_policy => low_priority}),
    Sizes = [65536 - 7, 65536 - 6, 65536, 1 bsl 20, 8 bsl 20],
    lists:foreach(fun(Size) ->
                          Task = {big, binary:copy(<<(Size rem 251)>>, Size)},
                          ok = ?Q:enqueue(Queue, Task, normal),
                          ?assertEqual({ok, Task, normal}, ?Q:dequeue(Queue))
                  end, Sizes),
    Low = {low, binary:copy(<<"l">>, 1 bsl 20)},
    ok = ?Q:enqueue(Queue, Low, low),
    High = {high, binary:copy(<<"h">>, 1 bsl 20)},
    ?assertEqual({evicted, Low, low}, ?Q:enqueue(Queue, High, high)),
    ?assertEqual({ok, [{High, high}]}, ?Q:close(Queue)),
    %% Iodata straight to the NIF is flattened (on a dirty scheduler) too.
    Q2 = new(#{}),
    ok = erlmcp_flow_nif:queue_enqueue(Q2, [<<"ab">>, [<<"c">>]], low),
    ?assertEqual({ok, <<"abc">>, low}, erlmcp_flow_nif:queue_dequeue(Q2)).

%%--------------------------------------------------------------------------------------------
%% Bad arguments
%%--------------------------------------------------------------------------------------------

bad_arguments_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    QueueMod = untyped(?Q),
    NifMod = untyped(erlmcp_flow_nif),
    Queue = new(#{}),
    Invalid = fun(R) -> ?assertMatch({error, {invalid_argument, <<_/binary>>}}, R) end,
    Invalid(QueueMod:enqueue(Queue, task, urgent)),
    Invalid(QueueMod:enqueue(Queue, task, 2)),
    Invalid(QueueMod:dequeue(Queue, -1)),
    Invalid(QueueMod:dequeue(Queue, soon)),
    Invalid(QueueMod:new(#{max_primary => 0})),
    Invalid(QueueMod:new(#{max_primary => -1})),
    Invalid(QueueMod:new(#{max_primary => 1 bsl 64})),
    Invalid(QueueMod:new(#{max_overflow => -1})),
    Invalid(QueueMod:new(#{max_overflow => 16#FFFFFFFFFFFFFFFF})),
    Invalid(QueueMod:new(#{max_overflow => infinity})),
    Invalid(QueueMod:new(#{drop_policy => oldest})),
    Invalid(QueueMod:new(#{capacity => 10})),
    Invalid(QueueMod:new([{max_primary, 10}])),
    Invalid(QueueMod:start_link(#{max_primary => 0})),
    ?assertEqual(undefined, whereis(?Q)),
    %% Not queue handles: a reference of another kind, any other term.
    Invalid(QueueMod:enqueue(make_ref(), task, normal)),
    Invalid(QueueMod:dequeue(make_ref())),
    Invalid(QueueMod:stats(not_a_queue)),
    Invalid(QueueMod:close(<<"queue">>)),
    {ok, Cache} = erlmcp_flow_lru_cache:new(),
    Invalid(QueueMod:stats(Cache)),
    %% The raw NIF refuses wrong types with the same errors, never badarg.
    Invalid(NifMod:queue_new(-1, 0, none)),
    Invalid(NifMod:queue_new(1, x, none)),
    Invalid(NifMod:queue_new(1, 0, drop_all)),
    Invalid(NifMod:queue_enqueue(Queue, not_bytes, normal)),
    Invalid(NifMod:queue_enqueue(Queue, [<<"ok">> | bad_tail], normal)),
    %% The queue still works after all that.
    ok = QueueMod:enqueue(Queue, fine, normal),
    ?assertEqual({ok, fine, normal}, QueueMod:dequeue(Queue)).

%% The engine's own sentinels, through the raw NIF: 0 in the primary means 1000.
raw_nif_defaults_test() ->
    {ok, Queue} = erlmcp_flow_nif:queue_new(0, 0, none),
    [ok = erlmcp_flow_nif:queue_enqueue(Queue, <<I:32>>, normal) || I <- lists:seq(1, 1000)],
    ?assertEqual(rejected, erlmcp_flow_nif:queue_enqueue(Queue, <<"x">>, normal)).

%%--------------------------------------------------------------------------------------------
%% The default queue
%%--------------------------------------------------------------------------------------------

default_queue_test() ->
    with_no_default(fun() ->
        NotRunning = fun(R) -> ?assertMatch({error, {closed, _}}, R) end,
        NotRunning(?Q:enqueue(a)),
        NotRunning(?Q:enqueue(a, high)),
        NotRunning(?Q:dequeue()),
        NotRunning(?Q:dequeue(10)),
        NotRunning(?Q:stats()),
        NotRunning(?Q:queue()),
        NotRunning(?Q:stop()),
        {ok, Pid} = ?Q:start_link(#{max_primary => 2, max_overflow => 1}),
        ?assertEqual(Pid, whereis(?Q)),
        ?assertMatch({error, {already_started, Pid}}, ?Q:start_link()),
        ?assertEqual([ok, ok, backpressure, {rejected, d}],
                     [?Q:enqueue(T) || T <- [a, b, c, d]]),
        ?assertEqual({ok, a, normal}, ?Q:dequeue()),
        ?assertEqual({ok, b, normal}, ?Q:dequeue(100)),
        {ok, Queue} = ?Q:queue(),
        ?assertEqual({ok, c, normal}, ?Q:dequeue(Queue)),
        ok = ?Q:enqueue(Queue, e, low),
        ok = ?Q:enqueue(f, critical),
        ?assertMatch({ok, #{depth := 2, enqueued := 5, dequeued := 3, rejections := 1}},
                     ?Q:stats()),
        unlink(Pid),
        ?assertEqual({ok, [{f, critical}, {e, low}]}, ?Q:stop()),
        ?assertEqual(undefined, whereis(?Q)),
        NotRunning(?Q:enqueue(g)),
        NotRunning(?Q:dequeue()),
        %% A handle read before the stop is closed too: a task is refused, never lost.
        NotRunning(?Q:enqueue(Queue, g, normal))
    end).

%% The original design's benchmark: start_link(#{max_primary => N}) then enqueue(M, Queue)
%% with the queue second (the server's pid, or a handle); enqueue/1 answers as written, with
%% backpressure and rejection in place of {backpressure} and {dropped}.
original_calls_test() ->
    with_no_default(fun() ->
        {ok, Pid} = ?Q:start_link(#{max_primary => 2, max_overflow => 1}),
        ?assertEqual(ok, ?Q:enqueue(m1, Pid)),
        ?assertEqual(ok, ?Q:enqueue({m, 2})),
        ?assertEqual(backpressure, ?Q:enqueue(m3, Pid)),
        ?assertEqual({rejected, m4}, ?Q:enqueue(m4, Pid)),
        ?assertEqual({ok, m1, normal}, ?Q:dequeue()),
        %% Another pid is no queue; a handle is one.
        Other = spawn(fun() -> ok end),
        ?assertMatch({error, {invalid_argument, <<_/binary>>}}, ?Q:enqueue(m5, Other)),
        ?assertMatch({error, {invalid_argument, _}}, ?Q:enqueue(m5, untyped(make_ref()))),
        ?assertMatch({error, {invalid_argument, _}}, ?Q:enqueue(m5, untyped(urgent))),
        Own = new(#{max_primary => 1, max_overflow => 0}),
        ?assertEqual(ok, ?Q:enqueue(x, Own)),
        ?assertEqual({rejected, y}, ?Q:enqueue(y, Own)),
        ?assertEqual([{x, normal}], drain(Own)),
        {ok, Default} = ?Q:queue(),
        ?assertEqual(backpressure, ?Q:enqueue(m6, Default)),
        unlink(Pid),
        Mon = monitor(process, Pid),
        ?assertEqual({ok, [{{m, 2}, normal}, {m3, normal}, {m6, normal}]}, ?Q:stop()),
        receive {'DOWN', Mon, process, Pid, _} -> ok end,
        %% The server is gone: its pid is no longer the default queue's.
        ?assertMatch({error, {invalid_argument, _}}, ?Q:enqueue(m7, Pid))
    end).

%% A server killed outright leaves its queue in use; the next one takes it over, tasks
%% included.
killed_server_queue_is_taken_over_test() ->
    with_no_default(fun() ->
        {ok, Pid} = ?Q:start(#{max_primary => 5}),
        ok = ?Q:enqueue(kept_1),
        Mon = monitor(process, Pid),
        exit(Pid, kill),
        receive {'DOWN', Mon, process, Pid, killed} -> ok end,
        ok = ?Q:enqueue(kept_2, high),
        {ok, _} = ?Q:start(#{max_primary => 1000}),
        ?assertMatch({ok, #{depth := 2}}, ?Q:stats()),
        ?assertEqual({ok, [{kept_2, high}, {kept_1, normal}]}, ?Q:stop())
    end).

%% Under a supervisor: a shutdown closes the default queue (the server traps exits), the
%% tasks left are dropped with a warning, and the queue is unpublished.
supervised_shutdown_closes_the_default_queue_test() ->
    with_no_default(fun() ->
        process_flag(trap_exit, true),
        {ok, Sup} = supervisor:start_link(?MODULE, #{max_primary => 10}),
        try
            Pid = whereis(?Q),
            ?assert(is_pid(Pid)),
            {ok, Queue} = ?Q:queue(),
            ok = ?Q:enqueue(dropped),
            Mon = monitor(process, Pid),
            ok = supervisor:terminate_child(Sup, ?Q),
            receive {'DOWN', Mon, process, Pid, shutdown} -> ok end,
            ?assertMatch({error, {closed, _}}, ?Q:enqueue(x)),
            ?assertMatch({error, {closed, _}}, ?Q:enqueue(Queue, x, normal)),
            ?assertEqual(undefined, persistent_term:get({?Q, queue}, undefined)),
            %% Restarted by its supervisor: a new, empty queue.
            {ok, _} = supervisor:restart_child(Sup, ?Q),
            ?assertMatch({ok, #{depth := 0, enqueued := 0}}, ?Q:stats())
        after
            stop_supervisor(Sup)
        end
    end).

stop_supervisor(Sup) ->
    Mon = monitor(process, Sup),
    unlink(Sup),
    exit(Sup, shutdown),
    receive {'DOWN', Mon, process, Sup, _} -> ok end,
    process_flag(trap_exit, false).

%% @private The supervisor of the test above.
init(Opts) ->
    {ok, {#{strategy => one_for_one, intensity => 0, period => 1},
          [#{id => ?Q, start => {?Q, start_link, [Opts]}}]}}.

%%--------------------------------------------------------------------------------------------
%% Concurrency
%%--------------------------------------------------------------------------------------------

%% Producers and consumers on one queue at once: every task is dequeued exactly once, and each
%% consumer sees the tasks of one producer and priority in the order they were enqueued.
concurrent_producers_and_consumers_test_() ->
    {timeout, 120, fun concurrent_producers_and_consumers/0}.

concurrent_producers_and_consumers() ->
    Producers = 6,
    PerProducer = 3000,
    Consumers = 4,
    Queue = new(#{max_primary => 100, max_overflow => Producers * PerProducer}),
    Parent = self(),
    Done = atomics:new(1, []),
    Ps = [spawn_link(fun() ->
                             [begin
                                  P = lists:nth(1 + (I * 3 + N) rem 4, ?PRIORITIES),
                                  R = ?Q:enqueue(Queue, {N, I}, P),
                                  true = (R =:= ok orelse R =:= backpressure)
                              end || I <- lists:seq(1, PerProducer)],
                             atomics:add(Done, 1, 1),
                             Parent ! {produced, N}
                     end) || N <- lists:seq(1, Producers)],
    Cs = [spawn_link(fun() -> Parent ! {consumed, self(), consume(Queue, Done, Producers, [])} end)
          || _ <- lists:seq(1, Consumers)],
    [receive {produced, N} -> ok end || N <- lists:seq(1, Producers)],
    Got = [receive {consumed, C, Tasks} -> Tasks end || C <- Cs],
    _ = Ps,
    All = lists:append(Got),
    Expected = [{N, I} || N <- lists:seq(1, Producers), I <- lists:seq(1, PerProducer)],
    ?assertEqual(length(Expected), length(All)),
    ?assertEqual(Expected, lists:sort([T || {T, _} <- All])),
    %% Each consumer's view of one (producer, priority) stream is in enqueue order.
    lists:foreach(fun(Tasks) ->
                          Streams = lists:foldl(fun({{N, I}, P}, Acc) ->
                                                        maps:update_with({N, P},
                                                                         fun(L) -> [I | L] end,
                                                                         [I], Acc)
                                                end, #{}, Tasks),
                          maps:foreach(fun(_, Rev) ->
                                               L = lists:reverse(Rev),
                                               ?assertEqual(lists:sort(L), L)
                                       end, Streams)
                  end, Got),
    %% Several consumers really took part.
    ?assert(length([G || G <- Got, G =/= []]) >= 2),
    ?assertMatch(#{depth := 0, enqueued := 18000, dequeued := 18000, rejections := 0},
                 element(2, ?Q:stats(Queue))).

%% Dequeues until the queue is empty after every producer has finished.
consume(Queue, Done, Producers, Acc) ->
    Finished = atomics:get(Done, 1) =:= Producers,
    case ?Q:dequeue(Queue) of
        {ok, Task, P} -> consume(Queue, Done, Producers, [{Task, P} | Acc]);
        empty when Finished -> lists:reverse(Acc);
        empty -> erlang:yield(), consume(Queue, Done, Producers, Acc)
    end.

%% A close while producers and consumers are busy: each task is dequeued, returned by close,
%% or refused to its producer with {error, {closed, _}} — exactly one of the three.
close_under_load_test_() ->
    {timeout, 120, fun close_under_load/0}.

close_under_load() ->
    Producers = 4,
    Queue = new(#{max_primary => 1000, max_overflow => 1000000}),
    Parent = self(),
    Ps = [spawn_link(fun() -> Parent ! {refused, self(), produce(Queue, N, 1, [])} end)
          || N <- lists:seq(1, Producers)],
    Cs = [spawn_link(fun() -> Parent ! {consumed, self(), consume_until_closed(Queue, [])} end)
          || _ <- lists:seq(1, 2)],
    %% Close once a good number of tasks went through.
    true = wait_until(fun() -> stat(Queue, enqueued) >= 20000 end, 60000),
    {ok, Left} = ?Q:close(Queue),
    Refused = lists:append([receive {refused, P, R} -> R end || P <- Ps]),
    Consumed = lists:append([receive {consumed, C, T} -> T end || C <- Cs]),
    %% Every producer's tasks 1..Last were accounted for, Last being its refused one.
    Accounted = lists:sort([T || {T, _} <- Left] ++ Consumed ++ Refused),
    ?assertEqual(length(Accounted), length(lists:usort(Accounted))),
    lists:foreach(fun(N) ->
                          Mine = [I || {M, I} <- Accounted, M =:= N],
                          ?assertEqual(lists:seq(1, length(Mine)), Mine)
                  end, lists:seq(1, Producers)),
    ?assertEqual(Producers, length(Refused)),
    ?assert(length(Left) + length(Consumed) >= 20000).

%% Many closes, each racing with producers that are inside an enqueue at that moment: a task
%% whose call entered before the close is in the list close returns (close waits for it), one
%% that came later is refused; never lost, never both.
close_races_with_enqueues_test_() ->
    {timeout, 120, fun() -> [close_race(Round) || Round <- lists:seq(1, 300)] end}.

close_race(Round) ->
    Producers = 3,
    Queue = new(#{}),
    Parent = self(),
    Ps = [spawn_link(fun() -> Parent ! {refused, self(), produce(Queue, N, 1, [])} end)
          || N <- lists:seq(1, Producers)],
    true = wait_until(fun() -> stat(Queue, enqueued) >= 10 + Round rem 50 end, 60000),
    {ok, Left} = ?Q:close(Queue),
    Refused = lists:append([receive {refused, P, R} -> R end || P <- Ps]),
    Accounted = lists:sort([T || {T, _} <- Left] ++ Refused),
    lists:foreach(fun(N) ->
                          Mine = [I || {M, I} <- Accounted, M =:= N],
                          ?assertEqual(lists:seq(1, length(Mine)), Mine)
                  end, lists:seq(1, Producers)).

%% Enqueues {N, 1}, {N, 2}, ... until the queue is closed, slowing down on back-pressure (so
%% that the depth stays near max_primary); returns the refused task.
produce(Queue, N, I, _) ->
    case ?Q:enqueue(Queue, {N, I}, lists:nth(1 + I rem 4, ?PRIORITIES)) of
        ok -> produce(Queue, N, I + 1, []);
        backpressure -> timer:sleep(1), produce(Queue, N, I + 1, []);
        {error, {closed, _}} -> [{N, I}]
    end.

consume_until_closed(Queue, Acc) ->
    case ?Q:dequeue(Queue) of
        {ok, Task, _} -> consume_until_closed(Queue, [Task | Acc]);
        empty -> erlang:yield(), consume_until_closed(Queue, Acc);
        {error, {closed, _}} -> Acc
    end.

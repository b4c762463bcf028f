%% EUnit tests of the erlmcp_flow application: a start runs every default instance and the
%% original design's calls work as written; the environment configures them and turns them
%% off; a killed default instance is restarted and re-adopts its state (queue tasks, cache
%% entries, agents' inboxes, pending batches); a stop releases everything and a second start
%% works.
%%
%% Every test runs the application with its directories in a fresh temporary directory and
%% stops and unloads it afterwards (the other test modules start these servers by hand).
%% Restarts are awaited with a monitor and polling with a deadline.
-module(erlmcp_flow_app_tests).

-include_lib("eunit/include/eunit.hrl").

-define(APP, erlmcp_flow).
-define(NAMES, [erlmcp_flow_sup, erlmcp_flow_router, erlmcp_flow_batch_processor,
                erlmcp_flow_queue, erlmcp_flow_lru_cache]).
-define(MODULES, [erlmcp_flow_router, erlmcp_flow_batch_processor, erlmcp_flow_queue,
                  erlmcp_flow_lru_cache, erlmcp_flow_scheduler, erlmcp_flow_pool_manager]).
-define(RING, <<"app_test.batch">>).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

tmp_dir() ->
    Base = case os:getenv("TMPDIR") of false -> "/tmp"; "" -> "/tmp"; D -> D end,
    Dir = filename:join(Base, "erlmcp_flow_app_" ++ os:getpid() ++ "_"
                        ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.

%% Runs Fun(Dir) with the application started with Env (on top of the directories in Dir);
%% stops and unloads it afterwards, whatever happened.
with_app(Env, Fun) ->
    Dir = tmp_dir(),
    ?assertEqual(undefined, whereis(erlmcp_flow_sup)),
    case application:load(?APP) of
        ok -> ok;
        {error, {already_loaded, ?APP}} -> ok
    end,
    try
        [ok = application:set_env(?APP, K, V)
         || {K, V} <- [{router_dir, Dir}, {batch_ring_dir, Dir}, {state_dir, Dir},
                       {batch_ring, ?RING} | Env]],
        {ok, Started} = application:ensure_all_started(?APP),
        ?assert(lists:member(?APP, Started)),
        Fun(Dir)
    after
        _ = application:stop(?APP),
        ok = application:unload(?APP),
        ok = file:del_dir_r(Dir)
    end.

%% Kills the registered server Name and waits until its supervisor has started another one.
kill_and_wait(Name) ->
    Old = whereis(Name),
    ?assert(is_pid(Old)),
    Mon = monitor(process, Old),
    exit(Old, kill),
    receive {'DOWN', Mon, process, Old, killed} -> ok end,
    New = wait_for(fun() ->
                           case whereis(Name) of
                               Pid when is_pid(Pid), Pid =/= Old -> {true, Pid};
                               _ -> false
                           end
                   end, erlang:monotonic_time(millisecond) + 5000),
    ?assertNotEqual(Old, New),
    New.

wait_for(Pred, Deadline) ->
    case Pred() of
        {true, Value} ->
            Value;
        false ->
            case erlang:monotonic_time(millisecond) < Deadline of
                true -> receive after 2 -> ok end, wait_for(Pred, Deadline);
                false -> error(timeout)
            end
    end.

%% The persistent_terms the default instances publish.
published() ->
    [K || {K, _} <- persistent_term:get(), is_tuple(K), tuple_size(K) =:= 2,
          lists:member(element(1, K), ?MODULES)].

%% The file of the batch ring (segments are files named emf-Name).
ring_file(Dir) ->
    filename:join(Dir, "emf-" ++ binary_to_list(?RING)).

ring_consumer() ->
    {ok, Ring} = erlmcp_flow_app:batch_ring(),
    {ok, C} = erlmcp_flow_ring:consumer(Ring),
    C.

recv_all(C, N) ->
    [begin {ok, F} = erlmcp_flow_ring:recv(C, 5000), F end || _ <- lists:seq(1, N)].

child_ids() ->
    [Id || {Id, _, _, _} <- supervisor:which_children(erlmcp_flow_sup)].

%%--------------------------------------------------------------------------------------------
%% Start: the original design's calls
%%--------------------------------------------------------------------------------------------

original_calls_test_() ->
    {timeout, 60, fun original_calls/0}.

original_calls() ->
    with_app([], fun(Dir) ->
        [?assert(is_pid(whereis(N))) || N <- ?NAMES],
        ?assertEqual([erlmcp_flow_router, erlmcp_flow_batch_processor, erlmcp_flow_queue,
                      erlmcp_flow_lru_cache], lists:reverse(child_ids())),
        %% Queue.
        ok = erlmcp_flow_queue:enqueue({task, 1}),
        ok = erlmcp_flow_queue:enqueue({task, 2}, high),
        ?assertEqual({ok, {task, 2}, high}, erlmcp_flow_queue:dequeue()),
        ?assertEqual({ok, {task, 1}, normal}, erlmcp_flow_queue:dequeue()),
        ?assertEqual(empty, erlmcp_flow_queue:dequeue()),
        ?assertMatch({ok, #{depth := 0}}, erlmcp_flow_queue:stats()),
        %% Cache (the original design's defaults: capacity 10000, TTL 5000 ms).
        ok = erlmcp_flow_lru_cache:put({tool, <<"search">>}, #{schema => 1}),
        ?assertEqual({ok, #{schema => 1}}, erlmcp_flow_lru_cache:get({tool, <<"search">>})),
        ?assertEqual(miss, erlmcp_flow_lru_cache:get(unknown)),
        {ok, #{capacity := Capacity}} = erlmcp_flow_lru_cache:stats(),
        ?assert(Capacity >= 10000),
        %% Batch processor: the messages reach its ring, in order.
        ok = erlmcp_flow_batch_processor:send_message(<<"m1">>),
        ok = erlmcp_flow_batch_processor:send_message([<<"m">>, "2"]),
        {ok, _} = erlmcp_flow_batch_processor:flush_batch(),
        C = ring_consumer(),
        ?assertEqual([<<"m1">>, <<"m2">>], recv_all(C, 2)),
        %% Router: a registered agent, its inbox in router_dir.
        {ok, Inbox} = erlmcp_flow_router:register_agent(<<"planner">>),
        ok = erlmcp_flow_router:send_direct(<<"planner">>, <<"payload">>),
        ?assertEqual({ok, <<"payload">>}, erlmcp_flow_ring:recv(Inbox, 5000)),
        ?assert(filelib:is_file(filename:join(Dir, "emf-inbox.planner"))),
        ?assertMatch({error, {not_found, _}},
                     erlmcp_flow_router:send_direct(<<"nobody">>, <<"x">>)),
        %% Shared state: any term, in state_dir.
        {ok, Ref} = erlmcp_flow:share_state(<<"registry">>, #{agents => [planner]}),
        ?assertEqual({ok, #{agents => [planner]}}, erlmcp_flow:read_shared_state(Ref)),
        ok = erlmcp_flow:release_state(Ref)
    end).

%%--------------------------------------------------------------------------------------------
%% Configuration
%%--------------------------------------------------------------------------------------------

env_configuration_test_() ->
    {timeout, 60, fun env_configuration/0}.

env_configuration() ->
    Env = [{queue, #{max_primary => 2, max_overflow => 1}},
           {lru_cache, #{capacity => 16, shards => 1, ttl => infinity}},
           {router, #{inbox_capacity => 8192}},
           {batch_ring_capacity, 8192},
           {batch_processor, #{batch_size => 1, batch_timeout => 60000, max_pending => 2,
                               drain_timeout => 0}}],
    with_app(Env, fun(_Dir) ->
        %% Queue limits: 2 primary, 1 overflow, then rejected.
        ok = erlmcp_flow_queue:enqueue(a),
        ok = erlmcp_flow_queue:enqueue(b),
        backpressure = erlmcp_flow_queue:enqueue(c),
        ?assertEqual({rejected, d}, erlmcp_flow_queue:enqueue(d)),
        %% Cache capacity: one exact LRU of 16.
        ?assertMatch({ok, #{capacity := 16}}, erlmcp_flow_lru_cache:stats()),
        [ok = erlmcp_flow_lru_cache:put(K, K) || K <- lists:seq(1, 17)],
        ?assertEqual(miss, erlmcp_flow_lru_cache:get(1)),
        ?assertEqual({ok, 17}, erlmcp_flow_lru_cache:get(17)),
        %% Inbox capacity 8192: its largest frame is 8192 / 4 - 8 bytes.
        {ok, _Inbox} = erlmcp_flow_router:register_agent(<<"small">>),
        ok = erlmcp_flow_router:send_direct(<<"small">>, binary:copy(<<"x">>, 2040)),
        ?assertMatch({error, {too_large, _}},
                     erlmcp_flow_router:send_direct(<<"small">>, binary:copy(<<"x">>, 2041))),
        %% The batch ring (8192 bytes) fills up with nobody reading; then at most max_pending
        %% (2) messages wait and the next ones are refused, never dropped silently.
        {ok, Ring} = erlmcp_flow_app:batch_ring(),
        ?assertEqual({ok, 2040}, erlmcp_flow_ring:max_payload(Ring)),
        Results = [erlmcp_flow_batch_processor:send_message(binary:copy(<<I>>, 1500))
                   || I <- lists:seq(1, 12)],
        Accepted = length([ok || ok <- Results]),
        ?assert(Accepted =< 5 + 2),
        ?assertMatch([{error, {full, _}} | _], lists:dropwhile(fun(R) -> R =:= ok end, Results)),
        ?assertMatch({ok, #{pending := 2, refused := Refused}} when Refused > 0,
                     erlmcp_flow_batch_processor:stats())
    end).

instances_turned_off_test_() ->
    {timeout, 60, fun instances_turned_off/0}.

instances_turned_off() ->
    _ = with_app([{lru_cache, false}, {batch_processor, false}], fun(Dir) ->
        ?assertEqual(undefined, whereis(erlmcp_flow_lru_cache)),
        ?assertEqual(undefined, whereis(erlmcp_flow_batch_processor)),
        ?assertEqual([erlmcp_flow_router, erlmcp_flow_queue], lists:reverse(child_ids())),
        ?assertMatch({error, {closed, _}}, erlmcp_flow_lru_cache:get(k)),
        ?assertMatch({error, {closed, _}}, erlmcp_flow_batch_processor:send_message(<<"m">>)),
        %% No ring was made for a batch processor that does not run.
        ?assertMatch({error, {not_found, _}}, erlmcp_flow_ring:open(?RING, #{dir => Dir})),
        ok = erlmcp_flow_queue:enqueue(still_works),
        ?assertEqual({ok, still_works, normal}, erlmcp_flow_queue:dequeue()),
        %% `true' is the module's defaults.
        ok
    end),
    with_app([{queue, true}], fun(_Dir) ->
        ?assertEqual(ok, erlmcp_flow_queue:enqueue(x)),
        ?assertMatch({ok, #{depth := 1}}, erlmcp_flow_queue:stats())
    end).

bad_env_test() ->
    case application:load(?APP) of
        ok -> ok;
        {error, {already_loaded, ?APP}} -> ok
    end,
    try
        ok = application:set_env(?APP, queue, 42),
        ?assertMatch({error, {{bad_env, queue, 42}, _}}, application:start(?APP)),
        ok = application:set_env(?APP, queue, #{max_primary => 0}),
        ?assertMatch({error, _}, application:start(?APP)),
        ?assertEqual(undefined, whereis(erlmcp_flow_sup)),
        [?assertEqual(undefined, whereis(N)) || N <- ?NAMES],
        ?assertEqual([], published())
    after
        _ = application:stop(?APP),
        ok = application:unload(?APP)
    end.

%%--------------------------------------------------------------------------------------------
%% Restarts
%%--------------------------------------------------------------------------------------------

restarted_queue_keeps_its_tasks_test_() ->
    {timeout, 60, fun restarted_queue_keeps_its_tasks/0}.

restarted_queue_keeps_its_tasks() ->
    with_app([], fun(_Dir) ->
        ok = erlmcp_flow_queue:enqueue(first),
        ok = erlmcp_flow_queue:enqueue(urgent, critical),
        _ = kill_and_wait(erlmcp_flow_queue),
        ok = erlmcp_flow_queue:enqueue(after_restart),
        ?assertEqual({ok, urgent, critical}, erlmcp_flow_queue:dequeue()),
        ?assertEqual({ok, first, normal}, erlmcp_flow_queue:dequeue()),
        ?assertEqual({ok, after_restart, normal}, erlmcp_flow_queue:dequeue()),
        ?assertEqual(empty, erlmcp_flow_queue:dequeue())
    end).

restarted_cache_keeps_its_entries_test_() ->
    {timeout, 60, fun restarted_cache_keeps_its_entries/0}.

restarted_cache_keeps_its_entries() ->
    with_app([{lru_cache, #{ttl => infinity}}], fun(_Dir) ->
        ok = erlmcp_flow_lru_cache:put(k, {value, 1}),
        {ok, Before} = erlmcp_flow_lru_cache:cache(),
        _ = kill_and_wait(erlmcp_flow_lru_cache),
        ?assertEqual({ok, {value, 1}}, erlmcp_flow_lru_cache:get(k)),
        ?assertEqual({ok, Before}, erlmcp_flow_lru_cache:cache()),
        %% An orderly restart (terminate and restart by the supervisor) starts empty.
        ok = supervisor:terminate_child(erlmcp_flow_sup, erlmcp_flow_lru_cache),
        ?assertMatch({error, {closed, _}}, erlmcp_flow_lru_cache:get(k)),
        {ok, _} = supervisor:restart_child(erlmcp_flow_sup, erlmcp_flow_lru_cache),
        ?assertEqual(miss, erlmcp_flow_lru_cache:get(k))
    end).

%% The scheduler is off by default; turned on with a shared-memory ledger it starts after the
%% cache, and a killed one comes back with the tasks it had accepted (delivered once an agent
%% of their type registers, their results sent to their submitter). A stop releases it.
restarted_scheduler_readopts_its_tasks_test_() ->
    {timeout, 60, fun restarted_scheduler_readopts_its_tasks/0}.

restarted_scheduler_readopts_its_tasks() ->
    _ = with_app([], fun(_Dir) ->
        ?assertEqual(undefined, whereis(erlmcp_flow_scheduler)),
        ?assertNot(lists:member(erlmcp_flow_scheduler, child_ids()))
    end),
    LedgerDir = tmp_dir(),
    Env = [{scheduler, #{ledger => {shm, <<"app_test.sched">>, list_to_binary(LedgerDir)},
                         shm_capacity => 1 bsl 20}}],
    try
        _ = with_app(Env, fun(_Dir) ->
            ?assertEqual([erlmcp_flow_router, erlmcp_flow_batch_processor, erlmcp_flow_queue,
                          erlmcp_flow_lru_cache, erlmcp_flow_scheduler],
                         lists:reverse(child_ids())),
            Ids = [begin {ok, Id} = erlmcp_flow_scheduler:assign_task(later, I), Id end
                   || I <- [1, 2, 3]],
            _ = kill_and_wait(erlmcp_flow_scheduler),
            ?assertMatch({ok, #{queued := 3}}, erlmcp_flow_scheduler:stats()),
            {ok, _} = erlmcp_flow_scheduler:spawn_agent(
                        <<"w">>, #{type => later, handler => fun(X) -> X * 10 end}),
            ?assertEqual([{Id, {ok, I * 10}} || {Id, I} <- lists:zip(Ids, [1, 2, 3])],
                         [receive {erlmcp_flow_task, Id, R} -> {Id, R}
                          after 10000 -> error({no_result, Id})
                          end || Id <- Ids])
        end),
        ?assertEqual([], published())
    after
        ok = file:del_dir_r(LedgerDir)
    end.

%% A pool manager under the application: it starts after the scheduler, warms up to min_size,
%% its agents serve tasks; a killed one is replaced; the stop ends the agents.
pool_manager_under_the_application_test_() ->
    {timeout, 60, fun pool_manager_under_the_application/0}.

pool_manager_under_the_application() ->
    Env = [{scheduler, true},
           {pool_manager, #{type => w, min_size => 2, warmup_delay => 0,
                            handler => fun(X) -> {done, X} end}}],
    Mons = with_app(Env, fun(_Dir) ->
        ?assertEqual([erlmcp_flow_router, erlmcp_flow_batch_processor, erlmcp_flow_queue,
                      erlmcp_flow_lru_cache, erlmcp_flow_scheduler, erlmcp_flow_pool_manager],
                     lists:reverse(child_ids())),
        Agents = wait_for(fun() ->
                                  case erlmcp_flow_pool_manager:agents() of
                                      [_, _] = A -> {true, [P || {_, P} <- A]};
                                      _ -> false
                                  end
                          end, erlang:monotonic_time(millisecond) + 5000),
        {ok, Id} = erlmcp_flow_scheduler:assign_task(w, 7),
        receive {erlmcp_flow_task, Id, R} -> ?assertEqual({ok, {done, 7}}, R)
        after 10000 -> error(no_result)
        end,
        [monitor(process, P) || P <- Agents]
    end),
    %% The stop ended them.
    [receive {'DOWN', M, process, _, _} -> ok after 5000 -> error(agent_left) end
     || M <- Mons],
    ?assertEqual([], published()).

restarted_router_keeps_the_inboxes_test_() ->
    {timeout, 60, fun restarted_router_keeps_the_inboxes/0}.

restarted_router_keeps_the_inboxes() ->
    with_app([], fun(_Dir) ->
        {ok, Inbox} = erlmcp_flow_router:register_agent(<<"agent">>),
        ok = erlmcp_flow_router:send_direct(<<"agent">>, <<"before">>),
        {ok, 2} = erlmcp_flow_router:send_batch(<<"agent">>, [<<"b1">>, <<"b2">>]),
        {ok, Ring} = erlmcp_flow_ring:open(<<"inbox.agent">>,
                                           #{dir => application:get_env(?APP, router_dir,
                                                                        undefined)}),
        _ = kill_and_wait(erlmcp_flow_router),
        %% Sends to the registered agent still work, into the same inbox: the unread
        %% messages are still there, in order, and the agent's consumer reads on.
        ok = erlmcp_flow_router:send_direct(<<"agent">>, <<"after">>),
        ?assertEqual([<<"before">>, <<"b1">>, <<"b2">>, <<"after">>],
                     [begin {ok, M} = erlmcp_flow_ring:recv(Inbox, 5000), M end
                      || _ <- lists:seq(1, 4)]),
        %% The agent's consumer is still the inbox's: registering again is refused while
        %% it is held (the inbox was not recreated).
        ?assertMatch({error, {busy, _}}, erlmcp_flow_router:register_agent(<<"agent">>)),
        ok = erlmcp_flow_ring:close(Ring)
    end).

%% Messages accepted by a batch processor that is killed before it wrote them are adopted by
%% its successor, which writes them: nothing is lost.
restarted_batch_processor_keeps_pending_messages_test_() ->
    {timeout, 60, fun restarted_batch_processor_keeps_pending_messages/0}.

restarted_batch_processor_keeps_pending_messages() ->
    Env = [{batch_processor, #{batch_size => 1000, batch_timeout => 60000}}],
    with_app(Env, fun(_Dir) ->
        %% The first message goes out at once (the ring's consumer is idle: nothing to read
        %% yet); the next ones wait for the batch (size 1000, timeout 60 s).
        Msgs = [<<"msg ", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 20)],
        [ok = erlmcp_flow_batch_processor:send_message(M) || M <- Msgs],
        {ok, #{pending := Pending}} = erlmcp_flow_batch_processor:stats(),
        ?assert(Pending > 0),
        _ = kill_and_wait(erlmcp_flow_batch_processor),
        ?assertMatch({ok, #{pending := Pending}}, erlmcp_flow_batch_processor:stats()),
        ?assertEqual({ok, Pending}, erlmcp_flow_batch_processor:flush_batch()),
        ok = erlmcp_flow_batch_processor:send_message(<<"after">>),
        {ok, _} = erlmcp_flow_batch_processor:flush_batch(),
        C = ring_consumer(),
        ?assertEqual(Msgs ++ [<<"after">>], recv_all(C, 21))
    end).

%%--------------------------------------------------------------------------------------------
%% Stop
%%--------------------------------------------------------------------------------------------

stop_releases_everything_test_() ->
    {timeout, 60, fun stop_releases_everything/0}.

stop_releases_everything() ->
    with_app([], fun(Dir) ->
        ok = erlmcp_flow_queue:enqueue(t),
        ok = erlmcp_flow_lru_cache:put(k, v),
        ok = erlmcp_flow_batch_processor:send_message(<<"m">>),
        {ok, _} = erlmcp_flow_router:register_agent(<<"a">>),
        ok = erlmcp_flow_router:send_direct(<<"a">>, <<"p">>),
        ?assertEqual(4, length(published())),
        ?assert(filelib:is_file(ring_file(Dir))),
        %% A server killed just before the stop: restarted or not by then, nothing of it
        %% stays (the deterministic case is supervisor_giving_up_releases_everything).
        exit(whereis(erlmcp_flow_lru_cache), kill),
        ok = application:stop(?APP),
        [?assertEqual(undefined, whereis(N)) || N <- ?NAMES],
        ?assertEqual([], published()),
        %% The ring the application created is removed.
        ?assertNot(filelib:is_file(ring_file(Dir))),
        ?assertMatch({error, {closed, _}}, erlmcp_flow_queue:enqueue(t)),
        ?assertMatch({error, {closed, _}}, erlmcp_flow_lru_cache:get(k)),
        ?assertMatch({error, {closed, _}}, erlmcp_flow_router:send_direct(<<"a">>, <<"p">>)),
        %% A second start works.
        {ok, _} = application:ensure_all_started(?APP),
        [?assert(is_pid(whereis(N))) || N <- ?NAMES],
        ?assertEqual(miss, erlmcp_flow_lru_cache:get(k)),
        ?assertEqual(empty, erlmcp_flow_queue:dequeue()),
        ok = erlmcp_flow_router:send_direct(<<"a">>, <<"p2">>),
        ok = erlmcp_flow_batch_processor:send_message(<<"m2">>),
        ok = application:stop(?APP),
        ?assertEqual([], published())
    end).

%% A supervisor that gives up (restart_intensity 0: the first crash ends the application)
%% leaves the killed server's handle published; the application's stop releases it.
supervisor_giving_up_releases_everything_test_() ->
    {timeout, 60, fun supervisor_giving_up_releases_everything/0}.

supervisor_giving_up_releases_everything() ->
    with_app([{restart_intensity, 0}], fun(Dir) ->
        ok = erlmcp_flow_queue:enqueue(t),
        ok = erlmcp_flow_lru_cache:put(k, v),
        Sup = whereis(erlmcp_flow_sup),
        Mon = monitor(process, Sup),
        exit(whereis(erlmcp_flow_queue), kill),
        receive {'DOWN', Mon, process, Sup, shutdown} -> ok end,
        ok = wait_for(fun() ->
                              case lists:keymember(?APP, 1, application:which_applications()) of
                                  false -> {true, ok};
                                  true -> false
                              end
                      end, erlang:monotonic_time(millisecond) + 5000),
        [?assertEqual(undefined, whereis(N)) || N <- ?NAMES],
        ?assertEqual([], published()),
        ?assertMatch({error, {closed, _}}, erlmcp_flow_queue:enqueue(t)),
        ?assertNot(filelib:is_file(ring_file(Dir))),
        {ok, _} = application:ensure_all_started(?APP),
        ?assertEqual(empty, erlmcp_flow_queue:dequeue())
    end).

%% A ring that exists already is used as it is (its frames kept) and left in place at stop.
existing_batch_ring_is_kept_test_() ->
    {timeout, 60, fun existing_batch_ring_is_kept/0}.

existing_batch_ring_is_kept() ->
    Dir = tmp_dir(),
    try
        {ok, Ring} = erlmcp_flow_ring:create(?RING, #{dir => Dir, multi_producer => true,
                                                      capacity => 65536}),
        {ok, P} = erlmcp_flow_ring:producer(Ring),
        ok = erlmcp_flow_ring:send(P, <<"left over">>),
        ok = erlmcp_flow_ring:close(P),
        _ = with_app([{batch_ring_dir, Dir}], fun(_) ->
            ok = erlmcp_flow_batch_processor:send_message(<<"new">>),
            {ok, _} = erlmcp_flow_batch_processor:flush_batch()
        end),
        {ok, C} = erlmcp_flow_ring:consumer(Ring),
        ?assertEqual([<<"left over">>, <<"new">>], recv_all(C, 2)),
        ok = erlmcp_flow_ring:unlink(Ring)
    after
        ok = file:del_dir_r(Dir)
    end.

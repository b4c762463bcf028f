%% @doc The `erlmcp_flow' OTP application: `application:ensure_all_started(erlmcp_flow)' starts
%% the node's default router, batch processor, task queue and LRU cache under
%% {@link erlmcp_flow_sup}, so that the original design's calls work as written:
%%
%% ```
%% {ok, _} = application:ensure_all_started(erlmcp_flow),
%% ok = erlmcp_flow_queue:enqueue(Task),
%% ok = erlmcp_flow_lru_cache:put(Key, Value),
%% {ok, Value} = erlmcp_flow_lru_cache:get(Key),
%% ok = erlmcp_flow_batch_processor:send_message(Message),     % to the ring `batch_ring'
%% {ok, Inbox} = erlmcp_flow_router:register_agent(<<"planner">>),
%% ok = erlmcp_flow_router:send_direct(<<"planner">>, Payload),
%% ok = application:stop(erlmcp_flow).
%% '''
%%
%% <h3>Environment (sys.config)</h3>
%% <table border="1">
%% <tr><th>Key</th><th>Default</th><th>Meaning</th></tr>
%% <tr><td>`router'</td><td>`#{}'</td><td>the default router: `false' (not started), `true'
%%     or a map of `erlmcp_flow_router:start_link/1' options (`inbox_capacity', `dir')</td></tr>
%% <tr><td>`batch_processor'</td><td>`#{batch_size => 100, batch_timeout => 10}'</td>
%%     <td>the default batch processor: `false', `true' or a map of
%%     `erlmcp_flow_batch_processor:start_link/2' options (`batch_size', `batch_timeout',
%%     `max_pending' 10000, `drain_timeout' 1000)</td></tr>
%% <tr><td>`queue'</td><td>`#{max_primary => 1000, max_overflow => 10000}'</td>
%%     <td>the default task queue: `false', `true' or `erlmcp_flow_queue:new/1' options
%%     (`drop_policy' too)</td></tr>
%% <tr><td>`lru_cache'</td><td>`#{capacity => 10000, ttl => 5000}'</td>
%%     <td>the default cache: `false', `true' or `erlmcp_flow_lru_cache:new/1' options
%%     (`shards', `sweep_interval' too)</td></tr>
%% <tr><td>`scheduler'</td><td>`false'</td><td>the agents' scheduler: `false', `true' or a
%%     map of `erlmcp_flow_scheduler:start_link/1' options (`ledger' `memory', `{shm, Name}'
%%     or `{file, Path}', `strategy', `max_queued', `max_attempts', lease settings, ...)</td></tr>
%% <tr><td>`pool_manager'</td><td>`false'</td><td>a pool of agents registered with the
%%     scheduler: `false', `true' or a map of `erlmcp_flow_pool_manager:start_link/1' options
%%     (`min_size', `max_size', `idle_timeout', `warmup_delay', `type', `handler',
%%     `start')</td></tr>
%% <tr><td>`router_dir'</td><td>`undefined' (/dev/shm)</td><td>directory of the agents'
%%     inboxes</td></tr>
%% <tr><td>`batch_ring'</td><td>`<<"erlmcp_flow.batch">>'</td><td>the ring the default batch
%%     processor writes to</td></tr>
%% <tr><td>`batch_ring_dir'</td><td>`undefined' (/dev/shm)</td><td>its directory</td></tr>
%% <tr><td>`batch_ring_capacity'</td><td>`1048576'</td><td>its size in bytes when the
%%     application creates it (a power of two from 4096)</td></tr>
%% <tr><td>`state_dir', `state_store'</td><td>`undefined' (/dev/shm),
%%     `<<"erlmcp_flow">>'</td><td>the default shared-state store (see {@link erlmcp_flow}:
%%     files, no server)</td></tr>
%% <tr><td>`restart_intensity', `restart_period'</td><td>`10', `10'</td><td>at most that
%%     many restarts in that many seconds, else the application stops</td></tr>
%% </table>
%% A map replaces the default map whole: the keys it leaves out take the module's defaults
%% (which are the original design's). A bad value makes the start fail with
%% `{error, {bad_env, Key, Value}}', or with the module's `{invalid_argument, Message}'.
%%
%% <h3>The batch processor's ring</h3>
%% Before the supervisor starts, the application opens the ring `batch_ring' in
%% `batch_ring_dir' when it exists (its unread frames are kept; it is left in place at stop),
%% else creates it: multi-producer (other producers may write to it too), `batch_ring_capacity'
%% bytes. A ring the application created is removed when it stops (consumers that have it
%% attached keep reading what it holds; the name is free again). Read it with
%% `{ok, Ring} = erlmcp_flow_app:batch_ring()' and `erlmcp_flow_ring:consumer(Ring)'.
%%
%% <h3>Stop</h3>
%% `application:stop(erlmcp_flow)' stops the supervisor (children in reverse order, each in an
%% orderly way: see {@link erlmcp_flow_sup}), then releases what is left: a default instance's
%% engine handle still published (a server killed during the shutdown) and the ring the
%% application created. Every registered name and `persistent_term' of the default instances
%% is gone afterwards, and the application can be started again.
-module(erlmcp_flow_app).
-behaviour(application).

-export([start/2, stop/1, batch_ring/0, batch_ring_name/0]).

-define(APP, erlmcp_flow).
-define(DEFAULT_RING, <<"erlmcp_flow.batch">>).
-define(DEFAULT_RING_CAPACITY, 1048576).

%% @private
start(_Type, _Args) ->
    case check_env() of
        ok ->
            case ring_for_batches() of
                {ok, Ring} ->
                    case erlmcp_flow_sup:start_link() of
                        {ok, Pid} ->
                            {ok, Pid, #{ring => Ring, instances => instances()}};
                        {error, _} = Error ->
                            release_ring(Ring),
                            Error
                    end;
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @private
stop(#{ring := Ring, instances := Instances}) ->
    lists:foreach(fun release_published/1, Instances),
    release_ring(Ring),
    ok.

%% @doc The ring the default batch processor writes to (env `batch_ring' in
%% `batch_ring_dir'), opened: take its consumer with `erlmcp_flow_ring:consumer/1'.
-spec batch_ring() -> {ok, erlmcp_flow_nif:ring()} | erlmcp_flow_nif:error().
batch_ring() ->
    erlmcp_flow_ring:open(batch_ring_name(), dir_opts(batch_ring_dir)).

%% @doc The name of that ring (env `batch_ring').
-spec batch_ring_name() -> erlmcp_flow_ring:name().
batch_ring_name() ->
    application:get_env(?APP, batch_ring, ?DEFAULT_RING).

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

check_env() ->
    Checks = [{router, fun instance/1}, {batch_processor, fun instance/1},
              {queue, fun instance/1}, {lru_cache, fun instance/1},
              {scheduler, fun instance/1}, {pool_manager, fun instance/1},
              {restart_intensity, fun(V) -> is_integer(V) andalso V >= 0 end},
              {restart_period, fun(V) -> is_integer(V) andalso V > 0 end},
              {batch_ring_capacity, fun(V) -> is_integer(V) andalso V > 0 end}],
    Bad = [{bad_env, Key, V} || {Key, Check} <- Checks,
                                {ok, V} <- [application:get_env(?APP, Key)],
                                not Check(V)],
    case Bad of
        [] -> ok;
        [First | _] -> {error, First}
    end.

instance(V) -> is_boolean(V) orelse is_map(V).

%% The ring is made (or opened) here, before the supervisor: it outlives restarts of the
%% batch processor, which opens it by name each time it starts.
ring_for_batches() ->
    case application:get_env(?APP, batch_processor, #{}) of
        false ->
            {ok, none};
        _ ->
            case batch_ring() of
                {ok, Ring} ->
                    {ok, {opened, Ring}};
                {error, {not_found, _}} ->
                    Opts = maps:merge(dir_opts(batch_ring_dir),
                                      #{capacity => application:get_env(
                                                      ?APP, batch_ring_capacity,
                                                      ?DEFAULT_RING_CAPACITY),
                                        multi_producer => true}),
                    case erlmcp_flow_ring:create(batch_ring_name(), Opts) of
                        {ok, Ring} -> {ok, {created, Ring}};
                        {error, _} = Error -> Error
                    end;
                {error, _} = Error ->
                    Error
            end
    end.

release_ring(none) ->
    ok;
release_ring({opened, Ring}) ->
    _ = erlmcp_flow_ring:close(Ring),
    ok;
release_ring({created, Ring}) ->
    case erlmcp_flow_ring:unlink(Ring) of
        ok -> ok;
        {error, Reason} ->
            logger:warning("erlmcp_flow: removing the batch ring failed: ~0p", [Reason])
    end,
    _ = erlmcp_flow_ring:close(Ring),
    ok.

dir_opts(Key) ->
    case application:get_env(?APP, Key, undefined) of
        undefined -> #{};
        Dir -> #{dir => Dir}
    end.

%% The default instances this start runs.
instances() ->
    [I || {I, Default} <- [{router, #{}}, {batch_processor, #{}}, {queue, #{}},
                           {lru_cache, #{}}, {scheduler, false}, {pool_manager, false}],
          application:get_env(?APP, I, Default) =/= false].

%% After the supervisor stopped, each default instance has unpublished its engine handle in
%% its terminate/2. One is left only when its server was killed during the shutdown (no
%% terminate/2): release it here, so that nothing outlives the application. The keys are those
%% of the modules' default instances (see their init/1).
release_published(Instance) ->
    {Name, Key} = published_key(Instance),
    case whereis(Name) =:= undefined andalso persistent_term:get(Key, undefined) of
        false -> ok;            % a server of that name runs (started by hand): its own
        undefined -> ok;
        Handle ->
            _ = persistent_term:erase(Key),
            release(Instance, Handle)
    end.

published_key(router) ->
    {erlmcp_flow_router, {erlmcp_flow_router, {local, erlmcp_flow_router}}};
published_key(batch_processor) ->
    {erlmcp_flow_batch_processor,
     {erlmcp_flow_batch_processor, {local, erlmcp_flow_batch_processor}}};
published_key(queue) ->
    {erlmcp_flow_queue, {erlmcp_flow_queue, queue}};
published_key(lru_cache) ->
    {erlmcp_flow_lru_cache, {erlmcp_flow_lru_cache, cache}};
published_key(scheduler) ->
    {erlmcp_flow_scheduler, {erlmcp_flow_scheduler, sched}};
published_key(pool_manager) ->
    {erlmcp_flow_pool_manager, {erlmcp_flow_pool_manager, pool}}.

release(router, Router) ->
    _ = erlmcp_flow_nif:router_close(Router);
release(batch_processor, {Batch, _Ring}) ->
    erlmcp_flow_batch_processor:release_left(Batch);
release(queue, Queue) ->
    case erlmcp_flow_queue:close(Queue) of
        {ok, [_ | _] = Tasks} ->
            logger:warning("erlmcp_flow: ~b task(s) of a killed default queue were dropped",
                           [length(Tasks)]);
        _ ->
            ok
    end;
release(lru_cache, Cache) ->
    _ = erlmcp_flow_nif:cache_set_sweeper(Cache, 0),
    ok;
release(pool_manager, Pool) ->
    %% The agents a killed pool manager left end with the application.
    Agents = persistent_term:get({erlmcp_flow_pool_manager, agents}, #{}),
    _ = [exit(Pid, shutdown) || Pid <- maps:values(Agents)],
    _ = persistent_term:erase({erlmcp_flow_pool_manager, agents}),
    _ = erlmcp_flow_nif:pool_close(Pool),
    ok;
release(scheduler, Sched) ->
    _ = persistent_term:erase({erlmcp_flow_scheduler, agents}),
    _ = erlmcp_flow_nif:sched_close(Sched),
    ok.

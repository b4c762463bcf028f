%% @doc The original design's `erlmcp_flow_pool_manager': a pool of pre-warmed agents of one
%% type, registered with {@link erlmcp_flow_scheduler}, over the engine's pool policy
%% (`emf_pool_*').
%%
%% ```
%% {ok, _} = erlmcp_flow_scheduler:start_link(),
%% {ok, _} = erlmcp_flow_pool_manager:start_link(#{type => <<"coder">>, min_size => 5,
%%                                                  max_size => 20, idle_timeout => 60000,
%%                                                  warmup_delay => 100,
%%                                                  handler => fun(Task) -> do(Task) end}),
%% ok = erlmcp_flow_pool_manager:ensure_min_pool(),
%% {ok, #{live := Live}} = erlmcp_flow_pool_manager:stats(),
%% {ok, Id} = erlmcp_flow_scheduler:assign_task(<<"coder">>, Task).
%% '''
%%
%% <h3>Where the logic is</h3>
%% Every decision is the engine's pool policy: warm-up to `min_size' one start per
%% `warmup_delay' (the first at once, at most `max_starting' in flight), replacement of dead
%% agents to keep `min_size', growth by one when tasks of the type wait and every live agent is
%% busy (up to `max_size', starts in flight counted), stopping an agent idle for
%% `idle_timeout' while more than `min_size' live, back-off after failed starts. This server
%% feeds it events (starts done or failed, deaths, each agent's tasks in flight as the
%% scheduler counts them, the number of tasks of the type queued, a tick every `tick_ms') and
%% carries out its actions: start an agent, stop one.
%%
%% <h3>Starting agents</h3>
%% `start' says how:
%% <ul>
%% <li>absent: a process running {@link erlmcp_flow_scheduler:agent_loop/1} with `handler'
%%     (default: a handler returning the task itself);</li>
%% <li>`fun() -> {ok, Pid} | {error, Reason}' or `{M, F, A}' with that result: any process
%%     speaking the agent protocol of {@link erlmcp_flow_scheduler};</li>
%% <li>`{command, Cmd}': an OS process started with `open_port({spawn, Cmd}, [{packet, 4},
%%     binary, exit_status])' behind a small Erlang process. Each task's payload (it must be
%%     a binary) is written to the program's stdin as one frame (a 4-byte big-endian length,
%%     then the bytes); the program's next frame on stdout is the result (a binary). One task
%%     at a time. The program's exit (or its death) is the agent's death: its task goes to
%%     another agent. `cat' is such a program (an echo).</li>
%% </ul>
%% A started agent is registered with the scheduler as `<prefix>-<n>-<slot>' (`prefix'
%% defaults to `pool-<type>'; `n' distinguishes the incarnations of this server) with type
%% `type' and `max_tasks'. A start that raises, returns something else or whose registration
%% fails counts as a failed start (the process, if any, is killed). Stopping an agent
%% unregisters it and ends its process with `exit(Pid, shutdown)'.
%%
%% <h3>Restarts</h3>
%% The server publishes its agents with `persistent_term'. One started after it was killed
%% adopts those still alive: each start the policy asks for takes one of them before starting
%% a new process; the ones it does not need are stopped. An orderly stop (or a supervisor's
%% shutdown) stops every agent of the pool.
%%
%% <h3>Options</h3>
%% `type' (`<<"default">>'), `min_size' (5), `max_size' (20), `idle_timeout' (ms, 60000),
%% `warmup_delay' (ms, 100), `max_starting' (2), `start_timeout' (ms, 30000), `max_backoff'
%% (ms, 30000), `max_tasks' per agent (5), `start', `handler', `prefix', `tick_ms' (100).
%% Bad options: `{error, {invalid_argument, Message}}' (the engine checks the ranges).
-module(erlmcp_flow_pool_manager).
-behaviour(gen_server).

-export([start_link/0, start_link/1, start/1, stop/0, ensure_min_pool/0, stats/0, agents/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([options/0, start/0]).

-type start() :: fun(() -> {ok, pid()} | {error, term()}) | {module(), atom(), [term()]}
               | {command, string() | binary()}.
-type options() :: #{type => erlmcp_flow_scheduler:agent_type(),
                     min_size => non_neg_integer(),
                     max_size => pos_integer(),
                     idle_timeout => pos_integer(),
                     warmup_delay => non_neg_integer(),
                     max_starting => pos_integer(),
                     start_timeout => pos_integer(),
                     max_backoff => pos_integer(),
                     max_tasks => pos_integer(),
                     start => start(),
                     handler => erlmcp_flow_scheduler:handler(),
                     prefix => binary() | string() | atom(),
                     tick_ms => pos_integer()}.
-type error() :: erlmcp_flow_nif:error().

-define(SERVER, ?MODULE).
-define(KEY, {?MODULE, pool}).
-define(AGENTS_KEY, {?MODULE, agents}).
-define(KEYS, [type, min_size, max_size, idle_timeout, warmup_delay, max_starting,
               start_timeout, max_backoff, max_tasks, start, handler, prefix, tick_ms]).
%% Option in ms => the engine's option in µs.
-define(US_KEYS, [{idle_timeout, idle_timeout_us}, {warmup_delay, warmup_delay_us},
                  {start_timeout, start_timeout_us}, {max_backoff, max_backoff_us}]).

%%--------------------------------------------------------------------------------------------
%% API
%%--------------------------------------------------------------------------------------------

%% @equiv start_link(#{})
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    start_link(#{}).

%% @doc Starts the pool manager linked to the caller, registered as
%% `erlmcp_flow_pool_manager'; it warms the pool up at once.
-spec start_link(options()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    start(Opts, start_link).

%% @doc As `start_link/1', without a link.
-spec start(options()) -> {ok, pid()} | {error, term()}.
start(Opts) ->
    start(Opts, start).

%% @doc Stops the pool manager and every agent of the pool.
-spec stop() -> ok | error().
stop() ->
    try
        gen_server:stop(?SERVER)
    catch
        exit:noproc -> not_running()
    end.

%% @doc The original `ensure_min_pool/0': brings the pool towards `min_size' now (the starts
%% the warm-up rule allows now; later ones follow on the ticks).
-spec ensure_min_pool() -> ok | error().
ensure_min_pool() ->
    call(ensure_min).

%% @doc The engine's counters (`live', `starting', `idle', `busy', `stopping',
%% `started_total', `stopped_total', `failed_starts', `timed_out_starts', `died',
%% `replaced') and `agents', the agents this server runs.
-spec stats() -> {ok, #{atom() => non_neg_integer()}} | error().
stats() ->
    call(stats).

%% @doc The agents of the pool: id and pid.
-spec agents() -> [{binary(), pid()}].
agents() ->
    case call(agents) of
        {error, _} -> [];
        List -> List
    end.

%%--------------------------------------------------------------------------------------------
%% gen_server
%%--------------------------------------------------------------------------------------------

-record(state, {pool :: erlmcp_flow_nif:pool(),
                type :: binary(),
                max_tasks :: pos_integer(),
                start :: start() | {handler, erlmcp_flow_scheduler:handler()},
                prefix :: binary(),
                tick_ms :: pos_integer(),
                agents = #{} :: #{binary() => {pid(), reference()}},
                monitors = #{} :: #{reference() => binary()},
                %% Agents a killed predecessor left, to adopt before starting new ones.
                orphans = [] :: [{binary(), pid()}]}).

%% @private
init({Pool, Type, MaxTasks, Start, Prefix, TickMs}) ->
    process_flag(trap_exit, true), % terminate/2 stops the agents on shutdown
    persistent_term:put(?KEY, Pool),
    Orphans = [{Id, Pid} || {Id, Pid} <- maps:to_list(persistent_term:get(?AGENTS_KEY, #{})),
                            node(Pid) =:= node(), is_process_alive(Pid)],
    S = #state{pool = Pool, type = Type, max_tasks = MaxTasks, start = Start,
               prefix = iolist_to_binary([Prefix, $-,
                                          integer_to_binary(
                                            erlang:unique_integer([positive]))]),
               tick_ms = TickMs, orphans = Orphans},
    ok = erlmcp_flow_nif:pool_ensure_min(Pool, now_us()),
    S1 = drain(S),
    %% Orphans the warm-up did not take are stopped.
    S2 = lists:foldl(fun({Id, Pid}, Acc) -> stop_agent(Id, Pid), Acc end,
                     S1, S1#state.orphans),
    S3 = S2#state{orphans = []},
    publish(S3),
    _ = erlang:send_after(TickMs, self(), tick),
    {ok, S3}.

%% @private
handle_call(ensure_min, _From, S) ->
    case erlmcp_flow_nif:pool_ensure_min(S#state.pool, now_us()) of
        ok -> {reply, ok, after_event(S)};
        {error, _} = Error -> {reply, Error, S}
    end;
handle_call(stats, _From, S) ->
    case erlmcp_flow_nif:pool_stats(S#state.pool) of
        {ok, Stats} -> {reply, {ok, Stats#{agents => map_size(S#state.agents)}}, S};
        {error, _} = Error -> {reply, Error, S}
    end;
handle_call(agents, _From, #state{agents = Agents} = S) ->
    {reply, lists:sort([{Id, Pid} || {Id, {Pid, _}} <- maps:to_list(Agents)]), S};
handle_call(_Request, _From, S) ->
    {reply, invalid("unknown request"), S}.

%% @private
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
handle_info(tick, #state{pool = Pool, agents = Agents, type = Type} = S) ->
    Now = now_us(),
    %% Each agent's tasks in flight and the type's queue, as the scheduler counts them.
    maps:foreach(fun(Id, _) ->
                         case erlmcp_flow_scheduler:get_agent_load(Id) of
                             {ok, #{current_tasks := N}} ->
                                 _ = erlmcp_flow_nif:pool_observe(Pool, Id, N, Now),
                                 ok;
                             {error, _} ->
                                 ok
                         end
                 end, Agents),
    case erlmcp_flow_scheduler:queued(Type) of
        {ok, Queued} -> ok = erlmcp_flow_nif:pool_demand(Pool, Queued, Now);
        {error, _} -> ok
    end,
    ok = erlmcp_flow_nif:pool_tick(Pool, Now),
    _ = erlang:send_after(S#state.tick_ms, self(), tick),
    {noreply, after_event(S)};
handle_info({'DOWN', Mon, process, _Pid, _Reason}, #state{monitors = Mons} = S) ->
    case maps:take(Mon, Mons) of
        {Id, Rest} ->
            _ = erlmcp_flow_nif:pool_agent_gone(S#state.pool, Id, now_us()),
            S1 = S#state{monitors = Rest, agents = maps:remove(Id, S#state.agents)},
            {noreply, after_event(S1)};
        error ->
            {noreply, S}
    end;
handle_info(_Info, S) ->
    {noreply, S}.

%% @private
terminate(_Reason, #state{pool = Pool, agents = Agents}) ->
    maps:foreach(fun(Id, {Pid, Mon}) ->
                         erlang:demonitor(Mon, [flush]),
                         stop_agent(Id, Pid)
                 end, Agents),
    case persistent_term:get(?KEY, undefined) of
        Pool -> _ = persistent_term:erase(?KEY), ok;
        _ -> ok
    end,
    _ = persistent_term:erase(?AGENTS_KEY),
    _ = erlmcp_flow_nif:pool_close(Pool),
    ok.

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

start(Opts, How) when is_map(Opts) ->
    case check(Opts) of
        {ok, Type, MaxTasks, Start, Prefix, TickMs} ->
            case whereis(?SERVER) of
                undefined ->
                    case persistent_term:get(?KEY, undefined) of
                        undefined -> ok;
                        Old -> _ = erlmcp_flow_nif:pool_close(Old), ok
                    end,
                    EngineOpts = maps:merge(maps:with([min_size, max_size, max_starting], Opts),
                                            maps:from_list([{K2, maps:get(K, Opts) * 1000}
                                                            || {K, K2} <- ?US_KEYS,
                                                               is_map_key(K, Opts)])),
                    case erlmcp_flow_nif:pool_new(EngineOpts, Type) of
                        {ok, Pool} ->
                            Args = {Pool, Type, MaxTasks, Start, Prefix, TickMs},
                            case gen_server:How({local, ?SERVER}, ?MODULE, Args, []) of
                                {ok, _} = Ok ->
                                    Ok;
                                Other ->
                                    _ = erlmcp_flow_nif:pool_close(Pool),
                                    Other
                            end;
                        {error, _} = Error ->
                            Error
                    end;
                Pid ->
                    {error, {already_started, Pid}}
            end;
        {error, _} = Error ->
            Error
    end;
start(_Opts, _How) ->
    invalid("options: expected a map").

check(Opts) ->
    Type = name(maps:get(type, Opts, <<"default">>)),
    MaxTasks = maps:get(max_tasks, Opts, 5),
    TickMs = maps:get(tick_ms, Opts, 100),
    Start = case {maps:find(start, Opts), maps:get(handler, Opts, fun(Task) -> Task end)} of
                {error, H} when is_function(H, 1); is_function(H, 2) -> {handler, H};
                {error, _} -> bad;
                {{ok, F}, _} when is_function(F, 0) -> F;
                {{ok, {M, F, A}}, _} when is_atom(M), is_atom(F), is_list(A) -> {M, F, A};
                {{ok, {command, Cmd}}, _} when is_list(Cmd); is_binary(Cmd) -> {command, Cmd};
                {{ok, _}, _} -> bad
            end,
    Prefix = case maps:find(prefix, Opts) of
                 error when is_binary(Type) -> <<"pool-", Type/binary>>;
                 error -> bad;
                 {ok, P} -> name(P)
             end,
    Ms = [K || {K, _} <- ?US_KEYS, is_map_key(K, Opts),
               not (is_integer(maps:get(K, Opts)) andalso maps:get(K, Opts) >= 0)],
    case maps:keys(maps:without(?KEYS, Opts)) of
        [_ | _] = Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, ?KEYS]));
        [] when not is_binary(Type) ->
            invalid("type: expected a name (binary, atom or string)");
        [] when not is_integer(MaxTasks); MaxTasks < 1 ->
            invalid("max_tasks: expected a positive integer");
        [] when not is_integer(TickMs); TickMs < 1 ->
            invalid("tick_ms: expected a positive integer");
        [] when Start =:= bad ->
            invalid("start: expected fun() -> {ok, Pid}, {M, F, A} or {command, Cmd}; "
                    "handler: expected a fun of arity 1 or 2");
        [] when not is_binary(Prefix) ->
            invalid("prefix: expected a name (binary, atom or string)");
        [] when Ms =/= [] ->
            invalid(io_lib:format("~0p: expected a non-negative integer (ms)", [Ms]));
        [] ->
            {ok, Type, MaxTasks, Start, Prefix, TickMs}
    end.

%% After any event: carry out the pool's actions, publish the agents.
after_event(S) ->
    S1 = drain(S),
    publish(S1),
    S1.

drain(S) ->
    case erlmcp_flow_nif:pool_poll(S#state.pool) of
        {ok, []} ->
            S;
        {ok, Actions} ->
            drain(lists:foldl(fun act/2, S, Actions));
        {error, Reason} ->
            logger:error("erlmcp_flow_pool_manager: polling actions failed: ~0p", [Reason]),
            S
    end.

act({start, Slot}, #state{orphans = [{Id, Pid} | Rest]} = S) ->
    %% Adopt an agent a killed predecessor left (it is registered with the scheduler).
    S1 = S#state{orphans = Rest},
    case is_process_alive(Pid) of
        true -> started(Slot, Id, Pid, S1);
        false -> act({start, Slot}, S1)
    end;
act({start, Slot}, #state{pool = Pool} = S) ->
    Id = <<(S#state.prefix)/binary, $-, (integer_to_binary(Slot))/binary>>,
    case start_agent(S#state.start) of
        {ok, Pid} ->
            case erlmcp_flow_scheduler:register_agent(Id, #{type => S#state.type,
                                                            max_tasks => S#state.max_tasks,
                                                            pid => Pid}) of
                ok ->
                    started(Slot, Id, Pid, S);
                {error, Reason} ->
                    exit(Pid, kill),
                    failed(Pool, Slot, {register_agent, Reason}),
                    S
            end;
        {error, Reason} ->
            failed(Pool, Slot, Reason),
            S
    end;
act({stop, Id}, #state{agents = Agents} = S) ->
    case maps:take(Id, Agents) of
        {{Pid, Mon}, Rest} ->
            erlang:demonitor(Mon, [flush]),
            stop_agent(Id, Pid),
            %% Told to stop: gone as far as the pool is concerned.
            _ = erlmcp_flow_nif:pool_agent_gone(S#state.pool, Id, now_us()),
            S#state{agents = Rest, monitors = maps:remove(Mon, S#state.monitors)};
        error ->
            S
    end.

started(Slot, Id, Pid, #state{pool = Pool} = S) ->
    case erlmcp_flow_nif:pool_started(Pool, Slot, Id, now_us()) of
        ok ->
            Mon = erlang:monitor(process, Pid),
            S#state{agents = maps:put(Id, {Pid, Mon}, S#state.agents),
                    monitors = maps:put(Mon, Id, S#state.monitors)};
        {error, Reason} ->
            logger:warning("erlmcp_flow_pool_manager: start ~b of ~s refused: ~0p",
                           [Slot, Id, Reason]),
            stop_agent(Id, Pid),
            S
    end.

failed(Pool, Slot, Reason) ->
    Text = unicode:characters_to_binary(io_lib:format("~0tp", [Reason])),
    logger:warning("erlmcp_flow_pool_manager: start ~b failed: ~ts", [Slot, Text]),
    _ = erlmcp_flow_nif:pool_start_failed(Pool, Slot,
                                          binary:replace(Text, <<0>>, <<"\\0">>, [global]),
                                          now_us()),
    ok.

start_agent({handler, Handler}) ->
    {ok, erlmcp_flow_scheduler:spawn_agent(Handler)};
start_agent({command, Cmd}) ->
    Parent = self(),
    Ref = make_ref(),
    Pid = spawn(fun() -> command_agent(Parent, Ref, Cmd) end),
    Mon = erlang:monitor(process, Pid),
    receive
        {Ref, ok} -> erlang:demonitor(Mon, [flush]), {ok, Pid};
        {'DOWN', Mon, process, Pid, Reason} -> {error, {command, Reason}}
    end;
start_agent(Start) ->
    try
        case Start of
            {M, F, A} -> apply(M, F, A);
            Fun -> Fun()
        end
    of
        {ok, Pid} when is_pid(Pid) -> {ok, Pid};
        {error, _} = Error -> Error;
        Other -> {error, {bad_start_result, Other}}
    catch
        Class:Reason -> {error, {Class, Reason}}
    end.

stop_agent(Id, Pid) ->
    _ = erlmcp_flow_scheduler:unregister_agent(Id),
    exit(Pid, shutdown),
    ok.

publish(#state{agents = Agents}) ->
    Published = maps:map(fun(_, {Pid, _}) -> Pid end, Agents),
    case persistent_term:get(?AGENTS_KEY, undefined) of
        Published -> ok;
        _ -> persistent_term:put(?AGENTS_KEY, Published)
    end.

%% An OS-process agent: the port's owner, relaying one task at a time (see "Starting
%% agents"). The port closes with this process.
command_agent(Parent, Ref, Cmd) ->
    Port = open_port({spawn, unicode:characters_to_list(Cmd)},
                     [{packet, 4}, binary, exit_status, use_stdio]),
    Parent ! {Ref, ok},
    command_loop(Port).

command_loop(Port) ->
    receive
        {erlmcp_flow_task, deliver, TaskId, Attempt, Payload} when is_binary(Payload) ->
            erlmcp_flow_scheduler:started(TaskId, Attempt),
            true = port_command(Port, Payload),
            receive
                {Port, {data, Result}} ->
                    _ = erlmcp_flow_scheduler:ack(TaskId, Attempt, Result),
                    command_loop(Port);
                {Port, {exit_status, Status}} ->
                    exit({command_exited, Status})
            end;
        {erlmcp_flow_task, deliver, TaskId, Attempt, _Payload} ->
            _ = erlmcp_flow_scheduler:nack(TaskId, Attempt,
                                           <<"command agents take binary payloads">>),
            command_loop(Port);
        {Port, {exit_status, Status}} ->
            exit({command_exited, Status});
        _ ->
            command_loop(Port)
    end.

%% µs since the VM started (the clock of erlmcp_flow_scheduler too).
now_us() ->
    erlang:convert_time_unit(erlang:monotonic_time() - erlang:system_info(start_time),
                             native, microsecond).

call(Request) ->
    try
        gen_server:call(?SERVER, Request, infinity)
    catch
        exit:{Reason, {gen_server, call, _}} when Reason =:= noproc; Reason =:= normal;
                                                   Reason =:= shutdown;
                                                   element(1, Reason) =:= shutdown ->
            not_running()
    end.

not_running() ->
    {error, {closed, <<"erlmcp_flow_pool_manager: the pool manager is not running">>}}.

name(Name) when is_binary(Name) -> Name;
name(Name) when is_atom(Name) -> atom_to_binary(Name, utf8);
name(Name) when is_list(Name) ->
    try unicode:characters_to_binary(Name) of
        B when is_binary(B) -> B;
        _ -> Name
    catch
        error:badarg -> Name
    end;
name(Name) -> Name.

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

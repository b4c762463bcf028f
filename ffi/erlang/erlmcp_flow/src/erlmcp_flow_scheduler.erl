%% @doc The original design's `erlmcp_flow_scheduler' over the engine's scheduler
%% (`emf_sched_*'): agents that are Erlang processes, tasks with leases, redelivery when an
%% agent dies, exactly one result per task, dead letters, back-pressure.
%%
%% ```
%% {ok, _} = erlmcp_flow_scheduler:start_link(#{ledger => {shm, <<"my.sched">>}}),
%% Agent = erlmcp_flow_scheduler:spawn_agent(fun({add, A, B}) -> A + B end),
%% ok = erlmcp_flow_scheduler:register_agent(<<"adder-1">>, #{type => <<"math">>, pid => Agent}),
%% {ok, <<"adder-1">>} = erlmcp_flow_scheduler:select_agent(<<"math">>),
%% {ok, Id} = erlmcp_flow_scheduler:assign_task(<<"math">>, {add, 1, 2}),
%% receive {erlmcp_flow_task, Id, {ok, 3}} -> ok end.
%% '''
%%
%% <h3>Where the logic is</h3>
%% Every decision is the engine's: which agent gets a task (the strategy), leases and their
%% length, redelivery of the tasks of a dead agent or an expired lease, work stealing,
%% deduplication of results by task id, dead letters after `max_attempts', back-pressure at
%% `max_queued', the durable ledger. This gen_server owns the engine scheduler (a
%% one-thread-at-a-time object), feeds it events with a clock reading (µs since the VM
%% started) and carries out the actions it polls: it sends messages. Its own state is only
%% what the engine cannot know: which process is which agent, and which process submitted
%% which task.
%%
%% <h3>Agents</h3>
%% An agent is a process registered under an id (1 to 194 characters of
%% `A-Z a-z 0-9 . _ -', not starting with `.'): `register_agent(Id, #{type => T, max_tasks =>
%% N, pid => Pid})' (type: `default_type', max_tasks: 5, pid: the caller). Its liveness in
%% the engine is a token for that pid; the scheduler monitors the pid, and its `DOWN' is
%% `emf_sched_agent_dead': its leased tasks are delivered again elsewhere at once.
%% Registering an id again with the same pid and type updates its capacity and keeps its
%% tasks; with another pid, the old incarnation's tasks are released. One process may be
%% several agents.
%%
%% An agent receives `{erlmcp_flow_task, deliver, TaskId, Attempt, Payload}' and answers with
%% `started(TaskId, Attempt)' (optional: the task can no longer be stolen), then
%% `ack(TaskId, Attempt, Result)' or `nack(TaskId, Attempt, Reason)' (a failed attempt: the
%% task is delivered again, or dead-lettered after `max_attempts'). It may receive
%% `{erlmcp_flow_task, revoke, TaskId, Attempt}': the task was taken back (stolen by an idle
%% agent, or completed elsewhere); whatever it answers for that attempt is ignored.
%% `spawn_agent/1,2' and `agent_loop/1' run such a loop around a fun.
%%
%% <h3>Tasks and results</h3>
%% `assign_task(Task)', `assign_task(Type, Task)' and `assign_task(Type, Task, Opts)'
%% (`priority' `critical | high | normal | low', default `normal'; `reply_to', default the
%% caller) return `{ok, TaskId}' once the task is in the ledger: from then on it is never
%% lost. `{error, {full, Message}}' is back-pressure (`max_queued' tasks wait): nothing was
%% accepted, the task is still the caller's. The outcome arrives once to `reply_to' as
%% `{erlmcp_flow_task, TaskId, {ok, Result}}' or `{erlmcp_flow_task, TaskId,
%% {dead_letter, Reason}}' (`Reason' a binary). Tasks and results are any terms: they are
%% encoded with `term_to_binary' and decoded with `binary_to_term(_, [safe])' (so an atom
%% unknown to this node in a result is refused, reported as a dead letter of the decoding).
%% The `reply_to' pid is stored with the task in the ledger, so that a restarted scheduler
%% sends the results of the tasks it recovered to their submitters.
%%
%% <h3>Loads</h3>
%% `get_agent_load(Id)' is `emf_sched_agent_load': `current_tasks' (leased, not answered:
%% counted by the engine from its leases), `backlog' (of those, not reported started),
%% `max_tasks', `latency_us' (the agent's delivery-to-ack average), `last_heartbeat_us', plus
%% `load', `current_tasks / max_tasks'. The original `update_agent_load(Id, Load)' set a load
%% figure by hand; here loads follow from leases and cannot be set, so
%% `update_agent_load(Id, #{max_tasks => N})' changes the agent's capacity (a registration
%% again with the same pid and type, which keeps its tasks) and counts as a heartbeat; any
%% other argument is `{error, {invalid_argument, _}}'.
%%
%% <h3>Restarts</h3>
%% The server registers as `erlmcp_flow_scheduler' and publishes its engine handle and its
%% agents with `persistent_term'. A server started after one was killed closes the handle it
%% left, opens the ledger again and registers the agents it left that are still alive. With a
%% durable ledger (`{shm, Name}', `{file, Path}') the tasks accepted and not ended are
%% recovered and delivered again; a late answer of an agent to a delivery of the killed
%% server is accepted once the task has been delivered by the new one (it completes it:
%% exactly one result still), refused with `{error, {not_found, _}}' before. With the
%% `memory' ledger (the default) a killed server's tasks are gone; an orderly stop sends
%% `{dead_letter, <<"scheduler stopped">>}' for each task not ended, so nothing disappears
%% silently. Actions the killed server polled and had not carried out are not repeated by
%% the engine, except deliveries (the recovered tasks are delivered again).
%%
%% <h3>Errors</h3>
%% Bad options and arguments give `{error, {invalid_argument, Message}}', an unknown agent
%% `{error, {not_found, _}}', a scheduler that is not running `{error, {closed, _}}'.
-module(erlmcp_flow_scheduler).
-behaviour(gen_server).

-export([start_link/0, start_link/1, start/1, stop/0,
         register_agent/2, unregister_agent/1, select_agent/1,
         assign_task/1, assign_task/2, assign_task/3,
         started/2, ack/3, nack/3,
         update_agent_load/2, get_agent_load/1, queued/1, stats/0, agents/0,
         spawn_agent/1, spawn_agent/2, agent_loop/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([options/0, agent_id/0, agent_type/0, task_id/0, priority/0, agent_opts/0,
              task_opts/0, handler/0]).

-type options() :: #{strategy => least_loaded | power_of_two | round_robin,
                     seed => non_neg_integer(),
                     max_queued => pos_integer(),
                     max_attempts => pos_integer(),
                     lease_factor => number(),
                     min_lease_us => pos_integer(),
                     max_lease_us => pos_integer(),
                     default_lease_us => pos_integer(),
                     latency_window => pos_integer(),
                     ewma_alpha => number(),
                     work_stealing => boolean(),
                     heartbeat_timeout_us => non_neg_integer(),
                     ledger => memory | {shm, iodata()} | {shm, iodata(), iodata()}
                             | {file, file:filename_all()},
                     shm_capacity => pos_integer(),
                     tick_ms => pos_integer(),
                     default_type => agent_type()}.
%% The engine's options (see `emf_sched_options_t'; defaults: `least_loaded', `max_queued'
%% 100000, `max_attempts' 3, `lease_factor' 3, leases from 100 ms to 10 min, 10 s before any
%% latency is observed, `work_stealing' true), with these differences: `heartbeat_timeout_us'
%% defaults to 0 (not watched: agents are monitored processes); `ledger' `memory' (default),
%% `{shm, Name}' or `{shm, Name, Dir}' (a shared-memory segment, /dev/shm by default;
%% survives the death of the scheduler) or `{file, Path}' (an append-only file; survives a
%% reboot); `tick_ms' how often leases are checked (50); `default_type' the type of
%% `assign_task/1' and of agents registered without one (`<<"default">>').
-type agent_id() :: binary() | atom() | string().
-type agent_type() :: binary() | atom() | string().
-type task_id() :: pos_integer().
-type priority() :: critical | high | normal | low.
-type agent_opts() :: #{type => agent_type(), max_tasks => pos_integer(), pid => pid()}.
-type task_opts() :: #{priority => priority(), reply_to => pid()}.
-type handler() :: fun((term()) -> term()) | fun((task_id(), term()) -> term()).
%% What an agent loop runs for each task: its value is the result (`ack'); an exception is a
%% failed attempt (`nack' with the exception as reason).
-type error() :: erlmcp_flow_nif:error().

-define(SERVER, ?MODULE).
-define(KEY, {?MODULE, sched}).
-define(AGENTS_KEY, {?MODULE, agents}).
-define(ENGINE_KEYS, [strategy, seed, max_queued, max_attempts, lease_factor, min_lease_us,
                      max_lease_us, default_lease_us, latency_window, ewma_alpha,
                      work_stealing, heartbeat_timeout_us, shm_capacity]).
-define(KEYS, [ledger, tick_ms, default_type | ?ENGINE_KEYS]).
-define(POLL_MAX, 256).
-define(DEFAULT_MAX_TASKS, 5).

%%--------------------------------------------------------------------------------------------
%% Starting and stopping
%%--------------------------------------------------------------------------------------------

%% @equiv start_link(#{})
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    start_link(#{}).

%% @doc Starts the scheduler linked to the caller, registered as `erlmcp_flow_scheduler'.
%% Bad options: `{error, {invalid_argument, Message}}' (nothing started).
-spec start_link(options()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    start(Opts, start_link).

%% @doc As `start_link/1', without a link.
-spec start(options()) -> {ok, pid()} | {error, term()}.
start(Opts) ->
    start(Opts, start).

%% @doc Stops the scheduler (an orderly stop: see "Restarts").
-spec stop() -> ok | error().
stop() ->
    try
        gen_server:stop(?SERVER)
    catch
        exit:noproc -> not_running()
    end.

%%--------------------------------------------------------------------------------------------
%% Agents
%%--------------------------------------------------------------------------------------------

%% @doc Registers the process `pid' (default: the caller) as agent `AgentId' of type `type'
%% holding at most `max_tasks' tasks at once (default 5); see "Agents".
-spec register_agent(agent_id(), agent_opts()) -> ok | error().
register_agent(AgentId, Opts) when is_map(Opts) ->
    case maps:keys(maps:without([type, max_tasks, pid], Opts)) of
        [] ->
            Pid = maps:get(pid, Opts, self()),
            MaxTasks = maps:get(max_tasks, Opts, ?DEFAULT_MAX_TASKS),
            if
                not is_pid(Pid) ->
                    invalid("pid: expected a pid");
                not is_integer(MaxTasks) orelse MaxTasks < 1 ->
                    invalid("max_tasks: expected a positive integer");
                true ->
                    with_name(AgentId, "agent", fun(Id) ->
                        call({register, Id, name_or_default(maps:get(type, Opts, default)),
                              MaxTasks, Pid})
                    end)
            end;
        Unknown ->
            invalid(io_lib:format("unknown agent options ~0p (known: type, max_tasks, pid)",
                                  [Unknown]))
    end;
register_agent(_AgentId, _Opts) ->
    invalid("agent options: expected a map").

%% @doc Removes agent `AgentId'; its tasks are delivered again to the others.
-spec unregister_agent(agent_id()) -> ok | error().
unregister_agent(AgentId) ->
    with_name(AgentId, "agent", fun(Id) -> call({unregister, Id}) end).

%% @doc The agent the strategy would give a task of `Type' now, without leasing anything:
%% `{ok, AgentId}' (a binary), or `{error, no_capacity}' when no agent of that type has spare
%% capacity (or none is registered).
-spec select_agent(agent_type()) -> {ok, binary()} | {error, no_capacity} | error().
select_agent(Type) ->
    with_name(Type, "agent_type", fun(T) ->
        case call({select, T}) of
            {error, {full, _}} -> {error, no_capacity};
            Other -> Other
        end
    end).

%% @doc Changes agent `AgentId''s capacity (`#{max_tasks => N}'), keeping its tasks; see
%% "Loads" for why a load figure cannot be set.
-spec update_agent_load(agent_id(), #{max_tasks := pos_integer()}) -> ok | error().
update_agent_load(AgentId, #{max_tasks := N} = Load)
  when is_integer(N), N >= 1, map_size(Load) =:= 1 ->
    with_name(AgentId, "agent", fun(Id) -> call({update_load, Id, N}) end);
update_agent_load(_AgentId, _Load) ->
    invalid("load: expected #{max_tasks => N} (N >= 1); an agent's current load is counted "
            "by the engine from its leases and cannot be set").

%% @doc Agent `AgentId''s load as the engine counts it (see "Loads").
-spec get_agent_load(agent_id()) -> {ok, #{atom() => number()}} | error().
get_agent_load(AgentId) ->
    with_name(AgentId, "agent", fun(Id) -> call({load, Id}) end).

%% @doc How many tasks of `Type' wait in the queue (the demand a pool of that type reads).
-spec queued(agent_type()) -> {ok, non_neg_integer()} | error().
queued(Type) ->
    with_name(Type, "agent_type", fun(T) -> call({queued, T}) end).

%% @doc The registered agents: id, pid and type.
-spec agents() -> [{binary(), pid(), binary()}].
agents() ->
    case call(agents) of
        {error, _} -> [];
        List -> List
    end.

%% @doc The engine's counters (`queued', `leased', `completed', `dead_lettered',
%% `duplicates', `redeliveries', `steals', `expired', `agents_dead', `ledger_errors',
%% `agents') and `pending', the tasks whose result this server is still to send.
-spec stats() -> {ok, #{atom() => non_neg_integer()}} | error().
stats() ->
    call(stats).

%%--------------------------------------------------------------------------------------------
%% Tasks
%%--------------------------------------------------------------------------------------------

%% @doc `assign_task(default_type, Task, #{})'.
-spec assign_task(term()) -> {ok, task_id()} | error().
assign_task(Task) ->
    assign_task(default, Task, #{}).

%% @equiv assign_task(Type, Task, #{})
-spec assign_task(agent_type(), term()) -> {ok, task_id()} | error().
assign_task(Type, Task) ->
    assign_task(Type, Task, #{}).

%% @doc Submits `Task' for an agent of `Type'; see "Tasks and results".
-spec assign_task(agent_type(), term(), task_opts()) -> {ok, task_id()} | error().
assign_task(Type, Task, Opts) when is_map(Opts) ->
    Priority = maps:get(priority, Opts, normal),
    ReplyTo = maps:get(reply_to, Opts, self()),
    case maps:keys(maps:without([priority, reply_to], Opts)) of
        [_ | _] = Unknown ->
            invalid(io_lib:format("unknown task options ~0p (known: priority, reply_to)",
                                  [Unknown]));
        [] when not is_pid(ReplyTo) ->
            invalid("reply_to: expected a pid");
        [] when Priority =/= critical, Priority =/= high, Priority =/= normal,
                Priority =/= low ->
            invalid("priority: expected critical, high, normal or low");
        [] ->
            Envelope = term_to_binary({ReplyTo, Task}),
            case name_or_default(Type) of
                default ->
                    call({submit, default, Priority, ReplyTo, Envelope});
                T ->
                    with_name(T, "agent_type", fun(B) ->
                        call({submit, B, Priority, ReplyTo, Envelope})
                    end)
            end
    end;
assign_task(_Type, _Task, _Opts) ->
    invalid("task options: expected a map").

%% @doc From an agent: it began attempt `Attempt' of task `TaskId' (no answer; stale or
%% unknown attempts are ignored and counted by the engine).
-spec started(task_id(), non_neg_integer()) -> ok.
started(TaskId, Attempt) ->
    gen_server:cast(?SERVER, {started, TaskId, Attempt}).

%% @doc From an agent: the result of attempt `Attempt' of task `TaskId'. The first result of
%% a task is sent to its submitter; a later one while the task is pending (an older attempt
%% answering after a redelivery) is ignored by the engine: `ok' either way. Once the task has
%% ended (or for a task this server did not deliver: see "Restarts") the answer is
%% `{error, {not_found, _}}': nothing changes, and the agent may ignore it.
-spec ack(task_id(), non_neg_integer(), term()) -> ok | error().
ack(TaskId, Attempt, Result) ->
    call({ack, TaskId, Attempt, term_to_binary(Result)}).

%% @doc From an agent: attempt `Attempt' of task `TaskId' failed for `Reason' (any term, kept
%% as text): the task is delivered again, or dead-lettered after `max_attempts'.
-spec nack(task_id(), non_neg_integer(), term()) -> ok | error().
nack(TaskId, Attempt, Reason) ->
    Text = case Reason of
               B when is_binary(B) -> B;
               _ -> unicode:characters_to_binary(io_lib:format("~0tp", [Reason]))
           end,
    call({nack, TaskId, Attempt, binary:replace(Text, <<0>>, <<"\\0">>, [global])}).

%%--------------------------------------------------------------------------------------------
%% Agent loops
%%--------------------------------------------------------------------------------------------

%% @doc A process running `agent_loop(Handler)' (not registered: register it with
%% `register_agent/2', or use `spawn_agent/2').
-spec spawn_agent(handler()) -> pid().
spawn_agent(Handler) when is_function(Handler, 1); is_function(Handler, 2) ->
    spawn(fun() -> agent_loop(Handler) end).

%% @doc Spawns an agent process running `agent_loop(Handler)' and registers it as `AgentId'
%% with `Opts' (`type', `max_tasks'): `{ok, Pid}', or the registration's error (the process
%% is then stopped).
-spec spawn_agent(agent_id(), #{type => agent_type(), max_tasks => pos_integer(),
                                handler := handler()}) -> {ok, pid()} | error().
spawn_agent(AgentId, #{handler := Handler} = Opts)
  when is_function(Handler, 1); is_function(Handler, 2) ->
    Pid = spawn_agent(Handler),
    case register_agent(AgentId, maps:put(pid, Pid, maps:remove(handler, Opts))) of
        ok ->
            {ok, Pid};
        {error, _} = Error ->
            exit(Pid, kill),
            Error
    end;
spawn_agent(_AgentId, _Opts) ->
    invalid("agent options: expected a map with handler => fun/1 or fun/2").

%% @doc Runs an agent in the calling process, for ever: for each delivery (unless revoked
%% before it starts) `started', then `Handler(Payload)' (or `Handler(TaskId, Payload)'), then
%% `ack' with its value, or `nack' when it raised. A message `{erlmcp_flow_task, stop}' ends
%% it (normally).
-spec agent_loop(handler()) -> ok.
agent_loop(Handler) ->
    receive
        {erlmcp_flow_task, deliver, TaskId, Attempt, Payload} ->
            receive
                {erlmcp_flow_task, revoke, TaskId, Attempt} -> ok
            after 0 ->
                started(TaskId, Attempt),
                _ = try run(Handler, TaskId, Payload) of
                        Result -> ack(TaskId, Attempt, Result)
                    catch
                        Class:Reason -> nack(TaskId, Attempt, {Class, Reason})
                    end,
                ok
            end,
            agent_loop(Handler);
        {erlmcp_flow_task, revoke, _TaskId, _Attempt} ->
            agent_loop(Handler);
        {erlmcp_flow_task, stop} ->
            ok;
        _Other ->
            agent_loop(Handler)
    end.

run(Handler, _TaskId, Payload) when is_function(Handler, 1) -> Handler(Payload);
run(Handler, TaskId, Payload) -> Handler(TaskId, Payload).

%%--------------------------------------------------------------------------------------------
%% gen_server
%%--------------------------------------------------------------------------------------------

-record(agent, {pid :: pid(), type :: binary(), max_tasks :: pos_integer(),
                token :: pos_integer(), mon :: reference()}).

-record(state, {sched :: erlmcp_flow_nif:sched(),
                durable :: boolean(),
                tick_ms :: pos_integer(),
                default_type :: binary(),
                agents = #{} :: #{binary() => #agent{}},
                monitors = #{} :: #{reference() => binary()},
                %% Task id => {submitter, agent it was last delivered to (undefined: not yet)}.
                tasks = #{} :: #{task_id() => {pid() | undefined, binary() | undefined}}}).

%% @private
init({Sched, Durable, TickMs, DefaultType}) ->
    process_flag(trap_exit, true), % terminate/2 runs on a supervisor's shutdown
    persistent_term:put(?KEY, Sched),
    S0 = #state{sched = Sched, durable = Durable, tick_ms = TickMs,
                default_type = DefaultType},
    %% Agents a killed predecessor left, still alive, are registered again.
    Left = persistent_term:get(?AGENTS_KEY, #{}),
    S1 = maps:fold(fun(Id, {Pid, Type, Max}, Acc) ->
                           case node(Pid) =:= node() andalso is_process_alive(Pid) of
                               true ->
                                   {_, Acc1} = do_register(Id, Type, Max, Pid, Acc),
                                   Acc1;
                               false ->
                                   Acc
                           end
                   end, S0, Left),
    publish_agents(S1),
    _ = erlang:send_after(TickMs, self(), tick),
    {ok, drain(S1)}.

%% @private
handle_call({submit, Type0, Priority, ReplyTo, Envelope}, _From, S) ->
    Type = case Type0 of default -> S#state.default_type; _ -> Type0 end,
    case erlmcp_flow_nif:sched_submit(S#state.sched, Type, Priority, Envelope, now_us()) of
        {ok, Id} ->
            S1 = S#state{tasks = maps:put(Id, {ReplyTo, undefined}, S#state.tasks)},
            {reply, {ok, Id}, drain(S1)};
        {error, _} = Error ->
            {reply, Error, S}
    end;
handle_call({ack, TaskId, Attempt, Result}, _From, S) ->
    task_event(TaskId, S, fun(Agent) ->
        case erlmcp_flow_nif:sched_ack(S#state.sched, Agent, TaskId, Attempt, now_us(),
                                       Result) of
            {ok, _Duplicate} -> ok;
            {error, _} = Error -> Error
        end
    end);
handle_call({nack, TaskId, Attempt, Reason}, _From, S) ->
    task_event(TaskId, S, fun(Agent) ->
        case erlmcp_flow_nif:sched_nack(S#state.sched, Agent, TaskId, Attempt, now_us(),
                                        Reason) of
            {ok, _Current} -> ok;
            {error, _} = Error -> Error
        end
    end);
handle_call({register, Id, Type0, Max, Pid}, _From, S) ->
    Type = case Type0 of default -> S#state.default_type; _ -> Type0 end,
    {Reply, S1} = do_register(Id, Type, Max, Pid, S),
    publish_agents(S1),
    {reply, Reply, drain(S1)};
handle_call({unregister, Id}, _From, S) ->
    case erlmcp_flow_nif:sched_unregister_agent(S#state.sched, Id, now_us()) of
        ok ->
            S1 = forget(Id, S),
            publish_agents(S1),
            {reply, ok, drain(S1)};
        {error, _} = Error ->
            {reply, Error, S}
    end;
handle_call({update_load, Id, Max}, _From, #state{agents = Agents} = S) ->
    case Agents of
        #{Id := #agent{pid = Pid, type = Type}} ->
            {Reply, S1} = do_register(Id, Type, Max, Pid, S),
            publish_agents(S1),
            {reply, Reply, drain(S1)};
        _ ->
            {reply, not_found(Id), S}
    end;
handle_call({queued, Type}, _From, S) ->
    {reply, erlmcp_flow_nif:sched_queued(S#state.sched, Type), S};
handle_call({select, Type}, _From, S) ->
    {reply, erlmcp_flow_nif:sched_select_agent(S#state.sched, Type), S};
handle_call({load, Id}, _From, S) ->
    case erlmcp_flow_nif:sched_agent_load(S#state.sched, Id) of
        {ok, #{current_tasks := C, max_tasks := M} = L} ->
            {reply, {ok, L#{load => C / max(M, 1)}}, S};
        {error, _} = Error ->
            {reply, Error, S}
    end;
handle_call(agents, _From, #state{agents = Agents} = S) ->
    {reply, maps:fold(fun(Id, A, Acc) -> [{Id, A#agent.pid, A#agent.type} | Acc] end,
                      [], Agents), S};
handle_call(stats, _From, S) ->
    case erlmcp_flow_nif:sched_stats(S#state.sched) of
        {ok, Stats} -> {reply, {ok, Stats#{pending => map_size(S#state.tasks)}}, S};
        {error, _} = Error -> {reply, Error, S}
    end;
handle_call(_Request, _From, S) ->
    {reply, invalid("unknown request"), S}.

%% @private
handle_cast({started, TaskId, Attempt}, #state{tasks = Tasks} = S) ->
    case Tasks of
        #{TaskId := {_, Agent}} when is_binary(Agent) ->
            _ = erlmcp_flow_nif:sched_started(S#state.sched, Agent, TaskId, Attempt, now_us()),
            {noreply, drain(S)};
        _ ->
            {noreply, S}
    end;
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
handle_info(tick, #state{sched = Sched, tick_ms = TickMs} = S) ->
    ok = erlmcp_flow_nif:sched_tick(Sched, now_us()),
    _ = erlang:send_after(TickMs, self(), tick),
    {noreply, drain(S)};
handle_info({'DOWN', Mon, process, _Pid, _Reason}, #state{monitors = Mons} = S) ->
    case Mons of
        #{Mon := Id} ->
            _ = erlmcp_flow_nif:sched_agent_dead(S#state.sched, Id, now_us()),
            S1 = forget(Id, S),
            publish_agents(S1),
            {noreply, drain(S1)};
        _ ->
            {noreply, S}
    end;
handle_info(_Info, S) ->
    {noreply, S}.

%% @private
terminate(_Reason, #state{sched = Sched, durable = Durable, tasks = Tasks}) ->
    case persistent_term:get(?KEY, undefined) of
        Sched -> _ = persistent_term:erase(?KEY), ok;
        _ -> ok
    end,
    _ = persistent_term:erase(?AGENTS_KEY),
    _ = erlmcp_flow_nif:sched_close(Sched),
    %% A memory ledger's tasks end here: their submitters are told. A durable ledger keeps
    %% them for the next scheduler.
    case Durable of
        true ->
            ok;
        false ->
            maps:foreach(fun(Id, {ReplyTo, _}) ->
                                 notify(ReplyTo, Id, {dead_letter, <<"scheduler stopped">>})
                         end, Tasks)
    end.

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

start(Opts, How) when is_map(Opts) ->
    case check_options(Opts) of
        {ok, Ledger, Name, Dir, TickMs, DefaultType} ->
            case whereis(?SERVER) of
                undefined ->
                    %% A handle left published by a killed server is closed first, so that
                    %% its durable ledger can be opened again (and recovered).
                    case persistent_term:get(?KEY, undefined) of
                        undefined -> ok;
                        Old -> _ = erlmcp_flow_nif:sched_close(Old), ok
                    end,
                    EngineOpts = maps:merge(#{heartbeat_timeout_us => 0},
                                            maps:with(?ENGINE_KEYS, Opts)),
                    case erlmcp_flow_nif:sched_new(EngineOpts, Ledger, Name, Dir, now_us()) of
                        {ok, Sched} ->
                            Args = {Sched, Ledger =/= memory, TickMs, DefaultType},
                            case gen_server:How({local, ?SERVER}, ?MODULE, Args, []) of
                                {ok, _} = Ok ->
                                    Ok;
                                Other ->
                                    _ = erlmcp_flow_nif:sched_close(Sched),
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

check_options(Opts) ->
    case maps:keys(maps:without(?KEYS, Opts)) of
        [] ->
            TickMs = maps:get(tick_ms, Opts, 50),
            DefaultType = name(maps:get(default_type, Opts, <<"default">>)),
            case ledger(maps:get(ledger, Opts, memory)) of
                _ when not is_integer(TickMs); TickMs < 1 ->
                    invalid("tick_ms: expected a positive integer");
                _ when not is_binary(DefaultType) ->
                    invalid("default_type: expected a name (binary, atom or string)");
                {ok, Ledger, Name, Dir} ->
                    {ok, Ledger, Name, Dir, TickMs, DefaultType};
                {error, _} = Error ->
                    Error
            end;
        Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, ?KEYS]))
    end.

ledger(memory) -> {ok, memory, undefined, undefined};
ledger({shm, Name}) -> ledger({shm, Name, undefined});
ledger({shm, Name, Dir}) ->
    case {path(Name), Dir =:= undefined orelse path(Dir)} of
        {N, D} when is_binary(N), (D =:= true orelse is_binary(D)) ->
            {ok, shm, N, case D of true -> undefined; _ -> D end};
        _ ->
            invalid("ledger: {shm, Name} or {shm, Name, Dir} with names as binaries or strings")
    end;
ledger({file, Path}) ->
    case path(Path) of
        P when is_binary(P) -> {ok, file, P, undefined};
        _ -> invalid("ledger: {file, Path} with a path as a binary or string")
    end;
ledger(_) ->
    invalid("ledger: expected memory, {shm, Name}, {shm, Name, Dir} or {file, Path}").

%% Registers (or registers again) agent Id; monitors Pid once per registration.
do_register(Id, Type, Max, Pid, #state{agents = Agents} = S) ->
    Token = case Agents of
                #{Id := #agent{pid = Pid, type = Type, token = T}} -> T;
                _ -> erlang:unique_integer([positive])
            end,
    case erlmcp_flow_nif:sched_register_agent(S#state.sched, Id, Type, Max, Token, now_us()) of
        ok ->
            S1 = case Agents of
                     #{Id := #agent{pid = Pid, token = Token} = A} ->
                         S#state{agents = Agents#{Id := A#agent{max_tasks = Max}}};
                     _ ->
                         S0 = forget(Id, S),
                         Mon = erlang:monitor(process, Pid),
                         A = #agent{pid = Pid, type = Type, max_tasks = Max, token = Token,
                                    mon = Mon},
                         S0#state{agents = maps:put(Id, A, S0#state.agents),
                                  monitors = maps:put(Mon, Id, S0#state.monitors)}
                 end,
            {ok, S1};
        {error, _} = Error ->
            {Error, S}
    end.

forget(Id, #state{agents = Agents, monitors = Mons} = S) ->
    case Agents of
        #{Id := #agent{mon = Mon}} ->
            erlang:demonitor(Mon, [flush]),
            S#state{agents = maps:remove(Id, Agents), monitors = maps:remove(Mon, Mons)};
        _ ->
            S
    end.

publish_agents(#state{agents = Agents}) ->
    persistent_term:put(?AGENTS_KEY,
                        maps:map(fun(_, #agent{pid = P, type = T, max_tasks = M}) ->
                                         {P, T, M}
                                 end, Agents)).

%% An answer from an agent about a task this server delivered: the event is given the agent
%% the task was last delivered to (the engine accepts a result from any agent while the task
%% has not ended, and ignores stale attempts).
task_event(TaskId, #state{tasks = Tasks} = S, Event) ->
    case Tasks of
        #{TaskId := {_, Agent}} when is_binary(Agent) ->
            Reply = Event(Agent),
            {reply, Reply, drain(S)};
        _ when is_integer(TaskId), TaskId > 0 ->
            {reply, {error, {not_found, iolist_to_binary(
                                          io_lib:format("task ~b: not delivered by this "
                                                        "scheduler (ended, unknown, or "
                                                        "recovered after a restart and not "
                                                        "delivered again yet)", [TaskId]))}},
             S};
        _ ->
            {reply, invalid("task: expected a task id (a positive integer)"), S}
    end.

%% Carries out every pending action of the engine.
drain(S) ->
    case erlmcp_flow_nif:sched_poll(S#state.sched, ?POLL_MAX) of
        {ok, Actions, More} ->
            S1 = lists:foldl(fun act/2, S, Actions),
            case More of
                true -> drain(S1);
                false -> S1
            end;
        {error, Reason} ->
            logger:error("erlmcp_flow_scheduler: polling actions failed: ~0p", [Reason]),
            S
    end.

act({deliver, Agent, TaskId, Attempt, _Deadline, Data}, #state{agents = Agents} = S) ->
    {ReplyTo, Payload} = envelope(Data),
    Tasks = maps:put(TaskId, {ReplyTo, Agent}, S#state.tasks),
    case Agents of
        #{Agent := #agent{pid = Pid}} ->
            Pid ! {erlmcp_flow_task, deliver, TaskId, Attempt, Payload},
            S#state{tasks = Tasks};
        _ ->
            %% Registered with the engine by no process of ours (cannot happen: agents are
            %% registered through this server). Reported as a failed attempt, never dropped.
            _ = erlmcp_flow_nif:sched_nack(S#state.sched, Agent, TaskId, Attempt, now_us(),
                                           <<"no process for this agent">>),
            S#state{tasks = Tasks}
    end;
act({revoke, Agent, TaskId, Attempt}, #state{agents = Agents} = S) ->
    _ = case Agents of
        #{Agent := #agent{pid = Pid}} -> Pid ! {erlmcp_flow_task, revoke, TaskId, Attempt};
        _ -> ok
    end,
    S;
act({result, TaskId, Data}, S) ->
    Result = try binary_to_term(Data, [safe]) of
                 R -> {ok, R}
             catch
                 error:badarg -> {dead_letter, <<"the result could not be decoded safely">>}
             end,
    finish(TaskId, Result, S);
act({dead_letter, TaskId, Reason}, S) ->
    finish(TaskId, {dead_letter, Reason}, S).

finish(TaskId, Outcome, #state{tasks = Tasks} = S) ->
    case maps:take(TaskId, Tasks) of
        {{ReplyTo, _}, Rest} ->
            notify(ReplyTo, TaskId, Outcome),
            S#state{tasks = Rest};
        error ->
            logger:warning("erlmcp_flow_scheduler: task ~b ended (~0p) with no known "
                           "submitter", [TaskId, element(1, Outcome)]),
            S
    end.

notify(ReplyTo, TaskId, Outcome) when is_pid(ReplyTo) ->
    ReplyTo ! {erlmcp_flow_task, TaskId, Outcome},
    ok;
notify(_ReplyTo, _TaskId, _Outcome) ->
    ok.

%% A task's ledger payload: {Submitter, Task} as assign_task/3 encoded it; a payload submitted
%% by another host (a shared ledger) is delivered as the binary it is, with no submitter.
envelope(Data) ->
    try binary_to_term(Data, [safe]) of
        {ReplyTo, Payload} when is_pid(ReplyTo) -> {ReplyTo, Payload};
        _ -> {undefined, Data}
    catch
        error:badarg -> {undefined, Data}
    end.

%% µs since the VM started: non-negative, monotonic.
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
    {error, {closed, <<"erlmcp_flow_scheduler: the scheduler is not running">>}}.

not_found(Id) ->
    {error, {not_found, <<"agent ", Id/binary, " is not registered">>}}.

with_name(Name, What, Fun) ->
    case name(Name) of
        B when is_binary(B) -> Fun(B);
        _ -> invalid(io_lib:format("~s: expected a name (binary, atom or string)", [What]))
    end.

name_or_default(default) -> default;
name_or_default(Name) -> name(Name).

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

path(P) -> name(P).

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

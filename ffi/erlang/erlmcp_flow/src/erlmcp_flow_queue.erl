%% @doc The task queue of the original design (`max_primary' 1000, `max_overflow' 10000) over
%% the engine's `emf_task_queue_*': four priorities, dequeue by priority and FIFO within a
%% priority, back-pressure, and answers that say what happened to every task.
%%
%% ```
%% {ok, _} = erlmcp_flow_queue:start_link(),                 % the node's default queue
%% ok = erlmcp_flow_queue:enqueue({job, 1}),                 % normal priority
%% ok = erlmcp_flow_queue:enqueue({job, 2}, critical),
%% {ok, {job, 2}, critical} = erlmcp_flow_queue:dequeue(),
%% {ok, {job, 1}, normal} = erlmcp_flow_queue:dequeue(100),  % waits up to 100 ms
%% empty = erlmcp_flow_queue:dequeue(),
%% {ok, #{depth := 0}} = erlmcp_flow_queue:stats(),
%% {ok, []} = erlmcp_flow_queue:stop().                      % hands back the tasks left
%% '''
%%
%% <h3>Tasks and answers</h3>
%% A task is any term, stored as its `term_to_binary' encoding (a copy: a pid or a reference
%% in it stays valid, a large binary is copied). `enqueue' answers:
%% <ul>
%% <li>`ok': queued in the primary queue (fewer than `max_primary' tasks were queued);</li>
%% <li>`backpressure': queued in the overflow (up to `max_overflow' more): slow down;</li>
%% <li>`{rejected, Task}': both are full: the task was not queued and is handed back;</li>
%% <li>`{evicted, Evicted, EvictedPriority}' (drop policy `low_priority' only): both are full
%%     and the task was queued by evicting the newest task of the lowest priority below its
%%     own, which is handed back.</li>
%% </ul>
%% No task disappears silently: each one is queued, handed back, or returned by `close/1'
%% (or `stop/0'). Only a queue handle that is garbage collected drops what it holds.
%%
%% <h3>The original design's calls and ours</h3>
%% <ul>
%% <li>`enqueue(Task) -> ok | ...': as written. The original answers `ok', `{backpressure}'
%% (queued in the overflow) or `{dropped}' (the task is lost); ours answer `ok',
%% `backpressure' (the atom: queued in the overflow, slow down), and in place of
%% `{dropped}' either `{rejected, Task}' (not queued, handed back) or, with the drop policy
%% `low_priority', `{evicted, Evicted, EvictedPriority}' (queued; another task was evicted
%% and is handed back). Nothing is lost.</li>
%% <li>`start_link(#{max_primary => 10000})': as written (`{ok, Pid}', the default queue's
%% server).</li>
%% <li>`enqueue(Task, Queue)', the queue second, as the original's benchmark calls it: our
%% `enqueue/2' is `(Task, Priority)', and takes a queue there too, told apart from a
%% priority (an atom): a queue handle (`new/0,1', `queue/0') or the pid of the default
%% queue's server (what `start_link/0,1' answered) queue `Task' at `normal' priority;
%% any other pid is `{error, {invalid_argument, _}}'. `enqueue/3' is
%% `(Queue, Task, Priority)', the queue first.</li>
%% </ul>
%%
%% `dequeue' returns `{ok, Task, Priority}' (the oldest task of the highest priority queued:
%% `critical', then `high', `normal', `low') or `empty'. `dequeue(Timeout)' and
%% `dequeue(Queue, Timeout)' wait up to `Timeout' ms (or `infinity') for a task. The engine's
%% task queue has no wait primitive, so they poll: again after 1 ms, doubling to at most 8 ms
%% between tries (a task enqueued meanwhile waits at most that long).
%%
%% <h3>Queues</h3>
%% The functions without a queue argument use the node's default queue, started with
%% `start_link/0,1' (a gen_server registered as `erlmcp_flow_queue', to put under a
%% supervisor). The server only owns the queue: it publishes the handle with `persistent_term'
%% and every call goes straight to the engine from the calling process (the engine's queue is
%% thread-safe), never through the server. `stop/0' closes the default queue and hands back the
%% tasks left; any other termination of the server (a supervisor's shutdown: it traps exits)
%% closes it too and logs a warning with the number of tasks dropped. A server killed
%% outright leaves its queue published and in use; the next server started takes it over,
%% tasks and limits included. When no default queue runs, its functions return
%% `{error, {closed, _}}'.
%%
%% `new/0,1' makes a queue of your own: a thread-safe handle for `enqueue/3', `dequeue/1,2',
%% `stats/1' and `close/1' from any process, freed when garbage collected.
%%
%% <h3>Errors</h3>
%% Bad priorities, options and timeouts give `{error, {invalid_argument, Message}}' (never an
%% exception); a closed queue gives `{error, {closed, _}}'. A task of 64 KiB or more (encoded)
%% is enqueued on a dirty CPU scheduler; dequeued ones of that size are not copied (binaries
%% over the engine's buffer).
-module(erlmcp_flow_queue).
-behaviour(gen_server).

-export([start_link/0, start_link/1, start/0, start/1, stop/0,
         new/0, new/1, close/1, queue/0,
         enqueue/1, enqueue/2, enqueue/3, dequeue/0, dequeue/1, dequeue/2, stats/0, stats/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([queue/0, options/0, priority/0, enqueue_result/0, stats/0]).

-type queue() :: erlmcp_flow_nif:task_queue().
-type options() :: #{max_primary => pos_integer(),
                     max_overflow => non_neg_integer(),
                     drop_policy => none | low_priority}.
%% `max_primary': tasks in the primary queue (1000); `max_overflow': tasks in the overflow
%% beyond it (10000; 0: none); `drop_policy': what a full queue does with an arrival: `none'
%% (default) rejects it, `low_priority' lets it evict the newest task of the lowest priority
%% below its own (an arrival of that lowest priority, or when nothing lower is queued, is
%% rejected).
-type priority() :: critical | high | normal | low.
-type enqueue_result() :: ok | backpressure | {rejected, term()}
                        | {evicted, term(), priority()}.
-type stats() :: #{depth := non_neg_integer(),
                   primary_depth := non_neg_integer(),
                   overflow_depth := non_neg_integer(),
                   depth_p99 := non_neg_integer(),
                   max_depth := non_neg_integer(),
                   enqueued := non_neg_integer(),
                   dequeued := non_neg_integer(),
                   spills := non_neg_integer(),
                   rejections := non_neg_integer(),
                   evictions := non_neg_integer()}.
%% `depth' tasks queued now, of which `primary_depth' in the primary queue and
%% `overflow_depth' in the overflow; `depth_p99' the 99th percentile and `max_depth' the
%% largest of the depths seen after each enqueue; tasks `enqueued' (accepted, evicting ones
%% included), `dequeued' (closing counts too), `spills' (accepted into the overflow:
%% `backpressure' answers), `rejections', `evictions'.
-type error() :: erlmcp_flow_nif:error().

-define(SERVER, ?MODULE).
-define(KEY, {?MODULE, queue}).
-define(KEYS, [max_primary, max_overflow, drop_policy]).
-define(DEFAULTS, #{max_primary => 1000, max_overflow => 10000, drop_policy => none}).
%% emf_task_queue_new reads this max_overflow as "the default"; every value below is taken
%% as is.
-define(OVERFLOW_DEFAULT_SENTINEL, 16#FFFFFFFFFFFFFFFF).
-define(MAX_POLL_MS, 8).

%%--------------------------------------------------------------------------------------------
%% The default queue
%%--------------------------------------------------------------------------------------------

%% @equiv start_link(#{})
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    start_link(#{}).

%% @doc Starts the default queue's server, linked to the caller, registered as
%% `erlmcp_flow_queue'. The queue is made with `Opts' (see `new/1'), unless a server killed
%% earlier left its queue published: that one is taken over.
-spec start_link(options()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    start(Opts, start_link).

%% @equiv start(#{})
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    start(#{}).

%% @doc As `start_link/1', without a link.
-spec start(options()) -> {ok, pid()} | {error, term()}.
start(Opts) ->
    start(Opts, start).

%% @doc Closes the default queue and stops its server: `{ok, Tasks}', the tasks that were
%% still queued, as `{Task, Priority}' in dequeue order (calls that come later get
%% `{error, {closed, _}}').
-spec stop() -> {ok, [{term(), priority()}]} | error().
stop() ->
    try
        gen_server:call(?SERVER, stop, infinity)
    catch
        exit:{Reason, {gen_server, call, _}} when Reason =:= noproc; Reason =:= normal;
                                                   Reason =:= shutdown;
                                                   element(1, Reason) =:= shutdown ->
            not_running()
    end.

%% @doc The default queue's handle, for the functions taking a queue.
-spec queue() -> {ok, queue()} | error().
queue() ->
    with_default(fun(Queue) -> {ok, Queue} end).

%% @equiv enqueue(Task, normal)
-spec enqueue(term()) -> enqueue_result() | error().
enqueue(Task) ->
    enqueue(Task, normal).

%% @doc Queues `Task' at `Priority' in the default queue (see `enqueue/3'). The original
%% design's `enqueue(Task, Queue)': with a queue handle, or the default queue server's pid,
%% in place of `Priority', queues `Task' there at `normal' priority.
-spec enqueue(term(), priority() | queue() | pid()) -> enqueue_result() | error().
enqueue(Task, Pid) when is_pid(Pid) ->
    case whereis(?SERVER) of
        Pid ->
            enqueue(Task, normal);
        _ ->
            invalid(io_lib:format("queue: ~p is not the default queue's server (~s)",
                                  [Pid, ?SERVER]))
    end;
enqueue(Task, Priority) when is_atom(Priority) ->
    with_default(fun(Queue) -> enqueue(Queue, Task, Priority) end);
enqueue(Task, Queue) ->
    %% Not a priority: a queue handle (the NIF refuses anything else).
    enqueue(Queue, Task, normal).

%% @doc Takes the next task of the default queue: `{ok, Task, Priority}' or `empty'.
-spec dequeue() -> {ok, term(), priority()} | empty | error().
dequeue() ->
    with_default(fun dequeue/1).

%% @doc `dequeue(Queue)' takes the next task of `Queue' (a handle) without waiting;
%% `dequeue(Timeout)' takes the next task of the default queue, waiting up to `Timeout' ms
%% (`infinity': until one comes).
-spec dequeue(queue() | timeout()) -> {ok, term(), priority()} | empty | error().
dequeue(Timeout) when is_integer(Timeout); Timeout =:= infinity ->
    with_default(fun(Queue) -> dequeue(Queue, Timeout) end);
dequeue(Queue) ->
    decode(erlmcp_flow_nif:queue_dequeue(Queue)).

%% @doc The default queue's counters.
-spec stats() -> {ok, stats()} | error().
stats() ->
    with_default(fun stats/1).

%%--------------------------------------------------------------------------------------------
%% Queues of your own
%%--------------------------------------------------------------------------------------------

%% @equiv new(#{})
-spec new() -> {ok, queue()} | error().
new() ->
    new(#{}).

%% @doc A new queue: a thread-safe handle usable from any process, freed (with the tasks it
%% still holds) when garbage collected; `close/1' hands them back instead.
-spec new(options()) -> {ok, queue()} | error().
new(Opts) when is_map(Opts) ->
    case maps:keys(maps:without(?KEYS, Opts)) of
        [] ->
            #{max_primary := Primary, max_overflow := Overflow, drop_policy := Drop} =
                maps:merge(?DEFAULTS, Opts),
            if
                not (is_integer(Primary) andalso Primary > 0
                     andalso Primary =< 16#FFFFFFFFFFFFFFFF) ->
                    invalid("max_primary: expected a positive 64-bit integer");
                not (is_integer(Overflow) andalso Overflow >= 0
                     andalso Overflow < ?OVERFLOW_DEFAULT_SENTINEL) ->
                    invalid("max_overflow: expected a non-negative integer below 2^64 - 1");
                Drop =/= none, Drop =/= low_priority ->
                    invalid("drop_policy: expected none or low_priority");
                true ->
                    erlmcp_flow_nif:queue_new(Primary, Overflow, Drop)
            end;
        Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, ?KEYS]))
    end;
new(_Opts) ->
    invalid("options: expected a map").

%% @doc Queues `Task' at `Priority' (`critical', `high', `normal' or `low'): `ok',
%% `backpressure', `{rejected, Task}' or `{evicted, EvictedTask, EvictedPriority}'.
-spec enqueue(queue(), term(), priority()) -> enqueue_result() | error().
enqueue(Queue, Task, Priority) ->
    case erlmcp_flow_nif:queue_enqueue(Queue, term_to_binary(Task), Priority) of
        ok -> ok;
        backpressure -> backpressure;
        rejected -> {rejected, Task};
        {evicted, Bin, EvictedPriority} -> {evicted, binary_to_term(Bin), EvictedPriority};
        {error, _} = Error -> Error
    end.

%% @doc Takes the next task of `Queue', waiting up to `Timeout' ms (`infinity': until one
%% comes) by polling (see the module documentation): `{ok, Task, Priority}' or `empty'.
-spec dequeue(queue(), timeout()) -> {ok, term(), priority()} | empty | error().
dequeue(Queue, infinity) ->
    poll(Queue, infinity, 1);
dequeue(Queue, Timeout) when is_integer(Timeout), Timeout >= 0 ->
    poll(Queue, erlang:monotonic_time(millisecond) + Timeout, 1);
dequeue(_Queue, _Timeout) ->
    invalid("timeout: expected a non-negative integer (ms) or infinity").

%% @doc `Queue''s counters.
-spec stats(queue()) -> {ok, stats()} | error().
stats(Queue) ->
    erlmcp_flow_nif:queue_stats(Queue).

%% @doc Closes `Queue' and frees it: `{ok, Tasks}', the tasks it held as `{Task, Priority}' in
%% dequeue order. Every later call with it gets `{error, {closed, _}}' (a task it refuses is
%% still the caller's), and so does a second `close/1'.
-spec close(queue()) -> {ok, [{term(), priority()}]} | error().
close(Queue) ->
    case erlmcp_flow_nif:queue_close(Queue) of
        {ok, Tasks} -> {ok, [{binary_to_term(Bin), P} || {Bin, P} <- Tasks]};
        {error, _} = Error -> Error
    end.

%%--------------------------------------------------------------------------------------------
%% gen_server
%%--------------------------------------------------------------------------------------------

%% @private
init(New) ->
    process_flag(trap_exit, true), % terminate/2 closes the queue on shutdown
    Queue = case persistent_term:get(?KEY, undefined) of
                undefined ->
                    New;
                Old ->
                    %% Left by a server that was killed: take it over with its tasks.
                    case erlmcp_flow_nif:queue_stats(Old) of
                        {ok, #{depth := Depth}} ->
                            logger:notice("~p ~p: took over the default queue of a server that "
                                          "was killed (~b task(s) queued)",
                                          [?MODULE, self(), Depth]),
                            Old;
                        {error, _} ->
                            New % closed, or made by an earlier load of the NIF library
                    end
            end,
    persistent_term:put(?KEY, Queue),
    {ok, Queue}.

%% @private
handle_call(stop, _From, Queue) ->
    {stop, normal, close_default(Queue), closed};
handle_call(_Request, _From, S) ->
    {reply, invalid("unknown request"), S}.

%% @private
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
handle_info(_Info, S) ->
    %% Exit signals of linked processes other than the parent.
    {noreply, S}.

%% @private
terminate(_Reason, closed) ->
    ok;
terminate(_Reason, Queue) ->
    case close_default(Queue) of
        {ok, []} ->
            ok;
        {ok, Tasks} ->
            logger:warning("~p ~p: ~b task(s) were still queued and are dropped",
                           [?MODULE, self(), length(Tasks)]);
        {error, Reason} ->
            logger:warning("~p ~p: closing the queue failed: ~0p", [?MODULE, self(), Reason])
    end.

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

start(Opts, How) ->
    %% The queue is made here, so that a bad option is an error of this call rather than the
    %% crash of a linked server; the server owns it from now on.
    case new(Opts) of
        {ok, Queue} -> gen_server:How({local, ?SERVER}, ?MODULE, Queue, []);
        {error, _} = Error -> Error
    end.

%% Unpublishes the default queue (new calls get closed), then closes it: a call that read the
%% handle before is either in the list returned or refused.
close_default(Queue) ->
    case persistent_term:get(?KEY, undefined) of
        Queue -> persistent_term:erase(?KEY);
        _ -> ok
    end,
    close(Queue).

with_default(Fun) ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> not_running();
        Queue -> Fun(Queue)
    end.

not_running() ->
    {error, {closed, <<"erlmcp_flow_queue: the default queue is not running "
                       "(erlmcp_flow_queue:start_link/0,1)">>}}.

poll(Queue, Deadline, Wait) ->
    case dequeue(Queue) of
        empty ->
            case Deadline of
                infinity ->
                    sleep(Wait),
                    poll(Queue, Deadline, min(Wait * 2, ?MAX_POLL_MS));
                _ ->
                    case Deadline - erlang:monotonic_time(millisecond) of
                        Left when Left > 0 ->
                            sleep(min(Wait, Left)),
                            poll(Queue, Deadline, min(Wait * 2, ?MAX_POLL_MS));
                        _ ->
                            empty
                    end
            end;
        Other ->
            Other
    end.

sleep(Ms) ->
    receive after Ms -> ok end.

decode({ok, Bin, Priority}) -> {ok, binary_to_term(Bin), Priority};
decode(Other) -> Other.

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

%% @doc The batch processor of the original design (`batch_size' 100, `batch_timeout' 10 ms)
%% over a ring (the engine's `emf_batch_*'), as a gen_server.
%%
%% Messages sent with `send_message/1,2' are collected and written to the ring as one batch
%% through the processor's own producer. The engine decides when: on size (`batch_size'
%% pending), at once when the ring's consumer is idle (it has read everything, or waits for
%% frames: batching then adds no latency), on demand (`flush_batch/0,1'), and on timeout (the
%% oldest pending message has waited `batch_timeout' ms: the server arms a timer from the
%% engine's due time and calls `emf_batch_tick').
%%
%% ```
%% {ok, _} = erlmcp_flow_batch_processor:start_link(<<"jobs">>),   % an existing ring
%% ok = erlmcp_flow_batch_processor:send_message(<<"job 1">>),
%% {ok, _Sent} = erlmcp_flow_batch_processor:flush_batch(),
%% ok = erlmcp_flow_batch_processor:stop().
%% '''
%%
%% <h3>Back-pressure</h3>
%% When the ring is full, pending messages stay queued, in order, and go out with a later
%% flush. Once `max_pending' messages wait, `send_message' answers `{error, {full, _}}': that
%% message was not queued and is still the caller's. `flush_batch' answers
%% `{partial, Sent, Pending}' when the ring could not take everything.
%%
%% <h3>Ownership and the end</h3>
%% The engine processor is a one-thread-at-a-time object owned by this server; every call goes
%% through it. `stop/0,1' flushes, waiting up to `drain_timeout' ms (1000) for the consumer to
%% make room, then frees the processor: `ok' when everything was sent, `{discarded, N}' when
%% `N' messages could not be sent and were dropped. The server traps exits: any other
%% termination (a supervisor's shutdown) does the same in `terminate/2' and logs a warning for
%% discarded messages.
%%
%% <h3>A killed server</h3>
%% A registered server (the default, and the `erlmcp_flow' application's) publishes its engine
%% processor with `persistent_term'. Killed outright (`exit(Pid, kill)', `brutal_kill'), it
%% runs no `terminate/2': the processor stays published, with the messages it accepted but did
%% not write yet. The next server started under that name for the same ring (its supervisor's
%% restart) adopts it, pending messages included, and writes them with the next flush (on
%% size, on an idle consumer, on demand, or its timeout timer, armed at once): nothing is
%% lost. A server of that name started for another ring does not adopt it: the left processor
%% is flushed into its own ring and freed, and what it still could not send (its ring full) is
%% discarded with a logged warning. Until a successor starts, the left processor keeps its
%% producer slot in the ring; the application's stop releases it the same way. An anonymous
%% server (`name => undefined') publishes nothing: killed, its processor goes to the garbage
%% collector, which sends what fits and drops the rest without a report.
-module(erlmcp_flow_batch_processor).
-behaviour(gen_server).

-export([start_link/1, start_link/2, start/1, start/2, stop/0, stop/1,
         send_message/1, send_message/2, flush_batch/0, flush_batch/1, stats/0, stats/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).
-export([release_left/1]).

-export_type([options/0, server/0, stats/0]).

-type options() :: #{name => {local, atom()} | {global, term()} | {via, module(), term()}
                             | undefined,
                     dir => file:filename_all(),
                     batch_size => pos_integer(),
                     batch_timeout => pos_integer(),
                     max_pending => pos_integer(),
                     drain_timeout => non_neg_integer()}.
%% `name': registration (`{local, erlmcp_flow_batch_processor}'; `undefined': none); `dir':
%% directory of the ring when it is given by name (/dev/shm); `batch_size' (100);
%% `batch_timeout' in ms (10); `max_pending' messages before `{error, {full, _}}' (10000);
%% `drain_timeout': ms that stopping waits for room in the ring (1000).
-type server() :: pid() | atom() | {global, term()} | {via, module(), term()}.
-type stats() :: #{pending := non_neg_integer(),
                   due_ms := non_neg_integer() | infinity,
                   flush_size := non_neg_integer(),
                   flush_timeout := non_neg_integer(),
                   flush_idle := non_neg_integer(),
                   flush_demand := non_neg_integer(),
                   refused := non_neg_integer()}.
%% `pending' messages, `due_ms' until the timeout flush (`infinity': nothing pending), flushes
%% by reason (a flush may have sent nothing when the ring was full), messages `refused'
%% with `{error, {full, _}}'.
-type error() :: erlmcp_flow_nif:error().

-define(SERVER, ?MODULE).
-define(ADOPT_WAIT_MS, 5000).
-define(KEYS, [name, dir, batch_size, batch_timeout, max_pending, drain_timeout]).
-define(DEFAULTS, #{batch_size => 100, batch_timeout => 10, max_pending => 10000,
                    drain_timeout => 1000}).

%%--------------------------------------------------------------------------------------------
%% API
%%--------------------------------------------------------------------------------------------

%% @equiv start_link(Ring, #{})
-spec start_link(erlmcp_flow_ring:name() | erlmcp_flow_nif:ring()) ->
          {ok, pid()} | {error, term()}.
start_link(Ring) ->
    start_link(Ring, #{}).

%% @doc Starts a processor, linked to the caller, over `Ring': the name of an existing ring
%% (in `dir') or a ring handle. Registered as `erlmcp_flow_batch_processor' unless `name'
%% says otherwise. The ring must accept one more producer, unless the server adopts the
%% processor a killed server of the same name left for the same ring (see the module
%% documentation).
-spec start_link(erlmcp_flow_ring:name() | erlmcp_flow_nif:ring(), options()) ->
          {ok, pid()} | {error, term()}.
start_link(Ring, Opts) ->
    start(Ring, Opts, start_link).

%% @equiv start(Ring, #{})
-spec start(erlmcp_flow_ring:name() | erlmcp_flow_nif:ring()) -> {ok, pid()} | {error, term()}.
start(Ring) ->
    start(Ring, #{}).

%% @doc As `start_link/2', without a link.
-spec start(erlmcp_flow_ring:name() | erlmcp_flow_nif:ring(), options()) ->
          {ok, pid()} | {error, term()}.
start(Ring, Opts) ->
    start(Ring, Opts, start).

%% @equiv stop(erlmcp_flow_batch_processor)
-spec stop() -> ok | {discarded, pos_integer()} | error().
stop() ->
    stop(?SERVER).

%% @doc Flushes (waiting up to `drain_timeout' for room), frees the processor and stops the
%% server: `ok', or `{discarded, N}' when `N' messages could not be sent.
-spec stop(server()) -> ok | {discarded, pos_integer()} | error().
stop(Server) ->
    call(Server, stop).

%% @equiv send_message(erlmcp_flow_batch_processor, Message)
-spec send_message(iodata()) -> ok | error().
send_message(Message) ->
    send_message(?SERVER, Message).

%% @doc Queues `Message' (the engine flushes on size or an idle consumer). `{error, {full, _}}'
%% when `max_pending' messages are waiting: `Message' was not queued; `{error, {too_large, _}}'
%% past the ring's largest frame.
-spec send_message(server(), iodata()) -> ok | error().
send_message(Server, Message) ->
    call(Server, {send, Message}).

%% @equiv flush_batch(erlmcp_flow_batch_processor)
-spec flush_batch() -> {ok, non_neg_integer()} | {partial, non_neg_integer(), pos_integer()}
                           | error().
flush_batch() ->
    flush_batch(?SERVER).

%% @doc Sends everything pending that fits: `{ok, Sent}', or `{partial, Sent, Pending}' when
%% `Pending' messages are still queued (the ring is full).
-spec flush_batch(server()) -> {ok, non_neg_integer()}
                                   | {partial, non_neg_integer(), pos_integer()}
                                   | error().
flush_batch(Server) ->
    call(Server, flush).

%% @equiv stats(erlmcp_flow_batch_processor)
-spec stats() -> {ok, stats()} | error().
stats() ->
    stats(?SERVER).

%% @doc Pending messages and flush counters.
-spec stats(server()) -> {ok, stats()} | error().
stats(Server) ->
    call(Server, stats).

%%--------------------------------------------------------------------------------------------
%% gen_server
%%--------------------------------------------------------------------------------------------

-record(state, {batch :: erlmcp_flow_nif:batch() | closed,
                timeout_ms :: pos_integer(),
                drain_ms :: non_neg_integer(),
                %% The timer of the next emf_batch_tick; it never fires after the timeout
                %% flush is due (see arm/3).
                timer :: reference() | undefined,
                %% The persistent_term key under which a registered server publishes its
                %% engine processor, for a successor to adopt when this one is killed
                %% (undefined: an anonymous server publishes nothing).
                key :: {module(), term()} | undefined,
                counters = #{flush_size => 0, flush_timeout => 0, flush_idle => 0,
                             flush_demand => 0, refused => 0} :: map()}).

%% @private
init({Made, #{batch_timeout := TimeoutMs, drain_timeout := DrainMs}, Key, Target}) ->
    process_flag(trap_exit, true), % terminate/2 flushes on shutdown
    Batch = case Made of
                {adopt, Old, Pending} ->
                    logger:notice("~p ~p: took over the processor of a server that was "
                                  "killed (~b message(s) pending)", [?MODULE, self(), Pending]),
                    Old;
                {new, New} ->
                    New
            end,
    Key =:= undefined orelse persistent_term:put(Key, {Batch, Target}),
    S = #state{batch = Batch, timeout_ms = TimeoutMs, drain_ms = DrainMs, key = Key},
    %% An adopted processor may hold pending messages: make sure a tick sends them.
    {ok, rearm(S)}.

%% @private
handle_call({send, Message}, _From, #state{batch = B} = S) ->
    case erlmcp_flow_nif:batch_send(B, Message) of
        {ok, Flush, Pending, Due} ->
            {reply, ok, arm(Pending, Due, count(Flush, S))};
        {error, {full, _}} = Error ->
            {reply, Error, rearm(bump(refused, S))};
        {error, _} = Error ->
            {reply, Error, S}
    end;
handle_call(flush, _From, #state{batch = B} = S) ->
    case erlmcp_flow_nif:batch_flush(B) of
        {ok, Sent, 0, _Due} ->
            {reply, {ok, Sent}, count(demand, S)};
        {ok, Sent, Pending, Due} ->
            {reply, {partial, Sent, Pending}, arm(Pending, Due, count(demand, S))};
        {error, _} = Error ->
            {reply, Error, S}
    end;
handle_call(stats, _From, #state{batch = B, counters = C} = S) ->
    case erlmcp_flow_nif:batch_pending(B) of
        {ok, Pending, Due} ->
            DueMs = if Due < 0 -> infinity; true -> Due end,
            {reply, {ok, C#{pending => Pending, due_ms => DueMs}}, S};
        {error, _} = Error ->
            {reply, Error, S}
    end;
handle_call(stop, _From, S) ->
    unpublish(S),
    Result = close(S),
    {stop, normal, Result, S#state{batch = closed}};
handle_call(_Request, _From, S) ->
    {reply, {error, {invalid_argument, <<"unknown request">>}}, S}.

%% @private
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
handle_info({timeout, Timer, tick}, #state{timer = Timer, batch = B, timeout_ms = T} = S0) ->
    S = S0#state{timer = undefined},
    case erlmcp_flow_nif:batch_tick(B) of
        {ok, timeout, Pending, _Due} when Pending > 0 ->
            %% Overdue and the ring is full: retry a batch timeout later (not in a loop).
            {noreply, start_timer(T, count(timeout, S))};
        {ok, Flush, Pending, Due} ->
            %% Not due yet (the batch the timer was armed for was flushed, or the due time
            %% was rounded down to whole milliseconds): wait for the new due time.
            {noreply, arm(Pending, max(Due, 1), count(Flush, S))};
        {error, Reason} ->
            logger:warning("~p ~p: emf_batch_tick failed: ~0p", [?MODULE, self(), Reason]),
            {noreply, start_timer(T, S)}
    end;
handle_info(_Info, S) ->
    %% Stale timers, and exit signals of linked processes other than the parent.
    {noreply, S}.

%% @private
terminate(_Reason, #state{batch = closed}) ->
    ok;
terminate(_Reason, S) ->
    unpublish(S),
    case close(S) of
        ok ->
            ok;
        {discarded, N} ->
            logger:warning("~p ~p: ~b message(s) could not be sent to the ring (full) and were "
                           "discarded", [?MODULE, self(), N]);
        {error, Reason} ->
            logger:warning("~p ~p: closing the batch processor failed: ~0p",
                           [?MODULE, self(), Reason])
    end.

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

start(Ring, Opts, How) when is_map(Opts) ->
    case maps:keys(maps:without(?KEYS, Opts)) of
        [] ->
            #{batch_size := Size, batch_timeout := TimeoutMs, max_pending := MaxPending,
              drain_timeout := DrainMs} = All = maps:merge(?DEFAULTS, Opts),
            case check([{batch_size, Size}, {batch_timeout, TimeoutMs},
                        {max_pending, MaxPending}]) andalso is_integer(DrainMs)
                andalso DrainMs >= 0 of
                true ->
                    Name = maps:get(name, Opts, {local, ?SERVER}),
                    Key = case Name of undefined -> undefined; _ -> {?MODULE, Name} end,
                    %% The engine processor is made here, so that an unknown ring is an error of
                    %% this call rather than the crash of a linked server; the server owns it.
                    %% A registered server adopts the one a killed predecessor left instead.
                    Target = target(Ring, Opts),
                    case adoptable(Key, Target) of
                        {ok, Old, Pending} ->
                            run(How, Name, {{adopt, Old, Pending}, All, Key, Target});
                        {error, _} = Busy ->
                            Busy;
                        none ->
                            case new_batch(Ring, Opts, Size, TimeoutMs, MaxPending) of
                                {ok, Batch} ->
                                    run(How, Name, {{new, Batch}, All, Key, Target});
                                {error, _} = Error ->
                                    Error
                            end
                    end;
                false ->
                    invalid("batch_size, batch_timeout and max_pending: expected positive "
                            "integers; drain_timeout: a non-negative integer")
            end;
        Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, ?KEYS]))
    end;
start(_Ring, _Opts, _How) ->
    invalid("options: expected a map").

run(How, undefined, Args) -> gen_server:How(?MODULE, Args, []);
run(How, Name, Args) -> gen_server:How(Name, ?MODULE, Args, []).

%% A registered server publishes its engine processor under Key. One found there was left by a
%% server of the same name that was killed (an orderly end unpublishes it): the next server of
%% that name adopts it, pending messages and producer included (nothing is lost, and the ring
%% needs no second producer). When a server of that name is still running, gen_server refuses
%% the start (already_started) before init/1 could take it. A processor left for another ring
%% (the new server is started for a different one) is not adopted: it is flushed and freed
%% here, and what it could not send is discarded with a warning.
adoptable(undefined, _Target) ->
    none;
adoptable(Key, Target) ->
    case persistent_term:get(Key, undefined) of
        undefined ->
            none;
        {Old, Target} ->
            adopt(Old, erlang:monotonic_time(millisecond) + ?ADOPT_WAIT_MS);
        {Old, _OtherRing} ->
            case erlmcp_flow_nif:batch_pending(Old) of
                {error, {busy, _}} ->
                    none; % still in use: its server runs, the start is refused
                _ ->
                    _ = persistent_term:erase(Key),
                    release_left(Old),
                    none
            end
    end.

%% A killed server's processor may still be busy: the VM reports a process killed during a
%% dirty NIF call as gone at once, while the call runs on. Its successor waits for the call to
%% return (polling, up to ?ADOPT_WAIT_MS) rather than making a second processor and leaving
%% the first one's pending messages to its destructor; still busy then, the start fails with
%% `{error, {busy, _}}' (a supervisor tries again).
adopt(Old, Deadline) ->
    case erlmcp_flow_nif:batch_pending(Old) of
        {ok, Pending, _Due} ->
            {ok, Old, Pending};
        {error, {busy, _}} ->
            case erlang:monotonic_time(millisecond) < Deadline of
                true ->
                    receive after 1 -> ok end,
                    adopt(Old, Deadline);
                false ->
                    {error, {busy, <<"erlmcp_flow_batch_processor: the processor of a killed "
                                     "server is still in use by a call of that server">>}}
            end;
        {error, _} ->
            none % closed, or made by an earlier load of the NIF library
    end.

%% @private Flushes and frees a processor that a killed server left (see adoptable/2); used
%% by erlmcp_flow_app too.
-spec release_left(erlmcp_flow_nif:batch()) -> ok.
release_left(Batch) ->
    _ = erlmcp_flow_nif:batch_flush(Batch),
    case erlmcp_flow_nif:batch_close(Batch) of
        {error, {full, _}} ->
            case erlmcp_flow_nif:batch_discard(Batch) of
                {ok, N} when N > 0 ->
                    logger:warning("~p: ~b message(s) of a killed processor could not be sent "
                                   "(ring full) and were discarded", [?MODULE, N]);
                _ ->
                    ok
            end;
        _ ->
            ok
    end.

%% What a processor writes to, to compare a left processor's ring with a new start's.
target(Ring, _Opts) when is_reference(Ring) ->
    {handle, Ring};
target(Name, Opts) ->
    {ring, text(Name), case maps:get(dir, Opts, undefined) of
                           undefined -> undefined;
                           Dir -> text(Dir)
                       end}.

text(T) when is_atom(T) -> atom_to_binary(T, utf8);
text(T) when is_list(T) ->
    try unicode:characters_to_binary(T) of
        Bin when is_binary(Bin) -> Bin;
        _ -> T
    catch
        error:badarg -> T
    end;
text(T) -> T.

unpublish(#state{key = undefined}) ->
    ok;
unpublish(#state{key = Key, batch = B}) ->
    case persistent_term:get(Key, undefined) of
        {B, _Target} -> _ = persistent_term:erase(Key), ok;
        _ -> ok
    end.

check(Options) ->
    lists:all(fun({_, V}) -> is_integer(V) andalso V > 0 end, Options).

%% A ring name (erlmcp_flow_ring:name()) is opened here; anything else goes to the NIF as a
%% ring handle, which it checks (ring() is opaque: only the NIF looks inside).
new_batch(Name, Opts, Size, TimeoutMs, MaxPending)
  when is_binary(Name); is_list(Name); is_atom(Name) ->
    case erlmcp_flow_ring:open(Name, maps:with([dir], Opts)) of
        {ok, Ring} ->
            Result = erlmcp_flow_nif:batch_new(Ring, Size, TimeoutMs, MaxPending),
            ok = erlmcp_flow_ring:close(Ring), % the processor's producer keeps it mapped
            Result;
        {error, _} = Error ->
            Error
    end;
new_batch(Ring, _Opts, Size, TimeoutMs, MaxPending) ->
    erlmcp_flow_nif:batch_new(Ring, Size, TimeoutMs, MaxPending).

%% Arms the tick timer for a batch that is pending and due in Due ms, unless one is armed: an
%% armed timer never fires later than the due time of the current batch (a new batch starts
%% after the one it was armed for, and is due later), and when it fires early the tick arms
%% the next one.
arm(0, _Due, S) ->
    S; % an armed timer fires for nothing and is not renewed
arm(_Pending, Due, #state{timer = undefined} = S) ->
    start_timer(max(Due, 0), S);
arm(_Pending, _Due, S) ->
    S.

%% After a refused message: messages are pending, make sure a tick will come.
rearm(#state{timer = undefined, batch = B} = S) ->
    case erlmcp_flow_nif:batch_pending(B) of
        {ok, Pending, Due} -> arm(Pending, Due, S);
        {error, _} -> S
    end;
rearm(S) ->
    S.

start_timer(Ms, S) ->
    S#state{timer = erlang:start_timer(Ms, self(), tick)}.

count(none, S) -> S;
count(size, S) -> bump(flush_size, S);
count(timeout, S) -> bump(flush_timeout, S);
count(idle, S) -> bump(flush_idle, S);
count(demand, S) -> bump(flush_demand, S).

bump(Key, #state{counters = C} = S) ->
    S#state{counters = maps:update_with(Key, fun(N) -> N + 1 end, C)}.

%% Flushes until nothing is pending or drain_ms have passed, then frees the processor.
close(#state{batch = B, drain_ms = DrainMs}) ->
    drain(B, erlang:monotonic_time(millisecond) + DrainMs),
    case erlmcp_flow_nif:batch_close(B) of
        ok ->
            ok;
        {error, {full, _}} ->
            case erlmcp_flow_nif:batch_discard(B) of
                {ok, N} -> {discarded, N};
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

drain(B, Deadline) ->
    case erlmcp_flow_nif:batch_flush(B) of
        {ok, _Sent, Pending, _Due} when Pending > 0 ->
            case Deadline - erlang:monotonic_time(millisecond) of
                Left when Left > 0 -> timer:sleep(min(Left, 5)), drain(B, Deadline);
                _ -> ok
            end;
        _ ->
            ok
    end.

call(Server, Request) ->
    try
        gen_server:call(Server, Request, infinity)
    catch
        exit:{Reason, {gen_server, call, _}} when Reason =:= noproc; Reason =:= normal;
                                                   Reason =:= shutdown;
                                                   element(1, Reason) =:= shutdown ->
            {error, {closed, <<"erlmcp_flow_batch_processor: the processor is not running">>}}
    end.

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

%% @doc A gossip member running in this VM: SWIM membership and failure detection, and a
%% versioned key -> value map spread by push-pull gossip with anti-entropy, over the C ABI
%% `emf_gossip_*' (the member, its thread and its transport are the engine's).
%%
%% ```
%% {ok, _} = erlmcp_flow_gossip:start_link(#{id => 2, peers => [1, 3], seeds => [1],
%%                                           dir => "/dev/shm/cluster"}),
%% ok = erlmcp_flow_gossip:subscribe(),
%% {ok, _Counter} = erlmcp_flow_gossip:put(<<"agent/7">>, <<"host-2">>),
%% {ok, _Rounds} = erlmcp_flow_gossip:gossip_round(erlmcp_flow_gossip),
%% receive {erlmcp_flow_gossip, member_down, Id} -> Id end,
%% [#{id := 1, state := alive} | _] = erlmcp_flow_gossip:members().
%% '''
%%
%% <h3>Configuration (`start_link/1')</h3>
%% `id' (required, a positive integer); the transport: `dir' (a ring directory shared by the
%% members on this host; `peers' lists every other member's id) or `listen'
%% (`<<"ip:port">>'; `peers' is then `[{Id, <<"ip:port">>}]'); `seeds' (members to announce
%% this one to; none for the first); `gossip_interval' (ms between push-pull rounds, 100);
%% `anti_entropy_interval' (ms between full reconciliations with one random peer, 10000;
%% 0: off); `max_fan_out' (10: a round pushes to `min(ceil(log2 N) + 1, max_fan_out)' peers
%% and pulls from as many others); `probe_period' (SWIM's, ms, 1000); `suspicion_timeout'
%% (ms; absent: from the cluster size); `generation' (absent: the wall clock);
%% `inbox_capacity'; `seed'; `name' (the local registered name, default `erlmcp_flow_gossip';
%% `undefined': not registered). The calls without a server argument use the default name.
%%
%% <h3>Subscriptions</h3>
%% `subscribe/0,1' sends the caller every later change, as messages
%% `{erlmcp_flow_gossip, member_up | member_suspect | member_down | member_restarted, Id}',
%% `{erlmcp_flow_gossip, rejoined, Generation}' (this member had been declared down) and
%% `{erlmcp_flow_gossip, changed, {Key, Value | deleted}}' (a remote write or delete; local
%% writes are not reported). A subscriber that exits is dropped. A linked worker process
%% fetches the member's events (a dirty I/O NIF waiting up to 100 ms at a time) and hands
%% them to this server, which fans them out.
-module(erlmcp_flow_gossip).
-behaviour(gen_server).

-export([start_link/1, start/1, stop/0, stop/1,
         put/2, put/3, get/1, get/2, delete/1, delete/2,
         members/0, members/1, live_members/1, gossip_round/1, leave/1, stats/1, port/1,
         subscribe/0, subscribe/1, unsubscribe/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

%% How long the worker's NIF waits for an event at a time, ms.
-define(POLL_MS, 100).

-type server() :: pid() | atom().
-export_type([server/0]).

-record(st, {member :: erlmcp_flow_nif:gossip(),
             worker :: pid(),
             subs = #{} :: #{pid() => reference()}}).

%% @doc Starts the member of `Config' (see the module doc), linked to the caller; returns
%% once it runs.
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Config) ->
    case name(Config) of
        undefined -> gen_server:start_link(?MODULE, Config, []);
        Name -> gen_server:start_link({local, Name}, ?MODULE, Config, [])
    end.

%% @doc As {@link start_link/1}, not linked.
-spec start(map()) -> {ok, pid()} | {error, term()}.
start(Config) ->
    case name(Config) of
        undefined -> gen_server:start(?MODULE, Config, []);
        Name -> gen_server:start({local, Name}, ?MODULE, Config, [])
    end.

name(Config) when is_map(Config) -> maps:get(name, Config, ?MODULE);
name(_) -> undefined.

%% @doc Stops the default member (without leaving: call {@link leave/1} first to leave
%% gracefully; the others then report it down at once instead of after suspicion).
-spec stop() -> ok.
stop() -> stop(?MODULE).

%% @doc Stops member `Server'.
-spec stop(server()) -> ok.
stop(Server) -> gen_server:call(Server, stop, infinity).

%% @doc Writes `Key' = `Value' on the default member; gossip spreads it from the next
%% round. The version's Lamport counter.
-spec put(erlmcp_flow_nif:bytes(), erlmcp_flow_nif:bytes()) ->
          {ok, non_neg_integer()} | erlmcp_flow_nif:error().
put(Key, Value) -> put(?MODULE, Key, Value).

%% @doc {@link put/2} on member `Server'.
-spec put(server(), erlmcp_flow_nif:bytes(), erlmcp_flow_nif:bytes()) ->
          {ok, non_neg_integer()} | erlmcp_flow_nif:error().
put(Server, Key, Value) -> gen_server:call(Server, {put, Key, Value}).

%% @doc The value of `Key' on the default member: `{ok, Value}' or `{error, not_found}'.
-spec get(erlmcp_flow_nif:bytes()) -> {ok, binary()} | {error, not_found} | erlmcp_flow_nif:error().
get(Key) -> get(?MODULE, Key).

%% @doc {@link get/1} on member `Server'.
-spec get(server(), erlmcp_flow_nif:bytes()) ->
          {ok, binary()} | {error, not_found} | erlmcp_flow_nif:error().
get(Server, Key) -> gen_server:call(Server, {get, Key}).

%% @doc Deletes `Key' on the default member (a tombstone spreads): whether it had a value.
-spec delete(erlmcp_flow_nif:bytes()) -> {ok, boolean()} | erlmcp_flow_nif:error().
delete(Key) -> delete(?MODULE, Key).

%% @doc {@link delete/1} on member `Server'.
-spec delete(server(), erlmcp_flow_nif:bytes()) -> {ok, boolean()} | erlmcp_flow_nif:error().
delete(Server, Key) -> gen_server:call(Server, {delete, Key}).

%% @doc Every member the default member knows (live and down, not itself):
%% `[#{id, generation, incarnation, state}]', `state' one of `alive', `suspect', `down'.
-spec members() -> [map()].
members() -> members(?MODULE).

%% @doc {@link members/0} of member `Server'.
-spec members(server()) -> [map()].
members(Server) ->
    {ok, Ms} = gen_server:call(Server, members),
    Ms.

%% @doc The ids of the live (alive or suspect) members `Server' knows, ascending.
-spec live_members(server()) -> [pos_integer()].
live_members(Server) ->
    lists:sort([Id || #{id := Id, state := S} <- members(Server), S =/= down]).

%% @doc Runs one push-pull round on member `Server' now (the scheduled rounds go on
%% unchanged): the member's round count.
-spec gossip_round(server()) -> {ok, non_neg_integer()} | erlmcp_flow_nif:error().
gossip_round(Server) -> gen_server:call(Server, gossip_round, infinity).

%% @doc Member `Server' leaves the cluster; it keeps running until stopped.
-spec leave(server()) -> ok | erlmcp_flow_nif:error().
leave(Server) -> gen_server:call(Server, leave).

%% @doc The counters of member `Server' (a map).
-spec stats(server()) -> {ok, map()} | erlmcp_flow_nif:error().
stats(Server) -> gen_server:call(Server, stats).

%% @doc The TCP port member `Server' listens on (0 over rings).
-spec port(server()) -> {ok, non_neg_integer()} | erlmcp_flow_nif:error().
port(Server) -> gen_server:call(Server, port).

%% @doc Subscribes the caller to the default member's changes (module doc).
-spec subscribe() -> ok.
subscribe() -> subscribe(?MODULE).

%% @doc Subscribes the caller to member `Server''s changes; subscribing again does nothing.
-spec subscribe(server()) -> ok.
subscribe(Server) -> gen_server:call(Server, {subscribe, self()}).

%% @doc Ends the caller's subscription to `Server'.
-spec unsubscribe(server()) -> ok.
unsubscribe(Server) -> gen_server:call(Server, {unsubscribe, self()}).

%% @private
init(Config) when is_map(Config) ->
    process_flag(trap_exit, true),
    case nif_args(Config) of
        {ok, Id, Opts} ->
            case erlmcp_flow_nif:gossip_start(Id, Opts) of
                {ok, Member} ->
                    Self = self(),
                    Worker = spawn_link(fun() -> worker(Self, Member) end),
                    {ok, #st{member = Member, worker = Worker}};
                {error, E} ->
                    {stop, E}
            end;
        {error, E} ->
            {stop, E}
    end;
init(_) ->
    {stop, {invalid_argument, <<"expected a configuration map">>}}.

%% The NIF's options of a configuration.
nif_args(#{id := Id} = Config) when is_integer(Id), Id > 0 ->
    Renamed = [{gossip_interval, gossip_interval_ms},
               {anti_entropy_interval, anti_entropy_interval_ms},
               {probe_period, probe_period_ms},
               {suspicion_timeout, suspicion_timeout_ms}],
    Kept = [dir, listen, peers, seeds, max_fan_out, generation, inbox_capacity, seed],
    Opts0 = maps:with(Kept, Config),
    Opts = lists:foldl(fun({From, To}, Acc) ->
                               case maps:find(From, Config) of
                                   {ok, V} -> Acc#{To => V};
                                   error -> Acc
                               end
                       end, Opts0, Renamed),
    {ok, Id, Opts};
nif_args(_) ->
    {error, {invalid_argument, <<"configuration: id (a positive integer) is required">>}}.

%% The worker: fetches the member's events and sends them to the server, until the member
%% stops.
worker(Server, Member) ->
    case erlmcp_flow_nif:gossip_next_event(Member, ?POLL_MS) of
        {ok, Event} ->
            Server ! {gossip_event, self(), Event},
            worker(Server, Member);
        {error, {timeout, _}} ->
            worker(Server, Member);
        {error, {closed, _}} ->
            exit(normal);
        {error, E} ->
            exit({gossip_next_event, E})
    end.

%% @private
handle_call({put, K, V}, _From, #st{member = M} = St) ->
    {reply, erlmcp_flow_nif:gossip_put(M, K, V), St};
handle_call({get, K}, _From, #st{member = M} = St) ->
    Reply = case erlmcp_flow_nif:gossip_get(M, K) of
                {error, {not_found, _}} -> {error, not_found};
                Other -> Other
            end,
    {reply, Reply, St};
handle_call({delete, K}, _From, #st{member = M} = St) ->
    {reply, erlmcp_flow_nif:gossip_delete(M, K), St};
handle_call(members, _From, #st{member = M} = St) ->
    {reply, erlmcp_flow_nif:gossip_members(M), St};
handle_call(gossip_round, _From, #st{member = M} = St) ->
    {reply, erlmcp_flow_nif:gossip_round(M), St};
handle_call(leave, _From, #st{member = M} = St) ->
    {reply, erlmcp_flow_nif:gossip_leave(M), St};
handle_call(stats, _From, #st{member = M} = St) ->
    {reply, erlmcp_flow_nif:gossip_stats(M), St};
handle_call(port, _From, #st{member = M} = St) ->
    {reply, erlmcp_flow_nif:gossip_port(M), St};
handle_call({subscribe, Pid}, _From, #st{subs = Subs} = St) ->
    case maps:is_key(Pid, Subs) of
        true -> {reply, ok, St};
        false -> {reply, ok, St#st{subs = Subs#{Pid => erlang:monitor(process, Pid)}}}
    end;
handle_call({unsubscribe, Pid}, _From, #st{subs = Subs} = St) ->
    case maps:take(Pid, Subs) of
        {Ref, Rest} ->
            true = erlang:demonitor(Ref, [flush]),
            {reply, ok, St#st{subs = Rest}};
        error ->
            {reply, ok, St}
    end;
handle_call(stop, _From, St) ->
    {stop, normal, ok, St};
handle_call(_Other, _From, St) ->
    {reply, {error, {invalid_argument, <<"unknown call">>}}, St}.

%% @private
handle_cast(_Msg, St) ->
    {noreply, St}.

%% @private
handle_info({gossip_event, W, Event}, #st{worker = W, subs = Subs} = St) ->
    Msg = message(Event),
    maps:foreach(fun(Pid, _) -> Pid ! Msg end, Subs),
    {noreply, St};
handle_info({'DOWN', Ref, process, Pid, _}, #st{subs = Subs} = St) ->
    case maps:find(Pid, Subs) of
        {ok, Ref} -> {noreply, St#st{subs = maps:remove(Pid, Subs)}};
        _ -> {noreply, St}
    end;
handle_info({'EXIT', W, normal}, #st{worker = W} = St) ->
    {stop, normal, St};
handle_info({'EXIT', W, Why}, #st{worker = W} = St) ->
    {stop, {gossip_member, Why}, St};
handle_info({'EXIT', _Other, Why}, St) ->
    %% The linked parent ended.
    {stop, Why, St};
handle_info(_Msg, St) ->
    {noreply, St}.

%% @private
terminate(_Why, #st{member = M}) ->
    ok = erlmcp_flow_nif:gossip_close(M).

%% The subscribers' message of an event.
message({changed, Key, Value, _Version}) -> {?MODULE, changed, {Key, Value}};
message({rejoined, Generation}) -> {?MODULE, rejoined, Generation};
message({Kind, Id}) -> {?MODULE, Kind, Id}.

%% @doc One node of a Raft cluster running in this VM, whose replicated state machine is an
%% Erlang module (this behaviour), over the C ABI `emf_raft_node_start_remote'.
%%
%% ```
%% {ok, N} = erlmcp_flow_raft_node:start_link(#{id => 1, voters => [1, 2, 3],
%%                                              ring_dir => "/dev/shm/c/net",
%%                                              data_dir => "/var/lib/c/node-1"},
%%                                            my_counter, []),
%% %% ... nodes 2 and 3 here, in other VMs, or `erlmcp-flow raft node' processes ...
%% {ok, C} = erlmcp_flow_nif:raft_client_connect("/dev/shm/c/net", [1, 2, 3], #{}),
%% {ok, {_Index, Result}} = erlmcp_flow_nif:raft_client_submit(C, <<"op">>),
%% ok = erlmcp_flow_raft_node:stop(N).
%% '''
%%
%% <h3>The state machine</h3>
%% `Mod' implements
%% <ul>
%% <li>`init(Args) -> {ok, State}': the empty state (a node restarted from its `data_dir'
%%     is then restored from its snapshot and applies the entries after it);</li>
%% <li>`apply(Index, Op, State) -> {Result, State}': the operation `Op' (a binary) committed
%%     at log `Index'; `Result' (a binary) is what the client that submitted it gets. Must be
%%     deterministic: every node applies the same operations in the same order. An
%%     operation it cannot parse is answered (a result in its own encoding), not raised;</li>
%% <li>`snapshot(State) -> binary()': the whole state;</li>
%% <li>`restore(Snapshot) -> {ok, State} | {error, Reason}': the state of a snapshot's bytes
%%     (this node's at a restart, or the leader's when the node fell behind); validate
%%     them;</li>
%% <li>optional `query(Query, State) -> {ok, binary()} | {error, Reason}': a read-only
%%     answer.</li>
%% </ul>
%% A callback that raises (or `restore' answering `{error, _}') stops the node: nothing
%% after it is applied or persisted (a restart from `data_dir' replays the entry), and the
%% server exits with `{raft_node, {stopped, Message}}' (a raising `query' only refuses that
%% query). So does a callback slower than the option `timeout_ms' (5000).
%%
%% <h3>How it runs</h3>
%% The node, its thread, its log and its transport are the engine's; a NIF cannot call
%% Erlang, so the node hands every call into its state machine to Erlang as a request and
%% waits for the answer. A linked worker process fetches the requests (a dirty I/O NIF
%% waiting up to 100 ms at a time) and sends them to this server, which runs the callbacks
%% and answers them, in the node's order. The node's thread waits meanwhile: keep callbacks
%% quick (a node whose callbacks take longer than an election timeout loses leadership).
%%
%% <h3>Options</h3>
%% `id' and `voters' (required), `ring_dir' (required: the cluster's ring directory, under
%% `/dev/shm'), `data_dir' (the durable log; absent: in memory, and the node must then only
%% restart with its whole cluster), `tick_ms' (10), `election_tick' (10), `heartbeat_tick'
%% (2), `snapshot_entries' (10000), `timeout_ms' (5000). Clients connect with
%% `erlmcp_flow_nif:raft_client_connect(RingDir, Voters, #{})' (the default client ids).
-module(erlmcp_flow_raft_node).
-behaviour(gen_server).

-export([start_link/3, start/3, stop/1, info/1, machine_state/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-callback init(Args :: term()) -> {ok, State :: term()}.
-callback apply(Index :: pos_integer(), Op :: binary(), State :: term()) ->
    {Result :: binary(), NewState :: term()}.
-callback snapshot(State :: term()) -> binary().
-callback restore(Snapshot :: binary()) -> {ok, State :: term()} | {error, Reason :: term()}.
-callback query(Query :: binary(), State :: term()) ->
    {ok, Answer :: binary()} | {error, Reason :: term()}.
-optional_callbacks([query/2]).

%% How long the worker's NIF waits for a request at a time, ms.
-define(POLL_MS, 100).

-record(st, {node :: erlmcp_flow_nif:raft_node(),
             worker :: pid(),
             mod :: module(),
             sm :: term()}).

%% @doc Starts node `id' of `voters' (see the module doc for the options) with the state
%% machine `Mod' (`Mod:init(Args)'), linked to the caller. Returns once the node's inbox and
%% log are open.
-spec start_link(map(), module(), term()) -> {ok, pid()} | {error, term()}.
start_link(Opts, Mod, Args) ->
    gen_server:start_link(?MODULE, {Opts, Mod, Args}, []).

%% @doc As {@link start_link/3}, not linked.
-spec start(map(), module(), term()) -> {ok, pid()} | {error, term()}.
start(Opts, Mod, Args) ->
    gen_server:start(?MODULE, {Opts, Mod, Args}, []).

%% @doc Stops the node and the server: `ok', or what had stopped the node
%% (`{error, {stopped, Message}}' when its state machine failed).
-spec stop(pid()) -> ok | erlmcp_flow_nif:error().
stop(Server) ->
    gen_server:call(Server, stop, infinity).

%% @doc The node's view as of its latest round: `#{id, leader, term, commit, applied,
%% running}'.
-spec info(pid()) -> {ok, map()} | erlmcp_flow_nif:error().
info(Server) ->
    gen_server:call(Server, info).

%% @doc The state machine's current state (for tests and inspection).
-spec machine_state(pid()) -> term().
machine_state(Server) ->
    gen_server:call(Server, machine_state).

%% @private
init({Opts, Mod, Args}) when is_map(Opts), is_atom(Mod) ->
    process_flag(trap_exit, true),
    case node_args(Opts) of
        {ok, Id, Voters, NifOpts} ->
            {ok, Sm} = Mod:init(Args),
            case erlmcp_flow_nif:raft_node_start(Id, Voters, NifOpts) of
                {ok, Node} ->
                    Self = self(),
                    Worker = spawn_link(fun() -> worker(Self, Node) end),
                    {ok, #st{node = Node, worker = Worker, mod = Mod, sm = Sm}};
                {error, E} ->
                    {stop, E}
            end;
        {error, E} ->
            {stop, E}
    end;
init(_) ->
    {stop, {invalid_argument, <<"expected an options map and a module">>}}.

node_args(#{id := Id, voters := Voters} = Opts) ->
    Keys = [ring_dir, data_dir, tick_ms, election_tick, heartbeat_tick, snapshot_entries,
            timeout_ms],
    {ok, Id, Voters, maps:with(Keys, Opts)};
node_args(_) ->
    {error, {invalid_argument, <<"options: id and voters are required">>}}.

%% The worker: fetches the node's requests and sends them to the server, until the node
%% stops.
worker(Server, Node) ->
    case erlmcp_flow_nif:raft_node_next_request(Node, ?POLL_MS) of
        {ok, Req} ->
            Server ! {raft_request, self(), Req},
            worker(Server, Node);
        {error, {timeout, _}} ->
            worker(Server, Node);
        {error, {closed, _}} ->
            exit(normal);
        {error, E} ->
            exit({raft_node_next_request, E})
    end.

%% @private
handle_call(stop, _From, #st{node = Node} = St) ->
    {stop, normal, erlmcp_flow_nif:raft_node_stop(Node), St};
handle_call(info, _From, #st{node = Node} = St) ->
    {reply, erlmcp_flow_nif:raft_node_info(Node), St};
handle_call(machine_state, _From, #st{sm = Sm} = St) ->
    {reply, Sm, St};
handle_call(_Other, _From, St) ->
    {reply, {error, {invalid_argument, <<"unknown call">>}}, St}.

%% @private
handle_cast(_Msg, St) ->
    {noreply, St}.

%% @private
handle_info({raft_request, W, Req}, #st{worker = W} = St) ->
    {noreply, answer(Req, St)};
handle_info({'EXIT', W, _Why}, #st{worker = W, node = Node} = St) ->
    %% The node has stopped (a failed callback, a timeout, its log or transport): say why.
    case erlmcp_flow_nif:raft_node_stop(Node) of
        ok -> {stop, normal, St};
        {error, E} -> {stop, {raft_node, E}, St}
    end;
handle_info({'EXIT', _Other, Why}, St) ->
    %% The linked parent ended.
    {stop, Why, St};
handle_info(_Msg, St) ->
    {noreply, St}.

%% @private
terminate(_Why, #st{node = Node}) ->
    _ = erlmcp_flow_nif:raft_node_stop(Node),
    ok = erlmcp_flow_nif:raft_node_close(Node).

%% Runs the callback of `Req' and answers the node.
answer({apply, Id, Index, Op}, #st{mod = Mod, sm = Sm} = St) ->
    try Mod:apply(Index, Op, Sm) of
        {Result, Sm1} when is_binary(Result) ->
            reply(St, Id, 0, Result),
            St#st{sm = Sm1};
        Other ->
            reply(St, Id, 1, describe({bad_return, apply, Other})),
            St
    catch
        C:E:Stack ->
            reply(St, Id, 1, describe({C, E, Stack})),
            St
    end;
answer({snapshot, Id}, #st{mod = Mod, sm = Sm} = St) ->
    try Mod:snapshot(Sm) of
        Bin when is_binary(Bin) -> reply(St, Id, 0, Bin);
        Other -> reply(St, Id, 1, describe({bad_return, snapshot, Other}))
    catch
        C:E:Stack -> reply(St, Id, 1, describe({C, E, Stack}))
    end,
    St;
answer({restore, Id, Snapshot}, #st{mod = Mod} = St) ->
    try Mod:restore(Snapshot) of
        {ok, Sm1} ->
            reply(St, Id, 0, <<>>),
            St#st{sm = Sm1};
        {error, Why} ->
            reply(St, Id, 1, describe({restore_refused, Why})),
            St;
        Other ->
            reply(St, Id, 1, describe({bad_return, restore, Other})),
            St
    catch
        C:E:Stack ->
            reply(St, Id, 1, describe({C, E, Stack})),
            St
    end;
answer({query, Id, Q}, #st{mod = Mod, sm = Sm} = St) ->
    case erlang:function_exported(Mod, query, 2) of
        false ->
            reply(St, Id, 1, <<"this state machine answers no queries">>);
        true ->
            try Mod:query(Q, Sm) of
                {ok, A} when is_binary(A) -> reply(St, Id, 0, A);
                {error, Why} -> reply(St, Id, 1, describe(Why));
                Other -> reply(St, Id, 1, describe({bad_return, query, Other}))
            catch
                C:E:Stack -> reply(St, Id, 1, describe({C, E, Stack}))
            end
    end,
    St.

%% Answers request `Id'. `{closed, _}' and `{not_found, _}' (the node stopped, or gave up
%% waiting) are not this server's to handle: the worker's exit says why the node stopped.
reply(#st{node = Node}, Id, Status, Bytes) ->
    case erlmcp_flow_nif:raft_node_reply(Node, Id, Status, Bytes) of
        ok -> ok;
        {error, {closed, _}} -> ok;
        {error, {not_found, _}} -> ok;
        {error, E} -> exit({raft_node_reply, E})
    end.

describe(Term) ->
    iolist_to_binary(io_lib:format("~0p", [Term])).

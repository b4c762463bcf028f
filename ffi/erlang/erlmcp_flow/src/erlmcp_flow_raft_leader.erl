%% @doc The original design's `erlmcp_flow_raft_leader': `append_entry(Entry)' with leader
%% batching (10 ms), as a thin registered gen_server holding an {@link erlmcp_flow_raft}
%% cluster.
%%
%% ```
%% {ok, _} = erlmcp_flow_raft_leader:start_link(#{nodes => 3}),
%% {ok, Index} = erlmcp_flow_raft_leader:append_entry(<<"an entry">>),
%% ok = erlmcp_flow_raft_leader:flush_batch(),
%% ok = erlmcp_flow_raft_leader:stop().
%% '''
%%
%% <h3>Where the batching is</h3>
%% Not here: the Rust Raft node of the leader batches the entries proposed to it (it flushes
%% when a batch is full, when a pipeline slot frees, or at most `batch_window', 10 ms, after
%% the first entry — never a fixed wait when the pipeline is idle). This server keeps no
%% buffer: {@link append_entry/1} answers once the entry is committed, and
%% {@link flush_batch/0} is therefore done as soon as it is called — it answers `ok' after
%% the entries appended before it, which are committed (the calls are served in order).
%%
%% <h3>Options</h3>
%% `cluster': an {@link erlmcp_flow_raft} cluster to use (not stopped by this server); else
%% one is started with `nodes' (3) nodes and the other options of
%% {@link erlmcp_flow_raft:start_cluster/2}, and stopped with the server.
-module(erlmcp_flow_raft_leader).
-behaviour(gen_server).

-export([start_link/0, start_link/1, stop/0, append_entry/1, flush_batch/0, cluster/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-record(st, {cluster :: erlmcp_flow_raft:cluster(), owned :: boolean(), ref :: reference()}).

%% @equiv start_link(#{})
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    start_link(#{}).

%% @doc Starts the server, registered as `erlmcp_flow_raft_leader'.
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) when is_map(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

%% @doc Stops the server (and the cluster it started).
-spec stop() -> ok.
stop() ->
    gen_server:stop(?MODULE).

%% @doc Appends `Entry' (a binary as it is, any other term as `term_to_binary'):
%% `{ok, Index}' once committed; the leader batches it with the entries proposed meanwhile.
-spec append_entry(term()) -> {ok, non_neg_integer()} | {error, term()}.
append_entry(Entry) ->
    gen_server:call(?MODULE, {append, Entry}, infinity).

%% @doc Returns once every entry appended before it is committed (at once: see the module
%% documentation).
-spec flush_batch() -> ok.
flush_batch() ->
    gen_server:call(?MODULE, flush, infinity).

%% @doc The cluster this server appends to.
-spec cluster() -> erlmcp_flow_raft:cluster().
cluster() ->
    gen_server:call(?MODULE, cluster, infinity).

%% @private
init(Opts) ->
    process_flag(trap_exit, true),
    case maps:find(cluster, Opts) of
        {ok, C} ->
            {ok, #st{cluster = C, owned = false, ref = erlang:monitor(process, C)}};
        error ->
            N = maps:get(nodes, Opts, 3),
            case erlmcp_flow_raft:start_cluster(N, maps:without([nodes], Opts)) of
                {ok, C} -> {ok, #st{cluster = C, owned = true, ref = erlang:monitor(process, C)}};
                {error, Reason} -> {stop, {shutdown, Reason}}
            end
    end.

%% @private
handle_call({append, Entry}, _From, S = #st{cluster = C}) ->
    {reply, erlmcp_flow_raft:append_entry(C, Entry), S};
handle_call(flush, _From, S) ->
    {reply, ok, S};
handle_call(cluster, _From, S) ->
    {reply, S#st.cluster, S}.

%% @private
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
handle_info({'DOWN', Ref, process, _, Reason}, S = #st{ref = Ref}) ->
    {stop, {cluster_down, Reason}, S};
handle_info(_Msg, S) ->
    {noreply, S}.

%% @private
terminate(_Reason, #st{cluster = C, owned = true}) ->
    _ = (catch erlmcp_flow_raft:stop(C)),
    ok;
terminate(_Reason, _S) ->
    ok.

%% @doc The original design's `erlmcp_flow_pbft': Byzantine agreement among n = 3f + 1
%% replicas with the fast path, over the C ABI `emf_pbft_group_*' (the Rust
%% `mesh::pbft::LocalGroup').
%%
%% ```
%% {ok, _} = erlmcp_flow_pbft:start_link(#{}),
%% {ok, #{position := 1, path := fast}} = erlmcp_flow_pbft:fast_path_consensus({assign, task_7}),
%% ok = erlmcp_flow_pbft:stop_replica(0),            % the primary crashes
%% {ok, #{position := 2}} = erlmcp_flow_pbft:fast_path_consensus(next),
%% {ok, View} = erlmcp_flow_pbft:view(),             % >= 1: a view change happened
%% ok = erlmcp_flow_pbft:stop().
%% '''
%%
%% <h3>Where the logic is</h3>
%% Everything is the engine's: a group is `n' PBFT replica threads in this VM's process over
%% shared-memory rings, signing with fresh Ed25519 keys, replicating an order log, and a
%% client; request batching, the view change when the primary fails, and timeouts are the
%% engine's. A group is a gen_server owning the engine handle (one call at a time, on a dirty
%% I/O scheduler); {@link start_link/1} registers it as `erlmcp_flow_pbft' (the `/1' calls
%% use that one), {@link start/1} starts an unregistered one for the `/2' calls.
%%
%% <h3>The fast path, and why it is safe</h3>
%% A replica executes a request tentatively once it is prepared (2f + 1 replicas agree on
%% its place in the order) and replies at once; the client accepts 2f + 1 matching tentative
%% replies (`path => fast': two round trips instead of three), otherwise it waits for f + 1
%% matching committed replies (`path => slow'; the only path with `accept_tentative =>
%% false'). The original sketch completed on 2f + 1 replies sent before the prepare phase,
%% which a view change can reorder; the engine never does (see `crates/core/src/pbft/').
%%
%% <h3>Operations and results</h3>
%% `Op' is a binary (as it is) or any other term (`term_to_binary(T, [deterministic])').
%% The result `#{position := P, chain := C, path := fast | slow}': `P' is the operation's
%% 1-based position in the agreed order, `C' a running checksum of every operation agreed
%% up to it (replicas that disagreed on the order would disagree on it).
%%
%% <h3>Errors</h3>
%% `{error, {Status, Message}}' as every call of the NIF: `{timeout, _}' when the group did
%% not agree within `timeout_ms' (the request stays outstanding: the next call answers
%% `{busy, _}' unless the group answers it first), `{not_found, _}' for a replica that is not
%% running, `{invalid_argument, _}' for a bad option.
%%
%% <h3>Options</h3>
%% `dir' (default: a new directory under `/dev/shm', removed by {@link stop/1}), `n' (4),
%% `ed25519' (true; false: the simulation's insecure keys, for tests), `accept_tentative'
%% (true), `batch_window_us' (0), `view_change_timeout_ms' (200), `retransmit_ms' (100),
%% `timeout_ms' (10000).
-module(erlmcp_flow_pbft).
-behaviour(gen_server).

-export([start_link/0, start_link/1, start/1, stop/0, stop/1, fast_path_consensus/1,
         fast_path_consensus/2, stop_replica/1, stop_replica/2, view/0, view/1, dir/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([group/0, result/0]).

%% A group: the gen_server owning it (or the registered name).
-type group() :: pid() | ?MODULE.
-type result() :: #{position := pos_integer(), chain := non_neg_integer(),
                    path := fast | slow}.
-type error() :: {error, {atom(), binary()} | term()}.

-record(st, {h :: erlmcp_flow_nif:pbft(),
             dir :: binary(),
             owned_dir :: boolean()}).

%% @equiv start_link(#{})
-spec start_link() -> {ok, pid()} | error().
start_link() ->
    start_link(#{}).

%% @doc Starts a group registered as `erlmcp_flow_pbft', linked to the caller.
-spec start_link(map()) -> {ok, pid()} | error().
start_link(Opts) when is_map(Opts) ->
    result(gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, [])).

%% @doc Starts an unregistered group (not linked; stop it with {@link stop/1}).
-spec start(map()) -> {ok, pid()} | error().
start(Opts) when is_map(Opts) ->
    result(gen_server:start(?MODULE, Opts, [])).

result({ok, Pid}) -> {ok, Pid};
result({error, {shutdown, Reason}}) -> {error, Reason};
result({error, Reason}) -> {error, Reason}.

%% @equiv stop(erlmcp_flow_pbft)
-spec stop() -> ok.
stop() ->
    stop(?MODULE).

%% @doc Stops the replicas and the server; removes the directory when the group made it.
-spec stop(group()) -> ok.
stop(G) ->
    gen_server:stop(G).

%% @doc Agrees on `Op' in the registered group: `{ok, Result}' (see the module docs).
-spec fast_path_consensus(term()) -> {ok, result()} | error().
fast_path_consensus(Op) ->
    fast_path_consensus(?MODULE, Op).

%% @doc Agrees on `Op' in group `G'.
-spec fast_path_consensus(group(), term()) -> {ok, result()} | error().
fast_path_consensus(G, Op) ->
    Bin = if is_binary(Op) -> Op; true -> term_to_binary(Op, [deterministic]) end,
    case gen_server:call(G, {nif, pbft_execute, [Bin]}, infinity) of
        {ok, {<<P:64/little, C:64/little>>, Path}} ->
            {ok, #{position => P, chain => C, path => Path}};
        {ok, {Other, _}} ->
            {error, {corrupt, Other}};
        E ->
            E
    end.

%% @equiv stop_replica(erlmcp_flow_pbft, I)
-spec stop_replica(non_neg_integer()) -> ok | error().
stop_replica(I) ->
    stop_replica(?MODULE, I).

%% @doc Stops replica `I' (`0..n-1'; a crash, to the others: for tests).
-spec stop_replica(group(), non_neg_integer()) -> ok | error().
stop_replica(G, I) ->
    gen_server:call(G, {nif, pbft_stop_replica, [I]}, infinity).

%% @equiv view(erlmcp_flow_pbft)
-spec view() -> {ok, non_neg_integer()} | error().
view() ->
    view(?MODULE).

%% @doc The view the client knows (its primary is replica `View rem n').
-spec view(group()) -> {ok, non_neg_integer()} | error().
view(G) ->
    gen_server:call(G, {nif, pbft_view, []}, infinity).

%% @doc The group's ring directory.
-spec dir(group()) -> binary().
dir(G) ->
    gen_server:call(G, dir, infinity).

%% ---- gen_server -------------------------------------------------------------------------

%% @private
init(Opts) ->
    process_flag(trap_exit, true),
    {Dir, Owned} = case maps:find(dir, Opts) of
                       {ok, D} -> {iolist_to_binary([D]), false};
                       error -> {new_dir(), true}
                   end,
    case erlmcp_flow_nif:pbft_group_start(Dir, maps:without([dir], Opts)) of
        {ok, H} ->
            {ok, #st{h = H, dir = Dir, owned_dir = Owned}};
        {error, Reason} ->
            Owned andalso remove_dir(Dir),
            {stop, {shutdown, Reason}}
    end.

%% @private
handle_call({nif, F, Args}, _From, S = #st{h = H}) ->
    {reply, apply(erlmcp_flow_nif, F, [H | Args]), S};
handle_call(dir, _From, S) ->
    {reply, S#st.dir, S}.

%% @private
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
handle_info(_Msg, S) ->
    {noreply, S}.

%% @private
terminate(_Reason, #st{h = H, dir = Dir, owned_dir = Owned}) ->
    _ = erlmcp_flow_nif:pbft_group_close(H),
    Owned andalso remove_dir(Dir),
    ok.

new_dir() ->
    Base = case filelib:is_dir("/dev/shm") of
               true -> "/dev/shm";
               false -> filename:basedir(user_cache, "erlmcp_flow")
           end,
    Name = io_lib:format("erlmcp_flow_pbft-~s-~b",
                         [os:getpid(), erlang:unique_integer([positive])]),
    iolist_to_binary(filename:join(Base, Name)).

remove_dir(Dir) ->
    _ = file:del_dir_r(Dir),
    true.

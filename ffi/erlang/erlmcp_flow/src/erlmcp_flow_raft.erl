%% @doc The original design's `erlmcp_flow_raft': a local Raft cluster of N node processes
%% over shared-memory rings, running the engine's replicated key-value store, over the C ABI
%% `emf_raft_cluster_*' (the Rust `replica::LocalCluster' and `RaftClient').
%%
%% ```
%% {ok, C} = erlmcp_flow_raft:start_cluster(3),
%% {ok, I} = erlmcp_flow_raft:submit_operation(C, {set, user_42, #{role => admin}}),
%% {ok, _} = erlmcp_flow_raft:wait_committed(C, I),
%% {ok, _, {value, #{role := admin}}} = erlmcp_flow_raft:submit(C, {get, user_42}),
%% {ok, Leader} = erlmcp_flow_raft:leader(C),
%% {ok, _ReadIndex, {value, _}} = erlmcp_flow_raft:read(C, user_42),
%% {ok, _Term} = erlmcp_flow_raft:transfer_leader(C, 2),
%% {ok, _} = erlmcp_flow_raft:change_membership(C, [{remove, 3}]),
%% {ok, #{voters := [1, 2]}} = erlmcp_flow_raft:membership(C),
%% ok = erlmcp_flow_raft:stop(C).
%% '''
%%
%% <h3>Where the logic is</h3>
%% Everything is the engine's: the nodes are `erlmcp-flow raft node' processes (found through
%% the option `bin', else the environment variable `EMF_BIN', else `PATH'); consensus, the
%% leader's batching (entries proposed within its `batch_window', 10 ms, go out as one
%% append), durable logs, redirects to the leader (a not-leader answer names it; the engine's
%% client follows it) and retries during an election, within the client's `timeout_ms'.
%% A cluster is a gen_server owning the engine handle (one call at a time, on a dirty I/O
%% scheduler); it monitors the process that started it and stops the nodes when that process
%% ends or when {@link stop/1} is called.
%%
%% <h3>Operations</h3>
%% `Op' is one of
%% <ul>
%% <li>`{set, Key, Value}': any terms (stored as `term_to_binary(T, [deterministic])');
%%     result `ok';</li>
%% <li>`{get, Key}': a linearizable read (ReadIndex at the leader, no log entry; the index
%%     is the read index); result `{value, Value}' or `not_found' — as {@link read/2};</li>
%% <li>`{cas, Key, Expected, New}': `Expected' is what `get' answers: `{value, V}' (the key
%%     must hold `V') or `not_found' (it must be absent); result `{Swapped, Previous}' with
%%     `Previous' as `get' answers;</li>
%% <li>a binary: an opaque entry, logged and committed as it is (the store answers that it
%%     is no key-value operation: the result is that answer's bytes).</li>
%% </ul>
%% {@link submit_operation/2} answers `{ok, Index}' (the original); {@link submit/2} also
%% the result.
%%
%% <h3>Leadership and membership</h3>
%% {@link transfer_leader/2} hands the leadership to a voter and answers `{ok, Term}' once
%% it leads. {@link change_membership/2} takes `[{add_voter, N} | {add_learner, N} |
%% {remove, N}]', made together by joint consensus, and answers `{ok, Index}' once the joint
%% configuration is applied (the leader leaves it on its own; {@link membership/1} tells).
%% A change while another is under way is retried within `timeout_ms'; the leader cannot
%% remove itself (`{invalid_argument, <<"... transfer leadership first ...">>}'). The node
%% processes stay as started: a removed node keeps running and can be added back (as a
%% learner, then a voter) with its data.
%%
%% <h3>Errors</h3>
%% `{error, {Status, Message}}' as every call of the NIF: `{timeout, _}' when no leader
%% committed within `timeout_ms' (e.g. no quorum: the operation may or may not be applied
%% later), `{closed, _}' when a node exits at start, `{io, _}' when the binary cannot be
%% started, `{not_found, _}' for a node that is not running or not a member,
%% `{invalid_argument, _}' for a bad option or operation. Not-leader answers do not surface:
%% the client goes to the leader they name.
%%
%% <h3>Throughput</h3>
%% One cluster serves one operation at a time: each waits for its commit (a Raft round
%% trip). Operations of many callers are not pipelined yet (the engine's pipelined client is
%% not on this branch); the leader still batches what several clusters or clients propose.
%%
%% <h3>Options</h3>
%% `dir' (default: a new directory under `/dev/shm', removed by {@link stop/1}; a given one
%% stays), `bin', `memory' (false: durable logs; true: in memory), `tick_ms' (10),
%% `election_tick' (10), `start_timeout_ms' (20000), `timeout_ms' (10000),
%% `attempt_timeout_ms' (500).
-module(erlmcp_flow_raft).
-behaviour(gen_server).

-export([start_cluster/1, start_cluster/2, stop/1, submit_operation/2, submit/2,
         append_entry/2, append_entries/2, append_entries/3, wait_committed/2, wait_committed/3,
         leader/1, term/1, members/1, stats/1, kill/2, restart/2, dir/1, read/2,
         transfer_leader/2, change_membership/2, membership/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([cluster/0, op/0, result/0, node_stats/0, member_change/0, membership/0]).

%% A membership change.
-type member_change() :: {add_voter | add_learner | remove, pos_integer()}.
%% The configuration the leader has applied (`joint': a change is half way; the voters are
%% then the incoming ones).
-type membership() :: #{voters := [pos_integer()], learners := [pos_integer()],
                        joint := boolean()}.

%% A cluster: the gen_server owning it.
-type cluster() :: pid().
-type op() :: {set, term(), term()} | {get, term()}
            | {cas, term(), {value, term()} | not_found, term()} | binary().
-type found() :: {value, term()} | not_found.
-type result() :: ok | found() | {boolean(), found()} | binary().
%% A node's status and counters, or why it did not answer.
-type node_stats() :: #{node := pos_integer(), leader => non_neg_integer(),
                        term => non_neg_integer(), commit => non_neg_integer(),
                        applied => non_neg_integer(), voters => [pos_integer()],
                        counters => #{atom() => non_neg_integer()},
                        error => {atom(), binary()}}.
-type error() :: {error, {atom(), binary() | term()}}.

%% The default wait of wait_committed/2, ms.
-define(WAIT_MS, 10000).

-record(st, {h :: erlmcp_flow_nif:raft(),
             owner :: reference(),
             dir :: binary(),
             owned_dir :: boolean()}).

%% @equiv start_cluster(N, #{})
-spec start_cluster(pos_integer()) -> {ok, cluster()} | error().
start_cluster(N) ->
    start_cluster(N, #{}).

%% @doc Starts `N' node processes and waits until they have elected a leader. The cluster
%% stops when the caller ends.
-spec start_cluster(pos_integer(), map()) -> {ok, cluster()} | error().
start_cluster(N, Opts) when is_integer(N), is_map(Opts) ->
    case gen_server:start(?MODULE, {N, Opts, self()}, []) of
        {ok, Pid} -> {ok, Pid};
        {error, {shutdown, Reason}} -> {error, Reason};
        {error, Reason} -> {error, Reason}
    end;
start_cluster(_, _) ->
    {error, {invalid_argument, <<"start_cluster: expected a node count and a map">>}}.

%% @doc Stops the nodes (SIGTERM, then SIGKILL after 2 s) and the server; removes the
%% directory when the cluster made it.
-spec stop(cluster()) -> ok.
stop(C) ->
    gen_server:stop(C).

%% @doc Replicates `Op' and waits until it is applied: `{ok, Index}', its log index.
-spec submit_operation(cluster(), op()) -> {ok, non_neg_integer()} | error().
submit_operation(C, Op) ->
    case submit(C, Op) of
        {ok, Index, _} -> {ok, Index};
        E -> E
    end.

%% @doc As {@link submit_operation/2}, with the operation's result.
-spec submit(cluster(), op()) -> {ok, non_neg_integer(), result()} | error().
submit(C, Op) ->
    case encode(Op) of
        {ok, E} -> gen_server:call(C, {submit, E}, infinity);
        Error -> Error
    end.

%% @doc Appends `Entry' (a binary as it is, any other term as `term_to_binary') to the
%% replicated log: `{ok, Index}' once committed (the original `append_entry').
-spec append_entry(cluster(), term()) -> {ok, non_neg_integer()} | error().
append_entry(C, Entry) when is_binary(Entry) ->
    gen_server:call(C, {nif, raft_append_entry, [Entry]}, infinity);
append_entry(C, Entry) ->
    append_entry(C, term_to_binary(Entry)).

%% @equiv append_entries(C, Entries, 64)
-spec append_entries(cluster(), [term()]) ->
    {ok, [non_neg_integer()]} | {error, {atom(), binary(), [non_neg_integer() | atom()]}} | error().
append_entries(C, Entries) ->
    append_entries(C, Entries, 64).

%% @doc Appends every entry of `Entries' (each as {@link append_entry/2} takes it) with up to
%% `Window' of them in flight at once, and answers when each has an answer: the pipelined
%% form of {@link append_entry/2} (one call, a few round trips, the leader batches them).
%% `{ok, Indexes}' in the order given (entries batched together share an index); when some
%% failed, `{error, {Reason, Message, PerEntry}}' where `PerEntry' holds each one's index or
%% the atom of its failure (`timeout': it may yet commit). `Window' 0 is an
%% `invalid_argument' error.
-spec append_entries(cluster(), [term()], non_neg_integer()) ->
    {ok, [non_neg_integer()]} | {error, {atom(), binary(), [non_neg_integer() | atom()]}} | error().
append_entries(C, Entries, Window) when is_list(Entries) ->
    Bins = [if is_binary(E) -> E; true -> term_to_binary(E) end || E <- Entries],
    gen_server:call(C, {nif, raft_submit_many, [Bins, Window]}, infinity).

%% @equiv wait_committed(C, Index, 10000)
-spec wait_committed(cluster(), non_neg_integer()) -> {ok, non_neg_integer()} | error().
wait_committed(C, Index) ->
    wait_committed(C, Index, ?WAIT_MS).

%% @doc Waits up to `TimeoutMs' until the leader has applied `Index': `{ok, Applied}'.
-spec wait_committed(cluster(), non_neg_integer(), non_neg_integer()) ->
          {ok, non_neg_integer()} | error().
wait_committed(C, Index, TimeoutMs) ->
    gen_server:call(C, {nif, raft_wait_committed, [Index, TimeoutMs]}, infinity).

%% @doc The current leader's id (waits for an election under way).
-spec leader(cluster()) -> {ok, pos_integer()} | error().
leader(C) ->
    case gen_server:call(C, {nif, raft_leader, []}, infinity) of
        {ok, {L, _}} -> {ok, L};
        E -> E
    end.

%% @doc The current leader's term.
-spec term(cluster()) -> {ok, non_neg_integer()} | error().
term(C) ->
    case gen_server:call(C, {nif, raft_leader, []}, infinity) of
        {ok, {_, T}} -> {ok, T};
        E -> E
    end.

%% @doc The node ids, `[1..N]'.
-spec members(cluster()) -> {ok, [pos_integer()]} | error().
members(C) ->
    gen_server:call(C, {nif, raft_members, []}, infinity).

%% @doc Every node's status and counters (the engine's names), or why it did not answer.
-spec stats(cluster()) -> {ok, [node_stats()]} | error().
stats(C) ->
    case gen_server:call(C, {nif, raft_stats, []}, infinity) of
        {ok, Text} -> {ok, [parse_line(L) || L <- binary:split(Text, <<"\n">>, [global]),
                                             L =/= <<>>]};
        E -> E
    end.

%% @doc SIGKILLs node `Node' (for tests: a crash).
-spec kill(cluster(), pos_integer()) -> ok | error().
kill(C, Node) ->
    gen_server:call(C, {nif, raft_kill, [Node]}, infinity).

%% @doc Starts node `Node' again from its data directory.
-spec restart(cluster(), pos_integer()) -> ok | error().
restart(C, Node) ->
    gen_server:call(C, {nif, raft_restart, [Node]}, infinity).

%% @doc A linearizable read of `Key' (what `{get, Key}' reads): the leader confirms with a
%% quorum that it still leads (ReadIndex; no log entry) and answers from its applied state.
%% `{ok, ReadIndex, {value, V} | not_found}'; `{query, Bytes}' sends raw query bytes to the
%% state machine and answers `{ok, ReadIndex, AnswerBytes}'.
-spec read(cluster(), term()) -> {ok, non_neg_integer(), found() | binary()} | error().
read(C, {query, Q}) when is_binary(Q) ->
    case gen_server:call(C, {nif, raft_read, [Q]}, infinity) of
        {ok, {I, A}} -> {ok, I, A};
        E -> E
    end;
read(C, Key) ->
    submit(C, {get, Key}).

%% @doc Hands the leadership to voter `To' and waits until it leads: `{ok, Term}'.
%% `{invalid_argument, _}' for a learner or a non-member, `{timeout, _}' when the transfer
%% did not finish (e.g. `To' is down).
-spec transfer_leader(cluster(), pos_integer()) -> {ok, non_neg_integer()} | error().
transfer_leader(C, To) ->
    gen_server:call(C, {nif, raft_transfer_leader, [To]}, infinity).

%% @doc Changes the configuration by joint consensus (see the module docs): `{ok, Index}'.
-spec change_membership(cluster(), [member_change()]) -> {ok, non_neg_integer()} | error().
change_membership(C, Changes) when is_list(Changes) ->
    try [{change_kind(K), N} || {K, N} <- Changes] of
        Encoded when length(Encoded) =:= length(Changes) ->
            gen_server:call(C, {nif, raft_change_membership, [Encoded]}, infinity);
        _ ->
            bad_changes()
    catch
        throw:bad_kind -> bad_changes()
    end;
change_membership(_, _) ->
    bad_changes().

%% @doc The configuration the leader has applied.
-spec membership(cluster()) -> {ok, membership()} | error().
membership(C) ->
    case gen_server:call(C, {nif, raft_membership, []}, infinity) of
        {ok, {Voters, Learners, Joint}} ->
            {ok, #{voters => Voters, learners => Learners, joint => Joint}};
        E -> E
    end.

change_kind(add_voter) -> 1;
change_kind(add_learner) -> 2;
change_kind(remove) -> 3;
change_kind(_) -> throw(bad_kind).

bad_changes() ->
    {error, {invalid_argument,
             <<"changes: expected a list of {add_voter | add_learner | remove, Node}">>}}.

%% @doc The cluster's directory (rings in `net/', logs in `node.I/', stderr in `node.I.log').
-spec dir(cluster()) -> binary().
dir(C) ->
    gen_server:call(C, dir, infinity).

%% ---- encoding --------------------------------------------------------------------------

enc(T) -> term_to_binary(T, [deterministic]).

encode({set, K, V}) -> {ok, {set, enc(K), enc(V)}};
encode({get, K}) -> {ok, {get, enc(K)}};
encode({cas, K, not_found, New}) -> {ok, {cas, enc(K), none, enc(New)}};
encode({cas, K, {value, V}, New}) -> {ok, {cas, enc(K), enc(V), enc(New)}};
encode({cas, _, _, _}) ->
    {error, {invalid_argument,
             <<"cas: Expected must be {value, V} or not_found (what get answers)">>}};
encode(B) when is_binary(B) -> {ok, {raw, B}};
encode(_) ->
    {error, {invalid_argument,
             <<"operation: expected {set, K, V}, {get, K}, {cas, K, Expected, New} or a binary">>}}.

%% Values written by another client as bytes that are no term come back as those bytes.
found(true, V) ->
    try {value, binary_to_term(V)}
    catch error:badarg -> {value, V}
    end;
found(false, _) -> not_found.

parse_line(Line) ->
    [First | Rest] = binary:split(Line, <<" ">>, [global]),
    <<"node=", Id/binary>> = First,
    Node = binary_to_integer(Id),
    case Rest of
        [<<"error=", Status/binary>> | Words] ->
            Message = iolist_to_binary(lists:join(<<" ">>, Words)),
            #{node => Node, error => {status_atom(Status), Message}};
        _ ->
            lists:foldl(fun(W, Acc) -> field(W, Acc) end, #{node => Node, counters => #{}}, Rest)
    end.

field(W, Acc) ->
    [K, V] = binary:split(W, <<"=">>),
    case K of
        <<"voters">> ->
            Acc#{voters => [binary_to_integer(X) || X <- binary:split(V, <<",">>, [global]),
                                                     X =/= <<>>]};
        _ when K =:= <<"leader">>; K =:= <<"term">>; K =:= <<"commit">>;
               K =:= <<"applied">> ->
            Acc#{binary_to_atom(K) => binary_to_integer(V)};
        _ ->
            #{counters := Cs} = Acc,
            Acc#{counters => Cs#{binary_to_atom(K) => binary_to_integer(V)}}
    end.

%% `EMF_ERR_TIMEOUT' -> timeout, as the NIF names statuses.
status_atom(<<"EMF_ERR_", Name/binary>>) -> binary_to_atom(string:lowercase(Name));
status_atom(Other) -> binary_to_atom(Other).

%% ---- gen_server -------------------------------------------------------------------------

%% @private
init({N, Opts, Owner}) ->
    Ref = erlang:monitor(process, Owner),
    {Dir, Owned} = case maps:find(dir, Opts) of
                       {ok, D} -> {iolist_to_binary([D]), false};
                       error -> {new_dir(), true}
                   end,
    NifOpts = maps:without([dir], Opts),
    case erlmcp_flow_nif:raft_cluster_start(N, Dir, NifOpts) of
        {ok, H} ->
            {ok, #st{h = H, owner = Ref, dir = Dir, owned_dir = Owned}};
        {error, Reason} ->
            Owned andalso remove_dir(Dir),
            {stop, {shutdown, Reason}}
    end.

%% @private
handle_call({submit, Op}, _From, S = #st{h = H}) ->
    {reply, do_submit(H, Op), S};
handle_call({nif, F, Args}, _From, S = #st{h = H}) ->
    {reply, apply(erlmcp_flow_nif, F, [H | Args]), S};
handle_call(dir, _From, S) ->
    {reply, S#st.dir, S}.

%% @private
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
handle_info({'DOWN', Ref, process, _, _}, S = #st{owner = Ref}) ->
    {stop, normal, S};
handle_info(_Msg, S) ->
    {noreply, S}.

%% @private
terminate(_Reason, #st{h = H, dir = Dir, owned_dir = Owned}) ->
    %% Also reached on a crash of this server (gen_server calls terminate): the nodes stop.
    _ = erlmcp_flow_nif:raft_cluster_close(H),
    Owned andalso remove_dir(Dir),
    ok.

do_submit(H, {set, K, V}) ->
    case erlmcp_flow_nif:raft_set(H, K, V) of
        {ok, I} -> {ok, I, ok};
        E -> E
    end;
do_submit(H, {get, K}) ->
    case erlmcp_flow_nif:raft_get(H, K) of
        {ok, {I, Found, V}} -> {ok, I, found(Found, V)};
        E -> E
    end;
do_submit(H, {cas, K, Expected, New}) ->
    case erlmcp_flow_nif:raft_cas(H, K, Expected, New) of
        {ok, {I, Swapped, Had, Prev}} -> {ok, I, {Swapped, found(Had, Prev)}};
        E -> E
    end;
do_submit(H, {raw, B}) ->
    case erlmcp_flow_nif:raft_submit(H, B) of
        {ok, {I, R}} -> {ok, I, R};
        E -> E
    end.

new_dir() ->
    Base = case filelib:is_dir("/dev/shm") of
               true -> "/dev/shm";
               false -> filename:basedir(user_cache, "erlmcp_flow")
           end,
    Name = io_lib:format("erlmcp_flow_raft-~s-~b",
                         [os:getpid(), erlang:unique_integer([positive])]),
    iolist_to_binary(filename:join(Base, Name)).

remove_dir(Dir) ->
    _ = file:del_dir_r(Dir),
    true.

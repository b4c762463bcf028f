%% @doc A counter as an erlmcp_flow_raft_node state machine, for the tests: an operation is a
%% 64-bit little-endian integer added to the sum, whose new value is the result; `<<"boom">>'
%% raises (the node stops); anything else is answered `<<"bad op">>'. `query(<<"sum">>)'.
-module(erlmcp_flow_raft_node_counter).
-behaviour(erlmcp_flow_raft_node).

-export([init/1, apply/3, snapshot/1, restore/1, query/2]).

-spec init(term()) -> {ok, {non_neg_integer(), non_neg_integer()}}.
init(_) ->
    {ok, {0, 0}}.

%% The state: {Sum, Applied}, Applied counting the operations this node applied itself.
-spec apply(pos_integer(), binary(), {non_neg_integer(), non_neg_integer()}) ->
          {binary(), {non_neg_integer(), non_neg_integer()}}.
apply(_Index, <<"boom">>, _State) ->
    error(boom);
apply(_Index, <<V:64/little>>, {Sum, Applied}) ->
    New = Sum + V,
    {<<New:64/little>>, {New, Applied + 1}};
apply(_Index, _Other, State) ->
    {<<"bad op">>, State}.

-spec snapshot({non_neg_integer(), non_neg_integer()}) -> binary().
snapshot({Sum, _}) ->
    <<Sum:64/little>>.

-spec restore(binary()) -> {ok, {non_neg_integer(), 0}} | {error, not_a_counter}.
restore(<<Sum:64/little>>) ->
    {ok, {Sum, 0}};
restore(_) ->
    {error, not_a_counter}.

-spec query(binary(), {non_neg_integer(), non_neg_integer()}) ->
          {ok, binary()} | {error, unknown_query}.
query(<<"sum">>, {Sum, _}) ->
    {ok, <<Sum:64/little>>};
query(_, _) ->
    {error, unknown_query}.

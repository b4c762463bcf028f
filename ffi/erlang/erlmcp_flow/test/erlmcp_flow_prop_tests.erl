%% @doc PropEr properties of the round trips of the original design's calls (the serializer's
%% term mapping has its own, in erlmcp_flow_serializer_tests): compression, shared state,
%% quantization, the LRU cache and the task queue. Each runs from an EUnit test, so
%% `rebar3 eunit' runs them; a failing property prints its shrunk counter-example.
-module(erlmcp_flow_prop_tests).

-include_lib("proper/include/proper.hrl").
-include_lib("eunit/include/eunit.hrl").

-define(NUMTESTS, 300).

check(Prop) ->
    ?assert(proper:quickcheck(Prop, [{numtests, ?NUMTESTS}, {to_file, user}])).

%%--------------------------------------------------------------------------------------------
%% Compression: decompress(compress_if_needed(B, T)) =:= B, whichever form it took; a
%% compressed form is smaller and is a standard zlib stream.
%%--------------------------------------------------------------------------------------------

compress_round_trip_test_() ->
    {timeout, 120, fun() -> check(prop_compress_round_trip()) end}.

prop_compress_round_trip() ->
    ?FORALL({Data, Threshold}, {payload(), oneof([default, range(0, 8192)])},
            begin
                Packed = case Threshold of
                             default -> erlmcp_flow_compressor:compress_if_needed(Data);
                             T -> erlmcp_flow_compressor:compress_if_needed(Data, T)
                         end,
                Back = erlmcp_flow_compressor:decompress(Packed),
                Form = case Packed of
                           {compressed, Z} ->
                               byte_size(Z) < byte_size(Data)
                                   andalso zlib:uncompress(Z) =:= Data;
                           {uncompressed, U} ->
                               U =:= Data
                       end,
                ?WHENFAIL(io:format("packed ~P~n", [Packed, 8]), Back =:= Data andalso Form)
            end).

%% Random bytes (incompressible) and repeated ones (compressible), up to ~40 KB.
payload() ->
    oneof([binary(),
           ?LET({Unit, N}, {non_empty(binary()), range(1, 2000)}, binary:copy(Unit, N))]).

%%--------------------------------------------------------------------------------------------
%% Shared state: read_shared_state(share_state(K, T)) =:= {ok, T} for any term.
%%--------------------------------------------------------------------------------------------

shared_state_round_trip_test_() ->
    {timeout, 120, fun shared_state_round_trip/0}.

shared_state_round_trip() ->
    Base = case os:getenv("TMPDIR") of false -> "/tmp"; "" -> "/tmp"; D -> D end,
    Dir = filename:join(Base, "erlmcp_flow_prop_" ++ os:getpid() ++ "_"
                        ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    {ok, Store} = erlmcp_flow:open_store(<<"prop">>, #{dir => Dir}),
    try
        check(?FORALL({Key, Term}, {key(), any()},
                      begin
                          {ok, Ref} = erlmcp_flow:share_state(Store, Key, Term),
                          Read = erlmcp_flow:read_shared_state(Store, Ref),
                          Lookup = erlmcp_flow:lookup_state(Store, Key),
                          ok = erlmcp_flow:release_state(Store, Ref),
                          Gone = erlmcp_flow:read_shared_state(Store, Ref),
                          Read =:= {ok, Term} andalso Lookup =:= {ok, Ref}
                              andalso Gone =:= {error, not_found}
                      end))
    after
        _ = file:del_dir_r(Dir)
    end.

key() ->
    ?LET(Chars, non_empty(list(oneof([range($a, $z), range($0, $9), $_]))),
         list_to_binary(Chars)).

%%--------------------------------------------------------------------------------------------
%% Quantization: every value of dequantize_vector(quantize_vector(V)) is within half a step
%% (scale / 2) of V's (as float32); quantize_vector's map composes with the distance.
%%--------------------------------------------------------------------------------------------

quantization_round_trip_test_() ->
    {timeout, 120, fun() -> check(prop_quantization_round_trip()) end}.

prop_quantization_round_trip() ->
    ?FORALL(V, non_empty(list(float(-1.0e6, 1.0e6))),
            begin
                Q = erlmcp_flow_quantization:quantize_vector(V),
                #{vector := Codes, scale := Scale} = Q,
                Back = erlmcp_flow_quantization:dequantize_vector(Q),
                Back2 = erlmcp_flow_quantization:dequantize_vector(Codes, Scale),
                Self = erlmcp_flow_quantization:cosine_distance_quantized(Q, Q),
                Within = lists:all(fun({X, Y}) -> abs(X - Y) =< Scale / 2 * 1.0001 + abs(X) * 1.0e-6
                                   end, lists:zip(V, Back)),
                SelfOk = case lists:all(fun(C) -> C =:= 0 end, binary_to_list(Codes)) of
                             true -> is_float(Self);           % a zero vector: no direction
                             false -> abs(Self) < 1.0e-5
                         end,
                ?WHENFAIL(io:format("q ~p~nback ~p~nself ~p~n", [Q, Back, Self]),
                          byte_size(Codes) =:= length(V) andalso Back =:= Back2
                              andalso Within andalso SelfOk)
            end).

%%--------------------------------------------------------------------------------------------
%% LRU cache: after puts (keys any terms, overwrites included) into a cache large enough,
%% get gives the last value put under each key, and miss for keys never put.
%%--------------------------------------------------------------------------------------------

cache_round_trip_test_() ->
    {timeout, 120, fun() -> check(prop_cache_round_trip()) end}.

prop_cache_round_trip() ->
    ?FORALL(Puts, list({any(), any()}),
            begin
                {ok, Cache} = erlmcp_flow_lru_cache:new(#{capacity => 1000, shards => 1,
                                                           ttl => infinity}),
                [ok = erlmcp_flow_lru_cache:put(Cache, K, V) || {K, V} <- Puts],
                Expected = lists:foldl(fun({K, V}, M) -> M#{K => V} end, #{}, Puts),
                Hits = maps:fold(fun(K, V, Acc) ->
                                         Acc andalso erlmcp_flow_lru_cache:get(Cache, K) =:= {ok, V}
                                 end, true, Expected),
                Absent = make_ref(),
                Hits andalso erlmcp_flow_lru_cache:get(Cache, Absent) =:= miss
            end).

%%--------------------------------------------------------------------------------------------
%% Task queue: what goes in comes out, each task once, by priority then FIFO; nothing is
%% lost at the limits (every task is queued or handed back).
%%--------------------------------------------------------------------------------------------

queue_round_trip_test_() ->
    {timeout, 120, fun() -> check(prop_queue_round_trip()) end}.

prop_queue_round_trip() ->
    ?FORALL({Tasks, Primary, Overflow},
            {list({any(), oneof([critical, high, normal, low])}), range(1, 20), range(0, 20)},
            begin
                {ok, Q} = erlmcp_flow_queue:new(#{max_primary => Primary,
                                                   max_overflow => Overflow}),
                Numbered = lists:zip(lists:seq(1, length(Tasks)), Tasks),
                Answers = [{N, P, erlmcp_flow_queue:enqueue(Q, {N, T}, P)}
                           || {N, {T, P}} <- Numbered],
                Queued = [{N, P} || {N, P, A} <- Answers, A =:= ok orelse A =:= backpressure],
                Rejected = [N || {N, _, {rejected, {N, _}}} <- Answers],
                {ok, Left} = erlmcp_flow_queue:close(Q),
                Out = [{N, P} || {{N, _}, P} <- Left],
                Rank = fun(critical) -> 0; (high) -> 1; (normal) -> 2; (low) -> 3 end,
                Expected = lists:sort(fun({N1, P1}, {N2, P2}) -> {Rank(P1), N1} =< {Rank(P2), N2}
                                      end, Queued),
                ?WHENFAIL(io:format("answers ~p~nout ~p~n", [Answers, Out]),
                          Out =:= Expected
                              andalso length(Queued) + length(Rejected) =:= length(Tasks)
                              andalso length(Queued) =< Primary + Overflow)
            end).

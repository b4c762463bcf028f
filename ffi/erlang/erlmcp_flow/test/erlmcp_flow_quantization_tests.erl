%% EUnit tests of erlmcp_flow_quantization: the original design's shapes (quantize_vector's
%% map, dequantize_vector and cosine_distance_quantized of it, answers bare) and their
%% compositions; then the engine-level forms: quantization round trips within half a step
%% (scale / 2), codes and scales, lists and binaries alike, distances against references
%% computed here in doubles (float32, half-float and int8 vectors), the exact int8 dot product,
%% results that are not finite, large and unaligned vectors, and bad input.
%%
%% Vectors are random with a fixed seed (rand:seed(exsss, ...)).
-module(erlmcp_flow_quantization_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-define(Q, erlmcp_flow_quantization).
-define(N, erlmcp_flow_nif).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

vectors(Count, Dim, Seed) ->
    _ = rand:seed(exsss, Seed),
    [[(rand:uniform() * 2 - 1) * rand:uniform() * 10 || _ <- lists:seq(1, Dim)]
     || _ <- lists:seq(1, Count)].

f32(V) ->
    << <<X:32/float-native>> || X <- V >>.

%% The values of V as float32 (what the engine sees).
as_f32(V) ->
    [X || <<X:32/float-native>> <= f32(V)].

codes(Bin) ->
    [C || <<C:8/signed>> <= Bin].

unaligned(Bin) ->
    <<_:8, Sub/binary>> = <<0, Bin/binary>>,
    Sub.

invalid(R) ->
    ?assertMatch({error, {invalid_argument, <<_/binary>>}}, R).

dot(A, B) -> lists:sum([X * Y || {X, Y} <- lists:zip(A, B)]).
norm(A) -> math:sqrt(dot(A, A)).

reference(cosine, A, B) -> 1 - dot(A, B) / (norm(A) * norm(B));
reference(dot, A, B) -> 1 - dot(A, B);
reference(l2sq, A, B) -> lists:sum([(X - Y) * (X - Y) || {X, Y} <- lists:zip(A, B)]).

close_to(Expected, Got, Tolerance) ->
    ?assert(abs(Expected - Got) =< Tolerance * max(1.0, abs(Expected))).

%%--------------------------------------------------------------------------------------------
%% The original design's shapes
%%--------------------------------------------------------------------------------------------

quantize_vector_map_test() ->
    Q = ?Q:quantize_vector([0.1, -0.05, 0.0, 0.2]),
    #{vector := Codes, scale := Scale, min := Min, max := Max, dim := 4} = Q,
    ?assertEqual([64, -32, 0, 127], codes(Codes)),
    ?assertEqual({ok, {Codes, Scale}}, ?Q:quantize([0.1, -0.05, 0.0, 0.2])),
    close_to(-32 * Scale, Min, 1.0e-6),
    close_to(0.2, Max, 1.0e-6),
    ?assertEqual(Q, ?Q:quantize_vector(f32([0.1, -0.05, 0.0, 0.2]))),
    ?assertEqual(#{vector => <<>>, scale => 0.0, min => 0.0, max => 0.0, dim => 0},
                 ?Q:quantize_vector([])),
    ?assertMatch(#{vector := <<0, 0>>, scale := 0.0, min := 0.0, max := 0.0},
                 ?Q:quantize_vector([0.0, 0])).

%% dequantize_vector(quantize_vector(V), Metadata) is V within half a step, for Metadata the
%% map or its scale, and dequantize_vector/1 of the map alike.
dequantize_composes_test() ->
    lists:foreach(
      fun(V) ->
              Q = #{scale := Scale, vector := Codes} = ?Q:quantize_vector(V),
              Back = ?Q:dequantize_vector(Q, Q),
              ?assertEqual(length(V), length(Back)),
              [?assert(abs(X - Y) =< Scale / 2 + abs(X) * 1.0e-6)
               || {X, Y} <- lists:zip(as_f32(V), Back)],
              ?assertEqual(Back, ?Q:dequantize_vector(Q, Scale)),
              ?assertEqual(Back, ?Q:dequantize_vector(Q)),
              ?assertEqual(Back, ?Q:dequantize_vector(Codes, Q)),
              ?assertEqual(Back, ?Q:dequantize_vector(codes(Codes), Scale)),
              ?assertEqual({ok, Back}, ?Q:dequantize(Codes, Scale)),
              #{min := Min, max := Max} = Q,
              ?assertEqual(lists:min(Back), Min),
              ?assertEqual(lists:max(Back), Max)
      end,
      vectors(20, 16, {31, 32, 33}) ++ vectors(2, 768, {34, 35, 36})).

%% cosine_distance_quantized(quantize_vector(A), quantize_vector(B)) is a float close to the
%% exact cosine distance, the same as of the bare codes.
cosine_distance_quantized_composes_test() ->
    Vs = vectors(20, 64, {37, 38, 39}),
    [begin
         QA = ?Q:quantize_vector(A),
         QB = ?Q:quantize_vector(B),
         D = ?Q:cosine_distance_quantized(QA, QB),
         ?assert(is_float(D)),
         {ok, Exact} = ?Q:distance(cosine, A, B),
         ?assert(abs(D - Exact) < 0.02),
         ?assertEqual(D, ?Q:cosine_distance_quantized(maps:get(vector, QA), QB)),
         ?assertEqual({ok, D}, ?Q:cosine_distance_i8(QA, QB)),
         {ok, {CA, _}} = ?Q:quantize(A),
         ?assertEqual(D, ?Q:cosine_distance_quantized(CA, codes(maps:get(vector, QB)))),
         ?assertEqual(abs(?Q:cosine_distance_quantized(QA, QA)) < 1.0e-5, true)
     end || {A, B} <- lists:zip(lists:sublist(Vs, 10), lists:nthtail(10, Vs))],
    %% dot_i8 takes the map too.
    Q = ?Q:quantize_vector([1.0, -1.0]),
    ?assertEqual({ok, 2 * 127 * 127}, ?Q:dot_i8(Q, Q)).

original_shapes_bad_input_test() ->
    QuantMod = untyped(?Q), % contracts broken on purpose: see untyped/1
    invalid(QuantMod:quantize_vector([1.0, x])),
    invalid(QuantMod:quantize_vector(<<0, 0, 192, 127>>)),          % NaN
    invalid(QuantMod:quantize_vector(not_a_vector)),
    Q = QuantMod:quantize_vector([1.0, 2.0]),
    invalid(QuantMod:dequantize_vector(Q, scale)),
    invalid(QuantMod:dequantize_vector(Q, #{})),                   % no scale
    invalid(QuantMod:dequantize_vector(Q, 1.0e39)),
    invalid(QuantMod:dequantize_vector(#{vector => [300], scale => 1.0})),
    invalid(QuantMod:dequantize_vector(<<1, 2>>)),                 % codes need a scale
    invalid(QuantMod:dequantize_vector({<<1>>, 1.0})),
    invalid(QuantMod:dequantize_vector(#{scale => 1.0}, 1.0)),      % no codes
    invalid(QuantMod:cosine_distance_quantized(Q, QuantMod:quantize_vector([1.0]))),
    invalid(QuantMod:cosine_distance_quantized(Q, #{scale => 1.0})),
    invalid(QuantMod:cosine_distance_quantized(a, Q)).

%%--------------------------------------------------------------------------------------------
%% Quantization
%%--------------------------------------------------------------------------------------------

%% Every value comes back within half a quantization step (scale / 2), for vectors of many
%% lengths, as lists and as binaries.
round_trip_within_half_a_step_test() ->
    lists:foreach(
      fun(V) ->
              {ok, {Codes, Scale}} = ?Q:quantize(V),
              ?assertEqual({ok, {Codes, Scale}}, ?Q:quantize(f32(V))),
              ?assertEqual(length(V), byte_size(Codes)),
              ?assert(is_float(Scale) andalso Scale > 0),
              %% The largest magnitude maps to 127.
              ?assertEqual(127, lists:max([abs(C) || C <- codes(Codes)])),
              {ok, Back} = ?Q:dequantize(Codes, Scale),
              ?assertEqual(length(V), length(Back)),
              [?assert(abs(X - Y) =< Scale / 2 + abs(X) * 1.0e-6)
               || {X, Y} <- lists:zip(as_f32(V), Back)],
              %% Back is Scale · Code, in float32.
              ?assertEqual(as_f32([C * Scale || C <- codes(Codes)]), Back)
      end,
      vectors(50, 16, {1, 2, 3}) ++ vectors(5, 1, {4, 5, 6}) ++ vectors(5, 768, {7, 8, 9})).

quantize_examples_test() ->
    {ok, {Codes, Scale}} = ?Q:quantize([0.1, -0.05, 0.0, 0.2]),
    ?assertEqual([64, -32, 0, 127], codes(Codes)),
    close_to(0.2 / 127, Scale, 1.0e-6),
    %% A zero vector: all codes 0, scale 0.0; an empty one.
    ?assertEqual({ok, {<<0, 0, 0>>, 0.0}}, ?Q:quantize([0, 0.0, -0.0])),
    ?assertEqual({ok, {<<>>, 0.0}}, ?Q:quantize([])),
    ?assertEqual({ok, []}, ?Q:dequantize(<<>>, 1.0)),
    %% Integers are numbers; codes as lists and as {Codes, Scale}; an integer scale.
    {ok, {C2, S2}} = ?Q:quantize([1, -2, 4]),
    ?assertEqual([32, -64, 127], codes(C2)),
    ?assertEqual(?Q:dequantize(C2, S2), ?Q:dequantize(codes(C2), S2)),
    ?assertEqual({ok, [2.0, -4.0, 254.0]}, ?Q:dequantize([1, -2, 127], 2)),
    %% Extremes of float32 quantize without overflow.
    {ok, {C3, S3}} = ?Q:quantize([3.4e38, -3.4e38, 1.0]),
    ?assertEqual([127, -127, 0], codes(C3)),
    close_to(3.4e38 / 127, S3, 1.0e-6).

%% Vectors of 64 KiB and more (a dirty scheduler), and binaries at odd addresses.
large_and_unaligned_vectors_test() ->
    [V] = vectors(1, 40000, {10, 11, 12}),
    Bin = f32(V),
    {ok, {Codes, Scale}} = ?Q:quantize(Bin),
    ?assertEqual({ok, {Codes, Scale}}, ?Q:quantize(unaligned(Bin))),
    {ok, Back} = ?Q:dequantize(Codes, Scale),
    ?assertEqual({ok, Back}, ?Q:dequantize(unaligned(Codes), Scale)),
    {ok, D} = ?Q:distance(l2sq, Bin, f32(Back)),
    ?assertEqual({ok, D}, ?Q:distance(l2sq, unaligned(Bin), unaligned(f32(Back)))),
    ?assert(D =< 40000 * (Scale / 2) * (Scale / 2) * 1.01),
    {ok, Cos} = ?Q:cosine_distance_i8(Codes, unaligned(Codes)),
    ?assert(abs(Cos) < 1.0e-5),
    {ok, Dot} = ?Q:dot_i8(unaligned(Codes), Codes),
    ?assertEqual(lists:sum([C * C || C <- codes(Codes)]), Dot),
    H = << <<X:16/float-native>> || X <- lists:sublist(V, 1000) >>,
    ?assertEqual(?Q:distance_f16(dot, H, H), ?Q:distance_f16(dot, unaligned(H), unaligned(H))).

%%--------------------------------------------------------------------------------------------
%% Distances
%%--------------------------------------------------------------------------------------------

float_distances_match_references_test() ->
    Vs = vectors(40, 32, {13, 14, 15}),
    Pairs = lists:zip(lists:sublist(Vs, 20), lists:nthtail(20, Vs)),
    [begin
         A32 = as_f32(A), B32 = as_f32(B),
         {ok, D} = ?Q:distance(Metric, A, B),
         close_to(reference(Metric, A32, B32), D, 1.0e-4),
         ?assertEqual({ok, D}, ?Q:distance(Metric, f32(A), f32(B))),
         ?assertEqual({ok, D}, ?Q:distance(Metric, A, f32(B)))
     end || {A, B} <- Pairs, Metric <- [cosine, dot, l2sq]],
    %% Identical vectors.
    [A | _] = Vs,
    {ok, Zero} = ?Q:distance(l2sq, A, A),
    ?assertEqual(0.0, Zero),
    {ok, Same} = ?Q:distance(cosine, A, A),
    ?assert(abs(Same) < 1.0e-6),
    ?assertEqual({ok, 0.0}, ?Q:distance(dot, [1.0, 0.0], [1.0, 0.0])),
    ?assertEqual({ok, 0.0}, ?Q:distance(l2sq, [], [])).

half_float_distances_test() ->
    [A, B] = [[X / 10 || X <- V] || V <- vectors(2, 64, {16, 17, 18})],
    Half = fun(V) -> [X || <<X:16/float-native>> <= << <<Y:16/float-native>> || Y <- V >>] end,
    [begin
         {ok, D} = ?Q:distance_f16(Metric, A, B),
         close_to(reference(Metric, Half(A), Half(B)), D, 1.0e-4),
         Bin = fun(V) -> << <<X:16/float-native>> || X <- V >> end,
         ?assertEqual({ok, D}, ?Q:distance_f16(Metric, Bin(A), Bin(B)))
     end || Metric <- [cosine, dot, l2sq]],
    invalid(?Q:distance_f16(l2sq, [70000.0], [1.0])),          % beyond the half-float range
    invalid(?Q:distance_f16(l2sq, <<1, 2, 3>>, <<1, 2, 3>>)),
    %% NaN and infinity, which only binaries can hold.
    invalid(?Q:distance_f16(l2sq, <<16#7E00:16/native>>, <<16#3C00:16/native>>)),
    invalid(?Q:distance_f16(l2sq, <<16#3C00:16/native>>, <<16#7C00:16/native>>)).

%% The int8 cosine distance estimates the float one; the scales cancel.
quantized_distances_test() ->
    Vs = vectors(40, 64, {19, 20, 21}),
    Pairs = lists:zip(lists:sublist(Vs, 20), lists:nthtail(20, Vs)),
    [begin
         {ok, {CA, SA} = QA} = ?Q:quantize(A),
         {ok, {CB, _} = QB} = ?Q:quantize(B),
         {ok, D} = ?Q:cosine_distance_i8(CA, CB),
         {ok, Exact} = ?Q:distance(cosine, A, B),
         ?assert(abs(D - Exact) < 0.02),
         ?assertEqual({ok, D}, ?Q:cosine_distance_i8(QA, QB)),
         ?assertEqual({ok, D}, ?Q:cosine_distance_i8(codes(CA), CB)),
         %% Scaling a vector changes its scale, not its codes.
         {ok, {CA, SA2}} = ?Q:quantize([X * 4 || X <- A]),
         close_to(SA * 4, SA2, 1.0e-6),
         %% The dot product of the codes is exact, and times both scales estimates a·b.
         {ok, Dot} = ?Q:dot_i8(CA, CB),
         ?assertEqual(lists:sum([X * Y || {X, Y} <- lists:zip(codes(CA), codes(CB))]), Dot),
         ?assertEqual({ok, Dot}, ?Q:dot_i8(QA, codes(CB)))
     end || {A, B} <- Pairs],
    %% Extremes: every code -128 or 127.
    ?assertEqual({ok, 127 * 127 * 1000}, ?Q:dot_i8(binary:copy(<<127>>, 1000),
                                                   binary:copy(<<127>>, 1000))),
    ?assertEqual({ok, -128 * 127 * 3}, ?Q:dot_i8([-128, -128, -128], [127, 127, 127])),
    ?assertEqual({ok, 0}, ?Q:dot_i8(<<>>, <<>>)).

%% Distances too large for float arithmetic come as atoms, never as an exception.
non_finite_distances_test() ->
    Big = [3.0e38, 3.0e38],
    ?assertEqual({ok, infinity}, ?Q:distance(l2sq, Big, [-3.0e38, -3.0e38])),
    ?assertEqual({ok, neg_infinity}, ?Q:distance(dot, Big, Big)),
    {ok, Cos} = ?Q:distance(cosine, Big, Big),
    ?assert(is_float(Cos) orelse Cos =:= nan).

%%--------------------------------------------------------------------------------------------
%% Bad input
%%--------------------------------------------------------------------------------------------

bad_input_test() ->
    %% The calls below break contracts on purpose: made through a variable module
    %% name, Dialyzer does not check them (see erlmcp_flow_test_util:untyped/1).
    QuantMod = untyped(?Q),
    NifMod = untyped(?N),
    NaN = <<0, 0, 192, 127>>,
    Inf = <<0, 0, 128, 127>>,
    One = <<1.0:32/float-native>>,
    %% NaN and infinite values, which only binaries can hold.
    invalid(QuantMod:quantize(<<One/binary, NaN/binary>>)),
    invalid(QuantMod:quantize(<<Inf/binary, One/binary>>)),
    %% Numbers beyond float32, other terms, improper lists, odd binaries.
    invalid(QuantMod:quantize([1.0e39])),
    invalid(QuantMod:quantize([-1.0e39])),
    invalid(QuantMod:quantize([1 bsl 200])),
    invalid(QuantMod:quantize([1.0, x])),
    invalid(QuantMod:quantize([1.0 | 2.0])),
    invalid(QuantMod:quantize(vector)),
    invalid(QuantMod:quantize({1.0, 2.0})),
    invalid(QuantMod:quantize(<<1, 2, 3>>)),
    invalid(QuantMod:quantize(<<1:3>>)),
    %% Codes and scales.
    invalid(QuantMod:dequantize([128], 1.0)),
    invalid(QuantMod:dequantize([-129], 1.0)),
    invalid(QuantMod:dequantize([1.0], 1.0)),
    invalid(QuantMod:dequantize(codes, 1.0)),
    invalid(QuantMod:dequantize(<<1>>, 1.0e39)),
    invalid(QuantMod:dequantize(<<1>>, scale)),
    invalid(NifMod:dequantize_i8(<<1>>, 1)),                 % the NIF takes floats only
    invalid(NifMod:dequantize_i8(<<1>>, 1.0e300)),
    invalid(NifMod:dequantize_i8([1], 1.0)),
    %% Distances: unknown metrics, lengths that differ, wrong terms.
    invalid(QuantMod:distance(euclid, [1.0], [1.0])),
    invalid(QuantMod:distance("cosine", [1.0], [1.0])),
    invalid(QuantMod:distance(cosine, [1.0, 2.0], [1.0])),
    invalid(QuantMod:distance(cosine, f32([1.0, 2.0]), f32([1.0]))),
    invalid(QuantMod:distance(cosine, [1.0], b)),
    invalid(QuantMod:distance(cosine, a, [1.0])),
    invalid(QuantMod:distance_f16(cosine, [1.0], [1.0, 2.0])),
    invalid(QuantMod:distance_f16(cosine, x, [1.0])),
    invalid(QuantMod:cosine_distance_i8(<<1, 2>>, <<1>>)),
    invalid(QuantMod:cosine_distance_i8([1, 2], [1, 200])),
    invalid(QuantMod:cosine_distance_i8(a, <<1>>)),
    invalid(QuantMod:dot_i8(<<1, 2>>, [1])),
    invalid(QuantMod:dot_i8(<<1>>, {<<1>>, scale})),
    %% The NIF refuses what the module would not send.
    invalid(NifMod:quantize_f32([1.0])),
    invalid(NifMod:quantize_f32(<<1, 2, 3>>)),
    invalid(NifMod:distance_f32(cosine, [1.0], [1.0])),
    invalid(NifMod:distance_f32(cosine, <<1, 2, 3, 4, 5>>, <<1, 2, 3, 4, 5>>)),
    invalid(NifMod:distance_f32(7, One, One)),
    invalid(NifMod:distance_f16(l2sq, <<1>>, <<1>>)),
    invalid(NifMod:cosine_distance_i8([1], <<1>>)),
    invalid(NifMod:dot_i8(<<1>>, [1])),
    invalid(QuantMod:distance(l2sq, NaN, One)),
    invalid(QuantMod:distance(cosine, One, Inf)).

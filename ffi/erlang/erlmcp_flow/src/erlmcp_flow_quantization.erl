%% @doc The vector kernels of the original design over the engine's `emf_quantize_f32',
%% `emf_dequantize_i8', `emf_distance_f32'/`_f16', `emf_cosine_distance_i8' and `emf_dot_i8':
%% int8 quantization with a per-vector scale, and distances between float, half-float and
%% int8 vectors (the kernels of erlmcp_flow_hnsw, SIMD where the CPU has it).
%%
%% ```
%% Q = erlmcp_flow_quantization:quantize_vector([0.1, -0.05, 0.0, 0.2]),
%% #{vector := <<64, -32:8/signed, 0, 127>>, scale := Scale} = Q,  % X ≈ Scale · Code
%% [_, _, _, _] = erlmcp_flow_quantization:dequantize_vector(Q, Q),
%% D = erlmcp_flow_quantization:cosine_distance_quantized(Q, Q),     % D ≈ 0.0
%% {ok, {Codes, Scale}} = erlmcp_flow_quantization:quantize([0.1, -0.05, 0.0, 0.2]),
%% {ok, 21249} = erlmcp_flow_quantization:dot_i8(Codes, Q),
%% {ok, 0.0} = erlmcp_flow_quantization:distance(l2sq, [1.0, 2.0], <<1.0:32/float-native,
%%                                                                   2.0:32/float-native>>).
%% '''
%%
%% <h3>The original design's calls and ours</h3>
%% <ul>
%% <li>`Int8Vec = quantize_vector(Float32Vec)': the original's sketch returns
%% `#{vector => Binary, min, max, scale}'; ours answers the map `quantized()' bare:
%% `vector' the int8 codes (a binary), `scale' (each value is about `scale · code'; the
%% quantization is symmetric, so no offset), `min' and `max' the smallest and largest values
%% the codes stand for (`scale · code'), `dim' the number of values.</li>
%% <li>`dequantize_vector(Int8Vec, Metadata) -> Float32Vector': `Int8Vec' a quantized map
%% (or bare codes), `Metadata' the map again (its `scale' is used) or a scale; also
%% `dequantize_vector(Q)' of a map alone. The floats come as a bare list.</li>
%% <li>`cosine_distance_quantized(V1, V2) -> Distance': of two quantized maps (or codes),
%% the distance bare.</li>
%% <li>Errors are `{error, {invalid_argument, Message}}' for all three, never an exception.
%% The engine-level forms answer `{ok, _}': `quantize/1' (`{ok, {Codes, Scale}}'),
%% `dequantize/2' (`{ok, Floats}'), `cosine_distance_i8/2' (`{ok, Distance}'), with
%% `dot_i8/2', `distance/3' and `distance_f16/3'.</li>
%% </ul>
%%
%% <h3>Vectors</h3>
%% Float vectors are lists of numbers within the float32 range or binaries of native-endian
%% float32 values (`<<X:32/float-native, ...>>'); half-float vectors (`distance_f16/3') lists
%% of numbers within the half-float range or binaries of native-endian IEEE binary16 values
%% (`<<X:16/float-native, ...>>'); int8 codes binaries (one signed byte a code), lists of
%% integers from -128 to 127, the map that `quantize_vector/1' returns, or the
%% `{Codes, Scale}' of `quantize/1'. The
%% two vectors of a distance have the same length. NaN and infinite values (possible only in
%% binaries) are refused; a distance that is not finite (float overflow on huge values) comes
%% as `infinity', `neg_infinity' or `nan'.
%%
%% <h3>Errors and scheduling</h3>
%% Bad arguments give `{error, {invalid_argument, Message}}', never an exception. Lists are
%% converted in Erlang; vectors of 64 KiB and more are handled on a dirty CPU scheduler.
-module(erlmcp_flow_quantization).

-export([quantize_vector/1, dequantize_vector/1, dequantize_vector/2,
         cosine_distance_quantized/2, quantize/1, dequantize/2, cosine_distance_i8/2, dot_i8/2,
         distance/3, distance_f16/3]).

-export_type([vector/0, codes/0, quantized/0, metric/0, distance/0]).

-type vector() :: [number()] | binary().
%% A list of numbers or a binary of native-endian float32 values.
-type codes() :: binary() | [-128..127] | quantized() | {binary(), float()}.
%% int8 codes: a binary, a list of integers, a `quantized()' map from `quantize_vector/1', or
%% `{Codes, Scale}' from `quantize/1'.
-type quantized() :: #{vector := binary(), scale := float(), min := float(),
                       max := float(), dim := non_neg_integer()}.
%% A quantized vector: the codes, the scale, the smallest and largest values they stand for,
%% their number.
-type metric() :: erlmcp_flow_nif:metric().
-type distance() :: erlmcp_flow_nif:distance().
-type error() :: erlmcp_flow_nif:error().

-define(V, erlmcp_flow_vector).
%% The largest float32.
-define(F32_MAX, 3.4028234663852886e38).

%% @doc The original design's `quantize_vector/1': `Vector' quantized, as the map
%% `#{vector := Codes, scale := Scale, min := Min, max := Max, dim := Dim}' (bare; see
%% `quantize/1' for the codes and the scale).
-spec quantize_vector(vector()) -> quantized() | error().
quantize_vector(Vector) ->
    case quantize(Vector) of
        {ok, {Codes, Scale}} ->
            {Lo, Hi} = code_range(Codes),
            #{vector => Codes, scale => Scale, min => f32(Lo * Scale), max => f32(Hi * Scale),
              dim => byte_size(Codes)};
        {error, _} = Error ->
            Error
    end.

%% @doc The values a quantized map stands for: `dequantize_vector(Q, Q)'.
-spec dequantize_vector(quantized()) -> [float()] | error().
dequantize_vector(#{scale := _} = Q) ->
    dequantize_vector(Q, Q);
dequantize_vector(_Q) ->
    ?V:invalid("expected a quantized vector (quantize_vector/1's map); give codes a scale "
               "with dequantize_vector/2").

%% @doc The original design's `dequantize_vector(Int8Vec, Metadata)': the values `Codes'
%% (a quantized map, or any `codes()') stand for, `Scale · Code' each, as a bare list of
%% floats (float32 precision). `Metadata' is a quantized map (its `scale') or a scale.
-spec dequantize_vector(codes(), quantized() | number()) -> [float()] | error().
dequantize_vector(Codes, #{scale := Scale}) ->
    dequantize_vector(Codes, Scale);
dequantize_vector(Codes, Scale) ->
    case dequantize(Codes, Scale) of
        {ok, Floats} -> Floats;
        {error, _} = Error -> Error
    end.

%% @doc The original design's `cosine_distance_quantized/2': the cosine distance `1 - cos'
%% between two int8 code vectors (quantized maps or any `codes()'; their scales cancel),
%% bare.
-spec cosine_distance_quantized(codes(), codes()) -> distance() | error().
cosine_distance_quantized(A, B) ->
    case cosine_distance_i8(A, B) of
        {ok, D} -> D;
        {error, _} = Error -> Error
    end.

%% @doc int8 codes and a scale such that each value is about `Scale · Code': the largest
%% magnitude maps to ±127 (a zero vector has scale 0.0). NaN and infinite values are refused.
%% (The engine's form; `quantize_vector/1' gives the original design's map.)
-spec quantize(vector()) -> {ok, {Codes :: binary(), Scale :: float()}} | error().
quantize(Vector) ->
    case ?V:f32(Vector, "vector") of
        {ok, Bin} -> erlmcp_flow_nif:quantize_f32(Bin);
        {error, Text} -> ?V:invalid(Text)
    end.

%% @doc The values that `Codes' stand for, `Scale · Code' each, as floats (float32 precision)
%% (the engine's form of `dequantize_vector/2').
-spec dequantize(codes(), number()) -> {ok, [float()]} | error().
dequantize(Codes, Scale) when is_number(Scale), Scale >= -?F32_MAX, Scale =< ?F32_MAX ->
    case ?V:i8(Codes, "codes") of
        {ok, Bin} ->
            case erlmcp_flow_nif:dequantize_i8(Bin, float(Scale)) of
                {ok, Floats} -> {ok, [X || <<X:32/float-native>> <= Floats]};
                {error, _} = Error -> Error
            end;
        {error, Text} ->
            ?V:invalid(Text)
    end;
dequantize(_Codes, _Scale) ->
    ?V:invalid("scale: expected a number within the float32 range (or a quantized map)").

%% @doc The cosine distance `1 - cos' between two int8 code vectors (their scales cancel)
%% (the engine's form of `cosine_distance_quantized/2').
-spec cosine_distance_i8(codes(), codes()) -> {ok, distance()} | error().
cosine_distance_i8(A, B) ->
    with_codes(A, B, fun erlmcp_flow_nif:cosine_distance_i8/2).

%% @doc The exact integer dot product of two int8 code vectors (multiply by both scales for
%% the dot product of the vectors they stand for).
-spec dot_i8(codes(), codes()) -> {ok, integer()} | error().
dot_i8(A, B) ->
    with_codes(A, B, fun erlmcp_flow_nif:dot_i8/2).

%% @doc The distance between two float vectors: `cosine' (`1 - cos(a, b)'), `dot'
%% (`1 - a·b') or `l2sq' (`|a - b|²').
-spec distance(metric(), vector(), vector()) -> {ok, distance()} | error().
distance(Metric, A, B) ->
    case {?V:f32(A, "a"), ?V:f32(B, "b")} of
        {{ok, BinA}, {ok, BinB}} -> erlmcp_flow_nif:distance_f32(Metric, BinA, BinB);
        {{error, Text}, _} -> ?V:invalid(Text);
        {_, {error, Text}} -> ?V:invalid(Text)
    end.

%% @doc `distance/3' between two half-float vectors.
-spec distance_f16(metric(), [number()] | binary(), [number()] | binary()) ->
          {ok, distance()} | error().
distance_f16(Metric, A, B) ->
    case {?V:f16(A, "a"), ?V:f16(B, "b")} of
        {{ok, BinA}, {ok, BinB}} -> erlmcp_flow_nif:distance_f16(Metric, BinA, BinB);
        {{error, Text}, _} -> ?V:invalid(Text);
        {_, {error, Text}} -> ?V:invalid(Text)
    end.

%% The smallest and largest code ({0, 0} for no codes).
code_range(<<>>) ->
    {0, 0};
code_range(<<C:8/signed, Rest/binary>>) ->
    code_range(Rest, C, C).

code_range(<<C:8/signed, Rest/binary>>, Lo, Hi) ->
    code_range(Rest, min(C, Lo), max(C, Hi));
code_range(<<>>, Lo, Hi) ->
    {Lo, Hi}.

%% A float rounded to float32, as the engine's values are.
f32(X) ->
    <<Y:32/float-native>> = <<X:32/float-native>>,
    Y.

with_codes(A, B, Fun) ->
    case {?V:i8(A, "a"), ?V:i8(B, "b")} of
        {{ok, BinA}, {ok, BinB}} -> Fun(BinA, BinB);
        {{error, Text}, _} -> ?V:invalid(Text);
        {_, {error, Text}} -> ?V:invalid(Text)
    end.

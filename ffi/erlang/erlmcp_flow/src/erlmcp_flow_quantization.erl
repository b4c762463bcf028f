%% @doc The vector kernels of the original design over the engine's `emf_quantize_f32',
%% `emf_dequantize_i8', `emf_distance_f32'/`_f16', `emf_cosine_distance_i8' and `emf_dot_i8':
%% int8 quantization with a per-vector scale, and distances between float, half-float and
%% int8 vectors (the kernels of erlmcp_flow_hnsw, SIMD where the CPU has it).
%%
%% ```
%% {ok, {Codes, Scale}} = erlmcp_flow_quantization:quantize_vector([0.1, -0.05, 0.0, 0.2]),
%% <<64, -32:8/signed, 0, 127>> = Codes,                      % X ≈ Scale · Code
%% {ok, [_, _, _, _]} = erlmcp_flow_quantization:dequantize_vector(Codes, Scale),
%% {ok, D} = erlmcp_flow_quantization:cosine_distance_quantized(Codes, Codes), % D ≈ 0.0
%% {ok, 21249} = erlmcp_flow_quantization:dot_i8(Codes, Codes),
%% {ok, 0.0} = erlmcp_flow_quantization:distance(l2sq, [1.0, 2.0], <<1.0:32/float-native,
%%                                                                   2.0:32/float-native>>).
%% '''
%%
%% <h3>Vectors</h3>
%% Float vectors are lists of numbers within the float32 range or binaries of native-endian
%% float32 values (`<<X:32/float-native, ...>>'); half-float vectors (`distance_f16/3') lists
%% of numbers within the half-float range or binaries of native-endian IEEE binary16 values
%% (`<<X:16/float-native, ...>>'); int8 codes binaries (one signed byte a code), lists of
%% integers from -128 to 127, or the `{Codes, Scale}' that `quantize_vector/1' returns. The
%% two vectors of a distance have the same length. NaN and infinite values (possible only in
%% binaries) are refused; a distance that is not finite (float overflow on huge values) comes
%% as `infinity', `neg_infinity' or `nan'.
%%
%% <h3>Errors and scheduling</h3>
%% Bad arguments give `{error, {invalid_argument, Message}}', never an exception. Lists are
%% converted in Erlang; vectors of 64 KiB and more are handled on a dirty CPU scheduler.
-module(erlmcp_flow_quantization).

-export([quantize_vector/1, dequantize_vector/2, cosine_distance_quantized/2, dot_i8/2,
         distance/3, distance_f16/3]).

-export_type([vector/0, codes/0, metric/0, distance/0]).

-type vector() :: [number()] | binary().
%% A list of numbers or a binary of native-endian float32 values.
-type codes() :: binary() | [-128..127] | {binary(), float()}.
%% int8 codes: a binary, a list of integers, or `{Codes, Scale}' from `quantize_vector/1'.
-type metric() :: erlmcp_flow_nif:metric().
-type distance() :: erlmcp_flow_nif:distance().
-type error() :: erlmcp_flow_nif:error().

-define(V, erlmcp_flow_vector).
%% The largest float32.
-define(F32_MAX, 3.4028234663852886e38).

%% @doc int8 codes and a scale such that each value is about `Scale · Code': the largest
%% magnitude maps to ±127 (a zero vector has scale 0.0). NaN and infinite values are refused.
-spec quantize_vector(vector()) -> {ok, {Codes :: binary(), Scale :: float()}} | error().
quantize_vector(Vector) ->
    case ?V:f32(Vector, "vector") of
        {ok, Bin} -> erlmcp_flow_nif:quantize_f32(Bin);
        {error, Text} -> ?V:invalid(Text)
    end.

%% @doc The values that `Codes' stand for, `Scale · Code' each, as floats (float32 precision).
-spec dequantize_vector(codes(), number()) -> {ok, [float()]} | error().
dequantize_vector(Codes, Scale) when is_number(Scale), Scale >= -?F32_MAX, Scale =< ?F32_MAX ->
    case ?V:i8(Codes, "codes") of
        {ok, Bin} ->
            case erlmcp_flow_nif:dequantize_i8(Bin, float(Scale)) of
                {ok, Floats} -> {ok, [X || <<X:32/float-native>> <= Floats]};
                {error, _} = Error -> Error
            end;
        {error, Text} ->
            ?V:invalid(Text)
    end;
dequantize_vector(_Codes, _Scale) ->
    ?V:invalid("scale: expected a number within the float32 range").

%% @doc The cosine distance `1 - cos' between two int8 code vectors (their scales cancel) —
%% `cosine_distance_quantized' of the original design.
-spec cosine_distance_quantized(codes(), codes()) -> {ok, distance()} | error().
cosine_distance_quantized(A, B) ->
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

with_codes(A, B, Fun) ->
    case {?V:i8(A, "a"), ?V:i8(B, "b")} of
        {{ok, BinA}, {ok, BinB}} -> Fun(BinA, BinB);
        {{error, Text}, _} -> ?V:invalid(Text);
        {_, {error, Text}} -> ?V:invalid(Text)
    end.

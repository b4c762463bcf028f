%% @private
%% @doc Conversions shared by erlmcp_flow_hnsw and erlmcp_flow_quantization: vectors given as
%% lists of numbers or binaries become the binaries the NIF takes (native-endian float32, half
%% floats or int8 codes), and ids are checked, all in Erlang (the NIF converts nothing).
%%
%% Every function answers `{ok, Value}' or `{error, Text}', `Text' saying what is wrong with the
%% argument named `What'; callers wrap it into `{error, {invalid_argument, Binary}}'.
-module(erlmcp_flow_vector).

-export([f32/2, f16/2, i8/2, id/2, invalid/1]).

%% The smallest magnitudes that round to infinity as float32 (2^128 - 2^103) and as half
%% floats (2^16 - 2^4): a number must stay below them to be a finite value of that type.
-define(F32_OVERFLOW, 340282356779733661637539395458142568448).
-define(F16_OVERFLOW, 65520).
-define(MAX_ID, 16#FFFFFFFFFFFFFFFF).

%% @doc A float32 vector: a binary of native-endian float32 values (taken as is; the engine
%% refuses NaN and infinite values where it must), or a list of numbers, each within the
%% float32 range.
-spec f32(term(), iodata()) -> {ok, binary()} | {error, iodata()}.
f32(V, What) when is_binary(V) ->
    case byte_size(V) rem 4 of
        0 -> {ok, V};
        _ -> {error, [What, ": a binary of native-endian float32 values needs a multiple of 4 "
                      "bytes, got ", integer_to_list(byte_size(V))]}
    end;
f32(V, What) when is_list(V) ->
    f32_list(V, What, 0, <<>>);
f32(V, What) ->
    not_a_vector(V, What, "float32").

f32_list([X | Rest], What, I, Acc) when is_number(X), X < ?F32_OVERFLOW, X > -?F32_OVERFLOW ->
    f32_list(Rest, What, I + 1, <<Acc/binary, X:32/float-native>>);
f32_list([X | _], What, I, _Acc) when is_number(X) ->
    {error, io_lib:format("~ts: element ~b is ~0p, beyond the float32 range", [What, I, X])};
f32_list([], _What, _I, Acc) ->
    {ok, Acc};
f32_list(L, What, I, _Acc) ->
    bad_element(L, What, I).

%% @doc A half-float vector: a binary of native-endian IEEE binary16 values, or a list of
%% numbers within the half-float range (below 65520 in magnitude).
-spec f16(term(), iodata()) -> {ok, binary()} | {error, iodata()}.
f16(V, What) when is_binary(V) ->
    case byte_size(V) rem 2 of
        0 -> {ok, V};
        _ -> {error, [What, ": a binary of native-endian half floats needs a multiple of 2 "
                      "bytes, got ", integer_to_list(byte_size(V))]}
    end;
f16(V, What) when is_list(V) ->
    f16_list(V, What, 0, <<>>);
f16(V, What) ->
    not_a_vector(V, What, "half-float").

f16_list([X | Rest], What, I, Acc) when is_number(X), X < ?F16_OVERFLOW, X > -?F16_OVERFLOW ->
    f16_list(Rest, What, I + 1, <<Acc/binary, X:16/float-native>>);
f16_list([X | _], What, I, _Acc) when is_number(X) ->
    {error, io_lib:format("~ts: element ~b is ~0p, beyond the half-float range", [What, I, X])};
f16_list([], _What, _I, Acc) ->
    {ok, Acc};
f16_list(L, What, I, _Acc) ->
    bad_element(L, What, I).

%% @doc int8 codes: a binary (one code a byte), a list of integers from -128 to 127, the
%% `#{vector := Codes}' of `erlmcp_flow_quantization:quantize_vector/1', or the
%% `{Codes, Scale}' of `erlmcp_flow_quantization:quantize/1'.
-spec i8(term(), iodata()) -> {ok, binary()} | {error, iodata()}.
i8(V, _What) when is_binary(V) ->
    {ok, V};
i8(#{vector := Codes}, What) ->
    i8(Codes, What);
i8({Codes, Scale}, What) when is_number(Scale) ->
    i8(Codes, What);
i8(V, What) when is_list(V) ->
    i8_list(V, What, 0, <<>>);
i8(V, What) ->
    {error, io_lib:format("~ts: expected int8 codes (a binary, a list of integers from -128 "
                          "to 127, #{vector := Codes} or {Codes, Scale}), got ~0P",
                          [What, V, 8])}.

i8_list([X | Rest], What, I, Acc) when is_integer(X), X >= -128, X =< 127 ->
    i8_list(Rest, What, I + 1, <<Acc/binary, X:8/signed>>);
i8_list([], _What, _I, Acc) ->
    {ok, Acc};
i8_list([X | _], What, I, _Acc) ->
    {error, io_lib:format("~ts: element ~b is ~0P, not an integer from -128 to 127",
                          [What, I, X, 8])};
i8_list(_Tail, What, _I, _Acc) ->
    {error, [What, ": expected a proper list of codes"]}.

%% @doc An id: an integer from 0 to 2^64 - 1.
-spec id(term(), iodata()) -> {ok, non_neg_integer()} | {error, iodata()}.
id(Id, _What) when is_integer(Id), Id >= 0, Id =< ?MAX_ID ->
    {ok, Id};
id(Id, What) ->
    {error, io_lib:format("~ts: expected an integer from 0 to 18446744073709551615, got ~0P",
                          [What, Id, 8])}.

%% @doc `{error, {invalid_argument, Text}}' with `Text' as a UTF-8 binary.
-spec invalid(iodata()) -> {error, {invalid_argument, binary()}}.
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

not_a_vector(V, What, Kind) ->
    {error, io_lib:format("~ts: expected a list of numbers or a binary of native-endian ~s "
                          "values, got ~0P", [What, Kind, V, 8])}.

bad_element([X | _], What, I) ->
    {error, io_lib:format("~ts: element ~b is ~0P, not a number", [What, I, X, 8])};
bad_element(_Tail, What, _I) ->
    {error, [What, ": expected a proper list of numbers"]}.

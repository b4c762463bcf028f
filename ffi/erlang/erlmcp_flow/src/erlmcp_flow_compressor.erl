%% @doc zlib compression of payloads, as the engine does it for every host.
%%
%% `compress_if_needed/1,2' compresses only when it pays: the input is at least the threshold
%% (1 KiB by default) and the zlib stream is smaller than 80 % of it. Compressed output is a
%% standard zlib stream (`zlib:uncompress/1' reads it) and `decompress/1,2' reads any zlib
%% stream (`zlib:compress/1' output included), refusing output above a limit.
%%
%% ```
%% Big = binary:copy(<<"tools/call ">>, 1000),
%% {ok, {compressed, Z}} = erlmcp_flow_compressor:compress_if_needed(Big),
%% {ok, Big} = erlmcp_flow_compressor:decompress(Z),
%% {ok, {raw, <<"small">>}} = erlmcp_flow_compressor:compress_if_needed(<<"small">>).
%% '''
-module(erlmcp_flow_compressor).

-export([compress_if_needed/1, compress_if_needed/2, decompress/1, decompress/2,
         default_threshold/0, default_max_size/0]).

%% EMF_COMPRESS_DEFAULT_THRESHOLD of the C header.
-define(DEFAULT_THRESHOLD, 1024).
-define(DEFAULT_MAX_SIZE, 64 * 1024 * 1024).

-type error() :: erlmcp_flow_nif:error().

%% @doc The default compression threshold: 1024 bytes.
-spec default_threshold() -> pos_integer().
default_threshold() -> ?DEFAULT_THRESHOLD.

%% @doc The default decompression limit: 64 MiB.
-spec default_max_size() -> pos_integer().
default_max_size() -> ?DEFAULT_MAX_SIZE.

%% @doc Compresses `Data' when it is at least 1024 bytes and compression saves 20 % or more.
%% @equiv compress_if_needed(Data, 1024)
-spec compress_if_needed(iodata()) -> {ok, {compressed | raw, binary()}} | error().
compress_if_needed(Data) ->
    compress_if_needed(Data, ?DEFAULT_THRESHOLD).

%% @doc Compresses `Data' when `byte_size(Data) >= Threshold' and the zlib stream is smaller
%% than 80 % of the input; `{ok, {raw, Data}}' otherwise.
-spec compress_if_needed(iodata(), non_neg_integer()) ->
          {ok, {compressed | raw, binary()}} | error().
compress_if_needed(Data, Threshold) ->
    erlmcp_flow_nif:compress_if_needed(Data, Threshold).

%% @doc Decompresses a zlib stream of at most 64 MiB of output.
%% @equiv decompress(Data, 67108864)
-spec decompress(iodata()) -> {ok, binary()} | error().
decompress(Data) ->
    decompress(Data, ?DEFAULT_MAX_SIZE).

%% @doc Decompresses a zlib stream; `{error, {too_large, _}}' when the output would exceed
%% `MaxSize' bytes, `{error, {corrupt, _}}' for a bad stream or trailing bytes. `MaxSize' is
%% any non-negative 64-bit integer (`16#FFFFFFFFFFFFFFFF': no limit).
-spec decompress(iodata(), non_neg_integer()) -> {ok, binary()} | error().
decompress(Data, MaxSize) ->
    erlmcp_flow_nif:decompress(Data, MaxSize).

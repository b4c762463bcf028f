%% @doc zlib compression of payloads, as the engine does it for every host, in the original
%% design's call shapes.
%%
%% `compress_if_needed/1,2' compresses only when it pays: the input is at least the threshold
%% (1 KiB by default) and the zlib stream is smaller than 80 % of it. It answers
%% `{compressed, Z}' (a standard zlib stream: `zlib:uncompress/1' reads it) or
%% `{uncompressed, Data}', and `decompress/1,2' takes either tuple back and answers the data
%% bare. Raw zlib streams (`zlib:compress/1' output included) are read by `uncompress/1,2'.
%% Both refuse output above a limit (64 MiB by default).
%%
%% ```
%% Big = binary:copy(<<"tools/call ">>, 1000),
%% {compressed, Z} = C = erlmcp_flow_compressor:compress_if_needed(Big),
%% Big = erlmcp_flow_compressor:decompress(C),
%% {ok, Big} = erlmcp_flow_compressor:uncompress(Z),
%% {uncompressed, <<"small">>} = S = erlmcp_flow_compressor:compress_if_needed(<<"small">>),
%% <<"small">> = erlmcp_flow_compressor:decompress(S).
%% '''
%%
%% <h3>The original design's calls and ours</h3>
%% <ul>
%% <li>`compress_if_needed(Binary)', `compress_if_needed(Binary, Threshold)' -> `{compressed,
%% Data} | {uncompressed, Data}': as the original (default threshold 1 KiB, zlib); ours also
%% keeps data that does not shrink by 20 % uncompressed, takes iodata, and answers
%% `{error, {invalid_argument, Message}}' for arguments that are not iodata or a threshold
%% that is not a non-negative 64-bit integer.</li>
%% <li>`decompress({compressed, Data})', `decompress({uncompressed, Data})' -> `Data': as the
%% original (the data bare); errors are `{error, {Status, Message}}': `corrupt' for a bad
%% stream or trailing bytes, `too_large' when a stream inflates past the limit
%% (`decompress/2'), `invalid_argument'
%% for anything else (a bare binary included: `uncompress/1' reads those).</li>
%% <li>`uncompress/1,2' (ours): a raw zlib stream -> `{ok, Data}'.</li>
%% </ul>
-module(erlmcp_flow_compressor).

-export([compress_if_needed/1, compress_if_needed/2, decompress/1, decompress/2,
         uncompress/1, uncompress/2, default_threshold/0, default_max_size/0]).

-export_type([packed/0]).

%% EMF_COMPRESS_DEFAULT_THRESHOLD of the C header.
-define(DEFAULT_THRESHOLD, 1024).
-define(DEFAULT_MAX_SIZE, 64 * 1024 * 1024).
-define(MAX_U64, 16#FFFFFFFFFFFFFFFF).

-type packed() :: {compressed, binary()} | {uncompressed, binary()}.
%% What `compress_if_needed/1,2' answers and `decompress/1,2' takes.
-type error() :: erlmcp_flow_nif:error().

%% @doc The default compression threshold: 1024 bytes.
-spec default_threshold() -> pos_integer().
default_threshold() -> ?DEFAULT_THRESHOLD.

%% @doc The default decompression limit: 64 MiB.
-spec default_max_size() -> pos_integer().
default_max_size() -> ?DEFAULT_MAX_SIZE.

%% @doc Compresses `Data' when it is at least 1024 bytes and compression saves 20 % or more.
%% @equiv compress_if_needed(Data, 1024)
-spec compress_if_needed(iodata()) -> packed() | error().
compress_if_needed(Data) ->
    compress_if_needed(Data, ?DEFAULT_THRESHOLD).

%% @doc `{compressed, Z}' (a zlib stream) when `byte_size(Data) >= Threshold' and the stream
%% is smaller than 80 % of the input; `{uncompressed, Data}' (as a binary) otherwise.
-spec compress_if_needed(iodata(), non_neg_integer()) -> packed() | error().
compress_if_needed(Data, Threshold) ->
    case erlmcp_flow_nif:compress_if_needed(Data, Threshold) of
        {ok, {compressed, Z}} -> {compressed, Z};
        {ok, {raw, Bin}} -> {uncompressed, Bin};
        {error, _} = Error -> Error
    end.

%% @doc The data of a `compress_if_needed/1,2' answer, bare, of at most 64 MiB.
%% @equiv decompress(Packed, 67108864)
-spec decompress(packed() | {compressed | uncompressed, iodata()}) -> binary() | error().
decompress(Packed) ->
    decompress(Packed, ?DEFAULT_MAX_SIZE).

%% @doc The data of `{compressed, Z}' (`Z' inflated) or `{uncompressed, Data}' (as a binary),
%% bare; `{error, {too_large, _}}' when inflating would exceed `MaxSize' bytes (the limit
%% bounds what a stream inflates to: uncompressed data, already in memory, comes back
%% whatever its size, so that every `compress_if_needed/1,2' answer round-trips),
%% `{error, {corrupt, _}}' for a bad stream or trailing bytes. `MaxSize' is any non-negative
%% 64-bit integer (`16#FFFFFFFFFFFFFFFF': no limit).
-spec decompress(packed() | {compressed | uncompressed, iodata()}, non_neg_integer()) ->
          binary() | error().
decompress({compressed, Z}, MaxSize) ->
    case erlmcp_flow_nif:decompress(Z, MaxSize) of
        {ok, Data} -> Data;
        {error, _} = Error -> Error
    end;
decompress({uncompressed, Data}, MaxSize)
  when is_integer(MaxSize), MaxSize >= 0, MaxSize =< ?MAX_U64 ->
    try
        iolist_to_binary(Data)
    catch
        error:badarg -> invalid("data: expected iodata in {uncompressed, Data}")
    end;
decompress({uncompressed, _Data}, _MaxSize) ->
    invalid("max_size: expected a non-negative 64-bit integer");
decompress(Bin, _MaxSize) when is_binary(Bin); is_list(Bin) ->
    invalid("expected {compressed, Data} or {uncompressed, Data} (compress_if_needed's "
            "answer); uncompress/1,2 reads a raw zlib stream");
decompress(_Other, _MaxSize) ->
    invalid("expected {compressed, Data} or {uncompressed, Data}").

%% @doc Inflates a raw zlib stream of at most 64 MiB of output.
%% @equiv uncompress(Z, 67108864)
-spec uncompress(iodata()) -> {ok, binary()} | error().
uncompress(Z) ->
    uncompress(Z, ?DEFAULT_MAX_SIZE).

%% @doc Inflates a raw zlib stream (any: `zlib:compress/1' output too); `{error, {too_large,
%% _}}' when the output would exceed `MaxSize' bytes, `{error, {corrupt, _}}' for a bad stream
%% or trailing bytes. `MaxSize' as in `decompress/2'.
-spec uncompress(iodata(), non_neg_integer()) -> {ok, binary()} | error().
uncompress(Z, MaxSize) ->
    erlmcp_flow_nif:decompress(Z, MaxSize).

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, iolist_to_binary(Text)}}.

%% EUnit tests of erlmcp_flow_compressor: zlib interoperability, thresholds, limits and
%% hostile input.
-module(erlmcp_flow_compressor_tests).

-include_lib("eunit/include/eunit.hrl").

-define(C, erlmcp_flow_compressor).

compressible(Size) ->
    Unit = <<"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"} ">>,
    binary:part(binary:copy(Unit, Size div byte_size(Unit) + 1), 0, Size).

incompressible(Size) ->
    _ = rand:seed(exsss, {1, 2, 3}),

    rand:bytes(Size).

%%--------------------------------------------------------------------------------------------
%% zlib interoperability
%%--------------------------------------------------------------------------------------------

our_output_is_zlib_test() ->
    Data = compressible(10000),
    {ok, {compressed, Z}} = ?C:compress_if_needed(Data),
    ?assert(byte_size(Z) < byte_size(Data)),
    ?assertEqual(Data, zlib:uncompress(Z)),
    ?assertEqual({ok, Data}, ?C:decompress(Z)).

zlib_output_is_read_test() ->
    Data = compressible(5000),
    ?assertEqual({ok, Data}, ?C:decompress(zlib:compress(Data))),
    ?assertEqual({ok, <<>>}, ?C:decompress(zlib:compress(<<>>))),
    Random = incompressible(3000),
    ?assertEqual({ok, Random}, ?C:decompress(zlib:compress(Random))).

%% Above the 64 KiB threshold both directions run on a dirty scheduler.
large_payload_test() ->
    Data = compressible(5 * 1024 * 1024),
    {ok, {compressed, Z}} = ?C:compress_if_needed(Data),
    ?assertEqual(Data, zlib:uncompress(Z)),
    ?assertEqual({ok, Data}, ?C:decompress(Z)),
    ?assertEqual({ok, Data}, ?C:decompress(zlib:compress(Data))).

iodata_input_test() ->
    Data = compressible(4000),
    {ok, {compressed, Z}} = ?C:compress_if_needed([binary:part(Data, 0, 1000),
                                                   binary_to_list(binary:part(Data, 1000, 3000))]),
    ?assertEqual({ok, Data}, ?C:decompress([Z])).

%%--------------------------------------------------------------------------------------------
%% Threshold
%%--------------------------------------------------------------------------------------------

default_threshold_test() ->
    ?assertEqual(1024, ?C:default_threshold()),
    Below = compressible(1023),
    ?assertEqual({ok, {raw, Below}}, ?C:compress_if_needed(Below)),
    At = compressible(1024),
    {ok, {compressed, Z}} = ?C:compress_if_needed(At),
    ?assertEqual(At, zlib:uncompress(Z)).

explicit_threshold_test() ->
    Data = compressible(600),
    ?assertEqual({ok, {raw, Data}}, ?C:compress_if_needed(Data, 601)),
    ?assertMatch({ok, {compressed, _}}, ?C:compress_if_needed(Data, 600)),
    ?assertMatch({ok, {compressed, _}}, ?C:compress_if_needed(Data, 0)),
    ?assertEqual({ok, {raw, Data}}, ?C:compress_if_needed(Data, 1 bsl 40)).

incompressible_stays_raw_test() ->
    Random = incompressible(50000),
    ?assertEqual({ok, {raw, Random}}, ?C:compress_if_needed(Random)),
    ?assertEqual({ok, {raw, Random}}, ?C:compress_if_needed(Random, 0)).

empty_input_test() ->
    ?assertEqual({ok, {raw, <<>>}}, ?C:compress_if_needed(<<>>)),
    ?assertEqual({ok, {raw, <<>>}}, ?C:compress_if_needed(<<>>, 0)).

%%--------------------------------------------------------------------------------------------
%% Limits and bad input
%%--------------------------------------------------------------------------------------------

limit_test() ->
    ?assertEqual(64 * 1024 * 1024, ?C:default_max_size()),
    Data = compressible(100000),
    Z = zlib:compress(Data),
    ?assertEqual({ok, Data}, ?C:decompress(Z, 100000)),
    ?assertMatch({error, {too_large, _}}, ?C:decompress(Z, 99999)),
    ?assertMatch({error, {too_large, _}}, ?C:decompress(Z, 0)).

%% The largest limit (2^64 - 1) means no limit, also for iodata and inputs that run on a
%% dirty scheduler; 2^64 is not a 64-bit integer.
max_limit_test() ->
    Max = 16#FFFFFFFFFFFFFFFF,
    Small = compressible(100000),
    Z = zlib:compress(Small),
    ?assertEqual({ok, Small}, ?C:decompress(Z, Max)),
    ?assertEqual({ok, Small}, ?C:decompress([Z], Max)),
    ?assertEqual({ok, Small}, erlmcp_flow_nif:decompress(Z, Max)),
    ?assertEqual({ok, <<>>}, ?C:decompress(zlib:compress(<<>>), Max)),
    Large = compressible(5 * 1024 * 1024),
    ZLarge = zlib:compress(Large),
    ?assertEqual({ok, Large}, ?C:decompress(ZLarge, Max)),
    ?assertEqual({ok, Large}, ?C:decompress([binary:part(ZLarge, 0, 10),
                                             binary:part(ZLarge, 10, byte_size(ZLarge) - 10)],
                                            Max)),
    ?assertMatch({error, {corrupt, _}}, ?C:decompress(<<"not zlib">>, Max)),
    ?assertMatch({error, {invalid_argument, _}}, ?C:decompress(Z, Max + 1)),
    ?assertEqual({ok, {raw, Small}}, ?C:compress_if_needed(Small, Max)).

%% Compresses and inflates 64 MiB: seconds on a loaded machine, past EUnit's default 5 s.
default_limit_test_() ->
    {timeout, 120, fun default_limit/0}.

default_limit() ->
    %% 65 MiB of zeros compress to about 64 KiB: a small bomb.
    Bomb = zlib:compress(binary:copy(<<0>>, 65 * 1024 * 1024)),
    ?assert(byte_size(Bomb) < 100 * 1024),
    {error, {too_large, Msg}} = ?C:decompress(Bomb),
    ?assert(is_binary(Msg)),
    Exact = zlib:compress(binary:copy(<<0>>, 64 * 1024 * 1024)),
    {ok, Out} = ?C:decompress(Exact),
    ?assertEqual(64 * 1024 * 1024, byte_size(Out)).

corrupt_streams_test_() ->
    Z = zlib:compress(compressible(5000)),
    Half = binary:part(Z, 0, byte_size(Z) div 2),
    <<Hd:2/binary, B, Rest/binary>> = Z,
    [?_assertMatch({error, {corrupt, _}}, ?C:decompress(<<"not a zlib stream">>)),
     ?_assertMatch({error, {corrupt, _}}, ?C:decompress(<<>>)),
     ?_assertMatch({error, {corrupt, _}}, ?C:decompress(Half)),
     ?_assertMatch({error, {corrupt, _}}, ?C:decompress(<<Z/binary, "trailing">>)),
     ?_assertMatch({error, {corrupt, _}}, ?C:decompress(<<16#78, 16#9c, 16#ff, 16#ff>>)),
     ?_assertMatch({error, {corrupt, _}}, ?C:decompress(<<Hd/binary, (B bxor 16#ff), Rest/binary>>)),
     ?_assertMatch({error, {corrupt, _}},
                   ?C:decompress(<<(binary:part(Z, 0, byte_size(Z) - 4))/binary, 0, 0, 0, 0>>))].

truncated_streams_test() ->
    Z = zlib:compress(compressible(3000)),
    lists:foreach(fun(N) ->
                          ?assertMatch({error, {corrupt, _}},
                                       ?C:decompress(binary:part(Z, 0, N)))
                  end, lists:seq(0, byte_size(Z) - 1)).

bad_arguments_test_() ->
    Bad = [atom, 42, 1.5, self(), #{}, {t}, [1 | 2], [300], <<1:5>>],
    [[?_assertMatch({error, {invalid_argument, _}}, ?C:compress_if_needed(X)),
      ?_assertMatch({error, {invalid_argument, _}}, ?C:compress_if_needed(X, 10)),
      ?_assertMatch({error, {invalid_argument, _}}, ?C:decompress(X)),
      ?_assertMatch({error, {invalid_argument, _}}, ?C:decompress(X, 10))] || X <- Bad] ++
    [?_assertMatch({error, {invalid_argument, _}}, ?C:compress_if_needed(<<"x">>, T))
     || T <- [-1, 1.0, big, 1 bsl 64, "10"]] ++
    [?_assertMatch({error, {invalid_argument, _}}, ?C:decompress(zlib:compress(<<"x">>), M))
     || M <- [-1, 1.0, infinity, 1 bsl 64]].

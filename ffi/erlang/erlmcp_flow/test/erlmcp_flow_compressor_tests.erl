%% EUnit tests of erlmcp_flow_compressor: the original design's shapes (compress_if_needed's
%% tuples, decompress of either), zlib interoperability (uncompress), thresholds, limits and
%% hostile input.
-module(erlmcp_flow_compressor_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [untyped/1]).

-define(C, erlmcp_flow_compressor).

compressible(Size) ->
    Unit = <<"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"} ">>,
    binary:part(binary:copy(Unit, Size div byte_size(Unit) + 1), 0, Size).

incompressible(Size) ->
    _ = rand:seed(exsss, {1, 2, 3}),

    rand:bytes(Size).

%%--------------------------------------------------------------------------------------------
%% The original design's shapes
%%--------------------------------------------------------------------------------------------

%% decompress(compress_if_needed(B)) is B, small or large, compressible or not, with the
%% default threshold and others.
round_trip_test_() ->
    Inputs = [<<>>, <<"small">>, compressible(1023), compressible(1024), compressible(100000),
              incompressible(50000), compressible(3 * 1024 * 1024)],
    [?_assertEqual(B, ?C:decompress(?C:compress_if_needed(B))) || B <- Inputs] ++
    [?_assertEqual(B, ?C:decompress(?C:compress_if_needed(B, T), 1 bsl 32))
     || B <- Inputs, T <- [0, 10, 1 bsl 40]].

shapes_test() ->
    Small = <<"{\"jsonrpc\":\"2.0\"}">>,
    ?assertEqual({uncompressed, Small}, ?C:compress_if_needed(Small)),
    ?assertEqual(Small, ?C:decompress({uncompressed, Small})),
    Big = compressible(10000),
    {compressed, Z} = ?C:compress_if_needed(Big),
    ?assert(is_binary(Z) andalso byte_size(Z) < byte_size(Big)),
    ?assertEqual(Big, zlib:uncompress(Z)),
    ?assertEqual(Big, ?C:decompress({compressed, Z})),
    %% Streams of others' making, and iodata, in the tuples.
    ?assertEqual(Big, ?C:decompress({compressed, zlib:compress(Big)})),
    ?assertEqual(Big, ?C:decompress({compressed, [binary:part(Z, 0, 5),
                                                   binary:part(Z, 5, byte_size(Z) - 5)]})),
    ?assertEqual(<<"ab">>, ?C:decompress({uncompressed, ["a", <<"b">>]})),
    %% iodata in: a binary out.
    ?assertEqual({uncompressed, <<"abc">>}, ?C:compress_if_needed(["a", <<"bc">>])).

shape_errors_test() ->
    Z = zlib:compress(compressible(5000)),
    Half = binary:part(Z, 0, byte_size(Z) div 2),
    ?assertMatch({error, {corrupt, <<_/binary>>}}, ?C:decompress({compressed, Half})),
    ?assertMatch({error, {corrupt, _}}, ?C:decompress({compressed, <<"not zlib">>})),
    ?assertMatch({error, {corrupt, _}}, ?C:decompress({compressed, <<Z/binary, 0>>})),
    ?assertMatch({error, {too_large, _}}, ?C:decompress({compressed, Z}, 4999)),
    ?assertEqual(compressible(5000), ?C:decompress({compressed, Z}, 5000)),
    %% Uncompressed data comes back whatever the limit: it was never inflated.
    ?assertEqual(<<"abc">>, ?C:decompress({uncompressed, <<"abc">>}, 0)),
    %% A bare stream is refused, pointing at uncompress/1.
    {error, {invalid_argument, Msg}} = ?C:decompress(untyped(Z)),
    ?assertNotEqual(nomatch, binary:match(Msg, <<"uncompress">>)),
    [?assertMatch({error, {invalid_argument, <<_/binary>>}}, ?C:decompress(Bad))
     || Bad <- [{raw, Z}, {compressed}, {uncompressed, atom}, {uncompressed, [300]},
                {compressed, 42}, {compressed, Z, extra}, atom, 42, "text", #{}]],
    [?assertMatch({error, {invalid_argument, _}}, ?C:decompress({Tag, <<"x">>}, M))
     || Tag <- [compressed, uncompressed], M <- [-1, 1.0, infinity, 1 bsl 64]].

%%--------------------------------------------------------------------------------------------
%% zlib interoperability
%%--------------------------------------------------------------------------------------------

our_output_is_zlib_test() ->
    Data = compressible(10000),
    {compressed, Z} = ?C:compress_if_needed(Data),
    ?assert(byte_size(Z) < byte_size(Data)),
    ?assertEqual(Data, zlib:uncompress(Z)),
    ?assertEqual({ok, Data}, ?C:uncompress(Z)).

zlib_output_is_read_test() ->
    Data = compressible(5000),
    ?assertEqual({ok, Data}, ?C:uncompress(zlib:compress(Data))),
    ?assertEqual({ok, <<>>}, ?C:uncompress(zlib:compress(<<>>))),
    Random = incompressible(3000),
    ?assertEqual({ok, Random}, ?C:uncompress(zlib:compress(Random))).

%% Above the 64 KiB threshold both directions run on a dirty scheduler.
large_payload_test() ->
    Data = compressible(5 * 1024 * 1024),
    {compressed, Z} = ?C:compress_if_needed(Data),
    ?assertEqual(Data, zlib:uncompress(Z)),
    ?assertEqual({ok, Data}, ?C:uncompress(Z)),
    ?assertEqual({ok, Data}, ?C:uncompress(zlib:compress(Data))).

iodata_input_test() ->
    Data = compressible(4000),
    {compressed, Z} = ?C:compress_if_needed([binary:part(Data, 0, 1000),
                                                   binary_to_list(binary:part(Data, 1000, 3000))]),
    ?assertEqual({ok, Data}, ?C:uncompress([Z])).

%%--------------------------------------------------------------------------------------------
%% Threshold
%%--------------------------------------------------------------------------------------------

default_threshold_test() ->
    ?assertEqual(1024, ?C:default_threshold()),
    Below = compressible(1023),
    ?assertEqual({uncompressed, Below}, ?C:compress_if_needed(Below)),
    At = compressible(1024),
    {compressed, Z} = ?C:compress_if_needed(At),
    ?assertEqual(At, zlib:uncompress(Z)).

explicit_threshold_test() ->
    Data = compressible(600),
    ?assertEqual({uncompressed, Data}, ?C:compress_if_needed(Data, 601)),
    ?assertMatch({compressed, _}, ?C:compress_if_needed(Data, 600)),
    ?assertMatch({compressed, _}, ?C:compress_if_needed(Data, 0)),
    ?assertEqual({uncompressed, Data}, ?C:compress_if_needed(Data, 1 bsl 40)).

incompressible_stays_raw_test() ->
    Random = incompressible(50000),
    ?assertEqual({uncompressed, Random}, ?C:compress_if_needed(Random)),
    ?assertEqual({uncompressed, Random}, ?C:compress_if_needed(Random, 0)).

empty_input_test() ->
    ?assertEqual({uncompressed, <<>>}, ?C:compress_if_needed(<<>>)),
    ?assertEqual({uncompressed, <<>>}, ?C:compress_if_needed(<<>>, 0)).

%%--------------------------------------------------------------------------------------------
%% Limits and bad input
%%--------------------------------------------------------------------------------------------

limit_test() ->
    ?assertEqual(64 * 1024 * 1024, ?C:default_max_size()),
    Data = compressible(100000),
    Z = zlib:compress(Data),
    ?assertEqual({ok, Data}, ?C:uncompress(Z, 100000)),
    ?assertMatch({error, {too_large, _}}, ?C:uncompress(Z, 99999)),
    ?assertMatch({error, {too_large, _}}, ?C:uncompress(Z, 0)).

%% The largest limit (2^64 - 1) means no limit, also for iodata and inputs that run on a
%% dirty scheduler; 2^64 is not a 64-bit integer.
max_limit_test() ->
    Max = 16#FFFFFFFFFFFFFFFF,
    Small = compressible(100000),
    Z = zlib:compress(Small),
    ?assertEqual({ok, Small}, ?C:uncompress(Z, Max)),
    ?assertEqual({ok, Small}, ?C:uncompress([Z], Max)),
    ?assertEqual({ok, Small}, erlmcp_flow_nif:decompress(Z, Max)),
    ?assertEqual({ok, <<>>}, ?C:uncompress(zlib:compress(<<>>), Max)),
    Large = compressible(5 * 1024 * 1024),
    ZLarge = zlib:compress(Large),
    ?assertEqual({ok, Large}, ?C:uncompress(ZLarge, Max)),
    ?assertEqual({ok, Large}, ?C:uncompress([binary:part(ZLarge, 0, 10),
                                             binary:part(ZLarge, 10, byte_size(ZLarge) - 10)],
                                            Max)),
    ?assertMatch({error, {corrupt, _}}, ?C:uncompress(<<"not zlib">>, Max)),
    ?assertMatch({error, {invalid_argument, _}}, ?C:uncompress(Z, Max + 1)),
    ?assertEqual({uncompressed, Small}, ?C:compress_if_needed(Small, Max)).

%% Compresses and inflates 64 MiB: seconds on a loaded machine, past EUnit's default 5 s.
default_limit_test_() ->
    {timeout, 120, fun default_limit/0}.

default_limit() ->
    %% 65 MiB of zeros compress to about 64 KiB: a small bomb.
    Bomb = zlib:compress(binary:copy(<<0>>, 65 * 1024 * 1024)),
    ?assert(byte_size(Bomb) < 100 * 1024),
    {error, {too_large, Msg}} = ?C:uncompress(Bomb),
    ?assert(is_binary(Msg)),
    Exact = zlib:compress(binary:copy(<<0>>, 64 * 1024 * 1024)),
    {ok, Out} = ?C:uncompress(Exact),
    ?assertEqual(64 * 1024 * 1024, byte_size(Out)).

corrupt_streams_test_() ->
    Z = zlib:compress(compressible(5000)),
    Half = binary:part(Z, 0, byte_size(Z) div 2),
    <<Hd:2/binary, B, Rest/binary>> = Z,
    [?_assertMatch({error, {corrupt, _}}, ?C:uncompress(<<"not a zlib stream">>)),
     ?_assertMatch({error, {corrupt, _}}, ?C:uncompress(<<>>)),
     ?_assertMatch({error, {corrupt, _}}, ?C:uncompress(Half)),
     ?_assertMatch({error, {corrupt, _}}, ?C:uncompress(<<Z/binary, "trailing">>)),
     ?_assertMatch({error, {corrupt, _}}, ?C:uncompress(<<16#78, 16#9c, 16#ff, 16#ff>>)),
     ?_assertMatch({error, {corrupt, _}}, ?C:uncompress(<<Hd/binary, (B bxor 16#ff), Rest/binary>>)),
     ?_assertMatch({error, {corrupt, _}},
                   ?C:uncompress(<<(binary:part(Z, 0, byte_size(Z) - 4))/binary, 0, 0, 0, 0>>))].

truncated_streams_test() ->
    Z = zlib:compress(compressible(3000)),
    lists:foreach(fun(N) ->
                          ?assertMatch({error, {corrupt, _}},
                                       ?C:uncompress(binary:part(Z, 0, N)))
                  end, lists:seq(0, byte_size(Z) - 1)).

bad_arguments_test_() ->
    Bad = [atom, 42, 1.5, self(), #{}, {t}, [1 | 2], [300], <<1:5>>],
    [[?_assertMatch({error, {invalid_argument, _}}, ?C:compress_if_needed(X)),
      ?_assertMatch({error, {invalid_argument, _}}, ?C:compress_if_needed(X, 10)),
      ?_assertMatch({error, {invalid_argument, _}}, ?C:uncompress(X)),
      ?_assertMatch({error, {invalid_argument, _}}, ?C:uncompress(X, 10))] || X <- Bad] ++
    [?_assertMatch({error, {invalid_argument, _}}, ?C:compress_if_needed(<<"x">>, T))
     || T <- [-1, 1.0, big, 1 bsl 64, "10"]] ++
    [?_assertMatch({error, {invalid_argument, _}}, ?C:uncompress(zlib:compress(<<"x">>), M))
     || M <- [-1, 1.0, infinity, 1 bsl 64]].

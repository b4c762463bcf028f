%% EUnit tests of erlmcp_flow_serializer on JSON text (encode_json, decode_json): MCP round
%% trips, envelope descriptions, message handles and hostile input. Terms (encode, decode):
%% erlmcp_flow_serializer_term_tests.
-module(erlmcp_flow_serializer_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-define(S, erlmcp_flow_serializer).

%% Encodes and decodes; returns the JSON text that came back.
round_trip(Json) ->
    {ok, Archive} = ?S:encode_json(Json),
    ?assert(is_binary(Archive)),
    {ok, Back} = ?S:decode_json(Archive),
    Back.

%% Compact JSON text comes back byte for byte.
assert_exact(Json) ->
    ?assertEqual(Json, round_trip(Json)).

%%--------------------------------------------------------------------------------------------
%% Round trips of MCP traffic
%%--------------------------------------------------------------------------------------------

readme_example_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}">>,
    assert_exact(Json),
    {ok, Archive} = ?S:encode_json(Json),
    ?assertMatch({ok, [#{kind := request, id := 1, method := <<"tools/list">>,
                         priority := normal, error_code := undefined}]},
                 ?S:info(Archive)).

initialize_test() ->
    assert_exact(<<"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":"
                   "{\"protocolVersion\":\"2024-11-05\",\"capabilities\":{\"roots\":"
                   "{\"listChanged\":true},\"sampling\":{}},\"clientInfo\":{\"name\":"
                   "\"erlmcp\",\"version\":\"0.1.0\"}}}">>),
    assert_exact(<<"{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"protocolVersion\":"
                   "\"2024-11-05\",\"capabilities\":{\"tools\":{\"listChanged\":false}},"
                   "\"serverInfo\":{\"name\":\"flow\",\"version\":\"1\"}}}">>).

tools_list_test() ->
    assert_exact(<<"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\",\"params\":"
                   "{\"cursor\":\"abc\"}}">>),
    assert_exact(<<"{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"search\","
                   "\"description\":\"Search the web\",\"inputSchema\":{\"type\":\"object\","
                   "\"properties\":{\"q\":{\"type\":\"string\"}},\"required\":[\"q\"]}}],"
                   "\"nextCursor\":null}}">>).

tools_call_nested_arguments_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":\"call-7\",\"method\":\"tools/call\",\"params\":"
             "{\"name\":\"plan\",\"arguments\":{\"steps\":[{\"agent\":\"coder\",\"input\":"
             "{\"files\":[\"a.erl\",\"b.erl\"],\"depth\":3,\"flags\":{\"dry\":true,"
             "\"force\":false,\"note\":null}}},[1,[2,[3,[4,[]]]]],{}],\"weight\":-17}}}">>,
    assert_exact(Json),
    {ok, Archive} = ?S:encode_json(Json),
    ?assertMatch({ok, [#{kind := request, id := <<"call-7">>,
                         method := <<"tools/call">>}]}, ?S:info(Archive)),
    {ok, M} = ?S:open(Archive),
    {ok, Params} = ?S:payload(M, 0),
    ?assertEqual(<<"{\"name\":\"plan\",\"arguments\":{\"steps\":[{\"agent\":\"coder\","
                   "\"input\":{\"files\":[\"a.erl\",\"b.erl\"],\"depth\":3,\"flags\":"
                   "{\"dry\":true,\"force\":false,\"note\":null}}},[1,[2,[3,[4,[]]]]],{}],"
                   "\"weight\":-17}}">>, Params),
    ?assertEqual({ok, Json}, ?S:to_json(M)).

%% ~100 KB of text: above the 64 KiB threshold, so encode and decode run on a dirty scheduler.
resources_read_large_test() ->
    Text = binary:copy(<<"line of a big resource, with \\\"quotes\\\" and \\\\ slashes\\n">>,
                       2000),
    ?assert(byte_size(Text) > 100000),
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{\"contents\":[{\"uri\":"
             "\"file:///big.txt\",\"mimeType\":\"text/plain\",\"text\":\"", Text/binary,
             "\"}]}}">>,
    {ok, Archive} = ?S:encode_json(Json),
    ?assert(byte_size(Archive) > 64 * 1024),
    ?assertEqual({ok, Json}, ?S:decode_json(Archive)),
    ?assertEqual({ok, 1}, ?S:validate(Archive)),
    ?assertMatch({ok, [#{kind := response, id := 9, method := undefined}]}, ?S:info(Archive)),
    {ok, M} = ?S:open(Archive),
    ?assertEqual({ok, Json}, ?S:to_json(M)),
    %% The request side as well.
    assert_exact(<<"{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"resources/read\",\"params\":"
                   "{\"uri\":\"file:///big.txt\",\"blob\":\"", Text/binary, "\"}}">>).

notification_progress_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
             "{\"progressToken\":\"t-1\",\"progress\":50,\"total\":100}}">>,
    assert_exact(Json),
    {ok, Archive} = ?S:encode_json(Json),
    ?assertMatch({ok, [#{kind := notification, id := none,
                         method := <<"notifications/progress">>}]}, ?S:info(Archive)).

error_response_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":5,\"error\":{\"code\":-32601,\"message\":"
             "\"Method not found\",\"data\":{\"method\":\"tools/frobnicate\"}}}">>,
    assert_exact(Json),
    {ok, Archive} = ?S:encode_json(Json),
    ?assertMatch({ok, [#{kind := error, id := 5, error_code := -32601,
                         method := undefined}]}, ?S:info(Archive)),
    {ok, M} = ?S:open(Archive),
    ?assertEqual({ok, <<"{\"code\":-32601,\"message\":\"Method not found\",\"data\":"
                        "{\"method\":\"tools/frobnicate\"}}">>}, ?S:payload(M, 0)).

parse_error_with_null_id_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":"
             "\"Parse error\"}}">>,
    assert_exact(Json),
    {ok, Archive} = ?S:encode_json(Json),
    ?assertMatch({ok, [#{kind := error, id := null, error_code := -32700}]},
                 ?S:info(Archive)).

unicode_test() ->
    Text = unicode:characters_to_binary("héllo wörld — 日本語 🎉 Ω"),
    %% Literal non-ASCII text in a binary needs /utf8 (else each character is cut to a byte).
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":\"ü-1\",\"method\":\"tools/call\",\"params\":"/utf8,
             "{\"name\":\"echo\",\"arguments\":{\"text\":\"", Text/binary, "\"}}}">>,
    assert_exact(Json),
    {ok, Archive} = ?S:encode_json(Json),
    ?assertMatch({ok, [#{id := <<"ü-1"/utf8>>}]}, ?S:info(Archive)),
    %% Escapes are decoded; the text comes back as UTF-8.
    Escaped = <<"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":"
                "{\"t\":\"\\u00e9\\ud83c\\udf89\"}}">>,
    ?assertEqual(<<"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{\"t\":\"",
                   (unicode:characters_to_binary("é🎉"))/binary, "\"}}">>,
                 round_trip(Escaped)).

big_integer_survives_exactly_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"big\":123456789012345678901234567890,"
             "\"neg\":-123456789012345678901234567890,\"u64\":18446744073709551615,"
             "\"i64\":-9223372036854775808}}">>,
    Back = round_trip(Json),
    ?assertEqual(Json, Back),
    ?assertNotEqual(nomatch, binary:match(Back, <<"123456789012345678901234567890">>)).

big_integer_id_test() ->
    {ok, Archive} = ?S:encode_json(<<"{\"jsonrpc\":\"2.0\",\"id\":123456789012345678901234567890,"
                                "\"method\":\"m\"}">>),
    ?assertMatch({ok, [#{id := {json, <<"123456789012345678901234567890">>}}]},
                 ?S:info(Archive)),
    ?assertEqual({ok, <<"{\"jsonrpc\":\"2.0\",\"id\":123456789012345678901234567890,"
                        "\"method\":\"m\"}">>}, ?S:decode_json(Archive)).

floats_test() ->
    assert_exact(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"a\":0.1,\"b\":3.14,"
                   "\"c\":1.5e300,\"d\":-0.0,\"e\":1.0,\"f\":[2.5,-1.25,1e400]}}">>),
    %% Other spellings come back as the shortest text of the same double.
    ?assertEqual(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[-0.0025,100.0]}">>,
                 round_trip(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[-2.5e-3,1E2]}">>)),
    %% A float id is described by its JSON text.
    {ok, Archive} = ?S:encode_json(<<"{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"m\"}">>),
    ?assertMatch({ok, [#{id := {json, <<"1.5">>}}]}, ?S:info(Archive)).

%% Ids that are not 64-bit integers come as {json, ExactText}; the others as Erlang terms.
%% In a batch, each envelope's own id is read.
id_json_test() ->
    Ids = [<<"1.5">>, <<"-0.25">>, <<"1e400">>, <<"9223372036854775808">>,
           <<"-9223372036854775809">>, <<"18446744073709551615">>,
           <<"-123456789012345678901234567890">>, <<"9223372036854775807">>,
           <<"-9223372036854775808">>, <<"null">>, <<"\"s\"">>],
    %% Error responses, as only they may have a null id.
    Items = [["{\"jsonrpc\":\"2.0\",\"id\":", Id,
              ",\"error\":{\"code\":-32600,\"message\":\"x\"}}"] || Id <- Ids],
    Json = iolist_to_binary(["[", lists:join(",", Items), "]"]),
    {ok, Archive} = ?S:encode_json(Json),
    {ok, Infos} = ?S:info(Archive),
    ?assertEqual([{json, <<"1.5">>}, {json, <<"-0.25">>}, {json, <<"1e400">>},
                  {json, <<"9223372036854775808">>}, {json, <<"-9223372036854775809">>},
                  {json, <<"18446744073709551615">>},
                  {json, <<"-123456789012345678901234567890">>},
                  9223372036854775807, -9223372036854775808, null, <<"s">>],
                 [Id || #{id := Id} <- Infos]),
    %% The JSON text of an id is what decode/1 writes for it.
    {ok, Back} = ?S:decode_json(Archive),
    lists:foreach(fun({json, Text}) -> ?assertNotEqual(nomatch, binary:match(Back, Text));
                     (_) -> ok
                  end, [Id || #{id := Id} <- Infos]).

whitespace_is_normalised_test() ->
    ?assertEqual(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}">>,
                 round_trip(<<" {\n \"jsonrpc\" : \"2.0\" ,\t\"id\":1, \"method\":\"ping\"}\r\n">>)).

iodata_input_test() ->
    Json = [<<"{\"jsonrpc\":">>, "\"2.0\"", [$,, <<"\"id\":4,">>], "\"method\":\"ping\"}"],
    {ok, Archive} = ?S:encode_json(Json),
    ?assertEqual({ok, iolist_to_binary(Json)}, ?S:decode_json(Archive)).

batch_test() ->
    Json = <<"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"},"
             "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"},"
             "{\"jsonrpc\":\"2.0\",\"id\":\"r\",\"result\":{\"ok\":true}},"
             "{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":-32602,\"message\":\"bad\"}}]">>,
    assert_exact(Json),
    {ok, Archive} = ?S:encode_json(Json, #{priority => low}),
    ?assertEqual({ok, 4}, ?S:validate(Archive)),
    {ok, Infos} = ?S:info(Archive),
    ?assertMatch([#{kind := request, id := 1, method := <<"tools/list">>},
                  #{kind := notification, id := none,
                    method := <<"notifications/initialized">>},
                  #{kind := response, id := <<"r">>, method := undefined},
                  #{kind := error, id := 3, error_code := -32602}], Infos),
    ?assert(lists:all(fun(#{priority := P}) -> P =:= low end, Infos)),
    {ok, M} = ?S:open(Archive),
    ?assertEqual({ok, <<"{\"ok\":true}">>}, ?S:payload(M, 2)),
    ?assertMatch({error, {not_found, _}}, ?S:payload(M, 0)),
    ?assertMatch({error, {invalid_argument, _}}, ?S:payload(M, 4)).

%% More envelopes than the dirty threshold of the envelope description.
large_batch_test() ->
    N = 3000,
    Items = [io_lib:format("{\"jsonrpc\":\"2.0\",\"id\":~b,\"method\":\"m~b\"}", [I, I])
             || I <- lists:seq(1, N)],
    Json = iolist_to_binary(["[", lists:join(",", Items), "]"]),
    {ok, Archive} = ?S:encode_json(Json),
    {ok, Infos} = ?S:info(Archive),
    ?assertEqual(N, length(Infos)),
    ?assertEqual(lists:seq(1, N), [Id || #{id := Id} <- Infos]),
    ?assertEqual({ok, Json}, ?S:decode_json(Archive)).

%%--------------------------------------------------------------------------------------------
%% Options
%%--------------------------------------------------------------------------------------------

options_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tasks/run\"}">>,
    lists:foreach(
      fun(P) ->
              {ok, A} = ?S:encode_json(Json, #{priority => P, created_at_us => 1700000000000000,
                                          deadline_us => 1700000005000000}),
              ?assertMatch({ok, [#{priority := P, created_at_us := 1700000000000000,
                                   deadline_us := 1700000005000000}]}, ?S:info(A))
      end, [critical, high, normal, low]).

default_options_test() ->
    Before = os:system_time(microsecond),
    {ok, A} = ?S:encode_json(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}">>),
    After = os:system_time(microsecond),
    {ok, [#{priority := normal, created_at_us := Created, deadline_us := 0}]} = ?S:info(A),
    ?assert(Created >= Before - 1000000 andalso Created =< After + 1000000).

bad_options_test_() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}">>,
    %% Each of these breaks encode/2's contract on purpose (see erlmcp_flow_test_util).
    Bad = [#{priority => urgent}, #{priority => 1}, #{priority => "high"},
           #{created_at_us => -1}, #{deadline_us => 1.5}, #{deadline_us => 1 bsl 64},
           #{colour => blue}, #{checksum => yes}, [{priority, high}]],
    [?_assertMatch({error, {invalid_argument, _}}, ?S:encode_json(Json, untyped(Opts)))
     || Opts <- Bad].

%%--------------------------------------------------------------------------------------------
%% Bad JSON and bad archives
%%--------------------------------------------------------------------------------------------

bad_json_test_() ->
    Cases = [{"invalid JSON", <<"{\"jsonrpc\":\"2.0\",">>},
             {"not JSON at all", <<"hello">>},
             {"non-UTF-8", <<"{\"jsonrpc\":\"2.0\",\"method\":\"", 16#ff, 16#fe, "\"}">>},
             {"missing jsonrpc", <<"{\"id\":1,\"method\":\"tools/list\"}">>},
             {"wrong jsonrpc version", <<"{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"m\"}">>},
             {"params is a string",
              <<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":\"s\"}">>},
             {"empty binary", <<>>},
             {"empty batch", <<"[]">>},
             {"a number", <<"42">>},
             {"deep nesting", iolist_to_binary(["{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":",
                                                lists:duplicate(100000, $[),
                                                lists:duplicate(100000, $]), "}"])}],
    [{Name, ?_assertMatch({error, {invalid_argument, Msg}} when is_binary(Msg)
                                                           andalso byte_size(Msg) > 0,
                          ?S:encode_json(Json))}
     || {Name, Json} <- Cases].

error_message_names_the_problem_test() ->
    {error, {invalid_argument, Msg}} = ?S:encode_json(<<"{\"id\":1,\"method\":\"m\"}">>),
    ?assertNotEqual(nomatch, binary:match(Msg, <<"jsonrpc">>)).

sample_archive() ->
    {ok, A} = ?S:encode_json(<<"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":"
                          "{\"name\":\"x\",\"arguments\":{\"n\":[1,2.5,\"s\",null,true]}}}">>),
    A.

%% Every reader answers a corrupt archive with {error, {corrupt, _}} or, when the change
%% happens to keep it valid, a successful read. Nothing crashes.
assert_safe_read(Bytes) ->
    case ?S:decode_json(Bytes) of
        {ok, Json} -> ?assert(is_binary(Json));
        Other -> ?assertMatch({error, {corrupt, _}}, Other)
    end,
    case ?S:validate(Bytes) of
        {ok, Count} -> ?assert(is_integer(Count));
        Invalid -> ?assertMatch({error, {corrupt, _}}, Invalid)
    end,
    case ?S:info(Bytes) of
        {ok, Infos} -> ?assert(is_list(Infos));
        Err -> ?assertMatch({error, {corrupt, _}}, Err)
    end.

empty_and_garbage_archives_test_() ->
    [?_assertMatch({error, {corrupt, _}}, ?S:decode_json(<<>>)),
     ?_assertMatch({error, {corrupt, _}}, ?S:validate(<<>>)),
     ?_assertMatch({error, {corrupt, _}}, ?S:info(<<>>)),
     ?_assertMatch({error, {corrupt, _}}, ?S:decode_json(<<"garbage!">>)),
     ?_assertMatch({error, {corrupt, _}}, ?S:decode_json(binary:copy(<<255>>, 4096))),
     ?_assertMatch({error, {corrupt, _}}, ?S:decode_json(binary:copy(<<0>>, 3))),
     ?_assertMatch({error, {corrupt, _}},
                   ?S:decode_json(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}">>)),
     ?_test(lists:foreach(fun(Seed) ->
                                  _ = rand:seed(exsss, {Seed, Seed, Seed}),
                                  assert_safe_read(rand:bytes(1 + Seed * 7))
                          end, lists:seq(1, 200)))].

truncated_archives_test() ->
    A = sample_archive(),
    lists:foreach(fun(N) ->
                          Prefix = binary:part(A, 0, N),
                          ?assertMatch({error, {corrupt, _}}, ?S:decode_json(Prefix)),
                          ?assertMatch({error, {corrupt, _}}, ?S:open(Prefix))
                  end, lists:seq(0, byte_size(A) - 1)).

bit_flipped_archives_test() ->
    A = sample_archive(),
    Bits = bit_size(A),
    lists:foreach(fun(I) ->
                          <<Pre:I/bits, B:1, Post/bits>> = A,
                          assert_safe_read(<<Pre:I/bits, (1 - B):1, Post/bits>>)
                  end, lists:seq(0, Bits - 1)).

%% With `checksum => true' the archive carries a CRC32C: 4 bytes more than the same archive
%% without, the same JSON back, and every single-bit flip refused as corrupt by every reader
%% (without it, a flip inside a string or a number reads as another valid message).
checksummed_archives_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":"
             "{\"name\":\"x\",\"arguments\":{\"n\":[1,2.5,\"s\",null,true]}}}">>,
    {ok, Plain} = ?S:encode_json(Json, #{created_at_us => 1}),
    {ok, A} = ?S:encode_json(Json, #{created_at_us => 1, checksum => true}),
    {ok, Plain} = ?S:encode_json(Json, #{created_at_us => 1, checksum => false}),
    ?assertEqual(byte_size(Plain) + 4, byte_size(A)),
    ?assertEqual({ok, Json}, ?S:decode_json(A)),
    ?assertEqual({ok, Json}, ?S:decode_json(Plain)),
    lists:foreach(fun(I) ->
                          <<Pre:I/bits, B:1, Post/bits>> = A,
                          Flipped = <<Pre:I/bits, (1 - B):1, Post/bits>>,
                          ?assertMatch({error, {corrupt, _}}, ?S:decode_json(Flipped)),
                          ?assertMatch({error, {corrupt, _}}, ?S:validate(Flipped)),
                          ?assertMatch({error, {corrupt, _}}, ?S:open(Flipped))
                  end, lists:seq(0, bit_size(A) - 1)).

%% Archives read in place from sub-binaries at every small offset (odd ones included).
sub_binary_at_odd_offsets_test() ->
    A = sample_archive(),
    {ok, Expected} = ?S:decode_json(A),
    lists:foreach(
      fun(Offset) ->
              Pad = binary:copy(<<16#AA>>, Offset),
              Big = <<Pad/binary, A/binary, "trailing bytes">>,
              Sub = binary:part(Big, Offset, byte_size(A)),
              ?assertEqual({ok, Expected}, ?S:decode_json(Sub)),
              ?assertEqual({ok, 1}, ?S:validate(Sub)),
              ?assertMatch({ok, [#{id := 7}]}, ?S:info(Sub)),
              <<_:Offset/binary, Matched:(byte_size(A))/binary, _/binary>> = Big,
              ?assertEqual({ok, Expected}, ?S:decode_json(Matched))
      end, lists:seq(0, 16)).

%%--------------------------------------------------------------------------------------------
%% Wrong-typed arguments
%%--------------------------------------------------------------------------------------------

non_binary_arguments_test_() ->
    Bad = [atom, 42, 1.5, self(), make_ref(), #{}, {tuple}, [1 | 2], [256], <<1:3>>],
    [?_assertMatch({error, {invalid_argument, _}}, F(Arg))
     || Arg <- Bad,
        F <- [fun ?S:encode_json/1,
              fun(X) -> ?S:encode_json(X, #{priority => high}) end,
              fun ?S:decode_json/1, fun ?S:validate/1, fun ?S:info/1, fun ?S:open/1,
              fun ?S:envelopes/1, fun ?S:to_json/1, fun(X) -> ?S:payload(X, 0) end]].

bad_payload_index_test() ->
    {ok, M} = ?S:open(sample_archive()),
    ?assertMatch({error, {invalid_argument, _}}, ?S:payload(M, untyped(-1))),
    ?assertMatch({error, {invalid_argument, _}}, ?S:payload(M, untyped(first))),
    ?assertMatch({ok, _}, ?S:payload(M, 0)).

%%--------------------------------------------------------------------------------------------
%% Message handles
%%--------------------------------------------------------------------------------------------

message_handles_are_freed_by_gc_test() ->
    A = sample_archive(),
    Loop = fun Loop(0) -> ok;
               Loop(N) ->
                   {ok, M} = ?S:open(A),
                   {ok, [_]} = ?S:envelopes(M),
                   Loop(N - 1)
           end,
    ok = Loop(20000),
    true = erlang:garbage_collect(),
    %% Handles kept in another process die with it.
    Self = self(),
    {Pid, Ref} = spawn_monitor(fun() ->
                                       Ms = [element(2, ?S:open(A)) || _ <- lists:seq(1, 1000)],
                                       Self ! {held, self(), length(Ms)}
                               end),
    receive {held, Pid, Held} -> ?assertEqual(1000, Held) end,
    receive {'DOWN', Ref, process, Pid, Reason} -> ?assertEqual(normal, Reason) end,

    [erlang:garbage_collect(P) || P <- processes()],
    ?assertMatch({ok, [_]}, ?S:info(A)).

message_handle_outlives_its_archive_binary_test() ->
    {ok, M} = ?S:open(binary:copy(sample_archive())),
    erlang:garbage_collect(),
    ?assertMatch({ok, [#{id := 7, method := <<"tools/call">>}]}, ?S:envelopes(M)),
    ?assertEqual(?S:decode_json(sample_archive()), ?S:to_json(M)).

message_handle_shared_between_processes_test() ->
    {ok, M} = ?S:open(sample_archive()),
    Self = self(),
    Pids = [spawn_link(fun() -> Self ! {self(), [?S:envelopes(M) || _ <- lists:seq(1, 200)]} end)
            || _ <- lists:seq(1, 8)],
    lists:foreach(fun(Pid) ->
                          receive {Pid, Results} ->
                                  ?assert(lists:all(fun(R) -> R =:= ?S:envelopes(M) end, Results))
                          end
                  end, Pids).

%% Error messages are thread-local in the engine; concurrent failures must each read their own.
concurrent_errors_test() ->
    Self = self(),
    Jobs = [{<<"{\"id\":1,\"method\":\"m\"}">>, <<"jsonrpc">>},
            {<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":1}">>, <<"params">>},
            {<<255>>, <<"UTF-8">>}],
    Pids = [spawn_link(
              fun() ->
                      Ok = lists:all(
                             fun(_) ->
                                     {error, {invalid_argument, Msg}} = ?S:encode_json(Json),
                                     binary:match(Msg, Word) =/= nomatch
                             end, lists:seq(1, 500)),
                      Self ! {self(), Ok}
              end) || {Json, Word} <- Jobs, _ <- lists:seq(1, 3)],
    [receive {Pid, Ok} -> ?assert(Ok) end || Pid <- Pids].

%% EUnit and PropEr tests of erlmcp_flow_serializer on Erlang terms (encode/1,2, decode/1,2):
%% each mapping rule, each refusal, and properties over random JSON-mappable terms (round
%% trips, agreement with jiffy, refusals anywhere in a term, no atom ever created).
-module(erlmcp_flow_serializer_term_tests).
-export([prop_round_trip/0, prop_agrees_with_jiffy/0, prop_refuses_non_json_anywhere/0, prop_existing_atoms_creates_none/0]).

%% proper.hrl first: eunit.hrl then leaves PropEr's ?LET alone.
-include_lib("proper/include/proper.hrl").
-include_lib("eunit/include/eunit.hrl").

-define(S, erlmcp_flow_serializer).

-import(erlmcp_flow_test_util, [untyped/1]).

%% decode(encode(Term)).
rt(Term) ->
    {ok, Archive} = ?S:encode(Term),
    {ok, Back} = ?S:decode(Archive),
    Back.

%% The params of a notification, round-tripped.
params_rt(Params) ->
    #{<<"params">> := Back} = rt(#{method => m, params => Params}),
    Back.

%% Most of the terms refused break encode/1's contract on purpose (see erlmcp_flow_test_util).
refused(Term) ->
    {error, {invalid_argument, Msg}} = ?S:encode(untyped(Term)),
    ?assert(is_binary(Msg)),
    Msg.

contains(Msg, Part) ->
    ?assertNotEqual(nomatch, binary:match(Msg, Part), Msg).

%%--------------------------------------------------------------------------------------------
%% Mapping rules
%%--------------------------------------------------------------------------------------------

original_design_call_shape_test() ->
    Data = #{query => <<"rust ffi">>, k => 10},
    {ok, Archive} = ?S:encode(#{method => task, params => Data}),
    ?assertEqual({ok, #{<<"jsonrpc">> => <<"2.0">>, <<"method">> => <<"task">>,
                        <<"params">> => #{<<"query">> => <<"rust ffi">>, <<"k">> => 10}}},
                 ?S:decode(Archive)),
    ?assertMatch({ok, [#{kind := notification, method := <<"task">>, id := none}]},
                 ?S:info(Archive)),
    ?assertEqual({ok, <<"{\"jsonrpc\":\"2.0\",\"method\":\"task\",\"params\":"
                        "{\"k\":10,\"query\":\"rust ffi\"}}">>},
                 ?S:decode_json(Archive)).

maps_and_keys_test() ->
    ?assertEqual(#{<<"a">> => 1, <<"b">> => 2, <<"é"/utf8>> => 3, <<"日本"/utf8>> => 4},
                 params_rt(#{a => 1, <<"b">> => 2, 'é' => 3, '日本' => 4})),
    ?assertEqual(#{}, params_rt(#{})),
    ?assertEqual(#{<<"x">> => #{<<"y">> => #{<<"z">> => []}}},
                 params_rt(#{x => #{y => #{z => []}}})).

lists_test() ->
    ?assertEqual([], params_rt([])),
    ?assertEqual([1, [2, [3, []]], #{}], params_rt([1, [2, [3, []]], #{}])).

binaries_are_utf8_strings_test() ->
    S = <<"quote\" backslash\\ nl\n tab\t ctl", 1, " é 漢字 🎉"/utf8>>,
    ?assertEqual([S, <<>>], params_rt([S, <<>>])).

integers_of_any_size_test() ->
    Ints = [0, 1, -1, 1 bsl 63 - 1, -(1 bsl 63), 1 bsl 63, 1 bsl 64 - 1, 1 bsl 64,
            -(1 bsl 63) - 1, -(1 bsl 64), 1 bsl 200 + 12345, -(1 bsl 2000) - 7,
            123456789012345678901234567890, -99999999999999999999999],
    ?assertEqual(Ints, params_rt(Ints)),
    {ok, A} = ?S:encode(#{method => m, params => [1 bsl 100]}),
    ?assertEqual({ok, <<"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":"
                        "[1267650600228229401496703205376]}">>}, ?S:decode_json(A)).

floats_round_trip_exactly_test() ->
    Floats = [0.0, 0.1, -2.5e-7, 1.0 / 3.0, 1.0e300, 5.0e-324, 1.7976931348623157e308,
              123456.789, 1.0, -1.0e-10],
    Back = params_rt(Floats),
    ?assertEqual([<<F/float>> || F <- Floats], [<<B/float>> || B <- Back]),
    %% -0.0 keeps its sign.
    [Z] = params_rt([-0.0]),
    ?assertEqual(<<(-0.0)/float>>, <<Z/float>>).

literals_and_atoms_test() ->
    ?assertEqual([true, false, null, <<"task">>, <<"héllo"/utf8>>, <<"日本"/utf8>>,
                  <<"undefined">>],
                 params_rt([true, false, null, task, 'héllo', '日本', undefined])).

jsonrpc_key_is_added_and_checked_test() ->
    ?assertMatch(#{<<"jsonrpc">> := <<"2.0">>}, rt(#{method => m})),
    ?assertMatch(#{<<"jsonrpc">> := <<"2.0">>}, rt(#{jsonrpc => <<"2.0">>, method => m})),
    ?assertMatch(#{<<"jsonrpc">> := <<"2.0">>}, rt(#{<<"jsonrpc">> => '2.0', method => m})),
    contains(refused(#{jsonrpc => <<"1.0">>, method => m}), <<"\"2.0\"">>).

message_kinds_test() ->
    {ok, A} = ?S:encode([#{id => 1, method => <<"tools/list">>},
                         #{method => <<"notifications/initialized">>},
                         #{id => <<"r">>, result => #{tools => []}},
                         #{id => null, error => #{code => -32700, message => <<"Parse error">>,
                                                  data => [1]}},
                         #{id => 2, result => null, 'x-trace' => <<"t">>}],
                        #{priority => high, created_at_us => 5, deadline_us => 9}),
    ?assertMatch({ok, [#{kind := request, id := 1, priority := high, created_at_us := 5,
                         deadline_us := 9},
                       #{kind := notification},
                       #{kind := response, id := <<"r">>},
                       #{kind := error, id := null, error_code := -32700},
                       #{kind := response, id := 2}]}, ?S:info(A)),
    ?assertEqual({ok, [#{<<"jsonrpc">> => <<"2.0">>, <<"id">> => 1,
                         <<"method">> => <<"tools/list">>},
                       #{<<"jsonrpc">> => <<"2.0">>,
                         <<"method">> => <<"notifications/initialized">>},
                       #{<<"jsonrpc">> => <<"2.0">>, <<"id">> => <<"r">>,
                         <<"result">> => #{<<"tools">> => []}},
                       #{<<"jsonrpc">> => <<"2.0">>, <<"id">> => null,
                         <<"error">> => #{<<"code">> => -32700,
                                          <<"message">> => <<"Parse error">>,
                                          <<"data">> => [1]}},
                       #{<<"jsonrpc">> => <<"2.0">>, <<"id">> => 2, <<"result">> => null,
                         <<"x-trace">> => <<"t">>}]},
                 ?S:decode(A)).

encode_options_test() ->
    Msg = #{id => 1, method => m},
    {ok, Plain} = ?S:encode(Msg, #{created_at_us => 7}),
    {ok, Sealed} = ?S:encode(Msg, #{created_at_us => 7, checksum => true}),
    ?assertEqual(byte_size(Plain) + 4, byte_size(Sealed)),
    ?assertEqual(?S:decode(Plain), ?S:decode(Sealed)),
    <<Head:(byte_size(Sealed) - 1)/binary, Last>> = Sealed,
    ?assertMatch({error, {corrupt, _}}, ?S:decode(<<Head/binary, (Last bxor 1)>>)),
    ?assertMatch({ok, [#{priority := low, created_at_us := 7, deadline_us := 8}]},
                 ?S:info(element(2, ?S:encode(Msg, #{priority => low, created_at_us => 7,
                                                     deadline_us => 8})))),
    [?assertMatch({error, {invalid_argument, _}}, ?S:encode(Msg, Bad))
     || Bad <- [#{priority => urgent}, #{created_at_us => -1}, #{checksum => yes},
                #{colour => blue}, [{priority, high}]]].

%% encode_json/decode_json and encode/decode agree.
json_and_terms_agree_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\",\"params\":{\"n\":"
             "123456789012345678901234567890,\"f\":0.5,\"s\":\"é\",\"l\":[null,true]}}"/utf8>>,
    {ok, FromJson} = ?S:encode_json(Json, #{created_at_us => 1}),
    {ok, FromTerm} = ?S:encode(#{id => 9, method => <<"tools/call">>,
                                 params => #{n => 123456789012345678901234567890, f => 0.5,
                                             s => <<"é"/utf8>>, l => [null, true]}},
                               #{created_at_us => 1}),
    ?assertEqual(?S:decode(FromJson), ?S:decode(FromTerm)),
    {ok, Back} = ?S:decode_json(FromTerm),
    {ok, Again} = ?S:encode_json(Back, #{created_at_us => 1}),
    ?assertEqual(?S:decode(FromTerm), ?S:decode(Again)).

keys_existing_atoms_test() ->
    {ok, A} = ?S:encode(#{method => m, params => #{<<"method">> => 1,
                                                   <<"no_such_atom_zq81x">> => 2,
                                                   'é' => 3}}),
    ?assertEqual({ok, #{jsonrpc => <<"2.0">>, method => <<"m">>,
                        params => #{method => 1, <<"no_such_atom_zq81x">> => 2, 'é' => 3}}},
                 ?S:decode(A, #{keys => existing_atoms})),
    ?assertEqual(?S:decode(A), ?S:decode(A, #{keys => binary})),
    ?assertMatch({error, {invalid_argument, _}}, ?S:decode(A, untyped(#{keys => atom}))),
    ?assertMatch({error, {invalid_argument, _}}, ?S:decode(A, untyped(#{colour => blue}))),
    ?assertMatch({error, {invalid_argument, _}}, ?S:decode(A, untyped([]))).

%%--------------------------------------------------------------------------------------------
%% Refusals: {error, {invalid_argument, What and where}}, never an exception
%%--------------------------------------------------------------------------------------------

refusals_say_what_and_where_test_() ->
    {ok, Port} = {ok, hd(erlang:ports())},
    Cases = [{{1, 2}, <<"a tuple">>},
             {self(), <<"a pid">>},
             {make_ref(), <<"a reference">>},
             {fun() -> ok end, <<"a fun">>},
             {Port, <<"a port">>},
             {<<1:3>>, <<"a bitstring">>},
             {[1 | 2], <<"an improper list">>},
             {[a, b | c], <<"an improper list">>}],
    [?_test(begin
                Msg = refused(#{method => m, params => #{items => [0, #{k => Bad}]}}),
                contains(Msg, What),
                contains(Msg, <<"(at $.params.items[1].k)">>)
            end) || {Bad, What} <- Cases].

bad_keys_test() ->
    Msg = refused(#{method => m, params => #{x => #{1 => a}}}),
    contains(Msg, <<"a map key must be an atom or a binary, not a number">>),
    contains(Msg, <<"(at $.params.x)">>),
    contains(refused(#{method => m, params => #{{k} => 1}}), <<"not a tuple">>),
    contains(refused(#{method => m, params => #{"k" => 1}}), <<"not a list">>),
    Dup = refused(#{method => m, params => [#{a => 1, <<"a">> => 2}]}),
    contains(Dup, <<"the key \"a\"">>),
    contains(Dup, <<"(at $.params[0])">>).

bad_strings_test() ->
    Msg = refused(#{method => m, params => #{s => <<"ok", 255, 254>>}}),
    contains(Msg, <<"UTF-8">>),
    contains(Msg, <<"(at $.params.s)">>),
    contains(refused(#{method => m, params => #{<<255>> => 1}}), <<"UTF-8">>).

not_json_rpc_test() ->
    contains(refused(#{method => m, params => 1}), <<"\"params\" must be an object or an array">>),
    contains(refused([]), <<"batch must not be empty">>),
    contains(refused(<<"{}">>), <<"must be a JSON object">>),
    contains(refused(42), <<"must be a JSON object">>),
    contains(refused(#{id => 1}), <<"needs \"method\", \"result\" or \"error\"">>),
    contains(refused([#{method => m}, 7]), <<"batch item 1">>),
    contains(refused(#{id => [1], method => m}), <<"\"id\" must be">>),
    contains(refused({tuple}), <<"a tuple">>).

deep_nesting_test() ->
    Nest = fun(N) -> lists:foldl(fun(_, Acc) -> [Acc] end, [], lists:seq(1, N)) end,
    %% The message object is one level, params the next: 127 nested lists fit.
    ?assertMatch({ok, _}, ?S:encode(#{method => m, params => Nest(126)})),
    contains(refused(#{method => m, params => Nest(127)}), <<"nesting deeper than 128">>),
    %% Far deeper terms are refused as cleanly, and quickly (no C stack involved).
    contains(refused(#{method => m, params => Nest(1000000)}), <<"nesting deeper than 128">>),
    DeepMap = lists:foldl(fun(_, Acc) -> #{k => Acc} end, #{}, lists:seq(1, 200000)),
    contains(refused(#{method => m, params => DeepMap}), <<"nesting deeper than 128">>).

%% Decoding JSON that has no exact term form.
no_term_form_test() ->
    {ok, Huge} = ?S:encode_json(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"x\":[1e400]}}">>),
    {error, {invalid_argument, Msg}} = ?S:decode(Huge),
    contains(Msg, <<"1e400">>),
    contains(Msg, <<"decode_json/1">>),
    contains(Msg, <<"(at $.result.x[0])">>),
    ?assertEqual({ok, <<"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"x\":[1e400]}}">>},
                 ?S:decode_json(Huge)),
    {ok, Dup} = ?S:encode_json(<<"[{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":7},"
                                 "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"a\":1,\"a\":2}}]">>),
    {error, {invalid_argument, DupMsg}} = ?S:decode(Dup),
    contains(DupMsg, <<"the key \"a\"">>),
    contains(DupMsg, <<"(at $[1].result)">>),
    %% With existing_atoms too (both keys would be the atom a).
    ?assertMatch({error, {invalid_argument, _}}, ?S:decode(Dup, #{keys => existing_atoms})).

%% Integers up to 300 000 digits come back; longer ones (an archive may hold 100 million
%% digits, and the conversion is quadratic) are refused with a pointer to decode_json/1.
long_integers_test() ->
    Long = binary_to_integer(binary:copy(<<"9">>, 300000)),
    ?assertEqual([Long, -Long], params_rt([Long, -Long])),
    Digits = binary:copy(<<"7">>, 300001),
    {ok, A} = ?S:encode_json(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[", Digits/binary,
                               "]}">>),
    %% (The term itself would print as 300 KB in a failure report: only its shape.)
    {error, {invalid_argument, Msg}} = case ?S:decode(A) of
                                           {ok, _} -> decoded_but_should_not;
                                           Error -> Error
                                       end,
    contains(Msg, <<"300001 digits">>),
    contains(Msg, <<"decode_json/1">>),
    {ok, Json} = ?S:decode_json(A),
    ?assertNotEqual(nomatch, binary:match(Json, Digits)).

%% Converting a long integer is quadratic (encode: the engine writes the magnitude as decimal
%% text, 0.37 s for this one; decode: the digits become a bignum here, 20 ms), so the byte
%% count of the term or the archive says little: an integer under the 64 KiB of a normal
%% scheduler's budget must still go to a dirty one. A NIF holding a normal scheduler gives a
%% long_schedule report; the decode, shorter, is tried three times (one clean run passes: an
%% OS hiccup on a loaded machine is no failure, a NIF taking 20 ms every time is).
long_integers_leave_the_normal_scheduler_test() ->
    Big = (1 bsl 480000) - 1, % 60 000 bytes, 144 495 digits
    ?assertEqual([], long_schedules(
                       fun() -> {ok, _} = ?S:encode(#{method => m, params => [Big]}) end, 50)),
    Digits = binary:copy(<<"7">>, 65000),
    {ok, A} = ?S:encode_json(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[", Digits/binary,
                               "]}">>),
    ?assert(byte_size(A) < 64 * 1024),
    Runs = [long_schedules(fun() -> {ok, _} = ?S:decode(A) end, 8) || _ <- [1, 2, 3]],
    ?assert(lists:member([], Runs), Runs).

%% Encode takes the integers decode gives back (up to 300 000 digits: long_integers_test)
%% and refuses longer ones, whose conversion would hold a dirty scheduler for minutes.
encode_refuses_what_decode_would_test() ->
    ?assertMatch({ok, _}, ?S:encode(#{method => m, params => [(1 bsl 996584) - 1]})),
    Msg = refused(#{method => m, params => [-(1 bsl 996584)]}),
    contains(Msg, <<"an integer of 124574 bytes">>),
    contains(Msg, <<"(at $.params[0])">>),
    contains(Msg, <<"encode_json/1">>).

%% The long_schedule reports (Ms or more) of a process running Fun (the monitoring process
%% itself is never reported).
long_schedules(Fun, Ms) ->
    Prev = erlang:system_monitor(self(), [{long_schedule, Ms}]),
    {Pid, Ref} = spawn_monitor(fun() -> _ = Fun(), receive after 20 -> ok end end),
    receive {'DOWN', Ref, process, Pid, Reason} -> ?assertEqual(normal, Reason) end,
    _ = case Prev of
        undefined -> erlang:system_monitor(undefined);
        {Monitor, Opts} -> erlang:system_monitor(Monitor, Opts)
    end,
    collect_long_schedules(Pid).

collect_long_schedules(Pid) ->
    receive
        {monitor, Pid, long_schedule, Info} -> [Info | collect_long_schedules(Pid)]
    after 0 ->
        []
    end.

decode_refuses_garbage_test_() ->
    [?_assertMatch({error, {corrupt, _}}, ?S:decode(B))
     || B <- [<<>>, <<"garbage!">>, binary:copy(<<0>>, 64),
              <<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}">>]] ++
    [?_assertMatch({error, {invalid_argument, _}}, ?S:decode(untyped(B)))
     || B <- [atom, 42, self(), {t}]].

%% Every single-bit flip of an archive decodes to some term or is refused as corrupt.
bit_flips_never_crash_test() ->
    {ok, A} = ?S:encode(#{id => 7, method => m, params => #{n => [1, 2.5, <<"s">>, null,
                                                                  1 bsl 80]}}),
    lists:foreach(fun(I) ->
                          <<Pre:I/bits, B:1, Post/bits>> = A,
                          case ?S:decode(<<Pre:I/bits, (1 - B):1, Post/bits>>) of
                              {ok, _} -> ok;
                              {error, {Reason, _}} ->
                                  ?assert(lists:member(Reason, [corrupt, invalid_argument]))
                          end
                  end, lists:seq(0, bit_size(A) - 1)).

%% Big messages go to a dirty scheduler (encode restarts there past the budget); the result
%% is the same as for small ones.
large_terms_test() ->
    Big = maps:from_list([{integer_to_binary(I), lists:seq(1, 50)} || I <- lists:seq(1, 5000)]),
    Msg = #{method => m, params => Big},
    {ok, A} = ?S:encode(Msg),
    ?assert(byte_size(A) > 256 * 1024),
    ?assertEqual({ok, #{<<"jsonrpc">> => <<"2.0">>, <<"method">> => <<"m">>,
                        <<"params">> => Big}}, ?S:decode(A)),
    Long = binary:copy(<<"x">>, 1 bsl 20),
    ?assertEqual([Long], params_rt([Long])).

%%--------------------------------------------------------------------------------------------
%% Properties
%%--------------------------------------------------------------------------------------------

-define(LATIN1_ATOMS, [a, b, task, 'héllo', ok, error, 'tools/call', undefined, '']).
-define(ATOMS, ['日本', 'λ' | ?LATIN1_ATOMS]).

big_int() ->
    ?LET({Sign, Bits, Low}, {oneof([1, -1]), range(60, 300), non_neg_integer()},
         Sign * ((1 bsl Bits) + Low)).

json_number() ->
    oneof([integer(), big_int(), float(), oneof([0.0, -0.0, 1.0e300, 5.0e-324])]).

json_scalar(Atoms) ->
    oneof([json_number(), utf8(), oneof(Atoms), oneof([true, false, null])]).

json_key(Atoms) ->
    oneof([utf8(), oneof(Atoms)]).

%% Keys by their JSON text: an atom and a binary of the same name cannot share a map.
key_text(K) when is_atom(K) -> atom_to_binary(K, utf8);
key_text(K) -> K.

%% Containers of up to 5 items, nested up to `Depth' levels (PropEr's own list sizes make
%% terms of megabytes, slow to generate).
json_map(Atoms, Depth) ->
    ?LET(Pairs, ?LET(N, range(0, 5), vector(N, {json_key(Atoms), json_value(Atoms, Depth)})),
         maps:from_list(maps:values(maps:from_list([{key_text(K), {K, V}}
                                                    || {K, V} <- Pairs])))).

json_value(Atoms, Depth) when Depth =< 0 ->
    json_scalar(Atoms);
json_value(Atoms, Depth) ->
    frequency([{3, json_scalar(Atoms)},
               {1, ?LET(N, range(0, 5), vector(N, json_value(Atoms, Depth - 1)))},
               {1, json_map(Atoms, Depth - 1)}]).

json_params(Atoms) ->
    oneof([?LET(N, range(0, 5), vector(N, json_value(Atoms, 4))), json_map(Atoms, 4)]).

message(Atoms) ->
    oneof([?LET({Id, Method, Params}, {oneof([integer(), utf8(), big_int()]),
                                       oneof([utf8(), oneof(Atoms)]), json_params(Atoms)},
                #{id => Id, method => Method, params => Params}),
           ?LET({Method, Params}, {utf8(), json_params(Atoms)},
                #{<<"method">> => Method, <<"params">> => Params, jsonrpc => <<"2.0">>}),
           ?LET({Id, Result}, {integer(), json_value(Atoms, 5)},
                #{id => Id, result => Result}),
           ?LET({Code, Msg, Data}, {integer(-100000, 100000), utf8(), json_value(Atoms, 5)},
                #{id => null, error => #{code => Code, message => Msg, data => Data}})]).

message_or_batch(Atoms) ->
    oneof([message(Atoms), ?LET(N, range(1, 4), vector(N, message(Atoms)))]).

%% The term decode should give: binary keys, atoms as binaries (but true, false, null),
%% and "jsonrpc": "2.0" in every message.
normalize(M) when is_map(M) ->
    maps:from_list([{key_text(K), normalize(V)} || {K, V} <- maps:to_list(M)]);
normalize(L) when is_list(L) -> [normalize(X) || X <- L];
normalize(A) when A =:= true; A =:= false; A =:= null -> A;
normalize(A) when is_atom(A) -> atom_to_binary(A, utf8);
normalize(X) -> X.

with_version(M) when is_map(M) -> maps:put(<<"jsonrpc">>, <<"2.0">>, normalize(M));
with_version(L) -> [with_version(M) || M <- L].

prop_round_trip() ->
    ?FORALL(T, message_or_batch(?ATOMS),
            begin
                {ok, A} = ?S:encode(T),
                {ok, Back} = ?S:decode(A),
                Back =:= with_version(T)
            end).

%% The JSON text of the archive says what jiffy says of the same term.
prop_agrees_with_jiffy() ->
    ?FORALL(T, message_or_batch(?LATIN1_ATOMS),
            begin
                {ok, A} = ?S:encode(T),
                {ok, Json} = ?S:decode_json(A),
                Ours = jiffy:decode(Json, [return_maps]),
                Theirs = jiffy:decode(jiffy:encode(add_version(T)), [return_maps]),
                Ours =:= Theirs
            end).

add_version(M) when is_map(M) ->
    case maps:is_key(jsonrpc, M) orelse maps:is_key(<<"jsonrpc">>, M) of
        true -> M;
        false -> M#{jsonrpc => <<"2.0">>}
    end;
add_version(L) -> [add_version(M) || M <- L].

not_json() ->
    oneof([{}, {1, 2}, self(), make_ref(), fun() -> ok end, <<1:7>>, [1 | 2],
           hd(erlang:ports())]).

%% A bad term buried in a valid JSON value.
buried(Bad, 0) -> Bad;
buried(Bad, N) ->
    ?LET({Before, Key, After},
         {list(json_scalar(?ATOMS)), utf8(), list(json_scalar(?ATOMS))},
         oneof([Before ++ [buried(Bad, N - 1)] ++ After,
                #{Key => buried(Bad, N - 1), <<"other-", Key/binary>> => 1}])).

prop_refuses_non_json_anywhere() ->
    ?FORALL({Bad, Depth}, {not_json(), range(0, 6)},
            ?FORALL(Params, buried(Bad, Depth),
                    case ?S:encode(#{method => m, params => [Params]}) of
                        {error, {invalid_argument, Msg}} -> is_binary(Msg);
                        _ -> false
                    end)).

unknown_key() ->
    ?LET(Chars, non_empty(list(oneof(lists:seq($a, $z) ++ [$_]))),
         <<"emf_unknown_", (list_to_binary(Chars))/binary>>).

prop_existing_atoms_creates_none() ->
    ?FORALL(Keys, non_empty(list(oneof([unknown_key(), <<"method">>, <<"ok">>]))),
            begin
                Params = maps:from_list([{K, 1} || K <- Keys]),
                {ok, A} = ?S:encode(#{method => m, params => Params}),
                Before = erlang:system_info(atom_count),
                {ok, #{params := Back}} = ?S:decode(A, #{keys => existing_atoms}),
                After = erlang:system_info(atom_count),
                Expected = maps:from_list(
                             [{try binary_to_existing_atom(K, utf8)
                               catch error:badarg -> K
                               end, 1} || K <- Keys]),
                Before =:= After andalso Back =:= Expected
            end).

proper_test_() ->
    Check = fun(Prop, N) ->
                    {timeout, 300,
                     ?_assert(proper:quickcheck(Prop, [{numtests, N}, {to_file, user}]))}
            end,
    %% Warm up: the first decode with existing_atoms must not load code during a property.
    {ok, A} = ?S:encode(#{method => m}),
    {ok, _} = ?S:decode(A, #{keys => existing_atoms}),
    [Check(prop_round_trip(), 500),
     Check(prop_agrees_with_jiffy(), 500),
     Check(prop_refuses_non_json_anywhere(), 500),
     Check(prop_existing_atoms_creates_none(), 500)].

%% A term of shared subterms is small in memory and huge when walked: 2^12 references to one
%% 64 KiB binary is 256 MiB of JSON text. The engine's builder stops at the JSON bridge's
%% limit (128 MiB) with too_large, instead of growing until memory runs out.
shared_subterms_are_bounded_test_() ->
    {timeout, 120,
     fun() ->
             Leaf = binary:copy(<<"x">>, 65536),
             T = lists:foldl(fun(_, Acc) -> [Acc, Acc] end, Leaf, lists:seq(1, 12)),
             ?assertMatch({error, {too_large, <<_/binary>>}},
                          ?S:encode(#{method => m, params => [T]})),
             %% Half of it fits.
             Half = lists:foldl(fun(_, Acc) -> [Acc, Acc] end, Leaf, lists:seq(1, 10)),
             ?assertMatch({ok, _}, ?S:encode(#{method => m, params => [Half]}))
     end}.

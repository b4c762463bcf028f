%% The serializer against the Erlang baselines on the same MCP messages, in one run:
%%
%%   term_to_binary        term_to_binary/1 and binary_to_term/1
%%   term_to_binary[c]     term_to_binary(Msg, [compressed]) (the original design's baseline)
%%                         and binary_to_term/1
%%   jiffy                 jiffy:encode/1 and jiffy:decode(_, [return_maps]) (JSON text)
%%   erlmcp_flow (term)    erlmcp_flow_serializer:encode/1 and decode/1 on the Erlang term
%%                         itself: the final API, #{<<"jsonrpc">> => <<"2.0">>, ...} to an
%%                         archive and back; "n/a" while encode/1 answers {error, _} for a map
%%   erlmcp_flow (JSON)    the term through jiffy:encode/1 to JSON text (made a binary), that
%%                         text to an archive through the serializer's JSON entry point, and
%%                         back to JSON text and through jiffy:decode/2: what a user of the
%%                         JSON API pays

%%
%% Messages: MCP JSON-RPC 2.0 as Erlang maps (binary keys and strings, integers, booleans):
%% a small tools/call request with arguments, a tools/list response with six tools and their
%% JSON schemas (about 3 KB), a notifications/progress notification, a resources/read response
%% with 64 KiB of text, and a batch of eight small messages (a list of maps; a JSON array).
%%
%% Every codec first round-trips every message: decode(encode(M)) must equal M, exactly for
%% term_to_binary and jiffy (these messages hold nothing jiffy changes), and for erlmcp_flow
%% exactly or else as the JSON text of M decodes (jiffy's normalisation of JSON values); a
%% codec that does not is reported and the run stops. Then a warm-up round (not counted) sizes
%% each measurement to about ?TARGET_MS (short: one tenth), and Rounds rounds follow. In each
%% round every message is measured with every codec, the codecs in an order that rotates from
%% round to round, encode then decode, so that drift (frequency, other load) hits all alike;
%% the table gives the median ns/op over the rounds and the encoded size in bytes.
%%
%% Run it with bench/run-serializer.sh [short|full] (default full: 9 rounds of ~100 ms per
%% measurement; short: 3 rounds of ~10 ms).
-module(serializer_bench).

-export([main/1]).

-define(S, erlmcp_flow_serializer).
%% The serializer's JSON-text entry points (encode/1 and decode/1 take and give terms).
-define(FLOW_JSON_ENCODE, encode_json).
-define(FLOW_JSON_DECODE, decode_json).
-define(TARGET_MS, 100).

%%--------------------------------------------------------------------------------------------
%% Main
%%--------------------------------------------------------------------------------------------

-spec main([string()]) -> no_return().
main(Args) ->
    {Rounds, TargetMs} = case Args of
                             ["short" | _] -> {3, ?TARGET_MS div 10};
                             ["full" | _] -> {9, ?TARGET_MS};
                             [] -> {9, ?TARGET_MS};
                             [Other | _] -> usage(Other)
                         end,
    io:format("erlmcp_flow serializer benchmark: ~b rounds of ~b ms per measurement, "
              "OTP ~s, ~b schedulers, ~b CPUs (~s), jiffy ~s~n",
              [Rounds, TargetMs, erlang:system_info(otp_release),
               erlang:system_info(schedulers_online),
               erlang:system_info(logical_processors_available), cpu_model(),
               app_vsn(jiffy)]),
    Messages = messages(),
    Codecs = codecs(),
    Cells = [{M, C} || M <- Messages, C <- Codecs],
    Available = [Cell || Cell <- Cells, check(Cell)],
    %% Warm-up: every cell once, which also sizes its loops to about TargetMs.
    Sized = [{M, C, size_loop(M, C, TargetMs)} || {M, C} <- Available],
    Samples = rounds(Sized, Rounds, #{}),
    report(Messages, Codecs, Sized, Samples),
    halt(0).

-spec usage(string()) -> no_return().
usage(Other) ->

    io:format(standard_error, "serializer_bench: unknown mode ~p (short | full)~n", [Other]),
    halt(2).

%%--------------------------------------------------------------------------------------------
%% Codecs
%%--------------------------------------------------------------------------------------------

%% {Label, Encode, Decode}: Encode(Term) -> binary() | {error, Reason}; Decode(binary()) -> Term.
%% A label starting with "JSON text" takes the message's JSON text (made before the clock
%% starts) instead of the term.
codecs() ->
    [{"term_to_binary", fun erlang:term_to_binary/1, fun erlang:binary_to_term/1},
     {"term_to_binary[c]", fun(M) -> term_to_binary(M, [compressed]) end,
      fun erlang:binary_to_term/1},
     {"jiffy", fun(M) -> iolist_to_binary(jiffy:encode(M)) end,
      fun(J) -> jiffy:decode(J, [return_maps]) end},
     {"erlmcp_flow (term)", fun flow_term_encode/1, fun flow_term_decode/1},
     {"erlmcp_flow (JSON)", fun flow_json_encode/1, fun flow_json_decode/1},
     {"JSON text<>archive", fun flow_text_encode/1, fun flow_text_decode/1}].

%% The term's JSON text when the codec takes text, else the term.
input("JSON text" ++ _, M) -> iolist_to_binary(jiffy:encode(M));
input(_Label, M) -> M.

flow_term_encode(M) ->
    case ?S:encode(M) of
        {ok, Archive} -> Archive;
        {error, _} = Error -> Error
    end.

flow_term_decode(Archive) ->
    {ok, Term} = ?S:decode(Archive),
    Term.

%% jiffy answers iodata for larger outputs; the NIF takes iodata on a dirty scheduler (see
%% erlmcp_flow_nif), so the text is made a binary first, as a caller keeping small messages on
%% its own scheduler does.
flow_json_encode(M) ->
    case ?S:?FLOW_JSON_ENCODE(iolist_to_binary(jiffy:encode(M))) of

        {ok, Archive} -> Archive;
        {error, _} = Error -> Error
    end.

flow_json_decode(Archive) ->
    {ok, Json} = ?S:?FLOW_JSON_DECODE(Archive),
    jiffy:decode(Json, [return_maps]).

%% The serializer alone: JSON text to an archive and back to text.
flow_text_encode(Json) ->
    case ?S:?FLOW_JSON_ENCODE(Json) of
        {ok, Archive} -> Archive;
        {error, _} = Error -> Error
    end.

flow_text_decode(Archive) ->
    {ok, Json} = ?S:?FLOW_JSON_DECODE(Archive),
    Json.

%% Whether codec C takes message M (false: "n/a"), after checking that it round-trips it.
check({{Name, M}, {Label, Encode, Decode}}) ->
    In = input(Label, M),
    case catch Encode(In) of
        Bin when is_binary(Bin) ->
            Back = Decode(Bin),
            case round_trips(In, Back, M) of
                true ->
                    true;
                false ->
                    io:format(standard_error,
                              "~s does not round-trip ~s:~n  in:  ~P~n  out: ~P~n",
                              [Label, Name, In, 30, Back, 30]),
                    halt(1)
            end;
        {error, {Status, Why}} when is_binary(Why) ->
            io:format("  (~s, ~s: n/a, ~s: ~ts)~n", [Label, Name, Status, Why]),
            false;
        Refused ->
            io:format("  (~s, ~s: n/a, ~W)~n", [Label, Name, Refused, 8]),
            false
    end.


%% Back, decoded from In (M or its JSON text), is In itself, or M as its JSON text decodes
%% (jiffy's normalisation), or JSON text of the same value as In.
round_trips(In, In, _M) ->
    true;
round_trips(In, Back, M) ->
    Json = jiffy:decode(jiffy:encode(M), [return_maps]),
    Back =:= Json
        orelse (is_binary(In) andalso is_binary(Back)
                andalso jiffy:decode(Back, [return_maps]) =:= Json).

%%--------------------------------------------------------------------------------------------
%% Measuring
%%--------------------------------------------------------------------------------------------

%% The number of iterations that takes about TargetMs, from a first timed run (the warm-up).
size_loop({_, M}, {Label, Encode, Decode}, TargetMs) ->
    In = input(Label, M),
    Bin = Encode(In),
    Probe = fun(N) -> max(time_encode(Encode, In, N), time_decode(Decode, Bin, N)) end,
    grow(Probe, 1, TargetMs * 1000000).

grow(Probe, N, TargetNs) ->
    Ns = Probe(N),
    if
        Ns >= TargetNs div 10 -> max(1, (N * TargetNs) div max(Ns, 1));
        true -> grow(Probe, N * 10, TargetNs)
    end.

%% Rounds: each measures every {message, codec} cell, the codecs rotated by the round number.
rounds(_Sized, 0, Acc) ->
    Acc;
rounds(Sized, Round, Acc) ->
    ByMessage = group(Sized),
    Acc1 = lists:foldl(
             fun({_Name, Cells}, A) ->
                     lists:foldl(fun measure/2, A, rotate(Cells, Round))
             end, Acc, ByMessage),
    rounds(Sized, Round - 1, Acc1).

measure({{Name, M}, {Label, Encode, Decode}, N}, Acc) ->
    In = input(Label, M),
    Bin = Encode(In),
    EncNs = time_encode(Encode, In, N) / N,
    DecNs = time_decode(Decode, Bin, N) / N,
    maps:update_with({Name, Label}, fun(L) -> [{EncNs, DecNs} | L] end,
                     [{EncNs, DecNs}], Acc).

time_encode(Encode, M, N) ->
    erlang:garbage_collect(),
    T0 = erlang:monotonic_time(nanosecond),
    encode_loop(Encode, M, N),
    erlang:monotonic_time(nanosecond) - T0.

time_decode(Decode, Bin, N) ->
    erlang:garbage_collect(),
    T0 = erlang:monotonic_time(nanosecond),
    decode_loop(Decode, Bin, N),
    erlang:monotonic_time(nanosecond) - T0.

encode_loop(_Encode, _M, 0) -> ok;
encode_loop(Encode, M, N) ->
    _ = Encode(M),
    encode_loop(Encode, M, N - 1).

decode_loop(_Decode, _Bin, 0) -> ok;
decode_loop(Decode, Bin, N) ->
    _ = Decode(Bin),
    decode_loop(Decode, Bin, N - 1).

group(Sized) ->
    Names = lists:usort([Name || {{Name, _}, _, _} <- Sized]),
    [{Name, [S || {{N, _}, _, _} = S <- Sized, N =:= Name]} || Name <- Names].

rotate([], _K) -> [];
rotate(L, K) ->
    {A, B} = lists:split(K rem length(L), L),
    B ++ A.

%%--------------------------------------------------------------------------------------------
%% Report
%%--------------------------------------------------------------------------------------------

%% Ratios are speed-ups: the baseline's ns/op over the codec's (above 1: faster than it);
%% sizes are the codec's bytes over the baseline's.
report(Messages, Codecs, Sized, Samples) ->
    io:format("~nns/op: median over the rounds; bytes: the encoded size. xt2b, xt2bc, xjiffy: "
              "speed-up against term_to_binary/1, term_to_binary(_, [compressed]) and jiffy "
              "(baseline ns / codec ns) for encode / decode.~n"
              "JSON text<>archive: the serializer alone, from JSON text made beforehand to an "
              "archive and back to JSON text (no jiffy).~n~n"),

    io:format("~-18s ~-19s ~10s ~10s ~8s ~11s ~11s ~11s~n",
              ["message", "codec", "enc ns/op", "dec ns/op", "bytes",
               "xt2b e/d", "xt2bc e/d", "xjiffy e/d"]),
    Sizes = maps:from_list([{{Name, Label}, byte_size(Encode(input(Label, M)))}
                            || {{Name, M}, {Label, Encode, _}, _} <- Sized]),
    Median = fun(Key) ->
                     case Samples of
                         #{Key := L} -> {median([E || {E, _} <- L]), median([D || {_, D} <- L])};
                         #{} -> undefined
                     end
             end,
    lists:foreach(
      fun({Name, _}) ->
              Base = fun(Label) -> Median({Name, Label}) end,
              lists:foreach(
                fun({Label, _, _}) ->
                        case Median({Name, Label}) of
                            undefined ->
                                io:format("~-18s ~-19s ~10s ~10s ~8s~n",
                                          [Name, Label, "n/a", "n/a", "n/a"]);
                            {E, D} = Mine ->
                                io:format("~-18s ~-19s ~10s ~10s ~8b ~11s ~11s ~11s~n",
                                          [Name, Label, ns(E), ns(D),
                                           maps:get({Name, Label}, Sizes),
                                           ratio(Base("term_to_binary"), Mine),
                                           ratio(Base("term_to_binary[c]"), Mine),
                                           ratio(Base("jiffy"), Mine)])
                        end
                end, Codecs),
              io:format("~n")
      end, Messages).

median(L) ->
    lists:nth((length(L) + 1) div 2, lists:sort(L)).

ns(X) when X >= 100 -> integer_to_list(round(X));
ns(X) -> float_to_list(X, [{decimals, 1}]).

ratio(undefined, _) -> "n/a";
ratio({BE, BD}, {E, D}) -> x(BE / E) ++ "/" ++ x(BD / D).

x(R) when R >= 10 -> integer_to_list(round(R));
x(R) -> float_to_list(R, [{decimals, 2}]).

cpu_model() ->
    case file:read_file("/proc/cpuinfo") of
        {ok, Info} ->
            case re:run(Info, "model name\\s*:\\s*([^\\n]*)", [{capture, all_but_first, list}]) of
                {match, [Model]} -> Model;
                nomatch -> "unknown CPU"
            end;
        {error, _} ->
            "unknown CPU"
    end.

app_vsn(App) ->
    _ = application:load(App),
    case application:get_key(App, vsn) of
        {ok, Vsn} -> Vsn;
        undefined -> "?"
    end.

%%--------------------------------------------------------------------------------------------
%% Messages
%%--------------------------------------------------------------------------------------------

%% [{Name, Term}]
messages() ->
    [{"tools/call", tools_call(1)},
     {"tools/list result", tools_list_result(2)},
     {"progress notif.", progress(<<"op-7f3a">>, 40, 100)},
     {"resources/read 64K", resources_read_result(3)},
     {"batch of 8", batch()}].

rpc(Id, Method, Params) ->
    #{<<"jsonrpc">> => <<"2.0">>, <<"id">> => Id, <<"method">> => Method,
      <<"params">> => Params}.

result(Id, Result) ->
    #{<<"jsonrpc">> => <<"2.0">>, <<"id">> => Id, <<"result">> => Result}.

tools_call(Id) ->
    rpc(Id, <<"tools/call">>,
        #{<<"name">> => <<"search_files">>,
          <<"arguments">> => #{<<"query">> => <<"supervisor restart intensity">>,
                               <<"path">> => <<"/home/dev/projects/erlmcp/src">>,
                               <<"glob">> => <<"*.erl">>,
                               <<"max_results">> => 20,
                               <<"case_sensitive">> => false},
          <<"_meta">> => #{<<"progressToken">> => <<"op-7f3a">>}}).

progress(Token, Done, Total) ->
    #{<<"jsonrpc">> => <<"2.0">>, <<"method">> => <<"notifications/progress">>,
      <<"params">> => #{<<"progressToken">> => Token, <<"progress">> => Done,
                        <<"total">> => Total,
                        <<"message">> => <<"Indexed 40 of 100 files">>}}.

tools_list_result(Id) ->
    Str = fun(Desc) -> #{<<"type">> => <<"string">>, <<"description">> => Desc} end,
    Int = fun(Desc, Min, Max) ->
                  #{<<"type">> => <<"integer">>, <<"description">> => Desc,
                    <<"minimum">> => Min, <<"maximum">> => Max}
          end,
    Tool = fun(Name, Desc, Props, Required) ->
                   #{<<"name">> => Name, <<"description">> => Desc,
                     <<"inputSchema">> => #{<<"type">> => <<"object">>,
                                            <<"properties">> => Props,
                                            <<"required">> => Required,
                                            <<"additionalProperties">> => false}}
           end,
    Tools =
        [Tool(<<"search_files">>,
              <<"Searches the files of a directory tree for a text, and returns the matching "
                "lines with their paths and line numbers.">>,
              #{<<"query">> => Str(<<"The text to look for">>),
                <<"path">> => Str(<<"The directory to search, absolute">>),
                <<"glob">> => Str(<<"Only files whose names match this pattern">>),
                <<"max_results">> => Int(<<"At most this many matches">>, 1, 1000),
                <<"case_sensitive">> => #{<<"type">> => <<"boolean">>,
                                          <<"default">> => false}},
              [<<"query">>, <<"path">>]),
         Tool(<<"read_file">>,
              <<"Reads a text file, whole or a range of its lines.">>,
              #{<<"path">> => Str(<<"The file to read, absolute">>),
                <<"offset">> => Int(<<"The first line, 1-based">>, 1, 100000000),
                <<"limit">> => Int(<<"At most this many lines">>, 1, 100000)},
              [<<"path">>]),
         Tool(<<"write_file">>,
              <<"Creates or replaces a text file with the given content.">>,
              #{<<"path">> => Str(<<"The file to write, absolute">>),
                <<"content">> => Str(<<"The new content, UTF-8">>)},
              [<<"path">>, <<"content">>]),
         Tool(<<"run_command">>,
              <<"Runs a shell command in the workspace and returns its exit status, "
                "standard output and standard error.">>,
              #{<<"command">> => Str(<<"The command line">>),
                <<"cwd">> => Str(<<"The working directory">>),
                <<"timeout_ms">> => Int(<<"Kill the command after this long">>, 1, 3600000),
                <<"env">> => #{<<"type">> => <<"object">>,
                               <<"additionalProperties">> => #{<<"type">> => <<"string">>}}},
              [<<"command">>]),
         Tool(<<"http_get">>,
              <<"Fetches a URL and returns the status, headers and body as text.">>,
              #{<<"url">> => Str(<<"An http or https URL">>),
                <<"headers">> => #{<<"type">> => <<"array">>,
                                   <<"items">> => #{<<"type">> => <<"string">>}}},
              [<<"url">>]),
         Tool(<<"vector_search">>,
              <<"Finds the stored documents nearest in meaning to a query.">>,
              #{<<"query">> => Str(<<"What to look for, in words">>),
                <<"k">> => Int(<<"How many documents">>, 1, 100),
                <<"collection">> => #{<<"type">> => <<"string">>,
                                      <<"enum">> => [<<"docs">>, <<"code">>, <<"issues">>]}},
              [<<"query">>])],
    result(Id, #{<<"tools">> => Tools, <<"nextCursor">> => <<"page-2">>}).

%% 64 KiB of source-like text: lines with quotes, tabs and a few non-ASCII characters, which
%% JSON escapes or carries as UTF-8.
resources_read_result(Id) ->
    Line = fun(N) ->
                   unicode:characters_to_binary(
                     io_lib:format("~4..0b\t%% restart(\"worker-~b\", #{intensity => ~b, "
                                   "period => ~b}) — état ~b~n",
                                   [N, N rem 97, N rem 10, N rem 60, N]))
           end,
    Text = take(65536, [Line(N) || N <- lists:seq(1, 1200)]),
    result(Id, #{<<"contents">> => [#{<<"uri">> => <<"file:///home/dev/erlmcp/src/sup.erl">>,
                                      <<"mimeType">> => <<"text/x-erlang">>,
                                      <<"text">> => Text}]}).

%% The first Size bytes of the lines, cut at a line end.
take(Size, Lines) ->
    take(Size, Lines, []).

take(Size, [L | Rest], Acc) when byte_size(L) =< Size ->
    take(Size - byte_size(L), Rest, [L | Acc]);
take(_Size, _, Acc) ->
    iolist_to_binary(lists:reverse(Acc)).

batch() ->
    [tools_call(10), progress(<<"op-1">>, 1, 8), tools_call(11), progress(<<"op-1">>, 2, 8),
     rpc(12, <<"resources/list">>, #{}), result(13, #{}),
     rpc(14, <<"ping">>, #{}), progress(<<"op-1">>, 3, 8)].

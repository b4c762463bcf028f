%% @doc MCP / JSON-RPC 2.0 messages to and from erlmcp-flow archives, as Erlang terms or as
%% JSON text.
%%
%% An archive is the engine's validated binary form of one message or a batch: it travels
%% through rings and sockets and is read in place by every host. {@link encode/2} takes the
%% original design's call shape, an Erlang term, and {@link decode/1} gives one back:
%%
%% ```
%% {ok, Archive} = erlmcp_flow_serializer:encode(
%%     #{method => task, params => #{query => <<"rust ffi">>, k => 10}}),
%% {ok, #{<<"jsonrpc">> := <<"2.0">>, <<"method">> := <<"task">>,
%%        <<"params">> := #{<<"query">> := <<"rust ffi">>, <<"k">> := 10}}} =
%%     erlmcp_flow_serializer:decode(Archive),
%% {ok, [#{kind := notification, method := <<"task">>}]} = erlmcp_flow_serializer:info(Archive).
%% '''
%%
%% The NIF walks the term and drives the engine's value builder (`emf_value_builder_*');
%% decoding builds the term from the engine's walk of the archive (`emf_archive_visit'). No
%% JSON text is written or parsed on either side, and the engine applies its JSON-RPC rules,
%% with the same messages as for JSON text.
%%
%% Mapping (the convention of jiffy, thoas and OTP 27's json):
%%
%% <table>
%% <tr><th>Erlang</th><th>JSON</th><th>decoded as</th></tr>
%% <tr><td>map (keys: atoms or binaries)</td><td>object</td><td>map with binary keys (see
%%     `keys')</td></tr>
%% <tr><td>proper list</td><td>array</td><td>list</td></tr>
%% <tr><td>binary (UTF-8)</td><td>string</td><td>binary</td></tr>
%% <tr><td>integer (any size)</td><td>number</td><td>integer</td></tr>
%% <tr><td>float</td><td>number</td><td>float (the same double)</td></tr>
%% <tr><td>`true', `false', `null'</td><td>literal</td><td>the same atom</td></tr>
%% <tr><td>any other atom</td><td>string</td><td>binary</td></tr>
%% </table>
%%
%% <ul>
%% <li>The top-level term is one message (a map) or a batch (a non-empty list of maps). A
%%     message map without a `jsonrpc' key is taken as `"jsonrpc": "2.0"', so users write
%%     `#{method => task, params => ...}'; {@link decode/1} gives the key back as
%%     `<<"jsonrpc">> => <<"2.0">>'. Everything else follows the engine's JSON-RPC rules and
%%     messages (`params' must be a map or a list; a request's `id' a binary, a number or
%%     `null'; ...).</li>
%% <li>Refused with `{error, {invalid_argument, Message}}', the message saying what and
%%     where (`(at $.params.items[2])'): tuples, pids, references, funs, ports, bitstrings
%%     that are not binaries, improper lists, map keys other than atoms and binaries, a map
%%     with both `a' and `<<"a">>' as keys, binaries that are not UTF-8, nesting deeper than
%%     128 levels.</li>
%% <li>Decoding never creates atoms. With `#{keys => existing_atoms}' a key that names an
%%     existing atom becomes that atom, others stay binaries (on OTP 25 only names within
%%     Latin-1 are looked up). Values are never atoms, except `true', `false' and
%%     `null'.</li>
%% <li>A number beyond the double range (`1e400', which JSON text may hold) has no Erlang
%%     form: {@link decode/1} refuses it, and {@link decode_json/1} gives it as text. So is an
%%     object with a repeated key (JSON text may hold one, a map cannot): refused rather than
%%     dropping a member. And an integer of more than 300 000 digits (about a million bits:
%%     making the term is quadratic in its length, and an archive may hold far longer
%%     ones).</li>
%% </ul>
%%
%% {@link encode_json/2} and {@link decode_json/1} do the same with JSON text (every number
%% keeps its exact digits; the text needs `"jsonrpc": "2.0"' in every message).
%%
%% Every function returns `{error, {Status, Message}}' on failure (see
%% {@link erlmcp_flow_nif}): `invalid_argument' for terms or JSON text that are not JSON-RPC
%% 2.0, bad options or wrong-typed arguments; `corrupt' for bytes that are not a valid
%% archive.
-module(erlmcp_flow_serializer).

-export([encode/1, encode/2, decode/1, decode/2, encode_json/1, encode_json/2, decode_json/1,
         validate/1, info/1, open/1, envelopes/1, to_json/1, payload/2]).

-export_type([options/0, decode_options/0, message/0, json/0]).

-type options() :: #{priority => erlmcp_flow_nif:priority(),
                     created_at_us => non_neg_integer(),
                     deadline_us => non_neg_integer(),
                     checksum => boolean()}.
%% `priority' defaults to `normal'; `created_at_us' (µs since the UNIX epoch) to 0, meaning
%% now; `deadline_us' to 0, meaning none; `checksum' to `false'. With `checksum => true' the
%% archive carries a CRC32C (4 bytes more) and every reader refuses it as `corrupt' if any
%% bit changed, inside strings and numbers too; without it only the structure is checked.

-type decode_options() :: #{keys => binary | existing_atoms}.
%% `keys' defaults to `binary'; `existing_atoms' turns a key naming an existing atom into
%% that atom (never creating one).

-type json() :: #{atom() | binary() => json()} | [json()] | binary() | number() | atom().
%% A JSON-mappable term (module documentation).

-type message() :: #{atom() | binary() => json()} | [#{atom() | binary() => json()}].
%% One JSON-RPC 2.0 message (a map) or a batch (a non-empty list of maps).

-type error() :: erlmcp_flow_nif:error().

-define(OPTION_KEYS, [priority, created_at_us, deadline_us, checksum]).

%% @doc Encodes a message term (a map, or a batch list of maps) with the default options.
%% @equiv encode(Message, #{})
-spec encode(message()) -> {ok, binary()} | error().
encode(Message) ->
    encode(Message, #{}).

%% @doc Encodes a message term (a map, or a batch list of maps) into an archive; the mapping
%% is in the module documentation. The original design's
%% `encode(#{method => task, params => Data})' works as written.
-spec encode(message(), options()) -> {ok, binary()} | error().
encode(Message, Opts) ->
    with_options(Opts, fun(P, C, D, S) ->
                               erlmcp_flow_nif:serializer_encode_term(Message, P, C, D, S)
                       end).

%% @doc Validates an archive and returns its message as a term, with binary keys.
%% @equiv decode(Archive, #{})
-spec decode(binary()) -> {ok, message()} | error().
decode(Archive) ->
    decode(Archive, #{}).

%% @doc Validates an archive and returns its message as a term: maps, lists, binaries,
%% numbers, `true', `false', `null' (module documentation). Every message map has
%% `<<"jsonrpc">> => <<"2.0">>'.
-spec decode(binary(), decode_options()) -> {ok, message()} | error().
decode(Archive, Opts) when is_map(Opts) ->
    case maps:keys(maps:without([keys], Opts)) of
        [] ->
            case maps:get(keys, Opts, binary) of
                Keys when Keys =:= binary; Keys =:= existing_atoms ->
                    erlmcp_flow_nif:serializer_decode_term(Archive, Keys);
                Other ->
                    invalid(io_lib:format("keys: expected binary or existing_atoms, not ~0p",
                                          [Other]))
            end;
        Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: [keys])", [Unknown]))
    end;
decode(_Archive, _Opts) ->
    invalid("options: expected a map").

%% @doc Encodes MCP / JSON-RPC 2.0 text (one message or a batch) with the default options.
%% @equiv encode_json(Json, #{})
-spec encode_json(iodata()) -> {ok, binary()} | error().
encode_json(Json) ->
    encode_json(Json, #{}).

%% @doc Encodes MCP / JSON-RPC 2.0 text (one message or a batch) into an archive.
%% The JSON text is kept losslessly: numbers beyond 64 bits keep their exact digits.
-spec encode_json(iodata(), options()) -> {ok, binary()} | error().
encode_json(Json, Opts) ->
    with_options(Opts, fun(P, C, D, S) ->
                               erlmcp_flow_nif:json_to_archive(Json, P, C, D, S)
                       end).

%% @doc Validates an archive and returns it as JSON-RPC text (UTF-8).
-spec decode_json(binary()) -> {ok, binary()} | error().
decode_json(Archive) ->
    erlmcp_flow_nif:archive_to_json(Archive).

%% @doc Validates an archive and returns its number of envelopes (1, or the batch size).
-spec validate(binary()) -> {ok, pos_integer()} | error().
validate(Archive) ->
    erlmcp_flow_nif:archive_validate(Archive).

%% @doc Describes every envelope of an archive, in order.
-spec info(binary()) -> {ok, [erlmcp_flow_nif:envelope()]} | error().
info(Archive) ->
    case open(Archive) of
        {ok, Message} -> envelopes(Message);
        {error, _} = Error -> Error
    end.

%% @doc Validates an archive once into a message handle, for repeated reads. The handle is
%% freed when the garbage collector drops its last reference.
-spec open(binary()) -> {ok, erlmcp_flow_nif:message()} | error().
open(Archive) ->
    erlmcp_flow_nif:message_open(Archive).

%% @doc Describes every envelope of a message handle, in order.
-spec envelopes(erlmcp_flow_nif:message()) -> {ok, [erlmcp_flow_nif:envelope()]} | error().
envelopes(Message) ->
    erlmcp_flow_nif:message_envelopes(Message).

%% @doc The whole message of a handle as JSON-RPC text.
-spec to_json(erlmcp_flow_nif:message()) -> {ok, binary()} | error().
to_json(Message) ->
    erlmcp_flow_nif:message_to_json(Message).

%% @doc The params, result or error object of envelope `Index' (0-based) as JSON text;
%% `{error, {not_found, _}}' when the envelope has none.
-spec payload(erlmcp_flow_nif:message(), non_neg_integer()) -> {ok, binary()} | error().
payload(Message, Index) ->
    erlmcp_flow_nif:message_payload_json(Message, Index).

-spec with_options(term(), fun((term(), term(), term(), term()) -> Result)) ->
          Result | error().
with_options(Opts, Encode) when is_map(Opts) ->
    case maps:keys(maps:without(?OPTION_KEYS, Opts)) of
        [] ->
            Encode(maps:get(priority, Opts, normal),
                   maps:get(created_at_us, Opts, 0),
                   maps:get(deadline_us, Opts, 0),
                   maps:get(checksum, Opts, false));
        Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, ?OPTION_KEYS]))
    end;
with_options(_Opts, _Encode) ->
    invalid("options: expected a map").

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

%% @doc MCP / JSON-RPC 2.0 messages to and from erlmcp-flow archives.
%%
%% An archive is the engine's validated binary form of one message or a batch: it travels
%% through rings and sockets and is read in place by every host. This module converts JSON text
%% to archives and back, and describes the envelopes of an archive.
%%
%% ```
%% {ok, Archive} = erlmcp_flow_serializer:encode(
%%     <<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}">>),
%% {ok, <<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}">>} =
%%     erlmcp_flow_serializer:decode(Archive),
%% {ok, [#{kind := request, id := 1, method := <<"tools/list">>}]} =
%%     erlmcp_flow_serializer:info(Archive).
%% '''
%%
%% Every function returns `{error, {Status, Message}}' on failure (see
%% {@link erlmcp_flow_nif}): `invalid_argument' for bad JSON, non-UTF-8 text, text that is not
%% JSON-RPC 2.0, bad options or wrong-typed arguments; `corrupt' for bytes that are not a valid
%% archive.
-module(erlmcp_flow_serializer).

-export([encode/1, encode/2, decode/1, validate/1, info/1,
         open/1, envelopes/1, to_json/1, payload/2]).

-export_type([options/0]).

-type options() :: #{priority => erlmcp_flow_nif:priority(),
                     created_at_us => non_neg_integer(),
                     deadline_us => non_neg_integer(),
                     checksum => boolean()}.
%% `priority' defaults to `normal'; `created_at_us' (µs since the UNIX epoch) to 0, meaning
%% now; `deadline_us' to 0, meaning none; `checksum' to `false'. With `checksum => true' the
%% archive carries a CRC32C (4 bytes more) and every reader refuses it as `corrupt' if any
%% bit changed, inside strings and numbers too; without it only the structure is checked.

-type error() :: erlmcp_flow_nif:error().

-define(OPTION_KEYS, [priority, created_at_us, deadline_us, checksum]).

%% @doc Encodes MCP / JSON-RPC 2.0 text (one message or a batch) with the default options.
%% @equiv encode(Json, #{})
-spec encode(iodata()) -> {ok, binary()} | error().
encode(Json) ->
    encode(Json, #{}).

%% @doc Encodes MCP / JSON-RPC 2.0 text (one message or a batch) into an archive.
%% The JSON text is kept losslessly: numbers beyond 64 bits keep their exact digits.
-spec encode(iodata(), options()) -> {ok, binary()} | error().
encode(Json, Opts) when is_map(Opts) ->
    case maps:keys(maps:without(?OPTION_KEYS, Opts)) of
        [] ->
            erlmcp_flow_nif:json_to_archive(Json,
                                            maps:get(priority, Opts, normal),
                                            maps:get(created_at_us, Opts, 0),
                                            maps:get(deadline_us, Opts, 0),
                                            maps:get(checksum, Opts, false));
        Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, ?OPTION_KEYS]))
    end;
encode(_Json, _Opts) ->
    invalid("options: expected a map").

%% @doc Validates an archive and returns it as JSON-RPC text (UTF-8).
-spec decode(binary()) -> {ok, binary()} | error().
decode(Archive) ->
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

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

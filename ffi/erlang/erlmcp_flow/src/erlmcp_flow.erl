%% @doc Shared state by reference (the original design's "zero-copy" ETS trick), over the
%% engine's `emf_state_*': a value is published once under a key and read in place by any
%% process of the machine (Erlang VMs, Rust, C, ...). Values are files (in `state_dir'): no
%% server keeps them, with or without the application running.
%%
%% ```
%% {ok, Ref} = erlmcp_flow:share_state(<<"registry">>, Registry),   % any term
%% {ok, Registry} = erlmcp_flow:read_shared_state(Ref),             % any process, any VM
%% {ok, Ref} = erlmcp_flow:lookup_state(<<"registry">>),
%% ok = erlmcp_flow:release_state(Ref),
%% {error, not_found} = erlmcp_flow:read_shared_state(Ref).
%% '''
%%
%% <h3>Terms and bytes</h3>
%% `share_state/2,3' keeps any term (as its external term format, `term_to_binary/1') and
%% `read_shared_state/1,2' gives it back, decoded with `binary_to_term(Bin, [safe])': a value
%% that names atoms this VM does not know, or is not a term at all, is refused with
%% `{error, {invalid_argument, Message}}', and no atom is created. The original design's
%% `share_state(Key, Value) -> {state_ref, ...}' answers `{ok, Ref}' here (failures
%% `{error, ...}'), and its `read_shared_state(Ref)' `{ok, Value}'.
%%
%% `share_binary/2,3' and `read_shared_binary/1,2' publish and read bytes as they are. Use
%% them for values shared with other languages (the C ABI's `emf_state_share' and
%% `emf_state_read', the Python package), which do not speak the external term format, and to
%% read large binaries without a copy. Both pairs use the same stores and references:
%% `read_shared_binary' of a shared term gives its external format, `read_shared_state' of
%% bytes that are one gives the term.
%%
%% <h3>References</h3>
%% `share_state' and `share_binary' return the value's reference, a 64-bit integer valid in every process that
%% opens the same store (pass it to another VM as is). Sharing a key again publishes a new
%% reference and retires the old one; `release_state' retires a reference. A retired
%% reference reads as `{error, not_found}', but values already read stay readable: their
%% memory is reclaimed once nobody maps them. References are never reused.
%%
%% <h3>Reading without copying</h3>
%% `read_shared_binary' returns values of 64 KiB and more as binaries over the shared mapping
%% itself (no copy): the mapping lives exactly as long as the binary (and its sub-binaries),
%% after a release or a re-share of the key too. Each VM maps a value once, however many
%% binaries and processes hold it (a value's segment has 128 attach slots for the whole
%% machine). Smaller values are copied into ordinary binaries. Keep in mind that a held
%% binary keeps the whole value's memory alive, like any large binary.
%%
%% <h3>Stores</h3>
%% A store is a name (1-100 characters of `A-Z a-z 0-9 _ -') and a directory. The functions
%% without a store argument use the default store: name `state_store' of the `erlmcp_flow'
%% application environment (`<<"erlmcp_flow">>'), directory `state_dir' (/dev/shm). The
%% others take a store from `open_store/1,2'. Keys are UTF-8 names without NUL bytes; values
%% are terms (`share_state') or binaries and iodata (`share_binary').
%%
%% <h3>Errors</h3>
%% A reference or key that does not exist gives `{error, not_found}'; other failures
%% `{error, {Status, Message}}' as in the rest of the binding. Every call but `open_store' runs
%% on a dirty I/O scheduler (each touches the file system); decoding a term runs on the
%% caller's scheduler.
-module(erlmcp_flow).

-export([share_state/2, share_state/3, read_shared_state/1, read_shared_state/2,
         share_binary/2, share_binary/3, read_shared_binary/1, read_shared_binary/2,
         lookup_state/1, lookup_state/2, release_state/1, release_state/2,
         open_store/1, open_store/2, default_store/0]).

-export_type([store/0, state_ref/0, key/0]).

-type store() :: erlmcp_flow_nif:store().
-type state_ref() :: erlmcp_flow_nif:state_ref().
-type key() :: binary() | string() | atom().
-type error() :: erlmcp_flow_nif:error().

-define(DEFAULT_STORE, <<"erlmcp_flow">>).

%%--------------------------------------------------------------------------------------------
%% Stores
%%--------------------------------------------------------------------------------------------

%% @equiv open_store(Name, #{})
-spec open_store(binary() | string() | atom()) -> {ok, store()} | error().
open_store(Name) ->
    open_store(Name, #{}).

%% @doc A handle of store `Name' in `dir' (/dev/shm). Nothing is created: a store is only a
%% name for its values' files. The handle is thread-safe and freed when garbage collected.
-spec open_store(binary() | string() | atom(), #{dir => file:filename_all() | undefined}) ->
          {ok, store()} | error().
open_store(Name, Opts) when is_map(Opts) ->
    case maps:keys(maps:without([dir], Opts)) of
        [] -> erlmcp_flow_nif:state_open(text(Name), dir(maps:get(dir, Opts, undefined)));
        Unknown -> invalid(io_lib:format("unknown options ~0p (known: [dir])", [Unknown]))
    end;
open_store(_Name, _Opts) ->
    invalid("options: expected a map").

%% @doc The default store, from the application environment (`state_store', `state_dir').
-spec default_store() -> {ok, store()} | error().
default_store() ->
    open_store(application:get_env(erlmcp_flow, state_store, ?DEFAULT_STORE),
               #{dir => application:get_env(erlmcp_flow, state_dir, undefined)}).

%%--------------------------------------------------------------------------------------------
%% Shared state: terms
%%--------------------------------------------------------------------------------------------

%% @doc Publishes the term `Value' under `Key' in the default store (the original design's
%% `share_state(Key, Value) -> {state_ref, ...}': here `{ok, Ref}').
-spec share_state(key(), term()) -> {ok, state_ref()} | error().
share_state(Key, Value) ->
    with_default(fun(Store) -> share_state(Store, Key, Value) end).

%% @doc Publishes the term `Value' (any term, as its external term format) under `Key' and
%% returns its reference; the key's previous reference is retired (processes holding its
%% value keep it). Read it back with `read_shared_state/1,2'.
-spec share_state(store(), key(), term()) -> {ok, state_ref()} | error().
share_state(Store, Key, Value) ->
    share_binary(Store, Key, term_to_binary(Value)).

%% @doc Reads a term of the default store.
-spec read_shared_state(state_ref()) -> {ok, term()} | {error, not_found} | error().
read_shared_state(Ref) ->
    with_default(fun(Store) -> read_shared_state(Store, Ref) end).

%% @doc The term published as `Ref' by `share_state/2,3': `{error, not_found}' once it was
%% released or replaced. It is decoded with `binary_to_term(Bin, [safe])': a value that holds
%% atoms this VM does not know (or that is not a term at all, e.g. bytes shared by another
%% language) is refused with `{error, {invalid_argument, Message}}', and no atom is ever
%% created. The term is a copy (the zero-copy path is `read_shared_binary/1,2').
-spec read_shared_state(store(), state_ref()) -> {ok, term()} | {error, not_found} | error().
read_shared_state(Store, Ref) ->
    case read_shared_binary(Store, Ref) of
        {ok, Bin} -> decode(Bin);
        Other -> Other
    end.

%%--------------------------------------------------------------------------------------------
%% Shared state: raw bytes (for values shared with other languages)
%%--------------------------------------------------------------------------------------------

%% @doc Publishes the bytes `Value' under `Key' in the default store.
-spec share_binary(key(), iodata()) -> {ok, state_ref()} | error().
share_binary(Key, Value) ->
    with_default(fun(Store) -> share_binary(Store, Key, Value) end).

%% @doc Publishes the bytes `Value' (a binary or iodata) under `Key' as they are, for readers
%% in any language (`emf_state_read' of the C ABI, the Python package); the key's previous
%% reference is retired.
-spec share_binary(store(), key(), iodata()) -> {ok, state_ref()} | error().
share_binary(Store, Key, Value) ->
    erlmcp_flow_nif:state_share(Store, text(Key), Value).

%% @doc Reads the bytes of a value of the default store.
-spec read_shared_binary(state_ref()) -> {ok, binary()} | {error, not_found} | error().
read_shared_binary(Ref) ->
    with_default(fun(Store) -> read_shared_binary(Store, Ref) end).

%% @doc The bytes of `Ref' (whatever shared them: `share_binary', `share_state' (then the
%% term's external format) or another language): `{error, not_found}' once it was released or
%% replaced. Values of 64 KiB and more are binaries over the shared mapping (no copy).
-spec read_shared_binary(store(), state_ref()) ->
          {ok, binary()} | {error, not_found} | error().
read_shared_binary(Store, Ref) ->
    not_found(erlmcp_flow_nif:state_read(Store, Ref)).

%% @doc The current reference of `Key' in the default store.
-spec lookup_state(key()) -> {ok, state_ref()} | {error, not_found} | error().
lookup_state(Key) ->
    with_default(fun(Store) -> lookup_state(Store, Key) end).

%% @doc The current reference of `Key' (`{error, not_found}' when it was never shared). A
%% released reference stays the key's current one until the key is shared again (it then reads
%% as `not_found').
-spec lookup_state(store(), key()) -> {ok, state_ref()} | {error, not_found} | error().
lookup_state(Store, Key) ->
    not_found(erlmcp_flow_nif:state_lookup(Store, text(Key))).

%% @doc Retires a reference of the default store.
-spec release_state(state_ref()) -> ok | {error, not_found} | error().
release_state(Ref) ->
    with_default(fun(Store) -> release_state(Store, Ref) end).

%% @doc Retires `Ref': new reads give `{error, not_found}'; values already read stay readable.
-spec release_state(store(), state_ref()) -> ok | {error, not_found} | error().
release_state(Store, Ref) ->
    not_found(erlmcp_flow_nif:state_release(Store, Ref)).

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

%% Store handles cost no system call (the engine only checks the name), so the default store
%% is opened for each call: the application environment is read every time.
with_default(Fun) ->
    case default_store() of
        {ok, Store} -> Fun(Store);
        {error, _} = Error -> Error
    end.

%% [safe]: a term naming atoms this VM does not know is refused instead of creating them.
decode(<<131, _/binary>> = Bin) ->
    try binary_to_term(Bin, [safe]) of
        Term -> {ok, Term}
    catch
        error:badarg ->
            invalid("shared state: the value is not a term this VM can decode safely (it "
                    "holds atoms or functions this VM does not know, or is damaged); no atom "
                    "was created. Its bytes: read_shared_binary/1,2")
    end;
decode(_Bin) ->
    invalid("shared state: the value is not an Erlang term (bytes shared with share_binary "
            "or by another language?): read it with read_shared_binary/1,2").

not_found({error, {not_found, _}}) -> {error, not_found};
not_found(Result) -> Result.

dir(undefined) -> undefined;
dir(Dir) -> text(Dir).

text(Text) when is_atom(Text) -> atom_to_binary(Text, utf8);
text(Text) when is_list(Text) ->
    try unicode:characters_to_binary(Text) of
        Bin when is_binary(Bin) -> Bin;
        _ -> Text
    catch
        error:badarg -> Text
    end;
text(Text) -> Text.

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

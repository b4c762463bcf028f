%% EUnit tests of erlmcp_flow: shared state by reference (share, read, lookup, release),
%% values held across a re-share and a release, zero-copy binaries whose mapping lives as long
%% as they do, big values, and the default store, through the raw-bytes API
%% (share_binary/read_shared_binary); terms through share_state/read_shared_state (any term
%% back as it was; values that are not terms, or name atoms this VM does not know, refused
%% without creating an atom).
%%
%% Every test uses a store in a temporary directory of its own, removed afterwards; no
%% assertion depends on timing (the unmapping after garbage collection is awaited).
-module(erlmcp_flow_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-define(F, erlmcp_flow).
-define(ZERO_COPY_MIN, 65536).

%%--------------------------------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------------------------------

tmp_dir() ->
    Base = case os:getenv("TMPDIR") of false -> "/tmp"; "" -> "/tmp"; D -> D end,
    Dir = filename:join(Base, "erlmcp_flow_state_" ++ os:getpid() ++ "_"
                        ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.

%% Runs Fun(Dir, Store) in a process of its own with a store in a fresh directory. Afterwards
%% (the process and its binaries gone) waits until the values it mapped are unmapped, removes
%% the directory and re-raises the test's failure.
with_store(Fun) ->
    Dir = tmp_dir(),
    Mapped = erlmcp_flow_nif:state_mapped(),
    Parent = self(),
    {Pid, Mon} = spawn_monitor(fun() ->
                                       {ok, Store} = ?F:open_store(<<"t">>, #{dir => Dir}),
                                       Result = try {ok, Fun(Dir, Store)}
                                                catch C:R:St -> {C, R, St}
                                                end,
                                       Parent ! {self(), Result}
                               end),
    Result = receive
                 {Pid, R} -> R;
                 {'DOWN', Mon, process, Pid, Why} -> {exit, Why, []}
             end,
    receive {'DOWN', Mon, process, Pid, _} -> ok end,
    try
        case Result of
            {ok, _} -> wait_mapped(Mapped);
            _ -> ok
        end
    after
        ok = file:del_dir_r(Dir)
    end,
    case Result of
        {ok, Value} -> Value;
        {Class, Reason, Stack} -> erlang:raise(Class, Reason, Stack)
    end.

%% Waits until the library maps N shared values (binaries are freed by garbage collection).
wait_mapped(N) ->
    wait_until(fun() -> erlang:garbage_collect(), erlmcp_flow_nif:state_mapped() =:= N end,
               30000),
    ?assertEqual(N, erlmcp_flow_nif:state_mapped()).

wait_until(Pred, Ms) when Ms =< 0 ->
    Pred();
wait_until(Pred, Ms) ->
    case Pred() of
        true -> true;
        false -> timer:sleep(5), wait_until(Pred, Ms - 5)
    end.

%% A value of Size bytes that differs from a value of another Seed.
value(Seed, Size) ->
    Block = crypto_free_block(Seed),
    binary:part(binary:copy(Block, Size div byte_size(Block) + 1), 0, Size).

crypto_free_block(Seed) ->
    << <<((Seed * 131 + I * 7) rem 256)>> || I <- lists:seq(0, 1020) >>.

%% Lines of this OS process's memory map that map a value of store `t' in Dir.
mappings(Dir) ->
    {ok, Maps} = file:read_file("/proc/self/maps"),
    Prefix = list_to_binary(filename:join(Dir, "emf-state.t.")),
    [L || L <- binary:split(Maps, <<"\n">>, [global]), binary:match(L, Prefix) =/= nomatch].

%%--------------------------------------------------------------------------------------------
%% Tests
%%--------------------------------------------------------------------------------------------

share_read_lookup_release_test_() ->
    {timeout, 120, fun share_read_lookup_release/0}.

share_read_lookup_release() ->
    with_store(fun(Dir, S) ->
        {ok, Ref} = ?F:share_binary(S, <<"registry">>, <<"v1">>),
        ?assert(is_integer(Ref)),
        ?assertEqual({ok, <<"v1">>}, ?F:read_shared_binary(S, Ref)),
        ?assertEqual({ok, Ref}, ?F:lookup_state(S, <<"registry">>)),
        ?assertEqual({ok, Ref}, ?F:lookup_state(S, registry)),      % atom and string keys
        ?assertEqual({ok, Ref}, ?F:lookup_state(S, "registry")),
        ?assertEqual({error, not_found}, ?F:lookup_state(S, <<"other">>)),
        ok = ?F:release_state(S, Ref),
        ?assertEqual({error, not_found}, ?F:read_shared_binary(S, Ref)),
        ?assertEqual({error, not_found}, ?F:release_state(S, Ref)),
        ?assertEqual({error, not_found}, ?F:read_shared_binary(S, 12345)),
        %% Iodata values, empty values, UTF-8 keys.
        {ok, R2} = ?F:share_binary(S, <<"clé"/utf8>>, [<<"io">>, "data"]),
        ?assertEqual({ok, <<"iodata">>}, ?F:read_shared_binary(S, R2)),
        {ok, R3} = ?F:share_binary(S, <<"empty">>, <<>>),
        ?assertEqual({ok, <<>>}, ?F:read_shared_binary(S, R3)),
        %% A reference is valid through any handle of the same store.
        {ok, S2} = ?F:open_store(t, #{dir => Dir}),
        ?assertEqual({ok, <<"iodata">>}, ?F:read_shared_binary(S2, R2)),
        [ok = ?F:release_state(S, R) || R <- [R2, R3]]
    end).

%% Sharing a key again retires the old reference: new reads of it give not_found, but a value
%% already read stays readable, also after the new one is released; the mapping of a
%% zero-copy value lives exactly as long as its binaries.
value_held_across_reshare_and_release_test_() ->
    {timeout, 120, fun value_held_across_reshare_and_release/0}.

value_held_across_reshare_and_release() ->
    with_store(fun(Dir, S) ->
        Mapped = erlmcp_flow_nif:state_mapped(),
        Big = value(1, 1 bsl 20),
        {ok, R1} = ?F:share_binary(S, <<"k">>, Big),
        Self = self(),
        %% A reader process holds the value (a zero-copy binary over the mapping).
        Reader = spawn_link(fun() ->
                                    {ok, Held} = ?F:read_shared_binary(S, R1),
                                    Self ! {read, self()},
                                    receive check -> Self ! {held, self(), Held =:= Big} end,
                                    receive done -> ok end
                            end),
        receive {read, Reader} -> ok end,
        ?assertEqual(Mapped + 1, erlmcp_flow_nif:state_mapped()),
        ?assertEqual(1, length(mappings(Dir))),
        {ok, R2} = ?F:share_binary(S, <<"k">>, <<"v2">>),
        ?assertNotEqual(R1, R2),
        ?assertEqual({error, not_found}, ?F:read_shared_binary(S, R1)),
        ?assertEqual({ok, R2}, ?F:lookup_state(S, <<"k">>)),
        ?assertEqual({ok, <<"v2">>}, ?F:read_shared_binary(S, R2)),
        ok = ?F:release_state(S, R2),
        ?assertEqual({error, not_found}, ?F:read_shared_binary(S, R2)),
        %% The old value's file is gone, its mapping is not: still readable, unchanged.
        ?assertEqual([], filelib:wildcard(filename:join(Dir, "emf-state.t.[0-9a-f]*"))),
        Reader ! check,
        receive {held, Reader, Same} -> ?assert(Same) end,
        %% The reader lets go: the mapping goes with its binary.
        Mon = monitor(process, Reader),
        Reader ! done,
        receive {'DOWN', Mon, process, Reader, _} -> ok end,
        wait_mapped(Mapped),
        ?assert(wait_until(fun() -> mappings(Dir) =:= [] end, 30000))
    end).

%% Every read of a value held in this VM shares one mapping (a value's segment has 128 attach
%% slots for the whole machine): 300 held reads of one value all succeed; sub-binaries keep
%% the mapping alive.
held_reads_share_one_mapping_test_() ->
    {timeout, 120, fun held_reads_share_one_mapping/0}.

held_reads_share_one_mapping() ->
    with_store(fun(Dir, S) ->
        Mapped = erlmcp_flow_nif:state_mapped(),
        Big = value(2, 200000),
        {ok, R} = ?F:share_binary(S, <<"shared">>, Big),
        Held = [begin {ok, B} = ?F:read_shared_binary(S, R), B end || _ <- lists:seq(1, 300)],
        ?assert(lists:all(fun(B) -> B =:= Big end, Held)),
        ?assertEqual(Mapped + 1, erlmcp_flow_nif:state_mapped()),
        ?assertEqual(1, length(mappings(Dir))),
        %% Readers in other processes at the same time.
        Self = self(),
        Pids = [spawn_link(fun() ->
                                   Ok = lists:all(fun(_) ->
                                                          {ok, B} = ?F:read_shared_binary(S, R),
                                                          B =:= Big
                                                  end, lists:seq(1, 20)),
                                   Self ! {self(), Ok}
                           end) || _ <- lists:seq(1, 10)],
        [receive {P, Ok} -> ?assert(Ok) end || P <- Pids],
        Part = binary:part(hd(Held), 1000, 10),
        ok = ?F:release_state(S, R),
        ?assertEqual({error, not_found}, ?F:read_shared_binary(S, R)),
        erlang:garbage_collect(),
        ?assertEqual(binary:part(Big, 1000, 10), Part),
        ?assertEqual(Big, lists:last(Held))
    end).

big_values_test_() ->
    {timeout, 120,
     fun() ->
             with_store(fun(_Dir, S) ->
                 Sizes = [?ZERO_COPY_MIN - 1, ?ZERO_COPY_MIN, ?ZERO_COPY_MIN + 1,
                          1 bsl 20, 16 bsl 20],
                 lists:foreach(
                   fun(Size) ->
                           V = value(Size, Size),
                           {ok, R} = ?F:share_binary(S, <<"big">>, V),
                           {ok, Got} = ?F:read_shared_binary(S, R),
                           ?assertEqual(Size, byte_size(Got)),
                           ?assert(Got =:= V),
                           ?assertEqual({ok, R}, ?F:lookup_state(S, <<"big">>))
                   end, Sizes),
                 {ok, Last} = ?F:lookup_state(S, <<"big">>),
                 ok = ?F:release_state(S, Last)
             end)
     end}.

%% The functions without a store use the application environment's store.
default_store_test_() ->
    {timeout, 120, fun default_store/0}.

default_store() ->
    with_store(fun(Dir, _S) ->
        ok = application:set_env(erlmcp_flow, state_dir, Dir),
        ok = application:set_env(erlmcp_flow, state_store, <<"dflt">>),
        try
            {ok, R} = ?F:share_binary(<<"key">>, <<"value">>),
            ?assertEqual({ok, <<"value">>}, ?F:read_shared_binary(R)),
            ?assertEqual({ok, R}, ?F:lookup_state(<<"key">>)),
            Hex = string:lowercase(lists:flatten(io_lib:format("~16.16.0b", [R]))),
            ?assert(filelib:is_file(filename:join(Dir, "emf-state.dflt." ++ Hex))),
            {ok, Explicit} = ?F:open_store(<<"dflt">>, #{dir => Dir}),
            ?assertEqual({ok, <<"value">>}, ?F:read_shared_binary(Explicit, R)),
            ok = ?F:release_state(R),
            ?assertEqual({error, not_found}, ?F:read_shared_binary(R)),
            ?assertEqual({error, not_found}, ?F:release_state(R))
        after
            ok = application:unset_env(erlmcp_flow, state_dir),
            ok = application:unset_env(erlmcp_flow, state_store)
        end
    end).

bad_arguments_test_() ->
    {timeout, 120, fun bad_arguments/0}.

bad_arguments() ->
    FlowMod = untyped(?F), % the calls below break contracts on purpose
    with_store(fun(Dir, S) ->
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:open_store(<<"bad name">>)),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:open_store(<<"ok">>, #{bogus => 1})),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:open_store(<<"ok">>, not_a_map)),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:share_binary(S, <<"a", 0>>, <<"v">>)),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:share_binary(S, <<"k">>, not_bytes)),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:share_state(S, <<"a", 0>>, value)),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:read_shared_state(S, -1)),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:read_shared_state(make_ref(), 1)),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:read_shared_binary(S, -1)),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:read_shared_binary(S, not_a_ref)),
        ?assertMatch({error, {invalid_argument, _}},
                     FlowMod:read_shared_binary(make_ref(), 1)),
        ?assertMatch({error, {invalid_argument, _}}, FlowMod:lookup_state(not_a_store, <<"k">>)),
        %% A directory that does not exist.
        {ok, Nowhere} = FlowMod:open_store(<<"t">>, #{dir => filename:join(Dir, "missing")}),
        ?assertMatch({error, {_, _}}, FlowMod:share_binary(Nowhere, <<"k">>, <<"v">>))
    end).

%%--------------------------------------------------------------------------------------------
%% Terms
%%--------------------------------------------------------------------------------------------

%% share_state keeps any term; read_shared_state gives it back, equal (=:=).
terms_test_() ->
    {timeout, 120, fun terms/0}.

terms() ->
    with_store(fun(_Dir, S) ->
        Big = maps:from_list([{I, value(I, 100)} || I <- lists:seq(1, 2000)]),
        Terms = [atom, 42, -1 bsl 70, 1.5, <<"bin">>, <<>>, "string", [], {}, {a, [b, "c"]},
                 #{key => #{nested => [1, 2.0, <<3>>]}}, self(), make_ref(),
                 fun erlang:is_atom/1, value(9, 1 bsl 20), Big],
        lists:foreach(fun(T) ->
                              {ok, R} = ?F:share_state(S, <<"term">>, T),
                              ?assert(is_integer(R)),
                              ?assert(?F:read_shared_state(S, R) =:= {ok, T}),
                              ?assertEqual({ok, R}, ?F:lookup_state(S, <<"term">>))
                      end, Terms),
        %% The bytes of a term value are its external term format.
        {ok, R1} = ?F:share_state(S, <<"t1">>, {x, 1}),
        ?assertEqual({ok, term_to_binary({x, 1})}, ?F:read_shared_binary(S, R1)),
        %% Bytes shared as they are read back as a term when they are one.
        {ok, R2} = ?F:share_binary(S, <<"t2">>, term_to_binary([ok])),
        ?assertEqual({ok, [ok]}, ?F:read_shared_state(S, R2)),
        ok = ?F:release_state(S, R1),
        ?assertEqual({error, not_found}, ?F:read_shared_state(S, R1)),
        [ok = ?F:release_state(S, R) || R <- [R2]]
    end).

%% A value that is not a term (raw bytes, e.g. from another language), a damaged one, or one
%% that names an atom this VM does not know is refused with a clear error; no atom is created.
unsafe_terms_are_refused_test_() ->
    {timeout, 120, fun unsafe_terms_are_refused/0}.

unsafe_terms_are_refused() ->
    with_store(fun(_Dir, S) ->
        {ok, Raw} = ?F:share_binary(S, <<"raw">>, <<"plain bytes">>),
        {error, {invalid_argument, Msg1}} = ?F:read_shared_state(S, Raw),
        ?assertNotEqual(nomatch, binary:match(Msg1, <<"read_shared_binary">>)),
        {ok, Empty} = ?F:share_binary(S, <<"empty">>, <<>>),
        ?assertMatch({error, {invalid_argument, _}}, ?F:read_shared_state(S, Empty)),
        {ok, Damaged} = ?F:share_binary(S, <<"damaged">>, <<131, 108, 0, 0, 0, 5>>),
        ?assertMatch({error, {invalid_argument, _}}, ?F:read_shared_state(S, Damaged)),
        %% An atom nobody made: SMALL_ATOM_UTF8_EXT (119) inside a tuple.
        Name = <<"emf_no_such_atom_", (integer_to_binary(erlang:unique_integer([positive])))/binary,
                 "_", (list_to_binary(os:getpid()))/binary>>,
        ?assertError(badarg, binary_to_existing_atom(Name, utf8)),
        Ext = <<131, 104, 2, 97, 1, 119, (byte_size(Name)), Name/binary>>,
        {ok, Unknown} = ?F:share_binary(S, <<"unknown atom">>, Ext),
        {error, {invalid_argument, Msg2}} = ?F:read_shared_state(S, Unknown),
        ?assertNotEqual(nomatch, binary:match(Msg2, <<"atoms">>)),
        ?assertError(badarg, binary_to_existing_atom(Name, utf8)),
        %% The bytes stay readable as they are.
        ?assertEqual({ok, Ext}, ?F:read_shared_binary(S, Unknown)),
        %% A known atom decodes.
        Known = <<131, 104, 2, 97, 1, 119, 2, "ok">>,
        {ok, KnownRef} = ?F:share_binary(S, <<"known atom">>, Known),
        ?assertEqual({ok, {1, ok}}, ?F:read_shared_state(S, KnownRef)),
        [ok = ?F:release_state(S, R) || R <- [Raw, Empty, Damaged, Unknown, KnownRef]]
    end).

%% The original design's calls on the default store: share_state(Key, Value) with any term
%% (its `{state_ref, ...}' is our `{ok, Ref}'), read_shared_state(Ref).
default_store_terms_test_() ->
    {timeout, 120, fun default_store_terms/0}.

default_store_terms() ->
    with_store(fun(Dir, _S) ->
        ok = application:set_env(erlmcp_flow, state_dir, Dir),
        ok = application:set_env(erlmcp_flow, state_store, <<"dflt">>),
        try
            Registry = #{agents => [{planner, self()}], version => 3},
            {ok, Ref} = ?F:share_state(registry, Registry),
            ?assertEqual({ok, Registry}, ?F:read_shared_state(Ref)),
            ?assertEqual({ok, term_to_binary(Registry)}, ?F:read_shared_binary(Ref)),
            {ok, Ref2} = ?F:share_binary(<<"bytes">>, [<<"a">>, "b"]),
            ?assertEqual({ok, <<"ab">>}, ?F:read_shared_binary(Ref2)),
            ?assertMatch({error, {invalid_argument, _}}, ?F:read_shared_state(Ref2)),
            [ok = ?F:release_state(R) || R <- [Ref, Ref2]],
            ?assertEqual({error, not_found}, ?F:read_shared_state(Ref))
        after
            ok = application:unset_env(erlmcp_flow, state_dir),
            ok = application:unset_env(erlmcp_flow, state_store)
        end
    end).

%% EUnit tests of erlmcp_flow_nif: loading, the ABI check, and the raw functions.
-module(erlmcp_flow_nif_tests).

-include_lib("eunit/include/eunit.hrl").
-import(erlmcp_flow_test_util, [untyped/1]).

-define(N, erlmcp_flow_nif).

loaded_test() ->
    ?assertEqual(4, ?N:abi_version()),
    Version = ?N:version(),
    ?assertMatch({match, _}, re:run(Version, "^[0-9]+\\.[0-9]+\\.[0-9]+")).

abi_mismatch_reason_test() ->
    %% What erlang:load_nif/2 returns when the C load() reports library ABI 2 against header
    %% ABI 1 (checked by hand against a shim built with another header version).
    Code = 16#40000000 bor (2 bsl 15) bor 1,
    Text = lists:flatten(io_lib:format("Library load-call unsuccessful (~b).", [Code])),
    ?assertEqual({abi_mismatch, 2, 1}, ?N:load_error_reason({error, {load, Text}})),
    UpgradeText = lists:flatten(io_lib:format("Library upgrade-call unsuccessful (~b).", [Code])),
    ?assertEqual({abi_mismatch, 2, 1}, ?N:load_error_reason({error, {upgrade, UpgradeText}})),
    %% ABI 3 (this version) against a shim built for ABI 2, and the other way round.
    [begin
         C = 16#40000000 bor (Lib bsl 15) bor Hdr,
         T = lists:flatten(io_lib:format("Library load-call unsuccessful (~b).", [C])),
         ?assertEqual({abi_mismatch, Lib, Hdr}, ?N:load_error_reason({error, {load, T}}))
     end || {Lib, Hdr} <- [{3, 2}, {2, 3}]],
    Other = {load, "Library load-call unsuccessful (1)."},
    ?assertEqual(Other, ?N:load_error_reason({error, Other})),
    Missing = {load_failed, "Failed to load NIF library: x"},
    ?assertEqual(Missing, ?N:load_error_reason({error, Missing})).

raw_functions_test() ->
    Json = <<"{\"jsonrpc\":\"2.0\",\"id\":\"q\",\"method\":\"ping\"}">>,
    {ok, A} = ?N:json_to_archive(Json, critical, 1, 2),
    ?assertEqual({ok, Json}, ?N:archive_to_json(A)),
    ?assertEqual({ok, 1}, ?N:archive_validate(A)),
    {ok, M} = ?N:message_open(A),
    ?assertEqual({ok, 1}, ?N:message_count(M)),
    ?assertEqual({ok, [#{kind => request, priority => critical, id => <<"q">>,
                         method => <<"ping">>, created_at_us => 1, deadline_us => 2,
                         error_code => undefined}]}, ?N:message_envelopes(M)),
    ?assertEqual({ok, Json}, ?N:message_to_json(M)),
    ?assertMatch({error, {not_found, _}}, ?N:message_payload_json(M, 0)),
    ?assertMatch({error, {invalid_argument, _}}, ?N:message_count(untyped(not_a_handle))),
    ?assertMatch({error, {invalid_argument, _}}, ?N:message_count(untyped(make_ref()))).

%%--------------------------------------------------------------------------------------------
%% Code upgrades
%%
%% The engine is linked statically into the NIF library, so a library loaded from another file
%% has its own engine and handle registry. Each load of the NIF opens resource types of its own:
%% the new code refuses handles made before the upgrade, and those are freed by the library that
%% made them, which the runtime keeps loaded until the last of them is gone.
%%--------------------------------------------------------------------------------------------

sample_archive() ->
    {ok, A} = ?N:json_to_archive(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}">>,
                                 normal, 0, 0),
    A.

%% Loads `BeamFile' as the new erlmcp_flow_nif: its on_load loads the NIF library again (the C
%% upgrade callback). The old instance of an earlier upgrade is purged first.
upgrade_module(BeamFile) ->
    _ = code:purge(?N),
    {ok, Beam} = file:read_file(BeamFile),
    ?assertEqual({module, ?N}, code:load_binary(?N, BeamFile, Beam)),
    ?assert(erlang:check_old_code(?N)).

%% A process that opens a handle with the NIF library loaded now and holds it (it is the only
%% one to refer to it) until release/2 makes it call Fun(Handle) and exit.
holder(Archive) ->
    Self = self(),
    Pid = spawn(fun() ->
                        {ok, M} = ?N:message_open(Archive),
                        Self ! {self(), ready},
                        receive {use, Fun} -> Self ! {self(), Fun(M)} end
                end),
    receive {Pid, ready} -> Pid end.

release(Pid, Fun) ->
    Ref = monitor(process, Pid),
    Pid ! {use, Fun},
    Result = receive {Pid, R} -> R end,
    receive {'DOWN', Ref, process, Pid, _} -> Result end.

%% Every function that takes a handle refuses one from an earlier load of the library.
assert_refused(M) ->
    Refused = [?N:message_count(M), ?N:message_envelopes(M), ?N:message_to_json(M),
               ?N:message_payload_json(M, 0)],
    lists:foreach(
      fun(R) ->
              ?assertMatch({error, {invalid_argument, _}}, R),
              {error, {invalid_argument, Msg}} = R,
              ?assertNotEqual(nomatch, binary:match(Msg, <<"not a handle of this library version">>))
      end, Refused).

assert_usable(M) ->
    ?assertMatch({ok, [#{id := 1, method := <<"m">>}]}, ?N:message_envelopes(M)),
    ?assertEqual({ok, 1}, ?N:message_count(M)),
    ?assertMatch({ok, <<"{", _/binary>>}, ?N:message_to_json(M)).

not_a_handle_message_test() ->
    {error, {invalid_argument, Msg}} = ?N:message_count(untyped(not_a_handle)),
    ?assertEqual(nomatch, binary:match(Msg, <<"library version">>)),
    %% Any other reference may be a handle from before an upgrade: the message says so.
    {error, {invalid_argument, RefMsg}} = ?N:message_count(untyped(make_ref())),
    ?assertNotEqual(nomatch, binary:match(RefMsg, <<"not a handle of this library version">>)).

%% An upgrade that loads the same file again (the same copy of the library) behaves alike.
reload_same_library_test() ->
    A = sample_archive(),
    {ok, Old} = ?N:message_open(A),
    Holder = holder(A),
    upgrade_module(code:which(?N)),
    assert_refused(Old),
    %% The holder's handle is refused too, then freed by its own destructor when it exits.
    assert_refused_result(release(Holder, fun ?N:message_envelopes/1)),
    {ok, New} = ?N:message_open(A),
    assert_usable(New),
    erlang:garbage_collect().

%% On Linux, checks that at least N copies of the NIF library (distinct files) are mapped.
assert_copies_mapped(N) ->
    case file:read_file("/proc/self/maps") of
        {ok, Maps} ->
            Files = lists:usort([File || Line <- binary:split(Maps, <<"\n">>, [global]),
                                         File <- [lists:last(binary:split(Line, <<" ">>,
                                                                          [global]))],
                                         lists:suffix("/erlmcp_flow_nif.so",
                                                      binary_to_list(File))]),
            ?assert(length(Files) >= N);
        {error, _} ->
            ok
    end.

assert_refused_result(R) ->
    ?assertMatch({error, {invalid_argument, <<"message: not a handle of this library version",
                                               _/binary>>}}, R).

%% A release upgrade: the new version of the application lives in another directory, so the NIF
%% library is loaded from another file and brings a second copy of the engine. Handles of the
%% first copy are refused by the new code and freed by their own library, before and after the
%% old module is purged (a destructor running in an unloaded library would crash the VM).
upgrade_to_another_library_file_test() ->
    A = sample_archive(),
    OriginalBeam = code:which(?N),
    OriginalPriv = code:priv_dir(erlmcp_flow),
    Tmp = filename:join(case os:getenv("TMPDIR") of false -> "/tmp"; D -> D end,
                        "erlmcp_flow_upgrade_" ++ os:getpid() ++ "_"
                        ++ integer_to_list(erlang:unique_integer([positive]))),
    Lib = filename:join(Tmp, "erlmcp_flow-99.0.0"),
    Ebin = filename:join(Lib, "ebin"),
    Priv = filename:join(Lib, "priv"),
    ok = filelib:ensure_dir(filename:join(Ebin, "x")),
    ok = filelib:ensure_dir(filename:join(Priv, "x")),
    NewBeam = filename:join(Ebin, "erlmcp_flow_nif.beam"),
    {ok, _} = file:copy(OriginalBeam, NewBeam),
    {ok, _} = file:copy(filename:join(OriginalPriv, "erlmcp_flow_nif.so"),
                        filename:join(Priv, "erlmcp_flow_nif.so")),
    {ok, Old} = ?N:message_open(A),      % held by this process across everything below
    Early = holder(A),                   % dropped while the first module is old
    Late = holder(A),                    % dropped after the first module is purged
    true = code:add_patha(Ebin),
    try
        ?assertEqual(Priv, code:priv_dir(erlmcp_flow)),
        upgrade_module(NewBeam),
        ?assertEqual(NewBeam, code:which(?N)),
        %% Two copies of the library (two engines) are loaded now.
        assert_copies_mapped(2),
        ?assertEqual(4, ?N:abi_version()),
        assert_refused(Old),
        {ok, New} = ?N:message_open(A),
        assert_usable(New),
        assert_refused_result(release(Early, fun ?N:message_envelopes/1)),
        _ = code:purge(?N),
        ?assertNot(erlang:check_old_code(?N)),
        %% The first module is purged, but its handles still need its library.
        assert_copies_mapped(2),
        assert_refused_result(release(Late, fun ?N:message_to_json/1)),
        assert_refused(Old),
        assert_usable(New),
        %% Back to the first file: a third load, which refuses the second one's handles.
        true = code:del_path(Ebin),
        upgrade_module(OriginalBeam),
        assert_refused(New),
        assert_refused(Old),
        {ok, Newest} = ?N:message_open(A),
        assert_usable(Newest),
        _ = code:purge(?N),
        erlang:garbage_collect()
    after
        _ = code:del_path(Ebin),
        case code:which(?N) of
            OriginalBeam -> ok;
            _ -> upgrade_module(OriginalBeam)
        end,
        _ = file:del_dir_r(Tmp)
    end,
    %% Every handle of the earlier loads is gone with this process's garbage.
    erlang:garbage_collect(),
    {ok, Again} = ?N:message_open(A),
    assert_usable(Again).

%% Microseconds of active time of the dirty CPU schedulers since `Before' (or the counters).
dirty_cpu_active() ->
    Normal = erlang:system_info(schedulers),
    Dirty = erlang:system_info(dirty_cpu_schedulers),
    Stats = erlang:statistics(scheduler_wall_time_all),
    lists:sum([Active || {Id, Active, _Total} <- Stats, Id > Normal, Id =< Normal + Dirty]).

%% A large input keeps a dirty CPU scheduler busy for (nearly) the whole call, not a normal one.
large_inputs_run_on_dirty_schedulers_test() ->
    Data = binary:copy(<<"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"} ">>,
                       200000),
    Old = erlang:system_flag(scheduler_wall_time, true),
    try
        Before = dirty_cpu_active(),
        T0 = erlang:monotonic_time(),
        {ok, {compressed, _}} = ?N:compress_if_needed(Data, 0),
        T1 = erlang:monotonic_time(),
        After = dirty_cpu_active(),
        %% scheduler_wall_time units are those of erlang:monotonic_time/0.
        Elapsed = T1 - T0,
        ?assert(After - Before >= Elapsed div 2)
    after
        erlang:system_flag(scheduler_wall_time, Old)
    end.

%% Dirty CPU time used by F, and the wall time of the call.
dirty_share(F) ->
    Old = erlang:system_flag(scheduler_wall_time, true),
    try
        Before = dirty_cpu_active(),
        T0 = erlang:monotonic_time(),
        Result = F(),
        T1 = erlang:monotonic_time(),
        {Result, dirty_cpu_active() - Before, T1 - T0}
    after
        erlang:system_flag(scheduler_wall_time, Old)
    end.

%% Iodata is never flattened on a normal scheduler: the call goes dirty first.
large_iodata_runs_on_dirty_schedulers_test() ->
    Unit = <<"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"} ">>,
    Data = lists:duplicate(200000, [Unit]),
    {{ok, {compressed, Z}}, Dirty, Elapsed} =
        dirty_share(fun() -> ?N:compress_if_needed(Data, 0) end),
    ?assert(Dirty >= Elapsed div 2),
    ?assertEqual(iolist_to_binary(Data), zlib:uncompress(Z)),
    %% Even iodata found invalid only at its end is walked there, not on a normal scheduler.
    %% (Ten times the data, so that the walk, not the ~0.5 ms of scheduling overhead, decides
    %% the share: with 1 ms of work the ratio was noise on a small machine.)
    Bad = untyped([lists:duplicate(10, Data) | bad_tail]),

    {{error, {invalid_argument, _}}, BadDirty, BadElapsed} =
        dirty_share(fun() -> ?N:compress_if_needed(Bad, 0) end),
    ?assert(BadDirty >= BadElapsed div 2).

%% A few envelopes with long strings: the bytes copied, not the envelope count, send
%% message_envelopes/1 to a dirty scheduler.
envelopes_with_large_strings_run_on_dirty_schedulers_test() ->
    Method = binary:copy(<<"m">>, 8 * 1024 * 1024),
    Id = binary:copy(<<"i">>, 8 * 1024 * 1024),
    Item = <<"{\"jsonrpc\":\"2.0\",\"id\":\"", Id/binary, "\",\"method\":\"", Method/binary,
             "\"}">>,
    {ok, A} = ?N:json_to_archive(<<"[", Item/binary, ",", Item/binary, "]">>, normal, 0, 0),
    {ok, M} = ?N:message_open(A),
    {{ok, [#{method := Method, id := Id}, #{method := Method, id := Id}]}, Dirty, Elapsed} =
        dirty_share(fun() -> ?N:message_envelopes(M) end),
    ?assert(Dirty >= Elapsed div 2).

%% EUnit tests of erlmcp_flow_nif: loading, the ABI check, and the raw functions.
-module(erlmcp_flow_nif_tests).

-include_lib("eunit/include/eunit.hrl").

-define(N, erlmcp_flow_nif).

loaded_test() ->
    ?assertEqual(1, ?N:abi_version()),
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
    ?assertMatch({error, {invalid_argument, _}}, ?N:message_count(not_a_handle)),
    ?assertMatch({error, {invalid_argument, _}}, ?N:message_count(make_ref())).

%% Reloading the module takes the resource types over; old handles keep working.
reload_keeps_handles_test() ->
    {ok, A} = ?N:json_to_archive(<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}">>,
                                 normal, 0, 0),
    {ok, M} = ?N:message_open(A),
    {?N, Beam, File} = code:get_object_code(?N),
    {module, ?N} = code:load_binary(?N, File, Beam),
    ?assertMatch({ok, [#{id := 1}]}, ?N:message_envelopes(M)),
    {ok, M2} = ?N:message_open(A),
    ?assertMatch({ok, [#{id := 1}]}, ?N:message_envelopes(M2)).

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

%% Throughput of NIF sends into a shared-memory ring: erlmcp_flow_ring:send/2 (one NIF call
%% per frame) and send_batch/2 (one call per batch) of 64-byte frames, with a consumer on the
%% other side of the ring:
%%
%%   cli      `erlmcp-flow ring consume' in another OS process, which checks every frame
%%            (sequence numbers and payload pattern: no loss, duplicate, reorder or damage);
%%   deliver  a delivery thread of the NIF sending the frames to an Erlang process in this VM
%%            (which acks each message and checks the sequence of the first frame of each).
%%
%% Run it with bench/run.sh [Count] (default 1000000 frames per case). Frames are made before
%% the clock starts; back-pressure ({error, {full, _}}, or a partial batch) is retried at once
%% and counted. "send msg/s" is frames / time until the last send returned; "end-to-end
%% msg/s" is frames / time until the consumer had checked the last one.
-module(ring_bench).

-export([main/1]).

-define(R, erlmcp_flow_ring).
-define(SIZE, 64).
-define(ID, 1).

main(Args) ->
    N = case Args of
            [Count | _] -> list_to_integer(Count);
            [] -> 1000000
        end,
    Dir = tmp_dir(),
    io:format("erlmcp_flow ring benchmark: ~b frames of ~b bytes per case, ring of 1 MiB, "
              "~b schedulers, ~b CPUs~n",
              [N, ?SIZE, erlang:system_info(schedulers_online),
               erlang:system_info(logical_processors_available)]),
    io:format("~-10s ~-18s ~12s ~18s ~13s~n",
              ["consumer", "call", "send msg/s", "end-to-end msg/s", "full retries"]),
    Cases = [{send, 1}, {send_batch, 16}, {send_batch, 64}, {send_batch, 256}],
    try
        Frames = frames(N),
        [run(Consumer, Case, Frames, N, Dir) || Consumer <- [cli, deliver], Case <- Cases]
    after
        _ = file:del_dir_r(Dir)
    end,
    halt(0).

run(Consumer, {Call, BatchSize}, Frames, N, Dir) ->
    Name = "bench" ++ integer_to_list(erlang:unique_integer([positive])),
    {ok, Ring} = ?R:create(Name, #{dir => Dir}),
    {ok, P} = ?R:producer(Ring),
    Done = start_consumer(Consumer, Ring, Name, Dir, N),
    Work = case Call of
               send -> Frames;
               send_batch -> batches(Frames, BatchSize)
           end,
    erlang:garbage_collect(),
    T0 = erlang:monotonic_time(),
    Retries = case Call of
                  send -> send_loop(P, Work, 0);
                  send_batch -> batch_loop(P, Work, 0)
              end,
    T1 = erlang:monotonic_time(),
    T2 = case Done() of
             ok -> erlang:monotonic_time();
             {done_at, T} -> T
         end,
    Label = case Call of
                send -> "send/2";
                send_batch -> "send_batch/2 x" ++ integer_to_list(BatchSize)
            end,
    io:format("~-10s ~-18s ~12s ~18s ~13b~n",
              [Consumer, Label, rate(N, T1 - T0), rate(N, T2 - T0), Retries]),
    ok = ?R:close(P),
    ok = ?R:unlink(Ring).

%% Returns a fun that waits until the consumer has checked all N frames.
start_consumer(cli, Ring, Name, Dir, N) ->
    Port = open_port({spawn_executable, cli()},
                     [{args, ["ring", "consume", Name, "--dir", Dir,
                              "--count", integer_to_list(N)]},
                      exit_status, stderr_to_stdout, binary]),
    %% Done when the ring says the consumer has taken all N frames (the command lingers in
    %% one more wait of up to 1 s before it exits); then its verdict is waited for.
    fun() ->
            wait_received(Ring, N),
            T = erlang:monotonic_time(),
            ok = wait_port(Port, <<>>),
            {done_at, T}
    end;
start_consumer(deliver, Ring, _Name, _Dir, N) ->
    {ok, C} = ?R:consumer(Ring),
    Parent = self(),
    Sink = spawn_link(fun() ->
                              receive {go, Ref} -> Parent ! {self(), sink(Ref, 0, N)} end
                      end),
    {ok, Ref} = ?R:deliver(C, Sink),
    Sink ! {go, Ref},
    fun() ->
            receive {Sink, Result} -> ok = ?R:stop(Ref), Result end
    end.

sink(_Ref, Seq, N) when Seq >= N ->
    ok;
sink(Ref, Seq, N) ->
    receive
        {erlmcp_flow_frames, Ref, [<<?ID:32/little, Seq:64/little, _/binary>> | _] = Frames} ->
            ok = ?R:ack(Ref),
            sink(Ref, Seq + length(Frames), N);
        {erlmcp_flow_frames, Ref, [Other | _]} ->
            {out_of_order, Seq, Other};
        {erlmcp_flow_error, Ref, Reason} ->
            {error, Reason}
    end.

send_loop(_P, [], Retries) ->
    Retries;
send_loop(P, [F | Rest] = All, Retries) ->
    case ?R:send(P, F) of
        ok -> send_loop(P, Rest, Retries);
        {error, {full, _}} -> send_loop(P, All, Retries + 1)
    end.

batch_loop(_P, [], Retries) ->
    Retries;
batch_loop(P, [{Len, Batch} | Rest], Retries) ->
    case ?R:send_batch(P, Batch) of
        {ok, Len} -> batch_loop(P, Rest, Retries);
        {ok, Sent} -> batch_loop(P, [{Len - Sent, lists:nthtail(Sent, Batch)} | Rest],
                                 Retries + 1)
    end.

%% Sequence-numbered frames as `erlmcp-flow ring produce' makes them (crates/core/src/ring/seq.rs):
%% producer id (u32 LE), sequence (u64 LE), then byte i = (seq * 31) xor id xor i (mod 256).
frames(N) ->
    Tails = list_to_tuple([<< <<((K bxor ?ID bxor I) band 255)>> || I <- lists:seq(12, ?SIZE - 1)>>
                           || K <- lists:seq(0, 255)]),
    [<<?ID:32/little, S:64/little, (element(((S * 31) band 255) + 1, Tails))/binary>>
     || S <- lists:seq(0, N - 1)].

batches(Frames, Size) ->
    batches(Frames, Size, 0, [], []).

batches([], _Size, 0, [], Acc) ->
    lists:reverse(Acc);
batches([], _Size, Len, Batch, Acc) ->
    lists:reverse(Acc, [{Len, lists:reverse(Batch)}]);
batches(Frames, Size, Size, Batch, Acc) ->
    batches(Frames, Size, 0, [], [{Size, lists:reverse(Batch)} | Acc]);
batches([F | Rest], Size, Len, Batch, Acc) ->
    batches(Rest, Size, Len + 1, [F | Batch], Acc).

rate(N, Native) ->
    Seconds = erlang:convert_time_unit(Native, native, nanosecond) / 1.0e9,
    io_lib:format("~.2f M", [N / Seconds / 1.0e6]).

wait_received(Ring, N) ->
    case ?R:stats(Ring) of
        {ok, #{received := Received}} when Received >= N -> ok;
        {ok, _} -> timer:sleep(1), wait_received(Ring, N)
    end.

wait_port(Port, Out) ->
    receive
        {Port, {data, D}} -> wait_port(Port, <<Out/binary, D/binary>>);
        {Port, {exit_status, 0}} -> ok;
        {Port, {exit_status, Status}} -> {consumer_failed, Status, Out}
    after 300000 -> {consumer_timeout, Out}
    end.

cli() ->
    Candidates = [os:getenv("EMF_CLI"),
                  case os:getenv("EMF_LIB_DIR") of
                      false -> false;
                      LibDir -> filename:join(LibDir, "erlmcp-flow")
                  end],
    case [C || C <- Candidates, C =/= false, filelib:is_regular(C)] of
        [Cli | _] -> Cli;
        [] -> error({erlmcp_flow_cli_not_found, Candidates})
    end.

tmp_dir() ->
    Base = case os:getenv("TMPDIR") of false -> "/tmp"; "" -> "/tmp"; D -> D end,
    Dir = filename:join(Base, "erlmcp_flow_bench_" ++ os:getpid()),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Dir.

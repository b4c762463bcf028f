%% Interop test: the ring's primary consumer in Erlang, through erlmcp_flow_ring.
%%
%%   erl -noshell -pa EBIN -pa . -run interop_consumer main DIR NAME FRAMES PRODUCER_ID READY_FILE [WAIT_S]
%%
%% Opens ring NAME in DIR, takes its primary consumer, creates READY_FILE, then receives
%% FRAMES frames with recv_batch/3 (each wait up to WAIT_S seconds, default 300; a timeout is
%% a failure) and checks every one (the layout is
%% in c_subscriber.c: producer id u32 LE, sequence u64 LE with no gap, then
%% 12 + (Seq * 7919) rem 53 bytes in all, byte J being (Seq + J) band 255). Prints one line
%% and halts with 0 on success, 1 on failure.
-module(interop_consumer).
-export([main/1]).

main([Dir, Name, Frames, ProducerId, Ready]) ->
    main([Dir, Name, Frames, ProducerId, Ready, "300"]);
main([Dir, Name, Frames, ProducerId, Ready, WaitS]) ->
    N = list_to_integer(Frames),
    Id = list_to_integer(ProducerId),
    put(wait_ms, 1000 * list_to_integer(WaitS)),
    Result = try run(Dir, Name, N, Id, Ready)
             catch Class:Reason:Stack -> {error, {Class, Reason, Stack}}
             end,
    case Result of
        ok ->
            io:format("erlang-consumer: ok ~b frames in order and intact~n", [N]),
            erlang:halt(0);
        {error, Why} ->
            io:format("erlang-consumer: FAIL ~0tp~n", [Why]),
            erlang:halt(1)
    end;
main(Args) ->
    io:format("erlang-consumer: FAIL bad arguments ~0tp~n", [Args]),
    erlang:halt(2).

run(Dir, Name, N, Id, Ready) ->
    {ok, Ring} = erlmcp_flow_ring:open(unicode:characters_to_binary(Name),
                                       #{dir => unicode:characters_to_binary(Dir)}),
    {ok, Consumer} = erlmcp_flow_ring:consumer(Ring),
    ok = file:write_file(Ready ++ ".tmp", <<"ready\n">>),
    ok = file:rename(Ready ++ ".tmp", Ready),
    case loop(Consumer, 0, N, Id) of
        ok ->
            ok = erlmcp_flow_ring:close(Consumer),
            ok = erlmcp_flow_ring:close(Ring);
        Error ->
            Error
    end.

loop(_Consumer, N, N, _Id) ->
    ok;
loop(Consumer, Next, N, Id) ->
    case erlmcp_flow_ring:recv_batch(Consumer, min(4096, N - Next), get(wait_ms)) of
        {ok, Frames} ->
            case check(Frames, Next, N, Id) of
                {ok, Next2} -> loop(Consumer, Next2, N, Id);
                Error -> Error
            end;
        {error, Reason} ->
            {error, {recv_batch, {after_frame, Next}, Reason}}
    end.

check([], Next, _N, _Id) ->
    {ok, Next};
check([_ | _], N, N, _Id) ->
    {error, {extra_frames_after, N}};
check([Frame | Rest], Seq, N, Id) ->
    Len = frame_len(Seq),
    case Frame of
        <<Id:32/little, Seq:64/little, Tail/binary>> when byte_size(Frame) =:= Len ->
            case Tail =:= pattern(Seq, Len) of
                true -> check(Rest, Seq + 1, N, Id);
                false -> {error, {bad_bytes, {frame, Seq}, Tail}}
            end;
        <<OtherId:32/little, OtherSeq:64/little, _/binary>> ->
            {error, {unexpected, {expected, Seq, Id, Len},
                     {got, OtherSeq, OtherId, byte_size(Frame)}}};
        _ ->
            {error, {short_frame, {expected, Seq}, Frame}}
    end.

frame_len(Seq) ->
    12 + (Seq * 7919) rem 53.

pattern(Seq, Len) ->
    << <<((Seq + J) band 255)>> || J <- lists:seq(12, Len - 1) >>.

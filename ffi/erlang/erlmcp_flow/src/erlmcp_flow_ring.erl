%% @doc Shared-memory frame rings of the engine: producers and consumers in any process of
%% the machine (Erlang VMs, Rust, C, ...) exchanging frames through a file under /dev/shm.
%%
%% ```
%% {ok, Ring} = erlmcp_flow_ring:create(<<"jobs">>, #{capacity => 1 bsl 20}),
%% {ok, P} = erlmcp_flow_ring:producer(Ring),
%% {ok, C} = erlmcp_flow_ring:consumer(Ring),
%% ok = erlmcp_flow_ring:send(P, <<"hello">>),
%% {ok, <<"hello">>} = erlmcp_flow_ring:recv(C, 1000),
%% ok = erlmcp_flow_ring:unlink(Ring).
%% '''
%%
%% <h3>Producers</h3>
%% `send/2' never waits: `{error, {full, _}}' is back-pressure (nothing was sent, retry
%% later); `send/3' waits up to a timeout for space. `send_batch/2' sends the longest prefix
%% of a list of frames that fits, with one claim, and returns `{ok, Sent}': the first `Sent'
%% frames were sent, the others were not and are still the caller's to resend (`{ok, 0}' when
%% the ring is full). A producer is used by one process at a time (another process calling it at
%% the same moment gets `{error, {busy, _}}').
%%
%% `producer(Ring, #{slot => K})' attaches in producer slot `K' (0 on a single-producer ring,
%% below `max_producers' on a multi-producer one), taking it over when its holder died
%% (`{error, {busy, _}}' while a live producer holds it, `{error, {invalid_argument, _}}' for a
%% slot the ring does not have). `committed/1' says how many frames the slot has committed,
%% by this producer and every earlier holder, one that was killed included: a producer that
%% numbers its frames restarts in its predecessor's slot and resends exactly the missing ones.
%% ```
%% {ok, P} = erlmcp_flow_ring:producer(Ring, #{slot => 3}),
%% {ok, Next} = erlmcp_flow_ring:committed(P),     % frames 0 .. Next-1 are in the ring
%% [ok = erlmcp_flow_ring:send(P, frame(Seq), 5000) || Seq <- lists:seq(Next, Total - 1)].
%% '''
%%
%% <h3>Consumers</h3>
%% `consumer/1' attaches the ring's primary consumer, which resumes where the previous one
%% stopped (in this or another OS process); `subscribe/1' attaches a fan-out subscriber that
%% sees every frame sent from now on. Both hold producers back while attached: a slow consumer
%% makes the ring fill up. Frames are pulled with `recv/2' and `recv_batch/3', or pushed to a
%% process with `deliver/2,3'.
%%
%% <h3>Acknowledgements</h3>
%% A consumer starts in `auto' mode: every receive releases what it delivered (its space goes
%% back to producers, and a primary consumer attached later starts after it).
%% `set_ack_mode(Consumer, manual)' releases nothing until `ack(Consumer)': a consumer closed,
%% collected or killed (with its OS process) before acknowledging has its unacknowledged frames
%% delivered again, in order, to the next primary consumer. `unacked/1' counts them,
%% `rewind/1' makes this consumer's next receive deliver them again. Switching back to `auto'
%% acknowledges. `deliver/2,3' puts its consumer in `auto' mode (the delivery's own acks are
%% flow control: every frame it takes is released).
%%
%% <h3>Delivery guarantees</h3>
%% What a crash (kill -9 of one OS process, or a closed handle) does to frames, path by path:
%% <table border="1">
%% <tr><th>Path</th><th>Guarantee</th><th>What a crash does</th></tr>
%% <tr><td>`send/2,3', `send_batch/2' (the `Sent' it returned)</td>
%%     <td>once it returned `ok', the frame is committed: it reaches every consumer attached
%%     before it</td>
%%     <td>producer killed inside the call: the frame is either committed whole or never
%%     delivered; `committed/1' of a producer restarted in the same slot
%%     (`producer(Ring, #{slot => K})') says which</td></tr>
%% <tr><td>`send' answering `full' / `timeout' / an error</td>
%%     <td>nothing was written; the caller keeps the frame</td><td>&#8212;</td></tr>
%% <tr><td>a poll with a callback, auto mode (C and Rust hosts; not offered here)</td>
%%     <td>at least once while the callback runs; released when the call returns</td>
%%     <td>consumer dies during the callback: that batch is delivered again to the next
%%     consumer; after the call returned: released, not redelivered</td></tr>
%% <tr><td>`recv/2', `recv_batch/3', `deliver/2,3', auto mode</td>
%%     <td>at most once: released before they return (before a delivery message is
%%     sent)</td>
%%     <td>consumer dies after the call and before it used the bytes: those frames are lost to
%%     it</td></tr>
%% <tr><td>`recv/2', `recv_batch/3' in manual mode, then `ack/1'</td>
%%     <td>at least once: nothing is released before `ack/1'</td>
%%     <td>consumer dies (or is closed) before `ack/1': every unacknowledged frame is delivered
%%     again, in order, to the next consumer (dedupe by your own sequence numbers if effects
%%     must happen once)</td></tr>
%% <tr><td>fan-out subscribers (`subscribe/1')</td>
%%     <td>as above for each subscriber, from the moment it attached</td>
%%     <td>a dead subscriber's slot is reaped: a new subscriber starts at the tail</td></tr>
%% </table>
%% A frame whose bytes change inside the ring is delivered as it is unless the ring was
%% created with `checksum => true' (then it is skipped and reported as `{error, {corrupt, _}}'
%% by the receive that meets it, after the frames before it were delivered; a delivery ends
%% with `{erlmcp_flow_error, Ref, {corrupt, _}}'); a damaged frame header is reported as
%% corrupt once nothing can commit it any more.
%%
%% <h3>Delivery</h3>
%% `deliver(Consumer, Pid, Opts)' hands the consumer over to a thread of the NIF library that
%% sends the frames to `Pid' as `{erlmcp_flow_frames, Ref, [Frame]}' messages, in order, and
%% returns `{ok, Ref}'. No Erlang scheduler waits for frames: the thread sleeps on the ring's
%% futex. Flow control: a message carries at most `max_frames' frames (1024) and about
%% `max_bytes' bytes (256 KiB; one larger frame comes alone); with `window => W' (8) at most W
%% messages are unacknowledged. Call `ack(Ref)' once for each message handled; without credit
%% the thread stops reading the ring, which fills up, so producers see back-pressure instead of
%% the mailbox growing. `window => infinity' disables this (then nothing bounds the mailbox).
%%
%% A delivery ends with `stop(Ref)' (it returns once the thread has ended: no message arrives
%% after it; messages already in the mailbox stay), when `Pid' dies (it is monitored), or on an
%% engine error, announced by `{erlmcp_flow_error, Ref, {Status, Message}}'. Every frame taken
%% from the ring is sent before the end (to a dead owner it is lost, like its mailbox), and the
%% consumer is then released: a primary consumer attached again with `consumer/1' resumes
%% right after the last frame delivered. Closing or collecting the ring and consumer handles
%% does not stop a delivery.
%%
%% <h3>Handles and errors</h3>
%% Rings, producers and consumers are released when garbage collected, or at once by
%% `close/1' (later calls give `{error, {closed, _}}'). Every function returns
%% `{error, {Status, Message}}' on failure like the rest of the binding (`invalid_argument',
%% `not_found', `busy', `full', `timeout', `too_large', `closed', ...).
-module(erlmcp_flow_ring).

-export([create/2, open/1, open/2, close/1, unlink/1, stats/1, max_payload/1,
         producer/1, producer/2, committed/1, slot/1, send/2, send/3, send_batch/2,
         consumer/1, subscribe/1, recv/2, recv_batch/3, lag/1,
         set_ack_mode/2, ack/1, rewind/1, unacked/1,
         deliver/2, deliver/3, stop/1]).

-export_type([name/0, create_options/0, open_options/0, producer_options/0, ack_mode/0,
              deliver_options/0, stats/0]).

-type name() :: binary() | string() | atom().
%% 1 to 200 characters of `A-Z a-z 0-9 . _ -', not starting with `.'; the file is
%% `Dir/emf-Name'.
-type create_options() :: #{capacity => pos_integer(),
                            multi_producer => boolean(),
                            max_producers => pos_integer(),
                            max_subscribers => pos_integer(),
                            stall_timeout_ms => non_neg_integer(),
                            mode => non_neg_integer(),
                            dir => file:filename_all(),
                            checksum => boolean()}.
%% `capacity': data bytes, a power of two from 4096 to 1 GiB (1 MiB); `multi_producer'
%% (false); `max_producers' (16, multi-producer rings); `max_subscribers', the primary
%% consumer included (8); `stall_timeout_ms' before a stalled producer is checked for death
%% (100); `mode' of the file (8#600); `dir' (/dev/shm); `checksum' (false): every frame
%% carries a CRC32C checked by consumers (`EMF_RING_CHECKSUM'). Defaults are the engine's.
-type open_options() :: #{dir => file:filename_all()}.
-type producer_options() :: #{slot => non_neg_integer()}.
%% `slot': attach in this producer slot (see the module documentation); without it, the
%% first free slot.
-type ack_mode() :: auto | manual.
%% `auto' (`EMF_ACK_AUTO', the default): every receive releases what it delivered;
%% `manual' (`EMF_ACK_MANUAL'): nothing is released until `ack/1'.
-type deliver_options() :: #{max_frames => pos_integer(),
                             max_bytes => pos_integer(),
                             window => pos_integer() | infinity,
                             poll_ms => pos_integer()}.
%% `max_frames' per message (1024, at most 65536); `max_bytes' per message (262144, from 64
%% to 64 MiB; a larger frame comes alone); `window' of unacknowledged messages (8);
%% `poll_ms': the thread wakes up this often when idle, which bounds how long `stop/1' waits
%% (10).
-type stats() :: #{capacity := non_neg_integer(), tail := non_neg_integer(),
                   sent := non_neg_integer(), bytes := non_neg_integer(),
                   received := non_neg_integer(), backpressure := non_neg_integer(),
                   unblocked := non_neg_integer(), dead_reaped := non_neg_integer(),
                   max_lag := non_neg_integer(), corrupt_frames := non_neg_integer(),
                   producers := non_neg_integer(), subscribers := non_neg_integer(),
                   max_payload := non_neg_integer()}.
%% `emf_ring_stats_t': `sent'/`bytes' committed by all producers, `received' by the primary
%% consumer, `producers' alive, `subscribers' active slots (the primary consumer's included,
%% which is always active); plus `max_payload', the largest frame.

-type ring() :: erlmcp_flow_nif:ring().
-type producer() :: erlmcp_flow_nif:producer().
-type consumer() :: erlmcp_flow_nif:consumer().
-type error() :: erlmcp_flow_nif:error().

-define(CREATE_KEYS, [capacity, multi_producer, max_producers, max_subscribers,
                      stall_timeout_ms, mode, dir, checksum]).
-define(OPEN_KEYS, [dir]).
-define(PRODUCER_KEYS, [slot]).
-define(DELIVER_DEFAULTS, #{max_frames => 1024, max_bytes => 256 * 1024, window => 8,
                           poll_ms => 10}).

%%--------------------------------------------------------------------------------------------
%% Rings
%%--------------------------------------------------------------------------------------------

%% @doc Creates ring `Name' (a stale file of that name is replaced; one with live participants
%% gives `{error, {busy, _}}').
-spec create(name(), create_options()) -> {ok, ring()} | error().
create(Name, Opts) when is_map(Opts) ->
    with_options(Opts, ?CREATE_KEYS,
                 fun() ->
                         case Opts of
                             #{dir := Dir} -> erlmcp_flow_nif:ring_create(name(Name),
                                                                         Opts#{dir := path(Dir)});
                             _ -> erlmcp_flow_nif:ring_create(name(Name), Opts)
                         end
                 end);
create(_Name, _Opts) ->
    invalid("options: expected a map").

%% @doc Opens ring `Name' in /dev/shm.
%% @equiv open(Name, #{})
-spec open(name()) -> {ok, ring()} | error().
open(Name) ->
    open(Name, #{}).

%% @doc Opens an existing ring (`{error, {not_found, _}}' when there is none).
-spec open(name(), open_options()) -> {ok, ring()} | error().
open(Name, Opts) when is_map(Opts) ->
    with_options(Opts, ?OPEN_KEYS,
                 fun() ->
                         erlmcp_flow_nif:ring_open(name(Name),
                                                   path(maps:get(dir, Opts, undefined)))
                 end);
open(_Name, _Opts) ->
    invalid("options: expected a map").

%% @doc Releases a ring, producer or consumer handle now (idempotent); its later uses give
%% `{error, {closed, _}}'. A call still using the handle finishes first. Producers and
%% consumers keep the ring mapped after the ring handle is closed.
-spec close(ring() | producer() | consumer()) -> ok | error().
close(Handle) ->
    erlmcp_flow_nif:ring_close(Handle).

%% @doc Removes the ring's file; processes that have it mapped keep working.
-spec unlink(ring()) -> ok | error().
unlink(Ring) ->
    erlmcp_flow_nif:ring_unlink(Ring).

%% @doc The ring's counters, read without attaching.
-spec stats(ring()) -> {ok, stats()} | error().
stats(Ring) ->
    erlmcp_flow_nif:ring_stats(Ring).

%% @doc The largest frame the ring carries (a quarter of its capacity, less 8 bytes).
-spec max_payload(ring()) -> {ok, non_neg_integer()} | error().
max_payload(Ring) ->
    erlmcp_flow_nif:ring_max_payload(Ring).

%%--------------------------------------------------------------------------------------------
%% Producers
%%--------------------------------------------------------------------------------------------

%% @doc Attaches a producer (`{error, {busy, _}}' when a single-producer ring has one).
-spec producer(ring()) -> {ok, producer()} | error().
producer(Ring) ->
    erlmcp_flow_nif:producer_new(Ring).

%% @doc Attaches a producer with options: `#{slot => K}' attaches in producer slot `K',
%% taking it over when its holder died (`{error, {busy, _}}' while a live producer holds it,
%% `{error, {invalid_argument, _}}' for a slot the ring does not have).
-spec producer(ring(), producer_options()) -> {ok, producer()} | error().
producer(Ring, Opts) when is_map(Opts) ->
    with_options(Opts, ?PRODUCER_KEYS,
                 fun() ->
                         case Opts of
                             #{slot := Slot} -> erlmcp_flow_nif:producer_new_in_slot(Ring, Slot);
                             #{} -> erlmcp_flow_nif:producer_new(Ring)
                         end
                 end);
producer(_Ring, _Opts) ->
    invalid("options: expected a map").

%% @doc The frames committed through the producer's slot so far, by it and by every earlier
%% holder of the slot (a killed one included). A frame counts once its send returned.
-spec committed(producer()) -> {ok, non_neg_integer()} | error().
committed(Producer) ->
    case erlmcp_flow_nif:producer_committed(Producer) of
        {ok, {Committed, _Slot}} -> {ok, Committed};
        Error -> Error
    end.

%% @doc The producer slot the producer holds.
-spec slot(producer()) -> {ok, non_neg_integer()} | error().
slot(Producer) ->
    case erlmcp_flow_nif:producer_committed(Producer) of
        {ok, {_Committed, Slot}} -> {ok, Slot};
        Error -> Error
    end.

%% @doc Sends one frame without waiting: `{error, {full, _}}' when the ring is full (nothing
%% was sent), `{error, {too_large, _}}' past `max_payload/1'.
-spec send(producer(), iodata()) -> ok | error().
send(Producer, Frame) ->
    erlmcp_flow_nif:producer_send(Producer, Frame, 0).

%% @doc Sends one frame, waiting up to `Timeout' ms (or `infinity') for space, on a dirty I/O
%% scheduler; `{error, {timeout, _}}' when none came.
-spec send(producer(), iodata(), timeout()) -> ok | error().
send(Producer, Frame, Timeout) ->
    erlmcp_flow_nif:producer_send(Producer, Frame, Timeout).

%% @doc Sends the longest prefix of `Frames' that fits, in order, with one claim:
%% `{ok, Sent}' says the first `Sent' frames were sent; the rest were not (back-pressure) and are still the caller's, `{ok, 0}'
%% when the ring is full. A frame past `max_payload/1' refuses the whole batch (`too_large').
%% Up to 4096 frames and 1 MiB run on the calling scheduler, larger batches on a dirty one.
-spec send_batch(producer(), [iodata()]) -> {ok, non_neg_integer()} | error().
send_batch(Producer, Frames) ->
    erlmcp_flow_nif:producer_send_batch(Producer, Frames).

%%--------------------------------------------------------------------------------------------
%% Consumers
%%--------------------------------------------------------------------------------------------

%% @doc Attaches the primary consumer, which resumes where the previous one stopped;
%% `{error, {busy, _}}' while another handle (here or in another OS process) holds it.
-spec consumer(ring()) -> {ok, consumer()} | error().
consumer(Ring) ->
    erlmcp_flow_nif:consumer_new(Ring, false).

%% @doc Attaches a fan-out subscriber that sees every frame sent from now on
%% (`{error, {busy, _}}' when all `max_subscribers - 1' slots are taken).
-spec subscribe(ring()) -> {ok, consumer()} | error().
subscribe(Ring) ->
    erlmcp_flow_nif:consumer_new(Ring, true).

%% @doc The next frame, waiting up to `Timeout' ms (or `infinity') on a dirty I/O scheduler;
%% `{error, {timeout, _}}' when none came (also for `Timeout' 0 on an empty ring).
-spec recv(consumer(), timeout()) -> {ok, binary()} | error().
recv(Consumer, Timeout) ->
    erlmcp_flow_nif:consumer_recv(Consumer, Timeout).

%% @doc The frames ready now, in order: at least one (waiting up to `Timeout' ms for it), at
%% most `MaxFrames' and about 64 KiB.
-spec recv_batch(consumer(), pos_integer(), timeout()) -> {ok, [binary(), ...]} | error().
recv_batch(Consumer, MaxFrames, Timeout) ->
    erlmcp_flow_nif:consumer_recv_batch(Consumer, MaxFrames, Timeout).

%% @doc Bytes committed to the ring that this consumer has not consumed yet.
-spec lag(consumer()) -> {ok, non_neg_integer()} | error().
lag(Consumer) ->
    erlmcp_flow_nif:consumer_lag(Consumer).

%%--------------------------------------------------------------------------------------------
%% Acknowledgements
%%--------------------------------------------------------------------------------------------

%% @doc Chooses when the consumer releases what it delivered: `auto' (the default) or
%% `manual' (nothing until `ack/1'; see the module documentation). Switching to `auto'
%% acknowledges what was delivered. Another mode gives `{error, {invalid_argument, _}}'.
-spec set_ack_mode(consumer(), ack_mode()) -> ok | error().
set_ack_mode(Consumer, Mode) when Mode =:= auto; Mode =:= manual ->
    erlmcp_flow_nif:consumer_set_ack_mode(Consumer, Mode);
set_ack_mode(_Consumer, Mode) ->
    invalid(io_lib:format("ack mode ~0p: expected auto or manual", [Mode])).

%% @doc `ack(Consumer)' releases every frame the consumer delivered so far: they will not be
%% delivered again (needed in `manual' mode only). `ack(Ref)' acknowledges one
%% `{erlmcp_flow_frames, Ref, _}' message of a delivery: it may send one more (acks of a
%% delivery that has ended are ignored).
-spec ack(consumer() | reference()) -> ok | error().
ack(ConsumerOrRef) ->
    erlmcp_flow_nif:consumer_ack(ConsumerOrRef).

%% @doc Forgets the frames delivered since the last `ack/1': the next receive delivers them
%% again, in order. Returns how many there were.
-spec rewind(consumer()) -> {ok, non_neg_integer()} | error().
rewind(Consumer) ->
    erlmcp_flow_nif:consumer_rewind(Consumer).

%% @doc How many delivered frames are not acknowledged yet (0 in `auto' mode).
-spec unacked(consumer()) -> {ok, non_neg_integer()} | error().
unacked(Consumer) ->
    erlmcp_flow_nif:consumer_unacked(Consumer).

%%--------------------------------------------------------------------------------------------
%% Delivery
%%--------------------------------------------------------------------------------------------

%% @equiv deliver(Consumer, Pid, #{})
-spec deliver(consumer(), pid()) -> {ok, reference()} | error().
deliver(Consumer, Pid) ->
    deliver(Consumer, Pid, #{}).

%% @doc Hands `Consumer' over to a thread that sends its frames to `Pid' as
%% `{erlmcp_flow_frames, Ref, [Frame]}' (see the module documentation for flow control and
%% the end of a delivery). `Consumer' is closed here from now on; a consumer in `manual'
%% mode is switched to `auto' (acknowledging what it received before).
-spec deliver(consumer(), pid(), deliver_options()) -> {ok, reference()} | error().
deliver(Consumer, Pid, Opts) when is_map(Opts) ->
    with_options(Opts, maps:keys(?DELIVER_DEFAULTS),
                 fun() ->
                         #{max_frames := MaxFrames, max_bytes := MaxBytes, window := Window,
                           poll_ms := PollMs} = maps:merge(?DELIVER_DEFAULTS, Opts),
                         erlmcp_flow_nif:deliver(Consumer, Pid, MaxFrames, MaxBytes, Window,
                                                 PollMs)
                 end);
deliver(_Consumer, _Pid, _Opts) ->
    invalid("options: expected a map").

%% @doc Stops a delivery (idempotent). Returns once its thread has ended, within about
%% `poll_ms': no message of it arrives afterwards.
-spec stop(reference()) -> ok | error().
stop(Ref) ->
    erlmcp_flow_nif:deliver_stop(Ref).

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

with_options(Opts, Known, Fun) ->
    case maps:keys(maps:without(Known, Opts)) of
        [] -> Fun();
        Unknown -> invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, Known]))
    end.

name(Name) when is_atom(Name) -> atom_to_binary(Name, utf8);
name(Name) when is_list(Name) -> unicode_or_term(Name);
name(Name) -> Name.

path(undefined) -> undefined;
path(Path) when is_atom(Path) -> atom_to_binary(Path, utf8);
path(Path) when is_list(Path) -> unicode_or_term(Path);
path(Path) -> Path.

%% A string as UTF-8, or the term unchanged for the NIF to refuse.
unicode_or_term(Chars) ->
    try unicode:characters_to_binary(Chars) of
        Bin when is_binary(Bin) -> Bin;
        _ -> Chars
    catch
        error:badarg -> Chars
    end.

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.

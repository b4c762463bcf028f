%% @doc The raw NIF over the erlmcp-flow C ABI (`include/erlmcp_flow.h').
%%
%% Every function here is a thin call into the Rust engine. Use {@link erlmcp_flow_serializer}
%% and {@link erlmcp_flow_compressor} instead of calling this module directly: they add the
%% defaults and the option maps.
%%
%% Conventions of every function:
%% <ul>
%% <li>Byte arguments are binaries or iodata; any alignment and sub-binaries are fine.</li>
%% <li>A failure is `{error, {Status, Message}}': `Status' is the engine's status as an atom
%%     (`invalid_argument', `corrupt', `too_large', ...), `Message' a UTF-8 binary.</li>
%% <li>A wrong-typed argument gives `{error, {invalid_argument, Message}}', never an
%%     exception.</li>
%% <li>Inputs above 64 KiB are processed on a dirty CPU scheduler, and so is every byte
%%     argument that is iodata rather than a binary (it is flattened there, never on a normal
%%     scheduler): pass a binary to keep small inputs on the calling scheduler.</li>
%% </ul>
%%
%% Message handles belong to the loaded NIF library that made them. After a code upgrade of
%% this module (which loads the NIF library again, possibly a new build with its own copy of
%% the engine) the new code refuses older handles with
%% `{error, {invalid_argument, <<"message: not a handle of this library version ...">>}}':
%% open the archive again. Older handles are still freed by the library that made them, which
%% the runtime keeps loaded until the last of them is garbage collected.
%%
%% Loading checks that the engine's ABI version equals the one the NIF was compiled against;
%% on a mismatch the module fails to load and the code server logs
%% `{error, {abi_mismatch, LibraryVersion, HeaderVersion}}'.
-module(erlmcp_flow_nif).

-export([abi_version/0, version/0,
         json_to_archive/4, json_to_archive/5, archive_to_json/1, archive_validate/1,
         serializer_encode_term/5, serializer_decode_term/2,
         message_open/1, message_count/1, message_envelopes/1, message_to_json/1,
         message_payload_json/2,
         compress_if_needed/2, decompress/2,
         ring_create/2, ring_open/2, ring_stats/1, ring_max_payload/1, ring_unlink/1,
         ring_close/1,
         producer_new/1, producer_new_in_slot/2, producer_committed/1,
         producer_send/3, producer_send_batch/2,
         consumer_new/2, consumer_recv/2, consumer_recv_batch/3, consumer_lag/1,
         consumer_set_ack_mode/2, consumer_ack/1, consumer_rewind/1, consumer_unacked/1,
         deliver/6, deliver_ack/1, deliver_stop/1, deliveries/0,
         router_new/2, router_close/1, router_register_agent/2, router_unregister_agent/2,
         router_send_direct/4, router_send_batch/4,
         batch_new/4, batch_send/2, batch_tick/1, batch_flush/1, batch_pending/1,
         batch_close/1, batch_discard/1,
         state_open/2, state_share/3, state_lookup/2, state_read/2, state_release/2,
         state_mapped/0,
         queue_new/3, queue_enqueue/3, queue_dequeue/1, queue_stats/1, queue_close/1,
         cache_new/3, cache_set_sweeper/2, cache_put/3, cache_get/2, cache_remove/2,
         cache_sweep/1, cache_stats/1,
         quantize_f32/1, dequantize_i8/2, distance_f32/3, distance_f16/3,
         cosine_distance_i8/2, dot_i8/2,
         hnsw_new/7, hnsw_open/1, hnsw_load/1, hnsw_close/1, hnsw_info/1,
         hnsw_insert/3, hnsw_insert_new/2, hnsw_insert_batch/4, hnsw_search/6,
         hnsw_search_batch/7,
         hnsw_remove/2, hnsw_compact/1, hnsw_save/2, hnsw_stats/1, hnsw_indexes/0,
         sched_new/5, sched_close/1, sched_register_agent/6, sched_unregister_agent/3,
         sched_agent_dead/3, sched_heartbeat/3, sched_set_agent_host/3, sched_host_down/3, sched_submit/5, sched_started/5, sched_ack/6,
         sched_nack/6, sched_tick/2, sched_poll/2, sched_select_agent/2, sched_agent_load/2,
         sched_stats/1, sched_queued/2,
         pool_new/2, pool_close/1, pool_ensure_min/2, pool_started/4, pool_start_failed/4,
         pool_agent_gone/3, pool_observe/4, pool_demand/3, pool_tick/2, pool_poll/1,
         pool_next_deadline/1, pool_stats/1,
         raft_cluster_start/3, raft_cluster_close/1, raft_submit/2, raft_append_entry/2, raft_submit_many/3,
         raft_wait_committed/3, raft_leader/1, raft_members/1, raft_stats/1, raft_kill/2,
         raft_restart/2, raft_set/3, raft_get/2, raft_cas/4, raft_read/2,
         raft_transfer_leader/2, raft_change_membership/2, raft_membership/1,
         raft_node_start/3, raft_node_next_request/2, raft_node_reply/4, raft_node_stop/1,
         raft_node_info/1, raft_node_close/1,
         raft_client_connect/3, raft_client_submit/2, raft_client_close/1,
         gossip_start/2, gossip_put/3, gossip_get/2, gossip_delete/2, gossip_members/1,
         gossip_round/1, gossip_leave/1, gossip_next_event/2, gossip_stats/1, gossip_port/1,
         gossip_close/1,
         pbft_group_start/2, pbft_group_close/1, pbft_execute/2, pbft_stop_replica/2,
         pbft_view/1]).
-export([load_error_reason/1]).

-export_type([gossip/0, gossip_event/0,
              bytes/0, status/0, error/0, message/0, envelope/0, priority/0, kind/0,
              ring/0, producer/0, consumer/0, timeout_ms/0,
              router/0, batch/0, flush/0, store/0, state_ref/0, task_queue/0, cache/0,
              drop_policy/0, hnsw/0, metric/0, originals/0, distance/0, hit/0,
              sched/0, sched_action/0, pool/0, pool_action/0, raft/0,
              raft_node/0, raft_request/0, raft_client/0, pbft/0]).

-on_load(init/0).

-define(NIF_NAME, "erlmcp_flow_nif").
%% Must match EMF_NIF_LOAD_ABI_MISMATCH_FLAG and EMF_NIF_LOAD_VERSION_MASK in the C shim.
-define(ABI_MISMATCH_FLAG, 16#40000000).
-define(VERSION_MASK, 16#7FFF).

-type bytes() :: iodata().
-type status() :: null_argument | invalid_argument | full | empty | timeout | closed
                | corrupt | io | not_leader | unsupported | panic | buffer_too_small
                | too_large | not_found | busy | unknown.
-type error() :: {error, {status(), binary()}}.
-type priority() :: critical | high | normal | low.
-type kind() :: request | response | notification | task | result | error.
-opaque message() :: reference().
%% A message handle: a validated archive held by the engine, freed when garbage collected.
-opaque ring() :: reference().
%% A mapped ring (`emf_ring_t'), released by `ring_close/1' or when garbage collected.
-opaque producer() :: reference().
%% A producer attached to a ring (`emf_producer_t').
-opaque consumer() :: reference().
%% The primary consumer or a fan-out subscriber of a ring (`emf_consumer_t').
-opaque router() :: reference().
%% A router (`emf_router_t'): one process at a time; see erlmcp_flow_router.
-opaque batch() :: reference().
%% A batch processor (`emf_batch_t'): one process at a time; see erlmcp_flow_batch_processor.
-type flush() :: none | size | timeout | idle | demand.
%% Whether and why a batch processor flushed (`EMF_FLUSH_*').
-opaque store() :: reference().
%% A shared-state store (`emf_state_store_t'): thread-safe, freed when garbage collected.
-type state_ref() :: non_neg_integer().
%% A shared value's reference (`uint64_t'), valid in every process that opens the store.
-opaque task_queue() :: reference().
%% A task queue (`emf_task_queue_t'): thread-safe; see erlmcp_flow_queue.
-opaque cache() :: reference().
%% An LRU cache (`emf_cache_t'): thread-safe; see erlmcp_flow_lru_cache.
-opaque hnsw() :: reference().
%% An HNSW index (`emf_hnsw_t'): thread-safe; see erlmcp_flow_hnsw.
-opaque sched() :: reference().
%% A scheduler (`emf_sched_t'): one process at a time; see erlmcp_flow_scheduler.
-type sched_action() :: {deliver, Agent :: binary(), Task :: pos_integer(),
                         Attempt :: non_neg_integer(), DeadlineUs :: non_neg_integer(),
                         Payload :: binary()}
                      | {revoke, Agent :: binary(), Task :: pos_integer(),
                         Attempt :: non_neg_integer()}
                      | {result, Task :: pos_integer(), Result :: binary()}
                      | {dead_letter, Task :: pos_integer(), Reason :: binary()}.
%% An action a scheduler asks its host to carry out (`EMF_SCHED_ACTION_*').
-opaque pool() :: reference().
%% A local Raft cluster (`emf_raft_cluster_t'): node processes and a client; owned by one
%% erlmcp_flow_raft server.
-opaque raft() :: reference().
%% A node of a Raft cluster running in this VM whose state machine Erlang answers
%% (`emf_raft_node_start_remote'); owned by one erlmcp_flow_raft_node server.
-opaque raft_node() :: reference().
%% A request of a `raft_node()' to its state machine, answered with `raft_node_reply/4'
%% naming its `Id'.
-type raft_request() :: {apply, Id :: pos_integer(), Index :: pos_integer(), Op :: binary()}
                      | {snapshot, Id :: pos_integer()}
                      | {restore, Id :: pos_integer(), Snapshot :: binary()}
                      | {query, Id :: pos_integer(), Query :: binary()}.
%% A client of a Raft cluster over rings (`emf_raft_client_t'): one caller at a time.
-opaque raft_client() :: reference().
%% A gossip member running in this VM (`emf_gossip_t'); owned by one erlmcp_flow_gossip
%% server.
-opaque gossip() :: reference().
%% An event of a gossip member's subscription.
-type gossip_event() :: {member_up | member_suspect | member_down | member_restarted,
                         Id :: pos_integer()}
                      | {rejoined, Generation :: non_neg_integer()}
                      | {changed, Key :: binary(), Value :: binary() | deleted,
                         {Counter :: non_neg_integer(), Origin :: pos_integer()}}.

%% A local PBFT group (`emf_pbft_group_t'): replica threads and a client; owned by one
%% erlmcp_flow_pbft server.
-opaque pbft() :: reference().
%% A pool manager's policy (`emf_pool_t'): one process at a time; see
%% erlmcp_flow_pool_manager.
-type pool_action() :: {start, Slot :: non_neg_integer()} | {stop, Agent :: binary()}.
%% An action a pool asks its host to carry out (`EMF_POOL_ACTION_*').
-type metric() :: cosine | dot | l2sq.
%% `EMF_METRIC_*': `1 - cos(a, b)', `1 - a·b', `|a - b|²'.
-type originals() :: none | f16 | f32.
%% `EMF_ORIGINALS_*': what an index keeps of each vector besides its int8 codes.
-type distance() :: float() | infinity | neg_infinity | nan.
%% A distance; the atoms stand for results that are not finite (float overflow on huge
%% values), which an Erlang float cannot hold.
-type hit() :: {non_neg_integer(), distance()}.
%% A search answer: the id given at insertion and its distance to the query.
-type drop_policy() :: none | low_priority.
%% What a full task queue does with an arrival (`EMF_DROP_*').
-type timeout_ms() :: non_neg_integer() | infinity.
-type envelope() :: #{kind := kind(),
                      priority := priority(),
                      id := integer() | binary() | null | none | {json, binary()},
                      method := binary() | undefined,
                      created_at_us := non_neg_integer(),
                      deadline_us := non_neg_integer(),
                      error_code := integer() | undefined}.
%% One envelope: `id' is `none' when the message has no id, and `{json, Text}' for a number
%% that is not a 64-bit integer (a float, or an integer beyond 64 bits), `Text' being its exact
%% JSON text (`<<"1.5">>', `<<"123456789012345678901234567890">>'); `created_at_us' and
%% `deadline_us' are µs since the UNIX epoch, 0 for unknown / none.

%%--------------------------------------------------------------------------------------------
%% Loading
%%--------------------------------------------------------------------------------------------

-spec init() -> ok | {error, term()}.
init() ->
    Path = nif_path(),
    case erlang:load_nif(Path, 0) of
        ok -> ok;
        {error, _} = Error -> {error, load_error_reason(Error)}
    end.

%% priv/ of the installed application, else priv/ next to the ebin/ holding this module
%% (a build tree used without installing the application).
-spec nif_path() -> file:filename().
nif_path() ->
    case code:priv_dir(erlmcp_flow) of
        {error, bad_name} ->
            Ebin = case code:which(?MODULE) of
                       File when is_list(File) -> filename:dirname(File);
                       _ -> filename:dirname(?FILE)
                   end,
            filename:join([Ebin, "..", "priv", ?NIF_NAME]);
        Priv ->
            filename:join(Priv, ?NIF_NAME)
    end.

%% @doc Translates the error of `erlang:load_nif/2' into a readable reason, decoding the ABI
%% versions that the C `load()' (or `upgrade()') returns on a mismatch. Exported for the tests.
-spec load_error_reason({error, term()}) ->
          {abi_mismatch, Library :: non_neg_integer(), Header :: non_neg_integer()} | term().
load_error_reason({error, {Callback, Text} = Reason})
  when Callback =:= load; Callback =:= upgrade ->
    case re:run(Text, "(?:load|upgrade)-call unsuccessful \\((-?[0-9]+)\\)",
                [{capture, all_but_first, list}]) of
        {match, [Digits]} ->
            Code = list_to_integer(Digits),
            case Code band ?ABI_MISMATCH_FLAG of
                0 -> Reason;
                _ -> {abi_mismatch, (Code bsr 15) band ?VERSION_MASK, Code band ?VERSION_MASK}
            end;
        nomatch ->
            Reason
    end;
load_error_reason({error, Reason}) ->
    Reason.

%%--------------------------------------------------------------------------------------------
%% Library information
%%--------------------------------------------------------------------------------------------

%% @doc The ABI version of the loaded engine (equal to the header's `EMF_ABI_VERSION').
-spec abi_version() -> non_neg_integer().
abi_version() -> erlang:nif_error(not_loaded).

%% @doc The engine's version, such as `<<"0.1.0">>'.
-spec version() -> binary().
version() -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Serializer
%%--------------------------------------------------------------------------------------------

%% @doc `emf_json_to_archive': encodes MCP / JSON-RPC 2.0 text (one message or a batch).
%% `CreatedAtUs' 0 means now, `DeadlineUs' 0 means none.
-spec json_to_archive(bytes(), priority(), non_neg_integer(), non_neg_integer()) ->
          {ok, binary()} | error().
json_to_archive(_Json, _Priority, _CreatedAtUs, _DeadlineUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_json_to_archive_ex': as {@link json_to_archive/4}; `Checksum' `true' adds a
%% CRC32C (`EMF_ARCHIVE_CHECKSUM'), so that any flipped bit of the archive is refused as
%% `corrupt' by every reader.
-spec json_to_archive(bytes(), priority(), non_neg_integer(), non_neg_integer(), boolean()) ->
          {ok, binary()} | error().
json_to_archive(_Json, _Priority, _CreatedAtUs, _DeadlineUs, _Checksum) ->
    erlang:nif_error(not_loaded).

%% @doc `emf_archive_to_json': validates an archive and writes it as JSON-RPC text.
-spec archive_to_json(bytes()) -> {ok, binary()} | error().
archive_to_json(_Archive) -> erlang:nif_error(not_loaded).

%% @doc `emf_value_builder_*': encodes an Erlang term (one JSON-RPC message map or a batch
%% list of them) into an archive, walking the term in C without JSON text; a message map
%% without a `jsonrpc' key is taken as `"2.0"' (`EMF_ARCHIVE_IMPLICIT_JSONRPC'). The mapping
%% is {@link erlmcp_flow_serializer}'s. Terms that are not JSON-mappable give
%% `{error, {invalid_argument, Message}}' with what and where.
-spec serializer_encode_term(term(), priority(), non_neg_integer(), non_neg_integer(),
                             boolean()) -> {ok, binary()} | error().
serializer_encode_term(_Term, _Priority, _CreatedAtUs, _DeadlineUs, _Checksum) ->
    erlang:nif_error(not_loaded).

%% @doc `emf_archive_visit': validates an archive and builds the Erlang term of its message
%% (maps with binary keys, or with `existing_atoms' the existing atom of a key's name when
%% there is one). Never creates atoms.
-spec serializer_decode_term(bytes(), binary | existing_atoms) -> {ok, term()} | error().
serializer_decode_term(_Archive, _Keys) -> erlang:nif_error(not_loaded).

%% @doc `emf_archive_validate': validates an archive and counts its envelopes.
-spec archive_validate(bytes()) -> {ok, pos_integer()} | error().
archive_validate(_Archive) -> erlang:nif_error(not_loaded).

%% @doc `emf_message_open': copies and validates an archive into a message handle.
-spec message_open(bytes()) -> {ok, message()} | error().
message_open(_Archive) -> erlang:nif_error(not_loaded).

%% @doc `emf_message_count': the number of envelopes of a message.
-spec message_count(message()) -> {ok, pos_integer()} | error().
message_count(_Message) -> erlang:nif_error(not_loaded).

%% @doc `emf_message_envelope' for every envelope, in order.
-spec message_envelopes(message()) -> {ok, [envelope()]} | error().
message_envelopes(_Message) -> erlang:nif_error(not_loaded).

%% @doc `emf_message_to_json': the whole message as JSON-RPC text.
-spec message_to_json(message()) -> {ok, binary()} | error().
message_to_json(_Message) -> erlang:nif_error(not_loaded).

%% @doc `emf_message_payload_json': the params, result or error object of envelope `Index'
%% (0-based) as JSON; `{error, {not_found, _}}' when it has none.
-spec message_payload_json(message(), non_neg_integer()) -> {ok, binary()} | error().
message_payload_json(_Message, _Index) -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Compressor
%%--------------------------------------------------------------------------------------------

%% @doc `emf_compress_if_needed': zlib when `byte_size(Data) >= Threshold' and the result is
%% smaller than 80 % of the input, else the input unchanged.
-spec compress_if_needed(bytes(), non_neg_integer()) ->
          {ok, {compressed | raw, binary()}} | error().
compress_if_needed(_Data, _Threshold) -> erlang:nif_error(not_loaded).

%% @doc `emf_decompress': inflates a zlib stream whose output may not exceed `MaxSize' bytes.
%% `MaxSize' is any non-negative 64-bit integer; `16#FFFFFFFFFFFFFFFF' means no limit.
-spec decompress(bytes(), non_neg_integer()) -> {ok, binary()} | error().
decompress(_Data, _MaxSize) -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Rings (see erlmcp_flow_ring for the documented API)
%%--------------------------------------------------------------------------------------------

%% @doc `emf_ring_create' with the engine's default options updated by `Options' (capacity,
%% multi_producer, max_producers, max_subscribers, stall_timeout_ms, mode, dir).
-spec ring_create(bytes(), map()) -> {ok, ring()} | error().
ring_create(_Name, _Options) -> erlang:nif_error(not_loaded).

%% @doc `emf_ring_open'; `Dir' `undefined' means /dev/shm.
-spec ring_open(bytes(), bytes() | undefined) -> {ok, ring()} | error().
ring_open(_Name, _Dir) -> erlang:nif_error(not_loaded).

%% @doc `emf_ring_stats' as a map, plus `max_payload'.
-spec ring_stats(ring()) -> {ok, #{atom() => non_neg_integer()}} | error().
ring_stats(_Ring) -> erlang:nif_error(not_loaded).

%% @doc `emf_ring_max_payload'.
-spec ring_max_payload(ring()) -> {ok, non_neg_integer()} | error().
ring_max_payload(_Ring) -> erlang:nif_error(not_loaded).

%% @doc `emf_ring_unlink'.
-spec ring_unlink(ring()) -> ok | error().
ring_unlink(_Ring) -> erlang:nif_error(not_loaded).

%% @doc Releases a ring, producer or consumer handle now (idempotent).
-spec ring_close(ring() | producer() | consumer()) -> ok | error().
ring_close(_Handle) -> erlang:nif_error(not_loaded).

%% @doc `emf_producer_new'.
-spec producer_new(ring()) -> {ok, producer()} | error().
producer_new(_Ring) -> erlang:nif_error(not_loaded).

%% @doc `emf_producer_new_in_slot' (dirty I/O scheduler, like `producer_new/1').
-spec producer_new_in_slot(ring(), non_neg_integer()) -> {ok, producer()} | error().
producer_new_in_slot(_Ring, _Slot) -> erlang:nif_error(not_loaded).

%% @doc `emf_producer_committed': `{ok, {Committed, Slot}}'.
-spec producer_committed(producer()) ->
          {ok, {non_neg_integer(), non_neg_integer()}} | error().
producer_committed(_Producer) -> erlang:nif_error(not_loaded).

%% @doc `emf_producer_send'; with a timeout above 0, waits for space (dirty I/O scheduler).
-spec producer_send(producer(), bytes(), timeout_ms()) -> ok | error().
producer_send(_Producer, _Data, _TimeoutMs) -> erlang:nif_error(not_loaded).

%% @doc `emf_producer_send_batch': `{ok, Sent}', the first `Sent' frames were sent.
-spec producer_send_batch(producer(), [bytes()]) -> {ok, non_neg_integer()} | error().
producer_send_batch(_Producer, _Frames) -> erlang:nif_error(not_loaded).

%% @doc `emf_consumer_new' (`false') or `emf_consumer_subscribe' (`true').
-spec consumer_new(ring(), boolean()) -> {ok, consumer()} | error().
consumer_new(_Ring, _Subscribe) -> erlang:nif_error(not_loaded).

%% @doc The next frame, waiting up to `TimeoutMs' (dirty I/O scheduler).
-spec consumer_recv(consumer(), timeout_ms()) -> {ok, binary()} | error().
consumer_recv(_Consumer, _TimeoutMs) -> erlang:nif_error(not_loaded).

%% @doc The frames ready now (at least one, at most `MaxFrames', about 64 KiB), waiting up to
%% `TimeoutMs' for the first.
-spec consumer_recv_batch(consumer(), pos_integer(), timeout_ms()) ->
          {ok, [binary(), ...]} | error().
consumer_recv_batch(_Consumer, _MaxFrames, _TimeoutMs) -> erlang:nif_error(not_loaded).

%% @doc `emf_consumer_lag'.
-spec consumer_lag(consumer()) -> {ok, non_neg_integer()} | error().
consumer_lag(_Consumer) -> erlang:nif_error(not_loaded).

%% @doc `emf_consumer_set_ack_mode' with `auto' (`EMF_ACK_AUTO'), `manual' (`EMF_ACK_MANUAL')
%% or a code, which the engine checks.
-spec consumer_set_ack_mode(consumer(), auto | manual | non_neg_integer()) -> ok | error().
consumer_set_ack_mode(_Consumer, _Mode) -> erlang:nif_error(not_loaded).

%% @doc `emf_consumer_ack' for a consumer; another reference is taken for a delivery's and
%% acknowledged as by `deliver_ack/1'.
-spec consumer_ack(consumer() | reference()) -> ok | error().
consumer_ack(_ConsumerOrRef) -> erlang:nif_error(not_loaded).

%% @doc `emf_consumer_rewind': `{ok, Unacked}', how many frames will be delivered again.
-spec consumer_rewind(consumer()) -> {ok, non_neg_integer()} | error().
consumer_rewind(_Consumer) -> erlang:nif_error(not_loaded).

%% @doc `emf_consumer_unacked'.
-spec consumer_unacked(consumer()) -> {ok, non_neg_integer()} | error().
consumer_unacked(_Consumer) -> erlang:nif_error(not_loaded).

%% @doc Hands `Consumer' to a delivery thread sending `{erlmcp_flow_frames, Ref, Frames}' to
%% `Pid'. `Window' is a positive integer or `infinity'.
-spec deliver(consumer(), pid(), pos_integer(), pos_integer(), pos_integer() | infinity,
              pos_integer()) -> {ok, reference()} | error().
deliver(_Consumer, _Pid, _MaxFrames, _MaxBytes, _Window, _PollMs) ->
    erlang:nif_error(not_loaded).

%% @doc Gives a delivery credit for one more message.
-spec deliver_ack(reference()) -> ok | error().
deliver_ack(_Ref) -> erlang:nif_error(not_loaded).

%% @doc Stops a delivery; returns once its thread has ended.
-spec deliver_stop(reference()) -> ok | error().
deliver_stop(_Ref) -> erlang:nif_error(not_loaded).

%% @doc The number of deliveries of the loaded library not yet reaped (their threads joined).
-spec deliveries() -> non_neg_integer().
deliveries() -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Router (see erlmcp_flow_router for the documented API)
%%--------------------------------------------------------------------------------------------

%% @doc `emf_router_new': inboxes in `Dir' (`undefined': /dev/shm) of `InboxCapacity' bytes
%% (0: 1 MiB).
-spec router_new(bytes() | undefined, non_neg_integer()) -> {ok, router()} | error().
router_new(_Dir, _InboxCapacity) -> erlang:nif_error(not_loaded).

%% @doc `emf_router_free' now (idempotent; later calls give `{error, {closed, _}}').
-spec router_close(router()) -> ok | error().
router_close(_Router) -> erlang:nif_error(not_loaded).

%% @doc `emf_router_register_agent': the agent's inbox consumer.
-spec router_register_agent(router(), bytes()) -> {ok, consumer()} | error().
router_register_agent(_Router, _Agent) -> erlang:nif_error(not_loaded).

%% @doc `emf_router_unregister_agent'.
-spec router_unregister_agent(router(), bytes()) -> ok | error().
router_unregister_agent(_Router, _Agent) -> erlang:nif_error(not_loaded).

%% @doc `emf_router_send_direct'. `Attached' is a scheduling hint: true when this router has
%% sent to the agent before (its inbox is open), so the call may stay on this scheduler.
-spec router_send_direct(router(), bytes(), bytes(), boolean()) -> ok | error().
router_send_direct(_Router, _Agent, _Data, _Attached) -> erlang:nif_error(not_loaded).

%% @doc `emf_router_send_batch': `{ok, Accepted}', the first `Accepted' messages were sent.
-spec router_send_batch(router(), bytes(), [bytes()], boolean()) ->
          {ok, non_neg_integer()} | error().
router_send_batch(_Router, _Agent, _Frames, _Attached) -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Batch processors (see erlmcp_flow_batch_processor)
%%--------------------------------------------------------------------------------------------

%% @doc `emf_batch_new' over a ring; 0 takes the engine's defaults (100, 10 ms, 10000).
-spec batch_new(ring(), non_neg_integer(), non_neg_integer(), non_neg_integer()) ->
          {ok, batch()} | error().
batch_new(_Ring, _BatchSize, _TimeoutMs, _MaxPending) -> erlang:nif_error(not_loaded).

%% @doc `emf_batch_send', then `emf_batch_pending': `DueMs' is -1 when nothing is pending.
-spec batch_send(batch(), bytes()) ->
          {ok, flush(), non_neg_integer(), integer()} | error().
batch_send(_Batch, _Data) -> erlang:nif_error(not_loaded).

%% @doc `emf_batch_tick', then `emf_batch_pending'.
-spec batch_tick(batch()) -> {ok, flush(), non_neg_integer(), integer()} | error().
batch_tick(_Batch) -> erlang:nif_error(not_loaded).

%% @doc `emf_batch_flush' (`Sent' messages), then `emf_batch_pending'.
-spec batch_flush(batch()) ->
          {ok, non_neg_integer(), non_neg_integer(), integer()} | error().
batch_flush(_Batch) -> erlang:nif_error(not_loaded).

%% @doc `emf_batch_pending': `{ok, Pending, DueMs}'.
-spec batch_pending(batch()) -> {ok, non_neg_integer(), integer()} | error().
batch_pending(_Batch) -> erlang:nif_error(not_loaded).

%% @doc `emf_batch_free': `{error, {full, _}}' (nothing freed) when messages could not be sent.
-spec batch_close(batch()) -> ok | error().
batch_close(_Batch) -> erlang:nif_error(not_loaded).

%% @doc `emf_batch_discard': frees the processor and drops the messages it holds.
-spec batch_discard(batch()) -> {ok, non_neg_integer()} | error().
batch_discard(_Batch) -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Shared state (see erlmcp_flow)
%%--------------------------------------------------------------------------------------------

%% @doc `emf_state_open': store `Name' in `Dir' (`undefined': /dev/shm).
-spec state_open(bytes(), bytes() | undefined) -> {ok, store()} | error().
state_open(_Name, _Dir) -> erlang:nif_error(not_loaded).

%% @doc `emf_state_share'.
-spec state_share(store(), bytes(), bytes()) -> {ok, state_ref()} | error().
state_share(_Store, _Key, _Value) -> erlang:nif_error(not_loaded).

%% @doc `emf_state_lookup'.
-spec state_lookup(store(), bytes()) -> {ok, state_ref()} | error().
state_lookup(_Store, _Key) -> erlang:nif_error(not_loaded).

%% @doc `emf_state_read': the value, copied (below 64 KiB) or as a binary over the mapping.
-spec state_read(store(), state_ref()) -> {ok, binary()} | error().
state_read(_Store, _Ref) -> erlang:nif_error(not_loaded).

%% @doc `emf_state_release'.
-spec state_release(store(), state_ref()) -> ok | error().
state_release(_Store, _Ref) -> erlang:nif_error(not_loaded).

%% @doc The number of shared values mapped for zero-copy binaries by the loaded library.
-spec state_mapped() -> non_neg_integer().
state_mapped() -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Task queues (see erlmcp_flow_queue)
%%--------------------------------------------------------------------------------------------

%% @doc `emf_task_queue_new'. The engine's sentinels pass through: `MaxPrimary' 0 means 1000,
%% `MaxOverflow' `16#FFFFFFFFFFFFFFFF' means 10000.
-spec queue_new(non_neg_integer(), non_neg_integer(), drop_policy()) ->
          {ok, task_queue()} | error().
queue_new(_MaxPrimary, _MaxOverflow, _DropPolicy) -> erlang:nif_error(not_loaded).

%% @doc `emf_task_queue_enqueue': `ok' (primary queue), `backpressure' (overflow), `rejected'
%% (not queued: the task is still the caller's) or `{evicted, Task, Priority}' (queued by
%% evicting `Task', handed back).
-spec queue_enqueue(task_queue(), bytes(), priority()) ->
          ok | backpressure | rejected | {evicted, binary(), priority()} | error().
queue_enqueue(_Queue, _Task, _Priority) -> erlang:nif_error(not_loaded).

%% @doc `emf_task_queue_dequeue': the oldest task of the highest priority, or `empty'.
-spec queue_dequeue(task_queue()) -> {ok, binary(), priority()} | empty | error().
queue_dequeue(_Queue) -> erlang:nif_error(not_loaded).

%% @doc `emf_task_queue_stats' as a map.
-spec queue_stats(task_queue()) -> {ok, #{atom() => non_neg_integer()}} | error().
queue_stats(_Queue) -> erlang:nif_error(not_loaded).

%% @doc Closes a queue: every later call gets `{error, {closed, _}}'; returns the tasks it
%% held, in dequeue order, and frees it (dirty CPU scheduler).
-spec queue_close(task_queue()) -> {ok, [{binary(), priority()}]} | error().
queue_close(_Queue) -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Caches (see erlmcp_flow_lru_cache)
%%--------------------------------------------------------------------------------------------

%% @doc `emf_cache_new'. The engine's sentinels pass through: `Capacity' 0 means 10000,
%% `TtlMs' 0 means forever and `16#FFFFFFFFFFFFFFFF' 5000 ms, `Shards' 0 lets the engine
%% choose. `Capacity' is at most 16777216 and `Shards' at most 1024 (the engine preallocates).
-spec cache_new(non_neg_integer(), non_neg_integer(), non_neg_integer()) ->
          {ok, cache()} | error().
cache_new(_Capacity, _TtlMs, _Shards) -> erlang:nif_error(not_loaded).

%% @doc `emf_cache_set_sweeper': a thread sweeping expired entries every `EveryMs' ms (0
%% stops it); it ends when the cache is freed.
-spec cache_set_sweeper(cache(), non_neg_integer()) -> ok | error().
cache_set_sweeper(_Cache, _EveryMs) -> erlang:nif_error(not_loaded).

%% @doc `emf_cache_put'.
-spec cache_put(cache(), bytes(), bytes()) -> ok | error().
cache_put(_Cache, _Key, _Value) -> erlang:nif_error(not_loaded).

%% @doc `emf_cache_get_into': `{ok, Value}' or `miss' (absent or expired).
-spec cache_get(cache(), bytes()) -> {ok, binary()} | miss | error().
cache_get(_Cache, _Key) -> erlang:nif_error(not_loaded).

%% @doc `emf_cache_remove': `ok', or `not_found' when the key was absent.
-spec cache_remove(cache(), bytes()) -> ok | not_found | error().
cache_remove(_Cache, _Key) -> erlang:nif_error(not_loaded).

%% @doc `emf_cache_sweep': removes the expired entries now; `{ok, Removed}'.
-spec cache_sweep(cache()) -> {ok, non_neg_integer()} | error().
cache_sweep(_Cache) -> erlang:nif_error(not_loaded).

%% @doc `emf_cache_stats' as a map.
-spec cache_stats(cache()) -> {ok, #{atom() => non_neg_integer()}} | error().
cache_stats(_Cache) -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Vectors (see erlmcp_flow_quantization)
%%--------------------------------------------------------------------------------------------
%% Float vectors are binaries of native-endian float32 values, int8 codes binaries of bytes,
%% half floats binaries of native-endian IEEE binary16 values (`<<X:16/float-native>>'). Any
%% alignment is fine (a copy is made when needed).

%% @doc `emf_quantize_f32': int8 codes and the scale such that `X ≈ Scale · Code'.
-spec quantize_f32(binary()) -> {ok, {binary(), distance()}} | error().
quantize_f32(_Vector) -> erlang:nif_error(not_loaded).

%% @doc `emf_dequantize_i8': `Scale · Code' for each code, as float32 values. `Scale' is a
%% float within the float32 range.
-spec dequantize_i8(binary(), float()) -> {ok, binary()} | error().
dequantize_i8(_Codes, _Scale) -> erlang:nif_error(not_loaded).

%% @doc `emf_distance_f32' between two float32 vectors of the same length.
-spec distance_f32(metric(), binary(), binary()) -> {ok, distance()} | error().
distance_f32(_Metric, _A, _B) -> erlang:nif_error(not_loaded).

%% @doc `emf_distance_f16' between two half-float vectors of the same length.
-spec distance_f16(metric(), binary(), binary()) -> {ok, distance()} | error().
distance_f16(_Metric, _A, _B) -> erlang:nif_error(not_loaded).

%% @doc `emf_cosine_distance_i8' between two code vectors of the same length.
-spec cosine_distance_i8(binary(), binary()) -> {ok, distance()} | error().
cosine_distance_i8(_A, _B) -> erlang:nif_error(not_loaded).

%% @doc `emf_dot_i8': the exact integer dot product of two code vectors.
-spec dot_i8(binary(), binary()) -> {ok, integer()} | error().
dot_i8(_A, _B) -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% HNSW indexes (see erlmcp_flow_hnsw)
%%--------------------------------------------------------------------------------------------
%% Ids are integers from 0 to 2^64 - 1. A single insert, search or removal runs on the calling
%% scheduler when its estimated time (from the index's parameters and size) is below 0.5 ms,
%% else on a dirty CPU scheduler; batches and compact on a dirty CPU scheduler, files on a
%% dirty I/O scheduler. No call waits for a compact on a normal scheduler.

%% @doc `emf_hnsw_new' with `emf_hnsw_params_default(Dim)' updated by the arguments; `Seed'
%% `default' keeps the default seed. `Dim' 0: the first insert fixes it.
-spec hnsw_new(non_neg_integer(), metric(), pos_integer(), pos_integer(), pos_integer(),
               originals(), non_neg_integer() | default) -> {ok, hnsw()} | error().
hnsw_new(_Dim, _Metric, _M, _EfConstruction, _EfSearch, _Originals, _Seed) ->
    erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_open': maps an index file read-only (searches only).
-spec hnsw_open(bytes()) -> {ok, hnsw()} | error().
hnsw_open(_Path) -> erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_load': reads an index file into a new index that can change.
-spec hnsw_load(bytes()) -> {ok, hnsw()} | error().
hnsw_load(_Path) -> erlang:nif_error(not_loaded).

%% @doc Releases an index now, or once the calls using it have returned (idempotent; later
%% calls get `{error, {closed, _}}').
-spec hnsw_close(hnsw()) -> ok | error().
hnsw_close(_Index) -> erlang:nif_error(not_loaded).

%% @doc The index's parameters (`emf_hnsw_params', read when it was made; `dim' 0 for an
%% index made with `Dim' 0 until its first insert) and whether it is a mapped file.
-spec hnsw_info(hnsw()) ->
          {ok, #{dim := non_neg_integer(), metric := metric(), m := pos_integer(),
                 ef_construction := pos_integer(), ef_search := pos_integer(),
                 originals := originals(), seed := non_neg_integer(), mapped := boolean()}}
          | error().
hnsw_info(_Index) -> erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_insert': one float32 vector of the index's dim.
-spec hnsw_insert(hnsw(), non_neg_integer(), binary()) -> ok | error().
hnsw_insert(_Index, _Id, _Vector) -> erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_insert_new': one float32 vector under an id the index picks, returned.
-spec hnsw_insert_new(hnsw(), binary()) -> {ok, non_neg_integer()} | error().
hnsw_insert_new(_Index, _Vector) -> erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_insert_batch' on `Threads' threads (0: one per CPU): `Ids' native-endian
%% uint64 values, `Vectors' as many rows of float32 values (dirty CPU scheduler).
-spec hnsw_insert_batch(hnsw(), binary(), binary(), non_neg_integer()) -> ok | error().
hnsw_insert_batch(_Index, _Ids, _Vectors, _Threads) -> erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_search': the `K' nearest hits, closest first. `Ef' 0 is the index's
%% ef_search; `K' and `Ef' are at most 1048576. `Filter' is `undefined' or the engine's
%% bitset: native-endian uint64 words, id `I' being bit `I rem 64' of word `I div 64'.
-spec hnsw_search(hnsw(), binary(), non_neg_integer(), non_neg_integer(), boolean(),
                  binary() | undefined) -> {ok, [hit()]} | error().
hnsw_search(_Index, _Query, _K, _Ef, _Rerank, _Filter) -> erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_search_batch': `Queries' holds rows of float32 values; one list of hits a
%% query (dirty CPU scheduler; at most 16777216 hits in all).
-spec hnsw_search_batch(hnsw(), binary(), non_neg_integer(), non_neg_integer(), boolean(),
                        binary() | undefined, non_neg_integer()) -> {ok, [[hit()]]} | error().
hnsw_search_batch(_Index, _Queries, _K, _Ef, _Rerank, _Filter, _Threads) ->
    erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_remove': `{error, {not_found, _}}' when the id is absent.
-spec hnsw_remove(hnsw(), non_neg_integer()) -> ok | error().
hnsw_remove(_Index, _Id) -> erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_compact' (dirty CPU scheduler).
-spec hnsw_compact(hnsw()) -> ok | error().
hnsw_compact(_Index) -> erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_save' (dirty I/O scheduler).
-spec hnsw_save(hnsw(), bytes()) -> ok | error().
hnsw_save(_Index, _Path) -> erlang:nif_error(not_loaded).

%% @doc `emf_hnsw_stats': live vectors and bytes held (a mapped index: the file's size).
-spec hnsw_stats(hnsw()) ->
          {ok, #{len := non_neg_integer(), memory_bytes := non_neg_integer()}} | error().
hnsw_stats(_Index) -> erlang:nif_error(not_loaded).

%% @doc The number of indexes of the loaded library not freed yet (closed or collected).
-spec hnsw_indexes() -> non_neg_integer().
hnsw_indexes() -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Schedulers (see erlmcp_flow_scheduler)
%%--------------------------------------------------------------------------------------------
%% Every event carries the caller's clock reading `NowUs' (µs of one monotonic clock for every
%% call on a scheduler). A scheduler is used by one process at a time (another one calling in
%% meanwhile gets `{error, {busy, _}}').

%% @doc `emf_sched_new': options (`max_queued', `heartbeat_timeout_us', `max_attempts',
%% `lease_factor', `min_lease_us', `max_lease_us', `default_lease_us', `latency_window',
%% `ewma_alpha', `strategy', `seed', `work_stealing', `shm_capacity'; others are ignored here),
%% the ledger kind, its name (shm: a segment name; file: a path) and directory (shm only).
%% A durable ledger holding records is recovered. Runs on a dirty I/O scheduler.
-spec sched_new(map(), memory | shm | file, binary() | undefined, binary() | undefined,
                non_neg_integer()) -> {ok, sched()} | error().
sched_new(_Opts, _Ledger, _Name, _Dir, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc Frees the scheduler now (a durable ledger keeps its records); idempotent.
-spec sched_close(sched()) -> ok | error().
sched_close(_Sched) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_register_agent' with a host-checked liveness token (pid 0).
-spec sched_register_agent(sched(), binary(), binary(), non_neg_integer(), non_neg_integer(),
                           non_neg_integer()) -> ok | error().
sched_register_agent(_Sched, _Agent, _Type, _MaxTasks, _Token, _NowUs) ->
    erlang:nif_error(not_loaded).

%% @doc `emf_sched_unregister_agent'.
-spec sched_unregister_agent(sched(), binary(), non_neg_integer()) -> ok | error().
sched_unregister_agent(_Sched, _Agent, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_agent_dead'.
-spec sched_agent_dead(sched(), binary(), non_neg_integer()) -> ok | error().
sched_agent_dead(_Sched, _Agent, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_set_agent_host': `Agent' runs on gossip member `Host' (0: none).
-spec sched_set_agent_host(sched(), binary(), non_neg_integer()) -> ok | error().
sched_set_agent_host(_Sched, _Agent, _Host) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_host_down': member `Host' is dead; the number of its agents removed.
-spec sched_host_down(sched(), non_neg_integer(), non_neg_integer()) ->
          {ok, non_neg_integer()} | error().
sched_host_down(_Sched, _Host, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_heartbeat'.
-spec sched_heartbeat(sched(), binary(), non_neg_integer()) -> ok | error().
sched_heartbeat(_Sched, _Agent, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_submit': `{error, {full, _}}' is back-pressure (nothing accepted).
-spec sched_submit(sched(), binary(), priority(), bytes(), non_neg_integer()) ->
          {ok, pos_integer()} | error().
sched_submit(_Sched, _Type, _Priority, _Payload, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_started': `{ok, false}' when that attempt is not leased to that agent.
-spec sched_started(sched(), binary(), pos_integer(), non_neg_integer(), non_neg_integer()) ->
          {ok, boolean()} | error().
sched_started(_Sched, _Agent, _Task, _Attempt, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_ack': `{ok, true}' when the result is a duplicate (ignored).
-spec sched_ack(sched(), binary(), pos_integer(), non_neg_integer(), non_neg_integer(),
                bytes()) -> {ok, boolean()} | error().
sched_ack(_Sched, _Agent, _Task, _Attempt, _NowUs, _Result) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_nack': `{ok, false}' when that attempt was not leased to that agent.
-spec sched_nack(sched(), binary(), pos_integer(), non_neg_integer(), non_neg_integer(),
                 bytes()) -> {ok, boolean()} | error().
sched_nack(_Sched, _Agent, _Task, _Attempt, _NowUs, _Reason) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_tick'.
-spec sched_tick(sched(), non_neg_integer()) -> ok | error().
sched_tick(_Sched, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc Up to `Max' actions (`emf_sched_poll_action'), oldest first, about 64 KiB of them at
%% most; `More' is true when the call stopped at a limit.
-spec sched_poll(sched(), pos_integer()) -> {ok, [sched_action()], boolean()} | error().
sched_poll(_Sched, _Max) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_select_agent': `{error, {full, _}}' when no agent has spare capacity.
-spec sched_select_agent(sched(), binary()) -> {ok, binary()} | error().
sched_select_agent(_Sched, _Type) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_agent_load' as a map (`current_tasks', `backlog', `max_tasks',
%% `latency_us', `last_heartbeat_us').
-spec sched_agent_load(sched(), binary()) -> {ok, #{atom() => non_neg_integer()}} | error().
sched_agent_load(_Sched, _Agent) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_stats' as a map.
-spec sched_stats(sched()) -> {ok, #{atom() => non_neg_integer()}} | error().
sched_stats(_Sched) -> erlang:nif_error(not_loaded).

%% @doc `emf_sched_queued': tasks of the type waiting in the queue.
-spec sched_queued(sched(), binary()) -> {ok, non_neg_integer()} | error().
sched_queued(_Sched, _Type) -> erlang:nif_error(not_loaded).

%%--------------------------------------------------------------------------------------------
%% Pool managers (see erlmcp_flow_pool_manager)
%%--------------------------------------------------------------------------------------------
%% Every event carries the caller's clock reading `NowUs'. A pool is used by one process at a
%% time (another one calling in meanwhile gets `{error, {busy, _}}').

%% @doc `emf_pool_new' for agents of `Type': options `min_size', `max_size', `max_starting',
%% `idle_timeout_us', `warmup_delay_us', `start_timeout_us', `max_backoff_us' (others are
%% ignored here; absent ones take the engine's defaults).
-spec pool_new(map(), binary()) -> {ok, pool()} | error().
pool_new(_Opts, _Type) -> erlang:nif_error(not_loaded).

%% @doc Frees the pool now (its agents are the host's); idempotent.
-spec pool_close(pool()) -> ok | error().
pool_close(_Pool) -> erlang:nif_error(not_loaded).

%% @doc `emf_pool_ensure_min'.
-spec pool_ensure_min(pool(), non_neg_integer()) -> ok | error().
pool_ensure_min(_Pool, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_pool_started': start `Slot' became agent `Agent'.
-spec pool_started(pool(), non_neg_integer(), binary(), non_neg_integer()) -> ok | error().
pool_started(_Pool, _Slot, _Agent, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_pool_start_failed'.
-spec pool_start_failed(pool(), non_neg_integer(), bytes(), non_neg_integer()) -> ok | error().
pool_start_failed(_Pool, _Slot, _Reason, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_pool_agent_gone'.
-spec pool_agent_gone(pool(), binary(), non_neg_integer()) -> ok | error().
pool_agent_gone(_Pool, _Agent, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_pool_observe': `Agent' has `InFlight' tasks now.
-spec pool_observe(pool(), binary(), non_neg_integer(), non_neg_integer()) -> ok | error().
pool_observe(_Pool, _Agent, _InFlight, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_pool_demand': `Queued' tasks of the pool's type wait.
-spec pool_demand(pool(), non_neg_integer(), non_neg_integer()) -> ok | error().
pool_demand(_Pool, _Queued, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc `emf_pool_tick'.
-spec pool_tick(pool(), non_neg_integer()) -> ok | error().
pool_tick(_Pool, _NowUs) -> erlang:nif_error(not_loaded).

%% @doc Every pending action (`emf_pool_poll_action'), oldest first.
-spec pool_poll(pool()) -> {ok, [pool_action()]} | error().
pool_poll(_Pool) -> erlang:nif_error(not_loaded).

%% @doc `emf_pool_next_deadline': when the pool next needs a tick.
-spec pool_next_deadline(pool()) -> {ok, non_neg_integer() | infinity} | error().
pool_next_deadline(_Pool) -> erlang:nif_error(not_loaded).

%% @doc `emf_pool_stats' as a map.
-spec pool_stats(pool()) -> {ok, #{atom() => non_neg_integer()}} | error().
pool_stats(_Pool) -> erlang:nif_error(not_loaded).

%% ---- Raft clusters (c_src/raft.c; every call on a dirty I/O scheduler) ----------------------

%% @doc `emf_raft_cluster_start': `N' node processes in `Dir', options `bin', `memory',
%% `tick_ms', `election_tick', `start_timeout_ms', `timeout_ms', `attempt_timeout_ms'.
-spec raft_cluster_start(pos_integer(), file:filename_all(), map()) -> {ok, raft()} | error().
raft_cluster_start(_N, _Dir, _Opts) -> erlang:nif_error(not_loaded).

%% @doc Stops the nodes and frees the cluster now; idempotent.
-spec raft_cluster_close(raft()) -> ok | error().
raft_cluster_close(_Cluster) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_submit': the log index and the state machine's result bytes.
-spec raft_submit(raft(), bytes()) -> {ok, {non_neg_integer(), binary()}} | error().
raft_submit(_Cluster, _Op) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_append_entry': the log index once committed.
-spec raft_append_entry(raft(), bytes()) -> {ok, non_neg_integer()} | error().
raft_append_entry(_Cluster, _Entry) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_submit_many': up to `Window' operations in flight; each one's log
%% index, or (when some failed) `{error, {Reason, Message, [Index | StatusAtom]}}'.
-spec raft_submit_many(raft(), [bytes()], non_neg_integer()) ->
    {ok, [non_neg_integer()]}
    | {error, {atom(), binary(), [non_neg_integer() | atom()]}}
    | error().
raft_submit_many(_Cluster, _Ops, _Window) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_wait_committed': the leader's applied index.
-spec raft_wait_committed(raft(), non_neg_integer(), non_neg_integer()) ->
          {ok, non_neg_integer()} | error().
raft_wait_committed(_Cluster, _Index, _TimeoutMs) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_leader': `{Leader, Term}'.
-spec raft_leader(raft()) -> {ok, {pos_integer(), non_neg_integer()}} | error().
raft_leader(_Cluster) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_members'.
-spec raft_members(raft()) -> {ok, [pos_integer()]} | error().
raft_members(_Cluster) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_stats': a text line per node.
-spec raft_stats(raft()) -> {ok, binary()} | error().
raft_stats(_Cluster) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_kill': SIGKILL node `Node' (for tests).
-spec raft_kill(raft(), pos_integer()) -> ok | error().
raft_kill(_Cluster, _Node) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_restart'.
-spec raft_restart(raft(), pos_integer()) -> ok | error().
raft_restart(_Cluster, _Node) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_set': the log index.
-spec raft_set(raft(), bytes(), bytes()) -> {ok, non_neg_integer()} | error().
raft_set(_Cluster, _Key, _Value) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_get': `{Index, Found, Value}'.
-spec raft_get(raft(), bytes()) -> {ok, {non_neg_integer(), boolean(), binary()}} | error().
raft_get(_Cluster, _Key) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_cas' (`Expected' `none': the key must be absent):
%% `{Index, Swapped, HadPrevious, Previous}'.
-spec raft_cas(raft(), bytes(), none | bytes(), bytes()) ->
          {ok, {non_neg_integer(), boolean(), boolean(), binary()}} | error().
raft_cas(_Cluster, _Key, _Expected, _New) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_read': a linearizable ReadIndex read of `Query' at the leader (no
%% log entry): `{ReadIndex, Answer}'.
-spec raft_read(raft(), bytes()) -> {ok, {non_neg_integer(), binary()}} | error().
raft_read(_Cluster, _Query) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_transfer_leader': waits until `To' leads; the new term.
-spec raft_transfer_leader(raft(), pos_integer()) -> {ok, non_neg_integer()} | error().
raft_transfer_leader(_Cluster, _To) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_change_membership': `[{Kind, Node}]' with `Kind' 1 (add a voter),
%% 2 (add a learner) or 3 (remove); the change's log index once the joint configuration is
%% applied.
-spec raft_change_membership(raft(), [{1..3, pos_integer()}]) ->
          {ok, non_neg_integer()} | error().
raft_change_membership(_Cluster, _Changes) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_cluster_membership': `{Voters, Learners, Joint}'.
-spec raft_membership(raft()) -> {ok, {[pos_integer()], [pos_integer()], boolean()}} | error().
raft_membership(_Cluster) -> erlang:nif_error(not_loaded).

%% ---- In-process Raft nodes answered by Erlang, and clients (c_src/raft.c) -----------------

%% @doc `emf_raft_node_start_remote': node `Id' of `Voters' over the rings of the option
%% `ring_dir' (required), its log in `data_dir' (absent: in memory); options `tick_ms',
%% `election_tick', `heartbeat_tick', `snapshot_entries', `timeout_ms' (how long the node
%% waits for each answer; 0: 5000).
-spec raft_node_start(pos_integer(), [pos_integer()], map()) -> {ok, raft_node()} | error().
raft_node_start(_Id, _Voters, _Opts) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_node_next_request': waits up to `TimeoutMs' for the node's next request
%% (`{error, {timeout, _}}': none; `{error, {closed, _}}': the node has stopped).
-spec raft_node_next_request(raft_node(), non_neg_integer()) -> {ok, raft_request()} | error().
raft_node_next_request(_Node, _TimeoutMs) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_node_reply': answers request `Id' (`Status' 0) or fails it (`Answer' says
%% why; the node stops unless it is a query).
-spec raft_node_reply(raft_node(), pos_integer(), integer(), bytes()) -> ok | error().
raft_node_reply(_Node, _Id, _Status, _Answer) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_node_stop': stops the node and says what ended it (`{error, {stopped, Why}}'
%% when its state machine failed or did not answer in time).
-spec raft_node_stop(raft_node()) -> ok | error().
raft_node_stop(_Node) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_node_info': `#{id, leader, term, commit, applied, running}'.
-spec raft_node_info(raft_node()) -> {ok, map()} | error().
raft_node_info(_Node) -> erlang:nif_error(not_loaded).

%% @doc Stops the node (its error lost) and releases the handle; idempotent.
-spec raft_node_close(raft_node()) -> ok | error().
raft_node_close(_Node) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_client_connect': a client of the cluster of `Nodes' over the rings of
%% `RingDir'; options `timeout_ms', `attempt_timeout_ms'.
-spec raft_client_connect(file:filename_all(), [pos_integer()], map()) ->
          {ok, raft_client()} | error().
raft_client_connect(_RingDir, _Nodes, _Opts) -> erlang:nif_error(not_loaded).

%% @doc `emf_raft_client_submit': the log index and the state machine's result.
-spec raft_client_submit(raft_client(), bytes()) ->
          {ok, {non_neg_integer(), binary()}} | error().
raft_client_submit(_Client, _Op) -> erlang:nif_error(not_loaded).

%% @doc Releases the client; idempotent.
-spec raft_client_close(raft_client()) -> ok | error().
raft_client_close(_Client) -> erlang:nif_error(not_loaded).

%% ---- Gossip members (c_src/gossip.c) ----------------------------------------------------------

%% @doc `emf_gossip_start': member `Id' with the options of the map: `dir' (a ring directory:
%% rings) or `listen' (`<<"ip:port">>': TCP), `peers' (ids over rings, `[{Id, <<"ip:port">>}]'
%% over TCP), `seeds', `gossip_interval_ms' (100), `anti_entropy_interval_ms' (10000; 0: off),
%% `max_fan_out' (10), `probe_period_ms' (1000), `suspicion_timeout_ms' (0: from the cluster
%% size), `generation' (0: the wall clock), `inbox_capacity', `seed'.
-spec gossip_start(pos_integer(), map()) -> {ok, gossip()} | error().
gossip_start(_Id, _Opts) -> erlang:nif_error(not_loaded).

%% @doc `emf_gossip_put': the new version's Lamport counter.
-spec gossip_put(gossip(), bytes(), bytes()) -> {ok, non_neg_integer()} | error().
gossip_put(_Member, _Key, _Value) -> erlang:nif_error(not_loaded).

%% @doc `emf_gossip_get': the value, or `{error, {not_found, _}}'.
-spec gossip_get(gossip(), bytes()) -> {ok, binary()} | error().
gossip_get(_Member, _Key) -> erlang:nif_error(not_loaded).

%% @doc `emf_gossip_delete': whether there was a value to delete.
-spec gossip_delete(gossip(), bytes()) -> {ok, boolean()} | error().
gossip_delete(_Member, _Key) -> erlang:nif_error(not_loaded).

%% @doc `emf_gossip_members': `[#{id, generation, incarnation, state}]', `state' one of
%% `alive', `suspect', `down'.
-spec gossip_members(gossip()) -> {ok, [map()]} | error().
gossip_members(_Member) -> erlang:nif_error(not_loaded).

%% @doc `emf_gossip_round': one push-pull round now; the round count.
-spec gossip_round(gossip()) -> {ok, non_neg_integer()} | error().
gossip_round(_Member) -> erlang:nif_error(not_loaded).

%% @doc `emf_gossip_leave': leaves the cluster (the member keeps running until closed).
-spec gossip_leave(gossip()) -> ok | error().
gossip_leave(_Member) -> erlang:nif_error(not_loaded).

%% @doc `emf_gossip_next_event': waits up to `TimeoutMs' for the next event
%% (`{error, {timeout, _}}': none; `{error, {closed, _}}': the member has stopped).
-spec gossip_next_event(gossip(), non_neg_integer()) -> {ok, gossip_event()} | error().
gossip_next_event(_Member, _TimeoutMs) -> erlang:nif_error(not_loaded).

%% @doc `emf_gossip_stats': the member's counters as a map.
-spec gossip_stats(gossip()) -> {ok, map()} | error().
gossip_stats(_Member) -> erlang:nif_error(not_loaded).

%% @doc `emf_gossip_port': the TCP port the member listens on (0 over rings).
-spec gossip_port(gossip()) -> {ok, non_neg_integer()} | error().
gossip_port(_Member) -> erlang:nif_error(not_loaded).

%% @doc Stops the member (without leaving) and releases the handle; idempotent.
-spec gossip_close(gossip()) -> ok | error().
gossip_close(_Member) -> erlang:nif_error(not_loaded).

%% ---- PBFT groups (c_src/pbft.c; dirty I/O but pbft_view) -----------------------------------

%% @doc `emf_pbft_group_start': replica threads and a client in `Dir', options `n',
%% `ed25519', `accept_tentative', `batch_window_us', `view_change_timeout_ms',
%% `retransmit_ms', `timeout_ms'.
-spec pbft_group_start(file:filename_all(), map()) -> {ok, pbft()} | error().
pbft_group_start(_Dir, _Opts) -> erlang:nif_error(not_loaded).

%% @doc Stops the replicas now; idempotent.
-spec pbft_group_close(pbft()) -> ok | error().
pbft_group_close(_Group) -> erlang:nif_error(not_loaded).

%% @doc `emf_pbft_group_execute': the agreed result and the path that completed it.
-spec pbft_execute(pbft(), bytes()) -> {ok, {binary(), fast | slow}} | error().
pbft_execute(_Group, _Op) -> erlang:nif_error(not_loaded).

%% @doc `emf_pbft_group_stop_replica': stops (crashes) one replica, for tests.
-spec pbft_stop_replica(pbft(), non_neg_integer()) -> ok | error().
pbft_stop_replica(_Group, _I) -> erlang:nif_error(not_loaded).

%% @doc `emf_pbft_group_view': the view the client knows.
-spec pbft_view(pbft()) -> {ok, non_neg_integer()} | error().
pbft_view(_Group) -> erlang:nif_error(not_loaded).

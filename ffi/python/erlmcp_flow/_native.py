"""Finding, loading and declaring the native library (``liberlmcp_flow.so``).

This module is the only place that knows the C ABI of ``include/erlmcp_flow.h``: the struct
layouts and the argument and result types of every exported ``emf_*`` function. Everything
else in the package calls through :data:`lib`, which is loaded once, at import.

Discovery order (the first that applies wins):

1. ``ERLMCP_FLOW_LIB``: a path to the shared library. When set it is authoritative: a
   missing or unloadable file is an error, never a silent fall-back to another copy.
2. The library bundled in this package, next to ``__init__.py``: the copy that ``pip install``
   / ``pip wheel`` build with cargo and put there (named like an extension module of this
   interpreter, ``liberlmcp_flow.cpython-311-x86_64-linux-gnu.so``, see
   :data:`BUNDLED_FILES`), or a ``liberlmcp_flow.so`` copied there by hand.
3. The build tree of the repository this package sits in: ``<repo>/target/release``, then
   ``<repo>/target/debug``, with ``<repo>`` three levels above the package directory
   (``<repo>/ffi/python/erlmcp_flow``).

Failures raise :class:`ImportError` subclasses: :class:`LibraryNotFoundError` (nothing found
or loadable; the message lists every place looked at) and :class:`AbiMismatchError` (the
library's ``emf_abi_version()`` differs from :data:`ABI_VERSION`).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import sys
from ctypes import (
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path

#: The ``EMF_ABI_VERSION`` this package was written for.
ABI_VERSION = 4
EMF_ABI_VERSION = ABI_VERSION

#: Environment variable naming the shared library to load.
ENV_VAR = "ERLMCP_FLOW_LIB"

if sys.platform == "darwin":
    LIBRARY_FILE = "liberlmcp_flow.dylib"
elif sys.platform == "win32":
    LIBRARY_FILE = "erlmcp_flow.dll"
else:
    LIBRARY_FILE = "liberlmcp_flow.so"

#: The file names the bundled library may have in the package directory, in the order they are
#: tried. The build (``ffi/python/setup.py``, setuptools-rust) copies the C library there under
#: the name of an extension module ``erlmcp_flow.liberlmcp_flow`` of the interpreter that built
#: it: ``liberlmcp_flow`` plus one of this interpreter's extension suffixes. It is a plain C
#: library all the same, loaded with ctypes. :data:`LIBRARY_FILE` (a copy made by hand) last.
BUNDLED_FILES = tuple(
    dict.fromkeys(
        [f"liberlmcp_flow{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        + [LIBRARY_FILE]
    )
)


class LibraryNotFoundError(ImportError):
    """The native library could not be found or loaded."""


class AbiMismatchError(ImportError):
    """The loaded library speaks another C ABI version than this package."""


# --- C types (same field order and types as include/erlmcp_flow.h) -----------------------

emf_status_t = c_int32


class emf_buf_t(Structure):
    """``emf_buf_t``: bytes owned by the caller, released with ``emf_buf_free``.

    ``token`` is the library's private identity of the buffer (it lets the library refuse a
    second free through a stale copy even after the memory was reused). Never change it; a
    zero-initialised ``emf_buf_t()`` is the empty buffer."""

    _fields_ = [
        ("data", POINTER(c_uint8)),
        ("len", c_size_t),
        ("token", c_uint64),
    ]


class emf_encode_options_t(Structure):
    """``emf_encode_options_t``: metadata for ``emf_json_to_archive`` and ``_ex``."""

    _fields_ = [
        ("priority", c_uint32),
        ("created_at_us", c_uint64),
        ("deadline_us", c_uint64),
    ]


class emf_envelope_info_t(Structure):
    """``emf_envelope_info_t``: one envelope's fields; pointers borrow from the message."""

    _fields_ = [
        ("kind", c_uint32),
        ("priority", c_uint32),
        ("created_at_us", c_uint64),
        ("deadline_us", c_uint64),
        ("id_type", c_uint32),
        ("id_int", c_int64),
        ("id_str", POINTER(c_uint8)),
        ("id_str_len", c_size_t),
        ("method", POINTER(c_uint8)),
        ("method_len", c_size_t),
        ("has_error", c_bool),
        ("error_code", c_int64),
    ]


class emf_message_t(Structure):
    """Opaque ``emf_message_t``; only pointers to it are used."""


emf_message_p = POINTER(emf_message_t)


class emf_value_builder_t(Structure):
    """Opaque ``emf_value_builder_t``; only pointers to it are used."""


emf_value_builder_p = POINTER(emf_value_builder_t)


class emf_value_event_t(Structure):
    """``emf_value_event_t``: one event of a value stream (``emf_value_builder_push``,
    ``emf_archive_visit``)."""

    _fields_ = [
        ("kind", c_uint32),
        ("int_value", c_int64),
        ("uint_value", c_uint64),
        ("float_value", c_double),
        ("data", POINTER(c_uint8)),
        ("len", c_size_t),
        ("count", c_size_t),
    ]


#: ``emf_value_event_fn``: ``int (*)(void *ctx, const emf_value_event_t *event)``; 0 goes on.
emf_value_event_fn = ctypes.CFUNCTYPE(c_int, c_void_p, POINTER(emf_value_event_t))


class emf_value_visitor_t(Structure):
    """``emf_value_visitor_t``: the callback of ``emf_archive_visit``."""

    _fields_ = [("on_event", emf_value_event_fn)]

class emf_ring_options_t(Structure):
    """``emf_ring_options_t``: options for ``emf_ring_create``; fill it with
    ``emf_ring_options_default`` first."""

    _fields_ = [
        ("capacity", c_size_t),
        ("multi_producer", c_bool),
        ("max_producers", c_uint32),
        ("max_subscribers", c_uint32),
        ("stall_timeout_ms", c_uint32),
        ("mode", c_uint32),
        ("dir", c_char_p),
        ("flags", c_uint32),
    ]


class emf_ring_stats_t(Structure):
    """``emf_ring_stats_t``: a ring's counters."""

    _fields_ = [
        ("capacity", c_uint64),
        ("tail", c_uint64),
        ("sent", c_uint64),
        ("bytes", c_uint64),
        ("received", c_uint64),
        ("backpressure", c_uint64),
        ("unblocked", c_uint64),
        ("dead_reaped", c_uint64),
        ("max_lag", c_uint64),
        ("corrupt_frames", c_uint64),
        ("producers", c_uint32),
        ("subscribers", c_uint32),
    ]


class emf_slice_t(Structure):
    """``emf_slice_t``: one frame of a batch to send (``data`` may be NULL when ``len`` is 0)."""

    _fields_ = [
        ("data", c_void_p),
        ("len", c_size_t),
    ]


class emf_ring_t(Structure):
    """Opaque ``emf_ring_t``; only pointers to it are used."""


class emf_producer_t(Structure):
    """Opaque ``emf_producer_t``; only pointers to it are used."""


class emf_consumer_t(Structure):
    """Opaque ``emf_consumer_t``; only pointers to it are used."""


class emf_router_t(Structure):
    """Opaque ``emf_router_t``; only pointers to it are used."""


class emf_batch_t(Structure):
    """Opaque ``emf_batch_t``; only pointers to it are used."""


class emf_state_store_t(Structure):
    """Opaque ``emf_state_store_t``; only pointers to it are used."""


class emf_state_value_t(Structure):
    """Opaque ``emf_state_value_t``; only pointers to it are used."""


class emf_task_queue_stats_t(Structure):
    """``emf_task_queue_stats_t``: a task queue's counters."""

    _fields_ = [
        ("depth", c_uint64),
        ("primary_depth", c_uint64),
        ("overflow_depth", c_uint64),
        ("depth_p99", c_uint64),
        ("max_depth", c_uint64),
        ("enqueued", c_uint64),
        ("dequeued", c_uint64),
        ("spills", c_uint64),
        ("rejections", c_uint64),
        ("evictions", c_uint64),
    ]


class emf_cache_stats_t(Structure):
    """``emf_cache_stats_t``: a cache's counters."""

    _fields_ = [
        ("len", c_uint64),
        ("capacity", c_uint64),
        ("hits", c_uint64),
        ("misses", c_uint64),
        ("evictions", c_uint64),
        ("expirations", c_uint64),
    ]


class emf_task_queue_t(Structure):
    """Opaque ``emf_task_queue_t``; only pointers to it are used."""


class emf_cache_t(Structure):
    """Opaque ``emf_cache_t``; only pointers to it are used."""


class emf_hnsw_params_t(Structure):
    """``emf_hnsw_params_t``: an HNSW index's parameters; fill it with
    ``emf_hnsw_params_default`` first."""

    _fields_ = [
        ("dim", c_uint32),
        ("metric", c_uint32),
        ("m", c_uint32),
        ("ef_construction", c_uint32),
        ("ef_search", c_uint32),
        ("originals", c_uint32),
        ("seed", c_uint64),
    ]


class emf_hnsw_hit_t(Structure):
    """``emf_hnsw_hit_t``: one search answer, ``{uint64_t id; float distance;}`` (16 bytes
    with the tail padding; ``erlmcp_flow.vector`` reads arrays of them as a NumPy structured
    dtype of the same layout)."""

    _fields_ = [
        ("id", c_uint64),
        ("distance", c_float),
    ]


class emf_hnsw_t(Structure):
    """Opaque ``emf_hnsw_t``; only pointers to it are used."""


class emf_breaker_options_t(Structure):
    """``emf_breaker_options_t``: a circuit breaker per agent (``enabled`` off by default)."""

    _fields_ = [
        ("enabled", c_bool),
        ("window_us", c_uint64),
        ("buckets", c_uint32),
        ("min_calls", c_uint32),
        ("failure_ratio", c_double),
        ("slow_call_us", c_uint64),
        ("open_for_us", c_uint64),
        ("backoff", c_uint32),
        ("max_open_for_us", c_uint64),
        ("half_open_probes", c_uint32),
    ]


class emf_backpressure_options_t(Structure):
    """``emf_backpressure_options_t``: back-pressure per agent (off by default)."""

    _fields_ = [
        ("enabled", c_bool),
        ("high_water", c_uint64),
        ("low_water", c_uint64),
    ]


class emf_ratelimit_options_t(Structure):
    """``emf_ratelimit_options_t``: an adaptive rate limit per agent type (off by default)."""

    _fields_ = [
        ("enabled", c_bool),
        ("initial_milli_per_sec", c_uint64),
        ("min_milli_per_sec", c_uint64),
        ("max_milli_per_sec", c_uint64),
        ("burst", c_uint64),
        ("target_p95_us", c_uint64),
        ("increase_milli_per_sec", c_uint64),
        ("decrease", c_double),
        ("window", c_uint64),
        ("min_samples", c_uint64),
        ("interval_us", c_uint64),
    ]


class emf_sched_options_t(Structure):
    """``emf_sched_options_t``: a scheduler's options; fill it with
    ``emf_sched_options_default`` first."""

    _fields_ = [
        ("max_queued", c_size_t),
        ("heartbeat_timeout_us", c_uint64),
        ("max_attempts", c_uint32),
        ("lease_factor", c_double),
        ("min_lease_us", c_uint64),
        ("max_lease_us", c_uint64),
        ("default_lease_us", c_uint64),
        ("latency_window", c_uint32),
        ("ewma_alpha", c_double),
        ("strategy", c_uint32),
        ("seed", c_uint64),
        ("work_stealing", c_bool),
        ("shm_capacity", c_size_t),
        ("breaker", emf_breaker_options_t),
        ("backpressure", emf_backpressure_options_t),
        ("rate_limit", emf_ratelimit_options_t),
    ]


class emf_sched_action_t(Structure):
    """``emf_sched_action_t``: one action to carry out; ``agent`` and ``data`` point into the
    handle until its next ``emf_sched_poll_action``."""

    _fields_ = [
        ("kind", c_uint32),
        ("attempt", c_uint32),
        ("task", c_uint64),
        ("deadline_us", c_uint64),
        ("agent", c_char_p),
        ("data", POINTER(c_uint8)),
        ("len", c_size_t),
    ]


class emf_sched_stats_t(Structure):
    """``emf_sched_stats_t``: a scheduler's counters."""

    _fields_ = [
        ("queued", c_uint64),
        ("leased", c_uint64),
        ("completed", c_uint64),
        ("dead_lettered", c_uint64),
        ("duplicates", c_uint64),
        ("redeliveries", c_uint64),
        ("steals", c_uint64),
        ("expired", c_uint64),
        ("agents_dead", c_uint64),
        ("ledger_errors", c_uint64),
        ("agents", c_uint64),
    ]


class emf_sched_agent_load_t(Structure):
    """``emf_sched_agent_load_t``: one agent's load as the scheduler counts it."""

    _fields_ = [
        ("current_tasks", c_uint32),
        ("backlog", c_uint32),
        ("max_tasks", c_uint32),
        ("latency_us", c_uint64),
        ("last_heartbeat_us", c_uint64),
    ]


class emf_sched_t(Structure):
    """Opaque ``emf_sched_t``; only pointers to it are used."""


class emf_pool_options_t(Structure):
    """``emf_pool_options_t``: a pool manager's options; fill it with
    ``emf_pool_options_default`` first."""

    _fields_ = [
        ("min_size", c_uint32),
        ("max_size", c_uint32),
        ("max_starting", c_uint32),
        ("idle_timeout_us", c_uint64),
        ("warmup_delay_us", c_uint64),
        ("start_timeout_us", c_uint64),
        ("max_backoff_us", c_uint64),
    ]


class emf_pool_stats_t(Structure):
    """``emf_pool_stats_t``: a pool manager's counters."""

    _fields_ = [
        ("live", c_uint32),
        ("starting", c_uint32),
        ("idle", c_uint32),
        ("busy", c_uint32),
        ("stopping", c_uint32),
        ("started_total", c_uint64),
        ("stopped_total", c_uint64),
        ("failed_starts", c_uint64),
        ("timed_out_starts", c_uint64),
        ("died", c_uint64),
        ("replaced", c_uint64),
    ]


class emf_pool_t(Structure):
    """Opaque ``emf_pool_t``; only pointers to it are used."""


class emf_service_options_t(Structure):
    """``emf_service_options_t``: a service's options; fill it with
    ``emf_service_options_default`` first."""

    _fields_ = [
        ("sched", emf_sched_options_t),
        ("ledger", c_uint32),
        ("ledger_path", c_char_p),
        ("reports_capacity", c_size_t),
        ("load_slots", c_size_t),
        ("liveness_interval_us", c_uint64),
        ("batch", c_size_t),
    ]


class emf_service_stats_t(Structure):
    """``emf_service_stats_t``: a service's counters."""

    _fields_ = [
        ("sched", emf_sched_stats_t),
        ("inboxes", c_uint64),
        ("reports", c_uint64),
        ("bad_reports", c_uint64),
        ("pending_deliveries", c_uint64),
        ("deaths", c_uint64),
    ]


class emf_service_t(Structure):
    """Opaque ``emf_service_t``; only pointers to it are used."""


class emf_agent_t(Structure):
    """Opaque ``emf_agent_t``; only pointers to it are used."""


class emf_raft_client_options_t(Structure):
    """``emf_raft_client_options_t``: a Raft client's options; fill it with
    ``emf_raft_client_options_default`` first."""

    _fields_ = [("timeout_ms", c_uint32), ("attempt_timeout_ms", c_uint32)]


class emf_raft_cluster_options_t(Structure):
    """``emf_raft_cluster_options_t``: a local Raft cluster's options; fill it with
    ``emf_raft_cluster_options_default`` first."""

    _fields_ = [
        ("bin", c_char_p),
        ("memory", c_uint32),
        ("election_tick", c_uint32),
        ("tick_ms", c_uint64),
        ("start_timeout_ms", c_uint32),
        ("client", emf_raft_client_options_t),
    ]


class emf_pbft_group_options_t(Structure):
    """``emf_pbft_group_options_t``: a local PBFT group's options; fill it with
    ``emf_pbft_group_options_default`` first."""

    _fields_ = [
        ("n", c_uint32),
        ("ed25519", c_uint32),
        ("accept_tentative", c_uint32),
        ("batch_window_us", c_uint64),
        ("view_change_timeout_ms", c_uint32),
        ("retransmit_ms", c_uint32),
        ("timeout_ms", c_uint32),
    ]


class emf_raft_status_t(Structure):
    """``emf_raft_status_t``: one Raft node's status."""

    _fields_ = [
        ("id", c_uint64),
        ("leader", c_uint64),
        ("term", c_uint64),
        ("commit", c_uint64),
        ("applied", c_uint64),
        ("voters", c_uint64),
    ]


#: ``emf_raft_emit_fn``: ``int (*)(void *emit_ctx, const uint8_t *data, size_t len)``, the
#: library's function a state-machine callback writes its result with.
emf_raft_emit_fn = ctypes.CFUNCTYPE(c_int, c_void_p, c_char_p, c_size_t)

#: ``emf_raft_sm_t.apply``.
emf_raft_apply_fn = ctypes.CFUNCTYPE(
    c_int, c_void_p, c_uint64, c_void_p, c_size_t, emf_raft_emit_fn, c_void_p
)
#: ``emf_raft_sm_t.snapshot``.
emf_raft_snapshot_fn = ctypes.CFUNCTYPE(c_int, c_void_p, emf_raft_emit_fn, c_void_p)
#: ``emf_raft_sm_t.restore``.
emf_raft_restore_fn = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
#: ``emf_raft_sm_t.query``.
emf_raft_query_fn = ctypes.CFUNCTYPE(
    c_int, c_void_p, c_void_p, c_size_t, emf_raft_emit_fn, c_void_p
)


class emf_raft_sm_t(Structure):
    """``emf_raft_sm_t``: a host's replicated state machine (callbacks on the node's thread)."""

    _fields_ = [
        ("apply", emf_raft_apply_fn),
        ("snapshot", emf_raft_snapshot_fn),
        ("restore", emf_raft_restore_fn),
        ("query", emf_raft_query_fn),
    ]


class emf_raft_node_options_t(Structure):
    """``emf_raft_node_options_t``: an in-process node's options; fill it with
    ``emf_raft_node_options_default`` first."""

    _fields_ = [
        ("id", c_uint64),
        ("voters", POINTER(c_uint64)),
        ("n_voters", c_size_t),
        ("data_dir", c_char_p),
        ("ring_dir", c_char_p),
        ("inbox_capacity", c_size_t),
        ("clients", POINTER(c_uint64)),
        ("n_clients", c_size_t),
        ("tick_ms", c_uint64),
        ("election_tick", c_uint32),
        ("heartbeat_tick", c_uint32),
        ("snapshot_entries", c_uint64),
    ]


class emf_raft_node_info_t(Structure):
    """``emf_raft_node_info_t``: an in-process node's view as of its latest round."""

    _fields_ = [
        ("id", c_uint64),
        ("leader", c_uint64),
        ("term", c_uint64),
        ("commit", c_uint64),
        ("applied", c_uint64),
        ("running", c_uint32),
    ]


class emf_raft_request_t(Structure):
    """``emf_raft_request_t``: a remote node's request to its host
    (``emf_raft_node_next_request``)."""

    _fields_ = [
        ("id", c_uint64),
        ("kind", c_uint32),
        ("index", c_uint64),
    ]


class emf_raft_node_t(Structure):
    """Opaque ``emf_raft_node_t``; only pointers to it are used."""


class emf_raft_member_change_t(Structure):
    """``emf_raft_member_change_t``: one membership change."""

    _fields_ = [
        ("node", c_uint64),
        ("kind", c_uint32),
    ]


class emf_gossip_options_t(Structure):
    """``emf_gossip_options_t``: a gossip member's options; fill it with
    ``emf_gossip_options_default`` first."""

    _fields_ = [
        ("id", c_uint64),
        ("ring_dir", c_char_p),
        ("inbox_capacity", c_size_t),
        ("listen", c_char_p),
        ("peers", POINTER(c_uint64)),
        ("n_peers", c_size_t),
        ("peer_addrs", POINTER(c_char_p)),
        ("seeds", POINTER(c_uint64)),
        ("n_seeds", c_size_t),
        ("gossip_interval_us", c_uint64),
        ("anti_entropy_interval_us", c_uint64),
        ("max_fan_out", c_uint32),
        ("probe_period_us", c_uint64),
        ("suspicion_timeout_us", c_uint64),
        ("generation", c_uint64),
        ("seed", c_uint64),
    ]


class emf_gossip_member_t(Structure):
    """``emf_gossip_member_t``: a member as this one sees it."""

    _fields_ = [
        ("id", c_uint64),
        ("generation", c_uint64),
        ("incarnation", c_uint32),
        ("state", c_uint32),
    ]


class emf_gossip_event_t(Structure):
    """``emf_gossip_event_t``: an event of a member's subscription (``key`` and ``value``
    owned by the caller)."""

    _fields_ = [
        ("kind", c_uint32),
        ("deleted", c_uint32),
        ("member", c_uint64),
        ("generation", c_uint64),
        ("version_counter", c_uint64),
        ("version_origin", c_uint64),
        ("key", emf_buf_t),
        ("value", emf_buf_t),
    ]


class emf_gossip_stats_t(Structure):
    """``emf_gossip_stats_t``: a gossip member's counters."""

    _fields_ = [
        (name, c_uint64)
        for name in (
            "frames_in",
            "frames_out",
            "rejected",
            "dropped_full",
            "send_failed",
            "events_dropped",
            "rounds",
            "anti_entropy",
            "pushes",
            "pulls",
            "local_writes",
            "remote_applied",
            "probes",
            "failed_probes",
            "refutations",
        )
    ]


class emf_gossip_t(Structure):
    """Opaque ``emf_gossip_t``; only pointers to it are used."""


class emf_pbft_group_t(Structure):
    """Opaque ``emf_pbft_group_t``; only pointers to it are used."""


class emf_raft_cluster_t(Structure):
    """Opaque ``emf_raft_cluster_t``; only pointers to it are used."""


class emf_raft_client_t(Structure):
    """Opaque ``emf_raft_client_t``; only pointers to it are used."""


emf_ring_p = POINTER(emf_ring_t)
emf_task_queue_p = POINTER(emf_task_queue_t)
emf_cache_p = POINTER(emf_cache_t)
emf_hnsw_p = POINTER(emf_hnsw_t)
emf_sched_p = POINTER(emf_sched_t)
emf_pool_p = POINTER(emf_pool_t)
emf_service_p = POINTER(emf_service_t)
emf_agent_p = POINTER(emf_agent_t)
emf_raft_cluster_p = POINTER(emf_raft_cluster_t)
emf_pbft_group_p = POINTER(emf_pbft_group_t)
emf_raft_client_p = POINTER(emf_raft_client_t)
emf_raft_node_p = POINTER(emf_raft_node_t)
emf_gossip_p = POINTER(emf_gossip_t)
emf_router_p = POINTER(emf_router_t)
emf_batch_p = POINTER(emf_batch_t)
emf_state_store_p = POINTER(emf_state_store_t)
emf_state_value_p = POINTER(emf_state_value_t)
emf_producer_p = POINTER(emf_producer_t)
emf_consumer_p = POINTER(emf_consumer_t)

#: ``emf_frame_fn``: ``int (*)(void *ctx, const uint8_t *data, size_t len)``. Return 0 to go
#: on, anything else to stop the poll after this frame (which counts as consumed). A Python
#: callback must return an int and must not raise: for None or an exception ctypes prints the
#: error and hands the library an undefined value (often non-zero), so catch everything and
#: return 1 to stop.
emf_frame_fn = ctypes.CFUNCTYPE(c_int, c_void_p, POINTER(c_uint8), c_size_t)

# Byte inputs (`const uint8_t *`) are declared as c_char_p: ctypes then passes a `bytes`
# object's own buffer (no copy), a c_char array made with `from_buffer` over a bytearray or
# writable memoryview (no copy), or None for NULL.
_bytes_in = c_char_p

#: name -> (restype, argtypes) for every function the header exports.
PROTOTYPES = {
    "emf_abi_version": (c_uint32, []),
    "emf_version_string": (c_char_p, []),
    "emf_status_name": (c_char_p, [emf_status_t]),
    "emf_last_error_message": (emf_status_t, [c_char_p, c_size_t, POINTER(c_size_t)]),
    "emf_buf_free": (emf_status_t, [POINTER(emf_buf_t)]),
    "emf_json_to_archive": (
        emf_status_t,
        [_bytes_in, c_size_t, POINTER(emf_encode_options_t), POINTER(emf_buf_t)],
    ),
    "emf_json_to_archive_ex": (
        emf_status_t,
        [_bytes_in, c_size_t, POINTER(emf_encode_options_t), c_uint32, POINTER(emf_buf_t)],
    ),
    "emf_archive_to_json": (emf_status_t, [_bytes_in, c_size_t, POINTER(emf_buf_t)]),
    "emf_value_builder_new": (emf_status_t, [c_uint32, POINTER(emf_value_builder_p)]),
    "emf_value_builder_free": (emf_status_t, [emf_value_builder_p]),
    "emf_value_builder_push": (
        emf_status_t,
        [emf_value_builder_p, POINTER(emf_value_event_t), c_size_t],
    ),
    "emf_value_builder_finish": (
        emf_status_t,
        [emf_value_builder_p, POINTER(emf_encode_options_t), c_uint32, POINTER(emf_buf_t)],
    ),
    "emf_archive_visit": (
        emf_status_t,
        [_bytes_in, c_size_t, POINTER(emf_value_visitor_t), c_void_p],
    ),
    "emf_archive_validate": (emf_status_t, [_bytes_in, c_size_t, POINTER(c_size_t)]),
    "emf_message_open": (emf_status_t, [_bytes_in, c_size_t, POINTER(emf_message_p)]),
    "emf_message_free": (emf_status_t, [emf_message_p]),
    "emf_message_count": (emf_status_t, [emf_message_p, POINTER(c_size_t)]),
    "emf_message_envelope": (
        emf_status_t,
        [emf_message_p, c_size_t, POINTER(emf_envelope_info_t)],
    ),
    "emf_message_id_json": (emf_status_t, [emf_message_p, c_size_t, POINTER(emf_buf_t)]),
    "emf_kind_name": (c_char_p, [c_uint32]),
    "emf_priority_name": (c_char_p, [c_uint32]),
    "emf_message_to_json": (emf_status_t, [emf_message_p, POINTER(emf_buf_t)]),
    "emf_message_payload_json": (
        emf_status_t,
        [emf_message_p, c_size_t, POINTER(emf_buf_t)],
    ),
    "emf_compress_if_needed": (
        emf_status_t,
        [_bytes_in, c_size_t, c_size_t, POINTER(emf_buf_t), POINTER(c_bool)],
    ),
    "emf_decompress": (emf_status_t, [_bytes_in, c_size_t, c_size_t, POINTER(emf_buf_t)]),
    # Rings. Output byte buffers (`uint8_t *buf`) are c_void_p: an address (int), a ctypes
    # array, or None for NULL.
    "emf_ring_options_default": (emf_status_t, [POINTER(emf_ring_options_t)]),
    "emf_ring_create": (
        emf_status_t,
        [c_char_p, POINTER(emf_ring_options_t), POINTER(emf_ring_p)],
    ),
    "emf_ring_open": (emf_status_t, [c_char_p, c_char_p, POINTER(emf_ring_p)]),
    "emf_ring_free": (emf_status_t, [emf_ring_p]),
    "emf_ring_unlink": (emf_status_t, [emf_ring_p]),
    "emf_ring_close": (emf_status_t, [emf_ring_p]),
    "emf_ring_max_payload": (emf_status_t, [emf_ring_p, POINTER(c_size_t)]),
    "emf_ring_stats": (emf_status_t, [emf_ring_p, POINTER(emf_ring_stats_t)]),
    "emf_producer_new": (emf_status_t, [emf_ring_p, POINTER(emf_producer_p)]),
    "emf_producer_new_in_slot": (
        emf_status_t,
        [emf_ring_p, c_uint32, POINTER(emf_producer_p)],
    ),
    "emf_producer_committed": (
        emf_status_t,
        [emf_producer_p, POINTER(c_uint64), POINTER(c_uint32)],
    ),
    "emf_producer_free": (emf_status_t, [emf_producer_p]),
    "emf_producer_send": (emf_status_t, [emf_producer_p, _bytes_in, c_size_t]),
    "emf_producer_send_timeout": (
        emf_status_t,
        [emf_producer_p, _bytes_in, c_size_t, c_uint32, c_uint32],
    ),
    "emf_producer_send_batch": (
        emf_status_t,
        [emf_producer_p, POINTER(emf_slice_t), c_size_t, POINTER(c_size_t)],
    ),
    "emf_producer_claim": (
        emf_status_t,
        [emf_producer_p, c_size_t, POINTER(POINTER(c_uint8))],
    ),
    "emf_producer_commit": (emf_status_t, [emf_producer_p, c_size_t]),
    "emf_producer_abort": (emf_status_t, [emf_producer_p]),
    "emf_consumer_new": (emf_status_t, [emf_ring_p, POINTER(emf_consumer_p)]),
    "emf_consumer_subscribe": (emf_status_t, [emf_ring_p, POINTER(emf_consumer_p)]),
    "emf_consumer_free": (emf_status_t, [emf_consumer_p]),
    "emf_consumer_poll": (
        emf_status_t,
        [emf_consumer_p, c_size_t, emf_frame_fn, c_void_p, POINTER(c_size_t)],
    ),
    "emf_consumer_recv": (
        emf_status_t,
        [emf_consumer_p, c_void_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_consumer_recv_batch": (
        emf_status_t,
        [emf_consumer_p, c_void_p, c_size_t, c_size_t, POINTER(c_size_t), POINTER(c_size_t)],
    ),
    "emf_consumer_wait": (
        emf_status_t,
        [emf_consumer_p, c_uint32, c_uint32, POINTER(c_bool)],
    ),
    "emf_consumer_set_ack_mode": (emf_status_t, [emf_consumer_p, c_uint32]),
    "emf_consumer_ack": (emf_status_t, [emf_consumer_p]),
    "emf_consumer_rewind": (emf_status_t, [emf_consumer_p, POINTER(c_uint64)]),
    "emf_consumer_unacked": (emf_status_t, [emf_consumer_p, POINTER(c_uint64)]),
    "emf_consumer_lag": (emf_status_t, [emf_consumer_p, POINTER(c_uint64)]),
    # Router, batch processor and shared state (wrapped in erlmcp_flow.flow).
    "emf_router_new": (emf_status_t, [c_char_p, c_size_t, POINTER(emf_router_p)]),
    "emf_router_free": (emf_status_t, [emf_router_p]),
    "emf_router_register_agent": (
        emf_status_t,
        [emf_router_p, c_char_p, POINTER(emf_consumer_p)],
    ),
    "emf_router_unregister_agent": (emf_status_t, [emf_router_p, c_char_p]),
    "emf_router_send_direct": (emf_status_t, [emf_router_p, c_char_p, _bytes_in, c_size_t]),
    "emf_router_send_batch": (
        emf_status_t,
        [emf_router_p, c_char_p, POINTER(emf_slice_t), c_size_t, POINTER(c_size_t)],
    ),
    "emf_batch_new": (
        emf_status_t,
        [emf_ring_p, c_size_t, c_uint32, c_size_t, POINTER(emf_batch_p)],
    ),
    "emf_batch_free": (emf_status_t, [emf_batch_p]),
    "emf_batch_discard": (emf_status_t, [emf_batch_p, POINTER(c_size_t)]),
    "emf_batch_send": (emf_status_t, [emf_batch_p, _bytes_in, c_size_t, POINTER(c_uint32)]),
    "emf_batch_tick": (emf_status_t, [emf_batch_p, POINTER(c_uint32)]),
    "emf_batch_flush": (emf_status_t, [emf_batch_p, POINTER(c_size_t)]),
    "emf_batch_pending": (emf_status_t, [emf_batch_p, POINTER(c_size_t), POINTER(c_int64)]),
    "emf_state_open": (emf_status_t, [c_char_p, c_char_p, POINTER(emf_state_store_p)]),
    "emf_state_free": (emf_status_t, [emf_state_store_p]),
    "emf_state_share": (
        emf_status_t,
        [emf_state_store_p, c_char_p, _bytes_in, c_size_t, POINTER(c_uint64)],
    ),
    "emf_state_lookup": (emf_status_t, [emf_state_store_p, c_char_p, POINTER(c_uint64)]),
    "emf_state_read": (
        emf_status_t,
        [emf_state_store_p, c_uint64, POINTER(emf_state_value_p)],
    ),
    "emf_state_value_data": (
        emf_status_t,
        [emf_state_value_p, POINTER(POINTER(c_uint8)), POINTER(c_size_t)],
    ),
    "emf_state_value_free": (emf_status_t, [emf_state_value_p]),
    "emf_state_release": (emf_status_t, [emf_state_store_p, c_uint64]),
    # Task queue and LRU cache (wrapped in erlmcp_flow.queue).
    "emf_task_queue_new": (
        emf_status_t,
        [c_size_t, c_size_t, c_uint32, POINTER(emf_task_queue_p)],
    ),
    "emf_task_queue_free": (emf_status_t, [emf_task_queue_p]),
    "emf_task_queue_enqueue": (
        emf_status_t,
        [
            emf_task_queue_p,
            _bytes_in,
            c_size_t,
            c_uint32,
            POINTER(c_uint32),
            POINTER(emf_buf_t),
            POINTER(c_uint32),
        ],
    ),
    "emf_task_queue_dequeue": (
        emf_status_t,
        [emf_task_queue_p, POINTER(emf_buf_t), POINTER(c_uint32)],
    ),
    "emf_task_queue_stats": (
        emf_status_t,
        [emf_task_queue_p, POINTER(emf_task_queue_stats_t)],
    ),
    "emf_cache_new": (emf_status_t, [c_size_t, c_uint64, c_uint32, POINTER(emf_cache_p)]),
    "emf_cache_free": (emf_status_t, [emf_cache_p]),
    "emf_cache_put": (
        emf_status_t,
        [emf_cache_p, _bytes_in, c_size_t, _bytes_in, c_size_t],
    ),
    "emf_cache_get": (emf_status_t, [emf_cache_p, _bytes_in, c_size_t, POINTER(emf_buf_t)]),
    "emf_cache_get_into": (
        emf_status_t,
        [emf_cache_p, _bytes_in, c_size_t, c_void_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_cache_remove": (emf_status_t, [emf_cache_p, _bytes_in, c_size_t]),
    "emf_cache_sweep": (emf_status_t, [emf_cache_p, POINTER(c_size_t)]),
    "emf_cache_set_sweeper": (emf_status_t, [emf_cache_p, c_uint32]),
    "emf_cache_stats": (emf_status_t, [emf_cache_p, POINTER(emf_cache_stats_t)]),
    # Vector kernels and the HNSW index (wrapped in erlmcp_flow.vector). Typed arrays
    # (`const float *`, `const uint16_t *`, `int8_t *`, `const uint64_t *`,
    # `emf_hnsw_hit_t *`, `size_t *out_counts`) are c_void_p: an address (an int such as a
    # NumPy array's `arr.ctypes.data`, passed without a copy), a ctypes array, or None for
    # NULL. The library checks NULL, the length cap and the element's alignment.
    "emf_quantize_f32": (emf_status_t, [c_void_p, c_size_t, c_void_p, POINTER(c_float)]),
    "emf_dequantize_i8": (emf_status_t, [c_void_p, c_size_t, c_float, c_void_p]),
    "emf_distance_f32": (
        emf_status_t,
        [c_uint32, c_void_p, c_void_p, c_size_t, POINTER(c_double)],
    ),
    "emf_distance_f16": (
        emf_status_t,
        [c_uint32, c_void_p, c_void_p, c_size_t, POINTER(c_double)],
    ),
    "emf_cosine_distance_i8": (
        emf_status_t,
        [c_void_p, c_void_p, c_size_t, POINTER(c_double)],
    ),
    "emf_dot_i8": (emf_status_t, [c_void_p, c_void_p, c_size_t, POINTER(c_int64)]),
    "emf_hnsw_params_default": (emf_status_t, [c_uint32, POINTER(emf_hnsw_params_t)]),
    "emf_hnsw_new": (emf_status_t, [POINTER(emf_hnsw_params_t), POINTER(emf_hnsw_p)]),
    "emf_hnsw_open": (emf_status_t, [c_char_p, POINTER(emf_hnsw_p)]),
    "emf_hnsw_load": (emf_status_t, [c_char_p, POINTER(emf_hnsw_p)]),
    "emf_hnsw_free": (emf_status_t, [emf_hnsw_p]),
    "emf_hnsw_params": (emf_status_t, [emf_hnsw_p, POINTER(emf_hnsw_params_t)]),
    "emf_hnsw_insert": (emf_status_t, [emf_hnsw_p, c_uint64, c_void_p, c_size_t]),
    "emf_hnsw_try_insert": (emf_status_t, [emf_hnsw_p, c_uint64, c_void_p, c_size_t]),
    "emf_hnsw_insert_new": (
        emf_status_t,
        [emf_hnsw_p, c_void_p, c_size_t, POINTER(c_uint64)],
    ),
    "emf_hnsw_try_insert_new": (
        emf_status_t,
        [emf_hnsw_p, c_void_p, c_size_t, POINTER(c_uint64)],
    ),
    "emf_hnsw_insert_batch": (
        emf_status_t,
        [emf_hnsw_p, c_void_p, c_size_t, c_void_p, c_size_t, c_uint32],
    ),
    "emf_hnsw_search": (
        emf_status_t,
        [
            emf_hnsw_p,
            c_void_p,  # query
            c_size_t,  # dim
            c_size_t,  # k
            c_size_t,  # ef
            c_uint32,  # flags
            c_void_p,  # filter
            c_size_t,  # filter_words
            c_void_p,  # out_hits
            POINTER(c_size_t),  # out_count
        ],
    ),
    "emf_hnsw_try_search": (
        emf_status_t,
        [
            emf_hnsw_p,
            c_void_p,  # query
            c_size_t,  # dim
            c_size_t,  # k
            c_size_t,  # ef
            c_uint32,  # flags
            c_void_p,  # filter
            c_size_t,  # filter_words
            c_void_p,  # out_hits
            POINTER(c_size_t),  # out_count
        ],
    ),
    "emf_hnsw_search_batch": (
        emf_status_t,
        [
            emf_hnsw_p,
            c_void_p,  # queries
            c_size_t,  # nq
            c_size_t,  # dim
            c_size_t,  # k
            c_size_t,  # ef
            c_uint32,  # flags
            c_void_p,  # filter
            c_size_t,  # filter_words
            c_uint32,  # threads
            c_void_p,  # out_hits
            c_void_p,  # out_counts
        ],
    ),
    "emf_hnsw_remove": (emf_status_t, [emf_hnsw_p, c_uint64]),
    "emf_hnsw_try_remove": (emf_status_t, [emf_hnsw_p, c_uint64]),
    "emf_hnsw_compact": (emf_status_t, [emf_hnsw_p]),
    "emf_hnsw_try_compact": (emf_status_t, [emf_hnsw_p]),
    "emf_hnsw_save": (emf_status_t, [emf_hnsw_p, c_char_p]),
    "emf_hnsw_stats": (emf_status_t, [emf_hnsw_p, POINTER(c_size_t), POINTER(c_size_t)]),
    "emf_hnsw_try_stats": (emf_status_t, [emf_hnsw_p, POINTER(c_size_t), POINTER(c_size_t)]),
    # The scheduler (wrapped in erlmcp_flow.sched). Names are C strings (c_char_p).
    "emf_sched_options_default": (emf_status_t, [POINTER(emf_sched_options_t)]),
    "emf_sched_new": (
        emf_status_t,
        [
            POINTER(emf_sched_options_t),
            c_uint32,  # ledger
            c_char_p,  # ledger_name
            c_char_p,  # ledger_dir
            c_uint64,  # now_us
            POINTER(emf_sched_p),
        ],
    ),
    "emf_sched_free": (emf_status_t, [emf_sched_p]),
    "emf_sched_register_agent": (
        emf_status_t,
        [emf_sched_p, c_char_p, c_char_p, c_uint32, c_uint32, c_uint64, c_uint64],
    ),
    "emf_sched_unregister_agent": (emf_status_t, [emf_sched_p, c_char_p, c_uint64]),
    "emf_sched_heartbeat": (emf_status_t, [emf_sched_p, c_char_p, c_uint64]),
    "emf_sched_agent_dead": (emf_status_t, [emf_sched_p, c_char_p, c_uint64]),
    "emf_gossip_options_default": (emf_status_t, [POINTER(emf_gossip_options_t)]),
    "emf_gossip_start": (
        emf_status_t,
        [POINTER(emf_gossip_options_t), POINTER(emf_gossip_p)],
    ),
    "emf_gossip_free": (emf_status_t, [emf_gossip_p]),
    "emf_gossip_port": (emf_status_t, [emf_gossip_p, POINTER(c_uint16)]),
    "emf_gossip_put": (
        emf_status_t,
        [emf_gossip_p, _bytes_in, c_size_t, _bytes_in, c_size_t, POINTER(c_uint64)],
    ),
    "emf_gossip_get": (emf_status_t, [emf_gossip_p, _bytes_in, c_size_t, POINTER(emf_buf_t)]),
    "emf_gossip_delete": (
        emf_status_t,
        [emf_gossip_p, _bytes_in, c_size_t, POINTER(c_uint32)],
    ),
    "emf_gossip_members": (
        emf_status_t,
        [emf_gossip_p, POINTER(emf_gossip_member_t), c_size_t, POINTER(c_size_t)],
    ),
    "emf_gossip_round": (emf_status_t, [emf_gossip_p, POINTER(c_uint64)]),
    "emf_gossip_leave": (emf_status_t, [emf_gossip_p]),
    "emf_gossip_next_event": (
        emf_status_t,
        [emf_gossip_p, c_uint64, POINTER(emf_gossip_event_t)],
    ),
    "emf_gossip_stats": (emf_status_t, [emf_gossip_p, POINTER(emf_gossip_stats_t)]),
    "emf_sched_set_agent_host": (emf_status_t, [emf_sched_p, c_char_p, c_uint64]),
    "emf_sched_host_down": (
        emf_status_t,
        [emf_sched_p, c_uint64, c_uint64, POINTER(c_size_t)],
    ),
    "emf_sched_submit": (
        emf_status_t,
        [emf_sched_p, c_char_p, c_uint32, _bytes_in, c_size_t, c_uint64, POINTER(c_uint64)],
    ),
    "emf_sched_started": (
        emf_status_t,
        [emf_sched_p, c_char_p, c_uint64, c_uint32, c_uint64, POINTER(c_int)],
    ),
    "emf_sched_ack": (
        emf_status_t,
        [
            emf_sched_p,
            c_char_p,  # agent
            c_uint64,  # task
            c_uint32,  # attempt
            _bytes_in,  # result
            c_size_t,
            c_uint64,  # now_us
            POINTER(c_int),  # out_duplicate
        ],
    ),
    "emf_sched_nack": (
        emf_status_t,
        [emf_sched_p, c_char_p, c_uint64, c_uint32, c_char_p, c_uint64, POINTER(c_int)],
    ),
    "emf_sched_tick": (emf_status_t, [emf_sched_p, c_uint64]),
    "emf_sched_poll_action": (emf_status_t, [emf_sched_p, POINTER(emf_sched_action_t)]),
    "emf_sched_select_agent": (
        emf_status_t,
        [emf_sched_p, c_char_p, c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_sched_stats": (emf_status_t, [emf_sched_p, POINTER(emf_sched_stats_t)]),
    "emf_sched_observe_lag": (emf_status_t, [emf_sched_p, c_char_p, c_uint64, c_uint64]),
    "emf_sched_breaker_state": (emf_status_t, [emf_sched_p, c_char_p, POINTER(c_uint32)]),
    "emf_sched_dead_letter_count": (emf_status_t, [emf_sched_p, POINTER(c_size_t)]),
    "emf_sched_dead_letter_get": (
        emf_status_t,
        [
            emf_sched_p,
            c_size_t,
            POINTER(c_uint64),
            c_char_p,
            c_size_t,
            POINTER(c_size_t),
            c_char_p,
            c_size_t,
            POINTER(c_size_t),
            POINTER(c_int),
        ],
    ),
    "emf_sched_agent_load": (
        emf_status_t,
        [emf_sched_p, c_char_p, POINTER(emf_sched_agent_load_t)],
    ),
    "emf_sched_queued": (emf_status_t, [emf_sched_p, c_char_p, POINTER(c_size_t)]),
    # The pool manager (wrapped in erlmcp_flow.pool).
    "emf_pool_options_default": (emf_status_t, [POINTER(emf_pool_options_t)]),
    "emf_pool_new": (
        emf_status_t,
        [POINTER(emf_pool_options_t), c_char_p, POINTER(emf_pool_p)],
    ),
    "emf_pool_free": (emf_status_t, [emf_pool_p]),
    "emf_pool_ensure_min": (emf_status_t, [emf_pool_p, c_uint64]),
    "emf_pool_started": (emf_status_t, [emf_pool_p, c_uint64, c_char_p, c_uint64]),
    "emf_pool_start_failed": (emf_status_t, [emf_pool_p, c_uint64, c_char_p, c_uint64]),
    "emf_pool_agent_gone": (emf_status_t, [emf_pool_p, c_char_p, c_uint64]),
    "emf_pool_observe": (emf_status_t, [emf_pool_p, c_char_p, c_uint32, c_uint64]),
    "emf_pool_demand": (emf_status_t, [emf_pool_p, c_size_t, c_uint64]),
    "emf_pool_tick": (emf_status_t, [emf_pool_p, c_uint64]),
    "emf_pool_poll_action": (
        emf_status_t,
        [
            emf_pool_p,
            POINTER(c_uint32),
            POINTER(c_uint64),
            c_char_p,
            c_size_t,
            POINTER(c_size_t),
        ],
    ),
    "emf_pool_next_deadline": (emf_status_t, [emf_pool_p, POINTER(c_uint64)]),
    "emf_pool_stats": (emf_status_t, [emf_pool_p, POINTER(emf_pool_stats_t)]),
    # The scheduler's runtime (wrapped in erlmcp_flow.sched.Service and erlmcp_flow.agent).
    # Output byte buffers are c_char_p (ctypes.create_string_buffer).
    "emf_service_options_default": (emf_status_t, [POINTER(emf_service_options_t)]),
    "emf_service_start": (
        emf_status_t,
        [POINTER(emf_service_options_t), c_char_p, POINTER(emf_service_p)],
    ),
    "emf_service_free": (emf_status_t, [emf_service_p]),
    "emf_service_submit": (
        emf_status_t,
        [emf_service_p, c_char_p, c_uint32, _bytes_in, c_size_t, POINTER(c_uint64)],
    ),
    "emf_service_wait": (
        emf_status_t,
        [
            emf_service_p,
            c_uint64,  # task_id
            c_uint32,  # timeout_ms
            POINTER(c_uint32),  # out_status_kind
            c_char_p,  # buf
            c_size_t,  # cap
            POINTER(c_size_t),  # out_len
        ],
    ),
    "emf_service_take_orphan": (
        emf_status_t,
        [
            emf_service_p,
            POINTER(c_uint64),
            POINTER(c_uint32),
            c_char_p,
            c_size_t,
            POINTER(c_size_t),
        ],
    ),
    "emf_service_stats": (emf_status_t, [emf_service_p, POINTER(emf_service_stats_t)]),
    "emf_service_lookup_agent": (
        emf_status_t,
        [
            emf_service_p,
            c_char_p,
            c_char_p,
            c_size_t,
            POINTER(c_size_t),
            POINTER(c_uint32),
            POINTER(c_uint32),
        ],
    ),
    "emf_agent_connect": (
        emf_status_t,
        [c_char_p, c_char_p, c_char_p, c_uint32, POINTER(emf_agent_p)],
    ),
    "emf_agent_free": (emf_status_t, [emf_agent_p]),
    "emf_agent_recv": (
        emf_status_t,
        [
            emf_agent_p,
            c_uint32,  # timeout_ms
            POINTER(c_uint64),  # out_task_id
            POINTER(c_uint32),  # out_attempt
            c_char_p,  # buf
            c_size_t,  # cap
            POINTER(c_size_t),  # out_len
        ],
    ),
    "emf_agent_complete": (emf_status_t, [emf_agent_p, c_uint64, c_uint32, _bytes_in, c_size_t]),
    "emf_agent_fail": (emf_status_t, [emf_agent_p, c_uint64, c_uint32, c_char_p]),
    "emf_agent_heartbeat": (emf_status_t, [emf_agent_p]),
    "emf_agent_held": (emf_status_t, [emf_agent_p, POINTER(c_size_t)]),
    "emf_pbft_group_options_default": (emf_status_t, [POINTER(emf_pbft_group_options_t)]),
    "emf_pbft_group_start": (
        emf_status_t,
        [c_char_p, POINTER(emf_pbft_group_options_t), POINTER(emf_pbft_group_p)],
    ),
    "emf_pbft_group_execute": (
        emf_status_t,
        [emf_pbft_group_p, _bytes_in, c_size_t, POINTER(emf_buf_t), POINTER(c_uint32)],
    ),
    "emf_pbft_group_stop_replica": (emf_status_t, [emf_pbft_group_p, c_uint32]),
    "emf_pbft_group_view": (emf_status_t, [emf_pbft_group_p, POINTER(c_uint64)]),
    "emf_pbft_group_free": (emf_status_t, [emf_pbft_group_p]),
    "emf_raft_cluster_options_default": (
        emf_status_t,
        [POINTER(emf_raft_cluster_options_t)],
    ),
    "emf_raft_client_options_default": (
        emf_status_t,
        [POINTER(emf_raft_client_options_t)],
    ),
    "emf_raft_cluster_start": (
        emf_status_t,
        [c_uint32, c_char_p, POINTER(emf_raft_cluster_options_t), POINTER(emf_raft_cluster_p)],
    ),
    "emf_raft_cluster_free": (emf_status_t, [emf_raft_cluster_p]),
    "emf_raft_cluster_stop": (emf_status_t, [emf_raft_cluster_p]),
    "emf_raft_cluster_members": (
        emf_status_t,
        [emf_raft_cluster_p, POINTER(c_uint64), c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_cluster_kill": (emf_status_t, [emf_raft_cluster_p, c_uint64]),
    "emf_raft_cluster_restart": (emf_status_t, [emf_raft_cluster_p, c_uint64]),
    "emf_raft_client_connect": (
        emf_status_t,
        [
            c_char_p,
            POINTER(c_uint64),
            c_size_t,
            POINTER(emf_raft_client_options_t),
            POINTER(emf_raft_client_p),
        ],
    ),
    "emf_raft_client_free": (emf_status_t, [emf_raft_client_p]),
    "emf_raft_node_options_default": (emf_status_t, [POINTER(emf_raft_node_options_t)]),
    "emf_raft_node_start": (
        emf_status_t,
        [
            POINTER(emf_raft_node_options_t),
            POINTER(emf_raft_sm_t),
            c_void_p,
            POINTER(emf_raft_node_p),
        ],
    ),
    "emf_raft_node_stop": (emf_status_t, [emf_raft_node_p]),
    "emf_raft_node_info": (emf_status_t, [emf_raft_node_p, POINTER(emf_raft_node_info_t)]),
    "emf_raft_node_free": (emf_status_t, [emf_raft_node_p]),
    "emf_raft_node_start_remote": (
        emf_status_t,
        [POINTER(emf_raft_node_options_t), c_uint64, POINTER(emf_raft_node_p)],
    ),
    "emf_raft_node_next_request": (
        emf_status_t,
        [emf_raft_node_p, c_uint64, POINTER(emf_raft_request_t), c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_node_reply": (emf_status_t, [emf_raft_node_p, c_uint64, c_int, _bytes_in, c_size_t]),
    "emf_raft_cluster_submit": (
        emf_status_t,
        [emf_raft_cluster_p, _bytes_in, c_size_t, POINTER(c_uint64), c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_cluster_append_entry": (
        emf_status_t,
        [emf_raft_cluster_p, _bytes_in, c_size_t, POINTER(c_uint64)],
    ),
    "emf_raft_cluster_submit_many": (
        emf_status_t,
        [emf_raft_cluster_p, POINTER(emf_slice_t), c_size_t, c_uint32, POINTER(c_uint64), POINTER(emf_status_t)],
    ),
    "emf_raft_cluster_result": (
        emf_status_t,
        [emf_raft_cluster_p, c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_cluster_wait_committed": (
        emf_status_t,
        [emf_raft_cluster_p, c_uint64, c_uint32, POINTER(c_uint64)],
    ),
    "emf_raft_cluster_leader": (
        emf_status_t,
        [emf_raft_cluster_p, POINTER(c_uint64), POINTER(c_uint64)],
    ),
    "emf_raft_cluster_status": (
        emf_status_t,
        [emf_raft_cluster_p, c_uint64, POINTER(emf_raft_status_t)],
    ),
    "emf_raft_cluster_stats": (
        emf_status_t,
        [emf_raft_cluster_p, c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_cluster_set": (
        emf_status_t,
        [emf_raft_cluster_p, _bytes_in, c_size_t, _bytes_in, c_size_t, POINTER(c_uint64)],
    ),
    "emf_raft_cluster_get": (
        emf_status_t,
        [
            emf_raft_cluster_p,
            _bytes_in,  # key
            c_size_t,
            POINTER(c_uint64),  # out_index
            POINTER(c_uint32),  # out_found
            c_char_p,  # buf
            c_size_t,  # cap
            POINTER(c_size_t),  # out_len
        ],
    ),
    "emf_raft_cluster_cas": (
        emf_status_t,
        [
            emf_raft_cluster_p,
            _bytes_in,  # key
            c_size_t,
            POINTER(c_uint64),  # out_index
            c_uint32,  # has_expected
            _bytes_in,  # expected
            c_size_t,
            _bytes_in,  # new
            c_size_t,
            POINTER(c_uint32),  # out_swapped
            POINTER(c_uint32),  # out_had_previous
            c_char_p,  # buf
            c_size_t,  # cap
            POINTER(c_size_t),  # out_len
        ],
    ),
    "emf_raft_client_submit": (
        emf_status_t,
        [emf_raft_client_p, _bytes_in, c_size_t, POINTER(c_uint64), c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_client_append_entry": (
        emf_status_t,
        [emf_raft_client_p, _bytes_in, c_size_t, POINTER(c_uint64)],
    ),
    "emf_raft_client_submit_many": (
        emf_status_t,
        [emf_raft_client_p, POINTER(emf_slice_t), c_size_t, c_uint32, POINTER(c_uint64), POINTER(emf_status_t)],
    ),
    "emf_raft_client_result": (
        emf_status_t,
        [emf_raft_client_p, c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_client_wait_committed": (
        emf_status_t,
        [emf_raft_client_p, c_uint64, c_uint32, POINTER(c_uint64)],
    ),
    "emf_raft_client_leader": (
        emf_status_t,
        [emf_raft_client_p, POINTER(c_uint64), POINTER(c_uint64)],
    ),
    "emf_raft_client_status": (
        emf_status_t,
        [emf_raft_client_p, c_uint64, POINTER(emf_raft_status_t)],
    ),
    "emf_raft_client_stats": (
        emf_status_t,
        [emf_raft_client_p, c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_client_set": (
        emf_status_t,
        [emf_raft_client_p, _bytes_in, c_size_t, _bytes_in, c_size_t, POINTER(c_uint64)],
    ),
    "emf_raft_client_get": (
        emf_status_t,
        [
            emf_raft_client_p,
            _bytes_in,  # key
            c_size_t,
            POINTER(c_uint64),  # out_index
            POINTER(c_uint32),  # out_found
            c_char_p,  # buf
            c_size_t,  # cap
            POINTER(c_size_t),  # out_len
        ],
    ),
    "emf_raft_cluster_read": (
        emf_status_t,
        [emf_raft_cluster_p, _bytes_in, c_size_t, POINTER(c_uint64), c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_cluster_transfer_leader": (
        emf_status_t,
        [emf_raft_cluster_p, c_uint64, POINTER(c_uint64)],
    ),
    "emf_raft_cluster_change_membership": (
        emf_status_t,
        [emf_raft_cluster_p, POINTER(emf_raft_member_change_t), c_size_t, POINTER(c_uint64)],
    ),
    "emf_raft_cluster_membership": (
        emf_status_t,
        [
            emf_raft_cluster_p,
            POINTER(c_uint64),  # ids
            c_size_t,  # cap
            POINTER(c_size_t),  # out_voters
            POINTER(c_size_t),  # out_learners
            POINTER(c_uint32),  # out_joint
        ],
    ),
    "emf_raft_client_read": (
        emf_status_t,
        [emf_raft_client_p, _bytes_in, c_size_t, POINTER(c_uint64), c_char_p, c_size_t, POINTER(c_size_t)],
    ),
    "emf_raft_client_transfer_leader": (
        emf_status_t,
        [emf_raft_client_p, c_uint64, POINTER(c_uint64)],
    ),
    "emf_raft_client_change_membership": (
        emf_status_t,
        [emf_raft_client_p, POINTER(emf_raft_member_change_t), c_size_t, POINTER(c_uint64)],
    ),
    "emf_raft_client_membership": (
        emf_status_t,
        [
            emf_raft_client_p,
            POINTER(c_uint64),  # ids
            c_size_t,  # cap
            POINTER(c_size_t),  # out_voters
            POINTER(c_size_t),  # out_learners
            POINTER(c_uint32),  # out_joint
        ],
    ),
    "emf_raft_client_cas": (
        emf_status_t,
        [
            emf_raft_client_p,
            _bytes_in,  # key
            c_size_t,
            POINTER(c_uint64),  # out_index
            c_uint32,  # has_expected
            _bytes_in,  # expected
            c_size_t,
            _bytes_in,  # new
            c_size_t,
            POINTER(c_uint32),  # out_swapped
            POINTER(c_uint32),  # out_had_previous
            c_char_p,  # buf
            c_size_t,  # cap
            POINTER(c_size_t),  # out_len
        ],
    ),
}


# --- discovery and loading ----------------------------------------------------------------


def candidate_paths() -> list[tuple[str, Path]]:
    """The places searched when ``ERLMCP_FLOW_LIB`` is not set, in order, with a label."""
    package_dir = Path(__file__).resolve().parent
    places = [("package directory", package_dir / name) for name in BUNDLED_FILES]
    # An installed package may sit less than three levels deep (`pip install --target /opt`):
    # then there is no build tree to look at.
    if len(package_dir.parents) > 2:
        repo = package_dir.parents[2]
        places += [
            ("build tree (release)", repo / "target" / "release" / LIBRARY_FILE),
            ("build tree (debug)", repo / "target" / "debug" / LIBRARY_FILE),
        ]
    return places


def find_library() -> Path:
    """Returns the path of the library to load, following the discovery order above."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise LibraryNotFoundError(
                f"erlmcp_flow: {ENV_VAR}={explicit!r} does not name a file "
                f"(unset it to search the package directory and the build tree)"
            )
        return path
    looked = []
    for label, path in candidate_paths():
        if path.is_file():
            return path
        looked.append(f"  - {label}: {path}")
    raise LibraryNotFoundError(
        f"erlmcp_flow: cannot find {LIBRARY_FILE}. Looked in:\n"
        f"  - ${ENV_VAR}: not set\n" + "\n".join(looked) + "\n"
        f"Install the package with `pip install ./ffi/python` from the repository (it builds "
        f"and bundles the library), build it with `cargo build --release`, "
        f"or set {ENV_VAR} to its path."
    )


def check_abi_version(found: int, path: object = "the library") -> None:
    """Refuses (with :class:`AbiMismatchError`) a library of another ABI version."""
    if found != ABI_VERSION:
        raise AbiMismatchError(
            f"erlmcp_flow: {path} has C ABI version {found}, but this Python package was "
            f"written for ABI version {ABI_VERSION}; install the matching package or library"
        )


def declare(cdll: ctypes.CDLL) -> None:
    """Sets ``restype`` and ``argtypes`` of every exported function on ``cdll``."""
    for name, (restype, argtypes) in PROTOTYPES.items():
        try:
            fn = getattr(cdll, name)
        except AttributeError:
            raise LibraryNotFoundError(
                f"erlmcp_flow: {cdll._name} does not export {name}; is it an erlmcp-flow "
                f"library of ABI version {ABI_VERSION}?"
            ) from None
        fn.restype = restype
        fn.argtypes = argtypes


def load_library(path: os.PathLike | str | None = None) -> ctypes.CDLL:
    """Loads the library (found with :func:`find_library` when ``path`` is None), checks its
    ABI version, and declares every function."""
    path = Path(path) if path is not None else find_library()
    try:
        cdll = ctypes.CDLL(str(path))
    except OSError as e:
        raise LibraryNotFoundError(f"erlmcp_flow: cannot load {path}: {e}") from e
    # Declare only this one function before the check: the others may not match a library of
    # another ABI version.
    cdll.emf_abi_version.restype = c_uint32
    cdll.emf_abi_version.argtypes = []
    check_abi_version(cdll.emf_abi_version(), path)
    declare(cdll)
    cdll.path = path
    return cdll


#: The loaded library. Its ``path`` attribute says which file it is.
lib = load_library()

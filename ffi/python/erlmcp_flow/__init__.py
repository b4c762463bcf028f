"""Python binding of the erlmcp-flow engine, over its C ABI (``include/erlmcp_flow.h``).

A pure-``ctypes`` wrapper: every function calls one ``emf_*`` function of the native library;
the logic is in Rust.

>>> import erlmcp_flow as emf
>>> archive = emf.encode('{"jsonrpc":"2.0","id":1,"method":"tools/list"}')
>>> emf.decode(archive)
'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
>>> with emf.Message(archive) as m:
...     m.envelope(0).method
'tools/list'

Importing the package finds and loads the library (``ERLMCP_FLOW_LIB``, then the package
directory, then ``<repo>/target/release`` and ``<repo>/target/debug``) and checks its ABI
version. Both failures raise :class:`ImportError` subclasses: :class:`LibraryNotFoundError`
and :class:`AbiMismatchError`. Failing calls raise :class:`Error` (``.code``, ``.name``,
``.message``), or its subclasses :class:`Full`, :class:`Timeout`, :class:`Busy` and
:class:`NotFound`.

Shared-memory rings (:mod:`erlmcp_flow.ring`):

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     with emf.Ring.create("doc", capacity=1 << 16, dir=d) as ring:
...         with emf.Producer(ring) as p, emf.Consumer(ring) as c:
...             p.send_batch([b"a", b"b"]), c.recv_batch()
(2, [b'a', b'b'])

Routing to agents' inboxes, batching and shared state (:mod:`erlmcp_flow.flow`):
:class:`Router`, :class:`BatchProcessor`, :class:`StateStore` and :class:`SharedValue`.

A task queue with priorities and an LRU cache with a TTL (:mod:`erlmcp_flow.queue`):

>>> with emf.TaskQueue(max_primary=1, max_overflow=0) as q:
...     q.enqueue(b"a", "low"), q.enqueue(b"b", "high"), q.dequeue()
(Enqueued(status='ok', returned=None, returned_priority=None), Enqueued(status='rejected', returned=b'b', returned_priority='high'), (b'a', 'low'))
>>> with emf.Cache(capacity=100, ttl_ms=None) as c:
...     c.put(b"k", b"v"), c.get(b"k"), c.get(b"other")
(None, b'v', None)

Vector kernels and an HNSW index (:mod:`erlmcp_flow.vector`; needs NumPy, imported on first
use): :func:`quantize`, :func:`dequantize`, :func:`distance`, :func:`cosine_distance_quantized`,
:func:`dot_i8` and :class:`HnswIndex`.

A task scheduler with leases and a durable ledger (:mod:`erlmcp_flow.sched`):
:class:`Scheduler`, its actions (:class:`SchedAction`) and counters (:class:`SchedStats`).

A pool manager keeping pre-warmed agents of one type (:mod:`erlmcp_flow.pool`): :class:`Pool`,
its actions (:class:`PoolAction`) and counters (:class:`PoolStats`).

Its runtime over a scheduler directory shared by processes: :class:`Service` (the
dispatcher, with :class:`TaskFuture` s) and the agents of :mod:`erlmcp_flow.agent`
(``agent.run(handler, type=..., dir=...)``).

Replicated state over Raft (:mod:`erlmcp_flow.raft`): ``raft.Cluster.start(3)``, a local
cluster of node processes (``submit_operation``, ``wait_committed``, ``leader``, KV
``set``/``get``/``cas``, ``kill``/``restart``), ``raft.Client`` (a running cluster's), and
``raft.Node`` (this process as one node, running a Python state machine).

Membership and gossip (:mod:`erlmcp_flow.gossip`): ``gossip.Member`` (this process as one
member: SWIM failure detection, a gossiped key → value map, membership and key events).

Byzantine agreement over PBFT (:mod:`erlmcp_flow.pbft`): ``pbft.Group.start()``, 3f + 1
replica threads with Ed25519 keys and a client; ``fast_path_consensus(op)`` /
``execute(op)`` (the result and the path, fast or slow), ``stop_replica``, ``view``.
"""

from ._native import (
    ABI_VERSION,
    EMF_ABI_VERSION,
    AbiMismatchError,
    LibraryNotFoundError,
    check_abi_version,
    lib as _lib,
)
from ._errors import (
    EMF_ERR_BUFFER_TOO_SMALL,
    EMF_ERR_BUSY,
    EMF_ERR_CLOSED,
    EMF_ERR_CORRUPT,
    EMF_ERR_EMPTY,
    EMF_ERR_FULL,
    EMF_ERR_INVALID_ARGUMENT,
    EMF_ERR_IO,
    EMF_ERR_NOT_FOUND,
    EMF_ERR_NOT_LEADER,
    EMF_ERR_NULL_ARGUMENT,
    EMF_ERR_PANIC,
    EMF_ERR_STOPPED,
    EMF_ERR_TIMEOUT,
    EMF_ERR_TOO_LARGE,
    EMF_ERR_UNSUPPORTED,
    EMF_OK,
    Busy,
    Error,
    Full,
    NotFound,
    Timeout,
    status_name,
)
from .codec import (
    EMF_ARCHIVE_CHECKSUM,
    EMF_ARCHIVE_IMPLICIT_JSONRPC,
    EMF_BUILDER_UNIQUE_KEYS,
    EMF_VALUE_BEGIN_ARRAY,
    EMF_VALUE_BEGIN_OBJECT,
    EMF_VALUE_BIG_INT_LE,
    EMF_VALUE_BOOL,
    EMF_VALUE_END,
    EMF_VALUE_FLOAT,
    EMF_VALUE_INT,
    EMF_VALUE_KEY,
    EMF_VALUE_MAX_DEPTH,
    EMF_VALUE_NULL,
    EMF_VALUE_NUMBER_TEXT,
    EMF_VALUE_STRING,
    EMF_VALUE_UINT,
    EMF_COMPRESS_DEFAULT_THRESHOLD,
    EMF_ID_INT,
    EMF_ID_NONE,
    EMF_ID_NULL,
    EMF_ID_OTHER_NUMBER,
    EMF_ID_STRING,
    EMF_KIND_ERROR,
    EMF_KIND_NOTIFICATION,
    EMF_KIND_REQUEST,
    EMF_KIND_RESPONSE,
    EMF_KIND_RESULT,
    EMF_KIND_TASK,
    EMF_MAX_INPUT_LEN,
    EMF_PRIORITY_CRITICAL,
    EMF_PRIORITY_HIGH,
    EMF_PRIORITY_LOW,
    EMF_PRIORITY_NORMAL,
    ID_TYPE_NAMES,
    KIND_NAMES,
    NO_ID,
    PRIORITY_NAMES,
    BigNumber,
    Envelope,
    Message,
    abi_version,
    compress_if_needed,
    decode,
    decompress,
    encode,
    validate,
    version,
)
from .ring import (
    ACK_MODES,
    DEFAULT_BUFFER_SIZE,
    EMF_ACK_AUTO,
    EMF_ACK_MANUAL,
    EMF_FLUSH_DEMAND,
    EMF_FLUSH_IDLE,
    EMF_FLUSH_NONE,
    EMF_FLUSH_SIZE,
    EMF_FLUSH_TIMEOUT,
    EMF_RING_CHECKSUM,
    EMF_WAIT_PARK,
    EMF_WAIT_SPIN,
    EMF_WAIT_YIELD,
    WAIT_STRATEGIES,
    Consumer,
    Producer,
    Ring,
    RingStats,
)
from .flow import BatchProcessor, FlushReason, Router, SharedValue, StateStore
from .queue import (
    DEFAULT_GET_BUFFER_SIZE,
    DROP_POLICIES,
    EMF_DROP_LOW_PRIORITY,
    EMF_DROP_NONE,
    EMF_ENQUEUE_BACKPRESSURE,
    EMF_ENQUEUE_EVICTED,
    EMF_ENQUEUE_OK,
    EMF_ENQUEUE_REJECTED,
    ENQUEUE_STATUS_NAMES,
    Cache,
    Enqueued,
    TaskQueue,
)
from .sched import (
    ACTION_KINDS,
    EMF_BREAKER_CLOSED,
    EMF_BREAKER_HALF_OPEN,
    EMF_BREAKER_OPEN,
    EMF_LEDGER_FILE,
    EMF_LEDGER_MEMORY,
    EMF_LEDGER_SHM,
    EMF_SCHED_ACTION_DEAD_LETTER,
    EMF_SCHED_ACTION_DELIVER,
    EMF_SCHED_ACTION_NONE,
    EMF_SCHED_ACTION_RESULT,
    EMF_SCHED_ACTION_REVOKE,
    EMF_SCHED_LEAST_LOADED,
    EMF_SCHED_POWER_OF_TWO,
    EMF_SCHED_ROUND_ROBIN,
    EMF_OUTCOME_DEAD_LETTER,
    EMF_OUTCOME_DONE,
    STRATEGIES,
    Action as SchedAction,
    DeadLetter as SchedDeadLetter,
    DeadLettered,
    SchedStats,
    Scheduler,
    Service,
    ServiceStats,
    TaskFuture,
)
from . import pbft
from .pbft import EMF_PBFT_PATH_FAST, EMF_PBFT_PATH_SLOW
from . import raft
from .raft import (
    EMF_RAFT_ADD_LEARNER,
    EMF_RAFT_ADD_VOTER,
    EMF_RAFT_MAX_CHANGES,
    EMF_RAFT_MAX_NODES,
    EMF_RAFT_REMOVE,
    EMF_RAFT_REQ_APPLY,
    EMF_RAFT_REQ_QUERY,
    EMF_RAFT_REQ_RESTORE,
    EMF_RAFT_REQ_SNAPSHOT,
)
from . import gossip
from .gossip import (
    EMF_GOSSIP_ALIVE,
    EMF_GOSSIP_DOWN,
    EMF_GOSSIP_EVENT_KEY_CHANGED,
    EMF_GOSSIP_EVENT_MEMBER_DOWN,
    EMF_GOSSIP_EVENT_MEMBER_RESTARTED,
    EMF_GOSSIP_EVENT_MEMBER_SUSPECT,
    EMF_GOSSIP_EVENT_MEMBER_UP,
    EMF_GOSSIP_EVENT_REJOINED,
    EMF_GOSSIP_MAX_PEERS,
    EMF_GOSSIP_SUSPECT,
)
from .pool import (
    EMF_POOL_ACTION_NONE,
    EMF_POOL_ACTION_START,
    EMF_POOL_ACTION_STOP,
    POOL_ACTION_KINDS,
    Pool,
    PoolAction,
    PoolStats,
)
from . import agent
from .vector import (
    EMF_METRIC_COSINE,
    EMF_METRIC_DOT,
    EMF_METRIC_L2SQ,
    EMF_ORIGINALS_F16,
    EMF_ORIGINALS_F32,
    EMF_ORIGINALS_NONE,
    EMF_SEARCH_RERANK,
    METRICS,
    NO_HIT_ID,
    ORIGINALS,
    HnswIndex,
    HnswParams,
    IdFilter,
    cosine_distance_quantized,
    dequantize,
    distance,
    dot_i8,
    quantize,
)

__version__ = "0.1.0"

#: Path of the loaded native library.
library_path = _lib.path

__all__ = [name for name in list(globals()) if name.startswith("EMF_")] + [
    "ABI_VERSION",
    "AbiMismatchError",
    "LibraryNotFoundError",
    "check_abi_version",
    "Error",
    "Full",
    "Timeout",
    "Busy",
    "NotFound",
    "status_name",
    "ID_TYPE_NAMES",
    "KIND_NAMES",
    "NO_ID",
    "PRIORITY_NAMES",
    "BigNumber",
    "Envelope",
    "Message",
    "abi_version",
    "compress_if_needed",
    "decode",
    "decompress",
    "encode",
    "validate",
    "version",
    "library_path",
    "DEFAULT_BUFFER_SIZE",
    "WAIT_STRATEGIES",
    "ACK_MODES",
    "Ring",
    "RingStats",
    "Producer",
    "Consumer",
    "Router",
    "BatchProcessor",
    "FlushReason",
    "StateStore",
    "SharedValue",
    "DEFAULT_GET_BUFFER_SIZE",
    "DROP_POLICIES",
    "ENQUEUE_STATUS_NAMES",
    "Enqueued",
    "TaskQueue",
    "Cache",
    "METRICS",
    "ORIGINALS",
    "NO_HIT_ID",
    "quantize",
    "dequantize",
    "distance",
    "cosine_distance_quantized",
    "dot_i8",
    "IdFilter",
    "HnswParams",
    "HnswIndex",
    "ACTION_KINDS",
    "STRATEGIES",
    "SchedAction",
    "SchedDeadLetter",
    "SchedStats",
    "Scheduler",
    "POOL_ACTION_KINDS",
    "Pool",
    "PoolAction",
    "PoolStats",
    "Service",
    "ServiceStats",
    "TaskFuture",
    "DeadLettered",
    "agent",
    "raft",
    "gossip",
    "pbft",
]

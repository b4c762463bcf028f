"""Vector kernels and the HNSW index (erlmcp_flow.vector over emf_quantize_f32, emf_distance_*,
emf_cosine_distance_i8, emf_dot_i8 and emf_hnsw_*): kernels against a float64 NumPy reference,
the quantization round trip, recall@10 on 5000 real MiniLM embeddings against exact ground
truth, batch search against looped search, filters by id set and by mask, remove and compact,
save / open (mapped, read-only) / load, bad input, closed handles, threads, and that float32
input reaches the library without a copy.

No test sleeps to synchronise: threads meet at barriers and are joined."""

import ctypes
import doctest
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")

import erlmcp_flow as emf  # noqa: E402
from erlmcp_flow import vector as vec  # noqa: E402
from erlmcp_flow._native import emf_hnsw_hit_t, emf_hnsw_p, emf_hnsw_params_t, lib  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
METRIC_NAMES = ["cosine", "dot", "l2sq"]
U64_MAX = 2**64 - 1


def reference(a, b, metric):
    """The distance in float64 over the exact values of a and b."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if metric == "cosine":
        return 1.0 - a @ b / np.sqrt((a @ a) * (b @ b))
    if metric == "dot":
        return 1.0 - a @ b
    return float(((a - b) ** 2).sum())


def assert_invalid(excinfo, *words):
    """An argument refused with EMF_ERR_INVALID_ARGUMENT, whose message names ``words``."""
    e = excinfo.value
    assert isinstance(e, emf.Error) and e.code == emf.EMF_ERR_INVALID_ARGUMENT, e
    for w in words:
        assert w in str(e), (w, str(e))


class Spy:
    """Wraps a library function: records each call's arguments, then calls it."""

    def __init__(self, monkeypatch, name):
        self.real = getattr(lib, name)
        self.calls = []
        monkeypatch.setattr(lib, name, self)

    def __call__(self, *args):
        self.calls.append(args)
        return self.real(*args)


# --- data ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    """(base float16 (5000, 384), queries float32 (200, 384), exact top-100 ids (200, 100))."""
    base = np.load(DATA / "minilm-5k.base.f16.npy")
    queries = np.load(DATA / "minilm-5k.query.f32.npy")
    gt = np.load(DATA / "minilm-5k.gt100.i32.npy")
    assert base.shape == (5000, 384) and base.dtype == np.float16
    assert queries.shape[1] == 384 and queries.dtype == np.float32
    assert gt.shape == (len(queries), 100)
    return base, queries, gt


@pytest.fixture(scope="module")
def base32(minilm):
    return np.ascontiguousarray(minilm[0], dtype=np.float32)


@pytest.fixture(scope="module")
def built(minilm):
    """The 5000 vectors under ids 0..4999, default parameters (M 16, efC 200, ef 50, cosine).
    Shared by the tests that only search it: none may change it."""
    index = emf.HnswIndex(384)
    index.insert_batch(np.arange(5000, dtype=np.uint64), minilm[0], threads=2)
    yield index
    index.close()


def recall_at_10(ids, gt):
    return float(np.mean([len(set(ids[i][:10].tolist()) & set(gt[i, :10].tolist())) / 10
                          for i in range(len(gt))]))


def small_index(base32, n=300, **kw):
    index = emf.HnswIndex(384, **kw)
    index.insert_batch(np.arange(n, dtype=np.uint64), base32[:n], threads=1)
    return index


# --- kernels --------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3, 7, 16, 31, 64, 100, 384, 1000, 1536])
def test_float32_distances_match_a_float64_reference(dim):
    rng = np.random.default_rng(dim)
    for _ in range(5):
        a = rng.standard_normal(dim).astype(np.float32)
        b = rng.standard_normal(dim).astype(np.float32)
        for metric in METRIC_NAMES:
            want = reference(a, b, metric)
            got = emf.distance(a, b, metric)
            assert isinstance(got, float)
            assert got == pytest.approx(want, rel=1e-5, abs=1e-5), (metric, dim)
        code = emf.METRICS["l2sq"]
        assert emf.distance(a, b, code) == emf.distance(a, b, "l2sq")
    assert emf.distance(a, a, "l2sq") == 0.0
    assert abs(emf.distance(a, a, "cosine")) < 1e-6


@pytest.mark.parametrize("dim", [1, 2, 3, 7, 16, 31, 64, 100, 384, 1000, 1536])
def test_float16_distances_match_a_float64_reference(dim):
    """Unit-length half-float vectors (like the MiniLM set): half-float inputs, summed in
    single precision."""
    rng = np.random.default_rng(100 + dim)
    for _ in range(5):
        a = rng.standard_normal(dim)
        b = rng.standard_normal(dim)
        a = (a / np.linalg.norm(a)).astype(np.float16)
        b = (b / np.linalg.norm(b)).astype(np.float16)
        for metric in METRIC_NAMES:
            want = reference(a, b, metric)  # over the exact half-float values
            got = emf.distance(a, b, metric)
            tol = 2e-3 if dim > 1 or metric != "cosine" else 5e-3
            assert got == pytest.approx(want, abs=tol * max(1.0, abs(want))), (metric, dim)


def test_float16_dot_of_a_long_vector_is_as_precise_as_float32():
    a = np.full(4096, 0.1, dtype=np.float16)
    want = reference(a, a, "dot")
    # Both kernels sum in single precision: ~1e-6 relative over 4096 terms. Half-precision
    # accumulation (simsimd's Sapphire Rapids f16 kernels, now built out) was 1.4 % off.
    assert emf.distance(a.astype(np.float32), a.astype(np.float32), "dot") == pytest.approx(
        want, rel=1e-5
    )
    assert emf.distance(a, a, "dot") == pytest.approx(want, rel=1e-5)


def test_float16_goes_through_the_half_float_kernel_in_place(monkeypatch):
    a = np.linspace(-1, 1, 64).astype(np.float16)
    b = np.cos(np.arange(64)).astype(np.float16)
    f16 = Spy(monkeypatch, "emf_distance_f16")
    f32 = Spy(monkeypatch, "emf_distance_f32")
    emf.distance(a, b, "l2sq")
    assert len(f16.calls) == 1 and not f32.calls
    _, pa, pb, n, _ = f16.calls[0]
    assert (pa, pb, n) == (a.ctypes.data, b.ctypes.data, 64)  # the arrays themselves
    # One float16 with one float32: both compared as float32.
    emf.distance(a, b.astype(np.float32), "l2sq")
    assert len(f16.calls) == 1 and len(f32.calls) == 1


def test_distance_inputs_are_converted_or_refused():
    a32 = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    b32 = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    want = emf.distance(a32, b32, "l2sq")
    # Convertible: lists, float64, ints, a strided view -- the same answer (after a copy).
    assert emf.distance([1, 2, 3], [0.5, -1, 2], "l2sq") == want
    assert emf.distance(a32.astype(np.float64), b32.astype(np.float64), "l2sq") == want
    strided = np.zeros(6, dtype=np.float32)
    strided[::2] = a32
    assert emf.distance(strided[::2], b32, "l2sq") == want
    # Not convertible.
    for bad in (np.array(["a", "b", "c"]), np.array([1 + 1j, 2, 3]), [object()] * 3,
                np.array([True, False, True])):
        with pytest.raises(TypeError):
            emf.distance(bad, b32)
    with pytest.raises(ValueError) as e:
        emf.distance(a32, b32[:2])
    assert_invalid(e, "same length")
    with pytest.raises(ValueError) as e:
        emf.distance(a32[None, :], b32[None, :])
    assert_invalid(e, "1-D")
    with pytest.raises(ValueError) as e:
        emf.distance(a32, b32, "manhattan")
    assert_invalid(e, "unknown metric", "cosine")
    with pytest.raises(emf.Error) as e:  # an unknown code is the library's to refuse
        emf.distance(a32, b32, 7)
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT and "metric" in e.value.message


def test_distances_refuse_nan_and_infinite_values():
    b = np.array([1, 2, 3, 4], dtype=np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        a = np.array([bad, 1, 2, 3], dtype=np.float32)
        for metric in METRIC_NAMES:
            for x, y in ((a, b), (a.astype(np.float16), b.astype(np.float16))):
                with pytest.raises(emf.Error) as e:
                    emf.distance(x, y, metric)
                assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT, (bad, metric)
                assert "NaN or infinite" in e.value.message


def test_quantize_round_trip_is_within_half_a_step():
    rng = np.random.default_rng(7)
    for dim in (1, 2, 5, 384, 1000):
        for scale_of_x in (1e-3, 1.0, 1e4):
            x = (rng.standard_normal(dim) * scale_of_x).astype(np.float32)
            codes, scale = emf.quantize(x)
            assert codes.dtype == np.int8 and codes.shape == (dim,)
            assert isinstance(scale, float)
            assert scale == pytest.approx(np.abs(x).max() / 127, rel=1e-6)
            assert codes.min() >= -127 and codes.max() <= 127
            assert np.abs(codes).max() == 127
            back = emf.dequantize(codes, scale)
            assert back.dtype == np.float32 and back.shape == (dim,)
            err = np.abs(back.astype(np.float64) - x.astype(np.float64)).max()
            assert err <= scale / 2 * (1 + 1e-5), (dim, scale_of_x, err, scale)
            np.testing.assert_array_equal(back, (codes * np.float32(scale)).astype(np.float32))
    codes, scale = emf.quantize(np.zeros(8, dtype=np.float32))
    assert scale == 0.0 and not codes.any()
    # The library's own example (crates/capi/src/vector.rs).
    codes, _ = emf.quantize([0.1, -0.05, 0.0, 0.2])
    assert codes.tolist() == [64, -32, 0, 127]


def test_quantize_refuses_nan_and_infinity():
    for bad in (np.nan, np.inf, -np.inf):
        x = np.array([0.5, bad, 1.0], dtype=np.float32)
        with pytest.raises(emf.Error) as e:
            emf.quantize(x)
        assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
        assert "NaN or infinite" in e.value.message
    with pytest.raises(ValueError):
        emf.quantize(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(TypeError):
        emf.quantize(["x"])


def test_int8_kernels_match_exact_references():
    rng = np.random.default_rng(3)
    for dim in (1, 2, 7, 64, 384, 1000, 4096):
        a = rng.integers(-127, 128, dim).astype(np.int8)
        b = rng.integers(-127, 128, dim).astype(np.int8)
        assert emf.dot_i8(a, b) == int(a.astype(np.int64) @ b.astype(np.int64))
        assert isinstance(emf.dot_i8(a, b), int)
        want = reference(a, b, "cosine")
        assert emf.cosine_distance_quantized(a, b) == pytest.approx(want, abs=1e-6)
    # Quantized cosine approximates the float one (scales cancel); scaled dot the float dot.
    x = rng.standard_normal(384).astype(np.float32)
    y = rng.standard_normal(384).astype(np.float32)
    (cx, sx), (cy, sy) = emf.quantize(x), emf.quantize(y)
    assert emf.cosine_distance_quantized(cx, cy) == pytest.approx(
        emf.distance(x, y, "cosine"), abs=0.01
    )
    assert emf.dot_i8(cx, cy) * sx * sy == pytest.approx(float(x @ y), rel=0.02, abs=0.2)
    # Other integer arrays are checked and converted; out-of-range values and floats refused.
    assert emf.dot_i8([1, 2, 3], np.array([4, 5, 6], dtype=np.int64)) == 32
    with pytest.raises(ValueError):
        emf.dot_i8([1, 200], [1, 1])
    with pytest.raises(TypeError):
        emf.dot_i8(np.array([1.0, 2.0]), [1, 1])
    with pytest.raises(ValueError):
        emf.cosine_distance_quantized(a[:3], a[:4])
    assert emf.cosine_distance_quantized(np.zeros(4, np.int8), np.ones(4, np.int8)) == 1.0


# --- the index: recall and batch search -----------------------------------------------------


def test_recall_at_10_on_real_embeddings(built, minilm):
    _, queries, gt = minilm
    assert len(built) == 5000
    ids = [built.search(q, k=10, ef=50)[0] for q in queries]
    assert all(len(i) == 10 for i in ids)
    recall = recall_at_10(ids, gt)
    assert recall >= 0.95, recall
    # ef=0 means the index's ef_search (50).
    assert all(np.array_equal(built.search(q, k=10)[0], i) for q, i in zip(queries[:20], ids))


def test_search_answers_closest_first_with_the_library_distances(built, minilm, base32):
    _, queries, gt = minilm
    ids, dist = built.search(queries[0], k=20)
    assert ids.dtype == np.uint64 and dist.dtype == np.float32
    assert ids.flags.c_contiguous and dist.flags.c_contiguous
    assert len(set(ids.tolist())) == 20
    assert np.all(np.diff(dist) >= 0)
    # int8 estimates of the cosine distance.
    for i, d in zip(ids, dist):
        assert d == pytest.approx(emf.distance(queries[0], base32[i]), abs=0.02)
    # An indexed vector finds itself first.
    ids, dist = built.search(base32[1234], k=1)
    assert ids.tolist() == [1234] and abs(dist[0]) < 1e-3


def test_search_batch_equals_looped_search(built, minilm):
    _, queries, gt = minilm
    looped = [built.search(q, k=10, ef=50) for q in queries]
    for threads in (1, 2, 0):
        ids, dist, counts = built.search_batch(queries, k=10, ef=50, threads=threads)
        assert ids.shape == dist.shape == (len(queries), 10)
        assert ids.dtype == np.uint64 and dist.dtype == np.float32
        assert counts.tolist() == [10] * len(queries)
        for row, (li, ld) in enumerate(looped):
            np.testing.assert_array_equal(ids[row], li)
            np.testing.assert_array_equal(dist[row], ld)
    assert recall_at_10(ids, gt) >= 0.95


def test_search_batch_marks_unused_slots(base32):
    with small_index(base32, n=5) as index:
        ids, dist, counts = index.search_batch(base32[:3], k=8)
        assert counts.tolist() == [5, 5, 5]
        assert (ids[:, 5:] == emf.NO_HIT_ID).all() and emf.NO_HIT_ID == U64_MAX
        assert np.isinf(dist[:, 5:]).all() and np.isfinite(dist[:, :5]).all()
        assert sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]
        # Single search: exactly the hits found.
        ids1, dist1 = index.search(base32[0], k=8)
        assert len(ids1) == len(dist1) == 5
        # No queries: empty results of the right shapes.
        ids, dist, counts = index.search_batch(np.empty((0, 384), dtype=np.float32), k=4)
        assert ids.shape == dist.shape == (0, 4) and counts.shape == (0,)
    with emf.HnswIndex(384) as empty:
        assert len(empty) == 0
        ids, dist = empty.search(base32[0])
        assert len(ids) == 0 and len(dist) == 0
        ids, dist, counts = empty.search_batch(base32[:2], k=3)
        assert counts.tolist() == [0, 0] and (ids == U64_MAX).all()


def test_rerank_gives_exact_distances_with_originals(base32, minilm):
    queries = minilm[1]
    with small_index(base32, n=500, originals="f32") as index:
        assert index.params.originals == "f32"
        for q in queries[:10]:
            ids, dist = index.search(q, k=5, rerank=True)
            exact = [emf.distance(q, base32[i]) for i in ids]
            np.testing.assert_allclose(dist, exact, atol=1e-6)
            _, approx = index.search(q, k=5)
            assert not np.array_equal(approx, dist)  # int8 estimates without the flag
        ids, dist, _ = index.search_batch(queries[:10], k=5, rerank=True)
        assert np.array_equal(dist[0], index.search(queries[0], k=5, rerank=True)[1])
    with small_index(base32, n=500, originals="f16") as index:
        ids, dist = index.search(queries[0], k=5, rerank=True)
        exact = [emf.distance(queries[0], base32[i]) for i in ids]
        np.testing.assert_allclose(dist, exact, atol=2e-3)


# --- filters --------------------------------------------------------------------------------


def test_filter_by_id_set_and_by_mask(built, minilm, base32):
    _, queries, _ = minilm
    rng = np.random.default_rng(11)
    allowed = rng.choice(5000, size=700, replace=False)
    mask = np.zeros(5000, dtype=bool)
    mask[allowed] = True
    as_set = set(allowed.tolist())
    for q in queries[:30]:
        by_ids, d1 = built.search(q, k=10, filter=allowed)
        by_set, d2 = built.search(q, k=10, filter=as_set)
        by_mask, d3 = built.search(q, k=10, filter=mask)
        by_obj, d4 = built.search(q, k=10, filter=emf.IdFilter(allowed))
        assert len(by_ids) == 10 and set(by_ids.tolist()) <= as_set
        for other, d in ((by_set, d2), (by_mask, d3), (by_obj, d4)):
            np.testing.assert_array_equal(other, by_ids)
            np.testing.assert_array_equal(d, d1)
    # Filtered answers agree with exact search among the allowed vectors.
    hits = 0
    for q in queries[:30]:
        got = built.search(q, k=10, ef=100, filter=mask)[0]
        scores = base32[allowed] @ q
        want = allowed[np.argsort(-scores)[:10]]
        hits += len(set(got.tolist()) & set(want.tolist()))
    assert hits / 300 >= 0.9, hits / 300
    # search_batch takes the same filter.
    ids, _, counts = built.search_batch(queries[:30], k=10, filter=mask)
    assert set(ids.ravel().tolist()) <= as_set and (counts == 10).all()


def test_filter_edge_cases(built, minilm):
    q = minilm[1][0]
    assert built.search(q, k=5, filter=[42])[0].tolist() == [42]
    # An empty set allows nothing (not "no filter").
    for empty in ([], set(), np.array([], dtype=np.uint64), np.zeros(0, dtype=bool),
                  np.zeros(5000, dtype=bool)):
        ids, dist = built.search(q, k=5, filter=empty)
        assert len(ids) == 0, type(empty)
    # A mask shorter than the ids allows only ids below its length.
    ids, _ = built.search(q, k=10, filter=np.ones(64, dtype=bool))
    assert len(ids) == 10 and max(ids.tolist()) < 64
    # Ids not in the index are allowed but never returned.
    ids, _ = built.search(q, k=10, filter=[7, 10**6, 2**20])
    assert ids.tolist() == [7]
    f = emf.IdFilter([3, 64, 130])
    assert len(f) == 3 and 64 in f and 65 not in f and 10**9 not in f
    assert f.words.dtype == np.uint64 and len(f.words) == 3
    assert f.words.tolist() == [1 << 3, 1, 1 << 2]  # id i: bit i % 64 of word i // 64
    assert emf.IdFilter(np.array([True, False, True])).words.tolist() == [0b101]
    # Bad filters.
    with pytest.raises(ValueError):
        built.search(q, filter=[-1])
    with pytest.raises(TypeError):
        built.search(q, filter=[1.5])
    with pytest.raises(TypeError):
        built.search(q, filter=[True])
    with pytest.raises(TypeError):
        built.search(q, filter=np.array([0.5]))
    with pytest.raises(ValueError):
        built.search(q, filter=np.ones((2, 2), dtype=bool))
    with pytest.raises(emf.Error) as e:  # a bitset past the library's input cap
        built.search(q, filter=[2**63])
    assert e.value.code == emf.EMF_ERR_TOO_LARGE


# --- remove and compact ---------------------------------------------------------------------


def test_remove_and_compact(minilm, base32):
    _, queries, _ = minilm
    index = emf.HnswIndex(384)
    index.insert_batch(np.arange(3000), base32[:3000], threads=2)
    removed = np.arange(0, 3000, 4)  # 750 ids, spread over the graph
    before = index.memory_bytes
    for i in removed:
        index.remove(int(i))
    assert len(index) == 2250
    gone = set(removed.tolist())
    for q in queries[:50]:
        ids, _ = index.search(q, k=10)
        assert len(ids) == 10 and not gone & set(ids.tolist())
    with pytest.raises(emf.NotFound) as e:
        index.remove(0)
    assert e.value.code == emf.EMF_ERR_NOT_FOUND and "0" in e.value.message
    for i in range(1000, 3000):
        if i % 4:
            index.remove(i)
    assert len(index) == 250 + 500  # 1000..2999 all gone; 0..999 minus every fourth
    index.compact()
    assert len(index) == 750 and index.memory_bytes < before
    live = np.array([i for i in range(1000) if i % 4])
    for q in queries[:20]:
        ids, _ = index.search(q, k=10, ef=200)
        want = live[np.argsort(-(base32[live] @ q))[:10]]
        assert len(set(ids.tolist()) & set(want.tolist())) >= 8
    # A removed id can be inserted again.
    index.insert(0, base32[0])
    assert index.search(base32[0], k=1)[0].tolist() == [0]
    index.close()


def test_try_compact_is_false_while_another_call_runs(base32):
    """try_compact never waits: True (done) when nothing else runs, False (nothing done) while
    a batch insert on another thread is inside the library; compact waits and succeeds."""
    index = emf.HnswIndex(384)
    index.insert_batch(np.arange(100), base32[:100])
    for i in range(0, 100, 2):
        index.remove(i)
    before = index.memory_bytes
    assert index.try_compact() is True
    assert len(index) == 50 and index.memory_bytes < before
    busy = 0
    for rnd in range(5):  # a round is long enough that busy is seen at once; retried anyway
        started, done = threading.Event(), threading.Event()
        ids = np.arange(1000 + rnd * 2000, 1000 + rnd * 2000 + 2000)

        def insert():
            started.set()
            try:
                index.insert_batch(ids, base32[:2000], threads=1)
            finally:
                done.set()

        t = threading.Thread(target=insert)
        t.start()
        started.wait()
        while not done.is_set():
            if not index.try_compact():
                busy += 1
                break
        t.join()
        if busy:
            break
    assert busy > 0, "try_compact never saw the batch insert in progress"
    assert len(index) == 50 + 2000 * (rnd + 1)
    index.compact()
    assert index.try_compact() is True
    index.close()


# --- save, open (mapped), load --------------------------------------------------------------


def test_save_open_load(tmp_path, minilm, base32):
    _, queries, _ = minilm
    path = tmp_path / "index.emfhnsw"
    with small_index(base32, n=2000, metric="cosine", m=12, ef_search=40,
                     originals="f16", seed=99) as index:
        index.remove(5)
        index.save(path)
        want = index.search_batch(queries, k=10)
        want_rr = index.search(queries[0], k=10, rerank=True)
        params = index.params
    assert path.is_file()
    with emf.HnswIndex.open(path) as mapped:
        assert mapped.mapped and "mapped" in repr(mapped)
        assert mapped.params == params
        assert params.m == 12 and params.ef_search == 40 and params.seed == 99
        assert len(mapped) == 1999
        assert mapped.memory_bytes == path.stat().st_size
        got = mapped.search_batch(queries, k=10)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(w, g)
        for row, q in enumerate(queries[:20]):
            ids, dist = mapped.search(q, k=10)
            np.testing.assert_array_equal(ids, want[0][row])
            np.testing.assert_array_equal(dist, want[1][row])
        rr = mapped.search(queries[0], k=10, rerank=True)
        np.testing.assert_array_equal(rr[0], want_rr[0])
        np.testing.assert_array_equal(rr[1], want_rr[1])
        # Read-only: every change is refused with EMF_ERR_UNSUPPORTED, and nothing changes.
        for change in (
            lambda: mapped.insert(10**6, base32[0]),
            lambda: mapped.insert_batch([10**6], base32[:1]),
            lambda: mapped.remove(1),
            mapped.compact,
            mapped.try_compact,
            lambda: mapped.save(tmp_path / "copy"),
        ):
            with pytest.raises(emf.Error) as e:
                change()
            assert e.value.code == emf.EMF_ERR_UNSUPPORTED, e.value
            assert "read-only" in e.value.message
        assert len(mapped) == 1999
        # A mutable copy.
        with emf.HnswIndex.load(path) as loaded:
            assert not loaded.mapped and loaded.params == params
            got = loaded.search_batch(queries, k=10)
            for w, g in zip(want, got):
                np.testing.assert_array_equal(w, g)
            loaded.insert(10**6, base32[0])
            loaded.remove(1)
            assert len(loaded) == 1999
            # Saving over the mapped file: the mapping keeps reading the old one.
            loaded.save(path)
        assert len(mapped) == 1999
        np.testing.assert_array_equal(mapped.search_batch(queries, k=10)[0], want[0])
    with emf.HnswIndex.open(str(path)) as reopened:
        assert 10**6 in reopened.search(base32[0], k=2)[0].tolist()


def test_open_and_load_refuse_bad_files(tmp_path):
    missing = tmp_path / "missing"
    for fn in (emf.HnswIndex.open, emf.HnswIndex.load):
        with pytest.raises(emf.Error) as e:
            fn(missing)
        assert e.value.code == emf.EMF_ERR_NOT_FOUND and "missing" in e.value.message
    bad = tmp_path / "bad"
    bad.write_bytes(b"EMFHNSW\0garbage")
    for fn in (emf.HnswIndex.open, emf.HnswIndex.load):
        with pytest.raises(emf.Error) as e:
            fn(bad)
        assert e.value.code == emf.EMF_ERR_CORRUPT, e.value
    # A directory is no index file: the OS's kind of refusal (EMF_ERR_IO), at open and load.
    for fn in (emf.HnswIndex.open, emf.HnswIndex.load):
        with pytest.raises(emf.Error) as e:
            fn(tmp_path)
        assert e.value.code == emf.EMF_ERR_IO and "directory" in e.value.message, e.value
    with pytest.raises(emf.Error) as e:  # C would cut the path at the NUL
        emf.HnswIndex.open("a\0b")
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT and "NUL" in e.value.message
    with pytest.raises(TypeError):
        emf.HnswIndex.open(42)


def test_a_flipped_bit_anywhere_in_a_file_is_corrupt(tmp_path, base32):
    """Index files carry a CRC32C: a bit flipped in a vector, an id or a list is refused."""
    path = tmp_path / "i"
    with small_index(base32, n=100) as index:
        index.save(path)
    data = path.read_bytes()
    for at in (200, len(data) // 3, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[at] ^= 0x08
        path.write_bytes(flipped)
        for fn in (emf.HnswIndex.open, emf.HnswIndex.load):
            with pytest.raises(emf.Error) as e:
                fn(path)
            assert e.value.code == emf.EMF_ERR_CORRUPT, (at, e.value)
            assert "checksum" in e.value.message


def test_truncated_file_is_corrupt(tmp_path, base32):
    path = tmp_path / "i"
    with small_index(base32, n=100) as index:
        index.save(path)
    data = path.read_bytes()
    for cut in (16, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(emf.Error) as e:
            emf.HnswIndex.open(path)
        assert e.value.code == emf.EMF_ERR_CORRUPT, (cut, e.value)


# --- parameters and bad input ---------------------------------------------------------------


def test_parameters():
    with emf.HnswIndex(8, metric="l2sq", m=8, ef_construction=64, ef_search=20,
                       originals="f32", seed=7) as index:
        p = index.params
        assert (p.dim, p.metric, p.m, p.ef_construction, p.ef_search, p.originals, p.seed) == (
            8, "l2sq", 8, 64, 20, "f32", 7)
        assert index.dim == 8 and not index.mapped
    with emf.HnswIndex(8) as index:
        default = emf_hnsw_params_t()
        assert lib.emf_hnsw_params_default(8, ctypes.byref(default)) == emf.EMF_OK
        assert index.params == vec.HnswParams(8, "cosine", 16, 200, 50, None, default.seed)
    with emf.HnswIndex(3, metric=emf.EMF_METRIC_DOT, originals=emf.EMF_ORIGINALS_F16) as i:
        assert (i.params.metric, i.params.originals) == ("dot", "f16")
    with pytest.raises(ValueError) as e:
        emf.HnswIndex(8, metric="euclid")
    assert_invalid(e, "unknown metric")
    with pytest.raises(ValueError) as e:
        emf.HnswIndex(8, originals="f8")
    assert_invalid(e, "unknown originals")
    for kwargs, word in (
        (dict(dim=70000), "dim"),
        (dict(dim=8, m=1), "m"),
        (dict(dim=8, m=129), "m"),
        (dict(dim=8, metric=9), "metric"),
        (dict(dim=8, originals=5), "originals"),
    ):
        with pytest.raises(emf.Error) as e:
            emf.HnswIndex(**kwargs)
        assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT and word in e.value.message, kwargs
    with pytest.raises(emf.Error):
        emf.HnswIndex(-1)
    with pytest.raises(TypeError):
        emf.HnswIndex(8.0)


def test_bad_input_is_refused_clearly(base32):
    index = small_index(base32, n=50)
    q = base32[60]
    # Wrong dimensions: refused in Python, before the library is called.
    for call, words in (
        (lambda: index.insert(1000, q[:100]), ("vector", "384")),
        (lambda: index.search(q[:383]), ("query", "384")),
        (lambda: index.search(base32[:2]), ("query", "1-D")),
        (lambda: index.search_batch(q), ("queries", "2-D", "search()")),
        (lambda: index.search_batch(base32[:2, :10]), ("queries", "384")),
        (lambda: index.insert_batch([1000], q), ("vectors", "2-D")),
        (lambda: index.insert_batch([1000, 1001], base32[:3]), ("2 ids for 3 vectors",)),
        (lambda: index.search(q, k=0), ("k must be at least 1",)),
        (lambda: index.search_batch(base32[:2], k=0), ("k",)),
    ):
        with pytest.raises(ValueError) as e:
            call()
        assert_invalid(e, *words)
    # Convertible dtypes work (a copy is made) and give the float32 answer.
    want = index.search(q, k=5)
    for other in (q.astype(np.float64), q.tolist(), np.asfortranarray(q)):
        got = index.search(other, k=5)
        np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(index.search(q.astype(np.float16), k=5)[0],
                                  index.search(q.astype(np.float16).astype(np.float32), k=5)[0])
    # Not convertible.
    for bad in (q.astype(np.complex64), np.array(["x"] * 384), np.zeros(384, dtype=bool),
                [None] * 384):
        with pytest.raises(TypeError):
            index.search(bad)
        with pytest.raises(TypeError):
            index.insert(1000, bad)
    # NaN and infinity: refused by the library.
    for bad_value in (np.nan, np.inf):
        v = q.copy()
        v[7] = bad_value
        for call in (lambda: index.insert(1000, v), lambda: index.search(v),
                     lambda: index.insert_batch([1000], v[None, :]),
                     lambda: index.search_batch(v[None, :])):
            with pytest.raises(emf.Error) as e:
                call()
            assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
            assert "NaN or infinite" in e.value.message
    # Duplicate ids: nothing inserted.
    with pytest.raises(emf.Error) as e:
        index.insert(3, q)
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT and "3" in e.value.message
    with pytest.raises(emf.Error) as e:
        index.insert_batch([1000, 3], base32[100:102])
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
    with pytest.raises(emf.Error) as e:
        index.insert_batch([1000, 1000], base32[100:102])  # repeated within the batch
    assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT and "1000" in e.value.message
    assert len(index) == 50
    # Ids: ints in 0..2**64-1.
    for bad_id, exc in ((-1, ValueError), (2**64, ValueError), (1.0, TypeError),
                        ("1", TypeError), (True, TypeError)):
        with pytest.raises(exc):
            index.insert(bad_id, q)
        with pytest.raises(exc):
            index.remove(bad_id)
    with pytest.raises(ValueError):
        index.insert_batch(np.array([-1]), q[None, :])
    with pytest.raises(TypeError):
        index.insert_batch(np.array([1.0]), q[None, :])
    with pytest.raises(ValueError):
        index.insert_batch([2**64], q[None, :])
    assert len(index) == 50
    # Big ids round-trip exactly (uint64, not float64).
    index.insert(U64_MAX - 1, q)
    index.insert_batch(np.array([2**63 + 5], dtype=np.uint64), base32[61:62])
    assert index.search(q, k=1)[0].tolist() == [U64_MAX - 1]
    assert index.search(base32[61], k=1)[0].tolist() == [2**63 + 5]
    assert len(index) == 52
    # Other numeric arguments.
    with pytest.raises(emf.Error):
        index.search(q, ef=-1)
    with pytest.raises(TypeError):
        index.search(q, k=2.5)
    with pytest.raises(emf.Error):
        index.insert_batch([1], q[None, :], threads=-1)
    index.close()


def test_closed_index_raises_instead_of_crashing(base32, tmp_path):
    index = small_index(base32, n=20)
    assert "in memory" in repr(index)
    index.close()
    index.close()  # twice is fine
    assert index.closed and "closed" in repr(index)
    q = base32[0]
    for call in (
        lambda: index.search(q),
        lambda: index.search_batch(base32[:2]),
        lambda: index.insert(100, q),
        lambda: index.insert_batch([100], base32[:1]),
        lambda: index.remove(1),
        index.compact,
        index.try_compact,
        lambda: index.save(tmp_path / "x"),
        lambda: len(index),
        lambda: index.memory_bytes,
        lambda: index.__enter__(),
    ):
        with pytest.raises(emf.Error) as e:
            call()
        assert e.value.code == emf.EMF_ERR_CLOSED and "closed" in str(e.value)
        assert isinstance(e.value, ValueError)
    assert index.params.dim == 384  # kept in Python, still readable
    # The library refuses the stale handle too (never a use after free).
    assert lib.emf_hnsw_free(index._raw) == emf.EMF_ERR_INVALID_ARGUMENT
    n = ctypes.c_size_t()
    assert lib.emf_hnsw_stats(index._raw, ctypes.byref(n), None) != emf.EMF_OK


def test_garbage_collected_index_is_freed(base32):
    import gc

    index = small_index(base32, n=10)
    raw = index._raw
    del index
    gc.collect()
    assert lib.emf_hnsw_free(raw) == emf.EMF_ERR_INVALID_ARGUMENT  # already freed


# --- zero copy ------------------------------------------------------------------------------


def test_float32_input_is_not_copied(monkeypatch, base32, minilm):
    queries = minilm[1]
    index = emf.HnswIndex(384)
    ids = np.arange(100, dtype=np.uint64)
    vectors = base32[:100]
    assert vectors.flags.c_contiguous and vectors.dtype == np.float32

    def no_copy(*args, **kwargs):
        raise AssertionError("np.ascontiguousarray called: the input was copied")

    monkeypatch.setattr(np, "ascontiguousarray", no_copy)
    insert = Spy(monkeypatch, "emf_hnsw_insert_batch")
    index.insert_batch(ids, vectors)
    assert insert.calls[0][1] == ids.ctypes.data and insert.calls[0][3] == vectors.ctypes.data
    one = Spy(monkeypatch, "emf_hnsw_insert")
    index.insert(500, queries[0])
    assert one.calls[0][2] == queries[0].ctypes.data
    search = Spy(monkeypatch, "emf_hnsw_search")
    index.search(queries[1], k=3)
    assert search.calls[0][1] == queries[1].ctypes.data
    batch = Spy(monkeypatch, "emf_hnsw_search_batch")
    index.search_batch(queries, k=3)
    assert batch.calls[0][1] == queries.ctypes.data
    quantize = Spy(monkeypatch, "emf_quantize_f32")
    emf.quantize(queries[2])
    assert quantize.calls[0][0] == queries[2].ctypes.data
    dist = Spy(monkeypatch, "emf_distance_f32")
    emf.distance(queries[3], queries[4])
    assert dist.calls[0][1:3] == (queries[3].ctypes.data, queries[4].ctypes.data)
    monkeypatch.undo()
    index.close()


def test_other_input_is_copied_and_gives_the_same_answer(monkeypatch, base32):
    with small_index(base32, n=200) as index:
        q = base32[300]
        want = index.search(q, k=5)
        search = Spy(monkeypatch, "emf_hnsw_search")
        strided = np.zeros((384, 2), dtype=np.float32)
        strided[:, 0] = q
        got = index.search(strided[:, 0], k=5)  # not contiguous: copied
        assert search.calls[-1][1] != strided.ctypes.data
        np.testing.assert_array_equal(got[0], want[0])
        swapped = q.astype(">f4")  # non-native byte order: converted
        np.testing.assert_array_equal(index.search(swapped, k=5)[0], want[0])
        unaligned = np.frombuffer(b"\0" + q.tobytes(), dtype=np.float32, offset=1)
        assert not unaligned.flags.aligned
        np.testing.assert_array_equal(index.search(unaligned, k=5)[0], want[0])
        assert search.calls[-1][1] % 4 == 0


def test_mapped_npy_rows_are_read_in_place(monkeypatch, tmp_path, base32):
    path = tmp_path / "v.npy"
    np.save(path, base32[:50])
    mm = np.load(path, mmap_mode="r")  # read-only memory map
    with emf.HnswIndex(384) as index:
        insert = Spy(monkeypatch, "emf_hnsw_insert_batch")
        index.insert_batch(np.arange(50, dtype=np.uint64), mm)
        assert insert.calls[0][3] == mm.ctypes.data
        assert index.search(base32[7], k=1)[0].tolist() == [7]


# --- threads --------------------------------------------------------------------------------


def test_threads_insert_and_search_concurrently(base32, minilm):
    queries = minilm[1]
    index = emf.HnswIndex(384)
    index.insert_batch(np.arange(500), base32[:500])
    per = 250
    barrier = threading.Barrier(4)
    errors = []

    def writer(t):
        try:
            barrier.wait(10)
            start = 500 + t * per
            for i in range(start, start + per):
                index.insert(i, base32[i])
        except BaseException as e:
            errors.append(e)

    def reader():
        try:
            barrier.wait(10)
            for q in queries[:100]:
                ids, _ = index.search(q, k=10)
                assert len(ids) == 10 and ids.max() < 500 + 2 * per
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert len(index) == 1000
    for i in (500, 777, 999):
        assert index.search(base32[i], k=1)[0].tolist() == [i]
    index.close()


def test_close_waits_for_calls_in_progress(base32, minilm):
    """Threads search in a loop while the main thread closes the index: every call either
    completes or raises the closed error; none touches freed memory."""
    queries = minilm[1]
    index = small_index(base32, n=1000)
    barrier = threading.Barrier(5)
    outcomes = {"ok": 0, "closed": 0}
    lock = threading.Lock()
    errors = []

    def work():
        try:
            barrier.wait(10)
            while True:
                try:
                    index.search_batch(queries[:20], k=10, threads=1)
                except emf.Error as e:
                    assert e.code == emf.EMF_ERR_CLOSED, e
                    with lock:
                        outcomes["closed"] += 1
                    return
                with lock:
                    outcomes["ok"] += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    barrier.wait(10)
    # Close once the workers have completed some searches (polled against a deadline).
    deadline = time.monotonic() + 30
    while True:
        with lock:
            if outcomes["ok"] >= 8 or errors:
                break
        if time.monotonic() > deadline:
            pytest.fail("the workers completed no searches")
    index.close()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert outcomes["closed"] == 4


# --- the raw C ABI and packaging ------------------------------------------------------------


def test_hit_dtype_has_the_c_layout():
    vec._numpy()
    dt = vec._HIT_DTYPE
    assert dt.itemsize == ctypes.sizeof(emf_hnsw_hit_t) == 16
    assert dt.fields["id"][1] == emf_hnsw_hit_t.id.offset == 0
    assert dt.fields["distance"][1] == emf_hnsw_hit_t.distance.offset == 8


def test_raw_hnsw_abi_null_arguments_and_stale_handles(base32):
    p = emf_hnsw_params_t()
    assert lib.emf_hnsw_params_default(16, None) == emf.EMF_ERR_NULL_ARGUMENT
    assert lib.emf_hnsw_params_default(16, ctypes.byref(p)) == emf.EMF_OK
    h = emf_hnsw_p()
    assert lib.emf_hnsw_new(None, ctypes.byref(h)) == emf.EMF_ERR_NULL_ARGUMENT
    assert lib.emf_hnsw_new(ctypes.byref(p), None) == emf.EMF_ERR_NULL_ARGUMENT
    assert lib.emf_hnsw_new(ctypes.byref(p), ctypes.byref(h)) == emf.EMF_OK
    try:
        v = np.ones(16, dtype=np.float32)
        assert lib.emf_hnsw_insert(h, 1, None, 16) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_hnsw_insert(h, 1, v.ctypes.data, 16) == emf.EMF_OK
        n = ctypes.c_size_t(99)
        hits = np.zeros(4, dtype=vec._HIT_DTYPE)
        assert lib.emf_hnsw_search(h, v.ctypes.data, 16, 4, 0, 0, None, 0, hits.ctypes.data,
                                   None) == emf.EMF_ERR_NULL_ARGUMENT
        assert lib.emf_hnsw_search(h, v.ctypes.data, 16, 4, 0, 2, None, 0, hits.ctypes.data,
                                   ctypes.byref(n)) == emf.EMF_ERR_INVALID_ARGUMENT  # flags
        assert n.value == 99  # not written on failure
        # Misaligned query: refused, not read.
        raw = np.zeros(17 * 4 + 4, dtype=np.uint8)
        status = lib.emf_hnsw_search(h, raw.ctypes.data + 1, 16, 4, 0, 0, None, 0,
                                     hits.ctypes.data, ctypes.byref(n))
        assert status == emf.EMF_ERR_INVALID_ARGUMENT and "aligned" in vec.last_error_message()
        assert lib.emf_hnsw_search(h, v.ctypes.data, 16, 4, 0, 0, None, 0, hits.ctypes.data,
                                   ctypes.byref(n)) == emf.EMF_OK
        assert n.value == 1 and hits[0]["id"] == 1
        assert lib.emf_hnsw_stats(h, None, None) == emf.EMF_OK
        assert lib.emf_hnsw_save(h, None) == emf.EMF_ERR_NULL_ARGUMENT
    finally:
        assert lib.emf_hnsw_free(h) == emf.EMF_OK
    assert lib.emf_hnsw_free(h) == emf.EMF_ERR_INVALID_ARGUMENT
    assert lib.emf_hnsw_remove(h, 1) != emf.EMF_OK
    assert lib.emf_hnsw_free(None) == emf.EMF_OK


def test_package_imports_without_numpy():
    """The rest of the package works without NumPy; the vector functions say what is missing."""
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "import erlmcp_flow as emf\n"
        "assert emf.EMF_METRIC_L2SQ == 2 and emf.decode(emf.encode('{\"jsonrpc\":\"2.0\","
        "\"method\":\"m\"}'))\n"
        "for call in (lambda: emf.quantize([1.0]), lambda: emf.HnswIndex(4).search([0] * 4)):\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as e:\n"
        "        assert 'NumPy' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no ImportError')\n"
        "print('ok')\n"
    )
    env = dict(os.environ, ERLMCP_FLOW_LIB=str(Path(emf.library_path).resolve()))
    r = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE_ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_module_doctests():
    result = doctest.testmod(vec, verbose=False)
    assert result.attempted >= 4 and result.failed == 0


def test_dim_zero_takes_the_first_insert():
    with emf.HnswIndex(m=16, ef_construction=200) as index:
        assert (index.dim, index.params.dim, len(index)) == (0, 0, 0)
        ids, dists = index.search([1.0, 2.0, 3.0], k=3)
        assert len(ids) == 0 and len(dists) == 0
        with pytest.raises(emf.Error) as e:
            index.search_batch(np.ones((2, 3), dtype=np.float32), k=1)
        assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT and "no dimension" in e.value.message
        index.insert_batch(np.empty(0, dtype=np.uint64), np.empty((0, 3), dtype=np.float32))
        assert index.dim == 0
        index.insert(7, [1.0, 0.0, 0.0])
        assert (index.dim, index.params.dim) == (3, 3)
        with pytest.raises(ValueError):
            index.insert(8, [1.0, 0.0])  # checked against the fixed dimension now
        index.insert(8, [0.0, 1.0, 0.0])
        ids, _ = index.search([0.1, 0.9, 0.0], k=2)
        assert list(ids) == [8, 7]
        assert "dim=3" in repr(index)
    # A first batch fixes it to its columns.
    with emf.HnswIndex() as index:
        index.insert_batch([1, 2], np.eye(2, dtype=np.float32))
        assert index.dim == 2 and len(index) == 2
        ids, _, counts = index.search_batch(np.eye(2, dtype=np.float32), k=1)
        assert list(ids[:, 0]) == [1, 2] and list(counts) == [1, 1]


def test_concurrent_first_inserts_fix_one_dimension():
    import threading

    index = emf.HnswIndex()
    barrier = threading.Barrier(6)
    results = {}

    def insert(t):
        dim = 3 + t % 2
        barrier.wait()
        try:
            index.insert(t, np.arange(1, dim + 1, dtype=np.float32) + t)
            results[t] = (dim, None)
        except emf.Error as e:
            results[t] = (dim, e.code)

    threads = [threading.Thread(target=insert, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    won = index.dim
    assert won in (3, 4)
    for dim, code in results.values():
        assert code == (None if dim == won else emf.EMF_ERR_INVALID_ARGUMENT)
    assert len(index) == 3
    index.close()


def test_insert_new_assigns_ids():
    with emf.HnswIndex() as index:
        assert index.insert_new([1.0, 0.0]) == 0
        index.insert(1, [0.0, 1.0])
        assert index.insert_new(np.array([0.5, 0.5], dtype=np.float32)) == 2
        with pytest.raises(ValueError):
            index.insert_new([1.0, 2.0, 3.0])
        with pytest.raises(emf.Error) as e:
            index.insert_new(np.array([np.nan, 1.0], dtype=np.float32))
        assert e.value.code == emf.EMF_ERR_INVALID_ARGUMENT
        index.remove(2)
        assert index.insert_new([0.2, 0.8]) == 3  # no id used up by errors, 2 not reused
        ids, _ = index.search([0.2, 0.8], k=1)
        assert list(ids) == [3]
    with pytest.raises(ValueError):
        index.insert_new([1.0, 0.0])  # closed

"""favorkit on dask arrays, computed on a real cluster of worker processes.

The in-memory results are the reference: transformers bit for bit where the row chunks are
multiples of the in-memory row block, within a few ulp otherwise; causal attention bit for
bit where the sequence chunks are multiples of the causal block; bidirectional attention
(key states summed in another order) within a round-off bound derived per row.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.base import clone

from favorkit import (
    ArcCosineFeatures,
    FavorAttention,
    OrthogonalRFF,
    PositiveRandomFeatures,
    favor_attention,
)
from favorkit._parallel import BLOCK_ROWS
from favorkit.attention._engine import Tuning

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

CAUSAL_BLOCK = Tuning().causal_block_rows


@pytest.fixture(scope="module")
def client():
    import cloudpickle

    # The helpers below (a block that kills its worker, one that fails when computed) go to
    # the workers by value: the worker processes need not import this test module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _never(block):
    raise AssertionError("this array must not be computed")


def _untouchable(shape, chunks, dtype=np.float64):
    """A dask array whose computation fails: calls that must stay lazy can take it."""
    return da.zeros(shape, chunks=chunks, dtype=dtype).map_blocks(_never, dtype=dtype)


def test_import_favorkit_does_not_import_dask():
    code = "import favorkit, sys; print(sorted(m for m in sys.modules if m.startswith('dask')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- transformers

TRANSFORMERS = [
    PositiveRandomFeatures(64, random_state=0),
    PositiveRandomFeatures(64, estimator="hyperbolic", random_state=0),
    PositiveRandomFeatures(64, estimator="optimal", random_state=0),
    PositiveRandomFeatures(64, estimator="saderf", random_state=0),
    PositiveRandomFeatures(64, kernel="gaussian", gamma="scale", random_state=0),
    OrthogonalRFF(64, random_state=0),
    OrthogonalRFF(64, gamma="scale", features="cos", random_state=0),
    OrthogonalRFF(64, kernel="laplacian", random_state=0),
    OrthogonalRFF(64, kernel="matern", nu=1.5, random_state=0),
    ArcCosineFeatures(64, degree=1, random_state=0),
]
IDS = [repr(t) for t in TRANSFORMERS]


def _data(n=6000, d=12, dtype=np.float64, seed=0):
    return (np.random.default_rng(seed).normal(size=(n, d)) * 0.4).astype(dtype)


@pytest.mark.parametrize("estimator", TRANSFORMERS, ids=IDS)
def test_transform_is_lazy_with_chunks_and_dtype_known(estimator):
    est = clone(estimator).fit(_data(100))
    for dtype in (np.float32, np.float64):
        X = _untouchable((5000, 12), (1000, 5), dtype)
        Y = est.transform(X)  # nothing computed: _never would raise
        width = est.get_feature_names_out().shape[0]
        assert isinstance(Y, da.Array)
        assert Y.shape == (5000, width)
        assert Y.chunks == ((1000,) * 5, (width,))
        assert Y.dtype == dtype and Y._meta.dtype == dtype and isinstance(Y._meta, np.ndarray)


@pytest.mark.parametrize("estimator", TRANSFORMERS, ids=IDS)
def test_fit_and_transform_on_the_cluster_equal_the_in_memory_ones(client, estimator):
    X = _data(dtype=np.float32)
    ref = clone(estimator).fit(X)
    lazy = clone(estimator).fit(da.from_array(X, chunks=(1000, 12)))
    # The drawn projection is the same; fitted statistics agree to float64 round-off.
    assert_array_equal(lazy.projection_, ref.projection_)
    for name in ("gerf_a_", "gamma_"):
        if hasattr(ref, name):
            np.testing.assert_allclose(getattr(lazy, name), getattr(ref, name), rtol=1e-12)
    lazy = ref  # the same fitted estimator on both paths, to compare the transform itself
    aligned = lazy.transform(da.from_array(X, chunks=(2 * BLOCK_ROWS, 12))).compute()
    assert_array_equal(aligned, ref.transform(X))
    ragged = lazy.transform(da.from_array(X, chunks=(1500, 5))).compute()
    expected = ref.transform(X)
    err = np.abs(ragged.astype(np.float64) - expected)
    assert (err <= _feature_roundoff(ref, X, expected)).all()


def _feature_roundoff(est, X, features):
    """Rows blocked differently reach BLAS kernels with other row counts, whose dot products
    may round differently: by a few ulp of ``Σ_k |x_k| |ω_k|`` (times the input scale), not
    of the result. The feature map (exp, cos, a power) turns an error δ of its argument into
    at most δ times the largest feature (its derivative is bounded by it where |z| >= 1),
    plus its own rounding: ``|Δf| <= 8 eps (Σ_k |x_k ω_k| + 1) max|f|``."""
    scale = np.sqrt(est._input_scale_sq()) if hasattr(est, "kernel") else 1.0
    magnitude = np.abs(X.astype(np.float64)) @ np.abs(est.projection_.T) * scale
    magnitude = np.tile(magnitude, features.shape[1] // magnitude.shape[1])  # paired maps
    return 8 * np.finfo(X.dtype).eps * (magnitude + 1) * np.abs(features).max()


def test_fit_statistics_take_one_pass_over_the_data():
    calls = []

    def counted(block):
        if block.size:  # not dask's own call on an empty array, to learn the output type
            calls.append(block.shape[0])
        return block

    X = _data()
    Xd = da.from_array(X, chunks=(1000, 12)).map_blocks(counted, dtype=X.dtype)
    with dask.config.set(scheduler="synchronous"):
        est = PositiveRandomFeatures(32, estimator="saderf", random_state=0).fit(Xd, keys=Xd)
    assert sorted(calls) == [1000] * 6  # each chunk read once, for X and keys together
    ref = PositiveRandomFeatures(32, estimator="saderf", random_state=0).fit(X)
    np.testing.assert_allclose(est.query_scale_, ref.query_scale_, rtol=1e-12)


@pytest.mark.parametrize("estimator", [TRANSFORMERS[0], TRANSFORMERS[5], TRANSFORMERS[-1]])
def test_fit_without_statistics_reads_only_the_shape(estimator):
    est = clone(estimator).fit(_untouchable((10**9, 12), (10**6, 12)))
    assert est.n_features_in_ == 12 and est.projection_.shape == (64, 12)


def test_the_graph_ships_one_copy_of_the_fitted_estimator():
    est = PositiveRandomFeatures(256, random_state=0).fit(_data(100, d=64))
    Y = est.transform(da.zeros((10**5, 64), chunks=(1000, 64)))
    graph = dict(Y.__dask_graph__())
    holders = [k for k, v in graph.items() if isinstance(v, PositiveRandomFeatures) or (
        hasattr(v, "value") and isinstance(v.value, PositiveRandomFeatures))]  # fmt: skip
    assert len(holders) == 1  # one key, read by all 100 tasks
    # and that key is the projection, not data: about m x d floats
    assert len(pickle.dumps(est)) < est.projection_.nbytes + 16_384
    # refitting the estimator later does not change the lazy array
    before = Y[:5].compute(scheduler="synchronous")
    est.fit(_data(100, d=64, seed=1))
    assert_array_equal(Y[:5].compute(scheduler="synchronous"), before)


def test_bad_dask_input_gets_the_in_memory_errors():
    est = PositiveRandomFeatures(16, random_state=0).fit(_data(100))
    with pytest.raises(ValueError, match="X has 5 features, but PositiveRandomFeatures"):
        est.transform(da.zeros((10, 5)))
    with pytest.raises(ValueError, match="2-D array"):
        PositiveRandomFeatures(16).fit(da.zeros((10, 5, 2)))
    bad = _data(100)
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        PositiveRandomFeatures(16, estimator="optimal").fit(da.from_array(bad, chunks=50))
    lazy = est.transform(da.from_array(bad, chunks=50))  # lazy: the chunk's task raises
    with pytest.raises(ValueError, match="NaN"):
        lazy.compute(scheduler="synchronous")


# ------------------------------------------------------------------------------- attention

ESTIMATORS = [
    dict(estimator="positive"),
    dict(estimator="hyperbolic"),
    dict(estimator="trig", projection="iid"),
    dict(estimator="optimal"),
    dict(estimator="saderf"),
    dict(activation="relu"),
]


def _qkv(B=2, H=1, L=4 * CAUSAL_BLOCK + 300, d=8, dv=6, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    Q, K = (rng.normal(size=(B, H, L, d)) * 0.5 for _ in range(2))
    V = rng.normal(size=(B, H, L, dv))
    # padded runs across chunk boundaries, and one stretch fully padded in sequence 0
    mask = np.zeros((B, L), dtype=bool)
    for start in (CAUSAL_BLOCK - 100, 3 * CAUSAL_BLOCK - 7):
        mask[:, start : start + 250] = True
    mask[0, 2 * CAUSAL_BLOCK : 3 * CAUSAL_BLOCK] = True
    return (*(X.astype(dtype) for X in (Q, K, V)), mask)


def _row_roundoff(att, Q, K, V, mask, causal, n_chunks, dtype, rows):
    """A bound on the round-off of summing a row's key terms in another order: each of the
    n_chunks partial sums and merges adds at most a few eps of the sum of the terms'
    magnitudes, and the row's output divides by its normalizer, so the error of output
    ``t`` is at most ``c n_chunks eps Σ_j |A_tj| max|v|`` (``A`` the normalized attention
    matrix; Σ_j |A_tj| = 1 for positive features, the condition number for signed ones).
    c = 16 covers the ~4 roundings of a merge and of the GEMM that forms each state."""
    cond = 1.0
    if not att._map().exponential:
        queries = Q[rows] if not causal else Q
        A = att.attention_matrix(queries, K, causal=causal, key_padding_mask=mask)
        cond = np.abs(A).sum(axis=-1)[... if not causal else rows]
    return 16 * n_chunks * np.finfo(dtype).eps * cond * np.abs(V).max()


@pytest.mark.filterwarnings("ignore::favorkit.NumericalWarning")  # trig: rows set to 0
@pytest.mark.parametrize("params", ESTIMATORS, ids=[str(p) for p in ESTIMATORS])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_on_the_cluster_equals_the_in_memory_result(client, params, causal, dtype):
    Q, K, V, mask = _qkv(dtype=dtype)
    att = FavorAttention(16, causal=causal, random_state=0, **params).fit(Q)
    ref = att.attend(Q, K, V, key_padding_mask=mask)
    # batch axis in chunks of 1, the sequence in 5 chunks (4 aligned, 1 ragged)
    chunks = (1, 1, CAUSAL_BLOCK, -1)
    Qd, Kd, Vd = (da.from_array(X, chunks=chunks) for X in (Q, K, V))
    maskd = da.from_array(mask, chunks=(1, 700))  # realigned to the keys' chunks
    out = att.attend(Qd, Kd, Vd, key_padding_mask=maskd)
    assert isinstance(out, da.Array) and out.chunks[:3] == Qd.chunks[:3]
    assert out.dtype == ref.dtype
    got = out.compute()
    if causal:
        assert_array_equal(got, ref)
        return
    n_chunks = len(Qd.chunks[2])
    rows = np.arange(0, Q.shape[2], 7)  # the bound's condition numbers on every 7th row
    for b in range(Q.shape[0]):
        bound = _row_roundoff(att, Q[b, 0], K[b, 0], V[b, 0], mask[b], False, n_chunks, dtype, rows)
        err = np.abs(got[b, 0, rows] - ref[b, 0, rows]).max(axis=-1)
        assert (err <= bound).all(), float((err / bound).max())


def test_ragged_causal_chunks_agree_to_round_off(client):
    Q, K, V, mask = _qkv(B=1, H=1)
    att = FavorAttention(16, causal=True, random_state=0).fit(Q)
    ref = att.attend(Q, K, V, key_padding_mask=mask[:1])
    Qd, Kd, Vd = (da.from_array(X, chunks=(1, 1, 777, -1)) for X in (Q, K, V))
    got = att.attend(Qd, Kd, Vd, key_padding_mask=mask[:1]).compute()
    rows = np.arange(Q.shape[2])
    bound = _row_roundoff(att, Q[0, 0], K[0, 0], V[0, 0], mask[0], True, 6, np.float64, rows)
    assert (np.abs(got[0, 0] - ref[0, 0]).max(axis=-1) <= bound).all()


def test_causal_attention_on_dask_never_sees_the_future():
    Q, K, V, _ = _qkv(B=1, H=1)
    att = FavorAttention(16, causal=True, random_state=0).fit(Q)
    Kf, Vf = K.copy(), V.copy()
    cut = 3 * CAUSAL_BLOCK + 11
    Kf[..., cut:, :] *= -3.0
    Vf[..., cut:, :] += 10.0
    run = [
        att.attend(*(da.from_array(X, chunks=(1, 1, 1000, -1)) for X in xs)).compute(
            scheduler="synchronous"
        )
        for xs in ((Q, K, V), (Q, Kf, Vf))
    ]
    assert_array_equal(run[0][..., :cut, :], run[1][..., :cut, :])
    assert not np.array_equal(run[0][..., cut:, :], run[1][..., cut:, :])


def test_dask_attention_is_lazy_and_mixes_with_numpy_inputs():
    Q, K, V, mask = _qkv(B=1, H=2, L=3000)
    Qd = da.from_array(Q, chunks=(1, 1, 1000, -1))
    lazy = favor_attention(Qd, K, V, n_components=16, key_padding_mask=mask[:1], random_state=0)
    assert lazy.chunks == ((1,), (1, 1), (1000,) * 3, (V.shape[-1],))
    ref = favor_attention(Q, K, V, n_components=16, key_padding_mask=mask[:1], random_state=0)
    bound = 16 * 3 * np.finfo(np.float64).eps * np.abs(V).max()
    np.testing.assert_allclose(lazy.compute(scheduler="threads"), ref, rtol=0, atol=bound)
    untouched = _untouchable(Q.shape, (1, 1, 1000, 8))
    favor_attention(untouched, untouched, untouched, n_components=16, causal=True)


def test_dask_attention_errors_are_the_in_memory_ones():
    Q, K, V, _ = _qkv(B=1, H=1, L=500)
    Qd = da.from_array(Q, chunks=(1, 1, 100, -1))
    with pytest.raises(ValueError, match="as many queries as keys"):
        favor_attention(Qd, K[..., :400, :], V[..., :400, :], causal=True)
    with pytest.raises(ValueError, match="key_padding_mask must be a boolean"):
        favor_attention(Qd, K, V, key_padding_mask=np.zeros(500))
    with pytest.raises(ValueError, match="needs A"):
        favor_attention(Qd, K, V, estimator="optimal", causal=True)
    bad = Q.copy()
    bad[0, 0, 321, 2] = np.inf
    lazy = favor_attention(da.from_array(bad, chunks=(1, 1, 100, -1)), K, V, causal=True)
    with pytest.raises(ValueError, match="Q contains NaN or inf"):
        lazy.compute(scheduler="synchronous")


def _die_once(block, marker, block_info=None):
    """Kill the worker process computing the sequence's third chunk, the first time only."""
    if block_info[0]["chunk-location"][2] == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return block


def test_a_worker_that_dies_mid_sequence_is_replaced_and_the_result_is_right(client, tmp_path):
    Q, K, V, mask = _qkv(B=1, H=2)
    att = FavorAttention(16, causal=True, random_state=0).fit(Q)
    ref = att.attend(Q, K, V, key_padding_mask=mask[:1])
    marker = str(tmp_path / "died")
    Qd, Kd, Vd = (da.from_array(X, chunks=(1, 1, CAUSAL_BLOCK, -1)) for X in (Q, K, V))
    Qd = Qd.map_blocks(_die_once, marker, dtype=Q.dtype)
    got = att.attend(Qd, Kd, Vd, key_padding_mask=mask[:1]).compute()
    assert os.path.exists(marker)  # a worker did die mid-computation
    assert_array_equal(got, ref)  # and the chain was recomputed from what was lost

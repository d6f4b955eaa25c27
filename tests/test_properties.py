"""Properties of every public path, checked with hypothesis over hostile but finite input.

Each property runs 200 examples (``derandomize=True``: the same examples on every run) over
every estimator, kernel and projection, float32 and float64, input norms drawn
log-uniformly from 1e-3 to 1e3, logits ``|scale q·k|`` up to 1e4 and values from 1e-20 to
near the dtype's largest number:

* finite in, finite out (or a clear error, and only where one is documented), and a
  predicted error that is a number or inf, never NaN;
* the positive estimators keep every row inside the range of the value rows it sees;
* causal attention never leaks: changing keys or values from position t on leaves every
  earlier output unchanged, bitwise;
* a padded key is a missing key (mask = truncation);
* heads are independent (batched = a loop over heads), and so is the thread count;
* estimators survive pickling and cloning;
* the transformers return finite features (and no all-zero rows of positive features) or
  raise an error that names the fix, even for entries near the dtype's largest number.
"""

import pickle
import warnings

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from sklearn.base import clone

from favorkit import FavorAttention, OrthogonalRFF, PositiveRandomFeatures, maps, sampling
from favorkit.accuracy import predict_attention_error
from favorkit.attention._engine import tuned

POSITIVE = maps.names("exponential")
PROJECTIONS = tuple(sampling.PROJECTIONS)
GENERALIZED = ("relu", "elu", "exp", "abs")
EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps), np.dtype(np.float64): 2.3e-16}
VALUE_MAX = {np.dtype(np.float32): 1e37, np.dtype(np.float64): 1e300}

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def log_uniform(low, high):
    return st.floats(np.log10(low), np.log10(high)).map(lambda e: float(10.0**e))


class Case:
    """One attention problem: inputs, a fitted estimator, and the sizes that bound rounding."""

    def __init__(self, data, *, positive_only=False, kernels=False):
        draw = data.draw
        self.dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64]), "dtype"))
        names = POSITIVE if positive_only else (*POSITIVE, "trig")
        self.activation = None
        if kernels and draw(st.booleans(), "generalized kernel"):
            self.activation = draw(st.sampled_from(GENERALIZED), "activation")
        self.estimator = draw(st.sampled_from(names), "estimator")
        self.projection = draw(st.sampled_from(PROJECTIONS), "projection")
        self.causal = draw(st.booleans(), "causal")
        heads = draw(st.integers(1, 2), "heads")
        L = draw(st.integers(1, 80), "L")
        d = draw(st.integers(1, 8), "d")
        dv = draw(st.integers(1, 3), "d_v")
        self.m = draw(st.integers(1, 16), "m")
        q_norm = draw(log_uniform(1e-3, 1e3), "|q|")
        k_norm = draw(log_uniform(1e-3, 1e3), "|k|")
        logit = draw(log_uniform(1e-3, 1e4), "max |scale q·k|")
        v_scale = draw(log_uniform(1e-20, VALUE_MAX[self.dtype]), "|v|")
        seed = draw(st.integers(0, 2**32 - 1), "seed")
        rng = np.random.default_rng(seed)

        def rows(norm):
            x = rng.normal(size=(heads, L, d))
            x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-300)
            return x * norm * rng.uniform(0.5, 1.0, size=(heads, L, 1))

        self.Q, self.K = rows(q_norm).astype(self.dtype), rows(k_norm).astype(self.dtype)
        V = rng.normal(size=(heads, L, dv))
        V[..., 0] = rng.uniform(1.0, 2.0, size=(heads, L))  # positive: a zero row is wrong
        self.V = (V * v_scale).astype(self.dtype)
        self.scale = logit / (q_norm * k_norm)
        self.rng = rng
        self.att = FavorAttention(
            self.m,
            estimator=self.estimator,
            activation=self.activation,
            projection=self.projection,
            scale=self.scale,
            random_state=seed % 1000,
        ).fit(self.Q, keys=self.K)

    @property
    def positive(self):
        return self.activation is None and self.estimator in POSITIVE

    def attend(self, Q=None, K=None, V=None, **kwargs):
        kwargs.setdefault("causal", self.causal)
        Q, K, V = (
            (self.Q if Q is None else Q),
            (self.K if K is None else K),
            (V if V is not None else self.V),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the signed features' guard (tested elsewhere)
            return self.att.attend(Q, K, V, **kwargs)

    def rounding(self):
        """Slack of a weighted average of L values over (up to 2) m features: n eps."""
        return (self.Q.shape[-2] + 2 * self.m + 4) * EPS[self.dtype]


def _attend_or_documented_error(case):
    """The output, or None where the signed features' documented overflow error applies."""
    try:
        return case.attend()
    except ValueError as error:
        message = str(error)
        assert not case.positive, message  # the positive estimators never give up here
        assert "overflow" in message or "non-finite features" in message, message
        return None


@PROPERTY
@given(data=st.data())
def test_finite_in_finite_out(data):
    case = Case(data, kernels=True)
    out = _attend_or_documented_error(case)
    if out is not None:
        assert out.dtype == case.dtype
        assert np.isfinite(out).all()


@PROPERTY
@given(data=st.data())
def test_error_predictions_are_numbers(data):
    """The predicted error is a number or inf (flagged heavy-tailed), never NaN, and so are
    its standard error and MSE, whatever the scales."""
    case = Case(data, positive_only=data.draw(st.booleans(), "positive only"))
    projection = "iid" if case.estimator == "trig" else case.projection
    if projection not in ("iid", "orthogonal", "simplex"):
        projection = "orthogonal"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        err = predict_attention_error(
            case.Q, case.K, case.V, case.m, estimator=case.estimator, projection=projection,
            causal=case.causal, scale=case.scale, n_queries=16, n_pairs=8,
        )  # fmt: skip
    for value in (err.relative_error, err.standard_error, err.mse):
        assert not np.isnan(value) and value >= 0, err
    assert np.isfinite(err.relative_error) or err.heavy_tailed, err


@PROPERTY
@given(data=st.data())
def test_positive_estimators_stay_inside_the_visible_range_of_v(data):
    case = Case(data, positive_only=True)
    out = case.attend().astype(np.float64)
    V = case.V.astype(np.float64)
    L = V.shape[-2]
    for t in range(L):
        seen = V[..., : t + 1, :] if case.causal else V
        slack = case.rounding() * np.abs(seen).max(axis=-2)
        assert np.all(out[..., t, :] >= seen.min(axis=-2) - slack)
        assert np.all(out[..., t, :] <= seen.max(axis=-2) + slack)
    assert np.all(out[..., 0] > 0)  # the first value column is positive: no zero rows


@PROPERTY
@given(data=st.data())
def test_causal_attention_never_leaks(data):
    case = Case(data)
    L = case.Q.shape[-2]
    t = data.draw(st.integers(0, L - 1), "t")
    chunk = data.draw(st.sampled_from([1, 3, 16, 32]), "chunk")
    block = data.draw(st.sampled_from([5, 40, 1024]), "block")
    new_norm = data.draw(log_uniform(1e-3, 1e3), "|new k|")
    K2, V2 = case.K.copy(), case.V.copy()
    K2[..., t:, :] = (case.rng.normal(size=K2[..., t:, :].shape) * new_norm).astype(case.dtype)
    V2[..., t:, :] = (case.rng.normal(size=V2[..., t:, :].shape) * 1e3).astype(case.dtype)
    with tuned(chunk=chunk, causal_block_rows=block):
        try:
            base = case.attend(causal=True)
            changed = case.attend(K=K2, V=V2, causal=True)
        except ValueError as error:  # trig features that overflow: documented
            assert not case.positive and "overflow" in str(error)
            return
    assert_array_equal(changed[..., :t, :], base[..., :t, :])


@PROPERTY
@given(data=st.data())
def test_a_padded_key_is_a_missing_key(data):
    case = Case(data, positive_only=True)
    L = case.Q.shape[-2]
    keep = data.draw(st.integers(1, L), "keep")
    mask = np.zeros(L, dtype=bool)
    mask[keep:] = True
    masked = case.attend(key_padding_mask=mask)
    Kt, Vt = case.K[..., :keep, :], case.V[..., :keep, :]
    # The same terms, summed in GEMMs of another shape (a shorter sequence): equal to
    # rounding. Causal rows before keep see the same keys; the others, none of the padded.
    if case.causal:
        truncated = case.attend(Q=case.Q[..., :keep, :], K=Kt, V=Vt)
        masked = masked[..., :keep, :]
    else:
        truncated = case.attend(K=Kt, V=Vt)
    slack = case.rounding() * np.abs(Vt.astype(np.float64)).max(axis=-2, keepdims=True)
    assert np.all(np.abs(masked.astype(np.float64) - truncated) <= slack)


@PROPERTY
@given(data=st.data())
def test_heads_are_independent(data):
    case = Case(data)
    try:
        batched = case.attend()
    except ValueError:
        return  # the documented trig overflow (test_finite_in_finite_out checks the message)
    for h in range(case.Q.shape[0]):
        one = case.attend(Q=case.Q[h], K=case.K[h], V=case.V[h])
        assert_array_equal(batched[h], one)


@PROPERTY
@given(data=st.data())
def test_the_thread_count_does_not_change_a_bit(data):
    case = Case(data, kernels=True)
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _attend_or_documented_error(case)
        numba.set_num_threads(2)
        two = _attend_or_documented_error(case)
    finally:
        numba.set_num_threads(n)
    if one is not None:
        assert_array_equal(one, two)


@PROPERTY
@given(data=st.data())
def test_pickle_and_clone_round_trips(data):
    case = Case(data, positive_only=True)
    out = case.attend()
    restored = pickle.loads(pickle.dumps(case.att))
    assert_array_equal(restored.attend(case.Q, case.K, case.V, causal=case.causal), out)
    refit = clone(case.att).fit(case.Q, keys=case.K)
    assert_array_equal(refit.attend(case.Q, case.K, case.V, causal=case.causal), out)


# --- transformers ------------------------------------------------------------------------------

TRANSFORMER_ERRORS = ("overflow", "below the smallest normal", "squared norm")


@PROPERTY
@given(data=st.data())
def test_transformers_give_finite_features_or_a_clear_error(data):
    draw = data.draw
    dtype = draw(st.sampled_from([np.float32, np.float64]), "dtype")
    kernel = draw(st.sampled_from(["softmax", "gaussian"]), "kernel")
    projection = draw(st.sampled_from(PROJECTIONS), "projection")
    cls, kwargs = draw(
        st.sampled_from(
            [(PositiveRandomFeatures, {"estimator": e}) for e in POSITIVE]
            + [(OrthogonalRFF, {"features": f}) for f in ("cossin", "cos")]
        ),
        "transformer",
    )
    n, d = draw(st.integers(1, 30), "n"), draw(st.integers(1, 8), "d")
    # Beyond the usual ranges on purpose: entries up to near the dtype's largest number
    # and gamma up to 1e80 (where float32 projections overflow) must still give finite
    # features or an error.
    wide = draw(st.booleans(), "hostile range")
    norm = draw(log_uniform(1e-3, VALUE_MAX[np.dtype(dtype)] if wide else 1e3), "|x|")
    gamma = draw(log_uniform(1e-3, 1e80 if wide else 1e3), "gamma")
    sparse = draw(st.booleans(), "csr")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), "seed"))
    X = (rng.normal(size=(n, d)) * norm / np.sqrt(d)).astype(dtype)
    if sparse:
        import scipy.sparse as sp

        X = sp.csr_matrix(X)
    est = cls(8, kernel=kernel, gamma=gamma, projection=projection, random_state=0, **kwargs)
    try:
        F = est.fit(X).transform(X)
    except ValueError as error:
        assert any(text in str(error) for text in TRANSFORMER_ERRORS), str(error)
        return
    assert F.dtype == dtype
    assert np.isfinite(F).all()
    if cls is PositiveRandomFeatures:  # a row of zero features would estimate K(x, x) = 0
        assert np.all(F.max(axis=1) > 0)


@pytest.mark.parametrize(
    "test",
    [
        test_finite_in_finite_out,
        test_error_predictions_are_numbers,
        test_positive_estimators_stay_inside_the_visible_range_of_v,
        test_causal_attention_never_leaks,
        test_a_padded_key_is_a_missing_key,
        test_heads_are_independent,
        test_the_thread_count_does_not_change_a_bit,
        test_pickle_and_clone_round_trips,
        test_transformers_give_finite_features_or_a_clear_error,
    ],
)
def test_every_property_runs_at_least_200_examples(test):
    assert test._hypothesis_internal_use_settings.max_examples >= 200

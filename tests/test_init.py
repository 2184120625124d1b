"""Weight initialisers (fastnn.init): shapes, dtypes, distributions, seeding, errors."""
import math

import numpy as np
import pytest

from fastnn import init, nn

# A large draw: 240 000 values, so a sample std is within ~0.3 % of the true
# one (1/sqrt(2n) relative); the tolerances below are about 5 of those sigmas.
BIG = (400, 600)
N_BIG = BIG[0] * BIG[1]


def _expected_scale(name, shape, activation="relu", alpha=0.01):
    """(kind, parameter) of each initialiser with default arguments, from the
    formulas in fastnn.init's docstring: 'uniform' -> bound, 'normal' -> std."""
    fan_in, fan_out = shape
    gain = init.calculate_gain(activation, alpha)
    return {
        "normal": ("normal", 0.01),
        "uniform": ("uniform", 0.05),
        "xavier_uniform": ("uniform", math.sqrt(6 / (fan_in + fan_out))),
        "xavier_normal": ("normal", math.sqrt(2 / (fan_in + fan_out))),
        "he_uniform": ("uniform", gain * math.sqrt(3 / fan_in)),
        "he_normal": ("normal", gain / math.sqrt(fan_in)),
        "sklearn_uniform": ("uniform", math.sqrt((2 if activation == "sigmoid" else 6)
                                                 / (fan_in + fan_out))),
    }[name]


def _draw(name, shape, rng, dtype=np.float32, activation="relu"):
    fn = getattr(init, name)
    if name.startswith("he_") or name == "sklearn_uniform":
        return fn(shape, activation, rng=rng, dtype=dtype)
    return fn(shape, rng=rng, dtype=dtype)


def _check_distribution(x, kind, scale):
    x = x.astype(np.float64)
    std = scale / math.sqrt(3) if kind == "uniform" else scale
    assert abs(x.mean()) < 5 * std / math.sqrt(x.size)
    assert x.std() == pytest.approx(std, rel=0.015)
    if kind == "uniform":
        # within the bounds, and reaching close to them
        assert np.abs(x).max() <= scale * (1 + 1e-6)
        assert np.abs(x).max() > 0.999 * scale
    else:
        # the normal's tail: about 4.6 % of the draws beyond 2 sigma
        assert np.mean(np.abs(x) > 2 * std) == pytest.approx(0.0455, abs=0.003)


RANDOM_INITS = ("normal", "uniform", "xavier_uniform", "xavier_normal", "he_uniform",
                "he_normal", "sklearn_uniform")


@pytest.mark.parametrize("name", RANDOM_INITS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_dtype_and_distribution(name, dtype):
    x = _draw(name, BIG, rng=12345, dtype=dtype)
    assert x.shape == BIG and x.dtype == dtype and x.flags.c_contiguous
    _check_distribution(x, *_expected_scale(name, BIG))


def test_default_dtype_is_float32():
    for name in RANDOM_INITS:
        assert _draw(name, (3, 4), rng=0).dtype == np.float32
    assert init.zeros((3, 4)).dtype == np.float32


@pytest.mark.parametrize("name", ["he_uniform", "he_normal", "xavier_uniform", "xavier_normal",
                                  "sklearn_uniform"])
def test_fans_are_read_from_n_in_n_out(name):
    # (n_in, n_out) and its transpose have different fan_in: He must differ,
    # Xavier and scikit-learn's rule (symmetric in the fans) must not.
    for shape in [(900, 100), (100, 900)]:
        x = _draw(name, shape, rng=7)
        _check_distribution(x, *_expected_scale(name, shape))


@pytest.mark.parametrize("activation,alpha", [("relu", 0.01), ("leaky_relu", 0.2),
                                              ("tanh", 0.01), ("identity", 0.01)])
def test_he_uses_the_gain_of_the_activation(activation, alpha):
    x = init.he_normal(BIG, activation, alpha, rng=3)
    _check_distribution(x, "normal", init.calculate_gain(activation, alpha) / math.sqrt(BIG[0]))


def test_calculate_gain_values():
    assert init.calculate_gain("identity") == 1.0
    assert init.calculate_gain("sigmoid") == 1.0
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))


def test_sklearn_uniform_uses_factor_2_for_sigmoid():
    x = init.sklearn_uniform(BIG, "sigmoid", rng=4)
    _check_distribution(x, *_expected_scale("sklearn_uniform", BIG, "sigmoid"))


def test_explicit_scale_arguments():
    _check_distribution(init.normal(BIG, std=0.3, rng=1), "normal", 0.3)
    _check_distribution(init.uniform(BIG, a=2.0, rng=1), "uniform", 2.0)
    _check_distribution(init.xavier_normal(BIG, gain=2.0, rng=1), "normal",
                        2.0 * math.sqrt(2 / sum(BIG)))


def test_zeros():
    z = init.zeros((3, 5), rng=123, dtype=np.float64)
    assert z.shape == (3, 5) and z.dtype == np.float64 and not z.any()


@pytest.mark.parametrize("name", RANDOM_INITS)
def test_seeded_reproducibility(name):
    a = _draw(name, (20, 30), rng=2024)
    assert np.array_equal(a, _draw(name, (20, 30), rng=2024))
    # a Generator in the same state, and a SeedSequence of that seed, give the same draw
    assert np.array_equal(a, _draw(name, (20, 30), rng=np.random.default_rng(2024)))
    assert np.array_equal(a, _draw(name, (20, 30), rng=np.random.SeedSequence(2024)))
    assert not np.array_equal(a, _draw(name, (20, 30), rng=2025))
    # a Generator is used, not copied: two draws from it differ
    gen = np.random.default_rng(5)
    assert not np.array_equal(_draw(name, (20, 30), rng=gen), _draw(name, (20, 30), rng=gen))
    # no seed: fresh entropy each call
    assert not np.array_equal(_draw(name, (20, 30), rng=None), _draw(name, (20, 30), rng=None))


@pytest.mark.parametrize("name", RANDOM_INITS)
def test_float32_is_the_rounded_float64_draw(name):
    a64 = _draw(name, (10, 20), rng=9, dtype=np.float64)
    a32 = _draw(name, (10, 20), rng=9, dtype=np.float32)
    assert np.array_equal(a32, a64.astype(np.float32))


def test_get_by_name_and_binding_to_the_activation():
    assert init.get("xavier_uniform") is init.xavier_uniform
    assert init.get("glorot_normal") is init.xavier_normal
    custom = lambda shape, rng=None, dtype=np.float32: np.ones(shape, dtype)  # noqa: E731
    assert init.get(custom) is custom
    bound = init.get("he_normal", "leaky_relu", 0.3)
    assert np.array_equal(bound((5, 6), rng=1, dtype=np.float64),
                          init.he_normal((5, 6), "leaky_relu", 0.3, rng=1, dtype=np.float64))
    sk = init.get("sklearn_uniform", "sigmoid")
    assert np.array_equal(sk((5, 6), rng=1), init.sklearn_uniform((5, 6), "sigmoid", rng=1))


def test_dense_uses_the_initialiser():
    layer = nn.Dense(30, 20, "tanh", init="xavier_normal", rng=11, dtype=np.float64)
    assert np.array_equal(layer.weight.data, init.xavier_normal((30, 20), rng=11, dtype=np.float64))
    assert not layer.bias.data.any()
    # default: scikit-learn's rule for the layer's activation
    layer = nn.Dense(30, 20, "sigmoid", rng=11)
    assert np.array_equal(layer.weight.data, init.sklearn_uniform((30, 20), "sigmoid", rng=11))
    layer = nn.Dense(4, 3, init=lambda shape, rng, dtype: np.full(shape, 0.5, dtype))
    assert np.all(layer.weight.data == 0.5)
    with pytest.raises(ValueError, match="shape"):
        nn.Dense(4, 3, init=lambda shape, rng, dtype: np.zeros((3, 4), dtype))


@pytest.mark.parametrize("call,error", [
    (lambda: init.normal((3, 4), dtype=np.int32), TypeError),
    (lambda: init.uniform((3, 4), dtype=np.float16), TypeError),
    (lambda: init.normal((3, 0)), ValueError),
    (lambda: init.normal((-1, 2)), ValueError),
    (lambda: init.normal((2.5, 3)), TypeError),
    (lambda: init.normal("ab"), TypeError),
    (lambda: init.normal((3, 4), std=0.0), ValueError),
    (lambda: init.normal((3, 4), std=-1.0), ValueError),
    (lambda: init.normal((3, 4), std=float("nan")), ValueError),
    (lambda: init.uniform((3, 4), a=0), ValueError),
    (lambda: init.xavier_uniform((3, 4), gain=0.0), ValueError),
    (lambda: init.xavier_uniform((12,)), ValueError),  # fans need (n_in, n_out)
    (lambda: init.he_normal((2, 3, 4)), ValueError),
    (lambda: init.he_uniform((3, 4), "softplus"), ValueError),
    (lambda: init.he_uniform((3, 4), "leaky_relu", alpha=-0.1), ValueError),
    (lambda: init.normal((3, 4), rng=-1), ValueError),
    (lambda: init.normal((3, 4), rng=True), ValueError),
    (lambda: init.normal((3, 4), rng=1.5), TypeError),
    (lambda: init.normal((3, 4), rng=np.random.RandomState(0)), TypeError),
    (lambda: init.get("no_such_init"), ValueError),
    (lambda: init.calculate_gain("softmax"), ValueError),
])
def test_bad_arguments(call, error):
    with pytest.raises(error):
        call()

import numpy as np
import pytest

from oocstore.errors import UsageError
from oocstore.gs import layout


@pytest.mark.parametrize("deg,p", [(0, 14), (1, 23), (2, 38), (3, 59)])
def test_widths(deg, p):
    assert layout.param_width(deg) == p
    assert layout.record_width(deg) == 3 * p
    assert layout.sh_slice(deg) == slice(11, p)
    assert layout.sh_degree_of_width(p) == deg
    rec = np.arange(3 * p)
    assert rec[layout.params_slice(deg)].tolist() == list(range(p))
    assert rec[layout.exp_avg_slice(deg)].tolist() == list(range(p, 2 * p))
    assert rec[layout.exp_avg_sq_slice(deg)].tolist() == list(range(2 * p, 3 * p))


def test_split_and_join_are_inverse_views():
    rng = np.random.default_rng(0)
    params = rng.normal(size=(5, layout.param_width(2))).astype(np.float32)
    parts = layout.split_params(params, 2)
    assert parts["means"].shape == (5, 3) and parts["quats"].shape == (5, 4)
    assert parts["log_scales"].shape == (5, 3) and parts["opacity_logit"].shape == (5, 1)
    assert parts["sh"].shape == (5, 9, 3)
    # coefficient-major: the DC term of channel c is column 11 + c
    assert np.array_equal(parts["sh"][:, 0, :], params[:, 11:14])
    assert np.array_equal(parts["sh"][:, 1, 2], params[:, 16])
    parts["means"][0, 0] = 42.0  # views, not copies
    assert params[0, 0] == 42.0
    again = layout.join_params(**parts)
    assert np.array_equal(again, params)


def test_make_records_zeroes_moments():
    p = np.ones((3, layout.param_width(0)), dtype=np.float32)
    rec = layout.make_records(p)
    assert rec.shape == (3, layout.record_width(0)) and rec.dtype == np.float32
    assert np.all(rec[:, :14] == 1) and np.all(rec[:, 14:] == 0)


def test_bad_degrees_and_widths():
    with pytest.raises(UsageError, match="out of range"):
        layout.param_width(4)
    with pytest.raises(UsageError, match="integer"):
        layout.param_width(1.5)
    with pytest.raises(UsageError, match="no SH degree"):
        layout.sh_degree_of_width(20)
    with pytest.raises(UsageError, match=r"expected \[N, 23\]"):
        layout.split_params(np.zeros((2, 14)), 1)

"""Visibility-masked Adam: equals torch's Adam on the stepped rows, leaves the rest alone."""

from __future__ import annotations

import pytest
import torch

from oocstore.errors import UsageError
from oocstore.gs.adam import AdamConfig, masked_adam_
from oocstore.gs.layout import SH_START, param_width


def test_masked_rows_match_torch_adam_and_others_keep_their_state():
    torch.manual_seed(0)
    deg = 1
    p = param_width(deg)
    cfg = AdamConfig(eps=1e-8)
    lr = cfg.column_lrs(deg, scene_scale=2.0)
    params = torch.randn(6, p)
    m1, m2 = torch.zeros(6, p), torch.zeros(6, p)
    ref = params[:3].clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [ref], "lr": 1.0}], betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    for step in range(1, 6):
        grad = torch.randn(6, p)
        mask = torch.tensor([True, True, True, False, False, step == 3])
        before = (params[3:5].clone(), m1[3:5].clone(), m2[3:5].clone())
        assert masked_adam_(params, m1, m2, grad, mask, lr, step, cfg) == int(mask.sum())
        # torch's Adam with lr 1 on (grad * lr): the per-column rate scales the update only,
        # so compare through the update direction m_hat / (sqrt(v_hat) + eps)
        old = ref.detach().clone()
        ref.grad = grad[:3].clone()
        opt.step()
        direction = old - ref.detach()
        expected = old - direction * lr
        torch.testing.assert_close(params[:3], expected, rtol=1e-5, atol=1e-6)
        ref.data.copy_(params[:3])
        for a, b in zip(before, (params[3:5], m1[3:5], m2[3:5])):
            assert torch.equal(a, b)  # invisible rows: parameters and moments unchanged
    assert torch.count_nonzero(m1[5]) > 0 and torch.count_nonzero(m1[3]) == 0


def test_column_learning_rates_follow_the_groups():
    cfg = AdamConfig()
    lr = cfg.column_lrs(2, scene_scale=3.0)
    assert lr.shape == (param_width(2),)
    assert torch.allclose(lr[0:3], torch.tensor(1.6e-4 * 3.0))
    assert lr[3] == pytest.approx(1e-3) and lr[7] == pytest.approx(5e-3)
    assert lr[10] == pytest.approx(5e-2)
    assert torch.allclose(lr[SH_START:SH_START + 3], torch.tensor(2.5e-3))
    assert torch.allclose(lr[SH_START + 3:], torch.tensor(2.5e-3 / 20))


def test_bad_config_and_step():
    with pytest.raises(UsageError, match="learning rate means"):
        AdamConfig(means=-1.0)
    p = torch.zeros(1, param_width(0))
    with pytest.raises(UsageError, match="steps count from 1"):
        masked_adam_(p, p.clone(), p.clone(), p.clone(), torch.ones(1, dtype=torch.bool),
                     AdamConfig().column_lrs(0), 0, AdamConfig())

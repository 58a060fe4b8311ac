"""reg=contrastive: CLIP's symmetric InfoNCE and the VSE hinge loss against closed forms, gradients, the plug-in
contract, and the effect of the shipped defaults on a real model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmfusion.contract import FusionOutput
from mmfusion.errors import ConfigError
from mmfusion.plugins.contrastive import Contrastive, clip_logits, symmetric_infonce, vse_hinge
from mmfusion.plugins.coordination import modality_pairs

from .objective_helpers import infonce_probe, linear_cca_heldout, short_run
from .reg_helpers import TinyFusion, attach, redundant_batch


def gaussian_critic(x: torch.Tensor, y: torch.Tensor, rho: float) -> torch.Tensor:
    """``log p(x_i, y_j) / (p(x_i) p(y_j))`` for every pair: the optimal critic for per-dimension correlation rho."""
    sx, sy = (x**2).sum(1)[:, None], (y**2).sum(1)[None, :]
    q = sx + sy - 2 * rho * x @ y.T
    return -q / (2 * (1 - rho**2)) + (sx + sy) / 2 - x.shape[1] / 2 * math.log(1 - rho**2)


def correlated_pair(n: int, d: int, rho: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("d,rho,batch", [(1, 0.5, 256), (2, 0.5, 128), (4, 0.3, 512)])
def test_infonce_with_ideal_critic_matches_closed_form_mi(d, rho, batch):
    """MI << log B: the estimate is within Monte-Carlo error of I = -(d/2) log(1 - rho^2), and always <= log B."""
    g = torch.Generator().manual_seed(0)
    mi = -d / 2 * math.log(1 - rho**2)
    est = torch.tensor(
        [
            float(symmetric_infonce(gaussian_critic(*correlated_pair(batch, d, rho, g), rho))[1])
            for _ in range(200)
        ]
    )
    assert (est <= math.log(batch) + 1e-12).all()
    se = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - mi) < 4 * se + 0.005, (float(est.mean()), mi, se)


def test_infonce_saturates_at_log_batch_when_mi_is_large():
    g = torch.Generator().manual_seed(1)
    mi, batch = -20 / 2 * math.log(1 - 0.9**2), 64  # 16.6 nats >> log 64 = 4.16
    est = [
        float(symmetric_infonce(gaussian_critic(*correlated_pair(batch, 20, 0.9, g), 0.9))[1])
        for _ in range(20)
    ]
    assert mi > 3 * math.log(batch)
    assert all(e <= math.log(batch) + 1e-12 for e in est)
    assert min(est) > math.log(batch) - 0.01


def test_symmetric_infonce_is_mean_of_row_and_column_cross_entropies():
    logits = torch.randn(7, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = -(logits.diagonal() - logits.logsumexp(1)).mean()
    cols = -(logits.diagonal() - logits.logsumexp(0)).mean()
    loss, est = symmetric_infonce(logits)
    torch.testing.assert_close(loss, (rows + cols) / 2)
    torch.testing.assert_close(est, math.log(7) - loss)


def test_clip_logits_normalise_and_clip_scale():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    cos = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    torch.testing.assert_close(clip_logits(3 * a, b, torch.tensor(math.log(10.0))), 10 * cos)
    torch.testing.assert_close(clip_logits(a, b, torch.tensor(9.0)), 100 * cos)  # exp(9) > 100: clipped


def test_vse_hinge_matches_explicit_loops():
    g = torch.Generator().manual_seed(4)
    s = torch.rand(6, 6, generator=g, dtype=torch.float64) * 2 - 1
    alpha, n = 0.3, 6
    for red in ("sum", "max"):
        agg = sum if red == "sum" else max
        ta = sum(agg(max(0.0, alpha - s[i, i] + s[i, j]) for j in range(n) if j != i) for i in range(n)) / n
        tb = sum(agg(max(0.0, alpha - s[j, j] + s[i, j]) for i in range(n) if i != j) for j in range(n)) / n
        assert float(vse_hinge(s, alpha, red)) == pytest.approx(float(ta + tb), abs=1e-12)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, t: symmetric_infonce(clip_logits(a, b, t))[0], (a, b, t))
    for red in ("sum", "max"):
        assert torch.autograd.gradcheck(
            lambda a, b, red=red: vse_hinge(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T, 0.5, red),
            (a, b),
        )


@pytest.mark.parametrize("form", ["infonce", "hinge"])
def test_plugin_loss_gradcheck_through_projections(form):
    """The whole plug-in term, w.r.t. the unimodal representations, in float64."""
    torch.manual_seed(0)
    model = TinyFusion()
    plug = Contrastive(weight=0.7, form=form, proj_dim=5, margin=0.5)
    attach(plug, model)
    plug.double()
    g = torch.Generator().manual_seed(6)
    uni = {
        m: torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True) for m in model.modalities
    }

    def f(*views):
        out = FusionOutput(
            unimodal=dict(zip(model.modalities, views)),
            fused=torch.zeros(6, 3, dtype=torch.float64),
            prediction=torch.zeros(6, 1, dtype=torch.float64),
        )
        return plug.loss(out, {}, "train").value

    assert torch.autograd.gradcheck(f, tuple(uni.values()))


def test_plugin_value_is_weight_times_mean_over_pairs():
    torch.manual_seed(0)
    model = TinyFusion()
    plug = Contrastive(weight=0.25, proj_dim=6)
    attach(plug, model)
    out = model(redundant_batch(16))
    value = plug.loss(out, {}, "train").value
    z = {m: F.normalize(plug.proj[m](out.unimodal[m]), dim=-1) for m in model.modalities}
    ref = torch.stack(
        [
            symmetric_infonce(math.exp(math.log(1 / 0.07)) * z[a] @ z[b].T)[0]
            for a, b in modality_pairs(model.modalities)
        ]
    ).mean()
    torch.testing.assert_close(value, 0.25 * ref)


def test_temperature_is_learnt_and_clipped_at_100():
    torch.manual_seed(0)
    model = TinyFusion()
    plug = Contrastive(weight=1.0, proj_dim=6, lr=5.0)  # huge lr: t is pushed past log 100 and clipped back
    (opt,) = attach(plug, model)
    batch = redundant_batch(32)
    t0 = float(plug.log_scale.detach())
    for _ in range(20):
        out = model(batch)
        plug.loss(out, batch, "train").value.backward()
        plug.after_backward([opt])
    assert float(plug.log_scale.detach()) != t0
    assert 0.0 <= float(plug.log_scale.detach()) <= math.log(100.0) + 1e-6


def test_single_sample_batch_contributes_zero():
    torch.manual_seed(0)
    model = TinyFusion()
    plug = Contrastive()
    attach(plug, model)
    assert plug.min_batch_size == 2
    out = model(redundant_batch(1))
    term = plug.loss(out, {}, "train")
    assert float(term.value.detach()) == 0.0 and term.logs["skipped"] == 1.0
    assert math.isfinite(float(plug.loss(model(redundant_batch(2)), {}, "train").value.detach()))


@pytest.mark.parametrize(
    "kw",
    [
        {"form": "clip"},
        {"hinge_reduction": "mean"},
        {"weight": -1.0},
        {"temperature_init": 0.001},
        {"proj_dim": 0},
    ],
)
def test_bad_config_is_one_line_config_error(kw):
    with pytest.raises(ConfigError) as e:
        Contrastive(**kw)
    assert "\n" not in str(e.value) and "reg.contrastive" in str(e.value)


def test_shipped_defaults_raise_cross_modal_dependence_on_tfn():
    """A short synthetic run of TFN at the shipped config vs the same run with weight 0: the held-out InfoNCE
    estimate of a fresh linear critic and the held-out canonical correlations between the unimodal
    representations rise (fails if the term is multiplied by 0: both runs are then identical)."""
    overrides = ["model.hidden=8", "model.text_out=16", "data.dims={text:16,audio:8,vision:8}"]
    res = {}
    for name, extra in (("on", []), ("off", ["reg.contrastive.weight=0"])):
        _, outs, _ = short_run("contrastive", overrides + extra, model="tfn")
        tr, va = outs["train"].unimodal, outs["val"].unimodal
        pairs = modality_pairs(tuple(tr))
        res[name] = (
            sum(infonce_probe((tr[a], tr[b]), (va[a], va[b]), dim=4, steps=200) for a, b in pairs),
            sum(linear_cca_heldout((tr[a], tr[b]), (va[a], va[b]), k=4) for a, b in pairs),
        )
    assert res["on"][0] > res["off"][0] + 0.02, res
    assert res["on"][1] > res["off"][1] + 0.1, res

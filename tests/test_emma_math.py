"""EMMA's energy, composition, attention and regulariser against closed forms and autograd (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from mmfusion.emma.attention import AttentionStep, capacity, masked_at_zero_coldness, masking_threshold
from mmfusion.emma.composition import Composition, gibbs_weights, shifted_potential
from mmfusion.emma.dae import TiedDAE, fit_dae
from mmfusion.emma.energy import div_field, grad_potential, laplacian, potential
from mmfusion.emma.regularizer import eta_from_labels, eta_from_laplacian, omega
from mmfusion.errors import ConfigError, DataError


def random_dae(dim: int = 6, hidden: int = 15, seed: int = 0) -> TiedDAE:
    torch.manual_seed(seed)
    dae = TiedDAE(dim, hidden, seed=seed).double()
    with torch.no_grad():
        dae.W.normal_(0, 0.7)
        dae.b_h.normal_(0, 0.5)
        dae.b_r.normal_(0, 0.5)
    return dae


def test_gradient_of_potential_is_m_minus_reconstruction():
    dae = random_dae()
    m = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(potential(dae, m).sum(), m)
    expected = m.detach() - dae.reconstruct(m.detach())
    assert torch.allclose(g, expected, atol=1e-10, rtol=0)
    assert torch.allclose(grad_potential(dae, m.detach()), expected, atol=1e-12, rtol=0)
    # central finite differences along each axis
    eps = 1e-6
    x = m.detach()[0]
    fd = torch.stack(
        [
            (potential(dae, x + eps * e) - potential(dae, x - eps * e)) / (2 * eps)
            for e in torch.eye(6, dtype=torch.float64)
        ]
    )
    assert torch.allclose(fd, expected[0], atol=1e-7)


def test_laplacian_is_trace_of_hessian_and_minus_divergence_of_field():
    dae = random_dae()
    ms = torch.randn(4, 6, dtype=torch.float64)
    lap = laplacian(dae, ms)
    for i in range(4):
        hess = torch.autograd.functional.hessian(lambda x: potential(dae, x), ms[i])
        assert torch.allclose(torch.trace(hess), lap[i], atol=1e-10)
        jac = torch.autograd.functional.jacobian(dae.reconstruct, ms[i])
        assert torch.allclose(jac, jac.T, atol=1e-12)  # tied weights: conservative field
        # the summary's Eq. 10 quantity Tr[W^T diag(s') W] - M is the divergence of r(m) - m = -Delta V
        assert torch.allclose(torch.trace(jac) - 6, -lap[i], atol=1e-10)
        assert torch.allclose(div_field(dae, ms[i : i + 1])[0], -lap[i], atol=1e-12)


def test_energy_of_a_sample_does_not_depend_on_the_batch():
    dae = random_dae()
    batch = torch.randn(16, 6, dtype=torch.float64) * 3
    full = potential(dae, batch)
    for i in range(16):
        assert torch.allclose(potential(dae, batch[i : i + 1]), full[i : i + 1], atol=1e-12)
    assert torch.allclose(potential(dae, batch[:5]), full[:5], atol=1e-12)
    # the author's Frobenius-norm version would differ: check we are not computing that
    frob = (
        -torch.nn.functional.softplus(dae.pre_activation(batch)).sum(-1) + 0.5 * (batch - dae.b_r).norm() ** 2
    )
    assert not torch.allclose(frob, full)


def test_softplus_potential_finite_for_large_preactivations():
    dae = TiedDAE(3, 4)
    with torch.no_grad():
        dae.W.copy_(torch.full((4, 3), 40.0))
        dae.b_h.zero_()
        dae.b_r.zero_()
    m = torch.full((2, 3), 1.0)  # a = 120 in float32: log(1 + exp(a)) would be inf
    v = potential(dae, m)
    assert torch.isfinite(v).all()
    assert torch.allclose(v, torch.full((2,), -4 * 120.0 + 1.5), rtol=1e-6)
    assert torch.isfinite(laplacian(dae, m)).all()
    assert torch.isfinite(potential(dae, -m)).all()


def test_standardization_is_applied_before_the_energy():
    dae = random_dae(dim=3, hidden=5)
    x = torch.randn(50, 3, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64) + 4
    dae.set_standardization(x)
    z = (x - x.mean(0)) / x.std(0, unbiased=False)
    assert torch.allclose(potential(dae, x), potential(dae, z, standardized=True), atol=1e-10)
    with pytest.raises(DataError, match="size 3"):
        potential(dae, torch.zeros(2, 4, dtype=torch.float64))


def test_gibbs_weights_sum_to_one_and_limits_of_coldness():
    e = torch.tensor([[3.0, 1.0, 2.0, 5.0], [0.5, 0.2, 9.0, 0.21]], dtype=torch.float64)
    for tau in (0.0, 0.1, 1.0, 10.0):
        a = gibbs_weights(e, tau)
        assert torch.allclose(a.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(gibbs_weights(e, 0.0), torch.full_like(e, 0.25))
    assert torch.allclose(gibbs_weights(e, 1e-9), torch.full_like(e, 0.25), atol=1e-8)
    hot = gibbs_weights(e, 1e4)
    assert torch.equal(hot.argmax(-1), e.argmin(-1))
    assert (hot.max(-1).values > 1 - 1e-12).all()
    # closed form for one row
    a = gibbs_weights(e[0], 0.7)
    ref = np.exp(-0.7 * e[0].numpy()) / np.exp(-0.7 * e[0].numpy()).sum()
    assert np.allclose(a.numpy(), ref, atol=1e-14)
    with pytest.raises(ConfigError):
        gibbs_weights(e, -1.0)


def test_eq19_masking_threshold_holds_numerically():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        M = int(torch.randint(2, 6, (1,), generator=gen))
        e = torch.rand(512, M, generator=gen, dtype=torch.float64) * 10
        tau = float(torch.rand(1, generator=gen)) * 2 + 0.05
        gain, bias = float(torch.rand(1, generator=gen)) * 5 + 0.5, float(torch.rand(1, generator=gen)) + 0.05
        alpha = gibbs_weights(e, tau)
        beta = torch.relu(torch.tanh(gain * alpha - bias))
        log_z = torch.logsumexp(-tau * e, -1, keepdim=True)
        thr = masking_threshold(gain, bias, log_z, tau)
        masked = e >= thr
        far = (e - thr).abs() > 1e-9  # exclude exact ties
        assert torch.equal((beta == 0)[far], masked[far])
    with pytest.raises(ConfigError):
        masking_threshold(1.0, 0.5, torch.zeros(1), 0.0)
    # tau = 0: alpha = 1/M for all modes; all masked iff b >= G/M (the summary's "no masking" is wrong)
    att = AttentionStep(3, gain_init=1.2, bias_init=0.5)  # b = 0.5 >= G/M = 0.4 -> everything masked
    beta0 = att(gibbs_weights(torch.randn(4, 3), 0.0))
    assert masked_at_zero_coldness(1.2, 0.5, 3) and torch.all(beta0 == 0)
    att = AttentionStep(3, gain_init=3.0, bias_init=0.5)
    beta1 = att(gibbs_weights(torch.randn(4, 3), 0.0))
    assert not masked_at_zero_coldness(3.0, 0.5, 3)
    assert torch.allclose(beta1, torch.full_like(beta1, math.tanh(1.0 - 0.5)), atol=1e-6)


def test_capacity_equals_area_under_beta():
    for g, b in [(1.0, 0.0001), (4.0, 1.0), (12.0, 1.0), (0.5, 1.0)]:
        num, _ = integrate.quad(
            lambda a, g=g, b=b: max(0.0, math.tanh(g * a - b)), 0, 1, points=[b / g], limit=200
        )
        assert float(capacity(g, b)) == pytest.approx(num, abs=1e-9)


def test_composition_forms_and_parametrised_constraints():
    comp = Composition(3, coldness=0.5, form="thesis", seed=1).double()
    comp.v_min.copy_(torch.tensor([-5.0, 1.0, 0.0]))
    v = torch.tensor([[-5.0, 4.0, -3.0], [10.0, 1.0, 0.5]], dtype=torch.float64)
    out = comp(v)
    vp = shifted_potential(v, comp.v_min)
    assert torch.allclose(vp[0], torch.tensor([math.e, 3 + math.e, math.e], dtype=torch.float64))
    phi = comp.w * vp + comp.b
    assert torch.allclose(out["phi"], phi)
    g, c = comp.gamma, comp.coupling
    ref = torch.zeros(2, 3, dtype=torch.float64)
    for n in range(2):
        for i in range(3):
            ref[n, i] = phi[n, i] + sum(
                c[i, j] * phi[n, i] ** g[i, j] * phi[n, j] ** (1 - g[i, j]) for j in range(3) if j != i
            )
    assert torch.allclose(out["E"], ref, atol=1e-12)
    assert torch.allclose(out["S"], ref.sum(-1))
    assert torch.allclose(out["alpha"], torch.softmax(-0.5 * ref, -1))
    # summary form: symmetric gamma, no coupling weights, E_i = sum_k phi_i^g phi_k^(1-g)
    s = Composition(3, form="summary").double()
    with torch.no_grad():
        s.gamma_raw.normal_()
    assert torch.allclose(s.gamma, s.gamma.T)
    ph = torch.rand(2, 3, dtype=torch.float64) + 3
    gs = s.gamma
    ref_s = torch.stack(
        [sum(ph[:, i] ** gs[i, k] * ph[:, k] ** (1 - gs[i, k]) for k in range(3)) for i in range(3)], -1
    )
    assert torch.allclose(s.modal_energies(ph), ref_s, atol=1e-12)
    # constraints hold after large unconstrained gradient steps (parametrisation, not clipping)
    opt = torch.optim.SGD(list(comp.parameters()), lr=50.0)
    for _ in range(5):
        opt.zero_grad()
        (comp(v)["E"] * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)).sum().backward()
        opt.step()
    assert (comp.w > 0).all() and (comp.b >= 0).all()
    assert ((comp.gamma >= 0) & (comp.gamma <= 1)).all()
    assert (comp.coupling.abs() <= 1).all() and torch.all(torch.diagonal(comp.coupling) == 0)
    assert (comp.phi(v) > 0).all()


def test_partial_energy_gradient_has_the_corrected_sign():
    """Appendix D's Eq. 37 reads log phi_i + log phi_j; the derivative is E_ij (log phi_i - log phi_j)."""
    phi_i, phi_j = torch.tensor(5.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    gamma = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    e_ij = phi_i**gamma * phi_j ** (1 - gamma)
    (d,) = torch.autograd.grad(e_ij, gamma)
    assert float(d) == pytest.approx(float(e_ij.detach() * (phi_i.log() - phi_j.log())), rel=1e-12)


def test_omega_gradient_wrt_modal_energies():
    """dOmega/dE_i = -tau (eta_i - alpha_i sum_k eta_k); with M = 2 and one corrupted mode: -tau eta_i."""
    tau = 0.7
    e = torch.tensor([[1.0, 3.0], [2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    eta = eta_from_labels(torch.tensor([[False, True], [True, False]]), (2, 2)).double()
    (g,) = torch.autograd.grad(omega(torch.log_softmax(-tau * e, -1), eta).sum(), e)
    assert torch.allclose(g, -tau * eta, atol=1e-12)
    e3 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    eta3 = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64).expand(5, 3)
    (g3,) = torch.autograd.grad(omega(torch.log_softmax(-tau * e3, -1), eta3).sum(), e3)
    alpha = torch.softmax(-tau * e3.detach(), -1)
    assert torch.allclose(g3, -tau * (eta3 - alpha * eta3.sum(-1, keepdim=True)), atol=1e-12)
    assert torch.equal(eta_from_labels(None, (2, 3)), torch.ones(2, 3))
    with pytest.raises(DataError, match="corrupt"):
        eta_from_labels(torch.zeros(2, 2, dtype=torch.bool), (2, 3))


def test_dae_on_a_circle_energy_low_on_data_and_laplacian_classifier_flaw():
    """Trained DAE: V is lower on the circle than far away, while the (sign-corrected) Laplacian classifier
    calls far-away points 'normal' (all sigmoids saturate there) -- the reason eta defaults to labels."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 2 * np.pi, 512)
    x = torch.tensor(np.stack([np.cos(a), np.sin(a)], 1) * 3, dtype=torch.float32)
    dae, rep = fit_dae(x, hidden=32, noise_std=0.3, epochs=300, batch_size=128, lr=1e-2, standardize=False)
    assert rep.train_loss < rep.history[0]
    on = potential(dae, x).mean()
    ang = torch.linspace(0, 2 * math.pi, 16)
    far = torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    for radius in (10.0, 30.0):
        assert potential(dae, far * radius).min() > on
    lap_far = laplacian(dae, far * 30.0)
    assert (eta_from_laplacian(lap_far) > 0).all()  # "normal": the classifier fails far from the data
    assert lap_far.mean() > 1.5  # sigmoids saturate far away: sigma' -> 0, Delta V -> M = 2
    # on the data the field is a sink: mean Laplacian of V positive (divergence of r - m negative)
    assert laplacian(dae, x).mean() > 0

"""EMMA's gate, plug-in, DAE store, abnormal-modality injection and parameter freezing (fast, no training loop)."""

from __future__ import annotations

import pytest
import torch

from mmfusion.callbacks.emma_inject import AbnormalInjector, default_max_corrupted
from mmfusion.contract import ModelInfo
from mmfusion.emma.attention import AttentionStep
from mmfusion.emma.composition import Composition
from mmfusion.emma.dae import TiedDAE, fit_dae
from mmfusion.emma.gate import EMMAGate
from mmfusion.emma.store import load_daes, save_daes
from mmfusion.errors import ConfigError, DataError
from mmfusion.models.ef_lstm import EFLSTM
from mmfusion.pipelines.emma import set_trainable
from mmfusion.plugins.emma import EMMAPlugin

MODS = ("text", "audio", "vision")
DIMS = {"text": 12, "audio": 5, "vision": 4}


def make_batch(b: int = 16, t: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": {m: torch.randn(b, t, d, generator=g) for m, d in DIMS.items()},
        "lengths": {m: torch.full((b,), t) for m in DIMS},
        "y": torch.randn(b, generator=g),
        "index": torch.arange(b),
    }


@pytest.fixture(scope="module")
def dae_file(tmp_path_factory):
    """DAEs fit on the unimodal representations of a random EF-LSTM (proj_dim 8)."""
    torch.manual_seed(0)
    net = EFLSTM(input_dims=DIMS, proj_dim=8, hidden=16)
    with torch.no_grad():
        reps = net.encode(make_batch(256, seed=1)).unimodal
    daes = {m: fit_dae(reps[m], 16, 0.3, epochs=30, batch_size=64, seed=0)[0] for m in MODS}
    path = tmp_path_factory.mktemp("emma") / "dae.pt"
    save_daes(path, daes, reps)
    return path


def test_injector_rates_limits_and_no_aliasing():
    inj = AbnormalInjector(MODS, noise_rate=0.3, drop_rate=0.2, noise_level=1.0)
    assert inj.max_corrupted == 1 == default_max_corrupted(3) and default_max_corrupted(2) == 1
    assert default_max_corrupted(5) == 2
    noise, drop = inj.plan(20000, torch.Generator().manual_seed(0))
    assert not (noise & drop).any()
    assert ((noise | drop).sum(1) <= 1).all()
    assert noise.any(1).float().mean() == pytest.approx(0.3, abs=0.015)
    assert drop.any(1).float().mean() == pytest.approx(0.2, abs=0.015)
    assert noise.float().mean(0).std() < 0.01  # modalities drawn uniformly
    batch = make_batch(64)
    clean = {m: v.clone() for m, v in batch["x"].items()}
    out = inj(batch, torch.Generator().manual_seed(3))
    for m in MODS:
        assert torch.equal(batch["x"][m], clean[m])  # the clean tensors are untouched
    c = out["corrupt"]
    assert c.shape == (64, 3) and (c.sum(1) <= 1).all() and c.any()
    for j, m in enumerate(MODS):
        changed = (out["x"][m] != clean[m]).flatten(1).any(1)
        assert torch.equal(changed, c[:, j])
    with pytest.raises(ConfigError, match="max_corrupted"):
        AbnormalInjector(MODS, max_corrupted=3)
    with pytest.raises(ConfigError, match="sum"):
        AbnormalInjector(MODS, noise_rate=0.7, drop_rate=0.5)


def test_gate_scales_each_modality_by_beta():
    torch.manual_seed(0)
    daes = {m: TiedDAE(d, 2 * d, seed=i) for i, (m, d) in enumerate(DIMS.items())}
    gate = EMMAGate(MODS, daes, Composition(3, coldness=0.5), AttentionStep(3))
    uni = {m: torch.randn(7, d) * (1 + 3 * (m == "audio")) for m, d in DIMS.items()}
    res = gate(uni, {})
    gated, ex = res.unimodal, res.extras
    assert torch.allclose(ex["emma/alpha"].sum(-1), torch.ones(7))
    assert torch.allclose(ex["emma/log_alpha"].exp(), ex["emma/alpha"], atol=1e-6)
    assert torch.allclose(ex["emma/energy"], ex["emma/modal_energy"].sum(-1))
    for i, m in enumerate(MODS):
        assert torch.allclose(gated[m], ex["emma/beta"][:, i : i + 1] * uni[m])
        assert torch.equal(res.scales[m], ex["emma/beta"][:, i])
    # a sample's weights do not depend on the rest of the batch
    one = gate({m: u[:1] for m, u in uni.items()}, {})
    assert torch.allclose(one.extras["emma/alpha"][0], ex["emma/alpha"][0], atol=1e-6)
    # the DAEs are frozen; composition and attention are trainable
    names = {n for n, p in gate.named_parameters() if p.requires_grad}
    assert names and all(not n.startswith("daes.") for n in names)


def test_plugin_attach_errors_and_store_checks(dae_file, tmp_path):
    net = EFLSTM(input_dims=DIMS, proj_dim=8, hidden=16)
    info = ModelInfo(net.modalities, dict(net.unimodal_dims), net.fused_dim)
    with pytest.raises(ConfigError, match="dae_path"):
        EMMAPlugin().attach(net, info)
    with pytest.raises(DataError, match="not found"):
        EMMAPlugin(dae_path=str(tmp_path / "nope.pt")).attach(net, info)
    with pytest.raises(DataError, match="input sizes"):
        load_daes(dae_file, MODS, {"text": 9, "audio": 8, "vision": 8})
    with pytest.raises(ConfigError, match="eta"):
        EMMAPlugin(eta="oracle")
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="not an EMMA DAE file"):
        load_daes(tmp_path / "bad.pt", MODS, dict(net.unimodal_dims))


def test_plugin_regulariser_lowers_alpha_of_corrupted_mode(dae_file):
    torch.manual_seed(0)
    net = EFLSTM(input_dims=DIMS, proj_dim=8, hidden=16)
    plugin = EMMAPlugin(dae_path=str(dae_file), weight=1.0)
    plugin.attach(net, ModelInfo(net.modalities, dict(net.unimodal_dims), net.fused_dim))
    assert isinstance(net.gate, EMMAGate)
    batch = make_batch(32)
    batch["corrupt"] = torch.zeros(32, 3, dtype=torch.bool)
    batch["corrupt"][:, 1] = True  # audio flagged abnormal in every sample
    opt = torch.optim.SGD([p for p in net.gate.parameters() if p.requires_grad], lr=0.5)
    alpha0 = net(batch).extras["emma/alpha"][:, 1].mean()
    for _ in range(10):
        out = net(batch)
        term = plugin.loss(out, batch, "train")
        opt.zero_grad()
        term.value.backward()
        opt.step()
    assert {"omega", "alpha_audio", "beta_text", "energy", "gain"} <= set(term.logs)
    assert net(batch).extras["emma/alpha"][:, 1].mean() < alpha0 - 0.05
    # validation diagnostics: clean and corrupted copies of the batch
    diag = plugin.diagnostics(net(batch), batch)
    assert {"clean/alpha_text", "noise_audio/alpha_audio", "drop_vision/beta_vision", "clean/energy"} <= set(
        diag
    )
    # the checkpoint round-trip keeps the gate (net.gate.*) and the plug-in's buffers
    state = net.state_dict()
    assert any(k.startswith("gate.daes.text.") for k in state) and "gate.composition.v_min" in state


def test_set_trainable_freezes_encoders_found_by_autograd(dae_file):
    net = EFLSTM(input_dims=DIMS, proj_dim=8, hidden=16)
    EMMAPlugin(dae_path=str(dae_file)).attach(net, ModelInfo(net.modalities, dict(net.unimodal_dims), 16))
    batch = make_batch(4)
    set_trainable(net, "fusion", batch)
    on = {n for n, p in net.named_parameters() if p.requires_grad}
    assert not any(n.startswith("proj.") for n in on)  # the per-modality encoders
    assert any(n.startswith("lstm.") for n in on) and any(n.startswith("head.") for n in on)
    assert any(n.startswith("gate.composition.") for n in on) and not any(
        n.startswith("gate.daes.") for n in on
    )
    set_trainable(net, "emma", batch)
    assert all(n.startswith("gate.") for n, p in net.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="trainable"):
        set_trainable(net, "encoders", batch)


@pytest.mark.parametrize("eta", ["laplacian", "threshold"])
def test_plugin_alternative_normality_oracles(dae_file, eta):
    torch.manual_seed(0)
    net = EFLSTM(input_dims=DIMS, proj_dim=8, hidden=16)
    plugin = EMMAPlugin(dae_path=str(dae_file), eta=eta, weight=1.0)
    plugin.attach(net, ModelInfo(net.modalities, dict(net.unimodal_dims), net.fused_dim))
    batch = make_batch(8)
    big = {**batch, "x": {**batch["x"], "audio": batch["x"]["audio"] * 1000.0}}  # far from the training data
    out = net(big)
    e = plugin.eta_of(out, big)
    assert e.shape == (8, 3) and set(e.unique().tolist()) <= {-1.0, 1.0}
    if eta == "threshold":
        assert (e[:, 1] == -1).all()  # huge audio energy: above the training 99th percentile
    else:
        assert "emma/laplacian" in out.extras
        assert (e[:, 1] == 1).all()  # the (sign-fixed) Laplacian rule still calls far-away inputs normal
    assert torch.isfinite(plugin.loss(out, big, "train").value)

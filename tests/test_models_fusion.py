"""TFN / LFN / MFN: output contract, fusion maths against explicit formulas, gradients to every parameter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfusion.contract import FusionOutput
from mmfusion.errors import ConfigError, DataError
from mmfusion.models.lfn import LFN, LowRankFusion
from mmfusion.models.mfn import MFN
from mmfusion.models.subnets import (
    PostFusionMLP,
    SubNet,
    _cols_per_chunk,
    dropout_drop_mask,
    dropout_keep,
    dropout_scale,
)
from mmfusion.models.tfn import TFN, tensor_fusion

DIMS = {"mosi": {"text": 768, "audio": 5, "vision": 20}, "mosei": {"text": 768, "audio": 74, "vision": 35}}
MFN_SMALL = {
    "hidden": {"text": 8, "audio": 4, "vision": 4},
    "mem_dim": 6,
    "attn_hidden": 8,
    "mem_hidden": 8,
    "gamma1_hidden": 8,
    "gamma2_hidden": 8,
    "out_hidden": 8,
}


def make_batch(dims: dict[str, int], b: int = 5, t: int = 7, seed: int = 0, full: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, t + 1, (b,), generator=g)
    if full:
        lens = torch.full((b,), t)
    lens[0] = t
    x = {}
    for m, d in dims.items():
        v = torch.randn(b, t, d, generator=g)
        v[torch.arange(t)[None, :].expand(b, t) >= lens[:, None]] = 0.0  # right padding
        x[m] = v
    return {"x": x, "lengths": {m: lens.clone() for m in dims}, "y": torch.randn(b, generator=g)}


def build(name: str, dims: dict[str, int], out: int = 1):
    if name == "tfn":
        return TFN(input_dims=dims, output_dim=out, hidden=8, text_hidden=16, text_out=8, post_fusion_dim=16)
    if name == "lfn":
        return LFN(
            input_dims=dims, output_dim=out, hidden=8, text_hidden=16, text_out=8, rank=3, fusion_dim=8
        )
    return MFN(input_dims=dims, output_dim=out, **MFN_SMALL)


@pytest.mark.parametrize("data", ["mosi", "mosei"])
@pytest.mark.parametrize("name", ["tfn", "lfn", "mfn"])
@pytest.mark.parametrize("out_dim", [1, 3])
def test_output_contract(name: str, data: str, out_dim: int) -> None:
    dims = DIMS[data]
    torch.manual_seed(0)
    model = build(name, dims, out_dim)
    batch = make_batch(dims)
    out = model(batch)
    assert isinstance(out, FusionOutput)
    assert out.prediction.shape == (5, out_dim)
    assert out.fused.shape == (5, model.fused_dim)
    assert set(out.unimodal) == set(dims) == set(model.modalities)
    for m, z in out.unimodal.items():
        assert z.shape == (5, model.unimodal_dims[m])
    assert torch.isfinite(out.prediction).all()
    # the padding is never read: changing padded steps changes nothing (eval mode: no dropout)
    model.eval()
    ref = model(batch).prediction
    noisy = {**batch, "x": {m: v.clone() for m, v in batch["x"].items()}}
    for m, v in noisy["x"].items():
        pad = torch.arange(v.shape[1])[None, :] >= batch["lengths"][m][:, None]
        v[pad] = 123.0
    torch.testing.assert_close(model(noisy).prediction, ref)


@pytest.mark.parametrize("name", ["tfn", "lfn", "mfn"])
def test_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    dims = DIMS["mosi"]
    model = build(name, dims)
    model.train()
    out = model(make_batch(dims, b=6))
    loss = ((out.prediction.squeeze(-1) - torch.randn(6)) ** 2).mean()
    loss.backward()
    params = dict(model.named_parameters())
    assert params, "model has no parameters"
    missing = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a gradient: {missing}"
    zero = [n for n, p in params.items() if p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"
    if name == "lfn":  # the MMSA bug: fusion weights/bias must be real, trained parameters
        assert "fusion.fusion_weights" in params and "fusion.fusion_bias" in params
        assert all(f"fusion.factors.{m}" in params for m in dims)


def test_tfn_fusion_equals_explicit_outer_product() -> None:
    g = torch.Generator().manual_seed(1)
    za, zv, zt = (
        torch.randn(3, 2, generator=g),
        torch.randn(3, 3, generator=g),
        torch.randn(3, 4, generator=g),
    )
    fused = tensor_fusion([za, zv, zt])
    assert fused.shape == (3, 3 * 4 * 5)
    for b in range(3):
        a1 = torch.cat([torch.ones(1), za[b]])
        v1 = torch.cat([torch.ones(1), zv[b]])
        t1 = torch.cat([torch.ones(1), zt[b]])
        explicit = torch.zeros(3, 4, 5)
        for i in range(3):
            for j in range(4):
                for k in range(5):
                    explicit[i, j, k] = a1[i] * v1[j] * t1[k]
        torch.testing.assert_close(fused[b], explicit.reshape(-1))
    # unimodal and bimodal terms are present: coordinate (0, 0, 0) is 1, (i, 0, 0) is za_i, (i, j, 0) za_i zv_j
    assert torch.all(fused.reshape(3, 3, 4, 5)[:, 0, 0, 0] == 1)
    torch.testing.assert_close(fused.reshape(3, 3, 4, 5)[:, 1:, 0, 0], za)
    torch.testing.assert_close(fused.reshape(3, 3, 4, 5)[:, 1:, 1:, 0], za[:, :, None] * zv[:, None, :])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.5, 0.4, 0.123, 0.9])
@pytest.mark.parametrize("shape", [(3, 7), (5, 70_001)])  # one partial chunk; several chunks + a remainder
def test_dropout_keep_is_torch_dropout(p: float, shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = torch.randn(shape, dtype=dtype)
    torch.manual_seed(11)
    ref, ref_next = F.dropout(x, p, training=True), torch.rand(4)
    torch.manual_seed(11)
    keep = dropout_keep(x.numel(), p)
    out, out_next = x * (keep.view(shape).to(dtype) * dropout_scale(p, dtype)), torch.rand(4)
    assert torch.equal(
        out.view(-1).view(torch.int8), ref.view(-1).view(torch.int8)
    )  # bit for bit (signed zeros)
    assert torch.equal(out_next, ref_next)  # same generator draws consumed
    assert torch.equal(keep.view(shape), ref != 0) and dropout_scale(p, dtype) == pytest.approx(1 / (1 - p))


def test_post_fusion_fast_path_is_dropout_then_linear_on_its_mask() -> None:
    """Training on CPU the head takes the chunked _DropoutLinear path: outputs and every gradient are those of the
    plain nn.Sequential (Dropout -> Linear -> ...) applied with the mask it drew (dropout_drop_mask, chunk by
    chunk from the same generator state), to float rounding; several chunks and a remainder."""
    torch.manual_seed(0)
    b, d, p = 6, 50_000, 0.3
    head = PostFusionMLP(d, 8, 1, p, output_range=[-3, 3]).train()
    x = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    head.double()
    w = torch.randn(b, 1, dtype=torch.float64)
    assert head._fast_path(x)
    step = _cols_per_chunk(b)
    assert d // step >= 2 and d % step  # the case covers several chunks and a remainder
    torch.manual_seed(3)
    y = head(x)
    (y * w).sum().backward()
    got = (y, x.grad, *(q.grad for q in head.parameters()))
    torch.manual_seed(3)  # the mask it drew: the same draws, chunk by chunk
    keep = torch.cat(
        [~dropout_drop_mask(b * (min(d, s + step) - s), p).view(b, -1) for s in range(0, d, step)], dim=1
    )
    assert 0.6 < keep.double().mean() < 0.8
    head.zero_grad(set_to_none=True)
    x.grad = None
    first = head.net[1]
    h = torch.nn.functional.linear(x * keep * dropout_scale(p, x.dtype), first.weight, first.bias)
    ref_y = head.net[2:](h)
    ref_y = torch.sigmoid(ref_y) * 6.0 - 3.0
    (ref_y * w).sum().backward()
    ref = (ref_y, x.grad, *(q.grad for q in head.parameters()))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    head.eval()  # eval: no dropout, plain path
    assert not head._fast_path(x)
    torch.testing.assert_close(head(x), torch.sigmoid(head.net(x)) * 6.0 - 3.0)


@pytest.mark.parametrize("p", [0.5, 0.4, 0.3, 0.05, 0.9, 1.5 / 256])
def test_dropout_drop_mask_has_dropouts_law(p: float) -> None:
    """P(drop) = p for every value, whichever byte of a draw it came from, and neighbours independent (5 sigma
    bounds on 2^22 values). p = 1.5/256 hits the tie rule: without it the rate would be 2/256 (52 sigma off)."""
    n = 1 << 22
    torch.manual_seed(0)
    d = dropout_drop_mask(n, p).double()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(float(d.mean()) - p) < 5 * sd
    per_byte = d.view(-1, 8).mean(0)  # value i came from byte i mod 8 of its 64-bit draw
    assert float((per_byte - p).abs().max()) < 5 * sd * 8**0.5
    both = float((d[0::2] * d[1::2]).mean())  # disjoint neighbour pairs
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / (n // 2)) ** 0.5
    torch.manual_seed(0)
    out = torch.empty(n, dtype=torch.bool)
    assert dropout_drop_mask(n, p, out=out) is out and torch.equal(
        out.double(), d
    )  # out= gives the same draw


def test_tfn_output_range() -> None:
    model = TFN(
        input_dims=DIMS["mosi"], hidden=4, text_hidden=4, text_out=4, post_fusion_dim=4, output_range=[-3, 3]
    )
    model.eval()
    big = make_batch(DIMS["mosi"])
    big["x"] = {m: v * 100 for m, v in big["x"].items()}
    p = model(big).prediction
    assert (p > -3).all() and (p < 3).all()
    with pytest.raises(ConfigError):
        TFN(input_dims=DIMS["mosi"], output_dim=2, output_range=[-3, 3])


def test_lfn_full_rank_equals_tensor_map() -> None:
    """Any TFN-style map h_k = sum_ijl W[k,i,j,l] a1_i v1_j t1_l + b_k is an LFN with rank (da+1)(dv+1):
    factor_a = e_i, factor_v = e_j, factor_t = W[:, i, j, :]."""
    torch.manual_seed(0)
    da, dv, dt, dh = 2, 3, 4, 5
    W = torch.randn(dh, da + 1, dv + 1, dt + 1, dtype=torch.float64)
    bias = torch.randn(dh, dtype=torch.float64)
    rank = (da + 1) * (dv + 1)
    fus = LowRankFusion({"audio": da, "vision": dv, "text": dt}, rank, dh).double()
    with torch.no_grad():
        r = 0
        for i in range(da + 1):
            for j in range(dv + 1):
                fus.factors["audio"][r] = 0
                fus.factors["audio"][r, i, :] = 1
                fus.factors["vision"][r] = 0
                fus.factors["vision"][r, j, :] = 1
                fus.factors["text"][r] = W[:, i, j, :].T
                r += 1
        fus.fusion_weights.fill_(1.0)
        fus.fusion_bias.copy_(bias[None])
    z = {
        "audio": torch.randn(7, da, dtype=torch.float64),
        "vision": torch.randn(7, dv, dtype=torch.float64),
        "text": torch.randn(7, dt, dtype=torch.float64),
    }
    Z = tensor_fusion([z["audio"], z["vision"], z["text"]])  # (7, (da+1)(dv+1)(dt+1))
    expected = Z @ W.reshape(dh, -1).T + bias
    torch.testing.assert_close(fus(z), expected)


def test_lfn_learns_a_low_rank_tensor_map() -> None:
    """Gradient descent on an LFN of rank >= the true CP rank recovers a random rank-2 tensor map."""
    torch.manual_seed(0)
    dims = {"a": 2, "b": 2}
    true = LowRankFusion(dims, 2, 1).double()
    fit = LowRankFusion(dims, 4, 1).double()
    opt = torch.optim.Adam(fit.parameters(), lr=0.02)
    z = {m: torch.randn(256, d, dtype=torch.float64) for m, d in dims.items()}
    target = true(z).detach()
    start = ((fit(z) - target) ** 2).mean().item()
    for _ in range(1500):
        opt.zero_grad()
        loss = ((fit(z) - target) ** 2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3 * max(start, 1.0)


def _lstm_by_hand(lstm: torch.nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    w_ih, w_hh, b = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0
    gates = x @ w_ih.T + h @ w_hh.T + b
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _mlp(seq: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return seq[3](torch.relu(seq[0](x)))


@pytest.mark.parametrize("window,lstm", [(2, "loop"), (3, "loop"), (2, "fused")])
def test_mfn_memory_update_equals_hand_computed_steps(window: int, lstm: str) -> None:
    torch.manual_seed(0)
    dims = {"text": 3, "audio": 2, "vision": 2}
    model = (
        MFN(
            input_dims=dims,
            window=window,
            lstm=lstm,
            attn_dropout=0.0,
            mem_dropout=0.0,
            gamma1_dropout=0.0,
            gamma2_dropout=0.0,
            out_dropout=0.0,
            **{k: v for k, v in MFN_SMALL.items()},
        )
        .double()
        .eval()
    )
    b, t = 2, 3
    batch = make_batch(dims, b=b, t=t, seed=3)
    batch["x"] = {m: v.double() for m, v in batch["x"].items()}
    batch["lengths"] = {m: torch.tensor([3, 2]) for m in dims}
    for m in dims:
        batch["x"][m][1, 2] = 0.0
    out = model(batch)
    for s in range(b):
        n = int(batch["lengths"]["text"][s])
        hs = {m: torch.zeros(1, model.unimodal_dims[m], dtype=torch.float64) for m in dims}
        cs = {m: torch.zeros(1, model.unimodal_dims[m], dtype=torch.float64) for m in dims}
        history = [torch.zeros(1, model.state_dim, dtype=torch.float64)] * (window - 1)
        u = torch.zeros(1, 6, dtype=torch.float64)
        for step in range(n):
            for m in dims:
                hs[m], cs[m] = _lstm_by_hand(model.lstms[m], batch["x"][m][s : s + 1, step], hs[m], cs[m])
            c_now = torch.cat([cs[m] for m in dims], -1)
            cstar = torch.cat(history[-(window - 1) :] + [c_now], -1) if window > 1 else c_now
            history.append(c_now)
            att = torch.softmax(_mlp(model.attention, cstar), -1)
            chat_in = att * cstar
            u_hat = _mlp(model.memory_net, chat_in)
            g1 = torch.sigmoid(_mlp(model.gamma1, torch.cat([chat_in, u], -1)))
            g2 = torch.sigmoid(_mlp(model.gamma2, torch.cat([chat_in, u], -1)))
            u = g1 * u + g2 * torch.tanh(u_hat)
        expected = torch.cat([hs[m] for m in dims] + [u], -1)
        torch.testing.assert_close(out.fused[s : s + 1], expected)
        torch.testing.assert_close(out.unimodal["audio"][s : s + 1], hs["audio"])


def test_mfn_gate_scales_scale_the_sequences() -> None:
    torch.manual_seed(0)
    dims = DIMS["mosi"]
    model = MFN(input_dims=dims, **MFN_SMALL).eval()
    batch = make_batch(dims)
    enc = model.encode(batch)
    ones = {m: torch.ones(5) for m in dims}
    base = model.fuse(enc.unimodal, dict(enc.state, gate_scales=ones), batch)
    torch.testing.assert_close(base, model.fuse(enc.unimodal, enc.state, batch))
    zero_audio = dict(ones, audio=torch.zeros(5))
    z = model.fuse(enc.unimodal, dict(enc.state, gate_scales=zero_audio), batch)
    cells_no_audio = enc.state["cells"].clone()
    cells_no_audio[..., 8:12] = 0  # audio block of (text 8, audio 4, vision 4)
    manual = model.fuse(enc.unimodal, dict(enc.state, cells=cells_no_audio), batch)
    torch.testing.assert_close(z, manual)
    assert not torch.allclose(z, base)


def test_mfn_needs_aligned_sequences() -> None:
    model = MFN(input_dims={"text": 3, "audio": 2}, hidden=4)
    with pytest.raises(DataError, match="word-aligned"):
        model({"x": {"text": torch.randn(2, 5, 3), "audio": torch.randn(2, 7, 2)}})


def test_utterance_level_vectors_and_batch_of_one() -> None:
    dims = {"text": 10, "audio": 6, "vision": 4}
    for name in ("tfn", "lfn", "mfn"):
        model = build(name, dims).train()
        out = model({"x": {m: torch.randn(1, d) for m, d in dims.items()}})  # (B, D), B = 1
        assert out.prediction.shape == (1, 1)


def test_subnet_batchnorm_uses_batch_statistics() -> None:
    net = SubNet(3, 4, 0.0).train()
    x = torch.randn(16, 3) * 5 + 7
    net(x)
    torch.testing.assert_close(net.norm.running_mean, 0.1 * x.mean(0))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="hidden"):
        TFN(input_dims={"text": 3, "audio": 2}, hidden={"text": 4})
    with pytest.raises(ConfigError, match="rank"):
        LFN(input_dims={"text": 3, "audio": 2}, rank=0)

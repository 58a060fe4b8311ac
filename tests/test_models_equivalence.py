"""The sped-up fusion models compute what they computed before (issue 18): outputs, every parameter gradient and
the random-generator state after a training step equal those of the frozen pre-speed-up code
(``tests/frozen_v0``, copied from the package before the change) on the same weights, inputs and seed, in
training mode (dropout active), with full-length and with padded batches, in float32 and float64.

TFN's post-fusion Dropout -> Linear now draws its mask with ``dropout_drop_mask`` (the same law as ``F.dropout``,
other draws): here it is swapped for ``F.dropout`` -> ``F.linear`` so that the rest of the model is compared draw for
draw; ``test_models_fusion`` checks ``_DropoutLinear`` against Dropout -> Linear on the mask it drew."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest
import torch
import torch.nn.functional as F

from mmfusion.models import subnets
from mmfusion.models.ef_lstm import EFLSTM
from mmfusion.models.lfn import LFN
from mmfusion.models.mfn import MFN
from mmfusion.models.tfn import TFN

from .frozen_v0.ef_lstm import EFLSTM as EFLSTM0
from .frozen_v0.lfn import LFN as LFN0
from .frozen_v0.mfn import MFN as MFN0
from .frozen_v0.tfn import TFN as TFN0

DIMS = {"text": 12, "audio": 5, "vision": 7}

CASES = {
    "tfn": (
        TFN,
        TFN0,
        dict(
            hidden={"audio": 4, "vision": 6},
            text_hidden=10,
            text_out=5,
            dropout=0.3,
            post_fusion_dim=8,
            post_fusion_dropout=0.4,
        ),
    ),
    "tfn_range": (
        TFN,
        TFN0,
        dict(
            hidden=4,
            text_hidden=8,
            text_out=3,
            dropout={"text": 0.0, "audio": 0.2, "vision": 0.5},
            post_fusion_dim=6,
            post_fusion_dropout=0.5,
            output_range=(-3.0, 3.0),
        ),
    ),
    # text input >= 4 x LSTM width: the language sub-network runs the hand-written LSTM scan (subnets.lstm_scan)
    "tfn_wide": (
        TFN,
        TFN0,
        dict(hidden=4, text_hidden=3, text_out=4, dropout=0.3, post_fusion_dim=6, post_fusion_dropout=0.3),
    ),
    "lfn_wide": (LFN, LFN0, dict(hidden=3, text_hidden=2, text_out=3, dropout=0.2, rank=2, fusion_dim=4)),
    "lfn": (
        LFN,
        LFN0,
        dict(
            hidden=4, text_hidden=10, text_out=5, dropout=0.3, rank=3, fusion_dim=6, post_fusion_dropout=0.2
        ),
    ),
    "lfn_code": (
        LFN,
        LFN0,
        dict(
            hidden={"audio": 3, "vision": 5}, text_hidden=8, text_out=4, dropout=0.2, rank=2, fusion_dim=None
        ),
    ),
    "mfn": (
        MFN,
        MFN0,
        dict(
            hidden={"text": 9, "audio": 4, "vision": 6},
            mem_dim=7,
            attn_hidden=5,
            attn_dropout=0.2,
            mem_hidden=6,
            mem_dropout=0.3,
            gamma1_hidden=8,
            gamma1_dropout=0.7,
            gamma2_hidden=5,
            gamma2_dropout=0.5,
            out_hidden=6,
            out_dropout=0.4,
        ),
    ),
    "mfn_nogatemem": (
        MFN,
        MFN0,
        dict(
            hidden=5,
            mem_dim=6,
            gates_see_memory=False,
            gamma1_dropout=0.3,
            gamma2_dropout=0.0,
            mem_dropout=0.0,
            attn_dropout=0.1,
        ),
    ),
    "mfn_window3": (
        MFN,
        MFN0,
        dict(
            hidden={"text": 6, "audio": 3, "vision": 4},
            mem_dim=5,
            window=3,
            gamma1_dropout=0.0,
            gamma2_dropout=0.0,
        ),
    ),
    "ef_lstm": (EFLSTM, EFLSTM0, dict(proj_dim=6, hidden=9, dropout=0.4)),
    "ef_lstm_deep": (
        EFLSTM,
        EFLSTM0,
        dict(proj_dim=None, hidden=7, num_layers=3, dropout=0.3, input_dropout=0.1),
    ),
    "ef_lstm_attn": (EFLSTM, EFLSTM0, dict(proj_dim=5, hidden=8, pooling="attention")),
}


def _batch(b: int, t: int, padded: bool, dtype: torch.dtype, averaged_av: bool = False) -> dict:
    g = torch.Generator().manual_seed(3)
    x, lens = {}, {}
    lengths = torch.randint(2, t + 1, (b,), generator=g) if padded else torch.full((b,), t)
    lengths[0] = t
    for m, d in DIMS.items():
        steps = 1 if (averaged_av and m != "text") else t
        v = torch.randn(b, steps, d, generator=g, dtype=dtype)
        if steps > 1:
            v[torch.arange(steps)[None, :] >= lengths[:, None]] = 0.0
        x[m] = v
        lens[m] = lengths.clone() if steps > 1 else torch.ones(b, dtype=torch.long)
    return {"x": x, "lengths": lens, "y": torch.randn(b, generator=g, dtype=dtype)}


def _run(model: torch.nn.Module, batch: dict, seed: int) -> tuple[dict, dict, torch.Tensor]:
    torch.manual_seed(seed)
    out = model(batch)
    loss = (out.prediction.reshape(-1) - batch["y"]).abs().mean() + 0.1 * out.fused.pow(2).mean()
    loss = loss + sum(0.01 * z.pow(2).mean() for z in out.unimodal.values())
    model.zero_grad(set_to_none=True)
    loss.backward()
    outs = {
        "prediction": out.prediction,
        "fused": out.fused,
        **{f"z_{m}": z for m, z in out.unimodal.items()},
    }
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in outs.items()}, grads, torch.get_rng_state()


class _TorchDropoutLinear:
    @staticmethod
    def apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, p: float) -> torch.Tensor:
        return F.linear(F.dropout(x, p), weight, bias)


@contextmanager
def _torch_dropout_linear() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subnets, "_DropoutLinear", _TorchDropoutLinear)
        yield


def _check(
    case: str, padded: bool, dtype: torch.dtype, b: int = 6, t: int = 9, averaged_av: bool = False
) -> None:
    new_cls, old_cls, kw = CASES[case]
    torch.manual_seed(0)
    new = new_cls(input_dims=DIMS, output_dim=1, **kw).to(dtype)
    old = old_cls(input_dims=DIMS, output_dim=1, **kw).to(dtype)
    old.load_state_dict(new.state_dict())
    new.train()
    old.train()
    batch = _batch(b, t, padded, dtype, averaged_av)
    with _torch_dropout_linear() if case.startswith("tfn") else nullcontext():
        o_new, g_new, rng_new = _run(new, batch, seed=11)
    o_old, g_old, rng_old = _run(old, batch, seed=11)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert o_new.keys() == o_old.keys()
    for k in o_old:
        torch.testing.assert_close(o_new[k], o_old[k], **tol, msg=lambda m, k=k: f"{case} output {k}: {m}")
    assert g_new.keys() == g_old.keys()
    for k in g_old:
        assert (g_new[k] is None) == (g_old[k] is None), k
        if g_old[k] is not None:
            torch.testing.assert_close(g_new[k], g_old[k], **tol, msg=lambda m, k=k: f"{case} grad {k}: {m}")
    assert torch.equal(rng_new, rng_old), f"{case}: the random draws differ (dropout masks)"
    # the comparison is not vacuous: the step produced non-zero gradients everywhere that trains
    assert sum(float(g.abs().sum()) for g in g_new.values() if g is not None) > 0


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_same_as_before_float32(case: str, padded: bool) -> None:
    _check(case, padded, torch.float32)


@pytest.mark.parametrize(
    "case", ["tfn", "tfn_wide", "lfn", "lfn_wide", "mfn", "mfn_nogatemem", "ef_lstm_deep"]
)
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_same_as_before_float64(case: str, padded: bool) -> None:
    _check(case, padded, torch.float64)


@pytest.mark.parametrize("case", ["tfn", "lfn_code"])
def test_same_as_before_averaged_audio_vision(case: str) -> None:
    """MMSA's TFN/LMF inputs: text sequences, time-averaged (B, 1, D) audio / vision."""
    _check(case, False, torch.float32, averaged_av=True)


def test_same_as_before_batch_of_one_and_long_sequence() -> None:
    _check("mfn", True, torch.float64, b=1, t=30)
    _check("ef_lstm", False, torch.float32, b=1, t=30)
    _check("tfn", True, torch.float32, b=2, t=40)
    _check("tfn_wide", True, torch.float64, b=1, t=30)


# -- the hand-written backward passes against autograd's numerical Jacobians (float64) --------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_lstm_scan_gradcheck(masked: bool) -> None:
    from mmfusion.models.subnets import _LSTMScan

    g = torch.Generator().manual_seed(0)
    b, t, h = 3, 5, 2
    xproj = torch.randn(b, t, 4 * h, generator=g, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(4 * h, h, generator=g, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(t)[:, None] < torch.tensor([5, 2, 4])[None, :])[..., None] if masked else None

    def f(xp: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _LSTMScan.apply(xp, w, mask)

    assert torch.autograd.gradcheck(f, (xproj, w_hh))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("see_memory", [True, False])
def test_memory_scan_gradcheck(masked: bool, see_memory: bool) -> None:
    from mmfusion.models.mfn import _MemoryScan

    g = torch.Generator().manual_seed(1)
    t, b, m, g1, g2 = 4, 3, 3, 2, 3
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    pre, chat = r(t, b, g1 + g2), torch.tanh(r(t, b, m)).detach().requires_grad_(True)
    w_mem = r(g1 + g2, m) if see_memory else None
    w1, b1, w2, b2 = r(m, g1), r(m), r(m, g2), r(m)
    valid = (torch.arange(t)[:, None] < torch.tensor([4, 1, 3])[None, :])[..., None] if masked else None

    def f(pre, chat, w1, b1, w2, b2, *wm):
        return _MemoryScan.apply(pre, chat, valid, wm[0] if wm else None, w1, b1, w2, b2, g1, 0.0, 0.0, True)

    args = (pre, chat, w1, b1, w2, b2) + ((w_mem,) if see_memory else ())
    assert torch.autograd.gradcheck(f, args)


def test_ef_lstm_seq_norm_is_batchnorm_over_time_steps() -> None:
    """``seq_norm: T`` = MMSA's EF_LSTM input normalisation: BatchNorm1d(T) on (B, T, D), time steps as channels."""
    torch.manual_seed(0)
    b, t = 5, 6
    model = EFLSTM(input_dims=DIMS, proj_dim=None, hidden=4, dropout=0.0, seq_norm=t).train()
    model.seq_norm.weight.data.uniform_(0.5, 1.5)
    model.seq_norm.bias.data.normal_()
    batch = _batch(b, t, False, torch.float32)
    x = torch.cat([batch["x"][m] for m in DIMS], -1)
    mean, var = x.mean((0, 2), keepdim=True), x.var((0, 2), unbiased=False, keepdim=True)
    xn = (x - mean) / torch.sqrt(var + 1e-5) * model.seq_norm.weight[None, :, None] + model.seq_norm.bias[
        None, :, None
    ]
    _, (h, _) = model.lstm(xn)
    torch.testing.assert_close(model(batch).fused, h[-1], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="seq_norm=6"):
        model(_batch(b, t + 1, False, torch.float32))


def test_benchmark_pairs_have_equal_parameter_counts() -> None:
    """The benchmark compares our models with MMSA's own classes at MMSA's sizes with identical parameter counts
    (needs the optional ``bench`` extra: ``mmsa``)."""
    pytest.importorskip("MMSA")
    from mmfusion.bench.models import build_mmsa, build_ours, n_params

    for name in ("tfn", "lfn", "mfn", "ef_lstm", "magbert"):
        for data in ("mosi", "mosei"):
            ours, theirs = n_params(build_ours(name, data)), n_params(build_mmsa(name, data))
            assert ours == theirs > 0, (name, data, ours, theirs)


def test_mmsa_magbert_builds_offline_and_matches_ours_on_copied_weights() -> None:
    """MMSA 2.2.1's own BERT_MAG, built on the packaged MiniLM through the transformers-5 shim, is the function our
    MAG-BERT computes: with MMSA's weights copied in and the MAG LayerNorm at MMSA's epsilon the predictions agree
    to float rounding, with and without padding (bench extra)."""
    pytest.importorskip("MMSA")
    from mmfusion.bench import mmsa_magbert
    from mmfusion.bench.models import SHAPES

    torch.manual_seed(0)
    theirs = mmsa_magbert.build_mmsa(SHAPES["mosi"], "mosi", 12).eval()
    ours = mmsa_magbert.build_ours(SHAPES["mosi"], "mosi").eval()
    mmsa_magbert.copy_mmsa_into_ours(theirs, ours)
    ours.mag.norm.eps = theirs.model.bert.MAG.LayerNorm.eps
    for lengths in (None, torch.tensor([12, 9, 5, 3])):
        o_in, m_in = mmsa_magbert.make_inputs(SHAPES["mosi"], 4, 12, "cpu", lengths)
        with torch.no_grad():
            ref = theirs(*m_in)["M"].reshape(-1)
            got = ours(o_in).prediction.reshape(-1)
        assert float(ref.abs().max()) > 1e-3  # not a vacuous zero output
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_dropout_keep_is_f_dropout_mask_at_any_thread_count() -> None:
    """The chunking of ``dropout_keep`` depends on the thread count; the mask (F.dropout's, bit for bit) does not."""
    from mmfusion.models.subnets import dropout_keep

    n, p = 3 * (1 << 16) + 123, 0.3
    old = torch.get_num_threads()
    try:
        masks = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(7)
            masks.append(dropout_keep(n, p))
        torch.manual_seed(7)
        ref = torch.nn.functional.dropout(torch.ones(n), p) != 0
    finally:
        torch.set_num_threads(old)
    assert torch.equal(masks[0], ref) and torch.equal(masks[1], ref)


# -- what the hand-written backward passes keep between forward and backward (issue 18: peak memory) -----------


def test_lstm_scan_keeps_gates_cells_and_hiddens_only() -> None:
    """6H values per step and sample (4 gate activations, c_t, h_t), as nn.LSTMCell under autograd: no tanh(c)
    or separate tanh(g) buffer (the g slot of the gate buffer holds tanh(g))."""
    from mmfusion.models.subnets import _LSTMScan

    b, t, h = 3, 7, 5
    xproj = torch.randn(b, t, 4 * h, requires_grad=True)
    w_hh = torch.randn(4 * h, h, requires_grad=True)
    cs, _ = _LSTMScan.apply(xproj, w_hh, None)
    saved = [x for x in cs.grad_fn.saved_tensors if x is not None and x.data_ptr() != w_hh.data_ptr()]
    assert sum(x.numel() for x in saved) == t * b * 4 * h + t * b * h + (t + 1) * b * h


def test_memory_scan_keeps_no_noise_or_pre_dropout_activations() -> None:
    """With dropout on both gate networks the scan keeps u, g1, g2, c^ and the dropped first-layer activations:
    relu' * noise is recovered as (dropped > 0) * scale, so neither the noise nor relu(first layer) is stored."""
    from mmfusion.models.mfn import _MemoryScan

    t, b, m, g1, g2 = 6, 4, 3, 5, 2
    pre = torch.randn(t, b, g1 + g2, requires_grad=True)
    chat = torch.randn(t, b, m).tanh().requires_grad_(True)
    w = [torch.randn(*s, requires_grad=True) for s in ((g1 + g2, m), (m, g1), (m,), (m, g2), (m,))]
    u = _MemoryScan.apply(pre, chat, None, *w, g1, 0.5, 0.3, True)
    params = {x.data_ptr() for x in w} | {chat.data_ptr()}
    saved = [x for x in u.grad_fn.saved_tensors if x is not None and x.data_ptr() not in params]
    assert sum(x.numel() for x in saved) == (t + 1) * b * m + 2 * t * b * m + t * b * (g1 + g2)

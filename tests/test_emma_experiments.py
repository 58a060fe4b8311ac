"""EMMA's thesis experiments at test sizes: digits (Experiment 2) and 2-D manifolds (Experiment 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmfusion.data.manifolds import KINDS, Manifolds, curve, distance_to_curve, sample
from mmfusion.emma.experiments.digits import fit_zero_dae, load_zero_one, noise_curve, seen_unseen
from mmfusion.emma.experiments.manifolds import run_manifold
from mmfusion.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def zero_dae():
    data = load_zero_one(n_eval=100, seed=0)
    dae, info = fit_zero_dae(data, hidden=64, noise_std=0.2, epochs=150, seed=0)
    return data, dae, info


def test_digits_potential_increases_monotonically_with_noise(zero_dae):
    data, dae, _ = zero_dae
    assert (
        data.zeros_eval.shape == (100, 64) and 0.0 <= data.zeros_eval.min() and data.zeros_eval.max() <= 1.0
    )
    c = noise_curve(dae, data.zeros_eval, [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0], seed=0)
    assert c["n_images"] == 100
    assert np.all(np.diff(c["mean"]) > 0), c["mean"]
    assert c["std"][-1] > c["std"][0]  # the band widens with the noise


def test_digits_unseen_ones_have_higher_energy_than_seen_zeros(zero_dae):
    data, dae, _ = zero_dae
    res = seen_unseen(dae, data.zeros_eval, data.ones_eval)
    assert res["n_zero"] == 100 and res["n_one"] == 182
    assert res["auc"] >= 0.9
    assert res["mean_one"] > res["mean_zero"]


def test_digits_bad_split_is_a_clear_error():
    with pytest.raises(DataError, match="n_eval"):
        load_zero_one(n_eval=500)


def test_manifold_generators_lie_on_their_curves():
    for kind in KINDS:
        pts = sample(kind, 200, 0.0, seed=1)
        assert pts.shape == (200, 2)
        assert distance_to_curve(kind, pts).max() < 2e-3
    assert np.allclose(np.linalg.norm(curve("circle", np.linspace(0, 1, 50)), axis=1), 1.0)
    with pytest.raises(ConfigError, match="unknown manifold"):
        Manifolds({"torus": {}})


def test_manifold_dae_potential_lower_on_than_off_the_circle(tmp_path):
    data = Manifolds({"circle": {"n": 400, "noise": 0.03}}, seed=0)
    res = run_manifold(data, "circle", hidden=8, epochs=150, grid=21)
    s = res.stats
    assert s["mean_potential_on"] < s["mean_potential_off"]
    assert s["auc_on_vs_off"] > 0.8
    assert s["mean_recon_norm_on"] < s["mean_recon_norm_off"]
    json.dumps(s)  # JSON-serialisable for the script

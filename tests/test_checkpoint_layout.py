"""Checkpoints written before the package layout of issue 16 still rebuild: their stored ``_target_`` s are
upgraded when read (``mmfusion.evaluation.checkpoints.upgrade_targets``)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import get_object

from mmfusion.evaluation.checkpoints import LEGACY_TARGETS, load_trained, upgrade_targets
from mmfusion.train import train

# every mmfusion _target_ of the configs at the last commit before the move (git grep of configs/ at 9e61394)
OLD_TARGETS = [
    "mmfusion.attention.plugin.ContinuousAttention",
    "mmfusion.emma.plugin.EMMAPlugin",
    "mmfusion.regularizers.autoencoder.MultimodalAutoencoder",
    "mmfusion.regularizers.contrastive.Contrastive",
    "mmfusion.regularizers.dcca.DeepCCA",
    "mmfusion.regularizers.mdm.MDM",
    "mmfusion.regularizers.synergy.Synergy",
    "mmfusion.tasks.BinaryClassification",
    "mmfusion.tasks.MulticlassClassification",
    "mmfusion.tasks.SentimentRegression",
    "mmfusion.tasks_vqa.VQATask",
    "mmfusion.vqa_schedule.mcan_scheduler",
]


@pytest.mark.parametrize("old", OLD_TARGETS)
def test_every_old_target_upgrades_to_an_existing_object(old: str) -> None:
    new = upgrade_targets({"_target_": old})["_target_"]
    assert callable(get_object(new))
    if not old.startswith("mmfusion.tasks."):  # the tasks package re-exports its objectives; the rest moved
        assert new != old
        with pytest.raises(ImportError):
            get_object(old)


def test_upgrade_is_recursive_and_leaves_current_targets_alone() -> None:
    cfg = {
        "reg": {"mdm_kl": {"_target_": "mmfusion.regularizers.mdm.MDM", "weight": 0.2}},
        "optim": {"scheduler": {"_target_": "mmfusion.vqa_schedule.mcan_scheduler", "_partial_": True}},
        "model": {"_target_": "mmfusion.models.tfn.TFN", "dims": [1, 2]},
        "callbacks": [{"_target_": "mmfusion.emma.inject.InjectAbnormal"}],
    }
    up = upgrade_targets(cfg)
    assert up["reg"]["mdm_kl"] == {"_target_": "mmfusion.plugins.mdm.MDM", "weight": 0.2}
    assert up["optim"]["scheduler"]["_target_"] == "mmfusion.optim.schedules.mcan_scheduler"
    assert up["model"] == cfg["model"] and up["callbacks"][0]["_target_"].startswith("mmfusion.callbacks.")
    assert upgrade_targets(up) == up  # idempotent
    assert len({old for old, _ in LEGACY_TARGETS}) == len(LEGACY_TARGETS)


def test_an_old_layout_checkpoint_rebuilds(make_cfg, tmp_path) -> None:
    """A checkpoint whose stored config uses the old module paths loads with the same weights."""
    cfg = make_cfg(["reg=mdm_kl", "data.n_train=64", "data.n_test=32", "trainer.max_epochs=1"])
    cfg.paths.output_dir = str(tmp_path / "train")
    res, _ = train(cfg)
    ckpt = torch.load(res["best_ckpt"], map_location="cpu", weights_only=True)
    reg = ckpt["mmfusion_cfg"]["reg"]
    for node in reg.values():  # write it back as the old layout would have stored it
        node["_target_"] = node["_target_"].replace("mmfusion.plugins.", "mmfusion.regularizers.")
    assert any(n["_target_"].startswith("mmfusion.regularizers.") for n in reg.values())
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    module, _ = load_trained(old)
    for k, v in ckpt["state_dict"].items():
        torch.testing.assert_close(module.state_dict()[k], v)

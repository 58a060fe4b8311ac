"""The pre-trained DAEs of one model, on disk: what ``stage=emma_pretrain`` writes and ``reg=emma`` reads.

File (``torch.save``): ``{"format": "mmfusion-emma-dae/1", "modalities": [...], "dims": {m: d},
"hidden": {m: U}, "noise_std": {m: s}, "state": {m: state_dict}, "v_min": {m}, "v_mean": {m}, "v_std": {m},
"v_q99": {m}, "fit": {m: report}}``, where ``v_min`` is the lowest training potential (Eq. 13's V_min, frozen),
``v_mean``/``v_std`` the mean/std of the shifted training potential V' (``v_mean`` sets the initial w_i) and
``v_q99`` its 99th percentile (threshold oracle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmfusion.emma.composition import shifted_potential
from mmfusion.emma.dae import TiedDAE
from mmfusion.emma.energy import potential
from mmfusion.errors import DataError
from mmfusion.utils.safe_load import load_checkpoint

FORMAT = "mmfusion-emma-dae/1"


@torch.no_grad()
def energy_stats(dae: TiedDAE, x: torch.Tensor) -> dict[str, float]:
    v = potential(dae, x.float())
    vmin = v.min()
    vp = shifted_potential(v, vmin)
    return {
        "v_min": float(vmin),
        "v_mean": float(vp.mean()),
        "v_std": float(vp.std()),
        "v_q99": float(torch.quantile(vp, 0.99)),
    }


def save_daes(
    path: str | Path,
    daes: dict[str, TiedDAE],
    train_reps: dict[str, torch.Tensor],
    fit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    stats = {m: energy_stats(daes[m], train_reps[m]) for m in daes}
    blob = {
        "format": FORMAT,
        "modalities": list(daes),
        "dims": {m: d.dim for m, d in daes.items()},
        "hidden": {m: d.hidden for m, d in daes.items()},
        "noise_std": {m: d.noise_std for m, d in daes.items()},
        "state": {m: {k: v.detach().cpu() for k, v in d.state_dict().items()} for m, d in daes.items()},
        "v_min": {m: s["v_min"] for m, s in stats.items()},
        "v_mean": {m: s["v_mean"] for m, s in stats.items()},
        "v_std": {m: s["v_std"] for m, s in stats.items()},
        "v_q99": {m: s["v_q99"] for m, s in stats.items()},
        "fit": fit or {},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return blob


def load_daes(
    path: str | Path, modalities: tuple[str, ...], dims: dict[str, int]
) -> tuple[dict[str, TiedDAE], dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"reg.emma.dae_path: file not found: {p} (run stage=emma_pretrain first)")
    blob = load_checkpoint(
        p, "EMMA DAE file (reg.emma.dae_path)"
    )  # weights_only: never runs code from the file
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise DataError(f"{p}: not an EMMA DAE file (expected format {FORMAT!r})")
    missing = [m for m in modalities if m not in blob["dims"]]
    if missing:
        raise DataError(f"{p}: no DAE for modalities {missing} (file has {blob['modalities']})")
    wrong = {m: (blob["dims"][m], dims[m]) for m in modalities if int(blob["dims"][m]) != int(dims[m])}
    if wrong:
        raise DataError(
            f"{p}: DAE input sizes (file, model) differ: {wrong}; pre-train the DAEs on this model"
        )
    daes = {}
    for m in modalities:
        d = TiedDAE(int(blob["dims"][m]), int(blob["hidden"][m]), float(blob["noise_std"][m]))
        d.load_state_dict(blob["state"][m])
        d.requires_grad_(False)
        daes[m] = d
    return daes, blob

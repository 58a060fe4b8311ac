"""Test-time corruptions of a batch (``eval.corrupt=...``), applied to the INPUT features.

Spec grammar (several joined by ``,``):

* ``drop_<m>[+<m>...]``: zero the input features of the named modalities (e.g. ``drop_text``,
  ``drop_text+vision``), and flag them in ``batch["corrupt"]``;
* ``noise_<m>:<std>``: add Gaussian noise of std ``<std>`` x (the modality's per-feature std in the batch) on
  its valid steps;
* ``missing_<m>[+<m>...]:<rate>`` (or ``missing_all:<rate>``): random missing time steps: each valid step of
  each named sequence modality is zeroed independently with probability ``<rate>``;
* ``none``: no corruption.

BERT models take text as token ids: dropping text there replaces every non-special token by ``[UNK]`` when the
batch carries ``tokens["unk_token_id"]``/``tokens["special_mask"]`` (see ``tokens.py``); otherwise the
text features are zeroed.
"""

from __future__ import annotations

import torch

from mmfusion.contract import Batch
from mmfusion.errors import ConfigError


def parse(spec: str | None) -> list[tuple[str, list[str], float]]:
    if spec is None or spec in ("", "none", "null"):
        return []
    ops = []
    for part in str(spec).split(","):
        part = part.strip()
        if part.startswith("drop_"):
            ops.append(("drop", part[5:].split("+"), 0.0))
        elif part.startswith("missing_"):
            name, _, level = part[8:].partition(":")
            try:
                rate = float(level)
            except ValueError:
                raise ConfigError(
                    f"eval.corrupt: bad rate in {part!r}; expected missing_<modality>|all:<rate>"
                ) from None
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"eval.corrupt: missing rate must be in [0, 1], got {part!r}")
            ops.append(("missing", name.split("+"), rate))
        elif part.startswith("noise_"):
            name, _, level = part[6:].partition(":")
            try:
                ops.append(("noise", name.split("+"), float(level or 0.5)))
            except ValueError:
                raise ConfigError(
                    f"eval.corrupt: bad noise level in {part!r}; expected noise_<modality>:<std>"
                ) from None
        else:
            raise ConfigError(
                f"eval.corrupt: unknown corruption {part!r}; expected drop_<m>[+<m>], noise_<m>:<std>, missing_<m>|all:<rate> or none"
            )
    return ops


def apply(
    batch: Batch, spec: str | None, modalities: tuple[str, ...], generator: torch.Generator | None = None
) -> Batch:
    """Return a corrupted shallow copy of ``batch`` (the original tensors are not modified)."""
    ops = parse(spec)
    if not ops:
        return batch
    out = dict(batch)
    out["x"] = dict(batch["x"])
    b = next(iter(batch["x"].values())).shape[0]
    device = next(iter(batch["x"].values())).device
    corrupt = batch.get("corrupt")
    corrupt = (
        corrupt.clone()
        if corrupt is not None
        else torch.zeros(b, len(modalities), dtype=torch.bool, device=device)
    )
    for kind, mods, level in ops:
        if mods == ["all"]:
            mods = list(modalities)
        for m in mods:
            if m not in modalities:
                raise ConfigError(f"eval.corrupt: unknown modality {m!r}; this data has {list(modalities)}")
            x = out["x"][m]
            if kind == "drop":
                out["x"][m] = torch.zeros_like(x)
                if m == "text" and "tokens" in batch and "special_mask" in batch["tokens"]:
                    tok = dict(batch["tokens"])
                    ids = tok["input_ids"].clone()
                    ids[~tok["special_mask"].bool()] = int(tok["unk_token_id"][0])
                    tok["input_ids"] = ids
                    out["tokens"] = tok
            elif kind == "missing":
                if x.dim() == 3:  # (B, T, D): drop whole steps; utterance-level vectors have no steps
                    keep = torch.rand(x.shape[:2], generator=generator, device="cpu").to(device) >= level
                    out["x"][m] = x * keep[..., None].to(x.dtype)
            else:
                std = x.float().flatten(0, -2).std(0).clamp(min=1e-6)
                noise = torch.randn(x.shape, generator=generator, device="cpu").to(device) * std * level
                out["x"][m] = x + noise.to(x.dtype) * (x != 0).any(-1, keepdim=True)
            corrupt[:, modalities.index(m)] = True
    out["corrupt"] = corrupt
    return out

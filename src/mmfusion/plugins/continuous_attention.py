"""The continuous-attention plug-in (``reg=cont_softmax|cont_sparsemax|mca``).

``attach`` replaces attention pools in ``model.pools`` by continuous pools built from each pool's ``in_dim``,
``out_dim``, ``grid_shape`` (2-D grid -> 2-D continuous attention; ``None`` -> 1-D over time) and, when present,
``mid_dim``/``dropout``; the scorer MLP and ``linear_merge`` weights are copied, so attaching does not change the
initialisation. For MCAN only the image-side pool ``"image"`` is replaced, as in the thesis (Sect. 6.2.1).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mmfusion.attention.pools import ContinuousSoftmaxPool, ContinuousSparsemaxPool, MCAPool
from mmfusion.contract import Batch, FusionModel, FusionOutput, ModelInfo, Plugin
from mmfusion.errors import ConfigError

_KINDS = {"softmax": ContinuousSoftmaxPool, "sparsemax": ContinuousSparsemaxPool, "mca": MCAPool}


class ContinuousAttention(Plugin):
    """Replace discrete attention pools by continuous ones.

    Args:
        kind: ``softmax`` (Gaussian), ``sparsemax`` (truncated paraboloid / parabola) or ``mca`` (Gaussian
            mixture by weighted EM).
        pools: names in ``model.pools`` to replace, or ``"all"``.
        pool_kwargs: keyword arguments of the continuous pool (``num_basis``, ``basis_var``, ``ridge``,
            ``n_angles``, ``k``, ``n_iter``, ``select_k``, ``lam``, ...; see :mod:`mmfusion.attention.pools`).
        grid_pools: pools that must be 2-D grids (the image: continuous attention over bottom-up *boxes* has no
            meaning, the thesis uses grid features); attaching to one without ``grid_shape`` is a ``ConfigError``.
    """

    training_only = False

    def __init__(
        self,
        kind: str = "softmax",
        pools: list[str] | str = ("image",),
        pool_kwargs: dict[str, Any] | None = None,
        grid_pools: list[str] | tuple[str, ...] = ("image",),
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ConfigError(f"reg: ContinuousAttention kind must be one of {list(_KINDS)}, got {kind!r}")
        self.kind = kind
        self.pool_names = pools if isinstance(pools, str) else list(pools)
        self.pool_kwargs = dict(pool_kwargs or {})
        self.grid_pools = list(grid_pools)
        self.replaced: list[str] = []
        self._model: FusionModel | None = None

    def build_pool(self, old: nn.Module) -> nn.Module:
        for attr in ("in_dim", "out_dim"):
            if not hasattr(old, attr):
                raise ConfigError(
                    f"reg: pool {type(old).__name__} lacks attribute {attr!r} (AttFlat interface)"
                )
        kw: dict[str, Any] = {
            "in_dim": old.in_dim,
            "out_dim": old.out_dim,
            "grid_shape": getattr(old, "grid_shape", None),
        }
        for attr in ("mid_dim", "dropout"):
            if hasattr(old, attr):
                kw[attr] = getattr(old, attr)
        if getattr(old, "glimpses", 1) != 1:
            raise ConfigError(
                f"reg: continuous attention needs a single-glimpse pool, {type(old).__name__} has "
                f"glimpses={old.glimpses}"
            )
        new = _KINDS[self.kind](**kw, **self.pool_kwargs)
        src = old.state_dict()
        own = new.state_dict()
        new.load_state_dict(
            {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}, strict=False
        )
        return new

    def attach(self, model: FusionModel, info: ModelInfo) -> None:
        names = list(model.pools) if self.pool_names == "all" else list(self.pool_names)
        missing = [n for n in names if n not in model.pools]
        if missing or not names:
            raise ConfigError(
                f"reg: model {type(model).__name__} has attention pools {list(model.pools)}; "
                f"cannot replace {missing or names} (set reg.<name>.pools)"
            )
        for n in names:
            if n in self.grid_pools and getattr(model.pools[n], "grid_shape", None) is None:
                raise ConfigError(
                    f"reg: continuous attention on pool {n!r} needs grid features (grid_shape), but the "
                    f"model's {n!r} pool has grid_shape=None (bottom-up boxes?); use grid features, "
                    f"e.g. data.layout=grid"
                )
            new = self.build_pool(model.pools[n])
            p = next(model.pools[n].parameters(), None)
            if p is not None:
                new = new.to(p.device)
            model.replace_pool(n, new)
        self.replaced = names
        object.__setattr__(self, "_model", model)  # not a submodule: the pools belong to the model

    def diagnostics(self, out: FusionOutput, batch: Batch) -> dict[str, Tensor | float]:
        """Histogram of the test-time selected K (MCA with select_k) as fractions, per replaced pool."""
        logs: dict[str, Tensor | float] = {}
        if self._model is None:
            return logs
        for n in self.replaced:
            pool = self._model.pools[n]
            hist = getattr(pool, "k_histogram", None)
            if hist is not None and int(hist.sum()) > 0:
                frac = hist.double() / hist.sum()
                for k, f in enumerate(frac.tolist(), start=1):
                    logs[f"{n}/selected_k{k}"] = f
        return logs

    def k_histograms(self) -> dict[str, list[int]]:
        if self._model is None:
            return {}
        return {
            n: self._model.pools[n].k_histogram.tolist()
            for n in self.replaced
            if hasattr(self._model.pools[n], "k_histogram")
        }


def attention_maps(model: FusionModel) -> dict[str, Any]:
    """Last discrete attention (and continuous params) of every pool, for loggers/renderers."""
    out: dict[str, Any] = {}
    for n, pool in model.pools.items():
        att = getattr(pool, "last_attention", None)
        if att is not None:
            out[n] = {
                "attention": att,
                "params": getattr(pool, "last_params", None),
                "grid_shape": getattr(pool, "grid_shape", None),
            }
    return out


__all__ = ["ContinuousAttention", "attention_maps"]

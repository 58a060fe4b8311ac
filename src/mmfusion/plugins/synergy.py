"""Synergy regulariser: the C-network of Shankar, "Multimodal fusion via cortical network inspired losses"
(ACL 2022; ``shared/seeds/002``, Sec. 4.1 and Appendix D).

The task model is trained on ``L_task + beta * L_reg`` with
``L_reg = w_recon * L_L2 + w_align * L_d + w_kurt * L_kappa`` (each term switchable by a zero weight; Table 5's
ablation is a sweep over these switches):

* ``L_L2 = sum_i mean_b ||Q_i(Z_{-i}) - LN(Z_i)||^2 / d_i`` -- cross-modal reconstruction. Correction: the paper's
  ``||Q_i(Z_{-i}) - Z_i||^2`` can be driven to 0 by the encoders shrinking every Z; the target (and the input) go
  through a non-affine LayerNorm so the scale cannot be gamed.
* ``L_d = sum_i D(G_i(R_i^u LN(Z_i)), G_i(R_i^f LN(Z)))`` -- alignment of each unimodal and the fused distribution
  after a non-affine LayerNorm of both sides, fixed Gaussian random projections (``R``, k x d, entries N(0, 1/d),
  buffers) and an invertible network ``G_i`` (orthogonal k x k layers + LeakyReLU(0.2): exactly invertible,
  1-Lipschitz, no log-det needed); for KL one map per side (``side_maps='separate'``: a shared bijection leaves a
  KL unchanged). Corrections: without the normalisation (``align_normalize='none'``, the paper's form) L_d matches
  scales, not distributions (issue 14: 2-830x the task gradient); the paper applies one g_i to inputs of different
  sizes (hence separate projections per source); ``D`` is the *unbiased, normalised*
  MMD^2 with a detached median-heuristic multi-bandwidth RBF kernel (the paper prints un-normalised sums with the
  diagonal), or KL through a critic that *ascends* its bound (NWJ or DV, with the log the paper omits) while the
  C-network and encoders descend it -- Appendix D descends L_reg w.r.t. every C-network parameter, which for a
  variational KL critic minimises a lower bound and estimates nothing.
* ``L_kappa = sum_X kappa(P_X X) / (k(k+2))`` over ``X in {Z_1..Z_M, Z}`` -- Mardia kurtosis after a fixed random
  projection, with an EMA covariance, ridge and norm cap; scale-invariant ratio form (the paper's stale-covariance
  form scales like c^4 and rewards shrinking the features). ``kurt_sign=+1`` minimises (the paper's Algorithm D);
  its text motivates both signs, so the sign is configurable.

The C-network ({Q_i, G_i}) has its own AdamW optimiser and learning rate and is stepped in ``after_backward`` on the
gradients of the same backward as the task model (cooperative terms); the KL critics have a separate optimiser and
ascend in ``inner_step`` on detached representations. Training-time only: nothing here runs at inference.
All of its randomness (network init, projections) is seeded by ``seed`` and leaves the global RNG untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.contract import Batch, FusionModel, FusionOutput, ModelInfo, Plugin, PluginLoss
from mmfusion.errors import ConfigError
from mmfusion.estimators.dependence import LN_EPS, EMAKurtosis, dv_bound, mlp, mmd2, nwj_bound
from mmfusion.plugins.mdm import frozen


class BatchedOrthogonal(nn.Module):
    """``groups`` independent orthogonal k x k affine maps applied to ``(groups, N, k)`` in one batched product."""

    def __init__(self, groups: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.stack([nn.init.orthogonal_(torch.empty(k, k)) for _ in range(groups)])
        )
        self.bias = nn.Parameter(torch.zeros(groups, 1, k))
        nn.utils.parametrizations.orthogonal(self, "weight", orthogonal_map="cayley")

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight.transpose(1, 2))


class InvertibleNet(nn.Sequential):
    """``layers`` orthogonal k x k affine maps with LeakyReLU(0.2) in between: bijective, 1-Lipschitz. One
    independent network per group (modality), evaluated batched on ``(groups, N, k)``."""

    def __init__(self, k: int, layers: int = 4, groups: int = 1) -> None:
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(BatchedOrthogonal(groups, k))
            if i < layers - 1:
                mods.append(nn.LeakyReLU(0.2))
        super().__init__(*mods)


class Synergy(Plugin):
    """C-network synergy regulariser; ``loss`` returns ``beta * L_reg``.

    Args:
        divergence: alignment divergence ``L_d``: ``mmd`` (MMD^2) or ``kl`` (through variational critics).
        beta: weight of ``L_reg`` in the task loss (>= 0).
        recon_weight: weight of the cross-modal reconstruction ``L_L2`` (0 switches it off).
        align_weight: weight of the alignment ``L_d`` (0 switches it off).
        kurt_weight: weight of the kurtosis ``L_kappa`` (0 switches it off).
        proj_dim: ``k``, the size of the fixed random projections before the invertible network.
        kurt_dim: size of the fixed random projection before the kurtosis (capped at the representation size).
        q_hidden: width of the reconstruction MLPs ``Q_i``.
        q_layers: number of hidden layers of each ``Q_i``.
        inn_layers: number of orthogonal (Cayley) layers of the invertible network ``G_i``.
        recon_stop_grad: detach the reconstruction target ``Z_i`` (only the inputs of ``Q_i`` get the gradient).
        mmd_scales: bandwidth multipliers of the RBF kernel (relative to the median heuristic).
        mmd_unbiased: unbiased U-statistic MMD^2 (``True``) or the biased V-statistic.
        kl_bound: bound of the KL critics: ``nwj`` or ``dv``.
        critic_hidden: width of the KL critics' hidden layers.
        critic_layers: number of hidden layers of each KL critic.
        critic_lr: learning rate of the KL critics' Adam.
        critic_steps: ascent steps of the KL critics per task step.
        lr: learning rate of the C-network's AdamW.
        weight_decay: weight decay of the C-network's AdamW.
        kurt_decay: decay of the kurtosis' moving-average covariance.
        kurt_ridge: ridge added to that covariance, relative to the mean of its diagonal.
        kurt_cap: centred vectors are capped at ``kurt_cap * sqrt(tr S)`` (``None``: no cap).
        kurt_sign: ``+1`` minimises the kurtosis (the paper's Algorithm D), ``-1`` maximises it.
        grad_clip: gradient-norm clip of the C-network before its step (``None`` or 0: no clipping).
        align_normalize: ``layernorm`` (non-affine LayerNorm on both sides of ``L_d``, so the alignment compares
            distributions, not scales) or ``none``.
        side_maps: ``shared`` (one invertible network ``G_i`` for the unimodal and the fused side) or
            ``separate`` (one per side); ``None``: separate for ``kl``, shared for ``mmd``.
        warmup: linear warm-up of beta over this fraction of the run's steps (in [0, 1]).
        seed: seed of the C-network's initialisation and of the fixed random projections.
    """

    training_only = True

    def __init__(
        self,
        divergence: str = "mmd",
        beta: float = 1.0,
        recon_weight: float = 0.1,
        align_weight: float = 1.0,
        kurt_weight: float = 0.01,
        proj_dim: int = 32,
        kurt_dim: int = 16,
        q_hidden: int = 128,
        q_layers: int = 3,
        inn_layers: int = 4,
        recon_stop_grad: bool = False,
        mmd_scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
        mmd_unbiased: bool = True,
        kl_bound: str = "nwj",
        critic_hidden: int = 128,
        critic_layers: int = 2,
        critic_lr: float = 4e-4,
        critic_steps: int = 1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        kurt_decay: float = 0.9,
        kurt_ridge: float = 1e-3,
        kurt_cap: float | None = 3.0,
        kurt_sign: float = 1.0,
        grad_clip: float | None = 5.0,
        align_normalize: str = "layernorm",
        side_maps: str | None = None,
        warmup: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if divergence not in ("mmd", "kl"):
            raise ConfigError(f"reg.synergy divergence must be 'mmd' or 'kl', got {divergence!r}")
        if align_normalize not in ("layernorm", "none"):
            raise ConfigError(
                f"reg.synergy align_normalize must be 'layernorm' or 'none', got {align_normalize!r}"
            )
        side_maps = side_maps or ("separate" if divergence == "kl" else "shared")
        if side_maps not in ("shared", "separate"):
            raise ConfigError(f"reg.synergy side_maps must be 'shared' or 'separate', got {side_maps!r}")
        if not 0.0 <= warmup <= 1.0:
            raise ConfigError(f"reg.synergy warmup is a fraction of the run in [0, 1], got {warmup}")
        if kl_bound not in ("nwj", "dv"):
            raise ConfigError(f"reg.synergy kl_bound must be 'nwj' or 'dv', got {kl_bound!r}")
        for key, val in (
            ("beta", beta),
            ("recon_weight", recon_weight),
            ("align_weight", align_weight),
            ("kurt_weight", kurt_weight),
        ):
            if val < 0:
                raise ConfigError(f"reg.synergy {key} must be >= 0, got {val}")
        self.divergence, self.beta = divergence, float(beta)
        self.w = {"recon": float(recon_weight), "align": float(align_weight), "kurt": float(kurt_weight)}
        self.proj_dim, self.kurt_dim, self.q_hidden, self.q_layers = proj_dim, kurt_dim, q_hidden, q_layers
        self.inn_layers, self.recon_stop_grad = inn_layers, recon_stop_grad
        self.mmd_scales, self.mmd_unbiased = tuple(mmd_scales), mmd_unbiased
        self.kl_bound = nwj_bound if kl_bound == "nwj" else dv_bound
        self.critic_hidden, self.critic_layers = critic_hidden, critic_layers
        self.critic_lr, self.critic_steps = critic_lr, int(critic_steps)
        self.lr, self.weight_decay, self.grad_clip = lr, weight_decay, grad_clip
        self.kurt_kw = dict(decay=kurt_decay, rel_ridge=kurt_ridge, cap=kurt_cap)
        self.kurt_sign, self.seed = float(kurt_sign), seed
        self.align_normalize, self.side_maps = align_normalize, side_maps
        self.warmup, self.total_steps = float(warmup), None
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.modalities: tuple[str, ...] = ()
        self.cnet = nn.ModuleDict()
        self.critics = nn.ModuleDict()
        self.kurtosis = nn.ModuleDict()

    # ------------------------------------------------------------------------------------------------ building

    def attach(self, model: FusionModel, info: ModelInfo) -> None:
        mods = tuple(info.modalities)
        if len(mods) < 2:
            raise ConfigError(f"reg.synergy needs >= 2 modalities, the model has {list(mods)}")
        self.modalities, dims, fdim = mods, dict(info.unimodal_dims), int(info.fused_dim)
        g = torch.Generator().manual_seed(self.seed)
        k = self.proj_dim

        def proj(out_dim: int, in_dim: int) -> Tensor:  # JL projection, entries N(0, 1/out_dim)
            return torch.randn(out_dim, in_dim, generator=g) / math.sqrt(out_dim)

        def align_proj(out_dim: int, in_dim: int) -> Tensor:
            # entries N(0, 1/in_dim): a unit-RMS (layer-normalised) input of any size gives unit-variance outputs,
            # so unimodal (d_i) and fused (d) sides land on the same scale before they are compared
            scale = in_dim if self.align_normalize == "layernorm" else out_dim
            return torch.randn(out_dim, in_dim, generator=g) / math.sqrt(scale)

        with torch.random.fork_rng(devices=[]):  # the C-network's init leaves the global RNG untouched
            torch.manual_seed(self.seed)
            self._build(mods, dims, fdim)
        for m in mods:
            self.register_buffer(f"R_uni_{m}", align_proj(k, dims[m]))
            self.register_buffer(f"R_fus_{m}", align_proj(k, fdim))
        for name, d in [*((m, dims[m]) for m in mods), ("fused", fdim)]:
            kd = min(self.kurt_dim, d)
            self.register_buffer(f"P_kurt_{name}", proj(kd, d))

    def _build(self, mods: tuple[str, ...], dims: dict[str, int], fdim: int) -> None:
        k = self.proj_dim
        self.cnet["Q"] = nn.ModuleDict(
            {
                m: mlp(sum(dims[o] for o in mods if o != m), self.q_hidden, self.q_layers, dims[m])
                for m in mods
            }
        )
        # one invertible G_i per modality shared by both sides, or one per side (G_i^u, G_i^f) -- a bijection
        # shared by both sides leaves a KL unchanged, so for KL only separate maps let G act
        groups = len(mods) * (2 if self.side_maps == "separate" else 1)
        self.cnet["G"] = InvertibleNet(k, self.inn_layers, groups=groups)
        if self.divergence == "kl":
            self.critics.update({m: mlp(k, self.critic_hidden, self.critic_layers, 1) for m in mods})
        for name, d in [*((m, dims[m]) for m in mods), ("fused", fdim)]:
            self.kurtosis[name] = EMAKurtosis(min(self.kurt_dim, d), **self.kurt_kw)  # type: ignore[arg-type]

    @property
    def min_batch_size(self) -> int:
        """The unbiased MMD^2 and the kurtosis covariance need two samples."""
        return 2

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)

    def current_beta(self) -> float:
        """beta, ramped linearly from 0 over the first ``warmup`` fraction of the run (while the C-network and
        critics start from random; no ramp when the run length is unknown)."""
        length = int(round(self.warmup * self.total_steps)) if self.total_steps else 0
        return self.beta if length <= 0 else self.beta * min(1.0, float(self.steps) / length)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        if not self.modalities:
            raise RuntimeError("Synergy plug-in used before attach()")
        opts = [
            torch.optim.AdamW(
                self.cnet.parameters(), lr=self.lr, weight_decay=self.weight_decay, foreach=True
            )
        ]
        if self.divergence == "kl":
            opts.append(torch.optim.Adam(self.critics.parameters(), lr=self.critic_lr, foreach=True))
        return opts

    # ------------------------------------------------------------------------------------------------ terms

    def _reps(self, out: FusionOutput) -> tuple[dict[str, Tensor], Tensor]:
        try:
            return {m: out.unimodal[m].float() for m in self.modalities}, out.fused.float()
        except KeyError as e:
            raise ConfigError(f"reg.synergy: model output has no unimodal representation {e}") from None

    def aligned_pairs(self, uni: dict[str, Tensor], fused: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """``{m: (G_m(R^u_m z_m), G_m(R^f_m Z))}``: the pairs of samples whose distributions are aligned
        (all modalities in one batched pass through the invertible networks)."""
        n = fused.shape[0]
        if self.align_normalize == "layernorm":  # compare distributions, not scales (see the docstring)
            uni = {m: F.layer_norm(z, z.shape[-1:], eps=LN_EPS) for m, z in uni.items()}
            fused = F.layer_norm(fused, fused.shape[-1:], eps=LN_EPS)
        pu = [uni[m] @ getattr(self, f"R_uni_{m}").T for m in self.modalities]
        pf = [fused @ getattr(self, f"R_fus_{m}").T for m in self.modalities]
        if self.side_maps == "separate":  # groups: G_1^u .. G_M^u, G_1^f .. G_M^f
            y = self.cnet["G"](torch.stack([*pu, *pf]))
            mm = len(self.modalities)
            return {m: (y[i], y[mm + i]) for i, m in enumerate(self.modalities)}
        y = self.cnet["G"](torch.stack([torch.cat([a, b]) for a, b in zip(pu, pf)]))
        return {m: (y[i, :n], y[i, n:]) for i, m in enumerate(self.modalities)}

    def terms(self, out: FusionOutput) -> dict[str, Tensor]:
        """Unweighted ``recon``, ``align`` and ``kurt`` terms (those with weight 0 are skipped)."""
        uni, fused = self._reps(out)
        res: dict[str, Tensor] = {}
        if self.w["recon"] > 0:
            normed = {m: F.layer_norm(z, z.shape[-1:], eps=LN_EPS) for m, z in uni.items()}
            total = fused.new_zeros(())
            for m in self.modalities:
                src = torch.cat([normed[o] for o in self.modalities if o != m], -1)
                target = normed[m].detach() if self.recon_stop_grad else normed[m]
                total = total + ((self.cnet["Q"][m](src) - target) ** 2).mean()  # mean over batch and dims
            res["recon"] = total
        if self.w["align"] > 0:
            total = fused.new_zeros(())
            for m, (a, b) in self.aligned_pairs(uni, fused).items():
                if self.divergence == "mmd":
                    total = total + mmd2(a, b, scales=self.mmd_scales, unbiased=self.mmd_unbiased)
                else:
                    crit = self.critics[m]
                    total = total + self.kl_bound(crit(a).squeeze(-1), crit(b).squeeze(-1))
            res["align"] = total
        if self.w["kurt"] > 0:
            total = fused.new_zeros(())
            for name, z in [*uni.items(), ("fused", fused)]:
                total = total + self.kurtosis[name](z @ getattr(self, f"P_kurt_{name}").T)
            res["kurt"] = self.kurt_sign * total
        return res

    # ------------------------------------------------------------------------------------------------ contract

    def inner_step(
        self,
        out: FusionOutput,
        batch: Batch,
        optimizers: list[torch.optim.Optimizer],
        backward: Callable[[Tensor], None],
    ) -> dict[str, Tensor | float]:
        """KL variant only: the critics ascend their KL bound on detached, projected representations."""
        if self.divergence != "kl" or self.w["align"] <= 0:
            return {}
        opt = optimizers[1]
        uni, fused = self._reps(out)
        with torch.no_grad():
            pairs = self.aligned_pairs({m: z.detach() for m, z in uni.items()}, fused.detach())
        for _ in range(self.critic_steps):
            opt.zero_grad(set_to_none=True)
            bound = sum(
                self.kl_bound(self.critics[m](a).squeeze(-1), self.critics[m](b).squeeze(-1))
                for m, (a, b) in pairs.items()
            )
            backward(-bound)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return {"critic_kl": bound.detach()}

    def loss(self, out: FusionOutput, batch: Batch, stage: str) -> PluginLoss | None:
        with frozen(self.critics):
            t = self.terms(out)
        reg = sum((self.w[k] * v for k, v in t.items()), out.fused.new_zeros(()))
        logs: dict[str, Tensor | float] = {k: v.detach() for k, v in t.items()}
        logs["L_reg"] = reg.detach()
        beta = self.current_beta() if stage == "train" else self.beta
        logs["beta"] = beta
        return PluginLoss(value=beta * reg, logs=logs)

    def after_backward(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """The C-network descends the same ``beta * L_reg`` the task model just back-propagated."""
        opt = optimizers[0]
        self.steps += 1
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.cnet.parameters(), self.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def diagnostics(self, out: FusionOutput, batch: Batch) -> dict[str, Tensor | float]:
        was = self.training
        self.eval()  # no EMA update of the kurtosis covariance
        try:
            return {k: v.detach() for k, v in self.terms(out).items()}
        finally:
            self.train(was)

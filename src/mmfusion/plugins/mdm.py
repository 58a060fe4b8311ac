"""MDM: mutual dependency maximisation (Colombo, Chapuis, Labeau & Clavel, EMNLP 2021; ``shared/seeds/004``).

Objective (slides, Eq. 5): ``L = L_task - lambda * MDM(p(z_1..z_M) || prod_j p(z_j))`` with a statistics network
``T_theta`` on the unimodal representations, trained by the two-stage procedure of Algorithm 1: ``unroll`` critic
ascent steps on the (detached) batch, then the task update with the critic frozen. Measures (slides, Eq. 6-8):

* ``kl``  -- Donsker-Varadhan read-out, trained with MINE's moving-average gradient (TUBA form; small-batch DV
  gradients are biased);
* ``f``   -- NWJ, ``E_P T - E_Q e^{T-1}``;
* ``wasserstein`` -- ``E_P T - E_Q T`` with a 1-Lipschitz T (spectral norm; gradient penalty optional).
  Correction: the slides print ``E_P T - log E_Q T``; the Kantorovich-Rubinstein dual has no log.

Choices that are ours (not on the slides): T takes the encoder *outputs*, each through a non-affine LayerNorm (the
dependence of raw inputs is fixed by the data; W1 is scale-dependent, so without normalisation the encoders could
raise it by inflating their outputs); negatives are fresh in-batch per-modality derangements instead of a fixed
"negative dataset" (same distribution, no second encoder pass, no fixed points); MLP critic 2x256 LeakyReLU,
Adam lr 1e-3, unroll 1, lambda 0.2 (configs/reg) and a linear warm-up of lambda over a fraction of the run
(``warmup``; issue 14's calibration in docs/regularisers.md). On validation the plug-in reports the critic's estimate
on the whole split and a closed-form Gaussian total-correlation probe of the same representations (``tc_probe``).

Randomness is private (``seed``): the critic is initialised under a forked RNG and the negatives are drawn from
the plug-in's own generator (saved in checkpoints), so adding the plug-in does not change the task model's random
stream (dropout masks); with ``weight=0`` training is bit-identical to ``reg=none``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mmfusion.contract import Batch, FusionModel, FusionOutput, ModelInfo, Plugin, PluginLoss
from mmfusion.errors import ConfigError
from mmfusion.estimators.dependence import DependencyEstimator, normalize_view
from mmfusion.estimators.gaussian import gaussian_total_correlation

MEASURE_ALIASES = {
    "kl": "mine",
    "f": "nwj",
    "w": "wasserstein",
    "wasserstein": "wasserstein",
    "mine": "mine",
    "dv": "dv",
    "nwj": "nwj",
    "infonce": "infonce",
}


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Build the graph without gradients for ``module``'s parameters and in eval mode (no spectral-norm power
    iteration, so the frozen critic is the same function throughout the task update); restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    was_training = module.training
    module.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        module.train(was_training)


class MDM(Plugin):
    """Mutual dependency maximisation plug-in; ``loss`` returns ``-weight * MDM`` (added to the task loss).

    Args:
        measure: ``kl`` (Donsker-Varadhan read-out, MINE gradient), ``f`` (NWJ), ``wasserstein`` (or ``w``); also
            the estimator names ``mine``, ``dv``, ``nwj``, ``infonce``.
        weight: lambda, the weight of ``-MDM`` in the task loss (>= 0).
        unroll: critic ascent steps per task step (Algorithm 1).
        hidden: width of the critic MLP's hidden layers.
        layers: number of hidden layers of the critic MLP.
        lr: learning rate of the critic's Adam.
        betas: Adam's betas for the critic.
        weight_decay: weight decay of the critic's Adam.
        normalize: normalisation of each representation before the critic: ``layernorm`` (non-affine), ``l2`` or
            ``none``.
        spectral_norm: spectral norm on every critic layer; ``None``: on for ``wasserstein`` only.
        gp_weight: weight of a gradient penalty on the critic (Wasserstein; 0 = off).
        ema_decay: decay of MINE's moving average (``kl``).
        n_negatives: derangement negative sets per step (InfoNCE's K).
        warmup: linear warm-up of lambda over this fraction of the run's steps (in [0, 1]).
        warmup_steps: warm-up length in task steps; overrides ``warmup`` when given.
        critic_grad_clip: gradient-norm clip of the critic's steps (``None`` or 0: no clipping).
        diagnostic_seed: seed of the fixed negatives of the validation probe.
        probe_components: principal components per modality in the Gaussian total-correlation probe.
        probe_max_samples: at most this many validation samples are gathered for the probe.
        seed: seed of the critic's initialisation and of the plug-in's private generator for negatives.
    """

    training_only = True

    def __init__(
        self,
        measure: str = "kl",
        weight: float = 0.1,
        unroll: int = 1,
        hidden: int = 256,
        layers: int = 2,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        normalize: str = "layernorm",
        spectral_norm: bool | None = None,
        gp_weight: float = 0.0,
        ema_decay: float = 0.99,
        n_negatives: int = 1,
        warmup: float = 0.0,
        warmup_steps: int | None = None,
        critic_grad_clip: float | None = 10.0,
        diagnostic_seed: int = 0,
        probe_components: int = 8,
        probe_max_samples: int = 4096,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if measure not in MEASURE_ALIASES:
            raise ConfigError(f"reg.mdm measure must be one of {sorted(MEASURE_ALIASES)}; got {measure!r}")
        if unroll < 1:
            raise ConfigError(f"reg.mdm unroll must be >= 1, got {unroll}")
        if weight < 0:
            raise ConfigError(f"reg.mdm weight (lambda) must be >= 0, got {weight}")
        if not 0.0 <= warmup <= 1.0:
            raise ConfigError(f"reg.mdm warmup is a fraction of the run in [0, 1], got {warmup}")
        self.measure = MEASURE_ALIASES[measure]
        self.weight, self.unroll, self.lr = float(weight), int(unroll), float(lr)
        self.betas, self.weight_decay = tuple(betas), float(weight_decay)
        self.warmup, self.critic_grad_clip = float(warmup), critic_grad_clip
        self.warmup_steps = (
            None if warmup_steps is None else int(warmup_steps)
        )  # absolute override of `warmup`
        self.total_steps: int | None = None
        self.probe_components, self.probe_max_samples = int(probe_components), int(probe_max_samples)
        self._val_views: list[list[Tensor]] = []
        self.diagnostic_seed, self.seed = diagnostic_seed, seed
        # private RNG for the negatives / gradient-penalty interpolates: the plug-in never draws from the global
        # stream, so the task model sees the same dropout masks with and without it (state kept in checkpoints)
        self.rng = torch.Generator().manual_seed(seed)
        self._estimator_kw = dict(
            measure=self.measure,
            hidden=hidden,
            layers=layers,
            normalize=normalize,
            spectral_norm=spectral_norm,
            gp_weight=gp_weight,
            ema_decay=ema_decay,
            n_negatives=n_negatives,
        )
        self.estimator: DependencyEstimator | None = None
        self.modalities: tuple[str, ...] = ()
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------------------------------------ contract

    def attach(self, model: FusionModel, info: ModelInfo) -> None:
        if len(info.modalities) < 2:
            raise ConfigError(f"reg.mdm needs >= 2 modalities, the model has {list(info.modalities)}")
        self.modalities = tuple(info.modalities)
        with torch.random.fork_rng(devices=[]):  # the critic's init leaves the global RNG untouched
            torch.manual_seed(self.seed)
            self.estimator = DependencyEstimator(
                [info.unimodal_dims[m] for m in self.modalities], **self._estimator_kw
            )  # type: ignore[arg-type]

    @property
    def min_batch_size(self) -> int:
        """Derangement negatives need as many samples as modalities (and a bound needs >= 2)."""
        return max(2, len(self.modalities))

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)

    def get_extra_state(self) -> Tensor:
        return self.rng.get_state()  # a uint8 tensor: checkpoints stay weights_only-loadable

    def set_extra_state(self, state: Tensor) -> None:
        self.rng.set_state(state.cpu())

    def _est(self) -> DependencyEstimator:
        if self.estimator is None:
            raise RuntimeError("MDM plug-in used before attach()")
        return self.estimator

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(
                self._est().parameters(),
                lr=self.lr,
                betas=self.betas,
                weight_decay=self.weight_decay,
                foreach=True,
            )
        ]

    def views(self, out: FusionOutput, detach: bool) -> list[Tensor]:
        try:
            vs = [out.unimodal[m] for m in self.modalities]
        except KeyError as e:
            raise ConfigError(f"reg.mdm: model output has no unimodal representation {e}") from None
        return [v.detach().float() if detach else v.float() for v in vs]

    def inner_step(
        self,
        out: FusionOutput,
        batch: Batch,
        optimizers: list[torch.optim.Optimizer],
        backward: Callable[[Tensor], None],
    ) -> dict[str, Tensor | float]:
        """``unroll`` ascent steps of the critic on the detached representations (fresh negatives each step)."""
        est, (opt,) = self._est(), optimizers
        views = self.views(out, detach=True)
        logs: dict[str, Tensor | float] = {}
        for _ in range(self.unroll):
            opt.zero_grad(set_to_none=True)
            loss, b = est.critic_loss(views, self.rng)
            backward(loss)
            if self.critic_grad_clip:
                torch.nn.utils.clip_grad_norm_(est.parameters(), self.critic_grad_clip)
            opt.step()
            self.critic_steps += 1
        opt.zero_grad(set_to_none=True)
        logs["critic_estimate"] = b.estimate.detach()
        if b.penalty is not None:
            logs["gradient_penalty"] = b.penalty.detach()
        return logs

    def warmup_length(self) -> int:
        """Task steps of the linear lambda ramp: ``warmup_steps`` if given, else ``warmup`` x the run's steps (0
        when the run length is unknown, e.g. outside a Trainer)."""
        if self.warmup_steps is not None:
            return max(0, self.warmup_steps)
        return int(round(self.warmup * self.total_steps)) if self.total_steps else 0

    def current_weight(self) -> float:
        """lambda, ramped linearly from 0 over the warm-up (counted in task steps = critic steps / unroll)."""
        length = self.warmup_length()
        if length <= 0:
            return self.weight
        return self.weight * min(1.0, float(self.critic_steps) / (length * self.unroll))

    def loss(self, out: FusionOutput, batch: Batch, stage: str) -> PluginLoss | None:
        """``-lambda * MDM`` with the critic frozen (no gradient reaches the critic from the task loss)."""
        est = self._est()
        with frozen(est):
            b = est(self.views(out, detach=False), self.rng)
        w = self.current_weight() if stage == "train" else self.weight
        if stage == "val" and sum(v[0].shape[0] for v in self._val_views) < self.probe_max_samples:
            self._val_views.append([v.detach().cpu() for v in self.views(out, detach=True)])
        return PluginLoss(value=-w * b.objective, logs={"mdm": b.estimate.detach(), "lambda": w})

    @torch.no_grad()
    def probe(self, views: list[Tensor]) -> dict[str, float]:
        """On one set of representations (e.g. the whole validation split): the critic's estimate (fixed
        negatives) and the closed-form Gaussian total-correlation probe of the same normalised representations
        the critic sees (:func:`~mmfusion.estimators.gaussian.gaussian_total_correlation`, ``probe_components``
        principal components per modality, Wishart bias removed). A healthy KL/f critic reads a sizeable fraction
        of the probe (the probe measures linear dependence only; the critic is a lower bound)."""
        est = self._est()
        g = torch.Generator().manual_seed(self.diagnostic_seed)
        dev = next(est.parameters()).device
        with frozen(est):
            b = est([v.to(dev) for v in views], g)
        normed = [normalize_view(v.double(), est.critic.normalize) for v in views]
        return {
            "critic_estimate": float(b.estimate),
            "tc_probe": gaussian_total_correlation(normed, self.probe_components),
        }

    def validation_epoch_diagnostics(self) -> dict[str, Tensor | float]:
        """:meth:`probe` on the representations of the validation split gathered by ``loss(stage='val')``."""
        batches, self._val_views = self._val_views, []
        if not batches or self.estimator is None:
            return {}
        views = [torch.cat([b[j] for b in batches]) for j in range(len(self.modalities))]
        if views[0].shape[0] < self.min_batch_size:
            return {}
        return self.probe(views)

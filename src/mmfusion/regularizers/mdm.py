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
Adam lr 1e-4, unroll 1, lambda 0.1 and a linear warm-up of lambda over the first critic steps.

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
from mmfusion.regularizers.estimators import DependencyEstimator

MEASURE_ALIASES = {"kl": "mine", "f": "nwj", "w": "wasserstein", "wasserstein": "wasserstein", "mine": "mine",
                   "dv": "dv", "nwj": "nwj", "infonce": "infonce"}


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
    """Mutual dependency maximisation plug-in; ``loss`` returns ``-weight * MDM`` (added to the task loss)."""

    training_only = True

    def __init__(self, measure: str = "kl", weight: float = 0.1, unroll: int = 1, hidden: int = 256,
                 layers: int = 2, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, normalize: str = "layernorm", spectral_norm: bool | None = None,
                 gp_weight: float = 0.0, ema_decay: float = 0.99, n_negatives: int = 1, warmup_steps: int = 0,
                 critic_grad_clip: float | None = 10.0, diagnostic_seed: int = 0, seed: int = 0) -> None:
        super().__init__()
        if measure not in MEASURE_ALIASES:
            raise ConfigError(f"reg.mdm measure must be one of {sorted(MEASURE_ALIASES)}; got {measure!r}")
        if unroll < 1:
            raise ConfigError(f"reg.mdm unroll must be >= 1, got {unroll}")
        if weight < 0:
            raise ConfigError(f"reg.mdm weight (lambda) must be >= 0, got {weight}")
        self.measure = MEASURE_ALIASES[measure]
        self.weight, self.unroll, self.lr = float(weight), int(unroll), float(lr)
        self.betas, self.weight_decay = tuple(betas), float(weight_decay)
        self.warmup_steps, self.critic_grad_clip = int(warmup_steps), critic_grad_clip
        self.diagnostic_seed, self.seed = diagnostic_seed, seed
        # private RNG for the negatives / gradient-penalty interpolates: the plug-in never draws from the global
        # stream, so the task model sees the same dropout masks with and without it (state kept in checkpoints)
        self.rng = torch.Generator().manual_seed(seed)
        self._estimator_kw = dict(measure=self.measure, hidden=hidden, layers=layers, normalize=normalize,
                                  spectral_norm=spectral_norm, gp_weight=gp_weight, ema_decay=ema_decay,
                                  n_negatives=n_negatives)
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
            self.estimator = DependencyEstimator([info.unimodal_dims[m] for m in self.modalities],
                                                 **self._estimator_kw)  # type: ignore[arg-type]

    def get_extra_state(self) -> Tensor:
        return self.rng.get_state()  # a uint8 tensor: checkpoints stay weights_only-loadable

    def set_extra_state(self, state: Tensor) -> None:
        self.rng.set_state(state.cpu())

    def _est(self) -> DependencyEstimator:
        if self.estimator is None:
            raise RuntimeError("MDM plug-in used before attach()")
        return self.estimator

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self._est().parameters(), lr=self.lr, betas=self.betas,
                                 weight_decay=self.weight_decay, foreach=True)]

    def views(self, out: FusionOutput, detach: bool) -> list[Tensor]:
        try:
            vs = [out.unimodal[m] for m in self.modalities]
        except KeyError as e:
            raise ConfigError(f"reg.mdm: model output has no unimodal representation {e}") from None
        return [v.detach().float() if detach else v.float() for v in vs]

    def inner_step(self, out: FusionOutput, batch: Batch, optimizers: list[torch.optim.Optimizer],
                   backward: Callable[[Tensor], None]) -> dict[str, Tensor | float]:
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

    def current_weight(self) -> float:
        if self.warmup_steps <= 0:
            return self.weight
        return self.weight * min(1.0, float(self.critic_steps) / (self.warmup_steps * self.unroll))

    def loss(self, out: FusionOutput, batch: Batch, stage: str) -> PluginLoss | None:
        """``-lambda * MDM`` with the critic frozen (no gradient reaches the critic from the task loss)."""
        est = self._est()
        with frozen(est):
            b = est(self.views(out, detach=False), self.rng)
        w = self.current_weight() if stage == "train" else self.weight
        return PluginLoss(value=-w * b.objective, logs={"mdm": b.estimate.detach(), "lambda": w})

    @torch.no_grad()
    def diagnostics(self, out: FusionOutput, batch: Batch) -> dict[str, Tensor | float]:
        """The critic's estimate on a (fixed) validation batch, with fixed negatives, for health monitoring."""
        est = self._est()
        g = torch.Generator().manual_seed(self.diagnostic_seed)
        with frozen(est):
            b = est(self.views(out, detach=True), g)
        return {"critic_estimate": b.estimate.detach()}

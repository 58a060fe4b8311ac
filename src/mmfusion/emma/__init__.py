"""EMMA: energy-based multimodal attention (Werenne 2019, thesis summary = seed ``000_…``).

One concept per module:

* :mod:`~mmfusion.emma.dae`          tied-weight denoising autoencoder per modality and its training (Eq. 3-5);
* :mod:`~mmfusion.emma.energy`       potential energy V (Eq. 8), its gradient, its Laplacian (Eq. 10, sign fixed)
  and the normality oracles (Eq. 11 kept as an option);
* :mod:`~mmfusion.emma.composition`  modal energies, system energy, Gibbs importance weights (Eq. 13-16);
* :mod:`~mmfusion.emma.attention`    attention factors beta (Eq. 17), masking threshold (Eq. 19), capacity;
* :mod:`~mmfusion.emma.regularizer`  Omega = sum_k eta_k log alpha_k (Eq. 20), eta from corruption labels;
* :mod:`~mmfusion.emma.gate`         the module inserted between encoders and fusion (all three steps);
Outside this package: the ``reg=emma`` plug-in (:mod:`mmfusion.plugins.emma`) and the abnormal-modality injection
for fine-tuning, a Lightning callback (:mod:`mmfusion.callbacks.emma_inject`, Sect. 4).

The corrections to the summary are listed in ``docs/emma.md`` and at the place where each applies.
"""

from mmfusion.emma.attention import AttentionStep
from mmfusion.emma.composition import Composition
from mmfusion.emma.dae import TiedDAE, fit_dae
from mmfusion.emma.energy import div_field, grad_potential, laplacian, potential

__all__ = [
    "AttentionStep",
    "Composition",
    "TiedDAE",
    "fit_dae",
    "div_field",
    "grad_potential",
    "laplacian",
    "potential",
]

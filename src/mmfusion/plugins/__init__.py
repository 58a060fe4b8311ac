"""Every plug-in of the ``reg`` config group, behind the one contract (:class:`mmfusion.contract.Plugin`).

* loss plug-ins: :mod:`~mmfusion.plugins.mdm` (MDM: KL, f, Wasserstein), :mod:`~mmfusion.plugins.synergy`
  (C-network losses), :mod:`~mmfusion.plugins.contrastive`, :mod:`~mmfusion.plugins.dcca`,
  :mod:`~mmfusion.plugins.autoencoder` (lecture 4.1; shared pieces in :mod:`~mmfusion.plugins.coordination`);
* :mod:`~mmfusion.plugins.emma`: EMMA's gate and regulariser (its numerics: :mod:`mmfusion.emma`);
* :mod:`~mmfusion.plugins.continuous_attention`: continuous softmax/sparsemax and MCA pools (numerics:
  :mod:`mmfusion.attention`);
* :mod:`~mmfusion.plugins.influence`: the influence diagnostic every loss plug-in logs.

The estimators they share live in :mod:`mmfusion.estimators`.
"""

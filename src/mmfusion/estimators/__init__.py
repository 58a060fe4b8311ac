"""Dependence estimators shared by the loss plug-ins, Lightning-free: variational bounds of KL / f-divergences,
the Wasserstein dual and InfoNCE (:mod:`~mmfusion.estimators.dependence`), and closed-form Gaussian quantities
(:mod:`~mmfusion.estimators.gaussian`: total correlation, used by the MDM probe and the tests)."""

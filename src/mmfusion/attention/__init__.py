"""Attention pools: MCAN's discrete AttFlat and continuous attention (Farinhas, 2021; Martins et al., 2020).

Submodules: ``attflat`` / ``discrete`` (discrete pools), ``continuous`` (continuous softmax/sparsemax
transforms), ``moments`` (moment matching), ``value_function`` (ridge regression onto RBFs), ``mca`` (weighted
EM, mixtures), ``pools`` (continuous pools), ``localization`` (attention mass inside a region). The
``reg=cont_*|mca`` plug-in is :mod:`mmfusion.plugins.continuous_attention`.
"""

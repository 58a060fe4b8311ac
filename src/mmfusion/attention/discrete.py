"""1-D discrete attention pool for sentiment models: AttFlat over time with small defaults.

Same interface as :class:`mmfusion.attention.attflat.AttFlat` (``in_dim``, ``out_dim``, ``grid_shape=None``,
``last_attention``), so the continuous plug-in can replace it by a 1-D continuous pool.
"""

from __future__ import annotations

from mmfusion.attention.attflat import AttFlat


class DiscreteAttentionPool(AttFlat):
    """Additive attention over a right-padded sequence: softmax(MLP(x)) weighted sum, Linear(D -> out_dim)
    (``out_dim`` defaults to ``in_dim``)."""

    def __init__(
        self,
        in_dim: int,
        mid_dim: int = 64,
        out_dim: int | None = None,
        glimpses: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            in_dim,
            mid_dim=mid_dim,
            out_dim=out_dim or in_dim,
            glimpses=glimpses,
            dropout=dropout,
            grid_shape=None,
        )

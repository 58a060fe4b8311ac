"""Value function V(t) = B psi(t) by multivariate ridge regression (thesis Alg. 1, Eq. 3.17, Fig. 6.3).

G = F^T (F F^T + lambda I)^-1 with F_jl = psi_j(t_l) at the **cell centres** (the same positions as the moment
matching and the EM). Padding trick (notes sect. 3.3): the regression is done on the grid extended by half its size
on every side with zero values outside, i.e. F over the padded cell centres and only the rows of the real cells
kept, so V(t) decays to 0 outside [0, 1]^d. G depends only on the grid and the basis: a constant buffer computed
once (2-D), or once per sequence length and cached (1-D). The context is c = B r = X^T (G r).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfusion.attention.basis import GaussianBasis


def _centres(n: int, pad: int) -> Tensor:
    return (torch.arange(-pad, n + pad, dtype=torch.float64) + 0.5) / n


def ridge_g(
    basis: GaussianBasis, shape: tuple[int, ...], ridge: float = 0.01, padding: bool = True
) -> Tensor:
    """G (L, N) in float64 for a 1-D length (n,) or a 2-D grid (h, w) (row-major)."""
    pads = [(s + 1) // 2 if padding else 0 for s in shape]
    axes = [_centres(s, p) for s, p in zip(shape, pads)]
    if len(shape) == 1:
        t = axes[0]
        keep = torch.arange(pads[0], pads[0] + shape[0])
    else:
        rr, cc = torch.meshgrid(axes[0], axes[1], indexing="ij")
        t = torch.stack([rr.reshape(-1), cc.reshape(-1)], -1)
        wp = shape[1] + 2 * pads[1]
        rows = torch.arange(pads[0], pads[0] + shape[0])
        cols = torch.arange(pads[1], pads[1] + shape[1])
        keep = (rows[:, None] * wp + cols[None, :]).reshape(-1)
    f = basis.evaluate(t).T  # (N, P)
    a = f @ f.T + ridge * torch.eye(f.shape[0], dtype=torch.float64)
    g = torch.linalg.solve(a, f).T  # F^T A^-1 (A symmetric)
    return g[keep]


class ValueFunction(nn.Module):
    """Maps (values x (B, L, D), basis expectations r (B, N)) to the context c = X^T G r (B, D)."""

    def __init__(
        self,
        basis: GaussianBasis,
        grid_shape: tuple[int, int] | None = None,
        ridge: float = 0.01,
        padding: bool = True,
    ) -> None:
        super().__init__()
        self.basis, self.grid_shape, self.ridge, self.padding = basis, grid_shape, ridge, padding
        g = ridge_g(basis, tuple(grid_shape), ridge, padding) if grid_shape is not None else torch.zeros(0)
        self.register_buffer("G", g.float(), persistent=False)
        self._cache: dict[int, Tensor] = {}

    def g_for_lengths(self, lengths: Tensor, max_len: int) -> Tensor:
        """(B, max_len, N) G of each sequence (zero rows on the padding); cached per length (1-D)."""
        out = torch.zeros(
            lengths.shape[0], max_len, self.basis.num, dtype=torch.float32, device=lengths.device
        )
        for n in lengths.unique().tolist():
            n = max(int(n), 1)
            if n not in self._cache:
                self._cache[n] = ridge_g(self.basis, (n,), self.ridge, self.padding).float()
            sel = lengths.clamp_min(1) == n
            out[sel, :n] = self._cache[n].to(lengths.device)
        return out

    def weights(self, r: Tensor, lengths: Tensor | None = None, max_len: int | None = None) -> Tensor:
        """Effective per-position weights G r (B, L) (they need not be positive)."""
        if self.grid_shape is not None:
            return r @ self.G.to(r.dtype).T
        g = self.g_for_lengths(lengths, max_len).to(r.dtype)
        return torch.einsum("bln,bn->bl", g, r)

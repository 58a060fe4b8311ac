"""EF-LSTM: early-fusion LSTM over the concatenated, word-aligned modalities.

Original: ``pliang279/MFN/test_mosi.py::EFLSTM`` (one LSTM over ``[text; audio; vision]`` per aligned step,
final hidden state -> ``fc1`` + ReLU -> dropout -> ``fc2``; h=128, dropout 0.5, L1 loss).

Deviation (documented in docs/models.md): each modality first goes through its own linear per-step projection
(``proj_dim``) so that the plug-ins have unimodal representations to act on; the unimodal representation is the
masked time-mean of the projected sequence. A linear map of a concatenation is a concatenation of linear maps,
so the model is still early fusion; ``proj_dim: null`` removes the projections (then plug-ins that need
gradients into the encoders have nothing to train). Sequences are packed by their true lengths, so the final
state never reads padding (the MMSA ``.squeeze()``/padding pitfalls do not apply).

``seq_norm: T`` (off by default; not in the original) reproduces MMSA's ``EF_LSTM`` input normalisation,
``BatchNorm1d(T)`` over the time steps as channels, for like-for-like comparisons with MMSA (fixed T only).

``pooling: attention`` (an option, not in the original) replaces the final state by a discrete attention pool
over the LSTM outputs (``pools["time"]``), which the 1-D continuous-attention plug-ins can replace
(``reg=cont_softmax reg.cont_softmax.pools=[time]``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfusion.attention.discrete import DiscreteAttentionPool
from mmfusion.contract import Batch, Encoded, FusionModel
from mmfusion.errors import ConfigError, DataError
from mmfusion.models.common import length_mask, lengths_of, masked_mean, run_lstm


class EFLSTM(FusionModel):
    """Early-fusion LSTM over the concatenated, word-aligned modalities (``model=ef_lstm``).

    Args:
        input_dims: feature size per modality, ``{name: D_m}`` (from the datamodule).
        output_dim: size of the prediction (from the task, sized to the data's targets by ``build.py``).
        proj_dim: width of each modality's linear per-step projection (the unimodal representation is its masked
            time-mean); ``None`` removes the projections.
        hidden: LSTM hidden size, also the fused size and the head's hidden width.
        num_layers: number of stacked LSTM layers.
        dropout: dropout in the head (and between LSTM layers when ``num_layers > 1``).
        input_dropout: dropout on the concatenated projected sequence before the LSTM.
        pooling: ``"last"`` (the final LSTM state, the original) or ``"attention"`` (a discrete attention pool
            ``pools["time"]`` over the LSTM outputs, replaceable by 1-D continuous attention).
        seq_norm: ``T`` enables MMSA's input normalisation, ``BatchNorm1d(T)`` with the time steps as channels
            (fixed sequence length ``T`` only); ``None`` (default) disables it.
    """

    accepts_unaligned = False  # one LSTM over the modalities concatenated per step: word-aligned input only

    def __init__(
        self,
        *,
        input_dims: dict[str, int],
        output_dim: int = 1,
        proj_dim: int | None = 64,
        hidden: int = 128,
        num_layers: int = 1,
        dropout: float = 0.5,
        input_dropout: float = 0.0,
        pooling: str = "last",
        seq_norm: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("last", "attention"):
            raise ConfigError(f"model.pooling must be 'last' or 'attention', got {pooling!r}")
        self.pooling = pooling
        self.modalities = tuple(input_dims)
        self.proj = nn.ModuleDict(
            {m: (nn.Linear(d, proj_dim) if proj_dim else nn.Identity()) for m, d in input_dims.items()}
        )
        self.unimodal_dims = {m: (proj_dim or d) for m, d in input_dims.items()}
        self.input_dropout = nn.Dropout(input_dropout)
        # MMSA's EF_LSTM normalises the (B, T, D) input with BatchNorm1d(T): each time step is a channel
        self.seq_norm = nn.BatchNorm1d(seq_norm) if seq_norm else None
        self.lstm = nn.LSTM(
            sum(self.unimodal_dims.values()),
            hidden,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.fused_dim = hidden
        if pooling == "attention":
            self.pools["time"] = DiscreteAttentionPool(hidden, out_dim=hidden)
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, output_dim)
        )

    def encode(self, batch: Batch) -> Encoded:
        seqs, unimodal, lens = {}, {}, {}
        for m in self.modalities:
            x = batch["x"][m]
            if x.dim() == 2:  # utterance-level vectors -> length-1 sequences
                x = x[:, None, :]
            lens[m] = lengths_of(batch, m, x)
            seqs[m] = self.proj[m](x)
            unimodal[m] = masked_mean(seqs[m], lens[m])
        return Encoded(unimodal=unimodal, state={"seqs": seqs, "lengths": lens})

    def fuse(self, unimodal: dict[str, Tensor], state: dict, batch: Batch) -> Tensor:
        scales = state.get("gate_scales") or {}
        parts = []
        for m in self.modalities:
            s = state["seqs"][m]
            if m in scales:
                s = s * scales[m].reshape(-1, 1, 1).to(s.dtype)
            parts.append(s)
        x = self.input_dropout(torch.cat(parts, dim=-1))
        if self.seq_norm is not None:
            if x.shape[1] != self.seq_norm.num_features:
                raise DataError(
                    f"model.seq_norm={self.seq_norm.num_features} needs sequences of exactly that "
                    f"length; got T = {x.shape[1]}"
                )
            x = self.seq_norm(x)
        # aligned modalities share a length; take the longest true length per sample
        lengths = torch.stack([state["lengths"][m] for m in self.modalities]).amax(0)
        outputs, last = run_lstm(self.lstm, x, lengths)
        if self.pooling == "attention":
            return self.pools["time"](outputs, length_mask(lengths, outputs.shape[1]))
        return last

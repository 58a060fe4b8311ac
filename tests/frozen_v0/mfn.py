# Frozen copy of src/mmfusion/models/mfn.py at commit 26d69f6 (before the issue-18 speed work): the reference of
# tests/test_models_equivalence.py. Do not edit; it is not used by the package.
"""MFN: Memory Fusion Network (Zadeh et al., AAAI 2018, "Memory Fusion Network for Multi-view Sequential
Learning"); released code ``pliang279/MFN/test_mosi.py``, MMSA ``models/singleTask/MFN.py``.

* System of LSTMs (Sect. 3.1): one LSTM per modality over the word-aligned sequences; ``c_t^m`` its cell states.
* Delta-memory Attention Network (Sect. 3.2): ``c^[t-w+1..t]`` = the cell states of the last ``window`` steps of
  all modalities concatenated (``window = 2``: ``[c_{t-1}; c_t]``, zero before the start);
  ``a = softmax(D_a(c*))``, ``c^ = a (.) c*``.
* Multi-view Gated Memory (Sect. 3.3): ``u^_t = D_u(c^)``, ``g1 = sigmoid(D_g1([c^; u_{t-1}]))``,
  ``g2 = sigmoid(D_g2([c^; u_{t-1}]))``, ``u_t = g1 (.) u_{t-1} + g2 (.) tanh(u^_t)``, ``u_0 = 0``.
  The gates see the previous memory as in the released code; ``gates_see_memory: false`` conditions them on
  ``c^`` only (then the whole network is parallel over time except a 2-op scan).
* Output (Sect. 3.4): ``[h_T^m for m; u_T]`` -> Linear + ReLU -> Dropout -> Linear. Each D_* is a 2-layer MLP
  (Linear -> ReLU -> Dropout -> Linear) of configurable width/dropout.

Cost: the LSTMs do not read the memory, so they run before it. ``lstm: loop`` (default, fastest on CPU): input
projections of all steps in one matmul per modality, then one ``addmm`` per modality and step. ``lstm: fused``
(for GPUs): whole-sequence packed cuDNN ``nn.LSTM`` calls, with the cell states recovered exactly from the hidden
states (gates recomputed for all steps in one matmul, then a 2-op scan ``c_t = f_t c_{t-1} + i_t g_t``). The
attention, ``D_u`` and the c^-part of the gate networks run for all steps at once. Only ``u_{t-1} -> (g1, g2) -> u_t`` is a per-step loop: one matmul for both
gates plus a few elementwise ops, batched over samples, no per-step allocation beyond its outputs.
``compile: true`` wraps that loop in ``torch.compile``. Padding: LSTM states and the memory stop at each
sample's true length (the released code reads padding). Sequences must be word-aligned (same T per modality).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfusion.contract import Batch, Encoded, FusionModel
from mmfusion.errors import ConfigError, DataError

from .common import length_mask, lengths_of, run_lstm
from .subnets import as_sequence, per_modality


def mlp2(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


def lstm_cell_states(lstm: nn.LSTM, x: Tensor, h: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Forget gates ``f`` and inputs ``i*g`` of a 1-layer ``lstm`` at every step, from its inputs ``x`` (B,T,D)
    and hidden outputs ``h`` (B,T,H); on padded steps ``f = 1, i*g = 0`` so the cell state is carried."""
    h_prev = F.pad(h[:, :-1], (0, 0, 1, 0))
    gates = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(
        h_prev, lstm.weight_hh_l0, lstm.bias_hh_l0
    )
    i, f, g, _ = gates.chunk(4, dim=-1)
    v = valid[..., None]
    ig = torch.sigmoid(i) * torch.tanh(g) * v
    f = torch.where(v, torch.sigmoid(f), torch.ones_like(f))
    return f, ig


def lstm_loop(lstms: list[nn.LSTM], xs: list[Tensor], valids: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """Several 1-layer LSTMs stepped together: input projections for all steps in one matmul each, then per step
    one ``addmm`` on the recurrent weights per modality. Padded steps carry (h, c). Returns the last valid hidden
    state per modality and the concatenated cell states (B, T, sum h)."""
    b, t = xs[0].shape[:2]
    # unbind once: per-step views whose backward is one stack (indexing [step] would build a full-size zero
    # gradient per step, O(T^2) memory traffic)
    proj = [F.linear(x, l.weight_ih_l0, l.bias_ih_l0 + l.bias_hh_l0).unbind(1) for l, x in zip(lstms, xs)]
    w_hh = [l.weight_hh_l0.t() for l in lstms]
    hs = [x.new_zeros(b, l.hidden_size) for l, x in zip(lstms, xs)]
    cs = [x.new_zeros(b, l.hidden_size) for l, x in zip(lstms, xs)]
    masks = None if all(bool(v.all()) for v in valids) else [v[..., None].unbind(1) for v in valids]
    cells = []
    for step in range(t):
        for k in range(len(lstms)):
            i, f, g, o = torch.addmm(proj[k][step], hs[k], w_hh[k]).chunk(4, dim=1)
            c = torch.addcmul(torch.sigmoid(f) * cs[k], torch.sigmoid(i), torch.tanh(g))
            h = torch.sigmoid(o) * torch.tanh(c)
            if masks is not None:
                c = torch.where(masks[k][step], c, cs[k])
                h = torch.where(masks[k][step], h, hs[k])
            hs[k], cs[k] = h, c
        cells.append(torch.cat(cs, dim=1))
    return hs, torch.stack(cells, dim=1)


def cell_scan(f: Tensor, ig: Tensor) -> Tensor:
    """``c_t = f_t * c_{t-1} + ig_t`` with ``c_0 = 0``; (B, T, S) -> (B, T, S)."""
    c = torch.zeros_like(ig[:, 0])
    out = []
    for ft, igt in zip(f.unbind(1), ig.unbind(1)):
        c = torch.addcmul(igt, ft, c)
        out.append(c)
    return torch.stack(out, dim=1)


def memory_scan(
    pre: Tensor,
    chat: Tensor,
    valid: Tensor | None,
    w_mem: Tensor,
    split: int,
    g1_out: nn.Linear,
    g2_out: nn.Linear,
    p1: float,
    p2: float,
    training: bool,
) -> Tensor:
    """The per-step part of the multi-view gated memory.

    pre: (T, B, G1+G2) first-layer pre-activations of both gate networks from ``c^`` (bias included);
    chat: (T, B, M) ``tanh(u^_t)``; valid: (T, B, 1) bool or None (all valid); w_mem: (G1+G2, M) first-layer
    weights on ``u_{t-1}`` (None-equivalent zeros when the gates do not see the memory).
    """
    u = torch.zeros_like(chat[0])
    pre_t, chat_t = (
        pre.unbind(0),
        chat.unbind(0),
    )  # one stack in backward, not a zero-filled gradient per step
    valid_t = valid.unbind(0) if valid is not None else None
    w_t = w_mem.t() if w_mem is not None else None
    for t in range(len(pre_t)):
        a = torch.relu(torch.addmm(pre_t[t], u, w_t) if w_t is not None else pre_t[t])
        a1, a2 = a[:, :split], a[:, split:]
        if p1 > 0:
            a1 = F.dropout(a1, p1, training)
        if p2 > 0:
            a2 = F.dropout(a2, p2, training)
        g1 = torch.sigmoid(g1_out(a1))
        g2 = torch.sigmoid(g2_out(a2))
        new = torch.addcmul(g1 * u, g2, chat_t[t])
        u = new if valid_t is None else torch.where(valid_t[t], new, u)
    return u


class MFN(FusionModel):
    def __init__(
        self,
        *,
        input_dims: dict[str, int],
        output_dim: int = 1,
        hidden: int | Mapping[str, int] = 64,
        mem_dim: int = 128,
        window: int = 2,
        attn_hidden: int = 128,
        attn_dropout: float = 0.0,
        mem_hidden: int = 64,
        mem_dropout: float = 0.2,
        gamma1_hidden: int = 256,
        gamma1_dropout: float = 0.0,
        gamma2_hidden: int = 64,
        gamma2_dropout: float = 0.2,
        out_hidden: int = 64,
        out_dropout: float = 0.5,
        gates_see_memory: bool = True,
        lstm: str = "loop",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.modalities = tuple(input_dims)
        hid = {m: int(h) for m, h in per_modality(hidden, self.modalities, "hidden").items()}
        self.unimodal_dims = hid
        if lstm not in ("loop", "fused"):
            raise ConfigError(f"model.lstm must be 'loop' or 'fused'; got {lstm!r}")
        self.lstm_impl = lstm
        self.lstms = nn.ModuleDict(
            {m: nn.LSTM(input_dims[m], hid[m], batch_first=True) for m in self.modalities}
        )
        self.state_dim = sum(hid.values())
        self.window, self.mem_dim = int(window), int(mem_dim)
        self.gates_see_memory = bool(gates_see_memory)
        cdim = self.window * self.state_dim
        gin = cdim + (self.mem_dim if gates_see_memory else 0)
        self.attention = mlp2(cdim, attn_hidden, cdim, attn_dropout)  # D_a
        self.memory_net = mlp2(cdim, mem_hidden, self.mem_dim, mem_dropout)  # D_u
        self.gamma1 = mlp2(gin, gamma1_hidden, self.mem_dim, gamma1_dropout)  # D_g1 on [c^; u_{t-1}]
        self.gamma2 = mlp2(gin, gamma2_hidden, self.mem_dim, gamma2_dropout)  # D_g2
        self.fused_dim = self.state_dim + self.mem_dim
        self.head = nn.Sequential(
            nn.Linear(self.fused_dim, out_hidden),
            nn.ReLU(),
            nn.Dropout(out_dropout),
            nn.Linear(out_hidden, output_dim),
        )
        self._scan = torch.compile(memory_scan, dynamic=False) if compile else memory_scan

    # -- System of LSTMs ------------------------------------------------------------------------------------------
    def encode(self, batch: Batch) -> Encoded:
        xs = {m: as_sequence(batch["x"][m]) for m in self.modalities}
        steps = {m: x.shape[1] for m, x in xs.items()}
        if len(set(steps.values())) != 1:
            raise DataError(
                f"MFN needs word-aligned sequences (the same T for every modality); got T = {steps}"
            )
        t = next(iter(steps.values()))
        lens = {m: lengths_of(batch, m, xs[m]) for m in self.modalities}
        valids = [length_mask(lens[m], t) for m in self.modalities]
        valid_any = torch.stack(valids).any(0)
        if self.lstm_impl == "loop":
            hs, cells = lstm_loop(
                [self.lstms[m] for m in self.modalities], [xs[m] for m in self.modalities], valids
            )
            return Encoded(
                unimodal=dict(zip(self.modalities, hs)), state={"cells": cells, "valid": valid_any}
            )
        unimodal, fs, igs = {}, [], []
        for m, valid in zip(self.modalities, valids):
            h_seq, h_last = run_lstm(self.lstms[m], xs[m], lens[m])
            f, ig = lstm_cell_states(self.lstms[m], xs[m], h_seq, valid)
            unimodal[m] = h_last
            fs.append(f)
            igs.append(ig)
        cells = cell_scan(torch.cat(fs, -1), torch.cat(igs, -1))  # (B, T, sum h)
        return Encoded(unimodal=unimodal, state={"cells": cells, "valid": valid_any})

    # -- DMAN + multi-view gated memory ---------------------------------------------------------------------------
    def fuse(self, unimodal: dict[str, Tensor], state: dict[str, Any], batch: Batch) -> Tensor:
        cells: Tensor = state["cells"]
        b, t, s = cells.shape
        scales = state.get("gate_scales")
        if scales:
            col = torch.cat(
                [
                    scales[m].reshape(b, 1).to(cells.dtype).expand(b, self.unimodal_dims[m])
                    if m in scales
                    else cells.new_ones(b, self.unimodal_dims[m])
                    for m in self.modalities
                ],
                1,
            )
            cells = cells * col[:, None, :]
        # c* over the window, oldest first: [c_{t-w+1}; ...; c_t]
        cstar = torch.cat([F.pad(cells, (0, 0, k, 0))[:, :t] for k in range(self.window - 1, -1, -1)], dim=-1)
        attended = torch.softmax(self.attention(cstar), dim=-1) * cstar
        chat = torch.tanh(self.memory_net(attended))  # (B, T, M)
        g1_in, g2_in = self.gamma1[0], self.gamma2[0]
        cd = cstar.shape[-1]
        w_c = torch.cat([g1_in.weight[:, :cd], g2_in.weight[:, :cd]], 0)
        bias = torch.cat([g1_in.bias, g2_in.bias], 0)
        pre = F.linear(attended, w_c, bias).transpose(0, 1)  # (T, B, G1+G2)
        w_mem = torch.cat([g1_in.weight[:, cd:], g2_in.weight[:, cd:]], 0) if self.gates_see_memory else None
        valid = state["valid"]
        valid_t = None if bool(valid.all()) else valid.transpose(0, 1)[..., None]
        u = self._scan(
            pre,
            chat.transpose(0, 1),
            valid_t,
            w_mem,
            g1_in.out_features,
            self.gamma1[3],
            self.gamma2[3],
            self.gamma1[2].p,
            self.gamma2[2].p,
            self.training,
        )
        return torch.cat([unimodal[m] for m in self.modalities] + [u], dim=-1)

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
projections of all steps in one matmul per modality, then :func:`~mmfusion.models.subnets.lstm_scan`, an
autograd Function with a hand-written backward (per step one ``addmm`` and a few in-place elementwise ops
forward, one ``mm`` backward; the recurrent weight gradient is one GEMM over all steps). ``lstm: fused`` (for
GPUs): whole-sequence packed cuDNN ``nn.LSTM`` calls, with the cell states recovered exactly from the hidden
states (gates recomputed for all steps in one matmul, then a 2-op scan ``c_t = f_t c_{t-1} + i_t g_t``). The
attention, ``D_u`` and the c^-part of the gate networks run for all steps at once. Only
``u_{t-1} -> (g1, g2) -> u_t`` is a per-step loop (:class:`_MemoryScan`, hand-written backward, the same
dropout draws as ``F.dropout``; gate-weight gradients as one GEMM over all steps). ``compile: true`` runs that
loop as plain autograd ops (:func:`memory_scan`) under ``torch.compile`` instead. Outputs, gradients and random
draws equal those of the plain-autograd implementation (tests/test_models_equivalence.py). Padding: LSTM states
and the memory stop at each
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
from mmfusion.models.common import length_mask, lengths_of, run_lstm
from mmfusion.models.subnets import as_sequence, lstm_scan, per_modality


class MLP2(nn.Sequential):
    """Linear -> ReLU -> Dropout -> Linear (MFN's D_a, D_u, D_g1, D_g2), with the parts named for the fused memory
    scan: :attr:`inner`, :attr:`dropout`, :attr:`outer`. A ``Sequential`` underneath, so parameter names (and
    checkpoints) stay ``0.weight`` / ``3.weight``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )

    @property
    def inner(self) -> nn.Linear:
        return self[0]

    @property
    def dropout(self) -> nn.Dropout:
        return self[2]

    @property
    def outer(self) -> nn.Linear:
        return self[3]


def mlp2(in_dim: int, hidden: int, out_dim: int, dropout: float) -> MLP2:
    return MLP2(in_dim, hidden, out_dim, dropout)


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


class _MemoryScan(torch.autograd.Function):
    """:func:`memory_scan` (the per-step part of the multi-view gated memory) with a hand-written backward.

    The same operations and the same dropout draws as :func:`memory_scan` (masks from
    :func:`~mmfusion.models.subnets.dropout_keep`, bit-identical to ``F.dropout``, drawn in the same order), but
    the backward loop only carries ``du`` (two or three small GEMMs per step); the gradients of the gate weights and
    of ``w_mem`` are single GEMMs over all steps.

    Args (forward): pre (T, B, G1+G2); chat (T, B, M); valid (T, B, 1) bool or None; w_mem (G1+G2, M) or None;
    w1 (M, G1), b1, w2 (M, G2), b2: the gates' second layers; split = G1; p1, p2 dropout; training.
    Returns u_T (B, M).
    """

    @staticmethod
    def forward(
        ctx: Any,
        pre: Tensor,
        chat: Tensor,
        valid: Tensor | None,
        w_mem: Tensor | None,
        w1: Tensor,
        b1: Tensor,
        w2: Tensor,
        b2: Tensor,
        split: int,
        p1: float,
        p2: float,
        training: bool,
    ) -> Tensor:
        from mmfusion.models.subnets import dropout_keep, dropout_scale

        t, b, g = pre.shape
        m = chat.shape[-1]
        us = chat.new_empty(t + 1, b, m)
        us[0].zero_()
        drop = [p1 > 0 and training, p2 > 0 and training]
        widths = (split, g - split)
        # first layer after relu (and dropout): a part with dropout keeps only its dropped activations (T, B, G_j),
        # since relu' * noise = (dropped > 0) * scale; a part without dropout keeps relu(first layer)
        kept = [pre.new_empty(t, b, w) for w in widths]
        a = pre.new_empty(b, g)  # first layer of the current step
        noise = [pre.new_empty(b, w) if d else None for w, d in zip(widths, drop)]
        scale = [dropout_scale(p, pre.dtype) if d else 1.0 for p, d in zip((p1, p2), drop)]
        g1s, g2s = chat.new_empty(t, b, m), chat.new_empty(t, b, m)
        w1t, w2t = w1.t(), w2.t()
        wt = w_mem.t() if w_mem is not None else None
        for k in range(t):
            if wt is not None:
                torch.addmm(pre[k], us[k], wt, out=a)
            else:
                a.copy_(pre[k])
            a.relu_()
            parts = (a[:, :split], a[:, split:])
            for j, p in enumerate((p1, p2)):
                if drop[j]:
                    n = noise[j]
                    n.copy_(dropout_keep(n.numel(), p).view(n.shape)).mul_(scale[j])
                    torch.mul(parts[j], n, out=kept[j][k])
                else:
                    kept[j][k].copy_(parts[j])
            torch.addmm(b1, kept[0][k], w1t, out=g1s[k]).sigmoid_()
            torch.addmm(b2, kept[1][k], w2t, out=g2s[k]).sigmoid_()
            new = torch.mul(g1s[k], us[k], out=us[k + 1])
            new.addcmul_(g2s[k], chat[k])
            if valid is not None:
                torch.where(valid[k], new, us[k], out=us[k + 1])
        ctx.split, ctx.scale = split, scale
        ctx.save_for_backward(chat, valid, w_mem, w1, w2, us, g1s, g2s, *kept)
        return us[t].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward (a clear error instead of a wrong one)
    def backward(ctx: Any, du: Tensor) -> tuple[Tensor | None, ...]:
        chat, valid, w_mem, w1, w2, us, g1s, g2s, x1, x2 = ctx.saved_tensors
        split, scale = ctx.split, ctx.scale
        t, b, m = chat.shape
        u_prev = us[:-1]
        p1 = torch.neg(g1s).add_(1).mul_(g1s).mul_(u_prev)  # dz1 = du * p1, p1 = u_{t-1} g1 (1 - g1)
        p2 = torch.neg(g2s).add_(1).mul_(g2s).mul_(chat)  # dz2 = du * p2
        g1_eff = g1s
        if valid is not None:
            p1.mul_(valid)
            p2.mul_(valid)
            g1_eff = torch.where(valid, g1s, torch.ones_like(g1s))
        # d(first layer) = d(dropped) * noise * relu' = d(dropped) * scale * (dropped > 0)
        gate = [(x > 0).to(x.dtype) for x in (x1, x2)]
        for j in (0, 1):
            if scale[j] != 1.0:
                gate[j].mul_(scale[j])
        need = ctx.needs_input_grad
        d_chat = torch.empty_like(chat) if need[1] else None
        dz1, dz2 = torch.empty_like(chat), torch.empty_like(chat)
        da = x1.new_empty(t, b, x1.shape[-1] + x2.shape[-1])
        wm1 = w_mem[:split] if w_mem is not None else None
        wm2 = w_mem[split:] if w_mem is not None else None
        for k in range(t - 1, -1, -1):
            if d_chat is not None:
                torch.mul(du, g2s[k], out=d_chat[k])
            torch.mul(du, p1[k], out=dz1[k])
            torch.mul(du, p2[k], out=dz2[k])
            a1, a2 = da[k, :, :split], da[k, :, split:]
            torch.mul(dz1[k].mm(w1), gate[0][k], out=a1)
            torch.mul(dz2[k].mm(w2), gate[1][k], out=a2)
            du = du * g1_eff[k]
            if wm1 is not None:
                du = du.addmm_(a1, wm1).addmm_(a2, wm2)
        del p1, p2, gate
        d_w1 = dz1.reshape(-1, m).t().mm(x1.reshape(-1, split)) if need[4] else None
        d_b1 = dz1.sum((0, 1)) if need[5] else None
        d_w2 = dz2.reshape(-1, m).t().mm(x2.reshape(-1, x2.shape[-1])) if need[6] else None
        d_b2 = dz2.sum((0, 1)) if need[7] else None
        d_wmem = (
            da.reshape(-1, da.shape[-1]).t().mm(u_prev.reshape(-1, m))
            if (w_mem is not None and need[3])
            else None
        )
        if d_chat is not None and valid is not None:
            d_chat.mul_(valid)
        return da if need[0] else None, d_chat, None, d_wmem, d_w1, d_b1, d_w2, d_b2, None, None, None, None


class MFN(FusionModel):
    """Memory Fusion Network (``model=mfn``): System of LSTMs, Delta-memory Attention, Multi-view Gated Memory.

    Each ``D_*`` below is a 2-layer MLP (Linear -> ReLU -> Dropout -> Linear) with its own width and dropout.

    Args:
        input_dims: feature size per modality, ``{name: D_m}`` (from the datamodule); sequences must be word-aligned.
        output_dim: size of the prediction (from the task, sized to the data's targets by ``build.py``).
        hidden: LSTM hidden size per modality, one int or ``{modality: width}``.
        mem_dim: size of the multi-view gated memory ``u``.
        window: number of most recent steps whose cell states the attention sees (paper: 2, ``[c_{t-1}; c_t]``).
        attn_hidden: hidden width of the attention network ``D_a``.
        attn_dropout: dropout of ``D_a``.
        mem_hidden: hidden width of the memory-update network ``D_u``.
        mem_dropout: dropout of ``D_u``.
        gamma1_hidden: hidden width of the retain gate network ``D_g1``.
        gamma1_dropout: dropout of ``D_g1``.
        gamma2_hidden: hidden width of the update gate network ``D_g2``.
        gamma2_dropout: dropout of ``D_g2``.
        out_hidden: hidden width of the output MLP on ``[h_T; u_T]``.
        out_dropout: dropout of the output MLP.
        gates_see_memory: the gates see ``[c^; u_{t-1}]`` (released code); ``False`` conditions them on ``c^`` only.
        lstm: ``"loop"`` (default, fastest on CPU: steps the LSTMs together) or ``"fused"`` (whole-sequence cuDNN
            ``nn.LSTM`` calls, cell states recovered exactly from the hidden states; for GPUs).
        compile: wrap the per-step memory loop in ``torch.compile``.
    """

    accepts_unaligned = (
        False  # LSTMs stepped together, memory over all modalities per step: word-aligned only
    )

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
        self.compile = bool(compile)
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
            all_valid = all(bool(v.all()) for v in valids)
            runs = [
                lstm_scan(self.lstms[m], xs[m], None if all_valid else v)
                for m, v in zip(self.modalities, valids)
            ]
            cells = torch.cat([c for c, _ in runs], -1).transpose(0, 1).contiguous()  # (B, T, sum h)
            return Encoded(
                unimodal={m: h for m, (_, h) in zip(self.modalities, runs)},
                state={"cells": cells, "valid": valid_any},
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
        g1_in, g2_in = self.gamma1.inner, self.gamma2.inner
        cd = cstar.shape[-1]
        w_c = torch.cat([g1_in.weight[:, :cd], g2_in.weight[:, :cd]], 0)
        bias = torch.cat([g1_in.bias, g2_in.bias], 0)
        pre = F.linear(attended, w_c, bias).transpose(0, 1)  # (T, B, G1+G2)
        w_mem = torch.cat([g1_in.weight[:, cd:], g2_in.weight[:, cd:]], 0) if self.gates_see_memory else None
        valid = state["valid"]
        valid_t = None if bool(valid.all()) else valid.transpose(0, 1)[..., None]
        g1_out, g2_out, split = self.gamma1.outer, self.gamma2.outer, g1_in.out_features
        p1, p2 = self.gamma1.dropout.p, self.gamma2.dropout.p
        if self.compile:
            u = self._scan(
                pre, chat.transpose(0, 1), valid_t, w_mem, split, g1_out, g2_out, p1, p2, self.training
            )
        else:
            u = _MemoryScan.apply(
                pre,
                chat.transpose(0, 1),
                valid_t,
                w_mem,
                g1_out.weight,
                g1_out.bias,
                g2_out.weight,
                g2_out.bias,
                split,
                p1,
                p2,
                self.training,
            )
        return torch.cat([unimodal[m] for m in self.modalities] + [u], dim=-1)

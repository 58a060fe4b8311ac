"""``data=synthetic``: a generated multimodal sentiment set with the shapes of the common aligned CMU-MOSI release.

Generative model (deterministic from ``data_seed``; sizes, dims, noise and missing rates configurable):

* latents per sample: a shared sentiment ``s`` and one private factor per modality ``t, a, v``, all N(0, 1);
* each modality is a right-padded sequence (true length uniform in ``[min_len, seq_len]``); on a random half of
  its valid steps it carries ``c_s * s * d_s + c_own * own * d_own`` along fixed random unit directions, plus
  isotropic Gaussian noise (std ``noise``) on every valid step. ``s`` is seen by all three modalities
  (redundancy: text strongly, audio/vision weakly), the private factors only by their own modality;
* label ``y = 3 tanh((s + 0.6 t v + 0.6 s a) / 2)`` in [-3, 3]: cross-modal interactions (text x vision,
  shared x audio) on top of the redundant main effect, so models learn well beyond chance, and dropping text at
  test time measurably hurts (``t`` is lost and ``s`` is seen only weakly);
* ``missing_rate``: each modality of a sample is zeroed with that probability (never all of them); the mask is
  in ``batch["corrupt"]``;
* ``transcripts``: a short sentence per sample from a small sentiment lexicon driven by ``s`` and ``t`` (for BERT
  models).
"""

from __future__ import annotations

import numpy as np
import torch

from mmfusion.data.base import ArrayDataset, MultimodalDataModule
from mmfusion.errors import ConfigError

MOSI_DIMS = {"text": 300, "audio": 74, "vision": 47}
COEF = {"text": (1.0, 1.0), "audio": (0.5, 1.0), "vision": (0.5, 1.0)}  # (shared, private) amplitudes
POS = ["good", "great", "love", "nice", "excellent", "happy", "fun", "best", "wonderful", "enjoyed"]
NEG = ["bad", "awful", "hate", "boring", "worst", "sad", "poor", "terrible", "dull", "disappointing"]
STRONG = ["very", "really", "extremely", "incredibly"]
WEAK = ["somewhat", "slightly", "a bit", "kind of"]
FILL = ["the", "movie", "it", "was", "and", "i", "think", "plot", "actor", "story", "film", "scenes"]


def _directions(rng: np.random.Generator, dim: int) -> np.ndarray:
    """Two orthonormal directions in R^dim (shared, private)."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    return q.T.astype(np.float32)


def _sentence(rng: np.random.Generator, s: float, t: float) -> str:
    n_sent = int(min(4, round(abs(s) * 1.5 + 0.5)))
    words = list(rng.choice(FILL, size=rng.integers(3, 7)))
    lex = POS if s >= 0 else NEG
    for _ in range(n_sent):
        adv = STRONG if t > 0.5 else WEAK if t < -0.5 else [""]
        w = (str(rng.choice(adv)) + " " + str(rng.choice(lex))).strip()
        words.insert(int(rng.integers(0, len(words) + 1)), w)
    return " ".join(words)


def generate_split(
    n: int,
    rng: np.random.Generator,
    dirs: dict[str, np.ndarray],
    dims: dict[str, int],
    seq_len: int,
    min_len: int,
    noise: float,
    missing_rate: float,
    active_rate: float = 0.5,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    lat = {k: rng.standard_normal(n, dtype=np.float32) for k in ("s", "text", "audio", "vision")}
    y = 3.0 * np.tanh((lat["s"] + 0.6 * lat["text"] * lat["vision"] + 0.6 * lat["s"] * lat["audio"]) / 2.0)
    lengths = rng.integers(min_len, seq_len + 1, size=n)
    valid = np.arange(seq_len)[None, :] < lengths[:, None]  # right padding
    mods = list(dims)
    missing = rng.random((n, len(mods))) < missing_rate
    all_missing = missing.all(1)
    if all_missing.any():  # never drop every modality of a sample
        missing[all_missing, rng.integers(0, len(mods), all_missing.sum())] = False
    x, lens = {}, {}
    for j, m in enumerate(mods):
        cs, co = COEF.get(m, (0.5, 1.0))
        active = (rng.random((n, seq_len)) < active_rate) & valid
        active[np.arange(n), rng.integers(0, lengths)] = True  # at least one informative step
        own = lat[m] if m in lat else rng.standard_normal(n).astype(np.float32)
        amp = (cs * lat["s"])[:, None, None] * dirs[m][0] + (co * own)[:, None, None] * dirs[m][1]
        seq = rng.standard_normal((n, seq_len, dims[m]), dtype=np.float32)
        seq *= np.float32(noise)
        seq += active[..., None] * (2.0 * amp)
        seq *= valid[..., None]
        seq[missing[:, j]] = 0.0
        x[m] = torch.from_numpy(seq.astype(np.float32))
        lens[m] = torch.from_numpy(lengths.astype(np.int64))
    tensors = {
        "x": x,
        "lengths": lens,
        "y": torch.from_numpy(y.astype(np.float32)),
        "corrupt": torch.from_numpy(missing),
    }
    transcripts = [_sentence(rng, float(lat["s"][i]), float(lat["text"][i])) for i in range(n)]
    return tensors, transcripts


class SyntheticSentiment(MultimodalDataModule):
    """Embedded offline default (see module docstring). Train/valid/test default to MOSI's 1284/229/686.

    Args:
        n_train: number of training samples.
        n_valid: number of validation samples.
        n_test: number of test samples.
        seq_len: padded sequence length ``T``.
        min_len: the true length of each sequence is uniform in ``[min_len, seq_len]``.
        dims: feature size per modality (``None``: MOSI's text 300, audio 74, vision 47).
        noise: std of the isotropic Gaussian noise on every valid step.
        missing_rate: probability that a modality of a sample is zeroed (never all of them; flagged in
            ``batch["corrupt"]``), in [0, 1).
        data_seed: seed of the generator; the data are deterministic from it.
        text_tokenizer: tokenizer of a BERT model; when set, the transcripts are tokenised into ``batch["tokens"]``.
        max_tokens: word pieces per sample (with ``text_tokenizer``).
        **loader: batch size, workers and shuffling seed, passed to :class:`~mmfusion.data.base.MultimodalDataModule`.
    """

    def __init__(
        self,
        n_train: int = 1284,
        n_valid: int = 229,
        n_test: int = 686,
        seq_len: int = 50,
        min_len: int = 10,
        dims: dict[str, int] | None = None,
        noise: float = 1.0,
        missing_rate: float = 0.0,
        data_seed: int = 0,
        text_tokenizer: str | None = None,
        max_tokens: int = 50,
        **loader: object,
    ) -> None:
        super().__init__(**loader)
        dims = dict(dims or MOSI_DIMS)
        if min_len < 1 or min_len > seq_len:
            raise ConfigError(f"data.min_len must be in [1, seq_len={seq_len}], got {min_len}")
        if not 0.0 <= missing_rate < 1.0:
            raise ConfigError(f"data.missing_rate must be in [0, 1), got {missing_rate}")
        self.modalities = tuple(dims)
        self.input_dims = dims
        self.sizes = {"train": n_train, "valid": n_valid, "test": n_test}
        self.seq_len, self.min_len, self.noise = seq_len, min_len, noise
        self.missing_rate, self.data_seed = missing_rate, data_seed
        self.text_tokenizer, self.max_tokens = text_tokenizer, max_tokens
        self.transcripts: dict[str, list[str]] = {}

    def build(self) -> dict[str, ArrayDataset]:
        rng_dir = np.random.default_rng(self.data_seed)
        dirs = {m: _directions(rng_dir, d) for m, d in self.input_dims.items()}
        out = {}
        for k, (split, n) in enumerate(self.sizes.items()):
            rng = np.random.default_rng([self.data_seed, k + 1])
            tensors, self.transcripts[split] = generate_split(
                n, rng, dirs, self.input_dims, self.seq_len, self.min_len, self.noise, self.missing_rate
            )
            out[split] = ArrayDataset(tensors, name=f"synthetic/{split}")
        if self.text_tokenizer:
            from mmfusion.tokens import add_tokens

            add_tokens(self, out)
        return out

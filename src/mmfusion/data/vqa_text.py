"""Question tokeniser, token vocabulary and GloVe word vectors for VQA (MCAN ``core/data/data_utils.py``).

* tokens: ``re.sub(r"([.,'!?\\"()*#:;])", "", q.lower()).replace("-", " ").replace("/", " ").split()``;
* vocabulary: ``{"PAD": 0, "UNK": 1}`` then every token of every question given, in order of appearance;
* ids: the first ``max_tokens`` (14) tokens, zero-padded (PAD = 0), unknown tokens -> UNK;
* word vectors: rows of a GloVe text file (``word v_1 ... v_d`` per line) for the tokens found, zero for the
  others (spaCy's vector of an out-of-vocabulary word is zero too); MCAN used spaCy's ``en_vectors_web_lg``
  (GloVe common-crawl, 300-d).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mmfusion.errors import DataError

PAD, UNK = 0, 1
_STRIP = re.compile(r"([.,'!?\"()*#:;])")


def tokenize(question: str) -> list[str]:
    return _STRIP.sub("", question.lower()).replace("-", " ").replace("/", " ").split()


def build_token_vocab(questions: Iterable[str]) -> dict[str, int]:
    vocab = {"PAD": PAD, "UNK": UNK}
    for q in questions:
        for w in tokenize(q):
            if w not in vocab:
                vocab[w] = len(vocab)
    return vocab


def encode_questions(questions: Iterable[str], vocab: dict[str, int], max_tokens: int = 14) -> np.ndarray:
    """(N, max_tokens) int64 token ids, PAD-filled."""
    qs = list(questions)
    ids = np.zeros((len(qs), max_tokens), dtype=np.int64)
    for i, q in enumerate(qs):
        toks = tokenize(q)[:max_tokens]
        ids[i, : len(toks)] = [vocab.get(w, UNK) for w in toks]
    return ids


def load_glove(path: str | Path, vocab: dict[str, int]) -> np.ndarray:
    """``(len(vocab), d)`` float32 matrix from a GloVe text file; rows of tokens not in the file are zero."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"word vectors: file {path} not found (expected a GloVe text file 'word v1 ... vd')")
    emb: np.ndarray | None = None
    found = 0
    with path.open(encoding="utf8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            if emb is None:
                emb = np.zeros((len(vocab), len(parts) - 1), dtype=np.float32)
            if len(parts) - 1 != emb.shape[1]:
                if lineno == 1:  # word2vec-style header "n d"
                    emb = None
                    continue
                raise DataError(
                    f"word vectors: {path} line {lineno} has {len(parts) - 1} values, expected {emb.shape[1]}"
                )
            idx = vocab.get(parts[0])
            if idx is not None:
                emb[idx] = np.asarray(parts[1:], dtype=np.float32)
                found += 1
    if emb is None:
        raise DataError(f"word vectors: {path} contains no vectors")
    return emb

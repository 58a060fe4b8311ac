"""``data=easyvqa``: the easy-VQA set of the ``easy-vqa`` package (offline, shipped inside the package).

64x64 RGB images of one coloured shape; 38,575 training and 9,673 test questions over 4,000 / 1,000 images;
13 answers (yes/no, 3 shapes, 8 colours). Images are returned as pixels ``(B, 3, S, S)`` in [0, 1] (S =
``image_size``: 64, or 32/16 by block averaging, to save CPU) for MCAN's end-to-end
:class:`~mmfusion.models.grid_cnn.GridCNN`; questions go through MCAN's tokeniser (max 14 tokens).
The target is the one-hot soft score of the single answer, so the VQA accuracy is the plain accuracy.

Validation is carved from the training *images* (``valid_fraction``, seeded), so that no image is shared
between training and validation; the test split is the package's test set, used only for the final number.
``max_*_images`` take the first images (by id) of each split, for quick runs and tests.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmfusion.contract import TargetFacts
from mmfusion.data.base import MultimodalDataModule
from mmfusion.data.vqa_text import build_token_vocab, encode_questions
from mmfusion.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SHAPES = ("circle", "rectangle", "triangle")


def package_dir() -> Path:
    try:
        import easy_vqa
    except ImportError:
        raise DataError("data=easyvqa needs the 'easy-vqa' package: pip install 'mmfusion[vqa]'") from None
    return Path(easy_vqa.__file__).parent / "data"


def answer_type(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else "shape" if answer in SHAPES else "color"


def load_split(
    root: Path, split: str, max_images: int | None, image_size: int = 64
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Questions, answers, per-question image row, images (N_img, 3, S, S) uint8 (S = ``image_size``: 64, or a
    divisor of 64 by block averaging)."""
    from PIL import Image

    qfile = root / split / "questions.json"
    if not qfile.is_file():
        raise DataError(f"easyvqa: {qfile} not found (is the easy-vqa package complete?)")
    rows = json.loads(qfile.read_text())
    ids = sorted({int(r[2]) for r in rows})
    if max_images is not None:
        ids = ids[: int(max_images)]
    row_of = {iid: i for i, iid in enumerate(ids)}
    if image_size < 1 or 64 % image_size:
        raise ConfigError(f"data.image_size must divide 64, got {image_size}")
    f = 64 // image_size
    images = np.empty((len(ids), 3, image_size, image_size), dtype=np.uint8)
    for iid, i in row_of.items():
        p = root / split / "images" / f"{iid}.png"
        if not p.is_file():
            raise DataError(f"easyvqa: image {p} not found")
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        if a.shape != (64, 64, 3):
            raise DataError(f"easyvqa: {p} has shape {a.shape}, expected (64, 64, 3)")
        a = a.reshape(image_size, f, image_size, f, 3).mean(axis=(1, 3)) if f > 1 else a
        images[i] = np.round(a).astype(np.uint8).transpose(2, 0, 1)
    rows = [r for r in rows if int(r[2]) in row_of]
    return (
        [str(r[0]) for r in rows],
        [str(r[1]) for r in rows],
        np.asarray([row_of[int(r[2])] for r in rows], dtype=np.int64),
        images,
    )


class EasyVQADataset(Dataset):
    """Questions with an index into a shared image table (images are not copied per question)."""

    def __init__(
        self,
        name: str,
        tokens: np.ndarray,
        answers: np.ndarray,
        image_rows: np.ndarray,
        images: torch.Tensor,
        num_answers: int,
    ) -> None:
        if len(tokens) == 0:
            raise DataError(f"easyvqa: split {name!r} is empty; check max_*_images and valid_fraction")
        self.name = name
        self.tokens = torch.from_numpy(tokens)
        self.answers = torch.from_numpy(answers)
        self.image_rows = torch.from_numpy(image_rows)
        self.images = images
        self.num_answers = num_answers

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        tok = self.tokens[idx]
        img = self.images[self.image_rows[idx]].float().div_(255.0)
        y = torch.nn.functional.one_hot(self.answers[idx], self.num_answers).float()
        return {
            "x": {"question": tok, "image": img},
            "lengths": {
                "question": (tok != 0).sum(1).clamp(min=1),
                "image": torch.full((len(idx),), 1, dtype=torch.long),
            },
            "y": y,
            "index": idx,
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])


class EasyVQADataModule(MultimodalDataModule):
    """``data=easyvqa``: the easy-VQA set shipped in the ``easy-vqa`` package (offline); images enter as pixels.

    Args:
        valid_fraction: share of the training *images* held out as the validation split, in (0, 1).
        split_seed: seed of that hold-out.
        max_tokens: question tokens per sample.
        max_train_images: keep only the first ``N`` training images (quick runs, tests); ``None``: all.
        max_test_images: keep only the first ``N`` test images; ``None``: all.
        image_size: a divisor of 64: 64 (the original), or e.g. 32 / 16 (block-averaged, cheaper on CPU).
        root: folder with easy-VQA's files; ``None``: the data shipped in the ``easy_vqa`` package.
        **loader: batch size, workers and shuffling seed, passed to :class:`~mmfusion.data.base.MultimodalDataModule`.
    """

    modalities = ("question", "image")

    def __init__(
        self,
        valid_fraction: float = 0.1,
        split_seed: int = 0,
        max_tokens: int = 14,
        max_train_images: int | None = None,
        max_test_images: int | None = None,
        image_size: int = 64,
        root: str | None = None,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        if not 0.0 < valid_fraction < 1.0:
            raise ConfigError(f"data.valid_fraction must be in (0, 1), got {valid_fraction}")
        self.valid_fraction, self.split_seed, self.max_tokens = valid_fraction, split_seed, max_tokens
        self.max_train_images, self.max_test_images = max_train_images, max_test_images
        self.root = Path(root) if root else None
        self.image_size = int(image_size)
        self.answers: list[str] = []
        self.token_vocab: dict[str, int] = {}

    def build(self) -> dict[str, EasyVQADataset]:
        root = self.root or package_dir()
        afile = root / "answers.txt"
        if not afile.is_file():
            raise DataError(f"easyvqa: {afile} not found")
        self.answers = [a.strip() for a in afile.read_text().splitlines() if a.strip()]
        ans_ix = {a: i for i, a in enumerate(self.answers)}
        self.answer_types = [answer_type(a) for a in self.answers]

        tr_q, tr_a, tr_rows, tr_img = load_split(root, "train", self.max_train_images, self.image_size)
        te_q, te_a, te_rows, te_img = load_split(root, "test", self.max_test_images, self.image_size)
        unknown = sorted(set(tr_a + te_a) - set(ans_ix))
        if unknown:
            raise DataError(f"easyvqa: answers {unknown[:5]} are not in {afile}")
        self.token_vocab = build_token_vocab(tr_q)  # test words unseen in training map to UNK

        rng = np.random.default_rng(self.split_seed)
        n_img = len(tr_img)
        valid_img = np.zeros(n_img, dtype=bool)
        valid_img[rng.permutation(n_img)[: max(1, int(round(self.valid_fraction * n_img)))]] = True
        is_valid = valid_img[tr_rows]

        tr_tok = encode_questions(tr_q, self.token_vocab, self.max_tokens)
        te_tok = encode_questions(te_q, self.token_vocab, self.max_tokens)
        tr_y = np.asarray([ans_ix[a] for a in tr_a], dtype=np.int64)
        te_y = np.asarray([ans_ix[a] for a in te_a], dtype=np.int64)
        train_images = torch.from_numpy(tr_img)
        test_images = torch.from_numpy(te_img)
        self.input_dims = {"question": self.max_tokens, "image": 3}
        a = len(self.answers)
        return {
            "train": EasyVQADataset(
                "train", tr_tok[~is_valid], tr_y[~is_valid], tr_rows[~is_valid], train_images, a
            ),
            "valid": EasyVQADataset(
                "valid", tr_tok[is_valid], tr_y[is_valid], tr_rows[is_valid], train_images, a
            ),
            "test": EasyVQADataset("test", te_tok, te_y, te_rows, test_images, a),
        }

    def target_facts(self) -> TargetFacts:
        """One output per answer of the vocabulary, with its type (yes/no, shape, color)."""
        self.setup()
        return TargetFacts(num_outputs=len(self.answers), answer_types=tuple(self.answer_types))

    def model_kwargs(self) -> dict[str, Any]:
        kw = super().model_kwargs()
        kw.update(
            vocab_size=len(self.token_vocab),
            pretrained_emb=None,
            image_encoder="cnn",
            image_size=(self.image_size, self.image_size),
        )
        return kw

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update(image_size=(self.image_size, self.image_size), num_answers=len(self.answers))
        return d

"""``data=vqa2``: VQA-v2 from the official JSON files, as MCAN reads it (Farinhas 2021, Sect. 6.2.1).

* Questions ``v2_OpenEnded_mscoco_{train2014,val2014,test2015}_questions.json`` (``questions``: ``image_id``,
  ``question``, ``question_id``) and annotations ``v2_mscoco_{train2014,val2014}_annotations.json``
  (``annotations``: ``question_id``, ``answers`` x10, ``answer_type``, ``question_type``, ``multiple_choice_answer``).
* Answer vocabulary (MCAN ``utils/proc_ansdict.py``): ``prep_ans(multiple_choice_answer)`` over the annotation
  files in ``answer_vocab_from`` (default train + val, as MCAN's shipped list), answers with count
  ``> min_answer_count`` (8), in order of first appearance; or a given MCAN ``answer_dict.json``.
* Targets: training, soft scores ``get_score(m)`` of the 10 human answers after ``prep_ans``
  (:func:`mmfusion.metrics.vqa.soft_score`, MCAN); ``valid``/``test``, the official accuracy of every vocabulary
  answer (:func:`mmfusion.metrics.vqa.official_targets`), so ``val/vqa_acc`` (checkpoint selection) and
  ``test/vqa_acc`` equal the official evaluator question by question (unanimous answers un-normalised).
* Questions: MCAN's tokeniser, max 14 tokens, token vocabulary over every question file given (plus VG), GloVe
  vectors from a text file when ``glove`` is set (random embedding otherwise).
* Image features, one of:
  - per-image ``.npz`` files under ``feature_dirs`` named ``COCO_<split>_<12-digit id>.jpg.npz`` (or ``<id>.npz``):
    ``layout: bottom_up`` reads key ``x`` (2048, K), transposes it and zero-pads to ``max_boxes`` (100);
    ``layout: grid`` reads the first array, (h*w, D) row-major or (D, h, w), e.g. the 14x14x2048 ResNet grid;
  - one HDF5 file (``hdf5``) as written by ``scripts/extract_grid_features.py``: datasets ``image_ids`` (N,)
    int64 and ``features`` (N, L, D), attribute ``grid_shape`` (h, w) for grids (optional ``num_boxes`` (N,)).
* Optional Visual Genome augmentation (``vg_questions``/``vg_annotations``, same schema) is added to training,
  keeping QA pairs whose image has features and whose answers hit the vocabulary.
* Splits: ``train`` = the train files (+ VG); ``valid`` = a seeded ``valid_fraction`` of the *images* of the val
  files; ``test`` = the other val images (model selection never sees test). ``test2015`` has no annotations:
  predict it with :meth:`VQA2DataModule.results` and submit the file to EvalAI.

Features are loaded lazily, batch by batch (VQA-v2 features do not fit in memory).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmfusion.contract import TargetFacts
from mmfusion.data.base import MultimodalDataModule
from mmfusion.data.vqa_text import build_token_vocab, encode_questions, load_glove
from mmfusion.errors import ConfigError, DataError
from mmfusion.metrics.vqa import official_targets, prep_ans, soft_score, write_results

log = logging.getLogger(__name__)


# -- JSON files ---------------------------------------------------------------------------------------------------
def _read_json(path: str | Path, key: str) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"vqa2: file {path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"vqa2: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or key not in data or not isinstance(data[key], list):
        raise DataError(f"vqa2: {path} has no list {key!r} (expected the official VQA format)")
    return data[key]


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    qs = _read_json(path, "questions")
    for q in qs[:1]:
        missing = {"image_id", "question", "question_id"} - set(q)
        if missing:
            raise DataError(f"vqa2: {path}: questions lack {sorted(missing)}")
    return qs


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    anns = _read_json(path, "annotations")
    for a in anns[:1]:
        missing = {"question_id", "answers"} - set(a)
        if missing:
            raise DataError(f"vqa2: {path}: annotations lack {sorted(missing)}")
    return anns


# -- answers ------------------------------------------------------------------------------------------------------
def build_answer_vocab(annotations: Sequence[dict[str, Any]], min_count: int = 8) -> list[str]:
    """MCAN ``ans_stat``: answers (``prep_ans`` of ``multiple_choice_answer``) occurring more than ``min_count``
    times, in order of first appearance."""
    freq: Counter[str] = Counter(prep_ans(a["multiple_choice_answer"]) for a in annotations)
    return [a for a in freq if freq[a] > min_count]  # Counter keeps insertion order


def answer_types_of(answers: Sequence[str], annotations: Sequence[dict[str, Any]]) -> list[str]:
    """Most frequent ``answer_type`` of the questions whose (normalised) top answer is each vocabulary answer."""
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for a in annotations:
        votes[prep_ans(a["multiple_choice_answer"])][a.get("answer_type", "other")] += 1
    return [votes[a].most_common(1)[0][0] if votes[a] else "other" for a in answers]


def soft_targets(annotations: Sequence[dict[str, Any]], ans_to_ix: dict[str, int]) -> np.ndarray:
    """(N, A) float32 soft scores from the human answers (MCAN ``proc_ans``)."""
    y = np.zeros((len(annotations), len(ans_to_ix)), dtype=np.float32)
    for i, a in enumerate(annotations):
        counts = Counter(prep_ans(h["answer"]) for h in a["answers"])
        for ans, m in counts.items():
            j = ans_to_ix.get(ans)
            if j is not None:
                y[i, j] = soft_score(m)
    return y


# -- image features -----------------------------------------------------------------------------------------------
_ID = re.compile(r"(\d+)$")


def image_id_of(path: Path) -> int | None:
    """``COCO_train2014_000000000009.jpg.npz`` -> 9; ``9.npz`` -> 9."""
    stem = path.name[: -len(".npz")]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    m = _ID.search(stem.rsplit("_", 1)[-1])
    return int(m.group(1)) if m else None


class FeatureStore:
    """Image id -> (L, D) float32 features (zero rows = padding) and the number of valid rows."""

    dim: int
    length: int
    grid_shape: tuple[int, int] | None

    def has(self, image_id: int) -> bool:
        raise NotImplementedError

    def load(self, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class NpzFeatureStore(FeatureStore):
    def __init__(
        self,
        dirs: Sequence[str | Path],
        layout: str = "bottom_up",
        max_boxes: int = 100,
        grid_shape: Sequence[int] | None = None,
    ) -> None:
        if layout not in ("bottom_up", "grid"):
            raise ConfigError(f"data.layout must be 'bottom_up' or 'grid', got {layout!r}")
        self.layout = layout
        self.files: dict[int, Path] = {}
        for d in dirs:
            d = Path(d)
            if not d.is_dir():
                raise DataError(f"vqa2: feature directory {d} not found")
            for p in d.rglob("*.npz"):
                iid = image_id_of(p)
                if iid is not None:
                    self.files[iid] = p
        if not self.files:
            raise DataError(f"vqa2: no '*.npz' feature files under {[str(d) for d in dirs]}")
        first = self._read(next(iter(self.files.values())))
        self.dim = first.shape[1]
        if layout == "bottom_up":
            self.length, self.grid_shape = int(max_boxes), None
        else:
            self.length = first.shape[0]
            self.grid_shape = (
                tuple(int(g) for g in grid_shape) if grid_shape is not None else self._square(first)
            )

    @staticmethod
    def _square(f: np.ndarray) -> tuple[int, int]:
        s = int(round(np.sqrt(f.shape[0])))
        if s * s != f.shape[0]:
            raise ConfigError(
                f"vqa2: grid features have {f.shape[0]} cells, not a square: set data.grid_shape"
            )
        return s, s

    def _read(self, path: Path) -> np.ndarray:
        try:
            with np.load(path) as z:
                if self.layout == "bottom_up":
                    if "x" not in z:
                        raise DataError(f"vqa2: {path} has no key 'x' (bottom-up layout: x = (2048, K))")
                    return np.asarray(z["x"], dtype=np.float32).T
                arr = np.asarray(z[z.files[0]], dtype=np.float32)
        except (OSError, ValueError) as e:
            raise DataError(f"vqa2: cannot read feature file {path} ({e})") from None
        if arr.ndim == 3:  # (D, h, w) -> (h*w, D), row-major
            arr = arr.reshape(arr.shape[0], -1).T
        if arr.ndim != 2:
            raise DataError(f"vqa2: {path}: expected grid features (h*w, D) or (D, h, w), got {arr.shape}")
        return arr

    def has(self, image_id: int) -> bool:
        return image_id in self.files

    def load(self, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(image_ids), self.length, self.dim), dtype=np.float32)
        n = np.zeros(len(image_ids), dtype=np.int64)
        for i, iid in enumerate(image_ids):
            f = self._read(self.files[iid])
            if f.shape[1] != self.dim or (self.layout == "grid" and f.shape[0] != self.length):
                raise DataError(
                    f"vqa2: {self.files[iid]} has features {f.shape}, expected "
                    f"({'<=' + str(self.length) if self.layout == 'bottom_up' else self.length}, {self.dim})"
                )
            k = min(len(f), self.length)
            out[i, :k] = f[:k]
            n[i] = k
        return out, n


class HDF5FeatureStore(FeatureStore):
    """One HDF5 file: ``image_ids`` (N,), ``features`` (N, L, D) (any float dtype), attrs ``grid_shape``."""

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"vqa2: HDF5 feature file {self.path} not found")
        with h5py.File(self.path, "r") as f:
            for key in ("image_ids", "features"):
                if key not in f:
                    raise DataError(
                        f"vqa2: {self.path} has no dataset {key!r} (expected image_ids (N,), "
                        f"features (N, L, D))"
                    )
            ids = np.asarray(f["image_ids"][:], dtype=np.int64)
            shape = f["features"].shape
            if len(shape) != 3 or shape[0] != len(ids):
                raise DataError(f"vqa2: {self.path}: features {shape} do not match image_ids ({len(ids)},)")
            g = f.attrs.get("grid_shape")
            self.grid_shape = tuple(int(v) for v in g) if g is not None else None
            self.has_num = "num_boxes" in f
        self.row = {int(i): r for r, i in enumerate(ids)}
        self.length, self.dim = int(shape[1]), int(shape[2])
        self._h5 = None

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers: reopen lazily
        s = dict(self.__dict__)
        s["_h5"] = None
        return s

    def _file(self):
        if self._h5 is None:
            import h5py

            self._h5 = h5py.File(self.path, "r")
        return self._h5

    def has(self, image_id: int) -> bool:
        return image_id in self.row

    def load(self, image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray([self.row[i] for i in image_ids], dtype=np.int64)
        order = np.argsort(rows)
        uniq, inv = np.unique(rows[order], return_inverse=True)  # h5py needs increasing, unique indices
        f = self._file()
        feats = np.asarray(f["features"][uniq.tolist()], dtype=np.float32)[inv]
        out = np.empty_like(feats)
        out[order] = feats
        if self.has_num:
            num = np.asarray(f["num_boxes"][uniq.tolist()], dtype=np.int64)[inv]
            n = np.empty_like(num)
            n[order] = num
        else:
            n = np.full(len(image_ids), self.length, dtype=np.int64)
        return out, n


# -- dataset ------------------------------------------------------------------------------------------------------
class VQADataset(Dataset):
    """One split: token ids, soft scores and image ids in memory; features read per batch."""

    def __init__(
        self,
        name: str,
        token_ids: np.ndarray,
        targets: np.ndarray,
        image_ids: np.ndarray,
        question_ids: np.ndarray,
        store: FeatureStore,
    ) -> None:
        if len(token_ids) == 0:
            raise DataError(f"vqa2: split {name!r} is empty; check the question files and valid_fraction")
        self.name = name
        self.tokens = torch.from_numpy(token_ids)
        self.targets = torch.from_numpy(targets)
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.question_ids = np.asarray(question_ids, dtype=np.int64)
        self.store = store

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        feats, nbox = self.store.load(self.image_ids[idx.numpy()].tolist())
        tok = self.tokens[idx]
        return {
            "x": {"question": tok, "image": torch.from_numpy(feats)},
            "lengths": {"question": (tok != 0).sum(1).clamp(min=1), "image": torch.from_numpy(nbox)},
            "y": self.targets[idx],
            "index": idx,
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])


class VQA2DataModule(MultimodalDataModule):
    """``data=vqa2``: VQA-v2 from the official files (details in the module docstring).

    Args:
        train_questions: the train2014 questions JSON (or a list of files).
        train_annotations: the train2014 annotations JSON (or a list of files).
        val_questions: the val2014 questions JSON (or a list of files); split into ``valid`` and ``test``.
        val_annotations: the val2014 annotations JSON (or a list of files).
        feature_dirs: folders of per-image ``.npz`` features; exactly one of ``feature_dirs`` and ``hdf5``.
        hdf5: one HDF5 feature file as written by ``scripts/extract_grid_features.py``.
        layout: ``bottom_up`` (key ``x`` (2048, K), zero-padded to ``max_boxes``) or ``grid`` (``.npz`` grids).
        max_boxes: number of boxes of the bottom-up layout.
        grid_shape: ``(h, w)`` of grid features; ``None``: square (or the HDF5 file's attribute).
        extra_questions: further question files whose words join the token vocabulary (e.g. test2015, as MCAN).
        vg_questions: Visual Genome questions added to training (both VG files or neither).
        vg_annotations: Visual Genome annotations added to training.
        answer_dict: MCAN's ``answer_dict.json`` (``[ans_to_ix, ix_to_ans]``) instead of building the answer list.
        answer_vocab_from: annotation splits the answer list is counted on (``train``, ``val``).
        min_answer_count: keep answers occurring more than this many times (8 -> 3,129 on train+val).
        max_tokens: question tokens per sample (MCAN: 14).
        glove: GloVe text file (``word v1 ... v300``) that initialises the word embedding; ``None``: random.
        valid_fraction: share of the val2014 *images* used for validation; the rest is the test split.
        split_seed: seed of that image split.
        **loader: batch size, workers and shuffling seed, passed to :class:`~mmfusion.data.base.MultimodalDataModule`.
    """

    modalities = ("question", "image")

    def __init__(
        self,
        train_questions: str | Sequence[str],
        train_annotations: str | Sequence[str],
        val_questions: str | Sequence[str],
        val_annotations: str | Sequence[str],
        feature_dirs: Sequence[str] | str | None = None,
        hdf5: str | None = None,
        layout: str = "bottom_up",
        max_boxes: int = 100,
        grid_shape: Sequence[int] | None = None,
        extra_questions: Sequence[str] = (),
        vg_questions: str | None = None,
        vg_annotations: str | None = None,
        answer_dict: str | None = None,
        answer_vocab_from: Sequence[str] = ("train", "val"),
        min_answer_count: int = 8,
        max_tokens: int = 14,
        glove: str | None = None,
        valid_fraction: float = 0.1,
        split_seed: int = 0,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        if (feature_dirs is None) == (hdf5 is None):
            raise ConfigError("data: set exactly one of data.feature_dirs (per-image .npz) or data.hdf5")
        if not 0.0 < valid_fraction < 1.0:
            raise ConfigError(f"data.valid_fraction must be in (0, 1), got {valid_fraction}")
        if bool(vg_questions) != bool(vg_annotations):
            raise ConfigError("data: set both data.vg_questions and data.vg_annotations, or neither")
        self.cfg = dict(
            train_questions=_as_list(train_questions),
            train_annotations=_as_list(train_annotations),
            val_questions=_as_list(val_questions),
            val_annotations=_as_list(val_annotations),
            feature_dirs=_as_list(feature_dirs) if feature_dirs is not None else None,
            hdf5=hdf5,
            layout=layout,
            max_boxes=max_boxes,
            grid_shape=grid_shape,
            extra_questions=_as_list(extra_questions),
            vg_questions=vg_questions,
            vg_annotations=vg_annotations,
            answer_dict=answer_dict,
            answer_vocab_from=tuple(answer_vocab_from),
            min_answer_count=min_answer_count,
            max_tokens=max_tokens,
            glove=glove,
            valid_fraction=valid_fraction,
            split_seed=split_seed,
        )
        self.answers: list[str] = []
        self.token_vocab: dict[str, int] = {}
        self.pretrained_emb: np.ndarray | None = None
        self.store: FeatureStore | None = None
        self.annotations: dict[int, dict[str, Any]] = {}  # val2014 annotations by question id (valid + test)

    # -- building -----------------------------------------------------------------------------------------------
    def _answers(self, anns: dict[str, list[dict[str, Any]]]) -> list[str]:
        c = self.cfg
        if c["answer_dict"]:
            p = Path(c["answer_dict"])
            if not p.is_file():
                raise DataError(f"vqa2: answer_dict {p} not found")
            d = json.loads(p.read_text())
            if not (isinstance(d, list) and len(d) == 2 and isinstance(d[0], dict)):
                raise DataError(f"vqa2: {p}: expected MCAN's [ans_to_ix, ix_to_ans]")
            return [a for a, _ in sorted(d[0].items(), key=lambda kv: kv[1])]
        unknown = set(c["answer_vocab_from"]) - {"train", "val"}
        if unknown:
            raise ConfigError(f"data.answer_vocab_from may contain 'train' and 'val', got {sorted(unknown)}")
        pool = [a for s in c["answer_vocab_from"] for a in anns[s]]
        answers = build_answer_vocab(pool, c["min_answer_count"])
        if not answers:
            raise DataError(
                f"vqa2: no answer occurs more than {c['min_answer_count']} times; lower data.min_answer_count"
            )
        return answers

    def build(self) -> dict[str, VQADataset]:
        c = self.cfg
        qs = {s: [q for p in c[f"{s}_questions"] for q in read_questions(p)] for s in ("train", "val")}
        anns = {s: [a for p in c[f"{s}_annotations"] for a in read_annotations(p)] for s in ("train", "val")}
        extra_q = [q for p in c["extra_questions"] for q in read_questions(p)]
        vg_q = read_questions(c["vg_questions"]) if c["vg_questions"] else []
        vg_a = read_annotations(c["vg_annotations"]) if c["vg_annotations"] else []

        self.answers = self._answers(anns)
        ans_to_ix = {a: i for i, a in enumerate(self.answers)}
        self.answer_types = answer_types_of(self.answers, anns["train"] + anns["val"])

        self.token_vocab = build_token_vocab(q["question"] for q in qs["train"] + qs["val"] + extra_q + vg_q)
        self.pretrained_emb = load_glove(c["glove"], self.token_vocab) if c["glove"] else None

        if c["hdf5"]:
            self.store = HDF5FeatureStore(c["hdf5"])
        else:
            self.store = NpzFeatureStore(c["feature_dirs"], c["layout"], c["max_boxes"], c["grid_shape"])
        if c["grid_shape"] is not None and self.store.grid_shape != tuple(c["grid_shape"]):
            raise ConfigError(
                f"data.grid_shape {tuple(c['grid_shape'])} != features' grid {self.store.grid_shape}"
            )

        def arrays(
            split: str, questions: list[dict], annotations: list[dict], official: bool = False
        ) -> dict[str, np.ndarray]:
            by_q = {int(a["question_id"]): a for a in annotations}
            missing = [q["question_id"] for q in questions if int(q["question_id"]) not in by_q]
            if missing:
                raise DataError(
                    f"vqa2: {split}: {len(missing)} questions have no annotation (e.g. question_id "
                    f"{missing[0]}); questions and annotations files must match"
                )
            no_feat = sorted(
                {int(q["image_id"]) for q in questions if not self.store.has(int(q["image_id"]))}
            )
            if no_feat:
                raise DataError(
                    f"vqa2: {split}: no image features for {len(no_feat)} images (e.g. image_id "
                    f"{no_feat[0]}) in {c['hdf5'] or c['feature_dirs']}"
                )
            ordered = [by_q[int(q["question_id"])] for q in questions]
            return {
                "tokens": encode_questions(
                    (q["question"] for q in questions), self.token_vocab, c["max_tokens"]
                ),
                "y": (
                    official_targets([[h["answer"] for h in a["answers"]] for a in ordered], self.answers)
                    if official
                    else soft_targets(ordered, ans_to_ix)
                ),
                "image": np.asarray([int(q["image_id"]) for q in questions], dtype=np.int64),
                "qid": np.asarray([int(q["question_id"]) for q in questions], dtype=np.int64),
            }

        train = arrays("train", qs["train"], anns["train"])
        if vg_q:
            vg_q = [q for q in vg_q if self.store.has(int(q["image_id"]))]
            vg = arrays("vg", vg_q, vg_a)
            keep = vg["y"].max(1) > 0
            log.info(
                "vqa2: Visual Genome: %d of %d QA pairs kept (features + answer in vocabulary)",
                int(keep.sum()),
                len(keep),
            )
            train = {k: np.concatenate([train[k], vg[k][keep]]) for k in train}
        val = arrays("val", qs["val"], anns["val"], official=True)  # val/vqa_acc == the official evaluator
        self.annotations = {int(a["question_id"]): a for a in anns["val"]}

        # valid / test: disjoint sets of val images (seeded), so no image is seen by both
        images = np.unique(val["image"])
        rng = np.random.default_rng(c["split_seed"])
        n_valid = max(1, int(round(c["valid_fraction"] * len(images))))
        valid_images = set(rng.permutation(images)[:n_valid].tolist())
        is_valid = np.asarray([i in valid_images for i in val["image"]])

        def ds(name: str, a: dict[str, np.ndarray], sel: np.ndarray | None = None) -> VQADataset:
            a = {k: v[sel] for k, v in a.items()} if sel is not None else a
            return VQADataset(name, a["tokens"], a["y"], a["image"], a["qid"], self.store)

        self.input_dims = {"question": c["max_tokens"], "image": self.store.dim}
        return {
            "train": ds("train", train),
            "valid": ds("valid", val, is_valid),
            "test": ds("test", val, ~is_valid),
        }

    # -- model / results ----------------------------------------------------------------------------------------
    def target_facts(self) -> TargetFacts:
        """One output per answer of the vocabulary, with its official answer type."""
        self.setup()
        return TargetFacts(num_outputs=len(self.answers), answer_types=tuple(self.answer_types))

    def model_kwargs(self) -> dict[str, Any]:
        kw = super().model_kwargs()
        kw.update(
            vocab_size=len(self.token_vocab),
            pretrained_emb=torch.from_numpy(self.pretrained_emb) if self.pretrained_emb is not None else None,
            grid_shape=self.store.grid_shape,
            image_encoder="linear",
        )
        return kw

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update(grid_shape=self.store.grid_shape, num_answers=len(self.answers))
        return d

    def results(self, split: str, prediction: np.ndarray, path: str | Path) -> Path:
        """Write the official results file for ``split`` from (N, A) scores in the split's order."""
        self.setup()
        ds = self.splits[split]
        if len(prediction) != len(ds):
            raise DataError(f"vqa2: {len(prediction)} predictions for {len(ds)} questions of split {split!r}")
        answers = [self.answers[i] for i in np.asarray(prediction).argmax(1)]
        return write_results(path, ds.question_ids.tolist(), answers)

    def split_annotations(self, split: str) -> list[dict[str, Any]]:
        """The official annotations of the questions of ``split`` (``valid`` or ``test``), for ``vqa_accuracy``."""
        self.setup()
        if split not in ("valid", "test"):
            raise ConfigError(f"vqa2: annotations are kept for the valid/test splits, not {split!r}")
        return [self.annotations[int(q)] for q in self.splits[split].question_ids]


def _as_list(v: str | Sequence[str] | None) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, (str, Path)) else [str(x) for x in v]


def write_feature_hdf5(
    path: str | Path,
    image_ids: Sequence[int],
    features: np.ndarray,
    grid_shape: Sequence[int] | None = None,
    num_boxes: Sequence[int] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write the HDF5 layout :class:`HDF5FeatureStore` reads (used by ``scripts/extract_grid_features.py``)."""
    import h5py

    features = np.asarray(features)
    if features.ndim != 3 or len(features) != len(image_ids):
        raise DataError(f"write_feature_hdf5: features {features.shape} must be (N={len(image_ids)}, L, D)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image_ids", data=np.asarray(image_ids, dtype=np.int64))
        f.create_dataset("features", data=features.astype(dtype), chunks=(1, *features.shape[1:]))
        if num_boxes is not None:
            f.create_dataset("num_boxes", data=np.asarray(num_boxes, dtype=np.int64))
        if grid_shape is not None:
            f.attrs["grid_shape"] = np.asarray(grid_shape, dtype=np.int64)
    return path

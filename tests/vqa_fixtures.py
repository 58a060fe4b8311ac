"""VQA-v2 fixtures in the exact official formats (questions / annotations JSON, MCAN feature .npz, HDF5).

Each image has a colour c (red/blue/green) and a count n (1..3), written into its features, so a model can
learn the answers: "what color is the car?" -> c, "is the car red?" -> yes/no, "how many cars are there?" -> n.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLORS = ("red", "blue", "green")
NUMBERS = ("one", "2", "three")  # 'one'/'three' exercise the digit normalisation


def _info(subtype: str) -> dict:
    return {
        "description": "This is v2.0 of the VQA dataset.",
        "url": "http://visualqa.org",
        "version": "2.0",
        "year": 2017,
        "contributor": "VQA Team",
        "date_created": "2017-04-26 17:07:13",
    }


def _answers(main: str, others: list[str]) -> list[dict]:
    ans = [main] * (10 - len(others)) + others
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(ans)]


def image_facts(image_id: int) -> tuple[str, int]:
    return COLORS[image_id % 3], 1 + (image_id // 3) % 3


def write_split(root: Path, subtype: str, image_ids: list[int], qid0: int) -> tuple[Path, Path]:
    questions, annotations = [], []
    qid = qid0
    for iid in image_ids:
        color, n = image_facts(iid)
        items = [
            (
                "What color is the car?",
                color,
                "other",
                "what color is the",
                ["Red." if color == "red" else color],
            ),
            ("Is the car red?", "yes" if color == "red" else "no", "yes/no", "is the", []),
            ("How many cars are there?", NUMBERS[n - 1], "number", "how many", [str(n)]),
        ]
        for text, main, at, qt, others in items:
            qid += 1
            questions.append({"image_id": iid, "question": text, "question_id": qid})
            annotations.append(
                {
                    "question_type": qt,
                    "multiple_choice_answer": main,
                    "answers": _answers(main, others),
                    "image_id": iid,
                    "answer_type": at,
                    "question_id": qid,
                }
            )
    qpath = root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    apath = root / f"v2_mscoco_{subtype}_annotations.json"
    qpath.write_text(
        json.dumps(
            {
                "info": _info(subtype),
                "task_type": "Open-Ended",
                "data_type": "mscoco",
                "license": {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"},
                "data_subtype": subtype,
                "questions": questions,
            }
        )
    )
    apath.write_text(
        json.dumps(
            {
                "info": _info(subtype),
                "license": {"url": "", "name": ""},
                "data_subtype": subtype,
                "annotations": annotations,
                "data_type": "mscoco",
            }
        )
    )
    return qpath, apath


def image_features(image_id: int, dim: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """(cells, dim) features: colour one-hot in dims 0..2 and the count in dim 3 on the first n cells."""
    color, n = image_facts(image_id)
    f = 0.1 * rng.standard_normal((cells, dim)).astype(np.float32)
    f[:n, COLORS.index(color)] += 3.0
    f[:n, 3] += 3.0
    return f


def write_vqa_fixture(
    root: Path, layout: str = "bottom_up", dim: int = 16, grid: int = 4, n_train: int = 12, n_val: int = 12
) -> dict[str, object]:
    """Write train2014/val2014 questions+annotations and features; return the datamodule keyword arguments."""
    root = Path(root)
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_ids = list(range(1, n_train + 1))
    val_ids = list(range(100, 100 + n_val))
    tq, ta = write_split(raw, "train2014", train_ids, 1000)
    vq, va = write_split(raw, "val2014", val_ids, 5000)
    rng = np.random.default_rng(0)
    dirs = []
    for sub, ids in (("train2014", train_ids), ("val2014", val_ids)):
        d = root / "feats" / sub
        d.mkdir(parents=True, exist_ok=True)
        dirs.append(str(d))
        for iid in ids:
            name = d / f"COCO_{sub}_{iid:012d}.jpg.npz"
            if layout == "bottom_up":
                k = 3 + iid % 4  # variable number of boxes
                f = image_features(iid, dim, k, rng)
                np.savez(name, x=f.T, bbox=np.zeros((k, 4), np.float32), num_bbox=k, image_h=480, image_w=640)
            else:  # deep-spin grid layout: np.savez(path, (h*w, D)) -> key arr_0
                np.savez(name, image_features(iid, dim, grid * grid, rng))
    return {
        "train_questions": str(tq),
        "train_annotations": str(ta),
        "val_questions": str(vq),
        "val_annotations": str(va),
        "feature_dirs": dirs,
        "layout": layout,
    }

"""Official VQA results file and accuracy for a checkpoint trained on ``data=vqa2``.

Rebuilds the run from the config stored in the checkpoint, predicts the ``valid`` or ``test`` split (val2014
questions), writes ``[{"question_id", "answer"}]`` and scores it with the official evaluation
(:func:`mmfusion.metrics.vqa.vqa_accuracy`: overall, per answer type, per question type).

    python scripts/vqa_results.py --ckpt outputs/<run>/checkpoints/epoch_012.ckpt --split test --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from mmfusion.data.vqa2 import VQA2DataModule
    from mmfusion.errors import MMFusionError
    from mmfusion.evaluation.checkpoints import load_trained
    from mmfusion.metrics.vqa import vqa_accuracy

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument("--out", required=True, help="results JSON file to write")
    args = ap.parse_args(argv)
    try:
        module, dm = load_trained(args.ckpt)
        if not isinstance(dm, VQA2DataModule):
            raise MMFusionError(f"{args.ckpt}: trained on {type(dm).__name__}; vqa_results needs data=vqa2")
    except MMFusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    module.eval()
    loader = dm.test_dataloader() if args.split == "test" else dm.val_dataloader()
    preds = []
    with torch.inference_mode():
        for batch in loader:
            preds.append(module.net(batch).prediction.float().cpu().numpy())
    path = dm.results(args.split, np.concatenate(preds), args.out)
    acc = vqa_accuracy(json.loads(Path(path).read_text()), dm.split_annotations(args.split))
    print(json.dumps({"results": str(path), **acc}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

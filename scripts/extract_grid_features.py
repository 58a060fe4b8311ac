"""ResNet-152 grid features for VQA (Farinhas 2021, Sect. 6.2.1; deep-spin ``extract_features.py``).

Each image is resized to 448x448 (aspect ratio not kept), normalised with the ImageNet mean/std and passed through
an ImageNet ResNet-152 without its pooling and classifier (``children()[:-2]``): a (2048, 14, 14) map, stored
row-major as (196, 2048) in the HDF5 layout ``data=vqa2`` reads (``data.hdf5=<out>``): datasets ``image_ids``
and ``features``, attribute ``grid_shape = (14, 14)``. Image ids are parsed from COCO file names
(``COCO_val2014_000000000042.jpg`` -> 42).

Needs torchvision (optional extra: ``pip install 'mmfusion[vision]'``) and pretrained weights already in the torch
cache or given with ``--weights`` (nothing is downloaded unless ``--download``).

    python scripts/extract_grid_features.py --images data/coco/val2014 --out data/vqa2/grid_val2014.h5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TORCHVISION_MESSAGE = (
    "extract_grid_features needs torchvision, which is not installed: "
    "pip install 'mmfusion[vision]' (or torchvision matching your torch)"
)


def import_torchvision():
    """Lazy import with the one-line message of :data:`TORCHVISION_MESSAGE`."""
    try:
        import torchvision
    except Exception as e:  # ImportError, or a torchvision built against another torch
        raise SystemExit(f"{TORCHVISION_MESSAGE} ({type(e).__name__}: {e})") from None
    return torchvision


def image_id(path: Path) -> int:
    digits = path.stem.rsplit("_", 1)[-1]
    if not digits.isdigit():
        raise SystemExit(
            f"extract_grid_features: cannot parse an image id from {path.name} "
            f"(expected COCO_<split>_<id>.jpg or <id>.jpg)"
        )
    return int(digits)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", required=True, help="folder of .jpg/.png images")
    ap.add_argument("--out", required=True, help="output HDF5 file")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--weights",
        default=None,
        help="a ResNet-152 state_dict (.pth); default: torchvision's "
        "IMAGENET1K_V1 from the local torch cache",
    )
    ap.add_argument("--download", action="store_true", help="allow torchvision to download the weights")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    args = ap.parse_args(argv)

    tv = import_torchvision()
    import torch
    from PIL import Image

    from mmfusion.data.vqa2 import write_feature_hdf5

    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"extract_grid_features: no images in {args.images}")
    if args.weights:
        net = tv.models.resnet152()
        net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    else:
        if not args.download:
            cached = Path(torch.hub.get_dir()) / "checkpoints"
            if not any(cached.glob("resnet152-*.pth")):
                raise SystemExit(
                    f"extract_grid_features: no ResNet-152 weights in {cached}; pass --weights or --download"
                )
        net = tv.models.resnet152(weights=tv.models.ResNet152_Weights.IMAGENET1K_V1)
    body = torch.nn.Sequential(*list(net.children())[:-2]).eval().to(args.device)
    tf = tv.transforms.Compose(
        [
            tv.transforms.Resize((args.size, args.size)),
            tv.transforms.ToTensor(),
            tv.transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    ids, feats = [], []
    with torch.inference_mode():
        for i in range(0, len(files), args.batch_size):
            chunk = files[i : i + args.batch_size]
            x = torch.stack([tf(Image.open(p).convert("RGB")) for p in chunk]).to(args.device)
            f = body(x)  # (B, 2048, h, w)
            feats.append(f.flatten(2).transpose(1, 2).float().cpu().numpy())  # (B, h*w, 2048), row-major
            ids += [image_id(p) for p in chunk]
            print(f"{i + len(chunk)}/{len(files)}", file=sys.stderr, end="\r")
    features = np.concatenate(feats)
    h = w = int(round(np.sqrt(features.shape[1])))
    write_feature_hdf5(args.out, ids, features, grid_shape=(h, w), dtype=args.dtype)
    print(f"wrote {len(ids)} images x {features.shape[1:]} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

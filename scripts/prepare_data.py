"""Get a dataset's files into place: ``python scripts/prepare_data.py NAME [--data-dir DIR] [--check] [--offline]``.

NAME is one of mosi, mosei, mosi_csd, mosei_csd, urfunny, mnist, digits (``--list`` shows them). For each file the script
knows its public source and, where the source publishes one, its checksum:

* if the file is already in place, its checksum is verified (``--check`` does only this, never downloading);
* else, if the file has a direct public URL and the network answers, it is downloaded to ``<dest>/<file>.part``,
  verified, then renamed into place (a checksum mismatch deletes the download and fails);
* else (no network, or a source that needs a browser: Google Drive, Baidu, Dropbox folders), it prints exactly
  which file to put where and how ``train.py`` will find it.

Nothing else in mmfusion downloads data: ``train.py`` only reads what this script (or you) put in place.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import shutil
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class File:
    name: str
    url: str | None = None  # direct download (None: manual only)
    sha256: str | None = None
    md5: str | None = None
    zip_member: bool = False  # comes inside the dataset's archive (Dataset.archive)
    optional: bool = False
    note: str = ""


@dataclass
class Dataset:
    dest: str  # relative to --data-dir
    config: str  # how train.py is pointed at it
    files: list[File]
    source: str  # human-readable origin (page / paper)
    manual: str = ""  # what to do by hand
    archive: str | None = None  # a zip with the zip_member files
    verify: str | None = None  # extra content check (function name below)
    shared: dict[str, str] = field(default_factory=dict)  # file -> copy available in ../shared/data


MMSA = "https://github.com/thuiar/MMSA#2-datasets (Google Drive folder 1A2S4pqCHryGmiqnNSPLv7rEg63WvjCSk, BaiduYun code qq0b)"
MULT = "https://www.dropbox.com/sh/hyzpgx1hp9nj37s/AAB7FhBqJOFDw2hEyvv2ZXHxa (yaohungt/Multimodal-Transformer README)"
CMU = "http://immortal.multicomp.cs.cmu.edu/CMU-MOSI"
CMU_MOSEI = "http://immortal.multicomp.cs.cmu.edu/CMU-MOSEI"

DATASETS: dict[str, Dataset] = {
    "mosi": Dataset(
        dest="MOSI/Processed",
        config="python train.py data=mosi data.path=data/MOSI/Processed/unaligned_50.pkl  (or aligned_50.pkl)",
        files=[
            File(
                "unaligned_50.pkl", sha256="78e0f8b5ef8ff71558e7307848fc1fa929ecb078203f565ab22b9daab2e02524"
            ),
            File(
                "aligned_50.pkl",
                sha256="d3994fd25681f9c7ad6e9c6596a6fe9b4beb85ff7d478ba978b124139002e5f9",
                optional=True,
            ),
            File("mosi_data.pkl", optional=True, note="MulT layout, from " + MULT),
            File("mosi_data_noalign.pkl", optional=True, note="MulT layout, from " + MULT),
        ],
        source=MMSA,
        manual="Download MOSI/Processed/unaligned_50.pkl (and aligned_50.pkl) from the MMSA Google Drive or BaiduYun "
        "folder (a browser is needed; no direct URL), then run this script again to verify the SHA-256 "
        "published in the MMSA README. MulT-layout pickles work too (data.path=...).",
    ),
    "mosei": Dataset(
        dest="MOSEI/Processed",
        config="python train.py data=mosei data.path=data/MOSEI/Processed/unaligned_50.pkl",
        files=[
            File(
                "unaligned_50.pkl", sha256="ad8b23d50557045e7d47959ce6c5b955d8d983f2979c7d9b7b9226f6dd6fec1f"
            ),
            File(
                "aligned_50.pkl",
                sha256="45eccfb748a87c80ecab9bfac29582e7b1466bf6605ff29d3b338a75120bf791",
                optional=True,
            ),
            File("mosei_senti_data.pkl", optional=True, note="MulT layout, from " + MULT),
            File("mosei_senti_data_noalign.pkl", optional=True, note="MulT layout, from " + MULT),
        ],
        source=MMSA,
        manual="Download MOSEI/Processed/unaligned_50.pkl (and aligned_50.pkl) from the MMSA Google Drive or "
        "BaiduYun folder, then run this script again to verify the SHA-256.",
    ),
    "mosi_csd": Dataset(
        dest="cmumosi",
        config="python train.py data=mosi_csd   (paths in configs/data/mosi_csd.yaml)",
        files=[
            File(
                "CMU_MOSI_Opinion_Labels.csd",
                url=f"{CMU}/labels/CMU_MOSI_Opinion_Labels.csd",
                sha256="aef5f4617cdb067cc7606bb798eb6452c3de45f0f21cb3427be33c4d8c7fe852",
            ),
            File(
                "CMU_MOSI_TimestampedWordVectors.csd",
                url=f"{CMU}/language/CMU_MOSI_TimestampedWordVectors.csd",
            ),
            File("CMU_MOSI_COVAREP.csd", url=f"{CMU}/acoustic/CMU_MOSI_COVAREP.csd"),
            File("CMU_MOSI_Visual_Facet_41.csd", url=f"{CMU}/visual/CMU_MOSI_Visual_Facet_41.csd"),
        ],
        source="CMU-MultimodalSDK recipe mmsdk/mmdatasdk/dataset/standard_datasets/CMU_MOSI/cmu_mosi.py",
        manual="The CMU server has answered 'does not exist' since 2024 (CMU-MultiComp-Lab/CMU-MultimodalSDK#12). "
        "Copy the .csd files from any CMU-MultimodalSDK download you have; the label file is in "
        "../shared/data/mosi/. No checksum is published for the feature files.",
        shared={"CMU_MOSI_Opinion_Labels.csd": "mosi/CMU_MOSI_Opinion_Labels.csd"},
    ),
    "mosei_csd": Dataset(
        dest="cmumosei",
        config="python train.py data=mosei_csd   (paths in configs/data/mosei_csd.yaml)",
        files=[
            File("CMU_MOSEI_Labels.csd", url=f"{CMU_MOSEI}/labels/CMU_MOSEI_Labels.csd"),
            File(
                "CMU_MOSEI_TimestampedWordVectors.csd",
                url=f"{CMU_MOSEI}/language/CMU_MOSEI_TimestampedWordVectors.csd",
            ),
            File("CMU_MOSEI_COVAREP.csd", url=f"{CMU_MOSEI}/acoustic/CMU_MOSEI_COVAREP.csd"),
            File("CMU_MOSEI_VisualFacet42.csd", url=f"{CMU_MOSEI}/visual/CMU_MOSEI_VisualFacet42.csd"),
            File(
                "cmu_mosei_std_folds.py",
                url="https://raw.githubusercontent.com/A2Zadeh/CMU-MultimodalSDK/master/"
                "mmsdk/mmdatasdk/dataset/standard_datasets/CMU_MOSEI/cmu_mosei_std_folds.py",
            ),
        ],
        source="CMU-MultimodalSDK recipe mmsdk/mmdatasdk/dataset/standard_datasets/CMU_MOSEI/cmu_mosei.py",
        manual="The CMU server has answered 'does not exist' since 2024 (CMU-MultiComp-Lab/CMU-MultimodalSDK#12). "
        "Copy the .csd files from any CMU-MultimodalSDK download you have, and the standard folds file "
        "cmu_mosei_std_folds.py from the SDK repository (it is parsed, never executed).",
    ),
    "urfunny": Dataset(
        dest="urfunny",
        config="python train.py data=urfunny data.path=data/urfunny",
        files=[
            # SHA-256 of the released labels/folds (the copies in ../shared/data/urfunny); none published for the rest
            File(
                "data_folds.pkl",
                zip_member=True,
                sha256="e9b872b34f6de88aa7e87d0a70ed8cdb8f37429b9d4822c455e4eb2ca1fb8fe2",
            ),
            File(
                "humor_label_sdk.pkl",
                zip_member=True,
                sha256="fa7309780d2229ddeeff33df508edd8d0201905f2b93a50c4fca5984d1a40eb3",
            ),
            *[
                File(n, zip_member=True)
                for n in (
                    "language_sdk.pkl",
                    "word_embedding_list.pkl",
                    "covarep_features_sdk.pkl",
                    "openface_features_sdk.pkl",
                )
            ],
        ],
        source="ROC-HCI/UR-FUNNY README, UR-FUNNY-V2 'extracted features'",
        archive="https://www.dropbox.com/sh/9h0pcqmqoplx9p2/AAC8yYikSBVYCSFjm3afFHQva?dl=1",
        manual="Download the UR-FUNNY-V2 'extracted features' folder (Dropbox link in the ROC-HCI/UR-FUNNY README) "
        "and put its six .pkl files in the destination. No checksum is published; the script checks the "
        "label/fold counts instead (16,606 labels; 10,598/2,626/3,290 fold ids). Labels and folds alone are "
        "in ../shared/data/urfunny/.",
        verify="verify_urfunny",
        shared={
            "data_folds.pkl": "urfunny/data_folds.pkl",
            "humor_label_sdk.pkl": "urfunny/humor_label_sdk.pkl",
        },
    ),
    "mnist": Dataset(
        dest="mnist",
        config="python train.py data=mnist data.path=data/mnist",
        files=[
            File(
                "train-images-idx3-ubyte.gz",
                url="https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
            ),
            File(
                "train-labels-idx1-ubyte.gz",
                url="https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
                md5="d53e105ee54ea40749a09fcbcd1e9432",
            ),
            File(
                "t10k-images-idx3-ubyte.gz",
                url="https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
                md5="9fb629c4189551a2d022fa330f9573f3",
            ),
            File(
                "t10k-labels-idx1-ubyte.gz",
                url="https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
                md5="ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ],
        source="LeCun, Cortes & Burges, MNIST (torchvision's mirror; MD5 as in torchvision.datasets.MNIST)",
        manual="Put the four IDX files (gzip or not) in the destination; a torchvision download folder "
        "(<root>/MNIST/raw) also works as data.path.",
    ),
    "digits": Dataset(
        dest="",
        config="python train.py data=digits",
        files=[],
        source="scikit-learn's bundled copy of the UCI optical-digits test set (sklearn.datasets.load_digits)",
        manual="Nothing to fetch: the data ships with scikit-learn.",
    ),
}


def file_hash(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_hash(path: Path, spec: File) -> tuple[bool, str]:
    """(ok, message). A file without a published checksum is 'present (no checksum published)'."""
    for algo in ("sha256", "md5"):
        want = getattr(spec, algo)
        if want:
            got = file_hash(path, algo)
            return got == want, f"{algo} {'OK' if got == want else f'MISMATCH: got {got}, expected {want}'}"
    return True, "present (no checksum published)"


def network_up(url: str, timeout: float = 5.0) -> bool:
    u = urllib.parse.urlparse(url)
    return _reachable(u.hostname, u.port or (443 if u.scheme == "https" else 80), timeout)


@functools.cache
def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    part = dest.with_name(dest.name + ".part")
    req = urllib.request.Request(url, headers={"User-Agent": "mmfusion-prepare-data"})
    with urllib.request.urlopen(req, timeout=timeout) as r, open(part, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
    part.replace(dest)


def verify_urfunny(dest: Path) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from mmfusion.data.urfunny import load_labels_and_folds

    labels, folds = load_labels_and_folds(dest)
    counts = {k: len(v) for k, v in folds.items()}
    ok = len(labels) == 16606 and counts == {"train": 10598, "valid": 2626, "test": 3290}
    return f"labels {len(labels)}, folds {counts} ({'as released' if ok else 'NOT the released v2 counts'})"


def prepare(name: str, data_dir: Path, check_only: bool, offline: bool) -> int:
    ds = DATASETS[name]
    dest = data_dir / ds.dest
    print(f"[{name}] source: {ds.source}\n[{name}] destination: {dest}")
    if not ds.files:
        print(f"[{name}] {ds.manual}\n[{name}] use: {ds.config}")
        return 0
    missing: list[File] = []
    status = 0
    for spec in ds.files:
        p = dest / spec.name
        if p.is_file():
            ok, msg = check_hash(p, spec)
            print(f"  {'ok ' if ok else 'BAD'} {p}  [{msg}]")
            status |= 0 if ok else 1
        else:
            missing.append(spec)
    required = [f for f in missing if not f.optional]
    if not check_only and not offline and missing:
        dest.mkdir(parents=True, exist_ok=True)
        if ds.archive and any(f.zip_member for f in required):
            if network_up(ds.archive):
                status |= _fetch_archive(ds, dest, required)
            else:
                print(f"  no network for {ds.archive}")
        for spec in [f for f in missing if f.url]:
            p = dest / spec.name
            if not network_up(spec.url):
                print(f"  no network for {spec.url}")
                continue
            try:
                print(f"  downloading {spec.url}")
                download(spec.url, p)
            except OSError as e:
                print(f"  download failed: {e}")
                continue
            ok, msg = check_hash(p, spec)
            print(f"  {'ok ' if ok else 'BAD'} {p}  [{msg}]")
            if not ok:
                p.unlink()
                status |= 1
    still = [f for f in ds.files if not (dest / f.name).is_file()]
    if still:
        print(f"[{name}] files still to place by hand:")
        for f in still:
            src = f" (a copy: {SHARED / ds.shared[f.name]})" if f.name in ds.shared else ""
            extra = f"  -- {f.note}" if f.note else ""
            print(f"  {'(optional) ' if f.optional else ''}{dest / f.name}{src}{extra}")
        print(f"[{name}] how: {ds.manual}")
        if any(not f.optional for f in still):
            status |= 2
    if ds.verify and all(
        (dest / f.name).is_file() for f in ds.files if f.name in ("data_folds.pkl", "humor_label_sdk.pkl")
    ):
        print(f"  content check: {globals()[ds.verify](dest)}")
    print(f"[{name}] use: {ds.config}")
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", nargs="?", choices=sorted(DATASETS))
    ap.add_argument(
        "--data-dir", type=Path, default=ROOT / "data", help="root of the data folder (paths.data_dir)"
    )
    ap.add_argument("--check", action="store_true", help="only verify the files in place; never download")
    ap.add_argument(
        "--offline", action="store_true", help="never touch the network; print what to place where"
    )
    ap.add_argument("--list", action="store_true", help="list the datasets")
    a = ap.parse_args(argv)
    if a.list or not a.name:
        for k, d in DATASETS.items():
            print(f"{k:9s} -> {a.data_dir / d.dest if d.dest else '(bundled)'}   {d.source}")
        return 0
    return prepare(a.name, a.data_dir.expanduser().resolve(), a.check, a.offline)


def _fetch_archive(ds: Dataset, dest: Path, wanted: list[File]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        z = Path(tmp) / "archive.zip"
        try:
            print(f"  downloading {ds.archive}")
            download(ds.archive, z, timeout=600)
            with zipfile.ZipFile(z) as zf:
                names = {Path(n).name: n for n in zf.namelist()}
                for f in wanted:
                    if f.name in names:
                        with zf.open(names[f.name]) as src, open(dest / f.name, "wb") as out:
                            shutil.copyfileobj(src, out, 1 << 20)
                        print(f"  extracted {dest / f.name}")
        except (OSError, zipfile.BadZipFile) as e:
            print(f"  archive download failed: {e}")
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

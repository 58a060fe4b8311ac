#!/usr/bin/env python
"""Sync or export offline W&B runs (``WANDB_MODE=offline`` writes ``<run folder>/wandb/offline-run-*``).

    python scripts/wandb_sync.py list   outputs/multirun/2026-11-21/18-40-00-123456   # what is there
    python scripts/wandb_sync.py sync   outputs/multirun/...  [--project P --entity E]  # upload (wandb sync)
    python scripts/wandb_sync.py export outputs/multirun/...  --out exported/          # no network: CSV/JSON

``export`` reads the runs' own transaction logs (``run-<id>.wandb``, a LevelDB-style log of protobuf records)
and writes, per run, ``history.csv`` (every logged step), ``summary.json``, ``config.json`` and ``run.json``
(id, name, group, tags, project) — so offline results can be inspected or tabulated without an account.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = b":W&B"


def offline_runs(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("offline-run-*") if p.is_dir())


def read_records(path: Path) -> Iterator[bytes]:
    """Records of a W&B transaction log: 7-byte file header, 32 KiB blocks, chunks ``crc32 | len | type``."""
    data = Path(path).read_bytes()
    if data[:4] != HEADER:
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:4]!r})")
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunk = data[pos : pos + length]
        pos += length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""
        elif kind == 0 and length == 0:  # zero padding to the end of the block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def parse_run(run_dir: Path) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    logs = list(run_dir.glob("run-*.wandb"))
    if not logs:
        raise ValueError(f"{run_dir}: no run-*.wandb file")
    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "history": []}
    for raw in read_records(logs[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {
                "id": r.run_id,
                "name": r.display_name,
                "group": r.run_group,
                "project": r.project,
                "entity": r.entity,
                "tags": list(r.tags),
                "job_type": r.job_type,
            }
            out["config"].update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            out["config"].update({_key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
    for row in out["history"]:  # the summary defaults to the last logged value of each key
        for k, v in row.items():
            if not k.startswith("_") and isinstance(v, (int, float)):
                out["summary"].setdefault(k, v)
    return out


def export(folder: Path, dest: Path) -> list[Path]:
    written = []
    for run_dir in offline_runs(folder):
        run = parse_run(run_dir)
        d = dest / (run["run"].get("id") or run_dir.name)
        d.mkdir(parents=True, exist_ok=True)
        for name in ("run", "config", "summary"):
            (d / f"{name}.json").write_text(json.dumps(run[name], indent=2, sort_keys=True, default=str))
        keys: list[str] = []
        for row in run["history"]:
            keys += [k for k in row if k not in keys]
        with (d / "history.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(run["history"])
        (d / "source.txt").write_text(str(run_dir) + "\n")
        written.append(d)
    return written


def sync(folder: Path, project: str | None, entity: str | None, dry_run: bool) -> int:
    exe = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    runs = offline_runs(folder)
    if not runs:
        print(f"error: no offline-run-* below {folder}", file=sys.stderr)
        return 2
    cmd = [
        exe,
        "sync",
        *(["--project", project] if project else []),
        *(["--entity", entity] if entity else []),
        *map(str, runs),
    ]
    print(" ".join(cmd))
    return 0 if dry_run else subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["list", "sync", "export"])
    ap.add_argument("folder", type=Path, help="a run or multirun folder (searched recursively)")
    ap.add_argument(
        "--out", type=Path, default=None, help="export: destination (default <folder>/wandb_export)"
    )
    ap.add_argument("--project", default=None)
    ap.add_argument("--entity", default=None)
    ap.add_argument("--dry-run", action="store_true", help="sync: print the command only")
    args = ap.parse_args(argv)
    if not args.folder.exists():
        print(f"error: {args.folder}: no such folder", file=sys.stderr)
        return 2
    if args.action == "list":
        for r in offline_runs(args.folder):
            info = parse_run(r)["run"]
            print(f"{r}  id={info.get('id')} group={info.get('group')!r} tags={info.get('tags')}")
        return 0
    if args.action == "sync":
        return sync(args.folder, args.project, args.entity, args.dry_run)
    dest = args.out or args.folder / "wandb_export"
    for d in export(args.folder, dest):
        print(f"exported {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The table a multirun ends with (``configs/hydra/default.yaml`` registers :class:`MultirunSummary`).

One row per job of the sweep folder: its number, the overrides that vary between jobs, and the selection metric
(the run's ``selection``, e.g. ``val/MAE``) on validation and test from the job's ``metrics.json``; a job without
``metrics.json`` is listed as failed. When ``seed`` varies, a second table groups the jobs by their other
overrides: mean ± sample std (ddof=1) over the seeds, and n. Printed and saved as ``<sweep dir>/summary.md``.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


def _overrides(job_dir: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    f = job_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return {}
    out = {}
    for line in OmegaConf.load(f):
        k, _, v = str(line).partition("=")
        out[k.lstrip("+~")] = v
    return out


def collect_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """``[{"job": n, "dir", "overrides", "metrics" (or None)}]`` for the numbered job folders of a sweep."""
    jobs = []
    for d in (
        sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name))
        if Path(sweep_dir).is_dir()
        else []
    ):
        if not (d.is_dir() and d.name.isdigit() and (d / ".hydra").is_dir()):
            continue
        m = d / "metrics.json"
        jobs.append(
            {
                "job": int(d.name),
                "dir": d,
                "overrides": _overrides(d),
                "metrics": json.loads(m.read_text()) if m.is_file() else None,
            }
        )
    return jobs


def _metric_name(jobs: list[dict[str, Any]]) -> str | None:
    for j in jobs:
        sel = str((j["metrics"] or {}).get("selection", ""))
        if sel.startswith("val/"):
            return sel.split()[0].split("/", 1)[1]
    return None


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _value(j: dict[str, Any], split: str, key: str | None) -> float | None:
    if j["metrics"] is None or key is None:
        return None
    v = (j["metrics"].get(split) or {}).get(key)
    return None if v is None else float(v)


def summary_tables(jobs: list[dict[str, Any]]) -> str:
    """Markdown: the per-job table, and the over-seeds table when ``seed`` varies."""
    if not jobs:
        return "no jobs"
    keys = sorted({k for j in jobs for k in j["overrides"]})
    varying = [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1]
    m = _metric_name(jobs)
    head = ["job", *varying, f"val {m}", f"test {m}", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for j in jobs:
        cells = [
            str(j["job"]),
            *(j["overrides"].get(k, "") for k in varying),
            _fmt(_value(j, "val", m)),
            _fmt(_value(j, "test", m)),
            "ok" if j["metrics"] else "failed",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    if "seed" in varying:
        others = [k for k in varying if k != "seed"]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for j in jobs:
            groups.setdefault(tuple(j["overrides"].get(k, "") for k in others), []).append(j)
        head = [*others, "n seeds", f"val {m} mean ± std", f"test {m} mean ± std"]
        lines = [
            "",
            "Over seeds (mean ± sample std, ddof=1; failed jobs left out):",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for g, js in groups.items():
            cells = list(g) + [str(sum(j["metrics"] is not None for j in js))]
            for split in ("val", "test"):
                vals = [v for v in (_value(j, split, m) for j in js) if v is not None]
                if not vals:
                    cells.append("—")
                elif len(vals) == 1:
                    cells.append(f"{vals[0]:.4f}")
                else:
                    cells.append(f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}")
            lines.append("| " + " | ".join(cells) + " |")
        out += "\n" + "\n".join(lines)
    return out


class MultirunSummary(Callback):
    """Hydra callback: at the end of a multirun, print the jobs' table and save it as ``summary.md``."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = collect_jobs(sweep_dir)
        if not jobs:
            return
        table = summary_tables(jobs)
        (sweep_dir / "summary.md").write_text(table + "\n")
        print(f"\nmultirun: {len(jobs)} jobs in {sweep_dir}\n{table}\nsaved: {sweep_dir / 'summary.md'}")

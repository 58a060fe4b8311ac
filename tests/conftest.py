"""Shared fixtures: compose the real configs in-process (Hydra compose API) with small, fast overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mmfusion.utils.runtime import compose_train_cfg  # also registers the config resolvers

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED = ROOT.parent / "shared" / "data"

# small synthetic data + short training for tests
FAST = [
    "data.n_train=256",
    "data.n_valid=64",
    "data.n_test=128",
    "data.seq_len=20",
    "data.min_len=5",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks=default",
    "~callbacks.model_summary",
    "~callbacks.early_stopping",
]

# the smallest synthetic data the CLI/workflow tests train on (each file adds its trainer/logger settings)
SMALL_DATA = ["data.n_train=64", "data.n_valid=32", "data.n_test=32", "data.seq_len=8", "data.min_len=3"]
# a one-epoch run through the real CLI (subprocess) on a little more data
CLI_TINY = [
    "data.n_train=128",
    "data.n_valid=32",
    "data.n_test=64",
    "data.seq_len=10",
    "data.min_len=3",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "~callbacks.model_summary",
]


def compose_cfg(overrides: list[str], tmp_path: Path, config_name: str = "train.yaml") -> DictConfig:
    return compose_train_cfg(overrides, tmp_path, config_name)


@pytest.fixture
def make_cfg(tmp_path):
    def _make(
        overrides: list[str] | None = None, fast: bool = True, config_name: str = "train.yaml"
    ) -> DictConfig:
        return compose_cfg((FAST if fast else []) + list(overrides or []), tmp_path, config_name)

    yield _make
    GlobalHydra.instance().clear()


def run_cli(
    args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root with the test's environment."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(autouse=True)
def _cpu_time_log(request):
    """With MMF_TEST_CPU_LOG=<file>, append each test's wall and CPU seconds (own + child processes): on a shared
    machine CPU time is the honest estimate of what the suite costs on 2 free cores."""
    path = os.environ.get("MMF_TEST_CPU_LOG")
    if not path:
        yield
        return
    import resource
    import time

    def cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    yield
    with open(path, "a") as f:
        f.write(f"{request.node.nodeid}\t{time.perf_counter() - t0:.2f}\t{cpu() - c0:.2f}\n")

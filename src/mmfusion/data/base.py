"""In-memory multimodal datasets and the datamodule base every ``data=`` config builds on.

Datasets that fit in memory are loaded once into tensors and indexed by whole batches (``__getitems__``), so a
batch costs one fancy-index per tensor, not one Python call per sample. Standard samplers (and Lightning's
``DistributedSampler`` under DDP) still drive the order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mmfusion.contract import TargetFacts
from mmfusion.errors import DataError

log = logging.getLogger(__name__)

Nested = Tensor | dict[str, "Nested"]


def _index(t: Nested, idx: Tensor) -> Nested:
    if isinstance(t, Mapping):
        return {k: _index(v, idx) for k, v in t.items()}
    return t[idx]


def _length(t: Nested) -> int:
    if isinstance(t, Mapping):
        return _length(next(iter(t.values())))
    return int(t.shape[0])


def passthrough_collate(batch: Any) -> Any:
    """``__getitems__`` already returns a collated batch."""
    return batch


class ArrayDataset(Dataset):
    """A split held as tensors: ``tensors`` is a (nested) dict with the batch layout of
    :mod:`mmfusion.contract` (``x``, ``lengths``, ``y``, optional ``tokens``/``corrupt``/...). ``index`` is added.
    """

    def __init__(self, tensors: dict[str, Nested], name: str = "split") -> None:
        n = {k: _length(v) for k, v in tensors.items()}
        if len(set(n.values())) != 1:
            raise DataError(f"{name}: all arrays must have the same number of samples, got {n}")
        self.n = next(iter(n.values()))
        if self.n == 0:
            raise DataError(
                f"{name}: the split is empty (0 samples); check the data files and the split names"
            )
        self.tensors = dict(tensors)
        self.tensors["index"] = torch.arange(self.n)
        self.name = name

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: list[int]) -> dict[str, Nested]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: _index(v, idx) for k, v in self.tensors.items()}

    def __getitem__(self, i: int) -> dict[str, Nested]:
        return self.__getitems__([i])


class SeededShuffleSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``: reproducible and resumable."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose position in the epoch is checkpointed.

    Lightning saves ``state_dict()`` of stateful train loaders in every checkpoint and calls ``load_state_dict``
    when it resumes mid-epoch; the next iteration then skips the batches already trained on, so that (with the
    epoch-seeded sampler) a resumed run sees exactly the batches of an uninterrupted one. Works per rank under
    DDP (every rank skips its own first ``k`` batches).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._skip = 0

    def __iter__(self):
        it = super().__iter__()
        skip, self._skip = self._skip, 0
        self._yielded = 0
        for _ in range(skip):
            next(it, None)
            self._yielded += 1
        for batch in it:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches": int(self._yielded)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        n = len(self)
        self._skip = int(state.get("batches", 0)) % n if n else 0


def to_tensor(a: np.ndarray | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return a.to(dtype) if isinstance(a, Tensor) else torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)


def sanitize(a: np.ndarray, name: str, report: dict[str, int] | None = None) -> np.ndarray:
    """Documented sanitising: NaN and +/-inf -> 0 (COVAREP contains -inf); values beyond float32 range are
    counted as overflow and also set to 0. Counts are added to ``report`` (logged once per dataset)."""
    a = np.asarray(a, dtype=np.float64)
    bad = ~np.isfinite(a)
    over = np.isfinite(a) & (np.abs(a) > np.finfo(np.float32).max)
    if report is not None:
        report[f"{name}: nan"] = report.get(f"{name}: nan", 0) + int(np.isnan(a).sum())
        report[f"{name}: inf"] = report.get(f"{name}: inf", 0) + int(np.isinf(a).sum())
        report[f"{name}: float32 overflow"] = report.get(f"{name}: float32 overflow", 0) + int(over.sum())
    if bad.any() or over.any():
        a = np.where(bad | over, 0.0, a)
    return a.astype(np.float32)


class MultimodalDataModule(pl.LightningDataModule):
    """Base of every datamodule. Subclasses implement :meth:`build` returning ``{"train", "valid", "test"}``
    :class:`ArrayDataset` s and set ``modalities`` / ``input_dims``; everything else is shared.

    Args:
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (``None``: ``max(batch_size, 256)``).
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        seed: seed of the training sampler's shuffling (resumable mid-epoch) and of the loader's generator.
    """

    modalities: tuple[str, ...] = ()
    num_outputs: int = 1  # size of the prediction the targets call for (a scalar score or label by default)

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or max(batch_size, 256))
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.seed = int(seed)
        self.splits: dict[str, ArrayDataset] | None = None
        self.input_dims: dict[str, int] = {}

    # -- to implement -------------------------------------------------------------------------------------------
    def build(self) -> dict[str, ArrayDataset]:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.build()
            for name in ("train", "valid", "test"):
                if name not in self.splits:
                    raise DataError(f"{type(self).__name__}: split {name!r} is missing")
            self.check_labels()
            log.info("%s: %s", type(self).__name__, {k: len(v) for k, v in self.splits.items()})

    def check_labels(self) -> None:
        """NaN/inf labels (``y``) in any split are a one-line DataError naming the datamodule, its file, the split
        and the first bad samples (a NaN label otherwise trains to a NaN loss without a word)."""
        source = getattr(self, "labels", None) or getattr(self, "path", None)
        where = f"{type(self).__name__}" + (f" ({source})" if isinstance(source, str) else "")
        for name, ds in (self.splits or {}).items():
            y = getattr(ds, "tensors", {}).get("y")
            if not isinstance(y, Tensor) or not y.is_floating_point():
                continue
            bad = ~torch.isfinite(y.reshape(len(y), -1)).all(dim=1)
            if bad.any():
                rows = bad.nonzero().flatten()[:5].tolist()
                raise DataError(
                    f"{where}: {int(bad.sum())} non-finite (NaN/inf) label(s) in the {name} split, "
                    f"samples {rows}; every label must be a finite number (fix or drop those rows)"
                )

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments a model needs from the data (passed when the model is built)."""
        self.setup()
        return {"input_dims": dict(self.input_dims)}

    def target_facts(self) -> TargetFacts:
        """What the targets call for. ``build.py`` configures the task from these facts (the data never sees the
        task, and the model's ``output_dim`` comes from the task)."""
        self.setup()
        return TargetFacts(num_outputs=int(self.num_outputs))

    def info(self) -> dict[str, Any]:
        """Data facts a plug-in may use (``ModelInfo.data``)."""
        self.setup()
        return {
            "modalities": self.modalities,
            "input_dims": dict(self.input_dims),
            "n_train": len(self.splits["train"]),
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        ds = self.splits[split]
        # the train loader is resumable mid-epoch; a private generator keeps the loader's base-seed draw off the
        # global RNG, so checkpointed RNG states alone determine dropout etc. after a resume
        cls = ResumableDataLoader if shuffle else DataLoader
        return cls(
            ds,
            generator=torch.Generator().manual_seed(self.seed),
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            sampler=SeededShuffleSampler(len(ds), self.seed) if shuffle else None,
            shuffle=False if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=passthrough_collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

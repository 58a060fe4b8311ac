"""``hparams_search=...``: the Optuna sweeper, made resumable by its storage
(``hydra.sweeper._target_: hydra_plugins.mmfusion_sweeper.resumable_optuna.ResumableOptunaSweeper``).

Hydra's Optuna sweeper (hydra-optuna-sweeper 1.3, Optuna 2.10) already continues a study found in its storage
(``load_if_exists``) but always runs ``n_trials`` MORE trials. :class:`ResumableOptunaSweeper` reads
``n_trials`` as the number of finished trials (complete, pruned or failed) the study should have: rerunning the
same command after an interruption runs only the missing ones, and a finished study runs nothing. Trials left
``RUNNING`` by a killed sweep are not counted, so they are redone.

``storage`` may be given as ``${mmf_sqlite:<path>}`` (resolver in :mod:`mmfusion.utils.runtime`): it creates
the folder and returns ``sqlite:///<path>`` (SQLite cannot create a missing folder, and the sweeper opens the storage before Hydra
creates any output folder).
"""

from __future__ import annotations

import logging
from typing import Any

try:  # optional extra: without hydra-optuna-sweeper this plug-in is simply absent
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover
    OptunaSweeper = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def finished_trials(storage: str | None, study_name: str | None) -> int:
    """Number of finished trials of ``study_name`` in ``storage`` (0 if there is no such study)."""
    if not storage or not study_name:
        return 0
    import optuna

    names = {s.study_name for s in optuna.study.get_all_study_summaries(storage=storage)}
    if study_name not in names:
        return 0
    study = optuna.load_study(study_name=study_name, storage=storage)
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """Optuna sweeper where ``n_trials`` is the study's target number of finished trials (see module doc)."""

        def sweep(self, arguments: list[str]) -> Any:
            impl = self.sweeper
            storage = impl.storage if isinstance(impl.storage, str) else None
            done = finished_trials(storage, impl.study_name)
            if done:
                left = max(0, int(impl.n_trials) - done)
                log.info("study %r has %d finished trials: running %d more to reach n_trials=%d", impl.study_name, done,
                         left, impl.n_trials)
                impl.n_trials = left
            try:
                return impl.sweep(arguments)
            except ValueError as e:  # every trial failed: the study has no best trial (the trials are stored)
                if "No trials are completed yet" not in str(e):
                    raise
                log.error("study %r: no trial completed (all failed); see the jobs' logs", impl.study_name)
                return None

"""``hparams_search=...``: mmfusion's own Optuna sweeper (Optuna >= 4) for Hydra, selected by
``hydra/sweeper: mmf_optuna`` (configs/hydra/sweeper/mmf_optuna.yaml).

Each trial is one Hydra job (``train.py`` with the trial's overrides), launched by the configured launcher; the
job's return value (``optimized_metric``) is told to the study. What it adds to a plain ask/tell loop:

* **Study name** (unless ``study_name`` is given): the search config plus the chosen ``model``, ``data`` and
  ``reg``, e.g. ``optuna_tpe-model=mfn-data=mosi-reg=none``, so unrelated searches never share a study.
* **Resume**: the study lives in ``storage`` (SQLite by default); ``n_trials`` is the number of finished trials
  (complete, pruned or failed) the study should hold, so rerunning the same command runs only the missing ones,
  and a finished study prints ``study <name> complete, N trials, best ...`` and runs nothing.
* **Killed sweeps**: a trial left ``RUNNING`` by a process of this host that no longer exists is marked failed
  (system attr ``mmf_stale``, not counted) and its parameters are enqueued, so it is redone first.
* **Failures**: a job that raises (e.g. :class:`mmfusion.errors.DivergenceError`), returns nothing or a
  non-finite value is recorded ``FAIL`` and the sweep goes on (``max_failure_rate``).
* **Pruning**: ``pruner`` (any ``optuna.pruners`` class) plus the :class:`mmfusion.callbacks.pruning.OptunaPruning`
  callback, which reports the per-epoch validation metric; with the in-process (basic) launcher only.
* **Search space**: ``params`` (Hydra's override grammar: ``interval(a,b)``, ``tag(log, interval(a,b))``,
  ``int(interval(a,b))``, ``choice(...)``, ``a,b,c``, ``range(a,b[,step])`` with Python's exclusive stop) plus
  ``params_by_choice.<group>.<option>`` searched only when that option is chosen (a dropout key that only some
  models have); sweep overrides on the command line extend or replace ``params``. Every searched key must exist
  in the composed config (``+key`` adds one): checked before any trial, one line and exit 2 otherwise.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from mmfusion.errors import ConfigError, MMFusionError

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
STALE_ATTR = "mmf_stale"
NAME_GROUPS = ("model", "data", "reg")


# -- search space ----------------------------------------------------------------------------------------------
def distribution(override: Override) -> Any:
    """The Optuna distribution of a sweep override, or the fixed value (str) of a plain override."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    key = override.get_key_element()
    value = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        start, stop, step = value.start, value.stop, value.step
        if any(isinstance(v, float) for v in (start, stop, step)):
            raise ConfigError(
                f"hydra.sweeper.params.{key}: range() takes integers, got {override.input_line!r}; "
                "use interval(a,b) for a float range"
            )
        if value.shuffle:
            return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        return IntDistribution(int(start), int(stop) - int(step), step=int(step))  # Python's exclusive stop
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ConfigError(
        f"hydra.sweeper.params.{key}: {override.input_line!r} is not a search space Optuna can sample"
    )


def _key(override: Override) -> str:
    return override.get_key_element()


def _plain_key(key: str) -> str:
    return key.lstrip("+~")


def _choice_value(choices: Any, group: str) -> str | None:
    v = choices.get(group) if choices is not None else None
    if v is None:
        return None
    if isinstance(v, ListConfig | list | tuple):
        return "+".join(str(x) for x in v) or "none"
    return str(v)


def study_name_for(search: str | None, choices: Any, cli_choices: dict[str, str]) -> str:
    """``<search>-model=<m>-data=<d>-reg=<r>`` (command-line group choices, e.g. a swept ``model=a,b``, win)."""
    parts = [search or "search"]
    for g in NAME_GROUPS:
        v = cli_choices.get(g) or _choice_value(choices, g)
        if v is not None:
            parts.append(f"{g}={v}")
    return re.sub(r"[^A-Za-z0-9_.,=+-]+", "_", "-".join(parts))


# -- stale trials ----------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study: Any) -> int:
    """Mark ``RUNNING`` trials whose sweep process (on this host) is gone as failed + ``mmf_stale`` and enqueue
    their parameters so they are redone; returns how many. A trial of another host is left alone."""
    import optuna

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, pid = t.system_attrs.get("mmf_host"), t.system_attrs.get("mmf_pid")
        if host not in (None, socket.gethostname()) or (pid is not None and _pid_alive(int(pid))):
            continue
        study._storage.set_trial_system_attr(t._trial_id, STALE_ATTR, True)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if t.params:
            study.enqueue_trial(dict(t.params), user_attrs={"mmf_redo_of": t.number})
        log.warning(
            "trial %d was left RUNNING by a killed sweep: marked failed, its parameters are redone", t.number
        )
        n += 1
    return n


def finished_trials(study: Any) -> int:
    """Finished trials that count towards ``n_trials`` (complete, pruned, failed; not the stale ones)."""
    return sum(
        t.state.name in FINISHED and not t.system_attrs.get(STALE_ATTR)
        for t in study.get_trials(deepcopy=False)
    )


def best_line(study: Any, metric: str) -> str:
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return "no completed trial (all failed or pruned; see the jobs' logs)"
    b = study.best_trial
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b.params.items())
    return f"best {metric} = {b.value:.6g} (trial {b.number}: {params})"


class ResumableOptunaSweeper(Sweeper):
    """Hydra sweeper running an Optuna study (see module doc). Args mirror configs/hydra/sweeper/mmf_optuna.yaml."""

    def __init__(
        self,
        sampler: Any = None,
        pruner: Any = None,
        direction: str = "minimize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 1.0,
        params: Any = None,
        params_by_choice: Any = None,
        search_name: str | None = None,
        metric: str | None = None,
    ) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.direction = str(direction)
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        self.params = dict(params or {})
        self.params_by_choice = params_by_choice or {}
        self.search_name, self.metric = search_name, metric
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except MMFusionError as e:  # bad search config: one line, exit 2, before any trial
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    # -- helpers -------------------------------------------------------------------------------------------------
    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str], dict[str, str]]:
        """(distributions, fixed overrides, command-line group choices)."""
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        choices = self.config.hydra.runtime.choices
        cfg_params = dict(self.params)
        for group, by_option in dict(self.params_by_choice).items():
            opt = _choice_value(choices, group)
            extra = (by_option or {}).get(opt) if opt is not None else None
            if extra:
                cfg_params.update(dict(extra))
            elif by_option:
                log.info(
                    "params_by_choice.%s has no entry for %s=%s: only the common params are searched",
                    group,
                    group,
                    opt,
                )
        space: dict[str, Any] = {}
        for o in parser.parse_overrides([f"{k}={v}" for k, v in cfg_params.items()]):
            space[_key(o)] = distribution(o)
        fixed: list[str] = []
        cli_choices: dict[str, str] = {}
        for o in parser.parse_overrides(arguments):
            k = _key(o)
            if k in NAME_GROUPS:
                cli_choices[k] = o.get_value_element_as_str()
            if o.is_sweep_override():
                space[k] = distribution(o)
            else:
                space.pop(k, None)
                fixed.append(o.input_line)
        dists = {k: v for k, v in space.items() if not isinstance(v, str)}
        fixed = [f"{k}={v}" for k, v in space.items() if isinstance(v, str)] + fixed
        self._check_keys(dists)
        return dists, fixed, cli_choices

    def _check_keys(self, dists: dict[str, Any]) -> None:
        """Every searched key exists in the composed run config (``+key`` / ``++key`` add one)."""
        assert self.config is not None
        run_cfg = self.config
        marker = object()
        for key in dists:
            if key.startswith("+") or key.startswith("hydra.") or "/" in key:
                continue
            if OmegaConf.select(run_cfg, key, default=marker, throw_on_missing=False) is marker:
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(run_cfg, parent) if parent else run_cfg
                near = difflib.get_close_matches(
                    leaf, list(node.keys()) if isinstance(node, DictConfig) else [], n=1
                )
                ch = self.config.hydra.runtime.choices
                group = key.split(".")[0]
                where = f" with {group}={_choice_value(ch, group)}" if _choice_value(ch, group) else ""
                hint = f" (did you mean {parent + '.' if parent else ''}{near[0]}?)" if near else ""
                raise ConfigError(
                    f"hydra.sweeper.params: {key} is not a config key{where}{hint}; search it per "
                    f"option under hydra.sweeper.params_by_choice.{group}, or add it with +{key}"
                )

    def _make_study(self, name: str, dists: dict[str, Any]) -> Any:
        import optuna
        from hydra.utils import instantiate

        sampler = None
        if self.sampler_cfg:
            scfg = OmegaConf.to_container(OmegaConf.create(self.sampler_cfg), resolve=True)
            if str(scfg.get("_target_", "")).endswith("GridSampler") and not scfg.get("search_space"):
                grid = {}
                for k, d in dists.items():
                    if not isinstance(d, optuna.distributions.CategoricalDistribution):
                        raise ConfigError(
                            f"hydra.sweeper.params.{k}: the grid sampler needs choice(...) values, "
                            f"got {type(d).__name__}"
                        )
                    grid[k] = list(d.choices)
                scfg["search_space"] = grid
            sampler = instantiate(scfg)
        pruner = (
            instantiate(OmegaConf.to_container(OmegaConf.create(self.pruner_cfg), resolve=True))
            if self.pruner_cfg
            else optuna.pruners.NopPruner()
        )
        return optuna.create_study(
            study_name=name,
            storage=self.storage,
            sampler=sampler,
            pruner=pruner,
            direction=self.direction,
            load_if_exists=True,
        )

    def _sweep(self, arguments: list[str]) -> Any:
        import optuna

        assert self.config is not None and self.launcher is not None
        dists, fixed, cli_choices = self._search_space(arguments)
        if not dists:
            raise ConfigError("hydra.sweeper.params: nothing to search (no interval/choice/range parameter)")
        choices = self.config.hydra.runtime.choices
        search = self.search_name or _choice_value(choices, "hparams_search")
        name = self.study_name or study_name_for(search, choices, cli_choices)
        metric = self.metric or "objective"
        study = self._make_study(name, dists)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        fail_stale_trials(study)
        done = finished_trials(study)
        target = self.n_trials
        grid = getattr(study.sampler, "_all_grids", None)
        if grid is not None and len(grid) < target:
            log.info("n_trials=%d > the grid's %d points: running the grid once", target, len(grid))
            target = len(grid)
        left = max(0, target - done)
        where = f" in {self.storage}" if self.storage else ""
        print(
            f"[sweep] study {name}{where}: {done} finished trials, running {left} to reach n_trials={target}"
        )
        in_process = type(self.launcher).__name__ == "BasicLauncher" and self.n_jobs == 1
        if self.pruner_cfg and not in_process:
            log.warning("pruning needs the basic launcher with n_jobs=1: trials run to the end")
        from mmfusion.callbacks import pruning

        n_fail = n_run = 0
        returns = []
        while left > 0:
            batch_n = min(self.n_jobs, left)
            trials = [study.ask(fixed_distributions=dists) for _ in range(batch_n)]
            for t in trials:
                study._storage.set_trial_system_attr(t._trial_id, "mmf_host", socket.gethostname())
                study._storage.set_trial_system_attr(t._trial_id, "mmf_pid", os.getpid())
            overrides = [[*fixed, *(f"{k}={_fmt(v)}" for k, v in t.params.items())] for t in trials]
            self.validate_batch_is_legal(overrides)
            pruning.set_trial(trials[0] if in_process and self.pruner_cfg else None)
            try:
                results = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            finally:
                pruning.set_trial(None)
            for t, r in zip(trials, results):
                state, value = _outcome(r)
                n_run += 1
                if state == "COMPLETE":
                    _tell(study, t, values=value)
                elif state == "PRUNED":
                    _tell(study, t, state=optuna.trial.TrialState.PRUNED)
                else:
                    n_fail += 1
                    _tell(study, t, state=optuna.trial.TrialState.FAIL)
                    log.warning("trial %d failed: %s", t.number, value)
            returns.append(results)
            left -= batch_n
            if n_run and n_fail / n_run > self.max_failure_rate:
                raise RuntimeError(
                    f"study {name}: {n_fail} of {n_run} trials failed "
                    f"(> max_failure_rate={self.max_failure_rate})"
                )
        self._report(study, name, metric, sweep_dir)
        return returns

    def _report(self, study: Any, name: str, metric: str, sweep_dir: Path) -> None:
        import optuna

        n = finished_trials(study)
        line = best_line(study, metric)
        print(f"[sweep] study {name} complete, {n} trials, {line}")
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        out = {
            "study_name": name,
            "storage": self.storage,
            "n_trials": n,
            "direction": self.direction,
            "metric": metric,
        }
        if done:
            out.update(
                best_value=float(study.best_value),
                best_trial=int(study.best_trial.number),
                best_params=dict(study.best_params),
            )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(out), sweep_dir / "optimization_results.yaml")


def _tell(study: Any, trial: Any, **kw: Any) -> None:
    """``study.tell``; the grid sampler calls ``study.stop()`` once the grid is exhausted, which Optuna allows
    only inside ``optimize`` (the trial's state is stored before that error)."""
    try:
        study.tell(trial, **kw)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def _fmt(v: Any) -> str:
    return "null" if v is None else str(v)


def _outcome(ret: Any) -> tuple[str, Any]:
    """(state, value or reason) of a finished Hydra job."""
    import optuna

    try:
        value = ret.return_value
    except optuna.TrialPruned as e:
        return "PRUNED", e
    except Exception as e:  # noqa: BLE001 - a failed job is a failed trial; the sweep goes on
        return "FAIL", f"{type(e).__name__}: {e}"
    if value is None:
        return "FAIL", "the job returned no value (optimized_metric unset?)"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "FAIL", f"the job returned {value!r}, not a number"
    if not math.isfinite(value):
        return "FAIL", f"non-finite objective {value}"
    return "COMPLETE", value

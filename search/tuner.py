"""Tuner assembly: Optuna (define-by-run from the space) proposes, ASHA stops, Ray runs.

Two Ray/Optuna traps handled here (see stack-notes):
- metric and mode go on the searcher AND on TuneConfig, not on ASHA (multi-objective: on the
  searcher and on ASHA only);
- OptunaSearch tells Optuna a trial ASHA stopped is COMPLETE with its low-fidelity value; we
  tell it PRUNED instead, so TPE does not learn from half-trained numbers.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from search.local import LocalSampler
from search.plan import SearchPlan
from search.trainable import train_recipe
from search.vocab import FAILURE_REASON, ORPHANED, Scheduler
from spaces import RECORD_KEY, RungStop, SearchAlg
from trainables.setting.prepare import Shared
from trainables.vocab import high_key, low_key

__all__ = ["PruneAwareOptunaSearch", "build_tuner", "fail_orphans", "make_sampler",
           "restore_tuner"]


class PruneAwareOptunaSearch(OptunaSearch):
    """Tells Optuna that trials ASHA stopped before max_t were PRUNED, not COMPLETE."""

    def __init__(self, *args: Any, max_t: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t

    def _live(self, trial_id: str) -> bool:
        """Whether Optuna can still take this trial's results. After a killed driver resumes,
        the study (written at once) can be ahead of the searcher's checkpoint (written every
        so often): a trial may have finished there already, or be unknown to the searcher."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return False
        assert self._ot_study is not None
        state = self._ot_study._storage.get_trial(ot_trial._trial_id).state
        if state.is_finished():
            self._completed_trials.add(trial_id)
            return False
        return True

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._live(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if not self._live(trial_id):
            return
        iterations = (result or {}).get("training_iteration", self._max_t)
        if result and FAILURE_REASON in result:
            assert self._ot_study is not None  # a failure the trial reported: FAIL, no value
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        if result and not error and iterations < self._max_t:
            ot_trial = self._ot_trials[trial_id]
            if not isinstance(self.metric, list):  # Optuna keeps no curves for multi-objective
                ot_trial.report(result[self.metric], iterations)
            assert self._ot_study is not None  # set up by set_search_properties
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


def fail_orphans(storage: str, study_name: str) -> int:
    """After a search: Optuna trials still RUNNING were asked by a driver that was killed and
    never reached Optuna again (the resumed searcher did not know them). They are told FAIL,
    with the reason as a user attribute, instead of staying RUNNING forever."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for frozen in running:
        optuna.trial.Trial(study, frozen._trial_id).set_user_attr(
            ORPHANED, "asked by a driver that was killed; its results never reached Optuna")
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


class _NSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II that Tune can pickle into its experiment state: Optuna 5.1's genetic samplers
    hold a thread lock (not picklable), made anew when the sampler is restored."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


class StartupCountsPruned(optuna.samplers.GPSampler):
    """Optuna's GP sampler whose random start-up ends after `startup` *finished* trials, pruned
    ones included, as TPE's does. Optuna's own count is completed trials only, and ASHA prunes
    most proposals, so in a 16-trial search on `mid` the stock GP sampler never fitted its model:
    it was random search digit for digit ("All four samplers under the margin scoring",
    docs/speed.md). The model still learns from completed trials only."""

    def __init__(self, *, seed: int, startup: int) -> None:
        super().__init__(seed=seed, n_startup_trials=0, warn_independent_sampling=False)
        self.startup = startup

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.PRUNED))
        completed = sum(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
        if len(finished) < self.startup or completed < 2:  # a GP needs two points to fit
            return {}
        return super().sample_relative(study, trial, search_space)


def make_sampler(alg: SearchAlg, *, seed: int, startup: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler for `alg`; the model-based ones sample `startup` trials at random
    first (the enqueued defaults, baselines and warm-start points count among them)."""
    if alg == SearchAlg.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    if alg == SearchAlg.NSGA2:
        return _NSGAII(seed=seed)
    if alg.is_local:  # next to the incumbent from the first finished trial on
        return LocalSampler(seed=seed, cover=alg == SearchAlg.LOCAL_COVER,
                            stack=alg == SearchAlg.LOCAL_STACK)
    if alg == SearchAlg.GP:
        return StartupCountsPruned(seed=seed, startup=startup)
    # constant_liar: parallel proposals do not all pile onto the same promising region
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True,
                                      multivariate=alg == SearchAlg.TPE_MV,
                                      group=alg == SearchAlg.TPE_MV)


def make_searcher(plan: SearchPlan) -> ConcurrencyLimiter:
    space = plan.space
    searcher = PruneAwareOptunaSearch(
        # define-by-run: the space suggests each trial's values and builds its record
        # the study holds the space's defaults, its baselines and any warm start already
        # (search/warmstart.py enqueues them, each marked with its origin)
        space.sample, metric=plan.metrics(), mode=plan.modes(),
        sampler=make_sampler(plan.search_alg, seed=plan.seed, startup=plan.startup_trials),
        study_name=plan.name, storage=optuna.storages.RDBStorage(plan.optuna_storage),
        max_t=space.max_evaluations)
    return ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)


class ErrorsInState(TrialScheduler):
    """A trial whose actor died is saved as ERROR in Tune's experiment state.

    Ray 2.60's TuneController drops the actor of a dead worker before it handles the failed
    task, so `_schedule_trial_stop` sets ERROR and returns before it queues the trial for the
    next snapshot: where a snapshot was taken after the trial's last result, the state on
    disk keeps it RUNNING for good, and Ray's record of the search disagrees with Optuna's and
    MLflow's. The scheduler hears of the error first, with the controller: queue it here (a
    private method: Ray is pinned at 2.60.0); the snapshot reads the trial's status when it
    is written, after the ERROR."""

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        tune_controller._mark_trial_to_checkpoint(trial)
        super().on_trial_error(tune_controller, trial)


class Fifo(ErrorsInState, FIFOScheduler):
    """Tune's FIFO scheduler, crashed trials saved as ERROR (ErrorsInState)."""


def make_scheduler(plan: SearchPlan) -> TrialScheduler:
    if plan.scheduler == Scheduler.NONE:
        return Fifo()
    settings = plan.space.search
    # Single objective: ASHA takes metric/mode from TuneConfig (Ray refuses them twice);
    # multi-objective: TuneConfig has none, so ASHA gets the held-out objective itself.
    own = plan.multi_objective
    return BaselinesToTheEnd(baselines_in_rungs=settings.baselines_in_rungs,
                             rung_stop=settings.rung_stop,
                             time_attr="training_iteration", max_t=plan.space.max_evaluations,
                             grace_period=settings.grace_period,
                             reduction_factor=settings.reduction_factor,
                             metric=plan.objective if own else None,
                             mode=plan.mode.value if own else None)


class BaselinesToTheEnd(ErrorsInState, ASHAScheduler):
    """ASHA that never stops a baseline early: the recipes every other one is compared with
    must run to the end. With `baselines_in_rungs` (the default) their results still set the
    rungs' cutoffs; without it a baseline bypasses the rungs, so the searched recipes compete
    for the rest of the budget among themselves and the default recipe, not against
    references that can never be the winner. With `rung_stop` interval, a searched recipe
    below a rung's cutoff is stopped only when its interval's optimistic end is below it too
    (spaces.RungStop)."""

    def __init__(self, *, baselines_in_rungs: bool = True,
                 rung_stop: RungStop = RungStop.QUANTILE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._baselines_in_rungs = baselines_in_rungs
        self._rung_stop = RungStop(rung_stop)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if not self._baselines_in_rungs and _baseline(trial):
            return TrialScheduler.CONTINUE
        cutoff = self._cutoff(trial, result)  # before super() records this result
        action: str = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.STOP or result.get(self._time_attr, 0) >= self._max_t:
            return action
        if _baseline(trial) or (cutoff is not None and self._optimistic(result) >= cutoff):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action

    def _cutoff(self, trial: Any, result: dict[str, Any]) -> float | None:
        """The cutoff of the rung this result reaches (in ASHA's sign: higher is better);
        None under the quantile rule or where the result reaches no new rung."""
        bracket = self._trial_info.get(trial.trial_id)
        if self._rung_stop != RungStop.INTERVAL or bracket is None \
                or self._time_attr not in result:
            return None
        for milestone, recorded in bracket._rungs:  # highest milestone first, as ASHA's own
            if result[self._time_attr] >= milestone and trial.trial_id not in recorded:
                cutoff = bracket.cutoff(recorded)
                return None if cutoff is None else float(cutoff)
        return None

    def _optimistic(self, result: dict[str, Any]) -> float:
        """The result's 95% interval end in the better direction (ASHA's sign); without an
        interval, its value."""
        metric, sign = str(self._metric), float(self._metric_op or 1.0)
        end = high_key(metric) if sign > 0 else low_key(metric)
        return sign * float(result.get(end, result.get(metric, -sign * math.inf)))

    def on_trial_complete(self, tune_controller: Any, trial: Any,
                          result: dict[str, Any]) -> None:
        if not self._baselines_in_rungs and _baseline(trial):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


def _baseline(trial: Any) -> bool:
    record = trial.config.get(RECORD_KEY)
    return record is not None and bool(record.baseline)


def _trainable(plan: SearchPlan, shared: Shared, resources: dict[str, float]) -> Any:
    gpus = resources.get("gpu", 0.0)
    fn = tune.with_parameters(train_recipe, space=plan.space, shared=shared,
                              cpus=resources["cpu"],
                              gpu_memory_fraction=gpus if 0 < gpus < 1 else 1.0)
    return tune.with_resources(fn, resources)


def _run_config(plan: SearchPlan, callbacks: list[Any]) -> tune.RunConfig:
    return tune.RunConfig(
        name=plan.name, storage_path=plan.storage_path, callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        # keep the latest two: the final one holds the exported defended model
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))


def build_tuner(plan: SearchPlan, shared: Shared, resources: dict[str, float],
                callbacks: list[Any]) -> tune.Tuner:
    tune_config = tune.TuneConfig(
        search_alg=make_searcher(plan), scheduler=make_scheduler(plan),
        num_samples=plan.num_samples,
        # single objective: metric/mode here too (ASHA and the searcher both need them);
        # multi-objective: the scheduler carries its own single metric
        metric=None if plan.multi_objective else plan.objective,
        mode=None if plan.multi_objective else plan.mode.value,
        # a new trial runs in the worker process of one that ended (same resources): a fresh
        # worker costs seconds (torch, the trainables, the shared data) per trial, 40% of the
        # smoke search; trials seed everything from their config, so results are unchanged
        reuse_actors=True)
    return tune.Tuner(_trainable(plan, shared, resources), tune_config=tune_config,
                      run_config=_run_config(plan, callbacks))


def restore_tuner(plan: SearchPlan, shared: Shared, resources: dict[str, float],
                  path: str) -> tune.Tuner:
    """Resumes a search: unfinished trials continue from their checkpoints, errored ones retry.

    The restored run keeps its callbacks (Tune pickled them with the experiment state).
    """
    return tune.Tuner.restore(path, trainable=_trainable(plan, shared, resources),
                              resume_unfinished=True, resume_errored=True)

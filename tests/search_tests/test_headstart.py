"""search/headstart.py: a completed baseline's final tasks wait for the search's tail."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

import spaces
from search import headstart
from spaces import RECORD_KEY, TrialRecord

MAX_T = 3


@dataclass
class _Trial:  # the parts of a Tune trial the callback reads
    status: str = "RUNNING"
    config: dict[str, Any] = field(default_factory=dict)
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None


class _Tasks:
    submitted: ClassVar[list[tuple[str | None, int]]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def submit(self, record: TrialRecord, payload: bytes | None, *, keep: bool,
               own: bytes | None = None) -> str:
        _Tasks.submitted.append((record.baseline, record.config.seed))
        return f"ref-{record.baseline}-{record.config.seed}"


@pytest.fixture
def head(monkeypatch: pytest.MonkeyPatch) -> headstart.HeadStart:
    monkeypatch.setattr(headstart, "Tasks", _Tasks)
    _Tasks.submitted = []
    shared: Any = object()  # handed to Tasks, which is replaced
    return headstart.HeadStart(shared=shared, resources={"cpu": 1}, seeds=[0, 1],
                               strength=2.0, max_t=MAX_T, trials=4)


def _smoke() -> spaces.Space:
    return spaces.load("smoke")


def _baseline(name: str) -> _Trial:
    record = _smoke().baseline_record(name).with_config(seed=0)
    return _Trial(status="TERMINATED", config={RECORD_KEY: record},
                  last_result={"training_iteration": MAX_T})


def test_tasks_wait_until_every_trial_started_and_none_waits(head: headstart.HeadStart
                                                             ) -> None:
    done = _baseline("pgd-at")
    trials = [done, _Trial(), _Trial(status="PENDING")]
    head.on_trial_complete(1, trials, done)
    assert _Tasks.submitted == [] and head.started == {}  # the freed core is the next trial's
    trials.append(_Trial(status="PENDING"))  # every trial created, two still wait
    head.on_step_begin(2, trials)
    assert _Tasks.submitted == []
    trials[2].status = "RUNNING"
    trials[3].status = "RUNNING"  # the tail: a core that frees up is the tasks'
    head.on_step_begin(3, trials)
    assert _Tasks.submitted == [("pgd-at", 0), ("pgd-at", 1)]
    assert set(head.started) == {("pgd-at", 0), ("pgd-at", 1)}
    head.on_step_begin(4, trials)  # nothing twice
    assert len(_Tasks.submitted) == 2


def test_the_final_stage_starts_what_a_short_search_left(head: headstart.HeadStart) -> None:
    done = _baseline("trades")
    head.on_trial_complete(1, [done], done)  # the search ended before its fourth trial
    assert _Tasks.submitted == []
    started = head.flush()
    assert set(started) == {("trades", 0), ("trades", 1)}
    assert head.waiting == [] and head.flush() == started


def test_only_completed_baselines_start_tasks(head: headstart.HeadStart) -> None:
    stopped = _baseline("pgd-at")
    stopped.last_result = {"training_iteration": 1}  # ASHA stopped it
    searched = _Trial(status="TERMINATED", last_result={"training_iteration": MAX_T},
                      config={RECORD_KEY: _smoke().record(_smoke().default_values())})
    head.on_trial_complete(1, [stopped, searched], stopped)
    head.on_trial_complete(1, [stopped, searched], searched)
    assert head.flush() == {} and _Tasks.submitted == []


def test_a_pickled_head_start_resumes_empty_and_an_older_one_too(head: headstart.HeadStart
                                                                 ) -> None:
    """Tune pickles callbacks into its experiment state and restores them on --resume: no
    Ray refs or waiting models there, and a state written before `waiting` existed loads."""
    done = _baseline("pgd-at")
    head.on_trial_complete(1, [done], done)
    assert head.waiting
    restored = pickle.loads(pickle.dumps(head))
    assert restored.waiting == [] and restored.started == {} and restored.shared is None
    older = {k: v for k, v in head.__getstate__().items() if k not in ("waiting", "trials")}
    revived = headstart.HeadStart.__new__(headstart.HeadStart)
    revived.__setstate__(older)
    revived.on_step_begin(1, [done])  # nothing waits, nothing fails
    assert revived.flush() == {}

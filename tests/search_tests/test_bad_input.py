"""Every kind of bad input we know of: one `error:` line naming the value, exit code 2, no
traceback, Ray never started and nothing created (no results folder, no MLflow store, no
Optuna study, no cache). In-process, so that the 80-odd kinds cost seconds, not minutes."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import psutil
import pytest
import torch

from search import final, report, run, trial
from tests.processes import start_mlflow_server, stop_process
from trainables.defense.export import load_defended_model, save_defended_model
from trainables.defense.models import DefendedModel, build_arch
from trainables.errors import ModelFileError

Main = Callable[[Sequence[str] | None], int]
RUN, TRIAL, REPORT, FINAL = run.main, trial.main, report.main, final.main

S = ["--space", "smoke"]
R = ["--resume", "--storage-path", "{tmp}/resumable", "--name"]
CASES: list[tuple[str, Main, list[str], str]] = [
    # ---- spaces: which file, and what it holds
    ("unknown space", RUN, ["--space", "nope"], "unknown space 'nope'"),
    ("space is a folder", RUN, ["--space", "{folder}"], "is a folder, not a space file"),
    ("space file missing", RUN, ["--space", "{tmp}/none.yaml"], "does not exist"),
    ("space not YAML", RUN, ["--space", "{bad_yaml}"], "is not valid YAML at line"),
    ("space not a mapping", RUN, ["--space", "{list_yaml}"], "must hold a mapping"),
    ("space extends itself", RUN, ["--space", "{extends_loop_yaml}"],
     "its extends chain loops ({extends_loop_yaml} -> {extends_loop_yaml})"),
    ("space: billion laughs", RUN, ["--space", "{laughs_yaml}"],
     "expands to more than 100,000 values"),
    ("space: nested too deep", RUN, ["--space", "{deep_yaml}"], "nests deeper than 32 levels"),
    ("space: an alias of itself", RUN, ["--space", "{loop_yaml}"], "refers to itself"),
    ("space: a key given twice", RUN, ["--space", "{twice_yaml}"],
     "key 'heldout' appears twice (lines 4 and 5)"),
    ("space: not UTF-8", RUN, ["--space", "{latin1_yaml}"], "is not UTF-8 text (byte 0xe9"),
    ("space: too large", RUN, ["--space", "{huge_yaml}"], "a space file holds at most"),
    ("override: a key given twice", RUN, [*S, "--set", "budget={epochs: 1, epochs: 2}"],
     "key 'epochs' appears twice"),
    ("override without =", RUN, [*S, "--set", "budget.epochs"], "must look like KEY=VALUE"),
    ("override of an unknown key", RUN, [*S, "--set", "budget.epoch=3"], "epoch"),
    ("zero epochs", RUN, [*S, "--set", "budget.epochs=0"], "epochs"),
    ("epochs not a number", RUN, [*S, "--set", "budget.epochs=abc"], "epochs"),
    ("zero batch size", RUN, [*S, "--set", "budget.batch_size=0"], "batch_size"),
    ("negative lr", RUN, [*S, "--set", "fixed.lr=-1"], "lr"),
    ("unknown data set", RUN, [*S, "--set", "dataset=imagenet"], "unknown dataset 'imagenet'"),
    ("file data set without files", RUN, [*S, "--set", "dataset=mnist"], "--data-dir"),
    ("data folder missing", RUN, [*S, "--set", "dataset=mnist", "--data-dir", "{tmp}/nodata"],
     "nodata"),
    ("garbage data files", RUN, [*S, "--set", "dataset=mnist", "--data-dir", "{garbage}"],
     "is not an IDX file"),
    ("eps out of range", RUN, [*S, "--set", "threat_model.eps.Linf=2"], "out of range"),
    ("negative eps", RUN, [*S, "--set", "threat_model.eps.Linf=-0.1"], "Linf"),
    ("unknown norm", RUN, [*S, "--set", "threat_model.norm=L3"], "L3"),
    ("held-out attack in the pool", RUN, [*S, "--set", "attacks.heldout=[PGD]"],
     "both pool candidates and heldout"),
    ("held-out family in the pool", RUN, [*S, "--set", "attacks.heldout=[APGD-DLR]"],
     "family Linf (FGSM in pool candidates, APGD-DLR in heldout)"),
    ("unknown level", RUN, [*S, "--set", "attacks.heldout=[Elastic@extreme]"],
     "level 'extreme' does not exist"),
    ("non-Lp attack without a level", RUN, [*S, "--set", "attacks.heldout=[Elastic]"],
     "needs a distortion level"),
    # ---- access: the attacker a space's objective assumes, and its query budgets
    ("query budget below 1", RUN, [*S, "--set", "attacks.split_by=name",
                                   "--set", "attacks.sealed=[Square@q0]"],
     "a query budget must be at least 1 query per point, got 0"),
    ("query budget on a white-box attack", RUN, [*S, "--set", "attacks.sealed=[APGD@q100]",
                                                 "--set", "attacks.split_by=name"],
     "a query budget applies to score- or decision-based attacks only; APGD needs white-box"),
    ("query attack where a white-box space forbids mixing", RUN,
     [*S, "--set", "attacks.split_by=name", "--set", "attacks.sealed=[Square@q1000]",
      "--set", "attacks.mix_access=false"],
     "Square@q1000 is a query attack (scores access) in a white-box space"),
    ("white-box attack in a scores space", RUN,
     ["--space", "mid-query", "--set", "attacks.sealed=[APGD-DLR]"],
     "APGD-DLR needs white-box access, but this space's objective assumes scores"),
    ("query attack without its budget in a scores space", RUN,
     ["--space", "mid-query", "--set", "attacks.sealed=[Square]"],
     "Square in a scores space must be a query attack named with its query budget"),
    ("an access no space can claim", RUN, [*S, "--set", "access=decisions"],
     "access='decisions'; choose white-box or scores"),
    ("attack that cannot run on gray images", RUN,
     [*S, "--set", "attacks.sealed=[TIFGSM]", "--set", "attacks.split_by=name"],
     "crashes on 1-channel input"),
    ("non-Lp budget above its ceiling", RUN,
     [*S, "--set", "attacks.sealed=[Blur@high]", "--set", "threat_model.levels.Blur.high=1.5"],
     "above its ceiling"),
    ("unknown held-out attack", RUN, [*S, "--set", "attacks.heldout=[Kaleidoscope@medium]"],
     "unknown attack 'Kaleidoscope'"),
    ("unknown sealed attack", RUN, [*S, "--set", "attacks.sealed=[Kaleidoscope]"],
     "unknown attack 'Kaleidoscope'"),
    ("unknown pool attack", RUN, [*S, "--set", "attacks.pool.candidates=[PGD,Kaleidoscope]",
                                  "--set", "attacks.pool.max_size=2",
                                  "--set", "attacks.pool.default=[PGD]"],
     "unknown attack 'Kaleidoscope'"),
    ("pool larger than its candidates", RUN, [*S, "--set", "attacks.pool.max_size=9"],
     "max_size=9"),
    ("empty pool", RUN, [*S, "--set", "attacks.pool.candidates=[]"], "candidates"),
    ("pool min above max", RUN, [*S, "--set", "attacks.pool.min_size=4",
                                 "--set", "attacks.pool.max_size=2"], "min_size"),
    ("pool default not a candidate", RUN, [*S, "--set", "attacks.pool.default=[CW]"], "CW"),
    ("unknown split rule", RUN, [*S, "--set", "attacks.split_by=colour"], "colour"),
    ("unknown baseline", RUN, [*S, "--set", "baselines=[nope]"],
     "baselines ['nope'] do not exist"),
    ("range low above high", RUN, [*S, "--set", "params.w_ce.low=3"], "w_ce"),
    ("default out of its range", RUN, [*S, "--set", "params.w_ce.default=5"], "w_ce"),
    ("unknown parameter type", RUN, [*S, "--set", "params.w_ce.type=complex"], "complex"),
    ("unknown searched field", RUN, [*S, "--set", "params.w_typo={type: float, low: 0, "
                                                  "high: 1}"], "w_typo"),
    ("choice not allowed", RUN, [*S, "--set", "params.unig.choices=[per_sample,huge]"], "huge"),
    ("a space that trains nothing", RUN, ["--space", "{dead_yaml}"], "the recipe trains nothing"),
    ("a choice that trains nothing", RUN, ["--space", "{clean_only_yaml}"],
     "with include_clean=False, no recipe of this space trains"),
    ("unknown objective", RUN, [*S, "--set", "search.objective=val/nothing"], "val/nothing"),
    ("unknown mode", RUN, [*S, "--set", "search.mode=up"], "up"),
    ("reduction factor 1", RUN, [*S, "--set", "search.reduction_factor=1"], "reduction_factor"),
    ("grace period 0", RUN, [*S, "--set", "search.grace_period=0"], "grace_period"),
    # ---- search.run flags
    ("unreachable tracking server", RUN, [*S, "--mlflow-uri", "http://127.0.0.1:9"],
     "--mlflow-uri http://127.0.0.1:9"),
    ("tracking store in a missing folder", RUN,
     [*S, "--mlflow-uri", "sqlite:///{tmp}/no/such/mlflow.db"], "does not exist"),
    ("unreachable Ray head", RUN, [*S, "--address", "127.0.0.1:9"], "--address 127.0.0.1:9"),
    ("malformed address", RUN, [*S, "--address", "not-an-address"], "must be HOST:PORT"),
    ("negative trial count", RUN, [*S, "--num-samples", "-3"], "--num-samples=-3 must be >= 1"),
    ("zero trials", RUN, [*S, "--num-samples", "0"], "--num-samples=0 must be >= 1"),
    ("trial count not a number", RUN, [*S, "--num-samples", "many"], "invalid int value"),
    ("zero concurrency", RUN, [*S, "--max-concurrent", "0"], "--max-concurrent=0"),
    ("negative retries", RUN, [*S, "--max-failures", "-1"], "--max-failures=-1"),
    ("negative seed", RUN, [*S, "--seed", "-1"], "seed=-1 is out of range"),
    ("negative top-k", RUN, [*S, "--sealed-top-k", "-1"], "--sealed-top-k=-1"),
    ("zero final seeds", RUN, [*S, "--final-seeds", "0"], "--final-seeds=0"),
    ("zero sealed strength", RUN, [*S, "--sealed-strength", "0"], "--sealed-strength=0"),
    ("sealed strength nan", RUN, [*S, "--sealed-strength", "nan"],
     "--sealed-strength=nan must be a finite number"),
    ("sealed strength inf", RUN, [*S, "--sealed-strength", "inf"],
     "--sealed-strength=inf must be a finite number"),
    ("infinite GPUs", RUN, [*S, "--gpus-per-trial", "inf"],
     "--gpus-per-trial=inf must be a finite number"),
    ("CPUs nan", RUN, [*S, "--cpus-per-trial", "nan"], "--cpus-per-trial=nan must be a finite"),
    ("outage bound inf", RUN, [*S, "--tracking-outage", "inf"], "--tracking-outage=inf must"),
    ("custom resource inf", RUN, [*S, "--trial-resource", "slot=inf"], "finite AMOUNT > 0"),
    ("levels of a family that does not exist", RUN,
     [*S, "--set", "threat_model.levels.Nope.high=0.5"],
     "threat_model.levels.Nope: there is no attack family 'Nope' with levels"),
    ("negative outage bound", RUN, [*S, "--tracking-outage", "-1"], "--tracking-outage=-1"),
    ("unknown sampler", RUN, [*S, "--search-alg", "grid"], "invalid choice: 'grid'"),
    ("unknown scheduler", RUN, [*S, "--scheduler", "hyperband"], "invalid choice"),
    ("baselines in rungs not a bool", RUN, [*S, "--set", "search.baselines_in_rungs=3"],
     "search.baselines_in_rungs=3 must be true or false"),
    ("unknown rung rule", RUN, [*S, "--set", "search.rung_stop=never"],
     "search.rung_stop='never'; choose one of quantile, interval"),
    ("robust floor not an accuracy", RUN, [*S, "--set", "search.robust_floor=2"],
     "search.robust_floor=2 must be an accuracy in [0, 1] or null (off)"),
    ("robust floor without its measurement", RUN,
     [*S, "--set", "search.robust_floor=0.4", "--set", "budget.masking_samples=0"],
     "search.robust_floor=0.4 needs the masking checks' PGD-10"),
    ("robust floor on a minimised objective", RUN,
     [*S, "--set", "search.robust_floor=0.4", "--set", "search.mode=min"],
     "search.robust_floor needs an objective that is maximised"),
    ("robust floor under an L1 threat model", RUN,
     [*S, "--set", "search.robust_floor=0.4", "--set", "threat_model.norm=L1"],
     "search.robust_floor=0.4 needs the masking checks' PGD-10"),
    ("unknown flag", RUN, [*S, "--epochs", "3"], "unrecognized arguments: --epochs"),
    ("storage path is a file", RUN, [*S, "--storage-path", "{file}"], "is a file"),
    ("resume without a search", RUN, [*S, "--resume"], "no search of space 'smoke'"),
    ("resume of a missing name", RUN, [*S, "--resume", "--name", "gone"], "holds no search"),
    ("resume with another space", RUN, ["--space", "mid", *R, "kept"],
     "search 'kept' ran space 'smoke', not 'mid'"),
    ("resume with another version of the space", RUN, [*S, "--set", "budget.epochs=1", *R,
                                                       "kept"],
     "ran another version of space 'smoke' (budget.epochs: 4 then, 1 now)"),
    ("resume of a damaged Tune state", RUN, [*S, *R, "cut"],
     "experiment_state-2026-01-01_00-00-00.json is not whole JSON"),
    ("a search of that name is running", RUN, [*S, "--storage-path", "{tmp}/resumable",
                                               "--name", "busy"],
     "search 'busy' is already running (pid {holder}"),
    # ---- names and places: a name is not a path, results stay in the storage path
    ("name that climbs out", RUN, [*S, "--name", ".."], "--name '..' is not a search name"),
    ("name that is a path", RUN, [*S, "--name", "{tmp}/elsewhere"], "is not a search name"),
    ("name with a slash", RUN, [*S, "--name", "a/b"], "is not a search name"),
    ("name with a leading dash", RUN, [*S, "--name=-x"], "is not a search name"),
    ("name too long", RUN, [*S, "--name", "n" * 101], "is not a search name"),
    ("name that links outside", RUN, [*S, "--name", "link", "--storage-path", "{tmp}/store"],
     "outside"),
    ("empty storage path", RUN, [*S, "--storage-path", ""], "--storage-path is empty"),
    ("storage path nothing can be made in", RUN, [*S, "--storage-path", "/proc/results"],
     "nothing can be created in /proc"),
    ("cache folder is a file", RUN, [*S, "--cache-dir", "{file}"], "is a file, not a folder"),
    # ---- tracking stores MLflow would retry for minutes (or Ray would be started for)
    ("sqlite store that is a folder", RUN, [*S, "--mlflow-uri", "sqlite:///{tmp}"],
     "is a folder; give a database file"),
    ("sqlite store that is not a database", RUN, [*S, "--mlflow-uri", "sqlite:///{file}"],
     "is not a sqlite database"),
    ("unknown tracking scheme", RUN, [*S, "--mlflow-uri", "ftp://host/x"],
     "unknown scheme 'ftp'"),
    ("file store that is a file", RUN, [*S, "--mlflow-uri", "{file}"],
     "a file store is a folder"),
    ("folder store MLflow refuses", RUN, [*S, "--mlflow-uri", "file:{tmp}/mlruns"],
     "is a folder store, which MLflow refuses unless MLFLOW_ALLOW_FILE_STORE=true"),
    # ---- resource requests
    ("zero CPUs per trial", RUN, [*S, "--cpus-per-trial", "0"], "--cpus-per-trial=0.0 must"),
    ("more CPUs than any node", RUN, [*S, "--cpus-per-trial", "512"],
     "--cpus-per-trial 512, which no node can give"),
    ("GPUs on a machine without", RUN, [*S, "--gpus-per-trial", "4"],
     "--gpus-per-trial 4, which no node can give"),
    ("negative GPUs", RUN, [*S, "--gpus-per-trial", "-1"], "--gpus-per-trial=-1.0 must be"),
    ("fractional GPUs above 1", RUN, [*S, "--gpus-per-trial", "1.5"], "above 1 it must be"),
    ("malformed custom resource", RUN, [*S, "--trial-resource", "slot"], "NAME=AMOUNT"),
    ("custom resource named CPU", RUN, [*S, "--trial-resource", "CPU=1"], "own flags"),
    ("custom resource nobody offers", RUN, [*S, "--trial-resource", "slot=1"],
     "--trial-resource slot=1, which no node can give"),
    # ---- search.trial
    ("trial: value out of range", TRIAL, [*S, "--params", '{"w_feat": 50}'],
     "w_feat=50.0 is outside the space's range [0, 3]"),
    ("trial: negative weight", TRIAL, [*S, "--params", '{"w_feat": -1}'],
     "w_feat=-1.0 is out of range"),
    ("trial: unknown key", TRIAL, [*S, "--params", '{"lr_typo": 1}'],
     "unknown key(s) ['lr_typo']"),
    ("trial: not JSON", TRIAL, [*S, "--params", "{bad json"], "--params is not valid JSON"),
    ("trial: not an object", TRIAL, [*S, "--params", "[1, 2]"], "must be a JSON object"),
    ("trial: choice not allowed", TRIAL, [*S, "--params", '{"unig": "huge"}'], "huge"),
    ("trial: pool attack not a candidate", TRIAL, [*S, "--params", '{"pool": ["CW"]}'],
     "not candidates"),
    ("trial: empty pool", TRIAL, [*S, "--params", '{"pool": []}'], "allows 1 to 4"),
    ("trial: a recipe that trains nothing", TRIAL,
     ["--space", "{w_ce_only_yaml}", "--params", '{"w_ce": 0}'], "the recipe trains nothing"),
    ("trial: unknown space", TRIAL, ["--space", "nope"], "unknown space 'nope'"),
    ("trial: unknown device", TRIAL, [*S, "--device", "tpu"], "tpu"),
    ("trial: negative threads", TRIAL, [*S, "--threads", "-2"], "threads=-2 is out of range"),
    ("trial: a value that does not apply", TRIAL,
     [*S, "--params", '{"unig": "off", "unig_delta": 0.3}'],
     "--params unig_delta=0.3 does not apply: space 'smoke' uses it only when unig in "
     "['per_sample'] (here unig='off')"),
    ("trial: model path is a folder", TRIAL, [*S, "--save-model", "{tmp}"],
     "--save-model '{tmp}' is a folder, not a file"),
    ("trial: model path in a file", TRIAL, [*S, "--save-model", "{file}/m.pt"],
     "is a file, not a folder"),
    ("trial: output path is a folder", TRIAL, [*S, "--out", "{tmp}"], "is a folder, not a file"),
    # ---- search.report and search.final on searches that are not there
    ("report: no search here", REPORT, ["--storage-path", "{tmp}/results"],
     "no finished search"),
    ("report: store that does not exist", REPORT,
     ["--experiment", "x", "--mlflow-uri", "sqlite:///{tmp}/missing.db"],
     "there is no MLflow store"),
    ("final: no search here", FINAL, ["--storage-path", "{tmp}/results"],
     "no finished search"),
    ("final: zero seeds", FINAL, ["--seeds", "0"], "--seeds=0 must be >= 1"),
    ("final: zero strength", FINAL, ["--strength", "0"], "--strength=0.0 must be > 0"),
    ("final: strength nan", FINAL, ["--strength", "nan"], "--strength=nan must be a finite"),
    ("report: plots folder is a file", REPORT, ["--out", "{file}"], "is a file, not a folder"),
    ("report: a name that climbs out", REPORT, ["--name", ".."], "is not a search name"),
    ("final: a name that is a path", FINAL, ["--name", "/etc"], "is not a search name"),
]


def _laughs() -> bytes:
    """Eleven levels of ten aliases each: 10^11 values once expanded."""
    text, previous = "name: laughs\nl0: &l0 [" + ", ".join(["lol"] * 10) + "]\n", "l0"
    for level in range(1, 12):
        text += f"l{level}: &l{level} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
        previous = f"l{level}"
    return text.encode()


# space files built to hurt the reader (issue 21: 18 s and a 312 MB error line; a
# RecursionError with a 2,992-line traceback; the last of two keys silently kept; a traceback)
HOSTILE_YAML = {
    "laughs": _laughs(),
    "deep": b"name: deep\ndataset: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "loop": b"name: loop\ndataset: &x [*x]\n",
    "twice": b"name: twice\ndataset: digits\nattacks:\n  heldout: [PGDL2]\n  heldout: [FGSM]\n",
    "latin1": "name: café\ndataset: digits\n".encode("latin-1"),
    "huge": b"name: huge\nnote: [" + b"1," * 600_000 + b"1]\n",
}


def _kept_search(folder: Path) -> Path:
    """What a smoke search leaves in its results folder, as far as --resume reads it."""
    import yaml

    import spaces

    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({
        "name": folder.name, "space": "smoke", "mlflow_uri": "sqlite:///x.db", "experiment": "e",
        "experiment_id": "1", "parent_run_id": "p", "storage_path": str(folder.parent),
        "optuna_storage": "sqlite:///o.db", "seed": 0, "resources": {"cpu": 1.0},
        "address": None, "cache_dir": None, "mode": "max"}))
    (folder / "space.yaml").write_text(yaml.safe_dump(spaces.read_raw("smoke")[0]))
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    for name in ("tuner.pkl", "searcher-state-2026-01-01_00-00-00.pkl"):
        (folder / name).write_bytes(b"\x80\x05N.")
    return folder


@pytest.fixture(scope="module")
def holder() -> Iterator[int]:
    """A live process that holds a search's lock."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture()
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holder: int) -> dict[str, str]:
    """Bad files to point at, made before the snapshot of what exists."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("name: bad\ndataset: digits\nattacks: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "extends_loop.yaml").write_text("name: loop\nextends: extends_loop.yaml\n")
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "spaces").mkdir()
    weights = ("w_ce", "w_ce_clean", "w_trades", "w_feat", "w_cyc", "w_pcl")
    head = ("name: {}\ndataset: digits\nattacks:\n  pool: {{candidates: [PGD], min_size: 1, "
            "max_size: 1, default: [PGD]}}\n  heldout: [PGDL2]\n")
    for name, fixed, params in (
            ("dead", weights, ""),
            ("clean_only", [w for w in weights if w != "w_ce_clean"],
             "  w_ce_clean: {type: float, low: 0.1, high: 1.0, default: 1.0}\n"
             "  include_clean: {type: categorical, choices: [true, false], default: true}\n"),
            ("w_ce_only", [w for w in weights if w != "w_ce"],
             "  w_ce: {type: float, low: 0.0, high: 1.0, default: 1.0}\n")):
        (tmp_path / f"{name}.yaml").write_text(
            head.format(name) + "fixed: {" + ", ".join(f"{w}: 0" for w in fixed)
            + ', meta: "off", unig: "off"}\n' + ("params:\n" + params if params else ""))
    for name, text in HOSTILE_YAML.items():
        (tmp_path / f"{name}.yaml").write_bytes(text)
    _kept_search(tmp_path / "resumable" / "kept")
    _kept_search(tmp_path / "resumable" / "cut").joinpath(
        "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [')
    busy = tmp_path / "resumable" / "busy"
    busy.mkdir()
    (busy / "search.lock").write_text(json.dumps({
        "pid": holder, "host": socket.gethostname(),
        "created": psutil.Process(holder).create_time(), "started": "2026-01-01 00:00:00"}))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "link").symlink_to(tmp_path)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (garbage / name).write_bytes(os.urandom(4096))
    return {"tmp": str(tmp_path), "holder": str(holder), "bad_yaml": str(tmp_path / "bad.yaml"),
            "list_yaml": str(tmp_path / "list.yaml"), "file": str(tmp_path / "afile"),
            "extends_loop_yaml": str(tmp_path / "extends_loop.yaml"),
            "folder": str(tmp_path / "spaces"), "garbage": str(garbage),
            **{f"{n}_yaml": str(tmp_path / f"{n}.yaml") for n in ("dead", "clean_only",
                                                                   "w_ce_only",
                                                                   *HOSTILE_YAML)}}


def _fill(text: str, inputs: dict[str, str]) -> str:
    for key, value in inputs.items():
        text = text.replace("{" + key + "}", value)
    return text


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("main", "args", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(
        inputs: dict[str, str], main: Main, args: list[str], message: str) -> None:
    import ray

    tmp = Path(inputs["tmp"])
    before = _tree(tmp)
    cache = Path(os.environ["DEFENSE_SEARCH_CACHE"])
    cached = _tree(cache)
    argv = [_fill(a, inputs) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own errors
            code = int(exit_.code or 0)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code == 2, (out.getvalue()[-2000:], err.getvalue()[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
    assert len(lines[0]) < 1000, lines[0][:1000]  # one line, not a dump of the input
    assert _fill(message, inputs) in lines[0]
    assert not ray.is_initialized()
    assert _tree(tmp) == before  # no results folder, store, study or report made
    assert _tree(cache) == cached  # no teacher trained


def test_the_table_has_at_least_60_kinds() -> None:
    assert len(CASES) + len(BAD_MODELS) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


# ---- model files: each kind of bad file is one ModelFileError with a one-line message
def _write(kind: str, path: Path, good: Path) -> None:
    if kind == "random bytes":
        path.write_bytes(os.urandom(2048))
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:500])
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind == "pickled module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif kind == "a tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "wrong class count":
        payload = torch.load(good, weights_only=True)
        payload["num_classes"] = 7
        torch.save(payload, path)
    elif kind == "missing key":
        payload = torch.load(good, weights_only=True)
        del payload["head"]
        torch.save(payload, path)
    elif kind == "missing weight":
        payload = torch.load(good, weights_only=True)
        del payload["head"]["trunk.1.weight"]
        torch.save(payload, path)
    elif kind == "weight of another shape":
        payload = torch.load(good, weights_only=True)
        payload["encoder"] = {k: torch.zeros(3, *v.shape[1:]) if v.dim() else v
                              for k, v in payload["encoder"].items()}
        torch.save(payload, path)
    elif kind == "wrong architecture":
        payload = torch.load(good, weights_only=True)
        payload["arch"] = "no_such_arch"
        torch.save(payload, path)
    elif kind == "a folder":
        path.mkdir()
    # "no file": nothing written


# each kind and what its one line must say (the key and the expected shape, where one is off)
BAD_MODELS = {
    "random bytes": "cannot be read as a saved model",
    "truncated": "cannot be read as a saved model",
    "empty file": "cannot be read as a saved model",
    "pickled module": "holds a pickled Python object (torch.nn.modules.linear.Linear), which is "
                      "refused because loading it would run code",
    "a tensor": "is not a defended model saved by this project",
    "wrong class count": "head weight 'out.weight' has shape [10, 200], expected [7, 200] for "
                         "a small_cnn for images [1, 8, 8] with 7 classes",
    "missing key": "lacks the key(s) ['head']",
    "missing weight": "head weight 'trunk.1.weight' is missing (expected shape [200, 256]",
    "weight of another shape": "encoder weight '0.weight' has shape [3, 1, 3, 3], "
                               "expected [32, 1, 3, 3]",
    "wrong architecture": "architecture 'no_such_arch'",
    "a folder": "is a directory",
    "no file": "does not exist",
}


@pytest.mark.parametrize("kind", BAD_MODELS)
def test_a_bad_model_file_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    parts = build_arch("small_cnn", (1, 8, 8), 10)
    good = tmp_path / "good.pt"
    save_defended_model(good, DefendedModel(parts.encoder, parts.head, None), arch="small_cnn",
                        image_shape=(1, 8, 8), num_classes=10, info={})
    assert load_defended_model(good) is not None  # the writer and reader agree
    bad = tmp_path / "bad.pt"
    _write(kind, bad, good)
    with pytest.raises(ModelFileError) as caught:
        load_defended_model(bad)
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message
    assert BAD_MODELS[kind] in message, message
    assert "weights_only=False" not in message and "\x1b" not in message  # no unsafe advice


# ---- a tracking store that does not exist is not created by looking at it
def test_report_on_a_server_without_the_experiment_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    proc, uri = start_mlflow_server(tmp_path / "store")
    try:
        err = io.StringIO()
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            code = report.main(["--experiment", "nope", "--mlflow-uri", uri])
        assert code == 2
        assert err.getvalue().startswith("error: no MLflow experiment 'nope'")
    finally:
        stop_process(proc)


@pytest.mark.parametrize("name", HOSTILE_YAML)
def test_a_hostile_space_file_is_refused_in_a_second(tmp_path: Path, name: str) -> None:
    import time

    import spaces
    from spaces import SpaceError

    path = tmp_path / f"{name}.yaml"
    path.write_bytes(HOSTILE_YAML[name])
    start = time.perf_counter()
    with pytest.raises(SpaceError):
        spaces.load(str(path))
    assert time.perf_counter() - start < 2.0

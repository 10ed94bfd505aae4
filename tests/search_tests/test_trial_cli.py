"""`python -m search.trial`: one trial from a space without Ray, and its one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainables import load_defended_model

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search.trial", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_writes_metrics_and_a_loadable_model(tmp_path: Path) -> None:
    out, model = tmp_path / "result.json", tmp_path / "model.pt"
    proc = _cli("--space", "smoke", "--set", "budget.epochs=2", "--params",
                '{"pool": ["PGD", "MIFGSM"], "w_feat": 0.5, "unig": "off"}', "--out", str(out),
                "--save-model", str(model), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/2" in proc.stdout and "epoch 2/2" in proc.stdout
    summary = json.loads(out.read_text())
    assert summary["config"]["pool"] == ["PGD", "MIFGSM"]
    assert summary["config"]["w_feat"] == 0.5
    assert "val/heldout/mean_acc" in summary["metrics"]
    loaded = load_defended_model(model)  # issue 21: UniG off was saved as an enum, unreadable
    assert loaded.unig is None
    assert loaded.info["threat_model"]["norm"] == "Linf"  # type: ignore[index]
    assert loaded.info["config"]["unig"] == "off"  # type: ignore[index]


@pytest.mark.parametrize(("args", "message"), [
    (["--space", "nope"], "unknown space 'nope'"),
    (["--space", "smoke", "--params", '{"w_feat": -1}'], "w_feat=-1.0 is out of range"),
    (["--space", "smoke", "--params", '{"lr_typo": 1}'], "unknown key(s) ['lr_typo']"),
    (["--space", "smoke", "--params", "{bad json"], "--params is not valid JSON"),
    (["--space", "smoke", "--set", "dataset=mnist"], "--data-dir"),
    (["--space", "smoke", "--set", "dataset=imagenet"], "unknown dataset 'imagenet'"),
    (["--space", "smoke", "--set", "attacks.heldout=[NoSuchAttack]"], "unknown attack"),
    (["--space", "smoke", "--set", "threat_model.eps.Linf=2"], "out of range"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]


def test_ctrl_c_stops_a_trial_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.Popen([sys.executable, "-m", "search.trial", "--space", "smoke", "--set",
                             "budget.epochs=50", "--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            # a shell running in the background ignores SIGINT, and its
                            # children inherit that: give the trial Ctrl-C back
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # interrupt it mid-training
            if "epoch 1/50" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted: nothing was written"
    assert "Traceback" not in stderr and not out.exists()

"""The query space (mid-query: a served model, access: scores) end to end at toy size: a real
search against a real MLflow server, its objective zeroed by query-claim flags only, and the
final table with white-box and query rows side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.search_tests.conftest import run_module
from trainables.scoring.masking import check_claim
from trainables.vocab import Access

TOY = ["budget.epochs=1", "budget.eval_every=1", "budget.eval_samples=32",
       "budget.rung_samples=0", "budget.test_samples=32", "budget.autoattack_samples=16",
       "budget.masking_samples=16", "budget.teacher_epochs=2", "budget.batch_size=256",
       "attacks.heldout=[Square@q20,RandomSearch@q20]", "attacks.sealed=[Square@q40]",
       "baselines=[pgd-at]"]


@pytest.mark.slow
def test_the_query_space_runs_end_to_end(mlflow_server: str, tmp_path: Path) -> None:
    overrides = [arg for item in TOY for arg in ("--set", item)]
    proc = run_module("search.run", "--space", "mid-query", *overrides, "--num-samples", "2",
                      "--final-seeds", "1", "--sealed-top-k", "1", "--mlflow-uri",
                      mlflow_server, "--experiment", "query-test", "--storage-path",
                      str(tmp_path / "ray"), "--name", "query-test", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.rindex("Test split, mean over"):]
    for column in ("sealed mean", "white-box mean", "adaptive query mean", "output change"):
        assert column in table, table
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("query-test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=50)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    for run in children:
        checks = json.loads(Path(client.download_artifacts(
            run.info.run_id, "masking.json", str(tmp_path))).read_text())
        assert "adaptive_query_beats_plain" in checks["flags"]  # the query checks ran
        raised = [name for name, up in checks["flags"].items() if up]
        invalid = any(check_claim(name) == Access.SCORES for name in raised)
        metrics = run.data.metrics
        assert metrics["val/objective"] == (0.0 if invalid else metrics["val/heldout/mean_acc"])
        assert 0.0 <= metrics["val/output/prob_change"] <= 1.0

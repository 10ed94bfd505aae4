"""Model cards: built from a model's metadata and its final evaluation, written beside every
exported model, exposed by load_defended_model, logged to MLflow with the model."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

import spaces
from search.card import CardFacts, FinalFacts, build_card, card_markdown
from search.exports import export_model
from search.records import SearchInfo
from search.trial import _parser, parse_values
from tests.search_tests.conftest import FinishedSearch
from trainables.defense.export import card_paths, load_defended_model, save_defended_model
from trainables.defense.models import DefendedModel, build_arch
from trainables.errors import ModelFileError
from trainables.scoring.stats import Interval
from trainables.vocab import FIDELITY_POINTS, MASKING_ANY, high_key, low_key

VALUES = {"w_feat": 0.25, "unig": "off", "w_pcl": 0.5}


def _with_interval(key: str, value: float) -> dict[str, float]:
    return {key: value, low_key(key): value - 0.1, high_key(key): value + 0.1}


def _metrics(split: str, *, sealed: bool) -> dict[str, float]:
    out = {**_with_interval(f"{split}/clean/acc", 0.9)}
    for key, value in (("heldout/mean_acc", 0.5), ("heldout/union_acc", 0.3),
                       ("heldout/family_mean_acc", 0.4), ("heldout/L2/acc", 0.45),
                       ("heldout/Elastic/acc", 0.35)):
        out.update(_with_interval(f"{split}/{key}", value))
    if sealed:
        out.update({**_with_interval(f"{split}/sealed/Fog/acc", 0.6),
                    **_with_interval(f"{split}/sealed/mean_acc", 0.6),
                    **_with_interval(f"{split}/autoattack/acc", 0.2)})
    return out


def _facts(values: dict[str, Any] | None, *, baseline: str | None = None) -> CardFacts:
    space = spaces.load("smoke")
    record = (space.baseline_record(baseline) if baseline
              else space.record({**space.default_values(), **VALUES}, seed=3))
    trained = {**_metrics("val", sealed=False), FIDELITY_POINTS: 64.0, MASKING_ANY: 1.0,
               "masking/zero_gradient": 1.0, "masking/randomized": 1.0}
    info = {**record.to_dict(), "metrics": trained,
            "threat_model": space.setup(check_data_dir=False).threat.to_dict()}
    final = FinalFacts(_metrics("test", sealed=True), 128,
                       {"sealed mean": Interval(0.55, 0.5, 0.6)}, [3, 4])
    return CardFacts(name="t01", model_file="best_model.pt", search="smoke-x", space="smoke",
                     info=info, values=values, space_file="/r/smoke-x/space.yaml",
                     storage_path="/r", commit="abc123", final=final)


def test_the_card_says_what_the_model_is_robust_to_and_how_to_make_it_again() -> None:
    space = spaces.load("smoke")
    values = space.values_of(space.record({**space.default_values(), **VALUES}))
    card = build_card(_facts(values))
    json.dumps(card)  # plain types only
    test, val = card["results"]["test"], card["results"]["validation"]
    assert test["sealed"]["families"]["Fog"] == {"value": 0.6, "low": 0.5, "high": 0.7}
    assert test["autoattack"]["value"] == 0.2 and "autoattack" not in val
    assert set(val["heldout"]["families"]) == {"L2", "Elastic"} and "sealed" not in val
    assert card["masking"] == {"checked": True, "flags": ["zero_gradient"]}  # informational out
    assert card["data"] == {"dataset": "digits", "data_seed": 0, "validation_points": 64,
                            "test_points": 128}
    assert card["seed"] == 3 and card["code_commit"] == "abc123"
    assert card["threat_model"]["summary"].startswith("Linf eps=")
    assert card["recipe"]["w_feat"] == 0.25 and card["recipe"]["unig"] == "off"
    page = card_markdown(card)
    for line in ("| sealed family Fog | 0.600 [0.500, 0.700] | - |",
                 "| held-out family Elastic | 0.350 [0.250, 0.450] | 0.350 [0.250, 0.450] |",
                 "| AutoAttack | 0.200 [0.100, 0.300] | - |",
                 "| masking checks | raised: zero_gradient |",
                 "| sealed mean | 0.550 [0.500, 0.600] |"):
        assert line in page, page
    # the command is one a shell and search.trial take, and rebuilds the same values
    words = shlex.split(card["command"])
    assert words[:3] == ["python", "-m", "search.trial"]
    args = _parser().parse_args(words[3:])
    assert args.seed == 3 and args.final and args.space == "/r/smoke-x/space.yaml"
    assert parse_values(args.params, space) == values


def test_a_baseline_the_search_did_not_train_is_made_again_by_the_final_comparison() -> None:
    card = build_card(_facts(None, baseline="trades"))
    assert card["model"]["baseline"] == "trades"
    assert shlex.split(card["command"]) == [
        "python", "-m", "search.final", "--name", "smoke-x", "--storage-path", "/r",
        "--top-k", "1", "--seeds", "1", "--baselines", "trades"]
    assert "Baseline `trades`" in card_markdown(card)


def _saved_model(path: Path, info: dict[str, Any]) -> None:
    parts = build_arch("small_cnn", (1, 8, 8), 10)
    save_defended_model(path, DefendedModel(parts.encoder, parts.head, None),
                        arch="small_cnn", image_shape=(1, 8, 8), num_classes=10, info=info)


def test_load_defended_model_exposes_the_card_written_beside_it(tmp_path: Path) -> None:
    space, facts = spaces.load("smoke"), _facts(None)
    out = tmp_path / "smoke-x"
    out.mkdir()
    SearchInfo("smoke-x", "smoke", "sqlite:///m.db", "e", "1", "p", str(tmp_path), "o", 0, {},
               None, None).write(out)
    source = tmp_path / "source.pt"
    _saved_model(source, dict(facts.info))
    paths = export_model(source.read_bytes(), out / "final" / "t01" / "model.pt", name="t01",
                         space=space, out=out, final=facts.final)
    assert [p.name for p in paths] == ["model.pt", "model.card.md", "model.card.json"]
    model = load_defended_model(paths[0])
    assert model.card == json.loads(paths[2].read_text())
    assert model.card["model"]["name"] == "t01" and model.card["model"]["search"] == "smoke-x"
    assert paths[1].read_text().startswith("# Model card: t01")
    assert load_defended_model(source).card is None  # no card beside it
    card_paths(source)[1].write_text("{not json")
    with pytest.raises(ModelFileError) as caught:
        load_defended_model(source)
    assert "source.card.json" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_every_exported_model_has_its_card_on_disk_and_in_mlflow(
        smoke_search: FinishedSearch, tmp_path: Path) -> None:
    out, client = smoke_search.output, smoke_search.client
    info = SearchInfo.read(out)
    best = load_defended_model(out / "best_model.pt")
    assert best.card is not None and best.card["model"]["file"] == "best_model.pt"
    rows = json.loads(Path(client.download_artifacts(
        info.parent_run_id, "final.json", str(tmp_path))).read_text())
    best_run = client.get_run(info.parent_run_id).data.tags["best_run"]
    compared = {row["run_id"] for row in rows}
    own = {row["run_id"] for row in rows if not row["baseline"]}
    # the best model's own test numbers are on its card when the final comparison ran on it
    # (a searched recipe's seed-0 model is the run's own; a baseline's answers are kept as its
    # training's, so its card has the recipe's means over the seeds, not this model's numbers)
    assert (best.card["results"]["test"] is not None) == (best_run in own)
    assert (best.card["over_seeds"] is not None) == (best_run in compared)
    logged = {a.path for a in client.list_artifacts(info.parent_run_id, "best")}
    assert {"best/best_model.pt", "best/best_model.card.md", "best/best_model.card.json"} <= logged
    for row in rows:  # every recipe of the final comparison: seed 0's model and its card
        label = row["recipe"]
        model = load_defended_model(out / "final" / label / "model.pt")
        assert model.card is not None and model.card["model"]["name"] == label
        test = model.card["results"]["test"]
        assert test["clean"]["low"] <= test["clean"]["value"] <= test["clean"]["high"]
        assert set(test["sealed"]["families"]) == {"Fog"}
        assert set(test["heldout"]["families"]) == {"L2", "Elastic"}
        assert model.card["over_seeds"]["seeds"] == row["seeds"]
        # each family's mean over the seeds, titled as in the final table's per-family rows
        assert {"sealed Fog", "held-out Elastic"} <= set(model.card["over_seeds"]["means"])
        files = {a.path for a in client.list_artifacts(info.parent_run_id, f"final/{label}")}
        assert {f"final/{label}/model.pt", f"final/{label}/model.card.json",
                f"final/{label}/model.card.md"} <= files

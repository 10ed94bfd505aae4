"""A defended model's card: what it is robust to, measured on what, and how to make it again
(RobustBench's model entries: threat model, clean, AutoAttack, per-attack numbers, recipe).

Data in, text out: `build_card` turns a model's metadata (the record and metrics saved in its
file), what the final comparison measured of it and the search's facts into the card's JSON;
`card_markdown` turns that JSON into the page a person reads. search/exports.py writes both
beside every exported model (trainables/defense/export.py `card_paths`).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spaces import TrialRecord
from trainables.attacks import attack_spec
from trainables.attacks.threat import ThreatModel
from trainables.scoring.masking import raised_flags
from trainables.scoring.stats import Interval
from trainables.vocab import (
    FIDELITY_POINTS,
    Group,
    Split,
    Stat,
    attack_metric,
    group_metric,
    high_key,
    low_key,
)

__all__ = ["FORMAT", "CardFacts", "FinalFacts", "build_card", "card_markdown"]

FORMAT = "defense-search/model-card/1"
GROUP_STATS = {"mean": Stat.MEAN, "union": Stat.UNION, "family_mean": Stat.FAMILY_MEAN}
GROUPS = {"heldout": Group.HELDOUT, "sealed": Group.SEALED}


@dataclass(frozen=True)
class FinalFacts:
    """What the final comparison measured: this model on the test split (seed 0's model), and
    its recipe's means over seeds (titled as in the final table)."""

    own: Mapping[str, float] | None = None
    points: int | None = None  # test points the model was evaluated on
    over_seeds: Mapping[str, Interval] = field(default_factory=dict)
    seeds: Sequence[int] = ()


@dataclass(frozen=True)
class CardFacts:
    name: str  # the model's label: "t05", "pgd-at"
    model_file: str  # its file name, beside the card
    search: str
    space: str
    info: Mapping[str, Any]  # the model file's metadata: record, metrics, threat model
    values: Mapping[str, Any] | None  # the searched values that rebuild the recipe, if any
    space_file: str  # the search's space file (what --space takes)
    storage_path: str
    commit: str
    final: FinalFacts = field(default_factory=FinalFacts)


def build_card(facts: CardFacts) -> dict[str, Any]:
    """The card's JSON (plain types)."""
    record = TrialRecord.from_dict(facts.info)
    config = record.config
    trained = dict(facts.info.get("metrics", {}))
    metrics = {**trained, **(facts.final.own or {})}
    flags = raised_flags(trained)
    points = trained.get(FIDELITY_POINTS) if any(k.startswith(f"{Split.VAL}/")
                                                 for k in trained) else None
    return {
        "format": FORMAT,
        "model": {"name": facts.name, "file": facts.model_file, "baseline": record.baseline,
                  "search": facts.search, "space": facts.space},
        "data": {"dataset": config.dataset, "data_seed": config.data_seed,
                 "validation_points": None if points is None else int(points),
                 "test_points": facts.final.points},
        "threat_model": {"summary": ThreatModel.from_dict(facts.info["threat_model"]).describe(),
                         **facts.info["threat_model"]},
        "attacks": {"pool": list(config.pool), "heldout": list(config.heldout),
                    "sealed": list(config.sealed)},
        "results": {"test": _results(metrics, Split.TEST, config.heldout, config.sealed),
                    "validation": _results(metrics, Split.VAL, config.heldout, config.sealed)},
        "over_seeds": {"seeds": list(facts.final.seeds),
                       "means": {t: _plain(i) for t, i in facts.final.over_seeds.items()}}
        if facts.final.over_seeds else None,
        "masking": {"checked": flags is not None, "flags": flags or []},
        "recipe": record.recipe,
        "seed": config.seed,
        "code_commit": facts.commit,
        "command": _command(facts, record),
    }


def _plain(interval: Interval) -> dict[str, float]:
    return {"value": interval.value, "low": interval.low, "high": interval.high}


def _interval(metrics: Mapping[str, float], key: str) -> dict[str, float | None] | None:
    if key not in metrics:
        return None
    return {"value": metrics[key], "low": metrics.get(low_key(key)),
            "high": metrics.get(high_key(key))}


def _results(metrics: Mapping[str, float], split: str, heldout: Sequence[str],
             sealed: Sequence[str]) -> dict[str, Any] | None:
    """Clean, AutoAttack, and per group its mean, union, family mean and each family's
    accuracy, each with its 95% interval; None where the split was not evaluated."""
    found: dict[str, Any] = {}
    for name, key in (("clean", group_metric(split, Group.CLEAN, Stat.ACC)),
                      ("autoattack", group_metric(split, Group.AUTOATTACK, Stat.ACC))):
        if (interval := _interval(metrics, key)) is not None:
            found[name] = interval
    for name, attacks in (("heldout", heldout), ("sealed", sealed)):
        group = GROUPS[name]
        stats = {s: _interval(metrics, group_metric(split, group, stat))
                 for s, stat in GROUP_STATS.items()}
        families = {f: _interval(metrics, attack_metric(split, group, f))
                    for f in dict.fromkeys(attack_spec(a).family for a in attacks)}
        row: dict[str, Any] = {k: v for k, v in stats.items() if v is not None}
        if any(v is not None for v in families.values()):
            row["families"] = {f: v for f, v in families.items() if v is not None}
        if row:
            found[name] = row
    return found or None


def _command(facts: CardFacts, record: TrialRecord) -> str:
    """The command that trains this recipe with this seed again and evaluates it on the test
    split; a baseline the search did not run is trained by the final comparison."""
    if facts.values is not None:
        return (f"python -m search.trial --space {shlex.quote(facts.space_file)} --params "
                f"{shlex.quote(json.dumps(dict(facts.values), sort_keys=True))} --seed "
                f"{record.config.seed} --final --save-model {shlex.quote(facts.model_file)}")
    return (f"python -m search.final --name {shlex.quote(facts.search)} --storage-path "
            f"{shlex.quote(facts.storage_path)} --top-k 1 --seeds 1 --baselines "
            f"{record.baseline}")


# ---------------------------------------------------------------- the page


def _cell(interval: Mapping[str, Any] | None) -> str:
    if interval is None:
        return "-"
    if interval.get("low") is None or interval.get("high") is None:
        return f"{interval['value']:.3f}"
    return f"{interval['value']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _measures(card: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """The rows of the accuracy table: a title and where its interval is in a split's
    results."""
    rows: list[tuple[str, tuple[str, ...]]] = [("clean", ("clean",)),
                                               ("AutoAttack", ("autoattack",))]
    for name, title in (("heldout", "held-out"), ("sealed", "sealed")):
        rows += [(f"{title} {s.replace('_', ' ')}", (name, s)) for s in GROUP_STATS]
        families = dict.fromkeys(attack_spec(a).family for a in card["attacks"][name])
        rows += [(f"{title} family {f}", (name, "families", f)) for f in families]
    return rows


def _lookup(results: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    found: Any = results
    for part in path:
        found = found.get(part) if isinstance(found, Mapping) else None
    return found


def _header(card: Mapping[str, Any]) -> list[str]:
    model, data, threat = card["model"], card["data"], card["threat_model"]
    what = (f"Baseline `{model['baseline']}`" if model["baseline"] else "A searched recipe")
    masking = card["masking"]
    flags = ("not run on this model" if not masking["checked"] else
             "passed" if not masking["flags"] else "raised: " + ", ".join(masking["flags"]))
    attacks = card["attacks"]
    points = {k: "not evaluated on" if data[f"{k}_points"] is None
              else f"{data[f'{k}_points']} points" for k in ("validation", "test")}
    budgets = ", ".join(f"{n} {e:g}" for n, e in threat.get("eps", {}).items())
    return [
        f"# Model card: {model['name']}", "",
        f"{what}, trained by search `{model['search']}` (space `{model['space']}`).", "",
        "| | |", "|---|---|",
        f"| file | `{model['file']}` (`trainables.load_defended_model`; this card is "
        "`model.card`) |",
        f"| data set | `{data['dataset']}` (data seed {data['data_seed']}); validation split: "
        f"{points['validation']} (the recipe was chosen on it); test split: "
        f"{points['test']} (never used while searching) |",
        f"| threat model | {threat['summary']} (budgets: {budgets or '-'}) |",
        f"| attacks | pool (trained on): {', '.join(attacks['pool']) or '-'}; held-out (the "
        f"search's objective): {', '.join(attacks['heldout'])}; sealed (final report only): "
        f"{', '.join(attacks['sealed']) or '-'} |",
        f"| masking checks | {flags} |",
        f"| seed | {card['seed']} |",
        f"| code commit | `{card['code_commit']}` |",
        f"| reproduce | `{card['command']}` |", ""]


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card as the page a person reads."""
    lines = _header(card)
    test, val = card["results"]["test"], card["results"]["validation"]
    lines += ["## Robust accuracy of this model", "",
              "95% intervals over the evaluated points: Wilson for clean, AutoAttack and one "
              "family (per sample, all its attacks at medium distortion), a bootstrap for "
              "means. `-`: not measured.", "",
              "| measure | test split | validation split |", "|---|---|---|"]
    for title, path in _measures(card):
        cells = (_cell(_lookup(test, path)), _cell(_lookup(val, path)))
        if cells != ("-", "-"):
            lines.append(f"| {title} | {cells[0]} | {cells[1]} |")
    if test is None:
        lines += ["", "Not evaluated on the test split: the final comparison did not run on "
                  "this model (`python -m search.final` runs it)."]
    if card["over_seeds"]:
        seeds = card["over_seeds"]["seeds"]
        lines += ["", f"## The recipe over seeds {seeds} (final comparison, test split)", "",
                  "Mean over the models of each seed [95% t interval].", "",
                  "| measure | mean over seeds |", "|---|---|"]
        lines += [f"| {t} | {_cell(i)} |" for t, i in card["over_seeds"]["means"].items()]
    lines += ["", "## Recipe", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {', '.join(map(str, v)) if isinstance(v, list) else v} |"
              for k, v in card["recipe"].items()]
    return "\n".join(lines) + "\n"

"""Exported models and their cards on disk: `best_model.pt` of a search and the final
comparison's seed-0 models (`final/<recipe>/model.pt`), each with `<stem>.card.md` and
`<stem>.card.json` beside it (search/card.py builds them)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from search.card import CardFacts, FinalFacts, build_card, card_markdown
from search.records import SearchInfo
from search.vocab import ARTIFACT
from spaces import Space, TrialRecord
from trainables.defense.export import card_paths, load_defended_model
from trainables.files import write_atomic

__all__ = ["code_commit", "export_model"]

REPO = Path(__file__).resolve().parents[1]


def code_commit() -> str:
    """The git commit of this code, `-dirty` when the checkout has uncommitted changes
    ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                              cwd=REPO, capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def export_model(payload: bytes, target: Path, *, name: str, space: Space, out: Path,
                 final: FinalFacts | None = None) -> list[Path]:
    """Writes the model file `payload` to `target` and its card beside it (`out`: the search's
    folder, whose search.json says which search it is); the three paths, model first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, payload)
    info = load_defended_model(target).info
    record = TrialRecord.from_dict(info)
    search = SearchInfo.read(out)
    card = build_card(CardFacts(
        name=name, model_file=target.name, search=search.name, space=space.name, info=info,
        values=space.values_of(record) if record.params else None,
        space_file=str(out / ARTIFACT.SPACE), storage_path=search.storage_path,
        commit=code_commit(), final=final or FinalFacts()))
    markdown, plain = card_paths(target)
    write_atomic(markdown, card_markdown(card))
    write_atomic(plain, json.dumps(card, indent=2) + "\n")
    return [target, markdown, plain]

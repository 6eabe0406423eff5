"""`proctor train-critic` on the shipped set: the trained critic separates its held-out split well above chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proctor.engine.cli import main
from proctor.engine.cutoffs import CUTOFFS_FILE
from proctor.engine.train_critic import SHIPPED_SET, load_examples, roc_auc, split


def test_shipped_set_size_and_balance() -> None:
    examples = load_examples(SHIPPED_SET)
    assert len(examples) >= 300
    assert {e.relation for e in examples if e.label} == {
        "xWant", "xAttr", "xIntent", "xEffect", "xReact", "xNeed", "HinderedBy"
    }  # fmt: skip
    train, validation = split(examples, 0.2, 0)
    assert not {(e.head, e.relation, e.tail) for e in train} & {(e.head, e.relation, e.tail) for e in validation}


def test_roc_auc() -> None:
    assert roc_auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5


@pytest.mark.timeout(1200)  # a few minutes of fine-tuning on 2 CPU cores
def test_train_critic_separates_held_out_triples(tmp_path: Path) -> None:
    out = tmp_path / "critic"
    assert main(["train-critic", "--output", str(out)]) == 0
    summary = json.loads((out / "proctor_training.json").read_text())
    assert summary["validation_roc_auc"] >= 0.7, summary  # measured 0.77 (CPU, seed 0); chance is 0.5
    assert summary["best_precision_at_recall_0.8"] >= summary["validation_prior"] + 0.15, summary
    levels = json.loads((out / CUTOFFS_FILE).read_text())
    assert levels["high"]["threshold"] >= levels["medium"]["threshold"]
    assert levels["high"]["recall"] >= 0.5 and levels["medium"]["recall"] >= 0.8
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()

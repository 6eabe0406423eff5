"""`proctor train-critic`: fine-tune a critic on labelled triples with the SKD recipe (PAPERS.md §1.3).

One sigmoid output whose bias starts at the prior log-odds of "valid", binary cross-entropy, linear warm-up, early
stopping on precision at 80 % recall on the validation split. Writes an HF folder and `proctor_cutoffs.json`
(the "high" and "medium" cut-offs read off the validation precision-recall curve at recall 0.5 and 0.8).
Input JSONL: one {"head", "relation", "tail", "label": 0|1} per line.
"""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from proctor.engine import cutoffs
from proctor.engine.critic_input import RELATION_PHRASES, triple_pairs
from proctor.engine.models import resolve_model

log = logging.getLogger(__name__)
SHIPPED_SET = Path(__file__).resolve().parent / "data" / "critic_triples.jsonl"


@dataclass(frozen=True)
class Example:
    head: str
    relation: str
    tail: str
    label: bool


@dataclass(frozen=True)
class TrainSettings:
    base_model: str = "builtin:minilm"
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.1
    patience: int = 3
    validation_fraction: float = 0.2
    seed: int = 0


def load_examples(path: Path) -> list[Example]:
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = Example(str(row["head"]), str(row["relation"]), str(row["tail"]), bool(int(row["label"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: expected head, relation, tail, label (0/1): {exc}") from exc
        if example.relation not in RELATION_PHRASES:
            raise ValueError(f"{path}:{number}: unknown relation {example.relation!r}")
        examples.append(example)
    return examples


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Stratified: the validation split keeps the share of valid triples."""
    rng = random.Random(seed)
    train: list[Example] = []
    validation: list[Example] = []
    for label in (True, False):
        group = [e for e in examples if e.label is label]
        rng.shuffle(group)
        cut = max(1, round(len(group) * fraction))
        validation += group[:cut]
        train += group[cut:]
    return train, validation


def precision_at_recall(scores: list[float], labels: list[bool], recall: float = 0.8) -> float:
    return cutoffs.cutoff_at_recall(scores, labels, recall).precision


def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """P(a random valid triple scores above a random invalid one), ties counting half."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _output_layer(model: Any) -> torch.nn.Linear:
    """The classification head's last linear layer (its name differs between architectures)."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
    if not heads:
        raise ValueError("the model has no single-output linear head")
    return heads[-1]


def score(model: Any, tokenizer: Any, examples: list[Example], seed: int, batch_size: int = 64) -> list[float]:
    """Mean over the 5 seeded name draws of P(valid): the same way the Critic service scores a triple."""
    model.eval()
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            pairs = [p for e in chunk for p in triple_pairs(e.head, e.relation, e.tail, seed)]
            enc = tokenizer([p.first for p in pairs], [p.second for p in pairs], padding=True, return_tensors="pt")
            probs = torch.sigmoid(model(**enc).logits[:, 0]).view(len(chunk), -1)
            out.extend(float(p) for p in probs.mean(dim=1))
    return out


def train_critic(data: Path, output: Path, settings: TrainSettings = TrainSettings()) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(settings.seed)
    examples = load_examples(data)
    train, validation = split(examples, settings.validation_fraction, settings.seed)
    if not any(e.label for e in validation) or all(e.label for e in validation):
        raise ValueError("the validation split needs both valid and invalid triples")
    base = resolve_model(settings.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    prior = sum(e.label for e in train) / len(train)
    with torch.no_grad():
        _output_layer(model).bias.fill_(math.log(prior / (1 - prior)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    steps = settings.epochs * math.ceil(len(train) / settings.batch_size)
    warmup = max(1, int(steps * settings.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = random.Random(settings.seed)
    labels = [e.label for e in validation]
    best, best_state, stale, history = -1.0, None, 0, []
    print(f"train-critic: {len(train)} train / {len(validation)} validation triples, prior {prior:.2f}, {base}")
    for epoch in range(1, settings.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = train[:]
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start : start + settings.batch_size]
            # One fresh name draw per example per epoch: the critic learns the pattern, not the names.
            pairs = [triple_pairs(e.head, e.relation, e.tail, rng.randrange(2**31), draws=1)[0] for e in chunk]
            enc = tokenizer([p.first for p in pairs], [p.second for p in pairs], padding=True, return_tensors="pt")
            target = torch.tensor([float(e.label) for e in chunk])
            loss = loss_fn(model(**enc).logits[:, 0], target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        scores = score(model, tokenizer, validation, settings.seed)
        metric = precision_at_recall(scores, labels)
        history.append({"epoch": epoch, "loss": statistics.fmean(losses), "precision_at_recall_0.8": metric})
        print(
            f"epoch {epoch}/{settings.epochs}: loss {statistics.fmean(losses):.4f}, "
            f"validation precision@recall0.8 {metric:.3f} ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        if metric > best:
            best, stale = metric, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                print(f"early stop: no improvement for {settings.patience} epochs")
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    scores = score(model, tokenizer, validation, settings.seed)
    levels = cutoffs.cutoffs(scores, labels)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    report = {
        name: {"threshold": c.threshold, "recall": c.recall, "precision": c.precision} for name, c in levels.items()
    }
    (output / cutoffs.CUTOFFS_FILE).write_text(json.dumps(report, indent=2))
    summary = {
        "data": str(data),
        "train": len(train),
        "validation": len(validation),
        "validation_prior": sum(labels) / len(labels),
        "validation_roc_auc": roc_auc(scores, labels),
        "best_precision_at_recall_0.8": best,
        "cutoffs": report,
        "history": history,
    }
    (output / "proctor_training.json").write_text(json.dumps(summary, indent=2))
    print(f"validation ROC AUC {summary['validation_roc_auc']:.3f} (chance 0.5)")
    for name, c in levels.items():
        print(f"cut-off {name}: {c.threshold:.4f} (validation recall {c.recall:.2f}, precision {c.precision:.2f})")
    return summary

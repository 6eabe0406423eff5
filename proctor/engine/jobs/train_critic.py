"""`proctor train-critic`: fine-tune a critic on labelled triples (paper rules §1.3-1.4).

Two recipes. `skd` is the authors' (their purification code): the encoder's pooled output -> Dense(512) -> GELU ->
Dense(1) -> sigmoid (engine/backends/torch/skd_critic.py), the last bias at the log-odds of the training set's share of
valid triples, Adam at 5e-6, batch 128, 1,000 linear warm-up steps, then the learning rate cut tenfold after 5
epochs without a lower validation loss (Keras' ReduceLROnPlateau defaults, as they used it), early stopping after
10 epochs without a better validation precision at 80 % recall, the best epoch's weights kept; for RoBERTa-class
encoders. `small` is ours, for small encoders on small sets (the built-in demo critic): the encoder's own
one-logit classification head with the same prior bias, AdamW at 1e-4, batch 16, 10 % warm-up then linear decay,
patience 3.

Both: binary cross-entropy, one fresh name draw per triple per epoch, validation scores as the server scores (mean
over 5 seeded name draws). Writes an HF folder and `proctor_cutoffs.json`: the "high" and "medium" cut-offs by the
authors' rule (engine/skd/cutoffs.py) on the validation set, averaged with the test set's when one is given.
Input JSONL: one {"head", "relation", "tail", "label": 0|1} per line.
"""

from __future__ import annotations

import dataclasses
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

from proctor.engine.backends.builtin_models import register_builder, resolve_model
from proctor.engine.skd import cutoffs
from proctor.engine.skd.critic_input import triple_pairs
from proctor.engine.skd.relations import RELATIONS

log = logging.getLogger(__name__)
SHIPPED_SET = Path(__file__).resolve().parents[1] / "data" / "critic_triples.jsonl"
EARLY_STOPPING_RECALL = 0.8


@dataclass(frozen=True)
class Example:
    head: str
    relation: str
    tail: str
    label: bool


@dataclass(frozen=True)
class TrainSettings:
    recipe: str = "small"  # small (ours) | skd (the authors')
    base_model: str = "builtin:minilm"
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-4
    warmup_steps: int = 0  # > 0: this many linear warm-up steps; 0: warmup_fraction of all steps
    warmup_fraction: float = 0.1
    patience: int = 3  # early stopping: epochs without a better validation precision at 80 % recall
    plateau_patience: int = 0  # > 0: reduce-on-plateau (epochs without a lower validation loss); 0: linear decay
    plateau_factor: float = 0.1
    validation_fraction: float = 0.2  # split off the data when no validation file is given
    seed: int = 0


RECIPES = {
    "small": TrainSettings(),
    "skd": TrainSettings(
        recipe="skd",
        epochs=100,
        batch_size=128,
        learning_rate=5e-6,
        warmup_steps=1000,
        patience=10,
        plateau_patience=5,
    ),
}


def recipe(name: str, **overrides: Any) -> TrainSettings:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return dataclasses.replace(RECIPES[name], **overrides)


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
        if example.relation not in RELATIONS:
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


def _model(settings: TrainSettings, base: str) -> Any:
    if settings.recipe == "skd":
        from proctor.engine.backends.torch.skd_critic import from_encoder

        return from_encoder(base)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)


class Schedule:
    """The learning rate per step: linear warm-up, then linear decay (small) or reduce-on-plateau (skd), the
    latter as Keras' ReduceLROnPlateau: after `plateau_patience` epochs whose validation loss is not below the
    best by 1e-4, the rate is multiplied by `plateau_factor` and the count starts again."""

    def __init__(self, settings: TrainSettings, steps: int) -> None:
        self.settings = settings
        self.steps = steps
        self.warmup = settings.warmup_steps or max(1, int(steps * settings.warmup_fraction))
        self.scale = 1.0
        self.best_loss = math.inf
        self.wait = 0

    def rate(self, step: int) -> float:
        s = self.settings
        warm = min(1.0, (step + 1) / self.warmup)
        if s.plateau_patience:
            return s.learning_rate * warm * self.scale
        decay = max(0.0, (self.steps - step) / max(1, self.steps - self.warmup)) if step >= self.warmup else 1.0
        return s.learning_rate * warm * decay

    def end_epoch(self, validation_loss: float) -> None:
        if not self.settings.plateau_patience:
            return
        if validation_loss < self.best_loss - 1e-4:
            self.best_loss, self.wait = validation_loss, 0
            return
        self.wait += 1
        if self.wait >= self.settings.plateau_patience:
            self.scale *= self.settings.plateau_factor
            self.wait = 0


def _bce(scores: list[float], labels: list[bool]) -> float:
    eps = 1e-7
    return -statistics.fmean(
        math.log(min(max(p, eps), 1 - eps)) if y else math.log(min(max(1 - p, eps), 1 - eps))
        for p, y in zip(scores, labels, strict=True)
    )


def _report(c: cutoffs.Cutoff) -> dict[str, Any]:
    return {
        "threshold": c.threshold,
        "validation": dataclasses.asdict(c.validation),
        "test": dataclasses.asdict(c.test) if c.test else None,
    }


@dataclass(frozen=True)
class _Sets:
    train: list[Example]
    validation: list[Example]
    test: list[Example] | None


def _sets(data: Path, settings: TrainSettings, validation_file: Path | None, test_file: Path | None) -> _Sets:
    """The training, validation and test sets; the last two must hold both labels (the cut-offs need both)."""
    examples = load_examples(data)
    if validation_file is not None:
        train, validation = examples, load_examples(validation_file)
    else:
        train, validation = split(examples, settings.validation_fraction, settings.seed)
    test = load_examples(test_file) if test_file is not None else None
    for name, part in (("validation", validation), ("test", test or [])):
        if part and (all(e.label for e in part) or not any(e.label for e in part)):
            raise ValueError(f"the {name} set needs both valid and invalid triples")
    if not validation:
        raise ValueError("the validation set is empty")
    return _Sets(train, validation, test)


def _model_at_prior(settings: TrainSettings, base: str, prior: float) -> Any:
    """The recipe's model, its output bias at the log-odds of the training set's share of valid triples."""
    model = _model(settings, base)
    with torch.no_grad():
        _output_layer(model).bias.fill_(math.log(prior / (1 - prior)))
    return model


class _Trainer:
    """One run's optimiser, schedule and name draws, an epoch at a time."""

    def __init__(self, settings: TrainSettings, model: Any, tokenizer: Any, train: list[Example]) -> None:
        self.settings, self.model, self.tokenizer, self.train = settings, model, tokenizer, train
        if settings.recipe == "skd":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                model.parameters(), lr=settings.learning_rate, eps=1e-7
            )
        else:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
        self.schedule = Schedule(settings, settings.epochs * math.ceil(len(train) / settings.batch_size))
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.rng = random.Random(settings.seed)
        self.step = 0

    def epoch(self) -> float:
        """One pass over the shuffled training set; the mean loss of its batches."""
        self.model.train()
        order = self.train[:]
        self.rng.shuffle(order)
        losses = []
        for start in range(0, len(order), self.settings.batch_size):
            losses.append(self._batch(order[start : start + self.settings.batch_size]))
        return statistics.fmean(losses)

    def _batch(self, chunk: list[Example]) -> float:
        # One fresh name draw per example per epoch: the critic learns the pattern, not the names.
        pairs = [triple_pairs(e.head, e.relation, e.tail, self.rng.randrange(2**31), draws=1)[0] for e in chunk]
        enc = self.tokenizer([p.first for p in pairs], [p.second for p in pairs], padding=True, return_tensors="pt")
        target = torch.tensor([float(e.label) for e in chunk])
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.rate(self.step)
        loss = self.loss_fn(self.model(**enc).logits[:, 0], target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.item())


def _fit(trainer: _Trainer, validation: list[Example]) -> tuple[float, list[dict[str, Any]]]:
    """Epochs until early stopping; the model left at its best epoch. The best validation precision at 80 % recall,
    and each epoch's record."""
    settings, model, tokenizer = trainer.settings, trainer.model, trainer.tokenizer
    labels = [e.label for e in validation]
    best, best_state, stale, history = -1.0, None, 0, []
    for epoch in range(1, settings.epochs + 1):
        t0 = time.perf_counter()
        loss = trainer.epoch()
        scores = score(model, tokenizer, validation, settings.seed)
        metric = cutoffs.best_precision_at_recall(scores, labels, EARLY_STOPPING_RECALL)
        validation_loss = _bce(scores, labels)
        trainer.schedule.end_epoch(validation_loss)
        history.append(
            {
                "epoch": epoch,
                "loss": loss,
                "validation_loss": validation_loss,
                "precision_at_recall_0.8": metric,
                "learning_rate": trainer.schedule.rate(trainer.step),
            }
        )
        print(
            f"epoch {epoch}/{settings.epochs}: loss {loss:.4f}, validation loss "
            f"{validation_loss:.4f}, precision@recall0.8 {metric:.3f} ({time.perf_counter() - t0:.1f}s)",
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
    return best, history


def _cutoff_levels(model: Any, tokenizer: Any, sets: _Sets, seed: int) -> tuple[list[float], dict[str, cutoffs.Cutoff]]:
    """The validation scores, and the cut-offs from them (averaged with the test set's when there is one)."""
    scores = score(model, tokenizer, sets.validation, seed)
    tested = (score(model, tokenizer, sets.test, seed), [e.label for e in sets.test]) if sets.test else None
    return scores, cutoffs.cutoffs(scores, [e.label for e in sets.validation], tested)


def _print_results(summary: dict[str, Any], levels: dict[str, cutoffs.Cutoff]) -> None:
    print(f"validation ROC AUC {summary['validation_roc_auc']:.3f} (chance 0.5)")
    for name, c in levels.items():
        v = c.validation
        print(
            f"cut-off {name}: {c.threshold:.4f} (validation point: recall {v.recall:.2f}, precision {v.precision:.2f})"
        )


def train_critic(
    data: Path,
    output: Path,
    settings: TrainSettings = TrainSettings(),
    validation_file: Path | None = None,
    test_file: Path | None = None,
) -> dict[str, Any]:
    """Train on `data` (less a stratified validation split unless `validation_file` is given); cut-offs from the
    validation set, averaged with `test_file`'s when given."""
    from transformers import AutoTokenizer

    if settings.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {settings.recipe!r}; known: {', '.join(RECIPES)}")
    torch.manual_seed(settings.seed)
    sets = _sets(data, settings, validation_file, test_file)
    base = resolve_model(settings.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    prior = sum(e.label for e in sets.train) / len(sets.train)
    model = _model_at_prior(settings, base, prior)
    print(
        f"train-critic ({settings.recipe} recipe): {len(sets.train)} train / {len(sets.validation)} validation"
        f"{f' / {len(sets.test)} test' if sets.test else ''} triples, prior {prior:.2f}, {base}"
    )
    best, history = _fit(_Trainer(settings, model, tokenizer, sets.train), sets.validation)
    scores, levels = _cutoff_levels(model, tokenizer, sets, settings.seed)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    report = {name: _report(c) for name, c in levels.items()}
    (output / cutoffs.CUTOFFS_FILE).write_text(json.dumps(report, indent=2))
    labels = [e.label for e in sets.validation]
    summary = {
        "data": str(data),
        "recipe": settings.recipe,
        "settings": dataclasses.asdict(settings),
        "train": len(sets.train),
        "validation": len(sets.validation),
        "test": len(sets.test) if sets.test else 0,
        "validation_prior": sum(labels) / len(labels),
        "validation_roc_auc": roc_auc(scores, labels),
        "best_precision_at_recall_0.8": best,
        "cutoffs": report,
        "history": history,
    }
    (output / "proctor_training.json").write_text(json.dumps(summary, indent=2))
    _print_results(summary, levels)
    return summary


def _build_builtin_critic(out: Path) -> None:
    log.info("training the demo critic on the shipped set (once; 2-4 minutes on 2 CPU cores)")
    train_critic(SHIPPED_SET, out)


def register_builtin_critic() -> None:
    """Let builtin:critic be trained on first use (the `proctor` commands that host a server call this)."""
    register_builder("critic", _build_builtin_critic)

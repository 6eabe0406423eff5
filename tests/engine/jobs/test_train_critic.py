"""`proctor train-critic` on the shipped set: the trained critic separates its held-out split well above chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proctor.engine.cli import main
from proctor.engine.jobs.train_critic import RECIPES, SHIPPED_SET, Schedule, load_examples, recipe, roc_auc, split
from proctor.engine.skd.cutoffs import CUTOFFS_FILE


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
    # the authors' rule: the first point of the curve at or below the target recall
    assert levels["high"]["validation"]["recall"] <= 0.5 and levels["medium"]["validation"]["recall"] <= 0.8
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()


def test_the_skd_recipe_is_the_authors() -> None:
    """paper rules §1.4: lr 5e-6, batch 128, 1,000 warm-up steps, reduce-on-plateau, early stopping patience 10."""
    skd = RECIPES["skd"]
    assert (skd.learning_rate, skd.batch_size, skd.warmup_steps, skd.patience) == (5e-6, 128, 1000, 10)
    schedule = Schedule(skd, steps=10**6)
    assert schedule.rate(0) == 5e-6 / 1000 and schedule.rate(499) == 5e-6 / 2 and schedule.rate(999) == 5e-6
    assert schedule.rate(50_000) == 5e-6, "constant after the warm-up until a plateau"
    for loss in (1.0, 0.9, 0.9, 0.95, 0.9, 0.9, 0.9):  # the best is 0.9; then 5 epochs without a lower loss
        schedule.end_epoch(loss)
    assert schedule.rate(50_000) == pytest.approx(5e-7)
    small = Schedule(RECIPES["small"], steps=100)  # ours: 10 % warm-up, then linear decay to 0
    assert small.rate(9) == 1e-4 and small.rate(55) == pytest.approx(1e-4 * 45 / 90) and small.rate(100) == 0.0
    assert recipe("skd", epochs=2).epochs == 2 and recipe("skd", epochs=2).learning_rate == 5e-6


def test_skd_critic_config_takes_the_encoder_as_a_config_or_its_dict() -> None:
    """Built by the class itself (not transformers' newest sub-config machinery), so that it loads on every
    transformers the project runs: CI runs this file under transformers 5.17 too (.ci/run)."""
    from transformers import BertConfig

    from proctor.engine.backends.torch.skd_critic import SkdCriticConfig

    encoder = BertConfig(vocab_size=99, hidden_size=32, max_position_embeddings=64)
    for given in (encoder, encoder.to_dict()):
        config = SkdCriticConfig(encoder=given, head_size=16, num_labels=1)
        assert isinstance(config.encoder, BertConfig) and config.encoder.hidden_size == 32
        assert (config.vocab_size, config.max_position_embeddings, config.num_labels) == (99, 64, 1)
        saved = config.to_dict()
        assert saved["encoder"]["model_type"] == "bert" and saved["head_size"] == 16
        assert SkdCriticConfig.from_dict(saved).encoder.to_dict() == config.encoder.to_dict()
    assert SkdCriticConfig().encoder.model_type == "roberta"  # the authors' encoder when none is named
    with pytest.raises(ValueError, match=r"encoder.*model_type"):
        SkdCriticConfig(encoder={"hidden_size": 32})


async def test_skd_recipe_trains_saves_serves_and_averages_validation_and_test_cutoffs(tmp_path: Path) -> None:
    """The authors' head on the tiny encoder, two epochs: the folder loads as a sequence classifier, the server's
    Critic scores a triple as training scored it, and the cut-offs are the mean of the validation and test ones."""
    import grpc
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from proctor.engine.backends.torch.skd_critic import register
    from proctor.engine.config import Config, CriticConfig, ServerConfig
    from proctor.engine.jobs.train_critic import score
    from proctor.engine.skd import cutoffs
    from proctor.v1 import common_pb2, critic_pb2, critic_pb2_grpc
    from tests.conftest import started

    rows = SHIPPED_SET.read_text().splitlines()
    files = {}
    for name, part in (("train", rows[::3] + rows[1::3]), ("validation", rows[2::6]), ("test", rows[5::6])):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("\n".join(part) + "\n")
    out = tmp_path / "critic"
    args = ["train-critic", "--recipe", "skd", "--base-model", "builtin:tiny-critic", "--epochs", "2",
            "--output", str(out), "--data", str(files["train"]), "--validation", str(files["validation"]),
            "--test", str(files["test"])]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "proctor_skd_critic"
    register()
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    head = [(n, tuple(p.shape)) for n, p in model.named_parameters() if not n.startswith("encoder.")]
    assert head == [
        ("hidden.weight", (512, 32)),
        ("hidden.bias", (512,)),
        ("score.weight", (1, 512)),
        ("score.bias", (1,)),
    ]
    examples = {name: load_examples(files[name]) for name in ("validation", "test")}
    found = {name: score(model, tokenizer, part, 0) for name, part in examples.items()}
    levels = json.loads((out / CUTOFFS_FILE).read_text())
    for level, target in cutoffs.TARGET_RECALLS.items():
        v, t = (
            cutoffs.point_at_recall(found[n], [e.label for e in examples[n]], target) for n in ("validation", "test")
        )
        assert levels[level]["validation"]["threshold"] == pytest.approx(v.threshold, abs=1e-6)
        assert levels[level]["test"]["threshold"] == pytest.approx(t.threshold, abs=1e-6)
        assert levels[level]["threshold"] == pytest.approx((v.threshold + t.threshold) / 2, abs=1e-6)

    server = await started(
        Config(server=ServerConfig(port=0, metrics_port=-1), critic=CriticConfig(model=str(out), device="cpu"))
    )
    try:
        e = examples["validation"][0]
        request = critic_pb2.ClassifyRequest(
            id="t", seed=0, triple=critic_pb2.Triple(head=e.head, relation=common_pb2.Relation.Value(
                {"xWant": "X_WANT", "xAttr": "X_ATTR", "xIntent": "X_INTENT", "xEffect": "X_EFFECT",
                 "xReact": "X_REACT", "xNeed": "X_NEED", "HinderedBy": "HINDERED_BY"}[e.relation]), tail=e.tail),
        )  # fmt: skip
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            [result] = [r async for r in critic_pb2_grpc.CriticStub(channel).Classify(iter([request]))]
        assert not result.HasField("error"), result.error
        assert result.score == pytest.approx(found["validation"][0], abs=1e-5)
        assert result.cutoff == pytest.approx(levels["medium"]["threshold"], abs=1e-6)
    finally:
        await server.drain(grace_s=1)

import torch

from proctor.engine.backends.torch.sampling import RowParams, apply_penalties, apply_top_k_top_p, sample


def _params(b: int, **kw: list[float]) -> RowParams:
    base = {"temperature": [1.0] * b, "top_p": [1.0] * b, "presence_penalty": [0.0] * b, "frequency_penalty": [0.0] * b}
    base.update(kw)
    return RowParams(
        temperature=torch.tensor(base["temperature"]),
        top_p=torch.tensor(base["top_p"]),
        top_k=torch.tensor(kw.get("top_k", [0] * b), dtype=torch.long),
        presence_penalty=torch.tensor(base["presence_penalty"]),
        frequency_penalty=torch.tensor(base["frequency_penalty"]),
    )


def test_top_k_keeps_exactly_k_per_row() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    out = apply_top_k_top_p(logits, torch.tensor([2, 0]), torch.tensor([1.0, 1.0]))
    assert torch.isinf(out[0]).tolist() == [True, False, False, True]
    assert not torch.isinf(out[1]).any()


def test_top_p_keeps_the_smallest_nucleus_and_always_the_top_token() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = ~torch.isinf(apply_top_k_top_p(logits, torch.tensor([0]), torch.tensor([0.8])))
    assert kept.tolist() == [[True, True, False, False]]
    kept = ~torch.isinf(apply_top_k_top_p(logits, torch.tensor([0]), torch.tensor([0.01])))
    assert kept.tolist() == [[True, False, False, False]]


def test_penalties_follow_the_openai_definition() -> None:
    logits = torch.zeros(1, 3)
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    out = apply_penalties(logits, counts, _params(1, presence_penalty=[0.5], frequency_penalty=[0.25]))
    assert torch.allclose(out, torch.tensor([[0.0, -0.75, -1.25]]))


def test_sampling_is_reproducible_per_row_generator_and_greedy_rows_take_the_argmax() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    counts = torch.zeros(3, 50)
    params = _params(3, temperature=[1.0, 0.0, 1.0])

    def draw() -> list[int]:
        gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
        return sample(logits, counts, params, gens).tolist()

    first = draw()
    assert first == draw()
    assert first[1] == int(logits[1].argmax())

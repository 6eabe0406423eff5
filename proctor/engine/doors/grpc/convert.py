"""Proto <-> dataclass helpers shared by the services; every check names the request field it rejects."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

from proctor.engine.errors import ItemError
from proctor.engine.items import BackendInfo, TopK
from proctor.engine.skd import relations
from proctor.engine.version import __version__
from proctor.v1 import common_pb2

_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
}


RELATIONS: dict[common_pb2.Relation.ValueType, str] = {
    common_pb2.Relation.Value(r.enum): r.name for r in relations.RELATIONS.values()
}
RELATION_ENUMS = {name: value for value, name in RELATIONS.items()}


def relation(value: int, field: str) -> str:
    name = RELATIONS.get(common_pb2.Relation.ValueType(value))
    if name is None:
        raise ItemError(f"{value} is not one of the seven relations", field)
    return name


def status(error: ItemError) -> common_pb2.Status:
    return common_pb2.Status(code=_CODES.get(error.code, 2), message=error.message, field=error.field)


def fill_timing(into: common_pb2.Timing, queue_s: float, inference_s: float, total_s: float) -> None:
    """A result's own Timing field, set in place: half the cost of a Timing built apart and copied in."""
    into.queue_ms = queue_s * 1e3
    into.inference_ms = inference_s * 1e3
    into.total_ms = total_s * 1e3


def fill_top_k(into: common_pb2.TopK, top: TopK | None) -> None:
    """`top` written into a result's own TopK field (None leaves it unset). In place, because protobuf copies a
    message it is given as a field: a TopK built apart and then set was every entry converted and copied again."""
    if top is None:
        return
    into.SetInParent()
    into.k = len(top.ids[0]) if top.ids else 0
    into.token_ids.extend(chain.from_iterable(top.ids))
    into.logprobs.extend(chain.from_iterable(top.logprobs))


def probe_rows(probes: Sequence[common_pb2.TokenIds]) -> list[list[int]] | None:
    """ScoreRequest.probes as the core takes them: None when there are none."""
    return [list(p.ids) for p in probes] if probes else None


def flat(rows: list[list[float]] | None) -> list[float] | None:
    """Rows of floats as one repeated field, row by row (None: the field left empty)."""
    return list(chain.from_iterable(rows)) if rows else None


def model_info(
    service: str, info: BackendInfo | None, extra: dict[str, str], max_prompt_tokens: int = 0
) -> common_pb2.ModelInfo:
    """Info's answer; `info` None for a service with no model (rules-only rewards)."""
    if info is None:
        return common_pb2.ModelInfo(service=service, model="(no model)", version=__version__, extra=extra)
    return common_pb2.ModelInfo(
        service=service,
        model=info.model,
        backend=info.backend,
        dtype=info.dtype,
        device=info.device,
        tokenizer=info.tokenizer,
        vocab_size=info.vocab_size,
        max_model_len=info.max_model_len,
        max_prompt_tokens=max_prompt_tokens or info.max_model_len,
        version=__version__,
        extra=extra,
    )

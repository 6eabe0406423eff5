"""The seven relations of SKD (paper rules §1.2-1.3), one row each: the name, the wire's enum, the inference
prompt's template and the critic's phrase. Every place that speaks of relations (the prompts, the critic input, the
services' proto mapping, `proctor distill`, the config) reads this table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    name: str
    """ATOMIC's name (xWant), as the config, the corpus and the critic's training set spell it"""
    enum: str
    """the wire's name of it (`proctor.v1.Relation`, X_WANT); services map it to the proto value"""
    prefix: str
    """the inference prompt's first line (paper rules §1.2)"""
    example: str
    """a worked example of the inference prompt; placeholders {n}, {head}, {tail}"""
    critic_phrase: str
    """what joins head and tail in the critic's sentence pair (paper rules §1.3)"""

    def open_slot(self, n: int, head: str) -> str:
        """The example cut just before ` {tail}`: the teacher writes the tail from here."""
        cut = self.example.index(" {tail}")
        return self.example[:cut].format(n=n, head=head)


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "xWant",
            "X_WANT",
            "How does this situation affect each character's wants?\n\n\n",
            "Situation {n}: {head}.\n\nWants: As a result, PersonX wants {tail}.\n\n",
            "as a result, PersonX wants",
        ),
        Relation(
            "xAttr",
            "X_ATTR",
            "Next, we will discuss how people are seen in different situations. Examples:\n\n\n",
            "{n}. When {head}, people think PersonX is {tail}.\n\n",
            "so, PersonX is seen as",
        ),
        Relation(
            "xIntent",
            "X_INTENT",
            "For each event, what do the characters want?\n\n\n",
            '{n}. \n\nEvent: {head}.\n\nIntention: "{head}" because PersonX wants {tail}.\n\n',
            "because PersonX wanted",
        ),
        Relation(
            "xEffect",
            "X_EFFECT",
            "What is the result?\n\n\n",
            "{n}.\n\nevent: {head}\n\noutcome: PersonX {tail}\n\n",
            "as a result, PersonX",
        ),
        Relation(
            "xReact",
            "X_REACT",
            "Next, how do people feel in each situation? Examples:\n\n\n",
            "Situation {n}: {head}.\n\nPersonX feels: {tail}.\n\n",
            "as a result, PersonX feels",
        ),
        Relation(
            "xNeed",
            "X_NEED",
            "What needs to be true for this event to take place?\n\n\n",
            "Event {n}.: {head}\n\nPrerequisites: For this to happen, PersonX needed {tail}.\n\n",
            "but before, PersonX needed",
        ),
        Relation(
            "HinderedBy",
            "HINDERED_BY",
            "What condition stops this event from occurring?\n\n\n",
            '{n}. Event: {head}.\n\nCondition: "{head}" is untrue because {tail}.\n\n\n',
            "can be hindered by",
        ),
    )
}

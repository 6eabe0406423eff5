from proctor.v1 import generate


def test_regenerating_the_contract_is_byte_identical() -> None:
    assert generate.differences() == []


def test_every_service_of_the_design_is_in_the_contract() -> None:
    from proctor.v1 import critic_pb2, reward_pb2, teacher_pb2

    methods = {
        s.full_name: sorted(m.name for m in s.methods)
        for f in (teacher_pb2, critic_pb2, reward_pb2)
        for s in f.DESCRIPTOR.services_by_name.values()
    }
    assert methods == {
        "proctor.v1.Teacher": ["Generate", "GenerateTriples", "Info", "Score", "ScoreBatched"],
        "proctor.v1.Critic": ["Classify", "ClassifyBatched", "Info"],  # *Batched: many items per message
        "proctor.v1.RewardModel": ["Info", "Reward", "RewardBatched"],
    }

"""data/make_skill_pairs.py: the Etude example's preference pairs, and the committed files they must equal."""
import json

from data.make_skill_pairs import make_pair_splits
from tests.conftest import REPO


def answer(instruction: str, words: list[str]) -> str:
    return " ".join({"first": words[:1], "last": words[-1:], "repeat": words, "reverse": words[::-1]}[instruction])


def test_each_pair_chooses_its_instructions_answer_and_rejects_another_instructions():
    train, evals = make_pair_splits(400, 100, seed=3)
    for row in train + evals:
        instruction, words = row["prompt"].split(": ")[0], row["prompt"].split(": ")[1].split()
        assert row["chosen"] == answer(instruction, words) != row["rejected"]
        assert row["rejected"] in {answer(other, words) for other in ("first", "last", "repeat", "reverse")}
    instructions = [row["prompt"].split(":")[0] for row in train]
    assert 0.4 < instructions.count("first") / len(train) < 0.6  # keep_share 0.5: the rest keep the SFT skills
    assert {row["prompt"] for row in train}.isdisjoint(row["prompt"] for row in evals)


def test_keep_share_zero_asks_only_first():
    train, _ = make_pair_splits(50, 0, keep_share=0.0)
    assert all(row["prompt"].startswith("first: ") for row in train)


def test_committed_pairs_are_what_the_script_writes():
    train, evals = make_pair_splits(1000, 100)
    for name, rows in (("train", train), ("eval", evals)):
        lines = (REPO / "data" / "skill_pairs" / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == rows

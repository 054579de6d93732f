"""Write data/skill_pairs/{train,eval}.jsonl: preference pairs for the Etude example's DPO stage.

The skills SFT data (make_skills.py) never shows the instruction "first:", so a model fine-tuned on it can only guess
what "first: apple river stone" asks for; it answers like a skill it knows. Each pair prefers the first word
("apple") to such a guess: the last word ("stone", the skill "last") or the whole list ("apple river stone", the skill
"repeat"). DPO then has something to change that a tiny model can learn in a few hundred CPU steps. The eval pairs'
word lists are never in the train pairs, so held-out preference accuracy measures the preference, not memory.

    python data/make_skill_pairs.py [--n_train 1000] [--n_eval 100] [--seed 0] [--out data/skill_pairs]
"""
import argparse
import random
from pathlib import Path

try:  # the same words as the SFT data
    from data.make_skills import SKILLS, WORDS, write_splits  # imported from the repository root (the tests)
except ImportError:
    from make_skills import SKILLS, WORDS, write_splits  # run as a script: this folder is first on sys.path


def pair(words: list[str], rng: random.Random, keep_share: float) -> dict:
    """trl's string shape: an instruction over `words`, its answer chosen and another instruction's answer rejected.
    The instruction is "first:" except with probability keep_share, where it is one of the SFT skills: those pairs
    keep what the model knows while it learns "first:" (without them it answers every instruction with a first
    word)."""
    ask = rng.choice(SKILLS) if rng.random() < keep_share else "first"
    answers = {name: " ".join(answer) for name, answer in
               (("first", words[:1]), ("last", words[-1:]), ("repeat", words), ("reverse", words[::-1]))}
    wrong = [answer for name, answer in answers.items() if name != ask]
    return {"prompt": f"{ask}: " + " ".join(words), "chosen": answers[ask], "rejected": rng.choice(wrong)}


def make_pair_splits(n_train: int, n_eval: int, seed: int = 0, max_words: int = 4, keep_share: float = 0.5):
    """(train pairs, eval pairs); every word list occurs once, so no eval prompt is trained on."""
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_train + n_eval:
        words = rng.sample(WORDS, rng.randint(2, max_words))
        if tuple(words) not in seen:  # a repeat draws no rejected answer, so the data stays as published
            seen.add(tuple(words))
            rows.append(pair(words, rng, keep_share))
    return rows[:n_train], rows[n_train:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_train", type=int, default=1000)
    parser.add_argument("--n_eval", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep_share", type=float, default=0.5,
                        help='share of pairs on the SFT skills, which keep them (0: only "first:")')
    parser.add_argument("--out", default=str(Path(__file__).parent / "skill_pairs"))
    args = parser.parse_args()
    train, evals = make_pair_splits(args.n_train, args.n_eval, args.seed, keep_share=args.keep_share)
    out = Path(args.out)
    write_splits(out, train, evals)
    print(f"wrote {len(train)} train and {len(evals)} eval pairs to {out}")


if __name__ == "__main__":
    main()

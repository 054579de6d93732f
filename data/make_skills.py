"""Write data/skills/{train,eval}.jsonl: small synthetic chat skills this project generates itself.

Three skills a small model can learn from scratch on a CPU in minutes: repeat a list of words, reverse it, and
name its last word. The eval split holds word lists never seen in training, so a before/after score measures a
learned skill, not a memorised answer. make_splits is the same generator for other uses (the real-model tests
train SmolLM2 on one skill of it).

    python data/make_skills.py [--n_train 2000] [--n_eval 200] [--seed 0] [--skills repeat reverse last]
                               [--max_words 4] [--out data/skills] [--no_tokenizer]
"""
import argparse
import json
import random
from pathlib import Path

WORDS = ("apple river stone cloud tiger piano green silver orange window garden rocket candle forest violin "
         "bread mountain ocean pencil yellow winter summer castle dragon letter mirror planet rabbit shadow spring "
         "thunder valley bridge coffee desert engine flower island jacket kitten").split()


SKILLS = ("repeat", "reverse", "last")


def sample(rng: random.Random, skills=SKILLS, max_words: int = 4) -> dict:
    skill = rng.choice(skills)
    words = rng.sample(WORDS, rng.randint(2, max_words))
    answer = {"repeat": words, "reverse": words[::-1], "last": words[-1:]}[skill]
    prompt = f"{skill}: " + " ".join(words)
    answer = " ".join(answer)
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def make_splits(n_train: int, n_eval: int, seed: int = 0, skills=SKILLS, max_words: int = 4):
    """(train rows, eval rows) in OpenAI messages format; every prompt occurs once, so no eval prompt is trained on."""
    rng = random.Random(seed)
    return unique_splits(n_train, n_eval, lambda: sample(rng, skills, max_words), lambda r: r["messages"][0]["content"])


def unique_splits(n_train: int, n_eval: int, draw, key):
    """(train rows, eval rows) from draw(), no two rows with the same key(row): no eval prompt is trained on."""
    seen, rows = set(), []
    while len(rows) < n_train + n_eval:
        row = draw()
        if key(row) not in seen:
            seen.add(key(row))
            rows.append(row)
    return rows[:n_train], rows[n_train:]


def write_splits(out: Path, train: list, evals: list) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("eval", evals)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skills", nargs="+", default=list(SKILLS), choices=SKILLS)
    parser.add_argument("--max_words", type=int, default=4, help="longest word list (2 to this many words)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "skills"))
    parser.add_argument("--no_tokenizer", action="store_true",
                        help="skip the small tokenizer (only a model trained from scratch needs it)")
    args = parser.parse_args()
    if not 2 <= args.max_words <= len(WORDS):
        parser.error(f"--max_words must be in [2, {len(WORDS)}], got {args.max_words}")
    train, evals = make_splits(args.n_train, args.n_eval, args.seed, tuple(args.skills), args.max_words)
    out = Path(args.out)
    write_splits(out, train, evals)
    print(f"wrote {args.n_train} train and {args.n_eval} eval samples to {out}")
    if not args.no_tokenizer:
        train_small_tokenizer(train, out / "tokenizer")


def train_small_tokenizer(rows, folder: Path, vocab_size: int = 512) -> None:
    """A byte-level BPE fitted to the training texts: with a few hundred tokens instead of GPT-2's 50k, the default
    run's model spends its compute on the transformer, not on a 50k-way softmax, and learns on a CPU in minutes."""
    import tempfile

    from etude_model.train_tokenizer import train_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(m["content"] for r in rows for m in r["messages"]), encoding="utf-8")
        tokenizer = train_tokenizer([str(corpus)], vocab_size=vocab_size, min_frequency=2, text_split="line")
    tokenizer.save_pretrained(folder)
    print(f"wrote a {len(tokenizer)}-token tokenizer to {folder}")


if __name__ == "__main__":
    main()

"""Write data/skills/{train,eval}.jsonl: small synthetic chat skills this project generates itself.

Three skills a ~10M model can learn on a CPU in minutes: add two numbers, reverse a list of words, upper-case a
word. The eval split holds prompts never seen in training, so a before/after score means something.

    python data/make_skills.py [--n_train 2000] [--n_eval 200] [--seed 0]
"""
import argparse
import json
import random
from pathlib import Path

WORDS = ("apple river stone cloud tiger piano green silver orange window garden rocket candle forest violin "
         "bread mountain ocean pencil yellow").split()


def sample(rng: random.Random) -> dict:
    skill = rng.choice(("add", "reverse", "upper"))
    if skill == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        prompt, answer = f"add {a} {b}", str(a + b)
    elif skill == "reverse":
        words = rng.sample(WORDS, rng.randint(2, 4))
        prompt, answer = "reverse: " + " ".join(words), " ".join(reversed(words))
    else:
        word = rng.choice(WORDS)
        prompt, answer = f"upper: {word}", word.upper()
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "skills"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    seen, rows = set(), []
    while len(rows) < args.n_train + args.n_eval:
        row = sample(rng)
        key = row["messages"][0]["content"]
        if key not in seen:  # every prompt once: eval prompts are never trained on
            seen.add(key)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:args.n_train]), ("eval", rows[args.n_train:])):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    print(f"wrote {args.n_train} train and {args.n_eval} eval samples to {out}")


if __name__ == "__main__":
    main()

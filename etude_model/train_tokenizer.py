"""Train a small byte-level BPE tokenizer on your own corpus.

    python -m etude_model.train_tokenizer --data corpus.txt more.jsonl --vocab_size 6400 --output_dir tok/

Why: GPT-2's 50k vocabulary makes a tiny model mostly embedding (50304 x d parameters), and it
splits Chinese into 1-3 byte tokens per character. A 6400-token vocabulary trained on the data you
will pretrain on gives a smaller model and shorter sequences. Same pipeline as GPT-2 (byte-level
pre-tokenizer, so any text can be encoded, no unknown token) and the same special tokens as the
Etude tokenizer, here at ids 0-3: <|endoftext|> <|im_start|> <|im_end|> <|pad|>. The result is a
`PreTrainedTokenizerFast` folder: pass it to `python -m etude_model.pretrain --tokenizer DIR`.
"""

from __future__ import annotations

import argparse

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .data import iter_documents, list_data_files
from .tokenizer import SPECIAL_TOKENS, wrap_tokenizer


def train_tokenizer(data, vocab_size: int = 6400, min_frequency: int = 2, text_split: str = "paragraph",
                    model_max_length: int = 1024, show_progress: bool = True) -> PreTrainedTokenizerFast:
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens)")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    backend.train_from_iterator(iter_documents(list_data_files(data), text_split), trainer=trainer)
    return wrap_tokenizer(backend, model_max_length=model_max_length)


def main(argv=None) -> PreTrainedTokenizerFast:
    p = argparse.ArgumentParser(prog="python -m etude_model.train_tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help=".txt / .jsonl files or folders (same rules as pretraining)")
    p.add_argument("--vocab_size", type=int, default=6400, help="size including the 4 special tokens (default: %(default)s)")
    p.add_argument("--min_frequency", type=int, default=2, help="a merge must occur at least this often (default: %(default)s)")
    p.add_argument("--text_split", default="paragraph", choices=["paragraph", "line"],
                   help=".txt documents: blank-line separated paragraphs, or lines (default: %(default)s)")
    p.add_argument("--model_max_length", type=int, default=1024, help="recorded in the tokenizer config (default: %(default)s)")
    p.add_argument("--output_dir", required=True, help="folder to save the tokenizer in")
    args = p.parse_args(argv)
    tok = train_tokenizer(args.data, args.vocab_size, args.min_frequency, args.text_split, args.model_max_length)
    tok.save_pretrained(args.output_dir)
    sample = "Hello world! 你好，世界。"
    print(f"saved {len(tok)}-token tokenizer to {args.output_dir}; {sample!r} -> {tok(sample)['input_ids']}")
    return tok


if __name__ == "__main__":
    main()

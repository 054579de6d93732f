"""utils/score.py: the exact-match score on held-out prompts, with an answer budget bounded by the references."""
from __future__ import annotations

from transformers import AutoModelForCausalLM

from utils.data import load_conversations
from utils.score import BUDGET_MARGIN, answer_budget, exact_match
from utils.tokenizer import load_tokenizer


def test_exact_match_generates_with_sdpa_under_varlen_and_restores_it(tiny_model, toy_data):
    """attn_implementation varlen attends within packed training rows, and generation feeds left-padded batches:
    the score of a varlen model (qwen_lora_fast with --score_data_path) generates through sdpa, gives the answers
    of an sdpa model, and leaves the model on varlen for training."""
    model_dir = tiny_model("qwen")
    tokenizer = load_tokenizer(str(model_dir))
    conversations = load_conversations(str(toy_data))
    scores = {}
    for attention in ("sdpa", "varlen"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention)
        scores[attention] = exact_match(model, tokenizer, conversations, "qwen", max_new_tokens=6)
        assert model.config._attn_implementation == attention
    assert scores["varlen"] == scores["sdpa"] and len(scores["sdpa"][1]) == len(conversations)


def test_score_budget_is_the_longest_reference_plus_a_margin(tiny_model, toy_data):
    tokenizer = load_tokenizer(str(tiny_model("qwen")))
    conversations = load_conversations(str(toy_data))
    longest = max(len(tokenizer(c.messages[-1]["content"], add_special_tokens=False)["input_ids"])
                  for c in conversations)
    assert answer_budget(tokenizer, conversations) == longest + BUDGET_MARGIN

"""Exact-match score on held-out prompts: does the model now give the answer, and stop?

The loss says the model got closer; this says whether it is right. Each held-out conversation's final assistant
turn is the reference; the model answers the conversation before it greedily, and an answer counts when it equals
the reference after stripping whitespace (a model that does not stop at the end of its turn fails).

An answer can match only if it is about as long as its reference, so generation is capped at the longest
reference's token count plus a small margin (answer_budget): an untrained model that never stops then costs a
few tokens per prompt, not a long ramble.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

import chat_template
from utils.attention import NAME as VARLEN
from utils.run_folder import rank0

GENERATION_ATTENTION = "sdpa"  # varlen attends within packed training rows; generation feeds left-padded batches
BUDGET_MARGIN = 4  # tokens beyond the longest reference: another tokenization of the same text, and the stop


def answer_budget(tokenizer, conversations) -> int:
    """max_new_tokens that lets every reference answer be generated and stop: its tokens plus BUDGET_MARGIN."""
    lengths = [len(tokenizer(c.messages[-1]["content"], add_special_tokens=False)["input_ids"]) for c in conversations]
    return max(lengths, default=0) + BUDGET_MARGIN


def keep_4bit_layout(model) -> None:
    """bitsandbytes, on CPUs with AVX512-BF16, repacks a 4-bit weight for its inference kernel at the first forward
    in eval mode without grad, and keeps it repacked: QLoRA training after a score (the "before" half) then computes
    with a layout its training path does not read (loss ~6 instead of ~2 on SmolLM2). Scoring keeps the layout."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


@torch.no_grad()
def exact_match(model, tokenizer, conversations, template_name: str, max_new_tokens: int = 0,
                batch_size: int = 32) -> tuple[float, list[tuple[str, str, str]]]:
    """(accuracy, [(prompt, reference, answer), ...]); max_new_tokens 0: answer_budget of the conversations."""
    max_new_tokens = max_new_tokens or answer_budget(tokenizer, conversations)
    stops = chat_template.stop_token_ids(tokenizer, template_name)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    was_training, use_cache, attention = model.training, model.config.use_cache, model.config._attn_implementation
    keep_4bit_layout(model)
    model.eval()
    model.config.use_cache = True
    if attention == VARLEN:
        model.set_attn_implementation(GENERATION_ATTENTION)
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start:start + batch_size]
        prompts = [chat_template.encode(c.messages[:-1], tokenizer, template_name, add_generation_prompt=True,
                                        tools=c.tools)["input_ids"] for c in batch]
        width = max(map(len, prompts))  # left padding: every prompt ends where generation starts
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stops, pad_token_id=pad)
        for conv, row in zip(batch, out[:, width:].tolist()):
            stopped = any(t in stops for t in row)
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            answer = text if stopped else text + " [did not stop]"
            results.append((conv.messages[-2]["content"], conv.messages[-1]["content"].strip(), answer))
    model.train(was_training)
    model.config.use_cache = use_cache
    if attention == VARLEN:
        model.set_attn_implementation(VARLEN)
    accuracy = sum(ref == ans for _, ref, ans in results) / max(1, len(results))
    return accuracy, results


def write_score(path: Path, before, after) -> None:
    """score.json: the accuracies (before is null when not scored) and every answer after training."""
    record = {"before": before[0] if before else None, "after": after[0],
              "answers": [{"prompt": p, "reference": r, "answer": a} for p, r, a in after[1]]}
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")


def score_held_out(model, tokenizer, template_name: str, conversations, args, when: str, log):
    """exact_match of the held-out conversations, logged with three examples: (accuracy, results); None when there
    is nothing to score or on ranks other than 0."""
    if not conversations or not rank0():
        return None
    accuracy, results = exact_match(model, tokenizer, conversations, template_name, args.score_max_new_tokens)
    examples = "\n".join(f"  {p!r} -> {a!r} (expected {r!r})" for p, r, a in results[:3])
    log(f"exact match {when}: {accuracy:.1%} of {len(results)} held-out prompts, e.g.\n{examples}")
    return accuracy, results


def finish_score(output_dir, before, after, log) -> None:
    """Logs the change (when scored before and after) and writes score.json (when scored after)."""
    if after is None:
        return
    if before is not None:
        log(f"held-out exact match: {before[0]:.1%} before -> {after[0]:.1%} after training ({len(after[1])} "
            "prompts)")
    write_score(Path(output_dir) / "score.json", before, after)

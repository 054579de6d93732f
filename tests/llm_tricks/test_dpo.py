"""dpo_loss == a real trl 1.16 DPOTrainer's loss; simpo_loss == trl's CPOTrainer.cpo_loss(loss_type="simpo").

trl 1.16 computes the DPO loss inline in `DPOTrainer._compute_loss` (model forward included), so the
reference is a real DPOTrainer built on a tiny random Qwen2 policy, a tiny random reference model and a
word-level tokenizer made on the spot (no download). SimPO lives in trl's experimental CPOTrainer, whose
`cpo_loss` takes log-probs; it only reads a few attributes of `self`, so we call it unbound on a namespace
holding exactly those (the values a CPOTrainer would hold).
"""

import random
import warnings
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from tricks_testutils import assert_close

from llm_tricks.dpo.dpo import completion_logps, dpo_loss, simpo_loss

WORDS = [f"w{i}" for i in range(60)]


def _tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _model(vocab_size):
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    return Qwen2ForCausalLM(config)


def _text(n):
    return " ".join(random.choices(WORDS, k=n))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_trl_dpo_trainer(tmp_path, beta):
    from trl import DPOConfig, DPOTrainer

    tok = _tokenizer()
    policy, reference = _model(len(tok)), _model(len(tok))
    pairs = 4
    data = Dataset.from_dict({
        "prompt": [_text(random.randint(2, 6)) + " " for _ in range(pairs)],
        "chosen": [_text(random.randint(1, 7)) for _ in range(pairs)],
        "rejected": [_text(random.randint(1, 7)) for _ in range(pairs)],
    })
    args = DPOConfig(
        output_dir=str(tmp_path), beta=beta, loss_type=["sigmoid"], per_device_train_batch_size=pairs,
        report_to="none", use_cpu=True, dataset_num_proc=None, max_length=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(pairs)])  # [chosen; rejected]
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
        logps = [
            completion_logps(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["input_ids"], batch["completion_mask"])
            for m in (policy, reference)
        ]
    (policy_chosen, policy_rejected), (ref_chosen, ref_rejected) = (lp.chunk(2) for lp in logps)
    losses, _, _ = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)
    assert_close(losses.mean(), trl_loss, what="DPO loss")
    assert batch["completion_mask"].sum() < batch["attention_mask"].sum()  # prompts really are excluded


def test_dpo_loss_properties():
    pc, pr, rc, rr = (torch.randn(16) * 5 for _ in range(4))
    losses, chosen_reward, rejected_reward = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert_close(losses, torch.nn.functional.softplus(-(chosen_reward - rejected_reward)))
    same, _, _ = dpo_loss(rc, rr, rc, rr, beta=0.1)  # policy == reference: log(2) per pair
    assert_close(same, torch.full_like(same, torch.log(torch.tensor(2.0)).item()))


def _cpo_self(beta, gamma):
    """The attributes CPOTrainer.cpo_loss reads, as a CPOTrainer with loss_type="simpo" would set them."""
    return SimpleNamespace(alpha=0.0, beta=beta, simpo_gamma=gamma, label_smoothing=0.0, loss_type="simpo",
                           accelerator=SimpleNamespace(device=torch.device("cpu")))


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (2.5, 1.4), (0.1, 0.0)])
def test_simpo_loss_equals_trl_cpo_trainer(beta, gamma):
    from trl.experimental.cpo import CPOTrainer

    batch, seq, vocab = 3, 10, 50
    logits = torch.randn(2 * batch, seq, vocab)
    ids = torch.randint(0, vocab, (2 * batch, seq))
    mask = torch.zeros(2 * batch, seq, dtype=torch.long)
    for row in range(2 * batch):  # random prompt length, random completion length, right padding
        start = random.randint(1, 4)
        mask[row, start: random.randint(start + 1, seq)] = 1
    avg = completion_logps(logits, ids, mask, average=True)
    labels = ids.masked_fill(mask == 0, -100)  # trl's convention for "do not score"
    assert_close(avg, CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True), what="average log-probs")
    chosen, rejected = avg.chunk(2)
    ref_losses, _, _ = CPOTrainer.cpo_loss(_cpo_self(beta, gamma), chosen, rejected)
    assert_close(simpo_loss(chosen, rejected, beta=beta, gamma=gamma), ref_losses, what="SimPO loss")

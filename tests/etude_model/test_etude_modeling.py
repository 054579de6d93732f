"""The Etude architecture: every preset family trains, saves/loads, and generates correctly."""

import inspect

import pytest
import torch
import torch.nn.functional as F

import etude_model  # noqa: F401  (registers the "etude" model type with the Auto classes)
from etude_model import PRESETS, EtudeConfig, EtudeForCausalLM, count_parameters, make_config

FAMILIES = ["etude-v0.1", "etude-tiny", "etude-350m"]  # GPT-2 recipe, modern recipe, modern + QK-norm


def _batch(vocab=320, shape=(2, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, shape, generator=g)


@pytest.mark.parametrize("preset", FAMILIES)
def test_forward_backward(preset, make_tiny_config):
    torch.manual_seed(0)
    config = make_tiny_config(preset)
    model = EtudeForCausalLM(config)
    x = _batch()
    out = model(input_ids=x, labels=x)
    assert out.logits.shape == (2, 16, config.vocab_size)
    assert torch.isfinite(out.loss) and abs(out.loss.item() - torch.log(torch.tensor(320.0)).item()) < 1.0
    assert out.aux_loss is None
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == config.tie_word_embeddings
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"} <= names


def test_preset_recipes():
    v01 = make_config("etude-v0.1")
    assert (v01.max_position_embeddings, v01.num_hidden_layers, v01.num_attention_heads, v01.hidden_size,
            v01.vocab_size) == (512, 6, 12, 768, 50257)
    assert (v01.position_embedding_type, v01.norm_type, v01.mlp_type, v01.tie_word_embeddings) == (
        "learned", "layernorm", "gelu", False)
    assert (v01.n_embd, v01.n_layer, v01.n_head, v01.block_size) == (768, 6, 12, 512)  # nanoGPT aliases
    for name in ["etude-tiny", "etude-small", "etude-124m", "etude-350m"]:
        c = make_config(name)
        assert (c.position_embedding_type, c.norm_type, c.mlp_type, c.tie_word_embeddings) == (
            "rope", "rmsnorm", "swiglu", True)
        assert c.num_key_value_heads < c.num_attention_heads and c.vocab_size == 50304
    c124 = make_config("etude-124m")
    assert (c124.num_hidden_layers, c124.hidden_size, c124.num_attention_heads, c124.max_position_embeddings) == (
        12, 768, 12, 1024)
    sizes = {name: count_parameters(make_config(name))["total"] for name in PRESETS}
    assert 8e6 < sizes["etude-tiny"] < 20e6 and 30e6 < sizes["etude-small"] <= 50e6
    assert 100e6 < sizes["etude-124m"] < 130e6 and 300e6 < sizes["etude-350m"] < 400e6
    with pytest.raises(ValueError, match="Unknown preset"):
        make_config("etude-7b")
    with pytest.raises(ValueError, match="divisible"):
        EtudeConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=3)


def test_labels_shift_ignore_index_and_num_items(make_tiny_config):
    torch.manual_seed(0)
    model = EtudeForCausalLM(make_tiny_config("etude-tiny"))
    x = _batch()
    labels = x.clone()
    labels[0, :5] = -100  # e.g. a prompt that is not trained on
    out = model(input_ids=x, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 320)
    target = labels[:, 1:].reshape(-1)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, target, ignore_index=-100))
    n_items = int((labels[:, 1:] != -100).sum())
    summed = model(input_ids=x, labels=labels, num_items_in_batch=torch.tensor(3 * n_items)).loss
    torch.testing.assert_close(summed * 3, out.loss)
    # The HF Trainer forwards num_items_in_batch only if the model says it accepts loss kwargs.
    assert EtudeForCausalLM.accepts_loss_kwargs and model.loss_type == "ForCausalLM"
    params = inspect.signature(EtudeForCausalLM.forward).parameters.values()
    assert any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def test_moe_aux_loss(make_tiny_config):
    torch.manual_seed(0)
    config = make_tiny_config("etude-tiny-moe")
    model = EtudeForCausalLM(config)
    x = _batch()
    out = model(input_ids=x, labels=x)
    assert out.aux_loss is not None and out.aux_loss.requires_grad
    assert 1.0 <= out.aux_loss.item() < config.num_experts  # 1.0 = perfectly balanced routing
    lm_only = F.cross_entropy(out.logits[:, :-1].reshape(-1, 320), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, lm_only + config.router_aux_loss_coef * out.aux_loss)
    out.aux_loss.backward()  # the balancing loss alone trains the routers
    router_grads = [layer.mlp.router.weight.grad for layer in model.model.layers]
    assert all(g is not None and g.abs().sum() > 0 for g in router_grads)
    model.zero_grad()
    model(input_ids=x, labels=x).loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("preset", ["etude-v0.1", "etude-tiny", "etude-tiny-moe"])
def test_save_load_round_trip(preset, make_tiny_config, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = EtudeForCausalLM(make_tiny_config(preset, training_stage="sft")).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "etude"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code needed
    assert type(loaded) is EtudeForCausalLM and loaded.config.training_stage == "sft"
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == loaded.config.tie_word_embeddings
    x = _batch()
    with torch.no_grad():
        # Same weights; only float summation order may differ (loaded tensors live in other memory).
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", ["etude-v0.1", "etude-tiny"])
def test_generate_with_cache_equals_greedy_without(preset, make_tiny_config):
    torch.manual_seed(0)
    # eos_token_id=None: an untrained model may emit EOS at any time, and we want all 20 tokens
    model = EtudeForCausalLM(make_tiny_config(preset, eos_token_id=None)).eval()
    prompt = _batch(shape=(1, 6))
    cached = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=False)
    ids = prompt  # plain greedy decoding: rerun the full sequence, take the argmax
    with torch.no_grad():
        for _ in range(20):
            ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert cached.shape == (1, 26)
    assert torch.equal(cached, ids) and torch.equal(uncached, ids)


def test_batched_generation_with_left_padding(make_tiny_config):
    torch.manual_seed(0)
    model = EtudeForCausalLM(make_tiny_config("etude-tiny", eos_token_id=None)).eval()
    long, short = _batch(shape=(1, 7), seed=1), _batch(shape=(1, 4), seed=2)
    pad = model.config.pad_token_id
    batch = torch.cat([long, torch.cat([torch.full((1, 3), pad), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    together = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)
    alone_long = model.generate(long, max_new_tokens=10, do_sample=False)
    alone_short = model.generate(short, max_new_tokens=10, do_sample=False)
    assert torch.equal(together[0], alone_long[0])
    assert torch.equal(together[1, 3:], alone_short[0])


def test_gradient_checkpointing_gives_same_gradients(make_tiny_config):
    torch.manual_seed(0)
    config = make_tiny_config("etude-tiny-moe")
    plain, ckpt = EtudeForCausalLM(config), EtudeForCausalLM(config)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.activation_checkpointing_enable()  # transformers 5 name of gradient_checkpointing_enable
    assert all(layer.gradient_checkpointing for layer in ckpt.model.layers)
    x = _batch()
    for m in (plain, ckpt):
        m.train()
        m(input_ids=x, labels=x).loss.backward()
    for (name, p1), p2 in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, msg=name)


def test_learned_positions_refuse_too_long_input(make_tiny_config):
    model = EtudeForCausalLM(make_tiny_config("etude-v0.1", max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(_batch(shape=(1, 9)))


def test_learned_positions_check_does_not_read_the_gpu_for_its_own_positions(make_tiny_config):
    """Without position_ids the last position is known on the host: no int(tensor) (a GPU sync per
    micro-batch, and a graph break under torch.compile). Caller-given ids are still checked."""
    model = EtudeForCausalLM(make_tiny_config("etude-v0.1", max_position_embeddings=8))
    reads = []
    original = torch.Tensor.__int__
    try:
        torch.Tensor.__int__ = lambda t: reads.append(t) or original(t)
        model(_batch(shape=(1, 8)))
        assert reads == []
        with pytest.raises(ValueError, match="position 8 is past"):
            model(_batch(shape=(1, 8)), position_ids=torch.arange(1, 9)[None])
        assert len(reads) == 1
    finally:
        torch.Tensor.__int__ = original


def test_hf_trainer_passes_num_items_in_batch(make_tiny_config, tmp_path):
    """Under gradient accumulation the Trainer counts the supervised tokens of all micro-batches and
    hands that count to forward, which Etude uses to normalise the loss per token."""
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = EtudeForCausalLM(make_tiny_config("etude-tiny"))
    seen = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs.get("num_items_in_batch")),
                                    with_kwargs=True)
    rows = [{"input_ids": _batch(shape=(16,), seed=i), "labels": _batch(shape=(16,), seed=i)} for i in range(4)]
    for row in rows[:2]:
        row["labels"][:8] = -100
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows).train()
    assert len(seen) == 2 and int(seen[0]) == int(seen[1]) == 2 * 15 + 2 * 8  # count of labels[:, 1:] != -100 over both


def test_embedding_accessors_and_resize(make_tiny_config):
    model = EtudeForCausalLM(make_tiny_config("etude-tiny"))
    assert model.get_input_embeddings() is model.model.embed_tokens
    assert model.get_output_embeddings() is model.lm_head
    model.resize_token_embeddings(384)  # e.g. after adding tokens to a tokenizer
    assert model.config.vocab_size == 384 and model.lm_head.weight.shape == (384, 64)
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("preset", ["etude-v0.1", "etude-tiny"])  # LayerNorm + learned positions, RMSNorm + RoPE
def test_autocast_residual_runs_the_stream_in_bf16_and_keeps_the_loss(preset, make_tiny_config):
    """autocast_residual: under bf16 autocast every layer's input (the residual stream) is bf16 instead of fp32,
    the loss and gradients stay those of the fp32 stream within bf16 rounding; without autocast nothing changes."""
    torch.manual_seed(0)
    plain = EtudeForCausalLM(make_tiny_config(preset, dropout=0.0)).eval()
    fast = EtudeForCausalLM(make_tiny_config(preset, dropout=0.0, autocast_residual=True)).eval()
    fast.load_state_dict(plain.state_dict())
    x = _batch()
    seen = {}
    hooks = [m.model.layers[-1].register_forward_pre_hook(lambda mod, args, m=m: seen.__setitem__(m, args[0].dtype))
             for m in (plain, fast)]
    torch.testing.assert_close(fast(input_ids=x, labels=x).logits, plain(input_ids=x, labels=x).logits,
                               rtol=0, atol=0)  # no autocast: the same model
    losses, grads = {}, {}
    for model in (plain, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses[model] = model(input_ids=x, labels=x).loss
        losses[model].backward()
        grads[model] = model.model.embed_tokens.weight.grad
    for h in hooks:
        h.remove()
    assert seen[plain] == torch.float32 and seen[fast] == torch.bfloat16
    torch.testing.assert_close(losses[fast], losses[plain], rtol=1e-2, atol=0)
    torch.testing.assert_close(grads[fast], grads[plain], rtol=0.1, atol=2e-3)
    assert not torch.equal(grads[fast], grads[plain])  # the stream really ran in the other dtype

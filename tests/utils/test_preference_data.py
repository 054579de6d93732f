"""Preference data: every record shape, the official template token for token, what is dropped, every malformed case."""
from __future__ import annotations

import json
import re

import pytest
from transformers import AutoTokenizer

import main_train
from tests.conftest import shared_path, write_jsonl
from train_args.base import TrainArgs
from utils.data import DataError
from utils.preference_data import encode_examples, load_examples
from utils.tokenizer import load_tokenizer

SYSTEM = "Be brief."
SAME_PAIR_IN_EVERY_SHAPE = {
    "sharegpt": {"system": SYSTEM, "conversations": [{"from": "human", "value": "Hi"},
                                                      {"from": "gpt", "value": "Hello"},
                                                      {"from": "human", "value": "Sky colour?"}],
                 "chosen": {"from": "gpt", "value": "Blue."}, "rejected": {"from": "gpt", "value": "Green."}},
    "trl_messages": {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Sky colour?"}],
                     "chosen": [{"role": "assistant", "content": "Blue."}],
                     "rejected": [{"role": "assistant", "content": "Green."}]},
    "alpaca": {"system": SYSTEM, "history": [["Hi", "Hello"]], "instruction": "Sky colour?", "chosen": "Blue.",
               "rejected": "Green."},
}


@pytest.fixture(scope="module")
def qwen():
    return load_tokenizer(str(shared_path("tokenizers", "qwen2.5")))


def encode(tmp_path, records, tokenizer, max_len=512, paired=True, name="d.jsonl"):
    return encode_examples(load_examples(str(write_jsonl(tmp_path / name, records)), paired=paired), tokenizer,
                           "qwen", max_len)


def test_every_pair_shape_encodes_to_the_official_template_token_for_token(tmp_path, qwen):
    rows = {shape: encode(tmp_path, [record], qwen)[0][0] for shape, record in SAME_PAIR_IN_EVERY_SHAPE.items()}
    assert len({str(row) for row in rows.values()}) == 1  # one pair, whatever its shape
    row = rows["sharegpt"]
    official = AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen2.5"))  # its own chat_template
    messages = SAME_PAIR_IN_EVERY_SHAPE["trl_messages"]["prompt"]
    for side, answer in (("chosen", "Blue."), ("rejected", "Green.")):
        ids = official.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=True,
                                           return_dict=False)
        ours = row["prompt_ids"] + row[f"{side}_ids"]
        assert ids[:len(ours)] == ours and official.decode(ids[len(ours):]) == "\n"  # after the turn: not learned
        assert official.decode(row[f"{side}_ids"]) == f"{answer}<|im_end|>"  # answer + end of turn, supervised
    assert official.decode(row["prompt_ids"]).endswith("Sky colour?<|im_end|>\n<|im_start|>assistant\n")


def test_trl_string_pairs_are_one_user_turn(tmp_path, qwen):
    row = encode(tmp_path, [{"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."}], qwen)[0][0]
    assert qwen.decode(row["prompt_ids"]).endswith("<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\n")


def test_kto_records_are_sft_records_or_prompt_completion_with_a_label(tmp_path, qwen):
    records = [{"instruction": "Sky colour?", "output": "Blue.", "label": True},
               {"instruction": "Sky colour?", "output": "Green.", "label": False}]
    alpaca, _ = encode(tmp_path, records, qwen, paired=False)
    trl, _ = encode(tmp_path, [{"prompt": "Sky colour?", "completion": "Blue.", "label": True},
                               {"prompt": "Sky colour?", "completion": "Green.", "label": False}], qwen, paired=False)
    assert alpaca.to_list() == trl.to_list() and alpaca["label"] == [True, False]
    assert qwen.decode(alpaca[0]["completion_ids"]) == "Blue.<|im_end|>"


def test_pairs_without_answer_tokens_after_truncation_are_dropped_and_counted(tmp_path, qwen):
    long_prompt = {"prompt": "word " * 300, "chosen": "Blue.", "rejected": "Green."}
    rows, summary = encode(tmp_path, [long_prompt, {"prompt": "Hi", "chosen": "A.", "rejected": "B."}], qwen,
                           max_len=64)
    assert (summary.kept, summary.dropped_truncated) == (1, 1) and "truncation to 64" in str(summary)
    answer_cut = encode(tmp_path, [{"prompt": "Hi", "chosen": "word " * 300, "rejected": "B."}], qwen, max_len=64)[0]
    assert len(answer_cut[0]["prompt_ids"]) + len(answer_cut[0]["chosen_ids"]) == 64  # cut, kept


def test_pairs_whose_prompt_renders_differently_for_the_two_answers_are_dropped_and_counted(tmp_path, qwen):
    """An answer starting with a newline merges with the prompt's last newline into one token in Qwen's BPE."""
    records = [{"prompt": "Hi", "chosen": "\nA.", "rejected": "B."}, {"prompt": "Hi", "chosen": "A.", "rejected": "B."}]
    _, summary = encode(tmp_path, records, qwen)
    assert (summary.kept, summary.dropped_prompt_mismatch) == (1, 1) and "renders differently" in str(summary)


MALFORMED = [
    ({"prompt": "Hi", "chosen": "A."}, "field 'rejected' is missing"),
    ({"prompt": "Hi", "chosen": "A.", "rejected": "A."}, "field 'rejected' is the same text as 'chosen'"),
    ({"prompt": "Hi", "chosen": "", "rejected": "B."}, "field 'chosen.content' is empty"),
    ({"prompt": "Hi", "chosen": 3, "rejected": "B."}, "field 'chosen' must be one assistant turn"),
    ({"prompt": "Hi", "chosen": [{"role": "user", "content": "A."}], "rejected": "B."},
     "field 'chosen[0].role' must be an assistant role"),
    ({"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "A."},
      "rejected": "B."}, "field 'rejected' must be one assistant turn ({from, value})"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "A."}],
      "chosen": {"from": "gpt", "value": "A."}, "rejected": {"from": "gpt", "value": "B."}}, "broken alternation"),
    ({"conversations": [{"from": "robot", "value": "Hi"}], "chosen": {"from": "gpt", "value": "A."},
      "rejected": {"from": "gpt", "value": "B."}}, "field 'conversations[0].from' has unknown role 'robot'"),
    ({"instruction": "", "chosen": "A.", "rejected": "B."}, "field 'instruction' is empty"),
    ({"question": "Hi", "chosen": "A.", "rejected": "B."}, "unknown preference record shape"),
    ([1, 2], "a record must be a JSON object"),
]


@pytest.mark.parametrize("record,message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_pair_is_refused_naming_file_line_and_field(record, message, tmp_path):
    shape = next((s for s, key in (("sharegpt", "conversations"), ("alpaca", "instruction"))
                  if isinstance(record, dict) and key in record), "trl_messages")
    path = write_jsonl(tmp_path / "d.jsonl", [SAME_PAIR_IN_EVERY_SHAPE[shape], record])  # line 1: a good one
    with pytest.raises(DataError, match=rf"d\.jsonl:2: .*{re.escape(message)}"):
        load_examples(str(path), paired=True)


@pytest.mark.parametrize("record,message", [
    ({"prompt": "Hi", "completion": "A."}, "field 'label' must be true (desirable) or false"),
    ({"prompt": "Hi", "completion": "A.", "label": "yes"}, "field 'label' must be true (desirable) or false"),
    ({"prompt": "Hi", "label": True}, "field 'completion' is missing"),
])
def test_malformed_kto_record_is_refused_naming_file_line_and_field(record, message, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": "A.", "label": True}, record])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: .*{re.escape(message)}"):
        load_examples(str(path), paired=False)


def test_mixed_shapes_in_one_file_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "chosen": "A.", "rejected": "B."},
                                              SAME_PAIR_IN_EVERY_SHAPE["alpaca"]])
    with pytest.raises(DataError, match=r"d\.jsonl:2: record shape differs from the file's first record \(trl\)"):
        load_examples(str(path), paired=True)


def test_bad_preference_data_stops_the_run_before_anything_is_written(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "chosen": "A."}])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'rejected' is missing"):
        main_train.main(["--stage", "dpo", "--model_name_or_path", str(tiny_model("qwen")), "--train_data_path",
                         str(data), "--output_dir", str(out), "--template_name", "qwen"])
    assert not out.exists()


@pytest.mark.parametrize("given,stage,loss", [
    (dict(rlhf_type="DPO"), "dpo", "sigmoid"), (dict(rlhf_type="SimPO"), "dpo", "simpo"),
    (dict(rlhf_type="cposimpo"), "dpo", "simpo"), (dict(rlhf_type="ORPO"), "dpo", "orpo"),
    (dict(rlhf_type="Reward"), "rm", "sigmoid"), (dict(stage="kto", rlhf_type="KTO"), "kto", "sigmoid"),
    (dict(stage="dpo", pref_loss="ipo"), "dpo", "ipo"),
])
def test_rlhf_type_is_an_alias_of_stage_and_pref_loss(given, stage, loss, tmp_path):
    args = TrainArgs(output_dir=str(tmp_path), report_to="none", **given)
    assert (args.stage, args.pref_loss) == (stage, loss)
    assert args.cpo_alpha == (1.0 if given.get("rlhf_type") == "cposimpo" else None)


@pytest.mark.parametrize("given,message", [
    (dict(stage="dpo", rlhf_type="KTO"), "rlhf_type: 'KTO' means stage 'kto'"),
    (dict(rlhf_type="PPO"), "rlhf_type: must be one of"),
    (dict(stage="ppo"), "stage: must be one of"),
    (dict(stage="dpo", pref_loss="nope"), "pref_loss: must be one of"),
    (dict(stage="dpo", beta=0.0), "beta: must be > 0"),
    (dict(stage="dpo", pref_loss="exo_pair"), "label_smoothing: must be > 0 with pref_loss exo_pair"),
    (dict(stage="dpo", pref_loss="simpo", ref_model_path="/m"), "use no reference policy"),
    (dict(stage="kto", padding_free=True), "padding_free and chunked_loss serve stage sft and stage dpo"),
    (dict(stage="dpo", pref_loss="simpo", padding_free=True), "serve stage sft and stage dpo with a DPO loss"),
    (dict(stage="dpo", padding_free=True, micro_batch_max_tokens=512), "are SFT fast paths"),
    (dict(stage="dpo", pref_ftx=-0.5), "pref_ftx: must be >= 0"),
    (dict(stage="dpo", pref_loss="orpo", pref_ftx=0.5), "pref_ftx: is DPO's SFT term"),
    (dict(stage="sft", pref_ftx=0.5), "pref_ftx: is DPO's SFT term"),
    (dict(stage="rm", score_data_path=["held_out.jsonl"]), "score_data_path: a reward model writes no answers"),
])
def test_inconsistent_preference_fields_are_refused(given, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainArgs(output_dir=str(tmp_path), report_to="none", **given)


def test_skip_drops_an_invalid_json_line_of_pairs_and_says_why(tmp_path):
    """invalid_records skip: a line that is not JSON is skipped with its own error (it once reached the pair reader
    as a record and was reported as 'a record must be a JSON object')."""
    good = {"prompt": "Hi", "chosen": "A.", "rejected": "B."}
    path = tmp_path / "d.jsonl"
    path.write_text(f'{json.dumps(good)}\n{{"prompt": "Hi", "chosen"\n{json.dumps(good)}\n', encoding="utf-8")
    skipped = []
    assert len(load_examples(str(path), paired=True, invalid_records="skip", skipped=skipped)) == 2
    assert len(skipped) == 1 and "d.jsonl:2: invalid JSON" in skipped[0]

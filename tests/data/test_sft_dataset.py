"""Fine-tuning datasets: the loss covers the response (and its eos) only."""

import json

import pytest
from omegaconf import OmegaConf

from bridge.data import DataConfig, TokenizerConfig, build_tokenizer
from bridge.data.sft_dataset import Example, GPTFinetuneDataset, T5FinetuneDataset
from tests.data.family_datasets import family_datasets

TOK = build_tokenizer(TokenizerConfig())
EXAMPLES = [Example("Q: 2+2?\nA: ", "4"), Example("Q: capital of France?\nA: ", "Paris"),
            Example("Say hi: ", "hello there")]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("packed", [False, True])
def test_gpt_loss_mask_covers_only_the_response(packed):
    ds = GPTFinetuneDataset(EXAMPLES, TOK, seq_length=64, seed=0, packed=packed)
    assert len(ds) == (1 if packed else 3)
    trained = []
    for j in range(len(ds)):
        s = ds.sample(j, 0)
        assert s["tokens"].shape == s["labels"].shape == s["loss_mask"].shape == (64,)
        assert (s["tokens"][1:] == s["labels"][:-1])[s["loss_mask"][1:] > 0].all()
        trained.append(s["labels"][s["loss_mask"] > 0].tolist())
    expected = [TOK.encode(e.target) + [TOK.eos_id] for e in EXAMPLES]
    if packed:
        assert trained[0] == [t for e in expected for t in e]
    else:
        assert trained == expected
        s = ds.sample(0, 0)
        n = len(TOK.encode(EXAMPLES[0].source + EXAMPLES[0].target)) + 1
        assert (s["tokens"][n - 1:] == TOK.pad_id).all() and s["loss_mask"][n - 1:].sum() == 0


def test_gpt_long_examples_are_cut_and_prompt_only_ones_dropped():
    long = [Example("x" * 10, "y" * 30), Example("p" * 40, "never seen")]
    ds = GPTFinetuneDataset(long, TOK, seq_length=16, seed=0)
    assert len(ds) == 1
    s = ds.sample(0, 0)
    # seq_length + 1 = 17 tokens kept: 10 prompt + 7 response, every response token is a label.
    assert s["loss_mask"].sum() == 7 and s["loss_mask"][:9].sum() == 0
    with pytest.raises(ValueError, match="no usable example"):
        GPTFinetuneDataset(long[1:], TOK, seq_length=16, seed=0)


def test_t5_finetune_sample():
    ds = T5FinetuneDataset(EXAMPLES, TOK, seq_length=32, decoder_seq_length=16, seed=0)
    s = ds.sample(1, 0)
    n_enc, n_dec = int(s["enc_mask"].sum()), int(s["dec_mask"].sum())
    assert s["enc_tokens"][:n_enc].tolist() == TOK.encode(EXAMPLES[1].source) + [TOK.eos_id]
    assert s["labels"][:n_dec].tolist() == TOK.encode("Paris") + [TOK.eos_id]
    assert s["dec_tokens"][:n_dec].tolist() == [TOK.bos_id] + TOK.encode("Paris")
    assert s["loss_mask"].sum() == n_dec


def test_jsonl_keys_are_configurable_and_checked(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)])
    cfg = DataConfig(kind="finetune", paths=[path], prompt_key="question", response_key="answer", split="8,2")
    train, valid = family_datasets(cfg, TOK, "gpt", 16)
    assert (len(train), len(valid)) == (8, 2)
    with pytest.raises(ValueError, match=r"qa.jsonl:1: no key 'prompt' \(keys there: answer, question\)"):
        family_datasets(DataConfig(kind="finetune", paths=[path]), TOK, "gpt", 16)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        family_datasets(DataConfig(kind="finetune", paths=[str(tmp_path / "missing.jsonl")]), TOK, "t5", 512, 128)


def test_embedded_task_for_both_families_and_omegaconf_node(cache_dir):
    node = OmegaConf.structured(DataConfig(kind="finetune", cache_dir=cache_dir))
    gpt_train, gpt_valid = family_datasets(node, TOK, "gpt", 48)
    t5_train, t5_valid = family_datasets(node, TOK, "t5", 48, 16)
    assert len(gpt_train) == len(t5_train) == 4000 and len(gpt_valid) == len(t5_valid) == 200
    s = gpt_train[0]
    prompt = TOK.decode(s["tokens"][s["loss_mask"] == 0].tolist())
    answer = TOK.decode(s["labels"][s["loss_mask"] > 0].tolist())
    assert prompt.startswith("reverse the letters of: ") and prompt.split(": ")[1].split("\n")[0][::-1] == answer


def test_bad_config_values():
    with pytest.raises(ValueError, match="pretrain, finetune"):
        DataConfig(kind="sft")
    with pytest.raises(ValueError, match="two positive weights"):
        DataConfig(split="100")
    with pytest.raises(TypeError, match="seq_length"):
        DataConfig(seq_length=128)  # the model owns the sample lengths


def test_prompt_template_fills_the_prompt_from_record_keys(tmp_path):
    from bridge.data.sft_dataset import read_examples

    path = _write(tmp_path / "qa.jsonl", [{"question": "2+2?", "context": "math", "answer": "4"}])
    (ex,) = read_examples(path, "prompt", "answer", template="[{context}] Q: {question}\nA: {answer}")
    assert ex.source == "[math] Q: 2+2?\nA: " and ex.target == "4"
    with pytest.raises(ValueError, match=r"must end with the response placeholder \{answer\}"):
        read_examples(path, "prompt", "answer", template="{answer} after {question}")
    with pytest.raises(ValueError, match="no key 'missing'"):
        read_examples(path, "prompt", "answer", template="{missing} {answer}")
    with pytest.raises(ValueError, match="truncation_field='answer' is not a field of the prompt template"):
        read_examples(path, "prompt", "answer", template="Q: {question} {answer}", truncation_field="answer")


@pytest.mark.parametrize("method", ["right", "left"])
def test_too_long_examples_lose_tokens_of_the_truncation_field_first(tmp_path, method):
    from bridge.data.sft_dataset import read_examples

    path = _write(tmp_path / "qa.jsonl", [{"question": "abcdefghij" * 3, "answer": "XYZ"}])
    (ex,) = read_examples(path, "prompt", "answer", template="Q: {question}\nA: {answer}", truncation_field="question")
    ds = GPTFinetuneDataset([ex], TOK, seq_length=20, seed=0, truncation_method=method)
    s = ds.sample(0, 0)
    text = TOK.decode(s["tokens"].tolist() + [s["labels"][-1].item()])
    kept = "abcdefghij" * 3
    kept = kept[:10] if method == "right" else kept[-10:]  # 20 of the field's 30 tokens go, the template stays
    assert text == f"Q: {kept}\nA: XYZ"
    assert s["labels"][s["loss_mask"] > 0].tolist() == TOK.encode("XYZ") + [TOK.eos_id]


def test_answer_only_loss_false_trains_on_the_prompt_too():
    ds = GPTFinetuneDataset(EXAMPLES[:1], TOK, seq_length=64, seed=0, answer_only_loss=False)
    s = ds.sample(0, 0)
    n = len(TOK.encode(EXAMPLES[0].source + EXAMPLES[0].target)) + 1
    assert s["loss_mask"].sum() == n - 1 and s["loss_mask"][:n - 1].all()  # every label but the padding

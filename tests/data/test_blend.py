"""Weighted blends (``data.weights``): megatron-core's blending order over datasets that wrap into new epochs."""

import pytest
import torch

from bridge.data import DataConfig, TokenizerConfig, build_tokenizer, write_indexed_dataset
from bridge.data.blend import BlendedDataset, blending_order
from bridge.models import family_spec, get_preset


class _Numbers(torch.utils.data.Dataset):
    """Dataset ``k`` of a test: sample ``i`` is ``(k, i)``, any index accepted (as the package's datasets do)."""

    def __init__(self, k, n):
        self.k, self.n = k, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return (self.k, i)


def test_blend_follows_the_weights_and_counts_each_dataset_on():
    blend = BlendedDataset([_Numbers(0, 10), _Numbers(1, 30)], [0.5, 0.5])
    assert len(blend) == 40
    drawn = [blend[i] for i in range(80)]
    assert sum(k == 0 for k, _ in drawn) == 40  # 50/50, although dataset 0 is a third the size of dataset 1
    assert [i for k, i in drawn if k == 0] == list(range(40))  # dataset 0 counts on into its next epochs
    assert [i for k, i in drawn if k == 1] == list(range(40))


def test_blend_order_is_megatron_cores():
    dataset, sample = blending_order([1.0, 3.0], 8)  # weights need not sum to 1
    # each next sample goes to the dataset furthest behind its share (ties to the first)
    assert dataset.tolist() == [1, 0, 1, 1, 0, 1, 1, 1]
    assert sample.tolist() == [0, 0, 1, 2, 1, 3, 4, 5]


def test_bad_weights_are_one_error():
    with pytest.raises(ValueError, match=r"data.weights=\[0.5\] needs one positive weight per entry of data.paths \(2\)"):
        DataConfig(paths=["a", "b"], weights=[0.5])
    with pytest.raises(ValueError, match="one positive weight per entry"):
        DataConfig(paths=["a", "b"], weights=[1.0, 0.0])


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_family_datasets_blend_indexed_prefixes(tmp_path, family):
    tokenizer = build_tokenizer(TokenizerConfig())
    for name, letter in (("a", "a"), ("b", "b")):
        write_indexed_dataset([letter * 200] * 20, tokenizer, str(tmp_path / name))
    cfg = DataConfig(paths=[str(tmp_path / "a"), str(tmp_path / "b")], weights=[1.0, 3.0], split="80,20")
    model = get_preset(f"{family}_tiny", seq_length=32, vocab_size=tokenizer.vocab_size)
    train, valid = family_spec(family).build_datasets(cfg, tokenizer, model)
    key = "tokens" if family == "gpt" else "enc_tokens"
    a = tokenizer.encode("a")[0]
    from_a = [bool((train[i][key] == a).any()) for i in range(len(train))]
    assert abs(sum(from_a) - len(train) / 4) <= 1
    valid_from_a = [bool((valid[i][key] == a).any()) for i in range(len(valid))]
    assert abs(sum(valid_from_a) - len(valid) / 4) <= 1  # validation is blended with the same weights

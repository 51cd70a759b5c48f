"""Data for bridge: tokenizers, the embedded corpus, indexed datasets, pretraining and fine-tuning sets.

Datasets are built by each model family's spec (``bridge.models``), which takes the sequence lengths from
the model and the shared parts from :mod:`.builders` (token streams, fine-tuning examples). The trainer
needs three calls::

    from bridge.data import DataConfig, TokenizerConfig, build_tokenizer, PretrainingSampler
    from bridge.models import family_spec, get_preset

    tokenizer = build_tokenizer(TokenizerConfig())              # byte-level by default, no files
    model = get_preset("gpt_tiny", seq_length=256, vocab_size=tokenizer.vocab_size)
    train_ds, valid_ds = family_spec("gpt").build_datasets(DataConfig(), tokenizer, model)   # or "t5"
    sampler = PretrainingSampler(total_samples, consumed_samples, micro_batch_size, dp_rank, dp_size)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=...)

* Tokenizers (:mod:`.tokenizers`): ``byte`` | ``huggingface`` (local tokenizer.json) |
  ``sentencepiece`` (local .model), one interface: ``vocab_size``, ``encode``, ``decode``,
  ``eos_id``, ``bos_id``, ``pad_id``, ``sentinel_ids`` (>= 100, for T5).
  ``check_vocab_fits(tokenizer, model_vocab_size)`` is the one-line error for a model too small.
* Embedded default (:mod:`.corpus`): with ``DataConfig.paths`` empty, pretraining reads a corpus
  generated from the Python standard library's docstrings and language reference (no download,
  ~2.3 MB, fixed train/validation split), tokenized into megatron-core ``.bin/.idx`` files in the
  cache folder on first use. Fine-tuning with empty paths uses the embedded letter-reversal task
  (:mod:`.finetune_task`, with ``evaluate_accuracy`` to score greedy generations).
* Your own data: ``scripts/preprocess_data.py`` turns JSONL into ``.bin/.idx`` (eos appended to each
  document); list the prefixes in ``DataConfig.paths`` (with ``DataConfig.weights`` they are blended in
  those proportions, :mod:`.blend`). Fine-tuning reads JSONL directly
  (GPT ``prompt``/``response``, T5 ``input``/``target``; the keys are configurable).
* Samples: GPT ``tokens``/``labels``/``position_ids`` (int64 [s]), ``loss_mask`` (float32 [s]);
  T5 ``enc_tokens`` [s_enc], ``dec_tokens``/``labels`` [s_dec], ``loss_mask`` [s_dec],
  ``enc_mask``/``dec_mask`` (bool, True = real token).
* Order and resume: datasets accept any index >= 0 (index // len is the epoch, each epoch a
  permutation fixed by ``(seed, epoch)``); the sampler counts from ``consumed_samples``, so a resumed
  run sees exactly the samples the uninterrupted run would have seen.
"""

from bridge.data.blend import blended_datasets
from bridge.data.builders import (as_data_config, embedded_corpus_prefixes, finetuning_examples,
                                  pretraining_streams)
from bridge.data.config import DataConfig, DatasetKind
from bridge.data.finetune_task import TaskExample, embedded_task_paths, evaluate_accuracy, read_task_examples
from bridge.data.indexed import open_indexed_dataset, write_indexed_dataset
from bridge.data.samplers import PretrainingSampler
from bridge.data.tokenizers import Tokenizer, TokenizerConfig, TokenizerType, build_tokenizer, check_vocab_fits

__all__ = [
    "DataConfig", "DatasetKind", "blended_datasets", "PretrainingSampler", "TaskExample", "Tokenizer", "TokenizerConfig",
    "TokenizerType", "as_data_config", "build_tokenizer", "check_vocab_fits", "embedded_corpus_prefixes",
    "embedded_task_paths", "evaluate_accuracy", "finetuning_examples", "open_indexed_dataset",
    "pretraining_streams", "read_task_examples", "write_indexed_dataset",
]

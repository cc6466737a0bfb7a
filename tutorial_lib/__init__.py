"""tutorial_lib: the tested helpers behind the chapters of *From Zero - Building and
Fine-tuning Deep Models with PyTorch*.

Organised by concern, not by chapter:

- ``runtime``: device, seeding, run profiles, environment flags, notices;
- ``data``: the data sets behind one resolution rule (local copy, download, bundled sample);
- ``weights``: pretrained weights behind the same idea (cache, download, announced fallback);
  ``efficientnet_keys``: the key map that puts the offline EfficientNet weights onto timm;
- ``models``: the chapter networks; ``conv``: chapter 1's convolution math; ``text``: tokens,
  vocabularies and batches for the text chapters; ``lora``: chapter 6's LoRA, written out;
- ``gpt``: chapter 8's GPT, its import from ``transformers`` and generation with a KV cache;
  ``bpe``: byte-level BPE by hand and with ``tokenizers``; ``lm``: the language-model corpus,
  baselines, compute accounting and pre-training; ``gpt_adapt``: chapter 9's classifier on
  that GPT and prompting it; ``compress``: chapter 10's measuring helper, quantization
  (also the 4-bit layer QLoRA trains on), distillation and pruning; ``instruct``: chapter 11's
  chat template, instruction data, loss on the assistant's tokens and answers by generation;
  ``chat``: the terminal chat (``python -m tutorial_lib.chat``);
- ``train``: the one training loop, a façade over ``training``, whose modules import one way:
  ``loop`` (``fit``, ``train_step``, ``evaluate``) → ``state`` (what a run carries from epoch
  to epoch) → ``strategy`` (where it runs: one device, DDP or FSDP2 under ``torchrun``) →
  ``batches`` (the batch helpers); beside them ``checkpoints`` (files and random states) and
  ``launch`` (starting a script under ``torchrun`` from a notebook or a test);
- ``optim``: the one optimiser grouping; ``metrics``;
- ``plots``: figures; ``results``: result records; ``files``: atomic writes.
"""

__version__ = "0.1.0"

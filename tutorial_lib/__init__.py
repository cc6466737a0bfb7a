"""tutorial_lib: the tested helpers behind the chapters of *From Zero - Building and
Fine-tuning Deep Models with PyTorch*.

Organised by concern, not by chapter:

- ``runtime``: device, seeding, run profiles, environment flags, notices;
- ``data``: the data sets behind one resolution rule (local copy, download, bundled sample);
- ``weights``: pretrained weights behind the same idea (cache, download, announced fallback);
  ``efficientnet_keys``: the key map that puts the offline EfficientNet weights onto timm;
- ``models``: the chapter networks; ``conv``: chapter 1's convolution math; ``text``: tokens,
  vocabularies and batches for the text chapters; ``lora``: chapter 6's LoRA, written out;
- ``compress``: chapter 10's measuring helper, quantization (also the 4-bit layer QLoRA
  trains on), distillation and pruning;
- ``llm``: the language model, one module per stage (see its docstring): ``bpe``, ``gpt``,
  ``pretraining``, ``adapt``, ``instruct``, ``chat``, ``preference``;
- ``train``: the one training loop, a façade over ``training``, whose modules import one way:
  ``loop`` (``fit``, ``train_step``, ``evaluate``) → ``state`` (what a run carries from epoch
  to epoch) → ``strategy`` (where it runs: one device, DDP or FSDP2 under ``torchrun``) →
  ``batches`` (the batch helpers); beside them ``checkpoints`` (files and random states) and
  ``launch`` (starting a script under ``torchrun`` from a notebook or a test);
- ``optim``: the one optimiser grouping; ``metrics``;
- ``plots``: figures; ``results``: result records; ``files``: atomic writes.
"""

__version__ = "0.1.0"

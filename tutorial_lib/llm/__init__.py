"""The language model of chapters 8-12, one module per stage, in the order a model goes through
them (each imports only those before it):

- ``bpe``: the tokenizer, byte-level BPE by hand and with ``tokenizers`` (chapter 8);
- ``gpt``: the GPT, its import from ``transformers`` and generation with a KV cache (chapter 8);
- ``pretraining``: the corpus, the n-gram baselines, compute accounting, pre-training, saving
  and loading the pre-trained pair, and :func:`~tutorial_lib.llm.pretraining.load_or_pretrain`
  (chapter 8; the later chapters start from it);
- ``adapt``: a classifier on the GPT, and prompting it without training (chapter 9);
- ``instruct``: the chat template, instruction data, the loss on the assistant's tokens,
  full/LoRA/QLoRA tuning and answers by generation (chapter 11);
- ``chat``: the terminal chat, ``python -m tutorial_lib.llm.chat`` (chapter 11);
- ``preference``: sampling and log-probabilities of continuations, preference pairs, a reward
  model, DPO, Preferred-FT, RL with a group baseline, best-of-n (chapter 12).

The general helpers (``train``, ``lora``, ``compress``, ...) never import this package.
"""

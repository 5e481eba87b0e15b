"""Hybrid stage 2b: soft compression of a CoT into a few embeddings the generator reads (OSCAR-N-layers).

Hard compression (stage 2) drops CoT tokens; soft compression replaces what is left by a handful of
continuous vectors. Following OSCAR (arXiv 2504.07109), N-layers variant:

* The compressor is the generator's own first N layers (a copy, with its embedding table), so its
  hidden states already live in the generator's space and it needs no pretraining. It reads
  `[question][CoT block][MEM_1 ... MEM_m]` and its last hidden states at the m memory positions are
  that block's embeddings. A full block of `block_size` tokens gets `mem_tokens` of them (OSCAR: 8
  per 128, 16x); a shorter block gets proportionally fewer, at least one, so that short CoTs are
  compressed at the same rate as long ones.
* The generator reads its usual prompt, then the blocks' embeddings in place of the CoT's tokens,
  then the answer cue, and writes the answer. It is trained with LoRA (r 16, alpha 32, dropout 0.1,
  all linear layers); the compressor is fully fine-tuned (or, to fit big models on one GPU, LoRA too).
* Objective: sentence-level distillation. The target is the answer the generator itself (the
  teacher: no adapter) writes when it reads the whole text CoT; `target="gold"` uses the dataset's answer.

One difference from OSCAR, said where it is made: the compressor's outputs pass through a learned
per-dimension affine map (centre and gain) before they are fed in, initialised from the training
data so that the memory states come out centred and at the spread of the generator's token
embeddings. Without it, a small model's memory states are ~30x larger than token embeddings and
nearly identical across inputs (cosine 0.9995 between different CoTs in SmolLM2-135M: a few
"massive activation" dimensions carry the norm), so the generator sees one constant vector and
training on a CPU budget never leaves the question-only answer (bench/README.md has the runs).

A trained model is a folder: `soft_compression.json` (the settings, written last: its presence means
the folder is complete), `compressor/` (an HF model holding the N layers, or a peft adapter over
them), `generator_adapter/` (peft), and `memory.safetensors` (the memory-token embeddings and the scale).

The package, in the order a run goes: settings.py (frozen settings, file names, conditions),
items.py (input records and the token pieces of a request), model.py (SoftModel), train.py
(teacher answers, the training loop), measure.py (evaluation and metrics.json).
"""

"""Models and data that tests/ and bench/ both build: tiny random LLMLingua-2 classifiers, tiny causal
LMs of any architecture, LoRA adapters trained by llamafactory-cli. Not part of the tokenskip wheel."""

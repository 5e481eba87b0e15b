"""TokenSkip toolkit: controllable chain-of-thought compression for LLMs (arXiv 2502.12067)."""

__version__ = "0.1.0"

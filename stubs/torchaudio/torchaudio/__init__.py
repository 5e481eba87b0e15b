"""Import-only placeholder for torchaudio: audio I/O is unavailable in this environment."""

__version__ = "2.11.0+cpustub"


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchaudio is a placeholder here (CPU-only torch): audio inputs are not supported")


load = _unavailable


class functional:  # noqa: N801 - mimics the torchaudio.functional namespace used by LLaMA-Factory
    resample = staticmethod(_unavailable)

"""Which device errors a batch may recover from, by retrying smaller or falling back to the CPU.

Out of memory always (the caller frees the cache with `release` before it retries). Any other error only while the device still
works: a CUDA error such as an illegal memory access poisons the process's CUDA context, after
which every call fails; carrying on would turn the rest of the job into row errors, so it is
raised instead, and the job stops saying why.
"""

from __future__ import annotations


def recoverable(error: BaseException, device: str) -> bool:
    import torch

    if torch.device(device).type != "cuda":
        return True  # a CPU error is the input's (a corrupt file, a size a kernel refuses)
    if isinstance(error, torch.OutOfMemoryError):
        return True
    try:
        torch.cuda.synchronize(device)  # raises again where the context is lost
    except Exception:
        return False
    return True


def release(device: str) -> None:
    """Frees the cached device memory of a failed call before its retry: called once the error
    (whose traceback holds the call's tensors) is gone."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()

"""Which device errors a batch may recover from, by retrying smaller or falling back to the CPU.

Out of memory always (the cache is freed first). Any other error only while the device still
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
        torch.cuda.empty_cache()
        return True
    try:
        torch.cuda.synchronize(device)  # raises again where the context is lost
    except Exception:
        return False
    return True

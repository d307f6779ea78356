"""Run ``train.py`` with a fault injected (tests/test_faults.py starts it in a subprocess).

    python tests/fault_injection.py <fault> <train.py overrides ...>

Faults: ``none``; ``slow:<seconds>`` sleeps after each checkpoint (so a test can SIGKILL the run at a random step);
``kill_in_save:<n>`` makes the n-th checkpoint write stop half-way: the process SIGKILLs itself.
"""

from __future__ import annotations

import io
import os
import runpy
import signal
import sys
import time
from pathlib import Path

import torch

import loralab.checkpoint


def inject(fault: str) -> None:
    kind, _, arg = fault.partition(":")
    if kind == "slow":
        real_save = loralab.checkpoint.save_checkpoint

        def slow_save(*args, **kwargs):
            path = real_save(*args, **kwargs)
            time.sleep(float(arg))
            return path

        loralab.checkpoint.save_checkpoint = slow_save
    elif kind == "kill_in_save":
        real_torch_save, calls = torch.save, [0]

        def dying_save(obj, f, *args, **kwargs):
            calls[0] += 1
            if calls[0] < int(arg):
                return real_torch_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_torch_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        loralab.checkpoint.torch.save = dying_save
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    inject(sys.argv[1])
    train = Path(__file__).resolve().parents[1] / "train.py"
    sys.argv = [str(train), *sys.argv[2:]]
    runpy.run_path(str(train), run_name="__main__")

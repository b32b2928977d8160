"""Run a stage's train.py with the loss that rank 1 of torchrun reports for its first step made NaN (tests only).

The step itself is the real one (the ranks' collectives still match, the weights stay finite): only what rank 1's
training loop sees of its loss is not finite, as when one rank's batch alone overflows. Usage:
torchrun --nproc_per_node 2 tests/nan_loss_train.py <stage>/train.py [arguments...]
"""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import utils.engine.loop as engine  # noqa: E402

_train_step, _steps = engine.train_step, []


def train_step(*args, **kwargs):
    loss = _train_step(*args, **kwargs)
    _steps.append(1)
    return loss * float("nan") if os.environ.get("RANK") == "1" and len(_steps) == 1 else loss


engine.train_step = train_step

script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(os.path.join(ROOT, script), run_name="__main__")

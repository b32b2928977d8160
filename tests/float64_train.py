"""Run a stage's train.py with the model and its inputs in float64 (tests only).

In float32, summing a batch's statistics and gradients in another order (as torchrun's processes do)
changes the last bits, and tiny-batch BatchNorm amplifies that from step to step. In float64 the same
run under torchrun and in one process must agree to ~1e-12, which shows the distributed training is
the single-process computation. Usage: python tests/float64_train.py <stage>/train.py [arguments...]
"""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import utils.engine.loop as engine  # noqa: E402
import utils.stages.vis as vis  # noqa: E402

_place_model, _to_device = engine.place_model, engine.to_device


def place_model(model, *args, **kwargs):
    return _place_model(model.double(), *args, **kwargs)


def to_device(x, d, channels_last=False, hwc=False):
    x = _to_device(x, d, channels_last, hwc)
    return x.double() if x.is_floating_point() else x


engine.place_model, engine.to_device = place_model, to_device
vis.tensorboard_hook = lambda *a, **k: (lambda model, epoch, log: None)  # its pictures are float32

script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(os.path.join(ROOT, script), run_name="__main__")

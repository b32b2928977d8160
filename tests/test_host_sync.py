"""The loops never wait for the GPU between batches: a CPU proxy for CUDA's asynchronous execution.

On CUDA a forward is queued, not run; any read of its results on the host (`.item()`, `.tolist()`, `.numpy()`,
`bool()`, a blocking `.cpu()`) and any blocking host-to-device copy (`.to(device)` without `non_blocking`) waits
for it, and the GPU idles while the CPU catches up. Here a TorchFunctionMode follows every tensor computed from a
model's output ("device tensors") and records each such wait, with the number of forwards run so far. Results
handed to the host through `engine.HostCopy` are host tensors (on CUDA they come behind an event, one batch
late: `engine.HostPipe`, whose lag is set to CUDA's here). Every loop may wait only after its last forward
(at the end of an epoch or of the pass); a wait between two forwards is a loop that serialises the GPU and
the CPU.
"""
import os

import pytest
import torch
from torch.overrides import TorchFunctionMode

import utils.engine.loop as engine
from conftest import prepared_cub, run_inprocess

SMALL = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "48", "--crop", "40",
         "--amp", "off"]
READS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "cpu"}


class WaitRecorder(TorchFunctionMode):
    """Records (forwards so far, what) for every host read of a device tensor and every blocking copy."""

    def __init__(self):
        super().__init__()
        self.device_tensors, self.forwards, self.waits = {}, 0, []
        self.training = False  # count the forwards of models in this mode (training: not the epoch-end pictures')

    def mark(self, x) -> None:
        for t in (x if isinstance(x, (tuple, list)) else [x]):
            if torch.is_tensor(t):
                self.device_tensors[id(t)] = t

    def unmark(self, t) -> None:
        self.device_tensors.pop(id(t), None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inputs = [a for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)]
        from_device = any(id(t) in self.device_tensors for t in inputs)
        if from_device and name in READS and not (name == "cpu" and kwargs.get("non_blocking")):
            self.waits.append((self.forwards, f"{name}() of a result"))
        if name == "to" and _moves(args[1:], kwargs) and not kwargs.get("non_blocking"):
            self.waits.append((self.forwards, "a blocking .to(device)"))
        out = func(*args, **kwargs)
        if from_device:
            self.mark(out)
        return out


def _moves(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args)


@pytest.fixture
def recorder(monkeypatch):
    """A WaitRecorder following every model that a stage places, with HostPipe lagging one batch (as on CUDA)."""
    rec = WaitRecorder()
    place, get = engine.place_model, engine.HostCopy.get

    def placed(model, *args, **kwargs):
        model = place(model, *args, **kwargs)

        def pre(module, inputs):
            rec.forwards += module.training == rec.training

        model.register_forward_pre_hook(pre)
        model.register_forward_hook(lambda module, inputs, output: rec.mark(output))
        return model

    def host_copy(self):
        t = get(self)
        rec.unmark(t)  # on the host now (on the CPU the "copy" is the tensor itself)
        return t

    import utils.cam_loc
    import utils.localize
    import utils.stages.stage_cam
    import utils.stages.stage_cls
    import utils.stages.stage_seg
    for module in (engine, utils.stages.stage_cam, utils.stages.stage_seg, utils.stages.stage_cls, utils.cam_loc,
                   utils.localize):
        if hasattr(module, "place_model"):
            monkeypatch.setattr(module, "place_model", placed)
    monkeypatch.setattr(engine.HostCopy, "get", host_copy)
    monkeypatch.setattr(engine, "host_lag", lambda device: 1)
    return rec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny CUB-layout set and random-weight snapshots of each model (the loops' shape does not depend on
    what the weights learned)."""
    from network import build_mffnet
    from network.classifier import build_classifier
    work = tmp_path_factory.mktemp("sync")
    root = str(work / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=4, val_per_class=2, seed=5, min_size=48, max_size=64)
    torch.manual_seed(0)
    snaps = {"cam": build_mffnet(3, "resnet18", None, dual=True), "seg": build_mffnet(1, "resnet18", None, seg=True),
             "cls": build_classifier("resnet18", 3)}
    for name, model in snaps.items():
        torch.save(model.state_dict(), work / f"{name}.pth")
    return {"root": root, "work": work}


def _run(recorder, *args):
    with recorder:
        run_inprocess(*args)
    assert recorder.forwards >= 2, "the loop should run several batches"
    # (waits before the first forward are set-up: the model's placement, the first batch)
    early = [(k, what) for k, what in recorder.waits if 0 < k < recorder.forwards]
    assert not early, f"waits for the device between forwards (after forward k, of {recorder.forwards}): {early[:5]}"


def test_training_steps_do_not_wait(setup, recorder, tmp_path):
    # a log line every step: its loss is read one step later, from a host copy
    recorder.training = True
    _run(recorder, "cub200-cam/train.py", "--datapath", setup["root"], "--savepath", tmp_path, *SMALL,
         "--clsnum", "3", "--pretrained", "none", "--batch_size", "2", "--epoch", "1", "--print_freq", "1")


def test_pseudo_masks_do_not_wait(setup, recorder, tmp_path):
    _run(recorder, "cub200-cam/test.py", "--datapath", setup["root"], "--snapshot", setup["work"] / "cam.pth",
         "--maskpath", tmp_path / "masks", *SMALL, "--clsnum", "3", "--batch_size", "2", "--post_workers", "0",
         "--list", "train.txt")
    assert len([e for e in os.scandir(tmp_path / "masks") if e.is_dir()]) == 3  # one folder per class


@pytest.mark.parametrize("protocol", ["spol", "wsol"])
def test_seg_evaluation_does_not_wait(setup, recorder, tmp_path, protocol):
    _run(recorder, "cub200-seg/test.py", "--datapath", setup["root"], "--snapshot", setup["work"] / "seg.pth",
         "--savepath", tmp_path, *SMALL, "--batch_size", "2", "--protocol", protocol, "--post_workers", "0",
         "--top1top5", "none", "--no-save_scoremaps")
    assert os.path.isfile(tmp_path / "metrics.json")


def test_seg_evaluation_with_pictures_does_not_wait(setup, recorder, tmp_path):
    # --vis draws each picture's probability map from a host copy too, not from the device tensor a batch later
    _run(recorder, "cub200-seg/test.py", "--datapath", setup["root"], "--snapshot", setup["work"] / "seg.pth",
         "--savepath", tmp_path, *SMALL, "--batch_size", "2", "--top1top5", "none", "--vis", "4")
    assert len(os.listdir(tmp_path / "vis")) == 5  # four pictures and their grid


def test_classification_does_not_wait(setup, recorder, tmp_path):
    _run(recorder, "cub200-cls/test.py", "--datapath", setup["root"], "--snapshot", setup["work"] / "cls.pth",
         "--savepath", tmp_path, *SMALL, "--arch", "resnet18", "--clsnum", "3", "--batch_size", "2")
    assert os.path.isfile(tmp_path / "top1top5.npy")


def test_cam_localisation_does_not_wait(setup, recorder, tmp_path):
    _run(recorder, "utils/cam_loc.py", "--datapath", setup["root"], "--snapshot", setup["work"] / "cam.pth",
         "--savepath", tmp_path, *SMALL, "--batch_size", "2")


def test_localize_does_not_wait(setup, recorder, tmp_path):
    _run(recorder, "cub200-seg/localize.py", os.path.join(setup["root"], "images"), "--snapshot",
         setup["work"] / "seg.pth", "--savepath", tmp_path, *SMALL[:6], "--size", "48", "--amp", "off",
         "--batch_size", "2", "--classifier", setup["work"] / "cls.pth", "--classifier_arch", "resnet18",
         "--classifier_size", "48", "--datapath", setup["root"])
    assert os.path.isfile(tmp_path / "localize" / "boxes.csv")

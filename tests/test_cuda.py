"""The GPU suite: the stage scripts end to end on CUDA, on tiny synthetic CUB and ImageNet sets, as a GPU owner
runs them. It checks that

* every stage's train.py and test.py runs with `--device cuda` and writes what it promises (the CUB cam and seg
  stages under --amp bf16, fp16 and off; the others under --amp auto);
* --channels_last / --no-channels_last and --compile give the boxes of the plain run;
* a run stopped mid-epoch and resumed on CUDA (`--resume`) ends close to the uninterrupted run;
* --amp off on CUDA (float32, TF32 off) writes the CPU's pseudo masks (to one grey level) and boxes;
* with two GPUs, `--device cuda:1` evaluates as cuda:0 does, and torchrun (NCCL) trains, resumes and evaluates as
  one process, and fills a partly written mask folder; an explicit `--device cuda:N` under torchrun is refused
  with one `error:` line;
* fp16 training really steps (its scaler's state), through the fused SGD, also compiled and resumed; a snapshot
  loads in a process without a GPU; 8 loader workers fill the mask stage's ring from full-size images; the seg
  stage's --protocol wsol and --vis, and localize.py, run on the GPU; --amp bf16 is refused on a GPU that only
  emulates it; `python -m utils.first_hour` runs (on the cam stage's models).

Every test is marked `cuda` and skips without a CUDA GPU (the two-GPU ones with fewer than two GPUs), so the
plain `python -m pytest tests -q` only collects this file. A GPU owner runs, from the repository root with
.venv active (a few minutes on one GPU):

    python -m pytest tests -m cuda -q

SPOL_GPU_SUITE_DEVICE=cpu runs the same commands and assertions with `--device cpu` instead, to check this
file's logic on a machine without a GPU (the tests that need CUDA itself, fp16 and the two-GPU ones, skip
then, and "CPU against CUDA" compares the CPU with itself).
"""
import csv
import json
import math
import os
import re

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT, prepared_cub, run_script
from dataset.synthetic import make_imagenet
from network import build_resnet
from utils.data.images import mask_name
from utils.data.datasets import DATASETS

DEVICE = os.environ.get("SPOL_GPU_SUITE_DEVICE", "cuda")
if DEVICE not in ("cuda", "cpu"):
    raise ValueError(f"SPOL_GPU_SUITE_DEVICE={DEVICE!r}: expected cuda (the default) or cpu (a dry run)")
DRY_RUN = DEVICE == "cpu"

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not DRY_RUN and not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_cuda = pytest.mark.skipif(DRY_RUN, reason="needs a CUDA GPU (not the CPU dry run)")
two_gpus = pytest.mark.skipif(DRY_RUN or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")

# bf16 where the GPU has it in hardware (8.0 on): below, --amp bf16 is refused (engine.amp_dtype)
no_bf16 = pytest.mark.skipif(not DRY_RUN and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8,
                             reason="the GPU only emulates bf16 (compute capability below 8.0)")
AMP = [pytest.param("bf16", marks=no_bf16), pytest.param("fp16", marks=needs_cuda), "off"]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2]
TRAIN = ["--pretrained", "none", "--batch_size", 4, "--print_freq", 1, "--seed", 7]
TEST = ["--batch_size", 4]  # several batches: CUDA's inference loops hand each batch on while the next runs
SIZE, CROP = 48, 40


def small(device=DEVICE, workers=0):
    return ["--backbone", "resnet18", "--device", device, "--num_workers", workers, "--size", SIZE, "--crop", CROP]


# ----------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    """3 classes x (4 train + 3 test) images: 3 training steps of 4 images per epoch."""
    root = str(tmp_path_factory.mktemp("cuda-cub") / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=4, val_per_class=3, seed=5, min_size=48, max_size=64)
    return root


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cuda-inet") / "ILSVRC2012")
    make_imagenet(root, synsets=["n01440764", "n01443537", "n01484850"], train_per_class=4, val_per_class=2,
                  seed=2, min_size=48, max_size=64)
    run_script("dataset/prepare.py", "imagenet", "--root", root)
    return root


# ------------------------------------------------------------------------------------ CUB pipeline
def cam_train(cub):
    """The CUB cam stage's training: 2 epochs of 3 steps (the resume test stops it inside the first), at a tenth
    of the paper's learning rates. Training from scratch on 4 images a batch is chaotic: at the paper's rates,
    another convolution algorithm alone (as cudnn.benchmark may pick in another process) changed the weights by
    10 % of their whole update, and a resume that lost the optimiser state by 75 %; at these rates by 0.003 %
    and 60 % (measured on the CPU, MKL-DNN's convolutions against ATen's), so runs can be compared to 1e-3."""
    return ["cub200-cam/train.py", "--datapath", cub, "--clsnum", 3, "--epoch", 2, "--lr", 0.002,
            "--backbone_lr", 0.0002, *small(), *TRAIN]


def make_masks(cub, snapshot, maskpath, *extra, launcher=()):
    return run_script(*launcher, "cub200-cam/test.py", "--datapath", cub, "--clsnum", 3, "--snapshot", snapshot,
                      "--maskpath", maskpath, "--post_workers", 1, *TEST, *small(), *extra)


def evaluate(cub, snapshot, top1top5, savepath, *extra, launcher=()):
    """The seg stage's test.py at --threshold 0.5: the tiny seg model's probabilities stay near 0.5, where the
    stage's 0.2 would make every box the whole frame and the comparisons below show nothing."""
    return run_script(*launcher, "cub200-seg/test.py", "--datapath", cub, "--snapshot", snapshot, "--top1top5",
                      top1top5, "--threshold", 0.5, "--savepath", savepath, *TEST, *small(), *extra)


@pytest.fixture(scope="module")
def cls(cub, tmp_path_factory):
    """The CUB cls stage (a ResNet-18 from scratch, 1 epoch): its folder, with top1top5.npy."""
    out = tmp_path_factory.mktemp("cuda-cls")
    args = ["--datapath", cub, "--clsnum", 3, "--arch", "resnet18", "--amp", "auto", *small()]
    run_script("cub200-cls/train.py", *args, "--epoch", 1, *TRAIN, "--savepath", out)
    run_script("cub200-cls/test.py", *args, "--snapshot", out / "model-1.pth", *TEST, "--savepath", out)
    return out


@pytest.fixture(scope="module")
def cam(cub, tmp_path_factory):
    """cam(amp): the folder of the CUB cam stage trained under --amp amp, with model-2.pth and masks/ written
    under the same mode; each mode's runs once per module."""
    runs = {}

    def run(amp):
        if amp not in runs:
            out = tmp_path_factory.mktemp(f"cuda-cam-{amp}")
            run_script(*cam_train(cub), "--amp", amp, "--savepath", out)
            make_masks(cub, out / "model-2.pth", out / "masks", "--amp", amp)
            runs[amp] = out
        return runs[amp]
    return run


@pytest.fixture(scope="module")
def seg(cub, cam, cls, tmp_path_factory):
    """seg(amp): the folder of the CUB seg stage trained on cam(amp)'s masks (2 epochs of 3 steps) and evaluated,
    both under --amp amp: model-2.pth, metrics.json, boxes.csv."""
    runs = {}

    def run(amp):
        if amp not in runs:
            out = tmp_path_factory.mktemp(f"cuda-seg-{amp}")
            run_script("cub200-seg/train.py", "--datapath", cub, "--maskpath", cam(amp) / "masks", "--amp", amp,
                       *small(), *TRAIN, "--savepath", out)
            evaluate(cub, out / "model-2.pth", cls / "top1top5.npy", out, "--amp", amp)
            runs[amp] = out
        return runs[amp]
    return run


# --------------------------------------------------------------------------------------- checking
def log_steps(savepath) -> list:
    """(step, loss) of every record of <savepath>/log.jsonl."""
    return [(r["step"], r["loss"]) for r in map(json.loads, open(savepath / "log.jsonl").read().splitlines())]


def assert_trained(savepath, snapshot, steps):
    """The run left `snapshot`, a resumable checkpoint.pth and a log of `steps` finite losses (--print_freq 1)."""
    assert (savepath / snapshot).is_file() and (savepath / "checkpoint.pth").is_file()
    log = log_steps(savepath)
    assert [s for s, _ in log] == list(range(1, steps + 1))
    assert all(math.isfinite(loss) for _, loss in log)


def assert_masks_of(dataset, datapath, maskpath):
    """One pseudo mask per training image, of the image's size, channel 2 empty, and CAMs that are not all 0."""
    peaks = []
    for sample in DATASETS[dataset].read_list(datapath, "train.txt", with_boxes=False):
        mask, image = cv2.imread(str(maskpath / mask_name(sample.name))), cv2.imread(sample.path)
        assert mask is not None and mask.shape == image.shape and mask[..., 2].max() == 0, sample.name
        peaks.append(mask[..., 0].max())
    assert max(peaks) > 0  # the CAM channel is normalised to its peak: all-zero maps would mean dead CAMs


def mask_files(folder) -> list:
    return sorted(p.relative_to(folder) for p in folder.rglob("*.png"))


def assert_masks_agree(a, b):
    """The same mask files, each pixel of each channel within one grey level. The CAM channel is truncated to
    uint8, so float32 noise can move a pixel by one level. The prior channel is fitted to regions thresholded
    from the CAM, a step function of it; measured on this set, relative CAM noise of 1e-4 still moved no pixel
    by more than one level (1e-3, TF32's precision, moved some by 14)."""
    files = mask_files(a)
    assert files and files == mask_files(b)
    for f in files:
        x, y = (cv2.imread(str(folder / f)).astype(np.int16) for folder in (a, b))
        assert x.shape == y.shape and np.abs(x - y).max() <= 1, f


BOX = ("xmin", "ymin", "xmax", "ymax")
FIGURES = ("gt_known_loc", "top1_loc", "top5_loc", "gt_known_loc_class_mean")


def assert_boxes_agree(a, b):
    """Two evaluations of one snapshot give the same boxes and figures (<folder>/boxes.csv, metrics.json).

    A box is that of the largest region of `probability > --threshold`; a pixel whose probability lies within
    float32 noise of the threshold (another convolution algorithm, device, batch size or memory format) falls
    on either side, so an edge can move by a pixel: coordinates may differ by 1, and each figure by at most the
    share of images whose box differs (where every box is the same, the figures are equal). Measured on the
    CPU: the logits of two convolution algorithms differ by 3e-6 of their peak; noise of 1e-6 moved no box,
    1e-5 a few by one pixel, 1e-4 some by more.
    """
    rows_a, rows_b = (list(csv.DictReader(open(folder / "boxes.csv"))) for folder in (a, b))
    assert [r["name"] for r in rows_a] == [r["name"] for r in rows_b]
    frame = {("", "", "", ""), ("0", "0", str(CROP), str(CROP))}  # empty, the whole evaluation frame
    assert any(tuple(r[k] for k in BOX) not in frame for r in rows_a), "no box to compare: all empty or whole"
    differ = 0
    for ra, rb in zip(rows_a, rows_b):
        assert (ra["xmin"] == "") == (rb["xmin"] == ""), ra["name"]  # empty on both or neither
        if ra["xmin"] != "":
            gap = max(abs(int(ra[k]) - int(rb[k])) for k in BOX)
            assert gap <= 1, (ra, rb)
            differ += gap > 0
    ma, mb = (json.load(open(folder / "metrics.json")) for folder in (a, b))
    assert ma["count"] == mb["count"] == len(rows_a) and ma["empty"] == mb["empty"]
    for key in FIGURES:
        assert (key in ma) == (key in mb)
        if key in ma:
            assert abs(ma[key] - mb[key]) <= 100.0 * differ / len(rows_a) + 1e-9, key


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_logs_close(a, b, rel):
    """The two runs logged the same steps, with losses within `rel` of each other."""
    (steps_a, losses_a), (steps_b, losses_b) = (zip(*log_steps(folder)) for folder in (a, b))
    assert steps_a == steps_b and losses_b == pytest.approx(losses_a, rel=rel)


def assert_weights_close(a, b, tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=tol, atol=tol, msg=k)


# ------------------------------------------------------------------------------- 1. every stage
@pytest.mark.parametrize("amp", AMP)
def test_cub_cam_stage(cub, cam, amp):
    out = cam(amp)
    assert_trained(out, "model-2.pth", steps=6)
    assert json.load(open(out / "args.json"))["amp"] == amp
    assert_masks_of("cub", cub, out / "masks")


@pytest.mark.parametrize("amp", AMP)
def test_cub_seg_stage(seg, amp):
    out = seg(amp)
    assert_trained(out, "model-2.pth", steps=6)
    m = json.load(open(out / "metrics.json"))
    assert m["count"] == 9 and 0 <= m["top1_loc"] <= m["top5_loc"] <= m["gt_known_loc"] <= 100
    rows = open(out / "boxes.csv").read().splitlines()
    assert rows[0] == "name," + ",".join(BOX) + ",iou,correct" and len(rows) == 10


def test_cub_cls_stage(cls):
    assert_trained(cls, "model-1.pth", steps=3)
    table = np.load(cls / "top1top5.npy", allow_pickle=False)
    assert table.dtype.names == ("name", "top1", "top5") and len(table) == 9 and table["top5"].all()  # 3 classes


@pytest.fixture(scope="module")
def imagenet(inet, tmp_path_factory):
    """The ImageNet stages under --amp auto, with a loader worker: cam training (3 steps) and masks, seg training
    on them and its evaluation with the Top-1/Top-5 of the cls stage's test.py (a ResNet-18 of random weights
    in torchvision's layout, as the released ImageNet classifiers are used without training)."""
    out = tmp_path_factory.mktemp("cuda-imagenet")
    run = ["--datapath", inet, "--amp", "auto", *small(workers=1)]
    run_script("imagenet-cam/train.py", *run, "--clsnum", 3, *TRAIN, "--savepath", out / "cam")
    run_script("imagenet-cam/test.py", *run, "--clsnum", 3, "--snapshot", out / "cam" / "model-3.pth",
               "--maskpath", out / "cam" / "masks", "--post_workers", 0, *TEST)
    run_script("imagenet-seg/train.py", *run, "--maskpath", out / "cam" / "masks", *TRAIN, "--savepath", out / "seg")
    torch.manual_seed(0)
    torch.save(build_resnet("resnet18", num_classes=3).state_dict(), out / "resnet18.pth")
    run_script("imagenet-cls/test.py", *run, "--clsnum", 3, "--arch", "resnet18", "--snapshot", out / "resnet18.pth",
               *TEST, "--savepath", out / "cls")
    run_script("imagenet-seg/test.py", *run, "--snapshot", out / "seg" / "model-3.pth", "--top1top5",
               out / "cls" / "top1top5.npy", "--threshold", 0.5, *TEST, "--savepath", out / "seg")
    return out


def test_imagenet_stages(inet, imagenet):
    assert_trained(imagenet / "cam", "model-3.pth", steps=3)
    assert_masks_of("imagenet", inet, imagenet / "cam" / "masks")
    assert_trained(imagenet / "seg", "model-3.pth", steps=3)
    assert len(np.load(imagenet / "cls" / "top1top5.npy", allow_pickle=False)) == 6
    m = json.load(open(imagenet / "seg" / "metrics.json"))
    assert m["count"] == 6 and 0 <= m["top1_loc"] <= m["top5_loc"] <= m["gt_known_loc"] <= 100


def test_amp_auto_trains_float32_weights(imagenet):
    """--amp auto picks a precision per GPU (bf16 where the GPU has it, else fp16 with a loss scaler); whichever
    it is, the run is recorded as auto and trains float32 weights (autocast casts only the computation)."""
    for stage in ("cam", "seg"):
        assert json.load(open(imagenet / stage / "args.json"))["amp"] == "auto"
        w = weights(imagenet / stage / "model-3.pth")
        floats = [v for v in w.values() if v.is_floating_point()]
        assert floats and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats)


# ------------------------------------------------------------------- 2, 3. memory format, compile
@pytest.mark.parametrize("flag", ["--channels_last", "--no-channels_last"])
def test_memory_format(cub, cam, seg, cls, flag, tmp_path):
    """The seg stage trains in either memory format, and evaluates to the boxes of the default (channels-last
    on CUDA)."""
    run_script("cub200-seg/train.py", "--datapath", cub, "--maskpath", cam("off") / "masks", "--max_steps", 2,
               "--amp", "off", flag, *small(), *TRAIN, "--savepath", tmp_path / "train")
    assert_trained(tmp_path / "train", "model-1.pth", steps=2)
    evaluate(cub, seg("off") / "model-2.pth", cls / "top1top5.npy", tmp_path, "--amp", "off", flag)
    assert_boxes_agree(seg("off"), tmp_path)


def test_compile(cub, seg, cls, tmp_path):
    """test.py under torch.compile gives the eager run's boxes (one batch: one graph to compile)."""
    p = evaluate(cub, seg("off") / "model-2.pth", cls / "top1top5.npy", tmp_path, "--amp", "off", "--compile",
                 "--batch_size", 16)
    assert "GT-known Loc" in p.stdout
    assert_boxes_agree(seg("off"), tmp_path)


# ------------------------------------------------------------------------------------- 4. resume
def test_resume_mid_epoch(cub, cam, tmp_path):
    """Stopped after the second of epoch 1's 3 steps and resumed with a bare --resume: the run finishes, its log
    goes on from step 3, and its losses and weights are those of cam("off"), the same run uninterrupted. (It
    used to crash on CUDA: the optimiser state was loaded before the model moved to the GPU.) Not to the bit:
    cudnn.benchmark may pick other convolution algorithms in another process (see `cam_train`)."""
    args = [*cam_train(cub), "--amp", "off", "--save_every", 1, "--savepath", tmp_path]
    run_script(*args, "--max_steps", 2)
    state = torch.load(tmp_path / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (0, 2, 2)
    assert not (tmp_path / "model-2.pth").exists()
    first = open(tmp_path / "log.jsonl").read().splitlines()

    p = run_script(*args, "--resume")
    assert "resumed from" in p.stdout and "step 2" in p.stdout
    assert_trained(tmp_path, "model-2.pth", steps=6)
    assert open(tmp_path / "log.jsonl").read().splitlines()[:2] == first
    straight = cam("off")
    assert_logs_close(straight, tmp_path, rel=1e-3)
    assert_weights_close(weights(straight / "model-2.pth"), weights(tmp_path / "model-2.pth"), tol=1e-3)


# --------------------------------------------------------------------------------- 7. CPU and CUDA
def test_cpu_and_cuda_write_the_same_masks(cub, cam, tmp_path):
    """--amp off is float32 on CUDA as on the CPU (TF32 off too): from one snapshot, the same masks."""
    make_masks(cub, cam("off") / "model-2.pth", tmp_path, "--amp", "off", "--device", "cpu")
    assert_masks_agree(cam("off") / "masks", tmp_path)


def test_cpu_and_cuda_give_the_same_boxes(cub, seg, cls, tmp_path):
    evaluate(cub, seg("off") / "model-2.pth", cls / "top1top5.npy", tmp_path, "--amp", "off", "--device", "cpu")
    assert_boxes_agree(seg("off"), tmp_path)


# ------------------------------------------------------------------------------- 5, 6. two GPUs
@two_gpus
def test_second_gpu_gives_the_boxes_of_the_first(cub, seg, cls, tmp_path):
    """--device cuda:1 in one process: every tensor, stream and event on cuda:1, the results of cuda:0."""
    evaluate(cub, seg("off") / "model-2.pth", cls / "top1top5.npy", tmp_path, "--amp", "off", "--device", "cuda:1")
    assert_boxes_agree(seg("off"), tmp_path)


@two_gpus
def test_torchrun_training_equals_one_process(cub, cam, tmp_path):
    """2 processes x 2 images (NCCL, SyncBatchNorm) train as 1 process x 4 images, up to summation order."""
    run_script(*TORCHRUN, *cam_train(cub), "--amp", "off", "--savepath", tmp_path)
    assert_trained(tmp_path, "model-2.pth", steps=6)
    assert_logs_close(cam("off"), tmp_path, rel=1e-3)
    assert_weights_close(weights(cam("off") / "model-2.pth"), weights(tmp_path / "model-2.pth"), tol=1e-3)


@two_gpus
def test_torchrun_evaluation_equals_one_process(cub, cam, seg, cls, tmp_path):
    """Each process evaluates its share of the images (NCCL gathers the boxes), the figures are one process's."""
    evaluate(cub, seg("off") / "model-2.pth", cls / "top1top5.npy", tmp_path, "--amp", "off", launcher=TORCHRUN)
    assert_boxes_agree(seg("off"), tmp_path)
    make_masks(cub, cam("off") / "model-2.pth", tmp_path / "masks", "--amp", "off", launcher=TORCHRUN)
    assert_masks_agree(cam("off") / "masks", tmp_path / "masks")


# ------------------------------------------------------------------------ 9. cuda:N under torchrun
@needs_cuda
@pytest.mark.parametrize("device", ["cuda:0", "cuda:1"])
def test_one_gpu_for_every_torchrun_process_is_refused(cub, device, tmp_path):
    """Every process would take the same GPU: refused before any work, each process exiting 2 with one `error:`
    line (torchrun itself then exits 1 and lists the processes' exit codes)."""
    p = run_script(*TORCHRUN, *cam_train(cub), "--device", device, "--savepath", tmp_path, check=False, timeout=180)
    assert p.returncode != 0
    assert re.search(r"exitcode\s*:\s*2\b", p.stderr), p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert errors and all(f"--device {device}" in line and "torchrun" in line for line in errors), p.stderr[-3000:]
    assert os.path.join(ROOT, "utils") not in p.stderr  # no traceback through the project's code
    assert not (tmp_path / "log.jsonl").exists()


# ----------------------------------------------------------------------- 10. the first hour's gaps
def scaler_stepped(savepath) -> int:
    """The steps since fp16's GradScaler last skipped one (found an inf or NaN gradient), from checkpoint.pth."""
    return torch.load(savepath / "checkpoint.pth", map_location="cpu", weights_only=True)["scaler"]["_growth_tracker"]


@needs_cuda
def test_fp16_training_steps_with_the_fused_sgd(cam):
    """Finite losses are not enough: a scaler that skipped every step would log them too. The last 3 of the 6 steps
    at least stepped, through the fused SGD (which takes the scaler's flag on the device)."""
    state = torch.load(cam("fp16") / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert state["scaler"]["_growth_tracker"] >= 3, state["scaler"]
    assert all(g["fused"] for g in state["optimizer"]["param_groups"])


def test_a_snapshot_loads_without_cuda(cam):
    """A bare torch.load of model-N.pth in a process that sees no GPU: CPU tensors, the state dict's metadata."""
    code = ("import sys, torch; s = torch.load(sys.argv[1], weights_only=True); "
            "assert all(t.device.type == 'cpu' for t in s.values()) and s._metadata; print(len(s))")
    p = run_script("-c", code, cam("off") / "model-2.pth", env={"CUDA_VISIBLE_DEVICES": ""})
    assert int(p.stdout) > 100


@needs_cuda
def test_fp16_compiled_training_and_its_resume(cub, tmp_path):
    """--compile with fp16's scaler: 2 steps, stopped, resumed to the end with the scaler's state."""
    args = [*cam_train(cub), "--amp", "fp16", "--compile", "--save_every", 1, "--savepath", tmp_path]
    run_script(*args, "--max_steps", 2)
    assert scaler_stepped(tmp_path) >= 1
    p = run_script(*args, "--resume")
    assert "resumed from" in p.stdout and "step 2" in p.stdout
    assert_trained(tmp_path, "model-2.pth", steps=6)
    assert scaler_stepped(tmp_path) >= 3


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Images of CUB's sizes (~500 x 375): 3 classes x 6."""
    root = str(tmp_path_factory.mktemp("cuda-big") / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=6, val_per_class=1, seed=9, min_size=300, max_size=500)
    return root


def test_masks_at_the_papers_size_through_eight_loader_workers(big, cam, tmp_path):
    """The ring of shared batches, pinned on CUDA, filled by 8 workers from full-size images at 256 x 256."""
    run_script("cub200-cam/test.py", "--datapath", big, "--clsnum", 3, "--snapshot", cam("off") / "model-2.pth",
               "--maskpath", tmp_path, "--batch_size", 4, "--post_workers", 2, "--backbone", "resnet18",
               "--device", DEVICE, "--num_workers", 8)
    assert_masks_of("cub", big, tmp_path)


def test_wsol_protocol_pictures_and_localize(cub, seg, cls, tmp_path):
    """The seg stage's --protocol wsol and --vis, and localize.py with masks and pictures, on the device."""
    p = run_script("cub200-seg/test.py", "--datapath", cub, "--snapshot", seg("off") / "model-2.pth", "--protocol",
                   "wsol", "--top1top5", "none", "--savepath", tmp_path / "wsol", *TEST, *small())
    assert json.load(open(tmp_path / "wsol" / "metrics.json"))["count"] == 9, p.stdout[-2000:]
    evaluate(cub, seg("off") / "model-2.pth", cls / "top1top5.npy", tmp_path / "vis", "--vis", 4)
    assert len(os.listdir(tmp_path / "vis" / "vis")) == 5  # four pictures and their grid
    run_script("cub200-seg/localize.py", "--snapshot", seg("off") / "model-2.pth", os.path.join(cub, "images"),
               "--savepath", tmp_path / "loc", "--masks", "--vis", "--backbone", "resnet18", "--device", DEVICE,
               "--num_workers", 1, "--size", SIZE)
    rows = open(tmp_path / "loc" / "localize" / "boxes.csv").read().splitlines()
    assert len(rows) == 1 + 21  # 3 classes x 7 images


@pytest.mark.skipif(DRY_RUN or not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] >= 8,
                    reason="needs a GPU that only emulates bf16 (compute capability below 8.0)")
def test_bf16_where_the_gpu_only_emulates_it_is_refused(cub, tmp_path):
    p = run_script(*cam_train(cub), "--amp", "bf16", "--savepath", tmp_path, check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: --amp bf16: the GPU cuda:0"), p.stderr[-2000:]


@two_gpus
def test_torchrun_masks_into_a_partly_filled_folder(cub, cam, tmp_path):
    """2 ranks, half the masks already there: each missing one written once (rank 0 lists them for both)."""
    import shutil
    files = mask_files(cam("off") / "masks")
    for f in files[::2]:
        os.makedirs(tmp_path / f.parent, exist_ok=True)
        shutil.copy(cam("off") / "masks" / f, tmp_path / f)
    p = make_masks(cub, cam("off") / "model-2.pth", tmp_path, "--amp", "off", launcher=TORCHRUN)
    assert f"wrote {len(files) - len(files[::2])} pseudo masks" in p.stdout, p.stdout[-2000:]
    assert_masks_agree(cam("off") / "masks", tmp_path)


@two_gpus
def test_torchrun_resume_equals_one_process(cub, cam, tmp_path):
    """Stopped after 2 steps and resumed under torchrun (NCCL): the uninterrupted one-process run's weights."""
    args = [*TORCHRUN, *cam_train(cub), "--amp", "off", "--save_every", 1, "--savepath", tmp_path]
    run_script(*args, "--max_steps", 2)
    run_script(*args, "--resume")
    assert_trained(tmp_path, "model-2.pth", steps=6)
    assert_weights_close(weights(cam("off") / "model-2.pth"), weights(tmp_path / "model-2.pth"), tol=1e-3)


def test_first_hour(tmp_path):
    """`python -m utils.first_hour` on the cam stage's models (the CPU dry run at tiny sizes): a row per script,
    its speed, and on CUDA its peak memory and the largest batch that fits."""
    run_script("-m", "utils.first_hour", "--only", "cub200-cam", "--steps", 2, "--warmup", 1, "--growth", 2,
               "--json", tmp_path / "first_hour.json")
    rows = json.load(open(tmp_path / "first_hour.json"))["stages"]
    assert [r["script"] for r in rows] == ["cub200-cam/train.py", "cub200-cam/test.py"]
    assert all(r["images_per_s"] > 0 and r["largest_batch"] >= r["batch"] for r in rows)
    assert DRY_RUN or all(r["peak_gib"] > 0 for r in rows)

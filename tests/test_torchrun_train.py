"""torchrun training is the single-process training: the CUB cam stage (dual head, two dropout masks,
an epoch boundary) and the seg stage give the same weights and losses under `torchrun --nproc_per_node 2`
as in one process, to 1e-9 when run in float64 (tests/float64_train.py; float32 only adds summation-order
noise, see test_imagenet.py's float32 check). Per-process BatchNorm (--no-sync_bn) is shown to differ."""
import json
import os

import pytest
import torch

from conftest import prepared_cub, run_script

SMALL = ["--clsnum", 3, "--backbone", "resnet18", "--device", "cpu", "--num_workers", 0, "--size", 48, "--crop", 40,
         "--pretrained", "none", "--batch_size", 4, "--epoch", 2, "--print_freq", 1]
TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node", 2]


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ddp") / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=4, val_per_class=1, seed=5, min_size=48, max_size=64)
    return root


def _train(path, stage, *args, torchrun=False):
    run_script(*(TORCHRUN if torchrun else []), "tests/float64_train.py", f"{stage}/train.py", *SMALL, *args,
               "--savepath", path)
    losses = [json.loads(r)["loss"] for r in open(path / "log.jsonl")]
    return torch.load(path / "model-2.pth", weights_only=True), losses


@pytest.fixture(scope="module")
def cam_one(cub, tmp_path_factory):
    return _train(tmp_path_factory.mktemp("cam_one"), "cub200-cam", "--datapath", cub)


def _assert_equal(one, two):
    (a, la), (b, lb) = one, two
    assert a.keys() == b.keys() and a["linear.weight"].dtype == torch.float64
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-9, msg=k)
    # the losses themselves are taken in float32 (the stage's loss functions): equal to its precision
    assert len(la) == 6 and la == pytest.approx(lb, rel=1e-6)


def test_cam_stage(cub, cam_one, tmp_path):
    _assert_equal(cam_one, _train(tmp_path, "cub200-cam", "--datapath", cub, torchrun=True))


def test_cam_stage_with_per_process_batchnorm_differs(cub, cam_one, tmp_path):
    b, _ = _train(tmp_path, "cub200-cam", "--datapath", cub, "--no-sync_bn", torchrun=True)
    assert not torch.allclose(cam_one[0]["bn5.running_var"], b["bn5.running_var"], rtol=1e-3)


def test_seg_stage(cub, tmp_path):
    # pseudo masks of smooth random CAMs, written here (where they come from does not matter to this test)
    import cv2
    import numpy as np
    from utils.data.images import mask_name
    from utils.data.datasets import CUB
    from utils.engine.masks import write_mask
    rng = np.random.default_rng(0)
    for s in CUB.read_list(cub, "train.txt", with_boxes=False):
        h, w = cv2.imread(s.path).shape[:2]
        cam = cv2.GaussianBlur(rng.random((32, 32), dtype=np.float32), (0, 0), 3)
        os.makedirs(os.path.dirname(tmp_path / "masks" / mask_name(s.name)), exist_ok=True)
        write_mask(cam, w, h, str(tmp_path / "masks" / mask_name(s.name)))
    args = ("cub200-seg", "--datapath", cub, "--maskpath", tmp_path / "masks")
    _assert_equal(_train(tmp_path / "one", *args), _train(tmp_path / "two", *args, torchrun=True))


def test_bad_files_of_every_rank_are_counted_and_listed(tmp_path):
    root = str(tmp_path / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=8, val_per_class=1, seed=6, min_size=48, max_size=64)
    from utils.data.datasets import CUB
    import numpy as np
    samples = CUB.read_list(root, "train.txt", with_boxes=False)
    # one unreadable image in the first batch of each of the two ranks (batch 8: 4 per rank, 3 batches each):
    # epoch 0's order is the permutation of seed [0, 0], of which rank r takes every other from r
    order = np.random.default_rng([0, 0]).permutation(len(samples))
    bad = [samples[int(order[r])] for r in range(2)]
    for s in bad:
        with open(s.path, "wb") as f:
            f.write(b"not an image")
    p = run_script(*TORCHRUN, "cub200-cam/train.py", "--datapath", root, "--savepath", tmp_path / "out", *SMALL[:-6],
                   "--batch_size", 8, "--epoch", 1, "--on-bad-image", "skip")
    listed = [line.split("\t")[0] for line in open(tmp_path / "out" / "skipped.txt").read().splitlines()]
    assert sorted(listed) == sorted(s.name for s in bad)
    assert "2 bad files were skipped" in p.stdout

"""The learning check of the WSOL backbones: from scratch, on the CPU, in about a minute each, the cam stage of
VGG16 and of InceptionV3 learns to localise, clearly better than any fixed centred box and than the same network
untrained.

The set: dataset/synthetic.py's CUB layout with smaller objects than its default (SMALL: 8-20 % of the image,
placed off-centre), so that boxes that ignore the image score low. Measured: the cam stage's own localisation
(`utils.cam_loc`: the map of the ground-truth class boxed at a fraction of its maximum, docs/method.md §6) on
the 36 test images at its best threshold (0.05..0.95, the threshold-free view of wsolevaluation's MaxBoxAcc),
against the best centred box of any side (utils/evaluation/fixed_boxes.py) and the untrained network at its
best threshold: each of the three picks its best on the test boxes themselves. The untrained network is no
zero: random convolutions already answer the textured object on a muted background (VGG16: 36 here). The
figures over three seeds, and why the seg stage is not in this check, are in docs/backbones.md.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import prepared_cub, run_inprocess
from network.mffnet import build_mffnet
from utils.evaluation.fixed_boxes import cub_baselines

SMALL = (0.08, 0.20)        # object area, as a fraction of the image
SIZE, CROP = 96, 80
# per backbone: cam epochs and learning rate (head and backbone alike: everything trains from scratch)
RECIPE = {"vgg16": (10, 0.02), "inception_v3": (10, 0.005)}
MARGIN = 20.0  # points over the better of the two that count as "clearly better" (three seeds: 27.8 to 58.3)


@pytest.fixture(scope="module")
def small_objects(tmp_path_factory):
    """3 classes, 16 training and 12 test images each, 80-112 px, objects of 8-20 % of the image."""
    root = str(tmp_path_factory.mktemp("learn") / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=16, val_per_class=12, seed=0, min_size=80, max_size=112,
                 area_range=SMALL)
    return root


def cam_loc(snapshot, datapath: str, backbone: str) -> float:
    run_inprocess("utils/cam_loc.py", "--snapshot", snapshot, "--datapath", datapath, "--backbone", backbone,
                  "--size", SIZE, "--crop", CROP, "--device", "cpu", "--num_workers", 0)
    return json.load(open(snapshot.parent / "cam_loc.json"))["best_gt_known_loc"]


@pytest.mark.parametrize("name", sorted(RECIPE))
def test_a_short_run_localises_clearly_better_than_a_fixed_box(name, small_objects, tmp_path):
    fixed = cub_baselines(small_objects, SIZE, CROP)["best_centred_box"]
    assert fixed < 40, "the set must be one where boxes that ignore the image score low"
    epochs, lr = RECIPE[name]
    torch.manual_seed(0)   # the training run's --seed 0: the same initial network, saved untrained
    (tmp_path / "untrained").mkdir()
    torch.save(build_mffnet(3, name).state_dict(), tmp_path / "untrained" / "model-0.pth")
    untrained = cam_loc(tmp_path / "untrained" / "model-0.pth", small_objects, name)
    run_inprocess("cub200-cam/train.py", "--datapath", small_objects, "--backbone", name, "--device", "cpu",
                  "--num_workers", 0, "--size", SIZE, "--crop", CROP, "--seed", 0, "--pretrained", "none",
                  "--clsnum", 3, "--epoch", epochs, "--snapshot_from", epochs, "--batch_size", 16, "--lr", lr,
                  "--backbone_lr", lr, "--savepath", tmp_path / "cam")
    trained = cam_loc(tmp_path / "cam" / f"model-{epochs}.pth", small_objects, name)
    assert trained >= max(fixed, untrained) + MARGIN, \
        f"{name}: {trained:.1f}, untrained {untrained:.1f}, the best fixed centred box {fixed:.1f}"

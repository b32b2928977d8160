"""The method layer (utils/method/): a prior registered in `PRIORS` alone is selectable by the cam stage's
`--prior` and written to channel 1 of the masks; the seg target's thresholds; the Gaussian's degenerate cases;
the losses against their equations computed by hand."""
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import prepared_cub, run_inprocess
from network import build_mffnet
from utils.stages import cli
from utils.method import pseudo_mask as method
from utils.method.losses import dual_head_loss, seg_loss, single_head_loss
from utils.method.seg_target import BACKGROUND, OBJECT, seg_target
from utils.engine.masks import make_pseudo_mask


def inverted_cam(cam256: np.ndarray) -> np.ndarray:
    """A throwaway prior: 1 - CAM (high where the CAM is low), easy to recognise in a written mask."""
    return 1.0 - cam256


def test_a_prior_registered_in_priors_is_written_by_the_cam_stage(tmp_path, monkeypatch):
    """One entry in PRIORS, no other file touched: `cub200-cam/test.py --prior NAME` accepts the name and the
    written masks' channel 1 is that prior (1 - CAM, so channel 0 + channel 1 = 255 up to the two truncations)."""
    monkeypatch.setitem(method.PRIORS, "inverted", inverted_cam)
    root = tmp_path / "CUB_200_2011"
    prepared_cub(str(root), num_classes=2, train_per_class=2, val_per_class=1, seed=4, min_size=48, max_size=64)
    torch.manual_seed(0)
    torch.save(build_mffnet(2, "resnet18").state_dict(), tmp_path / "cam.pth")
    masks = tmp_path / "masks"
    # --post_workers 0: the masks are written in this process, which holds the monkeypatched table
    run_inprocess("cub200-cam/test.py", "--datapath", root, "--clsnum", 2, "--snapshot", tmp_path / "cam.pth",
                  "--maskpath", masks, "--post_workers", 0, "--prior", "inverted", "--backbone", "resnet18",
                  "--device", "cpu", "--num_workers", 0, "--size", 48)
    names = [line.split(",")[0] for line in open(root / "train.txt")]
    for name in names:
        mask = cv2.imread(str(masks / (os.path.splitext(name)[0] + ".png")))
        total = mask[..., 0].astype(int) + mask[..., 1]
        assert mask[..., 2].max() == 0 and total.min() >= 253 and total.max() <= 255, name
        assert mask[..., 1].max() - mask[..., 1].min() > 50      # a map, not a constant
    assert len(names) == 4


def test_the_cli_choices_and_the_fast_path_follow_priors(monkeypatch):
    cam = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    parser = cli.make_parser("x", train=False)
    cli.add_mask_args(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--prior", "inverted"])
    monkeypatch.setitem(method.PRIORS, "inverted", inverted_cam)
    parser = cli.make_parser("x", train=False)
    cli.add_mask_args(parser)
    assert parser.parse_args(["--prior", "inverted"]).prior == "inverted"
    # a prior without a fast version: the fast path runs the table's function, and gives the definition's mask
    assert np.array_equal(make_pseudo_mask(cam, 61, 47, "inverted"), method.pseudo_mask(cam, 61, 47, "inverted"))
    assert np.array_equal(make_pseudo_mask(cam, 61, 47, "none"), method.pseudo_mask(cam, 61, 47, "none"))
    assert make_pseudo_mask(cam, 61, 47, "none")[..., 1].max() == 0


def test_unknown_or_misshapen_priors_are_refused(monkeypatch):
    cam = np.ones((32, 32), np.float32)
    with pytest.raises(ValueError, match="unknown prior 'nope'"):
        make_pseudo_mask(cam, 10, 10, "nope")
    monkeypatch.setitem(method.PRIORS, "row", lambda cam256: cam256[0])
    with pytest.raises(ValueError, match="not 256 x 256"):
        make_pseudo_mask(cam, 10, 10, "row")


def test_seg_target_thresholds():
    fore = np.array([0.3, 0.25, 0.1, 0.1, 0.005, 0.01, 0.2])
    gaus = np.array([0.0, 0.0, 0.3, 0.25, 0.0, 0.0, 0.2])
    target, weight = seg_target(fore, gaus)
    assert (OBJECT, BACKGROUND) == (0.25, 0.01)
    assert target.tolist() == [1, 0, 1, 0, 0, 0, 0]     # strictly above 0.25 in either channel
    assert weight.tolist() == [1, 0, 1, 0, 1, 0, 0]     # target, or CAM strictly below 0.01; the rest ignored


def test_degenerate_moments_give_no_gaussian():
    assert method.exponent_factor(0.0, 2.0, 0.0) is None     # all weight on one column
    assert method.exponent_factor(2.0, 2.0, 2.0) is None     # on a diagonal line: correlation 1
    assert method.exponent_factor(2.0, 8.0, 2.0) == pytest.approx(-1 / (2 * (1 - 4 / 16)))
    assert method.gaussian(10.0, 10.0, 2.0, 2.0, -2.0) is None
    g = method.gaussian(10.0, 20.0, 2.0, 0.5, 0.0)
    assert g[20, 10] == 1.0 and g[20, 12] == pytest.approx(np.exp(-1.0))  # exp(-dx^2 / (2 vx))
    x0, x1, y0, y1 = method.gaussian_box(10.0, 20.0, 2.0, 0.5)
    assert g[y0:y1 + 1, x0:x1 + 1].min() > 0 and np.count_nonzero(g) == (x1 - x0 + 1) * (y1 - y0 + 1)
    assert g[y0 - 1, 10] == 0 and g[20, x1 + 1] == 0 and g[y0, 10] < method.G_FLOOR   # 0 beyond the box


class Fixed(torch.nn.Module):
    """A 'model' returning fixed outputs, whatever the image."""

    def __init__(self, *outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, image):
        return self.outputs if len(self.outputs) > 1 else self.outputs[0]


def test_losses_follow_their_equations():
    torch.manual_seed(0)
    deep, fused, labels = torch.randn(3, 5, 4, 4), torch.randn(3, 5, 4, 4), torch.tensor([0, 4, 2])
    batch = {"image": torch.zeros(3, 3, 8, 8), "label": labels}
    s_deep, s_fused = deep.mean((2, 3)), fused.mean((2, 3))
    p = torch.softmax(s_deep, 1)
    ce = -torch.log(p[torch.arange(3), labels]).mean()
    soft = -(p * torch.log_softmax(s_fused, 1)).sum(1).mean()
    assert dual_head_loss(Fixed(deep, fused), batch).item() == pytest.approx(((ce + soft) / 2).item(), rel=1e-6)
    assert single_head_loss(Fixed(deep), batch).item() == pytest.approx(ce.item(), rel=1e-6)

    # seg: a 1 x 1 x 2 x 2 logit map, upsampled (align_corners) to 3 x 3; one pixel ignored
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 4.0]]]])
    target = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    weight = torch.ones(1, 3, 3)
    weight[0, 1, 1] = 0
    up = torch.tensor([[0.0, 1.0, 2.0], [-0.5, 1.25, 3.0], [-1.0, 1.5, 4.0]])   # bilinear by hand
    bce = -(target[0] * F.logsigmoid(up) + (1 - target[0]) * F.logsigmoid(-up))
    want = (bce * weight[0]).sum() / 9                                             # ignored pixels stay in the mean
    got = seg_loss(Fixed(logits), {"image": torch.zeros(1, 3, 3, 3), "mask": torch.stack([target, weight], 1)})
    assert got.item() == pytest.approx(want.item(), rel=1e-6)

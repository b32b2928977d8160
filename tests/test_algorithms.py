"""Hand-computed answers for the algorithms of docs/method.md §4-§6: IoU, box extraction, the Gaussian
prior, segmentation targets and ignore weights, GT-box geometry and the metrics."""
import math

import numpy as np
import pytest

from utils.method.boxes import best_iou, iou, largest_box, localisation_metrics
from utils.method.pseudo_mask import gaussian_prior
from utils.engine.masks import make_pseudo_mask
from utils.data.transforms import boxes_to_eval_frame, resize_transform


def test_iou_hand_computed():
    assert iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)     # inter 1, union 4 + 4 - 1
    assert iou([0, 0, 2, 3], [1, 0, 3, 3]) == pytest.approx(3 / 9)     # inter 1 x 3, union 6 + 6 - 3
    assert iou([0, 0, 2, 2], [2, 0, 4, 2]) == 0.0                      # touching edges do not overlap
    assert iou([0, 0, 2, 2], [5, 5, 6, 6]) == 0.0
    assert iou([1, 1, 3, 3], [1, 1, 3, 3]) == pytest.approx(1.0)


def test_best_iou_takes_the_max_over_gt_and_none_is_zero():
    assert best_iou([0, 0, 2, 2], [[5, 5, 6, 6], [0, 0, 2, 2]]) == pytest.approx(1.0)
    assert best_iou(None, [[0, 0, 2, 2]]) == 0.0


def test_largest_box_picks_the_largest_contour():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:6] = 1          # 3 x 3
    mask[10:15, 20:28] = 1      # 5 rows x 8 columns: the larger
    assert largest_box(mask) == [20, 10, 28, 15]   # x0, y0, x + w, y + h
    assert largest_box(np.zeros((8, 8), np.uint8)) is None


def test_gaussian_prior_of_one_rectangle_is_centred_with_its_shrunk_variance():
    cam = np.zeros((256, 256), np.float32)
    cam[75:86, 90:111] = 0.3    # 21 columns x 11 rows inside [0.1, 0.5]
    g = gaussian_prior(cam)
    # uniform weights: mean = centre (100, 80); variance of 21 consecutive integers = (21^2 - 1) / 12
    vx, vy = (21 ** 2 - 1) / 12 / 10, (11 ** 2 - 1) / 12 / 10
    assert g[80, 100] == pytest.approx(1.0)
    assert g[80, 102] == pytest.approx(math.exp(-0.5 * 4 / vx), rel=1e-6)
    assert g[83, 100] == pytest.approx(math.exp(-0.5 * 9 / vy), rel=1e-6)
    assert np.unravel_index(g.argmax(), g.shape) == (80, 100)


def test_gaussian_prior_ignores_confident_and_tiny_regions():
    cam = np.zeros((256, 256), np.float32)
    cam[10:60, 10:60] = 0.9     # above 0.5: no prior
    cam[200:204, 200:204] = 0.3  # contour area 9 < 20: no prior
    assert gaussian_prior(cam).max() == 0.0


def test_pseudo_mask_channels_and_size():
    cam = np.zeros((32, 32), np.float32)
    cam[8:24, 8:24] = 1.0
    mask = make_pseudo_mask(cam, width=100, height=60)
    assert mask.shape == (60, 100, 3) and mask.dtype == np.uint8
    assert mask[..., 2].max() == 0
    assert mask[30, 50, 0] >= 250            # the CAM's peak, normalised to ~255
    assert mask[0, 0, 0] == 0


def test_segmentation_target_and_ignore_weight():
    # four 64-column stripes: (CAM, prior) = (0.3, 0), (0.1, 0.3), (0.005, 0), (0.2, 0.2)
    mask = np.zeros((256, 256, 3), np.float32)
    for i, (fore, gaus) in enumerate([(0.3, 0.0), (0.1, 0.3), (0.005, 0.0), (0.2, 0.2)]):
        mask[:, 64 * i:64 * (i + 1), 0] = fore
        mask[:, 64 * i:64 * (i + 1), 1] = gaus
    image = np.zeros((256, 256, 3), np.uint8)
    _, tw = resize_transform(256)(image, mask)
    target, weight = tw[0, 0, ::64].tolist(), tw[1, 0, ::64].tolist()
    assert target == [1, 1, 0, 0]       # CAM > 0.25 or prior > 0.25
    assert weight == [1, 1, 1, 0]       # target, or clear background (CAM < 0.01); the rest is ignored


def test_gt_boxes_follow_resize_and_centre_crop():
    boxes = boxes_to_eval_frame([[64, 32, 192, 128]], width=512, height=256, size=256, crop=224)
    assert boxes.tolist() == [[16.0, 16.0, 80.0, 112.0]]     # /2 in x, *1 in y, then -16
    clipped = boxes_to_eval_frame([[-5, -5, 600, 300]], width=512, height=256, size=256, crop=224)
    assert clipped.tolist() == [[0.0, 0.0, 224.0, 224.0]]    # clipped to the image, then to the crop


def test_empty_prediction_is_a_failure_in_the_denominator():
    records = [
        {"name": "a", "label": 0, "iou": 0.9, "empty": False, "top1": True, "top5": True},
        {"name": "b", "label": 0, "iou": 0.0, "empty": True, "top1": True, "top5": True},
        {"name": "c", "label": 1, "iou": 0.6, "empty": False, "top1": False, "top5": True},
        {"name": "d", "label": 1, "iou": 0.5, "empty": False, "top1": True, "top5": True},  # not > 0.5
    ]
    m = localisation_metrics(records)
    assert m["count"] == 4 and m["empty"] == 1
    assert m["gt_known_loc"] == pytest.approx(50.0)
    assert m["top1_loc"] == pytest.approx(25.0)
    assert m["top5_loc"] == pytest.approx(50.0)
    # class 0: 1/2, class 1: 1/2 for GT-known; top-1: class 0 1/2, class 1 0/2
    assert m["gt_known_loc_class_mean"] == pytest.approx(50.0)
    assert m["top1_loc_class_mean"] == pytest.approx(25.0)


def test_metrics_without_classifier_results_report_gt_known_only():
    m = localisation_metrics([{"name": "a", "label": 0, "iou": 0.7, "empty": False, "top1": None, "top5": None}])
    assert m["gt_known_loc"] == 100.0 and "top1_loc" not in m


def test_zero_area_and_outside_gt_boxes_are_misses_not_errors():
    # a zero-area GT box cannot be localised: IoU 0, a miss that stays in the count
    assert best_iou([0, 0, 10, 10], [[5, 5, 5, 9]]) == 0.0
    # a GT box entirely outside the image is clipped to the border line: zero area, a miss again
    outside = boxes_to_eval_frame([[600, 10, 700, 50]], width=512, height=256, size=256, crop=224)
    assert outside[0, 0] == outside[0, 2] and best_iou([0, 0, 224, 224], outside) == 0.0

"""SPOL (Wei et al., "Shallow Feature Matters for Weakly Supervised Object Localization", CVPR 2021), the method
alone: where each part of it is computed. docs/method.md explains each part; change one by editing its file.

    part of the method                             where (module: function)
    ---------------------------------------------  ----------------------------------------------------------
    MFF-Net: ResNet + multi-scale channel          network/mffnet.py: MFFNet, build_mffnet
      attention + shallow x deep fusion (§2)         (backbones: network/backbones/)
    training recipes: epochs, batch, learning      the stage scripts' defaults: cub200-cam/train.py,
      rates, snapshots (§3)                          imagenet-cam/train.py, cub200-seg/train.py, ...
    cam stage losses (§3)                          utils/method/losses.py: dual_head_loss (CUB),
                                                     single_head_loss (ImageNet)
    pseudo mask: normalised CAM + Gaussian prior   utils/method/pseudo_mask.py: pseudo_mask, gaussian_prior
      of the mid-confidence regions (§4)             (every constant: SIZE, EPS, LOW, HIGH, MIN_AREA, SHRINK)
    --prior variants (§4)                          utils/method/pseudo_mask.py: PRIORS
    seg target: object / background / ignored (§5) utils/method/seg_target.py: seg_target (OBJECT, BACKGROUND)
    seg loss: weighted BCE (§5)                    utils/method/losses.py: seg_loss
    mask -> largest contour -> box -> IoU ->       utils/method/boxes.py: largest_box, iou, best_iou,
      GT-known / Top-1 / Top-5 Loc (§6)              localisation_metrics (threshold: the seg test.py defaults)
    wsolevaluation protocol: MaxBoxAcc(V2),        utils/wsol_eval.py (not SPOL's own, reported beside it)
      PxAP (§7)

The rest of utils/ leaves these results unchanged (utils/__init__.py maps it): the stage layer (utils/stages/), the
machinery (utils/engine/: the training loop, the fast pseudo-mask path masks.py, bit for bit the definition, its
worker pools, checkpoints, logs), the data (utils/data/). Nothing here imports torch but losses.py, so that the
pseudo-mask workers stay light.
"""

"""OpenImages30k, cam stage: train the MFF-Net CAM model on image labels (docs/method.md §3, §8).

    python ../dataset/prepare.py openimages --root ../dataset/OpenImages --metadata <wsolevaluation>/metadata/OpenImages
    python train.py                              # one GPU
    torchrun --nproc_per_node 8 train.py         # several GPUs, same total batch size
    python train.py --resume                     # continue from out/checkpoint.pth

Writes out/model-1.pth .. out/model-10.pth, out/checkpoint.pth, out/log.jsonl.
Next: python test.py --snapshot out/model-10.pth

SPOL has no OpenImages recipe; these defaults, and where each comes from:
- 256 x 256 resize, random 224 crop, h-flip: SPOL's CUB and ImageNet recipes and wsolevaluation's
  (--resize_size 256 --crop_size 224).
- ResNet-50 from torchvision's ImageNet weights: SPOL's localisation backbone, and wsolevaluation's ResNet-50.
- 10 epochs: wsolevaluation's OpenImages schedule (their README's OpenImages command, --epochs 10); with
  29,819 images and batch 64 that is 4,660 steps, between SPOL's CUB (3,000) and ImageNet (10,000) cam runs.
- batch 64, lr 0.02 (head) / 0.002 (backbone), constant: SPOL's CUB cam recipe, the fine-tuning recipe of a
  data set of CUB's size (ImageNet's 128 at the same lr was for 1.28M images); batch 64 is also wsolevaluation's
  config.py default and the 10x ratio their --lr_classifier_ratio. Their tuned ResNet-50 learning rate is only in
  their spreadsheet; their README's command decays the lr 10x every 3 epochs (--lr_decay_frequency 3), while
  SPOL keeps it constant in every stage, as here.
- one head, CE on the spatial mean of the fused maps: SPOL's ImageNet model. The CUB dual head (deep maps
  distilled into the fused ones) is SPOL's fine-grained recipe; OpenImages' 100 classes are generic objects,
  as ImageNet's, and wsolevaluation's CAM baseline is plain CE.
- the whole backbone trains (conv1 + bn1 too): SPOL froze the stem only for ImageNet's 1.28M images.
- a snapshot every epoch; test.py without --snapshot takes out/model-10 (the last epoch, as wsolevaluation
  evaluates the last checkpoint).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_cam  # noqa: E402
from utils.data.datasets import OPENIMAGES  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = OPENIMAGES   # utils/data/datasets.py: its lists (`id,label`), one head and CE (see above)
FREEZE_STEM = False    # the whole backbone trains (see above)


def main(argv=None):
    parser = cli.make_parser(__doc__, train=True)
    cli.add_network_args(parser, train=True)
    parser.set_defaults(datapath="../dataset/OpenImages", list="train.txt", clsnum=100, epoch=10, batch_size=64,
                        lr=0.02, backbone_lr=0.002)
    return stage_cam.train(cli.parse(parser, __file__, argv, DATASET, classes=True, freeze_stem=FREEZE_STEM))


if __name__ == "__main__":
    run_main(main)

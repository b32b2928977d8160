"""OpenImages30k, seg stage: train the class-agnostic MFF-Net on the cam stage's pseudo masks (docs/method.md §3, §5).

    python train.py                              # reads ../openimages-cam/out/masks
    torchrun --nproc_per_node 8 train.py
    python train.py --resume

Writes out/model-1.pth, out/model-2.pth, out/checkpoint.pth, out/log.jsonl.
Next: python test.py --split val (choose there), then python test.py (the test split, reported)

SPOL has no OpenImages recipe; these defaults, and where each comes from:
- 256 x 256 resize, random 224 crop, h-flip on image and mask, weighted BCE: SPOL's seg stage (CUB and ImageNet).
- 2 epochs, batch 128, lr 0.02 for head and backbone, constant: SPOL's CUB seg recipe. Its 466 steps (29,819
  images) lie between CUB's 94 and ImageNet's 6,000 (their released snapshot); the seg model learns a
  class-agnostic mask, so its budget follows the data set's size less than the classifier's does.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_seg  # noqa: E402
from utils.data.datasets import OPENIMAGES  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = OPENIMAGES   # utils/data/datasets.py: its lists and stage folders


def main(argv=None):
    parser = cli.make_parser(__doc__, train=True)
    cli.add_network_args(parser, train=True)
    parser.add_argument("--maskpath", default="../openimages-cam/out/masks", help="pseudo masks of the train images")
    parser.set_defaults(datapath="../dataset/OpenImages", list="train.txt", clsnum=1, epoch=2, batch_size=128,
                        lr=0.02, backbone_lr=0.02)
    return stage_seg.train(cli.parse(parser, __file__, argv, DATASET, dataset_prefix=DATASET.stage_prefix))


if __name__ == "__main__":
    run_main(main)

"""ImageNet-1K, cam stage: write the Gaussian-enhanced pseudo mask of every training image (docs/method.md §4).

    python test.py                                               # out/model-6000(.pth), else the last out/model-N
    python test.py --snapshot out/model-6000.pth                   # -> out/masks/<synset>/<file>.png
    torchrun --nproc_per_node 8 test.py --snapshot out/model-6000.pth
    python test.py --snapshot <the authors' cam checkpoint>      # their weights load as they are

Masks already written are skipped (--overwrite rewrites them), so an interrupted run just continues.
Next: cd ../imagenet-seg && python train.py
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_cam  # noqa: E402
from utils.data.datasets import IMAGENET  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = IMAGENET     # utils/data/datasets.py: its lists (train/)
RELEASED = "model-6000"  # without --snapshot: out/model-6000, the original's name, else the last out/model-N


def main(argv=None):
    parser = cli.make_parser(__doc__, train=False)
    cli.add_network_args(parser, train=False)
    cli.add_mask_args(parser)
    # masks come from the whole image resized (no crop)
    parser.set_defaults(datapath="../dataset/ImageNet2012", list="train.txt", clsnum=1000, crop=0)
    return stage_cam.make_masks(cli.parse(parser, __file__, argv, DATASET, classes=True, released=RELEASED))


if __name__ == "__main__":
    run_main(main)

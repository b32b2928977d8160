"""ImageNet-1K, seg stage: localise every test image and report Top-1 / Top-5 / GT-known Loc (docs/method.md §6).

    python test.py                  # the authors' out/model-6000 (or the last out/model-N) and ../imagenet-cls's
                                    # out/top1top5.npy, else top1top5.npy (the authors'), as their README
    python test.py --snapshot out/model-6000.pth --top1top5 ../imagenet-cls/out/top1top5.npy
    python test.py --snapshot out/model-6000.pth --top1top5 none            # GT-known Loc only
    torchrun --nproc_per_node 8 test.py --snapshot out/model-6000.pth
    python test.py --snapshot out/model-6000.pth --protocol wsol            # MaxBoxAcc, MaxBoxAccV2
    python test.py --snapshot out/model-6000.pth --vis 8                    # out/vis/*.png

Prints the figures (image-level and mean per class) and writes out/metrics.json and out/boxes.csv.
Images with an empty predicted mask count as failures (the original skipped them);
ILSVRC2012_val_00033202.JPEG is left out as in the original.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_seg  # noqa: E402
from utils.data.datasets import IMAGENET  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = IMAGENET     # utils/data/datasets.py: its lists and box files, the mask threshold (0.8), the image left
                       # out (wrong label), the cls stage
RELEASED = "model-6000"  # without --snapshot: out/model-6000, the authors' released name, else the last out/model-N


def main(argv=None):
    parser = cli.make_parser(__doc__, train=False)
    cli.add_network_args(parser, train=False)
    cli.add_eval_args(parser)
    parser.set_defaults(datapath="../dataset/ImageNet2012", list="val.txt", threshold=DATASET.threshold)
    return stage_seg.evaluate(cli.parse(parser, __file__, argv, DATASET, released=RELEASED))


if __name__ == "__main__":
    run_main(main)

"""CUB-200-2011, seg stage: localise every test image and report Top-1 / Top-5 / GT-known Loc (docs/method.md §6).

    python test.py                  # the authors' out/model-8 (or the last out/model-N) and ../cub200-cls's
                                    # out/top1top5.npy, else top1top5.npy (the authors'), as their README
    python test.py --snapshot out/model-2.pth --top1top5 ../cub200-cls/out/top1top5.npy
    python test.py --snapshot out/model-2.pth --top1top5 none            # GT-known Loc only
    torchrun --nproc_per_node 4 test.py --snapshot out/model-2.pth
    python test.py --snapshot out/model-2.pth --protocol wsol            # MaxBoxAcc, MaxBoxAccV2, PxAP
    python test.py --snapshot out/model-2.pth --vis 8 --maskpath ../cub200-cam/out/masks   # out/vis/*.png

Prints the figures (image-level and mean per class) and writes out/metrics.json and out/boxes.csv.
Images with an empty predicted mask count as failures (the original skipped them).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_seg  # noqa: E402
from utils.data.datasets import CUB  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = CUB          # utils/data/datasets.py: its lists and boxes, the mask threshold (0.2), the cls stage
RELEASED = "model-8"   # without --snapshot: out/model-8, the authors' released name, else the last out/model-N


def main(argv=None):
    parser = cli.make_parser(__doc__, train=False)
    cli.add_network_args(parser, train=False)
    cli.add_eval_args(parser)
    parser.set_defaults(datapath="../dataset/CUB_200_2011", list="val.txt", threshold=DATASET.threshold)
    return stage_seg.evaluate(cli.parse(parser, __file__, argv, DATASET, released=RELEASED))


if __name__ == "__main__":
    run_main(main)

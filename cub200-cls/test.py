"""CUB-200-2011, cls stage: classify the test images and write out/top1top5.npy for the seg stage.

    python test.py                                   # out/model-20(.pth) (the authors' name), else the last out/model-N
    python test.py --snapshot out/model-20.pth
    python test.py --arch resnet50 --snapshot out/model-20.pth --size 256   # a classifier trained with --arch resnet50

out/top1top5.npy is a NumPy structured array (name, top1, top5), loadable with allow_pickle=False.
Next: cd ../cub200-seg && python test.py          (reads ../cub200-cls/out/top1top5.npy)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_cls  # noqa: E402
from utils.data.datasets import CUB  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = CUB          # utils/data/datasets.py: its lists, its classes (classes.txt)
RELEASED = "model-20"  # without --snapshot: out/model-20, the authors' name, else the last out/model-N


def main(argv=None):
    parser = cli.make_parser(__doc__, train=False)
    cli.add_cls_args(parser)
    cli.add_force_arg(parser, "--savepath", "its top1top5.npy")
    # the recipe tests on the whole image resized to 685 x 685 (no crop)
    parser.set_defaults(datapath="../dataset/CUB_200_2011", list="val.txt", size=685, crop=0, batch_size=16)
    return stage_cls.test(cli.parse(parser, __file__, argv, DATASET, classes=True, released=RELEASED))


if __name__ == "__main__":
    run_main(main)

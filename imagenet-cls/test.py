"""ImageNet-1K, cls stage: classify the val images and write out/top1top5.npy for the seg stage.

    python test.py                 # the authors' classifier: EfficientNet-B7 with efficientnet_pytorch's ImageNet
                                   # weights, resource/efficientnet-b7-dcc49843.pth (downloaded when absent, online)
    torchrun --nproc_per_node 8 test.py
    python test.py --arch resnet50 --size 256 --crop 224 --resize shorter   # torchvision's ResNet-50, ~76% top-1

Input as the authors': normalise, resize 685 x 685, no crop.
Next: cd ../imagenet-seg && python test.py          (reads ../imagenet-cls/out/top1top5.npy)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_cls  # noqa: E402
from utils.data.datasets import IMAGENET  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = IMAGENET     # utils/data/datasets.py: its lists (val/)


def main(argv=None):
    parser = cli.make_parser(__doc__, train=False)
    cli.add_cls_args(parser)
    cli.add_force_arg(parser, "--savepath", "its top1top5.npy")
    # no training: the ImageNet weights of --arch as released (--snapshot overrides)
    parser.set_defaults(datapath="../dataset/ImageNet2012", list="val.txt", clsnum=1000, size=685, crop=0,
                        batch_size=16)
    return stage_cls.test(cli.parse(parser, __file__, argv, DATASET, classes=True))


if __name__ == "__main__":
    run_main(main)

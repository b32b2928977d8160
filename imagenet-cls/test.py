"""ImageNet-1K, cls stage: classify the val images and write out/top1top5.npy for the seg stage.

    python test.py                                      # torchvision's ResNet-50 (fc included), ~76% top-1
    python test.py --arch timm:efficientnet_b7 --snapshot <its weights> --size 600 --crop 600   # the paper's
    torchrun --nproc_per_node 8 test.py

Default transform: shorter side to 256, centre crop 224 (torchvision's evaluation).
Next: cd ../imagenet-seg && python test.py --snapshot out/model-6000.pth --top1top5 ../imagenet-cls/out/top1top5.npy
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils import cli, stage_cls  # noqa: E402
from utils.errors import run_main  # noqa: E402


def main(argv=None):
    parser = cli.make_parser(__doc__, train=False)
    cli.add_cls_args(parser)
    parser.set_defaults(dataset="imagenet", datapath="../dataset/ImageNet2012", list="val.txt", clsnum=1000,
                        snapshot="../resource/resnet50-19c8e357.pth", size=256, crop=224, resize="shorter",
                        batch_size=128)
    return stage_cls.test(cli.parse(parser, __file__, argv))


if __name__ == "__main__":
    run_main(main)

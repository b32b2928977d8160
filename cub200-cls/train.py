"""CUB-200-2011, cls stage: fine-tune the classifier that decides Top-1/Top-5 Loc (SPEC §3).

    python train.py                                     # ResNet-50 from resource/resnet50-19c8e357.pth
    python train.py --arch timm:efficientnet_b7 --pretrained <its ImageNet weights>   # the paper's (needs timm)
    torchrun --nproc_per_node 4 train.py

Writes out/model-11.pth .. out/model-20.pth, out/checkpoint.pth, out/log.jsonl, out/tb/.
Next: python test.py --snapshot out/model-20.pth
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils import cli, stage_cls  # noqa: E402
from utils.errors import run_main  # noqa: E402


def main(argv=None):
    parser = cli.make_parser(__doc__, train=True)
    cli.add_cls_args(parser)
    # the authors' classifier recipe: resize 685, random crop 600, 20 epochs, batch 16,
    # lr 0.05 for the new fc and 0.005 for the rest, decayed by (1 - epoch/20); snapshots after the half
    parser.set_defaults(dataset="cub", datapath="../dataset/CUB_200_2011", list="train.txt", clsnum=200,
                        size=685, crop=600, epoch=20, batch_size=16, lr=0.05, backbone_lr=0.005, snapshot_from=11)
    return stage_cls.train(cli.parse(parser, __file__, argv))


if __name__ == "__main__":
    run_main(main)

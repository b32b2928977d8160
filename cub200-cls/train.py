"""CUB-200-2011, cls stage: fine-tune the classifier that decides Top-1/Top-5 Loc (docs/method.md §3).

    python train.py                     # the authors' EfficientNet-B7 from resource/efficientnet-b7-dcc49843.pth
                                        # (downloaded there when absent and online)
    torchrun --nproc_per_node 4 train.py
    python train.py --arch resnet50 --size 256 --crop 224     # a ResNet-50 from resource/resnet50-19c8e357.pth

Writes out/model-11.pth .. out/model-20.pth, out/checkpoint.pth, out/log.jsonl, out/tb/.
Next: python test.py          (takes out/model-20.pth)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_cls  # noqa: E402
from utils.data.datasets import CUB  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = CUB          # utils/data/datasets.py: its lists, its classes (classes.txt)


def main(argv=None):
    parser = cli.make_parser(__doc__, train=True)
    cli.add_cls_args(parser)
    # the authors' classifier recipe: EfficientNet-B7, normalise, resize 685, random crop 600, flip; 20 epochs,
    # batch 16; lr 0.05 for `_bn1.weight` and `_fc.bias`, 0.005 for the rest, both x (1 - epoch/20);
    # snapshots after the first half. pretrained "auto": the --arch's ImageNet file in resource/
    parser.set_defaults(datapath="../dataset/CUB_200_2011", list="train.txt", pretrained="auto", size=685, crop=600,
                        epoch=20, batch_size=16, lr=0.05, backbone_lr=0.005, snapshot_from=11)
    return stage_cls.train(cli.parse(parser, __file__, argv, DATASET, classes=True))


if __name__ == "__main__":
    run_main(main)

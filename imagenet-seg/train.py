"""ImageNet-1K, seg stage: train the class-agnostic MFF-Net on the cam stage's pseudo masks (docs/method.md §3, §5).

    python train.py                              # reads ../imagenet-cam/out/masks
    torchrun --nproc_per_node 8 train.py
    python train.py --resume                     # continue mid-epoch

Writes out/model-2000.pth, out/model-4000.pth, ..., out/checkpoint.pth, out/log.jsonl.
Next: python test.py --snapshot out/model-6000.pth
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_seg  # noqa: E402
from utils.data.datasets import IMAGENET  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = IMAGENET     # utils/data/datasets.py: its lists and stage folders


def main(argv=None):
    parser = cli.make_parser(__doc__, train=True)
    cli.add_network_args(parser, train=True)
    parser.add_argument("--maskpath", default="../imagenet-cam/out/masks", help="pseudo masks of the train images")
    # the authors' recipe: one epoch, batch 128, lr 0.02 for head and backbone, a snapshot every 2000 steps
    parser.set_defaults(datapath="../dataset/ImageNet2012", list="train.txt", clsnum=1, epoch=1, batch_size=128,
                        lr=0.02, backbone_lr=0.02, snapshot_every=2000, save_every=2000)
    return stage_seg.train(cli.parse(parser, __file__, argv, DATASET, dataset_prefix=DATASET.stage_prefix))


if __name__ == "__main__":
    run_main(main)

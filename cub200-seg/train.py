"""CUB-200-2011, seg stage: train the class-agnostic MFF-Net on the cam stage's pseudo masks (docs/method.md §3, §5).

    python train.py                              # reads ../cub200-cam/out/masks
    torchrun --nproc_per_node 4 train.py
    python train.py --resume

Writes out/model-1.pth, out/model-2.pth, out/checkpoint.pth, out/log.jsonl, out/tb/.
Next: python test.py --snapshot out/model-2.pth
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_seg  # noqa: E402
from utils.data.datasets import CUB  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = CUB          # utils/data/datasets.py: its lists and stage folders


def main(argv=None):
    parser = cli.make_parser(__doc__, train=True)
    cli.add_network_args(parser, train=True)
    parser.add_argument("--maskpath", default="../cub200-cam/out/masks", help="pseudo masks of the train images")
    # the authors' recipe: 2 epochs, batch 128, the same lr 0.02 for head and backbone, a snapshot per epoch
    parser.set_defaults(datapath="../dataset/CUB_200_2011", list="train.txt", clsnum=1, epoch=2, batch_size=128,
                        lr=0.02, backbone_lr=0.02)
    return stage_seg.train(cli.parse(parser, __file__, argv, DATASET, dataset_prefix=DATASET.stage_prefix))


if __name__ == "__main__":
    run_main(main)

"""CUB-200-2011, cam stage: train the MFF-Net CAM model (dual head, docs/method.md §3) on image labels.

    python train.py                              # one GPU (or the CPU): the paper's recipe
    torchrun --nproc_per_node 4 train.py         # several GPUs, same total batch size
    python train.py --resume                     # continue an interrupted run

Writes out/model-18.pth .. out/model-32.pth, out/checkpoint.pth (resumable state), out/log.jsonl, out/tb/.
Next: python test.py --snapshot out/model-32.pth
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_cam  # noqa: E402
from utils.data.datasets import CUB  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = CUB          # utils/data/datasets.py: its lists, its classes (classes.txt), the dual head and its loss
FREEZE_STEM = False    # conv1 + bn1 train too: SPOL froze them for ImageNet alone


def main(argv=None):
    parser = cli.make_parser(__doc__, train=True)
    cli.add_network_args(parser, train=True)
    # the authors' recipe: 32 epochs, batch 64, lr 0.02 for the head and 10x lower for the backbone;
    # snapshots from epoch 18 on (the second half of training)
    parser.set_defaults(datapath="../dataset/CUB_200_2011", list="train.txt", epoch=32, batch_size=64, lr=0.02,
                        backbone_lr=0.002, snapshot_from=18)
    return stage_cam.train(cli.parse(parser, __file__, argv, DATASET, classes=True, freeze_stem=FREEZE_STEM))


if __name__ == "__main__":
    run_main(main)

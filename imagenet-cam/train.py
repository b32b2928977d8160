"""ImageNet-1K, cam stage: train the MFF-Net CAM model on image labels (docs/method.md §3).

    python train.py                              # one GPU: the paper's recipe
    torchrun --nproc_per_node 8 train.py         # several GPUs, same total batch size
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 train.py   # several nodes
    python train.py --resume                     # continue mid-epoch from out/checkpoint.pth

Writes out/model-2000.pth, out/model-4000.pth, ... (every 2000 steps), out/checkpoint.pth, out/log.jsonl.
Next: python test.py --snapshot out/model-6000.pth
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_cam  # noqa: E402
from utils.data.datasets import IMAGENET  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = IMAGENET     # utils/data/datasets.py: its lists (train/), one head and CE
FREEZE_STEM = True     # the authors' ImageNet recipe: conv1 + bn1 stay as pretrained


def main(argv=None):
    parser = cli.make_parser(__doc__, train=True)
    cli.add_network_args(parser, train=True)
    # the authors' recipe: one epoch, batch 128, lr 0.02 (head) / 0.002 (backbone), conv1 + bn1 frozen,
    # a snapshot every 2000 steps; the resumable state as often, since an epoch is 10k steps
    parser.set_defaults(datapath="../dataset/ImageNet2012", list="train.txt", clsnum=1000, epoch=1, batch_size=128,
                        lr=0.02, backbone_lr=0.002, snapshot_every=2000, save_every=2000)
    return stage_cam.train(cli.parse(parser, __file__, argv, DATASET, classes=True, freeze_stem=FREEZE_STEM))


if __name__ == "__main__":
    run_main(main)

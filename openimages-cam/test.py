"""OpenImages30k, cam stage: write the Gaussian-enhanced pseudo mask of every training image (docs/method.md §4).

    python test.py                                  # out/model-10(.pth), else the last out/model-N
    python test.py --snapshot out/model-10.pth      # -> out/masks/train/<class>/<id>.png
    torchrun --nproc_per_node 8 test.py --snapshot out/model-10.pth

The masks lie under the list's names (wsolevaluation's ids, train/<class>/<id>.png), apart from the data set's
own GT masks. Masks already written are skipped (--overwrite rewrites them), so an interrupted run continues.
Defaults: the whole image resized to 256 x 256, no crop, as SPOL's CUB and ImageNet mask generation.
Next: cd ../openimages-seg && python train.py
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_cam  # noqa: E402
from utils.data.datasets import OPENIMAGES  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = OPENIMAGES   # utils/data/datasets.py: its lists (`id,label`)
RELEASED = "model-10"  # without --snapshot: out/model-10, the last epoch of train.py's defaults


def main(argv=None):
    parser = cli.make_parser(__doc__, train=False)
    cli.add_network_args(parser, train=False)
    cli.add_mask_args(parser)
    parser.set_defaults(datapath="../dataset/OpenImages", list="train.txt", clsnum=100, crop=0)
    return stage_cam.make_masks(cli.parse(parser, __file__, argv, DATASET, classes=True, released=RELEASED))


if __name__ == "__main__":
    run_main(main)

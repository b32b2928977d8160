"""CUB-200-2011 (or your own class folders), seg stage: boxes and masks for any images, no list needed.

    python localize.py photos/          # out/model-8(.pth), else the last out/model-N
    python localize.py --snapshot out/model-2.pth photos/ more/bird.jpg          # -> out/localize/boxes.csv
    python localize.py --snapshot out/model-2.pth photos/ --masks --vis --json   # + masks/, vis/, boxes.json
    python localize.py --snapshot out/model-2.pth photos/ --classifier ../cub200-cls/out/model-20.pth
    torchrun --nproc_per_node 4 localize.py --snapshot out/model-2.pth photos/

Each whole image is resized to --size x --size (no crop); the mask is p > 0.2 (SPOL's CUB threshold) at the
original resolution; boxes are x0 y0 x1 y1 in original pixels (pixel edges). See utils/localize.py.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils import localize  # noqa: E402
from utils.data.datasets import CUB  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = CUB          # utils/data/datasets.py: the mask threshold (0.2); a --classifier's classes: classes.txt
RELEASED = "model-8"   # without --snapshot: out/model-8, else the last out/model-N


def main(argv=None):
    parser = localize.get_args_parser(__doc__)
    parser.set_defaults(datapath="../dataset/CUB_200_2011", threshold=DATASET.threshold)
    return localize.localize(localize.parse(parser, __file__, argv, DATASET, released=RELEASED))


if __name__ == "__main__":
    run_main(main)

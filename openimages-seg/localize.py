"""OpenImages30k, seg stage: boxes and masks for any images, no list needed.

    python localize.py photos/          # out/model-2(.pth), else the last out/model-N
    python localize.py --snapshot out/model-2.pth photos/ more/dog.jpg           # -> out/localize/boxes.csv
    python localize.py --snapshot out/model-2.pth ../dataset/OpenImages/val --masks --vis --json   # + masks/, vis/

Each whole image is resized to --size x --size (no crop); the mask is p > --threshold at the original
resolution; boxes are x0 y0 x1 y1 in original pixels (pixel edges). See utils/localize.py.
In folders, OpenImages' own mask files (<id>_ignore.png, <id>_m<class>_<hex>.png, beside the images) are left
out and counted, so a split's folder can be given as it is.
The threshold: PxAP (what OpenImages reports) needs none, so neither SPOL nor wsolevaluation has a value; 0.5 is
the seg model's own decision boundary (its BCE target is 0/1). To pick another, look at the val split
(the --vis command above), never at the test split.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils import localize  # noqa: E402
from utils.data.datasets import OPENIMAGES  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = OPENIMAGES   # utils/data/datasets.py: the mask threshold (0.5, see above), its mask files left out
RELEASED = "model-2"   # without --snapshot: out/model-2, else the last out/model-N


def main(argv=None):
    parser = localize.get_args_parser(__doc__)
    parser.set_defaults(datapath="../dataset/OpenImages", threshold=DATASET.threshold)
    return localize.localize(localize.parse(parser, __file__, argv, DATASET, released=RELEASED))


if __name__ == "__main__":
    run_main(main)

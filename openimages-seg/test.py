"""OpenImages30k, seg stage: PxAP with wsolevaluation's protocol (Choe et al., CVPR 2020; docs/method.md §7, §8).

    python test.py                               # the test split; out/model-2(.pth), else the last out/model-N
    python test.py --split val --savepath out/val   # the val split: where choices (snapshot, recipe) are made
    python test.py --snapshot out/model-2.pth --cam_curve_interval 0.001
    torchrun --nproc_per_node 8 test.py

Each image is resized to 224 x 224 (no crop); its score map is the seg model's foreground probability,
min-max normalised, saved as out/scoremaps/<split>/<class>/<id>.jpg.npy (wsolevaluation's ids), so
`python -m utils.wsol_eval --dataset_name OpenImages ...` (the command is printed) or their evaluator gives the
same PxAP from the files. The GT is <datapath>/wsol_metadata/OpenImages/<split>/ (dataset/prepare.py openimages):
instance masks and ignore masks, 224 x 224 by nearest neighbour, ignore pixels left out. Prints PxAP and
writes out/metrics.json ("pxap"). PxAP needs no threshold: nothing here is tuned on the test split.
--cam_curve_interval 0.01: the default of wsolevaluation's evaluation.py (and of the project's other stages);
their training script main.py evaluates at 0.001 (config.py), which can move PxAP by a few tenths.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from utils.stages import cli, stage_seg  # noqa: E402
from utils.data.datasets import OPENIMAGES  # noqa: E402
from utils.errors import run_main  # noqa: E402


DATASET = OPENIMAGES   # utils/data/datasets.py: its lists, no boxes: PxAP alone (wsolevaluation's protocol)
RELEASED = "model-2"   # without --snapshot: out/model-2, the last epoch of train.py's defaults


def main(argv=None):
    parser = cli.make_parser(__doc__, train=False)
    cli.add_network_args(parser, train=False)
    cli.add_eval_args(parser)
    parser.add_argument("--split", choices=("val", "test"), default="test",
                        help="wsolevaluation's split: val to choose, test to report (the list: <split>.txt)")
    # protocol wsol: OpenImages is evaluated only by wsolevaluation's PxAP; --list: <split>.txt when not given
    parser.set_defaults(datapath="../dataset/OpenImages", list=None, clsnum=None, protocol="wsol")
    return stage_seg.evaluate(cli.parse(parser, __file__, argv, DATASET, released=RELEASED))


if __name__ == "__main__":
    run_main(main)

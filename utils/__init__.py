"""Everything below the stage scripts, grouped so that the method comes first:

    utils/method/      SPOL itself: the pseudo mask, the seg target, the losses, mask -> box (read first)
    utils/stages/      the stage layer the scripts call: their flags (cli.py) and stage_cls / stage_cam / stage_seg
    utils/engine/      the machinery beside the method: the training loop, resume, checkpoints, distributed,
                       rings and worker pools, the fast pseudo-mask path, logs and output files
    utils/data/        the data sets' table, list readers, images, transforms, input checks, PNG
    utils/evaluation/  wsolevaluation's protocol as the stages run it
    utils/*.py         the tools, each run as `python -m utils.<tool>`: ablation, bench, cam_loc, first_hour,
                       localize (the seg folders' localize.py), results, scale, wsol_eval; errors.py, the one error type

Nothing below utils/stages/ takes the argparse namespace: the stage layer turns flags into plain values.
"""
import os

# OpenCV prints "[ WARN ] ... can't open/read file" itself before our own one-line error for the same file
# (utils.data.validate, utils.data.images): keep its console to errors. A user's own setting wins.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

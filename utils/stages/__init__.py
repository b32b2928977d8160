"""The stage layer: what the stage scripts (cub200-cam/train.py, ...) call. cli.py defines every flag and turns
the parsed flags into plain values (`train_config`); stage_cls, stage_cam and stage_seg run one stage each on
those values; vis.py draws the pictures of `--vis`. Below this package, functions take values, not `args`."""

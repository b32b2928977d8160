"""Shared code of the SPOL stages: data, transforms, pseudo masks, boxes and metrics, training engine,
checkpoints, distributed helpers and logging. The stage scripts are thin callers of these modules."""
import os

# OpenCV prints "[ WARN ] ... can't open/read file" itself before our own one-line error for the same file
# (utils.validate, utils.data): keep its console to errors. A user's own setting wins.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

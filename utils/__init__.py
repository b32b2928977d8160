"""Shared code of the SPOL stages: data, transforms, pseudo masks, boxes and metrics, training engine,
checkpoints, distributed helpers and logging. The stage scripts are thin callers of these modules."""

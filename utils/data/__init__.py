"""The data: the table of data sets (datasets.py: everything in which CUB, ImageNet and OpenImages differ), the
readers of their list files (lists.py), images (images.py: decoding, one error for a bad file), the transforms
of each stage (transforms.py), the checks of every input before any work (validate.py) and PNG writing (png.py)."""

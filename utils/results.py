"""Result files passed between stages and to the user (docs/formats.md): the classifier's
top1top5.npy and the evaluation's boxes.csv.

top1top5.npy comes in two formats, both read here:
  * ours: a NumPy structured array with fields name (str), top1 (bool), top5 (bool); it loads with
    allow_pickle=False;
  * the authors' (their `cub200-cls/top1top5.npy`, `imagenet-cls/top1top5.npy`, and what their cls
    `test.py` writes): `np.save(path, {name: [top1, top5]})`, an .npy holding a 0-d object array whose
    item is the dict, i.e. a pickle inside an .npy.
The authors' file is read by a restricted unpickler that admits only what `np.save` of such a dict
needs (NumPy's array and dtype reconstruction, and plain dicts, lists, strings and bools), so no code
in the file can run; any other pickle is refused unless the user passes --allow_pickle, which reads
it with `np.load(allow_pickle=True)`. `python -m utils.results convert THEIRS.npy OURS.npy` turns it
into our format once.
"""
from __future__ import annotations

import argparse
import csv
import io
import numbers
import os
import pickle
import sys
from typing import Optional

import numpy as np

from utils.data.lists import normal_name
from utils.engine import outputs
from utils.errors import UserError, run_main

_NPY_MAGIC = b"\x93NUMPY"
# Every global that `np.save(path, {name: [bool, bool]})` puts into its pickle, under NumPy 1.x and 2.x
# (plus the scalar constructor, for files whose values are numpy bools).
_SAFE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                 ("numpy", "ndarray"), ("numpy", "dtype")}


def write_top1top5(path: str, names: list, top1: list, top5: list) -> None:
    """A NumPy structured array (name, top1, top5): loads with allow_pickle=False."""
    width = max([len(n) for n in names] + [1])
    arr = np.array(list(zip(names, top1, top5)), dtype=[("name", f"U{width}"), ("top1", "?"), ("top5", "?")])
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder: give the file to write, e.g. {os.path.join(path, 'top1top5.npy')}")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise outputs.write_error(path, e) from None
    outputs.write_atomic(path, lambda f: np.save(f, arr))  # into the open file: no .npy appended to a name


class _Refused(pickle.UnpicklingError):
    """The pickle names a global that `np.save` of a plain dict does not need."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles an `np.save`d dict and nothing else: any global outside _SAFE_GLOBALS is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise _Refused(f"it references {module}.{name}")
        return super().find_class(module, name)


def npy_header(f, path: str, expected: str = "a top1top5.npy written by a cls stage's test.py") -> np.dtype:
    """Check the .npy magic and header of an open file; returns the dtype (the file is left at the data).
    `expected` says, in the error, what the file should be."""
    if f.read(6) != _NPY_MAGIC:
        raise UserError(f"{path} is not a .npy file (expected {expected})")
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise UserError(f"{path}: .npy format version {version} is not supported (1.0 or 2.0 expected)")
        _, _, dtype = read_header(f)
    except (ValueError, OSError, SyntaxError, EOFError):
        raise UserError(f"{path}: damaged .npy header (truncated or not written by numpy?)") from None
    return dtype


def _table_from_dict(table: object, path: str) -> dict:
    """{name: (top1, top5)} from the authors' {name: [top1, top5]}, checking every entry."""
    if not isinstance(table, dict):
        raise UserError(f"{path}: expected a dict {{name: [top1, top5]}} inside the .npy, found {type(table).__name__}")
    out = {}
    for name, value in table.items():
        if not isinstance(name, str) or not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 2:
            raise UserError(f"{path}: entry {name!r}: {value!r} is not [top1, top5]")
        _add(out, name, value[0], value[1], path)
        if out[name][0] and not out[name][1]:
            raise UserError(f"{path}: entry {name!r} is right at top-1 but not at top-5")
    return out


def _flag(value: object, field: str, name: str, path: str) -> bool:
    """A top-1/top-5 value: a boolean or the number 0 or 1 (Python or NumPy); anything else (2, 'x') is not
    a right/wrong answer, and `bool()` would make it True."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Real) and value in (0, 1)):
        return bool(value)
    raise UserError(f"{path}: entry {name!r}: {field} value {value!r} is not a boolean or 0/1")


def _add(table: dict, name: str, top1: object, top5: object, path: str) -> None:
    """table[name] = (top1, top5), checked; a name listed again, also written another way (`./a/b.jpg`: the
    lists' one form, `normal_name`), must repeat its values. A name that leaves its folder is kept as written:
    no list name is such a name, so it answers for none."""
    entry = (_flag(top1, "top-1", name, path), _flag(top5, "top-5", name, path))
    try:
        name = normal_name(name)
    except ValueError:
        pass
    if table.setdefault(name, entry) != entry:
        raise UserError(f"{path} lists {name!r} twice with different values ({table[name]} and {entry}): "
                        f"which is right? Write the file again with the cls stage's test.py")


def read_top1top5(path: str, allow_pickle: bool = False) -> dict:
    """{name: (top1, top5)} from our structured array or the authors' `np.save`d dict (see the module doc)."""
    if not os.path.isfile(path):
        raise UserError(f"--top1top5 file not found: {path} (write it with the cls stage's test.py)")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty (0 bytes): an interrupted copy? Write it again with the cls stage's test.py")
    with open(path, "rb") as f:
        dtype = npy_header(f, path)
        if dtype.hasobject:
            return _table_from_dict(_read_pickled_item(f, path, allow_pickle), path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else "truncated"
        raise UserError(f"{path}: cannot read the array ({reason})") from None
    if arr.dtype.names is None or not {"name", "top1", "top5"} <= set(arr.dtype.names):
        raise UserError(f"{path}: expected a structured array with fields name, top1, top5 "
                        f"(or the authors' dict), found dtype {arr.dtype}")
    table: dict = {}
    for name, top1, top5 in zip(arr["name"].tolist(), arr["top1"].tolist(), arr["top5"].tolist()):
        _add(table, str(name), top1, top5, path)
    return table


def _read_pickled_item(f, path: str, allow_pickle: bool) -> object:
    """The item of a 0-d object array (the authors' dict); `f` is positioned at the pickle."""
    if allow_pickle:
        try:
            arr = np.load(path, allow_pickle=True)
        except Exception as e:  # a pickle can fail in any way; say which file and why, in one line
            raise UserError(f"{path}: cannot unpickle ({type(e).__name__}: {str(e)[:120]})") from None
    else:
        try:
            arr = _ArrayOnlyUnpickler(io.BytesIO(f.read())).load()
        except _Refused as e:
            raise UserError(f"{path} is a pickle that is not the authors' top1top5 dict ({e}); unpickling it could "
                            f"run code: pass --allow_pickle only if you trust the file") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError):
            raise UserError(f"{path}: damaged pickle inside the .npy (truncated download?)") from None
    if not isinstance(arr, np.ndarray) or arr.shape != () or arr.dtype != object:
        raise UserError(f"{path}: expected a 0-d object array holding {{name: [top1, top5]}} (the authors' format)")
    return arr.item()


def match_top1top5(table: dict, names: list, path: str) -> dict:
    """{list name: (top1, top5)} for every list name, from a table keyed as in the list, or, for a table entry
    that is a bare file name (the authors' ImageNet file: `ILSVRC2012_val_XXXXXXXX.JPEG`), by the list name's
    file name (ImageNet val in class folders: `n01440764/ILSVRC2012_val_XXXXXXXX.JPEG`). An entry under a
    folder answers only for that name: `cat/IMG_3.jpg` never for `dog/IMG_3.jpg`, another image. A name found
    neither way is an error naming some of them."""
    bare = {key: value for key, value in table.items() if "/" not in key}
    out, missing = {}, []
    for name in names:
        value = table.get(name, bare.get(os.path.basename(name)))
        if value is None:
            missing.append(name)
        else:
            out[name] = value
    if missing:
        raise UserError(f"{path} has no entry for {len(missing)} of the {len(names)} evaluated images, e.g. "
                        f"{', '.join(missing[:3])} (was it written for another list or data set? an entry "
                        f"under another folder is another image)")
    return out


def write_boxes_csv(path: str, records: list) -> None:
    """name,xmin,ymin,xmax,ymax,iou,correct; the box in the evaluation frame, blank when empty."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["name", "xmin", "ymin", "xmax", "ymax", "iou", "correct"])
    for r in records:
        box = r["box"] if r["box"] is not None else ["", "", "", ""]
        w.writerow([r["name"], *box, f"{r['iou']:.6f}", int(r["correct"])])
    outputs.write_text(path, text.getvalue())


# --------------------------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m utils.results", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Result-file tools. convert: turn a top1top5.npy of the authors' format (a pickled dict) "
                    "into the project's structured array, which later runs read without any pickle.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="authors' top1top5.npy -> the project's format")
    c.add_argument("source", help="top1top5.npy as the authors' code writes it (or ours)")
    c.add_argument("target", help="where to write the project's structured array")
    c.add_argument("--allow_pickle", action="store_true",
                   help="unpickle without restriction (only for a trusted file the restricted reader refuses)")
    return p


def main(argv: Optional[list] = None) -> dict:
    args = get_args_parser().parse_args(argv)
    table = read_top1top5(args.source, args.allow_pickle)
    names = sorted(table)
    write_top1top5(args.target, names, [table[n][0] for n in names], [table[n][1] for n in names])
    n = len(names)
    top1 = 100.0 * sum(v[0] for v in table.values()) / max(n, 1)
    top5 = 100.0 * sum(v[1] for v in table.values()) / max(n, 1)
    print(f"{args.source}: {n} images, top-1 {top1:.2f} %, top-5 {top5:.2f} %\nwrote {args.target}")
    return table


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))

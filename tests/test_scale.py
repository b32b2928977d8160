"""ImageNet-size lists: the samples live in numpy arrays (`data.SampleTable`) that forked loader workers read
without copying, the table gives back exactly what the list says, and `python -m utils.bench --scale` measures
the training loop's costs as the list grows."""
import json
import os

import cv2
import numpy as np
import pytest

from conftest import run_script
from utils.data.datasets import IMAGENET
from utils.data.lists import Sample, SampleTable, TableBuilder, subset
from utils.scale import private_mb, write_imagenet_list


def _table(rows) -> SampleTable:
    builder = TableBuilder()
    for name, folder, label, boxes in rows:
        builder.add(name, folder, label, boxes)
    return builder.table()


ROWS = [("a/1.jpg", "/d/images", 0, [[1.0, 2.0, 3.0, 4.0]]),
        ("b/ü ñ.jpg", "/d/images", 2, []),
        ("c/3.jpg", "/d/val/n01", 1, [[0.5, 0.0, 9.0, 9.0], [1.0, 1.0, 2.0, 2.0]])]


def test_a_table_gives_back_its_samples():
    t = _table(ROWS)
    want = [Sample(n, os.path.join(f, n), label, boxes) for n, f, label, boxes in ROWS]
    assert len(t) == 3 and list(t) == want and t[-1] == want[2]
    assert t.names() == [r[0] for r in ROWS] and t.labels.tolist() == [0, 2, 1]
    assert t.box_counts().tolist() == [1, 0, 2]
    with pytest.raises(IndexError):
        t[3]


def test_a_selection_keeps_each_samples_fields():
    t = _table(ROWS)
    assert list(t.select([2, 0])) == [t[2], t[0]] and list(t[1:]) == [t[1], t[2]]
    assert list(subset(t, [1])) == [t[1]] and subset(list(t), [1]) == [t[1]]
    empty = t.select([])
    assert len(empty) == 0 and empty.names() == [] and list(empty) == []


def test_read_list_matches_the_list_lines(tmp_path):
    root = str(tmp_path / "ImageNet")
    write_imagenet_list(root, 2500)
    samples = IMAGENET.read_list(root, "train.txt", with_boxes=False)
    lines = open(os.path.join(root, "train.txt")).read().splitlines()
    assert len(samples) == 2500 and samples.names() == [line.split()[0] for line in lines]
    assert samples.labels.tolist() == [int(line.split()[1]) for line in lines]
    assert samples[1234].path == os.path.join(root, "train", lines[1234].split()[0])


def _private_growth_in_a_fork(samples) -> float:
    """MB of private memory a forked child gains reading every sample's name, path and label."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a loader worker's reads
        try:
            before = private_mb(os.getpid())
            for i in range(len(samples)):
                s = samples[i]
                s.name, s.path, s.label
            os.write(w, str(private_mb(os.getpid()) - before).encode())
        finally:
            os._exit(0)
    os.close(w)
    growth = float(os.read(r, 64).decode())
    os.waitpid(pid, 0)
    return growth


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux's /proc/PID/smaps_rollup")
def test_forked_readers_do_not_copy_the_samples(tmp_path):
    root = str(tmp_path / "ImageNet")
    write_imagenet_list(root, 200_000)
    table = IMAGENET.read_list(root, "train.txt", with_boxes=False)
    as_objects = list(table)  # what one Python object per sample costs a forked reader, for comparison
    objects_growth = _private_growth_in_a_fork(as_objects)
    del as_objects
    table_growth = _private_growth_in_a_fork(table)
    assert objects_growth > 10, objects_growth  # the probe sees the copies it is there to see
    assert table_growth < 3, f"a forked reader copied {table_growth:.1f} MB of a 200,000-sample table"


def test_bench_scale_mode(tmp_path):
    out = tmp_path / "scale.json"
    p = run_script("-m", "utils.bench", "--scale", "--scale_sizes", "2048", "8192", "--num_workers", "1",
                   "--json", out, timeout=300)
    r = json.loads(out.read_text())
    assert [s["images"] for s in r["sizes"]] == [2048, 8192] and set(r["met"]) == set(r["targets"])
    for s in r["sizes"]:
        assert s["startup_s"] > 0 and s["overhead_ms"] > 0 and s["main_rss_mb"] > 50
        assert len(s["worker_private_mb"]) == 1 and s["worker_private_mb"][0] > 0
    assert "targets at 8192 images" in p.stdout and "worker private MB" in p.stdout
    assert np.isfinite(r["ratios"]["overhead_ratio"])


def test_mask_resume_lists_each_folder_once(tmp_path, monkeypatch):
    from utils.stages.stage_cam import missing_masks
    (tmp_path / "a").mkdir()
    png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    (tmp_path / "a" / "1.png").write_bytes(png)
    (tmp_path / "a" / "3.png").mkdir()  # a folder of that name is no mask
    (tmp_path / "top.png").write_bytes(png)
    listed = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(path) or scandir(path))
    names = ["a/1.jpg", "a/2.jpg", "a/3.jpg", "b/1.jpg", "top.jpg", "a/1.JPEG"]
    assert missing_masks(str(tmp_path), names) == ([1, 2, 3], 0, 0)
    assert sorted(os.path.relpath(p, tmp_path) for p in listed) == [".", "a", "b"]

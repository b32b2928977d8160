"""torchrun's ranks agree where they must, on gloo with 2 processes: under mask generation every rank writes its
shard of one list (rank 1's scan of the mask folder held back until rank 0 has written its shard: a rank that
scanned for itself would count those masks as done, and the shards would no longer line up); a non-finite
loss on one rank alone stops every rank with the one error line (not one rank raising while the other waits
in the next collective)."""
import os
import textwrap

import pytest
import torch

from conftest import prepared_cub, run_script
from network import build_mffnet
from utils.data.datasets import CUB

RUN = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", 0, "--size", 48, "--crop", 40]
TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node", 2]


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    top = tmp_path_factory.mktemp("ranks")
    root = str(top / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=8, val_per_class=1, seed=7, min_size=48, max_size=64)
    torch.manual_seed(0)
    torch.save(build_mffnet(3, "resnet18").state_dict(), top / "cam.pth")
    return top


# Loaded by every process started with this folder on PYTHONPATH: in rank 1, the first listing of a folder under
# SLOW_SCAN waits until SLOW_SCAN holds SLOW_SCAN_MASKS masks (rank 0's shard), 60 s at most.
SLOW_SCAN = textwrap.dedent("""
    import os, time
    if os.environ.get("RANK") == "1" and os.environ.get("SLOW_SCAN"):
        _scandir, _root, _want = os.scandir, os.environ["SLOW_SCAN"], int(os.environ["SLOW_SCAN_MASKS"])

        def _count():
            return sum(len([n for n in files if n.endswith(".png")]) for _, _, files in os.walk(_root))

        def scandir(path="."):
            if str(path).startswith(_root) and not _held:
                _held.append(1)
                end = time.time() + 60
                while _count() < _want and time.time() < end:
                    time.sleep(0.05)
            return _scandir(path)

        _held = []
        os.scandir = scandir
""")


def test_masks_of_a_late_scanning_rank_are_each_written_once(cub, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_SCAN)
    masks = tmp_path / "masks"
    root = cub / "CUB_200_2011"
    n = len(CUB.read_list(str(root), "train.txt", with_boxes=False))
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]), "SLOW_SCAN": str(masks),
           "SLOW_SCAN_MASKS": str(n // 2)}
    p = run_script(*TORCHRUN, "cub200-cam/test.py", "--datapath", root, "--clsnum", 3, "--snapshot",
                   cub / "cam.pth", "--maskpath", masks, "--post_workers", 0, *RUN, env=env)
    written = [f for _, _, files in os.walk(masks) for f in files]
    assert len(written) == n and all(f.endswith(".png") for f in written), (len(written), n)
    assert f"wrote {n} pseudo masks" in p.stdout, p.stdout[-2000:]


def test_a_non_finite_loss_on_one_rank_stops_every_rank(cub, tmp_path):
    out = tmp_path / "out"
    p = run_script(*TORCHRUN, "tests/nan_loss_train.py", "cub200-cam/train.py", "--datapath", cub / "CUB_200_2011",
                   "--clsnum", 3, "--pretrained", "none", "--batch_size", 4, "--epoch", 1, "--print_freq", 100,
                   "--savepath", out, *RUN, check=False, timeout=300)
    # each rank says it once (the two processes' lines may interleave on the one stderr)
    assert p.returncode != 0 and p.stderr.count("error: non-finite loss or weights before step 6") == 2, \
        (p.returncode, p.stderr[-3000:])
    assert not os.path.exists(out / "checkpoint.pth") and not os.path.exists(out / "model-1.pth")

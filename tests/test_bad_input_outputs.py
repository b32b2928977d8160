"""The outputs' side of bad input (issue 24): links that lead out of an output folder, a full disk, what a
killed run leaves behind (torn masks, temporaries), files from elsewhere given as weights, an ablation grid
resumed with other settings. Each is one `error:` line (exit 2, no traceback) or a named repair, and no
file is written outside its folder or left half-written."""
import errno
import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import run_inprocess, run_script
from test_bad_input import RUN, TRAIN, base, cam_masks, clear_error, seg_eval  # noqa: F401 (fixtures)
from utils.engine import outputs
from utils.data import png
from utils.errors import UserError, run_main


def _files(folder) -> list:
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


# ------------------------------------------------------------------------------------------ links
def test_folder_refuses_links_that_lead_out_and_keeps_those_inside(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "real").mkdir(parents=True)
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "away")
    os.symlink("real", out / "inside")
    folder = outputs.Folder(str(out), "--savepath")
    assert folder.path("inside", "a.txt") == os.path.join(str(out), "inside", "a.txt")
    assert folder.path("new", "deeper", "b.txt").endswith("b.txt") and (out / "new" / "deeper").is_dir()
    with pytest.raises(UserError, match=r"away is a link to .*elsewhere, outside --savepath .*remove the link"):
        folder.path("away", "c.txt")
    with pytest.raises(UserError, match="away is a link"):
        folder.check_folders(["real", "away/sub"])
    # the folder itself may be a link (a scratch disk mounted under out/): only what is inside is held to it
    os.symlink(elsewhere, tmp_path / "scratch")
    assert outputs.Folder(str(tmp_path / "scratch"), "--savepath").path("x", "d.txt")
    assert not list(elsewhere.glob("c.txt")) and not (elsewhere / "sub").exists()


def test_mask_class_folder_linked_elsewhere_stops_before_any_mask(cub, base, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    klass = sorted(os.listdir(cub / "images"))[0]
    (tmp_path / "masks").mkdir()
    os.symlink(elsewhere, tmp_path / "masks" / klass)
    p = cam_masks(cub, base, tmp_path)
    clear_error(p, f"{klass} is a link to {elsewhere}", "outside --maskpath")
    assert not os.listdir(elsewhere) and not _files(tmp_path / "masks")


def test_localize_vis_linked_elsewhere_is_refused(base, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = tmp_path / "new"
    data.mkdir()
    assert cv2.imwrite(str(data / "a.png"), np.full((20, 24, 3), 90, np.uint8))
    (tmp_path / "out" / "localize").mkdir(parents=True)
    os.symlink(elsewhere, tmp_path / "out" / "localize" / "vis")
    p = run_inprocess("cub200-seg/localize.py", "--snapshot", base / "seg.pth", data, "--savepath", tmp_path / "out",
                      "--vis", *RUN[:-2], check=False)
    clear_error(p, "vis is a link to", "outside --savepath")
    assert not os.listdir(elsewhere)
    os.remove(tmp_path / "out" / "localize" / "vis")
    os.rmdir(tmp_path / "out" / "localize")
    os.symlink(elsewhere, tmp_path / "out" / "localize")  # the whole output folder of localize.py
    clear_error(run_inprocess("cub200-seg/localize.py", "--snapshot", base / "seg.pth", data, "--savepath",
                              tmp_path / "out", *RUN[:-2], check=False), "localize is a link to")
    assert not os.listdir(elsewhere)


def test_score_map_folder_linked_elsewhere_is_refused(cub, base, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    klass = sorted(os.listdir(cub / "images"))[0]
    (tmp_path / "eval" / "scoremaps").mkdir(parents=True)
    os.symlink(elsewhere, tmp_path / "eval" / "scoremaps" / klass)
    p = seg_eval(cub, base, tmp_path, "--protocol", "wsol")
    clear_error(p, f"{klass} is a link to", "outside --savepath")
    assert not os.listdir(elsewhere)


# ------------------------------------------------------------------------------------- full disk
def test_write_atomic_keeps_the_old_file_and_no_temporary_when_the_disk_is_full(tmp_path):
    path = tmp_path / "metrics.json"
    outputs.write_text(str(path), "old\n")

    def full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=r"cannot write .*metrics.json: No space left on device. Free some space"):
        outputs.write_atomic(str(path), full)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.json"]


def test_a_full_disk_outside_our_writers_is_one_line(capsys):
    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/tb/events")
    with pytest.raises(SystemExit) as e:
        run_main(main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: cannot write /data/out/tb/events: No space left") \
        and "--resume" in err


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs to fill a real disk")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_during_masks_training_and_resume_is_one_line(cub, base, tmp_path, small_disk):
    pad = small_disk / "pad"  # leave ~6 KB: a few masks fit, the rest do not
    pad.write_bytes(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize - 6 * 1024))
    p = run_script("cub200-cam/test.py", "--datapath", cub, "--clsnum", 3, "--snapshot", base / "cam.pth",
                   "--maskpath", small_disk / "masks", "--post_workers", 1, *RUN, check=False)
    clear_error(p, "No space left on device", "Free some space")
    assert "_RemoteTraceback" not in p.stderr
    masks = _files(small_disk / "masks")
    assert masks and not [m for m in masks if not m.endswith(".png")]        # no temporary left
    assert all(png.is_whole_png(str(small_disk / "masks" / m)) for m in masks)
    # training: the snapshot does not fit; resume: neither does the new state (torch's writer's own error)
    os.remove(pad)
    small_pad = small_disk / "pad2"
    small_pad.write_bytes(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize - 8 * 1024))
    p = run_inprocess("cub200-cam/train.py", "--datapath", cub, "--savepath", small_disk / "run", *RUN, *TRAIN,
                      check=False)
    clear_error(p, "cannot write", "No space left on device", "--resume")
    assert not [f for f in _files(small_disk / "run") if ".pth" in f]


# ------------------------------------------------------------------------ what a killed run leaves
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftover_masks_that_are_not_whole_pngs_are_written_again(cub, base, tmp_path):
    cam_masks(cub, base, tmp_path, check=True)
    masks = sorted((tmp_path / "masks").rglob("*.png"))
    good = masks[2].read_bytes()
    masks[0].write_bytes(b"")                               # zero bytes
    masks[1].write_bytes(good[: len(good) // 2])             # cut off
    masks[2].write_text("not a png")                         # another format
    tmp = f"{masks[3]}.{_dead_pid()}.tmp"                    # the temporary of a killed worker
    open(tmp, "wb").write(b"\x89PNG")
    p = cam_masks(cub, base, tmp_path, check=True)
    assert "3 to write" in p.stdout and "3 files there were not whole PNGs" in p.stdout, p.stdout
    assert "1 temporaries of an interrupted run removed" in p.stdout and not os.path.exists(tmp)
    assert all(png.is_whole_png(str(m)) for m in masks) and cv2.imread(str(masks[0])) is not None
    assert "0 to write" in cam_masks(cub, base, tmp_path, check=True).stdout


def test_whole_png_check():
    data = cv2.imencode(".png", np.zeros((3, 5, 3), np.uint8))[1].tobytes()
    assert data.endswith(b"IEND\xaeB`\x82")
    assert png.whole_pngs(["/nonexistent.png"]) == [False]


def test_a_torn_save_left_by_a_killed_run_is_removed_by_the_next(cub, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tmp-abc123.pth").write_bytes(b"\0" * 1000)  # what SIGKILL during torch.save leaves
    run_inprocess("cub200-cam/train.py", "--datapath", cub, "--savepath", out, *RUN, *TRAIN)
    assert not list(out.glob(".tmp-*"))


def test_max_steps_at_an_epochs_last_batch_ends_the_epoch_and_resume_goes_on(cub, tmp_path):
    out = tmp_path / "run"
    flags = ["--datapath", cub, "--savepath", out, *RUN, "--pretrained", "none", "--batch_size", "3", "--epoch", "2"]
    p = run_inprocess("cub200-cam/train.py", *flags, "--max_steps", "3")   # 9 images: 3 batches an epoch
    assert (out / "model-1.pth").is_file(), p.stdout
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 0, 3)
    p = run_inprocess("cub200-cam/train.py", *flags, "--resume")
    assert "epoch 2, batch 0, step 3" in p.stdout and (out / "model-2.pth").is_file()
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 6)


# --------------------------------------------------------------------------- weights from elsewhere
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_files_from_elsewhere_given_as_weights_are_refused_without_the_unsafe_advice(cub, base, tmp_path):
    evil, evil_pickle, jpeg = tmp_path / "evil.pth", tmp_path / "evil.pkl", tmp_path / "photo.jpg"
    torch.save({"model": _Payload()}, evil)
    evil_pickle.write_bytes(pickle.dumps({"w": _Payload()}))
    assert cv2.imwrite(str(jpeg), np.zeros((8, 8, 3), np.uint8))
    runs = [lambda w: cam_masks(cub, base, tmp_path, "--snapshot", w),
            lambda w: seg_eval(cub, base, tmp_path, snapshot=w),
            lambda w: run_inprocess("cub200-cam/train.py", "--datapath", cub, "--savepath", tmp_path / "t",
                                    *RUN, *TRAIN, "--resume", w, check=False),
            lambda w: run_inprocess("cub200-cam/train.py", "--datapath", cub, "--savepath", tmp_path / "p",
                                    *RUN, *TRAIN[2:], "--pretrained", w, check=False)]
    for k, run in enumerate(runs):
        for weights in (evil, evil_pickle, jpeg):
            p = run(weights)
            clear_error(p, str(weights), "not a weights file (or not a safe one): refused")
            assert "weights_only" not in p.stderr and "Re-running" not in p.stderr, p.stderr
        assert "it would call posix.system" in run(evil).stderr
        if k < 3:  # --snapshot and --resume (a folder as --pretrained is "not found", with where to get the file)
            clear_error(run(tmp_path), f"{tmp_path} is a folder, not a weights file")
    assert not list(tmp_path.rglob("PWNED")) and not os.path.exists("PWNED")

"""No lost work: a training run killed with SIGKILL mid-epoch and resumed ends with exactly the weights
of an uninterrupted run (CPU, same seed); a non-finite loss stops the run and keeps the last good state."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, prepared_cub, run_script

ARGS = ["--clsnum", "3", "--epoch", "2", "--backbone", "resnet18", "--device", "cpu", "--num_workers", "0",
        "--size", "48", "--crop", "40", "--pretrained", "none", "--batch_size", "4", "--save_every", "1",
        "--print_freq", "1", "--seed", "7"]


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("resume") / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=6, val_per_class=1, seed=5, min_size=48, max_size=64)
    return root


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(cub, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_script("cub200-cam/train.py", "--datapath", cub, "--savepath", straight, *ARGS)

    cmd = [sys.executable, os.path.join(ROOT, "cub200-cam/train.py"), "--datapath", cub, "--savepath", str(killed),
           *ARGS]
    # the thread count of run_script's runs: another count sums in another order, and the weights differ
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="2"))
    log = killed / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # 4 steps per epoch: kill inside epoch 1
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(killed / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["batch"] < 4, "the kill should land mid-epoch"

    run_script("cub200-cam/train.py", "--datapath", cub, "--savepath", killed, "--resume", *ARGS)
    a, b = _weights(straight / "model-2.pth"), _weights(killed / "model-2.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the log reads as one run: steps trained again after the resume are not listed twice
    assert _losses(killed / "log.jsonl") == _losses(straight / "log.jsonl")


def _losses(path):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(path).read().splitlines())]


def test_same_seed_gives_identical_runs(cub, tmp_path):
    for name in ("a", "b"):
        run_script("cub200-cam/train.py", "--datapath", cub, "--savepath", tmp_path / name, *ARGS[:3], "1",
                   *ARGS[4:])
    a, b = _weights(tmp_path / "a" / "model-1.pth"), _weights(tmp_path / "b" / "model-1.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_the_last_good_state(cub, tmp_path):
    p = run_script("cub200-cam/train.py", "--datapath", cub, "--savepath", tmp_path, "--lr", "1e30",
                   "--backbone_lr", "1e30", *ARGS, check=False)
    assert p.returncode == 2 and ("loss is" in p.stderr or "non-finite" in p.stderr)
    state = torch.load(tmp_path / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "model-2.pth").exists()


def test_resume_places_the_model_before_loading_the_optimiser_state(cub, tmp_path):
    # Optimizer.load_state_dict casts the momentum to each parameter's device and dtype as it loads: in a run
    # whose model is placed in float64 (as it is placed on a GPU), state loaded before the placement would be
    # float32 and the resumed run would end with other weights
    args = [*ARGS, "--epoch", "1", "--datapath", cub]
    run_script("tests/float64_train.py", "cub200-cam/train.py", *args, "--savepath", tmp_path / "straight")
    run_script("tests/float64_train.py", "cub200-cam/train.py", *args, "--savepath", tmp_path / "resumed",
               "--max_steps", "2")
    state = torch.load(tmp_path / "resumed" / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert state["step"] == 2 and state["optimizer"]["state"][0]["momentum_buffer"].dtype == torch.float64
    run_script("tests/float64_train.py", "cub200-cam/train.py", *args, "--savepath", tmp_path / "resumed",
               "--resume")
    a, b = _weights(tmp_path / "straight" / "model-1.pth"), _weights(tmp_path / "resumed" / "model-1.pth")
    assert a["linear.weight"].dtype == torch.float64
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _start(cub, savepath, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "cub200-cam/train.py"), "--datapath", cub, "--savepath", str(savepath),
           *ARGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="2"))


def _wait_for_log(proc, log, lines: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= lines:
            return
        time.sleep(0.05)
    raise AssertionError("the run ended (or hung) before the signal could be sent")


def test_sigterm_says_where_to_resume_and_leaves_no_temporary(cub, tmp_path):
    out = tmp_path / "out"
    proc = _start(cub, out)
    _wait_for_log(proc, out / "log.jsonl", 2)
    proc.send_signal(signal.SIGTERM)  # what a cluster scheduler sends
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("stopped by SIGTERM at step ") and "--resume" in line and "Traceback" not in err, err[-2000:]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    run_script("cub200-cam/train.py", "--datapath", cub, "--savepath", out, "--resume", *ARGS)
    assert (out / "model-2.pth").exists()


def test_resume_refuses_a_list_that_changed(cub, tmp_path):
    lines = open(os.path.join(cub, "train.txt")).read().splitlines(True)
    listed = tmp_path / "edited.txt"
    listed.write_text("".join(lines))
    args = ["cub200-cam/train.py", "--datapath", cub, "--list", listed, "--savepath", tmp_path / "out", *ARGS]
    run_script(*args, "--max_steps", "2")
    run_script(*args, "--max_steps", "3", "--resume")  # the same list: goes on
    listed.write_text("".join(lines[1:]))  # one image fewer: epoch and batch would mean other images
    p = run_script(*args, "--resume", check=False)
    assert p.returncode == 2 and "now has 17 images" in p.stderr and "edited.txt" in p.stderr, p.stderr[-2000:]


def test_a_second_run_into_a_folder_in_use_stops_naming_the_first(cub, tmp_path):
    from utils.engine import lock
    out = tmp_path / "out"
    out.mkdir()
    lock.hold(str(out), "--savepath")  # this process plays the run that is writing there
    try:
        p = run_script("cub200-cam/train.py", "--datapath", cub, "--savepath", out, *ARGS, check=False)
        assert p.returncode == 2 and f"in use by another run (pid {os.getpid()}" in p.stderr, p.stderr[-2000:]
        assert not (out / "args.json").exists() and not (out / "log.jsonl").exists()
    finally:
        lock.release_all()
    run_script("cub200-cam/train.py", "--datapath", cub, "--savepath", out, *ARGS[:3], "1", *ARGS[4:])
    assert (out / "model-1.pth").exists()


def test_a_killed_loader_worker_is_one_line_that_says_what_it_means(cub, tmp_path):
    out = tmp_path / "out"
    proc = _start(cub, out, "--num_workers", "1")
    _wait_for_log(proc, out / "log.jsonl", 1)
    workers = [int(e) for e in os.listdir("/proc") if e.isdigit() and _parent(int(e)) == proc.pid]
    assert workers, "no loader worker to kill"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)  # what the out-of-memory killer does
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 2, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: a data-loading worker (pid ") and "out-of-memory" in line and "--resume" in line
    assert "Traceback" not in err, err[-2000:]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1

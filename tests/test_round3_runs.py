"""Runs that must not go wrong without a word (issue round three): a training run into another stage's output
folder, the synthetic data sets and the bench over a real data set, stray launcher variables, and a cut-off
record of `python -m utils.ablation --resume`. Resuming with changed flags is in test_engine.py."""
import contextlib
import datetime
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, prepared_cub, run_inprocess, run_script
from utils.engine import distributed
from utils.data import validate
from utils.ablation import main as ablation
from utils.errors import UserError

RUN = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "48", "--crop", "40"]
TRAIN = ["--pretrained", "none", "--batch_size", "4", "--epoch", "1"]


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("round3") / "CUB_200_2011"
    prepared_cub(str(root), num_classes=3, train_per_class=3, val_per_class=1, seed=8, min_size=48, max_size=64)
    return root


def clear_error(p, *fragments):
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    for f in fragments:
        assert f in p.stderr, (f, p.stderr[-2000:])


# ------------------------------------------------------------------------ another stage's output folder
def test_a_training_run_refuses_a_folder_holding_another_stages_run(cub, tmp_path):
    run = tmp_path / "run"
    run_inprocess("cub200-cam/train.py", "--datapath", cub, "--clsnum", 3, "--savepath", run, *RUN, *TRAIN)
    kept = {f: (run / f).read_bytes() for f in ("model-1.pth", "checkpoint.pth", "args.json", "log.jsonl")}
    (tmp_path / "masks").mkdir()
    for stage in ("cub200-seg", "cub200-cls"):
        extra = ["--maskpath", tmp_path / "masks"] if stage.endswith("seg") else ["--arch", "resnet18", "--clsnum", 3]
        p = run_inprocess(f"{stage}/train.py", "--datapath", cub, "--savepath", run, *extra, *RUN, *TRAIN,
                          check=False)
        clear_error(p, f"--savepath {run} holds a run of cub200-cam (its args.json), not of {stage}", "--force")
    assert {f: (run / f).read_bytes() for f in kept} == kept
    # the same stage again (a rerun) writes as before; --force lets another stage write over it
    run_inprocess("cub200-cam/train.py", "--datapath", cub, "--clsnum", 3, "--savepath", run, *RUN, *TRAIN)
    validate.check_stage_folder(str(run), "cub200-seg", force=True)


def test_the_stage_of_an_older_run_comes_from_its_command_or_its_checkpoint(tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"command": "imagenet-cam/train.py --savepath x", "lr": 0.1}))
    with pytest.raises(UserError, match=r"holds a run of imagenet-cam \(its args.json\)"):
        validate.check_stage_folder(str(tmp_path), "imagenet-seg", force=False)
    (tmp_path / "args.json").write_text(json.dumps({"command": "train.py", "lr": 0.1}))  # started in its folder
    validate.check_stage_folder(str(tmp_path), "imagenet-seg", force=False)
    (tmp_path / "args.json").write_text('{"stage": "cub2')  # cut off: the checkpoint says
    torch.save({"model": {}, "args": {"stage": "cub200-cls"}}, tmp_path / "checkpoint.pth")
    with pytest.raises(UserError, match=r"holds a run of cub200-cls \(its checkpoint.pth\)"):
        validate.check_stage_folder(str(tmp_path), "cub200-seg", force=False)


# ------------------------------------------------------------------------ synthetic data over a real data set
TINY = ["--min_size", "48", "--max_size", "52"]


@pytest.mark.parametrize("layout, real, extra", [
    ("cub", "images.txt", ["--classes", "1", "--train_per_class", "1", "--val_per_class", "1"]),
    ("imagenet", "LOC_synset_mapping.txt", ["--synsets", "n01440764", "--train_per_class", "1",
                                            "--val_per_class", "1"]),
    ("openimages", "metadata", ["--classes", "1", "--train_per_class", "1", "--val_per_class", "1",
                                "--test_per_class", "1"]),
    ("folder", "boxes.csv", ["--classes", "2", "--per_class", "1", "--new_images", "0"])])
def test_synthetic_refuses_a_root_holding_another_data_set_unless_forced(tmp_path, layout, real, extra):
    root = tmp_path / "data"
    (root / real).parent.mkdir(parents=True, exist_ok=True)
    if real == "metadata":
        (root / real).mkdir()
    else:
        (root / real).write_text("the user's own annotations\n")
    p = run_script("dataset/synthetic.py", layout, "--root", root, *extra, *TINY, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"error: {root} already holds {real}, not written by dataset/synthetic.py" in p.stderr
    assert real == "metadata" or (root / real).read_text() == "the user's own annotations\n"
    run_script("dataset/synthetic.py", layout, "--root", root, *extra, *TINY, "--force")
    run_script("dataset/synthetic.py", layout, "--root", root, *extra, *TINY)  # its own set: written again


def test_bench_workdir_holding_a_real_data_set_is_refused(tmp_path):
    real = tmp_path / "CUB_200_2011"
    real.mkdir()
    (real / "images.txt").write_text("1 001.A/a.jpg\n")
    p = run_script("-m", "utils.bench", "--workdir", tmp_path, "--device", "cpu", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"{real} already holds images.txt, not written by dataset/synthetic.py" in p.stderr
    assert sorted(f.name for f in real.iterdir()) == ["images.txt"]


# ------------------------------------------------------------------------ a cut-off record of the ablation grid
def _finished_spol(out):
    """The outputs of every step of the setting spol, as an earlier run leaves them (contents made up)."""
    cam, seg = out / "cam" / "spol", out / "spol"
    for path in (cam / "model-1.pth", seg / "seg" / "model-1.pth", seg / "masks.done"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("done\n")
    (cam / "cam_loc.json").write_text(json.dumps({"gt_known_loc": 50.0, "best_gt_known_loc": 60.0,
                                                  "best_threshold": 0.2}))
    for step, value in (("eval", {"gt_known_loc": 70.0, "empty": 0, "count": 3}),
                        ("wsol", {"maxboxacc_v2": {"mean": 40.0}})):
        (seg / step).mkdir()
        (seg / step / "metrics.json").write_text(json.dumps(value))


def test_ablation_resume_reruns_a_cut_off_result_and_names_other_cut_off_records(cub, tmp_path):
    out = tmp_path / "out"
    argv = ["--datapath", str(cub), "--out", str(out), "--grid", "spol", "--resume", "--cam_epochs", "1",
            "--seg_epochs", "1", "--device", "cpu"]
    _finished_spol(out)
    (out / "spol" / "result.json").write_text('{"name": "spol", "cam_gt_kno')
    (out / "spol" / "steps.json").write_text('{"masks": 1')
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        rows = ablation(argv)["rows"]
    said = printed.getvalue()
    assert f"{out / 'spol' / 'result.json'} is not a whole JSON record" in said and "spol is run again" in said
    assert f"{out / 'spol' / 'steps.json'} is not a whole JSON record" in said
    assert [r["final_gt_known"] for r in rows] == [70.0]
    assert json.load(open(out / "spol" / "result.json"))["final_gt_known"] == 70.0

    (out / "spol" / "result.json").unlink()
    (out / "cam" / "spol" / "cam_loc.json").write_text("{")
    with pytest.raises(UserError, match=r"cam_loc.json is not a whole JSON record .*remove it, and --resume runs"):
        ablation(argv)
    (out / "ablation.json").write_text('{"config": {"datapath"')
    with pytest.raises(UserError, match=r"ablation.json is not a whole JSON record"):
        ablation(argv)


# ------------------------------------------------------------------------ launcher variables without torchrun
@pytest.mark.parametrize("env, said", [({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set in the environment but RANK, "
                                        "MASTER_ADDR, MASTER_PORT not: launch with torchrun"),
                                       ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' in the environment is not a whole "
                                        "number >= 0"),
                                       ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1",
                                         "MASTER_PORT": "1"}, "RANK=2 is not below WORLD_SIZE=2")])
def test_a_stray_or_incomplete_launcher_environment_is_one_line(monkeypatch, env, said):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=said):
        distributed.setup("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alone(port: int) -> dict:
    """The environment of process 0 of 2 whose partner never comes."""
    return {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def test_the_wait_for_missing_processes_is_bounded(monkeypatch):
    for name, value in _alone(_free_port()).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "RENDEZVOUS_TIMEOUT", datetime.timedelta(seconds=2))
    t = time.time()
    with pytest.raises(UserError, match=r"the other processes of WORLD_SIZE=2 did not join within 2 s at 127.0.0.1"):
        distributed.setup("cpu")
    assert time.time() - t < 30


def _listening(port: int) -> bool:
    """Some socket listens on `port` (IPv4 or IPv6: the store listens on either)."""
    lines = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            with open(table) as f:
                lines += f.readlines()[1:]
    return any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A" for line in lines)


def test_sigterm_ends_the_wait_for_missing_processes():
    port = _free_port()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from utils.engine import distributed; "
            "from utils.errors import run_main; run_main(lambda: distributed.setup('cpu'))")
    proc = subprocess.Popen([sys.executable, "-c", code, ROOT], env=dict(os.environ, **_alone(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not _listening(port) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None and _listening(port), "process 0 should be waiting for its partner"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

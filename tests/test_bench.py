"""`python -m utils.bench`: a tiny CPU run writes the JSON it promises; bad sizes are refused; the
inference loops' throughput clock leaves the first batch out, and their pool results are taken as they finish."""
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import ROOT
from utils.data import png
from utils.engine.loop import HostCopy, Pending, Throughput

STAGES = ("data_loading", "cam_forward", "pseudo_masks", "seg_forward", "seg_eval", "cam_train_step",
          "seg_train_step")


def bench(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "utils.bench", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="2"))
    if check and p.returncode != 0:
        raise AssertionError(f"bench exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_cpu_run_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    p = bench("--device", "cpu", "--backbone", "resnet18", "--batch_size", 4, "--images", 8,
              "--num_workers", 1, "--post_workers", 1, "--json", out)
    r = json.load(open(out))
    assert r["device"] == "cpu" and r["backbone"] == "resnet18" and r["batch_size"] == 4 and r["images"] == 8
    assert r["rounds"] == 2
    assert r["torch"] == torch.__version__ and r["amp"] == "off" and r["channels_last"] is False
    assert positive(r["postprocess_ms_per_image"])
    for name in STAGES:
        assert positive(r["stages"][name]["images_per_s"]), name
        assert positive(r["stages"][name]["peak_memory_mb"]), name
    for bare, stage, key in (("cam_forward", "pseudo_masks", "ratio_to_cam_forward"),
                             ("seg_forward", "seg_eval", "ratio_to_seg_forward")):
        b, e = r["stages"][bare], r["stages"][stage]   # bare, stage, bare, stage, bare (--rounds 2)
        assert len(b["passes"]) == 3 and all(map(positive, b["passes"])) and b["images"] == 24
        assert math.isclose(b["images_per_s"], 3 / sum(1 / x for x in b["passes"]))
        assert len(e["rounds"]) == 2 and all(map(positive, e["rounds"])) and e["images"] == 16
        assert min(e["rounds"]) <= e["images_per_s"] <= max(e["rounds"])
        assert math.isclose(e[key], e["images_per_s"] / b["images_per_s"])
    cpu = r["stages"]["cpu_per_mask"]
    steps = ("decode_ms", "transform_ms", "postprocess_ms", "png_encode_ms")
    assert all(positive(cpu[k]) for k in steps + ("opencv_png_ms", "png_kb_per_mask", "opencv_png_kb_per_mask"))
    assert math.isclose(cpu["cpu_ms_per_mask"], sum(cpu[k] for k in steps))    # the four shares, one run
    assert r["cpu_ms_per_mask"] == cpu["cpu_ms_per_mask"] and r["postprocess_ms_per_image"] == cpu["postprocess_ms"]
    assert r["png_encode_ms"] == cpu["png_encode_ms"] and r["opencv_png_ms"] == cpu["opencv_png_ms"]
    assert positive(cpu["handoff_workers_ms"]) and positive(cpu["handoff_main_ms"])
    assert positive(cpu["loader_worker_ms"]) and positive(cpu["post_worker_ms"])   # the workers measured whole
    total = cpu["loader_worker_ms"] + cpu["post_worker_ms"] + cpu["handoff_main_ms"]
    assert math.isclose(r["node16_masks_per_s"], min(16e3 / total, 1e3 / cpu["handoff_main_ms"]))
    assert math.isclose(cpu["cpu_ratio_to_opencv_png"], cpu["cpu_ms_per_mask"] / cpu["opencv_png_ms"])
    assert r["png_writer"] == png.describe(png.resolve("auto")) and cpu["images"] == 8
    # every map of the 8 has its regions counted (a whole number of them): their mean has a denominator of 8
    assert cpu["regions_per_cam"] > 0 and (cpu["regions_per_cam"] * 8).is_integer()
    for name in STAGES + ("cpu_per_mask", "OpenCV's PNG writer", "measured whole", "16-core node"):
        assert name in p.stdout  # the table


def test_own_data_and_trained_cam_model(tmp_path):
    """--datapath: the bench measures a prepared CUB folder's images; --cam_snapshot: the CAMs (bare forward,
    mask stage, post-processing) come from that model, here of 3 classes (the stage refuses a snapshot whose
    classes are not its --clsnum, and the bare forward picks each image's class map)."""
    from dataset.prepare import prepare_cub
    from dataset.synthetic import make_cub
    from network import build_mffnet
    data = make_cub(str(tmp_path / "CUB_200_2011"), num_classes=3, train_per_class=4, val_per_class=4,
                    segmentations=False)
    prepare_cub(data)
    def files() -> list:
        return sorted(os.path.relpath(os.path.join(d, f), data) for d, _, fs in os.walk(data) for f in fs)

    before = files()
    torch.manual_seed(1)
    torch.save(build_mffnet(3, "resnet18").state_dict(), tmp_path / "cam3.pth")
    out = tmp_path / "bench.json"
    p = bench("--device", "cpu", "--backbone", "resnet18", "--batch_size", 4, "--images", 8, "--rounds", 1,
              "--num_workers", 1, "--post_workers", 1, "--datapath", data, "--cam_snapshot", tmp_path / "cam3.pth",
              "--json", out)
    r = json.load(open(out))
    assert r["data"] == data and r["cam_weights"] == str(tmp_path / "cam3.pth")
    assert r["stages"]["cam_forward"]["classes"] == 3 and r["stages"]["pseudo_masks"]["images"] == 8
    assert positive(r["cpu_ms_per_mask"]) and r["stages"]["cpu_per_mask"]["images"] == 8
    assert f"data: {data}; CAM model weights: {tmp_path / 'cam3.pth'}" in p.stdout and "3 classes" in p.stdout
    # the bench's work folder linked to the data and was removed: through the links, nothing of the data went
    assert files() == before


def test_linked_cub_spreads_the_lists_and_links_the_rest(tmp_path):
    from utils.bench import linked_cub
    from utils.errors import UserError
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "classes.txt").write_text("1 001.a\n")
    for split in ("train", "val"):
        (src / f"{split}.txt").write_text("".join(f"{split}{i}.jpg,{i // 5},0 0 1 1\n" for i in range(10)) + "\n")
    root = linked_cub(str(src), str(tmp_path / "dst"), 4)
    for split in ("train", "val"):   # lines 0, 2, 5, 7 of 10: both classes
        names = [line.split(",")[0] for line in open(os.path.join(root, f"{split}.txt")).read().splitlines()]
        assert names == [f"{split}{i}.jpg" for i in (0, 2, 5, 7)]
    images = os.path.join(root, "images")
    assert os.path.islink(images) and os.path.samefile(images, src / "images")
    assert os.path.samefile(os.path.join(root, "classes.txt"), src / "classes.txt")
    with pytest.raises(UserError, match=r"dst exists: with --datapath, --workdir must not hold"):
        linked_cub(str(src), str(tmp_path / "dst"), 4)
    with pytest.raises(UserError, match=r"lists 10 images, fewer than --images 11"):
        linked_cub(str(src), str(tmp_path / "dst2"), 11)
    (src / "val.txt").unlink()
    with pytest.raises(UserError, match=r"val\.txt is missing: .*dataset/prepare\.py cub --root"):
        linked_cub(str(src), str(tmp_path / "dst3"), 4)


def test_help_and_bad_sizes():
    from utils.bench import get_args_parser, main
    from utils.errors import UserError
    assert "pseudo_masks" in get_args_parser().format_help() and "--rounds" in get_args_parser().format_help()
    with pytest.raises(UserError, match=r"--images 4 < 2 x --batch_size 4"):
        main(["--device", "cpu", "--images", "4", "--batch_size", "4"])
    with pytest.raises(UserError, match=r"--rounds 0 is out of range"):
        main(["--device", "cpu", "--rounds", "0"])


def test_throughput_leaves_the_first_batch_out():
    rate = Throughput()
    rate.stop()
    assert math.isnan(rate.images_per_s)   # nothing handed on
    rate.handed_on(4)                      # the clock starts
    rate.handed_on(4)
    rate.handed_on(3)
    rate.stop()
    assert rate.images == 7 and rate.seconds > 0 and rate.images_per_s == 7 / rate.seconds


def test_pending_takes_results_as_they_finish():
    release = threading.Event()
    taken = []
    with ThreadPoolExecutor(4) as pool:
        pending = Pending(taken.append)
        pending.add(pool.submit(lambda: release.wait(30) and "slow"))   # submitted first, finishes last
        for k in range(3):
            pending.add(pool.submit(lambda k=k: k))
        pending.settle(1)                       # returns with the slow task still running
        assert sorted(taken) == [0, 1, 2] and len(pending.futures) == 1
        release.set()
        pending.settle(0)
        assert taken[-1] == "slow" and not pending.futures
        pending.add(pool.submit(lambda: 1 / 0))
        with pytest.raises(ZeroDivisionError):  # a task's error reaches the loop
            pending.settle(0)


def test_host_copy_on_the_cpu_is_the_tensor():
    x = torch.arange(6.0)
    assert HostCopy(x).get() is x


def test_post_pool_workers_import_neither_the_main_script_nor_torch(tmp_path):
    """A spawned worker would import the parent's main script (a stage's test.py, and torch with it: ~3 s of
    CPU and ~250 MB each). The pools' workers skip it, and their tasks' modules are torch-free."""
    script = tmp_path / "stage_like.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        import torch
        from utils.engine.workers import post_pool
        print("main script ran")    # a worker that ran this script would print it again
        if __name__ == "__main__":
            from utils.engine.masks import write_masks
            from utils.wsol_eval import score_image
            pool = post_pool(1)
            cam = np.random.rand(32, 32).astype(np.float32)
            pool.submit(write_masks, [(cam, 60, 40, {str(tmp_path / "m.png")!r})]).result()
            v1, v2, _ = pool.submit(score_image, np.ones((224, 224)), np.array([[0, 0, 223, 223]]), 0.5, None, "x",
                                    None).result()
            print(v1.max() > 0, v2.max() > 0)
            print(pool.submit(eval, "'torch' in __import__('sys').modules").result())
            pool.shutdown()
            print(__spec__, __file__ == {str(script)!r})   # the parent's __main__ as it was
    """))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["main script ran", "True True", "False", "None True"], p.stdout
    assert (tmp_path / "m.png").stat().st_size > 0


def test_freed_memory_is_kept_for_the_next_batch():
    """`keep_freed_memory` (the loader workers' init): a batch of 786 KB images, freed and made again, reuses
    the pages; glibc's default trims the freed heap, and the next batch faults every page in again."""
    code = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from utils.engine.workers import keep_freed_memory
        if sys.argv[1] == "keep":
            assert keep_freed_memory()
        batch = [np.ones((256, 256, 3), np.float32) for _ in range(32)]
        del batch
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        batch = [np.ones((256, 256, 3), np.float32) for _ in range(32)]
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    faults = {how: int(subprocess.run([sys.executable, "-c", code, how], cwd=ROOT, capture_output=True, text=True,
                                      timeout=60, check=True).stdout) for how in ("keep", "default")}
    pages = 32 * 256 * 256 * 3 * 4 // 4096
    assert faults["default"] > pages / 2 and faults["keep"] < pages / 20, faults


class _Threads(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import cv2
        return {"threads": torch.tensor(cv2.getNumThreads())}


def test_loader_workers_run_one_opencv_thread():
    """The stages' loaders start their workers with one OpenCV thread, set in this process before they fork
    (a forked worker setting it itself would hang once this process's OpenCV pool has run)."""
    import cv2
    import numpy as np
    from utils.engine.distributed import Dist
    from utils.engine.loop import inference_batches
    cv2.setNumThreads(2)
    cv2.resize(np.zeros((512, 512), np.float32), (100, 100))   # this process's OpenCV pool has run
    batches = list(inference_batches(_Threads(), [0, 1], 1, 1, Dist()))
    assert [b["threads"].item() for b in batches] == [1, 1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_first_hour_without_a_gpu_says_so_and_exits_0():
    env = {k: v for k, v in os.environ.items() if k != "SPOL_GPU_SUITE_DEVICE"}
    p = subprocess.run([sys.executable, "-m", "utils.first_hour"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0 and p.stdout.startswith("first hour: no CUDA GPU here"), (p.stdout, p.stderr)

"""The whole SPOL pipeline on a synthetic CUB-format data set, on the CPU, in a few minutes.

    python dataset/demo.py                 # writes demo/ in the repository root

Steps, each through the project's own scripts (the same command lines as on the real data):
  1. dataset/synthetic.py's CUB generator writes demo/CUB_200_2011 in the official layout;
  2. dataset/prepare.py cub writes the list files;
  3. cub200-cam/train.py trains the CAM model (ResNet-18, from scratch: no pretrained weights here);
  4. cub200-cam/test.py writes the pseudo masks of the training images;
  5. cub200-seg/train.py trains the segmentation model on them;
  6. cub200-seg/test.py localises the test images.
Then it prints the localisation figures beside boxes that ignore the image (utils/evaluation/fixed_boxes.py):
the best centred box of any size, chosen on the test boxes themselves, is the figure any real localiser must beat.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataset.synthetic import make_cub  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.evaluation.fixed_boxes import cub_baselines  # noqa: E402


def run(step: str, script: str, *args: object) -> None:
    print(f"\n=== {step}: python {script} {' '.join(map(str, args))}", flush=True)
    t = time.time()
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT)
    if p.returncode != 0:
        raise UserError(f"{step} failed (exit {p.returncode}); see its output above")
    print(f"=== {step}: {time.time() - t:.0f} s", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "demo"), help="folder for the data and every stage's output")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--train_per_class", type=int, default=50)
    p.add_argument("--val_per_class", type=int, default=20)
    p.add_argument("--size", type=int, default=144, help="images are resized to size x size")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--cam_epochs", type=int, default=12)
    p.add_argument("--seg_epochs", type=int, default=12)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.time()
    data = os.path.join(a.out, "CUB_200_2011")
    if not os.path.isfile(os.path.join(data, "images.txt")):
        print(f"writing the synthetic data set to {data}")
        make_cub(data, num_classes=a.classes, train_per_class=a.train_per_class, val_per_class=a.val_per_class,
                 seed=a.seed)
    run("lists", "dataset/prepare.py", "cub", "--root", data)
    common = ["--datapath", data, "--backbone", "resnet18", "--device", "cpu", "--num_workers", a.num_workers,
              "--size", a.size, "--crop", a.crop, "--seed", a.seed]
    train = ["--pretrained", "none", "--batch_size", a.batch_size, "--lr", a.lr, "--backbone_lr", a.lr]
    cam, seg = os.path.join(a.out, "cam"), os.path.join(a.out, "seg")
    run("cam train", "cub200-cam/train.py", *common, *train, "--clsnum", a.classes, "--epoch", a.cam_epochs,
        "--snapshot_from", a.cam_epochs, "--savepath", cam)
    run("pseudo masks", "cub200-cam/test.py", *common, "--clsnum", a.classes, "--snapshot",
        os.path.join(cam, f"model-{a.cam_epochs}.pth"), "--maskpath", os.path.join(cam, "masks"), "--overwrite")
    run("seg train", "cub200-seg/train.py", *common, *train, "--maskpath", os.path.join(cam, "masks"),
        "--epoch", a.seg_epochs, "--snapshot_from", a.seg_epochs, "--savepath", seg)
    run("seg test", "cub200-seg/test.py", *common, "--snapshot", os.path.join(seg, f"model-{a.seg_epochs}.pth"),
        "--savepath", seg)
    metrics = json.load(open(os.path.join(seg, "metrics.json")))
    fixed = cub_baselines(data, a.size, a.crop)
    print(f"\n=== SPOL demo on {metrics['count']} synthetic test images ({time.time() - t0:.0f} s in all)")
    print(f"GT-known Loc   SPOL: {metrics['gt_known_loc']:6.2f}   best fixed centred box: "
          f"{fixed['best_centred_box']:6.2f} ({fixed['best_fraction']:g} of the crop's side)")
    print(f"               other boxes that ignore the image: the whole crop {fixed['whole_crop']:.2f}, its central "
          f"half {fixed['centre_box']:.2f}")
    print(f"empty masks: {metrics['empty']}   details: {os.path.join(seg, 'metrics.json')}, boxes.csv")


if __name__ == "__main__":
    run_main(main)

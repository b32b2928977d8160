"""One argument-parser factory for every stage script (the original's flags, typed, plus the ones a
modern trainer has). Stage scripts set their flags' defaults (the paper's) with `set_defaults`, and pass their
data set (utils/data/datasets.py) and their other named values to `parse`.

Relative path defaults are resolved against the stage folder, so `python cub200-cam/train.py` and
`cd cub200-cam && python train.py` do the same; paths typed by the user are relative to the cwd.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

from network.classifier import EFFICIENTNETS
from network.mffnet import FUSIONS
from network.backbones import BACKBONES
from utils.engine.checkpoint import find_snapshot
from utils.data.images import MAX_PIXELS, set_max_pixels
from utils.data.datasets import DATASETS, DataSet
from utils.engine.distributed import local_world
from utils.engine.loop import TrainConfig
from utils.errors import UserError
from utils.data.lists import count_classes
from utils.method.pseudo_mask import PRIORS

PATH_ARGS = ("datapath", "savepath", "snapshot", "top1top5", "maskpath", "pretrained", "resume")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def per_process_cpus() -> int:
    """This node's CPU cores over torchrun's processes on it (at least 1): the worker defaults are per process,
    and eight ranks each taking the whole node's count would run eight times the processes it has cores for."""
    return max(1, (os.cpu_count() or 1) // local_world())


def make_parser(doc: str, train: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=_Formatter)
    g = p.add_argument_group("data")
    g.add_argument("--datapath", help="dataset root (CUB_200_2011 folder or ImageNet root with train/ val/ box/)")
    g.add_argument("--list", help="list file inside --datapath (written by dataset/prepare.py)")
    g.add_argument("--clsnum", type=int, help="number of classes (CUB-layout stages, when not given: the lines of "
                                                "<datapath>/classes.txt)")
    g.add_argument("--savepath", default="out", help="output folder (snapshots, logs, results)")
    g.add_argument("--num_workers", type=int, default=min(8, per_process_cpus()),
                   help="data-loading worker processes per rank (0: load in the main process)")
    g.add_argument("--on-bad-image", dest="on_bad_image", choices=("stop", "skip"), default="stop",
                   help="an unreadable/truncated image or missing mask: stop naming the file, or skip it, "
                        "log it and count it")
    add_max_pixels_arg(g)
    g.add_argument("--size", type=int, default=256, help="images are resized to size x size")
    g.add_argument("--crop", type=int, default=224, help="random (train) or centre (test) crop")
    m = p.add_argument_group("model")
    add_backbone_arg(m)
    m.add_argument("--snapshot", help="model weights to evaluate / start from (a plain state dict, the original "
                                      "code's snapshots included); test.py without it: the authors' released "
                                      "name in --savepath (e.g. out/model-8), else the last out/model-<N>")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)")
    r.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision (torch.amp, replacing the original's apex O2); auto: bf16 on CUDA, "
                        "off on the CPU")
    r.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on for CUDA)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--seed", type=int, default=0, help="seed of shuffling, augmentation and dropout")
    r.add_argument("--mode", default="train" if train else "test", choices=("train", "test"),
                   help="kept from the original command lines; must match the script")
    if train:
        t = p.add_argument_group("training")
        t.add_argument("--pretrained", default="../resource/resnet50-19c8e357.pth",
                       help="torchvision ImageNet weights of the backbone, or 'none' to train from scratch")
        t.add_argument("--epoch", type=int, help="epochs")
        t.add_argument("--batch_size", type=int, help="total batch size over all processes")
        t.add_argument("--lr", type=float, help="learning rate of the head")
        t.add_argument("--backbone_lr", type=float, help="learning rate of the backbone")
        t.add_argument("--weight_decay", type=float, default=1e-4)
        t.add_argument("--momentum", type=float, default=0.9)
        t.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True)
        t.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=True,
                       help="under torchrun: BatchNorm statistics over the whole global batch, as on the "
                            "authors' single GPU (default); --no-sync_bn: per-process statistics (faster)")
        t.add_argument("--resume", nargs="?", const="auto",
                       help="continue from a training-state file (bare flag: <savepath>/checkpoint.pth)")
        t.add_argument("--save_every", type=int, default=0,
                       help="also write the resumable training state every N steps (0: at epoch ends only)")
        t.add_argument("--snapshot_every", type=int, default=0,
                       help="write model-<step>.pth every N steps (0: per-epoch snapshots)")
        t.add_argument("--snapshot_from", type=int, default=1, help="first epoch whose model-<epoch>.pth is kept")
        t.add_argument("--print_freq", type=int, default=20, help="log every N steps")
        t.add_argument("--max_steps", type=int, default=0, help="stop after N steps in total (0: no limit)")
        add_force_arg(t, "--savepath", "its snapshots, checkpoint.pth and logs")
    else:
        p.add_argument_group("inference").add_argument("--batch_size", type=int, default=64,
                                                       help="images per forward pass (per process)")
    return p


def add_force_arg(p: argparse._ActionsContainer, flag: str, replaced: str) -> None:
    """`--force`: write into the output folder `flag` names although it holds another stage's training run
    (`validate.check_stage_folder`), whose files `replaced` would be replaced."""
    p.add_argument("--force", action="store_true",
                   help=f"write into a {flag} that holds another stage's training run ({replaced} are replaced)")


def add_backbone_arg(p: argparse._ActionsContainer) -> None:
    """`--backbone`, the one definition of every stage and tool that has it: the registered backbones
    (network/backbones/) are its choices."""
    p.add_argument("--backbone", default="resnet50", choices=sorted(BACKBONES),
                   help="backbone of the MFF-Net (with a snapshot: the one it was trained with); the small ResNets "
                        "make CPU runs fast")


def add_mask_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pseudo masks")
    g.add_argument("--maskpath", default="out/masks", help="where the PNG pseudo masks are written")
    g.add_argument("--overwrite", action="store_true", help="rewrite masks that already exist (default: skip "
                                                            "them, so an interrupted run resumes)")
    g.add_argument("--post_workers", type=int, default=max(1, per_process_cpus() // 2),
                   help="processes turning CAMs into PNGs (0: in the main process)")
    g.add_argument("--png_writer", choices=("auto", "fpng", "opencv"), default="auto",
                   help="PNG encoder of the masks (lossless, the same pixels either way): fpng is several times "
                        "faster, OpenCV's files are smaller; auto: fpng where the package is installed, else OpenCV")
    g.add_argument("--vis", type=int, default=0,
                   help="draw image, CAM, Gaussian prior and pseudo mask of the first N images of the list to "
                        "<maskpath>/../vis/ (one PNG each and grid.png)")
    add_force_arg(g, "--maskpath's folder", "its vis/ pictures")
    g.add_argument("--prior", choices=sorted(PRIORS), default="gaussian",
                   help="channel 1 of the masks, a prior of the PRIORS table (utils/method/pseudo_mask.py): gaussian "
                        "is SPOL's; none leaves it 0, so the seg stage learns from the CAM alone (the paper's "
                        "ablation of the prior)")


def add_network_args(p: argparse.ArgumentParser, train: bool) -> None:
    """The MFF-Net ablation switches (network/mffnet.py). Training defaults to SPOL's network; test.py leaves
    them unset so that the snapshot's recorded network is rebuilt (a flag that contradicts it is an error)."""
    g = p.add_argument_group("MFF-Net ablations", "SPOL's network by default; test.py: the snapshot's network")
    g.add_argument("--fusion", choices=list(FUSIONS), default="mul" if train else None,
                   help="fusion of the reduced stage features, a row of network/mffnet.py's FUSIONS table: "
                        + ", ".join(f"{name}: {f.label}" for name, f in FUSIONS.items()))
    g.add_argument("--levels", type=int, choices=(1, 2, 3, 4), default=3 if train else None,
                   help="fuse the last N backbone stages: 1 = layer4 alone (a plain CAM), 3 = SPOL (layer2..4), "
                        "4 adds layer1")
    g.add_argument("--mca", action=argparse.BooleanOptionalAction, default=True if train else None,
                   help="the multi-scale channel attention (--no-mca: without it)")


def architecture(fusion: Optional[str], levels: Optional[int], mca: Optional[bool]) -> dict:
    """The switches of `add_network_args` that are set (not None), as keyword arguments of build_mffnet /
    load_mffnet."""
    return {k: v for k, v in (("fusion", fusion), ("levels", levels), ("mca", mca)) if v is not None}


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The training flags of a train.py (`make_parser(train=True)`) that `engine.fit` uses, with every flag recorded
    in `flags`."""
    return TrainConfig(epochs=args.epoch, batch_size=args.batch_size, savepath=args.savepath, list_name=args.list,
                       momentum=args.momentum, weight_decay=args.weight_decay, nesterov=args.nesterov, amp=args.amp,
                       channels_last=args.channels_last, compile=args.compile, sync_bn=args.sync_bn, seed=args.seed,
                       resume=args.resume, save_every=args.save_every, snapshot_every=args.snapshot_every,
                       snapshot_from=args.snapshot_from, print_freq=args.print_freq, max_steps=args.max_steps,
                       on_bad_image=args.on_bad_image, num_workers=args.num_workers, flags=dict(vars(args)))


def add_max_pixels_arg(g) -> None:
    g.add_argument("--max-pixels", dest="max_pixels", type=int, default=MAX_PIXELS,
                   help="an image whose header claims more pixels is a bad image (--on-bad-image), refused before "
                        "it is decoded: a small PNG can claim 30000 x 30000 and cost gigabytes")


def add_cls_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("classifier")
    g.add_argument("--arch", default="efficientnet-b7",
                   help=f"classifier: {', '.join(EFFICIENTNETS)} (the authors', built by efficientnet_pytorch), "
                        f"{', '.join(sorted(BACKBONES))}, or timm:<model> (needs timm)")
    g.add_argument("--resize", choices=("square", "shorter"), default="square",
                   help="test-time resize: size x size, or the shorter side to size (then centre crop)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--threshold", type=float, help="foreground probability threshold of the predicted mask")
    g.add_argument("--top1top5",
                   help="the classifier's results (ours or the authors' top1top5.npy); not given: the cls stage's "
                        "out/top1top5.npy, else its top1top5.npy (where the authors ship theirs); 'none' or neither: "
                        "GT-known Loc only")
    g.add_argument("--allow_pickle", action="store_true",
                   help="unpickle a top1top5.npy without restriction (the authors' plain dict is read safely "
                        "without it; this is for other pickles, and runs their code: trusted files only)")
    g.add_argument("--protocol", choices=("spol", "wsol"), default="spol",
                   help="spol: the paper's (resize --size, centre --crop, mask > --threshold, GT-known/Top-1/Top-5 "
                        "Loc); wsol: wsolevaluation's (resize 224, no crop; MaxBoxAcc, MaxBoxAccV2, PxAP on CUB "
                        "with segmentations/; --size/--crop/--threshold unused)")
    g.add_argument("--cam_curve_interval", type=float, default=0.01,
                   help="--protocol wsol: step of the CAM thresholds arange(0, 1, step)")
    g.add_argument("--save_scoremaps", action=argparse.BooleanOptionalAction, default=True,
                   help="--protocol wsol: write <savepath>/scoremaps/<image_id>.npy (224 x 224 float32) for "
                        "python -m utils.wsol_eval")
    g.add_argument("--post_workers", type=int, default=max(1, per_process_cpus() // 2),
                   help="--protocol wsol: processes scoring the score maps (0: in the main process)")
    g.add_argument("--vis", type=int, default=0,
                   help="draw the first N images of the list to <savepath>/vis/ (one PNG each and grid.png)")
    g.add_argument("--maskpath", default=None,
                   help="--vis: also show these pseudo masks (the cam stage's out/masks), where one exists")
    add_force_arg(g, "--savepath", "its metrics.json, boxes.csv, vis/ and scoremaps/")


def parse(parser: argparse.ArgumentParser, script: str, argv=None, dataset: Optional[DataSet] = None,
          classes: bool = False, released: Optional[str] = None, **recorded) -> argparse.Namespace:
    """The stage script's flags, checked, with paths resolved and the defaults that depend on other values:

    `dataset`: the script's data set, the default of --dataset (recorded as `args.dataset`); a seg test.py (one
    with --top1top5) of a data set with boxes takes the classifier's results from its `<stage_prefix>-cls/` folder.
    `classes`: the stage's model has one output per class; where the data set counts its classes (CUB:
    classes.txt), --clsnum not given is that count, and `count_classes` is recorded.
    `released`: test.py's snapshot without --snapshot, the authors' released name in out/ (else the last
    model-<N> there). `recorded`: the script's named values that are not flags (e.g. freeze_stem); like
    `dataset` and `count_classes` they are recorded with the flags (checkpoint.pth's "args", args.json).
    """
    if dataset is not None:
        parser.add_argument("--dataset", choices=list(DATASETS), default=dataset.name,
                            help="the data set's layout, a row of utils/data/datasets.py's DATASETS table: this "
                                 "script's recipe on another layout (a new layout: a list reader and a row there)")
    args = parser.parse_args(argv)
    if args.mode != parser.get_default("mode"):
        parser.error(f"--mode {args.mode} does not fit {os.path.basename(script)}: "
                     f"train.py trains, test.py evaluates")
    problem = flag_problem(vars(args))
    if problem:
        parser.error(problem)
    if getattr(args, "max_pixels", None) is not None:  # read_image's limit, inherited by the loader workers
        set_max_pixels(args.max_pixels)
    if dataset is not None:
        dataset = DATASETS[args.dataset]
        if classes and dataset.count_classes:
            args.count_classes = True
    for name, value in recorded.items():
        setattr(args, name, value)
    here = os.path.dirname(os.path.abspath(script))
    args.stage = os.path.basename(here)  # recorded: a run of another stage will not write over this one's folder
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if value and value not in ("none", "auto") and value == parser.get_default(name) and not os.path.isabs(value):
            setattr(args, name, os.path.normpath(os.path.join(here, value)))
    if getattr(args, "pretrained", None) == "none":
        args.pretrained = None
    if released is not None and not args.snapshot:  # --savepath first, then the stage's own out/
        stage_out = os.path.normpath(os.path.join(here, parser.get_default("savepath")))
        args.snapshot = _default_snapshot(list(dict.fromkeys([os.path.normpath(args.savepath), stage_out])),
                                          released)
    if dataset is not None and dataset.boxes and "top1top5" in vars(args):
        cls_stage = os.path.join(here, "..", f"{dataset.stage_prefix}-cls")
        args.top1top5 = _default_top1top5(args.top1top5, cls_stage, args.protocol)
    if getattr(args, "resume", None) == "auto":
        args.resume = os.path.join(args.savepath, "checkpoint.pth")
    if getattr(args, "count_classes", False) and args.clsnum is None:  # CUB layout, own class folders included
        args.clsnum = count_classes(args.datapath)
    return args


# the smallest value each numeric flag may take
_AT_LEAST = {"epoch": 1, "batch_size": 1, "clsnum": 1, "size": 1, "crop": 0, "num_workers": 0, "post_workers": 0,
             "vis": 0, "print_freq": 1, "save_every": 0, "snapshot_every": 0, "max_steps": 0, "snapshot_from": 1,
             "max_pixels": 1}


def flag_problem(flags: dict) -> Optional[str]:
    """What is wrong with the parsed flags, in one line, or None. Checked before any work starts."""
    for name, low in _AT_LEAST.items():
        value = flags.get(name)
        if value is not None and value < low:
            return f"--{name} {value}: must be at least {low}"
    for name in ("lr", "backbone_lr"):
        value = flags.get(name)
        if value is not None and not (value > 0 and value < float("inf")):
            return f"--{name} {value}: must be a positive number"
    crop_used = flags.get("protocol") != "wsol"  # the wsol protocol resizes to 224 and crops nothing
    if crop_used and flags.get("crop") and flags.get("size") and flags["crop"] > flags["size"]:
        return f"--crop {flags['crop']} is larger than --size {flags['size']}: the crop is cut from the resized image"
    threshold = flags.get("threshold")
    if threshold is not None and not 0 <= threshold <= 1:
        return f"--threshold {threshold}: a foreground probability threshold lies in [0, 1]"
    interval = flags.get("cam_curve_interval")
    if interval is not None and not 0 < interval < 1:
        return f"--cam_curve_interval {interval}: must lie in (0, 1)"
    return None


def _say(message: str) -> None:
    """Print once per job (rank 0 under torchrun: the parse step runs before the process group exists)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


def _default_snapshot(folders: list, released: str) -> str:
    """test.py without --snapshot: the released name in out/, else the last model-<N> there; the first of
    `folders` that has either."""
    whys = []
    for folder in folders:
        path, why = find_snapshot(folder, released)
        if path is not None:
            _say(f"--snapshot not given: using {path} ({why})")
            return path
        whys.append(why)
    raise UserError(f"no --snapshot given and {'; '.join(whys)}: train first (python train.py), put the authors' "
                    f"checkpoint there, or pass --snapshot PATH")


def _default_top1top5(given: Optional[str], cls_dir: str, protocol: str) -> Optional[str]:
    """seg test.py without --top1top5: <cls stage>/out/top1top5.npy (ours), else <cls stage>/top1top5.npy
    (where the authors' repository ships theirs); neither: GT-known Loc only. `--top1top5 none`: the latter."""
    if given == "none":
        return None
    if given or protocol != "spol":
        return given
    for path, whose in ((os.path.join(cls_dir, "out", "top1top5.npy"), "written by the cls stage's test.py"),
                        (os.path.join(cls_dir, "top1top5.npy"), "where the authors' repository keeps theirs")):
        path = os.path.normpath(path)
        if os.path.isfile(path):
            _say(f"--top1top5 not given: using {path} ({whose})")
            return path
    _say(f"--top1top5 not given and no top1top5.npy in {os.path.normpath(cls_dir)}/out or "
         f"{os.path.normpath(cls_dir)}: reporting GT-known Loc only (run the cls stage's test.py for Top-1/Top-5 Loc)")
    return None

"""The paper's ablation in one command: Figure 1(b) (GT-known Loc of CAMs fused from the last 1..4 ResNet
stages by addition, concatenation and multiplication) and the MCA and Gaussian-prior ablations.

    python -m utils.ablation --datapath dataset/CUB_200_2011 --out ablation          # the paper's recipe
    python -m utils.ablation --datapath ... --out ablation --resume                  # continue a stopped grid
    python -m utils.ablation --datapath ... --grid spol,fuse4-mul,spol-no-mca        # some settings only

Each setting runs through the real stage scripts, as a user would run them:
  1. cub200-cam/train.py with the setting's --fusion/--levels/--mca   -> <out>/cam/<network>/model-E.pth
  2. python -m utils.cam_loc: GT-known Loc of that model's own CAMs (the seg stage's box rule, the CAM
     normalised to its maximum and cut at --cam_threshold)            -> <out>/cam/<network>/cam_loc.json
  3. cub200-cam/test.py --prior gaussian|none: the pseudo masks       -> <out>/<setting>/masks/
  4. cub200-seg/train.py with the same network switches               -> <out>/<setting>/seg/model-E.pth
  5. cub200-seg/test.py: GT-known Loc (SPOL protocol)                 -> <out>/<setting>/eval/metrics.json
  6. cub200-seg/test.py --protocol wsol: MaxBoxAccV2                  -> <out>/<setting>/wsol/metrics.json
Settings that differ only in the prior share steps 1-2 (the same CAM model). The test scripts get no
network flags: they rebuild the network recorded in the snapshot. Each step's output goes to
<out>/<setting or cam network>/<step>.log; finished steps and settings are kept, so `--resume` continues
where a run stopped. At the end (and after every setting) it writes <out>/ablation.md (the table),
<out>/ablation.json and <out>/figure1b.png (the paper's plot: x = Fuse1..Fuse4, one line per fusion).

Setting names: `fuse<L>-<fusion>` (L = 1..4 stages, fusion = mul|add|concat; `fuse1` alone, the plain
CAM, since one stage has nothing to fuse), `spol` = fuse3-mul, and the suffixes `-no-mca` (no channel
attention) and `-no-prior` (pseudo masks without the Gaussian prior). `--grid default` is the paper's:
Fuse1..Fuse4 x the three fusions, spol-no-mca and spol-no-prior.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python utils/ablation.py` as well as `python -m utils.ablation`
    sys.path.insert(0, ROOT)

from network.mffnet import FUSIONS  # noqa: E402
from utils.stages.cli import add_backbone_arg  # noqa: E402
from utils.data.lists import count_classes  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.evaluation.fixed_boxes import cub_baselines  # noqa: E402
from utils.engine.log import write_json  # noqa: E402
from utils.engine.outputs import write_text  # noqa: E402

DEFAULT_GRID = ("fuse1", "fuse2-add", "fuse2-concat", "fuse2-mul", "fuse3-add", "fuse3-concat", "spol",
                "fuse4-add", "fuse4-concat", "fuse4-mul", "spol-no-mca", "spol-no-prior")
# the recipe flags a grid is run with: a resumed grid must use the same ones, or its rows would not compare
RECIPE = ("datapath", "backbone", "pretrained", "size", "crop", "cam_epochs", "seg_epochs", "cam_batch_size",
          "seg_batch_size", "lr", "backbone_lr", "seed", "cam_threshold", "amp")
# the fusions are network/mffnet.py's table: a fusion added there is a setting here with no other change
_NAME = re.compile(rf"^(?:(spol)|fuse([1-4])(?:-({'|'.join(FUSIONS)}))?)((?:-no-mca|-no-prior)*)$")


@dataclass(frozen=True)
class Setting:
    levels: int
    fusion: str
    mca: bool = True
    prior: bool = True

    @classmethod
    def parse(cls, token: str) -> "Setting":
        m = _NAME.match(token.strip().lower())
        if not m:
            raise UserError(f"--grid: unknown setting {token!r}; names are fuse<1-4>-<{'|'.join(FUSIONS)}>, fuse1, "
                            f"spol, with optional -no-mca / -no-prior (e.g. fuse2-add, spol-no-prior)")
        spol, levels, fusion, suffix = m.groups()
        levels = 3 if spol else int(levels)
        fusion = "mul" if spol or levels == 1 else fusion
        if fusion is None:
            raise UserError(f"--grid: {token!r} fuses {levels} stages: name the fusion, e.g. fuse{levels}-mul")
        return cls(levels, fusion, mca="-no-mca" not in suffix, prior="-no-prior" not in suffix)

    @property
    def network(self) -> str:
        """Name of the network alone (the CAM model; settings differing only in the prior share it)."""
        base = "fuse1" if self.levels == 1 else "spol" if (self.levels, self.fusion) == (3, "mul") else \
            f"fuse{self.levels}-{self.fusion}"
        return base + ("" if self.mca else "-no-mca")

    @property
    def name(self) -> str:
        return self.network + ("" if self.prior else "-no-prior")

    def network_flags(self) -> list:
        return ["--fusion", self.fusion, "--levels", str(self.levels), "--mca" if self.mca else "--no-mca"]


def parse_grid(text: str) -> list:
    tokens = [t for t in re.split(r"[,\s]+", text) if t]
    settings, seen = [], set()
    for token in tokens:
        for s in (map(Setting.parse, DEFAULT_GRID) if token == "default" else [Setting.parse(token)]):
            if s.name not in seen:  # fuse1-add and fuse1-mul are the same network: run it once
                seen.add(s.name)
                settings.append(s)
    if not settings:
        raise UserError("--grid is empty")
    return settings


# ------------------------------------------------------------------------------------------- steps
class Runner:
    """Runs the steps of the settings through the stage scripts; remembers what finished (and its time)."""

    def __init__(self, a: argparse.Namespace, clsnum: int):
        self.a, self.clsnum = a, clsnum
        common = ["--datapath", a.datapath, "--backbone", a.backbone, "--device", a.device, "--size", a.size,
                  "--crop", a.crop, "--num_workers", a.num_workers, "--seed", a.seed, "--amp", a.amp]
        self.common = [str(x) for x in common]
        train = [] if a.pretrained is None else ["--pretrained", a.pretrained]
        for flag, value in (("--lr", a.lr), ("--backbone_lr", a.backbone_lr)):
            if value is not None:
                train += [flag, value]
        self.train = [str(x) for x in train]

    def cam_steps(self, s: Setting) -> list:
        a, folder = self.a, os.path.join(self.a.out, "cam", s.network)
        model = os.path.join(folder, f"model-{a.cam_epochs}.pth")
        batch = ["--batch_size", str(a.cam_batch_size)] if a.cam_batch_size else []
        return [
            ("cam_train", ["cub200-cam/train.py", *self.common, *self.train, *batch, *s.network_flags(),
                           "--clsnum", str(self.clsnum), "--epoch", str(a.cam_epochs),
                           "--snapshot_from", str(a.cam_epochs), "--savepath", folder, "--resume"], model),
            ("cam_loc", ["-m", "utils.cam_loc", *self.common, "--snapshot", model, "--savepath", folder,
                         "--threshold", str(a.cam_threshold)], os.path.join(folder, "cam_loc.json")),
        ]

    def seg_steps(self, s: Setting) -> list:
        a, folder = self.a, os.path.join(self.a.out, s.name)
        cam = os.path.join(a.out, "cam", s.network, f"model-{a.cam_epochs}.pth")
        masks, seg = os.path.join(folder, "masks"), os.path.join(folder, "seg")
        model = os.path.join(seg, f"model-{a.seg_epochs}.pth")
        batch = ["--batch_size", str(a.seg_batch_size)] if a.seg_batch_size else []
        return [
            ("masks", ["cub200-cam/test.py", *self.common, "--clsnum", str(self.clsnum), "--snapshot", cam,
                       "--maskpath", masks, "--prior", "gaussian" if s.prior else "none"],
             os.path.join(folder, "masks.done")),
            ("seg_train", ["cub200-seg/train.py", *self.common, *self.train, *batch, *s.network_flags(),
                           "--maskpath", masks, "--epoch", str(a.seg_epochs), "--snapshot_from", str(a.seg_epochs),
                           "--savepath", seg, "--resume"], model),
            ("seg_test", ["cub200-seg/test.py", *self.common, "--snapshot", model, "--top1top5", "none",
                          "--savepath", os.path.join(folder, "eval")], os.path.join(folder, "eval", "metrics.json")),
            ("seg_wsol", ["cub200-seg/test.py", *self.common, "--snapshot", model, "--protocol", "wsol",
                          "--no-save_scoremaps", "--savepath", os.path.join(folder, "wsol")],
             os.path.join(folder, "wsol", "metrics.json")),
        ]

    def run(self, folder: str, steps: list, label: str) -> tuple:
        """Run the steps whose output is missing; returns ({step: wall seconds}, {step: CPU seconds}), the
        times of steps finished by an earlier run included."""
        os.makedirs(folder, exist_ok=True)
        record, cpu_record = os.path.join(folder, "steps.json"), os.path.join(folder, "steps_cpu.json")
        def earlier(path: str) -> dict:  # the times of the steps an earlier run finished
            return (read_json(path, "the times of its steps count as 0") or {}) if os.path.isfile(path) else {}

        times, cpu_times = earlier(record), earlier(cpu_record)
        for step, args, output in steps:
            if os.path.isfile(output):  # written only once the step has finished
                times.setdefault(step, 0.0)  # (0: finished, but its time was not recorded)
                cpu_times.setdefault(step, 0.0)
                print(f"    {step:10s} done earlier ({times[step]:.0f} s)", flush=True)
                continue
            print(f"    {step:10s} ...", end="", flush=True)
            t, cpu = time.time(), _children_cpu()
            log = os.path.join(folder, f"{step}.log")
            with open(log, "w") as f:
                f.write("python " + " ".join(args) + "\n\n")
                f.flush()
                p = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=None if self.a.verbose else f,
                                   stderr=subprocess.STDOUT if not self.a.verbose else None)
            if p.returncode != 0:
                print(" failed", flush=True)
                tail = "" if self.a.verbose else "".join(open(log).readlines()[-15:])
                raise UserError(f"{label}: {step} failed (exit {p.returncode}); its output is in {log}\n{tail}")
            if step == "masks":  # test.py skips masks already written: this marks the folder complete
                write_text(output, "done\n")
            times[step] = round(time.time() - t, 1)
            cpu_times[step] = round(_children_cpu() - cpu, 1)
            write_json(record, times)
            write_json(cpu_record, cpu_times)
            print(f" {times[step]:.0f} s (CPU {cpu_times[step]:.0f} s)", flush=True)
        return times, cpu_times


def _children_cpu() -> float:
    """CPU seconds (user + system) used so far by finished child processes (and the processes they
    waited for): a step's CPU cost, reported next to its wall time."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------------------ results
def read_json(path: str, instead: Optional[str] = None) -> Optional[dict]:
    """A JSON record of the grid (ablation.json, result.json, steps.json, a step's metrics): a dict. A file cut
    off or not an object is one error line naming it, or, where `instead` says what is done without it, said
    (naming it) and None."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
    except ValueError as e:  # cut off (a copy, a disk full elsewhere), edited by hand, not UTF-8
        if instead is None:
            raise UserError(f"{path} is not a whole JSON record ({e}): remove it, and --resume runs the step that "
                            f"writes it again") from None
        print(f"{path} is not a whole JSON record ({e}): {instead}", flush=True)
        return None
    return data


def collect(a: argparse.Namespace, s: Setting, cam_times: tuple, seg_times: tuple) -> dict:
    cam = read_json(os.path.join(a.out, "cam", s.network, "cam_loc.json"))
    final = read_json(os.path.join(a.out, s.name, "eval", "metrics.json"))
    wsol = read_json(os.path.join(a.out, s.name, "wsol", "metrics.json"))
    return {**asdict(s), "name": s.name, "network": s.network,
            "cam_gt_known": cam["gt_known_loc"], "cam_best_gt_known": cam["best_gt_known_loc"],
            "cam_best_threshold": cam["best_threshold"], "final_gt_known": final["gt_known_loc"],
            "final_empty": final["empty"], "maxboxacc_v2": wsol["maxboxacc_v2"]["mean"],
            "count": final["count"], "steps": {**cam_times[0], **seg_times[0]},
            "seconds": round(sum(cam_times[0].values()) + sum(seg_times[0].values()), 1),
            "cpu_seconds": round(sum(cam_times[1].values()) + sum(seg_times[1].values()), 1)}


def write_table(path: str, rows: list, config: dict, runs: list, fixed: dict) -> None:
    lines = [f"# Ablation on {config['datapath']}", "",
             f"{config['backbone']}, pretrained: {config['pretrained'] or 'none (from scratch)'}, "
             f"cam epochs {config['cam_epochs']}, seg epochs {config['seg_epochs']}, "
             f"CAM threshold {config['cam_threshold']:g}; {rows[0]['count'] if rows else 0} test images.", "",
             "| setting | stages | fusion | MCA | prior | CAM GT-known | CAM best (t) | final GT-known "
             "| MaxBoxAccV2 | time (s) | CPU (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['levels']} | {r['fusion'] if r['levels'] > 1 else '-'} | "
                     f"{'yes' if r['mca'] else 'no'} | {'Gaussian' if r['prior'] else 'none'} | "
                     f"{r['cam_gt_known']:.2f} | {r['cam_best_gt_known']:.2f} ({r['cam_best_threshold']:g}) | "
                     f"{r['final_gt_known']:.2f} | {r['maxboxacc_v2']:.2f} | {r['seconds']:.0f} | "
                     f"{r['cpu_seconds']:.0f} |")
    lines += ["", "CAM GT-known: the cam model's own CAM of the GT class, / its max, > the CAM threshold, box of the "
              "largest contour, IoU > 0.5 (python -m utils.cam_loc). CAM best: the best over thresholds "
              "0.05..0.95. Final GT-known: cub200-seg/test.py (SPOL protocol). MaxBoxAccV2: cub200-seg/test.py "
              "--protocol wsol. Time: wall time of the setting's steps; CPU: the CPU time they used (user + "
              "system, all processes; less affected than wall time by other jobs on the machine, though not "
              "immune to them). A CAM model shared by "
              "settings that differ only in the prior counts in each.",
              f"Boxes that ignore the image score {fixed['whole_crop']:.2f} (the whole crop), "
              f"{fixed['centre_box']:.2f} (its central half) and {fixed['best_centred_box']:.2f} (the best centred "
              f"box, {fixed['best_fraction']:g} of the side, chosen on these test boxes): a setting at or under "
              "the last has shown no localisation.",
              f"Conditions: {runs[-1]['cpus']} CPUs, device {config['device']}; "
              + "; ".join(f"run {k} (started {r['started']}): {r['wall_seconds']:.0f} s wall, {r['cpu_seconds']:.0f} s "
                          f"CPU, load average {r['load_start']} at its start, {r['load_end']} at its end (1, 5, 15 min)"
                          for k, r in enumerate(runs, 1)) + "."]
    write_text(path, "\n".join(lines) + "\n")


def plot(path: str, rows: list, title: str, fixed: Optional[dict] = None) -> None:
    """figure1b.png: GT-known Loc against the number of fused stages, one line per fusion; the CAM alone
    (the paper's Figure 1(b)) on the left, after the seg stage on the right; SPOL's ablations as markers."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("figure1b.png needs matplotlib: pip install matplotlib (see requirements.txt)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {r["name"]: r for r in rows}
    styles = {"add": ("tab:blue", "s", "--"), "concat": ("tab:orange", "^", "-."), "mul": ("tab:red", "o", "-")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, subtitle in ((axes[0], "cam_gt_known", "CAM alone (Figure 1(b))"),
                              (axes[1], "final_gt_known", "after the seg stage (SPOL)")):
        for fusion in sorted(FUSIONS, key=lambda f: (f == "mul", f)):   # SPOL's drawn last, on top
            color, marker, line = styles.get(fusion, (None, "v", ":"))
            names = ["fuse1"] + [Setting(levels, fusion).name for levels in (2, 3, 4)]
            points = [(k + 1, by_name[n][key]) for k, n in enumerate(names) if n in by_name]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, line, color=color, marker=marker, label=FUSIONS[fusion].label)
        for name, marker, label in (("spol-no-mca", "x", "SPOL without MCA"),
                                    ("spol-no-prior", "D", "SPOL without the Gaussian prior")):
            if name in by_name and not (key == "cam_gt_known" and name == "spol-no-prior"):  # same CAM as spol
                ax.plot([3], [by_name[name][key]], marker, color="black", markersize=8, linestyle="none",
                        fillstyle="none", label=label)
        if fixed is not None:
            ax.axhline(fixed["whole_crop"], color="grey", linestyle=":", label="box = whole crop (no localisation)")
        ax.set_xticks([1, 2, 3, 4], ["Fuse1", "Fuse2", "Fuse3", "Fuse4"])
        ax.set_xlim(0.7, 4.3)
        ax.set_title(subtitle)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("GT-known Loc (%)")
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- driver
def prepare_lists(datapath: str) -> None:
    if all(os.path.isfile(os.path.join(datapath, n)) for n in ("train.txt", "val.txt")):
        return
    print(f"writing the list files of {datapath} (dataset/prepare.py cub)", flush=True)
    p = subprocess.run([sys.executable, "dataset/prepare.py", "cub", "--root", datapath], cwd=ROOT)
    if p.returncode != 0:
        raise UserError(f"dataset/prepare.py cub --root {datapath} failed (exit {p.returncode}); see above")


def open_grid(a: argparse.Namespace, config: dict) -> dict:
    """The grid's record: a new one, or (--resume) the one in --out if it was run with the same recipe."""
    path = os.path.join(a.out, "ablation.json")
    if not os.path.isfile(path):
        return {"config": config, "settings": {}}
    if not a.resume:
        raise UserError(f"{a.out} already holds an ablation grid: pass --resume to continue it (finished settings "
                        f"are kept), or choose another --out")
    state = read_json(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("settings"), dict):
        raise UserError(f"{path} is not an ablation grid's record (no config and settings): remove it, or choose "
                        f"another --out")
    changed = [f"--{k} {state['config'].get(k)} -> {config[k]}" for k in RECIPE if state["config"].get(k) != config[k]]
    if changed:
        raise UserError(f"--resume: {a.out} was run with another recipe ({'; '.join(changed)}); its rows would not "
                        f"compare with new ones: use the same flags or another --out")
    state["config"] = config
    return state


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    p.add_argument("--datapath", required=True, help="a CUB-200-2011-layout folder (lists written if missing)")
    p.add_argument("--out", default=os.path.join(ROOT, "ablation"), help="folder of every setting's outputs")
    p.add_argument("--grid", default="default", help="comma-separated settings, or 'default' (see above)")
    p.add_argument("--resume", action="store_true", help="continue the grid in --out: finished steps are kept")
    p.add_argument("--verbose", action="store_true", help="show the stage scripts' output instead of logging it")
    g = p.add_argument_group("recipe", "defaults: the paper's; None: the stage scripts' own default (the paper's)")
    add_backbone_arg(g)
    g.add_argument("--pretrained", help="backbone weights, or 'none' to train from scratch")
    g.add_argument("--size", type=int, default=256, help="images are resized to size x size")
    g.add_argument("--crop", type=int, default=224, help="random (train) / centre (test) crop")
    g.add_argument("--cam_epochs", type=int, default=32, help="cam stage epochs")
    g.add_argument("--seg_epochs", type=int, default=2, help="seg stage epochs")
    g.add_argument("--cam_batch_size", type=int, help="cam stage batch size")
    g.add_argument("--seg_batch_size", type=int, help="seg stage batch size")
    g.add_argument("--lr", type=float, help="head learning rate of both stages")
    g.add_argument("--backbone_lr", type=float, help="backbone learning rate of both stages")
    g.add_argument("--seed", type=int, default=0, help="seed of every stage (initialisation, order, dropout)")
    g.add_argument("--cam_threshold", type=float, default=0.2,
                   help="CAM-only boxes: the region above this fraction of the CAM's maximum")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision of the stages (auto: bf16 on CUDA, off on the CPU)")
    r.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="loader processes")
    return p


def main(argv=None) -> dict:
    a = get_args_parser().parse_args(argv)
    a.datapath, a.out = os.path.abspath(a.datapath), os.path.abspath(a.out)
    if a.pretrained and a.pretrained != "none":
        a.pretrained = os.path.abspath(a.pretrained)
    if a.cam_epochs < 1 or a.seg_epochs < 1:
        raise UserError("--cam_epochs and --seg_epochs must be at least 1")
    if not os.path.isdir(a.datapath):
        raise UserError(f"--datapath {a.datapath} is not a folder")
    settings = parse_grid(a.grid)
    config = {k: getattr(a, k) for k in RECIPE}
    config.update(device=a.device, grid=[s.name for s in settings])
    state = open_grid(a, config)
    # a resumed grid that names other settings keeps the finished ones of the earlier grid in its table
    earlier = [name for name in state["settings"] if name not in config["grid"]]
    if earlier:
        print(f"kept from the earlier grid in {a.out} (finished): {', '.join(earlier)}", flush=True)
        config["grid"] = config["grid"] + earlier
    prepare_lists(a.datapath)
    runner = Runner(a, count_classes(a.datapath))  # classes.txt, as the stage scripts count them
    t0, cpu0 = time.time(), _children_cpu()
    conditions = {"cpus": os.cpu_count(), "load_start": [round(x, 2) for x in os.getloadavg()],
                  "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    state.setdefault("runs", []).append(conditions)  # every invocation's time and machine load, a resumed one too
    os.makedirs(a.out, exist_ok=True)
    json_path, md_path, png_path = (os.path.join(a.out, n) for n in ("ablation.json", "ablation.md", "figure1b.png"))

    def save() -> list:
        rows = [state["settings"][s.name] for s in settings if s.name in state["settings"]]
        rows += [state["settings"][name] for name in earlier]
        conditions.update(load_end=[round(x, 2) for x in os.getloadavg()], wall_seconds=round(time.time() - t0, 1),
                          cpu_seconds=round(_children_cpu() - cpu0, 1))
        write_json(json_path, dict(state, rows=rows, fixed_boxes=fixed))
        write_table(md_path, rows, config, state["runs"], fixed)
        if rows:
            plot(png_path, rows, f"{os.path.basename(a.datapath)}: {a.backbone}, {rows[0]['count']} test images",
                 fixed)
        return rows

    fixed = cub_baselines(a.datapath, a.size, a.crop)
    save()
    for k, s in enumerate(settings, 1):
        result = os.path.join(a.out, s.name, "result.json")
        done = os.path.isfile(result) and read_json(result, f"{s.name} is run again (its finished steps are kept)")
        print(f"[{k}/{len(settings)}] {s.name}" + (": finished earlier, kept" if done else ""), flush=True)
        if done:
            state["settings"][s.name] = done
            continue
        cam_times = runner.run(os.path.join(a.out, "cam", s.network), runner.cam_steps(s), s.name)
        seg_times = runner.run(os.path.join(a.out, s.name), runner.seg_steps(s), s.name)
        row = collect(a, s, cam_times, seg_times)
        write_json(os.path.join(a.out, s.name, "result.json"), row)
        state["settings"][s.name] = row
        print(f"    CAM GT-known {row['cam_gt_known']:.2f}   final GT-known {row['final_gt_known']:.2f}   "
              f"MaxBoxAccV2 {row['maxboxacc_v2']:.2f}   {row['seconds']:.0f} s", flush=True)
        save()
    rows = save()
    print(f"\n{open(md_path).read()}\nwrote {md_path}, {json_path} and {png_path} ({time.time() - t0:.0f} s)")
    return {"rows": rows, "out": a.out}


if __name__ == "__main__":
    # a terminated runner takes the running step with it (subprocess.run kills its child on the way out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_main(main)

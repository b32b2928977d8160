"""The training loop and its collaborators, in this process on a tiny model (seconds): what checkpoint.pth
records, the flags `cli.train_config` hands to `engine.fit`, resuming a run with no epoch left, the loss
read one step late (`log.LossLog`), bad files (`engine.BadFiles`) and the saves' finite check
(`train_state.Checkpoints`). The stage scripts' own runs are in test_resume.py and test_stages.py."""
import json
import os
from types import SimpleNamespace

import pytest
import torch

from utils.stages import cli
import utils.engine.loop as engine
from utils.engine.distributed import Dist
from utils.errors import Stopped, UserError
from utils.engine.log import LossLog, RunLog
from utils.engine.train_state import Checkpoints


class Images(torch.utils.data.Dataset):
    """`n` random 4 x 4 images of two classes with named samples; the indices in `bad` are unreadable."""

    def __init__(self, n: int, bad=()):
        self.samples = [SimpleNamespace(name=f"c{i % 2}/{i}.jpg", label=i % 2) for i in range(n)]
        self.bad = set(bad)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = key
        s = self.samples[index]
        if index in self.bad:
            return {"bad": s.name, "reason": f"{s.name}: unreadable"}
        g = torch.Generator().manual_seed(index * 7 + epoch)
        return {"image": torch.randn(3, 4, 4, generator=g), "label": s.label, "index": index}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())


def _parse(savepath, *argv):
    parser = cli.make_parser("test", train=True)
    parser.set_defaults(list="train.txt", epoch=2, batch_size=4, lr=0.1, backbone_lr=0.01)
    return cli.parse(parser, os.path.join(os.path.dirname(__file__), "train.py"),
                     ["--savepath", str(savepath), "--num_workers", "0", "--amp", "off", *map(str, argv)])


def _fit(args, dataset=None):
    return engine.fit(cli.train_config(args), Dist(), _model(), dataset or Images(18),
                      lambda m, b: torch.nn.functional.cross_entropy(m(b["image"]), b["label"]),
                      lambda m: [(list(m.parameters()), args.lr)])


def test_train_config_takes_each_flag_and_records_them_all(tmp_path):
    args = _parse(tmp_path, "--epoch", 3, "--batch_size", 6, "--momentum", 0.5, "--weight_decay", 0.25,
                  "--no-nesterov", "--channels_last", "--compile", "--no-sync_bn", "--seed", 9, "--resume",
                  "--save_every", 7, "--snapshot_every", 8, "--snapshot_from", 2, "--print_freq", 5, "--max_steps", 11,
                  "--on-bad-image", "skip", "--list", "other.txt")
    cfg = cli.train_config(args)
    assert (cfg.epochs, cfg.batch_size, cfg.momentum, cfg.weight_decay, cfg.nesterov) == (3, 6, 0.5, 0.25, False)
    assert (cfg.amp, cfg.channels_last, cfg.compile, cfg.sync_bn, cfg.seed) == ("off", True, True, False, 9)
    assert cfg.resume == os.path.join(str(tmp_path), "checkpoint.pth") and cfg.savepath == str(tmp_path)
    assert (cfg.save_every, cfg.snapshot_every, cfg.snapshot_from, cfg.print_freq, cfg.max_steps) == (7, 8, 2, 5, 11)
    assert (cfg.on_bad_image, cfg.list_name, cfg.num_workers) == ("skip", "other.txt", 0)
    assert cfg.flags == vars(args) and cfg.flags is not vars(args)


def test_the_checkpoint_holds_the_state_every_flag_and_the_list(tmp_path):
    args = _parse(tmp_path, "--print_freq", 1)
    assert _fit(args) == str(tmp_path / "model-2.pth")
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert list(state) == ["model", "optimizer", "scaler", "epoch", "batch", "step", "args", "list"]
    assert (state["epoch"], state["batch"], state["step"], state["scaler"]) == (2, 0, 10, None)
    assert state["args"] == vars(args)
    assert state["list"]["list"] == "train.txt" and state["list"]["images"] == 18
    saved = json.load(open(tmp_path / "args.json"))
    assert {k: v for k, v in saved.items() if k not in ("git", "command")} == json.loads(json.dumps(vars(args)))
    assert [json.loads(line)["step"] for line in open(tmp_path / "log.jsonl")] == list(range(1, 11))
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == ["checkpoint.pth", "model-1.pth",
                                                                             "model-2.pth"]


def test_a_finished_run_resumed_writes_its_last_snapshot_again(tmp_path):
    _fit(_parse(tmp_path))
    before = torch.load(tmp_path / "model-2.pth", weights_only=True)
    os.remove(tmp_path / "model-2.pth")  # as if killed between the last state and its snapshot
    assert _fit(_parse(tmp_path, "--resume")) == str(tmp_path / "model-2.pth")
    after = torch.load(tmp_path / "model-2.pth", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_state_past_the_last_epoch_is_refused_before_any_file_changes(tmp_path):
    _fit(_parse(tmp_path))
    log = (tmp_path / "log.jsonl").read_text()
    with pytest.raises(UserError, match="stopped at epoch 3, batch 0: past --epoch 1"):
        _fit(_parse(tmp_path, "--resume", "--epoch", 1))
    assert (tmp_path / "log.jsonl").read_text() == log and json.load(open(tmp_path / "args.json"))["epoch"] == 2


class _Run:
    enabled = True

    def __init__(self):
        self.records = []

    def scalars(self, step, **values):
        self.records.append((step, values["loss"]))


def test_a_marked_loss_is_read_at_the_next_flush_only():
    run, reads = _Run(), []
    losses = LossLog(run, 1, "out/checkpoint.pth")
    losses.epoch(iter([]))
    losses.count(4)
    losses.mark(3, lambda: reads.append(3) or torch.tensor(0.5), 0.1, 1)
    assert reads == [] and run.records == []
    losses.flush()
    losses.flush()  # nothing marked: nothing read
    assert reads == [3] and run.records == [(3, 0.5)]


def test_a_non_finite_logged_loss_names_the_step_and_the_last_good_state():
    losses = LossLog(_Run(), 1, "out/checkpoint.pth")
    losses.mark(7, lambda: torch.tensor(float("nan")), 0.1, 1)
    with pytest.raises(UserError, match=r"loss is nan at step 7: stopped; the last good state is out/checkpoint.pth"):
        losses.flush()


def test_bad_files_are_named_listed_at_a_flush_and_a_lone_image_is_dropped(tmp_path, capsys):
    samples = Images(4).samples
    bad = engine.BadFiles(str(tmp_path / "skipped.txt"), "skip", Dist(), samples)
    batch = {"bad": [("c1/1.jpg", "c1/1.jpg: unreadable"), ("c0/2.jpg", "c0/2.jpg: unreadable")],
             "image": torch.zeros(1, 3, 4, 4), "index": torch.tensor([3])}
    assert not bad.keep(batch)
    assert bad.keep({"bad": [], "image": torch.zeros(2, 3, 4, 4), "index": torch.tensor([0, 1])})
    assert not (tmp_path / "skipped.txt").exists() and bad.skipped == 0  # listed at the next save
    bad.flush()
    assert (tmp_path / "skipped.txt").read_text() == "c1/1.jpg\tc1/1.jpg: unreadable\nc0/2.jpg\tc0/2.jpg: unreadable\n"
    bad.report()
    out = capsys.readouterr().out
    assert "skipped: c1/1.jpg: unreadable\n" in out
    assert "dropped with its batch (the rest were bad files): c1/3.jpg\n" in out
    assert "2 bad files were skipped" in out and "1 good images were dropped" in out
    with pytest.raises(UserError, match="under torchrun"):
        engine.BadFiles(str(tmp_path / "s.txt"), "skip", Dist(world=2), samples).keep(batch)
    with pytest.raises(UserError, match="c1/1.jpg: unreadable"):
        engine.BadFiles(str(tmp_path / "s.txt"), "stop", Dist(), samples).keep(batch)


def test_nothing_non_finite_is_saved_and_a_stop_says_what_is_kept(tmp_path):
    model = _model()
    optimizer = engine.sgd([(list(model.parameters()), 0.1)], 0.9, 0.0, True)
    losses, listed = LossLog(RunLog(str(tmp_path), {}, enabled=False), 1, ""), []
    saves = Checkpoints(str(tmp_path), Dist(), model, optimizer, None, {"args": {}, "list": None}, losses,
                        lambda: listed.append(True), saved_at=None)
    assert str(saves.stopped(Stopped(15), 3)) == ("stopped by SIGTERM at step 3: nothing was saved yet (--save_every N "
                                                  "keeps the state every N steps): run it again")
    saves.watch(torch.tensor(1.0))
    saves.state(0, 2, 2)
    assert listed == [True] and torch.load(tmp_path / "checkpoint.pth", weights_only=True)["step"] == 2
    assert str(saves.stopped(Stopped(15), 3)).endswith(f"(from {tmp_path / 'checkpoint.pth'}, the state of step 2)")
    saves.watch(torch.tensor(float("inf")))
    with pytest.raises(UserError, match="non-finite loss or weights before step 3"):
        saves.snapshot(1, 3)
    assert not (tmp_path / "model-1.pth").exists()
    saves.finite.fill_(True)
    with torch.no_grad():
        model[1].running_var[0] = float("inf")  # BatchNorm's statistics count too
    with pytest.raises(UserError, match="non-finite"):
        saves.state(0, 3, 3)
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["step"] == 2


def test_resume_refuses_optimiser_values_its_state_would_override(tmp_path):
    _fit(_parse(tmp_path, "--max_steps", 3))  # stopped at epoch 1, batch 3, lr 0.1, weight decay 1e-4
    with pytest.raises(UserError, match=r"trained with --lr 0.1, --weight_decay 0.0001; this run has --lr 0.5, "
                                        r"--weight_decay 0.1\. Its optimiser state would go on"):
        _fit(_parse(tmp_path, "--resume", "--lr", 0.5, "--weight_decay", 0.1))
    for flag, value in (("--momentum", 0.5), ("--no-nesterov", None)):
        with pytest.raises(UserError, match=f"{flag.replace('no-', '')} "):
            _fit(_parse(tmp_path, "--resume", *[x for x in (flag, value) if x is not None]))
    assert json.load(open(tmp_path / "args.json"))["lr"] == 0.1  # nothing recorded that was not used
    assert _fit(_parse(tmp_path, "--resume", "--amp", "off")) == str(tmp_path / "model-2.pth")  # the same: goes on


def test_resume_mid_epoch_refuses_another_batch_size_or_seed_and_takes_them_at_an_epoch_end(tmp_path):
    _fit(_parse(tmp_path, "--max_steps", 3))  # 18 images in batches of 4: stopped mid-epoch, after image 12
    for flags in (("--batch_size", 2), ("--seed", 3)):
        with pytest.raises(UserError, match=rf"stopped mid-epoch \(epoch 1, batch 3\) with {flags[0]} "
                                            rf"\d; this run has {flags[0]} {flags[1]}"):
            _fit(_parse(tmp_path, "--resume", *flags))
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["list"]["batch_size"], state["list"]["seed"]) == (4, 0)
    _fit(_parse(tmp_path, "--resume", "--max_steps", 5))  # the epoch's end: batch 0 of epoch 2
    assert _fit(_parse(tmp_path, "--resume", "--batch_size", 2, "--seed", 3)) == str(tmp_path / "model-2.pth")


def test_a_checkpoint_from_before_the_batch_size_was_recorded_still_resumes(tmp_path):
    _fit(_parse(tmp_path, "--max_steps", 3))
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    for k in ("batch_size", "seed"):
        del state["list"][k]
    torch.save(state, tmp_path / "checkpoint.pth")
    assert _fit(_parse(tmp_path, "--resume")) == str(tmp_path / "model-2.pth")


def _scaled_step(model, optimizer, scaler):
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(model(torch.randn(4, 3, 4, 4)).square().mean()).backward()
    scaler.step(optimizer)
    scaler.update()


def test_sgd_is_fused_on_cuda_and_takes_the_scalers_flag_on_the_device(monkeypatch):
    """On CUDA (stubbed: torch's fused SGD runs on the CPU too) the step is fused, and fp16's GradScaler then
    steps without reading its found-inf flag on the host; the CPU keeps torch's default step."""
    model = _model()
    assert [g["fused"] for g in engine.sgd([(list(model.parameters()), 0.1)], 0.9, 0.0, True).param_groups] == [None]
    optimizer = engine.sgd([(list(model.parameters()), 0.1)], 0.9, 1e-4, True, torch.device("cuda"))
    assert [g["fused"] for g in optimizer.param_groups] == [True]

    def no_host_read(self):
        raise AssertionError("a host read (.item()) in the scaled step")

    monkeypatch.setattr(torch.Tensor, "item", no_host_read)
    before = [p.detach().clone() for p in model.parameters()]
    _scaled_step(model, optimizer, torch.amp.GradScaler("cpu"))
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # it did step


def test_a_resumed_state_keeps_this_runs_sgd_kernels(tmp_path):
    """A state saved by an unfused SGD (a CPU run) resumes under CUDA's fused one (stubbed device): the groups
    stay fused, so the scaler's fused step works (an unfused group is handed the scaler's flag and fails)."""
    from utils.engine.train_state import resume
    model = _model()
    saved = engine.sgd([(list(model.parameters()), 0.1)], 0.9, 0.0, True)
    _scaled_step(model, saved, torch.amp.GradScaler("cpu", enabled=False))
    state = {"model": model.state_dict(), "optimizer": saved.state_dict(), "epoch": 0, "batch": 1, "step": 1}
    optimizer = engine.sgd([(list(model.parameters()), 0.1)], 0.9, 0.0, True, torch.device("cuda"))
    resume(state, "checkpoint.pth", model, optimizer, None, {}, {"sha1": None}, main=False)
    assert [g["fused"] for g in optimizer.param_groups] == [True]
    _scaled_step(model, optimizer, torch.amp.GradScaler("cpu"))


def test_snapshots_hold_cpu_tensors_and_the_state_dicts_metadata(tmp_path):
    """What a bare torch.load of a model-N.pth gives on a machine without CUDA (the GPU suite checks a snapshot of
    a CUDA run): CPU tensors, and the per-module versions that load_state_dict reads."""
    model = _model()
    losses = LossLog(RunLog(str(tmp_path), {}, enabled=False), 1, "")
    saves = Checkpoints(str(tmp_path), Dist(), model, engine.sgd([(list(model.parameters()), 0.1)], 0.9, 0.0, True),
                        None, {"args": {}, "list": None}, losses, lambda: None, saved_at=None)
    state = torch.load(saves.snapshot(1, 1), weights_only=True)
    assert state._metadata == model.state_dict()._metadata and state._metadata["1"]["version"] == 2  # BatchNorm's
    assert all(t.device.type == "cpu" for t in state.values())

"""The CUDA branches, through CPU proxies: the device a process runs on, the stream its host copies wait on, the
precision `--amp` picks, and a training loop whose cost per step does not grow with the list. The GPU suite
(tests/test_cuda.py, `-m cuda`) runs the same paths on a real GPU."""
import numpy as np
import pytest
import torch

import utils.engine.distributed as distributed
import utils.engine.loop as engine
from utils.errors import UserError


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two GPUs, as far as device selection asks; set_device calls recorded."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_one_process_on_a_second_gpu_makes_it_the_current_device(two_gpus):
    d = distributed.setup("cuda:1")
    assert d.device == torch.device("cuda", 1) and not d.enabled
    assert two_gpus == [torch.device("cuda", 1)]  # else events and streams would belong to cuda:0


def test_plain_cuda_is_the_first_gpu_made_current(two_gpus):
    assert distributed.setup("cuda").device == torch.device("cuda", 0) and two_gpus == [torch.device("cuda", 0)]


def test_a_gpu_index_beyond_the_machine_is_an_error(two_gpus):
    with pytest.raises(UserError, match="2 CUDA devices"):
        distributed.setup("cuda:2")


@pytest.mark.parametrize("arg", ["cuda:0", "cuda:1"])
def test_an_explicit_gpu_under_torchrun_is_refused(two_gpus, monkeypatch, arg):
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):  # what torchrun sets
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match="under torchrun .*--device cuda"):
        distributed.setup(arg)
    assert not two_gpus


def test_host_copy_waits_on_the_stream_of_the_results_device(monkeypatch):
    recorded = []

    class Event:
        def record(self, stream=None):
            recorded.append(stream)

    class OnSecondGpu:  # a result on cuda:1, as far as HostCopy asks
        is_cuda, device = True, torch.device("cuda", 1)

        def to(self, *args, **kwargs):
            return self

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream of", device))
    engine.HostCopy(OnSecondGpu())
    assert recorded == [("stream of", torch.device("cuda", 1))]


@pytest.mark.parametrize("capability, want", [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
                                              ((7, 5), torch.float16), ((7, 0), torch.float16)])
def test_amp_auto_takes_bf16_only_where_the_gpu_has_it(monkeypatch, capability, want):
    # V100 (7.0) and T4 (7.5) only emulate bf16; asked of the run's own GPU, cuda:1 here
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: capability if torch.device(device) == torch.device("cuda", 1) else (9, 0))
    assert engine.amp_dtype("auto", torch.device("cuda", 1)) == want
    assert engine.amp_dtype("auto", torch.device("cpu")) is None


def test_amp_bf16_on_a_gpu_that_only_emulates_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(UserError, match=r"--amp bf16: the GPU cuda:0 \(compute capability 7.5, below 8.0\) has no "
                                        r"bf16 in hardware.*--amp fp16"):
        engine.amp_dtype("bf16", torch.device("cuda", 0))
    assert engine.amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert engine.amp_dtype("bf16", torch.device("cuda", 0)) == torch.bfloat16


@pytest.fixture
def tf32_flags():
    """TF32 allowed, as CUDA's defaults allow it in convolutions; the flags as they were afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_amp_off_on_cuda_is_float32_without_tf32(tf32_flags):
    assert engine.amp_dtype("off", torch.device("cpu")) is None and torch.backends.cudnn.allow_tf32
    assert engine.amp_dtype("off", torch.device("cuda", 0)) is None
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


# ------------------------------------------------------------------------------ cost per step and list size
class Keys(torch.utils.data.Dataset):
    """A data set of `n` tiny images that are all the same: only the keys' bookkeeping costs anything."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        epoch, index = key
        return {"image": torch.ones(3, 4, 4), "label": index % 2, "index": index}


def _tiny_model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())


def _config(savepath) -> engine.TrainConfig:
    return engine.TrainConfig(epochs=1, batch_size=4, savepath=str(savepath), list_name="train.txt", momentum=0.9,
                              weight_decay=1e-4, nesterov=True, amp="off", channels_last=False, compile=False,
                              sync_bn=False, seed=0, resume=None, save_every=0, snapshot_every=0, snapshot_from=1,
                              print_freq=1, max_steps=6, on_bad_image="stop", num_workers=0)


def test_a_training_step_does_not_redo_the_epochs_permutation(tmp_path, monkeypatch):
    drawn = []
    rng = np.random.default_rng

    def counted(seed=None):
        drawn.append(seed)
        return rng(seed)

    monkeypatch.setattr(np.random, "default_rng", counted)
    model = _tiny_model()
    engine.fit(_config(tmp_path), distributed.Dist(), model, Keys(1_281_167),
               lambda m, b: torch.nn.functional.cross_entropy(m(b["image"]), b["label"]),
               lambda m: [(list(m.parameters()), 0.01)])
    assert drawn == [[0, 0]], f"the epoch's order was drawn {len(drawn)} times for 6 steps"


def test_the_sampler_counts_its_batches_without_drawing_them(monkeypatch):
    sampler = distributed.EpochBatchSampler(1_281_167, 128, distributed.Dist(rank=3, world=8), seed=1)
    monkeypatch.setattr(np.random, "default_rng", None)  # len() must not need it
    assert len(sampler) == -(-1_281_167 // 8 // 128) == 1252


def test_a_resumed_epoch_gives_the_rest_of_its_batches():
    sampler = distributed.EpochBatchSampler(37, 4, distributed.Dist(), seed=2)
    sampler.set_epoch(3)
    full = list(sampler)
    assert len(full) == len(sampler) == 9 and all(len(b) == 4 for b in full)  # 37 = 9 x 4 + a lone one, dropped
    assert sorted(i for b in full for _, i in b) == sorted(set(i for b in full for _, i in b))
    sampler.set_epoch(3, 5)
    assert list(sampler) == full[5:] and len(sampler) == 9


# ------------------------------------------------------------------------------------- CUDA out of memory
def test_out_of_memory_anywhere_is_one_line(monkeypatch, capsys):
    from utils.errors import run_main

    def main():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total)")

    monkeypatch.setattr("sys.argv", ["/somewhere/utils/bench.py"])
    with pytest.raises(SystemExit) as e:
        run_main(main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: CUDA out of memory in utils/bench.py: lower --batch_size, compute in half precision "
                          "(--amp auto, bf16 or fp16, not off) and keep channels-last (--channels_last")


@pytest.mark.parametrize("training", [True, False])
def test_out_of_memory_in_a_stage_names_its_batch_and_the_state_to_resume(monkeypatch, tmp_path, training):
    from argparse import Namespace
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.argv", ["/repo/cub200-cam/train.py" if training else "/repo/cub200-cam/test.py"])
    (tmp_path / "checkpoint.pth").write_bytes(b"a state")
    args = Namespace(device="cpu", batch_size=64, savepath=str(tmp_path), **({"resume": None} if training else {}))

    @distributed.entry
    def stage(args, d):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")

    with pytest.raises(UserError) as e:
        stage(args)
    where = "cub200-cam/train.py" if training else "cub200-cam/test.py"
    assert str(e.value).startswith(f"CUDA out of memory in {where} at --batch_size 64: lower --batch_size")
    assert (f"goes on from {tmp_path / 'checkpoint.pth'} with --resume" in str(e.value)) == training

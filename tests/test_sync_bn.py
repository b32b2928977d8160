"""Whole-batch BatchNorm on the CPU (gloo): two processes holding the interleaved halves of a batch get
BatchNorm2d's outputs, input gradients, running statistics and (summed) parameter gradients."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.engine.distributed import Dist, GlobalBatchNorm2d, sync_batchnorm


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 5, 4, generator=g) * 3 + 1
    w = torch.randn(6, 3, 5, 4, generator=g)  # loss = sum(y * w)
    return x, w


def _reference():
    x, w = _batch()
    x.requires_grad_(True)
    bn = torch.nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
        bn.bias.copy_(torch.tensor([-1.0, 0.0, 0.5]))
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    y = bn(x)
    (y * w).sum().backward()
    return state, y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


def _rank(rank, world, store_path, out):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        state, *_ = _reference()
        model = torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.3))
        model.load_state_dict({"0." + k: v for k, v in state.items()})
        sync_batchnorm(model, Dist(rank, world))
        assert isinstance(model[0], GlobalBatchNorm2d)
        x, w = _batch()
        x = x[rank::world].clone().requires_grad_(True)
        y = model(x)
        (y * w[rank::world]).sum().backward()
        torch.save({"y": y.detach(), "dx": x.grad, "dw": model[0].weight.grad, "db": model[0].bias.grad,
                    "rm": model[0].running_mean, "rv": model[0].running_var}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_batchnorm_over_the_whole_batch(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    _, y, dx, dw, db, rm, rv = _reference()
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for r, p in enumerate(parts):
        torch.testing.assert_close(p["y"], y[r::2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p["dx"], dx[r::2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p["rm"], rm)
        torch.testing.assert_close(p["rv"], rv)
    torch.testing.assert_close(parts[0]["dw"] + parts[1]["dw"], dw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts[0]["db"] + parts[1]["db"], db, rtol=1e-5, atol=1e-5)


def test_without_a_process_group_it_is_batchnorm():
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(4)
    model = sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(4)), Dist())
    model.load_state_dict({"0." + k: v for k, v in ref.state_dict().items()})
    x = torch.randn(3, 4, 2, 2)
    assert torch.equal(model(x), ref(x))
    assert set(model.state_dict()) == {"0." + k for k in ref.state_dict()}

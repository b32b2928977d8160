"""The mask stage's loader (utils.engine.ring): batches written in place into a ring of shared slots are the batches
of the plain loader, and a slot is never written while the main process may still read it."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT
from utils.engine import ring
from utils.data.images import ImageSet
from utils.data.lists import Sample
from utils.engine.distributed import Dist
from utils.engine.loop import inference_batches
from utils.data.transforms import mask_transform

SIZE = 32


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """13 images of varied sizes and 3 bad files (missing, empty, not an image) among them."""
    folder = tmp_path_factory.mktemp("ring")
    rng = np.random.default_rng(7)
    out = []
    for i in range(16):
        path = str(folder / f"{i}.png")
        if i == 3:
            path = str(folder / "missing.png")
        elif i == 8:
            open(path, "wb").close()
        elif i == 12:
            open(path, "wb").write(b"not an image at all")
        else:
            h, w = rng.integers(5, 90, 2)
            cv2.imwrite(path, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out.append(Sample(name=f"{i}.png", path=path, label=i % 5))
    return out


def _ring(samples, indices, batch_size, workers):
    return ring.ring_batches(samples, indices, batch_size, mask_transform(SIZE).into, (SIZE, SIZE, 3), workers, Dist())


@pytest.mark.parametrize("workers,batch_size", [(0, 4), (2, 3), (2, 16)])
def test_ring_batches_are_the_plain_loaders(samples, workers, batch_size):
    indices = [15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]  # not in order, not all, a short last batch
    plain = inference_batches(ImageSet(samples, mask_transform(SIZE)), indices, batch_size, workers, Dist())
    got = _ring(samples, indices, batch_size, workers)
    pairs = 0
    for number, (a, b) in enumerate(zip(plain, got)):
        assert b["batch"] == number and a["bad"] == b["bad"] and ("image" in a) == ("image" in b)
        if "image" in a:
            for key in ("image", "label", "index", "size"):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        pairs += 1
    assert pairs == len(got) == -(-len(indices) // batch_size)
    with pytest.raises(RuntimeError, match="one pass"):
        iter(got).__next__()
    assert sum(len(b["bad"]) for b in _ring(samples, indices, batch_size, workers)) == 3


@pytest.mark.parametrize("slots", ["enough", 2])
def test_a_held_batch_keeps_its_images_while_the_workers_run_ahead(samples, slots, monkeypatch):
    """A slow loop body over many more batches than slots: each batch's images are checked at the end of
    its body, after the workers have had time to fill every free slot. A worker that wrote a held slot would
    change them. With 2 slots (fewer than the loader's batches on their way) the workers must wait for
    each release."""
    if slots == 2:
        monkeypatch.setattr(ring, "slots_for", lambda workers: 2)
    good = [i for i, s in enumerate(samples) if i not in (3, 8, 12)]
    indices = good * 5
    transform = mask_transform(SIZE)
    want = {i: transform(cv2.cvtColor(cv2.imread(samples[i].path), cv2.COLOR_BGR2RGB))[0] for i in good}
    batches = _ring(samples, indices, 2, workers=2)
    assert len(batches.data.ring) == ring.slots_for(2) < len(batches)
    seen = 0
    for batch in batches:
        time.sleep(0.02)
        for image, index in zip(batch["image"], batch["index"].tolist()):
            assert torch.equal(image, want[index])
            seen += 1
    assert seen == len(indices)


def test_a_slot_is_claimed_only_once_its_last_batch_is_released():
    r = ring.BatchRing(2, 1, (2,))
    r.claim(0), r.claim(1)                   # a fresh ring: the first `slots` batches go straight in
    done = threading.Event()
    worker = threading.Thread(target=lambda: (r.claim(2), done.set()))
    worker.start()
    time.sleep(0.1)
    assert not done.is_set()                 # batch 2 takes batch 0's slot: it waits for its release
    r.release(1)
    time.sleep(0.05)
    assert not done.is_set()
    r.release(0)
    worker.join(5)
    assert done.is_set()
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.claim(3)                           # its slot is free, but the pass is over: a closed ring hands out none


def test_a_pass_cut_short_stops_its_workers(samples, monkeypatch):
    """Workers waiting for a slot when the loop stops early give up (the ring is closed) and exit: the loader
    need not wait for them, then kill them (after 30 s here, instead of DataLoader's 5)."""
    monkeypatch.setattr(ring, "slots_for", lambda workers: 2)
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 30.0)
    batches = _ring(samples, list(range(16)) * 8, 1, workers=2)
    t0 = time.monotonic()
    for k, _ in enumerate(batches):
        if k == 2:
            break  # the generator is closed: the ring too
    del batches
    assert time.monotonic() - t0 < 15


def test_workers_started_by_forkserver(samples, tmp_path):
    """Python 3.14 starts processes by forkserver on Linux (macOS by spawn): the ring reaches such workers by
    pickling (as under spawn), and their parent is the fork server, not the main process."""
    method = "forkserver"
    paths = [s.path for s in samples]
    code = textwrap.dedent(f"""
        import multiprocessing
        from utils.engine import ring
        from utils.data.lists import Sample
        from utils.engine.distributed import Dist
        from utils.data.transforms import mask_transform
        if __name__ == "__main__":
            multiprocessing.set_start_method("{method}")
            samples = [Sample(name=str(i), path=p, label=0) for i, p in enumerate({paths!r})]
            got = ring.ring_batches(samples, list(range(16)) * 2, 3, mask_transform(8).into, (8, 8, 3), 1, Dist())
            n = 0
            for batch in got:
                n += len(batch["index"]) if "image" in batch else 0
            print(n)
    """)
    script = tmp_path / "run.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(2 * 13)


def test_too_little_shared_memory_is_one_clear_error(samples, monkeypatch):
    from utils.errors import UserError
    monkeypatch.setattr(ring, "shared_memory_free", lambda: 10 * 2 ** 20)   # a 64 MB container, mostly used
    with pytest.raises(UserError, match=r"need 480 MB of shared memory \(10 batches of 64\), /dev/shm has 10 MB.*"
                                        r"--batch_size or --num_workers"):
        ring.ring_batches(samples, list(range(16)) * 4, 64, mask_transform(256).into, (256, 256, 3), 2, Dist())
    assert ring.shared_memory_free() is None or ring.shared_memory_free() > 0   # this machine's, read for real


def test_the_shared_memory_check_counts_every_rank_on_the_node(samples, monkeypatch):
    """torchrun's ranks on one node each check the same free space before any allocates: the need is all of
    their rings (LOCAL_WORLD_SIZE of them), here 2 x 480 MB against 600 MB free."""
    from utils.errors import UserError
    monkeypatch.setattr(ring, "shared_memory_free", lambda: 600 * 2 ** 20)
    ring.check_shared_memory(10, 64, (256, 256, 3))  # one process: its 480 MB fit
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"need 960 MB of shared memory \(2 processes on this node, 10 batches of 64 "
                                        r"each\), /dev/shm has 600 MB"):
        ring.ring_batches(samples, list(range(16)) * 4, 64, mask_transform(256).into, (256, 256, 3), 2, Dist())


def test_worker_defaults_are_the_nodes_cores_shared_by_its_ranks(monkeypatch):
    from utils.stages import cli
    monkeypatch.setattr(os, "cpu_count", lambda: 96)
    for local, loader, post in [("1", 8, 48), ("8", 8, 6), ("16", 6, 3)]:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        p = cli.make_parser("test", train=False)
        cli.add_mask_args(p)
        assert (p.get_default("num_workers"), p.get_default("post_workers")) == (loader, post), local

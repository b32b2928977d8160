"""The machinery beside the method, each part behind one call: the training loop (loop.py: `fit`, and the
batched inference of every evaluation), resume state (train_state.py), checkpoints (checkpoint.py), torchrun
(distributed.py), the shared-memory ring of batches (ring.py) and post-processing pools (workers.py), the fast
pseudo-mask path (masks.py, bit for bit utils/method/pseudo_mask.py), logs (log.py), atomic output files and
folder locks (outputs.py, lock.py). None of it changes a result: tests hold each part to the plain version."""

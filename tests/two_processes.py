"""Runs a test body on two gloo processes (CPU DistributedDataParallel) and brings back what each
rank returned; the loss every DDP test uses. Shared by the engine's and the detector's DDP tests."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def weighted_loss(out):
    """A loss whose gradient differs per element (a plain sum would hide a permuted gradient)."""
    w = torch.linspace(-1, 1, out[0].numel()).view_as(out[0])
    return (out * w).flatten(1).sum(1).mean()


def _rank_main(rank, world_size, init_file, out_dir, body):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world_size)
    torch.set_num_threads(1)
    try:
        result = body(rank, world_size)
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f'rank{rank}.pt'))


def on_two_processes(body, tmp_path) -> list:
    """``body(rank, world_size)`` (a module-level function) in two spawned processes joined in one
    gloo group; its return value of each rank, in rank order."""
    mp.spawn(_rank_main, args=(2, str(tmp_path / 'init'), str(tmp_path), body), nprocs=2,
             join=True)
    return [torch.load(tmp_path / f'rank{rank}.pt') for rank in range(2)]

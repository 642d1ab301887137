"""Peer for bench_allreduce.c: torch.distributed all_reduce (sum, float32) with the gloo backend on loopback, one
process per rank, same sizes and iteration counts. Prints `result impl=gloo world=N bytes=B ms=T algbw_GBps=G`.
Usage: python3 bench/bench_allreduce.py [--world N] [--sizes-mb 1,16,128] [--iters K]"""
import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def iters_for(nbytes, iters):
    if iters > 0:
        return iters
    return 50 if nbytes <= (4 << 20) else 10 if nbytes <= (32 << 20) else 4


def run(rank, world, port, sizes, iters):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for nbytes in sizes:
        n = nbytes // 4
        buf = (torch.arange(n, dtype=torch.float32) * 7 + rank).remainder_(13).mul_(0.01)
        k = iters_for(nbytes, iters)
        dist.all_reduce(buf)
        dist.all_reduce(buf)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(k):
            dist.all_reduce(buf)
        t1 = time.perf_counter()
        if rank == 0:
            per = (t1 - t0) / k
            print(f"result impl=gloo world={world} bytes={n * 4} iters={k} ms={per * 1e3:.3f} "
                  f"algbw_GBps={n * 4 / per / 1e9:.3f}", flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--sizes-mb", default="1,16,128")
    ap.add_argument("--iters", type=int, default=0)
    a = ap.parse_args()
    sizes = [int(float(s) * 1048576) // 4 * 4 for s in a.sizes_mb.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(run, args=(a.world, port, sizes, a.iters), nprocs=a.world, join=True)


if __name__ == "__main__":
    main()

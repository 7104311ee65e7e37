"""PyTorch-CPU reference for `make bench`: the same MLP, batch, optimizer
and thread count as fedtune's training benchmark, and the same matrix
products as its Sgemm benchmark. Prints one JSON object.

usage: torch_ref.py THREADS SECONDS [train|gemm]...
"""
import json
import sys
import time

import torch


def blas_library():
    """The BLAS shared object this process loaded (after a product)."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "blas" in path or "mkl" in path:
                libs.add(path)
    return sorted(libs)


def train_rate(batch, seconds):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    n = 8192
    x = torch.rand(n, 784)
    y = torch.randint(0, 10, (n,))

    def step(i):
        lo = (i * batch) % (n - batch)
        opt.zero_grad(set_to_none=False)
        loss = lossf(model(x[lo:lo + batch]), y[lo:lo + batch])
        loss.backward()
        opt.step()

    for i in range(20):
        step(i)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(steps)
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def gemm_rate(m, n, k, seconds):
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        torch.mm(a, b)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
    return 2.0 * m * n * k * reps / (time.perf_counter() - start) / 1e9


def main():
    threads, seconds = int(sys.argv[1]), float(sys.argv[2])
    what = sys.argv[3:] or ["train", "gemm"]
    torch.set_num_threads(threads)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if "train" in what:
        out["train"] = {str(b): train_rate(b, seconds) for b in (64, 256)}
    if "gemm" in what:
        out["gemm"] = {f"{m}x{n}x{k}": gemm_rate(m, n, k, seconds) for (m, n, k) in ((64, 256, 784), (256, 1024, 256), (512, 512, 512), (512, 1536, 576))}
    out["blas"] = blas_library()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Reference external trainer for `fedtune worker --trainer exec`.

The worker runs this in a fresh directory holding task.json (FEDTUNE_TASK
points at it), base.safetensors and the local data (data_x.npy, data_y.npy).
It fine-tunes the base MLP (fc1.weight [out, in], fc1.bias, fc2.weight, ...;
ReLU between layers, softmax cross-entropy) with minibatch SGD + momentum,
then writes out.safetensors (full weights, same names and shapes) and
metrics.json ({"samples": n, "loss": mean training loss}). In a LoRA job
(task.json has "lora": {"rank", "alpha"} and "adapter": adapter.safetensors,
PEFT names fc<i>.lora_A.weight [r, in] / fc<i>.lora_B.weight [out, r]) it
trains the adapters only, every layer using W + (alpha/rank)·B·A with W and b
frozen, and writes the trained adapters to out.safetensors.

It trains with PyTorch when `import torch` works, and with plain NumPy
otherwise (what CI here runs). A lab replaces this file with its own stack:
only the files above are the contract.
"""
import json
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {e['dtype']}, this script reads F32")
        a, b = e["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(e["shape"]).copy()
    return out


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        raw = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)
    os.replace(path + ".tmp", path)


def layers(params):
    n = 1
    while f"fc{n}.weight" in params:
        n += 1
    return n - 1


def steps(n, recipe):
    bs = recipe["batch_size"]
    per_epoch = n // bs
    total = max(recipe["epochs"], 1) * per_epoch
    if recipe["steps"]:
        total = min(total, recipe["steps"])
    return bs, per_epoch, total


def train_numpy(params, x, y, recipe, seed, lora=None, adapters=None):
    """Minibatch SGD with momentum on the whole model, or with lora (rank,
    alpha) on the adapters only: every layer then uses W + (alpha/rank)·B·A
    with W and b frozen. Returns the trained tensors (the model's, or the
    adapters), the mean loss and the number of examples."""
    rng = np.random.default_rng(seed)
    L = layers(params)
    trainable = adapters if lora else params
    scale = lora["alpha"] / lora["rank"] if lora else 0.0
    vel = {k: np.zeros_like(v) for k, v in trainable.items()}
    bs, per_epoch, total = steps(len(x), recipe)
    lr, mom = recipe["lr"], recipe["momentum"]
    losses, order = [], None
    for step in range(total):
        if step % per_epoch == 0:
            order = rng.permutation(len(x))
        idx = order[(step % per_epoch) * bs:(step % per_epoch + 1) * bs]
        xb, yb = x[idx], y[idx]
        ws = {}
        for i in range(1, L + 1):
            w = params[f"fc{i}.weight"]
            if lora:
                w = w + scale * adapters[f"fc{i}.lora_B.weight"] @ adapters[f"fc{i}.lora_A.weight"]
            ws[i] = w
        acts = [xb]
        for i in range(1, L + 1):
            z = acts[-1] @ ws[i].T + params[f"fc{i}.bias"]
            acts.append(np.maximum(z, 0) if i < L else z)
        logits = acts[-1] - acts[-1].max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        losses.append(float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).mean()))
        g = p
        g[np.arange(len(yb)), yb] -= 1
        g /= len(yb)
        for i in range(L, 0, -1):
            gw, gb = g.T @ acts[i - 1], g.sum(axis=0)
            if i > 1:
                g = (g @ ws[i]) * (acts[i - 1] > 0)
            if lora:
                a, b = adapters[f"fc{i}.lora_A.weight"], adapters[f"fc{i}.lora_B.weight"]
                grads = ((f"fc{i}.lora_A.weight", scale * b.T @ gw), (f"fc{i}.lora_B.weight", scale * gw @ a.T))
            else:
                grads = ((f"fc{i}.weight", gw), (f"fc{i}.bias", gb))
            for k, grad in grads:
                vel[k] = mom * vel[k] + grad
                trainable[k] -= lr * vel[k]
    return trainable, (float(np.mean(losses)) if losses else float("nan")), len(x)


def train_torch(torch, params, x, y, recipe, seed, lora=None, adapters=None):
    torch.manual_seed(seed)
    L = layers(params)
    ps = {k: torch.tensor(v, requires_grad=not lora) for k, v in params.items()}
    ads = {k: torch.tensor(v, requires_grad=True) for k, v in (adapters or {}).items()}
    scale = lora["alpha"] / lora["rank"] if lora else 0.0
    trainable = ads if lora else ps
    opt = torch.optim.SGD(trainable.values(), lr=recipe["lr"], momentum=recipe["momentum"])
    xt, yt = torch.tensor(x), torch.tensor(y.astype(np.int64))
    bs, per_epoch, total = steps(len(x), recipe)
    g = torch.Generator().manual_seed(seed)
    losses, order = [], None
    for step in range(total):
        if step % per_epoch == 0:
            order = torch.randperm(len(x), generator=g)
        idx = order[(step % per_epoch) * bs:(step % per_epoch + 1) * bs]
        h = xt[idx]
        for i in range(1, L + 1):
            w = ps[f"fc{i}.weight"]
            if lora:
                w = w + scale * ads[f"fc{i}.lora_B.weight"] @ ads[f"fc{i}.lora_A.weight"]
            h = h @ w.T + ps[f"fc{i}.bias"]
            if i < L:
                h = torch.relu(h)
        loss = torch.nn.functional.cross_entropy(h, yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {k: v.detach().numpy() for k, v in trainable.items()}, float(np.mean(losses)), len(x)


def main():
    task_path = os.environ.get("FEDTUNE_TASK", "task.json")
    with open(task_path) as f:
        task = json.load(f)
    os.chdir(os.path.dirname(os.path.abspath(task_path)))
    if not task.get("data_x"):
        sys.exit(f"this worker holds no local data for data set {task['dataset']!r}")
    params = read_safetensors(task["base"])
    lora = task.get("lora")
    adapters = read_safetensors(task["adapter"]) if lora else None
    x = np.load(task["data_x"]).astype(np.float32)
    y = np.load(task["data_y"]).astype(np.int64)
    recipe = task["train"]
    if recipe["batch_size"] <= 0 or len(x) < recipe["batch_size"]:
        sys.exit(f"{len(x)} local examples, batch size {recipe['batch_size']}")
    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    if torch is not None and not os.environ.get("FEDTUNE_TRAIN_NUMPY"):
        params, loss, samples = train_torch(torch, params, x, y, recipe, task["seed"], lora, adapters)
        engine = "torch"
    else:
        params, loss, samples = train_numpy(params, x, y, recipe, task["seed"], lora, adapters)
        engine = "numpy"
    write_safetensors(task["output"], params)
    with open(task["metrics"], "w") as f:
        json.dump({"samples": samples, "loss": loss}, f)
    print(f"trained job {task['job']} round {task['round']} with {engine}: {samples} samples, loss {loss:.4f}")


if __name__ == "__main__":
    main()

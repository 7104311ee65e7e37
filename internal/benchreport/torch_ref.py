"""PyTorch-CPU reference for `make bench`: the same MLP, batch, optimizer
and thread count as fedtune's training benchmark, and the same matrix
products as its Sgemm benchmark. Prints one JSON object.

usage: torch_ref.py THREADS SECONDS [train|gemm|llm]...

llm: the regional-llm example's Llama (model/testdata/llama_ref.py's
Model, float32) trained with AdamW on batches of 16 sequences of 128
tokens, every weight and with rank-8 LoRA on every projection.
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "model", "testdata"))
import llama_ref  # noqa: E402

LLM = {"model_type": "llama", "vocab_size": 2048, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
       "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True}


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


def llm_rate(seconds, lora):
    torch.manual_seed(1)
    c = LLM
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    p = {"model.embed_tokens.weight": torch.randn(v, h) * 0.02, "model.norm.weight": torch.ones(h)}
    mods = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    adapters = {}
    for i in range(c["num_hidden_layers"]):
        pre = "model.layers.%d." % i
        p[pre + "input_layernorm.weight"] = torch.ones(h)
        p[pre + "post_attention_layernorm.weight"] = torch.ones(h)
        for m, shape in mods.items():
            p[pre + m + ".weight"] = torch.randn(*shape) * 0.02
            if lora:
                adapters[pre + m] = (torch.randn(8, shape[1]) * 0.02, torch.zeros(shape[0], 8), 2.0)
    train = [t for a in adapters.values() for t in a[:2]] if lora else list(p.values())
    for t in train:
        t.requires_grad_(True)
    model = llama_ref.Model(c, p, adapters)
    opt = torch.optim.AdamW(train, lr=1e-3)
    batch, seq = 16, 128
    ids = torch.randint(0, v, (4 * batch, seq))

    def step(i):
        lo = (i % 4) * batch
        opt.zero_grad(set_to_none=False)
        model.loss(ids[lo:lo + batch]).backward()
        opt.step()

    for i in range(3):
        step(i)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(steps)
        steps += 1
    return steps * batch * seq / (time.perf_counter() - start)


def main():
    threads, seconds = int(sys.argv[1]), float(sys.argv[2])
    what = sys.argv[3:] or ["train", "gemm"]
    torch.set_num_threads(threads)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if "train" in what:
        out["train"] = {str(b): train_rate(b, seconds) for b in (64, 256)}
    if "gemm" in what:
        out["gemm"] = {f"{m}x{n}x{k}": gemm_rate(m, n, k, seconds) for (m, n, k) in ((64, 256, 784), (256, 1024, 256), (512, 512, 512), (512, 1536, 576))}
    if "llm" in what:
        out["llm"] = {"full": llm_rate(seconds, False), "lora": llm_rate(seconds, True)}
    out["blas"] = blas_library()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

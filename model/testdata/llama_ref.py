#!/usr/bin/env python3
"""An independent Llama reference in plain PyTorch, for fedtune's tests.

It follows Hugging Face transformers' LlamaForCausalLM (and Qwen2's q/k/v
biases, and PEFT's LoRA layers) written out from their definitions (the
command computes in float64; make bench imports Model for float32): RMSNorm, rotary embedding (rotate-half, rope_theta), causal
grouped-query attention (repeat_kv), SwiGLU MLP, tied or untied LM head,
next-token cross-entropy with labels = input ids. transformers itself is
not packaged in Debian; this script needs only torch and numpy.

  llama_ref.py --dir D --tokens ids.npy [--adapter A] [--sgd-lr LR --out F]

prints {"loss": L} and, with --sgd-lr, writes the parameters after one
plain SGD step of the loss to F (safetensors, F32; with --adapter, the
adapter's tensors).
"""
import argparse, json, math, os, struct, sys

import numpy as np
import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        raw = data[lo:hi]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit("unsupported dtype %s" % dt)
        out[name] = torch.tensor(a.astype(np.float64).reshape(info["shape"]))
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        b = tensors[name].detach().to(torch.float32).numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_checkpoint(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
        out = {}
        for f in files:
            out.update(read_safetensors(os.path.join(d, f)))
        return out
    return read_safetensors(os.path.join(d, "model.safetensors"))


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Model:
    def __init__(self, cfg, p, lora=None):
        self.c, self.p = cfg, p
        self.lora = lora or {}  # module prefix -> (A, B, scale)

    def linear(self, x, prefix):
        y = x @ self.p[prefix + ".weight"].T
        if prefix + ".bias" in self.p:
            y = y + self.p[prefix + ".bias"]
        if prefix in self.lora:
            a, b, s = self.lora[prefix]
            y = y + (x @ a.T) @ b.T * s
        return y

    def loss(self, ids):
        c = self.c
        B, T = ids.shape
        H, KV = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
        hd = c.get("head_dim") or c["hidden_size"] // H
        eps, theta = c["rms_norm_eps"], c.get("rope_theta", 10000.0)
        x = self.p["model.embed_tokens.weight"][ids]
        dt = x.dtype
        inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=dt) / hd))
        ang = torch.arange(T, dtype=dt)[:, None] * inv[None, :]
        emb = torch.cat((ang, ang), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        mask = torch.full((T, T), float("-inf"), dtype=dt).triu(1)
        for i in range(c["num_hidden_layers"]):
            pre = "model.layers.%d." % i
            h = rms_norm(x, self.p[pre + "input_layernorm.weight"], eps)
            q = self.linear(h, pre + "self_attn.q_proj").view(B, T, H, hd).transpose(1, 2)
            k = self.linear(h, pre + "self_attn.k_proj").view(B, T, KV, hd).transpose(1, 2)
            v = self.linear(h, pre + "self_attn.v_proj").view(B, T, KV, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1) @ v
            att = att.transpose(1, 2).reshape(B, T, H * hd)
            x = x + self.linear(att, pre + "self_attn.o_proj")
            h = rms_norm(x, self.p[pre + "post_attention_layernorm.weight"], eps)
            g = self.linear(h, pre + "mlp.gate_proj")
            x = x + self.linear(torch.nn.functional.silu(g) * self.linear(h, pre + "mlp.up_proj"), pre + "mlp.down_proj")
        h = rms_norm(x, self.p["model.norm.weight"], eps)
        head = self.p["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else self.p["lm_head.weight"]
        logits = h @ head.T
        V = logits.shape[-1]
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def main():
    torch.set_default_dtype(torch.float64)
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--sgd-lr", type=float)
    ap.add_argument("--out")
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.dir, "config.json")))
    params = read_checkpoint(a.dir)
    ids = torch.tensor(np.load(a.tokens).astype(np.int64))
    if ids.dim() == 1:
        ids = ids[None, :]
    lora, train = {}, params
    if a.adapter:
        ac = json.load(open(os.path.join(a.adapter, "adapter_config.json")))
        ad = read_safetensors(os.path.join(a.adapter, "adapter_model.safetensors"))
        scale = ac["lora_alpha"] / ac["r"]
        for name in ad:
            if name.endswith(".lora_A.weight"):
                prefix = name[len("base_model.model."):-len(".lora_A.weight")]
                lora[prefix] = (ad[name], ad[name.replace("lora_A", "lora_B")], scale)
        train = ad
    for t in train.values():
        t.requires_grad_(True)
    loss = Model(cfg, params, lora).loss(ids)
    if a.sgd_lr is not None:
        loss.backward()
        with torch.no_grad():
            for t in train.values():
                t -= a.sgd_lr * t.grad
        write_safetensors(a.out, train)
    json.dump({"loss": loss.item()}, sys.stdout)
    print()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A PyTorch "model" for cryo's real-GPU checks (tests/gpu_container.rs's
real_gpu_pytorch_model_round_trip, run by scripts/gpu-check).

It puts GIB GiB of fp32 weights on the GPU (4096x4096 layers drawn from a fixed seed), then
answers requests through files in the directory IO, the protocol of the test's helpers:

  IO/NAME.ready  "ready PID DIGEST"      once the weights are on the GPU and answered once
  IO/NAME.req    "N"                     a request (removed when taken)
  IO/NAME.resp   "N DIGEST VERDICT"      the answer: the digest of the model's output for a
                                         fixed input (every layer applied in turn), and
                                         "verified" when it is the one computed at start

The output depends on every weight, so a restored process whose device memory is not
bit-identical answers with another digest.

usage: torch-server.py NAME IO GIB [DEVICE]     (DEVICE: cuda, the default, or cpu)
"""

import hashlib
import os
import struct
import sys
import time

import torch

DIM = 4096


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    name, io, gib = sys.argv[1], sys.argv[2], float(sys.argv[3])
    device = sys.argv[4] if len(sys.argv) > 4 else "cuda"
    gen = torch.Generator(device=device)
    gen.manual_seed(1234)
    layer_bytes = DIM * DIM * 4
    layers = max(1, int(gib * (1 << 30)) // layer_bytes)
    # Scaled so that the activations neither vanish nor blow up through the layers.
    weights = [
        torch.randn(DIM, DIM, generator=gen, device=device) / DIM**0.5 for _ in range(layers)
    ]
    x = torch.randn(DIM, 8, generator=gen, device=device)

    def digest():
        y = x
        with torch.no_grad():
            for w in weights:
                y = torch.tanh(w @ y)
        values = y.cpu().flatten().tolist()
        return hashlib.sha256(struct.pack(f"{len(values)}f", *values)).hexdigest()[:16]

    expected = digest()
    write_atomic(os.path.join(io, f"{name}.ready"), f"ready {os.getpid()} {expected}\n")
    req = os.path.join(io, f"{name}.req")
    while True:
        try:
            with open(req) as f:
                n = f.read().strip()
        except FileNotFoundError:
            time.sleep(0.002)
            continue
        os.remove(req)
        got = digest()
        verdict = "verified" if got == expected else f"corrupt: expected {expected}"
        write_atomic(os.path.join(io, f"{name}.resp"), f"{n} {got} {verdict}\n")


if __name__ == "__main__":
    main()

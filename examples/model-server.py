#!/usr/bin/python3
"""DESIGN.md's workload for checkpoint/restore figures, as a tiny server.

Fills SIZE MiB of resident memory, ½ random bytes, ¼ zero pages (written, so resident) and
¼ repetitive text (templated log/repr lines with varying numbers), in runs of RUN_MIB that
alternate between the three kinds, then answers on a unix socket: each connection sends a
line; "ping" gets "ok pong\\n" (touching little memory), anything else "ok <hex>\\n", where <hex> is a sha256 over one
64-byte sample per 64 KiB of the whole region, so a restored process proves its memory came
back. A failure to start is written to model-server.err beside SOCKET. Needs numpy (Debian's python3-numpy); runs under /usr/bin/python3.

    model-server.py SOCKET [SIZE_MIB] [SEED] [MIX] [THREADS] [WEIGHTS]
    model-server.py --write-weights FILE SIZE_MIB [SEED] [MIX]

MIX is the share of random, zero and text runs as R:Z:T (default 2:1:1, the mix above);
THREADS (default 1) adds idle threads, for the cost of multi-threaded processes to CRIU.
WEIGHTS, a file written by --write-weights with the same SIZE_MIB, SEED and MIX, is loaded
instead of building the memory (what a model server does at a cold start: read its weights).
"""

import hashlib
import os
import socket
import sys
import threading

import numpy as np

MIB = 1 << 20
RUN_MIB = 4
WORDS = [
    "request", "tensor", "layer", "token", "batch", "weight", "cache", "model", "python",
    "handler", "worker", "status", "object", "buffer", "string", "module",
]
LINE = 64


def text_lines(rng, n):
    """n distinct fixed-width (LINE bytes) text lines, from four templates."""
    w = [WORDS[i] for i in rng.integers(0, len(WORDS), size=4 * n)]
    num = rng.integers(0, 1_000_000, size=3 * n)
    out = []
    for i in range(n):
        a, b, c, d = w[4 * i:4 * i + 4]
        x, y, z = num[3 * i:3 * i + 3]
        t = i % 4
        if t == 0:
            s = f"INFO {a} id={x} {b}={y % 10000} ms={z % 1000}"
        elif t == 1:
            s = f"{{'{a}': {x}, '{b}': '{c}'}}, "
        elif t == 2:
            s = f"<{a}.{b} object at 0x7f{x:06x}{y:04x}>"
        else:
            s = f"def {a}_{x % 100}(self, {b}): return self.{d}"
        out.append(s[:LINE - 1].ljust(LINE - 1) + "\n")
    return np.frombuffer("".join(out).encode(), dtype=f"S{LINE}")


def kinds(mix):
    """The cycle of run kinds ("r", "z", "t") for weights mix = (R, Z, T), interleaved: each
    next run is the kind furthest behind its share. 2:1:1 is random, zero, random, text."""
    if mix == (2, 1, 1):
        return ["r", "z", "r", "t"]
    total = sum(mix)
    counts = [0, 0, 0]
    out = []
    for k in range(total):
        behind = [w * (k + 1) / total - c for w, c in zip(mix, counts)]
        i = max(range(3), key=lambda j: (behind[j], -j))
        counts[i] += 1
        out.append("rzt"[i])
    return out


def build(size_mib, seed, mix=(2, 1, 1)):
    rng = np.random.default_rng(seed)
    mem = np.empty(size_mib * MIB, dtype=np.uint8)
    vocab = text_lines(rng, 1 << 14)
    cycle = kinds(mix)
    run = RUN_MIB * MIB
    for k, off in enumerate(range(0, mem.size, run)):
        part = mem[off:off + run]
        kind = cycle[k % len(cycle)]
        if kind == "r":
            part[:] = np.frombuffer(rng.bytes(part.size), dtype=np.uint8)
        elif kind == "z":
            part.fill(0)
        else:
            n = part.size // LINE
            lines = vocab[rng.integers(0, vocab.size, size=n)]
            part[:n * LINE] = np.frombuffer(lines.tobytes(), dtype=np.uint8)
            part[n * LINE:] = 0x20
    return mem


def checksum(mem):
    return hashlib.sha256(mem.reshape(-1, 65536)[:, :64].tobytes()).hexdigest()


def load(weights, size_mib):
    mem = np.fromfile(weights, dtype=np.uint8)
    if mem.size != size_mib * MIB:
        raise ValueError(f"{weights}: {mem.size} bytes, expected {size_mib} MiB")
    return mem


def serve(path, size_mib, seed, mix, threads, weights=None):
    mem = load(weights, size_mib) if weights else build(size_mib, seed, mix)
    for _ in range(threads - 1):
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    while True:
        conn, _ = srv.accept()
        with conn:
            try:
                conn.settimeout(5)
                req = conn.recv(64)
                if req.startswith(b"ping"):
                    # A request that touches little memory: what a lazy restore's first
                    # answer is timed with.
                    conn.sendall(b"ok pong\n")
                else:
                    conn.sendall(f"ok {checksum(mem)}\n".encode())
            except OSError:
                pass


def parse_mix(arg):
    mix = tuple(int(w) for w in arg.split(":"))
    if len(mix) != 3 or min(mix) < 0 or sum(mix) == 0:
        raise ValueError(f"MIX must be R:Z:T, three non-negative weights, got {arg}")
    return mix


def write_weights(args):
    path, size_mib = args[0], int(args[1])
    seed = int(args[2]) if len(args) > 2 else 1
    mix = parse_mix(args[3]) if len(args) > 3 else (2, 1, 1)
    if size_mib <= 0 or size_mib % RUN_MIB:
        raise ValueError(f"SIZE_MIB must be a positive multiple of {RUN_MIB}, got {size_mib}")
    tmp = path + ".tmp"
    build(size_mib, seed, mix).tofile(tmp)
    os.replace(tmp, path)


def main():
    if sys.argv[1] == "--write-weights":
        write_weights(sys.argv[2:])
        return
    path = sys.argv[1]
    try:
        size_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 256
        seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
        mix = parse_mix(sys.argv[4]) if len(sys.argv) > 4 else (2, 1, 1)
        threads = int(sys.argv[5]) if len(sys.argv) > 5 else 1
        weights = sys.argv[6] if len(sys.argv) > 6 else None
        if size_mib <= 0 or size_mib % RUN_MIB:
            raise ValueError(f"SIZE_MIB must be a positive multiple of {RUN_MIB}, got {size_mib}")
        if threads < 1:
            raise ValueError(f"THREADS must be at least 1, got {threads}")
        serve(path, size_mib, seed, mix, threads, weights)
    except Exception:
        # stdio is /dev/null under `run -d`: leave the reason where the harness looks.
        import traceback
        with open(os.path.join(os.path.dirname(path), "model-server.err"), "w") as f:
            traceback.print_exc(file=f)
        raise


if __name__ == "__main__":
    main()

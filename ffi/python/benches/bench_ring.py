#!/usr/bin/env python3
"""Cross-process ring throughput of the Python binding.

A producer subprocess (this script with ``--role producer``) opens the ring and sends N
frames of ``--size`` bytes; the parent receives them. Two runs:

* batch:  ``Producer.send_batch`` (batches of ``--batch``; what a batch did not send under
  back-pressure is sent again, after waiting for room with ``send(timeout=...)``) and
  ``Consumer.recv_batch``;
* single: ``Producer.send`` (on ``Full``, ``send(timeout=...)``) and ``Consumer.recv``.

msg/s = frames / (time of the last frame received - time the producer started sending), both
read from CLOCK_MONOTONIC (``time.monotonic``, shared by the processes). With ``--verify`` every
frame carries its sequence number and the parent checks there is no loss, duplicate or reorder
(costs the producer a ``struct.pack`` per frame).

    python3 ffi/python/benches/bench_ring.py                     # defaults below
    python3 ffi/python/benches/bench_ring.py --frames 5000000 --batch 256 --verify

The ring lives in a fresh temporary directory (under /dev/shm when it exists), removed at the
end. ``ERLMCP_FLOW_LIB`` selects the library, as for the package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # ffi/python
sys.path.insert(0, str(PACKAGE_ROOT))

import erlmcp_flow as emf  # noqa: E402

SEQ = struct.Struct("<Q")


def frame_maker(size: int, verify: bool):
    filler = b"\xab" * max(0, size - SEQ.size)
    if verify:
        pack = SEQ.pack
        return lambda i: (pack(i) + filler)[:size]
    fixed = (b"\xab" * size)
    return lambda i: fixed


def produce(args) -> None:
    """The producer subprocess: opens the ring, sends, reports its timings as JSON."""
    make = frame_maker(args.size, args.verify)
    with emf.Ring.open(args.name, dir=args.dir) as ring, emf.Producer(ring) as p:
        n = args.frames
        t0 = time.monotonic()
        if args.mode == "batch":
            batch = args.batch
            full_waits = partial = 0
            reuse = None if args.verify else [make(0)] * batch
            i = 0
            while i < n:
                k = min(batch, n - i)
                pending = reuse[:k] if reuse is not None else [make(j) for j in range(i, i + k)]
                while pending:
                    sent = p.send_batch(pending)
                    if sent == 0:
                        # Full: wait for room for the first frame in the library (futex park).
                        p.send(pending[0], timeout=30.0)
                        sent = 1
                        full_waits += 1
                    elif sent < len(pending):
                        partial += 1
                    pending = pending[sent:]
                i += k
        else:
            full_waits = partial = 0
            send = p.send
            Full = emf.Full
            for i in range(n):
                frame = make(i)
                try:
                    send(frame)
                except Full:
                    send(frame, timeout=30.0)
                    full_waits += 1
        t1 = time.monotonic()
    print(json.dumps({"t0": t0, "t1": t1, "full_waits": full_waits, "partial": partial}))


def consume(c: "emf.Consumer", n: int, mode: str, verify: bool, batch_max: int) -> float:
    """Receives n frames; returns the monotonic time of the last one."""
    got = 0
    unpack = SEQ.unpack_from
    if mode == "batch":
        while got < n:
            frames = c.recv_batch(batch_max, timeout=30.0)
            if not frames:
                raise RuntimeError(f"no frame for 30 s after {got} of {n}")
            if verify:
                for f in frames:
                    (seq,) = unpack(f)
                    if seq != got:
                        raise RuntimeError(f"frame {got} carries sequence number {seq}")
                    got += 1
            else:
                got += len(frames)
    else:
        recv = c.recv
        while got < n:
            f = recv()
            if f is None:
                f = recv(timeout=30.0)
                if f is None:
                    raise RuntimeError(f"no frame for 30 s after {got} of {n}")
            if verify:
                (seq,) = unpack(f)
                if seq != got:
                    raise RuntimeError(f"frame {got} carries sequence number {seq}")
            got += 1
    return time.monotonic()


def run(args, mode: str, frames: int) -> dict:
    name = f"bench-{os.getpid()}-{mode}"
    with emf.Ring.create(name, capacity=args.capacity, dir=args.dir) as ring:
        try:
            with emf.Consumer(ring) as c:
                cmd = [
                    sys.executable, __file__, "--role", "producer", "--mode", mode,
                    "--name", name, "--dir", args.dir, "--frames", str(frames),
                    "--size", str(args.size), "--batch", str(args.batch),
                ] + (["--verify"] if args.verify else [])
                child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                try:
                    t_last = consume(c, frames, mode, args.verify, args.recv_max)
                    out, _ = child.communicate(timeout=60)
                finally:
                    if child.poll() is None:
                        child.kill()
                        child.wait()
                if child.returncode != 0:
                    raise RuntimeError(f"producer exited with {child.returncode}")
                report = json.loads(out.strip().splitlines()[-1])
                assert c.recv() is None, "more frames than were sent"
                stats = ring.stats()
                assert stats.sent == stats.received == frames, stats
        finally:
            ring.unlink()
    elapsed = t_last - report["t0"]
    return {
        "mode": mode,
        "frames": frames,
        "seconds": elapsed,
        "msg_per_s": frames / elapsed,
        "producer_msg_per_s": frames / (report["t1"] - report["t0"]),
        "MB_per_s": frames * args.size / elapsed / 1e6,
        "full_waits": report["full_waits"],
        "partial_batches": report["partial"],
        "backpressure": stats.backpressure,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2_000_000, help="frames for the batch run")
    ap.add_argument("--single", type=int, default=300_000,
                    help="frames for the single run (0: skip)")
    ap.add_argument("--size", type=int, default=64, help="frame size in bytes")
    ap.add_argument("--batch", type=int, default=256, help="frames per send_batch")
    ap.add_argument("--recv-max", type=int, default=1024, help="max_frames of recv_batch")
    ap.add_argument("--capacity", type=int, default=1 << 22, help="ring capacity in bytes")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each mode (best reported)")
    ap.add_argument("--verify", action="store_true", help="sequence-number every frame and check")
    ap.add_argument("--dir", default=None, help="directory for the ring (default: a temp dir)")
    ap.add_argument("--role", default="consumer", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="batch", help=argparse.SUPPRESS)
    ap.add_argument("--name", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.size < SEQ.size and args.verify:
        ap.error(f"--verify needs --size >= {SEQ.size}")
    if args.role == "producer":
        produce(args)
        return

    made_dir = args.dir is None
    if made_dir:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        args.dir = tempfile.mkdtemp(prefix="emf-bench-", dir=base)
    try:
        print(f"library {emf.library_path}, Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, ring {args.capacity} bytes in {args.dir}, "
              f"{args.size}-byte frames{', verified' if args.verify else ''}")
        plan = [("batch", args.frames)] + ([("single", args.single)] if args.single else [])
        for mode, frames in plan:
            results = [run(args, mode, frames) for _ in range(args.repeat)]
            best = max(results, key=lambda r: r["msg_per_s"])
            runs = ", ".join(f"{r['msg_per_s']:,.0f}" for r in results)
            extra = f" (batch {args.batch}, recv_batch {args.recv_max})" if mode == "batch" else ""
            print(
                f"{mode:6}: {best['msg_per_s']:>12,.0f} msg/s  {best['MB_per_s']:8.1f} MB/s  "
                f"{frames:,} frames in {best['seconds']:.3f} s{extra}; "
                f"runs: {runs}; "
                f"producer alone {best['producer_msg_per_s']:,.0f} msg/s, "
                f"ring full {best['backpressure']}x"
            )
    finally:
        if made_dir:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()

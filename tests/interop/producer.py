"""Interop test: the ring's producer in Python, through ffi/python (erlmcp_flow).

    producer.py create DIR NAME            creates the ring (1 MiB), leaves its file
    producer.py produce DIR NAME FRAMES ID sends FRAMES sequence-numbered frames
    producer.py check DIR NAME FRAMES      checks the ring's counters, then unlinks it

Frame layout (see c_subscriber.c): producer id u32 LE, sequence u64 LE (0, 1, ...), then
12 + (seq * 7919) % 53 bytes in all, byte j being (seq + j) & 0xFF. Frames go in batches;
what a batch did not send (back-pressure) is sent again after waiting for room (each wait up
to 300 s). Prints one line; exits 0 on success.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ffi" / "python"))

import erlmcp_flow as emf  # noqa: E402

WAIT_S = 300.0
BATCH = 512


_PATTERN = bytes(range(256)) * 2  # byte k is k & 0xFF


def frame(producer_id: int, seq: int) -> bytes:
    n = 12 + (seq * 7919) % 53
    start = (seq + 12) & 0xFF
    return (producer_id.to_bytes(4, "little") + seq.to_bytes(8, "little")
            + _PATTERN[start:start + n - 12])


def create(dir, name):
    emf.Ring.create(name, capacity=1 << 20, dir=dir).close()
    print(f"python-producer: created ring {name}")


def produce(dir, name, frames, producer_id):
    with emf.Ring.open(name, dir=dir) as ring, emf.Producer(ring) as p:
        seq = 0
        while seq < frames:
            batch = [frame(producer_id, s) for s in range(seq, min(seq + BATCH, frames))]
            while batch:
                sent = p.send_batch(batch)
                if sent == 0:  # full: wait for room for the first one, then go on batching
                    p.send(batch[0], timeout=WAIT_S)
                    sent = 1
                batch = batch[sent:]
                seq += sent
    print(f"python-producer: ok sent {frames} frames")


def check(dir, name, frames):
    with emf.Ring.open(name, dir=dir) as ring:
        s = ring.stats()
        ring.unlink()
    problems = []
    if s.sent != frames:
        problems.append(f"sent {s.sent}")
    if s.received != frames:
        problems.append(f"primary consumer received {s.received}")
    if s.corrupt_frames:
        problems.append(f"{s.corrupt_frames} corrupt frames")
    if (Path(dir) / f"emf-{name}").exists():
        problems.append("ring file left after unlink")
    if problems:
        print(f"ring-counters: FAIL expected {frames} frames: " + ", ".join(problems))
        return 1
    print(f"ring-counters: ok sent = received = {frames}, no corrupt frame; ring unlinked")
    return 0


def main(argv):
    cmd, dir, name, *rest = argv
    if cmd == "create":
        create(dir, name)
    elif cmd == "produce":
        produce(dir, name, int(rest[0]), int(rest[1]))
    elif cmd == "check":
        return check(dir, name, int(rest[0]))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as e:  # one line, like the other participants
        print(f"python-producer: FAIL {type(e).__name__}: {e}")
        sys.exit(1)

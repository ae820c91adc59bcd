#!/usr/bin/env python3
"""Records live-migration streams for the migration_receive fuzz target (scripts/fuzz-seeds.sh).

  record-migration.py proxy LISTEN TARGET OUT
      Listens on the unix socket LISTEN, accepts one connection (the migration source), connects
      to the unix socket TARGET (`vireo receive --listen unix:TARGET`) and forwards bytes both
      ways until both sides have closed; every byte the source sends is also written to OUT.
      Exits 0 once done, 1 if nobody connects within --timeout seconds (default 120) or a
      transfer fails. No SCM_RIGHTS: a `--local` migration (memfd handover) cannot go through.

  record-migration.py cut STREAM OUT_DIR NAME
      Splits a recorded stream at its frame boundaries and writes small seeds NAME-* into
      OUT_DIR: the Hello alone; Hello + Config; Hello + Config + the first Memory frame cut to
      its first page; Hello + Config + State + Complete (no pages); every frame with each
      Memory frame cut to its first page; Hello + Config with `local` set (memory handed over,
      so pages are refused); Hello + Config + Abandon.

Frames (vmm/src/migration/protocol.rs): "VRMG", kind u16 LE, reserved u16 (0), payload length
u64 LE, payload. Memory payload: gpa u64 LE, then whole 4 KiB pages. Python 3 stdlib only.
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading

MAGIC = b"VRMG"
HEADER = struct.Struct("<4sHHQ")
HELLO, CONFIG, MEMORY, STATE, COMPLETE, ABANDON = 1, 3, 4, 5, 6, 7
PAGE = 4096


def proxy(listen, target, out, timeout):
    """Forwards one connection from `listen` to `target`, recording source->target bytes."""
    # Bound and listening under a temporary name, then renamed: once LISTEN exists, a
    # connection to it succeeds.
    tmp = f"{listen}.{os.getpid()}"
    for path in (listen, tmp):
        if os.path.exists(path):
            os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(tmp)
    server.listen(1)
    os.rename(tmp, listen)
    server.settimeout(timeout)
    try:
        source, _ = server.accept()
    except socket.timeout:
        print(f"record-migration: no source connected to {listen} in {timeout} s", file=sys.stderr)
        return 1
    finally:
        server.close()
        os.unlink(listen)
    source.settimeout(None)
    dest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dest.connect(target)
    failures = []

    def pump(src, dst, record):
        try:
            while True:
                chunk = src.recv(1 << 20)
                if not chunk:
                    break
                if record is not None:
                    record.write(chunk)
                dst.sendall(chunk)
        except OSError as e:
            failures.append(e)
        finally:
            # Pass the end of this direction on; the other may still be talking.
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    with open(out, "wb") as record:
        back = threading.Thread(target=pump, args=(dest, source, None))
        back.start()
        pump(source, dest, record)
        back.join()
    source.close()
    dest.close()
    if failures:
        print(f"record-migration: {failures[0]}", file=sys.stderr)
        return 1
    return 0


def frames(stream):
    """The stream's complete frames as (kind, whole frame bytes); a partial tail is an error."""
    out, at = [], 0
    while at < len(stream):
        magic, kind, reserved, length = HEADER.unpack_from(stream, at)
        end = at + HEADER.size + length
        if magic != MAGIC or reserved != 0 or end > len(stream):
            raise ValueError(f"no frame at offset {at}")
        out.append((kind, stream[at:end]))
        at = end
    return out


def frame(kind, payload):
    return HEADER.pack(MAGIC, kind, 0, len(payload)) + payload


def first_page(memory_frame):
    """A Memory frame cut to its first page."""
    payload = memory_frame[HEADER.size :]
    return frame(MEMORY, payload[: 8 + PAGE])


def cut(stream_path, out_dir, name):
    with open(stream_path, "rb") as f:
        fs = frames(f.read())
    kinds = [k for k, _ in fs]
    if kinds[:2] != [HELLO, CONFIG] or STATE not in kinds or kinds[-1] != COMPLETE:
        raise ValueError(f"{stream_path}: not a whole migration (frame kinds {kinds})")
    hello, config = fs[0][1], fs[1][1]
    memory = [f for k, f in fs if k == MEMORY]
    state = next(f for k, f in fs if k == STATE)
    complete = fs[-1][1]
    spec = json.loads(config[HEADER.size :])
    spec["local"] = True
    seeds = {
        "hello": hello,
        "config": hello + config,
        "no-pages": hello + config + state + complete,
        "small-pages": b"".join(first_page(f) if k == MEMORY else f for k, f in fs),
        "local": hello + frame(CONFIG, json.dumps(spec, separators=(",", ":")).encode()),
        "abandon": hello + config + frame(ABANDON, b"cancelled by the operator"),
    }
    if memory:
        seeds["page"] = hello + config + first_page(memory[0])
    for suffix, data in seeds.items():
        with open(os.path.join(out_dir, f"{name}-{suffix}"), "wb") as f:
            f.write(data)
    return 0


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("proxy")
    pp.add_argument("listen")
    pp.add_argument("target")
    pp.add_argument("out")
    pp.add_argument("--timeout", type=float, default=120)
    pc = sub.add_parser("cut")
    pc.add_argument("stream")
    pc.add_argument("out_dir")
    pc.add_argument("name")
    a = p.parse_args()
    if a.cmd == "proxy":
        return proxy(a.listen, a.target, a.out, a.timeout)
    return cut(a.stream, a.out_dir, a.name)


if __name__ == "__main__":
    sys.exit(main())

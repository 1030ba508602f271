#!/usr/bin/python3
"""What an MMEngine user's training thread blocks on when it saves a checkpoint, for hook_bench.

Run by hook_bench with Debian's /usr/bin/python3 (python3-torch), as a child process driven over
stdin/stdout so that its rounds interleave with hook_bench's own (this machine is noisy):

  stdin:  "tensors N", then N lines "NAME D0 D1 ..." (float32 shapes: the state dict hook_bench
          saves, bench/bench_util.h), then one command per line:
            "torch.save PATH"  times torch.save(checkpoint, PATH): pickling, the zip writer
                               (libtorch's PyTorchStreamWriter, miniz CRC-32) and the writes into
                               the page cache; no fsync (torch.save does none)
            "mmengine PATH"    times the body of mmengine.runner.checkpoint.save_checkpoint for a
                               local path: torch.save into an io.BytesIO, then getvalue() (a copy)
                               written to PATH with open()/write()/close() (LocalBackend.put); no
                               fsync (MMEngine does none)
            "quit"
  stdout: "ready BYTES" once the tensors are built, then per command "SAVE_S FSYNC_S FILE_BYTES":
          FSYNC_S is a separate, later timing of os.fsync on the closed file (what making the same
          save durable would add: it is not part of SAVE_S). The file is removed afterwards,
          untimed.

The checkpoint has MMEngine's shape: {'meta': {...}, 'state_dict': OrderedDict(name: tensor),
'message_hub': {...}}. Tensors are random float32 of the given shapes.
"""
import collections
import io
import os
import sys
import time

import torch


def main():
    header = sys.stdin.readline().split()
    if len(header) != 2 or header[0] != "tensors":
        raise SystemExit("torch_save_baseline.py: expected 'tensors N' first")
    state_dict = collections.OrderedDict()
    nbytes = 0
    for _ in range(int(header[1])):
        fields = sys.stdin.readline().split()
        t = torch.randn([int(d) for d in fields[1:]], dtype=torch.float32)
        state_dict[fields[0]] = t
        nbytes += t.numel() * t.element_size()
    checkpoint = {
        "meta": {"epoch": 1, "iter": 0, "time": time.strftime("%Y%m%d_%H%M%S"),
                 "mmengine_version": "0.10.0"},
        "state_dict": state_dict,
        "message_hub": {"log_scalars": {}, "runtime_info": {"epoch": 1, "iter": 0},
                        "resumed_keys": {"epoch": True, "iter": True}},
    }
    print(f"ready {nbytes}", flush=True)
    for line in sys.stdin:
        fields = line.split()
        if not fields or fields[0] == "quit":
            break
        cmd, path = fields[0], fields[1]
        t0 = time.perf_counter()
        if cmd == "torch.save":
            torch.save(checkpoint, path)
        elif cmd == "mmengine":
            with io.BytesIO() as f:
                torch.save(checkpoint, f)
                with open(path, "wb") as out:
                    out.write(f.getvalue())
        else:
            raise SystemExit(f"torch_save_baseline.py: unknown command {cmd!r}")
        save_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        fsync_s = time.perf_counter() - t1
        size = os.path.getsize(path)
        os.remove(path)
        print(f"{save_s:.9f} {fsync_s:.9f} {size}", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Python's side of ckptledger's checkpoint interop tests (tests/checkpoint_format_test.cc).

  read_checkpoint.py FILE         torch.load FILE (map_location='cpu') and print its summary.
  read_checkpoint.py --save FILE  torch.save an MMEngine-shaped checkpoint to FILE (zip format)
                                  and print the summary of the object saved.

The summary is JSON: {"torch": version, "weights_only": "ok" | error | "unsupported",
"globals": the sorted module.name globals data.pkl imports, "nodes": {path: node}}. Paths join labels with "/" from the root "": a str key is itself, an int
key is "#<n>", a list or tuple index is "[<i>]". A node is {"kind": ...} with
  dict:   "keys" (labels, in order)        list, tuple: "len"
  tensor: "dtype" (e.g. "float32"), "shape", "stride", "offset", "requires_grad", "sum" (float64
          sum of the elements) and "storage" (index of its storage among the non-empty storages
          in order of first appearance, -1 when empty: equal indexes mean shared storage)
  none;   bool, int, float, str: "value".
"""
import collections
import inspect
import json
import pickletools
import sys
import zipfile

import torch


def _label(key):
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return "#%d" % key
    raise TypeError("unsupported dict key %r" % (key,))


def _storage(t):
    return t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()


def summarize(obj):
    nodes = {}
    storages = {}

    def walk(value, path):
        if isinstance(value, torch.Tensor):
            storage = _storage(value)
            sid = -1
            if storage.nbytes() > 0:
                sid = storages.setdefault(storage.data_ptr(), len(storages))
            nodes[path] = {
                "kind": "tensor",
                "dtype": str(value.dtype).replace("torch.", ""),
                "shape": list(value.shape),
                "stride": list(value.stride()),
                "offset": value.storage_offset(),
                "requires_grad": value.requires_grad,
                "sum": float(value.detach().double().sum()),
                "storage": sid,
            }
        elif isinstance(value, dict):  # OrderedDict too
            nodes[path] = {"kind": "dict", "keys": [_label(k) for k in value]}
            for k, v in value.items():
                walk(v, path + "/" + _label(k))
        elif isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            nodes[path] = {"kind": kind, "len": len(value)}
            for i, v in enumerate(value):
                walk(v, "%s/[%d]" % (path, i))
        elif value is None:
            nodes[path] = {"kind": "none"}
        elif isinstance(value, bool):
            nodes[path] = {"kind": "bool", "value": value}
        elif isinstance(value, int):
            nodes[path] = {"kind": "int", "value": value}
        elif isinstance(value, float):
            nodes[path] = {"kind": "float", "value": value}
        elif isinstance(value, str):
            nodes[path] = {"kind": "str", "value": value}
        else:
            raise TypeError("unsupported value %r at %s" % (type(value), path))

    walk(obj, "")
    return nodes


def pickle_globals(path):
    """The globals data.pkl imports: what decides whether weights_only=True may load it."""
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        data = z.read(name)
    found = set()
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            found.add("<STACK_GLOBAL>")
    return sorted(found)


def load(path):
    kwargs = {"map_location": "cpu"}
    supports_weights_only = "weights_only" in inspect.signature(torch.load).parameters
    if supports_weights_only:
        kwargs["weights_only"] = False
    obj = torch.load(path, **kwargs)
    weights_only = "unsupported"
    if supports_weights_only:
        # The default from PyTorch 2.6 on; an MMEngine resume must not need weights_only=False.
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            weights_only = "ok"
        except Exception as e:  # reported to the test, which asserts on it
            weights_only = "%s: %s" % (type(e).__name__, e)
    return obj, weights_only


def mmengine_like_checkpoint():
    """What MMEngine's Runner.save_checkpoint holds, made of Python's own objects."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
    loss = model(torch.randn(2, 3, 3, 3)).square().sum()
    loss.backward()
    optimizer.step()
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "meta": {
            "epoch": 2,
            "iter": 200,
            "time": "20240102_030405",
            "seed": 1234,
            "mmengine_version": "0.10.3",
            "dataset_meta": None,
            "deterministic": False,
        },
        "state_dict": model.state_dict(),  # an OrderedDict carrying _metadata
        "optimizer": optimizer.state_dict(),  # int keys, tuple betas, None foreach
        "param_schedulers": [
            {"base_lrs": [0.01], "last_step": 2, "by_epoch": True, "eta_min": 0.0},
        ],
        "message_hub": {
            "runtime_info": collections.OrderedDict(
                [("best_score", 0.5), ("keep_ckpt_ids", [1, 2]), ("last_ckpt", "/x/epoch_2.pth")]
            ),
            "resumed_keys": {"epoch": True},  # a one-item dict pickles as SETITEM
        },
        "extras": {
            "rows": base[1:],  # two views of one storage
            "columns": base.t(),
            "half": torch.full((3,), 0.5, dtype=torch.float16),
            "mask": torch.tensor([True, False, True]),
            "empty": torch.zeros(0, 3),
            "long": torch.arange(5) - 2,
            "double": torch.linspace(0, 1, 7, dtype=torch.float64),
            "big_int": 2**40 + 3,
            "negative": -7,
        },
    }


def main(argv):
    if len(argv) == 3 and argv[1] == "--save":
        obj = mmengine_like_checkpoint()
        torch.save(obj, argv[2], _use_new_zipfile_serialization=True)
        weights_only = "not checked"
    elif len(argv) == 2:
        obj, weights_only = load(argv[1])
    else:
        sys.stderr.write(__doc__)
        return 2
    summary = {
        "torch": torch.__version__,
        "weights_only": weights_only,
        "globals": pickle_globals(argv[-1]),
        "nodes": summarize(obj),
    }
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

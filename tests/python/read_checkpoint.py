#!/usr/bin/env python3
"""Python's side of ckptledger's checkpoint interop tests (tests/checkpoint_format_test.cc).

  read_checkpoint.py FILE         torch.load FILE (map_location='cpu') and print its summary.
  read_checkpoint.py --save FILE  torch.save an MMEngine-shaped checkpoint to FILE (zip format)
                                  and print the summary of the object saved.
  read_checkpoint.py --save-hub FILE PROTOCOL
                                  torch.save, at pickle PROTOCOL, an MMEngine checkpoint whose
                                  message hub holds HistoryBuffers and numpy values (and other
                                  objects ckptledger reads as opaque values) and print the summary
                                  of what ckptledger's reader is documented to read: as_read().
                                  FILE.plain gets its meta, state_dict and optimizer alone.
  read_checkpoint.py --save-state-dict FILE PREFIX
                                  torch.save a bare model.state_dict() (an OrderedDict) with
                                  PREFIX before every key (e.g. "module." as DDP's) and print its
                                  summary.

The summary is JSON: {"torch": version, "weights_only": "ok" | error | "unsupported",
"globals": the sorted module.name globals data.pkl imports, "nodes": {path: node}}. Paths join labels with "/" from the root "": a str key is itself, an int
key is "#<n>", a list or tuple index is "[<i>]". A node is {"kind": ...} with
  dict:   "keys" (labels, in order)        list, tuple: "len"
  tensor: "dtype" (e.g. "float32"), "shape", "stride", "offset", "requires_grad", "sum" (float64
          sum of the elements) and "storage" (index of its storage among the non-empty storages
          in order of first appearance, -1 when empty: equal indexes mean shared storage)
  none;   bool, int, float, str: "value" (bytes: a str node, "value" when they are UTF-8, else
          "hex": their lowercase hex digits).
"""
import collections
import inspect
import json
import pickle
import pickletools
import sys
import types
import zipfile

import numpy
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
        elif isinstance(value, bytes):
            try:
                nodes[path] = {"kind": "str", "value": value.decode("utf-8")}
            except UnicodeDecodeError:
                nodes[path] = {"kind": "str", "hex": value.hex()}
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


def _install_module(name, **members):
    """Makes `name` importable (parents included) with the given classes as its members."""
    for i in range(1, name.count(".") + 1):
        sys.modules.setdefault(name.rsplit(".", i)[0], types.ModuleType(name.rsplit(".", i)[0]))
    module = types.ModuleType(name)
    for attr, cls in members.items():
        cls.__module__ = name
        cls.__qualname__ = attr
        setattr(module, attr, cls)
    sys.modules[name] = module
    return module


class HistoryBuffer:
    """MMEngine's mmengine.logging.history_buffer.HistoryBuffer as it pickles (mmengine is not
    installed here): the default object reduce, its __dict__ the state."""

    def __init__(self, log_history=(), count_history=(), max_length=1000000):
        self.max_length = max_length
        self._log_history = numpy.array(log_history)
        self._count_history = numpy.array(count_history)


class Cursor:
    """A user object with its own __reduce__: arguments and a state."""

    def __init__(self, epoch, index):
        self.epoch, self.index = epoch, index

    def __reduce__(self):
        return (Cursor, (self.epoch, self.index), {"seed": 7})


class Tags(list):
    """A list subclass: its items pickle as APPENDS to the object."""


_install_module("mmengine.logging.history_buffer", HistoryBuffer=HistoryBuffer)
_install_module("userlib.state", Cursor=Cursor, Tags=Tags)


def mmengine_checkpoint_with_hub():
    """An MMEngine checkpoint as Runner.save_checkpoint writes it: HistoryBuffers in the hub's
    log_scalars, numpy scalars and arrays in its runtime_info."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).square().sum().backward()
    optimizer.step()
    tags = Tags(["a", "b"])
    return {
        "meta": {"epoch": 3, "iter": 300, "mmengine_version": "0.10.3", "seed": 42},
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "message_hub": {
            "log_scalars": {
                "train/loss": HistoryBuffer([0.5, 0.25], [1, 1], max_length=10),
                "train/lr": HistoryBuffer([0.1], [1]),
            },
            "runtime_info": {
                "epoch": 3,
                "iter": 300,
                "best_score": numpy.float64(0.5),
                "best_epoch": numpy.int64(3),
                "val_accuracy": numpy.array([0.25, 0.75], dtype=numpy.float32),
            },
            "resumed_keys": {"epoch": True, "iter": True},
        },
        "extras": {
            "f32": numpy.float32(0.1),
            "f16": numpy.float16(1.5),
            "flag": numpy.bool_(True),
            "u8": numpy.uint8(200),
            "i8": numpy.int8(-5),
            "u64_big": numpy.uint64(2**64 - 1),  # above INT64_MAX: opaque
            "complex": numpy.complex128(1 + 2j),  # not a standard real dtype: opaque
            "set": {3, 1, 2},
            "frozenset": frozenset(["x"]),
            "bytes": b"\x00\xffraw",
            "empty_bytes": b"",
            "by_dtype": collections.defaultdict(list, {"a": [1]}),
            "cursor": Cursor(2, 17),
            "tags": tags,
            "tags_again": tags,  # one object, memoized
            "a_class": numpy.ndarray,
        },
    }


def as_read(value, protocol):
    """What ckptledger's read_checkpoint reads for `value` pickled at `protocol`, as documented
    in hook/checkpoint_format.h: numpy scalars of standard dtypes as plain values, bytes as
    bytes, any other object as {"__pickled__": "module.name", "args": (...)[, "kwargs"],
    ["listitems"], ["dictitems"], ["state"]} from its __reduce_ex__(protocol), a class or
    function as {"__global__": "module.name"}."""

    def go(v):
        return as_read(v, protocol)

    if isinstance(value, numpy.generic) and value.dtype.kind in "biuf":
        if value.dtype.itemsize <= 8 and (value.dtype.kind != "u" or value.item() < 2**63):
            return value.item()
    if isinstance(value, torch.Tensor) or value is None:
        return value
    if type(value) in (bool, int, float, str, bytes):
        return value
    if type(value) in (dict, collections.OrderedDict):
        return {k: go(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(go(v) for v in value)
    if type(value) in (set, frozenset):
        name = "builtins." + type(value).__name__
        return {"__pickled__": name, "args": ([go(v) for v in value],)}
    if isinstance(value, pickle.PickleBuffer):
        raw = value.raw()
        return bytes(raw) if raw.readonly else go(bytearray(raw))
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return {"__global__": "%s.%s" % (value.__module__, value.__qualname__)}
    reduced = value.__reduce_ex__(protocol)
    func, args = reduced[0], reduced[1]
    state, listitems, dictitems = (list(reduced[2:]) + [None, None, None])[:3]
    kwargs = None
    if getattr(func, "__name__", "") == "__newobj__":
        func, args = args[0], args[1:]
    elif getattr(func, "__name__", "") == "__newobj_ex__":
        func, args, kwargs = args
    out = {"__pickled__": go(func)["__global__"], "args": go(tuple(args))}
    if kwargs:
        out["kwargs"] = go(kwargs)
    items = list(listitems) if listitems is not None else []
    if items:
        out["listitems"] = [go(v) for v in items]
    pairs = list(dictitems) if dictitems is not None else []
    if pairs:
        out["dictitems"] = [(go(k), go(v)) for k, v in pairs]
    if state is not None:
        out["state"] = go(state)
    return out


def main(argv):
    if len(argv) == 3 and argv[1] == "--save":
        obj = mmengine_like_checkpoint()
        torch.save(obj, argv[2], _use_new_zipfile_serialization=True)
        weights_only = "not checked"
    elif len(argv) == 4 and argv[1] == "--save-hub":
        protocol = int(argv[3])
        saved = mmengine_checkpoint_with_hub()
        torch.save(saved, argv[2], pickle_protocol=protocol, _use_new_zipfile_serialization=True)
        # The plain parts alone, as a file any reader reads, to compare the tensors bit for bit.
        plain = {k: saved[k] for k in ("meta", "state_dict", "optimizer")}
        torch.save(plain, argv[2] + ".plain", _use_new_zipfile_serialization=True)
        obj = as_read(saved, protocol)
        weights_only = "not checked"
    elif len(argv) == 4 and argv[1] == "--save-state-dict":
        torch.manual_seed(2)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
        obj = collections.OrderedDict((argv[3] + k, v) for k, v in model.state_dict().items())
        obj._metadata = model.state_dict()._metadata
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
        "globals": pickle_globals(argv[2] if argv[1].startswith("--save") else argv[1]),
        "nodes": summarize(obj),
    }
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

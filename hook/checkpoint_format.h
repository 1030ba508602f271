// Checkpoint file format: the PyTorch zip archive that Python `torch.load` reads as a plain dict,
// as MMEngine checkpoints are (`meta`, `state_dict`, `optimizer`, `param_schedulers`,
// `message_hub`).
//
// FORMAT (what write_checkpoint produces; Python's torch.save writes the same shape)
//   A zip archive. Every entry is stored (method 0, no compression), carries its CRC-32, has its
//   data aligned to 64 bytes by an "FB" padding extra field, and has DOS time and date 0; the
//   archive ends with zip64 end records. All entries live under one top directory, the archive
//   name ("archive" for ours, the file's stem for Python's); readers take the first path
//   component of the first entry as that name. Entries, in this order:
//     archive/data.pkl    The object, pickle protocol 2. Containers are plain Python dict, list
//                         and tuple (no TorchScript type tags, so `torch.load(weights_only=True)`
//                         reads it). A tensor is `torch._utils._rebuild_tensor_v2(storage,
//                         storage_offset, size, stride, requires_grad, OrderedDict())` whose
//                         storage is the persistent id `('storage', torch.<Scalar>Storage, key,
//                         location, numel)`.
//     archive/byteorder   "little" (as torch.save has written since PyTorch 2.1).
//     archive/data/<key>  The storage's numel * element_size bytes, little-endian. Keys are
//                         "0", "1", ... in order of first appearance in data.pkl; tensors that
//                         view one storage share one key and one record, which holds the whole
//                         storage (as torch.save does).
//     archive/version     "3\n", the archive format version libtorch 1.13 writes.
//
// READING PYTHON OBJECTS (read_checkpoint)
//   A Python pickle may hold objects of any class: MMEngine's message hub pickles
//   mmengine.logging.history_buffer.HistoryBuffer and numpy values. The reader never imports or
//   calls anything; it builds plain values, deterministically (the same pickle, the same value):
//   * The globals it knows build what Python builds: tensors (torch._utils._rebuild_tensor_v2,
//     _rebuild_parameter), OrderedDict as a dict, bytes (BINBYTES, or protocol 2's
//     _codecs.encode(text, "latin1")) as a string of the bytes.
//   * A numpy scalar (numpy.core.multiarray.scalar, or numpy._core's) of dtype bool, int8-64,
//     uint8-64 or float16/32/64 is a plain bool, int or double (float16/32 widened exactly; a
//     uint64 above INT64_MAX stays opaque).
//   * Any other object is an opaque value, a dict with String keys in this order:
//       "__pickled__"  "module.name" of the class or function called (REDUCE, NEWOBJ,
//                      NEWOBJ_EX), Python 3's module names ("builtins", not "__builtin__")
//       "args"         tuple, its positional arguments
//       "kwargs"       dict, NEWOBJ_EX's keyword arguments, when there are any
//       then, in the order the pickle sets them, each only when set:
//       "listitems"    list, the items APPEND(S) adds to the object (a list subclass)
//       "dictitems"    list of (key, value) tuples, SETITEM(S) on it (a dict subclass); any keys
//       "state"        BUILD's argument (the object's __dict__, or what __getstate__ gave)
//     A set or frozenset is {"__pickled__": "builtins.set" | "builtins.frozenset",
//     "args": ([items],)}, in both protocol 2's and protocol 4's encoding; protocol 5's
//     bytearray is {"__pickled__": "builtins.bytearray", "args": (bytes,)}. A class or function
//     used as a value (not called) is {"__global__": "module.name"}. So HistoryBuffer reads as
//     {"__pickled__": "mmengine.logging.history_buffer.HistoryBuffer", "args": (), "state":
//     {"max_length": ..., "_log_history": <array>, "_count_history": <array>}}, a numpy array
//     (protocols 2-4) as {"__pickled__": "numpy.core.multiarray._reconstruct", "args":
//     ({"__global__": "numpy.ndarray"}, (0,), "b"), "state": (1, shape, <dtype>, is_fortran,
//     data bytes)}, its dtype as {"__pickled__": "numpy.dtype", "args": ("f8", False, True),
//     "state": (3, "<", ...)}.
//   * Refused (kInvalidArgument) are the torch globals that build a tensor or storage this reader
//     cannot (torch._utils._rebuild_* other than the above, storages of other dtypes), opcodes
//     that need Python's state (EXT1/2/4, out-of-band buffers) and dict keys that are not str,
//     int, bool or float; a malformed use of an opcode is kCorruption.
//   write_checkpoint refuses an opaque value (kInvalidArgument naming its path): written as the
//   dict it is, Python would read a dict in place of the object. Decoded numpy scalars write as
//   the plain values they are.
//
// Determinism: equal content gives identical bytes, so the file's SHA-256 addresses its content.
// "Equal" includes dict insertion order and which tensors share a storage; it excludes the
// container static types (an IntList and a generic list of the same ints write the same bytes),
// reference counts, and the wall clock.
//
// Thread safety: the functions are reentrant; the caller must not mutate `obj` or its tensors
// while write_checkpoint runs.
#pragma once

#include <ATen/core/ivalue.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace ckptledger {

// Receives the archive as consecutive chunks; throws to abort the write. Chunks of tensor data
// point straight into the tensors' memory and are as large as the tensor's storage.
using CheckpointSink = std::function<void(const void* data, size_t size)>;

// Streams `obj` (normally a c10::impl::GenericDict with string keys) into `sink` as a checkpoint
// archive and returns the number of bytes written. Memory use beyond the tensors is the pickle of
// the metadata and the zip central directory, never the tensor data (CUDA tensors are copied to
// the host one storage at a time).
//
// Supported values: None, bool, int, double, string, dict (string, int, bool or double keys),
// list, tuple, and strided CPU or CUDA tensors of dtype float, double, half, bfloat16, int8/16/
// 32/64, uint8 or bool. Anything else, and an opaque value read_checkpoint made of a Python
// object (a dict whose first key is "__pickled__" or "__global__"), throws
// Error(kInvalidArgument) naming its path in `obj` before the sink sees a byte. An exception thrown
// by `sink` propagates unchanged, and the sink is not called again.
uint64_t write_checkpoint(const c10::IValue& obj, const CheckpointSink& sink);

// Reads a checkpoint written by write_checkpoint or by Python torch.save (zip format, pickle
// protocol <= 5) into CPU tensors and GenericDict/GenericList/Tuple values. Python's
// OrderedDict (a module's state_dict, also saved bare) reads as a dict; its `_metadata` and
// nn.Parameter-ness are dropped. Objects of other classes (mmengine's HistoryBuffer, numpy
// arrays) read as opaque values and numpy scalars as plain values, as READING PYTHON OBJECTS
// above says. Dict key types are String or Int when all keys are, else Any; element and value
// types are Any. Every record's CRC-32 is verified.
//
// Throws Error naming `path`: kNotFound (no such file), kIOError (the OS refused), kCorruption
// (not a zip archive, truncated, CRC mismatch, malformed pickle, a tensor outside its storage),
// kInvalidArgument (a valid archive holding what this reader does not support: a compressed
// record, a big-endian archive, a tensor kind it cannot build, see above).
c10::IValue read_checkpoint(const std::string& path);

// A checkpoint read against the SHA-256 recorded for its file.
struct VerifiedCheckpoint {
  bool matches = false;  // the file's SHA-256 is the expected one
  std::string sha256;    // the file's SHA-256 (lowercase hex)
  uint64_t bytes = 0;    // the file's size
  c10::IValue value;     // the checkpoint when `matches`; None otherwise (the load is discarded)
};

// Reads a checkpoint whose SHA-256 is known (recorded when it was committed) in one pass: the
// reader loads it while a second thread hashes the bytes it loads (and reads the few bytes between
// records itself), then the digest is compared with `expected_sha256`. The records' CRC-32s are
// not recomputed for bytes the digest covers (a matching SHA-256 implies them); they are for any
// the hashing thread read on its own. Throws what read_checkpoint throws when the file does not
// read as a checkpoint (a file that does not match may fail that way, too).
VerifiedCheckpoint read_checkpoint_verified(const std::string& path,
                                            const std::string& expected_sha256);

// As read_checkpoint, from an archive in memory; `name` stands for the path in error messages.
c10::IValue read_checkpoint_bytes(std::string_view bytes, const std::string& name = "<memory>");

}  // namespace ckptledger

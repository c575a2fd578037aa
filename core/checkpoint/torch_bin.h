#pragma once
// A zip-format torch.save file (PyTorch >= 1.6: HF's pytorch_model.bin and its shards), read
// without executing anything. The archive's data.pkl runs on a pickle machine that knows only
// what a state dict of tensors needs, as torch.load(weights_only=True) allows: the opcodes that
// build tuples, lists, dicts, numbers and strings, the persistent ids of storages, and the
// globals collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _v3 / _rebuild_parameter,
// torch's storage types and dtypes. Any other opcode or global is refused, naming the file, the
// opcode or global and its byte offset in data.pkl; nothing is ever called or imported.
//
// The storages are the archive's stored (uncompressed) entries, mapped read-only: a contiguous
// tensor is a view into the mapping, as with safetensors. A strided tensor (a transposed view
// saved as such) is gathered once into its own shared memory mapping, so that page release
// after a layer drops it from the resident set without losing it.
//
// Every size is checked before it is used: the zip directory against the file, entries against
// the directory, the pickle's lengths against its bytes, each tensor's extent against its
// storage; values, memo entries and dims are bounded, and nothing recurses.
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/safetensors.h"

namespace es {

// A little-endian integer of `size` bytes (1, 2, 4 or 8), signed or not; an unsigned value past
// INT64_MAX reads as INT64_MAX (out of any range, never a negative marker).
int64_t readLittleEndianInt(const uint8_t* p, size_t size, bool isSigned);

// A value of a pickled object read by TorchBinFile::openObject. Tuples and lists hold their
// elements, a dict its keys and values in turn (key, value, key, value, ... in the pickle's
// order); a tensor its torch dtype, shape and row-major elements (in the file's mapping, or a
// gathered copy). Containers may share values (the pickle's memo), and a container may even
// hold itself: readers walk a fixed, shallow structure, never recursively.
struct PyValue {
    enum class Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Tensor, Other };
    Kind kind = Kind::None;
    int64_t i = 0;  // Bool, Int
    double f = 0;   // Float
    std::string s;  // Str; Other: what it is (a torch global or a storage)
    std::vector<const PyValue*> items;
    std::string dtype;  // Tensor: "int32", "int64", "float32", ...
    size_t elemSize = 0;
    char numeric = 0;  // Tensor: 'i' signed integers, 'u' unsigned, 'b' bool, 'f' floating point
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;
    bool isList() const { return kind == Kind::List || kind == Kind::Tuple; }
    // Dict: the value of string key `key` (the last one set, as the pickle builds the dict), else null
    const PyValue* get(const std::string& key) const;
    int64_t numel() const;
    bool integerTensor() const;          // Tensor of an integer or bool dtype
    int64_t intAt(int64_t index) const;  // integerTensor: element `index` of the row-major elements
    const char* kindName() const;        // "a list", "a tensor", ... (for errors)
};

class TorchBinFile : public TensorFile {
public:
    static std::shared_ptr<TorchBinFile> open(const std::string& path);
    // A torch.save file of plain containers and tensors rather than a state dict (SGLang's expert
    // distribution recorder dumps, which torch.load(weights_only=True) reads): the same machine,
    // the same allowed opcodes and globals; the object it unpickles is object().
    static std::shared_ptr<TorchBinFile> openObject(const std::string& path);
    ~TorchBinFile() override;
    const PyValue& object() const;  // openObject's root (an error for a state dict opened with open)

private:
    TorchBinFile() = default;
    static std::shared_ptr<TorchBinFile> load(const std::string& path, bool object);
    void parse(bool object);
    // A strided tensor's elements gathered row-major into a mapping of its own, all copies
    // together no larger than the file (views of one storage that overlap are the only way past
    // it); errors name `field`.
    const uint8_t* gatherCopy(const uint8_t* src, size_t elemSize, const std::vector<int64_t>& shape,
                              const std::vector<int64_t>& stride, size_t nbytes, const std::string& field);
    std::vector<std::pair<uint8_t*, size_t>> copies_;  // gathered strided tensors (shared mappings)
    uint64_t copied_ = 0;                              // their bytes
    std::deque<PyValue> values_;                       // openObject: every value, the root first
};

// Whether `path` starts as a zip archive does (what torch.save has written since PyTorch 1.6).
bool isZipFile(const std::string& path);

}  // namespace es

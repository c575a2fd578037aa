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
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/safetensors.h"

namespace es {

class TorchBinFile : public TensorFile {
public:
    static std::shared_ptr<TorchBinFile> open(const std::string& path);
    ~TorchBinFile() override;

private:
    TorchBinFile() = default;
    void parse();
    std::vector<std::pair<uint8_t*, size_t>> copies_;  // gathered strided tensors (shared mappings)
};

// Whether `path` starts as a zip archive does (what torch.save has written since PyTorch 1.6).
bool isZipFile(const std::string& path);

}  // namespace es

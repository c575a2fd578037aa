#pragma once
// A memory-mapped .safetensors file. The header is validated completely on open (size bounds,
// JSON, dtypes, shapes against byte spans, spans inside the file, no overlaps); tensors are
// zero-copy views into the read-only mapping.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace es {

// I64 holds index buffers only (BERT's embeddings.position_ids); weights are F32, F16 or BF16,
// or F8_E4M3 with a scale tensor (F32, BF16 or F8_E8M0: power-of-two exponents) beside them, or
// MXFP4 blocks with their scales, both U8 (GPT-OSS's experts), or integers packed into I32 words
// with their scales (compressed-tensors' pack-quantized: Kimi K2.5's experts), or FP4 experts
// stored as I8, two E2M1 codes a byte with an F8_E8M0 scale per 32 values (DeepSeek-V4 as
// released: fp8's expert_dtype "fp4"; decoded as mxfp4Row decodes a row).
enum class DType { F32, F16, BF16, I64, F8_E4M3, F8_E8M0, U8, I32, I8 };
const char* dtypeName(DType d);
size_t dtypeSize(DType d);
// An F8_E8M0 scale byte (OCP MX): 2^(e - 127), 255 being NaN. The one decoding of these scales,
// for the forward's dequantization and the static analyses' Gram kernel alike.
float e8m0ToFloat(uint8_t e);
// MXFP4 as transformers' mxfp4 integration reads GPT-OSS's experts: a stored row of C values is
// C / 32 blocks of 16 bytes, byte b holding value 2b in its low nibble and 2b + 1 in its high
// one, each an E2M1 code (kFp4E2M1), the block's values times 2^(s - 127) for its U8 scale byte
// s. Scale 255 (NaN in OCP MX, in no released checkpoint) is ldexp(value, 128): inf, or 0 for a
// zero code, where transformers' ldexp multiplies by 2^128 and gives NaN; the forward warns of
// either in the layer it decodes.
extern const float kFp4E2M1[16];
// One stored row: `groups` blocks of 16 bytes and their scale bytes -> 32 x groups floats.
void mxfp4Row(const uint8_t* blocks, const uint8_t* scales, int64_t groups, float* out);

struct TensorView {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;  // into the mapping; valid while the file object lives
    uint64_t nbytes = 0;
    uint64_t fileOffset = 0;  // absolute offset of the first byte in the file
    std::string file;
    int64_t numel() const;
};

// Page advice for a byte range inside a mapping (rounded out to whole pages): `willNeed` starts
// read-ahead; `release` drops the range's pages from this process (they stay in the page cache
// and fault back in when touched again), so streaming a model keeps the resident set small.
void adviseWillNeed(const uint8_t* data, uint64_t nbytes);
void releasePages(const uint8_t* data, uint64_t nbytes);

// A tensor to write: what it is, and a function that writes exactly its bytes (row-major,
// little-endian) through `put`, so that a converted model streams to disk tensor by tensor.
struct TensorOut {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    std::function<void(const std::function<void(const void*, size_t)>& put)> write;
};

// Writes a .safetensors file (header padded to 8 bytes, tensors in the order given) atomically:
// to a temporary file beside `path`, flushed and fsynced, then renamed over it. Errors name the
// file (and the tensor whose writer gave the wrong number of bytes).
void writeSafetensors(const std::string& path, const std::vector<TensorOut>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A file of named tensors mapped read-only: a .safetensors file, or a torch.save zip archive
// (checkpoint/torch_bin.h). The views stay valid while the file object lives.
class TensorFile {
public:
    virtual ~TensorFile();
    TensorFile(const TensorFile&) = delete;
    TensorFile& operator=(const TensorFile&) = delete;

    const std::string& path() const { return path_; }
    uint64_t fileSize() const { return size_; }
    // The bytes that describe the tensors (the safetensors header, the torch.save pickle), which
    // Checkpoint::fingerprint hashes.
    const std::string& headerText() const { return header_; }
    const std::map<std::string, TensorView>& tensors() const { return tensors_; }

protected:
    TensorFile() = default;
    // Opens and maps `path` read-only: a regular file of at least `minSize` bytes, else "truncated
    // WHAT: N bytes, TOOSHORT" naming `field`.
    void mapFile(const std::string& path, uint64_t minSize, const std::string& what, const std::string& tooShort,
                 const std::string& field);
    std::string path_;
    uint64_t size_ = 0;
    const uint8_t* base_ = nullptr;
    std::string header_;
    std::map<std::string, TensorView> tensors_;
};

class SafetensorsFile : public TensorFile {
public:
    static std::shared_ptr<SafetensorsFile> open(const std::string& path);
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

private:
    SafetensorsFile() = default;
    void parse();
    std::map<std::string, std::string> metadata_;
};

}  // namespace es

// Checkpoints: safetensors files (memory-mapped, header checked as untrusted input), sharded
// checkpoints through model.safetensors.index.json, and a writer.
//
// A safetensors file is: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "BF16", "shape": [R, C], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// then the data section, which the offsets index. The header is checked by every rule the
// official reader applies before any byte of a tensor is handed out: a known dtype, a shape
// whose byte size fits and matches its offsets, tensors that tile the data section exactly
// (no overlap, no gap, nothing after the last), no name twice; a malformed file gives an Error
// of kind kInvalidFile that names the file, the tensor and the problem. Parsing a header costs
// time and memory linear in its size, whatever it holds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace nvfp4moe {

enum class DType {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kF16,
  kBF16,
  kF32,
  kF64,
  kC64,
  kF8E4M3,
  kF8E5M2,
  kF8E8M0,
  kF8E4M3Fnuz,
  kF8E5M2Fnuz,
  kF6E2M3,
  kF6E3M2,
  kF4,
};

// The safetensors spelling ("BF16", "F8_E4M3", ...).
const char* to_string(DType dtype);
std::optional<DType> parse_dtype(std::string_view name);
int dtype_bits(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets within the data section
  uint64_t end = 0;

  int64_t num_elements() const;
  uint64_t num_bytes() const { return end - begin; }
};

// A parsed and checked header.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in the order of their data offsets
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // where the data section starts in the file (8 + N)
  uint64_t data_size = 0;
  std::map<std::string, size_t, std::less<>> index;  // name -> position in `tensors`

  const TensorInfo* find(std::string_view name) const;
};

// Largest header we accept, as the reference implementation does.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// The deepest nesting a valid header has: the object of tensors, a tensor's object, its shape.
inline constexpr int kMaxHeaderDepth = 3;

// Parses and checks the header of a whole safetensors file held in memory. `source` names the
// file in error messages.
SafetensorsHeader parse_safetensors(std::span<const std::byte> file, std::string_view source);

// Parses and checks a model.safetensors.index.json held in memory: its weight map (tensor name
// -> shard file name), each shard a plain file name in the index's directory. `source` names
// the file in error messages.
std::map<std::string, std::string, std::less<>> parse_safetensors_index(std::string_view text,
                                                                        std::string_view source);

class SafetensorsFile {
 public:
  // Maps the file read-only and checks its header. Anything but a regular file is refused
  // before it is read (a named pipe never blocks).
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const TensorInfo* find(std::string_view name) const { return header_.find(name); }
  // The bytes of a tensor of this file (checked in range when the header was parsed).
  std::span<const std::byte> bytes(const TensorInfo& tensor) const;

 private:
  struct Mapping;
  std::filesystem::path path_;
  std::shared_ptr<const Mapping> mapping_;
  SafetensorsHeader header_;
};

// One safetensors file, or the shards listed by a model.safetensors.index.json.
class Checkpoint {
 public:
  // `path` is a .safetensors file, an index .json file, or a directory holding an index or
  // safetensors files. An index must name every tensor of its shards exactly once, each in the
  // shard that holds it; a tensor in two shards is an error.
  static Checkpoint open(const std::filesystem::path& path);
  // The directory the checkpoint's files are in (where config.json would be).
  std::filesystem::path directory() const;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  // All tensor names, sorted.
  std::vector<std::string> tensor_names() const;
  bool contains(std::string_view name) const;
  // Throws kInvalidFile naming the checkpoint when the tensor is absent.
  const TensorInfo& info(std::string_view name) const;
  std::span<const std::byte> bytes(std::string_view name) const;
  const SafetensorsFile& shard_of(std::string_view name) const;
  // The index's weight map (empty for a single file): tensor name -> shard file name.
  const std::map<std::string, std::string, std::less<>>& weight_map() const { return weight_map_; }

 private:
  std::filesystem::path path_;
  std::filesystem::path directory_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, std::pair<size_t, size_t>, std::less<>> tensors_;  // shard, index
  std::map<std::string, std::string, std::less<>> weight_map_;
};

// Writes a safetensors file tensor by tensor, so no more than one tensor's bytes are in memory.
// The file is written under a unique temporary name beside it, flushed to the disk and renamed
// into place only once complete (see AtomicFile in core/file_io.hpp).
class SafetensorsWriter {
 public:
  using Fill = std::function<void(std::span<std::byte> out)>;

  // Adds a tensor whose bytes `fill` produces when the file is written.
  void add(std::string name, DType dtype, std::vector<int64_t> shape, Fill fill);
  // Adds a tensor whose bytes are copied from `bytes`, which must stay valid until write().
  void add(std::string name, DType dtype, std::vector<int64_t> shape,
           std::span<const std::byte> bytes);
  void set_metadata(std::map<std::string, std::string> metadata) {
    metadata_ = std::move(metadata);
  }
  size_t size() const { return entries_.size(); }

  // `progress(done, total)` is called after each tensor. An existing file at `path` is replaced
  // when `replace`, else refused.
  void write(const std::filesystem::path& path,
             const std::function<void(size_t, size_t)>& progress = {}, bool replace = true) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t num_bytes;
    Fill fill;
  };
  std::vector<Entry> entries_;
  std::set<std::string, std::less<>> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace nvfp4moe

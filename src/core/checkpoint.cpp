// Sharded checkpoints (model.safetensors.index.json) and the safetensors writer.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

#include "core/check.hpp"
#include "core/file_io.hpp"
#include "nvfp4moe/checkpoint.hpp"

namespace nvfp4moe {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxIndexBytes = 64 << 20;
constexpr int kMaxIndexDepth = 8;  // {"metadata": {...}, "weight_map": {...}} with room to spare

// A shard named by an index must be a plain file name next to the index: an untrusted index
// must not reach other directories.
void check_shard_name(std::string_view index, const std::string& name) {
  const bool plain = !name.empty() && name != "." && name != ".." &&
                     name.find('/') == std::string::npos && name.find('\\') == std::string::npos &&
                     name.find('\0') == std::string::npos;
  require(plain, ErrorKind::kInvalidFile,
          "{}: shard name '{}' is not a plain file name in the index's directory", index,
          printable(name));
}

}  // namespace

std::map<std::string, std::string, std::less<>> parse_safetensors_index(std::string_view text,
                                                                        std::string_view source) {
  require(text.size() <= kMaxIndexBytes, ErrorKind::kInvalidFile,
          "{}: {} bytes is too large for an index", source, text.size());
  const json index = parse_json(text, source, kMaxIndexDepth);
  const auto map_it = index.is_object() ? index.find("weight_map") : index.end();
  require(map_it != index.end() && map_it->is_object(), ErrorKind::kInvalidFile,
          "{}: expected an object with a 'weight_map' object", source);
  std::map<std::string, std::string, std::less<>> weight_map;
  for (const auto& [tensor, shard] : map_it->items()) {
    require(shard.is_string(), ErrorKind::kInvalidFile,
            "{}: weight_map['{}'] is not a file name string", source, printable(tensor));
    const auto& name = shard.get_ref<const std::string&>();
    check_shard_name(source, name);
    weight_map.emplace(tensor, name);
  }
  require(!weight_map.empty(), ErrorKind::kInvalidFile, "{}: the weight_map names no tensor",
          source);
  return weight_map;
}

Checkpoint Checkpoint::open(const fs::path& path) {
  Checkpoint checkpoint;
  checkpoint.path_ = path;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  require(fs::exists(status), ErrorKind::kIo, "{}: no such file or directory", path.string());

  fs::path index_path;
  std::vector<fs::path> files;
  if (fs::is_directory(status)) {
    if (fs::exists(path / "model.safetensors.index.json")) {
      index_path = path / "model.safetensors.index.json";
    } else {
      for (const auto& entry : fs::directory_iterator(path)) {
        if (entry.is_regular_file() && entry.path().extension() == ".safetensors") {
          files.push_back(entry.path());
        }
      }
      std::sort(files.begin(), files.end());
      require(!files.empty(), ErrorKind::kInvalidFile,
              "{}: directory holds neither model.safetensors.index.json nor .safetensors files",
              path.string());
    }
  } else if (path.extension() == ".json") {
    index_path = path;
  } else {
    files.push_back(path);
  }

  if (!index_path.empty()) {
    checkpoint.weight_map_ =
        parse_safetensors_index(read_small_file(index_path, kMaxIndexBytes), index_path.string());
    std::set<std::string> shard_names;
    for (const auto& [tensor, shard] : checkpoint.weight_map_) {
      if (shard_names.insert(shard).second) files.push_back(index_path.parent_path() / shard);
    }
  }

  for (const auto& file : files) checkpoint.shards_.push_back(SafetensorsFile::open(file));
  for (size_t s = 0; s < checkpoint.shards_.size(); ++s) {
    const auto& tensors = checkpoint.shards_[s].header().tensors;
    for (size_t t = 0; t < tensors.size(); ++t) {
      const auto& tensor = tensors[t];
      const auto [it, inserted] = checkpoint.tensors_.emplace(tensor.name, std::pair{s, t});
      require(inserted, ErrorKind::kInvalidFile, "{}: tensor '{}' appears in both {} and {}",
              path.string(), printable(tensor.name),
              checkpoint.shards_[it->second.first].path().string(),
              checkpoint.shards_[s].path().string());
    }
  }
  if (!index_path.empty()) {
    // The index and its shards must agree exactly: a shard written after its index (an
    // interrupted conversion, a copy from another run) holds tensors the index does not know.
    for (const auto& [tensor, shard] : checkpoint.weight_map_) {
      const auto it = checkpoint.tensors_.find(tensor);
      require(it != checkpoint.tensors_.end() &&
                  checkpoint.shards_[it->second.first].path().filename() == shard,
              ErrorKind::kInvalidFile,
              "{}: the index places tensor '{}' in {}, which does not hold it", index_path.string(),
              printable(tensor), shard);
    }
    for (const auto& [tensor, location] : checkpoint.tensors_) {
      require(checkpoint.weight_map_.count(tensor) != 0, ErrorKind::kInvalidFile,
              "{}: shard {} holds tensor '{}', which the index does not list; the index and its "
              "shards come from different writes",
              index_path.string(), checkpoint.shards_[location.first].path().filename().string(),
              printable(tensor));
    }
  }
  checkpoint.directory_ = fs::is_directory(status)
                              ? path
                              : (path.parent_path().empty() ? fs::path(".") : path.parent_path());
  return checkpoint;
}

fs::path Checkpoint::directory() const { return directory_; }

std::vector<std::string> Checkpoint::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, location] : tensors_) names.push_back(name);
  return names;
}

bool Checkpoint::contains(std::string_view name) const {
  return tensors_.find(name) != tensors_.end();
}

const TensorInfo& Checkpoint::info(std::string_view name) const {
  const auto it = tensors_.find(name);
  require(it != tensors_.end(), ErrorKind::kInvalidFile, "{}: missing tensor '{}'", path_.string(),
          name);
  const auto [shard, tensor] = it->second;
  return shards_[shard].header().tensors[tensor];
}

const SafetensorsFile& Checkpoint::shard_of(std::string_view name) const {
  info(name);
  return shards_[tensors_.find(name)->second.first];
}

std::span<const std::byte> Checkpoint::bytes(std::string_view name) const {
  return shard_of(name).bytes(info(name));
}

// ---- Writer ---------------------------------------------------------------------------------

namespace {

uint64_t byte_count(const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  uint64_t bits = static_cast<uint64_t>(dtype_bits(dtype));
  for (int64_t extent : shape) {
    require(extent >= 0, ErrorKind::kInvalidArgument, "writer: tensor '{}' has a negative extent",
            name);
    require(!__builtin_mul_overflow(bits, static_cast<uint64_t>(extent), &bits),
            ErrorKind::kInvalidArgument, "writer: tensor '{}' is too large for 64-bit byte counts",
            name);
  }
  require(bits % 8 == 0, ErrorKind::kInvalidArgument,
          "writer: tensor '{}' of {} does not fill whole bytes", name, to_string(dtype));
  return bits / 8;
}

}  // namespace

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<int64_t> shape, Fill fill) {
  require(name != "__metadata__", ErrorKind::kInvalidArgument,
          "writer: '__metadata__' is reserved and cannot name a tensor");
  require(!names_.count(name), ErrorKind::kInvalidArgument, "writer: tensor '{}' added twice",
          printable(name));
  const uint64_t num_bytes = byte_count(name, dtype, shape);
  names_.insert(name);
  entries_.push_back({std::move(name), dtype, std::move(shape), num_bytes, std::move(fill)});
}

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<int64_t> shape,
                            std::span<const std::byte> bytes) {
  const uint64_t num_bytes = byte_count(name, dtype, shape);
  require(bytes.size() == num_bytes, ErrorKind::kInvalidArgument,
          "writer: tensor '{}' needs {} bytes but {} were given", name, num_bytes, bytes.size());
  add(std::move(name), dtype, std::move(shape),
      [bytes](std::span<std::byte> out) { std::copy(bytes.begin(), bytes.end(), out.begin()); });
}

void SafetensorsWriter::write(const fs::path& path,
                              const std::function<void(size_t, size_t)>& progress,
                              bool replace) const {
  json header = json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const auto& entry : entries_) {
    header[entry.name] = {{"dtype", to_string(entry.dtype)},
                          {"shape", entry.shape},
                          {"data_offsets", {offset, offset + entry.num_bytes}}};
    offset += entry.num_bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned

  AtomicFile out(path);
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  out.write(length, 8);
  out.write(text);
  std::vector<std::byte> buffer;
  for (size_t i = 0; i < entries_.size(); ++i) {
    buffer.assign(entries_[i].num_bytes, std::byte{0});
    entries_[i].fill(buffer);
    out.write(buffer.data(), buffer.size());
    if (progress) progress(i + 1, entries_.size());
  }
  out.commit(replace);
}

}  // namespace nvfp4moe

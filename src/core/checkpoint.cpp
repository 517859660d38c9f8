// Sharded checkpoints (model.safetensors.index.json) and the safetensors writer.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>

#include "core/check.hpp"
#include "nvfp4moe/checkpoint.hpp"

namespace nvfp4moe {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxIndexBytes = 64 << 20;

json read_json_file(const fs::path& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  require(!ec, ErrorKind::kIo, "{}: cannot read: {}", path.string(), ec.message());
  require(size <= kMaxIndexBytes, ErrorKind::kInvalidFile, "{}: {} bytes is too large for an index",
          path.string(), size);
  std::ifstream in(path, std::ios::binary);
  require(in.good(), ErrorKind::kIo, "{}: cannot open", path.string());
  std::string text(size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  require(in.gcount() == static_cast<std::streamsize>(size), ErrorKind::kIo, "{}: short read",
          path.string());
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  require(!root.is_discarded(), ErrorKind::kInvalidFile, "{}: not valid JSON", path.string());
  return root;
}

// A shard named by an index must be a plain file name next to the index: an untrusted index
// must not reach other directories.
void check_shard_name(const fs::path& index, const std::string& name) {
  const bool plain = !name.empty() && name != "." && name != ".." &&
                     name.find('/') == std::string::npos && name.find('\\') == std::string::npos &&
                     name.find('\0') == std::string::npos;
  require(plain, ErrorKind::kInvalidFile,
          "{}: shard name '{}' is not a plain file name in the index's directory", index.string(),
          name);
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& path) {
  Checkpoint checkpoint;
  checkpoint.path_ = path;
  std::error_code ec;
  require(fs::exists(path, ec), ErrorKind::kIo, "{}: no such file or directory", path.string());

  fs::path index_path;
  std::vector<fs::path> files;
  if (fs::is_directory(path, ec)) {
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
    const json index = read_json_file(index_path);
    const auto map_it = index.is_object() ? index.find("weight_map") : index.end();
    require(map_it != index.end() && map_it->is_object(), ErrorKind::kInvalidFile,
            "{}: expected an object with a 'weight_map' object", index_path.string());
    std::map<std::string, size_t> shard_numbers;
    for (const auto& [tensor, shard] : map_it->items()) {
      require(shard.is_string(), ErrorKind::kInvalidFile,
              "{}: weight_map['{}'] is not a file name string", index_path.string(), tensor);
      const auto& name = shard.get_ref<const std::string&>();
      check_shard_name(index_path, name);
      checkpoint.weight_map_.emplace(tensor, name);
      if (shard_numbers.emplace(name, shard_numbers.size()).second) {
        files.push_back(index_path.parent_path() / name);
      }
    }
  }

  for (const auto& file : files) checkpoint.shards_.push_back(SafetensorsFile::open(file));
  for (size_t s = 0; s < checkpoint.shards_.size(); ++s) {
    const auto& tensors = checkpoint.shards_[s].header().tensors;
    for (size_t t = 0; t < tensors.size(); ++t) {
      const auto& tensor = tensors[t];
      const auto [it, inserted] = checkpoint.tensors_.emplace(tensor.name, std::pair{s, t});
      require(inserted, ErrorKind::kInvalidFile, "{}: tensor '{}' appears in both {} and {}",
              path.string(), tensor.name, checkpoint.shards_[it->second.first].path().string(),
              checkpoint.shards_[s].path().string());
    }
  }
  for (const auto& [tensor, shard] : checkpoint.weight_map_) {
    const auto it = checkpoint.tensors_.find(tensor);
    require(it != checkpoint.tensors_.end() &&
                checkpoint.shards_[it->second.first].path().filename() == shard,
            ErrorKind::kInvalidFile,
            "{}: the index places tensor '{}' in {}, which does not hold it", index_path.string(),
            tensor, shard);
  }
  return checkpoint;
}

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
  uint64_t elements = 1;
  for (int64_t extent : shape) {
    require(extent >= 0, ErrorKind::kInvalidArgument, "writer: tensor '{}' has a negative extent",
            name);
    elements *= static_cast<uint64_t>(extent);
  }
  const uint64_t bits = elements * static_cast<uint64_t>(dtype_bits(dtype));
  require(bits % 8 == 0, ErrorKind::kInvalidArgument,
          "writer: tensor '{}' of {} does not fill whole bytes", name, to_string(dtype));
  return bits / 8;
}

}  // namespace

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<int64_t> shape, Fill fill) {
  require(name != "__metadata__", ErrorKind::kInvalidArgument,
          "writer: '__metadata__' is reserved and cannot name a tensor");
  for (const auto& entry : entries_) {
    require(entry.name != name, ErrorKind::kInvalidArgument, "writer: tensor '{}' added twice",
            name);
  }
  const uint64_t num_bytes = byte_count(name, dtype, shape);
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
                              const std::function<void(size_t, size_t)>& progress) const {
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

  const fs::path temporary = path.string() + ".partial";
  try {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    require(out.good(), ErrorKind::kIo, "{}: cannot create", temporary.string());
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(text.size() >> (8 * i));
    out.write(reinterpret_cast<const char*>(length), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    std::vector<std::byte> buffer;
    for (size_t i = 0; i < entries_.size(); ++i) {
      buffer.assign(entries_[i].num_bytes, std::byte{0});
      entries_[i].fill(buffer);
      out.write(reinterpret_cast<const char*>(buffer.data()),
                static_cast<std::streamsize>(buffer.size()));
      require(out.good(), ErrorKind::kIo, "{}: write failed (disk full?)", temporary.string());
      if (progress) progress(i + 1, entries_.size());
    }
    out.close();
    require(!out.fail(), ErrorKind::kIo, "{}: write failed", temporary.string());
  } catch (...) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw;
  }
  std::error_code ec;
  fs::rename(temporary, path, ec);
  require(!ec, ErrorKind::kIo, "{}: cannot move into place: {}", path.string(), ec.message());
}

}  // namespace nvfp4moe

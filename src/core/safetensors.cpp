// The safetensors reader: header parsing as untrusted input, and memory-mapped files.
#include <sys/mman.h>

#include <fmt/ranges.h>
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/check.hpp"
#include "core/file_io.hpp"
#include "nvfp4moe/checkpoint.hpp"

namespace nvfp4moe {

namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  int bits;
};

constexpr std::array kDTypes = {
    DTypeEntry{DType::kBool, "BOOL", 8},
    DTypeEntry{DType::kU8, "U8", 8},
    DTypeEntry{DType::kI8, "I8", 8},
    DTypeEntry{DType::kI16, "I16", 16},
    DTypeEntry{DType::kU16, "U16", 16},
    DTypeEntry{DType::kI32, "I32", 32},
    DTypeEntry{DType::kU32, "U32", 32},
    DTypeEntry{DType::kI64, "I64", 64},
    DTypeEntry{DType::kU64, "U64", 64},
    DTypeEntry{DType::kF16, "F16", 16},
    DTypeEntry{DType::kBF16, "BF16", 16},
    DTypeEntry{DType::kF32, "F32", 32},
    DTypeEntry{DType::kF64, "F64", 64},
    DTypeEntry{DType::kC64, "C64", 64},
    DTypeEntry{DType::kF8E4M3, "F8_E4M3", 8},
    DTypeEntry{DType::kF8E5M2, "F8_E5M2", 8},
    DTypeEntry{DType::kF8E8M0, "F8_E8M0", 8},
    DTypeEntry{DType::kF8E4M3Fnuz, "F8_E4M3FNUZ", 8},
    DTypeEntry{DType::kF8E5M2Fnuz, "F8_E5M2FNUZ", 8},
    DTypeEntry{DType::kF6E2M3, "F6_E2M3", 6},
    DTypeEntry{DType::kF6E3M2, "F6_E3M2", 6},
    DTypeEntry{DType::kF4, "F4", 4},
};

const DTypeEntry& entry_of(DType dtype) {
  for (const auto& entry : kDTypes) {
    if (entry.dtype == dtype) return entry;
  }
  fail(ErrorKind::kInvalidArgument, "unknown dtype enumerator {}", static_cast<int>(dtype));
}

constexpr int kMaxRank = 16;

std::string known_dtype_names() {
  std::string names;
  for (const auto& entry : kDTypes) {
    if (!names.empty()) names += ", ";
    names += entry.name;
  }
  return names;
}

using nlohmann::json;

// What a JSON value is, for messages: never the value itself, which may be huge.
const char* kind_of(const json& value) {
  switch (value.type()) {
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_integer:
      return "a negative integer";
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a fractional number";
    default:
      return "null";
  }
}

TensorInfo parse_tensor_entry(const std::string& name, const json& entry, uint64_t data_size,
                              std::string_view source) {
  constexpr auto kFile = ErrorKind::kInvalidFile;
  const std::string shown = printable(name);
  require(entry.is_object(), kFile, "{}: tensor '{}': header entry is {}, not a JSON object",
          source, shown, kind_of(entry));
  TensorInfo info;
  info.name = name;

  const auto dtype_it = entry.find("dtype");
  require(dtype_it != entry.end() && dtype_it->is_string(), kFile,
          "{}: tensor '{}': missing string field 'dtype'", source, shown);
  const auto dtype = parse_dtype(dtype_it->get_ref<const std::string&>());
  require(dtype.has_value(), kFile, "{}: tensor '{}': unknown dtype '{}' (known: {})", source,
          shown, printable(dtype_it->get_ref<const std::string&>()), known_dtype_names());
  info.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  require(shape_it != entry.end() && shape_it->is_array(), kFile,
          "{}: tensor '{}': missing array field 'shape'", source, shown);
  require(shape_it->size() <= kMaxRank, kFile,
          "{}: tensor '{}': shape has {} dimensions, at most {}", source, shown, shape_it->size(),
          kMaxRank);
  for (size_t d = 0; d < shape_it->size(); ++d) {
    const json& dim = (*shape_it)[d];
    require(dim.is_number_unsigned(), kFile,
            "{}: tensor '{}': shape entry {} is {}, not a non-negative integer", source, shown, d,
            kind_of(dim));
    info.shape.push_back(0);
    const uint64_t extent = dim.get<uint64_t>();
    require(extent <= uint64_t{std::numeric_limits<int64_t>::max()}, kFile,
            "{}: tensor '{}': shape entry {} = {} is too large", source, shown, d, extent);
    info.shape.back() = static_cast<int64_t>(extent);
  }
  // The byte size in checked arithmetic: elements * bits must fit 64 bits, as the official
  // reader requires.
  uint64_t bits = static_cast<uint64_t>(entry_of(info.dtype).bits);
  for (const int64_t extent : info.shape) {
    if (__builtin_mul_overflow(bits, static_cast<uint64_t>(extent), &bits)) {
      fail(kFile, "{}: tensor '{}': shape [{}] of {} overflows 64-bit byte counts", source, shown,
           fmt::join(info.shape, ", "), to_string(info.dtype));
    }
  }

  const auto offsets_it = entry.find("data_offsets");
  require(offsets_it != entry.end() && offsets_it->is_array() && offsets_it->size() == 2 &&
              (*offsets_it)[0].is_number_unsigned() && (*offsets_it)[1].is_number_unsigned(),
          kFile, "{}: tensor '{}': 'data_offsets' must be two non-negative integers", source,
          shown);
  info.begin = (*offsets_it)[0].get<uint64_t>();
  info.end = (*offsets_it)[1].get<uint64_t>();
  require(info.begin <= info.end, kFile, "{}: tensor '{}': data_offsets [{}, {}] run backwards",
          source, shown, info.begin, info.end);
  require(info.end <= data_size, kFile,
          "{}: tensor '{}': data_offsets [{}, {}] end past the data section ({} bytes); the file "
          "is truncated or the header is corrupt",
          source, shown, info.begin, info.end, data_size);

  require(bits % 8 == 0, kFile, "{}: tensor '{}': shape [{}] of {} does not fill whole bytes",
          source, shown, fmt::join(info.shape, ", "), to_string(info.dtype));
  require(info.num_bytes() == bits / 8, kFile,
          "{}: tensor '{}': shape [{}] of {} needs {} bytes but data_offsets [{}, {}] hold {}",
          source, shown, fmt::join(info.shape, ", "), to_string(info.dtype), bits / 8, info.begin,
          info.end, info.num_bytes());
  return info;
}

}  // namespace

const char* to_string(DType dtype) { return entry_of(dtype).name; }

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& entry : kDTypes) {
    if (name == entry.name) return entry.dtype;
  }
  return std::nullopt;
}

int dtype_bits(DType dtype) { return entry_of(dtype).bits; }

int64_t TensorInfo::num_elements() const {
  int64_t count = 1;
  for (int64_t extent : shape) count *= extent;  // bounded: the reader checked the byte size
  return count;
}

const TensorInfo* SafetensorsHeader::find(std::string_view name) const {
  const auto it = index.find(name);
  return it == index.end() ? nullptr : &tensors[it->second];
}

SafetensorsHeader parse_safetensors(std::span<const std::byte> file, std::string_view source) {
  constexpr auto kFile = ErrorKind::kInvalidFile;
  require(file.size() >= 8, kFile,
          "{}: file has {} bytes; a safetensors file starts with an 8-byte header length", source,
          file.size());
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i)
    header_size = (header_size << 8) | std::to_integer<uint64_t>(file[i]);
  require(header_size <= kMaxHeaderBytes, kFile, "{}: header length {} exceeds the {}-byte limit",
          source, header_size, kMaxHeaderBytes);
  require(header_size <= file.size() - 8, kFile,
          "{}: header length {} runs past the end of the file ({} bytes)", source, header_size,
          file.size());
  require(header_size >= 2, kFile, "{}: header length {} is too short for a JSON object", source,
          header_size);

  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), header_size);
  const json root = parse_json(text, fmt::format("{}: header", source), kMaxHeaderDepth);
  require(root.is_object(), kFile, "{}: the header is JSON but {}, not an object", source,
          kind_of(root));

  SafetensorsHeader header;
  header.data_offset = 8 + header_size;
  header.data_size = file.size() - header.data_offset;
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      require(entry.is_object(), kFile, "{}: '__metadata__' is {}, not a JSON object", source,
              kind_of(entry));
      for (const auto& [key, value] : entry.items()) {
        require(value.is_string(), kFile, "{}: __metadata__['{}'] is {}, not a string", source,
                printable(key), kind_of(value));
        header.metadata.emplace(key, value.get<std::string>());
      }
      continue;
    }
    header.tensors.push_back(parse_tensor_entry(name, entry, header.data_size, source));
  }

  // The tensors must tile the data section: sorted by offset, each starts where the one before
  // ends, the first at 0 and the last at the end. Bytes no tensor covers are refused, as the
  // official reader refuses them.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t covered = 0;
  for (size_t i = 0; i < header.tensors.size(); ++i) {
    const auto& tensor = header.tensors[i];
    if (tensor.begin < covered) {
      const auto& previous = header.tensors[i - 1];
      fail(kFile, "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap in the data section", source,
           printable(previous.name), previous.begin, previous.end, printable(tensor.name),
           tensor.begin, tensor.end);
    }
    require(tensor.begin == covered, kFile,
            "{}: bytes [{}, {}) of the data section belong to no tensor (the next one, '{}', "
            "starts at {})",
            source, covered, tensor.begin, printable(tensor.name), tensor.begin);
    covered = tensor.end;
  }
  require(covered == header.data_size, kFile,
          "{}: the data section has {} bytes but its tensors end at {}; the rest belongs to no "
          "tensor",
          source, header.data_size, covered);
  for (size_t i = 0; i < header.tensors.size(); ++i)
    header.index.emplace(header.tensors[i].name, i);
  return header;
}

// ---- Memory-mapped files --------------------------------------------------------------------

struct SafetensorsFile::Mapping {
  const std::byte* data = nullptr;
  size_t size = 0;

  Mapping(const std::byte* d, size_t s) : data(d), size(s) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data != nullptr && size > 0) munmap(const_cast<std::byte*>(data), size);
  }
};

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  const RegularFile opened(path);
  const auto size = static_cast<size_t>(opened.size());
  const std::byte* data = nullptr;
  if (size > 0) {
    void* mapped = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, opened.fd(), 0);
    if (mapped == MAP_FAILED) {
      fail(ErrorKind::kIo, "{}: cannot map {} bytes: {}", path.string(), size,
           std::strerror(errno));
    }
    data = static_cast<const std::byte*>(mapped);
  }
  // The mapping keeps the file alive once the descriptor closes.

  SafetensorsFile file;
  file.path_ = path;
  file.mapping_ = std::make_shared<const Mapping>(data, size);
  file.header_ = parse_safetensors(std::span(data, size), path.string());
  return file;
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& tensor) const {
  require(tensor.end <= header_.data_size, ErrorKind::kInvalidArgument,
          "{}: tensor '{}' is not from this file", path_.string(), tensor.name);
  return {mapping_->data + header_.data_offset + tensor.begin, tensor.num_bytes()};
}

}  // namespace nvfp4moe

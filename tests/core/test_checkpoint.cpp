// safetensors reading (files from the official writer, a malformed corpus), sharded
// checkpoints, and our writer.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/convert.hpp"
#include "core/fixture_patterns.hpp"
#include "nvfp4moe/checkpoint.hpp"
#include "nvfp4moe/error.hpp"

namespace nvfp4moe {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;

template <typename T>
T read_at(std::span<const std::byte> bytes, size_t index) {
  T value;
  std::memcpy(&value, bytes.data() + index * sizeof(T), sizeof(T));
  return value;
}

TEST(Safetensors, ReadsEveryDtypeTheOfficialWriterWrote) {
  const auto file = SafetensorsFile::open(fixtures_dir() / "dtypes.safetensors");
  EXPECT_EQ(file.header().metadata.at("author"), "nvfp4moe tests");
  ASSERT_EQ(file.header().tensors.size(), 8u);

  const TensorInfo* u8 = file.find("u8");
  ASSERT_NE(u8, nullptr);
  EXPECT_EQ(u8->dtype, DType::kU8);
  EXPECT_EQ(u8->shape, (std::vector<int64_t>{3, 5}));
  const auto u8_bytes = file.bytes(*u8);
  ASSERT_EQ(u8_bytes.size(), 15u);
  for (size_t i = 0; i < 15; ++i) EXPECT_EQ(std::to_integer<int>(u8_bytes[i]), int(i));

  const auto i32 = file.bytes(*file.find("i32"));
  EXPECT_EQ(read_at<int32_t>(i32, 0), -2);
  EXPECT_EQ(read_at<int32_t>(i32, 3), 1);

  std::vector<float> f32(4), bf16(3), f16(2);
  convert_to_float(DType::kF32, file.bytes(*file.find("f32")), f32);
  convert_to_float(DType::kBF16, file.bytes(*file.find("bf16")), bf16);
  convert_to_float(DType::kF16, file.bytes(*file.find("f16")), f16);
  EXPECT_EQ(f32, (std::vector<float>{0.5f, 1.5f, -2.0f, 3.0f}));
  EXPECT_EQ(bf16, (std::vector<float>{1.0f, -2.0f, 0.5f}));
  EXPECT_EQ(f16, (std::vector<float>{1.0f, -0.5f}));

  const TensorInfo* e4m3 = file.find("e4m3");
  EXPECT_EQ(e4m3->dtype, DType::kF8E4M3);
  EXPECT_EQ(std::to_integer<int>(file.bytes(*e4m3)[1]), 0x7E);

  const TensorInfo* scalar = file.find("scalar");
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->num_elements(), 1);
  EXPECT_EQ(read_at<float>(file.bytes(*scalar), 0), 7.25f);

  const TensorInfo* empty = file.find("empty");
  EXPECT_EQ(empty->num_elements(), 0);
  EXPECT_EQ(file.bytes(*empty).size(), 0u);
  EXPECT_EQ(file.find("absent"), nullptr);
}

TEST(Safetensors, F16ConversionCoversSubnormalsAndSpecials) {
  EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_float(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_float(0xFC00)));
  EXPECT_TRUE(std::isnan(f16_to_float(0x7E00)));
  EXPECT_EQ(f16_to_float(0x8000), -0.0f);
  EXPECT_TRUE(std::signbit(f16_to_float(0x8000)));
}

// Every file of the malformed corpus is rejected with an Error naming the problem.
TEST(Safetensors, MalformedFilesGiveErrorsThatNameTheProblem) {
  const fs::path dir = fixtures_dir() / "malformed";
  std::ifstream in(dir / "expected.json");
  ASSERT_TRUE(in.good());
  const auto expected = nlohmann::json::parse(in);
  ASSERT_GE(expected.size(), 20u);
  for (const auto& [name, message] : expected.items()) {
    SCOPED_TRACE(name);
    try {
      SafetensorsFile::open(dir / name);
      ADD_FAILURE() << name << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidFile);
      const std::string what = e.what();
      EXPECT_NE(what.find(message.get<std::string>()), std::string::npos) << what;
      EXPECT_NE(what.find(name), std::string::npos) << "message does not name the file: " << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << "message is not one line: " << what;
    }
  }
}

// Every prefix of a valid file is rejected, never read past.
TEST(Safetensors, EveryTruncationIsRejected) {
  std::ifstream in(fixtures_dir() / "dtypes.safetensors", std::ios::binary);
  const std::string whole((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(whole.size(), 100u);
  const auto* bytes = reinterpret_cast<const std::byte*>(whole.data());
  EXPECT_NO_THROW(parse_safetensors(std::span(bytes, whole.size()), "whole"));
  for (size_t size = 0; size < whole.size(); ++size) {
    EXPECT_THROW(parse_safetensors(std::span(bytes, size), "prefix"), Error) << size;
  }
}

TEST(Safetensors, MissingFileIsAnIoError) {
  try {
    SafetensorsFile::open(fixtures_dir() / "no_such.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("no_such.safetensors"), std::string::npos);
  }
}

TEST(Checkpoint, OpensAShardedCheckpointByDirectoryIndexOrFile) {
  const fs::path dir = fixtures_dir() / "modelopt_hf";
  const auto by_dir = Checkpoint::open(dir);
  const auto by_index = Checkpoint::open(dir / "model.safetensors.index.json");
  EXPECT_EQ(by_dir.shards().size(), 2u);
  EXPECT_EQ(by_dir.tensor_names(), by_index.tensor_names());
  const std::string name = "model.layers.3.mlp.experts.2.down_proj.weight";
  EXPECT_EQ(by_dir.shard_of(name).path().filename(), "model-00002-of-00002.safetensors");
  EXPECT_EQ(by_dir.weight_map().at(name), "model-00002-of-00002.safetensors");
  const auto bytes = by_dir.bytes(name);
  ASSERT_EQ(bytes.size(), 64u * 32 / 2);
  for (size_t i = 0; i < bytes.size(); ++i) {
    ASSERT_EQ(std::to_integer<uint8_t>(bytes[i]), testing::weight_byte(3, 2, testing::kDown, i));
  }
  const auto one_file = Checkpoint::open(dir / "model-00001-of-00002.safetensors");
  EXPECT_EQ(one_file.shards().size(), 1u);
  EXPECT_FALSE(one_file.contains(name));
  try {
    one_file.info(name);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor '" + name + "'"), std::string::npos);
  }
}

TEST(Checkpoint, MalformedIndexesAreRejected) {
  const fs::path dir = fixtures_dir() / "malformed_index";
  std::ifstream in(dir / "expected.json");
  const auto expected = nlohmann::json::parse(in);
  ASSERT_EQ(expected.size(), 7u);
  for (const auto& [name, message] : expected.items()) {
    SCOPED_TRACE(name);
    try {
      Checkpoint::open(dir / name);
      ADD_FAILURE() << name << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message.get<std::string>()), std::string::npos)
          << e.what();
    }
  }
}

TEST(Writer, RoundTripsThroughTheReader) {
  const fs::path path = fs::temp_directory_path() / "nvfp4moe_writer_test.safetensors";
  const std::vector<float> f32 = {1.0f, -2.0f, 3.5f};
  SafetensorsWriter writer;
  writer.set_metadata({{"k", "v"}});
  writer.add("f32", DType::kF32, {3}, std::as_bytes(std::span(f32)));
  writer.add("made", DType::kU8, {2, 2}, [](std::span<std::byte> out) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = std::byte(10 + i);
  });
  writer.add("scalar", DType::kF32, {}, [](std::span<std::byte> out) {
    const float v = 0.125f;
    std::memcpy(out.data(), &v, 4);
  });
  writer.write(path);

  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file.header().data_offset % 8, 0u);
  EXPECT_EQ(file.header().metadata.at("k"), "v");
  EXPECT_EQ(read_at<float>(file.bytes(*file.find("f32")), 2), 3.5f);
  EXPECT_EQ(std::to_integer<int>(file.bytes(*file.find("made"))[3]), 13);
  EXPECT_EQ(read_at<float>(file.bytes(*file.find("scalar")), 0), 0.125f);
  fs::remove(path);
}

TEST(Writer, RejectsBadTensorsAndLeavesNoPartialFile) {
  SafetensorsWriter writer;
  const std::vector<float> f32 = {1.0f};
  EXPECT_THROW(writer.add("x", DType::kF32, {2}, std::as_bytes(std::span(f32))), Error);
  EXPECT_THROW(writer.add("__metadata__", DType::kF32, {1}, std::as_bytes(std::span(f32))), Error);
  writer.add("x", DType::kF32, {1}, std::as_bytes(std::span(f32)));
  EXPECT_THROW(writer.add("x", DType::kF32, {1}, std::as_bytes(std::span(f32))), Error);
  writer.add("fails", DType::kU8, {4}, [](std::span<std::byte>) {
    throw Error(ErrorKind::kInvalidArgument, "producer failed");
  });
  const fs::path dir = fs::temp_directory_path() / "nvfp4moe_writer_fail";
  fs::remove_all(dir);
  fs::create_directories(dir);
  EXPECT_THROW(writer.write(dir / "out.safetensors"), Error);
  EXPECT_TRUE(fs::is_empty(dir)) << "a failed write left a file behind";
  fs::remove_all(dir);
}

// A failed write never damages the file it would have replaced, and a file that must not be
// replaced is kept.
TEST(Writer, AFailedWriteLeavesTheOldFileAsItWas) {
  const fs::path dir = fs::temp_directory_path() / "nvfp4moe_writer_keep";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path path = dir / "model.safetensors";
  const std::vector<float> f32 = {1.0f, 2.0f};
  SafetensorsWriter good;
  good.add("x", DType::kF32, {2}, std::as_bytes(std::span(f32)));
  good.write(path);
  SafetensorsWriter bad;
  bad.add("y", DType::kU8, {4},
          [](std::span<std::byte>) { throw Error(ErrorKind::kIo, "disk full"); });
  EXPECT_THROW(bad.write(path), Error);
  EXPECT_NE(SafetensorsFile::open(path).find("x"), nullptr);
  EXPECT_THROW(good.write(path, {}, /*replace=*/false), Error);
  EXPECT_NE(SafetensorsFile::open(path).find("x"), nullptr);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  fs::remove_all(dir);
}

// Many tensors cost linear time to write and read (a name check once made it quadratic).
TEST(Writer, HundredThousandTensorsRoundTrip) {
  const fs::path path = fs::temp_directory_path() / "nvfp4moe_many.safetensors";
  const std::vector<uint8_t> bytes = {1, 2, 3};
  SafetensorsWriter writer;
  for (int i = 0; i < 100000; ++i) {
    writer.add("t." + std::to_string(i), DType::kU8, {3}, std::as_bytes(std::span(bytes)));
  }
  writer.write(path);
  const auto checkpoint = Checkpoint::open(path);
  EXPECT_EQ(checkpoint.tensor_names().size(), 100000u);
  EXPECT_EQ(std::to_integer<int>(checkpoint.bytes("t.99999")[2]), 3);
  fs::remove(path);
}

// Anything but a regular file is refused before it is read: a named pipe would block forever.
TEST(Checkpoint, NamedPipesAndDirectoriesAreRefusedWithoutBlocking) {
  const fs::path dir = fs::temp_directory_path() / "nvfp4moe_fifo";
  fs::remove_all(dir);
  fs::create_directories(dir / "sharded");
  ASSERT_EQ(mkfifo((dir / "pipe.safetensors").c_str(), 0600), 0);
  ASSERT_EQ(mkfifo((dir / "sharded" / "shard.safetensors").c_str(), 0600), 0);
  std::ofstream(dir / "sharded" / "model.safetensors.index.json")
      << R"({"weight_map": {"a": "shard.safetensors"}})";
  ASSERT_EQ(mkfifo((dir / "index.json").c_str(), 0600), 0);
  fs::create_directories(dir / "dir.safetensors");
  const std::vector<std::pair<fs::path, std::string>> cases = {
      {dir / "pipe.safetensors", "is a named pipe, expected a regular file"},
      {dir / "sharded", "shard.safetensors: is a named pipe"},
      {dir / "index.json", "index.json: is a named pipe"},
      {dir / "dir.safetensors" / ".." / "dir.safetensors", "neither model.safetensors.index.json"},
  };
  for (const auto& [path, message] : cases) {
    try {
      Checkpoint::open(path);
      ADD_FAILURE() << path << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(SafetensorsFile::open(dir / "dir.safetensors"), Error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace nvfp4moe

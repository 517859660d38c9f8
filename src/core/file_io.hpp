// Files as untrusted input and as output that must not be lost.
//
// Reading: every file is opened without blocking (a named pipe or a device never stalls us) and
// refused unless it is a regular file; JSON is parsed with a bounded nesting depth and with
// duplicate keys refused, so a crafted file costs time linear in its size and nothing else.
//
// Writing: a file is written under a unique temporary name in its final directory, flushed to
// the disk (fsync), and renamed into place, so a reader sees the old file or the whole new one,
// never a part of it; StagingDirectory does the same for a directory of files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace nvfp4moe {

// An open file descriptor of a regular file for reading; the constructor refuses anything else
// (with kIo naming the path) before a byte is read.
class RegularFile {
 public:
  explicit RegularFile(const std::filesystem::path& path);
  ~RegularFile();
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;

  int fd() const { return fd_; }
  uint64_t size() const { return size_; }

 private:
  int fd_ = -1;
  uint64_t size_ = 0;
};

// The whole of a small regular file; kInvalidFile when it holds more than `max_bytes`.
std::string read_small_file(const std::filesystem::path& path, uint64_t max_bytes);

// Parses JSON from an untrusted source: kInvalidFile naming `source` for invalid JSON, nesting
// deeper than `max_depth` (checked before parsing, so no recursion or memory grows with it),
// or an object that holds a key twice.
nlohmann::json parse_json(std::string_view text, std::string_view source, int max_depth);

// read_small_file + parse_json.
nlohmann::json read_json_file(const std::filesystem::path& path, uint64_t max_bytes, int max_depth);

// A file being written: `path` receives it only through commit(), which flushes it to the disk
// and renames it into place; destroyed without commit(), it leaves nothing behind.
class AtomicFile {
 public:
  // Creates the temporary file beside `path` (mode 0644 before the umask).
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends bytes; kIo naming the file when the system refuses (disk full, size limit).
  void write(const void* data, size_t size);
  void write(std::string_view text) { write(text.data(), text.size()); }
  // fsync, then rename over `path` (replace: an existing file is replaced; otherwise an
  // existing file is an error and stays as it was), then fsync the directory.
  void commit(bool replace = true);

 private:
  std::filesystem::path path_;
  std::filesystem::path temporary_;
  int fd_ = -1;
};

// Writes `contents` to `path` through an AtomicFile.
void write_file_atomically(const std::filesystem::path& path, std::string_view contents);

// A directory being built: files go into a private temporary directory beside `target` (named
// after it, so an interrupted run is easy to recognize), and commit() publishes it as `target`
// by a rename. Destroyed without commit(), it removes what it wrote.
class StagingDirectory {
 public:
  explicit StagingDirectory(std::filesystem::path target);
  ~StagingDirectory();
  StagingDirectory(const StagingDirectory&) = delete;
  StagingDirectory& operator=(const StagingDirectory&) = delete;

  const std::filesystem::path& path() const { return staging_; }
  // Publishes the staged directory as the target. A target that exists and is not an empty
  // directory is refused unless `replace`, which swaps it out whole and then deletes it.
  void commit(bool replace);

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
  bool committed_ = false;
};

// fsync of a directory, so that the renames inside it survive a crash.
void sync_directory(const std::filesystem::path& directory);

// True when `path` names an existing, non-empty directory or an existing file of any kind.
bool occupied(const std::filesystem::path& path);

}  // namespace nvfp4moe

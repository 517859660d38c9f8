// Reading untrusted files and writing files that a failure or a kill cannot leave half-done.
#include "core/file_io.hpp"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <vector>

#include "core/check.hpp"

namespace nvfp4moe {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string system_error(int error) { return std::strerror(error); }

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a named pipe";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

RegularFile::RegularFile(const fs::path& path) {
  // O_NONBLOCK: opening a named pipe for reading would otherwise wait for a writer forever.
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd_ < 0) fail(ErrorKind::kIo, "{}: cannot open: {}", path.string(), system_error(errno));
  struct stat st {};
  if (fstat(fd_, &st) != 0) {
    const int error = errno;
    ::close(fd_);
    fail(ErrorKind::kIo, "{}: cannot stat: {}", path.string(), system_error(error));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    fail(ErrorKind::kIo, "{}: is {}, expected a regular file", path.string(),
         file_kind(st.st_mode));
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::string read_small_file(const fs::path& path, uint64_t max_bytes) {
  const RegularFile file(path);
  require(file.size() <= max_bytes, ErrorKind::kInvalidFile,
          "{}: {} bytes is more than the {} bytes such a file may have", path.string(), file.size(),
          max_bytes);
  std::string text(file.size(), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t got = ::read(file.fd(), text.data() + done, text.size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(ErrorKind::kIo, "{}: read failed: {}", path.string(), system_error(errno));
    if (got == 0) break;  // the file shrank while we read it
    done += static_cast<size_t>(got);
  }
  require(done == text.size(), ErrorKind::kIo, "{}: the file shrank from {} to {} bytes while read",
          path.string(), text.size(), done);
  return text;
}

namespace {

// Builds the value as nlohmann's own DOM parser does, refusing a key that an object already
// holds (the library's parser lets the last one win, and its callback variant costs time
// quadratic in the number of keys).
struct JsonBuilder final : nlohmann::json_sax<json> {
  json root;
  std::vector<json*> open;  // the objects and arrays being filled, innermost last
  std::string next_key;     // of the next value, when the innermost is an object
  std::string duplicate;
  std::string error;

  bool add(json value) {
    if (open.empty()) {
      root = std::move(value);
      return true;
    }
    json& parent = *open.back();
    if (parent.is_array()) {
      parent.push_back(std::move(value));
      return true;
    }
    const auto [it, inserted] =
        parent.get_ref<json::object_t&>().emplace(next_key, std::move(value));
    if (!inserted) {
      duplicate = next_key;
      return false;
    }
    return true;
  }
  bool begin(json value) {
    if (!add(std::move(value))) return false;
    json& parent = open.empty() ? root : *open.back();
    open.push_back(open.empty() ? &root : parent.is_array() ? &parent.back() : &parent[next_key]);
    return true;
  }

  bool null() override { return add(nullptr); }
  bool boolean(bool value) override { return add(value); }
  bool number_integer(number_integer_t value) override { return add(value); }
  bool number_unsigned(number_unsigned_t value) override { return add(value); }
  bool number_float(number_float_t value, const string_t&) override { return add(value); }
  bool string(string_t& value) override { return add(std::move(value)); }
  bool binary(binary_t&) override { return false; }  // never produced by JSON text
  bool start_object(std::size_t) override { return begin(json::object()); }
  bool key(string_t& value) override {
    next_key = std::move(value);
    return true;
  }
  bool end_object() override {
    open.pop_back();
    return true;
  }
  bool start_array(std::size_t) override { return begin(json::array()); }
  bool end_array() override {
    open.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error = e.what();
    return false;
  }
};

}  // namespace

json parse_json(std::string_view text, std::string_view source, int max_depth) {
  // Nesting is measured before parsing: the parser's own stacks and the values it builds would
  // otherwise grow with it, and printing a deep value recurses.
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      require(++depth <= max_depth, ErrorKind::kInvalidFile,
              "{}: JSON nested more than {} levels deep at byte {}; this file has at most {}",
              source, max_depth, i, max_depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }

  JsonBuilder builder;
  const bool parsed = json::sax_parse(text.data(), text.data() + text.size(), &builder,
                                      json::input_format_t::json, /*strict=*/true);
  require(builder.duplicate.empty(), ErrorKind::kInvalidFile,
          "{}: key '{}' appears twice in one JSON object", source, printable(builder.duplicate));
  require(parsed, ErrorKind::kInvalidFile, "{}: not valid JSON ({} bytes): {}", source, text.size(),
          builder.error);
  return std::move(builder.root);
}

json read_json_file(const fs::path& path, uint64_t max_bytes, int max_depth) {
  return parse_json(read_small_file(path, max_bytes), path.string(), max_depth);
}

// ---- Writing ------------------------------------------------------------------------------

namespace {

void write_all(int fd, const void* data, size_t size, const fs::path& shown) {
  const auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t put = ::write(fd, bytes, size);
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) {
      fail(ErrorKind::kIo, "{}: write failed: {}", shown.string(), system_error(errno));
    }
    bytes += put;
    size -= static_cast<size_t>(put);
  }
}

fs::path directory_of(const fs::path& path) {
  const fs::path parent = path.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

// "dir/.name.partial-XXXXXX": hidden, beside `path`, and named after it.
std::string temporary_pattern(const fs::path& path) {
  std::string name = ".";
  name.append(path.filename().string());
  name.append(".partial-XXXXXX");
  return (directory_of(path) / name).string();
}

}  // namespace

void sync_directory(const fs::path& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(ErrorKind::kIo, "{}: cannot open: {}", directory.string(), system_error(errno));
  const int result = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  // Some file systems cannot sync a directory (EINVAL); their renames are as durable as they get.
  require(result == 0 || error == EINVAL, ErrorKind::kIo, "{}: fsync failed: {}",
          directory.string(), system_error(error));
}

AtomicFile::AtomicFile(fs::path path) : path_(std::move(path)) {
  std::string pattern = temporary_pattern(path_);
  fd_ = ::mkostemp(pattern.data(), O_CLOEXEC);
  if (fd_ < 0) {
    fail(ErrorKind::kIo, "{}: cannot create a file in {}: {}", path_.string(),
         directory_of(path_).string(), system_error(errno));
  }
  temporary_ = pattern;
  ::fchmod(fd_, 0644);  // mkostemp makes 0600; checkpoints are read by others too
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!temporary_.empty()) ::unlink(temporary_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  require(fd_ >= 0, ErrorKind::kInvalidArgument, "{}: written after commit", path_.string());
  write_all(fd_, data, size, path_);
}

void AtomicFile::commit(bool replace) {
  require(fd_ >= 0, ErrorKind::kInvalidArgument, "{}: committed twice", path_.string());
  if (::fsync(fd_) != 0) {
    fail(ErrorKind::kIo, "{}: fsync failed: {}", path_.string(), system_error(errno));
  }
  const int result = ::close(fd_);
  fd_ = -1;
  if (result != 0)
    fail(ErrorKind::kIo, "{}: close failed: {}", path_.string(), system_error(errno));
  if (replace) {
    if (::rename(temporary_.c_str(), path_.c_str()) != 0) {
      fail(ErrorKind::kIo, "{}: cannot move into place: {}", path_.string(), system_error(errno));
    }
  } else {
    // A hard link fails if the name exists, so a file that appeared meanwhile is kept.
    if (::link(temporary_.c_str(), path_.c_str()) != 0) {
      fail(ErrorKind::kIo, "{}: cannot move into place: {}", path_.string(), system_error(errno));
    }
    ::unlink(temporary_.c_str());
  }
  temporary_.clear();
  sync_directory(directory_of(path_));
}

void write_file_atomically(const fs::path& path, std::string_view contents) {
  AtomicFile file(path);
  file.write(contents);
  file.commit();
}

bool occupied(const fs::path& path) {
  std::error_code error;
  const auto status = fs::symlink_status(path, error);
  if (error || !fs::exists(status)) return false;
  if (!fs::is_directory(status)) return true;
  return !fs::is_empty(path, error) || error;
}

StagingDirectory::StagingDirectory(fs::path target) : target_(std::move(target)) {
  if (target_.filename().empty()) target_ = target_.parent_path();  // "out/" names "out"
  std::string pattern = temporary_pattern(target_);
  if (::mkdtemp(pattern.data()) == nullptr) {
    fail(ErrorKind::kIo, "{}: cannot create a directory in {}: {}", target_.string(),
         directory_of(target_).string(), system_error(errno));
  }
  staging_ = pattern;
  ::chmod(staging_.c_str(), 0755);  // mkdtemp makes 0700
}

StagingDirectory::~StagingDirectory() {
  if (committed_ || staging_.empty()) return;
  std::error_code ignored;
  fs::remove_all(staging_, ignored);
}

void StagingDirectory::commit(bool replace) {
  require(!committed_, ErrorKind::kInvalidArgument, "{}: committed twice", target_.string());
  for (const auto& entry : fs::directory_iterator(staging_)) {
    if (entry.is_regular_file()) {
      const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 || ::fsync(fd) != 0) {
        const int error = errno;
        if (fd >= 0) ::close(fd);
        fail(ErrorKind::kIo, "{}: fsync failed: {}", entry.path().string(), system_error(error));
      }
      ::close(fd);
    }
  }
  sync_directory(staging_);
  const fs::path parent = directory_of(target_);
  // rename(2) replaces an empty directory and refuses a non-empty one, atomically; so two runs
  // into one target never mix, and a target filled meanwhile is never merged into.
  if (::rename(staging_.c_str(), target_.c_str()) == 0) {
    committed_ = true;
    sync_directory(parent);
    return;
  }
  const int error = errno;
  const bool target_taken =
      error == ENOTEMPTY || error == EEXIST || error == ENOTDIR || error == EISDIR;
  require(target_taken, ErrorKind::kIo, "{}: cannot move {} into place: {}", target_.string(),
          staging_.string(), system_error(error));
  require(replace, ErrorKind::kIo,
          "{}: exists and is not empty (it was filled while this run wrote; nothing was changed)",
          target_.string());
  // Replace whole: swap the two atomically where the file system can, then delete the old.
  if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    committed_ = true;
    sync_directory(parent);
    std::error_code ignored;
    fs::remove_all(staging_, ignored);
    return;
  }
  // Otherwise move the old target aside first (a kill in between leaves no target, never a
  // mixed one).
  const fs::path old = staging_.string() + ".old";
  if (::rename(target_.c_str(), old.c_str()) != 0) {
    fail(ErrorKind::kIo, "{}: cannot move the existing target aside: {}", target_.string(),
         system_error(errno));
  }
  if (::rename(staging_.c_str(), target_.c_str()) != 0) {
    const int second = errno;
    ::rename(old.c_str(), target_.c_str());  // put the old one back
    fail(ErrorKind::kIo, "{}: cannot move {} into place: {}", target_.string(), staging_.string(),
         system_error(second));
  }
  committed_ = true;
  sync_directory(parent);
  std::error_code ignored;
  fs::remove_all(old, ignored);
}

}  // namespace nvfp4moe

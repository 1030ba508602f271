// Incremental SHA-256 (OpenSSL EVP), for the hash chain and for checkpoint digests on the fly.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace ckptledger {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(const void* data, size_t size);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // Lowercase hex of the digest; the object must not be updated afterwards.
  std::string hex_digest();

  static std::string hex(std::string_view data);
  // Digest of a whole file; throws Error(kNotFound/kIOError) naming the path.
  static std::string file_hex(const std::string& path, uint64_t* size_out = nullptr);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptledger

// Where a remote store is: `ssh://[user@]host[:port]/path` (a store
// directory on that host, reached by running `kvmcdp serve --stdio` there
// through the system's ssh client) or `tls://host:port/name` (store `name`
// under a `kvmcdp serve --listen` store root; `tcps://` is the same) or
// `tcp://host:port/name` (the same in the clear).
#pragma once

#include <string>

#include "base/status.h"

namespace kvmcdp {

struct RemoteUrl {
  enum class Kind { kSsh, kTcp, kTls } kind = Kind::kTcp;
  // tcp:// or tls://: a `serve --listen` store root, stores by name.
  bool served() const { return kind != Kind::kSsh; }
  std::string user;   // ssh only, may be empty
  std::string host;   // without brackets for IPv6
  std::string port;   // may be empty for ssh (ssh's default)
  std::string path;   // ssh: the remote store directory; tcp, tls: store name
  std::string to_string() const;
};

// kUsage with the reason for anything else.
Result<RemoteUrl> parse_remote_url(const std::string& url);

// A store name as `serve` accepts it: one path component of letters,
// digits, '.', '_' and '-', not starting with '.', at most 128 bytes.
// Nothing else can name a directory outside the store root.
bool valid_store_name(const std::string& name);

}  // namespace kvmcdp

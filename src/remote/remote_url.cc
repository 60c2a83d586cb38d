#include "remote/remote_url.h"

#include <fmt/format.h>

namespace kvmcdp {

bool valid_store_name(const std::string& name) {
  if (name.empty() || name.size() > 128 || name[0] == '.' || name[0] == '-') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string RemoteUrl::to_string() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  if (kind == Kind::kTcp) return fmt::format("tcp://{}:{}/{}", h, port, path);
  if (kind == Kind::kTls) return fmt::format("tls://{}:{}/{}", h, port, path);
  std::string s = "ssh://";
  if (!user.empty()) s += user + "@";
  s += h;
  if (!port.empty()) s += ":" + port;
  return s + path;
}

Result<RemoteUrl> parse_remote_url(const std::string& url) {
  auto bad = [&](const std::string& why) {
    return Status(ErrorKind::kUsage, fmt::format("--remote {}: {}", url, why));
  };
  RemoteUrl r;
  std::string rest;
  if (url.rfind("ssh://", 0) == 0) {
    r.kind = RemoteUrl::Kind::kSsh;
    rest = url.substr(6);
  } else if (url.rfind("tcp://", 0) == 0) {
    r.kind = RemoteUrl::Kind::kTcp;
    rest = url.substr(6);
  } else if (url.rfind("tls://", 0) == 0 || url.rfind("tcps://", 0) == 0) {
    r.kind = RemoteUrl::Kind::kTls;
    rest = url.substr(url.find("://") + 3);
  } else {
    return bad("expected tls://host:port/name, ssh://[user@]host[:port]/path or "
               "tcp://host:port/name");
  }
  size_t slash = rest.find('/');
  if (slash == std::string::npos) return bad("no store path after the host");
  std::string authority = rest.substr(0, slash);
  std::string path = rest.substr(slash);
  if (size_t at = authority.rfind('@'); at != std::string::npos) {
    if (r.served()) return bad("tcp:// and tls:// take no user name");
    r.user = authority.substr(0, at);
    authority = authority.substr(at + 1);
    if (r.user.empty()) return bad("empty user name");
  }
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string::npos) return bad("unclosed '[' in the host");
    r.host = authority.substr(1, close - 1);
    std::string after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("junk after the host");
      r.port = after.substr(1);
    }
  } else if (size_t colon = authority.find(':'); colon != std::string::npos) {
    r.host = authority.substr(0, colon);
    r.port = authority.substr(colon + 1);
    if (r.port.empty()) return bad("empty port");
  } else {
    r.host = authority;
  }
  if (r.host.empty()) return bad("no host");
  if (!r.port.empty()) {
    if (r.port.find_first_not_of("0123456789") != std::string::npos || r.port.size() > 5 ||
        std::stoul(r.port) == 0 || std::stoul(r.port) > 65535)
      return bad("the port is not a number from 1 to 65535");
  }
  if (r.served()) {
    if (r.port.empty()) return bad("tcp:// and tls:// need a port");
    r.path = path.substr(1);
    if (!valid_store_name(r.path))
      return bad("the store name must be one path component of letters, digits, '.', '_', '-'");
  } else {
    // ssh://host/srv/x is /srv/x; ssh://host/./x and ssh://host/~/x are
    // relative to the remote home, as with borg.
    if (path.rfind("/./", 0) == 0 || path.rfind("/~/", 0) == 0) path = path.substr(3);
    if (path.empty() || path == "/") return bad("no store path after the host");
    r.path = path;
  }
  return r;
}

}  // namespace kvmcdp

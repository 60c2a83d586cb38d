#include "capture/nbd_server_wire.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "kvmcdp/nbd_format.h"

namespace kvmcdp::nbd {

using Clock = std::chrono::steady_clock;

void put16(std::vector<uint8_t>* b, uint16_t v) {
  b->push_back(uint8_t(v >> 8));
  b->push_back(uint8_t(v));
}
void put32(std::vector<uint8_t>* b, uint32_t v) {
  put16(b, uint16_t(v >> 16));
  put16(b, uint16_t(v));
}
void put64(std::vector<uint8_t>* b, uint64_t v) {
  put32(b, uint32_t(v >> 32));
  put32(b, uint32_t(v));
}

Status protocol_error(const std::string& what) {
  return Status(ErrorKind::kQemu, "NBD client: " + what);
}

Status send_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd pf{fd, POLLOUT, 0};
      ::poll(&pf, 1, 1000);
      continue;
    }
    if (w <= 0)
      return Status(ErrorKind::kQemu, fsutil::errno_message("send", "NBD"), Cause::kConnectionLost);
    p += w;
    n -= size_t(w);
  }
  return Status::ok();
}

Status recv_exact(int fd, uint8_t* p, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd pf{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&pf, 1, int(left.count())) == 0)
      return Status(ErrorKind::kQemu, "NBD client: the handshake did not finish in time",
                    Cause::kTimeout);
    ssize_t r = ::recv(fd, p, n, MSG_DONTWAIT);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r == 0) return Status(ErrorKind::kQemu, "NBD client closed the connection", Cause::kPeerClosed);
    if (r < 0)
      return Status(ErrorKind::kQemu, fsutil::errno_message("recv", "NBD"), Cause::kConnectionLost);
    p += r;
    n -= size_t(r);
  }
  return Status::ok();
}

namespace {

Status option_reply(int fd, uint32_t option, uint32_t type, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b;
  put64(&b, kOptReplyMagic);
  put32(&b, option);
  put32(&b, type);
  put32(&b, uint32_t(data.size()));
  b.insert(b.end(), data.begin(), data.end());
  return send_all(fd, b.data(), b.size());
}

}  // namespace

Status server_handshake(int fd, const ExportInfo& e, int timeout_ms, Negotiated* chosen) {
  Negotiated own;
  Negotiated& got = chosen ? *chosen : own;
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::vector<uint8_t> hello;
  put64(&hello, kNbdMagic);
  put64(&hello, kIHaveOpt);
  put16(&hello, kFixedNewstyle | kNoZeroes);
  if (Status s = send_all(fd, hello.data(), hello.size()); !s) return s;
  uint8_t cf[4];
  if (Status s = recv_exact(fd, cf, 4, deadline); !s) return s;
  uint32_t client_flags = get32(cf);
  if (!(client_flags & kFixedNewstyle)) return protocol_error("no fixed newstyle handshake");
  const bool no_zeroes = client_flags & kNoZeroes;
  auto name_ok = [&](const uint8_t* p, size_t n) {
    return e.any_name || std::string(reinterpret_cast<const char*>(p), n) == e.name;
  };
  for (;;) {
    uint8_t h[kOptionHeaderSize];
    if (Status s = recv_exact(fd, h, sizeof h, deadline); !s) return s;
    if (get64(h) != kIHaveOpt) return protocol_error("bad option magic");
    uint32_t option = get32(h + 8), len = get32(h + 12);
    if (len > 65536) return protocol_error(fmt::format("option {} of {} bytes", option, len));
    std::vector<uint8_t> data(len);
    if (Status s = recv_exact(fd, data.data(), len, deadline); !s) return s;
    switch (option) {
      case kOptExportName: {
        // No way to refuse politely here: a wrong name ends the connection.
        if (!name_ok(data.data(), len))
          return protocol_error(fmt::format("asked for export \"{}\"",
                                            std::string(data.begin(), data.end())));
        std::vector<uint8_t> b;
        put64(&b, e.size);
        put16(&b, e.transmission_flags);
        if (!no_zeroes) b.resize(b.size() + 124, 0);
        return send_all(fd, b.data(), b.size());
      }
      case kOptAbort:
        option_reply(fd, option, kRepAck, {});
        return protocol_error("the client aborted the handshake");
      case kOptList: {
        std::vector<uint8_t> name;
        put32(&name, uint32_t(e.name.size()));
        name.insert(name.end(), e.name.begin(), e.name.end());
        if (Status s = option_reply(fd, option, kRepServer, name); !s) return s;
        if (Status s = option_reply(fd, option, kRepAck, {}); !s) return s;
        break;
      }
      case kOptInfo:
      case kOptGo: {
        // u32 name length, name, u16 count, count x u16 info requests.
        if (len < 6 || get32(data.data()) > len - 6) {
          if (Status s = option_reply(fd, option, kRepErrInvalid, {}); !s) return s;
          break;
        }
        uint32_t name_len = get32(data.data());
        uint16_t n = get16(data.data() + 4 + name_len);
        if (6ull + name_len + 2ull * n != len) {
          if (Status s = option_reply(fd, option, kRepErrInvalid, {}); !s) return s;
          break;
        }
        if (!name_ok(data.data() + 4, name_len)) {
          if (Status s = option_reply(fd, option, kRepErrUnknown, {}); !s) return s;
          break;
        }
        bool block_size = false;
        for (uint16_t i = 0; i < n; ++i)
          block_size |= get16(data.data() + 6 + name_len + 2 * i) == kInfoBlockSize;
        std::vector<uint8_t> info;
        put16(&info, kInfoExport);
        put64(&info, e.size);
        put16(&info, e.transmission_flags);
        if (Status s = option_reply(fd, option, kRepInfo, info); !s) return s;
        if (block_size) {
          info.clear();
          put16(&info, kInfoBlockSize);
          put32(&info, kMinBlock);
          put32(&info, kPreferredBlock);
          put32(&info, e.max_block);
          if (Status s = option_reply(fd, option, kRepInfo, info); !s) return s;
        }
        if (Status s = option_reply(fd, option, kRepAck, {}); !s) return s;
        if (option == kOptGo) return Status::ok();
        break;
      }
      case kOptStructuredReply:
        if (!e.structured) {
          if (Status s = option_reply(fd, option, kRepErrUnsup, {}); !s) return s;
          break;
        }
        got.structured = len == 0;
        if (Status s = option_reply(fd, option, len ? kRepErrInvalid : kRepAck, {}); !s) return s;
        break;
      case kOptListMetaContext:
      case kOptSetMetaContext: {
        if (!e.structured) {
          if (Status s = option_reply(fd, option, kRepErrUnsup, {}); !s) return s;
          break;
        }
        // u32 name length, name, u32 query count, queries (u32 length, text).
        auto bad = [&] { return option_reply(fd, option, kRepErrInvalid, {}); };
        if (!got.structured || len < 8 || get32(data.data()) > len - 8) {
          if (Status s = bad(); !s) return s;
          break;
        }
        uint32_t name_len = get32(data.data());
        if (!name_ok(data.data() + 4, name_len)) {
          if (Status s = option_reply(fd, option, kRepErrUnknown, {}); !s) return s;
          break;
        }
        size_t at = 4 + name_len;
        uint32_t queries = get32(data.data() + at);
        at += 4;
        bool ok = true, match = queries == 0 && option == kOptListMetaContext;
        for (uint32_t q = 0; q < queries && ok; q++) {
          if (at + 4 > len || get32(data.data() + at) > len - at - 4) {
            ok = false;
            break;
          }
          uint32_t ql = get32(data.data() + at);
          std::string query(reinterpret_cast<const char*>(data.data() + at + 4), ql);
          at += 4 + ql;
          match |= query == kBaseAllocation || query == "base:";
        }
        if (!ok || at != len) {
          if (Status s = bad(); !s) return s;
          break;
        }
        if (option == kOptSetMetaContext) got.base_allocation = match;
        if (match) {
          std::vector<uint8_t> ctx;
          put32(&ctx, 1);
          ctx.insert(ctx.end(), kBaseAllocation, kBaseAllocation + std::strlen(kBaseAllocation));
          if (Status s = option_reply(fd, option, kRepMetaContext, ctx); !s) return s;
        }
        if (Status s = option_reply(fd, option, kRepAck, {}); !s) return s;
        break;
      }
      default:
        if (Status s = option_reply(fd, option, kRepErrUnsup, {}); !s) return s;
    }
  }
}

}  // namespace kvmcdp::nbd

#include "base/fd_pass.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstring>

namespace kvmcdp {

ssize_t send_with_fd(int sock, const void* p, size_t n, int pass_fd) {
  iovec iov{const_cast<void*>(p), n};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (pass_fd >= 0) {
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
  }
  return sendmsg(sock, &m, MSG_NOSIGNAL);
}

}  // namespace kvmcdp

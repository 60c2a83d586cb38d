// Sending a file descriptor along with bytes on a unix socket
// (SCM_RIGHTS): QEMU's getfd over QMP, the stream ring's memfd with the
// filter's HELLO_REPLY.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace kvmcdp {

// One sendmsg(MSG_NOSIGNAL) of [p, p + n) with `pass_fd` attached (none if
// -1): what sendmsg returns, errno as it left it.  The fd rides on the
// first byte that leaves; send the rest without it.
ssize_t send_with_fd(int sock, const void* p, size_t n, int pass_fd);

}  // namespace kvmcdp

// SIGINT and SIGTERM, the signals that stop a long-running kvmcdp
// (protect, serve), are taken synchronously by the main thread with
// sigtimedwait, so they are blocked before any thread starts and every
// thread inherits the mask.
#pragma once

#include <signal.h>

namespace kvmcdp {

inline sigset_t stop_signals() {
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  return sigs;
}

// Call first thing.  SIGPIPE is ignored too: a peer that goes away (the
// filter, a backup server, ssh) is an error on a write, not a signal.
inline void take_stop_signals_synchronously() {
  sigset_t sigs = stop_signals();
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace kvmcdp

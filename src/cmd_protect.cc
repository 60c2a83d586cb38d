// kvmcdp protect: capture a running VM's disk into a store until stopped.
//
// The stream runs over a socketpair whose QEMU end is handed over with
// getfd, so no socket path has to be shared or cleaned up, and QMP is held
// only for the few commands that need it: other kvmcdp commands and other
// QMP clients can use the same VM meanwhile.  A receiver thread pumps the
// stream into the journal the whole time (the base copy included), while
// the main thread waits for SIGINT/SIGTERM and publishes protect.json.
//
// A drive has one protect: a filter that streams into another store is
// never taken over (the two would take it from each other for ever), only
// this store's own after a crash.  QEMU going away ends protect like a
// stop; a failure after the filter is attached detaches it first, and a
// failure before a new store holds anything leaves no trace in it.
#include <signal.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "base_copy.h"
#include "cli.h"
#include "config_file.h"
#include "fsutil.h"
#include "journal_writer.h"
#include "manifest.h"
#include "protect_state.h"
#include "qemu_drive.h"
#include "receiver.h"
#include "remote_auth.h"
#include "remote_link.h"
#include "remote_tls.h"
#include "shipper.h"
#include "stop_signals.h"
#include "store_lock.h"
#include "time_parse.h"
#include "wall_clock.h"

namespace kvmcdp {
namespace {

struct ProtectOptions {
  std::string qmp_socket;
  std::string drive;
  std::string store;
  std::string mode = "async";
  int level = 1;
  uint64_t segment_mib = 256;
  uint64_t queue_mib = 64;
  uint32_t filter_timeout_ms = 10000;
  bool quiet = false;
  // --remote
  std::string remote;
  std::string spool;  // instead of --store: the local journal only spools
  std::string secret_file;
  std::string server_fingerprint;
  std::string ack_from = "local";
  uint64_t spool_mib = 4096;
  std::string remote_path = "kvmcdp";
  uint32_t remote_wait_s = 30;
};

std::string format_time(uint64_t ns) { return format_time_human(ns); }

std::string absolute_path(const std::string& p) {
  if (p.empty()) return p;
  std::string a = std::filesystem::absolute(p).lexically_normal().string();
  while (a.size() > 1 && a.back() == '/') a.pop_back();
  return a;
}

void say(const ProtectOptions& o, const std::string& line) {
  if (!o.quiet) std::fprintf(stderr, "kvmcdp: %s\n", line.c_str());
}

void warn(const std::string& line) { std::fprintf(stderr, "kvmcdp: warning: %s\n", line.c_str()); }

Result<std::unique_ptr<QmpClient>> qmp_connect(const ProtectOptions& o) {
  return QmpClient::connect(o.qmp_socket);
}

// Points the filter at a fresh connection to us: a new filter above
// `node` (cdp-attach) or the existing one (cdp-connect).
Status point_filter(QmpClient& qmp, const ProtectOptions& o, const std::string& node,
                    const std::string& filter, bool exists, const json& addr,
                    const json& continuation) {
  json attach = {{"node", node},
                 {"node-name", filter},
                 {"addr", addr},
                 {"mode", o.mode},
                 {"queue-size", o.queue_mib << 20},
                 {"timeout", o.filter_timeout_ms}};
  if (!continuation.is_null()) attach.update(continuation);
  QmpReply r = exists ? qmp.execute("cdp-connect", {{"node-name", filter}, {"addr", addr}})
                      : qmp.execute("cdp-attach", attach);
  if (r.ok()) return Status::ok();
  return {ErrorKind::kQemu, fmt::format("{} failed: {}", exists ? "cdp-connect" : "cdp-attach",
                                        r.status().message())};
}

// The stream's connection: one end of a socketpair handed to QEMU with
// getfd, so no socket path is shared.  qemu-storage-daemon has no getfd;
// there we listen on a private unix socket and the filter connects to it.
Result<int> connect_filter(QmpClient& qmp, const ProtectOptions& o, const std::string& node,
                           const std::string& filter, bool exists,
                           const json& continuation = nullptr) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("socketpair", ""));
  std::string fdname = fmt::format("kvmcdp-{}", getpid());
  QmpReply got = qmp.execute_with_fd("getfd", {{"fdname", fdname}}, sv[1]);
  close(sv[1]);
  if (got.ok()) {
    Status s = point_filter(qmp, o, node, filter, exists, {{"type", "fd"}, {"str", fdname}},
                            continuation);
    if (!s) {
      close(sv[0]);
      return s;
    }
    return sv[0];
  }
  close(sv[0]);
  if (got.error_class != "CommandNotFound") return got.status();

  static int counter = 0;
  std::string path = fmt::format("/tmp/kvmcdp-{}-{}.sock", getpid(), counter++);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
  fsutil::Fd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  unlink(path.c_str());
  if (listener.get() < 0 || bind(listener.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      listen(listener.get(), 1) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("listen", path));
  Status s = point_filter(qmp, o, node, filter, exists, {{"type", "unix"}, {"path", path}},
                          continuation);
  int fd = -1;
  if (s) {
    pollfd p{listener.get(), POLLIN, 0};
    if (poll(&p, 1, 10000) == 1) fd = accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) s = Status(ErrorKind::kQemu, "the cdp filter did not connect within 10 s");
  }
  unlink(path.c_str());
  if (!s) return s;
  return fd;
}

// Everything the receiver thread and the main thread share.
struct Session {
  ProtectOptions opts;
  std::string node;
  std::string filter;
  journal::JournalWriter* writer = nullptr;
  std::atomic<bool> stop{false};     // give up at once (fatal error)
  std::atomic<bool> detaching{false};
  std::atomic<bool> vm_gone{false};  // the stream ended because QEMU went away
  std::atomic<bool> filter_lost{false};  // someone else's now: not ours to detach
  uint64_t stream_id = 0;
  AckGate* gate = nullptr;           // with --remote
  Shipper* shipper = nullptr;        // with --remote
  std::atomic<uint64_t> durable_seq{0};  // live, for the shipper
  std::mutex mu;                     // guards the fields below
  ReceiverCounters counters;
  bool connected = false;
  Status error;
};

// A socket error on the stream is the filter going away, like an EOF
// (QEMU exiting resets the connection if our last ack was still unread).
bool stream_dropped(const Status& st) { return st.cause() == Cause::kConnectionLost; }

// The stream ended without a detach.  If QEMU is gone (the VM shut down)
// there is nothing to reconnect: vm_gone says so.  Otherwise QEMU dropped
// the connection and the filter gets a new one; a QMP socket that does not
// answer (another client holds it) is tried again for a while.
Result<int> reconnect_filter(Session* s) {
  Status last = Status(ErrorKind::kQemu, "cannot reach QEMU");
  for (int attempt = 0; attempt < 6 && !s->stop && !s->detaching; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    bool gone = false;
    auto qmp = QmpClient::connect(s->opts.qmp_socket, QmpClient::kDefaultTimeout, &gone);
    if (gone) {
      s->vm_gone = true;
      return Status(ErrorKind::kQemu, "QEMU is gone");
    }
    if (!qmp) {
      last = qmp.status();
      continue;
    }
    // A filter that streams to another receiver was taken over: taking it
    // back would only make the two take it from each other again and
    // again, each time resending the disk.  Just after our own
    // disconnection the filter may still say connected for a moment.
    for (int check = 0;; ++check) {
      auto f = query_cdp(**qmp, s->filter);
      if (!f) return f.status();
      if (!f->has_value() || (*f)->stream_id != s->stream_id) {
        s->filter_lost = true;
        return Status(ErrorKind::kQemu,
                      fmt::format("the cdp filter {} was removed from the VM", s->filter));
      }
      if (!(*f)->connected) break;
      if (check == 10) {
        s->filter_lost = true;
        return Status(ErrorKind::kBusy,
                      fmt::format("another receiver took the cdp filter {} over; this protect "
                                  "leaves the drive to it",
                                  s->filter));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return connect_filter(**qmp, s->opts, s->node, s->filter, true);
  }
  return last;
}

// The receiver thread: pump the stream; if the filter goes away without
// being detached (a socket error, QEMU dropping the connection), connect
// it again with a fresh socketpair and let it resend what is not durable.
// `rx` arrives connected, its handshake done.
void receive_loop(Session* s, std::unique_ptr<StreamReceiver> rx, int fd) {
  for (;;) {
    { std::lock_guard l(s->mu); s->connected = true; }
    rx->set_gate(s->gate);
    rx->set_every_write_waits(s->opts.mode == "sync");
    rx->set_live(&s->durable_seq, &s->counters, &s->mu);
    auto end = rx->run(s->stop);
    bool dropped = !end && stream_dropped(end.status());
    {
      std::lock_guard l(s->mu);
      s->counters = rx->counters();
      s->connected = false;
      if (!end && !dropped) s->error = end.status();
    }
    close(fd);
    if (s->detaching || s->stop || (!end && !dropped)) break;
    if (end && *end == StreamReceiver::End::kPaused) {
      // The spool is full: the filter tracks changes in its bitmap until
      // the server has taken enough of the spool.
      say(s->opts, "the spool is full: capture continues in the filter's dirty bitmap");
      while (s->gate->paused() && !s->stop && !s->detaching)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (s->stop || s->detaching) break;
      say(s->opts, "the spool has room again: reconnecting the filter");
    }
    auto next = reconnect_filter(s);
    if (s->vm_gone) break;
    if (!next) { std::lock_guard l(s->mu); s->error = next.status(); break; }
    fd = *next;
    rx = std::make_unique<StreamReceiver>(fd, s->writer);
    auto hello = rx->handshake(s->writer->last_durable_seq(), 10000);
    if (!hello) { close(fd); std::lock_guard l(s->mu); s->error = hello.status(); break; }
  }
  s->stop = true;
}

Status publish_state(Session& s, const ProtectState& base) {
  ProtectState st = base;
  {
    std::lock_guard l(s.mu);
    st.connected = s.connected;
    st.records = s.counters.records;
    st.bytes = s.counters.bytes;
    st.received_seq = s.counters.last_seq;
    st.durable_seq = s.counters.durable_seq;
    st.durable_time_ns = s.counters.last_time_ns;
  }
  if (s.shipper) {
    RemoteStatus r = s.shipper->status();
    st.remote_connected = r.connected;
    st.remote_durable_seq = r.durable_seq;
    st.remote_durable_ns = r.durable_ns;
    st.remote_lag_bytes = r.lag_bytes;
    st.spool_bytes = r.spool_bytes;
    st.remote_base = r.base_on_server;
    st.remote_error = r.error;
  }
  st.updated_ns = now_ns();
  return write_protect_state(s.opts.store, st);
}

// Why protect refuses a drive whose filter streams into another store.
Status drive_taken(const ProtectOptions& o, const CdpInfo& f) {
  auto owner = stream_owner(f.stream_id);
  if (owner && owner->running)
    return {ErrorKind::kBusy,
            fmt::format("drive {} is already protected: kvmcdp protect (pid {}) writes it into "
                        "store {}; stop that one first",
                        o.drive, owner->pid, owner->store)};
  if (owner)
    return {ErrorKind::kBusy,
            fmt::format("drive {} has the cdp filter {} of store {}, whose protect is not "
                        "running: run protect with --store {}, or detach the filter to start a new "
                        "store (kvmcdp qmp --qmp {} '{{\"execute\":\"cdp-detach\","
                        "\"arguments\":{{\"node-name\":\"{}\"}}}}')",
                        o.drive, f.node_name, owner->store, owner->store, o.qmp_socket,
                        f.node_name)};
  return {ErrorKind::kBusy,
          fmt::format("drive {} has the cdp filter {} of another store (stream {:016x}): "
                      "stop the protect that owns it, or detach the filter to start a new store "
                      "(kvmcdp qmp --qmp {} '{{\"execute\":\"cdp-detach\","
                      "\"arguments\":{{\"node-name\":\"{}\"}}}}')",
                      o.drive, f.node_name, f.stream_id, o.qmp_socket, f.node_name)};
}

// A protect that fails after attaching must not leave the filter behind:
// without a receiver it holds the guest back for the filter timeout and
// then tracks changes nobody reads.  Nothing will ack any more, so the
// filter is not given time to drain.
void detach_after_failure(const ProtectOptions& o, const std::string& filter, QmpClient* held) {
  std::unique_ptr<QmpClient> own;
  if (!held) {
    auto q = qmp_connect(o);
    if (!q) {
      warn(fmt::format("the cdp filter {} stays attached: {}", filter, q.status().message()));
      return;
    }
    own = std::move(*q);
    held = own.get();
  }
  auto there = query_cdp(*held, filter);
  if (there && !there->has_value()) return;  // someone removed it already
  QmpReply r = held->execute("cdp-detach", {{"node-name", filter}, {"timeout", 0}}, Millis(60000));
  if (!r.ok())
    warn(fmt::format("the cdp filter {} stays attached: cdp-detach failed: {}", filter,
                     r.status().message()));
  else
    say(o, fmt::format("detached the cdp filter {}", filter));
}

Status run_protect(const ProtectOptions& o) {
  // 1. Own the store: one protect per store, ever.
  bool made_dir = mkdir(o.store.c_str(), 0755) == 0;
  if (!made_dir && errno != EEXIST)
    return {ErrorKind::kFailure, fsutil::errno_message("mkdir", o.store)};
  auto lock = StoreLock::acquire(o.store);
  if (!lock) {
    if (made_dir) rmdir(o.store.c_str());
    return lock.status();
  }
  auto manifest = read_manifest(o.store);
  bool new_store = !manifest && manifest.status().kind() == ErrorKind::kNotFound;
  // Until its manifest is written a new store holds nothing: a protect
  // that fails before then leaves it as it was (no lock file, no
  // directory it made).
  auto give_up = [&](Status st) {
    if (new_store && lock->created()) lock->remove();
    if (new_store && made_dir) rmdir(o.store.c_str());
    return st;
  };
  if (!manifest && !new_store) return manifest.status();
  Manifest m = new_store ? Manifest{} : *manifest;

  // 1b. With --remote, make sure the server takes us before the VM is
  //     touched: a wrong secret or another drive's store is an error now.
  //     A server that cannot be reached is not: capture starts, and the
  //     journal waits locally until it can be shipped.
  RemoteOptions ro;
  if (!o.remote.empty()) {
    auto url = parse_remote_url(o.remote);
    if (!url) return give_up(url.status());
    ro.url = *url;
    ro.remote_path = o.remote_path;
    if (const char* rsh = getenv("KVMCDP_RSH"); rsh && *rsh) ro.rsh = rsh;
    if (!o.secret_file.empty()) {
      auto secret = remote::read_secret_file(o.secret_file);
      if (!secret) return give_up(secret.status());
      ro.secret = *secret;
    } else if (ro.url.served()) {
      return give_up({ErrorKind::kUsage, "a tcp:// or tls:// remote needs --secret-file"});
    }
    if (ro.url.kind == RemoteUrl::Kind::kTls) {
      if (o.server_fingerprint.empty())
        return give_up({ErrorKind::kUsage,
                        "a tls:// remote needs --server-fingerprint SHA256:...: the server "
                        "prints it when it starts (and serve --init-tls when it makes the "
                        "certificate)"});
      auto fp = remote::parse_fingerprint(o.server_fingerprint);
      if (!fp) return give_up(fp.status());
      ro.server_fingerprint = *fp;
    } else if (!o.server_fingerprint.empty()) {
      return give_up({ErrorKind::kUsage, "--server-fingerprint is for tls:// remotes"});
    }
    bool refused = false;
    auto probe = RemoteLink::open(ro, nullptr, 15000, &refused);
    if (!probe && refused) return give_up(probe.status());
    if (!probe)
      say(o, fmt::format("the server is unreachable ({}); the journal waits in {} until it is",
                         probe.status().message(), o.store));
    else if (!new_store && !(*probe)->state().stream_id.empty() &&
             (*probe)->state().stream_id != fmt::format("{:016x}", m.stream_id))
      return {ErrorKind::kFailure,
              fmt::format("{} holds stream {}, {} holds {:016x}: another drive's store",
                          o.remote, (*probe)->state().stream_id, o.store, m.stream_id)};
  }

  // 2. Find the drive and the filter (still attached if a previous protect
  //    of this store was killed).  A filter of another stream, above the
  //    drive or under another name, belongs to another store.
  auto qmp = qmp_connect(o);
  if (!qmp) return give_up(qmp.status());
  auto node = resolve_drive(**qmp, o.drive);
  if (!node) return give_up(node.status());
  std::string filter = m.extra.value("filter_node", fmt::format("kvmcdp-{}", o.drive));
  auto filters = list_cdp(**qmp);
  if (!filters) return give_up(filters.status());
  std::optional<CdpInfo> existing;
  for (const auto& f : *filters)
    if (f.node_name == filter || f.node_name == *node || f.child == *node) existing = f;
  if (existing && (new_store || existing->stream_id != m.stream_id))
    return give_up(drive_taken(o, *existing));
  bool reattach = existing.has_value();
  if (reattach) {
    filter = existing->node_name;
    node = existing->child;
  }

  // 3. Open the journal (recovering a torn tail) and connect the filter.
  //    A store whose filter is gone (protect was stopped, QEMU restarted)
  //    continues its stream with a new filter that resends the whole disk;
  //    a new store adopts the stream id of the filter's hello.
  journal::WriterOptions wo;
  wo.stream_id = m.stream_id;
  wo.zstd_level = o.level;
  wo.compress_nice = 10;
  wo.segment_max_bytes = o.segment_mib << 20;
  wo.take_lock = false;
  std::unique_ptr<journal::JournalWriter> writer;
  if (!new_store) {
    auto w = journal::JournalWriter::open(o.store, wo);
    if (!w) return w.status();
    writer = std::move(*w);
    if (writer->recovered()) say(o, fmt::format("recovering: {}", writer->recovered()->to_string()));
  }
  json continuation = nullptr;
  if (!new_store && !reattach) {
    continuation = {{"stream-id", m.stream_id}, {"first-seq", writer->last_durable_seq() + 1}};
    say(o, fmt::format("continuing the stream after seq {}: the disk is resent in full, "
                       "points before the resync ends are not recoverable",
                       writer->last_durable_seq()));
  }
  auto fd = connect_filter(**qmp, o, *node, filter, reattach, continuation);
  if (!fd) return give_up(fd.status());
  // From here on a failure detaches the filter.
  bool fd_ours = true;  // until the receiver thread has it
  auto fail = [&](Status st) {
    if (fd_ours) close(*fd);
    detach_after_failure(o, filter, qmp->get());
    return give_up(st);
  };
  auto rx = std::make_unique<StreamReceiver>(*fd, writer.get());
  if (new_store) {
    // Nothing is durable yet, so the reply is 0.
    auto hello = rx->handshake(0, 10000);
    if (!hello) return fail(hello.status());
    m.stream_id = hello->stream_id;
    m.disk_size = hello->disk_size;
    m.node_name = *node;
    m.created_time_ns = now_ns();
    m.extra["filter_node"] = filter;
    m.extra["drive"] = o.drive;
    // Its shipped segments are trimmed: a journal starting late is no hole.
    if (!o.spool.empty()) m.extra["spool"] = true;
    if (Status st = write_manifest(o.store, m); !st) return fail(st);
    new_store = false;  // it holds a stream now
    wo.stream_id = m.stream_id;
    auto w = journal::JournalWriter::open(o.store, wo);
    if (!w) return fail(w.status());
    writer = std::move(*w);
    rx->set_writer(writer.get());
  } else {
    auto hello = rx->handshake(writer->last_durable_seq(), 10000);
    if (!hello) return fail(hello.status());
  }
  if (Status st = register_stream(m.stream_id, o.store); !st)
    warn(fmt::format("a second protect of this drive cannot learn who protects it: {}",
                     st.message()));

  Session s;
  s.opts = o;
  s.node = *node;
  s.filter = filter;
  s.writer = writer.get();
  s.durable_seq = writer->last_durable_seq();
  s.stream_id = m.stream_id;
  ProtectState state{getpid(), o.qmp_socket, o.drive, filter, o.mode, now_ns()};
  state.store = o.store;
  state.stream_id = m.stream_id;
  // The shipper mirrors the local journal to the server; the gate decides
  // whether a flush waits for the server (--ack-from, --spool).
  std::unique_ptr<AckGate> gate;
  std::unique_ptr<Shipper> shipper;
  if (!o.remote.empty()) {
    gate = std::make_unique<AckGate>(!o.spool.empty()      ? AckGate::Policy::kRemoteOrSpool
                                     : o.ack_from == "remote" ? AckGate::Policy::kRemote
                                                              : AckGate::Policy::kLocal);
    ShipperConfig sc{ro, o.store, !o.spool.empty(), o.spool_mib << 20};
    shipper = std::make_unique<Shipper>(sc, gate.get(), [&s] { return s.durable_seq.load(); });
    s.gate = gate.get();
    s.shipper = shipper.get();
    state.remote_url = ro.url.to_string();
    shipper->start();
  }
  std::thread receiver(receive_loop, &s, std::move(rx), *fd);
  fd_ours = false;
  say(o, fmt::format("protecting {} (node {}) into {}, mode {}", o.drive, *node, o.store, o.mode));
  publish_state(s, state);

  // 4. The base copy, while the stream already flows.
  if (!m.base_complete) {
    say(o, "taking the base copy");
    auto base = take_base_copy(**qmp, filter, o.store + "/" + m.base_image,
                               !o.quiet && isatty(2));
    if (!base) {
      s.stop = true;
      receiver.join();
      unregister_stream(m.stream_id);
      bool gone = false;
      qmp->reset();
      auto alive = QmpClient::connect(o.qmp_socket, QmpClient::kDefaultTimeout, &gone);
      if (gone)
        return {ErrorKind::kQemu, "the VM shut down before the base copy was complete"};
      detach_after_failure(o, filter, alive ? alive->get() : nullptr);
      return base.status();
    }
    m.base_complete = true;
    m.base_complete_seq = base->complete_seq;
    m.base_complete_time_ns = now_ns();
    if (Status st = write_manifest(o.store, m); !st) {
      s.stop = true;
      receiver.join();
      unregister_stream(m.stream_id);
      return fail(st);
    }
    say(o, fmt::format("base copy complete: the first recoverable point is seq {} ({})",
                       m.base_complete_seq, format_time(m.base_complete_time_ns)));
  }
  qmp->reset();  // QMP is free for others until we stop

  // 5. Serve until a signal, a fatal stream error or QEMU's end.
  sigset_t sigs = stop_signals();
  timespec second{1, 0};
  while (!s.stop) {
    publish_state(s, state);
    if (sigtimedwait(&sigs, nullptr, &second) > 0) break;
  }

  // 6. Detach: the filter drains its queue into our receiver first.  After
  //    a fatal error the filter goes too; after QEMU's end there is none.
  bool stopped = !s.stop;
  s.detaching = true;
  Status result = Status::ok();
  if (stopped) {
    say(o, "stopping: detaching the filter");
    bool gone = false;
    auto q = QmpClient::connect(o.qmp_socket, QmpClient::kDefaultTimeout, &gone);
    if (gone) s.vm_gone = true;  // the VM shut down as we were told to stop
    // A last record at the moment capture ends: times up to it stay
    // recoverable after a later restart continues the stream.
    if (q) (*q)->execute("cdp-mark", {{"node-name", filter}, {"name", "kvmcdp:stopped"}});
    QmpReply r = q ? (*q)->execute("cdp-detach", {{"node-name", filter}}, Millis(60000))
                   : QmpReply{};
    if (!q && !gone)
      result = q.status();
    else if (!r.ok())
      result = Status(ErrorKind::kQemu, "cdp-detach failed: " + r.status().message());
    if (!result || gone) s.stop = true;
  }
  receiver.join();
  if (!stopped && !s.vm_gone && !s.filter_lost) detach_after_failure(o, filter, nullptr);
  if (Status c = s.writer->close(); !c && result) result = c;
  if (shipper) {
    // The last records and the sealed segment go out too, if the server
    // takes them in time; otherwise they wait here for the next run.
    if (!shipper->finish(static_cast<int>(o.remote_wait_s) * 1000))
      say(o, fmt::format("the server is {} bytes behind; they stay in {} and go out with the "
                         "next protect run",
                         shipper->status().lag_bytes, o.store));
  }
  if (s.vm_gone) state.shutdown_ns = now_ns();
  publish_state(s, state);
  unregister_stream(m.stream_id);
  {
    std::lock_guard l(s.mu);
    if (!s.error.is_ok() && result) result = s.error;
  }
  if (result && s.vm_gone)
    std::fprintf(stderr, "kvmcdp: the VM shut down (QEMU is gone): the journal is closed at seq %llu\n",
                 static_cast<unsigned long long>(s.counters.durable_seq));
  else if (result)
    say(o, fmt::format("stopped at seq {}", s.counters.durable_seq));
  return result;
}

}  // namespace

CommandRunner setup_protect_command(CLI::App* app) {
  auto o = std::make_shared<ProtectOptions>();
  app->add_option("--qmp", o->qmp_socket, "QEMU's QMP unix socket")->required();
  app->add_option("--drive", o->drive, "drive id, device id or node-name to protect")
      ->required();
  auto* store = app->add_option("--store", o->store, "directory holding the journal");
  auto* spool = app->add_option("--spool", o->spool,
                                "with --remote, instead of --store: a local directory that "
                                "holds the journal only until the server has it");
  store->excludes(spool);
  auto* remote = app->add_option("--remote", o->remote,
                                 "also ship the journal to a backup server: "
                                 "tls://host:port/name, ssh://[user@]host[:port]/path or "
                                 "tcp://host:port/name (unencrypted)");
  spool->needs(remote);
  app->add_option("--secret-file", o->secret_file,
                  "tls:// or tcp:// remote: file holding the store's secret (mode 600)")
      ->needs(remote);
  app->add_option("--server-fingerprint", o->server_fingerprint,
                  "tls:// remote: the server certificate's fingerprint, SHA256:xx:xx:... "
                  "(the server prints it when it starts)")
      ->needs(remote);
  app->add_option("--ack-from", o->ack_from,
                  "with --store and --remote: what a guest flush waits for")
      ->check(CLI::IsMember({"local", "remote"}))
      ->needs(remote)
      ->excludes(spool)
      ->capture_default_str();
  app->add_option("--spool-size", o->spool_mib,
                  "MiB the spool may hold while the server is away; "
                  "past that only the changed ranges are remembered (a gap)")
      ->check(CLI::Range(1, 1 << 24))
      ->needs(spool)
      ->capture_default_str();
  app->add_option("--remote-path", o->remote_path, "ssh:// remote: the kvmcdp to run there")
      ->needs(remote)
      ->capture_default_str();
  app->add_option("--remote-wait", o->remote_wait_s,
                  "seconds a stop waits for the server to take the rest")
      ->check(CLI::Range(0, 86400))
      ->needs(remote)
      ->capture_default_str();
  app->add_option("--mode", o->mode, "async: a guest flush waits for the journal; "
                                     "sync: every write does")
      ->check(CLI::IsMember({"async", "sync"}))
      ->capture_default_str();
  app->add_option("--level", o->level, "zstd compression level")
      ->check(CLI::Range(1, 19))
      ->capture_default_str();
  app->add_option("--segment-size", o->segment_mib, "MiB per journal file before a new file starts")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app->add_option("--queue-size", o->queue_mib, "MiB of writes QEMU may queue for kvmcdp")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app->add_option("--filter-timeout", o->filter_timeout_ms,
                  "ms QEMU holds the guest's writes back while kvmcdp is behind or gone, "
                  "before it only remembers the changed ranges (a gap)")
      ->check(CLI::Range(100, 600000))
      ->capture_default_str();
  app->add_flag("--quiet", o->quiet, "no progress messages");
  add_config_option(app);  // last: it knows the options above
  return [o]() {
    take_stop_signals_synchronously();
    if (o->store.empty() && o->spool.empty())
      return Status(ErrorKind::kUsage, "protect needs --store DIR (or --remote URL --spool DIR)");
    ProtectOptions run = *o;
    if (!run.spool.empty()) run.store = run.spool;
    // protect.json and the stream registry hand these to commands run
    // from other directories.
    for (std::string* p : {&run.qmp_socket, &run.store, &run.spool, &run.secret_file})
      *p = absolute_path(*p);
    return run_protect(run);
  };
}

}  // namespace kvmcdp

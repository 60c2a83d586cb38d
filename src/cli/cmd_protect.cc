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
// failure before a new store holds anything leaves no trace in it.  Both,
// and stopping the threads, are the destructor's work of ProtectSession,
// so that no early return can skip them.
//
// At ~830 lines this file is over the house limit on purpose: the session's
// passes share one state object, and splitting them across files would
// spread that state's invariants; the pieces with a life of their own (base
// copy, receiver, shipper, journal writer) are in capture/, remote/ and
// journal/ already.
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
#include <random>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "store/base_checksums.h"
#include "capture/base_copy.h"
#include "capture/mirror_capture.h"
#include "cli/cli.h"
#include "cli/config_file.h"
#include "base/fsutil.h"
#include "journal/journal_writer.h"
#include "store/manifest.h"
#include "store/protect_state.h"
#include "cli/qemu_options.h"
#include "qemu/qemu_drive.h"
#include "capture/receiver.h"
#include "capture/resync_compare.h"
#include "remote/remote_auth.h"
#include "remote/remote_link.h"
#include "remote/shipper.h"
#include "base/stop_signals.h"
#include "store/store_lock.h"
#include "store/time_parse.h"
#include "base/wall_clock.h"
#include "remote/remote_tls.h"
#include "restore/image_fingerprints.h"
#include "base/fault_point.h"

namespace kvmcdp {
namespace {

struct ProtectOptions {
  std::string qmp_socket;
  std::string domain;       // --domain: through libvirt instead of --qmp
  std::string libvirt_uri;  // --connect
  std::string drive;
  std::string store;
  std::string mode = "async";
  std::string capture = "auto";  // auto, filter or mirror
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

QemuTarget qemu_target(const ProtectOptions& o) {
  return QemuTarget{o.qmp_socket, o.domain, o.libvirt_uri};
}

// How `kvmcdp qmp` reaches the same QEMU, for hints in messages.
std::string qmp_args(const ProtectOptions& o) {
  if (o.domain.empty()) return fmt::format("--qmp {}", o.qmp_socket);
  return o.libvirt_uri.empty() ? fmt::format("--domain {}", o.domain)
                               : fmt::format("--domain {} --connect {}", o.domain, o.libvirt_uri);
}

Result<std::unique_ptr<QmpClient>> qmp_connect(const ProtectOptions& o) {
  return QmpClient::connect(qemu_target(o));
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
struct CaptureShared {
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
  ResyncCompare* compare = nullptr;  // continuing the stream: trims the resync
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
Result<int> reconnect_filter(CaptureShared* s) {
  Status last = Status(ErrorKind::kQemu, "cannot reach QEMU");
  for (int attempt = 0; attempt < 6 && !s->stop && !s->detaching; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    bool gone = false;
    auto qmp = QmpClient::connect(qemu_target(s->opts), QmpClient::kDefaultTimeout, &gone);
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
    bool retry = false;
    for (int check = 0;; ++check) {
      auto f = query_cdp(**qmp, s->filter);
      if (!f) {
        // QEMU may be on its way out (a libvirt domain still counts as
        // running for a moment): the next attempt's connect tells.
        last = f.status();
        retry = true;
        break;
      }
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
    if (retry) continue;
    auto fd = connect_filter(**qmp, s->opts, s->node, s->filter, true);
    if (!fd) {
      // Failed because QEMU went meanwhile: that is the VM's end.
      qmp->reset();
      bool now_gone = false;
      QmpClient::connect(qemu_target(s->opts), QmpClient::kDefaultTimeout, &now_gone);
      if (now_gone) {
        s->vm_gone = true;
        return Status(ErrorKind::kQemu, "QEMU is gone");
      }
    }
    return fd;
  }
  return last;
}

// The receiver thread: pump the stream; if the filter goes away without
// being detached (a socket error, QEMU dropping the connection), connect
// it again with a fresh socketpair and let it resend what is not durable.
// `rx` arrives connected, its handshake done.
void receive_loop(CaptureShared* s, std::unique_ptr<StreamReceiver> rx, int fd) {
  for (;;) {
    { std::lock_guard l(s->mu); s->connected = true; }
    rx->set_gate(s->gate);
    rx->set_resync_compare(s->compare);
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

Status publish_state(CaptureShared& s, const ProtectState& base) {
  ProtectState st = base;
  {
    std::lock_guard l(s.mu);
    st.connected = s.connected;
    st.records = s.counters.records;
    st.bytes = s.counters.bytes;
    st.received_seq = s.counters.last_seq;
    st.durable_seq = s.counters.durable_seq;
    st.durable_time_ns = s.counters.last_time_ns;
    st.stream_version = s.counters.version;
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
                        "store (kvmcdp qmp {} '{{\"execute\":\"cdp-detach\","
                        "\"arguments\":{{\"node-name\":\"{}\"}}}}')",
                        o.drive, f.node_name, owner->store, owner->store, qmp_args(o),
                        f.node_name)};
  return {ErrorKind::kBusy,
          fmt::format("drive {} has the cdp filter {} of another store (stream {:016x}): "
                      "stop the protect that owns it, or detach the filter to start a new store "
                      "(kvmcdp qmp {} '{{\"execute\":\"cdp-detach\","
                      "\"arguments\":{{\"node-name\":\"{}\"}}}}')",
                      o.drive, f.node_name, f.stream_id, qmp_args(o), f.node_name)};
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

// One protect run as a sequence of passes.  Whatever a pass starts, the
// session ends: its destructor stops and joins the receiver thread and the
// shipper, takes away a filter it attached (unless the run already handed
// it over cleanly, the VM is gone, or another receiver owns it now), and
// leaves a store it never wrote into as it found it.  An early return from
// any pass is therefore one error line, never std::terminate on a
// joinable thread or a filter left holding the guest back.
class ProtectSession {
 public:
  explicit ProtectSession(const ProtectOptions& o) : o_(o) {}
  ~ProtectSession();
  ProtectSession(const ProtectSession&) = delete;
  ProtectSession& operator=(const ProtectSession&) = delete;

  Status own_store();
  Status probe_remote();
  Status find_drive();
  Status open_journal();
  Status prepare_compare();
  Status connect_stream();
  Status connect_mirror();
  void say_resend(const Hello& hello);
  void start_capture();
  Status take_base();
  void serve_until_signal();
  Status detach();
  Status detach_mirror();
  Status close_run(Status result);

 private:
  void stop_receiver();
  bool mirror() const { return mirror_ != nullptr || use_mirror_; }
  Status choose_capture();
  void say_capture();
  void mirror_tick(int second);

  const ProtectOptions& o_;
  // Members are destroyed in reverse order: the threads (last) first,
  // then what they use.
  bool made_dir_ = false;
  std::optional<StoreLock> lock_;
  bool new_store_ = false;  // until its manifest is written it holds nothing
  Manifest m_;
  RemoteOptions ro_;
  std::unique_ptr<QmpClient> qmp_;
  std::string node_;
  std::string filter_;
  bool reattach_ = false;
  journal::WriterOptions wo_;
  std::unique_ptr<journal::JournalWriter> writer_;
  json continuation_ = nullptr;
  std::unique_ptr<ResyncCompare> compare_;  // with a continuation, if the image was rebuilt
  int fd_ = -1;             // the stream's socket until the receiver thread has it
  bool detach_on_exit_ = false;  // a failure from here on takes the filter away
  std::unique_ptr<StreamReceiver> rx_;
  bool registered_ = false;
  CaptureShared s_;
  ProtectState state_;
  std::unique_ptr<AckGate> gate_;
  std::unique_ptr<Shipper> shipper_;
  std::thread receiver_;
  // Mirror capture (capture/mirror_capture.h) instead of the filter.
  bool use_mirror_ = false;
  static constexpr int kCheckpointSeconds = 5;
  bool capture_said_ = false;
  std::string mirror_reason_;
  bool resync_said_ = false;
  std::unique_ptr<MirrorCapture> mirror_;
};

ProtectSession::~ProtectSession() {
  mirror_.reset();  // ends its job and threads first: they use the writer
  stop_receiver();
  if (fd_ >= 0) close(fd_);
  if (registered_) unregister_stream(m_.stream_id);
  if (detach_on_exit_) detach_after_failure(o_, filter_, qmp_.get());
  if (new_store_ && lock_ && lock_->created()) lock_->remove();
  if (new_store_ && made_dir_) rmdir(o_.store.c_str());
  shipper_.reset();  // joins its thread
}

void ProtectSession::stop_receiver() {
  if (!receiver_.joinable()) return;
  s_.stop = true;
  receiver_.join();
}

// One protect per store, ever.
Status ProtectSession::own_store() {
  made_dir_ = mkdir(o_.store.c_str(), 0755) == 0;
  if (!made_dir_ && errno != EEXIST)
    return {ErrorKind::kFailure, fsutil::errno_message("mkdir", o_.store)};
  auto lock = StoreLock::acquire(o_.store);
  if (!lock) {
    if (made_dir_) rmdir(o_.store.c_str());
    return lock.status();
  }
  lock_ = std::move(*lock);
  auto manifest = read_manifest(o_.store);
  new_store_ = !manifest && manifest.status().kind() == ErrorKind::kNotFound;
  if (!manifest && !new_store_) return manifest.status();
  if (manifest) m_ = *manifest;
  return Status::ok();
}

// With --remote, make sure the server takes us before the VM is touched:
// a wrong secret or another drive's store is an error now.  A server that
// cannot be reached is not: capture starts, and the journal waits locally
// until it can be shipped.
Status ProtectSession::probe_remote() {
  if (o_.remote.empty()) return Status::ok();
  auto url = parse_remote_url(o_.remote);
  if (!url) return url.status();
  ro_.url = *url;
  ro_.remote_path = o_.remote_path;
  if (const char* rsh = getenv("KVMCDP_RSH"); rsh && *rsh) ro_.rsh = rsh;
  if (!o_.secret_file.empty()) {
    auto secret = remote::read_secret_file(o_.secret_file);
    if (!secret) return secret.status();
    ro_.secret = *secret;
  } else if (ro_.url.served()) {
    return {ErrorKind::kUsage, "a tcp:// or tls:// remote needs --secret-file"};
  }
  if (ro_.url.kind == RemoteUrl::Kind::kTls) {
    if (o_.server_fingerprint.empty())
      return {ErrorKind::kUsage,
              "a tls:// remote needs --server-fingerprint SHA256:...: the server prints it "
              "when it starts (and serve --init-tls when it makes the certificate)"};
    auto fp = remote::parse_fingerprint(o_.server_fingerprint);
    if (!fp) return fp.status();
    ro_.server_fingerprint = *fp;
  } else if (!o_.server_fingerprint.empty()) {
    return {ErrorKind::kUsage, "--server-fingerprint is for tls:// remotes"};
  }
  bool refused = false;
  auto probe = RemoteLink::open(ro_, nullptr, 15000, &refused);
  if (!probe && refused) return probe.status();
  if (!probe)
    say(o_, fmt::format("the server is unreachable ({}); the journal waits in {} until it is",
                        probe.status().message(), o_.store));
  else if (!new_store_ && !(*probe)->state().stream_id.empty() &&
           (*probe)->state().stream_id != fmt::format("{:016x}", m_.stream_id))
    return {ErrorKind::kFailure,
            fmt::format("{} holds stream {}, {} holds {:016x}: another drive's store", o_.remote,
                        (*probe)->state().stream_id, o_.store, m_.stream_id)};
  return Status::ok();
}

// Finds the drive and the filter (still attached if a previous protect of
// this store was killed).  A filter of another stream, above the drive or
// under another name, belongs to another store.
Status ProtectSession::find_drive() {
  auto qmp = qmp_connect(o_);
  if (!qmp) return qmp.status();
  qmp_ = std::move(*qmp);
  auto node = resolve_drive(*qmp_, o_.drive);
  if (!node) return node.status();
  node_ = *node;
  if (Status s = choose_capture(); !s) return s;
  if (use_mirror_) {
    say_capture();
    return Status::ok();
  }
  filter_ = m_.extra.value("filter_node", fmt::format("kvmcdp-{}", o_.drive));
  auto filters = list_cdp(*qmp_);
  if (!filters) return filters.status();
  std::optional<CdpInfo> existing;
  for (const auto& f : *filters)
    if (f.node_name == filter_ || f.node_name == node_ || f.child == node_) existing = f;
  if (existing && (new_store_ || existing->stream_id != m_.stream_id))
    return drive_taken(o_, *existing);
  reattach_ = existing.has_value();
  if (reattach_) {
    filter_ = existing->node_name;
    node_ = existing->child;
  }
  say_capture();
  return Status::ok();
}

// Which capture, said once, when the drive is known to be ours to take.
void ProtectSession::say_capture() {
  if (capture_said_) return;
  capture_said_ = true;
  say(o_, use_mirror_ ? fmt::format("capture: active mirror ({})", mirror_reason_)
                      : std::string("capture: the cdp filter"));
}

// --capture: the filter where QEMU has it (its schema knows cdp-attach),
// else an active mirror into kvmcdp's NBD server.  Said once.
Status ProtectSession::choose_capture() {
  if (o_.capture == "filter") return Status::ok();  // said once list_cdp finds the filter
  auto has = qemu_has_cdp_filter(*qmp_);
  if (!has) return has.status();
  use_mirror_ = o_.capture == "mirror" || !*has;
  if (use_mirror_ && (!o_.spool.empty() || o_.ack_from == "remote"))
    return {ErrorKind::kUsage,
            "mirror capture ships with --store and --ack-from local only (--spool and "
            "--ack-from remote need the cdp filter)"};
  mirror_reason_ = *has ? "--capture mirror" : "this QEMU has no cdp filter";
  return Status::ok();
}

// Opens the journal, recovering a torn tail.  A store whose filter is gone
// (protect was stopped, QEMU restarted) continues its stream with a new
// filter that resends the whole disk.
Status ProtectSession::open_journal() {
  wo_.stream_id = m_.stream_id;
  wo_.zstd_level = o_.level;
  wo_.compress_nice = 10;
  wo_.segment_max_bytes = o_.segment_mib << 20;
  if (new_store_) return Status::ok();  // opened once the filter's hello names the stream
  auto w = journal::JournalWriter::open(o_.store, wo_);
  if (!w) return w.status();
  writer_ = std::move(*w);
  if (writer_->recovered())
    say(o_, fmt::format("recovering: {}", writer_->recovered()->to_string()));
  if (!reattach_ && !use_mirror_) {
    continuation_ = {{"stream-id", m_.stream_id}, {"first-seq", writer_->last_durable_seq() + 1}};
  }
  return Status::ok();
}

// What a continued stream costs: the new filter resends what its bitmap
// says changed since the journal's last record (the whole disk without
// one), or nothing.
void ProtectSession::say_resend(const Hello& hello) {
  if (!hello.gap_pending) {
    say(o_, "nothing was written since: the stream goes on without a gap");
    return;
  }
  auto f = query_cdp(*qmp_, filter_);
  std::string size = f && f->has_value()
                         ? fmt::format("{:.1f} MiB", (*f)->dirty_bytes / 1048576.0)
                         : std::string("what changed");
  say(o_, fmt::format("the filter resends {} of {:.1f} MiB", size, m_.disk_size / 1048576.0));
}

// Without QEMU's bitmap of the stream on the disk (see the filter's
// overview) the new filter resends the whole disk.  What the journal's
// latest image holds already is not journaled again: the resync is compared with that
// image's block fingerprints, computed here before the filter exists
// (capture/resync_compare.h).  Without the image (a spool keeps no base,
// the journal ends inside an earlier resync) every resent byte is
// journaled, as before.  Rebuilding the image takes as long as a restore,
// so QMP is let go meanwhile, and the drive looked up again after it.
Status ProtectSession::prepare_compare() {
  // Mirror capture continues a stream the same way (its bitmap has the
  // same name); connect_mirror() says what it resends.
  if (continuation_.is_null() && !(use_mirror_ && !new_store_)) return Status::ok();
  const uint64_t last_seq = writer_->last_durable_seq();
  auto kept = has_stream_bitmap(*qmp_, node_, m_.stream_id);
  if (kept && *kept && use_mirror_) return Status::ok();
  if (kept && *kept) {
    say(o_, fmt::format("continuing the stream after seq {}: QEMU's bitmap of the disk says "
                        "what changed since, and only that is resent",
                        last_seq));
    return Status::ok();
  }
  if (!o_.spool.empty()) {
    say(o_, fmt::format("continuing the stream after seq {}: the disk is resent in full and "
                        "journaled (a spool keeps no image to compare it with); points before "
                        "the resync ends are not recoverable",
                        last_seq));
    return Status::ok();
  }
  // Said first: rebuilding the image takes a while.
  say(o_, fmt::format("continuing the stream after seq {}: comparing the disk with the "
                      "journal's latest image; points before the resync ends are not "
                      "recoverable",
                      last_seq));
  qmp_.reset();
  auto map = fingerprint_image(o_.store, last_seq);
  if (!map) {
    warn(fmt::format("the journal's latest image cannot be rebuilt ({}): every resent byte "
                     "is journaled",
                     map.status().message()));
    return find_drive();
  }
  const ProtectOptions& o = o_;
  compare_ = std::make_unique<ResyncCompare>(std::move(*map), [&o](const ResyncTotals& t) {
    const double mib = 1024.0 * 1024.0;
    if (t.completed)
      say(o, fmt::format("resync done: {:.1f} MiB of {:.1f} MiB differed and were journaled",
                         t.journaled_bytes / mib, t.resent_bytes / mib));
    else
      say(o, fmt::format("records were lost during the resync: the rest of it is journaled "
                         "in full ({:.1f} MiB of the {:.1f} MiB compared differed)",
                         t.journaled_bytes / mib, t.resent_bytes / mib));
  });
  s_.compare = compare_.get();
  return find_drive();
}

// Connects the filter and shakes hands.  A new store adopts the stream id
// of the filter's hello and is a store from then on.
Status ProtectSession::connect_stream() {
  if (use_mirror_) return connect_mirror();
  auto fd = connect_filter(*qmp_, o_, node_, filter_, reattach_, continuation_);
  if (!fd) return fd.status();
  fd_ = *fd;
  detach_on_exit_ = true;
  rx_ = std::make_unique<StreamReceiver>(fd_, writer_.get());
  if (new_store_) {
    // Nothing is durable yet, so the reply is 0.
    auto hello = rx_->handshake(0, 10000);
    if (!hello) return hello.status();
    m_.stream_id = hello->stream_id;
    m_.disk_size = hello->disk_size;
    m_.node_name = node_;
    m_.created_time_ns = now_ns();
    m_.extra["filter_node"] = filter_;
    m_.extra["drive"] = o_.drive;
    // Its shipped segments are trimmed: a journal starting late is no hole.
    if (!o_.spool.empty()) m_.extra["spool"] = true;
    if (Status st = write_manifest(o_.store, m_); !st) return st;
    new_store_ = false;  // it holds a stream now
    wo_.stream_id = m_.stream_id;
    auto w = journal::JournalWriter::open(o_.store, wo_);
    if (!w) return w.status();
    writer_ = std::move(*w);
    rx_->set_writer(writer_.get());
  } else {
    auto hello = rx_->handshake(writer_->last_durable_seq(), 10000);
    if (!hello) return hello.status();
    if (!continuation_.is_null()) say_resend(*hello);
  }
  if (Status st = register_stream(m_.stream_id, o_.store); !st)
    warn(fmt::format("a second protect of this drive cannot learn who protects it: {}",
                     st.message()));
  registered_ = true;
  return Status::ok();
}

// Mirror capture: kvmcdp picks the stream id of a new store.  A continued
// stream opens with a gap and resends what QEMU's bitmap marks.
Status ProtectSession::connect_mirror() {
  const bool continuing = !new_store_;
  if (new_store_) {
    std::random_device rd;
    m_.stream_id = (uint64_t(rd()) << 32) | rd();
  }
  mirror_ = std::make_unique<MirrorCapture>(qemu_target(o_), node_, m_.stream_id,
                                            std::chrono::milliseconds(o_.filter_timeout_ms));
  if (Status s = mirror_->prepare(*qmp_); !s) return s;
  if (new_store_) {
    m_.disk_size = mirror_->disk_size();
    m_.node_name = node_;
    m_.created_time_ns = now_ns();
    m_.extra["drive"] = o_.drive;
    m_.extra["capture"] = "mirror";
    if (Status st = write_manifest(o_.store, m_); !st) return st;
    new_store_ = false;
    wo_.stream_id = m_.stream_id;
    auto w = journal::JournalWriter::open(o_.store, wo_);
    if (!w) return w.status();
    writer_ = std::move(*w);
  } else if (m_.disk_size != mirror_->disk_size()) {
    return {ErrorKind::kFailure,
            fmt::format("drive {} holds {} bytes, the store's disk {}: another disk's store",
                        o_.drive, mirror_->disk_size(), m_.disk_size)};
  }
  mirror_->set_live(&s_.durable_seq, &s_.counters, &s_.mu);
  mirror_->set_resync_compare(compare_.get());
  uint64_t last = writer_->last_durable_seq();
  if (Status s = mirror_->start(*qmp_, writer_.get(), continuing); !s) return s;
  if (continuing) {
    const double mib = 1048576.0;
    if (mirror_->bitmap_kept() && mirror_->scanned_dirty() > 0)
      say(o_, fmt::format("continuing the stream after seq {}: resending {:.1f} MiB that QEMU's "
                          "dirty bitmap marks as written since; points before the resync ends "
                          "are not recoverable",
                          last, mirror_->scanned_dirty() / mib));
    else if (mirror_->bitmap_kept())
      say(o_, fmt::format("continuing the stream after seq {}: QEMU's dirty bitmap marks "
                          "nothing written since",
                          last));
    else if (!compare_)
      say(o_, fmt::format("continuing the stream after seq {}: QEMU has no bitmap of this "
                          "disk's changes (it was restarted?): the disk is resent in full "
                          "({:.1f} MiB); points before the resync ends are not recoverable",
                          last, m_.disk_size / mib));
  }
  if (Status st = register_stream(m_.stream_id, o_.store); !st)
    warn(fmt::format("a second protect of this drive cannot learn who protects it: {}",
                     st.message()));
  registered_ = true;
  return Status::ok();
}

// The receiver thread, and with --remote the shipper, which mirrors the
// local journal to the server; the gate decides whether a flush waits for
// the server (--ack-from, --spool).
void ProtectSession::start_capture() {
  s_.opts = o_;
  s_.node = node_;
  s_.filter = filter_;
  s_.writer = writer_.get();
  s_.durable_seq = writer_->last_durable_seq();
  s_.stream_id = m_.stream_id;
  state_ = ProtectState{getpid(), o_.qmp_socket, o_.drive, filter_, o_.mode, now_ns()};
  state_.domain = o_.domain;
  state_.libvirt_uri = o_.libvirt_uri;
  state_.store = o_.store;
  state_.stream_id = m_.stream_id;
  if (!o_.remote.empty()) {
    gate_ = std::make_unique<AckGate>(!o_.spool.empty()         ? AckGate::Policy::kRemoteOrSpool
                                      : o_.ack_from == "remote" ? AckGate::Policy::kRemote
                                                                : AckGate::Policy::kLocal);
    ShipperConfig sc{ro_, o_.store, !o_.spool.empty(), o_.spool_mib << 20};
    shipper_ = std::make_unique<Shipper>(sc, gate_.get(), [this] { return s_.durable_seq.load(); });
    s_.gate = gate_.get();
    s_.shipper = shipper_.get();
    state_.remote_url = ro_.url.to_string();
    shipper_->start();
  }
  if (mirror_) {
    state_.mode = "mirror";
    {
      std::lock_guard l(s_.mu);
      s_.connected = true;
    }
    say(o_, fmt::format("protecting {} (node {}) into {}, capture mirror (every write waits "
                        "for the journal)",
                        o_.drive, node_, o_.store));
    publish_state(s_, state_);
    return;
  }
  receiver_ = std::thread(receive_loop, &s_, std::move(rx_), fd_);
  fd_ = -1;
  say(o_, fmt::format("protecting {} (node {}) into {}, mode {}", o_.drive, node_, o_.store,
                      o_.mode));
  publish_state(s_, state_);
}

// The base copy, while the stream already flows.
Status ProtectSession::take_base() {
  if (!m_.base_complete) {
    say(o_, "taking the base copy");
    auto base = mirror_ ? mirror_->take_base(*qmp_, o_.store + "/" + m_.base_image,
                                             !o_.quiet && isatty(2))
                        : take_base_copy(*qmp_, filter_, o_.store + "/" + m_.base_image,
                                         !o_.quiet && isatty(2));
    if (!base && mirror_) return base.status();  // the destructor ends the job
    if (!base) {
      stop_receiver();
      unregister_stream(m_.stream_id);
      registered_ = false;
      bool gone = false;
      qmp_.reset();
      auto alive = QmpClient::connect(qemu_target(o_), QmpClient::kDefaultTimeout, &gone);
      if (gone) {
        detach_on_exit_ = false;
        return {ErrorKind::kQemu, "the VM shut down before the base copy was complete"};
      }
      if (alive) qmp_ = std::move(*alive);
      return base.status();
    }
    m_.base_complete = true;
    m_.base_complete_seq = base->complete_seq;
    m_.base_complete_time_ns = now_ns();
    Status st = write_base_checksums(o_.store, m_);
    if (st) st = injected_failure("protect", "base-manifest", manifest_path(o_.store));
    if (st) st = write_manifest(o_.store, m_);
    if (!st) return st;
    say(o_, fmt::format("base copy complete: the first recoverable point is seq {} ({})",
                        m_.base_complete_seq, format_time(m_.base_complete_time_ns)));
  }
  qmp_.reset();  // QMP is free for others until we stop
  return Status::ok();
}

// Until a signal, a fatal stream error or QEMU's end.
void ProtectSession::serve_until_signal() {
  sigset_t sigs = stop_signals();
  timespec second{1, 0};
  for (int tick = 1; !s_.stop; ++tick) {
    publish_state(s_, state_);
    if (sigtimedwait(&sigs, nullptr, &second) > 0) break;
    if (mirror_) mirror_tick(tick);
  }
}

// Once a second: the end of the mirror (QEMU gone, the job failed), the
// end of a resync, and every few seconds the bitmap's checkpoint.  QMP is
// held only for that moment.
void ProtectSession::mirror_tick(int second) {
  if (mirror_->ended()) {
    s_.stop = true;
    return;
  }
  if (!resync_said_ && !mirror_->resyncing() && mirror_->error().is_ok()) {
    // With a compare (no bitmap), its end says how much differed instead.
    if (!compare_ && (mirror_->resent_bytes() > 0 || mirror_->scanned_dirty() > 0))
      say(o_, fmt::format("resync done: {:.1f} MiB resent", mirror_->resent_bytes() / 1048576.0));
    resync_said_ = true;
  }
  if (second % kCheckpointSeconds != 0) return;
  auto q = qmp_connect(o_);
  if (!q) return;  // another client holds QMP: the next tick
  if (Status s = mirror_->checkpoint(**q); !s)
    warn(fmt::format("the dirty bitmap's checkpoint failed: {}", s.message()));
}

// The filter drains its queue into our receiver first.  After a fatal
// error the filter goes too; after QEMU's end there is none.
Status ProtectSession::detach() {
  if (mirror_) return detach_mirror();
  bool stopped = !s_.stop;
  s_.detaching = true;
  Status result = Status::ok();
  if (stopped) {
    say(o_, "stopping: detaching the filter");
    bool gone = false;
    auto q = QmpClient::connect(qemu_target(o_), QmpClient::kDefaultTimeout, &gone);
    if (gone) s_.vm_gone = true;  // the VM shut down as we were told to stop
    // A last record at the moment capture ends: times up to it stay
    // recoverable after a later restart continues the stream.
    if (q) (*q)->execute("cdp-mark", {{"node-name", filter_}, {"name", "kvmcdp:stopped"}});
    QmpReply r = q ? (*q)->execute("cdp-detach", {{"node-name", filter_}}, Millis(60000))
                   : QmpReply{};
    if (!q && !gone)
      result = q.status();
    else if (!r.ok())
      result = Status(ErrorKind::kQemu, "cdp-detach failed: " + r.status().message());
    if (!result || gone) s_.stop = true;
  }
  receiver_.join();
  detach_on_exit_ = false;
  if (!stopped && !s_.vm_gone && !s_.filter_lost) detach_after_failure(o_, filter_, nullptr);
  {
    std::lock_guard l(s_.mu);
    if (!s_.error.is_ok() && result) result = s_.error;
  }
  return close_run(result);
}

// Either capture's last steps: the journal closed, the rest shipped, the
// state published, one line saying how it ended.
Status ProtectSession::close_run(Status result) {
  if (Status c = s_.writer->close(); !c && result) result = c;
  if (shipper_) {
    // The last records and the sealed segment go out too, if the server
    // takes them in time; otherwise they wait here for the next run.
    if (!shipper_->finish(static_cast<int>(o_.remote_wait_s) * 1000))
      say(o_, fmt::format("the server is {} bytes behind; they stay in {} and go out with the "
                          "next protect run",
                          shipper_->status().lag_bytes, o_.store));
  }
  if (s_.vm_gone) state_.shutdown_ns = now_ns();
  publish_state(s_, state_);
  unregister_stream(m_.stream_id);
  registered_ = false;
  if (result && s_.vm_gone)
    std::fprintf(stderr, "kvmcdp: the VM shut down (QEMU is gone): the journal is closed at seq %llu\n",
                 static_cast<unsigned long long>(s_.counters.durable_seq));
  else if (result)
    say(o_, fmt::format("stopped at seq {}", s_.counters.durable_seq));
  return result;
}

// Mirror capture's end: the bitmap checkpointed, the job cancelled (the
// guest stays on its disk), then the journal closed.  If the mirror ended
// by itself, QEMU is gone (the VM shut down) or the job failed.
Status ProtectSession::detach_mirror() {
  bool stopped = !s_.stop;
  Status result = Status::ok();
  if (stopped) say(o_, "stopping: ending the mirror job");
  // A mirror that ended by itself: QEMU may be on its way out (a libvirt
  // domain still counts as running for a moment, its commands fail).
  bool gone = false;
  Result<std::unique_ptr<QmpClient>> q = Status(ErrorKind::kQemu, "cannot reach QEMU");
  for (int attempt = 0; attempt < (stopped ? 1 : 10) && !gone; ++attempt) {
    if (attempt) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    q = QmpClient::connect(qemu_target(o_), QmpClient::kDefaultTimeout, &gone);
    if (q && (stopped || (*q)->execute("query-status").ok())) break;
  }
  if (gone) s_.vm_gone = true;
  if (q && !gone) {
    result = mirror_->stop(**q);
    if (!result && !stopped) {
      // Commands fail while QEMU goes: once it is gone, that is the VM's end.
      bool now_gone = false;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      QmpClient::connect(qemu_target(o_), QmpClient::kDefaultTimeout, &now_gone);
      if (now_gone) {
        s_.vm_gone = true;
        result = Status::ok();
      }
    }
  } else if (!gone) {
    result = q.status();
  }
  Status failed = mirror_->error();
  ReceiverCounters c = mirror_->counters();
  mirror_.reset();
  if (!failed && !s_.vm_gone && result)
    result = Status(failed.kind(),
                    fmt::format("{}: capture stopped; QEMU's dirty bitmap keeps what the guest "
                                "writes from now on, and the next protect resends it",
                                failed.message()));
  {
    std::lock_guard l(s_.mu);
    s_.counters.durable_seq = std::max(s_.counters.durable_seq, c.durable_seq);
  }
  return close_run(result);
}

Status run_protect(const ProtectOptions& o) {
  ProtectSession p(o);
  for (auto pass : {&ProtectSession::own_store, &ProtectSession::probe_remote,
                    &ProtectSession::find_drive, &ProtectSession::open_journal,
                    &ProtectSession::prepare_compare, &ProtectSession::connect_stream})
    if (Status st = (p.*pass)(); !st) return st;
  p.start_capture();
  if (Status st = p.take_base(); !st) return st;
  p.serve_until_signal();
  return p.detach();
}

}  // namespace

CommandRunner setup_protect_command(CLI::App* app) {
  auto o = std::make_shared<ProtectOptions>();
  add_qemu_target_options(app, &o->qmp_socket, &o->domain, &o->libvirt_uri,
                          "QEMU's QMP unix socket",
                          "instead of --qmp: a libvirt domain, whose QEMU is driven through "
                          "libvirt");
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
  app->add_option("--capture", o->capture,
                  "how QEMU hands the writes over: filter (kvmcdp's cdp filter), mirror (an "
                  "active mirror job, any QEMU 6.0 or later) or auto (the filter where QEMU "
                  "has it)")
      ->check(CLI::IsMember({"auto", "filter", "mirror"}))
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
    if (o->qmp_socket.empty() && o->domain.empty())
      return Status(ErrorKind::kUsage, "protect needs --qmp SOCKET or --domain NAME");
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

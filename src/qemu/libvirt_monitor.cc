// QMP through libvirt: see libvirt_monitor.h.
#include "qemu/libvirt_monitor.h"

#include <unistd.h>

#include <cstdlib>
#include <mutex>

#include <fmt/format.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "qemu/libvirt_domain.h"
#include "qemu/qemu_target.h"

namespace kvmcdp {
namespace {

// libvirt delivers events only while its event loop runs: one loop per
// process, on a thread of its own, registered before the first
// connection.  A timer wakes it now and then so that it never sleeps
// forever in poll() (nothing needs it to stop: it ends with the process).
void start_event_loop() {
  static std::once_flag once;
  std::call_once(once, [] {
    virEventRegisterDefaultImpl();
    virEventAddTimeout(250, [](int, void*) {}, nullptr, nullptr);
    std::thread([] {
      for (;;) virEventRunDefaultImpl();
    }).detach();
  });
}

// libvirt prints its errors to stderr by default; they belong in ours.
void quiet_errors() {
  static std::once_flag once;
  std::call_once(once, [] { virSetErrorFunc(nullptr, [](void*, virErrorPtr) {}); });
}

std::string last_error() {
  const char* m = virGetLastErrorMessage();
  return m ? m : "unknown libvirt error";
}

}  // namespace

// libvirt's callbacks, on the event loop's thread: the event as QMP gives
// it, and the domain's end.  Their opaque is a reference to the sink.
struct LibvirtEvents {
  using SinkRef = std::shared_ptr<LibvirtMonitor::Sink>;
  static LibvirtMonitor::Sink& sink(void* opaque) { return **static_cast<SinkRef*>(opaque); }
  static void* ref(const SinkRef& s) { return new SinkRef(s); }
  static void unref(void* opaque) { delete static_cast<SinkRef*>(opaque); }
  static void on_event(virConnectPtr, virDomainPtr, const char* event, long long seconds,
                       unsigned int micros, const char* details, void* opaque) {
    json e = {{"event", event ? event : ""},
              {"timestamp", {{"seconds", seconds}, {"microseconds", micros}}}};
    if (details) {
      json data = json::parse(details, nullptr, /*allow_exceptions=*/false);
      if (!data.is_discarded()) e["data"] = std::move(data);
    }
    sink(opaque).deliver(std::move(e));
  }
  static int on_lifecycle(virConnectPtr, virDomainPtr, int event, int, void* opaque) {
    if (event == VIR_DOMAIN_EVENT_STOPPED) sink(opaque).mark_stopped();
    return 0;
  }
};

Result<std::unique_ptr<LibvirtMonitor>> LibvirtMonitor::open(const std::string& uri,
                                                             const std::string& name,
                                                             bool* gone) {
  using R = Result<std::unique_ptr<LibvirtMonitor>>;
  if (gone) *gone = false;
  quiet_errors();
  start_event_loop();
  std::unique_ptr<LibvirtMonitor> m(new LibvirtMonitor());
  virConnectPtr conn = virConnectOpen(uri.empty() ? nullptr : uri.c_str());
  if (!conn)
    return R(ErrorKind::kQemu, fmt::format("cannot connect to libvirt{}: {}",
                                           uri.empty() ? "" : " at " + uri, last_error()));
  m->conn_ = conn;
  virDomainPtr dom = virDomainLookupByName(conn, name.c_str());
  if (!dom) {
    if (gone) *gone = virGetLastErrorCode() == VIR_ERR_NO_DOMAIN;
    return R(ErrorKind::kQemu, fmt::format("libvirt domain {}: {}", name, last_error()));
  }
  m->dom_ = dom;
  if (virDomainIsActive(dom) != 1) {
    if (gone) *gone = true;
    return R(ErrorKind::kQemu, fmt::format("libvirt domain {} is not running", name));
  }
  m->callback_ = virConnectDomainQemuMonitorEventRegister(conn, dom, nullptr,
                                                         &LibvirtEvents::on_event,
                                                         LibvirtEvents::ref(m->sink_),
                                                         &LibvirtEvents::unref, 0);
  if (m->callback_ < 0)
    return R(ErrorKind::kQemu,
             fmt::format("libvirt domain {}: cannot receive QEMU's events: {}", name,
                         last_error()));
  // A QEMU that ends sends no more events: waits for one end with it.
  m->lifecycle_ = virConnectDomainEventRegisterAny(
      conn, dom, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
      VIR_DOMAIN_EVENT_CALLBACK(&LibvirtEvents::on_lifecycle), LibvirtEvents::ref(m->sink_),
      &LibvirtEvents::unref);
  if (m->lifecycle_ < 0)
    return R(ErrorKind::kQemu,
             fmt::format("libvirt domain {}: cannot follow its state: {}", name, last_error()));
  // Asked again now that the callback is there: a domain that stopped in
  // between would otherwise leave every wait for its events to time out.
  if (virDomainIsActive(dom) != 1) {
    if (gone) *gone = true;
    return R(ErrorKind::kQemu, fmt::format("libvirt domain {} is not running", name));
  }
  return m;
}

LibvirtMonitor::~LibvirtMonitor() {
  auto* conn = static_cast<virConnectPtr>(conn_);
  if (callback_ >= 0) virConnectDomainQemuMonitorEventDeregister(conn, callback_);
  if (lifecycle_ >= 0) virConnectDomainEventDeregisterAny(conn, lifecycle_);
  if (dom_) virDomainFree(static_cast<virDomainPtr>(dom_));
  if (conn) virConnectClose(conn);
}

void LibvirtMonitor::Sink::mark_stopped() {
  std::lock_guard<std::mutex> lock(mu);
  stopped = true;
  cv.notify_all();
}

void LibvirtMonitor::Sink::deliver(json event) {
  std::lock_guard<std::mutex> lock(mu);
  events.push_back(std::move(event));
  cv.notify_all();
}

bool LibvirtMonitor::stopped() {
  std::lock_guard<std::mutex> lock(sink_->mu);
  return sink_->stopped;
}

Result<json> LibvirtMonitor::command(const json& request, int fd, bool* transport) {
  *transport = false;
  char* result = nullptr;
  unsigned int nout = 0;
  int* outfiles = nullptr;
  int in = fd;
  // libvirt numbers the commands itself and refuses one with an id.
  json cmd = request;
  cmd.erase("id");
  std::string text = cmd.dump();
  int rc = virDomainQemuMonitorCommandWithFiles(static_cast<virDomainPtr>(dom_), text.c_str(),
                                                fd >= 0 ? 1 : 0, fd >= 0 ? &in : nullptr,
                                                &nout, &outfiles, &result, 0);
  for (unsigned int i = 0; i < nout; ++i) close(outfiles[i]);
  std::free(outfiles);
  if (rc < 0) {
    // QEMU's own errors come back in the reply: a failed call is libvirt
    // (the domain went away, the connection broke).
    *transport = true;
    std::free(result);
    return Result<json>(ErrorKind::kQemu, last_error());
  }
  json reply = json::parse(result ? result : "", nullptr, /*allow_exceptions=*/false);
  std::free(result);
  if (reply.is_discarded() || !reply.is_object())
    return Result<json>(ErrorKind::kQemu, "libvirt relayed a reply that is not a JSON object");
  return reply;
}

std::optional<json> LibvirtMonitor::next_event(std::chrono::milliseconds timeout) {
  Sink& k = *sink_;
  std::unique_lock<std::mutex> lock(k.mu);
  if (!k.cv.wait_for(lock, timeout, [&] { return !k.events.empty() || k.stopped; }) ||
      k.events.empty())
    return std::nullopt;
  json e = std::move(k.events.front());
  k.events.pop_front();
  return e;
}

std::optional<std::string> LibvirtMonitor::disk_alias(const std::string& target) {
  char* xml = virDomainGetXMLDesc(static_cast<virDomainPtr>(dom_), 0);
  if (!xml) return std::nullopt;
  std::string doc(xml);
  std::free(xml);
  return disk_alias_in_xml(doc, target);
}

std::optional<std::string> disk_alias_in_xml(const std::string& doc, const std::string& target) {
  // ... <alias name='virtio-disk0'/> ... inside the disk's element.
  auto disk = disk_element_in_xml(doc, target);
  if (!disk) return std::nullopt;
  size_t a = disk->find("<alias name='");
  if (a == std::string::npos) return std::nullopt;
  a += 13;
  size_t q = disk->find('\'', a);
  if (q == std::string::npos) return std::nullopt;
  return disk->substr(a, q - a);
}

namespace {

// As libvirt writes attribute values (single quotes).
std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&apos;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

std::optional<std::string> repoint_disk_in_xml(const std::string& xml,
                                               const std::string& old_file,
                                               const std::string& new_file,
                                               const std::string& format) {
  const std::string source = fmt::format("<source file='{}'", xml_escape(old_file));
  for (size_t at = xml.find("<disk "); at != std::string::npos; at = xml.find("<disk ", at + 1)) {
    size_t end = xml.find("</disk>", at);
    if (end == std::string::npos) break;
    std::string disk = xml.substr(at, end - at);
    size_t src = disk.find(source);
    if (src == std::string::npos) continue;  // the quote ends the match: no prefixes
    disk.replace(src, source.size(), fmt::format("<source file='{}'", xml_escape(new_file)));
    size_t drv = disk.find("<driver ");
    if (drv != std::string::npos) {
      size_t type = disk.find(" type='", drv);
      size_t close = disk.find('>', drv);
      if (type != std::string::npos && type < close) {
        size_t q = disk.find('\'', type + 7);
        disk.replace(type + 7, q - (type + 7), format);
      }
    }
    // A chain is one nested run of <backingStore> elements (or an empty
    // <backingStore/>): from the first opening to the last closing.
    size_t b = disk.find("<backingStore");
    if (b != std::string::npos) {
      size_t last = disk.rfind("</backingStore>");
      size_t stop = last != std::string::npos && last > b ? last + 15 : disk.find("/>", b) + 2;
      if (stop < b + 2) return std::nullopt;
      disk.erase(b, stop - b);
    }
    return xml.substr(0, at) + disk + xml.substr(end);
  }
  return std::nullopt;
}

Status libvirt_repoint_disk(const std::string& uri, const std::string& domain,
                            const std::string& old_file, const std::string& new_file,
                            const std::string& format) {
  quiet_errors();
  virConnectPtr conn = virConnectOpen(uri.empty() ? nullptr : uri.c_str());
  if (!conn) return {ErrorKind::kQemu, fmt::format("cannot connect to libvirt: {}", last_error())};
  std::unique_ptr<virConnect, int (*)(virConnectPtr)> conn_guard(conn, virConnectClose);
  virDomainPtr dom = virDomainLookupByName(conn, domain.c_str());
  if (!dom)
    return {ErrorKind::kQemu, fmt::format("libvirt domain {}: {}", domain, last_error())};
  std::unique_ptr<virDomain, int (*)(virDomainPtr)> dom_guard(dom, virDomainFree);
  char* xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
  if (!xml)
    return {ErrorKind::kQemu, fmt::format("libvirt domain {}: {}", domain, last_error())};
  std::string doc(xml);
  std::free(xml);
  auto changed = repoint_disk_in_xml(doc, old_file, new_file, format);
  if (!changed)
    return {ErrorKind::kNotFound,
            fmt::format("libvirt domain {} has no disk on {} in its definition", domain, old_file)};
  virDomainPtr again = virDomainDefineXML(conn, changed->c_str());
  if (!again)
    return {ErrorKind::kQemu,
            fmt::format("libvirt domain {}: cannot update its definition: {}", domain,
                        last_error())};
  virDomainFree(again);
  return Status::ok();
}

}  // namespace kvmcdp

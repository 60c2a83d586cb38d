// QMP through libvirt: the monitor of a libvirt domain's QEMU belongs to
// libvirt, so commands go through virDomainQemuMonitorCommandWithFiles
// (which also passes the file descriptor that getfd and add-fd expect) and
// events come from virConnectDomainQemuMonitorEventRegister, delivered by
// libvirt's event loop on a thread of this object.  libvirt marks the
// domain tainted ("custom-monitor") the first time; see kvmcdp(1).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace kvmcdp {

using json = nlohmann::json;

// The alias of the <disk> whose <target dev='...'/> is `target`, in a
// domain XML as libvirt writes it.
std::optional<std::string> disk_alias_in_xml(const std::string& xml, const std::string& target);

// The disk of `xml` (a domain definition) whose source is `old_file`,
// pointed at `new_file` of `format`: its <source file>, its driver type,
// and no <backingStore> (libvirt reads the new image's chain at start).
// Nothing if no disk has that source.
std::optional<std::string> repoint_disk_in_xml(const std::string& xml,
                                               const std::string& old_file,
                                               const std::string& new_file,
                                               const std::string& format);

// After a snapshot changed the file a domain's disk writes into: the
// domain's persistent definition names the new file, so that its next
// start boots the disk as it is now, not as it was before the snapshot.
Status libvirt_repoint_disk(const std::string& uri, const std::string& domain,
                            const std::string& old_file, const std::string& new_file,
                            const std::string& format);

class LibvirtMonitor {
 public:
  // Opens `uri` (empty: libvirt's default) and looks up the running
  // domain `name`.  `gone`: the domain does not exist or is not running.
  static Result<std::unique_ptr<LibvirtMonitor>> open(const std::string& uri,
                                                      const std::string& name, bool* gone);
  ~LibvirtMonitor();
  LibvirtMonitor(const LibvirtMonitor&) = delete;
  LibvirtMonitor& operator=(const LibvirtMonitor&) = delete;

  // Sends one QMP command (a JSON object with "execute"), with `fd` if
  // not -1.  Returns QEMU's reply ("return" or "error" member), or an
  // error when libvirt could not deliver it (`transport` is then set).
  Result<json> command(const json& request, int fd, bool* transport);
  // The oldest QMP event not yet handed out ({"event", "data",
  // "timestamp"} like QMP's own); waits up to `timeout`.
  std::optional<json> next_event(std::chrono::milliseconds timeout);
  // The domain stopped (shut down, crashed, destroyed): no more events
  // will come, and a wait for one ends at once.
  bool stopped();
  // The alias (QEMU device id) of the disk the domain XML names `target`
  // (<target dev='vda'/>), if there is one.
  std::optional<std::string> disk_alias(const std::string& target);

 private:
  LibvirtMonitor() = default;
  friend struct LibvirtEvents;
  // What the callbacks fill in, on libvirt's event loop thread.  Each
  // registration holds a reference that libvirt drops (its free callback)
  // only once no callback can run any more, which deregistering alone
  // does not promise: a callback may still be running when it returns.
  struct Sink {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<json> events;
    bool stopped = false;
    void deliver(json event);
    void mark_stopped();
  };

  void* conn_ = nullptr;  // virConnectPtr
  void* dom_ = nullptr;   // virDomainPtr
  int callback_ = -1;
  int lifecycle_ = -1;
  std::shared_ptr<Sink> sink_ = std::make_shared<Sink>();
};

}  // namespace kvmcdp

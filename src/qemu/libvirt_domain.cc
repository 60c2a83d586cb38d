#include "qemu/libvirt_domain.h"

#include <cstdlib>
#include <memory>

#include <fmt/format.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

namespace kvmcdp {
namespace {

std::string last_error() {
  const virError* e = virGetLastError();
  return e && e->message ? e->message : "unknown libvirt error";
}

std::string xml_unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    size_t semi = s.find(';', i);
    if (semi == std::string::npos) {
      out += s.substr(i);
      break;
    }
    std::string ent = s.substr(i + 1, semi - i - 1);
    out += ent == "amp" ? "&" : ent == "lt" ? "<" : ent == "gt" ? ">" : ent == "apos" ? "'"
         : ent == "quot" ? "\"" : "&" + ent + ";";
    i = semi;
  }
  return out;
}

using ConnPtr = std::unique_ptr<virConnect, int (*)(virConnectPtr)>;
using DomPtr = std::unique_ptr<virDomain, int (*)(virDomainPtr)>;

Result<std::pair<ConnPtr, DomPtr>> lookup(const std::string& uri, const std::string& domain) {
  virSetErrorFunc(nullptr, [](void*, virErrorPtr) {});
  ConnPtr conn(virConnectOpen(uri.empty() ? nullptr : uri.c_str()), virConnectClose);
  if (!conn) return Status(ErrorKind::kQemu, "cannot connect to libvirt: " + last_error());
  DomPtr dom(virDomainLookupByName(conn.get(), domain.c_str()), virDomainFree);
  if (!dom)
    return Status(ErrorKind::kNotFound,
                  fmt::format("libvirt domain {}: {}", domain, last_error()));
  return std::make_pair(std::move(conn), std::move(dom));
}

}  // namespace

std::optional<std::string> disk_element_in_xml(const std::string& xml, const std::string& target) {
  // libvirt writes its XML one way: <disk ...> ... <target dev='vda' .../>
  // ... </disk>, values in single quotes (the quote ends the match: no
  // prefixes).
  const std::string dev = fmt::format("<target dev='{}'", target);
  for (size_t at = xml.find("<disk "); at != std::string::npos; at = xml.find("<disk ", at + 1)) {
    size_t end = xml.find("</disk>", at);
    if (end == std::string::npos) break;
    std::string disk = xml.substr(at, end - at);
    if (disk.find(dev) != std::string::npos) return disk;
  }
  return std::nullopt;
}

std::optional<std::string> disk_source_in_xml(const std::string& xml, const std::string& target) {
  auto disk = disk_element_in_xml(xml, target);
  if (!disk) return std::nullopt;
  // The disk's own source comes before any <backingStore>.
  size_t chain = disk->find("<backingStore");
  size_t s = disk->find("<source file='");
  if (s == std::string::npos || (chain != std::string::npos && s > chain)) return std::nullopt;
  s += 14;
  size_t q = disk->find('\'', s);
  if (q == std::string::npos) return std::nullopt;
  return xml_unescape(disk->substr(s, q - s));
}

std::string disk_format_in_xml(const std::string& xml, const std::string& target) {
  auto disk = disk_element_in_xml(xml, target);
  if (!disk) return "raw";
  size_t d = disk->find("<driver ");
  if (d == std::string::npos) return "raw";
  size_t close = disk->find('>', d);
  size_t t = disk->find(" type='", d);
  if (t == std::string::npos || t > close) return "raw";
  t += 7;
  return disk->substr(t, disk->find('\'', t) - t);
}

Result<DomainDisk> libvirt_stopped_disk_source(const std::string& uri, const std::string& domain,
                                                const std::string& target) {
  auto d = lookup(uri, domain);
  if (!d) return d.status();
  int active = virDomainIsActive(d->second.get());
  if (active < 0)
    return Status(ErrorKind::kQemu, fmt::format("libvirt domain {}: {}", domain, last_error()));
  if (active)
    return Status(ErrorKind::kBusy,
                  fmt::format("libvirt domain {} is running: shut it down first (recover starts "
                              "it on the point)",
                              domain));
  char* xml = virDomainGetXMLDesc(d->second.get(), VIR_DOMAIN_XML_INACTIVE);
  if (!xml)
    return Status(ErrorKind::kQemu, fmt::format("libvirt domain {}: {}", domain, last_error()));
  std::string doc(xml);
  std::free(xml);
  auto src = disk_source_in_xml(doc, target);
  if (!src)
    return Status(ErrorKind::kNotFound,
                  fmt::format("libvirt domain {} has no file disk {}", domain, target));
  return DomainDisk{*src, disk_format_in_xml(doc, target)};
}

Status libvirt_start_domain(const std::string& uri, const std::string& domain) {
  auto d = lookup(uri, domain);
  if (!d) return d.status();
  if (virDomainCreate(d->second.get()) != 0)
    return Status(ErrorKind::kQemu,
                  fmt::format("libvirt domain {} did not start: {}", domain, last_error()));
  return Status::ok();
}

}  // namespace kvmcdp

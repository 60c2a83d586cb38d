#include "cli/qemu_options.h"

namespace kvmcdp {

void add_qemu_target_options(CLI::App* app, std::string* socket, std::string* domain,
                             std::string* uri, const std::string& qmp_help,
                             const std::string& domain_help) {
  CLI::Option* qmp = qmp_help.empty() ? nullptr : app->add_option("--qmp", *socket, qmp_help);
  CLI::Option* dom = app->add_option("--domain", *domain, domain_help);
  app->add_option("--connect", *uri, "with --domain: the libvirt URI (default: libvirt's default)")
      ->needs(dom);
  if (qmp) qmp->excludes(dom);
}

}  // namespace kvmcdp

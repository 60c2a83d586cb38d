// kvmcdp qmp: send one QMP command and print the reply, for debugging a VM
// or the cdp filter by hand.
#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "cli/cli.h"
#include "cli/qemu_options.h"
#include "qemu/qmp_client.h"

namespace kvmcdp {

CommandRunner setup_qmp_command(CLI::App* app) {
  struct Options {
    std::string socket;
    std::string domain;
    std::string libvirt_uri;
    std::string request;
    int timeout_ms = 10000;
  };
  auto o = std::make_shared<Options>();
  add_qemu_target_options(app, &o->socket, &o->domain, &o->libvirt_uri,
                          "QEMU's QMP unix socket",
                          "instead of --qmp: a libvirt domain, whose QEMU is reached through "
                          "libvirt");
  app->add_option("request", o->request,
                  R"(the command, e.g. '{"execute":"query-status"}')")
      ->required();
  app->add_option("--timeout", o->timeout_ms, "milliseconds to wait for the reply")
      ->capture_default_str();

  return [o]() -> Status {
    json request = json::parse(o->request, nullptr, false);
    if (request.is_discarded() || !request.is_object() || !request.contains("execute") ||
        !request["execute"].is_string())
      return {ErrorKind::kUsage,
              "the request must be a JSON object with an \"execute\" string"};
    if (o->socket.empty() && o->domain.empty())
      return {ErrorKind::kUsage, "qmp needs --qmp SOCKET or --domain NAME"};
    auto client =
        QmpClient::connect(QemuTarget{o->socket, o->domain, o->libvirt_uri}, Millis(o->timeout_ms));
    if (!client) return client.status();
    QmpReply reply = (*client)->execute(request["execute"].get<std::string>(),
                                        request.value("arguments", json()),
                                        Millis(o->timeout_ms));
    if (!reply.ok())
      return {ErrorKind::kQemu, fmt::format("{} failed: {}",
                                            request["execute"].get<std::string>(),
                                            reply.status().message())};
    std::printf("%s\n", reply.value.dump(2).c_str());
    return Status::ok();
  };
}

}  // namespace kvmcdp

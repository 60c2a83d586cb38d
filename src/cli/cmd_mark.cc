// kvmcdp mark: put a named point into the stream of a protected drive.
//
// The seq is printed only once the mark is durable in the journal: a mark
// reported and then lost with a crashing protect would send a later
// `restore --mark` looking for a point that never existed.  QEMU's
// filter counts a record as acknowledged only after protect's group
// commit, so mark waits for the filter's acked seq (or the durable seq
// protect publishes, when acks wait for a backup server) to pass the
// mark's, then checks that the journal really holds it (a gap may have
// dropped it).
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "capture/mark_channel.h"
#include "cli/cli.h"
#include "store/journal_ranges.h"
#include "store/protect_state.h"
#include "qemu/qmp_client.h"
#include "store/time_parse.h"

namespace kvmcdp {
namespace {

// A protect restarted by its service manager gets the mark from the
// filter's queue: long enough for that, short enough to be an answer.
constexpr auto kDurableWait = std::chrono::seconds(30);

// The filter's acked seq, or nullopt if QMP no longer knows the node.
std::optional<uint64_t> filter_acked_seq(QmpClient& qmp, const std::string& node) {
  QmpReply r = qmp.execute("query-cdp");
  if (!r.ok() || !r.value.is_array()) return std::nullopt;
  for (const auto& f : r.value)
    if (f.value("node-name", "") == node) return f.value("acked-seq", uint64_t{0});
  return std::nullopt;
}

// Waits until the journal holds mark `seq` named `name` durably.
Status wait_durable(QmpClient& qmp, const std::string& store, const std::string& node,
                    const std::string& name, uint64_t seq) {
  auto deadline = std::chrono::steady_clock::now() + kDurableWait;
  for (;;) {
    auto acked = filter_acked_seq(qmp, node);
    if (!acked)
      return {ErrorKind::kQemu,
              fmt::format("the cdp filter '{}' went away before mark '{}' (seq {}) was in the "
                          "journal",
                          node, name, seq)};
    if (*acked >= seq) break;
    // With --ack-from remote the filter's acks wait for the server; the
    // local journal's durable seq is in protect.json (about once a second).
    auto state = read_protect_state(store);
    if (state && state->durable_seq >= seq) break;
    if (std::chrono::steady_clock::now() >= deadline)
      return {ErrorKind::kFailure,
              fmt::format("mark '{}' (seq {}) is not in the journal after {} s (is kvmcdp "
                          "protect running?); it is written if protect catches up: see "
                          "kvmcdp points",
                          name, seq, kDurableWait.count())};
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // Acked means durable, unless the filter dropped the mark in a gap and
  // the acks went past it.
  auto reader = journal::JournalReader::open(store);
  if (!reader) return reader.status();
  auto marks = journal::list_marks(**reader);
  if (!marks) return marks.status();
  for (const auto& m : *marks)
    if (m.seq == seq) return Status::ok();
  return {ErrorKind::kFailure,
          fmt::format("mark '{}' (seq {}) was lost: protect was away longer than the filter "
                      "waits, and the journal has a gap there; make the mark again",
                      name, seq)};
}

}  // namespace

CommandRunner setup_mark_command(CLI::App* app) {
  auto store = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>();
  app->add_option("--store", *store, "the store of a running protect")->required();
  app->add_option("name", *name, "the mark's name")->required();
  return [store, name]() -> Status {
    if (name->empty() || name->size() > 255)
      return {ErrorKind::kUsage, "a mark's name has 1 to 255 bytes"};
    auto state = read_protect_state(*store);
    if (!state || !protect_running(*state))
      return {ErrorKind::kNotFound,
              fmt::format("{} is not being protected (kvmcdp protect is not running)", *store)};
    // A second mark of a name would make --mark NAME ambiguous.  (A mark
    // still on its way to the journal is not seen: two marks of one name
    // given at the same instant can both pass.)
    auto reader = journal::JournalReader::open(*store);
    auto marks = reader ? journal::list_marks(**reader)
                        : Result<std::vector<journal::Mark>>(reader.status());
    if (!marks)
      std::fprintf(stderr,
                   "kvmcdp: warning: could not check the journal for a mark named '%s': %s\n",
                   name->c_str(), marks.status().message().c_str());
    else
      for (const auto& m : *marks)
        if (m.name == *name)
          return {ErrorKind::kExists,
                  fmt::format("a mark named '{}' exists already (seq {}, {}): choose another name",
                              *name, m.seq, format_time_human(m.time_ns))};
    if (state->mode == "mirror") {
      // Mirror capture: protect itself puts the mark into the stream.
      auto seq = request_mark(state->stream_id, *name, 35000);
      if (!seq) return seq.status();
      std::printf("%llu\n", static_cast<unsigned long long>(*seq));
      return Status::ok();
    }
    // The QEMU that protect serves, as protect reaches it.
    auto qmp = QmpClient::connect(
        QemuTarget{state->qmp_socket, state->domain, state->libvirt_uri});
    if (!qmp) return qmp.status();
    QmpReply r = (*qmp)->execute("cdp-mark", {{"node-name", state->filter_node}, {"name", *name}});
    if (!r.ok()) return {ErrorKind::kQemu, "cdp-mark failed: " + r.status().message()};
    uint64_t seq = r.value.value("seq", uint64_t{0});
    if (Status s = wait_durable(**qmp, *store, state->filter_node, *name, seq); !s) return s;
    std::printf("%llu\n", static_cast<unsigned long long>(seq));
    return Status::ok();
  };
}

}  // namespace kvmcdp

// kvmcdp mark: put a named point into the stream of a protected drive.
#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "cli.h"
#include "journal_ranges.h"
#include "protect_state.h"
#include "qmp_client.h"
#include "time_parse.h"

namespace kvmcdp {

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
    auto qmp = QmpClient::connect(state->qmp_socket);
    if (!qmp) return qmp.status();
    QmpReply r = (*qmp)->execute("cdp-mark", {{"node-name", state->filter_node}, {"name", *name}});
    if (!r.ok()) return {ErrorKind::kQemu, "cdp-mark failed: " + r.status().message()};
    std::printf("%llu\n", static_cast<unsigned long long>(r.value.value("seq", uint64_t{0})));
    return Status::ok();
  };
}

}  // namespace kvmcdp

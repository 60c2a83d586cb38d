// Reads a command's config file into its CLI11 options.
//
// The file is not a second option language: every key is a long option of
// the command and every value goes through that option's own validators,
// so the man page documents the options once and a file is checked exactly
// like a command line.  The settings are applied from the --config option's
// callback, which CLI11 runs after the whole command line is parsed and
// before it checks required options, needs and excludes: an option the
// command line gave is left alone (the command line wins), the others get
// the file's value.  Strictness is the point: an unknown or repeated key,
// a line that is not KEY=VALUE or a bad value stops the command with the
// file and line, since a service that silently ignored a misspelt `spool`
// would run without its safety net.
#include "cli/config_file.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

#include "cli/edit_distance.h"
#include "base/fsutil.h"

namespace kvmcdp {
namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

std::string closest(const std::string& word, const std::vector<std::string>& keys) {
  std::string best;
  size_t best_distance = 3;  // farther than this is no suggestion
  for (const auto& k : keys) {
    size_t d = edit_distance(word, k);
    if (d < best_distance) {
      best_distance = d;
      best = k;
    }
  }
  return best;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// A flag's value as CLI11 wants it: "true", or "" for false (the flag
// then stays unset, as if not given).
Result<std::string> flag_value(const std::string& v) {
  std::string l = v;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  if (l == "true" || l == "yes" || l == "on" || l == "1") return std::string("true");
  if (l == "false" || l == "no" || l == "off" || l == "0") return std::string();
  return Status(ErrorKind::kUsage, "");
}

}  // namespace

Result<std::vector<ConfigSetting>> parse_config(const std::string& text, const std::string& file,
                                                const std::vector<std::string>& keys,
                                                const std::vector<std::string>& flags) {
  std::vector<ConfigSetting> out;
  std::map<std::string, int> seen;
  size_t pos = 0;
  int n = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = trim(text.substr(pos, end - pos));
    pos = end + 1;
    ++n;
    auto fail = [&](const std::string& what) {
      return Result<std::vector<ConfigSetting>>(ErrorKind::kUsage,
                                                fmt::format("{} line {}: {}", file, n, what));
    };
    if (line.empty() || line[0] == '#') continue;
    size_t eq = line.find('=');
    if (eq == std::string::npos)
      return fail(fmt::format("'{}' is not KEY=VALUE", line));
    std::string key = trim(line.substr(0, eq));
    std::string value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front())
      value = value.substr(1, value.size() - 2);
    if (key == "config") return fail("a config file cannot name another one");
    if (!contains(keys, key)) {
      std::string hint = closest(key, keys);
      return fail(hint.empty() ? fmt::format("unknown setting '{}' (settings are the command's "
                                             "long options without --)",
                                             key)
                               : fmt::format("unknown setting '{}'; did you mean '{}'?", key, hint));
    }
    if (auto [it, fresh] = seen.emplace(key, n); !fresh)
      return fail(fmt::format("{} is set again (first on line {})", key, it->second));
    if (value.empty()) return fail(fmt::format("{} has no value", key));
    if (contains(flags, key)) {
      auto v = flag_value(value);
      if (!v) return fail(fmt::format("{} takes true or false, not '{}'", key, value));
      value = *v;
    }
    out.push_back({key, value, n});
  }
  return out;
}

void add_config_option(CLI::App* app) {
  const CLI::Option* help = app->get_help_ptr();
  std::vector<std::string> keys, flags;
  for (const CLI::Option* opt : app->get_options()) {
    if (opt == help) continue;
    for (const auto& name : opt->get_lnames()) {
      keys.push_back(name);
      if (opt->get_expected_min() == 0) flags.push_back(name);
    }
  }
  app->add_option_function<std::string>(
         "--config",
         [app, keys, flags](const std::string& path) {
           auto bytes = fsutil::read_file(path);
           if (!bytes)
             throw CLI::ConfigError("cannot read --config: " + bytes.status().message());
           auto settings =
               parse_config(std::string(bytes->begin(), bytes->end()), path, keys, flags);
           if (!settings) throw CLI::ConfigError(settings.status().message());
           for (const auto& s : *settings) {
             CLI::Option* opt = app->get_option_no_throw("--" + s.key);
             if (opt == nullptr || opt->count() > 0) continue;  // the command line wins
             if (s.value.empty()) continue;                     // a flag set false
             try {
               opt->add_result(s.value);
               opt->run_callback();
             } catch (const CLI::ParseError& e) {
               throw CLI::ConfigError(fmt::format("{} line {}: {}", path, s.line, e.what()));
             }
           }
         },
         "read options from FILE: one KEY=VALUE a line, KEY a long option without --; "
         "the command line overrides it")
      ->type_name("FILE");
}

}  // namespace kvmcdp

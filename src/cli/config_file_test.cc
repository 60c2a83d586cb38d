#include "cli/config_file.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include <doctest/doctest.h>

#include "cli/cli.h"

namespace kvmcdp {
namespace {

const std::vector<std::string> kKeys = {"qmp", "drive", "store", "spool", "level", "quiet"};
const std::vector<std::string> kFlags = {"quiet"};

std::string parse_error(const std::string& text) {
  auto r = parse_config(text, "vm1.conf", kKeys, kFlags);
  REQUIRE(!r);
  CHECK(r.status().kind() == ErrorKind::kUsage);
  return r.status().message();
}

// A config file on disk for the length of a test.
struct ConfFile {
  std::string path;
  explicit ConfFile(const std::string& text) {
    char tmpl[] = "/tmp/kvmcdp-conf-XXXXXX";
    int fd = mkstemp(tmpl);
    REQUIRE(fd >= 0);
    close(fd);
    path = tmpl;
    std::ofstream(path) << text;
  }
  ~ConfFile() { unlink(path.c_str()); }
};

// `kvmcdp protect ARGS...` parsed by the real protect options; the
// subcommand to read the options back from, or the parse error's text.
struct Parsed {
  CLI::App app{"kvmcdp"};
  CLI::App* protect = nullptr;
  // Owns the options the parser writes into: kept for as long as the app.
  CommandRunner runner;
  std::string error;
  explicit Parsed(std::vector<std::string> args) {
    protect = app.add_subcommand("protect");
    runner = setup_protect_command(protect);
    args.insert(args.begin(), {"kvmcdp", "protect"});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    try {
      app.parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError& e) {
      error = e.what();
    }
  }
  std::string get(const char* name) { return protect->get_option(name)->as<std::string>(); }
};

}  // namespace

TEST_CASE("config: KEY=VALUE lines, comments, blanks, spaces and quotes") {
  auto r = parse_config("# protect vm1's disk\n"
                        "\n"
                        "qmp=/run/vm1.qmp\n"
                        "  drive = virtio-disk0  \r\n"
                        "spool=\"/var/spool/kvmcdp/vm 1\"\n"
                        "level='3'\n"
                        "   # indented comment\n"
                        "quiet=yes",
                        "vm1.conf", kKeys, kFlags);
  REQUIRE_MESSAGE(r, r.status().message());
  REQUIRE(r->size() == 5);
  CHECK((*r)[0].key == "qmp");
  CHECK((*r)[0].value == "/run/vm1.qmp");
  CHECK((*r)[0].line == 3);
  CHECK((*r)[1].key == "drive");
  CHECK((*r)[1].value == "virtio-disk0");
  CHECK((*r)[2].value == "/var/spool/kvmcdp/vm 1");
  CHECK((*r)[3].value == "3");
  CHECK((*r)[4].key == "quiet");
  CHECK((*r)[4].value == "true");
  CHECK((*r)[4].line == 8);

  auto off = parse_config("quiet = false\n", "f", kKeys, kFlags);
  REQUIRE(off);
  CHECK((*off)[0].value == "");
  CHECK(parse_config("", "f", kKeys, kFlags)->empty());
}

TEST_CASE("config: unknown, repeated, empty and malformed settings name the line") {
  CHECK(parse_error("qmp=/run/vm1.qmp\nstroe=/x\n") ==
        "vm1.conf line 2: unknown setting 'stroe'; did you mean 'store'?");
  CHECK(parse_error("--store=/x\n") ==
        "vm1.conf line 1: unknown setting '--store'; did you mean 'store'?");
  CHECK(parse_error("\n\nbandwidth=9\n") ==
        "vm1.conf line 3: unknown setting 'bandwidth' (settings are the command's long options "
        "without --)");
  CHECK(parse_error("store=/a\n# again\nstore=/b\n") ==
        "vm1.conf line 3: store is set again (first on line 1)");
  CHECK(parse_error("store=\n") == "vm1.conf line 1: store has no value");
  CHECK(parse_error("store /x\n") == "vm1.conf line 1: 'store /x' is not KEY=VALUE");
  CHECK(parse_error("quiet=maybe\n") == "vm1.conf line 1: quiet takes true or false, not 'maybe'");
  CHECK(parse_error("config=/etc/other.conf\n") ==
        "vm1.conf line 1: a config file cannot name another one");
}

TEST_CASE("config: protect --config fills the options the command line left unset") {
  ConfFile conf("qmp=/run/vm1.qmp\n"
                "drive=virtio-disk0\n"
                "spool=/var/spool/kvmcdp/vm1\n"
                "remote=tcp://vault:7419/vm1\n"
                "secret-file=/etc/kvmcdp/vm1.secret\n"
                "spool-size=512\n"
                "level=3\n"
                "quiet=true\n");
  Parsed p({"--config", conf.path, "--level", "5"});
  REQUIRE_MESSAGE(p.error.empty(), p.error);
  CHECK(p.get("--qmp") == "/run/vm1.qmp");
  CHECK(p.get("--drive") == "virtio-disk0");
  CHECK(p.get("--spool") == "/var/spool/kvmcdp/vm1");
  CHECK(p.get("--remote") == "tcp://vault:7419/vm1");
  CHECK(p.get("--secret-file") == "/etc/kvmcdp/vm1.secret");
  CHECK(p.get("--spool-size") == "512");
  CHECK(p.get("--level") == "5");  // the command line wins
  CHECK(p.protect->get_option("--quiet")->as<bool>());
  CHECK(p.protect->get_option("--store")->count() == 0);
}

TEST_CASE("config: protect checks a config file like a command line") {
  {
    ConfFile conf("qmp=/run/vm1.qmp\ndrive=vd0\nstore=/s\nlevel=99\n");
    Parsed p({"--config", conf.path});
    CHECK(p.error.rfind(conf.path + " line 4: --level", 0) == 0);
  }
  {
    // --spool needs --remote, wherever either comes from.
    ConfFile conf("qmp=/run/vm1.qmp\ndrive=vd0\nspool=/s\n");
    Parsed p({"--config", conf.path});
    CHECK(p.error.find("--spool requires --remote") != std::string::npos);
  }
  {
    ConfFile conf("qmp=/run/vm1.qmp\nstore=/s\n");
    Parsed p({"--config", conf.path});
    CHECK(p.error.find("--drive is required") != std::string::npos);
  }
  {
    ConfFile conf("qmp=/run/vm1.qmp\ndrive=vd0\nstore=/s\nmode=fast\n");
    Parsed p({"--config", conf.path});
    CHECK(p.error.rfind(conf.path + " line 4: --mode", 0) == 0);
  }
  {
    ConfFile conf("qmp=/run/vm1.qmp\ndrive=vd0\nstroe=/s\n");
    Parsed p({"--config", conf.path});
    CHECK(p.error == conf.path + " line 3: unknown setting 'stroe'; did you mean 'store'?");
  }
  Parsed missing({"--config", "/nonexistent/vm1.conf"});
  CHECK(missing.error ==
        "cannot read --config: open /nonexistent/vm1.conf: No such file or directory");
}

}  // namespace kvmcdp

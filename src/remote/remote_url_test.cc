#include "remote/remote_url.h"

#include <doctest/doctest.h>

namespace kvmcdp {

TEST_CASE("remote url: ssh forms") {
  auto a = parse_remote_url("ssh://backup@vault.example:2222/srv/kvmcdp/vm1");
  REQUIRE(a);
  CHECK(a->kind == RemoteUrl::Kind::kSsh);
  CHECK(a->user == "backup");
  CHECK(a->host == "vault.example");
  CHECK(a->port == "2222");
  CHECK(a->path == "/srv/kvmcdp/vm1");
  CHECK(a->to_string() == "ssh://backup@vault.example:2222/srv/kvmcdp/vm1");

  auto b = parse_remote_url("ssh://vault/./stores/vm1");
  REQUIRE(b);
  CHECK(b->user.empty());
  CHECK(b->port.empty());
  CHECK(b->path == "stores/vm1");

  auto c = parse_remote_url("ssh://[::1]:22/x");
  REQUIRE(c);
  CHECK(c->host == "::1");
  CHECK(c->to_string() == "ssh://[::1]:22/x");
}

TEST_CASE("remote url: tcp forms") {
  auto a = parse_remote_url("tcp://10.0.0.5:7419/vm1-disk0");
  REQUIRE(a);
  CHECK(a->kind == RemoteUrl::Kind::kTcp);
  CHECK(a->host == "10.0.0.5");
  CHECK(a->port == "7419");
  CHECK(a->path == "vm1-disk0");
}

TEST_CASE("remote url: refusals are usage errors") {
  for (const char* bad :
       {"http://x/y", "tcp://x/y", "tcp://x:0/y", "tcp://x:70000/y", "tcp://x:1/../other-vm",
        "tcp://x:1/a/b", "tcp://x:1/", "tcp://u@x:1/a", "ssh://x", "ssh:///p", "ssh://x/",
        "ssh://@x/p", "ssh://x:/p", "ssh://[::1/p", "tcp://x:1/.hidden"}) {
    CAPTURE(bad);
    auto r = parse_remote_url(bad);
    REQUIRE_FALSE(r);
    CHECK(r.status().kind() == ErrorKind::kUsage);
  }
}

TEST_CASE("remote url: store names cannot leave the root") {
  CHECK(valid_store_name("vm1"));
  CHECK(valid_store_name("vm1.disk-0_a"));
  CHECK_FALSE(valid_store_name(".."));
  CHECK_FALSE(valid_store_name("../other-vm"));
  CHECK_FALSE(valid_store_name("a/b"));
  CHECK_FALSE(valid_store_name(""));
  CHECK_FALSE(valid_store_name(std::string(129, 'a')));
  CHECK_FALSE(valid_store_name("-rf"));
}

}  // namespace kvmcdp

namespace kvmcdp {

TEST_CASE("remote url: tls forms, tcps:// as an alias") {
  auto a = parse_remote_url("tls://10.0.0.5:7419/vm1");
  REQUIRE(a);
  CHECK(a->kind == RemoteUrl::Kind::kTls);
  CHECK(a->served());
  CHECK(a->host == "10.0.0.5");
  CHECK(a->port == "7419");
  CHECK(a->path == "vm1");
  CHECK(a->to_string() == "tls://10.0.0.5:7419/vm1");
  auto b = parse_remote_url("tcps://[::1]:7419/vm1");
  REQUIRE(b);
  CHECK(b->kind == RemoteUrl::Kind::kTls);
  CHECK(b->to_string() == "tls://[::1]:7419/vm1");
  CHECK(parse_remote_url("tls://host/vm1").status().kind() == ErrorKind::kUsage);  // no port
  CHECK_FALSE(parse_remote_url("tls://u@host:1/vm1"));
  CHECK_FALSE(parse_remote_url("tls://host:1/../x"));
  CHECK_FALSE(parse_remote_url("ssh://h/x")->served());
}

}  // namespace kvmcdp

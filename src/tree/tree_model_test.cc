// tree.json: round trip, and what a damaged or hostile file is reported as.
#include "tree/tree_model.h"

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace kvmcdp {
namespace {

Tree sample() {
  Tree t;
  t.dir = "/t";
  t.nodes = {{"s1", "/vm/base.qcow2", "qcow2", "", 10, NodeState::kLive, std::nullopt},
             {"s2", "n0001.qcow2", "qcow2", "s1", 20, NodeState::kDeleted, 42},
             {"@n0002", "n0002.qcow2", "qcow2", "s2", 30, NodeState::kLive, std::nullopt},
             {"@n0003", "n0003.qcow2", "qcow2", "s2", 30, NodeState::kLive, std::nullopt}};
  t.active = "@n0003";
  t.next_id = 4;
  return t;
}

}  // namespace

TEST_CASE("tree: json round trip keeps every field") {
  Tree t = sample();
  t.intent = TreeIntent{IntentOp::kMerge, {{"node", "s2"}}};
  auto back = tree_from_json(tree_to_json(t), "/t");
  REQUIRE(back);
  CHECK(tree_to_json(*back) == tree_to_json(t));
  CHECK(back->find("s2")->point == 42u);
  CHECK(back->find("s2")->state == NodeState::kDeleted);
  CHECK(back->children("s2").size() == 2);
  CHECK(back->in_active_chain("s1"));
  CHECK(!back->in_active_chain("@n0002"));
  CHECK(back->path_of(*back->find("s2")) == "/t/n0001.qcow2");
  CHECK(back->path_of(*back->find("s1")) == "/vm/base.qcow2");
}

TEST_CASE("tree: damaged metadata is reported, never guessed") {
  CHECK(tree_from_json("{", "/t").status().kind() == ErrorKind::kDamaged);
  CHECK(tree_from_json("[]", "/t").status().kind() == ErrorKind::kDamaged);
  std::string good = tree_to_json(sample());
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    s.replace(s.find(from), from.size(), to);
    return tree_from_json(s, "/t");
  };
  auto v = with("\"version\": 1", "\"version\": 2");
  CHECK(v.status().kind() == ErrorKind::kDamaged);
  CHECK(v.status().message().find("unknown version 2") != std::string::npos);
  CHECK(!with("\"parent\": \"s1\"", "\"parent\": \"nope\""));  // unknown parent
  CHECK(!with("\"parent\": \"s1\"", "\"parent\": null"));      // two roots
  CHECK(!with("\"active\": \"@n0003\"", "\"active\": \"s2\""));  // active has children
  CHECK(!with("\"state\": \"deleted\"", "\"state\": \"gone\""));
  CHECK(!with("\"name\": \"@n0002\"", "\"name\": \"s1\""));     // duplicate name
}

TEST_CASE("tree: a number out of its field's range is damage, not a guess") {
  // Found by tests/fuzz/tree_fuzz.cc's sibling manifest_fuzz.cc: get<T>()
  // converted floats, undefined behaviour out of range.
  std::string good = tree_to_json(sample());
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    REQUIRE(s.find(from) != std::string::npos);
    s.replace(s.find(from), from.size(), to);
    return tree_from_json(s, "/t");
  };
  CHECK(with("\"next_id\": 4", "\"next_id\": 5"));
  CHECK(with("\"next_id\": 4", "\"next_id\": 1e30").status().kind() == ErrorKind::kDamaged);
  CHECK(with("\"next_id\": 4", "\"next_id\": -1").status().kind() == ErrorKind::kDamaged);
  CHECK(with("\"created\": 20", "\"created\": 1e300").status().kind() == ErrorKind::kDamaged);
  CHECK(with("\"point\": 42", "\"point\": 2.5").status().kind() == ErrorKind::kDamaged);
  CHECK(with("\"version\": 1", "\"version\": 1e20").status().kind() == ErrorKind::kDamaged);
}

TEST_CASE("tree: cycles are refused") {
  Tree t = sample();
  t.nodes[0].parent = "@n0002";  // no root left, s1 <- s2 <- @n0002 <- s1
  CHECK(!validate_tree(t));
}

TEST_CASE("tree: snapshot names and relative backing strings") {
  CHECK(validate_snapshot_name("nightly-2026-11-21"));
  CHECK(!validate_snapshot_name(""));
  CHECK(!validate_snapshot_name("@n0001"));
  CHECK(!validate_snapshot_name("a/b"));
  CHECK(!validate_snapshot_name("a b"));
  CHECK(relative_backing("/t/n0002.qcow2", "/t/n0001.qcow2") == "n0001.qcow2");
  CHECK(relative_backing("/t/n0001.qcow2", "/vm/base.qcow2") == "../vm/base.qcow2");
  Tree t = sample();
  CHECK(t.take_file_name() == "n0004.qcow2");
  CHECK(t.next_id == 5);
}

}  // namespace kvmcdp

namespace kvmcdp {

TEST_CASE("tree: node file names past n9999 are still the tree's own") {
  Tree t = sample();
  t.next_id = 9999;
  CHECK(t.take_file_name() == "n9999.qcow2");
  CHECK(t.take_file_name() == "n10000.qcow2");
  for (std::string f : {"n0001.qcow2", "n9999.qcow2", "n10000.qcow2", "n123456.qcow2"}) {
    CAPTURE(f);
    CHECK(is_node_file_name(f));
  }
  for (std::string f : {"n001.qcow2", "nabcd.qcow2", "n0001.qcow", "n0001.qcow2.tmp",
                        "x0001.qcow2", "n00a1.qcow2", "base.qcow2", "tree.json"}) {
    CAPTURE(f);
    CHECK(!is_node_file_name(f));
  }
  CHECK(active_node_name("n10000.qcow2") == "@n10000");
  CHECK(overlay_qemu_node_name("n10000.qcow2") == "kvmcdp-n10000");
}

TEST_CASE("tree: intents are stored by their old names") {
  using P = std::pair<IntentOp, const char*>;
  for (const P& p : {P{IntentOp::kCreate, "create"}, P{IntentOp::kMerge, "merge"},
                     P{IntentOp::kRemove, "remove"}, P{IntentOp::kRevert, "revert"}}) {
    // Named copies, not structured bindings: CAPTURE's lambda cannot
    // capture those in C++20 with clang 14.
    const IntentOp op = p.first;
    const char* name = p.second;
    CAPTURE(name);
    CHECK(std::string(intent_name(op)) == name);
    CHECK(intent_from_name(name) == op);
    Tree t = sample();
    t.intent = TreeIntent{op, {{"file", "n0004.qcow2"}}};
    std::string text = tree_to_json(t);
    CHECK(text.find(fmt::format("\"op\": \"{}\"", name)) != std::string::npos);
    auto back = tree_from_json(text, "/t");
    REQUIRE(back);
    CHECK(back->intent->op == op);
  }
  Tree t = sample();
  t.intent = TreeIntent{IntentOp::kMerge, {}};
  std::string text = tree_to_json(t);
  text.replace(text.find("\"merge\""), 7, "\"fold\"");
  auto unknown = tree_from_json(text, "/t");
  CHECK(unknown.status().kind() == ErrorKind::kDamaged);
  CHECK(unknown.status().message().find("unknown intent 'fold'") != std::string::npos);
}

}  // namespace kvmcdp

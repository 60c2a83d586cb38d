// kvmcdp's entry point: everything happens in cli.cc.
#include "cli/cli.h"

int main(int argc, char** argv) { return kvmcdp::run_cli(argc, argv); }

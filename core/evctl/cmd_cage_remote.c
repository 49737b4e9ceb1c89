/*
 * cmd_cage_remote.c: the server-side cage subcommands (deploy, list, delete, logs, env, cert
 * upload, cert lock). Placeholder until the cage-broker plugin's front lands (issue 14).
 */
#include "evctl.h"

int cmd_cage_remote(int argc, char **argv) {
  fprintf(stderr, "evctl: cage %s: not built\n", argc > 0 ? argv[0] : "");
  return EVCTL_EXIT_USAGE;
}

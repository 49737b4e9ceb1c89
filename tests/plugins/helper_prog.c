/*
 * evs-test-helper: the program tests/plugins/helper.c runs as a helper process. It reads
 * commands, one per line, from the socket on fd 3 and reports on stderr (the server's log):
 *   ptrace   calls ptrace(PTRACE_TRACEME), which the worker policy punishes with SIGSYS
 *   socket   tries an AF_INET socket, reports the errno (EPERM under the worker policy)
 *   fork     tries fork(), reports the errno (EPERM under the worker policy)
 *   exit N   exits with status N
 * It exits with 0 at EOF. It ends with _exit: a sanitized build's leak check at exit needs
 * ptrace and new processes, which the worker policy forbids.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *what, int r) {
  fprintf(stderr, "evs-test-helper %d: %s %s errno=%d\n", (int)getpid(), what,
          r < 0 ? "refused" : "allowed", r < 0 ? errno : 0);
}

int main(void) {
  FILE *in = fdopen(3, "r");
  if (!in) return 2;
  fprintf(stderr, "evs-test-helper %d: up\n", (int)getpid());
  char line[128];
  while (fgets(line, sizeof line, in)) {
    line[strcspn(line, "\n")] = 0;
    if (strcmp(line, "ptrace") == 0) {
      long r = ptrace(PTRACE_TRACEME, 0, NULL, NULL);
      report("ptrace", (int)r);
    } else if (strcmp(line, "socket") == 0) {
      int s = socket(AF_INET, SOCK_STREAM, 0);
      report("socket", s);
      if (s >= 0) close(s);
    } else if (strcmp(line, "fork") == 0) {
      pid_t p = fork();
      if (p == 0) _exit(0);
      report("fork", p);
      if (p > 0) waitpid(p, NULL, 0);
    } else if (strncmp(line, "exit ", 5) == 0) {
      _exit(atoi(line + 5));
    }
  }
  _exit(0);
}

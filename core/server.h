/*
 * Listening sockets and client connections (server.c): the master opens the sockets, each
 * worker accepts on them and serves HTTP/1.1 on its connections.
 */
#ifndef EVS_CORE_SERVER_H
#define EVS_CORE_SERVER_H

#include "tls.h"
#include "worker.h"

/* A listening socket as the master opened it; workers inherit the fd. */
struct evs__listen_sock {
  char *name;
  int fd;
  int is_admin;              /* the admin Unix socket */
  int tls;
  const evs__listener_conf *conf;
  /* The listener's TLS contexts, built by the master (owner) before it forks: the private keys
   * are read as root, so they can stay readable by root alone, never by the workers' user.
   * Workers use their inherited copy. NULL for plain listeners. */
  evs__tls_server *tls_server;
};

struct evs__listener {
  uv_tcp_t tcp;              /* or pipe for admin (same first member layout via union) */
  uv_pipe_t pipe;
  const evs__listen_sock *sock;
  evs__tls_server *tls;
  int own_tls;               /* tls was built here (no master: tests), so freed here */
  int closed;
};

int evs__server_listen(evs__worker *w);
void evs__server_stop_accepting(evs__worker *w);
/* Close keep-alive connections idle for at least min_idle_ms; connections with a request in
 * flight close after it (draining workers answer with Connection: close). Waiting a little
 * before closing an idle connection avoids racing a client that is sending its next request. */
void evs__server_close_idle(evs__worker *w, uint64_t min_idle_ms);
void evs__server_free_tls(evs__worker *w);
void evs__server_close_all(evs__worker *w);

#endif

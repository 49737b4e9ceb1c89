/*
 * cage_run.h: the runner, the only interface through which the cage-broker's front runs a cage
 * (docs/cages.md). An instance is one running copy of one deployed image on this worker rank.
 * Everything here runs on the worker's loop; callbacks arrive on it. Owned by the runner
 * (cage_run.c, sandbox/cage_vmm.c, sandbox/cage_init.c); the front only calls these.
 */
#ifndef EVS_CAGE_RUN_H
#define EVS_CAGE_RUN_H

#include <stddef.h>
#include <stdint.h>

#include <evserver/evs_plugin.h>

typedef struct cage_instance cage_instance;
typedef struct cage_api_call cage_api_call;

typedef enum cage_backend {
  CAGE_BACKEND_AUTO = 0, /* kvm where KVM can boot the kernel (cage_run.c), else sandbox */
  CAGE_BACKEND_KVM,
  CAGE_BACKEND_SANDBOX,
} cage_backend;

typedef enum cage_state {
  CAGE_STARTING = 1, /* booting, or restarting after a crash (why says so) */
  CAGE_READY,        /* the app accepts connections on its port */
  CAGE_CRASHED,      /* the app or the cage died; a restart follows with backoff */
  CAGE_STOPPED,      /* after cage_stop; the last callback for the instance */
} cage_state;

typedef struct cage_run_spec {
  uint32_t size;            /* sizeof(cage_run_spec) */
  const char *name;         /* helper name, [a-z0-9_-]{1,40}, unique per plugin and rank */
  const char *image_path;   /* the .eif on local disk; the runner may unpack it beside */
  cage_backend backend;
  const char *const *env;   /* "KEY=VALUE", NULL-terminated; secrets already plaintext
                               (copied: the runner keeps them to send again at each restart
                               of the cage, and wipes them at cage_run_stop) */
  uint64_t memory_bytes;    /* 0: 256 MiB */
  unsigned cpus;            /* 0: 1 */
  const char *const *egress_allow; /* destination domains (Outbound Relay syntax); NULL: any */
  const uint16_t *egress_ports;    /* allowed ports; n_egress_ports 0 with egress on: 443 */
  size_t n_egress_ports;
  int egress;               /* 0: no network out of the cage at all */
  int debug;                /* 1: forward the app's stdout/stderr to on_log */
  int egress_allow_private; /* egress may reach loopback and private addresses (tests) */
  int kvm_tcg;              /* backend kvm under qemu's software emulation instead of KVM (tests
                               on machines whose KVM cannot boot a kernel); never attestable */
} cage_run_spec;

typedef struct cage_run_callbacks {
  void (*on_state)(void *arg, cage_instance *ci, cage_state state, const char *why);
  /* debug mode only: one line of the app's output, stream 1 or 2 */
  void (*on_log)(void *arg, cage_instance *ci, int stream, const char *line, size_t len);
  /* An Encryption API request from inside the cage (127.0.0.1:9999): method, path
   * ("/encrypt", "/decrypt", "/attestation-doc"), body. The front answers with
   * cage_api_reply exactly once, possibly later. */
  void (*on_api)(void *arg, cage_instance *ci, cage_api_call *call, const char *method,
                 const char *path, const uint8_t *body, size_t len);
  /* One egress connection decided (never data): host, port, allowed, why (static). */
  void (*on_egress)(void *arg, cage_instance *ci, const char *host, int port, int allowed,
                    const char *why);
} cage_run_callbacks;

/* Starts an instance. 0 and *ret_ci, or a negative errno with nothing left running. */
int cage_run_start(evs_plugin *p, const evs_host *host, const cage_run_spec *spec,
                   const cage_run_callbacks *cb, void *arg, cage_instance **ret_ci);

/* A unix socket path: each connection to it reaches the app's port inside the cage, bytes
 * as sent (HTTP with TLS termination on, the client's TLS without). NULL unless the instance
 * is READY (the path changes at each boot); only the worker's user can connect (0600). */
const char *cage_run_app_socket(const cage_instance *ci);

/* Which isolation backs the instance: "kvm" or "sandbox" (for the attestation document). */
const char *cage_run_backend(const cage_instance *ci);

/* Answers an on_api call: status, a JSON or base64 body. Copies body. */
void cage_api_reply(cage_api_call *call, int status, const char *content_type,
                    const uint8_t *body, size_t len);

/* Stops the instance (the cage is killed); on_state(CAGE_STOPPED) runs before it returns, then
 * the memory is freed. Not from inside one of the instance's callbacks. */
void cage_run_stop(cage_instance *ci);

#endif

/*
 * cage_run.c: the runner (cage_run.h, docs/cages.md "The runner"). One instance is one kept
 * helper, evs-cage-vmm, which boots the image under the chosen backend. Each worker that
 * starts (or adopts) the helper hands it a fresh socketpair over the helper's kept socket and
 * speaks the mux's control frames on it (cage_mux.h): HELLO is answered with START (the
 * environment, kept here for restarts and wiped at stop), READY and EXIT/FAIL become states,
 * API_REQ becomes on_api, EGRESS and the egress proxy's own decisions become on_egress. The
 * egress proxy (egress_proxy.c, shared with the Functions) runs on this worker's loop on a
 * unix socket in a private directory; the helper is told its path (WHERE).
 */
#include "cage_run.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "cage_mux.h"
#include "egress_proxy.h"

#ifndef EVS_CAGE_VMM_BUILD_PATH
#define EVS_CAGE_VMM_BUILD_PATH ""
#endif
#ifndef EVS_CAGE_VMM_INSTALL_PATH
#define EVS_CAGE_VMM_INSTALL_PATH "/usr/libexec/evserver/evs-cage-vmm"
#endif
#define QEMU "/usr/bin/qemu-system-x86_64"

struct cage_api_call {
  cage_instance *ci;
  uint32_t id;
  cage_api_call *next;
};

struct cage_instance {
  evs_plugin *p;
  const evs_host *host;
  cage_run_callbacks cb;
  void *arg;
  cage_backend backend;
  evs_helper *helper;
  char **env;
  size_t n_env;
  /* this worker's connection to the helper */
  int fd;
  uv_poll_t *poll;
  cmux *ctl;
  char app_sock[108];
  /* egress */
  egress_proxy *egress;
  char egress_dir[200], egress_path[108];
  cage_state state;
  char why[256];
  cage_api_call *calls;
  int stopping;
};

static void pin_self(void) {
  /* libuv runs the egress proxy's close callbacks on a later turn, maybe after the plugin's
   * fini: its code must stay mapped (as fr_egress.c does). */
  static int pinned;
  Dl_info info;
  if (pinned || !dladdr((void *)&pin_self, &info) || !info.dli_fname) return;
  if (dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE)) pinned = 1;
}

static void set_state(cage_instance *ci, cage_state s, const char *why) {
  ci->state = s;
  if (ci->cb.on_state) ci->cb.on_state(ci->arg, ci, s, why);
}

static void conn_close(cage_instance *ci) {
  if (ci->ctl) cmux_free(ci->ctl);
  ci->ctl = NULL;
  if (ci->poll) {
    uv_poll_stop(ci->poll);
    uv_close((uv_handle_t *)ci->poll, (uv_close_cb)free);
    ci->poll = NULL;
  }
  if (ci->fd >= 0) close(ci->fd);
  ci->fd = -1;
  ci->app_sock[0] = 0;
  /* calls in flight get no answer from this connection: forget them (cage_api_reply on them
   * becomes a no-op) */
  for (cage_api_call *c = ci->calls; c; c = c->next) c->ci = NULL;
  ci->calls = NULL;
}

static void on_poll(uv_poll_t *h, int status, int events);

static void update_poll(cage_instance *ci) {
  if (!ci->ctl || !ci->poll) return;
  struct pollfd pf[2];
  size_t n = cmux_pollfds(ci->ctl, pf, 1);
  int ev = 0;
  if (n && pf[0].events & POLLIN) ev |= UV_READABLE;
  if (n && pf[0].events & POLLOUT) ev |= UV_WRITABLE;
  if (ev) uv_poll_start(ci->poll, ev, on_poll);
  else uv_poll_stop(ci->poll);
}

static void send_start(cage_instance *ci) {
  cmux_buf *o = cmux_out(ci->ctl);
  size_t off = cmux_frame_begin(o, CMUX_START, 0);
  for (size_t i = 0; i < ci->n_env; i++) cmux_put_str(o, ci->env[i], strlen(ci->env[i]));
  if (cmux_frame_end(o, off) < 0) snprintf(ci->why, sizeof ci->why, "environment too large");
}

static void on_ctrl(void *arg, cmux *m, const cmux_frame *f) {
  cage_instance *ci = arg;
  (void)m;
  cmux_rd r;
  cmux_rd_init(&r, f->payload, f->len);
  switch (f->type) {
    case CMUX_WHERE:
      if (f->len < sizeof ci->app_sock && !memchr(f->payload, 0, f->len)) {
        memcpy(ci->app_sock, f->payload, f->len);
        ci->app_sock[f->len] = 0;
      }
      break;
    case CMUX_HELLO:
      send_start(ci);
      break;
    case CMUX_READY:
      if (ci->state != CAGE_READY) set_state(ci, CAGE_READY, "the app accepts connections");
      break;
    case CMUX_EXIT: {
      uint8_t how = 0;
      uint32_t v = 0;
      cmux_get_u8(&r, &how);
      cmux_get_u32(&r, &v);
      snprintf(ci->why, sizeof ci->why, how ? "the app was killed by signal %u"
                                            : "the app exited with status %u", v);
      break;
    }
    case CMUX_FAIL:
      snprintf(ci->why, sizeof ci->why, "%.*s", (int)(f->len < 200 ? f->len : 200),
               (const char *)f->payload);
      break;
    case CMUX_LOG: {
      uint8_t s = 1;
      const uint8_t *line;
      size_t len;
      cmux_get_u8(&r, &s);
      cmux_get_rest(&r, &line, &len);
      if (ci->cb.on_log && line) ci->cb.on_log(ci->arg, ci, s, (const char *)line, len);
      break;
    }
    case CMUX_EGRESS: {
      uint8_t allowed = 0;
      uint16_t port = 0;
      const char *h, *w;
      size_t hl, wl;
      char host[256], why[64];
      if (cmux_get_u8(&r, &allowed) < 0 || cmux_get_u16(&r, &port) < 0 ||
          cmux_get_str(&r, &h, &hl) < 0 || cmux_get_str(&r, &w, &wl) < 0 || hl > 255)
        break;
      snprintf(host, sizeof host, "%.*s", (int)hl, h);
      snprintf(why, sizeof why, "%.*s", (int)(wl < 63 ? wl : 63), w);
      /* why must be static for the callback: the vmm's few sentences, mapped */
      const char *sw = strcmp(why, "port not allowed") == 0 ? "port not allowed"
                       : strcmp(why, "egress is off") == 0  ? "egress is off"
                                                            : "refused by the cage's host";
      if (ci->cb.on_egress) ci->cb.on_egress(ci->arg, ci, host, port, allowed, sw);
      break;
    }
    case CMUX_API_REQ: {
      uint32_t id;
      const char *mth, *path;
      size_t ml, pl, bl;
      const uint8_t *body;
      if (cmux_get_u32(&r, &id) < 0 || cmux_get_str(&r, &mth, &ml) < 0 ||
          cmux_get_str(&r, &path, &pl) < 0 || ml > 15 || pl > 1024)
        break;
      cmux_get_rest(&r, &body, &bl);
      char method[16], pth[1025];
      memcpy(method, mth, ml);
      method[ml] = 0;
      memcpy(pth, path, pl);
      pth[pl] = 0;
      cage_api_call *c = calloc(1, sizeof *c);
      if (!c) break;
      c->ci = ci;
      c->id = id;
      c->next = ci->calls;
      ci->calls = c;
      if (ci->cb.on_api)
        ci->cb.on_api(ci->arg, ci, c, method, pth, body ? body : (const uint8_t *)"", bl);
      else cage_api_reply(c, 404, "application/json", (const uint8_t *)"{}", 2);
      break;
    }
    default:
      break;
  }
}

static void on_dead(void *arg, cmux *m, const char *why) {
  (void)arg, (void)m, (void)why; /* the helper's exit event follows and says what happened */
}

static const cmux_ops ctl_ops = {on_ctrl, NULL, on_dead};

static void on_poll(uv_poll_t *h, int status, int events) {
  cage_instance *ci = h->data;
  if (!ci->ctl) return;
  struct pollfd pf = {ci->fd, 0, 0};
  if (status < 0) pf.revents = POLLERR;
  if (events & UV_READABLE) pf.revents |= POLLIN;
  if (events & UV_WRITABLE) pf.revents |= POLLOUT;
  cmux_service(ci->ctl, &pf, 1);
  update_poll(ci);
}

/* A fresh connection to the helper: one byte with our peer's end, over the kept socket. */
static int attach(cage_instance *ci, int via) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return -errno;
  char b = 'A';
  struct iovec iov = {&b, 1};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } cm;
  memset(&cm, 0, sizeof cm);
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
                      .msg_controllen = sizeof cm.buf};
  struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(h), &sv[1], sizeof(int));
  ssize_t n = sendmsg(via, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  close(sv[1]);
  if (n != 1) {
    close(sv[0]);
    return n < 0 ? -errno : -EIO;
  }
  conn_close(ci);
  ci->fd = sv[0];
  ci->ctl = cmux_new(sv[0], 0, &ctl_ops, ci);
  ci->poll = calloc(1, sizeof *ci->poll);
  if (!ci->ctl || !ci->poll ||
      uv_poll_init((uv_loop_t *)ci->host->uv_loop(ci->p), ci->poll, ci->fd) < 0) {
    free(ci->poll);
    ci->poll = NULL;
    conn_close(ci);
    return -ENOMEM;
  }
  ci->poll->data = ci;
  uv_poll_start(ci->poll, UV_READABLE, on_poll);
  if (ci->egress) cmux_send(ci->ctl, CMUX_WHERE, ci->egress_path, strlen(ci->egress_path));
  update_poll(ci);
  return 0;
}

static void on_helper(void *arg, evs_helper *h, const evs_helper_event *ev) {
  cage_instance *ci = arg;
  (void)h;
  char why[300];
  switch (ev->type) {
    case EVS_HELPER_STARTED: {
      ci->why[0] = 0;
      int r = attach(ci, ev->fd);
      if (r < 0) {
        snprintf(why, sizeof why, "cannot reach evs-cage-vmm: %s", strerror(-r));
        set_state(ci, CAGE_CRASHED, why);
        ci->host->helper_kill(ci->helper, 9);
        return;
      }
      set_state(ci, CAGE_STARTING, ev->adopted ? "adopted the running cage" : "booting");
      return;
    }
    case EVS_HELPER_EXITED:
      conn_close(ci);
      if (ci->why[0]) snprintf(why, sizeof why, "%s", ci->why);
      else if (ev->signal)
        snprintf(why, sizeof why, "evs-cage-vmm killed by signal %d", ev->signal);
      else snprintf(why, sizeof why, "evs-cage-vmm exited with status %d", ev->exit_code);
      set_state(ci, CAGE_CRASHED, why);
      return;
    case EVS_HELPER_RESTARTING:
      snprintf(why, sizeof why, "restarting in %llu ms (%s)", (unsigned long long)ev->delay_ms,
               ci->why[0] ? ci->why : "after a crash");
      set_state(ci, CAGE_STARTING, why);
      return;
    case EVS_HELPER_FAILED:
      snprintf(why, sizeof why, "evs-cage-vmm did not start: %s", strerror(-ev->error));
      set_state(ci, CAGE_CRASHED, why);
      return;
  }
}

static const char *vmm_path(void) {
  if (EVS_CAGE_VMM_BUILD_PATH[0] && access(EVS_CAGE_VMM_BUILD_PATH, X_OK) == 0)
    return EVS_CAGE_VMM_BUILD_PATH;
  return EVS_CAGE_VMM_INSTALL_PATH;
}

static void egress_event(void *arg, const char *host, int port, int allowed, const char *why) {
  cage_instance *ci = arg;
  if (ci->cb.on_egress)
    ci->cb.on_egress(ci->arg, ci, host, port, allowed, why ? why : "allowed");
}

static void instance_free(cage_instance *ci) {
  conn_close(ci);
  if (ci->egress) egress_proxy_close(ci->egress);
  if (ci->egress_dir[0]) rmdir(ci->egress_dir);
  for (size_t i = 0; i < ci->n_env; i++) {
    explicit_bzero(ci->env[i], strlen(ci->env[i]));
    free(ci->env[i]);
  }
  free(ci->env);
  free(ci);
}

/* AUTO's choice: KVM where it can boot the image's kernel. That takes /dev/kvm, qemu and a
 * hardware-assisted KVM driver: under kvm_pvm (paravirtualised KVM on machines without VT-x or
 * AMD-V, as in nested clouds) /dev/kvm exists but only PVM-enabled guest kernels boot, and an
 * ordinary one stalls in its decompressor with no error. */
static cage_backend auto_backend(void) {
  if (access("/dev/kvm", R_OK | W_OK) != 0 || access(QEMU, X_OK) != 0) return CAGE_BACKEND_SANDBOX;
  if (access("/sys/module/kvm_intel", F_OK) == 0 || access("/sys/module/kvm_amd", F_OK) == 0)
    return CAGE_BACKEND_KVM;
  return CAGE_BACKEND_SANDBOX;
}

static int name_ok(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n < 1 || n > 40) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
      return 0;
  return 1;
}

int cage_run_start(evs_plugin *p, const evs_host *host, const cage_run_spec *spec,
                   const cage_run_callbacks *cb, void *arg, cage_instance **ret_ci) {
  if (!spec || spec->size < sizeof *spec || !name_ok(spec->name) || !spec->image_path || !cb)
    return -EINVAL;
  cage_instance *ci = calloc(1, sizeof *ci);
  if (!ci) return -ENOMEM;
  ci->p = p;
  ci->host = host;
  ci->cb = *cb;
  ci->arg = arg;
  ci->fd = -1;
  ci->backend = spec->backend;
  if (ci->backend == CAGE_BACKEND_AUTO) ci->backend = auto_backend();
  int r = 0;
  size_t n = 0;
  while (spec->env && spec->env[n]) n++;
  ci->env = calloc(n + 1, sizeof *ci->env);
  if (!ci->env) r = -ENOMEM;
  for (size_t i = 0; r == 0 && i < n; i++) {
    if (!(ci->env[i] = strdup(spec->env[i]))) r = -ENOMEM;
    else ci->n_env++;
  }
  const char *sd = host->state_dir(p);
  char base[200];
  snprintf(base, sizeof base, "%.180s/cages-run", sd ? sd : "/tmp");
  mkdir(base, 0700);
  if (r == 0 && spec->egress) {
    pin_self();
    int w = snprintf(ci->egress_dir, sizeof ci->egress_dir, "%.180s/egress-XXXXXX", base);
    if (w < 0 || (size_t)w >= sizeof ci->egress_path - 8) r = -ENAMETOOLONG;
    else if (!mkdtemp(ci->egress_dir)) r = -errno;
    if (r < 0) ci->egress_dir[0] = 0;
    if (r == 0) {
      memcpy(ci->egress_path, ci->egress_dir, (size_t)w);
      memcpy(ci->egress_path + w, "/e.sock", 8);
    }
    size_t na = 0;
    while (spec->egress_allow && spec->egress_allow[na]) na++;
    egress_proxy_opts o = {.path = ci->egress_path, .allow = spec->egress_allow, .n_allow = na,
                           .allow_private = spec->egress_allow_private, .event = egress_event,
                           .event_arg = ci};
    const char *why = NULL;
    if (r == 0 && (r = egress_proxy_open((uv_loop_t *)host->uv_loop(p), &o, &ci->egress, &why)) < 0)
      host->log(p, NULL, EVS_LOG_ERROR, "cage %s: no egress proxy: %s", spec->name, why);
  }
  char mem[32], cpus[16], ports[16][8];
  uint64_t mib = spec->memory_bytes ? spec->memory_bytes >> 20 : 256;
  snprintf(mem, sizeof mem, "%llu", (unsigned long long)(mib < 16 ? 16 : mib));
  snprintf(cpus, sizeof cpus, "%u", spec->cpus ? spec->cpus : 1);
  const char *argv[64];
  int k = 0;
  const char *vmm = vmm_path();
  argv[k++] = vmm;
  argv[k++] = "--backend";
  argv[k++] = cage_run_backend(ci);
  argv[k++] = "--eif";
  argv[k++] = spec->image_path;
  argv[k++] = "--dir";
  argv[k++] = base;
  argv[k++] = "--memory";
  argv[k++] = mem;
  argv[k++] = "--cpus";
  argv[k++] = cpus;
  if (spec->debug) argv[k++] = "--debug";
  if (spec->kvm_tcg) {
    argv[k++] = "--accel";
    argv[k++] = "tcg";
  }
  size_t np = spec->egress ? spec->n_egress_ports : 0;
  if (spec->egress && np == 0) {
    argv[k++] = "--egress-port";
    argv[k++] = "443";
  }
  for (size_t i = 0; i < np && i < 16; i++) {
    snprintf(ports[i], sizeof ports[i], "%u", spec->egress_ports[i]);
    argv[k++] = "--egress-port";
    argv[k++] = ports[i];
  }
  argv[k] = NULL;
  evs_helper_spec hs;
  memset(&hs, 0, sizeof hs);
  hs.size = sizeof hs;
  hs.path = vmm;
  hs.argv = argv;
  hs.sandbox = "cage-vmm";
  hs.fd = 3;
  hs.kept = spec->name;
  hs.restart_min_ms = 200;
  hs.restart_max_ms = 10000;
  /* The VM's memory plus qemu's own; the sandbox's processes. */
  hs.cgroup_memory_max = (mib + 192) << 20;
  hs.cgroup_cpu_max_pct = 100 * (spec->cpus ? spec->cpus : 1);
  hs.rlimit_nofile = 1024;
  if (r == 0) r = host->helper_spawn(p, &hs, on_helper, ci, &ci->helper);
  if (r < 0) {
    instance_free(ci);
    return r;
  }
  *ret_ci = ci;
  return 0;
}

const char *cage_run_app_socket(const cage_instance *ci) {
  return ci->state == CAGE_READY && ci->app_sock[0] ? ci->app_sock : NULL;
}

const char *cage_run_backend(const cage_instance *ci) {
  return ci->backend == CAGE_BACKEND_KVM ? "kvm" : "sandbox";
}

void cage_api_reply(cage_api_call *call, int status, const char *content_type,
                    const uint8_t *body, size_t len) {
  cage_instance *ci = call->ci;
  if (ci && ci->ctl) {
    cage_api_call **pp = &ci->calls;
    while (*pp && *pp != call) pp = &(*pp)->next;
    if (*pp) *pp = call->next;
    cmux_buf *o = cmux_out(ci->ctl);
    size_t off = cmux_frame_begin(o, CMUX_API_RESP, 0);
    cmux_put_u32(o, call->id);
    cmux_put_u16(o, (uint16_t)status);
    const char *ct = content_type ? content_type : "application/json";
    cmux_put_str(o, ct, strlen(ct) > 100 ? 100 : strlen(ct));
    cmux_buf_put(o, body, len);
    if (cmux_frame_end(o, off) < 0) { /* too large for a frame: say so instead */
      off = cmux_frame_begin(o, CMUX_API_RESP, 0);
      cmux_put_u32(o, call->id);
      cmux_put_u16(o, 500);
      cmux_put_str(o, "application/json", 16);
      cmux_frame_end(o, off);
    }
    update_poll(ci);
  }
  free(call);
}

void cage_run_stop(cage_instance *ci) {
  if (!ci) return;
  ci->host->helper_stop(ci->helper);
  ci->helper = NULL;
  conn_close(ci);
  set_state(ci, CAGE_STOPPED, "stopped");
  instance_free(ci);
}

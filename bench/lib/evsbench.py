"""Shared harness of the proxy benchmarks (bench/proxy/run, bench/relay/run): evserver against
nginx as a plain reverse proxy, in front of the same upstream, on loopback only.

A benchmark describes its upstream, its relay configuration and its cases (a request to send);
this module starts the processes, drives them with wrk in alternating rounds (ABBA order),
measures CPU time per request from /proc, re-runs rounds disturbed by other tenants of the
machine, and prints medians and ratios. Method and figures: docs/performance.md.
"""
import argparse, os, random, re, resource, shutil, signal, socket, statistics, subprocess, tempfile, time

PROXY_CPUS, LOAD_CPUS = "0", "1"   # with --pin: the proxy alone on CPU 0; wrk and upstream on CPU 1
CPU_PERIOD_US = 100000  # --proxy-cpu: the CFS bandwidth period, the kernel's and container runtimes' default
CLK_TCK = os.sysconf("SC_CLK_TCK")
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def arg_parser(prog):
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pin", dest="pin", action="store_true", default=None)
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--ev-pool-idle", type=int, default=64)
    ap.add_argument("--ev-transaction-log", choices=("on", "off"), default="off",
                    help="relay-inbound's per-request record in the store (default off, as "
                         "nginx runs with access_log off; on: as shipped)")
    ap.add_argument("--max-other", type=float, default=30)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--proxy-cpu", type=float, default=None, metavar="CPUS",
                    help="give each proxy (all its processes) this much CPU time and no more, "
                         "e.g. 0.5: a cgroup of its own with a CFS quota, the same for every "
                         "proxy, so that the proxy bounds the rate and not the load side (needs "
                         "root: a cgroup v2 mount with the cpu controller, or v1's cpu hierarchy)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hold", action="store_true",
                    help="start and check everything, print pids and wrk commands, then wait "
                         "(for profiling by hand) instead of measuring")
    return ap


def check_options(prog, opt):
    if opt.quick:
        opt.rounds, opt.duration = 1, 3
    if not (1 <= opt.workers <= 8 and 1 <= opt.rounds <= 50 and 1 <= opt.duration <= 120
            and 1 <= opt.connections <= 2000 and 1 <= opt.threads <= 16 and 0 <= opt.retries <= 5):
        raise SystemExit(f"{prog}: an option is out of range")
    ncpu = os.cpu_count() or 1
    if opt.pin is None:
        opt.pin = opt.workers == 1 and ncpu >= 2
    if opt.pin and ncpu < 2:
        raise SystemExit(f"{prog}: --pin needs 2 CPUs")
    if opt.proxy_cpu is not None and not 0.05 <= opt.proxy_cpu <= ncpu:
        raise SystemExit(f"{prog}: --proxy-cpu is out of range (0.05 to {ncpu})")


class Case:
    """One kind of request: wrk sends it in every round, `check` validates one answer first."""

    def __init__(self, name, path, method="GET", headers=(), body=b"", check=None):
        self.name, self.path, self.method = name, path, method
        self.headers, self.body, self.check = list(headers), body, check


class Bench:
    def __init__(self, prog, opt, host):
        self.prog, self.opt, self.host = prog, opt, host
        self.tmp = tempfile.mkdtemp(prefix="evs-bench-")
        os.chmod(self.tmp, 0o755)   # nginx workers started by root run as nobody and read files here
        self.procs = []
        self.cgroups = []   # --proxy-cpu: the proxies' cgroups, removed by close()
        self.servers = {}   # name -> (Popen, port); the two proxies
        self.upstream = None
        self.baseline = "nginx"   # the other proxy's name in self.servers (bench/outbound: squid)

        def on_signal(signum, frame):
            raise SystemExit(f"{prog}: stopped by signal {signum}")
        # timeout(1), Ctrl-C or a closed terminal: unwind through close(), which stops every
        # process this run started (Python's default SIGTERM action would skip it).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)

    # ---- processes -------------------------------------------------------------------------
    @staticmethod
    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def pinned(self, cmd, cpus):
        return (["taskset", "-c", cpus] + cmd) if self.opt.pin else cmd

    def start(self, name, cmd, port, cpus):
        out = open(self.path(name + ".out"), "wb")
        p = subprocess.Popen(self.pinned(cmd, cpus), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp)
        self.procs.append((name, p))
        deadline = time.time() + 15
        while time.time() < deadline:
            if p.poll() is not None:
                raise SystemExit(f"{name} exited at start:\n" + open(out.name, errors="replace").read())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return p
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{name} did not listen on 127.0.0.1:{port}")

    def close(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        for path in self.cgroups:
            deadline = time.time() + 5   # a killed process leaves its cgroup when it is reaped
            while True:
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    if time.time() > deadline:
                        log(f"warning: could not remove the cgroup {path}")
                        break
                    time.sleep(0.1)
        self.cgroups.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- --proxy-cpu -------------------------------------------------------------------------
    @staticmethod
    def cpu_cgroup_root():
        """(mount point, version) of the hierarchy with the cpu controller: v2 if its mount
        offers cpu, else v1's cpu hierarchy; (None, 0) if neither."""
        mounts = [l.split()[:4] for l in open("/proc/mounts")]
        for _, mnt, fstype, _ in mounts:
            if fstype == "cgroup2":
                try:
                    if "cpu" in open(os.path.join(mnt, "cgroup.controllers")).read().split():
                        return mnt, 2
                except OSError:
                    pass
        for _, mnt, fstype, opts in mounts:
            if fstype == "cgroup" and "cpu" in opts.split(","):
                return mnt, 1
        return None, 0

    def limit_cpu(self):
        """--proxy-cpu: moves every proxy's processes into a cgroup of its own whose CPU
        bandwidth is opt.proxy_cpu CPUs (a quota per CPU_PERIOD_US), the same for each. Their
        later children (a restarted enclave, a respawned worker) stay in it. Call once all the
        proxies run, before any round."""
        if self.opt.proxy_cpu is None:
            return
        root, version = self.cpu_cgroup_root()
        if not root:
            raise SystemExit(f"{self.prog}: --proxy-cpu: no cgroup hierarchy with the cpu "
                             "controller is mounted")
        quota = max(int(self.opt.proxy_cpu * CPU_PERIOD_US), 1000)
        for name in self.servers:
            path = os.path.join(root, f"evs-bench-{os.getpid()}-{name}")
            try:
                if version == 2:
                    with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                        f.write("+cpu")
                os.mkdir(path)
                self.cgroups.append(path)
                if version == 2:
                    self.write_cg(path, "cpu.max", f"{quota} {CPU_PERIOD_US}")
                else:
                    self.write_cg(path, "cpu.cfs_period_us", str(CPU_PERIOD_US))
                    self.write_cg(path, "cpu.cfs_quota_us", str(quota))
                for pid in self.server_pids(name):
                    self.write_cg(path, "cgroup.procs", str(pid))
            except OSError as e:
                raise SystemExit(f"{self.prog}: --proxy-cpu needs a cgroup it can create and "
                                 f"fill ({path}): {e}")

    @staticmethod
    def write_cg(path, name, value):
        with open(os.path.join(path, name), "w") as f:
            f.write(value)

    # ---- the usual three: upstream nginx, evserver, nginx as a reverse proxy ----------------
    def nginx_conf(self, name, workers, http_block):
        return self.write(name + ".conf", f"""daemon off;
master_process on;
pid {self.tmp}/{name}.pid;
error_log {self.tmp}/{name}-error.log warn;
events {{ worker_connections 8192; }}
worker_processes {workers};
http {{
  access_log off;
  tcp_nodelay on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
{http_block}
}}
""")

    def start_upstream(self, port, server_block):
        """nginx, 1 worker, answering from `server_block` (locations) on 127.0.0.1:port. A literal
        '$' in a `return` string is written ${dollar}."""
        conf = self.nginx_conf("upstream", 1, f"""  geo $dollar {{ default "$"; }}
  sendfile on;
  open_file_cache max=16;
  open_file_cache_valid 1h;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
{server_block}
  }}""")
        self.upstream = self.start("upstream", ["/usr/sbin/nginx", "-p", self.tmp, "-c", conf],
                                   port, LOAD_CPUS)

    def start_nginx_proxy(self, port, up_port):
        conf = self.nginx_conf("nginx-proxy", self.opt.workers, f"""  upstream backend {{
    server 127.0.0.1:{up_port};
    keepalive 64;
    keepalive_requests 100000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}""")
        self.servers["nginx"] = (self.start("nginx", ["/usr/sbin/nginx", "-p", self.tmp, "-c", conf],
                                            port, PROXY_CPUS), port)

    def start_evserver(self, build_dir, port, relay_config, extra_conf="", relay_conf="",
                       listener_conf=""):
        os.makedirs(self.path("state"), exist_ok=True)
        self.write("relay-config.json", relay_config)
        conf = self.write("evserver.conf", f"""[server]
workers = {self.opt.workers}
state_dir = {self.tmp}/state
plugins_dir = {build_dir}/plugins.d
log_level = warn
[admin]
socket = {self.tmp}/admin.sock
[limits]
drain_timeout = 1s
[upstream]
pool_max_idle = {self.opt.ev_pool_idle}
[listener "http"]
address = 127.0.0.1:{port}
{listener_conf}
[plugin "relay-inbound"]
relay_config = {self.tmp}/relay-config.json
transaction_log = {self.opt.ev_transaction_log}
{relay_conf}
{extra_conf}""")
        self.servers["evserver"] = (self.start("evserver", [f"{build_dir}/evserver", "-c", conf],
                                               port, PROXY_CPUS), port)

    # ---- measuring ---------------------------------------------------------------------------
    def server_pids(self, name):
        """A server's processes, with those of its companions (a TLS front of a proxy that cannot
        terminate TLS itself), whose CPU counts as the server's."""
        pids = self.family(self.servers[name][0].pid)
        for c in getattr(self, "companions", {}).get(name, []):
            pids += self.family(c.pid)
        return sorted(pids)

    @staticmethod
    def family(pid):
        """The pid and all its descendants (master, workers, and evserver's enclave processes)."""
        pids, todo = [], [pid]
        while todo:
            p = todo.pop()
            pids.append(p)
            todo += children(p)
        return sorted(pids)

    @staticmethod
    def cpu_ticks(pids):
        total = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])   # utime, stime (fields 14, 15)
            except OSError:
                pass
        return total

    @staticmethod
    def busy_ticks():
        """CPU ticks the whole machine spent busy (user, nice, system, irq, softirq, steal)."""
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]

    def request(self, port, case):
        """One raw HTTP/1.1 request; returns (status, body bytes)."""
        head = f"{case.method} {case.path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n"
        for h in case.headers:
            head += h + "\r\n"
        if case.body:
            head += f"Content-Length: {len(case.body)}\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head.encode() + b"\r\n" + case.body)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = dechunk(body)
        return int(head.split(b" ", 2)[1]), body

    def check_servers(self, cases):
        time.sleep(0.5)   # let every worker start
        for name, (p, port) in self.servers.items():
            # The master's children are its workers and, for helpers kept per rank (the
            # enclave), their shepherds ("evs-helper"), which are not workers.
            workers = sum(1 for c in children(p.pid) if comm(c) != "evs-helper")
            if workers != self.opt.workers:
                raise SystemExit(f"{name}: expected {self.opt.workers} workers, found {workers}")
            for case in cases:
                st, body = self.request(port, case)
                problem = case.check(name, st, body) if case.check else None
                if problem:
                    raise SystemExit(f"{name} {case.method} {case.path}: {problem}")

    def wrk(self, port, case, duration):
        o = self.opt
        cmd = ["wrk", f"-t{o.threads}", f"-c{o.connections}", f"-d{duration}s", "--latency",
               "-H", f"Host: {self.host}"]
        for h in case.headers:
            cmd += ["-H", h]
        if case.method != "GET" or case.body:
            script = self.write(f"case-{case.name}.lua",
                                f"wrk.method = {lua_str(case.method)}\nwrk.body = {lua_str(case.body.decode())}\n")
            cmd += ["-s", script]
        cmd.append(f"http://127.0.0.1:{port}{case.path}")
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(self.pinned(cmd, LOAD_CPUS), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=duration + 30)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise SystemExit("wrk failed:\n" + r.stdout + r.stderr)
        res = parse_wrk(r.stdout)
        res["wrk_cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        return res

    def measure(self, name, case):
        """One wrk round against one proxy, with the CPU time of everything involved."""
        p, port = self.servers[name]
        pids, upids = self.server_pids(name), self.family(self.upstream.pid)
        b0 = self.busy_ticks()
        c0, u0, t0 = self.cpu_ticks(pids), self.cpu_ticks(upids), time.monotonic()
        r = self.wrk(port, case, self.opt.duration)
        c1, u1, t1 = self.cpu_ticks(pids), self.cpu_ticks(upids), time.monotonic()
        b1 = self.busy_ticks()
        if self.server_pids(name) != pids:
            raise SystemExit(f"{name}: its process set changed during the round (a crash?)")
        n = max(r["requests"], 1)
        cpu_s = (c1 - c0) / CLK_TCK
        r["cpu_us"] = cpu_s * 1e6 / n
        r["cpu_util"] = cpu_s / (t1 - t0)
        r["up_us"] = (u1 - u0) / CLK_TCK * 1e6 / n
        r["wrk_us"] = r["wrk_cpu_s"] * 1e6 / n
        # Busy CPU not accounted to the proxy, upstream or wrk: other tenants of the machine, plus
        # softirq work charged to no process (near 0% on a quiet machine).
        other_s = (b1 - b0 - (c1 - c0) - (u1 - u0)) / CLK_TCK - r["wrk_cpu_s"]
        r["other"] = max(other_s, 0.0) / (t1 - t0)
        return r

    def describe(self, extra=""):
        o = self.opt
        model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                      if l.startswith("model name")), "?")
        log(f"machine: {os.cpu_count()} CPUs, {model}")
        log(f"workers={o.workers} rounds={o.rounds} duration={o.duration}s wrk -t{o.threads} "
            f"-c{o.connections} pin={'proxy:CPU0 wrk+upstream:CPU1' if o.pin else 'off'} "
            f"evserver pool_max_idle={o.ev_pool_idle} transaction_log={o.ev_transaction_log} "
            f"nginx keepalive=64"
            + (f" proxy-cpu={o.proxy_cpu:g} CPU each (CFS quota, {CPU_PERIOD_US // 1000} ms period)"
               if o.proxy_cpu is not None else "") + extra)
        ports = ", ".join(f"{n} {port}" for n, (_, port) in self.servers.items())
        log(f"ports: {ports}; temp dir {self.tmp}")

    def hold(self, cases):
        """--hold: print what a profiler needs and wait until stopped (Ctrl-C)."""
        for name, (p, port) in self.servers.items():
            log(f"{name}: pids {' '.join(str(x) for x in self.family(p.pid))}")
            for case in cases:
                script = self.path(f"case-{case.name}.lua")
                if case.method != "GET" or case.body:
                    self.write(f"case-{case.name}.lua", f"wrk.method = {lua_str(case.method)}\n"
                               f"wrk.body = {lua_str(case.body.decode())}\n")
                hdrs = " ".join(f"-H '{h}'" for h in [f"Host: {self.host}"] + case.headers)
                log(f"  {case.name}: wrk -t1 -c{self.opt.connections} -d10s {hdrs}"
                    + (f" -s {script}" if case.method != "GET" or case.body else "")
                    + f" http://127.0.0.1:{port}{case.path}")
        log("holding; Ctrl-C stops everything")
        while True:
            time.sleep(3600)

    def run(self, cases):
        """ABBA rounds per case; returns {(case name, server): [round results]}."""
        self.limit_cpu()
        if self.opt.hold:
            self.hold(cases)
        o, results = self.opt, {}
        for case in cases:
            for name, (p, port) in self.servers.items():   # warm-up: pools filled, pages faulted in
                self.wrk(port, case, 2)
            log(f"\n== {case.name} ({case.method} {case.path}) ==")
            log(f"{'round':>5} {'proxy':<9} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'cpu us/req':>10} {'proxy cpu':>9} {'up us/req':>9} {'wrk us/req':>10} "
                f"{'other cpu':>9} {'errors':>6}")
            for rnd in range(o.rounds):
                b = self.baseline
                order = ["evserver", b] if rnd % 2 == 0 else [b, "evserver"]
                for name in order:
                    for attempt in range(o.retries + 1):
                        r = self.measure(name, case)
                        noisy = r["other"] > o.max_other / 100
                        log(f"{rnd + 1:>5} {name:<9} {r['rps']:>10.0f} {r['p50']:>8.3f} "
                            f"{r['p99']:>8.3f} {r['cpu_us']:>10.2f} {100 * r['cpu_util']:>8.0f}% "
                            f"{r['up_us']:>9.2f} {r['wrk_us']:>10.2f} {100 * r['other']:>8.0f}% "
                            f"{r['errors']:>6}" + (" noisy" if noisy else ""))
                        if r["errors"]:
                            log(f"      warning: {name} had {r['errors']} errors / non-2xx responses")
                        if not noisy or attempt == o.retries:
                            break
                        log(f"      re-running: other CPU above {o.max_other}% (another tenant busy)")
                        time.sleep(5)
                    r["noisy"] = noisy
                    results.setdefault((case.name, name), []).append(r)
        return results

    def summary(self, cases, results, targets):
        """Medians and evserver/baseline ratios per case; `targets(ratio)` -> lines to print."""
        b = self.baseline
        rl = "ev/" + b
        med = lambda c, name, k: statistics.median(x[k] for x in results[(c, name)])
        log("\n== summary (medians over rounds) ==")
        nnoisy = sum(x["noisy"] for v in results.values() for x in v)
        if nnoisy:
            log(f"({nnoisy} of {sum(len(v) for v in results.values())} rounds kept were still "
                f"noisy: other CPU above {self.opt.max_other:g}%)")
        width = max(len(c.name) for c in cases)
        log(f"{'case':<{width}} {'proxy':<9} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10}")
        rows = []
        keys = ("rps", "p50", "p99", "cpu_us")
        for case in cases:
            for name in ("evserver", b):
                v = [med(case.name, name, k) for k in keys]
                rows.append((case.name, name, v))
                log(f"{case.name:<{width}} {name:<9} {v[0]:>10.0f} {v[1]:>8.3f} {v[2]:>8.3f} {v[3]:>10.2f}")
            ratio = dict(zip(keys, (med(case.name, "evserver", k) / med(case.name, b, k)
                                    for k in keys)))
            rows.append((case.name, rl, [ratio[k] for k in keys]))
            log(f"{case.name:<{width}} {rl:<9} {ratio['rps']:>9.2f}x {ratio['p50']:>7.2f}x "
                f"{ratio['p99']:>7.2f}x {ratio['cpu_us']:>9.2f}x")
            for line in targets(ratio):
                log(f"{'':<{width}} {line}")
        if self.opt.markdown:
            log("\n| case | proxy | req/s | p50 ms | p99 ms | CPU µs/req |")
            log("| --- | --- | ---: | ---: | ---: | ---: |")
            for c, name, v in rows:
                if name == rl:
                    log(f"| {c} | **evserver/{b}** | {v[0]:.2f}× | {v[1]:.2f}× | {v[2]:.2f}× | {v[3]:.2f}× |")
                else:
                    log(f"| {c} | {name} | {v[0]:.0f} | {v[1]:.3f} | {v[2]:.3f} | {v[3]:.2f} |")


def median_ci(values, level=0.95, resamples=10000):
    """The median of values and its bootstrap interval (percentile method, fixed seed: the same
    figures give the same interval). Pairs of rounds on a shared machine spread far more than
    the difference between two proxies that are about as cheap; this says how far."""
    rng = random.Random(1)
    meds = sorted(statistics.median(rng.choices(values, k=len(values)))
                  for _ in range(resamples))
    cut = int(resamples * (1 - level) / 2)
    return statistics.median(values), meds[cut], meds[resamples - 1 - cut]


def log(*a):
    print(*a, flush=True)


def children(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def lua_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dechunk(b):
    out = b""
    while b:
        size, _, rest = b.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out, b = out + rest[:n], rest[n + 2:]
    return out


def parse_wrk(text):
    def lat(pct):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M)
    if not m:
        raise SystemExit("cannot parse wrk output:\n" + text)
    rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M).group(1))
    errs = 0
    m2 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m2:
        errs += sum(int(x) for x in m2.groups())
    m3 = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m3:
        errs += int(m3.group(1))
    return {"requests": int(m.group(1)), "rps": rps, "p50": lat(50), "p99": lat(99), "errors": errs}

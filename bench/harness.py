"""What the bench/ drivers share: the processes a run started (stopped by
PID, never by name), waits for a port or a line of a log, a process's CPU
time and RSS from /proc, and wrk's figures."""
import os
import re
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Processes:
    """What this run started, each stopped by its PID (never by name)."""

    def __init__(self, tmp, pin):
        self.tmp = tmp
        self.pin = pin
        self.running = []

    def start(self, name, argv, cpu=None, env=None):
        if self.pin and cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv
        log = open(os.path.join(self.tmp, name + ".log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env)
        p.log_path = log.name
        p.name = name
        self.running.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.running:
            self.running.remove(p)

    def stop_all(self):
        for p in list(reversed(self.running)):
            self.stop(p)

    def run(self, argv, cpu=None, timeout=600):
        """Runs a load generator to its end (bounded by `timeout`) and returns its output."""
        if self.pin and cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            # subprocess.run has killed it. A load generator that hangs (wrk
            # whose every connection waits on a server that no longer
            # answers: the unshielded backend under slowloris) is a result
            # of the scenario, not the end of the run.
            def text(b):
                return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
            return text(e.stdout) + text(e.stderr) + f"\nharness: {argv[0]} stopped after {timeout} s\n"
        return r.stdout + r.stderr


def log_text(p):
    with open(p.log_path, errors="replace") as f:
        return f.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, p, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if p is not None and p.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{p.name if p else 'server'} did not listen on {port}:\n"
                       + (log_text(p)[-2000:] if p else ""))


def wait_text(p, text, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = re.search(text, log_text(p))
        if m:
            return m
        if p.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{p.name}: no '{text}' within {seconds} s:\n{log_text(p)[-2000:]}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wrk(procs, cpu, port, connections, seconds, path, headers=()):
    """One bounded wrk run: requests, req/s, errors (socket errors and non-2xx/3xx), p50/p99."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    out = procs.run(argv + [f"http://127.0.0.1:{port}{path}"], cpu, seconds + 60)
    r = {"requests": 0, "rps": 0.0, "errors": 0}
    if "harness: " in out and "stopped after" in out:
        r["errors"] = connections  # none of its connections finished
        r["stalled"] = True
        return r
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["errors"] += int(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            r[f"p{pct}_ms"] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return r


def with_cpu(pid, fn):
    """Runs fn() and returns (its result, CPU seconds pid used meanwhile)."""
    if pid is None:
        return fn(), None
    c0 = cpu_seconds(pid)
    r = fn()
    return r, cpu_seconds(pid) - c0

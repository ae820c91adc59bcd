//! Helpers shared by the `vireo` binary's integration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A scratch directory holding the test guest ELF.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub guest: PathBuf,
}

impl Fixture {
    pub fn create() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let guest = dir.path().join("testguest.elf");
        vireo_testguest::write_to(&guest).expect("write guest");
        Self { dir, guest }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Makes the directory and guest world-readable (for runs as another user).
    pub fn open_up(&self) {
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        std::fs::set_permissions(&self.guest, std::fs::Permissions::from_mode(0o644))
            .expect("chmod guest");
    }
}

pub fn vireo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vireo"));
    c.env("VIREO_LOG", "info");
    c
}

/// Runs `vireo run` with the test guest and `args`, with a timeout.
pub fn run_guest(fx: &Fixture, args: &[&str]) -> Output {
    let mut cmd = vireo();
    cmd.arg("run").arg("--kernel").arg(&fx.guest).args(args);
    run_with_timeout(cmd, Duration::from_secs(60))
}

/// Starts `vireo run` with the test guest and `args`, stdin closed and stdout and stderr piped,
/// without waiting for it (wrap it in [`Running`] once its pipes are taken care of).
pub fn spawn_guest(fx: &Fixture, args: &[&str]) -> Child {
    vireo()
        .arg("run")
        .arg("--kernel")
        .arg(&fx.guest)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vireo")
}

/// Sends `signal` to the `vireo` process behind `running`.
pub fn send_signal(running: &mut Running, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(running.child().id()).expect("pid");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child, not yet reaped.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vireo");
    Running::new(child).wait_within(limit)
}

/// A `vireo` process a test started. Dropping it (a test that failed
/// half-way) kills the process, so a failed test never leaves a VM spinning
/// on the host behind it.
pub struct Running {
    child: Option<Child>,
}

impl Running {
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    pub fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is held until waited for")
    }

    /// Waits for the process to exit and returns its output; kills it and
    /// fails the test if it is still running after `limit`.
    pub fn wait_within(mut self, limit: Duration) -> Output {
        let mut child = self
            .child
            .take()
            .expect("the child is held until waited for");
        let start = Instant::now();
        loop {
            if child.try_wait().expect("wait").is_some() {
                return child.wait_with_output().expect("output");
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "vireo did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn wait_for_path(p: &Path, limit: Duration) {
    let start = Instant::now();
    while !p.exists() {
        assert!(start.elapsed() < limit, "{} did not appear", p.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `vireo` process whose serial lines (stdout) and logs (stderr) are collected as they
/// arrive.
pub struct Collected {
    pub running: Running,
    lines: Arc<Mutex<Vec<String>>>,
    logs: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Collected {
    /// Spawns `cmd` with stdin closed and collects its output.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vireo");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let logs = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let out_reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    lines.lock().expect("lines").push(line);
                }
            })
        };
        let err_reader = {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    let mut logs = logs.lock().expect("logs");
                    logs.push_str(&line);
                    logs.push('\n');
                }
            })
        };
        Self {
            running: Running::new(child),
            lines,
            logs,
            readers: vec![out_reader, err_reader],
        }
    }

    /// Waits for the process to exit (killing it and failing after `limit`) and for its
    /// output to be read to the end: (exit status, serial lines, logs).
    pub fn finish(self, limit: Duration) -> (std::process::ExitStatus, Vec<String>, String) {
        let out = self.running.wait_within(limit);
        for r in self.readers {
            let _ = r.join();
        }
        let lines = self.lines.lock().expect("lines").clone();
        let logs = self.logs.lock().expect("logs").clone();
        (out.status, lines, logs)
    }

    /// The serial lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// How many serial lines so far.
    pub fn line_count(&self) -> usize {
        self.lines.lock().expect("lines").len()
    }

    /// The logs so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").clone()
    }

    /// Waits until `n` serial lines have arrived.
    pub fn wait_for_lines(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.line_count() < n {
            assert!(
                start.elapsed() < limit,
                "only {} serial lines after {limit:?}; logs:\n{}",
                self.line_count(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `curl --unix-socket SOCKET -X METHOD … http://localhost{path}` (a real HTTP client) with
/// `extra` arguments: (status, body).
pub fn curl(socket: &Path, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("curl prints the status last");
    let code = code
        .parse()
        .unwrap_or_else(|_| panic!("curl status {code:?}: {}", stderr(&out)));
    (code, body.trim_end().to_owned())
}

/// Parses an answer's JSON body, failing the test with the body if it is not JSON.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// [`curl`] with an optional JSON body: (status, body).
pub fn curl_body(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    match body {
        Some(b) => curl(
            socket,
            method,
            path,
            &["-H", "Content-Type: application/json", "-d", b],
        ),
        None => curl(socket, method, path, &[]),
    }
}

/// Checks through the API on `socket` that `proc`'s VM is Running, stops it with
/// `vm.shutdown` and checks `vireo` exits with status 8 (a forced stop).
pub fn shutdown_running(socket: &Path, proc: Collected) {
    let info = json(&curl_body(socket, "GET", "/api/v1/vm.info", None).1);
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(curl_body(socket, "PUT", "/api/v1/vm.shutdown", None).0, 204);
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(8), "{logs}");
}

/// The text of the file at `path` so far (empty while it does not exist).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls `f` every 10 ms until it holds; fails the test naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `curl` (a real HTTP client) of `url`: (HTTP status, body).
pub fn curl_get(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

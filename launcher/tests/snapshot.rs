//! Snapshot and restore across processes under real KVM, through both front doors: a counting
//! test guest is snapshotted through the control API (curl), its process is killed, and a
//! new `vireo restore` — or a payload-less `vireo run --api-socket` sent `vm.restore` by
//! `vireo remote` — continues the count exactly where it stopped. Bad snapshots and bad
//! requests are refused with a clear reason and harm no running VM.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `count N GAP`: about one line per 2 ms here.
const COUNT: &str = "count 1000000 4000000";

/// The numbers of the `tick N` lines of `text`, which must all be tick lines (but for a last
/// line a stop cut short).
fn ticks(text: &str) -> Vec<u64> {
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .enumerate()
        .map(|(i, l)| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| {
                    panic!("line {i} is not a tick line: {l:?}\n{}", around(text, i))
                })
        })
        .collect()
}

/// The lines of `text` around line `i`, for failure messages.
fn around(text: &str, i: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[i.saturating_sub(3)..(i + 3).min(lines.len())].join("|")
}

fn assert_consecutive(text: &str) {
    let t = ticks(text);
    assert!(!t.is_empty());
    for (i, n) in t.iter().enumerate() {
        assert_eq!(*n, i as u64, "count broke at line {i}: {}", around(text, i));
    }
}

/// A counting guest with an API socket and its serial console in a file, paused, saved to
/// `snap` and killed; returns what it printed.
fn saved_guest(fx: &Fixture, snap: &Path) -> String {
    let socket = fx.path("a.sock");
    let serial = fx.path("a.serial");
    let mut cmd = vireo();
    cmd.arg("run")
        .arg("--kernel")
        .arg(&fx.guest)
        .args(["--cmdline", COUNT, "--memory", "64M", "--serial"])
        .arg(format!("file={}", serial.display()))
        .arg("--api-socket")
        .arg(&socket);
    let mut proc = Collected::spawn(cmd);
    wait_for_path(&socket, Duration::from_secs(20));
    wait_until("20 ticks", Duration::from_secs(20), || {
        read(&serial).lines().count() > 20
    });
    // A snapshot of the running VM answers with what it wrote, and the VM runs on.
    let url = format!("file://{}", snap.display());
    let body = format!(r#"{{"destination_url": "{url}"}}"#);
    let (code, answer) = curl_body(&socket, "PUT", "/api/v1/vm.snapshot", Some(&body));
    assert_eq!(code, 200, "{answer}");
    let info = json(&answer);
    assert_eq!(info["memory_bytes"], 64 << 20);
    assert!(
        info["memory_data_bytes"].as_u64().expect("data") < 8 << 20,
        "{info}"
    );
    let lines = read(&serial).lines().count();
    wait_until("the VM runs on", Duration::from_secs(20), || {
        read(&serial).lines().count() > lines + 20
    });
    // Now pause, let the console drain, and save again over the first snapshot.
    assert_eq!(curl_body(&socket, "PUT", "/api/v1/vm.pause", None).0, 204);
    std::thread::sleep(Duration::from_millis(300));
    let (code, answer) = curl_body(&socket, "PUT", "/api/v1/vm.snapshot", Some(&body));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        json(&curl_body(&socket, "GET", "/api/v1/vm.info", None).1)["state"],
        "Paused"
    );
    send_signal(&mut proc.running, libc::SIGKILL);
    let _ = proc.finish(Duration::from_secs(20));
    for f in ["config.json", "state.bin", "memory.bin"] {
        assert!(snap.join(f).is_file(), "{f} missing");
    }
    read(&serial)
}

#[test]
fn a_killed_guest_restored_in_a_new_process_continues_its_count() {
    let fx = Fixture::create();
    let snap = fx.path("snap");
    let before = saved_guest(&fx, &snap);
    let serial = fx.path("b.serial");
    let socket = fx.path("b.sock");
    let mut cmd = vireo();
    cmd.arg("restore")
        .arg("--source")
        .arg(&snap)
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .arg("--api-socket")
        .arg(&socket);
    let proc = Collected::spawn(cmd);
    wait_until("100 ticks after restore", Duration::from_secs(20), || {
        read(&serial).lines().count() > 100
    });
    shutdown_running(&socket, proc);
    let after = read(&serial);
    assert_consecutive(&format!("{before}{after}"));
}

#[test]
fn a_payload_less_vireo_restores_through_the_api_and_stays_paused_until_resumed() {
    let fx = Fixture::create();
    let snap = fx.path("snap");
    let before = saved_guest(&fx, &snap);
    // The snapshot's spec names the first run's serial file: the restored guest writes there.
    let serial = fx.path("a.serial");
    std::fs::remove_file(&serial).expect("rm serial");
    let socket = fx.path("c.sock");
    let mut cmd = vireo();
    cmd.arg("run").arg("--api-socket").arg(&socket);
    let proc = Collected::spawn(cmd);
    wait_for_path(&socket, Duration::from_secs(20));
    let (code, body) = curl_body(&socket, "GET", "/api/v1/vm.info", None);
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        json(&body)["error"],
        "no VM yet: this vireo waits for PUT /api/v1/vm.restore"
    );
    assert_eq!(curl_body(&socket, "GET", "/api/v1/vmm.ping", None).0, 200);

    let out = vireo()
        .args(["remote", "--api-socket"])
        .arg(&socket)
        .arg("restore")
        .arg(&snap)
        .output()
        .expect("vireo remote");
    assert!(out.status.success(), "{}", stderr(&out));
    let info = json(&curl_body(&socket, "GET", "/api/v1/vm.info", None).1);
    assert_eq!(
        info["state"], "Paused",
        "restored paused, as Cloud Hypervisor does"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(read(&serial), "", "a paused restored VM prints nothing");
    let (code, body) = curl_body(
        &socket,
        "PUT",
        "/api/v1/vm.restore",
        Some(&format!(r#"{{"source_url": "file://{}"}}"#, snap.display())),
    );
    assert_eq!(code, 409, "a second restore is refused: {body}");

    assert_eq!(curl_body(&socket, "PUT", "/api/v1/vm.resume", None).0, 204);
    wait_until("100 ticks after resume", Duration::from_secs(20), || {
        read(&serial).lines().count() > 100
    });
    assert_eq!(
        curl_body(&socket, "PUT", "/api/v1/vmm.shutdown", None).0,
        204
    );
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(8), "{logs}");
    assert_consecutive(&format!("{before}{}", read(&serial)));
}

/// Copies the snapshot in `from` to `to`.
fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for f in ["config.json", "state.bin", "memory.bin"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
}

fn restore_error(snap: &Path) -> String {
    let out = run_with_timeout(
        {
            let mut c = vireo();
            c.arg("restore").arg("--source").arg(snap);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    err.lines()
        .find(|l| l.starts_with("vireo: error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"))
        .to_owned()
}

#[test]
fn bad_snapshots_are_refused_with_a_reason() {
    let fx = Fixture::create();
    let good = fx.path("snap");
    saved_guest(&fx, &good);
    let variant = |name: &str, f: &dyn Fn(&Path)| -> String {
        let dir: PathBuf = fx.path(name);
        copy_snapshot(&good, &dir);
        f(&dir);
        restore_error(&dir)
    };
    let state = |d: &Path| d.join("state.bin");
    let e = variant("truncated", &|d| {
        let b = std::fs::read(state(d)).expect("read");
        std::fs::write(state(d), &b[..b.len() / 2]).expect("write");
    });
    assert!(e.contains("the state file is truncated"), "{e}");
    let e = variant("corrupted", &|d| {
        let mut b = std::fs::read(state(d)).expect("read");
        let i = b.len() / 2;
        b[i] ^= 0xff;
        std::fs::write(state(d), &b).expect("write");
    });
    assert!(e.contains("the state file is corrupted: checksum"), "{e}");
    let e = variant("major2", &|d| {
        let mut b = std::fs::read(state(d)).expect("read");
        b[8..10].copy_from_slice(&2u16.to_le_bytes());
        std::fs::write(state(d), &b).expect("write");
    });
    assert!(e.contains("snapshot format 2.0 (written by Vireo"), "{e}");
    assert!(e.contains("is not supported"), "{e}");
    let e = variant("short-memory", &|d| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("memory.bin"))
            .expect("open");
        f.set_len(32 << 20).expect("truncate");
    });
    assert!(
        e.contains("but the snapshot's memory needs 67108864"),
        "{e}"
    );
    let e = variant("not-a-snapshot", &|d| {
        std::fs::write(state(d), b"hello").expect("write");
    });
    assert!(e.contains("not a Vireo snapshot state file"), "{e}");
    let e = variant("missing", &|d| {
        std::fs::remove_file(state(d)).expect("rm");
    });
    assert!(e.contains("state.bin: No such file"), "{e}");
    let e = variant("spec-vcpus", &|d| {
        let p = d.join("config.json");
        let mut v: Value = serde_json::from_str(&read(&p)).expect("json");
        v["vcpus"] = 2.into();
        std::fs::write(&p, v.to_string()).expect("write");
    });
    assert!(e.contains("the spec has 2 vCPUs, the state 1"), "{e}");
}

#[test]
fn bad_snapshot_requests_leave_the_running_vm_unharmed() {
    let fx = Fixture::create();
    let socket = fx.path("a.sock");
    let mut cmd = vireo();
    cmd.arg("run")
        .arg("--kernel")
        .arg(&fx.guest)
        .args(["--cmdline", COUNT, "--memory", "64M", "--api-socket"])
        .arg(&socket);
    let proc = Collected::spawn(cmd);
    wait_for_path(&socket, Duration::from_secs(20));
    proc.wait_for_lines(10, Duration::from_secs(20));
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("/api/v1/vm.snapshot", None, 400, "invalid request body"),
        (
            "/api/v1/vm.snapshot",
            Some("{}"),
            400,
            "invalid request body",
        ),
        (
            "/api/v1/vm.snapshot",
            Some(r#"{"destination_url": "http://x/y"}"#),
            400,
            "is not a file:// URL",
        ),
        (
            "/api/v1/vm.snapshot",
            Some(r#"{"destination_url": "file:///proc/no/such/dir"}"#),
            500,
            "/proc/no/such/dir",
        ),
        (
            "/api/v1/vm.restore",
            Some(r#"{"source_url": "file:///tmp"}"#),
            409,
            "this vireo already has a VM",
        ),
    ];
    for (path, body, status, reason) in cases {
        let (code, answer) = curl_body(&socket, "PUT", path, *body);
        assert_eq!(code, *status, "{path} {body:?}: {answer}");
        let error = json(&answer)["error"].as_str().expect("error").to_owned();
        assert!(error.contains(reason), "{path} {body:?}: {error}");
        assert!(!error.contains('\n'));
    }
    let n = proc.line_count();
    proc.wait_for_lines(n + 50, Duration::from_secs(20));
    assert_eq!(
        json(&curl_body(&socket, "GET", "/api/v1/vm.info", None).1)["state"],
        "Running"
    );
    let lines = proc.lines();
    assert_consecutive(&(lines.join("\n") + "\n"));
}

/// `churn i=<i> …` lines of `text` (complete lines only): (i, the whole line).
fn churn_lines(text: &str) -> Vec<(u64, String)> {
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .filter_map(|l| {
            let i = l
                .strip_prefix("churn i=")?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((i, l.to_owned()))
        })
        .collect()
}

fn qemu_img_check(image: &Path) {
    let out = Command::new("qemu-img")
        .arg("check")
        .arg(image)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success() && stdout(&out).contains("No errors were found"),
        "qemu-img check {}: {}{}",
        image.display(),
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn a_guest_killed_mid_disk_io_on_a_qcow2_overlay_resumes_its_io_in_a_new_process() {
    let fx = Fixture::create();
    let (base, overlay) = (fx.path("base.raw"), fx.path("overlay.qcow2"));
    std::fs::File::create(&base)
        .and_then(|f| f.set_len(1 << 20))
        .expect("base");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay)
        .output()
        .expect("qemu-img create");
    assert!(out.status.success(), "{}", stderr(&out));
    let disk = format!("path={},format=qcow2", overlay.display());
    let (socket, serial, snap) = (fx.path("a.sock"), fx.path("a.serial"), fx.path("snap"));
    let mut cmd = vireo();
    cmd.arg("run")
        .arg("--kernel")
        .arg(&fx.guest)
        .args([
            "--cmdline",
            "churn 256 256 512",
            "--memory",
            "64M",
            "--disk",
            &disk,
        ])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .arg("--api-socket")
        .arg(&socket);
    let mut proc = Collected::spawn(cmd);
    wait_for_path(&socket, Duration::from_secs(20));
    wait_until("30 churn lines", Duration::from_secs(30), || {
        churn_lines(&read(&serial)).len() > 30
    });
    // Paused with block requests in flight a moment ago; the snapshot flushes the overlay.
    assert_eq!(curl_body(&socket, "PUT", "/api/v1/vm.pause", None).0, 204);
    std::thread::sleep(Duration::from_millis(300));
    let body = format!(r#"{{"destination_url": "file://{}"}}"#, snap.display());
    let (code, answer) = curl_body(&socket, "PUT", "/api/v1/vm.snapshot", Some(&body));
    assert_eq!(code, 200, "{answer}");
    send_signal(&mut proc.running, libc::SIGKILL);
    let _ = proc.finish(Duration::from_secs(20));
    qemu_img_check(&overlay);
    let before = read(&serial);
    let last = churn_lines(&before).last().expect("lines").0;

    let serial2 = fx.path("b.serial");
    let socket2 = fx.path("b.sock");
    let mut cmd = vireo();
    cmd.arg("restore")
        .arg("--source")
        .arg(&snap)
        .arg("--serial")
        .arg(format!("file={}", serial2.display()))
        .arg("--api-socket")
        .arg(&socket2);
    let proc = Collected::spawn(cmd);
    wait_until(
        "30 churn lines after restore",
        Duration::from_secs(30),
        || churn_lines(&read(&serial2)).len() > 30,
    );
    assert_eq!(
        curl_body(&socket2, "PUT", "/api/v1/vm.shutdown", None).0,
        204
    );
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(8), "{logs}");
    qemu_img_check(&overlay);
    let after = read(&serial2);
    assert!(
        !after.contains("MISMATCH"),
        "the guest found its memory or disk wrong: {after}"
    );
    let lines = churn_lines(&format!("{before}{after}"));
    for pair in lines.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 256, "lost or repeated: {:?}", pair);
    }
    // (The first line after the snapshot may be split between the two runs' output.)
    let next = lines
        .iter()
        .find(|(i, _)| *i > last)
        .expect("lines after restore")
        .0;
    assert_eq!(
        next,
        last + 256,
        "the restored guest continues where it stopped"
    );
    for (i, line) in &lines {
        assert!(
            line.contains(&format!(" blk={i}")),
            "disk I/O kept pace: {line}"
        );
    }
}

#[test]
fn a_payload_less_vireo_ends_cleanly_on_sigterm_or_vmm_shutdown_before_any_restore() {
    let fx = Fixture::create();
    for how in ["sigterm", "vmm.shutdown"] {
        let socket = fx.path(&format!("{how}.sock"));
        let mut cmd = vireo();
        cmd.arg("run").arg("--api-socket").arg(&socket);
        let mut proc = Collected::spawn(cmd);
        wait_for_path(&socket, Duration::from_secs(20));
        if how == "sigterm" {
            send_signal(&mut proc.running, libc::SIGTERM);
        } else {
            assert_eq!(
                curl_body(&socket, "PUT", "/api/v1/vmm.shutdown", None).0,
                204
            );
        }
        let (status, _, logs) = proc.finish(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{how}: {logs}");
        assert!(!socket.exists(), "{how}: the socket outlived vireo");
    }
}

//! Live migration between `vireo` processes under real KVM, through both front doors: the
//! control API driven by curl, and `vireo remote` / `vireo receive`. A counting test guest
//! moves from one process to another and continues its count; the source exits with status
//! 10; killing the target in the middle of a pass leaves the source running, and a second
//! migration then succeeds; bad requests get a clear 4xx.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// `count N GAP`: about one line per 2 ms here.
const COUNT: &str = "count 1000000 4000000";

/// The numbers of the complete `tick N` lines of `text`.
fn ticks(text: &str) -> Vec<u64> {
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect()
}

/// `text` is one count from 0 with nothing lost or repeated.
fn assert_consecutive(text: &str) {
    let t = ticks(text);
    assert!(t.len() > 10, "{text}");
    for (i, n) in t.iter().enumerate() {
        assert_eq!(*n, i as u64, "the count broke at line {i}");
    }
}

/// A source `vireo run` with the test guest running `cmdline`, its serial console in `serial`
/// and its API on `socket`, once it has printed `lines` lines.
fn source(fx: &Fixture, cmdline: &str, memory: &str, name: &str, lines: usize) -> Collected {
    let (socket, serial) = (
        fx.path(&format!("{name}.sock")),
        fx.path(&format!("{name}.serial")),
    );
    let mut cmd = vireo();
    cmd.arg("run")
        .arg("--kernel")
        .arg(&fx.guest)
        .args(["--cmdline", cmdline, "--memory", memory, "--serial"])
        .arg(format!("file={}", serial.display()))
        .arg("--api-socket")
        .arg(&socket);
    let proc = Collected::spawn(cmd);
    wait_for_path(&socket, Duration::from_secs(20));
    wait_until("the guest's first lines", Duration::from_secs(60), || {
        read(&serial).lines().count() > lines
    });
    proc
}

/// `vireo receive --listen URL` with its serial console in `serial` and API on `socket`.
fn receiver(url: &str, serial: &Path, socket: &Path) -> Collected {
    let mut cmd = vireo();
    cmd.args(["receive", "--listen", url, "--serial"])
        .arg(format!("file={}", serial.display()))
        .arg("--api-socket")
        .arg(socket);
    Collected::spawn(cmd)
}

#[test]
fn a_counting_guest_moves_to_vireo_receive_through_the_api_and_the_source_exits_10() {
    let fx = Fixture::create();
    let src = source(&fx, COUNT, "64M", "a", 20);
    let target_sock = fx.path("m.sock");
    let (b_serial, b_sock) = (fx.path("b.serial"), fx.path("b.sock"));
    let target = receiver(
        &format!("unix:{}", target_sock.display()),
        &b_serial,
        &b_sock,
    );
    wait_for_path(&target_sock, Duration::from_secs(20));

    let body = format!(r#"{{"destination_url": "unix:{}"}}"#, target_sock.display());
    let (code, answer) = curl_body(
        &fx.path("a.sock"),
        "PUT",
        "/api/v1/vm.send-migration",
        Some(&body),
    );
    assert_eq!(code, 200, "{answer}");
    let info = json(&answer);
    assert_eq!(info["phase"], "completed", "{info}");
    assert!(
        info["downtime_ms"].as_f64().expect("downtime") < 300.0,
        "{info}"
    );
    assert!(info["total_ms"].as_f64().is_some(), "{info}");
    let (status, _, logs) = src.finish(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(10),
        "the source exits with 10 (migrated): {logs}"
    );

    wait_for_path(&b_sock, Duration::from_secs(20));
    wait_until("100 ticks on the target", Duration::from_secs(20), || {
        read(&b_serial).lines().count() > 100
    });
    shutdown_running(&b_sock, target);
    assert_consecutive(&(read(&fx.path("a.serial")) + &read(&b_serial)));
}

#[test]
fn a_payload_less_vireo_receives_over_tcp_by_vireo_remote() {
    let fx = Fixture::create();
    let src = source(&fx, COUNT, "64M", "a", 20);
    // The target: `vireo run --api-socket` alone, told to receive by `vireo remote`.
    let c_sock = fx.path("c.sock");
    let mut cmd = vireo();
    cmd.arg("run").arg("--api-socket").arg(&c_sock);
    let target = Collected::spawn(cmd);
    wait_for_path(&c_sock, Duration::from_secs(20));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("tcp:127.0.0.1:{port}");
    let receive = {
        let (c_sock, url) = (c_sock.clone(), url.clone());
        std::thread::spawn(move || {
            vireo()
                .args(["remote", "--api-socket"])
                .arg(&c_sock)
                .args(["receive-migration", &url])
                .output()
                .expect("vireo remote receive-migration")
        })
    };
    wait_until("the target listens", Duration::from_secs(20), || {
        target.logs().contains("waiting for the migration source")
    });
    let out = vireo()
        .args(["remote", "--api-socket"])
        .arg(fx.path("a.sock"))
        .args(["send-migration", &url, "--downtime-ms", "100"])
        .output()
        .expect("vireo remote send-migration");
    assert!(
        out.status.success(),
        "send: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let info = json(&stdout(&out));
    assert_eq!(info["phase"], "completed", "{info}");
    let received = receive.join().expect("receive thread");
    assert!(received.status.success(), "{}", stderr(&received));
    let (status, _, logs) = src.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(10), "{logs}");
    // The VM's spec names the serial file: the target appends the count to it.
    let serial = fx.path("a.serial");
    let n = read(&serial).lines().count();
    wait_until(
        "the count goes on at the target",
        Duration::from_secs(20),
        || read(&serial).lines().count() > n + 100,
    );
    assert_eq!(
        curl_body(&c_sock, "PUT", "/api/v1/vmm.shutdown", None).0,
        204
    );
    let _ = target.finish(Duration::from_secs(20));
    assert_consecutive(&read(&serial));
}

#[test]
fn killing_the_target_mid_pass_leaves_the_source_running_and_a_second_migration_succeeds() {
    let fx = Fixture::create();
    // 256 MiB rewritten at 200 MiB/s; the first migration is slowed to 20 MB/s.
    let src = source(&fx, "churn 65536 16384 0 0 200", "512M", "a", 1);
    let a_sock = fx.path("a.sock");
    let a_serial = fx.path("a.serial");
    let t1_sock = fx.path("t1.sock");
    let mut t1 = receiver(
        &format!("unix:{}", t1_sock.display()),
        &fx.path("t1.serial"),
        &fx.path("t1.api"),
    );
    wait_for_path(&t1_sock, Duration::from_secs(20));
    let send = {
        let (a_sock, body) = (
            a_sock.clone(),
            format!(
                r#"{{"destination_url": "unix:{}", "max_bandwidth": 20000000}}"#,
                t1_sock.display()
            ),
        );
        std::thread::spawn(move || {
            curl_body(&a_sock, "PUT", "/api/v1/vm.send-migration", Some(&body))
        })
    };
    wait_until("pre-copy under way", Duration::from_secs(30), || {
        let info = json(&curl_body(&a_sock, "GET", "/api/v1/vm.migration", None).1);
        info["phase"] == "precopy" && info["bytes_sent"].as_u64().unwrap_or(0) > 8 << 20
    });
    send_signal(&mut t1.running, libc::SIGKILL);
    let (status, _, _) = t1.finish(Duration::from_secs(20));
    assert_eq!(status.code(), None, "killed");
    let (code, answer) = send.join().expect("send thread");
    assert_eq!(code, 500, "{answer}");
    let info = json(&curl_body(&a_sock, "GET", "/api/v1/vm.migration", None).1);
    assert_eq!(info["phase"], "failed", "{info}");
    assert_eq!(info["throttle_percent"], 0, "{info}");
    let vm = json(&curl_body(&a_sock, "GET", "/api/v1/vm.info", None).1);
    assert_eq!(vm["state"], "Running", "{vm}");
    // The guest goes on (a full sweep of its working set, verified by itself).
    let n = read(&a_serial).lines().count();
    wait_until(
        "the source's guest goes on",
        Duration::from_secs(60),
        || read(&a_serial).lines().count() > n + 1,
    );

    // A second migration succeeds.
    let t2_sock = fx.path("t2.sock");
    let t2 = receiver(
        &format!("unix:{}", t2_sock.display()),
        &fx.path("t2.serial"),
        &fx.path("t2.api"),
    );
    wait_for_path(&t2_sock, Duration::from_secs(20));
    let body = format!(r#"{{"destination_url": "unix:{}"}}"#, t2_sock.display());
    let (code, answer) = curl_body(&a_sock, "PUT", "/api/v1/vm.send-migration", Some(&body));
    assert_eq!(code, 200, "{answer}");
    let (status, _, logs) = src.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(10), "{logs}");
    let text = read(&a_serial);
    assert!(
        !text.contains("MISMATCH") && !text.contains("FAIL"),
        "{text}"
    );
    // The target (its console in t2.serial) verifies two sweeps of the working set.
    let t2_serial = fx.path("t2.serial");
    wait_until("two sweeps on the target", Duration::from_secs(60), || {
        let text = read(&t2_serial);
        assert!(
            !text.contains("MISMATCH") && !text.contains("FAIL"),
            "{text}"
        );
        text.matches("churn i=").count() >= 2
    });
    let text = read(&t2_serial);
    assert!(
        !text.contains("MISMATCH") && !text.contains("FAIL"),
        "{text}"
    );
    assert_eq!(
        curl_body(&fx.path("t2.api"), "PUT", "/api/v1/vm.shutdown", None).0,
        204
    );
    let _ = t2.finish(Duration::from_secs(20));
}

#[test]
fn bad_migration_requests_get_a_clear_4xx_and_harm_nothing() {
    let fx = Fixture::create();
    let src = source(&fx, COUNT, "64M", "a", 20);
    let a_sock = fx.path("a.sock");
    for (body, want) in [
        (r#"{"destination_url": "http://x"}"#, "bad migration URL"),
        (r#"{"destination_url": "tls:127.0.0.1:1"}"#, "needs tls_dir"),
        (
            r#"{"destination_url": "tcp:127.0.0.1:1", "local": true}"#,
            "local handover needs a unix: destination",
        ),
        (
            r#"{"destination_url": "unix:/x", "speed": 1}"#,
            "unknown field",
        ),
    ] {
        let (code, answer) = curl_body(&a_sock, "PUT", "/api/v1/vm.send-migration", Some(body));
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(
            json(&answer)["error"]
                .as_str()
                .expect("reason")
                .contains(want),
            "{answer}"
        );
    }
    let (code, answer) = curl_body(&a_sock, "PUT", "/api/v1/vm.cancel-migration", None);
    assert_eq!(code, 409, "{answer}");
    assert_eq!(json(&answer)["error"], "no migration is running");
    let body = r#"{"receiver_url": "unix:/tmp/nope.sock"}"#;
    let (code, _) = curl_body(&a_sock, "PUT", "/api/v1/vm.receive-migration", Some(body));
    assert_eq!(code, 409, "a vireo with a VM does not receive another");
    // Nobody listens at the destination: 500 naming it, and the guest runs on.
    let body = format!(
        r#"{{"destination_url": "unix:{}"}}"#,
        fx.path("none.sock").display()
    );
    let (code, answer) = curl_body(&a_sock, "PUT", "/api/v1/vm.send-migration", Some(&body));
    assert_eq!(code, 500, "{answer}");
    assert!(answer.contains("none.sock"), "{answer}");
    let vm = json(&curl_body(&a_sock, "GET", "/api/v1/vm.info", None).1);
    assert_eq!(vm["state"], "Running", "{vm}");
    // `vireo receive` given a bad URL fails at once with exit status 1.
    let out = vireo()
        .args(["receive", "--listen", "tcp:nohost"])
        .output()
        .expect("vireo receive");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bad migration URL"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        curl_body(&a_sock, "PUT", "/api/v1/vm.shutdown", None).0,
        204
    );
    let _ = src.finish(Duration::from_secs(20));
}

#[test]
fn vireo_receive_ends_cleanly_on_sigterm_before_any_source() {
    let fx = Fixture::create();
    let sock = fx.path("m.sock");
    let mut cmd = vireo();
    cmd.args(["receive", "--listen"])
        .arg(format!("unix:{}", sock.display()));
    let mut proc = Collected::spawn(cmd);
    wait_for_path(&sock, Duration::from_secs(20));
    send_signal(&mut proc.running, libc::SIGTERM);
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(
        logs.contains("stopped before any source connected"),
        "{logs}"
    );
    assert!(!sock.exists(), "the listening socket is removed");
}

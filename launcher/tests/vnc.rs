//! `vireo run --vnc` under real KVM with the test guest drawing its pattern: `vm.info` (over
//! curl) names the bound address, vncdotool (a real VNC client) needs the password from
//! `--vnc-password-file` and captures the pattern, and bad flags are refused with their reason.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// `vireo run` with the test guest drawing `fb-pattern 256 128 5`, a VNC console on a free
/// loopback port with a password, and the control API.
#[test]
fn vm_info_names_the_vnc_address_and_a_viewer_needs_the_password() {
    let fx = Fixture::create();
    let socket = fx.path("api.sock");
    let password = fx.path("vnc-password");
    std::fs::write(&password, "s3cret\n").expect("password file");
    let mut cmd = vireo();
    cmd.arg("run")
        .arg("--kernel")
        .arg(&fx.guest)
        .args(["--cmdline", "fb-pattern 256 128 5", "--memory", "64M"])
        .args([
            "--vnc",
            ":0",
            "--vnc-size",
            "256x128",
            "--vnc-password-file",
        ])
        .arg(&password)
        .arg("--api-socket")
        .arg(&socket);
    let proc = Collected::spawn(cmd);
    wait_for_path(&socket, Duration::from_secs(20));
    let info = json(&curl_body(&socket, "GET", "/api/v1/vm.info", None).1);
    let address = info["vnc"].as_str().expect("vm.info has vnc").to_owned();
    assert!(address.starts_with("127.0.0.1:"), "{info}");
    assert_ne!(address, "127.0.0.1:0", "the bound port: {info}");
    assert_eq!(info["config"]["vnc"]["width"], 256, "{info}");
    let (host, port) = address.rsplit_once(':').expect("HOST:PORT");
    let server = format!("{host}::{port}");
    let shot = fx.path("shot.png");
    let vncdo = |args: &[&str]| {
        Command::new("vncdo")
            .args(["-s", &server])
            .args(args)
            .output()
            .expect("run vncdo: pip install vncdotool (.ci/run does)")
    };
    let wrong = vncdo(&["-p", "wrong", "capture", shot.to_str().expect("utf-8")]);
    assert!(!wrong.status.success(), "a wrong password is refused");
    assert!(!shot.exists());
    wait_until(
        "the guest drew its pattern",
        Duration::from_secs(20),
        || proc.lines().iter().any(|l| l.starts_with("fb drawn")),
    );
    // The refresher copies what the guest drew within a few tens of milliseconds.
    std::thread::sleep(Duration::from_millis(200));
    let right = vncdo(&["-p", "s3cret", "capture", shot.to_str().expect("utf-8")]);
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("capture"),
    ));
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).expect("frame");
    assert_eq!((frame.width, frame.height), (256, 128));
    let ch = frame.color_type.samples();
    let pixel = |x: usize, y: usize| {
        let i = (y * 256 + x) * ch;
        (u32::from(buf[i]) << 16) | (u32::from(buf[i + 1]) << 8) | u32::from(buf[i + 2])
    };
    // testguest/guest/fb.rs's pattern with seed 5, at a few places.
    for (x, y) in [(0u32, 0u32), (17, 3), (255, 127), (128, 64)] {
        let r = (x * 3 + y + 5) & 0xff;
        let g = (y * 5 + (x >> 2) + 35) & 0xff;
        let b = ((x ^ y) + 65) & 0xff;
        assert_eq!(
            pixel(x as usize, y as usize),
            (r << 16) | (g << 8) | b,
            "({x},{y})"
        );
    }
    shutdown_running(&socket, proc);
}

#[test]
fn bad_vnc_flags_are_refused_with_their_reason() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--vnc", "nowhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a VNC address"),
        "{}",
        stderr(&out)
    );
    let out = run_guest(&fx, &["--vnc", ":0", "--vnc-size", "100x100"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("100x100 screen is not supported"),
        "{}",
        stderr(&out)
    );
    let out = run_guest(&fx, &["--vnc", ":0", "--dirty-log", "ring"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("dirty ring"), "{}", stderr(&out));
    let missing = fx.path("no-such-password");
    let out = run_guest(
        &fx,
        &[
            "--vnc",
            ":0",
            "--vnc-password-file",
            missing.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("password file"), "{}", stderr(&out));
    let out = run_guest(&fx, &["--vnc-size", "640x480"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--vnc-size needs --vnc: {}",
        stderr(&out)
    );
}

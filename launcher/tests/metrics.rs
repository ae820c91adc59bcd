//! `vireo launch --metrics-listen ADDR` under real KVM: the test guest's `churn` scenario
//! keeps a raw disk and a virtio-net NIC (on a tap this test creates) busy, `curl` scrapes
//! `GET /metrics` twice, and the real Python Prometheus parser
//! (`prometheus_client.parser.text_string_to_metric_families`, Debian's
//! `python3-prometheus-client`) reads each scrape: the counters grew between them and every
//! series carries the VMI's name, namespace and node from the environment.

mod common;

/// Root check and `ip` helper shared with the `net` crate's tap tests.
#[path = "../../net/tests/common/mod.rs"]
mod netcommon;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A tap in the host's namespace, deleted when dropped (even if the test fails).
struct TapGuard(String);

impl TapGuard {
    fn create() -> Self {
        let name = format!("vmet{}", std::process::id() % 1_000_000);
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        netcommon::ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        let tap = Self(name);
        // No IPv6 chatter (router solicitations, MLD) from the host into the guest.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tap.0),
            "1",
        );
        netcommon::ip(&["link", "set", &tap.0, "up"]);
        tap
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `curl` of `url`: (HTTP status, Content-Type, body).
fn curl_get(url: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code} %{content_type}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", "0 "));
    let (code, ctype) = tail.split_once(' ').unwrap_or((tail, ""));
    (code.parse().unwrap_or(0), ctype.to_owned(), body.to_owned())
}

/// One parsed sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses `text` with the Python client's classic text-format parser
/// (`scripts/prometheus-samples.py`).
fn parse(text: &str) -> Vec<Sample> {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/prometheus-samples.py"
    );
    let mut child = Command::new(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scripts/prometheus-samples.py (/usr/bin/python3)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to the parser");
    let out = child.wait_with_output().expect("the parser");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the scrape (python3-prometheus-client is installed by \
         .ci/run): {}\n{text}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

/// The value of the sample `name` whose labels include `labels`, if there is one.
fn find(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

/// [`find`], failing the test if the sample is missing.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape: {samples:?}"))
}

/// Scrapes `url` and parses it: (samples, raw text).
fn scrape(url: &str) -> (Vec<Sample>, String) {
    let (code, ctype, body) = curl_get(url);
    assert_eq!(code, 200, "{body}");
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "Content-Type {ctype:?}"
    );
    (parse(&body), body)
}

/// The counters the test expects to grow between scrapes, with their labels.
const GROWING: [(&str, &[(&str, &str)]); 7] = [
    (
        "kubevirt_vmi_storage_read_traffic_bytes_total",
        &[("drive", "disk0")],
    ),
    (
        "kubevirt_vmi_storage_write_traffic_bytes_total",
        &[("drive", "disk0")],
    ),
    (
        "kubevirt_vmi_storage_iops_read_total",
        &[("drive", "disk0")],
    ),
    (
        "kubevirt_vmi_storage_iops_write_total",
        &[("drive", "disk0")],
    ),
    (
        "kubevirt_vmi_network_transmit_packets_total",
        &[("interface", "net0")],
    ),
    (
        "kubevirt_vmi_network_transmit_bytes_total",
        &[("interface", "net0")],
    ),
    (
        "kubevirt_vmi_vcpu_seconds_total",
        &[("id", "0"), ("state", "running")],
    ),
];

#[test]
fn metrics_of_a_churning_vm_grow_between_scrapes_and_parse_with_the_python_client() {
    netcommon::require_root("metrics_of_a_churning_vm_grow_between_scrapes");
    let fx = Fixture::create();
    let tap = TapGuard::create();
    let disk = fx.path("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .expect("disk image");
    let api = fx.path("api.sock");
    let serial_log = fx.path("serial.log");
    let spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 64,
        // 64 pages, a line every 4096 iterations (a few a second).
        "payload": {"kernel": fx.guest, "cmdline": "churn 64 4096"},
        "serial": {"mode": "file", "path": serial_log},
        "disks": [{"path": disk, "format": "raw"}],
        "nets": [{"tap": tap.0, "mac": "52:54:00:12:34:57"}],
        "api_socket": api,
    });
    let spec_path = fx.path("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let (metrics_port, ready_port) = (free_port(), free_port());
    let mut cmd = vireo();
    cmd.arg("launch")
        .arg("--spec")
        .arg(&spec_path)
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--ready-listen")
        .arg(format!("127.0.0.1:{ready_port}"))
        .env("VIREO_VMI", "vmi-under-test")
        .env("VIREO_NAMESPACE", "ns-under-test")
        .env("VIREO_NODE", "node-under-test");
    let mut proc = Collected::spawn(cmd);
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let started = Instant::now();

    // Until the guest has sent a frame and written the disk (the churn has begun).
    wait_until(
        "the churn shows in the metrics",
        Duration::from_secs(30),
        || {
            let (code, _, body) = curl_get(&url);
            if code != 200 {
                return false;
            }
            let samples = parse(&body);
            find(&samples, "vireo_vmi_up", &[]) == Some(1.0)
                && find(
                    &samples,
                    "kubevirt_vmi_network_transmit_packets_total",
                    &[("interface", "net0")],
                )
                .is_some_and(|v| v > 0.0)
                && find(
                    &samples,
                    "kubevirt_vmi_storage_iops_write_total",
                    &[("drive", "disk0")],
                )
                .is_some_and(|v| v > 0.0)
        },
    );

    let (first, _) = scrape(&url);
    std::thread::sleep(Duration::from_millis(1200));
    let (second, text) = scrape(&url);
    for (name, labels) in GROWING {
        let (a, b) = (value(&first, name, labels), value(&second, name, labels));
        assert!(b > a, "{name}{labels:?} did not grow: {a} then {b}\n{text}");
    }
    let rss = value(&second, "kubevirt_vmi_memory_resident_bytes", &[]);
    assert!(rss > 0.0, "{text}");
    assert_eq!(
        value(&second, "kubevirt_vmi_memory_domain_bytes", &[]),
        (64u64 << 20) as f64
    );
    assert_eq!(
        value(&second, "vireo_vmi_state", &[("state", "running")]),
        1.0
    );
    assert_eq!(
        value(&second, "vireo_vmi_state", &[("state", "paused")]),
        0.0
    );
    assert!(value(&second, "vireo_vmi_serial_written_bytes_total", &[]) > 0.0);
    // Every series names the VMI, its namespace and node.
    for (name, labels, _) in &second {
        for (key, want) in [
            ("name", "vmi-under-test"),
            ("namespace", "ns-under-test"),
            ("node", "node-under-test"),
        ] {
            assert_eq!(
                labels.get(key).map(String::as_str),
                Some(want),
                "{name}{labels:?}"
            );
        }
    }

    // Both listeners answer both paths.
    let (from_ready_port, _) = scrape(&format!("http://127.0.0.1:{ready_port}/metrics"));
    assert_eq!(value(&from_ready_port, "vireo_vmi_up", &[]), 1.0);
    let (code, _, body) = curl_get(&format!("http://127.0.0.1:{metrics_port}/readyz"));
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    // The guest checked its own disk and memory all along.
    let serial = read(&serial_log);
    assert!(serial.contains("churn start"), "{serial}");
    assert!(!serial.contains("MISMATCH"), "{serial}");

    send_signal(&mut proc.running, libc::SIGTERM);
    let (status, _, logs) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs}");
    eprintln!("took {:?}", started.elapsed());
    drop(tap);
}

#[test]
fn metrics_listen_without_an_api_socket_is_refused_with_the_reason() {
    let fx = Fixture::create();
    let spec = serde_json::json!({
        "vcpus": 1, "memory_mib": 64,
        "payload": {"kernel": fx.guest, "cmdline": "idle"},
        "serial": {"mode": "off"},
    });
    let path = fx.path("spec.json");
    std::fs::write(&path, spec.to_string()).expect("write spec");
    let out = vireo()
        .arg("launch")
        .arg("--spec")
        .arg(&path)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .output()
        .expect("vireo");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-listen needs the launch spec's api_socket"),
        "{err}"
    );
}

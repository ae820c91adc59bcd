//! VMs driven through the cluster on the real test node (see `node.rs` for the node): pause
//! and unpause within a second under 20 VMs, `vireo vm console`, `vireo vm vnc` with two real
//! VNC clients, Prometheus metrics parsed by a real parser, and what a launcher pod cannot do.
//!
//! Every `vireo vm` command runs the real `vireo-controller` binary as service account
//! `vm-user`, bound to nothing but `deploy/rbac.yaml`'s `vireo-vm-user` role.

mod node_support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vireo_controller::crd::vmi::{VirtualMachineInstance, VmiPhase};

use node_support::*;

/// The promise: a pause or unpause shows on the VMI within this long.
const WITHIN: Duration = Duration::from_secs(1);
/// VMs on the node at once.
const VMS: usize = 20;

/// Polls VMI `name` every 20 ms until `check` holds, and returns how long it took since
/// `since`; fails after [`PATIENCE`].
async fn time_until(
    e: &NodeEnv,
    name: &str,
    since: Instant,
    check: impl Fn(&VirtualMachineInstance) -> bool,
) -> Duration {
    let vmis = e.vmis();
    loop {
        if vmis.get(name).await.ok().is_some_and(|v| check(&v)) {
            return since.elapsed();
        }
        assert!(since.elapsed() < PATIENCE, "timed out waiting for {name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn summary(what: &str, d: &mut [Duration]) -> String {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    format!(
        "| {what:<8} | {:>6.0} ms | {:>6.0} ms | {:>6.0} ms |",
        ms(d[d.len() / 2]),
        ms(d[(d.len() * 95).div_ceil(100) - 1]),
        ms(d[d.len() - 1])
    )
}

#[tokio::test]
async fn pause_and_unpause_take_effect_within_a_second_under_twenty_vms() {
    let e = NodeEnv::start("node-pause").await;
    let user = e.user_kubeconfig().await;
    let names: Vec<String> = (0..VMS).map(|i| format!("p{i}")).collect();
    for n in &names {
        e.apply_vm(n, "Always", "count 1000000000 300000000");
    }
    for n in &names {
        e.wait_vmi("every VMI Running and Ready", n, None, |v| {
            vmi_phase(v) == VmiPhase::Running && vmi_ready(v)
        })
        .await;
    }
    for n in &names {
        wait_until("every guest counting", || async {
            last_tick(&e.logs(n)).is_some()
        })
        .await;
    }

    // Pause each in turn while the others run: the VMI says Paused within a second of the
    // command, and the guest's counter really stops.
    let mut paused = Vec::new();
    for n in &names {
        let t = Instant::now();
        vm_request(&user, &["pause", n]);
        paused.push(time_until(&e, n, t, vmi_paused).await);
    }
    let ticks: Vec<_> = names.iter().map(|n| last_tick(&e.logs(n))).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (n, before) in names.iter().zip(&ticks) {
        assert!(before.is_some());
        assert_eq!(&last_tick(&e.logs(n)), before, "{n} stopped counting");
    }

    // Unpause each in turn: Running (no Paused condition) within a second, and counting again.
    let mut unpaused = Vec::new();
    for n in &names {
        let t = Instant::now();
        vm_request(&user, &["unpause", n]);
        unpaused.push(time_until(&e, n, t, vmi_unpaused).await);
    }
    for (n, before) in names.iter().zip(&ticks) {
        wait_until("every guest counting again", || async {
            last_tick(&e.logs(n)) > *before
        })
        .await;
    }

    eprintln!(
        "{VMS} VMs on the node; `vireo vm pause|unpause NAME` → VMI condition, each in turn:"
    );
    eprintln!("| request  | median    | p95       | max       |");
    eprintln!("|----------|-----------|-----------|-----------|");
    eprintln!("{}", summary("pause", &mut paused));
    eprintln!("{}", summary("unpause", &mut unpaused));
    for (what, d) in [("pause", &paused), ("unpause", &unpaused)] {
        let worst = d.iter().max().copied().unwrap_or_default();
        assert!(worst <= WITHIN, "a {what} took {worst:?}");
    }

    let (ok, out) = e.kubectl(&["delete", "vm", "--all", "--wait=true"]);
    assert!(ok, "{out}");
    for n in &names {
        wait_until("no launcher process left", || async {
            launcher_processes(n).is_empty()
        })
        .await;
    }
}

/// The samples of a Prometheus scrape, parsed by the Python `prometheus_client` text parser
/// (`scripts/prometheus-samples.py`): `(name, labels, value)`.
fn parse_metrics(text: &str) -> Vec<(String, serde_json::Map<String, serde_json::Value>, f64)> {
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
        .expect("write");
    let out = child.wait_with_output().expect("the parser");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the scrape (python3-prometheus-client: .ci/run installs \
         it): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

/// The sum of the samples named `name` (over all label sets).
fn total(rows: &[(String, serde_json::Map<String, serde_json::Value>, f64)], name: &str) -> f64 {
    rows.iter()
        .filter(|r| r.0 == name)
        .map(|r| r.2)
        .sum::<f64>()
}

fn scrape(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-f", url])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a PNG screenshot into (width, height, 0xRRGGBB pixels).
fn png_pixels(path: &Path) -> (u32, u32, Vec<u32>) {
    let decoder = png::Decoder::new(BufReader::new(std::fs::File::open(path).expect("capture")));
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).expect("frame");
    let ch = frame.color_type.samples();
    let pixels = buf[..frame.buffer_size()]
        .chunks(ch)
        .map(|p| (u32::from(p[0]) << 16) | (u32::from(p[1]) << 8) | u32::from(p[2]))
        .collect();
    (frame.width, frame.height, pixels)
}

#[tokio::test]
async fn console_vnc_metrics_through_the_cluster_and_a_launcher_touches_nothing_else() {
    let e = NodeEnv::start("node-access").await;
    let user = e.user_kubeconfig().await;
    let guest = |cmdline: &str, devices: serde_json::Value| {
        json!({
            "cpu": { "cores": 1 },
            "memory": { "guest": "32Mi" },
            "firmware": { "kernelBoot": { "kernel": TESTGUEST, "cmdline": cmdline } },
            "devices": devices,
        })
    };
    // A disk the node's launcher reads and writes (hostDisk), and a pod-network NIC.
    let disk = e.cluster.run_dir.join(format!("{}-io.img", e.ns));
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk image");
    e.apply_vm_spec(
        "io",
        "Always",
        json!({
            "domain": guest("churn 64 256 64", json!({
                "disks": [{ "name": "data", "bus": "virtio", "format": "raw" }],
                "interfaces": [{ "name": "default", "masquerade": {} }],
            })),
            "volumes": [{ "name": "data", "hostDisk": { "path": disk.to_str().expect("utf-8") } }],
            "networks": [{ "name": "default", "pod": {} }],
        }),
    );
    e.apply_vm_spec(
        "echo",
        "Always",
        json!({ "domain": guest("echo", json!({})) }),
    );
    e.apply_vm_spec(
        "screen",
        "Always",
        json!({ "domain": guest("fb-pattern 1024 768 7", json!({ "autoattachGraphicsDevice": true })) }),
    );
    let mut vmis = Vec::new();
    for n in ["io", "echo", "screen"] {
        vmis.push(
            e.wait_vmi("the VMI Running and Ready", n, None, |v| {
                vmi_phase(v) == VmiPhase::Running && vmi_ready(v)
            })
            .await,
        );
    }
    wait_until("the echo guest ready", || async {
        e.logs("echo").contains("echo: ready")
    })
    .await;

    // The console: a line typed in comes back from the guest, and kubectl logs shows it too.
    let mut console = vm_cli(&user)
        .args(["console", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vireo vm console");
    console
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through the apiserver\n")
        .expect("type");
    let out = console.wait_with_output().expect("console");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("echo: through the apiserver"), "{text:?}");
    assert!(e.logs("echo").contains("echo: through the apiserver"));

    // VNC: one local listener, two real VNC clients at once, each pixel-exact.
    let mut vnc = vm_cli(&user)
        .args(["vnc", "screen", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vireo vm vnc");
    let mut first = String::new();
    BufReader::new(vnc.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("listening line");
    let port = first
        .split(" at 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let shots: Vec<_> = (0..2)
        .map(|i| e.cluster.run_dir.join(format!("{}-shot{i}.png", e.ns)))
        .collect();
    let viewers: Vec<_> = shots
        .iter()
        .map(|shot| {
            Command::new("vncdo")
                .args(["-s", &format!("127.0.0.1::{port}"), "capture"])
                .arg(shot)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("vncdo (pip install vncdotool: .ci/run does)")
        })
        .collect();
    for v in viewers {
        let out = v.wait_with_output().expect("vncdo");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = vnc.kill();
    let _ = vnc.wait();
    for shot in &shots {
        let (w, h, pixels) = png_pixels(shot);
        assert_eq!((w, h), (1024, 768));
        let wrong = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                pixels[(y * w + x) as usize] != vireo_testguest::fb_colors::pattern(x, y, 7)
            })
            .count();
        assert_eq!(wrong, 0, "{} pixels differ in {}", wrong, shot.display());
    }

    // Metrics: a real parser reads the launcher's port, and the counters move with the guest's
    // disk and network I/O.
    let pod = e.pods().get("vireo-launcher-io").await.expect("pod");
    let ip = pod.status.and_then(|s| s.pod_ip).expect("pod IP");
    let node = vmis[0]
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("node");
    let url = format!("http://{ip}:9100/metrics");
    let a = parse_metrics(&scrape(&url));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = parse_metrics(&scrape(&url));
    for name in [
        "kubevirt_vmi_storage_read_traffic_bytes_total",
        "kubevirt_vmi_storage_write_traffic_bytes_total",
        "kubevirt_vmi_storage_iops_read_total",
        "kubevirt_vmi_storage_iops_write_total",
        "kubevirt_vmi_network_transmit_packets_total",
        "kubevirt_vmi_network_transmit_bytes_total",
        "kubevirt_vmi_vcpu_seconds_total",
    ] {
        assert!(
            total(&b, name) > total(&a, name),
            "{name} did not move: {} → {}",
            total(&a, name),
            total(&b, name)
        );
    }
    assert!(total(&b, "kubevirt_vmi_memory_resident_bytes") > 0.0);
    for row in b.iter().filter(|r| r.0.starts_with("kubevirt_vmi_")) {
        assert_eq!(row.1.get("name"), Some(&json!("io")), "{row:?}");
        assert_eq!(row.1.get("namespace"), Some(&json!(e.ns)), "{row:?}");
        assert_eq!(row.1.get("node"), Some(&json!(node)), "{row:?}");
    }

    // What a launcher pod cannot do. It holds no credentials at all...
    let (ok, out) = e.kubectl(&[
        "exec",
        "vireo-launcher-echo",
        "--",
        "ls",
        "/var/run/secrets/kubernetes.io/serviceaccount",
    ]);
    assert!(!ok, "a launcher has no service account token: {out}");
    // ...its pods' service account may do nothing to another VM's objects...
    let sa = format!("--as=system:serviceaccount:{}:default", e.ns);
    for (verb, what) in [
        ("patch", "virtualmachineinstances.vireo.dev/screen"),
        ("get", "virtualmachines.vireo.dev/screen"),
        ("delete", "pods/vireo-launcher-screen"),
        (
            "create",
            "pods/vireo-launcher-screen --subresource=portforward",
        ),
        ("create", "pods/vireo-launcher-screen --subresource=exec"),
    ] {
        let mut args = vec!["auth", "can-i", verb];
        args.extend(what.split(' '));
        args.push(&sa);
        let (ok, out) = e.kubectl(&args);
        assert!(!ok && out.trim() == "no", "{verb} {what}: {out}");
    }
    // ...and over the pod network it reaches another VM's metrics, never its control API,
    // console or display (those listen on that pod's loopback only).
    let screen_ip = e
        .pods()
        .get("vireo-launcher-screen")
        .await
        .expect("pod")
        .status
        .and_then(|s| s.pod_ip)
        .expect("pod IP");
    let nc = |port: &str| {
        e.kubectl(&[
            "exec",
            "vireo-launcher-echo",
            "--",
            "busybox",
            "nc",
            "-w",
            "2",
            &screen_ip,
            port,
        ])
    };
    let (ok, out) = nc("9100");
    assert!(ok, "the metrics port is reachable: {out}");
    for port in ["8101", "8102", "5900"] {
        let (ok, out) = nc(port);
        assert!(!ok && out.contains("refused"), "port {port}: {out}");
    }

    let (ok, out) = e.kubectl(&["delete", "vm", "--all", "--wait=true"]);
    assert!(ok, "{out}");
    for n in ["io", "echo", "screen"] {
        wait_until("no launcher process left", || async {
            launcher_processes(n).is_empty()
        })
        .await;
    }
}

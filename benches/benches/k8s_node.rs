//! Kubernetes benchmark on a real node: `kubectl apply` of a VirtualMachine → the guest's first
//! serial byte in its launcher pod's log, for ≥ 20 VMs (they stay up, so later ones start
//! beside the earlier ones), and each launcher's memory next to its guest's.
//!
//! It stands up everything itself, as `scripts/test.sh` does for the node tests: a control plane
//! (`scripts/k8s-control-plane.sh`), a kubelet node with containerd (`scripts/k8s-node.sh`), the
//! launcher image with the ring-3 test guest (`scripts/launcher-image.sh`), and `vireo-controller`
//! as a process; then tears it all down. Nothing else may run a test node meanwhile.
//!
//! First byte: the kubelet's log file for the launcher container (what `kubectl logs` serves)
//! is polled every millisecond from just before `kubectl apply` until it holds the guest's
//! first line. Each VM is then paused before the next is applied (the VMI annotation `vireo vm
//! pause` sets; the controller pauses it through the launcher's API): the ring-3 test guest
//! cannot halt, so its `idle` loop spins a vCPU, and 20 spinning vCPUs on this 2-core host would measure CPU starvation rather than start-up (an idle
//! Linux guest halts). `VIREO_BENCH_SPIN=1` leaves them spinning. Memory: the `vireo launch` process's resident memory split into the guest RAM
//! mapping and the VMM's own ([`rss_split`]), and the pod's memory cgroup usage.
//!
//! Run: `cargo build --release -p vireo-launcher -p vireo-controller &&
//! cargo bench -p vireo-benches --bench k8s_node` (root; about two minutes). `VIREO_BENCH_VMS`
//! sets the number of VMs (default 20).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_benches::{median, rss_split, vireo_binary};

const NS: &str = "bench";
const IMAGE: &str = "vireo/launcher:bench";
const GUEST_MIB: u64 = 32;
const TARGET_MEDIAN_MS: f64 = 1000.0;
const TARGET_VMM_MIB: f64 = 20.0;

/// Everything the benchmark started, stopped in reverse order when dropped.
struct Node {
    root: PathBuf,
    repo: PathBuf,
    kubeconfig: PathBuf,
    controller: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let node = self.root.join("node");
        let cp = self.root.join("cp");
        let _ = Command::new("bash")
            .arg(self.repo.join("scripts/k8s-node.sh"))
            .args(["stop", "--remove", "--dir"])
            .arg(&node)
            .status();
        let _ = Command::new("bash")
            .arg(self.repo.join("scripts/k8s-control-plane.sh"))
            .args(["stop", "--remove", "--dir"])
            .arg(&cp)
            .status();
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Node {
    fn start(vireo: &Path) -> Self {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let root = tempfile::Builder::new()
            .prefix("vireo-bench-node")
            .tempdir()
            .expect("tempdir")
            .keep();
        let controller_bin = vireo.with_file_name("vireo-controller");
        assert!(
            controller_bin.exists(),
            "{} not found: cargo build --release -p vireo-controller",
            controller_bin.display()
        );
        let guest = root.join("testguest");
        vireo_testguest::write_to(&guest).expect("write guest");
        let image = root.join("launcher.tar");
        run(
            Command::new("bash")
                .arg(repo.join("scripts/launcher-image.sh"))
                .arg(&image)
                .arg("--vireo")
                .arg(vireo)
                .args(["--tag", IMAGE, "--add"])
                .arg(format!("{}:/usr/share/vireo/testguest", guest.display())),
            "launcher-image.sh",
        );
        let crds = root.join("crds.yaml");
        let yaml = run(
            Command::new(&controller_bin).arg("crd"),
            "vireo-controller crd",
        );
        std::fs::write(&crds, yaml).expect("crds");
        let pid = std::process::id().to_string();
        let kubeconfig = PathBuf::from(run(
            Command::new("bash")
                .arg(repo.join("scripts/k8s-control-plane.sh"))
                .args(["start", "--watch-pid", &pid, "--crds"])
                .arg(&crds)
                .arg("--dir")
                .arg(root.join("cp")),
            "k8s-control-plane.sh start",
        ));
        let mut node = Self {
            root: root.clone(),
            repo: repo.clone(),
            kubeconfig,
            controller: None,
        };
        run(
            Command::new("bash")
                .arg(repo.join("scripts/k8s-node.sh"))
                .args(["start", "--watch-pid", &pid, "--kubeconfig"])
                .arg(&node.kubeconfig)
                .arg("--dir")
                .arg(root.join("node"))
                .arg("--images")
                .arg(&image),
            "k8s-node.sh start",
        );
        node.kubectl(&["create", "namespace", NS]);
        let log = std::fs::File::create(root.join("controller.log")).expect("log");
        node.controller = Some(
            Command::new(&controller_bin)
                .args(["run", "--namespace", NS, "--runtime-name", NS])
                .args(["--system-namespace", NS, "--launcher-image", IMAGE])
                .env("KUBECONFIG", &node.kubeconfig)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("vireo-controller"),
        );
        let rt = root.join("runtime.json");
        std::fs::write(
            &rt,
            format!(
                r#"{{"apiVersion":"vireo.dev/v1alpha1","kind":"VMRuntime","metadata":{{"name":"{NS}"}},"spec":{{"enabled":true}}}}"#
            ),
        )
        .expect("runtime");
        node.kubectl(&["apply", "-f", rt.to_str().expect("utf-8")]);
        let deadline = Instant::now() + Duration::from_secs(120);
        while node.kubectl(&["get", "vmruntime", NS, "-o", "jsonpath={.status.ready}"]) != "true" {
            assert!(Instant::now() < deadline, "preflight did not pass");
            std::thread::sleep(Duration::from_millis(200));
        }
        node
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let kubectl = vireo_controller_bin_dir().join("kubectl");
        run(
            Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .arg("--cache-dir")
                .arg(self.root.join("kubectl-cache"))
                .args(args),
            &format!("kubectl {}", args.join(" ")),
        )
    }
}

/// `$VIREO_CACHE/k8s/bin` (default `~/.cache/vireo/k8s/bin`), where the scripts keep kubectl.
fn vireo_controller_bin_dir() -> PathBuf {
    let cache = std::env::var_os("VIREO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/vireo")
        });
    cache.join("k8s/bin")
}

/// The kubelet's log file of pod `pod`'s launcher container, once it exists.
fn log_file(pod: &str) -> Option<PathBuf> {
    let prefix = format!("{NS}_{pod}_");
    std::fs::read_dir("/var/log/pods")
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join("launcher/0.log"))
}

/// PID of the `vireo launch` process of VMI `vmi`.
fn launcher_pid(vmi: &str) -> Option<u32> {
    let tag = format!("VIREO_VMI={vmi}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        if !cmdline.starts_with(b"vireo\0launch\0") {
            return None;
        }
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        environ
            .split(|&b| b == 0)
            .any(|kv| kv == tag.as_bytes())
            .then_some(pid)
    })
}

/// The memory cgroup usage of the cgroup holding `pid` (v1 or v2), bytes.
fn cgroup_memory(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
        } else if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.current")
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(&file) {
            return v.trim().parse().ok();
        }
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("k8s_node: benchmark");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the k8s_node benchmark runs a kubelet node: run it as root"
    );
    let vireo = vireo_binary().unwrap_or_else(|e| panic!("k8s_node bench: {e}"));
    let vms: usize = std::env::var("VIREO_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let spin = std::env::var_os("VIREO_BENCH_SPIN").is_some_and(|v| v == "1");
    let node = Node::start(&vireo);

    let mut first_byte_ms = Vec::with_capacity(vms);
    for i in 0..vms {
        let name = format!("b{i}");
        let manifest = node.root.join(format!("{name}.json"));
        std::fs::write(
            &manifest,
            format!(
                r#"{{"apiVersion":"vireo.dev/v1alpha1","kind":"VirtualMachine","metadata":{{"name":"{name}","namespace":"{NS}"}},"spec":{{"runStrategy":"Always","template":{{"spec":{{"domain":{{"cpu":{{"cores":1}},"memory":{{"guest":"{GUEST_MIB}Mi"}},"firmware":{{"kernelBoot":{{"kernel":"/usr/share/vireo/testguest","cmdline":"idle"}}}},"devices":{{}}}}}}}}}}}}"#
            ),
        )
        .expect("manifest");
        let pod = format!("vireo-launcher-{name}");
        let start = Instant::now();
        node.kubectl(&["apply", "-f", manifest.to_str().expect("utf-8")]);
        let deadline = start + Duration::from_secs(60);
        loop {
            let size = log_file(&pod)
                .and_then(|f| std::fs::metadata(f).ok())
                .map_or(0, |m| m.len());
            if size > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{pod}: no guest output in 60 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        first_byte_ms.push(start.elapsed().as_secs_f64() * 1e3);
        if !spin {
            // The pause request `vireo vm pause` makes (the VMI annotation): the controller
            // pauses the VM through the launcher's API as soon as the VMI is Running.
            node.kubectl(&[
                "-n",
                NS,
                "annotate",
                "--overwrite",
                "vmi",
                &name,
                "vm.vireo.dev/pause=true",
            ]);
            // Paused before the next VM is applied, as a direct pause would be.
            let deadline = Instant::now() + Duration::from_secs(30);
            while node.kubectl(&[
                "-n",
                NS,
                "get",
                "vmi",
                &name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Paused\")].status}",
            ]) != "True"
            {
                assert!(Instant::now() < deadline, "{name}: not paused in 30 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    // Memory once all are up.
    std::thread::sleep(Duration::from_secs(2));
    let (mut rss, mut vmm, mut guest, mut pod_mem) = (vec![], vec![], vec![], vec![]);
    for i in 0..vms {
        let Some(pid) = launcher_pid(&format!("b{i}")) else {
            panic!("no vireo launch process for b{i}");
        };
        let split = rss_split(pid, GUEST_MIB << 20).expect("smaps");
        rss.push(split.total_kib as f64 / 1024.0);
        vmm.push(split.vmm_kib() as f64 / 1024.0);
        guest.push(split.guest_kib as f64 / 1024.0);
        if let Some(bytes) = cgroup_memory(pid) {
            pod_mem.push(bytes as f64 / (1024.0 * 1024.0));
        }
    }

    let in_order: Vec<String> = first_byte_ms.iter().map(|ms| format!("{ms:.0}")).collect();
    let mut sorted = first_byte_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let med = median(&mut first_byte_ms);
    let p95 = percentile(&sorted, 95.0);
    println!();
    println!(
        "kubectl apply → first serial byte in the pod's log ({vms} VMs, one after another, all left {})",
        if spin { "running (test guests spinning)" } else { "up, paused after their first byte" }
    );
    println!("| figure | median | p95 | max | target |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| apply → first byte (ms) | {med:.0} | {p95:.0} | {:.0} | ≤ {TARGET_MEDIAN_MS:.0} median |",
        sorted.last().copied().unwrap_or(f64::NAN)
    );
    println!("each, in apply order (ms): {}", in_order.join(" "));
    println!();
    println!("memory per VM ({GUEST_MIB} MiB guest, idle test guest), MiB");
    println!("| figure | median | max | target |");
    println!("|---|---:|---:|---|");
    let row = |label: &str, v: &mut Vec<f64>, target: &str| {
        let max = v.iter().copied().fold(f64::NAN, f64::max);
        println!("| {label} | {:.1} | {max:.1} | {target} |", median(v));
    };
    row(
        "VMM's own resident memory (vireo RSS − guest RAM)",
        &mut vmm,
        &format!("≤ {TARGET_VMM_MIB:.0}"),
    );
    row(
        "guest RAM resident (pages the guest touched)",
        &mut guest,
        "",
    );
    row("vireo process RSS (total)", &mut rss, "");
    if !pod_mem.is_empty() {
        row("launcher pod memory cgroup usage", &mut pod_mem, "");
    }
    drop(node);
}

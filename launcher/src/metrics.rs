//! `GET /metrics` of `vireo launch --metrics-listen ADDR` (served by [`http_endpoint`]): the
//! VM's figures in the Prometheus text format (version 0.0.4), encoded by the
//! `prometheus-client` crate.
//!
//! Every scrape reads a fresh snapshot — `vm.info` and `vm.counters` from the launch spec's
//! control API (within [`API_TIMEOUT`] for both), and the CPU time of this process's vCPU
//! threads (`vireo-vcpu<N>`) from `/proc/self/task` — and builds a fresh registry from it, so
//! nothing is kept between scrapes. Names follow KubeVirt's where it has one, `vireo_*`
//! otherwise:
//!
//! | metric | type | labels | from |
//! |---|---|---|---|
//! | `vireo_vmi_up` | gauge | | 1 if the control API answered `vm.info` |
//! | `vireo_vmi_state` | gauge | `state` | 1 for the VM's state (`created`, `running`, `paused`, `shutdown`), 0 for the others |
//! | `kubevirt_vmi_vcpu_seconds_total` | counter | `id`, `state="running"` | vCPU thread's time on a CPU |
//! | `kubevirt_vmi_memory_resident_bytes` | gauge | | the VMM process's resident set |
//! | `kubevirt_vmi_memory_domain_bytes` | gauge | | guest RAM size |
//! | `vireo_vmi_guest_resident_bytes` | gauge | | guest RAM resident in host memory |
//! | `kubevirt_vmi_storage_{iops_read,iops_write,read_traffic_bytes,write_traffic_bytes,flush_requests}_total` | counter | `drive` | virtio-blk `read_ops`, `write_ops`, `read_bytes`, `write_bytes`, `flush_ops` |
//! | `vireo_vmi_storage_errors_total` | counter | `drive`, `op` | virtio-blk `<op>_errors` |
//! | `kubevirt_vmi_network_{receive_bytes,transmit_bytes,receive_packets,transmit_packets,transmit_errors}_total` | counter | `interface` | virtio-net `rx_bytes`, `tx_bytes`, `rx_frames`, `tx_frames`, `tx_errors` |
//! | `vireo_vmi_device_malformed_requests_total`, `vireo_vmi_device_interrupts_total` | counter | `device`, `kind` | every device's `malformed`, `interrupts` |
//! | `vireo_vmi_serial_{written,delivered,dropped,backlog_discarded}_bytes_total`, `vireo_vmi_serial_clients_connected_total` | counter | | the serial console's counters |
//! | `vireo_vmi_serial_queued_bytes` | gauge | | bytes waiting for the console's sink |
//!
//! Every series also carries `name`, `namespace` and `node` ([`Identity`], from the
//! environment variables `VIREO_VMI`, `VIREO_NAMESPACE` and `VIREO_NODE`; empty if unset).
//! `drive` and `interface` are the device ids of `vm.info` (`disk0`, `disk1`, … and `net0`, …
//! in the launch spec's order of disks and NICs): the spec has no other names for them.
//!
//! When the API does not answer (the VM is not built yet, or is between the boots of a
//! reboot in place), the scrape still succeeds with `vireo_vmi_up 0` and no VM or device
//! series.
//!
//! [`http_endpoint`]: crate::http_endpoint

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use vireo_spec::api::{ApiVmState, MemoryInfo, VmCounters};

use crate::http_endpoint::Reply;
use crate::remote;

/// How long one scrape waits for the control API's answers (both requests together).
pub const API_TIMEOUT: Duration = Duration::from_secs(1);

/// The name prefix of the VMM's vCPU threads (`vireo-vcpu0`, …).
const VCPU_THREAD_PREFIX: &str = "vireo-vcpu";
/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, fixed by the kernel's ABI).
const USER_HZ: u64 = 100;

/// KubeVirt's per-drive storage counters: (name without `_total`, virtio-blk counter, help).
pub const STORAGE_COUNTERS: [(&str, &str, &str); 5] = [
    (
        "kubevirt_vmi_storage_iops_read",
        "read_ops",
        "Read requests completed by the drive",
    ),
    (
        "kubevirt_vmi_storage_iops_write",
        "write_ops",
        "Write requests completed by the drive",
    ),
    (
        "kubevirt_vmi_storage_read_traffic_bytes",
        "read_bytes",
        "Bytes read by the drive",
    ),
    (
        "kubevirt_vmi_storage_write_traffic_bytes",
        "write_bytes",
        "Bytes written by the drive",
    ),
    (
        "kubevirt_vmi_storage_flush_requests",
        "flush_ops",
        "Flush requests completed by the drive",
    ),
];

/// The `op` label of `vireo_vmi_storage_errors_total` and the virtio-blk counter it reads.
pub const STORAGE_ERRORS: [(&str, &str); 5] = [
    ("read", "read_errors"),
    ("write", "write_errors"),
    ("flush", "flush_errors"),
    ("discard", "discard_errors"),
    ("write_zeroes", "write_zeroes_errors"),
];

/// KubeVirt's per-interface network counters: (name without `_total`, virtio-net counter,
/// help).
pub const NETWORK_COUNTERS: [(&str, &str, &str); 5] = [
    (
        "kubevirt_vmi_network_receive_bytes",
        "rx_bytes",
        "Bytes received by the guest from the interface",
    ),
    (
        "kubevirt_vmi_network_transmit_bytes",
        "tx_bytes",
        "Bytes transmitted by the guest on the interface",
    ),
    (
        "kubevirt_vmi_network_receive_packets",
        "rx_frames",
        "Frames received by the guest from the interface",
    ),
    (
        "kubevirt_vmi_network_transmit_packets",
        "tx_frames",
        "Frames transmitted by the guest on the interface",
    ),
    (
        "kubevirt_vmi_network_transmit_errors",
        "tx_errors",
        "Frames the guest transmitted that the interface did not take",
    ),
];

/// The serial console's counters: (name without `_total`, `vm.counters` name, help).
pub const SERIAL_COUNTERS: [(&str, &str, &str); 5] = [
    (
        "vireo_vmi_serial_written_bytes",
        "written_bytes",
        "Bytes the guest wrote to its serial console",
    ),
    (
        "vireo_vmi_serial_delivered_bytes",
        "delivered_bytes",
        "Serial console bytes handed to the console's sink",
    ),
    (
        "vireo_vmi_serial_dropped_bytes",
        "dropped_bytes",
        "Serial console bytes lost because the sink did not keep up or failed",
    ),
    (
        "vireo_vmi_serial_backlog_discarded_bytes",
        "backlog_discarded_bytes",
        "Serial console bytes that aged out of the replay backlog with no client connected",
    ),
    (
        "vireo_vmi_serial_clients_connected",
        "clients_connected",
        "Clients that connected to the serial console's socket",
    ),
];

/// The labels every series carries: which VMI this is and where it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The VirtualMachineInstance's name (`VIREO_VMI`).
    pub name: String,
    /// Its namespace (`VIREO_NAMESPACE`).
    pub namespace: String,
    /// The node it runs on (`VIREO_NODE`).
    pub node: String,
}

impl Identity {
    /// Reads `VIREO_VMI`, `VIREO_NAMESPACE` and `VIREO_NODE` (empty strings where unset or
    /// not UTF-8).
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).unwrap_or_default();
        Self {
            name: var("VIREO_VMI"),
            namespace: var("VIREO_NAMESPACE"),
            node: var("VIREO_NODE"),
        }
    }

    fn labels(&self) -> impl Iterator<Item = (Cow<'static, str>, Cow<'static, str>)> + use<> {
        [
            ("name", &self.name),
            ("namespace", &self.namespace),
            ("node", &self.node),
        ]
        .into_iter()
        .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v.clone())))
        .collect::<Vec<_>>()
        .into_iter()
    }
}

/// The part of `vm.info` the metrics read.
#[derive(Debug, Clone, Deserialize)]
struct Info {
    state: ApiVmState,
    devices: Vec<Device>,
    memory: MemoryInfo,
}

/// One device of `vm.info`.
#[derive(Debug, Clone, Deserialize)]
struct Device {
    id: String,
    kind: String,
}

/// What one scrape read.
#[derive(Debug, Default)]
struct Snapshot {
    /// `vm.info`, if the API answered it.
    info: Option<Info>,
    /// `vm.counters` (empty if the API did not answer it).
    counters: VmCounters,
    /// Seconds on a CPU by vCPU index.
    vcpu_seconds: BTreeMap<u32, f64>,
}

impl Snapshot {
    /// Reads the API on `api_socket` and this process's vCPU threads.
    fn read(api_socket: &Path) -> Self {
        let deadline = Instant::now() + API_TIMEOUT;
        let info = get_json::<Info>(api_socket, "/api/v1/vm.info", deadline);
        let counters = match &info {
            Some(_) => get_json::<VmCounters>(api_socket, "/api/v1/vm.counters", deadline),
            None => None,
        };
        Self {
            info,
            counters: counters.unwrap_or_default(),
            vcpu_seconds: vcpu_seconds(),
        }
    }
}

/// `GET path` on the API, parsed as JSON, if it answers 2xx with that before `deadline`.
fn get_json<T: serde::de::DeserializeOwned>(
    socket: &Path,
    path: &str,
    deadline: Instant,
) -> Option<T> {
    let left = deadline.checked_duration_since(Instant::now())?;
    match remote::request_within(socket, "GET", path, "", left) {
        Ok((status, body)) if (200..300).contains(&status) => match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(%path, error = %e, "metrics: unreadable answer");
                None
            }
        },
        Ok((status, _)) => {
            tracing::debug!(%path, status, "metrics: the API refused");
            None
        }
        Err(e) => {
            tracing::debug!(%path, error = %e, "metrics: the API did not answer");
            None
        }
    }
}

/// The answer to `GET /metrics` for the VM behind `api_socket`.
pub fn scrape(api_socket: &Path, identity: &Identity) -> Reply {
    match render(identity, &Snapshot::read(api_socket)) {
        Ok(body) => Reply {
            status: "200 OK",
            content_type: prometheus_text::CONTENT_TYPE,
            body,
        },
        Err(_) => Reply::text("500 Internal Server Error", "cannot encode the metrics\n"),
    }
}

/// Labels of one series (besides the registry's [`Identity`] labels).
type Labels = Vec<(&'static str, String)>;

/// The registry one scrape fills.
struct Builder {
    registry: Registry,
}

impl Builder {
    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.registry
            .register(name, help, ConstGauge::<u64>::new(value));
    }

    /// Registers a counter family with `series` (nothing if there is none).
    fn counters(&mut self, name: &str, help: &str, series: Vec<(Labels, u64)>) {
        if series.is_empty() {
            return;
        }
        let family = Family::<Labels, Counter>::default();
        for (labels, value) in series {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
    }

    /// Registers a gauge family with `series` (nothing if there is none).
    fn gauges(&mut self, name: &str, help: &str, series: Vec<(Labels, u64)>) {
        if series.is_empty() {
            return;
        }
        let family = Family::<Labels, Gauge<u64, AtomicU64>>::default();
        for (labels, value) in series {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help, family);
    }
}

/// The role of a device in the metrics, from its `vm.info` kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A virtio-blk disk: KubeVirt's storage metrics, label `drive`.
    Drive,
    /// A virtio-net NIC: KubeVirt's network metrics, label `interface`.
    Interface,
    /// Anything else (the VNC tablet): only the per-device `vireo_*` counters.
    Other,
}

/// The role of a device of kind `kind` (`virtio-blk`, `virtio-net`, …).
pub fn role(kind: &str) -> Role {
    match kind {
        "virtio-blk" => Role::Drive,
        "virtio-net" => Role::Interface,
        _ => Role::Other,
    }
}

/// The `state` label value of an API state.
pub fn state_label(state: ApiVmState) -> &'static str {
    match state {
        ApiVmState::Created => "created",
        ApiVmState::Running => "running",
        ApiVmState::Paused => "paused",
        ApiVmState::Shutdown => "shutdown",
    }
}

/// Encodes `snap` in the Prometheus text format.
fn render(identity: &Identity, snap: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut b = Builder {
        registry: Registry::with_labels(identity.labels()),
    };
    b.gauge(
        "vireo_vmi_up",
        "1 if the VM's control API answered this scrape, 0 otherwise",
        u64::from(snap.info.is_some()),
    );
    vcpu_counter(&mut b, &snap.vcpu_seconds);
    if let Some(info) = &snap.info {
        render_vm(&mut b, info, &snap.counters);
    }
    let mut out = String::new();
    prometheus_text::encode(&mut out, &b.registry)?;
    Ok(out)
}

/// `kubevirt_vmi_vcpu_seconds_total`, a float counter.
fn vcpu_counter(b: &mut Builder, seconds: &BTreeMap<u32, f64>) {
    if seconds.is_empty() {
        return;
    }
    let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
    for (id, secs) in seconds {
        family
            .get_or_create(&vec![("id", id.to_string()), ("state", "running".into())])
            .inc_by(*secs);
    }
    b.registry.register(
        "kubevirt_vmi_vcpu_seconds",
        "Seconds the vCPU's thread ran on a host CPU",
        family,
    );
}

/// The series of a VM whose `vm.info` is `info`.
fn render_vm(b: &mut Builder, info: &Info, counters: &VmCounters) {
    let states = [
        ApiVmState::Created,
        ApiVmState::Running,
        ApiVmState::Paused,
        ApiVmState::Shutdown,
    ];
    b.gauges(
        "vireo_vmi_state",
        "1 for the state the VM is in, 0 for the others",
        states
            .into_iter()
            .map(|s| {
                (
                    vec![("state", state_label(s).to_owned())],
                    u64::from(s == info.state),
                )
            })
            .collect(),
    );
    b.gauge(
        "kubevirt_vmi_memory_resident_bytes",
        "Resident set of the VMM process, guest RAM included, in bytes",
        info.memory.process_resident_bytes,
    );
    b.gauge(
        "kubevirt_vmi_memory_domain_bytes",
        "Guest RAM size in bytes",
        info.memory.guest_bytes,
    );
    b.gauge(
        "vireo_vmi_guest_resident_bytes",
        "Guest RAM resident in host memory in bytes",
        info.memory.guest_resident_bytes,
    );

    let value = |id: &str, counter: &str| counters.get(id).and_then(|c| c.get(counter)).copied();
    let of_role = |want: Role| {
        info.devices
            .iter()
            .filter(move |d| role(&d.kind) == want)
            .map(|d| d.id.as_str())
    };
    // One family per KubeVirt counter: (label, device id) series that have the counter.
    let per_device = |want: Role, label: &'static str, counter: &str| -> Vec<(Labels, u64)> {
        of_role(want)
            .filter_map(|id| Some((vec![(label, id.to_owned())], value(id, counter)?)))
            .collect()
    };
    for (name, counter, help) in STORAGE_COUNTERS {
        b.counters(name, help, per_device(Role::Drive, "drive", counter));
    }
    b.counters(
        "vireo_vmi_storage_errors",
        "Requests the drive completed with an error, by operation",
        of_role(Role::Drive)
            .flat_map(|id| {
                STORAGE_ERRORS.into_iter().filter_map(move |(op, counter)| {
                    Some((
                        vec![("drive", id.to_owned()), ("op", op.to_owned())],
                        value(id, counter)?,
                    ))
                })
            })
            .collect(),
    );
    for (name, counter, help) in NETWORK_COUNTERS {
        b.counters(
            name,
            help,
            per_device(Role::Interface, "interface", counter),
        );
    }
    for (name, counter, help) in [
        (
            "vireo_vmi_device_malformed_requests",
            "malformed",
            "Requests the device refused as malformed",
        ),
        (
            "vireo_vmi_device_interrupts",
            "interrupts",
            "Interrupts the device sent to the guest",
        ),
    ] {
        b.counters(
            name,
            help,
            info.devices
                .iter()
                .filter_map(|d| {
                    Some((
                        vec![("device", d.id.clone()), ("kind", d.kind.clone())],
                        value(&d.id, counter)?,
                    ))
                })
                .collect(),
        );
    }
    for (name, counter, help) in SERIAL_COUNTERS {
        if let Some(v) = value("serial", counter) {
            b.counters(name, help, vec![(Vec::new(), v)]);
        }
    }
    if let Some(v) = value("serial", "queued_bytes") {
        b.gauge(
            "vireo_vmi_serial_queued_bytes",
            "Serial console bytes waiting for the console's sink",
            v,
        );
    }
}

/// Seconds on a CPU of this process's vCPU threads, by vCPU index (threads of the same index,
/// as during a reboot in place, are added up).
fn vcpu_seconds() -> BTreeMap<u32, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let Some(index) = vcpu_index(comm.trim_end()) else {
            continue;
        };
        if let Some(ns) = thread_cpu_ns(&dir) {
            *out.entry(index).or_insert(0.0) += ns as f64 / 1e9;
        }
    }
    out
}

/// The vCPU index of a thread named `comm`, if it is a vCPU thread.
pub fn vcpu_index(comm: &str) -> Option<u32> {
    comm.strip_prefix(VCPU_THREAD_PREFIX)?.parse().ok()
}

/// Nanoseconds the thread at `/proc/self/task/<tid>` ran: `schedstat`'s first field, or
/// `stat`'s utime + stime where the kernel has no schedstat.
fn thread_cpu_ns(task: &Path) -> Option<u64> {
    if let Ok(text) = std::fs::read_to_string(task.join("schedstat")) {
        if let Some(ns) = text.split_whitespace().next().and_then(|w| w.parse().ok()) {
            return Some(ns);
        }
    }
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    stat_cpu_ns(&stat)
}

/// utime + stime of a `/proc/…/stat` line, in nanoseconds.
fn stat_cpu_ns(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces; fields after it
    // start at 3 (state), so utime (14) and stime (15) are the 12th and 13th after ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime).saturating_mul(1_000_000_000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let info: Info = serde_json::from_value(serde_json::json!({
            "state": "Running",
            "devices": [
                {"id": "disk0", "kind": "virtio-blk", "bdf": "0000:00:01.0"},
                {"id": "net0", "kind": "virtio-net", "bdf": "0000:00:02.0"},
            ],
            "memory": {"guest_bytes": 67108864, "guest_resident_bytes": 4096,
                       "process_resident_bytes": 1000000},
            "config": {"ignored": true},
        }))
        .expect("vm.info");
        let counters: VmCounters = serde_json::from_value(serde_json::json!({
            "disk0": {"read_ops": 3, "read_bytes": 1536, "write_ops": 4, "write_bytes": 2048,
                      "flush_ops": 1, "read_errors": 0, "write_errors": 2, "malformed": 0,
                      "interrupts": 7},
            "net0": {"rx_frames": 5, "rx_bytes": 300, "tx_frames": 6, "tx_bytes": 360,
                     "tx_errors": 0, "malformed": 1, "interrupts": 11},
            "serial": {"written_bytes": 10, "delivered_bytes": 9, "dropped_bytes": 0,
                       "backlog_discarded_bytes": 0, "queued_bytes": 1, "clients_connected": 2},
        }))
        .expect("vm.counters");
        Snapshot {
            info: Some(info),
            counters,
            vcpu_seconds: [(0, 1.5), (1, 0.25)].into_iter().collect(),
        }
    }

    fn identity() -> Identity {
        Identity {
            name: "vm1".into(),
            namespace: "ns".into(),
            node: "n1".into(),
        }
    }

    /// The sample lines of `text`, with the identity labels taken out for brevity.
    fn samples(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                l.replace("name=\"vm1\",namespace=\"ns\",node=\"n1\",", "")
                    .replace("name=\"vm1\",namespace=\"ns\",node=\"n1\"", "")
                    .replace("{}", "")
            })
            .collect()
    }

    #[test]
    fn counters_map_to_kubevirt_names_by_device_kind() {
        let text = render(&identity(), &snapshot()).expect("render");
        let s = samples(&text);
        for want in [
            "vireo_vmi_up 1",
            "vireo_vmi_state{state=\"running\"} 1",
            "vireo_vmi_state{state=\"paused\"} 0",
            "kubevirt_vmi_vcpu_seconds_total{id=\"0\",state=\"running\"} 1.5",
            "kubevirt_vmi_vcpu_seconds_total{id=\"1\",state=\"running\"} 0.25",
            "kubevirt_vmi_memory_resident_bytes 1000000",
            "kubevirt_vmi_memory_domain_bytes 67108864",
            "vireo_vmi_guest_resident_bytes 4096",
            "kubevirt_vmi_storage_iops_read_total{drive=\"disk0\"} 3",
            "kubevirt_vmi_storage_iops_write_total{drive=\"disk0\"} 4",
            "kubevirt_vmi_storage_read_traffic_bytes_total{drive=\"disk0\"} 1536",
            "kubevirt_vmi_storage_write_traffic_bytes_total{drive=\"disk0\"} 2048",
            "kubevirt_vmi_storage_flush_requests_total{drive=\"disk0\"} 1",
            "vireo_vmi_storage_errors_total{drive=\"disk0\",op=\"write\"} 2",
            "kubevirt_vmi_network_receive_bytes_total{interface=\"net0\"} 300",
            "kubevirt_vmi_network_transmit_bytes_total{interface=\"net0\"} 360",
            "kubevirt_vmi_network_receive_packets_total{interface=\"net0\"} 5",
            "kubevirt_vmi_network_transmit_packets_total{interface=\"net0\"} 6",
            "kubevirt_vmi_network_transmit_errors_total{interface=\"net0\"} 0",
            "vireo_vmi_device_malformed_requests_total{device=\"net0\",kind=\"virtio-net\"} 1",
            "vireo_vmi_device_interrupts_total{device=\"disk0\",kind=\"virtio-blk\"} 7",
            "vireo_vmi_serial_written_bytes_total 10",
            "vireo_vmi_serial_clients_connected_total 2",
            "vireo_vmi_serial_queued_bytes 1",
        ] {
            assert!(s.iter().any(|l| l == want), "no {want:?} in\n{text}");
        }
        // No counter of a blk device under a network name, nor the other way round.
        assert!(!text.contains("interface=\"disk0\""), "{text}");
        assert!(!text.contains("drive=\"net0\""), "{text}");
        // A missing counter (discard_errors) gives no series rather than a 0.
        assert!(!text.contains("op=\"discard\""), "{text}");
        // Every sample carries the identity labels.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.contains("name=\"vm1\"")
                    && line.contains("namespace=\"ns\"")
                    && line.contains("node=\"n1\""),
                "{line}"
            );
        }
    }

    #[test]
    fn without_an_api_only_up_0_and_vcpus() {
        let snap = Snapshot {
            vcpu_seconds: [(0, 2.0)].into_iter().collect(),
            ..Snapshot::default()
        };
        let text = render(&identity(), &snap).expect("render");
        assert_eq!(
            samples(&text),
            [
                "vireo_vmi_up 0",
                "kubevirt_vmi_vcpu_seconds_total{id=\"0\",state=\"running\"} 2.0"
            ],
            "{text}"
        );
    }

    #[test]
    fn roles_states_and_thread_names() {
        assert_eq!(role("virtio-blk"), Role::Drive);
        assert_eq!(role("virtio-net"), Role::Interface);
        assert_eq!(role("virtio-input"), Role::Other);
        assert_eq!(state_label(ApiVmState::Paused), "paused");
        assert_eq!(vcpu_index("vireo-vcpu0"), Some(0));
        assert_eq!(vcpu_index("vireo-vcpu12"), Some(12));
        assert_eq!(vcpu_index("vireo-vcpu"), None);
        assert_eq!(vcpu_index("vireo-http"), None);
        assert_eq!(
            stat_cpu_ns("42 (vireo vcpu0) R 1 1 1 0 -1 0 0 0 0 0 150 50 0 0 20 0"),
            Some(2_000_000_000)
        );
        assert_eq!(stat_cpu_ns("garbage"), None);
    }
}

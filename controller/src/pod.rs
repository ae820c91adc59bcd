//! The launcher pod of a VMI: one pod, one `vireo launch` process, one VM.
//!
//! ```text
//! Pod vireo-launcher-<vmi>            (ownerReference → VMI, controller)
//!  ├─ annotation vireo.dev/launch-spec = the launch spec (vireo_spec::VmConfig) as JSON
//!  ├─ annotations prometheus.io/{scrape,port,path}: scrape port `metrics`
//!  ├─ volume spec  (downwardAPI) → /var/run/vireo/spec/spec.json  (the annotation above)
//!  ├─ volume run   (emptyDir)    → /var/run/vireo                  (api.sock, serial.sock)
//!  ├─ volume disk-<v> per volume → /var/run/vireo/disks/<v>/disk.img
//!  ├─ volume kernel-boot (emptyDir, with kernelBoot.container) → /var/run/vireo/kernel-boot/
//!  │     filled by init container kernel-boot: `cp <kernelPath> [<initrdPath>] <dir>/`
//!  ├─ /dev/kvm, /dev/net/tun (hostPath char devices), capability NET_ADMIN
//!  ├─ readiness probe: HTTP GET :8100/readyz every second, served by `vireo launch
//!  │                   --ready-listen` (Ready only while the VMM reports the VM Running)
//!  ├─ port metrics 9100: Prometheus text (`--metrics-listen`), labels from env VIREO_VMI,
//!  │                   VIREO_NAMESPACE, VIREO_NODE (downward API)
//!  ├─ pod loopback only (reached by port-forward, see `launcher_link`):
//!  │     127.0.0.1:8101 → api.sock, 127.0.0.1:8102 → serial.sock (`--forward`), VNC :5900
//!  ├─ termination message: `vireo`'s one-line ending (FallbackToLogsOnError)
//!  └─ resources: memory = guest + VMM overhead, cpu request = 100m per vCPU (no cpu limit)
//! ```
//!
//! Delivering the spec as an annotation projected by the downward API keeps pod creation to one
//! API write (no ConfigMap to create, own and garbage-collect). The launcher holds no
//! Kubernetes credentials (no service account token is mounted): the controller and `vireo vm`
//! reach it through port-forwards the apiserver authorizes.
//! This module is pure: it builds objects, it never talks to the apiserver.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm, PodAntiAffinity,
    PodSpec, Probe, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::vmi::VirtualMachineInstance;
use crate::launch_spec::{DISKS_DIR, KERNEL_BOOT_DIR, RUN_DIR, SPEC_PATH};
use crate::launcher_link::{API_PORT, SERIAL_PORT};
use vireo_spec::{SerialConfig, VmConfig};

/// The launcher container's readiness port (`vireo launch --ready-listen 0.0.0.0:PORT`).
pub const READY_PORT: i32 = 8100;
/// Name of [`READY_PORT`] in the pod spec (the readiness probe refers to it by name).
pub const READY_PORT_NAME: &str = "ready";
/// The launcher container's Prometheus port (`vireo launch --metrics-listen 0.0.0.0:PORT`).
pub const METRICS_PORT: i32 = 9100;
/// Name of [`METRICS_PORT`] in the pod spec.
pub const METRICS_PORT_NAME: &str = "metrics";

/// CPU requested per vCPU, in millicores: KubeVirt's default allocation ratio of 10 vCPUs per
/// core (a request reserves scheduling room; nothing caps a vCPU).
pub const CPU_REQUEST_MILLIS_PER_VCPU: u32 = 100;

/// Label: name of the VMI a pod runs.
pub const LABEL_VMI: &str = "vireo.dev/vmi";
/// Label: UID of the VMI a pod runs (KubeVirt's `created-by`).
pub const LABEL_VMI_UID: &str = "vireo.dev/vmi-uid";
/// Label: `launcher` or `migration-target`.
pub const LABEL_ROLE: &str = "vireo.dev/role";
/// Label: name of the migration a target pod belongs to.
pub const LABEL_MIGRATION: &str = "vireo.dev/migration";
/// Pod annotation carrying the launch spec JSON.
pub const ANNOTATION_SPEC: &str = "vireo.dev/launch-spec";
/// Node label a launcher pod must match unless emulation is allowed.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// How launcher pods are built.
#[derive(Clone, Debug)]
pub struct LauncherConfig {
    /// Container image holding the `vireo` binary.
    pub image: String,
    /// Memory the VMM itself needs beyond guest RAM, in MiB.
    pub overhead_mib: u64,
    /// Run the launcher privileged (for clusters without a device plugin for /dev/kvm).
    pub privileged: bool,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self {
            image: "ghcr.io/vireo/launcher:latest".into(),
            overhead_mib: 64,
            privileged: false,
        }
    }
}

/// Why a pod is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodRole {
    /// The VMI's own launcher.
    Launcher,
    /// The receiving side of a migration.
    MigrationTarget {
        /// Migration object name.
        migration: String,
        /// Node the VM runs on now; the target must land elsewhere.
        source_node: String,
    },
}

/// Where pods may run: `None` = any node (emulation allowed), else the nodes that passed
/// preflight.
pub type EligibleNodes = Option<Vec<String>>;

/// Name of the primary launcher pod of a VMI.
pub fn launcher_pod_name(vmi: &str) -> String {
    bounded(format!("vireo-launcher-{vmi}"))
}

/// Name of the migration target pod of a VMI.
pub fn target_pod_name(vmi: &str, migration: &str) -> String {
    bounded(format!("vireo-target-{vmi}-{migration}"))
}

fn bounded(mut s: String) -> String {
    // Pod names are DNS subdomains (≤ 253); VMI and migration names are too, so trim the tail.
    s.truncate(253);
    s.trim_end_matches(['-', '.']).to_owned()
}

/// Name of the emptyDir volume (and of the init container filling it) holding the kernel and
/// initramfs of `kernelBoot.container`.
pub const KERNEL_BOOT_VOLUME: &str = "kernel-boot";

/// Name of the container that runs `vireo launch` in a launcher pod.
pub const LAUNCHER_CONTAINER: &str = "launcher";

/// The environment variable that tells a launcher its live-migration role (`target`); the
/// launcher refuses to boot as a target until the controller drives live migration between pods.
pub const MIGRATION_ROLE_ENV: &str = "VIREO_MIGRATION_ROLE";

/// Builds the launcher pod of `vmi`. `guest_mib` is guest RAM; `spec` the rendered launch spec.
pub fn launcher_pod(
    vmi: &VirtualMachineInstance,
    spec: &VmConfig,
    cfg: &LauncherConfig,
    role: &PodRole,
    eligible: &EligibleNodes,
) -> Result<Pod, serde_json::Error> {
    let vmi_name = vmi.name_any();
    let uid = vmi.uid().unwrap_or_default();
    let (name, role_label) = match role {
        PodRole::Launcher => (launcher_pod_name(&vmi_name), "launcher"),
        PodRole::MigrationTarget { migration, .. } => {
            (target_pod_name(&vmi_name, migration), "migration-target")
        }
    };
    let mut labels = BTreeMap::from([
        (LABEL_VMI.to_owned(), vmi_name.clone()),
        (LABEL_VMI_UID.to_owned(), uid.clone()),
        (LABEL_ROLE.to_owned(), role_label.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "vireo-controller".to_owned(),
        ),
    ]);
    if let PodRole::MigrationTarget { migration, .. } = role {
        labels.insert(LABEL_MIGRATION.to_owned(), migration.clone());
    }
    let annotations = BTreeMap::from([
        (ANNOTATION_SPEC.to_owned(), serde_json::to_string(spec)?),
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), METRICS_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);

    let mut volumes = vec![
        Volume {
            name: "run".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "spec".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![downward_file("spec.json", ANNOTATION_SPEC)]),
                ..Default::default()
            }),
            ..Default::default()
        },
        host_path("kvm", "/dev/kvm", "CharDevice"),
        host_path("tun", "/dev/net/tun", "CharDevice"),
    ];
    let mut mounts = vec![
        mount("run", RUN_DIR, false),
        mount("spec", "/var/run/vireo/spec", true),
        mount("kvm", "/dev/kvm", false),
        mount("tun", "/dev/net/tun", false),
    ];
    let mut init_containers = Vec::new();
    if let Some(c) = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .and_then(|kb| kb.container.as_ref())
    {
        volumes.push(Volume {
            name: KERNEL_BOOT_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        // Like a containerDisk image, the kernel image ships a `cp`; the launch spec reads the
        // copies at their file names in KERNEL_BOOT_DIR.
        let mut command = vec!["cp".to_owned()];
        command.extend(c.kernel_path.iter().chain(&c.initrd_path).cloned());
        command.push(format!("{KERNEL_BOOT_DIR}/"));
        init_containers.push(Container {
            name: KERNEL_BOOT_VOLUME.into(),
            image: Some(c.image.clone()),
            image_pull_policy: c.image_pull_policy.clone(),
            command: Some(command),
            volume_mounts: Some(vec![mount(KERNEL_BOOT_VOLUME, KERNEL_BOOT_DIR, false)]),
            ..Default::default()
        });
        mounts.push(mount(KERNEL_BOOT_VOLUME, KERNEL_BOOT_DIR, true));
    }
    for v in &vmi.spec.volumes {
        let vol_name = bounded_volume_name(&v.name);
        let dir = format!("{DISKS_DIR}/{}", v.name);
        if let Some(cd) = &v.container_disk {
            volumes.push(Volume {
                name: vol_name.clone(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
            // The container-disk image ships its image at /disk/disk.img and a `cp`.
            init_containers.push(Container {
                name: vol_name.clone(),
                image: Some(cd.image.clone()),
                command: Some(vec![
                    "cp".into(),
                    "/disk/disk.img".into(),
                    format!("{dir}/disk.img"),
                ]),
                volume_mounts: Some(vec![mount(&vol_name, &dir, false)]),
                ..Default::default()
            });
            mounts.push(mount(&vol_name, &dir, false));
        } else if let Some(pvc) = &v.persistent_volume_claim {
            volumes.push(Volume {
                name: vol_name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc.claim_name.clone(),
                    read_only: None,
                }),
                ..Default::default()
            });
            mounts.push(mount(&vol_name, &dir, false));
        } else if let Some(e) = &v.empty_disk {
            volumes.push(Volume {
                name: vol_name.clone(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(e.capacity.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(mount(&vol_name, &dir, false));
        } else if let Some(h) = &v.host_disk {
            volumes.push(host_path(&vol_name, &h.path, "File"));
            mounts.push(mount(&vol_name, &h.path, false));
        }
    }

    let mem = Quantity(format!("{}Mi", spec.memory_mib + cfg.overhead_mib));
    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("memory".to_owned(), mem.clone()),
            // KubeVirt's default cpuAllocationRatio (10): 100m per vCPU; vCPUs are threads
            // that only use a core while the guest runs, and no limit throttles them.
            (
                "cpu".to_owned(),
                Quantity(format!(
                    "{}m",
                    u32::from(spec.vcpus) * CPU_REQUEST_MILLIS_PER_VCPU
                )),
            ),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), mem)])),
        ..Default::default()
    };
    let mut env = vec![
        EnvVar {
            name: "VIREO_VMI".into(),
            value: Some(vmi_name.clone()),
            ..Default::default()
        },
        env_from_field("VIREO_NAMESPACE", "metadata.namespace"),
        env_from_field("VIREO_NODE", "spec.nodeName"),
    ];
    let mut affinity = Affinity::default();
    let mut node_reqs = Vec::new();
    if let Some(nodes) = eligible {
        node_reqs.push(NodeSelectorRequirement {
            key: HOSTNAME_LABEL.into(),
            operator: "In".into(),
            values: Some(nodes.clone()),
        });
    }
    if let PodRole::MigrationTarget { source_node, .. } = role {
        env.push(EnvVar {
            name: MIGRATION_ROLE_ENV.into(),
            value: Some("target".into()),
            ..Default::default()
        });
        node_reqs.push(NodeSelectorRequirement {
            key: HOSTNAME_LABEL.into(),
            operator: "NotIn".into(),
            values: Some(vec![source_node.clone()]),
        });
        affinity.pod_anti_affinity = Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(LABEL_VMI_UID.to_owned(), uid.clone())])),
                    ..Default::default()
                }),
                topology_key: HOSTNAME_LABEL.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
    }
    if !node_reqs.is_empty() {
        affinity.node_affinity = Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(node_reqs),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        });
    }
    let has_affinity = affinity.node_affinity.is_some() || affinity.pod_anti_affinity.is_some();

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: vmi.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: vmi.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(30),
            automount_service_account_token: Some(false),
            node_selector: vmi.spec.node_selector.clone(),
            affinity: has_affinity.then_some(affinity),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers: vec![Container {
                name: LAUNCHER_CONTAINER.into(),
                image: Some(cfg.image.clone()),
                command: Some(launcher_command(spec)),
                ports: Some(vec![
                    container_port(READY_PORT_NAME, READY_PORT),
                    container_port(METRICS_PORT_NAME, METRICS_PORT),
                ]),
                env: Some(env),
                readiness_probe: Some(readiness_probe()),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                resources: Some(resources),
                volume_mounts: Some(mounts),
                security_context: Some(SecurityContext {
                    privileged: cfg.privileged.then_some(true),
                    capabilities: Some(Capabilities {
                        add: Some(vec!["NET_ADMIN".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    })
}

/// `vireo launch` with the pod's endpoints: readiness and metrics on the pod network, and the
/// control API and serial console forwarded from the pod's loopback (see
/// [`crate::launcher_link`]).
fn launcher_command(spec: &VmConfig) -> Vec<String> {
    let mut cmd = vec![
        "vireo".to_owned(),
        "launch".to_owned(),
        "--spec".to_owned(),
        SPEC_PATH.to_owned(),
        "--ready-listen".to_owned(),
        format!("0.0.0.0:{READY_PORT}"),
        "--metrics-listen".to_owned(),
        format!("0.0.0.0:{METRICS_PORT}"),
    ];
    if let Some(api) = &spec.api_socket {
        cmd.push("--forward".to_owned());
        cmd.push(format!("127.0.0.1:{API_PORT}={}", api.display()));
    }
    if let SerialConfig::Unix { path, .. } = &spec.serial {
        cmd.push("--forward".to_owned());
        cmd.push(format!("127.0.0.1:{SERIAL_PORT}={}", path.display()));
    }
    cmd
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The launcher's readiness probe: an HTTP GET of `/readyz` on [`READY_PORT`], which
/// `vireo launch --ready-listen` answers 200 only while the VMM reports the VM `Running` (not
/// while it is being built, paused, stopping or rebooting), every second. An HTTP probe costs
/// the kubelet one connection; an exec probe would cost a container exec per VM per second.
fn readiness_probe() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/readyz".into()),
            port: IntOrString::String(READY_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        failure_threshold: Some(1),
        success_threshold: Some(1),
        ..Default::default()
    }
}

fn bounded_volume_name(v: &str) -> String {
    // Pod volume names are DNS labels (≤ 63).
    let mut s = format!("disk-{v}");
    s.truncate(63);
    s.trim_end_matches('-').to_owned()
}

fn downward_file(path: &str, annotation: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.into(),
        field_ref: Some(ObjectFieldSelector {
            field_path: format!("metadata.annotations['{annotation}']"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn host_path(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::vmi::{
        CpuSpec, DomainSpec, Firmware, KernelBoot, MemorySpec, VirtualMachineInstanceSpec,
    };
    use crate::launch_spec::render;
    use vireo_spec::DiskFormat;

    /// The launcher pod of `vmi` with the default configuration, on any node.
    fn pod_of(vmi: &VirtualMachineInstance) -> Pod {
        let spec = render(&vmi.spec, DiskFormat::Raw, "spec").expect("render");
        launcher_pod(
            vmi,
            &spec,
            &LauncherConfig::default(),
            &PodRole::Launcher,
            &None,
        )
        .expect("pod")
    }

    fn vmi() -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new(
            "mv",
            VirtualMachineInstanceSpec {
                domain: DomainSpec {
                    cpu: CpuSpec { cores: 1 },
                    memory: MemorySpec {
                        guest: "64Mi".into(),
                    },
                    firmware: Some(Firmware {
                        kernel_boot: Some(KernelBoot {
                            kernel: Some("/k".into()),
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        vmi.metadata.uid = Some("uid-1".into());
        vmi
    }

    /// `kernelBoot.container`: an init container from the kernel image copies the kernel and
    /// initramfs into an emptyDir the launcher mounts read-only, where the launch spec reads them.
    #[test]
    fn kernel_from_an_image_is_copied_by_an_init_container() {
        use crate::crd::vmi::KernelBootContainer;
        let mut vmi = vmi();
        vmi.spec.domain.firmware = Some(Firmware {
            kernel_boot: Some(KernelBoot {
                container: Some(KernelBootContainer {
                    image: "example/kernel:6.6".into(),
                    kernel_path: Some("/boot/vmlinuz".into()),
                    initrd_path: Some("/boot/initrd.img".into()),
                    image_pull_policy: Some("IfNotPresent".into()),
                }),
                ..Default::default()
            }),
        });
        let pod = pod_of(&vmi);
        let ps = pod.spec.expect("spec");
        let vol = ps
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "kernel-boot")
            .expect("kernel-boot volume");
        assert!(vol.empty_dir.is_some());
        let init = ps.init_containers.unwrap_or_default();
        assert_eq!(init.len(), 1);
        let c = &init[0];
        assert_eq!(c.name, "kernel-boot");
        assert_eq!(c.image.as_deref(), Some("example/kernel:6.6"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.command.as_deref(),
            Some(
                &[
                    "cp".to_owned(),
                    "/boot/vmlinuz".to_owned(),
                    "/boot/initrd.img".to_owned(),
                    "/var/run/vireo/kernel-boot/".to_owned(),
                ][..]
            )
        );
        let init_mounts = c.volume_mounts.clone().unwrap_or_default();
        assert_eq!(init_mounts.len(), 1);
        assert_eq!(init_mounts[0].name, "kernel-boot");
        assert_eq!(init_mounts[0].mount_path, "/var/run/vireo/kernel-boot");
        assert_eq!(init_mounts[0].read_only, None);
        let launcher_mount = ps.containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.name == "kernel-boot")
            .expect("launcher mounts kernel-boot");
        assert_eq!(launcher_mount.mount_path, "/var/run/vireo/kernel-boot");
        assert_eq!(launcher_mount.read_only, Some(true));
        // The launch spec in the pod points at the copies.
        let json = pod
            .metadata
            .annotations
            .unwrap_or_default()
            .remove(ANNOTATION_SPEC)
            .expect("spec annotation");
        let read = VmConfig::from_json(&json).expect("launcher parses it");
        assert_eq!(
            read.payload.kernel,
            std::path::Path::new("/var/run/vireo/kernel-boot/vmlinuz")
        );
        assert_eq!(
            read.payload.initramfs.as_deref(),
            Some(std::path::Path::new(
                "/var/run/vireo/kernel-boot/initrd.img"
            ))
        );

        // Kernel only, default pull policy: one source, no policy.
        if let Some(c) = vmi
            .spec
            .domain
            .firmware
            .as_mut()
            .and_then(|f| f.kernel_boot.as_mut())
            .and_then(|k| k.container.as_mut())
        {
            c.initrd_path = None;
            c.image_pull_policy = None;
        }
        let pod = pod_of(&vmi);
        let init = pod.spec.expect("spec").init_containers.unwrap_or_default();
        assert_eq!(init[0].image_pull_policy, None);
        assert_eq!(
            init[0].command.as_deref().map(<[String]>::len),
            Some(3),
            "{:?}",
            init[0].command
        );
    }

    /// A pod-path kernel needs no init container or extra volume.
    #[test]
    fn pod_path_kernel_adds_nothing() {
        let vmi = vmi();
        let pod = pod_of(&vmi);
        let ps = pod.spec.expect("spec");
        assert!(ps.init_containers.is_none());
        assert!(ps
            .volumes
            .unwrap_or_default()
            .iter()
            .all(|v| v.name != KERNEL_BOOT_VOLUME));
    }

    /// The pod declares readiness and metrics on the pod network, forwards the control API and
    /// console from its loopback only, mounts no token, and renders VNC only when asked.
    #[test]
    fn endpoints_metrics_labels_and_vnc() {
        let mut vmi = vmi();
        let spec = render(&vmi.spec, DiskFormat::Raw, "spec").expect("render");
        assert!(spec.vnc.is_none(), "no display unless asked for");
        let pod = launcher_pod(
            &vmi,
            &spec,
            &LauncherConfig::default(),
            &PodRole::Launcher,
            &None,
        )
        .expect("pod");
        let ps = pod.spec.expect("spec");
        assert_eq!(ps.automount_service_account_token, Some(false));
        let c = &ps.containers[0];
        let cmd = c.command.clone().unwrap_or_default().join(" ");
        assert!(cmd.contains("--ready-listen 0.0.0.0:8100"), "{cmd}");
        assert!(cmd.contains("--metrics-listen 0.0.0.0:9100"), "{cmd}");
        assert!(
            cmd.contains("--forward 127.0.0.1:8101=/var/run/vireo/api.sock"),
            "{cmd}"
        );
        assert!(
            cmd.contains("--forward 127.0.0.1:8102=/var/run/vireo/serial.sock"),
            "{cmd}"
        );
        let ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [("ready".to_owned(), 8100), ("metrics".to_owned(), 9100)]
        );
        let env: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["VIREO_VMI", "VIREO_NAMESPACE", "VIREO_NODE"]);
        let annotations = pod.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get("prometheus.io/port").map(String::as_str),
            Some("9100")
        );

        vmi.spec.domain.devices.autoattach_graphics_device = Some(true);
        let spec = render(&vmi.spec, DiskFormat::Raw, "spec").expect("render");
        let vnc = spec.vnc.expect("a display");
        assert_eq!(vnc.listen.to_string(), "127.0.0.1:5900");
        assert!(vnc.password_file.is_none());
        vmi.spec.domain.devices.autoattach_serial_console = Some(false);
        let pod = pod_of(&vmi);
        let cmd = pod.spec.expect("spec").containers[0]
            .command
            .clone()
            .unwrap_or_default()
            .join(" ");
        assert!(!cmd.contains("serial.sock"), "no console to forward: {cmd}");
    }

    /// A migration target pod (kept for when live migration exists) carries the role the
    /// launcher refuses today, and may never land on the source node or beside the source pod.
    #[test]
    fn target_pod_has_the_role_and_avoids_the_source() {
        let vmi = vmi();
        let spec = render(&vmi.spec, DiskFormat::Raw, "spec").expect("render");
        let role = PodRole::MigrationTarget {
            migration: "m1".into(),
            source_node: "node-a".into(),
        };
        let pod = launcher_pod(&vmi, &spec, &LauncherConfig::default(), &role, &None).expect("pod");
        let ps = pod.spec.expect("spec");
        let env = ps.containers[0].env.clone().unwrap_or_default();
        assert!(env
            .iter()
            .any(|e| e.name == MIGRATION_ROLE_ENV && e.value.as_deref() == Some("target")));
        let aff = ps.affinity.expect("affinity");
        let anti = aff
            .pod_anti_affinity
            .and_then(|a| a.required_during_scheduling_ignored_during_execution)
            .expect("anti-affinity");
        assert_eq!(anti[0].topology_key, HOSTNAME_LABEL);
        let labels = anti[0]
            .label_selector
            .as_ref()
            .and_then(|l| l.match_labels.clone());
        assert_eq!(
            labels
                .and_then(|m| m.get(LABEL_VMI_UID).cloned())
                .as_deref(),
            Some("uid-1")
        );
        let reqs = aff
            .node_affinity
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .expect("node affinity")
            .node_selector_terms[0]
            .match_expressions
            .clone()
            .unwrap_or_default();
        assert!(reqs
            .iter()
            .any(|r| r.operator == "NotIn"
                && r.values.as_deref() == Some(&["node-a".to_owned()][..])));
        // The primary launcher has no role.
        let pod = launcher_pod(
            &vmi,
            &spec,
            &LauncherConfig::default(),
            &PodRole::Launcher,
            &None,
        )
        .expect("pod");
        let env = pod.spec.expect("spec").containers[0]
            .env
            .clone()
            .unwrap_or_default();
        assert!(env.iter().all(|e| e.name != MIGRATION_ROLE_ENV));
    }
}

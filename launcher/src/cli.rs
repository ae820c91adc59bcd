//! Command-line flags, parsed with clap into a [`VmConfig`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use vireo_spec::{DirtyLogMode, MemoryBacking, VncConfig, VncListen};
use vireo_vmm::{DiskConfig, NetConfig, PayloadConfig, SerialConfig, VmConfig};

use crate::exit_code;

/// Vireo: a lean KVM virtual machine monitor.
#[derive(Debug, Parser)]
#[command(name = "vireo", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a VM from command-line flags and run it until it stops.
    Run(RunArgs),
    /// Boot a VM from a JSON launch spec (as the Kubernetes controller renders it).
    Launch(LaunchArgs),
    /// Manage VirtualMachines on Kubernetes (start, stop, restart, pause, unpause):
    /// runs `vireo-controller vm …`.
    #[command(disable_help_flag = true)]
    Vm(VmArgs),
    /// Talk to a running vireo's control API (as Cloud Hypervisor's ch-remote does): prints
    /// the JSON answer, or the error's reason and a non-zero status.
    Remote(RemoteArgs),
    /// Readiness check (a Kubernetes exec probe): exit 0 iff the VM behind the control API
    /// socket is Running; otherwise exit 1 with one line on stderr saying why. Gives up after
    /// 1 s without an answer.
    Probe(ProbeArgs),
    /// Restore a VM from a snapshot directory (`vireo remote snapshot`) and run it until it
    /// stops.
    Restore(RestoreArgs),
    /// Receive a VM by live migration (`vireo remote … send-migration URL` on the source)
    /// and run it until it stops.
    Receive(ReceiveArgs),
    /// Prove this node can run VMs: open the KVM device, boot the built-in test guest and
    /// print `kvm=1 run=ok cpu=… ms=…` (exit 0) or `kvm=0 run=fail reason=…` (exit 1).
    Preflight(PreflightArgs),
}

/// Flags of `vireo preflight`.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// Give up (and fail) if the test guest has not exited after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

/// Flags of `vireo receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Where to wait for the source: unix:/path, tcp:host:port or tls:host:port.
    #[arg(long, value_name = "URL")]
    pub listen: String,
    /// For tls: URLs, a directory with ca.pem, cert.pem and key.pem (this node's identity and
    /// the CA both nodes' certificates are signed by).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Refuse a VM whose memory is not this size (e.g. 512M, 2G).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_mib)]
    pub expect_memory: Option<u64>,
    /// Refuse a VM without this many vCPUs.
    #[arg(long, value_name = "N")]
    pub expect_cpus: Option<u8>,
    /// Host-side overrides and start state, as for `vireo restore`.
    #[command(flatten)]
    pub host: HostArgs,
}

/// Host-side flags shared by `vireo restore` and `vireo receive`: what differs on this host.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Serve the control API on this unix socket (the source's socket is not reused).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Serial console instead of the VM's: stdio, file=PATH, unix=PATH[,stdout], or off.
    #[arg(long, value_name = "MODE", value_parser = parse_serial)]
    pub serial: Option<SerialConfig>,
    /// A disk image at another path on this host: `ID=PATH` with ID `disk0`, `disk1`, …
    /// (repeatable). Its size must be the saved disk's.
    #[arg(long = "disk", value_name = "ID=PATH", value_parser = parse_override)]
    pub disks: Vec<(String, String)>,
    /// Another tap for a NIC: `ID=TAP` with ID `net0`, … (repeatable). The guest keeps its MAC.
    #[arg(long = "net", value_name = "ID=TAP", value_parser = parse_override)]
    pub nets: Vec<(String, String)>,
    /// Where the VM's VNC console listens here, instead of the address it had (`HOST:PORT`,
    /// `:PORT`, `PORT` or `unix:PATH`): a VM moved on the same host needs another address than
    /// its source, which holds its own until the switch.
    #[arg(long, value_name = "ADDR", value_parser = parse_vnc_listen)]
    pub vnc: Option<VncListen>,
    /// Leave the VM paused (resume it with `vireo remote … resume`).
    #[arg(long)]
    pub paused: bool,
    /// As for `vireo run`.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub shutdown_timeout: u64,
}

/// Flags of `vireo restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot directory.
    #[arg(long, value_name = "DIR")]
    pub source: PathBuf,
    /// Read all of guest memory before starting instead of mapping the snapshot's memory file
    /// and reading each page on first touch.
    #[arg(long)]
    pub prefault: bool,
    /// Host-side overrides and start state.
    #[command(flatten)]
    pub host: HostArgs,
}

/// Parses `ID=VALUE` of `vireo restore --disk` / `--net`.
pub fn parse_override(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((id, v)) if !id.is_empty() && !v.is_empty() => Ok((id.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not ID=VALUE")),
    }
}

/// Arguments of `vireo probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The control API socket (`--api-socket` of `vireo run`, `api_socket` of the spec).
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
}

/// Arguments of `vireo remote`.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The control API socket (`--api-socket` of `vireo run`, `api_socket` of the spec).
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// The action.
    #[command(subcommand)]
    pub action: RemoteAction,
}

/// `vireo remote` actions, one per control API endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum RemoteAction {
    /// GET /api/v1/vmm.ping: the VMM's version and pid.
    Ping,
    /// GET /api/v1/vm.info: state, config, devices, memory.
    Info,
    /// GET /api/v1/vm.counters: device and console counters.
    Counters,
    /// PUT /api/v1/vm.pause.
    Pause,
    /// PUT /api/v1/vm.resume.
    Resume,
    /// PUT /api/v1/vm.power-button: ask the guest to power off (ACPI).
    PowerButton,
    /// PUT /api/v1/vm.shutdown: stop the VM at once (vireo exits with status 8).
    Shutdown,
    /// PUT /api/v1/vmm.shutdown: stop the VM if it runs and end the vireo process.
    ShutdownVmm,
    /// PUT /api/v1/vm.snapshot: save the VM to DIR (a running VM is paused meanwhile);
    /// prints what was written.
    Snapshot {
        /// The snapshot directory (created if missing).
        dir: PathBuf,
    },
    /// PUT /api/v1/vm.restore: restore DIR into a vireo started with `--api-socket` alone.
    Restore {
        /// The snapshot directory.
        dir: PathBuf,
        /// Read all of guest memory before starting.
        #[arg(long)]
        prefault: bool,
        /// Resume the VM once restored (otherwise it stays paused, as in Cloud Hypervisor).
        #[arg(long)]
        resume: bool,
    },
    /// PUT /api/v1/vm.send-migration: migrate the VM live to URL (unix:/path, tcp:host:port,
    /// tls:host:port); answers when done with the final progress (the source vireo then
    /// exits with status 10).
    SendMigration {
        /// Where the target listens.
        url: String,
        /// The pause the guest may see, in ms.
        #[arg(long, value_name = "MS", default_value_t = 300)]
        downtime_ms: u64,
        /// Give up (or force, see --timeout-strategy) after this many seconds; 0: never.
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        timeout: u64,
        /// At the timeout: cancel (the VM runs on here) or force (switch over now).
        #[arg(long, value_name = "WHAT", default_value = "cancel", value_parser = parse_spec_word::<vireo_spec::api::TimeoutStrategy>)]
        timeout_strategy: vireo_spec::api::TimeoutStrategy,
        /// Cap on bytes per second sent (0: none).
        #[arg(long, value_name = "BYTES", default_value_t = 0)]
        max_bandwidth: u64,
        /// Do not throttle the vCPUs when passes stop shrinking.
        #[arg(long)]
        no_auto_converge: bool,
        /// Hand guest memory over by file descriptor (target on this host, unix: URL, VM
        /// started with --memory-backing memfd).
        #[arg(long)]
        local: bool,
        /// For tls: URLs, a directory with ca.pem, cert.pem and key.pem.
        #[arg(long, value_name = "DIR")]
        tls_dir: Option<PathBuf>,
    },
    /// GET /api/v1/vm.migration: the current or last migration's progress.
    Migration,
    /// PUT /api/v1/vm.cancel-migration: stop the running migration (the VM runs on here).
    CancelMigration,
    /// PUT /api/v1/vm.receive-migration: make a vireo started with `--api-socket` alone wait
    /// at URL for a VM; answers once the VM runs here.
    ReceiveMigration {
        /// Where to listen.
        url: String,
        /// For tls: URLs, a directory with ca.pem, cert.pem and key.pem.
        #[arg(long, value_name = "DIR")]
        tls_dir: Option<PathBuf>,
    },
}

impl RemoteAction {
    /// The HTTP method and path of this action.
    pub fn endpoint(&self) -> (&'static str, &'static str) {
        match self {
            RemoteAction::Ping => ("GET", "/api/v1/vmm.ping"),
            RemoteAction::Info => ("GET", "/api/v1/vm.info"),
            RemoteAction::Counters => ("GET", "/api/v1/vm.counters"),
            RemoteAction::Pause => ("PUT", "/api/v1/vm.pause"),
            RemoteAction::Resume => ("PUT", "/api/v1/vm.resume"),
            RemoteAction::PowerButton => ("PUT", "/api/v1/vm.power-button"),
            RemoteAction::Shutdown => ("PUT", "/api/v1/vm.shutdown"),
            RemoteAction::ShutdownVmm => ("PUT", "/api/v1/vmm.shutdown"),
            RemoteAction::Snapshot { .. } => ("PUT", "/api/v1/vm.snapshot"),
            RemoteAction::Restore { .. } => ("PUT", "/api/v1/vm.restore"),
            RemoteAction::SendMigration { .. } => ("PUT", "/api/v1/vm.send-migration"),
            RemoteAction::Migration => ("GET", "/api/v1/vm.migration"),
            RemoteAction::CancelMigration => ("PUT", "/api/v1/vm.cancel-migration"),
            RemoteAction::ReceiveMigration { .. } => ("PUT", "/api/v1/vm.receive-migration"),
        }
    }

    /// The JSON body of this action (empty for actions without arguments). Relative
    /// directories are made absolute against the current directory.
    pub fn body(&self) -> Result<String> {
        let url = |dir: &PathBuf| -> Result<String> {
            let abs = std::path::absolute(dir)?;
            let text = abs
                .to_str()
                .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", abs.display()))?;
            Ok(format!("file://{text}"))
        };
        Ok(match self {
            RemoteAction::Snapshot { dir } => {
                serde_json::to_string(&vireo_spec::api::VmSnapshotConfig {
                    destination_url: url(dir)?,
                })?
            }
            RemoteAction::Restore {
                dir,
                prefault,
                resume,
            } => serde_json::to_string(&vireo_spec::api::RestoreConfig {
                source_url: url(dir)?,
                prefault: *prefault,
                resume: *resume,
            })?,
            RemoteAction::SendMigration {
                url,
                downtime_ms,
                timeout,
                timeout_strategy,
                max_bandwidth,
                no_auto_converge,
                local,
                tls_dir,
            } => serde_json::to_string(&vireo_spec::api::SendMigrationConfig {
                destination_url: url.clone(),
                downtime_ms: *downtime_ms,
                timeout_s: *timeout,
                timeout_strategy: *timeout_strategy,
                max_bandwidth: *max_bandwidth,
                auto_converge: !*no_auto_converge,
                local: *local,
                tls_dir: tls_dir.as_ref().map(std::path::absolute).transpose()?,
            })?,
            RemoteAction::ReceiveMigration { url, tls_dir } => {
                serde_json::to_string(&vireo_spec::api::ReceiveMigrationConfig {
                    receiver_url: url.clone(),
                    tls_dir: tls_dir.as_ref().map(std::path::absolute).transpose()?,
                })?
            }
            _ => String::new(),
        })
    }
}

/// Arguments of `vireo vm`, passed through to `vireo-controller vm`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Everything after `vm`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}

/// Flags of `vireo run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel to boot: bzImage, ELF vmlinux, or a Vireo user-mode ELF. Without it (and with
    /// `--api-socket`), vireo waits for `PUT /api/v1/vm.restore` (`vireo remote … restore`).
    #[arg(long, value_name = "PATH", required_unless_present = "api_socket")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u8,
    /// Guest memory: a number of MiB, or a size with a K, M, G or T suffix (e.g. 512M, 2G).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_memory_mib)]
    pub memory: u64,
    /// Serial console: stdio, file=PATH, unix=PATH, unix=PATH,stdout (the socket plus a copy
    /// of the output on stdout), or off.
    #[arg(long, value_name = "MODE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialConfig,
    /// A virtio-blk disk: `path=P[,format=raw|qcow2][,readonly=on]` (repeatable; the guest
    /// sees them as vda, vdb, … in this order). The format is probed from the image's magic
    /// when absent.
    #[arg(long = "disk", value_name = "SPEC", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net interface on a tap: `tap=NAME[,mac=MAC]` (repeatable). The tap is opened,
    /// or created if it does not exist (which needs CAP_NET_ADMIN); without `mac` a random
    /// locally administered address is used.
    #[arg(long = "net", value_name = "SPEC", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
    /// On SIGTERM, seconds to wait for the guest to power off after the ACPI
    /// power-button press before stopping it forcibly.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Serve the control API (HTTP/1.1 + JSON, Cloud Hypervisor's `/api/v1/…` paths) on this
    /// unix socket; see `vireo remote`.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// What backs guest RAM: `anonymous`, or `memfd` (a live migration to a `vireo` on this
    /// host can then hand memory over instead of copying it: `send-migration --local`).
    #[arg(long, value_name = "KIND", default_value = "anonymous", value_parser = parse_spec_word::<MemoryBacking>)]
    pub memory_backing: MemoryBacking,
    /// Dirty-page tracking for live migration: `auto` (the KVM dirty ring where the host
    /// offers it), `ring` or `bitmap`.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_spec_word::<DirtyLogMode>)]
    pub dirty_log: DirtyLogMode,
    /// A VNC console (framebuffer, PS/2 keyboard, virtio-input tablet) served at `HOST:PORT`,
    /// `:PORT` or `PORT` (127.0.0.1 unless a host is given; port 0 picks one, shown by
    /// `vm.info`), or `unix:PATH`. bzImage guests see the framebuffer through `screen_info`.
    #[arg(long, value_name = "ADDR", value_parser = parse_vnc_listen)]
    pub vnc: Option<VncListen>,
    /// Screen size of the VNC console, `WIDTHxHEIGHT` (default 1024x768).
    #[arg(long, value_name = "WxH", requires = "vnc", value_parser = parse_screen_size)]
    pub vnc_size: Option<(u32, u32)>,
    /// A file whose first line is the VNC password (VNC authentication; without it viewers
    /// need no password). The password is never taken on the command line, where `ps` shows it.
    #[arg(long, value_name = "PATH", requires = "vnc")]
    pub vnc_password_file: Option<PathBuf>,
}

/// Parses `--vnc`.
fn parse_vnc_listen(s: &str) -> Result<VncListen, String> {
    s.parse()
        .map_err(|e: vireo_spec::VncListenError| e.to_string())
}

/// Parses `WIDTHxHEIGHT`.
pub fn parse_screen_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("'{s}' is not a screen size (expected e.g. 1024x768)");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

impl RunArgs {
    /// The VNC console these flags ask for.
    fn vnc_config(&self) -> Option<VncConfig> {
        let mut vnc = VncConfig::new(self.vnc.clone()?);
        if let Some((w, h)) = self.vnc_size {
            (vnc.width, vnc.height) = (w, h);
        }
        vnc.password_file = self.vnc_password_file.clone();
        Some(vnc)
    }
}

/// Parses one word of the launch spec's JSON spelling (`memfd`, `ring`, …).
fn parse_spec_word<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| e.to_string())
}

/// Flags of `vireo launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Path of the JSON launch spec.
    #[arg(long, value_name = "FILE")]
    pub spec: PathBuf,
    /// As for `vireo run`.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Serve `GET /readyz` on this TCP address (200 while the VM runs, 503 otherwise) for the
    /// kubelet's readiness probe; needs the spec's `api_socket`.
    #[arg(long, value_name = "HOST:PORT")]
    pub ready_listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`: vCPU time, memory, disk, NIC and console
    /// counters, KubeVirt's names where it has them) on this TCP address; needs the spec's
    /// `api_socket`. This listener and `--ready-listen`'s answer both paths.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Relay connections to the TCP address LISTEN to the unix socket UNIX_PATH (an absolute
    /// path), e.g. `127.0.0.1:8101=/var/run/vireo/api.sock` (repeatable): Kubernetes
    /// port-forwards only to TCP ports. A connection made while the socket does not exist is
    /// closed.
    #[arg(long = "forward", value_name = "LISTEN=UNIX_PATH")]
    pub forwards: Vec<crate::forward::Forward>,
}

/// What `vireo run` was asked to do.
#[derive(Debug)]
pub enum RunPlan {
    /// Boot the VM these flags describe.
    Boot(Box<VmConfig>),
    /// Serve the API on this socket and wait for a `vm.restore`.
    AwaitRestore(PathBuf),
}

impl RunArgs {
    /// What these flags ask for, with the SIGTERM shutdown timeout.
    pub fn into_plan(self) -> Result<(RunPlan, u64)> {
        let timeout = self.shutdown_timeout;
        let vnc = self.vnc_config();
        let Some(kernel) = self.kernel else {
            if self.initramfs.is_some()
                || !self.cmdline.is_empty()
                || !self.disks.is_empty()
                || !self.nets.is_empty()
                || vnc.is_some()
            {
                anyhow::bail!(
                    "--initramfs, --cmdline, --disk, --net and --vnc need --kernel (a VM restored through \
                     the API takes them from its snapshot)"
                );
            }
            let socket = self
                .api_socket
                .ok_or_else(|| anyhow::anyhow!("--kernel is required without --api-socket"))?;
            return Ok((RunPlan::AwaitRestore(socket), timeout));
        };
        Ok((
            RunPlan::Boot(Box::new(VmConfig {
                version: vireo_vmm::config::SPEC_VERSION,
                vcpus: self.cpus,
                memory_mib: self.memory,
                payload: PayloadConfig {
                    kernel,
                    initramfs: self.initramfs,
                    cmdline: self.cmdline,
                },
                serial: self.serial,
                disks: self.disks,
                nets: self.nets,
                api_socket: self.api_socket,
                memory_backing: self.memory_backing,
                dirty_log: self.dirty_log,
                vnc,
            })),
            timeout,
        ))
    }
}

/// Parses a memory size into MiB: `512` (MiB), `512M`, `512MiB`, `2G`, `4096K`, `1T`.
pub fn parse_memory_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (expected e.g. 512M or 2G)"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let kib: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" | "M" => 1024,
        "K" => 1,
        "G" => 1024 * 1024,
        "T" => 1024 * 1024 * 1024,
        _ => return Err(format!("unknown size unit in '{s}' (use K, M, G or T)")),
    };
    let total_kib = n
        .checked_mul(kib)
        .ok_or_else(|| format!("size '{s}' is too large"))?;
    if total_kib % 1024 != 0 {
        return Err(format!("size '{s}' is not a whole number of MiB"));
    }
    Ok(total_kib / 1024)
}

/// Parses `--serial`: `stdio`, `off`, `file=PATH`, `unix=PATH` or `unix=PATH,stdout` (the
/// socket, and a copy of the output on stdout; a socket path that itself ends in `,stdout`
/// cannot be given here, only in a launch spec).
pub fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    let nonempty = |p: &str| {
        if p.is_empty() {
            Err(format!("'{s}' needs a path after '='"))
        } else {
            Ok(PathBuf::from(p))
        }
    };
    match s.split_once('=') {
        None if s == "stdio" => Ok(SerialConfig::Stdio),
        None if s == "off" || s == "none" => Ok(SerialConfig::Off),
        Some(("file", p)) => Ok(SerialConfig::File { path: nonempty(p)? }),
        Some(("unix", p)) => {
            let (p, stdout) = match p.strip_suffix(",stdout") {
                Some(p) => (p, true),
                None => (p, false),
            };
            Ok(SerialConfig::Unix {
                path: nonempty(p)?,
                stdout,
            })
        }
        _ => Err(format!(
            "unknown serial form '{s}' (expected stdio, file=PATH, unix=PATH[,stdout] or off)"
        )),
    }
}

/// Splits `key=value,key=value` into pairs, refusing empty parts, missing `=`, keys outside
/// `allowed` and repeated keys.
fn parse_kv<'a>(
    s: &'a str,
    allowed: &[&str],
    what: &str,
) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{what} option '{part}' is not key=value"))?;
        if !allowed.contains(&k) {
            return Err(format!(
                "unknown {what} option '{k}' (expected {})",
                allowed.join(", ")
            ));
        }
        if pairs.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("{what} option '{k}' is given twice"));
        }
        if v.is_empty() {
            return Err(format!("{what} option '{k}' needs a value"));
        }
        pairs.push((k, v));
    }
    Ok(pairs)
}

fn parse_on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("'{key}={v}' must be on or off")),
    }
}

/// Parses `--disk path=P[,format=raw|qcow2][,readonly=on|off]`.
pub fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut disk = DiskConfig {
        path: PathBuf::new(),
        format: None,
        readonly: false,
    };
    for (k, v) in parse_kv(s, &["path", "format", "readonly"], "--disk")? {
        match k {
            "path" => disk.path = PathBuf::from(v),
            "format" => disk.format = Some(v.parse().map_err(|e| format!("{e}"))?),
            _ => disk.readonly = parse_on_off(k, v)?,
        }
    }
    if disk.path.as_os_str().is_empty() {
        return Err(format!("--disk '{s}' needs path=FILE"));
    }
    Ok(disk)
}

/// Parses `--net tap=NAME[,mac=MAC]`.
pub fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut net = NetConfig {
        tap: String::new(),
        mac: None,
    };
    for (k, v) in parse_kv(s, &["tap", "mac"], "--net")? {
        match k {
            "tap" => net.tap = v.to_owned(),
            _ => net.mac = Some(v.parse().map_err(|e| format!("{e}"))?),
        }
    }
    if net.tap.is_empty() {
        return Err(format!("--net '{s}' needs tap=NAME"));
    }
    Ok(net)
}

/// Prints a clap error as one line (help and version print normally) and
/// returns the usage exit code.
pub fn report_usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return exit_code::code(vireo_spec::ExitStatus::Usage);
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    crate::logging::error_line(&format!("vireo: {first} (see vireo --help)"));
    exit_code::code(vireo_spec::ExitStatus::Usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("512"), Ok(512));
        assert_eq!(parse_memory_mib("512M"), Ok(512));
        assert_eq!(parse_memory_mib("512MiB"), Ok(512));
        assert_eq!(parse_memory_mib("2G"), Ok(2048));
        assert_eq!(parse_memory_mib("2gb"), Ok(2048));
        assert_eq!(parse_memory_mib("4096K"), Ok(4));
        assert_eq!(parse_memory_mib("0"), Ok(0));
        assert!(parse_memory_mib("1K").is_err());
        assert!(parse_memory_mib("lots").is_err());
        assert!(parse_memory_mib("5X").is_err());
        assert!(parse_memory_mib("99999999999999999999T").is_err());
    }

    #[test]
    fn serial_forms() {
        assert_eq!(parse_serial("stdio"), Ok(SerialConfig::Stdio));
        assert_eq!(parse_serial("off"), Ok(SerialConfig::Off));
        assert_eq!(
            parse_serial("unix=/tmp/s"),
            Ok(SerialConfig::Unix {
                path: "/tmp/s".into(),
                stdout: false,
            })
        );
        assert_eq!(
            parse_serial("unix=/tmp/s,stdout"),
            Ok(SerialConfig::Unix {
                path: "/tmp/s".into(),
                stdout: true,
            })
        );
        assert_eq!(
            parse_serial("file=out.log"),
            Ok(SerialConfig::File {
                path: "out.log".into()
            })
        );
        for bad in ["tcp=1", "unix=", "unix=,stdout", "file", "pty", ""] {
            assert!(parse_serial(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_and_net_forms() {
        assert_eq!(
            parse_disk("path=/a.img"),
            Ok(DiskConfig {
                path: "/a.img".into(),
                format: None,
                readonly: false
            })
        );
        assert_eq!(
            parse_disk("format=qcow2,path=b.qcow2,readonly=on"),
            Ok(DiskConfig {
                path: "b.qcow2".into(),
                format: Some(vireo_vmm::DiskFormat::Qcow2),
                readonly: true
            })
        );
        for bad in [
            "",
            "/a.img",
            "path=",
            "path=a,format=vmdk",
            "path=a,readonly=maybe",
            "path=a,path=b",
            "path=a,cache=none",
            "format=raw",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_net("tap=vt0,mac=52:54:00:12:34:56"),
            Ok(NetConfig {
                tap: "vt0".into(),
                mac: Some("52:54:00:12:34:56".parse().expect("a valid MAC"))
            })
        );
        for bad in [
            "",
            "vt0",
            "tap=",
            "mac=52:54:00:12:34:56",
            "tap=a,model=e1000",
            "tap=a,mac=ff:ff:ff:ff:ff:ff",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }
}

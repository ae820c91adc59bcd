//! Command-line flags, parsed with clap into a [`VmConfig`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
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
}

impl RemoteAction {
    /// The HTTP method and path of this action.
    pub fn endpoint(self) -> (&'static str, &'static str) {
        match self {
            RemoteAction::Ping => ("GET", "/api/v1/vmm.ping"),
            RemoteAction::Info => ("GET", "/api/v1/vm.info"),
            RemoteAction::Counters => ("GET", "/api/v1/vm.counters"),
            RemoteAction::Pause => ("PUT", "/api/v1/vm.pause"),
            RemoteAction::Resume => ("PUT", "/api/v1/vm.resume"),
            RemoteAction::PowerButton => ("PUT", "/api/v1/vm.power-button"),
            RemoteAction::Shutdown => ("PUT", "/api/v1/vm.shutdown"),
            RemoteAction::ShutdownVmm => ("PUT", "/api/v1/vmm.shutdown"),
        }
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
    /// Kernel to boot: bzImage, ELF vmlinux, or a Vireo user-mode ELF.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
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
    /// Serial console: stdio, file=PATH, unix=PATH, or off.
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
}

impl RunArgs {
    /// The launch spec these flags describe.
    pub fn into_config(self) -> Result<(VmConfig, u64)> {
        let timeout = self.shutdown_timeout;
        Ok((
            VmConfig {
                version: vireo_vmm::config::SPEC_VERSION,
                vcpus: self.cpus,
                memory_mib: self.memory,
                payload: PayloadConfig {
                    kernel: self.kernel,
                    initramfs: self.initramfs,
                    cmdline: self.cmdline,
                },
                serial: self.serial,
                disks: self.disks,
                nets: self.nets,
                api_socket: self.api_socket,
            },
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

/// Parses `--serial`: `stdio`, `off`, `file=PATH` or `unix=PATH`.
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
        Some(("unix", p)) => Ok(SerialConfig::Unix { path: nonempty(p)? }),
        _ => Err(format!(
            "unknown serial form '{s}' (expected stdio, file=PATH, unix=PATH or off)"
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
                path: "/tmp/s".into()
            })
        );
        assert_eq!(
            parse_serial("file=out.log"),
            Ok(SerialConfig::File {
                path: "out.log".into()
            })
        );
        for bad in ["tcp=1", "unix=", "file", "pty", ""] {
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

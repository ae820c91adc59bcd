//! Bad input to `vireo`: each case is a one-line error naming the problem,
//! a non-zero exit status, and no panic.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;

/// Asserts a clean failure: status `code`, one error line containing `needle`.
fn assert_clean_error(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("vireo:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line: {err}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {err}");
}

#[test]
fn missing_kernel_file() {
    let fx = Fixture::create();
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(fx.path("nope.elf"));
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "cannot read kernel");
    assert!(stderr(&out).contains("No such file"), "{}", stderr(&out));
}

#[test]
fn file_that_is_not_a_kernel() {
    let fx = Fixture::create();
    let junk = fx.path("junk.bin");
    std::fs::write(&junk, b"#!/bin/sh\necho this is not a kernel\n").expect("write");
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(&junk);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "is not a loadable kernel");
}

#[test]
fn truncated_guest_elf() {
    let fx = Fixture::create();
    let bad = fx.path("truncated.elf");
    std::fs::write(&bad, &vireo_testguest::ELF[..200]).expect("write");
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(&bad);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn zero_memory() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--memory", "0"]);
    assert_clean_error(&out, 1, "guest memory of 0 MiB is too small");
}

#[test]
fn memory_larger_than_the_host() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--memory", "64T"]);
    assert_clean_error(&out, 1, "exceeds this host's");
}

#[test]
fn malformed_memory_size() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--memory", "lots"]);
    assert_clean_error(&out, 2, "'lots' is not a size");
}

#[test]
fn zero_cpus() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--cpus", "0"]);
    assert_clean_error(&out, 1, "at least 1 vCPU");
}

#[test]
fn unknown_serial_form() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--serial", "tcp=127.0.0.1:4444"]);
    assert_clean_error(&out, 2, "unknown serial form 'tcp=127.0.0.1:4444'");
}

#[test]
fn unknown_flag() {
    let fx = Fixture::create();
    let out = run_guest(&fx, &["--frobnicate"]);
    assert_clean_error(&out, 2, "--frobnicate");
}

#[test]
fn no_access_to_dev_kvm() {
    // Run as an unprivileged user: /dev/kvm is root-only on this host.
    let fx = Fixture::create();
    fx.open_up();
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let bin = bin_dir.path().join("vireo");
    std::fs::copy(env!("CARGO_BIN_EXE_vireo"), &bin).expect("copy binary");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test drops privileges with setpriv and needs root"
    );
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["run", "--kernel"])
        .arg(&fx.guest);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "permission denied opening /dev/kvm");
}

/// A cgroup v1 `devices` child denying `c 10:232` (/dev/kvm), removed on drop.
struct KvmDeniedCgroup(std::path::PathBuf);

impl KvmDeniedCgroup {
    /// The cgroup, or `None` when this host has no writable cgroup v1 devices controller
    /// (cgroup v2 needs a BPF device program instead).
    fn create() -> Option<Self> {
        let root = std::path::Path::new("/sys/fs/cgroup/devices");
        if !root.join("devices.deny").exists() {
            return None;
        }
        let dir = root.join(format!("vireo-test-kvm-denied-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let cgroup = Self(dir);
        std::fs::write(cgroup.0.join("devices.deny"), "c 10:232 rwm").ok()?;
        Some(cgroup)
    }
}

impl Drop for KvmDeniedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn dev_kvm_refused_by_a_device_cgroup() {
    // The error a container gets, even as root, when its device cgroup does not allow
    // c 10:232 rwm: EPERM, not EACCES.
    // No silent skip: the CI host (root, cgroup v1 with a devices controller) runs it.
    let cgroup = KvmDeniedCgroup::create().expect(
        "this test needs root and a writable cgroup v1 devices controller \
         (/sys/fs/cgroup/devices), which the CI host has",
    );
    let fx = Fixture::create();
    let procs = std::ffi::CString::new(
        cgroup
            .0
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("path");
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(&fx.guest);
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only makes async-signal-safe calls (open, write, close) on memory
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // In cgroup v1, writing 0 moves the writing process.
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n == 1 {
                Ok(())
            } else {
                Err(err)
            }
        });
    }
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(
        &out,
        1,
        "/dev/kvm exists but this process may not open it (EPERM): a container's device \
         cgroup must allow c 10:232 rwm",
    );
}

#[test]
fn launch_spec_with_unknown_field() {
    let fx = Fixture::create();
    let spec = fx.path("spec.json");
    std::fs::write(
        &spec,
        format!(
            r#"{{"vcpus":1,"memory_mib":32,"payload":{{"kernel":"{}"}},"nics":[]}}"#,
            fx.guest.display()
        ),
    )
    .expect("write");
    let mut cmd = vireo();
    cmd.arg("launch").arg("--spec").arg(&spec);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "unknown field `nics`");
}

/// The test guest with its Vireo note renamed: an ordinary x86_64 ELF with no
/// PVH note, so `vireo` treats it as a Linux `vmlinux`.
fn plain_elf(fx: &Fixture, entry: Option<u64>) -> std::path::PathBuf {
    let mut elf = vireo_testguest::ELF.to_vec();
    let pos = elf
        .windows(6)
        .position(|w| w == b"Vireo\0")
        .expect("note name");
    elf[pos] = b'X';
    if let Some(e) = entry {
        elf[24..32].copy_from_slice(&e.to_le_bytes());
    }
    let path = fx.path("vmlinux");
    std::fs::write(&path, elf).expect("write");
    path
}

#[test]
fn truncated_bzimage() {
    let fx = Fixture::create();
    // A bzImage header (boot protocol 2.15) whose syssize describes 1 MiB of
    // kernel, in a file cut short after 8 KiB.
    let mut img = vec![0u8; 8192];
    img[0x1f1] = 4; // setup_sects
    img[0x1f4..0x1f8].copy_from_slice(&(0x10_0000u32 / 16).to_le_bytes());
    img[0x1fe] = 0x55;
    img[0x1ff] = 0xaa;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    let path = fx.path("bzImage");
    std::fs::write(&path, img).expect("write");
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(&path);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "invalid bzImage: truncated");
}

#[test]
fn elf_without_pvh_note_or_64bit_entry() {
    let fx = Fixture::create();
    let path = plain_elf(&fx, Some(0x10));
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"]).arg(&path);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "no PVH note and no 64-bit entry point");
}

#[test]
fn initramfs_larger_than_guest_memory_allows() {
    let fx = Fixture::create();
    let kernel = plain_elf(&fx, None);
    let initrd = fx.path("initrd.img");
    let f = std::fs::File::create(&initrd).expect("create");
    f.set_len(64 << 20).expect("sparse 64 MiB");
    let mut cmd = vireo();
    cmd.args(["run", "--memory", "32M", "--kernel"])
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initrd);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(&out, 1, "bytes of guest memory are free for it");
}

#[test]
fn command_line_longer_than_the_protocol_allows() {
    let fx = Fixture::create();
    let kernel = plain_elf(&fx, None);
    let long = "console=ttyS0 ".repeat(200);
    let mut cmd = vireo();
    cmd.args(["run", "--kernel"])
        .arg(&kernel)
        .arg("--cmdline")
        .arg(&long);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_clean_error(
        &out,
        1,
        "command line is 2800 bytes; at most 2047 are allowed",
    );
}

#[test]
fn bad_disk_and_net_flags_are_usage_errors() {
    let fx = Fixture::create();
    for (args, needle) in [
        (&["--disk", "disk.img"][..], "is not key=value"),
        (&["--disk", "path=a,format=vmdk"][..], "unknown disk format"),
        (
            &["--disk", "path=a,readonly=maybe"][..],
            "must be on or off",
        ),
        (
            &["--disk", "path=a,cache=none"][..],
            "unknown --disk option 'cache'",
        ),
        (&["--net", "mac=52:54:00:12:34:56"][..], "needs tap=NAME"),
        (&["--net", "tap=vt0,mac=01:00:5e:00:00:01"][..], "multicast"),
    ] {
        let out = run_guest(&fx, args);
        assert_clean_error(&out, 2, needle);
    }
}

#[test]
fn unusable_disks_and_nics_are_refused_before_boot() {
    let fx = Fixture::create();
    let raw = fx.path("d.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).expect("write disk");
    let raw_arg = format!("path={}", raw.display());
    let missing = format!("path={}", fx.path("missing.img").display());
    let as_qcow2 = format!("{raw_arg},format=qcow2");
    let junk_qcow2 = fx.path("junk.qcow2");
    // The qcow2 magic and version 3, then nothing: a truncated header.
    std::fs::write(&junk_qcow2, [b'Q', b'F', b'I', 0xfb, 0, 0, 0, 3]).expect("write");
    let junk_arg = format!("path={}", junk_qcow2.display());
    for (args, needle) in [
        (vec!["--disk", missing.as_str()], "No such file"),
        (vec!["--disk", as_qcow2.as_str()], "not a qcow2 image"),
        (vec!["--disk", junk_arg.as_str()], "disk 0"),
        (
            vec!["--disk", raw_arg.as_str(), "--disk", raw_arg.as_str()],
            "already attached as disk 0",
        ),
        (vec!["--net", "tap=bad/name"], "invalid tap name"),
        (
            vec!["--net", "tap=vt0", "--net", "tap=vt0"],
            "already used by interface 0",
        ),
    ] {
        let mut all = vec!["--cmdline", "hello"];
        all.extend(args);
        let out = run_guest(&fx, &all);
        assert_clean_error(&out, 1, needle);
    }
    assert_eq!(
        std::fs::read(&raw).expect("read disk"),
        vec![0u8; 1 << 20],
        "a refused VM must not touch the image"
    );
}

//! The target side: checks every frame against the protocol's order and the VM it describes,
//! builds the VM when the config arrives, fills guest memory, and starts the guest only once
//! everything arrived and applied.
//!
//! ```text
//!  Hello ─► Accept      Config ─► KVM VM + memory (or the source's memfd) ─► Ready
//!  Memory* ─► pages (inside guest RAM, whole pages)     State ─► decoded, checked
//!  Complete ─► devices, vCPUs, state ─► start paused ─► Ready ─► resume
//!  anything else, Abandon, EOF, timeout ─► error; the half-built VM is dropped
//! ```
//! A failure is sent back to the source as an Error frame (best effort) and returned; no
//! guest instruction has run by then.

use std::io::{BufReader, Write};
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress};

use super::protocol::{self, ConfigFrame, Frame, FrameReader, VERSIONS};
use super::transport::Conn;
use super::MigrationError;
use crate::builder;
use crate::config::probe_host_limits;
use crate::kvm::KvmContext;
use crate::memory;
use crate::snapshot::{self, format, memory_file, Prepared, RestoreOptions, VmSnapshot};
use crate::vm::{Vm, VmError};

/// How to receive: host-side overrides and what the target expects of the VM.
#[derive(Debug, Default)]
pub struct ReceiveOptions {
    /// Host-side overrides, as for a restore: serial console, disk paths, taps, the API
    /// socket this process serves, a serial writer; `paused` leaves the received VM paused.
    /// (`memory` does not apply: memory arrives over the connection.)
    pub host: RestoreOptions,
    /// Refuse a VM whose memory is not this many MiB.
    pub expect_memory_mib: Option<u64>,
    /// Refuse a VM without this many vCPUs.
    pub expect_vcpus: Option<u8>,
}

/// What the target has built so far.
struct Building {
    vm: Prepared,
    /// The source hands its taps over with the state.
    hand_over_taps: bool,
    /// The guest's TSC rate at the source, kHz.
    tsc_khz: Option<u32>,
}

/// Receives one migration on `conn` and returns the started VM (running, or paused if the
/// source's was or `opts.host.paused`). On any error the source is told why (best effort) and
/// nothing runs.
pub fn receive(conn: Conn, mut opts: ReceiveOptions) -> Result<Vm, MigrationError> {
    let mut reader = FrameReader::new(BufReader::with_capacity(
        (protocol::MAX_MEMORY_DATA + 64) as usize,
        conn,
    ));
    let result = receive_on(&mut reader, &mut opts);
    if let Err(e) = &result {
        if !matches!(
            e,
            MigrationError::Abandoned(_) | MigrationError::Protocol(_)
        ) {
            let conn = reader.get_mut().get_mut();
            let _ = protocol::write_frame(conn, &Frame::Error(e.to_string()));
            let _ = conn.flush();
        }
        tracing::warn!(error = %e, "incoming migration failed; no guest ran");
    }
    result
}

fn answer(reader: &mut FrameReader<BufReader<Conn>>, f: &Frame) -> Result<(), MigrationError> {
    let conn = reader.get_mut().get_mut();
    protocol::write_frame(conn, f)
        .and_then(|()| conn.flush())
        .map_err(|e| MigrationError::Protocol(e.into()))
}

/// What a valid frame asks the target to do next.
#[derive(Debug)]
pub enum Step {
    /// Answer `Accept` with this version.
    Accept(protocol::Version),
    /// Build the VM this config describes, then answer `Ready`.
    Build(Box<ConfigFrame>),
    /// Write these pages (checked to lie inside one RAM region) into guest memory.
    Pages {
        /// Guest physical address.
        gpa: u64,
        /// Whole pages.
        data: Vec<u8>,
    },
    /// The state arrived (decoded and checked against the config); keep it.
    State,
    /// Apply the state and start the guest (running if `resume`), then answer `Ready`.
    Complete {
        /// The decoded state.
        state: Box<VmSnapshot>,
        /// Whether the guest ran at the source.
        resume: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Hello,
    Config,
    MemoryOrState,
    Complete,
    Done,
}

/// The receiver's protocol checks, without any KVM: frame order, the config, pages inside
/// guest RAM, the state against the config. [`receive`] acts on its [`Step`]s; the fuzz target
/// drives it with arbitrary streams.
#[derive(Debug)]
pub struct Session {
    expect: Expect,
    layout: Vec<crate::snapshot::RegionEntry>,
    vcpus: u8,
    local: bool,
    state: Option<VmSnapshot>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A session waiting for `Hello`.
    pub fn new() -> Self {
        Self {
            expect: Expect::Hello,
            layout: Vec::new(),
            vcpus: 0,
            local: false,
            state: None,
        }
    }

    /// Checks `frame` against where the session is and says what to do.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Step, MigrationError> {
        match (self.expect, frame) {
            (_, Frame::Abandon(why)) => Err(MigrationError::Abandoned(why)),
            (Expect::Hello, Frame::Hello { versions, vireo }) => {
                let v = protocol::negotiate(VERSIONS, versions)?;
                tracing::info!(source_vireo = %vireo, version = %v, "incoming migration");
                self.expect = Expect::Config;
                Ok(Step::Accept(v))
            }
            (Expect::Config, Frame::Config(c)) => {
                c.config.validate().map_err(|e| {
                    MigrationError::Mismatch(format!("the VM config is invalid: {e}"))
                })?;
                if c.memory != memory_file::layout(c.config.memory_bytes()) {
                    return Err(MigrationError::Mismatch(
                        "the memory regions do not match the config's memory size".into(),
                    ));
                }
                self.layout = c.memory.clone();
                self.vcpus = c.config.vcpus;
                self.local = c.local;
                self.expect = Expect::MemoryOrState;
                Ok(Step::Build(c))
            }
            (Expect::MemoryOrState, Frame::Memory { gpa, data }) if !self.local => {
                let end = gpa.checked_add(data.len() as u64);
                let inside = self
                    .layout
                    .iter()
                    .any(|r| gpa >= r.guest_addr && end.is_some_and(|e| e <= r.guest_addr + r.len));
                if !inside {
                    return Err(MigrationError::Mismatch(format!(
                        "{} bytes at {gpa:#x} are outside guest memory",
                        data.len()
                    )));
                }
                Ok(Step::Pages { gpa, data })
            }
            (Expect::MemoryOrState, Frame::State(bytes)) => {
                let (_, s): (_, VmSnapshot) = format::decode(&bytes).map_err(|e| {
                    MigrationError::Mismatch(format!("the VM state is unusable: {e}"))
                })?;
                if s.memory != self.layout {
                    return Err(MigrationError::Mismatch(
                        "the state's memory layout differs from the config's".into(),
                    ));
                }
                if s.vcpus.len() != usize::from(self.vcpus) {
                    return Err(MigrationError::Mismatch(format!(
                        "the config has {} vCPUs, the state {}",
                        self.vcpus,
                        s.vcpus.len()
                    )));
                }
                if let Some((i, v)) = (0u8..).zip(&s.vcpus).find(|(i, v)| v.index != *i) {
                    return Err(MigrationError::Mismatch(format!(
                        "vCPU record {i} is for vCPU {}",
                        v.index
                    )));
                }
                self.state = Some(s);
                self.expect = Expect::Complete;
                Ok(Step::State)
            }
            (Expect::Complete, Frame::Complete { resume }) => {
                let state = self.state.take().ok_or(MigrationError::OutOfOrder {
                    expected: "State",
                    got: "Complete",
                })?;
                self.expect = Expect::Done;
                Ok(Step::Complete {
                    state: Box::new(state),
                    resume,
                })
            }
            (expect, other) => Err(MigrationError::OutOfOrder {
                expected: match expect {
                    Expect::Hello => "Hello",
                    Expect::Config => "Config",
                    Expect::MemoryOrState if self.local => "State",
                    Expect::MemoryOrState => "Memory or State",
                    Expect::Complete => "Complete",
                    Expect::Done => "nothing",
                },
                got: protocol::frame_name(&other),
            }),
        }
    }
}

fn receive_on(
    reader: &mut FrameReader<BufReader<Conn>>,
    opts: &mut ReceiveOptions,
) -> Result<Vm, MigrationError> {
    let started = Instant::now();
    let mut session = Session::new();
    let mut built: Option<Building> = None;
    let mut pages = 0u64;
    loop {
        let frame = reader.read_frame()?;
        match session.on_frame(frame)? {
            Step::Accept(v) => answer(reader, &Frame::Accept(v))?,
            Step::Build(frame) => {
                let fds = reader.get_mut().get_mut().take_fds();
                built = Some(build(*frame, fds, opts)?);
                answer(reader, &Frame::Ready)?;
                tracing::info!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "migration target: VM built"
                );
            }
            Step::Pages { gpa, data } => {
                let b = built.as_ref().ok_or(MigrationError::OutOfOrder {
                    expected: "Config",
                    got: "Memory",
                })?;
                b.vm.memory
                    .write_slice(&data, GuestAddress(gpa))
                    .map_err(|_| {
                        MigrationError::Mismatch(format!(
                            "{} bytes at {gpa:#x} are outside guest memory",
                            data.len()
                        ))
                    })?;
                pages += data.len() as u64 / protocol::PAGE;
            }
            Step::State => {}
            Step::Complete { state, resume } => {
                let b = built.take().ok_or(MigrationError::OutOfOrder {
                    expected: "Config",
                    got: "Complete",
                })?;
                let paused = opts.host.paused || !resume;
                let fds = reader.get_mut().get_mut().take_fds();
                let taps = handed_taps(&b, fds, opts)?;
                let source_tsc = b.tsc_khz;
                let vm = snapshot::apply_state(
                    b.vm,
                    &state,
                    opts.host.serial_writer.take(),
                    true,
                    taps,
                )?;
                if let (Some(src), Some(here)) = (source_tsc, vm.tsc_khz()) {
                    if !protocol::tsc_compatible(src, here) {
                        return Err(MigrationError::Mismatch(format!(
                            "the guest's TSC ran at {src} kHz at the source and would run at \
                             {here} kHz here; this host's KVM cannot scale the TSC"
                        )));
                    }
                }
                vm.start()?;
                answer(reader, &Frame::Ready)?;
                if !paused {
                    vm.resume()?;
                }
                tracing::info!(
                    pages,
                    paused,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "migration received; the guest runs here"
                );
                return Ok(vm);
            }
        }
    }
}

/// The taps the source handed over with the state, one per NIC in order; `None` for a NIC
/// given another tap on this side (`--net net0=TAP`), which is opened by name.
fn handed_taps(
    b: &Building,
    fds: Vec<std::os::fd::OwnedFd>,
    opts: &ReceiveOptions,
) -> Result<Vec<Option<vireo_net::Tap>>, MigrationError> {
    if !b.hand_over_taps {
        return Ok(Vec::new());
    }
    if fds.len() != b.vm.config.nets.len() {
        return Err(MigrationError::Mismatch(format!(
            "the source handed over {} taps for {} NICs",
            fds.len(),
            b.vm.config.nets.len()
        )));
    }
    fds.into_iter()
        .enumerate()
        .map(|(i, fd)| {
            let id = crate::device_manager::SpecDevice::Net.id(i);
            if opts.host.nets.iter().any(|(n, _)| *n == id) {
                return Ok(None);
            }
            vireo_net::Tap::from_fd(fd)
                .map(Some)
                .map_err(|e| MigrationError::Mismatch(format!("{id}: the handed-over tap: {e}")))
        })
        .collect()
}

/// Checks the config against this host and the expectations, then builds the KVM VM and its
/// memory (mapped from the source's memfd for a local handover).
fn build(
    frame: ConfigFrame,
    fds: Vec<std::os::fd::OwnedFd>,
    opts: &ReceiveOptions,
) -> Result<Building, MigrationError> {
    let mut config = frame.config.clone();
    snapshot::apply_overrides(&mut config, &opts.host)?;
    if let Some(mib) = opts.expect_memory_mib.filter(|m| *m != config.memory_mib) {
        return Err(MigrationError::Mismatch(format!(
            "the source's VM has {} MiB of memory, this target expects {mib} MiB",
            config.memory_mib
        )));
    }
    if let Some(n) = opts.expect_vcpus.filter(|n| *n != config.vcpus) {
        return Err(MigrationError::Mismatch(format!(
            "the source's VM has {} vCPUs, this target expects {n}",
            config.vcpus
        )));
    }
    let kvm = KvmContext::open().map_err(VmError::from)?;
    config
        .validate_on(&probe_host_limits(kvm.max_vcpus()))
        .map_err(VmError::from)?;
    let memory = if frame.local {
        let fd = fds.into_iter().next().ok_or_else(|| {
            MigrationError::Mismatch("a local handover came without its memory fd".into())
        })?;
        memory::map_shared(std::fs::File::from(fd), config.memory_bytes()).map_err(VmError::from)?
    } else {
        memory::create_backed(config.memory_bytes(), config.memory_backing)
            .map_err(VmError::from)?
    };
    let platform = builder::create_platform(&kvm, &memory, builder::dirty_log_mode(&config))?;
    Ok(Building {
        vm: Prepared {
            kvm,
            platform,
            memory,
            config,
        },
        hand_over_taps: frame.hand_over_taps,
        tsc_khz: frame.tsc_khz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::PlatformFlags;
    use crate::config::VmConfig;
    use protocol::Version;

    fn hello() -> Frame {
        Frame::Hello {
            versions: VERSIONS,
            vireo: "0.1.0".into(),
        }
    }

    fn config(mib: u64, vcpus: u8) -> Frame {
        let mut c = VmConfig::new("/k");
        c.memory_mib = mib;
        c.vcpus = vcpus;
        Frame::Config(Box::new(ConfigFrame {
            memory: memory_file::layout(c.memory_bytes()),
            config: c,
            flags: PlatformFlags {
                debug_exit: true,
                acpi: false,
            },
            local: false,
            hand_over_taps: false,
            tsc_khz: None,
        }))
    }

    fn ready_session() -> Session {
        let mut s = Session::new();
        assert!(matches!(s.on_frame(hello()), Ok(Step::Accept(_))));
        assert!(matches!(s.on_frame(config(64, 1)), Ok(Step::Build(_))));
        s
    }

    #[test]
    fn frames_out_of_order_are_refused_by_name() {
        let mut s = Session::new();
        let e = s
            .on_frame(Frame::Memory {
                gpa: 0,
                data: vec![0; 4096],
            })
            .expect_err("memory first");
        assert_eq!(
            e.to_string(),
            "migration frame Memory where Hello was expected"
        );
        let mut s = Session::new();
        s.on_frame(hello()).expect("hello");
        let e = s
            .on_frame(Frame::Complete { resume: true })
            .expect_err("early");
        assert_eq!(
            e.to_string(),
            "migration frame Complete where Config was expected"
        );
        let mut s = ready_session();
        let e = s
            .on_frame(Frame::Complete { resume: true })
            .expect_err("no state");
        assert_eq!(
            e.to_string(),
            "migration frame Complete where Memory or State was expected"
        );
        let e = ready_session()
            .on_frame(Frame::Abandon("cancelled".into()))
            .expect_err("abandon");
        assert_eq!(
            e.to_string(),
            "the source abandoned the migration: cancelled"
        );
    }

    #[test]
    fn another_major_version_is_refused_naming_both() {
        let v = |major, minor| Version { major, minor };
        let e = Session::new()
            .on_frame(Frame::Hello {
                versions: (v(2, 0), v(2, 3)),
                vireo: "9.0.0".into(),
            })
            .expect_err("version");
        assert!(e.to_string().contains("the peer 2.0 to 2.3"), "{e}");
    }

    #[test]
    fn pages_outside_guest_memory_and_bad_configs_are_refused() {
        let mut s = ready_session();
        s.on_frame(Frame::Memory {
            gpa: (64 << 20) - 4096,
            data: vec![1; 4096],
        })
        .expect("the last page");
        for gpa in [64 << 20, (64 << 20) - 4096, u64::MAX - 4095] {
            let e = s
                .on_frame(Frame::Memory {
                    gpa,
                    data: vec![1; 8192],
                })
                .expect_err("outside");
            assert!(e.to_string().contains("outside guest memory"), "{e}");
        }
        let mut s = Session::new();
        s.on_frame(hello()).expect("hello");
        let e = s.on_frame(config(0, 1)).expect_err("no memory");
        assert!(e.to_string().starts_with("the VM config is invalid"), "{e}");
        let mut s = Session::new();
        s.on_frame(hello()).expect("hello");
        let Frame::Config(mut c) = config(64, 1) else {
            unreachable!()
        };
        c.memory[0].len = 4096;
        let e = s.on_frame(Frame::Config(c)).expect_err("layout");
        assert!(e.to_string().contains("memory regions do not match"), "{e}");
    }

    #[test]
    fn a_state_that_is_corrupt_or_does_not_match_the_config_is_refused() {
        let e = ready_session()
            .on_frame(Frame::State(vec![0; 100]))
            .expect_err("garbage");
        assert!(e.to_string().starts_with("the VM state is unusable"), "{e}");
        // A well-formed state for 2 vCPUs against a 1-vCPU config.
        let state = VmSnapshot {
            flags: PlatformFlags {
                debug_exit: true,
                acpi: false,
            },
            memory: memory_file::layout(64 << 20),
            vm: Default::default(),
            vcpus: Vec::new(),
            devices: Vec::new(),
        };
        let bytes = format::encode(&state).expect("encode");
        let e = ready_session()
            .on_frame(Frame::State(bytes))
            .expect_err("vcpus");
        assert_eq!(e.to_string(), "the config has 1 vCPUs, the state 0");
        let mut other = state;
        other.memory = memory_file::layout(128 << 20);
        let e = ready_session()
            .on_frame(Frame::State(format::encode(&other).expect("encode")))
            .expect_err("layout");
        assert!(e.to_string().contains("memory layout differs"), "{e}");
    }
}

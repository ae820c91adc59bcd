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
use crate::builder::{self, Platform};
use crate::config::probe_host_limits;
use crate::kvm::KvmContext;
use crate::memory::{self, GuestMemory};
use crate::snapshot::{self, format, memory_file, RestoreOptions, VmSnapshot};
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
    kvm: KvmContext,
    platform: Platform,
    memory: GuestMemory,
    config: crate::config::VmConfig,
    frame: ConfigFrame,
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

fn out_of_order(expected: &'static str, got: &Frame) -> MigrationError {
    match got {
        Frame::Abandon(why) => MigrationError::Abandoned(why.clone()),
        other => MigrationError::OutOfOrder {
            expected,
            got: protocol::frame_name(other),
        },
    }
}

fn receive_on(
    reader: &mut FrameReader<BufReader<Conn>>,
    opts: &mut ReceiveOptions,
) -> Result<Vm, MigrationError> {
    let started = Instant::now();
    match reader.read_frame()? {
        Frame::Hello { versions, vireo } => {
            let v = protocol::negotiate(VERSIONS, versions)?;
            tracing::info!(source_vireo = %vireo, version = %v, "incoming migration");
            answer(reader, &Frame::Accept(v))?;
        }
        other => return Err(out_of_order("Hello", &other)),
    }
    let frame = match reader.read_frame()? {
        Frame::Config(c) => *c,
        other => return Err(out_of_order("Config", &other)),
    };
    let fds = reader.get_mut().get_mut().take_fds();
    let b = build(frame, fds, opts)?;
    answer(reader, &Frame::Ready)?;
    tracing::info!(
        elapsed_us = started.elapsed().as_micros() as u64,
        "migration target: VM built"
    );

    let mut state: Option<VmSnapshot> = None;
    let mut pages = 0u64;
    loop {
        match reader.read_frame()? {
            Frame::Memory { gpa, data } if state.is_none() && !b.frame.local => {
                b.memory
                    .write_slice(&data, GuestAddress(gpa))
                    .map_err(|_| {
                        MigrationError::Mismatch(format!(
                            "{} bytes at {gpa:#x} are outside guest memory",
                            data.len()
                        ))
                    })?;
                pages += data.len() as u64 / protocol::PAGE;
            }
            Frame::State(bytes) if state.is_none() => {
                let (_, s): (_, VmSnapshot) = format::decode(&bytes).map_err(|e| {
                    MigrationError::Mismatch(format!("the VM state is unusable: {e}"))
                })?;
                if s.memory != b.frame.memory {
                    return Err(MigrationError::Mismatch(
                        "the state's memory layout differs from the config's".into(),
                    ));
                }
                state = Some(s);
            }
            Frame::Complete { resume } => {
                let Some(state) = state.take() else {
                    return Err(MigrationError::OutOfOrder {
                        expected: "State",
                        got: "Complete",
                    });
                };
                let paused = opts.host.paused || !resume;
                let vm = snapshot::apply_state(
                    b.kvm,
                    b.platform,
                    b.memory,
                    b.config,
                    &state,
                    opts.host.serial_writer.take(),
                    true,
                )?;
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
            other => {
                let expected = if state.is_some() {
                    "Complete"
                } else {
                    "Memory, State"
                };
                return Err(out_of_order(expected, &other));
            }
        }
    }
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
    if frame.memory != memory_file::layout(config.memory_bytes()) {
        return Err(MigrationError::Mismatch(
            "the memory regions do not match the config's memory size".into(),
        ));
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
    let platform = builder::create_platform(&kvm, &memory, config.dirty_log)?;
    Ok(Building {
        kvm,
        platform,
        memory,
        config,
        frame,
    })
}

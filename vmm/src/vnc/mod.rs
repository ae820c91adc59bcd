//! The VNC console of a VM: its framebuffer slot, the refresher that copies what the guest
//! drew into the [`Display`] shadow, and the RFB server viewers connect to.
//!
//! ```text
//!  guest ──writes──► framebuffer slot (KVM dirty log)
//!                        │ refresher thread, every 33 ms: KVM_GET_DIRTY_LOG → Display::refresh
//!                        ▼
//!                     Display ◄── RfbServer (one reader + one writer thread per viewer)
//!                                     │ keys, pointer
//!                                     ▼
//!                                  VmInput → i8042 (IRQ 1) · virtio-input tablet
//! ```
//! No vCPU ever waits for a viewer: the refresher only reads the dirty log and guest memory,
//! and viewers read the shadow. An idle guest costs one ioctl per refresh.

pub mod framebuffer;
pub mod input;

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::VmFd;
use tracing::{info, warn};
use vireo_devices::display::persist::DisplayState;
use vireo_devices::display::{Display, Geometry, InputSink};
use vireo_devices::rfb::{RfbConfig, RfbListener, RfbServer};
use vireo_devices::PersistError;
use vireo_spec::{VncConfig, VncListen};

pub use framebuffer::Framebuffer;
pub use input::VmInput;

/// How often the refresher looks at the framebuffer's dirty log (QEMU refreshes its VGA
/// memory every 30 ms by default).
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(33);

/// Why the VNC console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    /// The screen size cannot be served.
    #[error("vnc: {0}")]
    Geometry(String),
    /// The framebuffer could not be mapped.
    #[error("vnc: cannot map the framebuffer: {0}")]
    Memory(String),
    /// KVM refused the framebuffer's memory slot.
    #[error("vnc: cannot register the framebuffer with KVM: {0}")]
    Slot(#[source] kvm_ioctls::Error),
    /// KVM's dirty log of the framebuffer could not be read.
    #[error("vnc: cannot read the framebuffer's dirty log: {0}")]
    DirtyLog(#[source] kvm_ioctls::Error),
    /// The listen address could not be bound.
    #[error("vnc: cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The password file could not be read or holds no password.
    #[error("vnc: password file {path}: {reason}")]
    Password {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A thread could not be started.
    #[error("vnc: cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Reads the VNC password: the first line of `path`, of which VNC authentication uses the
/// first 8 bytes. An empty password is refused.
pub fn read_password(path: &Path) -> Result<Vec<u8>, VncError> {
    let err = |reason: String| VncError::Password {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = first.strip_suffix(b"\r").unwrap_or(first).to_vec();
    if line.is_empty() {
        return Err(err("the first line is empty".into()));
    }
    if line.len() > 8 {
        warn!(
            path = %path.display(),
            "VNC authentication uses only the first 8 bytes of the password"
        );
    }
    Ok(line)
}

/// Stop signal of the refresher thread.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// A running VNC console (see the module docs). Dropping it stops the server (closing every
/// viewer) and the refresher.
pub struct VncConsole {
    framebuffer: Arc<Framebuffer>,
    display: Arc<Display>,
    server: RfbServer,
    address: String,
    stop: Arc<Stop>,
    refresher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VncConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VncConsole")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl VncConsole {
    /// Maps and registers the framebuffer for `config`'s screen on `vm`.
    pub fn framebuffer(vm: &VmFd, config: &VncConfig) -> Result<Framebuffer, VncError> {
        let geometry = Geometry {
            width: config.width,
            height: config.height,
        };
        geometry
            .validate()
            .map_err(|e| VncError::Geometry(e.to_string()))?;
        Framebuffer::create(vm, geometry)
    }

    /// Starts the refresher over `framebuffer` and the RFB server on `config.listen`, with
    /// viewers' input going to `input`.
    pub fn start(
        vm: Arc<VmFd>,
        framebuffer: Framebuffer,
        config: &VncConfig,
        input: Arc<dyn InputSink>,
    ) -> Result<Self, VncError> {
        let password = config
            .password_file
            .as_deref()
            .map(read_password)
            .transpose()?;
        let display = Arc::new(
            Display::new(framebuffer.geometry()).map_err(|e| VncError::Geometry(e.to_string()))?,
        );
        let (listener, address) = bind(&config.listen)?;
        let framebuffer = Arc::new(framebuffer);
        let stop = Arc::new(Stop::default());
        let refresher = {
            let (fb, display, stop, vm) = (
                framebuffer.clone(),
                display.clone(),
                stop.clone(),
                vm.clone(),
            );
            std::thread::Builder::new()
                .name("vnc-refresh".into())
                .spawn(move || refresh_loop(&vm, &fb, &display, &stop))
                .map_err(VncError::Thread)?
        };
        let rfb = RfbConfig {
            password,
            name: "Vireo".into(),
            max_clients: 16,
        };
        let server = match RfbServer::start(listener, display.clone(), input, rfb) {
            Ok(s) => s,
            Err(e) => {
                signal_stop(&stop);
                let _ = refresher.join();
                return Err(VncError::Listen { address, source: e });
            }
        };
        let g = display.geometry();
        info!(%address, width = g.width, height = g.height, "VNC server listening");
        Ok(Self {
            framebuffer,
            display,
            server,
            address,
            stop,
            refresher: Some(refresher),
        })
    }

    /// Where viewers connect: `HOST:PORT` as bound (the real port when 0 was asked) or
    /// `unix:PATH`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The host-side copy of the screen.
    pub fn display(&self) -> &Arc<Display> {
        &self.display
    }

    /// The framebuffer memory.
    pub fn framebuffer_memory(&self) -> &Framebuffer {
        &self.framebuffer
    }

    /// Viewers connected now.
    pub fn viewers(&self) -> usize {
        self.server.clients()
    }

    /// Closes every viewer and stops the refresher; the framebuffer memory stays mapped
    /// until the console is dropped (after the VM's fd). Idempotent.
    pub fn stop(&self) {
        self.server.stop();
        signal_stop(&self.stop);
    }

    /// The screen's saved state, read from the framebuffer memory itself (call with the VM
    /// paused: the shadow may be a refresh behind).
    pub fn save(&self) -> DisplayState {
        let g = self.framebuffer.geometry();
        let mut pixels = vec![0; g.frame_bytes()];
        self.framebuffer.read(0, &mut pixels);
        DisplayState::new(g, &pixels)
    }

    /// Puts a saved screen back, into the framebuffer memory the guest sees and the shadow
    /// viewers see; a state of another size or a corrupt frame is refused and changes nothing.
    pub fn restore(&self, state: &DisplayState) -> Result<(), PersistError> {
        let pixels = self.display.restore(state)?;
        self.framebuffer.write(&pixels);
        Ok(())
    }
}

impl Drop for VncConsole {
    fn drop(&mut self) {
        self.server.stop();
        signal_stop(&self.stop);
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
    }
}

fn signal_stop(stop: &Stop) {
    *stop
        .stopped
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    stop.wake.notify_all();
}

fn bind(listen: &VncListen) -> Result<(RfbListener, String), VncError> {
    let address = listen.to_string();
    match listen {
        VncListen::Tcp(addr) => {
            let l = TcpListener::bind(addr).map_err(|source| VncError::Listen {
                address: address.clone(),
                source,
            })?;
            let bound = l.local_addr().map(|a| a.to_string()).unwrap_or(address);
            Ok((RfbListener::Tcp(l), bound))
        }
        VncListen::Unix(path) => {
            let l = crate::console::bind_socket(path).map_err(|e| VncError::Listen {
                address: address.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            Ok((RfbListener::Unix(l), address))
        }
    }
}

/// Every [`REFRESH_INTERVAL`]: the pages the guest wrote, into the shadow; until stopped.
fn refresh_loop(vm: &VmFd, fb: &Framebuffer, display: &Display, stop: &Stop) {
    let mut reported = false;
    loop {
        {
            let stopped = stop
                .stopped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (stopped, _) = stop
                .wake
                .wait_timeout_while(stopped, REFRESH_INTERVAL, |s| !*s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *stopped {
                return;
            }
        }
        match fb.take_dirty_pages(vm) {
            Ok(pages) if pages.is_empty() => {}
            Ok(pages) => {
                display.refresh(pages, |offset, buf| fb.read(offset, buf));
            }
            Err(e) if !reported => {
                warn!(error = %e, "VNC refresh failed; the screen stops updating");
                reported = true;
            }
            Err(_) => {}
        }
    }
}

//! The host side of the `churn` scenario's NIC: an `AF_PACKET` socket on
//! the tap, and a thread reading the guest's frames from it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::churn::Line;
use super::{netcommon, Capture, PATIENCE};

pub const TAP: &str = "vqtap0";
pub const ETHERTYPE: u16 = 0x88b5;
/// Iterations per frame the guest sends.
pub const TX_EVERY: u64 = 16;
/// The guest's MAC, as a spec string.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// Gives `config` a NIC with the guest's MAC on the tap TAP (which the VMM
/// creates, in the calling thread's namespace, and brings up).
pub fn add_nic(config: &mut vireo_vmm::VmConfig) {
    config.nets.push(vireo_vmm::NetConfig {
        tap: TAP.into(),
        mac: Some(GUEST_MAC.parse().expect("MAC")),
    });
}

pub fn guest_mac() -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
}

/// An `AF_PACKET` socket on the tap's host side for ethertype 0x88b5: reads
/// what the guest transmits, and sends frames to the guest.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn open(ifname: &str) -> Self {
        let proto = i32::from(ETHERTYPE.to_be());
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        assert!(
            fd >= 0,
            "socket(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).expect("name");
        // SAFETY: `name` is a valid C string for the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex != 0, "if_nametoindex({ifname})");
        let s = Self {
            fd,
            ifindex: ifindex as i32,
        };
        let addr = s.addr([0; 6]);
        // SAFETY: `addr` is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        // A large receive buffer (root may exceed rmem_max), so the reader
        // thread never loses a frame to a full socket.
        s.setsockopt(libc::SO_RCVBUFFORCE, &(64i32 << 20));
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        s.setsockopt(libc::SO_RCVTIMEO, &tv);
        s
    }

    fn setsockopt<T>(&self, opt: i32, value: &T) {
        // SAFETY: `value` is valid for `size_of::<T>()` bytes for the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt {opt}: {}",
            std::io::Error::last_os_error()
        );
    }

    fn addr(&self, dst: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = ETHERTYPE.to_be();
        a.sll_ifindex = self.ifindex;
        a.sll_halen = 6;
        a.sll_addr[..6].copy_from_slice(&dst);
        a
    }

    /// The next frame (up to the timeout), with whether it is incoming.
    pub fn recv(&self, buf: &mut [u8]) -> Option<(usize, bool)> {
        // SAFETY: as above.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: `buf` and `from` are valid for their lengths for the call.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ),
                "recvfrom: {e}"
            );
            return None;
        }
        Some((n as usize, from.sll_pkttype != libc::PACKET_OUTGOING))
    }

    /// Sends one frame carrying `churn-rx` and `seq` to the guest.
    pub fn send_seq(&self, seq: u64) {
        let mut f = [0u8; 60];
        f[0..6].copy_from_slice(&guest_mac());
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        f[14..22].copy_from_slice(b"churn-rx");
        f[22..30].copy_from_slice(&seq.to_be_bytes());
        let addr = self.addr(guest_mac());
        // SAFETY: `f` and `addr` are valid for their lengths for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(n, 60, "sendto: {}", std::io::Error::last_os_error());
    }
}

/// Packets the tap's host side received (what the VMM wrote into the tap).
pub fn tap_rx_packets() -> u64 {
    let json = netcommon::ip(&["-j", "-s", "link", "show", TAP]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packet count in {json}"))
}

/// A thread collecting the sequence numbers of the guest's `churn-tx`
/// frames on the tap, checking each frame's form.
pub struct TxReader {
    seen: Arc<Mutex<Vec<u64>>>,
    done: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl TxReader {
    pub fn spawn(sock: Arc<PacketSocket>) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, done) = (seen.clone(), done.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 2048];
                while !done.load(Ordering::Relaxed) {
                    let Some((n, incoming)) = sock.recv(&mut buf) else {
                        continue;
                    };
                    if !incoming || n < 38 || &buf[14..22] != b"churn-tx" {
                        continue;
                    }
                    let seq = u64::from_be_bytes(buf[22..30].try_into().expect("8 bytes"));
                    let i = u64::from_be_bytes(buf[30..38].try_into().expect("8 bytes"));
                    assert_eq!(i, seq * TX_EVERY, "frame {seq} is for iteration {i}");
                    assert_eq!(&buf[0..6], &[0xff; 6], "broadcast");
                    assert_eq!(&buf[6..12], &guest_mac(), "from the guest's MAC");
                    seen.lock().expect("lock").push(seq);
                }
            })
        };
        Self { seen, done, thread }
    }

    /// Waits until the reader has `on_tap` frames (the tap's count of what
    /// the VMM wrote into it), stops it, and returns the sequence numbers
    /// in the order read; asserts no other frame came.
    pub fn finish(self, on_tap: u64) -> Vec<u64> {
        let start = Instant::now();
        while (self.seen.lock().expect("lock").len() as u64) < on_tap {
            assert!(
                start.elapsed() < PATIENCE,
                "the reader got {} of the {on_tap} frames on the tap",
                self.seen.lock().expect("lock").len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().expect("reader thread");
        let seen = std::mem::take(&mut *self.seen.lock().expect("lock"));
        assert_eq!(
            seen.len() as u64,
            on_tap,
            "no frame but the guest's on the tap"
        );
        seen
    }
}

/// Waits until the guest's line reports `sent` frames received (read with
/// `last`); fails if it reports more, or too late.
pub fn wait_for_rx(out: &Capture, sent: u64, last: fn(&Capture) -> Option<Line>) -> Line {
    let start = Instant::now();
    loop {
        let line = last(out).expect("lines");
        if line.rx == Some(sent) {
            return line;
        }
        assert!(
            start.elapsed() < PATIENCE && line.rx < Some(sent),
            "the guest received {:?} of {sent} frames; output:\n{}",
            line.rx,
            out.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// With a NIC, each line's transmit count is a function of its `i`.
pub fn check_tx_counts(lines: &[Line]) {
    for l in lines {
        assert_eq!(l.tx, Some(l.i.div_ceil(TX_EVERY)), "{l:?}");
    }
}

/// A churning VM (not started) with a raw disk in `dir` and a NIC on [`TAP`], which the VMM
/// creates in the calling thread's namespace and brings up; a packet socket on the tap and a
/// reader of the guest's frames. Call inside `netcommon::in_netns`.
pub fn churning_vm_with_tap(
    dir: &std::path::Path,
) -> (vireo_vmm::Vm, Capture, Arc<PacketSocket>, TxReader) {
    let disk = dir.join("disk.raw");
    let mut config = super::churn::churn_config(dir, &disk);
    add_nic(&mut config);
    let (vm, out) = super::build_vm(config);
    let sock = Arc::new(PacketSocket::open(TAP));
    let reader = TxReader::spawn(sock.clone());
    (vm, out, sock, reader)
}

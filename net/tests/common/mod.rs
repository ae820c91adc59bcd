//! Shared helpers for the tap tests: a private network namespace per test, running `ip`, frame
//! building and checksums, and reading frames with a timeout.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use vireo_net::{MacAddr, Tap, VNET_HDR_LEN};

/// The host side's address on a test tap (`tap_with_address`).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The address the tests' guest side uses.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

/// The MAC address the tests' guest side uses.
pub fn guest_mac() -> MacAddr {
    "02:12:34:56:78:9a".parse().expect("valid MAC")
}

/// Opens (or creates) the tap `name` and gives its host side `HOST_IP/24`.
pub fn tap_with_address(name: &str) -> Tap {
    let tap = Tap::open(name).unwrap_or_else(|e| panic!("Tap::open({name}): {e}"));
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", name]);
    tap
}

/// Whether `frame` (Ethernet) is an ARP reply.
pub fn is_arp_reply(frame: &[u8]) -> bool {
    ethertype(frame) == Some(ETHERTYPE_ARP) && frame.get(20..22) == Some(&[0, 2])
}

/// Fails the calling test unless it runs as root (CI does): a test that needs root never passes
/// silently by skipping itself.
pub fn require_root(test: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{test} needs root (CAP_NET_ADMIN and unshare); run the tests as root, as CI does"
    );
}

/// Runs `f` on a new thread that first moved itself into a fresh network namespace, so taps and
/// addresses created by `f` vanish with the thread and never touch the host. IPv6 is disabled
/// for new interfaces there, so taps carry no unsolicited traffic (router solicitations, MLD).
/// Panics in `f` propagate to the caller.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET only changes this thread's namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        // /proc/sys/net follows the opening thread's namespace.
        match std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // no IPv6 in this kernel
            Err(e) => panic!("disabling IPv6 in the test namespace: {e}"),
        }
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `ip` with `args` (in the calling thread's namespace) and returns its stdout; panics with
/// its stderr if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The interface's flags as `ip` shows them, e.g. `["BROADCAST", "MULTICAST", "UP", "LOWER_UP"]`.
pub fn link_flags(dev: &str) -> Vec<String> {
    let out = ip(&["-o", "link", "show", "dev", dev]);
    let start = out.find('<').expect("flags in ip output") + 1;
    let end = out[start..].find('>').expect("flags in ip output") + start;
    out[start..end].split(',').map(str::to_owned).collect()
}

/// The interface's Ethernet address as `ip` shows it.
pub fn link_mac(dev: &str) -> MacAddr {
    let out = ip(&["-o", "link", "show", "dev", dev]);
    let mut words = out.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .expect("link/ether in ip output");
    words
        .next()
        .expect("address after link/ether")
        .parse()
        .expect("ip prints a valid unicast MAC")
}

/// One's-complement Internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => unreachable!(),
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// An Ethernet header.
pub fn eth_header(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(14);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A broadcast ARP request from (`sha`, `spa`) asking who has `tpa`.
pub fn arp_request(sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = eth_header([0xff; 6], sha.bytes(), ETHERTYPE_ARP);
    f.extend_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes()); // ptype IPv4
    f.extend_from_slice(&[6, 4]); // hlen, plen
    f.extend_from_slice(&1u16.to_be_bytes()); // op request
    f.extend_from_slice(&sha.bytes());
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// An ICMP echo request frame with correct IPv4 and ICMP checksums.
pub fn icmp_echo_request(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0]; // type echo request, code 0, checksum placeholder
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let csum = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());

    let total_len = u16::try_from(20 + icmp.len()).expect("small packet");
    let mut ip = vec![0x45, 0]; // version 4, IHL 5; DSCP 0
    ip.extend_from_slice(&total_len.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00]); // id, DF
    ip.extend_from_slice(&[64, 1, 0, 0]); // TTL, protocol ICMP, checksum placeholder
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());

    let mut f = eth_header(dst_mac.bytes(), src_mac.bytes(), ETHERTYPE_IPV4);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// An iovec covering `buf` (for reads: the caller keeps `buf` alive and unaliased).
pub fn iov_mut(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

/// An iovec covering `buf` for writes.
pub fn iov(buf: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }
}

/// Writes `frame` to the tap behind an all-zero virtio-net header and checks all of it was taken.
pub fn send_frame(tap: &Tap, frame: &[u8]) {
    let hdr = [0u8; VNET_HDR_LEN];
    let n = tap
        .write_iovecs(&[iov(&hdr), iov(frame)])
        .expect("write to tap");
    assert_eq!(n, VNET_HDR_LEN + frame.len());
}

/// Waits until the tap's descriptor is readable or `deadline` passes; returns whether readable.
pub fn wait_readable(tap: &Tap, deadline: Instant) -> bool {
    use std::os::fd::AsRawFd;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd that lives for the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return true;
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            panic!("poll: {}", io::Error::last_os_error());
        }
    }
}

/// Reads frames (header included) until one satisfies `want` (given the frame without the
/// header), returning the header and the frame; panics after `timeout`.
pub fn recv_frame(
    tap: &Tap,
    timeout: Duration,
    mut want: impl FnMut(&[u8]) -> bool,
) -> ([u8; VNET_HDR_LEN], Vec<u8>) {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; VNET_HDR_LEN + 65536];
    let mut skipped = 0;
    loop {
        assert!(
            wait_readable(tap, deadline),
            "no matching frame within {timeout:?} ({skipped} other frames skipped)"
        );
        match tap.read_iovecs(&[iov_mut(&mut buf)]) {
            Ok(n) => {
                assert!(n >= VNET_HDR_LEN, "short read of {n} bytes");
                let frame = &buf[VNET_HDR_LEN..n];
                if want(frame) {
                    let mut hdr = [0u8; VNET_HDR_LEN];
                    hdr.copy_from_slice(&buf[..VNET_HDR_LEN]);
                    return (hdr, frame.to_vec());
                }
                skipped += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read from tap: {e}"),
        }
    }
}

/// The ethertype of an Ethernet frame, if it is long enough to have one.
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

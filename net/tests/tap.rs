//! Tap tests against the real kernel. Each test runs in its own network namespace (see
//! `common::in_netns`), so nothing is created on the host. Tests that need root fail when
//! not run as root (CI runs as root), never skip.

mod common;

use std::io;
use std::time::Duration;

use common::*;
use vireo_net::{NetError, Offloads, Tap, VNET_HDR_LEN};

const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn open_creates_an_up_tap_with_vnet_hdr() {
    require_root("open_creates_an_up_tap_with_vnet_hdr");
    in_netns(|| {
        let tap = Tap::open("vtap0").expect("open");
        assert_eq!(tap.name(), "vtap0");
        let flags = link_flags("vtap0");
        assert!(flags.iter().any(|f| f == "UP"), "flags {flags:?}");
        // With our descriptor attached the tap has carrier.
        assert!(flags.iter().any(|f| f == "LOWER_UP"), "flags {flags:?}");
        let details = ip(&["-d", "link", "show", "dev", "vtap0"]);
        assert!(details.contains("tun type tap"), "{details}");
        assert!(details.contains("pi off"), "{details}");
        assert!(details.contains("vnet_hdr on"), "{details}");

        // Non-blocking and close-on-exec.
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL/F_GETFD take no pointer; the descriptor is open.
        let (fl, fd_flags) = unsafe {
            (
                libc::fcntl(tap.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(tap.as_raw_fd(), libc::F_GETFD),
            )
        };
        assert_ne!(fl & libc::O_NONBLOCK, 0);
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);

        // Not persistent: closing deletes it.
        drop(tap);
        let out = std::process::Command::new("ip")
            .args(["link", "show", "dev", "vtap0"])
            .output()
            .expect("run ip");
        assert!(!out.status.success(), "vtap0 still exists after drop");
    });
}

#[test]
fn empty_tap_read_would_block() {
    require_root("empty_tap_read_would_block");
    in_netns(|| {
        let tap = Tap::open("vtap0").expect("open");
        let mut buf = vec![0u8; 2048];
        let err = tap.read_iovecs(&[iov_mut(&mut buf)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    });
}

#[test]
fn arp_request_gets_kernel_reply() {
    require_root("arp_request_gets_kernel_reply");
    in_netns(|| {
        let tap = tap_with_address("vtap0");
        let host_mac = link_mac("vtap0");
        let mac = guest_mac();
        send_frame(&tap, &arp_request(mac, GUEST_IP, HOST_IP));

        let (hdr, reply) = recv_frame(&tap, TIMEOUT, is_arp_reply);
        // No offloads: plain frame, kernel leaves flags and gso_type zero.
        assert_eq!(hdr[0], 0, "vnet flags");
        assert_eq!(hdr[1], 0, "vnet gso_type");
        assert!(reply.len() >= 42, "ARP reply of {} bytes", reply.len());
        assert_eq!(&reply[0..6], &mac.bytes(), "Ethernet destination");
        assert_eq!(&reply[6..12], &host_mac.bytes(), "Ethernet source");
        assert_eq!(&reply[14..16], &[0, 1], "htype");
        assert_eq!(&reply[16..18], &[0x08, 0x00], "ptype");
        assert_eq!(&reply[18..20], &[6, 4], "hlen/plen");
        assert_eq!(&reply[20..22], &[0, 2], "opcode reply");
        assert_eq!(&reply[22..28], &host_mac.bytes(), "sender MAC");
        assert_eq!(&reply[28..32], &HOST_IP.octets(), "sender IP");
        assert_eq!(&reply[32..38], &mac.bytes(), "target MAC");
        assert_eq!(&reply[38..42], &GUEST_IP.octets(), "target IP");
    });
}

#[test]
fn icmp_echo_request_gets_reply_with_scattered_buffers() {
    require_root("icmp_echo_request_gets_reply_with_scattered_buffers");
    in_netns(|| {
        let tap = tap_with_address("vtap0");
        let host_mac = link_mac("vtap0");
        let mac = guest_mac();
        ip(&[
            "neigh",
            "replace",
            "10.213.0.2",
            "lladdr",
            &mac.to_string(),
            "dev",
            "vtap0",
            "nud",
            "permanent",
        ]);
        let payload: Vec<u8> = (0..56u8).collect();
        let frame = icmp_echo_request(mac, host_mac, GUEST_IP, HOST_IP, 0x4242, 7, &payload);
        // Header and frame split over three iovecs, across the Ethernet/IP boundary.
        let hdr = [0u8; VNET_HDR_LEN];
        let n = tap
            .write_iovecs(&[iov(&hdr), iov(&frame[..9]), iov(&frame[9..])])
            .expect("write");
        assert_eq!(n, VNET_HDR_LEN + frame.len());

        // Read the reply into scattered buffers too: header, 7 bytes, the rest.
        let deadline = std::time::Instant::now() + TIMEOUT;
        let reply = loop {
            assert!(wait_readable(&tap, deadline), "no ICMP echo reply");
            let mut h = [0xaau8; VNET_HDR_LEN];
            let mut a = [0u8; 7];
            let mut b = vec![0u8; 4096];
            let n = match tap.read_iovecs(&[iov_mut(&mut h), iov_mut(&mut a), iov_mut(&mut b)]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("read: {e}"),
            };
            let mut f = a.to_vec();
            f.extend_from_slice(&b[..n - VNET_HDR_LEN - a.len()]);
            if ethertype(&f) == Some(ETHERTYPE_IPV4) && f.get(23) == Some(&1) {
                assert_eq!(h[0], 0, "vnet flags");
                assert_eq!(h[1], 0, "vnet gso_type");
                // hdr_len, gso_size, csum_start, csum_offset: all zero for a plain frame.
                assert_eq!(&h[2..10], &[0; 8], "rest of the vnet header");
                break f;
            }
        };
        assert_eq!(&reply[0..6], &mac.bytes());
        assert_eq!(&reply[6..12], &host_mac.bytes());
        let ip_hdr = &reply[14..34];
        assert_eq!(ip_hdr[0], 0x45);
        assert_eq!(inet_checksum(ip_hdr), 0, "IPv4 header checksum");
        assert_eq!(&ip_hdr[12..16], &HOST_IP.octets(), "source");
        assert_eq!(&ip_hdr[16..20], &GUEST_IP.octets(), "destination");
        let total = usize::from(u16::from_be_bytes([ip_hdr[2], ip_hdr[3]]));
        assert_eq!(total, 20 + 8 + payload.len());
        let icmp = &reply[34..14 + total];
        assert_eq!(icmp[0], 0, "type echo reply");
        assert_eq!(icmp[1], 0, "code");
        assert_eq!(inet_checksum(icmp), 0, "ICMP checksum");
        assert_eq!(&icmp[4..6], &0x4242u16.to_be_bytes(), "id");
        assert_eq!(&icmp[6..8], &7u16.to_be_bytes(), "seq");
        assert_eq!(&icmp[8..], &payload[..], "payload");
    });
}

#[test]
fn short_read_buffer_truncates_and_loses_the_rest() {
    require_root("short_read_buffer_truncates_and_loses_the_rest");
    in_netns(|| {
        let tap = tap_with_address("vtap0");
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut big = vec![0u8; 4096];

        // Less than a header: EINVAL, and the frame is gone.
        send_frame(&tap, &arp_request(guest_mac(), GUEST_IP, HOST_IP));
        assert!(wait_readable(&tap, deadline), "no ARP reply");
        let mut tiny = [0u8; VNET_HDR_LEN - 1];
        let err = tap.read_iovecs(&[iov_mut(&mut tiny)]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        let err = tap.read_iovecs(&[iov_mut(&mut big)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");

        // Header plus part of the frame: truncated silently, the rest is not kept.
        send_frame(&tap, &arp_request(guest_mac(), GUEST_IP, HOST_IP));
        assert!(wait_readable(&tap, deadline), "no ARP reply");
        let mut small = [0u8; VNET_HDR_LEN + 20];
        assert_eq!(
            tap.read_iovecs(&[iov_mut(&mut small)]).expect("read"),
            small.len()
        );
        assert_eq!(ethertype(&small[VNET_HDR_LEN..]), Some(ETHERTYPE_ARP));
        let err = tap.read_iovecs(&[iov_mut(&mut big)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");

        // No buffer at all: Ok(0), and the queued frame stays.
        send_frame(&tap, &arp_request(guest_mac(), GUEST_IP, HOST_IP));
        assert!(wait_readable(&tap, deadline), "no ARP reply");
        assert_eq!(tap.read_iovecs(&[]).expect("empty read"), 0);
        assert!(tap.read_iovecs(&[iov_mut(&mut big)]).expect("read") >= VNET_HDR_LEN + 42);
    });
}

#[test]
fn second_open_of_same_name_is_busy_until_first_is_dropped() {
    require_root("second_open_of_same_name_is_busy_until_first_is_dropped");
    in_netns(|| {
        let first = Tap::open("vtap0").expect("first open");
        match Tap::open("vtap0") {
            Err(NetError::TapBusy { name }) => assert_eq!(name, "vtap0"),
            other => panic!("second open: {other:?}"),
        }
        // The first is unaffected.
        assert!(link_flags("vtap0").iter().any(|f| f == "UP"));
        drop(first);
        // Non-persistent: it was deleted, so this creates it afresh.
        let again = Tap::open("vtap0").expect("open after drop");
        assert_eq!(again.name(), "vtap0");
    });
}

#[test]
fn persistent_precreated_tap_is_attached_and_survives() {
    require_root("persistent_precreated_tap_is_attached_and_survives");
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "ptap0", "mode", "tap"]);
        assert!(!link_flags("ptap0").iter().any(|f| f == "UP"));
        let tap = Tap::open("ptap0").expect("open pre-created tap");
        assert!(link_flags("ptap0").iter().any(|f| f == "UP"));
        tap.set_offloads(Offloads {
            csum: true,
            tso4: true,
            ..Offloads::default()
        })
        .expect("offloads");
        drop(tap);
        // Reopening resets the offloads the previous user left behind.
        let tap = Tap::open("ptap0").expect("reopen pre-created tap");
        assert!(!ethtool_get("ptap0", ETHTOOL_GTSO), "TSO left on");
        assert!(!ethtool_get("ptap0", ETHTOOL_GTXCSUM), "tx csum left on");
        let details = ip(&["-d", "link", "show", "dev", "ptap0"]);
        assert!(details.contains("vnet_hdr on"), "{details}");
        drop(tap);
        // Still there after we close it.
        ip(&["link", "show", "dev", "ptap0"]);
    });
}

#[test]
fn non_tap_devices_are_not_a_tap() {
    require_root("non_tap_devices_are_not_a_tap");
    in_netns(|| {
        ip(&["tuntap", "add", "dev", "tun0", "mode", "tun"]);
        ip(&["tuntap", "add", "dev", "mq0", "mode", "tap", "multi_queue"]);
        for name in ["lo", "tun0", "mq0"] {
            match Tap::open(name) {
                Err(NetError::NotATap { name: n }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    });
}

#[test]
fn bad_names_are_refused_before_any_syscall() {
    // No privileges needed: validation happens first.
    for name in [
        "",
        "abcdefghijklmnop",
        "a/b",
        "a b",
        "a\tb",
        "a\0b",
        "a:b",
        ".",
        "tap%d",
    ] {
        match Tap::open(name) {
            Err(NetError::InvalidTapName(msg)) => assert!(msg.contains(&format!("{name:?}"))),
            other => panic!("{name:?}: {other:?}"),
        }
    }
}

#[test]
fn set_offloads_accepts_every_combination() {
    require_root("set_offloads_accepts_every_combination");
    in_netns(|| {
        let tap = Tap::open("vtap0").expect("open");
        for bits in 0u8..32 {
            let o = Offloads {
                csum: bits & 1 != 0,
                tso4: bits & 2 != 0,
                tso6: bits & 4 != 0,
                ecn: bits & 8 != 0,
                ufo: bits & 16 != 0,
            };
            tap.set_offloads(o)
                .unwrap_or_else(|e| panic!("{o:?}: {e:?}"));
            // The kernel's view (ethtool) follows: TSO on exactly when csum and tso4/tso6.
            let tso = ethtool_get("vtap0", ETHTOOL_GTSO);
            assert_eq!(tso, o.csum && (o.tso4 || o.tso6), "{o:?}: TSO feature");
            let txcsum = ethtool_get("vtap0", ETHTOOL_GTXCSUM);
            assert_eq!(txcsum, o.csum, "{o:?}: tx checksum feature");
        }
        tap.set_offloads(Offloads::default()).expect("reset");
        assert!(!ethtool_get("vtap0", ETHTOOL_GTSO));
    });
}

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GTSO: u32 = 0x1e;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// Reads one legacy ethtool boolean feature of `dev` in the calling thread's namespace.
fn ethtool_get(dev: &str, cmd: u32) -> bool {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReqData {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let mut value = EthtoolValue { cmd, data: 0 };
    let mut req = IfReqData {
        name: [0; 16],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: socket(2) takes no pointers.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(sock >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: SIOCETHTOOL reads the 40-byte ifreq and reads/writes the ethtool_value it points
    // at; both live until after the call.
    let rc = unsafe { libc::ioctl(sock, SIOCETHTOOL, &mut req as *mut IfReqData) };
    let err = io::Error::last_os_error();
    // SAFETY: `sock` is our open descriptor, closed once.
    unsafe { libc::close(sock) };
    assert_eq!(rc, 0, "SIOCETHTOOL {cmd:#x}: {err}");
    value.data != 0
}

#[test]
fn write_with_bad_vnet_header_is_refused() {
    require_root("write_with_bad_vnet_header_is_refused");
    in_netns(|| {
        let tap = Tap::open("vtap0").expect("open");
        let frame = arp_request(guest_mac(), GUEST_IP, HOST_IP);
        // gso_type 0x7f does not exist.
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[1] = 0x7f;
        let err = tap.write_iovecs(&[iov(&hdr), iov(&frame)]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        // Shorter than the header.
        let err = tap.write_iovecs(&[iov(&[0u8; 5])]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        // A correct one still goes through afterwards.
        send_frame(&tap, &frame);
    });
}

#[test]
fn unprivileged_user_gets_permission_denied() {
    require_root("unprivileged_user_gets_permission_denied");
    in_netns(|| {
        // Only this thread changes identity: the raw syscall bypasses glibc's all-thread setxid.
        // Changing the effective UID from 0 clears the effective capabilities.
        // SAFETY: setresuid takes no pointers; -1 leaves the real and saved IDs alone.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1i64, 65534i64, -1i64) };
        assert_eq!(rc, 0, "setresuid: {}", io::Error::last_os_error());
        match Tap::open("vtap0") {
            Err(NetError::PermissionDenied { name }) => {
                assert_eq!(name, "vtap0");
                let msg = NetError::PermissionDenied { name }.to_string();
                assert!(msg.contains("CAP_NET_ADMIN"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn without_cap_net_admin_only_precreated_up_taps_open() {
    require_root("without_cap_net_admin_only_precreated_up_taps_open");
    in_netns(|| {
        // Owned by uid 0 (us); one set up beforehand, one left down.
        ip(&["tuntap", "add", "dev", "uptap", "mode", "tap", "user", "0"]);
        ip(&["link", "set", "uptap", "up"]);
        ip(&[
            "tuntap", "add", "dev", "downtap", "mode", "tap", "user", "0",
        ]);
        drop_cap_net_admin();

        match Tap::open("newtap") {
            Err(NetError::PermissionDenied { .. }) => {}
            other => panic!("creating without CAP_NET_ADMIN: {other:?}"),
        }
        match Tap::open("downtap") {
            Err(NetError::PermissionDenied { .. }) => {}
            other => panic!("bringing up without CAP_NET_ADMIN: {other:?}"),
        }
        let tap = Tap::open("uptap").expect("pre-created, owned and up");
        tap.set_offloads(Offloads {
            csum: true,
            tso4: true,
            ..Offloads::default()
        })
        .expect("offloads need no capability");
        send_frame(&tap, &arp_request(guest_mac(), GUEST_IP, HOST_IP));
    });
}

/// Removes CAP_NET_ADMIN from this thread's effective set (capset is per thread).
fn drop_cap_net_admin() {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut hdr = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (version 3) and may update the header; both are valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "capget: {}", io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    data[0].permitted &= !(1 << CAP_NET_ADMIN);
    // SAFETY: capset reads the header and two CapData; all valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", io::Error::last_os_error());
}

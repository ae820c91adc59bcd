//! The Vireo test guest: a freestanding program that Vireo starts directly in
//! ring 3 (CPL 3, long mode, IOPL 3) using its user-mode boot protocol.
//!
//! Entry registers (see `vireo_vmm::boot::user_elf`): RDI = address of the
//! NUL-terminated command line, RSI = its length, RDX = guest RAM in bytes,
//! RCX = this vCPU's index. Interrupts stay disabled; every device is polled.
//!
//! The command line picks one scenario (arguments separated by spaces,
//! numbers decimal):
//! - `hello`, `count N [GAP]`, `echo`, `idle`, `reset`, `pci`,
//!   `triple-fault`, `emulation-failure`, `exit N`: CPU, serial, MMIO, PCI
//!   and VM-exit checks.
//! - `kbd COUNT`: sets the i8042 up (flush, self test, keyboard enable),
//!   prints `kbd ready`, then polls and prints `kbd scancode=0x1e` (two hex
//!   digits) per byte the keyboard sends until COUNT were read, then `kbd
//!   done` (the host injects key events).
//! - `spew BYTES`: BYTES bytes of a line pattern as fast as the UART takes
//!   them, then `spew: done BYTES` (serial back-pressure checks).
//! - `virtio-list`: every virtio-pci device on bus 0 (`virtio slot=…
//!   type=blk|net|input|other bar0=…`, then `blk capacity=… ro=… serial=…` or `net
//!   mac=… link=up|down`).
//! - `input-events COUNT`: the first virtio-input device: `input name=<ID_NAME>`,
//!   `input ready` once its event queue has buffers, then each event as
//!   `input type=<t> code=<c> value=<v>` (decimal) until COUNT events, then
//!   `input done`.
//! - `blk-rw NTH SECTOR COUNT SEED`: read (`blk-read … fnv=…`), then write a
//!   pattern, flush, read back and compare (`blk-write … verify=ok`), or on
//!   a read-only disk report the write's status (`blk-ro write-status=…`).
//! - `blk-edge NTH`: the device's error paths (`edge <case> status=…`,
//!   then `edge ok`).
//! - `blk-bench NTH MODE BLOCK-BYTES QUEUE-DEPTH TOTAL REGION-MIB [PAUSES]`
//!   with MODE `randread|randwrite|seqread|seqwrite` (PAUSES: PAUSE
//!   instructions between looks at an empty used ring, default 256):
//!   `bench-start`, then `bench-done requests=… bytes=… errors=…`.
//! - `net-ping GUEST-IP HOST-IP`: ARP for the host, three ICMP echoes
//!   (`net arp-reply …`, `net icmp-reply seq=…`, `net ok tx=… rx=…`).
//! - `net-bench GUEST-IP HOST-IP FRAMES FRAME-BYTES`: UDP frames to the
//!   host's discard port (`bench-start`, `bench-done frames=… bytes=…`).
//! - `churn PAGES [EVERY [BLK-SECTORS [LIMIT [RATE]]]]` (0 = default for each; RATE in
//!   MiB/s paces the page rewrites):
//!   keeps rewriting PAGES pages of RAM (page `i % PAGES` at iteration
//!   `i`, contents a function of `(i, page)`, checked before each rewrite),
//!   and with a virtio-blk disk writes sector `i % BLK-SECTORS` (default
//!   min(capacity, 256); nonzero without a disk is a failure) and verifies
//!   sector `(i + 1) % BLK-SECTORS` read back, and with a virtio-net NIC
//!   sends one frame every 16 iterations (ethertype 0x88b5, payload
//!   `churn-tx`, BE u64 sequence number, BE u64 `i`) and counts frames
//!   with payload `churn-rx` + consecutive BE u64 sequence numbers.
//!   Prints `churn start pages=… every=… blk-sectors=… net=0|1 base=0x…`,
//!   then every EVERY (default PAGES) iterations, after reading the whole
//!   working set back, `churn i=<i> sum=<hex16>` [` blk=<writes>`]
//!   [` tx=<sent> rx=<received>`], all but `rx` a pure function of `i`.
//!   Failures: `churn MISMATCH …` or `churn BLK-MISMATCH …` (exit 1),
//!   `churn RX-GAP i=… want=… got=…` (reported only). Runs forever unless
//!   LIMIT > 0 (then `churn done i=<i>`, exit 0). With a raw disk on the
//!   PVM CI host it does about 16000 iterations a second (EVERY 256: a
//!   line every ~16 ms); without a disk, raise EVERY. Details in
//!   `churn.rs`.
//!
//! - `fb-pattern WIDTH HEIGHT SEED`, `fb-anim WIDTH HEIGHT FRAMES GAP-MS`: draw into the
//!   VNC framebuffer at 0xd000_0000 (a known pattern, or full-screen fills of known
//!   colours); details in `fb.rs`.
//!
//! Each scenario reports over COM1 and ends by writing a status byte to the
//! debug exit port (0 = pass; virtio scenarios print `FAIL: <reason>` and
//! exit 1 on failure). The virtio driver (modern virtio-pci, split
//! virtqueues, polled) lives in `virtio.rs`, `virtio_blk.rs`,
//! `virtio_net.rs` and `virtio_input.rs`; `mem.rs` has the buffer allocators. New scenarios are
//! added as a new arm in `run_scenario`.

#![no_std]
#![no_main]

mod churn;
mod fb;
mod fb_colors;
mod mem;
mod virtio;
mod virtio_blk;
mod virtio_input;
mod virtio_net;

use core::arch::asm;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU64, Ordering};

const COM1: u16 = 0x3f8;
const DEBUG_EXIT: u16 = 0xf4;
/// Guest physical address of the in-kernel IOAPIC (MMIO handled by KVM).
const IOAPIC_BASE: usize = 0xfec0_0000;
/// An address in the PCI MMIO hole that no device claims (answered by the
/// VMM's MMIO bus with all-ones).
const UNCLAIMED_MMIO: usize = 0xd000_0000;

/// Marks this ELF for Vireo's ring-3 boot: name "Vireo", type 1, version 1.
#[used]
#[link_section = ".note.vireo"]
static VIREO_NOTE: [u8; 24] = [
    6, 0, 0, 0, // namesz ("Vireo\0")
    4, 0, 0, 0, // descsz
    1, 0, 0, 0, // type: VIREO_NOTE_USER_MODE
    b'V', b'i', b'r', b'e', b'o', 0, 0, 0, // name, padded to 4 bytes
    1, 0, 0, 0, // desc: protocol version 1
];

// ---------------------------------------------------------------- port I/O

fn outb(port: u16, value: u8) {
    // SAFETY: IOPL is 3, so port I/O from ring 3 is allowed; it only reaches
    // the VMM's device models.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack)) };
    value
}

fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: RDTSC is allowed in ring 3 (CR4.TSD is clear).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Fallback TSC rate when CPUID does not tell it: deadlines come out longer
/// than asked when the TSC runs slower (2.6 GHz on the CI host), shorter
/// only on a TSC faster than 3 GHz.
const TSC_HZ_GUESS: u64 = 3_000_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// The TSC frequency from CPUID leaf 0x15 (crystal ratio) or 0x16 (base
/// MHz), else a guess. Only used to bound waits.
fn tsc_hz() -> u64 {
    let cached = TSC_HZ.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    use core::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and is allowed in ring 3.
    let (l15, l16) = unsafe {
        let max = __cpuid(0).eax;
        let l15 = if max >= 0x15 {
            Some(__cpuid(0x15))
        } else {
            None
        };
        let l16 = if max >= 0x16 {
            Some(__cpuid(0x16))
        } else {
            None
        };
        (l15, l16)
    };
    let mut hz = TSC_HZ_GUESS;
    if let Some(l) = l15.filter(|l| l.eax != 0 && l.ebx != 0 && l.ecx != 0) {
        hz = u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax);
    } else if let Some(l) = l16.filter(|l| l.eax & 0xffff != 0) {
        hz = u64::from(l.eax & 0xffff) * 1_000_000;
    }
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

/// A point in TSC time after which a wait gives up.
struct Deadline {
    start: u64,
    cycles: u64,
}

impl Deadline {
    fn after_ms(ms: u64) -> Self {
        Self {
            start: rdtsc(),
            cycles: tsc_hz() / 1000 * ms,
        }
    }

    fn expired(&self) -> bool {
        rdtsc().wrapping_sub(self.start) >= self.cycles
    }
}

fn delay_cycles(cycles: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

fn exit(status: u8) -> ! {
    outb(DEBUG_EXIT, status);
    // The VMM stops this vCPU on the write; never reached.
    loop {
        core::hint::spin_loop();
    }
}

// ------------------------------------------------------------------ serial

fn serial_init() {
    outb(COM1 + 1, 0x00); // no interrupts: we poll
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFO on
    outb(COM1 + 4, 0x03); // DTR | RTS
}

fn putc(c: u8) {
    while inb(COM1 + 5) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    outb(COM1, c);
}

fn puts(s: &str) {
    for &b in s.as_bytes() {
        putc(b);
    }
}

fn put_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        putc(b);
    }
}

fn put_hex(v: u64) {
    puts("0x");
    put_hex16(v);
}

/// Prints `v` as 16 lowercase hex digits, without a prefix.
fn put_hex16(v: u64) {
    for shift in (0..16).rev() {
        let nib = ((v >> (shift * 4)) & 0xf) as u8;
        putc(if nib < 10 {
            b'0' + nib
        } else {
            b'a' + nib - 10
        });
    }
}

fn getc_nonblocking() -> Option<u8> {
    if inb(COM1 + 5) & 0x01 != 0 {
        Some(inb(COM1))
    } else {
        None
    }
}

// ------------------------------------------------------------ command line

/// The command line split on spaces, without allocation.
struct Args<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        while let Some((&b' ', tail)) = self.rest.split_first() {
            self.rest = tail;
        }
        if self.rest.is_empty() {
            return None;
        }
        let mut end = 0;
        while end < self.rest.len() && self.rest[end] != b' ' {
            end += 1;
        }
        let (word, tail) = self.rest.split_at(end);
        self.rest = tail;
        Some(word)
    }
}

fn parse_u64(word: Option<&[u8]>, default: u64) -> u64 {
    let Some(word) = word else { return default };
    let mut v: u64 = 0;
    for &b in word {
        if !b.is_ascii_digit() {
            return default;
        }
        v = v.saturating_mul(10).saturating_add(u64::from(b - b'0'));
    }
    v
}

fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// --------------------------------------------------------------- scenarios

fn current_cpl() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack)) };
    cs & 3
}

/// Port I/O round trip through the UART scratch register.
fn check_port_io() -> bool {
    outb(COM1 + 7, 0x5a);
    let a = inb(COM1 + 7);
    outb(COM1 + 7, 0xa5);
    let b = inb(COM1 + 7);
    puts("pio: scratch register round trip ");
    let ok = a == 0x5a && b == 0xa5;
    puts(if ok { "ok\n" } else { "FAILED\n" });
    ok
}

/// MMIO: the in-kernel IOAPIC's version register, and an unclaimed address
/// answered by the VMM's MMIO bus.
fn check_mmio() -> bool {
    let sel = IOAPIC_BASE as *mut u32;
    let win = (IOAPIC_BASE + 0x10) as *mut u32;
    // SAFETY: the VMM identity-maps the MMIO hole for ring 3; these are
    // device registers, accessed with volatile 32-bit operations.
    let version = unsafe {
        core::ptr::write_volatile(sel, 1);
        core::ptr::read_volatile(win)
    };
    // SAFETY: as above; nothing is mapped here, so the VMM answers.
    let unclaimed = unsafe { core::ptr::read_volatile(UNCLAIMED_MMIO as *const u32) };
    let ioapic_ok = version & 0xff == 0x11 && (version >> 16) & 0xff == 23;
    let unclaimed_ok = unclaimed == 0xffff_ffff;
    puts("mmio: ioapic version ");
    put_hex(u64::from(version));
    puts(if ioapic_ok { " ok\n" } else { " FAILED\n" });
    puts("mmio: unclaimed read ");
    put_hex(u64::from(unclaimed));
    puts(if unclaimed_ok { " ok\n" } else { " FAILED\n" });
    ioapic_ok && unclaimed_ok
}

fn scenario_hello(mem_size: u64) -> u8 {
    puts("Hello from the Vireo test guest\n");
    puts("cpl: ");
    put_dec(u64::from(current_cpl()));
    puts("\nmemory: ");
    put_dec(mem_size >> 20);
    puts(" MiB\n");
    let pio = check_port_io();
    let mmio = check_mmio();
    let ok = pio && mmio && current_cpl() == 3;
    puts(if ok { "hello: PASS\n" } else { "hello: FAIL\n" });
    if ok {
        0
    } else {
        1
    }
}

/// Prints `tick 0` … `tick N-1`, one line every `gap` TSC cycles.
fn scenario_count(n: u64, gap: u64) -> u8 {
    for i in 0..n {
        puts("tick ");
        put_dec(i);
        putc(b'\n');
        delay_cycles(gap);
    }
    puts("count: done\n");
    0
}

/// Writes `bytes` bytes of 64-byte lines (`a`…`z` repeated, then `\n`) as
/// fast as the UART takes them, then `spew: done BYTES`. Like a driver for a
/// 16550A, it fills the 16-byte transmit FIFO each time the line status
/// register says the transmitter is empty.
fn scenario_spew(bytes: u64) -> u8 {
    let mut sent = 0u64;
    while sent < bytes {
        while inb(COM1 + 5) & 0x20 == 0 {
            core::hint::spin_loop();
        }
        let burst = (bytes - sent).min(16);
        for _ in 0..burst {
            let column = sent % 64;
            outb(
                COM1,
                if column == 63 {
                    b'\n'
                } else {
                    b'a' + (column % 26) as u8
                },
            );
            sent += 1;
        }
    }
    puts("spew: done ");
    put_dec(bytes);
    putc(b'\n');
    0
}

/// Echoes serial input line by line until a line reads `quit`.
fn scenario_echo() -> u8 {
    puts("echo: ready\n");
    let mut line = [0u8; 128];
    let mut len = 0;
    loop {
        let Some(c) = getc_nonblocking() else {
            delay_cycles(20_000);
            continue;
        };
        if c == b'\r' {
            continue;
        }
        if c == b'\n' {
            let text = &line[..len];
            puts("echo: ");
            for &b in text {
                putc(b);
            }
            putc(b'\n');
            if bytes_eq(text, b"quit") {
                return 0;
            }
            len = 0;
        } else if len < line.len() {
            line[len] = c;
            len += 1;
        }
    }
}

/// Says it is ready, then spins without exits (for RSS measurements).
fn scenario_idle() -> ! {
    puts("idle: ready\n");
    loop {
        delay_cycles(1 << 30);
    }
}

fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
}

fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe { asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack)) };
    value
}

/// Base of the PCIe ECAM window (bus 0).
const PCI_ECAM: usize = 0xe000_0000;

fn pci_read_io(slot: u32, reg: u32) -> u32 {
    outl(0xcf8, 0x8000_0000 | (slot << 11) | (reg & 0xfc));
    inl(0xcfc)
}

fn pci_read_ecam(slot: usize, reg: usize) -> u32 {
    // SAFETY: the ECAM window is identity-mapped device memory.
    unsafe { core::ptr::read_volatile((PCI_ECAM + (slot << 15) + reg) as *const u32) }
}

/// Enumerates bus 0 through both configuration mechanisms and checks that
/// they agree and that the host bridge is at 00:00.0.
fn scenario_pci() -> u8 {
    let mut found = 0;
    let mut agree = true;
    for slot in 0..32u32 {
        let id = pci_read_io(slot, 0);
        if pci_read_ecam(slot as usize, 0) != id {
            agree = false;
        }
        if id == 0xffff_ffff {
            continue;
        }
        found += 1;
        let class = pci_read_io(slot, 8) >> 8;
        puts("pci: 00:");
        put_dec(u64::from(slot));
        puts(".0 id ");
        put_hex(u64::from(id));
        puts(" class ");
        put_hex(u64::from(class));
        putc(b'\n');
    }
    puts("pci: ");
    put_dec(found);
    puts(" device(s); port and ECAM access ");
    puts(if agree { "agree\n" } else { "DISAGREE\n" });
    let host_bridge = pci_read_io(0, 0) == 0x0d57_8086 && pci_read_io(0, 8) >> 8 == 0x06_0000;
    if agree && host_bridge && found >= 1 {
        puts("pci: PASS\n");
        0
    } else {
        puts("pci: FAIL\n");
        1
    }
}

/// Pulses the reset line through the i8042 command port.
fn scenario_reset() -> ! {
    puts("reset: i8042 command 0xfe\n");
    outb(0x64, 0xfe);
    puts("reset: still running (unexpected)\n");
    exit(1)
}

const KBD_DATA: u16 = 0x60;
const KBD_STATUS: u16 = 0x64;

/// The next byte from the i8042's output buffer, if one arrives within
/// `ms` milliseconds.
fn kbd_read(ms: u64) -> Option<u8> {
    let deadline = Deadline::after_ms(ms);
    while inb(KBD_STATUS) & 0x01 == 0 {
        if deadline.expired() {
            return None;
        }
        core::hint::spin_loop();
    }
    Some(inb(KBD_DATA))
}

/// Prints `v` as two lowercase hex digits.
fn put_hex2(v: u8) {
    for nib in [v >> 4, v & 0xf] {
        putc(if nib < 10 {
            b'0' + nib
        } else {
            b'a' + nib - 10
        });
    }
}

/// Sets the i8042 up (flush, controller self test, keyboard enable) and
/// prints each byte the keyboard sends until `count` were read.
fn scenario_kbd(count: u64) -> u8 {
    while kbd_read(0).is_some() {}
    outb(KBD_STATUS, 0xaa);
    if kbd_read(1000) != Some(0x55) {
        puts("kbd FAIL: controller self test\n");
        return 1;
    }
    outb(KBD_DATA, 0xf4);
    if kbd_read(1000) != Some(0xfa) {
        puts("kbd FAIL: keyboard enable not acknowledged\n");
        return 1;
    }
    puts("kbd ready\n");
    for _ in 0..count {
        while inb(KBD_STATUS) & 0x01 == 0 {
            core::hint::spin_loop();
        }
        puts("kbd scancode=0x");
        put_hex2(inb(KBD_DATA));
        putc(b'\n');
    }
    puts("kbd done\n");
    0
}

fn scenario_triple_fault() -> ! {
    puts("triple-fault: ud2 with no IDT\n");
    // SAFETY: deliberately raises #UD; with no IDT this escalates to a
    // triple fault, which is what this scenario tests.
    unsafe { asm!("ud2", options(noreturn)) }
}

fn scenario_emulation_failure() -> ! {
    puts("emulation-failure: cmpxchg16b on MMIO\n");
    let addr = UNCLAIMED_MMIO as u64;
    // SAFETY: a locked 16-byte compare-exchange on device memory, which the
    // host's instruction emulator refuses; the VMM reports an internal error.
    unsafe {
        asm!(
            "xchg {t}, rbx",
            "cmpxchg16b [rdi]",
            "xchg {t}, rbx",
            t = inout(reg) 0u64 => _,
            in("rdi") addr,
            inout("rax") 0u64 => _,
            inout("rdx") 0u64 => _,
            in("rcx") 0u64,
            options(nostack),
        );
    }
    puts("emulation-failure: instruction completed (unexpected)\n");
    exit(1)
}

fn run_scenario(cmdline: &[u8], mem_size: u64) -> u8 {
    let mut args = Args { rest: cmdline };
    let name = args.next().unwrap_or(b"hello");
    match name {
        b"hello" => scenario_hello(mem_size),
        b"count" => {
            let n = parse_u64(args.next(), 100);
            let gap = parse_u64(args.next(), 1 << 20);
            scenario_count(n, gap)
        }
        b"echo" => scenario_echo(),
        b"spew" => scenario_spew(parse_u64(args.next(), 1 << 20)),
        b"idle" => scenario_idle(),
        b"reset" => scenario_reset(),
        b"pci" => scenario_pci(),
        b"triple-fault" => scenario_triple_fault(),
        b"emulation-failure" => scenario_emulation_failure(),
        b"kbd" => scenario_kbd(parse_u64(args.next(), 1)),
        b"exit" => parse_u64(args.next(), 0) as u8,
        b"virtio-list" => virtio::scenario_list(),
        b"blk-rw" => virtio::outcome(virtio_blk::scenario_rw(&mut args)),
        b"blk-edge" => virtio::outcome(virtio_blk::scenario_edge(&mut args)),
        b"blk-bench" => virtio::outcome(virtio_blk::scenario_bench(&mut args, mem_size)),
        b"net-ping" => virtio::outcome(virtio_net::scenario_ping(&mut args)),
        b"net-bench" => virtio::outcome(virtio_net::scenario_bench(&mut args)),
        b"input-events" => virtio::outcome(virtio_input::scenario_events(&mut args)),
        b"churn" => virtio::outcome(churn::scenario(&mut args, mem_size)),
        b"fb-pattern" => fb::scenario_pattern(&mut args),
        b"fb-anim" => fb::scenario_anim(&mut args),
        _ => {
            puts("unknown scenario: ");
            for &b in name {
                putc(b);
            }
            putc(b'\n');
            2
        }
    }
}

/// Entry point, called by the VMM with the SysV argument registers set.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(cmdline: *const u8, len: usize, mem_size: u64, _cpu: u64) -> ! {
    serial_init();
    let cmdline = if cmdline.is_null() {
        &[][..]
    } else {
        // SAFETY: the boot protocol guarantees `len` readable bytes at
        // `cmdline`, identity-mapped.
        unsafe { core::slice::from_raw_parts(cmdline, len) }
    };
    let status = run_scenario(cmdline, mem_size);
    exit(status)
}

#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    puts("test guest panicked\n");
    exit(0xfe)
}

/// The host target's precompiled `core` references the unwinding personality
/// routine; with panic=abort it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

// The compiler may emit calls to these; there is no libc to provide them.
// Byte loops through volatile accesses keep LLVM from turning them back into
// calls to themselves.

/// # Safety
/// Standard `memcpy` contract.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees both ranges are valid and disjoint.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard `memmove` contract.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: forward copy is correct when dst does not start inside src.
        return unsafe { memcpy(dst, src, n) };
    }
    let mut i = n;
    while i > 0 {
        i -= 1;
        // SAFETY: caller guarantees both ranges are valid.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    dst
}

/// # Safety
/// Standard `memset` contract.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees the range is valid.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard `memcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: caller guarantees both ranges are valid.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// Standard `bcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

//! The CMOS real-time clock (MC146818) at ports 0x70 (index) and 0x71 (data).
//!
//! Time registers report the host's current UTC time in the format register
//! B selects (BCD or binary, 24-hour or 12-hour), computed at each read, so the
//! guest's wall clock starts right. The update-in-progress bit always reads 0
//! and register D reports valid time, so guests (Linux `rtc_cmos`) never spin
//! waiting for an update. Guest writes to the time and alarm registers
//! (0x00–0x09) are ignored: the host clock is authoritative, and no
//! interrupts are raised (no alarm, periodic or update interrupts). The
//! century byte (0x32) is computed too; the rest is plain CMOS RAM.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::BusDevice;

/// Index port of the CMOS.
pub const CMOS_PORT_BASE: u64 = 0x70;
/// Ports covered: index and data.
pub const CMOS_PORT_SIZE: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Register B: binary (not BCD) time.
const B_BINARY: u8 = 1 << 2;
/// Register B: 24-hour mode.
const B_24H: u8 = 1 << 1;
/// Register D: valid RAM and time.
const D_VALID: u8 = 1 << 7;

/// A calendar time, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// Full year, e.g. 2026.
    pub year: u32,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
    /// 0–59.
    pub second: u8,
    /// 1 (Sunday) – 7 (Saturday), as the RTC counts.
    pub weekday: u8,
}

impl CivilTime {
    /// Converts seconds since the Unix epoch (proleptic Gregorian calendar).
    pub fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Days since 1970-01-01 to civil date (Hinnant's algorithm, shifted
        // so that eras start on 0000-03-01).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (5 in RTC numbering).
            weekday: ((days + 4) % 7 + 1) as u8,
        }
    }
}

/// The CMOS RTC and its RAM.
#[derive(Debug)]
pub struct Cmos {
    pub(super) index: u8,
    pub(super) ram: [u8; 128],
    now: fn() -> u64,
}

fn host_unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(host_unix_time)
    }
}

impl Cmos {
    /// A CMOS reading the time from `now` (seconds since the Unix epoch).
    pub fn with_clock(now: fn() -> u64) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        ram[usize::from(REG_B)] = B_24H;
        ram[usize::from(REG_D)] = D_VALID;
        Self { index: 0, ram, now }
    }

    fn encode(&self, value: u8) -> u8 {
        if self.ram[usize::from(REG_B)] & B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.ram[usize::from(REG_B)] & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { 0x80 } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn read_register(&self, reg: u8) -> u8 {
        // The clock is read only for the registers that show it.
        let t = || CivilTime::from_unix((self.now)());
        match reg {
            REG_SECONDS => self.encode(t().second),
            REG_MINUTES => self.encode(t().minute),
            REG_HOURS => self.encode_hour(t().hour),
            REG_WEEKDAY => self.encode(t().weekday),
            REG_DAY => self.encode(t().day),
            REG_MONTH => self.encode(t().month),
            REG_YEAR => self.encode((t().year % 100) as u8),
            REG_CENTURY => self.encode((t().year / 100) as u8),
            // Update in progress (bit 7) is never set.
            REG_A => self.ram[usize::from(REG_A)] & 0x7f,
            REG_C => 0,
            REG_D => D_VALID,
            other => self.ram[usize::from(other & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            0 => self.index,
            1 => self.read_register(self.index),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 of the index port masks NMIs on real hardware.
            0 => self.index = value & 0x7f,
            1 => match self.index {
                REG_SECONDS..=REG_YEAR | REG_CENTURY | REG_C | REG_D => {}
                REG_A => self.ram[usize::from(REG_A)] = value & 0x7f,
                reg => self.ram[usize::from(reg)] = value,
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-23 21:28:05 UTC, a Monday.
    fn fixed() -> u64 {
        1_795_469_285
    }

    fn reg(c: &mut Cmos, r: u8) -> u8 {
        c.write(0, &[r]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn civil_time_conversion() {
        assert_eq!(
            CivilTime::from_unix(0),
            CivilTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        let t = CivilTime::from_unix(fixed());
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2026, 11, 23, 21, 28, 5)
        );
        assert_eq!(t.weekday, 2, "Monday");
        // Leap day.
        let leap = CivilTime::from_unix(951_782_400);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn reports_bcd_24h_time_and_never_updating() {
        let mut c = Cmos::with_clock(fixed);
        assert_eq!(reg(&mut c, REG_HOURS), 0x21);
        assert_eq!(reg(&mut c, REG_MINUTES), 0x28);
        assert_eq!(reg(&mut c, REG_YEAR), 0x26);
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut c, REG_A) & 0x80, 0, "UIP clear");
        assert_eq!(reg(&mut c, REG_D), D_VALID);
        // Binary, 12-hour mode.
        c.write(0, &[REG_B]);
        c.write(1, &[B_BINARY]);
        assert_eq!(reg(&mut c, REG_HOURS), 9 | 0x80, "9 PM");
        assert_eq!(reg(&mut c, REG_MONTH), 11);
    }

    #[test]
    fn ram_is_kept_and_time_writes_are_ignored() {
        let mut c = Cmos::with_clock(fixed);
        c.write(0, &[0x80 | 0x40]); // NMI mask bit is not part of the index
        c.write(1, &[0xab]);
        assert_eq!(reg(&mut c, 0x40), 0xab);
        c.write(0, &[REG_MINUTES]);
        c.write(1, &[0x59]);
        assert_eq!(reg(&mut c, REG_MINUTES), 0x28);
        let mut wide = [0xffu8; 4];
        c.read(7, &mut wide);
        assert_eq!(wide, [0xff, 0, 0, 0]);
    }
}

//! The virtio-input configuration space (virtio 1.2 §5.8.4) of an absolute
//! tablet, and the Linux input event codes the device uses.
//!
//! ```text
//!  offset 0  select   (driver writes: what to describe)
//!         1  subsel   (driver writes: which sub-item, e.g. an event type)
//!         2  size     (device: bytes of `u` that are valid; 0 = not supported)
//!         3  reserved[5]
//!         8  u[128]   (string, bitmap, absinfo or devids)
//! ```
//! The driver writes `select` and `subsel`, then reads `size` and the
//! union. Everything here is a pure function of those two bytes: the answer
//! is computed at each read, so there is no other state to keep.

use virtio_bindings::virtio_input as vi;

/// Linux input event types, codes and bus numbers (`linux/input-event-codes.h`, `linux/input.h`).
pub mod codes {
    /// Event type: synchronization (end of a report).
    pub const EV_SYN: u16 = 0x00;
    /// Event type: keys and buttons.
    pub const EV_KEY: u16 = 0x01;
    /// Event type: absolute axes.
    pub const EV_ABS: u16 = 0x03;
    /// `EV_SYN` code: end of one report.
    pub const SYN_REPORT: u16 = 0;
    /// `EV_KEY` code: left mouse button.
    pub const BTN_LEFT: u16 = 0x110;
    /// `EV_KEY` code: right mouse button.
    pub const BTN_RIGHT: u16 = 0x111;
    /// `EV_KEY` code: middle mouse button.
    pub const BTN_MIDDLE: u16 = 0x112;
    /// `EV_ABS` code: X axis.
    pub const ABS_X: u16 = 0x00;
    /// `EV_ABS` code: Y axis.
    pub const ABS_Y: u16 = 0x01;
    /// Bus type of a virtual device (`BUS_VIRTUAL`).
    pub const BUS_VIRTUAL: u16 = 0x06;
}

use codes::*;

/// `select` values (virtio 1.2 §5.8.4), from `virtio-bindings`.
pub mod select {
    use super::vi;

    /// Nothing selected.
    pub const UNSET: u8 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_UNSET as u8;
    /// The device name (a string).
    pub const ID_NAME: u8 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ID_NAME as u8;
    /// The device serial (a string).
    pub const ID_SERIAL: u8 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ID_SERIAL as u8;
    /// Bus type, vendor, product and version (`virtio_input_devids`).
    pub const ID_DEVIDS: u8 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ID_DEVIDS as u8;
    /// Input device properties (a bitmap of `INPUT_PROP_*`).
    pub const PROP_BITS: u8 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_PROP_BITS as u8;
    /// The codes supported for event type `subsel` (a bitmap).
    pub const EV_BITS: u8 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_EV_BITS as u8;
    /// Range of absolute axis `subsel` (`virtio_input_absinfo`).
    pub const ABS_INFO: u8 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ABS_INFO as u8;
}

/// Offset of `select`.
pub const SELECT_OFFSET: u64 = 0;
/// Offset of `subsel`.
pub const SUBSEL_OFFSET: u64 = 1;
/// Offset of `size`.
pub const SIZE_OFFSET: usize = 2;
/// Offset of the 128-byte union.
pub const UNION_OFFSET: usize = 8;
/// Size of the union.
pub const UNION_SIZE: usize = 128;
/// Size of the whole configuration structure.
pub const CONFIG_SIZE: usize = UNION_OFFSET + UNION_SIZE;

/// `ID_NAME` of the tablet.
pub const NAME: &str = "Vireo Tablet";
/// `ID_SERIAL` of the tablet.
pub const SERIAL: &str = "vireo-tablet-0";
/// `ID_DEVIDS` vendor: 0x5649 (`"VI"`), not a registered USB vendor; the bus is
/// [`BUS_VIRTUAL`], where ids are only names.
pub const VENDOR: u16 = 0x5649;
/// `ID_DEVIDS` product: 1 = the absolute tablet.
pub const PRODUCT: u16 = 0x0001;
/// `ID_DEVIDS` version of this device model.
pub const VERSION: u16 = 0x0001;
/// Largest value of `ABS_X` / `ABS_Y` (the smallest is 0), as QEMU's tablet.
pub const ABS_MAX: u32 = 0x7fff;

/// The buttons the tablet reports, in RFB button-mask bit order (bit 0
/// left, bit 1 middle, bit 2 right).
pub const BUTTONS: [u16; 3] = [BTN_LEFT, BTN_MIDDLE, BTN_RIGHT];

/// The answer to (`select`, `subsel`): the valid bytes of the union (empty =
/// `size` 0, not supported).
///
/// `PROP_BITS` is empty, as QEMU's virtio-tablet: absolute X/Y with mouse
/// buttons and no `BTN_TOUCH` / stylus is what Linux (udev's `input_id`,
/// libinput) classifies as an absolute pointing device, and
/// `INPUT_PROP_POINTER` would mark it as a touchpad-like device instead.
pub fn answer(select: u8, subsel: u8) -> Vec<u8> {
    match select {
        select::ID_NAME if subsel == 0 => NAME.as_bytes().to_vec(),
        select::ID_SERIAL if subsel == 0 => SERIAL.as_bytes().to_vec(),
        select::ID_DEVIDS if subsel == 0 => [BUS_VIRTUAL, VENDOR, PRODUCT, VERSION]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        select::EV_BITS => match u16::from(subsel) {
            EV_KEY => bitmap(&BUTTONS),
            EV_ABS => bitmap(&[ABS_X, ABS_Y]),
            _ => Vec::new(),
        },
        select::ABS_INFO => match u16::from(subsel) {
            ABS_X | ABS_Y => {
                // min, max, fuzz, flat, res.
                [0, ABS_MAX, 0, 0, 0]
                    .iter()
                    .flat_map(|v: &u32| v.to_le_bytes())
                    .collect()
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// A bitmap with bit `c` set for each of `codes`, as short as the highest
/// set bit allows (all codes here are below `UNION_SIZE * 8`).
fn bitmap(codes: &[u16]) -> Vec<u8> {
    let len = codes
        .iter()
        .map(|&c| usize::from(c) / 8 + 1)
        .max()
        .unwrap_or(0);
    let mut b = vec![0u8; len.min(UNION_SIZE)];
    for &c in codes {
        if let Some(byte) = b.get_mut(usize::from(c) / 8) {
            *byte |= 1 << (c % 8);
        }
    }
    b
}

/// The whole configuration structure for (`select`, `subsel`).
pub fn image(select: u8, subsel: u8) -> [u8; CONFIG_SIZE] {
    let mut img = [0u8; CONFIG_SIZE];
    img[SELECT_OFFSET as usize] = select;
    img[SUBSEL_OFFSET as usize] = subsel;
    let data = answer(select, subsel);
    let n = data.len().min(UNION_SIZE);
    img[SIZE_OFFSET] = n as u8;
    img[UNION_OFFSET..UNION_OFFSET + n].copy_from_slice(&data[..n]);
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_tablet_description() {
        assert_eq!(image(select::ID_NAME, 0)[SIZE_OFFSET], 12);
        assert_eq!(&image(select::ID_NAME, 0)[8..20], b"Vireo Tablet");
        let keys = answer(select::EV_BITS, EV_KEY as u8);
        assert_eq!(keys.len(), 0x112 / 8 + 1);
        assert_eq!(keys[0x110 / 8], 0b111);
        assert!(keys[..0x110 / 8].iter().all(|&b| b == 0));
        assert_eq!(answer(select::EV_BITS, EV_ABS as u8), vec![0b11]);
        let abs = answer(select::ABS_INFO, ABS_Y as u8);
        assert_eq!(abs.len(), 20);
        assert_eq!(&abs[4..8], &0x7fffu32.to_le_bytes());
        assert_eq!(
            answer(select::ID_DEVIDS, 0),
            vec![0x06, 0, 0x49, 0x56, 1, 0, 1, 0]
        );
        for (s, sub) in [
            (select::UNSET, 0),
            (select::PROP_BITS, 0),
            (select::EV_BITS, 2),
            (select::ABS_INFO, 2),
            (select::ID_NAME, 1),
            (0xff, 0),
        ] {
            let img = image(s, sub);
            assert_eq!(img[SIZE_OFFSET], 0, "select {s} subsel {sub}");
            assert!(img[UNION_OFFSET..].iter().all(|&b| b == 0));
        }
    }
}

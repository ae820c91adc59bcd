//! Legacy PC devices on port I/O: the 8250 UART, the i8042 controller with
//! its PS/2 keyboard (and the keysym → scancode map that feeds it), the CMOS
//! real-time clock and the debug exit port.

pub mod cmos;
pub mod debug_exit;
pub mod i8042;
pub mod keymap;
pub mod persist;
pub mod serial;

pub use cmos::Cmos;
pub use debug_exit::DebugExit;
pub use i8042::{KeyboardInput, I8042};
pub use serial::Serial8250;

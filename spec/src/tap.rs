//! Tap interface names: the rule the kernel applies, checked before any syscall.

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1` bytes).
pub const MAX_TAP_NAME_LEN: usize = 15;

/// Why a string cannot name a tap interface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tap name {name:?}: {reason}")]
pub struct TapNameError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks that `name` is an interface name the kernel takes literally: non-empty, at most
/// [`MAX_TAP_NAME_LEN`] bytes, not `.` or `..`, and free of `/`, `:`, `%` (a name template),
/// whitespace and NUL.
pub fn check_tap_name(name: &str) -> Result<(), TapNameError> {
    let invalid = |reason| {
        Err(TapNameError {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_TAP_NAME_LEN {
        return invalid("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return invalid("`.` and `..` are not interface names");
    }
    if name.contains('\0') {
        return invalid("contains NUL");
    }
    if name.contains('/') || name.contains(':') {
        return invalid("contains `/` or `:`");
    }
    if name.contains('%') {
        return invalid("contains `%` (a name template; give the exact name)");
    }
    // The kernel's isspace() also counts 0x0b and 0xa0 (which can occur inside UTF-8 sequences).
    if name.chars().any(char::is_whitespace) || name.bytes().any(|b| b == 0x0b || b == 0xa0) {
        return invalid("contains whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_misread_are_refused() {
        for ok in ["tap0", "vtap-1", "a", "exactly15bytes_"] {
            assert_eq!(check_tap_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "sixteen_bytes_xx",
            ".",
            "..",
            "a/b",
            "a:b",
            "tap%d",
            "t p",
            "t\0",
            "t\u{a0}",
        ] {
            assert!(check_tap_name(bad).is_err(), "{bad:?}");
        }
    }
}

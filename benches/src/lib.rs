//! Helpers for Vireo's whole-VM benchmarks: finding the `vireo` binary,
//! reading a process's memory use, summarising samples, and a throwaway PKI
//! for TLS live migrations.

use std::path::{Path, PathBuf};

/// Locates the `vireo` binary: `$VIREO_BIN`, else next to the benchmark in
/// the same target profile directory (`target/release/vireo`).
pub fn vireo_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VIREO_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/<bench> → target/<profile>/vireo
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("vireo"))
        .ok_or("cannot derive the target directory")?;
    if candidate.exists() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} not found: build it first with `cargo build --release -p vireo-launcher` \
             or set VIREO_BIN",
            candidate.display()
        ))
    }
}

/// Resident memory of a process, split into guest RAM and the VMM's own.
#[derive(Debug, Clone, Copy)]
pub struct RssSplit {
    /// All resident memory of the process, KiB.
    pub total_kib: u64,
    /// Resident pages of the guest RAM mapping (pages the guest touched), KiB.
    pub guest_kib: u64,
}

impl RssSplit {
    /// The VMM's own resident memory: total minus guest RAM.
    pub fn vmm_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.guest_kib)
    }
}

/// Reads `/proc/PID/smaps` and attributes to the guest the one anonymous
/// mapping whose size equals `guest_bytes`.
pub fn rss_split(pid: u32, guest_bytes: u64) -> std::io::Result<RssSplit> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut total = 0;
    let mut guest = 0;
    let mut current_is_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            let (start, end) = first.split_once('-').unwrap_or(("0", "0"));
            let size = u64::from_str_radix(end, 16).unwrap_or(0)
                - u64::from_str_radix(start, 16).unwrap_or(0);
            let has_path = line.split_whitespace().nth(5).is_some();
            current_is_guest = size == guest_bytes && !has_path;
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total += kib;
            if current_is_guest {
                guest += kib;
            }
        }
    }
    Ok(RssSplit {
        total_kib: total,
        guest_kib: guest,
    })
}

/// Median of `samples` (sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// Writes a fresh CA to `DIR/ca/{ca.pem,key.pem}` and, for each name,
/// `DIR/<name>/{ca.pem,cert.pem,key.pem}` whose certificate is signed by that
/// CA, valid for `localhost`, `127.0.0.1` and `::1`, and usable both as a TLS
/// server and as a TLS client: the directories `tls_dir` / `--tls-dir` of a
/// `tls:` live migration expect. Returns the CA's directory (`DIR/ca`).
///
/// For benchmarks only (a copy of the vmm tests' helper); panics on any failure.
pub fn write_pki(dir: &Path, names: &[&str]) -> PathBuf {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Vireo bench CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let ca_dir = dir.join("ca");
    std::fs::create_dir_all(&ca_dir).expect("create the CA directory");
    std::fs::write(ca_dir.join("ca.pem"), ca_cert.pem()).expect("write ca/ca.pem");
    std::fs::write(ca_dir.join("key.pem"), ca_key.serialize_pem()).expect("write ca/key.pem");
    let issuer = Issuer::new(ca_params, ca_key);
    for name in names {
        let key = KeyPair::generate().expect("generate a node key");
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("node params");
        params.distinguished_name.push(DnType::CommonName, *name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &issuer)
            .expect("sign a node certificate");
        let node = dir.join(name);
        std::fs::create_dir_all(&node).expect("create a node directory");
        std::fs::write(node.join("ca.pem"), ca_cert.pem()).expect("write <name>/ca.pem");
        std::fs::write(node.join("cert.pem"), cert.pem()).expect("write <name>/cert.pem");
        std::fs::write(node.join("key.pem"), key.serialize_pem()).expect("write <name>/key.pem");
    }
    ca_dir
}

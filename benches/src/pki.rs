//! Test PKI: a fresh CA and node certificates signed by it, written as the
//! PEM files `vireo_vmm::migration::tls::TlsFiles::from_dir` expects (the
//! `tls_dir` of a `tls:` live migration). Shared by the benchmarks and, by
//! path, the vmm crate's integration tests.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Writes a fresh CA to `DIR/ca/{ca.pem,key.pem}` and, for each name,
/// `DIR/<name>/{ca.pem,cert.pem,key.pem}` whose certificate is signed by that
/// CA, valid for `localhost`, `127.0.0.1` and `::1`, and usable both as a TLS
/// server and as a TLS client. Returns the CA's directory (`DIR/ca`).
///
/// For tests, benchmarks and local trials only; production nodes bring their
/// own PKI. Panics on any failure.
pub fn write_pki(dir: &Path, names: &[&str]) -> PathBuf {
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Vireo test CA");
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

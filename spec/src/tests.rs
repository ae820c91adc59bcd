//! Tests of the launch spec as a whole: its JSON shape, the loader and every validation rule.

use super::*;

const HOST: HostLimits = HostLimits {
    max_vcpus: 8,
    ram_mib: 4096,
};

fn load(json: &str) -> Result<VmConfig, LoadError> {
    VmConfig::from_json(json)
}

fn invalid(json: &str) -> ConfigError {
    match load(json) {
        Err(LoadError::Invalid(e)) => e,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn spec_json_round_trips_in_the_documented_shape() {
    let json = r#"{"vcpus":2,"memory_mib":512,
        "payload":{"kernel":"/k","cmdline":"console=ttyS0"},
        "serial":{"mode":"unix","path":"/run/s.sock"},
        "disks":[{"path":"/d.qcow2","format":"qcow2"}],
        "nets":[{"tap":"vt0","mac":"52:54:00:12:34:56"}]}"#;
    let cfg = load(json).expect("parse");
    assert_eq!(cfg.version, SPEC_VERSION);
    assert_eq!(cfg.vcpus, 2);
    assert_eq!(
        cfg.serial,
        SerialConfig::Unix {
            path: "/run/s.sock".into(),
            stdout: false,
        }
    );
    assert_eq!(cfg.disks[0].format, Some(DiskFormat::Qcow2));
    assert_eq!(
        cfg.nets[0].mac.map(|m| m.to_string()).as_deref(),
        Some("52:54:00:12:34:56")
    );
    let text = serde_json::to_string(&cfg).expect("ser");
    assert!(text.contains(r#""version":1"#), "{text}");
    assert_eq!(load(&text).expect("again"), cfg);
}

#[test]
fn unix_serial_stdout_copy_is_read_and_written_only_when_set() {
    let base = r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":"#;
    let on = load(&format!(
        r#"{base}{{"mode":"unix","path":"/s","stdout":true}}}}"#
    ))
    .expect("on");
    assert_eq!(
        on.serial,
        SerialConfig::Unix {
            path: "/s".into(),
            stdout: true,
        }
    );
    let text = serde_json::to_string(&on.serial).expect("ser");
    assert_eq!(text, r#"{"mode":"unix","path":"/s","stdout":true}"#);
    assert_eq!(
        load(&serde_json::to_string(&on).expect("ser")).expect("again"),
        on
    );

    let off = load(&format!(
        r#"{base}{{"mode":"unix","path":"/s","stdout":false}}}}"#
    ))
    .expect("off");
    let absent = load(&format!(r#"{base}{{"mode":"unix","path":"/s"}}}}"#)).expect("absent");
    assert_eq!(off, absent);
    assert_eq!(
        serde_json::to_string(&off.serial).expect("ser"),
        r#"{"mode":"unix","path":"/s"}"#
    );
}

#[test]
fn unknown_fields_are_rejected_at_every_level() {
    for json in [
        r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"floppies":[]}"#,
        r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k","floppies":1}}"#,
        r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"disks":[{"path":"/d","floppies":1}]}"#,
        r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"nets":[{"tap":"t","floppies":1}]}"#,
        r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"off","floppies":1}}"#,
        r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"unix","path":"/s","floppies":1}}"#,
    ] {
        let err = load(json).expect_err("unknown field");
        assert!(matches!(err, LoadError::Json(_)), "{json}: {err:?}");
        assert!(err.to_string().contains("floppies"), "{err}");
    }
}

#[test]
fn another_version_is_refused_by_its_version_first() {
    // A newer writer's spec, with a field this version does not know: the version is named.
    let json = r#"{"version":2,"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"vnc":{}}"#;
    let e = invalid(json);
    assert_eq!(e, ConfigError::UnsupportedVersion { found: 2 });
    assert_eq!(e.field(), Field::Version);
    assert!(e.to_string().contains("version 2"), "{e}");
    assert!(matches!(
        invalid(r#"{"version":"one","vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"}}"#),
        ConfigError::UnsupportedVersion { .. }
    ));
}

#[test]
fn typed_fields_refuse_bad_values_when_parsed() {
    for (json, needle) in [
        (
            r#"{"vcpus":300,"memory_mib":64,"payload":{"kernel":"/k"}}"#,
            "300",
        ),
        (
            r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"disks":[{"path":"/d","format":"vmdk"}]}"#,
            "vmdk",
        ),
        (
            r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"nets":[{"tap":"t","mac":"01:00:5e:00:00:01"}]}"#,
            "multicast",
        ),
        (
            r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"tcp"}}"#,
            "tcp",
        ),
        (
            r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"off","path":"/s"}}"#,
            "path",
        ),
        (
            r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"file"}}"#,
            "path",
        ),
        (
            r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"file","path":"/f","stdout":true}}"#,
            "only serial mode unix takes stdout",
        ),
        (
            r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"stdio","stdout":false}}"#,
            "stdout",
        ),
        (
            r#"{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"unix","path":"/s","stdout":"yes"}}"#,
            "expected a boolean",
        ),
    ] {
        let err = load(json).expect_err(json);
        assert!(err.to_string().contains(needle), "{json}: {err}");
    }
}

#[test]
fn validation_names_each_problem_and_its_field() {
    let base = VmConfig::new("/k");
    assert_eq!(base.validate(), Ok(()));
    assert_eq!(base.validate_on(&HOST), Ok(()));
    let check = |edit: &dyn Fn(&mut VmConfig), field: Field| {
        let mut c = base.clone();
        edit(&mut c);
        let e = c.validate_on(&HOST).expect_err("must be refused");
        assert_eq!(e.field(), field, "{e}");
        e
    };
    assert_eq!(check(&|c| c.vcpus = 0, Field::Vcpus), ConfigError::NoVcpus);
    assert!(matches!(
        check(&|c| c.vcpus = 255, Field::Vcpus),
        ConfigError::TooManyVcpus { host: false, .. }
    ));
    assert!(matches!(
        check(&|c| c.vcpus = 9, Field::Vcpus),
        ConfigError::TooManyVcpus { host: true, .. }
    ));
    check(&|c| c.memory_mib = 7, Field::MemoryMib);
    check(&|c| c.memory_mib = MAX_MEMORY_MIB + 1, Field::MemoryMib);
    assert!(matches!(
        check(&|c| c.memory_mib = 8192, Field::MemoryMib),
        ConfigError::MemoryExceedsHost { .. }
    ));
    check(&|c| c.payload.kernel = "".into(), Field::Kernel);
    check(
        &|c| {
            c.serial = SerialConfig::Unix {
                path: "/".repeat(108).into(),
                stdout: false,
            }
        },
        Field::SerialPath,
    );
    check(
        &|c| c.serial = SerialConfig::File { path: "".into() },
        Field::SerialPath,
    );
    check(&|c| c.api_socket = Some("".into()), Field::ApiSocket);
    let disk = |p: &str| DiskConfig {
        path: p.into(),
        format: None,
        readonly: false,
    };
    let net = |t: &str, m: Option<&str>| NetConfig {
        tap: t.into(),
        mac: m.map(|m| m.parse().expect("mac")),
    };
    check(
        &|c| c.disks = vec![disk("/a"), disk("/a")],
        Field::DiskPath(1),
    );
    check(&|c| c.disks = vec![disk("")], Field::DiskPath(0));
    check(
        &|c| {
            c.disks = (0..=MAX_PCI_DEVICES)
                .map(|i| disk(&format!("/d{i}")))
                .collect()
        },
        Field::Disks,
    );
    check(
        &|c| c.nets = vec![net("t0", None), net("t0", None)],
        Field::NetTap(1),
    );
    check(&|c| c.nets = vec![net("tap%d", None)], Field::NetTap(0));
    let m = Some("52:54:00:12:34:56");
    check(
        &|c| c.nets = vec![net("t0", m), net("t1", m)],
        Field::NetMac(1),
    );
    let mut full = base.clone();
    full.disks = (0..30).map(|i| disk(&format!("/d{i}"))).collect();
    full.nets = vec![net("t0", m)];
    assert_eq!(full.validate_on(&HOST), Ok(()));
}

#[test]
fn field_paths_are_the_json_paths() {
    assert_eq!(Field::DiskPath(3).to_string(), "disks[3].path");
    assert_eq!(Field::NetMac(0).to_string(), "nets[0].mac");
    assert_eq!(Field::Kernel.to_string(), "payload.kernel");
}

#[test]
fn vnc_checks() {
    use crate::{DirtyLogMode, VncConfig};
    let mut c = VmConfig::new("/k");
    c.vnc = Some(VncConfig::new(":5900".parse().expect("addr")));
    assert_eq!(c.validate(), Ok(()));
    let json = serde_json::to_string(&c).expect("json");
    assert_eq!(VmConfig::from_json(&json).expect("parse"), c);
    for (w, h) in [(1020, 768), (32, 768), (1024, 5000), (4096, 4096)] {
        let mut bad = c.clone();
        if let Some(v) = bad.vnc.as_mut() {
            v.width = w;
            v.height = h;
        }
        let err = bad.validate().expect_err("bad size");
        assert_eq!(err.field(), Field::Vnc);
    }
    let mut ring = c.clone();
    ring.dirty_log = DirtyLogMode::Ring;
    assert_eq!(ring.validate(), Err(ConfigError::VncWithDirtyRing));
    let mut long = c.clone();
    long.vnc = Some(VncConfig::new(
        format!("unix:/{}", "x".repeat(200)).parse().expect("addr"),
    ));
    assert_eq!(long.validate().map_err(|e| e.field()), Err(Field::Vnc));
}

//! Benchmark: time from creating a VirtualMachine to its launcher Pod existing.
//!
//! Starts a real local control plane (`scripts/k8s-control-plane.sh build` must have run), runs
//! the controller in-process, and measures with a pod watch:
//! * sequential — create one VM, wait for its pod, repeat (`--count` times);
//! * burst — create `--count` VMs at once, time each one's pod.
//!
//! `cargo run --release -p vireo-controller --example create_latency -- --count 50`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::{Mutex, Notify};
use vireo_controller::crd::vm::VirtualMachine;
use vireo_controller::crd::vmruntime::VMRuntime;
use vireo_controller::test_cluster::TestCluster;
use vireo_controller::ControllerConfig;

/// Flags.
#[derive(Parser)]
struct Args {
    /// VMs per mode.
    #[arg(long, default_value_t = 50)]
    count: usize,
}

type Seen = Arc<(Mutex<HashMap<String, Instant>>, Notify)>;

fn vm(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "vireo.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": { "name": name },
        "spec": { "runStrategy": "Always", "template": { "spec": {
            "domain": {
                "cpu": { "cores": 1 }, "memory": { "guest": "256Mi" },
                "firmware": { "kernelBoot": { "kernel": "/boot/vmlinuz" } },
                "devices": { "disks": [ { "name": "root" } ] },
            },
            "volumes": [ { "name": "root", "containerDisk": { "image": "example/root" } } ],
        }}},
    })
}

async fn wait_pod(seen: &Seen, pod: &str) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let notified = seen.1.notified();
        if let Some(t) = seen.0.lock().await.get(pod) {
            return Ok(*t);
        }
        if Instant::now() > deadline {
            bail!("pod {pod} never appeared");
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
    }
}

fn report(mode: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{mode:<10} n={:<3} median={:7.1} ms  p95={:7.1} ms  max={:7.1} ms  mean={:7.1} ms",
        ms.len(),
        pct(0.5),
        pct(0.95),
        ms[ms.len() - 1],
        mean
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t = Instant::now();
    let cluster = TestCluster::start().context("starting control plane")?;
    eprintln!("control plane up in {:.1} s", t.elapsed().as_secs_f64());
    let client = cluster.client().await?;
    let ns = "bench";
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({ "metadata": { "name": ns } }))?,
    )
    .await?;
    let rt: VMRuntime = serde_json::from_value(json!({
        "apiVersion": "vireo.dev/v1alpha1", "kind": "VMRuntime",
        "metadata": { "name": "bench" }, "spec": { "enabled": true, "useEmulation": true },
    }))?;
    let rts: Api<VMRuntime> = Api::all(client.clone());
    rts.patch(
        "bench",
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&rt),
    )
    .await?;
    let config = ControllerConfig {
        namespace: Some(ns.into()),
        runtime_name: "bench".into(),
        system_namespace: ns.into(),
        ..Default::default()
    };
    let ctl = tokio::spawn(vireo_controller::run(client.clone(), config));
    while !rts.get("bench").await?.status.is_some_and(|s| s.ready) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let seen: Seen = Arc::new((Mutex::new(HashMap::new()), Notify::new()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let s2 = seen.clone();
    tokio::spawn(async move {
        let mut w = watcher(pods, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(p)) = w.next().await {
            if let Some(name) = p.metadata.name {
                s2.0.lock().await.entry(name).or_insert_with(Instant::now);
                s2.1.notify_waiters();
            }
        }
    });
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    // Warm-up: the first VM also pays for connection setup and watch establishment.
    vms.create(
        &PostParams::default(),
        &serde_json::from_value(vm("warmup"))?,
    )
    .await?;
    wait_pod(&seen, "vireo-launcher-warmup").await?;

    let mut seq = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let name = format!("seq-{i}");
        let t0 = Instant::now();
        vms.create(&PostParams::default(), &serde_json::from_value(vm(&name))?)
            .await?;
        let t1 = wait_pod(&seen, &format!("vireo-launcher-{name}")).await?;
        seq.push(t1.duration_since(t0).as_secs_f64() * 1e3);
    }
    report("sequential", seq);

    let mut handles = Vec::new();
    for i in 0..args.count {
        let vms = vms.clone();
        let seen = seen.clone();
        handles.push(tokio::spawn(async move {
            let name = format!("burst-{i}");
            let t0 = Instant::now();
            vms.create(&PostParams::default(), &serde_json::from_value(vm(&name))?)
                .await?;
            let t1 = wait_pod(&seen, &format!("vireo-launcher-{name}")).await?;
            anyhow::Ok(t1.duration_since(t0).as_secs_f64() * 1e3)
        }));
    }
    let mut burst = Vec::new();
    for h in handles {
        burst.push(h.await??);
    }
    report("burst", burst);
    ctl.abort();
    Ok(())
}

//! A throwaway local control plane (etcd + kube-apiserver + kube-controller-manager) for
//! integration tests and benchmarks, started through `scripts/k8s-control-plane.sh`.
//!
//! [`TestCluster::start`] runs the script's `start` in a fresh temporary directory with free
//! ports, applies [`crate::crd::crds_yaml`] *before* kube-controller-manager starts (so its
//! garbage collector knows the Vireo kinds from the beginning), and passes `--watch-pid` with the
//! current process id: a detached watchdog stops the three processes and removes the directory
//! when this process exits, however it exits. Nothing here is mocked; if the cached binaries are
//! missing, [`TestCluster::start`] fails and says how to build them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Why a test cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestClusterError {
    /// The control-plane binaries are not in the cache.
    #[error(
        "Kubernetes control-plane binaries not found in {0}; build them once with \
         `bash scripts/k8s-control-plane.sh build` (about 5 minutes, cached outside git)"
    )]
    NotBuilt(PathBuf),
    /// Local I/O failed.
    #[error("test cluster I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The start script failed.
    #[error("k8s-control-plane.sh start failed: {0}")]
    Start(String),
    /// CRDs could not be rendered.
    #[error("rendering CRDs: {0}")]
    Crds(#[from] serde_yaml::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

/// A running local control plane.
#[derive(Debug, Clone)]
pub struct TestCluster {
    /// Path of the admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Directory of the cached binaries (kubectl lives here too).
    pub bin_dir: PathBuf,
    /// Run directory (logs, pidfiles, certificates).
    pub run_dir: PathBuf,
}

/// Directory of the cached control-plane binaries (`$VIREO_CACHE/k8s/bin`, default
/// `~/.cache/vireo/k8s/bin`).
pub fn bin_dir() -> PathBuf {
    let cache = std::env::var_os("VIREO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/vireo")
        });
    cache.join("k8s/bin")
}

/// Path of the control-plane script in this repository.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-control-plane.sh")
}

impl TestCluster {
    /// Starts a new control plane with the Vireo CRDs applied.
    pub fn start() -> Result<Self, TestClusterError> {
        let bin_dir = bin_dir();
        let needed = [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
        ];
        if !needed.iter().all(|b| bin_dir.join(b).exists()) {
            return Err(TestClusterError::NotBuilt(bin_dir));
        }
        let run_dir = tempfile::Builder::new()
            .prefix("vireo-k8s-")
            .tempdir()?
            .keep();
        let crds = run_dir.join("crds.yaml");
        std::fs::write(&crds, crate::crd::crds_yaml()?)?;
        let out = Command::new("bash")
            .arg(script_path())
            .arg("start")
            .arg("--dir")
            .arg(&run_dir)
            .arg("--crds")
            .arg(&crds)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .output()?;
        if !out.status.success() {
            return Err(TestClusterError::Start(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Self {
            kubeconfig,
            bin_dir,
            run_dir,
        })
    }

    /// A client for this cluster (build one per tokio runtime).
    pub async fn client(&self) -> Result<kube::Client, TestClusterError> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| TestClusterError::Kubeconfig(e.to_string()))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| TestClusterError::Kubeconfig(e.to_string()))?;
        kube::Client::try_from(cfg).map_err(|e| TestClusterError::Kubeconfig(e.to_string()))
    }

    /// Runs the cluster's `kubectl` (v1.20, from Debian) with `args`.
    ///
    /// It uses its own discovery cache: the one `start` filled while applying the CRDs predates
    /// them and kubectl 1.20 would not notice the new kinds for ten minutes.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output, TestClusterError> {
        Ok(Command::new(self.bin_dir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.run_dir.join("kubectl-cache"))
            .args(args)
            .output()?)
    }
}

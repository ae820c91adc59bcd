//! Vireo's Kubernetes layer: CRD types, reconcilers and user requests.
//!
//! ```text
//! crd/         wire types of vm, vmi, vmim, vmruntime (+ `crd` YAML rendering)
//! validation   field-named spec errors (no admission webhook: the controller validates)
//! launch_spec  VMI → the launcher's VmConfig JSON
//! pod          VMI → launcher Pod (pure builder)
//! reconcile/   one kube-runtime Controller per kind; [`run`] drives all four
//! requests     start/stop/restart/pause/unpause, as the `vireo vm …` CLI issues them
//! launcher_link a running launcher's control API, console and VNC through pod port-forwards
//! console      `vireo vm console` and `vireo vm vnc`: local ends of those port-forwards
//! cli          clap definitions of the `vireo-controller` binary
//! test_cluster a real local control plane for tests and benchmarks
//! ```
//!
//! The crate never links the VMM: it talks to launchers only through the launch spec in their
//! pods and, once they run, through port-forwards the apiserver authorizes
//! ([`launcher_link`]).

pub mod cli;
pub mod console;
pub mod crd;
pub mod error;
pub mod launch_spec;
pub mod launcher_link;
pub mod pod;
pub mod reconcile;
pub mod requests;
pub mod test_cluster;
pub mod validation;

pub use error::{Error, Result};
pub use reconcile::{run, ControllerConfig};

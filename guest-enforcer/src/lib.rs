//! `airlock-enforcer`: the guest side of Airlock.
//!
//! One module per enforcement layer, each usable from the PID-1 enforcer in the VM and
//! from the launcher's process-isolation mode, which runs the same code on the host:
//! - [`identity`]: unprivileged uid/gid, every capability set empty, no_new_privs;
//! - [`limits`]: rlimits (core dumps always off);
//! - [`cgroup`]: a cgroup v2 leaf bounding the agent's whole tree;
//! - [`landlock`]: filesystem, TCP and IPC-scope rules;
//! - [`seccomp`]: the system calls the agent may not make;
//! - [`broker`] and [`shim`]: the approval path for tools;
//! - [`sandbox`]: the layers together, for the agent and for each brokered tool;
//! - [`manifest_layers`]: a verified manifest resolved into a sandbox and tools, with
//!   every unusable name refused before anything runs;
//! - [`guest_init`]: PID 1's groundwork in the VM (filesystems, modules, identity);
//! - [`guest_apply`]: `Apply` in the VM (clock, verification, layers prepared);
//! - [`guest_exec`]: `Exec` and `Signal` in the VM (a command as the agent, output
//!   streamed);
//! - [`guest_collect`]: `Collect` in the VM (output files back to the host, no symlink
//!   followed);
//! - [`host_channel`]: the `Enforcer` gRPC service on vsock;
//! - [`host_asker`]: run-time asks sent to the launcher's `Host` service;
//! - [`session`]: the broker and the agent run to the end (VM and process mode alike);
//! - [`pidfd`]: process handles that survive pid reuse (signal, wait for the exit);
//! - [`process_isolation`]: the same session on a host kernel, in fresh namespaces with
//!   only the granted paths mounted (`airlock run --isolation process`).
//!
//! Each layer is *prepared* in the enforcer (where failures are reported) and *applied*
//! in the agent's process right before exec with no allocation, so it is safe to run
//! between `fork` and `exec`.

pub mod broker;
pub mod cgroup;
pub mod egress_funnel;
pub mod git_hardening;
pub mod guest_apply;
pub mod guest_collect;
pub mod guest_exec;
pub mod guest_init;
pub mod host_asker;
pub mod host_channel;
pub mod identity;
pub mod landlock;
pub mod limits;
pub mod manifest_layers;
pub mod net_interfaces;
pub mod netfilter;
pub mod no_exec;
pub mod no_symlinks;
pub use airlock_proto::pidfd;
pub mod process_isolation;
pub mod sandbox;
pub mod seccomp;
pub mod session;
pub mod shim;
pub mod stub_dns;
pub mod workspace_layer;

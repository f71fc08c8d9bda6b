//! `shoal-manager` owns the leader-only control loops that turn desired state into tasks: the
//! orchestrators for replicated, global, replicated-job and global-job services, the restart
//! supervisor, the updater (rolling update and rollback), the task reaper, an allocator step for
//! published ports, and the scheduler. Each loop is a watcher of `shoal-store` events that reads
//! and writes only through store transactions; none calls another, and none touches containers
//! or HTTP. The decisions themselves live in pure modules ([`constraint`], [`scheduler`],
//! [`orchestrator`], [`restart`], [`update`], [`reaper`], [`allocator`]) that are tested without
//! a store; [`Manager::start`] wires them onto a [`shoal_store::Store`].
//!
//! Task states the manager sets: NEW ("created", orchestrators), PENDING ("pending task
//! scheduling", allocator), ASSIGNED ("scheduler assigned task to node", scheduler), and SHUTDOWN
//! for a PENDING task that is no longer wanted; desired states RUNNING, READY (delayed start),
//! SHUTDOWN and REMOVE. Everything from ACCEPTED on is the agent's.
//!
//! The API uses [`constraint::validate_constraints`] and [`allocator::check_port_conflicts`] to
//! reject bad specs, and [`orchestrator::jobs::bump_iteration`] on job updates.

pub mod allocator;
pub mod constraint;
pub mod netalloc;
mod error;
mod loops;
pub mod orchestrator;
pub mod reaper;
pub mod restart;
pub mod scheduler;
pub mod update;

pub use error::{ErrorKind, ManagerError};
pub use loops::{Manager, ManagerConfig, ManagerHandle};
pub use orchestrator::{is_task_dirty, new_task};
pub use update::UpdaterConfig;

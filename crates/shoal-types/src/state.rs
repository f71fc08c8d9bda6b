//! Task state machine values (swarmkit `api/types.proto` `TaskState`).

use crate::util::str_enum;

str_enum! {
    /// Observed/desired task state. Serialises as the lower-case names the docker CLI knows.
    /// `Ord` follows swarmkit's numeric order (see [`TaskState::value`]); a task's observed state
    /// only ever increases.
    TaskState {
        New = "new",
        Allocated = "allocated",
        Pending = "pending",
        Assigned = "assigned",
        Accepted = "accepted",
        Preparing = "preparing",
        Ready = "ready",
        Starting = "starting",
        Running = "running",
        Complete = "complete",
        Shutdown = "shutdown",
        Failed = "failed",
        Rejected = "rejected",
        Remove = "remove",
        Orphaned = "orphaned",
    } default New
}

impl TaskState {
    /// swarmkit's numeric value. `Allocated` no longer exists in swarmkit; it is placed at 32,
    /// between `New` and `Pending`, as the docker CLI's progress order has it.
    pub fn value(&self) -> u32 {
        match self {
            TaskState::New => 0,
            TaskState::Allocated => 32,
            TaskState::Pending => 64,
            TaskState::Assigned => 192,
            TaskState::Accepted => 256,
            TaskState::Preparing => 320,
            TaskState::Ready => 384,
            TaskState::Starting => 448,
            TaskState::Running => 512,
            TaskState::Complete => 576,
            TaskState::Shutdown => 640,
            TaskState::Failed => 704,
            TaskState::Rejected => 768,
            TaskState::Remove => 800,
            TaskState::Orphaned => 832,
        }
    }

    /// Inverse of [`TaskState::value`].
    pub fn from_value(v: u32) -> Option<TaskState> {
        TaskState::ALL.iter().copied().find(|s| s.value() == v)
    }

    /// Past `running`: complete, shutdown, failed, rejected, remove, orphaned.
    pub fn is_terminal(&self) -> bool {
        *self > TaskState::Running
    }

    /// Swarmkit's standard `Status.Message` for a state (`manager/orchestrator/task.go`,
    /// scheduler, `agent/exec/controller.go`).
    pub fn default_message(&self) -> &'static str {
        match self {
            TaskState::New => "created",
            TaskState::Allocated => "allocated",
            TaskState::Pending => "pending task scheduling",
            TaskState::Assigned => "scheduler assigned task to node",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "prepared",
            TaskState::Starting => "starting",
            TaskState::Running => "started",
            TaskState::Complete => "finished",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }
}

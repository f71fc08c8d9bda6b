//! The task state machine as pure functions (swarmkit `agent/exec/controller.go` `Do`).
//!
//! Observed state only moves forward. The agent never goes past the desired state, except that
//! PREPARING→READY and STARTING→RUNNING→COMPLETE/FAILED may run ahead of it (so a task whose
//! desired state is READY is pre-pulled and created but not started).

use shoal_types::TaskState;

/// What the controller does next for a task in `observed` state with `desired` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Report this state; no side effect (ACCEPTED, PREPARING, STARTING).
    Transition(TaskState),
    /// Make the image present and create the container, then report READY.
    Prepare,
    /// Start the container, then report RUNNING.
    Start,
    /// Wait for the container to exit, then report COMPLETE or FAILED.
    Wait,
    /// Stop the container, then report SHUTDOWN.
    Shutdown,
    /// Nothing to do until the task changes.
    Idle,
}

/// The next step of `Do` for `observed`/`desired`.
pub fn next_step(observed: TaskState, desired: TaskState) -> Step {
    use TaskState::*;
    if observed > Running {
        return Step::Idle;
    }
    if desired >= Shutdown {
        return Step::Shutdown;
    }
    // Only PREPARING, STARTING and RUNNING may run ahead of the desired state.
    let proceed = observed < desired || matches!(observed, Preparing | Starting | Running);
    if !proceed {
        return Step::Idle;
    }
    match observed {
        New | Allocated | Pending | Assigned => Step::Transition(Accepted),
        Accepted => Step::Transition(Preparing),
        Preparing => Step::Prepare,
        Ready => Step::Transition(Starting),
        Starting => Step::Start,
        Running => Step::Wait,
        _ => Step::Idle,
    }
}

/// The state a fatal error leads to: REJECTED before STARTING, FAILED at or after it.
pub fn failure_state(observed: TaskState) -> TaskState {
    if observed < TaskState::Starting {
        TaskState::Rejected
    } else {
        TaskState::Failed
    }
}

/// moby's `ErrContainerUnhealthy` (`daemon/cluster/executor/container/errors.go`): the cause
/// of a task whose container was stopped because its healthcheck failed.
pub const ERR_CONTAINER_UNHEALTHY: &str = "dockerexec: unhealthy container";

/// The state a container exit leads to, with the error text (`task: non-zero exit (N)`).
pub fn exit_state(exit_code: i64) -> (TaskState, String) {
    exit_state_with_cause(exit_code, None)
}

/// Like [`exit_state`], with moby's `exitError` cause appended to a non-zero exit
/// (`task: non-zero exit (137): dockerexec: unhealthy container`).
pub fn exit_state_with_cause(exit_code: i64, cause: Option<&str>) -> (TaskState, String) {
    if exit_code == 0 {
        return (TaskState::Complete, String::new());
    }
    (TaskState::Failed, exit_error(exit_code, cause))
}

/// moby's `exitError.Error()`.
pub fn exit_error(exit_code: i64, cause: Option<&str>) -> String {
    match cause {
        Some(c) => format!("task: non-zero exit ({exit_code}): {c}"),
        None => format!("task: non-zero exit ({exit_code})"),
    }
}

/// Whether a status in `next` may be reported after one in `current` (never backwards).
pub fn may_report(current: TaskState, next: TaskState) -> bool {
    next >= current
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn walks_to_running_when_desired_running() {
        let mut s = Assigned;
        let mut seen = vec![];
        for _ in 0..10 {
            let step = next_step(s, Running);
            seen.push(step);
            s = match step {
                Step::Transition(n) => n,
                Step::Prepare => Ready,
                Step::Start => Running,
                Step::Wait => Complete,
                _ => break,
            };
        }
        assert_eq!(
            seen,
            vec![
                Step::Transition(Accepted),
                Step::Transition(Preparing),
                Step::Prepare,
                Step::Transition(Starting),
                Step::Start,
                Step::Wait,
                Step::Idle
            ]
        );
    }

    #[test]
    fn desired_ready_prepares_but_does_not_start() {
        assert_eq!(next_step(Assigned, Ready), Step::Transition(Accepted));
        assert_eq!(next_step(Accepted, Ready), Step::Transition(Preparing));
        assert_eq!(next_step(Preparing, Ready), Step::Prepare);
        assert_eq!(next_step(Ready, Ready), Step::Idle);
        assert_eq!(next_step(Ready, Running), Step::Transition(Starting));
        // Starting/Running may run ahead of desired state.
        assert_eq!(next_step(Starting, Ready), Step::Start);
        assert_eq!(next_step(Running, Ready), Step::Wait);
    }

    #[test]
    fn shutdown_wins_until_finished() {
        for s in [Assigned, Accepted, Preparing, Ready, Starting, Running] {
            assert_eq!(next_step(s, Shutdown), Step::Shutdown, "{s}");
            assert_eq!(next_step(s, Remove), Step::Shutdown, "{s}");
        }
        for s in [Complete, Shutdown, Failed, Rejected, Orphaned] {
            assert_eq!(next_step(s, Running), Step::Idle, "{s}");
            assert_eq!(next_step(s, Shutdown), Step::Idle, "{s}");
        }
    }

    #[test]
    fn failures_and_exits() {
        for s in [Assigned, Accepted, Preparing, Ready] {
            assert_eq!(failure_state(s), Rejected);
        }
        for s in [Starting, Running] {
            assert_eq!(failure_state(s), Failed);
        }
        assert_eq!(exit_state(0), (Complete, String::new()));
        assert_eq!(exit_state(137), (Failed, "task: non-zero exit (137)".to_string()));
        assert_eq!(
            exit_state_with_cause(137, Some(ERR_CONTAINER_UNHEALTHY)),
            (Failed, "task: non-zero exit (137): dockerexec: unhealthy container".to_string())
        );
        assert_eq!(exit_state_with_cause(0, Some(ERR_CONTAINER_UNHEALTHY)), (Complete, String::new()));
        assert!(may_report(Running, Running));
        assert!(may_report(Running, Failed));
        assert!(!may_report(Running, Starting));
        assert!(!may_report(Failed, Shutdown));
    }
}

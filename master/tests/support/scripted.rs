//! A scripted `Interface` for deterministic tests of the master's races, in the spirit of
//! hyperqueue's test `Comm`: no processes, no threads of its own. The test decides when a
//! worker is free, when each task ends and how, and sees every call the master made
//! (`execute_task`, `cancel`, `shutdown`), so completion-versus-cancel-versus-stop orders can
//! be played exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw::{
    Completion, Execution, ExitInfo, Interface, InterfaceError, PreparedTask, TaskId, WorkerId,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// Free workers; `reserve_worker` blocks while there are none.
    free: usize,
    running: HashMap<TaskId, Completion>,
    started: Vec<TaskId>,
    cancels: Vec<TaskId>,
    shut_down: bool,
}

/// The scripted interface. Clone the `Arc` to keep a handle for the test.
pub struct Scripted {
    state: Mutex<State>,
    cond: Condvar,
    detach: bool,
}

impl Scripted {
    /// `workers` free workers; `detach`: tasks outlive the master (like Condor/BOINC).
    pub fn new(workers: usize, detach: bool) -> Arc<Scripted> {
        Arc::new(Scripted {
            state: Mutex::new(State {
                free: workers,
                ..State::default()
            }),
            cond: Condvar::new(),
            detach,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Waits (bounded) until `n` tasks have been started in total.
    pub fn wait_started(&self, n: usize) -> Vec<TaskId> {
        let st = self.lock();
        let (st, timeout) = self
            .cond
            .wait_timeout_while(st, Duration::from_secs(60), |s| s.started.len() < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "only {} of {n} tasks started",
            st.started.len()
        );
        st.started.clone()
    }

    /// Tasks started so far.
    pub fn started(&self) -> Vec<TaskId> {
        self.lock().started.clone()
    }

    /// Cancels the master asked for.
    pub fn cancels(&self) -> Vec<TaskId> {
        self.lock().cancels.clone()
    }

    /// Ends running task `t` with `outcome` and frees its worker.
    pub fn finish(&self, t: TaskId, outcome: Result<Execution, InterfaceError>) {
        let done = {
            let mut st = self.lock();
            st.free += 1;
            st.running.remove(&t)
        };
        self.cond.notify_all();
        done.unwrap_or_else(|| panic!("{t} is not running"))
            .finish(outcome);
    }

    /// Ends running task `t` successfully with `stdout`.
    pub fn succeed(&self, t: TaskId, stdout: &str) {
        self.finish(t, Ok(ok_execution(stdout)));
    }
}

/// A successful execution printing `stdout`.
pub fn ok_execution(stdout: &str) -> Execution {
    Execution {
        exit: ExitInfo::Exited { code: 0 },
        stdout: stdout.as_bytes().to_vec(),
        stderr_tail: String::new(),
        wall: Duration::from_millis(1),
        cpu: Duration::ZERO,
        host: "scripted".into(),
        started: None,
        output_files: Vec::new(),
        missing_outputs: Vec::new(),
    }
}

impl Interface for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn reserve_worker(&self, _task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
        let mut st = self.lock();
        loop {
            if st.shut_down {
                return Err(InterfaceError::new("shut down"));
            }
            if st.free > 0 {
                st.free -= 1;
                return Ok(WorkerId(0));
            }
            st = self.cond.wait(st).unwrap();
        }
    }

    fn execute_task(&self, task: Arc<PreparedTask>, _worker: WorkerId, done: Completion) {
        let mut st = self.lock();
        st.started.push(task.id);
        st.running.insert(task.id, done);
        drop(st);
        self.cond.notify_all();
    }

    fn status(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn cancel(&self, task: TaskId) {
        let done = {
            let mut st = self.lock();
            st.cancels.push(task);
            if self.detach {
                None
            } else {
                let d = st.running.remove(&task);
                if d.is_some() {
                    st.free += 1;
                }
                d
            }
        };
        self.cond.notify_all();
        if let Some(done) = done {
            done.finish(Ok(Execution {
                exit: ExitInfo::Cancelled,
                ..ok_execution("")
            }));
        }
    }

    fn keeps_running_without_master(&self) -> bool {
        self.detach
    }

    fn shutdown(&self) {
        self.lock().shut_down = true;
        self.cond.notify_all();
    }
}

//! The stream runner without pidfd (kernels before 5.3): `MW_NO_PIDFD` is set and, as on
//! such a kernel, `pidfd_open` fails (a seccomp filter installed on this whole test process
//! and inherited by its programs). A program that exits leaving a grandchild that holds its
//! stdout must not hold up the next task until that grandchild ends.
//!
//! The filter applies to every thread of the process, so this test runs alone, without the
//! libtest harness (`harness = false`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::ExitInfo;
use mw_worker_runtime::stream::{StreamInput, StreamProgram, StreamRunner};
use serde_json::json;
use std::time::Duration;

/// Makes `pidfd_open` fail with ENOSYS in this process and all it starts from now on.
fn refuse_pidfd_open() {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let mut filter = [
        // Load the system call number (offset 0 of struct seccomp_data).
        stmt(BPF_LD_W_ABS, 0),
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_pidfd_open as u32,
        },
        stmt(
            BPF_RET_K,
            libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA),
        ),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with valid arguments; prog and filter outlive the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0,
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0),
            -1,
            "pidfd_open still works"
        );
    }
}

/// Whether `pid` is still running (not gone, not a zombie waiting for its reaper).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name in parentheses.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z' | 'X' | 'x'))
}

fn main() {
    std::env::set_var(mw_worker_runtime::exec::NO_PIDFD_ENV, "1");
    refuse_pidfd_open();
    println!("test exit_leaving_a_grandchild_on_stdout_does_not_block_the_next_task ...");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("leave.sh");
    // On `exit`: starts a grandchild outside its process group (so stopping the group
    // spares it) and without the task token (so the sweep for ended tasks' leftovers spares
    // it too) that keeps stdout open for 30 s; once it has left, exits with status 3.
    std::fs::write(
        &script,
        r#"while read line; do
  case "$line" in
    *exit*)
      env -u MW_TASK_TOKEN setsid sh -c 'echo $$ > grandchild.pid; exec sleep 30' &
      while [ ! -s grandchild.pid ]; do :; done
      exit 3;;
    *) echo "$line";;
  esac
done"#,
    )
    .unwrap();
    let mut p = StreamProgram::new("/bin/sh".into(), dir.path().to_path_buf());
    p.args = vec![script.display().to_string()];
    p.grace = Duration::from_millis(200);
    let mut r = StreamRunner::new(p);
    let grandchild = || -> i32 {
        std::fs::read_to_string(dir.path().join("grandchild.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mut inputs = vec![
        StreamInput::new(&json!({"exit": 1})),
        StreamInput::new(&json!({"n": 1})),
    ]
    .into_iter()
    .enumerate();
    let mut out = Vec::new();
    r.serve(
        || inputs.next().map(|(i, x)| (x, i)),
        |i, o| {
            // The next task's answer came while the grandchild still held stdout.
            let held = i == 1 && alive(grandchild());
            out.push((o, held));
        },
    );
    let gc = grandchild();
    // SAFETY: kill with a pid and a valid signal (the grandchild, done with).
    unsafe { libc::kill(gc, libc::SIGKILL) };
    assert_eq!(
        out[0].0.exit,
        ExitInfo::Exited { code: 3 },
        "{:?}",
        out[0].0
    );
    assert!(out[1].0.exit.success(), "{:?}", out[1].0);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out[1].0.result).unwrap(),
        json!({"n": 1})
    );
    assert!(
        out[1].1,
        "the next task waited until the grandchild holding stdout had ended"
    );
    println!("test exit_leaving_a_grandchild_on_stdout_does_not_block_the_next_task ... ok");
}

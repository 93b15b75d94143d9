//! Starting a task program with `posix_spawn` (Linux): the C library starts the child with
//! `clone(CLONE_VM | CLONE_VFORK)`, so the worker's page tables are neither copied (as by
//! `fork`) nor torn down again at `exec`. For a pack of short tasks that copy was about a
//! third of the worker's own CPU time per task.
//!
//! std's `Command` does the same only when nothing it cannot express is asked for: no
//! `pre_exec` (so no parent-death signal), and, in the static `mw-worker` the pools receive,
//! not at all, because it finds `posix_spawn_file_actions_addchdir_np` at run time through
//! the dynamic loader, which a static binary does not have; it then forks. Here the C
//! library's functions are linked directly.
//!
//! The child gets what [`super::task_command`] gives one: its arguments, the inherited
//! environment plus the task's and [`super::TASK_TOKEN_ENV`], its working directory, its own
//! process group, an empty signal mask and SIGPIPE at its default action. A file the kernel
//! does not recognise as a program (a script without `#!`) runs with /bin/sh, as execvp(3)
//! and a forking `Command` run it. There is no
//! parent-death signal: callers use this only when something else kills the task if the
//! worker dies (a watchdog, see [`crate::dying`]) or when they do not ask for it.
//!
//! This module knows nothing of bundles, platforms or the master.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A C string of `bytes`, or the error std gives for an interior NUL.
fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument, the program path or the environment holds a NUL byte",
        )
    })
}

/// An errno-style return value of the `posix_spawn` family as a result.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// `posix_spawn_file_actions_t`, destroyed when dropped.
struct FileActions(MaybeUninit<libc::posix_spawn_file_actions_t>);

impl FileActions {
    fn new() -> io::Result<Box<FileActions>> {
        let mut fa = Box::new(FileActions(MaybeUninit::uninit()));
        // SAFETY: init writes an initialised value into the storage it is given.
        check(unsafe { libc::posix_spawn_file_actions_init(fa.0.as_mut_ptr()) })?;
        Ok(fa)
    }

    fn ptr(&mut self) -> *mut libc::posix_spawn_file_actions_t {
        self.0.as_mut_ptr()
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: the value was initialised by posix_spawn_file_actions_init in `new`.
        unsafe {
            libc::posix_spawn_file_actions_destroy(self.0.as_mut_ptr());
        }
    }
}

/// `posix_spawnattr_t`, destroyed when dropped.
struct Attributes(MaybeUninit<libc::posix_spawnattr_t>);

impl Attributes {
    fn new() -> io::Result<Box<Attributes>> {
        let mut a = Box::new(Attributes(MaybeUninit::uninit()));
        // SAFETY: init writes an initialised value into the storage it is given.
        check(unsafe { libc::posix_spawnattr_init(a.0.as_mut_ptr()) })?;
        Ok(a)
    }

    fn ptr(&mut self) -> *mut libc::posix_spawnattr_t {
        self.0.as_mut_ptr()
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: the value was initialised by posix_spawnattr_init in `new`.
        unsafe {
            libc::posix_spawnattr_destroy(self.0.as_mut_ptr());
        }
    }
}

/// The child's environment: this process's, with `env` (and `token` as
/// [`super::TASK_TOKEN_ENV`]) added or replacing variables of the same name.
fn environment(env: &BTreeMap<String, String>, token: &str) -> io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        let k = k.as_bytes();
        if k == super::TASK_TOKEN_ENV.as_bytes()
            || std::str::from_utf8(k).is_ok_and(|k| env.contains_key(k))
        {
            continue;
        }
        out.push(c_string(&[k, b"=", v.as_bytes()].concat())?);
    }
    let ours = env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([(super::TASK_TOKEN_ENV, token)]);
    for (k, v) in ours {
        if k.is_empty() || k.contains('=') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("environment variable name {k:?} is empty or holds `=`"),
            ));
        }
        out.push(c_string(format!("{k}={v}").as_bytes())?);
    }
    Ok(out)
}

/// Null-terminated pointers to `strings` (which must outlive their use).
fn pointers(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain([std::ptr::null_mut()])
        .collect()
}

/// True for a program name without a `/`, which is looked up in PATH.
pub(crate) fn is_bare_name(program: &Path) -> bool {
    !program.as_os_str().as_bytes().contains(&b'/')
}

/// Starts `program` (looked up in this process's PATH when it is a bare name, as std does
/// when the task sets no PATH of its own) with `args` in `workdir`, with `stdio`
/// as its standard input, output and error, in a process group of its own; returns its pid.
/// A program that cannot be executed is an error here (the C library reports `exec`'s
/// error), as with std's `Command::spawn`.
pub(crate) fn spawn(
    program: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    workdir: &Path,
    token: &str,
    stdio: [BorrowedFd<'_>; 3],
) -> io::Result<i32> {
    let path = c_string(program.as_os_str().as_bytes())?;
    let mut argv = vec![path];
    for a in args {
        argv.push(c_string(a.as_bytes())?);
    }
    let envp = environment(env, token)?;
    let dir = c_string(workdir.as_os_str().as_bytes())?;
    let mut actions = FileActions::new()?;
    for (fd, target) in stdio.iter().zip([0, 1, 2]) {
        // SAFETY: `actions` is initialised; dup2 of a descriptor we hold open onto 0-2 in
        // the child (which also clears close-on-exec there).
        check(unsafe {
            libc::posix_spawn_file_actions_adddup2(actions.ptr(), fd.as_raw_fd(), target)
        })?;
    }
    // SAFETY: `actions` is initialised; `dir` is a C string that outlives the spawn.
    check(unsafe { libc::posix_spawn_file_actions_addchdir_np(actions.ptr(), dir.as_ptr()) })?;
    let mut attrs = Attributes::new()?;
    // SAFETY: the sigset_t values are initialised by sigemptyset before use; `attrs` is
    // initialised; the setters copy what they are given.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::posix_spawnattr_setsigmask(attrs.ptr(), &empty))?;
        // SIGPIPE is ignored in Rust programs; the task gets the default action back (as
        // std's Command gives it). Handled signals are reset by the C library anyway, except
        // its own internal ones (32 and 33 in glibc, 32 to 34 in musl), which its spawn
        // leaves ignored in the child unless they are in this set, and an ignored signal
        // stays ignored across exec. `sigaddset` refuses them, so their bits are set
        // directly: a Linux sigset_t is an array of unsigned longs holding signal n as bit
        // n - 1, and the spawn functions copy and test it bit by bit.
        let mut default: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut default);
        libc::sigaddset(&mut default, libc::SIGPIPE);
        let words = std::ptr::from_mut(&mut default).cast::<libc::c_ulong>();
        let bits = libc::c_ulong::BITS as usize;
        for sig in 32..=34usize {
            *words.add((sig - 1) / bits) |= 1 << ((sig - 1) % bits);
        }
        check(libc::posix_spawnattr_setsigdefault(attrs.ptr(), &default))?;
        check(libc::posix_spawnattr_setpgroup(attrs.ptr(), 0))?;
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        check(libc::posix_spawnattr_setflags(attrs.ptr(), flags as _))?;
    }
    let envp_ptrs = pointers(&envp);
    let mut run = |spawn_fn: SpawnFn, argv: &[CString]| -> io::Result<i32> {
        let argv_ptrs = pointers(argv);
        let mut pid: libc::pid_t = 0;
        // SAFETY: every pointer is to initialised data that lives until the call returns:
        // the path (argv[0]), the null-terminated argv and envp arrays over C strings held
        // by the caller, and the initialised file actions and attributes.
        check(unsafe {
            spawn_fn(
                &mut pid,
                argv[0].as_ptr(),
                actions.ptr(),
                attrs.ptr(),
                argv_ptrs.as_ptr(),
                envp_ptrs.as_ptr(),
            )
        })?;
        Ok(pid)
    };
    if is_bare_name(program) {
        return run(libc::posix_spawnp, &argv);
    }
    match run(libc::posix_spawn, &argv) {
        // A file the kernel does not recognise as a program (a script without a `#!`
        // line): run it with /bin/sh, as execvp(3) does, and as std's `Command` does
        // when it forks. Without this a task would start or not depending on how the
        // worker happened to start it.
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            let mut sh = vec![c_string(b"/bin/sh")?];
            sh.extend(argv);
            run(libc::posix_spawn, &sh)
        }
        other => other,
    }
}

/// The signature `posix_spawn` and `posix_spawnp` share.
type SpawnFn = unsafe extern "C" fn(
    *mut libc::pid_t,
    *const libc::c_char,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    *const *mut libc::c_char,
    *const *mut libc::c_char,
) -> libc::c_int;

//! The client ↔ app shared-memory control channel (api_version ≥ 6).
//!
//! The segment is 8 channels of 1024 bytes. In each channel byte 0 is the "message pending"
//! flag and bytes 1.. hold NUL-terminated XML text. The client writes `<suspend/>`,
//! `<resume/>`, `<quit/>`, `<abort/>` into `process_control_request` and a heartbeat every
//! second; the app writes its CPU time and fraction done into `app_status`.
//!
//! Where it lives differs: on Unix it is the file `boinc_mmap_file` in the slot, mapped
//! shared; on Windows it is a named file mapping, `shm_` + the `<comm_obj_name>` of
//! `init_data.xml` (e.g. `shm_boinc_0`), opened as `Global\shm_…` first and then without the
//! prefix, exactly as BOINC's API does (see `WINDOWS.md` beside this module).
//!
//! [`ControlThread`] polls the channel and drives a [`ProcessControl`]: suspend/resume stop
//! and continue the task's process group; quit and abort cancel the task and are reported
//! to the caller, who decides how to exit. This module knows nothing of bundles or files
//! other than the segment itself.

use crate::exec::ProcessControl;
#[cfg(unix)]
use std::fs::OpenOptions;
#[cfg(unix)]
use std::os::fd::AsRawFd;
#[cfg(unix)]
use std::path::Path;
use std::sync::atomic::{fence, AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name of the segment file in the slot directory (Unix).
pub const MMAP_FILE: &str = "boinc_mmap_file";
/// Prefix of the Windows file-mapping name before `<comm_obj_name>` (BOINC's `SHM_PREFIX`).
pub const WINDOWS_SHM_PREFIX: &str = "shm_";
/// The namespace tried first on Windows, so the segment crosses terminal-server sessions.
pub const WINDOWS_GLOBAL_NAMESPACE: &str = "Global\\";
/// Bytes per channel.
pub const CHANNEL_BYTES: usize = 1024;
/// Number of channels.
pub const CHANNELS: usize = 8;
/// Channel: client → app process control.
pub const PROCESS_CONTROL_REQUEST: usize = 0;
/// Channel: client → app heartbeat.
pub const HEARTBEAT: usize = 4;
/// Channel: app → client status.
pub const APP_STATUS: usize = 5;

/// How often the control channel is polled (BOINC's API timer ticks every 0.1 s).
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the status is posted (BOINC's API posts once a second).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// With no heartbeat for this long the client is presumed gone.
pub const HEARTBEAT_GIVEUP: Duration = Duration::from_secs(30);

/// The mapped segment.
pub struct SharedMem {
    ptr: *mut std::ffi::c_void,
    len: usize,
    /// The file-mapping handle, closed in Drop (Windows).
    #[cfg(windows)]
    handle: windows_sys::Win32::Foundation::HANDLE,
}

// SAFETY: the mapping is only accessed through atomic byte operations (see `bytes`), so
// sharing it between threads is as safe as sharing a `[AtomicU8]`.
unsafe impl Send for SharedMem {}
// SAFETY: as above; every access is atomic.
unsafe impl Sync for SharedMem {}

impl std::fmt::Debug for SharedMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMem").field("len", &self.len).finish()
    }
}

impl SharedMem {
    /// Maps `path` (which must be at least 8 × 1024 bytes) read-write and shared.
    #[cfg(unix)]
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = CHANNELS * CHANNEL_BYTES;
        let size = file.metadata()?.len();
        if size < len as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {size} bytes, expected at least {len}", path.display()),
            ));
        }
        // SAFETY: we ask for a fresh shared mapping of `len` bytes of an open file that is at
        // least that long; the kernel picks the address. The fd may be closed afterwards:
        // the mapping stays valid until munmap in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedMem { ptr, len })
    }

    /// The mapping names tried for `comm_obj_name`, in BOINC's order.
    pub fn windows_names(comm_obj_name: &str) -> [String; 2] {
        let seg = format!("{WINDOWS_SHM_PREFIX}{comm_obj_name}");
        [format!("{WINDOWS_GLOBAL_NAMESPACE}{seg}"), seg]
    }

    /// Opens the client's named file mapping for `comm_obj_name` (from `init_data.xml`)
    /// and maps its 8 × 1024 bytes read-write.
    #[cfg(windows)]
    pub fn open_named(comm_obj_name: &str) -> std::io::Result<Self> {
        use windows_sys::Win32::Foundation::CloseHandle;
        use windows_sys::Win32::System::Memory::{
            MapViewOfFile, OpenFileMappingW, FILE_MAP_ALL_ACCESS,
        };
        let len = CHANNELS * CHANNEL_BYTES;
        let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
        for name in Self::windows_names(comm_obj_name) {
            let wide: Vec<u16> = name.encode_utf16().chain(std::iter::once(0)).collect();
            // SAFETY: `wide` is a NUL-terminated UTF-16 string that outlives the call.
            let handle = unsafe { OpenFileMappingW(FILE_MAP_ALL_ACCESS, 0, wide.as_ptr()) };
            if handle.is_null() {
                last = std::io::Error::last_os_error();
                continue;
            }
            // SAFETY: `handle` is a live mapping handle; a view of `len` bytes fails (null)
            // when the mapping is smaller, so a short segment is refused here.
            let view = unsafe { MapViewOfFile(handle, FILE_MAP_ALL_ACCESS, 0, 0, len) };
            if view.Value.is_null() {
                let e = std::io::Error::last_os_error();
                // SAFETY: the handle is ours and not used again.
                unsafe {
                    CloseHandle(handle);
                }
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{name}: cannot map {len} bytes: {e}"),
                ));
            }
            return Ok(SharedMem {
                ptr: view.Value,
                len,
                handle,
            });
        }
        Err(std::io::Error::new(
            last.kind(),
            format!("no file mapping {WINDOWS_SHM_PREFIX}{comm_obj_name}: {last}"),
        ))
    }

    fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: `ptr` is a live mapping of `len` bytes owned by `self` (unmapped only in
        // Drop); AtomicU8 has the size and alignment of u8, and every byte is only accessed
        // atomically from this process, which is how memory shared with another process
        // (the client) must be treated.
        unsafe { std::slice::from_raw_parts(self.ptr as *const AtomicU8, self.len) }
    }

    fn channel(&self, ch: usize) -> &[AtomicU8] {
        &self.bytes()[ch * CHANNEL_BYTES..(ch + 1) * CHANNEL_BYTES]
    }

    /// Takes the pending message of channel `ch`, if any, and marks the channel empty.
    pub fn receive(&self, ch: usize) -> Option<String> {
        let c = self.channel(ch);
        if c[0].load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut text = Vec::new();
        for b in &c[1..] {
            let v = b.load(Ordering::Relaxed);
            if v == 0 {
                break;
            }
            text.push(v);
        }
        c[0].store(0, Ordering::Release);
        Some(String::from_utf8_lossy(&text).into_owned())
    }

    /// Puts `msg` into channel `ch`, replacing any unread message (cut to fit).
    pub fn send_overwrite(&self, ch: usize, msg: &str) {
        let c = self.channel(ch);
        let bytes = msg.as_bytes();
        let n = bytes.len().min(CHANNEL_BYTES - 2);
        for (i, &b) in bytes[..n].iter().enumerate() {
            c[1 + i].store(b, Ordering::Relaxed);
        }
        c[1 + n].store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        c[0].store(1, Ordering::Release);
    }

    /// True while channel `ch` holds a message its reader has not taken yet.
    pub fn pending(&self, ch: usize) -> bool {
        self.channel(ch)[0].load(Ordering::Acquire) != 0
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `open`, unmapped once.
        #[cfg(unix)]
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
        // SAFETY: `ptr` is the view and `handle` the mapping made in `open_named`, released
        // once.
        #[cfg(windows)]
        unsafe {
            use windows_sys::Win32::System::Memory::{UnmapViewOfFile, MEMORY_MAPPED_VIEW_ADDRESS};
            UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS { Value: self.ptr });
            windows_sys::Win32::Foundation::CloseHandle(self.handle);
        }
    }
}

/// Why the control thread stopped the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The client sent `<quit/>`: it will restart the task later.
    Quit,
    /// The client sent `<abort/>`.
    Abort,
    /// No heartbeat for [`HEARTBEAT_GIVEUP`]: the client is gone.
    NoHeartbeat,
}

#[derive(Default)]
struct Shared {
    stop: Mutex<Option<Stop>>,
    finished: AtomicBool,
    fraction_done: Mutex<f64>,
}

/// A thread that obeys the control channel and reports status until [`finish`](Self::finish).
pub struct ControlThread {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
    shm: Arc<SharedMem>,
    control: ProcessControl,
}

impl std::fmt::Debug for ControlThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlThread")
    }
}

impl ControlThread {
    /// Starts polling `shm` and driving `control`.
    pub fn start(shm: SharedMem, control: ProcessControl) -> std::io::Result<Self> {
        let shm = Arc::new(shm);
        let shared = Arc::new(Shared::default());
        let handle = {
            let (shm, shared, control) = (shm.clone(), shared.clone(), control.clone());
            std::thread::Builder::new()
                .name("mw-boinc-control".into())
                .spawn(move || poll_loop(&shm, &shared, &control))?
        };
        Ok(ControlThread {
            shared,
            handle: Some(handle),
            shm,
            control,
        })
    }

    /// The stop request received so far, if any.
    pub fn stop_reason(&self) -> Option<Stop> {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the fraction done reported from now on.
    pub fn set_fraction_done(&self, f: f64) {
        *self
            .shared
            .fraction_done
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = f.clamp(0.0, 1.0);
    }

    /// Stops the thread and posts a last status with `fraction_done`.
    pub fn finish(mut self, fraction_done: f64) -> Option<Stop> {
        self.shared.finished.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.set_fraction_done(fraction_done);
        post_status(&self.shm, &self.shared, &self.control);
        self.stop_reason()
    }
}

fn post_status(shm: &SharedMem, shared: &Shared, control: &ProcessControl) {
    let fraction = *shared
        .fraction_done
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    shm.send_overwrite(APP_STATUS, &status_message(cpu_seconds(control), fraction));
}

/// The `app_status` message text.
pub fn status_message(cpu: f64, fraction_done: f64) -> String {
    format!(
        "<current_cpu_time>{cpu:.6}</current_cpu_time>\n\
         <checkpoint_cpu_time>0.000000</checkpoint_cpu_time>\n\
         <fraction_done>{fraction_done:.6}</fraction_done>\n"
    )
}

fn poll_loop(shm: &SharedMem, shared: &Shared, control: &ProcessControl) {
    let mut last_heartbeat = Instant::now();
    let mut last_status: Option<Instant> = None;
    while !shared.finished.load(Ordering::Acquire) {
        if let Some(msg) = shm.receive(PROCESS_CONTROL_REQUEST) {
            let stop = if msg.contains("<quit/>") {
                Some(Stop::Quit)
            } else if msg.contains("<abort/>") {
                Some(Stop::Abort)
            } else {
                if msg.contains("<suspend/>") {
                    eprintln!("mw-worker: suspend requested by the BOINC client");
                    control.suspend();
                }
                if msg.contains("<resume/>") {
                    eprintln!("mw-worker: resume requested by the BOINC client");
                    control.resume();
                }
                None
            };
            if let Some(s) = stop {
                request_stop(shared, control, s);
            }
        }
        if shm.receive(HEARTBEAT).is_some() {
            last_heartbeat = Instant::now();
        } else if last_heartbeat.elapsed() > HEARTBEAT_GIVEUP {
            request_stop(shared, control, Stop::NoHeartbeat);
            last_heartbeat = Instant::now();
        }
        if last_status.is_none_or(|t| t.elapsed() >= STATUS_INTERVAL) {
            post_status(shm, shared, control);
            last_status = Some(Instant::now());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn request_stop(shared: &Shared, control: &ProcessControl, s: Stop) {
    eprintln!("mw-worker: {s:?} requested by the BOINC client; stopping the task");
    let mut stop = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
    if stop.is_none() {
        *stop = Some(s);
    }
    control.cancel();
}

/// CPU seconds of this process, its reaped children, and the running task's process.
#[cfg(unix)]
pub fn cpu_seconds(control: &ProcessControl) -> f64 {
    let mut total = rusage_secs(libc::RUSAGE_SELF) + rusage_secs(libc::RUSAGE_CHILDREN);
    if let Some(pid) = control.pgid() {
        total += proc_cpu_secs(pid).unwrap_or(0.0);
    }
    total
}

/// CPU seconds of this process and of the running task's whole job.
#[cfg(windows)]
pub fn cpu_seconds(control: &ProcessControl) -> f64 {
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessTimes};
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut c, mut e, mut k, mut u) = (zero, zero, zero, zero);
    // SAFETY: the pseudo-handle of this process and four live FILETIMEs.
    let ok = unsafe { GetProcessTimes(GetCurrentProcess(), &mut c, &mut e, &mut k, &mut u) };
    let ft = |t: FILETIME| (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
    let own = if ok != 0 {
        (ft(k) + ft(u)) as f64 / 1e7
    } else {
        0.0
    };
    own + control.task_cpu().map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(unix)]
fn rusage_secs(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain old data; zeroed is valid; getrusage writes into our local.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live, writable rusage.
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// utime + stime + cutime + cstime of a live process from `/proc/<pid>/stat`.
#[cfg(unix)]
fn proc_cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11..15)?
        .iter()
        .filter_map(|s| s.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn segment() -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(MMAP_FILE);
        std::fs::write(&p, vec![0u8; CHANNELS * CHANNEL_BYTES]).unwrap();
        (d, p)
    }

    #[test]
    fn messages_round_trip_between_two_mappings() {
        let (_d, p) = segment();
        let client = SharedMem::open(&p).unwrap();
        let app = SharedMem::open(&p).unwrap();
        assert_eq!(app.receive(PROCESS_CONTROL_REQUEST), None);
        client.send_overwrite(PROCESS_CONTROL_REQUEST, "<suspend/>");
        assert!(client.pending(PROCESS_CONTROL_REQUEST));
        assert_eq!(
            app.receive(PROCESS_CONTROL_REQUEST).as_deref(),
            Some("<suspend/>")
        );
        assert!(!client.pending(PROCESS_CONTROL_REQUEST));
        // The bytes land where the client reads them: flag at 5*1024, text after it.
        app.send_overwrite(APP_STATUS, &status_message(1.5, 0.25));
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(raw[APP_STATUS * CHANNEL_BYTES], 1);
        let text = &raw[APP_STATUS * CHANNEL_BYTES + 1..];
        let end = text.iter().position(|&b| b == 0).unwrap();
        let text = std::str::from_utf8(&text[..end]).unwrap();
        assert!(text.contains("<current_cpu_time>1.500000</current_cpu_time>"));
        assert!(text.contains("<fraction_done>0.250000</fraction_done>"));
    }

    #[test]
    fn short_segment_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(MMAP_FILE);
        std::fs::write(&p, b"short").unwrap();
        let e = SharedMem::open(&p).unwrap_err();
        assert!(e.to_string().contains("expected at least 8192"), "{e}");
    }

    #[test]
    fn quit_cancels_the_control_and_is_reported() {
        let (_d, p) = segment();
        let client = SharedMem::open(&p).unwrap();
        let control = ProcessControl::new();
        let t = ControlThread::start(SharedMem::open(&p).unwrap(), control.clone()).unwrap();
        client.send_overwrite(PROCESS_CONTROL_REQUEST, "<quit/>");
        // Bounded wait for the thread to consume the message (observable state).
        let t0 = Instant::now();
        while !control.is_cancelled() && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(control.is_cancelled());
        assert_eq!(t.finish(1.0), Some(Stop::Quit));
        assert!(client
            .receive(APP_STATUS)
            .unwrap()
            .contains("<fraction_done>1.000000"));
    }
}

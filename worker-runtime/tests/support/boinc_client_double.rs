//! Test equipment, Windows only: plays the BOINC client's side of the app protocol for one
//! slot, as BOINC's client does it on Windows (facts in `src/boinc/WINDOWS.md`, from
//! `client/app_start.cpp`, `lib/shmem.cpp`, `lib/app_ipc.*`):
//!
//! 1. creates an anonymous, named file mapping `shm_boinc_<i>` of 8 × 1024 bytes
//!    (`sizeof(SHARED_MEM)`), trying the `Global\` namespace only when asked (the client
//!    does so only when it runs tasks under a sandbox account);
//! 2. writes the slot's `init_data.xml` with `<comm_obj_name>boinc_<i></comm_obj_name>`;
//! 3. starts the app in the slot directory and, every second, puts `<heartbeat/>` into the
//!    heartbeat channel (4) and reads `app_status` (5);
//! 4. with `quit`, sends `<quit/>` on `process_control_request` (0) once the app has
//!    reported a status (with `quit:PATH`, also only once PATH exists).
//!
//! Usage: `boinc_client_double SLOT APP finish|quit|quit:PATH [global]`. Prints one JSON line:
//! `{"exit":N,"statuses":K,"segment":"shm_boinc_<i>","last_status":"…"}`.
//! A double: it lives in tests/ and stands in for the real Windows client, which cannot run
//! here. Not part of mw.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

#[cfg(windows)]
fn main() {
    std::process::exit(windows::run());
}

#[cfg(not(windows))]
fn main() {
    eprintln!("boinc_client_double plays the Windows BOINC client; build it for Windows");
    std::process::exit(2);
}

#[cfg(windows)]
mod windows {
    use std::time::{Duration, Instant};
    use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, ERROR_ALREADY_EXISTS};
    use windows_sys::Win32::System::Memory::{
        CreateFileMappingW, MapViewOfFile, UnmapViewOfFile, FILE_MAP_ALL_ACCESS, PAGE_READWRITE,
    };

    const CHANNEL: usize = 1024;
    const SHARED_MEM_SIZE: usize = 8 * CHANNEL;
    const PROCESS_CONTROL_REQUEST: usize = 0;
    const HEARTBEAT: usize = 4;
    const APP_STATUS: usize = 5;

    /// Client → app: like MSG_CHANNEL::send_msg, only when the previous message was taken.
    fn send(mem: *mut u8, ch: usize, msg: &str) -> bool {
        // SAFETY: `mem` is a live view of SHARED_MEM_SIZE bytes; volatile accesses because
        // another process reads and writes the same bytes.
        unsafe {
            let base = mem.add(ch * CHANNEL);
            if base.read_volatile() != 0 {
                return false;
            }
            let bytes = msg.as_bytes();
            let n = bytes.len().min(CHANNEL - 2);
            for (i, &b) in bytes[..n].iter().enumerate() {
                base.add(1 + i).write_volatile(b);
            }
            base.add(1 + n).write_volatile(0);
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            base.write_volatile(1);
        }
        true
    }

    /// App → client: like MSG_CHANNEL::get_msg.
    fn receive(mem: *mut u8, ch: usize) -> Option<String> {
        // SAFETY: as in `send`.
        unsafe {
            let base = mem.add(ch * CHANNEL);
            if base.read_volatile() == 0 {
                return None;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let mut text = Vec::new();
            for i in 1..CHANNEL {
                let b = base.add(i).read_volatile();
                if b == 0 {
                    break;
                }
                text.push(b);
            }
            base.write_volatile(0);
            Some(String::from_utf8_lossy(&text).into_owned())
        }
    }

    pub fn run() -> i32 {
        let args: Vec<String> = std::env::args().collect();
        let (Some(slot), Some(app), Some(mode)) = (args.get(1), args.get(2), args.get(3)) else {
            eprintln!("usage: boinc_client_double SLOT APP finish|quit|quit:PATH [global]");
            return 2;
        };
        let global = args.get(4).is_some_and(|a| a == "global");
        // get_shmem_seg_name(): the first free "shm_boinc_<i>".
        let mut found = None;
        for i in 0..1024 {
            let seg = format!("shm_boinc_{i}");
            let name = if global {
                format!("Global\\{seg}")
            } else {
                seg
            };
            let wide: Vec<u16> = name.encode_utf16().chain(std::iter::once(0)).collect();
            // SAFETY: an anonymous (page-file backed) mapping with a NUL-terminated name.
            let h = unsafe {
                CreateFileMappingW(
                    -1isize as _,
                    std::ptr::null(),
                    PAGE_READWRITE,
                    0,
                    SHARED_MEM_SIZE as u32,
                    wide.as_ptr(),
                )
            };
            // SAFETY: reads this thread's last error right after the call.
            let existed = unsafe { GetLastError() } == ERROR_ALREADY_EXISTS;
            if h.is_null() {
                continue;
            }
            if existed {
                // SAFETY: our handle to someone else's segment; not used.
                unsafe { CloseHandle(h) };
                continue;
            }
            found = Some((i, h));
            break;
        }
        let Some((index, handle)) = found else {
            eprintln!("no free shm_boinc_<i>");
            return 2;
        };
        // SAFETY: map the whole fresh mapping.
        let view = unsafe { MapViewOfFile(handle, FILE_MAP_ALL_ACCESS, 0, 0, 0) };
        if view.Value.is_null() {
            eprintln!("MapViewOfFile failed");
            return 2;
        }
        let mem = view.Value as *mut u8;

        // write_app_init_file(): the client writes init_data.xml before starting the app.
        let init = std::path::Path::new(slot).join("init_data.xml");
        let text = format!(
            "<app_init_data>\n<major_version>8</major_version>\n<slot>0</slot>\n\
             <wu_name>double_wu</wu_name>\n<result_name>double_wu_0</result_name>\n\
             <comm_obj_name>boinc_{index}</comm_obj_name>\n</app_init_data>\n"
        );
        if let Err(e) = std::fs::write(&init, text) {
            eprintln!("cannot write {}: {e}", init.display());
            return 2;
        }

        let mut child = match std::process::Command::new(app).current_dir(slot).spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot start {app}: {e}");
                return 2;
            }
        };
        let t0 = Instant::now();
        let mut statuses = 0u32;
        let mut last_status = String::new();
        let mut quit_sent = false;
        let mut last_beat = None::<Instant>;
        let exit = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break st.code().unwrap_or(-1);
            }
            if t0.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                break -2;
            }
            if last_beat.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                send(mem, HEARTBEAT, "<heartbeat/>");
                last_beat = Some(Instant::now());
            }
            if let Some(s) = receive(mem, APP_STATUS) {
                statuses += 1;
                last_status = s;
            }
            // `quit:PATH` waits for PATH to exist first (the task has started).
            let quit_ready = match mode.strip_prefix("quit") {
                Some("") => true,
                Some(rest) => rest
                    .strip_prefix(':')
                    .is_some_and(|p| std::path::Path::new(p).exists()),
                None => false,
            };
            if quit_ready && statuses > 0 && !quit_sent {
                quit_sent = send(mem, PROCESS_CONTROL_REQUEST, "<quit/>");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(s) = receive(mem, APP_STATUS) {
            statuses += 1;
            last_status = s;
        }
        let escaped: String = last_status
            .chars()
            .flat_map(|c| match c {
                '"' => vec!['\\', '"'],
                '\\' => vec!['\\', '\\'],
                '\n' => vec!['\\', 'n'],
                c if c.is_control() => vec![' '],
                c => vec![c],
            })
            .collect();
        println!(
            "{{\"exit\":{exit},\"statuses\":{statuses},\"segment\":\"shm_boinc_{index}\",\"last_status\":\"{escaped}\"}}"
        );
        // SAFETY: the view and handle made above, released once.
        unsafe {
            UnmapViewOfFile(view);
            CloseHandle(handle);
        }
        0
    }
}

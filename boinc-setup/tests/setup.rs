//! Runs the real `mw-boinc-setup` against a fake project laid out like make_project's:
//! the upstream-generated config.xml fixture, a project.xml, and `bin/xadd` /
//! `bin/update_versions` as small recording shell scripts (BOINC's PHP tools and database
//! cannot be installed here).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURE_CONFIG: &str = "/work/shared/fixtures/boinc/config_xml_make_project_example.xml";

const PROJECT_XML: &str = "<boinc>
    <platform>
        <name>x86_64-pc-linux-gnu</name>
        <user_friendly_name>Linux running on an AMD x86_64 or Intel EM64T CPU</user_friendly_name>
    </platform>
    <!-- <app><name>mw</name></app> is only a comment -->
</boinc>
";

struct Project {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    worker: PathBuf,
    validator: PathBuf,
    assimilator: PathBuf,
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn fake_project() -> Project {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("proj");
    for d in ["bin", "cgi-bin", "templates", "download", "upload", "apps"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let fixture = std::fs::read_to_string(FIXTURE_CONFIG).unwrap();
    std::fs::write(root.join("config.xml"), fixture).unwrap();
    std::fs::write(root.join("project.xml"), PROJECT_XML).unwrap();
    for tool in ["xadd", "update_versions"] {
        write_exec(
            &root.join("bin").join(tool),
            &format!(
                "#!/bin/sh\necho \"{tool} $* cwd=$(pwd)\" >> \"$(dirname \"$0\")/../tool_calls.log\"\necho ran {tool}\n"
            ),
        );
    }
    let bins = tmp.path().join("built");
    std::fs::create_dir_all(&bins).unwrap();
    let worker = bins.join("mw-worker");
    let validator = bins.join("mw-validator");
    let assimilator = bins.join("mw-assimilator");
    write_exec(&worker, "#!/bin/sh\necho worker\n");
    write_exec(&validator, "#!/bin/sh\necho validator\n");
    write_exec(&assimilator, "#!/bin/sh\necho assimilator\n");
    Project {
        root,
        worker,
        validator,
        assimilator,
        _tmp: tmp,
    }
}

fn setup(p: &Project, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mw-boinc-setup"))
        .arg("--project-dir")
        .arg(&p.root)
        .arg("--worker")
        .arg(&p.worker)
        .arg("--validator")
        .arg(&p.validator)
        .arg("--assimilator")
        .arg(&p.assimilator)
        .args(extra)
        .output()
        .unwrap();
    eprintln!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every path under `root` with its mode and content (directories as empty content).
fn tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if meta.is_dir() {
                out.insert(rel + "/", (meta.permissions().mode(), Vec::new()));
                stack.push(p);
            } else {
                out.insert(rel, (meta.permissions().mode(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn installs_then_second_run_changes_nothing() {
    let p = fake_project();
    let first = setup(&p, &[]);
    assert!(first.status.success());
    let r = &p.root;
    // project.xml: app added, the rest byte for byte.
    let px = std::fs::read_to_string(r.join("project.xml")).unwrap();
    assert!(
        px.contains("<name>mw</name>\n        <user_friendly_name>"),
        "{px}"
    );
    assert!(px.starts_with(&PROJECT_XML[..PROJECT_XML.len() - "</boinc>\n".len()]));
    // Tools ran from the project root, update_versions with --noconfirm.
    let calls = std::fs::read_to_string(r.join("tool_calls.log")).unwrap();
    let root_real = r.canonicalize().unwrap();
    assert!(
        calls.contains(&format!("xadd  cwd={}", root_real.display())),
        "{calls}"
    );
    assert!(calls.contains(&format!(
        "update_versions --noconfirm cwd={}",
        root_real.display()
    )));
    // App version layout.
    let vdir = r.join("apps/mw/1.00/x86_64-pc-linux-gnu");
    let worker = vdir.join("mw_worker_1.00_x86_64-pc-linux-gnu");
    assert_eq!(
        std::fs::read(&worker).unwrap(),
        std::fs::read(&p.worker).unwrap()
    );
    assert_ne!(
        std::fs::metadata(&worker).unwrap().permissions().mode() & 0o100,
        0
    );
    let vxml = std::fs::read_to_string(vdir.join("version.xml")).unwrap();
    assert!(vxml.contains("<physical_name>mw_worker_1.00_x86_64-pc-linux-gnu</physical_name>"));
    assert!(vxml.contains("<main_program/>"));
    assert!(vxml.contains("<api_version>7.20.0</api_version>"));
    assert_eq!(
        std::fs::read_dir(&vdir).unwrap().count(),
        2,
        "no stray files"
    );
    // Templates.
    let tin = std::fs::read_to_string(r.join("templates/mw_in")).unwrap();
    for el in [
        "<min_quorum>1</min_quorum>",
        "<target_nresults>1</target_nresults>",
        // Defaults for few hosts (issue 12): one client error tolerated.
        "<max_error_results>1</max_error_results>",
        "<max_total_results>2</max_total_results>",
        "<max_success_results>1</max_success_results>",
        "<rsc_fpops_est>",
        "<rsc_fpops_bound>",
        "<rsc_memory_bound>",
        "<rsc_disk_bound>",
        "<delay_bound>",
        "<open_name>mw_program</open_name>",
        "<open_name>mw_task</open_name>",
    ] {
        assert!(tin.contains(el), "input template lacks {el}:\n{tin}");
    }
    assert_eq!(tin.matches("<file_info>").count(), 2);
    // Only the shared program bundle (the first file) is kept by the file deleter.
    assert_eq!(tin.matches("<no_delete/>").count(), 1);
    assert!(tin.find("<no_delete/>") < tin.find("</file_info>"));
    let tout = std::fs::read_to_string(r.join("templates/mw_out")).unwrap();
    assert!(tout.contains("<max_nbytes>") && tout.contains("<OUTFILE_0/>"));
    assert!(tout.contains("<open_name>mw_result</open_name>"));
    // Programs in bin/.
    for name in [
        "mw-validator-init",
        "mw-validator-compare",
        "mw-assimilator",
    ] {
        let f = r.join("bin").join(name);
        assert_ne!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o100,
            0,
            "{name}"
        );
    }
    // config.xml: daemons by program name only, distinct outputs; rest preserved.
    let cx = std::fs::read_to_string(r.join("config.xml")).unwrap();
    assert!(cx.contains(
        "<cmd>script_validator -d 3 --app mw --init_script mw-validator-init --compare_script mw-validator-compare</cmd>"
    ));
    assert!(cx.contains("<cmd>script_assimilator -d 3 --app mw --script mw-assimilator</cmd>"));
    assert!(cx.contains("<output>script_validator_mw.log</output>"));
    assert!(cx.contains("<output>script_assimilator_mw.log</output>"));
    assert!(
        !cx.contains("one_result_per_host_per_wu>1"),
        "quorum 1 needs no host rule"
    );
    // Warns: the fixture's <host> is boincserver, not this machine (unless it is).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if host.trim().split('.').next() != Some("boincserver") {
        assert!(String::from_utf8_lossy(&first.stderr).contains("boincserver"));
    }
    // Spool and config file.
    assert!(r.join("mw_spool").is_dir());
    let cfg = mw_boinc_setup::MwBoincConfig::load(r).unwrap();
    assert_eq!(cfg.app_name, "mw");
    assert_eq!(cfg.version_num, 100);
    assert_eq!(cfg.spool_dir, root_real.join("mw_spool"));
    assert_eq!(cfg.output_template, "templates/mw_out");
    assert!(cfg.output_template.len() < 63 && cfg.input_template.len() < 63);

    // Second run: nothing changes at all, tools not run again.
    let before = tree(r);
    let second = setup(&p, &[]);
    assert!(second.status.success());
    assert!(stdout(&second).contains("already installed, nothing to change"));
    assert_eq!(before, tree(r));
}

#[test]
fn config_xml_outside_the_edits_is_preserved() {
    let p = fake_project();
    let original = std::fs::read_to_string(p.root.join("config.xml")).unwrap();
    assert!(setup(&p, &["--quorum", "2"]).status.success());
    let edited = std::fs::read_to_string(p.root.join("config.xml")).unwrap();
    // Remove exactly the inserted lines; what is left must be the original.
    let mut kept = String::new();
    let mut in_ours = false;
    let lines: Vec<&str> = edited.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).copied().unwrap_or("");
        if line.trim() == "<daemon>"
            && (next.contains("script_validator") || next.contains("script_assimilator"))
        {
            in_ours = true;
        }
        if in_ours {
            if line.trim() == "</daemon>" {
                in_ours = false;
            }
            continue;
        }
        if line.contains("<one_result_per_host_per_wu>1</one_result_per_host_per_wu>") {
            continue;
        }
        kept.push_str(line);
    }
    assert_eq!(kept, original);
    // The fixture had one_result_per_user_per_wu only; we added the host rule.
    assert!(edited.contains("<one_result_per_host_per_wu>1</one_result_per_host_per_wu>"));
    let tin = std::fs::read_to_string(p.root.join("templates/mw_in")).unwrap();
    assert!(
        tin.contains("<min_quorum>2</min_quorum>")
            && tin.contains("<target_nresults>2</target_nresults>")
    );
}

#[test]
fn dry_run_writes_nothing_and_lists_every_change() {
    let p = fake_project();
    let before = tree(&p.root);
    let out = setup(&p, &["--dry-run", "--quorum", "3"]);
    assert!(out.status.success());
    assert_eq!(before, tree(&p.root), "dry run changed the project");
    let text = stdout(&out);
    for needle in [
        "project.xml",
        "run `bin/xadd`",
        "run `bin/update_versions --noconfirm`",
        "version.xml",
        "templates/mw_in",
        "templates/mw_out",
        "mw-validator-init",
        "mw-validator-compare",
        "mw-assimilator",
        "config.xml",
        "one_result_per_host_per_wu",
        "mw_spool",
        "mw_boinc.toml",
    ] {
        assert!(text.contains(needle), "plan lacks {needle}:\n{text}");
    }
}

#[test]
fn refuses_a_directory_that_is_not_a_project() {
    let p = fake_project();
    std::fs::remove_file(p.root.join("project.xml")).unwrap();
    let before = tree(&p.root);
    let out = setup(&p, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a BOINC project directory") && err.contains("project.xml"),
        "{err}"
    );
    assert_eq!(before, tree(&p.root));
}

#[test]
fn changed_worker_for_an_installed_version_is_refused() {
    let p = fake_project();
    assert!(setup(&p, &[]).status.success());
    write_exec(&p.worker, "#!/bin/sh\necho new worker\n");
    let out = setup(&p, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("immutable"));
    // A new version installs beside it.
    let out = setup(&p, &["--app-version", "1.01"]);
    assert!(out.status.success());
    assert!(p
        .root
        .join("apps/mw/1.01/x86_64-pc-linux-gnu/mw_worker_1.01_x86_64-pc-linux-gnu")
        .is_file());
}

#[test]
fn update_versions_unknown_arg_is_an_error_despite_exit_0() {
    let p = fake_project();
    write_exec(
        &p.root.join("bin/update_versions"),
        "#!/bin/sh\necho \"unknown arg $1\"\nexit 0\n",
    );
    let out = setup(&p, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown arg"));
}

fn shell_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.,:=/+-".contains(&b))
}

#[test]
fn every_name_in_cmd_lines_and_templates_is_shell_safe() {
    let p = fake_project();
    assert!(setup(&p, &["--quorum", "2"]).status.success());
    let cx = std::fs::read_to_string(p.root.join("config.xml")).unwrap();
    let mut checked = 0;
    for cmd in cx.split("<cmd>").skip(1) {
        let cmd = cmd.split("</cmd>").next().unwrap();
        if !cmd.contains("--app mw") {
            continue;
        }
        for tok in cmd.split_whitespace() {
            assert!(shell_safe(tok), "unsafe token {tok:?} in {cmd:?}");
            checked += 1;
        }
    }
    assert!(checked >= 10);
    for t in ["templates/mw_in", "templates/mw_out"] {
        let text = std::fs::read_to_string(p.root.join(t)).unwrap();
        for name in text.split("<open_name>").skip(1) {
            let name = name.split("</open_name>").next().unwrap();
            assert!(shell_safe(name), "unsafe open_name {name:?} in {t}");
            checked += 1;
        }
    }
    let cfg = mw_boinc_setup::MwBoincConfig::load(&p.root).unwrap();
    for n in [
        &cfg.app_name,
        &cfg.input_template,
        &cfg.output_template,
        &cfg.app_version,
    ] {
        assert!(shell_safe(n), "{n:?}");
    }
    assert!(checked >= 13);
    // Hostile app names are refused before anything is written.
    let before = tree(&p.root);
    for bad in ["mw;rm", "mw app", "MW", "$(x)"] {
        let out = setup(&p, &["--app-name", bad]);
        assert!(!out.status.success(), "{bad} accepted");
    }
    assert_eq!(before, tree(&p.root));
}

#[test]
fn one_app_version_per_platform_worker_idempotently() {
    let p = fake_project();
    let bins = p.worker.parent().unwrap().to_path_buf();
    // Headers only: a PE for x86_64 Windows and static ELF64 headers for the two Linuxes.
    let mut pe = vec![0u8; 0x100];
    pe[..2].copy_from_slice(b"MZ");
    pe[0x3c] = 0x80;
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    pe[0x84..0x86].copy_from_slice(&[0x64, 0x86]);
    let elf = |machine: u16| {
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        e
    };
    let win = bins.join("mw-worker.exe");
    let arm = bins.join("mw-worker-aarch64");
    let x86 = bins.join("mw-worker-x86_64");
    std::fs::write(&win, &pe).unwrap();
    std::fs::write(&arm, elf(183)).unwrap();
    std::fs::write(&x86, elf(62)).unwrap();
    let args = [
        "--worker-for".to_string(),
        format!("windows_x86_64={}", win.display()),
        "--worker-for".to_string(),
        format!("aarch64-unknown-linux-gnu={}", arm.display()),
        "--worker-for".to_string(),
        format!("x86_64-pc-linux-gnu={}", x86.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let before = tree(&p.root);
    let mut dry: Vec<&str> = args.clone();
    dry.push("--dry-run");
    let out = setup(&p, &dry);
    assert!(out.status.success());
    assert_eq!(before, tree(&p.root), "dry run changed the project");
    let text = stdout(&out);
    for platform in [
        "windows_x86_64",
        "aarch64-unknown-linux-gnu",
        "x86_64-pc-linux-gnu",
    ] {
        assert!(
            text.contains(&format!("mw-worker for {platform}, main program")),
            "no app version for {platform}:\n{text}"
        );
    }
    assert_eq!(text.matches("version.xml for ").count(), 3, "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("executable") && !err.contains("dynamically linked"),
        "the headers match their platforms: {err}"
    );

    let first = setup(&p, &args);
    assert!(first.status.success());
    let v = p.root.join("apps/mw/1.00");
    let win_dest = v.join("windows_x86_64/mw_worker_1.00_windows_x86_64.exe");
    assert_eq!(std::fs::read(win_dest).unwrap(), pe);
    assert_eq!(
        std::fs::read(v.join("aarch64-unknown-linux-gnu/mw_worker_1.00_aarch64-unknown-linux-gnu"))
            .unwrap(),
        elf(183)
    );
    let vxml = std::fs::read_to_string(v.join("windows_x86_64/version.xml")).unwrap();
    assert!(vxml.contains("mw_worker_1.00_windows_x86_64.exe"), "{vxml}");

    let after_first = tree(&p.root);
    let second = setup(&p, &args);
    assert!(second.status.success());
    assert!(
        stdout(&second).contains("already installed, nothing to change"),
        "{}",
        stdout(&second)
    );
    assert_eq!(
        after_first,
        tree(&p.root),
        "the second run changed something"
    );
}

/// The `config.xml.mw-backup-*` files beside config.xml, sorted.
fn backups(root: &Path) -> Vec<PathBuf> {
    let mut b: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("config.xml.mw-backup-")
        })
        .collect();
    b.sort();
    b
}

#[test]
fn config_xml_is_backed_up_before_each_edit() {
    let p = fake_project();
    let cx = p.root.join("config.xml");
    // config.xml holds the database password: the backup keeps its mode.
    std::fs::set_permissions(&cx, std::fs::Permissions::from_mode(0o640)).unwrap();
    let original = std::fs::read(&cx).unwrap();
    let out = setup(&p, &[]);
    assert!(out.status.success());
    let b = backups(&p.root);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(std::fs::read(&b[0]).unwrap(), original);
    assert_eq!(
        std::fs::metadata(&b[0]).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert_ne!(
        std::fs::read(&cx).unwrap(),
        original,
        "config.xml was edited"
    );
    let name = b[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(stdout(&out).contains(&name), "{}", stdout(&out));
    // Nothing to edit: no new backup.
    assert!(setup(&p, &[]).status.success());
    assert_eq!(backups(&p.root).len(), 1);
    // Another edit (quorum 2 adds the host rule) keeps the first backup and adds one of
    // the file as it was just before this edit.
    let before_second = std::fs::read(&cx).unwrap();
    let out = setup(&p, &["--quorum", "2", "--app-version", "1.01"]);
    assert!(out.status.success());
    let b2 = backups(&p.root);
    assert_eq!(b2.len(), 2, "{b2:?}");
    assert_eq!(std::fs::read(&b[0]).unwrap(), original);
    let newest = b2.iter().find(|x| **x != b[0]).unwrap();
    assert_eq!(std::fs::read(newest).unwrap(), before_second);
    // A dry run lists the backup it would make, and makes none.
    let p = fake_project();
    let out = setup(&p, &["--dry-run"]);
    assert!(stdout(&out).contains("back up"), "{}", stdout(&out));
    assert!(backups(&p.root).is_empty());
}

#[test]
fn errors_are_one_line_with_their_causes_and_no_backtrace() {
    let p = fake_project();
    std::fs::remove_file(p.root.join("config.xml")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mw-boinc-setup"))
        .arg("--project-dir")
        .arg(&p.root)
        .arg("--worker")
        .arg(&p.worker)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("mw-boinc-setup: error: planning the installation into")
            && lines[0].contains("is not a BOINC project directory: no config.xml"),
        "{err}"
    );
    assert!(
        !err.contains("backtrace") && !err.contains("Caused by"),
        "{err}"
    );
}

/// A file that reads as a statically linked x86_64 ELF executable (no PT_INTERP).
fn fake_static_worker(path: &Path) {
    let mut e = vec![0u8; 128];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[0x12] = 62;
    e[0x20] = 64;
    e[0x36] = 56;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, e).unwrap();
}

#[test]
fn the_default_worker_is_the_static_build() {
    let p = fake_project();
    // This program as if built in a fresh tree: target/release/mw-boinc-setup.
    let tree_root = p.root.parent().unwrap().join("src-tree");
    let release = tree_root.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    let exe = release.join("mw-boinc-setup");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_mw-boinc-setup"), &exe).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_mw-boinc-setup"), &exe).unwrap();
    }
    // A dynamically linked mw-worker beside it is not taken.
    let dynamic = release.join("mw-worker");
    std::fs::copy(env!("CARGO_BIN_EXE_mw-boinc-setup"), &dynamic).unwrap();
    let run = || {
        Command::new(&exe)
            .arg("--project-dir")
            .arg(&p.root)
            .arg("--validator")
            .arg(&p.validator)
            .arg("--assimilator")
            .arg(&p.assimilator)
            .output()
            .unwrap()
    };
    let before = tree(&p.root);
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no statically linked mw-worker")
            && err.contains("cargo static-worker")
            && err.contains("--worker PATH"),
        "{err}"
    );
    assert_eq!(before, tree(&p.root), "a refused setup changed the project");
    // Built: it is installed, with no warning about linkage.
    let static_worker = tree_root.join("target/static/release/mw-worker");
    fake_static_worker(&static_worker);
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("dynamically linked"), "{err}");
    assert_eq!(
        std::fs::read(
            p.root
                .join("apps/mw/1.00/x86_64-pc-linux-gnu/mw_worker_1.00_x86_64-pc-linux-gnu")
        )
        .unwrap(),
        std::fs::read(&static_worker).unwrap()
    );
}

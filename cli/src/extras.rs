//! `mw completions SHELL` and `mw man DIR`: shell completion scripts and man pages,
//! generated from the same clap definitions the parser uses, so they never drift.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// `mw completions` arguments.
#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell, e.g. `bash` (then: `mw completions bash > ~/.local/share/bash-completion/completions/mw`).
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// `mw man` arguments.
#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// Directory to write `mw.1` and `mw-<command>.1` into (created if missing).
    pub(crate) dir: PathBuf,
}

/// `mw completions`.
pub(crate) fn completions(args: CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = crate::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "mw", &mut out);
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(crate::EXIT_OK)
}

/// `mw man`.
pub(crate) fn man(args: ManArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let cmd = crate::command();
    let mut written = Vec::new();
    let mut render = |name: String, c: clap::Command| -> anyhow::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        let path = args.dir.join(format!("{name}.1"));
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    render("mw".into(), cmd.clone())?;
    for sub in cmd.get_subcommands() {
        let name = format!("mw-{}", sub.get_name());
        render(name.clone(), sub.clone().display_name(name))?;
    }
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    for p in &written {
        writeln!(stdout, "{}", p.display()).context("printing the pages written")?;
    }
    Ok(crate::EXIT_OK)
}

//! Surgical edits of a project's `project.xml` and `config.xml`: mw's `<app>`, its two
//! daemons and `<one_result_per_host_per_wu>`; everything else is kept byte for byte. It must
//! never write files (the plan does).

use crate::render::{assimilator_cmd, validator_cmd};
use crate::xmltext::{
    self, find_all, find_element, indent_before, line_start_if_alone, mask_comments,
};

/// Adds `<app>` to project.xml's text if missing; `None` when already there.
pub fn edit_project_xml(text: &str, app: &str) -> Result<Option<String>, String> {
    let masked = mask_comments(text);
    let boinc = find_element(&masked, "boinc", 0, masked.len()).ok_or("no <boinc> element")?;
    for e in find_all(&masked, "app", boinc.content_start, boinc.content_end) {
        if xmltext::child_text(text, &masked, e, "name") == Some(app) {
            return Ok(None);
        }
    }
    let at = line_start_if_alone(text, boinc.content_end);
    let base = indent_before(text, boinc.content_end).unwrap_or("");
    let i1 = format!("{base}    ");
    let i2 = format!("{i1}    ");
    let lead = if at == boinc.content_end { "\n" } else { "" };
    let block = format!(
        "{lead}{i1}<app>\n{i2}<name>{app}</name>\n{i2}<user_friendly_name>mw tasks</user_friendly_name>\n{i1}</app>\n"
    );
    let mut out = String::with_capacity(text.len() + block.len());
    out.push_str(&text[..at]);
    out.push_str(&block);
    out.push_str(&text[at..]);
    Ok(Some(out))
}

/// What [`edit_config_xml`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigEdit {
    /// The new text, when anything changed.
    pub new_text: Option<String>,
    /// One line per change.
    pub changes: Vec<String>,
    /// `<host>` in `<config>`, if any.
    pub host: Option<String>,
    /// Warnings (e.g. another validator configured for the app).
    pub warnings: Vec<String>,
}

struct DaemonSpec {
    program: &'static str,
    cmd: String,
    output: String,
    pid_file: String,
}

fn daemon_specs(app: &str) -> [DaemonSpec; 2] {
    [
        DaemonSpec {
            program: "script_validator",
            cmd: validator_cmd(app),
            output: format!("script_validator_{app}.log"),
            pid_file: format!("script_validator_{app}.pid"),
        },
        DaemonSpec {
            program: "script_assimilator",
            cmd: assimilator_cmd(app),
            output: format!("script_assimilator_{app}.log"),
            pid_file: format!("script_assimilator_{app}.pid"),
        },
    ]
}

fn cmd_app(cmd: &str) -> Option<&str> {
    let toks: Vec<&str> = cmd.split_whitespace().collect();
    toks.windows(2)
        .find(|w| w[0] == "--app" || w[0] == "-app")
        .map(|w| w[1])
}

/// Edits config.xml's text: mw's two daemons, and `<one_result_per_host_per_wu>` when
/// `quorum > 1`. Everything else is kept byte for byte.
pub fn edit_config_xml(text: &str, app: &str, quorum: u32) -> Result<ConfigEdit, String> {
    let mut edit = ConfigEdit::default();
    let mut text = text.to_string();
    // 1. <config>: host, one_result_per_host_per_wu.
    {
        let masked = mask_comments(&text);
        let boinc = find_element(&masked, "boinc", 0, masked.len()).ok_or("no <boinc> element")?;
        let config = find_element(&masked, "config", boinc.content_start, boinc.content_end)
            .ok_or("no <config> element inside <boinc>")?;
        edit.host = xmltext::child_text(&text, &masked, config, "host").map(str::to_string);
        if quorum > 1 {
            let name = "one_result_per_host_per_wu";
            match find_element(&masked, name, config.content_start, config.content_end) {
                Some(e) if e.content_start == e.end => {}
                Some(e) => {
                    let v = text[e.content_start..e.content_end].trim().to_string();
                    if v.parse::<f64>().map(|x| x <= 0.0).unwrap_or(true) {
                        text.replace_range(e.content_start..e.content_end, "1");
                        edit.changes.push(format!("set <{name}> to 1 (was {v:?})"));
                    }
                }
                None => {
                    let at = line_start_if_alone(&text, config.content_end);
                    let base = indent_before(&text, config.content_end).unwrap_or("");
                    let lead = if at == config.content_end { "\n" } else { "" };
                    let line = format!("{lead}{base}  <{name}>1</{name}>\n");
                    text.insert_str(at, &line);
                    edit.changes
                        .push(format!("add <{name}>1</{name}> to <config>"));
                }
            }
        }
    }
    // 2. <daemons>.
    for spec in daemon_specs(app) {
        let masked = mask_comments(&text);
        let boinc = find_element(&masked, "boinc", 0, masked.len()).ok_or("no <boinc> element")?;
        let daemons = match find_element(&masked, "daemons", boinc.content_start, boinc.content_end)
        {
            Some(d) if d.content_start != d.end => d,
            Some(d) => {
                // <daemons/>: expand it.
                text.replace_range(d.start..d.end, "<daemons>\n  </daemons>");
                edit.changes.push("expand <daemons/>".into());
                continue_with_fresh(&text)?
            }
            None => {
                let at = line_start_if_alone(&text, boinc.content_end);
                let base = indent_before(&text, boinc.content_end).unwrap_or("");
                let lead = if at == boinc.content_end { "\n" } else { "" };
                text.insert_str(
                    at,
                    &format!("{lead}{base}  <daemons>\n{base}  </daemons>\n"),
                );
                edit.changes.push("add a <daemons> section".into());
                continue_with_fresh(&text)?
            }
        };
        let masked = mask_comments(&text);
        let base = indent_before(&text, daemons.content_end)
            .unwrap_or("")
            .to_string();
        let (i1, i2) = (format!("{base}  "), format!("{base}    "));
        let block = format!(
            "{i1}<daemon>\n{i2}<cmd>{}</cmd>\n{i2}<output>{}</output>\n{i2}<pid_file>{}</pid_file>\n{i1}</daemon>\n",
            spec.cmd, spec.output, spec.pid_file
        );
        let mut ours = None;
        for d in find_all(
            &masked,
            "daemon",
            daemons.content_start,
            daemons.content_end,
        ) {
            let Some(cmd) = xmltext::child_text(&text, &masked, d, "cmd") else {
                continue;
            };
            let prog = cmd.split_whitespace().next().unwrap_or("");
            let prog = prog.rsplit('/').next().unwrap_or(prog);
            if cmd_app(cmd) != Some(app) {
                continue;
            }
            if prog == spec.program {
                ours = Some(d);
            } else if prog.contains("validator") && spec.program == "script_validator" {
                edit.warnings.push(format!(
                    "config.xml already runs `{cmd}` for app {app}: two validators for one app \
                     compete; disable one"
                ));
            } else if prog.contains("assimilator") && spec.program == "script_assimilator" {
                edit.warnings.push(format!(
                    "config.xml already runs `{cmd}` for app {app}: two assimilators for one app \
                     compete; disable one"
                ));
            }
        }
        match ours {
            Some(d) => {
                let same = xmltext::child_text(&text, &masked, d, "cmd") == Some(spec.cmd.as_str())
                    && xmltext::child_text(&text, &masked, d, "output")
                        == Some(spec.output.as_str())
                    && xmltext::child_text(&text, &masked, d, "pid_file")
                        == Some(spec.pid_file.as_str())
                    && find_element(&masked, "disabled", d.content_start, d.content_end).is_none();
                if !same {
                    let at = line_start_if_alone(&text, d.start);
                    let mut end = d.end;
                    if text[end..].starts_with('\n') {
                        end += 1;
                    }
                    text.replace_range(at..end, &block);
                    edit.changes
                        .push(format!("replace the {} daemon for {app}", spec.program));
                }
            }
            None => {
                let at = line_start_if_alone(&text, daemons.content_end);
                let lead = if at == daemons.content_end { "\n" } else { "" };
                text.insert_str(at, &format!("{lead}{block}"));
                edit.changes
                    .push(format!("add daemon `{}` (log {})", spec.cmd, spec.output));
            }
        }
    }
    if !edit.changes.is_empty() {
        edit.new_text = Some(text);
    }
    Ok(edit)
}

fn continue_with_fresh(text: &str) -> Result<xmltext::Element, String> {
    let masked = mask_comments(text);
    let boinc = find_element(&masked, "boinc", 0, masked.len()).ok_or("no <boinc> element")?;
    find_element(&masked, "daemons", boinc.content_start, boinc.content_end)
        .ok_or_else(|| "could not create <daemons>".to_string())
}

//! The config file `mw_boinc.toml` (written by `mw-boinc-setup` at the project root, read by
//! the assimilator, the validator and the master), and the parts of BOINC's `config.xml` mw
//! needs ([`ProjectLayout`]).

use crate::names::CONFIG_FILE_NAME;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors reading the config file or the project's config.xml.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file's content is not what mw expects.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The config file `mw_boinc.toml` at the project root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MwBoincConfig {
    /// BOINC app name (`--appname` for create_work).
    pub app_name: String,
    /// App version directory name, `M.mm`.
    pub app_version: String,
    /// `version_num` = M*100 + mm.
    pub version_num: u32,
    /// Platform of the app version.
    pub platform: String,
    /// Absolute project root.
    pub project_dir: PathBuf,
    /// Absolute spool directory the assimilator writes into.
    pub spool_dir: PathBuf,
    /// Input template, relative to the project root (for `--wu_template`).
    pub input_template: String,
    /// Output template, relative to the project root (for `--result_template`).
    pub output_template: String,
    /// Open name of the program bundle (first input file).
    pub program_logical_name: String,
    /// Open name of the task bundle (second input file).
    pub task_logical_name: String,
    /// Open name of the result bundle (the one output file).
    pub result_logical_name: String,
    /// min_quorum / target_nresults in the input template.
    pub quorum: u32,
    /// The largest result (stdout) `mw-validator` and `mw-assimilator` accept from a
    /// volunteer, in bytes (what bounds their memory on the server); absent: the master's
    /// default output limit. Jobs with a larger `max_output` need it raised here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

impl MwBoincConfig {
    /// The config file's path in a project.
    pub fn path(project_dir: &Path) -> PathBuf {
        project_dir.join(CONFIG_FILE_NAME)
    }

    /// Reads `<project>/mw_boinc.toml`.
    pub fn load(project_dir: &Path) -> Result<Self, ConfigError> {
        Self::load_file(&Self::path(project_dir))
    }

    /// Reads a config file; a relative `spool_dir` is taken relative to the file's directory.
    pub fn load_file(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: MwBoincConfig = read_toml(path)?;
        if cfg.spool_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.spool_dir = base.join(&cfg.spool_dir);
        }
        Ok(cfg)
    }

    /// The file's text.
    pub fn to_text(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(self).map_err(|e| ConfigError::Invalid {
            path: PathBuf::from(CONFIG_FILE_NAME),
            reason: format!("cannot serialise: {e}"),
        })?;
        Ok(format!(
            "# Written by mw-boinc-setup; read by mw-assimilator and the mw master.\n{body}"
        ))
    }
}

/// The part of `mw_boinc.toml` the assimilator and validator need: where the spool is, and
/// the project root when the file names it (a lenient view of [`MwBoincConfig`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SpoolLocation {
    /// The spool directory (relative paths are taken from the config file's directory).
    pub spool_dir: PathBuf,
    /// The project root.
    #[serde(default)]
    pub project_dir: Option<PathBuf>,
}

impl SpoolLocation {
    /// Reads the spool location from a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut loc: SpoolLocation = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if loc.spool_dir.is_relative() {
            loc.spool_dir = base.join(&loc.spool_dir);
        }
        if loc.project_dir.is_none() {
            loc.project_dir = Some(base.to_path_buf());
        }
        Ok(loc)
    }
}

/// Where mw's BOINC programs look for `mw_boinc.toml`, in order: `project_env`
/// (`BOINC_PROJECT_DIR`), the working directory (`tmp_<host>` when BOINC's daemons call),
/// its parent (the project root), and the parent of the program's own `bin/` directory.
pub fn config_candidates(
    project_env: Option<PathBuf>,
    cwd: &Path,
    exe: Option<&Path>,
) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = project_env.filter(|p| !p.as_os_str().is_empty()) {
        dirs.push(p);
    }
    dirs.push(cwd.to_path_buf());
    dirs.push(cwd.join(".."));
    if let Some(project) = exe.and_then(Path::parent).and_then(Path::parent) {
        dirs.push(project.to_path_buf());
    }
    dirs
}

/// The first `mw_boinc.toml` among [`config_candidates`], if any.
pub fn find_config_file(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(|d| d.join(CONFIG_FILE_NAME))
        .find(|f| f.is_file())
}

/// The result limit of a `mw_boinc.toml` (a lenient view of [`MwBoincConfig`]):
/// `max_output_bytes`, `None` when the file does not set it.
pub fn max_output_bytes_of(path: &Path) -> Result<Option<u64>, ConfigError> {
    #[derive(Deserialize)]
    struct View {
        #[serde(default)]
        max_output_bytes: Option<u64>,
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let view: View = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        reason: e.message().to_string(),
    })?;
    if view.max_output_bytes == Some(0) {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: "max_output_bytes must be at least 1".into(),
        });
    }
    Ok(view.max_output_bytes)
}

/// What mw reads from a project's `config.xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectLayout {
    /// `<download_dir>` (default `<project>/download`).
    pub download_dir: PathBuf,
    /// `<upload_dir>` (default `<project>/upload`).
    pub upload_dir: PathBuf,
    /// `<uldl_dir_fanout>` (0 = flat, BOINC's default when absent).
    pub fanout: u32,
    /// `<host>`.
    pub host: Option<String>,
    /// `<one_result_per_host_per_wu>` or `<one_result_per_user_per_wu>` set (and not 0).
    pub one_result_per_host: bool,
}

impl ProjectLayout {
    /// Reads `<project>/config.xml`.
    pub fn read(project_dir: &Path) -> Result<Self, ConfigError> {
        let path = project_dir.join("config.xml");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, project_dir).map_err(|reason| ConfigError::Invalid { path, reason })
    }

    /// Parses config.xml's text.
    pub fn parse(text: &str, project_dir: &Path) -> Result<Self, String> {
        let fanout = match xml_value(text, "uldl_dir_fanout") {
            Some(v) => v
                .parse::<u32>()
                .map_err(|_| format!("<uldl_dir_fanout> {v:?} is not a number"))?,
            None => 0,
        };
        let dir = |tag: &str, default: &str| {
            xml_value(text, tag)
                .map(PathBuf::from)
                .unwrap_or_else(|| project_dir.join(default))
        };
        Ok(ProjectLayout {
            download_dir: dir("download_dir", "download"),
            upload_dir: dir("upload_dir", "upload"),
            fanout,
            host: xml_value(text, "host"),
            one_result_per_host: ["one_result_per_host_per_wu", "one_result_per_user_per_wu"]
                .iter()
                .any(|t| xml_value(text, t).is_some_and(|v| v != "0")),
        })
    }

    /// The directory (download hierarchy) a file of this name is staged in.
    pub fn download_dir_for(&self, name: &str) -> PathBuf {
        match crate::dir_hier_path(name, self.fanout) {
            Some(h) => self.download_dir.join(h),
            None => self.download_dir.clone(),
        }
    }
}

/// Text of the first `<tag>…</tag>` in an XML text, trimmed (comments are not skipped:
/// enough for the machine-written config.xml).
pub fn xml_value(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let a = text.find(&open)? + open.len();
    let b = text[a..].find(&close)? + a;
    Some(text[a..b].trim().to_string())
}

/// Reads and parses a TOML file, naming the file in either error.
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        reason: e.message().to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn layout_defaults_and_values() {
        let l = ProjectLayout::parse(
            "<boinc><config><uldl_dir_fanout>1024</uldl_dir_fanout>\
             <one_result_per_host_per_wu>1</one_result_per_host_per_wu></config></boinc>",
            Path::new("/p"),
        )
        .unwrap();
        assert_eq!(l.fanout, 1024);
        assert!(l.one_result_per_host);
        assert_eq!(l.download_dir, PathBuf::from("/p/download"));
        assert_eq!(
            l.download_dir_for("in_t1"),
            PathBuf::from("/p/download/262")
        );
        assert!(
            ProjectLayout::parse("<uldl_dir_fanout>x</uldl_dir_fanout>", Path::new("/")).is_err()
        );
    }
}

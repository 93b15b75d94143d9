//! BOINC's side of mw's contract, in one place: every name mw gives to something in a BOINC
//! project (logical and physical file names, workunit names, spool entries, installed program
//! names), the one shell-safe name check, the error-mask bits, the spool's error record, the
//! config file `mw_boinc.toml`, the project layout read from `config.xml`, and the input and
//! output templates with all their parameters (redundancy, limits, `<no_delete/>`); and the
//! one I/O error the BOINC-side programs report (`FileError`).
//!
//! `mw-boinc-setup`, `mw-validator`, `mw-assimilator` and the master's BOINC interface all use
//! this crate; none of them defines a BOINC name of its own.
//!
//! This crate must never know about the master's task queue or journal, the contents of mw's
//! bundles, or BOINC's database; it only names and lays out files.

pub mod config;
pub mod errors;
pub mod file_error;
pub mod names;
pub mod template;

pub use config::{
    config_candidates, find_config_file, max_output_bytes_of, ConfigError, MwBoincConfig,
    ProjectLayout, SpoolLocation,
};
pub use errors::{error_mask_names, ErrorRecord, ResultReport, WU_ERROR_BITS};
pub use file_error::{io_err, FileError};
pub use names::{
    dir_hier_path, is_safe_name, is_safe_rel_path, wu_name_from_output, SpoolEntry, WuName,
};
pub use template::{input_template, output_template, TemplateError, TemplateParams};

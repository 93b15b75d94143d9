//! The input and output templates of mw's workunits, rendered from [`TemplateParams`] with
//! every value explicit (reference/boinc-server.md §3, §6, §8): nothing edits rendered text.
//!
//! The input template has two files: the program bundle (shared by every workunit of a job:
//! `<no_delete/>` keeps BOINC's file deleter from removing it when the first workunit is done,
//! `<sticky/>` keeps it on hosts) and the task bundle (deletable once its workunit is done).

use crate::names::{
    is_safe_name, MAX_TEMPLATE_PATH, PROGRAM_LOGICAL_NAME, RESULT_LOGICAL_NAME, TASK_LOGICAL_NAME,
};
use md5::{Digest, Md5};

/// Largest quorum (and largest replication above the quorum) mw accepts.
pub const MAX_QUORUM: u32 = 20;

/// A template parameter out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// Every value written into the input and output templates.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateParams {
    /// min_quorum: agreeing results needed.
    pub quorum: u32,
    /// target_nresults: results sent at first (replication, ≥ quorum).
    pub target_nresults: u32,
    /// max_error_results: client errors tolerated; one more fails the workunit.
    pub max_error_results: u32,
    /// max_success_results: successful results without quorum tolerated; one more fails it.
    pub max_success_results: u32,
    /// max_total_results: results ever created for the workunit.
    pub max_total_results: u32,
    /// rsc_fpops_est: estimated floating-point operations of one task (work fetch sizing).
    pub rsc_fpops_est: f64,
    /// rsc_fpops_bound: the client aborts a task past this.
    pub rsc_fpops_bound: f64,
    /// rsc_memory_bound (bytes).
    pub rsc_memory_bound: f64,
    /// rsc_disk_bound (bytes).
    pub rsc_disk_bound: f64,
    /// delay_bound (seconds): a result not reported in time is replaced.
    pub delay_bound: u64,
    /// max_nbytes of the result file.
    pub max_nbytes: u64,
    /// Mark the program bundle `<no_delete/>` and `<sticky/>` (shared by a job's workunits).
    pub program_no_delete: bool,
    /// Mark the task bundle `<no_delete/>` (never wanted: it would stay in `download/`).
    pub task_no_delete: bool,
}

impl TemplateParams {
    /// Defaults for a quorum that work with few hosts (BOINC sends at most one result of a
    /// workunit to each host when the quorum is above 1): one client error is tolerated (two
    /// hosts declare a failing task failed), one extra successful result may settle a
    /// disagreement (quorum + 1 hosts), a task is estimated at 1e11 operations (clients fetch
    /// several short tasks per scheduler call), 7 days to report.
    pub fn for_quorum(quorum: u32) -> Self {
        // Saturating: any quorum may come in (`check` refuses those out of range).
        let max_success = if quorum > 1 {
            quorum.saturating_add(1)
        } else {
            1
        };
        TemplateParams {
            quorum,
            target_nresults: quorum,
            max_error_results: 1,
            max_success_results: max_success,
            max_total_results: max_success.saturating_add(1),
            rsc_fpops_est: 1e11,
            rsc_fpops_bound: 8.64e13,
            rsc_memory_bound: 1e9,
            rsc_disk_bound: 2e9,
            delay_bound: 7 * 24 * 3600,
            max_nbytes: 256 * 1024 * 1024,
            program_no_delete: true,
            task_no_delete: false,
        }
    }

    /// Sets the replication (target_nresults) and widens max_success/max_total to allow it.
    pub fn with_replication(mut self, replication: u32) -> Self {
        self.target_nresults = replication;
        self.max_success_results = self.max_success_results.max(replication);
        self.max_total_results = self.max_total_results.max(
            self.max_success_results
                .saturating_add(self.max_error_results),
        );
        self
    }

    /// Sets max_error_results and keeps max_total_results large enough for it.
    pub fn with_max_error_results(mut self, n: u32) -> Self {
        self.max_error_results = n;
        self.max_total_results = self.max_success_results.saturating_add(n);
        self
    }

    /// Checks every value (the one place mw checks the quorum and replication ranges).
    pub fn check(&self) -> Result<(), TemplateError> {
        let bad = |m: String| Err(TemplateError(m));
        let q = self.quorum;
        if !(1..=MAX_QUORUM).contains(&q) {
            return bad(format!("quorum {q} must be between 1 and {MAX_QUORUM}"));
        }
        let r = self.target_nresults;
        if r < q || r > q + MAX_QUORUM {
            return bad(format!(
                "replication {r} must be at least the quorum {q} and at most quorum+{MAX_QUORUM}"
            ));
        }
        if self.max_error_results > 100 {
            return bad(format!(
                "max_error_results {} must be at most 100",
                self.max_error_results
            ));
        }
        if self.max_success_results < r {
            return bad(format!(
                "max_success_results {} must be at least the replication {r}",
                self.max_success_results
            ));
        }
        if self.max_total_results < r || self.max_total_results > 1000 {
            return bad(format!(
                "max_total_results {} must be between the replication {r} and 1000",
                self.max_total_results
            ));
        }
        for (what, v) in [
            ("rsc_fpops_est", self.rsc_fpops_est),
            ("rsc_fpops_bound", self.rsc_fpops_bound),
            ("rsc_memory_bound", self.rsc_memory_bound),
            ("rsc_disk_bound", self.rsc_disk_bound),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 1e30) {
                return bad(format!("{what} {v} must be a positive number below 1e30"));
            }
        }
        if self.rsc_fpops_bound < self.rsc_fpops_est {
            return bad(format!(
                "rsc_fpops_bound {:e} must be at least rsc_fpops_est {:e}",
                self.rsc_fpops_bound, self.rsc_fpops_est
            ));
        }
        if self.delay_bound == 0 || self.delay_bound > 10 * 365 * 24 * 3600 {
            return bad(format!(
                "delay_bound {} must be between 1 second and 10 years",
                self.delay_bound
            ));
        }
        Ok(())
    }
}

/// The input template (see the module documentation).
pub fn input_template(p: &TemplateParams) -> String {
    let file_info = |no_delete: bool| {
        if no_delete {
            "    <file_info>\n        <sticky/>\n        <no_delete/>\n    </file_info>\n"
        } else {
            "    <file_info>\n    </file_info>\n"
        }
    };
    format!(
        "<input_template>
{prog}{task}    <workunit>
        <file_ref>
            <open_name>{PROGRAM_LOGICAL_NAME}</open_name>
        </file_ref>
        <file_ref>
            <open_name>{TASK_LOGICAL_NAME}</open_name>
        </file_ref>
        <min_quorum>{q}</min_quorum>
        <target_nresults>{tn}</target_nresults>
        <max_error_results>{me}</max_error_results>
        <max_total_results>{mt}</max_total_results>
        <max_success_results>{ms}</max_success_results>
        <rsc_fpops_est>{fe:e}</rsc_fpops_est>
        <rsc_fpops_bound>{fb:e}</rsc_fpops_bound>
        <rsc_memory_bound>{mem:e}</rsc_memory_bound>
        <rsc_disk_bound>{disk:e}</rsc_disk_bound>
        <delay_bound>{db}</delay_bound>
    </workunit>
</input_template>
",
        prog = file_info(p.program_no_delete),
        task = file_info(p.task_no_delete),
        q = p.quorum,
        tn = p.target_nresults,
        me = p.max_error_results,
        mt = p.max_total_results,
        ms = p.max_success_results,
        fe = p.rsc_fpops_est,
        fb = p.rsc_fpops_bound,
        mem = p.rsc_memory_bound,
        disk = p.rsc_disk_bound,
        db = p.delay_bound,
    )
}

/// The output template: one result file, uploaded, with an explicit max_nbytes.
pub fn output_template(p: &TemplateParams) -> String {
    format!(
        "<output_template>
    <file_info>
        <name><OUTFILE_0/></name>
        <generated_locally/>
        <upload_when_present/>
        <max_nbytes>{max}</max_nbytes>
        <url><UPLOAD_URL/></url>
    </file_info>
    <result>
        <file_ref>
            <file_name><OUTFILE_0/></file_name>
            <open_name>{RESULT_LOGICAL_NAME}</open_name>
        </file_ref>
    </result>
</output_template>
",
        max = p.max_nbytes
    )
}

/// The installed input template's path, relative to the project root.
pub fn installed_input_template(app: &str) -> String {
    format!("templates/{app}_in")
}

/// The installed output template's path, relative to the project root.
pub fn installed_output_template(app: &str) -> String {
    format!("templates/{app}_out")
}

/// The path (relative to the project root) of a job's own input template with this text:
/// `templates/<app>_in_<md5 prefix of the text>`, so equal settings share one file and a
/// template never changes under a live workunit. `None` when the app name is not safe.
pub fn job_input_template_path(app: &str, text: &str) -> Option<String> {
    let h = hex::encode(Md5::digest(text.as_bytes()));
    let rel = format!("templates/{app}_in_{}", &h[..12]);
    (is_safe_name(app) && rel.len() <= MAX_TEMPLATE_PATH).then_some(rel)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Any quorum, replication and error count may come in (a flag, a job file): the
    /// derived counts saturate (they once overflowed, a panic in a debug build) and
    /// `check` refuses them.
    #[test]
    fn out_of_range_counts_are_refused_not_overflowed() {
        assert!(TemplateParams::for_quorum(u32::MAX).check().is_err());
        assert!(TemplateParams::for_quorum(2)
            .with_replication(u32::MAX)
            .check()
            .is_err());
        assert!(TemplateParams::for_quorum(2)
            .with_max_error_results(u32::MAX)
            .check()
            .is_err());
    }

    #[test]
    fn only_the_program_bundle_is_no_delete() {
        let t = input_template(&TemplateParams::for_quorum(1));
        let infos: Vec<&str> = t.split("<file_info>").skip(1).collect();
        assert_eq!(infos.len(), 2);
        assert!(infos[0]
            .split("</file_info>")
            .next()
            .unwrap()
            .contains("<no_delete/>"));
        assert!(!infos[1]
            .split("</file_info>")
            .next()
            .unwrap()
            .contains("<no_delete/>"));
    }

    #[test]
    fn replication_is_a_parameter() {
        let p = TemplateParams::for_quorum(2).with_replication(4);
        p.check().unwrap();
        let t = input_template(&p);
        assert!(t.contains("<min_quorum>2</min_quorum>"));
        assert!(t.contains("<target_nresults>4</target_nresults>"));
        assert!(t.contains("<max_success_results>4</max_success_results>"));
        assert!(t.contains("<max_total_results>5</max_total_results>"));
        assert!(TemplateParams::for_quorum(0).check().is_err());
        assert!(TemplateParams::for_quorum(21).check().is_err());
        assert!(TemplateParams::for_quorum(2)
            .with_replication(1)
            .check()
            .is_err());
        assert!(output_template(&p).contains("<max_nbytes>268435456</max_nbytes>"));
        let a = job_input_template_path("mw", &t).unwrap();
        assert!(a.starts_with("templates/mw_in_") && a.len() <= 63);
    }
}

//! The files `mw-boinc-setup` generates besides the templates: version.xml and the daemons'
//! command lines. It must never know how they are installed.

use mw_boinc_kit::names::{
    API_VERSION, ASSIMILATOR_NAME, VALIDATOR_COMPARE_NAME, VALIDATOR_INIT_NAME,
};

/// version.xml for the worker.
pub fn version_xml(physical_name: &str) -> String {
    format!(
        "<version>
    <file>
        <physical_name>{physical_name}</physical_name>
        <main_program/>
    </file>
    <api_version>{API_VERSION}</api_version>
</version>
"
    )
}

/// The `<cmd>` of the validator daemon (program names only, §0.1).
pub fn validator_cmd(app: &str) -> String {
    format!(
        "script_validator -d 3 --app {app} --init_script {VALIDATOR_INIT_NAME} \
         --compare_script {VALIDATOR_COMPARE_NAME}"
    )
}

/// The `<cmd>` of the assimilator daemon.
pub fn assimilator_cmd(app: &str) -> String {
    format!("script_assimilator -d 3 --app {app} --script {ASSIMILATOR_NAME}")
}
